/* Loading the idefics3 mmproj GGUF: metadata, tensor views and shape checks (see mmproj.h). */
#include "vision/mmproj.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

static svlm_status req_u32(const gguf_file *f, const char *key, int lo, int hi, int *out, svlm_err *err) {
    uint32_t v;
    if (!gguf_get_u32(f, key, &v))
        return svlm_fail(err, SVLM_E_FORMAT, "mmproj: metadata key '%s' is missing", key);
    if (v < (uint32_t)lo || v > (uint32_t)hi)
        return svlm_fail(err, SVLM_E_FORMAT, "mmproj: '%s' = %u is outside %d..%d", key, v, lo, hi);
    *out = (int)v;
    return SVLM_OK;
}

static int matmul_type_ok(svlm_dtype t) {
    switch (t) {
    case SVLM_F32:
    case SVLM_F16:
    case SVLM_BF16:
    case SVLM_Q8_0:
    case SVLM_Q4_0:
    case SVLM_Q4_1:
    case SVLM_Q5_0:
    case SVLM_Q5_1:
    case SVLM_Q4_K:
    case SVLM_Q5_K:
    case SVLM_Q6_K: return 1;
    default: return 0;
    }
}

static const gguf_tensor *find_shaped(const gguf_file *f, const char *name, int64_t ne0, int64_t ne1,
                                      svlm_err *err) {
    const gguf_tensor *t = gguf_find_tensor(f, name);
    if (!t) {
        svlm_fail(err, SVLM_E_FORMAT, "mmproj: tensor '%s' is missing", name);
        return NULL;
    }
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1) {
        svlm_fail(err, SVLM_E_FORMAT,
                  "mmproj: tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld]", name,
                  (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3],
                  (long long)ne0, (long long)ne1);
        return NULL;
    }
    return t;
}

/* A matrix view: ggml shape [cols, rows] = rows output features of cols inputs each. */
static svlm_status bind_matrix(const gguf_tensor *t, int64_t cols, int64_t rows, svlm_weight *w,
                               svlm_err *err) {
    if (!matmul_type_ok(t->type)) {
        const svlm_dtype_info *ti = svlm_dtype_get(t->type);
        return svlm_fail(err, SVLM_E_UNSUPPORTED,
                         "mmproj: tensor '%s' has type %s, which svlm cannot multiply", t->name,
                         ti && ti->name ? ti->name : "unknown");
    }
    w->type = t->type;
    w->rows = rows;
    w->cols = cols;
    w->data = t->data;
    w->row_bytes = svlm_row_bytes(t->type, cols);
    if (!w->row_bytes)
        return svlm_fail(err, SVLM_E_FORMAT, "mmproj: tensor '%s' rows do not fit its type", t->name);
    return SVLM_OK;
}

static svlm_status matrix(const gguf_file *f, const char *name, int64_t cols, int64_t rows, svlm_weight *w,
                          svlm_err *err) {
    const gguf_tensor *t = find_shaped(f, name, cols, rows, err);
    return t ? bind_matrix(t, cols, rows, w, err) : err ? err->status : SVLM_E_FORMAT;
}

/* An F32 vector of n elements (any stored type; non-F32 is converted into m->owned). */
static svlm_status vector(svlm_mmproj *m, const char *name, int64_t n, int64_t n1, const float **out,
                          svlm_err *err) {
    const gguf_tensor *t = find_shaped(m->file, name, n, n1, err);
    if (!t) return err ? err->status : SVLM_E_FORMAT;
    if (t->type == SVLM_F32) {
        *out = (const float *)t->data;
        return SVLM_OK;
    }
    float *buf = malloc(sizeof(float) * (size_t)(n * n1));
    float **list = realloc(m->owned, sizeof(float *) * (size_t)(m->n_owned + 1));
    if (!buf || !list) {
        free(buf);
        if (list) m->owned = list;
        return svlm_fail(err, SVLM_E_NOMEM, "mmproj: out of memory converting '%s'", name);
    }
    m->owned = list;
    m->owned[m->n_owned++] = buf;
    if (svlm_dequantize_row(t->type, t->data, buf, n * n1))
        return svlm_fail(err, SVLM_E_UNSUPPORTED, "mmproj: cannot convert tensor '%s' to f32", name);
    *out = buf;
    return SVLM_OK;
}

