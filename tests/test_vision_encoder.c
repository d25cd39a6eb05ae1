/*
 * The SigLIP encoder + idefics3 connector against llama.cpp's outputs in
 * fixtures/vision-tiny (F32 and F16 projectors): per-tile embeddings within 1e-3 (F32) /
 * 4e-3 (F16) max abs, from the fixture's own pixels; every named intermediate of tile 0 is
 * compared too (tolerance 1e-3 relative to the tensor's scale) so a mismatch points at a step.
 * Measured here: F32 embeddings 1.9e-4, F16 1.4e-3.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "vision/encoder.h"

static float *read_f32(const char *path, size_t n) {
    FILE *f = fopen(path, "rb");
    REQUIRE(f != NULL, "cannot open %s", path);
    float *b = malloc(n * sizeof(float));
    size_t got = b ? fread(b, sizeof(float), n, f) : 0; /* REQUIRE evaluates its condition twice */
    REQUIRE(got == n, "short read of %s", path);
    fclose(f);
    return b;
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m)) m = d; /* NaN counts as a mismatch */
    }
    return m;
}

/* ---- intermediates: llama.cpp's chunk_01_acts.{json,f32}, matched by name and order ------- */

typedef struct {
    const float *ref; /* the whole acts file */
    const char *json; /* its index */
    int n_checked;
    double worst_rel;
    char worst[64];
} acts_check;

/* Finds the next tensor named `name` after the cursor in the index: returns offset and count. */
static int acts_find(const char *json, const char *name, int layer, size_t *off, size_t *n) {
    char key[96];
    if (layer >= 0)
        snprintf(key, sizeof key, "\"name\": \"%s-%d\"", name, layer);
    else
        snprintf(key, sizeof key, "\"name\": \"%s\"", name);
    const char *p = strstr(json, key);
    if (!p) return 0;
    const char *o = strstr(p, "\"offset_bytes\": "), *c = strstr(p, "\"n_floats\": ");
    if (!o || !c) return 0;
    *off = strtoull(o + 16, NULL, 10) / 4;
    *n = strtoull(c + 12, NULL, 10);
    return 1;
}

static void on_trace(void *user, const char *name, int layer, const float *data, int64_t rows, int64_t dim) {
    acts_check *ac = user;
    const char *ref_name = !strcmp(name, "post_ln") ? "norm_b" : name;
    size_t off, n;
    if (!acts_find(ac->json, ref_name, layer, &off, &n)) return;
    if (n != (size_t)(rows * dim)) return;
    double scale = 0;
    for (size_t i = 0; i < n; i++)
        scale = fmax(scale, fabs(ac->ref[off + i]));
    double rel = max_abs_diff(data, ac->ref + off, n) / fmax(scale, 1e-6);
    ac->n_checked++;
    if (getenv("SVLM_TEST_VERBOSE"))
        printf("  %-18s %2d  max|d|/scale %.2e  scale %.3g\n", name, layer, rel, scale);
    if (rel > ac->worst_rel) {
        ac->worst_rel = rel;
        snprintf(ac->worst, sizeof ac->worst, "%s-%d", name, layer);
    }
    CHECK(rel < 1e-3, "intermediate %s (layer %d) differs: max|d|/scale = %.2e", name, layer, rel);
}

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    REQUIRE(f != NULL, "cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    size_t got = s && n >= 0 ? fread(s, 1, (size_t)n, f) : 0;
    REQUIRE(got == (size_t)n, "short read of %s", path);
    s[n] = 0;
    fclose(f);
    return s;
}

