/*
 * Persistence of MID and EVENT entries in a directory.
 *
 * Layout: one record per entry, e<id as 16 hex digits>.rec, and MANIFEST listing the live
 * records with their checksums. Every file is written to NAME.tmp, fsynced, renamed over
 * NAME, and the directory fsynced: a file is either complete or absent. Sync order: new
 * records, then the manifest, then deleting records no longer listed; so a crash at any
 * point leaves a manifest whose records all exist (orphans are removed on the next open).
 *
 * Record (little-endian, 72-byte header):
 *   "SVMR" u32 version=1 | u64 id | u32 tier | i32 level | f64 t0 | f64 t1 | i64 n_frames |
 *   u32 n_tokens | u32 dim | u32 n_keys | u32 key_dim | f32 importance | u32 0 |
 *   f32 tokens[n_tokens*dim] | f32 keys[n_keys*key_dim] | u32 crc32 of all before
 * MANIFEST:
 *   "SVMM" u32 version=1 | u32 dim | u32 key_dim | u64 next_id | f64 t_first | f64 t_last |
 *   i64 frames | u32 count | u32 0 | count x (u64 id | u32 record crc | u32 0) | u32 crc32
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/checked.h"
#include "common/err.h"
#include "memory/memory_internal.h"

#define REC_MAGIC  "SVMR"
#define MAN_MAGIC  "SVMM"
#define VERSION    1u
#define REC_HEADER 72
#define MAN_HEADER 56
#define MAN_ROW    16
#define MAX_FILE   ((size_t)1 << 31)

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "memory_store.c writes little-endian files by copying host values"
#endif

static uint32_t crc_table[256];

static void crc_table_make(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[i] = c;
    }
}

uint32_t mem_crc32(uint32_t crc, const void *data, size_t n) {
    static pthread_once_t once = PTHREAD_ONCE_INIT; /* banks of several streams push at once */
    pthread_once(&once, crc_table_make);
    const uint32_t *table = crc_table;
    const uint8_t *p = data;
    crc = ~crc;
    for (size_t i = 0; i < n; i++)
        crc = table[(crc ^ p[i]) & 0xFF] ^ (crc >> 8);
    return ~crc;
}

/* The reason a record of another model's width is skipped (compared by address). */
static const char OTHER_WIDTH[] = "token or key width differs from the bank's";

/* ---- little helpers -------------------------------------------------------------------- */

typedef struct wbuf {
    uint8_t *p;
    size_t n;
} wbuf;

static void put(wbuf *b, const void *v, size_t n) {
    memcpy(b->p + b->n, v, n);
    b->n += n;
}
static void put_u32(wbuf *b, uint32_t v) {
    put(b, &v, 4);
}
static void put_u64(wbuf *b, uint64_t v) {
    put(b, &v, 8);
}
static void put_f64(wbuf *b, double v) {
    put(b, &v, 8);
}

static uint32_t get_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}
static uint64_t get_u64(const uint8_t *p) {
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}
static double get_f64(const uint8_t *p) {
    double v;
    memcpy(&v, p, 8);
    return v;
}

static void path_of(const svlm_memory *m, char *buf, size_t n, const char *name) {
    snprintf(buf, n, "%s/%s", m->dir, name);
}
static void record_name(uint64_t id, char *buf, size_t n) {
    snprintf(buf, n, "e%016" PRIx64 ".rec", id);
}

static svlm_status fsync_dir(const char *dir, svlm_err *err) {
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0) return svlm_fail(err, SVLM_E_IO, "memory: cannot open %s: %s", dir, strerror(errno));
    int rc = fsync(fd);
    close(fd);
    if (rc) return svlm_fail(err, SVLM_E_IO, "memory: fsync %s: %s", dir, strerror(errno));
    return SVLM_OK;
}

