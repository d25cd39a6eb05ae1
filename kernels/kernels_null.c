/*
 * The "null" backend: every compute op returns at once, buffers are host memory, and only copies
 * that cross between the host's memory and the backend's still copy. It says it is a GPU, so the
 * engine takes a GPU's policies (frames of many streams batched, no token compression, moved
 * windows re-rotated in place). A benchmark on it measures svlm's own host work at a model's real
 * shapes (scheduling, preprocessing, pages, memory banks, sampling), the ceiling that no device
 * can raise. Its outputs are meaningless by design.
 */
#include <pthread.h>
#include <search.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/kernels.h"

/* The blocks null_alloc handed out ("device" memory), from every null backend (as on one GPU, a
 * copy between two backends' blocks stays on the device), in one tree of address spans: a copy
 * between two of them costs nothing, one from or to the host's memory (a transfer a GPU's host
 * also pays for) still copies. */
typedef struct {
    uintptr_t lo, hi;
} span;
static pthread_mutex_t spans_mu = PTHREAD_MUTEX_INITIALIZER;
static void *spans_root;
static size_t spans_bytes; /* their sizes' sum, under spans_mu */
/* SVLM_NULL_DEVICE_MIB: a device of that size (0: unbounded), read when a null backend is made;
 * like the CUDA backend, blocks are refused past nine tenths of it, so capacity and what the
 * engine does when the device is full can be tried without one. Under spans_mu. */
static size_t device_cap;

static int span_cmp(const void *a, const void *b) { /* overlapping spans compare equal */
    const span *x = a, *y = b;
    return x->hi <= y->lo ? -1 : y->hi <= x->lo ? 1 : 0;
}

static int on_device(const void *p, size_t bytes) {
    const span key = {(uintptr_t)p, (uintptr_t)p + (bytes ? bytes : 1)};
    pthread_mutex_lock(&spans_mu);
    span *const *hit = tfind(&key, &spans_root, span_cmp);
    const int in = hit && (*hit)->lo <= key.lo && key.hi <= (*hit)->hi;
    pthread_mutex_unlock(&spans_mu);
    return in;
}

/* Where the block holding p starts (p is in one). */
static uintptr_t block_start(const void *p) {
    const span key = {(uintptr_t)p, (uintptr_t)p + 1};
    pthread_mutex_lock(&spans_mu);
    span *const *hit = tfind(&key, &spans_root, span_cmp);
    const uintptr_t lo = hit ? (*hit)->lo : (uintptr_t)p;
    pthread_mutex_unlock(&spans_mu);
    return lo;
}

/* What every block starts as (not zeros), and what a product into the host's memory returns:
 * floats 0..1023 peaking at index 511 of every 1024, so the largest logit of a row is an ordinary
 * token's for the vocabularies svlm meets (multiples of 64, 1024 or more: never the first 17 ids
 * nor the last 128, where special and end-of-turn tokens live; test_kernels_null checks them),
 * and greedy answers run their full length, batched (logits on the "device") or not. */
static float pattern_at(size_t i) {
    return (float)(((i & 1023) + 512) & 1023);
}
static void logits_pattern(float *p, size_t n) {
    for (size_t i = 0; i < n; i++)
        p[i] = pattern_at(i);
}

static void null_destroy(svlm_kernels *k) {
    free(k);
}
static void *null_alloc(svlm_kernels *k, size_t bytes) {
    (void)k;
    size_t rounded = (bytes + 63) / 64 * 64;
    if (rounded < bytes) return NULL;
    rounded = rounded ? rounded : 64;
    void *p = aligned_alloc(64, rounded);
    span *s = malloc(sizeof *s);
    if (!p || !s) {
        free(p);
        free(s);
        return NULL;
    }
    pthread_mutex_lock(&spans_mu); /* the bytes are counted (reserved) before the block is filled */
    const int full = device_cap && spans_bytes + rounded > device_cap - device_cap / 10;
    if (!full) spans_bytes += rounded;
    pthread_mutex_unlock(&spans_mu);
    if (full) {
        free(p);
        free(s);
        return NULL;
    }
    logits_pattern(p, rounded / sizeof(float));
    *s = (span){(uintptr_t)p, (uintptr_t)p + rounded};
    pthread_mutex_lock(&spans_mu);
    span *const *added = tsearch(s, &spans_root, span_cmp);
    const int ok = added && *added == s; /* read under the lock: another tdelete may move nodes */
    if (!ok) spans_bytes -= rounded;
    pthread_mutex_unlock(&spans_mu);
    if (!ok) { /* out of memory for the node (a live block never overlaps a new one) */
        free(p);
        free(s);
        return NULL;
    }
    return p;
}
static void null_free(svlm_kernels *k, void *p) {
    (void)k;
    if (!p) return;
    const span key = {(uintptr_t)p, (uintptr_t)p + 1};
    pthread_mutex_lock(&spans_mu);
    span *const *hit = tfind(&key, &spans_root, span_cmp);
    span *s = hit && (*hit)->lo == key.lo ? *hit : NULL; /* (only a block's own start frees it) */
    if (s) {
        tdelete(s, &spans_root, span_cmp);
        spans_bytes -= s->hi - s->lo;
    }
    pthread_mutex_unlock(&spans_mu);
    free(s);
    free(p);
}
static int null_device_memory(svlm_kernels *k, size_t *used, size_t *total) {
    (void)k;
    pthread_mutex_lock(&spans_mu);
    *used = spans_bytes;
    *total = device_cap;
    pthread_mutex_unlock(&spans_mu);
    return 1;
}
/* Every op call counts (svlm_kernels_ops): on a GPU each would be one or a few kernel launches
 * or a transfer, so ops per frame and per decode step measure the host's launch work. The lanes
 * read their counts from other threads. */
