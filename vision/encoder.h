/*
 * The vision encoder: SigLIP ViT (siglip.c) then pixel shuffle + projection (connector.c),
 * batched over tiles. All arithmetic goes through kernels/kernels.h: the big matrix products
 * run once over every token of every tile in a batch; attention runs per tile.
 *
 * DESIGN: a context owns scratch for `max_batch` tiles, allocated once at creation; encode
 * splits larger requests into batches. One context is used by one thread at a time.
 */
#ifndef SVLM_VISION_ENCODER_H
#define SVLM_VISION_ENCODER_H

#include "kernels/kernels.h"
#include "vision/mmproj.h"

typedef struct svlm_vision_ctx svlm_vision_ctx;

/* Called with named intermediates (tests use it to localise mismatches): `data` holds
 * n_rows rows of `dim` floats for the whole batch (tiles one after the other). layer is -1
 * outside the transformer blocks. */
typedef void (*svlm_vision_trace_fn)(void *user, const char *name, int layer, const float *data,
                                     int64_t n_rows, int64_t dim);

svlm_status svlm_vision_ctx_create(const svlm_mmproj *m, svlm_kernels *k, int max_batch,
                                   svlm_vision_ctx **out, svlm_err *err);
void svlm_vision_ctx_free(svlm_vision_ctx *c);
void svlm_vision_set_trace(svlm_vision_ctx *c, svlm_vision_trace_fn fn, void *user);

/* pixels: [n][3][S][S] normalised tiles; out: [n][tokens_per_tile][proj_dim]. */
svlm_status svlm_vision_encode(svlm_vision_ctx *c, const float *pixels, int n, float *out, svlm_err *err);

/* Internal steps (one batch of b tiles; buffers from the context). */
void svlm_siglip_forward(svlm_vision_ctx *c, const float *pixels, int b);
void svlm_connector_forward(svlm_vision_ctx *c, int b); /* into c->proj */

/* Encoder timing for `svlm bench`: ms per tile when encoding one tile at a time and when
 * encoding `batch` tiles per call (random pixels; best of `iters` runs after a warm-up). */
typedef struct svlm_vision_bench_result {
    double ms_per_tile_b1, ms_per_tile_batched;
    double tiles_per_s_b1, tiles_per_s_batched;
    int batch, tokens_per_tile, image_size;
} svlm_vision_bench_result;
svlm_status svlm_vision_bench(const svlm_mmproj *m, svlm_kernels *k, int batch, int iters,
                              svlm_vision_bench_result *r, svlm_err *err);

#endif
