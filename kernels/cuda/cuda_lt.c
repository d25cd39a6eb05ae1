/*
 * Batched bf16 (and f16) products through cuBLASLt, for the epilogues cuBLAS's GemmEx lacks: the bias added
 * (and, through beta, the residual) as the product's results are written, not in passes of their
 * own over the activations. Descriptors and the chosen algorithm are kept per shape and operand
 * alignment: the encoder repeats a few shapes, and a heuristic query costs more host time than
 * launching. SVLM_CUDA_LT=0 turns it off; a failure does too, once, with a message, and the
 * callers go back to cuBLAS and separate passes (a shape without an algorithm goes back alone).
 * SVLM_CUDA_LT=1 requires it: a product it would decline ends the program (the tests' check that
 * the epilogues really ran).
 */
#include <cublasLt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_internal.h"

enum { LT_SHAPES = 16 };
#define LT_WORKSPACE ((size_t)32 << 20)

typedef struct lt_shape {
    int m, n, kk, bias, align, f16, gelu, used; /* gelu: GELU_BIAS epilogue, 16-bit results */
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
    int ok; /* a heuristic found an algorithm */
    uint64_t last_use;
} lt_shape;

struct cu_lt {
    cublasLtHandle_t h;
    void *ws;
    int off, required;
    int gelu_told; /* the message that a GELU epilogue was declined is given once */
    uint64_t clock;
    lt_shape s[LT_SHAPES];
};

static void lt_off(cu_lt *L, const char *why, int status) {
    if (!L->off)
        fprintf(stderr, "svlm: CUDA: cuBLASLt %s (status %d): products add their biases in separate passes\n",
                why, status);
    L->off = 1;
}

static cu_lt *lt_get(svlm_kernels *k) {
    cu_ctx *c = CU(k);
    if (c->lt) return c->lt->off ? NULL : c->lt;
    if (cu_capturing) return NULL; /* creating allocates */
    cu_lt *L = calloc(1, sizeof *L);
    if (!L) return NULL;
    c->lt = L;
    if (c->lt_mode == CU_SWITCH_OFF) {
        L->off = 1; /* asked: no message */
        return NULL;
    }
    L->required = c->lt_mode == CU_SWITCH_REQUIRED;
    cublasStatus_t st = cu_blas()->cublasLtCreate(&L->h);
    if (st != CUBLAS_STATUS_SUCCESS) {
        L->h = NULL;
        lt_off(L, "cannot start", (int)st);
        return NULL;
    }
    if (cudaMalloc(&L->ws, LT_WORKSPACE) != cudaSuccess) {
        (void)cudaGetLastError();
        L->ws = NULL;
        lt_off(L, "has no workspace", 0);
        return NULL;
    }
    return L;
}

static void shape_free(lt_shape *s) {
    if (s->desc) cu_blas()->cublasLtMatmulDescDestroy(s->desc);
    if (s->a) cu_blas()->cublasLtMatrixLayoutDestroy(s->a);
    if (s->b) cu_blas()->cublasLtMatrixLayoutDestroy(s->b);
    if (s->c) cu_blas()->cublasLtMatrixLayoutDestroy(s->c);
    memset(s, 0, sizeof *s);
}

/* y[n][m] = x[n][kk] W[m][kk]^T is, column-major, Y (m x n) = W^T X with W read as kk x m (ld kk)
 * and transposed, X as kk x n: the layout cu_matmul gives cuBLAS. */
