/*
 * The CUDA backend on the streaming paths test_cuda_e2e does not reach, each run on the backend
 * under test and on the CPU backend and compared:
 *  1. the paged cache (svlm_llama_eval_seq): stories260K with 4 sink tokens and a text window
 *     small enough that spans are evicted during the prompt and at most of the 60 greedy steps,
 *     so the working copy is resynced (keys re-rotated) again and again; F32 and F16 pages under
 *     F32 and F16 working copies; the prompt fed in spans of at most 8 tokens, or of 34 and 6.
 *     The generated ids must be identical; where they part, the CPU's logits for the two picks
 *     must be within twice the tolerance (a near tie, reported, not a failure).
 *  2. continuous batching (svlm_llama_eval_batch): 12 sequences with prompts of 5 to 17 tokens,
 *     3 on F16 pages, joining and leaving so that 2 to 12 decode together, through evictions;
 *     every side is fed the tokens the batched run under test picks. Compared with the same
 *     sequences stepped alone on the same backend and batched on the CPU.
 *  3. the vision encoder (svlm_vision_encode) on fixtures/vision-tiny, F32 and F16 projectors:
 *     5 tiles in batches of 3 + 2 against llama.cpp's embeddings and the CPU backend, and one
 *     tile alone against the same tile in the middle of a batch of 3.
 *
 * Tolerances (every measured error is printed next to its own):
 *  - stories260K's weights are F32, which cuBLAS multiplies in full f32 (cuda_matmul.c), so a
 *    chunk of fewer than 32 tokens is float math in another order: logits within 1e-3 of the
 *    CPU's (and of llama.cpp's before the first eviction) with F32 pages and working copy, 3e-2
 *    where either is F16 (a value near an f16 rounding boundary lands on either side, as in
 *    test_cuda_e2e). A chunk of 32 or more runs its attention on tensor cores (TF32, or f16 Q
 *    and P with an F16 working copy): 0.25, as test_cuda_e2e's batched prompt.
 *  - a batch against its sequences stepped alone on the same backend: 1e-4 while a sequence has
 *    only been in steps of at most 8 rows (the same per-row products: the GPU's matrix-vector
 *    kernel runs up to 8 rows, the CPU's dot products up to 15); after a step of more rows
 *    (cuBLAS) 1e-2, 3e-2 on F16 pages: another summation order compounding over the steps, as
 *    test_llama_batch measures for the CPU's GEMM. Batched GPU against batched CPU: the same.
 *  - vision on a second backend under test created with SVLM_CUDA_TF32=0 (f32 products for the
 *    F16 projector's weights and for attention): test_vision_encoder's 1e-3 (F32) and 4e-3 (F16)
 *    against llama.cpp, 1e-3 against the CPU. With TF32 (the default): 1.5e-2 for both, an
 *    estimate (the CPU's bf16 products, 8 significant bits to TF32's 11, are 2.1e-2 off for F16).
 *    A tile alone against the same tile in a batch: 1e-3 (cuBLAS may pick another summation
 *    order for another row count; the f16 GELU table can then flip a step).
 *
 * Skips (77) without a usable GPU (SVLM_TEST_REQUIRE_GPU=1 makes that a failure) or without any
 * of its test data; a part whose data is missing is skipped with a message. SVLM_TEST_CUDA_AS_CPU=1
 * (or =avx2, =avx512) puts a scalar (that level's) CPU backend in the GPU's place: a check of this
 * test itself on a machine without a GPU.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "llm/llama.h"
#include "test.h"
#include "test_gpu.h"
#include "vision/encoder.h"

static svlm_kernels *G, *C; /* the backend under test, the CPU reference */

/* ---- reporting --------------------------------------------------------------------------- */

static double worst_share;
static char worst_what[200] = "nothing compared";

/* Prints a measured error next to its tolerance and checks it; keeps the worst share. */
static void judge(const char *what, double err, double tol) {
    const int ok = err <= tol; /* NaN fails */
    printf("%s %.3g (tolerance %.3g)%s\n", what, err, tol, ok ? "" : "  <-- FAIL");
    CHECK(ok, "%s %.3g exceeds %.3g", what, err, tol);
    const double share = ok ? err / tol : INFINITY;
    if (!(share <= worst_share)) {
        worst_share = share;
        snprintf(worst_what, sizeof worst_what, "%s", what);
    }
}

