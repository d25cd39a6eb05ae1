/*
 * A working copy taken from another context. A question's answer runs on a fork of its stream,
 * in a context of its own; building that context's copy from the pages costs, for a window of
 * about 1200 rows, a host gather and five ops per 512 rows of every layer (on a GPU, hundreds of
 * launches and copies from pageable memory). The stream's own context already holds those rows,
 * rotated: copying them is two copies per layer, and the same numbers when both copies have the
 * same type (f16 keys are rounded after RoPE, so an f16 copy is not an f32 one's).
 */
#include <string.h>

#include "llm/llama_internal.h"

static int same_version(svlm_kv_version a, svlm_kv_version b) {
    return a.uid && a.uid == b.uid && a.epoch == b.epoch;
}

int svlm_llama_ctx_take_copy(svlm_llama_ctx *dst, const svlm_llama_ctx *src, const svlm_kv_seq *src_seq,
                             const svlm_kv_seq *seq) {
    const int n = svlm_kv_seq_len(seq);
    if (dst == src || dst->m != src->m || dst->kv_type != src->kv_type || n <= 0 || n > dst->n_ctx ||
        svlm_kv_seq_len(src_seq) != n || src->mirror_n != n ||
        !same_version(src->mirror_of, svlm_kv_seq_version(src_seq)))
        return 0;
    const svlm_llama_hparams *hp = &dst->m->hp;
    const size_t bytes = (size_t)n * hp->n_head_kv * hp->head_dim * dst->kv_elt;
    svlm_k_defer(dst->k, 1);
    for (int l = 0; l < hp->n_layer; l++) {
        svlm_k_copy(dst->k, dst->k_cache[l], src->k_cache[l], bytes);
        svlm_k_copy(dst->k, dst->v_cache[l], src->v_cache[l], bytes);
    }
    svlm_k_defer(dst->k, 0); /* done before the caller lets src change */
    dst->mirror_of = svlm_kv_seq_version(seq);
    dst->mirror_n = n;
    dst->raw_n = 0; /* (raw keys, when dst keeps them, are rebuilt) */
    dst->n_past = 0;
    return 1;
}
