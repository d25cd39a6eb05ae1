/*
 * Random-weight models made for a test by `svlm mkmodel` (through ctest, which sets SVLM_BIN and
 * SVLM_TEST_TMP; a skip, said, without them).
 */
#ifndef SVLM_TESTS_TEST_MKMODEL_RUN_H
#define SVLM_TESTS_TEST_MKMODEL_RUN_H

#include <stdio.h>
#include <stdlib.h>

#include "test.h"

/* Runs `svlm mkmodel --arch smolvlm ARGS -o TMP/NAME --quiet` and writes the projector's path
 * into mmproj (the text model is beside it, TMP/NAME.gguf). */
static inline void test_mkmodel_smolvlm(const char *name, const char *args, char *mmproj, size_t cap) {
    const char *bin = getenv("SVLM_BIN"), *tmp = getenv("SVLM_TEST_TMP");
    if (!bin || !tmp) SKIP("SVLM_BIN and SVLM_TEST_TMP not set (run through ctest)");
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s' mkmodel --arch smolvlm %s -o '%s/%s' --quiet", bin, args, tmp, name);
    REQUIRE(system(cmd) == 0, "could not make the model: %s", cmd);
    snprintf(mmproj, cap, "%s/%s-mmproj.gguf", tmp, name);
}

#endif
