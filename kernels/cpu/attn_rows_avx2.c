/*
 * Decode attention's few-row products for AVX2 + FMA + F16C: a GQA group's 1-4 query rows (or
 * their probabilities) against the window's keys (scores, C = A B^T) or values (C = A B), B f32
 * or an F16 cache's rows widened as they load. Each key and value row is loaded once for all the
 * rows of A; a general GEMM (OpenBLAS's, at this level) packs the window for a handful of rows.
 * The AVX-512 level has its own forms (gemm_avx512.c).
 */
#ifdef SVLM_X86
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/cpu_kernels.h"

static inline __attribute__((always_inline)) __m256 load8(const int f16, const void *B, int64_t off) {
    if (f16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const svlm_f16 *)B + off)));
    return _mm256_loadu_ps((const float *)B + off);
}

static inline __attribute__((always_inline)) float load1(const int f16, const void *B, int64_t off) {
    return f16 ? svlm_f16_to_f32(((const svlm_f16 *)B)[off]) : ((const float *)B)[off];
}

/* The lane sums of v[0..4) into out[0..4). */
static inline void sum4(const __m256 v[4], float out[4]) {
    const __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(v[0], v[1]), _mm256_hadd_ps(v[2], v[3]));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
}

/* C (M x N) = A B^T, M <= 3: four keys at a time (3 x 4 accumulators, the rows of A and a key fill
 * the sixteen registers), K's last K % 8 elements added one by one. */
static inline __attribute__((always_inline)) void small_nt(const int M, const int f16, int64_t N, int64_t K,
                                                           const float *A, int64_t lda, const void *B,
                                                           int64_t ldb, float *C, int64_t ldc) {
    const int64_t K8 = K & ~(int64_t)7;
    for (int64_t j0 = 0; j0 < N; j0 += 4) {
        const int nj = N - j0 < 4 ? (int)(N - j0) : 4;
        __m256 acc[3][4];
        for (int i = 0; i < M; i++)
            for (int jj = 0; jj < 4; jj++)
                acc[i][jj] = _mm256_setzero_ps();
        for (int64_t k = 0; k < K8; k += 8) {
            __m256 a[3];
            for (int i = 0; i < M; i++)
                a[i] = _mm256_loadu_ps(A + i * lda + k);
            for (int jj = 0; jj < 4; jj++) {
                if (jj >= nj) break;
                const __m256 b = load8(f16, B, (j0 + jj) * ldb + k);
                for (int i = 0; i < M; i++)
                    acc[i][jj] = _mm256_fmadd_ps(a[i], b, acc[i][jj]);
            }
        }
        for (int i = 0; i < M; i++) {
            float s[4];
            sum4(acc[i], s);
            for (int jj = 0; jj < nj; jj++) {
                for (int64_t k = K8; k < K; k++)
                    s[jj] += A[i * lda + k] * load1(f16, B, (j0 + jj) * ldb + k);
                C[i * ldc + j0 + jj] = s[jj];
            }
        }
    }
}

/* Columns j0 .. j0 + 8W of C (M x N) = A B: M x W accumulators, each row of B's W vectors loaded
 * once for the M rows of A. */
static inline __attribute__((always_inline)) void nn_pass(const int M, const int W, const int f16, int64_t j0,
                                                          int64_t K, const float *A, int64_t lda,
                                                          const void *B, int64_t ldb, float *C, int64_t ldc) {
    __m256 acc[4][8];
    for (int i = 0; i < M; i++)
        for (int w = 0; w < W; w++)
            acc[i][w] = _mm256_setzero_ps();
    for (int64_t k = 0; k < K; k++) {
        __m256 b[8];
        for (int w = 0; w < W; w++)
            b[w] = load8(f16, B, k * ldb + j0 + 8 * w);
        for (int i = 0; i < M; i++) {
            const __m256 a = _mm256_broadcast_ss(A + i * lda + k);
            for (int w = 0; w < W; w++)
                acc[i][w] = _mm256_fmadd_ps(a, b[w], acc[i][w]);
        }
    }
    for (int i = 0; i < M; i++)
        for (int w = 0; w < W; w++)
            _mm256_storeu_ps(C + i * ldc + j0 + 8 * w, acc[i][w]);
}

/* C (M x N) = A B, M <= 4: as many columns a pass as the sixteen registers hold beside one vector
 * of A and the loads (64 for one row, 32 for two, 24 for three, 16 for four), so that B, the
 * window's values, is read once for a 64-wide head and one row (four times at 16 columns: 0.38
 * against 0.23 ms at AVX-512 for 4096 cached rows), then sixteen and eight, then the last N % 8
 * one by one. */
static inline __attribute__((always_inline)) void small_nn(const int M, const int f16, int64_t N, int64_t K,
                                                           const float *A, int64_t lda, const void *B,
                                                           int64_t ldb, float *C, int64_t ldc) {
    const int W = M == 1 ? 8 : M == 2 ? 4 : M == 3 ? 3 : 2;
    int64_t j0 = 0;
    for (; j0 + 8 * W <= N; j0 += 8 * W)
        nn_pass(M, W, f16, j0, K, A, lda, B, ldb, C, ldc);
    for (; j0 + 16 <= N; j0 += 16)
        nn_pass(M, 2, f16, j0, K, A, lda, B, ldb, C, ldc);
    for (; j0 + 8 <= N; j0 += 8)
        nn_pass(M, 1, f16, j0, K, A, lda, B, ldb, C, ldc);
    for (; j0 < N; j0++)
        for (int i = 0; i < M; i++) {
            float s = 0.0f;
            for (int64_t k = 0; k < K; k++)
                s += A[i * lda + k] * load1(f16, B, k * ldb + j0);
            C[i * ldc + j0] = s;
        }
}

#include "kernels/cpu/rows_forms.inc"

void svlm_cpu_rows_init_avx2(svlm_cpu_matmul_ops *ops) {
    rows_init(ops);
}
#endif
