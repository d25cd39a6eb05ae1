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

/* C (M x N) = A B, M <= 4: sixteen columns at a time (4 x 2 accumulators), then eight, then the
 * last N % 8 one by one. */
static inline __attribute__((always_inline)) void small_nn(const int M, const int f16, int64_t N, int64_t K,
                                                           const float *A, int64_t lda, const void *B,
                                                           int64_t ldb, float *C, int64_t ldc) {
    int64_t j0 = 0;
    for (; j0 + 16 <= N; j0 += 16) {
        __m256 acc[4][2];
        for (int i = 0; i < M; i++)
            acc[i][0] = acc[i][1] = _mm256_setzero_ps();
        for (int64_t k = 0; k < K; k++) {
            const __m256 b0 = load8(f16, B, k * ldb + j0), b1 = load8(f16, B, k * ldb + j0 + 8);
            for (int i = 0; i < M; i++) {
                const __m256 a = _mm256_broadcast_ss(A + i * lda + k);
                acc[i][0] = _mm256_fmadd_ps(a, b0, acc[i][0]);
                acc[i][1] = _mm256_fmadd_ps(a, b1, acc[i][1]);
            }
        }
        for (int i = 0; i < M; i++) {
            _mm256_storeu_ps(C + i * ldc + j0, acc[i][0]);
            _mm256_storeu_ps(C + i * ldc + j0 + 8, acc[i][1]);
        }
    }
    for (; j0 + 8 <= N; j0 += 8) {
        __m256 acc[4];
        for (int i = 0; i < M; i++)
            acc[i] = _mm256_setzero_ps();
        for (int64_t k = 0; k < K; k++) {
            const __m256 b = load8(f16, B, k * ldb + j0);
            for (int i = 0; i < M; i++)
                acc[i] = _mm256_fmadd_ps(_mm256_broadcast_ss(A + i * lda + k), b, acc[i]);
        }
        for (int i = 0; i < M; i++)
            _mm256_storeu_ps(C + i * ldc + j0, acc[i]);
    }
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
