#include "bench_batch.h"

#include <stdlib.h>

#include "cli.h"
#include "common/err.h"

/* Random prompt tokens, the same for every run. */
static void fill_ids(int32_t *ids, int n, int n_vocab, uint64_t seed) {
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 88172645463325252ull;
    for (int i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        ids[i] = (int32_t)(x % (uint64_t)n_vocab);
    }
}

svlm_status cli_bench_decode_batch(svlm_llama *m, svlm_kernels *k, int n_seq, int prompt, int steps, int reps,
                                   double *tps, svlm_err *err) {
    *tps = 0;
    const int V = svlm_llama_hparams_of(m)->n_vocab, n_ctx = prompt + steps + 8;
    svlm_kv_pool *pool = NULL;
    svlm_llama_batch *b = NULL;
    svlm_kv_seq **seq = calloc((size_t)n_seq, sizeof *seq);
    svlm_llama_ctx **ctx = calloc((size_t)n_seq, sizeof *ctx);
    svlm_llama_batch_item *items = calloc((size_t)n_seq, sizeof *items);
    int32_t *next = calloc((size_t)n_seq, sizeof *next); /* each answer's greedy token, fed back */
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(prompt + steps));
    svlm_status st =
        seq && ctx && items && next && ids ? SVLM_OK : svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    const int page = 16, pages = n_seq * ((n_ctx + page - 1) / page + 1);
    if (!st) st = svlm_llama_kv_pool_create(m, SVLM_F16, page, pages, &pool, err);
    if (!st) st = svlm_llama_batch_create(m, k, n_seq, &b, err);
    for (int r = 0; !st && r < reps; r++) {
        /* fresh sequences each repetition: every one prefilled with its own prompt */
        for (int i = 0; !st && i < n_seq; i++) {
            svlm_kv_seq_free(seq[i]);
            seq[i] = NULL;
            svlm_kv_policy pol = {{4, 0, n_ctx}, 1};
            st = svlm_kv_seq_create(pool, &pol, &seq[i], err);
            if (!st && !ctx[i]) st = svlm_llama_ctx_create(m, k, n_ctx + 8, SVLM_F32, &ctx[i], err);
            fill_ids(ids, prompt + steps, V, (uint64_t)i + 1);
            if (!st) st = svlm_llama_eval_seq(ctx[i], seq[i], SVLM_KV_SINK, 0, ids, NULL, 4, NULL, 0, err);
            next[i] = ids[0];
            if (!st && prompt > 4)
                st = svlm_llama_eval_seq_greedy(ctx[i], seq[i], SVLM_KV_TEXT, 1, ids + 4, NULL, prompt - 4,
                                                &next[i], err);
        }
        double t0 = cli_now();
        for (int s = 0; !st && s < steps; s++) {
            for (int i = 0; i < n_seq; i++)
                items[i] = (svlm_llama_batch_item){.ctx = ctx[i],
                                                   .seq = seq[i],
                                                   .kind = SVLM_KV_TEXT,
                                                   .tag = 2 + s,
                                                   .id = next[i],
                                                   .next = &next[i]};
            st = svlm_llama_eval_batch(b, items, n_seq, err);
            for (int i = 0; !st && i < n_seq; i++)
                if (items[i].status) st = svlm_fail(err, items[i].status, "%s", items[i].err_msg);
        }
        double v = st ? 0 : (double)n_seq * steps / (cli_now() - t0);
        if (v > *tps) *tps = v;
    }
    for (int i = 0; seq && i < n_seq; i++)
        svlm_kv_seq_free(seq[i]);
    for (int i = 0; ctx && i < n_seq; i++)
        svlm_llama_ctx_free(ctx[i]);
    svlm_llama_batch_free(b);
    svlm_kv_pool_free(pool);
    free(seq);
    free(ctx);
    free(items);
    free(next);
    free(ids);
    return st;
}
