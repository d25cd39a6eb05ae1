/*
 * Weights on the GPU: each weight (and each norm or bias vector) is uploaded the first time an op
 * uses it and then reused by every CUDA backend of the process (one per engine lane). Entries are
 * keyed by host address and size. Weights come from the read-only model mapping, so they do not
 * change; as a guard against a freed buffer whose address comes back with other contents, small
 * entries keep a host copy that is compared in full on each use, large ones a checksum of 16
 * spread samples.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_internal.h"
#include "kernels/cuda/cuda_ops.h"

enum { SMALL_BYTES = 64 * 1024, SAMPLES = 16, SAMPLE_BYTES = 64 };

typedef struct entry {
    const void *host;
    size_t bytes;
    int device;
    void *dev;     /* the bytes as stored */
    void *gemm;    /* decode for cuBLAS, made on first batched use */
    int gemm_bf16; /* gemm holds bf16 (else f32) */
    int gemm_type; /* ... decoded from this type and shape */
    int64_t gemm_rows, gemm_cols;
    unsigned char *small; /* host copy of small entries */
    uint64_t sig;         /* checksum of large entries */
} entry;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static entry *table; /* open addressing, cap a power of two */
static size_t cap, used;
static int users;
/* Bumped whenever a device copy is replaced or dropped: replayed runs (cuda_graphs.c) recorded
 * the old copy's address. */
static unsigned generation;
/* Device copies of entries found changed: another lane may have launched work on them already,
 * so they are freed only when the last backend goes. */
static void **graveyard;
static size_t n_graves, graves_cap;

static void bury(void *p) {
    if (!p) return;
    if (n_graves == graves_cap) {
        size_t cap2 = graves_cap ? graves_cap * 2 : 16;
        void **g = realloc(graveyard, cap2 * sizeof *g);
        if (!g) {
            fprintf(stderr, "svlm: out of memory for the GPU weight table\n");
            abort();
        }
        graveyard = g;
        graves_cap = cap2;
    }
    graveyard[n_graves++] = p;
}

static uint64_t mix(uint64_t h, uint64_t v) {
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    return h;
}

static size_t slot_of(const void *host, size_t bytes) {
    uint64_t h = mix(mix(0, (uint64_t)(uintptr_t)host), bytes);
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return (size_t)h & (cap - 1);
}

static uint64_t signature(const void *host, size_t bytes) {
    const unsigned char *p = host;
    uint64_t h = bytes;
    for (int i = 0; i < SAMPLES; i++) {
        size_t at = (bytes - SAMPLE_BYTES) / (SAMPLES - 1) * (size_t)i;
        for (int j = 0; j < SAMPLE_BYTES; j += 8) {
            uint64_t v;
            memcpy(&v, p + at + j, 8);
            h = mix(h, v);
        }
    }
    return h;
}

static int still_valid(const entry *e) {
    if (e->small) return !memcmp(e->small, e->host, e->bytes);
    return e->sig == signature(e->host, e->bytes);
}

static void drop(entry *e) {
    if (e->dev) (void)cudaFree(e->dev);
    if (e->gemm) (void)cudaFree(e->gemm);
    free(e->small);
    memset(e, 0, sizeof *e);
}

/* Replaces the table by an empty one of new_cap slots (a power of two). */
static void grow_to(size_t new_cap) {
    cap = new_cap;
    table = calloc(cap, sizeof *table);
    if (!table) {
        fprintf(stderr, "svlm: out of memory for the GPU weight table\n");
        abort();
    }
}

static void grow(void) {
    size_t old_cap = cap;
    entry *old = table;
    cap = cap ? cap * 2 : 1024;
    table = calloc(cap, sizeof *table);
    if (!table) {
        fprintf(stderr, "svlm: out of memory for the GPU weight table\n");
        abort();
    }
    for (size_t i = 0; i < old_cap; i++) {
        if (!old[i].host) continue;
        size_t s = slot_of(old[i].host, old[i].bytes);
        while (table[s].host)
            s = (s + 1) & (cap - 1);
        table[s] = old[i];
    }
    free(old);
}

/* The entry for (host, bytes, device), created (not yet uploaded) when absent. Under the lock. */
static entry *find(const void *host, size_t bytes, int device) {
    if ((used + 1) * 2 > cap) grow();
    size_t s = slot_of(host, bytes);
    while (table[s].host) {
        if (table[s].host == host && table[s].bytes == bytes && table[s].device == device) return &table[s];
        s = (s + 1) & (cap - 1);
    }
    table[s].host = host;
    table[s].bytes = bytes;
    table[s].device = device;
    used++;
    return &table[s];
}

