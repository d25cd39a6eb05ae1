/*
 * Attention with many queries through the fused flash kernel (cuda_flash_attention.cu): one
 * launch, the scores kept on chip, instead of cuBLAS's scores in global memory (50 MB per vision
 * tile and layer). Taken from attn_flash_min_q queries (SVLM_CUDA_FLASH_MIN_Q, default 16) for
 * head dims up to 128; SVLM_CUDA_FLASH=0 (or SVLM_CUDA_TF32=0) leaves attention to cuBLAS and
 * the kernel. The kernel is cuda_flash_mma.cu's (mma.sync, scores in registers);
 * SVLM_CUDA_FLASH_MMA=0 takes cuda_flash_attention.cu's WMMA form instead.
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
                                     a->causal, a->scale, CU(k)->flash_mma),
             "attention (flash)");
    return 1;
}

/* Many sequences' prefill attentions (a batch of streams' frames) in one launch of the fused kernel:
 * each item at least attn_flash_min_q queries, shapes alike, every buffer device-accessible.
 * SVLM_CUDA_FLASH_ITEMS=0 leaves them to one launch each. Returns 0 when not taken. */
int cu_attention_flash_items(svlm_kernels *k, const svlm_attn_args *a, int n) {
    enum { MAX_ITEMS = 256 }; /* the engine's passes carry up to 64 */
    const int f16 = a[0].kv_type == SVLM_F16;
    if (!CU(k)->flash_items || f32_asked() || n < 2 || n > MAX_ITEMS || a[0].n_head <= 0 ||
        a[0].n_kv_head <= 0 || a[0].n_head % a[0].n_kv_head || a[0].n_head > 65535 || a[0].kv_stride < 0 ||
        !svlm_cu_flash_attention_supported(a[0].head_dim, f16))
        return 0;
    svlm_cu_flash_item items[MAX_ITEMS];
    int64_t max_q = 0;
    int vec_q = 1, vec_kv = 1;
    const uintptr_t kv_align = f16 ? 8 : 16;
    for (int i = 0; i < n; i++) {
        const svlm_attn_args *x = &a[i];
        if (x->n_q < CU(k)->attn_flash_min_q || x->n_kv < x->n_q || x->n_kv > INT64_MAX / 4 ||
            x->kv_type != a[0].kv_type || x->kv_stride != a[0].kv_stride || x->n_head != a[0].n_head ||
            x->n_kv_head != a[0].n_kv_head || x->head_dim != a[0].head_dim || x->causal != a[0].causal ||
            x->scale != a[0].scale)
            return 0;
        const void *ptrs[4] = {x->q, x->k, x->v, x->out};
        for (int j = 0; j < 4; j++)
            if (cu_device_view(ptrs[j]) != ptrs[j]) return 0;
        items[i] = (svlm_cu_flash_item){x->q, x->k, x->v, x->out, x->n_q, x->n_kv};
        max_q = x->n_q > max_q ? x->n_q : max_q;
        vec_q &= ((uintptr_t)x->q & 15) == 0;
        vec_kv &= ((uintptr_t)x->k & (kv_align - 1)) == 0 && ((uintptr_t)x->v & (kv_align - 1)) == 0;
    }
    const svlm_cu_flash_item *di = cu_in(k, 0, items, sizeof(svlm_cu_flash_item) * (size_t)n);
    cu_check(svlm_cu_flash_attention_items(CU(k)->stream, di, n, max_q, f16, a[0].kv_stride, a[0].n_head,
                                           a[0].n_kv_head, a[0].head_dim, a[0].causal, a[0].scale, vec_q,
                                           vec_kv, CU(k)->flash_mma),
             "attention (flash, many sequences)");
    return 1;
}
