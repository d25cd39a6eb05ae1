/*
 * Random corruption of the built-in image decoders' input (PNG on zlib, binary PNM): whatever the bytes,
 * no crash (the suite runs again under ASan/UBSan), a rejected file says why, and an accepted one
 * is a whole image. The PNGs are made here, small, in every colour type and bit depth the decoder
 * takes; half the mutated PNGs get their chunk CRCs recomputed so the damage reaches the decoding
 * itself and not only the CRC check, and some get an empty chunk inserted at a chunk boundary (an
 * empty first IDAT once made the decoder copy from its NULL buffer).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "vision/image.h"

#ifdef SVLM_HAVE_ZLIB
#include <zlib.h>

static uint32_t rng = 2463534242u;
static uint32_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Appends a chunk (length, type, data, CRC) at *n. */
static void chunk(uint8_t *out, size_t *n, const char *type, const uint8_t *data, uint32_t len) {
    put32(out + *n, len);
    memcpy(out + *n + 4, type, 4);
    if (len) memcpy(out + *n + 8, data, len);
    put32(out + *n + 8 + len, (uint32_t)crc32(0, out + *n + 4, len + 4));
    *n += 12 + (size_t)len;
}

/* A w x h PNG of colour type ct and bit depth bd with random pixels and filters into out. */
static size_t make_png(uint8_t *out, int w, int h, int ct, int bd) {
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    const int ch = ct == 2 ? 3 : ct == 4 ? 2 : ct == 6 ? 4 : 1;
    const size_t row = ((size_t)w * ch * bd + 7) / 8;
    uint8_t raw[4096], z[4096], ihdr[13];
    size_t n = 0, rn = 0;
    REQUIRE((row + 1) * (size_t)h <= sizeof raw, "test image too large");
    for (int y = 0; y < h; y++) {
        raw[rn++] = (uint8_t)(next() % 5); /* filter type */
        for (size_t i = 0; i < row; i++)
            raw[rn++] = (uint8_t)next();
    }
    uLongf zn = sizeof z;
    REQUIRE(compress(z, &zn, raw, rn) == Z_OK, "zlib compress");
    memcpy(out, sig, 8);
    n = 8;
    put32(ihdr, (uint32_t)w);
    put32(ihdr + 4, (uint32_t)h);
    ihdr[8] = (uint8_t)bd;
    ihdr[9] = (uint8_t)ct;
    ihdr[10] = ihdr[11] = ihdr[12] = 0;
    chunk(out, &n, "IHDR", ihdr, 13);
    if (ct == 3) { /* an entry for every index the depth can hold */
        uint8_t plte[3 * 256];
        const uint32_t len = 3u << bd;
        for (uint32_t i = 0; i < len; i++)
            plte[i] = (uint8_t)next();
        chunk(out, &n, "PLTE", plte, len);
    }
    chunk(out, &n, "IDAT", z, (uint32_t)zn);
    chunk(out, &n, "IEND", NULL, 0);
    return n;
}

/* Recomputes every chunk's CRC that lies wholly inside the n bytes. */
static void fix_crcs(uint8_t *d, size_t n) {
    size_t p = 8;
    while (p + 12 <= n) {
        const uint32_t len = get32(d + p);
        if (len > n - p - 12) break;
        put32(d + p + 8 + len, (uint32_t)crc32(0, d + p + 4, len + 4));
        p += 12 + (size_t)len;
    }
}

/* A zero-length chunk of a type the decoder knows inserted before the k-th chunk of the n bytes at
 * d (cap bytes of room); returns the new length. */
static size_t insert_empty_chunk(uint8_t *d, size_t n, size_t cap, int k) {
    static const char *types[] = {"IDAT", "PLTE", "IEND", "tEXt"};
    size_t p = 8;
    for (int i = 0; i < k && p + 12 <= n; i++) {
        const uint32_t len = get32(d + p);
        if (len > n - p - 12) break;
        p += 12 + (size_t)len;
    }
    if (p > n || n + 12 > cap) return n;
    memmove(d + p + 12, d + p, n - p);
    size_t at = p;
    chunk(d, &at, types[next() % 4], NULL, 0);
    return n + 12;
}

