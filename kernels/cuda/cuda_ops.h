/*
 * The device kernels of the CUDA backend, launched on a stream. Every pointer here is
 * device-accessible (device or managed memory). Each launcher returns the cudaError_t of the
 * launch (cudaSuccess = 0). Shared by the .cu files that define them and the C backend.
 */
#ifndef SVLM_KERNELS_CUDA_OPS_H
#define SVLM_KERNELS_CUDA_OPS_H

#include <cuda_runtime_api.h>
#include <stdint.h>
#include <stdlib.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Whether the environment switch `name` is exactly "1": how the forms not yet run on a GPU are
 * asked for (docs/cuda.md). Callers read it once a process. */
static inline int svlm_cu_switch_on(const char *name) {
    const char *e = getenv(name);
    return e && e[0] == '1' && !e[1];
}

/* Whether the switch `name` is exactly "0": how a measured change is switched back to what it
 * replaced (docs/cuda.md). */
static inline int svlm_cu_switch_off(const char *name) {
    const char *e = getenv(name);
    return e && e[0] == '0' && !e[1];
}

/* pdl (the launchers of a decode step's kernels): launch with programmatic dependent launch
 * (cuda_pdl.cuh; compute capability 9.0 and newer). svlm_cu_pdl_compiled: whether the kernels
 * this device runs were compiled with it (PTX for 9.0 or newer; from compute_80 PTX they lack the
 * waits, and must not be launched so). */
int svlm_cu_pdl_compiled(void);

/* Weight types the kernels decode (the ggml type ids of kernels/dtype.h). */
int svlm_cu_type_supported(int type);

/* y[i][r] = sum_c W[r][c] x[i][c] for i < n <= SVLM_CU_MATVEC_MAX, W stored as `type` rows of
 * row_bytes, decoded inside the kernel (accumulate: y[i][r] += the sum). cols is a multiple of 32
 * for block types. How many rows take this path rather than cuBLAS is the backend's choice
 * (cu_ctx.matvec_rows). */
#define SVLM_CU_MATVEC_MAX 16
int svlm_cu_matvec(cudaStream_t s, int type, const void *w, size_t row_bytes, int64_t rows, int64_t cols,
                   const float *x, int64_t n, float *y, int accumulate, int pdl);
/* Up to SVLM_CU_MULTI_MAX weights of one type, width and row size against the same activations
 * in one launch: y[i] = x W[i]^T, as svlm_cu_matvec for each. norm_w: x RMS-normalised with these
 * weights first (svlm_cu_rmsnorm's numbers), when svlm_cu_norm_fits(cols, n). */
#define SVLM_CU_MULTI_MAX 4
typedef struct svlm_cu_matvec_set {
    const void *w[SVLM_CU_MULTI_MAX];
    float *y[SVLM_CU_MULTI_MAX];
    int64_t rows[SVLM_CU_MULTI_MAX];
    size_t row_bytes;
    int n;
} svlm_cu_matvec_set;
int svlm_cu_matvec_multi(cudaStream_t s, int type, const svlm_cu_matvec_set *set, int64_t cols,
                         const float *x, int64_t n, const float *norm_w, float eps, int pdl);
/* A decode step's q/k/v products (set: 3 weights, y[0] = q; k and v are not written) with
 * svlm_cu_rope_store's work done on their results: q rotated, keys rotated into dsts[i], values
 * into dsts[n + i], keep and round as there. RoPE's normal form only (pairs 2i, 2i + 1); head_dim
 * and n_rot even, every weight's rows a multiple of head_dim, k and v alike. The same numbers as
 * svlm_cu_matvec_multi followed by svlm_cu_rope_store. */
typedef struct svlm_cu_rope_pairs {
    const int32_t *pos; /* [n] */
    void *const *dsts;  /* [2n] device row pointers: each row's key, then each row's value */
    float *keep;        /* NULL, or [2][n][k rows]: keys, then values, as they came */
    float theta_scale;
    int head_dim, n_rot, f16_cache, round;
} svlm_cu_rope_pairs;
int svlm_cu_matvec_qkv_rope(cudaStream_t s, int type, const svlm_cu_matvec_set *set, int64_t cols,
                            const float *x, int64_t n, const float *norm_w, float eps,
                            const svlm_cu_rope_pairs *rp, int pdl);
