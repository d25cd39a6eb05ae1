/* The decoder's forward pass over a batch of tokens with a KV cache. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "llm/llama_internal.h"

#define SVLM_DEFAULT_BATCH 512

svlm_status svlm_llama_ctx_create(svlm_llama *m, svlm_kernels *k, int n_ctx, svlm_dtype kv_type,
                                  svlm_llama_ctx **out, svlm_err *err) {
    *out = NULL;
    if (n_ctx <= 0) return svlm_fail(err, SVLM_E_INVALID, "context size must be positive, got %d", n_ctx);
    if (kv_type != SVLM_F32 && kv_type != SVLM_F16)
        return svlm_fail(err, SVLM_E_INVALID, "KV cache type must be f32 or f16");
    const svlm_llama_hparams *hp = &m->hp;
    svlm_llama_ctx *c = calloc(1, sizeof *c);
    if (!c) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    c->m = m;
    c->k = k;
    c->n_ctx = n_ctx;
    c->n_batch = n_ctx < SVLM_DEFAULT_BATCH ? n_ctx : SVLM_DEFAULT_BATCH;
    c->kv_type = kv_type;
    c->kv_elt = kv_type == SVLM_F32 ? 4 : 2;
    const size_t kvd = (size_t)hp->n_head_kv * hp->head_dim, E = hp->n_embd, B = c->n_batch;
    c->k_cache = calloc((size_t)hp->n_layer, sizeof(void *));
    c->v_cache = calloc((size_t)hp->n_layer, sizeof(void *));
    c->batch_pos = calloc(B, sizeof(int32_t));
    c->stage_pos = calloc(B, sizeof(int32_t));
    const size_t host_w = E > 2 * kvd ? E : 2 * kvd;
    c->host_rows = malloc(B * host_w * sizeof(float));
    int ok = c->k_cache && c->v_cache && c->batch_pos && c->stage_pos && c->host_rows;
    for (int l = 0; ok && l < hp->n_layer; l++) {
        c->k_cache[l] = svlm_k_alloc(k, (size_t)n_ctx * kvd * c->kv_elt);
        c->v_cache[l] = svlm_k_alloc(k, (size_t)n_ctx * kvd * c->kv_elt);
        ok = c->k_cache[l] && c->v_cache[l];
    }
    if (ok) {
        c->x = svlm_k_alloc(k, B * E * 4);
        c->h = svlm_k_alloc(k, B * E * 4);
        c->q = svlm_k_alloc(k, B * E * 4);
        c->kx = svlm_k_alloc(k, B * kvd * 4);
        c->vx = svlm_k_alloc(k, B * kvd * 4);
        c->att = svlm_k_alloc(k, B * E * 4);
        c->gate = svlm_k_alloc(k, B * (size_t)hp->n_ff * 4);
        c->up = svlm_k_alloc(k, B * (size_t)hp->n_ff * 4);
        c->logit_in = svlm_k_alloc(k, B * E * 4);
        c->stage = svlm_k_alloc(k, B * kvd * 4);
        c->pos_k = svlm_k_alloc(k, B * sizeof(int32_t));
        c->stage_pos_k = svlm_k_alloc(k, B * sizeof(int32_t));
        c->pending = svlm_k_alloc(k, (size_t)hp->n_layer * 2 * LLAMA_PENDING_ROWS * kvd * 4);
        ok = c->x && c->h && c->q && c->kx && c->vx && c->att && c->gate && c->up && c->logit_in &&
             c->stage && c->pos_k && c->stage_pos_k && c->pending &&
             llama_step_tables_alloc(k, hp->n_layer, 1, &c->step);
    }
    if (!ok) {
        svlm_llama_ctx_free(c);
        return svlm_fail(err, SVLM_E_NOMEM, "out of memory for a %d-token context", n_ctx);
    }
    *out = c;
    return SVLM_OK;
}

void svlm_llama_ctx_free(svlm_llama_ctx *c) {
    if (!c) return;
    svlm_kernels *k = c->k;
    for (int l = 0; l < c->m->hp.n_layer; l++) {
        if (c->k_cache) svlm_k_free(k, c->k_cache[l]);
        if (c->v_cache) svlm_k_free(k, c->v_cache[l]);
    }
    free(c->k_cache);
    free(c->v_cache);
    free(c->batch_pos);
    free(c->stage_pos);
    free(c->host_rows);
    svlm_k_free_host(k, c->pending_host);
    svlm_k_free(k, c->logits_k);
    llama_step_tables_free(k, &c->step);
    llama_raw_free(c);
    svlm_k_replay_forget(k, c); /* its recorded steps hold these buffers */
    void *bufs[] = {c->x,  c->h,        c->q,     c->kx,    c->vx,          c->att,    c->gate,
                    c->up, c->logit_in, c->stage, c->pos_k, c->stage_pos_k, c->pending};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        svlm_k_free(k, bufs[i]);
    free(c);
}

