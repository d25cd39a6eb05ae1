/*
 * Prefill of several sequences in one pass (svlm_llama_eval_seq_multi) gives what separate
 * svlm_llama_eval_seq calls give: stories260K, five sequences (one on F16 pages) with sinks and
 * small windows so that rounds evict, chunks of 1 to 40 rows mixing tokens and embedding rows
 * (ids < 0), compared after every round by the logits of one probe token per sequence. Tolerance
 * 1e-2, as for continuous batching from 16 rows on: the pass's products run as one GEMM over all
 * rows where a short chunk alone takes the CPU's dot kernels (measured 7e-4).
 * The pass writes the pages with a pool of 3 threads, as the engine's does.
 * Also: an item that fails alone, shared contexts, too many rows.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/threadpool.h"
#include "llm/llama.h"
#include "test.h"

enum { NS = 5, ROUNDS = 8, MAXN = 40 };

typedef struct side {
    svlm_kv_pool *pool, *pool16;
    svlm_kv_seq *seq[NS];
    svlm_llama_ctx *ctx[NS];
} side;

static void setup(svlm_llama *m, svlm_kernels *k, side *s) {
    svlm_err err = {0};
    REQUIRE(!svlm_llama_kv_pool_create(m, SVLM_F32, 8, 512, &s->pool, &err), "%s", err.msg);
    REQUIRE(!svlm_llama_kv_pool_create(m, SVLM_F16, 8, 128, &s->pool16, &err), "%s", err.msg);
    for (int i = 0; i < NS; i++) {
        svlm_kv_policy pol = {{4, 60 + 10 * i, 24}, 1};
        REQUIRE(!svlm_kv_seq_create(i == 1 ? s->pool16 : s->pool, &pol, &s->seq[i], &err), "%s", err.msg);
        REQUIRE(!svlm_llama_ctx_create(m, k, 256, SVLM_F32, &s->ctx[i], &err), "%s", err.msg);
        const int32_t sink[4] = {1, 2 + i, 30 + i, 40};
        REQUIRE(!svlm_llama_eval_seq(s->ctx[i], s->seq[i], SVLM_KV_SINK, 0, sink, NULL, 4, NULL, 0, &err),
                "%s", err.msg);
    }
}

static void teardown(side *s) {
    for (int i = 0; i < NS; i++) {
        svlm_kv_seq_free(s->seq[i]);
        svlm_llama_ctx_free(s->ctx[i]);
    }
    svlm_kv_pool_free(s->pool);
    svlm_kv_pool_free(s->pool16);
}

/* Chunk of sequence i in round r: n rows, every third one an embedding row. */
static int chunk(int i, int r, int V, int E, int32_t *ids, float *embd) {
    const int n = 1 + (7 * i + 13 * r) % MAXN;
    int ne = 0;
    for (int j = 0; j < n; j++) {
        if (j % 3 == 2) {
            ids[j] = -1;
            for (int d = 0; d < E; d++)
                embd[(size_t)ne * E + d] = 0.05f * sinf(0.37f * (float)(d + 11 * j + 101 * i + 7 * r));
            ne++;
        } else {
            ids[j] = 1 + (31 * j + 17 * i + 5 * r) % (V - 1);
        }
    }
    return n;
}

/* Logits of one probe token per sequence: on a fork, so the sequence itself moves on unchanged. */
static void probe(svlm_llama *m, side *s, int i, float *logits) {
    (void)m;
    svlm_err err = {0};
    svlm_kv_seq *f = NULL;
    REQUIRE(!svlm_kv_seq_fork(s->seq[i], &f, &err), "%s", err.msg);
    const int32_t id = 7;
    REQUIRE(!svlm_llama_eval_seq(s->ctx[i], f, SVLM_KV_TEXT, 999, &id, NULL, 1, logits, 0, &err), "%s",
            err.msg);
    svlm_kv_seq_free(f);
}

