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
#include "llm/kv_cache.h"
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
/* on: c also keeps its cached keys before RoPE (kv_type, as much again as its keys), so that when
 * an eviction moves a sequence's rows (a stream's oldest frame leaving its window) c moves and
 * re-rotates them where they are (one op) instead of bringing them over again from the pages:
 * the same numbers, for sequences whose pages have c's kv_type. What a GPU wants for a stream's
 * context; off by default. */
svlm_status svlm_llama_ctx_follow_moves(svlm_llama_ctx *c, int on, svlm_err *err);
/* dst's working copy for seq, copied from src's (on dst's kernels, finished on return) when seq
 * holds what src_seq holds and src's copy is of src_seq as it is now (seq a fork of src_seq made
 * since src's last use) and both contexts have the same KV type: the numbers dst would otherwise
 * build from the pages. Returns 1 when taken, 0 when not (dst then builds it as usual). The caller
 * keeps src and src_seq unchanged meanwhile (src's kernels idle). */
int svlm_llama_ctx_take_copy(svlm_llama_ctx *dst, const svlm_llama_ctx *src, const svlm_kv_seq *src_seq,
                             const svlm_kv_seq *seq);

/*
 * Appends n tokens at positions n_past..n_past+n-1. ids[i] >= 0 is a token id; ids[i] < 0 takes
 * the next row of `embd` ([rows][n_embd], used in order) as the input embedding (image tokens).
 * logits: NULL, or [n_vocab] for the last token, or [n][n_vocab] when all_logits is set.
 */
svlm_status svlm_llama_eval(svlm_llama_ctx *c, const int32_t *ids, const float *embd, int n, float *logits,
                            int all_logits, svlm_err *err);
/* svlm_llama_eval for greedy decoding: *next receives the index of the last token's greatest
 * logit (svlm_k_argmax's rule), found where the logits are made; on a GPU one id crosses to the
 * host instead of n_vocab floats. next may be ids' last element (the token fed back). */
svlm_status svlm_llama_eval_greedy(svlm_llama_ctx *c, const int32_t *ids, const float *embd, int n,
                                   int32_t *next, svlm_err *err);

/* ---- streaming over a paged, bounded cache (llm/kv_cache.h) ---- */

/* A page pool shaped for this model's K/V rows. */
svlm_status svlm_llama_kv_pool_create(const svlm_llama *m, svlm_dtype kv_type, int page_tokens, int max_pages,
                                      svlm_kv_pool **out, svlm_err *err);

/*
 * Appends n tokens to `seq` as one span of `kind` (evicting older spans of that kind to make
 * room) and evaluates them at their cache positions; ids/embd/logits as in svlm_llama_eval.
 * The context's own K/V buffers serve as the working copy of the sequence (RoPE applied), so
 * n_ctx must be at least the sequence's capacity; consecutive calls on the same sequence copy
 * only what changed. Using a context for a sequence empties its own (svlm_llama_eval) cache.
 */
svlm_status svlm_llama_eval_seq(svlm_llama_ctx *c, svlm_kv_seq *seq, svlm_kv_kind kind, int64_t tag,
                                const int32_t *ids, const float *embd, int n, float *logits, int all_logits,
                                svlm_err *err);
/* The greedy forms' logits buffer ([n_vocab] on the context's kernels), now rather than at the
 * first greedy call: a caller that must know up front that a context has all its memory. */
svlm_status svlm_llama_ctx_reserve_greedy(svlm_llama_ctx *c, svlm_err *err);
/* svlm_llama_eval_seq with the greedy next token in *next, as svlm_llama_eval_greedy. */
svlm_status svlm_llama_eval_seq_greedy(svlm_llama_ctx *c, svlm_kv_seq *seq, svlm_kv_kind kind, int64_t tag,
                                       const int32_t *ids, const float *embd, int n, int32_t *next,
                                       svlm_err *err);

/* ---- continuous batching: one decode step of many sequences at once ---- */

