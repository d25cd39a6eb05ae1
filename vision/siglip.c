/*
 * The SigLIP ViT forward pass over a batch of tiles:
 *   patches (im2col) -> patch matmul + bias -> + positions
 *   per block: x += Wo Attn(LN1 x) + bo;  x += W2 gelu_tanh(W1 LN2 x + b1) + b2
 *   post-LayerNorm.
 * Intermediates are reported under the names llama.cpp gives them (vision-tiny fixture).
 * Numerics follow llama.cpp where it computes in F16 (patch convolution, GELU table), which
 * keeps us within ~1e-4 of its embeddings instead of ~1e-3 (smolvlm2-spec.md §1.2).
 */
#include <math.h>
#include <string.h>

#include "vision/encoder_internal.h"
#include "kernels/cpu/f16_round.h"

/* One patch as a row of 3*p*p values, ordered (channel, ky, kx) like the conv kernel. */
static void patch_row(const float *img, int S, int p, int patch, float *dst) {
    int g = S / p, py = patch / g, px = patch % g;
    size_t plane = (size_t)S * S;
    for (int c = 0; c < 3; c++)
        for (int ky = 0; ky < p; ky++)
            memcpy(dst + ((size_t)c * p + ky) * p,
                   img + c * plane + (size_t)(py * p + ky) * S + (size_t)px * p, sizeof(float) * (size_t)p);
}

static void im2col(const float *pixels, int b, int S, int p, float *out) {
    int n = (S / p) * (S / p);
    size_t row = (size_t)3 * p * p;
    for (int t = 0; t < b; t++)
        for (int i = 0; i < n; i++)
            patch_row(pixels + (size_t)t * 3 * S * S, S, p, i, out + ((size_t)t * n + i) * row);
}

void svlm_siglip_embed_rows(svlm_vision_ctx *c, const float *pixels, const int32_t *tile, const int32_t *idx,
                            int64_t m, float *x) {
    const svlm_mmproj *mp = c->m;
    const svlm_mmproj_hparams *hp = &mp->hp;
    int64_t D = hp->n_embd;
    size_t row = (size_t)c->patch16.cols, tile_floats = (size_t)3 * hp->image_size * hp->image_size;
    for (int64_t i = 0; i < m; i++)
        patch_row(pixels + (tile ? (size_t)tile[i] * tile_floats : 0), hp->image_size, hp->patch_size, idx[i],
                  c->patches + (size_t)i * row);
    svlm_f16_round(c->patches, (size_t)m * row);
    svlm_k_matmul(c->k, &c->patch16, c->patches, m, x);
    svlm_k_add_bias(c->k, x, mp->patch_b, m, D);
    /* the rows' positions gathered on the host (the product has read the patches): one add */
    for (int64_t i = 0; i < m; i++)
        memcpy(c->patches + (size_t)(i * D), mp->pos + (size_t)idx[i] * (size_t)D, sizeof(float) * (size_t)D);
    svlm_k_add(c->k, x, c->patches, m * D);
}

void svlm_siglip_attn_in(svlm_vision_ctx *c, int il, const float *x, int64_t rows) {
    const svlm_mmproj_hparams *hp = &c->m->hp;
    const svlm_vit_layer *L = &c->m->layers[il];
    svlm_kernels *k = c->k;
    int64_t D = hp->n_embd;

    const svlm_weight *ws[3] = {&L->q, &L->k, &L->v}; /* one pass: a GPU converts h once */
    float *ys[3] = {c->q, c->kk, c->v};
    if (!c->trace) { /* the numbers below, in one op (a GPU fuses the norm and biases) */
        const float *bs[3] = {L->q_b, L->k_b, L->v_b};
        svlm_k_layernorm_matmul_bias(k, x, L->ln1_w, L->ln1_b, hp->eps, c->h, ws, bs, 3, rows, ys);
        return;
    }
    svlm_k_layernorm(k, x, L->ln1_w, L->ln1_b, c->h, rows, D, hp->eps);
    svlm_vision_trace(c, "layer_inp_normed", il, c->h, rows, D);
    svlm_k_matmul_multi(k, ws, 3, c->h, rows, ys);
    svlm_k_add_bias(k, c->q, L->q_b, rows, D);
    svlm_k_add_bias(k, c->kk, L->k_b, rows, D);
    svlm_k_add_bias(k, c->v, L->v_b, rows, D);
    svlm_vision_trace(c, "Qcur", il, c->q, rows, D);
    svlm_vision_trace(c, "Kcur", il, c->kk, rows, D);
    svlm_vision_trace(c, "Vcur", il, c->v, rows, D);
}

