/*
 * The device code of decode attention (cuda_attention_decode.cu), in a header so that the
 * persistent decode kernel (cuda_decode_layers.cu) runs the same work per block, with the same
 * numbers: see cuda_attention_decode.cu for the method.
 */
#ifndef SVLM_KERNELS_CUDA_ATTENTION_DECODE_CUH
#define SVLM_KERNELS_CUDA_ATTENTION_DECODE_CUH

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>

#include "kernels/cuda/cuda_ops.h"

namespace {

constexpr int kWarps = 4, kThreads = 32 * kWarps;
constexpr int kMaxDim = 256;
constexpr int kTargetBlocks = 264; /* two waves of an H100's 132 SMs */
constexpr int kMaxSplits = 32;

/* q (scaled, shared memory) . row of K at p (hd elements). The sum goes 4 elements a step, in
 * order. For rows of up to 64 (MaxD) a lane's loads are all issued first, then summed: a loop
 * that summed each load as it came waited on them one after another. */
template <bool F16, int MaxD>
__device__ __forceinline__ float dot_row(const float *qs, const void *p, int hd, bool vec, bool ahead) {
    float s = 0.0f;
    if (F16) {
        const __half *r = static_cast<const __half *>(p);
        if (vec && MaxD <= 64 && ahead) {
            uint2 u[MaxD / 4];
#pragma unroll
            for (int g = 0; g < MaxD / 4; g++)
                u[g] = *reinterpret_cast<const uint2 *>(r + (4 * g < hd ? 4 * g : 0)); /* (past hd: unused) */
#pragma unroll
            for (int g = 0; g < MaxD / 4; g++) {
                const int d = 4 * g;
                if (d >= hd) break;
                const float2 a = __half22float2(*reinterpret_cast<const __half2 *>(&u[g].x));
                const float2 b = __half22float2(*reinterpret_cast<const __half2 *>(&u[g].y));
                s += qs[d] * a.x + qs[d + 1] * a.y + qs[d + 2] * b.x + qs[d + 3] * b.y;
            }
        } else if (vec) {
#pragma unroll 4
            for (int d = 0; d < hd; d += 4) {
                const uint2 u = *reinterpret_cast<const uint2 *>(r + d);
                const float2 a = __half22float2(*reinterpret_cast<const __half2 *>(&u.x));
                const float2 b = __half22float2(*reinterpret_cast<const __half2 *>(&u.y));
                s += qs[d] * a.x + qs[d + 1] * a.y + qs[d + 2] * b.x + qs[d + 3] * b.y;
            }
        } else {
            for (int d = 0; d < hd; d++)
                s += qs[d] * __half2float(r[d]);
        }
    } else {
        const float *r = static_cast<const float *>(p);
        if (vec && MaxD <= 64 && ahead) {
            float4 v[MaxD / 4];
#pragma unroll
            for (int g = 0; g < MaxD / 4; g++)
                v[g] =
                    *reinterpret_cast<const float4 *>(r + (4 * g < hd ? 4 * g : 0)); /* (past hd: unused) */
#pragma unroll
            for (int g = 0; g < MaxD / 4; g++) {
                const int d = 4 * g;
                if (d >= hd) break;
                s += qs[d] * v[g].x + qs[d + 1] * v[g].y + qs[d + 2] * v[g].z + qs[d + 3] * v[g].w;
            }
        } else if (vec) {
#pragma unroll 4
            for (int d = 0; d < hd; d += 4) {
                const float4 a = *reinterpret_cast<const float4 *>(r + d);
                s += qs[d] * a.x + qs[d + 1] * a.y + qs[d + 2] * a.z + qs[d + 3] * a.w;
            }
        } else {
            for (int d = 0; d < hd; d++)
                s += qs[d] * r[d];
        }
    }
    return s;
}

template <bool F16> __device__ __forceinline__ float val(const void *base, int64_t i) {
    if (F16) return __half2float(static_cast<const __half *>(base)[i]);
    return static_cast<const float *>(base)[i];
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1)
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* The splits' partial results of one (item, head) merged into its output by one block: the first
 * warp reads every split's (m, l) at once and leaves its weight exp(m - max) in shared memory, so
 * the values are one pass of independent loads. The whole block calls it. */
static_assert(kMaxSplits <= 32, "one lane per split");
__device__ void merge_splits(const float *pp, int hd, int splits, float *o) {
    __shared__ float wt[kMaxSplits];
    __shared__ float inv;
    if (threadIdx.x < 32) {
        const int s = threadIdx.x;
        const float l = s < splits ? __ldcg(pp + s * (hd + 2) + 1) : 0.0f;
        const float m = l > 0.0f ? __ldcg(pp + s * (hd + 2)) : -INFINITY; /* a split without rows: none */
        float mx = m;
        for (int off = 16; off > 0; off >>= 1)
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
        const float e = l > 0.0f ? expf(m - mx) : 0.0f;
        float total = l * e;
        for (int off = 16; off > 0; off >>= 1)
            total += __shfl_xor_sync(0xffffffffu, total, off);
        if (s < splits) wt[s] = e;
        if (s == 0) inv = total > 0.0f ? 1.0f / total : 0.0f; /* no rows at all: zeros, as on the CPU */
    }
    __syncthreads();
    for (int d = threadIdx.x; d < hd; d += blockDim.x) {
        float r = 0.0f;
#pragma unroll 4
        for (int s = 0; s < splits; s++)
            if (wt[s] > 0.0f) r += __ldcg(pp + s * (hd + 2) + 2 + d) * wt[s];
        o[d] = r * inv;
    }
}

/* The work of block (item, head h, split) of a launch over items[]: part: [item][head][split][hd + 2]
 * (m, l, then the values weighted by exp(s - m)), unused with one split; done: a counter per
 * (item, head), zero between launches (the merging block resets it). Every thread of the block
 * calls it (kThreads of them); a block that calls it again first waits at a barrier (its shared
 * arrays are reused). */
template <bool F16, int kPerLane, bool ahead>
__device__ __forceinline__ void decode_block(const svlm_cu_attn_item *items, unsigned item, int h, int split,
                                             int64_t kv_stride, int n_head, int rep, int hd, float scale,
                                             int splits, bool vec, float *part, unsigned *done) {
    __shared__ float qs[kMaxDim];
    __shared__ float sm[kWarps], sl[kWarps];
    __shared__ float sacc[kWarps][kMaxDim];
    const svlm_cu_attn_item it = items[item];
    /* one query after every cached row: it sees them all. Only as many splits as one pass of a
     * block's warps (kThreads rows) each needs: a short cache in fewer splits, one (no partials,
     * counter or merge) up to kThreads rows, and the blocks past them leave at once. More splits
     * would give each warp no fewer passes, only more partials to merge. Every block of a
     * (sequence, head) reads the same n, so all agree on the count. */
    const int64_t n = it.n_kv > 0 ? it.n_kv : 0;
    const int64_t want = (n + kThreads - 1) / kThreads;
    const int used = want < 1 ? 1 : want < splits ? (int)want : splits;
    if (split >= used) return;
    /* 4-wide loads need 16-byte aligned rows (allocations are; a pointer into one may not be) */
    vec = vec && !(((uintptr_t)it.k | (uintptr_t)it.v) & 15);
    const int kvh = h / rep;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int d = threadIdx.x; d < hd; d += kThreads)
        qs[d] = it.q[(int64_t)h * hd + d] * scale;
    __syncthreads();

