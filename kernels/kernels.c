/*
 * The svlm_k_* entry points (one indirect call into the backend's table) and the choice of
 * backend by name.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "kernels/backend.h"
#include "kernels/kernels.h"

#ifndef SVLM_HAVE_CUDA
svlm_status svlm_kernels_create_cuda(int device, svlm_kernels **out, svlm_err *err) {
    (void)device;
    *out = NULL;
    return svlm_fail(err, SVLM_E_UNSUPPORTED,
                     "this svlm was built without CUDA (configure with -DSVLM_CUDA=ON)");
}
#endif

svlm_status svlm_kernels_create_named(const char *name, int n_threads, svlm_kernels **out, svlm_err *err) {
    *out = NULL;
    if (!name || !*name) name = getenv("SVLM_BACKEND");
    if (!name || !*name) name = "cpu";
    if (!strcmp(name, "cpu")) return svlm_kernels_create_cpu(n_threads, out, err);
    if (!strcmp(name, "null")) return svlm_kernels_create_null(out, err);
    int device = 0, is_auto = !strcmp(name, "auto");
    if (!is_auto) {
        char *end = NULL;
        if (!strcmp(name, "cuda"))
            device = 0;
        else if (!strncmp(name, "cuda:", 5) && name[5] >= '0' && name[5] <= '9' &&
                 (device = (int)strtol(name + 5, &end, 10), end && !*end) && device < 64)
            ;
        else
            return svlm_fail(err, SVLM_E_INVALID, "backend '%s': expected cpu, cuda, cuda:N, auto or null",
                             name);
    }
    svlm_err cerr = {0};
    svlm_status st = svlm_kernels_create_cuda(device, out, &cerr);
    if (st == SVLM_OK) return SVLM_OK;
    /* a GPU that is absent or unusable is not an error for the caller: the CPU does the work */
    static int told;
    if (!told) fprintf(stderr, "svlm: no usable GPU (%s); computing on the CPU\n", cerr.msg);
    told = 1;
    return svlm_kernels_create_cpu(n_threads, out, err);
}

void svlm_kernels_set_priority(svlm_kernels *k, int high) {
    if (k->ops->set_priority) k->ops->set_priority(k, high);
}

int svlm_kernels_is_gpu(const svlm_kernels *k) {
    return k->is_gpu;
}
int svlm_kernels_computes(const svlm_kernels *k) {
    return !k->no_compute;
}
int svlm_kernels_device_memory(svlm_kernels *k, size_t *used, size_t *total) {
    *used = *total = 0;
    return k->ops->device_memory ? k->ops->device_memory(k, used, total) : 0;
}

void svlm_kernels_destroy(svlm_kernels *k) {
    if (k) k->ops->destroy(k);
}
const char *svlm_kernels_name(const svlm_kernels *k) {
    return k->name;
}
int svlm_kernels_threads(const svlm_kernels *k) {
    return k->n_threads;
}
uint64_t svlm_kernels_ops(const svlm_kernels *k) {
    return k ? __atomic_load_n(&k->n_ops, __ATOMIC_RELAXED) : 0;
}
void *svlm_k_alloc(svlm_kernels *k, size_t bytes) {
    return k->ops->alloc(k, bytes);
}
void svlm_k_free(svlm_kernels *k, void *p) {
    k->ops->free(k, p);
}
void *svlm_k_alloc_host(svlm_kernels *k, size_t bytes) {
    void *p = k->ops->alloc_host ? k->ops->alloc_host(k, bytes) : NULL;
    return p ? p : malloc(bytes ? bytes : 1); /* (the backend's free_host tells the two apart) */
}
void svlm_k_free_host(svlm_kernels *k, void *p) {
    if (!p) return;
    if (k->ops->free_host)
        k->ops->free_host(k, p);
    else
        free(p);
}
void svlm_k_forget(svlm_kernels *k, const void *weight_data) {
    if (k->ops->forget && weight_data) k->ops->forget(k, weight_data);
}

/* ---- replayed runs: every op's call is hashed, and skipped when the backend replays ---- */

