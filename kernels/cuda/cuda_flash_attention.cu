/*
 * Attention with many queries (the vision encoder, prefill) as one fused kernel on tensor cores,
 * flash-attention style: the scores never leave shared memory. One block = one head x 64 queries
 * (4 warps x 16 rows); it walks the kv rows in tiles of 64: K and V tiles converted to f16 in
 * shared memory, S = Q K^T by WMMA (16x16x16, f16 operands, f32 accumulators), an online softmax
 * per row in f32 (running max m and sum l, the scale applied to S in f32), P rounded to f16, and
 * O = O exp(m_old - m_new) + P V with O kept in accumulator fragments. The end writes O / l.
 *
 * Numerics: Q, K, V and P are rounded to f16 (10-bit mantissa, as the TF32 cuBLAS path keeps),
 * everything else is f32. Inputs must lie in f16's range (|x| < 65504): activations do; a larger
 * one becomes infinite and its row NaN.
 *
 * Head dims up to 128, padded to a multiple of 16 with zeros in shared memory. Shared rows are
 * padded too (+8 halves, +4 floats) so every WMMA pointer stays 32-byte aligned and the leading
 * dimensions are multiples of 16 bytes while neighbouring rows fall in different banks.
 */
#include <atomic>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <mma.h>
#include <stdint.h>

#include "kernels/cuda/cuda_flash_common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace {

using namespace nvcuda;
using svlm_flash::args;
using svlm_flash::kBQ;
using svlm_flash::kMaxDim;
using svlm_flash::load4;
using svlm_flash::to_f32;

constexpr int kWarps = 4, kThreads = 32 * kWarps;
constexpr int kRowsW = 16; /* query rows per warp */
constexpr int kBK = 64;    /* kv rows per tile */
static_assert(kBQ == kWarps * kRowsW, "a block's queries are its warps' rows");
constexpr int kLdP = kBK + 8; /* halves per row of P */
static_assert(kBQ == kBK, "the Q tile is staged in the K buffer");

typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> frag_a;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> frag_bt; /* K^T */
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> frag_b;  /* V */
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> frag_c;

/* Shared memory of the block for padded head dim D, byte offsets. K (the Q tile first) and V:
 * [64][D + 8] halves; per warp F: [16][max(64, D) + 4] floats (S, at the end O) and P:
 * [16][72] halves; per row alpha (then 1 / l). */
template <int D> struct Layout {
    static constexpr int kLdK = D + 8;
    static constexpr int kLdF = (D > kBK ? D : kBK) + 4;
    static constexpr size_t kTile = sizeof(__half) * kBK * kLdK;
    static constexpr size_t kFWarp = sizeof(float) * kRowsW * kLdF;
    static constexpr size_t kPWarp = sizeof(__half) * kRowsW * kLdP;
    static constexpr size_t kK = 0, kV = kTile, kF = 2 * kTile, kP = kF + kWarps * kFWarp;
    static constexpr size_t kAlpha = kP + kWarps * kPWarp;
    static constexpr size_t kBytes = kAlpha + sizeof(float) * kBQ;
    static_assert(D % 16 == 0 && D <= kMaxDim, "D: a multiple of 16 up to 128");
    static_assert(kTile % 128 == 0 && kFWarp % 128 == 0 && kPWarp % 128 == 0, "32-byte aligned regions");
};

/* Scores f (columns c .. c + 3) times scale log2(e); -inf from column lim on (masked). */
__device__ __forceinline__ void masked4(const float4 f, int c, int lim, float scale_log2, float *x) {
    x[0] = c < lim ? f.x * scale_log2 : -INFINITY;
    x[1] = c + 1 < lim ? f.y * scale_log2 : -INFINITY;
    x[2] = c + 2 < lim ? f.z * scale_log2 : -INFINITY;
    x[3] = c + 3 < lim ? f.w * scale_log2 : -INFINITY;
}

/* Rows r0 .. r0 + 63 of a matrix whose row r starts at src + r stride, columns < width, rows <
 * n_rows, into dst as f16 (ld D + 8), zeros elsewhere (padded columns, rows past the end). vec:
 * src, stride and width allow 4-element loads. All threads take part. */
