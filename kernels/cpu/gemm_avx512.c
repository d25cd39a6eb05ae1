/*
 * f32 GEMM with AVX-512: C[M][N] = A[M][K] * op(B), op(B) = B^T (nt, B is [N][K]) or B (nn,
 * B is [K][N]). Blocked in the usual way: a K slice of A is packed into MR-row interleaved
 * panels, a block of B into NR-column strips, and a 12x32 register-tile micro-kernel
 * (24 accumulators) runs over them, so the inner loop is loads, broadcasts and FMAs only.
 */
#ifdef SVLM_X86
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/cpu_kernels.h"

#define MR 12
#define NR 32
#define KC 256
#define NC 256

/* C[0..mr)[0..nr) (+)= Ap (kc x MR) * Bp (kc x NR). */
static void micro_kernel(int64_t kc, const float *Ap, const float *Bp, float *C, int64_t ldc, int accumulate,
                         int64_t mr, int64_t nr) {
    __m512 c[MR][2];
    for (int i = 0; i < MR; i++)
        c[i][0] = c[i][1] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; k++, Ap += MR, Bp += NR) {
        __m512 b0 = _mm512_load_ps(Bp), b1 = _mm512_load_ps(Bp + 16);
        for (int i = 0; i < MR; i++) {
            __m512 a = _mm512_set1_ps(Ap[i]);
            c[i][0] = _mm512_fmadd_ps(a, b0, c[i][0]);
            c[i][1] = _mm512_fmadd_ps(a, b1, c[i][1]);
        }
    }
    __mmask16 m0 = nr >= 16 ? 0xffff : (__mmask16)((1u << nr) - 1);
    __mmask16 m1 = nr >= 32 ? 0xffff : nr <= 16 ? 0 : (__mmask16)((1u << (nr - 16)) - 1);
    for (int i = 0; i < MR; i++) {
        if (i >= mr) break;
        float *row = C + i * ldc;
        if (accumulate) {
            c[i][0] = _mm512_add_ps(c[i][0], _mm512_maskz_loadu_ps(m0, row));
            c[i][1] = _mm512_add_ps(c[i][1], _mm512_maskz_loadu_ps(m1, row + 16));
        }
        _mm512_mask_storeu_ps(row, m0, c[i][0]);
        _mm512_mask_storeu_ps(row + 16, m1, c[i][1]);
    }
}

static inline __mmask16 tail_mask(int64_t n) {
    return n >= 16 ? 0xffff : (__mmask16)((1u << n) - 1);
}

/* r[j] lane i <- r[i] lane j: a 16x16 transpose in registers (pairs, then 128-bit quarters). */
static inline void transpose16(__m512 r[16]) {
    __m512 t[16];
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) { /* r[i + c] quarter q: column 4q + c of rows i..i+3 */
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int c = 0; c < 4; c++) {
        __m512 x0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x88),
               x1 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xDD);
        __m512 y0 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x88),
               y1 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xDD);
        t[c] = _mm512_shuffle_f32x4(x0, y0, 0x88);
        t[8 + c] = _mm512_shuffle_f32x4(x0, y0, 0xDD);
        t[4 + c] = _mm512_shuffle_f32x4(x1, y1, 0x88);
        t[12 + c] = _mm512_shuffle_f32x4(x1, y1, 0xDD);
    }
    for (int i = 0; i < 16; i++)
        r[i] = t[i];
}

/* Columns k0..k0+kc of `rows` rows (ld apart) from src, transposed: column k goes to
 * dst + k * dst_ld as `rows` floats (zeros past rows up to `width`, at most 16). Sixteen by sixteen
 * through registers: the scalar copy was a third of an attention product's time. */
static void pack_transposed(const float *src, int64_t ld, int64_t rows, int64_t k0, int64_t kc, float *dst,
                            int64_t dst_ld, int width) {
    const __mmask16 out = tail_mask(width);
    for (int64_t k = 0; k < kc; k += 16) {
        const int64_t kw = kc - k < 16 ? kc - k : 16;
        const __mmask16 in = tail_mask(kw);
        __m512 r[16];
        for (int64_t i = 0; i < 16; i++)
            r[i] = i < rows ? _mm512_maskz_loadu_ps(in, src + i * ld + k0 + k) : _mm512_setzero_ps();
        transpose16(r);
        for (int64_t kk = 0; kk < kw; kk++)
            _mm512_mask_storeu_ps(dst + (k + kk) * dst_ld, out, r[kk]);
    }
}

/* Ap[block][k][MR] from rows i of A, columns k0..k0+kc; rows past M are zero. */
static void pack_a(const float *A, int64_t lda, int64_t M, int64_t k0, int64_t kc, float *Ap) {
    for (int64_t i0 = 0; i0 < M; i0 += MR, Ap += kc * MR)
        pack_transposed(A + i0 * lda, lda, M - i0 < MR ? M - i0 : MR, k0, kc, Ap, MR, MR);
}

