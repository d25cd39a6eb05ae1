/*
 * Row-wise and element-wise CPU ops: norms, RoPE, activations, additions, softmax. Plain C
 * written so the compiler vectorises the inner loops; large inputs are split over the pool.
 */
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu_kernels.h"

/* Below this many elements a run over the pool costs more than it saves. */
#define PARALLEL_MIN_ELEMS 32768

typedef void (*range_fn)(void *ctx, int64_t begin, int64_t end, int thread);

typedef struct range_job {
    range_fn fn;
    void *ctx;
    int64_t count, chunk;
} range_job;

static void range_task(void *ctx, int task, int thread) {
    range_job *j = ctx;
    int64_t b = (int64_t)task * j->chunk, e = b + j->chunk < j->count ? b + j->chunk : j->count;
    j->fn(j->ctx, b, e, thread);
}

/* Calls fn over [0, count) in pieces; `work` is the elements of work per item. */
static void parallel_for(svlm_cpu *c, int64_t count, int64_t work, range_fn fn, void *ctx) {
    if (count <= 0) return;
    if (c->n_threads == 1 || count == 1 || count * work < PARALLEL_MIN_ELEMS) {
        fn(ctx, 0, count, 0);
        return;
    }
    int64_t tasks = (int64_t)c->n_threads * 4;
    if (tasks > count) tasks = count;
    range_job j = {fn, ctx, count, (count + tasks - 1) / tasks};
    svlm_pool_run(c->pool, range_task, &j, (int)((count + j.chunk - 1) / j.chunk));
}

/* ---- norms ---- */

void svlm_cpu_rmsnorm_row_ref(const float *x, const float *w, float *y, int64_t dim, float eps) {
    double ss = 0.0;
    for (int64_t i = 0; i < dim; i++)
        ss += (double)x[i] * x[i];
    float scale = (float)(1.0 / sqrt(ss / (double)dim + (double)eps));
    for (int64_t i = 0; i < dim; i++)
        y[i] = x[i] * scale * w[i];
}

typedef struct norm_job {
    svlm_cpu *c;
    const float *x, *w, *b;
    float *y;
    int64_t dim;
    float eps;
} norm_job;

static void rmsnorm_rows(void *ctx, int64_t r0, int64_t r1, int thread) {
    (void)thread;
    const norm_job *j = ctx;
    for (int64_t r = r0; r < r1; r++)
        j->c->mm.rmsnorm_row(j->x + r * j->dim, j->w, j->y + r * j->dim, j->dim, j->eps);
}

void svlm_cpu_rmsnorm(svlm_cpu *c, const float *x, const float *w, float *y, int64_t n, int64_t dim,
                      float eps) {
    norm_job j = {c, x, w, NULL, y, dim, eps};
    parallel_for(c, n, dim, rmsnorm_rows, &j);
}

void svlm_cpu_layernorm_row_ref(const float *x, const float *w, const float *b, float *y, int64_t dim,
                                float eps) {
    double sum = 0.0;
    for (int64_t i = 0; i < dim; i++)
        sum += x[i];
    double mean = sum / (double)dim, var = 0.0;
    for (int64_t i = 0; i < dim; i++)
        var += ((double)x[i] - mean) * ((double)x[i] - mean);
    float m = (float)mean, scale = (float)(1.0 / sqrt(var / (double)dim + (double)eps));
    if (b)
        for (int64_t i = 0; i < dim; i++)
            y[i] = (x[i] - m) * scale * w[i] + b[i];
    else
        for (int64_t i = 0; i < dim; i++)
            y[i] = (x[i] - m) * scale * w[i];
}

static void layernorm_rows(void *ctx, int64_t r0, int64_t r1, int thread) {
    (void)thread;
    const norm_job *j = ctx;
    for (int64_t r = r0; r < r1; r++)
        j->c->mm.layernorm_row(j->x + r * j->dim, j->w, j->b, j->y + r * j->dim, j->dim, j->eps);
}

void svlm_cpu_layernorm(svlm_cpu *c, const float *x, const float *w, const float *b, float *y, int64_t n,
                        int64_t dim, float eps) {
    norm_job j = {c, x, w, b, y, dim, eps};
    parallel_for(c, n, dim, layernorm_rows, &j);
}

/* ---- RoPE ---- */

typedef struct rope_job {
    svlm_cpu *c;
    float *x;
    int n_head, head_dim, n_rot, neox;
    const int32_t *pos;
    float theta_scale;
} rope_job;

static void rope_rows(void *ctx, int64_t t0, int64_t t1, int thread) {
    const rope_job *j = ctx;
    int half = j->n_rot / 2;
    float *cs =
        svlm_cpu_scratch(j->c, thread, SVLM_SCRATCH_OP, sizeof(float) * 2 * (size_t)(half > 0 ? half : 1));
    float *sn = cs + half;
    for (int64_t t = t0; t < t1; t++) {
        /* ggml's order of operations: the angle is multiplied by theta_scale pair after pair. */
        float theta = (float)j->pos[t];
        for (int p = 0; p < half; p++) {
            cs[p] = cosf(theta);
            sn[p] = sinf(theta);
            theta *= j->theta_scale;
        }
        for (int h = 0; h < j->n_head; h++) {
            float *v = j->x + (t * j->n_head + h) * j->head_dim;
            int stride = j->neox ? half : 1, step = j->neox ? 1 : 2;
            for (int p = 0; p < half; p++) {
                float *a = v + p * step, *b = a + stride;
                float x0 = *a, x1 = *b;
                *a = x0 * cs[p] - x1 * sn[p];
                *b = x0 * sn[p] + x1 * cs[p];
            }
        }
    }
}

