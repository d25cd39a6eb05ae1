/*
 * A bank across failures and restarts. Saves that keep failing (MANIFEST.tmp a directory here, as
 * a full disk fails it) while the stream goes on keep the bank's memory bounded: the records its
 * evictions leave to delete used to pile up in a list outside the budget, one id per eviction,
 * for as long as saves failed. Once saves succeed again, the directory holds just the records the
 * manifest lists and reopens as it was. A resumed bank refuses frames from before its last time
 * (a caller's clock restarting at 0): they used to be taken, and their entries overlapped the
 * resumed ones in time.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "memory/memory_bank.h"
#include "memory/memory_internal.h" /* the list of records to delete: its length */
#include "test.h"
#include "test_memory_snapshot.h"
#include "test_memory_synth.h"

#define T_TOK 16
#define DIM   32

static int count_records(const char *dir) {
    DIR *d = opendir(dir);
    REQUIRE(d, "%s", dir);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t len = strlen(de->d_name);
        n += len == 21 && de->d_name[0] == 'e' && !strcmp(de->d_name + 17, ".rec");
    }
    closedir(d);
    return n;
}

static svlm_memory *open_bank(const char *dir, svlm_memory_load_report *r) {
    svlm_memory_opts o;
    svlm_memory_opts_default(&o);
    o.dim = DIM;
    o.budget_bytes = 64 << 10;
    o.max_entries = 16;
    o.short_frames = 2;
    o.clip_max_s = 10; /* clips close often: many records written, then merged away */
    o.dir = dir;
    svlm_memory *m = NULL;
    svlm_err err = {0};
    REQUIRE(svlm_memory_create(&o, &m, &err) == SVLM_OK, "%s", err.msg);
    svlm_memory_load_report_get(m, r);
    return m;
}

static void failing_saves(void) {
    char dir[4096], tmp[4200];
    snprintf(dir, sizeof dir, "%s/mem-failing", test_tmpdir());
    snprintf(tmp, sizeof tmp, "%s/MANIFEST.tmp", dir);
    synth s;
    synth_init(&s, T_TOK, DIM, 5);
    s.drift_step = 0.05f; /* the scene keeps changing: clips close, are saved and merged away */
    for (int e = 0; e < 3; e++)
        synth_add_event(&s, 100 + e * 60, 3);
    svlm_memory_load_report r;
    svlm_memory *m = open_bank(dir, &r);
    float frame[T_TOK * DIM];
    svlm_err err = {0};
    int f = 0;
    for (; f < 300; f++) {
        synth_frame(&s, f, frame);
        REQUIRE(svlm_memory_push(m, f, frame, T_TOK, NULL, &err) == SVLM_OK, "frame %d: %s", f, err.msg);
    }
    REQUIRE(svlm_memory_flush(m, &err) == SVLM_OK, "%s", err.msg);
    svlm_memory_stats before, after;
    svlm_memory_stats_get(m, &before);

    /* every save fails from here on: records are written, the manifest is not */
    REQUIRE(mkdir(tmp, 0755) == 0, "%s", tmp);
    int failed = 0, most = 0, most_cap = 0, orphans = 0;
    for (; f < 3300; f++) {
        synth_frame(&s, f, frame);
        svlm_status st = svlm_memory_push(m, f, frame, T_TOK, NULL, &err);
        REQUIRE(st == SVLM_OK || st == SVLM_E_IO, "frame %d: %s", f, err.msg);
        failed += st == SVLM_E_IO;
        if (m->n_removed > most) most = m->n_removed;
        if (m->cap_removed > most_cap) most_cap = m->cap_removed;
        orphans |= m->orphans;
    }
    svlm_memory_stats_get(m, &after);
    const long long gone = (after.merges - before.merges) + (after.evictions - before.evictions);
    printf("failing saves: %d of 3000 pushes failed to save, %lld merges and evictions; the list of "
           "records to delete held at most %d ids (room for %d)\n",
           failed, gone, most, most_cap);
    REQUIRE(failed > 2500 && gone > 4 * MEM_MAX_REMOVED(m),
            "the saves failed (%d) over many evictions (%lld)", failed, gone);
    CHECK(most <= MEM_MAX_REMOVED(m) && most_cap <= MEM_MAX_REMOVED(m),
          "the records to delete grew to %d ids (room for %d) while saves failed", most, most_cap);
    CHECK(orphans, "no record was left past the list's cap: the save after does not delete orphans here");

    /* saves succeed again: the directory holds just what the manifest lists */
    REQUIRE(rmdir(tmp) == 0, "%s", tmp);
    for (int end = f + 20; f < end; f++) {
        synth_frame(&s, f, frame);
        CHECK(svlm_memory_push(m, f, frame, T_TOK, NULL, &err) == SVLM_OK, "frame %d: %s", f, err.msg);
    }
    CHECK(svlm_memory_flush(m, &err) == SVLM_OK, "the save after: %s", err.msg);
    CHECK(m->n_removed == 0 && !m->orphans && !m->dirty,
          "after a good save: %d records still to delete, orphans %d, dirty %d", m->n_removed, m->orphans,
          m->dirty);
    snapshot *was = malloc(sizeof *was), *now = malloc(sizeof *now);
    take(m, was);
    svlm_memory_free(m);
    CHECK(count_records(dir) == was->n, "%d records on disk for %d entries: orphans left", count_records(dir),
          was->n);
    m = open_bank(dir, &r);
    take(m, now);
    CHECK(r.manifest_ok && r.rejected == 0 && r.skipped == 0 && r.loaded == was->n && same_entries(was, now),
          "reopened: %d of %d loaded, %d rejected, %d skipped: %s", r.loaded, was->n, r.rejected, r.skipped,
          r.detail);
    svlm_memory_free(m);
    free(was);
    free(now);
    synth_free(&s);
}

