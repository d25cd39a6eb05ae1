/*
 * A tiny test harness. Each test program defines test_main(); CHECK records a failure and
 * goes on; REQUIRE stops the program. Exit code 77 means "skipped" (ctest SKIP_RETURN_CODE).
 */
#ifndef SVLM_TESTS_TEST_H
#define SVLM_TESTS_TEST_H

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

#endif
