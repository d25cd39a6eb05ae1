/*
 * Scaled dot-product attention on the CPU. One task per (kv head, block of queries): the kv
 * head's K and V (svlm_attn_kv_view: F16 rows widened once, or read as f16 in decode) serve every query head
 * of its GQA group; scores S = Q K^T and the output S V are GEMMs, with a stable softmax in between whose
 * division by the row sum is applied to the outputs.
 */
#include <string.h>

#include "kernels/cpu/cpu_kernels.h"

/* Queries per task. Causal blocks stay small so the masked triangle is mostly skipped; without
 * a mask larger blocks amortise the GEMMs' packing of K and V (up to ~1 MB of scores). */
#define CAUSAL_BLOCK      64
#define FULL_BLOCK_MAX    256
#define FULL_BLOCK_SCORES (256 * 1024)
#define SERIAL_MAX_MACS   (1 << 17)

typedef struct attn_job {
    svlm_cpu *c;
    const svlm_attn_args *a;
    int64_t n_qblocks, qblock;
} attn_job;

/* Row i of out (n values, rows ld apart) *= f[i]: the softmax normalisation, applied to the
 * head_dim outputs instead of the n_kv probabilities. */
static void scale_rows(float *out, int64_t ld, int64_t rows, int64_t n, const float *f) {
    for (int64_t i = 0; i < rows; i++)
        for (int64_t d = 0; d < n; d++)
            out[i * ld + d] *= f[i];
}

static void attn_task(void *ctx, int task, int thread) {
    const attn_job *j = ctx;
    const svlm_attn_args *a = j->a;
    svlm_cpu *c = j->c;
    int kvh = (int)(task / j->n_qblocks);
    int64_t q0 = (task % j->n_qblocks) * j->qblock;
    int64_t nq = a->n_q - q0 < j->qblock ? a->n_q - q0 : j->qblock;
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
                memset(a->out + (q0 + i) * q_stride + (int64_t)(kvh * group + g) * hd, 0,
                       sizeof(float) * (size_t)hd);
        return;
    }

    int64_t n_rows = nq > group ? nq : group;
    int64_t m_rows = nq == 1 ? group : nq; /* query rows of each product */
    size_t s_bytes = sizeof(float) * (size_t)n_rows * (size_t)n_vis;
    size_t kv_bytes = svlm_attn_kv_scratch(c, a, n_vis, m_rows);
    float *scores =
        svlm_cpu_scratch(c, thread, SVLM_SCRATCH_OP, s_bytes + kv_bytes + sizeof(float) * (size_t)n_rows);
    float *inv_sum = (float *)((char *)scores + s_bytes + kv_bytes); /* per score row */
    svlm_attn_kv kv;
    svlm_attn_kv_view(c, a, kvh, 0, n_vis, m_rows, (float *)((char *)scores + s_bytes), &kv);

    if (nq == 1) { /* decode: the group's query heads are adjacent rows; one GEMM serves all */
        const float *q = a->q + q0 * q_stride + (int64_t)kvh * group * hd;
        float *out = a->out + q0 * q_stride + (int64_t)kvh * group * hd;
        svlm_attn_kv_scores(c, thread, &kv, group, n_vis, hd, q, hd, scores, n_vis);
        for (int g = 0; g < group; g++)
            inv_sum[g] = 1.0f / c->mm.exp_row(scores + (int64_t)g * n_vis, n_vis, a->scale);
        svlm_attn_kv_values(c, thread, &kv, group, hd, n_vis, scores, n_vis, out, hd);
        scale_rows(out, hd, group, hd, inv_sum);
        return;
    }
    for (int g = 0; g < group; g++) {
        int h = kvh * group + g;
        const float *q = a->q + q0 * q_stride + (int64_t)h * hd;
        float *out = a->out + q0 * q_stride + (int64_t)h * hd;
        svlm_attn_kv_scores(c, thread, &kv, nq, n_vis, hd, q, q_stride, scores, n_vis);
        for (int64_t i = 0; i < nq; i++) {
            float *s = scores + i * n_vis;
            int64_t vis = a->causal ? offset + q0 + i + 1 : a->n_kv;
            if (vis > n_vis) vis = n_vis;
            if (vis <= 0) {
                memset(s, 0, sizeof(float) * (size_t)n_vis);
                inv_sum[i] = 0.0f;
                continue;
            }
            inv_sum[i] = 1.0f / c->mm.exp_row(s, vis, a->scale);
            for (int64_t t = vis; t < n_vis; t++)
                s[t] = 0.0f;
        }
        svlm_attn_kv_values(c, thread, &kv, nq, hd, n_vis, scores, n_vis, out, q_stride);
        scale_rows(out, q_stride, nq, hd, inv_sum);
    }
}

void svlm_cpu_attention(svlm_cpu *c, const svlm_attn_args *a) {
    if (a->n_q <= 0 || a->n_kv_head <= 0 || a->n_head % a->n_kv_head) return;
    if (svlm_cpu_attention_split(c, a)) return;
    int64_t qblock = CAUSAL_BLOCK;
    if (!a->causal) {
        qblock = FULL_BLOCK_SCORES / (a->n_kv > 1 ? a->n_kv : 1);
        qblock = qblock > FULL_BLOCK_MAX ? FULL_BLOCK_MAX : qblock < CAUSAL_BLOCK ? CAUSAL_BLOCK : qblock;
    }
    attn_job j = {c, a, (a->n_q + qblock - 1) / qblock, qblock};
    /* Decode over a short cache is a few microseconds of work: waking the pool costs more. */
    int64_t macs = a->n_q * a->n_kv * a->n_head * (int64_t)a->head_dim;
    svlm_pool *pool = a->n_q == 1 && macs < SERIAL_MAX_MACS ? NULL : c->pool; /* NULL: run here */
    svlm_pool_run(pool, attn_task, &j, (int)(j.n_qblocks * a->n_kv_head));
}
