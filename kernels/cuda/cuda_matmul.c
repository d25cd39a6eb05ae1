/*
 * Matrix products on the GPU. Up to matvec_rows activation rows (decode steps, small
 * batches): the quantized weight is read as stored and decoded inside the kernel, the bound
 * being memory bandwidth. More rows (prefill, the vision encoder): cuBLAS on tensor cores, bf16
 * for quantized and BF16 weights (activations rounded to bf16 as the CPU backend's bf16 GEMM
 * does), TF32 for F16 weights (SVLM_CUDA_TF32=0: f32), and full f32 for F32 weights.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_internal.h"
#include "kernels/cuda/cuda_ops.h"

static void check_weight(const svlm_weight *w) {
    if (!svlm_cu_type_supported((int)w->type) || w->rows > INT32_MAX || w->cols > INT32_MAX) {
        /* loaders reject other types up front (kernels.h), so reaching here is a bug */
        fprintf(stderr,
                "svlm: internal error: the CUDA backend has no product for a %s weight of %lld x %lld\n",
                svlm_dtype_get((int)w->type) ? svlm_dtype_get((int)w->type)->name : "?", (long long)w->rows,
                (long long)w->cols);
        abort();
    }
}

/* F16 weights multiply on TF32 tensor cores (10-bit mantissas: the weights' own precision);
 * SVLM_CUDA_TF32=0 asks for full f32 products instead, for comparisons. */
int cu_tf32(void) {
    const char *e = getenv("SVLM_CUDA_TF32");
    return !(e && !strcmp(e, "0"));
}

/* Whether cuBLAS multiplies w in bf16 (cu_weight_gemm's choice): activations go to bf16 first. */
static int gemm_in_bf16(const svlm_weight *w) {
    return w->type != SVLM_F32 && w->type != SVLM_F16;
}

/* y = x W^T (acc: y += x W^T) on device pointers (no staging, no wait). xh: x already in bf16
 * (products of several weights share one conversion), or NULL. */
static void product(svlm_kernels *k, const svlm_weight *w, const float *dx, int64_t n, float *dy,
                    const uint16_t *xh_given, int acc) {
    cu_ctx *c = CU(k);
    if (n <= c->matvec_rows) {
        const void *dw = cu_weight(k, w->data, (size_t)w->rows * w->row_bytes);
        cu_check(svlm_cu_matvec(c->stream, (int)w->type, dw, w->row_bytes, w->rows, w->cols, dx, n, dy, acc,
                                c->pdl),
                 "matvec");
        return;
    }
    int bf16;
    void *temp;
    const void *dw = cu_weight_gemm(k, w, &bf16, &temp);
    /* beta 1: cuBLAS adds y in f32 after the product, one rounding, as svlm_cu_add would */
    const float one = 1.0f, zero = acc ? 1.0f : 0.0f;
    const int m = (int)w->rows, kk = (int)w->cols;
    /* row-major y[n][rows] = x[n][cols] W[rows][cols]^T is, column-major, y^T = W^T' x^T with W
     * read as a cols x rows matrix (lda = cols) and transposed */
    for (int64_t i0 = 0; i0 < n; i0 += INT32_MAX / 2) {
        const int nb = (int)(n - i0 < INT32_MAX / 2 ? n - i0 : INT32_MAX / 2);
        const float *xb = dx + i0 * w->cols;
        float *yb = dy + i0 * w->rows;
        if (bf16) {
            const uint16_t *xh = xh_given ? xh_given + i0 * w->cols : NULL;
            if (!xh) {
                uint16_t *t = cu_scratch(k, sizeof(uint16_t) * (size_t)nb * (size_t)kk);
                cu_check(svlm_cu_f32_to_bf16(c->stream, xb, t, (int64_t)nb * kk), "activations to bf16");
                xh = t;
            }
            cu_check_blas(cu_blas()->cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, m, nb, kk, &one, dw,
                                                  CUDA_R_16BF, kk, xh, CUDA_R_16BF, kk, &zero, yb, CUDA_R_32F,
                                                  m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                          "bf16 GEMM");
        } else {
            cublasComputeType_t ct =
                w->type == SVLM_F32 || !cu_tf32() ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_FAST_TF32;
            cu_check_blas(cu_blas()->cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, m, nb, kk, &one, dw,
                                                  CUDA_R_32F, kk, xb, CUDA_R_32F, kk, &zero, yb, CUDA_R_32F,
                                                  m, ct, CUBLAS_GEMM_DEFAULT),
                          "f32 GEMM");
        }
    }
    if (temp) {
        cu_check(cudaStreamSynchronize(c->stream), "GEMM");
        cu_check(cudaFree(temp), "cudaFree");
    }
}

