/*
 * A context that follows evictions on the kernels' side (svlm_llama_ctx_follow_moves: the rows an
 * eviction moved are moved and re-rotated from raw keys in one op) holds exactly what one that
 * brings them over again from the pages holds: stories260K, a stream-like sequence (sinks, then
 * frames of 12 rows that push the oldest out, dialogue turns between them), F32 and F16 caches,
 * through svlm_llama_eval_seq and through the multi-sequence pass. Compared bit for bit: the
 * logits of every frame and every row of the working copies. Also: the eviction record
 * (svlm_kv_version.gone) for one run and for spans apart; a decode step through a batch (which
 * keeps no raw key) and a context used for another sequence in between. test_cuda_llama_shift
 * runs it on a GPU (SVLM_TEST_SHIFT_ON_GPU=1), where the moves are CUDA kernels.
 */
#include <stdlib.h>
#include <string.h>

#include "llm/llama_internal.h"
#include "test.h"
#include "test_working_copy.h"
#include "test_gpu.h"

enum { FRAME = 12, ROUNDS = 16, SIDES = 6 };

/* Sides 0, 2, 4 follow moves; 1, 3, 5 do not. 0/1 run alone; 2/3 and 4/5 share multi passes. */
typedef struct world {
    svlm_kv_pool *pool;
    svlm_kv_seq *seq[SIDES];
    svlm_llama_ctx *ctx[SIDES];
} world;

static void world_make(svlm_llama *m, svlm_kernels *k, svlm_dtype type, world *w) {
    svlm_err err = {0};
    REQUIRE(!svlm_llama_kv_pool_create(m, type, 8, 512, &w->pool, &err), "%s", err.msg);
    const svlm_kv_policy pol = {{4, 3 * FRAME, 24}, 1};
    for (int i = 0; i < SIDES; i++) {
        REQUIRE(!svlm_kv_seq_create(w->pool, &pol, &w->seq[i], &err), "%s", err.msg);
        REQUIRE(!svlm_llama_ctx_create(m, k, 128, type, &w->ctx[i], &err), "%s", err.msg);
        REQUIRE(!svlm_llama_ctx_follow_moves(w->ctx[i], i % 2 == 0, &err), "%s", err.msg);
        const int32_t sink[4] = {1, 2 + i / 2, 30, 40};
        REQUIRE(!svlm_llama_eval_seq(w->ctx[i], w->seq[i], SVLM_KV_SINK, 0, sink, NULL, 4, NULL, 0, &err),
                "%s", err.msg);
    }
}

static void world_free(world *w) {
    for (int i = 0; i < SIDES; i++) {
        svlm_kv_seq_free(w->seq[i]);
        svlm_llama_ctx_free(w->ctx[i]);
    }
    svlm_kv_pool_free(w->pool);
}

/* A frame of round r for pair p: tokens, every third row an embedding row. */
static void frame(int p, int r, int V, int E, int32_t *ids, float *embd) {
    int ne = 0;
    for (int j = 0; j < FRAME; j++) {
        if (j % 3 == 2) {
            ids[j] = -1;
            for (int d = 0; d < E; d++)
                embd[(size_t)ne * E + d] =
                    0.05f * __builtin_sinf(0.37f * (float)(d + 11 * j + 101 * p + 7 * r));
            ne++;
        } else {
            ids[j] = 1 + (31 * j + 17 * p + 5 * r) % (V - 1);
        }
    }
}

