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
#include "vision/f16_round.h"

/* Rows of 3*p*p values per patch, ordered (channel, ky, kx) like the conv kernel. */
static void im2col(const float *pixels, int b, int S, int p, float *out) {
    int g = S / p;
    size_t plane = (size_t)S * S, row = (size_t)3 * p * p;
    for (int t = 0; t < b; t++) {
        const float *img = pixels + (size_t)t * 3 * plane;
        for (int py = 0; py < g; py++)
            for (int px = 0; px < g; px++) {
                float *dst = out + ((size_t)t * g * g + (size_t)py * g + px) * row;
                for (int c = 0; c < 3; c++)
                    for (int ky = 0; ky < p; ky++)
                        memcpy(dst + ((size_t)c * p + ky) * p, img + c * plane + (size_t)(py * p + ky) * S + (size_t)px * p,
                               sizeof(float) * (size_t)p);
            }
    }
}

static void block(svlm_vision_ctx *c, const svlm_vit_layer *L, int il, int b) {
    const svlm_mmproj_hparams *hp = &c->m->hp;
    svlm_kernels *k = c->k;
    int64_t N = hp->n_patches, D = hp->n_embd, F = hp->n_ff, rows = (int64_t)b * N;

    svlm_k_layernorm(k, c->x, L->ln1_w, L->ln1_b, c->h, rows, D, hp->eps);
    svlm_vision_trace(c, "layer_inp_normed", il, c->h, rows, D);
    svlm_k_matmul(k, &L->q, c->h, rows, c->q);
    svlm_k_add_bias(k, c->q, L->q_b, rows, D);
    svlm_k_matmul(k, &L->k, c->h, rows, c->kk);
    svlm_k_add_bias(k, c->kk, L->k_b, rows, D);
    svlm_k_matmul(k, &L->v, c->h, rows, c->v);
    svlm_k_add_bias(k, c->v, L->v_b, rows, D);
    svlm_vision_trace(c, "Qcur", il, c->q, rows, D);
    svlm_vision_trace(c, "Kcur", il, c->kk, rows, D);
    svlm_vision_trace(c, "Vcur", il, c->v, rows, D);
    for (int t = 0; t < b; t++) { /* every token of a tile sees the whole tile, nothing else */
        size_t off = (size_t)t * (size_t)N * (size_t)D;
        svlm_attn_args a = {
            .q = c->q + off, .k = c->kk + off, .v = c->v + off, .kv_type = SVLM_F32, .kv_stride = D,
            .out = c->attn + off, .n_q = N, .n_kv = N, .n_head = hp->n_head, .n_kv_head = hp->n_head,
            .head_dim = hp->head_dim, .causal = 0, .scale = 1.0f / sqrtf((float)hp->head_dim),
        };
        svlm_k_attention(k, &a);
    }
    svlm_vision_trace(c, "kqv_out", il, c->attn, rows, D);
    svlm_k_matmul(k, &L->o, c->attn, rows, c->h);
    svlm_k_add_bias(k, c->h, L->o_b, rows, D);
    svlm_vision_trace(c, "attn_out", il, c->h, rows, D);
    svlm_k_add(k, c->x, c->h, rows * D);
    svlm_vision_trace(c, "ffn_inp", il, c->x, rows, D);

    svlm_k_layernorm(k, c->x, L->ln2_w, L->ln2_b, c->h, rows, D, hp->eps);
    svlm_vision_trace(c, "ffn_inp_normed", il, c->h, rows, D);
    svlm_k_matmul(k, &L->up, c->h, rows, c->ff);
    svlm_vision_trace(c, "ffn_up", il, c->ff, rows, F);
    svlm_k_add_bias(k, c->ff, L->up_b, rows, F);
    svlm_vision_trace(c, "ffn_up_b", il, c->ff, rows, F);
    svlm_gelu_round_in(c->ff, (size_t)(rows * F));
    svlm_k_gelu_tanh(k, c->ff, rows * F);
    svlm_gelu_round_out(c->ff, (size_t)(rows * F));
    svlm_vision_trace(c, "ffn_gelu", il, c->ff, rows, F);
    svlm_k_matmul(k, &L->down, c->ff, rows, c->h);
    svlm_vision_trace(c, "ffn_down", il, c->h, rows, D);
    svlm_k_add_bias(k, c->h, L->down_b, rows, D);
    svlm_vision_trace(c, "ffn_out", il, c->h, rows, D);
    svlm_k_add(k, c->x, c->h, rows * D);
    svlm_vision_trace(c, "layer_out", il, c->x, rows, D);
}

void svlm_siglip_forward(svlm_vision_ctx *c, const float *pixels, int b) {
    const svlm_mmproj *m = c->m;
    const svlm_mmproj_hparams *hp = &m->hp;
    int64_t N = hp->n_patches, D = hp->n_embd, rows = (int64_t)b * N;

    im2col(pixels, b, hp->image_size, hp->patch_size, c->h);
    svlm_f16_round(c->h, (size_t)rows * (size_t)c->patch16.cols);
    svlm_k_matmul(c->k, &c->patch16, c->h, rows, c->x);
    svlm_k_add_bias(c->k, c->x, m->patch_b, rows, D);
    svlm_vision_trace(c, "patch_bias", -1, c->x, rows, D);
    for (int t = 0; t < b; t++) svlm_k_add(c->k, c->x + (size_t)t * N * D, m->pos, N * D);
    svlm_vision_trace(c, "pos_embed", -1, c->x, rows, D);
    for (int il = 0; il < hp->n_layer; il++) block(c, &m->layers[il], il, b);
    svlm_k_layernorm(c->k, c->x, m->post_ln_w, m->post_ln_b, c->x, rows, D, hp->eps);
    svlm_vision_trace(c, "post_ln", -1, c->x, rows, D);
}