static void worse(double *w, double d) {
    if (!isnan(*w) && !(d <= *w)) *w = d; /* NaN counts as the worst, and stays */
}

static double max_abs(const float *a, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++)
        worse(&m, fabs((double)a[i]));
    return m;
}

static int argmax(const float *l, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (l[i] > l[best]) best = i;
    return best;
}

static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    REQUIRE(p, "out of memory (%zu bytes)", bytes);
    return p;
}

static int have(const char *rel) {
    const char *path = test_data(rel);
    FILE *f = path ? fopen(path, "rb") : NULL;
    if (f) fclose(f);
    return f != NULL;
}

/* Puts back an environment variable as it was (old NULL: unset). */
static void restore_env(const char *name, const char *old) {
    if (old)
        setenv(name, old, 1);
    else
        unsetenv(name);
}

/* ---- 1. the paged cache ------------------------------------------------------------------ */

/* The 44-token prompt of fixtures/stories260K/logits_prompt.json (as in test_llama.c). */
static const int32_t prompt[] = {1,   403, 407, 261, 378, 432, 383, 286, 261, 376, 400, 428, 395, 392, 412,
                                 444, 426, 392, 412, 444, 397, 355, 267, 352, 379, 322, 265, 282, 295, 433,
                                 335, 345, 374, 432, 261, 262, 423, 388, 268, 315, 418, 426, 385, 328};
enum { N = sizeof prompt / sizeof prompt[0], N_GEN = 60, SINKS = 4, PAGE_TOKENS = 8 };

typedef struct paged_case {
    const char *name;
    int spans[8], n_spans; /* the prompt's spans; spans[0] are the sinks */
    int window;            /* text budget */
    svlm_dtype pages, copy;
    int reassign; /* RoPE positions: index in the cache (1) or in the stream (0) */
    double tol;
} paged_case;

/* Spans of <= 8 tokens: matrix-vector products only on the GPU, and a window of 24 that evicts
 * during the prompt. Spans of 34 and 6: cuBLAS, the host write path (> 16 rows) and tensor-core
 * attention (>= 32 queries) for the prompt. */
static const paged_case cases[] = {
    {"f32 pages/f32 copy, spans <= 8", {4, 8, 7, 8, 5, 8, 4}, 7, 24, SVLM_F32, SVLM_F32, 1, 1e-3},
    {"f16 pages/f32 copy, spans <= 8, stream pos", {4, 8, 7, 8, 5, 8, 4}, 7, 24, SVLM_F16, SVLM_F32, 0, 3e-2},
    {"f32 pages/f16 copy, spans <= 8", {4, 8, 7, 8, 5, 8, 4}, 7, 24, SVLM_F32, SVLM_F16, 1, 3e-2},
    {"f32 pages/f32 copy, spans 34 + 6", {4, 34, 6}, 3, 40, SVLM_F32, SVLM_F32, 1, 0.25},
    {"f16 pages/f16 copy, spans 34 + 6", {4, 34, 6}, 3, 40, SVLM_F16, SVLM_F16, 1, 0.25},
};

typedef struct paged_run {
    float *prompt_logits; /* [N][V] */
    float *step_logits;   /* [N_GEN][V]: the logits each generated token was picked from */
    float *last_logits;   /* [V]: after the last generated token */
    int32_t gen[N_GEN];
    int clean; /* prompt rows evaluated before the first eviction */
    int64_t evicted_spans, evicted_tokens;
} paged_run;

