/*
 * Row-wise and element-wise kernels of the CUDA backend: RMSNorm, LayerNorm, RoPE, SwiGLU, GELU,
 * residual adds, bias, softmax, greedy argmax and the f32 -> bf16 conversion in front of cuBLAS. Reductions
 * run in double where the CPU reference does, so both backends agree to float rounding.
 */
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdlib.h>

#include "kernels/cuda/cuda_bf16.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_pdl.cuh"
#include "kernels/cuda/cuda_rope.cuh"

namespace {

constexpr int kRowThreads = 256;

/* Sum over the block; every thread gets the result. `scratch` holds one value per warp. */
template <typename T> __device__ T block_sum(T v, T *scratch) {
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
    __syncthreads(); /* scratch may still be read by a previous call */
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    T t = 0;
    for (int i = 0; i < n_warps; i++)
        t += scratch[i];
    return t;
}

__device__ float block_max(float v, float *scratch) {
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    float t = -INFINITY;
    for (int i = 0; i < n_warps; i++)
        t = fmaxf(t, scratch[i]);
    return t;
}

/* rmsnorm_kernel and rope_store_kernel run in decode steps: launched with pdl_launch */
__global__ void rmsnorm_kernel(const float *x, const float *w, float *y, int64_t dim, float eps) {
    __shared__ double scratch[32];
    pdl_wait();
    pdl_launch_dependents();
    const float *xr = x + blockIdx.x * dim;
    float *yr = y + blockIdx.x * dim;
    double ss = 0;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x)
        ss += (double)xr[i] * xr[i];
    ss = block_sum(ss, scratch);
    const float scale = (float)(1.0 / sqrt(ss / (double)dim + (double)eps));
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x)
        yr[i] = xr[i] * scale * w[i];
}

__device__ __forceinline__ void store_out(float *y, int64_t i, float v) {
    y[i] = v;
}
__device__ __forceinline__ void store_out(uint16_t *y, int64_t i, float v) {
    y[i] = svlm_bf16_rne(v); /* the next product's operand, as the f32 -> bf16 pass would round it */
}
__device__ __forceinline__ void store_out(__half *y, int64_t i, float v) {
    y[i] = __float2half_rn(v); /* an F16 weight's product operand */
}

template <typename Out>
__global__ void layernorm_kernel(const float *x, const float *w, const float *b, Out *y, int64_t dim,
                                 float eps) {
    __shared__ double scratch[32];
    const float *xr = x + blockIdx.x * dim;
    Out *yr = y + blockIdx.x * dim;
    double sum = 0;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x)
        sum += xr[i];
    const double mean = block_sum(sum, scratch) / (double)dim;
    double var = 0;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x)
        var += ((double)xr[i] - mean) * ((double)xr[i] - mean);
    var = block_sum(var, scratch);
    const float m = (float)mean, scale = (float)(1.0 / sqrt(var / (double)dim + (double)eps));
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
        const float v = (xr[i] - m) * scale * w[i];
        store_out(yr, i, b ? v + b[i] : v);
    }
}

/* The same for rows of up to 32 kNormPer elements: one warp a row, the row read once into registers
 * (a block a row read it three times and met at barriers twice; the encoder normalizes 1024 rows
 * of 768 a tile twice a layer). Sums in double as above, in another order. Two blocks an SM: the
 * compiler keeps a lane's loads of w and b in flight beside its row (up to 128 registers). */
