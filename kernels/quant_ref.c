/*
 * Reference (scalar, readable) quantization and dequantization. These are the correctness
 * oracle for the SIMD kernels and the quantizer behind `svlm mkmodel`, so they follow the
 * arithmetic of ggml's *_ref quantizers step by step (same rounding, same search for the
 * K-quant scales): a file we quantize is what llama.cpp would write from the same floats.
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "kernels/dtype.h"

#define GROUP_MAX_EPS 1e-15f

static int imin(int a, int b) {
    return a < b ? a : b;
}
static int imax(int a, int b) {
    return a > b ? a : b;
}

/* Round to nearest, ties to even, via the 1.5*2^23 trick (exact for |v| < 2^22).
 * Out-of-range and NaN inputs (only from non-finite weights) are clamped first. */
static int nearest_int(float v) {
    if (!(v >= -4194303.f)) v = v != v ? 0.f : -4194303.f;
    if (v > 4194303.f) v = 4194303.f;
    float biased = v + 12582912.f;
    int32_t i;
    memcpy(&i, &biased, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

/* C's float->int conversion (truncation), made total for out-of-range and NaN inputs. */
static int trunc_int(float v) {
    if (!(v > -1000.f)) return v != v ? 0 : -1000;
    if (v > 1000.f) return 1000;
    return (int)v;
}

static int round_away(float v) {
    return trunc_int(roundf(v));
}

/* ---- 32-element blocks ------------------------------------------------------------------ */

/* Largest-magnitude value of a block, with its sign. */
static float signed_absmax(const float *x, int n) {
    float amax = 0.f, max = 0.f;
    for (int j = 0; j < n; j++) {
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    return max;
}

static void minmax(const float *x, int n, float *mn, float *mx) {
    *mn = FLT_MAX;
    *mx = -FLT_MAX;
    for (int j = 0; j < n; j++) {
        if (x[j] < *mn) *mn = x[j];
        if (x[j] > *mx) *mx = x[j];
    }
}

static void quantize_q4_0(const float *x, svlm_block_q4_0 *y) {
    const float d = signed_absmax(x, 32) / -8; /* the extreme value maps to -8 exactly */
    const float id = d ? 1.0f / d : 0.0f;
    y->d = svlm_f32_to_f16(d);
    for (int j = 0; j < 16; j++) {
        int lo = imin(15, (int8_t)trunc_int(x[j] * id + 8.5f));
        int hi = imin(15, (int8_t)trunc_int(x[j + 16] * id + 8.5f));
        y->qs[j] = (uint8_t)(lo | (hi << 4));
    }
}

static void quantize_q4_1(const float *x, svlm_block_q4_1 *y) {
    float mn, mx;
    minmax(x, 32, &mn, &mx);
    const float d = (mx - mn) / 15;
    const float id = d ? 1.0f / d : 0.0f;
    y->d = svlm_f32_to_f16(d);
    y->m = svlm_f32_to_f16(mn);
    for (int j = 0; j < 16; j++) {
        int lo = imin(15, (int8_t)trunc_int((x[j] - mn) * id + 0.5f));
        int hi = imin(15, (int8_t)trunc_int((x[j + 16] - mn) * id + 0.5f));
        y->qs[j] = (uint8_t)(lo | (hi << 4));
    }
}

/* 5-bit codes: low nibbles in qs (element j low, j+16 high), bit 4 of element j in qh bit j. */
static void pack_5bit(const int *q, uint8_t qs[16], uint8_t qh_bytes[4]) {
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
        qs[j] = (uint8_t)((q[j] & 15) | ((q[j + 16] & 15) << 4));
        qh |= (uint32_t)((q[j] >> 4) & 1) << j;
        qh |= (uint32_t)((q[j + 16] >> 4) & 1) << (j + 16);
    }
    for (int b = 0; b < 4; b++)
        qh_bytes[b] = (uint8_t)(qh >> (8 * b));
}

static uint32_t load_u32le(const uint8_t b[4]) {
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

static void quantize_q5_0(const float *x, svlm_block_q5_0 *y) {
    const float d = signed_absmax(x, 32) / -16;
    const float id = d ? 1.0f / d : 0.0f;
    y->d = svlm_f32_to_f16(d);
    int q[32];
    for (int j = 0; j < 32; j++)
        q[j] = (uint8_t)imin(31, (int8_t)trunc_int(x[j] * id + 16.5f));
    pack_5bit(q, y->qs, y->qh);
}

static void quantize_q5_1(const float *x, svlm_block_q5_1 *y) {
    float mn, mx;
    minmax(x, 32, &mn, &mx);
    const float d = (mx - mn) / 31;
    const float id = d ? 1.0f / d : 0.0f;
    y->d = svlm_f32_to_f16(d);
    y->m = svlm_f32_to_f16(mn);
    int q[32];
    for (int j = 0; j < 32; j++)
        q[j] = (uint8_t)trunc_int((x[j] - mn) * id + 0.5f);
    pack_5bit(q, y->qs, y->qh);
}

static float absmax(const float *x, int n) {
    float amax = 0.f;
    for (int j = 0; j < n; j++)
        amax = fmaxf(amax, fabsf(x[j]));
    return amax;
}

static void quantize_q8_0(const float *x, svlm_block_q8_0 *y) {
    const float d = absmax(x, 32) / 127;
    const float id = d ? 1.0f / d : 0.0f;
    y->d = svlm_f32_to_f16(d);
    for (int j = 0; j < 32; j++)
        y->qs[j] = (int8_t)round_away(x[j] * id);
}

static void quantize_q8_1(const float *x, svlm_block_q8_1 *y) {
    const float d = absmax(x, 32) / 127;
    const float id = d ? 1.0f / d : 0.0f;
    y->d = svlm_f32_to_f16(d);
    int sum = 0;
    for (int j = 0; j < 32; j++) {
        y->qs[j] = (int8_t)round_away(x[j] * id);
        sum += y->qs[j];
    }
    y->s = svlm_f32_to_f16((float)sum * d);
}

/* ---- K-quants (256-element super-blocks) -------------------------------------------------- */

/* Scale/min of sub-block j (0..7) from the 12 packed bytes of Q4_K/Q5_K: 6 bits each. */
static void kq_scale_min(int j, const uint8_t *s, int *sc, int *mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

static void kq_pack_scales(const int ls[8], const int lm[8], uint8_t s[12]) {
    memset(s, 0, 12);
    for (int j = 0; j < 8; j++) {
        if (j < 4) {
            s[j] = (uint8_t)ls[j];
            s[j + 4] = (uint8_t)lm[j];
        } else {
            s[j + 4] = (uint8_t)((ls[j] & 15) | ((lm[j] & 15) << 4));
            s[j - 4] |= (uint8_t)((ls[j] >> 4) << 6);
            s[j] |= (uint8_t)((lm[j] >> 4) << 6);
        }
    }
}

/*
 * Codes L in 0..nmax, scale and min (x ≈ scale*L - *neg_min) for n values, minimising the
 * weighted squared error: start from the min/max grid, then try nstep+1 nearby grids and
 * keep the least-squares (scale, min) fit of whichever codes give the least error.
 */
static float fit_scale_min(int n, int nmax, const float *x, const float *w, uint8_t *L, float *neg_min,
                           float rmin, float rdelta, int nstep) {
    uint8_t Laux[32];
    float min = x[0], max = x[0];
    float sum_w = w[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *neg_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; i++) {
        int l = imax(0, imin(nmax, nearest_int(iscale * (x[i] - min))));
        L[i] = (uint8_t)l;
        float diff = scale * L[i] + min - x[i];
        best_error += w[i] * (diff * diff);
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = imax(0, imin(nmax, nearest_int(iscale * (x[i] - min))));
            Laux[i] = (uint8_t)l;
            sum_l += w[i] * l;
            sum_l2 += w[i] * l * l;
            sum_xl += w[i] * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float err = 0;
            for (int i = 0; i < n; i++) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                err += w[i] * (diff * diff);
            }
            if (err < best_error) {
                memcpy(L, Laux, (size_t)n);
                best_error = err;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *neg_min = -min;
    return scale;
}

/* Shared by Q4_K (nmax 15) and Q5_K (nmax 31): codes L[256], packed scales, d, dmin. */
static void kq_quantize_superblock(const float *x, int nmax, float rmin, int nstep, uint8_t L[256],
                                   uint8_t scales[12], svlm_f16 *d_out, svlm_f16 *dmin_out) {
    float sub_scale[8], sub_min[8], weights[32];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; j++) {
        const float *xs = x + 32 * j;
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++)
            sum_x2 += xs[l] * xs[l];
        float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++)
            weights[l] = av_x + fabsf(xs[l]);
        sub_scale[j] = fit_scale_min(32, nmax, xs, weights, L + 32 * j, &sub_min[j], rmin, 0.1f, nstep);
        if (sub_scale[j] > max_scale) max_scale = sub_scale[j];
        if (sub_min[j] > max_min) max_min = sub_min[j];
    }
    float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    int ls[8], lm[8];
    for (int j = 0; j < 8; j++) {
        /* ggml stores these through uint8_t before clamping: keep that wrap-around. */
        ls[j] = imin(63, (uint8_t)nearest_int(inv_scale * sub_scale[j]));
        lm[j] = imin(63, (uint8_t)nearest_int(inv_min * sub_min[j]));
    }
    kq_pack_scales(ls, lm, scales);
    *d_out = svlm_f32_to_f16(max_scale / 63.f);
    *dmin_out = svlm_f32_to_f16(max_min / 63.f);
    /* Re-derive the codes against the rounded 6-bit scales actually stored. */
    for (int j = 0; j < 8; j++) {
        int sc, mn;
        kq_scale_min(j, scales, &sc, &mn);
        const float d = svlm_f16_to_f32(*d_out) * sc;
        if (!d) continue;
        const float dm = svlm_f16_to_f32(*dmin_out) * mn;
        for (int ii = 0; ii < 32; ii++)
            L[32 * j + ii] = (uint8_t)imax(0, imin(nmax, nearest_int((x[32 * j + ii] + dm) / d)));
    }
}

static void quantize_q4_K(const float *x, svlm_block_q4_K *y) {
    uint8_t L[256];
    kq_quantize_superblock(x, 15, -1.f, 20, L, y->scales, &y->d, &y->dmin);
    for (int g = 0; g < 4; g++)
        for (int l = 0; l < 32; l++)
            y->qs[32 * g + l] = (uint8_t)(L[64 * g + l] | (L[64 * g + 32 + l] << 4));
}

static void quantize_q5_K(const float *x, svlm_block_q5_K *y) {
    uint8_t L[256];
    kq_quantize_superblock(x, 31, -0.5f, 15, L, y->scales, &y->d, &y->dmin);
    memset(y->qh, 0, sizeof y->qh);
    for (int g = 0; g < 4; g++) {
        for (int l = 0; l < 32; l++) {
            int lo = L[64 * g + l], hi = L[64 * g + 32 + l];
            if (lo > 15) y->qh[l] |= (uint8_t)(1u << (2 * g));
            if (hi > 15) y->qh[l] |= (uint8_t)(2u << (2 * g));
            y->qs[32 * g + l] = (uint8_t)((lo & 15) | ((hi & 15) << 4));
        }
    }
}

/*
 * Symmetric codes L in 0..2*nmax-1 (value l - nmax) for n values with weights x², trying 19
 * scales around nmax/max and keeping the one with the best least-squares fit.
 */
static float fit_scale_symmetric(int n, int nmax, const float *x, int8_t *L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        if (fabsf(x[i]) > amax) {
            amax = fabsf(x[i]);
            max = x[i];
        }
    }
    if (amax < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i])));
        L[i] = (int8_t)(l + nmax);
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0) continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i])));
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++)
                L[i] = (int8_t)(nmax + imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i]))));
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

