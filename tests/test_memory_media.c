/*
 * The memory bank on real recordings, with a pixel-space feature through the same API the
 * engine uses: each frame becomes an 8x8 grid of tokens, each token the patch's colour
 * histograms (10 bins per channel) plus its mean and spread of luminance.
 *
 * True times, written down from contact sheets of the clips (1 s and 0.25 s apart):
 *   people_indoor_one_by_one.mp4: people walk in at about 6, 23, 50, 75, 92 and 124 s
 *   (and out at about 19, 45, 70, 86, 120, 136 s).
 *   tears_of_steel_10s_cuts.mp4: hard cuts at 0.875, 2.708, 7.708 and 8.417 s (ffmpeg's
 *   scene score agrees), then a dissolve to a woman's face around 9.1 s.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "memory/memory_bank.h"
#include "pipeline/source.h"
#include "test.h"

#define GRID  8
#define T_TOK (GRID * GRID)
#define BINS  10
#define DIM   (3 * BINS + 2)

static void patch_features(const svlm_frame *fr, float *tokens) {
    for (int gy = 0; gy < GRID; gy++)
        for (int gx = 0; gx < GRID; gx++) {
            float *t = tokens + (size_t)(gy * GRID + gx) * DIM;
            memset(t, 0, DIM * sizeof(float));
            int x0 = gx * fr->width / GRID, x1 = (gx + 1) * fr->width / GRID;
            int y0 = gy * fr->height / GRID, y1 = (gy + 1) * fr->height / GRID;
            double sum = 0, sq = 0;
            int n = 0;
            for (int y = y0; y < y1; y++)
                for (int x = x0; x < x1; x++) {
                    const uint8_t *p = fr->data + (size_t)y * fr->stride + 3 * x;
                    for (int c = 0; c < 3; c++)
                        t[c * BINS + p[c] * BINS / 256] += 1;
                    double l = (0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]) / 255.0;
                    sum += l, sq += l * l, n++;
                }
            if (!n) continue;
            for (int i = 0; i < 3 * BINS; i++)
                t[i] /= (float)n;
            double mean = sum / n;
            t[3 * BINS] = (float)mean;
            t[3 * BINS + 1] = (float)sqrt(fmax(0, sq / n - mean * mean));
        }
}

/* Runs a recording through a bank; returns it flushed. */
static svlm_memory *replay(const char *file, double fps) {
    svlm_source_opts so;
    svlm_source_opts_default(&so);
    so.fps = fps;
    so.max_edge = 160;
    so.backend = SVLM_BACKEND_FFMPEG;
    svlm_source *src = NULL;
    svlm_err err = {0};
    if (!svlm_source_backend_available(SVLM_BACKEND_FFMPEG)) SKIP("no FFmpeg backend in this build");
    svlm_source_library_log(0);
    REQUIRE(svlm_source_open(&src, file, &so, &err) == SVLM_OK, "%s: %s", file, err.msg);
    svlm_memory_opts o;
    svlm_memory_opts_default(&o);
    o.dim = DIM;
    svlm_memory *m = NULL;
    REQUIRE(svlm_memory_create(&o, &m, &err) == SVLM_OK, "%s", err.msg);
    float tokens[T_TOK * DIM];
    svlm_source_item it;
    svlm_status st;
    int frames = 0;
    while ((st = svlm_source_next(src, &it, &err)) == SVLM_OK) {
        if (it.kind != SVLM_ITEM_FRAME) continue;
        patch_features(&it.frame, tokens);
        REQUIRE(svlm_memory_push(m, it.frame.pts, tokens, T_TOK, NULL, &err) == SVLM_OK, "%s", err.msg);
        svlm_frame_release(&it.frame);
        frames++;
    }
    CHECK(st == SVLM_E_END, "%s: %s", file, err.msg);
    svlm_source_close(src);
    REQUIRE(svlm_memory_flush(m, &err) == SVLM_OK, "%s", err.msg);
    printf("%s: %d frames, %d entries\n", file, frames, svlm_memory_count(m));
    return m;
}

static int count_tier(svlm_memory *m, svlm_memory_tier tier) {
    int n = 0;
    for (int i = 0; i < svlm_memory_count(m); i++) {
        svlm_memory_entry_info e;
        svlm_memory_entry(m, i, &e);
        n += e.tier == tier;
    }
    return n;
}

/* An entry of the tier starting within [t - before, t + after]. */
static int starts_near(svlm_memory *m, svlm_memory_tier tier, double t, double before, double after) {
    for (int i = 0; i < svlm_memory_count(m); i++) {
        svlm_memory_entry_info e;
        svlm_memory_entry(m, i, &e);
        if (e.tier == tier && e.t0 >= t - before && e.t0 <= t + after) return 1;
    }
    return 0;
}

static void print_events(svlm_memory *m) {
    for (int i = 0; i < svlm_memory_count(m); i++) {
        svlm_memory_entry_info e;
        svlm_memory_entry(m, i, &e);
        if (e.tier == SVLM_MEMORY_EVENT) printf("  event [%.2f, %.2f) z %.1f\n", e.t0, e.t1, e.importance);
    }
}

int test_main(void) {
    test_data_or_skip();
    const char *people = test_data("media/people_indoor_one_by_one.mp4");
    svlm_memory *m = replay(people, 2);
    print_events(m);
    static const double entering[] = {6, 23, 50, 75, 92, 124};
    for (size_t i = 0; i < sizeof entering / sizeof entering[0]; i++)
        CHECK(starts_near(m, SVLM_MEMORY_EVENT, entering[i], 2, 3),
              "no event for the person entering at %.0f s", entering[i]);
    int events = count_tier(m, SVLM_MEMORY_EVENT);
    CHECK(events >= 6 && events <= 18, "%d events for 6 people walking in and out", events);
    svlm_memory_free(m);

    const char *film = test_data("media/tears_of_steel_10s_cuts.mp4");
    m = replay(film, 4);
    print_events(m);
    static const double cuts[] = {0.875, 2.708, 7.708};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++)
        CHECK(starts_near(m, SVLM_MEMORY_MID, cuts[i], 0.01, 0.5), "no new clip at the cut at %.3f s",
              cuts[i]);
    /* the first cut falls in the detector's warm-up; the later ones are events */
    for (size_t i = 1; i < sizeof cuts / sizeof cuts[0]; i++)
        CHECK(starts_near(m, SVLM_MEMORY_EVENT, cuts[i], 0.01, 0.5), "no event at the cut at %.3f s",
              cuts[i]);
    int clips = count_tier(m, SVLM_MEMORY_MID);
    CHECK(clips >= 4 && clips <= 12, "%d clips for 5 shots", clips);
    for (int i = 0; i < svlm_memory_count(m); i++) {
        svlm_memory_entry_info e;
        svlm_memory_entry(m, i, &e);
        if (e.tier == SVLM_MEMORY_MID) printf("  clip [%.2f, %.2f)\n", e.t0, e.t1);
    }
    svlm_memory_free(m);
    return 0;
}
