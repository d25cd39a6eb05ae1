/*
 * Every layer of a one-row decode step in one kernel (svlm_cu_decode_layers; docs/cuda.md, "one
 * persistent kernel per step"). As separate kernels a layer is five grids, and each pays its
 * ramp of block launches and its drain, some 12 us a kernel on an H100 for a few microseconds of
 * loads. Here the blocks stay resident (a cooperative launch) and run the layers as phases,
 * separated by grid-wide barriers:
 *
 *   1. RMSNorm of x and the q/k/v rows with RoPE and the cache stores (qkv_rope_rows);
 *   2. attention over the cache (decode_block; the last split of a head merges);
 *   3. output product + residual (matvec_rows);
 *   4. RMSNorm of x and gate/up + SwiGLU (swiglu_rows);
 *   5. down product + residual (matvec_rows).
 *
 * A phase's virtual blocks are the blocks its own kernel would launch, taken in turn by the
 * resident ones, and each runs the same device function as that kernel with the same split of
 * warps per row: the numbers are those of the separate kernels, bit for bit. A block normalises x
 * once per phase, not once per virtual block. With `prefetch`, a block first asks L2 for the weight
 * rows of its later phases, so their loads overlap the barriers.
 *
 * Built for Q8_0 (the 256M model's type). Off unless SVLM_CUDA_PERSISTENT=1 (cuda_decode.c):
 * written without a GPU to run it on, it waits for gpu-check to test and measure it.
 */
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_attention_decode.cuh"
#include "kernels/cuda/cuda_quant.cuh"

namespace cg = cooperative_groups;

