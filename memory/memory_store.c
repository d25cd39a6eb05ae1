/*
 * Persistence of MID and EVENT entries in a directory.
 *
 * Layout: one record per entry, e<id as 16 hex digits>.rec, and MANIFEST listing the live
 * records with their checksums. Every file is written to NAME.tmp, fsynced, renamed over
 * NAME, and the directory fsynced: a file is either complete or absent. Sync order: new
 * records, then the manifest, then deleting records no longer listed; so a crash at any
 * point leaves a manifest whose records all exist (orphans are removed on the next open). Where
 * opening found no manifest that lists just the records there (none, a corrupt one, records set
 * aside), one that does is written before any new record, so that holds from the first save on.
 * What opening keeps of the records found, within the budget, is planned in memory_resume.c.
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
#include "common/mkdirs.h"
#include "memory/memory_internal.h"
#include "memory/memory_resume.h"

#define REC_MAGIC  "SVMR"
#define MAN_MAGIC  "SVMM"
#define VERSION    1u
#define REC_HEADER MEM_REC_HEADER /* 72 */
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

/* Reasons compared by address: a record of another model's width is skipped; a file that is not
 * there has nothing to set aside; running out of memory fails the open instead of losing a record. */
static const char OTHER_WIDTH[] = "token or key width differs from the bank's";
static const char MISSING[] = "missing";
static const char OUT_OF_MEMORY[] = "out of memory";

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
    /* a fresh file: whatever a crash or someone left under the name goes first (a FIFO there would
     * block an open for writing; a directory stays, and the open fails) */
    unlink(tmp);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
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

/* What stands in a bank file's place when it is not a regular file, and what to do. */
static const char *not_regular(mode_t mode) {
    if (S_ISFIFO(mode)) return "a FIFO, not a regular file: not read (remove it)";
    if (S_ISDIR(mode)) return "a directory, not a regular file: not read (remove it)";
    if (S_ISSOCK(mode)) return "a socket, not a regular file: not read (remove it)";
    if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device, not a regular file: not read (remove it)";
    return "not a regular file: not read (remove it)";
}

/* Opens a bank file so that nothing can block: a FIFO, device, socket or directory in its place is
 * refused. It is looked at first, so what is not a regular file then is not opened; one that takes
 * the name between that look and the open is opened with O_NONBLOCK (a FIFO opens at once, a
 * device without waiting for a carrier) and refused by fstat before anything is read. The
 * descriptor of a regular file is made blocking again. Returns it with sb filled; or -1 with why
 * saying what is there instead, or with why NULL and errno set when open failed. */
static int open_file(const char *path, int flags, struct stat *sb, const char **why) {
    *why = NULL;
    if (stat(path, sb) == 0 && !S_ISREG(sb->st_mode)) {
        *why = not_regular(sb->st_mode);
        return -1;
    }
    int fd = open(path, flags | O_NONBLOCK | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    int fl = -1;
    if (fstat(fd, sb) == 0 && !S_ISREG(sb->st_mode))
        *why = not_regular(sb->st_mode);
    else if ((fl = fcntl(fd, F_GETFL)) >= 0 && fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) == 0)
        return fd;
    int e = errno;
    close(fd);
    errno = e;
    return -1;
}

/* Reads a whole bank file (a regular file of at most MAX_FILE bytes, its size checked before
 * anything is allocated). Returns NULL with a reason in why. */
static uint8_t *read_all(const char *path, size_t *n, const char **why) {
    struct stat sb;
    int fd = open_file(path, O_RDONLY, &sb, why);
    if (fd < 0) {
        if (!*why) *why = errno == ENOENT ? MISSING : "unreadable";
        return NULL;
    }
    if (sb.st_size < 0 || (uint64_t)sb.st_size > MAX_FILE) {
        close(fd);
        *why = "too large";
        return NULL;
    }
    size_t size = (size_t)sb.st_size, len = 0;
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) {
        close(fd);
        *why = OUT_OF_MEMORY;
        return NULL;
    }
    while (len < size) {
        ssize_t r = read(fd, buf + len, size - len);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            close(fd);
            free(buf);
            *why = "read error";
            return NULL;
        }
        if (r == 0) break; /* shorter than it was: checked like any truncated file */
        len += (size_t)r;
    }
    close(fd);
    *n = len;
    return buf;
}

