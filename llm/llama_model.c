/* Loading a Llama-architecture text model from GGUF: hyper-parameters and weight views. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "llm/llama_internal.h"

static svlm_status get_u32_req(const gguf_file *f, const char *arch, const char *suffix, int *out,
                               svlm_err *err) {
    char key[160];
    uint32_t v;
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (!gguf_get_u32(f, key, &v) || v == 0 || v > (1u << 30))
        return svlm_fail(err, SVLM_E_FORMAT, "missing or invalid metadata key '%s'", key);
    *out = (int)v;
    return SVLM_OK;
}

/* Makes a weight view of a 2-D tensor with the expected shape [cols, rows] (ggml order). */
static svlm_status bind_weight(const gguf_file *f, const char *name, int64_t cols, int64_t rows,
                               svlm_weight *w, svlm_err *err) {
    const gguf_tensor *t = gguf_find_tensor(f, name);
    if (!t) return svlm_fail(err, SVLM_E_FORMAT, "tensor '%s' is missing", name);
    if (t->ne[0] != cols || t->ne[1] != rows || t->ne[2] != 1 || t->ne[3] != 1)
        return svlm_fail(err, SVLM_E_FORMAT,
                         "tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld]", name,
                         (long long)t->ne[0], (long long)t->ne[1], (long long)t->ne[2], (long long)t->ne[3],
                         (long long)cols, (long long)rows);
    const svlm_dtype_info *ti = svlm_dtype_get(t->type);
    if (!ti || (t->type != SVLM_F32 && t->type != SVLM_F16 && t->type != SVLM_BF16 && t->type != SVLM_Q8_0 &&
                t->type != SVLM_Q4_0 && t->type != SVLM_Q4_1 && t->type != SVLM_Q5_0 &&
                t->type != SVLM_Q5_1 && t->type != SVLM_Q4_K && t->type != SVLM_Q5_K && t->type != SVLM_Q6_K))
        return svlm_fail(err, SVLM_E_UNSUPPORTED, "tensor '%s' has type %s, which svlm cannot multiply", name,
                         ti ? ti->name : "unknown");
    w->type = t->type;
    w->rows = rows;
    w->cols = cols;
    w->data = t->data;
    w->row_bytes = svlm_row_bytes(t->type, cols);
    return SVLM_OK;
}

/* A 1-D F32 vector (norm weights). */
static svlm_status bind_vector(const gguf_file *f, const char *name, int64_t n, const float **out,
                               svlm_err *err) {
    const gguf_tensor *t = gguf_find_tensor(f, name);
    if (!t) return svlm_fail(err, SVLM_E_FORMAT, "tensor '%s' is missing", name);
    if (t->ne[0] != n || t->ne[1] != 1 || t->ne[2] != 1 || t->ne[3] != 1)
        return svlm_fail(err, SVLM_E_FORMAT, "tensor '%s' has %lld elements, expected %lld", name,
                         (long long)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]), (long long)n);
    if (t->type != SVLM_F32) return svlm_fail(err, SVLM_E_UNSUPPORTED, "norm tensor '%s' must be F32", name);
    *out = (const float *)t->data;
    return SVLM_OK;
}

