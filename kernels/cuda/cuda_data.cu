/*
 * Data-movement kernels of the CUDA backend: storing f32 rows as f16 (the KV working copy),
 * rounding through f16 (where llama.cpp computes in f16), the f16-table GELU of the vision
 * encoder, and gathering rows (pixel shuffle, positions). Roundings are IEEE round-to-nearest-
 * even, as svlm_f32_to_f16 on the CPU.
 */
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>

#include "kernels/cuda/cuda_ops.h"

namespace {

__device__ float round_f16(float v) {
    return __half2float(__float2half_rn(v));
}

__global__ void store_f16_kernel(__half *y, const float *x, int64_t n) {
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i < n) y[i] = __float2half_rn(x[i]);
}

__global__ void load_f16_kernel(float *y, const __half *x, int64_t n) {
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i < n) y[i] = __half2float(x[i]);
}

__global__ void round_f16_kernel(float *x, int64_t n) {
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i < n) x[i] = round_f16(x[i]);
}

__global__ void gelu_tanh_f16_kernel(float *x, int64_t n) {
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i >= n) return;
    float v = x[i];
    if (v > -10.0f && v < 10.0f) v = round_f16(v);
    /* the formula of gelu_tanh_kernel (and the CPU): v / (1 + exp(-2u)) */
    const float u = 0.7978845608028654f * (v + 0.044715f * v * v * v);
    float y = v / (1.0f + expf(-2.0f * u));
    if (y < 10.0f) y = round_f16(y);
    x[i] = y;
}

/* one block row per output row; threads stride over the row's floats */
__global__ void gather_rows_kernel(float *dst, const float *src, const int32_t *idx, int64_t dim) {
    const int64_t r = blockIdx.x;
    const float *s = src + (int64_t)idx[r] * dim;
    float *d = dst + r * dim;
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x)
        d[j] = s[j];
}

unsigned blocks_for(int64_t n, int threads) {
    return (unsigned)((n + threads - 1) / threads);
}

} // namespace

extern "C" int svlm_cu_store_f16(cudaStream_t s, void *y, const float *x, int64_t n) {
    if (n > 0) store_f16_kernel<<<blocks_for(n, 256), 256, 0, s>>>((__half *)y, x, n);
    return (int)cudaGetLastError();
}

extern "C" int svlm_cu_load_f16(cudaStream_t s, float *y, const void *x, int64_t n) {
    if (n > 0) load_f16_kernel<<<blocks_for(n, 256), 256, 0, s>>>(y, (const __half *)x, n);
    return (int)cudaGetLastError();
}

extern "C" int svlm_cu_round_f16(cudaStream_t s, float *x, int64_t n) {
    if (n > 0) round_f16_kernel<<<blocks_for(n, 256), 256, 0, s>>>(x, n);
    return (int)cudaGetLastError();
}

extern "C" int svlm_cu_gelu_tanh_f16(cudaStream_t s, float *x, int64_t n) {
    if (n > 0) gelu_tanh_f16_kernel<<<blocks_for(n, 256), 256, 0, s>>>(x, n);
    return (int)cudaGetLastError();
}

extern "C" int svlm_cu_gather_rows(cudaStream_t s, float *dst, const float *src, const int32_t *idx,
                                   int64_t n, int64_t dim) {
    if (n > 0 && dim > 0) {
        const int threads = dim >= 256 ? 256 : (int)((dim + 31) / 32 * 32);
        gather_rows_kernel<<<(unsigned)n, threads, 0, s>>>(dst, src, idx, dim);
    }
    return (int)cudaGetLastError();
}
