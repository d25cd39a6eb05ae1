/*
 * svlm_k_matmul on the CPU. Two regimes:
 *  - few activation rows (decode): each weight row is streamed once from memory and dotted
 *    with every activation row while it sits in L1; quantized weights meet activations
 *    quantized to 8 bits (svlm_q8a) in integer dot products. Memory-bandwidth bound.
 *  - many rows (prefill, vision encoder): panels of weight rows are dequantized to f32 in
 *    per-thread scratch and multiplied with a GEMM. Compute bound.
 * Rows are split over the pool in chunks handed out dynamically.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_kernels.h"

/* From this many activation rows on, dequantize + GEMM beats repeated dot products. */
#define GEMM_MIN_ROWS 8
/* Weight rows per GEMM task: an equal share per thread (bigger panels run faster GEMMs),
 * capped so large matrices still balance, in multiples of 16. */
#define GEMM_PANEL_MAX 256

static int64_t gemm_panel_rows(int64_t rows, int n_threads) {
    int64_t p = (rows + n_threads - 1) / n_threads;
    p = (p + 15) / 16 * 16;
    return p > GEMM_PANEL_MAX ? GEMM_PANEL_MAX : p;
}

typedef struct matvec_job {
    svlm_cpu *c;
    const svlm_weight *w;
    const void *act;
    size_t act_stride; /* bytes between activation rows */
    int64_t n, chunk;
    float *y;
} matvec_job;

static void matvec_task(void *ctx, int task, int thread) {
    (void)thread;
    const matvec_job *j = ctx;
    const svlm_weight *w = j->w;
    svlm_dot_fn dot = j->c->mm.dot[w->type];
    int64_t r0 = (int64_t)task * j->chunk, r1 = r0 + j->chunk < w->rows ? r0 + j->chunk : w->rows;
    const char *row = (const char *)w->data + (size_t)r0 * w->row_bytes;
    for (int64_t r = r0; r < r1; r++, row += w->row_bytes)
        for (int64_t i = 0; i < j->n; i++)
            j->y[i * w->rows + r] = dot(w->cols, row, (const char *)j->act + (size_t)i * j->act_stride);
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
        float *buf = svlm_cpu_scratch(j->c, thread, SVLM_SCRATCH_OP, (size_t)nr * (size_t)w->cols * sizeof(float));
        svlm_dequant_fn deq = j->c->mm.dequant[w->type];
        for (int64_t r = 0; r < nr; r++) deq(w->cols, rows + (size_t)r * w->row_bytes, buf + r * w->cols);
        panel = buf;
    }
    j->c->mm.gemm_nt(j->c, thread, j->n, nr, w->cols, j->x, w->cols, panel, w->cols, j->y + r0, w->rows);
}

static void *grow_act(svlm_cpu *c, size_t bytes) {
    if (bytes > c->act_cap) {
        free(c->act);
        c->act = aligned_alloc(64, (bytes + 63) / 64 * 64);
        if (!c->act) abort();
        c->act_cap = bytes;
    }
    return c->act;
}

void svlm_cpu_matmul(svlm_cpu *c, const svlm_weight *w, const float *x, int64_t n, float *y) {
    if (n <= 0 || w->rows <= 0) return;
    if ((int)w->type < 0 || w->type >= SVLM_DTYPE_COUNT || !c->mm.dot[w->type]) {
        /* Model loaders reject such weights up front; reaching this is a bug in the caller. */
        const svlm_dtype_info *info = svlm_dtype_get((int)w->type);
        fprintf(stderr, "svlm: no CPU matmul kernel for weight type %s\n", info ? info->name : "(unknown)");
        abort();
    }
    if (n >= GEMM_MIN_ROWS) {
        gemm_job j = {c, w, x, n, gemm_panel_rows(w->rows, c->n_threads), y};
        svlm_pool_run(c->pool, gemm_task, &j, (int)((w->rows + j.panel - 1) / j.panel));
        return;
    }
    matvec_job j = {c, w, x, (size_t)w->cols * sizeof(float), n, 0, y};
    if (svlm_cpu_type_uses_q8a(w->type)) {
        int64_t blocks = w->cols / 32;
        j.act_stride = (size_t)blocks * sizeof(svlm_q8a);
        svlm_q8a *q = grow_act(c, j.act_stride * (size_t)n);
        for (int64_t i = 0; i < n; i++) svlm_cpu_quantize_q8a(x + i * w->cols, q + i * blocks, w->cols);
        j.act = q;
    }
    /* About four chunks per thread, at least 16 rows each, so late threads can catch up. */
    int64_t chunk = w->rows / ((int64_t)c->n_threads * 4);
    if (chunk < 16) chunk = 16;
    j.chunk = chunk;
    svlm_pool_run(c->pool, matvec_task, &j, (int)((w->rows + chunk - 1) / chunk));
}