constexpr int kNormWarps = 8; /* rows of up to 768, 24 a lane (wider ones spilled at 128 registers) */
template <typename Out, int kNormPer>
__global__ void __launch_bounds__(32 * kNormWarps, 2)
    layernorm_warp_kernel(const float *x, const float *w, const float *b, Out *y, int64_t n, int dim,
                          float eps) {
    const int lane = threadIdx.x % 32;
    const int64_t row = (int64_t)blockIdx.x * kNormWarps + threadIdx.x / 32;
    if (row >= n) return;
    const float *xr = x + row * dim;
    float v[kNormPer];
    double sum = 0;
#pragma unroll
    for (int i = 0; i < kNormPer; i++) {
        const int j = lane + 32 * i;
        v[i] = j < dim ? xr[j] : 0.0f;
        sum += v[i];
    }
    for (int o = 16; o > 0; o >>= 1)
        sum += __shfl_xor_sync(0xffffffffu, sum, o);
    const double mean = sum / (double)dim;
    double var = 0;
#pragma unroll
    for (int i = 0; i < kNormPer; i++)
        if (lane + 32 * i < dim) var += ((double)v[i] - mean) * ((double)v[i] - mean);
    for (int o = 16; o > 0; o >>= 1)
        var += __shfl_xor_sync(0xffffffffu, var, o);
    const float m = (float)mean, scale = (float)(1.0 / sqrt(var / (double)dim + (double)eps));
    Out *yr = y + row * dim;
#pragma unroll
    for (int i = 0; i < kNormPer; i++) {
        const int j = lane + 32 * i;
        if (j < dim) {
            const float o = (v[i] - m) * scale * w[j];
            store_out(yr, j, b ? o + b[j] : o);
        }
    }
}

template <typename Out>
int launch_layernorm(cudaStream_t s, const float *x, const float *w, const float *b, Out *y, int64_t n,
                     int64_t dim, float eps) {
    if (n <= 0) return 0;
    const unsigned blocks = (unsigned)((n + kNormWarps - 1) / kNormWarps), threads = 32 * kNormWarps;
    if (dim <= 32 * 8)
        layernorm_warp_kernel<Out, 8><<<blocks, threads, 0, s>>>(x, w, b, y, n, (int)dim, eps);
    else if (dim <= 32 * 16)
        layernorm_warp_kernel<Out, 16><<<blocks, threads, 0, s>>>(x, w, b, y, n, (int)dim, eps);
    else if (dim <= 32 * 24)
        layernorm_warp_kernel<Out, 24><<<blocks, threads, 0, s>>>(x, w, b, y, n, (int)dim, eps);
    else
        layernorm_kernel<Out><<<(unsigned)n, kRowThreads, 0, s>>>(x, w, b, y, dim, eps);
    return (int)cudaGetLastError();
}

/* One thread per (row, head, pair). The angle is built pair after pair in float, as the CPU
 * backend (and ggml) does, so both round the same way. */
__global__ void rope_kernel(float *x, int64_t n, int n_head, int head_dim, int half, const int32_t *pos,
                            float theta_scale, int neox) {
    const int64_t id = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (id >= n * n_head * half) return;
    const int p = (int)(id % half);
    const int64_t th = id / half; /* row * n_head + head */
    const int64_t t = th / n_head;
    const float theta = rope_theta((float)pos[t], theta_scale, p);
    const float c = cosf(theta), s = sinf(theta);
    float *v = x + th * head_dim;
    float *a = v + (neox ? p : 2 * p), *bb = a + (neox ? half : 1);
    const float x0 = *a, x1 = *bb;
    *a = rope_first(x0, x1, c, s);
    *bb = rope_second(x0, x1, c, s);
}

/* Row blockIdx.x of a decode step: q's pairs rotated in place; each key element rotated (from its
 * pair partner, read as it came) and stored at dsts[row]; each value stored at dsts[n + row];
 * keep: keys then values as they came; round: keys and values through f16 first. The rotation
 * is rope_kernel's, operation for operation. */
