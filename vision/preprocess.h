/*
 * From a decoded image to encoder input: float32 planar [3][S][S] tiles normalised as
 * (u8/255 - mean[c]) / std[c].
 *
 * Still images follow llama.cpp's idefics3 path (the reference our fixtures come from):
 *   refined size = each side of (original * min(L/w, L/h)) rounded up to a multiple of S
 *                  (in exact arithmetic: llama.cpp's float product can overshoot by a tile);
 *   tiles        = the original resized (bicubic, aspect kept, letterboxed on black) into the
 *                  refined size, cut row-major into S x S;
 *   overview     = the original resized straight to S x S (bilinear, aspect not kept).
 * Output order is prompt order: tiles first, overview last.
 *
 * Video frames follow Hugging Face's SmolVLM2 video processor: longest edge to `frame_edge`
 * (short side truncated, then rounded up to even), then straight to S x S, both with an
 * antialiased bicubic; one tile per frame, no splitting.
 */
#ifndef SVLM_VISION_PREPROCESS_H
#define SVLM_VISION_PREPROCESS_H

#include "vision/image.h"

typedef struct svlm_preproc_params {
    int tile;         /* S: clip.vision.image_size */
    int longest_edge; /* L: clip.vision.preproc_image_size (0: S, i.e. no splitting) */
    float mean[3], std[3];
} svlm_preproc_params;

typedef struct svlm_tiles {
    int n_tiles;    /* rows * cols + 1 (the overview) */
    int rows, cols; /* grid, >= 1 each: like llama.cpp, even a one-tile image gets an overview */
    int size;       /* S */
    float *pixels;  /* [n_tiles][3][S][S]; free with svlm_tiles_free */
} svlm_tiles;

/* The llama.cpp grid for a w x h image: refined size and rows/cols (before any resampling). */
void svlm_preproc_grid(const svlm_preproc_params *p, int w, int h, int *refined_w, int *refined_h);

svlm_status svlm_preprocess_image(const svlm_image *img, const svlm_preproc_params *p, svlm_tiles *out,
                                  svlm_err *err);
/* One video frame into out[3][S][S]. frame_edge: the video longest edge (SmolVLM2's video_size: the
 * tile, 512, or 384 for 2.2B). */
svlm_status svlm_preprocess_frame(const svlm_image *img, const svlm_preproc_params *p, int frame_edge,
                                  float *out, svlm_err *err);
/* Normalises an S x S image into out[3][S][S]. */
void svlm_preproc_normalize(const svlm_image *tile, const svlm_preproc_params *p, float *out);
void svlm_tiles_free(svlm_tiles *t);

#endif
