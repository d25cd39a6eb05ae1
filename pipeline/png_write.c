#include "pipeline/png_write.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

#ifdef SVLM_HAVE_ZLIB
#include <zlib.h>
#endif

static uint32_t crc_table[256];
static int crc_ready;

static uint32_t crc32_update(uint32_t crc, const uint8_t *p, size_t n) {
    if (!crc_ready) { /* benign if two threads race: both write the same table */
        for (uint32_t i = 0; i < 256; i++) {
            uint32_t c = i;
            for (int k = 0; k < 8; k++)
                c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
            crc_table[i] = c;
        }
        crc_ready = 1;
    }
    crc = ~crc;
    for (size_t i = 0; i < n; i++)
        crc = crc_table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

static void put_be32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static int write_chunk(FILE *f, const char *type, const uint8_t *data, size_t n) {
    uint8_t hdr[8], crcb[4];
    put_be32(hdr, (uint32_t)n);
    memcpy(hdr + 4, type, 4);
    uint32_t crc = crc32_update(crc32_update(0, hdr + 4, 4), data, n);
    put_be32(crcb, crc);
    return fwrite(hdr, 1, 8, f) == 8 && (n == 0 || fwrite(data, 1, n, f) == n) && fwrite(crcb, 1, 4, f) == 4
               ? 0
               : -1;
}

#ifndef SVLM_HAVE_ZLIB
/* A zlib stream of stored blocks (at most 65535 bytes each) with the Adler-32 trailer. */
static uint8_t *deflate_stored(const uint8_t *raw, size_t n, size_t *out_n) {
    size_t blocks = n / 65535 + 1, total = 2 + n + blocks * 5 + 4;
    uint8_t *out = malloc(total), *p = out;
    if (!out) return NULL;
    *p++ = 0x78;
    *p++ = 0x01;
    size_t left = n;
    const uint8_t *src = raw;
    do {
        size_t len = left > 65535 ? 65535 : left;
        *p++ = left == len; /* BFINAL on the last block, BTYPE 00 = stored */
        p[0] = (uint8_t)len;
        p[1] = (uint8_t)(len >> 8);
        p[2] = (uint8_t)~len;
        p[3] = (uint8_t)(~len >> 8);
        p += 4;
        memcpy(p, src, len);
        p += len;
        src += len;
        left -= len;
    } while (left);
    uint32_t a = 1, b = 0;
    for (size_t i = 0; i < n; i++) {
        a = (a + raw[i]) % 65521;
        b = (b + a) % 65521;
    }
    put_be32(p, (b << 16) | a);
    p += 4;
    *out_n = (size_t)(p - out);
    return out;
}
#endif

svlm_status svlm_png_write(const char *path, const svlm_frame *fr, svlm_err *err) {
    size_t row = (size_t)fr->width * 3 + 1, n = row * (size_t)fr->height;
    uint8_t *raw = malloc(n);
    if (!raw) return svlm_fail(err, SVLM_E_NOMEM, "out of memory for a PNG");
    for (int y = 0; y < fr->height; y++) {
        raw[(size_t)y * row] = 0; /* filter: none */
        memcpy(raw + (size_t)y * row + 1, fr->data + (size_t)y * fr->stride, row - 1);
    }
    size_t zn = 0;
    uint8_t *z;
#ifdef SVLM_HAVE_ZLIB
    uLongf bound = compressBound((uLong)n);
    z = malloc(bound);
    if (z && compress2(z, &bound, raw, (uLong)n, 3) != Z_OK) {
        free(z);
        z = NULL;
    }
    zn = bound;
#else
    z = deflate_stored(raw, n, &zn);
#endif
    free(raw);
    if (!z) return svlm_fail(err, SVLM_E_NOMEM, "cannot compress a PNG");
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(z);
        return svlm_fail(err, SVLM_E_IO, "cannot write %s", path);
    }
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    uint8_t ihdr[13];
    put_be32(ihdr, (uint32_t)fr->width);
    put_be32(ihdr + 4, (uint32_t)fr->height);
    ihdr[8] = 8; /* bit depth */
    ihdr[9] = 2; /* colour type: RGB */
    ihdr[10] = ihdr[11] = ihdr[12] = 0;
    int bad = fwrite(sig, 1, 8, f) != 8 || write_chunk(f, "IHDR", ihdr, 13) ||
              write_chunk(f, "IDAT", z, zn) || write_chunk(f, "IEND", NULL, 0);
    bad |= fclose(f) != 0;
    free(z);
    return bad ? svlm_fail(err, SVLM_E_IO, "cannot write %s", path) : SVLM_OK;
}