static void upload(svlm_kernels *k, entry *e) {
    cu_check(cudaMalloc(&e->dev, e->bytes), "cudaMalloc(weight)");
    /* a copy from pageable memory may return before it lands: wait on our stream, so neither
     * this backend's kernels nor another lane finding the entry read a half-written weight */
    cu_check(cudaMemcpyAsync(e->dev, e->host, e->bytes, cudaMemcpyHostToDevice, CU(k)->stream),
             "weight upload");
    cu_check(cudaStreamSynchronize(CU(k)->stream), "weight upload");
    if (e->bytes <= SMALL_BYTES) {
        e->small = malloc(e->bytes);
        if (!e->small) {
            fprintf(stderr, "svlm: out of memory for the GPU weight table\n");
            abort();
        }
        memcpy(e->small, e->host, e->bytes);
    } else {
        e->sig = signature(e->host, e->bytes);
    }
}

/* The valid, uploaded entry for host. Under the lock. */
static entry *get(svlm_kernels *k, const void *host, size_t bytes) {
    entry *e = find(host, bytes, CU(k)->device);
    if (e->dev && !still_valid(e)) {
        bury(e->dev);
        bury(e->gemm);
        e->dev = e->gemm = NULL;
        free(e->small);
        e->small = NULL; /* the slot stays taken: same key, new contents */
        __atomic_add_fetch(&generation, 1, __ATOMIC_RELAXED);
    }
    if (!e->dev) upload(k, e);
    return e;
}

static const void *readable(const void *p) {
    struct cudaPointerAttributes a;
    if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
        (void)cudaGetLastError();
        return NULL;
    }
    if (a.type == cudaMemoryTypeDevice || a.type == cudaMemoryTypeManaged) return p;
    if (a.type == cudaMemoryTypeHost) return a.devicePointer;
    return NULL;
}

/* The uploaded, still valid copy of (host, bytes) on this device, or NULL. Under the lock. */
static const void *cached(const void *host, size_t bytes, int device) {
    if (!cap) return NULL;
    size_t s = slot_of(host, bytes);
    while (table[s].host) {
        if (table[s].host == host && table[s].bytes == bytes && table[s].device == device)
            return table[s].dev && still_valid(&table[s]) ? table[s].dev : NULL;
        s = (s + 1) & (cap - 1);
    }
    return NULL;
}

/* While a run is being recorded (cuda_graphs.c) an upload or decode would be recorded instead of
 * done, leaving the entry marked valid over garbage: the recording is given up instead (its ops
 * are issued again, outside a capture, where the upload happens). */
static int refused_while_recording(void) {
    if (!cu_capturing) return 0;
    cu_capture_failed = 1;
    return 1;
}

const void *cu_weight(svlm_kernels *k, const void *host, size_t bytes) {
    if (!host || !bytes) return host;
    if (cu_ranges_contain(host)) return host; /* an svlm_k_alloc buffer */
    /* a weight seen before: no driver call (decode steps look up hundreds) */
    pthread_mutex_lock(&lock);
    const void *hit = cached(host, bytes, CU(k)->device);
    pthread_mutex_unlock(&lock);
    if (hit) return hit;
    const void *d = readable(host);
    if (d) return d;
    if (refused_while_recording()) return host; /* never read: the recording is dropped */
    pthread_mutex_lock(&lock);
    const void *dev = get(k, host, bytes)->dev;
    pthread_mutex_unlock(&lock);
    return dev;
}

const void *cu_weight_gemm(svlm_kernels *k, const svlm_weight *w, int *bf16, void **temp) {
    size_t bytes = (size_t)w->rows * w->row_bytes;
    /* bf16 for quantized and BF16 weights: their stored precision is at or below bf16's; TF32 on
     * f32 for F16 (11 significant bits) and F32 weights */
    int want_bf16 = w->type != SVLM_F32 && w->type != SVLM_F16;
    *bf16 = want_bf16;
    *temp = NULL;
    const void *readable_w = readable(w->data);
    const int packed_f32 = w->type == SVLM_F32 && w->row_bytes == sizeof(float) * (size_t)w->cols;
    if (readable_w && packed_f32) return readable_w;
    pthread_mutex_lock(&lock);
    entry *e = NULL;
    const void *raw = readable_w;
    if (!raw && !cached(w->data, bytes, CU(k)->device) && refused_while_recording()) {
        pthread_mutex_unlock(&lock);
        return NULL; /* never read: the recording is dropped */
    }
    if (!raw) {
        e = get(k, w->data, bytes);
        raw = e->dev;
    }
    const void *out = NULL;
    if (packed_f32) {
        out = raw;
    } else if (e && e->gemm && e->gemm_type == (int)w->type && e->gemm_rows == w->rows &&
               e->gemm_cols == w->cols) {
        out = e->gemm;
    } else if (refused_while_recording()) {
        out = NULL; /* never read: the recording is dropped */
    } else {
        size_t elt = want_bf16 ? 2 : 4, gbytes = elt * (size_t)w->rows * (size_t)w->cols;
        void *g = NULL;
        cu_check(cudaMalloc(&g, gbytes), "cudaMalloc(weight decode)");
        cu_check(svlm_cu_dequant(CU(k)->stream, w->type, raw, w->row_bytes, w->rows, w->cols, g, want_bf16),
                 "weight decode");
        cu_check(cudaStreamSynchronize(CU(k)->stream), "weight decode");
        if (e) {
            if (e->gemm) __atomic_add_fetch(&generation, 1, __ATOMIC_RELAXED);
            bury(e->gemm); /* a decode for another view of the same bytes */
            e->gemm = g;
            e->gemm_bf16 = want_bf16;
            e->gemm_type = (int)w->type;
            e->gemm_rows = w->rows;
            e->gemm_cols = w->cols;
        } else {
            *temp = g; /* a device-resident weight the caller owns: decoded for this product only */
        }
        out = g;
    }
    pthread_mutex_unlock(&lock);
    return out;
}

