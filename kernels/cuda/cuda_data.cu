/*
 * Data-movement kernels of the CUDA backend: storing f32 rows as f16 (the KV working copy),
 * rounding through f16 (where llama.cpp computes in f16), the f16-table GELU of the vision
 * encoder, and gathering rows (pixel shuffle, positions). Roundings are IEEE round-to-nearest-
 * even, as svlm_f32_to_f16 on the CPU.
 */
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>

#include "kernels/cuda/cuda_bf16.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_rope.cuh"

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

/* the GELU of a product whose epilogue added the bias, as the next product's bf16 operand */
__global__ void gelu_f16_to_bf16_kernel(const float *x, uint16_t *y, int64_t n) {
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i < n) y[i] = svlm_bf16_rne(gelu_f16(x[i]));
}

/* the same as an F16 weight's operand (values past f16's range become infinities, as in llama.cpp) */
__global__ void gelu_f16_to_f16_kernel(const float *x, __half *y, int64_t n) {
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i < n) y[i] = __float2half_rn(gelu_f16(x[i]));
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
    if (!dsts[r]) return; /* a row the caller skips */
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < dim;
         j += (int64_t)gridDim.x * blockDim.x)
        if (F16)
            static_cast<__half *>(dsts[r])[j] = __float2half_rn(s[j]);
        else
            static_cast<float *>(dsts[r])[j] = s[j];
}

/* svlm_k_kv_shift's first half: block (row i, layer l) copies the moved row's raw key and value
 * into scratch [n_l][n][2][dim] (layers l0 .. l0 + n_l - 1, blockIdx.y), so the second half may
 * write rows that overlap them. tab:
 * [3][n_layer] pointers (raw keys, keys, values). E: the stored element's bits. */
template <typename E>
__global__ void kv_shift_gather_kernel(void *const *tab, int n_layer, int l0, int64_t src, int64_t n, int dim,
                                       E *scratch) {
    const int64_t i = blockIdx.x;
    const int g = blockIdx.y, l = l0 + g; /* g: the layer's place in the group's scratch */
    const E *raw = static_cast<const E *>(tab[l]) + (src + i) * dim;
    const E *v = static_cast<const E *>(tab[2 * n_layer + l]) + (src + i) * dim;
    E *out = scratch + ((int64_t)g * n + i) * 2 * dim;
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        out[j] = raw[j];
        out[dim + j] = v[j];
    }
}

__device__ __forceinline__ float kv_load(const __half *p) {
    return __half2float(*p);
}
__device__ __forceinline__ float kv_load(const float *p) {
    return *p;
}
__device__ __forceinline__ void kv_store(__half *p, float v) {
    *p = __float2half_rn(v);
}
__device__ __forceinline__ void kv_store(float *p, float v) {
    *p = v;
}

/* The second half: the moved rows written at dst, and the keys rotated to pos[i] from the raw
 * ones (cuda_rope.cuh: rope_kernel's rotation, bit for bit). */
template <typename T>
__global__ void kv_shift_scatter_kernel(void *const *tab, int n_layer, int l0, int64_t dst, int64_t n,
                                        int n_kv_head, int hd, int half, const int32_t *pos,
                                        float theta_scale, int neox, const T *scratch) {
    const int64_t i = blockIdx.x;
    const int g = blockIdx.y, l = l0 + g, dim = n_kv_head * hd;
    const T *sr = scratch + ((int64_t)g * n + i) * 2 * dim, *sv = sr + dim;
    T *raw = static_cast<T *>(tab[l]) + (dst + i) * dim;
    T *kc = static_cast<T *>(tab[n_layer + l]) + (dst + i) * dim;
    T *vc = static_cast<T *>(tab[2 * n_layer + l]) + (dst + i) * dim;
    const float p = (float)pos[i];
    for (int j = threadIdx.x; j < dim; j += blockDim.x) {
        raw[j] = sr[j];
        vc[j] = sv[j];
        const int d = j % hd, base = j - d;
        const float me = kv_load(sr + j);
        float out = me;
        if (d < 2 * half) { /* a rotated dimension: first or second of its pair */
            const int e = neox ? (d < half ? d : d - half) : d / 2;
            const bool first = neox ? d < half : d % 2 == 0;
            const int partner = neox ? (first ? d + half : d - half) : (first ? d + 1 : d - 1);
            const float other = kv_load(sr + base + partner);
            const float theta = rope_theta(p, theta_scale, e);
            const float c = cosf(theta), s = sinf(theta);
            out = first ? rope_first(me, other, c, s) : rope_second(other, me, c, s);
        }
        kv_store(kc + j, out);
    }
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

extern "C" int svlm_cu_gelu_f16_to_bf16(cudaStream_t s, const float *x, uint16_t *y, int64_t n) {
    if (n > 0) gelu_f16_to_bf16_kernel<<<blocks_for(n, 256), 256, 0, s>>>(x, y, n);
    return (int)cudaGetLastError();
}

extern "C" int svlm_cu_gelu_f16_to_f16(cudaStream_t s, const float *x, uint16_t *y, int64_t n) {
    if (n > 0) gelu_f16_to_f16_kernel<<<blocks_for(n, 256), 256, 0, s>>>(x, reinterpret_cast<__half *>(y), n);
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

extern "C" int svlm_cu_kv_shift(cudaStream_t s, void *const *tab, int n_layer, int l0, int n_l, int64_t dst,
                                int64_t src, int64_t n, int n_kv_head, int head_dim, int n_rot,
                                const int32_t *pos, float theta_scale, int neox, int f16, void *scratch) {
    const int dim = n_kv_head * head_dim;
    if (n <= 0 || n_l <= 0 || dim <= 0) return 0;
    if (n > 0x7fffffff || n_l > 65535 || l0 < 0 || l0 + n_l > n_layer) return (int)cudaErrorInvalidValue;
    const dim3 grid((unsigned)n, (unsigned)n_l);
    const int threads = dim >= 128 ? 128 : (dim + 31) / 32 * 32;
    if (f16) {
        kv_shift_gather_kernel<unsigned short>
            <<<grid, threads, 0, s>>>(tab, n_layer, l0, src, n, dim, static_cast<unsigned short *>(scratch));
        kv_shift_scatter_kernel<__half><<<grid, threads, 0, s>>>(tab, n_layer, l0, dst, n, n_kv_head,
                                                                 head_dim, n_rot / 2, pos, theta_scale, neox,
                                                                 static_cast<const __half *>(scratch));
    } else {
        kv_shift_gather_kernel<float>
            <<<grid, threads, 0, s>>>(tab, n_layer, l0, src, n, dim, static_cast<float *>(scratch));
        kv_shift_scatter_kernel<float><<<grid, threads, 0, s>>>(tab, n_layer, l0, dst, n, n_kv_head, head_dim,
                                                                n_rot / 2, pos, theta_scale, neox,
                                                                static_cast<const float *>(scratch));
    }
    return (int)cudaGetLastError();
}
