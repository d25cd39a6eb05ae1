/*
 * libFuzzer harness: a persisted memory bank (memory/memory_store.c) loaded from a directory
 * whose files the input gives. Each input is written to a scratch directory and opened
 *  - read-only with dim 0, as `svlm memory dump DIR` does (mem_store_peek_dims, then the
 *    manifest and records; every entry listed and its times formatted), and
 *  - read-write at the widths found (a stream resuming the bank: corrupt records set aside,
 *    the manifest rewritten, the budget enforced with a small budget and few entries, so loaded
 *    entries are merged and evicted), then retrieval, a few frames pushed and flushed; the
 *    directory it leaves must reopen with a verified manifest and nothing rejected.
 *
 * Input: byte 0 holds flags, then files, each "@@@NAME\n" followed by its bytes (up to the next
 * "@@@"). NAME keeps only [A-Za-z0-9._-] (at most 64 characters). Flags: 0x01 recompute the
 * record and manifest checksums (and the manifest's record checksums, by id), so mutations get
 * past the CRC checks; 0x02 skip the read-write part; bits 4-6: frames pushed (0-7).
 * The scratch directory is in $FUZZ_MEMORY_TMP, else /dev/shm, else $TMPDIR or /tmp.
 */
#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "memory/memory_bank.h"
#include "memory/memory_internal.h"

#define MAX_FILES 64

static char scratch[1024];
static volatile double sink; /* keeps the reads below */

static void clear_dir(void) {
    DIR *d = opendir(scratch);
    if (!d) return;
    struct dirent *de;
    char path[1400];
    while ((de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        snprintf(path, sizeof path, "%s/%s", scratch, de->d_name);
        unlink(path);
    }
    closedir(d);
}

static void remove_scratch(void) {
    clear_dir();
    rmdir(scratch);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    const char *base = getenv("FUZZ_MEMORY_TMP");
    if (!base || !*base) base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : getenv("TMPDIR");
    if (!base || !*base) base = "/tmp";
    snprintf(scratch, sizeof scratch, "%s/fuzz_memory.XXXXXX", base);
    if (!mkdtemp(scratch)) {
        perror("fuzz_memory: mkdtemp");
        exit(1);
    }
    atexit(remove_scratch);
    return 0;
}

typedef struct file {
    char name[65];
    uint8_t *data;
    size_t n;
} file;

static const uint8_t *find_marker(const uint8_t *p, const uint8_t *end) {
    for (; p + 3 <= end; p++)
        if (p[0] == '@' && p[1] == '@' && p[2] == '@') return p;
    return end;
}

/* Splits the input into files; returns how many. */
static int split(const uint8_t *data, size_t size, file *files) {
    int n = 0;
    const uint8_t *end = data + size, *p = find_marker(data, end);
    while (p < end && n < MAX_FILES) {
        p += 3;
        const uint8_t *nl = memchr(p, '\n', (size_t)(end - p));
        const uint8_t *name_end = nl ? nl : end;
        file *f = &files[n];
        size_t len = 0;
        for (const uint8_t *c = p; c < name_end && len < 64; c++)
            if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
                *c == '.' || *c == '_' || *c == '-')
                f->name[len++] = (char)*c;
        f->name[len] = 0;
        const uint8_t *body = nl ? nl + 1 : end, *next = find_marker(body, end);
        f->n = (size_t)(next - body);
        f->data = malloc(f->n ? f->n : 1);
        if (!f->data) break;
        memcpy(f->data, body, f->n);
        if (len && strcmp(f->name, ".") && strcmp(f->name, ".."))
            n++;
        else
            free(f->data);
        p = next;
    }
    return n;
}

static uint64_t rd64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* Records' and manifests' trailing CRCs recomputed; manifest rows take their record's CRC. */
static void fix_crcs(file *files, int n) {
    for (int i = 0; i < n; i++) {
        file *f = &files[i];
        if (f->n >= 76 && !memcmp(f->data, "SVMR", 4)) {
            uint32_t c = mem_crc32(0, f->data, f->n - 4);
            memcpy(f->data + f->n - 4, &c, 4);
        }
    }
    for (int i = 0; i < n; i++) {
        file *f = &files[i];
        if (f->n < 60 || memcmp(f->data, "SVMM", 4)) continue;
        for (size_t row = 56; row + 16 <= f->n - 4; row += 16)
            for (int j = 0; j < n; j++)
                if (files[j].n >= 76 && !memcmp(files[j].data, "SVMR", 4) &&
                    rd64(files[j].data + 8) == rd64(f->data + row))
                    memcpy(f->data + row + 8, files[j].data + files[j].n - 4, 4);
        uint32_t c = mem_crc32(0, f->data, f->n - 4);
        memcpy(f->data + f->n - 4, &c, 4);
    }
}

static void write_files(const file *files, int n) {
    clear_dir();
    char path[1400];
    for (int i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/%.64s", scratch, files[i].name);
        FILE *f = fopen(path, "wb");
        if (!f) continue;
        if (files[i].n) fwrite(files[i].data, 1, files[i].n, f);
        fclose(f);
    }
}