void cu_weights_retain(void) {
    pthread_mutex_lock(&lock);
    users++;
    pthread_mutex_unlock(&lock);
}

void cu_weights_release(void) {
    pthread_mutex_lock(&lock);
    if (--users == 0) {
        for (size_t i = 0; i < cap; i++)
            if (table[i].host) {
                (void)cudaSetDevice(table[i].device);
                drop(&table[i]);
            }
        free(table);
        table = NULL;
        cap = used = 0;
        for (size_t i = 0; i < n_graves; i++)
            (void)cudaFree(graveyard[i]);
        free(graveyard);
        graveyard = NULL;
        n_graves = graves_cap = 0;
    }
    pthread_mutex_unlock(&lock);
}

/* Removes every entry whose host bytes start in [lo, hi] (hi inclusive, so a zero-length range
 * is one address) and rebuilds the probe chains after them. Under the lock; returns how many. */
static int remove_range(uintptr_t lo, uintptr_t hi, uint64_t *devices) {
    int removed = 0;
    for (size_t i = 0; i < cap; i++)
        if (table[i].host && (uintptr_t)table[i].host >= lo && (uintptr_t)table[i].host <= hi) {
            if (devices && table[i].device >= 0 && table[i].device < 64) *devices |= 1ull << table[i].device;
            bury(table[i].dev); /* another lane may still be using it */
            bury(table[i].gemm);
            table[i].dev = table[i].gemm = NULL;
            free(table[i].small);
            memset(&table[i], 0, sizeof table[i]);
            used--;
            removed++;
        }
    if (removed) { /* open addressing: re-insert everything so no chain has a hole */
        __atomic_add_fetch(&generation, 1, __ATOMIC_RELAXED);
        entry *old = table;
        size_t old_cap = cap;
        table = NULL;
        cap = 0;
        used = 0;
        grow_to(old_cap);
        for (size_t i = 0; i < old_cap; i++)
            if (old[i].host) {
                size_t s2 = slot_of(old[i].host, old[i].bytes);
                while (table[s2].host)
                    s2 = (s2 + 1) & (cap - 1);
                table[s2] = old[i];
                used++;
            }
        free(old);
    }
    return removed;
}

/* Removes every entry of `host` (any size). */
void cu_weights_forget(svlm_kernels *k, const void *host) {
    (void)k;
    pthread_mutex_lock(&lock);
    remove_range((uintptr_t)host, (uintptr_t)host, NULL);
    pthread_mutex_unlock(&lock);
}

/* A model file's mapping is going: its weights' device copies and decodes go too. Its users
 * (decoders, encoders) are gone, so nothing queued can still read them; the device copies of
 * other models stay. The buried copies are freed after the devices finish what was queued,
 * instead of waiting for the last backend (a process that reloads models kept them all). */
void svlm_cuda_weights_forget_range(const void *data, size_t bytes) {
    if (!data || !bytes) return;
    pthread_mutex_lock(&lock);
    if (!cap) { /* no CUDA backend has uploaded anything: no driver call at all */
        pthread_mutex_unlock(&lock);
        return;
    }
    const size_t first_grave = n_graves;
    uint64_t devices = 0; /* those the removed copies were on: no other device is touched */
    if (remove_range((uintptr_t)data, (uintptr_t)data + bytes - 1, &devices)) {
        int cur = 0, waited = cudaGetDevice(&cur) == cudaSuccess;
        for (int d = 0; d < 64 && waited; d++)
            if (devices >> d & 1)
                waited = cudaSetDevice(d) == cudaSuccess && cudaDeviceSynchronize() == cudaSuccess;
        (void)cudaSetDevice(cur);
        (void)cudaGetLastError();
        /* only this model's copies, and only once the wait succeeded (a sync while another lane
         * records a graph returns at once): otherwise they wait for the last backend as before */
        if (waited) {
            for (size_t i = first_grave; i < n_graves; i++)
                (void)cudaFree(graveyard[i]);
            n_graves = first_grave;
        }
    }
    pthread_mutex_unlock(&lock);
}

unsigned cu_weights_generation(void) {
    return __atomic_load_n(&generation, __ATOMIC_RELAXED);
}
