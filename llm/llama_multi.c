/*
 * Prefill of several sequences in one pass: the frames of many streams reach their caches with
 * the matrix products run once on all their rows (one GEMM per weight instead of one per stream,
 * which on a GPU is what a frame's prefill costs: the host time of its launches). Each sequence
 * keeps its own pages, working copy, positions and attention, as in eval_chunk (llama_eval.c).
 */
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/threadpool.h"
#include "llm/llama_internal.h"

struct svlm_llama_multi {
    svlm_llama *m;
    svlm_kernels *k;
    int max_rows;
    llama_rows r;         /* activations of up to max_rows rows */
    int32_t *pos, *pos_k; /* RoPE position of every row: host, kernels' side */
    /* every layer's new keys and values before RoPE, [n_layer][2][rows][kv_dim], for the pages
     * (one copy to the host after the layers, into svlm_k_alloc_host memory) and the contexts'
     * raw keys */
    float *pending, *pending_host;
    /* per layer [2][rows]: where each row's key and value go in its working copy (dst), and its
     * key before RoPE (raw; values NULL): host, kernels' side */
    void **dst_host, **dst_k, **raw_host, **raw_k;
    svlm_attn_args *attn; /* per live item: its attention in the current layer */
    svlm_pool *pool;      /* writes the items' pages in parallel (NULL: one by one) */
};

void svlm_llama_multi_set_pool(svlm_llama_multi *b, svlm_pool *pool) {
    b->pool = pool;
}

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
    const size_t R = (size_t)max_rows, kvd = (size_t)hp->n_head_kv * hp->head_dim;
    const size_t rows_all = (size_t)hp->n_layer * 2 * R; /* [n_layer][2][rows] */
    const int rows_ok = llama_rows_alloc(k, hp, R, &b->r);
    b->pos_k = svlm_k_alloc(k, R * sizeof(int32_t));
    b->pos = calloc(R, sizeof(int32_t));
    b->pending = svlm_k_alloc(k, rows_all * kvd * sizeof(float));
    b->pending_host = svlm_k_alloc_host(k, rows_all * kvd * sizeof(float));
    b->dst_host = calloc(rows_all, sizeof(void *));
    b->raw_host = calloc(rows_all, sizeof(void *));
    b->dst_k = svlm_k_alloc(k, rows_all * sizeof(void *));
    b->raw_k = svlm_k_alloc(k, rows_all * sizeof(void *));
    b->attn = calloc(R, sizeof *b->attn);
    if (!rows_ok || !b->pos_k || !b->pos || !b->pending || !b->pending_host || !b->dst_host || !b->raw_host ||
        !b->dst_k || !b->raw_k || !b->attn) {
        svlm_llama_multi_free(b);
        return svlm_fail(err, SVLM_E_NOMEM, "out of memory for a pass of %d rows", max_rows);
    }
    *out = b;
    return SVLM_OK;
}

void svlm_llama_multi_free(svlm_llama_multi *b) {
    if (!b) return;
    llama_rows_free(b->k, &b->r);
    void *bufs[] = {b->pos_k, b->pending, b->dst_k, b->raw_k};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) svlm_k_free(b->k, bufs[i]);
    free(b->pos);
    svlm_k_free_host(b->k, b->pending_host);
    free(b->dst_host);
    free(b->raw_host);
    free(b->attn);
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
    int f16;                /* its pages are f16: its rows are rounded as they will come back */
} live_item;

/* The pass's tables: each row's working-copy destinations and raw-key destination in every layer. */
static void fill_tables(svlm_llama_multi *b, const live_item *lv, int nl, int rows) {
    const svlm_llama_hparams *hp = &b->m->hp;
    for (int i = 0; i < nl; i++) {
        const svlm_llama_ctx *c = lv[i].it->ctx;
        const size_t row_bytes = (size_t)hp->n_head_kv * hp->head_dim * c->kv_elt;
        for (int l = 0; l < hp->n_layer; l++) {
            void **d = b->dst_host + (size_t)l * 2 * rows, **w = b->raw_host + (size_t)l * 2 * rows;
            for (int j = 0; j < lv[i].it->n; j++) {
                const size_t at = (size_t)(lv[i].p0 + j) * row_bytes;
                const int r = lv[i].row + j;
                d[r] = (uint8_t *)c->k_cache[l] + at;
                d[rows + r] = (uint8_t *)c->v_cache[l] + at;
                w[r] = c->raw ? (uint8_t *)c->raw[l] + at : NULL;
                w[rows + r] = NULL;
            }
        }
    }
}

