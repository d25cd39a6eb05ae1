/* Matrix kernels for AVX-512 (F/BW/VL/DQ + VNNI + BF16), picked at run time. The 256-bit
 * kernels of matmul_simd.inc with vpdpbusd for the integer dots, and 512-bit exp loops. */
#ifdef SVLM_X86
#include "kernels/cpu/cpu_kernels.h"

#include <immintrin.h>

#define DOT_U8S8(u, s)   _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
#define BITS_TO_BYTES(b) _mm256_movm_epi8((__mmask32)(b))
#define FN(name)         name##_avx512
#include "kernels/cpu/matmul_simd.inc"

/* ---- 512-bit exp loops (the vision encoder's softmax and GELU run over ~10^8 values) ---- */

/* svlm_expf_fast, 16 lanes at a time (same steps as exp8) */
static inline __m512 exp16(__m512 x) {
    const __m512 magic = _mm512_set1_ps(12582912.0f);
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.33f)), _mm512_set1_ps(88.37f));
    __m512 t = _mm512_add_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), magic);
    __m512 n = _mm512_sub_ps(t, magic);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    __m512i e = _mm512_sub_epi32(_mm512_castps_si512(t), _mm512_set1_epi32(0x4B400000 - 127));
    return _mm512_mul_ps(p, _mm512_castsi512_ps(_mm512_slli_epi32(e, 23)));
}

static inline __mmask16 tail16(int64_t n) {
    return n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1);
}

static float exp_row_512(float *x, int64_t dim, float scale) {
    if (dim <= 0) return 0.0f;
    __m512 vmax = _mm512_set1_ps(x[0]);
    for (int64_t i = 0; i < dim; i += 16)
        vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(vmax, tail16(dim - i), x + i));
    float mx = _mm512_reduce_max_ps(vmax);
    /* scale * (x - mx) as one FMA: x * scale - mx * scale */
    __m512 vs = _mm512_set1_ps(scale), vb = _mm512_set1_ps(-mx * scale), sum = _mm512_setzero_ps();
    for (int64_t i = 0; i < dim; i += 16) {
        __mmask16 m = tail16(dim - i);
        __m512 e = exp16(_mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, x + i), vs, vb));
        _mm512_mask_storeu_ps(x + i, m, e);
        sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(m, e));
    }
    return _mm512_reduce_add_ps(sum);
}

static void silu_mul_512(float *g, const float *u, int64_t n) {
    const __m512 one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        __m512 v = _mm512_maskz_loadu_ps(m, g + i);
        __m512 s = _mm512_div_ps(v, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), v))));
        _mm512_mask_storeu_ps(g + i, m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, u + i)));
    }
}

/* 0.5 x (1 + tanh(u)) as x / (1 + exp(-2u)), like svlm_cpu_gelu_tanh_ref */
static void gelu_tanh_512(float *x, int64_t n) {
    const __m512 one = _mm512_set1_ps(1.0f), k = _mm512_set1_ps(0.7978845608028654f);
    const __m512 c = _mm512_set1_ps(0.044715f), m2 = _mm512_set1_ps(-2.0f);
    for (int64_t i = 0; i < n; i += 16) {
        __mmask16 m = tail16(n - i);
        __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        __m512 u =
            _mm512_mul_ps(k, _mm512_add_ps(v, _mm512_mul_ps(_mm512_mul_ps(c, v), _mm512_mul_ps(v, v))));
        _mm512_mask_storeu_ps(x + i, m, _mm512_div_ps(v, _mm512_add_ps(one, exp16(_mm512_mul_ps(m2, u)))));
    }
}

void svlm_cpu_matmul_init_avx512(svlm_cpu_matmul_ops *ops) {
    install_simd256(ops);
    ops->exp_row = exp_row_512;
    ops->silu_mul = silu_mul_512;
    ops->gelu_tanh = gelu_tanh_512;
}
#endif
