/*
 * What a backend supplies behind kernels.h: a table of operations and the object the svlm_k_*
 * entry points dispatch through. Private to kernels/.
 */
#ifndef SVLM_KERNELS_BACKEND_H
#define SVLM_KERNELS_BACKEND_H

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/kernels.h"

typedef struct backend_ops {
    void (*destroy)(svlm_kernels *k);
    void (*matmul)(svlm_kernels *k, const svlm_weight *w, const float *x, int64_t n, float *y);
    void (*matmul_multi)(svlm_kernels *k, const svlm_weight *const *ws, int n_w, const float *x, int64_t n,
                         float *const *ys);
    void (*rmsnorm)(svlm_kernels *k, const float *x, const float *w, float *y, int64_t n, int64_t dim,
                    float eps);
    void (*layernorm)(svlm_kernels *k, const float *x, const float *w, const float *b, float *y, int64_t n,
                      int64_t dim, float eps);
    void (*rope)(svlm_kernels *k, float *x, int64_t n, int n_head, int head_dim, int n_rot,
                 const int32_t *pos, float base, int neox);
    void (*attention)(svlm_kernels *k, const svlm_attn_args *a);
    void (*silu_mul)(svlm_kernels *k, float *gate, const float *up, int64_t n);
    void (*gelu_tanh)(svlm_kernels *k, float *x, int64_t n);
    void (*add)(svlm_kernels *k, float *y, const float *x, int64_t n);
    void (*add_bias)(svlm_kernels *k, float *y, const float *b, int64_t n_rows, int64_t dim);
    void (*softmax)(svlm_kernels *k, float *x, int64_t n_rows, int64_t dim);
    void (*argmax)(svlm_kernels *k, const float *x, int64_t n_rows, int64_t dim, int32_t *ids); /* required */
    void *(*alloc)(svlm_kernels *k, size_t bytes);
    void (*free)(svlm_kernels *k, void *p);
    void (*forget)(svlm_kernels *k, const void *weight_data); /* NULL: nothing cached */
    void (*defer)(svlm_kernels *k, int on);                   /* NULL: ops are synchronous */
    void (*sync)(svlm_kernels *k);                            /* NULL: nothing to wait for */
    void (*copy)(svlm_kernels *k, void *dst, const void *src, size_t bytes);
    void (*store)(svlm_kernels *k, void *dst, svlm_dtype dst_type, const float *src, int64_t n);
    void (*load)(svlm_kernels *k, float *dst, const void *src, svlm_dtype src_type, int64_t n);
    void (*round_f16)(svlm_kernels *k, float *x, int64_t n);
    void (*gather_rows)(svlm_kernels *k, float *dst, const float *src, const int32_t *idx, int64_t n,
                        int64_t dim);
    void (*gelu_tanh_f16)(svlm_kernels *k, float *x, int64_t n);
    void (*attention_multi)(svlm_kernels *k, const svlm_attn_args *a, int n); /* NULL: one by one */
    /* NULL: the generic loops over store / attention */
    void (*store_rows)(svlm_kernels *k, void *const *dsts, svlm_dtype dst_type, const float *src, int64_t n,
                       int64_t dim);
    void (*attention_items)(svlm_kernels *k, const svlm_attn_args *shape, const svlm_attn_item *items, int n);
    void (*add_bias_gelu_f16)(svlm_kernels *k, float *x, const float *b, int64_t n_rows,
                              int64_t dim);          /* NULL: add_bias, then gelu_tanh_f16 */
    void (*set_priority)(svlm_kernels *k, int high); /* NULL: nothing to reorder */
    /* NULL: the sequences of ops they stand for */
    void (*matmul_add)(svlm_kernels *k, const svlm_weight *w, const float *x, int64_t n, float *y);
    void (*rmsnorm_matmul_multi)(svlm_kernels *k, const float *x, const float *norm_w, float eps, float *h,
                                 const svlm_weight *const *ws, int n_w, int64_t n, float *const *ys);
    void (*rmsnorm_swiglu)(svlm_kernels *k, const float *x, const float *norm_w, float eps, float *h,
                           const svlm_weight *wg, const svlm_weight *wu, int64_t n, float *gate, float *up);
    void (*layernorm_matmul_bias)(svlm_kernels *k, const float *x, const float *ln_w, const float *ln_b,
                                  float eps, float *h, const svlm_weight *const *ws, const float *const *bs,
                                  int n_w, int64_t n, float *const *ys);
    void (*matmul_bias_add)(svlm_kernels *k, const svlm_weight *w, const float *b, const float *x, int64_t n,
                            float *y, float *tmp);
    void (*layernorm_gelu_ffn_add)(svlm_kernels *k, float *x, const float *ln_w, const float *ln_b, float eps,
                                   const svlm_weight *w1, const float *b1, const svlm_weight *w2,
                                   const float *b2, int64_t n, float *h, float *ff, float *tmp);
    void (*rope_store)(svlm_kernels *k, float *q, float *kx, float *vx, int64_t n, int n_head, int n_kv_head,
                       int head_dim, int n_rot, const int32_t *pos, float base, int neox, void *const *dsts,
                       svlm_dtype kv_type, float *keep, int round);
    /* NULL: rmsnorm_matmul_multi, then rope_store (through the public ops) */
    void (*rmsnorm_qkv_rope_store)(svlm_kernels *k, const float *x, const float *norm_w, float eps, float *h,
                                   const svlm_weight *const *ws, int64_t n, float *q, float *kx, float *vx,
                                   const svlm_rope_store_args *r);
    /* NULL: none (svlm_k_decode_layers returns 0); check: only whether it takes these arguments */
    int (*decode_layers)(svlm_kernels *k, const svlm_decode_layers_args *a, int check);
    void (*im2col)(svlm_kernels *k, float *dst, const float *pixels, int b, int S, int p, int round);
    void (*patch_embed)(svlm_kernels *k, const svlm_weight *w, const float *pixels, int b, int S, int p,
                        float *patches, float *y);                  /* NULL: im2col, then matmul */
    void (*kv_shift)(svlm_kernels *k, const svlm_kv_shift_args *a); /* required */
    /* NULL: malloc / free. free_host also gets malloc'ed pointers (alloc_host may fail) */
    void *(*alloc_host)(svlm_kernels *k, size_t bytes);
    void (*free_host)(svlm_kernels *k, void *p);
    /* NULL: no replay. begin returns the run's mode (replay_mode); end gets the hash of the
     * run's calls and returns svlm_k_replay_end's answer. */
    int (*replay_begin)(svlm_kernels *k, const void *owner, uint64_t shape);
    int (*replay_end)(svlm_kernels *k, uint64_t calls_hash);
    void (*replay_forget)(svlm_kernels *k, const void *owner);
    int (*device_memory)(svlm_kernels *k, size_t *used, size_t *total); /* NULL: host memory */
} backend_ops;

