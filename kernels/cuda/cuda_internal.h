/*
 * State of the CUDA backend shared by its C files: one stream and cuBLAS handle per backend
 * object, staging buffers for host pointers, and the process-wide cache of uploaded weights.
 */
#ifndef SVLM_KERNELS_CUDA_INTERNAL_H
#define SVLM_KERNELS_CUDA_INTERNAL_H

#include <cuda_runtime_api.h>

#include "kernels/backend.h"
#include "kernels/cuda/cuda_blas.h"

enum { CU_STAGE_SLOTS = 6, CU_MAX_WRITEBACKS = 4 };
/* cuBLASLt's and cuDNN's switches (SVLM_CUDA_LT, SVLM_CUDA_CUDNN) */
enum { CU_SWITCH_AUTO = 0, CU_SWITCH_OFF = 1, CU_SWITCH_REQUIRED = 2 };

typedef struct cu_writeback {
    void *host;
    const void *dev;
    size_t bytes;
} cu_writeback;

enum { CU_PROF_OPS = 40 };

/* A recorded run (cuda_graphs.c): the CUDA graph of one key's ops and the hash of their calls. */
enum { CU_GRAPHS = 16 };
typedef struct cu_graph {
    const void *owner;
    uint64_t shape, hash;
    cudaGraphExec_t exec;
    unsigned gen; /* cu_generation when recorded */
    int seen;     /* the key ran once: its weights are uploaded, its buffers sized */
    int fails;    /* recordings that failed or calls that differed; replay stops at a few */
    uint64_t last_use;
} cu_graph;
typedef struct cu_prof_op {
    const char *what;
    long calls;
    double us;
} cu_prof_op;

typedef struct cu_lt cu_lt;   /* cuBLASLt's handle and per-shape descriptors (cuda_lt.c) */
typedef struct cu_dnn cu_dnn; /* cuDNN's handle and the patch convolution's descriptors (cuda_cudnn.c) */

typedef struct cu_ctx {
    int device;
    cudaStream_t stream;
    cublasHandle_t blas;
    void *stage[CU_STAGE_SLOTS]; /* device buffers for host inputs and outputs */
    size_t stage_cap[CU_STAGE_SLOTS];
    void *scratch; /* bf16 activations in front of cuBLAS */
    size_t scratch_cap;
    cu_writeback wb[CU_MAX_WRITEBACKS];
    int n_wb;
    int prof; /* SVLM_CUDA_PROFILE: host time per op (cuda_profile.c) */
    double prof_t0;
    cu_prof_op prof_ops[CU_PROF_OPS];
    int n_prof;
    int pinned_out;       /* this op writes pinned host memory directly: it must wait too */
    int defer;            /* svlm_k_defer depth: ops return without waiting while > 0 */
    int matvec_rows;      /* products of up to this many rows decode the weight in the kernel
                             (SVLM_CUDA_MATVEC_ROWS, 1 to SVLM_CU_MATVEC_MAX, default 8); more go to cuBLAS */
    int attn_gemm_min_q;  /* fewer queries go to the kernel: its one launch beats cuBLAS's eight
                             launches of host time (decode, a frame's 64 to 81 rows) */
    int attn_flash_min_q; /* the least queries cu_attention_flash takes (INT_MAX: off) */
    int flash_items;      /* many sequences' prefill in one flash launch (SVLM_CUDA_FLASH_ITEMS, on) */
    int flash_mma; /* the flash kernel on mma.sync, scores in registers (SVLM_CUDA_FLASH_MMA=0: WMMA) */
    int pdl; /* decode kernels with programmatic dependent launch (cuda_pdl.cuh; SVLM_CUDA_PDL=0: off) */
    int encoder_f16; /* the encoder's fused ops take F16 weights as f16 operands (SVLM_CUDA_ENCODER_F16=0:
                        TF32) */
    int qkv_rope;    /* decode steps' q/k/v, RoPE and stores in one kernel (SVLM_CUDA_QKV_ROPE=0: two) */
    int persistent;  /* one-row decode steps as one kernel (SVLM_CUDA_PERSISTENT=1; cuda_decode.c) */
    int persistent_blocks[2];         /* its blocks a launch, f32 and f16 caches (-1: it cannot run here) */
    int64_t persistent_for[2];        /* the model width those are for (0: none yet) */
    struct cu_layer_tabs *layer_tabs; /* its device tables of layers (cuda_decode.c) */
    int argmax_gpu;     /* greedy tokens found on the GPU (SVLM_CUDA_ARGMAX=0: the logits cross to the host
                         * and are searched there, as before the kernel; for comparison) */
    float *argmax_host; /* that copy (host memory, grown) */
    size_t argmax_host_cap;
    cu_lt *lt;             /* made on first use */
    cu_dnn *dnn;           /* made on first use */
    int lt_mode, dnn_mode; /* CU_SWITCH_*, read when the backend is made */
    int lt_gelu; /* CU_SWITCH_*: the encoder's GELU in its up product's epilogue (SVLM_CUDA_LT_GELU unset
                    or auto: tried; 0: a pass of its own; 1: required, a decline ends the program) */
    void *attn_scratch; /* scores, probabilities and f16 queries of cu_attention_gemm */
    size_t attn_scratch_cap;
    void *dec_buf; /* split decode attention: [dec_pairs] counters, then partial results */
    size_t dec_buf_cap, dec_pairs;
    unsigned buf_gen;    /* bumped when a staging or scratch buffer moves: recordings hold addresses */
    int graphs_on;       /* SVLM_CUDA_GRAPHS (default on) */
    int graph_mode;      /* replay_mode of the current run */
    int graph_cur;       /* its entry */
    unsigned graph_gen0; /* cu_generation when its recording began */
    uint64_t graph_clock;
    cu_graph graphs[CU_GRAPHS];
} cu_ctx;