static void note_u(svlm_kernels *k, uint64_t v) { /* one argument into the run's hash */
    uint64_t h = k->replay_hash ^ (v + 0x9e3779b97f4a7c15ull + (k->replay_hash << 6) + (k->replay_hash >> 2));
    h ^= h >> 31;
    h *= 0x7fb5d329728ea185ull;
    k->replay_hash = h ^ (h >> 27);
}
static void note_p(svlm_kernels *k, const void *p) {
    note_u(k, (uint64_t)(uintptr_t)p);
}
static void note_f(svlm_kernels *k, float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    note_u(k, b);
}
static void note_w(svlm_kernels *k, const svlm_weight *w) {
    note_u(k, (uint64_t)w->type);
    note_u(k, (uint64_t)w->rows);
    note_u(k, (uint64_t)w->cols);
    note_p(k, w->data);
    note_u(k, (uint64_t)w->row_bytes);
}
static void note_attn(svlm_kernels *k, const svlm_attn_args *a) {
    const void *ptrs[] = {a->q, a->k, a->v, a->out};
    for (int i = 0; i < 4; i++)
        note_p(k, ptrs[i]);
    const int64_t ints[] = {a->kv_type, a->kv_stride, a->n_q,      a->n_kv,
                            a->n_head,  a->n_kv_head, a->head_dim, a->causal};
    for (int i = 0; i < 8; i++)
        note_u(k, (uint64_t)ints[i]);
    note_f(k, a->scale);
}
/* Starts hashing op `op`'s call; returns 1 when the op must not run (the backend replays). */
static int noted(svlm_kernels *k, int op) {
    note_u(k, 0x5157u + (uint64_t)op);
    return k->replay_mode == REPLAY_SKIP;
}
enum {
    OP_COPY = 1,
    OP_STORE,
    OP_LOAD,
    OP_ROUND_F16,
    OP_GATHER,
    OP_ATTN_MULTI,
    OP_GELU_F16,
    OP_MATMUL,
    OP_MATMUL_MULTI,
    OP_RMSNORM,
    OP_LAYERNORM,
    OP_ROPE,
    OP_ATTN,
    OP_SILU_MUL,
    OP_GELU,
    OP_ADD,
    OP_ADD_BIAS,
    OP_SOFTMAX,
    OP_STORE_ROWS,
    OP_ATTN_ITEMS,
    OP_SYNC,
    OP_BIAS_GELU,
    OP_MATMUL_ADD,
    OP_NORM_MATMUL,
    OP_NORM_SWIGLU,
    OP_ROPE_STORE,
    OP_NORM_MATMUL_BIAS,
    OP_MATMUL_BIAS_ADD,
    OP_NORM_GELU_FFN,
    OP_PATCH_EMBED,
    OP_IM2COL,
    OP_KV_SHIFT,
    OP_NORM_QKV_ROPE,
    OP_ARGMAX,
    OP_DECODE_LAYERS
};

void svlm_k_replay_begin(svlm_kernels *k, const void *owner, uint64_t shape) {
    k->replay_hash = shape;
    note_p(k, owner);
    k->replay_mode = k->ops->replay_begin ? k->ops->replay_begin(k, owner, shape) : REPLAY_OFF;
}

void svlm_k_replay_forget(svlm_kernels *k, const void *owner) {
    if (k->ops->replay_forget) k->ops->replay_forget(k, owner);
}

int svlm_k_replay_end(svlm_kernels *k) {
    const int mode = k->replay_mode;
    k->replay_mode = REPLAY_OFF;
    if (mode == REPLAY_OFF || !k->ops->replay_end) return 1;
    return k->ops->replay_end(k, k->replay_hash);
}