void svlm_cpu_rope(svlm_cpu *c, float *x, int64_t n, int n_head, int head_dim, int n_rot, const int32_t *pos,
                   float base, int neox) {
    if (n_rot <= 0) return;
    rope_job j = {c, x, n_head, head_dim, n_rot, neox, pos, powf(base, -2.0f / (float)n_rot)};
    parallel_for(c, n, (int64_t)n_head * head_dim * 4, rope_rows, &j);
}

/* ---- element-wise ---- */

typedef struct ew_job {
    float *y;
    const float *x;
} ew_job;

typedef struct act_job {
    svlm_cpu *c;
    float *y;
    const float *x;
} act_job;

void svlm_cpu_silu_mul_ref(float *g, const float *u, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        g[i] = g[i] / (1.0f + svlm_expf_fast(-g[i])) * u[i];
}

static void silu_mul_range(void *ctx, int64_t b, int64_t e, int thread) {
    (void)thread;
    const act_job *j = ctx;
    j->c->mm.silu_mul(j->y + b, j->x + b, e - b);
}

void svlm_cpu_silu_mul(svlm_cpu *c, float *gate, const float *up, int64_t n) {
    act_job j = {c, gate, up};
    parallel_for(c, n, 8, silu_mul_range, &j);
}

/* 0.5 x (1 + tanh(u)) equals x / (1 + exp(-2u)): no cancellation for negative x. */
void svlm_cpu_gelu_tanh_ref(float *x, int64_t n) {
    const float k = 0.7978845608028654f; /* sqrt(2/pi) */
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        float u = k * (v + 0.044715f * v * v * v);
        x[i] = v / (1.0f + svlm_expf_fast(-2.0f * u));
    }
}

static void gelu_range(void *ctx, int64_t b, int64_t e, int thread) {
    (void)thread;
    const act_job *j = ctx;
    j->c->mm.gelu_tanh(j->y + b, e - b);
}

void svlm_cpu_gelu_tanh(svlm_cpu *c, float *x, int64_t n) {
    act_job j = {c, x, NULL};
    parallel_for(c, n, 8, gelu_range, &j);
}

static void add_range(void *ctx, int64_t b, int64_t e, int thread) {
    (void)thread;
    const ew_job *j = ctx;
    for (int64_t i = b; i < e; i++)
        j->y[i] += j->x[i];
}

void svlm_cpu_add(svlm_cpu *c, float *y, const float *x, int64_t n) {
    ew_job j = {y, x};
    parallel_for(c, n, 1, add_range, &j);
}

typedef struct bias_job {
    float *y;
    const float *b;
    int64_t dim;
} bias_job;

static void add_bias_rows(void *ctx, int64_t r0, int64_t r1, int thread) {
    (void)thread;
    const bias_job *j = ctx;
    for (int64_t r = r0; r < r1; r++) {
        float *y = j->y + r * j->dim;
        for (int64_t i = 0; i < j->dim; i++)
            y[i] += j->b[i];
    }
}

void svlm_cpu_add_bias(svlm_cpu *c, float *y, const float *b, int64_t n_rows, int64_t dim) {
    bias_job j = {y, b, dim};
    parallel_for(c, n_rows, dim, add_bias_rows, &j);
}

/* ---- softmax ---- */

float svlm_cpu_exp_row_ref(float *x, int64_t dim, float scale) {
    if (dim <= 0) return 0.0f;
    float mx = x[0];
    for (int64_t i = 1; i < dim; i++)
        mx = x[i] > mx ? x[i] : mx;
    double sum = 0.0;
    for (int64_t i = 0; i < dim; i++)
        sum += (x[i] = svlm_expf_fast(scale * (x[i] - mx)));
    return (float)sum;
}

typedef struct softmax_job {
    svlm_cpu *c;
    float *x;
    int64_t dim;
} softmax_job;

static void softmax_rows(void *ctx, int64_t r0, int64_t r1, int thread) {
    (void)thread;
    const softmax_job *j = ctx;
    for (int64_t r = r0; r < r1; r++) {
        float *x = j->x + r * j->dim;
        float inv = 1.0f / j->c->mm.exp_row(x, j->dim, 1.0f);
        for (int64_t i = 0; i < j->dim; i++)
            x[i] *= inv;
    }
}

void svlm_cpu_softmax(svlm_cpu *c, float *x, int64_t n_rows, int64_t dim) {
    softmax_job j = {c, x, dim};
    parallel_for(c, n_rows, dim * 8, softmax_rows, &j);
}

/* The rule every backend keeps: a later element wins only when strictly greater, so the first of
 * equals wins, NaNs never do and a leading NaN keeps index 0. */
void svlm_cpu_argmax(const float *x, int64_t n_rows, int64_t dim, int32_t *ids) {
    for (int64_t r = 0; r < n_rows; r++) {
        const float *row = x + r * dim;
        int64_t best = 0;
        for (int64_t i = 1; i < dim; i++)
            if (row[i] > row[best]) best = i;
        ids[r] = (int32_t)best;
    }
}
