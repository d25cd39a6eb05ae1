/* Scalar paths and dispatch for f16_round.h. */
#include "kernels/cpu/f16_round.h"

#include "kernels/dtype.h"

static int have_f16c(void) {
#if defined(SVLM_X86) && defined(__GNUC__)
    return __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx2");
#else
    return 0;
#endif
}

static float r16(float v) {
    return svlm_f16_to_f32(svlm_f32_to_f16(v));
}

void svlm_f16_round(float *x, size_t n) {
    size_t done = 0;
#ifdef SVLM_X86
    if (have_f16c()) {
        done = n / 8 * 8;
        svlm_f16_round_f16c(x, done);
    }
#endif
    for (size_t i = done; i < n; i++)
        x[i] = r16(x[i]);
}

void svlm_f32_to_f16_array(svlm_f16 *dst, const float *src, size_t n) {
    size_t done = 0;
#ifdef SVLM_X86
    if (have_f16c()) {
        done = n / 8 * 8;
        svlm_f32_to_f16_f16c(dst, src, done);
    }
#endif
    for (size_t i = done; i < n; i++)
        dst[i] = svlm_f32_to_f16(src[i]);
}

void svlm_f16_to_f32_array(float *dst, const svlm_f16 *src, size_t n) {
    size_t done = 0;
#ifdef SVLM_X86
    if (have_f16c()) {
        done = n / 8 * 8;
        svlm_f16_to_f32_f16c(dst, src, done);
    }
#endif
    for (size_t i = done; i < n; i++)
        dst[i] = svlm_f16_to_f32(src[i]);
}

void svlm_gelu_round_in(float *x, size_t n) {
    size_t done = 0;
#ifdef SVLM_X86
    if (have_f16c()) {
        done = n / 8 * 8;
        svlm_gelu_round_in_f16c(x, done);
    }
#endif
    for (size_t i = done; i < n; i++)
        if (x[i] > -10.0f && x[i] < 10.0f) x[i] = r16(x[i]);
}

void svlm_gelu_round_out(float *y, size_t n) {
    size_t done = 0;
#ifdef SVLM_X86
    if (have_f16c()) {
        done = n / 8 * 8;
        svlm_gelu_round_out_f16c(y, done);
    }
#endif
    for (size_t i = done; i < n; i++)
        if (y[i] < 10.0f) y[i] = r16(y[i]);
}
