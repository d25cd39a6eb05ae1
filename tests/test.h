/*
 * A tiny test harness. Each test program defines test_main(); CHECK records a failure and
 * goes on; REQUIRE stops the program. Exit code 77 means "skipped" (ctest SKIP_RETURN_CODE).
 */
#ifndef SVLM_TESTS_TEST_H
#define SVLM_TESTS_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

extern int svlm_test_failures;
extern int svlm_test_checks;

int test_main(void);

/* Path of a file under ../shared (SVLM_TEST_DATA), or NULL when that folder is absent. */
const char *test_data(const char *rel);
/* Exits with 77 after printing why, when ../shared is absent. Returns the data root otherwise. */
const char *test_data_or_skip(void);
/* The whole file as floats (*n of them); NULL when it cannot be read. The caller frees it. */
float *test_read_f32(const char *path, size_t *n);
/* A scratch folder for this test (created). */
const char *test_tmpdir(void);

#define CHECK(cond, ...)                                                                                     \
    do {                                                                                                     \
        svlm_test_checks++;                                                                                  \
        if (!(cond)) {                                                                                       \
            svlm_test_failures++;                                                                            \
            fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond);                         \
            fprintf(stderr, __VA_ARGS__);                                                                    \
            fputc('\n', stderr);                                                                             \
        }                                                                                                    \
    } while (0)

#define REQUIRE(cond, ...)                                                                                   \
    do {                                                                                                     \
        svlm_test_checks++;                                                                                  \
        if (!(cond)) {                                                                                       \
            svlm_test_failures++;                                                                            \
            fprintf(stderr, "%s:%d: REQUIRE(%s) failed: ", __FILE__, __LINE__, #cond);                       \
            fprintf(stderr, __VA_ARGS__);                                                                    \
            fputc('\n', stderr);                                                                             \
            exit(1);                                                                                         \
        }                                                                                                    \
    } while (0)

#define SKIP(...)                                                                                            \
    do {                                                                                                     \
        printf("SKIP: ");                                                                                    \
        printf(__VA_ARGS__);                                                                                 \
        printf("\n");                                                                                        \
        exit(77);                                                                                            \
    } while (0)

/* The largest |a[i] - b[i]|; NaN as soon as one difference is NaN (so a `d <= tol` check fails:
 * a running maximum with fmax, or "if (!(d <= m)) m = d", let a later value hide it). */
static inline double test_max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        const double d = fabs((double)a[i] - b[i]);
        if (isnan(d)) return d;
        if (d > m) m = d;
    }
    return m;
}

#endif
