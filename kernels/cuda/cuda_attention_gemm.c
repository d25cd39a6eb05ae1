/*
 * Attention with many queries (prefill, the vision encoder) on tensor cores: per chunk of query
 * rows, S = scale Q K^T by cuBLAS, a masked row softmax (cuda_attention_gemm.cu), then O = P V by
 * cuBLAS. f32 K/V multiply as TF32 (SVLM_CUDA_TF32=0: full f32); f16 K/V take f16 copies of Q and
 * P, accumulating in f32. Decode (few queries) stays with the online-softmax kernel.
 *
 * Layouts (row-major, as svlm_attn_args): Q [n_q][n_head][hd] (ld n_head hd), K and V [n_kv] rows
 * of kv_stride with kv head g at g hd, out like Q. Scratch S and P: [n_head][chunk][ld_s].
 * cuBLAS is column-major: a row-major R x C matrix with leading dimension ld is the column-major
 * C x R matrix with the same ld, its transpose. So, per head h of kv head g, chunk rows i, kv
 * rows j < len:
 *   S^T (len x rows, ldc ld_s) = K_g (col-major hd x len, lda kv_stride, op T)
 *                              * Q_h (col-major hd x rows, ldb n_head hd, op N);  m len, n rows, k hd
 *   O^T (hd x rows, ldc n_head hd) = V_g (col-major hd x len, lda kv_stride, op N)
 *                              * P_h (col-major len x rows, ldb ld_s, op N);       m hd, n rows, k len
 * The heads of a group share K_g, so each call batches over the kv heads g (head g rep + r) for
 * one r: K/V batch stride hd, Q/out stride rep hd, S/P stride rep rows ld_s.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_internal.h"
#include "kernels/cuda/cuda_ops.h"

enum { GEMM_MIN_Q = 32 }; /* the least the path takes (SVLM_CUDA_ATTN_GEMM_MIN_Q, default 128) */
#ifndef S_MAX_BYTES       /* a test may set a smaller one, to see chunks */
#define S_MAX_BYTES ((size_t)256 << 20) /* f32 scores of one chunk, all heads */
#endif

static int use_tf32(void) {
    const char *e = getenv("SVLM_CUDA_TF32");
    return !(e && !strcmp(e, "0"));
}

static size_t align256(size_t n) {
    return (n + 255) / 256 * 256;
}

/* The backend's attention scratch, grown to `bytes`; NULL when the GPU has no room (the caller
 * declines, and the kernel needs none). */
static void *attn_scratch(cu_ctx *c, size_t bytes) {
    if (bytes <= c->attn_scratch_cap) return c->attn_scratch;
    if (cu_capturing) { /* freeing a buffer a recording may hold: give the recording up */
        cu_capture_failed = 1;
        return NULL;
    }
    /* cudaFree waits for the GPU: no queued op (deferred ones too) still uses the old buffer */
    if (c->attn_scratch) cu_check(cudaFree(c->attn_scratch), "cudaFree(attention scratch)");
    c->attn_scratch = NULL;
    c->attn_scratch_cap = 0;
    size_t cap = align256(bytes + bytes / 4);
    if (cudaMalloc(&c->attn_scratch, cap) != cudaSuccess) {
        (void)cudaGetLastError();
        c->attn_scratch = NULL;
        return NULL;
    }
    c->attn_scratch_cap = cap;
    c->buf_gen++;
    return c->attn_scratch;
}

typedef struct plan {
    int64_t n_q, n_kv, vis_off; /* causal: query i sees kv rows j <= vis_off + i */
    int heads, kv_heads, rep, hd, causal, f16;
    int ldq, ldkv; /* n_head hd, kv_stride */
    float scale;
    const void *q;     /* f32 queries, or their f16 copy */
    const void *k, *v; /* device views */
    float *out, *s;    /* out; scores [heads][chunk][ld_s] */
    uint16_t *p16;     /* f16 probabilities (f16 K/V), same layout as s */
    cudaDataType_t ab; /* operand type of both products */
    cublasComputeType_t compute;
} plan;

/* C (f32, column-major, ldc) = alpha op(A) B for each kv head g: A at g hd (K_g or V_g, lda
 * kv_stride), B and C at g sb and g sc. */
static void gemm(cu_ctx *c, const plan *p, cublasOperation_t ta, int m, int n, int kk, float alpha,
                 const void *b, int ldb, long long sb, float *out, int ldc, long long sc, const char *what) {
    const void *a = ta == CUBLAS_OP_T ? p->k : p->v;
    const float zero = 0.0f;
    cu_check_blas(cu_blas()->cublasGemmStridedBatchedEx(
                      c->blas, ta, CUBLAS_OP_N, m, n, kk, &alpha, a, p->ab, p->ldkv, p->hd, b, p->ab, ldb, sb,
                      &zero, out, CUDA_R_32F, ldc, sc, p->kv_heads, p->compute, CUBLAS_GEMM_DEFAULT),
                  what);
}

