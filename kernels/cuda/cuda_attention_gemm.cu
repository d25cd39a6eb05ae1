/*
 * The row softmax between the two cuBLAS products of the large-attention path
 * (cuda_attention_gemm.c): scores S = scale Q K^T in f32, one row per (head, query), turned into
 * probabilities in place (f32 V) or into an f16 copy (f16 V), with the causal mask applied here:
 * the products cover every kv row of the chunk, and the masked ones get probability 0. Also the
 * f32 -> f16 conversion of Q for the f16 products.
 */
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>

#include "kernels/cuda/cuda_ops.h"

namespace {

constexpr int kThreads = 256, kWarps = kThreads / 32;

/* Block-wide max or sum; every thread gets the result. sh holds one value per warp. */
template <bool Max> __device__ float block_reduce(float v, float *sh) {
    for (int o = 16; o > 0; o >>= 1) {
        const float w = __shfl_xor_sync(0xffffffffu, v, o);
        v = Max ? fmaxf(v, w) : v + w;
    }
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    __syncthreads(); /* sh may still be read by the previous call */
    if (lane == 0) sh[warp] = v;
    __syncthreads();
    float t = Max ? -INFINITY : 0.0f;
    for (int i = 0; i < kWarps; i++)
        t = Max ? fmaxf(t, sh[i]) : t + sh[i];
    return t;
}

/* Row `blockIdx.x` of S (ld apart) is head row / rows_per_head, query first_q + row %
 * rows_per_head; it holds len scores, of which the first n_vis are visible. Per = 0: any len,
 * reading S three times; else len <= kThreads * Per, the row kept in registers. */
template <int Per, bool Out16>
__global__ void softmax_kernel(float *S, __half *p16, int64_t ld, int64_t rows_per_head, int64_t len,
                               int64_t first_q, int64_t vis_off, int causal) {
    __shared__ float sh[kWarps];
    const int64_t row = blockIdx.x;
    float *s = S + row * ld;
    __half *p = Out16 ? p16 + row * ld : nullptr;
    int64_t n_vis = len;
    if (causal) {
        const int64_t last = vis_off + first_q + row % rows_per_head + 1; /* rows 0 .. last - 1 */
        n_vis = last < 0 ? 0 : last < len ? last : len;
    }
    float v[Per > 0 ? Per : 1];
    float mx = -INFINITY;
    if (Per > 0) {
#pragma unroll
        for (int t = 0; t < Per; t++) {
            const int64_t j = threadIdx.x + (int64_t)t * kThreads;
            v[t] = j < n_vis ? s[j] : -INFINITY;
            mx = fmaxf(mx, v[t]);
        }
    } else {
        for (int64_t j = threadIdx.x; j < n_vis; j += kThreads)
            mx = fmaxf(mx, s[j]);
    }
    mx = block_reduce<true>(mx, sh);
    float sum = 0.0f;
    if (Per > 0) {
#pragma unroll
        for (int t = 0; t < Per; t++) {
            v[t] = threadIdx.x + (int64_t)t * kThreads < n_vis ? expf(v[t] - mx) : 0.0f;
            sum += v[t];
        }
    } else {
        for (int64_t j = threadIdx.x; j < n_vis; j += kThreads)
            sum += expf(s[j] - mx);
    }
    sum = block_reduce<false>(sum, sh);
    const float inv = n_vis > 0 ? 1.0f / sum : 0.0f; /* no visible row: zeros, as on the CPU */
    if (Per > 0) {
#pragma unroll
        for (int t = 0; t < Per; t++) {
            const int64_t j = threadIdx.x + (int64_t)t * kThreads;
            if (j >= len) break;
            if (Out16)
                p[j] = __float2half_rn(v[t] * inv);
            else
                s[j] = v[t] * inv;
        }
    } else {
        /* each element is read and written by the same thread: in place is safe */
        for (int64_t j = threadIdx.x; j < len; j += kThreads) {
            const float e = j < n_vis ? expf(s[j] - mx) * inv : 0.0f;
            if (Out16)
                p[j] = __float2half_rn(e);
            else
                s[j] = e;
        }
    }
}

template <bool Out16>
int launch(cudaStream_t st, float *S, __half *p16, int64_t ld, int64_t n_rows, int64_t rows_per_head,
           int64_t len, int64_t first_q, int64_t vis_off, int causal) {
    const unsigned g = (unsigned)n_rows;
    if (len <= 4 * kThreads)
        softmax_kernel<4, Out16>
            <<<g, kThreads, 0, st>>>(S, p16, ld, rows_per_head, len, first_q, vis_off, causal);
    else if (len <= 16 * kThreads)
        softmax_kernel<16, Out16>
            <<<g, kThreads, 0, st>>>(S, p16, ld, rows_per_head, len, first_q, vis_off, causal);
    else
        softmax_kernel<0, Out16>
            <<<g, kThreads, 0, st>>>(S, p16, ld, rows_per_head, len, first_q, vis_off, causal);
    return (int)cudaGetLastError();
}

__global__ void to_f16_kernel(const float *x, __half *y, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        y[i] = __float2half_rn(x[i]);
}

} // namespace

extern "C" int svlm_cu_attn_softmax(cudaStream_t s, float *S, uint16_t *p16, int64_t ld, int64_t n_rows,
                                    int64_t rows_per_head, int64_t len, int64_t first_q, int64_t vis_off,
                                    int causal) {
    if (n_rows <= 0 || len <= 0) return 0;
    if (n_rows > 0x7fffffff || rows_per_head <= 0) return (int)cudaErrorInvalidValue;
    if (p16)
        return launch<true>(s, S, reinterpret_cast<__half *>(p16), ld, n_rows, rows_per_head, len, first_q,
                            vis_off, causal);
    return launch<false>(s, S, nullptr, ld, n_rows, rows_per_head, len, first_q, vis_off, causal);
}

extern "C" int svlm_cu_attn_to_f16(cudaStream_t s, const float *x, uint16_t *y, int64_t n) {
    if (n <= 0) return 0;
    int64_t blocks = (n + 255) / 256;
    if (blocks > 65536) blocks = 65536;
    to_f16_kernel<<<(unsigned)blocks, 256, 0, s>>>(x, reinterpret_cast<__half *>(y), n);
    return (int)cudaGetLastError();
}