int svlm_llama_ctx_n_past(const svlm_llama_ctx *c) {
    return c->n_past;
}
void svlm_llama_ctx_reset(svlm_llama_ctx *c) {
    c->n_past = 0;
}

svlm_status svlm_llama_kv_pool_create(const svlm_llama *m, svlm_dtype kv_type, int page_tokens, int max_pages,
                                      svlm_kv_pool **out, svlm_err *err) {
    svlm_kv_pool_params p = {
        .n_layer = m->hp.n_layer,
        .kv_dim = m->hp.n_head_kv * m->hp.head_dim,
        .type = kv_type,
        .page_tokens = page_tokens,
        .max_pages = max_pages,
    };
    return svlm_kv_pool_create(&p, out, err);
}

void llama_store_rows(svlm_llama_ctx *c, void *cache, const float *src, int at, int n, size_t kvd) {
    svlm_k_store(c->k, (uint8_t *)cache + (size_t)at * kvd * c->kv_elt, c->kv_type, src,
                 (int64_t)n * (int64_t)kvd);
}

void llama_embed_rows(const svlm_llama *m, svlm_kernels *k, float *host, float *x, const int32_t *ids,
                      int n) {
    const int E = m->hp.n_embd;
    for (int i = 0; i < n; i++) {
        const uint8_t *src = (const uint8_t *)m->tok_embd.data + (size_t)ids[i] * m->tok_embd.row_bytes;
        svlm_dequantize_row(m->tok_embd.type, src, host + (size_t)i * E, E);
    }
    svlm_k_copy(k, x, host, sizeof(float) * (size_t)n * (size_t)E);
}

void llama_embed_inputs(svlm_llama_ctx *c, float *x, const int32_t *ids, const float **embd, int n) {
    const int E = c->m->hp.n_embd;
    for (int i = 0; i < n;) {
        int j = i;
        if (ids[i] >= 0) {
            while (j < n && ids[j] >= 0)
                j++;
            llama_embed_rows(c->m, c->k, c->host_rows, x + (size_t)i * E, ids + i, j - i);
        } else {
            while (j < n && ids[j] < 0)
                j++;
            svlm_k_copy(c->k, x + (size_t)i * E, *embd, sizeof(float) * (size_t)(j - i) * (size_t)E);
            *embd += (size_t)(j - i) * E;
        }
        i = j;
    }
}

/* Copies rows [a, a + m) of one layer's keys (v = 0) or values (v = 1) of seq, as stored, into
 * dst (host memory), a run of adjacent rows at a time. */
static void gather_page_rows(const svlm_kv_seq *seq, int layer, int v, int a, int m, size_t row_bytes,
                             uint8_t *dst) {
    for (int i = 0; i < m;) {
        const uint8_t *first =
            v ? svlm_kv_seq_v_row(seq, layer, a + i) : svlm_kv_seq_k_row(seq, layer, a + i);
        int n = 1;
        while (i + n < m && (const uint8_t *)(v ? svlm_kv_seq_v_row(seq, layer, a + i + n)
                                                : svlm_kv_seq_k_row(seq, layer, a + i + n)) ==
                                first + (size_t)n * row_bytes)
            n++;
        memcpy(dst + (size_t)i * row_bytes, first, (size_t)n * row_bytes);
        i += n;
    }
}

/*
 * Brings rows [from, to) of one layer of the working copy up to date with the sequence: keys
 * are stored before RoPE in the pages and rotated here to their current positions. The rows
 * cross as stored (f16 pages: half the bytes) and are converted by the kernels.
 */
