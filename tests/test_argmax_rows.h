/*
 * Rows for svlm_k_argmax's tests: random rows, and rows that try its rule (ties, NaNs, infinities,
 * signed zeros, the greatest element at either end), with the expected index worked out from the
 * rule as stated (the first index of the greatest non-NaN element; 0 when the row starts with a
 * NaN or holds only NaNs), not from the loop the backends use.
 */
#ifndef SVLM_TESTS_TEST_ARGMAX_ROWS_H
#define SVLM_TESTS_TEST_ARGMAX_ROWS_H

#include <math.h>
#include <stdint.h>

#include "test_rand.h"

enum { ARGMAX_SPECIAL_ROWS = 10 };

/* Fills rows x dim floats (dim >= 4): the first ARGMAX_SPECIAL_ROWS rows special, the rest random. */
static inline void argmax_rows_fill(float *x, int64_t rows, int64_t dim, uint64_t seed) {
    uint64_t st = seed ? seed : 1;
    for (int64_t i = 0; i < rows * dim; i++)
        x[i] = 8.0f * test_frand(&st);
    const int64_t mid = dim / 2, last = dim - 1;
    for (int64_t r = 0; r < rows && r < ARGMAX_SPECIAL_ROWS; r++) {
        float *p = x + r * dim;
        switch (r) {
        case 0: /* a tie: the first of the two wins */ p[mid] = p[last] = 100.0f; break;
        case 1: /* a leading NaN is never beaten */ p[0] = NAN, p[mid] = 100.0f; break;
        case 2: /* NaNs elsewhere never win */ p[1] = NAN, p[mid] = NAN, p[last] = 50.0f; break;
        case 3: /* the greatest at the very end */ p[last] = INFINITY; break;
        case 4: /* all equal: index 0 */
            for (int64_t i = 0; i < dim; i++)
                p[i] = -3.0f;
            break;
        case 5: /* -0.0 and +0.0 are equal: the first wins */
            for (int64_t i = 0; i < dim; i++)
                p[i] = -1.0f;
            p[2] = -0.0f, p[3] = 0.0f;
            break;
        case 6: /* only -infinity and NaN */
            for (int64_t i = 0; i < dim; i++)
                p[i] = (i & 1) ? NAN : -INFINITY;
            break;
        case 7: /* only NaN */
            for (int64_t i = 0; i < dim; i++)
                p[i] = NAN;
            break;
        case 8: /* values one ulp apart */ p[mid] = 64.0f, p[mid + 1] = nextafterf(64.0f, 100.0f); break;
        default: /* the greatest first */ p[0] = 1e30f; break;
        }
    }
}

static inline int32_t argmax_expected(const float *p, int64_t dim) {
    if (isnan(p[0])) return 0;
    float m = p[0];
    for (int64_t i = 1; i < dim; i++)
        if (!isnan(p[i])) m = fmaxf(m, p[i]);
    for (int64_t i = 0; i < dim; i++)
        if (p[i] == m) return (int32_t)i;
    return 0;
}

#endif