__global__ void rope_store_kernel(float *q, const float *kx, const float *vx, int n, int n_head,
                                  int n_kv_head, int hd, int half, const int32_t *pos, float theta_scale,
                                  int neox, void *const *dsts, int f16_cache, float *keep, int round) {
    pdl_wait();
    pdl_launch_dependents();
    const int r = blockIdx.x, kvd = n_kv_head * hd;
    const float p = (float)pos[r];
    for (int j = threadIdx.x; j < n_head * half; j += blockDim.x) {
        const int head = j / half, i = j % half;
        const float theta = rope_theta(p, theta_scale, i);
        const float c = cosf(theta), s = sinf(theta);
        float *a = q + ((int64_t)r * n_head + head) * hd + (neox ? i : 2 * i), *b = a + (neox ? half : 1);
        const float x0 = *a, x1 = *b;
        *a = rope_first(x0, x1, c, s);
        *b = rope_second(x0, x1, c, s);
    }
    const float *kr = kx + (int64_t)r * kvd, *vr = vx + (int64_t)r * kvd;
    for (int j = threadIdx.x; j < kvd; j += blockDim.x) {
        const int d = j % hd, base = j - d;
        const float me = through_f16(kr[j], round);
        float out = me;
        if (d < 2 * half) { /* a rotated dimension: first or second of its pair */
            const int i = neox ? (d < half ? d : d - half) : d / 2;
            const bool first = neox ? d < half : d % 2 == 0;
            const int partner = neox ? (first ? d + half : d - half) : (first ? d + 1 : d - 1);
            const float other = through_f16(kr[base + partner], round);
            const float theta = rope_theta(p, theta_scale, i);
            const float c = cosf(theta), s = sinf(theta);
            out = first ? rope_first(me, other, c, s) : rope_second(other, me, c, s);
        }
        const float v = through_f16(vr[j], round);
        if (keep) {
            keep[(int64_t)r * kvd + j] = kr[j];
            keep[((int64_t)n + r) * kvd + j] = vr[j];
        }
        if (f16_cache) {
            static_cast<__half *>(dsts[r])[j] = __float2half_rn(out);
            static_cast<__half *>(dsts[n + r])[j] = __float2half_rn(v);
        } else {
            static_cast<float *>(dsts[r])[j] = out;
            static_cast<float *>(dsts[n + r])[j] = v;
        }
    }
}

__global__ void silu_mul_kernel(float *g, const float *u, int64_t n) {
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i < n) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

__global__ void gelu_tanh_kernel(float *x, int64_t n) {
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i >= n) return;
    /* 0.5 v (1 + tanh u) = v / (1 + exp(-2u)): no cancellation for negative v (as on the CPU) */
    const float v = x[i];
    const float u = 0.7978845608028654f * (v + 0.044715f * v * v * v);
    x[i] = v / (1.0f + expf(-2.0f * u));
}

__global__ void add_kernel(float *y, const float *x, int64_t n) {
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i < n) y[i] += x[i];
}

/* row blockIdx.y: no division per element (the encoder adds six biases per layer to 16 tiles) */
__global__ void add_bias_kernel(float *y, const float *b, int64_t dim) {
    const int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (j < dim) y[blockIdx.y * dim + j] += b[j];
}

__global__ void softmax_kernel(float *x, int64_t dim) {
    __shared__ float scratch[32];
    __shared__ double dscratch[32];
    float *r = x + blockIdx.x * dim;
    float m = -INFINITY;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x)
        m = fmaxf(m, r[i]);
    m = block_max(m, scratch);
    double sum = 0;
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
        const float e = expf(r[i] - m);
        r[i] = e;
        sum += e;
    }
    sum = block_sum(sum, dscratch);
    const float inv = (float)(1.0 / sum);
    for (int64_t i = threadIdx.x; i < dim; i += blockDim.x)
        r[i] *= inv;
}

/* (value, index) candidates of svlm_k_argmax; index -1 is none. NaNs never enter, so the
 * comparison is a total order and the first of equals wins however the row was split. */
__device__ bool argmax_better(float v, int64_t i, float bv, int64_t bi) {
    return i >= 0 && (bi < 0 || v > bv || (v == bv && i < bi));
}

constexpr int kArgmaxThreads = 1024; /* one row a block: a decode step's row is one vocabulary */
constexpr int kArgmaxAhead = 8;