/* Query rows [i0, i0 + rows): the kv rows any of them sees, scores, softmax, P V. */
static void run_chunk(cu_ctx *c, const plan *p, int64_t i0, int rows) {
    int64_t len = p->n_kv;
    if (p->causal && p->vis_off + i0 + rows < len) len = p->vis_off + i0 + rows;
    float *out = p->out + i0 * p->ldq;
    if (len <= 0) { /* none of these queries sees a row: zeros, as on the CPU */
        cu_check(cudaMemsetAsync(out, 0, sizeof(float) * (size_t)rows * (size_t)p->ldq, c->stream),
                 "attention zeros");
        return;
    }
    const int64_t ld_s = (len + 15) / 16 * 16, head_s = (int64_t)rows * ld_s; /* 64-byte rows */
    const size_t el = p->f16 ? 2 : 4;                                         /* Q and P elements */
    const char *q = (const char *)p->q + el * (size_t)(i0 * p->ldq);
    const char *pm = p->f16 ? (const char *)p->p16 : (const char *)p->s;
    const long long rep = p->rep;
    /* head g rep + r: Q and out columns at (g rep + r) hd, S and P blocks at (g rep + r) head_s */
    for (int r = 0; r < p->rep; r++)
        gemm(c, p, CUBLAS_OP_T, (int)len, rows, p->hd, p->scale, q + el * (size_t)r * p->hd, p->ldq,
             rep * p->hd, p->s + r * head_s, (int)ld_s, rep * head_s, "attention scores");
    cu_check(svlm_cu_attn_softmax(c->stream, p->s, p->p16, ld_s, (int64_t)p->heads * rows, rows, len, i0,
                                  p->vis_off, p->causal),
             "attention softmax");
    for (int r = 0; r < p->rep; r++)
        gemm(c, p, CUBLAS_OP_N, p->hd, rows, (int)len, 1.0f, pm + el * (size_t)(r * head_s), (int)ld_s,
             rep * head_s, out + (size_t)r * p->hd, p->ldq, rep * p->hd, "attention P V");
}

int cu_attention_gemm(svlm_kernels *k, const svlm_attn_args *a, const float *dq, const void *dk,
                      const void *dv, float *dout) {
    if (a->n_q < CU(k)->attn_gemm_min_q || a->n_kv <= 0 || a->head_dim <= 0 || a->n_head <= 0 ||
        a->n_kv_head <= 0 || a->n_head % a->n_kv_head)
        return 0;
    const int64_t ldq = (int64_t)a->n_head * a->head_dim;
    if (a->n_kv > INT_MAX - 16 || a->kv_stride > INT_MAX || ldq > INT_MAX || a->n_q > INT_MAX ||
        a->kv_stride < (int64_t)a->n_kv_head * a->head_dim)
        return 0;
    cu_ctx *c = CU(k);
    plan p = {.n_q = a->n_q,
              .n_kv = a->n_kv,
              .vis_off = a->n_kv - a->n_q,
              .heads = a->n_head,
              .kv_heads = a->n_kv_head,
              .rep = a->n_head / a->n_kv_head,
              .hd = a->head_dim,
              .causal = a->causal,
              .f16 = a->kv_type == SVLM_F16,
              .ldq = (int)ldq,
              .ldkv = (int)a->kv_stride,
              .scale = a->scale,
              .k = dk,
              .v = dv,
              .out = dout};
    /* chunks of equal size whose f32 scores fit S_MAX_BYTES */
    const size_t row_bytes = sizeof(float) * (size_t)a->n_head * (size_t)((a->n_kv + 15) / 16 * 16);
    int64_t most = (int64_t)(S_MAX_BYTES / row_bytes);
    if (most < GEMM_MIN_Q) return 0; /* kv too long for useful chunks */
    const int64_t n_chunks = (a->n_q + most - 1) / most, chunk = (a->n_q + n_chunks - 1) / n_chunks;
    const size_t s_bytes = align256(row_bytes * (size_t)chunk);
    const size_t p_bytes = p.f16 ? align256(s_bytes / 2) : 0;
    const size_t q_bytes = p.f16 ? align256(2 * (size_t)a->n_q * (size_t)ldq) : 0;
    char *base = attn_scratch(c, s_bytes + p_bytes + q_bytes);
    if (!base) return 0;
    p.s = (float *)base;
    if (p.f16) {
        p.p16 = (uint16_t *)(base + s_bytes);
        uint16_t *q16 = (uint16_t *)(base + s_bytes + p_bytes);
        cu_check(svlm_cu_attn_to_f16(c->stream, dq, q16, a->n_q * ldq), "queries to f16");
        p.q = q16;
        p.ab = CUDA_R_16F;
        p.compute = CUBLAS_COMPUTE_32F;
    } else {
        p.q = dq;
        p.ab = CUDA_R_32F;
        p.compute = use_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    }
    for (int64_t i0 = 0; i0 < a->n_q; i0 += chunk)
        run_chunk(c, &p, i0, (int)(a->n_q - i0 < chunk ? a->n_q - i0 : chunk));
    return 1;
}