static svlm_status check_projector(const gguf_file *f, svlm_err *err) {
    char *type = gguf_get_str_dup(f, "clip.projector_type");
    if (!type) type = gguf_get_str_dup(f, "clip.vision.projector_type");
    if (!type) {
        char *arch = gguf_get_str_dup(f, "general.architecture");
        int is_clip = arch && !strcmp(arch, "clip"), is_text = arch && !strcmp(arch, "llama");
        free(arch);
        return svlm_fail(err, SVLM_E_FORMAT, "%s",
                         is_clip   ? "mmproj: clip.projector_type is missing"
                         : is_text ? "this is a text model (architecture 'llama'), not a vision projector: "
                                     "--mmproj takes the mmproj file (this one goes with -m)"
                                   : "not an mmproj file (general.architecture is not 'clip')");
    }
    svlm_status st = SVLM_OK;
    if (strcmp(type, "idefics3"))
        st = svlm_fail(err, SVLM_E_UNSUPPORTED,
                       "mmproj: projector type '%.64s' is not supported (svlm reads 'idefics3': SmolVLM)",
                       type);
    free(type);
    if (st) return st;
    int b;
    if (gguf_get_bool(f, "clip.has_vision_encoder", &b) && !b)
        return svlm_fail(err, SVLM_E_UNSUPPORTED, "mmproj: the file has no vision encoder");
    if (gguf_get_bool(f, "clip.use_silu", &b) && b)
        return svlm_fail(err, SVLM_E_UNSUPPORTED,
                         "mmproj: SiLU MLP (clip.use_silu) is not supported; SmolVLM uses GELU");
    if (!gguf_get_bool(f, "clip.use_gelu", &b) || !b)
        return svlm_fail(err, SVLM_E_UNSUPPORTED,
                         "mmproj: quick-GELU MLP (clip.use_gelu absent or false) is not supported; SmolVLM "
                         "uses tanh GELU");
    return SVLM_OK;
}

static svlm_status load_hparams(const gguf_file *f, svlm_mmproj_hparams *hp, svlm_err *err) {
    svlm_status st;
    if ((st = req_u32(f, "clip.vision.image_size", 1, 4096, &hp->image_size, err)) ||
        (st = req_u32(f, "clip.vision.patch_size", 1, 256, &hp->patch_size, err)) ||
        (st = req_u32(f, "clip.vision.embedding_length", 1, 16384, &hp->n_embd, err)) ||
        (st = req_u32(f, "clip.vision.feed_forward_length", 1, 65536, &hp->n_ff, err)) ||
        (st = req_u32(f, "clip.vision.block_count", 1, 256, &hp->n_layer, err)) ||
        (st = req_u32(f, "clip.vision.attention.head_count", 1, 1024, &hp->n_head, err)) ||
        (st = req_u32(f, "clip.vision.projector.scale_factor", 1, 64, &hp->scale_factor, err)))
        return st;
    uint32_t v;
    hp->preproc_image_size = gguf_get_u32(f, "clip.vision.preproc_image_size", &v) && v <= 16384 ? (int)v : 0;
    if (!gguf_get_f32(f, "clip.vision.attention.layer_norm_epsilon", &hp->eps))
        hp->eps = 1e-6f; /* SigLIP's */
    if (!(hp->eps > 0.0f && hp->eps < 1.0f))
        return svlm_fail(err, SVLM_E_FORMAT, "mmproj: layer_norm_epsilon %g is invalid", (double)hp->eps);
    for (int i = 0; i < 2; i++) {
        const char *key = i ? "clip.vision.image_std" : "clip.vision.image_mean";
        float *dst = i ? hp->image_std : hp->image_mean;
        const gguf_kv *kv = gguf_get_arr(f, key, GGUF_FLOAT32);
        if (!kv || kv->arr_n != 3) return svlm_fail(err, SVLM_E_FORMAT, "mmproj: '%s' must be 3 floats", key);
        memcpy(dst, kv->data, sizeof(float) * 3);
        for (int c = 0; c < 3; c++)
            if (!isfinite(dst[c]) || (i && dst[c] == 0.0f))
                return svlm_fail(err, SVLM_E_FORMAT, "mmproj: '%s'[%d] = %g is invalid", key, c,
                                 (double)dst[c]);
    }
    /* a stride-p valid convolution: 384 px with 14-px patches (SmolVLM2-2.2B) is a 27 x 27 grid
     * that never sees the last 6 pixel rows and columns (smolvlm2-spec.md, vision table) */
    int g = hp->image_size / hp->patch_size;
    if (g < 1)
        return svlm_fail(err, SVLM_E_FORMAT, "mmproj: image size %d is smaller than one %d-px patch",
                         hp->image_size, hp->patch_size);
    /* SmolVLM2: 32 x 32 patches (1,024), 27 x 27 for 2.2B; a tile of millions of patches (4096 px,
     * 1-px patches) is a crafted file that would ask gigabytes per stream and quadratic attention */
    if (g > 128)
        return svlm_fail(
            err, SVLM_E_UNSUPPORTED,
            "mmproj: a %d x %d patch grid (%d px tiles of %d px patches) is more than the 128 x 128 "
            "this runtime takes",
            g, g, hp->image_size, hp->patch_size);
    if (g % hp->scale_factor)
        return svlm_fail(err, SVLM_E_UNSUPPORTED,
                         "mmproj: patch grid %d is not a multiple of scale factor %d", g, hp->scale_factor);
    if (hp->n_embd % hp->n_head)
        return svlm_fail(err, SVLM_E_FORMAT, "mmproj: width %d is not divisible by %d heads", hp->n_embd,
                         hp->n_head);
    hp->head_dim = hp->n_embd / hp->n_head;
    hp->n_patches = g * g;
    hp->tokens_per_tile = hp->n_patches / (hp->scale_factor * hp->scale_factor);
    return SVLM_OK;
}

