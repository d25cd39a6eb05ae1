/*
 * The CUDA backend object: GPU discovery (no GPU is a normal answer, not a failure), managed
 * memory for svlm_k_alloc, staging of host pointers, and the row-wise ops. Each op runs on the
 * backend's stream and waits for it, so the host code of the decoder and encoder can read any
 * result right after the call.
 */
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cuda/cuda_internal.h"
#include "kernels/cuda/cuda_ops.h"

void cu_check(int err, const char *what) {
    if (err == cudaSuccess) return;
    if (cu_capturing) { /* recording a run: it is dropped and its ops issued again */
        cu_capture_failed = 1;
        (void)cudaGetLastError();
        return;
    }
    fprintf(stderr, "svlm: CUDA error in %s: %s (%d); the GPU state is lost, stopping\n", what,
            cudaGetErrorString((cudaError_t)err), err);
    abort();
}

void cu_check_blas(cublasStatus_t st, const char *what) {
    if (st == CUBLAS_STATUS_SUCCESS) return;
    if (cu_capturing) {
        cu_capture_failed = 1;
        return;
    }
    fprintf(stderr, "svlm: cuBLAS error in %s: status %d; stopping\n", what, (int)st);
    abort();
}

/* The address the GPU may use for p, or NULL when p is plain host memory. *host_side is set
 * when p is host memory of either kind (plain, or pinned and mapped). */
static const void *device_view_of(const void *p, int *host_side) {
    if (cu_ranges_contain(p)) { /* an svlm_k_alloc buffer: no driver call */
        *host_side = 0;
        return p;
    }
    struct cudaPointerAttributes a;
    *host_side = 1;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        (void)cudaGetLastError(); /* not an error worth keeping: p is simply unknown to CUDA */
        return NULL;
    }
    switch (a.type) {
    case cudaMemoryTypeDevice:
    case cudaMemoryTypeManaged: *host_side = 0; return p;
    case cudaMemoryTypeHost: return a.devicePointer;
    default: return NULL;
    }
}

static const void *device_view(const void *p) {
    int host_side;
    return device_view_of(p, &host_side);
}

const void *cu_device_view(const void *p) {
    return device_view(p);
}

static void *stage_buffer(cu_ctx *c, int slot, size_t bytes) {
    if (bytes > c->stage_cap[slot] && cu_capturing) { /* freeing a buffer a recording may hold */
        cu_capture_failed = 1;
        return NULL;
    }
    if (bytes > c->stage_cap[slot]) {
        if (c->stage[slot]) cu_check(cudaFree(c->stage[slot]), "cudaFree(staging)");
        size_t cap = (bytes + bytes / 4 + 255) / 256 * 256;
        cu_check(cudaMalloc(&c->stage[slot], cap), "cudaMalloc(staging)");
        c->stage_cap[slot] = cap;
        c->buf_gen++;
    }
    return c->stage[slot];
}

const void *cu_in(svlm_kernels *k, int slot, const void *p, size_t bytes) {
    if (!p || !bytes) return p;
    const void *d = device_view(p);
    if (d) return d;
    cu_ctx *c = CU(k);
    if (cu_capturing) cu_capture_failed = 1; /* a replay would read the host memory again, later */
    void *s = stage_buffer(c, slot, bytes);
    cu_check(cudaMemcpyAsync(s, p, bytes, cudaMemcpyHostToDevice, c->stream), "copy to the GPU");
    return s;
}

const void *cu_in_bulk(svlm_kernels *k, int slot, const void *p, size_t bytes) {
    if (!p || !bytes) return p;
    int host_side;
    const void *d = device_view_of(p, &host_side);
    if (d && !host_side) return d;
    cu_ctx *c = CU(k);
    if (cu_capturing) cu_capture_failed = 1; /* a replay would read the host memory again, later */
    void *s = stage_buffer(c, slot, bytes);
    cu_check(cudaMemcpyAsync(s, p, bytes, cudaMemcpyHostToDevice, c->stream), "copy to the GPU");
    return s;
}

void *cu_out(svlm_kernels *k, int slot, void *p, size_t bytes, int copy_in) {
    if (!p || !bytes) return p;
    cu_ctx *c = CU(k);
    int host_side;
    const void *d = device_view_of(p, &host_side);
    if (d) {
        c->pinned_out |= host_side; /* host memory the GPU writes: complete on return too */
        return (void *)d;
    }
    if (cu_capturing) cu_capture_failed = 1; /* host outputs are not recorded */
    void *s = stage_buffer(c, slot, bytes);
    if (copy_in) cu_check(cudaMemcpyAsync(s, p, bytes, cudaMemcpyHostToDevice, c->stream), "copy to the GPU");
    if (c->n_wb == CU_MAX_WRITEBACKS) {
        fprintf(stderr, "svlm: internal error: too many staged outputs in one CUDA op\n");
        abort();
    }
    c->wb[c->n_wb++] = (cu_writeback){p, s, bytes};
    return s;
}

void cu_done(svlm_kernels *k, const char *what) {
    cu_ctx *c = CU(k);
    cu_check(cudaGetLastError(), what);
    for (int i = 0; i < c->n_wb; i++)
        cu_check(
            cudaMemcpyAsync(c->wb[i].host, c->wb[i].dev, c->wb[i].bytes, cudaMemcpyDeviceToHost, c->stream),
            "copy from the GPU");
    const int wrote_host = c->n_wb > 0 || c->pinned_out;
    c->n_wb = 0;
    c->pinned_out = 0;
    if (cu_capturing && wrote_host) cu_capture_failed = 1; /* a recorded run writes no host memory */
    if ((wrote_host || !c->defer) && !cu_capturing) cu_check(cudaStreamSynchronize(c->stream), what);
    cu_prof_stop(k, what);
}