void svlm_k_defer(svlm_kernels *k, int on) {
    if (k->ops->defer) k->ops->defer(k, on);
}
void svlm_k_sync(svlm_kernels *k) {
    if (k->replay_mode && noted(k, OP_SYNC)) return;
    if (k->ops->sync) k->ops->sync(k);
}
void svlm_k_copy(svlm_kernels *k, void *dst, const void *src, size_t bytes) {
    if (!bytes || dst == src) return;
    if (k->replay_mode) {
        int skip = noted(k, OP_COPY);
        note_p(k, dst);
        note_p(k, src);
        note_u(k, bytes);
        if (skip) return;
    }
    k->ops->copy(k, dst, src, bytes);
}
void svlm_k_store(svlm_kernels *k, void *dst, svlm_dtype dst_type, const float *src, int64_t n) {
    if (n <= 0) return;
    if (k->replay_mode) {
        int skip = noted(k, OP_STORE);
        note_p(k, dst);
        note_u(k, (uint64_t)dst_type);
        note_p(k, src);
        note_u(k, (uint64_t)n);
        if (skip) return;
    }
    k->ops->store(k, dst, dst_type, src, n);
}
void svlm_k_load(svlm_kernels *k, float *dst, const void *src, svlm_dtype src_type, int64_t n) {
    if (n <= 0) return;
    if (k->replay_mode) {
        int skip = noted(k, OP_LOAD);
        note_p(k, dst);
        note_p(k, src);
        note_u(k, (uint64_t)src_type);
        note_u(k, (uint64_t)n);
        if (skip) return;
    }
    k->ops->load(k, dst, src, src_type, n);
}
/* ops of one buffer and a count */
static int noted_xn(svlm_kernels *k, int op, const void *x, int64_t n) {
    int skip = noted(k, op);
    note_p(k, x);
    note_u(k, (uint64_t)n);
    return skip;
}
void svlm_k_round_f16(svlm_kernels *k, float *x, int64_t n) {
    if (n <= 0) return;
    if (k->replay_mode && noted_xn(k, OP_ROUND_F16, x, n)) return;
    k->ops->round_f16(k, x, n);
}
void svlm_k_gather_rows(svlm_kernels *k, float *dst, const float *src, const int32_t *idx, int64_t n,
                        int64_t dim) {
    if (n <= 0 || dim <= 0) return;
    if (k->replay_mode) { /* idx is host memory read at the call: its contents count */
        int skip = noted_xn(k, OP_GATHER, dst, n);
        note_p(k, src);
        note_u(k, (uint64_t)dim);
        for (int64_t i = 0; i < n; i++)
            note_u(k, (uint64_t)(uint32_t)idx[i]);
        if (skip) return;
    }
    k->ops->gather_rows(k, dst, src, idx, n, dim);
}
void svlm_k_attention_multi(svlm_kernels *k, const svlm_attn_args *a, int n) {
    if (k->replay_mode) {
        int skip = noted(k, OP_ATTN_MULTI);
        for (int i = 0; i < n; i++)
            note_attn(k, &a[i]);
        if (skip) return;
    }
    if (k->ops->attention_multi) {
        k->ops->attention_multi(k, a, n);
        return;
    }
    for (int i = 0; i < n; i++)
        k->ops->attention(k, &a[i]);
}
/* store_rows below the hashing (fused ops' fallbacks call it too) */
static void do_store_rows(svlm_kernels *k, void *const *dsts, svlm_dtype dst_type, const float *src,
                          int64_t n, int64_t dim) {
    if (k->ops->store_rows) {
        k->ops->store_rows(k, dsts, dst_type, src, n, dim);
        return;
    }
    for (int64_t i = 0; i < n; i++)
        if (dsts[i]) k->ops->store(k, dsts[i], dst_type, src + i * dim, dim);
}
void svlm_k_store_rows(svlm_kernels *k, void *const *dsts, svlm_dtype dst_type, const float *src, int64_t n,
                       int64_t dim) {
    if (n <= 0 || dim <= 0) return;
    if (k->replay_mode) {
        int skip = noted_xn(k, OP_STORE_ROWS, dsts, n);
        note_u(k, (uint64_t)dst_type);
        note_p(k, src);
        note_u(k, (uint64_t)dim);
        if (skip) return;
    }
    do_store_rows(k, dsts, dst_type, src, n, dim);
}
void svlm_k_attention_items(svlm_kernels *k, const svlm_attn_args *shape, const svlm_attn_item *items,
                            int n) {
    if (n <= 0) return;
    if (k->replay_mode) {
        int skip = noted_xn(k, OP_ATTN_ITEMS, items, n);
        note_attn(k, shape);
        if (skip) return;
    }
    if (k->ops->attention_items) {
        k->ops->attention_items(k, shape, items, n);
        return;
    }
    for (int i = 0; i < n; i++) {
        svlm_attn_args a = *shape;
        a.q = items[i].q;
        a.k = items[i].k;
        a.v = items[i].v;
        a.out = items[i].out;
        a.n_q = 1;
        a.n_kv = items[i].n_kv;
        k->ops->attention(k, &a);
    }
}
void svlm_k_kv_shift(svlm_kernels *k, const svlm_kv_shift_args *a) {
    if (a->n <= 0 || a->n_layer <= 0) return;
    if (k->replay_mode) { /* the layer tables are host memory read at the call: their contents count */
        int skip = noted(k, OP_KV_SHIFT);
        for (int l = 0; l < a->n_layer; l++) {
            note_p(k, a->raw[l]);
            note_p(k, a->kc[l]);
            note_p(k, a->vc[l]);
        }
        const int64_t ints[] = {a->n_layer,   a->type,     a->dst,   a->src, a->n,
                                a->n_kv_head, a->head_dim, a->n_rot, a->neox};
        for (int i = 0; i < 9; i++)
            note_u(k, (uint64_t)ints[i]);
        note_f(k, a->base);
        note_p(k, a->pos);
        if (skip) return;
    }
    k->ops->kv_shift(k, a);
}
void svlm_k_gelu_tanh_f16(svlm_kernels *k, float *x, int64_t n) {
    if (n <= 0) return;
    if (k->replay_mode && noted_xn(k, OP_GELU_F16, x, n)) return;
    k->ops->gelu_tanh_f16(k, x, n);
}

