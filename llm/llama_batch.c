/*
 * Continuous batching: one decode step for many sequences (answers to different questions, on
 * different streams) in one pass over the weights. Decode is bound by reading the weights, so n
 * sequences cost little more than one: the matrix products run on n rows, while each sequence
 * keeps its own paged cache, working copy, positions and attention.
 */
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "llm/llama_internal.h"

struct svlm_llama_batch {
    svlm_llama *m;
    svlm_kernels *k;
    int max;
    llama_rows r; /* activations of up to max rows */
    float *logits;
    int32_t *pos, *pos_k;  /* RoPE positions, in host memory and on the kernels' side */
    int32_t *ids;          /* the live rows' tokens */
    int32_t *next;         /* the live rows' greedy next tokens (host memory) */
    float *host_x;         /* their embeddings on the host */
    float *pending;        /* [n_layer][2][live rows][kv_dim]: new keys and values for the pages, */
    float *pending_host;   /* written after the layers in one copy (svlm_k_alloc_host) */
    svlm_attn_args *attn;  /* per live row: its attention */
    int *p0, *sync, *live; /* per live row: cache row of its token, where its working copy stops
                            * matching its sequence, index of its item */
    llama_step_tables step;
};

svlm_status svlm_llama_batch_create(svlm_llama *m, svlm_kernels *k, int max_seqs, svlm_llama_batch **out,
                                    svlm_err *err) {
    *out = NULL;
    if (max_seqs <= 0 || max_seqs > 4096)
        return svlm_fail(err, SVLM_E_INVALID, "a batch holds 1 to 4096 sequences, not %d", max_seqs);
    const svlm_llama_hparams *hp = &m->hp;
    svlm_llama_batch *b = calloc(1, sizeof *b);
    if (!b) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    b->m = m;
    b->k = k;
    b->max = max_seqs;
    const size_t B = (size_t)max_seqs, E = (size_t)hp->n_embd, kvd = (size_t)hp->n_head_kv * hp->head_dim;
    const int rows_ok = llama_rows_alloc(k, hp, B, &b->r);
    b->logits = svlm_k_alloc(k, B * (size_t)hp->n_vocab * 4);
    b->pos = calloc(B, sizeof *b->pos);
    b->attn = calloc(B, sizeof *b->attn);
    b->pos_k = svlm_k_alloc(k, B * sizeof *b->pos_k);
    b->ids = calloc(B, sizeof *b->ids);
    b->next = calloc(B, sizeof *b->next);
    b->host_x = malloc(B * E * sizeof(float));
    b->pending = svlm_k_alloc(k, (size_t)hp->n_layer * 2 * B * kvd * sizeof(float));
    b->pending_host = svlm_k_alloc_host(k, (size_t)hp->n_layer * 2 * B * kvd * sizeof(float));
    b->p0 = calloc(B, sizeof *b->p0);
    b->live = calloc(B, sizeof *b->live);
    b->sync = calloc(B, sizeof *b->sync);
    const int step_ok = llama_step_tables_alloc(k, hp->n_layer, max_seqs, &b->step);
    if (!rows_ok || !step_ok || !b->logits || !b->pos || !b->p0 || !b->live || !b->sync || !b->pos_k ||
        !b->ids || !b->next || !b->host_x || !b->pending || !b->pending_host || !b->attn) {
        svlm_llama_batch_free(b);
        return svlm_fail(err, SVLM_E_NOMEM, "out of memory for a batch of %d sequences", max_seqs);
    }
    *out = b;
    return SVLM_OK;
}

void svlm_llama_batch_free(svlm_llama_batch *b) {
    if (!b) return;
    llama_rows_free(b->k, &b->r);
    llama_step_tables_free(b->k, &b->step);
    svlm_k_replay_forget(b->k, b); /* its recorded steps hold these buffers */
    void *bufs[] = {b->logits, b->pos_k, b->pending};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) svlm_k_free(b->k, bufs[i]);
    free(b->pos);
    free(b->ids);
    free(b->next);
    free(b->host_x);
    svlm_k_free_host(b->k, b->pending_host);
    free(b->attn);
    free(b->p0);
    free(b->live);
    free(b->sync);
    free(b);
}

int svlm_llama_batch_max(const svlm_llama_batch *b) {
    return b->max;
}

/* The checks and cache bookkeeping of svlm_llama_eval_seq for one item; on success the token's
 * row is appended to the sequence and *p0 is its cache row, *sync_from where the item's working
 * copy stops matching the sequence. */
