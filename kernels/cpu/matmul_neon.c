/* Matrix kernels for every AArch64 CPU (NEON is part of the architecture). Byte dots widen to
 * 16-bit products and add pairwise into 32-bit lanes: exact for any two signed bytes. */
#ifdef SVLM_ARM64
#include "kernels/cpu/cpu_kernels.h"

#include <arm_neon.h>

static inline int32x4_t dot_s8_widen(int32x4_t acc, int8x16_t a, int8x16_t b) {
    int32x4_t lo = vpaddlq_s16(vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    int32x4_t hi = vpaddlq_s16(vmull_high_s8(a, b));
    return vaddq_s32(acc, vpaddq_s32(lo, hi));
}

#define DOT_S8(acc, a, b) dot_s8_widen(acc, a, b)
#define FN(name)          name##_neon
#include "kernels/cpu/matmul_neon.inc"

void svlm_cpu_matmul_init_neon(svlm_cpu_matmul_ops *ops) {
    install_neon(ops);
}
#endif
