/*
 * Prefill of several sequences in one pass: the frames of many streams reach their caches with
 * the matrix products run once on all their rows (one GEMM per weight instead of one per stream,
 * which on a GPU is what a frame's prefill costs: the host time of its launches). Each sequence
 * keeps its own pages, working copy, positions and attention, as in eval_chunk (llama_eval.c).
 */
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "llm/llama_internal.h"

struct svlm_llama_multi {
    svlm_llama *m;
    svlm_kernels *k;
    int max_rows;
    llama_rows r;         /* activations of up to max_rows rows */
    int32_t *pos, *pos_k; /* RoPE position of every row: host, kernels' side */
};

int svlm_llama_multi_item_max(void) {
    return LLAMA_PENDING_ROWS;
}

svlm_status svlm_llama_multi_create(svlm_llama *m, svlm_kernels *k, int max_rows, svlm_llama_multi **out,
                                    svlm_err *err) {
    *out = NULL;
    if (max_rows < 1 || max_rows > 65536)
        return svlm_fail(err, SVLM_E_INVALID, "a multi-sequence pass holds 1 to 65536 rows, not %d",
                         max_rows);
    const svlm_llama_hparams *hp = &m->hp;
    svlm_llama_multi *b = calloc(1, sizeof *b);
    if (!b) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    b->m = m;
    b->k = k;
    b->max_rows = max_rows;
    const size_t R = (size_t)max_rows;
    const int rows_ok = llama_rows_alloc(k, hp, R, &b->r);
    b->pos_k = svlm_k_alloc(k, R * sizeof(int32_t));
    b->pos = calloc(R, sizeof(int32_t));
    if (!rows_ok || !b->pos_k || !b->pos) {
        svlm_llama_multi_free(b);
        return svlm_fail(err, SVLM_E_NOMEM, "out of memory for a pass of %d rows", max_rows);
    }
    *out = b;
    return SVLM_OK;
}

void svlm_llama_multi_free(svlm_llama_multi *b) {
    if (!b) return;
    llama_rows_free(b->k, &b->r);
    if (b->pos_k) svlm_k_free(b->k, b->pos_k);
    free(b->pos);
    free(b);
}

/* svlm_llama_eval_seq's checks and cache bookkeeping for one item: its rows appended to the
 * sequence, *p0 their first cache row, *sync_from where its working copy stops matching. */
static svlm_status prepare(svlm_llama_multi *b, svlm_llama_multi_item *it, int *p0, int *sync_from) {
    svlm_err e = {0};
    svlm_status st = SVLM_OK;
    if (it->ctx->m != b->m || it->ctx->k != b->k)
        st = svlm_fail(&e, SVLM_E_INVALID, "the context belongs to another model or backend than the pass");
    if (!st && (it->n < 1 || it->n > LLAMA_PENDING_ROWS || it->n > it->ctx->n_batch))
        st = svlm_fail(&e, SVLM_E_INVALID, "an item of %d rows (1 to %d)", it->n,
                       LLAMA_PENDING_ROWS < it->ctx->n_batch ? LLAMA_PENDING_ROWS : it->ctx->n_batch);
    if (!st)
        st = llama_seq_prepare(it->ctx, it->seq, it->kind, it->tag, it->ids, it->embd, it->n, p0, sync_from,
                               &e);
    if (st) {
        it->status = st;
        memcpy(it->err_msg, e.msg, sizeof it->err_msg - 1);
        it->err_msg[sizeof it->err_msg - 1] = 0;
    }
    return st;
}

typedef struct live_item {
    svlm_llama_multi_item *it;
    int row, p0, sync_from; /* first row in the pass, first cache row, working copy valid below */
} live_item;

/* One layer's keys and values: saved for the pages, the working copies brought up to date,
 * roundings, RoPE, stores and attention, each sequence on its own rows. */