void svlm_k_matmul(svlm_kernels *k, const svlm_weight *w, const float *x, int64_t n, float *y) {
    if (k->replay_mode) {
        int skip = noted_xn(k, OP_MATMUL, x, n);
        note_w(k, w);
        note_p(k, y);
        if (skip) return;
    }
    k->ops->matmul(k, w, x, n, y);
}
void svlm_k_matmul_multi(svlm_kernels *k, const svlm_weight *const *ws, int n_w, const float *x, int64_t n,
                         float *const *ys) {
    if (k->replay_mode) {
        int skip = noted_xn(k, OP_MATMUL_MULTI, x, n);
        for (int i = 0; i < n_w; i++) {
            note_w(k, ws[i]);
            note_p(k, ys[i]);
        }
        if (skip) return;
    }
    k->ops->matmul_multi(k, ws, n_w, x, n, ys);
}
void svlm_k_matmul_add(svlm_kernels *k, const svlm_weight *w, const float *x, int64_t n, float *y,
                       float *tmp) {
    if (n <= 0) return;
    if (k->replay_mode) {
        int skip = noted_xn(k, OP_MATMUL_ADD, x, n);
        note_w(k, w);
        note_p(k, y);
        note_p(k, tmp);
        if (skip) return;
    }
    if (k->ops->matmul_add) {
        k->ops->matmul_add(k, w, x, n, y);
        return;
    }
    k->ops->matmul(k, w, x, n, tmp);
    k->ops->add(k, y, tmp, n * w->rows);
}
void svlm_k_rmsnorm_matmul_multi(svlm_kernels *k, const float *x, const float *norm_w, float eps, float *h,
                                 const svlm_weight *const *ws, int n_w, int64_t n, float *const *ys) {
    if (n <= 0 || n_w <= 0) return;
    if (k->replay_mode) {
        int skip = noted_xn(k, OP_NORM_MATMUL, x, n);
        note_p(k, norm_w);
        note_f(k, eps);
        note_p(k, h);
        for (int i = 0; i < n_w; i++) {
            note_w(k, ws[i]);
            note_p(k, ys[i]);
        }
        if (skip) return;
    }
    if (k->ops->rmsnorm_matmul_multi) {
        k->ops->rmsnorm_matmul_multi(k, x, norm_w, eps, h, ws, n_w, n, ys);
        return;
    }
    k->ops->rmsnorm(k, x, norm_w, h, n, ws[0]->cols, eps);
    k->ops->matmul_multi(k, ws, n_w, h, n, ys);
}
/* the sequences the encoder's fused ops stand for (backends without their own form, and theirs
 * when they decline) */
void svlm_k_seq_matmul_bias_add(svlm_kernels *k, const svlm_weight *w, const float *b, const float *x,
                                int64_t n, float *y, float *tmp) {
    k->ops->matmul(k, w, x, n, tmp);
    if (b) k->ops->add_bias(k, tmp, b, n, w->rows);
    k->ops->add(k, y, tmp, n * w->rows);
}
void svlm_k_seq_layernorm_matmul_bias(svlm_kernels *k, const float *x, const float *ln_w, const float *ln_b,
                                      float eps, float *h, const svlm_weight *const *ws,
                                      const float *const *bs, int n_w, int64_t n, float *const *ys) {
    k->ops->layernorm(k, x, ln_w, ln_b, h, n, ws[0]->cols, eps);
    k->ops->matmul_multi(k, ws, n_w, h, n, ys);
    for (int i = 0; i < n_w; i++)
        if (bs[i]) k->ops->add_bias(k, ys[i], bs[i], n, ws[i]->rows);
}
void svlm_k_seq_layernorm_gelu_ffn_add(svlm_kernels *k, float *x, const float *ln_w, const float *ln_b,
                                       float eps, const svlm_weight *w1, const float *b1,
                                       const svlm_weight *w2, const float *b2, int64_t n, float *h, float *ff,
                                       float *tmp) {
    k->ops->layernorm(k, x, ln_w, ln_b, h, n, w1->cols, eps);
    k->ops->matmul(k, w1, h, n, ff);
    if (b1 && k->ops->add_bias_gelu_f16) {
        k->ops->add_bias_gelu_f16(k, ff, b1, n, w1->rows);
    } else {
        if (b1) k->ops->add_bias(k, ff, b1, n, w1->rows);
        k->ops->gelu_tanh_f16(k, ff, n * w1->rows);
    }
    svlm_k_seq_matmul_bias_add(k, w2, b2, ff, n, x, tmp);
}

