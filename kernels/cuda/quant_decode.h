/*
 * Element decoders for weights as stored in GGUF, shared by the CUDA kernels and a CPU test
 * (tests/test_cuda_decode.c) that checks them against the reference dequantizers, so the GPU's
 * decoding is verified on machines without a GPU. A row is a sequence of 32-element sub-blocks;
 * qd_<type>(row, sb, l) returns element l (0..31) of sub-block sb.
 */
#ifndef SVLM_KERNELS_CUDA_QUANT_DECODE_H
#define SVLM_KERNELS_CUDA_QUANT_DECODE_H

#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#include <cuda_fp16.h>
#define QD_FN static __device__ __forceinline__
QD_FN float qd_f16_bits(uint16_t h) {
    return __half2float(__ushort_as_half(h));
}
QD_FN float qd_f32_bits(uint32_t u) {
    return __uint_as_float(u);
}
#else
#include "kernels/dtype.h"
#define QD_FN static inline
QD_FN float qd_f16_bits(uint16_t h) {
    return svlm_f16_to_f32(h);
}
QD_FN float qd_f32_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
#endif

QD_FN float qd_half_at(const uint8_t *p) {
    return qd_f16_bits((uint16_t)(p[0] | (p[1] << 8)));
}
QD_FN uint32_t qd_u32_at(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
/* Scale and min j (0..7) of a Q4_K/Q5_K super-block: 6 bits each, packed in 12 bytes. */
QD_FN void qd_scale_min_k(int j, const uint8_t *s, int *sc, int *mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Plain types: byte offsets are computed so rows need only their element alignment. */
QD_FN float qd_f32(const uint8_t *row, int64_t sb, int l) {
    const uint8_t *p = row + 4 * (sb * 32 + l);
    return qd_f32_bits(qd_u32_at(p));
}
QD_FN float qd_f16(const uint8_t *row, int64_t sb, int l) {
    return qd_half_at(row + 2 * (sb * 32 + l));
}
QD_FN float qd_bf16(const uint8_t *row, int64_t sb, int l) {
    const uint8_t *p = row + 2 * (sb * 32 + l);
    return qd_f32_bits((uint32_t)(p[0] | (p[1] << 8)) << 16);
}
QD_FN float qd_q8_0(const uint8_t *row, int64_t sb, int l) {
    const uint8_t *b = row + sb * 34;
    return qd_half_at(b) * (float)(int8_t)b[2 + l];
}
QD_FN float qd_q4_0(const uint8_t *row, int64_t sb, int l) {
    const uint8_t *b = row + sb * 18;
    const int q = l < 16 ? (b[2 + l] & 15) : (b[2 + l - 16] >> 4);
    return (float)(q - 8) * qd_half_at(b);
}
QD_FN float qd_q4_1(const uint8_t *row, int64_t sb, int l) {
    const uint8_t *b = row + sb * 20;
    const int q = l < 16 ? (b[4 + l] & 15) : (b[4 + l - 16] >> 4);
    return (float)q * qd_half_at(b) + qd_half_at(b + 2);
}
QD_FN float qd_q5_0(const uint8_t *row, int64_t sb, int l) {
    const uint8_t *b = row + sb * 22;
    const int low = l < 16 ? (b[6 + l] & 15) : (b[6 + l - 16] >> 4);
    const int q = low | (int)(((qd_u32_at(b + 2) >> l) & 1) << 4);
    return (float)(q - 16) * qd_half_at(b);
}
QD_FN float qd_q5_1(const uint8_t *row, int64_t sb, int l) {
    const uint8_t *b = row + sb * 24;
    const int low = l < 16 ? (b[8 + l] & 15) : (b[8 + l - 16] >> 4);
    const int q = low | (int)(((qd_u32_at(b + 4) >> l) & 1) << 4);
    return (float)q * qd_half_at(b) + qd_half_at(b + 2);
}
/* K-quants: 256-element super-blocks of 8 sub-blocks. */
QD_FN float qd_q4_k(const uint8_t *row, int64_t sb, int l) {
    const uint8_t *b = row + (sb / 8) * 144;
    const int s = (int)(sb % 8);
    int sc, mn;
    qd_scale_min_k(s, b + 4, &sc, &mn);
    const uint8_t q = b[16 + 32 * (s / 2) + l];
    const int v = (s & 1) ? (q >> 4) : (q & 15);
    return (qd_half_at(b) * (float)sc) * (float)v - qd_half_at(b + 2) * (float)mn;
}
QD_FN float qd_q5_k(const uint8_t *row, int64_t sb, int l) {
    const uint8_t *b = row + (sb / 8) * 176;
    const int s = (int)(sb % 8);
    int sc, mn;
    qd_scale_min_k(s, b + 4, &sc, &mn);
    const uint8_t q = b[48 + 32 * (s / 2) + l];
    const int v = ((s & 1) ? (q >> 4) : (q & 15)) + (((b[16 + l] >> s) & 1) << 4);
    return (qd_half_at(b) * (float)sc) * (float)v - qd_half_at(b + 2) * (float)mn;
}
QD_FN float qd_q6_k(const uint8_t *row, int64_t sb, int l) {
    const uint8_t *b = row + (sb / 8) * 210;
    const int s = (int)(sb % 8), h = s / 4, quarter = s % 4;
    const uint8_t ql = b[64 * h + l + 32 * (quarter & 1)];
    const uint8_t qh = b[128 + 32 * h + l];
    const int q = ((ql >> (4 * (quarter >> 1))) & 15) | (((qh >> (2 * quarter)) & 3) << 4);
    const int8_t sc = (int8_t)b[192 + 8 * h + l / 16 + 2 * quarter];
    return (qd_half_at(b + 208) * (float)sc) * (float)(q - 32);
}

/* Lane forms of two K-quants for the decode products: a warp reads a whole 256-element
 * super-block, lane l (0..31) four neighbouring quant bytes (one load, not one byte a lane), which
 * hold eight of its elements. v[0..3] are the elements at offsets off[0] .. off[0] + 3 of the
 * super-block and v[4..7] those at off[1] .. off[1] + 3, each as the element decoder above gives
 * it. Q4_K super-blocks (144 bytes) keep 4-byte alignment; Q6_K's (210) only 2-byte. */
#ifdef __CUDACC__
QD_FN uint32_t qd_u32_a4(const uint8_t *p) {
    return *reinterpret_cast<const uint32_t *>(p);
}
QD_FN uint32_t qd_u32_a2(const uint8_t *p) {
    const uint16_t *h = reinterpret_cast<const uint16_t *>(p);
    return (uint32_t)h[0] | ((uint32_t)h[1] << 16);
}
#else /* the test's stand-ins keep the device's alignment rule: a misaligned load gives all ones */
QD_FN uint32_t qd_u32_a4(const uint8_t *p) {
    return ((uintptr_t)p & 3) ? 0xffffffffu : qd_u32_at(p);
}
QD_FN uint32_t qd_u32_a2(const uint8_t *p) {
    return ((uintptr_t)p & 1) ? 0xffffffffu : qd_u32_at(p);
}
#endif
QD_FN void qd_q4_k_lane(const uint8_t *blk, int l, float *v, int *off) {
    const int j = l >> 3, i = (l & 7) * 4; /* bytes 32 j + i ..: sub-blocks 2 j (low nibbles), 2 j + 1 */
    int sc0, mn0, sc1, mn1;
    qd_scale_min_k(2 * j, blk + 4, &sc0, &mn0);
    qd_scale_min_k(2 * j + 1, blk + 4, &sc1, &mn1);
    const float d = qd_half_at(blk), dmin = qd_half_at(blk + 2);
    const float a0 = d * (float)sc0, m0 = dmin * (float)mn0, a1 = d * (float)sc1, m1 = dmin * (float)mn1;
    const uint32_t q = qd_u32_a4(blk + 16 + 32 * j + i);
    for (int e = 0; e < 4; e++) {
        const int byte = (int)((q >> (8 * e)) & 255);
        v[e] = a0 * (float)(byte & 15) - m0;
        v[4 + e] = a1 * (float)(byte >> 4) - m1;
    }
    off[0] = 64 * j + i;
    off[1] = 64 * j + 32 + i;
}
QD_FN void qd_q6_k_lane(const uint8_t *blk, int l, float *v, int *off) {
    /* low-bits bytes 4 l ..: half h, elements e0 .. of sub-blocks 4 h + q1 (low nibbles) and
     * 4 h + q1 + 2 (high); their high bits sit in bytes 128 + 32 h + e0 .. */
    const int b = 4 * l, h = b >> 6, q1 = (b & 63) >> 5, e0 = b & 31;
    const uint32_t ql = qd_u32_a2(blk + b), qh = qd_u32_a2(blk + 128 + 32 * h + e0);
    const float d = qd_half_at(blk + 208);
    const float a0 = d * (float)(int8_t)blk[192 + 8 * h + e0 / 16 + 2 * q1];
    const float a1 = d * (float)(int8_t)blk[192 + 8 * h + e0 / 16 + 2 * (q1 + 2)];
    for (int e = 0; e < 4; e++) {
        const int lo = (int)((ql >> (8 * e)) & 15), hi = (int)((ql >> (8 * e + 4)) & 15);
        const int hb = (int)((qh >> (8 * e)) & 255);
        v[e] = a0 * (float)((lo | (((hb >> (2 * q1)) & 3) << 4)) - 32);
        v[4 + e] = a1 * (float)((hi | (((hb >> (2 * (q1 + 2))) & 3) << 4)) - 32);
    }
    off[0] = 32 * (4 * h + q1) + e0;
    off[1] = 32 * (4 * h + q1 + 2) + e0;
}

/* The types above, with their ggml ids, for the dispatch in the kernels and the test. */
#define SVLM_QD_TYPES(X)                                                                                     \
    X(0, qd_f32)                                                                                             \
    X(1, qd_f16)                                                                                             \
    X(30, qd_bf16)                                                                                           \
    X(2, qd_q4_0)                                                                                            \
    X(3, qd_q4_1)                                                                                            \
    X(6, qd_q5_0)                                                                                            \
    X(7, qd_q5_1)                                                                                            \
    X(8, qd_q8_0)                                                                                            \
    X(12, qd_q4_k)                                                                                           \
    X(13, qd_q5_k)                                                                                           \
    X(14, qd_q6_k)

#endif
