/*
 * The RoPE rotation every CUDA kernel that rotates keys shares (rope_kernel, rope_store_kernel,
 * qkv_rope_kernel, kv_shift_scatter_kernel), and the f16 rounding of keys and values for f16 pages. Each
 * product and sum is rounded on its own, as the CPU backend's C computes them (ISO C: no contraction): left
 * to the compiler, each kernel's expression would fuse a different product into an FMA, and a key moved by
 * svlm_k_kv_shift would differ in its last bit from the same key rotated by svlm_k_rope.
 */
#ifndef SVLM_KERNELS_CUDA_ROPE_CUH
#define SVLM_KERNELS_CUDA_ROPE_CUH

#include <cuda_fp16.h>

/* v as it will read back from f16 pages (round), or as it is */
__device__ __forceinline__ float through_f16(float v, int round) {
    return round ? __half2float(__float2half_rn(v)) : v;
}

/* theta = pos * theta_scale^i, built factor by factor in float as the CPU (and ggml) does. */
__device__ __forceinline__ float rope_theta(float pos, float theta_scale, int i) {
    float theta = pos;
    for (int t = 0; t < i; t++)
        theta *= theta_scale;
    return theta;
}

/* (x0, x1) rotated by the angle whose cosine and sine are c, s. */
__device__ __forceinline__ float rope_first(float x0, float x1, float c, float s) {
    return __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
}
__device__ __forceinline__ float rope_second(float x0, float x1, float c, float s) {
    return __fadd_rn(__fmul_rn(x0, s), __fmul_rn(x1, c));
}

#endif