static svlm_status load_hparams(const gguf_file *f, svlm_llama_hparams *hp, svlm_err *err) {
    char *arch = gguf_get_str_dup(f, "general.architecture");
    if (!arch) return svlm_fail(err, SVLM_E_FORMAT, "missing 'general.architecture'");
    if (strcmp(arch, "llama") != 0) {
        /* an mmproj given as the text model: the likeliest mistake, so say which flag it belongs to */
        svlm_status st =
            !strcmp(arch, "clip")
                ? svlm_fail(err, SVLM_E_INVALID,
                            "this is a vision projector (mmproj, architecture 'clip'), not a text model: "
                            "-m takes the text model (this file goes with --mmproj)")
                : svlm_fail(err, SVLM_E_UNSUPPORTED,
                            "architecture '%s' is not supported (svlm runs 'llama' models)", arch);
        free(arch);
        return st;
    }
    svlm_status st;
    if ((st = get_u32_req(f, arch, "embedding_length", &hp->n_embd, err)) ||
        (st = get_u32_req(f, arch, "block_count", &hp->n_layer, err)) ||
        (st = get_u32_req(f, arch, "attention.head_count", &hp->n_head, err)) ||
        (st = get_u32_req(f, arch, "feed_forward_length", &hp->n_ff, err))) {
        free(arch);
        return st;
    }
    char key[160];
    uint32_t u;
    snprintf(key, sizeof key, "%s.attention.head_count_kv", arch);
    hp->n_head_kv = gguf_get_u32(f, key, &u) ? (u <= (1u << 30) ? (int)u : 0) : hp->n_head;
    snprintf(key, sizeof key, "%s.context_length", arch);
    uint32_t ctx_u = 2048; /* (as it is in the file: a value past 2^30 is named as it is) */
    if (gguf_get_u32(f, key, &u)) ctx_u = u;
    hp->n_ctx_train = ctx_u <= (1u << 30) ? (int)ctx_u : -1;
    snprintf(key, sizeof key, "%s.rope.freq_base", arch);
    /* llama.cpp uses 10000 when the key is absent (e.g. llama2.c exports); do the same. */
    if (!gguf_get_f32(f, key, &hp->rope_base)) hp->rope_base = 10000.0f;
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", arch);
    if (!gguf_get_f32(f, key, &hp->rms_eps)) {
        free(arch);
        return svlm_fail(err, SVLM_E_FORMAT, "missing metadata key '%s'", key);
    }
    if (hp->n_ctx_train <= 0 || !(hp->rope_base > 0 && isfinite(hp->rope_base)) ||
        !(hp->rms_eps >= 0 && hp->rms_eps < 1)) {
        free(arch);
        return svlm_fail(err, SVLM_E_FORMAT, "invalid context_length %u, rope.freq_base %g or rms epsilon %g",
                         ctx_u, (double)hp->rope_base, (double)hp->rms_eps);
    }
    if (hp->n_head_kv <= 0 || hp->n_head % hp->n_head_kv != 0 || hp->n_embd % hp->n_head != 0) {
        free(arch);
        return svlm_fail(err, SVLM_E_FORMAT, "inconsistent heads: n_embd %d, heads %d, kv heads %d",
                         hp->n_embd, hp->n_head, hp->n_head_kv);
    }
    hp->head_dim = hp->n_embd / hp->n_head;
    snprintf(key, sizeof key, "%s.attention.key_length", arch);
    if (gguf_get_u32(f, key, &u) && (int)u != hp->head_dim) {
        free(arch);
        return svlm_fail(err, SVLM_E_UNSUPPORTED, "key_length %u differs from n_embd/n_head %d", u,
                         hp->head_dim);
    }
    snprintf(key, sizeof key, "%s.rope.dimension_count", arch);
    uint32_t rot_u = (uint32_t)hp->head_dim;
    if (gguf_get_u32(f, key, &u)) rot_u = u;
    hp->n_rot = rot_u <= (1u << 30) ? (int)rot_u : -1;
    if (hp->n_rot <= 0 || hp->n_rot > hp->head_dim || hp->n_rot % 2) {
        free(arch);
        return svlm_fail(err, SVLM_E_FORMAT,
                         "invalid rope.dimension_count %u: it must be even and at most the head size %d "
                         "(embedding_length %d / head_count %d)",
                         rot_u, hp->head_dim, hp->n_embd, hp->n_head);
    }
    hp->rope_neox = 0; /* llama.cpp's LLAMA arch uses the "normal" adjacent-pair RoPE */
    free(arch);
    return SVLM_OK;
}

