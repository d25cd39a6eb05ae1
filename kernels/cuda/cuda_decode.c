/*
 * svlm_k_decode_layers on the GPU: every layer of a one-row decode step in one cooperative launch
 * of the persistent kernel (cuda_decode_layers.cu), when SVLM_CUDA_PERSISTENT=1 and the step fits
 * it; otherwise the caller's ops run as before.
 *
 * The kernel reads each layer's weights, norms and tables from a device table of layers. A table's
 * contents never change once made: tables are kept by what they are made of (the step's layer
 * arguments and the weights' generation; a few, the least recently used dropped, which makes the
 * recordings again), so a recorded step that holds one's address always finds the same layers
 * there. Every step touches its table, replayed ones too (the check runs for them).
 *
 * Where the kernel cannot run after all (no memory for a table, a cooperative launch refused), the
 * step's ops run one by one through the backend's own ops: a step accepted is never lost.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_internal.h"
#include "kernels/cuda/cuda_ops.h"

enum { LAYER_TABS = 16 };

typedef struct layer_tab {
    uint64_t key, last_use;
    unsigned weights_gen;
    int n_layer;
    const void **made_of; /* the host arguments it was made from: 12 pointers a layer */
    svlm_cu_decode_layer *dev;
} layer_tab;

struct cu_layer_tabs {
    layer_tab tab[LAYER_TABS];
    uint64_t clock;
};

void cu_decode_layers_free(svlm_kernels *k) {
    struct cu_layer_tabs *t = CU(k)->layer_tabs;
    if (!t) return;
    for (int i = 0; i < LAYER_TABS; i++) {
        if (t->tab[i].dev) (void)cudaFree(t->tab[i].dev);
        free(t->tab[i].made_of);
    }
    free(t);
    CU(k)->layer_tabs = NULL;
}

/* Blocks per launch: as many as the device holds at once, or SVLM_CUDA_PERSISTENT_SM_BLOCKS a
 * multiprocessor (fewer blocks, cheaper barriers; for gpu-check's comparison). -1: none fit. */
static int launch_blocks(int type, int kv_f16, int64_t n_embd) {
    const int most = svlm_cu_decode_layers_max_blocks(type, kv_f16, n_embd);
    if (most <= 0) return -1;
    const char *e = getenv("SVLM_CUDA_PERSISTENT_SM_BLOCKS");
    int dev = 0, sms = 0;
    if (e && atoi(e) > 0 && cudaGetDevice(&dev) == cudaSuccess &&
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) == cudaSuccess && sms > 0) {
        const long want = (long)atoi(e) * sms;
        return want < most ? (int)want : most;
    }
    (void)cudaGetLastError();
    return most;
}

static int dev_ptr(const void *p) {
    return p && cu_ranges_contain(p);
}

static int weight_is(const svlm_weight *w, int type, int64_t rows, int64_t cols) {
    return w && (int)w->type == type && w->rows == rows && w->cols == cols && w->data;
}

/* Whether the step fits the kernel: one weight type it is built for, the shapes of a Llama layer
 * (q/k/v and gate/up alike), RoPE's normal form, an f32 or f16 cache, and every buffer and table
 * the kernel reads on the device. */