/* One layer after q/k/v: the working copies brought up to date, the new rows kept for the pages,
 * rounded, rotated and stored (tables: all rows in one op, else item by item), then every item's
 * attention in one call. */
static void layer_attention(svlm_llama_multi *b, const live_item *lv, int nl, int l, int rows, int tables) {
    const svlm_llama_hparams *hp = &b->m->hp;
    svlm_kernels *k = b->k;
    const size_t kvd = (size_t)hp->n_head_kv * hp->head_dim, qd = (size_t)hp->n_head * hp->head_dim;
    float *pk = b->pending + (size_t)l * 2 * rows * kvd;
    for (int i = 0; i < nl; i++)
        if (lv[i].sync_from < lv[i].p0)
            llama_sync_working_copy(lv[i].it->ctx, lv[i].it->seq, l, lv[i].sync_from, lv[i].p0);
    if (tables) {
        svlm_k_rope_store(k, b->r.q, b->r.kx, b->r.vx, rows, hp->n_head, hp->n_head_kv, hp->head_dim,
                          hp->n_rot, b->pos_k, hp->rope_base, hp->rope_neox, b->dst_k + (size_t)l * 2 * rows,
                          lv[0].it->ctx->kv_type, pk, lv[0].f16);
    } else {
        svlm_k_copy(k, pk, b->r.kx, sizeof(float) * (size_t)rows * kvd);
        svlm_k_copy(k, pk + (size_t)rows * kvd, b->r.vx, sizeof(float) * (size_t)rows * kvd);
        for (int i = 0; i < nl; i++)
            if (lv[i].f16) {
                svlm_k_round_f16(k, b->r.kx + (size_t)lv[i].row * kvd, (int64_t)lv[i].it->n * (int64_t)kvd);
                svlm_k_round_f16(k, b->r.vx + (size_t)lv[i].row * kvd, (int64_t)lv[i].it->n * (int64_t)kvd);
            }
        svlm_k_rope(k, b->r.q, rows, hp->n_head, hp->head_dim, hp->n_rot, b->pos_k, hp->rope_base,
                    hp->rope_neox);
        svlm_k_rope(k, b->r.kx, rows, hp->n_head_kv, hp->head_dim, hp->n_rot, b->pos_k, hp->rope_base,
                    hp->rope_neox);
        for (int i = 0; i < nl; i++) {
            svlm_llama_ctx *c = lv[i].it->ctx;
            llama_store_rows(c, c->k_cache[l], b->r.kx + (size_t)lv[i].row * kvd, lv[i].p0, lv[i].it->n, kvd);
            llama_store_rows(c, c->v_cache[l], b->r.vx + (size_t)lv[i].row * kvd, lv[i].p0, lv[i].it->n, kvd);
        }
    }
    for (int i = 0; i < nl; i++)
        b->attn[i] = llama_cache_attention(lv[i].it->ctx, l, b->r.q + (size_t)lv[i].row * qd,
                                           b->r.att + (size_t)lv[i].row * qd, lv[i].it->n, lv[i].p0);
    svlm_k_attention_multi(k, b->attn, nl);
}

typedef struct pages_job {
    const svlm_llama_multi *b;
    const live_item *lv;
    int rows;
} pages_job;

/* Item i's new rows from the pass's host copy into its sequence's pages, every layer. */
static void pages_task(void *ctx, int i, int thread) {
    (void)thread;
    const pages_job *j = ctx;
    const svlm_llama_hparams *hp = &j->b->m->hp;
    const size_t kvd = (size_t)hp->n_head_kv * hp->head_dim, per_layer = (size_t)2 * j->rows * kvd;
    const live_item *L = &j->lv[i];
    for (int l = 0; l < hp->n_layer; l++) {
        const float *hk = j->b->pending_host + (size_t)l * per_layer + (size_t)L->row * kvd;
        svlm_kv_seq_write(L->it->seq, l, L->p0, L->it->n, hk, hk + (size_t)j->rows * kvd);
    }
}

