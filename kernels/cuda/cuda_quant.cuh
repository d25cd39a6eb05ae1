/*
 * The quantized-weight kernels of cuda_quant.cu and their launchers, as templates over the ggml
 * type id. Each type's instances are compiled in a file of their own (cuda_quant_*.cu: one nvcc
 * job each, in parallel, where one file took a build's longest single job) and reached through
 * that file's svlm_quant_ops table.
 *
 * Weights as stored in GGUF, decoded on the GPU: the matrix-vector product of decode steps reads
 * the quantized blocks directly (up to four warps per output row, one lane per element of a
 * 32-element sub-block, so a warp reads each block once and coalesced; Q4_K and Q6_K a whole
 * super-block per warp, eight elements a lane), and a whole-weight decode to bf16 or
 * f32 feeds cuBLAS for batched products. Block layouts are those of kernels/dtype.h.
 */
#ifndef SVLM_KERNELS_CUDA_QUANT_CUH
#define SVLM_KERNELS_CUDA_QUANT_CUH

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdlib.h>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_pdl.cuh"
#include "kernels/cuda/cuda_rope.cuh"
#include "kernels/cuda/cuda_quant_table.cuh"
#include "kernels/cuda/quant_decode.h"

namespace {

/* elem<T>: the decoder of type id T from quant_decode.h */
template <int T> __device__ __forceinline__ float elem(const uint8_t *row, int64_t sb, int l);
#define ELEM(ID, FN)                                                                                         \
    template <> __device__ __forceinline__ float elem<ID>(const uint8_t *row, int64_t sb, int l) {           \
        return FN(row, sb, l);                                                                               \
    }
SVLM_QD_TYPES(ELEM)
#undef ELEM

constexpr int kWarpsPerBlock = 4;

/* How the decode products read a row (row_flags(), passed down by every launcher):
 * kRowKqLanes: Q4_K and Q6_K a whole super-block per warp, four quant bytes a lane
 * (SVLM_CUDA_KQUANT_LANES=0: one element a lane); kRowAhead (SVLM_CUDA_MATVEC_AHEAD=1; off: run 3
 * on an H100 measured it slower, 495 against 515 tok/s): the other types' sub-blocks eight at a time with
 * their loads issued together, and a SwiGLU or q/k/v pair's two rows' loads together (off: four at a time,
 * then one at a time, one row after the other, as measured); kRowStaged (SVLM_CUDA_MATVEC_STAGED=1): one warp
 * a row, the row copied to shared memory before the wait (cuda_quant_staged.cuh), for the types without a
 * lane form; kRowStagedK (SVLM_CUDA_MATVEC_STAGED_K=1, with kRowKqLanes): the same for Q4_K and Q6_K, their
 * lane forms reading the staged row. */
constexpr int kRowKqLanes = 1, kRowAhead = 2, kRowStaged = 4, kRowStagedK = 8;

/* row_dots for Q4_K and Q6_K: a warp takes whole 256-element super-blocks (part, part + parts, ...),
 * each lane four quant bytes in one load and the eight elements they hold (quant_decode.h's lane
 * forms), with their activations in two 4-element loads. The element-per-lane form read one byte a
 * lane and decoded a super-block's scales for every element; the 2.2B shape's Q4_K_M decode read
 * its weights at 125 GB/s. A lane sums its eight products in order, the warp its lanes. */
template <int T, int NMAX>
__device__ __forceinline__ void row_dots_k(const uint8_t *row, int64_t cols, const float *x, int n,
                                           float *acc, int part, int parts) {
    constexpr int kBytes = T == 12 ? 144 : 210;
    const int lane = threadIdx.x % 32;
    const int64_t n_super = cols / 256;
    const bool vec = !(reinterpret_cast<uintptr_t>(x) & 15); /* cols is a multiple of 256 */
#pragma unroll
    for (int i = 0; i < NMAX; i++)
        acc[i] = 0.0f;
    for (int64_t s = part; s < n_super; s += parts) {
        float v[8];
        int off[2];
        if (T == 12)
            qd_q4_k_lane(row + s * kBytes, lane, v, off);
        else
            qd_q6_k_lane(row + s * kBytes, lane, v, off);
#pragma unroll
        for (int i = 0; i < NMAX; i++) {
            if (i >= n) break;
            const float *xs = x + i * cols + s * 256;
            float a[4], b[4];
            if (vec) {
                const float4 fa = *reinterpret_cast<const float4 *>(xs + off[0]);
                const float4 fb = *reinterpret_cast<const float4 *>(xs + off[1]);
                a[0] = fa.x, a[1] = fa.y, a[2] = fa.z, a[3] = fa.w;
                b[0] = fb.x, b[1] = fb.y, b[2] = fb.z, b[3] = fb.w;
            } else {
#pragma unroll
                for (int e = 0; e < 4; e++)
                    a[e] = xs[off[0] + e], b[e] = xs[off[1] + e];
            }
#pragma unroll
            for (int e = 0; e < 4; e++)
                acc[i] += v[e] * a[e];
#pragma unroll
            for (int e = 0; e < 4; e++)
                acc[i] += v[4 + e] * b[e];
        }
    }
#pragma unroll
    for (int i = 0; i < NMAX; i++) {
        if (i >= n) break;
        for (int o = 16; o > 0; o >>= 1)
            acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], o);
    }
}