static int step_fits(svlm_kernels *k, const svlm_decode_layers_args *a) {
    cu_ctx *c = CU(k);
    if (!c->persistent || !c->qkv_rope || c->matvec_rows < 1 || a->n_layer <= 0) return 0;
    const svlm_rope_store_args *r = &a->rope;
    const svlm_attn_args *s = &a->attn;
    const svlm_decode_layer *L0 = &a->layers[0];
    if (!L0->wq || !L0->w_gate) return 0;
    const int type = (int)L0->wq->type;
    const int64_t E = L0->wq->cols, hd = r->head_dim, F = L0->w_gate->rows;
    const int64_t qr = (int64_t)r->n_head * hd, kvr = (int64_t)r->n_kv_head * hd;
    if (!svlm_cu_decode_layers_type(type) || r->neox || hd <= 0 || hd % 2 || hd > 256 || r->n_rot < 0 ||
        r->n_rot % 2 || r->n_rot > hd || r->n_kv_head <= 0 || r->n_head % r->n_kv_head ||
        (r->kv_type != SVLM_F32 && r->kv_type != SVLM_F16) || s->kv_type != r->kv_type ||
        s->n_head != r->n_head || s->n_kv_head != r->n_kv_head || s->head_dim != hd || s->kv_stride != kvr ||
        !svlm_cu_norm_fits(E, 1) || E % 32 || F % 32 || qr % 32)
        return 0;
    if (!dev_ptr(a->x) || !dev_ptr(a->q) || !dev_ptr(a->att) || !dev_ptr(a->gate) || !dev_ptr(r->pos))
        return 0;
    for (int l = 0; l < a->n_layer; l++) {
        const svlm_decode_layer *L = &a->layers[l];
        if (!weight_is(L->wq, type, qr, E) || !weight_is(L->wk, type, kvr, E) ||
            !weight_is(L->wv, type, kvr, E) || !weight_is(L->wo, type, E, qr) ||
            !weight_is(L->w_gate, type, F, E) || !weight_is(L->w_up, type, F, E) ||
            !weight_is(L->w_down, type, E, F) || L->wq->row_bytes != L0->wq->row_bytes ||
            L->wk->row_bytes != L0->wq->row_bytes || L->wv->row_bytes != L0->wq->row_bytes ||
            L->wo->row_bytes != L0->wo->row_bytes || L->w_gate->row_bytes != L0->w_gate->row_bytes ||
            L->w_up->row_bytes != L0->w_gate->row_bytes || L->w_down->row_bytes != L0->w_down->row_bytes ||
            !L->attn_norm || !L->ffn_norm || !dev_ptr(L->dsts) || !dev_ptr(L->att) ||
            (L->keep && !dev_ptr(L->keep)))
            return 0;
    }
    const int f16 = r->kv_type == SVLM_F16;
    if (c->persistent_for[f16] != E) { /* (a backend may serve models of other widths) */
        c->persistent_for[f16] = E;
        c->persistent_blocks[f16] =
            cudaSetDevice(c->device) == cudaSuccess ? launch_blocks(type, f16, E) : -1;
    }
    return c->persistent_blocks[f16] > 0;
}

enum { MADE_OF = 12 }; /* pointers a layer's table entry is made from */

static void layer_made_of(const svlm_decode_layer *L, const void **p) {
    const void *q[MADE_OF] = {L->wq->data,     L->wk->data,     L->wv->data,     L->wo->data,
                              L->w_gate->data, L->w_up->data,   L->w_down->data, L->attn_norm,
                              L->ffn_norm,     (void *)L->dsts, L->att,          L->keep};
    memcpy(p, q, sizeof q);
}

static uint64_t made_of_key(const svlm_decode_layers_args *a) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a over the pointers */
    for (int l = 0; l < a->n_layer; l++) {
        const void *p[MADE_OF];
        layer_made_of(&a->layers[l], p);
        for (int i = 0; i < MADE_OF; i++) {
            uintptr_t v = (uintptr_t)p[i];
            for (size_t b = 0; b < sizeof v; b++, v >>= 8)
                h = (h ^ (v & 255)) * 1099511628211ull;
        }
    }
    return h;
}

/* The kept table made from these arguments (touched), or NULL. */
static layer_tab *find_table(cu_ctx *c, const svlm_decode_layers_args *a) {
    struct cu_layer_tabs *t = c->layer_tabs;
    if (!t) return NULL;
    const uint64_t key = made_of_key(a);
    const unsigned gen = cu_weights_generation();
    for (int i = 0; i < LAYER_TABS; i++) {
        layer_tab *e = &t->tab[i];
        if (!e->dev || e->key != key || e->n_layer != a->n_layer || e->weights_gen != gen) continue;
        int same = 1;
        for (int l = 0; l < a->n_layer && same; l++) {
            const void *p[MADE_OF];
            layer_made_of(&a->layers[l], p);
            same = !memcmp(p, e->made_of + (size_t)l * MADE_OF, sizeof p);
        }
        if (same) {
            e->last_use = ++t->clock;
            return e;
        }
    }
    return NULL;
}

/* The device table of the step's layers: a kept one, or one made now (outside a recording: inside,
 * the capture is marked failed and NULL returned); NULL also when out of memory. */