void llama_sync_working_copy(svlm_llama_ctx *c, const svlm_kv_seq *seq, int layer, int from, int to) {
    const svlm_llama_hparams *hp = &c->m->hp;
    const svlm_dtype page_type = svlm_kv_pool_params_of(svlm_kv_seq_pool(seq))->type;
    const size_t kvd = (size_t)hp->n_head_kv * hp->head_dim;
    const size_t row_bytes = kvd * (page_type == SVLM_F16 ? 2 : 4);
    uint8_t *host = (uint8_t *)c->host_rows; /* n_batch rows of 2 * kvd floats */
    for (int a = from; a < to; a += c->n_batch) {
        const int m = to - a < c->n_batch ? to - a : c->n_batch;
        for (int i = 0; i < m; i++)
            c->stage_pos[i] = svlm_kv_seq_pos(seq, a + i);
        gather_page_rows(seq, layer, 0, a, m, row_bytes, host);
        svlm_k_load(c->k, c->stage, host, page_type, (int64_t)m * (int64_t)kvd);
        if (c->raw) llama_store_rows(c, c->raw[layer], c->stage, a, m, kvd);
        svlm_k_copy(c->k, c->stage_pos_k, c->stage_pos, (size_t)m * sizeof(int32_t));
        svlm_k_rope(c->k, c->stage, m, hp->n_head_kv, hp->head_dim, hp->n_rot, c->stage_pos_k, hp->rope_base,
                    hp->rope_neox);
        llama_store_rows(c, c->k_cache[layer], c->stage, a, m, kvd);
        gather_page_rows(seq, layer, 1, a, m, row_bytes, host);
        if (page_type == c->kv_type) { /* the working copy keeps the pages' type: one copy across */
            svlm_k_copy(c->k, (uint8_t *)c->v_cache[layer] + (size_t)a * kvd * c->kv_elt, host,
                        (size_t)m * row_bytes);
        } else {
            svlm_k_load(c->k, c->stage, host, page_type, (int64_t)m * (int64_t)kvd);
            llama_store_rows(c, c->v_cache[layer], c->stage, a, m, kvd);
        }
    }
}

int llama_step_tables_alloc(svlm_kernels *k, int n_layer, int max_rows, llama_step_tables *t) {
    memset(t, 0, sizeof *t);
    t->max_rows = max_rows;
    const size_t dsts = (size_t)n_layer * 2 * (size_t)max_rows, items = (size_t)n_layer * (size_t)max_rows;
    t->dst_host = calloc(dsts, sizeof(void *));
    t->att_host = calloc(items, sizeof(svlm_attn_item));
    t->dst_k = svlm_k_alloc(k, dsts * sizeof(void *));
    t->att_k = svlm_k_alloc(k, items * sizeof(svlm_attn_item));
    t->layers = calloc((size_t)n_layer, sizeof *t->layers);
    return t->dst_host && t->att_host && t->dst_k && t->att_k && t->layers;
}

void llama_step_tables_free(svlm_kernels *k, llama_step_tables *t) {
    free(t->dst_host);
    free(t->att_host);
    free(t->layers);
    if (t->dst_k) svlm_k_free(k, t->dst_k);
    if (t->att_k) svlm_k_free(k, t->att_k);
    memset(t, 0, sizeof *t);
}

void llama_step_row(llama_step_tables *t, const svlm_llama_ctx *c, int rows, int r, const float *q,
                    float *att, int p0) {
    const int n_layer = c->m->hp.n_layer;
    const size_t row_bytes = (size_t)c->m->hp.n_head_kv * c->m->hp.head_dim * c->kv_elt;
    t->rows = rows;
    for (int l = 0; l < n_layer; l++) {
        t->dst_host[(size_t)(2 * l) * rows + r] = (uint8_t *)c->k_cache[l] + (size_t)p0 * row_bytes;
        t->dst_host[(size_t)(2 * l + 1) * rows + r] = (uint8_t *)c->v_cache[l] + (size_t)p0 * row_bytes;
        t->att_host[(size_t)l * rows + r] =
            (svlm_attn_item){.q = q, .k = c->k_cache[l], .v = c->v_cache[l], .out = att, .n_kv = p0 + 1};
    }
}

void llama_step_upload(svlm_kernels *k, llama_step_tables *t, int n_layer) {
    svlm_k_copy(k, t->dst_k, t->dst_host, sizeof(void *) * 2 * (size_t)n_layer * (size_t)t->rows);
    svlm_k_copy(k, t->att_k, t->att_host, sizeof(svlm_attn_item) * (size_t)n_layer * (size_t)t->rows);
}

svlm_rope_store_args llama_step_rope(const svlm_llama_ctx *c, const llama_step_tables *t, int l,
                                     const int32_t *pos, float *keep, int round) {
    const svlm_llama_hparams *hp = &c->m->hp;
    return (svlm_rope_store_args){.n_head = hp->n_head,
                                  .n_kv_head = hp->n_head_kv,
                                  .head_dim = hp->head_dim,
                                  .n_rot = hp->n_rot,
                                  .pos = pos,
                                  .base = hp->rope_base,
                                  .neox = hp->rope_neox,
                                  .dsts = t->dst_k + (size_t)(2 * l) * t->rows,
                                  .kv_type = c->kv_type,
                                  .keep = keep,
                                  .round = round};
}

