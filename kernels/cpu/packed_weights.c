/*
 * Weights packed once for the bf16 and f16 GEMMs (kernels/cpu/gemm_bf16_avx512.c,
 * gemm_f16_avx512.c), shared by every CPU backend of the process. A product of a few rows (a
 * question's prefill, a frame's changed patches, a batch of decode steps) otherwise spends most of
 * its time decoding and packing the whole weight again: 16 tokens through the 256M shape's Q8_0
 * text model took 25 ms, about what 32 took.
 *
 * Entries are keyed by the weight's data address, type, shape and the GEMM's layout. Weights come from the
 * read-only model mapping; as a guard against a model unloaded and another mapped at the same
 * address, each entry keeps a checksum of 16 spread 64-byte samples of the weight's bytes,
 * compared on every use (a mismatch drops the entry); closing a model file drops the entries of
 * its mapping, and svlm_k_forget those of a weight buffer about to be freed or rewritten. The
 * total is capped (SVLM_CPU_PACK_MIB, default a quarter of the memory the process may use, the
 * machine's or its cgroup's limit, at most 8 GiB; 0 turns the cache off): a weight that
 * does not fit is packed per call, as before, and so is one under 64 KB (cheap to pack, and the
 * checksum's samples would cover too little of it).
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kernels/cpu/cpu_kernels.h"

enum { SAMPLES = 16, SAMPLE_BYTES = 64, SMALL_BYTES = 64 * 1024 };

typedef struct entry {
    const void *data;
    int type, layout;
    int64_t rows, cols;
    uint64_t sig;
    size_t bytes;
    uint32_t *packed;
    int ready; /* 0: being filled by the caller that made it */
    int dead;  /* forgotten while being filled: freed when the filler is done */
} entry;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static entry *table;
static size_t n_entries, cap_entries, used_bytes, limit_bytes;
static int limit_known;

static uint64_t signature(const svlm_weight *w) {
    const size_t total = (size_t)w->rows * w->row_bytes;
    const unsigned char *p = w->data;
    uint64_t h = 1469598103934665603ull;
    for (int s = 0; s < SAMPLES; s++) {
        size_t at = total > SAMPLE_BYTES ? (total - SAMPLE_BYTES) / (SAMPLES - 1) * (size_t)s : 0;
        size_t n = total < SAMPLE_BYTES ? total : SAMPLE_BYTES, i = 0;
        /* eight bytes a step: decode batches look every weight up at every step */
        for (; i + 8 <= n; i += 8) {
            uint64_t v;
            memcpy(&v, p + at + i, 8);
            h = (h ^ v) * 1099511628211ull;
            h ^= h >> 29;
        }
        for (; i < n; i++)
            h = (h ^ p[at + i]) * 1099511628211ull;
    }
    return h;
}

/* The cgroup's memory limit (v2, then v1), or 0 when none is set. */
static size_t cgroup_limit(void) {
    const char *files[] = {"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        FILE *f = fopen(files[i], "r");
        if (!f) continue;
        unsigned long long v = 0;
        int got = fscanf(f, "%llu", &v); /* "max" reads as nothing: no limit */
        fclose(f);
        if (got == 1 && v > 0 && v < ((unsigned long long)1 << 60)) return (size_t)v;
    }
    return 0;
}

static size_t default_limit(void) {
    const char *e = getenv("SVLM_CPU_PACK_MIB");
    if (e && *e) {
        char *end = NULL;
        unsigned long long mib = strtoull(e, &end, 10);
        if (end && !*end && e[0] != '-' && mib <= ((unsigned long long)1 << 30)) return (size_t)mib << 20;
    }
    /* bf16 is 2 bytes a weight: the 256M shape's Q8_0 models take 0.37 GB, the 2.2B shape's 4 GB */
    long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
    size_t mem = pages > 0 && page > 0 ? (size_t)pages * (size_t)page : 0, cg = cgroup_limit();
    if (cg && (!mem || cg < mem)) mem = cg;
    const size_t quarter = mem / 4, most = (size_t)8 << 30;
    return quarter && quarter < most ? quarter : most;
}

/* Drops entry i (ready or dead). Under the lock. */
static void drop(size_t i) {
    used_bytes -= table[i].bytes;
    free(table[i].packed);
    table[i] = table[--n_entries];
}

uint32_t *svlm_cpu_packed(const svlm_weight *w, int layout, size_t bytes, int *fill) {
    *fill = 0;
    if ((size_t)w->rows * w->row_bytes < SMALL_BYTES) return NULL;
    const uint64_t sig = signature(w); /* (the caller's own weight: outside the lock) */
    pthread_mutex_lock(&lock);
    if (!limit_known) {
        limit_bytes = default_limit();
        limit_known = 1;
    }
    uint32_t *out = NULL;
    for (size_t i = 0; i < n_entries; i++) {
        entry *e = &table[i];
        if (e->data != w->data || e->type != (int)w->type || e->layout != layout || e->rows != w->rows ||
            e->cols != w->cols)
            continue;
        if (e->sig == sig && e->bytes == bytes) {
            out = e->ready ? e->packed : NULL; /* (another lane is filling it: pack this call's own) */
            pthread_mutex_unlock(&lock);
            return out;
        }
        if (!e->ready || e->dead) { /* being filled: leave it to its filler */
            pthread_mutex_unlock(&lock);
            return NULL;
        }
        drop(i); /* another weight now lives at this address */
        break;
    }
    if (used_bytes + bytes > limit_bytes) {
        pthread_mutex_unlock(&lock);
        return NULL;
    }
    if (n_entries == cap_entries) {
        size_t nc = cap_entries ? 2 * cap_entries : 64;
        entry *t = realloc(table, nc * sizeof *t);
        if (!t) {
            pthread_mutex_unlock(&lock);
            return NULL;
        }
        table = t;
        cap_entries = nc;
    }
    if (posix_memalign((void **)&out, 64, bytes) != 0) out = NULL;
    if (out) {
        table[n_entries++] = (entry){w->data, (int)w->type, layout, w->rows, w->cols, sig, bytes, out, 0, 0};
        used_bytes += bytes;
        *fill = 1;
    }
    pthread_mutex_unlock(&lock);
    return out;
}

void svlm_cpu_packed_ready(const uint32_t *packed) {
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < n_entries; i++)
        if (table[i].packed == packed) {
            if (table[i].dead)
                drop(i);
            else
                table[i].ready = 1;
            break;
        }
    pthread_mutex_unlock(&lock);
}

void svlm_cpu_packed_forget(const void *data, size_t bytes) {
    const uintptr_t lo = (uintptr_t)data, hi = lo + (bytes ? bytes : 1);
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < n_entries;) {
        const uintptr_t at = (uintptr_t)table[i].data;
        if (at < lo || at >= hi) {
            i++;
        } else if (!table[i].ready) { /* its filler frees it when done */
            table[i].dead = 1;
            i++;
        } else {
            drop(i); /* (the last entry moved into i: looked at next) */
        }
    }
    pthread_mutex_unlock(&lock);
}

void svlm_cpu_packed_set_limit(size_t bytes) {
    pthread_mutex_lock(&lock);
    limit_bytes = bytes;
    limit_known = 1;
    pthread_mutex_unlock(&lock);
}

size_t svlm_cpu_packed_bytes(void) {
    pthread_mutex_lock(&lock);
    size_t b = used_bytes;
    pthread_mutex_unlock(&lock);
    return b;
}
