/* The quantized-weight kernels (cuda_quant.cuh) for Q8_0. */
#include "kernels/cuda/cuda_quant.cuh"

SVLM_QUANT_OPS_DEFINE(8)
