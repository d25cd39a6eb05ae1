/* The quantized-weight kernels (cuda_quant.cuh) for F32, F16, BF16. */
#include "kernels/cuda/cuda_quant.cuh"

SVLM_QUANT_OPS_DEFINE(0)
SVLM_QUANT_OPS_DEFINE(1)
SVLM_QUANT_OPS_DEFINE(30)
