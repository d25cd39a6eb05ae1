/*
 * Portable matrix kernels: activation quantization, scalar dot products of every weight type
 * against quantized (or float) activations, row dequantization and the GEMMs (OpenBLAS when
 * built with it, plain loops otherwise). These are also the reference the SIMD levels are
 * tested against.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_kernels.h"

#ifdef SVLM_HAVE_OPENBLAS
#include <cblas.h>
#endif

int svlm_cpu_type_uses_q8a(svlm_dtype t) {
    return !(t == SVLM_F32 || t == SVLM_F16 || t == SVLM_BF16);
}

void svlm_cpu_quantize_q8a(const float *x, svlm_q8a *out, int64_t cols) {
    for (int64_t b = 0; b < cols / 32; b++, x += 32, out++) {
        float amax = 0.0f;
        for (int i = 0; i < 32; i++)
            amax = fmaxf(amax, fabsf(x[i]));
        float d = amax / 127.0f;
        float id = d > 0.0f ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int i = 0; i < 32; i++) {
            int q = (int)lrintf(x[i] * id);
            out->qs[i] = (int8_t)q;
            sum += q;
        }
        out->d = d;
        out->s = d * (float)sum;
    }
}

/* ---- dot products of quantized rows; every block contributes d_w*d_x*sum(q*xq) + bias*s ---- */

static float dot_q4_0(int64_t cols, const void *w_row, const void *act) {
    const svlm_block_q4_0 *w = w_row;
    const svlm_q8a *x = act;
    float acc = 0.0f;
    for (int64_t b = 0; b < cols / 32; b++) {
        int sum = 0;
        for (int j = 0; j < 16; j++)
            sum += (w[b].qs[j] & 15) * x[b].qs[j] + (w[b].qs[j] >> 4) * x[b].qs[j + 16];
        float d = svlm_f16_to_f32(w[b].d);
        acc += d * x[b].d * (float)sum - 8.0f * d * x[b].s;
    }
    return acc;
}

static float dot_q4_1(int64_t cols, const void *w_row, const void *act) {
    const svlm_block_q4_1 *w = w_row;
    const svlm_q8a *x = act;
    float acc = 0.0f;
    for (int64_t b = 0; b < cols / 32; b++) {
        int sum = 0;
        for (int j = 0; j < 16; j++)
            sum += (w[b].qs[j] & 15) * x[b].qs[j] + (w[b].qs[j] >> 4) * x[b].qs[j + 16];
        acc += svlm_f16_to_f32(w[b].d) * x[b].d * (float)sum + svlm_f16_to_f32(w[b].m) * x[b].s;
    }
    return acc;
}

/* 5-bit code j of a Q5_0/Q5_1 block: low nibble or high nibble plus bit j of qh. */
static int code5(const uint8_t *qs, const uint8_t *qh_bytes, int j) {
    uint32_t qh = (uint32_t)qh_bytes[0] | (uint32_t)qh_bytes[1] << 8 | (uint32_t)qh_bytes[2] << 16 |
                  (uint32_t)qh_bytes[3] << 24;
    int lo = j < 16 ? (qs[j] & 15) : (qs[j - 16] >> 4);
    return lo | (int)((qh >> j) & 1) << 4;
}

static float dot_q5_0(int64_t cols, const void *w_row, const void *act) {
    const svlm_block_q5_0 *w = w_row;
    const svlm_q8a *x = act;
    float acc = 0.0f;
    for (int64_t b = 0; b < cols / 32; b++) {
        int sum = 0;
        for (int j = 0; j < 32; j++)
            sum += code5(w[b].qs, w[b].qh, j) * x[b].qs[j];
        float d = svlm_f16_to_f32(w[b].d);
        acc += d * x[b].d * (float)sum - 16.0f * d * x[b].s;
    }
    return acc;
}

