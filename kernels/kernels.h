/*
 * The compute interface under the decoder and the vision encoder. One table of operations per
 * backend (CPU, CUDA, and "null", which computes nothing). All tensors are row-major; "rows" of a weight are
 * its output features (ggml ne[1]) and "cols" its input features (ggml ne[0], contiguous in memory).
 * Activation buffers passed to the ops must come from svlm_k_alloc so a device backend can
 * place them in its own memory; on the CPU they are plain host memory.
 */
#ifndef SVLM_KERNELS_KERNELS_H
#define SVLM_KERNELS_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/dtype.h"
#include "svlm.h"

typedef struct svlm_weight {
    svlm_dtype type;
    int64_t rows, cols;
    const void *data; /* rows * row_bytes bytes, e.g. straight from the GGUF mapping */
    size_t row_bytes;
} svlm_weight;

typedef struct svlm_attn_args {
    const float *q;     /* [n_q][n_head][head_dim] */
    const void *k;      /* [n_kv] rows of kv_stride elements; head h at h*head_dim */
    const void *v;      /* same layout as k */
    svlm_dtype kv_type; /* SVLM_F32 or SVLM_F16 */
    int64_t kv_stride;  /* elements between consecutive kv positions */
    float *out;         /* [n_q][n_head][head_dim] */
    int64_t n_q, n_kv;
    int n_head, n_kv_head, head_dim;
    int causal;  /* query i sees kv rows j <= (n_kv - n_q) + i; else all rows */
    float scale; /* usually 1/sqrt(head_dim) */
} svlm_attn_args;

typedef struct svlm_kernels svlm_kernels;

/* CPU backend with its own thread pool (n_threads <= 0: all CPUs). Picks the best SIMD level the
 * CPU has at run time. Environment overrides (for tests and comparisons):
 *   SVLM_SIMD=scalar|avx2|avx512  force a level (unknown value: E_INVALID; above the CPU's: E_UNSUPPORTED);
 *                                 it also caps the image resize's AVX2 / AVX-512 builds
 *   SVLM_GEMM=own|blas            batched matmuls through svlm's AVX-512 GEMM or OpenBLAS (default
 *                                 OpenBLAS when built with it). Creating the backend sets OpenBLAS to
 *                                 one thread: svlm parallelises across its own pool.
 *   SVLM_BF16=quant|all|0         batched matmuls with bf16 products (AVX-512 BF16, twice the f32
 *                                 rate; operands rounded to 8 significant bits): quantized and BF16
 *                                 weights (default "quant"), F16 weights too ("all"), or none.
 *   SVLM_F16_GEMM=1|0             batched matmuls of F16 weights (AVX-512 without SVLM_BF16=all;
 *                                 AVX2, where quantized weights too): weights packed once as f16
 *                                 and widened in the kernel (default), or dequantized to f32 on
 *                                 every call for the f32 GEMM.
 * Weight types with a kernel: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q4_K Q5_K Q6_K (loaders must
 * reject others up front). */
svlm_status svlm_kernels_create_cpu(int n_threads, svlm_kernels **out, svlm_err *err);
/* CUDA backend on GPU `device` (a build with -DSVLM_CUDA=ON). Weights are uploaded on first use
 * and stay on the GPU (quantized ones stay quantized for matrix-vector products; batched products
 * run through cuBLAS on tensor cores); svlm_k_alloc returns managed memory that both the host
 * and the GPU may touch. Pointers the host allocated itself are staged through device buffers,
 * so every op accepts any pointer. Each op returns with its results visible to the host, except
 * in deferred mode (svlm_k_defer).
 * No usable GPU (cudaGetDeviceCount errors 35, 100, 999, or no device) or a build without CUDA:
 * SVLM_E_UNSUPPORTED with the reason. */
svlm_status svlm_kernels_create_cuda(int device, svlm_kernels **out, svlm_err *err);
/* The "null" backend: no op computes anything (buffers are host memory) and it says it is a
 * GPU, so a benchmark on it measures svlm's own host work under a GPU's policies (kernels_null.c).
 * SVLM_NULL_DEVICE_MIB=N makes its "device" N MiB (blocks refused past nine tenths, as the CUDA
 * backend does); a value that is not a size is SVLM_E_INVALID. */