/* y = x W^T, or (acc) y += x W^T: staging, the product, the wait. */
static void matmul_op(svlm_kernels *k, const svlm_weight *w, const float *x, int64_t n, float *y, int acc) {
    if (n <= 0 || w->rows <= 0) return;
    check_weight(w);
    cu_begin(k);
    const float *dx = cu_in(k, 0, x, sizeof(float) * (size_t)(n * w->cols));
    float *dy = cu_out(k, 1, y, sizeof(float) * (size_t)(n * w->rows), acc);
    product(k, w, dx, n, dy, NULL, acc);
    const int mv = n <= CU(k)->matvec_rows;
    cu_done(k, acc ? (mv ? "matmul_add (matvec)" : "matmul_add (cuBLAS)")
                   : (mv ? "matmul (matvec)" : "matmul (cuBLAS)"));
}

void cu_matmul(svlm_kernels *k, const svlm_weight *w, const float *x, int64_t n, float *y) {
    matmul_op(k, w, x, n, y, 0);
}

void cu_matmul_add(svlm_kernels *k, const svlm_weight *w, const float *x, int64_t n, float *y) {
    matmul_op(k, w, x, n, y, 1);
}

/* Decode-sized products of weights alike (type, width, row size) into device-accessible outputs:
 * one launch for all of them. Returns 0 when they do not qualify. */
static int matvec_together(svlm_kernels *k, const svlm_weight *const *ws, int n_w, const float *dx, int64_t n,
                           float *const *ys, const float *norm_w, float eps) {
    if (n > CU(k)->matvec_rows || n_w < 1 || n_w > SVLM_CU_MULTI_MAX || (!norm_w && n_w < 2)) return 0;
    if (norm_w && !svlm_cu_norm_fits(ws[0]->cols, n)) return 0;
    svlm_cu_matvec_set set = {.row_bytes = ws[0]->row_bytes, .n = n_w};
    for (int i = 0; i < n_w; i++) {
        const svlm_weight *w = ws[i];
        if (w->type != ws[0]->type || w->cols != ws[0]->cols || w->row_bytes != ws[0]->row_bytes ||
            w->rows <= 0 || !cu_ranges_contain(ys[i]))
            return 0;
    }
    for (int i = 0; i < n_w; i++) {
        check_weight(ws[i]);
        set.w[i] = cu_weight(k, ws[i]->data, (size_t)ws[i]->rows * ws[i]->row_bytes);
        set.y[i] = ys[i];
        set.rows[i] = ws[i]->rows;
    }
    const float *dn = norm_w ? cu_weight(k, norm_w, sizeof(float) * (size_t)ws[0]->cols) : NULL;
    cu_check(
        svlm_cu_matvec_multi(CU(k)->stream, (int)ws[0]->type, &set, ws[0]->cols, dx, n, dn, eps, CU(k)->pdl),
        "matvec (several)");
    return 1;
}

