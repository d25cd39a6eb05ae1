/* The quantized-weight kernels (cuda_quant.cuh) for Q4_0, Q4_1. */
#include "kernels/cuda/cuda_quant.cuh"

SVLM_QUANT_OPS_DEFINE(2)
SVLM_QUANT_OPS_DEFINE(3)
