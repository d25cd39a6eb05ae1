/*
 * Scaled dot-product attention on the CPU. One task per (kv head, block of queries): the kv
 * head's K and V (converted to f32 once when the cache is F16) serve every query head of its
 * GQA group; scores S = Q K^T and the output S V are GEMMs, with a stable softmax in between.
 */
#include <string.h>

#include "kernels/cpu/cpu_kernels.h"

#define QUERY_BLOCK 64

typedef struct attn_job {
    svlm_cpu *c;
    const svlm_attn_args *a;
    int64_t n_qblocks;
} attn_job;

static void attn_task(void *ctx, int task, int thread) {
    const attn_job *j = ctx;
    const svlm_attn_args *a = j->a;
    svlm_cpu *c = j->c;
    int kvh = (int)(task / j->n_qblocks);
    int64_t q0 = (task % j->n_qblocks) * QUERY_BLOCK;
    int64_t nq = a->n_q - q0 < QUERY_BLOCK ? a->n_q - q0 : QUERY_BLOCK;
    int hd = a->head_dim, group = a->n_head / a->n_kv_head;
    int64_t q_stride = (int64_t)a->n_head * hd;
    int64_t offset = a->n_kv - a->n_q; /* query i sees kv rows j <= offset + i when causal */

    /* kv rows any query of this block may see */
    int64_t n_vis = a->n_kv;
    if (a->causal) {
        int64_t last = offset + q0 + nq; /* rows visible to the block's last query */
        n_vis = last < n_vis ? last : n_vis;
    }
    if (n_vis <= 0) { /* no query of the block sees any row (n_kv < n_q): zeros */
        for (int g = 0; g < group; g++)
            for (int64_t i = 0; i < nq; i++)
                memset(a->out + (q0 + i) * q_stride + (int64_t)(kvh * group + g) * hd, 0, sizeof(float) * (size_t)hd);
        return;
    }

    size_t s_bytes = sizeof(float) * (size_t)(nq > group ? nq : group) * (size_t)n_vis;
    size_t kv_bytes = a->kv_type == SVLM_F16 ? 2 * sizeof(float) * (size_t)n_vis * (size_t)hd : 0;
    float *scores = svlm_cpu_scratch(c, thread, SVLM_SCRATCH_OP, s_bytes + kv_bytes);
    const float *K, *V;
    int64_t ld_kv;
    if (a->kv_type == SVLM_F16) {
        float *kf = (float *)((char *)scores + s_bytes), *vf = kf + (size_t)n_vis * (size_t)hd;
        const svlm_f16 *k16 = (const svlm_f16 *)a->k + (int64_t)kvh * hd;
        const svlm_f16 *v16 = (const svlm_f16 *)a->v + (int64_t)kvh * hd;
        svlm_dequant_fn cvt = c->mm.dequant[SVLM_F16];
        for (int64_t r = 0; r < n_vis; r++) {
            cvt(hd, k16 + r * a->kv_stride, kf + r * hd);
            cvt(hd, v16 + r * a->kv_stride, vf + r * hd);
        }
        K = kf;
        V = vf;
        ld_kv = hd;
    } else {
        K = (const float *)a->k + (int64_t)kvh * hd;
        V = (const float *)a->v + (int64_t)kvh * hd;
        ld_kv = a->kv_stride;
    }

    if (nq == 1) { /* decode: the group's query heads are adjacent rows; one GEMM serves all */
        const float *q = a->q + q0 * q_stride + (int64_t)kvh * group * hd;
        float *out = a->out + q0 * q_stride + (int64_t)kvh * group * hd;
        c->mm.gemm_nt(c, thread, group, n_vis, hd, q, hd, K, ld_kv, scores, n_vis);
        for (int g = 0; g < group; g++) {
            float *s = scores + (int64_t)g * n_vis;
            for (int64_t t = 0; t < n_vis; t++) s[t] *= a->scale;
            c->mm.softmax_row(s, n_vis);
        }
        c->mm.gemm_nn(c, thread, group, hd, n_vis, scores, n_vis, V, ld_kv, out, hd);
        return;
    }
    for (int g = 0; g < group; g++) {
        int h = kvh * group + g;
        const float *q = a->q + q0 * q_stride + (int64_t)h * hd;
        float *out = a->out + q0 * q_stride + (int64_t)h * hd;
        c->mm.gemm_nt(c, thread, nq, n_vis, hd, q, q_stride, K, ld_kv, scores, n_vis);
        for (int64_t i = 0; i < nq; i++) {
            float *s = scores + i * n_vis;
            int64_t vis = a->causal ? offset + q0 + i + 1 : a->n_kv;
            if (vis > n_vis) vis = n_vis;
            if (vis <= 0) {
                memset(s, 0, sizeof(float) * (size_t)n_vis);
                continue;
            }
            for (int64_t t = 0; t < vis; t++) s[t] *= a->scale;
            c->mm.softmax_row(s, vis);
            for (int64_t t = vis; t < n_vis; t++) s[t] = 0.0f;
        }
        c->mm.gemm_nn(c, thread, nq, hd, n_vis, scores, n_vis, V, ld_kv, out, q_stride);
    }
}

void svlm_cpu_attention(svlm_cpu *c, const svlm_attn_args *a) {
    if (a->n_q <= 0 || a->n_kv_head <= 0 || a->n_head % a->n_kv_head) return;
    attn_job j = {c, a, (a->n_q + QUERY_BLOCK - 1) / QUERY_BLOCK};
    svlm_pool_run(c->pool, attn_task, &j, (int)(j.n_qblocks * a->n_kv_head));
}
