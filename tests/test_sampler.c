/* The token sampler: parameter checks, greedy, top-k / top-p / min-p, repetition penalty, seeds. */
#include <math.h>
#include <string.h>

#include "llm/sampler.h"
#include "test.h"

static svlm_sampler_params plain(float temp) {
    svlm_sampler_params p = svlm_sampler_params_default();
    p.temp = temp;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.seed = 42;
    return p;
}

static svlm_sampler *make(const svlm_sampler_params *p, int n_vocab) {
    svlm_sampler *s = NULL;
    svlm_err err = {0};
    svlm_status st = svlm_sampler_create(p, n_vocab, &s, &err);
    REQUIRE(st == SVLM_OK && s, "sampler_create: %s", err.msg);
    return s;
}

/* Out-of-domain parameters are refused with a message (NaN slipped through every check). */
static void test_bad_params(void) {
    const float nan = NAN, inf = INFINITY;
    struct {
        const char *what;
        svlm_sampler_params p;
        int n_vocab;
    } cases[] = {
        {"temp NaN", plain(nan), 8},         {"temp inf", plain(inf), 8},
        {"repeat_penalty NaN", plain(1), 8}, {"repeat_penalty inf", plain(1), 8},
        {"repeat_penalty 0", plain(1), 8},   {"repeat_penalty -1", plain(1), 8},
        {"top_p NaN", plain(1), 8},          {"min_p NaN", plain(1), 8},
        {"repeat_last_n -1", plain(1), 8},   {"empty vocabulary", plain(1), 0},
    };
    cases[2].p.repeat_penalty = nan;
    cases[3].p.repeat_penalty = inf;
    cases[4].p.repeat_penalty = 0;
    cases[5].p.repeat_penalty = -1;
    cases[6].p.top_p = nan;
    cases[7].p.min_p = nan;
    cases[8].p.repeat_last_n = -1;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        svlm_sampler *s = (svlm_sampler *)1;
        svlm_err err = {0};
        svlm_status st = svlm_sampler_create(&cases[i].p, cases[i].n_vocab, &s, &err);
        CHECK(st == SVLM_E_INVALID && !s && err.msg[0], "%s: accepted (status %d)", cases[i].what, (int)st);
        svlm_sampler_free(st == SVLM_OK ? s : NULL);
    }
    /* the documented "off" values and the edges stay valid */
    svlm_sampler_params ok = plain(0);
    ok.top_k = 1 << 24; /* more than the vocabulary: all kept */
    ok.top_p = 0;       /* keeps the best one */
    ok.min_p = 1;
    ok.repeat_last_n = 0;
    svlm_sampler_free(make(&ok, 8));
}

static void test_greedy(void) {
    const float logits[6] = {0.5f, 3.0f, -1.0f, 3.0f, 2.9f, -INFINITY};
    svlm_sampler_params p = plain(0);
    svlm_sampler *s = make(&p, 6);
    CHECK(svlm_sampler_sample(s, logits) == 1, "greedy takes the first of equal maxima");
    svlm_sampler_free(s);
    p = plain(-1); /* negative: greedy too */
    s = make(&p, 6);
    CHECK(svlm_sampler_sample(s, logits) == 1, "negative temperature is greedy");
    svlm_sampler_free(s);
    p = plain(1.0f);
    p.top_k = 1;
    s = make(&p, 6);
    int all_best = 1;
    for (int i = 0; i < 200; i++)
        all_best &= svlm_sampler_sample(s, logits) == 1;
    CHECK(all_best, "top_k 1 always gives the best token");
    svlm_sampler_free(s);
}

/* Draw frequencies follow softmax(logits / temp) over what the filters keep. */
static void test_distribution(void) {
    const float l2[2] = {0.0f, logf(3.0f)}; /* p = 1/4, 3/4 */
    svlm_sampler_params p = plain(1.0f);
    svlm_sampler *s = make(&p, 2);
    int ones = 0, n = 4000;
    for (int i = 0; i < n; i++)
        ones += svlm_sampler_sample(s, l2) == 1;
    CHECK(ones > 0.70 * n && ones < 0.80 * n, "temp 1: token 1 drawn %d of %d times (expected ~75%%)", ones,
          n);
    svlm_sampler_free(s);

    const float l3[4] = {logf(0.5f), logf(0.3f), logf(0.15f), logf(0.05f)};
    int seen[4] = {0};
    p = plain(1.0f);
    p.top_p = 0.75f; /* 0.5 + 0.3 reaches it: tokens 2 and 3 are cut */
    s = make(&p, 4);
    for (int i = 0; i < 1000; i++)
        seen[svlm_sampler_sample(s, l3)]++;
    CHECK(seen[0] && seen[1] && !seen[2] && !seen[3], "top_p 0.75 kept %d %d %d %d", seen[0], seen[1],
          seen[2], seen[3]);
    svlm_sampler_free(s);

    memset(seen, 0, sizeof seen);
    p = plain(1.0f);
    p.min_p = 0.25f; /* p >= 0.125 stays: tokens 0, 1, 2 */
    s = make(&p, 4);
    for (int i = 0; i < 2000; i++)
        seen[svlm_sampler_sample(s, l3)]++;
    CHECK(seen[0] && seen[1] && seen[2] && !seen[3], "min_p 0.25 kept %d %d %d %d", seen[0], seen[1], seen[2],
          seen[3]);
    svlm_sampler_free(s);
}