/* acc[i] = W row . x row i for i < n over this warp's share of the row's 32-element sub-blocks
 * (part, part + parts, ...: parts warps split a row), summed over the warp (every lane gets it).
 * Lane l takes element l of every sub-block, so the block's bytes and the 32 activations are read
 * together; the activation rows share the decode. x rows are cols apart. Sub-blocks go eight at a
 * time (rows_ahead; kRowAhead off, the default: four, then the rest one at a time) with their loads
 * issued together: a decode row is a few hundred bytes, so a warp's time is the latency of its
 * dependent loads, not their bandwidth (hence also the split: fewer rounds of loads per warp).
 * The sums keep the sub-blocks' order within a warp. */
/* Rows a and b (b NULL: a alone) against the same activations, this warp's sub-blocks kAhead at a
 * time (8 for one row, 4 for two: twice the loads in flight, and registers for a few blocks an SM):
 * a batch's loads issued before its sums, then the
 * partial sub-block, if any and this warp's. Each row sums exactly as row_dots's other loop does:
 * its sub-blocks in order, each adding its activation rows in order. */
template <int T, int NMAX, int kAhead>
__device__ __forceinline__ void rows_ahead(const uint8_t *ra, const uint8_t *rb, int64_t cols, const float *x,
                                           int n, float *a, float *b, int part, int parts) {
    const int lane = threadIdx.x % 32;
    const int64_t n_full = cols / 32;
#pragma unroll
    for (int i = 0; i < NMAX; i++)
        a[i] = b[i] = 0.0f;
    for (int64_t sb = part; sb < n_full; sb += (int64_t)kAhead * parts) {
        float va[kAhead], vb[kAhead], x0[kAhead];
#pragma unroll
        for (int u = 0; u < kAhead; u++) {
            /* past the full sub-blocks the last one again (never summed: the loop below stops
             * there): loads without conditions, which the compiler issues all before any wait
             * (a condition per load made each sub-block wait for the one before) */
            const int64_t s = sb + (int64_t)u * parts, c = s < n_full ? s : n_full - 1;
            va[u] = elem<T>(ra, c, lane);
            vb[u] = rb ? elem<T>(rb, c, lane) : 0.0f;
            x0[u] = x[c * 32 + lane]; /* row 0 is always there */
        }
#pragma unroll
        for (int u = 0; u < kAhead; u++) {
            const int64_t s = sb + (int64_t)u * parts;
            if (s >= n_full) break;
            a[0] += va[u] * x0[u];
            b[0] += vb[u] * x0[u];
#pragma unroll
            for (int i = 1; i < NMAX; i++)
                if (i < n) {
                    const float xi = x[i * cols + s * 32 + lane];
                    a[i] += va[u] * xi;
                    b[i] += vb[u] * xi;
                }
        }
    }
    /* the partial sub-block n_full: this warp's when it falls in its sequence */
    if (n_full >= part && (n_full - part) % parts == 0 && n_full * 32 + lane < cols) {
        const float va = elem<T>(ra, n_full, lane), vb = rb ? elem<T>(rb, n_full, lane) : 0.0f;
#pragma unroll
        for (int i = 0; i < NMAX; i++)
            if (i < n) {
                const float xi = x[i * cols + n_full * 32 + lane];
                a[i] += va * xi;
                b[i] += vb * xi;
            }
    }
#pragma unroll
    for (int i = 0; i < NMAX; i++) {
        if (i >= n) break;
        for (int o = 16; o > 0; o >>= 1)
            a[i] += __shfl_xor_sync(0xffffffffu, a[i], o);
        if (rb)
            for (int o = 16; o > 0; o >>= 1)
                b[i] += __shfl_xor_sync(0xffffffffu, b[i], o);
    }
}

template <int T, int NMAX, bool AH>
__device__ __forceinline__ void row_dots(const uint8_t *row, int64_t cols, const float *x, int n, float *acc,
                                         int part, int parts, int flags) {
    if constexpr (T == 12 || T == 14) { /* Q4_K, Q6_K: their lane form unless SVLM_CUDA_KQUANT_LANES=0 */
        if (flags & kRowKqLanes) {
            row_dots_k<T, NMAX>(row, cols, x, n, acc, part, parts);
            return;
        }
    }
    if constexpr (AH) {
        float unused[NMAX];
        rows_ahead<T, NMAX, 8>(row, nullptr, cols, x, n, acc, unused, part, parts);
        return;
    }
    const int lane = threadIdx.x % 32;
    const int64_t n_full = cols / 32; /* sub-blocks every lane has; plain types may add a partial one */
#pragma unroll
    for (int i = 0; i < NMAX; i++)
        acc[i] = 0.0f;
    int64_t sb = part;
    for (; sb + 3 * parts < n_full; sb += 4 * parts) {
        float v[4], x0[4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            v[u] = elem<T>(row, sb + u * parts, lane);
            x0[u] = x[(sb + u * parts) * 32 + lane]; /* row 0 is always there */
        }
#pragma unroll
        for (int u = 0; u < 4; u++) {
            acc[0] += v[u] * x0[u];
#pragma unroll
            for (int i = 1; i < NMAX; i++)
                if (i < n) acc[i] += v[u] * x[i * cols + (sb + u * parts) * 32 + lane];
        }
    }
    for (; sb * 32 + lane < cols && sb <= n_full; sb += parts) { /* the last full ones, then a partial one */
        const float v = elem<T>(row, sb, lane);
#pragma unroll
        for (int i = 0; i < NMAX; i++)
            if (i < n) acc[i] += v * x[i * cols + sb * 32 + lane];
    }
#pragma unroll
    for (int i = 0; i < NMAX; i++) {
        if (i >= n) break;
        for (int o = 16; o > 0; o >>= 1)
            acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], o);
    }
}

