/*
 * Batched matmuls of F16 weights with AVX-512: the weight stays f16 in its packed copy and is
 * widened to f32 inside the micro-kernel (vcvtph2ps), so products are those of the f32 GEMM
 * (exact f16 weights, f32 activations and sums) without converting the whole weight on every
 * call: a 16-token prefill through the 256M shape's F16 text model spent more time converting
 * weights than multiplying them.
 *
 * Layout: the weight packed once (kernels/cpu/packed_weights.c) in strips of NR rows, k-major
 * ([strip][k][NR] halves, one 64-byte line per k); activations stay f32 rows, padded to MR. Each
 * task takes a panel of weight rows and runs a MR x NR register tile over K in slices of KC:
 * per k, one line of halves widened to two vectors, MR broadcasts, 2*MR FMAs.
 */
#ifdef SVLM_X86
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/cpu_kernels.h"

#define MR    12  /* tokens per tile (broadcast) */
#define NR    32  /* weight rows per tile (two vectors) */
#define PANEL 96  /* weight rows per task: three strips */
#define KC    256 /* k per slice: a slice of the panel's strips (48 KB) and of a tile (12 KB) stay close */

typedef struct f16_job {
    svlm_cpu *c;
    const svlm_weight *w;
    const float *a; /* [n_pad][K] activations (n_pad a multiple of 4), rows past n zero */
    int64_t n, n_pad;
    float *y;
    uint16_t *packed; /* the whole weight packed ([strips][K][NR]), or NULL: each task packs its panel */
} f16_job;

/* y[i][0..nr) (+)= sum_k a[i][k] * b[k][0..nr) for the m (<= MR) token rows a (stride lda), k < kc.
 * m is a constant in each caller below, so the accumulators stay in registers. */
static inline __attribute__((always_inline)) void tile(const int m, int64_t kc, const float *a, int64_t lda,
                                                       const uint16_t *b, float *y, int64_t ldy, int64_t mr,
                                                       int64_t nr, int accumulate) {
    __m512 c[MR][2];
    for (int i = 0; i < m; i++)
        c[i][0] = c[i][1] = _mm512_setzero_ps();
    for (int64_t k = 0; k < kc; k++, b += NR) {
        __m512 b0 = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)b));
        __m512 b1 = _mm512_cvtph_ps(_mm256_load_si256((const __m256i *)(b + 16)));
        for (int i = 0; i < m; i++) {
            __m512 ai = _mm512_set1_ps(a[i * lda + k]);
            c[i][0] = _mm512_fmadd_ps(ai, b0, c[i][0]);
            c[i][1] = _mm512_fmadd_ps(ai, b1, c[i][1]);
        }
    }
    __mmask16 m0 = nr >= 16 ? 0xffff : (__mmask16)((1u << nr) - 1);
    __mmask16 m1 = nr >= 32 ? 0xffff : nr <= 16 ? 0 : (__mmask16)((1u << (nr - 16)) - 1);
    for (int i = 0; i < m && i < mr; i++) {
        float *row = y + i * ldy;
        if (accumulate) {
            c[i][0] = _mm512_add_ps(c[i][0], _mm512_maskz_loadu_ps(m0, row));
            c[i][1] = _mm512_add_ps(c[i][1], _mm512_maskz_loadu_ps(m1, row + 16));
        }
        _mm512_mask_storeu_ps(row, m0, c[i][0]);
        _mm512_mask_storeu_ps(row + 16, m1, c[i][1]);
    }
}

/* The last tile of a product takes the smallest of these that covers its rows: 16 tokens run as
 * 12 + 4 rather than 12 + 12. */
static void tile12(int64_t kc, const float *a, int64_t lda, const uint16_t *b, float *y, int64_t ldy,
                   int64_t mr, int64_t nr, int acc) {
    tile(12, kc, a, lda, b, y, ldy, mr, nr, acc);
}
static void tile8(int64_t kc, const float *a, int64_t lda, const uint16_t *b, float *y, int64_t ldy,
                  int64_t mr, int64_t nr, int acc) {
    tile(8, kc, a, lda, b, y, ldy, mr, nr, acc);
}
static void tile4(int64_t kc, const float *a, int64_t lda, const uint16_t *b, float *y, int64_t ldy,
                  int64_t mr, int64_t nr, int acc) {
    tile(4, kc, a, lda, b, y, ldy, mr, nr, acc);
}

