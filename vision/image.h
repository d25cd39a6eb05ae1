/*
 * Decoded still images: 8-bit RGB, row-major, no padding (pixel (x, y) channel c at
 * rgb[(y * w + x) * 3 + c]).
 *
 * The core library decodes PNG (with zlib) and binary PPM/PGM itself, so `svlm describe` works
 * on machines without FFmpeg. Everything else (JPEG, WebP, BMP, interlaced PNG, ...) goes to an
 * optional decoder the caller passes in: pipeline/ffmpeg/image_ffmpeg.c provides one when svlm
 * is built with FFmpeg (SVLM_HAVE_FFMPEG). Alpha is dropped, not composited, as llama.cpp does.
 */
#ifndef SVLM_VISION_IMAGE_H
#define SVLM_VISION_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "svlm.h"

typedef struct svlm_image {
    int w, h;
    uint8_t *rgb; /* [h][w][3], malloc'ed; free with svlm_image_free */
} svlm_image;

/* A decoder for formats the core does not handle. Fills *out (rgb malloc'ed) or fails with
 * a clear message; SVLM_E_UNSUPPORTED means "not a format I know". */
typedef svlm_status (*svlm_image_decoder)(const char *path, svlm_image *out, svlm_err *err);

/* Largest side and pixel count accepted from any decoder (protects against bombs). */
#define SVLM_IMAGE_MAX_SIDE   16384
#define SVLM_IMAGE_MAX_PIXELS ((size_t)100 * 1000 * 1000)

/* Reads and decodes `path`. Built-in formats first; other formats (or built-in variants the
 * core does not decode) go to `fallback` if it is not NULL. */
svlm_status svlm_image_load(const char *path, svlm_image_decoder fallback, svlm_image *out, svlm_err *err);
/* Decodes an in-memory PNG or PPM/PGM file (no fallback). */
svlm_status svlm_image_decode_builtin(const uint8_t *data, size_t size, svlm_image *out, svlm_err *err);
/* SVLM_E_LIMIT unless a w x h picture is within the limits: decoders check a header's size with it
 * before they decode (a small file may declare a huge picture). */
svlm_status svlm_image_check_size(long long w, long long h, svlm_err *err);
/* Allocates an uninitialised w x h image after checking the size limits. */
svlm_status svlm_image_alloc(svlm_image *img, int w, int h, svlm_err *err);
void svlm_image_free(svlm_image *img);

/* Internal to the decoders. */
svlm_status svlm_image_decode_png(const uint8_t *data, size_t size, svlm_image *out, svlm_err *err);
svlm_status svlm_image_decode_pnm(const uint8_t *data, size_t size, svlm_image *out, svlm_err *err);

/* Defined in pipeline/ffmpeg/image_ffmpeg.c when SVLM_HAVE_FFMPEG is set: any single image or
 * the first frame of anything libavformat opens. Pass it as the fallback of svlm_image_load. */
svlm_status svlm_image_decode_ffmpeg(const char *path, svlm_image *out, svlm_err *err);

#endif
