/*
 * Continuous batching (svlm_llama_eval_batch): decode steps of several sequences evaluated
 * together give the logits that separate svlm_llama_eval_seq calls give, through window
 * evictions, F16 pages, batches of 1 to 16, an item that fails alone, and bad arguments; and
 * the greedy forms (a batch item's next, svlm_llama_eval_greedy, svlm_llama_eval_seq_greedy)
 * give the argmax of those logits.
 * Tolerance 1e-4 below 16 rows (the CPU runs the same dot products as for one row: measured 0;
 * this model's weights are F32, which no packed GEMM takes; packed ones take it from 6 rows on at
 * the AVX-512 level), 1e-2 from 16 rows on, where the CPU's products switch to a GEMM.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "llm/llama.h"
#include "test.h"

enum { MAXS = 16, STEPS = 24 };

typedef struct side {
    svlm_kv_pool *pool, *pool16;
    svlm_kv_seq *seq[MAXS];
    svlm_llama_ctx *ctx[MAXS];
    float *logits[MAXS];
} side;

static int argmax(const float *x, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* n sequences with prompts of different lengths; sequence 2 on F16 pages; small text windows so
 * that the steps evict. */
static void setup(svlm_llama *m, svlm_kernels *k, side *s, int n, int V) {
    svlm_err err = {0};
    REQUIRE(!svlm_llama_kv_pool_create(m, SVLM_F32, 8, 256, &s->pool, &err), "%s", err.msg);
    REQUIRE(!svlm_llama_kv_pool_create(m, SVLM_F16, 8, 64, &s->pool16, &err), "%s", err.msg);
    for (int i = 0; i < n; i++) {
        svlm_kv_policy pol = {{4, 0, 24 + 4 * i}, 1};
        REQUIRE(!svlm_kv_seq_create(i == 2 ? s->pool16 : s->pool, &pol, &s->seq[i], &err), "%s", err.msg);
        REQUIRE(!svlm_llama_ctx_create(m, k, 128, SVLM_F32, &s->ctx[i], &err), "%s", err.msg);
        s->logits[i] = malloc(sizeof(float) * (size_t)V);
        int32_t ids[20];
        const int len = 5 + 3 * i % 13;
        for (int j = 0; j < len; j++)
            ids[j] = 1 + (37 * j + 11 * i) % (V - 1);
        REQUIRE(!svlm_llama_eval_seq(s->ctx[i], s->seq[i], SVLM_KV_SINK, 0, ids, NULL, 4, NULL, 0, &err),
                "%s", err.msg);
        REQUIRE(!svlm_llama_eval_seq(s->ctx[i], s->seq[i], SVLM_KV_TEXT, 1, ids + 4, NULL, len - 4,
                                     s->logits[i], 0, &err),
                "%s", err.msg);
    }
}

static void teardown(side *s, int n) {
    for (int i = 0; i < n; i++) {
        svlm_kv_seq_free(s->seq[i]);
        svlm_llama_ctx_free(s->ctx[i]);
        free(s->logits[i]);
    }
    svlm_kv_pool_free(s->pool);
    svlm_kv_pool_free(s->pool16);
}