/* Bp[strip][k][NR] for columns j0..j0+nc of op(B), k0..k0+kc; columns past N are zero. */
static void pack_b(int trans, const float *B, int64_t ldb, int64_t N, int64_t j0, int64_t nc, int64_t k0,
                   int64_t kc, float *Bp) {
    for (int64_t s = 0; s < nc; s += NR, Bp += kc * NR) {
        int64_t w = N - (j0 + s) < NR ? N - (j0 + s) : NR;
        if (trans) { /* B is [N][K]: column j of op(B) is row j of B; sixteen columns at a time */
            for (int64_t h = 0; h < NR; h += 16) {
                int64_t rows = w - h < 0 ? 0 : w - h < 16 ? w - h : 16;
                pack_transposed(B + (j0 + s + h) * ldb, ldb, rows, k0, kc, Bp + h, NR, 16);
            }
        } else {
            __mmask16 m0 = w >= 16 ? 0xffff : (__mmask16)((1u << w) - 1);
            __mmask16 m1 = w >= 32 ? 0xffff : w <= 16 ? 0 : (__mmask16)((1u << (w - 16)) - 1);
            for (int64_t k = 0; k < kc; k++) {
                const float *b = B + (k0 + k) * ldb + j0 + s;
                _mm512_store_ps(Bp + k * NR, _mm512_maskz_loadu_ps(m0, b));
                _mm512_store_ps(Bp + k * NR + 16, _mm512_maskz_loadu_ps(m1, b + 16));
            }
        }
    }
}

/* The eight lane sums of v[0..8) in the low eight floats of the result's two halves (quarters 0
 * and 2): pairs of lanes, then quarters, then the two halves of each 256 bits added. */
static inline void sum8(const __m512 v[8], float *out, __mmask16 keep) {
    __m512 t[4], u[2];
    for (int p = 0; p < 4; p++)
        t[p] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * p], v[2 * p + 1]),
                             _mm512_unpackhi_ps(v[2 * p], v[2 * p + 1]));
    for (int q = 0; q < 2; q++) /* quarter L, float e: vector 4q + e's sum over quarter L */
        u[q] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * q], t[2 * q + 1], 0x44),
                             _mm512_shuffle_ps(t[2 * q], t[2 * q + 1], 0xEE));
    __m512 s0 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x44), _mm512_shuffle_f32x4(u[0], u[1], 0xEE));
    __m512 s = _mm512_add_ps(s0, _mm512_shuffle_f32x4(s0, s0, 0xB1));
    /* quarters 0 and 2 hold vectors 0..3 and 4..7: packed into the low eight floats */
    __m512 lo8 = _mm512_shuffle_f32x4(s, s, 0x08);
    _mm512_mask_storeu_ps(out, keep, lo8);
}

/* Up to 16 elements of B at element offset off: f32, or f16 widened (a cache kept in F16 is read
 * as it is, half the bytes, instead of being converted to f32 first). */
static inline __attribute__((always_inline)) __m512 load_b(const int f16, const void *B, int64_t off,
                                                           __mmask16 m) {
    if (f16) return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, (const svlm_f16 *)B + off));
    return _mm512_maskz_loadu_ps(m, (const float *)B + off);
}

/* C (M x N) = A B^T for M <= 3 rows (decode attention's scores: a GQA group's queries against
 * the keys, B f32 or f16): eight keys at a time, each key's row loaded once for every query row,
 * the products summed along K in vectors and their lanes added eight keys together at the end
 * (the one-key-at-a-time form paid a whole lane sum per key and query). */
static inline __attribute__((always_inline)) void small_nt(const int M, const int f16, int64_t N, int64_t K,
                                                           const float *A, int64_t lda, const void *B,
                                                           int64_t ldb, float *C, int64_t ldc) {
    for (int64_t j0 = 0; j0 < N; j0 += 8) {
        const int64_t nj = N - j0 < 8 ? N - j0 : 8;
        __m512 acc[3][8];
        for (int i = 0; i < M; i++)
            for (int jj = 0; jj < 8; jj++)
                acc[i][jj] = _mm512_setzero_ps();
        for (int64_t k = 0; k < K; k += 16) {
            const __mmask16 m = tail_mask(K - k);
            __m512 a[3];
            for (int i = 0; i < M; i++)
                a[i] = _mm512_maskz_loadu_ps(m, A + i * lda + k);
            for (int jj = 0; jj < 8; jj++) {
                if (jj >= nj) break;
                const __m512 b = load_b(f16, B, (j0 + jj) * ldb + k, m);
                for (int i = 0; i < M; i++)
                    acc[i][jj] = _mm512_fmadd_ps(a[i], b, acc[i][jj]);
            }
        }
        for (int i = 0; i < M; i++)
            sum8(acc[i], C + i * ldc + j0, tail_mask(nj));
    }
}