static float dot_q5_1(int64_t cols, const void *w_row, const void *act) {
    const svlm_block_q5_1 *w = w_row;
    const svlm_q8a *x = act;
    float acc = 0.0f;
    for (int64_t b = 0; b < cols / 32; b++) {
        int sum = 0;
        for (int j = 0; j < 32; j++)
            sum += code5(w[b].qs, w[b].qh, j) * x[b].qs[j];
        acc += svlm_f16_to_f32(w[b].d) * x[b].d * (float)sum + svlm_f16_to_f32(w[b].m) * x[b].s;
    }
    return acc;
}

static float dot_q8_0(int64_t cols, const void *w_row, const void *act) {
    const svlm_block_q8_0 *w = w_row;
    const svlm_q8a *x = act;
    float acc = 0.0f;
    for (int64_t b = 0; b < cols / 32; b++) {
        int sum = 0;
        for (int j = 0; j < 32; j++)
            sum += w[b].qs[j] * x[b].qs[j];
        acc += svlm_f16_to_f32(w[b].d) * x[b].d * (float)sum;
    }
    return acc;
}

/* 6-bit scale and min of sub-block j of a Q4_K/Q5_K super-block. */
static void k_scale_min(const uint8_t *s, int j, int *sc, int *m) {
    if (j < 4) {
        *sc = s[j] & 63;
        *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Q4_K/Q5_K: sub-block s (32 values) holds low (s even) or high (s odd) nibbles of
 * qs[32*(s/2) ..], plus bit s of qh[l] as the fifth bit for Q5_K. */
static float dot_qk45(int64_t cols, const svlm_f16 *d_, const svlm_f16 *dmin_, const uint8_t *scales,
                      const uint8_t *qh, const uint8_t *qs, const svlm_q8a *x) {
    (void)cols;
    float d = svlm_f16_to_f32(*d_), dmin = svlm_f16_to_f32(*dmin_);
    float acc = 0.0f;
    for (int s = 0; s < 8; s++, x++) {
        const uint8_t *q = qs + 32 * (s / 2);
        int sum = 0;
        for (int l = 0; l < 32; l++) {
            int c = (s & 1) ? q[l] >> 4 : q[l] & 15;
            if (qh) c |= ((qh[l] >> s) & 1) << 4;
            sum += c * x->qs[l];
        }
        int sc, m;
        k_scale_min(scales, s, &sc, &m);
        acc += d * (float)sc * x->d * (float)sum - dmin * (float)m * x->s;
    }
    return acc;
}

static float dot_q4_k(int64_t cols, const void *w_row, const void *act) {
    const svlm_block_q4_K *w = w_row;
    const svlm_q8a *x = act;
    float acc = 0.0f;
    for (int64_t b = 0; b < cols / 256; b++)
        acc += dot_qk45(256, &w[b].d, &w[b].dmin, w[b].scales, NULL, w[b].qs, x + 8 * b);
    return acc;
}

static float dot_q5_k(int64_t cols, const void *w_row, const void *act) {
    const svlm_block_q5_K *w = w_row;
    const svlm_q8a *x = act;
    float acc = 0.0f;
    for (int64_t b = 0; b < cols / 256; b++)
        acc += dot_qk45(256, &w[b].d, &w[b].dmin, w[b].scales, w[b].qh, w[b].qs, x + 8 * b);
    return acc;
}

/* Q6_K: group g (32 values) = 4 low bits from ql, 2 high bits from qh, code - 32;
 * values 16 at a time share scales[2g], scales[2g+1]. */
static float dot_q6_k(int64_t cols, const void *w_row, const void *act) {
    const svlm_block_q6_K *w = w_row;
    const svlm_q8a *x = act;
    float acc = 0.0f;
    for (int64_t b = 0; b < cols / 256; b++) {
        float d = svlm_f16_to_f32(w[b].d);
        for (int g = 0; g < 8; g++) {
            const svlm_q8a *xb = x + 8 * b + g;
            const uint8_t *ql = w[b].ql + 64 * (g / 4), *qh = w[b].qh + 32 * (g / 4);
            int k = g % 4;
            int half[2] = {0, 0};
            for (int l = 0; l < 32; l++) {
                int lo = (k & 1) ? ql[l + 32] : ql[l];
                lo = (k & 2) ? lo >> 4 : lo & 15;
                int c = lo | ((qh[l] >> (2 * k)) & 3) << 4;
                half[l / 16] += (c - 32) * xb->qs[l];
            }
            acc += d * xb->d * (float)(w[b].scales[2 * g] * half[0] + w[b].scales[2 * g + 1] * half[1]);
        }
    }
    return acc;
}

/* ---- float weights against float activations ---- */

static float dot_f32(int64_t cols, const void *w_row, const void *act) {
    const float *w = w_row, *x = act;
    float acc[8] = {0};
    int64_t c = 0;
    for (; c + 8 <= cols; c += 8)
        for (int i = 0; i < 8; i++)
            acc[i] += w[c + i] * x[c + i];
    float sum = 0.0f;
    for (; c < cols; c++)
        sum += w[c] * x[c];
    for (int i = 0; i < 8; i++)
        sum += acc[i];
    return sum;
}

static float dot_f16(int64_t cols, const void *w_row, const void *act) {
    const svlm_f16 *w = w_row;
    const float *x = act;
    float sum = 0.0f;
    for (int64_t c = 0; c < cols; c++)
        sum += svlm_f16_to_f32(w[c]) * x[c];
    return sum;
}

static float dot_bf16(int64_t cols, const void *w_row, const void *act) {
    const svlm_bf16 *w = w_row;
    const float *x = act;
    float sum = 0.0f;
    for (int64_t c = 0; c < cols; c++)
        sum += svlm_bf16_to_f32(w[c]) * x[c];
    return sum;
}

#define DEQUANT_VIA_REFERENCE(name, type)                                                                    \
    static void name(int64_t cols, const void *w_row, float *out) {                                          \
        svlm_dequantize_row(type, w_row, out, cols);                                                         \
    }
DEQUANT_VIA_REFERENCE(deq_f16, SVLM_F16)
DEQUANT_VIA_REFERENCE(deq_bf16, SVLM_BF16)
DEQUANT_VIA_REFERENCE(deq_q4_0, SVLM_Q4_0)
DEQUANT_VIA_REFERENCE(deq_q4_1, SVLM_Q4_1)
DEQUANT_VIA_REFERENCE(deq_q5_0, SVLM_Q5_0)
DEQUANT_VIA_REFERENCE(deq_q5_1, SVLM_Q5_1)
DEQUANT_VIA_REFERENCE(deq_q8_0, SVLM_Q8_0)
DEQUANT_VIA_REFERENCE(deq_q4_k, SVLM_Q4_K)
DEQUANT_VIA_REFERENCE(deq_q5_k, SVLM_Q5_K)
DEQUANT_VIA_REFERENCE(deq_q6_k, SVLM_Q6_K)

static void deq_f32(int64_t cols, const void *w_row, float *out) {
    memcpy(out, w_row, (size_t)cols * sizeof(float));
}

/* ---- GEMM ---- */

void svlm_cpu_gemm_nn_ref(svlm_cpu *c, int thread, int64_t M, int64_t N, int64_t K, const float *A,
                          int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc) {
    (void)c;
    (void)thread;
#ifdef SVLM_HAVE_OPENBLAS
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)M, (int)N, (int)K, 1.0f, A, (int)lda, B,
                (int)ldb, 0.0f, C, (int)ldc);
#else
    for (int64_t i = 0; i < M; i++) {
        float *c = C + i * ldc;
        for (int64_t j = 0; j < N; j++)
            c[j] = 0.0f;
        for (int64_t k = 0; k < K; k++) {
            float a = A[i * lda + k];
            const float *b = B + k * ldb;
            for (int64_t j = 0; j < N; j++)
                c[j] += a * b[j];
        }
    }
#endif
}