void *cu_scratch(svlm_kernels *k, size_t bytes) {
    cu_ctx *c = CU(k);
    if (bytes > c->scratch_cap && cu_capturing) { /* freeing a buffer a recording may hold */
        cu_capture_failed = 1;
        return NULL;
    }
    if (bytes > c->scratch_cap) {
        if (c->scratch) cu_check(cudaFree(c->scratch), "cudaFree(scratch)");
        size_t cap = (bytes + bytes / 4 + 255) / 256 * 256;
        cu_check(cudaMalloc(&c->scratch, cap), "cudaMalloc(scratch)");
        c->scratch_cap = cap;
        c->buf_gen++;
    }
    return c->scratch;
}

/* ---- ops ---- */

void cu_begin(svlm_kernels *k) {
    cu_prof_start(k);
    cu_check(cudaSetDevice(CU(k)->device), "cudaSetDevice");
}

static void cu_rmsnorm(svlm_kernels *k, const float *x, const float *w, float *y, int64_t n, int64_t dim,
                       float eps) {
    cu_begin(k);
    size_t bytes = sizeof(float) * (size_t)(n * dim);
    const float *dx = cu_in(k, 0, x, bytes);
    const float *dw = cu_weight(k, w, sizeof(float) * (size_t)dim);
    float *dy = cu_out(k, 1, y, bytes, 0);
    cu_check(svlm_cu_rmsnorm(CU(k)->stream, dx, dw, dy, n, dim, eps, CU(k)->pdl), "rmsnorm");
    cu_done(k, "rmsnorm");
}

static void cu_layernorm(svlm_kernels *k, const float *x, const float *w, const float *b, float *y, int64_t n,
                         int64_t dim, float eps) {
    cu_begin(k);
    size_t bytes = sizeof(float) * (size_t)(n * dim);
    const float *dx = cu_in(k, 0, x, bytes);
    const float *dw = cu_weight(k, w, sizeof(float) * (size_t)dim);
    const float *db = b ? cu_weight(k, b, sizeof(float) * (size_t)dim) : NULL;
    float *dy = cu_out(k, 1, y, bytes, 0);
    cu_check(svlm_cu_layernorm(CU(k)->stream, dx, dw, db, dy, n, dim, eps), "layernorm");
    cu_done(k, "layernorm");
}

static void cu_rope(svlm_kernels *k, float *x, int64_t n, int n_head, int head_dim, int n_rot,
                    const int32_t *pos, float base, int neox) {
    if (n_rot <= 0 || n <= 0) return;
    cu_begin(k);
    float *dx = cu_out(k, 0, x, sizeof(float) * (size_t)(n * n_head * head_dim), 1);
    const int32_t *dp = cu_in(k, 1, pos, sizeof(int32_t) * (size_t)n);
    /* the same float theta_scale as the CPU backend */
    float theta_scale = powf(base, -2.0f / (float)n_rot);
    cu_check(svlm_cu_rope(CU(k)->stream, dx, n, n_head, head_dim, n_rot, dp, theta_scale, neox), "rope");
    cu_done(k, "rope");
}

/* The working copy's buffers are svlm_k_alloc memory: the kernels read the layer table where
 * the GPU sees them. Two launches for all layers: the moved rows into scratch, then back at dst
 * with the keys rotated. */
static void cu_kv_shift(svlm_kernels *k, const svlm_kv_shift_args *a) {
    cu_begin(k);
    const int L = a->n_layer;
    void *tab[3 * L];
    for (int l = 0; l < L; l++) {
        void *const ps[3] = {a->raw[l], a->kc[l], a->vc[l]};
        for (int j = 0; j < 3; j++) {
            tab[j * L + l] = (void *)device_view(ps[j]);
            if (!tab[j * L + l]) {
                fprintf(stderr, "svlm: internal error: a working copy the GPU cannot reach\n");
                abort();
            }
        }
    }
    void *const *dtab = cu_in(k, 0, tab, sizeof tab);
    const int32_t *dpos = cu_in(k, 1, a->pos, sizeof(int32_t) * (size_t)a->n);
    const size_t elt = a->type == SVLM_F16 ? 2 : 4;
    /* the layers in groups whose moved rows fit 32 MB of scratch (the backend's one scratch buffer,
     * kept at its largest): one group for the 256M shape, a few for 2.2B */
    const size_t per_layer = (size_t)a->n * 2 * (size_t)a->n_kv_head * (size_t)a->head_dim * elt;
    const size_t cap = (size_t)32 << 20;
    const int group = per_layer >= cap ? 1 : cap / per_layer < (size_t)L ? (int)(cap / per_layer) : L;
    void *scratch = cu_scratch(k, per_layer * (size_t)group);
    if (!scratch) { /* a recording gives up (cu_scratch noted it) */
        cu_done(k, "kv_shift");
        return;
    }
    const float theta_scale = powf(a->base, -2.0f / (float)a->n_rot); /* as cu_rope */
    for (int l0 = 0; l0 < L; l0 += group)
        cu_check(svlm_cu_kv_shift(CU(k)->stream, dtab, L, l0, L - l0 < group ? L - l0 : group, a->dst, a->src,
                                  a->n, a->n_kv_head, a->head_dim, a->n_rot, dpos, theta_scale, a->neox,
                                  a->type == SVLM_F16, scratch),
                 "kv_shift");
    cu_done(k, "kv_shift");
}