void svlm_k_layernorm_matmul_bias(svlm_kernels *k, const float *x, const float *ln_w, const float *ln_b,
                                  float eps, float *h, const svlm_weight *const *ws, const float *const *bs,
                                  int n_w, int64_t n, float *const *ys) {
    if (n <= 0 || n_w <= 0) return;
    if (k->replay_mode) {
        int skip = noted_xn(k, OP_NORM_MATMUL_BIAS, x, n);
        note_p(k, ln_w);
        note_p(k, ln_b);
        note_f(k, eps);
        note_p(k, h);
        for (int i = 0; i < n_w; i++) {
            note_w(k, ws[i]);
            note_p(k, bs[i]);
            note_p(k, ys[i]);
        }
        if (skip) return;
    }
    if (k->ops->layernorm_matmul_bias) {
        k->ops->layernorm_matmul_bias(k, x, ln_w, ln_b, eps, h, ws, bs, n_w, n, ys);
        return;
    }
    svlm_k_seq_layernorm_matmul_bias(k, x, ln_w, ln_b, eps, h, ws, bs, n_w, n, ys);
}
void svlm_k_matmul_bias_add(svlm_kernels *k, const svlm_weight *w, const float *b, const float *x, int64_t n,
                            float *y, float *tmp) {
    if (n <= 0) return;
    if (k->replay_mode) {
        int skip = noted_xn(k, OP_MATMUL_BIAS_ADD, x, n);
        note_w(k, w);
        note_p(k, b);
        note_p(k, y);
        note_p(k, tmp);
        if (skip) return;
    }
    if (k->ops->matmul_bias_add) {
        k->ops->matmul_bias_add(k, w, b, x, n, y, tmp);
        return;
    }
    svlm_k_seq_matmul_bias_add(k, w, b, x, n, y, tmp);
}
void svlm_k_layernorm_gelu_ffn_add(svlm_kernels *k, float *x, const float *ln_w, const float *ln_b, float eps,
                                   const svlm_weight *w1, const float *b1, const svlm_weight *w2,
                                   const float *b2, int64_t n, float *h, float *ff, float *tmp) {
    if (n <= 0) return;
    if (k->replay_mode) {
        int skip = noted_xn(k, OP_NORM_GELU_FFN, x, n);
        note_p(k, ln_w);
        note_p(k, ln_b);
        note_f(k, eps);
        note_w(k, w1);
        note_p(k, b1);
        note_w(k, w2);
        note_p(k, b2);
        note_p(k, h);
        note_p(k, ff);
        note_p(k, tmp);
        if (skip) return;
    }
    if (k->ops->layernorm_gelu_ffn_add) {
        k->ops->layernorm_gelu_ffn_add(k, x, ln_w, ln_b, eps, w1, b1, w2, b2, n, h, ff, tmp);
        return;
    }
    svlm_k_seq_layernorm_gelu_ffn_add(k, x, ln_w, ln_b, eps, w1, b1, w2, b2, n, h, ff, tmp);
}
void svlm_k_rmsnorm_swiglu(svlm_kernels *k, const float *x, const float *norm_w, float eps, float *h,
                           const svlm_weight *wg, const svlm_weight *wu, int64_t n, float *gate, float *up) {
    if (n <= 0) return;
    if (k->replay_mode) {
        int skip = noted_xn(k, OP_NORM_SWIGLU, x, n);
        note_p(k, norm_w);
        note_f(k, eps);
        note_p(k, h);
        note_w(k, wg);
        note_w(k, wu);
        note_p(k, gate);
        note_p(k, up);
        if (skip) return;
    }
    if (k->ops->rmsnorm_swiglu) {
        k->ops->rmsnorm_swiglu(k, x, norm_w, eps, h, wg, wu, n, gate, up);
        return;
    }
    const svlm_weight *ws[2] = {wg, wu};
    float *ys[2] = {gate, up};
    k->ops->rmsnorm(k, x, norm_w, h, n, wg->cols, eps);
    k->ops->matmul_multi(k, ws, 2, h, n, ys);
    k->ops->silu_mul(k, gate, up, n * wg->rows);
}
void svlm_k_rmsnorm_qkv_rope_store(svlm_kernels *k, const float *x, const float *norm_w, float eps, float *h,
                                   const svlm_weight *const *ws, int64_t n, float *q, float *kx, float *vx,
                                   const svlm_rope_store_args *r) {
    if (n <= 0) return;
    if (!k->ops->rmsnorm_qkv_rope_store) { /* the two ops, each noted for replay on its own */
        float *ys[3] = {q, kx, vx};
        svlm_k_rmsnorm_matmul_multi(k, x, norm_w, eps, h, ws, 3, n, ys);
        svlm_k_rope_store(k, q, kx, vx, n, r->n_head, r->n_kv_head, r->head_dim, r->n_rot, r->pos, r->base,
                          r->neox, r->dsts, r->kv_type, r->keep, r->round);
        return;
    }
    if (k->replay_mode) {
        int skip = noted_xn(k, OP_NORM_QKV_ROPE, x, n);
        const void *ptrs[] = {norm_w, h, q, kx, vx, r->pos, r->dsts, r->keep};
        for (int i = 0; i < 8; i++)
            note_p(k, ptrs[i]);
        for (int i = 0; i < 3; i++)
            note_w(k, ws[i]);
        const int64_t ints[] = {r->n_head, r->n_kv_head, r->head_dim, r->n_rot,
                                r->neox,   r->kv_type,   r->round};
        for (int i = 0; i < 7; i++)
            note_u(k, (uint64_t)ints[i]);
        note_f(k, eps);
        note_f(k, r->base);
        if (skip) return;
    }
    k->ops->rmsnorm_qkv_rope_store(k, x, norm_w, eps, h, ws, n, q, kx, vx, r);
}