void llama_step_layer(const svlm_llama_ctx *c, const llama_step_tables *t, int l, const svlm_llama_layer *L,
                      const float *x, float *h, float *q, float *kx, float *vx, const int32_t *pos,
                      float *keep, int round) {
    const svlm_llama_hparams *hp = &c->m->hp;
    const int n = t->rows;
    const svlm_weight *ws[3] = {&L->wq, &L->wk, &L->wv};
    const svlm_rope_store_args r = llama_step_rope(c, t, l, pos, keep, round);
    svlm_k_rmsnorm_qkv_rope_store(c->k, x, L->attn_norm, hp->rms_eps, h, ws, n, q, kx, vx, &r);
    const svlm_attn_args shape = llama_cache_attention(c, l, NULL, NULL, 1, 0);
    svlm_k_attention_items(c->k, &shape, t->att_k + (size_t)l * n, n);
}

int llama_rows_alloc(svlm_kernels *k, const svlm_llama_hparams *hp, size_t rows, llama_rows *r) {
    const size_t E = (size_t)hp->n_embd, kvd = (size_t)hp->n_head_kv * hp->head_dim;
    const size_t qd = (size_t)hp->n_head * hp->head_dim, F = (size_t)hp->n_ff;
    r->x = svlm_k_alloc(k, rows * E * 4);
    r->h = svlm_k_alloc(k, rows * (E > qd ? E : qd) * 4);
    r->q = svlm_k_alloc(k, rows * qd * 4);
    r->kx = svlm_k_alloc(k, rows * kvd * 4);
    r->vx = svlm_k_alloc(k, rows * kvd * 4);
    r->att = svlm_k_alloc(k, rows * qd * 4);
    r->gate = svlm_k_alloc(k, rows * F * 4);
    r->up = svlm_k_alloc(k, rows * F * 4);
    return r->x && r->h && r->q && r->kx && r->vx && r->att && r->gate && r->up;
}

void llama_rows_free(svlm_kernels *k, llama_rows *r) {
    float *bufs[] = {r->x, r->h, r->q, r->kx, r->vx, r->att, r->gate, r->up};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) svlm_k_free(k, bufs[i]);
    memset(r, 0, sizeof *r);
}

void llama_layer_qkv(svlm_kernels *k, const svlm_llama_hparams *hp, const svlm_llama_layer *L, const float *x,
                     float *h, float *q, float *kx, float *vx, int n) {
    const svlm_weight *ws[3] = {&L->wq, &L->wk, &L->wv};
    float *ys[3] = {q, kx, vx};
    svlm_k_rmsnorm_matmul_multi(k, x, L->attn_norm, hp->rms_eps, h, ws, 3, n, ys);
}

void llama_layer_rest(svlm_kernels *k, const svlm_llama_hparams *hp, const svlm_llama_layer *L,
                      const float *att, float *x, float *h, float *gate, float *up, int n) {
    svlm_k_matmul_add(k, &L->wo, att, n, x, h);
    svlm_k_rmsnorm_swiglu(k, x, L->ffn_norm, hp->rms_eps, h, &L->w_gate, &L->w_up, n, gate, up);
    svlm_k_matmul_add(k, &L->w_down, gate, n, x, h);
}

/*
 * One chunk of at most n_batch tokens at cache rows p0..p0+n-1. Without a sequence the rows are
 * the context's own cache; with one, they are also written (before RoPE) to its pages, and rows
 * [sync_from, p0) of the working copy are refreshed from the pages first.
 */
void llama_new_rows_to_pending(svlm_llama_ctx *c, svlm_kv_seq *seq, int layer, float *kx, float *vx, int n,
                               int p0, int sync_from) {
    svlm_kernels *k = c->k;
    const size_t kvd = (size_t)c->m->hp.n_head_kv * c->m->hp.head_dim,
                 row_bytes = sizeof(float) * (size_t)n * kvd;
    float *pk = c->pending + (size_t)layer * 2 * n * kvd; /* [n_layer][2][n][kvd] */
    svlm_k_copy(k, pk, kx, row_bytes);
    svlm_k_copy(k, pk + (size_t)n * kvd, vx, row_bytes);
    if (sync_from < p0) llama_sync_working_copy(c, seq, layer, sync_from, p0);
    /* the new rows must look exactly as they will when read back from the pages */
    if (svlm_kv_pool_params_of(svlm_kv_seq_pool(seq))->type == SVLM_F16) {
        svlm_k_round_f16(k, kx, (int64_t)n * (int64_t)kvd);
        svlm_k_round_f16(k, vx, (int64_t)n * (int64_t)kvd);
    }
}

