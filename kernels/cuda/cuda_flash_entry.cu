/*
 * The flash kernel's C entry points: arguments checked once (cuda_flash_common.cuh), then the
 * mma.sync form (cuda_flash_mma.cu) or the WMMA one (cuda_flash_attention.cu).
 */
#include "kernels/cuda/cuda_flash_common.cuh"
#include "kernels/cuda/cuda_ops.h"

extern "C" int svlm_cu_flash_attention_supported(int head_dim, int kv_f16) {
    (void)kv_f16; /* f32 and f16 K/V alike */
    return svlm_flash::dim_supported(head_dim);
}

extern "C" int svlm_cu_flash_attention(cudaStream_t s, const float *q, const void *k, const void *v,
                                       int kv_f16, int64_t kv_stride, float *out, int64_t n_q, int64_t n_kv,
                                       int n_head, int n_kv_head, int head_dim, int causal, float scale,
                                       int mma) {
    if (n_q <= 0 || n_head <= 0) return 0;
    svlm_flash::args a;
    const int e = svlm_flash::one(q, k, v, kv_f16, kv_stride, out, n_q, n_kv, n_head, n_kv_head, head_dim,
                                  causal, scale, &a);
    if (e) return e;
    return mma ? svlm_flash::launch_mma(s, a, kv_f16) : svlm_flash::launch_wmma(s, a, kv_f16);
}

extern "C" int svlm_cu_flash_attention_items(cudaStream_t s, const svlm_cu_flash_item *items, int n,
                                             int64_t max_n_q, int kv_f16, int64_t kv_stride, int n_head,
                                             int n_kv_head, int head_dim, int causal, float scale, int vec_q,
                                             int vec_kv, int mma) {
    if (n <= 0 || max_n_q <= 0 || n_head <= 0) return 0;
    svlm_flash::args a;
    const int e = svlm_flash::many(items, n, max_n_q, kv_stride, n_head, n_kv_head, head_dim, causal, scale,
                                   vec_q, vec_kv, &a);
    if (e) return e;
    return mma ? svlm_flash::launch_mma(s, a, kv_f16) : svlm_flash::launch_wmma(s, a, kv_f16);
}