/* One decode of bytes [0, n) copied to a buffer of exactly n bytes (ASan sees any overread). */
static int decode_once(const uint8_t *src, size_t n, int png) {
    uint8_t *d = malloc(n ? n : 1);
    REQUIRE(d, "out of memory");
    memcpy(d, src, n);
    svlm_image img = {0};
    svlm_err err = {0};
    const svlm_status st =
        png ? svlm_image_decode_png(d, n, &img, &err) : svlm_image_decode_pnm(d, n, &img, &err);
    if (st == SVLM_OK) {
        CHECK(img.w > 0 && img.h > 0 && img.rgb, "an accepted image without pixels");
        if (img.rgb) { /* every pixel is there to read */
            unsigned sum = 0;
            for (size_t i = 0; i < (size_t)img.w * (size_t)img.h * 3; i++)
                sum += img.rgb[i];
            (void)sum;
        }
        svlm_image_free(&img);
    } else {
        CHECK(err.msg[0], "rejected without a message (status %d)", (int)st);
    }
    free(d);
    return st == SVLM_OK;
}

static void png_corruption(void) {
    static const int kinds[][2] = {{2, 8}, {6, 16}, {0, 1}, {0, 16}, {3, 4}, {4, 8}, {3, 8}, {0, 2}};
    uint8_t good[8192], m[8192];
    int accepted = 0, total = 0;
    for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
        const size_t n = make_png(good, 9, 7, kinds[k][0], kinds[k][1]);
        CHECK(decode_once(good, n, 1), "an unmodified PNG (colour type %d, depth %d) fails", kinds[k][0],
              kinds[k][1]);
        for (int it = 0; it < 2500; it++) {
            memcpy(m, good, n);
            if (it % 8 == 0) { /* an empty chunk, the file otherwise whole */
                accepted += decode_once(m, insert_empty_chunk(m, n, sizeof m, 1 + (int)(next() % 3)), 1);
                total++;
                continue;
            }
            const int flips = 1 + (int)(next() % 6);
            for (int j = 0; j < flips; j++) {
                const size_t at = 8 + next() % (n - 8);
                m[at] = next() % 3 ? (uint8_t)(m[at] ^ (1u << (next() % 8))) : (uint8_t)next();
            }
            if (next() % 2) fix_crcs(m, n);
            const size_t len = next() % 8 ? n : next() % n; /* sometimes cut short too */
            accepted += decode_once(m, len, 1);
            total++;
        }
    }
    printf("PNG: %d of %d mutated files decoded, every other one rejected with a message\n", accepted, total);
}

static void pnm_corruption(void) {
    static const struct {
        const char *p;
        size_t n;
    } seeds[] = {{"P6\n# c\n2 1\n15\n\x0f\x00\x00\x08\x08\x08", 20},
                 {"P5\n3 2\n255\nabcdef", 17},
                 {"P6\n2 2\n65535\n012345678901234567890123", 37},
                 {"P5\n4 1\n300\n\x01\x2c\x00\x00\x00\x96\x01\x00", 19}};
    static const char alphabet[] = "0123456789 \n#P";
    uint8_t m[128];
    int accepted = 0, total = 0;
    for (size_t s = 0; s < sizeof seeds / sizeof seeds[0]; s++) {
        CHECK(decode_once((const uint8_t *)seeds[s].p, seeds[s].n, 0), "an unmodified PNM (seed %zu) fails",
              s);
        for (int it = 0; it < 3000; it++) {
            size_t n = seeds[s].n;
            memcpy(m, seeds[s].p, n);
            const int edits = 1 + (int)(next() % 4);
            for (int j = 0; j < edits && n > 1; j++) {
                const size_t at = next() % n;
                switch (next() % 4) {
                case 0: m[at] = (uint8_t)next(); break;
                case 1: m[at] = (uint8_t)alphabet[next() % (sizeof alphabet - 1)]; break;
                case 2:
                    if (n < sizeof m) {
                        memmove(m + at + 1, m + at, n - at);
                        m[at] = (uint8_t) "9 \n"[next() % 3];
                        n++;
                    }
                    break;
                default: memmove(m + at, m + at + 1, n - at - 1); n--;
                }
            }
            accepted += decode_once(m, n, 0);
            total++;
        }
    }
    printf("PNM: %d of %d mutated files decoded, every other one rejected with a message\n", accepted, total);
}

/* Headers that claim a huge image over a few bytes are refused before the image is allocated
 * (each would have cost its claimed size first: 486 MB for the PNM, 2 GB of rows for the PNG). */
/* A PNG of this header (ihdr: depth and colour type set; size and interlace set here) and one
 * IDAT of z, decoded by the built-in decoder. */
