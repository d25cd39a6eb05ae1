/*
 * Persistence: a bank with a directory restarts with the same entries (ids, tiers, times,
 * tokens bit for bit); a corrupted record, a truncated record and a corrupted manifest are
 * detected and reported, and the bank resumes with what verifies; leftovers of an
 * interrupted write are ignored; a failed save after an event was shrunk loses nothing; one
 * writer a directory; `svlm memory dump DIR --json` lists the entries.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "memory/memory_bank.h"
#include "test.h"
#include "test_memory_synth.h"

#define T_TOK 16
#define DIM   32
#define MAX_E 512

typedef struct snapshot {
    int n;
    svlm_memory_entry_info e[MAX_E];
} snapshot;

/* The persisted tiers only (SHORT frames are not written). */
static void take(svlm_memory *m, snapshot *s) {
    s->n = 0;
    for (int i = 0; i < svlm_memory_count(m) && s->n < MAX_E; i++) {
        svlm_memory_entry_info e;
        svlm_memory_entry(m, i, &e);
        if (e.tier != SVLM_MEMORY_SHORT) s->e[s->n++] = e;
    }
}

static int same_entry(const svlm_memory_entry_info *a, const svlm_memory_entry_info *b) {
    return a->id == b->id && a->tier == b->tier && a->t0 == b->t0 && a->t1 == b->t1 &&
           a->n_tokens == b->n_tokens && a->n_frames == b->n_frames && a->importance == b->importance &&
           a->level == b->level;
}

static svlm_memory *open_bank_budget(const char *dir, size_t budget, svlm_memory_load_report *r) {
    svlm_memory_opts o;
    svlm_memory_opts_default(&o);
    o.dim = DIM;
    o.budget_bytes = budget;
    o.dir = dir;
    svlm_memory *m = NULL;
    svlm_err err = {0};
    REQUIRE(svlm_memory_create(&o, &m, &err) == SVLM_OK, "%s", err.msg);
    svlm_memory_load_report_get(m, r);
    return m;
}

static svlm_memory *open_bank(const char *dir, svlm_memory_load_report *r) {
    return open_bank_budget(dir, 96 << 10, r);
}

static void flip_byte(const char *path, long at) {
    FILE *f = fopen(path, "r+b");
    REQUIRE(f, "open %s", path);
    fseek(f, at, SEEK_SET);
    int c = fgetc(f);
    fseek(f, at, SEEK_SET);
    fputc(c ^ 0x5A, f);
    fclose(f);
}

static void record_path(const char *dir, uint64_t id, char *buf, size_t n) {
    snprintf(buf, n, "%s/e%016llx.rec", dir, (unsigned long long)id);
}

/* Top hit of a query built from a fresh event token: id and its tokens' checksum. */
static uint64_t top_hit(svlm_memory *m, synth *s, int ev, double *sum) {
    float q[DIM];
    synth_object_token(s, ev, q);
    svlm_memory_query qq;
    svlm_memory_query_default(&qq);
    qq.vecs = q;
    qq.n_vecs = 1;
    svlm_memory_hits h;
    svlm_err err = {0};
    REQUIRE(svlm_memory_retrieve(m, &qq, &h, &err) == SVLM_OK, "%s", err.msg);
    REQUIRE(h.n > 0, "no hits");
    *sum = 0;
    for (int i = 0; i < h.hit[0].n_tokens * DIM; i++)
        *sum += h.hit[0].tokens[i] * (double)(i % 7 + 1);
    uint64_t id = h.hit[0].id;
    svlm_memory_hits_free(&h);
    return id;
}

/* A shrunk event is saved under a new id: when the manifest after it cannot be written
 * (MANIFEST.tmp is a directory here, as a full disk would fail it), the next open finds the last
 * good state whole. The shrunk record used to replace the listed one under the same name first,
 * so the next open set it aside as "differs from the manifest": the event was lost. */
