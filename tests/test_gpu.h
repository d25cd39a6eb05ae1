/*
 * The GPU tests' backend under test: CUDA device 0, or with SVLM_TEST_CUDA_AS_CPU=1 (or a SIMD
 * level: avx2, avx512) a CPU backend of that level in its place, which checks a test itself on a
 * machine without a GPU. Without a usable GPU the test is skipped (77), or fails under
 * SVLM_TEST_REQUIRE_GPU=1 (scripts/gpu-check.sh, on a machine that has one).
 */
#ifndef SVLM_TESTS_TEST_GPU_H
#define SVLM_TESTS_TEST_GPU_H

#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "test.h"

static inline int test_gpu_as_cpu(void) {
    const char *e = getenv("SVLM_TEST_CUDA_AS_CPU");
    return e && *e;
}

/* The backend under test, made now: variables the CUDA backend reads when it is created (set by
 * the caller) apply to it. */
static inline svlm_kernels *test_gpu_backend(void) {
    svlm_err err = {0};
    svlm_kernels *k = NULL;
    svlm_status st;
    if (test_gpu_as_cpu()) {
        const char *as_cpu = getenv("SVLM_TEST_CUDA_AS_CPU");
        char *old = getenv("SVLM_SIMD") ? strdup(getenv("SVLM_SIMD")) : NULL;
        setenv("SVLM_SIMD", strcmp(as_cpu, "1") ? as_cpu : "scalar", 1);
        st = svlm_kernels_create_cpu(2, &k, &err);
        if (old)
            setenv("SVLM_SIMD", old, 1);
        else
            unsetenv("SVLM_SIMD");
        free(old);
    } else {
        st = svlm_kernels_create_cuda(0, &k, &err);
    }
    if (st == SVLM_E_UNSUPPORTED) {
        const char *req = getenv("SVLM_TEST_REQUIRE_GPU");
        REQUIRE(!req || strcmp(req, "1"), "SVLM_TEST_REQUIRE_GPU=1 but no usable GPU: %s", err.msg);
        SKIP("no usable GPU: %s", err.msg);
    }
    REQUIRE(st == SVLM_OK, "backend under test: %s", err.msg);
    return k;
}

#endif
