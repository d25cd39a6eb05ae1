/*
 * Batched matmuls with bf16 products (AVX-512 BF16): vdpbf16ps does two multiply-adds per f32
 * lane, twice the rate of f32 FMAs. Used for F16, BF16 and quantized weights (F32 weights stay on
 * the f32 GEMM, the reference path). Each operand is rounded to bf16 (8 significant bits,
 * relative error <= 2^-8); products and sums are f32. For quantized weights this is as fine as
 * the 8-bit activations of the decode path.
 *
 * Layout: activations are converted once per matmul to bf16 rows (pairs of adjacent k in one
 * 32-bit word); each task dequantizes a panel of weight rows and packs it k-pair-major in strips
 * of NR rows, and a MR x NR register tile runs over them: per k pair, two strip loads, MR
 * broadcasts, 2*MR vdpbf16ps.
 */
#ifdef SVLM_X86
#include <immintrin.h>
#include <string.h>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/tile_store_avx512.h"

#define MR    12 /* tokens per tile (broadcast) */
#define NR    32 /* weight rows per tile (two vectors) */
#define PANEL 96 /* weight rows per task: three strips, packed ~0.6 MB at most (K 3072), in L2 */

typedef struct bf16_job {
    svlm_cpu *c;
    const svlm_weight *w;
    const float *x;
    int64_t n, n_pad, kp; /* tokens, tokens rounded up to MR, k pairs */
    uint32_t *a;          /* [n_pad][kp] bf16 pairs */
    float *y;
    uint32_t *packed;  /* the whole weight packed ([strips][kp][NR]), or NULL: each task packs its panel */
    const float *bias; /* the epilogue's (svlm_cpu_epilogue) */
    int residual;
} bf16_job;

/* cols floats -> kp bf16 pairs (round to nearest even), the odd tail padded with zero. */
static void to_bf16_pairs(const float *x, int64_t cols, uint32_t *out) {
    int64_t c = 0;
    for (; c + 16 <= cols; c += 16)
        _mm256_storeu_si256((__m256i *)((uint16_t *)out + c),
                            (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + c)));
    if (c < cols) {
        __mmask16 m = (__mmask16)((1u << (cols - c)) - 1);
        __m256i v = (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + c));
        _mm256_mask_storeu_epi16((uint16_t *)out + c, m, v);
    }
    if (cols & 1) ((uint16_t *)out)[cols] = 0;
}

static void convert_rows_task(void *ctx, int task, int thread) {
    (void)thread;
    const bf16_job *j = ctx;
    int64_t r0 = (int64_t)task * MR;
    for (int64_t r = r0; r < r0 + MR; r++) {
        uint32_t *dst = j->a + r * j->kp;
        if (r < j->n)
            to_bf16_pairs(j->x + r * j->w->cols, j->w->cols, dst);
        else
            memset(dst, 0, sizeof(uint32_t) * (size_t)j->kp);
    }
}

/* y[i][0..nr) = sum_p a[i][p] . b[p][0..nr) (+ bias[0..nr), + y[i][0..nr) when residual) for the
 * m (<= MR) token rows a (stride kp). m is a constant in each caller below, so the accumulators
 * stay in registers. */
static inline __attribute__((always_inline)) void tile(const int m, int64_t kp, const uint32_t *a,
                                                       const uint32_t *b, float *y, int64_t ldy, int64_t mr,
                                                       int64_t nr, const float *bias, int residual) {
    __m512 c[MR][2];
    for (int i = 0; i < m; i++)
        c[i][0] = c[i][1] = _mm512_setzero_ps();
    for (int64_t p = 0; p < kp; p++, b += NR) {
        __m512bh b0 = (__m512bh)_mm512_load_si512(b), b1 = (__m512bh)_mm512_load_si512(b + 16);
        for (int i = 0; i < m; i++) {
            __m512bh ai = (__m512bh)_mm512_set1_epi32((int)a[i * kp + p]);
            c[i][0] = _mm512_dpbf16_ps(c[i][0], ai, b0);
            c[i][1] = _mm512_dpbf16_ps(c[i][1], ai, b1);
        }
    }
    tile_store_avx512(m, c, y, ldy, mr, nr, bias, residual);
}

/* The last tile of a product takes the smallest of these that covers its rows: 16 tokens run as
 * 12 + 4 rather than 12 + 12. */
#define TILE_ARGS                                                                                            \
    int64_t kp, const uint32_t *a, const uint32_t *b, float *y, int64_t ldy, int64_t mr, int64_t nr,         \
        const float *bias, int residual
static void tile12(TILE_ARGS) {
    tile(12, kp, a, b, y, ldy, mr, nr, bias, residual);
}
static void tile8(TILE_ARGS) {
    tile(8, kp, a, b, y, ldy, mr, nr, bias, residual);
}
static void tile4(TILE_ARGS) {
    tile(4, kp, a, b, y, ldy, mr, nr, bias, residual);
}

