/*
 * Attention on the GPU, one thread block per (query, head): its warps split the visible kv rows
 * and keep an online softmax each (running max, sum and weighted V in registers), then merge
 * through shared memory. It serves attention with few queries (prefill chunks below the flash
 * kernel's threshold, a lone decode query); decode steps of many sequences use
 * cuda_attention_decode.cu. K and V are f32 or f16 rows kv_stride elements apart.
 */
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>

#include "kernels/cuda/cuda_ops.h"

namespace {

constexpr int kWarps = 4;
constexpr int kMaxDimPerLane = 8; /* head_dim <= 256 */

template <bool F16> __device__ __forceinline__ float kv_at(const void *base, int64_t i) {
    if (F16) return __half2float(static_cast<const __half *>(base)[i]);
    return static_cast<const float *>(base)[i];
}

/* Query qi, head h: the work of one thread block. */
template <bool F16>
__device__ void attend(const float *q, const void *k, const void *v, int64_t kv_stride, float *out,
                       int64_t n_q, int64_t n_kv, int n_head, int n_kv_head, int head_dim, int causal,
                       float scale, int64_t qi, int h) {
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int kvh = h / (n_head / n_kv_head);
    const int per_lane = (head_dim + 31) / 32;
    const int64_t q_stride = (int64_t)n_head * head_dim;
    float *o = out + qi * q_stride + (int64_t)h * head_dim;

    int64_t n_vis = n_kv;
    if (causal) {
        const int64_t last = n_kv - n_q + qi + 1; /* rows 0 .. last - 1 are visible */
        n_vis = last < n_vis ? last : n_vis;
    }
    if (n_vis <= 0) { /* this query sees nothing: zeros, as on the CPU */
        for (int d = threadIdx.x; d < head_dim; d += blockDim.x)
            o[d] = 0.0f;
        return;
    }

    float qv[kMaxDimPerLane], acc[kMaxDimPerLane];
    const float *qr = q + qi * q_stride + (int64_t)h * head_dim;
#pragma unroll
    for (int j = 0; j < kMaxDimPerLane; j++) {
        const int d = lane + 32 * j;
        qv[j] = j < per_lane && d < head_dim ? qr[d] * scale : 0.0f;
        acc[j] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    const int64_t koff = (int64_t)kvh * head_dim;
    for (int64_t row = warp; row < n_vis; row += kWarps) {
        const int64_t base = row * kv_stride + koff;
        float s = 0.0f;
#pragma unroll
        for (int j = 0; j < kMaxDimPerLane; j++) {
            const int d = lane + 32 * j;
            if (j < per_lane && d < head_dim) s += qv[j] * kv_at<F16>(k, base + d);
        }
        for (int off = 16; off > 0; off >>= 1)
            s += __shfl_xor_sync(0xffffffffu, s, off);
        const float m_new = fmaxf(m, s);
        const float corr = expf(m - m_new), p = expf(s - m_new);
        l = l * corr + p;
#pragma unroll
        for (int j = 0; j < kMaxDimPerLane; j++) {
            const int d = lane + 32 * j;
            if (j < per_lane && d < head_dim) acc[j] = acc[j] * corr + p * kv_at<F16>(v, base + d);
        }
        m = m_new;
    }

    /* merge the warps: each rescales to the common maximum */
    __shared__ float sm[kWarps], sl[kWarps];
    extern __shared__ float sacc[]; /* [kWarps][head_dim] */
    if (lane == 0) {
        sm[warp] = m;
        sl[warp] = l;
    }
#pragma unroll
    for (int j = 0; j < kMaxDimPerLane; j++) {
        const int d = lane + 32 * j;
        if (j < per_lane && d < head_dim) sacc[warp * head_dim + d] = acc[j];
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int w = 0; w < kWarps; w++)
        mx = fmaxf(mx, sm[w]);
    float total = 0.0f, wt[kWarps];
    for (int w = 0; w < kWarps; w++) {
        wt[w] = sl[w] > 0.0f ? expf(sm[w] - mx) : 0.0f; /* a warp without rows has m = -inf */
        total += sl[w] * wt[w];
    }
    const float inv = 1.0f / total;
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float r = 0.0f;
        for (int w = 0; w < kWarps; w++)
            r += sacc[w * head_dim + d] * wt[w];
        o[d] = r * inv;
    }
}

template <bool F16>
__global__ void attention_kernel(const float *q, const void *k, const void *v, int64_t kv_stride, float *out,
                                 int64_t n_q, int64_t n_kv, int n_head, int n_kv_head, int head_dim,
                                 int causal, float scale) {
    attend<F16>(q, k, v, kv_stride, out, n_q, n_kv, n_head, n_kv_head, head_dim, causal, scale, blockIdx.x,
                blockIdx.y);
}

} // namespace

extern "C" int svlm_cu_attention(cudaStream_t s, const float *q, const void *k, const void *v, int kv_f16,
                                 int64_t kv_stride, float *out, int64_t n_q, int64_t n_kv, int n_head,
                                 int n_kv_head, int head_dim, int causal, float scale) {
    if (n_q <= 0 || n_head <= 0) return 0;
    if (head_dim > 32 * kMaxDimPerLane || n_kv_head <= 0 || n_head % n_kv_head || n_head > 65535)
        return (int)cudaErrorInvalidValue;
    const dim3 grid((unsigned)n_q, (unsigned)n_head);
    const size_t shmem = sizeof(float) * kWarps * (size_t)head_dim;
    if (kv_f16)
        attention_kernel<true><<<grid, 32 * kWarps, shmem, s>>>(q, k, v, kv_stride, out, n_q, n_kv, n_head,
                                                                n_kv_head, head_dim, causal, scale);
    else
        attention_kernel<false><<<grid, 32 * kWarps, shmem, s>>>(q, k, v, kv_stride, out, n_q, n_kv, n_head,
                                                                 n_kv_head, head_dim, causal, scale);
    return (int)cudaGetLastError();
}