static void quantize_q6_K(const float *x, svlm_block_q6_K *y) {
    int8_t L[256];
    float scales[16];
    float max_scale = 0, max_abs_scale = 0;
    for (int ib = 0; ib < 16; ib++) {
        scales[ib] = fit_scale_symmetric(16, 32, x + 16 * ib, L + 16 * ib);
        if (fabsf(scales[ib]) > max_abs_scale) {
            max_abs_scale = fabsf(scales[ib]);
            max_scale = scales[ib];
        }
    }
    if (max_abs_scale < GROUP_MAX_EPS) {
        memset(y, 0, sizeof *y);
        return;
    }
    const float iscale = -128.f / max_scale;
    y->d = svlm_f32_to_f16(1 / iscale);
    for (int ib = 0; ib < 16; ib++)
        y->scales[ib] = (int8_t)imin(127, nearest_int(iscale * scales[ib]));
    for (int j = 0; j < 16; j++) {
        const float d = svlm_f16_to_f32(y->d) * y->scales[j];
        if (!d) continue;
        for (int ii = 0; ii < 16; ii++) {
            int l = imax(-32, imin(31, nearest_int(x[16 * j + ii] / d)));
            L[16 * j + ii] = (int8_t)(l + 32);
        }
    }
    for (int h = 0; h < 2; h++) {
        const int8_t *Lh = L + 128 * h;
        uint8_t *ql = y->ql + 64 * h, *qh = y->qh + 32 * h;
        for (int l = 0; l < 32; l++) {
            ql[l] = (uint8_t)((Lh[l] & 15) | ((Lh[l + 64] & 15) << 4));
            ql[l + 32] = (uint8_t)((Lh[l + 32] & 15) | ((Lh[l + 96] & 15) << 4));
            qh[l] = (uint8_t)((Lh[l] >> 4) | ((Lh[l + 32] >> 4) << 2) | ((Lh[l + 64] >> 4) << 4) |
                              ((Lh[l + 96] >> 4) << 6));
        }
    }
}

