/*
 * Tile-grid arithmetic of still images against Hugging Face's SmolVLM processor
 * (smolvlm2-spec.md, image steps 1-3; the rule of /work/shared/docs/checks/grid_compare.py):
 *  - the longest side always becomes exactly ceil(L / S) tiles, never one more (llama.cpp's
 *    float product L / w * w overshoots a multiple of S for many sizes when L = 1536: 3000 x 2000
 *    gave 5 x 3 tiles on SmolVLM2-2.2B instead of HF's 4 x 3);
 *  - the short side is HF's count or one more (the documented llama.cpp difference: it rounds the
 *    scaled side up where HF truncates it first), swept over every size up to 700 x 700 and a set
 *    of camera sizes, for the 256M/500M (2048/512), 2.2B (1536/384) and fixture (256/128) settings.
 * No data needed.
 */
#include <math.h>
#include <stdio.h>

#include "test.h"
#include "vision/preprocess.h"

/* HF's grid (cols, rows) for a w0 x h0 image; 0 x 0 means unsplit (grid_compare.py's hf_grid). */
static void hf_grid(int w0, int h0, int L, int M, int *cols, int *rows) {
    int w, h;
    if (w0 >= h0) {
        w = L;
        h = (int)((double)w / ((double)w0 / h0));
        h += h % 2;
    } else {
        h = L;
        w = (int)((double)h * ((double)w0 / h0));
        w += w % 2;
    }
    h = h < 1 ? 1 : h;
    w = w < 1 ? 1 : w;
    double ar = (double)w / h;
    if (w >= h) {
        w = (int)ceil((double)w / M) * M;
        h = (int)((double)w / ar);
        h = (int)ceil((double)h / M) * M;
    } else {
        h = (int)ceil((double)h / M) * M;
        w = (int)((double)h * ar);
        w = (int)ceil((double)w / M) * M;
    }
    *cols = w / M;
    *rows = h / M;
}

static int failures_shown;

static void check_size(int w, int h, int L, int S) {
    svlm_preproc_params p = {S, L, {0.5f, 0.5f, 0.5f}, {0.5f, 0.5f, 0.5f}};
    int rw, rh, hc, hr;
    svlm_preproc_grid(&p, w, h, &rw, &rh);
    hf_grid(w, h, L, S, &hc, &hr);
    const int cols = rw / S, rows = rh / S, most = (L + S - 1) / S;
    const int longest_ok = w >= h ? cols == most : rows == most;
    const int short_ok = w >= h ? rows >= hr && rows <= hr + 1 : cols >= hc && cols <= hc + 1;
    const int ok = rw % S == 0 && rh % S == 0 && longest_ok && short_ok && cols <= most && rows <= most;
    CHECK(ok || failures_shown > 20, "%dx%d, L %d, S %d: %dx%d tiles, HF %dx%d", w, h, L, S, cols, rows, hc,
          hr);
    if (!ok) failures_shown++;
}

int test_main(void) {
    static const int settings[][2] = {{2048, 512}, {1536, 384}, {256, 128}};
    static const int cameras[][2] = {{3000, 2000},   {2000, 3000}, {6000, 4000}, {4032, 3024}, {1920, 1080},
                                     {1280, 720},    {640, 480},   {4000, 2001}, {16384, 1},   {1, 16384},
                                     {16384, 16383}, {21, 21},     {7, 5}};
    for (size_t s = 0; s < sizeof settings / sizeof settings[0]; s++) {
        const int L = settings[s][0], S = settings[s][1];
        for (int w = 1; w <= 700; w++)
            for (int h = 1; h <= 700; h += w % 7 + 1)
                check_size(w, h, L, S);
        for (size_t c = 0; c < sizeof cameras / sizeof cameras[0]; c++)
            check_size(cameras[c][0], cameras[c][1], L, S);
    }
    /* the cases named above, exactly */
    svlm_preproc_params p = {384, 1536, {0.5f, 0.5f, 0.5f}, {0.5f, 0.5f, 0.5f}};
    int rw, rh;
    svlm_preproc_grid(&p, 3000, 2000, &rw, &rh);
    CHECK(rw == 1536 && rh == 1152, "3000x2000 on 2.2B -> %dx%d, expected 1536x1152 (4x3 tiles)", rw, rh);
    svlm_preproc_grid(&p, 21, 21, &rw, &rh);
    CHECK(rw == 1536 && rh == 1536, "21x21 on 2.2B -> %dx%d, expected 1536x1536 (4x4 tiles)", rw, rh);
    /* llama.cpp's rounding up of the short side is kept (the fixtures' and tests' reference) */
    p = (svlm_preproc_params){512, 2048, {0.5f, 0.5f, 0.5f}, {0.5f, 0.5f, 0.5f}};
    svlm_preproc_grid(&p, 4000, 2001, &rw, &rh);
    CHECK(rw == 2048 && rh == 1536, "4000x2001 -> %dx%d, expected 2048x1536 (llama.cpp's 4x3)", rw, rh);
    p = (svlm_preproc_params){128, 256, {0.5f, 0.5f, 0.5f}, {0.5f, 0.5f, 0.5f}};
    svlm_preproc_grid(&p, 451, 300, &rw, &rh);
    CHECK(rw == 256 && rh == 256, "451x300 (the fixture photo) -> %dx%d, expected 256x256", rw, rh);
    printf("grid checks: %d failures\n", failures_shown);
    return 0;
}
