/*
 * The STC feature cache on the vision-tiny fixture (F32 projector, one thread):
 *  - STC off returns exactly svlm_vision_encode's output (memcmp), which is itself within 1e-3
 *    of llama.cpp's embeddings; with STC on, a first frame (a full pass) is bit-identical too;
 *  - an unchanged frame reuses the reference outright (bit-identical to it);
 *  - the partial pass with every patch dynamic equals a full recompute within 1e-4 (every key
 *    and value is then new, so this checks the row gather/scatter and the key/value swap);
 *  - with a few patches changed only those are recomputed and the output keeps cosine >= 0.98
 *    against a full recompute for every token;
 *  - a uniform exposure change alone (gain and offset) is not motion: no patch is dynamic.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "vision/encoder.h"
#include "vision/stc.h"

static float *read_f32(const char *path, size_t n) {
    FILE *f = fopen(path, "rb");
    REQUIRE(f != NULL, "cannot open %s", path);
    float *b = malloc(n * sizeof(float));
    size_t got = b ? fread(b, sizeof(float), n, f) : 0;
    REQUIRE(got == n, "short read of %s", path);
    fclose(f);
    return b;
}

static double cosine(const float *a, const float *b, int n) {
    double ab = 0, aa = 0, bb = 0;
    for (int i = 0; i < n; i++)
        ab += (double)a[i] * b[i], aa += (double)a[i] * a[i], bb += (double)b[i] * b[i];
    return ab / sqrt(aa * bb);
}

static double min_token_cos(const float *a, const float *b, int T, int E) {
    double m = 1;
    for (int t = 0; t < T; t++)
        m = fmin(m, cosine(a + (size_t)t * E, b + (size_t)t * E, E));
    return m;
}

static double max_abs(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m)) m = d;
    }
    return m;
}

/* Adds v to every pixel of patch (py, px) (16-px patches of a 128-px tile). */
static void paint_patch(float *px, int py, int pxl, float v) {
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < 16; y++)
            for (int x = 0; x < 16; x++)
                px[(size_t)c * 128 * 128 + (size_t)(py * 16 + y) * 128 + pxl * 16 + x] += v;
}

