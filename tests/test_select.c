/*
 * svlm_nth_smallest against a full sort: every k of arrays of 1 to 200 values, and the median of
 * 16,384 (the STC cache's use: one channel's block residuals of a 512-px tile), for values drawn
 * from a few distinct ones (many ties), from a wide range, already sorted and reversed.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/select.h"
#include "test.h"

static int cmp(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

static uint32_t rng = 12345u;
static float draw(int kind, size_t i, size_t n) {
    rng = rng * 1664525u + 1013904223u;
    switch (kind) {
    case 0: return (float)(rng >> 29);              /* 8 distinct values */
    case 1: return (float)(rng >> 8) / 16777216.0f; /* wide */
    case 2: return (float)i;                        /* sorted */
    default: return (float)(n - i);                 /* reversed */
    }
}

static void check(size_t n, int kind, size_t k) {
    float *v = malloc(sizeof(float) * n), *s = malloc(sizeof(float) * n);
    REQUIRE(v && s, "out of memory");
    for (size_t i = 0; i < n; i++)
        v[i] = s[i] = draw(kind, i, n);
    qsort(s, n, sizeof(float), cmp);
    float got = svlm_nth_smallest(v, n, k);
    CHECK(got == s[k], "n %zu kind %d k %zu: %g, sorted %g", n, kind, k, got, s[k]);
    qsort(v, n, sizeof(float), cmp); /* only reordered: the same values */
    CHECK(!memcmp(v, s, sizeof(float) * n), "n %zu kind %d: values changed", n, kind);
    free(v);
    free(s);
}

int test_main(void) {
    for (int kind = 0; kind < 4; kind++) {
        for (size_t n = 1; n <= 200; n++)
            for (size_t k = 0; k < n; k++)
                check(n, kind, k);
        check(16384, kind, 8192);
        check(16384, kind, 0);
        check(16384, kind, 16383);
    }
    return 0;
}