static void cu_rope_store(svlm_kernels *k, float *q, float *kx, float *vx, int64_t n, int n_head,
                          int n_kv_head, int head_dim, int n_rot, const int32_t *pos, float base, int neox,
                          void *const *dsts, svlm_dtype kv_type, float *keep, int round) {
    cu_begin(k);
    const size_t kv_bytes = sizeof(float) * (size_t)(n * n_kv_head * head_dim);
    float *dq = cu_out(k, 0, q, sizeof(float) * (size_t)(n * n_head * head_dim), 1);
    const float *dk = cu_in(k, 1, kx, kv_bytes), *dv = cu_in(k, 2, vx, kv_bytes);
    const int32_t *dp = cu_in(k, 3, pos, sizeof(int32_t) * (size_t)n);
    void *const *dd = cu_in(k, 4, dsts, sizeof(void *) * 2 * (size_t)n);
    float *dkeep = keep ? cu_out(k, 5, keep, 2 * kv_bytes, 0) : NULL;
    /* the same float theta_scale as svlm_k_rope; odd n_rot: the last dimension is not rotated */
    const float theta_scale = n_rot > 0 ? powf(base, -2.0f / (float)n_rot) : 1.0f;
    cu_check(svlm_cu_rope_store(CU(k)->stream, dq, dk, dv, n, n_head, n_kv_head, head_dim,
                                n_rot > 0 ? n_rot : 0, dp, theta_scale, neox, dd, kv_type == SVLM_F16, dkeep,
                                round, CU(k)->pdl),
             "rope_store");
    cu_done(k, "rope_store");
}

static void cu_attention(svlm_kernels *k, const svlm_attn_args *a) {
    if (a->n_q <= 0) return;
    cu_begin(k);
    size_t q_bytes = sizeof(float) * (size_t)(a->n_q * a->n_head * a->head_dim);
    size_t elt = a->kv_type == SVLM_F16 ? 2 : 4;
    /* exactly the rows' extent: the last row need not have a full stride after it */
    size_t kv_bytes =
        a->n_kv > 0 ? elt * (size_t)((a->n_kv - 1) * a->kv_stride + (int64_t)a->n_kv_head * a->head_dim) : 0;
    const float *dq = cu_in(k, 0, a->q, q_bytes);
    const void *dk = kv_bytes ? cu_in(k, 1, a->k, kv_bytes) : NULL;
    const void *dv = kv_bytes ? cu_in(k, 2, a->v, kv_bytes) : NULL;
    float *dout = cu_out(k, 3, a->out, q_bytes, 0);
    /* tensor cores for long query runs: the fused kernel, else cuBLAS */
    const int flash = cu_attention_flash(k, a, dq, dk, dv, dout);
    const int gemm = !flash && cu_attention_gemm(k, a, dq, dk, dv, dout);
    if (!flash && !gemm)
        cu_check(svlm_cu_attention(CU(k)->stream, dq, dk, dv, a->kv_type == SVLM_F16, a->kv_stride, dout,
                                   a->n_q, a->n_kv > 0 ? a->n_kv : 0, a->n_head, a->n_kv_head, a->head_dim,
                                   a->causal, a->scale),
                 "attention");
    cu_done(k, flash ? "attention (flash)" : gemm ? "attention (cuBLAS)" : "attention (kernel)");
}

int cu_decode_partials(svlm_kernels *k, int n, int n_head, int head_dim, int *splits, float **part,
                       unsigned **done) {
    cu_ctx *c = CU(k);
    *splits = svlm_cu_attention_decode_splits(n, n_head);
    const size_t pairs = (size_t)n * (size_t)n_head;
    const size_t part_bytes = sizeof(float) * pairs * (size_t)*splits * (size_t)(head_dim + 2);
    /* counters first, at fixed places: a launch of another shape leaves them zero */
    const size_t counters =
        (sizeof(unsigned) * (pairs > c->dec_pairs ? pairs : c->dec_pairs) + 255) / 256 * 256;
    if (*splits > 1 && (pairs > c->dec_pairs || counters + part_bytes > c->dec_buf_cap)) {
        if (cu_capturing) { /* the counters must start at zero: made outside a recording */
            cu_capture_failed = 1;
            return 0;
        }
        if (c->dec_buf) cu_check(cudaFree(c->dec_buf), "cudaFree(attention partials)");
        c->dec_buf = NULL;
        c->dec_buf_cap = c->dec_pairs = 0;
        const size_t cap = counters + part_bytes + part_bytes / 2;
        cu_check(cudaMalloc(&c->dec_buf, cap), "cudaMalloc(attention partials)");
        cu_check(cudaMemsetAsync(c->dec_buf, 0, counters, c->stream), "zeroing attention counters");
        c->dec_buf_cap = cap;
        c->dec_pairs = counters / sizeof(unsigned);
        c->buf_gen++;
    }
    *done = *splits > 1 ? (unsigned *)c->dec_buf : NULL;
    *part = *splits > 1 ? (float *)((char *)c->dec_buf + c->dec_pairs * sizeof(unsigned)) : NULL;
    return 1;
}

/* Decode attentions of items (device-accessible) shaped like `shape`: split over blocks when
 * the launch alone would leave the GPU idle. */
static void decode_attention(svlm_kernels *k, const svlm_attn_args *shape, const svlm_cu_attn_item *di,
                             int n) {
    cu_ctx *c = CU(k);
    int splits;
    float *part;
    unsigned *done;
    if (!cu_decode_partials(k, n, shape->n_head, shape->head_dim, &splits, &part, &done)) return;
    cu_check(svlm_cu_attention_decode(c->stream, di, n, shape->kv_type == SVLM_F16, shape->kv_stride,
                                      shape->n_head, shape->n_kv_head, shape->head_dim, shape->scale, splits,
                                      part, done, c->pdl),
             "decode attention");
}

/* Decode attentions of several sequences (one query each, shared shapes, device-accessible
 * buffers) in one launch; anything else one by one. */