svlm_status svlm_llama_load(const char *path, svlm_llama **out, svlm_err *err) {
    *out = NULL;
    svlm_llama *m = calloc(1, sizeof *m);
    if (!m) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    svlm_status st = gguf_open(path, &m->gguf, err);
    if (st) goto fail;
    const gguf_file *f = m->gguf;
    svlm_llama_hparams *hp = &m->hp;
    if ((st = load_hparams(f, hp, err))) goto fail;
    /* each layer binds 9 tensors: a count beyond that is a damaged header, not a model to size
     * tables for */
    if ((uint64_t)hp->n_layer > f->n_tensors / 9) {
        st = svlm_fail(err, SVLM_E_FORMAT, "block_count %d, but the file holds only %llu tensors (9 a layer)",
                       hp->n_layer, (unsigned long long)f->n_tensors);
        goto fail;
    }

    const gguf_tensor *emb = gguf_find_tensor(f, "token_embd.weight");
    if (!emb) {
        st = svlm_fail(err, SVLM_E_FORMAT, "tensor 'token_embd.weight' is missing");
        goto fail;
    }
    if (emb->ne[1] < 1 || emb->ne[1] > (1 << 30)) {
        st = svlm_fail(err, SVLM_E_FORMAT, "token_embd.weight has %lld rows", (long long)emb->ne[1]);
        goto fail;
    }
    hp->n_vocab = (int)emb->ne[1];
    const int E = hp->n_embd, KV = hp->n_head_kv * hp->head_dim;
    if ((st = bind_weight(f, "token_embd.weight", E, hp->n_vocab, &m->tok_embd, err))) goto fail;
    if ((st = bind_vector(f, "output_norm.weight", E, &m->output_norm, err))) goto fail;
    if (gguf_find_tensor(f, "output.weight")) {
        if ((st = bind_weight(f, "output.weight", E, hp->n_vocab, &m->output, err))) goto fail;
    } else {
        m->output = m->tok_embd;
        hp->tied_output = 1;
    }
    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers) {
        st = svlm_fail(err, SVLM_E_NOMEM, "out of memory");
        goto fail;
    }
    for (int l = 0; l < hp->n_layer; l++) {
        svlm_llama_layer *L = &m->layers[l];
        char n[96];
#define W(field, nm, c, r)                                                                                   \
    snprintf(n, sizeof n, "blk.%d." nm ".weight", l);                                                        \
    if ((st = bind_weight(f, n, c, r, &L->field, err))) goto fail;
#define V(field, nm)                                                                                         \
    snprintf(n, sizeof n, "blk.%d." nm ".weight", l);                                                        \
    if ((st = bind_vector(f, n, E, &L->field, err))) goto fail;
        V(attn_norm, "attn_norm")
        W(wq, "attn_q", E, E)
        W(wk, "attn_k", E, KV)
        W(wv, "attn_v", E, KV)
        W(wo, "attn_output", E, E)
        V(ffn_norm, "ffn_norm")
        W(w_gate, "ffn_gate", E, hp->n_ff)
        W(w_up, "ffn_up", E, hp->n_ff)
        W(w_down, "ffn_down", hp->n_ff, E)
#undef W
#undef V
    }
    /* a layer past block_count is a file whose metadata lost layers: run short, it answers wrongly
     * without a word (llama.cpp refuses a tensor count that does not match) */
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        int layer;
        if (sscanf(f->tensors[i].name, "blk.%d.", &layer) == 1 && (layer < 0 || layer >= hp->n_layer)) {
            st = svlm_fail(err, SVLM_E_FORMAT,
                           "tensor '%s' is of layer %d, but block_count says %d layers (damaged metadata?)",
                           f->tensors[i].name, layer, hp->n_layer);
            goto fail;
        }
    }
    if ((st = svlm_tokenizer_load(f, &m->tok, err))) goto fail;
    if (svlm_tokenizer_n_vocab(m->tok) != hp->n_vocab) {
        st = svlm_fail(err, SVLM_E_FORMAT, "tokenizer has %d tokens but token_embd has %d rows",
                       svlm_tokenizer_n_vocab(m->tok), hp->n_vocab);
        goto fail;
    }
    *out = m;
    return SVLM_OK;
fail:
    svlm_err_prefix(err, "%s", path);
    svlm_llama_free(m);
    return st;
}

void svlm_llama_free(svlm_llama *m) {
    if (!m) return;
    svlm_tokenizer_free(m->tok);
    free(m->layers);
    gguf_close(m->gguf);
    free(m);
}

const svlm_llama_hparams *svlm_llama_hparams_of(const svlm_llama *m) {
    return &m->hp;
}
const svlm_tokenizer *svlm_llama_tokenizer(const svlm_llama *m) {
    return m->tok;
}
const gguf_file *svlm_llama_gguf(const svlm_llama *m) {
    return m->gguf;
}