static void quantize_q8_K(const float *x, svlm_block_q8_K *y) {
    const float max = signed_absmax(x, 256);
    if (!max) {
        memset(y, 0, sizeof *y);
        return;
    }
    const float iscale = -127.f / max;
    for (int j = 0; j < 256; j++)
        y->qs[j] = (int8_t)imin(127, nearest_int(iscale * x[j]));
    for (int j = 0; j < 16; j++) {
        int sum = 0;
        for (int ii = 0; ii < 16; ii++)
            sum += y->qs[16 * j + ii];
        y->bsums[j] = (int16_t)sum;
    }
    y->d = 1 / iscale;
}

/* ---- dequantization ------------------------------------------------------------------------ */

static void dequantize_q4_0(const svlm_block_q4_0 *b, float *y) {
    const float d = svlm_f16_to_f32(b->d);
    for (int j = 0; j < 16; j++) {
        y[j] = ((b->qs[j] & 15) - 8) * d;
        y[j + 16] = ((b->qs[j] >> 4) - 8) * d;
    }
}

static void dequantize_q4_1(const svlm_block_q4_1 *b, float *y) {
    const float d = svlm_f16_to_f32(b->d), m = svlm_f16_to_f32(b->m);
    for (int j = 0; j < 16; j++) {
        y[j] = (b->qs[j] & 15) * d + m;
        y[j + 16] = (b->qs[j] >> 4) * d + m;
    }
}

