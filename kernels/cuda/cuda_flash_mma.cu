/*
 * Attention with many queries, flash style, on the tensor cores' register-level instruction
 * (mma.sync m16n8k16, f16 operands, f32 sums): the second form of cuda_flash_attention.cu's
 * kernel, with the same inputs, outputs and rounding. There the scores go through shared memory
 * between the two products (WMMA leaves its fragments' layout unspecified); here the layout is
 * the PTX ISA's, so the scores stay in registers: the S accumulators of one product are the P
 * operands of the next, and the online softmax runs on them in place.
 *
 * One block = one head x 64 queries (4 warps x 16 rows); it walks the kv rows in tiles of 64.
 * Shared memory holds the K and V tiles as rows ([64][D + 8] halves); the B operands come out of
 * them through ldmatrix, V's transposed on the way (.trans), four 8 x 8 matrices an instruction.
 * The pad puts the 8 rows of a matrix in different banks. A tile's global loads are all issued
 * before any of its shared stores (a few at a time in flight per thread, not one after another),
 * and a tile that every row of a lane sees whole skips the per-column mask.
 *
 * Fragments (PTX ISA, "Matrix Fragments for mma.m16n8k16"), lane = 4 g + t:
 *   A (16 x 16, row major), 4 registers of 2 halves: {row g, cols 2t, 2t+1}, {row g + 8, same},
 *     {row g, cols 8 + 2t, 9 + 2t}, {row g + 8, same};
 *   B (16 x 8, "col"), 2 registers: {rows 2t, 2t+1 of col g}, {rows 8 + 2t, 9 + 2t of col g};
 *   C (16 x 8 f32), 4 floats: row g cols 2t, 2t+1, then row g + 8 cols 2t, 2t+1.
 * The lower column of a pair sits in the lower 16 bits.
 *
 * Numerics as the WMMA kernel: Q, K, V and P rounded to f16, the scores scaled by scale log2(e)
 * in f32, exp2, and l sums the probabilities as rounded (the weights P V uses).
 */
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>

#include "kernels/cuda/cuda_flash_common.cuh"
#include "kernels/cuda/cuda_ops.h"

namespace {

using svlm_flash::args;
using svlm_flash::kBQ;
using svlm_flash::kMaxDim;
using svlm_flash::load4;
using svlm_flash::to_f32;

constexpr int kWarps = 4, kThreads = 32 * kWarps;
constexpr int kBK = 64; /* kv rows per tile */
static_assert(kBQ == 16 * kWarps, "a block's queries are its warps' 16 rows each");

template <int D> struct Shape {
    static constexpr int kLdK = D + 8; /* halves per row of the K, V (and Q) tiles */
    static constexpr int kKHalves = kBK * kLdK;
    static constexpr size_t kBytes = sizeof(__half) * (size_t)(2 * kKHalves);
    static_assert(D % 16 == 0 && D <= kMaxDim, "D: a multiple of 16 up to 128");
    static_assert(kBytes <= 48 * 1024, "static shared-memory limit");
};

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
    const __half2 h = __floats2half2_rn(lo, hi);
    return *reinterpret_cast<const uint32_t *>(&h);
}

__device__ __forceinline__ uint32_t ld32(const __half *p) {
    return *reinterpret_cast<const uint32_t *>(p);
}

/* c += a b (16 x 8 x 16) */
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
                 "{%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

/* Columns c .. c + 3 of row `row` (zeros past n_rows or width) as floats. vec: 4-element loads. */
template <typename T>
__device__ __forceinline__ void fetch4(const T *src, int64_t stride, int64_t row, int64_t n_rows, int c,
                                       int width, bool vec, float *x) {
    x[0] = x[1] = x[2] = x[3] = 0.0f;
    if (row >= n_rows) return;
    const T *p = src + row * stride + c;
    if (vec) {
        if (c < width) load4(p, x); /* width % 4 == 0: a group is all in or all out */
        return;
    }
#pragma unroll
    for (int e = 0; e < 4; e++)
        if (c + e < width) x[e] = to_f32(p[e]);
}

/* ldmatrix: four 8 x 8 matrices of halves, row addresses from lanes 8i .. 8i + 7 for matrix i;
 * .trans hands each lane the transposed pairs (PTX ISA, "ldmatrix") */
__device__ __forceinline__ void ldsm4(uint32_t (&r)[4], const __half *p) {
    const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}
