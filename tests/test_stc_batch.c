/*
 * Token compression for many streams at once (svlm_stc_plan + svlm_stc_run, the engine's batches)
 * against each stream on its own (svlm_stc_frame), on `svlm mkmodel --shape tiny` projectors
 * (F32 and Q8_0), five streams over eight frames chosen so that one batch mixes every path:
 *   0: a still picture (the reference reused), 1: a box moving across it (partial passes),
 *   2: a scene cut at frame 4 (full passes among the others), 3: a refresh every 2 frames,
 *   4: the feature cache off (a full pass every frame, no reference kept).
 * Each frame must take the same path for the same reason, keep as many tokens, and match the
 * stream-alone tokens within a tolerance of their scale: 5e-5 for F32 (the products' sums split
 * differently for other row counts; 1.1e-5 seen), 1.5e-2 for Q8_0, whose CPU products take a
 * different route by row count (activations quantized to Q8_0 for a few rows, BF16 for many: 5.6e-3
 * seen, as one stream's full pass against a batch's); F32 also keeps the same tokens. A sixth stream with
 * token compression off goes through the same run (the plain encoder beside the batch). Misuse is refused
 * with a message: a frame with no plan, one stream twice, more frames than the vision context takes.
 * As test_cuda_stc_batch (SVLM_TEST_STC_ON_GPU=1) both sides run on the GPU, whose products and
 * flash attention round differently by row count (f16 attention operands): tolerances 1e-2 and
 * 3e-2, and kept tokens only counted.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "test.h"
#include "test_mkmodel_run.h"
#include "test_gpu.h"
#include "vision/encoder.h"
#include "vision/mmproj.h"
#include "vision/stc.h"

enum { STREAMS = 6, FRAMES = 8 };

/* Stream s's frame f: a smooth picture of its own with a few events (see the header). */
static void draw(float *px, int S, int s, int f) {
    const int scene = s == 2 && f >= 4 ? 1 : 0;
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < S; y++)
            for (int x = 0; x < S; x++) {
                float v =
                    0.6f * sinf(0.11f * (float)(x + 3 * s) + 0.07f * (float)(y * (c + 1)) + 1.3f * (float)s);
                if (scene) v = 0.7f - v * 0.5f - 0.2f * (float)c;
                px[((size_t)c * S + y) * S + x] = v;
            }
    if (s == 1 || s == 3 || s == 5) { /* a bright box one patch wide moving right a patch a frame */
        const int p = 16, bx = (f % (S / p)) * p;
        for (int c = 0; c < 3; c++)
            for (int y = p; y < 2 * p; y++)
                for (int x = bx; x < bx + p; x++)
                    px[((size_t)c * S + y) * S + x] = 0.95f;
    }
}