/* A block's warps in rows: `parts` warps per row (1, 2 or 4), row r0 + warp / parts. */
struct row_split {
    int parts, part, slot; /* slot: the warp's row within the block */
};
__device__ __forceinline__ row_split split_of(int parts) {
    const int warp = threadIdx.x / 32;
    return {parts, warp % parts, warp / parts};
}

/* The row's sum over its parts: every warp of the block calls it (it has a barrier), each with its
 * own acc; the first part's lane 0 gets the total, in part order, in out. One part: acc as is. */
template <int NMAX>
__device__ __forceinline__ void sum_parts(const row_split &rs, const float *acc, int n, float *out) {
    if (rs.parts == 1) {
#pragma unroll
        for (int i = 0; i < NMAX; i++)
            out[i] = acc[i];
        return;
    }
    __shared__ float partial[kWarpsPerBlock][NMAX];
    const int warp = threadIdx.x / 32;
    if (threadIdx.x % 32 == 0)
#pragma unroll
        for (int i = 0; i < NMAX; i++)
            if (i < n) partial[warp][i] = acc[i];
    __syncthreads();
#pragma unroll
    for (int i = 0; i < NMAX; i++) {
        float t = 0.0f;
        if (i < n)
            for (int p = 0; p < rs.parts; p++)
                t += partial[warp - rs.part + p][i];
        out[i] = t;
    }
}

/* The activations a block multiplies: x itself, or (NORM) x RMS-normalised with weights nw into
 * the block's shared memory xs (n rows of cols), as svlm_cu_rmsnorm computes them. Every thread
 * of the block takes part. */
template <bool NORM>
__device__ const float *block_activations(const float *x, const float *nw, float eps, int64_t cols, int n,
                                          float *xs) {
    if (!NORM) return x;
    __shared__ double part[kWarpsPerBlock];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    for (int i = 0; i < n; i++) {
        const float *xr = x + i * cols;
        double ss = 0;
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
            ss += (double)xr[c] * xr[c];
        for (int o = 16; o > 0; o >>= 1)
            ss += __shfl_xor_sync(0xffffffffu, ss, o);
        if (lane == 0) part[warp] = ss;
        __syncthreads();
        double total = 0;
        for (int w = 0; w < kWarpsPerBlock; w++)
            total += part[w];
        __syncthreads(); /* part is reused by the next row */
        const float scale = (float)(1.0 / sqrt(total / (double)cols + (double)eps));
        for (int64_t c = threadIdx.x; c < cols; c += blockDim.x)
            xs[i * cols + c] = xr[c] * scale * nw[c];
    }
    __syncthreads();
    return xs;
}

/* matvec_kernel's work for block index vb (a persistent kernel passes its virtual blocks): parts
 * warps per row r of y (n rows of `rows`); ACC adds to y (the residual) instead of storing. Every
 * thread of the block calls it (sum_parts has a barrier). */
template <int T, bool ACC, int NMAX, bool AH>
__device__ __forceinline__ void matvec_rows(const uint8_t *w, size_t row_bytes, int64_t rows, int64_t cols,
                                            const float *x, int n, float *y, int parts, int flags,
                                            unsigned vb) {
    const row_split rs = split_of(parts);
    const int64_t r = (int64_t)vb * (kWarpsPerBlock / parts) + rs.slot;
    float acc[NMAX], tot[NMAX];
    if (r < rows) /* (no return before sum_parts' barrier) */
        row_dots<T, NMAX, AH>(w + r * row_bytes, cols, x, n, acc, rs.part, parts, flags);
    else
        for (int i = 0; i < NMAX; i++)
            acc[i] = 0.0f;
    sum_parts<NMAX>(rs, acc, n, tot);
    if (r >= rows || rs.part || threadIdx.x % 32) return;
#pragma unroll
    for (int i = 0; i < NMAX; i++)
        if (i < n) y[i * rows + r] = ACC ? y[i * rows + r] + tot[i] : tot[i];
}

template <int T, bool ACC, int NMAX, bool AH>
__global__ void matvec_kernel(const uint8_t *w, size_t row_bytes, int64_t rows, int64_t cols, const float *x,
                              int n, float *y, int parts, int flags, bool pdl) {
    const row_split rs = split_of(parts);
    const int64_t r = (int64_t)blockIdx.x * (kWarpsPerBlock / parts) + rs.slot;
    if (pdl && r < rows) pdl_prefetch_warp(w + r * row_bytes, row_bytes, rs.part, parts);
    pdl_wait(); /* x and y: the kernel before (cuda_pdl.cuh) */
    pdl_launch_dependents();
    matvec_rows<T, ACC, NMAX, AH>(w, row_bytes, rows, cols, x, n, y, parts, flags, blockIdx.x);
}

/* Which of set's weights global row *r of their concatenation is in (set.n: none); *r becomes the
 * row within it. */
__device__ __forceinline__ int weight_of(const svlm_cu_matvec_set &set, int64_t *r) {
    int wi = 0;
    while (wi < set.n && *r >= set.rows[wi]) {
        *r -= set.rows[wi];
        wi++;
    }
    return wi;
}

/* at, bt: the sums of rows wa and wb against xa, each as row_dots and
 * sum_parts give a single row's; zeros without rows (has = false). Every thread of the block calls
 * it (sum_parts has barriers). */
