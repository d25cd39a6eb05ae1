/*
 * The K and V rows one CPU attention task reads. An F32 cache is read in place; an F16 cache is
 * read in place too by the few-row forms (decode: a GQA group's 1-4 queries), which widen each
 * row as they load it, and is otherwise widened to f32 in scratch once for the task's GEMMs.
 */
#include "kernels/cpu/cpu_kernels.h"

static int reads_f16(const svlm_cpu *c, const svlm_attn_args *a, int64_t m_rows) {
    return a->kv_type == SVLM_F16 && c->mm.rows_f16 && m_rows <= 4;
}

size_t svlm_attn_kv_scratch(const svlm_cpu *c, const svlm_attn_args *a, int64_t rows, int64_t m_rows) {
    if (a->kv_type != SVLM_F16 || reads_f16(c, a, m_rows)) return 0;
    return 2 * sizeof(float) * (size_t)rows * (size_t)a->head_dim;
}

void svlm_attn_kv_view(const svlm_cpu *c, const svlm_attn_args *a, int kvh, int64_t r0, int64_t rows,
                       int64_t m_rows, float *scratch, svlm_attn_kv *kv) {
    const int hd = a->head_dim;
    const int64_t at = r0 * a->kv_stride + (int64_t)kvh * hd;
    if (a->kv_type == SVLM_F32) {
        *kv = (svlm_attn_kv){(const float *)a->k + at, (const float *)a->v + at, a->kv_stride, 0};
        return;
    }
    const svlm_f16 *k16 = (const svlm_f16 *)a->k + at, *v16 = (const svlm_f16 *)a->v + at;
    if (reads_f16(c, a, m_rows)) {
        *kv = (svlm_attn_kv){k16, v16, a->kv_stride, 1};
        return;
    }
    float *kf = scratch, *vf = kf + (size_t)rows * (size_t)hd;
    svlm_dequant_fn cvt = c->mm.dequant[SVLM_F16];
    for (int64_t r = 0; r < rows; r++) {
        cvt(hd, k16 + r * a->kv_stride, kf + r * hd);
        cvt(hd, v16 + r * a->kv_stride, vf + r * hd);
    }
    *kv = (svlm_attn_kv){kf, vf, hd, 0};
}

void svlm_attn_kv_scores(svlm_cpu *c, int thread, const svlm_attn_kv *kv, int64_t M, int64_t N, int64_t K,
                         const float *A, int64_t lda, float *C, int64_t ldc) {
    if (kv->f16)
        c->mm.rows_f16(1, M, N, K, A, lda, kv->k, kv->ld, C, ldc);
    else
        c->mm.gemm_nt(c, thread, M, N, K, A, lda, kv->k, kv->ld, C, ldc);
}

void svlm_attn_kv_values(svlm_cpu *c, int thread, const svlm_attn_kv *kv, int64_t M, int64_t N, int64_t K,
                         const float *A, int64_t lda, float *C, int64_t ldc) {
    if (kv->f16)
        c->mm.rows_f16(0, M, N, K, A, lda, kv->v, kv->ld, C, ldc);
    else
        c->mm.gemm_nn(c, thread, M, N, K, A, lda, kv->v, kv->ld, C, ldc);
}