/* What `svlm memory dump` reads of a bank, and what a resuming stream does with its clock. */
static void inspect(svlm_memory *m) {
    svlm_memory_stats s;
    svlm_memory_stats_get(m, &s);
    svlm_memory_load_report r;
    svlm_memory_load_report_get(m, &r);
    if (strlen(r.detail) >= sizeof r.detail) abort();
    double acc = (double)s.bytes + (double)r.loaded + (double)strlen(r.detail);
    for (int i = 0; i < svlm_memory_count(m); i++) {
        svlm_memory_entry_info e;
        if (svlm_memory_entry(m, i, &e)) abort();
        char a[32], b[32], intro[96];
        svlm_memory_format_clock(e.t0, a, sizeof a);
        svlm_memory_format_clock(e.t1, b, sizeof b);
        svlm_memory_format_intro(e.t0, e.t1, intro, sizeof intro);
        acc += (double)strlen(a) + (double)strlen(b) + (double)strlen(intro) + (double)e.n_tokens +
               (double)e.bytes + e.importance + (double)svlm_memory_tier_name(e.tier)[0];
    }
    /* pipeline/stream.c: a resumed bank's stream clock continues after what it remembers */
    double time_offset = 0;
    if (s.frames > 0 || s.t_last > 0) time_offset = (double)(int64_t)s.t_last + 1.0;
    sink = acc + time_offset;
}

static void query(svlm_memory *m, int kw) {
    float *q = calloc((size_t)kw, sizeof(float));
    if (!q) return;
    for (int j = 0; j < kw; j++)
        q[j] = (float)((j * 7) % 5) - 2.0f;
    svlm_memory_query qq;
    svlm_memory_query_default(&qq);
    qq.vecs = q;
    qq.n_vecs = 1;
    svlm_memory_hits h;
    svlm_err err = {0};
    if (svlm_memory_retrieve(m, &qq, &h, &err) == SVLM_OK) {
        double acc = 0;
        for (int i = 0; i < h.n; i++)
            acc += h.hit[i].score + h.hit[i].tokens[(size_t)h.hit[i].n_tokens * (size_t)m->opts.dim - 1];
        sink = acc;
        svlm_memory_hits_free(&h);
    }
    free(q);
}

static void resume(int dim, int key_dim, int frames) {
    svlm_memory_opts o;
    svlm_memory_opts_default(&o);
    o.dir = scratch;
    o.dim = dim;
    o.key_dim = key_dim;
    o.budget_bytes = (size_t)64 << 10;
    o.max_entries = 8;
    o.short_frames = 2;
    svlm_memory *m = NULL;
    svlm_err err = {0};
    if (svlm_memory_create(&o, &m, &err)) return;
    inspect(m);
    int kw = key_dim > 0 ? key_dim : dim;
    query(m, kw);
    const int T = 4;
    float *tok = malloc((size_t)T * (size_t)dim * sizeof(float)), *key = malloc((size_t)kw * sizeof(float));
    svlm_memory_stats s;
    svlm_memory_stats_get(m, &s);
    double t =
        isfinite(s.t_last) && s.t_last > 0 && s.t_last < 1e11 ? s.t_last + 1 : 0; /* (resumed: no earlier) */
    int ok = 1;
    for (int f = 0; tok && key && f < frames && ok; f++) {
        for (size_t j = 0; j < (size_t)T * (size_t)dim; j++)
            tok[j] = (float)(((j + (size_t)(f / 3) * 5) * 2654435761u) % 1000) / 500.0f - 1.0f;
        for (int j = 0; j < kw; j++)
            key[j] = tok[j % (T * dim)];
        ok = svlm_memory_push(m, t + f, tok, T, key_dim > 0 ? key : NULL, &err) == SVLM_OK;
    }
    if (ok && frames) ok = svlm_memory_flush(m, &err) == SVLM_OK;
    free(tok);
    free(key);
    if (ok) query(m, kw);
    svlm_memory_free(m);
    if (!ok) return; /* pushing failed for a reason of its own (a frame over the budget) */

    /* what the resumed bank left behind verifies */
    svlm_memory_opts_default(&o);
    o.dir = scratch;
    o.read_only = 1;
    o.budget_bytes = (size_t)1 << 40;
    o.max_entries = 1 << 30;
    if (svlm_memory_create(&o, &m, &err)) {
        if (err.status == SVLM_E_FORMAT) return; /* nothing persisted: no manifest, no record */
        fprintf(stderr, "fuzz_memory: the bank left behind does not open: %s\n", err.msg);
        abort();
    }
    svlm_memory_load_report r;
    svlm_memory_load_report_get(m, &r);
    if (!r.manifest_ok || r.rejected) {
        fprintf(stderr,
                "fuzz_memory: the bank left behind does not verify (manifest_ok %d, %d rejected): %s\n",
                r.manifest_ok, r.rejected, r.detail);
        abort();
    }
    inspect(m);
    svlm_memory_free(m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!scratch[0]) LLVMFuzzerInitialize(NULL, NULL);
    if (!size) return 0;
    uint8_t flags = data[0];
    static file files[MAX_FILES];
    int n = split(data + 1, size - 1, files);
    if (flags & 1) fix_crcs(files, n);
    write_files(files, n);

    /* svlm memory dump DIR */
    svlm_memory_opts o;
    svlm_memory_opts_default(&o);
    o.dir = scratch;
    o.read_only = 1;
    o.budget_bytes = (size_t)1 << 40;
    o.max_entries = 1 << 30;
    svlm_memory *m = NULL;
    svlm_err err = {0};
    int dim = 8, key_dim = 0;
    if (svlm_memory_create(&o, &m, &err) == SVLM_OK) {
        inspect(m);
        dim = m->opts.dim;
        key_dim = m->opts.key_dim;
        svlm_memory_free(m);
    }
    if (!(flags & 2)) resume(dim, key_dim, (flags >> 4) & 7);
    for (int i = 0; i < n; i++)
        free(files[i].data);
    clear_dir();
    return 0;
}
