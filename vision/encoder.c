/* The vision context: scratch allocation, batching, and the encoder benchmark. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/checked.h"
#include "common/err.h"
#include "vision/encoder_internal.h"

static float *scratch(svlm_vision_ctx *c, size_t rows, size_t cols, int *ok) {
    size_t n, bytes;
    if (!svlm_mul_size(rows, cols, &n) || !svlm_mul_size(n, sizeof(float), &bytes)) {
        *ok = 0;
        return NULL;
    }
    float *p = svlm_k_alloc(c->k, bytes);
    if (!p) *ok = 0;
    return p;
}

svlm_status svlm_vision_ctx_create(const svlm_mmproj *m, svlm_kernels *k, int max_batch,
                                   svlm_vision_ctx **out, svlm_err *err) {
    *out = NULL;
    if (!m || !k || max_batch < 1 || max_batch > SVLM_VISION_MAX_BATCH)
        return svlm_fail(err, SVLM_E_INVALID, "vision context: batch size %d is outside 1..%d", max_batch,
                         SVLM_VISION_MAX_BATCH);
    svlm_vision_ctx *c = calloc(1, sizeof *c);
    if (!c) return svlm_fail(err, SVLM_E_NOMEM, "vision context: out of memory");
    c->m = m;
    c->k = k;
    c->max_batch = max_batch;
    const svlm_mmproj_hparams *hp = &m->hp;
    size_t tokens = (size_t)max_batch * (size_t)hp->n_patches, D = (size_t)hp->n_embd;
    size_t im2col = (size_t)3 * hp->patch_size * hp->patch_size,
           s2 = (size_t)hp->scale_factor * hp->scale_factor;
    size_t out_rows = (size_t)max_batch * (size_t)hp->tokens_per_tile;
    int ok = 1;
    c->x = scratch(c, tokens, D, &ok);
    c->h = scratch(c, tokens, D > im2col ? D : im2col, &ok);
    c->q = scratch(c, tokens, D, &ok);
    c->kk = scratch(c, tokens, D, &ok);
    c->v = scratch(c, tokens, D, &ok);
    c->attn = scratch(c, tokens, D, &ok);
    c->ff = scratch(c, tokens, (size_t)hp->n_ff, &ok);
    c->shuf = scratch(c, out_rows, D * s2, &ok);
    c->proj = scratch(c, out_rows, (size_t)hp->proj_dim, &ok);
    size_t patch_floats = 0;
    /* (also the rows of positions svlm_siglip_embed_rows adds: D wide) */
    ok = ok && svlm_mul_size(tokens, im2col > D ? im2col : D, &patch_floats) &&
         (c->patches = malloc(sizeof(float) * patch_floats)) != NULL &&
         (c->shuffle = malloc(sizeof(int32_t) * out_rows * s2)) != NULL;
    if (ok) svlm_connector_shuffle_rows(hp, max_batch, c->shuffle);
    if (ok) {
        const svlm_weight *w = &m->patch;
        size_t n = (size_t)w->rows * (size_t)w->cols;
        float *row = malloc(sizeof(float) * (size_t)w->cols);
        c->patch16_data = malloc(sizeof(svlm_f16) * n);
        ok = row && c->patch16_data;
        for (int64_t r = 0; ok && r < w->rows; r++) {
            ok =
                !svlm_dequantize_row(w->type, (const char *)w->data + (size_t)r * w->row_bytes, row, w->cols);
            for (int64_t i = 0; ok && i < w->cols; i++)
                c->patch16_data[(size_t)r * w->cols + i] = svlm_f32_to_f16(row[i]);
        }
        free(row);
        c->patch16 =
            (svlm_weight){SVLM_F16, w->rows, w->cols, c->patch16_data, sizeof(svlm_f16) * (size_t)w->cols};
    }
    if (!ok) {
        svlm_vision_ctx_free(c);
        return svlm_fail(err, SVLM_E_NOMEM, "vision context: out of memory for %d tiles of scratch",
                         max_batch);
    }
    *out = c;
    return SVLM_OK;
}

void svlm_vision_ctx_free(svlm_vision_ctx *c) {
    if (!c) return;
    float *bufs[] = {c->x, c->h, c->q, c->kk, c->v, c->attn, c->ff, c->shuf, c->proj};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) svlm_k_free(c->k, bufs[i]);
    svlm_k_forget(c->k, c->patch16_data); /* a device backend holds a copy */
    free(c->patch16_data);
    free(c->patches);
    free(c->shuffle);
    svlm_k_free_host(c->k, c->stage);
    if (c->rows_k) svlm_k_free(c->k, c->rows_k);
    free(c->rows_host);
    free(c);
}

