/*
 * The staged form of the few-row decode products (SVLM_CUDA_MATVEC_STAGED=1; included by
 * cuda_quant.cuh, inside its namespace). One warp a weight row: before the kernel waits for the
 * one ahead of it (pdl_wait), the warp copies its whole row into shared memory as 4-byte words,
 * all in one round of loads. The weights depend on no kernel, so with PDL the copy overlaps the
 * kernel before, and the step's critical path keeps only the activations' reads. The default form
 * reads a row one byte a lane (Q8_0: 32 bytes a warp load), its share in rounds of dependent loads
 * after the wait; on the H100 every decode product ran short of 6 % of the memory's bandwidth,
 * waiting on those rounds.
 *
 * The products are then row_dots's with one part (SVLM_CUDA_MATVEC_SPLIT=1), run on the staged
 * bytes: the element decoders take the row's address, in shared memory as in global. Q4_K and Q6_K
 * rows (SVLM_CUDA_MATVEC_STAGED_K=1) are summed by their lane
 * forms (row_dots_k with one part), which need the row's 4-byte alignment: the copy keeps it. A row
 * longer than the buffer keeps the default form (stage_fits), whose warps split it.
 */
#ifndef SVLM_KERNELS_CUDA_QUANT_STAGED_CUH
#define SVLM_KERNELS_CUDA_QUANT_STAGED_CUH

/* words a lane holds of a row: one row a warp (2.5 KiB: the 256M shape's 1,536-wide Q8_0 rows are
 * 1,632 bytes), or each of a pair's two (1.25 KiB: its 576-wide ones 612, the 2.2B shape's
 * 2,048-wide Q4_K ones 1,152) */
constexpr int kStageWords = 20, kStagePairWords = 10;

/* row (row_bytes: whole words, at most 128 W) into r: every load issued before any is used (the
 * bounds are the same across the warp) */
template <int W>
__device__ __forceinline__ void stage_load(const uint8_t *row, int64_t row_bytes, uint32_t (&r)[W]) {
    const uint32_t *words = reinterpret_cast<const uint32_t *>(row);
    const int64_t n = row_bytes / 4;
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int k = 0; k < W; k++)
        if (32 * k < n) r[k] = __ldg(words + (32 * k + lane < n ? 32 * k + lane : n - 1));
}

template <int W>
__device__ __forceinline__ void stage_store(int64_t row_bytes, const uint32_t (&r)[W], uint32_t *buf) {
    const int64_t n = row_bytes / 4;
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int k = 0; k < W; k++)
        if (32 * k < n) buf[32 * k + lane] = r[k];
    __syncwarp();
}

/* One row into a warp's buffer. */
template <int W>
__device__ __forceinline__ void stage_row(const uint8_t *row, int64_t row_bytes, uint32_t *buf) {
    uint32_t r[W];
    stage_load<W>(row, row_bytes, r);
    stage_store<W>(row_bytes, r, buf);
}

/* Two rows (b may be null) into a warp's two buffers, b's loads issued with a's. */
template <int W>
__device__ __forceinline__ void stage_pair(const uint8_t *a, const uint8_t *b, int64_t row_bytes,
                                           uint32_t *buf_a, uint32_t *buf_b) {
    uint32_t va[W], vb[W];
    if (a) stage_load<W>(a, row_bytes, va);
    if (b) stage_load<W>(b, row_bytes, vb);
    if (a) stage_store<W>(row_bytes, va, buf_a);
    if (b) stage_store<W>(row_bytes, vb, buf_b);
}

/* acc[i] = staged row . x row i for i < n, every lane getting the sums: row_dots itself with one
 * part, reading the row from shared memory (Q4_K and Q6_K through their lane forms, which the
 * staged form is used with). */
template <int T, int NMAX>
__device__ __forceinline__ void staged_row(const uint32_t *buf, int64_t cols, const float *x, int n,
                                           float *acc) {
    row_dots<T, NMAX, false>(reinterpret_cast<const uint8_t *>(buf), cols, x, n, acc, 0, 1, kRowKqLanes);
}

/* matvec_kernel's staged form: row blockIdx.x * kWarpsPerBlock + warp. */
template <int T, bool ACC, int NMAX>
__global__ void matvec_staged_kernel(const uint8_t *w, size_t row_bytes, int64_t rows, int64_t cols,
                                     const float *x, int n, float *y) {
    __shared__ uint32_t stage[kWarpsPerBlock][32 * kStageWords];
    const int warp = threadIdx.x / 32;
    const int64_t r = (int64_t)blockIdx.x * kWarpsPerBlock + warp;
    const uint8_t *row = w + (r < rows ? r : 0) * (int64_t)row_bytes;
    if (r < rows) stage_row<kStageWords>(row, row_bytes, stage[warp]);
    pdl_wait(); /* x and y: the kernel before (cuda_pdl.cuh) */
    pdl_launch_dependents();
    if (r >= rows) return;
    float acc[NMAX];
    staged_row<T, NMAX>(stage[warp], cols, x, n, acc);
    if (threadIdx.x % 32) return;
#pragma unroll
    for (int i = 0; i < NMAX; i++)
        if (i < n) y[i * rows + r] = ACC ? y[i * rows + r] + acc[i] : acc[i];
}

