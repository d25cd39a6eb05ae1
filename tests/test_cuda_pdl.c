/*
 * Programmatic dependent launch (kernels/cuda/cuda_pdl.cuh): decode steps as llama_eval.c runs
 * them (per layer: RMSNorm + q/k/v, RoPE + the rows' stores into their caches, attention over each
 * row's own cache, output product + residual, RMSNorm + gate/up + SwiGLU, down product + residual;
 * the first two are one kernel on a GPU, svlm_k_rmsnorm_qkv_rope_store;
 * then the output norm and head) on two sequences, replayed from a recording after the first two
 * steps, on a backend with PDL (the default from compute capability 9.0) and on one without
 * (SVLM_CUDA_PDL=0). The caches start with 124 and 380 rows, so while the recording replays each
 * sequence's attention crosses from one split to two and from three to four (128 rows a split:
 * the partials, counters and merges change from step to step). A kernel that read its inputs, or wrote its
 * outputs, before the kernel ahead of it was done would change the numbers: the two must agree bit for bit,
 * step after step, and both must agree with the CPU within the decode products' tolerance (2e-2 of the
 * largest logit: the CPU rounds activations to 8 bits for Q8_0 products).
 *
 * Skips (77) without a usable GPU unless SVLM_TEST_REQUIRE_GPU=1; SVLM_TEST_CUDA_AS_CPU=1 puts CPU
 * backends in the GPUs' places (a check of this test without a GPU).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/dtype.h"
#include "kernels/kernels.h"
#include "test.h"
#include "test_gpu.h"
#include "test_rand.h"

enum {
    NS = 2,
    E = 256,
    NH = 4,
    NKV = 2,
    HD = 64,
    KVD = NKV * HD,
    F = 512,
    VOCAB = 320,
    LAYERS = 3,
    MAXKV = 512,
    STEPS = 8
};
static const int base_rows[NS] = {124, 380}; /* rows cached before the first step */

static uint64_t rng = 0x853c49e6748fea9bULL;
static float frand(void) { /* uniform in [-1, 1) */
    return test_frand(&rng);
}

static float *host_floats(int64_t n, float scale) {
    return test_floats(&rng, n, scale);
}

/* The model: Q8_0 weights (the decode products' quantized path with its prefetches), f32 norms. */
typedef struct model {
    svlm_weight wq[LAYERS], wk[LAYERS], wv[LAYERS], wo[LAYERS], wg[LAYERS], wu[LAYERS], wd[LAYERS], out;
    float *norm; /* [E], every norm */
    void *data[7 * LAYERS + 1];
    int n_data;
} model;

static svlm_weight q8_weight(model *m, int64_t rows, int64_t cols, float scale) {
    const size_t rb = svlm_row_bytes(SVLM_Q8_0, cols);
    void *d = malloc(rb * (size_t)rows);
    REQUIRE(d, "out of memory");
    float *row = host_floats(cols, 0);
    for (int64_t r = 0; r < rows; r++) {
        for (int64_t c = 0; c < cols; c++)
            row[c] = scale * frand();
        REQUIRE(!svlm_quantize_row(SVLM_Q8_0, row, (char *)d + (size_t)r * rb, cols), "quantize");
    }
    free(row);
    m->data[m->n_data++] = d;
    return (svlm_weight){SVLM_Q8_0, rows, cols, d, rb};
}

static void model_make(model *m) {
    memset(m, 0, sizeof *m);
    const float s = 1.0f / sqrtf((float)E);
    for (int l = 0; l < LAYERS; l++) {
        m->wq[l] = q8_weight(m, E, E, s);
        m->wk[l] = q8_weight(m, KVD, E, s);
        m->wv[l] = q8_weight(m, KVD, E, s);
        m->wo[l] = q8_weight(m, E, E, s);
        m->wg[l] = q8_weight(m, F, E, s);
        m->wu[l] = q8_weight(m, F, E, s);
        m->wd[l] = q8_weight(m, E, F, 1.0f / sqrtf((float)F));
    }
    m->out = q8_weight(m, VOCAB, E, s);
    m->norm = host_floats(E, 1.0f);
    for (int i = 0; i < E; i++)
        m->norm[i] = 1.0f + 0.25f * m->norm[i];
}