static const svlm_cu_decode_layer *layer_table(svlm_kernels *k, const svlm_decode_layers_args *a) {
    cu_ctx *c = CU(k);
    const layer_tab *kept = find_table(c, a);
    if (kept) return kept->dev;
    if (cu_capturing) { /* weights may need uploading, the table copying in: outside recordings */
        cu_capture_failed = 1;
        return NULL;
    }
    const int n = a->n_layer;
    svlm_cu_decode_layer *host = calloc((size_t)n, sizeof *host);
    const void **made_of = calloc((size_t)n * MADE_OF, sizeof *made_of);
    if (!c->layer_tabs) c->layer_tabs = calloc(1, sizeof *c->layer_tabs);
    if (!host || !made_of || !c->layer_tabs) {
        free(host);
        free(made_of);
        return NULL;
    }
    for (int l = 0; l < n; l++) {
        const svlm_decode_layer *L = &a->layers[l];
        const size_t qkv = (size_t)L->wq->row_bytes, E = (size_t)L->wq->cols;
        host[l] = (svlm_cu_decode_layer){
            .wq = cu_weight(k, L->wq->data, qkv * (size_t)L->wq->rows),
            .wk = cu_weight(k, L->wk->data, qkv * (size_t)L->wk->rows),
            .wv = cu_weight(k, L->wv->data, qkv * (size_t)L->wv->rows),
            .wo = cu_weight(k, L->wo->data, L->wo->row_bytes * (size_t)L->wo->rows),
            .wg = cu_weight(k, L->w_gate->data, L->w_gate->row_bytes * (size_t)L->w_gate->rows),
            .wu = cu_weight(k, L->w_up->data, L->w_up->row_bytes * (size_t)L->w_up->rows),
            .wd = cu_weight(k, L->w_down->data, L->w_down->row_bytes * (size_t)L->w_down->rows),
            .attn_norm = cu_weight(k, L->attn_norm, sizeof(float) * E),
            .ffn_norm = cu_weight(k, L->ffn_norm, sizeof(float) * E),
            .dsts = L->dsts,
            .att = (const svlm_cu_attn_item *)L->att,
            .keep = L->keep};
        layer_made_of(L, made_of + (size_t)l * MADE_OF);
    }
    struct cu_layer_tabs *t = c->layer_tabs;
    layer_tab *lru = &t->tab[0];
    for (int i = 1; i < LAYER_TABS; i++)
        if (t->tab[i].last_use < lru->last_use) lru = &t->tab[i];
    if (lru->dev) { /* a step queued or recorded may still read it */
        cu_check(cudaStreamSynchronize(c->stream), "decode layers (a table dropped)");
        cu_check(cudaFree(lru->dev), "cudaFree(decode layers table)");
        c->buf_gen++;
    }
    free(lru->made_of);
    memset(lru, 0, sizeof *lru);
    if (cudaMalloc((void **)&lru->dev, sizeof *host * (size_t)n) != cudaSuccess) {
        (void)cudaGetLastError();
        lru->dev = NULL;
        free(host);
        free(made_of);
        return NULL;
    }
    /* on the stream, ahead of the launch that reads it (a plain copy would go on the legacy stream,
     * which the backend's non-blocking stream does not wait for); host lives until it is done */
    cu_check(cudaMemcpyAsync(lru->dev, host, sizeof *host * (size_t)n, cudaMemcpyHostToDevice, c->stream),
             "decode layers table");
    cu_check(cudaStreamSynchronize(c->stream), "decode layers table");
    free(host);
    lru->made_of = made_of;
    lru->key = made_of_key(a);
    lru->weights_gen = cu_weights_generation();
    lru->n_layer = n;
    lru->last_use = ++t->clock;
    return lru->dev;
}

/* The step's ops one by one, through the backend's own ops (the same as the caller would issue;
 * not noted again for replay: this op was). */