void llama_pending_to_pages(svlm_llama_ctx *c, svlm_kv_seq *seq, int p0, int n) {
    const svlm_llama_hparams *hp = &c->m->hp;
    const size_t kvd = (size_t)hp->n_head_kv * hp->head_dim, per_layer = (size_t)2 * n * kvd;
    svlm_k_copy(c->k, c->pending_host, c->pending, sizeof(float) * per_layer * (size_t)hp->n_layer);
    for (int l = 0; l < hp->n_layer; l++) {
        const float *pk = c->pending_host + (size_t)l * per_layer;
        svlm_kv_seq_write(seq, l, p0, n, pk, pk + (size_t)n * kvd);
    }
}

svlm_attn_args llama_cache_attention(const svlm_llama_ctx *c, int layer, const float *q, float *out, int n,
                                     int p0) {
    const svlm_llama_hparams *hp = &c->m->hp;
    return (svlm_attn_args){
        .q = q,
        .k = c->k_cache[layer],
        .v = c->v_cache[layer],
        .kv_type = c->kv_type,
        .kv_stride = (int64_t)hp->n_head_kv * hp->head_dim,
        .out = out,
        .n_q = n,
        .n_kv = p0 + n,
        .n_head = hp->n_head,
        .n_kv_head = hp->n_head_kv,
        .head_dim = hp->head_dim,
        .causal = 1,
        .scale = 1.0f / sqrtf((float)hp->head_dim),
    };
}

int llama_step_fused(const svlm_llama_ctx *c, llama_step_tables *t, const llama_rows *r, const int32_t *pos,
                     float *pending, int round) {
    const svlm_llama *m = c->m;
    const svlm_llama_hparams *hp = &m->hp;
    const size_t kvd = (size_t)hp->n_head_kv * hp->head_dim;
    if (!t->layers || t->rows != 1) return 0;
    for (int l = 0; l < hp->n_layer; l++) {
        const svlm_llama_layer *L = &m->layers[l];
        t->layers[l] = (svlm_decode_layer){.attn_norm = L->attn_norm,
                                           .ffn_norm = L->ffn_norm,
                                           .wq = &L->wq,
                                           .wk = &L->wk,
                                           .wv = &L->wv,
                                           .wo = &L->wo,
                                           .w_gate = &L->w_gate,
                                           .w_up = &L->w_up,
                                           .w_down = &L->w_down,
                                           .dsts = t->dst_k + (size_t)(2 * l),
                                           .att = t->att_k + l,
                                           .keep = pending ? pending + (size_t)l * 2 * kvd : NULL};
    }
    const svlm_decode_layers_args a = {.n_layer = hp->n_layer,
                                       .layers = t->layers,
                                       .x = r->x,
                                       .h = r->h,
                                       .q = r->q,
                                       .kx = r->kx,
                                       .vx = r->vx,
                                       .att = r->att,
                                       .gate = r->gate,
                                       .up = r->up,
                                       .eps = hp->rms_eps,
                                       .rope = llama_step_rope(c, t, 0, pos, NULL, round),
                                       .attn = llama_cache_attention(c, 0, NULL, NULL, 1, 0)};
    return svlm_k_decode_layers(c->k, &a);
}

/* The layers of one chunk (see eval_chunk). step: a decode step whose cache rows and attention
 * go through c->step's tables. */