static void run(svlm_llama *m, svlm_kernels *k, svlm_dtype type) {
    const char *tname = type == SVLM_F16 ? "f16" : "f32";
    svlm_err err = {0};
    const int V = svlm_llama_hparams_of(m)->n_vocab, E = svlm_llama_hparams_of(m)->n_embd;
    world w = {0};
    world_make(m, k, type, &w);
    svlm_llama_multi *mb = NULL;
    REQUIRE(!svlm_llama_multi_create(m, k, 2 * FRAME, &mb, &err), "%s", err.msg);
    svlm_llama_batch *bt = NULL;
    REQUIRE(!svlm_llama_batch_create(m, k, 2, &bt, &err), "%s", err.msg);
    int32_t ids[3][FRAME];
    float *embd = malloc(sizeof(float) * 3 * FRAME * (size_t)E);
    float *la = malloc(sizeof(float) * (size_t)V), *lb = malloc(sizeof(float) * (size_t)V);
    REQUIRE(embd && la && lb, "out of memory");
    int logits_same = 1, copies_same = 1;
    for (int r = 0; r < ROUNDS; r++) {
        for (int p = 0; p < 3; p++)
            frame(p, r, V, E, ids[p], embd + (size_t)p * FRAME * E);
        /* pair 0 alone, with logits */
        for (int s = 0; s < 2; s++)
            REQUIRE(!svlm_llama_eval_seq(w.ctx[s], w.seq[s], SVLM_KV_VISION, r, ids[0], embd, FRAME,
                                         s ? lb : la, 0, &err),
                    "%s", err.msg);
        logits_same &= !memcmp(la, lb, sizeof(float) * (size_t)V);
        /* pairs 1 and 2 in two multi passes: followers together, the others together */
        for (int s = 0; s < 2; s++) {
            svlm_llama_multi_item items[2];
            for (int p = 1; p < 3; p++)
                items[p - 1] = (svlm_llama_multi_item){.ctx = w.ctx[2 * p + s],
                                                       .seq = w.seq[2 * p + s],
                                                       .kind = SVLM_KV_VISION,
                                                       .tag = r,
                                                       .ids = ids[p],
                                                       .embd = embd + (size_t)p * FRAME * E,
                                                       .n = FRAME};
            REQUIRE(!svlm_llama_eval_seq_multi(mb, items, 2, &err), "%s", err.msg);
            CHECK(items[0].status == SVLM_OK && items[1].status == SVLM_OK, "%s: round %d: %s %s", tname, r,
                  items[0].err_msg, items[1].err_msg);
        }
        if (r % 3 == 1) /* a dialogue turn between frames: text spans to move and evict as well */
            for (int i = 0; i < SIDES; i++) {
                const int32_t turn[5] = {5, 6 + r % 7, 7, 8 + i / 2, 9};
                REQUIRE(
                    !svlm_llama_eval_seq(w.ctx[i], w.seq[i], SVLM_KV_TEXT, r, turn, NULL, 5, NULL, 0, &err),
                    "%s", err.msg);
            }
        if (r == 5) /* a decode step through a batch on sides 0 and 1: no raw key for its row */
            for (int i = 0; i < 2; i++) {
                svlm_llama_batch_item it = {
                    .ctx = w.ctx[i], .seq = w.seq[i], .kind = SVLM_KV_TEXT, .tag = 50, .id = 9};
                REQUIRE(!svlm_llama_eval_batch(bt, &it, 1, &err) && it.status == SVLM_OK, "%s %s", err.msg,
                        it.err_msg);
            }
        if (r == 9) { /* side 0's context serves a fork once: its copy and raw keys are rebuilt next */
            svlm_kv_seq *f = NULL;
            REQUIRE(!svlm_kv_seq_fork(w.seq[0], &f, &err), "%s", err.msg);
            const int32_t q = 7;
            REQUIRE(!svlm_llama_eval_seq(w.ctx[0], f, SVLM_KV_TEXT, 99, &q, NULL, 1, NULL, 0, &err), "%s",
                    err.msg);
            svlm_kv_seq_free(f);
        }
        for (int p = 0; p < 3; p++)
            if (!(p == 0 && r == 9)) /* side 0's context holds the fork now */
                copies_same &= test_same_working_copies(w.ctx[2 * p], w.ctx[2 * p + 1]);
    }
    CHECK(logits_same, "%s: a context that follows moves gave other logits", tname);
    CHECK(copies_same, "%s: a context that follows moves holds other rows", tname);
    for (int p = 0; p < 3; p++) {
        const svlm_llama_ctx *c = w.ctx[2 * p];
        CHECK(c->moves >= ROUNDS - 6 && c->moved_rows >= c->moves * FRAME,
              "%s: side %d made %lld moves of %lld rows", tname, 2 * p, (long long)c->moves,
              (long long)c->moved_rows);
        CHECK(w.ctx[2 * p + 1]->moves == 0, "%s: a context that does not follow moves made %lld", tname,
              (long long)w.ctx[2 * p + 1]->moves);
    }
    printf(
        "%s: %d frames of %d rows on 3 pairs (alone, multi pass), evictions every frame, logits and working "
        "copies compared bit for bit; followers moved %lld, %lld, %lld rows in %lld, %lld, %lld moves\n",
        tname, ROUNDS, FRAME, (long long)w.ctx[0]->moved_rows, (long long)w.ctx[2]->moved_rows,
        (long long)w.ctx[4]->moved_rows, (long long)w.ctx[0]->moves, (long long)w.ctx[2]->moves,
        (long long)w.ctx[4]->moves);
    free(embd);
    free(la);
    free(lb);
    svlm_llama_multi_free(mb);
    svlm_llama_batch_free(bt);
    world_free(&w);
}