/* A resumed bank whose caller's clock starts again at 0: refused, the bank left as it was; the
 * clock continued after svlm_memory_stats.t_last is taken. */
static void clock_restart(void) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/mem-clock", test_tmpdir());
    synth s;
    synth_init(&s, T_TOK, DIM, 9);
    synth_add_event(&s, 150, 3);
    svlm_memory_load_report r;
    svlm_memory *m = open_bank(dir, &r);
    float frame[T_TOK * DIM];
    svlm_err err = {0};
    push_frames(m, &s, 0, 400);
    svlm_memory_free(m);

    m = open_bank(dir, &r);
    svlm_memory_stats st;
    svlm_memory_stats_get(m, &st);
    snapshot *was = malloc(sizeof *was), *now = malloc(sizeof *now);
    take(m, was);
    REQUIRE(r.loaded > 0 && was->n > 0 && st.t_last >= 399, "resumed: %d entries to %.3f s", was->n,
            st.t_last);
    synth_frame(&s, 0, frame);
    svlm_status pushed = svlm_memory_push(m, 0, frame, T_TOK, NULL, &err);
    CHECK(pushed == SVLM_E_INVALID && strstr(err.msg, "t_last"),
          "a frame at 0 s after resuming to %.3f s: status %d (%s)", st.t_last, pushed,
          pushed ? err.msg : "taken");
    pushed = svlm_memory_push(m, st.t_last - 0.5, frame, T_TOK, NULL, &err);
    CHECK(pushed == SVLM_E_INVALID, "a frame half a second before the resumed end: status %d", pushed);
    svlm_memory_stats now_st;
    svlm_memory_stats_get(m, &now_st);
    take(m, now);
    CHECK(now_st.frames == 0 && same_entries(was, now), "the refused frames changed the bank");

    /* the clock continued: taken */
    const double t0 = st.t_last + 1;
    for (int f = 0; f < 200; f++) {
        synth_frame(&s, 400 + f, frame);
        REQUIRE(svlm_memory_push(m, t0 + f, frame, T_TOK, NULL, &err) == SVLM_OK, "frame %d: %s", f, err.msg);
    }
    REQUIRE(svlm_memory_flush(m, &err) == SVLM_OK, "%s", err.msg);
    svlm_memory_stats_get(m, &now_st);
    CHECK(now_st.frames == 200 && now_st.t_last == t0 + 199, "continued: %lld frames to %.3f s",
          (long long)now_st.frames, now_st.t_last);
    svlm_memory_free(m);

    /* a bank that resumed nothing takes any first time, a negative one too */
    snprintf(dir, sizeof dir, "%s/mem-clock-new", test_tmpdir());
    m = open_bank(dir, &r);
    CHECK(svlm_memory_push(m, -5, frame, T_TOK, NULL, &err) == SVLM_OK, "a new bank at -5 s: %s", err.msg);
    svlm_memory_free(m);
    free(was);
    free(now);
    synth_free(&s);
}

/* A bank closed before it kept anything leaves no directory behind (a server's DIR/NAME stayed, a
 * LOCK file in it, for every stream name ever opened); one that kept something stays. */
static void empty_bank_leaves_nothing(void) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/mem-empty/cam", test_tmpdir());
    svlm_memory_load_report r;
    svlm_memory_free(open_bank(dir, &r));
    struct stat sb;
    CHECK(stat(dir, &sb) != 0, "%s is still there after an empty bank closed", dir);
    /* a second writer refused while the first holds the (still empty) bank takes nothing away: it
     * removed the holder's LOCK and directory, and a third writer then got in */
    svlm_memory *held = open_bank(dir, &r);
    svlm_memory_opts o;
    svlm_memory_opts_default(&o);
    o.dim = DIM;
    o.dir = dir;
    svlm_memory *second = NULL, *third = NULL;
    svlm_err e2 = {0};
    CHECK(svlm_memory_create(&o, &second, &e2) == SVLM_E_IO && strstr(e2.msg, "in use"), "second writer: %s",
          e2.msg);
    svlm_memory_free(second);
    CHECK(stat(dir, &sb) == 0, "the refused writer removed the holder's directory");
    CHECK(svlm_memory_create(&o, &third, &e2) == SVLM_E_IO, "a third writer got in beside the first");
    svlm_memory_free(third);
    svlm_memory_free(held);
    CHECK(stat(dir, &sb) != 0, "%s is still there after the holder closed it empty", dir);
    svlm_memory *m = open_bank(dir, &r);
    synth s;
    synth_init(&s, T_TOK, DIM, 6);
    float frame[T_TOK * DIM];
    svlm_err err = {0};
    for (int f = 0; f < 8; f++) {
        synth_frame(&s, f, frame);
        REQUIRE(svlm_memory_push(m, f, frame, T_TOK, NULL, &err) == SVLM_OK, "frame %d: %s", f, err.msg);
    }
    REQUIRE(svlm_memory_flush(m, &err) == SVLM_OK, "%s", err.msg);
    svlm_memory_free(m);
    synth_free(&s);
    CHECK(stat(dir, &sb) == 0 && S_ISDIR(sb.st_mode), "a bank that kept frames lost its directory");
    m = open_bank(dir, &r);
    CHECK(r.loaded > 0, "the kept bank reopens with its entries (%d)", r.loaded);
    svlm_memory_free(m);
}

int test_main(void) {
    empty_bank_leaves_nothing();
    failing_saves();
    clock_restart();
    return 0;
}
