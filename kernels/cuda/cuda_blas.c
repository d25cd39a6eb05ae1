/* Loading cuBLAS and cuBLASLt on first use (cuda_blas.h). */
#define _GNU_SOURCE /* dladdr */
#include "kernels/cuda/cuda_blas.h"

#include <cuda_runtime_api.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#ifndef SVLM_CUBLAS_SONAME
#define SVLM_CUBLAS_SONAME "libcublas.so"
#endif
#ifndef SVLM_CUBLASLT_SONAME
#define SVLM_CUBLASLT_SONAME "libcublasLt.so"
#endif

static cu_blas_api table;
static const cu_blas_api *loaded;
static char why[512];
static pthread_once_t once = PTHREAD_ONCE_INIT;

/* soname by the loader's search, else from the folder of the CUDA runtime this process uses (the
 * toolkit's lib64, when no search path names it) */
static void *open_lib(const char *soname) {
    void *h = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
    if (h) return h;
    Dl_info info;
    if (dladdr((void *)cudaGetDeviceCount, &info) && info.dli_fname) {
        const char *slash = strrchr(info.dli_fname, '/');
        char path[1024];
        if (slash && snprintf(path, sizeof path, "%.*s/%s", (int)(slash - info.dli_fname), info.dli_fname,
                              soname) < (int)sizeof path)
            h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    }
    return h;
}

static void load(void) {
    static const char *const names[2] = {SVLM_CUBLAS_SONAME, SVLM_CUBLASLT_SONAME};
    void *libs[2] = {open_lib(names[0]), open_lib(names[1])};
    for (int i = 0; i < 2; i++)
        if (!libs[i]) {
            snprintf(why, sizeof why,
                     "cannot load %s (%s): install the CUDA toolkit's cuBLAS, or add its lib64 "
                     "folder to LD_LIBRARY_PATH",
                     names[i], dlerror());
            return;
        }
#define CU_BLAS_RESOLVE(lib, name)                                                                           \
    {                                                                                                        \
        void *f = dlsym(libs[lib], #name);                                                                   \
        if (!f) {                                                                                            \
            snprintf(why, sizeof why, "%s has no %s: a cuBLAS older than this svlm's build", names[lib],     \
                     #name);                                                                                 \
            return;                                                                                          \
        }                                                                                                    \
        memcpy(&table.name, &f, sizeof f); /* (a function pointer from dlsym's object pointer) */            \
    }
    CU_BLAS_FUNCTIONS(CU_BLAS_RESOLVE)
#undef CU_BLAS_RESOLVE
    loaded = &table; /* (the libraries stay open for the process) */
}

const cu_blas_api *cu_blas(void) {
    pthread_once(&once, load);
    return loaded;
}

const char *cu_blas_error(void) {
    pthread_once(&once, load);
    return loaded ? "" : why;
}