/* Dequantizes weight rows r0..r0+nr into strips [s][kp][NR] of bf16 pairs (rows past nr zero). */
static void pack_panel(const bf16_job *j, int thread, int64_t r0, int64_t nr, uint32_t *bp) {
    const svlm_weight *w = j->w;
    int64_t kp = j->kp, strips = (nr + NR - 1) / NR;
    float *row = svlm_cpu_scratch(j->c, thread, SVLM_SCRATCH_GEMM,
                                  sizeof(float) * (size_t)w->cols + sizeof(uint32_t) * (size_t)(kp + 16));
    uint32_t *pairs = (uint32_t *)(row + w->cols);
    svlm_dequant_fn deq = j->c->mm.dequant[w->type];
    if (nr < strips * NR) memset(bp, 0, sizeof(uint32_t) * (size_t)(strips * NR * kp));
    for (int64_t r = 0; r < nr; r++) {
        const char *src = (const char *)w->data + (size_t)(r0 + r) * w->row_bytes;
        if (w->type == SVLM_BF16) { /* already bf16: copy, pad the odd column */
            memcpy(pairs, src, sizeof(uint16_t) * (size_t)w->cols);
            if (w->cols & 1) ((uint16_t *)pairs)[w->cols] = 0;
        } else {
            deq(w->cols, src, row);
            to_bf16_pairs(row, w->cols, pairs);
        }
        uint32_t *dst = bp + (r / NR) * kp * NR + r % NR;
        for (int64_t p = 0; p < kp; p++)
            dst[p * NR] = pairs[p];
    }
}

/* Packs panel `task` into the whole weight's packed copy (its strips are those of the copy). */
static void pack_task(void *ctx, int task, int thread) {
    const bf16_job *j = ctx;
    int64_t r0 = (int64_t)task * PANEL, nr = j->w->rows - r0 < PANEL ? j->w->rows - r0 : PANEL;
    pack_panel(j, thread, r0, nr, j->packed + (r0 / NR) * j->kp * NR);
}

static void panel_task(void *ctx, int task, int thread) {
    const bf16_job *j = ctx;
    const svlm_weight *w = j->w;
    int64_t r0 = (int64_t)task * PANEL, nr = w->rows - r0 < PANEL ? w->rows - r0 : PANEL;
    int64_t strips = (nr + NR - 1) / NR;
    uint32_t *bp;
    if (j->packed) {
        bp = j->packed + (r0 / NR) * j->kp * NR;
    } else {
        bp =
            svlm_cpu_scratch(j->c, thread, SVLM_SCRATCH_OP, sizeof(uint32_t) * (size_t)(strips * NR * j->kp));
        pack_panel(j, thread, r0, nr, bp);
    }
    for (int64_t i0 = 0; i0 < j->n; i0 += MR) {
        int64_t mr = j->n - i0 < MR ? j->n - i0 : MR;
        for (int64_t s = 0; s < strips; s++) {
            int64_t cols = nr - s * NR < NR ? nr - s * NR : NR;
            void (*run)(TILE_ARGS) = mr > 8 ? tile12 : mr > 4 ? tile8 : tile4;
            run(j->kp, j->a + i0 * j->kp, bp + s * j->kp * NR, j->y + i0 * w->rows + r0 + s * NR, w->rows, mr,
                cols, j->bias ? j->bias + r0 + s * NR : NULL, j->residual);
        }
    }
}

static int matmul_bf16(svlm_cpu *c, const svlm_weight *w, const float *x, int64_t n, float *y,
                       int packed_only, const svlm_cpu_epilogue *ep) {
    int64_t kp = (w->cols + 1) / 2, n_pad = (n + MR - 1) / MR * MR;
    const int panels = (int)((w->rows + PANEL - 1) / PANEL);
    bf16_job j = {c, w, x, n, n_pad, kp, NULL, y, NULL, ep ? ep->bias : NULL, ep ? ep->residual : 0};
    /* the weight packed once for every later product (the same bytes as a panel's own packing) */
    int fill = 0;
    const int64_t strips = (w->rows + NR - 1) / NR;
    j.packed = svlm_cpu_packed(w, SVLM_PACK_BF16_PAIRS, sizeof(uint32_t) * (size_t)(strips * NR * kp), &fill);
    if (!j.packed && packed_only) return 0;
    j.a = svlm_cpu_act_buffer(c, sizeof(uint32_t) * (size_t)(n_pad * kp));
    svlm_pool_run(c->pool, convert_rows_task, &j, (int)(n_pad / MR));
    if (fill) svlm_pool_run(c->pool, pack_task, &j, panels);
    svlm_pool_run(c->pool, panel_task, &j, panels);
    /* (only now: a copy forgotten while being filled is freed by this call) */
    if (fill) svlm_cpu_packed_ready(j.packed);
    return 1;
}

void svlm_cpu_gemm_bf16_init_avx512(svlm_cpu_matmul_ops *ops) {
    ops->matmul_bf16 = matmul_bf16;
    ops->packed_min_rows = PACKED_MIN_ROWS_AVX512;
}
#endif
