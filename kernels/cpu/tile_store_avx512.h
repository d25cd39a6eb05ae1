/*
 * The store of the AVX-512 GEMMs' MR x 32 register tiles (gemm_bf16_avx512.c,
 * gemm_f16_avx512.c), with the epilogue of svlm_cpu_epilogue: each row's two accumulators get
 * the bias, then the value y holds (when residual), then are stored, the first nr columns of
 * each. (sum + b) + y is the order the op sequence adds them in, so fused and unfused products
 * give the same numbers. Include only from files built with the AVX-512 flags.
 */
#ifndef SVLM_KERNELS_CPU_TILE_STORE_AVX512_H
#define SVLM_KERNELS_CPU_TILE_STORE_AVX512_H

#include <immintrin.h>
#include <stdint.h>

/* Rows 0..min(m, mr) of c (ldy floats apart in y); bias NULL: none. Inlined with m constant. */
static inline __attribute__((always_inline)) void tile_store_avx512(const int m, __m512 (*c)[2], float *y,
                                                                    int64_t ldy, int64_t mr, int64_t nr,
                                                                    const float *bias, int residual) {
    const __mmask16 m0 = nr >= 16 ? 0xffff : (__mmask16)((1u << nr) - 1);
    const __mmask16 m1 = nr >= 32 ? 0xffff : nr <= 16 ? 0 : (__mmask16)((1u << (nr - 16)) - 1);
    __m512 bias0 = _mm512_setzero_ps(), bias1 = _mm512_setzero_ps();
    if (bias) {
        bias0 = _mm512_maskz_loadu_ps(m0, bias);
        bias1 = _mm512_maskz_loadu_ps(m1, bias + 16);
    }
    for (int i = 0; i < m && i < mr; i++) {
        float *row = y + i * ldy;
        if (bias) {
            c[i][0] = _mm512_add_ps(c[i][0], bias0);
            c[i][1] = _mm512_add_ps(c[i][1], bias1);
        }
        if (residual) {
            c[i][0] = _mm512_add_ps(c[i][0], _mm512_maskz_loadu_ps(m0, row));
            c[i][1] = _mm512_add_ps(c[i][1], _mm512_maskz_loadu_ps(m1, row + 16));
        }
        _mm512_mask_storeu_ps(row, m0, c[i][0]);
        _mm512_mask_storeu_ps(row + 16, m1, c[i][1]);
    }
}

#endif
