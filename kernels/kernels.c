/*
 * The svlm_k_* entry points (one indirect call into the backend's table) and the choice of
 * backend by name.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "kernels/backend.h"
#include "kernels/kernels.h"

#ifndef SVLM_HAVE_CUDA
svlm_status svlm_kernels_create_cuda(int device, svlm_kernels **out, svlm_err *err) {
    (void)device;
    *out = NULL;
    return svlm_fail(err, SVLM_E_UNSUPPORTED,
                     "this svlm was built without CUDA (configure with -DSVLM_CUDA=ON)");
}
#endif

svlm_status svlm_kernels_create_named(const char *name, int n_threads, svlm_kernels **out, svlm_err *err) {
    *out = NULL;
    if (!name || !*name) name = getenv("SVLM_BACKEND");
    if (!name || !*name) name = "cpu";
    if (!strcmp(name, "cpu")) return svlm_kernels_create_cpu(n_threads, out, err);
    int device = 0, is_auto = !strcmp(name, "auto");
    if (!is_auto) {
        char *end = NULL;
        if (!strcmp(name, "cuda"))
            device = 0;
        else if (!strncmp(name, "cuda:", 5) && name[5] >= '0' && name[5] <= '9' &&
                 (device = (int)strtol(name + 5, &end, 10), end && !*end) && device < 64)
            ;
        else
            return svlm_fail(err, SVLM_E_INVALID, "backend '%s': expected cpu, cuda, cuda:N or auto", name);
    }
    svlm_err cerr = {0};
    svlm_status st = svlm_kernels_create_cuda(device, out, &cerr);
    if (st == SVLM_OK) return SVLM_OK;
    /* a GPU that is absent or unusable is not an error for the caller: the CPU does the work */
    static int told;
    if (!told) fprintf(stderr, "svlm: no usable GPU (%s); computing on the CPU\n", cerr.msg);
    told = 1;
    return svlm_kernels_create_cpu(n_threads, out, err);
}

int svlm_kernels_is_gpu(const svlm_kernels *k) {
    return k->is_gpu;
}

void svlm_kernels_destroy(svlm_kernels *k) {
    if (k) k->ops->destroy(k);
}
const char *svlm_kernels_name(const svlm_kernels *k) {
    return k->name;
}
int svlm_kernels_threads(const svlm_kernels *k) {
    return k->n_threads;
}
void *svlm_k_alloc(svlm_kernels *k, size_t bytes) {
    return k->ops->alloc(k, bytes);
}
void svlm_k_free(svlm_kernels *k, void *p) {
    k->ops->free(k, p);
}
void svlm_k_forget(svlm_kernels *k, const void *weight_data) {
    if (k->ops->forget && weight_data) k->ops->forget(k, weight_data);
}

void svlm_k_defer(svlm_kernels *k, int on) {
    if (k->ops->defer) k->ops->defer(k, on);
}
void svlm_k_sync(svlm_kernels *k) {
    if (k->ops->sync) k->ops->sync(k);
}
void svlm_k_copy(svlm_kernels *k, void *dst, const void *src, size_t bytes) {
    if (bytes && dst != src) k->ops->copy(k, dst, src, bytes);
}
void svlm_k_store(svlm_kernels *k, void *dst, svlm_dtype dst_type, const float *src, int64_t n) {
    if (n > 0) k->ops->store(k, dst, dst_type, src, n);
}
void svlm_k_load(svlm_kernels *k, float *dst, const void *src, svlm_dtype src_type, int64_t n) {
    if (n > 0) k->ops->load(k, dst, src, src_type, n);
}
void svlm_k_round_f16(svlm_kernels *k, float *x, int64_t n) {
    if (n > 0) k->ops->round_f16(k, x, n);
}
void svlm_k_gather_rows(svlm_kernels *k, float *dst, const float *src, const int32_t *idx, int64_t n,
                        int64_t dim) {
    if (n > 0 && dim > 0) k->ops->gather_rows(k, dst, src, idx, n, dim);
}
void svlm_k_attention_multi(svlm_kernels *k, const svlm_attn_args *a, int n) {
    if (k->ops->attention_multi) {
        k->ops->attention_multi(k, a, n);
        return;
    }
    for (int i = 0; i < n; i++)
        k->ops->attention(k, &a[i]);
}
void svlm_k_gelu_tanh_f16(svlm_kernels *k, float *x, int64_t n) {
    if (n > 0) k->ops->gelu_tanh_f16(k, x, n);
}

void svlm_k_matmul(svlm_kernels *k, const svlm_weight *w, const float *x, int64_t n, float *y) {
    k->ops->matmul(k, w, x, n, y);
}
void svlm_k_matmul_multi(svlm_kernels *k, const svlm_weight *const *ws, int n_w, const float *x, int64_t n,
                         float *const *ys) {
    k->ops->matmul_multi(k, ws, n_w, x, n, ys);
}
void svlm_k_rmsnorm(svlm_kernels *k, const float *x, const float *w, float *y, int64_t n, int64_t dim,
                    float eps) {
    k->ops->rmsnorm(k, x, w, y, n, dim, eps);
}
void svlm_k_layernorm(svlm_kernels *k, const float *x, const float *w, const float *b, float *y, int64_t n,
                      int64_t dim, float eps) {
    k->ops->layernorm(k, x, w, b, y, n, dim, eps);
}
void svlm_k_rope(svlm_kernels *k, float *x, int64_t n, int n_head, int head_dim, int n_rot,
                 const int32_t *pos, float base, int neox) {
    k->ops->rope(k, x, n, n_head, head_dim, n_rot, pos, base, neox);
}
void svlm_k_attention(svlm_kernels *k, const svlm_attn_args *a) {
    k->ops->attention(k, a);
}
void svlm_k_silu_mul(svlm_kernels *k, float *gate, const float *up, int64_t n) {
    k->ops->silu_mul(k, gate, up, n);
}
void svlm_k_gelu_tanh(svlm_kernels *k, float *x, int64_t n) {
    k->ops->gelu_tanh(k, x, n);
}
void svlm_k_add(svlm_kernels *k, float *y, const float *x, int64_t n) {
    k->ops->add(k, y, x, n);
}
void svlm_k_add_bias(svlm_kernels *k, float *y, const float *b, int64_t n_rows, int64_t dim) {
    k->ops->add_bias(k, y, b, n_rows, dim);
}
void svlm_k_softmax(svlm_kernels *k, float *x, int64_t n_rows, int64_t dim) {
    k->ops->softmax(k, x, n_rows, dim);
}
