/* Rounding float32 arrays through float16 (and back), to reproduce where llama.cpp computes
 * in F16: the patch convolution and ggml's F16 GELU table. F16C when the CPU has it. */
#ifndef SVLM_VISION_F16_ROUND_H
#define SVLM_VISION_F16_ROUND_H

#include <stddef.h>

#include "kernels/dtype.h"

/* x[i] = f32(f16(x[i])), round-to-nearest-even. */
void svlm_f16_round(float *x, size_t n);
/* Around svlm_k_gelu_tanh, like ggml's table: inputs with |x| < 10 rounded to F16 before... */
void svlm_gelu_round_in(float *x, size_t n);
/* ... and outputs below 10 rounded after (ggml passes x >= 10 through and gives 0 for <= -10,
 * which the exact GELU reproduces in float32). */
void svlm_gelu_round_out(float *y, size_t n);

/* Whole arrays through svlm_f32_to_f16 / svlm_f16_to_f32 (the same bits; KV pages and working
 * copies kept as f16 cross these on every token). */
void svlm_f32_to_f16_array(svlm_f16 *dst, const float *src, size_t n);
void svlm_f16_to_f32_array(float *dst, const svlm_f16 *src, size_t n);

/* F16C variants (f16_round_avx2.c); n a multiple of 8 handled, the tail by the caller. */
void svlm_f16_round_f16c(float *x, size_t n);
void svlm_f32_to_f16_f16c(svlm_f16 *dst, const float *src, size_t n);
void svlm_f16_to_f32_f16c(float *dst, const svlm_f16 *src, size_t n);
void svlm_gelu_round_in_f16c(float *x, size_t n);
void svlm_gelu_round_out_f16c(float *x, size_t n);

#endif