template <int T, int NMAX, bool AH>
__device__ __forceinline__ void two_row_sums(const row_split &rs, bool has, const uint8_t *wa,
                                             const uint8_t *wb, int64_t cols, const float *xa, int n,
                                             int flags, float *at, float *bt) {
    float a[NMAX], b[NMAX];
    bool together = false;
    if constexpr (AH) {
        const bool kq = (T == 12 || T == 14) && (flags & kRowKqLanes);
        together = has && !kq;
    }
    if (together) {
        rows_ahead<T, NMAX, 4>(wa, wb, cols, xa, n, a, b, rs.part, rs.parts); /* both rows' loads together */
    } else if (has) {
        row_dots<T, NMAX, AH>(wa, cols, xa, n, a, rs.part, rs.parts, flags);
        row_dots<T, NMAX, AH>(wb, cols, xa, n, b, rs.part, rs.parts, flags);
    } else {
        for (int i = 0; i < NMAX; i++)
            a[i] = b[i] = 0.0f;
    }
    sum_parts<NMAX>(rs, a, n, at);
    __syncthreads(); /* the partial sums' buffer is reused */
    sum_parts<NMAX>(rs, b, n, bt);
}

/* Several weights of one type and width in one launch (q/k/v): global row r belongs to the weight
 * whose range of the concatenated rows holds it. NORM: RMSNorm of x first (nw, eps). */
template <int T, bool NORM, int NMAX, bool AH>
__global__ void matvec_multi_kernel(svlm_cu_matvec_set set, int64_t cols, const float *x, int n,
                                    const float *nw, float eps, int parts, int flags, bool pdl) {
    extern __shared__ float xs[];
    const row_split rs = split_of(parts);
    int64_t r = (int64_t)blockIdx.x * (kWarpsPerBlock / parts) + rs.slot;
    const int wi = weight_of(set, &r);
    if (pdl && wi < set.n)
        pdl_prefetch_warp(static_cast<const uint8_t *>(set.w[wi]) + r * set.row_bytes, set.row_bytes, rs.part,
                          parts);
    pdl_wait(); /* x and the outputs: the kernel before (cuda_pdl.cuh) */
    pdl_launch_dependents();
    const float *xa = block_activations<NORM>(x, nw, eps, cols, n, xs);
    float acc[NMAX], tot[NMAX];
    if (wi < set.n)
        row_dots<T, NMAX, AH>(static_cast<const uint8_t *>(set.w[wi]) + r * set.row_bytes, cols, xa, n, acc,
                              rs.part, parts, flags);
    else
        for (int i = 0; i < NMAX; i++)
            acc[i] = 0.0f;
    sum_parts<NMAX>(rs, acc, n, tot);
    if (wi >= set.n || rs.part || threadIdx.x % 32) return;
    const int64_t rows = set.rows[wi];
    float *y = set.y[wi];
#pragma unroll
    for (int i = 0; i < NMAX; i++)
        if (i < n) y[i * rows + r] = tot[i];
}

/* The feed-forward's head: gate[i][r] = silu(x_i . Wg_r) (x_i . Wu_r), one warp per row r of both
 * weights, for block index vb, from the activations xa (normalised already, if they are to be).
 * silu as svlm_cu_silu_mul computes it. Every thread of the block calls it. */
template <int T, int NMAX, bool AH>
__device__ __forceinline__ void swiglu_rows(const uint8_t *wg, const uint8_t *wu, size_t row_bytes,
                                            int64_t rows, int64_t cols, const float *xa, int n, float *gate,
                                            int parts, int flags, unsigned vb) {
    const row_split rs = split_of(parts);
    const int64_t r = (int64_t)vb * (kWarpsPerBlock / parts) + rs.slot;
    float gt[NMAX], ut[NMAX];
    const int64_t ro = r < rows ? r * (int64_t)row_bytes : 0; /* (rows past the weight: not read) */
    two_row_sums<T, NMAX, AH>(rs, r < rows, wg + ro, wu + ro, cols, xa, n, flags, gt, ut);
    if (r >= rows || rs.part || threadIdx.x % 32) return;
#pragma unroll
    for (int i = 0; i < NMAX; i++)
        if (i < n) gate[i * rows + r] = gt[i] / (1.0f + expf(-gt[i])) * ut[i];
}

/* swiglu_rows as a kernel; NORM: RMSNorm of x first. */
template <int T, bool NORM, int NMAX, bool AH>
__global__ void swiglu_kernel(const uint8_t *wg, const uint8_t *wu, size_t row_bytes, int64_t rows,
                              int64_t cols, const float *x, int n, const float *nw, float eps, float *gate,
                              int parts, int flags, bool pdl) {
    extern __shared__ float xs[];
    const row_split rs = split_of(parts);
    const int64_t r = (int64_t)blockIdx.x * (kWarpsPerBlock / parts) + rs.slot;
    if (pdl && r < rows) {
        pdl_prefetch_warp(wg + r * row_bytes, row_bytes, rs.part, parts);
        pdl_prefetch_warp(wu + r * row_bytes, row_bytes, rs.part, parts);
    }
    pdl_wait(); /* x and gate: the kernel before (cuda_pdl.cuh) */
    pdl_launch_dependents();
    const float *xa = block_activations<NORM>(x, nw, eps, cols, n, xs);
    swiglu_rows<T, NMAX, AH>(wg, wu, row_bytes, rows, cols, xa, n, gate, parts, flags, blockIdx.x);
}