static void run_separately(svlm_kernels *k, const svlm_decode_layers_args *a) {
    for (int l = 0; l < a->n_layer; l++) {
        const svlm_decode_layer *L = &a->layers[l];
        const svlm_weight *ws[3] = {L->wq, L->wk, L->wv};
        svlm_rope_store_args r = a->rope;
        r.dsts = L->dsts;
        r.keep = L->keep;
        cu_rmsnorm_qkv_rope_store(k, a->x, L->attn_norm, a->eps, a->h, ws, 1, a->q, a->kx, a->vx, &r);
        k->ops->attention_items(k, &a->attn, L->att, 1);
        cu_matmul_add(k, L->wo, a->att, 1, a->x);
        cu_rmsnorm_swiglu(k, a->x, L->ffn_norm, a->eps, a->h, L->w_gate, L->w_up, 1, a->gate, a->up);
        cu_matmul_add(k, L->w_down, a->gate, 1, a->x);
    }
}

/* Whether the kernel prefetches its later phases' weight rows (SVLM_CUDA_PERSISTENT_PREFETCH=0:
 * not; for gpu-check's comparison). Read once a process. */
static int prefetch_on(void) {
    static int on = -1;
    if (on < 0) {
        const char *e = getenv("SVLM_CUDA_PERSISTENT_PREFETCH");
        on = !(e && !strcmp(e, "0"));
    }
    return on;
}

int cu_decode_layers(svlm_kernels *k, const svlm_decode_layers_args *a, int check) {
    if (!step_fits(k, a)) return 0;
    cu_ctx *c = CU(k);
    if (check) {
        (void)find_table(c, a); /* a replayed step's table is in use too */
        return 1;
    }
    cu_begin(k);
    const svlm_rope_store_args *r = &a->rope;
    const svlm_decode_layer *L0 = &a->layers[0];
    int splits;
    float *part;
    unsigned *done;
    const svlm_cu_decode_layer *tab = layer_table(k, a);
    if (cu_capturing && (!tab || !cu_decode_partials(k, 1, r->n_head, r->head_dim, &splits, &part, &done))) {
        cu_done(k, "decode layers (the capture is made again)");
        return 1;
    }
    if (!tab || (!cu_capturing && !cu_decode_partials(k, 1, r->n_head, r->head_dim, &splits, &part, &done))) {
        cu_done(k, "decode layers (no table: one op at a time)");
        run_separately(k, a);
        return 1;
    }
    const int f16 = r->kv_type == SVLM_F16;
    const svlm_cu_decode_step st = {
        .layers = tab,
        .n_layer = a->n_layer,
        .type = (int)L0->wq->type,
        .qkv_row_bytes = L0->wq->row_bytes,
        .o_row_bytes = L0->wo->row_bytes,
        .ffn_row_bytes = L0->w_gate->row_bytes,
        .down_row_bytes = L0->w_down->row_bytes,
        .n_embd = L0->wq->cols,
        .q_rows = L0->wq->rows,
        .kv_rows = L0->wk->rows,
        .n_ff = L0->w_gate->rows,
        .x = a->x,
        .q = a->q,
        .att = a->att,
        .gate = a->gate,
        .pos = r->pos,
        .eps = a->eps,
        /* the same float theta_scale as cu_rmsnorm_qkv_rope_store */
        .theta_scale = r->n_rot > 0 ? powf(r->base, -2.0f / (float)r->n_rot) : 1.0f,
        .scale = a->attn.scale,
        .n_rot = r->n_rot,
        .round = r->round,
        .kv_f16 = f16,
        .n_head = r->n_head,
        .n_kv_head = r->n_kv_head,
        .head_dim = r->head_dim,
        .kv_stride = a->attn.kv_stride,
        .splits = splits,
        .part = part,
        .done = done,
        .prefetch = prefetch_on(),
    };
    const int e = svlm_cu_decode_layers(c->stream, &st, c->persistent_blocks[f16]);
    if (e && !cu_capturing) { /* refused (a cooperative launch too large for what is free here) */
        fprintf(stderr, "svlm: CUDA: one kernel a decode step refused (%s): the steps go op by op\n",
                cudaGetErrorString((cudaError_t)e));
        (void)cudaGetLastError();
        c->persistent_blocks[f16] = -1;
        cu_done(k, "decode layers (refused)");
        run_separately(k, a);
        return 1;
    }
    cu_check(e, "decode layers (one kernel)");
    cu_done(k, "decode layers (one kernel)");
    return 1;
}
