/*
 * The STC feature cache on real recordings (../shared/media) with the vision-tiny F32 projector
 * (one thread), against a full recompute of every frame:
 *  - tears_of_steel_10s_cuts.mp4 at 2 fps: the excerpt has five shots (media README), so at
 *    least 4 cuts must be detected; every cut frame refreshes the reference (a full pass) and
 *    matches the full recompute (min token cosine >= 0.98);
 *  - fixed cameras (people_indoor_one_by_one, person_bicycle_car_overhead; 24 frames at 1 fps):
 *    mean token cosine vs full recompute >= 0.98, and the cache really skipped work (fewer
 *    than 75% of the encoder tokens recomputed).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/source.h"
#include "test.h"
#include "vision/encoder.h"
#include "vision/preprocess.h"
#include "vision/stc.h"

typedef struct clip_result {
    int frames, cuts, cut_frames_refreshed, reused;
    double cos_sum, cos_n, cut_cos_min;
    long long recomputed, patches;
} clip_result;

static double cosine(const float *a, const float *b, int n) {
    double ab = 0, aa = 0, bb = 0;
    for (int i = 0; i < n; i++)
        ab += (double)a[i] * b[i], aa += (double)a[i] * a[i], bb += (double)b[i] * b[i];
    return ab / sqrt(aa * bb);
}

static clip_result run_clip(svlm_vision_ctx *vc, const svlm_mmproj *m, const char *rel, double fps,
                            int max_frames) {
    clip_result r = {0};
    r.cut_cos_min = 1;
    svlm_err err = {0};
    svlm_source_opts opts;
    svlm_source_opts_default(&opts);
    opts.fps = fps;
    svlm_source *src = NULL;
    REQUIRE(!svlm_source_open(&src, test_data(rel), &opts, &err), "%s: %s", rel, err.msg);
    svlm_stc_controls ctl;
    svlm_stc_controls_default(&ctl);
    svlm_stc *s = NULL;
    REQUIRE(!svlm_stc_create(vc, &ctl, &s, &err), "%s", err.msg);
    const svlm_mmproj_hparams *hp = &m->hp;
    int T = hp->tokens_per_tile, E = hp->proj_dim;
    float *px = malloc(sizeof(float) * 3 * 128 * 128), *full = malloc(sizeof(float) * T * E),
          *out = malloc(sizeof(float) * T * E);
    int32_t *kept = malloc(sizeof(int32_t) * T);
    REQUIRE(px && full && out && kept, "oom");
    svlm_preproc_params pp = {.tile = hp->image_size, .longest_edge = hp->image_size};
    memcpy(pp.mean, hp->image_mean, sizeof pp.mean);
    memcpy(pp.std, hp->image_std, sizeof pp.std);
    while (r.frames < max_frames) {
        svlm_source_item it;
        svlm_status st = svlm_source_next(src, &it, &err);
        if (st == SVLM_E_END) break;
        REQUIRE(st == SVLM_OK, "%s: %s", rel, err.msg);
        if (it.kind != SVLM_ITEM_FRAME) continue;
        svlm_image img = {0};
        REQUIRE(!svlm_image_alloc(&img, it.frame.width, it.frame.height, &err), "%s", err.msg);
        for (int y = 0; y < img.h; y++)
            memcpy(img.rgb + (size_t)y * img.w * 3, it.frame.data + (size_t)y * it.frame.stride,
                   (size_t)img.w * 3);
        svlm_frame_release(&it.frame);
        REQUIRE(!svlm_preprocess_frame(&img, &pp, hp->image_size, px, &err), "%s", err.msg);
        svlm_image_free(&img);

        svlm_stc_frame_info info;
        REQUIRE(!svlm_stc_frame(s, px, out, kept, NULL, &info, &err), "%s", err.msg);
        REQUIRE(!svlm_vision_encode(vc, px, 1, full, &err), "%s", err.msg);
        double fmin = 1;
        for (int t = 0; t < T; t++) {
            double c = cosine(out + (size_t)t * E, full + (size_t)t * E, E);
            r.cos_sum += c;
            r.cos_n++;
            fmin = fmin < c ? fmin : c;
        }
        if (info.cut) {
            r.cuts++;
            r.cut_frames_refreshed += info.path == SVLM_STC_FULL && info.reason == SVLM_STC_CUT;
            r.cut_cos_min = fmin < r.cut_cos_min ? fmin : r.cut_cos_min;
        }
        r.reused += info.path == SVLM_STC_REUSED;
        r.recomputed += info.n_recomputed;
        r.patches += info.n_patches;
        r.frames++;
    }
    printf("%s: %d frames, %d cuts (%d refreshed, min cos at cuts %.4f), %d reused, %.1f%% recomputed, mean "
           "cos %.5f\n",
           rel, r.frames, r.cuts, r.cut_frames_refreshed, r.cut_cos_min, r.reused,
           100.0 * r.recomputed / (double)r.patches, r.cos_sum / r.cos_n);
    free(px);
    free(full);
    free(out);
    free(kept);
    svlm_stc_free(s);
    svlm_source_close(src);
    return r;
}

int test_main(void) {
    test_data_or_skip();
    if (!svlm_source_backend_available(SVLM_BACKEND_FFMPEG) &&
        !svlm_source_backend_available(SVLM_BACKEND_GST))
        SKIP("no video backend in this build");
    svlm_source_library_log(0);
    svlm_err err = {0};
    svlm_mmproj *m = NULL;
    svlm_kernels *k = NULL;
    svlm_vision_ctx *vc = NULL;
    REQUIRE(
        !svlm_mmproj_load(test_data("fixtures/vision-tiny/models/tiny-smolvlm-mmproj-f32.gguf"), &m, &err),
        "%s", err.msg);
    REQUIRE(!svlm_kernels_create_cpu(1, &k, &err), "%s", err.msg);
    REQUIRE(!svlm_vision_ctx_create(m, k, 1, &vc, &err), "%s", err.msg);

    clip_result cut = run_clip(vc, m, "media/tears_of_steel_10s_cuts.mp4", 2.0, 1000);
    CHECK(cut.frames >= 19, "only %d frames from the film excerpt", cut.frames);
    CHECK(cut.cuts >= 4, "%d scene cuts detected, the excerpt has 5 shots", cut.cuts);
    CHECK(cut.cut_frames_refreshed == cut.cuts, "%d of %d cut frames refreshed the reference",
          cut.cut_frames_refreshed, cut.cuts);
    CHECK(cut.cut_cos_min >= 0.98, "cut frames: min cosine vs full recompute %.4f < 0.98", cut.cut_cos_min);

    static const char *fixed[] = {"media/people_indoor_one_by_one.mp4",
                                  "media/person_bicycle_car_overhead.mp4"};
    for (int i = 0; i < 2; i++) {
        clip_result r = run_clip(vc, m, fixed[i], 1.0, 24);
        CHECK(r.frames == 24, "%s: %d frames", fixed[i], r.frames);
        CHECK(r.cos_sum / r.cos_n >= 0.98, "%s: mean cosine vs full recompute %.4f < 0.98", fixed[i],
              r.cos_sum / r.cos_n);
        CHECK(r.recomputed < 0.75 * (double)r.patches, "%s: %lld of %lld tokens recomputed", fixed[i],
              r.recomputed, r.patches);
    }
    svlm_vision_ctx_free(vc);
    svlm_kernels_destroy(k);
    svlm_mmproj_free(m);
    return 0;
}
