/*
 * Image decoding and preprocessing:
 *  - PNG decode of the fixture photo equals llama.cpp's decoded bitmap byte for byte;
 *  - llama.cpp idefics3 tiling (2x2 grid + overview) equals fixtures/vision-tiny's pixels
 *    (tolerance 2e-2; measured exact);
 *  - the video-frame path against Hugging Face's SmolVLM video processor on real frames
 *    (fixtures/hf-smolvlm-preprocess): max |d| <= 0.02 (2.5 levels of 255), mean <= 1e-4;
 *  - real photos from media/: shape, value range, determinism;
 *  - bad input: missing, empty, truncated and corrupted PNG, unknown formats, JPEG without FFmpeg.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "vision/image.h"
#include "vision/preprocess.h"

static float *read_f32(const char *path, size_t n, size_t skip) {
    FILE *f = fopen(path, "rb");
    REQUIRE(f != NULL, "cannot open %s", path);
    float *b = malloc(n * sizeof(float));
    int ok = b && fseek(f, (long)(skip * sizeof(float)), SEEK_SET) == 0;
    size_t got = ok ? fread(b, sizeof(float), n, f) : 0; /* REQUIRE evaluates twice */
    fclose(f);
    REQUIRE(got == n, "short read of %s", path);
    return b;
}

static void diff(const float *a, const float *b, size_t n, double *max, double *mean) {
    double m = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m)) m = d;
        s += d;
    }
    *max = m;
    *mean = s / (double)n;
}

static const svlm_preproc_params half = {0, 0, {0.5f, 0.5f, 0.5f}, {0.5f, 0.5f, 0.5f}};

static void llama_tiles(void) {
    svlm_err err = {0};
    svlm_image img;
    svlm_status st = svlm_image_load(test_data("fixtures/vision-tiny/input.png"), NULL, &img, &err);
    REQUIRE(st == SVLM_OK, "%s", err.msg);
    CHECK(img.w == 451 && img.h == 300, "size %dx%d", img.w, img.h);
    FILE *f = fopen(test_data("fixtures/vision-tiny/out-f32/bitmap_rgb_u8.bin"), "rb");
    REQUIRE(f != NULL, "bitmap missing");
    uint8_t *ref = malloc(451 * 300 * 3);
    size_t got = fread(ref, 1, 451 * 300 * 3, f);
    fclose(f);
    CHECK(got == 451 * 300 * 3 && !memcmp(ref, img.rgb, got), "decoded PNG differs from llama.cpp's bitmap");
    free(ref);

    svlm_preproc_params p = half;
    p.tile = 128;
    p.longest_edge = 256;
    svlm_tiles t;
    st = svlm_preprocess_image(&img, &p, &t, &err);
    REQUIRE(st == SVLM_OK, "%s", err.msg);
    CHECK(t.n_tiles == 5 && t.rows == 2 && t.cols == 2 && t.size == 128, "grid %dx%d, %d tiles", t.cols,
          t.rows, t.n_tiles);
    static const char *chunks[] = {"01", "03", "05", "07", "09"};
    for (int k = 0; k < 5 && k < t.n_tiles; k++) {
        char path[256];
        snprintf(path, sizeof path, "fixtures/vision-tiny/out-f32/chunk_%s_pixels.f32", chunks[k]);
        float *r = read_f32(test_data(path), 3 * 128 * 128, 0);
        double mx, mean;
        diff(r, t.pixels + (size_t)k * 3 * 128 * 128, 3 * 128 * 128, &mx, &mean);
        CHECK(mx <= 2e-2, "tile %d pixels max|d| %.3e", k, mx);
        if (k == 0) printf("llama.cpp tiles: tile 0 max|d| %.1e\n", mx);
        free(r);
    }
    svlm_tiles_free(&t);
    svlm_image_free(&img);

    /* Grid arithmetic (llama.cpp: float scale, each side rounded up to a tile). */
    p.tile = 512;
    p.longest_edge = 2048;
    int rw, rh;
    svlm_preproc_grid(&p, 4000, 2001, &rw, &rh);
    CHECK(rw == 2048 && rh == 1536, "4000x2001 -> %dx%d, expected 2048x1536 (4x3)", rw, rh);
    svlm_preproc_grid(&p, 1920, 1080, &rw, &rh);
    CHECK(rw == 2048 && rh == 1536, "1920x1080 -> %dx%d", rw, rh);
    svlm_preproc_grid(&p, 64, 64, &rw, &rh);
    CHECK(rw == 2048 && rh == 2048, "64x64 -> %dx%d (upscaled to 4x4)", rw, rh);
}

