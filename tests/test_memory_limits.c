/* The memory bank's limits that a long stream meets: a gap in the frame times (a reconnect, a
 * paused source) is covered by no entry; the bytes counted against the budget are the bytes
 * allocated (external keys); a frame too large for the budget is refused without emptying the bank;
 * a manifest listing very many records opens in time linear in them. */
#define _GNU_SOURCE
#include <malloc.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "memory/memory_bank.h"
#include "memory/memory_internal.h"
#include "test.h"
#include "test_memory_synth.h"

enum { T = 16, D = 32 };

/* Frames at 1 s for 30 s (something enters at 25 s and is there when the video stops), nothing
 * for an hour, then 30 s more of the same scene: what was seen before the gap must not be filed
 * as lasting through it, and the frame interval must not become the gap's. */
static void gap(void) {
    svlm_memory_opts o;
    svlm_memory_opts_default(&o);
    o.dim = D;
    o.budget_bytes = 4 << 20;
    svlm_memory *m = NULL;
    svlm_err err = {0};
    REQUIRE(svlm_memory_create(&o, &m, &err) == SVLM_OK, "%s", err.msg);
    synth s;
    synth_init(&s, T, D, 7);
    synth_add_event(&s, 25, 5);
    float f[T * D];
    for (int t = 0; t < 30; t++) {
        synth_frame(&s, t, f);
        REQUIRE(svlm_memory_push(m, t, f, T, NULL, &err) == SVLM_OK, "%s", err.msg);
    }
    for (int t = 3600; t < 3630; t++) {
        synth_frame(&s, t, f);
        REQUIRE(svlm_memory_push(m, t, f, T, NULL, &err) == SVLM_OK, "%s", err.msg);
    }
    REQUIRE(svlm_memory_flush(m, &err) == SVLM_OK, "%s", err.msg);
    int events = 0;
    for (int i = 0; i < svlm_memory_count(m); i++) {
        svlm_memory_entry_info e;
        REQUIRE(svlm_memory_entry(m, i, &e) == SVLM_OK, "entry %d", i);
        /* the last frame before the gap is at 29 s, the last one at 3629 s: a couple of seconds more */
        const double last = e.t0 < 3600 ? 29 : 3629;
        CHECK(e.t1 <= last + 3, "%s entry [%.1f, %.1f) ends past its last frame (%.0f s)",
              svlm_memory_tier_name(e.tier), e.t0, e.t1, last);
        if (e.tier == SVLM_MEMORY_SHORT)
            CHECK(e.t1 - e.t0 <= 2, "a frame of 1 s filed as [%.1f, %.1f)", e.t0, e.t1);
        events += e.tier == SVLM_MEMORY_EVENT && e.t0 == 25;
    }
    CHECK(events == 1, "%d events at 25 s", events);
    /* a question about the gap finds nothing: nothing was seen then */
    svlm_memory_query q;
    svlm_memory_query_default(&q);
    REQUIRE(svlm_memory_parse_time_query("What happened at 30:00?", 3629, &q) == 1, "not anchored");
    float qv[D];
    memcpy(qv, s.base, sizeof qv);
    q.vecs = qv;
    q.n_vecs = 1;
    svlm_memory_hits h;
    REQUIRE(svlm_memory_retrieve(m, &q, &h, &err) == SVLM_OK, "%s", err.msg);
    for (int i = 0; i < h.n; i++)
        CHECK(0, "30:00 (in the gap) retrieved %s [%.1f, %.1f)", svlm_memory_tier_name(h.hit[i].tier),
              h.hit[i].t0, h.hit[i].t1);
    svlm_memory_hits_free(&h);
    /* a slower frame rate is still learnt (one frame each 10 s): frames are not cut short */
    for (int t = 3630; t < 3630 + 400; t += 10) {
        synth_frame(&s, t, f);
        REQUIRE(svlm_memory_push(m, t, f, T, NULL, &err) == SVLM_OK, "%s", err.msg);
    }
    svlm_memory_entry_info e;
    REQUIRE(svlm_memory_entry(m, svlm_memory_count(m) - 1, &e) == SVLM_OK, "last entry");
    CHECK(e.tier == SVLM_MEMORY_SHORT && e.t1 - e.t0 > 8 && e.t1 - e.t0 < 12,
          "the last frame at 10 s intervals is filed as [%.1f, %.1f)", e.t0, e.t1);
    synth_free(&s);
    svlm_memory_free(m);
}