/* gate[i][r] = silu(x_i . Wg_r) * (x_i . Wu_r), both weights alike; norm_w as above. */
int svlm_cu_matvec_swiglu(cudaStream_t s, int type, const void *wg, const void *wu, size_t row_bytes,
                          int64_t rows, int64_t cols, const float *x, int64_t n, const float *norm_w,
                          float eps, float *gate, int pdl);
/* Whether n rows of cols normalised activations fit a block's shared memory. */
#define SVLM_CU_NORM_SMEM (47 * 1024) /* 48 KB less the kernels' own shared memory */
int svlm_cu_norm_fits(int64_t cols, int64_t n);
/* Whole weight to bf16 (out_bf16 = 1) or f32 rows of cols elements, for cuBLAS. */
int svlm_cu_dequant(cudaStream_t s, int type, const void *w, size_t row_bytes, int64_t rows, int64_t cols,
                    void *out, int out_bf16);
/* n f32 values to bf16 (round to nearest even). */
int svlm_cu_f32_to_bf16(cudaStream_t s, const float *x, uint16_t *y, int64_t n);

int svlm_cu_rmsnorm(cudaStream_t s, const float *x, const float *w, float *y, int64_t n, int64_t dim,
                    float eps, int pdl);
int svlm_cu_layernorm(cudaStream_t s, const float *x, const float *w, const float *b, float *y, int64_t n,
                      int64_t dim, float eps);
/* The same rows written as bf16 or (_f16) f16 (the next product's operand; RNE). */
int svlm_cu_layernorm_bf16(cudaStream_t s, const float *x, const float *w, const float *b, uint16_t *y,
                           int64_t n, int64_t dim, float eps);
int svlm_cu_layernorm_f16(cudaStream_t s, const float *x, const float *w, const float *b, uint16_t *y,
                          int64_t n, int64_t dim, float eps);
int svlm_cu_rope(cudaStream_t s, float *x, int64_t n, int n_head, int head_dim, int n_rot, const int32_t *pos,
                 float theta_scale, int neox);
/* svlm_k_rope_store on device buffers (dsts: a device table of 2n row pointers; n_rot even). */
int svlm_cu_rope_store(cudaStream_t s, float *q, const float *kx, const float *vx, int64_t n, int n_head,
                       int n_kv_head, int head_dim, int n_rot, const int32_t *pos, float theta_scale,
                       int neox, void *const *dsts, int f16_cache, float *keep, int round, int pdl);
int svlm_cu_silu_mul(cudaStream_t s, float *gate, const float *up, int64_t n);
int svlm_cu_gelu_tanh(cudaStream_t s, float *x, int64_t n);
int svlm_cu_add(cudaStream_t s, float *y, const float *x, int64_t n);
int svlm_cu_add_bias(cudaStream_t s, float *y, const float *b, int64_t n_rows, int64_t dim);
int svlm_cu_softmax(cudaStream_t s, float *x, int64_t n_rows, int64_t dim);
int svlm_cu_argmax(cudaStream_t s, const float *x, int64_t n_rows, int64_t dim, int32_t *ids);

/* Attention as svlm_k_attention describes it; k/v are f32 (kv_f16 = 0) or f16. head_dim <= 256. */
int svlm_cu_attention(cudaStream_t s, const float *q, const void *k, const void *v, int kv_f16,
                      int64_t kv_stride, float *out, int64_t n_q, int64_t n_kv, int n_head, int n_kv_head,
                      int head_dim, int causal, float scale);

/* One decode query of a sequence (q, out: [n_head][head_dim]) over its own cache of n_kv rows;
 * the rest is shared by a launch. Laid out as svlm_attn_item (kernels.h). */
typedef struct svlm_cu_attn_item {
    const float *q;
    const void *k, *v;
    float *out;
    int64_t n_kv;
} svlm_cu_attn_item;