svlm_status svlm_kernels_create_null(svlm_kernels **out, svlm_err *err);
/* The backend named `name`: "cpu", "cuda" (or "cuda:N" for GPU N), "auto" (CUDA when a GPU is
 * usable, else the CPU) or "null" (svlm_kernels_create_null). NULL or "" reads SVLM_BACKEND, default "cpu".
 * When CUDA is asked for but unusable, the CPU backend is created instead and the reason is printed on stderr
 * once. n_threads is for the CPU backend. Unknown names: SVLM_E_INVALID. */
svlm_status svlm_kernels_create_named(const char *name, int n_threads, svlm_kernels **out, svlm_err *err);
/* high = 1: a device backend's work goes ahead of other backends' queued work on the same GPU
 * (the answer lane's, which a person waits on, ahead of the frames'); 0: the default. Call it
 * before the backend has work queued. The CPU has nothing to reorder. */
void svlm_kernels_set_priority(svlm_kernels *k, int high);
/* 1 when the backend computes on a GPU. */
int svlm_kernels_is_gpu(const svlm_kernels *k);
/* 0 for the null backend (whose figures are host work only), else 1. */
int svlm_kernels_computes(const svlm_kernels *k);
/* Device memory now in use and the device's size, for capacity figures: a GPU's as its driver
 * counts them (every allocation on the device, weights included); the null backend's blocks
 * (what svlm_k_alloc holds, on every null backend; total: SVLM_NULL_DEVICE_MIB, 0 unknown). 0 where buffers
 * are the host's own memory (the CPU): the process's resident size tells. */
int svlm_kernels_device_memory(svlm_kernels *k, size_t *used, size_t *total);
void svlm_kernels_destroy(svlm_kernels *k);
const char *svlm_kernels_name(const svlm_kernels *k); /* e.g. "cpu-avx512-vnni-bf16 x2" */
int svlm_kernels_threads(const svlm_kernels *k);
/* Op calls made on k so far, where its backend counts them (the null backend, whose every op a
 * GPU would run as one or a few launches or a transfer); 0 elsewhere. Any thread may ask. */
uint64_t svlm_kernels_ops(const svlm_kernels *k);

/* zero-filled (the null backend's: a fixed pattern), 64-byte aligned; NULL on failure */
void *svlm_k_alloc(svlm_kernels *k, size_t bytes);
void svlm_k_free(svlm_kernels *k, void *p);
/* Host memory the backend copies to and from fastest: page-locked on a GPU (a pass's new rows
 * reach the host at the bus's full speed, not through a staging copy), malloc'ed otherwise. For
 * the host side of svlm_k_copy, and as an input ops only read (a GPU reads it in place over the
 * bus; the patch embedding's and im2col's pixels cross in one DMA); never as an op's output.
 * NULL on failure. */
void *svlm_k_alloc_host(svlm_kernels *k, size_t bytes);
void svlm_k_free_host(svlm_kernels *k, void *p);
/* A host buffer that served as weight data (svlm_weight.data) is about to be freed or rewritten:
 * device backends drop their copies of it. Weights from the model mapping never need this. */
void svlm_k_forget(svlm_kernels *k, const void *weight_data);
/* Memory [data, data + bytes) that held weights (a model file's mapping) is about to go: every
 * backend of the process drops what it derived from weights there (the CPU's packed copies, the
 * GPU's device copies and their decodes, freed once the devices finish what was queued). */
void svlm_kernels_forget_range(const void *data, size_t bytes);

/* Deferred mode, for code whose buffers the host does not touch between ops: while on (calls
 * nest), a device backend's ops may return before their results land, so a decode step is a queue
 * of launches instead of a wait per op. The host then reaches svlm_k_alloc buffers only through
 * svlm_k_copy, or after svlm_k_sync. Outputs to plain host memory are complete on return either
 * way. Turning the last level off waits for the queue. The CPU completes every op at once. */
void svlm_k_defer(svlm_kernels *k, int on);
/* Waits until every op called so far has its results visible to the host. */
void svlm_k_sync(svlm_kernels *k);
/* Copies bytes from src to dst, each host memory or an svlm_k_alloc buffer, in order with the
 * ops (after the ops called before it); complete on return when dst is plain host memory. */