static void counted(svlm_kernels *k) {
    __atomic_fetch_add(&k->n_ops, 1, __ATOMIC_RELAXED);
}

static void null_copy(svlm_kernels *k, void *dst, const void *src, size_t bytes) {
    counted(k);
    if (!on_device(dst, bytes) || !on_device(src, bytes)) memmove(dst, src, bytes);
}
/* stores and loads write their sizes' bytes (f16 rows are half as long) without converting, and
 * nothing when both sides are the backend's own */
static void null_store(svlm_kernels *k, void *dst, svlm_dtype dst_type, const float *src, int64_t n) {
    counted(k);
    const size_t bytes = (size_t)n * (dst_type == SVLM_F16 ? 2 : 4);
    if (!on_device(dst, bytes) || !on_device(src, sizeof(float) * (size_t)n)) memset(dst, 0, bytes);
}
static void null_load(svlm_kernels *k, float *dst, const void *src, svlm_dtype src_type, int64_t n) {
    counted(k);
    const size_t bytes = sizeof(float) * (size_t)n;
    if (!on_device(dst, bytes) || !on_device(src, (size_t)n * (src_type == SVLM_F16 ? 2 : 4)))
        memset(dst, 0, bytes);
}
/* a device-side op on a GPU (the connector's pixel shuffle): nothing, like the compute */
static void null_gather_rows(svlm_kernels *k, float *dst, const float *src, const int32_t *idx, int64_t n,
                             int64_t dim) {
    counted(k), (void)dst, (void)src, (void)idx, (void)n, (void)dim;
}

/* ---- compute: nothing ---- */

/* A product into the host's memory (the logits of the last row) comes back as a GPU's would: the
 * host pays for the transfer, and a greedy sampler finds an ordinary token in it. */
static void null_matmul(svlm_kernels *k, const svlm_weight *w, const float *x, int64_t n, float *y) {
    counted(k);
    (void)x;
    const size_t count = (size_t)n * (size_t)w->rows;
    if (!on_device(y, sizeof(float) * count)) logits_pattern(y, count);
}
static void null_matmul_multi(svlm_kernels *k, const svlm_weight *const *ws, int n_w, const float *x,
                              int64_t n, float *const *ys) {
    counted(k), (void)ws, (void)n_w, (void)x, (void)n, (void)ys;
}
static void null_rmsnorm(svlm_kernels *k, const float *x, const float *w, float *y, int64_t n, int64_t dim,
                         float eps) {
    counted(k), (void)x, (void)w, (void)y, (void)n, (void)dim, (void)eps;
}
static void null_layernorm(svlm_kernels *k, const float *x, const float *w, const float *b, float *y,
                           int64_t n, int64_t dim, float eps) {
    counted(k), (void)x, (void)w, (void)b, (void)y, (void)n, (void)dim, (void)eps;
}
static void null_rope(svlm_kernels *k, float *x, int64_t n, int n_head, int head_dim, int n_rot,
                      const int32_t *pos, float base, int neox) {
    counted(k), (void)x, (void)n, (void)n_head, (void)head_dim, (void)n_rot, (void)pos, (void)base,
        (void)neox;
}
static void null_attention(svlm_kernels *k, const svlm_attn_args *a) {
    counted(k), (void)a;
}
static void null_attention_multi(svlm_kernels *k, const svlm_attn_args *a, int n) {
    counted(k), (void)a, (void)n;
}
static void null_attention_items(svlm_kernels *k, const svlm_attn_args *shape, const svlm_attn_item *items,
                                 int n) {
    counted(k), (void)shape, (void)items, (void)n;
}
static void null_unary(svlm_kernels *k, float *x, int64_t n) {
    counted(k), (void)x, (void)n;
}
static void null_binary(svlm_kernels *k, float *y, const float *x, int64_t n) {
    counted(k), (void)y, (void)x, (void)n;
}
static void null_rows(svlm_kernels *k, float *y, const float *b, int64_t n_rows, int64_t dim) {
    counted(k), (void)y, (void)b, (void)n_rows, (void)dim;
}
static void null_softmax(svlm_kernels *k, float *x, int64_t n_rows, int64_t dim) {
    counted(k), (void)x, (void)n_rows, (void)dim;
}
/* The index a GPU would find in the block's logits pattern (found from the pattern's formula,
 * without reading the block); a host row is really searched. Written wherever ids are (the
 * "device" is host memory too): a caller may read them as tokens. */