/* NAME.tmp, written and fsynced, renamed over NAME (the caller fsyncs the directory). */
static svlm_status write_atomic(const svlm_memory *m, const char *name, const void *data, size_t n,
                                svlm_err *err) {
    char path[4096], tmp[4200];
    path_of(m, path, sizeof path, name);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return svlm_fail(err, SVLM_E_IO, "memory: cannot create %s: %s", tmp, strerror(errno));
    const uint8_t *p = data;
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(fd, p + done, n - done);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            int e = errno;
            close(fd);
            unlink(tmp);
            return svlm_fail(err, SVLM_E_IO, "memory: writing %s: %s", tmp, strerror(e));
        }
        done += (size_t)w;
    }
    /* both, whatever the first says (a failed fsync left the descriptor open, one per retry) */
    const int synced = fsync(fd) == 0 ? 0 : errno, closed = close(fd) == 0 ? 0 : errno;
    if (synced || closed) {
        unlink(tmp);
        return svlm_fail(err, SVLM_E_IO, "memory: fsync %s: %s", tmp, strerror(synced ? synced : closed));
    }
    if (rename(tmp, path)) {
        unlink(tmp);
        return svlm_fail(err, SVLM_E_IO, "memory: rename %s: %s", tmp, strerror(errno));
    }
    return SVLM_OK;
}

/* Reads a whole file (at most MAX_FILE bytes). Returns NULL with a reason in why. */
static uint8_t *read_all(const char *path, size_t *n, const char **why) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        *why = errno == ENOENT ? "missing" : "unreadable";
        return NULL;
    }
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            if (cap >= MAX_FILE) {
                *why = "too large";
                free(buf);
                fclose(f);
                return NULL;
            }
            cap = cap ? cap * 2 : 65536;
            uint8_t *p = realloc(buf, cap);
            if (!p) {
                *why = "out of memory";
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = p;
        }
        size_t r = fread(buf + len, 1, cap - len, f);
        len += r;
        if (r == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        *why = "read error";
        free(buf);
        return NULL;
    }
    *n = len;
    return buf;
}

static void note(svlm_memory *m, const char *fmt, const char *a, const char *b) {
    size_t used = strlen(m->report.detail);
    if (used + 4 >= sizeof m->report.detail) return;
    snprintf(m->report.detail + used, sizeof m->report.detail - used, used ? "; " : "");
    used = strlen(m->report.detail);
    snprintf(m->report.detail + used, sizeof m->report.detail - used, fmt, a, b);
}

/* ---- records --------------------------------------------------------------------------- */

static svlm_status write_record(svlm_memory *m, mem_entry *e, svlm_err *err) {
    size_t payload = ((size_t)e->n_tokens * (size_t)m->opts.dim + (size_t)e->n_keys * (size_t)m->kdim) * 4;
    wbuf b = {malloc(REC_HEADER + payload + 4), 0};
    if (!b.p) return svlm_fail(err, SVLM_E_NOMEM, "memory: out of memory writing a record");
    put(&b, REC_MAGIC, 4);
    put_u32(&b, VERSION);
    put_u64(&b, e->id);
    put_u32(&b, (uint32_t)e->tier);
    put_u32(&b, (uint32_t)e->level);
    put_f64(&b, e->t0);
    put_f64(&b, e->t1);
    put_u64(&b, (uint64_t)e->n_frames);
    put_u32(&b, (uint32_t)e->n_tokens);
    put_u32(&b, (uint32_t)m->opts.dim);
    put_u32(&b, (uint32_t)e->n_keys);
    put_u32(&b, (uint32_t)m->kdim);
    put(&b, &e->importance, 4);
    put_u32(&b, 0);
    put(&b, e->tokens, (size_t)e->n_tokens * (size_t)m->opts.dim * 4);
    put(&b, e->keys, (size_t)e->n_keys * (size_t)m->kdim * 4);
    uint32_t crc = mem_crc32(0, b.p, b.n);
    put_u32(&b, crc);
    char name[64];
    record_name(e->id, name, sizeof name);
    svlm_status st = write_atomic(m, name, b.p, b.n, err);
    free(b.p);
    if (!st) {
        e->persisted = 1;
        e->crc = crc;
    }
    return st;
}

