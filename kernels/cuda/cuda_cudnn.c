/*
 * The patch embedding as one cuDNN convolution (a build with cuDNN; SVLM_CUDA_CUDNN=0 turns it
 * off): the pixels, already rounded through f16 as llama.cpp's F16 convolution sees them, are read
 * as NCHW images and the tokens written as NHWC, i.e. [b (S/p)^2][D] rows, the layout the encoder
 * continues with. f16 values are exact in TF32, so the products are exact as in the im2col + GEMM
 * form; only the order of the f32 sums differs. Any cuDNN failure turns it off, once, with a
 * message, and the caller runs im2col + GEMM. SVLM_CUDA_CUDNN=1 requires it: a decline ends the
 * program (the tests' check that the convolution really ran).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_internal.h"

#ifdef SVLM_HAVE_CUDNN
#include <cudnn.h>

struct cu_dnn {
    cudnnHandle_t h;
    int off, required;
    int ready; /* the descriptors below are made for (b, S, p, D) */
    int b, S, p, D;
    cudnnTensorDescriptor_t x, y;
    cudnnFilterDescriptor_t w;
    cudnnConvolutionDescriptor_t conv;
    cudnnConvolutionFwdAlgo_t algo;
    void *ws;
    size_t ws_bytes;
};

static void dnn_off(cu_dnn *d, const char *what, cudnnStatus_t st) {
    if (!d->off)
        fprintf(stderr, "svlm: CUDA: cuDNN %s (%s): the patch embedding runs as im2col + GEMM\n", what,
                cudnnGetErrorString(st));
    d->off = 1;
}

static cu_dnn *dnn_get(svlm_kernels *k) {
    cu_ctx *c = CU(k);
    if (c->dnn) return c->dnn->off ? NULL : c->dnn;
    if (cu_capturing) return NULL;
    cu_dnn *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    c->dnn = d;
    if (c->dnn_mode == CU_SWITCH_OFF) {
        d->off = 1;
        return NULL;
    }
    d->required = c->dnn_mode == CU_SWITCH_REQUIRED;
    cudnnStatus_t st = cudnnCreate(&d->h);
    if (st != CUDNN_STATUS_SUCCESS) {
        d->h = NULL;
        dnn_off(d, "cannot start", st);
        return NULL;
    }
    if ((st = cudnnCreateTensorDescriptor(&d->x)) || (st = cudnnCreateTensorDescriptor(&d->y)) ||
        (st = cudnnCreateFilterDescriptor(&d->w)) || (st = cudnnCreateConvolutionDescriptor(&d->conv))) {
        dnn_off(d, "has no descriptors", st);
        return NULL;
    }
    return d;
}

/* Descriptors, algorithm and workspace for b images of S x S, patches of p, D outputs. */
static cudnnStatus_t dnn_prepare(cu_dnn *d, int b, int S, int p, int D) {
    d->ready = 0;
    const int g = (S - p) / p + 1;
    const char *tf = getenv("SVLM_CUDA_TF32"); /* "0": full f32 products, as the GEMM path */
    const cudnnMathType_t math = tf && !strcmp(tf, "0") ? CUDNN_FMA_MATH : CUDNN_DEFAULT_MATH;
    cudnnStatus_t st;
    if ((st = cudnnSetTensor4dDescriptor(d->x, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, b, 3, S, S)) ||
        (st = cudnnSetFilter4dDescriptor(d->w, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NCHW, D, 3, p, p)) ||
        (st = cudnnSetConvolution2dDescriptor(d->conv, 0, 0, p, p, 1, 1, CUDNN_CROSS_CORRELATION,
                                              CUDNN_DATA_FLOAT)) ||
        (st = cudnnSetConvolutionMathType(d->conv, math)) ||
        (st = cudnnSetTensor4dDescriptor(d->y, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, b, D, g, g)))
        return st;
    enum { N_PERF = 8 };
    cudnnConvolutionFwdAlgoPerf_t perf[N_PERF];
    int found = 0;
    st = cudnnGetConvolutionForwardAlgorithm_v7(d->h, d->x, d->w, d->conv, d->y, N_PERF, &found, perf);
    if (st) return st;
    const size_t max_ws = (size_t)256 << 20;
    int pick = -1;
    for (int i = 0; i < found && pick < 0; i++) /* full f32 asked: FMA entries only */
        if (perf[i].status == CUDNN_STATUS_SUCCESS && perf[i].memory <= max_ws &&
            (math != CUDNN_FMA_MATH || perf[i].mathType == CUDNN_FMA_MATH))
            pick = i;
    if (pick < 0) return CUDNN_STATUS_NOT_SUPPORTED;
    /* an entry's math type may differ from the descriptor's: the convolution runs with it */
    if ((st = cudnnSetConvolutionMathType(d->conv, perf[pick].mathType))) return st;
    size_t need = 0;
    if ((st = cudnnGetConvolutionForwardWorkspaceSize(d->h, d->x, d->w, d->conv, d->y, perf[pick].algo,
                                                      &need)))
        return st;
    if (need > d->ws_bytes) {
        if (d->ws) (void)cudaFree(d->ws);
        d->ws = NULL;
        d->ws_bytes = 0;
        if (cudaMalloc(&d->ws, need) != cudaSuccess) {
            (void)cudaGetLastError();
            return CUDNN_STATUS_ALLOC_FAILED;
        }
        d->ws_bytes = need;
    }
    d->algo = perf[pick].algo;
    d->b = b;
    d->S = S;
    d->p = p;
    d->D = D;
    d->ready = 1;
    return CUDNN_STATUS_SUCCESS;
}