int test_main(void) {
    test_data_or_skip();
    svlm_err err = {0};
    svlm_mmproj *m = NULL;
    svlm_kernels *k = NULL;
    svlm_vision_ctx *vc = NULL;
    REQUIRE(
        !svlm_mmproj_load(test_data("fixtures/vision-tiny/models/tiny-smolvlm-mmproj-f32.gguf"), &m, &err),
        "%s", err.msg);
    REQUIRE(!svlm_kernels_create_cpu(1, &k, &err), "%s", err.msg);
    REQUIRE(!svlm_vision_ctx_create(m, k, 1, &vc, &err), "%s", err.msg);
    const int T = m->hp.tokens_per_tile, E = m->hp.proj_dim, N = m->hp.n_patches;
    const size_t tile = 3 * 128 * 128, TE = (size_t)T * E;
    float *a = read_f32(test_data("fixtures/vision-tiny/out-f32/chunk_01_pixels.f32"), tile);
    float *ref = read_f32(test_data("fixtures/vision-tiny/out-f32/chunk_01_embd.f32"), TE);
    float *b = malloc(sizeof(float) * tile), *plain = malloc(sizeof(float) * TE),
          *out = malloc(sizeof(float) * TE);
    int32_t kept[64];
    REQUIRE(b && plain && out && T <= 64, "setup");
    REQUIRE(!svlm_vision_encode(vc, a, 1, plain, &err), "%s", err.msg);
    CHECK(max_abs(plain, ref, TE) < 1e-3, "plain encoder vs llama.cpp %.2e", max_abs(plain, ref, TE));

    /* off: the plain encoder, bit for bit, every token kept */
    svlm_stc_controls ctl;
    svlm_stc_controls_off(&ctl);
    svlm_stc *s = NULL;
    svlm_stc_frame_info info;
    REQUIRE(!svlm_stc_create(vc, &ctl, &s, &err), "%s", err.msg);
    for (int rep = 0; rep < 2; rep++) {
        REQUIRE(!svlm_stc_frame(s, a, out, kept, NULL, &info, &err), "%s", err.msg);
        CHECK(!memcmp(out, plain, sizeof(float) * TE), "STC off differs from the plain encoder (frame %d)",
              rep);
        CHECK(info.n_kept == T && kept[0] == 0 && kept[T - 1] == T - 1, "STC off kept %d of %d", info.n_kept,
              T);
    }
    svlm_stc_free(s);

    /* on: first frame full and exact; the same frame again reused outright */
    svlm_stc_controls_default(&ctl);
    REQUIRE(!svlm_stc_create(vc, &ctl, &s, &err), "%s", err.msg);
    REQUIRE(!svlm_stc_frame(s, a, out, kept, NULL, &info, &err), "%s", err.msg);
    CHECK(info.path == SVLM_STC_FULL && info.reason == SVLM_STC_FIRST, "first frame path %d reason %d",
          info.path, info.reason);
    CHECK(!memcmp(out, plain, sizeof(float) * TE), "first frame with STC on differs from the plain encoder");
    REQUIRE(!svlm_stc_frame(s, a, out, kept, NULL, &info, &err), "%s", err.msg);
    CHECK(info.path == SVLM_STC_REUSED && info.n_recomputed == 0, "unchanged frame: path %d", info.path);
    CHECK(!memcmp(out, plain, sizeof(float) * TE), "reused frame differs from the reference");
    CHECK(info.n_kept == ctl.keep_floor, "unchanged frame handed %d tokens, expected the floor %d",
          info.n_kept, ctl.keep_floor);

    /* exposure: b = 0.9 a + 0.05 everywhere is a global change, not motion */
    for (size_t i = 0; i < tile; i++)
        b[i] = 0.9f * a[i] + 0.05f;
    REQUIRE(!svlm_stc_frame(s, b, out, kept, NULL, &info, &err), "%s", err.msg);
    CHECK(!info.cut && info.changed_vs_prev == 0.0f, "exposure change counted as motion: %.3f changed",
          info.changed_vs_prev);
    CHECK(info.path != SVLM_STC_PARTIAL, "exposure change took the partial path");
    svlm_stc_free(s);

    /* a few patches changed: only those recomputed; fidelity against a full recompute */
    REQUIRE(!svlm_stc_create(vc, &ctl, &s, &err), "%s", err.msg);
    REQUIRE(!svlm_stc_frame(s, a, out, kept, NULL, &info, &err), "%s", err.msg);
    memcpy(b, a, sizeof(float) * tile);
    paint_patch(b, 2, 3, 0.8f);
    paint_patch(b, 5, 5, -0.7f);
    paint_patch(b, 6, 1, 0.5f);
    REQUIRE(!svlm_stc_frame(s, b, out, kept, NULL, &info, &err), "%s", err.msg);
    CHECK(info.path == SVLM_STC_PARTIAL && info.n_recomputed == 3,
          "3 changed patches: path %d, %d recomputed", info.path, info.n_recomputed);
    REQUIRE(!svlm_vision_encode(vc, b, 1, plain, &err), "%s", err.msg);
    double mc = min_token_cos(out, plain, T, E);
    printf("3 of %d patches changed: min token cosine vs full recompute %.5f\n", N, mc);
    CHECK(mc >= 0.98, "partial pass fidelity %.4f < 0.98", mc);
    svlm_stc_free(s);

    /* every patch dynamic (threshold 0), no refresh rule firing: partial pass == full pass */
    ctl.change_threshold = 0;
    ctl.max_dynamic = 1;
    ctl.cut_ratio = 1;
    ctl.drift_threshold = 2;
    REQUIRE(!svlm_stc_create(vc, &ctl, &s, &err), "%s", err.msg);
    REQUIRE(!svlm_stc_frame(s, a, out, kept, NULL, &info, &err), "%s", err.msg);
    uint32_t r = 7;
    for (size_t i = 0; i < tile; i++) {
        r = r * 1664525u + 1013904223u;
        b[i] = a[i] + 0.2f * ((float)(r >> 8) / 16777216.0f - 0.5f);
    }
    REQUIRE(!svlm_stc_frame(s, b, out, kept, NULL, &info, &err), "%s", err.msg);
    CHECK(info.path == SVLM_STC_PARTIAL && info.n_recomputed == N,
          "all-dynamic frame: path %d, %d recomputed", info.path, info.n_recomputed);
    REQUIRE(!svlm_vision_encode(vc, b, 1, plain, &err), "%s", err.msg);
    double d = max_abs(out, plain, TE);
    printf("all %d patches through the partial pass: max|d| vs full pass %.2e\n", N, d);
    CHECK(d < 1e-4, "partial pass over every patch differs from the full pass by %.2e", d);
    svlm_stc_free(s);

    /* controls by name */
    CHECK(!svlm_stc_control_set(&ctl, "keep_ratio", "0.25", &err) && ctl.keep_ratio == 0.25f,
          "keep_ratio not set");
    CHECK(!svlm_stc_control_set(&ctl, "stc", "off", &err) && !ctl.enabled, "stc off not set");
    CHECK(svlm_stc_control_set(&ctl, "keep-ratio", "1.5", &err) == SVLM_E_INVALID, "keep-ratio 1.5 accepted");
    CHECK(svlm_stc_control_set(&ctl, "dilate", "1.5", &err) == SVLM_E_INVALID, "dilate 1.5 accepted");
    CHECK(svlm_stc_control_set(&ctl, "nonsense", "1", &err) == SVLM_E_INVALID && strstr(err.msg, "nonsense"),
          "unknown control accepted");
    CHECK(svlm_stc_control_set(&ctl, "refresh-interval", "12x", &err) == SVLM_E_INVALID,
          "trailing junk accepted");

    free(a);
    free(b);
    free(ref);
    free(plain);
    free(out);
    svlm_vision_ctx_free(vc);
    svlm_kernels_destroy(k);
    svlm_mmproj_free(m);
    return 0;
}
