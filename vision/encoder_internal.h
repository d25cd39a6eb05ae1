/* The vision context's layout, shared by siglip.c, connector.c and encoder.c only. */
#ifndef SVLM_VISION_ENCODER_INTERNAL_H
#define SVLM_VISION_ENCODER_INTERNAL_H

#include "vision/encoder.h"

enum { SVLM_VISION_MAX_BATCH = 256 }; /* tiles a vision context takes at once */

struct svlm_vision_ctx {
    const svlm_mmproj *m;
    svlm_kernels *k;
    int max_batch;
    /* scratch, each for max_batch tiles of N = n_patches tokens (D = n_embd, F = n_ff) */
    float *x;          /* [B*N][D] residual stream                     */
    float *h;          /* [B*N][max(D, 3p^2)] normed input / im2col   */
    float *q, *kk, *v; /* [B*N][D]                                  */
    float *attn;       /* [B*N][D]                                     */
    float *ff;         /* [B*N][F]                                     */
    float *shuf;       /* [B*T][D*s*s] pixel-shuffled features         */
    float *proj;       /* [B*T][proj_dim]                              */
    float *patches;   /* [B*N][max(3p^2, D)] im2col rows, host memory: built there, copied across by the patch
                       * matmul (then, in svlm_siglip_embed_rows, the rows' positions) */
    int32_t *shuffle; /* [B*T*s*s] encoder row behind each pixel-shuffled row of D (host memory) */
    /* The patch kernel rounded to F16, and im2col rows rounded likewise: llama.cpp runs the
     * patch convolution in F16 (ggml_conv_2d), a 2e-4 relative shift we reproduce. */
    svlm_weight patch16;
    svlm_f16 *patch16_data;
    svlm_vision_trace_fn trace;
    void *trace_user;
    /* When set (the STC feature cache, vision/stc_cache.c), the full forward pass copies tile t's
     * keys and values of layer il into save_k[t][il] and save_v[t][il] ([N][D] each; a NULL
     * save_k[t] skips tile t). */
    float *const *const *save_k, *const *const *save_v;
    /* The feature cache's batches (vision/stc_cache.c), grown on first use and kept: host tiles
     * for full passes gathered into one batch (svlm_k_alloc_host), and the row tables of a batch's
     * partial passes (host and kernels' side). */
    float *stage;
    int stage_tiles;
    void **rows_host, **rows_k;
    size_t rows_cap;
};

static inline void svlm_vision_trace(svlm_vision_ctx *c, const char *name, int layer, const float *d,
                                     int64_t rows, int64_t dim) {
    if (!c->trace) return;
    svlm_k_sync(c->k); /* the tracer reads d on the host */
    c->trace(c->trace_user, name, layer, d, rows, dim);
}

/* The pixel shuffle as a row gather (vision/connector.c): idx[r] for each of the
 * b * tokens_per_tile * s * s rows of n_embd floats of the shuffled features. */
void svlm_connector_shuffle_rows(const svlm_mmproj_hparams *hp, int b, int32_t *idx);

/* Pieces of the SigLIP forward pass for callers that run it on a subset of one tile's tokens
 * (vision/stc_cache.c). Scratch comes from the context, so rows <= max_batch * N. */

/* x[i] = patch embedding + position of patch idx[i] of tile tile[i] (tile NULL: every row of tile
 * 0) of pixels, tiles of [3][S][S] one after another. */
void svlm_siglip_embed_rows(svlm_vision_ctx *c, const float *pixels, const int32_t *tile, const int32_t *idx,
                            int64_t m, float *x);
/* Block il, first half: LN1 of x then Q, K, V (with biases) into c->q, c->kk, c->v. */
void svlm_siglip_attn_in(svlm_vision_ctx *c, int il, const float *x, int64_t rows);
/* Non-causal attention of n_q query rows over n_kv key/value rows ([.][D] each). */
void svlm_siglip_attention(svlm_vision_ctx *c, const float *q, const float *k, const float *v, int64_t n_q,
                           int64_t n_kv, float *out);
/* Attentions of several row sets at once, each over its own n_kv keys and values: one op (a GPU
 * runs them in one launch when it can). */
typedef struct svlm_siglip_part {
    const float *q, *k, *v;
    float *out;
    int64_t n_q;
} svlm_siglip_part;
void svlm_siglip_attention_parts(svlm_vision_ctx *c, const svlm_siglip_part *parts, int n, int64_t n_kv);
/* Block il, second half: x += O(c->attn) + bo, then x += MLP(LN2 x). */
void svlm_siglip_attn_out_ffn(svlm_vision_ctx *c, int il, float *x, int64_t rows);

#endif