/* Decode attentions of n_items such queries in one launch, each (item, head) split over `splits`
 * blocks (cuda_attention_decode.cu), items in device memory: svlm_cu_attention_decode_splits picks the count
 * for a launch's shape; part holds n_items * n_head * splits * (head_dim + 2) floats and done n_items *
 * n_head counters, zero before the first launch and left zero by each (both unused with one split). One query
 * after its whole cache, so causal or not makes no difference. head_dim <= 256. */
int svlm_cu_attention_decode_splits(int n_items, int n_head);
int svlm_cu_attention_decode(cudaStream_t s, const svlm_cu_attn_item *items, int n_items, int kv_f16,
                             int64_t kv_stride, int n_head, int n_kv_head, int head_dim, float scale,
                             int splits, float *part, unsigned *done, int pdl);

/* A decode step of one row with every layer in one kernel (cuda_decode_layers.cu): per layer the
 * work of svlm_cu_matvec_qkv_rope (with RMSNorm), svlm_cu_attention_decode, svlm_cu_matvec
 * (output product + residual), svlm_cu_matvec_swiglu (with RMSNorm) and svlm_cu_matvec (down
 * product + residual), each a phase of the same per-block code as those kernels (so the same
 * numbers), the phases separated by grid-wide barriers (a cooperative launch: every block
 * resident). */
typedef struct svlm_cu_decode_layer {
    const void *wq, *wk, *wv, *wo, *wg, *wu, *wd; /* device weights, all of the step's type */
    const float *attn_norm, *ffn_norm;
    void *const *dsts;            /* the row's key and value rows in this layer's caches (2 pointers) */
    const svlm_cu_attn_item *att; /* the row's attention in this layer (its q and out: the step's) */
    float *keep;                  /* NULL, or [2][kv rows]: the new key and value as they came */
} svlm_cu_decode_layer;
typedef struct svlm_cu_decode_step {
    const svlm_cu_decode_layer *layers; /* device table of n_layer */
    int n_layer, type;
    size_t qkv_row_bytes, o_row_bytes, ffn_row_bytes, down_row_bytes;
    int64_t n_embd, q_rows, kv_rows, n_ff; /* q_rows = n_head * head_dim, kv_rows = n_kv_head * head_dim */
    float *x, *q, *att, *gate;             /* one row each */
    const int32_t *pos;                    /* the row's position */
    float eps, theta_scale, scale;
    int n_rot, round, kv_f16;
    int n_head, n_kv_head, head_dim;
    int64_t kv_stride;
    int splits; /* the attention's splits (svlm_cu_attention_decode_splits(1, n_head)), part and
                   done as for svlm_cu_attention_decode */
    float *part;
    unsigned *done;
    int prefetch; /* each block prefetches its later phases' weight rows into L2 */
} svlm_cu_decode_step;
/* Whether the kernel is built for this weight type. */
int svlm_cu_decode_layers_type(int type);
/* The most blocks of the kernel resident at once on the current device for these shapes (0: the
 * type is not built, or none fit). */
int svlm_cu_decode_layers_max_blocks(int type, int kv_f16, int64_t n_embd);
/* blocks: at most svlm_cu_decode_layers_max_blocks (a cooperative launch needs them all resident). */
int svlm_cu_decode_layers(cudaStream_t s, const svlm_cu_decode_step *a, int blocks);

/* Data movement (cuda_data.cu): f32 -> f16 stores, rounding through f16, the f16-table GELU,
 * row gathers (dst row i = src row idx[i], idx on the device). */
int svlm_cu_store_f16(cudaStream_t s, void *y, const float *x, int64_t n);
int svlm_cu_load_f16(cudaStream_t s, float *y, const void *x, int64_t n);
int svlm_cu_round_f16(cudaStream_t s, float *x, int64_t n);
int svlm_cu_gelu_tanh_f16(cudaStream_t s, float *x, int64_t n);
/* x[i][j] = the f16-table GELU of (x[i][j] + b[j]) */
int svlm_cu_add_bias_gelu_f16(cudaStream_t s, float *x, const float *b, int64_t n_rows, int64_t dim);
/* y = bf16(gelu_f16(x)) (svlm_k_gelu_tanh_f16's numbers, then the bf16 of a product's operand) */
int svlm_cu_gelu_f16_to_bf16(cudaStream_t s, const float *x, uint16_t *y, int64_t n);
/* y = f16(gelu_f16(x)): the same GELU as an F16 weight's product operand */
int svlm_cu_gelu_f16_to_f16(cudaStream_t s, const float *x, uint16_t *y, int64_t n);
/* Row i of x (dim floats) to dsts[i] (a device table of n row pointers; NULL skips the row), as
 * f16 or f32. */