/* matvec_multi_kernel's staged form (q/k/v without RoPE); NORM: RMSNorm of x first. */
template <int T, bool NORM, int NMAX>
__global__ void matvec_multi_staged_kernel(svlm_cu_matvec_set set, int64_t cols, const float *x, int n,
                                           const float *nw, float eps) {
    extern __shared__ float xs[];
    __shared__ uint32_t stage[kWarpsPerBlock][32 * kStageWords];
    const int warp = threadIdx.x / 32;
    int64_t r = (int64_t)blockIdx.x * kWarpsPerBlock + warp;
    const int wi = weight_of(set, &r);
    const uint8_t *row = wi < set.n ? static_cast<const uint8_t *>(set.w[wi]) + r * set.row_bytes : nullptr;
    if (row) stage_row<kStageWords>(row, set.row_bytes, stage[warp]);
    pdl_wait(); /* x and the outputs: the kernel before (cuda_pdl.cuh) */
    pdl_launch_dependents();
    const float *xa = block_activations<NORM>(x, nw, eps, cols, n, xs); /* (has barriers: every warp) */
    if (!row) return;
    float acc[NMAX];
    staged_row<T, NMAX>(stage[warp], cols, xa, n, acc);
    if (threadIdx.x % 32) return;
    const int64_t rows = set.rows[wi];
#pragma unroll
    for (int i = 0; i < NMAX; i++)
        if (i < n) set.y[wi][i * rows + r] = acc[i];
}

/* swiglu_kernel's staged form: row blockIdx.x * kWarpsPerBlock + warp of both weights. */
template <int T, bool NORM, int NMAX>
__global__ void swiglu_staged_kernel(const uint8_t *wg, const uint8_t *wu, size_t row_bytes, int64_t rows,
                                     int64_t cols, const float *x, int n, const float *nw, float eps,
                                     float *gate) {
    extern __shared__ float xs[];
    __shared__ uint32_t stage[kWarpsPerBlock][2][32 * kStagePairWords];
    const int warp = threadIdx.x / 32;
    const int64_t r = (int64_t)blockIdx.x * kWarpsPerBlock + warp;
    const int64_t ro = r < rows ? r * (int64_t)row_bytes : 0;
    if (r < rows) stage_pair<kStagePairWords>(wg + ro, wu + ro, row_bytes, stage[warp][0], stage[warp][1]);
    pdl_wait(); /* x and gate: the kernel before (cuda_pdl.cuh) */
    pdl_launch_dependents();
    const float *xa = block_activations<NORM>(x, nw, eps, cols, n, xs);
    if (r >= rows) return;
    float gt[NMAX], ut[NMAX];
    staged_row<T, NMAX>(stage[warp][0], cols, xa, n, gt);
    staged_row<T, NMAX>(stage[warp][1], cols, xa, n, ut);
    if (threadIdx.x % 32) return;
#pragma unroll
    for (int i = 0; i < NMAX; i++)
        if (i < n) gate[i * rows + r] = gt[i] / (1.0f + expf(-gt[i])) * ut[i];
}

/* qkv_rope_kernel's staged form: warp slot blockIdx.x * kWarpsPerBlock + warp takes a rotation pair
 * (two neighbouring rows), both staged, then qkv_rope_finish as the default form. */
template <int T, bool NORM, int NMAX>
__global__ void qkv_rope_staged_kernel(svlm_cu_matvec_set set, int64_t cols, const float *x, int n,
                                       const float *nw, float eps, svlm_cu_rope_pairs rp) {
    extern __shared__ float xs[];
    __shared__ uint32_t stage[kWarpsPerBlock][2][32 * kStagePairWords];
    const int warp = threadIdx.x / 32;
    const qkv_pair p = qkv_pair_of(set, 1, blockIdx.x);
    const uint8_t *b = p.w ? p.w + set.row_bytes : nullptr;
    if (p.w) stage_pair<kStagePairWords>(p.w, b, set.row_bytes, stage[warp][0], stage[warp][1]);
    pdl_wait(); /* x and the outputs: the kernel before (cuda_pdl.cuh) */
    pdl_launch_dependents();
    const float *xa = block_activations<NORM>(x, nw, eps, cols, n, xs);
    if (!p.w) return;
    float at[NMAX], bt[NMAX];
    staged_row<T, NMAX>(stage[warp][0], cols, xa, n, at);
    staged_row<T, NMAX>(stage[warp][1], cols, xa, n, bt);
    qkv_rope_finish<NMAX>(set, p, n, rp, at, bt);
}

/* Whether type T's rows of a weight are staged (W words a lane): whole words from a word boundary,
 * the row within the buffer (a longer one keeps the default form, whose warps split it), and with
 * xs_bytes of normalised activations the block's shared memory within what a launch gets without
 * asking (SVLM_CU_NORM_SMEM: 48 KiB less the kernels' own arrays; the stage buffers are 10 KiB a
 * block). The weights must be written by no kernel of the stream (uploads are copies): a staged
 * row is read before pdl_wait. */
constexpr size_t kStageBlockBytes = sizeof(uint32_t) * kWarpsPerBlock * 32 * kStageWords;
static_assert(kStageWords == 2 * kStagePairWords, "a pair's two buffers take one row's room");
template <int W> bool stage_fits(const void *w, size_t row_bytes, size_t xs_bytes) {
    return row_bytes % 4 == 0 && reinterpret_cast<uintptr_t>(w) % 4 == 0 && row_bytes <= 128 * (size_t)W &&
           xs_bytes + kStageBlockBytes <= SVLM_CU_NORM_SMEM;
}

#endif