static void paged_generate(svlm_llama *m, svlm_kernels *k, const paged_case *pc, paged_run *r) {
    const int V = svlm_llama_hparams_of(m)->n_vocab;
    svlm_err err = {0};
    svlm_kv_pool *pool = NULL;
    svlm_kv_seq *seq = NULL;
    svlm_llama_ctx *c = NULL;
    REQUIRE(!svlm_llama_kv_pool_create(m, pc->pages, PAGE_TOKENS, 64, &pool, &err), "%s", err.msg);
    const svlm_kv_policy pol = {{SINKS, 0, pc->window}, pc->reassign};
    REQUIRE(!svlm_kv_seq_create(pool, &pol, &seq, &err), "%s", err.msg);
    REQUIRE(!svlm_llama_ctx_create(m, k, SINKS + pc->window, pc->copy, &c, &err), "%s: %s",
            svlm_kernels_name(k), err.msg);
    int at = 0;
    int64_t tag = 0;
    r->clean = -1;
    for (int s = 0; s < pc->n_spans; s++) {
        const int n = pc->spans[s];
        REQUIRE(!svlm_llama_eval_seq(c, seq, s ? SVLM_KV_TEXT : SVLM_KV_SINK, tag++, prompt + at, NULL, n,
                                     r->prompt_logits + (size_t)at * V, 1, &err),
                "%s on %s: %s", pc->name, svlm_kernels_name(k), err.msg);
        if (r->clean < 0 && svlm_kv_seq_evicted_spans(seq)) r->clean = at; /* this span's append evicted */
        at += n;
    }
    if (r->clean < 0) r->clean = N;
    const float *logits = r->prompt_logits + (size_t)(N - 1) * V;
    for (int i = 0; i < N_GEN; i++) {
        memcpy(r->step_logits + (size_t)i * V, logits, sizeof(float) * (size_t)V);
        r->gen[i] = argmax(logits, V);
        REQUIRE(
            !svlm_llama_eval_seq(c, seq, SVLM_KV_TEXT, tag++, &r->gen[i], NULL, 1, r->last_logits, 0, &err),
            "%s on %s, step %d: %s", pc->name, svlm_kernels_name(k), i, err.msg);
        logits = r->last_logits;
    }
    r->evicted_spans = svlm_kv_seq_evicted_spans(seq);
    r->evicted_tokens = svlm_kv_seq_evicted_tokens(seq);
    svlm_llama_ctx_free(c);
    svlm_kv_seq_free(seq);
    svlm_kv_pool_free(pool);
}

static void paged_alloc(paged_run *r, int V) {
    r->prompt_logits = xmalloc(sizeof(float) * (size_t)N * V);
    r->step_logits = xmalloc(sizeof(float) * (size_t)N_GEN * V);
    r->last_logits = xmalloc(sizeof(float) * (size_t)V);
}

static void paged_free(paged_run *r) {
    free(r->prompt_logits);
    free(r->step_logits);
    free(r->last_logits);
}

static void print_ids(const char *label, const int32_t *ids) {
    printf("%s", label);
    for (int i = 0; i < N_GEN; i++)
        printf(" %d", ids[i]);
    printf("\n");
}

/* The generations of g and c: identical, or parted at a near tie of the CPU's logits. Returns
 * how many steps both ran on the same history. */
static int paged_compare_ids(const paged_case *pc, const paged_run *g, const paged_run *c, int V) {
    int first = N_GEN;
    for (int i = 0; i < N_GEN && first == N_GEN; i++)
        if (g->gen[i] != c->gen[i]) first = i;
    char what[200];
    if (first == N_GEN) {
        printf("paged %s: the %d generated tokens are equal:", pc->name, N_GEN);
        print_ids("", c->gen);
        return N_GEN;
    }
    printf("paged %s: generations part at token %d (cpu %d, gpu %d)\n", pc->name, first, c->gen[first],
           g->gen[first]);
    print_ids("  cpu", c->gen);
    print_ids("  gpu", g->gen);
    const float *l = c->step_logits + (size_t)first * V;
    snprintf(what, sizeof what, "paged %s: near tie? the CPU's logits for the two picks differ by", pc->name);
    judge(what, (double)l[c->gen[first]] - l[g->gen[first]], 2 * pc->tol);
    return first + 1; /* the logits of step `first` still came from the same history */
}