static svlm_status prepare(svlm_llama_batch *b, svlm_llama_batch_item *it, int *p0, int *sync_from) {
    svlm_err e = {0};
    svlm_status st = SVLM_OK;
    if (it->ctx->m != b->m || it->ctx->k != b->k)
        st = svlm_fail(&e, SVLM_E_INVALID, "the context belongs to another model or backend than the batch");
    if (!st) st = llama_seq_prepare(it->ctx, it->seq, it->kind, it->tag, &it->id, NULL, 1, p0, sync_from, &e);
    if (!st) {
        llama_apply_shift(it->ctx, it->seq);
        /* a batch keeps no raw key for its row: the next use rebuilds that row's */
        if (it->ctx->raw_n > *p0) it->ctx->raw_n = *p0;
    }
    if (st) {
        it->status = st;
        memcpy(it->err_msg, e.msg, sizeof it->err_msg - 1);
        it->err_msg[sizeof it->err_msg - 1] = 0;
    }
    return st;
}

/* The layers of a step of nl live rows (see svlm_llama_eval_batch). tables: the rows' RoPE,
 * cache stores and attentions go through b->step (their pages all f16 or none). */
static void batch_layers(svlm_llama_batch *b, svlm_llama_batch_item *items, int nl, int tables) {
    const svlm_llama *m = b->m;
    const svlm_llama_hparams *hp = &m->hp;
    svlm_kernels *k = b->k;
    const int kvd = hp->n_head_kv * hp->head_dim, qd = hp->n_head * hp->head_dim;
    const int *sync_from = b->sync;
    /* one answer whose rows need nothing from its pages: every layer as one op where the backend
     * has one */
    if (tables && nl == 1 && sync_from[0] >= b->p0[0] &&
        llama_step_fused(items[b->live[0]].ctx, &b->step, &b->r, b->pos_k, b->pending,
                         svlm_kv_pool_params_of(svlm_kv_seq_pool(items[b->live[0]].seq))->type == SVLM_F16))
        return;
    for (int l = 0; l < hp->n_layer; l++) {
        const svlm_llama_layer *L = &m->layers[l];
        /* the rows' new keys and values reach their pages after the layers, in one copy */
        float *pk = b->pending + (size_t)l * 2 * nl * kvd;
        int n_f16 = 0;
        for (int r = 0; r < nl; r++) {
            svlm_llama_batch_item *it = &items[b->live[r]];
            if (sync_from[r] < b->p0[r]) llama_sync_working_copy(it->ctx, it->seq, l, sync_from[r], b->p0[r]);
            n_f16 += svlm_kv_pool_params_of(svlm_kv_seq_pool(it->seq))->type == SVLM_F16;
        }
        if (tables) {
            llama_step_layer(items[b->live[0]].ctx, &b->step, l, L, b->r.x, b->r.h, b->r.q, b->r.kx, b->r.vx,
                             b->pos_k, pk, n_f16 == nl);
            llama_layer_rest(k, hp, L, b->r.att, b->r.x, b->r.h, b->r.gate, b->r.up, nl);
            continue;
        }
        llama_layer_qkv(k, hp, L, b->r.x, b->r.h, b->r.q, b->r.kx, b->r.vx, nl);
        svlm_k_copy(k, pk, b->r.kx, sizeof(float) * (size_t)nl * kvd);
        svlm_k_copy(k, pk + (size_t)nl * kvd, b->r.vx, sizeof(float) * (size_t)nl * kvd);
        /* rows on f16 pages must look as they will when read back: all at once when all are */
        if (n_f16 == nl) {
            svlm_k_round_f16(k, b->r.kx, (int64_t)nl * kvd);
            svlm_k_round_f16(k, b->r.vx, (int64_t)nl * kvd);
        } else if (n_f16 > 0) {
            for (int r = 0; r < nl; r++)
                if (svlm_kv_pool_params_of(svlm_kv_seq_pool(items[b->live[r]].seq))->type == SVLM_F16) {
                    svlm_k_round_f16(k, b->r.kx + (size_t)r * kvd, kvd);
                    svlm_k_round_f16(k, b->r.vx + (size_t)r * kvd, kvd);
                }
        }
        svlm_k_rope(k, b->r.q, nl, hp->n_head, hp->head_dim, hp->n_rot, b->pos_k, hp->rope_base,
                    hp->rope_neox);
        svlm_k_rope(k, b->r.kx, nl, hp->n_head_kv, hp->head_dim, hp->n_rot, b->pos_k, hp->rope_base,
                    hp->rope_neox);
        for (int r = 0; r < nl; r++) {
            svlm_llama_ctx *c = items[b->live[r]].ctx;
            llama_store_rows(c, c->k_cache[l], b->r.kx + (size_t)r * kvd, b->p0[r], 1, (size_t)kvd);
            llama_store_rows(c, c->v_cache[l], b->r.vx + (size_t)r * kvd, b->p0[r], 1, (size_t)kvd);
            b->attn[r] =
                llama_cache_attention(c, l, b->r.q + (size_t)r * qd, b->r.att + (size_t)r * qd, 1, b->p0[r]);
        }
        svlm_k_attention_multi(k, b->attn, nl); /* one launch for every row on a GPU */
        llama_layer_rest(k, hp, L, b->r.att, b->r.x, b->r.h, b->r.gate, b->r.up, nl);
    }
}