static void null_argmax(svlm_kernels *k, const float *x, int64_t n_rows, int64_t dim, int32_t *ids) {
    counted(k);
    if (!on_device(x, sizeof(float) * (size_t)(n_rows * dim))) {
        svlm_cpu_argmax(x, n_rows, dim, ids);
        return;
    }
    const size_t first = (size_t)((uintptr_t)x - block_start(x)) / sizeof(float);
    for (int64_t r = 0; r < n_rows; r++) {
        const size_t at = first + (size_t)(r * dim);
        int64_t best = (int64_t)((511 - at % 1024 + 1024) % 1024); /* the first peak */
        if (best >= dim) {                                         /* a short row without one */
            best = 0;
            for (int64_t i = 1; i < dim; i++)
                if (pattern_at(at + (size_t)i) > pattern_at(at + (size_t)best)) best = i;
        }
        ids[r] = (int32_t)best;
    }
}
static void null_store_rows(svlm_kernels *k, void *const *dsts, svlm_dtype dst_type, const float *src,
                            int64_t n, int64_t dim) {
    counted(k), (void)dsts, (void)dst_type, (void)src, (void)n, (void)dim;
}
static void null_matmul_add(svlm_kernels *k, const svlm_weight *w, const float *x, int64_t n, float *y) {
    counted(k), (void)w, (void)x, (void)n, (void)y;
}
static void null_rmsnorm_matmul_multi(svlm_kernels *k, const float *x, const float *norm_w, float eps,
                                      float *h, const svlm_weight *const *ws, int n_w, int64_t n,
                                      float *const *ys) {
    counted(k), (void)x, (void)norm_w, (void)eps, (void)h, (void)ws, (void)n_w, (void)n, (void)ys;
}
static void null_rmsnorm_swiglu(svlm_kernels *k, const float *x, const float *norm_w, float eps, float *h,
                                const svlm_weight *wg, const svlm_weight *wu, int64_t n, float *gate,
                                float *up) {
    counted(k), (void)x, (void)norm_w, (void)eps, (void)h, (void)wg, (void)wu, (void)n, (void)gate, (void)up;
}
static void null_layernorm_matmul_bias(svlm_kernels *k, const float *x, const float *ln_w, const float *ln_b,
                                       float eps, float *h, const svlm_weight *const *ws,
                                       const float *const *bs, int n_w, int64_t n, float *const *ys) {
    counted(k), (void)x, (void)ln_w, (void)ln_b, (void)eps, (void)h, (void)ws, (void)bs, (void)n_w, (void)n,
        (void)ys;
}
static void null_matmul_bias_add(svlm_kernels *k, const svlm_weight *w, const float *b, const float *x,
                                 int64_t n, float *y, float *tmp) {
    counted(k), (void)w, (void)b, (void)x, (void)n, (void)y, (void)tmp;
}
static void null_layernorm_gelu_ffn_add(svlm_kernels *k, float *x, const float *ln_w, const float *ln_b,
                                        float eps, const svlm_weight *w1, const float *b1,
                                        const svlm_weight *w2, const float *b2, int64_t n, float *h,
                                        float *ff, float *tmp) {
    counted(k), (void)x, (void)ln_w, (void)ln_b, (void)eps, (void)w1, (void)b1, (void)w2, (void)b2, (void)n,
        (void)h, (void)ff, (void)tmp;
}
static void null_rope_store(svlm_kernels *k, float *q, float *kx, float *vx, int64_t n, int n_head,
                            int n_kv_head, int head_dim, int n_rot, const int32_t *pos, float base, int neox,
                            void *const *dsts, svlm_dtype kv_type, float *keep, int round) {
    counted(k), (void)q, (void)kx, (void)vx, (void)n, (void)n_head, (void)n_kv_head, (void)head_dim,
        (void)n_rot, (void)pos, (void)base, (void)neox, (void)dsts, (void)kv_type, (void)keep, (void)round;
}
static void null_rmsnorm_qkv_rope_store(svlm_kernels *k, const float *x, const float *norm_w, float eps,
                                        float *h, const svlm_weight *const *ws, int64_t n, float *q,
                                        float *kx, float *vx, const svlm_rope_store_args *r) {
    counted(k), (void)x, (void)norm_w, (void)eps, (void)h, (void)ws, (void)n, (void)q, (void)kx, (void)vx,
        (void)r;
}
/* The pixels cross to the device (a GPU backend uploads them, then embeds them there): as many
 * floats as the patches hold (b (S/p)^2 3p^2; all the pixels when p divides S), the size of the
 * destination either op is given. */