static void check_model(const char *type, double tol, int same_kept) {
    char name[64], args[128], path[1024];
    snprintf(name, sizeof name, "stc-batch-%s", type);
    snprintf(args, sizeof args, "--shape tiny --type f32 --mmproj-type %s --seed 9", type);
    test_mkmodel_smolvlm(name, args, path, sizeof path);
    svlm_err err = {0};
    svlm_mmproj *m = NULL;
    svlm_kernels *k = NULL;
    svlm_vision_ctx *vc = NULL;
    REQUIRE(svlm_mmproj_load(path, &m, &err) == SVLM_OK, "%s", err.msg);
    if (getenv("SVLM_TEST_STC_ON_GPU")) /* test_cuda_stc_batch: the backend under test */
        k = test_gpu_backend();
    else
        REQUIRE(svlm_kernels_create_cpu(1, &k, &err) == SVLM_OK, "%s", err.msg);
    REQUIRE(svlm_vision_ctx_create(m, k, STREAMS, &vc, &err) == SVLM_OK, "%s", err.msg);
    const int S = m->hp.image_size, T = m->hp.tokens_per_tile, E = m->hp.proj_dim;
    const size_t tile = (size_t)3 * S * S, TE = (size_t)T * E;

    svlm_stc *alone[STREAMS], *batch[STREAMS];
    for (int s = 0; s < STREAMS; s++) {
        svlm_stc_controls ctl;
        svlm_stc_controls_default(&ctl);
        ctl.keep_floor = 1; /* let the pruner choose among the tiny tile's 4 tokens */
        if (s == 3) ctl.refresh_interval = 2;
        if (s == 4) ctl.cache = 0;
        if (s == 5) svlm_stc_controls_off(&ctl);
        REQUIRE(svlm_stc_create(vc, &ctl, &alone[s], &err) == SVLM_OK, "%s", err.msg);
        REQUIRE(svlm_stc_create(vc, &ctl, &batch[s], &err) == SVLM_OK, "%s", err.msg);
    }
    float *px = malloc(sizeof(float) * tile * STREAMS), *tok_a = malloc(sizeof(float) * TE),
          *tok_b = malloc(sizeof(float) * TE * STREAMS), *kept_tok = malloc(sizeof(float) * TE * STREAMS);
    int32_t *kept_a = malloc(sizeof(int32_t) * (size_t)T),
            *kept_b = malloc(sizeof(int32_t) * (size_t)T * STREAMS);
    REQUIRE(px && tok_a && tok_b && kept_tok && kept_a && kept_b, "out of memory");

    int paths[3] = {0, 0, 0}, mixed = 0;
    double worst = 0;
    for (int f = 0; f < FRAMES; f++) {
        svlm_stc_frame_info ia[STREAMS], ib[STREAMS];
        for (int s = 0; s < STREAMS; s++)
            draw(px + (size_t)s * tile, S, s, f);
        for (int s = STREAMS - 1; s >= 0; s--) /* plans in any order */
            svlm_stc_plan(batch[s], px + (size_t)s * tile, &ib[s]);
        REQUIRE(svlm_stc_run(batch, STREAMS, px, tok_b, kept_b, kept_tok, ib, &err) == SVLM_OK, "%s",
                err.msg);
        int seen[3] = {0, 0, 0};
        for (int s = 0; s < STREAMS; s++) {
            REQUIRE(svlm_stc_frame(alone[s], px + (size_t)s * tile, tok_a, kept_a, NULL, &ia[s], &err) ==
                        SVLM_OK,
                    "%s", err.msg);
            CHECK(ia[s].path == ib[s].path && ia[s].reason == ib[s].reason &&
                      ia[s].n_recomputed == ib[s].n_recomputed && ia[s].cut == ib[s].cut,
                  "%s frame %d stream %d: alone path %d (%s, %d patches), batched %d (%s, %d)", type, f, s,
                  ia[s].path, svlm_stc_reason_name(ia[s].reason), ia[s].n_recomputed, ib[s].path,
                  svlm_stc_reason_name(ib[s].reason), ib[s].n_recomputed);
            CHECK(ia[s].n_kept == ib[s].n_kept, "%s frame %d stream %d: %d tokens kept alone, %d batched",
                  type, f, s, ia[s].n_kept, ib[s].n_kept);
            for (int i = 0; same_kept && i < ia[s].n_kept && i < ib[s].n_kept; i++)
                CHECK(kept_a[i] == kept_b[(size_t)s * T + i], "%s frame %d stream %d: kept token %d differs",
                      type, f, s, i);
            double scale = 0, diff = 0;
            for (size_t i = 0; i < TE; i++) {
                scale = fmax(scale, fabs(tok_a[i]));
                diff = fmax(diff, fabs((double)tok_a[i] - tok_b[(size_t)s * TE + i]));
            }
            for (int i = 0; i < ib[s].n_kept; i++) /* the kept rows are the kept tokens */
                CHECK(!memcmp(kept_tok + ((size_t)s * T + i) * E,
                              tok_b + (size_t)s * TE + (size_t)kept_b[(size_t)s * T + i] * E,
                              sizeof(float) * (size_t)E),
                      "%s frame %d stream %d: kept row %d is not token %d", type, f, s, i,
                      kept_b[(size_t)s * T + i]);
            worst = fmax(worst, diff / scale);
            CHECK(diff <= tol * scale, "%s frame %d stream %d: batched tokens differ by %.3g (scale %.3g)",
                  type, f, s, diff, scale);
            if (s != 5) seen[ib[s].path]++;
            paths[ib[s].path]++;
        }
        mixed += seen[0] > 0 && seen[1] > 0 && seen[2] > 0;
    }
    printf(
        "%s, %s: %d full, %d partial, %d reused frames; %d batches held all three; worst difference %.3g of "
        "scale\n",
        svlm_kernels_name(k), type, paths[0], paths[1], paths[2], mixed, worst);
    CHECK(paths[0] > 0 && paths[1] > 0 && paths[2] > 0, "%s: every path should be taken", type);
    CHECK(mixed > 0, "%s: some batch should mix full, partial and reused frames", type);

    /* misuse: refused, with a message */
    svlm_stc_frame_info ib[STREAMS];
    err.msg[0] = 0;
    CHECK(svlm_stc_run(batch, 2, px, tok_b, kept_b, NULL, ib, &err) != SVLM_OK && err.msg[0],
          "a run without plans should be refused");
    svlm_stc *twice[2] = {batch[0], batch[0]};
    svlm_stc_plan(batch[0], px, &ib[0]);
    err.msg[0] = 0;
    CHECK(svlm_stc_run(twice, 2, px, tok_b, kept_b, NULL, ib, &err) != SVLM_OK && strstr(err.msg, "twice"),
          "one stream twice in a run should be refused (%s)", err.msg);
    svlm_vision_ctx *small = NULL;
    svlm_stc *one[2] = {NULL, NULL};
    svlm_stc_controls ctl;
    svlm_stc_controls_default(&ctl);
    REQUIRE(svlm_vision_ctx_create(m, k, 1, &small, &err) == SVLM_OK, "%s", err.msg);
    for (int s = 0; s < 2; s++) {
        REQUIRE(svlm_stc_create(small, &ctl, &one[s], &err) == SVLM_OK, "%s", err.msg);
        svlm_stc_plan(one[s], px + (size_t)s * tile, &ib[s]);
    }
    err.msg[0] = 0;
    CHECK(svlm_stc_run(one, 2, px, tok_b, kept_b, NULL, ib, &err) != SVLM_OK && strstr(err.msg, "takes"),
          "more frames than the vision context takes should be refused (%s)", err.msg);
    /* a refused run leaves no reference behind: the frame again is a first frame, as on a fresh stream */
    svlm_stc *fresh = NULL;
    REQUIRE(svlm_stc_create(small, &ctl, &fresh, &err) == SVLM_OK, "%s", err.msg);
    svlm_stc_frame_info again, first;
    REQUIRE(svlm_stc_frame(one[0], px, tok_a, kept_a, NULL, &again, &err) == SVLM_OK, "%s", err.msg);
    REQUIRE(svlm_stc_frame(fresh, px, tok_b, kept_b, NULL, &first, &err) == SVLM_OK, "%s", err.msg);
    CHECK(again.path == SVLM_STC_FULL && again.reason == SVLM_STC_FIRST && first.path == SVLM_STC_FULL &&
              !memcmp(tok_a, tok_b, sizeof(float) * TE),
          "%s: after a refused run the frame took path %d (%s), a fresh stream's %d", type, again.path,
          svlm_stc_reason_name(again.reason), first.path);
    svlm_stc_free(fresh);
    for (int s = 0; s < 2; s++)
        svlm_stc_free(one[s]);
    svlm_vision_ctx_free(small);

    for (int s = 0; s < STREAMS; s++) {
        svlm_stc_free(alone[s]);
        svlm_stc_free(batch[s]);
    }
    free(px);
    free(tok_a);
    free(tok_b);
    free(kept_tok);
    free(kept_a);
    free(kept_b);
    svlm_vision_ctx_free(vc);
    svlm_kernels_destroy(k);
    svlm_mmproj_free(m);
}

int test_main(void) {
    const int gpu = getenv("SVLM_TEST_STC_ON_GPU") != NULL;
    check_model("f32", gpu ? 1e-2 : 5e-5, !gpu);
    check_model("q8_0", gpu ? 3e-2 : 1.5e-2, 0);
    return 0;
}
