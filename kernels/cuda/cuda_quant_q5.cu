/* The quantized-weight kernels (cuda_quant.cuh) for Q5_0, Q5_1. */
#include "kernels/cuda/cuda_quant.cuh"

SVLM_QUANT_OPS_DEFINE(6)
SVLM_QUANT_OPS_DEFINE(7)
