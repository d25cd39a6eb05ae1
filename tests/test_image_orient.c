/*
 * JPEG stills are turned upright as their EXIF orientation asks (as viewers and Hugging Face's
 * image loader show them): a phone's portrait photo is stored sideways with orientation 6. The
 * picture is four coloured quadrants (red, green over blue, white; 32 x 16, made with FFmpeg),
 * given each of the eight orientations in an EXIF block; each decode must show the quadrants
 * where PIL's exif_transpose puts them, at the turned size. Before, every one came out as stored.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "test.h"
#include "vision/image.h"

#ifdef SVLM_HAVE_FFMPEG
static const unsigned char quadrants_jpg[] = {
    0xff, 0xd8, 0xff, 0xfe, 0x00, 0x10, 0x4c, 0x61, 0x76, 0x63, 0x35, 0x39, 0x2e, 0x33, 0x37, 0x2e, 0x31,
    0x30, 0x30, 0x00, 0xff, 0xdb, 0x00, 0x43, 0x00, 0x08, 0x04, 0x04, 0x04, 0x04, 0x04, 0x05, 0x05, 0x05,
    0x05, 0x05, 0x05, 0x06, 0x06, 0x06, 0x06, 0x06, 0x06, 0x06, 0x06, 0x06, 0x06, 0x06, 0x06, 0x06, 0x07,
    0x07, 0x07, 0x08, 0x08, 0x08, 0x07, 0x07, 0x07, 0x06, 0x06, 0x07, 0x07, 0x08, 0x08, 0x08, 0x08, 0x09,
    0x09, 0x09, 0x08, 0x08, 0x08, 0x08, 0x09, 0x09, 0x0a, 0x0a, 0x0a, 0x0c, 0x0c, 0x0b, 0x0b, 0x0e, 0x0e,
    0x0e, 0x11, 0x11, 0x14, 0xff, 0xc4, 0x00, 0x4d, 0x00, 0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x06, 0x07, 0x01, 0x01, 0x01, 0x01, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0x08, 0x06, 0x10, 0x01, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x11, 0x01, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xc0,
    0x00, 0x11, 0x08, 0x00, 0x10, 0x00, 0x20, 0x03, 0x01, 0x12, 0x00, 0x02, 0x12, 0x00, 0x03, 0x12, 0x00,
    0xff, 0xda, 0x00, 0x0c, 0x03, 0x01, 0x00, 0x02, 0x11, 0x03, 0x11, 0x00, 0x3f, 0x00, 0x16, 0x20, 0xca,
    0x2a, 0xa3, 0xfa, 0x6b, 0x2f, 0x10, 0x4a, 0xaa, 0xa9, 0x4a, 0x26, 0xb5, 0xe5, 0x69, 0x45, 0x85, 0x41,
    0x49, 0xad, 0x16, 0x5a, 0x45, 0x65, 0x40, 0xa1, 0xad, 0xff, 0xd9};

enum { R, G, B, W };
static const int rgb_of[4][3] = {{255, 0, 0}, {0, 255, 0}, {0, 0, 255}, {255, 255, 255}};

/* The file with an EXIF block (orientation o) right after its start-of-image marker. */
static size_t with_exif(int o, unsigned char *out) {
    static const unsigned char exif[] = {
        0xff, 0xe1, 0x00, 0x22, 'E', 'x', 'i', 'f', 0, 0, 'I', 'I', 0x2a, 0, 8, 0, 0, 0, /* TIFF, IFD0 at 8 */
        1,    0,    0x12, 0x01, 3,   0,   1,   0,   0, 0, 0,   0,   0,    0, 0, 0, 0, 0}; /* Orientation */
    memcpy(out, quadrants_jpg, 2);
    memcpy(out + 2, exif, sizeof exif);
    out[2 + 28] = (unsigned char)o; /* the SHORT value, little-endian */
    memcpy(out + 2 + sizeof exif, quadrants_jpg + 2, sizeof quadrants_jpg - 2);
    return sizeof quadrants_jpg + sizeof exif;
}

/* The colour nearest the pixel at (fx, fy) of the picture, as fractions of its size. */
static int colour_at(const svlm_image *img, double fx, double fy) {
    const uint8_t *p = img->rgb + ((size_t)(fy * img->h) * img->w + (size_t)(fx * img->w)) * 3;
    int best = 0, best_d = 1 << 30;
    for (int c = 0; c < 4; c++) {
        int d = 0;
        for (int k = 0; k < 3; k++)
            d += (p[k] - rgb_of[c][k]) * (p[k] - rgb_of[c][k]);
        if (d < best_d) best = c, best_d = d;
    }
    return best;
}

int test_main(void) {
    /* top-left, top-right, bottom-left, bottom-right after PIL's exif_transpose */
    static const int want[9][4] = {{0},          {R, G, B, W}, {G, R, W, B}, {W, B, G, R}, {B, W, R, G},
                                   {R, B, G, W}, {B, R, W, G}, {W, G, B, R}, {G, W, R, B}};
    const char *dir = getenv("SVLM_TEST_TMP") ? getenv("SVLM_TEST_TMP") : "/tmp";
    for (int o = 1; o <= 8; o++) {
        unsigned char buf[sizeof quadrants_jpg + 64];
        size_t n = with_exif(o, buf);
        char path[512];
        snprintf(path, sizeof path, "%s/svlm_orient_%d_%d.jpg", dir, (int)getpid(), o);
        FILE *f = fopen(path, "wb");
        REQUIRE(f && fwrite(buf, 1, n, f) == n && fclose(f) == 0, "writing %s", path);
        svlm_image img = {0};
        svlm_err err = {0};
        svlm_status st = svlm_image_load(path, svlm_image_decode_ffmpeg, &img, &err);
        remove(path);
        CHECK(st == SVLM_OK, "orientation %d: %s", o, err.msg);
        if (st) continue;
        const int turned = o >= 5;
        CHECK(img.w == (turned ? 16 : 32) && img.h == (turned ? 32 : 16), "orientation %d: %d x %d", o, img.w,
              img.h);
        int got[4] = {colour_at(&img, 0.25, 0.25), colour_at(&img, 0.75, 0.25), colour_at(&img, 0.25, 0.75),
                      colour_at(&img, 0.75, 0.75)};
        CHECK(!memcmp(got, want[o], sizeof got), "orientation %d: quadrants %d %d %d %d, want %d %d %d %d", o,
              got[0], got[1], got[2], got[3], want[o][0], want[o][1], want[o][2], want[o][3]);
        svlm_image_free(&img);
    }
    return 0;
}
#else
int test_main(void) {
    SKIP("built without FFmpeg (JPEG needs it)");
}
#endif