static void run_layers(svlm_llama_ctx *c, svlm_kv_seq *seq, int p0, int sync_from, int n, int pend,
                       int step) {
    const svlm_llama *m = c->m;
    const svlm_llama_hparams *hp = &m->hp;
    svlm_kernels *k = c->k;
    const int kvd = hp->n_head_kv * hp->head_dim;
    const int step_round = step && pend && svlm_kv_pool_params_of(svlm_kv_seq_pool(seq))->type == SVLM_F16;
    const llama_rows rows = {c->x, c->h, c->q, c->kx, c->vx, c->att, c->gate, c->up};
    if (step && llama_step_fused(c, &c->step, &rows, c->pos_k, pend ? c->pending : NULL, step_round)) return;
    for (int l = 0; l < hp->n_layer; l++) {
        const svlm_llama_layer *L = &m->layers[l];
        if (step) { /* no working copy to bring over: the layer in one pass */
            llama_step_layer(c, &c->step, l, L, c->x, c->h, c->q, c->kx, c->vx, c->pos_k,
                             pend ? c->pending + (size_t)l * 2 * n * kvd : NULL, step_round);
            llama_layer_rest(k, hp, L, c->att, c->x, c->h, c->gate, c->up, n);
            continue;
        }
        llama_layer_qkv(k, hp, L, c->x, c->h, c->q, c->kx, c->vx, n);
        if (pend) {
            llama_new_rows_to_pending(c, seq, l, c->kx, c->vx, n, p0, sync_from);
        } else if (seq) { /* a long chunk: the wait for its rows is small next to its compute */
            const size_t row_bytes = sizeof(float) * (size_t)n * kvd;
            float *hk = c->host_rows, *hv = c->host_rows + (size_t)n * kvd;
            svlm_k_copy(k, hk, c->kx, row_bytes);
            svlm_k_copy(k, hv, c->vx, row_bytes);
            svlm_kv_seq_write(seq, l, p0, n, hk, hv);
            if (c->raw) llama_store_rows(c, c->raw[l], c->kx, p0, n, (size_t)kvd);
            if (sync_from < p0) llama_sync_working_copy(c, seq, l, sync_from, p0);
            if (svlm_kv_pool_params_of(svlm_kv_seq_pool(seq))->type == SVLM_F16) {
                svlm_k_round_f16(k, c->kx, (int64_t)n * kvd);
                svlm_k_round_f16(k, c->vx, (int64_t)n * kvd);
            }
        }
        svlm_k_rope(k, c->q, n, hp->n_head, hp->head_dim, hp->n_rot, c->pos_k, hp->rope_base, hp->rope_neox);
        svlm_k_rope(k, c->kx, n, hp->n_head_kv, hp->head_dim, hp->n_rot, c->pos_k, hp->rope_base,
                    hp->rope_neox);
        llama_store_rows(c, c->k_cache[l], c->kx, p0, n, (size_t)kvd);
        llama_store_rows(c, c->v_cache[l], c->vx, p0, n, (size_t)kvd);
        svlm_attn_args a = llama_cache_attention(c, l, c->q, c->att, n, p0);
        svlm_k_attention(k, &a);
        llama_layer_rest(k, hp, L, c->att, c->x, c->h, c->gate, c->up, n);
    }
}

/* The pending rows' host copy, made on first use: page-locked on a GPU, so their one copy back per
 * chunk is a DMA rather than a staged copy through the host's CPU (2.2B: 32 MB a frame); many
 * contexts never need it (a stream's, while its frames go through the multi-sequence pass).
 * 0: none could be had. */
static int pending_host_ready(svlm_llama_ctx *c) {
    if (!c->pending_host) {
        const svlm_llama_hparams *hp = &c->m->hp;
        const size_t kvd = (size_t)hp->n_head_kv * hp->head_dim;
        c->pending_host =
            svlm_k_alloc_host(c->k, (size_t)hp->n_layer * 2 * LLAMA_PENDING_ROWS * kvd * sizeof(float));
    }
    return c->pending_host != NULL;
}

/* What a call wants back: the logits ([n_vocab] for the last token, [n][n_vocab] with all), or
 * the greedy next token (next), or nothing. */
typedef struct {
    float *logits;
    int all;
    int32_t *next;
} eval_out;

static void eval_chunk(svlm_llama_ctx *c, svlm_kv_seq *seq, int p0, int sync_from, const int32_t *ids,
                       const float **embd, int n, const eval_out *out) {
    const svlm_llama *m = c->m;
    const svlm_llama_hparams *hp = &m->hp;
    svlm_kernels *k = c->k;
    const int E = hp->n_embd;

    llama_embed_inputs(c, c->x, ids, embd, n);
    for (int i = 0; i < n; i++)
        c->batch_pos[i] = seq ? svlm_kv_seq_pos(seq, p0 + i) : p0 + i;
    svlm_k_copy(k, c->pos_k, c->batch_pos, sizeof(int32_t) * (size_t)n);
    /* new rows reach the pages after the layers (without the host copy: layer by layer) */
    const int pend = seq && n <= LLAMA_PENDING_ROWS && pending_host_ready(c);
    /* a decode step with nothing to bring over from the pages: the same ops every step, which a
     * GPU replays in one launch */
    const int step = n == 1 && (!seq || (sync_from >= p0 && pend)); /* (without pend's copy, the
                                                                     * long form writes the pages) */
    if (step) {
        llama_step_row(&c->step, c, 1, 0, c->q, c->att, p0);
        llama_step_upload(k, &c->step, hp->n_layer);
        const int page_f16 = seq && svlm_kv_pool_params_of(svlm_kv_seq_pool(seq))->type == SVLM_F16;
        svlm_k_replay_begin(k, c, (uint64_t)(seq ? 1 + page_f16 : 0));
    }
    run_layers(c, seq, p0, sync_from, n, pend, step);
    if (step && !svlm_k_replay_end(k)) run_layers(c, seq, p0, sync_from, n, pend, step);
    if (pend) {
        llama_pending_to_pages(c, seq, p0, n);
        llama_pending_to_raw(c, p0, n);
    }
    if (!out->logits && !out->next) return;
    if (out->logits && out->all) {
        svlm_k_rmsnorm(k, c->x, m->output_norm, c->logit_in, n, E, hp->rms_eps);
        svlm_k_matmul(k, &m->output, c->logit_in, n, out->logits);
        return;
    }
    svlm_k_rmsnorm(k, c->x + (size_t)(n - 1) * E, m->output_norm, c->logit_in, 1, E, hp->rms_eps);
    if (out->logits) svlm_k_matmul(k, &m->output, c->logit_in, 1, out->logits);
    if (out->next) { /* the logits stay where they are made; one id comes back */
        svlm_k_matmul(k, &m->output, c->logit_in, 1, c->logits_k);
        svlm_k_argmax(k, c->logits_k, 1, hp->n_vocab, out->next);
    }
}

