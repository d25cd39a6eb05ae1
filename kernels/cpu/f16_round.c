/* Scalar paths and dispatch for f16_round.h. */
#include "kernels/cpu/f16_round.h"

#include "kernels/dtype.h"

#if defined(SVLM_X86) && defined(__clang__)
#include <cpuid.h>
#endif

#ifdef SVLM_X86
static int have_f16c(void) {
#if defined(__clang__)
    /* clang before 18 does not know "f16c" in __builtin_cpu_supports: CPUID.1:ECX bit 29 */
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && ((c >> 29) & 1) && __builtin_cpu_supports("avx2");
#else
    return __builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx2");
#endif
}
#endif

static float r16(float v) {
    return svlm_f16_to_f32(svlm_f32_to_f16(v));
}

/* Runs the F16C variant fn on the first n / 8 * 8 values when the CPU has it (fn's last argument is
 * that count) and gives the index where the scalar tail starts. */
#ifdef SVLM_X86
#define F16C_PART(n, fn, ...) (have_f16c() ? (fn(__VA_ARGS__, (n) / 8 * 8), (n) / 8 * 8) : (size_t)0)
#else
#define F16C_PART(n, fn, ...) ((size_t)0)
#endif

void svlm_f16_round(float *x, size_t n) {
    for (size_t i = F16C_PART(n, svlm_f16_round_f16c, x); i < n; i++)
        x[i] = r16(x[i]);
}

void svlm_f32_to_f16_array(svlm_f16 *dst, const float *src, size_t n) {
    for (size_t i = F16C_PART(n, svlm_f32_to_f16_f16c, dst, src); i < n; i++)
        dst[i] = svlm_f32_to_f16(src[i]);
}

void svlm_f16_to_f32_array(float *dst, const svlm_f16 *src, size_t n) {
    for (size_t i = F16C_PART(n, svlm_f16_to_f32_f16c, dst, src); i < n; i++)
        dst[i] = svlm_f16_to_f32(src[i]);
}

void svlm_gelu_round_in(float *x, size_t n) {
    for (size_t i = F16C_PART(n, svlm_gelu_round_in_f16c, x); i < n; i++)
        if (x[i] > -10.0f && x[i] < 10.0f) x[i] = r16(x[i]);
}

void svlm_gelu_round_out(float *y, size_t n) {
    for (size_t i = F16C_PART(n, svlm_gelu_round_out_f16c, y); i < n; i++)
        if (y[i] < 10.0f) y[i] = r16(y[i]);
}
