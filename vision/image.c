/* Image loading: file reading, format sniffing, binary PPM/PGM, and the fallback hand-off. */
#include "vision/image.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

svlm_status svlm_image_check_size(long long w, long long h, svlm_err *err) {
    if (w <= 0 || h <= 0 || w > SVLM_IMAGE_MAX_SIDE || h > SVLM_IMAGE_MAX_SIDE ||
        (size_t)w * (size_t)h > SVLM_IMAGE_MAX_PIXELS)
        return svlm_fail(err, SVLM_E_LIMIT, "image size %lldx%lld is outside 1..%d per side / %zu pixels", w,
                         h, SVLM_IMAGE_MAX_SIDE, SVLM_IMAGE_MAX_PIXELS);
    return SVLM_OK;
}

svlm_status svlm_image_alloc(svlm_image *img, int w, int h, svlm_err *err) {
    img->w = img->h = 0;
    img->rgb = NULL;
    svlm_status st = svlm_image_check_size(w, h, err);
    if (st) return st;
    /* (slack past the last row: FFmpeg's converters may write a block of pixels past a row's end,
     * as pipeline/source_backend.h's SVLM_FRAME_SLACK says) */
    img->rgb = malloc((size_t)w * (size_t)h * 3 + 256);
    if (!img->rgb) return svlm_fail(err, SVLM_E_NOMEM, "out of memory for a %dx%d image", w, h);
    img->w = w;
    img->h = h;
    return SVLM_OK;
}

void svlm_image_free(svlm_image *img) {
    if (!img) return;
    free(img->rgb);
    img->rgb = NULL;
    img->w = img->h = 0;
}

/* ---- binary PNM (P5 grey, P6 RGB), maxval <= 65535 --------------------------------------- */

/* Reads one header integer, skipping whitespace and # comments. */
static int pnm_int(const uint8_t *d, size_t n, size_t *pos, long *out) {
    size_t p = *pos;
    for (;;) {
        while (p < n && (d[p] == ' ' || d[p] == '\t' || d[p] == '\n' || d[p] == '\r'))
            p++;
        if (p < n && d[p] == '#') {
            while (p < n && d[p] != '\n')
                p++;
            continue;
        }
        break;
    }
    long v = 0;
    size_t start = p;
    while (p < n && d[p] >= '0' && d[p] <= '9' && v < 1000000)
        v = v * 10 + (d[p++] - '0');
    if (p == start || v >= 1000000) return 0;
    *out = v;
    *pos = p;
    return 1;
}

svlm_status svlm_image_decode_pnm(const uint8_t *d, size_t n, svlm_image *out, svlm_err *err) {
    if (n < 2 || d[0] != 'P' || (d[1] != '5' && d[1] != '6'))
        return svlm_fail(err, SVLM_E_UNSUPPORTED, "not a binary PPM/PGM (P5/P6) file");
    int channels = d[1] == '6' ? 3 : 1;
    size_t pos = 2;
    long w, h, maxval;
    if (!pnm_int(d, n, &pos, &w) || !pnm_int(d, n, &pos, &h) || !pnm_int(d, n, &pos, &maxval))
        return svlm_fail(err, SVLM_E_FORMAT, "PNM header is malformed");
    if (maxval < 1 || maxval > 65535)
        return svlm_fail(err, SVLM_E_FORMAT, "PNM maxval %ld is invalid", maxval);
    svlm_status st = svlm_image_check_size(w, h, err); /* (its message names the size the header gives) */
    if (st) return st;
    if (pos >= n) return svlm_fail(err, SVLM_E_FORMAT, "PNM file ends after its header");
    pos++; /* exactly one whitespace byte before the raster */
    size_t bps = maxval > 255 ? 2 : 1;
    size_t need = (size_t)w * (size_t)h * (size_t)channels * bps; /* each side < 1e6: no overflow */
    /* before the image is allocated: a short file must not cost its header's claimed size */
    if (n - pos < need)
        return svlm_fail(err, SVLM_E_FORMAT, "PNM raster is truncated: %zu of %zu bytes", n - pos, need);
    if ((st = svlm_image_alloc(out, (int)w, (int)h, err))) return st;
    const uint8_t *s = d + pos;
    for (size_t i = 0; i < (size_t)w * (size_t)h; i++) {
        for (int c = 0; c < 3; c++) {
            size_t k = (i * (size_t)channels + (size_t)(channels == 3 ? c : 0)) * bps;
            unsigned v = bps == 2 ? (unsigned)s[k] << 8 | s[k + 1] : s[k];
            out->rgb[i * 3 + (size_t)c] = (uint8_t)((v * 255u + (unsigned)maxval / 2) / (unsigned)maxval);
        }
    }
    return SVLM_OK;
}

/* ---- dispatch ------------------------------------------------------------------------------ */

static const uint8_t png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

svlm_status svlm_image_decode_builtin(const uint8_t *data, size_t size, svlm_image *out, svlm_err *err) {
    out->w = out->h = 0;
    out->rgb = NULL;
    if (size >= 8 && !memcmp(data, png_magic, 8)) return svlm_image_decode_png(data, size, out, err);
    if (size >= 2 && data[0] == 'P' && (data[1] == '5' || data[1] == '6'))
        return svlm_image_decode_pnm(data, size, out, err);
    if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF)
        return svlm_fail(err, SVLM_E_UNSUPPORTED,
                         "JPEG needs FFmpeg: this svlm was built without it (PNG and PPM work)");
    return svlm_fail(
        err, SVLM_E_UNSUPPORTED,
        "unknown image format: this svlm build decodes PNG and PPM itself, other formats need FFmpeg");
}

static svlm_status read_file(const char *path, uint8_t **data, size_t *size, svlm_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) return svlm_fail(err, SVLM_E_IO, "cannot open image '%s': %s", path, strerror(errno));
    uint8_t *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 1 << 16;
            if (ncap > ((size_t)1 << 31)) {
                free(buf);
                fclose(f);
                return svlm_fail(err, SVLM_E_LIMIT, "image file '%s' is larger than 2 GiB", path);
            }
            uint8_t *nb = realloc(buf, ncap);
            if (!nb) {
                free(buf);
                fclose(f);
                return svlm_fail(err, SVLM_E_NOMEM, "out of memory reading '%s'", path);
            }
            buf = nb;
            cap = ncap;
        }
        errno = 0;
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    const int bad = ferror(f), why = errno; /* (a directory opens, and its read fails: EISDIR) */
    fclose(f);
    if (bad) {
        free(buf);
        return svlm_fail(err, SVLM_E_IO, "cannot read image '%s': %s", path,
                         why ? strerror(why) : "read error");
    }
    *data = buf;
    *size = n;
    return SVLM_OK;
}

svlm_status svlm_image_load(const char *path, svlm_image_decoder fallback, svlm_image *out, svlm_err *err) {
    out->w = out->h = 0;
    out->rgb = NULL;
    uint8_t *data = NULL;
    size_t size = 0;
    svlm_status st = read_file(path, &data, &size, err);
    if (st) return st;
    if (size == 0) {
        free(data);
        return svlm_fail(err, SVLM_E_FORMAT, "image '%s' is empty", path);
    }
    st = svlm_image_decode_builtin(data, size, out, err);
    free(data);
    if (st == SVLM_E_UNSUPPORTED && fallback) st = fallback(path, out, err);
    if (st) svlm_err_prefix(err, "%s", path);
    return st;
}