static int shape_make(cu_lt *L, lt_shape *s, int m, int n, int kk, const float *bias, uint32_t align, int f16,
                      int gelu) {
    s->m = m;
    s->f16 = f16;
    s->gelu = gelu;
    s->n = n;
    s->kk = kk;
    s->bias = bias != NULL;
    s->align = (int)align;
    s->used = 1;
    const cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
    const cublasLtEpilogue_t epi = gelu   ? (bias ? CUBLASLT_EPILOGUE_GELU_BIAS : CUBLASLT_EPILOGUE_GELU)
                                   : bias ? CUBLASLT_EPILOGUE_BIAS
                                          : CUBLASLT_EPILOGUE_DEFAULT;
    const int32_t bias_type = CUDA_R_32F;
    cublasStatus_t st = cu_blas()->cublasLtMatmulDescCreate(&s->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
    if (!st)
        st = cu_blas()->cublasLtMatmulDescSetAttribute(s->desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_t,
                                                       sizeof op_t);
    if (!st)
        st = cu_blas()->cublasLtMatmulDescSetAttribute(s->desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_n,
                                                       sizeof op_n);
    if (!st)
        st = cu_blas()->cublasLtMatmulDescSetAttribute(s->desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi,
                                                       sizeof epi);
    if (!st && bias) {
        st = cu_blas()->cublasLtMatmulDescSetAttribute(s->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                       sizeof bias);
        /* f32 biases beside f32 results; a GELU epilogue's 16-bit results take a bias of their own
         * type (the default: cuBLASLt declined f32 ones beside bf16 results on an H100) */
        if (!st && !gelu)
            st = cu_blas()->cublasLtMatmulDescSetAttribute(s->desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                                                           &bias_type, sizeof bias_type);
    }
    const cudaDataType_t op_type = f16 ? CUDA_R_16F : CUDA_R_16BF;
    if (!st) st = cu_blas()->cublasLtMatrixLayoutCreate(&s->a, op_type, (uint64_t)kk, (uint64_t)m, kk);
    if (!st) st = cu_blas()->cublasLtMatrixLayoutCreate(&s->b, op_type, (uint64_t)kk, (uint64_t)n, kk);
    if (!st)
        st = cu_blas()->cublasLtMatrixLayoutCreate(&s->c, gelu ? op_type : CUDA_R_32F, (uint64_t)m,
                                                   (uint64_t)n, m);
    cublasLtMatmulPreference_t pref = NULL;
    if (!st) st = cu_blas()->cublasLtMatmulPreferenceCreate(&pref);
    const uint64_t ws = LT_WORKSPACE;
    if (!st)
        st = cu_blas()->cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                             &ws, sizeof ws);
    /* the algorithm must take operands aligned as this shape's are (the default asks for 256 bytes) */
    const cublasLtMatmulPreferenceAttributes_t aligns[] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    for (size_t i = 0; !st && i < sizeof aligns / sizeof aligns[0]; i++)
        st = cu_blas()->cublasLtMatmulPreferenceSetAttribute(pref, aligns[i], &align, sizeof align);
    cublasLtMatmulHeuristicResult_t res;
    int found = 0;
    if (!st) {
        st = cu_blas()->cublasLtMatmulAlgoGetHeuristic(L->h, s->desc, s->a, s->b, s->c, s->c, pref, 1, &res,
                                                       &found);
        if (st == CUBLAS_STATUS_NOT_SUPPORTED) { /* no algorithm for this shape: cuBLAS takes it alone */
            st = CUBLAS_STATUS_SUCCESS;
            found = 0;
        }
    }
    if (pref) cu_blas()->cublasLtMatmulPreferenceDestroy(pref);
    if (st) return (int)st;
    s->ok = found > 0 && res.state == CUBLAS_STATUS_SUCCESS;
    if (s->ok) s->algo = res.algo;
    return 0;
}

static lt_shape *shape_for(cu_lt *L, int m, int n, int kk, const void *bias, uint32_t align, int f16,
                           int gelu) {
    lt_shape *slot = &L->s[0];
    for (int i = 0; i < LT_SHAPES; i++) {
        lt_shape *s = &L->s[i];
        if (s->used && s->m == m && s->n == n && s->kk == kk && s->bias == (bias != NULL) &&
            s->align == (int)align && s->f16 == f16 && s->gelu == gelu) {
            s->last_use = ++L->clock;
            return s->ok ? s : NULL;
        }
        if (!s->used || (slot->used && s->last_use < slot->last_use)) slot = s;
    }
    shape_free(slot);
    int st = shape_make(L, slot, m, n, kk, bias, align, f16, gelu);
    slot->last_use = ++L->clock;
    if (st && gelu) { /* an epilogue this cuBLASLt lacks: this shape only goes without it */
        shape_free(slot);
        slot->m = m, slot->n = n, slot->kk = kk, slot->bias = bias != NULL, slot->align = (int)align;
        slot->f16 = f16, slot->gelu = 1, slot->used = 1, slot->ok = 0;
        slot->last_use = L->clock;
        return NULL;
    }
    if (st) {
        shape_free(slot);
        lt_off(L, "refused a product's description", st);
        return NULL;
    }
    return slot->ok ? slot : NULL; /* no algorithm for this shape: cuBLAS takes it */
}

/* The largest power of two up to 256 dividing every operand's address. */
static uint32_t operand_alignment(const void *w16, const uint16_t *x16, const void *y, const void *bias) {
    const uintptr_t all = (uintptr_t)w16 | (uintptr_t)x16 | (uintptr_t)y | (uintptr_t)bias | 256;
    return (uint32_t)(all & (~all + 1)); /* lowest set bit */
}

static int declined(cu_lt *L, const char *why) {
    if (L && L->required) {
        fprintf(stderr,
                "svlm: internal error: SVLM_CUDA_LT=1 requires cuBLASLt, which declined a product: %s\n",
                why);
        abort();
    }
    return 0;
}

