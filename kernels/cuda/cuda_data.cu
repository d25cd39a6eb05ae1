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

__device__ float gelu_f16(float v) {
    if (v > -10.0f && v < 10.0f) v = round_f16(v);
    /* the formula of gelu_tanh_kernel (and the CPU): v / (1 + exp(-2u)) */
    const float u = 0.7978845608028654f * (v + 0.044715f * v * v * v);
    float y = v / (1.0f + expf(-2.0f * u));
    if (y < 10.0f) y = round_f16(y);
    return y;
}

__global__ void gelu_tanh_f16_kernel(float *x, int64_t n) {
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i < n) x[i] = gelu_f16(x[i]);
}

/* the encoder's feed-forward bias and GELU in one pass over the widest activations; row blockIdx.y */
__global__ void add_bias_gelu_f16_kernel(float *x, const float *b, int64_t dim) {
    const int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (j >= dim) return;
    float *p = x + blockIdx.y * dim + j;
    *p = gelu_f16(*p + b[j]);
}

/* one block row per output row; threads stride over the row's floats */
__global__ void gather_rows_kernel(float *dst, const float *src, const int32_t *idx, int64_t dim) {
    const int64_t r = blockIdx.x;
    const float *s = src + (int64_t)idx[r] * dim;
    float *d = dst + r * dim;
    for (int64_t j = threadIdx.x; j < dim; j += blockDim.x)
        d[j] = s[j];
}

/* row blockIdx.y to its own destination; threads stride over the row */
template <bool F16> __global__ void store_rows_kernel(void *const *dsts, const float *x, int64_t dim) {
    const int64_t r = blockIdx.y;
    const float *s = x + r * dim;
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < dim;
         j += (int64_t)gridDim.x * blockDim.x)
        if (F16)
            static_cast<__half *>(dsts[r])[j] = __float2half_rn(s[j]);
        else
            static_cast<float *>(dsts[r])[j] = s[j];
}

/* one thread per patch value: output element o of patch row (tile, i) is (c, ky, kx) */
__global__ void im2col_kernel(float *dst, const float *px, int S, int p, int g, int64_t row, int64_t total,
                              int round) {
    const int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (o >= total) return;
    const int64_t r = o / row, e = o % row, t = r / ((int64_t)g * g), i = r % ((int64_t)g * g);
    const int c = (int)(e / ((int64_t)p * p)), ky = (int)(e / p % p), kx = (int)(e % p);
    const float v = px[(t * 3 + c) * (int64_t)S * S + ((i / g) * p + ky) * (int64_t)S + (i % g) * p + kx];
    dst[o] = round ? round_f16(v) : v;
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

extern "C" int svlm_cu_add_bias_gelu_f16(cudaStream_t s, float *x, const float *b, int64_t n_rows,
                                         int64_t dim) {
    for (int64_t r0 = 0; r0 < n_rows && dim > 0; r0 += 65535) { /* gridDim.y's limit */
        const dim3 grid(blocks_for(dim, 256), (unsigned)(n_rows - r0 < 65535 ? n_rows - r0 : 65535));
        add_bias_gelu_f16_kernel<<<grid, 256, 0, s>>>(x + r0 * dim, b, dim);
    }
    return (int)cudaGetLastError();
}

extern "C" int svlm_cu_im2col(cudaStream_t s, float *dst, const float *pixels, int b, int S, int p,
                              int round) {
    const int g = S / p;
    const int64_t row = 3LL * p * p, total = (int64_t)b * g * g * row;
    if (total > 0)
        im2col_kernel<<<blocks_for(total, 256), 256, 0, s>>>(dst, pixels, S, p, g, row, total, round);
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

extern "C" int svlm_cu_store_rows(cudaStream_t s, void *const *dsts, int f16, const float *x, int64_t n,
                                  int64_t dim) {
    int64_t bx = (dim + 255) / 256;
    if (bx > 64) bx = 64;
    for (int64_t r0 = 0; r0 < n; r0 += 65535) { /* gridDim.y's limit */
        const dim3 grid((unsigned)bx, (unsigned)(n - r0 < 65535 ? n - r0 : 65535));
        if (f16)
            store_rows_kernel<true><<<grid, 256, 0, s>>>(dsts + r0, x + r0 * dim, dim);
        else
            store_rows_kernel<false><<<grid, 256, 0, s>>>(dsts + r0, x + r0 * dim, dim);
    }
    return (int)cudaGetLastError();
}