/* One row's two stored neighbours (a rotation pair) into a cache row, f16 or f32. */
__device__ __forceinline__ void store_pair(void *row, int64_t c, float a, float b, int f16) {
    if (f16) {
        static_cast<__half *>(row)[c] = __float2half_rn(a);
        static_cast<__half *>(row)[c + 1] = __float2half_rn(b);
    } else {
        static_cast<float *>(row)[c] = a;
        static_cast<float *>(row)[c + 1] = b;
    }
}

/* svlm_cu_matvec_qkv_rope's work for block index vb, from the activations xa (normalised already,
 * if they are to be): the warps of a block slot
 * take two neighbouring rows of the concatenated q | k | v (a rotation pair), each warp its part of
 * both, as swiglu_rows takes a gate and an up row; each row sums exactly as in
 * matvec_multi_kernel. The first part's lanes then do rope_store_kernel's work on the pair, lane i
 * for activation row i, operation for operation: q rotated; a key pair kept as it came, rounded
 * through f16 (round), rotated and stored; a value pair kept, rounded and stored. Every thread of
 * the block calls it. */
/* Block vb's rotation pair for this warp: its first row r within weight wi of set, and that row
 * (nullptr past the weights). */
struct qkv_pair {
    row_split rs;
    int64_t r;
    int wi;
    const uint8_t *w;
};
__device__ __forceinline__ qkv_pair qkv_pair_of(const svlm_cu_matvec_set &set, int parts, unsigned vb) {
    qkv_pair p;
    p.rs = split_of(parts);
    p.r = 2 * ((int64_t)vb * (kWarpsPerBlock / parts) + p.rs.slot);
    p.wi = weight_of(set, &p.r);
    p.w = p.wi < set.n ? static_cast<const uint8_t *>(set.w[p.wi]) + p.r * set.row_bytes : nullptr;
    return p;
}

template <int NMAX>
__device__ __forceinline__ void qkv_rope_finish(const svlm_cu_matvec_set &set, const qkv_pair &p, int n,
                                                const svlm_cu_rope_pairs &rp, const float *at,
                                                const float *bt);

template <int T, int NMAX, bool AH>
__device__ __forceinline__ void qkv_rope_rows(const svlm_cu_matvec_set &set, const qkv_pair &p, int64_t cols,
                                              const float *xa, int n, const svlm_cu_rope_pairs &rp,
                                              int flags) {
    const row_split &rs = p.rs;
    const uint8_t *w = p.w;
    float at[NMAX], bt[NMAX];
    two_row_sums<T, NMAX, AH>(rs, w != nullptr, w, w ? w + set.row_bytes : w, cols, xa, n, flags, at, bt);
    qkv_rope_finish<NMAX>(set, p, n, rp, at, bt);
}

/* qkv_rope_rows's stores from the pair's sums at and bt (every lane of the first part's warp holds
 * every activation row's): lane i takes row i. */
template <int NMAX>
__device__ __forceinline__ void qkv_rope_finish(const svlm_cu_matvec_set &set, const qkv_pair &p, int n,
                                                const svlm_cu_rope_pairs &rp, const float *at,
                                                const float *bt) {
    const row_split &rs = p.rs;
    const int64_t r = p.r;
    const int wi = p.wi;
    const uint8_t *w = p.w;
    const int i = threadIdx.x % 32;
    if (!w || rs.part || i >= n) return;
    float x0 = 0.0f, x1 = 0.0f;
#pragma unroll /* a select, not an index: at and bt stay in registers */
    for (int j = 0; j < NMAX; j++)
        if (j == i) x0 = at[j], x1 = bt[j];
    const int64_t kvd = set.rows[1];
    const int d = (int)(r % rp.head_dim); /* even: rows pair up within a head */
    if (wi == 2) {                        /* values */
        if (rp.keep) {
            rp.keep[((int64_t)n + i) * kvd + r] = x0;
            rp.keep[((int64_t)n + i) * kvd + r + 1] = x1;
        }
        store_pair(rp.dsts[n + i], r, through_f16(x0, rp.round), through_f16(x1, rp.round), rp.f16_cache);
        return;
    }
    if (wi == 1) { /* keys: kept as they came, rotated from their f16 values */
        if (rp.keep) {
            rp.keep[(int64_t)i * kvd + r] = x0;
            rp.keep[(int64_t)i * kvd + r + 1] = x1;
        }
        x0 = through_f16(x0, rp.round);
        x1 = through_f16(x1, rp.round);
    }
    float y0 = x0, y1 = x1;
    if (d < rp.n_rot) {
        const float theta = rope_theta((float)rp.pos[i], rp.theta_scale, d / 2);
        const float c = cosf(theta), s = sinf(theta);
        y0 = rope_first(x0, x1, c, s);
        y1 = rope_second(x0, x1, c, s);
    }
    if (wi == 0) {
        set.y[0][(int64_t)i * set.rows[0] + r] = y0;
        set.y[0][(int64_t)i * set.rows[0] + r + 1] = y1;
    } else {
        store_pair(rp.dsts[i], r, y0, y1, rp.f16_cache);
    }
}

