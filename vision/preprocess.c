/* Tiling and normalisation; see preprocess.h for the two paths and whose rules they follow. */
#include "vision/preprocess.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "vision/resize.h"

void svlm_preproc_normalize(const svlm_image *tile, const svlm_preproc_params *p, float *out) {
    size_t plane = (size_t)tile->w * (size_t)tile->h;
    /* a byte has 256 values: each one's result once per channel (the same float operations) */
    float lut[3][256];
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++)
            lut[c][v] = ((float)v / 255.0f - p->mean[c]) / p->std[c];
    for (int c = 0; c < 3; c++)
        for (size_t i = 0; i < plane; i++)
            out[(size_t)c * plane + i] = lut[c][tile->rgb[i * 3 + (size_t)c]];
}

/* ceil(side * L / longest / S) * S in integers. llama.cpp forms side * (L / longest) in float,
 * which can land an ulp above a multiple of S (3000 * (1536 / 3000) = 1536.0001) and so add a
 * whole row or column of tiles that HF never makes (5 x 3 for 3000 x 2000 on 2.2B instead of
 * 4 x 3); exact arithmetic gives llama.cpp's grid everywhere else. */
static int refined_side(long long side, long long longest, long long L, long long S) {
    return (int)((side * L + longest * S - 1) / (longest * S) * S);
}

void svlm_preproc_grid(const svlm_preproc_params *p, int w, int h, int *refined_w, int *refined_h) {
    long long L = p->longest_edge > 0 ? p->longest_edge : p->tile, S = p->tile, longest = w > h ? w : h;
    *refined_w = refined_side(w, longest, L, S);
    *refined_h = refined_side(h, longest, L, S);
}

static svlm_status check_params(const svlm_preproc_params *p, svlm_err *err) {
    if (p->tile < 1 || p->tile > 4096 || p->longest_edge < 0 || p->longest_edge > 16384)
        return svlm_fail(err, SVLM_E_INVALID, "tile size %d / longest edge %d out of range", p->tile,
                         p->longest_edge);
    for (int c = 0; c < 3; c++)
        if (!(p->std[c] != 0.0f) || !isfinite(p->std[c]) || !isfinite(p->mean[c]))
            return svlm_fail(err, SVLM_E_INVALID, "image_std/image_mean channel %d is unusable", c);
    return SVLM_OK;
}

svlm_status svlm_preprocess_image(const svlm_image *img, const svlm_preproc_params *p, svlm_tiles *out,
                                  svlm_err *err) {
    memset(out, 0, sizeof *out);
    svlm_status st = check_params(p, err);
    if (st) return st;
    int S = p->tile, rw, rh;
    svlm_preproc_grid(p, img->w, img->h, &rw, &rh);
    int cols = rw / S, rows = rh / S;
    if (rows < 1 || cols < 1 || rows * cols > 64)
        return svlm_fail(err, SVLM_E_LIMIT, "image %dx%d gives a %dx%d tile grid (1..64 tiles allowed)",
                         img->w, img->h, cols, rows);
    size_t tile_floats = (size_t)3 * S * S;
    out->n_tiles = rows * cols + 1;
    out->rows = rows;
    out->cols = cols;
    out->size = S;
    out->pixels = malloc(sizeof(float) * tile_floats * (size_t)out->n_tiles);
    if (!out->pixels) return svlm_fail(err, SVLM_E_NOMEM, "out of memory for %d tiles", out->n_tiles);
    svlm_image refined = {0}, tile = {0}, overview = {0};
    st = svlm_resize_bicubic_letterbox_llama(img, rw, rh, &refined, err);
    if (!st) st = svlm_image_alloc(&tile, S, S, err);
    if (!st) st = svlm_resize_bilinear_llama(img, S, S, &overview, err);
    if (!st) {
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) {
                for (int y = 0; y < S; y++)
                    memcpy(tile.rgb + (size_t)y * S * 3,
                           refined.rgb + ((size_t)(r * S + y) * rw + (size_t)c * S) * 3, (size_t)S * 3);
                svlm_preproc_normalize(&tile, p, out->pixels + tile_floats * (size_t)(r * cols + c));
            }
        svlm_preproc_normalize(&overview, p, out->pixels + tile_floats * (size_t)(rows * cols));
    }
    svlm_image_free(&refined);
    svlm_image_free(&tile);
    svlm_image_free(&overview);
    if (st) svlm_tiles_free(out);
    return st;
}

svlm_status svlm_preprocess_frame(const svlm_image *img, const svlm_preproc_params *p, int frame_edge,
                                  float *out, svlm_err *err) {
    svlm_status st = check_params(p, err);
    if (st) return st;
    if (frame_edge < 1 || frame_edge > 16384)
        return svlm_fail(err, SVLM_E_INVALID, "frame edge %d out of range", frame_edge);
    /* Hugging Face's rule: longest edge to frame_edge, the other side truncated then made even. */
    int w, h;
    if (img->w >= img->h) {
        w = frame_edge;
        h = (int)((double)frame_edge / ((double)img->w / img->h));
        h += h & 1;
    } else {
        h = frame_edge;
        w = (int)((double)frame_edge * ((double)img->w / img->h));
        w += w & 1;
    }
    w = w < 1 ? 1 : w;
    h = h < 1 ? 1 : h;
    svlm_image mid = {0}, sq = {0};
    st = svlm_resize_bicubic_aa(img, w, h, &mid, err);
    if (!st) st = svlm_resize_bicubic_aa(&mid, p->tile, p->tile, &sq, err);
    if (!st) svlm_preproc_normalize(&sq, p, out);
    svlm_image_free(&mid);
    svlm_image_free(&sq);
    return st;
}

void svlm_tiles_free(svlm_tiles *t) {
    if (!t) return;
    free(t->pixels);
    memset(t, 0, sizeof *t);
}
