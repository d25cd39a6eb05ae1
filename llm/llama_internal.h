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

/* A decode step's per-row arguments: where each row's new key and value go in every layer
 * ([n_layer][2][rows] pointers) and each row's attention in every layer ([n_layer][rows]), on
 * the host and on the kernels' side. The step's ops read them there, so the ops themselves are
 * the same from step to step and a device backend can replay them (svlm_k_replay_begin). */
typedef struct llama_step_tables {
    int max_rows, rows;
    void **dst_host, **dst_k;
    svlm_attn_item *att_host, *att_k;
    svlm_decode_layer *layers; /* [n_layer]: a one-row step's layers as svlm_k_decode_layers takes them */
} llama_step_tables;

struct svlm_llama_ctx {
    svlm_llama *m;
    svlm_kernels *k;
    int n_ctx, n_past, n_batch;
    svlm_dtype kv_type;
    size_t kv_elt;  /* bytes per cached element */
    void **k_cache; /* per layer: [n_ctx][n_head_kv * head_dim] */
    void **v_cache;
    /* when serving a paged sequence, k_cache/v_cache hold its rows 0..mirror_n-1 (RoPE applied)
     * as of version mirror_of; mirror_of.uid == 0 means they hold the context's own cache */
    svlm_kv_version mirror_of;
    int mirror_n;
    /* scratch, sized for n_batch tokens */
    float *x, *h, *q, *kx, *vx, *att, *gate, *up, *logit_in;
    float *stage; /* rows copied out of pages on their way into the working copy */
    int32_t *batch_pos, *stage_pos;
    /* The ops may run on a device while the host goes on (svlm_k_defer): the host reaches the
     * buffers above only through svlm_k_copy. Host-side rows, RoPE positions on the kernels'
     * side, and new keys and values of up to LLAMA_PENDING_ROWS tokens of every layer, written to
     * the pages in one copy after the layers. */
    float *host_rows;             /* n_batch rows of max(n_embd, 2 * kv_dim) floats, host memory */
    int32_t *pos_k, *stage_pos_k; /* batch_pos and stage_pos, svlm_k_alloc */
    float *pending;               /* [n_layer][2][n][kv_dim] for a chunk of n rows, svlm_k_alloc */
    float *pending_host;          /* the same, host memory (svlm_k_alloc_host, on first use) */
    float *logits_k;              /* [n_vocab], svlm_k_alloc on first greedy use: searched in place */
    llama_step_tables step;       /* a decode step's tables (one row) */
    /* Keys before RoPE beside the working copy (svlm_llama_ctx_follow_moves; NULL: off), per layer
     * [n_ctx][kv_dim] of kv_type, matching the copy's rows below raw_n. With them the rows an
     * eviction moved are moved on the kernels' side (llama_shift.c). shift_*: the move prepare
     * planned, made by llama_apply_shift. */
    void **raw;
    int32_t *shift_pos, *shift_pos_k; /* n_ctx positions: host, kernels' side */
    int raw_n, shift_dst, shift_src, shift_n;
    int64_t moves, moved_rows; /* counters: moves made, rows they moved */
};

enum { LLAMA_PENDING_ROWS = 96 }; /* a video frame (64 or 81 tokens) or a question */

/* The activations of a pass over many rows (continuous batching, the multi-sequence pass):
 * [rows][...] each, svlm_k_alloc. */
typedef struct llama_rows {
    float *x, *h, *q, *kx, *vx, *att, *gate, *up;
} llama_rows;
/* A step of one row (t->rows == 1: rows from llama_step_row, tables uploaded) with every layer as
 * one op where the backend has one (svlm_k_decode_layers): activations r, positions pos on the
 * kernels' side, the new rows also into pending ([n_layer][2][1][kv_dim]; NULL: not), round as
 * llama_step_layer. c: the step's context (its shapes and caches). 0: declined, nothing ran (the
 * caller runs llama_step_layer and llama_layer_rest per layer). */
int llama_step_fused(const svlm_llama_ctx *c, llama_step_tables *t, const llama_rows *r, const int32_t *pos,
                     float *pending, int round);
/* 0 when out of memory (what was made is freed by llama_rows_free). */
int llama_rows_alloc(svlm_kernels *k, const svlm_llama_hparams *hp, size_t rows, llama_rows *r);
void llama_rows_free(svlm_kernels *k, llama_rows *r);

/* Step tables for up to max_rows rows; 0 when out of memory (what was made is freed by
 * llama_step_tables_free). */
int llama_step_tables_alloc(svlm_kernels *k, int n_layer, int max_rows, llama_step_tables *t);
void llama_step_tables_free(svlm_kernels *k, llama_step_tables *t);
/* Row r of a step of `rows` rows: context c's token at cache row p0, query q and output att
 * (one row each, svlm_k_alloc), in every layer. */
void llama_step_row(llama_step_tables *t, const svlm_llama_ctx *c, int rows, int r, const float *q,
                    float *att, int p0);
/* The filled rows over to the kernels' side (before the step's ops). */
void llama_step_upload(svlm_kernels *k, llama_step_tables *t, int n_layer);
/* The RoPE and store arguments of layer l of a step (rows at pos on the kernels' side; keep and
 * round as svlm_rope_store_args). */
