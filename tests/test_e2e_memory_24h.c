/*
 * 24 hours of stream at 1 frame per second (86,400 frames), twice:
 *   A. SmolVLM2-256M-sized tokens (64 per frame, 576 wide) at the default budget, with a
 *      3-second needle 30 minutes in: the needle is still an event after 24 hours and ranks
 *      first; retrieval time per question; bytes per hour of stream per tier.
 *   B. small tokens (16 x 64) under a 1 MiB budget, which fills in the first hours: bytes
 *      never above the budget and resident memory flat from then on.
 * Prints the figures the issue asks for.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "memory/memory_bank.h"
#include "test.h"
#include "test_memory_synth.h"

#define DAY      86400
#define NEEDLE_T 1800.0

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static long rss_kib(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, res = 0;
    if (!f) return -1;
    if (fscanf(f, "%ld %ld", &pages, &res) != 2) res = -1;
    fclose(f);
    return res < 0 ? -1 : res * (sysconf(_SC_PAGESIZE) / 1024);
}

static void run_default_budget(void) {
    enum { T = 64, D = 576 };
    synth s;
    synth_init(&s, T, D, 2024);
    synth_fast_noise(&s);
    int ev = synth_add_event(&s, NEEDLE_T, 3);
    svlm_memory_opts o;
    svlm_memory_opts_default(&o);
    o.dim = D;
    svlm_memory *m = NULL;
    svlm_err err = {0};
    REQUIRE(svlm_memory_create(&o, &m, &err) == SVLM_OK, "%s", err.msg);
    float *frame = malloc((size_t)T * D * sizeof(float));
    int over = 0;
    double t_start = now_s();
    for (int f = 0; f < DAY; f++) {
        synth_frame(&s, f, frame);
        REQUIRE(svlm_memory_push(m, f, frame, T, NULL, &err) == SVLM_OK, "frame %d: %s", f, err.msg);
        if (f % 64 == 0) {
            svlm_memory_stats st;
            svlm_memory_stats_get(m, &st);
            over += st.bytes > o.budget_bytes;
        }
    }
    double ingest_s = now_s() - t_start;
    svlm_memory_stats st;
    svlm_memory_stats_get(m, &st);
    CHECK(over == 0 && st.bytes <= o.budget_bytes, "over the budget (%zu > %zu)", st.bytes, o.budget_bytes);
    printf("A: 24 h of 64x576 tokens in %.1f s (%.3f ms per frame); %zu of %zu bytes, %d entries\n", ingest_s,
           ingest_s * 1e3 / DAY, st.bytes, o.budget_bytes, svlm_memory_count(m));
    for (int t = 0; t < SVLM_MEMORY_N_TIERS; t++)
        printf("A: %-5s %5d entries, %10zu bytes, %9.0f bytes per hour of stream\n",
               svlm_memory_tier_name((svlm_memory_tier)t), st.tier_entries[t], st.tier_bytes[t],
               t == SVLM_MEMORY_SHORT ? 0.0 : st.tier_bytes[t] / 24.0);
    printf("A: events %lld, merges %lld, evictions %lld\n", (long long)st.events, (long long)st.merges,
           (long long)st.evictions);

    /* retrieval per question: a 20-vector question (pooled to 8) against 24 hours */
    float *qv = malloc((size_t)20 * D * sizeof(float));
    for (int i = 0; i < 20; i++)
        synth_object_token(&s, ev, qv + (size_t)i * D);
    svlm_memory_query q;
    svlm_memory_query_default(&q);
    q.vecs = qv;
    q.n_vecs = 20;
    svlm_memory_hits h;
    int reps = 50, first_ok = 0;
    double t0 = now_s();
    for (int r = 0; r < reps; r++) {
        REQUIRE(svlm_memory_retrieve(m, &q, &h, &err) == SVLM_OK, "%s", err.msg);
        first_ok += h.n > 0 && h.hit[0].tier == SVLM_MEMORY_EVENT && fabs(h.hit[0].t0 - NEEDLE_T) <= 1;
        if (r + 1 < reps) svlm_memory_hits_free(&h);
    }
    double per_q_ms = (now_s() - t0) * 1e3 / reps;
    printf("A: retrieval %.2f ms per question over %d entries; needle found first %d/%d, score %.3f, [%.0f, "
           "%.0f)\n",
           per_q_ms, h.scanned, first_ok, reps, h.n ? h.hit[0].score : 0, h.n ? h.hit[0].t0 : -1,
           h.n ? h.hit[0].t1 : -1);
    CHECK(first_ok == reps, "the needle from 23.5 hours ago should rank first");
    CHECK(h.n > 0 && fabs(h.hit[0].t1 - (NEEDLE_T + 3)) <= 1, "needle range");
    /* the aim is 20 ms; the check leaves room for a loaded shared machine */
    CHECK(per_q_ms < 60, "retrieval %.2f ms per question (aim: under 20)", per_q_ms);
    svlm_memory_hits_free(&h);
    free(qv);
    free(frame);
    svlm_memory_free(m);
    synth_free(&s);
}