__device__ __forceinline__ void ldsm2(uint32_t (&r)[2], const __half *p) {
    const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1])
                 : "r"(a));
}
__device__ __forceinline__ void ldsm4_t(uint32_t (&r)[4], const __half *p) {
    const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(p));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

/* Rows r0 .. r0 + 63 of one or two matrices (row r at src + r stride, width columns) as f16 rows
 * of dst (ld D + 8), zeros past the end. All threads take part: a thread's groups of 4 columns
 * are loaded kLoads at a time (both matrices'), then stored, so their loads wait together. */
template <int D, int N, typename T>
__device__ __forceinline__ void load_tiles(__half *const (&dst)[N], const T *const (&src)[N], int64_t stride,
                                           int64_t r0, int64_t n_rows, int width, bool vec) {
    constexpr int G = D / 4, kGroups = kBK * G / kThreads; /* per thread and matrix: D / 8 */
    static_assert(kBK * G % kThreads == 0, "whole groups per thread");
    constexpr int kLoads = kGroups % 4 == 0 ? 4 : kGroups % 3 == 0 ? 3 : kGroups % 2 == 0 ? 2 : 1;
    static_assert(kGroups % kLoads == 0, "whole batches of loads");
    /* the common case, every row there and every column used: loads without branches */
    const bool plain = vec && width == D && r0 + kBK <= n_rows;
#pragma unroll
    for (int b = 0; b < kGroups; b += kLoads) {
        float x[N][kLoads][4];
#pragma unroll
        for (int i = 0; i < kLoads; i++) {
            const int idx = threadIdx.x + (b + i) * kThreads, r = idx / G, c = idx % G * 4;
#pragma unroll
            for (int m = 0; m < N; m++) {
                if (plain)
                    load4(src[m] + (r0 + r) * stride + c, x[m][i]);
                else
                    fetch4(src[m], stride, r0 + r, n_rows, c, width, vec, x[m][i]);
            }
        }
#pragma unroll
        for (int i = 0; i < kLoads; i++) {
            const int idx = threadIdx.x + (b + i) * kThreads, r = idx / G, c = idx % G * 4;
#pragma unroll
            for (int m = 0; m < N; m++) {
                uint2 u;
                u.x = pack_half2(x[m][i][0], x[m][i][1]);
                u.y = pack_half2(x[m][i][2], x[m][i][3]);
                *reinterpret_cast<uint2 *>(dst[m] + r * Shape<D>::kLdK + c) = u;
            }
        }
    }
}

/* Block (query tile blockIdx.x, head blockIdx.y, item blockIdx.z when items is not NULL). Head
 * dims 65 to 80 (SmolVLM2-2.2B's vision heads of 72) at three blocks an SM, as before the ldmatrix
 * form (left alone, ptxas took 250 registers there: two blocks; capped, 168 and 8 bytes spilled);
 * the others as ptxas chooses (166 registers for heads of 64, as measured). */