svlm_rope_store_args llama_step_rope(const svlm_llama_ctx *c, const llama_step_tables *t, int l,
                                     const int32_t *pos, float *keep, int round);
/* Layer l of a step up to its attention: q/k/v of x (weights L, h scratch), RoPE on the rows'
 * queries and keys, their keys and values into the working copies (and, keep not NULL, as they
 * came into keep for the pages; round: through f16 first, for f16 pages), all one op
 * (svlm_k_rmsnorm_qkv_rope_store), then the rows' attentions into their att rows. c: any of the
 * step's contexts (they share shapes); pos: the rows' positions on the kernels' side. */
void llama_step_layer(const svlm_llama_ctx *c, const llama_step_tables *t, int l, const svlm_llama_layer *L,
                      const float *x, float *h, float *q, float *kx, float *vx, const int32_t *pos,
                      float *keep, int round);

/* Shared by llama_eval.c and llama_batch.c. */
/* x (svlm_k_alloc, n rows of n_embd) = the inputs of a chunk: token embeddings, and image rows
 * (ids < 0) taken in order from *embd, which advances past them. */
void llama_embed_inputs(svlm_llama_ctx *c, float *x, const int32_t *ids, const float **embd, int n);
/* Copies n rows of f32 (an svlm_k_alloc buffer) into the cache at slot `at`, converting to the
 * cache type. */
void llama_store_rows(svlm_llama_ctx *c, void *cache, const float *src, int at, int n, size_t kvd);
/* x rows 0..n-1 (an svlm_k_alloc buffer) = the embeddings of tokens ids (all >= 0), dequantized
 * into `host` (n rows of n_embd floats, host memory) and copied over in one go. */
void llama_embed_rows(const svlm_llama *m, svlm_kernels *k, float *host, float *x, const int32_t *ids, int n);
/* A chunk's new keys and values of one layer (kx, vx: n rows, before RoPE) kept in c->pending for
 * the pages; rows [sync_from, p0) of the working copy brought up to date first; kx, vx rounded as
 * f16 pages will give them back. */
void llama_new_rows_to_pending(svlm_llama_ctx *c, svlm_kv_seq *seq, int layer, float *kx, float *vx, int n,
                               int p0, int sync_from);
/* Every layer's kept rows into seq's pages at p0 (one copy to the host). */
void llama_pending_to_pages(svlm_llama_ctx *c, svlm_kv_seq *seq, int p0, int n);
/* llama_shift.c. The rows valid in c's working copy of seq at version v once the move an
 * eviction made is followed (valid: those valid without it); plans the move. */
int llama_plan_shift(svlm_llama_ctx *c, const svlm_kv_seq *seq, svlm_kv_version v, int valid);
/* Makes the planned move (after llama_seq_prepare, before the layers). */
void llama_apply_shift(svlm_llama_ctx *c, const svlm_kv_seq *seq);
/* The raw keys of a chunk's n new rows at p0 from c->pending (after the layers). */
void llama_pending_to_raw(svlm_llama_ctx *c, int p0, int n);
void llama_raw_free(svlm_llama_ctx *c);
/* The causal attention of n query rows at cache rows p0.. over c's working copy of one layer. */
svlm_attn_args llama_cache_attention(const svlm_llama_ctx *c, int layer, const float *q, float *out, int n,
                                     int p0);
/* Rows [from, to) of one layer of c's working copy brought up to date with seq (RoPE applied). */
void llama_sync_working_copy(svlm_llama_ctx *c, const svlm_kv_seq *seq, int layer, int from, int to);
/* How many leading rows of c's working copy still match the sequence at version v. */
int llama_working_copy_valid(const svlm_llama_ctx *c, svlm_kv_version v);
/* The head of layer L on n rows: h = RMSNorm(x), then q, k, v from h (one call: the CPU runs
 * them as one parallel loop, activations quantized once; a GPU in one launch when decoding). */
void llama_layer_qkv(svlm_kernels *k, const svlm_llama_hparams *hp, const svlm_llama_layer *L, const float *x,
                     float *h, float *q, float *kx, float *vx, int n);
/* The rest of layer L after attention, on n rows: output projection and residual, then the
 * SwiGLU feed-forward block and its residual (x updated, h/gate/up scratch). */
void llama_layer_rest(svlm_kernels *k, const svlm_llama_hparams *hp, const svlm_llama_layer *L,
                      const float *att, float *x, float *h, float *gate, float *up, int n);
/* svlm_llama_eval_seq's checks and cache bookkeeping for n rows of seq evaluated with c: the
 * rows are appended, *p0 is their first cache row, *sync_from where c's working copy stops
 * matching the sequence; c's copy is marked unknown until the caller records it. */
svlm_status llama_seq_prepare(svlm_llama_ctx *c, svlm_kv_seq *seq, svlm_kv_kind kind, int64_t tag,
                              const int32_t *ids, const float *embd, int n, int *p0, int *sync_from,
                              svlm_err *err);
svlm_status llama_check_inputs(const svlm_llama_ctx *c, const int32_t *ids, const float *embd, int n,
                               svlm_err *err);

#endif
