/* Internal layout of the decoder's model and context (shared by llama_model.c and llama_eval.c). */
#ifndef SVLM_LLM_LLAMA_INTERNAL_H
#define SVLM_LLM_LLAMA_INTERNAL_H

#include "llm/llama.h"

typedef struct svlm_llama_layer {
    const float *attn_norm, *ffn_norm;
    svlm_weight wq, wk, wv, wo, w_gate, w_up, w_down;
} svlm_llama_layer;

struct svlm_llama {
    gguf_file *gguf;
    svlm_tokenizer *tok;
    svlm_llama_hparams hp;
    svlm_weight tok_embd, output;
    const float *output_norm;
    svlm_llama_layer *layers;
};

struct svlm_llama_ctx {
    svlm_llama *m;
    svlm_kernels *k;
    int n_ctx, n_past, n_batch;
    svlm_dtype kv_type;
    size_t kv_elt;  /* bytes per cached element */
    void **k_cache; /* per layer: [n_ctx][n_head_kv * head_dim] */
    void **v_cache;
    int32_t *pos; /* RoPE position of each cache slot */
    /* when serving a paged sequence, k_cache/v_cache hold its rows 0..mirror_n-1 (RoPE applied)
     * as of version mirror_of; mirror_of.uid == 0 means they hold the context's own cache */
    svlm_kv_version mirror_of;
    int mirror_n;
    /* scratch, sized for n_batch tokens */
    float *x, *h, *q, *kx, *vx, *att, *gate, *up, *logit_in;
    float *stage; /* rows copied out of pages on their way into the working copy */
    int32_t *batch_pos, *stage_pos;
};

#endif