void svlm_k_copy(svlm_kernels *k, void *dst, const void *src, size_t bytes);
/* dst[i] = src[i] stored as dst_type: SVLM_F32, or SVLM_F16 rounded to nearest even. */
void svlm_k_store(svlm_kernels *k, void *dst, svlm_dtype dst_type, const float *src, int64_t n);
/* dst[i] = src[i] as f32, src stored as src_type (SVLM_F32 or SVLM_F16; any memory): the
 * inverse of svlm_k_store, so rows kept as f16 on the host convert where they are used. */
void svlm_k_load(svlm_kernels *k, float *dst, const void *src, svlm_dtype src_type, int64_t n);
/* x[i] = f32(f16(x[i])): values as a float16 computation would see them. */
void svlm_k_round_f16(svlm_kernels *k, float *x, int64_t n);
/* Row i of dst = row idx[i] of src, rows of dim floats (idx: n entries in host memory). dst must
 * not overlap src. */
void svlm_k_gather_rows(svlm_kernels *k, float *dst, const float *src, const int32_t *idx, int64_t n,
                        int64_t dim);

/* Where a decode step's per-sequence arguments live so that the step's ops stay the same from
 * step to step (see svlm_k_replay_begin): tables in svlm_k_alloc buffers, filled by svlm_k_copy
 * before the ops that read them. */
typedef struct svlm_attn_item {
    const float *q;    /* one query: [n_head][head_dim] */
    const void *k, *v; /* the sequence's cache rows, as svlm_attn_args */
    float *out;        /* [n_head][head_dim] */
    int64_t n_kv;      /* rows it sees (all of them: one query at the end) */
} svlm_attn_item;
/* Row i of src (dim floats) stored as dst_type (SVLM_F32 or SVLM_F16) at dsts[i]: the new key or
 * value rows of n sequences into their caches. dsts: n pointers, read when the op runs; a NULL
 * one skips its row. */
void svlm_k_store_rows(svlm_kernels *k, void *const *dsts, svlm_dtype dst_type, const float *src, int64_t n,
                       int64_t dim);
/* n decode attentions, one query each: item i over its own cache, the rest as in `shape` (whose
 * q, k, v, out, n_q and n_kv are ignored). items: n entries, read when the op runs. */
void svlm_k_attention_items(svlm_kernels *k, const svlm_attn_args *shape, const svlm_attn_item *items, int n);

/* Replayed runs (CUDA Graphs): a decode step is hundreds of small ops whose launches cost more
 * than their work. The caller brackets a run of ops that is the same from call to call -- the
 * same ops with the same arguments, only the contents of svlm_k_alloc buffers differ -- between
 * begin and end, keyed by the object whose buffers the run uses (owner) and a number for the
 * kind of run (shape). A device backend runs the first call of a key
 * as usual, records the second, and from then on only checks that the calls match the recording
 * (a hash of every argument) and replays it in one launch. Inside a run: deferred mode is on,
 * every buffer is an svlm_k_alloc buffer or weight data, the host reads no result, and tables
 * the ops read (svlm_k_store_rows, svlm_k_attention_items) are copied in before begin.
 * svlm_k_replay_end returns 1 when the run's ops ran or are queued in order, and 0 when they did
 * NOT run (the calls differed from the recording, or recording failed): the caller then issues
 * them again outside begin/end. A backend without replay (the CPU) runs ops as they come and
 * returns 1. SVLM_CUDA_GRAPHS=0 turns replay off. */
void svlm_k_replay_begin(svlm_kernels *k, const void *owner, uint64_t shape);
int svlm_k_replay_end(svlm_kernels *k);
/* Drops the recordings of owner (its runs' buffers are about to be freed). */
void svlm_k_replay_forget(svlm_kernels *k, const void *owner);

/* y[i][r] = sum_c W[r][c] * x[i][c] for i < n.  x: [n][cols] f32, y: [n][rows] f32.
 * Quantized weights are used as stored (no whole-model conversion). */
void svlm_k_matmul(svlm_kernels *k, const svlm_weight *w, const float *x, int64_t n, float *y);
/* ys[i] = x * ws[i]^T for i < n_w, like n_w svlm_k_matmul calls, for weights with the same cols
 * (q/k/v, gate/up). In decode the CPU backend runs them as one parallel loop: one
 * synchronisation instead of n_w, and the activations are quantized once. */
