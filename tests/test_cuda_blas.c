/*
 * cuBLAS and cuBLASLt are opened on first use (kernels/cuda/cuda_blas.c), not linked: a CUDA
 * build's process starts without them (libcublasLt's start-up alone touched about 210 MB and took
 * about 0.1 s in every svlm process), and the first use finds every function the backend calls.
 * Needs no GPU: only the libraries, which a CUDA build has. Skips (77) in builds without CUDA.
 */
#include <stdio.h>
#include <string.h>

#include "test.h"

#ifdef SVLM_HAVE_CUDA
#include "kernels/cuda/cuda_blas.h"

/* whether /proc/self/maps names a mapping whose path holds `name` */
static int mapped(const char *name) {
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f) return -1;
    char line[4096];
    int found = 0;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, name) != NULL;
    fclose(f);
    return found;
}

int test_main(void) {
    CHECK(mapped("libcublasLt") == 0 && mapped("libcublas.so") == 0,
          "the process started with cuBLAS mapped (it should be opened on first use)");
    const cu_blas_api *b = cu_blas();
    REQUIRE(b, "cuBLAS did not load: %s", cu_blas_error());
    int missing = 0;
#define CU_BLAS_PRESENT(lib, name) missing += b->name == NULL;
    CU_BLAS_FUNCTIONS(CU_BLAS_PRESENT)
#undef CU_BLAS_PRESENT
    CHECK(missing == 0, "%d cuBLAS functions unresolved", missing);
    CHECK(mapped("libcublasLt") == 1 && mapped("libcublas.so") == 1,
          "cuBLAS is not mapped after its first use");
    CHECK(cu_blas() == b && !strcmp(cu_blas_error(), ""), "a second use loads again or reports an error");
    printf("cuBLAS and cuBLASLt opened on first use: %d functions\n",
           (int)(sizeof *b / sizeof(void (*)(void))));
    return 0;
}
#else
int test_main(void) {
    SKIP("this build has no CUDA backend");
}
#endif
