/*
 * Weights as stored in GGUF, decoded on the GPU: the matrix-vector product of decode steps reads
 * the quantized blocks directly (one warp per output row, one lane per element of a 32-element
 * sub-block, so a warp reads each block once and coalesced), and a whole-weight decode to bf16 or
 * f32 feeds cuBLAS for batched products. Block layouts are those of kernels/dtype.h.
 */
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/quant_decode.h"

namespace {

/* elem<T>: the decoder of type id T from quant_decode.h */
template <int T> __device__ __forceinline__ float elem(const uint8_t *row, int64_t sb, int l);
#define ELEM(ID, FN)                                                                                         \
    template <> __device__ __forceinline__ float elem<ID>(const uint8_t *row, int64_t sb, int l) {           \
        return FN(row, sb, l);                                                                               \
    }
SVLM_QD_TYPES(ELEM)
#undef ELEM

constexpr int kWarpsPerBlock = 4;

/* One warp per row r; lane l takes element l of every sub-block, so the block's bytes and the 32
 * activations are read together. Up to SVLM_CU_MATVEC_MAX activation rows share the decode. */
template <int T>
__global__ void matvec_kernel(const uint8_t *w, size_t row_bytes, int64_t rows, int64_t cols, const float *x,
                              int n, float *y) {
    const int lane = threadIdx.x % 32;
    const int64_t r = (int64_t)blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
    if (r >= rows) return;
    const uint8_t *row = w + r * row_bytes;
    const int64_t n_sb = (cols + 31) / 32; /* plain types may end in a partial sub-block */
    float acc[SVLM_CU_MATVEC_MAX];
#pragma unroll
    for (int i = 0; i < SVLM_CU_MATVEC_MAX; i++)
        acc[i] = 0.0f;
#pragma unroll 4
    for (int64_t sb = 0; sb < n_sb; sb++) {
        if (sb * 32 + lane >= cols) break; /* only in the last sub-block of a plain type */
        const float v = elem<T>(row, sb, lane);
        const float *xc = x + sb * 32 + lane;
#pragma unroll
        for (int i = 0; i < SVLM_CU_MATVEC_MAX; i++)
            if (i < n) acc[i] += v * xc[i * cols];
    }
#pragma unroll
    for (int i = 0; i < SVLM_CU_MATVEC_MAX; i++) {
        if (i >= n) break;
        float a = acc[i];
        for (int o = 16; o > 0; o >>= 1)
            a += __shfl_xor_sync(0xffffffffu, a, o);
        if (lane == 0) y[i * rows + r] = a;
    }
}

/* Several weights of one type and width in one launch (q/k/v, gate/up): global row r belongs to
 * the weight whose range of the concatenated rows holds it. */
template <int T>
__global__ void matvec_multi_kernel(svlm_cu_matvec_set set, int64_t cols, const float *x, int n) {
    int64_t r = (int64_t)blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
    int wi = 0;
    while (wi < set.n && r >= set.rows[wi]) {
        r -= set.rows[wi];
        wi++;
    }
    if (wi >= set.n) return;
    const int lane = threadIdx.x % 32;
    const int64_t rows = set.rows[wi];
    const uint8_t *row = static_cast<const uint8_t *>(set.w[wi]) + r * set.row_bytes;
    const int64_t n_sb = (cols + 31) / 32;
    float acc[SVLM_CU_MATVEC_MAX];
#pragma unroll
    for (int i = 0; i < SVLM_CU_MATVEC_MAX; i++)
        acc[i] = 0.0f;
#pragma unroll 4
    for (int64_t sb = 0; sb < n_sb; sb++) {
        if (sb * 32 + lane >= cols) break;
        const float v = elem<T>(row, sb, lane);
        const float *xc = x + sb * 32 + lane;
#pragma unroll
        for (int i = 0; i < SVLM_CU_MATVEC_MAX; i++)
            if (i < n) acc[i] += v * xc[i * cols];
    }
    float *y = set.y[wi];
#pragma unroll
    for (int i = 0; i < SVLM_CU_MATVEC_MAX; i++) {
        if (i >= n) break;
        float a = acc[i];
        for (int o = 16; o > 0; o >>= 1)
            a += __shfl_xor_sync(0xffffffffu, a, o);
        if (lane == 0) y[i * rows + r] = a;
    }
}

__device__ __forceinline__ uint16_t to_bf16(float f) {
    const uint32_t u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

template <int T>
__global__ void dequant_kernel(const uint8_t *w, size_t row_bytes, int64_t rows, int64_t cols, void *out,
                               int out_bf16) {
    const int64_t id = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (id >= rows * cols) return;
    const int64_t r = id / cols, c = id % cols;
    const float v = elem<T>(w + r * row_bytes, c / 32, (int)(c % 32));
    if (out_bf16)
        static_cast<uint16_t *>(out)[id] = to_bf16(v);
    else
        static_cast<float *>(out)[id] = v;
}

template <int T>
int launch_matvec(cudaStream_t s, const void *w, size_t row_bytes, int64_t rows, int64_t cols, const float *x,
                  int64_t n, float *y) {
    const unsigned blocks = (unsigned)((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
    matvec_kernel<T><<<blocks, 32 * kWarpsPerBlock, 0, s>>>(static_cast<const uint8_t *>(w), row_bytes, rows,
                                                            cols, x, (int)n, y);
    return (int)cudaGetLastError();
}

/* Warps are independent, so a block may hold the last rows of one weight and the first of the next. */
template <int T>
int launch_matvec_multi(cudaStream_t s, const svlm_cu_matvec_set *set, int64_t cols, const float *x,
                        int64_t n) {
    int64_t total = 0;
    for (int i = 0; i < set->n; i++)
        total += set->rows[i];
    const unsigned blocks = (unsigned)((total + kWarpsPerBlock - 1) / kWarpsPerBlock);
    matvec_multi_kernel<T><<<blocks, 32 * kWarpsPerBlock, 0, s>>>(*set, cols, x, (int)n);
    return (int)cudaGetLastError();
}

template <int T>
int launch_dequant(cudaStream_t s, const void *w, size_t row_bytes, int64_t rows, int64_t cols, void *out,
                   int out_bf16) {
    const int64_t total = rows * cols;
    if (total <= 0) return 0;
    dequant_kernel<T><<<(unsigned)((total + 255) / 256), 256, 0, s>>>(static_cast<const uint8_t *>(w),
                                                                      row_bytes, rows, cols, out, out_bf16);
    return (int)cudaGetLastError();
}

bool is_blocked(int type) {
    return type != 0 && type != 1 && type != 30; /* F32, F16, BF16 */
}

} // namespace

extern "C" int svlm_cu_type_supported(int type) {
#define CASE(T, FN)                                                                                          \
    case T: return 1;
    switch (type) { SVLM_QD_TYPES(CASE) default : return 0; }
#undef CASE
}

extern "C" int svlm_cu_matvec(cudaStream_t s, int type, const void *w, size_t row_bytes, int64_t rows,
                              int64_t cols, const float *x, int64_t n, float *y) {
    if (rows <= 0 || n <= 0) return 0;
    if (n > SVLM_CU_MATVEC_MAX || (is_blocked(type) && cols % 32)) return (int)cudaErrorInvalidValue;
#define CASE(T, FN)                                                                                          \
    case T: return launch_matvec<T>(s, w, row_bytes, rows, cols, x, n, y);
    switch (type) { SVLM_QD_TYPES(CASE) default : return (int)cudaErrorInvalidValue; }
#undef CASE
}

extern "C" int svlm_cu_matvec_multi(cudaStream_t s, int type, const svlm_cu_matvec_set *set, int64_t cols,
                                    const float *x, int64_t n) {
    if (set->n <= 0 || n <= 0) return 0;
    if (set->n > SVLM_CU_MULTI_MAX || n > SVLM_CU_MATVEC_MAX || (is_blocked(type) && cols % 32))
        return (int)cudaErrorInvalidValue;
#define CASE(T, FN)                                                                                          \
    case T: return launch_matvec_multi<T>(s, set, cols, x, n);
    switch (type) { SVLM_QD_TYPES(CASE) default : return (int)cudaErrorInvalidValue; }
#undef CASE
}

extern "C" int svlm_cu_dequant(cudaStream_t s, int type, const void *w, size_t row_bytes, int64_t rows,
                               int64_t cols, void *out, int out_bf16) {
    if (rows <= 0) return 0;
    if (is_blocked(type) && cols % 32) return (int)cudaErrorInvalidValue;
#define CASE(T, FN)                                                                                          \
    case T: return launch_dequant<T>(s, w, row_bytes, rows, cols, out, out_bf16);
    switch (type) { SVLM_QD_TYPES(CASE) default : return (int)cudaErrorInvalidValue; }
#undef CASE
}
