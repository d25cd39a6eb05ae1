/*
 * svlm_k_matmul on the CPU. Two regimes:
 *  - few activation rows (decode): each weight row is streamed once from memory and dotted
 *    with every activation row while it sits in L1; quantized weights meet activations
 *    quantized to 8 bits (svlm_q8a) in integer dot products. Memory-bandwidth bound.
 *  - many rows (prefill, vision encoder): panels of weight rows are dequantized to f32 in
 *    per-thread scratch and multiplied with a GEMM. Compute bound. Where a SIMD level has one,
 *    a GEMM over weights packed once (kernels/cpu/packed_weights.c) takes them instead: at
 *    AVX-512 BF16 the bf16 GEMM for quantized and BF16 weights (F16 ones too with
 *    SVLM_BF16=all) and the f16 GEMM for F16 weights; at AVX2 the f16 GEMM for F16 and
 *    quantized weights. At AVX-512 a packed weight takes them from 6 rows on (decode batches).
 * Rows are split over the pool in chunks handed out dynamically.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_kernels.h"

#define GEMM_MIN_ROWS SVLM_CPU_GEMM_MIN_ROWS
/* Weight rows per GEMM task: an equal share per thread (bigger panels run faster GEMMs),
 * capped so large matrices still balance, in multiples of 16. */
#define GEMM_PANEL_MAX 256

static int64_t gemm_panel_rows(int64_t rows, int n_threads) {
    int64_t p = (rows + n_threads - 1) / n_threads;
    p = (p + 15) / 16 * 16;
    return p > GEMM_PANEL_MAX ? GEMM_PANEL_MAX : p;
}

/* Up to this many weights share one matvec run (q/k/v, gate/up). */
#define MATVEC_MAX_WEIGHTS 8

typedef struct matvec_job {
    svlm_cpu *c;
    int n_w;
    const svlm_weight *w[MATVEC_MAX_WEIGHTS];
    float *y[MATVEC_MAX_WEIGHTS];
    int64_t chunk[MATVEC_MAX_WEIGHTS];
    int first_task[MATVEC_MAX_WEIGHTS + 1]; /* weight i owns tasks first_task[i] .. first_task[i+1]-1 */
    const float *x;
    const svlm_q8a *q8; /* x quantized, when a weight takes svlm_q8a */
    int64_t n;
} matvec_job;

static void matvec_task(void *ctx, int task, int thread) {
    (void)thread;
    const matvec_job *j = ctx;
    int wi = 0;
    while (task >= j->first_task[wi + 1])
        wi++;
    const svlm_weight *w = j->w[wi];
    float *y = j->y[wi];
    svlm_dot_fn dot = j->c->mm.dot[w->type];
    const void *act = j->x;
    size_t act_stride = (size_t)w->cols * sizeof(float);
    if (svlm_cpu_type_uses_q8a(w->type)) {
        act = j->q8;
        act_stride = (size_t)(w->cols / 32) * sizeof(svlm_q8a);
    }
    int64_t r0 = (int64_t)(task - j->first_task[wi]) * j->chunk[wi];
    int64_t r1 = r0 + j->chunk[wi] < w->rows ? r0 + j->chunk[wi] : w->rows;
    const char *row = (const char *)w->data + (size_t)r0 * w->row_bytes;
    svlm_dot4_fn dot4 = j->c->mm.dot4[w->type];
    /* decode (one activation row, or a few of batched answers): four weight rows per call, each
     * group used for every activation row while it is in L1; the rest one by one */
    if (dot4)
        for (; r0 + 4 <= r1; r0 += 4, row += 4 * w->row_bytes)
            for (int64_t i = 0; i < j->n; i++)
                dot4(w->cols, row, w->row_bytes, (const char *)act + (size_t)i * act_stride,
                     y + i * w->rows + r0);
    for (int64_t r = r0; r < r1; r++, row += w->row_bytes)
        for (int64_t i = 0; i < j->n; i++)
            y[i * w->rows + r] = dot(w->cols, row, (const char *)act + (size_t)i * act_stride);
}

typedef struct gemm_job {
    svlm_cpu *c;
    const svlm_weight *w;
    const float *x;
    int64_t n, panel;
    float *y;
} gemm_job;

static void gemm_task(void *ctx, int task, int thread) {
    const gemm_job *j = ctx;
    const svlm_weight *w = j->w;
    int64_t r0 = (int64_t)task * j->panel;
    int64_t nr = w->rows - r0 < j->panel ? w->rows - r0 : j->panel;
    const char *rows = (const char *)w->data + (size_t)r0 * w->row_bytes;
    const float *panel;
    if (w->type == SVLM_F32 && w->row_bytes == (size_t)w->cols * sizeof(float)) {
        panel = (const float *)rows;
    } else {
        float *buf =
            svlm_cpu_scratch(j->c, thread, SVLM_SCRATCH_OP, (size_t)nr * (size_t)w->cols * sizeof(float));
        svlm_dequant_fn deq = j->c->mm.dequant[w->type];
        for (int64_t r = 0; r < nr; r++)
            deq(w->cols, rows + (size_t)r * w->row_bytes, buf + r * w->cols);
        panel = buf;
    }
    j->c->mm.gemm_nt(j->c, thread, j->n, nr, w->cols, j->x, w->cols, panel, w->cols, j->y + r0, w->rows);
}