namespace {

static_assert(kThreads == 32 * kWarpsPerBlock, "the attention and the products share the block shape");

/* The virtual blocks of each phase and its warps per row (as the separate launchers choose). */
struct phase_shape {
    unsigned qkv_vb, att_vb, o_vb, ffn_vb, down_vb;
    int qkv_parts, o_parts, ffn_parts, down_parts, flags;
};

/* L2 prefetch of the rows of w this warp takes in a phase of nvb virtual blocks. */
__device__ __forceinline__ void prefetch_rows(const void *w, size_t row_bytes, int64_t rows, int parts,
                                              unsigned nvb) {
    const row_split rs = split_of(parts);
    for (unsigned vb = blockIdx.x; vb < nvb; vb += gridDim.x) {
        const int64_t r = (int64_t)vb * (kWarpsPerBlock / parts) + rs.slot;
        if (r < rows)
            pdl_prefetch_warp(static_cast<const uint8_t *>(w) + r * row_bytes, row_bytes, rs.part, parts);
    }
}

/* qkv_pair_of for a set of three weights built in registers: the weight picked by comparisons
 * (weight_of's loop indexes set's arrays, which would put a set made at run time in local memory). */
__device__ __forceinline__ qkv_pair qkv_pair3(const svlm_cu_matvec_set &set, int parts, unsigned vb) {
    qkv_pair p;
    p.rs = split_of(parts);
    int64_t r = 2 * ((int64_t)vb * (kWarpsPerBlock / parts) + p.rs.slot);
    const void *w = nullptr;
    p.wi = 3;
    if (r < set.rows[0]) {
        p.wi = 0, w = set.w[0];
    } else if ((r -= set.rows[0]) < set.rows[1]) {
        p.wi = 1, w = set.w[1];
    } else if ((r -= set.rows[1]) < set.rows[2]) {
        p.wi = 2, w = set.w[2];
    }
    p.r = r;
    p.w = w ? static_cast<const uint8_t *>(w) + r * set.row_bytes : nullptr;
    return p;
}

/* Layer L's q/k/v as the set qkv_rope_rows takes (q into the step's q row). */
__device__ __forceinline__ svlm_cu_matvec_set qkv_set(const svlm_cu_decode_layer &L,
                                                      const svlm_cu_decode_step &a) {
    return {
        {L.wq, L.wk, L.wv}, {a.q, nullptr, nullptr}, {a.q_rows, a.kv_rows, a.kv_rows}, a.qkv_row_bytes, 3};
}

/* A phase of a product added to the residual x (n_embd rows of w, cols wide, against x_in). */
template <int T>
__device__ __forceinline__ void product_add_phase(const void *w, size_t row_bytes, int64_t cols,
                                                  const float *x_in, const svlm_cu_decode_step &a, int parts,
                                                  int flags, unsigned nvb) {
    for (unsigned vb = blockIdx.x; vb < nvb; vb += gridDim.x) {
        matvec_rows<T, true, 1, false>(static_cast<const uint8_t *>(w), row_bytes, a.n_embd, cols, x_in, 1,
                                       a.x, parts, flags, vb);
        __syncthreads(); /* sum_parts' buffer is reused */
    }
}

template <int T, bool F16>
__global__ void __launch_bounds__(kThreads) decode_layers_kernel(svlm_cu_decode_step a, phase_shape ps) {
    extern __shared__ float xs[]; /* x normalised: n_embd floats */
    cg::grid_group grid = cg::this_grid();
    const int rep = a.n_head / a.n_kv_head;
    const bool vec = a.head_dim % 4 == 0 && a.kv_stride % 4 == 0;
    for (int l = 0; l < a.n_layer; l++) {
        const svlm_cu_decode_layer L = a.layers[l];
        const svlm_cu_matvec_set set = qkv_set(L, a);
        if (a.prefetch) {
            prefetch_rows(L.wo, a.o_row_bytes, a.n_embd, ps.o_parts, ps.o_vb);
            prefetch_rows(L.wg, a.ffn_row_bytes, a.n_ff, ps.ffn_parts, ps.ffn_vb);
            prefetch_rows(L.wu, a.ffn_row_bytes, a.n_ff, ps.ffn_parts, ps.ffn_vb);
            prefetch_rows(L.wd, a.down_row_bytes, a.n_embd, ps.down_parts, ps.down_vb);
        }
        /* 1: RMSNorm + q/k/v + RoPE + stores */
        if (blockIdx.x < ps.qkv_vb) {
            const svlm_cu_rope_pairs rp = {a.pos,      L.dsts,  L.keep, a.theta_scale,
                                           a.head_dim, a.n_rot, F16,    a.round};
            const float *xa = block_activations<true>(a.x, L.attn_norm, a.eps, a.n_embd, 1, xs);
            for (unsigned vb = blockIdx.x; vb < ps.qkv_vb; vb += gridDim.x) {
                qkv_rope_rows<T, 1, false>(set, qkv_pair3(set, ps.qkv_parts, vb), a.n_embd, xa, 1, rp,
                                           ps.flags);
                __syncthreads(); /* sum_parts' buffer is reused */
            }
        }
        grid.sync();
        /* 2: attention (one item: the row's) */
        for (unsigned vb = blockIdx.x; vb < ps.att_vb; vb += gridDim.x) {
            decode_block<F16, 8, false>(L.att, 0, (int)(vb / a.splits), (int)(vb % a.splits), a.kv_stride,
                                        a.n_head, rep, a.head_dim, a.scale, a.splits, vec, a.part, a.done);
            __syncthreads(); /* its shared arrays are reused */
        }
        grid.sync();
        /* 3: output product + residual */
        product_add_phase<T>(L.wo, a.o_row_bytes, a.q_rows, a.att, a, ps.o_parts, ps.flags, ps.o_vb);
        grid.sync();
        /* 4: RMSNorm + gate/up + SwiGLU */
        if (blockIdx.x < ps.ffn_vb) {
            const float *xa = block_activations<true>(a.x, L.ffn_norm, a.eps, a.n_embd, 1, xs);
            for (unsigned vb = blockIdx.x; vb < ps.ffn_vb; vb += gridDim.x) {
                swiglu_rows<T, 1, false>(static_cast<const uint8_t *>(L.wg),
                                         static_cast<const uint8_t *>(L.wu), a.ffn_row_bytes, a.n_ff,
                                         a.n_embd, xa, 1, a.gate, ps.ffn_parts, ps.flags, vb);
                __syncthreads();
            }
        }
        if (a.prefetch && l + 1 < a.n_layer) { /* the next layer's q/k/v rows */
            const svlm_cu_matvec_set next = qkv_set(a.layers[l + 1], a);
            for (unsigned vb = blockIdx.x; vb < ps.qkv_vb; vb += gridDim.x) {
                const qkv_pair p = qkv_pair3(next, ps.qkv_parts, vb);
                if (p.w) pdl_prefetch_warp(p.w, 2 * next.row_bytes, p.rs.part, ps.qkv_parts);
            }
        }
        grid.sync();
        /* 5: down product + residual */
        product_add_phase<T>(L.wd, a.down_row_bytes, a.n_ff, a.gate, a, ps.down_parts, ps.flags, ps.down_vb);
        if (l + 1 < a.n_layer) grid.sync(); /* (after the last layer the kernel's end orders what follows) */
    }
}

/* The kernel of type T and cache type, or nullptr where none is built. */
using decode_layers_fn = void (*)(svlm_cu_decode_step, phase_shape);
decode_layers_fn kernel_of(int type, int kv_f16) {
    if (type == 8) return kv_f16 ? decode_layers_kernel<8, true> : decode_layers_kernel<8, false>;
    return nullptr;
}

} // namespace

