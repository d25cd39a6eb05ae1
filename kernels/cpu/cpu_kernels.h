/*
 * Internals of the CPU backend shared by kernels_cpu.c and the files in kernels/cpu/.
 * Matrix kernels come in one table per SIMD level; a level starts from the portable table and
 * overrides what it accelerates, so every entry is always callable.
 */
#ifndef SVLM_KERNELS_CPU_CPU_KERNELS_H
#define SVLM_KERNELS_CPU_CPU_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#include "common/threadpool.h"
#include "kernels/kernels.h"

typedef enum svlm_cpu_level {
    SVLM_CPU_SCALAR = 0,
    SVLM_CPU_AVX2 = 1,     /* AVX2 + FMA + F16C */
    SVLM_CPU_AVX512 = 2,   /* AVX-512 F/BW/VL/DQ + VNNI + BF16 */
    SVLM_CPU_NEON = 3,     /* AArch64 NEON */
    SVLM_CPU_NEON_DOT = 4, /* AArch64 NEON + the ARMv8.2 dot product (SDOT) */
} svlm_cpu_level;

/* Activations quantized for the integer dot products: one block per 32 values,
 * x[i] ~= d * qs[i], s = d * sum(qs) (lets offset and min terms of the weight formats be
 * applied once per block). Used for every quantized weight type, K-quants included: a
 * scale per 32 values is finer than ggml's per-256 Q8_K, so it is at least as accurate. */
typedef struct svlm_q8a {
    float d, s;
    int8_t qs[32];
} svlm_q8a;

/* Dot product of one weight row (cols elements, stored as the type) with one activation row:
 * a float row for F32/F16/BF16 weights, a svlm_q8a row for the quantized types. */
typedef float (*svlm_dot_fn)(int64_t cols, const void *w_row, const void *act);
/* The same dot for 4 consecutive weight rows (row_bytes apart) at once: out[k] for row k. Decode
 * rows are short (576 columns), so sharing the activation loads and one reduction for the four
 * sums saves much of the per-row cost. */
typedef void (*svlm_dot4_fn)(int64_t cols, const void *w_rows, size_t row_bytes, const void *act,
                             float out[4]);
/* Dequantizes one weight row into f32. */
typedef void (*svlm_dequant_fn)(int64_t cols, const void *w_row, float *out);
/* C[M][N] = A[M][K] * B[N][K]^T (nt) or A[M][K] * B[K][N] (nn); row-major with leading dims. */
typedef struct svlm_cpu svlm_cpu;
/* `thread` lets a GEMM take packing buffers from scratch slot SVLM_SCRATCH_GEMM. */
typedef void (*svlm_gemm_fn)(svlm_cpu *c, int thread, int64_t M, int64_t N, int64_t K, const float *A,
                             int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc);

/* What a GEMM over packed weights does with each sum as it stores it: adds bias[r] (NULL: no
 * bias), then, with residual set, the value y already holds (y += x W^T + b): (sum + b) + y, the
 * op sequence's numbers bit for bit. Fused this way, the vision encoder's products skip a pass
 * over their outputs per bias and per residual. x must not overlap y. */
typedef struct svlm_cpu_epilogue {
    const float *bias;
    int residual;
} svlm_cpu_epilogue;