static void check_type(svlm_cpu *c, const svlm_weight *w) {
    if ((int)w->type < 0 || w->type >= SVLM_DTYPE_COUNT || !c->mm.dot[w->type]) {
        /* Model loaders reject such weights up front; reaching this is a bug in the caller. */
        const svlm_dtype_info *info = svlm_dtype_get((int)w->type);
        fprintf(stderr, "svlm: no CPU matmul kernel for weight type %s\n", info ? info->name : "(unknown)");
        abort();
    }
}

/* Few activation rows: every weight's rows in chunks, all in one pool run (one barrier). */
static void matvec_multi(svlm_cpu *c, const svlm_weight *const *ws, int n_w, const float *x, int64_t n,
                         float *const *ys) {
    matvec_job j;
    j.c = c;
    j.n_w = n_w;
    j.x = x;
    j.q8 = NULL;
    j.n = n;
    j.first_task[0] = 0;
    for (int i = 0; i < n_w; i++) {
        const svlm_weight *w = ws[i];
        j.w[i] = w;
        j.y[i] = ys[i];
        if (svlm_cpu_type_uses_q8a(w->type) && !j.q8) { /* every weight has the same cols */
            int64_t blocks = w->cols / 32;
            svlm_q8a *q = svlm_cpu_act_buffer(c, (size_t)blocks * sizeof(svlm_q8a) * (size_t)n);
            for (int64_t r = 0; r < n; r++)
                c->mm.quantize_q8a(x + r * w->cols, q + r * blocks, w->cols);
            j.q8 = q;
        }
        /* About two chunks per thread, at least 16 rows each, so a late thread can be caught up
         * with; more (four) ran slower in decode on 2 threads: shorter sequential runs per thread. */
        int64_t chunk = w->rows / ((int64_t)c->n_threads * 2);
        chunk = chunk < 16 ? 16 : chunk;
        j.chunk[i] = (chunk + 3) / 4 * 4; /* whole groups for the four-row dot kernels */
        j.first_task[i + 1] = j.first_task[i] + (int)((w->rows + j.chunk[i] - 1) / j.chunk[i]);
    }
    svlm_pool_run(c->pool, matvec_task, &j, j.first_task[n_w]);
}

/* The GEMMs over packed weights, where one applies: 1 done, 0 not (the caller goes on). Below
 * GEMM_MIN_ROWS only a packed copy ready or packed now is used: packing the whole weight for one
 * product of a few rows would cost more than the product. */
static int packed_gemm(svlm_cpu *c, const svlm_weight *w, const float *x, int64_t n, float *y,
                       const svlm_cpu_epilogue *ep) {
    if (n < c->mm.packed_min_rows) return 0;
    const int packed_only = n < GEMM_MIN_ROWS;
    if (c->mm.matmul_bf16 && w->type != SVLM_F32 && (w->type != SVLM_F16 || c->bf16_f16))
        return c->mm.matmul_bf16(c, w, x, n, y, packed_only, ep);
    if (c->mm.matmul_f16 && (w->type == SVLM_F16 || (c->mm.f16_quant && svlm_cpu_type_uses_q8a(w->type))))
        return c->mm.matmul_f16(c, w, x, n, y, packed_only, ep);
    return 0;
}

int svlm_cpu_matmul_fused(svlm_cpu *c, const svlm_weight *w, const float *x, int64_t n, float *y,
                          const svlm_cpu_epilogue *ep) {
    if (n <= 0 || w->rows <= 0) return 1;
    check_type(c, w);
    return packed_gemm(c, w, x, n, y, ep);
}

void svlm_cpu_matmul(svlm_cpu *c, const svlm_weight *w, const float *x, int64_t n, float *y) {
    if (n <= 0 || w->rows <= 0) return;
    check_type(c, w);
    if (packed_gemm(c, w, x, n, y, NULL)) return;
    if (n >= GEMM_MIN_ROWS) {
        gemm_job j = {c, w, x, n, gemm_panel_rows(w->rows, c->n_threads), y};
        svlm_pool_run(c->pool, gemm_task, &j, (int)((w->rows + j.panel - 1) / j.panel));
        return;
    }
    matvec_multi(c, &w, 1, x, n, &y);
}

void svlm_cpu_matmul_multi(svlm_cpu *c, const svlm_weight *const *ws, int n_w, const float *x, int64_t n,
                           float *const *ys) {
    if (n <= 0) return;
    for (int i = 0; i < n_w; i++) {
        check_type(c, ws[i]);
        if (ws[i]->cols != ws[0]->cols) {
            fprintf(stderr, "svlm: matmul_multi weights have %lld and %lld columns\n", (long long)ws[0]->cols,
                    (long long)ws[i]->cols);
            abort();
        }
    }
    if (n >= GEMM_MIN_ROWS) { /* compute bound: a barrier per weight costs nothing */
        for (int i = 0; i < n_w; i++)
            svlm_cpu_matmul(c, ws[i], x, n, ys[i]);
        return;
    }
    /* the weights no packed GEMM took share the dot-product runs */
    const svlm_weight *rest_w[MATVEC_MAX_WEIGHTS];
    float *rest_y[MATVEC_MAX_WEIGHTS];
    int m = 0;
    for (int i = 0; i < n_w; i++) {
        if (ws[i]->rows <= 0 || packed_gemm(c, ws[i], x, n, ys[i], NULL)) continue;
        rest_w[m] = ws[i];
        rest_y[m++] = ys[i];
        if (m == MATVEC_MAX_WEIGHTS || i == n_w - 1) {
            matvec_multi(c, rest_w, m, x, n, rest_y);
            m = 0;
        }
    }
    if (m) matvec_multi(c, rest_w, m, x, n, rest_y);
}