/* Parses and verifies one record. Returns the entry, or NULL with the reason in why. */
static mem_entry *parse_record(svlm_memory *m, const uint8_t *p, size_t n, const char **why) {
    if (n < REC_HEADER + 4 || memcmp(p, REC_MAGIC, 4)) {
        *why = n < REC_HEADER + 4 ? "truncated" : "not a memory record";
        return NULL;
    }
    if (mem_crc32(0, p, n - 4) != get_u32(p + n - 4)) {
        *why = "checksum mismatch (corrupt or truncated)";
        return NULL;
    }
    uint32_t tier = get_u32(p + 16), n_tokens = get_u32(p + 48), dim = get_u32(p + 52);
    uint32_t n_keys = get_u32(p + 56), key_dim = get_u32(p + 60);
    size_t need = 0, a, b;
    if (get_u32(p + 4) != VERSION) {
        *why = "unsupported version";
        return NULL;
    }
    if (dim != (uint32_t)m->opts.dim || key_dim != (uint32_t)m->kdim) {
        *why = OTHER_WIDTH;
        return NULL;
    }
    if ((tier != SVLM_MEMORY_MID && tier != SVLM_MEMORY_EVENT) || n_tokens < 1 || n_tokens > (1u << 20) ||
        n_keys < 1 || n_keys > SVLM_MEMORY_MAX_KEYS || !svlm_mul_size(n_tokens, dim, &a) ||
        !svlm_mul_size(n_keys, key_dim, &b) || !svlm_add_size(a, b, &need) ||
        !svlm_mul_size(need, 4, &need) || need + REC_HEADER + 4 != n) {
        *why = "inconsistent header";
        return NULL;
    }
    double t0 = get_f64(p + 24), t1 = get_f64(p + 32);
    int64_t n_frames = (int64_t)get_u64(p + 40);
    int32_t level = (int32_t)get_u32(p + 20);
    if (!(t0 >= -MEM_MAX_TIME) || !(t1 <= MEM_MAX_TIME) || t1 < t0 || get_u64(p + 8) == 0 ||
        get_u64(p + 8) >= MEM_MAX_ID || n_frames < 0 || n_frames > MEM_MAX_FRAMES || level < 0 ||
        level > MEM_MAX_LEVEL) {
        *why = "inconsistent header";
        return NULL;
    }
    mem_entry *e = mem_entry_new(m, (svlm_memory_tier)tier, (int)n_tokens, (int)n_keys);
    if (!e) {
        *why = "out of memory";
        return NULL;
    }
    e->id = get_u64(p + 8);
    e->level = level;
    e->t0 = t0;
    e->t1 = t1;
    e->n_frames = n_frames;
    memcpy(&e->importance, p + 64, 4);
    memcpy(e->tokens, p + REC_HEADER, a * 4);
    memcpy(e->keys, p + REC_HEADER + a * 4, b * 4);
    e->persisted = 1;
    e->crc = get_u32(p + n - 4);
    return e;
}

