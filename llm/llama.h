/*
 * The Llama-architecture decoder (SmolLM2 / SmolVLM2 text models, llama2.c exports): weights
 * from a GGUF file, a KV cache, batched prefill and one-token decode, computing what llama.cpp
 * computes (GQA, RoPE normal/NeoX, RMSNorm, SwiGLU, tied or untied head).
 */
#ifndef SVLM_LLM_LLAMA_H
#define SVLM_LLM_LLAMA_H

#include <stdint.h>

#include "kernels/kernels.h"
#include "llm/gguf.h"
#include "llm/tokenizer.h"
#include "svlm.h"

typedef struct svlm_llama_hparams {
    int n_vocab, n_embd, n_layer, n_head, n_head_kv, head_dim, n_ff, n_rot;
    int n_ctx_train;
    float rope_base, rms_eps;
    int rope_neox; /* 0: adjacent pairs (llama.cpp "normal"), 1: NeoX halves */
    int tied_output;
} svlm_llama_hparams;

typedef struct svlm_llama svlm_llama;
typedef struct svlm_llama_ctx svlm_llama_ctx;

svlm_status svlm_llama_load(const char *path, svlm_llama **out, svlm_err *err);
void svlm_llama_free(svlm_llama *m);
const svlm_llama_hparams *svlm_llama_hparams_of(const svlm_llama *m);
const svlm_tokenizer *svlm_llama_tokenizer(const svlm_llama *m);
const gguf_file *svlm_llama_gguf(const svlm_llama *m);

/* A context: a KV cache of n_ctx positions (kv_type SVLM_F32 or SVLM_F16) plus scratch. */
svlm_status svlm_llama_ctx_create(svlm_llama *m, svlm_kernels *k, int n_ctx, svlm_dtype kv_type,
                                  svlm_llama_ctx **out, svlm_err *err);
void svlm_llama_ctx_free(svlm_llama_ctx *c);
int svlm_llama_ctx_n_past(const svlm_llama_ctx *c);
void svlm_llama_ctx_reset(svlm_llama_ctx *c);

/*
 * Appends n tokens at positions n_past..n_past+n-1. ids[i] >= 0 is a token id; ids[i] < 0 takes
 * the next row of `embd` ([rows][n_embd], used in order) as the input embedding (image tokens).
 * logits: NULL, or [n_vocab] for the last token, or [n][n_vocab] when all_logits is set.
 */
svlm_status svlm_llama_eval(svlm_llama_ctx *c, const int32_t *ids, const float *embd, int n,
                            float *logits, int all_logits, svlm_err *err);

#endif