static void failed_save_after_shrink(synth *s) {
    char dir[4096], tmp[4200];
    snprintf(dir, sizeof dir, "%s/mem-shrink", test_tmpdir());
    svlm_memory_load_report r;
    svlm_memory *m = open_bank_budget(dir, 64 << 10, &r); /* the least: room for fewer events than come */
    float frame[T_TOK * DIM];
    svlm_err err = {0};
    int f = 0;
    for (; f < 1200; f++) {
        synth_frame(s, f, frame);
        REQUIRE(svlm_memory_push(m, f, frame, T_TOK, NULL, &err) == SVLM_OK, "frame %d: %s", f, err.msg);
    }
    REQUIRE(svlm_memory_flush(m, &err) == SVLM_OK, "%s", err.msg);
    svlm_memory_stats st;
    svlm_memory_stats_get(m, &st);
    const long long shrinks = st.shrinks;
    snprintf(tmp, sizeof tmp, "%s/MANIFEST.tmp", dir);
    REQUIRE(mkdir(tmp, 0755) == 0, "%s", tmp);
    for (int e = 0; e < 10; e++)
        synth_add_event(s, 1210 + e * 55, 3);
    for (; f < 1800; f++) { /* more events: the budget shrinks older ones; their saves fail */
        synth_frame(s, f, frame);
        svlm_memory_push(m, f, frame, T_TOK, NULL, &err);
    }
    svlm_memory_flush(m, &err);
    svlm_memory_stats_get(m, &st);
    CHECK(st.shrinks > shrinks, "no event was shrunk while saves failed (%lld shrinks)",
          (long long)st.shrinks);
    svlm_memory_free(m);
    REQUIRE(rmdir(tmp) == 0, "%s", tmp);
    m = open_bank_budget(dir, 64 << 10, &r);
    CHECK(r.rejected == 0 && r.loaded > 0, "after failed saves: %d loaded, %d rejected: %s", r.loaded,
          r.rejected, r.detail);
    printf("failed saves after %lld shrinks: %d entries loaded, %d rejected\n",
           (long long)(st.shrinks - shrinks), r.loaded, r.rejected);
    svlm_memory_free(m);
}