static void model_free(model *m, svlm_kernels *const *ks, int n_ks) {
    for (int i = 0; i < m->n_data; i++) {
        for (int j = 0; j < n_ks; j++)
            svlm_k_forget(ks[j], m->data[i]);
        free(m->data[i]);
    }
    for (int j = 0; j < n_ks; j++)
        svlm_k_forget(ks[j], m->norm);
    free(m->norm);
}

/* One backend's buffers: activations, each sequence's caches and the step tables. */
typedef struct run {
    svlm_kernels *k;
    float *x, *h, *q, *kx, *vx, *att, *gate, *up, *logit_in, *logits;
    void *kc[LAYERS][NS], *vc[LAYERS][NS]; /* [MAXKV][KVD] f32 */
    void **dsts;                           /* [LAYERS][2 * NS]: keys, then values */
    svlm_attn_item *items;                 /* [LAYERS][NS] */
    int32_t *pos;
} run;

static float *falloc(svlm_kernels *k, int64_t n) {
    float *p = svlm_k_alloc(k, sizeof(float) * (size_t)n);
    REQUIRE(p, "svlm_k_alloc failed");
    return p;
}

static void run_make(run *r, svlm_kernels *k) {
    memset(r, 0, sizeof *r);
    r->k = k;
    r->x = falloc(k, NS * E);
    r->h = falloc(k, NS * F);
    r->q = falloc(k, NS * E);
    r->kx = falloc(k, NS * KVD);
    r->vx = falloc(k, NS * KVD);
    r->att = falloc(k, NS * E);
    r->gate = falloc(k, NS * F);
    r->up = falloc(k, NS * F);
    r->logit_in = falloc(k, NS * E);
    r->logits = falloc(k, NS * VOCAB);
    for (int l = 0; l < LAYERS; l++)
        for (int s = 0; s < NS; s++) {
            r->kc[l][s] = falloc(k, MAXKV * KVD);
            r->vc[l][s] = falloc(k, MAXKV * KVD);
        }
    r->dsts = svlm_k_alloc(k, sizeof(void *) * LAYERS * 2 * NS);
    r->items = svlm_k_alloc(k, sizeof(svlm_attn_item) * LAYERS * NS);
    r->pos = svlm_k_alloc(k, sizeof(int32_t) * NS);
    REQUIRE(r->dsts && r->items && r->pos, "svlm_k_alloc failed");
}

static void run_free(run *r) {
    svlm_k_replay_forget(r->k, r);
    void *bufs[] = {r->x,  r->h,        r->q,      r->kx,   r->vx,    r->att, r->gate,
                    r->up, r->logit_in, r->logits, r->dsts, r->items, r->pos};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        svlm_k_free(r->k, bufs[i]);
    for (int l = 0; l < LAYERS; l++)
        for (int s = 0; s < NS; s++) {
            svlm_k_free(r->k, r->kc[l][s]);
            svlm_k_free(r->k, r->vc[l][s]);
        }
}

