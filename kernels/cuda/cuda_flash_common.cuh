/*
 * What the two forms of the flash-attention kernel share (cuda_flash_mma.cu on mma.sync,
 * cuda_flash_attention.cu on WMMA): their launch arguments, checked the same way, the dispatch on
 * the head dim, and the 4-element loads of f32 and f16 rows.
 */
#ifndef SVLM_KERNELS_CUDA_FLASH_COMMON_CUH
#define SVLM_KERNELS_CUDA_FLASH_COMMON_CUH

#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "kernels/cuda/cuda_ops.h"

namespace svlm_flash {

constexpr int kBQ = 64;      /* queries per block */
constexpr int kMaxDim = 128; /* head dims 1 to 128, padded to a multiple of 16 */

__device__ __forceinline__ void load4(const float *p, float *x) {
    const float4 v = *reinterpret_cast<const float4 *>(p);
    x[0] = v.x;
    x[1] = v.y;
    x[2] = v.z;
    x[3] = v.w;
}
__device__ __forceinline__ void load4(const __half *p, float *x) {
    const uint2 u = *reinterpret_cast<const uint2 *>(p); /* one 8-byte load */
    const float2 a = __half22float2(*reinterpret_cast<const __half2 *>(&u.x));
    const float2 b = __half22float2(*reinterpret_cast<const __half2 *>(&u.y));
    x[0] = a.x;
    x[1] = a.y;
    x[2] = b.x;
    x[3] = b.y;
}
__device__ __forceinline__ float to_f32(float x) {
    return x;
}
__device__ __forceinline__ float to_f32(__half x) {
    return __half2float(x);
}

/* items (not NULL): the sequence blockIdx.z of a launch for many takes the place of q, k, v, out,
 * n_q and n_kv. false: this block's query tile lies past its queries, and the whole block returns
 * (before any barrier, so none is left waiting). */
template <typename T>
__device__ __forceinline__ bool take_item(const svlm_cu_flash_item *items, const float *&q, const T *&k,
                                          const T *&v, float *&out, int64_t &n_q, int64_t &n_kv) {
    if (!items) return true;
    const svlm_cu_flash_item it = items[blockIdx.z];
    if ((int64_t)blockIdx.x * kBQ >= it.n_q) return false;
    q = it.q;
    k = static_cast<const T *>(it.k);
    v = static_cast<const T *>(it.v);
    out = it.out;
    n_q = it.n_q;
    n_kv = it.n_kv;
    return true;
}

/* The end of the kv rows that query rows up to `last` see: causal, query i sees rows j <= off + i
 * (off = n_kv - n_q); else all n_kv. */
__device__ __forceinline__ int64_t visible_end(int causal, int64_t off, int64_t last, int64_t n_kv) {
    return causal && off + last + 1 < n_kv ? off + last + 1 : n_kv;
}

struct args {
    const float *q;
    const void *k, *v;
    int64_t kv_stride;
    float *out;
    int64_t n_q, n_kv;
    int n_head, rep, hd, causal;
    float scale_log2;
    bool vec_q, vec_kv;
    const svlm_cu_flash_item *items; /* NULL: the one attention above */
    int n_items;
};

inline bool aligned(const void *p, uintptr_t n) {
    return (reinterpret_cast<uintptr_t>(p) & (n - 1)) == 0;
}

inline bool dim_supported(int head_dim) {
    return head_dim >= 1 && head_dim <= kMaxDim;
}

/* svlm_cu_flash_attention's arguments, checked (n_q > 0 and n_head > 0 already): cudaSuccess and
 * *a, or cudaErrorInvalidValue. */
inline int one(const float *q, const void *k, const void *v, int kv_f16, int64_t kv_stride, float *out,
               int64_t n_q, int64_t n_kv, int n_head, int n_kv_head, int head_dim, int causal, float scale,
               args *a) {
    if (!dim_supported(head_dim) || n_kv_head <= 0 || n_head % n_kv_head || n_head > 65535 || n_kv < 0 ||
        kv_stride < 0 || n_q > (int64_t)0x7fffffff * kBQ || n_kv > INT64_MAX / 4)
        return (int)cudaErrorInvalidValue;
    const uintptr_t kv_align = kv_f16 ? 8 : 16; /* 4 elements */
    *a = {q,
          k,
          v,
          kv_stride,
          out,
          n_q,
          n_kv,
          n_head,
          n_head / n_kv_head,
          head_dim,
          causal != 0,
          scale * 1.4426950408889634f,
          aligned(q, 16) && head_dim % 4 == 0,
          aligned(k, kv_align) && aligned(v, kv_align) && kv_stride % 4 == 0 && head_dim % 4 == 0,
          nullptr,
          1};
    return (int)cudaSuccess;
}

/* svlm_cu_flash_attention_items's, likewise (n, max_n_q and n_head > 0 already). */
inline int many(const svlm_cu_flash_item *items, int n, int64_t max_n_q, int64_t kv_stride, int n_head,
                int n_kv_head, int head_dim, int causal, float scale, int vec_q, int vec_kv, args *a) {
    if (!dim_supported(head_dim) || n_kv_head <= 0 || n_head % n_kv_head || n_head > 65535 || n > 65535 ||
        kv_stride < 0 || max_n_q > (int64_t)0x7fffffff * kBQ)
        return (int)cudaErrorInvalidValue;
    *a = {nullptr,
          nullptr,
          nullptr,
          kv_stride,
          nullptr,
          max_n_q,
          0,
          n_head,
          n_head / n_kv_head,
          head_dim,
          causal != 0,
          scale * 1.4426950408889634f,
          vec_q != 0 && head_dim % 4 == 0,
          vec_kv != 0 && kv_stride % 4 == 0 && head_dim % 4 == 0,
          items,
          n};
    return (int)cudaSuccess;
}

/* L<D, T>::run(s, a) for D, the head dim rounded up to a multiple of 16, and T, the K/V type. */
template <template <int, typename> class L, int D> int launch_d(cudaStream_t s, const args &a, int kv_f16) {
    return kv_f16 ? L<D, __half>::run(s, a) : L<D, float>::run(s, a);
}
template <template <int, typename> class L> int launch_dim(cudaStream_t s, const args &a, int kv_f16) {
    switch ((a.hd + 15) / 16) {
    case 1: return launch_d<L, 16>(s, a, kv_f16);
    case 2: return launch_d<L, 32>(s, a, kv_f16);
    case 3: return launch_d<L, 48>(s, a, kv_f16);
    case 4: return launch_d<L, 64>(s, a, kv_f16);
    case 5: return launch_d<L, 80>(s, a, kv_f16);
    case 6: return launch_d<L, 96>(s, a, kv_f16);
    case 7: return launch_d<L, 112>(s, a, kv_f16);
    default: return launch_d<L, 128>(s, a, kv_f16);
    }
}

/* The two forms' launches (cuda_flash_mma.cu, cuda_flash_attention.cu) of checked arguments; the
 * C entry points that choose between them are in cuda_flash_entry.cu. */
int launch_mma(cudaStream_t s, const args &a, int kv_f16);
int launch_wmma(cudaStream_t s, const args &a, int kv_f16);

} // namespace svlm_flash

#endif
