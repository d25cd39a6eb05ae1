/*
 * The STC feature cache on patches whose side is not a multiple of 4 (SmolVLM2-2.2B's 14-px
 * patches; `svlm mkmodel --shape tiny-p14`: 60-px tiles, 4 x 4 patches). Change detection summarises
 * a patch by block means; motion inside one patch that keeps its mean colour (an edge moved, a
 * stroke swapped sides) must still make it dynamic, as it does for 16-px patches. Before the fix a
 * 14-px patch was one block (its mean only), so such a frame was "reused": the previous frame's
 * features, stale, against a full recompute that differs.
 * Needs the svlm binary (SVLM_BIN) to make the model.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "test.h"
#include "test_mkmodel_run.h"
#include "vision/encoder.h"
#include "vision/mmproj.h"
#include "vision/stc.h"

int test_main(void) {
    char mmproj[1024];
    test_mkmodel_smolvlm("stc-p14", "--shape tiny-p14 --type f32 --seed 11", mmproj, sizeof mmproj);

    svlm_err err = {0};
    svlm_mmproj *m = NULL;
    svlm_kernels *k = NULL;
    svlm_vision_ctx *vc = NULL;
    REQUIRE(svlm_mmproj_load(mmproj, &m, &err) == SVLM_OK, "%s", err.msg);
    REQUIRE(svlm_kernels_create_cpu(1, &k, &err) == SVLM_OK, "%s", err.msg);
    REQUIRE(svlm_vision_ctx_create(m, k, 1, &vc, &err) == SVLM_OK, "%s", err.msg);
    const int S = m->hp.image_size, p = m->hp.patch_size, T = m->hp.tokens_per_tile, E = m->hp.proj_dim;
    REQUIRE(p % 4 != 0, "tiny-p14 should have patches that 4 does not divide (p %d)", p);
    const size_t plane = (size_t)S * S, tile = 3 * plane, TE = (size_t)T * E;
    float *a = malloc(sizeof(float) * tile), *b = malloc(sizeof(float) * tile),
          *out = malloc(sizeof(float) * TE), *full = malloc(sizeof(float) * TE);
    int32_t *kept = malloc(sizeof(int32_t) * (size_t)T);
    REQUIRE(a && b && out && full && kept, "out of memory");
    for (size_t i = 0; i < tile; i++) /* a smooth picture */
        a[i] = 0.5f * sinf(0.05f * (float)(i % (size_t)S)) * cosf(0.07f * (float)(i / (size_t)S));

    svlm_stc_controls ctl;
    svlm_stc_controls_default(&ctl);
    ctl.prune = 0;
    svlm_stc *s = NULL;
    svlm_stc_frame_info info;
    REQUIRE(svlm_stc_create(vc, &ctl, &s, &err) == SVLM_OK, "%s", err.msg);
    REQUIRE(svlm_stc_frame(s, a, out, kept, NULL, &info, &err) == SVLM_OK, "%s", err.msg);
    CHECK(info.path == SVLM_STC_FULL, "first frame path %d", info.path);

    /* patch (1, 1): its left half brighter by 0.6 and its right half darker by 0.6 (mean kept) */
    memcpy(b, a, sizeof(float) * tile);
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < p; y++)
            for (int x = 0; x < p; x++)
                b[(size_t)c * plane + (size_t)(p + y) * S + (size_t)(p + x)] += x < p / 2 ? 0.6f : -0.6f;
    REQUIRE(svlm_stc_frame(s, b, out, kept, NULL, &info, &err) == SVLM_OK, "%s", err.msg);
    REQUIRE(svlm_vision_encode(vc, b, 1, full, &err) == SVLM_OK, "%s", err.msg);
    const double d = test_max_abs_diff(out, full, TE);
    printf("%d-px patches, an edge moved inside one: path %d, %d of %d recomputed, max|d| vs full %.3g\n", p,
           info.path, info.n_recomputed, info.n_patches, d);
    CHECK(info.path == SVLM_STC_PARTIAL && info.n_recomputed == 1,
          "motion inside a %d-px patch: path %d (0 full, 1 partial, 2 reused), %d recomputed; expected "
          "a partial pass of that patch",
          p, info.path, info.n_recomputed);
    double mc = 1;
    for (int t = 0; t < T; t++) {
        double ab = 0, aa = 0, bb = 0;
        for (int e = 0; e < E; e++) {
            const double x = out[(size_t)t * E + e], y = full[(size_t)t * E + e];
            ab += x * y, aa += x * x, bb += y * y;
        }
        mc = fmin(mc, ab / sqrt(aa * bb));
    }
    CHECK(mc >= 0.98 && d > 0, "fidelity against the full recompute: min token cosine %.4f, max|d| %.3g", mc,
          d);
    svlm_stc_free(s);
    free(a);
    free(b);
    free(out);
    free(full);
    free(kept);
    svlm_vision_ctx_free(vc);
    svlm_kernels_destroy(k);
    svlm_mmproj_free(m);
    return 0;
}