/* The kernels a SIMD level provides (matrix kernels and the exp-heavy vector loops). */
typedef struct svlm_cpu_matmul_ops {
    svlm_dot_fn dot[SVLM_DTYPE_COUNT];
    svlm_dot4_fn dot4[SVLM_DTYPE_COUNT]; /* NULL: the matvec calls dot row by row */
    svlm_dequant_fn dequant[SVLM_DTYPE_COUNT];
    svlm_gemm_fn gemm_nt, gemm_nn;
    svlm_gemm_fn gemm_nt_wide, gemm_nn_wide; /* behind the few-row forms (svlm_cpu_gemm_rows_init_avx512) */
    /* C (M x N) = A B^T (trans 1) or A B for M <= 4 rows of f32 A and an f16 B: decode attention
     * straight from an F16 cache, read once at half the bytes (NULL: the rows are widened first) */
    void (*rows_f16)(int trans, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda,
                     const svlm_f16 *B, int64_t ldb, float *C, int64_t ldc);
    /* x[i] = exp(scale * (x[i] - max x)) in place; returns the sum (softmax = this / sum) */
    float (*exp_row)(float *x, int64_t dim, float scale);
    void (*silu_mul)(float *gate, const float *up, int64_t n); /* gate = silu(gate) * up */
    void (*gelu_tanh)(float *x, int64_t n);
    void (*rmsnorm_row)(const float *x, const float *w, float *y, int64_t dim, float eps);
    void (*layernorm_row)(const float *x, const float *w, const float *b, float *y, int64_t dim, float eps);
    void (*quantize_q8a)(const float *x, svlm_q8a *out, int64_t cols); /* as svlm_cpu_quantize_q8a */
    /* Batched matmuls over weights packed once: with bf16 products for non-F32 weights, and for F16
     * weights kept f16 and widened in the kernel (NULL: not available or disabled), with the
     * epilogue ep (NULL: none). Return 1 when done; 0, doing nothing, when packed_only is set and
     * no packed copy is kept or made now. */
    int (*matmul_bf16)(svlm_cpu *c, const svlm_weight *w, const float *x, int64_t n, float *y,
                       int packed_only, const svlm_cpu_epilogue *ep);
    int (*matmul_f16)(svlm_cpu *c, const svlm_weight *w, const float *x, int64_t n, float *y, int packed_only,
                      const svlm_cpu_epilogue *ep);
    int f16_quant; /* quantized weights take matmul_f16 too (the AVX2 level: no bf16 GEMM) */
    /* From this many activation rows on, a weight with a packed copy (kept, or made now where it
     * fits the cache) takes these GEMMs rather than the dot products (from 16 on, any weight). */
    int packed_min_rows;
} svlm_cpu_matmul_ops;

/* From this many activation rows on, any weight takes a GEMM (dequantized per call where it has
 * no packed copy); below it the dot products, or a packed copy's GEMM (packed_min_rows). */
#define SVLM_CPU_GEMM_MIN_ROWS 16

/* At the AVX-512 level, from 6 activation rows on a packed weight's GEMM beats the dot products,
 * which cost about the same for each row. One batched decode step of the SmolVLM2-256M shape on 2
 * threads, dot products against the packed GEMM: Q8_0 5 rows 10.6 and 11.0 ms, 6 rows 12.7 and
 * 11.6, 8 rows 16.9 and 14.3; F16 5 rows 17.7 and 19.0, 6 rows 21.2 and 19.8, 8 rows 28.4 and
 * 21.6; the 2.2B shape's Q4_K 4 rows 94 and 90 ms, 8 rows 187 and 121. */
#define PACKED_MIN_ROWS_AVX512 6

void svlm_cpu_matmul_init_ref(svlm_cpu_matmul_ops *ops);
#ifdef SVLM_X86
void svlm_cpu_matmul_init_avx2(svlm_cpu_matmul_ops *ops);
void svlm_cpu_matmul_init_avx512(svlm_cpu_matmul_ops *ops);
void svlm_cpu_gemm_init_avx512(svlm_cpu_matmul_ops *ops); /* own AVX-512 f32 GEMM */
/* Our one- to four-row forms (decode attention) in front of another f32 GEMM (OpenBLAS's): it was
 * 4-6x slower on them even with its AVX-512 kernels. */
void svlm_cpu_gemm_rows_init_avx512(svlm_cpu_matmul_ops *ops);
void svlm_cpu_rows_f16_init_avx512(svlm_cpu_matmul_ops *ops); /* ops->rows_f16 */
/* The AVX2 level's few-row forms: ops->rows_f16, and in front of its f32 GEMM for 1-4 rows. */
void svlm_cpu_rows_init_avx2(svlm_cpu_matmul_ops *ops);
void svlm_cpu_gemm_bf16_init_avx512(svlm_cpu_matmul_ops *ops); /* bf16 products (vdpbf16ps) */
void svlm_cpu_gemm_f16_init_avx512(svlm_cpu_matmul_ops *ops);  /* F16 weights widened in the kernel */
void svlm_cpu_gemm_f16_init_avx2(svlm_cpu_matmul_ops *ops);    /* F16 and quantized weights, as f16 */
#endif