static void cu_attention_multi(svlm_kernels *k, const svlm_attn_args *a, int n) {
    enum { MAX_ITEMS = 256 };
    if (n > 1 && a[0].n_q > 1) { /* prefill of many sequences: one fused launch when it takes them */
        cu_begin(k);
        if (cu_attention_flash_items(k, a, n)) {
            cu_done(k, "attention_multi (flash)");
            return;
        }
        cu_prof_stop(k, "attention_multi (declined)"); /* nothing was queued */
    }
    svlm_cu_attn_item items[MAX_ITEMS];
    int ok = n > 0 && n <= MAX_ITEMS;
    for (int i = 0; ok && i < n; i++) {
        const svlm_attn_args *x = &a[i];
        ok = x->n_q == 1 && x->n_kv > 0 && x->kv_type == a[0].kv_type && x->kv_stride == a[0].kv_stride &&
             x->n_head == a[0].n_head && x->n_kv_head == a[0].n_kv_head && x->head_dim == a[0].head_dim &&
             x->causal == a[0].causal && x->scale == a[0].scale;
        const void *ptrs[4] = {x->q, x->k, x->v, x->out};
        for (int j = 0; ok && j < 4; j++)
            ok = device_view(ptrs[j]) == ptrs[j];
        if (ok) items[i] = (svlm_cu_attn_item){x->q, x->k, x->v, x->out, x->n_kv};
    }
    if (!ok) {
        for (int i = 0; i < n; i++)
            cu_attention(k, &a[i]);
        return;
    }
    cu_begin(k);
    const svlm_cu_attn_item *di = cu_in(k, 0, items, sizeof(svlm_cu_attn_item) * (size_t)n);
    decode_attention(k, &a[0], di, n);
    cu_done(k, "attention_multi (kernel)");
}

static void cu_silu_mul(svlm_kernels *k, float *gate, const float *up, int64_t n) {
    if (n <= 0) return;
    cu_begin(k);
    float *dg = cu_out(k, 0, gate, sizeof(float) * (size_t)n, 1);
    const float *du = cu_in(k, 1, up, sizeof(float) * (size_t)n);
    cu_check(svlm_cu_silu_mul(CU(k)->stream, dg, du, n), "silu_mul");
    cu_done(k, "silu_mul");
}

static void cu_gelu_tanh(svlm_kernels *k, float *x, int64_t n) {
    if (n <= 0) return;
    cu_begin(k);
    float *dx = cu_out(k, 0, x, sizeof(float) * (size_t)n, 1);
    cu_check(svlm_cu_gelu_tanh(CU(k)->stream, dx, n), "gelu_tanh");
    cu_done(k, "gelu_tanh");
}

static void cu_add(svlm_kernels *k, float *y, const float *x, int64_t n) {
    if (n <= 0) return;
    cu_begin(k);
    float *dy = cu_out(k, 0, y, sizeof(float) * (size_t)n, 1);
    const float *dx = cu_in(k, 1, x, sizeof(float) * (size_t)n);
    cu_check(svlm_cu_add(CU(k)->stream, dy, dx, n), "add");
    cu_done(k, "add");
}

static void cu_add_bias(svlm_kernels *k, float *y, const float *b, int64_t n_rows, int64_t dim) {
    if (n_rows <= 0 || dim <= 0) return;
    cu_begin(k);
    float *dy = cu_out(k, 0, y, sizeof(float) * (size_t)(n_rows * dim), 1);
    const float *db = cu_weight(k, b, sizeof(float) * (size_t)dim);
    cu_check(svlm_cu_add_bias(CU(k)->stream, dy, db, n_rows, dim), "add_bias");
    cu_done(k, "add_bias");
}

static void cu_add_bias_gelu_f16(svlm_kernels *k, float *x, const float *b, int64_t n_rows, int64_t dim) {
    cu_begin(k);
    float *dx = cu_out(k, 0, x, sizeof(float) * (size_t)(n_rows * dim), 1);
    const float *db = cu_weight(k, b, sizeof(float) * (size_t)dim);
    cu_check(svlm_cu_add_bias_gelu_f16(CU(k)->stream, dx, db, n_rows, dim), "add_bias_gelu_f16");
    cu_done(k, "add_bias_gelu_f16");
}

static void cu_softmax(svlm_kernels *k, float *x, int64_t n_rows, int64_t dim) {
    if (n_rows <= 0 || dim <= 0) return;
    cu_begin(k);
    float *dx = cu_out(k, 0, x, sizeof(float) * (size_t)(n_rows * dim), 1);
    cu_check(svlm_cu_softmax(CU(k)->stream, dx, n_rows, dim), "softmax");
    cu_done(k, "softmax");
}

/* SVLM_CUDA_ARGMAX=0: the rows cross to pageable host memory and the host searches them, as
 * greedy decoding did before the kernel (one copy for all rows; it copied a row per answer).
 * 0 when the host has no room for them (the kernel then does it). */
static int argmax_on_host(svlm_kernels *k, const float *x, int64_t n_rows, int64_t dim, int32_t *ids) {
    cu_ctx *c = CU(k);
    const size_t bytes = sizeof(float) * (size_t)(n_rows * dim) + sizeof(int32_t) * (size_t)n_rows;
    if (bytes > c->argmax_host_cap) {
        float *grown = realloc(c->argmax_host, bytes);
        if (!grown) return 0;
        c->argmax_host = grown;
        c->argmax_host_cap = bytes;
    }
    float *rows = c->argmax_host;
    int32_t *found = (int32_t *)(rows + n_rows * dim);
    cu_check(cudaMemcpyAsync(rows, x, sizeof(float) * (size_t)(n_rows * dim), cudaMemcpyDefault, c->stream),
             "logits to the host");
    cu_check(cudaStreamSynchronize(c->stream), "logits to the host");
    svlm_cpu_argmax(rows, n_rows, dim, found);
    if (!cu_device_view(ids)) { /* plain host memory */
        memcpy(ids, found, sizeof(int32_t) * (size_t)n_rows);
        return 1;
    }
    /* the backend's memory: in its stream's order, done before the op returns */
    cu_check(cudaMemcpyAsync(ids, found, sizeof(int32_t) * (size_t)n_rows, cudaMemcpyDefault, c->stream),
             "greedy ids");
    cu_check(cudaStreamSynchronize(c->stream), "greedy ids");
    return 1;
}

