/*
 * The staged form of the few-row decode products (SVLM_CUDA_MATVEC_STAGED=1; included by
 * cuda_quant.cuh, inside its namespace). One warp a weight row: before the kernel waits for the
 * one ahead of it (pdl_wait), the warp copies its row's bytes into shared memory as 4-byte words,
 * every word of the row in one round of loads. The weights depend on no kernel, so with PDL the
 * copy overlaps the kernel before, and a step's critical path keeps only the activations' reads.
 * The default form reads a row one byte a lane (Q8_0: 32 bytes a warp load), its share in four
 * rounds of dependent loads after the wait; the H100's profile had every decode product short of 6
 * % of its memory bandwidth, waiting on those rounds.
 *
 * The products are then those of row_dots with one part (SVLM_CUDA_MATVEC_SPLIT=1), summed in
 * the same order from the staged bytes: the element decoders take the row's address, in shared
 * memory as in global. A row longer than the buffer goes in chunks of whole units (a 32-element
 * sub-block, or a K-quant's 256-element super-block), the first before the wait.
 */
#ifndef SVLM_KERNELS_CUDA_QUANT_STAGED_CUH
#define SVLM_KERNELS_CUDA_QUANT_STAGED_CUH

/* words a lane holds of a row's chunk: one row a warp (2 KiB), or each of a pair's two (1 KiB) */
constexpr int kStageWords = 16, kStagePairWords = 8;

/* Chunk c of a row staged with W words a lane (quant_decode.h's geometry). */
template <int T, int W> struct stage_chunk {
    int64_t b0, w0, w1; /* first byte; first word and the word past the last */
    __device__ __forceinline__ stage_chunk(int64_t c, int64_t row_bytes) {
        qd_stage_chunk(T, W, c, row_bytes, &b0, &w0, &w1);
    }
};

/* chunk c of row into r: every load issued before any is used (bounds uniform across the warp) */
template <int T, int W>
__device__ __forceinline__ void stage_load(const uint8_t *row, int64_t row_bytes, int64_t c,
                                           uint32_t (&r)[W]) {
    const stage_chunk<T, W> ch(c, row_bytes);
    const uint32_t *words = reinterpret_cast<const uint32_t *>(row);
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int k = 0; k < W; k++)
        if (ch.w0 + 32 * k < ch.w1) {
            const int64_t i = ch.w0 + 32 * k + lane;
            r[k] = __ldg(words + (i < ch.w1 ? i : ch.w1 - 1));
        }
}

template <int T, int W>
__device__ __forceinline__ void stage_store(int64_t row_bytes, int64_t c, const uint32_t (&r)[W],
                                            uint32_t *buf) {
    const stage_chunk<T, W> ch(c, row_bytes);
    const int lane = threadIdx.x % 32;
#pragma unroll
    for (int k = 0; k < W; k++)
        if (ch.w0 + 32 * k < ch.w1) buf[32 * k + lane] = r[k];
    __syncwarp();
}

/* acc[i] = W row . x row i for i < n (every lane gets the sums), with chunk 0 of the row in buf
 * already (stage_load + stage_store); later chunks are staged here. The order of the sums is
 * row_dots's with one part: a lane's sub-blocks in order, then the warp's lanes. */
template <int T, int NMAX, int W>
__device__ __forceinline__ void staged_dots(const uint8_t *row, int64_t row_bytes, int64_t cols,
                                            const float *x, int n, float *acc, uint32_t *buf) {
    const int kSbs = qd_stage_units(T, W) * qd_unit_sbs(T); /* sub-blocks a chunk */
    const int lane = threadIdx.x % 32;
    const int64_t n_full = cols / 32, n_sb = (cols + 31) / 32;
#pragma unroll
    for (int i = 0; i < NMAX; i++)
        acc[i] = 0.0f;
    for (int64_t c = 0; c * kSbs < n_sb; c++) {
        if (c > 0) {
            uint32_t r[W];
            stage_load<T, W>(row, row_bytes, c, r);
            __syncwarp(); /* every lane is done with the chunk before */
            stage_store<T, W>(row_bytes, c, r, buf);
        }
        const stage_chunk<T, W> ch(c, row_bytes);
        const uint8_t *base = reinterpret_cast<const uint8_t *>(buf) + (ch.b0 - 4 * ch.w0);
        const int64_t s0 = c * kSbs, s1 = s0 + kSbs < n_full ? s0 + kSbs : n_full;
        int64_t s = s0;
        for (; s + 3 < s1; s += 4) {
            float v[4], x0[4];
#pragma unroll
            for (int u = 0; u < 4; u++) {
                v[u] = elem<T>(base, s + u - s0, lane);
                x0[u] = x[(s + u) * 32 + lane]; /* row 0 is always there */
            }
#pragma unroll
            for (int u = 0; u < 4; u++) {
                acc[0] += v[u] * x0[u];
#pragma unroll
                for (int i = 1; i < NMAX; i++)
                    if (i < n) acc[i] += v[u] * x[i * cols + (s + u) * 32 + lane];
            }
        }
        for (; s < s1; s++) {
            const float v = elem<T>(base, s - s0, lane);
#pragma unroll
            for (int i = 0; i < NMAX; i++)
                if (i < n) acc[i] += v * x[i * cols + s * 32 + lane];
        }
        /* a plain type's partial last sub-block, when this chunk holds it */
        if (n_full < n_sb && n_full >= s0 && n_full < s0 + kSbs && n_full * 32 + lane < cols) {
            const float v = elem<T>(base, n_full - s0, lane);
#pragma unroll
            for (int i = 0; i < NMAX; i++)
                if (i < n) acc[i] += v * x[i * cols + n_full * 32 + lane];
        }
    }
#pragma unroll
    for (int i = 0; i < NMAX; i++) {
        if (i >= n) break;
        for (int o = 16; o > 0; o >>= 1)
            acc[i] += __shfl_xor_sync(0xffffffffu, acc[i], o);
    }
}

