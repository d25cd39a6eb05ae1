/* Quickselect (Hoare's partition, median-of-three pivots). */
#include "common/select.h"

static void swap(float *a, float *b) {
    float t = *a;
    *a = *b;
    *b = t;
}

float svlm_nth_smallest(float *v, size_t n, size_t k) {
    size_t lo = 0, hi = n - 1;
    while (lo < hi) {
        /* v[lo] <= v[mid] <= v[hi]: the pivot is their median, and the ends stop the scans */
        const size_t mid = lo + (hi - lo) / 2;
        if (v[mid] < v[lo]) swap(&v[mid], &v[lo]);
        if (v[hi] < v[lo]) swap(&v[hi], &v[lo]);
        if (v[hi] < v[mid]) swap(&v[hi], &v[mid]);
        const float pivot = v[mid];
        size_t i = lo, j = hi;
        for (;;) { /* afterwards v[lo..j] <= pivot <= v[j+1..hi], j < hi */
            while (v[i] < pivot)
                i++;
            while (pivot < v[j])
                j--;
            if (i >= j) break;
            swap(&v[i], &v[j]);
            i++;
            j--;
        }
        if (k <= j)
            hi = j;
        else
            lo = j + 1;
    }
    return v[k];
}