static void run_small_budget(void) {
    enum { T = 16, D = 64 };
    synth s;
    synth_init(&s, T, D, 77);
    synth_fast_noise(&s);
    int ev = synth_add_event(&s, 600, 3);
    for (int e = 1; e < 48; e++)
        synth_add_event(&s, e * 1800.0, 3); /* one event every half hour */
    svlm_memory_opts o;
    svlm_memory_opts_default(&o);
    o.dim = D;
    o.budget_bytes = 1 << 20;
    svlm_memory *m = NULL;
    svlm_err err = {0};
    REQUIRE(svlm_memory_create(&o, &m, &err) == SVLM_OK, "%s", err.msg);
    float frame[T * D];
    int over = 0;
    long rss_quarter = 0, rss_end = 0;
    size_t max_bytes = 0;
    for (int f = 0; f < DAY; f++) {
        synth_frame(&s, f, frame);
        REQUIRE(svlm_memory_push(m, f, frame, T, NULL, &err) == SVLM_OK, "frame %d: %s", f, err.msg);
        svlm_memory_stats st;
        svlm_memory_stats_get(m, &st);
        over += st.bytes > o.budget_bytes;
        if (st.bytes > max_bytes) max_bytes = st.bytes;
        if (f == DAY / 4) rss_quarter = rss_kib();
    }
    rss_end = rss_kib();
    svlm_memory_stats st;
    svlm_memory_stats_get(m, &st);
    printf("B: 24 h of 16x64 tokens under 1 MiB: peak %zu bytes; RSS %ld KiB at 6 h, %ld KiB at 24 h; "
           "%d entries (mid %d, event %d), %lld merges\n",
           max_bytes, rss_quarter, rss_end, svlm_memory_count(m), st.tier_entries[1], st.tier_entries[2],
           (long long)st.merges);
    CHECK(over == 0, "over the budget after %d frames", over);
    CHECK(rss_end - rss_quarter <= 512, "resident memory grew by %ld KiB from 6 h to 24 h",
          rss_end - rss_quarter);
    CHECK(st.merges > 0, "the budget should have filled");
    float qv[D];
    synth_object_token(&s, ev, qv);
    svlm_memory_query q;
    svlm_memory_query_default(&q);
    q.vecs = qv;
    q.n_vecs = 1;
    svlm_memory_hits h;
    REQUIRE(svlm_memory_retrieve(m, &q, &h, &err) == SVLM_OK, "%s", err.msg);
    CHECK(h.n > 0 && fabs(h.hit[0].t0 - 600) <= 1,
          "the first needle survives 24 h under a full budget (got %.0f)", h.n ? h.hit[0].t0 : -1);
    svlm_memory_hits_free(&h);
    svlm_memory_free(m);
    synth_free(&s);
}

int test_main(void) {
    run_small_budget();
    run_default_budget();
    return 0;
}
