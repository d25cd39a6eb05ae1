/*
 * Attention with many queries through the fused flash kernel (cuda_flash_attention.cu): one
 * launch, the scores kept on chip, instead of cuBLAS's scores in global memory (50 MB per vision
 * tile and layer). Taken from attn_flash_min_q queries (SVLM_CUDA_FLASH_MIN_Q, default 16) for
 * head dims up to 128; SVLM_CUDA_FLASH=0 (or SVLM_CUDA_TF32=0) leaves attention to cuBLAS and
 * the kernel.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_internal.h"
#include "kernels/cuda/cuda_ops.h"

/* SVLM_CUDA_TF32=0 asks for full f32 products (comparisons): f16 operands are not that. */
static int f32_asked(void) {
    const char *e = getenv("SVLM_CUDA_TF32");
    return e && !strcmp(e, "0");
}

int cu_attention_flash(svlm_kernels *k, const svlm_attn_args *a, const float *dq, const void *dk,
                       const void *dv, float *dout) {
    const int f16 = a->kv_type == SVLM_F16;
    if (f32_asked()) return 0;
    if (a->n_q < CU(k)->attn_flash_min_q || a->n_q <= 0 || a->head_dim <= 0 || a->n_head <= 0 ||
        a->n_kv_head <= 0 || a->n_head % a->n_kv_head || a->n_head > 65535 ||
        !svlm_cu_flash_attention_supported(a->head_dim, f16))
        return 0;
    /* the kernel's grid has n_q / 64 blocks in x; kv rows are int64 offsets */
    if (a->n_q > (int64_t)INT32_MAX * 64 || a->n_kv > INT64_MAX / 4 || a->kv_stride < 0) return 0;
    cu_check(svlm_cu_flash_attention(CU(k)->stream, dq, dk, dv, f16, a->kv_stride, dout, a->n_q,
                                     a->n_kv > 0 ? a->n_kv : 0, a->n_head, a->n_kv_head, a->head_dim,
                                     a->causal, a->scale),
             "attention (flash)");
    return 1;
}
