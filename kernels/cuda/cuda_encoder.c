/*
 * The vision encoder's fused ops on the GPU (kernels.h: svlm_k_layernorm_matmul_bias,
 * svlm_k_matmul_bias_add, svlm_k_layernorm_gelu_ffn_add). Where the weights multiply in bf16
 * (quantized and BF16 weights, decoded) or f16 (F16 weights, as stored), the activations between
 * ops never exist in f32 only to be converted: the layer norm and the GELU write the next
 * product's operand, and each product adds its bias (and the residual, through beta) as it writes
 * its results (cuBLASLt's epilogue). F16 weights took TF32 on f32 copies of themselves before
 * (SVLM_CUDA_ENCODER_F16=0 still does): f16 operands carry the same 11 significant bits at twice
 * TF32's tensor-core rate and half its operand bytes, and the encoder's operands (normed rows, the
 * GELU's, the attention's output) stay far inside f16's range. Per encoder layer that takes the
 * activation traffic from about 146 KB to about 66 KB per token (SmolVLM2-256M's shape).
 * The numbers are the unfused GPU path's: the same bf16 operands, f32 sums; only the order of the
 * final adds of a residual row (x + (p + b) against (p + x) + b) differs (for F16 weights: f16
 * operands where the unfused path rounds them to TF32, the same precision). Elsewhere (F32
 * weights, decode-sized batches, host buffers) the op sequences run as before.
 */
#include <stdio.h>
#include <stdlib.h>

#include "kernels/cuda/cuda_internal.h"
#include "kernels/cuda/cuda_ops.h"

enum { OPERAND_NONE, OPERAND_BF16, OPERAND_F16 };

/* The operand type of a product the fused forms take: batched (cuBLAS, not the matvec kernels);
 * bf16 for quantized and BF16 weights, f16 for packed F16 ones; NONE: the op sequence. */
static int operand_of(svlm_kernels *k, const svlm_weight *w, int64_t n) {
    if (!(n > CU(k)->matvec_rows && n <= INT32_MAX / 2 && w->rows > 0 && w->rows <= INT32_MAX &&
          w->cols > 0 && w->cols <= INT32_MAX && n * w->cols <= INT32_MAX &&
          svlm_cu_type_supported((int)w->type)))
        return OPERAND_NONE;
    if (w->type == SVLM_F32) return OPERAND_NONE;
    if (w->type == SVLM_F16)
        return CU(k)->encoder_f16 && cu_tf32() && w->row_bytes == 2 * (size_t)w->cols ? OPERAND_F16
                                                                                      : OPERAND_NONE;
    return OPERAND_BF16;
}

/* The rows of x (n x D, f32) as the operand type op, into xh. */
static void to_operand(svlm_kernels *k, int op, const float *x, uint16_t *xh, int64_t count) {
    if (op == OPERAND_F16)
        cu_check(svlm_cu_store_f16(CU(k)->stream, xh, x, count), "activations to f16");
    else
        cu_check(svlm_cu_f32_to_bf16(CU(k)->stream, x, xh, count), "activations to bf16");
}

static void layernorm_to(svlm_kernels *k, int op, const float *x, const float *w, const float *b, uint16_t *y,
                         int64_t n, int64_t D, float eps) {
    if (op == OPERAND_F16)
        cu_check(svlm_cu_layernorm_f16(CU(k)->stream, x, w, b, y, n, D, eps), "layernorm (f16)");
    else
        cu_check(svlm_cu_layernorm_bf16(CU(k)->stream, x, w, b, y, n, D, eps), "layernorm (bf16)");
}

/* W on the device in operand type op (temp: a decode to free after the product, or NULL) */
static const void *operand_weight(svlm_kernels *k, const svlm_weight *w, int op, void **temp) {
    int bf16 = 0;
    *temp = NULL;
    const void *dw = op == OPERAND_F16 ? cu_weight(k, w->data, (size_t)w->rows * w->row_bytes)
                                       : cu_weight_gemm(k, w, &bf16, temp);
    if (op == OPERAND_BF16 && !bf16) { /* operand_of chose these weights for their bf16 decode */
        fprintf(stderr, "svlm: internal error: a %lld x %lld weight has no bf16 decode\n", (long long)w->rows,
                (long long)w->cols);
        abort();
    }
    return dw;
}

static void free_temp(svlm_kernels *k, void *temp) {
    if (temp) {
        cu_check(cudaStreamSynchronize(CU(k)->stream), "GEMM");
        cu_check(cudaFree(temp), "cudaFree");
    }
}

/* y (+)= xh W^T + b on device pointers, queued, xh and W in operand type op: cuBLASLt with the
 * bias in the epilogue, else cuBLAS (beta 1 for the residual) and a bias pass. */