static void load_record(svlm_memory *m, const char *name, uint64_t id, int has_listed_crc,
                        uint32_t listed_crc) {
    for (int i = 0; i < m->n_entries; i++)
        if (m->entries[i]->id == id) { /* listed twice: its record is loaded, leave it in place */
            m->report.rejected++;
            note(m, "%s: %s", name, "listed twice");
            return;
        }
    char path[4096];
    path_of(m, path, sizeof path, name);
    const char *why = NULL;
    size_t n = 0;
    uint8_t *p = read_all(path, &n, &why);
    int exists = p != NULL;
    mem_entry *e = p ? parse_record(m, p, n, &why) : NULL;
    free(p);
    if (e && e->id != id) { /* it would be written back, and deleted, under another name */
        why = "its id differs from its file name";
        mem_entry_free(e);
        e = NULL;
    } else if (e && has_listed_crc && e->crc != listed_crc) {
        why = "differs from the manifest";
        mem_entry_free(e);
        e = NULL;
    }
    if (e) {
        for (int i = 0; i < m->n_entries; i++) /* a duplicate id would confuse deletion */
            if (m->entries[i]->id == e->id) {
                why = "duplicate id";
                mem_entry_free(e);
                e = NULL;
                break;
            }
    }
    if (!e && why == OTHER_WIDTH && !has_listed_crc) { /* no manifest: another model's bank, left alone */
        m->other_width++;
        return;
    }
    if (!e || mem_insert(m, e, NULL)) {
        m->report.rejected++;
        note(m, "%s: %s", name, why ? why : "out of memory");
        if (!m->opts.read_only && exists) { /* keep it aside for inspection, out of the bank's way */
            char bad[4200];
            snprintf(bad, sizeof bad, "%s.corrupt", path);
            rename(path, bad);
        }
        return;
    }
    m->report.loaded++;
}

/* ---- manifest -------------------------------------------------------------------------- */

typedef struct manifest {
    uint32_t dim, key_dim, count;
    uint64_t next_id;
    double t_first, t_last;
    int64_t frames;
    const uint8_t *rows;
} manifest;

static int parse_manifest(const uint8_t *p, size_t n, manifest *mf, const char **why) {
    if (n < MAN_HEADER + 4 || memcmp(p, MAN_MAGIC, 4)) {
        *why = n < MAN_HEADER + 4 ? "truncated" : "not a memory manifest";
        return -1;
    }
    if (mem_crc32(0, p, n - 4) != get_u32(p + n - 4)) {
        *why = "checksum mismatch (corrupt or truncated)";
        return -1;
    }
    mf->dim = get_u32(p + 8);
    mf->key_dim = get_u32(p + 12);
    mf->next_id = get_u64(p + 16);
    mf->t_first = get_f64(p + 24);
    mf->t_last = get_f64(p + 32);
    mf->frames = (int64_t)get_u64(p + 40);
    mf->count = get_u32(p + 48);
    mf->rows = p + MAN_HEADER;
    if (get_u32(p + 4) != VERSION || (size_t)mf->count * MAN_ROW + MAN_HEADER + 4 != n || mf->dim < 1 ||
        mf->next_id > MEM_MAX_ID || mf->dim > (1u << 16) || mf->key_dim > (1u << 16) ||
        !(fabs(mf->t_first) <= MEM_MAX_TIME) || !(fabs(mf->t_last) <= MEM_MAX_TIME)) {
        *why = "inconsistent header";
        return -1;
    }
    return 0;
}

static svlm_status write_manifest(svlm_memory *m, svlm_err *err) {
    int count = 0;
    for (int i = 0; i < m->n_entries; i++)
        count += m->entries[i]->persisted;
    wbuf b = {malloc(MAN_HEADER + (size_t)count * MAN_ROW + 4), 0};
    if (!b.p) return svlm_fail(err, SVLM_E_NOMEM, "memory: out of memory writing the manifest");
    put(&b, MAN_MAGIC, 4);
    put_u32(&b, VERSION);
    put_u32(&b, (uint32_t)m->opts.dim);
    put_u32(&b, (uint32_t)m->opts.key_dim);
    put_u64(&b, m->next_id);
    put_f64(&b, m->st.t_first);
    put_f64(&b, m->st.t_last);
    put_u64(&b, (uint64_t)m->st.frames);
    put_u32(&b, (uint32_t)count);
    put_u32(&b, 0);
    for (int i = 0; i < m->n_entries; i++) {
        const mem_entry *e = m->entries[i];
        if (!e->persisted) continue;
        put_u64(&b, e->id);
        put_u32(&b, e->crc);
        put_u32(&b, 0);
    }
    put_u32(&b, mem_crc32(0, b.p, b.n));
    svlm_status st = write_atomic(m, "MANIFEST", b.p, b.n, err);
    free(b.p);
    return st;
}

