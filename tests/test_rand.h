/*
 * Deterministic test data for the tests that compare backends: xorshift64 words, floats uniform in
 * [-1, 1) (24 random bits) and arrays of them. The state is the caller's (a seed, then advanced).
 */
#ifndef SVLM_TESTS_TEST_RAND_H
#define SVLM_TESTS_TEST_RAND_H

#include <stdint.h>
#include <stdlib.h>

#include "test.h"

/* the next xorshift64 state (the state must not be 0) */
static inline uint64_t test_rand_u64(uint64_t *state) {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return *state;
}

static inline float test_frand(uint64_t *state) {
    return (float)((test_rand_u64(state) >> 40) * (1.0 / 8388608.0)) - 1.0f;
}

/* n floats scale * test_frand (at least one element allocated); the caller frees them. */
static inline float *test_floats(uint64_t *state, int64_t n, float scale) {
    float *p = malloc(sizeof(float) * (size_t)(n > 0 ? n : 1));
    REQUIRE(p, "out of memory");
    for (int64_t i = 0; i < n; i++)
        p[i] = scale * test_frand(state);
    return p;
}

#endif