/* n sequences stepped greedily STEPS times, batched on one side and one by one on the other. */
static void compare(svlm_llama *m, svlm_kernels *k, int n) {
    const int V = svlm_llama_hparams_of(m)->n_vocab;
    side a = {0}, b = {0};
    setup(m, k, &a, n, V);
    setup(m, k, &b, n, V);
    svlm_llama_batch *batch = NULL;
    svlm_err err = {0};
    REQUIRE(!svlm_llama_batch_create(m, k, n, &batch, &err), "%s", err.msg);
    double worst = 0;
    int same = 1, greedy_same = 1;
    for (int step = 0; step < STEPS; step++) {
        svlm_llama_batch_item items[MAXS];
        int32_t next[MAXS];
        for (int i = 0; i < n; i++) {
            int32_t ta = argmax(a.logits[i], V), tb = argmax(b.logits[i], V);
            same &= ta == tb;
            items[i] = (svlm_llama_batch_item){.ctx = a.ctx[i],
                                               .seq = a.seq[i],
                                               .kind = SVLM_KV_TEXT,
                                               .tag = 2 + step,
                                               .id = ta,
                                               .logits = a.logits[i],
                                               .next = i % 2 ? &next[i] : NULL};
            next[i] = -1;
            REQUIRE(!svlm_llama_eval_seq(b.ctx[i], b.seq[i], SVLM_KV_TEXT, 2 + step, &tb, NULL, 1,
                                         b.logits[i], 0, &err),
                    "%s", err.msg);
        }
        REQUIRE(!svlm_llama_eval_batch(batch, items, n, &err), "%s", err.msg);
        for (int i = 0; i < n; i++) {
            CHECK(items[i].status == SVLM_OK, "item %d: %s", i, items[i].err_msg);
            if (i % 2) greedy_same &= next[i] == argmax(a.logits[i], V);
            for (int v = 0; v < V; v++) {
                double d = fabs((double)a.logits[i][v] - b.logits[i][v]);
                if (!(d <= worst)) worst = d;
            }
        }
    }
    CHECK(same, "batch of %d: greedy tokens differ from separate steps", n);
    CHECK(greedy_same, "batch of %d: an item's next is not the argmax of its logits", n);
    /* below 16 rows the CPU's products are the same dot products as for one row; from 16 on they
     * run as a GEMM, whose other summation order (2e-4 at the first step) compounds over the steps */
    const double tol = n < 16 ? 1e-4 : 1e-2;
    CHECK(worst <= tol, "batch of %d: logits differ from separate steps by %g (tolerance %g)", n, worst, tol);
    printf("batch of %d, %d steps through window evictions: max |batched - separate| logit %.3g\n", n, STEPS,
           worst);
    svlm_llama_batch_free(batch);
    teardown(&a, n);
    teardown(&b, n);
}

/* One bad item (a token beyond the vocabulary) fails alone; shared contexts are refused. */
static void errors(svlm_llama *m, svlm_kernels *k) {
    const int V = svlm_llama_hparams_of(m)->n_vocab;
    side a = {0}, b = {0};
    setup(m, k, &a, 3, V);
    setup(m, k, &b, 3, V);
    svlm_llama_batch *batch = NULL;
    svlm_err err = {0};
    REQUIRE(!svlm_llama_batch_create(m, k, 3, &batch, &err), "%s", err.msg);
    svlm_llama_batch_item items[3];
    for (int i = 0; i < 3; i++)
        items[i] = (svlm_llama_batch_item){.ctx = a.ctx[i],
                                           .seq = a.seq[i],
                                           .kind = SVLM_KV_TEXT,
                                           .tag = 9,
                                           .id = i == 1 ? V + 5 : 7,
                                           .logits = a.logits[i]};
    REQUIRE(!svlm_llama_eval_batch(batch, items, 3, &err), "%s", err.msg);
    CHECK(items[1].status == SVLM_E_INVALID && strstr(items[1].err_msg, "out of range"), "bad token: %d %s",
          items[1].status, items[1].err_msg);
    CHECK(items[0].status == SVLM_OK && items[2].status == SVLM_OK, "good items failed: %s / %s",
          items[0].err_msg, items[2].err_msg);
    for (int i = 0; i < 3; i += 2) {
        int32_t t = 7;
        REQUIRE(!svlm_llama_eval_seq(b.ctx[i], b.seq[i], SVLM_KV_TEXT, 9, &t, NULL, 1, b.logits[i], 0, &err),
                "%s", err.msg);
        double d = 0;
        for (int v = 0; v < V; v++)
            d = fmax(d, fabs((double)a.logits[i][v] - b.logits[i][v]));
        CHECK(d <= 1e-4, "item %d beside a failing one differs by %g", i, d);
    }
    items[1] = items[0];
    CHECK(svlm_llama_eval_batch(batch, items, 2, &err) == SVLM_E_INVALID, "a shared context was accepted");
    CHECK(svlm_llama_eval_batch(batch, items, 4, &err) == SVLM_E_INVALID, "4 items in a batch of 3 accepted");
    CHECK(svlm_llama_eval_batch(batch, items, 0, &err) == SVLM_E_INVALID, "an empty batch accepted");
    svlm_llama_batch *none = NULL;
    CHECK(svlm_llama_batch_create(m, k, 0, &none, &err) == SVLM_E_INVALID && !none, "a batch of 0 accepted");
    svlm_llama_batch_free(batch);
    teardown(&a, 3);
    teardown(&b, 3);
}