/* qkv_rope_rows as a kernel; NORM: RMSNorm of x first. */
template <int T, bool NORM, int NMAX, bool AH>
__global__ void qkv_rope_kernel(svlm_cu_matvec_set set, int64_t cols, const float *x, int n, const float *nw,
                                float eps, svlm_cu_rope_pairs rp, int parts, int flags, bool pdl) {
    extern __shared__ float xs[];
    const qkv_pair p = qkv_pair_of(set, parts, blockIdx.x);
    if (pdl && p.w) pdl_prefetch_warp(p.w, 2 * set.row_bytes, p.rs.part, parts);
    pdl_wait(); /* x and the outputs: the kernel before (cuda_pdl.cuh) */
    pdl_launch_dependents();
    const float *xa = block_activations<NORM>(x, nw, eps, cols, n, xs);
    qkv_rope_rows<T, NMAX, AH>(set, p, cols, xa, n, rp, flags);
}

#include "kernels/cuda/cuda_quant_staged.cuh" /* (in this namespace: it uses the above) */

__device__ __forceinline__ uint16_t to_bf16(float f) {
    const uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

template <int T>
__global__ void dequant_kernel(const uint8_t *w, size_t row_bytes, int64_t rows, int64_t cols, void *out,
                               int out_bf16) {
    const int64_t id = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (id >= rows * cols) return;
    const int64_t r = id / cols, c = id % cols;
    const float v = elem<T>(w + r * row_bytes, c / 32, (int)(c % 32));
    if (out_bf16)
        static_cast<uint16_t *>(out)[id] = to_bf16(v);
    else
        static_cast<float *>(out)[id] = v;
}

/* The kernels' activation rows come in two sizes of register arrays: up to 8 (decode of one
 * answer or a few) and up to SVLM_CU_MATVEC_MAX. */
constexpr int kFewRows = 8;

/* SVLM_CUDA_MATVEC_SPLIT=1, 2 or 4: that many warps a row for every product; 0: chosen */
int split_fixed() {
    static int fixed = -1;
    if (fixed < 0) {
        const char *e = getenv("SVLM_CUDA_MATVEC_SPLIT");
        const int v = e ? atoi(e) : 0;
        fixed = v == 1 || v == 2 || v == 4 ? v : 0;
    }
    return fixed;
}

/* Warps per weight row: a row of 576 columns is 18 sub-blocks, five rounds of loads for one warp
 * but two for each of four, and four times the warps to hide the latency with.
 * SVLM_CUDA_MATVEC_SPLIT fixes it ("auto", the default: 4 from 16 sub-blocks, 2 from 8). */
int parts_for(int64_t cols) {
    if (split_fixed()) return split_fixed();
    const int64_t sub = cols / 32;
    return sub >= 16 ? 4 : sub >= 8 ? 2 : 1;
}

/* parts_for_rows's split for tall weights (H100, 256M shape: one answer's decode 515 -> 542 tok/s);
 * SVLM_CUDA_MATVEC_TALL=0: four warps a row, as before. Read once a process. */
bool tall_split() {
    static const bool on = !svlm_cu_switch_off("SVLM_CUDA_MATVEC_TALL"); /* (initialised once, thread-safe) */
    return on;
}

/* The same for a lone product of `rows` rows: a tall weight (the output product, 49,280 rows for
 * SmolVLM2) fills the GPU with waves of warps anyway, and each extra wave of blocks costs its
 * rounds of loads and a barrier: with tall_split() (the default), split so that it takes at most kTallWarps
 * warps (four waves of an H100's 8,448 warp slots), one warp a row for the output product. The fused kernels
 * keep parts_for (q/k/v's two forms must split alike: test_cuda_data compares them bit for bit). */
constexpr int64_t kTallWarps = 32768;
int parts_for_rows(int64_t cols, int64_t rows) {
    int p = parts_for(cols);
    if (!split_fixed() && tall_split())
        while (p > 1 && rows * p > kTallWarps)
            p /= 2;
    return p;
}

/* kRowKqLanes unless SVLM_CUDA_KQUANT_LANES=0, kRowAhead with SVLM_CUDA_MATVEC_AHEAD=1, kRowStaged
 * with SVLM_CUDA_MATVEC_STAGED=1, kRowStagedK with SVLM_CUDA_MATVEC_STAGED_K=1 and the lane forms
 * (read once per process) */
int row_flags() {
    static int flags = -1;
    if (flags < 0) {
        const char *kl = getenv("SVLM_CUDA_KQUANT_LANES");
        const int lanes = !(kl && kl[0] == '0' && !kl[1]),
                  ahead = svlm_cu_switch_on("SVLM_CUDA_MATVEC_AHEAD"),
                  staged = svlm_cu_switch_on("SVLM_CUDA_MATVEC_STAGED"),
                  staged_k = svlm_cu_switch_on("SVLM_CUDA_MATVEC_STAGED_K");
        flags = (lanes ? kRowKqLanes : 0) | (ahead ? kRowAhead : 0) | (staged ? kRowStaged : 0) |
                (staged_k && lanes ? kRowStagedK : 0);
    }
    return flags;
}

/* The staged form for type T's few-row products: kRowStaged for the types without a lane form of
 * their own, kRowStagedK for Q4_K and Q6_K (two switches: a GPU run measures each alone). */
template <int T> constexpr bool kLaneType = T == 12 || T == 14;
template <int T> bool staged_on() {
    return (row_flags() & (kLaneType<T> ? kRowStagedK : kRowStaged)) != 0;
}

unsigned row_blocks(int64_t rows, int parts) {
    const int per = kWarpsPerBlock / parts;
    return (unsigned)((rows + per - 1) / per);
}

/* The launchers below: kRowAhead's kernels (AH) are made for the few-row form only (one answer's,
 * or a few answers', decode), so the larger batches and every default launch run the measured
 * code, compiled without rows_ahead (a runtime flag beside it changed the default kernels'
 * registers too). */

template <int T, int NMAX>
int launch_matvec_n(cudaStream_t s, const void *w, size_t row_bytes, int64_t rows, int64_t cols,
                    const float *x, int64_t n, float *y, int accumulate, bool pdl) {
    const uint8_t *wb = static_cast<const uint8_t *>(w);
    if constexpr (NMAX == kFewRows)
        if (staged_on<T>() && stage_fits<kStageWords>(w, row_bytes, 0)) {
            auto staged =
                n == 1 ? (accumulate ? matvec_staged_kernel<T, true, 1> : matvec_staged_kernel<T, false, 1>)
                       : (accumulate ? matvec_staged_kernel<T, true, NMAX>
                                     : matvec_staged_kernel<T, false, NMAX>);
            return pdl_launch(pdl, staged, row_blocks(rows, 1), 32 * kWarpsPerBlock, 0, s, wb, row_bytes,
                              rows, cols, x, (int)n, y);
        }
    const int parts = parts_for_rows(cols, rows);
    const unsigned blocks = row_blocks(rows, parts);
    auto kernel = accumulate ? matvec_kernel<T, true, NMAX, false> : matvec_kernel<T, false, NMAX, false>;
    if constexpr (NMAX == kFewRows)
        if (row_flags() & kRowAhead)
            kernel = accumulate ? matvec_kernel<T, true, NMAX, true> : matvec_kernel<T, false, NMAX, true>;
    return pdl_launch(pdl, kernel, blocks, 32 * kWarpsPerBlock, 0, s, wb, row_bytes, rows, cols, x, (int)n, y,
                      parts, row_flags(), pdl);
}

template <int T>
int launch_matvec(cudaStream_t s, const void *w, size_t row_bytes, int64_t rows, int64_t cols, const float *x,
                  int64_t n, float *y, int accumulate, bool pdl) {
    return n <= kFewRows ? launch_matvec_n<T, kFewRows>(s, w, row_bytes, rows, cols, x, n, y, accumulate, pdl)
                         : launch_matvec_n<T, SVLM_CU_MATVEC_MAX>(s, w, row_bytes, rows, cols, x, n, y,
                                                                  accumulate, pdl);
}

/* Warps are independent, so a block may hold the last rows of one weight and the first of the next. */
template <int T, int NMAX>
int launch_matvec_multi_n(cudaStream_t s, const svlm_cu_matvec_set *set, int64_t cols, const float *x,
                          int64_t n, const float *nw, float eps, bool pdl) {
    const size_t xs_bytes = nw ? sizeof(float) * (size_t)(n * cols) : 0;
    int64_t total = 0;
    /* staged where the q/k/v kernel with RoPE stages its pairs (a pair's room a row), so that the
     * two forms stay equal bit for bit */
    bool fits = true;
    for (int i = 0; i < set->n; i++) {
        total += set->rows[i];
        fits = fits && stage_fits<kStagePairWords>(set->w[i], set->row_bytes, xs_bytes);
    }
    if constexpr (NMAX == kFewRows)
        if (staged_on<T>() && fits) {
            auto staged =
                n == 1
                    ? (nw ? matvec_multi_staged_kernel<T, true, 1> : matvec_multi_staged_kernel<T, false, 1>)
                    : (nw ? matvec_multi_staged_kernel<T, true, NMAX>
                          : matvec_multi_staged_kernel<T, false, NMAX>);
            return pdl_launch(pdl, staged, row_blocks(total, 1), 32 * kWarpsPerBlock, xs_bytes, s, *set, cols,
                              x, (int)n, nw, eps);
        }
    const int parts = parts_for(cols);
    const unsigned blocks = row_blocks(total, parts);
    auto kernel = nw ? matvec_multi_kernel<T, true, NMAX, false> : matvec_multi_kernel<T, false, NMAX, false>;
    if constexpr (NMAX == kFewRows)
        if (row_flags() & kRowAhead)
            kernel =
                nw ? matvec_multi_kernel<T, true, NMAX, true> : matvec_multi_kernel<T, false, NMAX, true>;
    return pdl_launch(pdl, kernel, blocks, 32 * kWarpsPerBlock, nw ? sizeof(float) * (size_t)(n * cols) : 0,
                      s, *set, cols, x, (int)n, nw, eps, parts, row_flags(), pdl);
}

template <int T>
int launch_matvec_multi(cudaStream_t s, const svlm_cu_matvec_set *set, int64_t cols, const float *x,
                        int64_t n, const float *nw, float eps, bool pdl) {
    return n <= kFewRows ? launch_matvec_multi_n<T, kFewRows>(s, set, cols, x, n, nw, eps, pdl)
                         : launch_matvec_multi_n<T, SVLM_CU_MATVEC_MAX>(s, set, cols, x, n, nw, eps, pdl);
}

template <int T, int NMAX>
int launch_qkv_rope_n(cudaStream_t s, const svlm_cu_matvec_set *set, int64_t cols, const float *x, int64_t n,
                      const float *nw, float eps, const svlm_cu_rope_pairs *rp, bool pdl) {
    const int64_t pairs = (set->rows[0] + set->rows[1] + set->rows[2]) / 2;
    const size_t xs_bytes = nw ? sizeof(float) * (size_t)(n * cols) : 0;
    if constexpr (NMAX == kFewRows)
        if (staged_on<T>() && stage_fits<kStagePairWords>(set->w[0], set->row_bytes, xs_bytes) &&
            stage_fits<kStagePairWords>(set->w[1], set->row_bytes, xs_bytes) &&
            stage_fits<kStagePairWords>(set->w[2], set->row_bytes, xs_bytes)) {
            auto staged =
                n == 1
                    ? (nw ? qkv_rope_staged_kernel<T, true, 1> : qkv_rope_staged_kernel<T, false, 1>)
                    : (nw ? qkv_rope_staged_kernel<T, true, NMAX> : qkv_rope_staged_kernel<T, false, NMAX>);
            return pdl_launch(pdl, staged, row_blocks(pairs, 1), 32 * kWarpsPerBlock, xs_bytes, s, *set, cols,
                              x, (int)n, nw, eps, *rp);
        }
    const int parts = parts_for(cols);
    const unsigned blocks = row_blocks(pairs, parts);
    auto kernel = nw ? qkv_rope_kernel<T, true, NMAX, false> : qkv_rope_kernel<T, false, NMAX, false>;
    if constexpr (NMAX == kFewRows)
        if (row_flags() & kRowAhead)
            kernel = nw ? qkv_rope_kernel<T, true, NMAX, true> : qkv_rope_kernel<T, false, NMAX, true>;
    return pdl_launch(pdl, kernel, blocks, 32 * kWarpsPerBlock, nw ? sizeof(float) * (size_t)(n * cols) : 0,
                      s, *set, cols, x, (int)n, nw, eps, *rp, parts, row_flags(), pdl);
}

template <int T>
int launch_qkv_rope(cudaStream_t s, const svlm_cu_matvec_set *set, int64_t cols, const float *x, int64_t n,
                    const float *nw, float eps, const svlm_cu_rope_pairs *rp, bool pdl) {
    return n <= kFewRows ? launch_qkv_rope_n<T, kFewRows>(s, set, cols, x, n, nw, eps, rp, pdl)
                         : launch_qkv_rope_n<T, SVLM_CU_MATVEC_MAX>(s, set, cols, x, n, nw, eps, rp, pdl);
}

template <int T, int NMAX>
int launch_swiglu_n(cudaStream_t s, const void *wg, const void *wu, size_t row_bytes, int64_t rows,
                    int64_t cols, const float *x, int64_t n, const float *nw, float eps, float *gate,
                    bool pdl) {
    const uint8_t *g = static_cast<const uint8_t *>(wg), *u = static_cast<const uint8_t *>(wu);
    const size_t xs_bytes = nw ? sizeof(float) * (size_t)(n * cols) : 0;
    if constexpr (NMAX == kFewRows)
        if (staged_on<T>() && stage_fits<kStagePairWords>(wg, row_bytes, xs_bytes) &&
            stage_fits<kStagePairWords>(wu, row_bytes, xs_bytes)) {
            auto staged =
                n == 1 ? (nw ? swiglu_staged_kernel<T, true, 1> : swiglu_staged_kernel<T, false, 1>)
                       : (nw ? swiglu_staged_kernel<T, true, NMAX> : swiglu_staged_kernel<T, false, NMAX>);
            return pdl_launch(pdl, staged, row_blocks(rows, 1), 32 * kWarpsPerBlock, xs_bytes, s, g, u,
                              row_bytes, rows, cols, x, (int)n, nw, eps, gate);
        }
    const int parts = parts_for(cols);
    const unsigned blocks = row_blocks(rows, parts);
    auto kernel = nw ? swiglu_kernel<T, true, NMAX, false> : swiglu_kernel<T, false, NMAX, false>;
    if constexpr (NMAX == kFewRows)
        if (row_flags() & kRowAhead)
            kernel = nw ? swiglu_kernel<T, true, NMAX, true> : swiglu_kernel<T, false, NMAX, true>;
    return pdl_launch(pdl, kernel, blocks, 32 * kWarpsPerBlock, nw ? sizeof(float) * (size_t)(n * cols) : 0,
                      s, g, u, row_bytes, rows, cols, x, (int)n, nw, eps, gate, parts, row_flags(), pdl);
}

template <int T>
int launch_swiglu(cudaStream_t s, const void *wg, const void *wu, size_t row_bytes, int64_t rows,
                  int64_t cols, const float *x, int64_t n, const float *nw, float eps, float *gate,
                  bool pdl) {
    return n <= kFewRows
               ? launch_swiglu_n<T, kFewRows>(s, wg, wu, row_bytes, rows, cols, x, n, nw, eps, gate, pdl)
               : launch_swiglu_n<T, SVLM_CU_MATVEC_MAX>(s, wg, wu, row_bytes, rows, cols, x, n, nw, eps, gate,
                                                        pdl);
}

template <int T>
int launch_dequant(cudaStream_t s, const void *w, size_t row_bytes, int64_t rows, int64_t cols, void *out,
                   int out_bf16) {
    const int64_t total = rows * cols;
    if (total <= 0) return 0;
    dequant_kernel<T><<<(unsigned)((total + 255) / 256), 256, 0, s>>>(static_cast<const uint8_t *>(w),
                                                                      row_bytes, rows, cols, out, out_bf16);
    return (int)cudaGetLastError();
}

} // namespace

/* The table of type id ID, in the file that compiles its instances. */
#define SVLM_QUANT_OPS_DEFINE(ID)                                                                            \
    extern const svlm_quant_ops svlm_quant_ops_##ID = {launch_matvec<ID>, launch_matvec_multi<ID>,           \
                                                       launch_swiglu<ID>, launch_dequant<ID>,                \
                                                       launch_qkv_rope<ID>};

#endif