/* The 5-bit code of element j (0..31) of a Q5_0/Q5_1 block. */
static int code_5bit(const uint8_t qs[16], uint32_t qh, int j) {
    int low = j < 16 ? (qs[j] & 15) : (qs[j - 16] >> 4);
    return low | (int)(((qh >> j) & 1) << 4);
}

static void dequantize_q5_0(const svlm_block_q5_0 *b, float *y) {
    const float d = svlm_f16_to_f32(b->d);
    const uint32_t qh = load_u32le(b->qh);
    for (int j = 0; j < 32; j++)
        y[j] = (code_5bit(b->qs, qh, j) - 16) * d;
}

static void dequantize_q5_1(const svlm_block_q5_1 *b, float *y) {
    const float d = svlm_f16_to_f32(b->d), m = svlm_f16_to_f32(b->m);
    const uint32_t qh = load_u32le(b->qh);
    for (int j = 0; j < 32; j++)
        y[j] = code_5bit(b->qs, qh, j) * d + m;
}

static void dequantize_q8_0(const svlm_block_q8_0 *b, float *y) {
    const float d = svlm_f16_to_f32(b->d);
    for (int j = 0; j < 32; j++)
        y[j] = b->qs[j] * d;
}

static void dequantize_q8_1(const svlm_block_q8_1 *b, float *y) {
    const float d = svlm_f16_to_f32(b->d);
    for (int j = 0; j < 32; j++)
        y[j] = b->qs[j] * d;
}