static void paged_case_run(svlm_llama *m, const paged_case *pc, const float *ref, size_t n_ref) {
    const int V = svlm_llama_hparams_of(m)->n_vocab;
    int sum = 0;
    for (int s = 0; s < pc->n_spans; s++)
        sum += pc->spans[s];
    REQUIRE(sum == N && pc->spans[0] == SINKS, "%s: spans must cover the prompt", pc->name);
    paged_run g, c;
    paged_alloc(&g, V);
    paged_alloc(&c, V);
    paged_generate(m, G, pc, &g);
    paged_generate(m, C, pc, &c);
    char what[200];
    snprintf(what, sizeof what, "paged %s: logits of the prompt, max |gpu - cpu|", pc->name);
    judge(what, test_max_abs_diff(g.prompt_logits, c.prompt_logits, (size_t)N * V), pc->tol);
    if (ref && n_ref == (size_t)N * V && pc->pages == SVLM_F32 && pc->copy == SVLM_F32 && pc->reassign) {
        /* before the first eviction the sequence is the plain prompt: llama.cpp's logits */
        snprintf(what, sizeof what,
                 "paged %s: %d prompt rows before the first eviction, max |gpu - llama.cpp|", pc->name,
                 g.clean);
        judge(what, test_max_abs_diff(g.prompt_logits, ref, (size_t)g.clean * V), pc->tol);
    }
    const int same = paged_compare_ids(pc, &g, &c, V);
    snprintf(what, sizeof what, "paged %s: logits of the %d steps on the same history, max |gpu - cpu|",
             pc->name, same);
    judge(what, test_max_abs_diff(g.step_logits, c.step_logits, (size_t)same * V), pc->tol);
    if (same == N_GEN) {
        snprintf(what, sizeof what, "paged %s: logits after the last token, max |gpu - cpu|", pc->name);
        judge(what, test_max_abs_diff(g.last_logits, c.last_logits, (size_t)V), pc->tol);
        CHECK(g.evicted_spans == c.evicted_spans && g.evicted_tokens == c.evicted_tokens,
              "%s: evictions differ with the same tokens", pc->name);
    }
    printf("paged %s: %lld spans (%lld tokens) evicted on the gpu, %lld (%lld) on the cpu; %d prompt rows "
           "before the first\n",
           pc->name, (long long)g.evicted_spans, (long long)g.evicted_tokens, (long long)c.evicted_spans,
           (long long)c.evicted_tokens, g.clean);
    CHECK(g.evicted_spans >= 3, "%s: only %lld evictions: the window no longer evicts", pc->name,
          (long long)g.evicted_spans);
    paged_free(&g);
    paged_free(&c);
}

static void test_paged(svlm_llama *m) {
    const int V = svlm_llama_hparams_of(m)->n_vocab;
    size_t n_ref = 0;
    float *ref = test_read_f32(test_data("fixtures/stories260K/logits_prompt.f32"), &n_ref);
    if (!ref || n_ref != (size_t)N * V) printf("no llama.cpp fixture logits_prompt.f32: not compared\n");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        paged_case_run(m, &cases[i], ref, n_ref);
    free(ref);
}

/* ---- 2. continuous batching -------------------------------------------------------------- */

enum { NSEQ = 12, BSTEPS = 28, MATVEC_MAX = 8 /* SVLM_CU_MATVEC_MAX, kernels/cuda/cuda_ops.h */ };

/* Sequence i decodes in steps joins(i) <= s < leaves(i): 2 live at the ends, 12 in the middle. */
static int joins(int i) {
    return i * 5 % 7;
}
static int leaves(int i) {
    return BSTEPS - i * 3 % 8;
}
static int on_f16(int i) {
    return i % 4 == 2;
}

typedef struct bside {
    svlm_kv_pool *pool, *pool16;
    svlm_kv_seq *seq[NSEQ];
    svlm_llama_ctx *ctx[NSEQ];
    float *logits[NSEQ];
    svlm_llama_batch *batch; /* NULL: this side steps each sequence alone */
} bside;