static svlm_attn_args attention_args(const svlm_vision_ctx *c, const float *q, const float *k, const float *v,
                                     int64_t n_q, int64_t n_kv, float *out) {
    const svlm_mmproj_hparams *hp = &c->m->hp;
    return (svlm_attn_args){
        .q = q,
        .k = k,
        .v = v,
        .kv_type = SVLM_F32,
        .kv_stride = hp->n_embd,
        .out = out,
        .n_q = n_q,
        .n_kv = n_kv,
        .n_head = hp->n_head,
        .n_kv_head = hp->n_head,
        .head_dim = hp->head_dim,
        .causal = 0,
        .scale = 1.0f / sqrtf((float)hp->head_dim),
    };
}

void svlm_siglip_attention(svlm_vision_ctx *c, const float *q, const float *k, const float *v, int64_t n_q,
                           int64_t n_kv, float *out) {
    svlm_attn_args a = attention_args(c, q, k, v, n_q, n_kv, out);
    svlm_k_attention(c->k, &a);
}

void svlm_siglip_attention_parts(svlm_vision_ctx *c, const svlm_siglip_part *parts, int n, int64_t n_kv) {
    svlm_attn_args a[SVLM_VISION_MAX_BATCH];
    for (int i = 0; i < n; i++)
        a[i] = attention_args(c, parts[i].q, parts[i].k, parts[i].v, parts[i].n_q, n_kv, parts[i].out);
    svlm_k_attention_multi(c->k, a, n);
}

/* Every tile of the batch attends within itself: one op, which a GPU runs as one launch over all
 * tiles (a launch per tile left most of the device idle: 12 heads x 16 query tiles of blocks). */
static void attention_tiles(svlm_vision_ctx *c, int b) {
    const svlm_mmproj_hparams *hp = &c->m->hp;
    int64_t N = hp->n_patches, D = hp->n_embd;
    svlm_attn_args a[SVLM_VISION_MAX_BATCH];
    for (int t = 0; t < b; t++) {
        size_t off = (size_t)t * (size_t)N * (size_t)D;
        a[t] = attention_args(c, c->q + off, c->kk + off, c->v + off, N, N, c->attn + off);
    }
    svlm_k_attention_multi(c->k, a, b);
}