/* s's bias pointer set, then y (+)= W^T x queued on the backend's stream: the first failing
 * status, 0 when queued. A failure inside a recording gives the recording up (*gave_up: the
 * caller's ops are issued again) instead. */
static cublasStatus_t lt_matmul(svlm_kernels *k, cu_lt *L, lt_shape *s, const void *bias, const void *w16,
                                const uint16_t *x16, float beta, void *y, int *gave_up) {
    cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
    if (bias)
        st = cu_blas()->cublasLtMatmulDescSetAttribute(s->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias,
                                                       sizeof bias);
    const float one = 1.0f;
    if (!st)
        st = cu_blas()->cublasLtMatmul(L->h, s->desc, &one, w16, s->a, x16, s->b, &beta, y, s->c, y, s->c,
                                       &s->algo, L->ws, LT_WORKSPACE, CU(k)->stream);
    if (st && cu_capturing) {
        cu_capture_failed = 1;
        *gave_up = 1;
        return st;
    }
    if (st) (void)cudaGetLastError(); /* a launch error it left must not stop the next op */
    return st;
}

int cu_lt_gemm_bias(svlm_kernels *k, int m, int n, int kk, const void *w16, const uint16_t *x16, int f16,
                    float *y, const float *bias, int acc) {
    if (m <= 0 || n <= 0 || kk <= 0) return 0;
    const uint32_t align = operand_alignment(w16, x16, y, bias);
    cu_lt *L = lt_get(k);
    if (!L) return declined(CU(k)->lt, "it is off or could not start");
    if (align < 16) return declined(L, "an operand is not 16-byte aligned");
    lt_shape *s = shape_for(L, m, n, kk, bias, align, f16 != 0, 0);
    if (!s) return declined(L, "no algorithm for the shape");
    int gave_up = 0;
    const cublasStatus_t st = lt_matmul(k, L, s, bias, w16, x16, acc ? 1.0f : 0.0f, y, &gave_up);
    if (gave_up) return 1;
    if (st) {
        lt_off(L, "failed a product", (int)st);
        return declined(L, "a product failed");
    }
    return 1;
}

static int gelu_declined(const char *why) {
    fprintf(stderr, "svlm: internal error: SVLM_CUDA_LT_GELU=1 requires cuBLASLt's GELU epilogue: %s\n", why);
    abort();
}

int cu_lt_gemm_bias_gelu(svlm_kernels *k, int m, int n, int kk, const void *w16, const uint16_t *x16, int f16,
                         uint16_t *y16, const uint16_t *bias16) {
    const void *bias = bias16;
    const int required = CU(k)->lt_gelu == CU_SWITCH_REQUIRED;
    if (m <= 0 || n <= 0 || kk <= 0 || CU(k)->lt_gelu == CU_SWITCH_OFF) return 0;
    cu_lt *L = lt_get(k);
    if (!L) return required ? gelu_declined("cuBLASLt is off or could not start") : 0;
    const uint32_t align = operand_alignment(w16, x16, y16, bias);
    lt_shape *s = align >= 16 ? shape_for(L, m, n, kk, bias, align, f16 != 0, 1) : NULL;
    if (!s) {
        if (required) return gelu_declined("no GELU epilogue for the shape or its alignment");
        if (!L->gelu_told && !L->off)
            fprintf(stderr,
                    "svlm: CUDA: cuBLASLt has no GELU epilogue for a %d x %d x %d product: the GELU "
                    "runs as a pass of its own\n",
                    m, n, kk);
        L->gelu_told = 1;
        return 0;
    }
    int gave_up = 0;
    const cublasStatus_t st = lt_matmul(k, L, s, bias, w16, x16, 0.0f, y16, &gave_up);
    if (gave_up) return 1;
    if (st) {
        if (required) return gelu_declined("the product failed");
        s->ok = 0; /* this shape goes without the epilogue from now on */
        if (!L->gelu_told)
            fprintf(stderr,
                    "svlm: CUDA: cuBLASLt's GELU epilogue failed (status %d): the GELU runs as a pass of "
                    "its own\n",
                    (int)st);
        L->gelu_told = 1;
        return 0;
    }
    return 1;
}

void cu_lt_free(svlm_kernels *k) {
    cu_lt *L = CU(k)->lt;
    if (!L) return;
    for (int i = 0; i < LT_SHAPES; i++)
        shape_free(&L->s[i]);
    if (L->ws) (void)cudaFree(L->ws);
    if (L->h) cu_blas()->cublasLtDestroy(L->h);
    free(L);
    CU(k)->lt = NULL;
}