static void dequantize_q4_K(const svlm_block_q4_K *b, float *y) {
    const float d = svlm_f16_to_f32(b->d), dmin = svlm_f16_to_f32(b->dmin);
    for (int g = 0; g < 4; g++) {
        int sc0, mn0, sc1, mn1;
        kq_scale_min(2 * g, b->scales, &sc0, &mn0);
        kq_scale_min(2 * g + 1, b->scales, &sc1, &mn1);
        const float d0 = d * sc0, m0 = dmin * mn0, d1 = d * sc1, m1 = dmin * mn1;
        const uint8_t *q = b->qs + 32 * g;
        for (int l = 0; l < 32; l++) {
            y[64 * g + l] = d0 * (q[l] & 15) - m0;
            y[64 * g + 32 + l] = d1 * (q[l] >> 4) - m1;
        }
    }
}

static void dequantize_q5_K(const svlm_block_q5_K *b, float *y) {
    const float d = svlm_f16_to_f32(b->d), dmin = svlm_f16_to_f32(b->dmin);
    for (int g = 0; g < 4; g++) {
        int sc0, mn0, sc1, mn1;
        kq_scale_min(2 * g, b->scales, &sc0, &mn0);
        kq_scale_min(2 * g + 1, b->scales, &sc1, &mn1);
        const float d0 = d * sc0, m0 = dmin * mn0, d1 = d * sc1, m1 = dmin * mn1;
        const uint8_t *q = b->qs + 32 * g;
        for (int l = 0; l < 32; l++) {
            int lo = (q[l] & 15) + ((b->qh[l] >> (2 * g)) & 1) * 16;
            int hi = (q[l] >> 4) + ((b->qh[l] >> (2 * g + 1)) & 1) * 16;
            y[64 * g + l] = d0 * lo - m0;
            y[64 * g + 32 + l] = d1 * hi - m1;
        }
    }
}

static void dequantize_q6_K(const svlm_block_q6_K *b, float *y) {
    const float d = svlm_f16_to_f32(b->d);
    for (int h = 0; h < 2; h++) {
        const uint8_t *ql = b->ql + 64 * h, *qh = b->qh + 32 * h;
        const int8_t *sc = b->scales + 8 * h;
        float *yh = y + 128 * h;
        for (int l = 0; l < 32; l++) {
            int is = l / 16;
            int q1 = ((ql[l] & 15) | (((qh[l] >> 0) & 3) << 4)) - 32;
            int q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
            int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
            int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
            yh[l] = d * sc[is + 0] * q1;
            yh[l + 32] = d * sc[is + 2] * q2;
            yh[l + 64] = d * sc[is + 4] * q3;
            yh[l + 96] = d * sc[is + 6] * q4;
        }
    }
}

static void dequantize_q8_K(const svlm_block_q8_K *b, float *y) {
    for (int j = 0; j < 256; j++)
        y[j] = b->d * b->qs[j];
}

/* ---- entry points ------------------------------------------------------------------------- */

/* One block (de)quantizer per type; the loops below walk the row. */
#define BLOCK_FNS(T, blk)                                                                                    \
    static void dq_##T(const void *b, float *y) {                                                            \
        dequantize_##T((const blk *)b, y);                                                                   \
    }                                                                                                        \
    static void q_##T(const float *x, void *b) {                                                             \
        quantize_##T(x, (blk *)b);                                                                           \
    }