static void cu_argmax(svlm_kernels *k, const float *x, int64_t n_rows, int64_t dim, int32_t *ids) {
    if (!CU(k)->argmax_gpu) {
        if (cu_capturing) { /* a recording would keep the kernel: this op runs again outside it */
            cu_capture_failed = 1;
            return;
        }
        cu_begin(k);
        const int done = argmax_on_host(k, x, n_rows, dim, ids);
        cu_prof_stop(k, "argmax (host)");
        if (done) return;
    }
    cu_begin(k);
    int32_t *di = cu_out(k, 0, ids, sizeof(int32_t) * (size_t)n_rows, 0);
    const float *dx = cu_in(k, 1, x, sizeof(float) * (size_t)(n_rows * dim));
    cu_check(svlm_cu_argmax(CU(k)->stream, dx, n_rows, dim, di), "argmax");
    cu_done(k, "argmax");
}

/* A new stream at the device's greatest priority (high) or its default: the block scheduler
 * takes its kernels' blocks first, so a decode step need not wait behind a batch of frames. */
static void cu_set_priority(svlm_kernels *k, int high) {
    cu_ctx *c = CU(k);
    cu_begin(k);
    int least = 0, greatest = 0;
    cudaStream_t s = NULL;
    if (cudaDeviceGetStreamPriorityRange(&least, &greatest) != cudaSuccess ||
        cudaStreamCreateWithPriority(&s, cudaStreamNonBlocking, high ? greatest : least) != cudaSuccess) {
        (void)cudaGetLastError(); /* the default priority stays: slower answers, same results */
        cu_prof_stop(k, "stream priority (refused)");
        return;
    }
    cu_check(cudaStreamSynchronize(c->stream), "stream priority");
    if (cu_blas()->cublasSetStream(c->blas, s) != CUBLAS_STATUS_SUCCESS) {
        (void)cudaStreamDestroy(s);
        cu_prof_stop(k, "stream priority (refused)");
        return;
    }
    (void)cudaStreamDestroy(c->stream);
    c->stream = s;
    cu_prof_stop(k, "stream priority");
}

static void cu_defer(svlm_kernels *k, int on) {
    cu_ctx *c = CU(k);
    if (on) {
        c->defer++;
    } else if (c->defer > 0 && --c->defer == 0) {
        cu_begin(k);
        cu_check(cudaStreamSynchronize(c->stream), "the end of deferred ops");
        cu_prof_stop(k, "wait: end of deferred ops");
    }
}

static void cu_sync(svlm_kernels *k) {
    cu_begin(k);
    cu_check(cudaStreamSynchronize(CU(k)->stream), "waiting for the GPU");
    cu_prof_stop(k, "wait: svlm_k_sync");
}

static void cu_copy(svlm_kernels *k, void *dst, const void *src, size_t bytes) {
    cu_begin(k);
    int dst_host, src_host;
    (void)device_view_of(dst, &dst_host);
    (void)device_view_of(src, &src_host);
    if (cu_capturing && (dst_host || src_host)) { /* host work is not recorded: the op is issued again */
        cu_capture_failed = 1;
        cu_prof_stop(k, "copy (refused while recording)");
        return;
    }
    if (dst_host && src_host) { /* no op leaves host memory pending: nothing to wait for, */
        /* unless a queued op still reads pinned memory the host is about to write */
        if (CU(k)->defer && device_view(dst)) cu_check(cudaStreamSynchronize(CU(k)->stream), "copy");
        memmove(dst, src, bytes);
        cu_prof_stop(k, "copy host to host");
        return;
    }
    cu_ctx *c = CU(k);
    cu_check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, c->stream), "copy");
    if (dst_host || !c->defer) cu_check(cudaStreamSynchronize(c->stream), "copy");
    cu_prof_stop(k, dst_host   ? "copy to the host (waits)"
                    : src_host ? "copy from the host"
                               : "copy on the GPU");
}

static void cu_store(svlm_kernels *k, void *dst, svlm_dtype dst_type, const float *src, int64_t n) {
    cu_begin(k);
    const size_t elt = dst_type == SVLM_F16 ? 2 : 4;
    const float *ds = cu_in(k, 0, src, sizeof(float) * (size_t)n);
    void *dd = cu_out(k, 1, dst, elt * (size_t)n, 0);
    if (dst_type == SVLM_F16)
        cu_check(svlm_cu_store_f16(CU(k)->stream, dd, ds, n), "store (f16)");
    else
        cu_check(cudaMemcpyAsync(dd, ds, sizeof(float) * (size_t)n, cudaMemcpyDeviceToDevice, CU(k)->stream),
                 "store (f32)");
    cu_done(k, "store");
}

static void cu_load(svlm_kernels *k, float *dst, const void *src, svlm_dtype src_type, int64_t n) {
    cu_begin(k);
    const size_t elt = src_type == SVLM_F16 ? 2 : 4;
    const void *ds = cu_in(k, 0, src, elt * (size_t)n);
    float *dd = cu_out(k, 1, dst, sizeof(float) * (size_t)n, 0);
    if (src_type == SVLM_F16)
        cu_check(svlm_cu_load_f16(CU(k)->stream, dd, ds, n), "load (f16)");
    else
        cu_check(cudaMemcpyAsync(dd, ds, sizeof(float) * (size_t)n, cudaMemcpyDeviceToDevice, CU(k)->stream),
                 "load (f32)");
    cu_done(k, "load");
}