/* AHEAD (SVLM_CUDA_ARGMAX_AHEAD=1; off: run 3 measured it within noise): a thread's elements eight at a
 * time, their loads issued before any comparison. One at a time, a 49,280-word vocabulary is 48
 * dependent loads a thread (27 us a token in the profile, docs/cuda.md); eight at a time it is six.
 * The candidates come in another order, but argmax_better is a total order: the same index wins. */
template <bool AHEAD> __global__ void argmax_kernel(const float *x, int64_t dim, int32_t *ids) {
    __shared__ float sv[32];
    __shared__ int64_t si[32];
    const float *r = x + blockIdx.x * dim;
    float bv = 0;
    int64_t bi = -1;
    if (AHEAD) {
        for (int64_t base = threadIdx.x; base < dim; base += (int64_t)kArgmaxAhead * blockDim.x) {
            float v[kArgmaxAhead];
#pragma unroll
            for (int u = 0; u < kArgmaxAhead; u++) { /* past the row: its last element, never taken */
                const int64_t i = base + (int64_t)u * blockDim.x;
                v[u] = r[i < dim ? i : dim - 1];
            }
#pragma unroll
            for (int u = 0; u < kArgmaxAhead; u++) {
                const int64_t i = base + (int64_t)u * blockDim.x;
                if (i < dim && !isnan(v[u]) && argmax_better(v[u], i, bv, bi)) bv = v[u], bi = i;
            }
        }
    } else {
        for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
            const float v = r[i];
            if (!isnan(v) && argmax_better(v, i, bv, bi)) bv = v, bi = i;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        const float v = __shfl_xor_sync(0xffffffffu, bv, o);
        const int64_t i = __shfl_xor_sync(0xffffffffu, bi, o);
        if (argmax_better(v, i, bv, bi)) bv = v, bi = i;
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
    if (lane == 0) sv[warp] = bv, si[warp] = bi;
    __syncthreads();
    if (threadIdx.x != 0) return;
    for (int w = 0; w < n_warps; w++)
        if (argmax_better(sv[w], si[w], bv, bi)) bv = sv[w], bi = si[w];
    /* the host loop's rule: a leading NaN is never beaten */
    ids[blockIdx.x] = isnan(r[0]) || bi < 0 ? 0 : (int32_t)bi;
}

/* SVLM_CUDA_ARGMAX_AHEAD=1, read once a process */
bool argmax_ahead() {
    static const bool on = svlm_cu_switch_on("SVLM_CUDA_ARGMAX_AHEAD"); /* (initialised once, thread-safe) */
    return on;
}

__global__ void f32_to_bf16_kernel(const float *x, uint16_t *y, int64_t n) {
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i < n) y[i] = svlm_bf16_rne(x[i]);
}

unsigned blocks_for(int64_t n, int threads) {
    return (unsigned)((n + threads - 1) / threads);
}

} // namespace