int test_main(void) {
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/mem", test_tmpdir());
    synth s;
    synth_init(&s, T_TOK, DIM, 11);
    for (int e = 0; e < 6; e++)
        synth_add_event(&s, 200 + e * 250, 3);

    /* a 30-minute stream with a tight budget: records are written, merged and deleted */
    svlm_memory_load_report r;
    svlm_memory *m = open_bank(dir, &r);
    CHECK(r.loaded == 0 && r.rejected == 0 && r.manifest_ok == 1, "a new directory is clean");
    float frame[T_TOK * DIM];
    svlm_err err = {0};
    for (int f = 0; f < 1800; f++) {
        synth_frame(&s, f, frame);
        REQUIRE(svlm_memory_push(m, f, frame, T_TOK, NULL, &err) == SVLM_OK, "frame %d: %s", f, err.msg);
    }
    REQUIRE(svlm_memory_flush(m, &err) == SVLM_OK, "%s", err.msg);
    snapshot *before = malloc(sizeof *before), *after = malloc(sizeof *after);
    take(m, before);
    svlm_memory_stats st;
    svlm_memory_stats_get(m, &st);
    CHECK(st.merges > 0 && st.tier_entries[SVLM_MEMORY_EVENT] == 6, "merges %lld, events %d",
          (long long)st.merges, st.tier_entries[SVLM_MEMORY_EVENT]);
    double sum_before, sum_after;
    uint64_t hit_before = top_hit(m, &s, 2, &sum_before);
    svlm_memory_free(m);

    /* restart: the same entries, the same retrieval, bit for bit */
    m = open_bank(dir, &r);
    take(m, after);
    CHECK(r.manifest_ok && r.rejected == 0 && r.loaded == before->n, "loaded %d of %d, rejected %d: %s",
          r.loaded, before->n, r.rejected, r.detail);
    int same = after->n == before->n;
    for (int i = 0; same && i < before->n; i++)
        same = same_entry(&before->e[i], &after->e[i]);
    CHECK(same, "restored entries differ (%d vs %d)", after->n, before->n);
    uint64_t hit_after = top_hit(m, &s, 2, &sum_after);
    CHECK(hit_after == hit_before && sum_after == sum_before, "retrieval after restart differs");
    /* the restarted stream goes on from where it was */
    for (int f = 1800; f < 1900; f++) {
        synth_frame(&s, f, frame);
        REQUIRE(svlm_memory_push(m, f, frame, T_TOK, NULL, &err) == SVLM_OK, "frame %d: %s", f, err.msg);
    }
    REQUIRE(svlm_memory_flush(m, &err) == SVLM_OK, "%s", err.msg);
    take(m, before);
    svlm_memory_free(m);

    /* leftovers of an interrupted sync: a temporary file and an unlisted record */
    char path[4200], path2[4200];
    snprintf(path, sizeof path, "%s/MANIFEST.tmp", dir);
    FILE *f = fopen(path, "wb");
    fputs("half a manifest", f);
    fclose(f);
    record_path(dir, 999999, path2, sizeof path2);
    record_path(dir, before->e[0].id, path, sizeof path);
    char cmd[9000];
    snprintf(cmd, sizeof cmd, "cp '%s' '%s'", path, path2);
    REQUIRE(system(cmd) == 0, "%s", cmd);
    m = open_bank(dir, &r);
    CHECK(r.rejected == 0 && r.loaded == before->n, "leftovers are ignored (loaded %d of %d)", r.loaded,
          before->n);
    struct stat sb;
    CHECK(stat(path2, &sb) != 0, "the orphan record was removed");
    svlm_memory_free(m);

    /* a corrupted record and a truncated one: detected, named, the rest loads */
    uint64_t bad1 = 0, bad2 = 0;
    for (int i = 0; i < before->n; i++) {
        if (before->e[i].tier == SVLM_MEMORY_EVENT && !bad1)
            bad1 = before->e[i].id;
        else if (before->e[i].tier == SVLM_MEMORY_MID && !bad2)
            bad2 = before->e[i].id;
    }
    record_path(dir, bad1, path, sizeof path);
    flip_byte(path, 100);
    record_path(dir, bad2, path2, sizeof path2);
    REQUIRE(stat(path2, &sb) == 0, "%s", path2);
    REQUIRE(truncate(path2, sb.st_size - 10) == 0, "truncate");

    /* the CLI reports them too (read-only: nothing is changed) */
    const char *bin = getenv("SVLM_BIN");
    if (bin && *bin) {
        snprintf(cmd, sizeof cmd, "'%s' memory dump '%s' --json > '%s/dump.json'", bin, dir, test_tmpdir());
        int rc = system(cmd);
        CHECK(WIFEXITED(rc) && WEXITSTATUS(rc) == 3, "dump of a damaged bank exits 3 (rc %d)", rc);
        snprintf(path2, sizeof path2, "%s/dump.json", test_tmpdir());
        f = fopen(path2, "rb");
        REQUIRE(f, "dump output");
        static char out[1 << 16];
        size_t n = fread(out, 1, sizeof out - 1, f);
        out[n] = 0;
        fclose(f);
        int listed = 0;
        for (char *p = out; (p = strstr(p, "\"tier\"")); p++)
            listed++;
        CHECK(listed == before->n - 2, "dump lists %d entries, expected %d", listed, before->n - 2);
        CHECK(strstr(out, "\"rejected\":2") && strstr(out, "checksum mismatch"), "dump output: %.300s", out);
        snprintf(cmd, sizeof cmd, "'%s' memory dump '%s/nonexistent' 2>/dev/null", bin, dir);
        rc = system(cmd);
        CHECK(WIFEXITED(rc) && WEXITSTATUS(rc) == 1, "dump of a missing directory fails cleanly");
        record_path(dir, bad1, path, sizeof path);
        CHECK(stat(path, &sb) == 0, "dump left the corrupt record in place");
    }

    m = open_bank(dir, &r);
    CHECK(r.rejected == 2 && r.loaded == before->n - 2, "loaded %d, rejected %d", r.loaded, r.rejected);
    char name[64];
    snprintf(name, sizeof name, "e%016llx.rec", (unsigned long long)bad1);
    CHECK(strstr(r.detail, name) && strstr(r.detail, "checksum"), "report names the corrupt record: %s",
          r.detail);
    take(m, after);
    CHECK(after->n == before->n - 2, "the stream starts with the %d verified entries (%d)", before->n - 2,
          after->n);
    svlm_memory_free(m);
    /* the damaged records were set aside and the manifest rewritten: the next open is clean */
    m = open_bank(dir, &r);
    CHECK(r.rejected == 0 && r.manifest_ok && r.loaded == before->n - 2, "clean after recovery: %s",
          r.detail);
    svlm_memory_free(m);

    /* a corrupted manifest: reported, every record that verifies is still loaded */
    snprintf(path, sizeof path, "%s/MANIFEST", dir);
    flip_byte(path, 20);
    m = open_bank(dir, &r);
    CHECK(!r.manifest_ok && strstr(r.detail, "MANIFEST") && r.loaded == before->n - 2,
          "manifest: %d loaded, %s", r.loaded, r.detail);
    svlm_memory_free(m);
    /* a truncated manifest: likewise */
    REQUIRE(stat(path, &sb) == 0, "manifest rewritten");
    REQUIRE(truncate(path, sb.st_size / 2) == 0, "truncate");
    m = open_bank(dir, &r);
    CHECK(!r.manifest_ok && r.loaded == before->n - 2, "truncated manifest: %d loaded, %s", r.loaded,
          r.detail);
    svlm_memory_free(m);

    /* a bank of another width is refused with a clear message */
    svlm_memory_opts o;
    svlm_memory_opts_default(&o);
    o.dim = DIM * 2;
    o.dir = dir;
    CHECK(svlm_memory_create(&o, &m, &err) == SVLM_E_INVALID && strstr(err.msg, "dim"), "%s", err.msg);
    /* ... without its manifest too, and nothing is touched: every record had been set aside as
     * corrupt and an empty manifest written, so the bank's own model then found it gone */
    snprintf(path, sizeof path, "%s/MANIFEST", dir);
    REQUIRE(unlink(path) == 0, "remove the manifest");
    CHECK(svlm_memory_create(&o, &m, &err) == SVLM_E_INVALID && strstr(err.msg, "another model"),
          "another width, no manifest: %s", err.msg);
    m = open_bank(dir, &r);
    CHECK(r.loaded == before->n - 2, "its own model after that: %d of %d loaded, %s", r.loaded, before->n - 2,
          r.detail);

    /* one writer a directory: a second one is refused while the first holds it, a reader is not */
    svlm_memory *second = NULL;
    o.dim = DIM;
    CHECK(svlm_memory_create(&o, &second, &err) == SVLM_E_IO && strstr(err.msg, "in use"),
          "a second writer: %s", err.msg);
    o.read_only = 1;
    CHECK(svlm_memory_create(&o, &second, &err) == SVLM_OK, "a reader beside the writer: %s", err.msg);
    svlm_memory_free(second);
    o.read_only = 0;
    svlm_memory_free(m);
    CHECK(svlm_memory_create(&o, &second, &err) == SVLM_OK, "a writer once the first is gone: %s", err.msg);
    svlm_memory_free(second);

    /* at the far end of time: every clip a stream near 1e12 s writes reloads (a clip ends a
     * frame's interval after its last frame; the loader refuses times beyond 1e12), and a time
     * past 1e12 is refused on push */
    snprintf(dir, sizeof dir, "%s/mem-far", test_tmpdir());
    m = open_bank(dir, &r);
    const double t_end = 1e12;
    for (int f = 0; f < 600; f++) {
        synth_frame(&s, f, frame);
        REQUIRE(svlm_memory_push(m, t_end - 599 + f, frame, T_TOK, NULL, &err) == SVLM_OK, "frame %d: %s", f,
                err.msg);
    }
    CHECK(svlm_memory_push(m, 2 * t_end, frame, T_TOK, NULL, &err) == SVLM_E_INVALID &&
              strstr(err.msg, "1e12"),
          "a push at 2e12 s: %s", err.msg);
    REQUIRE(svlm_memory_flush(m, &err) == SVLM_OK, "%s", err.msg);
    take(m, before);
    svlm_memory_free(m);
    m = open_bank(dir, &r);
    CHECK(r.manifest_ok && r.rejected == 0 && r.loaded == before->n && before->n > 0,
          "near 1e12 s: loaded %d of %d, rejected %d: %s", r.loaded, before->n, r.rejected, r.detail);
    svlm_memory_free(m);

    failed_save_after_shrink(&s);

    free(before);
    free(after);
    synth_free(&s);
    return 0;
}