void svlm_siglip_attn_out_ffn(svlm_vision_ctx *c, int il, float *x, int64_t rows) {
    const svlm_mmproj_hparams *hp = &c->m->hp;
    const svlm_vit_layer *L = &c->m->layers[il];
    svlm_kernels *k = c->k;
    int64_t D = hp->n_embd, F = hp->n_ff;

    if (!c->trace) { /* the sequence below in two ops (a GPU adds biases and residuals in its products) */
        svlm_k_matmul_bias_add(k, &L->o, L->o_b, c->attn, rows, x, c->h);
        svlm_k_layernorm_gelu_ffn_add(k, x, L->ln2_w, L->ln2_b, hp->eps, &L->up, L->up_b, &L->down, L->down_b,
                                      rows, c->h, c->ff, c->attn);
        return;
    }
    svlm_vision_trace(c, "kqv_out", il, c->attn, rows, D);
    svlm_k_matmul(k, &L->o, c->attn, rows, c->h);
    svlm_k_add_bias(k, c->h, L->o_b, rows, D);
    svlm_vision_trace(c, "attn_out", il, c->h, rows, D);
    svlm_k_add(k, x, c->h, rows * D);
    svlm_vision_trace(c, "ffn_inp", il, x, rows, D);

    svlm_k_layernorm(k, x, L->ln2_w, L->ln2_b, c->h, rows, D, hp->eps);
    svlm_vision_trace(c, "ffn_inp_normed", il, c->h, rows, D);
    svlm_k_matmul(k, &L->up, c->h, rows, c->ff);
    /* each intermediate on its own for the comparison with llama.cpp's */
    svlm_vision_trace(c, "ffn_up", il, c->ff, rows, F);
    svlm_k_add_bias(k, c->ff, L->up_b, rows, F);
    svlm_vision_trace(c, "ffn_up_b", il, c->ff, rows, F);
    svlm_k_gelu_tanh_f16(k, c->ff, rows * F);
    svlm_vision_trace(c, "ffn_gelu", il, c->ff, rows, F);
    svlm_k_matmul(k, &L->down, c->ff, rows, c->h);
    svlm_vision_trace(c, "ffn_down", il, c->h, rows, D);
    svlm_k_add_bias(k, c->h, L->down_b, rows, D);
    svlm_vision_trace(c, "ffn_out", il, c->h, rows, D);
    svlm_k_add(k, x, c->h, rows * D);
    svlm_vision_trace(c, "layer_out", il, x, rows, D);
}

/* One block over b whole tiles: every token of a tile sees the whole tile, nothing else. */
static void block(svlm_vision_ctx *c, int il, int b) {
    const svlm_mmproj_hparams *hp = &c->m->hp;
    int64_t N = hp->n_patches, D = hp->n_embd, rows = (int64_t)b * N;
    svlm_siglip_attn_in(c, il, c->x, rows);
    for (int t = 0; c->save_k && t < b; t++) /* the feature cache keeps its tiles' keys and values */
        if (c->save_k[t]) {
            size_t off = (size_t)t * (size_t)(N * D);
            svlm_k_copy(c->k, c->save_k[t][il], c->kk + off, sizeof(float) * (size_t)(N * D));
            svlm_k_copy(c->k, c->save_v[t][il], c->v + off, sizeof(float) * (size_t)(N * D));
        }
    attention_tiles(c, b);
    svlm_siglip_attn_out_ffn(c, il, c->x, rows);
}

void svlm_siglip_forward(svlm_vision_ctx *c, const float *pixels, int b) {
    const svlm_mmproj *m = c->m;
    const svlm_mmproj_hparams *hp = &m->hp;
    int64_t N = hp->n_patches, D = hp->n_embd, rows = (int64_t)b * N;

    if (svlm_kernels_is_gpu(c->k)) {
        /* the pixels go across as they are and become patches there (h holds 3 p p per row, or
         * the rounded pixels of cuDNN's convolution; 2.2B's tiles, whose side is not a multiple
         * of the patch, take im2col): the host's im2col and rounding cost more than the GPU's
         * whole encoder */
        svlm_k_patch_embed(c->k, &c->patch16, pixels, b, hp->image_size, hp->patch_size, c->h, c->x);
    } else { /* built on the host: the patch matmul copies them across */
        im2col(pixels, b, hp->image_size, hp->patch_size, c->patches);
        svlm_f16_round(c->patches, (size_t)rows * (size_t)c->patch16.cols);
        svlm_k_matmul(c->k, &c->patch16, c->patches, rows, c->x);
    }
    svlm_k_add_bias(c->k, c->x, m->patch_b, rows, D);
    svlm_vision_trace(c, "patch_bias", -1, c->x, rows, D);
    /* positions as a bias over whole tiles: the table is model data a device keeps */
    svlm_k_add_bias(c->k, c->x, m->pos, b, N * D);
    svlm_vision_trace(c, "pos_embed", -1, c->x, rows, D);
    for (int il = 0; il < hp->n_layer; il++)
        block(c, il, b);
    svlm_k_layernorm(c->k, c->x, m->post_ln_w, m->post_ln_b, c->x, rows, D, hp->eps);
    svlm_vision_trace(c, "post_ln", -1, c->x, rows, D);
}