static void hf_video(void) {
    static const struct {
        const char *in, *ref;
        int frame;
    } cases[] = {{"f0", "video_A", 0}, {"f1", "video_A", 1}, {"f2", "video_B", 0}, {"f3", "video_C", 0}};
    svlm_preproc_params p = half;
    p.tile = 512;
    p.longest_edge = 2048;
    size_t n = 3 * 512 * 512;
    float *out = malloc(sizeof(float) * n);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char path[256];
        svlm_err err = {0};
        svlm_image img;
        snprintf(path, sizeof path, "fixtures/hf-smolvlm-preprocess/input/%s.png", cases[i].in);
        svlm_status st = svlm_image_load(test_data(path), NULL, &img, &err);
        REQUIRE(st == SVLM_OK, "%s", err.msg);
        st = svlm_preprocess_frame(&img, &p, 512, out, &err);
        REQUIRE(st == SVLM_OK, "%s", err.msg);
        snprintf(path, sizeof path, "fixtures/hf-smolvlm-preprocess/%s.f32", cases[i].ref);
        float *r = read_f32(test_data(path), n, n * (size_t)cases[i].frame);
        double mx, mean;
        diff(r, out, n, &mx, &mean);
        CHECK(mx <= 0.02 && mean <= 1e-4, "%s: video frame max|d| %.3e mean %.2e", cases[i].in, mx, mean);
        printf("HF video %s: max|d| %.2e mean %.2e\n", cases[i].in, mx, mean);
        free(r);
        svlm_image_free(&img);
    }
    free(out);
}

static void media_frames(void) {
    static const char *photos[] = {"media/astronaut_eileen_collins.png", "media/cameraman_gray.png",
                                   "media/coffee_cup.png", "media/page_printed_text.png"};
    svlm_preproc_params p = half;
    p.tile = 512;
    size_t n = 3 * 512 * 512;
    float *a = malloc(sizeof(float) * n), *b = malloc(sizeof(float) * n);
    for (size_t i = 0; i < sizeof photos / sizeof photos[0]; i++) {
        svlm_err err = {0};
        svlm_image img;
        svlm_status st = svlm_image_load(test_data(photos[i]), NULL, &img, &err);
        REQUIRE(st == SVLM_OK, "%s", err.msg);
        st = svlm_preprocess_frame(&img, &p, 512, a, &err);
        REQUIRE(st == SVLM_OK, "%s", err.msg);
        st = svlm_preprocess_frame(&img, &p, 512, b, &err);
        REQUIRE(st == SVLM_OK, "%s", err.msg);
        CHECK(!memcmp(a, b, sizeof(float) * n), "%s: not deterministic", photos[i]);
        float lo = 1e9f, hi = -1e9f;
        double mean = 0;
        for (size_t j = 0; j < n; j++) {
            lo = fminf(lo, a[j]);
            hi = fmaxf(hi, a[j]);
            mean += a[j];
        }
        mean /= (double)n;
        CHECK(lo >= -1.0f && hi <= 1.0f && hi - lo > 0.5f && fabs(mean) < 0.9, "%s: range [%g, %g] mean %g",
              photos[i], (double)lo, (double)hi, mean);
        if (strstr(photos[i], "gray")) /* a grey photo stays grey: R = G = B planes */
            CHECK(!memcmp(a, a + n / 3, sizeof(float) * n / 3) &&
                      !memcmp(a, a + 2 * n / 3, sizeof(float) * n / 3),
                  "grey photo has colour");
        svlm_image_free(&img);
    }
    free(a);
    free(b);
}

static void expect_error(const char *path, svlm_status want, const char *needle) {
    svlm_err err = {0};
    svlm_image img;
    svlm_status st = svlm_image_load(path, NULL, &img, &err);
    CHECK(st == want && strstr(err.msg, needle) && img.rgb == NULL,
          "%s: status %d, message '%s' (want %d, '%s')", path, st, err.msg, want, needle);
    svlm_image_free(&img);
}

