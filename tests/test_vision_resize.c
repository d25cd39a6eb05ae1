/*
 * The antialiased bicubic resize (svlm_resize_bicubic_aa) against a plain reference written here,
 * one value at a time: Keys' cubic (a = -0.5) widened by the downscale factor, weights formed in
 * double and normalised, taps summed in float in order, rounded half away from zero and clamped,
 * the horizontal pass first with 8-bit rounding between. svlm's blocked, vectorised passes, in
 * each build this CPU runs (portable, AVX2, AVX-512; SVLM_SIMD picks), must give the same bytes,
 * exactly, for downscales, upscales, unchanged sides, one-pixel images and edges that do not
 * fill a block.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "test_rand.h"
#include "vision/image.h"
#include "vision/resize.h"

/* the reference's sums as plain multiplies and adds, as svlm's (no fused multiply-adds) */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

/* Keys' cubic with a = -0.5 in Pillow's form (weights formed in double, then normalised) */
static double keys(double x) {
    const double a = -0.5;
    x = fabs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0;
    if (x < 2.0) return (((x - 5.0) * x + 8.0) * x - 4.0) * a;
    return 0.0;
}

static uint8_t round_u8(float v) {
    if (!(v > 0.0f)) return 0;
    if (v >= 255.0f) return 255;
    return (uint8_t)roundf(v);
}

/* One output value along a line of `in` samples (stride `step` bytes) at output index o of out;
 * w has room for `in` weights. */
static uint8_t ref_tap(const uint8_t *line, size_t step, int in, int out, int o, double *w) {
    const double scale = (double)in / out, fscale = scale > 1.0 ? scale : 1.0, support = 2.0 * fscale;
    const double center = (o + 0.5) * scale;
    int lo = (int)(center - support + 0.5), hi = (int)(center + support + 0.5);
    lo = lo < 0 ? 0 : lo;
    hi = hi > in ? in : hi;
    int n = hi - lo, max_taps = (int)ceil(support) * 2 + 1;
    n = n > max_taps ? max_taps : n;
    double sum = 0.0;
    for (int k = 0; k < n; k++)
        sum += w[k] = keys((lo + k - center + 0.5) / fscale);
    float acc = 0.0f;
    for (int k = 0; k < n; k++)
        acc += (float)(sum != 0.0 ? w[k] / sum : 0.0) * (float)line[(size_t)(lo + k) * step];
    return round_u8(acc);
}

static void ref_resize(const svlm_image *src, int w, int h, uint8_t *dst) {
    uint8_t *mid = malloc((size_t)w * src->h * 3);
    double *wbuf = malloc(sizeof(double) * (size_t)(src->w > src->h ? src->w : src->h));
    REQUIRE(mid && wbuf, "out of memory");
    for (int y = 0; y < src->h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++)
                mid[((size_t)y * w + x) * 3 + c] =
                    ref_tap(src->rgb + (size_t)y * src->w * 3 + c, 3, src->w, w, x, wbuf);
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++)
            for (int c = 0; c < 3; c++)
                dst[((size_t)y * w + x) * 3 + c] =
                    ref_tap(mid + (size_t)x * 3 + c, (size_t)w * 3, src->h, h, y, wbuf);
    free(mid);
    free(wbuf);
}

static void compare(int sw, int sh, int dw, int dh, int pattern, uint64_t *rng) {
    svlm_err err = {0};
    svlm_image src, got = {0};
    CHECK(svlm_image_alloc(&src, sw, sh, &err) == SVLM_OK, "%s", err.msg);
    for (size_t i = 0; i < (size_t)sw * sh * 3; i++) /* noise, or hard black/white edges (overshoot) */
        src.rgb[i] = pattern ? (test_rand_u64(rng) & 1 ? 255 : 0) : (uint8_t)test_rand_u64(rng);
    uint8_t *want = malloc((size_t)dw * dh * 3);
    REQUIRE(want, "out of memory");
    ref_resize(&src, dw, dh, want);
    CHECK(svlm_resize_bicubic_aa(&src, dw, dh, &got, &err) == SVLM_OK, "%dx%d -> %dx%d: %s", sw, sh, dw, dh,
          err.msg);
    if (got.rgb && got.w == dw && got.h == dh) {
        size_t bad = 0, first = 0;
        for (size_t i = 0; i < (size_t)dw * dh * 3; i++)
            if (got.rgb[i] != want[i] && !bad++) first = i;
        CHECK(!bad, "%dx%d -> %dx%d: %zu bytes differ from the reference, the first at %zu (%d, want %d)", sw,
              sh, dw, dh, bad, first, bad ? got.rgb[first] : 0, bad ? want[first] : 0);
    } else {
        CHECK(0, "%dx%d -> %dx%d: got a %dx%d image", sw, sh, dw, dh, got.w, got.h);
    }
    free(want);
    svlm_image_free(&got);
    svlm_image_free(&src);
}

static void all_sizes(uint64_t seed) {
    uint64_t rng = seed;
    /* the video path's shapes: 4:3 and 16:9 frames to 512 on the long side, then the square tile */
    compare(640, 480, 512, 384, 0, &rng);
    compare(512, 384, 512, 512, 1, &rng);
    compare(1280, 720, 512, 288, 0, &rng);
    /* unchanged sides (skipped passes), one pixel, blocks cut short, strong up- and downscales */
    const int fixed[][4] = {{100, 100, 100, 37}, {100, 100, 37, 100}, {64, 64, 64, 64}, {1, 1, 5, 3},
                            {5, 3, 1, 1},        {513, 1, 2, 9},      {3, 700, 64, 64}, {9, 17, 300, 7}};
    for (size_t i = 0; i < sizeof fixed / sizeof fixed[0]; i++)
        compare(fixed[i][0], fixed[i][1], fixed[i][2], fixed[i][3], (int)i & 1, &rng);
    /* enough values that a rounding difference (a fused multiply-add: about one case in 300)
     * shows */
    for (int i = 0; i < 600; i++) {
        int sw = 1 + (int)(test_rand_u64(&rng) % 160), sh = 1 + (int)(test_rand_u64(&rng) % 160);
        int dw = i % 5 == 0 ? sw : 1 + (int)(test_rand_u64(&rng) % 160);
        int dh = i % 7 == 0 ? sh : 1 + (int)(test_rand_u64(&rng) % 160);
        compare(sw, sh, dw, dh, i % 3 == 0, &rng);
    }
}

int test_main(void) {
    /* each build of the passes this CPU runs (SVLM_SIMD caps the level, as for the kernels) */
    const char *levels[] = {"scalar", "avx2", "avx512"};
    for (size_t i = 0; i < sizeof levels / sizeof levels[0]; i++) {
        setenv("SVLM_SIMD", levels[i], 1);
        all_sizes(0x5eed5eedULL + i);
    }
    unsetenv("SVLM_SIMD");
    return 0;
}