/* The ops of one step, in llama_eval.c's order. */
static void step_ops(run *r, const model *m) {
    const svlm_attn_args shape = {.kv_type = SVLM_F32,
                                  .kv_stride = KVD,
                                  .n_head = NH,
                                  .n_kv_head = NKV,
                                  .head_dim = HD,
                                  .causal = 1,
                                  .scale = 0.125f};
    svlm_kernels *k = r->k;
    for (int l = 0; l < LAYERS; l++) {
        const svlm_weight *qkv[3] = {&m->wq[l], &m->wk[l], &m->wv[l]};
        const svlm_rope_store_args ra = {.n_head = NH,
                                         .n_kv_head = NKV,
                                         .head_dim = HD,
                                         .n_rot = HD,
                                         .pos = r->pos,
                                         .base = 10000.0f,
                                         .dsts = r->dsts + (size_t)l * 2 * NS,
                                         .kv_type = SVLM_F32};
        svlm_k_rmsnorm_qkv_rope_store(k, r->x, m->norm, 1e-5f, r->h, qkv, NS, r->q, r->kx, r->vx, &ra);
        svlm_k_attention_items(k, &shape, r->items + (size_t)l * NS, NS);
        svlm_k_matmul_add(k, &m->wo[l], r->att, NS, r->x, r->h);
        svlm_k_rmsnorm_swiglu(k, r->x, m->norm, 1e-5f, r->h, &m->wg[l], &m->wu[l], NS, r->gate, r->up);
        svlm_k_matmul_add(k, &m->wd[l], r->gate, NS, r->x, r->h);
    }
    svlm_k_rmsnorm(k, r->x, m->norm, r->logit_in, NS, E, 1e-5f);
    svlm_k_matmul(k, &m->out, r->logit_in, NS, r->logits);
}

/* The rows before the first step: the same values on every backend (prefix[l][s]: keys then values). */
static void fill_prefix(run *r, float *const (*prefix)[NS]) {
    for (int l = 0; l < LAYERS; l++)
        for (int s = 0; s < NS; s++) {
            const size_t bytes = sizeof(float) * (size_t)base_rows[s] * KVD;
            svlm_k_copy(r->k, r->kc[l][s], prefix[l][s], bytes);
            svlm_k_copy(r->k, r->vc[l][s], prefix[l][s] + (size_t)base_rows[s] * KVD, bytes);
        }
}

/* Step `step` (cache row base_rows[s] + step of sequence s) from embeddings x0; logits to out.
 * Returns whether the recording ran (svlm_k_replay_end). */
static int step_run(run *r, const model *m, int step, const float *x0, float *out) {
    svlm_kernels *k = r->k;
    void *dsts[LAYERS * 2 * NS];
    svlm_attn_item items[LAYERS * NS];
    int32_t pos[NS];
    for (int s = 0; s < NS; s++)
        pos[s] = base_rows[s] + step;
    for (int l = 0; l < LAYERS; l++)
        for (int s = 0; s < NS; s++) {
            const int row = base_rows[s] + step;
            dsts[l * 2 * NS + s] = (float *)r->kc[l][s] + (size_t)row * KVD;
            dsts[l * 2 * NS + NS + s] = (float *)r->vc[l][s] + (size_t)row * KVD;
            items[l * NS + s] =
                (svlm_attn_item){r->q + s * E, r->kc[l][s], r->vc[l][s], r->att + s * E, row + 1};
        }
    svlm_k_defer(k, 1);
    svlm_k_copy(k, r->x, x0, sizeof(float) * NS * E);
    svlm_k_copy(k, r->pos, pos, sizeof pos);
    svlm_k_copy(k, r->dsts, dsts, sizeof dsts);
    svlm_k_copy(k, r->items, items, sizeof items);
    svlm_k_replay_begin(k, r, 1);
    step_ops(r, m);
    const int ran = svlm_k_replay_end(k);
    if (!ran) step_ops(r, m);
    svlm_k_copy(k, out, r->logits, sizeof(float) * NS * VOCAB);
    svlm_k_defer(k, 0);
    return ran;
}

static double rel_to_max(const float *a, const float *b, int64_t n) {
    double worst = 0, big = 1e-30;
    for (int64_t i = 0; i < n; i++) {
        worst = fmax(worst, fabs((double)a[i] - b[i]));
        big = fmax(big, fabs((double)b[i]));
    }
    return worst / big;
}

