/*
 * A small PNG decoder (non-interlaced; every colour type and bit depth) on zlib. Chunk CRCs
 * are checked so a damaged file fails clearly instead of decoding to noise. Interlaced files
 * are left to the FFmpeg fallback (SVLM_E_UNSUPPORTED).
 */
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "vision/image.h"

#ifdef SVLM_HAVE_ZLIB
#include <zlib.h>

static uint32_t be32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int paeth(int a, int b, int c) {
    int p = a + b - c, pa = abs(p - a), pb = abs(p - b), pc = abs(p - c);
    return pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
}

/* Reverses the per-row filters in place. raw: h rows of (1 + stride) bytes. */
static svlm_status unfilter(uint8_t *raw, size_t stride, int h, size_t bpp, svlm_err *err) {
    uint8_t *prev = NULL;
    for (int y = 0; y < h; y++) {
        uint8_t *row = raw + (size_t)y * (stride + 1);
        int type = row[0];
        uint8_t *cur = row + 1;
        for (size_t i = 0; i < stride; i++) {
            int a = i >= bpp ? cur[i - bpp] : 0, b = prev ? prev[i] : 0,
                c = prev && i >= bpp ? prev[i - bpp] : 0;
            switch (type) {
            case 0: break;
            case 1: cur[i] = (uint8_t)(cur[i] + a); break;
            case 2: cur[i] = (uint8_t)(cur[i] + b); break;
            case 3: cur[i] = (uint8_t)(cur[i] + ((a + b) >> 1)); break;
            case 4: cur[i] = (uint8_t)(cur[i] + paeth(a, b, c)); break;
            default: return svlm_fail(err, SVLM_E_FORMAT, "PNG row %d has unknown filter type %d", y, type);
            }
        }
        prev = cur;
    }
    return SVLM_OK;
}

/* Sample k of a row (bit depths 1, 2, 4, 8, 16), scaled to 8 bits (16 -> high byte, like stb). */
static unsigned sample8(const uint8_t *row, size_t k, int depth, int scale_low) {
    switch (depth) {
    case 8: return row[k];
    case 16: return row[2 * k];
    default: {
        size_t bit = k * (size_t)depth;
        unsigned v = (row[bit >> 3] >> (8 - depth - (bit & 7))) & ((1u << depth) - 1);
        return scale_low ? v * (255u / ((1u << depth) - 1)) : v;
    }
    }
}