static int declined(cu_dnn *d, const char *why) {
    if (d && d->required) {
        fprintf(stderr,
                "svlm: internal error: SVLM_CUDA_CUDNN=1 requires cuDNN, which declined the patch "
                "embedding: %s\n",
                why);
        abort();
    }
    return 0;
}

int cu_dnn_patch_embed(svlm_kernels *k, const float *dw, int D, const float *dx, int b, int S, int p,
                       float *dy) {
    cu_dnn *d = dnn_get(k);
    if (!d) return declined(CU(k)->dnn, "it is off or could not start");
    if (!d->ready || d->b != b || d->S != S || d->p != p || d->D != D) {
        if (cu_capturing) return 0; /* preparing allocates */
        cudnnStatus_t st = dnn_prepare(d, b, S, p, D);
        if (st) {
            dnn_off(d, "has no convolution for the patch embedding", st);
            return declined(d, cudnnGetErrorString(st));
        }
    }
    cudnnStatus_t st = cudnnSetStream(d->h, CU(k)->stream);
    const float one = 1.0f, zero = 0.0f;
    if (!st)
        st = cudnnConvolutionForward(d->h, &one, d->x, dx, d->w, dw, d->conv, d->algo, d->ws, d->ws_bytes,
                                     &zero, d->y, dy);
    if (st) {
        if (cu_capturing) {
            cu_capture_failed = 1;
            return 1;
        }
        (void)cudaGetLastError(); /* a launch error it left must not stop the next op */
        dnn_off(d, "failed the patch embedding", st);
        return declined(d, cudnnGetErrorString(st));
    }
    return 1;
}

void cu_dnn_free(svlm_kernels *k) {
    cu_dnn *d = CU(k)->dnn;
    if (!d) return;
    if (d->conv) cudnnDestroyConvolutionDescriptor(d->conv);
    if (d->w) cudnnDestroyFilterDescriptor(d->w);
    if (d->x) cudnnDestroyTensorDescriptor(d->x);
    if (d->y) cudnnDestroyTensorDescriptor(d->y);
    if (d->ws) (void)cudaFree(d->ws);
    if (d->h) cudnnDestroy(d->h);
    free(d);
    CU(k)->dnn = NULL;
}

#else /* built without cuDNN */

int cu_dnn_patch_embed(svlm_kernels *k, const float *dw, int D, const float *dx, int b, int S, int p,
                       float *dy) {
    (void)dw, (void)D, (void)dx, (void)b, (void)S, (void)p, (void)dy;
    if (CU(k)->dnn_mode == CU_SWITCH_REQUIRED) {
        fprintf(stderr, "svlm: internal error: SVLM_CUDA_CUDNN=1, but this build has no cuDNN\n");
        abort();
    }
    return 0;
}

void cu_dnn_free(svlm_kernels *k) {
    (void)k;
}

#endif