template <int D, typename T>
__device__ void load_tile(__half *dst, const T *src, int64_t stride, int64_t r0, int64_t n_rows, int width,
                          bool vec) {
    constexpr int G = D / 4; /* groups of 4 columns per row */
    for (int idx = threadIdx.x; idx < kBK * G; idx += kThreads) {
        const int r = idx / G, c = idx % G * 4;
        const int64_t row = r0 + r;
        float x[4] = {0.0f, 0.0f, 0.0f, 0.0f};
        if (row < n_rows) {
            const T *p = src + row * stride + c;
            if (vec) {
                if (c < width) load4(p, x); /* width % 4 == 0: a group is all in or all out */
            } else {
#pragma unroll
                for (int e = 0; e < 4; e++)
                    if (c + e < width) x[e] = to_f32(p[e]);
            }
        }
        __half2 *d = reinterpret_cast<__half2 *>(dst + r * Layout<D>::kLdK + c);
        d[0] = __floats2half2_rn(x[0], x[1]);
        d[1] = __floats2half2_rn(x[2], x[3]);
    }
}

/* o's rows times factor[row] (per warp row, shared memory); row_of: each accumulator element's row. */
template <int ND>
__device__ __forceinline__ void scale_rows(frag_c (&o)[ND], const float *factor, const int *row_of) {
    float f[frag_c::num_elements];
#pragma unroll
    for (int i = 0; i < frag_c::num_elements; i++)
        f[i] = factor[row_of[i]];
#pragma unroll
    for (int n = 0; n < ND; n++)
#pragma unroll
        for (int i = 0; i < frag_c::num_elements; i++)
            o[n].x[i] *= f[i];
}

/* Block (query tile blockIdx.x, head blockIdx.y). rep = n_head / n_kv_head; hd the real head dim.
 * items (not NULL): blockIdx.z is a sequence of a launch for many, whose table entry replaces q, k,
 * v, out, n_q and n_kv; tiles past its queries have nothing to do. */
