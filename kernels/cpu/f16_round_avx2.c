/* F16C versions of the f16_round.h loops (compiled with -mavx2 -mf16c). */
#include <immintrin.h>

#include "kernels/cpu/f16_round.h"

static inline __m256 round8(__m256 v) {
    return _mm256_cvtph_ps(_mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

void svlm_f16_round_f16c(float *x, size_t n) {
    for (size_t i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, round8(_mm256_loadu_ps(x + i)));
}

void svlm_f32_to_f16_f16c(svlm_f16 *dst, const float *src, size_t n) {
    for (size_t i = 0; i + 8 <= n; i += 8)
        _mm_storeu_si128(
            (__m128i *)(dst + i),
            _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

void svlm_f16_to_f32_f16c(float *dst, const svlm_f16 *src, size_t n) {
    for (size_t i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + i))));
}

void svlm_gelu_round_in_f16c(float *x, size_t n) {
    const __m256 lo = _mm256_set1_ps(-10.0f), hi = _mm256_set1_ps(10.0f);
    for (size_t i = 0; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 inside = _mm256_and_ps(_mm256_cmp_ps(v, lo, _CMP_GT_OQ), _mm256_cmp_ps(v, hi, _CMP_LT_OQ));
        _mm256_storeu_ps(x + i, _mm256_blendv_ps(v, round8(v), inside));
    }
}

void svlm_gelu_round_out_f16c(float *x, size_t n) {
    const __m256 hi = _mm256_set1_ps(10.0f);
    for (size_t i = 0; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        _mm256_storeu_ps(x + i, _mm256_blendv_ps(v, round8(v), _mm256_cmp_ps(v, hi, _CMP_LT_OQ)));
    }
}