/* Prompts of 5 to 17 tokens (4 sinks, the rest one text span), windows of 20 to 28 tokens. */
static void bside_setup(svlm_llama *m, svlm_kernels *k, int batched, bside *s) {
    const int V = svlm_llama_hparams_of(m)->n_vocab;
    svlm_err err = {0};
    REQUIRE(!svlm_llama_kv_pool_create(m, SVLM_F32, PAGE_TOKENS, 256, &s->pool, &err), "%s", err.msg);
    REQUIRE(!svlm_llama_kv_pool_create(m, SVLM_F16, PAGE_TOKENS, 64, &s->pool16, &err), "%s", err.msg);
    for (int i = 0; i < NSEQ; i++) {
        const svlm_kv_policy pol = {{SINKS, 0, 20 + 4 * (i % 3)}, 1};
        REQUIRE(!svlm_kv_seq_create(on_f16(i) ? s->pool16 : s->pool, &pol, &s->seq[i], &err), "%s", err.msg);
        REQUIRE(!svlm_llama_ctx_create(m, k, 32, SVLM_F32, &s->ctx[i], &err), "%s", err.msg);
        s->logits[i] = xmalloc(sizeof(float) * (size_t)V);
        int32_t ids[20];
        const int len = 5 + 3 * i % 13;
        for (int j = 0; j < len; j++)
            ids[j] = 1 + (37 * j + 11 * i) % (V - 1);
        REQUIRE(!svlm_llama_eval_seq(s->ctx[i], s->seq[i], SVLM_KV_SINK, 0, ids, NULL, SINKS, NULL, 0, &err),
                "%s", err.msg);
        REQUIRE(!svlm_llama_eval_seq(s->ctx[i], s->seq[i], SVLM_KV_TEXT, 1, ids + SINKS, NULL, len - SINKS,
                                     s->logits[i], 0, &err),
                "%s", err.msg);
    }
    if (batched) REQUIRE(!svlm_llama_batch_create(m, k, NSEQ, &s->batch, &err), "%s", err.msg);
}

static void bside_free(bside *s) {
    svlm_llama_batch_free(s->batch);
    for (int i = 0; i < NSEQ; i++) {
        svlm_kv_seq_free(s->seq[i]);
        svlm_llama_ctx_free(s->ctx[i]);
        free(s->logits[i]);
    }
    svlm_kv_pool_free(s->pool);
    svlm_kv_pool_free(s->pool16);
}

static int64_t bside_evictions(const bside *s) {
    int64_t n = 0;
    for (int i = 0; i < NSEQ; i++)
        n += svlm_kv_seq_evicted_spans(s->seq[i]);
    return n;
}

static svlm_llama_batch_item item(const bside *s, int i, int step, int32_t id) {
    return (svlm_llama_batch_item){.ctx = s->ctx[i],
                                   .seq = s->seq[i],
                                   .kind = SVLM_KV_TEXT,
                                   .tag = 2 + step,
                                   .id = id,
                                   .logits = s->logits[i]};
}

typedef struct bworst {
    double narrow, wide32, wide16; /* batched vs alone on the backend under test */
    double cpu32, cpu16;           /* batched under test vs batched on the CPU */
    int picks_alone, picks_cpu;    /* steps where that side's greedy pick differs */
} bworst;

/* One decode step of the live sequences on all three sides; a: batched under test, b: alone
 * under test, c: batched on the CPU. Returns the number of live sequences. */
