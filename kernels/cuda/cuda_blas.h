/*
 * cuBLAS and cuBLASLt, loaded when a CUDA backend is first made rather than linked: libcublasLt's
 * own start-up touched about 210 MB and took about 0.1 s in every svlm process of a CUDA build,
 * before main, whatever the command (svlm ask, a refused flag, a CPU run). The backend calls them
 * through cu_blas()'s table; its fields carry the functions' own names and types (the headers'
 * _v2 names included: cu_blas()->cublasCreate(...) is cu_blas()->cublasCreate_v2(...)), so the
 * compiler checks every call as before.
 */
#ifndef SVLM_KERNELS_CUDA_BLAS_H
#define SVLM_KERNELS_CUDA_BLAS_H

#include <cublasLt.h>
#include <cublas_v2.h>

/* X(library, function): library is 0 for libcublas, 1 for libcublasLt */
#define CU_BLAS_FUNCTIONS(X)                                                                                 \
    X(0, cublasCreate_v2)                                                                                    \
    X(0, cublasDestroy_v2)                                                                                   \
    X(0, cublasSetStream_v2)                                                                                 \
    X(0, cublasGemmEx)                                                                                       \
    X(0, cublasGemmStridedBatchedEx)                                                                         \
    X(1, cublasLtCreate)                                                                                     \
    X(1, cublasLtDestroy)                                                                                    \
    X(1, cublasLtMatmul)                                                                                     \
    X(1, cublasLtMatmulAlgoGetHeuristic)                                                                     \
    X(1, cublasLtMatmulDescCreate)                                                                           \
    X(1, cublasLtMatmulDescDestroy)                                                                          \
    X(1, cublasLtMatmulDescSetAttribute)                                                                     \
    X(1, cublasLtMatmulPreferenceCreate)                                                                     \
    X(1, cublasLtMatmulPreferenceDestroy)                                                                    \
    X(1, cublasLtMatmulPreferenceSetAttribute)                                                               \
    X(1, cublasLtMatrixLayoutCreate)                                                                         \
    X(1, cublasLtMatrixLayoutDestroy)

typedef struct cu_blas_api {
#define CU_BLAS_FIELD(lib, name) __typeof__(name) *name;
    CU_BLAS_FUNCTIONS(CU_BLAS_FIELD)
#undef CU_BLAS_FIELD
} cu_blas_api;

/* The table, loaded once (thread-safe); NULL when the libraries or a function are missing, and
 * cu_blas_error() says which. */
const cu_blas_api *cu_blas(void);
const char *cu_blas_error(void);

#endif
