/*
 * The managed allocations of every CUDA backend in the process (svlm_k_alloc), so that telling a
 * device-accessible pointer from host memory costs a binary search instead of a driver call on
 * every op: cudaPointerGetAttributes takes a driver lock and shows up in decode steps, which are
 * hundreds of small ops. Pointers outside these ranges still go to the driver.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_internal.h"

typedef struct range {
    uintptr_t start, end; /* [start, end) */
} range;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static range *ranges; /* sorted by start, disjoint */
static size_t n_ranges, cap_ranges;

/* Index of the first range whose start is > p. Under the lock. */
static size_t upper(uintptr_t p) {
    size_t lo = 0, hi = n_ranges;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ranges[mid].start <= p)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

int cu_ranges_add(const void *p, size_t bytes) {
    uintptr_t s = (uintptr_t)p;
    pthread_mutex_lock(&lock);
    if (n_ranges == cap_ranges) {
        size_t cap = cap_ranges ? cap_ranges * 2 : 256;
        range *r = realloc(ranges, cap * sizeof *r);
        if (!r) {
            pthread_mutex_unlock(&lock);
            return 0;
        }
        ranges = r;
        cap_ranges = cap;
    }
    size_t i = upper(s);
    memmove(ranges + i + 1, ranges + i, (n_ranges - i) * sizeof *ranges);
    ranges[i] = (range){s, s + bytes};
    n_ranges++;
    pthread_mutex_unlock(&lock);
    return 1;
}

void cu_ranges_remove(const void *p) {
    uintptr_t s = (uintptr_t)p;
    pthread_mutex_lock(&lock);
    size_t i = upper(s);
    if (i > 0 && ranges[i - 1].start == s) {
        memmove(ranges + i - 1, ranges + i, (n_ranges - i) * sizeof *ranges);
        n_ranges--;
    }
    if (n_ranges == 0) {
        free(ranges);
        ranges = NULL;
        cap_ranges = 0;
    }
    pthread_mutex_unlock(&lock);
}

int cu_ranges_contain(const void *p) {
    uintptr_t a = (uintptr_t)p;
    pthread_mutex_lock(&lock);
    size_t i = upper(a);
    int in = i > 0 && a < ranges[i - 1].end;
    pthread_mutex_unlock(&lock);
    return in;
}