static void cu_round_f16(svlm_kernels *k, float *x, int64_t n) {
    cu_begin(k);
    float *dx = cu_out(k, 0, x, sizeof(float) * (size_t)n, 1);
    cu_check(svlm_cu_round_f16(CU(k)->stream, dx, n), "round_f16");
    cu_done(k, "round_f16");
}

static void cu_gelu_tanh_f16(svlm_kernels *k, float *x, int64_t n) {
    cu_begin(k);
    float *dx = cu_out(k, 0, x, sizeof(float) * (size_t)n, 1);
    cu_check(svlm_cu_gelu_tanh_f16(CU(k)->stream, dx, n), "gelu_tanh_f16");
    cu_done(k, "gelu_tanh_f16");
}

static void cu_im2col(svlm_kernels *k, float *dst, const float *pixels, int b, int S, int p, int round) {
    cu_begin(k);
    const int g = S / p;
    const float *dp = cu_in_bulk(k, 0, pixels, sizeof(float) * (size_t)b * 3 * (size_t)S * (size_t)S);
    float *dd = cu_out(k, 1, dst, sizeof(float) * (size_t)b * (size_t)g * g * 3 * (size_t)p * p, 0);
    cu_check(svlm_cu_im2col(CU(k)->stream, dd, dp, b, S, p, round), "im2col");
    cu_done(k, "im2col");
}

static void cu_gather_rows(svlm_kernels *k, float *dst, const float *src, const int32_t *idx, int64_t n,
                           int64_t dim) {
    cu_begin(k);
    int32_t hi = 0; /* idx is host memory: the extent of src to stage when src is too */
    for (int64_t i = 0; i < n; i++)
        hi = idx[i] > hi ? idx[i] : hi;
    const float *ds = cu_in(k, 0, src, sizeof(float) * (size_t)(hi + 1) * (size_t)dim);
    const int32_t *di = cu_in(k, 1, idx, sizeof(int32_t) * (size_t)n);
    float *dd = cu_out(k, 2, dst, sizeof(float) * (size_t)(n * dim), 0);
    cu_check(svlm_cu_gather_rows(CU(k)->stream, dd, ds, di, n, dim), "gather_rows");
    cu_done(k, "gather_rows");
}

/* Key or value rows of several sequences into their caches: one launch. The destinations must be
 * device-accessible (svlm_k_alloc caches); the table itself may be anywhere. */
static void cu_store_rows(svlm_kernels *k, void *const *dsts, svlm_dtype dst_type, const float *src,
                          int64_t n, int64_t dim) {
    cu_begin(k);
    void *const *dd = cu_in(k, 0, dsts, sizeof(void *) * (size_t)n);
    const float *ds = cu_in(k, 1, src, sizeof(float) * (size_t)(n * dim));
    cu_check(svlm_cu_store_rows(CU(k)->stream, dd, dst_type == SVLM_F16, ds, n, dim), "store_rows");
    cu_done(k, "store_rows");
}

_Static_assert(sizeof(svlm_attn_item) == sizeof(svlm_cu_attn_item) &&
                   offsetof(svlm_attn_item, n_kv) == offsetof(svlm_cu_attn_item, n_kv) &&
                   offsetof(svlm_attn_item, out) == offsetof(svlm_cu_attn_item, out),
               "svlm_attn_item and svlm_cu_attn_item must agree");

/* Decode attentions whose items the kernel reads where they lie (an svlm_k_alloc table), so a
 * recorded decode step reads each step's own lengths. */
static void cu_attention_items(svlm_kernels *k, const svlm_attn_args *shape, const svlm_attn_item *items,
                               int n) {
    cu_begin(k);
    const svlm_cu_attn_item *di = cu_in(k, 0, items, sizeof(svlm_attn_item) * (size_t)n);
    decode_attention(k, shape, di, n);
    cu_done(k, "attention_items (kernel)");
}

/* Managed memory: the decoder's and encoder's host code reads and writes these buffers between
 * ops, and the driver moves the pages to whichever side touches them. */
static void *cu_alloc(svlm_kernels *k, size_t bytes) {
    cu_begin(k);
    size_t rounded = (bytes + 255) / 256 * 256;
    if (rounded < bytes) return NULL;
    /* oversubscribed managed memory thrashes or stalls the GPU, and cuBLAS, graphs and staging
     * still need room: keep a tenth of the device free */
    size_t free_b = 0, total_b = 0;
    if (cudaMemGetInfo(&free_b, &total_b) == cudaSuccess &&
        (rounded > free_b || free_b - rounded < total_b / 10))
        return NULL;
    (void)cudaGetLastError();
    void *p = NULL;
    if (cudaMallocManaged(&p, rounded ? rounded : 256, cudaMemAttachGlobal) != cudaSuccess) {
        (void)cudaGetLastError();
        return NULL;
    }
    /* zeroed by the GPU: the pages start out there, where the ops use them, instead of on the
     * host (a host memset would also make them count in the process's resident memory) */
    if (cudaMemsetAsync(p, 0, rounded ? rounded : 256, CU(k)->stream) != cudaSuccess ||
        cudaStreamSynchronize(CU(k)->stream) != cudaSuccess) {
        (void)cudaGetLastError();
        memset(p, 0, rounded ? rounded : 256);
    }
    (void)cu_ranges_add(p, rounded ? rounded : 256);
    return p;
}

static void cu_free(svlm_kernels *k, void *p) {
    if (!p) return;
    cu_begin(k);
    cu_ranges_remove(p);
    cu_check(cudaFree(p), "cudaFree");
}