void svlm_vision_set_trace(svlm_vision_ctx *c, svlm_vision_trace_fn fn, void *user) {
    c->trace = fn;
    c->trace_user = user;
}

svlm_status svlm_vision_encode(svlm_vision_ctx *c, const float *pixels, int n, float *out, svlm_err *err) {
    if (!c || (n > 0 && (!pixels || !out)) || n < 0)
        return svlm_fail(err, SVLM_E_INVALID, "vision encode: bad arguments");
    const svlm_mmproj_hparams *hp = &c->m->hp;
    size_t tile = (size_t)3 * hp->image_size * hp->image_size;
    size_t emb = (size_t)hp->tokens_per_tile * (size_t)hp->proj_dim;
    svlm_k_defer(c->k, 1); /* the host reaches the scratch only through svlm_k_copy */
    for (int done = 0; done < n;) {
        int b = n - done < c->max_batch ? n - done : c->max_batch;
        svlm_siglip_forward(c, pixels + (size_t)done * tile, b);
        svlm_connector_forward(c, b);
        svlm_k_copy(c->k, out + (size_t)done * emb, c->proj, sizeof(float) * emb * (size_t)b);
        done += b;
    }
    svlm_k_defer(c->k, 0);
    return SVLM_OK;
}

/* ---- benchmark -------------------------------------------------------------------------- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Best wall time of `iters` encodes of b tiles, after one warm-up. */
static svlm_status time_batch(const svlm_mmproj *m, svlm_kernels *k, int b, int iters, const float *px,
                              float *emb, double *best, svlm_err *err) {
    svlm_vision_ctx *c;
    svlm_status st = svlm_vision_ctx_create(m, k, b, &c, err);
    if (st) return st;
    *best = INFINITY;
    for (int it = 0; it <= iters && !st; it++) {
        double t0 = now_s();
        st = svlm_vision_encode(c, px, b, emb, err);
        double dt = now_s() - t0;
        if (it > 0 && dt < *best) *best = dt;
    }
    svlm_vision_ctx_free(c);
    return st;
}

svlm_status svlm_vision_bench(const svlm_mmproj *m, svlm_kernels *k, int batch, int iters,
                              svlm_vision_bench_result *r, svlm_err *err) {
    memset(r, 0, sizeof *r);
    if (batch < 1 || batch > 64 || iters < 1 || iters > 1000)
        return svlm_fail(err, SVLM_E_INVALID, "vision bench: batch 1..64 and iterations 1..1000");
    const svlm_mmproj_hparams *hp = &m->hp;
    size_t tile = (size_t)3 * hp->image_size * hp->image_size;
    size_t emb = (size_t)hp->tokens_per_tile * (size_t)hp->proj_dim;
    /* page-locked on a GPU, as the engine's batches are */
    float *px = svlm_k_alloc_host(k, sizeof(float) * tile * (size_t)batch),
          *out = svlm_k_alloc_host(k, sizeof(float) * emb * (size_t)batch);
    if (!px || !out) {
        svlm_k_free_host(k, px);
        svlm_k_free_host(k, out);
        return svlm_fail(err, SVLM_E_NOMEM, "vision bench: out of memory");
    }
    uint32_t s = 12345u; /* deterministic pixels in [-1, 1) */
    for (size_t i = 0; i < tile * (size_t)batch; i++) {
        s = s * 1664525u + 1013904223u;
        px[i] = (float)(s >> 8) / 8388608.0f - 1.0f;
    }
    double t1, tb;
    svlm_status st = time_batch(m, k, 1, iters, px, out, &t1, err);
    if (!st) st = time_batch(m, k, batch, iters, px, out, &tb, err);
    svlm_k_free_host(k, px);
    svlm_k_free_host(k, out);
    if (st) return st;
    r->batch = batch;
    r->tokens_per_tile = hp->tokens_per_tile;
    r->image_size = hp->image_size;
    r->ms_per_tile_b1 = t1 * 1e3;
    r->ms_per_tile_batched = tb * 1e3 / batch;
    r->tiles_per_s_b1 = 1.0 / t1;
    r->tiles_per_s_batched = batch / tb;
    return SVLM_OK;
}