void svlm_cpu_gemm_nt_ref(svlm_cpu *c, int thread, int64_t M, int64_t N, int64_t K, const float *A,
                          int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc) {
#ifdef SVLM_HAVE_OPENBLAS
    (void)c;
    (void)thread;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)N, (int)K, 1.0f, A, (int)lda, B,
                (int)ldb, 0.0f, C, (int)ldc);
#else
    /* Transpose a panel of 32 rows of B so the inner loop runs along contiguous memory. */
    enum { PANEL = 32 };
    float *bt = svlm_cpu_scratch(c, thread, SVLM_SCRATCH_GEMM, (size_t)K * PANEL * sizeof(float));
    for (int64_t j0 = 0; j0 < N; j0 += PANEL) {
        int64_t nj = N - j0 < PANEL ? N - j0 : PANEL;
        for (int64_t k = 0; k < K; k++)
            for (int64_t j = 0; j < PANEL; j++)
                bt[k * PANEL + j] = j < nj ? B[(j0 + j) * ldb + k] : 0.0f;
        for (int64_t i = 0; i < M; i++) {
            float acc[PANEL] = {0};
            const float *a = A + i * lda;
            for (int64_t k = 0; k < K; k++)
                for (int j = 0; j < PANEL; j++)
                    acc[j] += a[k] * bt[k * PANEL + j];
            for (int64_t j = 0; j < nj; j++)
                C[i * ldc + j0 + j] = acc[j];
        }
    }