#define CU(k) ((cu_ctx *)(k)->dev)

/* Set while this thread records a run: cu_check and cu_check_blas note failures in
 * cu_capture_failed instead of stopping (nothing ran yet; the caller issues the ops again). */
extern _Thread_local int cu_capturing, cu_capture_failed;

/* Ends the program with the failing call named: a device fault is not an input error, and the
 * ops have no way to report one (the CPU backend aborts on out-of-memory the same way). */
void cu_check(int err, const char *what);
void cu_check_blas(cublasStatus_t st, const char *what);

/* A device-accessible view of `bytes` of input at p: p itself when the GPU can read it (device,
 * managed or mapped memory), else a copy in staging slot `slot`. */
const void *cu_in(svlm_kernels *k, int slot, const void *p, size_t bytes);
/* cu_in for an input a kernel reads in short, scattered runs (im2col's pixels): page-locked host
 * memory is copied across in one DMA too, rather than read in place over the bus */
const void *cu_in_bulk(svlm_kernels *k, int slot, const void *p, size_t bytes);
/* Same for an output (copy_in = 1: also an input); host-only outputs are copied back by cu_done. */
void *cu_out(svlm_kernels *k, int slot, void *p, size_t bytes, int copy_in);
/* Copies staged outputs back to the host and waits for the stream, unless the op wrote only
 * device-accessible memory in deferred mode. Every op ends with it. */
void cu_done(svlm_kernels *k, const char *what);
/* Device buffer of at least `bytes` that lives until the next call (one per backend). */
void *cu_scratch(svlm_kernels *k, size_t bytes);

/* The weight cache (cuda_weights.c). Weights and parameter vectors are uploaded once per process
 * and device and kept until the last CUDA backend goes; a pointer the GPU can read is used as it
 * is. Returns the device copy of `bytes` at host. */
const void *cu_weight(svlm_kernels *k, const void *host, size_t bytes);
/* A bf16 (*bf16 = 1: quantized and BF16 weights) or f32 (F32, F16) row-major decode of the weight,
 * made on first use, for cuBLAS. When *temp is set the decode is for this product only and the
 * caller frees it (cudaFree) afterwards. */
