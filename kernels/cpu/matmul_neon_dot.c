/* Matrix kernels for AArch64 CPUs with the ARMv8.2 dot product (SDOT: four byte products summed
 * into a 32-bit lane in one instruction); compiled with +dotprod, picked at run time. */
#ifdef SVLM_ARM64
#include "kernels/cpu/cpu_kernels.h"

#include <arm_neon.h>

#define DOT_S8(acc, a, b) vdotq_s32(acc, a, b)
#define FN(name)          name##_neon_dot
#include "kernels/cpu/matmul_neon.inc"

void svlm_cpu_matmul_init_neon_dot(svlm_cpu_matmul_ops *ops) {
    install_neon(ops);
}
#endif
