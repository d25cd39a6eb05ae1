/*
 * The table through which cuda_quant.cu reaches one weight type's launchers (cuda_quant.cuh),
 * each type compiled in its own cuda_quant_*.cu.
 */
#ifndef SVLM_KERNELS_CUDA_QUANT_TABLE_CUH
#define SVLM_KERNELS_CUDA_QUANT_TABLE_CUH

#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/quant_decode.h"

/* One type's launchers (cuda_quant.cu's entry points check the arguments first). */
struct svlm_quant_ops {
    int (*matvec)(cudaStream_t s, const void *w, size_t row_bytes, int64_t rows, int64_t cols, const float *x,
                  int64_t n, float *y, int accumulate, bool pdl);
    int (*matvec_multi)(cudaStream_t s, const svlm_cu_matvec_set *set, int64_t cols, const float *x,
                        int64_t n, const float *nw, float eps, bool pdl);
    int (*swiglu)(cudaStream_t s, const void *wg, const void *wu, size_t row_bytes, int64_t rows,
                  int64_t cols, const float *x, int64_t n, const float *nw, float eps, float *gate, bool pdl);
    int (*dequant)(cudaStream_t s, const void *w, size_t row_bytes, int64_t rows, int64_t cols, void *out,
                   int out_bf16);
    int (*qkv_rope)(cudaStream_t s, const svlm_cu_matvec_set *set, int64_t cols, const float *x, int64_t n,
                    const float *nw, float eps, const svlm_cu_rope_pairs *rp, bool pdl);
};

/* The tables, by type id (defined in cuda_quant_*.cu). */
#define SVLM_QUANT_OPS_DECLARE(ID, FN) extern const svlm_quant_ops svlm_quant_ops_##ID;
SVLM_QD_TYPES(SVLM_QUANT_OPS_DECLARE)
#undef SVLM_QUANT_OPS_DECLARE

#endif