#ifdef SVLM_ARM64
void svlm_cpu_matmul_init_neon(svlm_cpu_matmul_ops *ops);
void svlm_cpu_matmul_init_neon_dot(svlm_cpu_matmul_ops *ops);
#endif

/* 1 when the weight type takes svlm_q8a activations, 0 when it takes floats. */
int svlm_cpu_type_uses_q8a(svlm_dtype t);
/* Quantizes cols (a multiple of 32) floats into cols/32 blocks. */
void svlm_cpu_quantize_q8a(const float *x, svlm_q8a *out, int64_t cols);

/* Portable GEMMs (OpenBLAS when built with it). */
void svlm_cpu_gemm_nt_ref(svlm_cpu *c, int thread, int64_t M, int64_t N, int64_t K, const float *A,
                          int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc);
void svlm_cpu_gemm_nn_ref(svlm_cpu *c, int thread, int64_t M, int64_t N, int64_t K, const float *A,
                          int64_t lda, const float *B, int64_t ldb, float *C, int64_t ldc);

/* The CPU backend state the ops share. Not safe for concurrent use (one run at a time). */
enum { SVLM_SCRATCH_OP = 0, SVLM_SCRATCH_GEMM = 1, SVLM_SCRATCH_SLOTS = 2 };

struct svlm_cpu {
    svlm_pool *pool;
    int n_threads;
    svlm_cpu_level level;
    svlm_cpu_matmul_ops mm;
    void **scratch; /* [thread * SVLM_SCRATCH_SLOTS + slot], grown on demand */
    size_t *scratch_cap;
    int bf16_f16; /* F16 weights also take the bf16 GEMM (SVLM_BF16=all) */
    void *act;    /* converted activations of a matmul */
    size_t act_cap;
};

/* A per-thread, 64-byte aligned buffer of at least `bytes` (contents not kept): slot
 * SVLM_SCRATCH_OP for an op's own data, SVLM_SCRATCH_GEMM for the GEMM it calls. Aborts when
 * memory runs out: the ops have no error path and these buffers are small. */
void *svlm_cpu_scratch(svlm_cpu *c, int thread, int slot, size_t bytes);
/* The shared buffer for one matmul's converted activations (quantized or bf16), 64-byte
 * aligned, grown on demand (contents not kept). Aborts when memory runs out. */
void *svlm_cpu_act_buffer(svlm_cpu *c, size_t bytes);

/* How a GEMM lays out its packed weights: an entry is only ever used in its own layout (one
 * process may run an F16 weight through both GEMMs, by backends made with different settings). */
enum { SVLM_PACK_BF16_PAIRS = 1, SVLM_PACK_F16_STRIPS = 2 };
/* A GEMM's packed copy of w in `layout` (bytes long; kernels/cpu/packed_weights.c), shared by every
 * CPU backend: a ready copy (*fill 0), a new buffer the caller packs, uses and then passes to
 * svlm_cpu_packed_ready (*fill 1; a copy forgotten meanwhile is freed by that call), or NULL (over
 * the cap, or another caller is packing it): pack per call. */
uint32_t *svlm_cpu_packed(const svlm_weight *w, int layout, size_t bytes, int *fill);
void svlm_cpu_packed_ready(const uint32_t *packed);
/* Drops the packed copies of weights whose data starts in [data, data + bytes) (bytes 0: at data). */
void svlm_cpu_packed_forget(const void *data, size_t bytes);
size_t svlm_cpu_packed_bytes(void);           /* held by the cache, all weights */
void svlm_cpu_packed_set_limit(size_t bytes); /* the cap from now on (tests); entries stay */

void svlm_cpu_matmul(svlm_cpu *c, const svlm_weight *w, const float *x, int64_t n, float *y);
/* y = x W^T with the epilogue ep through a GEMM over packed weights: 1 done, 0 when none takes
 * this product (nothing done: the caller runs the op sequence). */
int svlm_cpu_matmul_fused(svlm_cpu *c, const svlm_weight *w, const float *x, int64_t n, float *y,
                          const svlm_cpu_epilogue *ep);
void svlm_cpu_matmul_multi(svlm_cpu *c, const svlm_weight *const *ws, int n_w, const float *x, int64_t n,
                           float *const *ys);
void svlm_cpu_attention(svlm_cpu *c, const svlm_attn_args *a);
/* Decode attention over long caches split along the kv rows; returns 0 (nothing done) where
 * splitting does not pay. */