static void product_bias(svlm_kernels *k, const svlm_weight *w, int op, const uint16_t *xh, int64_t n,
                         float *y, const float *b, int acc) {
    cu_ctx *c = CU(k);
    void *temp;
    const void *dw = operand_weight(k, w, op, &temp);
    const float *db = b ? cu_weight(k, b, sizeof(float) * (size_t)w->rows) : NULL;
    const int m = (int)w->rows, kk = (int)w->cols;
    const int f16 = op == OPERAND_F16;
    /* a refused recording (cu_weight then hands back the host copy; cu_weight_gemm NULL): nothing
     * of it runs, the caller issues the ops again */
    const int refused = !dw || (cu_capturing && cu_capture_failed);
    if (!refused && !cu_lt_gemm_bias(k, m, (int)n, kk, dw, xh, f16, y, db, acc)) {
        const float one = 1.0f, beta = acc ? 1.0f : 0.0f;
        const cudaDataType_t t = f16 ? CUDA_R_16F : CUDA_R_16BF;
        cu_check_blas(cu_blas()->cublasGemmEx(c->blas, CUBLAS_OP_T, CUBLAS_OP_N, m, (int)n, kk, &one, dw, t,
                                              kk, xh, t, kk, &beta, y, CUDA_R_32F, m, CUBLAS_COMPUTE_32F,
                                              CUBLAS_GEMM_DEFAULT),
                      f16 ? "f16 GEMM" : "bf16 GEMM");
        if (db) cu_check(svlm_cu_add_bias(c->stream, y, db, n, w->rows), "add_bias");
    }
    free_temp(k, temp);
}

/* y16 = GELU(xh W^T + b) in operand type op through cuBLASLt's GELU epilogue: 1 when queued (or a
 * recording gave up), 0 when declined. b16: room for b in that type (the epilogue's bias takes the
 * results' type). Its GELU is the tanh form of the f16-table one the other path computes, without
 * that one's f16 roundings before the operand's own rounding, and its bias is rounded to the
 * operand type (test_cuda_data bounds the difference). */
static int up_gelu(svlm_kernels *k, const svlm_weight *w, int op, const uint16_t *xh, int64_t n,
                   uint16_t *y16, const float *b, uint16_t *b16) {
    if (CU(k)->lt_gelu == CU_SWITCH_OFF) return 0;
    void *temp;
    const void *dw = operand_weight(k, w, op, &temp);
    const float *db = b ? cu_weight(k, b, sizeof(float) * (size_t)w->rows) : NULL;
    int done = 1; /* a refused recording: nothing runs, the caller issues the ops again */
    if (dw && !(cu_capturing && cu_capture_failed)) {
        if (db) to_operand(k, op, db, b16, w->rows); /* the epilogue's bias in the results' type */
        done = cu_lt_gemm_bias_gelu(k, (int)w->rows, (int)n, (int)w->cols, dw, xh, op == OPERAND_F16, y16,
                                    db ? b16 : NULL);
    }
    free_temp(k, temp);
    return done;
}

static const float *param(svlm_kernels *k, const float *p, int64_t n) {
    return p ? cu_weight(k, p, sizeof(float) * (size_t)n) : NULL;
}

void cu_layernorm_matmul_bias(svlm_kernels *k, const float *x, const float *ln_w, const float *ln_b,
                              float eps, float *h, const svlm_weight *const *ws, const float *const *bs,
                              int n_w, int64_t n, float *const *ys) {
    const int op = n_w > 0 ? operand_of(k, ws[0], n) : OPERAND_NONE;
    int ok = op != OPERAND_NONE && cu_ranges_contain(x);
    for (int i = 0; ok && i < n_w; i++)
        ok = operand_of(k, ws[i], n) == op && ws[i]->cols == ws[0]->cols && cu_ranges_contain(ys[i]);
    if (!ok) {
        svlm_k_seq_layernorm_matmul_bias(k, x, ln_w, ln_b, eps, h, ws, bs, n_w, n, ys);
        return;
    }
    cu_begin(k);
    const int64_t D = ws[0]->cols;
    uint16_t *xh = cu_scratch(k, sizeof(uint16_t) * (size_t)(n * D));
    if (xh) { /* (NULL: a recording gave up) */
        layernorm_to(k, op, x, param(k, ln_w, D), param(k, ln_b, D), xh, n, D, eps);
        for (int i = 0; i < n_w; i++)
            product_bias(k, ws[i], op, xh, n, ys[i], bs[i], 0);
    }
    cu_done(k, op == OPERAND_F16 ? "layernorm + matmul + bias (f16)" : "layernorm + matmul + bias (bf16)");
}

void cu_matmul_bias_add(svlm_kernels *k, const svlm_weight *w, const float *b, const float *x, int64_t n,
                        float *y, float *tmp) {
    const int op = operand_of(k, w, n);
    if (op == OPERAND_NONE || !cu_ranges_contain(x) || !cu_ranges_contain(y)) {
        svlm_k_seq_matmul_bias_add(k, w, b, x, n, y, tmp);
        return;
    }
    cu_begin(k);
    uint16_t *xh = cu_scratch(k, sizeof(uint16_t) * (size_t)(n * w->cols));
    if (xh) {
        to_operand(k, op, x, xh, n * w->cols);
        product_bias(k, w, op, xh, n, y, b, 1);
    }
    cu_done(k, op == OPERAND_F16 ? "matmul + bias + residual (f16)" : "matmul + bias + residual (bf16)");
}

