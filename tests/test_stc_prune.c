/*
 * The STC pruner on synthetic token grids whose answer is known by construction:
 *  - a token unlike its neighbours and the frame mean is kept on the first frame;
 *  - budgets: ratio, count and floor give the stated sizes; kept indices ascend and the kept
 *    tokens are the input rows at those indices;
 *  - an unchanged frame keeps only the floor; a frame where a few tokens changed keeps those;
 *  - a memory lookup that already holds a changed token lowers its novelty so it is dropped;
 *  - a keyframe gets the keyframe budget.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "vision/stc_prune.h"

enum { GW = 6, GH = 6, NT = GW * GH, DIM = 16 };

static void smooth_frame(float *x, uint32_t seed) {
    /* a slowly varying field plus small noise: neighbours are alike */
    uint32_t r = seed;
    for (int i = 0; i < NT; i++)
        for (int d = 0; d < DIM; d++) {
            r = r * 1664525u + 1013904223u;
            float noise = 0.01f * ((float)(r >> 8) / 16777216.0f - 0.5f);
            x[i * DIM + d] = 1.0f + 0.05f * sinf(0.3f * (float)(i % GW) + (float)d) +
                             0.05f * cosf(0.2f * (float)(i / GW) * (float)d) + noise;
        }
}

static void make_odd(float *x, int i, float sign) {
    for (int d = 0; d < DIM; d++)
        x[i * DIM + d] = sign * ((d % 2) ? 1.0f : -1.0f);
}

static int contains(const int32_t *v, int n, int x) {
    for (int i = 0; i < n; i++)
        if (v[i] == x) return 1;
    return 0;
}

static float remembered[DIM];
static void memory_lookup(void *user, const float *tokens, int n, int dim, float *sim) {
    (void)user;
    for (int i = 0; i < n; i++) {
        double ab = 0, aa = 0, bb = 0;
        for (int d = 0; d < dim; d++)
            ab += tokens[i * dim + d] * remembered[d], aa += tokens[i * dim + d] * tokens[i * dim + d],
                bb += remembered[d] * remembered[d];
        sim[i] = (float)(ab / sqrt(aa * bb));
    }
}

int test_main(void) {
    svlm_err err = {0};
    svlm_stc_controls ctl;
    svlm_stc_controls_default(&ctl);
    ctl.keep_ratio = 0.25f; /* 9 of 36 */
    ctl.keep_floor = 1;     /* so that only novelty keeps a token beyond the first */
    ctl.keyframe_ratio = 0.5f;
    svlm_stc_pruner *p = NULL;
    REQUIRE(!svlm_stc_pruner_create(&ctl, GW, GH, DIM, &p, &err), "%s", err.msg);
    CHECK(svlm_stc_pruner_create(&ctl, 0, GH, DIM, &(svlm_stc_pruner *){NULL}, &err) == SVLM_E_INVALID,
          "empty grid accepted");

    float *f = malloc(sizeof(float) * NT * DIM), *kt = malloc(sizeof(float) * NT * DIM), scores[NT];
    int32_t kept[NT];
    REQUIRE(f && kt, "oom");

    /* first frame: keyframe budget (18), the odd token 20 among them, ascending, rows copied */
    smooth_frame(f, 1);
    make_odd(f, 20, 1);
    int n = svlm_stc_prune(p, f, 0, kept, kt, scores);
    CHECK(n == 18, "first frame kept %d, expected the keyframe budget 18", n);
    CHECK(contains(kept, n, 20), "salient token 20 dropped on the first frame");
    int best = 0;
    for (int i = 1; i < NT; i++)
        best = scores[i] > scores[best] ? i : best;
    CHECK(best == 20, "highest score at %d, expected 20", best);
    for (int i = 1; i < n; i++)
        CHECK(kept[i] > kept[i - 1], "kept indices not ascending at %d", i);
    for (int i = 0; i < n; i++)
        CHECK(!memcmp(kt + i * DIM, f + kept[i] * DIM, sizeof(float) * DIM), "kept row %d is not token %d", i,
              kept[i]);

    /* the same frame again: nothing is novel, only the floor */
    n = svlm_stc_prune(p, f, 0, kept, kt, NULL);
    CHECK(n == ctl.keep_floor, "unchanged frame kept %d, expected the floor %d", n, ctl.keep_floor);

    /* two tokens change: both kept, within the budget of 9 */
    make_odd(f, 7, -1);
    make_odd(f, 29, -1);
    n = svlm_stc_prune(p, f, 0, kept, kt, NULL);
    CHECK(n >= ctl.keep_floor && n <= 9, "changed frame kept %d, expected floor..9", n);
    CHECK(contains(kept, n, 7) && contains(kept, n, 29), "changed tokens 7 and 29 not both kept");

    /* memory already holds what token 11 becomes: it is not novel */
    for (int d = 0; d < DIM; d++)
        remembered[d] = (d % 3) ? 0.5f : -2.0f;
    svlm_stc_pruner_set_memory(p, memory_lookup, NULL);
    memcpy(f + 11 * DIM, remembered, sizeof remembered);
    make_odd(f, 30, 1);
    n = svlm_stc_prune(p, f, 0, kept, kt, NULL);
    CHECK(contains(kept, n, 30), "novel token 30 dropped");
    CHECK(!contains(kept, n, 11), "token 11, already in memory, kept");
    svlm_stc_pruner_set_memory(p, NULL, NULL);

    /* keyframe: the keyframe budget again */
    n = svlm_stc_prune(p, f, 1, kept, NULL, NULL);
    CHECK(n == 18, "keyframe kept %d, expected 18", n);
    svlm_stc_pruner_free(p);

    /* a count budget, and a floor above it */
    ctl.keep_count = 5;
    ctl.keep_floor = 0;
    ctl.redundant = 0;
    REQUIRE(!svlm_stc_pruner_create(&ctl, GW, GH, DIM, &p, &err), "%s", err.msg);
    svlm_stc_prune(p, f, 0, kept, NULL, NULL);
    smooth_frame(f, 2);
    n = svlm_stc_prune(p, f, 0, kept, NULL, NULL);
    CHECK(n == 5, "count budget kept %d, expected 5", n);
    svlm_stc_pruner_free(p);
    ctl.keep_floor = 8;
    REQUIRE(!svlm_stc_pruner_create(&ctl, GW, GH, DIM, &p, &err), "%s", err.msg);
    svlm_stc_prune(p, f, 0, kept, NULL, NULL);
    n = svlm_stc_prune(p, f, 0, kept, NULL, NULL);
    CHECK(n == 8, "floor 8 over count 5 kept %d", n);
    svlm_stc_pruner_free(p);
    /* no floor, no ratio, every token redundant: an unchanged frame still hands over one token (the
     * stream takes no empty frame: it would drop it as an error) */
    ctl.keep_count = 0;
    ctl.keep_ratio = 0;
    ctl.keep_floor = 0;
    ctl.redundant = 2;
    REQUIRE(!svlm_stc_pruner_create(&ctl, GW, GH, DIM, &p, &err), "%s", err.msg);
    svlm_stc_prune(p, f, 0, kept, NULL, NULL);
    n = svlm_stc_prune(p, f, 0, kept, NULL, NULL);
    CHECK(n == 1, "an unchanged frame with floor 0 and ratio 0 kept %d tokens, expected 1", n);
    svlm_stc_pruner_free(p);
    free(f);
    free(kt);
    return 0;
}