    const int64_t chunk = (n + used - 1) / used;
    const int64_t c0 = split * chunk, c1 = c0 + chunk < n ? c0 + chunk : n;
    const int64_t koff = (int64_t)kvh * hd;
    float m = -INFINITY, l = 0.0f, acc[kPerLane];
#pragma unroll
    for (int j = 0; j < kPerLane; j++)
        acc[j] = 0.0f;
    for (int64_t base = c0 + warp * 32; base < c1; base += kThreads) {
        const int64_t row = base + lane;
        const bool valid = row < c1;
        const float s = valid ? dot_row<F16, 32 * kPerLane>(qs,
                                                            static_cast<const char *>(it.k) +
                                                                (row * kv_stride + koff) * (F16 ? 2 : 4),
                                                            hd, vec, ahead)
                              : -INFINITY;
        const float m_new = fmaxf(m, warp_max(s)); /* finite: lane 0's row is valid */
        const float p = valid ? expf(s - m_new) : 0.0f, corr = expf(m - m_new);
        l = l * corr + warp_sum(p);
#pragma unroll
        for (int j = 0; j < kPerLane; j++)
            acc[j] *= corr;
        const int rows = c1 - base < 32 ? (int)(c1 - base) : 32;
        /* ahead: the rows' values a chunk at a time, a chunk's loads issued before its sums
         * (kChunk x kPerLane registers); the sums in row order as one row at a time adds them */
        constexpr int kChunk = 32 / kPerLane;
        if constexpr (!ahead) {
#pragma unroll 4
            for (int i = 0; i < rows; i++) {
                const float pi = __shfl_sync(0xffffffffu, p, i);
                const int64_t vb = (base + i) * kv_stride + koff;
#pragma unroll
                for (int j = 0; j < kPerLane; j++) {
                    const int d = lane + 32 * j;
                    if (d < hd) acc[j] += pi * val<F16>(it.v, vb + d);
                }
            }
        }
        for (int i0 = 0; ahead && i0 < rows; i0 += kChunk) {
            float vv[kChunk][kPerLane];
#pragma unroll
            for (int u = 0; u < kChunk; u++) {
                /* past the rows or the head, the last row or dim again (never summed): loads
                 * without conditions, issued all before any wait */
                const int64_t vb = (base + (i0 + u < rows ? i0 + u : rows - 1)) * kv_stride + koff;
#pragma unroll
                for (int j = 0; j < kPerLane; j++) {
                    const int d = lane + 32 * j;
                    vv[u][j] = val<F16>(it.v, vb + (d < hd ? d : hd - 1));
                }
            }
#pragma unroll
            for (int u = 0; u < kChunk; u++) {
                if (i0 + u >= rows) break;
                const float pi = __shfl_sync(0xffffffffu, p, i0 + u);
#pragma unroll
                for (int j = 0; j < kPerLane; j++)
                    if (lane + 32 * j < hd) acc[j] += pi * vv[u][j];
            }
        }
        m = m_new;
    }