/* After the layers: the new rows into each sequence's pages (one copy to the host for the pass,
 * then the sequences' writes in parallel: 57 MB for 16 frames of the 256M shape on f32 pages)
 * and into the contexts' raw keys. */
static void rows_to_pages(svlm_llama_multi *b, const live_item *lv, int nl, int rows, int tables) {
    const svlm_llama_hparams *hp = &b->m->hp;
    svlm_kernels *k = b->k;
    const size_t kvd = (size_t)hp->n_head_kv * hp->head_dim, per_layer = (size_t)2 * rows * kvd;
    svlm_k_copy(k, b->pending_host, b->pending, sizeof(float) * per_layer * (size_t)hp->n_layer);
    pages_job job = {b, lv, rows};
    if (b->pool && nl > 1)
        svlm_pool_run(b->pool, pages_task, &job, nl);
    else
        for (int i = 0; i < nl; i++)
            pages_task(&job, i, 0);
    int any_raw = 0;
    for (int i = 0; i < nl; i++)
        any_raw |= lv[i].it->ctx->raw != NULL;
    if (!any_raw) return;
    if (tables) { /* one op: the keys of every layer and item to their raw rows */
        svlm_k_copy(k, b->raw_k, b->raw_host, sizeof(void *) * 2 * (size_t)rows * (size_t)hp->n_layer);
        svlm_k_store_rows(k, b->raw_k, lv[0].it->ctx->kv_type, b->pending, 2 * (int64_t)rows * hp->n_layer,
                          (int64_t)kvd);
        return;
    }
    for (int i = 0; i < nl; i++) {
        svlm_llama_ctx *c = lv[i].it->ctx;
        if (c->raw)
            for (int l = 0; l < hp->n_layer; l++)
                llama_store_rows(c, c->raw[l], b->pending + (size_t)l * per_layer + (size_t)lv[i].row * kvd,
                                 lv[i].p0, lv[i].it->n, kvd);
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
        L->f16 = svlm_kv_pool_params_of(svlm_kv_seq_pool(items[i].seq))->type == SVLM_F16;
        svlm_llama_ctx *c = items[i].ctx;
        llama_apply_shift(c, items[i].seq);
        for (int j = 0; j < items[i].n; j++)
            b->pos[rows + j] = svlm_kv_seq_pos(items[i].seq, L->p0 + j);
        const float *e = items[i].embd;
        llama_embed_inputs(c, b->r.x + (size_t)rows * E, items[i].ids, &e, items[i].n);
        rows += items[i].n;
        nl++;
    }
    if (nl == 0) {
        svlm_k_defer(k, 0);
        return SVLM_OK;
    }
    /* one store op per layer through the tables when the copies share a type and the pages are
     * all f16 or none (they are when one engine made them) */
    int tables = 1;
    for (int i = 1; i < nl; i++)
        tables &= lv[i].it->ctx->kv_type == lv[0].it->ctx->kv_type && lv[i].f16 == lv[0].f16;
    if (tables) {
        fill_tables(b, lv, nl, rows);
        svlm_k_copy(k, b->dst_k, b->dst_host, sizeof(void *) * 2 * (size_t)rows * (size_t)hp->n_layer);
    }
    svlm_k_copy(k, b->pos_k, b->pos, sizeof(int32_t) * (size_t)rows);
    for (int l = 0; l < hp->n_layer; l++) {
        const svlm_llama_layer *L = &m->layers[l];
        llama_layer_qkv(k, hp, L, b->r.x, b->r.h, b->r.q, b->r.kx, b->r.vx, rows);
        layer_attention(b, lv, nl, l, rows, tables);
        llama_layer_rest(k, hp, L, b->r.att, b->r.x, b->r.h, b->r.gate, b->r.up, rows);
    }
    rows_to_pages(b, lv, nl, rows, tables);
    for (int i = 0; i < nl; i++) {
        svlm_llama_ctx *c = lv[i].it->ctx;
        c->mirror_of = svlm_kv_seq_version(lv[i].it->seq);
        c->mirror_n = lv[i].p0 + lv[i].it->n;
        c->raw_n = c->mirror_n;
        c->n_past = 0;
    }
    svlm_k_defer(k, 0);
    return SVLM_OK;
}
