/* The quantized-weight kernels (cuda_quant.cuh) for Q6_K. */
#include "kernels/cuda/cuda_quant.cuh"

SVLM_QUANT_OPS_DEFINE(14)