int test_main(void) {
    const char *path = test_data("models/stories260K.gguf");
    if (!path) SKIP("test data folder not found (set SVLM_TEST_DATA): no stories260K.gguf");
    svlm_err err = {0};
    svlm_llama *m = NULL;
    svlm_kernels *k = NULL;
    REQUIRE(!svlm_llama_load(path, &m, &err), "%s", err.msg);
    REQUIRE(!svlm_kernels_create_cpu(2, &k, &err), "%s", err.msg);
    const int V = svlm_llama_hparams_of(m)->n_vocab, E = svlm_llama_hparams_of(m)->n_embd;
    side a = {0}, b = {0};
    setup(m, k, &a);
    setup(m, k, &b);
    svlm_llama_multi *mb = NULL;
    REQUIRE(!svlm_llama_multi_create(m, k, NS * MAXN, &mb, &err), "%s", err.msg);
    svlm_pool *pages_pool = NULL; /* the engine's way: pages written in parallel */
    REQUIRE(!svlm_pool_create(3, &pages_pool, &err), "%s", err.msg);
    svlm_llama_multi_set_pool(mb, pages_pool);
    int32_t *ids = malloc(sizeof(int32_t) * NS * MAXN);
    float *embd = malloc(sizeof(float) * NS * MAXN * (size_t)E);
    float *la = malloc(sizeof(float) * (size_t)V), *lb = malloc(sizeof(float) * (size_t)V);
    REQUIRE(ids && embd && la && lb, "out of memory");
    double worst = 0;
    for (int r = 0; r < ROUNDS; r++) {
        svlm_llama_multi_item items[NS];
        for (int i = 0; i < NS; i++) {
            int32_t *id = ids + i * MAXN;
            float *em = embd + (size_t)i * MAXN * E;
            const int n = chunk(i, r, V, E, id, em);
            items[i] = (svlm_llama_multi_item){.ctx = a.ctx[i],
                                               .seq = a.seq[i],
                                               .kind = SVLM_KV_VISION,
                                               .tag = 100 * r + i,
                                               .ids = id,
                                               .embd = em,
                                               .n = n};
            REQUIRE(!svlm_llama_eval_seq(b.ctx[i], b.seq[i], SVLM_KV_VISION, 100 * r + i, id, em, n, NULL, 0,
                                         &err),
                    "%s", err.msg);
        }
        REQUIRE(!svlm_llama_eval_seq_multi(mb, items, NS, &err), "%s", err.msg);
        for (int i = 0; i < NS; i++) {
            CHECK(items[i].status == SVLM_OK, "round %d item %d: %s", r, i, items[i].err_msg);
            CHECK(svlm_kv_seq_len(a.seq[i]) == svlm_kv_seq_len(b.seq[i]),
                  "round %d seq %d: %d rows against %d", r, i, svlm_kv_seq_len(a.seq[i]),
                  svlm_kv_seq_len(b.seq[i]));
            probe(m, &a, i, la);
            probe(m, &b, i, lb);
            for (int v = 0; v < V; v++)
                worst = fmax(worst, fabs((double)la[v] - lb[v]));
        }
    }
    printf(
        "%d sequences x %d rounds of 1 to %d rows (tokens and embedding rows, window evictions, f16 pages): "
        "max |multi - separate| logit %.3g (tolerance 1e-2)\n",
        NS, ROUNDS, MAXN, worst);
    CHECK(worst <= 1e-2, "multi-sequence prefill differs from separate calls by %g", worst);

    /* a bad item fails alone; bad arguments are refused */
    const int32_t out_of_range[3] = {5, V + 5, 7};
    svlm_llama_multi_item bad[2] = {
        {.ctx = a.ctx[0], .seq = a.seq[0], .kind = SVLM_KV_VISION, .ids = ids, .n = 3},
        {.ctx = a.ctx[1], .seq = a.seq[1], .kind = SVLM_KV_VISION, .ids = out_of_range, .n = 3},
    };
    ids[0] = 5, ids[1] = 6, ids[2] = 7;
    REQUIRE(!svlm_llama_eval_seq_multi(mb, bad, 2, &err), "%s", err.msg);
    CHECK(bad[0].status == SVLM_OK && bad[1].status == SVLM_E_INVALID, "statuses %d %d (%s)", bad[0].status,
          bad[1].status, bad[1].err_msg);
    bad[1].ctx = a.ctx[0];
    bad[1].ids = ids;
    CHECK(svlm_llama_eval_seq_multi(mb, bad, 2, &err) == SVLM_E_INVALID, "a shared context was accepted");
    svlm_llama_multi_item many[NS];
    for (int i = 0; i < NS; i++)
        many[i] = (svlm_llama_multi_item){
            .ctx = a.ctx[i], .seq = a.seq[i], .kind = SVLM_KV_VISION, .ids = ids, .n = MAXN + 1};
    CHECK(svlm_llama_eval_seq_multi(mb, many, NS, &err) == SVLM_E_INVALID, "more rows than the pass holds");

    free(ids);
    free(embd);
    free(la);
    free(lb);
    svlm_llama_multi_free(mb);
    svlm_pool_destroy(pages_pool);
    teardown(&a);
    teardown(&b);
    svlm_kernels_destroy(k);
    svlm_llama_free(m);
    return 0;
}
