/* The quantized-weight kernels (cuda_quant.cuh) for Q4_K. */
#include "kernels/cuda/cuda_quant.cuh"

SVLM_QUANT_OPS_DEFINE(12)