template <int D, typename T>
__global__ void __launch_bounds__(kThreads, D == 80 ? 3 : 0)
    mma_kernel(const float *q, const T *k, const T *v, int64_t kv_stride, float *out, int64_t n_q,
               int64_t n_kv, int n_head, int rep, int hd, int causal, float scale_log2, bool vec_q,
               bool vec_kv, const svlm_cu_flash_item *items) {
    if (!svlm_flash::take_item(items, q, k, v, out, n_q, n_kv)) return;
    using S = Shape<D>;
    constexpr int KC = D / 16;  /* 16-wide chunks of the head dim: S's reduction */
    constexpr int ND = D / 8;   /* 8-wide tiles of the head dim: O's columns */
    constexpr int NS = kBK / 8; /* 8-wide tiles of kv rows: S's columns */
    __shared__ __align__(16) __half sk[S::kKHalves];
    __shared__ __align__(16) __half sv[S::kKHalves];

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane >> 2, t = lane & 3;
    const int h = blockIdx.y, kvh = h / rep;
    const int64_t ldq = (int64_t)n_head * hd, off = n_kv - n_q; /* causal: i sees j <= off + i */
    const int64_t q0 = (int64_t)blockIdx.x * kBQ, wq0 = q0 + warp * 16;

    /* the warp's 16 query rows as A operands, staged through the K buffer */
    {
        __half *const dq[1] = {sk};
        const float *const srcq[1] = {q + (int64_t)h * hd};
        load_tiles<D>(dq, srcq, ldq, q0, n_q, hd, vec_q);
    }
    __syncthreads();
    uint32_t qa[KC][4];
    {
        const __half *r0 = sk + (warp * 16 + g) * S::kLdK + 2 * t, *r8 = r0 + 8 * S::kLdK;
#pragma unroll
        for (int kc = 0; kc < KC; kc++) {
            qa[kc][0] = ld32(r0 + kc * 16);
            qa[kc][1] = ld32(r8 + kc * 16);
            qa[kc][2] = ld32(r0 + kc * 16 + 8);
            qa[kc][3] = ld32(r8 + kc * 16 + 8);
        }
    }
    __syncthreads(); /* the Q tile is read before K overwrites it */

    float o[ND][4];
#pragma unroll
    for (int n = 0; n < ND; n++)
        o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;

    /* this lane's two rows: g and g + 8 of the warp's 16 */
    int64_t vis[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int64_t qi = wq0 + g + 8 * i;
        vis[i] = svlm_flash::visible_end(causal, off, qi, n_kv); /* kv rows < vis[i] */
    }
    const int64_t q_last = (q0 + kBQ < n_q ? q0 + kBQ : n_q) - 1;
    const int64_t wq_last = (wq0 + 16 < n_q ? wq0 + 16 : n_q) - 1;
    const int64_t kv_end = svlm_flash::visible_end(causal, off, q_last, n_kv);    /* block */
    const int64_t warp_end = svlm_flash::visible_end(causal, off, wq_last, n_kv); /* warp */
    const bool warp_rows = wq0 < n_q;
    float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}; /* units of log2 */

    /* the rows of the lane's two that see the fewest kv rows: tiles that end before them need no mask */
    const int64_t vis_lane = vis[0] < vis[1] ? vis[0] : vis[1];
    __half *const dkv[2] = {sk, sv};
    const T *const srckv[2] = {k + (int64_t)kvh * hd, v + (int64_t)kvh * hd};
    /* this lane's ldmatrix row: row lane % 8 of matrix lane / 8 */
    const int lr = lane & 7, lm = lane >> 3;
    for (int64_t kv0 = 0; kv0 < kv_end; kv0 += kBK) {
        load_tiles<D>(dkv, srckv, kv_stride, kv0, n_kv, hd, vec_kv);
        __syncthreads();
        if (warp_rows && kv0 < warp_end) { /* else the tile is masked for all the warp's rows */
            /* S = Q K^T: B[k][n] = K[kv0 + 8 j + n][k]; matrices (rows 8 j .., columns 16 kc + 8 i)
             * for i = 0 .. 3 give b0, b1 of chunks kc and kc + 1 */
            float s[NS][4];
#pragma unroll
            for (int j = 0; j < NS; j++) {
                s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
                const __half *kr = sk + (j * 8 + lr) * S::kLdK + lm * 8;
#pragma unroll
                for (int kc = 0; kc + 1 < KC; kc += 2) {
                    uint32_t b[4];
                    ldsm4(b, kr + kc * 16);
                    mma16816(s[j], qa[kc], b[0], b[1]);
                    mma16816(s[j], qa[kc + 1], b[2], b[3]);
                }
                if (KC & 1) { /* the last chunk alone: lanes 0 .. 15 give its two matrices */
                    uint32_t b[2];
                    ldsm2(b, sk + (j * 8 + lr) * S::kLdK + (KC - 1) * 16 + (lm & 1) * 8);
                    mma16816(s[j], qa[KC - 1], b[0], b[1]);
                }
            }
            /* online softmax of rows g (i = 0: s[j][0..1]) and g + 8 (i = 1: s[j][2..3]); the
             * four lanes of a group hold a row's 64 columns between them */
            const bool whole = kv0 + kBK <= vis_lane; /* both rows see every column */
            float alpha[2];
#pragma unroll
            for (int i = 0; i < 2; i++) {
                float mx = -INFINITY;
                if (whole) {
#pragma unroll
                    for (int j = 0; j < NS; j++) {
#pragma unroll
                        for (int e = 0; e < 2; e++) {
                            const float x = s[j][2 * i + e] * scale_log2;
                            s[j][2 * i + e] = x;
                            mx = fmaxf(mx, x);
                        }
                    }
                } else {
                    const int64_t lim64 = vis[i] - kv0;
                    const int lim = lim64 < 0 ? 0 : lim64 > kBK ? kBK : (int)lim64;
#pragma unroll
                    for (int j = 0; j < NS; j++) {
#pragma unroll
                        for (int e = 0; e < 2; e++) {
                            const int col = j * 8 + 2 * t + e;
                            const float x = col < lim ? s[j][2 * i + e] * scale_log2 : -INFINITY;
                            s[j][2 * i + e] = x;
                            mx = fmaxf(mx, x);
                        }
                    }
                }
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float m_new = fmaxf(m[i], mx);
                const float m_use = m_new == -INFINITY ? 0.0f : m_new; /* nothing seen yet: p = 0 */
                alpha[i] = exp2f(m[i] - m_use);
                float sum = 0.0f;
#pragma unroll
                for (int j = 0; j < NS; j++) {
                    /* P rounded to f16 here; l sums the rounded weights */
                    const __half2 p2 =
                        __floats2half2_rn(exp2f(s[j][2 * i] - m_use), exp2f(s[j][2 * i + 1] - m_use));
                    const float2 back = __half22float2(p2);
                    s[j][2 * i] = back.x;
                    s[j][2 * i + 1] = back.y;
                    sum += back.x + back.y;
                }
                sum += __shfl_xor_sync(0xffffffffu, sum, 1);
                sum += __shfl_xor_sync(0xffffffffu, sum, 2);
                l[i] = l[i] * alpha[i] + sum;
                m[i] = m_new;
            }
#pragma unroll
            for (int n = 0; n < ND; n++) {
                o[n][0] *= alpha[0];
                o[n][1] *= alpha[0];
                o[n][2] *= alpha[1];
                o[n][3] *= alpha[1];
            }
            /* O += P V: P's 16-column chunk c is S tiles 2c and 2c + 1 as an A operand;
             * B[k][n] = V[kv0 + 16 c + k][8 d + n]: matrices (rows 16 c + 8 (i & 1) .., columns
             * 8 d + 8 (i >> 1)) transposed give b0, b1 of tiles d and d + 1 */
#pragma unroll
            for (int c = 0; c < kBK / 16; c++) {
                const uint32_t pa[4] = {pack_half2(s[2 * c][0], s[2 * c][1]),
                                        pack_half2(s[2 * c][2], s[2 * c][3]),
                                        pack_half2(s[2 * c + 1][0], s[2 * c + 1][1]),
                                        pack_half2(s[2 * c + 1][2], s[2 * c + 1][3])};
                const __half *vr = sv + (c * 16 + (lm & 1) * 8 + lr) * S::kLdK + (lm >> 1) * 8;
#pragma unroll
                for (int n = 0; n < ND; n += 2) {
                    uint32_t b[4];
                    ldsm4_t(b, vr + n * 8);
                    mma16816(o[n], pa, b[0], b[1]);
                    mma16816(o[n + 1], pa, b[2], b[3]);
                }
            }
        }
        __syncthreads(); /* K and V are read before the next tile overwrites them */
    }

    /* O / l; a row that saw nothing has l = 0 and gets zeros. A lane's two columns are neighbours:
     * one 8-byte store when the rows allow it (even head dim, 8-byte aligned output). */
    float *ob = out + (int64_t)h * hd;
    const bool pairs = !(hd & 1) && !(reinterpret_cast<uintptr_t>(ob) & 7);
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int64_t qi = wq0 + g + 8 * i;
        if (qi >= n_q) continue;
        const float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
        float *orow = ob + qi * ldq;