void svlm_k_matmul_multi(svlm_kernels *k, const svlm_weight *const *ws, int n_w, const float *x, int64_t n,
                         float *const *ys);

/* Fused forms of the decoder's sequences (one pass, one launch on a GPU for decode-sized n; the
 * same numbers as the ops they stand for on the CPU):
 * y[i] += x[i] W^T: svlm_k_matmul into tmp (n x w->rows floats of scratch), then svlm_k_add. */
void svlm_k_matmul_add(svlm_kernels *k, const svlm_weight *w, const float *x, int64_t n, float *y,
                       float *tmp);
/* h = RMSNorm(x) with norm_w (rows of ws[0]->cols), then ys[i] = h ws[i]^T. h is scratch the
 * op may leave unwritten. */
void svlm_k_rmsnorm_matmul_multi(svlm_kernels *k, const float *x, const float *norm_w, float eps, float *h,
                                 const svlm_weight *const *ws, int n_w, int64_t n, float *const *ys);
/* gate = silu(h Wg^T) * (h Wu^T) with h = RMSNorm(x) (the SwiGLU feed-forward's first half); h
 * and up are scratch the op may leave unwritten. */
void svlm_k_rmsnorm_swiglu(svlm_kernels *k, const float *x, const float *norm_w, float eps, float *h,
                           const svlm_weight *wg, const svlm_weight *wu, int64_t n, float *gate, float *up);

/* Fused forms of the vision encoder's sequences (the same numbers as the ops they stand for on the
 * CPU; a GPU whose products run in bf16 keeps their inputs in bf16 and adds biases and residuals
 * in the products' epilogues; outputs should not overlap inputs):
 * ys[i] = LN(x) ws[i]^T + bs[i] (bs[i] NULL: no bias), the norm as svlm_k_layernorm with ln_w and
 * ln_b (rows of ws[0]->cols): svlm_k_layernorm into h, svlm_k_matmul_multi, svlm_k_add_bias. h is
 * scratch the op may leave unwritten. */
void svlm_k_layernorm_matmul_bias(svlm_kernels *k, const float *x, const float *ln_w, const float *ln_b,
                                  float eps, float *h, const svlm_weight *const *ws, const float *const *bs,
                                  int n_w, int64_t n, float *const *ys);
/* y += (x W^T + b) (b NULL: no bias): svlm_k_matmul into tmp (n x w->rows floats of scratch),
 * svlm_k_add_bias, svlm_k_add. */
void svlm_k_matmul_bias_add(svlm_kernels *k, const svlm_weight *w, const float *b, const float *x, int64_t n,
                            float *y, float *tmp);
/* x += W2 gelu_f16(W1 LN(x) + b1) + b2, the encoder block's feed-forward half: svlm_k_layernorm into
 * h, svlm_k_matmul into ff, svlm_k_add_bias_gelu_f16, svlm_k_matmul_bias_add with tmp. h (n x
 * w1->cols), ff (n x w1->rows) and tmp (n x w2->rows) are scratch the op may leave unwritten. */
void svlm_k_layernorm_gelu_ffn_add(svlm_kernels *k, float *x, const float *ln_w, const float *ln_b, float eps,
                                   const svlm_weight *w1, const float *b1, const svlm_weight *w2,
                                   const float *b2, int64_t n, float *h, float *ff, float *tmp);

/* A decode step's new rows into the caches: q rotated in place (RoPE at pos, as svlm_k_rope), the
 * keys rotated and stored, the values stored, row r's key at dsts[r] and its value at dsts[n + r]
 * (kv_dim = n_kv_head * head_dim elements each, as kv_type). keep (not NULL): the keys and values
 * as they came, [n] keys then [n] values, also go there (the pages' copy); round: keys and values
 * rounded through f16 before RoPE and the stores (f16 pages). kx and vx are scratch afterwards.
 * The same numbers as svlm_k_copy (keep), svlm_k_round_f16, svlm_k_rope and svlm_k_store_rows. */
void svlm_k_rope_store(svlm_kernels *k, float *q, float *kx, float *vx, int64_t n, int n_head, int n_kv_head,
                       int head_dim, int n_rot, const int32_t *pos, float base, int neox, void *const *dsts,
                       svlm_dtype kv_type, float *keep, int round);

