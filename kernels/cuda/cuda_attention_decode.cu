/*
 * Decode attention: one query per sequence over its own cache, several sequences per launch.
 * A query's heads alone are too few blocks to fill a GPU (9 heads on 132 SMs), and a warp that
 * walks the rows one at a time waits on each row's load and reductions. So the rows of one
 * (sequence, head) are split over `splits` blocks, and inside a block each lane scores its own row
 * (lanes over rows: one max and one sum per 32 rows instead of per row), then the warp adds the
 * 32 rows' values with lanes over head dims (coalesced rows of V). Each split keeps an online
 * softmax (max m, sum l, weighted values) and leaves it in `part`; the last split of a (sequence,
 * head) to finish (a counter per pair) merges them into the output, so a step is one launch.
 *
 * The lengths are read from the items when the kernel runs (not at launch), so a recorded decode
 * step (CUDA graph) serves every step; the launch's shape sets the most splits, and a short cache
 * uses fewer (ceil(n / kThreads): at most one pass of a block's warps each; up to kThreads rows,
 * one split writes the output itself).
 */
#include <cuda_runtime.h>
#include <stdlib.h>

#include "kernels/cuda/cuda_attention_decode.cuh"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/cuda_pdl.cuh"

namespace {

/* The cache rows block (item, head h, split) reads, keys and values, into L2 before the kernel
 * waits for the one ahead (PF, SVLM_CUDA_DECODE_PREFETCH=1): the items and every row but the
 * newest were written before the step began (the items by a copy, which no kernel overlaps; the
 * rows by earlier steps), and a prefetch is a hint that changes no value, so the newest row, being
 * written by the kernel ahead, is harmless too. The rows are then L2 hits after the wait. */
template <bool F16>
__device__ __forceinline__ void prefetch_rows(const svlm_cu_attn_item *items, unsigned item, int h, int split,
                                              int64_t kv_stride, int rep, int hd, int splits) {
    const svlm_cu_attn_item it = items[item];
    const int64_t n = it.n_kv > 0 ? it.n_kv : 0;
    const int64_t want = (n + kThreads - 1) / kThreads; /* decode_block's splits, as it counts them */
    const int used = want < 1 ? 1 : want < splits ? (int)want : splits;
    if (split >= used) return;
    const int64_t chunk = (n + used - 1) / used, c0 = split * chunk, c1 = c0 + chunk < n ? c0 + chunk : n;
    const int64_t esize = F16 ? 2 : 4, row_bytes = hd * esize, off = (int64_t)(h / rep) * hd * esize;
    const int lines = (int)((row_bytes + 127) / 128) + 1; /* a row may straddle one line more */
    const int per_row = 2 * lines;                        /* its key's lines, then its value's */
    for (int i = threadIdx.x; i < (int)(c1 - c0) * per_row; i += kThreads) { /* (32-bit: a block's rows) */
        const int64_t row = c0 + i / per_row;
        const int j = i % per_row, l = j % lines;
        const char *base = static_cast<const char *>(j < lines ? it.k : it.v) + row * kv_stride * esize + off;
        const uintptr_t first = reinterpret_cast<uintptr_t>(base) & ~(uintptr_t)127,
                        a = first + (uintptr_t)l * 128;
        if (a < reinterpret_cast<uintptr_t>(base) + (uintptr_t)row_bytes)
            asm volatile("prefetch.L2 [%0];" ::"l"(a));
    }
}

/* Block (item blockIdx.x, head blockIdx.y, split blockIdx.z): decode_block's work. */
template <bool F16, int kPerLane, bool ahead, bool PF>
__global__ void __launch_bounds__(kThreads)
    decode_kernel(const svlm_cu_attn_item *items, int64_t kv_stride, int n_head, int rep, int hd, float scale,
                  int splits, bool vec, float *part, unsigned *done) {
    if constexpr (PF)
        prefetch_rows<F16>(items, blockIdx.x, blockIdx.y, blockIdx.z, kv_stride, rep, hd, splits);
    pdl_wait(); /* launched with pdl_launch: a decode step's kernel */
    pdl_launch_dependents();
    decode_block<F16, kPerLane, ahead>(items, blockIdx.x, blockIdx.y, blockIdx.z, kv_stride, n_head, rep, hd,
                                       scale, splits, vec, part, done);
}

/* A lane's key row and a chunk of rows' values loaded before they are summed (H100, 256M shape:
 * one answer's decode 515 -> 564 tok/s); SVLM_CUDA_DECODE_AHEAD=0: the loads wait one after another
 * behind their sums, as before. Read once a process. */
bool ahead_loads() {
    static const bool on =
        !svlm_cu_switch_off("SVLM_CUDA_DECODE_AHEAD"); /* (initialised once, thread-safe) */
    return on;
}

/* SVLM_CUDA_DECODE_PREFETCH=1: prefetch_rows before the wait (not yet run on a GPU: off by
 * default; gpu-check tests and compares it). Read once a process. */
bool prefetch_on() {
    static const bool on =
        svlm_cu_switch_on("SVLM_CUDA_DECODE_PREFETCH"); /* (initialised once, thread-safe) */
    return on;
}

/* decode_kernel's instance for the cache type, the lane's share of a head, the loads ahead and the
 * prefetch */
template <bool PF>
auto decode_kernel_for(bool kv_f16, int head_dim, bool ahead)
    -> decltype(&decode_kernel<true, 8, false, PF>) {
    /* measured: a lane's share of any head in 8 registers (heads up to 256), without the loads
     * ahead compiled in; ahead: 2, 4 or 8 dims (heads up to 64, 128, 256) */
    if (!ahead) return kv_f16 ? decode_kernel<true, 8, false, PF> : decode_kernel<false, 8, false, PF>;
    return head_dim <= 64 ? (kv_f16 ? decode_kernel<true, 2, true, PF> : decode_kernel<false, 2, true, PF>)
           : head_dim <= 128
               ? (kv_f16 ? decode_kernel<true, 4, true, PF> : decode_kernel<false, 4, true, PF>)
               : (kv_f16 ? decode_kernel<true, 8, true, PF> : decode_kernel<false, 8, true, PF>);
}

} // namespace