svlm_status mem_store_sync(svlm_memory *m, svlm_err *err) {
    svlm_status st;
    for (int i = 0; i < m->n_entries; i++) {
        mem_entry *e = m->entries[i];
        if (e->tier != SVLM_MEMORY_SHORT && !e->persisted && (st = write_record(m, e, err))) return st;
    }
    if ((st = fsync_dir(m->dir, err)) || (st = write_manifest(m, err)) || (st = fsync_dir(m->dir, err)))
        return st;
    for (int i = 0; i < m->n_removed; i++) {
        char name[64], path[4096];
        record_name(m->removed_ids[i], name, sizeof name);
        path_of(m, path, sizeof path, name);
        unlink(path); /* already unlisted: a leftover is an orphan, removed on the next open */
    }
    m->n_removed = 0;
    m->dirty = 0;
    return SVLM_OK;
}

/* ---- loading --------------------------------------------------------------------------- */

static int is_record_name(const char *s) {
    size_t n = strlen(s);
    if (n != 21 || s[0] != 'e' || strcmp(s + 17, ".rec")) return 0;
    for (int i = 1; i < 17; i++) /* as record_name() writes it: strtoull takes signs and spaces too */
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) return 0;
    return 1;
}

/* Loads every record in dir (no manifest to trust); with only_orphans, deletes instead the
 * records the manifest does not list, and leftover temporary files. */
static void scan_dir(svlm_memory *m, int only_orphans) {
    DIR *d = opendir(m->dir);
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d))) {
        const char *s = de->d_name;
        size_t n = strlen(s);
        char path[4096];
        path_of(m, path, sizeof path, s);
        if (n > 4 && !strcmp(s + n - 4, ".tmp")) {
            if (!m->opts.read_only) unlink(path);
            continue;
        }
        if (!is_record_name(s)) continue;
        uint64_t id = strtoull(s + 1, NULL, 16);
        int listed = 0;
        for (int i = 0; i < m->n_entries && !listed; i++)
            listed = m->entries[i]->id == id;
        if (only_orphans) {
            if (!listed && !m->opts.read_only) unlink(path);
        } else if (!listed) {
            load_record(m, s, id, 0, 0);
        }
    }
    closedir(d);
}