static svlm_status load_layer(svlm_mmproj *m, int il, svlm_err *err) {
    const gguf_file *f = m->file;
    const svlm_mmproj_hparams *hp = &m->hp;
    int64_t D = hp->n_embd, F = hp->n_ff;
    svlm_vit_layer *L = &m->layers[il];
    char name[96];
    svlm_status st;
#define NAME(suffix) (snprintf(name, sizeof name, "v.blk.%d.%s", il, suffix), name)
    if ((st = matrix(f, NAME("attn_q.weight"), D, D, &L->q, err)) ||
        (st = matrix(f, NAME("attn_k.weight"), D, D, &L->k, err)) ||
        (st = matrix(f, NAME("attn_v.weight"), D, D, &L->v, err)) ||
        (st = matrix(f, NAME("attn_out.weight"), D, D, &L->o, err)) ||
        (st = vector(m, NAME("attn_q.bias"), D, 1, &L->q_b, err)) ||
        (st = vector(m, NAME("attn_k.bias"), D, 1, &L->k_b, err)) ||
        (st = vector(m, NAME("attn_v.bias"), D, 1, &L->v_b, err)) ||
        (st = vector(m, NAME("attn_out.bias"), D, 1, &L->o_b, err)) ||
        (st = vector(m, NAME("ln1.weight"), D, 1, &L->ln1_w, err)) ||
        (st = vector(m, NAME("ln1.bias"), D, 1, &L->ln1_b, err)) ||
        (st = vector(m, NAME("ln2.weight"), D, 1, &L->ln2_w, err)) ||
        (st = vector(m, NAME("ln2.bias"), D, 1, &L->ln2_b, err)))
        return st;
    /* Older converters stored fc1 under ffn_down: recognise it by its input width (D). */
    const gguf_tensor *down = gguf_find_tensor(f, NAME("ffn_down.weight"));
    int swapped = down && down->ne[0] == D && D != F;
    if (il == 0)
        m->ffn_swapped = swapped;
    else if (swapped != m->ffn_swapped)
        return svlm_fail(err, SVLM_E_FORMAT, "mmproj: layer %d's ffn_up/ffn_down naming differs from layer 0",
                         il);
    const char *fc1 = swapped ? "ffn_down" : "ffn_up", *fc2 = swapped ? "ffn_up" : "ffn_down";
    char suffix[48];
    snprintf(suffix, sizeof suffix, "%s.weight", fc1);
    if ((st = matrix(f, NAME(suffix), D, F, &L->up, err))) return st;
    snprintf(suffix, sizeof suffix, "%s.bias", fc1);
    if ((st = vector(m, NAME(suffix), F, 1, &L->up_b, err))) return st;
    snprintf(suffix, sizeof suffix, "%s.weight", fc2);
    if ((st = matrix(f, NAME(suffix), F, D, &L->down, err))) return st;
    snprintf(suffix, sizeof suffix, "%s.bias", fc2);
    if ((st = vector(m, NAME(suffix), D, 1, &L->down_b, err))) return st;
#undef NAME
    return SVLM_OK;
}