/* (no profiling: called from any thread while the lanes run ops) */
static int cu_device_memory(svlm_kernels *k, size_t *used, size_t *total) {
    size_t free_b = 0;
    const int ok =
        cudaSetDevice(CU(k)->device) == cudaSuccess && cudaMemGetInfo(&free_b, total) == cudaSuccess;
    if (!ok) (void)cudaGetLastError();
    *used = ok ? *total - free_b : 0;
    return ok;
}

/* Page-locked host memory: copies to it from the GPU run at the bus's speed. */
static void *cu_alloc_host(svlm_kernels *k, size_t bytes) {
    cu_begin(k);
    void *p = NULL;
    if (cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocPortable) != cudaSuccess) {
        (void)cudaGetLastError();
        p = NULL; /* the caller takes malloc'ed memory instead */
    }
    cu_prof_stop(k, "alloc_host");
    return p;
}

static void cu_free_host(svlm_kernels *k, void *p) {
    cu_begin(k);
    struct cudaPointerAttributes a;
    const int pinned = cudaPointerGetAttributes(&a, p) == cudaSuccess && a.type == cudaMemoryTypeHost;
    (void)cudaGetLastError();
    if (pinned)
        cu_check(cudaFreeHost(p), "cudaFreeHost");
    else
        free(p);
    cu_prof_stop(k, "free_host");
}

static void cu_destroy(svlm_kernels *k) {
    cu_ctx *c = CU(k);
    if (c) {
        cu_prof_report(k);
        (void)cudaSetDevice(c->device);
        if (c->stream) (void)cudaStreamSynchronize(c->stream);
        cu_graphs_free(k);
        cu_decode_layers_free(k);
        cu_lt_free(k);
        cu_dnn_free(k);
        for (int i = 0; i < CU_STAGE_SLOTS; i++)
            if (c->stage[i]) (void)cudaFree(c->stage[i]);
        if (c->scratch) (void)cudaFree(c->scratch);
        if (c->attn_scratch) (void)cudaFree(c->attn_scratch);
        if (c->dec_buf) (void)cudaFree(c->dec_buf);
        free(c->argmax_host);
        if (c->blas) cu_blas()->cublasDestroy(c->blas);
        if (c->stream) (void)cudaStreamDestroy(c->stream);
        free(c);
        cu_weights_release();
    }
    free(k);
}

static const backend_ops cuda_ops = {
    .destroy = cu_destroy,
    .matmul = cu_matmul,
    .matmul_multi = cu_matmul_multi,
    .rmsnorm = cu_rmsnorm,
    .layernorm = cu_layernorm,
    .rope = cu_rope,
    .attention = cu_attention,
    .silu_mul = cu_silu_mul,
    .gelu_tanh = cu_gelu_tanh,
    .add = cu_add,
    .add_bias = cu_add_bias,
    .softmax = cu_softmax,
    .argmax = cu_argmax,
    .alloc = cu_alloc,
    .free = cu_free,
    .forget = cu_weights_forget,
    .defer = cu_defer,
    .sync = cu_sync,
    .copy = cu_copy,
    .store = cu_store,
    .load = cu_load,
    .round_f16 = cu_round_f16,
    .gather_rows = cu_gather_rows,
    .gelu_tanh_f16 = cu_gelu_tanh_f16,
    .attention_multi = cu_attention_multi,
    .store_rows = cu_store_rows,
    .im2col = cu_im2col,
    .rope_store = cu_rope_store,
    .matmul_add = cu_matmul_add,
    .rmsnorm_matmul_multi = cu_rmsnorm_matmul_multi,
    .rmsnorm_swiglu = cu_rmsnorm_swiglu,
    .rmsnorm_qkv_rope_store = cu_rmsnorm_qkv_rope_store,
    .decode_layers = cu_decode_layers,
    .add_bias_gelu_f16 = cu_add_bias_gelu_f16,
    .layernorm_matmul_bias = cu_layernorm_matmul_bias,
    .matmul_bias_add = cu_matmul_bias_add,
    .layernorm_gelu_ffn_add = cu_layernorm_gelu_ffn_add,
    .patch_embed = cu_patch_embed,
    .attention_items = cu_attention_items,
    .kv_shift = cu_kv_shift,
    .alloc_host = cu_alloc_host,
    .free_host = cu_free_host,
    .replay_begin = cu_replay_begin,
    .replay_end = cu_replay_end,
    .replay_forget = cu_replay_forget,
    .set_priority = cu_set_priority,
    .device_memory = cu_device_memory,
};

/* An on/off switch with a required setting: "0" off, "1" required (a decline is an error), else
 * used when it can be. */
static int switch_mode(const char *name) {
    const char *e = getenv(name);
    return e && !strcmp(e, "0") ? CU_SWITCH_OFF : e && !strcmp(e, "1") ? CU_SWITCH_REQUIRED : CU_SWITCH_AUTO;
}

/* cudaGetDeviceCount's answers that mean "no GPU here": no driver or too old a driver (35), no
 * device (100), and the unknown error some containers give without a GPU (999). */
static int means_no_gpu(cudaError_t e) {
    return e == cudaErrorInsufficientDriver || e == cudaErrorNoDevice || e == cudaErrorUnknown;
}