struct svlm_kernels {
    const backend_ops *ops;
    char name[64];
    int n_threads;
    int is_gpu;
    int no_compute; /* the null backend */
    svlm_cpu cpu;
    void *dev;            /* a device backend's state */
    int replay_mode;      /* inside svlm_k_replay_begin/end: one of replay_mode */
    uint64_t replay_hash; /* of the calls so far in the run */
    uint64_t n_ops;       /* op calls so far, where the backend counts them (null); __atomic */
};

/* How the ops of a replayed run go: as usual (not recorded), to the backend (which records them),
 * or nowhere (the backend replays its recording at the end); the calls are hashed in the last two. */
typedef enum replay_mode { REPLAY_OFF = 0, REPLAY_RECORD = 1, REPLAY_SKIP = 2 } replay_mode;

/* The op sequences the encoder's fused ops stand for, through k's own ops (kernels.c): what runs
 * when a backend has no fused form, or declines one. */
void svlm_k_seq_layernorm_matmul_bias(svlm_kernels *k, const float *x, const float *ln_w, const float *ln_b,
                                      float eps, float *h, const svlm_weight *const *ws,
                                      const float *const *bs, int n_w, int64_t n, float *const *ys);
void svlm_k_seq_matmul_bias_add(svlm_kernels *k, const svlm_weight *w, const float *b, const float *x,
                                int64_t n, float *y, float *tmp);
void svlm_k_seq_layernorm_gelu_ffn_add(svlm_kernels *k, float *x, const float *ln_w, const float *ln_b,
                                       float eps, const svlm_weight *w1, const float *b1,
                                       const svlm_weight *w2, const float *b2, int64_t n, float *h, float *ff,
                                       float *tmp);
#ifdef SVLM_HAVE_CUDA
/* The CUDA weight table's part of svlm_kernels_forget_range (kernels/cuda/cuda_weights.c). */
void svlm_cuda_weights_forget_range(const void *data, size_t bytes);
#endif

void svlm_k_seq_patch_embed(svlm_kernels *k, const svlm_weight *w, const float *pixels, int b, int S, int p,
                            float *patches, float *y);

#endif