/* matvec_kernel's staged form: row blockIdx.x * kWarpsPerBlock + warp. */
template <int T, bool ACC, int NMAX>
__global__ void matvec_staged_kernel(const uint8_t *w, size_t row_bytes, int64_t rows, int64_t cols,
                                     const float *x, int n, float *y) {
    __shared__ uint32_t stage[kWarpsPerBlock][32 * kStageWords];
    const int warp = threadIdx.x / 32;
    const int64_t r = (int64_t)blockIdx.x * kWarpsPerBlock + warp;
    const uint8_t *row = w + (r < rows ? r : 0) * (int64_t)row_bytes;
    if (r < rows) {
        uint32_t v[kStageWords];
        stage_load<T, kStageWords>(row, row_bytes, 0, v);
        stage_store<T, kStageWords>(row_bytes, 0, v, stage[warp]);
    }
    pdl_wait(); /* x and y: the kernel before (cuda_pdl.cuh) */
    pdl_launch_dependents();
    if (r >= rows) return;
    float acc[NMAX];
    staged_dots<T, NMAX, kStageWords>(row, row_bytes, cols, x, n, acc, stage[warp]);
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
    if (row) {
        uint32_t v[kStageWords];
        stage_load<T, kStageWords>(row, set.row_bytes, 0, v);
        stage_store<T, kStageWords>(set.row_bytes, 0, v, stage[warp]);
    }
    pdl_wait(); /* x and the outputs: the kernel before (cuda_pdl.cuh) */
    pdl_launch_dependents();
    const float *xa = block_activations<NORM>(x, nw, eps, cols, n, xs); /* (has barriers: every warp) */
    if (!row) return;
    float acc[NMAX];
    staged_dots<T, NMAX, kStageWords>(row, set.row_bytes, cols, xa, n, acc, stage[warp]);
    if (threadIdx.x % 32) return;
    const int64_t rows = set.rows[wi];
#pragma unroll
    for (int i = 0; i < NMAX; i++)
        if (i < n) set.y[wi][i * rows + r] = acc[i];
}

/* Two rows' chunk 0 (b may be null) into a warp's two buffers, b's loads issued with a's. */
template <int T>
__device__ __forceinline__ void stage_pair(const uint8_t *a, const uint8_t *b, int64_t row_bytes,
                                           uint32_t *buf_a, uint32_t *buf_b) {
    uint32_t va[kStagePairWords], vb[kStagePairWords];
    if (a) stage_load<T, kStagePairWords>(a, row_bytes, 0, va);
    if (b) stage_load<T, kStagePairWords>(b, row_bytes, 0, vb);
    if (a) stage_store<T, kStagePairWords>(row_bytes, 0, va, buf_a);
    if (b) stage_store<T, kStagePairWords>(row_bytes, 0, vb, buf_b);
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
    if (r < rows) stage_pair<T>(wg + ro, wu + ro, row_bytes, stage[warp][0], stage[warp][1]);
    pdl_wait(); /* x and gate: the kernel before (cuda_pdl.cuh) */
    pdl_launch_dependents();
    const float *xa = block_activations<NORM>(x, nw, eps, cols, n, xs);
    if (r >= rows) return;
    float gt[NMAX], ut[NMAX];
    staged_dots<T, NMAX, kStagePairWords>(wg + ro, row_bytes, cols, xa, n, gt, stage[warp][0]);
    staged_dots<T, NMAX, kStagePairWords>(wu + ro, row_bytes, cols, xa, n, ut, stage[warp][1]);
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
    if (p.w) stage_pair<T>(p.w, b, set.row_bytes, stage[warp][0], stage[warp][1]);
    pdl_wait(); /* x and the outputs: the kernel before (cuda_pdl.cuh) */
    pdl_launch_dependents();
    const float *xa = block_activations<NORM>(x, nw, eps, cols, n, xs);
    if (!p.w) return;
    float at[NMAX], bt[NMAX];
    staged_dots<T, NMAX, kStagePairWords>(p.w, set.row_bytes, cols, xa, n, at, stage[warp][0]);
    staged_dots<T, NMAX, kStagePairWords>(b, set.row_bytes, cols, xa, n, bt, stage[warp][1]);
    qkv_rope_finish<NMAX>(set, p, n, rp, at, bt);
}

/* Whether a weight's rows can be staged: rows whole words, from a word boundary; and, with
 * xs_bytes of normalised activations, the block's shared memory within the 48 KiB a launch gets
 * without asking (the stage buffers are 8 KiB a block, static). */
constexpr size_t kStageBlockBytes = sizeof(uint32_t) * kWarpsPerBlock * 32 * kStageWords;
static_assert(kStageWords == 2 * kStagePairWords, "a pair's two buffers take one row's room");
inline bool stage_fits(const void *w, size_t row_bytes, size_t xs_bytes) {
    return row_bytes % 4 == 0 && reinterpret_cast<uintptr_t>(w) % 4 == 0 &&
           xs_bytes + kStageBlockBytes <= 48 * 1024;
}

#endif