extern "C" int svlm_cu_decode_layers_type(int type) {
    return kernel_of(type, 0) != nullptr;
}

extern "C" int svlm_cu_decode_layers_max_blocks(int type, int kv_f16, int64_t n_embd) {
    const decode_layers_fn kernel = kernel_of(type, kv_f16);
    if (!kernel || n_embd <= 0 || sizeof(float) * (size_t)n_embd > SVLM_CU_NORM_SMEM) return 0;
    int dev = 0, sms = 0, coop = 0, per_sm = 0;
    cudaFuncAttributes fa;
    const size_t dyn = sizeof(float) * (size_t)n_embd;
    if (cudaFuncGetAttributes(&fa, kernel) != cudaSuccess || fa.sharedSizeBytes + dyn > 48 * 1024 ||
        cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&coop, cudaDevAttrCooperativeLaunch, dev) != cudaSuccess || !coop ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, dyn) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return per_sm * sms;
}

extern "C" int svlm_cu_decode_layers(cudaStream_t s, const svlm_cu_decode_step *a, int blocks) {
    const decode_layers_fn kernel = kernel_of(a->type, a->kv_f16);
    if (!kernel || blocks <= 0 || a->n_layer <= 0 || a->head_dim <= 0 || a->head_dim > kMaxDim ||
        a->head_dim % 2 || a->n_rot < 0 || a->n_rot % 2 || a->n_rot > a->head_dim || a->n_kv_head <= 0 ||
        a->n_head % a->n_kv_head || a->splits < 1 || a->splits > kMaxSplits ||
        (a->splits > 1 && (!a->part || !a->done)) || a->q_rows != (int64_t)a->n_head * a->head_dim ||
        a->kv_rows != (int64_t)a->n_kv_head * a->head_dim || !svlm_cu_norm_fits(a->n_embd, 1) ||
        a->n_embd % 32 || a->q_rows % 32 || a->n_ff % 32)
        return (int)cudaErrorInvalidValue;
    phase_shape ps;
    ps.qkv_parts = parts_for(a->n_embd);
    ps.ffn_parts = parts_for(a->n_embd);
    ps.o_parts = parts_for_rows(a->q_rows, a->n_embd);
    ps.down_parts = parts_for_rows(a->n_ff, a->n_embd);
    ps.qkv_vb = row_blocks((a->q_rows + 2 * a->kv_rows) / 2, ps.qkv_parts);
    ps.att_vb = (unsigned)a->n_head * (unsigned)a->splits;
    ps.o_vb = row_blocks(a->n_embd, ps.o_parts);
    ps.ffn_vb = row_blocks(a->n_ff, ps.ffn_parts);
    ps.down_vb = row_blocks(a->n_embd, ps.down_parts);
    ps.flags = row_flags() & ~(kRowAhead | kRowStaged | kRowStagedK); /* the default row form */
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeCooperative;
    attr[0].val.cooperative = 1;
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3((unsigned)blocks);
    cfg.blockDim = dim3(kThreads);
    cfg.dynamicSmemBytes = sizeof(float) * (size_t)a->n_embd;
    cfg.stream = s;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    const cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, *a, ps);
    const cudaError_t last = cudaGetLastError();
    return (int)(e != cudaSuccess ? e : last);
}