const void *cu_weight_gemm(svlm_kernels *k, const svlm_weight *w, int *bf16, void **temp);
void cu_weights_retain(void);
void cu_weights_release(void);
void cu_weights_forget(svlm_kernels *k, const void *host);
/* Changes when any device copy of a weight is replaced or dropped. */
unsigned cu_weights_generation(void);

/* Replayed runs (cuda_graphs.c): the backend ops behind svlm_k_replay_begin/end. */
int cu_replay_begin(svlm_kernels *k, const void *owner, uint64_t shape);
int cu_replay_end(svlm_kernels *k, uint64_t calls_hash);
void cu_replay_forget(svlm_kernels *k, const void *owner);
void cu_graphs_init(svlm_kernels *k);
void cu_graphs_free(svlm_kernels *k);

/* The managed allocations of svlm_k_alloc (cuda_ranges.c): device-accessible pointers known
 * without a driver call. add returns 0 when out of memory (the pointer is then simply unknown). */
int cu_ranges_add(const void *p, size_t bytes);
void cu_ranges_remove(const void *p);
int cu_ranges_contain(const void *p);

/* Every op starts with it: selects the backend's GPU for this thread, starts the op's timer. */
void cu_begin(svlm_kernels *k);
/* The profile (cuda_profile.c): op timers, and the table printed when the backend goes. */
void cu_prof_init(svlm_kernels *k);
void cu_prof_start(svlm_kernels *k);
void cu_prof_stop(svlm_kernels *k, const char *what);
void cu_prof_report(svlm_kernels *k);

/* The CUDA op implementations (cuda_matmul.c, cuda_backend.c). */
void cu_matmul(svlm_kernels *k, const svlm_weight *w, const float *x, int64_t n, float *y);
void cu_matmul_multi(svlm_kernels *k, const svlm_weight *const *ws, int n_w, const float *x, int64_t n,
                     float *const *ys);
void cu_matmul_add(svlm_kernels *k, const svlm_weight *w, const float *x, int64_t n, float *y);
void cu_rmsnorm_matmul_multi(svlm_kernels *k, const float *x, const float *norm_w, float eps, float *h,
                             const svlm_weight *const *ws, int n_w, int64_t n, float *const *ys);
void cu_rmsnorm_qkv_rope_store(svlm_kernels *k, const float *x, const float *norm_w, float eps, float *h,
                               const svlm_weight *const *ws, int64_t n, float *q, float *kx, float *vx,
                               const svlm_rope_store_args *r);
void cu_rmsnorm_swiglu(svlm_kernels *k, const float *x, const float *norm_w, float eps, float *h,
                       const svlm_weight *wg, const svlm_weight *wu, int64_t n, float *gate, float *up);
/* The split decode attention's splits for n items of n_head heads, and its counters and partial
 * results (cu_ctx.dec_buf, grown outside recordings: inside one it marks the capture failed and
 * returns 0). */
int cu_decode_partials(svlm_kernels *k, int n, int n_head, int head_dim, int *splits, float **part,
                       unsigned **done);
/* svlm_k_decode_layers (cuda_decode.c): one kernel for every layer of a one-row decode step when
 * cu_ctx.persistent and the step fits it; check: only whether it does. */
int cu_decode_layers(svlm_kernels *k, const svlm_decode_layers_args *a, int check);
void cu_decode_layers_free(svlm_kernels *k);
/* Attention on tensor cores through cuBLAS (cuda_attention_gemm.c) for n_q >= 32: scores, a
 * masked row softmax, then P V, in query chunks. Takes the device views of a's q, k, v and out,
 * enqueues on the stream without waiting; returns 0 (nothing done) when it declines: decode-sized
 * n_q, sizes past cuBLAS's int arguments, or scratch it cannot get. */