template <int D, typename T>
__global__ void __launch_bounds__(kThreads)
    flash_kernel(const float *q, const T *k, const T *v, int64_t kv_stride, float *out, int64_t n_q,
                 int64_t n_kv, int n_head, int rep, int hd, int causal, float scale_log2, bool vec_q,
                 bool vec_kv, const svlm_cu_flash_item *items) {
    if (!svlm_flash::take_item(items, q, k, v, out, n_q, n_kv)) return;
    using L = Layout<D>;
    constexpr int ND = D / 16, NK = kBK / 16;
    extern __shared__ __align__(128) unsigned char smem[];
    __half *sk = reinterpret_cast<__half *>(smem + L::kK), *sv = reinterpret_cast<__half *>(smem + L::kV);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float *sf = reinterpret_cast<float *>(smem + L::kF + warp * L::kFWarp);
    __half *sp = reinterpret_cast<__half *>(smem + L::kP + warp * L::kPWarp);
    float *salpha = reinterpret_cast<float *>(smem + L::kAlpha) + warp * kRowsW;
    const int h = blockIdx.y, kvh = h / rep;
    const int64_t ldq = (int64_t)n_head * hd, off = n_kv - n_q; /* causal: i sees j <= off + i */
    const int64_t q0 = (int64_t)blockIdx.x * kBQ, wq0 = q0 + warp * kRowsW;

    /* The row of each accumulator element: WMMA leaves the layout unspecified, but it is the
     * same for every accumulator of this type, so a fragment loaded from M[r][c] = r tells it. */
    for (int i = lane; i < 256; i += 32)
        sf[i / 16 * L::kLdF + i % 16] = (float)(i / 16);
    __syncwarp();
    frag_c rows;
    wmma::load_matrix_sync(rows, sf, L::kLdF, wmma::mem_row_major);
    int row_of[frag_c::num_elements];
#pragma unroll
    for (int i = 0; i < frag_c::num_elements; i++)
        row_of[i] = (int)rows.x[i];

    /* the warp's 16 query rows as A fragments, staged through the K buffer */
    load_tile<D>(sk, q + (int64_t)h * hd, ldq, q0, n_q, hd, vec_q);
    __syncthreads();
    frag_a qf[ND];
#pragma unroll
    for (int kk = 0; kk < ND; kk++)
        wmma::load_matrix_sync(qf[kk], sk + warp * kRowsW * L::kLdK + kk * 16, L::kLdK);
    frag_c o[ND];
#pragma unroll
    for (int n = 0; n < ND; n++)
        wmma::fill_fragment(o[n], 0.0f);
    __syncthreads(); /* the Q tile is read before K overwrites it */

    /* softmax lanes: row r of the warp, columns half * 32 .. + 31 (lanes r and r + 16) */
    const int r = lane & 15, half = lane >> 4;
    const int64_t my_q = wq0 + r;
    const int64_t vis_end = svlm_flash::visible_end(causal, off, my_q, n_kv); /* rows < it */
    const int64_t q_last = (q0 + kBQ < n_q ? q0 + kBQ : n_q) - 1;
    const int64_t wq_last = (wq0 + kRowsW < n_q ? wq0 + kRowsW : n_q) - 1;
    const int64_t kv_end = svlm_flash::visible_end(causal, off, q_last, n_kv);    /* block */
    const int64_t warp_end = svlm_flash::visible_end(causal, off, wq_last, n_kv); /* warp */
    const bool warp_rows = wq0 < n_q;
    float m = -INFINITY, l = 0.0f; /* in units of log2: scores times scale log2(e) */

    for (int64_t kv0 = 0; kv0 < kv_end; kv0 += kBK) {
        load_tile<D>(sk, k + (int64_t)kvh * hd, kv_stride, kv0, n_kv, hd, vec_kv);
        load_tile<D>(sv, v + (int64_t)kvh * hd, kv_stride, kv0, n_kv, hd, vec_kv);
        __syncthreads();
        if (warp_rows && kv0 < warp_end) { /* else the tile is masked for all the warp's rows */
            frag_c s[NK];
#pragma unroll
            for (int n = 0; n < NK; n++)
                wmma::fill_fragment(s[n], 0.0f);
#pragma unroll
            for (int kk = 0; kk < ND; kk++) {
#pragma unroll
                for (int n = 0; n < NK; n++) {
                    frag_bt b;
                    wmma::load_matrix_sync(b, sk + n * 16 * L::kLdK + kk * 16, L::kLdK);
                    wmma::mma_sync(s[n], qf[kk], b, s[n]);
                }
            }
#pragma unroll
            for (int n = 0; n < NK; n++)
                wmma::store_matrix_sync(sf + n * 16, s[n], L::kLdF, wmma::mem_row_major);
            __syncwarp();

            /* online softmax of row r: visible columns c < lim. S is read twice (max, then
             * exp) rather than held: 32 fewer registers, so head dim 128 does not spill. */
            const int64_t lim64 = vis_end - kv0;
            const int lim = lim64 < 0 ? 0 : lim64 > kBK ? kBK : (int)lim64;
            const float4 *srow = reinterpret_cast<const float4 *>(sf + r * L::kLdF + half * 32);
            float mx = -INFINITY;
#pragma unroll
            for (int t = 0; t < 8; t++) {
                float x[4];
                masked4(srow[t], half * 32 + 4 * t, lim, scale_log2, x);
                mx = fmaxf(mx, fmaxf(fmaxf(x[0], x[1]), fmaxf(x[2], x[3])));
            }
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 16));
            const float m_new = fmaxf(m, mx);
            const float m_use = m_new == -INFINITY ? 0.0f : m_new; /* nothing seen yet: p = 0 */
            const float alpha = exp2f(m - m_use);
            float sum = 0.0f;
            uint4 *prow = reinterpret_cast<uint4 *>(sp + r * kLdP + half * 32);
#pragma unroll
            for (int t = 0; t < 4; t++) { /* 8 probabilities per 16-byte store */
                float x[8];
                masked4(srow[2 * t], half * 32 + 8 * t, lim, scale_log2, x);
                masked4(srow[2 * t + 1], half * 32 + 8 * t + 4, lim, scale_log2, x + 4);
                uint4 pk;
                uint32_t *w = reinterpret_cast<uint32_t *>(&pk);
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    const __half2 p2 =
                        __floats2half2_rn(exp2f(x[2 * e] - m_use), exp2f(x[2 * e + 1] - m_use));
                    const float2 back = __half22float2(p2); /* l sums the weights P V uses */
                    sum += back.x + back.y;
                    w[e] = *reinterpret_cast<const uint32_t *>(&p2);
                }
                prow[t] = pk;
            }
            sum += __shfl_xor_sync(0xffffffffu, sum, 16); /* both lanes of a row get the same m, l */
            l = l * alpha + sum;
            m = m_new;
            if (half == 0) salpha[r] = alpha;
            __syncwarp();

            scale_rows<ND>(o, salpha, row_of);