/* The greedy forms against the argmax of the logits forms, step by step on twin contexts. */
static void greedy_forms(svlm_llama *m, svlm_kernels *k) {
    const int V = svlm_llama_hparams_of(m)->n_vocab;
    svlm_err err = {0};
    side a = {0}, b = {0};
    setup(m, k, &a, 1, V);
    setup(m, k, &b, 1, V);
    svlm_llama_ctx *pa = NULL, *pb = NULL;
    REQUIRE(!svlm_llama_ctx_create(m, k, 64, SVLM_F32, &pa, &err), "%s", err.msg);
    REQUIRE(!svlm_llama_ctx_create(m, k, 64, SVLM_F32, &pb, &err), "%s", err.msg);
    const int32_t prompt[5] = {1, 403, 9, 77, 250};
    int32_t ta = -1, tb = -1, ua = -1, ub = -1;
    REQUIRE(!svlm_llama_eval(pa, prompt, NULL, 5, a.logits[0], 0, &err), "%s", err.msg);
    REQUIRE(!svlm_llama_eval_greedy(pb, prompt, NULL, 5, &tb, &err), "%s", err.msg);
    ta = argmax(a.logits[0], V);
    ub = argmax(b.logits[0], V); /* setup's logits: the sequence's next token */
    int same_plain = ta == tb, same_seq = 1;
    for (int step = 0; step < STEPS; step++) {
        REQUIRE(!svlm_llama_eval(pa, &ta, NULL, 1, a.logits[0], 0, &err), "%s", err.msg);
        REQUIRE(!svlm_llama_eval_greedy(pb, &tb, NULL, 1, &tb, &err), "%s", err.msg);
        ta = argmax(a.logits[0], V);
        same_plain &= ta == tb;
        ua = ub;
        REQUIRE(!svlm_llama_eval_seq(a.ctx[0], a.seq[0], SVLM_KV_TEXT, 2 + step, &ua, NULL, 1, a.logits[0], 0,
                                     &err),
                "%s", err.msg);
        REQUIRE(
            !svlm_llama_eval_seq_greedy(b.ctx[0], b.seq[0], SVLM_KV_TEXT, 2 + step, &ub, NULL, 1, &ub, &err),
            "%s", err.msg);
        same_seq &= ub == argmax(a.logits[0], V);
        ub = argmax(a.logits[0], V); /* both sides go on from the same token */
    }
    CHECK(same_plain, "svlm_llama_eval_greedy's tokens differ from the argmax of svlm_llama_eval's logits");
    CHECK(same_seq, "svlm_llama_eval_seq_greedy's tokens differ from the argmax of svlm_llama_eval_seq's");
    svlm_llama_ctx_free(pa);
    svlm_llama_ctx_free(pb);
    teardown(&a, 1);
    teardown(&b, 1);
}

int test_main(void) {
    test_data_or_skip();
    svlm_err err = {0};
    svlm_llama *m = NULL;
    svlm_kernels *k = NULL;
    REQUIRE(svlm_llama_load(test_data("models/stories260K.gguf"), &m, &err) == SVLM_OK, "%s", err.msg);
    REQUIRE(svlm_kernels_create_cpu(2, &k, &err) == SVLM_OK, "%s", err.msg);
    const int sizes[] = {1, 2, 5, 9, 16};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        compare(m, k, sizes[i]);
    errors(m, k);
    greedy_forms(m, k);
    svlm_kernels_destroy(k);
    svlm_llama_free(m);
    return 0;
}