static int batch_step(bside *a, bside *b, bside *c, int step, int V, int *wide, bworst *w) {
    svlm_llama_batch_item ia[NSEQ], ic[NSEQ];
    int idx[NSEQ], nl = 0;
    svlm_err err = {0};
    for (int i = 0; i < NSEQ; i++) {
        if (step < joins(i) || step >= leaves(i)) continue;
        int32_t t = argmax(a->logits[i], V);
        w->picks_alone += argmax(b->logits[i], V) != t;
        w->picks_cpu += argmax(c->logits[i], V) != t;
        ia[nl] = item(a, i, step, t);
        ic[nl] = item(c, i, step, t);
        REQUIRE(!svlm_llama_eval_seq(b->ctx[i], b->seq[i], SVLM_KV_TEXT, 2 + step, &t, NULL, 1, b->logits[i],
                                     0, &err),
                "sequence %d alone, step %d: %s", i, step, err.msg);
        idx[nl++] = i;
    }
    if (!nl) return 0;
    REQUIRE(!svlm_llama_eval_batch(a->batch, ia, nl, &err), "batch under test, step %d: %s", step, err.msg);
    REQUIRE(!svlm_llama_eval_batch(c->batch, ic, nl, &err), "cpu batch, step %d: %s", step, err.msg);
    for (int r = 0; r < nl; r++) {
        const int i = idx[r];
        CHECK(ia[r].status == SVLM_OK && ic[r].status == SVLM_OK, "step %d, sequence %d: %s / %s", step, i,
              ia[r].err_msg, ic[r].err_msg);
        wide[i] |= nl > MATVEC_MAX;
        const double d = test_max_abs_diff(a->logits[i], b->logits[i], (size_t)V);
        worse(!wide[i] ? &w->narrow : on_f16(i) ? &w->wide16 : &w->wide32, d);
        worse(on_f16(i) ? &w->cpu16 : &w->cpu32, test_max_abs_diff(a->logits[i], c->logits[i], (size_t)V));
    }
    return nl;
}

static void test_batching(svlm_llama *m) {
    const int V = svlm_llama_hparams_of(m)->n_vocab;
    bside a = {0}, b = {0}, c = {0};
    bside_setup(m, G, 1, &a);
    bside_setup(m, G, 0, &b);
    bside_setup(m, C, 1, &c);
    double pre32 = 0, pre16 = 0;
    for (int i = 0; i < NSEQ; i++)
        worse(on_f16(i) ? &pre16 : &pre32, test_max_abs_diff(a.logits[i], c.logits[i], (size_t)V));
    judge("batching: prefill (chunks of 1 to 13 tokens) logits max |gpu - cpu|, f32 pages", pre32, 1e-3);
    judge("batching: prefill logits max |gpu - cpu|, f16 pages", pre16, 3e-2);
    int wide[NSEQ] = {0};
    bworst w = {0};
    printf("batching: live sequences per step:");
    for (int step = 0; step < BSTEPS; step++)
        printf(" %d", batch_step(&a, &b, &c, step, V, wide, &w));
    printf("\n");
    judge("batching: batched vs alone on the backend under test, sequences only ever in steps of <= 8 rows, "
          "max |logit diff|",
          w.narrow, 1e-4);
    judge("batching: batched vs alone after steps of > 8 rows, f32 pages, max |logit diff|", w.wide32, 1e-2);
    judge("batching: batched vs alone after steps of > 8 rows, f16 pages, max |logit diff|", w.wide16, 3e-2);
    judge("batching: batched gpu vs batched cpu, f32 pages, max |logit diff|", w.cpu32, 1e-2);
    judge("batching: batched gpu vs batched cpu, f16 pages, max |logit diff|", w.cpu16, 3e-2);
    const int64_t ev = bside_evictions(&a);
    printf("batching: %lld spans evicted; greedy picks differing from the batch under test's: %d alone, %d "
           "on the "
           "cpu (near ties: the logits are within tolerance)\n",
           (long long)ev, w.picks_alone, w.picks_cpu);
    CHECK(ev >= NSEQ, "batching: only %lld evictions", (long long)ev);
    CHECK(ev == bside_evictions(&b) && ev == bside_evictions(&c), "batching: the sides evicted differently");
    bside_free(&a);
    bside_free(&b);
    bside_free(&c);
}

/* ---- 3. the vision encoder --------------------------------------------------------------- */

enum { TILES = 5 };
static const char *const chunks[TILES] = {"01", "03", "05", "07", "09"};
static const char *const vis_types[2] = {"f32", "f16"};