/* Bytes counted against the budget against bytes allocated, entry by entry (malloc_usable_size:
 * ASan gives the size asked for, glibc a few bytes more). Keys from outside (key_dim 1024, much
 * wider than the tokens) were allocated for four keys an entry and counted for the one it has. */
static void accounting(void) {
    enum { KD = 1024 };
    svlm_memory_opts o;
    svlm_memory_opts_default(&o);
    o.dim = D;
    o.key_dim = KD;
    o.budget_bytes = 1 << 20;
    o.max_entries = 100000;
    o.mid_tokens = 4;
    svlm_memory *m = NULL;
    svlm_err err = {0};
    REQUIRE(svlm_memory_create(&o, &m, &err) == SVLM_OK, "%s", err.msg);
    synth s;
    synth_init(&s, T, D, 3);
    s.drift_step = 0.3f; /* a clip every few frames */
    for (int e = 0; e < 8; e++)
        synth_add_event(&s, 500 + 300 * e, 4);
    float f[T * D], key[KD];
    for (int t = 0; t < 3000; t++) {
        synth_frame(&s, t, f);
        for (int j = 0; j < KD; j++)
            key[j] = f[j % (T * D)] + 0.001f * (float)j;
        REQUIRE(svlm_memory_push(m, t, f, T, key, &err) == SVLM_OK, "frame %d: %s", t, err.msg);
    }
    size_t counted = 0, allocated = 0;
    for (int i = 0; i < m->n_entries; i++) {
        const mem_entry *e = m->entries[i];
        counted += mem_entry_bytes(m, e);
        allocated +=
            malloc_usable_size((void *)e) + malloc_usable_size(e->tokens) + malloc_usable_size(e->keys);
    }
    svlm_memory_stats st;
    svlm_memory_stats_get(m, &st);
    printf("accounting: %d entries, %zu bytes counted, %zu allocated (budget %zu)\n", m->n_entries, counted,
           allocated, st.budget);
    CHECK(st.bytes <= st.budget, "%zu bytes of %zu", st.bytes, st.budget);
    /* (malloc's rounding: 3 blocks an entry, at most 24 bytes each) */
    CHECK(allocated <= counted + (size_t)m->n_entries * 72, "%zu bytes allocated for %zu counted", allocated,
          counted);
    synth_free(&s);
    svlm_memory_free(m);
}

/* A frame of more tokens than the bank's frames so far, whose working buffers leave no room
 * within a small budget (256 KiB): it is refused, and the bank keeps what it had, in memory and
 * on disk. It was taken: every entry evicted to make room, then the buffers alone filled the
 * budget, and the next save deleted the records (58 entries -> 0, 1 after reopening). */
static void big_frame(void) {
    enum { BIG = 200 };
    char dir[512], cmd[600];
    snprintf(dir, sizeof dir, "%s/memory_limits_big", test_tmpdir());
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "cannot clear %s", dir);
    svlm_memory_opts o;
    svlm_memory_opts_default(&o);
    o.dim = 64;
    o.budget_bytes = 256 << 10;
    o.dir = dir;
    svlm_memory *m = NULL;
    svlm_err err = {0};
    REQUIRE(svlm_memory_create(&o, &m, &err) == SVLM_OK, "%s", err.msg);
    synth s, b;
    synth_init(&s, 16, 64, 1);
    synth_init(&b, BIG, 64, 2);
    s.drift_step = 0.1f;
    static float f[BIG * 64];
    int t = 0;
    for (; t < 300; t++) {
        synth_frame(&s, t, f);
        REQUIRE(svlm_memory_push(m, t, f, 16, NULL, &err) == SVLM_OK, "frame %d: %s", t, err.msg);
    }
    REQUIRE(svlm_memory_flush(m, &err) == SVLM_OK, "%s", err.msg);
    svlm_memory_stats before, after;
    svlm_memory_stats_get(m, &before);
    const int kept = before.tier_entries[SVLM_MEMORY_MID] + before.tier_entries[SVLM_MEMORY_EVENT];
    synth_frame(&b, t, f);
    svlm_status st = svlm_memory_push(m, t++, f, BIG, NULL, &err);
    CHECK(st == SVLM_E_LIMIT && strstr(err.msg, "budget"), "a frame of %d tokens: status %d (%s)", BIG, st,
          st ? err.msg : "taken");
    svlm_memory_stats_get(m, &after);
    const int left = after.tier_entries[SVLM_MEMORY_MID] + after.tier_entries[SVLM_MEMORY_EVENT];
    CHECK(left == kept && after.evictions == before.evictions, "%d entries before the frame, %d after", kept,
          left);
    synth_frame(&s, t, f);
    CHECK(svlm_memory_push(m, t, f, 16, NULL, &err) == SVLM_OK, "%s", err.msg);
    svlm_memory_free(m);
    REQUIRE(svlm_memory_create(&o, &m, &err) == SVLM_OK, "%s", err.msg);
    svlm_memory_stats_get(m, &after);
    const int reopened = after.tier_entries[SVLM_MEMORY_MID] + after.tier_entries[SVLM_MEMORY_EVENT];
    printf("big frame: %d entries before it, %d after reopening\n", kept, reopened);
    CHECK(reopened >= kept, "%d entries before the frame, %d after reopening", kept, reopened);
    svlm_memory_free(m);
    synth_free(&s);
    synth_free(&b);
    CHECK(system(cmd) == 0, "cannot remove %s", dir);
}