void mem_note(svlm_memory *m, const char *fmt, const char *a, const char *b) {
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

/* The reason a record's size is not what its header says (compared by address). */
static const char SIZE_DIFFERS[] = "truncated or extended (its size is not what its header says)";

/* Checks a record's header, p[0..REC_HEADER), against the bank and against the record's size n:
 * everything but the checksum, so a resume can judge a record before reading its payload. 0, or
 * -1 with the reason in why. */
static int check_header(const svlm_memory *m, const uint8_t *p, size_t n, const char **why) {
    if (n < REC_HEADER + 4 || memcmp(p, REC_MAGIC, 4)) {
        *why = n < REC_HEADER + 4 ? "truncated" : "not a memory record";
        return -1;
    }
    uint32_t tier = get_u32(p + 16), n_tokens = get_u32(p + 48), dim = get_u32(p + 52);
    uint32_t n_keys = get_u32(p + 56), key_dim = get_u32(p + 60);
    size_t need = 0, a, b;
    if (get_u32(p + 4) != VERSION) {
        *why = "unsupported version";
        return -1;
    }
    if (dim != (uint32_t)m->opts.dim || key_dim != (uint32_t)m->kdim) {
        *why = OTHER_WIDTH;
        return -1;
    }
    if ((tier != SVLM_MEMORY_MID && tier != SVLM_MEMORY_EVENT) || n_tokens < 1 || n_tokens > (1u << 20) ||
        n_keys < 1 || n_keys > SVLM_MEMORY_MAX_KEYS || !svlm_mul_size(n_tokens, dim, &a) ||
        !svlm_mul_size(n_keys, key_dim, &b) || !svlm_add_size(a, b, &need) ||
        !svlm_mul_size(need, 4, &need)) {
        *why = "inconsistent header";
        return -1;
    }
    if (need + REC_HEADER + 4 != n) {
        *why = SIZE_DIFFERS;
        return -1;
    }
    double t0 = get_f64(p + 24), t1 = get_f64(p + 32);
    int64_t n_frames = (int64_t)get_u64(p + 40);
    int32_t level = (int32_t)get_u32(p + 20);
    if (!(t0 >= -MEM_MAX_TIME) || !(t1 <= MEM_MAX_TIME) || t1 < t0 || get_u64(p + 8) == 0 ||
        get_u64(p + 8) >= MEM_MAX_ID || n_frames < 0 || n_frames > MEM_MAX_FRAMES || level < 0 ||
        level > MEM_MAX_LEVEL) {
        *why = "inconsistent header";
        return -1;
    }
    float importance;
    memcpy(&importance, p + 64, 4);
    if (!isfinite(importance)) { /* (t0 and t1 are finite by the ranges above) */
        *why = "inconsistent header (its importance is not a finite number)";
        return -1;
    }
    return 0;
}

void mem_header_to_entry(const uint8_t *p, uint32_t crc, mem_entry *e) {
    e->id = get_u64(p + 8);
    e->tier = (svlm_memory_tier)get_u32(p + 16);
    e->level = (int32_t)get_u32(p + 20);
    e->t0 = get_f64(p + 24);
    e->t1 = get_f64(p + 32);
    e->n_frames = (int64_t)get_u64(p + 40);
    e->n_tokens = (int)get_u32(p + 48);
    e->n_keys = (int)get_u32(p + 56);
    memcpy(&e->importance, p + 64, 4);
    e->persisted = 1;
    e->crc = crc;
}

int mem_record_tokens(const uint8_t *p) {
    return (int)get_u32(p + 48);
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
    if (check_header(m, p, n, why)) {
        if (*why == SIZE_DIFFERS) *why = "inconsistent header"; /* it verified: its header is wrong */
        return NULL;
    }
    int n_tokens = (int)get_u32(p + 48), n_keys = (int)get_u32(p + 56);
    mem_entry *e = mem_entry_new(m, (svlm_memory_tier)get_u32(p + 16), n_tokens, n_keys);
    if (!e) {
        *why = OUT_OF_MEMORY;
        return NULL;
    }
    mem_header_to_entry(p, get_u32(p + n - 4), e);
    size_t a = (size_t)n_tokens * (size_t)m->opts.dim, b = (size_t)n_keys * (size_t)m->kdim;
    memcpy(e->tokens, p + REC_HEADER, a * 4);
    memcpy(e->keys, p + REC_HEADER + a * 4, b * 4);
    return e;
}

/* ---- finding records: headers checked before any payload is read ------------------------- */

/* Records are looked up by id through a hash: a scan per record made opening a manifest of
 * 80,000 rows take 15 s (quadratic; a crafted one of millions hung the open and `svlm memory dump`). */
static size_t id_hash(uint64_t id, int n_slot) {
    return (size_t)((id * 0x9E3779B97F4A7C15ull) >> 32) & (size_t)(n_slot - 1);
}

static int found_index(const mem_resume *rs, uint64_t id) {
    if (!rs->n_slot) return -1;
    for (size_t h = id_hash(id, rs->n_slot);; h = (h + 1) & (size_t)(rs->n_slot - 1)) {
        int i = rs->slot[h] - 1;
        if (i < 0) return -1;
        if (rs->r[i].id == id) return i;
    }
}

/* Room in the hash for one more record. -1 when out of memory. */
static int found_reserve(mem_resume *rs) {
    if (2 * ((size_t)rs->n + 1) < (size_t)rs->n_slot) return 0;
    if (rs->n_slot > (1 << 29)) return -1;
    int n_slot = rs->n_slot ? 2 * rs->n_slot : 256;
    int *slot = calloc((size_t)n_slot, sizeof *slot);
    if (!slot) return -1;
    for (int i = 0; i < rs->n; i++) {
        size_t h = id_hash(rs->r[i].id, n_slot);
        while (slot[h])
            h = (h + 1) & (size_t)(n_slot - 1);
        slot[h] = i + 1;
    }
    free(rs->slot);
    rs->slot = slot;
    rs->n_slot = n_slot;
    return 0;
}

/* A record refused: reported, and set aside for inspection, out of the bank's way, when there was
 * a file (whatever it is: renaming one opens nothing). A record is never deleted for being refused,
 * nor for being unreadable: one that could not be set aside stays in the resume's list, refused,
 * so the open does not delete it as an orphan. */
static void reject(svlm_memory *m, const char *name, const char *why, int set_aside) {
    m->report.rejected++;
    mem_note(m, "%s: %s", name, why ? why : OUT_OF_MEMORY);
    if (!m->opts.read_only && set_aside) {
        char path[4096], bad[4200];
        path_of(m, path, sizeof path, name);
        snprintf(bad, sizeof bad, "%s.corrupt", path);
        rename(path, bad);
    }
}

static int pread_full(int fd, uint8_t *p, size_t n, off_t at) {
    while (n) {
        ssize_t r = pread(fd, p, n, at);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return -1;
        p += r, n -= (size_t)r, at += r;
    }
    return 0;
}

/* Appends record id to the resume's list (refused or not yet). NULL when out of memory. */
static mem_rec_found *found_add(mem_resume *rs, uint64_t id) {
    if (found_reserve(rs)) return NULL;
    if (rs->n == rs->cap) {
        int cap = rs->cap ? rs->cap * 2 : 64;
        mem_rec_found *r = realloc(rs->r, (size_t)cap * sizeof *r);
        if (!r) return NULL;
        rs->r = r;
        rs->cap = cap;
    }
    mem_rec_found *r = &rs->r[rs->n++];
    memset(r, 0, sizeof *r);
    r->id = id;
    size_t h = id_hash(id, rs->n_slot); /* (an id is added once: probe_record looks first) */
    while (rs->slot[h])
        h = (h + 1) & (size_t)(rs->n_slot - 1);
    rs->slot[h] = rs->n;
    return r;
}

/* A record refused while probing: reported, set aside where there is a file, and kept in the
 * resume's list (refused) so that nothing deletes it as an orphan. -1 when out of memory. */
static int probe_reject(svlm_memory *m, mem_resume *rs, const char *name, uint64_t id, const char *why,
                        int exists) {
    reject(m, name, why, exists);
    mem_rec_found *r = found_add(rs, id);
    if (!r) return -1;
    r->rejected = 1;
    return 0;
}

/* Finds record NAME (id from its name; with has_listed_crc, listed in the manifest with that
 * checksum): its header and trailing checksum are read and checked, its payload is not. 0, or -1
 * when out of memory (the open fails: a record is never dropped for want of memory). */
static int probe_record(svlm_memory *m, mem_resume *rs, const char *name, uint64_t id, int has_listed_crc,
                        uint32_t listed_crc) {
    if (found_index(rs, id) >= 0) { /* listed twice: its record is found, leave it in place */
        m->report.rejected++;
        mem_note(m, "%s: %s", name, "listed twice");
        return 0;
    }
    char path[4096];
    path_of(m, path, sizeof path, name);
    struct stat sb;
    const char *why = NULL;
    int fd = open_file(path, O_RDONLY, &sb, &why);
    if (fd < 0) { /* not there, or something there that cannot be read (set aside, not deleted) */
        int missing = !why && errno == ENOENT;
        return probe_reject(m, rs, name, id, why ? why : missing ? MISSING : "unreadable", !missing);
    }
    uint8_t head[REC_HEADER], tail[4];
    size_t size = (size_t)sb.st_size;
    why = NULL;
    if (sb.st_size < 0 || (uint64_t)sb.st_size > MAX_FILE)
        why = "too large";
    else if (size < REC_HEADER + 4)
        why = "truncated";
    else if (pread_full(fd, head, REC_HEADER, 0) || pread_full(fd, tail, 4, (off_t)(size - 4)))
        why = "read error";
    close(fd);
    if (why) return probe_reject(m, rs, name, id, why, 1);
    if (check_header(m, head, size, &why)) {
        if (why == OTHER_WIDTH && !has_listed_crc) {
            /* no manifest: another model's bank is left alone, if the record verifies */
            size_t n = 0;
            uint8_t *p = read_all(path, &n, &why);
            if (!p && why == OUT_OF_MEMORY) return -1;
            const int got = p != NULL;
            if (got) m->report.bytes_read += n;
            int ok = got && n >= REC_HEADER + 4 && mem_crc32(0, p, n - 4) == get_u32(p + n - 4);
            free(p);
            if (ok) {
                m->other_width++;
                return 0;
            }
            if (got) why = "checksum mismatch (corrupt or truncated)";
            return probe_reject(m, rs, name, id, why, why != MISSING);
        }
        return probe_reject(m, rs, name, id, why, 1);
    }
    if (get_u64(head + 8) != id) /* it would be written back, and deleted, under another name */
        return probe_reject(m, rs, name, id, "its id differs from its file name", 1);
    if (has_listed_crc && get_u32(tail) != listed_crc)
        return probe_reject(m, rs, name, id, "differs from the manifest", 1);
    mem_rec_found *r = found_add(rs, id);
    if (!r) return -1;
    r->crc = get_u32(tail);
    r->size = size;
    memcpy(r->head, head, REC_HEADER);
    return 0;
}

int mem_verify_record(svlm_memory *m, mem_resume *rs, int i) {
    mem_rec_found *r = &rs->r[i];
    char name[64], path[4096];
    record_name(r->id, name, sizeof name);
    path_of(m, path, sizeof path, name);
    const char *why = NULL;
    size_t n = 0;
    uint8_t *p = read_all(path, &n, &why);
    if (p) m->report.bytes_read += n;
    mem_entry *e = p ? parse_record(m, p, n, &why) : NULL;
    if (e && (memcmp(p, r->head, REC_HEADER) || e->crc != r->crc)) {
        why = "changed while the directory was opened";
        mem_entry_free(e);
        e = NULL;
    }
    free(p);
    if (!e && why == OUT_OF_MEMORY) return -1;
    if (!e) {
        r->rejected = 1;
        reject(m, name, why, why != MISSING);
        return 1;
    }
    r->loaded = e;
    r->verified = 1;
    return 0;
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

/* The manifest of the persisted entries; or, with rows, of those records. */
static svlm_status write_manifest(svlm_memory *m, const mem_row *rows, int n_rows, svlm_err *err) {
    int count = 0;
    if (rows)
        count = n_rows;
    else
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
    for (int i = 0; i < (rows ? n_rows : m->n_entries); i++) {
        uint64_t id = rows ? rows[i].id : m->entries[i]->id;
        uint32_t crc = rows ? rows[i].crc : m->entries[i]->crc;
        if (!rows && !m->entries[i]->persisted) continue;
        put_u64(&b, id);
        put_u32(&b, crc);
        put_u32(&b, 0);
    }
    put_u32(&b, mem_crc32(0, b.p, b.n));
    svlm_status st = write_atomic(m, "MANIFEST", b.p, b.n, err);
    free(b.p);
    return st;
}

/* The manifest of the records opening found, when one is due (svlm_memory.found_rows). */
static svlm_status write_found_manifest(svlm_memory *m, svlm_err *err) {
    if (!m->found_rows) return SVLM_OK;
    svlm_status st;
    if ((st = fsync_dir(m->dir, err)) || (st = write_manifest(m, m->found_rows, m->n_found_rows, err)) ||
        (st = fsync_dir(m->dir, err)))
        return st;
    free(m->found_rows);
    m->found_rows = NULL;
    m->n_found_rows = 0;
    return SVLM_OK;
}

static int scan_dir(svlm_memory *m, mem_resume *rs, int only_orphans);

/* After a complete save, when records were retired past removed_ids' cap: every record that the
 * manifest just written does not list is an orphan, deleted now as the next open would (a stream
 * may run for weeks before that). */
static void delete_orphans(svlm_memory *m) {
    mem_resume rs = {0};
    int ok = 1;
    for (int i = 0; ok && i < m->n_entries; i++)
        if (m->entries[i]->persisted) ok = found_add(&rs, m->entries[i]->id) != NULL;
    if (ok) { /* (out of memory: the next save tries again) */
        scan_dir(m, &rs, 1);
        m->orphans = 0;
    }
    free(rs.r);
    free(rs.slot);
}

svlm_status mem_store_sync(svlm_memory *m, svlm_err *err) {
    /* first a manifest of what is on disk, where there is none: the records written next are then
     * orphans until the manifest that lists them is in place */
    svlm_status st = write_found_manifest(m, err);
    if (st) return st;
    for (int i = 0; i < m->n_entries; i++) {
        mem_entry *e = m->entries[i];
        if (e->tier != SVLM_MEMORY_SHORT && !e->persisted && (st = write_record(m, e, err))) return st;
    }
    if ((st = fsync_dir(m->dir, err)) || (st = write_manifest(m, NULL, 0, err)) ||
        (st = fsync_dir(m->dir, err)))
        return st;
    for (int i = 0; i < m->n_removed; i++) {
        char name[64], path[4096];
        record_name(m->removed_ids[i], name, sizeof name);
        path_of(m, path, sizeof path, name);
        unlink(path); /* already unlisted: a leftover is an orphan, removed on the next open */
    }
    m->n_removed = 0;
    if (m->orphans) delete_orphans(m);
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

/* Finds every record in dir (no manifest to trust); with only_orphans, deletes instead the records
 * the resume's list does not hold (the manifest does not list them), and leftover temporary files.
 * 0, or -1 when out of memory (the open fails). */
static int scan_dir(svlm_memory *m, mem_resume *rs, int only_orphans) {
    DIR *d = opendir(m->dir);
    if (!d) return 0;
    struct dirent *de;
    int rc = 0;
    while (!rc && (de = readdir(d))) {
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
        int listed = found_index(rs, id) >= 0;
        if (only_orphans) {
            if (!listed && !m->opts.read_only) unlink(path);
        } else if (!listed) {
            rc = probe_record(m, rs, s, id, 0, 0);
        }
    }
    closedir(d);
    return rc;
}

/* The stream's times from the records whose headers are vouched for: read and verified (those the
 * budget kept something of), never one left unread, whose header may be anything that passes its
 * checks. Returns whether there was one. */
static int times_from_records(svlm_memory *m, const mem_resume *rs) {
    int first = 1;
    for (int i = 0; i < rs->n; i++) {
        if (rs->r[i].rejected || !rs->r[i].verified) continue;
        double t0 = get_f64(rs->r[i].head + 24), t1 = get_f64(rs->r[i].head + 32);
        if (first || t0 < m->st.t_first) m->st.t_first = t0;
        if (t1 > m->st.t_last) m->st.t_last = t1;
        first = 0;
    }
    return !first;
}

/* Notes that the records opening found are to be the manifest before anything new is written. */
static svlm_status keep_found_rows(svlm_memory *m, const mem_resume *rs, svlm_err *err) {
    int n = 0;
    for (int i = 0; i < rs->n; i++)
        n += !rs->r[i].rejected;
    free(m->found_rows);
    m->found_rows = malloc((size_t)(n ? n : 1) * sizeof *m->found_rows);
    m->n_found_rows = 0;
    if (!m->found_rows) return svlm_fail(err, SVLM_E_NOMEM, "memory: out of memory opening %s", m->dir);
    for (int i = 0; i < rs->n; i++)
        if (!rs->r[i].rejected) m->found_rows[m->n_found_rows++] = (mem_row){rs->r[i].id, rs->r[i].crc};
    return SVLM_OK;
}

svlm_status mem_store_load(svlm_memory *m, svlm_err *err) {
    if (!m->opts.read_only && svlm_mkdirs(m->dir)) /* (its parents too: serve's DIR/STREAM) */
        return svlm_fail(err, SVLM_E_IO, "memory: cannot create %s: %s", m->dir, strerror(errno));
    struct stat sb;
    if (stat(m->dir, &sb) || !S_ISDIR(sb.st_mode))
        return svlm_fail(err, SVLM_E_IO, "memory: %s is not a directory", m->dir);
    char path[4096];
    const char *why = NULL;
    if (!m->opts.read_only) {
        /* one writer a directory: two handed out the same ids and overwrote each other's records,
         * and each deleted the other's files as orphans when it opened (readers take no lock) */
        path_of(m, path, sizeof path, "LOCK");
        m->lock_fd = open_file(path, O_RDWR | O_CREAT, &sb, &why);
        if (m->lock_fd < 0 && why) /* "a FIFO, not a regular file" */
            return svlm_fail(err, SVLM_E_IO,
                             "memory: %s is %.*s: remove it (svlm locks the directory with it)", path,
                             (int)(strchr(why, ':') - why), why);
        if (m->lock_fd < 0)
            return svlm_fail(err, SVLM_E_IO, "memory: cannot open %s: %s", path, strerror(errno));
        if (flock(m->lock_fd, LOCK_EX | LOCK_NB)) {
            /* not ours: closed now, so that freeing this bank cannot take the holder's LOCK away */
            close(m->lock_fd);
            m->lock_fd = -1;
            return svlm_fail(err, SVLM_E_IO,
                             "memory: %s is in use by another svlm (it holds %s); give each stream "
                             "and server a directory of its own",
                             m->dir, path);
        }
    }
    path_of(m, path, sizeof path, "MANIFEST");
    size_t n = 0;
    uint8_t *p = read_all(path, &n, &why);
    if (!p && why == OUT_OF_MEMORY)
        return svlm_fail(err, SVLM_E_NOMEM, "memory: out of memory reading %s", path);
    if (!p && !m->opts.read_only &&
        !strncmp(why, "a directory", 11)) /* a rebuilt manifest cannot replace it */
        return svlm_fail(
            err, SVLM_E_IO,
            "memory: %s is a directory, not a regular file: remove it (the bank's manifest goes there)",
            path);
    manifest mf;
    int ok = p && parse_manifest(p, n, &mf, &why) == 0;
    if (ok && (mf.dim != (uint32_t)m->opts.dim || mf.key_dim != (uint32_t)m->opts.key_dim)) {
        free(p);
        return svlm_fail(err, SVLM_E_INVALID,
                         "memory: %s holds a bank of dim %u, key_dim %u; this stream has dim %d, key_dim %d",
                         m->dir, mf.dim, mf.key_dim, m->opts.dim, m->opts.key_dim);
    }
    m->report.manifest_ok = ok;
    mem_resume rs = {0};
    int oom = 0;
    if (ok) {
        rs.listed = 1;
        rs.next_id = mf.next_id;
        for (uint32_t i = 0; i < mf.count && !oom; i++) {
            char name[64];
            const uint8_t *row = mf.rows + (size_t)i * MAN_ROW;
            record_name(get_u64(row), name, sizeof name);
            oom = probe_record(m, &rs, name, get_u64(row), 1, get_u32(row + 8)) < 0;
        }
        m->st.t_first = mf.t_first;
        m->st.t_last = mf.t_last;
        /* (every listed record is in rs, refused or not: only unlisted ones are deleted) */
        if (!oom) scan_dir(m, &rs, 1);
    } else {
        /* corrupt, unreadable, or not a file at all (a FIFO: refused, never waited on): the records
         * are what there is, and a rebuilt manifest takes its place */
        if (!(p == NULL && why == MISSING)) mem_note(m, "MANIFEST: %s%s", why, "");
        oom = scan_dir(m, &rs, 0) < 0;
        if (!oom && m->other_width) { /* as with a manifest that says so: refused, nothing touched */
            free(p);
            free(rs.r);
            free(rs.slot);
            return svlm_fail(err, SVLM_E_INVALID,
                             "memory: %s holds %d record%s of another width than this stream's (dim %d, "
                             "key_dim %d): another model's bank",
                             m->dir, m->other_width, m->other_width == 1 ? "" : "s", m->opts.dim,
                             m->opts.key_dim);
        }
        if (p == NULL && why == MISSING && rs.n + m->report.rejected == 0)
            m->report.manifest_ok = 1; /* a new, empty directory */
        else if (p == NULL && why == MISSING)
            mem_note(m, "MANIFEST: %s%s", why, "");
    }
    free(p);
    if (oom) {
        free(rs.r);
        free(rs.slot);
        return svlm_fail(err, SVLM_E_NOMEM, "memory: out of memory opening %s", m->dir);
    }
    svlm_status st = mem_resume_entries(m, &rs, err);
    if (!st) m->resumed = ok || times_from_records(m, &rs); /* (the manifest's times, else the records') */
    /* no manifest that lists just what is there (none, or one listing records now set aside): one
     * that does is written before anything else, so the records a failed save leaves are orphans */
    if (!st && !m->opts.read_only && (!m->report.manifest_ok || m->report.rejected))
        st = keep_found_rows(m, &rs, err);
    free(rs.r);
    free(rs.slot);
    if (st || m->opts.read_only) return st;
    svlm_err save_err = {0};
    svlm_status saved = SVLM_OK;
    if (m->report.skipped)
        /* what the budget keeps, saved now: records left unread are not vouched for, so none may
         * stay listed (those it evicts go as an eviction's do, with this save) */
        saved = mem_store_sync(m, &save_err);
    else
        saved = write_found_manifest(m, &save_err); /* the rest is saved with the next push */
    if (saved) {
        /* the bank opens all the same, as one whose save failed after a push: its entries are in
         * memory, and the next save (the next push that changes them, or a flush) tries again */
        m->dirty = 1;
        mem_note(m, "saving on opening failed (tried again with the next save): %s%s", save_err.msg, "");
        fprintf(stderr, "svlm: %s (the bank in %s opened; the next save tries again)\n", save_err.msg,
                m->dir);
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

void mem_store_unlock(svlm_memory *m) {
    if (m->lock_fd < 0) return;
    int only_lock = 1;
    DIR *d = opendir(m->dir);
    for (struct dirent *e; d && only_lock && (e = readdir(d));)
        only_lock = !strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || !strcmp(e->d_name, "LOCK");
    if (d) closedir(d);
    char path[4096];
    path_of(m, path, sizeof path, "LOCK");
    if (d && only_lock) unlink(path); /* (while it is held: no other writer is inside) */
    close(m->lock_fd);
    m->lock_fd = -1;
    if (d && only_lock) rmdir(m->dir);
}