svlm_status llama_check_inputs(const svlm_llama_ctx *c, const int32_t *ids, const float *embd, int n,
                               svlm_err *err) {
    if (n <= 0) return svlm_fail(err, SVLM_E_INVALID, "nothing to evaluate");
    const int n_vocab = c->m->hp.n_vocab;
    for (int i = 0; i < n; i++)
        if (ids[i] >= n_vocab) return svlm_fail(err, SVLM_E_INVALID, "token id %d out of range", ids[i]);
    for (int i = 0; i < n; i++)
        if (ids[i] < 0 && !embd) return svlm_fail(err, SVLM_E_INVALID, "image token without embeddings");
    return SVLM_OK;
}

/* Runs n tokens in chunks of n_batch starting at cache row p0. */
static void eval_chunks(svlm_llama_ctx *c, svlm_kv_seq *seq, int p0, int sync_from, const int32_t *ids,
                        const float *embd, int n, const eval_out *out) {
    const int n_vocab = c->m->hp.n_vocab;
    const float *e = embd;
    svlm_k_defer(c->k, 1); /* the host touches the buffers only through svlm_k_copy */
    if (seq) llama_apply_shift(c, seq);
    for (int done = 0; done < n;) {
        int chunk = n - done < c->n_batch ? n - done : c->n_batch;
        int last = done + chunk == n;
        eval_out part = {0};
        if (out->logits && out->all)
            part = (eval_out){.logits = out->logits + (size_t)done * n_vocab, .all = 1};
        else if (last)
            part = *out;
        eval_chunk(c, seq, p0 + done, sync_from, ids + done, &e, chunk, &part);
        if (!seq) c->n_past += chunk;
        done += chunk;
        sync_from = p0 + done;
    }
    svlm_k_defer(c->k, 0);
}

svlm_status svlm_llama_ctx_reserve_greedy(svlm_llama_ctx *c, svlm_err *err) {
    if (c->logits_k) return SVLM_OK;
    c->logits_k = svlm_k_alloc(c->k, (size_t)c->m->hp.n_vocab * sizeof(float));
    return c->logits_k ? SVLM_OK : svlm_fail(err, SVLM_E_NOMEM, "out of memory for the logits");
}

/* The greedy search's logits buffer, on first use. */
static svlm_status greedy_ready(svlm_llama_ctx *c, const eval_out *out, svlm_err *err) {
    return out->next ? svlm_llama_ctx_reserve_greedy(c, err) : SVLM_OK;
}

static svlm_status eval_plain(svlm_llama_ctx *c, const int32_t *ids, const float *embd, int n,
                              const eval_out *out, svlm_err *err) {
    svlm_status st = llama_check_inputs(c, ids, embd, n, err);
    if (!st) st = greedy_ready(c, out, err);
    if (st) return st;
    if (n > c->n_ctx - c->n_past)
        return svlm_fail(err, SVLM_E_LIMIT, "context full: %d tokens cached, %d more do not fit in %d",
                         c->n_past, n, c->n_ctx);
    if (c->mirror_of.uid) { /* the buffers held a sequence's working copy: start afresh */
        memset(&c->mirror_of, 0, sizeof c->mirror_of);
        c->n_past = 0;
    }
    eval_chunks(c, NULL, c->n_past, c->n_past, ids, embd, n, out);
    return SVLM_OK;
}