int svlm_cpu_attention_split(svlm_cpu *c, const svlm_attn_args *a);

/* The K and V rows (kv head kvh, rows [r0, r0 + rows)) an attention task reads with m_rows query
 * rows per product (kernels/cpu/attention_kv.c): f32, or the F16 cache's own rows (f16 set) where
 * the few-row forms read f16. */
typedef struct svlm_attn_kv {
    const void *k, *v;
    int64_t ld; /* elements between rows */
    int f16;
} svlm_attn_kv;
/* Bytes of scratch svlm_attn_kv_view needs to widen the rows (0: read in place). */
size_t svlm_attn_kv_scratch(const svlm_cpu *c, const svlm_attn_args *a, int64_t rows, int64_t m_rows);
void svlm_attn_kv_view(const svlm_cpu *c, const svlm_attn_args *a, int kvh, int64_t r0, int64_t rows,
                       int64_t m_rows, float *scratch, svlm_attn_kv *kv);
/* C = A K^T (scores) and C = A V (weighted values) over the view's rows. */
void svlm_attn_kv_scores(svlm_cpu *c, int thread, const svlm_attn_kv *kv, int64_t M, int64_t N, int64_t K,
                         const float *A, int64_t lda, float *C, int64_t ldc);
void svlm_attn_kv_values(svlm_cpu *c, int thread, const svlm_attn_kv *kv, int64_t M, int64_t N, int64_t K,
                         const float *A, int64_t lda, float *C, int64_t ldc);
void svlm_cpu_rmsnorm(svlm_cpu *c, const float *x, const float *w, float *y, int64_t n, int64_t dim,
                      float eps);
void svlm_cpu_layernorm(svlm_cpu *c, const float *x, const float *w, const float *b, float *y, int64_t n,
                        int64_t dim, float eps);
void svlm_cpu_rope(svlm_cpu *c, float *x, int64_t n, int n_head, int head_dim, int n_rot, const int32_t *pos,
                   float base, int neox);
void svlm_cpu_silu_mul(svlm_cpu *c, float *gate, const float *up, int64_t n);
void svlm_cpu_gelu_tanh(svlm_cpu *c, float *x, int64_t n);
void svlm_cpu_add(svlm_cpu *c, float *y, const float *x, int64_t n);
void svlm_cpu_add_bias(svlm_cpu *c, float *y, const float *b, int64_t n_rows, int64_t dim);
void svlm_cpu_softmax(svlm_cpu *c, float *x, int64_t n_rows, int64_t dim);
void svlm_cpu_argmax(const float *x, int64_t n_rows, int64_t dim, int32_t *ids);
/* Portable vector loops (the SIMD levels replace them in their tables). */
float svlm_cpu_exp_row_ref(float *x, int64_t dim, float scale);
void svlm_cpu_rmsnorm_row_ref(const float *x, const float *w, float *y, int64_t dim, float eps);
void svlm_cpu_layernorm_row_ref(const float *x, const float *w, const float *b, float *y, int64_t dim,
                                float eps);
void svlm_cpu_silu_mul_ref(float *gate, const float *up, int64_t n);
void svlm_cpu_gelu_tanh_ref(float *x, int64_t n);

/* exp(x) in float to about 2 ulp, written without library calls or branches so that
 * compilers vectorise loops calling it (SSE2 up to AVX-512). */
static inline float svlm_expf_fast(float x) {
    x = x > 88.37f ? 88.37f : x;
    x = x < -87.33f ? -87.33f : x;
    /* n = round(x / ln2) by the 1.5 * 2^23 trick; its low mantissa bits hold n. */
    const float magic = 12582912.0f;
    float t = x * 1.44269504088896341f + magic;
    float n = t - magic;
    float r = x - n * 0.693145751953125f;
    r = r - n * 1.428606765330187e-06f;
    /* exp(r) on |r| <= ln2/2: Taylor terms to r^7 */
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    uint32_t tb, sb;
    float scale;
    __builtin_memcpy(&tb, &t, 4);
    sb = (tb - 0x4B400000u + 127u) << 23;
    __builtin_memcpy(&scale, &sb, 4);
    return p * scale;
}

#endif
