/*
 * Working copies that follow evictions on the kernels' side. Once a stream's frame window is
 * full, every new frame evicts the oldest, and every row after it moves down and takes a new
 * position. Bringing those rows over again from the pages (llama_sync_working_copy) is, on a GPU,
 * hundreds of small copies and launches per frame; with the keys also kept before RoPE beside
 * the working copy (c->raw), the move is one op for all layers (svlm_k_kv_shift): the same rows,
 * re-rotated from the same stored keys, so the numbers do not change.
 */
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "llm/llama_internal.h"

void llama_raw_free(svlm_llama_ctx *c) {
    if (c->raw)
        for (int l = 0; l < c->m->hp.n_layer; l++)
            if (c->raw[l]) svlm_k_free(c->k, c->raw[l]);
    free(c->raw);
    free(c->shift_pos);
    if (c->shift_pos_k) svlm_k_free(c->k, c->shift_pos_k);
    c->raw = NULL;
    c->shift_pos = c->shift_pos_k = NULL;
    c->raw_n = 0;
    c->shift_n = 0;
}

svlm_status svlm_llama_ctx_follow_moves(svlm_llama_ctx *c, int on, svlm_err *err) {
    if (!on || c->raw) {
        if (!on) llama_raw_free(c);
        return SVLM_OK;
    }
    const svlm_llama_hparams *hp = &c->m->hp;
    const size_t row = (size_t)hp->n_head_kv * hp->head_dim * c->kv_elt;
    c->raw = calloc((size_t)hp->n_layer, sizeof *c->raw);
    c->shift_pos = calloc((size_t)c->n_ctx, sizeof *c->shift_pos);
    c->shift_pos_k = svlm_k_alloc(c->k, (size_t)c->n_ctx * sizeof(int32_t));
    int ok = c->raw && c->shift_pos && c->shift_pos_k;
    for (int l = 0; ok && l < hp->n_layer; l++)
        ok = (c->raw[l] = svlm_k_alloc(c->k, (size_t)c->n_ctx * row)) != NULL;
    if (!ok) {
        llama_raw_free(c);
        return svlm_fail(err, SVLM_E_NOMEM, "out of memory for the keys before RoPE of a %d-token context",
                         c->n_ctx);
    }
    c->raw_n = 0; /* the copy's rows so far have no raw keys: the next use rebuilds both */
    return SVLM_OK;
}

int llama_plan_shift(svlm_llama_ctx *c, const svlm_kv_seq *seq, svlm_kv_version v, int valid) {
    c->shift_n = 0;
    if (!c->raw) return valid;
    if (valid > c->raw_n) valid = c->raw_n; /* rows without raw keys are rebuilt with them */
    const svlm_dtype page_type = svlm_kv_pool_params_of(svlm_kv_seq_pool(seq))->type;
    /* raw keys hold the pages' bytes only when the copy has their type */
    if (page_type != c->kv_type || v.gone <= 0 || c->mirror_of.uid != v.uid ||
        c->mirror_of.epoch + 1 != v.epoch)
        return valid;
    const int src = v.kept + v.gone, end = c->mirror_n < c->raw_n ? c->mirror_n : c->raw_n;
    if (end <= src || valid < v.kept) return valid;
    c->shift_dst = v.kept;
    c->shift_src = src;
    c->shift_n = end - src;
    return v.kept + c->shift_n;
}

void llama_apply_shift(svlm_llama_ctx *c, const svlm_kv_seq *seq) {
    if (c->shift_n <= 0) return;
    const svlm_llama_hparams *hp = &c->m->hp;
    const int n = c->shift_n, dst = c->shift_dst;
    for (int i = 0; i < n; i++)
        c->shift_pos[i] = svlm_kv_seq_pos(seq, dst + i);
    svlm_k_copy(c->k, c->shift_pos_k, c->shift_pos, sizeof(int32_t) * (size_t)n);
    const svlm_kv_shift_args a = {.raw = c->raw,
                                  .kc = c->k_cache,
                                  .vc = c->v_cache,
                                  .n_layer = hp->n_layer,
                                  .type = c->kv_type,
                                  .dst = dst,
                                  .src = c->shift_src,
                                  .n = n,
                                  .n_kv_head = hp->n_head_kv,
                                  .head_dim = hp->head_dim,
                                  .n_rot = hp->n_rot,
                                  .neox = hp->rope_neox,
                                  .base = hp->rope_base,
                                  .pos = c->shift_pos_k};
    svlm_k_kv_shift(c->k, &a);
    c->moves++;
    c->moved_rows += n;
    c->shift_n = 0;
}

void llama_pending_to_raw(svlm_llama_ctx *c, int p0, int n) {
    if (!c->raw) return;
    const size_t kvd = (size_t)c->m->hp.n_head_kv * c->m->hp.head_dim;
    for (int l = 0; l < c->m->hp.n_layer; l++)
        llama_store_rows(c, c->raw[l], c->pending + (size_t)l * 2 * n * kvd, p0, n, kvd);
}