    /* the block's warps merged at their common maximum */
    if (lane == 0) {
        sm[warp] = m;
        sl[warp] = l;
    }
#pragma unroll
    for (int j = 0; j < kPerLane; j++) {
        const int d = lane + 32 * j;
        if (d < hd) sacc[warp][d] = acc[j];
    }
    __syncthreads();
    float mx = -INFINITY;
    for (int w = 0; w < kWarps; w++)
        if (sl[w] > 0.0f) mx = fmaxf(mx, sm[w]);
    float total = 0.0f, wt[kWarps];
    for (int w = 0; w < kWarps; w++) {
        wt[w] = sl[w] > 0.0f ? expf(sm[w] - mx) : 0.0f; /* a warp without rows has l = 0 */
        total += sl[w] * wt[w];
    }
    if (used == 1) {
        float *o = it.out + (int64_t)h * hd;
        const float inv = total > 0.0f ? 1.0f / total : 0.0f; /* no rows: zeros, as on the CPU */
        for (int d = threadIdx.x; d < hd; d += kThreads) {
            float r = 0.0f;
            for (int w = 0; w < kWarps; w++)
                r += sacc[w][d] * wt[w];
            o[d] = r * inv;
        }
        return;
    }
    float *pairs = part + ((int64_t)item * n_head + h) * splits * (hd + 2), *pp = pairs + split * (hd + 2);
    if (threadIdx.x == 0) {
        pp[0] = mx;
        pp[1] = total;
    }
    for (int d = threadIdx.x; d < hd; d += kThreads) {
        float r = 0.0f;
        for (int w = 0; w < kWarps; w++)
            r += sacc[w][d] * wt[w];
        pp[2 + d] = r;
    }
    /* the last split to finish merges: its partial is written, the others' are visible after the
     * fence and the counter (the threadfence-reduction pattern) */
    __shared__ bool last;
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        unsigned *c = done + (int64_t)item * n_head + h;
        last = atomicAdd(c, 1u) == (unsigned)used - 1;
        if (last) *c = 0; /* for the next launch: every split of this one has counted */
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    merge_splits(pairs, hd, used, it.out + (int64_t)h * hd);
}

} // namespace

#endif