static int vision_data_present(void) {
    char rel[256];
    for (int t = 0; t < 2; t++) {
        snprintf(rel, sizeof rel, "fixtures/vision-tiny/models/tiny-smolvlm-mmproj-%s.gguf", vis_types[t]);
        if (!have(rel)) return 0;
        for (int i = 0; i < TILES; i++) {
            snprintf(rel, sizeof rel, "fixtures/vision-tiny/out-%s/chunk_%s_pixels.f32", vis_types[t],
                     chunks[i]);
            if (!have(rel)) return 0;
            snprintf(rel, sizeof rel, "fixtures/vision-tiny/out-%s/chunk_%s_embd.f32", vis_types[t],
                     chunks[i]);
            if (!have(rel)) return 0;
        }
    }
    return 1;
}

/* The fixture's files of one kind ("pixels", "embd") for all tiles, one after the other. */
static float *read_tiles(const char *dt, const char *kind, size_t per_tile) {
    float *all = xmalloc(sizeof(float) * per_tile * TILES);
    char rel[256];
    for (int i = 0; i < TILES; i++) {
        snprintf(rel, sizeof rel, "fixtures/vision-tiny/out-%s/chunk_%s_%s.f32", dt, chunks[i], kind);
        size_t n = 0;
        float *d = test_read_f32(test_data(rel), &n);
        REQUIRE(d && n == per_tile, "%s: %zu floats, expected %zu", rel, n, per_tile);
        memcpy(all + per_tile * i, d, sizeof(float) * per_tile);
        free(d);
    }
    return all;
}

static void encode(const svlm_mmproj *mp, svlm_kernels *k, int max_batch, const float *px, int n,
                   float *out) {
    svlm_err err = {0};
    svlm_vision_ctx *vc = NULL;
    REQUIRE(!svlm_vision_ctx_create(mp, k, max_batch, &vc, &err), "%s: %s", svlm_kernels_name(k), err.msg);
    REQUIRE(!svlm_vision_encode(vc, px, n, out, &err), "%s: %s", svlm_kernels_name(k), err.msg);
    svlm_vision_ctx_free(vc);
}

/* One projector on backend k in one precision mode, against llama.cpp's and the CPU's outputs. */
static void vision_mode(const svlm_mmproj *mp, svlm_kernels *k, const char *dt, const char *mode,
                        const float *px, const float *ref, const float *cpu, double tol_ref, double tol_cpu,
                        double tol_batch) {
    const size_t tile = (size_t)3 * mp->hp.image_size * mp->hp.image_size;
    const size_t emb = (size_t)mp->hp.tokens_per_tile * mp->hp.proj_dim;
    float *out = xmalloc(sizeof(float) * emb * TILES);
    encode(mp, k, 3, px, TILES, out);
    char what[200];
    snprintf(what, sizeof what, "vision %s, %s: %d tiles in batches of 3 + 2, max |gpu - llama.cpp|", dt,
             mode, TILES);
    judge(what, test_max_abs_diff(out, ref, emb * TILES), tol_ref);
    snprintf(what, sizeof what, "vision %s, %s: %d tiles, max |gpu - cpu|", dt, mode, TILES);
    judge(what, test_max_abs_diff(out, cpu, emb * TILES), tol_cpu);
    /* tile 0 alone, and in the middle of tiles 1, 0, 2 */
    float *px3 = xmalloc(sizeof(float) * tile * 3), *out3 = xmalloc(sizeof(float) * emb * 3);
    memcpy(px3, px + tile, sizeof(float) * tile);
    memcpy(px3 + tile, px, sizeof(float) * tile);
    memcpy(px3 + 2 * tile, px + 2 * tile, sizeof(float) * tile);
    encode(mp, k, 3, px3, 3, out3);
    encode(mp, k, 1, px, 1, out);
    snprintf(what, sizeof what, "vision %s, %s: tile alone vs the same tile 2nd in a batch of 3, max |diff|",
             dt, mode);
    judge(what, test_max_abs_diff(out, out3 + emb, emb), tol_batch);
    free(px3);
    free(out3);
    free(out);
}

/* g32: a backend under test created with SVLM_CUDA_TF32=0 (the variable must stay set while it
 * runs: the CUDA backend reads it at each product). */