int svlm_k_decode_layers(svlm_kernels *k, const svlm_decode_layers_args *a) {
    if (a->n_layer <= 0 || !k->ops->decode_layers || !k->ops->decode_layers(k, a, 1)) return 0;
    if (k->replay_mode) {
        int skip = noted(k, OP_DECODE_LAYERS);
        const void *ptrs[] = {a->x, a->h, a->q, a->kx, a->vx, a->att, a->gate, a->up, a->rope.pos};
        for (size_t i = 0; i < sizeof ptrs / sizeof ptrs[0]; i++)
            note_p(k, ptrs[i]);
        note_u(k, (uint64_t)a->n_layer);
        note_f(k, a->eps);
        const int64_t ints[] = {a->rope.n_head, a->rope.n_kv_head, a->rope.head_dim, a->rope.n_rot,
                                a->rope.neox,   a->rope.kv_type,   a->rope.round};
        for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
            note_u(k, (uint64_t)ints[i]);
        note_f(k, a->rope.base);
        note_attn(k, &a->attn);
        for (int l = 0; l < a->n_layer; l++) {
            const svlm_decode_layer *L = &a->layers[l];
            const void *lp[] = {L->attn_norm, L->ffn_norm, L->dsts, L->att, L->keep};
            for (size_t i = 0; i < sizeof lp / sizeof lp[0]; i++)
                note_p(k, lp[i]);
            const svlm_weight *ws[] = {L->wq, L->wk, L->wv, L->wo, L->w_gate, L->w_up, L->w_down};
            for (size_t i = 0; i < sizeof ws / sizeof ws[0]; i++)
                note_w(k, ws[i]);
        }
        if (skip) return 1;
    }
    k->ops->decode_layers(k, a, 0);
    return 1;
}