svlm_status svlm_kernels_create_cuda(int device, svlm_kernels **out, svlm_err *err) {
    *out = NULL;
    int count = 0;
    cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess) {
        (void)cudaGetLastError();
        return svlm_fail(err, SVLM_E_UNSUPPORTED, "%s (cudaGetDeviceCount: %s, error %d)",
                         means_no_gpu(e) ? "no NVIDIA GPU or driver on this machine" : "CUDA cannot start",
                         cudaGetErrorString(e), (int)e);
    }
    if (count <= 0) return svlm_fail(err, SVLM_E_UNSUPPORTED, "no NVIDIA GPU on this machine");
    if (device < 0 || device >= count)
        return svlm_fail(err, SVLM_E_INVALID, "GPU %d does not exist: this machine has %d (0 to %d)", device,
                         count, count - 1);
    struct cudaDeviceProp prop;
    if ((e = cudaSetDevice(device)) != cudaSuccess ||
        (e = cudaGetDeviceProperties(&prop, device)) != cudaSuccess)
        return svlm_fail(err, SVLM_E_UNSUPPORTED, "GPU %d: %s", device, cudaGetErrorString(e));
    if (prop.major < 8)
        return svlm_fail(err, SVLM_E_UNSUPPORTED,
                         "GPU %d (%s) is sm_%d%d; svlm's CUDA kernels need sm_80 or newer", device, prop.name,
                         prop.major, prop.minor);
    /* host code touches managed buffers while another lane's kernels run: that needs concurrent
     * managed access (absent on Windows/WSL and some virtualised GPUs) */
    if (!prop.managedMemory || !prop.concurrentManagedAccess)
        return svlm_fail(err, SVLM_E_UNSUPPORTED, "GPU %d (%s) lacks concurrent managed memory access",
                         device, prop.name);
    if (!cu_blas()) return svlm_fail(err, SVLM_E_UNSUPPORTED, "GPU %d: %s", device, cu_blas_error());

    svlm_kernels *k = calloc(1, sizeof *k);
    cu_ctx *c = calloc(1, sizeof *c);
    if (!k || !c) {
        free(k);
        free(c);
        return svlm_fail(err, SVLM_E_NOMEM, "out of memory for the CUDA backend");
    }
    k->ops = &cuda_ops;
    k->dev = c;
    k->n_threads = 1;
    k->is_gpu = 1;
    c->device = device;
    cu_prof_init(k);
    cu_graphs_init(k);
    /* 8: measured on an H100; up to 16 (the engine's decode batch) is there to be measured */
    const char *mr = getenv("SVLM_CUDA_MATVEC_ROWS");
    c->matvec_rows = mr && atoi(mr) >= 1 && atoi(mr) <= SVLM_CU_MATVEC_MAX ? atoi(mr) : 8;
    const char *mq = getenv("SVLM_CUDA_ATTN_GEMM_MIN_Q"); /* tests reach the cuBLAS path with less */
    c->attn_gemm_min_q = mq && atoi(mq) >= 32 ? atoi(mq) : 128;
    const char *fl = getenv("SVLM_CUDA_FLASH"), *fq = getenv("SVLM_CUDA_FLASH_MIN_Q");
    c->attn_flash_min_q = fl && !strcmp(fl, "0") ? INT_MAX : fq && atoi(fq) >= 1 ? atoi(fq) : 16;
    const char *fi = getenv("SVLM_CUDA_FLASH_ITEMS");
    c->flash_items = !(fi && !strcmp(fi, "0"));
    /* the mma.sync form unless SVLM_CUDA_FLASH_MMA=0 asks for the WMMA one (gpu-check compares) */
    const char *fm = getenv("SVLM_CUDA_FLASH_MMA");
    c->flash_mma = !(fm && !strcmp(fm, "0"));
    /* read here, not at first use: a test sets them around creating its backends */
    c->lt_mode = switch_mode("SVLM_CUDA_LT");
    c->dnn_mode = switch_mode("SVLM_CUDA_CUDNN");
    /* the GELU epilogue (H100: the encoder's batches of 32 tiles 1,053 -> 1,237 tiles/s): tried, a
     * decline falls back to the pass ("auto", the default); 1: required, as the tests do; 0: off */
    const char *lg = getenv("SVLM_CUDA_LT_GELU");
    c->lt_gelu = lg && !strcmp(lg, "1")   ? CU_SWITCH_REQUIRED
                 : lg && !strcmp(lg, "0") ? CU_SWITCH_OFF
                                          : CU_SWITCH_AUTO;
    /* the decode kernels' programmatic dependent launch: compute capability 9.0 and newer, with
     * kernels built for it, unless SVLM_CUDA_PDL=0 */
    const char *pd = getenv("SVLM_CUDA_PDL");
    c->pdl = prop.major >= 9 && !(pd && !strcmp(pd, "0")) && svlm_cu_pdl_compiled();
    const char *ef = getenv("SVLM_CUDA_ENCODER_F16");
    c->encoder_f16 = !(ef && !strcmp(ef, "0"));
    const char *qr = getenv("SVLM_CUDA_QKV_ROPE");
    c->qkv_rope = !(qr && !strcmp(qr, "0"));
    const char *am = getenv("SVLM_CUDA_ARGMAX");
    c->argmax_gpu = !(am && !strcmp(am, "0"));
    /* one kernel a decode step: off unless asked for (run 3: 538 against 515 tok/s; docs/cuda.md) */
    const char *pk = getenv("SVLM_CUDA_PERSISTENT");
    c->persistent = pk && !strcmp(pk, "1");
    cu_weights_retain();
    if ((e = cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking)) != cudaSuccess) {
        cu_destroy(k);
        return svlm_fail(err, SVLM_E_UNSUPPORTED, "GPU %d: cannot create a stream: %s", device,
                         cudaGetErrorString(e));
    }
    cublasStatus_t bs = cu_blas()->cublasCreate(&c->blas);
    if (bs == CUBLAS_STATUS_SUCCESS) bs = cu_blas()->cublasSetStream(c->blas, c->stream);
    if (bs != CUBLAS_STATUS_SUCCESS) {
        cu_destroy(k);
        return svlm_fail(err, SVLM_E_UNSUPPORTED, "GPU %d: cuBLAS does not start (status %d)", device,
                         (int)bs);
    }
    snprintf(k->name, sizeof k->name, "cuda:%d %.36s sm_%d%d%s", device, prop.name, prop.major, prop.minor,
             c->pdl ? " pdl" : "");
    *out = k;
    return SVLM_OK;
}