static void test_pdl_steps(void) {
    svlm_kernels *g_pdl = test_gpu_backend(); /* the default: PDL from compute capability 9.0 */
    setenv("SVLM_CUDA_PDL", "0", 1);
    svlm_kernels *g_plain = test_gpu_backend();
    unsetenv("SVLM_CUDA_PDL");
    svlm_kernels *cpu = NULL;
    svlm_err err = {0};
    REQUIRE(svlm_kernels_create_cpu(2, &cpu, &err) == SVLM_OK, "CPU backend: %s", err.msg);
    const char *name = svlm_kernels_name(g_pdl), *sm = strstr(name, "sm_"), *off = getenv("SVLM_CUDA_PDL");
    const int on = strstr(name, " pdl") != NULL;
    printf("backend %s: programmatic dependent launch %s; without it: %s\n", name, on ? "on" : "off",
           svlm_kernels_name(g_plain));
    CHECK(!strstr(svlm_kernels_name(g_plain), " pdl"), "SVLM_CUDA_PDL=0 left PDL on");
    /* gpu-check builds for the GPU it runs on: there, from compute capability 9.0, it must be on */
    const char *req = getenv("SVLM_TEST_REQUIRE_GPU");
    if (req && !strcmp(req, "1") && sm && atoi(sm + 3) >= 90 && !(off && !strcmp(off, "0")))
        CHECK(on, "PDL is off on %s", name);

    model m;
    model_make(&m);
    run a, b, c;
    run_make(&a, g_pdl);
    run_make(&b, g_plain);
    run_make(&c, cpu);
    float *prefix[LAYERS][NS];
    for (int l = 0; l < LAYERS; l++)
        for (int s = 0; s < NS; s++)
            prefix[l][s] = host_floats((int64_t)2 * base_rows[s] * KVD, 1.0f);
    fill_prefix(&a, prefix);
    fill_prefix(&b, prefix);
    fill_prefix(&c, prefix);
    float *la = host_floats(NS * VOCAB, 0), *lb = host_floats(NS * VOCAB, 0),
          *lc = host_floats(NS * VOCAB, 0);
    int differing = 0;
    double worst_cpu = 0;
    for (int step = 0; step < STEPS; step++) {
        float *x0 = host_floats(NS * E, 1.0f);
        step_run(&a, &m, step, x0, la);
        step_run(&b, &m, step, x0, lb);
        REQUIRE(step_run(&c, &m, step, x0, lc), "the CPU refused a run");
        if (memcmp(la, lb, sizeof(float) * NS * VOCAB)) {
            differing++;
            printf("step %d: with PDL and without differ by %.3g of the largest logit\n", step,
                   rel_to_max(la, lb, NS * VOCAB));
        }
        worst_cpu = fmax(worst_cpu, fmax(rel_to_max(la, lc, NS * VOCAB), rel_to_max(lb, lc, NS * VOCAB)));
        free(x0);
    }
    printf("%d decode steps of %d layers over %d and %d cached rows: with PDL and "
           "without %s; max |gpu - cpu| %.3g of the largest logit (tolerance 2e-2)\n",
           STEPS, LAYERS, base_rows[0], base_rows[1], differing ? "DIFFER" : "equal bit for bit", worst_cpu);
    CHECK(differing == 0, "%d of %d steps differ with PDL and without", differing, STEPS);
    CHECK(worst_cpu <= 2e-2, "the GPU's logits differ from the CPU's by %g of the largest", worst_cpu);
    free(la);
    free(lb);
    free(lc);
    for (int l = 0; l < LAYERS; l++)
        for (int s = 0; s < NS; s++)
            free(prefix[l][s]);
    run_free(&a);
    run_free(&b);
    run_free(&c);
    svlm_kernels *ks[3] = {g_pdl, g_plain, cpu};
    model_free(&m, ks, 3);
    for (int i = 0; i < 3; i++)
        svlm_kernels_destroy(ks[i]);
}

int test_main(void) {
    test_pdl_steps();
    return 0;
}
