/*
 * Shared by the tests of working copies (test_llama_shift, test_stream_take): two contexts'
 * copies of their sequences compared bit for bit. Needs llm/llama_internal.h.
 */
#ifndef SVLM_TESTS_TEST_WORKING_COPY_H
#define SVLM_TESTS_TEST_WORKING_COPY_H

#include <string.h>

#include "llm/llama_internal.h"

/* 1 when both hold the same number of rows (at least one) and every key and value row of every
 * layer is the same, bit for bit. */
static inline int test_same_working_copies(const svlm_llama_ctx *a, const svlm_llama_ctx *b) {
    if (a->mirror_n != b->mirror_n || a->mirror_n <= 0) return 0;
    const svlm_llama_hparams *hp = &a->m->hp;
    const size_t bytes = (size_t)a->mirror_n * hp->n_head_kv * hp->head_dim * a->kv_elt;
    for (int l = 0; l < hp->n_layer; l++)
        if (memcmp(a->k_cache[l], b->k_cache[l], bytes) || memcmp(a->v_cache[l], b->v_cache[l], bytes))
            return 0;
    return 1;
}

#endif