/* svlm_k_rope_store's arguments besides the rows themselves. */
typedef struct svlm_rope_store_args {
    int n_head, n_kv_head, head_dim, n_rot;
    const int32_t *pos;
    float base;
    int neox;
    void *const *dsts;
    svlm_dtype kv_type;
    float *keep;
    int round;
} svlm_rope_store_args;

/* A decode step's attention inputs in one op: svlm_k_rmsnorm_matmul_multi of x with ws = {Wq, Wk,
 * Wv} into q, kx, vx, then svlm_k_rope_store on them with r. The same numbers; h, kx and vx are
 * scratch the op may leave unwritten (a GPU rotates and stores the rows as its products make them:
 * one kernel instead of two). */
void svlm_k_rmsnorm_qkv_rope_store(svlm_kernels *k, const float *x, const float *norm_w, float eps, float *h,
                                   const svlm_weight *const *ws, int64_t n, float *q, float *kx, float *vx,
                                   const svlm_rope_store_args *r);

/* One layer of a one-row decode step, for svlm_k_decode_layers. */
typedef struct svlm_decode_layer {
    const float *attn_norm, *ffn_norm;
    const svlm_weight *wq, *wk, *wv, *wo, *w_gate, *w_up, *w_down;
    void *const *dsts;         /* the row's key and value rows (svlm_rope_store_args.dsts) */
    const svlm_attn_item *att; /* the row's attention in this layer: one item, kernels' side, its q and
                                  out the step's q and att */
    float *keep;               /* svlm_rope_store_args.keep */
} svlm_decode_layer;
/* The step: its layers (host memory, read at the call), the one-row activations, and the
 * arguments every layer shares (rope's dsts and keep, and attn's q, k, v, out and lengths, are
 * ignored: they come from the layers). */
typedef struct svlm_decode_layers_args {
    int n_layer;
    const svlm_decode_layer *layers;
    float *x, *h, *q, *kx, *vx, *att, *gate, *up;
    float eps;
    svlm_rope_store_args rope;
    svlm_attn_args attn;
} svlm_decode_layers_args;
/* Every layer of a decode step of one row as one op where the backend has one: per layer
 * svlm_k_rmsnorm_qkv_rope_store, svlm_k_attention_items (att), svlm_k_matmul_add of Wo on att
 * into x, svlm_k_rmsnorm_swiglu into gate, svlm_k_matmul_add of W_down on gate into x, with the
 * same numbers. On a GPU with SVLM_CUDA_PERSISTENT=1, one kernel for the whole step (Q8_0 weights).
 * Returns 0 when the backend has no such op for these arguments: nothing ran, and the caller
 * issues the ops itself. The answer depends only on the arguments and the backend, so a replayed
 * run takes the same path as its recording. */
int svlm_k_decode_layers(svlm_kernels *k, const svlm_decode_layers_args *a);

/* The rows of a working copy that an eviction moved (see svlm_kv_version), every layer in one op:
 * rows [src, src + n) of raw[l] (keys before RoPE) and of vc[l] (values) move to rows
 * [dst, dst + n) (dst < src: the ranges may overlap), then kc[l]'s rows [dst, dst + n) become the
 * moved keys rotated to positions pos[0..n) (kernels' side), with the numbers of svlm_k_load,
 * svlm_k_rope and svlm_k_store. Rows hold n_kv_head * head_dim elements of `type`. */
typedef struct svlm_kv_shift_args {
    void *const *raw, *const *kc, *const *vc; /* n_layer pointers each, host memory read at the call */
    int n_layer;
    svlm_dtype type; /* SVLM_F32 or SVLM_F16 */
    int64_t dst, src, n;
    int n_kv_head, head_dim, n_rot, neox;
    float base;
    const int32_t *pos;
} svlm_kv_shift_args;
void svlm_k_kv_shift(svlm_kernels *k, const svlm_kv_shift_args *a);

/* The patches of b images (3 planes of S x S floats each, S >= p; any memory) as rows of 3 p p
 * values in (channel, ky, kx) order, patch i at row (py, px) = (i / g, i % g) with g = S / p
 * (rounded down: pixels past g p are not read, as SmolVLM2-2.2B's 384-px tiles of 14-px
 * patches leave 6): dst [b g^2][3 p p]. round: each value rounded through f16 (llama.cpp's F16 convolution).
 */
