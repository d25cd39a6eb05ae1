/* The vision context's layout, shared by siglip.c, connector.c and encoder.c only. */
#ifndef SVLM_VISION_ENCODER_INTERNAL_H
#define SVLM_VISION_ENCODER_INTERNAL_H

#include "vision/encoder.h"

struct svlm_vision_ctx {
    const svlm_mmproj *m;
    svlm_kernels *k;
    int max_batch;
    /* scratch, each for max_batch tiles of N = n_patches tokens (D = n_embd, F = n_ff) */
    float *x;       /* [B*N][D] residual stream                     */
    float *h;       /* [B*N][max(D, 3p^2)] normed input / im2col   */
    float *q, *kk, *v; /* [B*N][D]                                  */
    float *attn;    /* [B*N][D]                                     */
    float *ff;      /* [B*N][F]                                     */
    float *shuf;    /* [B*T][D*s*s] pixel-shuffled features         */
    float *proj;    /* [B*T][proj_dim]                              */
    /* The patch kernel rounded to F16, and im2col rows rounded likewise: llama.cpp runs the
     * patch convolution in F16 (ggml_conv_2d), a 2e-4 relative shift we reproduce. */
    svlm_weight patch16;
    svlm_f16 *patch16_data;
    svlm_vision_trace_fn trace;
    void *trace_user;
};

static inline void svlm_vision_trace(svlm_vision_ctx *c, const char *name, int layer, const float *d,
                                     int64_t rows, int64_t dim) {
    if (c->trace) c->trace(c->trace_user, name, layer, d, rows, dim);
}

#endif
