/*
 * libFuzzer harness: the built-in still-image decoders (svlm_image_decode_builtin, and the PNG
 * and PNM decoders directly). PNG chunks carry CRCs that random mutation almost never keeps
 * valid, so each PNG-looking input is decoded twice: as given, and with every chunk's CRC
 * recomputed (so the fuzzer explores IHDR/PLTE/IDAT contents rather than the CRC check).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef SVLM_HAVE_ZLIB
#include <zlib.h>
#endif

#include "vision/image.h"

static volatile unsigned sink; /* keeps the reads below */

static void check(const svlm_image *im) {
    /* touch every byte: an image whose rgb is smaller than w*h*3 shows up under ASan */
    unsigned s = 0;
    for (size_t i = 0; i < (size_t)im->w * (size_t)im->h * 3; i += 61)
        s += im->rgb[i];
    if (im->w > 0 && im->h > 0) s += im->rgb[(size_t)im->w * (size_t)im->h * 3 - 1];
    sink = s;
}

static void decode(svlm_status (*fn)(const uint8_t *, size_t, svlm_image *, svlm_err *), const uint8_t *d,
                   size_t n) {
    svlm_image im = {0};
    svlm_err err = {0};
    if (fn(d, n, &im, &err) == SVLM_OK) {
        if (im.w <= 0 || im.h <= 0 || !im.rgb) abort();
        check(&im);
    } else if (im.rgb) {
        abort(); /* a failed decode must not leave an image behind */
    }
    svlm_image_free(&im);
}

#ifdef SVLM_HAVE_ZLIB
static void fix_crcs(uint8_t *d, size_t n) {
    size_t pos = 8;
    while (pos + 12 <= n) {
        uint32_t len =
            (uint32_t)d[pos] << 24 | (uint32_t)d[pos + 1] << 16 | (uint32_t)d[pos + 2] << 8 | d[pos + 3];
        if (len > n - pos - 12) break;
        uint32_t c = (uint32_t)crc32(crc32(0, NULL, 0), d + pos + 4, len + 4);
        uint8_t *p = d + pos + 8 + len;
        p[0] = (uint8_t)(c >> 24), p[1] = (uint8_t)(c >> 16), p[2] = (uint8_t)(c >> 8), p[3] = (uint8_t)c;
        pos += 12 + (size_t)len;
    }
}
#else
static void fix_crcs(uint8_t *d, size_t n) { /* without zlib the PNG decoder only says so */
    (void)d, (void)n;
}
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    decode(svlm_image_decode_builtin, data, size);
    if (size >= 8 && data[0] == 0x89 && data[1] == 'P') {
        uint8_t *copy = malloc(size);
        if (!copy) return 0;
        memcpy(copy, data, size);
        fix_crcs(copy, size);
        decode(svlm_image_decode_builtin, copy, size);
        decode(svlm_image_decode_png, copy, size);
        free(copy);
    }
    if (size >= 2 && data[0] == 'P') decode(svlm_image_decode_pnm, data, size);
    return 0;
}