void svlm_k_im2col(svlm_kernels *k, float *dst, const float *pixels, int b, int S, int p, int round);

/* The patch embedding's convolution: y [b g^2][w->rows] (g = S / p, rounded down) = the patches
 * of b images (as svlm_k_im2col with rounding through f16) times w^T, w holding rows of 3 p p values in
 * (channel, ky, kx) order. patches (an svlm_k_alloc buffer of b g^2 3 p p floats) is scratch the op may leave
 * unwritten. The numbers of svlm_k_im2col (round 1) then svlm_k_matmul; a GPU built with cuDNN runs one
 * convolution instead (f16-rounded pixels, products exact in TF32, f32 sums). */
void svlm_k_patch_embed(svlm_kernels *k, const svlm_weight *w, const float *pixels, int b, int S, int p,
                        float *patches, float *y);

/* y = x / sqrt(mean(x^2) + eps) * w, per row of `dim`. y may alias x. */
void svlm_k_rmsnorm(svlm_kernels *k, const float *x, const float *w, float *y, int64_t n, int64_t dim,
                    float eps);
/* y = (x - mean) / sqrt(var + eps) * w + b, population variance. y may alias x. b may be NULL. */
void svlm_k_layernorm(svlm_kernels *k, const float *x, const float *w, const float *b, float *y, int64_t n,
                      int64_t dim, float eps);
/* In-place RoPE on x [n][n_head][head_dim]: the first n_rot dims of each head are rotated by
 * pos[i] * base^(-2j/n_rot). neox=0: adjacent pairs (2j, 2j+1); neox=1: pairs (j, j + n_rot/2).
 * Angles follow ggml: theta_j = pos * (base^(-2/n_rot))^j in float32. */
void svlm_k_rope(svlm_kernels *k, float *x, int64_t n, int n_head, int head_dim, int n_rot,
                 const int32_t *pos, float base, int neox);
/* Scaled dot-product attention with GQA (kv head of query head h is h / (n_head / n_kv_head)). */
void svlm_k_attention(svlm_kernels *k, const svlm_attn_args *a);
/* n attentions as n svlm_k_attention calls, for decode steps of several sequences, each over
 * its own cache: a device backend runs those of one query each in one launch. */
void svlm_k_attention_multi(svlm_kernels *k, const svlm_attn_args *a, int n);
/* gate[i] = silu(gate[i]) * up[i] */
void svlm_k_silu_mul(svlm_kernels *k, float *gate, const float *up, int64_t n);
/* x = 0.5 x (1 + tanh(sqrt(2/pi)(x + 0.044715 x^3))) */
void svlm_k_gelu_tanh(svlm_kernels *k, float *x, int64_t n);
/* GELU as ggml's F16 table gives it: inputs in (-10, 10) rounded to f16, svlm_k_gelu_tanh, then
 * outputs below 10 rounded to f16 (keeps the vision encoder within 1e-4 of llama.cpp). */
void svlm_k_gelu_tanh_f16(svlm_kernels *k, float *x, int64_t n);
/* x[i][j] = gelu_tanh_f16(x[i][j] + b[j]) for i < n_rows, j < dim: svlm_k_add_bias then
 * svlm_k_gelu_tanh_f16 (the same numbers) in one pass. */
void svlm_k_add_bias_gelu_f16(svlm_kernels *k, float *x, const float *b, int64_t n_rows, int64_t dim);
/* y += x */
void svlm_k_add(svlm_kernels *k, float *y, const float *x, int64_t n);
/* y[i][j] += b[j] for i < n_rows, j < dim */
void svlm_k_add_bias(svlm_kernels *k, float *y, const float *b, int64_t n_rows, int64_t dim);
/* In-place softmax over rows of `dim`. */
void svlm_k_softmax(svlm_kernels *k, float *x, int64_t n_rows, int64_t dim);
/* ids[i] = the index of row i's greatest element, the first of equals; NaNs never win, and a
 * row that starts with a NaN gives 0 (the plain loop `if (x[j] > x[best]) best = j`). Greedy
 * decoding reads n_rows ids where the logits are instead of n_rows x dim floats; ids may be
 * host memory. */
void svlm_k_argmax(svlm_kernels *k, const float *x, int64_t n_rows, int64_t dim, int32_t *ids);

#endif