static void too_slow(int sig) {
    (void)sig;
    static const char msg[] = "test_memory_limits: opening a manifest of many rows took over 60 s\n";
    (void)!write(2, msg, sizeof msg - 1);
    _exit(1);
}

/* A manifest listing 250,000 records that are not there (4 MB): each is reported missing, and the
 * open takes a few seconds at most (a lookup by scanning made it quadratic: 80,000 rows took 15 s,
 * 250,000 minutes; `svlm memory dump` of such a directory hung). */
static void many_rows(void) {
    enum { ROWS = 250000 };
    char dir[512];
    snprintf(dir, sizeof dir, "%s/memory_limits_rows", test_tmpdir());
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "cannot clear %s", dir);
    REQUIRE(mkdir(dir, 0755) == 0, "mkdir %s", dir);
    size_t n = 56 + (size_t)ROWS * 16 + 4;
    uint8_t *p = calloc(1, n);
    REQUIRE(p, "out of memory");
    uint32_t v = 1, dim = D, key_dim = 0, count = ROWS;
    uint64_t next_id = ROWS + 1;
    memcpy(p, "SVMM", 4);
    memcpy(p + 4, &v, 4);
    memcpy(p + 8, &dim, 4);
    memcpy(p + 12, &key_dim, 4);
    memcpy(p + 16, &next_id, 8);
    memcpy(p + 48, &count, 4);
    for (uint64_t i = 0; i < ROWS; i++)
        memcpy(p + 56 + i * 16, &(uint64_t){i + 1}, 8);
    uint32_t crc = mem_crc32(0, p, n - 4);
    memcpy(p + n - 4, &crc, 4);
    char path[600];
    snprintf(path, sizeof path, "%s/MANIFEST", dir);
    FILE *fp = fopen(path, "wb");
    REQUIRE(fp && fwrite(p, 1, n, fp) == n && fclose(fp) == 0, "cannot write %s", path);
    free(p);
    svlm_memory_opts o;
    svlm_memory_opts_default(&o);
    o.dim = 0; /* as `svlm memory dump` opens it */
    o.dir = dir;
    o.read_only = 1;
    svlm_memory *m = NULL;
    svlm_err err = {0};
    signal(SIGALRM, too_slow);
    alarm(60);
    svlm_status st = svlm_memory_create(&o, &m, &err);
    alarm(0);
    REQUIRE(st == SVLM_OK, "%s", err.msg);
    svlm_memory_load_report r;
    svlm_memory_load_report_get(m, &r);
    CHECK(r.rejected == ROWS && r.loaded == 0 && svlm_memory_count(m) == 0, "rejected %d, loaded %d",
          r.rejected, r.loaded);
    CHECK(strstr(r.detail, "missing") != NULL, "detail: %s", r.detail);
    svlm_memory_free(m);
    CHECK(system(cmd) == 0, "cannot remove %s", dir);
}

int test_main(void) {
    gap();
    accounting();
    big_frame();
    many_rows();
    return 0;
}
