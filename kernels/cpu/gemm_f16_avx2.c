/*
 * The f16 GEMM's register tiles for AVX2 + FMA + F16C (kernels/cpu/gemm_f16.inc has the rest).
 * Sixteen registers hold 6 token rows x 16 outputs (12 accumulators, two widened weight vectors,
 * a broadcast), so a tile runs its 32 weight rows as two halves of the strip's lines. This level
 * has no bf16 GEMM: quantized weights are packed here too (dequantized once into f16), where
 * they otherwise were dequantized again on every batched product.
 */
#ifdef SVLM_X86
#include <immintrin.h>

#include "kernels/cpu/cpu_kernels.h"

#define MR_MAX 6 /* the tiles' rows */
#define MR_MID 4
#define MR_MIN 2

static inline __m256 mask_load(const float *p, int64_t n, __m256i m) {
    return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, m);
}

static inline __m256i lane_mask(int64_t n) {
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n < 0 ? 0 : n > 8 ? 8 : n)), idx);
}

/* m token rows x 16 outputs (columns col0.. of the strip's 32); m is a constant in each caller. */
static inline __attribute__((always_inline)) void half_tile(const int m, int64_t kc, const float *a,
                                                            int64_t lda, const uint16_t *b, float *y,
                                                            int64_t ldy, int64_t mr, int64_t nr,
                                                            int accumulate, const float *bias) {
    /* (loops over i unrolled, so that gcc keeps c in registers rather than storing it every k) */
    __m256 c[MR_MAX][2];
#pragma GCC unroll 6
    for (int i = 0; i < m; i++)
        c[i][0] = c[i][1] = _mm256_setzero_ps();
    for (int64_t k = 0; k < kc; k++, b += 32) {
        __m256 b0 = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)b));
        __m256 b1 = _mm256_cvtph_ps(_mm_load_si128((const __m128i *)(b + 8)));
#pragma GCC unroll 6
        for (int i = 0; i < m; i++) {
            __m256 ai = _mm256_broadcast_ss(a + i * lda + k);
            c[i][0] = _mm256_fmadd_ps(ai, b0, c[i][0]);
            c[i][1] = _mm256_fmadd_ps(ai, b1, c[i][1]);
        }
    }
    const __m256i m0 = lane_mask(nr), m1 = lane_mask(nr - 8);
    __m256 bias0 = _mm256_setzero_ps(), bias1 = _mm256_setzero_ps();
    if (bias && nr > 0) bias0 = mask_load(bias, nr, m0);
    if (bias && nr > 8) bias1 = mask_load(bias + 8, nr - 8, m1);
#pragma GCC unroll 6
    for (int i = 0; i < m; i++) {
        if (i >= mr) break;
        float *row = y + i * ldy;
        if (bias) {
            c[i][0] = _mm256_add_ps(c[i][0], bias0);
            c[i][1] = _mm256_add_ps(c[i][1], bias1);
        }
        if (accumulate) {
            if (nr > 0) c[i][0] = _mm256_add_ps(c[i][0], mask_load(row, nr, m0));
            if (nr > 8) c[i][1] = _mm256_add_ps(c[i][1], mask_load(row + 8, nr - 8, m1));
        }
        if (nr >= 8)
            _mm256_storeu_ps(row, c[i][0]);
        else if (nr > 0)
            _mm256_maskstore_ps(row, m0, c[i][0]);
        if (nr >= 16)
            _mm256_storeu_ps(row + 8, c[i][1]);
        else if (nr > 8)
            _mm256_maskstore_ps(row + 8, m1, c[i][1]);
    }
}

static inline __attribute__((always_inline)) void tile(const int m, int64_t kc, const float *a, int64_t lda,
                                                       const uint16_t *b, float *y, int64_t ldy, int64_t mr,
                                                       int64_t nr, int accumulate, const float *bias) {
    half_tile(m, kc, a, lda, b, y, ldy, mr, nr < 16 ? nr : 16, accumulate, bias);
    if (nr > 16)
        half_tile(m, kc, a, lda, b + 16, y + 16, ldy, mr, nr - 16, accumulate, bias ? bias + 16 : NULL);
}

/* (max and min return their second operand for a NaN first one: NaN stays NaN) */
static void to_f16(const float *x, uint16_t *out, int64_t n) {
    const __m256 hi = _mm256_set1_ps(65504.0f), lo = _mm256_set1_ps(-65504.0f);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(out + i),
                         _mm256_cvtps_ph(_mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_loadu_ps(x + i))),
                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    for (; i < n; i++) {
        float v = x[i] > 65504.0f ? 65504.0f : x[i] < -65504.0f ? -65504.0f : x[i];
        out[i] = (uint16_t)_mm_extract_epi16(_mm_cvtps_ph(_mm_set_ss(v), _MM_FROUND_TO_NEAREST_INT), 0);
    }
}

#define FN(name) name##_avx2
#include "kernels/cpu/gemm_f16.inc"

void svlm_cpu_gemm_f16_init_avx2(svlm_cpu_matmul_ops *ops) {
    ops->matmul_f16 = matmul_f16_avx2;
    ops->f16_quant = 1;
    /* batched decode stays on the dot products: 8 answers of the 256M shape's Q8_0 model decoding
     * together ran at 431 tok/s that way and 302 through this GEMM (2 threads, OpenBLAS as Haswell) */
    ops->packed_min_rows = 16;
}
#endif