/* NaN logits (a damaged model) are never drawn and do not upset the ordering of the others. */
static void test_nan_logits(void) {
    const float nan = NAN;
    const float logits[7] = {nan, 0.0f, 1.0f, nan, 2.0f, nan, -1.0f};
    svlm_sampler_params p = plain(1.0f);
    svlm_sampler *s = make(&p, 7);
    int seen[7] = {0};
    for (int i = 0; i < 2000; i++) {
        int32_t id = svlm_sampler_sample(s, logits);
        REQUIRE(id >= 0 && id < 7, "id %d out of range", (int)id);
        seen[id]++;
    }
    CHECK(!seen[0] && !seen[3] && !seen[5], "a NaN token was drawn (%d, %d, %d times)", seen[0], seen[3],
          seen[5]);
    CHECK(seen[4] > seen[2] && seen[2] > seen[1] && seen[1] > seen[6],
          "finite tokens lost their order: %d %d %d %d", seen[4], seen[2], seen[1], seen[6]);
    svlm_sampler_free(s);
}

/* Infinite logits tie with each other (inf - inf once made every weight NaN and the draw always
 * the last candidate); a temperature so small that 1/t overflows float is greedy, not the least
 * likely token. */
static void test_extreme_values(void) {
    const float inf = INFINITY;
    const float some_inf[5] = {0.0f, inf, 1.0f, inf, inf}, all_neg_inf[4] = {-inf, -inf, -inf, -inf};
    for (int with_filters = 0; with_filters < 2; with_filters++) {
        svlm_sampler_params p = plain(1.0f);
        if (with_filters) p.top_p = 0.9f, p.min_p = 0.1f, p.top_k = 4;
        svlm_sampler *s = make(&p, 5), *t = make(&p, 4);
        int seen[5] = {0}, seen_neg[4] = {0};
        for (int i = 0; i < 600; i++) {
            seen[svlm_sampler_sample(s, some_inf)]++;
            seen_neg[svlm_sampler_sample(t, all_neg_inf)]++;
        }
        CHECK(!seen[0] && !seen[2] && seen[1] > 120 && seen[3] > 120 && seen[4] > 120,
              "filters %d: +inf logits at 1, 3, 4 drawn %d %d %d times (others %d %d)", with_filters, seen[1],
              seen[3], seen[4], seen[0], seen[2]);
        /* four equal tokens: top-p 0.9 and min-p keep all four, each drawn about 150 times */
        CHECK(seen_neg[0] > 90 && seen_neg[1] > 90 && seen_neg[2] > 90 && seen_neg[3] > 90,
              "filters %d: all -inf drawn %d %d %d %d times", with_filters, seen_neg[0], seen_neg[1],
              seen_neg[2], seen_neg[3]);
        svlm_sampler_free(s);
        svlm_sampler_free(t);
    }
    const float l4[4] = {1.0f, 2.0f, 4.0f, 3.0f};
    const float temps[] = {1e-30f, 1e-39f, 1e-45f};
    for (size_t i = 0; i < sizeof temps / sizeof temps[0]; i++) {
        svlm_sampler_params p = plain(temps[i]);
        svlm_sampler *s = make(&p, 4);
        for (int k = 0; k < 20; k++) {
            const int32_t id = svlm_sampler_sample(s, l4);
            CHECK(id == 2, "temperature %g drew token %d, not the greatest (2)", (double)temps[i], (int)id);
        }
        svlm_sampler_free(s);
    }
}

static void test_repeat_penalty(void) {
    const float logits[3] = {2.0f, 1.5f, -3.0f};
    svlm_sampler_params p = plain(0);
    p.repeat_penalty = 2.0f;
    p.repeat_last_n = 2;
    svlm_sampler *s = make(&p, 3);
    svlm_sampler_accept(s, 0); /* 2.0 -> 1.0 < 1.5 */
    CHECK(svlm_sampler_sample(s, logits) == 1, "penalised token 0 still chosen");
    /* the ring now holds 0 and 1: 1.5 -> 0.75, 2.0 -> 1.0 */
    CHECK(svlm_sampler_sample(s, logits) == 0, "penalty on both: token 0 wins again");
    svlm_sampler_accept(s, 2);
    svlm_sampler_accept(s, 2); /* 0 and 1 leave the ring of 2 */
    CHECK(svlm_sampler_sample(s, logits) == 0, "penalty outlived repeat_last_n");
    svlm_sampler_accept(s, -5); /* ids out of range are remembered but ignored */
    svlm_sampler_accept(s, 99);
    CHECK(svlm_sampler_sample(s, logits) == 0, "out-of-range ids in the ring");
    svlm_sampler_free(s);
}

static void test_seeds(void) {
    float logits[50];
    for (int i = 0; i < 50; i++)
        logits[i] = (float)(i % 7) * 0.3f;
    int32_t a[64], b[64], c[64];
    svlm_sampler_params p = plain(1.0f);
    svlm_sampler *sa = make(&p, 50), *sb = make(&p, 50);
    p.seed = 43;
    svlm_sampler *sc = make(&p, 50);
    int same_ab = 1, same_ac = 1;
    for (int i = 0; i < 64; i++) {
        a[i] = svlm_sampler_sample(sa, logits);
        b[i] = svlm_sampler_sample(sb, logits);
        c[i] = svlm_sampler_sample(sc, logits);
        same_ab &= a[i] == b[i];
        same_ac &= a[i] == c[i];
    }
    CHECK(same_ab, "the same seed gave different draws");
    CHECK(!same_ac, "seeds 42 and 43 gave the same 64 draws");
    svlm_sampler_free(sa);
    svlm_sampler_free(sb);
    svlm_sampler_free(sc);
}

int test_main(void) {
    test_bad_params();
    test_greedy();
    test_distribution();
    test_nan_logits();
    test_extreme_values();
    test_repeat_penalty();
    test_seeds();
    return 0;
}