#pragma unroll
        for (int n = 0; n < ND; n++) {
            const int col = n * 8 + 2 * t;
            if (pairs) {
                if (col < hd)
                    *reinterpret_cast<float2 *>(orow + col) =
                        make_float2(o[n][2 * i] * inv, o[n][2 * i + 1] * inv);
            } else {
#pragma unroll
                for (int e = 0; e < 2; e++)
                    if (col + e < hd) orow[col + e] = o[n][2 * i + e] * inv;
            }
        }
    }
}

template <int D, typename T> struct launcher {
    static int run(cudaStream_t s, const args &a) {
        const dim3 grid((unsigned)((a.n_q + kBQ - 1) / kBQ), (unsigned)a.n_head, (unsigned)a.n_items);
        mma_kernel<D, T><<<grid, kThreads, 0, s>>>(
            a.q, static_cast<const T *>(a.k), static_cast<const T *>(a.v), a.kv_stride, a.out, a.n_q, a.n_kv,
            a.n_head, a.rep, a.hd, a.causal, a.scale_log2, a.vec_q, a.vec_kv, a.items);
        return (int)cudaGetLastError();
    }
};

} // namespace

int svlm_flash::launch_mma(cudaStream_t s, const args &a, int kv_f16) {
    return svlm_flash::launch_dim<launcher>(s, a, kv_f16);
}