extern "C" int svlm_cu_attention_decode_splits(int n_items, int n_head) {
    if (n_items <= 0 || n_head <= 0) return 1;
    const long long blocks = (long long)n_items * n_head;
    long long s = (kTargetBlocks + blocks - 1) / blocks;
    return (int)(s < 1 ? 1 : s > kMaxSplits ? kMaxSplits : s);
}

extern "C" int svlm_cu_attention_decode(cudaStream_t s, const svlm_cu_attn_item *items, int n_items,
                                        int kv_f16, int64_t kv_stride, int n_head, int n_kv_head,
                                        int head_dim, float scale, int splits, float *part, unsigned *done,
                                        int pdl) {
    if (n_items <= 0 || n_head <= 0) return 0;
    if (head_dim <= 0 || head_dim > kMaxDim || n_kv_head <= 0 || n_head % n_kv_head || n_head > 65535 ||
        splits < 1 || splits > kMaxSplits || (splits > 1 && (!part || !done)))
        return (int)cudaErrorInvalidValue;
    /* 4-element loads of K rows: every row start aligned (the base pointers are allocations) */
    const bool vec = head_dim % 4 == 0 && kv_stride % 4 == 0;
    const dim3 grid((unsigned)n_items, (unsigned)n_head, (unsigned)splits);
    const int rep = n_head / n_kv_head;
    const auto kernel = prefetch_on() ? decode_kernel_for<true>(kv_f16, head_dim, ahead_loads())
                                      : decode_kernel_for<false>(kv_f16, head_dim, ahead_loads());
    return pdl_launch(pdl, kernel, grid, kThreads, 0, s, items, kv_stride, n_head, rep, head_dim, scale,
                      splits, vec, part, done);
}