static void run(const char *dt, double tol) {
    char path[512];
    snprintf(path, sizeof path, "fixtures/vision-tiny/models/tiny-smolvlm-mmproj-%s.gguf", dt);
    svlm_err err = {0};
    svlm_status st;
    svlm_mmproj *m = NULL;
    st = svlm_mmproj_load(test_data(path), &m, &err);
    REQUIRE(st == SVLM_OK, "%s", err.msg);
    const svlm_mmproj_hparams *hp = &m->hp;
    CHECK(hp->image_size == 128 && hp->patch_size == 16 && hp->n_embd == 96 && hp->n_layer == 3 &&
              hp->n_head == 6 && hp->n_ff == 224 && hp->scale_factor == 2 && hp->tokens_per_tile == 16 &&
              hp->proj_dim == 96 && hp->preproc_image_size == 256 && !m->ffn_swapped,
          "%s hparams not as the fixture README states", dt);
    CHECK(fabsf(hp->eps - 1e-6f) < 1e-9f, "eps %g", (double)hp->eps);

    svlm_kernels *k = NULL;
    st = svlm_kernels_create_cpu(1, &k, &err);
    REQUIRE(st == SVLM_OK, "%s", err.msg);
    static const char *chunks[] = {"01", "03", "05", "07", "09"};
    const int n = 5;
    size_t tile = 3 * 128 * 128, emb = 16 * 96;
    float *px = malloc(sizeof(float) * tile * n), *out = malloc(sizeof(float) * emb * n);
    REQUIRE(px && out, "oom");
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "fixtures/vision-tiny/out-%s/chunk_%s_pixels.f32", dt, chunks[i]);
        float *p = read_f32(test_data(path), tile);
        memcpy(px + tile * i, p, sizeof(float) * tile);
        free(p);
    }
    /* Batched: all five tiles in one call (batch 3 forces a split into 3 + 2). */
    svlm_vision_ctx *vc = NULL;
    st = svlm_vision_ctx_create(m, k, 3, &vc, &err);
    REQUIRE(st == SVLM_OK, "%s", err.msg);
    st = svlm_vision_encode(vc, px, n, out, &err);
    REQUIRE(st == SVLM_OK, "%s", err.msg);
    double worst = 0;
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "fixtures/vision-tiny/out-%s/chunk_%s_embd.f32", dt, chunks[i]);
        float *ref = read_f32(test_data(path), emb);
        double d = max_abs_diff(out + emb * i, ref, emb);
        worst = fmax(worst, d);
        CHECK(d <= tol, "%s tile %d: embeddings max|d| %.3e > %.0e", dt, i, d, tol);
        free(ref);
    }
    printf("%s: embeddings max|d| %.2e (tolerance %.0e)\n", dt, worst, tol);
    svlm_vision_ctx_free(vc);

    /* One tile alone, with intermediates traced against llama.cpp's. */
    if (!strcmp(dt, "f32")) {
        snprintf(path, sizeof path, "fixtures/vision-tiny/out-%s/chunk_01_acts.f32", dt);
        acts_check ac = {0};
        ac.ref = read_f32(test_data(path), 1597440 / 4);
        snprintf(path, sizeof path, "fixtures/vision-tiny/out-%s/chunk_01_acts.json", dt);
        char *json = read_text(test_data(path));
        ac.json = json;
        st = svlm_vision_ctx_create(m, k, 1, &vc, &err);
        REQUIRE(st == SVLM_OK, "%s", err.msg);
        svlm_vision_set_trace(vc, on_trace, &ac);
        float *one = malloc(sizeof(float) * emb);
        st = svlm_vision_encode(vc, px, 1, one, &err);
        REQUIRE(st == SVLM_OK, "%s", err.msg);
        /* Batch and single runs may sum in another order; F16 rounding can then flip a value. */
        double d1 = max_abs_diff(one, out, emb);
        CHECK(d1 < 1e-3, "tile 0 alone differs from tile 0 in a batch by %.2e", d1);
        CHECK(ac.n_checked >= 40, "only %d intermediates matched by name", ac.n_checked);
        printf("%s: %d intermediates, worst %s at %.2e of scale\n", dt, ac.n_checked, ac.worst, ac.worst_rel);
        free(one);
        free(json);
        free((void *)ac.ref);
        svlm_vision_ctx_free(vc);
    }
    free(px);
    free(out);
    svlm_kernels_destroy(k);
    svlm_mmproj_free(m);
}

int test_main(void) {
    test_data_or_skip();
    run("f32", 1e-3);
    run("f16", 4e-3);
    return 0;
}
