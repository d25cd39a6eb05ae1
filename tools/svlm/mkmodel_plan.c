/* mkmodel: model shapes, --type values and the tensor tables with llama.cpp's type rules. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/err.h"
#include "mkmodel.h"

/* Values from ../shared/docs/smolvlm2-spec.md §1.1; "tiny" is ours, sized for fast tests:
 * n_ff 256 keeps ffn_down rows K-quantizable while n_embd 96 takes llama.cpp's fallbacks,
 * just as 1536 and 576 do in the 256M model. */
static const mk_shape shapes[] = {
    {"tiny",
     "svlm-tiny-random",
     "400K",
     0,
     {1024, 96, 3, 6, 2, 256, 2048, 100000.0f, 1e-5f, 1},
     {64, 16, 96, 256, 2, 6, 2, 128, 1e-6f}},
    /* the 2.2B vision geometry in small: 60-px tiles of 14-px patches, a 4 x 4 grid that never
     * sees the last 4 pixel rows and columns, as 384 / 14 leaves 6 */
    {"tiny-p14",
     "svlm-tiny-p14-random",
     "400K",
     0,
     {1024, 96, 3, 6, 2, 256, 2048, 100000.0f, 1e-5f, 1},
     {60, 14, 96, 256, 2, 6, 2, 240, 1e-6f}},
    {"smolvlm2-256m",
     "SmolVLM2 256M Video Instruct (random weights)",
     "256M",
     1,
     {49280, 576, 30, 9, 3, 1536, 8192, 100000.0f, 1e-5f, 0},
     {512, 16, 768, 3072, 12, 12, 4, 2048, 1e-6f}},
    {"smolvlm2-500m",
     "SmolVLM2 500M Video Instruct (random weights)",
     "500M",
     1,
     {49280, 960, 32, 15, 5, 2560, 8192, 100000.0f, 1e-5f, 0},
     {512, 16, 768, 3072, 12, 12, 4, 2048, 1e-6f}},
    /* 2.2B has an output.weight: the published Q4_K_M file's size (1,112,602,656 bytes)
     * only adds up with a separate Q6_K head. */
    {"smolvlm2-2.2b",
     "SmolVLM2 2.2B Instruct (random weights)",
     "2.2B",
     1,
     {49280, 2048, 24, 32, 32, 8192, 8192, 130000.0f, 1e-5f, 0},
     {384, 14, 1152, 4304, 27, 16, 3, 1536, 1e-6f}},
};

/* file_type values are llama.cpp's llama_ftype ids. */
static const mk_ftype ftypes[] = {
    {"f32", SVLM_F32, 0, 0, 0, 0},    {"f16", SVLM_F16, 1, 0, 0, 0},
    {"bf16", SVLM_BF16, 32, 0, 0, 0}, {"q8_0", SVLM_Q8_0, 7, 0, 0, 0},
    {"q4_0", SVLM_Q4_0, 2, 1, 0, 0},  {"q4_1", SVLM_Q4_1, 3, 1, 0, 0},
    {"q5_0", SVLM_Q5_0, 8, 1, 0, 0},  {"q5_1", SVLM_Q5_1, 9, 1, 0, 0},
    {"q4_k", SVLM_Q4_K, 14, 1, 0, 1}, /* Q4_K_S */
    {"q5_k", SVLM_Q5_K, 16, 1, 0, 0}, /* Q5_K_S */
    {"q6_k", SVLM_Q6_K, 18, 1, 0, 0}, {"q4_k_m", SVLM_Q4_K, 15, 1, 1, 0},
};

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

const mk_shape *mk_shape_find(const char *name) {
    for (size_t i = 0; i < COUNT(shapes); i++)
        if (!strcasecmp(shapes[i].name, name)) return &shapes[i];
    return NULL;
}

const mk_ftype *mk_ftype_find(const char *name) {
    for (size_t i = 0; i < COUNT(ftypes); i++)
        if (!strcasecmp(ftypes[i].name, name)) return &ftypes[i];
    return NULL;
}