void cu_layernorm_gelu_ffn_add(svlm_kernels *k, float *x, const float *ln_w, const float *ln_b, float eps,
                               const svlm_weight *w1, const float *b1, const svlm_weight *w2, const float *b2,
                               int64_t n, float *h, float *ff, float *tmp) {
    const int op = operand_of(k, w1, n);
    if (op == OPERAND_NONE || operand_of(k, w2, n) != op || w2->cols != w1->rows || w2->rows != w1->cols ||
        n * w1->rows > INT32_MAX || !cu_ranges_contain(x) || !cu_ranges_contain(ff)) {
        svlm_k_seq_layernorm_gelu_ffn_add(k, x, ln_w, ln_b, eps, w1, b1, w2, b2, n, h, ff, tmp);
        return;
    }
    cu_begin(k);
    const int64_t D = w1->cols, F = w1->rows;
    /* one operand buffer: the normed rows, then (the up product has read them: same stream) the GELU's;
     * after it (256-byte aligned) the up product's bias in the operand type, for its GELU epilogue */
    const size_t sh_elts = ((size_t)(n * (F > D ? F : D)) + 127) / 128 * 128;
    uint16_t *sh = cu_scratch(k, sizeof(uint16_t) * (sh_elts + (size_t)F));
    if (sh) {
        layernorm_to(k, op, x, param(k, ln_w, D), param(k, ln_b, D), sh, n, D, eps);
        /* the up product writes its GELU as the down product's operand (into ff's first half) */
        uint16_t *g16 = (uint16_t *)ff;
        if (up_gelu(k, w1, op, sh, n, g16, b1, sh + sh_elts)) {
            product_bias(k, w2, op, g16, n, x, b2, 1);
        } else {
            product_bias(k, w1, op, sh, n, ff, b1, 0);
            if (op == OPERAND_F16)
                cu_check(svlm_cu_gelu_f16_to_f16(CU(k)->stream, ff, sh, n * F), "GELU (f16)");
            else
                cu_check(svlm_cu_gelu_f16_to_bf16(CU(k)->stream, ff, sh, n * F), "GELU (bf16)");
            product_bias(k, w2, op, sh, n, x, b2, 1);
        }
    }
    cu_done(k, op == OPERAND_F16 ? "layernorm + GELU feed-forward + residual (f16)"
                                 : "layernorm + GELU feed-forward + residual (bf16)");
}

/* The convolution through cuDNN when it takes it, else im2col + GEMM. F16 weights only: their f32
 * decode and the pixels rounded through f16 (into the patches' scratch, which is as large) are
 * exact in TF32, as in the GEMM (TF32 for F16 weights); an F32 weight's GEMM is full f32. */
void cu_patch_embed(svlm_kernels *k, const svlm_weight *w, const float *pixels, int b, int S, int p,
                    float *patches, float *y) {
    const int64_t g = S / p, n = (int64_t)b * g * g;
    const int ok = w->type == SVLM_F16 && w->cols == (int64_t)3 * p * p && w->rows <= INT32_MAX &&
                   S % p == 0 && n * w->rows <= INT32_MAX && cu_ranges_contain(patches) &&
                   cu_ranges_contain(y);
    if (ok) {
        cu_begin(k);
        const size_t px = sizeof(float) * (size_t)b * 3 * (size_t)S * (size_t)S;
        int bf16 = 0;
        void *temp = NULL;
        const float *dw = cu_weight_gemm(k, w, &bf16, &temp);
        int done = 0;
        if (dw && !bf16) { /* (NULL: a recording gave up) */
            /* one copy from wherever the pixels are (the engine's are page-locked: a DMA) */
            if (cu_capturing && !cu_ranges_contain(pixels)) cu_capture_failed = 1; /* (host memory) */
            cu_check(cudaMemcpyAsync(patches, pixels, px, cudaMemcpyDefault, CU(k)->stream), "pixels");
            cu_check(svlm_cu_round_f16(CU(k)->stream, patches, (int64_t)(px / sizeof(float))),
                     "pixels through f16");
            done = cu_dnn_patch_embed(k, dw, (int)w->rows, patches, b, S, p, y);
        }
        if (temp) {
            cu_check(cudaStreamSynchronize(CU(k)->stream), "patch embedding");
            cu_check(cudaFree(temp), "cudaFree");
        }
        cu_done(k, done ? "patch embedding (cuDNN)" : "patch embedding (declined)");
        if (done) return;
    }
    svlm_k_seq_patch_embed(k, w, pixels, b, S, p, patches, y);
}