static void layer_attention(svlm_llama_multi *b, const live_item *lv, int nl, int l, int rows) {
    const svlm_llama_hparams *hp = &b->m->hp;
    svlm_kernels *k = b->k;
    const size_t kvd = (size_t)hp->n_head_kv * hp->head_dim, qd = (size_t)hp->n_head * hp->head_dim;
    for (int i = 0; i < nl; i++)
        llama_new_rows_to_pending(lv[i].it->ctx, lv[i].it->seq, l, b->r.kx + (size_t)lv[i].row * kvd,
                                  b->r.vx + (size_t)lv[i].row * kvd, lv[i].it->n, lv[i].p0, lv[i].sync_from);
    svlm_k_rope(k, b->r.q, rows, hp->n_head, hp->head_dim, hp->n_rot, b->pos_k, hp->rope_base, hp->rope_neox);
    svlm_k_rope(k, b->r.kx, rows, hp->n_head_kv, hp->head_dim, hp->n_rot, b->pos_k, hp->rope_base,
                hp->rope_neox);
    for (int i = 0; i < nl; i++) {
        svlm_llama_ctx *c = lv[i].it->ctx;
        const int n = lv[i].it->n;
        llama_store_rows(c, c->k_cache[l], b->r.kx + (size_t)lv[i].row * kvd, lv[i].p0, n, kvd);
        llama_store_rows(c, c->v_cache[l], b->r.vx + (size_t)lv[i].row * kvd, lv[i].p0, n, kvd);
        svlm_attn_args a = llama_cache_attention(c, l, b->r.q + (size_t)lv[i].row * qd,
                                                 b->r.att + (size_t)lv[i].row * qd, n, lv[i].p0);
        svlm_k_attention(k, &a);
    }
}

svlm_status svlm_llama_eval_seq_multi(svlm_llama_multi *b, svlm_llama_multi_item *items, int n,
                                      svlm_err *err) {
    if (n <= 0 || n > b->max_rows)
        return svlm_fail(err, SVLM_E_INVALID, "%d items (the pass holds 1 to %d)", n, b->max_rows);
    int total = 0;
    for (int i = 0; i < n; i++) {
        if (!items[i].ctx || !items[i].seq)
            return svlm_fail(err, SVLM_E_INVALID, "item %d has no context", i);
        for (int j = 0; j < i; j++)
            if (items[j].ctx == items[i].ctx || items[j].seq == items[i].seq)
                return svlm_fail(err, SVLM_E_INVALID, "items %d and %d share a context or a sequence", j, i);
        total += items[i].n > 0 ? items[i].n : 0;
    }
    if (total > b->max_rows)
        return svlm_fail(err, SVLM_E_INVALID, "%d rows in all, the pass holds %d", total, b->max_rows);
    const svlm_llama *m = b->m;
    const svlm_llama_hparams *hp = &m->hp;
    svlm_kernels *k = b->k;
    const int E = hp->n_embd;
    live_item lv[n];
    int nl = 0, rows = 0;
    svlm_k_defer(k, 1); /* the host touches the buffers only through svlm_k_copy */
    for (int i = 0; i < n; i++) {
        items[i].status = SVLM_OK;
        items[i].err_msg[0] = 0;
        live_item *L = &lv[nl];
        if (prepare(b, &items[i], &L->p0, &L->sync_from)) continue;
        L->it = &items[i];
        L->row = rows;
        svlm_llama_ctx *c = items[i].ctx;
        for (int j = 0; j < items[i].n; j++) {
            b->pos[rows + j] = svlm_kv_seq_pos(items[i].seq, L->p0 + j);
            c->pos[L->p0 + j] = b->pos[rows + j];
        }
        const float *e = items[i].embd;
        llama_embed_inputs(c, b->r.x + (size_t)rows * E, items[i].ids, &e, items[i].n);
        rows += items[i].n;
        nl++;
    }
    if (nl == 0) {
        svlm_k_defer(k, 0);
        return SVLM_OK;
    }
    svlm_k_copy(k, b->pos_k, b->pos, sizeof(int32_t) * (size_t)rows);
    for (int l = 0; l < hp->n_layer; l++) {
        const svlm_llama_layer *L = &m->layers[l];
        llama_layer_qkv(k, hp, L, b->r.x, b->r.h, b->r.q, b->r.kx, b->r.vx, rows);
        layer_attention(b, lv, nl, l, rows);
        llama_layer_rest(k, hp, L, b->r.att, b->r.x, b->r.h, b->r.gate, b->r.up, rows);
    }
    /* the new rows reach each sequence's pages: one copy per sequence */
    for (int i = 0; i < nl; i++) {
        svlm_llama_ctx *c = lv[i].it->ctx;
        llama_pending_to_pages(c, lv[i].it->seq, lv[i].p0, lv[i].it->n);
        c->mirror_of = svlm_kv_seq_version(lv[i].it->seq);
        c->mirror_n = lv[i].p0 + lv[i].it->n;
        c->n_past = 0;
    }
    svlm_k_defer(k, 0);
    return SVLM_OK;
}