#pragma unroll(ND > 4 ? 1 : NK) /* wide heads: a loop, else head dim 128 spills on sm_80 */
            for (int kk = 0; kk < NK; kk++) {
                frag_a pf;
                wmma::load_matrix_sync(pf, sp + kk * 16, kLdP);
#pragma unroll
                for (int n = 0; n < ND; n++) {
                    frag_b b;
                    wmma::load_matrix_sync(b, sv + kk * 16 * L::kLdK + n * 16, L::kLdK);
                    wmma::mma_sync(o[n], pf, b, o[n]);
                }
            }
        }
        __syncthreads(); /* K and V are read before the next tile overwrites them */
    }

    /* O / l through F; a row that saw nothing has l = 0 and gets zeros */
    if (half == 0) salpha[r] = l > 0.0f ? 1.0f / l : 0.0f;
    __syncwarp();
    scale_rows<ND>(o, salpha, row_of);
#pragma unroll
    for (int n = 0; n < ND; n++)
        wmma::store_matrix_sync(sf + n * 16, o[n], L::kLdF, wmma::mem_row_major);
    __syncwarp();
    float *ob = out + (int64_t)h * hd;
    for (int i = lane; i < kRowsW * hd; i += 32) {
        const int rr = i / hd, c = i % hd;
        if (wq0 + rr < n_q) ob[(wq0 + rr) * ldq + c] = sf[rr * L::kLdF + c];
    }
}

/* Kernels with more than 48 KB of shared memory must say so, once per device. */
template <int D, typename T> cudaError_t allow_shared() {
    if (Layout<D>::kBytes <= 48 * 1024) return cudaSuccess;
    static std::atomic<unsigned> done{0}; /* a bit per device */
    int dev = 0;
    cudaError_t e = cudaGetDevice(&dev);
    if (e != cudaSuccess) return e;
    if (dev < 32 && (done.load() >> dev & 1u)) return cudaSuccess;
    e = cudaFuncSetAttribute(flash_kernel<D, T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             (int)Layout<D>::kBytes);
    if (e == cudaSuccess && dev < 32) done.fetch_or(1u << dev);
    return e;
}

template <int D, typename T> struct launcher {
    static int run(cudaStream_t s, const args &a) {
        const cudaError_t e = allow_shared<D, T>();
        if (e != cudaSuccess) return (int)e;
        const dim3 grid((unsigned)((a.n_q + kBQ - 1) / kBQ), (unsigned)a.n_head, (unsigned)a.n_items);
        flash_kernel<D, T><<<grid, kThreads, Layout<D>::kBytes, s>>>(
            a.q, static_cast<const T *>(a.k), static_cast<const T *>(a.v), a.kv_stride, a.out, a.n_q, a.n_kv,
            a.n_head, a.rep, a.hd, a.causal, a.scale_log2, a.vec_q, a.vec_kv, a.items);
        return (int)cudaGetLastError();
    }
};

} // namespace

int svlm_flash::launch_wmma(cudaStream_t s, const args &a, int kv_f16) {
    return svlm_flash::launch_dim<launcher>(s, a, kv_f16);
}