static svlm_status decode_header(uint8_t *ihdr, uint32_t w, uint32_t h, int interlace, const uint8_t *z,
                                 size_t zn, svlm_image *im, svlm_err *err) {
    uint8_t png[256];
    size_t n = 8;
    memcpy(png, "\x89PNG\r\n\x1a\n", 8);
    put32(ihdr, w);
    put32(ihdr + 4, h);
    ihdr[12] = (uint8_t)interlace;
    chunk(png, &n, "IHDR", ihdr, 13);
    chunk(png, &n, "IDAT", z, (uint32_t)zn);
    chunk(png, &n, "IEND", NULL, 0);
    err->msg[0] = 0;
    return svlm_image_decode_builtin(png, n, im, err);
}

static void huge_headers(void) {
    svlm_image im = {0};
    svlm_err err = {0};
    static const char pnm[] = "P6\n9000 9000\n65535\n0123456789abcdef";
    CHECK(svlm_image_decode_builtin((const uint8_t *)pnm, sizeof pnm - 1, &im, &err) == SVLM_E_FORMAT &&
              !im.rgb && strstr(err.msg, "truncated"),
          "a 9000x9000 PNM of 16 raster bytes: %s", err.msg);
    uint8_t ihdr[13] = {0}, idat[64], z[128];
    ihdr[8] = 16; /* 16-bit RGBA: 128000 bytes a row */
    ihdr[9] = 6;
    memset(idat, 0, sizeof idat);
    uLongf zn = sizeof z;
    CHECK(compress(z, &zn, idat, sizeof idat) == Z_OK, "zlib compress");
    CHECK(decode_header(ihdr, 16000, 16000, 0, z, zn, &im, &err) == SVLM_E_FORMAT && !im.rgb &&
              strstr(err.msg, "truncated") && strstr(err.msg, "rows' bytes"),
          "a 16000x16000 PNG of %lu compressed bytes: %s", (unsigned long)zn, err.msg);
    printf("huge headers over a few bytes refused before allocating: %s\n", err.msg);
    /* the same header interlaced (which goes to FFmpeg, which decodes whatever the size): the
     * size limit first, not "needs FFmpeg"; 12000 x 12000 is within the sides but over the pixels */
    CHECK(decode_header(ihdr, 12000, 12000, 1, z, zn, &im, &err) == SVLM_E_LIMIT && !im.rgb,
          "an interlaced 12000x12000 PNG: %s (expected the size limit)", err.msg);
    /* past a side: refused, naming the size the header claims (it said 0x0) */
    CHECK(decode_header(ihdr, 30000, 20, 0, z, zn, &im, &err) == SVLM_E_LIMIT && !im.rgb &&
              strstr(err.msg, "30000x20"),
          "a 30000x20 PNG: %s (expected the size limit, naming 30000x20)", err.msg);
    static const char wide[] = "P6\n30000 20\n255\n0123";
    CHECK(svlm_image_decode_builtin((const uint8_t *)wide, sizeof wide - 1, &im, &err) == SVLM_E_LIMIT &&
              !im.rgb && strstr(err.msg, "30000x20"),
          "a 30000x20 PNM: %s (expected the size limit, naming 30000x20; it said 0x0)", err.msg);
}

/* Compressed data past the last row (which other decoders ignore) is accepted: it was refused as
 * "truncated (N+1 of N bytes inflate)". */
static void png_trailing_data(void) {
    uint8_t ihdr[13] = {0}, raw[2 * 7 + 40], z[128];
    ihdr[8] = 8; /* 8-bit RGB, 2x2: two rows of a filter byte and 6 bytes */
    ihdr[9] = 2;
    for (size_t i = 0; i < sizeof raw; i++)
        raw[i] = i % 7 ? (uint8_t)(40 * i) : 0;
    uLongf zn = sizeof z;
    REQUIRE(compress(z, &zn, raw, sizeof raw) == Z_OK, "zlib compress");
    svlm_image im = {0};
    svlm_err err = {0};
    CHECK(decode_header(ihdr, 2, 2, 0, z, zn, &im, &err) == SVLM_OK && im.w == 2 && im.h == 2 &&
              im.rgb[3] == raw[4] && im.rgb[11] == raw[13],
          "a PNG with 40 bytes past its rows: %s", err.msg);
    svlm_image_free(&im);
}

int test_main(void) {
    png_corruption();
    pnm_corruption();
    huge_headers();
    png_trailing_data();
    return 0;
}

#else

int test_main(void) {
    SKIP("built without zlib: no built-in PNG decoder to test");
    return 0;
}

#endif