svlm_status svlm_llama_eval_batch(svlm_llama_batch *b, svlm_llama_batch_item *items, int n, svlm_err *err) {
    if (n <= 0 || n > b->max)
        return svlm_fail(err, SVLM_E_INVALID, "a batch of %d items (this one holds 1 to %d)", n, b->max);
    for (int i = 0; i < n; i++) {
        if (!items[i].ctx || !items[i].seq)
            return svlm_fail(err, SVLM_E_INVALID, "item %d has no context", i);
        for (int j = 0; j < i; j++)
            if (items[j].ctx == items[i].ctx || items[j].seq == items[i].seq)
                return svlm_fail(err, SVLM_E_INVALID, "items %d and %d share a context or a sequence", j, i);
    }
    const svlm_llama *m = b->m;
    const svlm_llama_hparams *hp = &m->hp;
    svlm_kernels *k = b->k;
    const int E = hp->n_embd, kvd = hp->n_head_kv * hp->head_dim, qd = hp->n_head * hp->head_dim;
    int *sync_from = b->sync;
    int nl = 0; /* live rows: the items that prepared */
    for (int i = 0; i < n; i++) {
        items[i].status = SVLM_OK;
        items[i].err_msg[0] = 0;
        if (prepare(b, &items[i], &b->p0[nl], &sync_from[nl])) continue;
        svlm_llama_batch_item *it = &items[i];
        b->live[nl] = i;
        b->pos[nl] = svlm_kv_seq_pos(it->seq, b->p0[nl]);
        b->ids[nl] = it->id;
        nl++;
    }
    if (nl == 0) return SVLM_OK;
    /* one store and one attention launch per layer through the step tables when the contexts'
     * caches are alike (they are when one engine made them) */
    int tables = 1, replay = 1, n_f16 = 0;
    for (int r = 0; r < nl; r++) {
        tables &= items[b->live[r]].ctx->kv_type == items[b->live[0]].ctx->kv_type;
        replay &= sync_from[r] >= b->p0[r];
        n_f16 += svlm_kv_pool_params_of(svlm_kv_seq_pool(items[b->live[r]].seq))->type == SVLM_F16;
    }
    tables &= n_f16 == 0 || n_f16 == nl;
    replay &= tables;
    svlm_k_defer(k, 1); /* the host touches the buffers only through svlm_k_copy */
    llama_embed_rows(m, k, b->host_x, b->r.x, b->ids, nl);
    svlm_k_copy(k, b->pos_k, b->pos, sizeof(int32_t) * (size_t)nl);
    if (tables) {
        for (int r = 0; r < nl; r++)
            llama_step_row(&b->step, items[b->live[r]].ctx, nl, r, b->r.q + (size_t)r * qd,
                           b->r.att + (size_t)r * qd, b->p0[r]);
        llama_step_upload(k, &b->step, hp->n_layer);
    }
    if (replay) /* the same ops for every step of nl rows whose pages are as f16 as these */
        svlm_k_replay_begin(k, b, (uint64_t)nl * 2 + (n_f16 > 0));
    batch_layers(b, items, nl, tables);
    if (replay && !svlm_k_replay_end(k)) batch_layers(b, items, nl, tables);
    svlm_k_rmsnorm(k, b->r.x, m->output_norm, b->r.h, nl, E, hp->rms_eps);
    svlm_k_matmul(k, &m->output, b->r.h, nl, b->logits);
    const size_t per_layer = (size_t)2 * nl * kvd;
    svlm_k_copy(k, b->pending_host, b->pending, sizeof(float) * per_layer * (size_t)hp->n_layer);
    for (int l = 0; l < hp->n_layer; l++) {
        const float *hk = b->pending_host + (size_t)l * per_layer, *hv = hk + (size_t)nl * kvd;
        for (int r = 0; r < nl; r++)
            svlm_kv_seq_write(items[b->live[r]].seq, l, b->p0[r], 1, hk + (size_t)r * kvd,
                              hv + (size_t)r * kvd);
    }
    int greedy = 0;
    for (int r = 0; r < nl; r++)
        greedy |= items[b->live[r]].next != NULL;
    if (greedy) svlm_k_argmax(k, b->logits, nl, hp->n_vocab, b->next);
    for (int r = 0; r < nl; r++) {
        svlm_llama_batch_item *it = &items[b->live[r]];
        if (it->next) *it->next = b->next[r];
        if (it->logits)
            svlm_k_copy(k, it->logits, b->logits + (size_t)r * hp->n_vocab,
                        sizeof(float) * (size_t)hp->n_vocab);
        it->ctx->mirror_of = svlm_kv_seq_version(it->seq);
        it->ctx->mirror_n = b->p0[r] + 1;
        it->ctx->n_past = 0;
    }
    svlm_k_defer(k, 0);
    return SVLM_OK;
}