/* C (M x N) = A B for M <= 4 rows (decode attention's weighted sum of values, B f32 or f16): 64
 * columns at a time, each row of B loaded once for every row of A. */
static inline __attribute__((always_inline)) void small_nn(const int M, const int f16, int64_t N, int64_t K,
                                                           const float *A, int64_t lda, const void *B,
                                                           int64_t ldb, float *C, int64_t ldc) {
    for (int64_t j0 = 0; j0 < N; j0 += 64) {
        __mmask16 m[4];
        for (int c = 0; c < 4; c++)
            m[c] = N - j0 - 16 * c <= 0 ? 0 : tail_mask(N - j0 - 16 * c);
        __m512 acc[4][4];
        for (int i = 0; i < M; i++)
            for (int c = 0; c < 4; c++)
                acc[i][c] = _mm512_setzero_ps();
        for (int64_t k = 0; k < K; k++) {
            __m512 bv[4];
            for (int c = 0; c < 4; c++)
                bv[c] = load_b(f16, B, k * ldb + j0 + 16 * c, m[c]);
            for (int i = 0; i < M; i++) {
                const __m512 a = _mm512_set1_ps(A[i * lda + k]);
                for (int c = 0; c < 4; c++)
                    acc[i][c] = _mm512_fmadd_ps(a, bv[c], acc[i][c]);
            }
        }
        for (int i = 0; i < M; i++)
            for (int c = 0; c < 4; c++)
                _mm512_mask_storeu_ps(C + i * ldc + j0 + 16 * c, m[c], acc[i][c]);
    }
}

/* A few rows of A (decode attention): packing would cost more than it saves. */
#include "kernels/cpu/rows_forms.inc"

static void gemm(svlm_cpu *c, int thread, int trans, int64_t M, int64_t N, int64_t K, const float *A,
                 int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc) {
    if (K <= 0) {
        for (int64_t i = 0; i < M; i++)
            memset(C + i * ldc, 0, sizeof(float) * (size_t)N);
        return;
    }
    if (M <= 4) {
        small_m(0, trans, M, N, K, A, lda, B, ldb, C, ldc);
        return;
    }
    int64_t m_pad = (M + MR - 1) / MR * MR;
    size_t a_floats = (size_t)(m_pad * KC), b_floats = (size_t)(NC * KC);
    float *Ap = svlm_cpu_scratch(c, thread, SVLM_SCRATCH_GEMM, sizeof(float) * (a_floats + b_floats));
    float *Bp = Ap + a_floats;
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
        int64_t kc = K - k0 < KC ? K - k0 : KC;
        pack_a(A, lda, M, k0, kc, Ap);
        for (int64_t j0 = 0; j0 < N; j0 += NC) {
            int64_t nc = N - j0 < NC ? N - j0 : NC;
            pack_b(trans, B, ldb, N, j0, nc, k0, kc, Bp);
            for (int64_t s = 0; s < nc; s += NR) {
                int64_t nr = nc - s < NR ? nc - s : NR;
                const float *bp = Bp + (s / NR) * kc * NR;
                for (int64_t i0 = 0; i0 < M; i0 += MR) {
                    int64_t mr = M - i0 < MR ? M - i0 : MR;
                    micro_kernel(kc, Ap + (i0 / MR) * kc * MR, bp, C + i0 * ldc + j0 + s, ldc, k0 > 0, mr,
                                 nr);
                }
            }
        }
    }
}

static void gemm_nt_avx512(svlm_cpu *c, int thread, int64_t M, int64_t N, int64_t K, const float *A,
                           int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc) {
    gemm(c, thread, 1, M, N, K, A, lda, B, ldb, C, ldc);
}

static void gemm_nn_avx512(svlm_cpu *c, int thread, int64_t M, int64_t N, int64_t K, const float *A,
                           int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc) {
    gemm(c, thread, 0, M, N, K, A, lda, B, ldb, C, ldc);
}

void svlm_cpu_gemm_rows_init_avx512(svlm_cpu_matmul_ops *ops) {
    rows_init(ops);
}

void svlm_cpu_rows_f16_init_avx512(svlm_cpu_matmul_ops *ops) {
    ops->rows_f16 = rows_f16;
}

void svlm_cpu_gemm_init_avx512(svlm_cpu_matmul_ops *ops) {
    ops->gemm_nt = gemm_nt_avx512;
    ops->gemm_nn = gemm_nn_avx512;
}
#endif