/* Scratch for decode steps of up to max_seqs sequences together; uses the kernels of the
 * contexts it serves (all contexts of one step must share one svlm_kernels). */
typedef struct svlm_llama_batch svlm_llama_batch;
svlm_status svlm_llama_batch_create(svlm_llama *m, svlm_kernels *k, int max_seqs, svlm_llama_batch **out,
                                    svlm_err *err);
void svlm_llama_batch_free(svlm_llama_batch *b);
int svlm_llama_batch_max(const svlm_llama_batch *b);

/* One item of a batched decode step: like svlm_llama_eval_seq(ctx, seq, kind, tag, &id, NULL, 1,
 * logits, 0): token `id` is appended to `seq` and evaluated with `ctx` as its working copy;
 * logits (when set) receives [n_vocab], next (when set) the greedy next token as
 * svlm_llama_eval_seq_greedy gives it: the step's ids cross to the host in one copy. Each item
 * needs its own ctx and seq. */
typedef struct svlm_llama_batch_item {
    svlm_llama_ctx *ctx;
    svlm_kv_seq *seq;
    svlm_kv_kind kind;
    int64_t tag;
    int32_t id;
    float *logits;
    int32_t *next;
    svlm_status status; /* out: SVLM_OK, or why this item was not evaluated (err_msg) */
    char err_msg[128];
} svlm_llama_batch_item;

/* Evaluates n <= svlm_llama_batch_max(b) items together: the weights are read once for all of
 * them (the matrix products run on n rows), attention runs per sequence over its own cache. An
 * item that cannot be evaluated (bad token, full cache) gets its status and the others go on.
 * Results equal n separate svlm_llama_eval_seq calls up to the rounding of the backend's
 * n-row products. Returns SVLM_E_INVALID for bad arguments (n out of range, shared ctx/seq). */
svlm_status svlm_llama_eval_batch(svlm_llama_batch *b, svlm_llama_batch_item *items, int n, svlm_err *err);

/* ---- prefill of several sequences at once (frames of many streams) ---- */

/* Scratch for chunks of several sequences (up to max_rows rows in all) in one pass. */
typedef struct svlm_llama_multi svlm_llama_multi;
svlm_status svlm_llama_multi_create(svlm_llama *m, svlm_kernels *k, int max_rows, svlm_llama_multi **out,
                                    svlm_err *err);
void svlm_llama_multi_free(svlm_llama_multi *b);
/* A pool (common/threadpool.h) that writes the items' pages in parallel after the pass; NULL (the
 * default): the calling thread writes them. The caller serialises the pool's runs. */
struct svlm_pool;
void svlm_llama_multi_set_pool(svlm_llama_multi *b, struct svlm_pool *pool);
/* The most rows one item may bring (a frame with its timestamp text). */
int svlm_llama_multi_item_max(void);

/* One sequence's chunk: like svlm_llama_eval_seq(ctx, seq, kind, tag, ids, embd, n, NULL, 0),
 * with 1 <= n <= svlm_llama_multi_item_max(). Each item needs its own ctx and seq. */
typedef struct svlm_llama_multi_item {
    svlm_llama_ctx *ctx;
    svlm_kv_seq *seq;
    svlm_kv_kind kind;
    int64_t tag;
    const int32_t *ids;
    const float *embd; /* rows for the ids < 0, in order */
    int n;
    svlm_status status; /* out: SVLM_OK, or why this item was not evaluated (err_msg) */
    char err_msg[128];
} svlm_llama_multi_item;

/* Evaluates the items' chunks together: the matrix products run once on all their rows, RoPE,
 * the caches and attention per sequence. Results equal separate svlm_llama_eval_seq calls up to
 * the rounding of the backend's products on more rows. An item that cannot be evaluated gets its
 * status and the others go on. SVLM_E_INVALID for bad arguments (too many rows, shared ctx/seq). */
svlm_status svlm_llama_eval_seq_multi(svlm_llama_multi *b, svlm_llama_multi_item *items, int n,
                                      svlm_err *err);

#endif