int svlm_cu_store_rows(cudaStream_t s, void *const *dsts, int f16, const float *x, int64_t n, int64_t dim);
/* svlm_k_kv_shift on device buffers for layers l0 .. l0 + n_l - 1: tab, a device table of
 * [3][n_layer] pointers (raw keys, keys, values); scratch: n_l * n * 2 rows of the cache type. */
int svlm_cu_kv_shift(cudaStream_t s, void *const *tab, int n_layer, int l0, int n_l, int64_t dst, int64_t src,
                     int64_t n, int n_kv_head, int head_dim, int n_rot, const int32_t *pos, float theta_scale,
                     int neox, int f16, void *scratch);
/* svlm_k_im2col on device buffers */
int svlm_cu_im2col(cudaStream_t s, float *dst, const float *pixels, int b, int S, int p, int round);
int svlm_cu_gather_rows(cudaStream_t s, float *dst, const float *src, const int32_t *idx, int64_t n,
                        int64_t dim);

/* The large-attention path (cuda_attention_gemm.cu). Rows [n_rows] of S, ld apart, each len
 * scores of head row / rows_per_head and query first_q + row % rows_per_head: softmax over the
 * visible ones (causal: kv rows j <= vis_off + query), zeros past them; written in place, or as
 * f16 into p16 (same ld) when p16 is not NULL. */
int svlm_cu_attn_softmax(cudaStream_t s, float *S, uint16_t *p16, int64_t ld, int64_t n_rows,
                         int64_t rows_per_head, int64_t len, int64_t first_q, int64_t vis_off, int causal);
/* n f32 values to f16 (round to nearest even). */
int svlm_cu_attn_to_f16(cudaStream_t s, const float *x, uint16_t *y, int64_t n);

/* Attention as svlm_cu_attention, fused on tensor cores (cuda_flash_entry.cu): 64 queries of one
 * head per block, the scores never in global memory; mma: the mma.sync form, scores in registers
 * (cuda_flash_mma.cu), else the WMMA form, scores through shared memory (cuda_flash_attention.cu).
 * Q, K, V and the probabilities are rounded to f16 (inputs must lie in f16's range), accumulation
 * is f32. supported: the head dims it takes (1 to 128; f32 or f16 K/V); others get
 * cudaErrorInvalidValue. */
int svlm_cu_flash_attention(cudaStream_t s, const float *q, const void *k, const void *v, int kv_f16,
                            int64_t kv_stride, float *out, int64_t n_q, int64_t n_kv, int n_head,
                            int n_kv_head, int head_dim, int causal, float scale, int mma);
int svlm_cu_flash_attention_supported(int head_dim, int kv_f16);
/* One sequence of svlm_cu_flash_attention_items (device pointers): its n_q queries are the last of
 * its n_kv cached rows. */
typedef struct svlm_cu_flash_item {
    const float *q;
    const void *k, *v;
    float *out;
    int64_t n_q, n_kv;
} svlm_cu_flash_item;
/* n attentions shaped alike (the frames of many streams) in one launch: items is a device table,
 * max_n_q the most queries of any; vec_q, vec_kv: every q is 16-byte aligned, every k and v 4
 * elements aligned (else the loads go one by one). */
int svlm_cu_flash_attention_items(cudaStream_t s, const svlm_cu_flash_item *items, int n, int64_t max_n_q,
                                  int kv_f16, int64_t kv_stride, int n_head, int n_kv_head, int head_dim,
                                  int causal, float scale, int vec_q, int vec_kv, int mma);

#ifdef __cplusplus
}
#endif

#endif