static void upload_pixels(const float *pixels, int b, int S, int p, float *to) {
    const size_t g = (size_t)(S / p), bytes = sizeof(float) * (size_t)b * g * g * 3 * (size_t)p * (size_t)p;
    if (!on_device(pixels, bytes)) memmove(to, pixels, bytes);
}
static void null_im2col(svlm_kernels *k, float *dst, const float *pixels, int b, int S, int p, int round) {
    counted(k), (void)round;
    upload_pixels(pixels, b, S, p, dst);
}
static void null_patch_embed(svlm_kernels *k, const svlm_weight *w, const float *pixels, int b, int S, int p,
                             float *patches, float *y) {
    counted(k), (void)w, (void)y;
    upload_pixels(pixels, b, S, p, patches);
}
static void null_kv_shift(svlm_kernels *k, const svlm_kv_shift_args *a) {
    counted(k), (void)a;
}

static const backend_ops null_ops = {
    .destroy = null_destroy,
    .matmul = null_matmul,
    .matmul_multi = null_matmul_multi,
    .rmsnorm = null_rmsnorm,
    .layernorm = null_layernorm,
    .rope = null_rope,
    .attention = null_attention,
    .silu_mul = null_binary,
    .gelu_tanh = null_unary,
    .add = null_binary,
    .add_bias = null_rows,
    .softmax = null_softmax,
    .argmax = null_argmax,
    .alloc = null_alloc,
    .free = null_free,
    .copy = null_copy,
    .store = null_store,
    .load = null_load,
    .round_f16 = null_unary,
    .gather_rows = null_gather_rows,
    .gelu_tanh_f16 = null_unary,
    .attention_multi = null_attention_multi,
    .store_rows = null_store_rows,
    .attention_items = null_attention_items,
    .add_bias_gelu_f16 = null_rows,
    .matmul_add = null_matmul_add,
    .rmsnorm_matmul_multi = null_rmsnorm_matmul_multi,
    .rmsnorm_swiglu = null_rmsnorm_swiglu,
    .layernorm_matmul_bias = null_layernorm_matmul_bias,
    .matmul_bias_add = null_matmul_bias_add,
    .layernorm_gelu_ffn_add = null_layernorm_gelu_ffn_add,
    .rope_store = null_rope_store,
    .rmsnorm_qkv_rope_store = null_rmsnorm_qkv_rope_store,
    .im2col = null_im2col,
    .patch_embed = null_patch_embed,
    .kv_shift = null_kv_shift,
    .device_memory = null_device_memory,
};

svlm_status svlm_kernels_create_null(svlm_kernels **out, svlm_err *err) {
    *out = NULL;
    static atomic_int told;
    if (!atomic_exchange(&told, 1)) /* once: serve or describe on it would otherwise look broken */
        fprintf(stderr, "svlm: the null backend computes nothing (it measures svlm's own host work): "
                        "answers and descriptions are meaningless\n");
    const char *mib = getenv("SVLM_NULL_DEVICE_MIB");
    char *end = NULL;
    const double cap = mib && *mib ? strtod(mib, &end) : 0;
    if (mib && *mib && (*end || !(cap >= 0 && cap < 1e9) || (cap > 0 && cap * 1048576.0 < 1.0)))
        return svlm_fail(err, SVLM_E_INVALID,
                         "SVLM_NULL_DEVICE_MIB must be a size in MiB (0: unbounded), not '%s'", mib);
    pthread_mutex_lock(&spans_mu);
    device_cap = (size_t)(cap * 1048576.0);
    pthread_mutex_unlock(&spans_mu);
    svlm_kernels *k = calloc(1, sizeof *k);
    if (!k) return svlm_fail(err, SVLM_E_NOMEM, "out of memory for the null backend");
    k->ops = &null_ops;
    k->n_threads = 1;
    k->is_gpu = 1;
    k->no_compute = 1;
    snprintf(k->name, sizeof k->name, "null (no compute)");
    *out = k;
    return SVLM_OK;
}