int cu_attention_gemm(svlm_kernels *k, const svlm_attn_args *a, const float *dq, const void *dk,
                      const void *dv, float *dout);
/* Attention by the fused flash kernel (cuda_attention_flash.c) for n_q >= attn_flash_min_q: same
 * arguments and contract as cu_attention_gemm; declines (0) unsupported head dims, bad GQA ratios,
 * sizes past the kernel's limits, or when SVLM_CUDA_FLASH=0 turned it off. */
int cu_attention_flash(svlm_kernels *k, const svlm_attn_args *a, const float *dq, const void *dk,
                       const void *dv, float *dout);
/* n prefill attentions shaped alike in one launch of the flash kernel (cuda_attention_flash.c):
 * 0 when it declines them (then they go one by one). */
int cu_attention_flash_items(svlm_kernels *k, const svlm_attn_args *a, int n);
/* y (n x m, row-major) = x16 W^T + bias (acc: y += ...) with W and x in bf16 (f16: in f16; W: m
 * rows of kk), bias f32 (m values; NULL: none), all device pointers, through cuBLASLt with the bias
 * and residual in the epilogue; queued, no wait. Returns 0 when it declines (nothing queued). */
int cu_lt_gemm_bias(svlm_kernels *k, int m, int n, int kk, const void *w16, const uint16_t *x16, int f16,
                    float *y, const float *bias, int acc);
/* y16 (n x m, bf16; f16: f16) = GELU(x16 W^T + bias16) through cuBLASLt's GELU epilogue (its tanh
 * form), the next product's operand written by this one; bias16: m values of y16's type (NULL:
 * none); queued. 0 when it declines (no such epilogue for the shape, SVLM_CUDA_LT_GELU=0 or
 * SVLM_CUDA_LT=0; nothing queued): the caller runs the product and its own GELU pass.
 * SVLM_CUDA_LT_GELU=1 requires it (the tests' check). */
int cu_lt_gemm_bias_gelu(svlm_kernels *k, int m, int n, int kk, const void *w16, const uint16_t *x16, int f16,
                         uint16_t *y16, const uint16_t *bias16);
void cu_lt_free(svlm_kernels *k);
/* Whether F16 weights may multiply at their own precision (TF32, or f16 operands in the encoder's
 * fused ops): not under SVLM_CUDA_TF32=0, which asks for full f32 products (read at each product). */
int cu_tf32(void);
/* dy [b g^2][D] (g = (S - p) / p + 1) = the convolution of dx (b images, 3 planes of S x S, device)
 * with dw ([D][3][p][p] f32, device), stride p, through cuDNN; queued. 0: declined (a build without
 * cuDNN, SVLM_CUDA_CUDNN=0, or a failure), nothing queued. */
int cu_dnn_patch_embed(svlm_kernels *k, const float *dw, int D, const float *dx, int b, int S, int p,
                       float *dy);
void cu_dnn_free(svlm_kernels *k);
/* The encoder's fused ops (cuda_encoder.c). */
void cu_layernorm_matmul_bias(svlm_kernels *k, const float *x, const float *ln_w, const float *ln_b,
                              float eps, float *h, const svlm_weight *const *ws, const float *const *bs,
                              int n_w, int64_t n, float *const *ys);
void cu_matmul_bias_add(svlm_kernels *k, const svlm_weight *w, const float *b, const float *x, int64_t n,
                        float *y, float *tmp);
void cu_layernorm_gelu_ffn_add(svlm_kernels *k, float *x, const float *ln_w, const float *ln_b, float eps,
                               const svlm_weight *w1, const float *b1, const svlm_weight *w2, const float *b2,
                               int64_t n, float *h, float *ff, float *tmp);
void cu_patch_embed(svlm_kernels *k, const svlm_weight *w, const float *pixels, int b, int S, int p,
                    float *patches, float *y);
/* The address the GPU may use for p, or NULL when p is plain host memory. */
const void *cu_device_view(const void *p);

#endif