const char *mk_shape_names(void) {
    return "tiny, tiny-p14, smolvlm2-256m, smolvlm2-500m, smolvlm2-2.2b";
}
const char *mk_ftype_names(void) {
    return "f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k, q4_k_m";
}

/* ---- type rules ------------------------------------------------------------------------- */

static int block_of(svlm_dtype t) {
    const svlm_dtype_info *i = svlm_dtype_get((int)t);
    return i ? i->block_size : 1;
}

/* llama-quantize's fallback for rows that are not a multiple of the block: K types step down
 * to a 32-block type, and anything still incompatible is stored as F16. */
static svlm_dtype fit_rows(svlm_dtype t, int64_t ne0) {
    if (ne0 % block_of(t) == 0) return t;
    switch (t) {
    case SVLM_Q4_K: t = SVLM_Q5_0; break;
    case SVLM_Q5_K: t = SVLM_Q5_1; break;
    case SVLM_Q6_K: t = SVLM_Q8_0; break;
    default: return SVLM_F16;
    }
    return ne0 % block_of(t) == 0 ? t : SVLM_F16;
}

/* True for the layers that Q4_K_M gives more bits (llama.cpp's use_more_bits). */
static int more_bits(int i, int n) {
    return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

typedef enum { ROLE_OTHER, ROLE_OUTPUT, ROLE_ATTN_V, ROLE_FFN_DOWN } weight_role;

static svlm_dtype text_weight_type(const mk_ftype *ft, weight_role role, int layer, int n_layer,
                                   int64_t ne0) {
    svlm_dtype t = ft->base;
    if (ft->quantized_mix) {
        if (role == ROLE_OUTPUT)
            t = ne0 % SVLM_QK_K ? SVLM_Q8_0 : SVLM_Q6_K;
        else if (role == ROLE_ATTN_V && ft->k_medium && more_bits(layer, n_layer))
            t = SVLM_Q6_K;
        else if (role == ROLE_ATTN_V && ft->k_small && layer < 4)
            t = SVLM_Q5_K;
        else if (role == ROLE_FFN_DOWN && ft->k_medium && more_bits(layer, n_layer))
            t = SVLM_Q6_K;
        else if (role == ROLE_FFN_DOWN && ft->k_small && layer < n_layer / 8)
            t = SVLM_Q5_K;
    }
    return fit_rows(t, ne0);
}

/* ---- plans ------------------------------------------------------------------------------ */

static svlm_status add(mk_plan *p, svlm_err *err, svlm_dtype type, mk_init init, float std, int n_dims,
                       int64_t ne0, int64_t ne1, int64_t ne2, int64_t ne3, const char *fmt, int layer) {
    if (p->n == p->cap) {
        int cap = p->cap ? p->cap * 2 : 64;
        mk_tensor *t = realloc(p->t, (size_t)cap * sizeof *t);
        if (!t) return svlm_fail(err, SVLM_E_NOMEM, "mkmodel: out of memory");
        p->t = t;
        p->cap = cap;
    }
    mk_tensor *t = &p->t[p->n++];
    memset(t, 0, sizeof *t);
    snprintf(t->name, sizeof t->name, fmt, layer);
    t->type = type;
    t->init = init;
    t->std = std;
    t->n_dims = n_dims;
    int64_t ne[4] = {ne0, ne1, ne2, ne3};
    for (int i = 0; i < 4; i++)
        t->ne[i] = i < n_dims ? ne[i] : 1;
    return SVLM_OK;
}

#define TRY(x)                                                                                               \
    do {                                                                                                     \
        svlm_status st_ = (x);                                                                               \
        if (st_) {                                                                                           \
            mk_plan_free(p);                                                                                 \
            return st_;                                                                                      \
        }                                                                                                    \
    } while (0)

/* Real-model-like init: weights N(0, 0.02), norms 1 ± 0.02. The attention output and FFN
 * down projections get 3x that, so random models do not just echo their last token. */
#define W_STD          0.02f
#define W_STD_RESIDUAL 0.06f

svlm_status mk_plan_text(const mk_shape *s, const mk_ftype *ft, mk_plan *p, svlm_err *err) {
    const mk_text_shape *h = &s->text;
    memset(p, 0, sizeof *p);
    const int64_t E = h->n_embd, hd = h->n_embd / h->n_head, Q = h->n_head * hd, KV = h->n_head_kv * hd;
    const int L = h->n_layer;
    svlm_dtype embd_type = text_weight_type(ft, h->tied ? ROLE_OUTPUT : ROLE_OTHER, 0, L, E);
    TRY(add(p, err, embd_type, MK_INIT_NORMAL, W_STD, 2, E, h->n_vocab, 1, 1, "token_embd.weight", 0));
    for (int i = 0; i < L; i++) {
        TRY(add(p, err, SVLM_F32, MK_INIT_ONES, W_STD, 1, E, 1, 1, 1, "blk.%d.attn_norm.weight", i));
        TRY(add(p, err, text_weight_type(ft, ROLE_OTHER, i, L, E), MK_INIT_NORMAL, W_STD, 2, E, Q, 1, 1,
                "blk.%d.attn_q.weight", i));
        TRY(add(p, err, text_weight_type(ft, ROLE_OTHER, i, L, E), MK_INIT_NORMAL, W_STD, 2, E, KV, 1, 1,
                "blk.%d.attn_k.weight", i));
        TRY(add(p, err, text_weight_type(ft, ROLE_ATTN_V, i, L, E), MK_INIT_NORMAL, W_STD, 2, E, KV, 1, 1,
                "blk.%d.attn_v.weight", i));
        TRY(add(p, err, text_weight_type(ft, ROLE_OTHER, i, L, Q), MK_INIT_NORMAL, W_STD_RESIDUAL, 2, Q, E, 1,
                1, "blk.%d.attn_output.weight", i));
        TRY(add(p, err, SVLM_F32, MK_INIT_ONES, W_STD, 1, E, 1, 1, 1, "blk.%d.ffn_norm.weight", i));
        TRY(add(p, err, text_weight_type(ft, ROLE_OTHER, i, L, E), MK_INIT_NORMAL, W_STD, 2, E, h->n_ff, 1, 1,
                "blk.%d.ffn_gate.weight", i));
        TRY(add(p, err, text_weight_type(ft, ROLE_OTHER, i, L, E), MK_INIT_NORMAL, W_STD, 2, E, h->n_ff, 1, 1,
                "blk.%d.ffn_up.weight", i));
        TRY(add(p, err, text_weight_type(ft, ROLE_FFN_DOWN, i, L, h->n_ff), MK_INIT_NORMAL, W_STD_RESIDUAL, 2,
                h->n_ff, E, 1, 1, "blk.%d.ffn_down.weight", i));
    }
    TRY(add(p, err, SVLM_F32, MK_INIT_ONES, W_STD, 1, E, 1, 1, 1, "output_norm.weight", 0));
    if (!h->tied)
        TRY(add(p, err, text_weight_type(ft, ROLE_OUTPUT, 0, L, E), MK_INIT_NORMAL, W_STD, 2, E, h->n_vocab,
                1, 1, "output.weight", 0));
    return SVLM_OK;
}

/* llama.cpp's converter keeps 1-D tensors and SmolVLM's embeddings (patch conv, positions)
 * in F32; other matrices take the requested type, F16 where their rows do not fit it. */
svlm_status mk_plan_mmproj(const mk_shape *s, svlm_dtype mt, mk_plan *p, svlm_err *err) {
    const mk_vision_shape *v = &s->vision;
    memset(p, 0, sizeof *p);
    const int64_t D = v->n_embd, F = v->n_ff, P = v->patch_size;
    const int64_t grid = v->image_size / v->patch_size, n_pos = grid * grid;
    const int64_t sf = v->scale_factor;
    TRY(add(p, err, SVLM_F32, MK_INIT_NORMAL, W_STD, 4, P, P, 3, D, "v.patch_embd.weight", 0));
    TRY(add(p, err, SVLM_F32, MK_INIT_NORMAL, W_STD, 1, D, 1, 1, 1, "v.patch_embd.bias", 0));
    TRY(add(p, err, SVLM_F32, MK_INIT_NORMAL, W_STD, 2, D, n_pos, 1, 1, "v.position_embd.weight", 0));
    static const char *const attn[4] = {"q", "k", "v", "out"};
    for (int i = 0; i < v->n_layer; i++) {
        char fmt[64];
        for (int a = 0; a < 4; a++) {
            snprintf(fmt, sizeof fmt, "v.blk.%%d.attn_%s.weight", attn[a]);
            TRY(add(p, err, fit_rows(mt, D), MK_INIT_NORMAL, W_STD, 2, D, D, 1, 1, fmt, i));
            snprintf(fmt, sizeof fmt, "v.blk.%%d.attn_%s.bias", attn[a]);
            TRY(add(p, err, SVLM_F32, MK_INIT_NORMAL, W_STD, 1, D, 1, 1, 1, fmt, i));
        }
        TRY(add(p, err, SVLM_F32, MK_INIT_ONES, W_STD, 1, D, 1, 1, 1, "v.blk.%d.ln1.weight", i));
        TRY(add(p, err, SVLM_F32, MK_INIT_NORMAL, W_STD, 1, D, 1, 1, 1, "v.blk.%d.ln1.bias", i));
        TRY(add(p, err, SVLM_F32, MK_INIT_ONES, W_STD, 1, D, 1, 1, 1, "v.blk.%d.ln2.weight", i));
        TRY(add(p, err, SVLM_F32, MK_INIT_NORMAL, W_STD, 1, D, 1, 1, 1, "v.blk.%d.ln2.bias", i));
        TRY(add(p, err, fit_rows(mt, D), MK_INIT_NORMAL, W_STD, 2, D, F, 1, 1, "v.blk.%d.ffn_up.weight", i));
        TRY(add(p, err, SVLM_F32, MK_INIT_NORMAL, W_STD, 1, F, 1, 1, 1, "v.blk.%d.ffn_up.bias", i));
        TRY(add(p, err, fit_rows(mt, F), MK_INIT_NORMAL, W_STD, 2, F, D, 1, 1, "v.blk.%d.ffn_down.weight",
                i));
        TRY(add(p, err, SVLM_F32, MK_INIT_NORMAL, W_STD, 1, D, 1, 1, 1, "v.blk.%d.ffn_down.bias", i));
    }
    TRY(add(p, err, SVLM_F32, MK_INIT_ONES, W_STD, 1, D, 1, 1, 1, "v.post_ln.weight", 0));
    TRY(add(p, err, SVLM_F32, MK_INIT_NORMAL, W_STD, 1, D, 1, 1, 1, "v.post_ln.bias", 0));
    TRY(add(p, err, fit_rows(mt, D * sf * sf), MK_INIT_NORMAL, W_STD, 2, D * sf * sf, s->text.n_embd, 1, 1,
            "mm.model.fc.weight", 0));
    return SVLM_OK;
}

void mk_plan_free(mk_plan *p) {
    if (!p) return;
    free(p->t);
    memset(p, 0, sizeof *p);
}

void mk_plan_print(FILE *f, const char *file_label, const mk_plan *p) {
    for (int i = 0; i < p->n; i++) {
        const mk_tensor *t = &p->t[i];
        const svlm_dtype_info *ti = svlm_dtype_get((int)t->type);
        fprintf(f, "%s %s %s", file_label, t->name, ti && ti->name ? ti->name : "?");
        for (int d = 0; d < t->n_dims; d++)
            fprintf(f, " %lld", (long long)t->ne[d]);
        fputc('\n', f);
    }
}