BLOCK_FNS(q4_0, svlm_block_q4_0)
BLOCK_FNS(q4_1, svlm_block_q4_1)
BLOCK_FNS(q5_0, svlm_block_q5_0)
BLOCK_FNS(q5_1, svlm_block_q5_1)
BLOCK_FNS(q8_0, svlm_block_q8_0)
BLOCK_FNS(q8_1, svlm_block_q8_1)
BLOCK_FNS(q4_K, svlm_block_q4_K)
BLOCK_FNS(q5_K, svlm_block_q5_K)
BLOCK_FNS(q6_K, svlm_block_q6_K)
BLOCK_FNS(q8_K, svlm_block_q8_K)
#undef BLOCK_FNS

typedef struct {
    void (*dequantize)(const void *block, float *y);
    void (*quantize)(const float *x, void *block);
} block_codec;

static const block_codec *codec_for(svlm_dtype t) {
    static const block_codec codecs[SVLM_DTYPE_COUNT] = {
        [SVLM_Q4_0] = {dq_q4_0, q_q4_0}, [SVLM_Q4_1] = {dq_q4_1, q_q4_1}, [SVLM_Q5_0] = {dq_q5_0, q_q5_0},
        [SVLM_Q5_1] = {dq_q5_1, q_q5_1}, [SVLM_Q8_0] = {dq_q8_0, q_q8_0}, [SVLM_Q8_1] = {dq_q8_1, q_q8_1},
        [SVLM_Q4_K] = {dq_q4_K, q_q4_K}, [SVLM_Q5_K] = {dq_q5_K, q_q5_K}, [SVLM_Q6_K] = {dq_q6_K, q_q6_K},
        [SVLM_Q8_K] = {dq_q8_K, q_q8_K},
    };
    if ((int)t < 0 || (int)t >= SVLM_DTYPE_COUNT || !codecs[t].quantize) return NULL;
    return &codecs[t];
}

int svlm_dequantize_row(svlm_dtype t, const void *src, float *dst, int64_t n) {
    const svlm_dtype_info *info = svlm_dtype_get((int)t);
    if (!info || n < 0 || n % info->block_size) return -1;
    switch (t) {
    case SVLM_F32: memcpy(dst, src, (size_t)n * sizeof(float)); return 0;
    case SVLM_F16: {
        const uint8_t *s = src;
        for (int64_t i = 0; i < n; i++)
            dst[i] = svlm_f16_to_f32((svlm_f16)(s[2 * i] | s[2 * i + 1] << 8));
        return 0;
    }
    case SVLM_BF16: {
        const uint8_t *s = src;
        for (int64_t i = 0; i < n; i++)
            dst[i] = svlm_bf16_to_f32((svlm_bf16)(s[2 * i] | s[2 * i + 1] << 8));
        return 0;
    }
    default: break;
    }
    const block_codec *c = codec_for(t);
    if (!c) return -1;
    const uint8_t *b = src;
    for (int64_t i = 0; i < n / info->block_size; i++)
        c->dequantize(b + (size_t)i * info->type_size, dst + i * info->block_size);
    return 0;
}

int svlm_quantize_row(svlm_dtype t, const float *src, void *dst, int64_t n) {
    const svlm_dtype_info *info = svlm_dtype_get((int)t);
    if (!info || n < 0 || n % info->block_size) return -1;
    switch (t) {
    case SVLM_F32: memcpy(dst, src, (size_t)n * sizeof(float)); return 0;
    case SVLM_F16:
    case SVLM_BF16: {
        uint8_t *d = dst;
        for (int64_t i = 0; i < n; i++) {
            uint16_t h = t == SVLM_F16 ? svlm_f32_to_f16(src[i]) : svlm_f32_to_bf16(src[i]);
            d[2 * i] = (uint8_t)h;
            d[2 * i + 1] = (uint8_t)(h >> 8);
        }
        return 0;
    }
    default: break;
    }
    const block_codec *c = codec_for(t);
    if (!c) return -1;
    uint8_t *b = dst;
    for (int64_t i = 0; i < n / info->block_size; i++)
        c->quantize(src + i * info->block_size, b + (size_t)i * info->type_size);
    return 0;
}