static void test_vision(svlm_mmproj *mps[2], svlm_kernels *g32) {
    for (int t = 0; t < 2; t++) {
        const char *dt = vis_types[t];
        const svlm_mmproj *mp = mps[t];
        const size_t tile = (size_t)3 * mp->hp.image_size * mp->hp.image_size;
        const size_t emb = (size_t)mp->hp.tokens_per_tile * mp->hp.proj_dim;
        float *px = read_tiles(dt, "pixels", tile), *ref = read_tiles(dt, "embd", emb);
        float *cpu = xmalloc(sizeof(float) * emb * TILES);
        encode(mp, C, 3, px, TILES, cpu);
        const double tol = t ? 4e-3 : 1e-3; /* test_vision_encoder's */
        printf("vision %s: for scale, the cpu backend is %.3g off llama.cpp (largest |embedding| %.3g)\n", dt,
               test_max_abs_diff(cpu, ref, emb * TILES), max_abs(ref, emb * TILES));
        char *old = getenv("SVLM_CUDA_TF32") ? strdup(getenv("SVLM_CUDA_TF32")) : NULL;
        setenv("SVLM_CUDA_TF32", "0", 1);
        vision_mode(mp, g32, dt, "SVLM_CUDA_TF32=0", px, ref, cpu, tol, 1e-3, 1e-3);
        restore_env("SVLM_CUDA_TF32", old);
        free(old);
        /* default precision: cuBLAS picks other kernels for other batch sizes, and the f16 inputs of
         * flash attention turn their last-bit differences into f16 steps (2^-10) */
        vision_mode(mp, G, dt, "default precision", px, ref, cpu, 1.5e-2, 1.5e-2, 3e-3);
        free(px);
        free(ref);
        free(cpu);
    }
}

/* ---- main -------------------------------------------------------------------------------- */

int test_main(void) {
    svlm_err err = {0};
    G = test_gpu_backend();
    const int have_llm = have("models/stories260K.gguf"), have_vision = vision_data_present();
    if (!have_llm && !have_vision) {
        svlm_kernels_destroy(G);
        SKIP("no stories260K.gguf and no fixtures/vision-tiny (set SVLM_TEST_DATA to the shared/ folder)");
    }
    REQUIRE(svlm_kernels_create_cpu(0, &C, &err) == SVLM_OK, "cpu backend: %s", err.msg);
    printf("backend under test: %s; reference: %s\n", svlm_kernels_name(G), svlm_kernels_name(C));

    svlm_llama *m = NULL;
    if (have_llm) {
        REQUIRE(svlm_llama_load(test_data("models/stories260K.gguf"), &m, &err) == SVLM_OK, "%s", err.msg);
        test_paged(m);
        test_batching(m);
    } else {
        printf("paged cache and batching SKIPPED: no models/stories260K.gguf in the test data\n");
    }

    svlm_mmproj *mps[2] = {NULL, NULL};
    if (have_vision) {
        char rel[256];
        for (int t = 0; t < 2; t++) {
            snprintf(rel, sizeof rel, "fixtures/vision-tiny/models/tiny-smolvlm-mmproj-%s.gguf",
                     vis_types[t]);
            REQUIRE(svlm_mmproj_load(test_data(rel), &mps[t], &err) == SVLM_OK, "%s: %s", rel, err.msg);
        }
        char *old = getenv("SVLM_CUDA_TF32") ? strdup(getenv("SVLM_CUDA_TF32")) : NULL;
        setenv("SVLM_CUDA_TF32", "0", 1); /* set before creating it, in case it is read there */
        svlm_kernels *g32 = test_gpu_backend();
        restore_env("SVLM_CUDA_TF32", old);
        free(old);
        test_vision(mps, g32);
        svlm_kernels_destroy(g32);
    } else {
        printf("vision encoder SKIPPED: fixtures/vision-tiny incomplete in the test data\n");
    }

    printf("stream: worst comparison at %.3g of its tolerance (%s)\n", worst_share, worst_what);
    svlm_kernels_destroy(G); /* before the models whose weights it may hold copies of */
    svlm_kernels_destroy(C);
    svlm_llama_free(m);
    for (int t = 0; t < 2; t++)
        svlm_mmproj_free(mps[t]);
    return 0;
}
