/* f32 to bf16, round to nearest even, NaN kept NaN: the rounding the CPU backend's bf16 GEMM gives
 * its operands, shared by every CUDA kernel that writes bf16. */
#ifndef SVLM_KERNELS_CUDA_BF16_CUH
#define SVLM_KERNELS_CUDA_BF16_CUH

#include <cuda_runtime.h>
#include <stdint.h>

__device__ __forceinline__ uint16_t svlm_bf16_rne(float x) {
    const uint32_t u = __float_as_uint(x);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

#endif