void cu_matmul_multi(svlm_kernels *k, const svlm_weight *const *ws, int n_w, const float *x, int64_t n,
                     float *const *ys) {
    if (n <= 0 || n_w <= 0) return;
    cu_begin(k);
    const float *dx = cu_in(k, 0, x, sizeof(float) * (size_t)(n * ws[0]->cols));
    if (matvec_together(k, ws, n_w, dx, n, ys, NULL, 0.0f)) {
        cu_done(k, "matmul_multi (one matvec launch)");
        return;
    }
    /* batched products of bf16 weights (q/k/v of the vision encoder) share one conversion of x */
    const uint16_t *xh = NULL;
    int all_bf16 = n > CU(k)->matvec_rows && n_w > 1;
    for (int i = 0; i < n_w && all_bf16; i++)
        all_bf16 = gemm_in_bf16(ws[i]) && ws[i]->cols == ws[0]->cols;
    if (all_bf16) {
        uint16_t *t = cu_scratch(k, sizeof(uint16_t) * (size_t)n * (size_t)ws[0]->cols);
        cu_check(svlm_cu_f32_to_bf16(CU(k)->stream, dx, t, n * ws[0]->cols), "activations to bf16");
        xh = t;
    }
    /* outputs staged in turn: one wait per group of CU_MAX_WRITEBACKS products */
    for (int i = 0; i < n_w; i++) {
        if (ws[i]->rows <= 0) continue;
        check_weight(ws[i]);
        if (CU(k)->n_wb == CU_MAX_WRITEBACKS) cu_done(k, "matmul");
        float *dy = cu_out(k, 1 + CU(k)->n_wb, ys[i], sizeof(float) * (size_t)(n * ws[i]->rows), 0);
        product(k, ws[i], dx, n, dy, xh, 0);
    }
    cu_done(k, n <= CU(k)->matvec_rows ? "matmul_multi (matvec)" : "matmul_multi (cuBLAS)");
}

/* Whether x of n rows and dim is an svlm_k_alloc buffer and the weights alike (type, width, row
 * size) with device-accessible outputs: what the fused decode products need. */
static int fusable(svlm_kernels *k, const float *x, const svlm_weight *const *ws, int n_w, int64_t n,
                   float *const *ys) {
    if (n > CU(k)->matvec_rows || !cu_ranges_contain(x) || !svlm_cu_norm_fits(ws[0]->cols, n)) return 0;
    for (int i = 0; i < n_w; i++)
        if (ws[i]->type != ws[0]->type || ws[i]->cols != ws[0]->cols ||
            ws[i]->row_bytes != ws[0]->row_bytes || ws[i]->rows <= 0 || !cu_ranges_contain(ys[i]))
            return 0;
    return 1;
}

void cu_rmsnorm_matmul_multi(svlm_kernels *k, const float *x, const float *norm_w, float eps, float *h,
                             const svlm_weight *const *ws, int n_w, int64_t n, float *const *ys) {
    if (n <= 0 || n_w <= 0) return;
    if (n_w <= SVLM_CU_MULTI_MAX && fusable(k, x, ws, n_w, n, ys)) {
        cu_begin(k);
        if (matvec_together(k, ws, n_w, x, n, ys, norm_w, eps)) {
            cu_done(k, "rmsnorm + matmul_multi (one launch)");
            return;
        }
        cu_done(k, "rmsnorm + matmul_multi (declined)");
    }
    k->ops->rmsnorm(k, x, norm_w, h, n, ws[0]->cols, eps);
    k->ops->matmul_multi(k, ws, n_w, h, n, ys);
}

/* Whether the decode step's q/k/v, RoPE and stores can go as one kernel (svlm_cu_matvec_qkv_rope):
 * RoPE's normal form, even head and rotated dims, the weights' rows whole heads, every table the
 * kernel reads device-accessible. */
static int qkv_rope_fits(svlm_kernels *k, const float *x, const svlm_weight *const *ws, int64_t n,
                         float *const *ys, const svlm_rope_store_args *r) {
    const int hd = r->head_dim;
    return CU(k)->qkv_rope && !r->neox && hd > 0 && hd % 2 == 0 && r->n_rot >= 0 && r->n_rot % 2 == 0 &&
           r->n_rot <= hd && (r->kv_type == SVLM_F32 || r->kv_type == SVLM_F16) &&
           ws[0]->rows == (int64_t)r->n_head * hd && ws[1]->rows == (int64_t)r->n_kv_head * hd &&
           ws[2]->rows == ws[1]->rows && fusable(k, x, ws, 3, n, ys) && cu_ranges_contain(r->pos) &&
           cu_ranges_contain(r->dsts) && (!r->keep || cu_ranges_contain(r->keep));
}