/* svlm_kv_version.gone: one run of evicted spans, or 0 when they lay apart. */
static void eviction_record(void) {
    svlm_err err = {0};
    svlm_kv_pool *pool = NULL;
    const svlm_kv_pool_params pp = {
        .n_layer = 1, .kv_dim = 4, .type = SVLM_F32, .page_tokens = 4, .max_pages = 64};
    REQUIRE(!svlm_kv_pool_create(&pp, &pool, &err), "%s", err.msg);
    const svlm_kv_policy pol = {{2, 8, 16}, 1};
    svlm_kv_seq *s = NULL;
    REQUIRE(!svlm_kv_seq_create(pool, &pol, &s, &err), "%s", err.msg);
    int first = 0;
    REQUIRE(!svlm_kv_seq_append(s, SVLM_KV_SINK, 0, 2, &first, &err), "%s", err.msg);
    REQUIRE(!svlm_kv_seq_append(s, SVLM_KV_VISION, 1, 4, &first, &err), "%s", err.msg);
    REQUIRE(!svlm_kv_seq_append(s, SVLM_KV_VISION, 2, 4, &first, &err), "%s", err.msg);
    REQUIRE(!svlm_kv_seq_append(s, SVLM_KV_TEXT, 3, 3, &first, &err), "%s", err.msg);
    REQUIRE(!svlm_kv_seq_append(s, SVLM_KV_VISION, 4, 4, &first, &err), "%s", err.msg); /* evicts frame 1 */
    svlm_kv_version v = svlm_kv_seq_version(s);
    CHECK(v.kept == 2 && v.gone == 4, "one frame out: kept %d gone %d (want 2, 4)", v.kept, v.gone);
    /* a frame of 8 evicts frames 2 and 4, which the turn keeps apart */
    REQUIRE(!svlm_kv_seq_append(s, SVLM_KV_VISION, 5, 8, &first, &err), "%s", err.msg);
    v = svlm_kv_seq_version(s);
    CHECK(v.kept == 2 && v.gone == 0, "spans apart: kept %d gone %d (want 2, 0)", v.kept, v.gone);
    /* two adjacent frames out at once form one run */
    REQUIRE(!svlm_kv_seq_append(s, SVLM_KV_TEXT, 6, 3, &first, &err), "%s", err.msg);
    REQUIRE(!svlm_kv_seq_append(s, SVLM_KV_VISION, 7, 4, &first, &err), "%s", err.msg);
    v = svlm_kv_seq_version(s);
    CHECK(v.gone == 8, "the frame of 8 out: gone %d (want 8)", v.gone);
    svlm_kv_seq_free(s);
    svlm_kv_pool_free(pool);
}

int test_main(void) {
    eviction_record();
    const char *path = test_data("models/stories260K.gguf");
    if (!path) SKIP("test data folder not found (set SVLM_TEST_DATA): no stories260K.gguf");
    svlm_err err = {0};
    svlm_llama *m = NULL;
    svlm_kernels *k = NULL;
    REQUIRE(!svlm_llama_load(path, &m, &err), "%s", err.msg);
    if (getenv("SVLM_TEST_SHIFT_ON_GPU")) /* test_cuda_llama_shift: the backend under test */
        k = test_gpu_backend();
    else
        REQUIRE(!svlm_kernels_create_cpu(2, &k, &err), "%s", err.msg);
    printf("backend: %s\n", svlm_kernels_name(k));
    run(m, k, SVLM_F32);
    run(m, k, SVLM_F16);
    svlm_kernels_destroy(k);
    svlm_llama_free(m);
    return 0;
}