static svlm_status load_tensors(svlm_mmproj *m, svlm_err *err) {
    const svlm_mmproj_hparams *hp = &m->hp;
    const gguf_file *f = m->file;
    int64_t D = hp->n_embd, p = hp->patch_size;
    const gguf_tensor *t = gguf_find_tensor(f, "v.patch_embd.weight");
    if (!t) return svlm_fail(err, SVLM_E_FORMAT, "mmproj: tensor 'v.patch_embd.weight' is missing");
    if (t->ne[0] != p || t->ne[1] != p || t->ne[2] != 3 || t->ne[3] != D)
        return svlm_fail(
            err, SVLM_E_FORMAT,
            "mmproj: v.patch_embd.weight has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld, 3, %lld]",
            (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3], (long long)p,
            (long long)p, (long long)D);
    /* [kx, ky, c, o] in ggml order is row o of 3*p*p inputs ordered (c, ky, kx): im2col's order. */
    svlm_status st = bind_matrix(t, 3 * p * p, D, &m->patch, err);
    if (st) return st;
    if ((st = vector(m, "v.patch_embd.bias", D, 1, &m->patch_b, err)) ||
        (st = vector(m, "v.position_embd.weight", D, hp->n_patches, &m->pos, err)) ||
        (st = vector(m, "v.post_ln.weight", D, 1, &m->post_ln_w, err)) ||
        (st = vector(m, "v.post_ln.bias", D, 1, &m->post_ln_b, err)))
        return st;
    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers) return svlm_fail(err, SVLM_E_NOMEM, "mmproj: out of memory");
    for (int il = 0; il < hp->n_layer; il++)
        if ((st = load_layer(m, il, err))) return st;
    /* The projection's output width is read from the tensor (as llama.cpp does). */
    int64_t in = D * hp->scale_factor * hp->scale_factor;
    t = gguf_find_tensor(f, "mm.model.fc.weight");
    if (!t) return svlm_fail(err, SVLM_E_FORMAT, "mmproj: tensor 'mm.model.fc.weight' is missing");
    if (t->ne[0] != in || t->ne[1] < 1 || t->ne[1] > 65536 || t->ne[2] != 1 || t->ne[3] != 1)
        return svlm_fail(
            err, SVLM_E_FORMAT,
            "mmproj: mm.model.fc.weight has shape [%lld, %lld], expected [%lld (= %d * %d^2), n_embd]",
            (long long)t->ne[0], (long long)t->ne[1], (long long)in, hp->n_embd, hp->scale_factor);
    m->hp.proj_dim = (int)t->ne[1];
    return bind_matrix(t, in, t->ne[1], &m->proj, err);
}

svlm_status svlm_mmproj_from_gguf(gguf_file *f, svlm_mmproj **out, svlm_err *err) {
    *out = NULL;
    svlm_mmproj *m = calloc(1, sizeof *m);
    if (!m) {
        gguf_close(f);
        return svlm_fail(err, SVLM_E_NOMEM, "mmproj: out of memory");
    }
    m->file = f;
    svlm_status st = check_projector(f, err);
    if (!st) st = load_hparams(f, &m->hp, err);
    if (!st) st = load_tensors(m, err);
    if (st) {
        svlm_mmproj_free(m);
        return st;
    }
    *out = m;
    return SVLM_OK;
}

svlm_status svlm_mmproj_load(const char *path, svlm_mmproj **out, svlm_err *err) {
    *out = NULL;
    gguf_file *f;
    svlm_status st = gguf_open(path, &f, err);
    if (!st) st = svlm_mmproj_from_gguf(f, out, err);
    if (st) svlm_err_prefix(err, "%s", path);
    return st;
}

void svlm_mmproj_free(svlm_mmproj *m) {
    if (!m) return;
    for (int i = 0; i < m->n_owned; i++)
        free(m->owned[i]);
    free(m->owned);
    free(m->layers);
    gguf_close(m->file);
    free(m);
}