static void write_file(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    REQUIRE(f != NULL, "cannot write %s", path);
    size_t put = fwrite(data, 1, n, f);
    fclose(f);
    REQUIRE(put == n, "short write");
}

static void bad_input(void) {
    char path[512];
    const char *tmp = test_tmpdir();
    snprintf(path, sizeof path, "%s/missing.png", tmp);
    expect_error(path, SVLM_E_IO, "cannot open");
    snprintf(path, sizeof path, "%s/empty.png", tmp);
    write_file(path, "", 0);
    expect_error(path, SVLM_E_FORMAT, "empty");

    FILE *f = fopen(test_data("media/chelsea_cat.png"), "rb");
    REQUIRE(f != NULL, "cat missing");
    uint8_t *buf = malloc(1 << 20);
    size_t n = fread(buf, 1, 1 << 20, f);
    fclose(f);
    snprintf(path, sizeof path, "%s/truncated.png", tmp);
    write_file(path, buf, n / 2);
    expect_error(path, SVLM_E_FORMAT, "truncated");
    buf[n / 2] ^= 0x55; /* a flipped byte inside an IDAT chunk */
    snprintf(path, sizeof path, "%s/flipped.png", tmp);
    write_file(path, buf, n);
    expect_error(path, SVLM_E_FORMAT, "CRC");
    free(buf);

    snprintf(path, sizeof path, "%s/text.png", tmp);
    write_file(path, "hello, not an image\n", 20);
    expect_error(path, SVLM_E_UNSUPPORTED, "unknown image format");
    static const uint8_t jpeg[] = {0xFF, 0xD8, 0xFF, 0xE0, 0, 16, 'J', 'F', 'I', 'F', 0};
    snprintf(path, sizeof path, "%s/x.jpg", tmp);
    write_file(path, jpeg, sizeof jpeg);
    expect_error(path, SVLM_E_UNSUPPORTED, "JPEG needs FFmpeg");
    snprintf(path, sizeof path, "%s/short.ppm", tmp);
    write_file(path, "P6\n4 4\n255\nabc", 14);
    expect_error(path, SVLM_E_FORMAT, "truncated");
    snprintf(path, sizeof path, "%s/huge.ppm", tmp);
    write_file(path, "P6\n99999 99999\n255\n", 19);
    expect_error(path, SVLM_E_LIMIT, "outside");

    /* An empty IDAT chunk before the real one is valid PNG (a fuzzer found the decoder copying from
     * its still-NULL buffer): a 1x1 grey pixel of 0x80. */
    static const uint8_t empty_idat[] = {
        0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52,
        0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x00, 0x00, 0x00, 0x3a, 0x7e, 0x9b,
        0x55, 0x00, 0x00, 0x00, 0x00, 0x49, 0x44, 0x41, 0x54, 0x35, 0xaf, 0x06, 0x1e, 0x00, 0x00, 0x00,
        0x0a, 0x49, 0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0x68, 0x00, 0x00, 0x00, 0x82, 0x00, 0x81, 0x77,
        0xcd, 0x72, 0xb6, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82};
    svlm_image grey = {0};
    svlm_err gerr = {0};
    CHECK(svlm_image_decode_png(empty_idat, sizeof empty_idat, &grey, &gerr) == SVLM_OK && grey.w == 1 &&
              grey.h == 1 && grey.rgb[0] == 0x80 && grey.rgb[1] == 0x80 && grey.rgb[2] == 0x80,
          "a PNG with an empty IDAT chunk: %s", gerr.msg);
    svlm_image_free(&grey);

    /* A good PPM decodes: 2x1, red then grey (maxval 15 rescaled to 255). */
    snprintf(path, sizeof path, "%s/ok.ppm", tmp);
    write_file(path, "P6\n# comment\n2 1\n15\n\x0f\x00\x00\x08\x08\x08", 26);
    svlm_err err = {0};
    svlm_image img;
    svlm_status st = svlm_image_load(path, NULL, &img, &err);
    CHECK(st == SVLM_OK && img.w == 2 && img.h == 1 && img.rgb[0] == 255 && img.rgb[1] == 0 &&
              img.rgb[3] == 136,
          "PPM decode: %s", err.msg);
    svlm_image_free(&img);
}

int test_main(void) {
    test_data_or_skip();
    llama_tiles();
    hf_video();
    media_frames();
    bad_input();
    return 0;
}