#endif
}

void svlm_cpu_matmul_init_ref(svlm_cpu_matmul_ops *ops) {
    memset(ops, 0, sizeof *ops);
    ops->dot[SVLM_F32] = dot_f32;
    ops->dot[SVLM_F16] = dot_f16;
    ops->dot[SVLM_BF16] = dot_bf16;
    ops->dot[SVLM_Q4_0] = dot_q4_0;
    ops->dot[SVLM_Q4_1] = dot_q4_1;
    ops->dot[SVLM_Q5_0] = dot_q5_0;
    ops->dot[SVLM_Q5_1] = dot_q5_1;
    ops->dot[SVLM_Q8_0] = dot_q8_0;
    ops->dot[SVLM_Q4_K] = dot_q4_k;
    ops->dot[SVLM_Q5_K] = dot_q5_k;
    ops->dot[SVLM_Q6_K] = dot_q6_k;
    ops->dequant[SVLM_F32] = deq_f32;
    ops->dequant[SVLM_F16] = deq_f16;
    ops->dequant[SVLM_BF16] = deq_bf16;
    ops->dequant[SVLM_Q4_0] = deq_q4_0;
    ops->dequant[SVLM_Q4_1] = deq_q4_1;
    ops->dequant[SVLM_Q5_0] = deq_q5_0;
    ops->dequant[SVLM_Q5_1] = deq_q5_1;
    ops->dequant[SVLM_Q8_0] = deq_q8_0;
    ops->dequant[SVLM_Q4_K] = deq_q4_k;
    ops->dequant[SVLM_Q5_K] = deq_q5_k;
    ops->dequant[SVLM_Q6_K] = deq_q6_k;
    ops->gemm_nt = svlm_cpu_gemm_nt_ref;
    ops->gemm_nn = svlm_cpu_gemm_nn_ref;
    ops->exp_row = svlm_cpu_exp_row_ref;
    ops->rmsnorm_row = svlm_cpu_rmsnorm_row_ref;
    ops->layernorm_row = svlm_cpu_layernorm_row_ref;
    ops->quantize_q8a = svlm_cpu_quantize_q8a;
    ops->silu_mul = svlm_cpu_silu_mul_ref;
    ops->gelu_tanh = svlm_cpu_gelu_tanh_ref;
}