void svlm_k_rope_store(svlm_kernels *k, float *q, float *kx, float *vx, int64_t n, int n_head, int n_kv_head,
                       int head_dim, int n_rot, const int32_t *pos, float base, int neox, void *const *dsts,
                       svlm_dtype kv_type, float *keep, int round) {
    if (n <= 0) return;
    if (k->replay_mode) {
        int skip = noted_xn(k, OP_ROPE_STORE, q, n);
        const void *ptrs[] = {kx, vx, pos, dsts, keep};
        for (int i = 0; i < 5; i++)
            note_p(k, ptrs[i]);
        const int64_t ints[] = {n_head, n_kv_head, head_dim, n_rot, neox, kv_type, round};
        for (int i = 0; i < 7; i++)
            note_u(k, (uint64_t)ints[i]);
        note_f(k, base);
        if (skip) return;
    }
    if (k->ops->rope_store) {
        k->ops->rope_store(k, q, kx, vx, n, n_head, n_kv_head, head_dim, n_rot, pos, base, neox, dsts,
                           kv_type, keep, round);
        return;
    }
    const int64_t kvd = (int64_t)n_kv_head * head_dim;
    if (keep) {
        k->ops->copy(k, keep, kx, sizeof(float) * (size_t)(n * kvd));
        k->ops->copy(k, keep + n * kvd, vx, sizeof(float) * (size_t)(n * kvd));
    }
    if (round) {
        k->ops->round_f16(k, kx, n * kvd);
        k->ops->round_f16(k, vx, n * kvd);
    }
    k->ops->rope(k, q, n, n_head, head_dim, n_rot, pos, base, neox);
    k->ops->rope(k, kx, n, n_kv_head, head_dim, n_rot, pos, base, neox);
    do_store_rows(k, dsts, kv_type, kx, n, kvd);
    do_store_rows(k, dsts + n, kv_type, vx, n, kvd);
}
void svlm_k_im2col(svlm_kernels *k, float *dst, const float *pixels, int b, int S, int p, int round) {
    if (b <= 0 || p <= 0 || S < p) return;
    if (k->replay_mode) {
        int skip = noted_xn(k, OP_IM2COL, dst, b);
        note_p(k, pixels);
        note_u(k, (uint64_t)S);
        note_u(k, (uint64_t)p);
        note_u(k, (uint64_t)round);
        if (skip) return;
    }
    if (k->ops->im2col) {
        k->ops->im2col(k, dst, pixels, b, S, p, round);
        return;
    }
    const int g = S / p;
    const size_t plane = (size_t)S * S, row = (size_t)3 * p * p;
    for (int t = 0; t < b; t++)
        for (int i = 0; i < g * g; i++) {
            float *d = dst + ((size_t)t * g * g + i) * row;
            const float *img = pixels + (size_t)t * 3 * plane;
            for (int c = 0; c < 3; c++)
                for (int ky = 0; ky < p; ky++) {
                    const float *s = img + c * plane + (size_t)((i / g) * p + ky) * S + (size_t)(i % g) * p;
                    for (int kx = 0; kx < p; kx++)
                        d[((size_t)c * p + ky) * p + kx] =
                            round ? svlm_f16_to_f32(svlm_f32_to_f16(s[kx])) : s[kx];
                }
        }
}
void svlm_k_patch_embed(svlm_kernels *k, const svlm_weight *w, const float *pixels, int b, int S, int p,
                        float *patches, float *y) {
    if (b <= 0 || p <= 0 || S < p) return;
    if (k->replay_mode) {
        int skip = noted_xn(k, OP_PATCH_EMBED, y, b);
        note_w(k, w);
        note_p(k, pixels);
        note_u(k, (uint64_t)S);
        note_u(k, (uint64_t)p);
        note_p(k, patches);
        if (skip) return;
    }
    if (k->ops->patch_embed) {
        k->ops->patch_embed(k, w, pixels, b, S, p, patches, y);
        return;
    }
    svlm_k_seq_patch_embed(k, w, pixels, b, S, p, patches, y);
}
void svlm_k_seq_patch_embed(svlm_kernels *k, const svlm_weight *w, const float *pixels, int b, int S, int p,
                            float *patches, float *y) {
    const int64_t g = S / p;
    svlm_k_im2col(k, patches, pixels, b, S, p, 1);
    k->ops->matmul(k, w, patches, (int64_t)b * g * g, y);
}
void svlm_k_rmsnorm(svlm_kernels *k, const float *x, const float *w, float *y, int64_t n, int64_t dim,
                    float eps) {
    if (k->replay_mode) {
        int skip = noted_xn(k, OP_RMSNORM, x, n);
        note_p(k, w);
        note_p(k, y);
        note_u(k, (uint64_t)dim);
        note_f(k, eps);
        if (skip) return;
    }
    k->ops->rmsnorm(k, x, w, y, n, dim, eps);
}
void svlm_k_layernorm(svlm_kernels *k, const float *x, const float *w, const float *b, float *y, int64_t n,
                      int64_t dim, float eps) {
    if (k->replay_mode) {
        int skip = noted_xn(k, OP_LAYERNORM, x, n);
        note_p(k, w);
        note_p(k, b);
        note_p(k, y);
        note_u(k, (uint64_t)dim);
        note_f(k, eps);
        if (skip) return;
    }
    k->ops->layernorm(k, x, w, b, y, n, dim, eps);
}
void svlm_k_rope(svlm_kernels *k, float *x, int64_t n, int n_head, int head_dim, int n_rot,
                 const int32_t *pos, float base, int neox) {
    if (k->replay_mode) {
        int skip = noted_xn(k, OP_ROPE, x, n);
        const int64_t ints[] = {n_head, head_dim, n_rot, neox};
        for (int i = 0; i < 4; i++)
            note_u(k, (uint64_t)ints[i]);
        note_p(k, pos);
        note_f(k, base);
        if (skip) return;
    }
    k->ops->rope(k, x, n, n_head, head_dim, n_rot, pos, base, neox);
}
void svlm_k_attention(svlm_kernels *k, const svlm_attn_args *a) {
    if (k->replay_mode) {
        int skip = noted(k, OP_ATTN);
        note_attn(k, a);
        if (skip) return;
    }
    k->ops->attention(k, a);
}
void svlm_k_silu_mul(svlm_kernels *k, float *gate, const float *up, int64_t n) {
    if (k->replay_mode) {
        int skip = noted_xn(k, OP_SILU_MUL, gate, n);
        note_p(k, up);
        if (skip) return;
    }
    k->ops->silu_mul(k, gate, up, n);
}
void svlm_k_gelu_tanh(svlm_kernels *k, float *x, int64_t n) {
    if (k->replay_mode && noted_xn(k, OP_GELU, x, n)) return;
    k->ops->gelu_tanh(k, x, n);
}
void svlm_k_add(svlm_kernels *k, float *y, const float *x, int64_t n) {
    if (k->replay_mode) {
        int skip = noted_xn(k, OP_ADD, y, n);
        note_p(k, x);
        if (skip) return;
    }
    k->ops->add(k, y, x, n);
}
void svlm_k_add_bias(svlm_kernels *k, float *y, const float *b, int64_t n_rows, int64_t dim) {
    if (k->replay_mode) {
        int skip = noted_xn(k, OP_ADD_BIAS, y, n_rows);
        note_p(k, b);
        note_u(k, (uint64_t)dim);
        if (skip) return;
    }
    k->ops->add_bias(k, y, b, n_rows, dim);
}
void svlm_k_add_bias_gelu_f16(svlm_kernels *k, float *x, const float *b, int64_t n_rows, int64_t dim) {
    if (n_rows <= 0 || dim <= 0) return;
    if (k->replay_mode) {
        int skip = noted_xn(k, OP_BIAS_GELU, x, n_rows);
        note_p(k, b);
        note_u(k, (uint64_t)dim);
        if (skip) return;
    }
    if (k->ops->add_bias_gelu_f16) {
        k->ops->add_bias_gelu_f16(k, x, b, n_rows, dim);
        return;
    }
    k->ops->add_bias(k, x, b, n_rows, dim);
    k->ops->gelu_tanh_f16(k, x, n_rows * dim);
}
void svlm_k_softmax(svlm_kernels *k, float *x, int64_t n_rows, int64_t dim) {
    if (k->replay_mode) {
        int skip = noted_xn(k, OP_SOFTMAX, x, n_rows);
        note_u(k, (uint64_t)dim);
        if (skip) return;
    }
    k->ops->softmax(k, x, n_rows, dim);
}
void svlm_k_argmax(svlm_kernels *k, const float *x, int64_t n_rows, int64_t dim, int32_t *ids) {
    if (n_rows <= 0 || dim <= 0) return;
    if (k->replay_mode) {
        int skip = noted_xn(k, OP_ARGMAX, x, n_rows);
        note_u(k, (uint64_t)dim);
        note_p(k, ids);
        if (skip) return;
    }
    k->ops->argmax(k, x, n_rows, dim, ids);
}