void cu_rmsnorm_qkv_rope_store(svlm_kernels *k, const float *x, const float *norm_w, float eps, float *h,
                               const svlm_weight *const *ws, int64_t n, float *q, float *kx, float *vx,
                               const svlm_rope_store_args *r) {
    float *ys[3] = {q, kx, vx};
    if (qkv_rope_fits(k, x, ws, n, ys, r)) {
        cu_begin(k);
        svlm_cu_matvec_set set = {.row_bytes = ws[0]->row_bytes, .n = 3};
        for (int i = 0; i < 3; i++) {
            check_weight(ws[i]);
            set.w[i] = cu_weight(k, ws[i]->data, (size_t)ws[i]->rows * ws[i]->row_bytes);
            set.y[i] = ys[i];
            set.rows[i] = ws[i]->rows;
        }
        /* the same float theta_scale as svlm_k_rope and cu_rope_store */
        const svlm_cu_rope_pairs rp = {.pos = r->pos,
                                       .dsts = r->dsts,
                                       .keep = r->keep,
                                       .theta_scale =
                                           r->n_rot > 0 ? powf(r->base, -2.0f / (float)r->n_rot) : 1.0f,
                                       .head_dim = r->head_dim,
                                       .n_rot = r->n_rot,
                                       .f16_cache = r->kv_type == SVLM_F16,
                                       .round = r->round};
        const float *dn = cu_weight(k, norm_w, sizeof(float) * (size_t)ws[0]->cols);
        cu_check(svlm_cu_matvec_qkv_rope(CU(k)->stream, (int)ws[0]->type, &set, ws[0]->cols, x, n, dn, eps,
                                         &rp, CU(k)->pdl),
                 "rmsnorm + q/k/v + RoPE + stores");
        cu_done(k, "rmsnorm + q/k/v + rope_store (one launch)");
        return;
    }
    cu_rmsnorm_matmul_multi(k, x, norm_w, eps, h, ws, 3, n, ys);
    k->ops->rope_store(k, q, kx, vx, n, r->n_head, r->n_kv_head, r->head_dim, r->n_rot, r->pos, r->base,
                       r->neox, r->dsts, r->kv_type, r->keep, r->round);
}

void cu_rmsnorm_swiglu(svlm_kernels *k, const float *x, const float *norm_w, float eps, float *h,
                       const svlm_weight *wg, const svlm_weight *wu, int64_t n, float *gate, float *up) {
    if (n <= 0) return;
    const svlm_weight *ws[2] = {wg, wu};
    float *ys[2] = {gate, up};
    if (wg->rows == wu->rows && fusable(k, x, ws, 2, n, ys)) {
        check_weight(wg);
        check_weight(wu);
        cu_begin(k);
        const size_t bytes = (size_t)wg->rows * wg->row_bytes;
        const void *dg = cu_weight(k, wg->data, bytes), *du = cu_weight(k, wu->data, bytes);
        const float *dn = cu_weight(k, norm_w, sizeof(float) * (size_t)wg->cols);
        cu_check(svlm_cu_matvec_swiglu(CU(k)->stream, (int)wg->type, dg, du, wg->row_bytes, wg->rows,
                                       wg->cols, x, n, dn, eps, gate, CU(k)->pdl),
                 "rmsnorm + gate/up + SwiGLU");
        cu_done(k, "rmsnorm + swiglu (one launch)");
        return;
    }
    k->ops->rmsnorm(k, x, norm_w, h, n, wg->cols, eps);
    k->ops->matmul_multi(k, ws, 2, h, n, ys);
    k->ops->silu_mul(k, gate, up, n * wg->rows);
}