svlm_status svlm_image_decode_png(const uint8_t *d, size_t n, svlm_image *out, svlm_err *err) {
    size_t pos = 8;
    uint32_t w = 0, h = 0;
    int depth = 0, ctype = -1, interlace = 0, have_ihdr = 0, have_iend = 0;
    const uint8_t *plte = NULL;
    uint32_t plte_n = 0;
    uint8_t *z = NULL;
    size_t zn = 0, zcap = 0;
    while (pos < n && !have_iend) {
        if (n - pos < 12) {
            free(z);
            return svlm_fail(err, SVLM_E_FORMAT, "PNG is truncated (chunk header at byte %zu)", pos);
        }
        uint32_t len = be32(d + pos);
        const uint8_t *type = d + pos + 4, *body = d + pos + 8;
        if (len > n - pos - 12) {
            free(z);
            return svlm_fail(err, SVLM_E_FORMAT, "PNG is truncated (chunk '%.4s' needs %u bytes)",
                             (const char *)type, len);
        }
        if ((uint32_t)crc32(crc32(0, NULL, 0), type, len + 4) != be32(body + len)) {
            free(z);
            return svlm_fail(err, SVLM_E_FORMAT, "PNG chunk '%.4s' fails its CRC (damaged file)",
                             (const char *)type);
        }
        if (!memcmp(type, "IHDR", 4)) {
            if (len != 13) return free(z), svlm_fail(err, SVLM_E_FORMAT, "PNG IHDR has length %u", len);
            w = be32(body);
            h = be32(body + 4);
            depth = body[8];
            ctype = body[9];
            interlace = body[12];
            have_ihdr = 1;
        } else if (!memcmp(type, "PLTE", 4)) {
            plte = body;
            plte_n = len / 3;
        } else if (!memcmp(type, "IDAT", 4) && len) { /* (an empty one is allowed, and adds nothing) */
            if (zn + len > zcap) {
                size_t ncap = (zn + len) * 2;
                uint8_t *nz = realloc(z, ncap);
                if (!nz) return free(z), svlm_fail(err, SVLM_E_NOMEM, "out of memory for PNG data");
                z = nz;
                zcap = ncap;
            }
            memcpy(z + zn, body, len);
            zn += len;
        } else if (!memcmp(type, "IEND", 4)) {
            have_iend = 1;
        }
        pos += 12 + (size_t)len;
    }
    if (!have_ihdr || !zn) {
        free(z);
        return svlm_fail(err, SVLM_E_FORMAT, "PNG has no %s (truncated or damaged file)",
                         have_ihdr ? "image data" : "IHDR");
    }
    int channels = ctype == 0 ? 1 : ctype == 2 ? 3 : ctype == 3 ? 1 : ctype == 4 ? 2 : ctype == 6 ? 4 : 0;
    int depth_ok =
        depth == 8 || depth == 16 || ((ctype == 0 || ctype == 3) && (depth == 1 || depth == 2 || depth == 4));
    if (!channels || !depth_ok || (ctype == 3 && depth == 16)) {
        free(z);
        return svlm_fail(err, SVLM_E_FORMAT, "PNG colour type %d with bit depth %d is invalid", ctype, depth);
    }
    if (interlace) {
        free(z);
        /* FFmpeg would decode it whatever its size: the limits first */
        svlm_status st = svlm_image_check_size(w, h, err);
        if (st) return st;
        return svlm_fail(err, SVLM_E_UNSUPPORTED,
                         "interlaced PNG needs FFmpeg (built-in decoder reads non-interlaced PNG)");
    }
    if (ctype == 3 && !plte) {
        free(z);
        return svlm_fail(err, SVLM_E_FORMAT, "palette PNG has no PLTE chunk");
    }
    size_t bits_pp = (size_t)channels * (size_t)depth;
    size_t stride = ((size_t)w * bits_pp + 7) / 8, bpp = (bits_pp + 7) / 8;
    size_t raw_n = (stride + 1) * h;
    /* deflate expands at most about 1032:1, so image data this short cannot fill the rows: say
     * so before allocating what the header claims (up to a gigabyte) */
    if (w <= SVLM_IMAGE_MAX_SIDE && h <= SVLM_IMAGE_MAX_SIDE && raw_n / 1032 > zn + 64) {
        free(z);
        return svlm_fail(err, SVLM_E_FORMAT, "PNG image data is truncated (%zu bytes for %zu rows' bytes)",
                         zn, raw_n);
    }
    svlm_status st = svlm_image_check_size(w, h, err); /* (its message names the real size) */
    if (!st) st = svlm_image_alloc(out, (int)w, (int)h, err);
    if (st) return free(z), st;
    uint8_t *raw = malloc(raw_n + 1);
    if (!raw) {
        free(z);
        svlm_image_free(out);
        return svlm_fail(err, SVLM_E_NOMEM, "out of memory for PNG rows");
    }
    uLongf got = (uLongf)(raw_n + 1);
    int zr = uncompress(raw, &got, z, (uLong)zn);
    free(z);
    /* (data past the last row, which other decoders ignore too, fills raw's extra byte: accepted) */
    if ((zr != Z_OK && zr != Z_BUF_ERROR) || got < raw_n) {
        free(raw);
        svlm_image_free(out);
        return svlm_fail(err, SVLM_E_FORMAT, "PNG image data is %s (%lu of %zu bytes inflate)",
                         zr == Z_DATA_ERROR ? "corrupt" : "truncated", (unsigned long)got, raw_n);
    }
    st = unfilter(raw, stride, (int)h, bpp, err);
    if (st) {
        free(raw);
        svlm_image_free(out);
        return st;
    }
    for (uint32_t y = 0; y < h; y++) {
        const uint8_t *row = raw + (size_t)y * (stride + 1) + 1;
        uint8_t *o = out->rgb + (size_t)y * w * 3;
        for (uint32_t x = 0; x < w; x++, o += 3) {
            size_t k = (size_t)x * (size_t)channels;
            if (ctype == 3) {
                unsigned idx = sample8(row, k, depth, 0);
                if (idx >= plte_n) {
                    free(raw);
                    svlm_image_free(out);
                    return svlm_fail(err, SVLM_E_FORMAT, "PNG pixel uses palette entry %u of %u", idx,
                                     plte_n);
                }
                memcpy(o, plte + 3 * idx, 3);
            } else if (channels >= 3) {
                for (int c = 0; c < 3; c++)
                    o[c] = (uint8_t)sample8(row, k + (size_t)c, depth, 1);
            } else {
                o[0] = o[1] = o[2] = (uint8_t)sample8(row, k, depth, 1);
            }
        }
    }
    free(raw);
    return SVLM_OK;
}

#else

svlm_status svlm_image_decode_png(const uint8_t *d, size_t n, svlm_image *out, svlm_err *err) {
    (void)d;
    (void)n;
    (void)out;
    return svlm_fail(err, SVLM_E_UNSUPPORTED, "PNG needs zlib or FFmpeg: this svlm was built with neither");
}

#endif