svlm_status svlm_llama_eval(svlm_llama_ctx *c, const int32_t *ids, const float *embd, int n, float *logits,
                            int all_logits, svlm_err *err) {
    const eval_out out = {.logits = logits, .all = all_logits};
    return eval_plain(c, ids, embd, n, &out, err);
}

svlm_status svlm_llama_eval_greedy(svlm_llama_ctx *c, const int32_t *ids, const float *embd, int n,
                                   int32_t *next, svlm_err *err) {
    const eval_out out = {.next = next};
    return eval_plain(c, ids, embd, n, &out, err);
}

/* How many leading rows of the working copy still match the sequence at version v. */
int llama_working_copy_valid(const svlm_llama_ctx *c, svlm_kv_version v) {
    if (!c->mirror_of.uid || c->mirror_of.uid != v.uid) return 0;
    if (c->mirror_of.epoch == v.epoch) return c->mirror_n;
    if (c->mirror_of.epoch + 1 == v.epoch) return c->mirror_n < v.kept ? c->mirror_n : v.kept;
    return 0;
}

svlm_status llama_seq_prepare(svlm_llama_ctx *c, svlm_kv_seq *seq, svlm_kv_kind kind, int64_t tag,
                              const int32_t *ids, const float *embd, int n, int *p0, int *sync_from,
                              svlm_err *err) {
    svlm_status st = llama_check_inputs(c, ids, embd, n, err);
    if (st) return st;
    const svlm_llama_hparams *hp = &c->m->hp;
    const svlm_kv_pool_params *pp = svlm_kv_pool_params_of(svlm_kv_seq_pool(seq));
    if (pp->n_layer != hp->n_layer || pp->kv_dim != hp->n_head_kv * hp->head_dim)
        return svlm_fail(err, SVLM_E_INVALID, "KV pool shaped for %d layers x %d, the model has %d x %d",
                         pp->n_layer, pp->kv_dim, hp->n_layer, hp->n_head_kv * hp->head_dim);
    if (svlm_kv_seq_capacity(seq) > c->n_ctx)
        return svlm_fail(err, SVLM_E_LIMIT,
                         "a cache of %d tokens needs a context of at least that size (have %d)",
                         svlm_kv_seq_capacity(seq), c->n_ctx);
    int first = 0;
    if ((st = svlm_kv_seq_append(seq, kind, tag, n, &first, err))) return st;
    const svlm_kv_version v = svlm_kv_seq_version(seq);
    const int valid = llama_plan_shift(c, seq, v, llama_working_copy_valid(c, v));
    *sync_from = valid < first ? valid : first;
    *p0 = first;
    /* the copy is unknown while it is rebuilt; the caller records what it holds afterwards */
    memset(&c->mirror_of, 0, sizeof c->mirror_of);
    return SVLM_OK;
}

static svlm_status eval_seq(svlm_llama_ctx *c, svlm_kv_seq *seq, svlm_kv_kind kind, int64_t tag,
                            const int32_t *ids, const float *embd, int n, const eval_out *out,
                            svlm_err *err) {
    int first = 0, valid = 0;
    svlm_status st = greedy_ready(c, out, err); /* before the sequence grows */
    if (!st) st = llama_seq_prepare(c, seq, kind, tag, ids, embd, n, &first, &valid, err);
    if (st) return st;
    eval_chunks(c, seq, first, valid, ids, embd, n, out);
    c->mirror_of = svlm_kv_seq_version(seq);
    c->mirror_n = first + n;
    c->raw_n = c->mirror_n; /* every row's raw key was kept or brought over (when c->raw) */
    c->n_past = 0;
    return SVLM_OK;
}

svlm_status svlm_llama_eval_seq(svlm_llama_ctx *c, svlm_kv_seq *seq, svlm_kv_kind kind, int64_t tag,
                                const int32_t *ids, const float *embd, int n, float *logits, int all_logits,
                                svlm_err *err) {
    const eval_out out = {.logits = logits, .all = all_logits};
    return eval_seq(c, seq, kind, tag, ids, embd, n, &out, err);
}

svlm_status svlm_llama_eval_seq_greedy(svlm_llama_ctx *c, svlm_kv_seq *seq, svlm_kv_kind kind, int64_t tag,
                                       const int32_t *ids, const float *embd, int n, int32_t *next,
                                       svlm_err *err) {
    const eval_out out = {.next = next};
    return eval_seq(c, seq, kind, tag, ids, embd, n, &out, err);
}