/* Weight rows r0..r0+nr into strips [s][K][NR] (rows past nr zero). */
static void pack_panel(const svlm_weight *w, int64_t r0, int64_t nr, uint16_t *bp) {
    const int64_t K = w->cols, strips = (nr + NR - 1) / NR;
    if (nr < strips * NR) memset(bp, 0, sizeof(uint16_t) * (size_t)(strips * NR * K));
    for (int64_t r = 0; r < nr; r++) {
        const uint16_t *src = (const uint16_t *)((const char *)w->data + (size_t)(r0 + r) * w->row_bytes);
        uint16_t *dst = bp + (r / NR) * K * NR + r % NR;
        for (int64_t k = 0; k < K; k++)
            dst[k * NR] = src[k];
    }
}

static void pack_task(void *ctx, int task, int thread) {
    (void)thread;
    const f16_job *j = ctx;
    int64_t r0 = (int64_t)task * PANEL, nr = j->w->rows - r0 < PANEL ? j->w->rows - r0 : PANEL;
    pack_panel(j->w, r0, nr, j->packed + r0 * j->w->cols);
}

static void panel_task(void *ctx, int task, int thread) {
    const f16_job *j = ctx;
    const svlm_weight *w = j->w;
    const int64_t K = w->cols;
    int64_t r0 = (int64_t)task * PANEL, nr = w->rows - r0 < PANEL ? w->rows - r0 : PANEL;
    int64_t strips = (nr + NR - 1) / NR;
    const uint16_t *bp;
    if (j->packed) {
        bp = j->packed + r0 * K; /* (r0 is whole strips: r0 * K == (r0 / NR) * K * NR) */
    } else {
        uint16_t *own =
            svlm_cpu_scratch(j->c, thread, SVLM_SCRATCH_OP, sizeof(uint16_t) * (size_t)(strips * NR * K));
        pack_panel(w, r0, nr, own);
        bp = own;
    }
    for (int64_t k0 = 0; k0 < K; k0 += KC) {
        const int64_t kc = K - k0 < KC ? K - k0 : KC;
        for (int64_t i0 = 0; i0 < j->n; i0 += MR) {
            const int64_t mr = j->n - i0 < MR ? j->n - i0 : MR;
            for (int64_t s = 0; s < strips; s++) {
                const int64_t cols = nr - s * NR < NR ? nr - s * NR : NR;
                void (*run)(int64_t, const float *, int64_t, const uint16_t *, float *, int64_t, int64_t,
                            int64_t, int) = mr > 8   ? tile12
                                            : mr > 4 ? tile8
                                                     : tile4;
                run(kc, j->a + i0 * K + k0, K, bp + (s * K + k0) * NR, j->y + i0 * w->rows + r0 + s * NR,
                    w->rows, mr, cols, k0 > 0);
            }
        }
    }
}

static int matmul_f16(svlm_cpu *c, const svlm_weight *w, const float *x, int64_t n, float *y,
                      int packed_only) {
    const int64_t K = w->cols, n_pad = (n + 3) / 4 * 4; /* what the last tile reads */
    const int panels = (int)((w->rows + PANEL - 1) / PANEL);
    f16_job j = {c, w, x, n, n_pad, y, NULL};
    int fill = 0;
    const int64_t strips = (w->rows + NR - 1) / NR;
    j.packed = (uint16_t *)svlm_cpu_packed(w, SVLM_PACK_F16_STRIPS,
                                           sizeof(uint16_t) * (size_t)(strips * NR * K), &fill);
    if (!j.packed && packed_only) return 0;
    if (n_pad > n) { /* a copy with zero rows after n */
        float *a = svlm_cpu_act_buffer(c, sizeof(float) * (size_t)(n_pad * K));
        memcpy(a, x, sizeof(float) * (size_t)(n * K));
        memset(a + n * K, 0, sizeof(float) * (size_t)((n_pad - n) * K));
        j.a = a;
    }
    if (fill) {
        svlm_pool_run(c->pool, pack_task, &j, panels);
        svlm_cpu_packed_ready((const uint32_t *)j.packed);
    }
    svlm_pool_run(c->pool, panel_task, &j, panels);
    return 1;
}

void svlm_cpu_gemm_f16_init_avx512(svlm_cpu_matmul_ops *ops) {
    ops->matmul_f16 = matmul_f16;
}
#endif