extern "C" int svlm_cu_pdl_compiled(void) {
    cudaFuncAttributes a;
    if (cudaFuncGetAttributes(&a, rmsnorm_kernel) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return a.ptxVersion >= 90;
}

extern "C" int svlm_cu_rmsnorm(cudaStream_t s, const float *x, const float *w, float *y, int64_t n,
                               int64_t dim, float eps, int pdl) {
    if (n <= 0) return (int)cudaGetLastError();
    return pdl_launch(pdl, rmsnorm_kernel, (unsigned)n, kRowThreads, 0, s, x, w, y, dim, eps);
}

extern "C" int svlm_cu_layernorm(cudaStream_t s, const float *x, const float *w, const float *b, float *y,
                                 int64_t n, int64_t dim, float eps) {
    return launch_layernorm<float>(s, x, w, b, y, n, dim, eps);
}

extern "C" int svlm_cu_layernorm_bf16(cudaStream_t s, const float *x, const float *w, const float *b,
                                      uint16_t *y, int64_t n, int64_t dim, float eps) {
    return launch_layernorm<uint16_t>(s, x, w, b, y, n, dim, eps);
}

extern "C" int svlm_cu_layernorm_f16(cudaStream_t s, const float *x, const float *w, const float *b,
                                     uint16_t *y, int64_t n, int64_t dim, float eps) {
    return launch_layernorm<__half>(s, x, w, b, reinterpret_cast<__half *>(y), n, dim, eps);
}

extern "C" int svlm_cu_rope(cudaStream_t s, float *x, int64_t n, int n_head, int head_dim, int n_rot,
                            const int32_t *pos, float theta_scale, int neox) {
    const int half = n_rot / 2;
    const int64_t total = n * n_head * half;
    if (total > 0)
        rope_kernel<<<blocks_for(total, 256), 256, 0, s>>>(x, n, n_head, head_dim, half, pos, theta_scale,
                                                           neox);
    return (int)cudaGetLastError();
}

extern "C" int svlm_cu_rope_store(cudaStream_t s, float *q, const float *kx, const float *vx, int64_t n,
                                  int n_head, int n_kv_head, int head_dim, int n_rot, const int32_t *pos,
                                  float theta_scale, int neox, void *const *dsts, int f16_cache, float *keep,
                                  int round, int pdl) {
    if (n <= 0) return 0;
    if (n > 0x7fffffff) return (int)cudaErrorInvalidValue;
    return pdl_launch(pdl, rope_store_kernel, (unsigned)n, 128, 0, s, q, kx, vx, (int)n, n_head, n_kv_head,
                      head_dim, n_rot / 2, pos, theta_scale, neox, dsts, f16_cache, keep, round);
}

extern "C" int svlm_cu_silu_mul(cudaStream_t s, float *gate, const float *up, int64_t n) {
    if (n > 0) silu_mul_kernel<<<blocks_for(n, 256), 256, 0, s>>>(gate, up, n);
    return (int)cudaGetLastError();
}

extern "C" int svlm_cu_gelu_tanh(cudaStream_t s, float *x, int64_t n) {
    if (n > 0) gelu_tanh_kernel<<<blocks_for(n, 256), 256, 0, s>>>(x, n);
    return (int)cudaGetLastError();
}

extern "C" int svlm_cu_add(cudaStream_t s, float *y, const float *x, int64_t n) {
    if (n > 0) add_kernel<<<blocks_for(n, 256), 256, 0, s>>>(y, x, n);
    return (int)cudaGetLastError();
}

extern "C" int svlm_cu_add_bias(cudaStream_t s, float *y, const float *b, int64_t n_rows, int64_t dim) {
    for (int64_t r0 = 0; r0 < n_rows; r0 += 65535) { /* gridDim.y's limit */
        const dim3 grid(blocks_for(dim, 256), (unsigned)(n_rows - r0 < 65535 ? n_rows - r0 : 65535));
        add_bias_kernel<<<grid, 256, 0, s>>>(y + r0 * dim, b, dim);
    }
    return (int)cudaGetLastError();
}

extern "C" int svlm_cu_softmax(cudaStream_t s, float *x, int64_t n_rows, int64_t dim) {
    if (n_rows > 0) softmax_kernel<<<(unsigned)n_rows, kRowThreads, 0, s>>>(x, dim);
    return (int)cudaGetLastError();
}

extern "C" int svlm_cu_argmax(cudaStream_t s, const float *x, int64_t n_rows, int64_t dim, int32_t *ids) {
    if (n_rows <= 0) return (int)cudaGetLastError();
    if (argmax_ahead())
        argmax_kernel<true><<<(unsigned)n_rows, kArgmaxThreads, 0, s>>>(x, dim, ids);
    else
        argmax_kernel<false><<<(unsigned)n_rows, kArgmaxThreads, 0, s>>>(x, dim, ids);
    return (int)cudaGetLastError();
}

extern "C" int svlm_cu_f32_to_bf16(cudaStream_t s, const float *x, uint16_t *y, int64_t n) {
    if (n > 0) f32_to_bf16_kernel<<<blocks_for(n, 256), 256, 0, s>>>(x, y, n);
    return (int)cudaGetLastError();
}