svlm_status mem_store_load(svlm_memory *m, svlm_err *err) {
    if (!m->opts.read_only && mkdir(m->dir, 0755) && errno != EEXIST)
        return svlm_fail(err, SVLM_E_IO, "memory: cannot create %s: %s", m->dir, strerror(errno));
    struct stat sb;
    if (stat(m->dir, &sb) || !S_ISDIR(sb.st_mode))
        return svlm_fail(err, SVLM_E_IO, "memory: %s is not a directory", m->dir);
    char path[4096];
    if (!m->opts.read_only) {
        /* one writer a directory: two handed out the same ids and overwrote each other's records,
         * and each deleted the other's files as orphans when it opened (readers take no lock) */
        path_of(m, path, sizeof path, "LOCK");
        m->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (m->lock_fd < 0)
            return svlm_fail(err, SVLM_E_IO, "memory: cannot open %s: %s", path, strerror(errno));
        if (flock(m->lock_fd, LOCK_EX | LOCK_NB))
            return svlm_fail(err, SVLM_E_IO,
                             "memory: %s is in use by another svlm (it holds %s); give each stream "
                             "and server a directory of its own",
                             m->dir, path);
    }
    path_of(m, path, sizeof path, "MANIFEST");
    const char *why = NULL;
    size_t n = 0;
    uint8_t *p = read_all(path, &n, &why);
    manifest mf;
    int ok = p && parse_manifest(p, n, &mf, &why) == 0;
    if (ok && (mf.dim != (uint32_t)m->opts.dim || mf.key_dim != (uint32_t)m->opts.key_dim)) {
        free(p);
        return svlm_fail(err, SVLM_E_INVALID,
                         "memory: %s holds a bank of dim %u, key_dim %u; this stream has dim %d, key_dim %d",
                         m->dir, mf.dim, mf.key_dim, m->opts.dim, m->opts.key_dim);
    }
    m->report.manifest_ok = ok;
    if (ok) {
        for (uint32_t i = 0; i < mf.count; i++) {
            char name[64];
            const uint8_t *row = mf.rows + (size_t)i * MAN_ROW;
            record_name(get_u64(row), name, sizeof name);
            load_record(m, name, get_u64(row), 1, get_u32(row + 8));
        }
        if (mf.next_id > m->next_id) m->next_id = mf.next_id;
        m->st.t_first = mf.t_first;
        m->st.t_last = mf.t_last;
        scan_dir(m, 1);
    } else {
        if (!(p == NULL && !strcmp(why, "missing"))) note(m, "MANIFEST: %s%s", why, "");
        scan_dir(m, 0);
        if (m->other_width) { /* as with a manifest that says so: refused, nothing touched */
            free(p);
            return svlm_fail(err, SVLM_E_INVALID,
                             "memory: %s holds %d record%s of another width than this stream's (dim %d, "
                             "key_dim %d): another model's bank",
                             m->dir, m->other_width, m->other_width == 1 ? "" : "s", m->opts.dim,
                             m->opts.key_dim);
        }
        if (p == NULL && !strcmp(why, "missing") && m->report.loaded + m->report.rejected == 0)
            m->report.manifest_ok = 1; /* a new, empty directory */
        else if (p == NULL && !strcmp(why, "missing"))
            note(m, "MANIFEST: %s%s", why, "");
        if (m->n_entries) {
            m->st.t_first = m->entries[0]->t0;
            for (int i = 0; i < m->n_entries; i++)
                if (m->entries[i]->t1 > m->st.t_last) m->st.t_last = m->entries[i]->t1;
        }
    }
    free(p);
    if (!m->opts.read_only && (!m->report.manifest_ok || m->report.rejected)) {
        m->dirty = 1; /* write a manifest that lists exactly what verified */
        return mem_store_sync(m, err);
    }
    return SVLM_OK;
}

svlm_status mem_store_peek_dims(const char *dir, int *dim, int *key_dim, svlm_err *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/MANIFEST", dir);
    const char *why = NULL;
    size_t n = 0;
    uint8_t *p = read_all(path, &n, &why);
    manifest mf;
    if (p && parse_manifest(p, n, &mf, &why) == 0) {
        *dim = (int)mf.dim;
        *key_dim = (int)mf.key_dim;
        free(p);
        return SVLM_OK;
    }
    free(p);
    /* No usable manifest: take the widths from the first record that verifies. */
    DIR *d = opendir(dir);
    if (!d) return svlm_fail(err, SVLM_E_IO, "memory: cannot open %s: %s", dir, strerror(errno));
    struct dirent *de;
    svlm_status st =
        svlm_fail(err, SVLM_E_FORMAT, "memory: %s has no valid MANIFEST (%s) and no valid record", dir,
                  why ? why : "?");
    while ((de = readdir(d))) {
        if (!is_record_name(de->d_name)) continue;
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        uint8_t *r = read_all(path, &n, &why);
        if (r && n >= REC_HEADER + 4 && !memcmp(r, REC_MAGIC, 4) &&
            mem_crc32(0, r, n - 4) == get_u32(r + n - 4)) {
            *dim = (int)get_u32(r + 52);
            *key_dim = (int)get_u32(r + 60);
            /* a record stores the key width in use: equal to dim means derived keys */
            if (*key_dim == *dim) *key_dim = 0;
            free(r);
            st = SVLM_OK;
            break;
        }
        free(r);
    }
    closedir(d);
    return st;
}
