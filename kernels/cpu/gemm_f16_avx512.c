/*
 * The f16 GEMM's register tiles for AVX-512 (kernels/cpu/gemm_f16.inc has the rest): MR x 32
 * outputs, per k one 64-byte line of halves widened to two vectors, MR broadcasts, 2*MR FMAs.
 * Used for F16 weights (quantized ones take the bf16 GEMM at this level): a 16-token prefill
 * through the 256M shape's F16 text model spent more time converting weights than multiplying.
 */
#ifdef SVLM_X86
#include <immintrin.h>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/tile_store_avx512.h"

#define MR_MAX 12 /* the tiles' rows: 16 tokens run as 12 + 4 */
#define MR_MID 8
#define MR_MIN 4

/* m is a constant in each caller below, so the accumulators stay in registers. */
static inline __attribute__((always_inline)) void tile(const int m, int64_t kc, const float *a, int64_t lda,
                                                       const uint16_t *b, float *y, int64_t ldy, int64_t mr,
                                                       int64_t nr, int accumulate, const float *bias) {
    __m512 c[MR_MAX][2];
    for (int i = 0; i < m; i++)
        c[i][0] = c[i][1] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; k++, b += 32) {
        __m512 b0 = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)b));
        __m512 b1 = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(b + 16)));
        for (int i = 0; i < m; i++) {
            __m512 ai = _mm512_set1_ps(a[i * lda + k]);
            c[i][0] = _mm512_fmadd_ps(ai, b0, c[i][0]);
            c[i][1] = _mm512_fmadd_ps(ai, b1, c[i][1]);
        }
    }
    tile_store_avx512(m, c, y, ldy, mr, nr, bias, accumulate);
}

/* (max and min return their second operand for a NaN first one: NaN stays NaN) */
static void to_f16(const float *x, uint16_t *out, int64_t n) {
    const __m512 hi = _mm512_set1_ps(65504.0f), lo = _mm512_set1_ps(-65504.0f);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(out + i),
                            _mm512_cvtps_ph(_mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_loadu_ps(x + i))),
                                            _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        __m256i v = _mm512_cvtps_ph(_mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_maskz_loadu_ps(m, x + i))),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        _mm256_mask_storeu_epi16(out + i, m, v);
    }
}

#define FN(name) name##_avx512
#include "kernels/cpu/gemm_f16.inc"

void svlm_cpu_gemm_f16_init_avx512(svlm_cpu_matmul_ops *ops) {
    ops->matmul_f16 = matmul_f16_avx512;
    ops->f16_quant = 0;
    ops->packed_min_rows = PACKED_MIN_ROWS_AVX512;
}
#endif
