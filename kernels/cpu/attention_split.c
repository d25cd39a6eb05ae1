/*
 * Decode attention (one query per head) with the kv rows split into parts, so that a model with
 * fewer kv heads than threads (SmolVLM2-256M: 3 kv heads) still keeps every thread busy. Each
 * task scores its part against the GQA group's queries and keeps (max, sum of exp, unnormalised
 * output); a second pass merges the parts of each head the way an online softmax does:
 * out = sum_p e^(m_p - M) o_p / sum_p e^(m_p - M) s_p.
 */
#include <math.h>
#include <string.h>

#include "kernels/cpu/cpu_kernels.h"

/* Split only when every part keeps at least this many rows: shorter parts cost more in
 * merging and synchronisation than they gain. */
#define MIN_PART_ROWS 64

typedef struct split_job {
    svlm_cpu *c;
    const svlm_attn_args *a;
    int n_split, group;
    int64_t part_rows;
    float *part; /* [kv head][part][group][hd + 2]: output, then max and sum */
} split_job;

static float *part_at(const split_job *j, int kvh, int p, int g) {
    size_t per = (size_t)j->a->head_dim + 2;
    return j->part + (((size_t)kvh * (size_t)j->n_split + (size_t)p) * (size_t)j->group + (size_t)g) * per;
}

static void part_task(void *ctx, int task, int thread) {
    const split_job *j = ctx;
    const svlm_attn_args *a = j->a;
    svlm_cpu *c = j->c;
    int kvh = task / j->n_split, p = task % j->n_split, hd = a->head_dim, group = j->group;
    int64_t r0 = (int64_t)p * j->part_rows, r1 = r0 + j->part_rows < a->n_kv ? r0 + j->part_rows : a->n_kv;
    int64_t rows = r1 - r0;
    size_t s_bytes = sizeof(float) * (size_t)group * (size_t)rows;
    size_t kv_bytes = svlm_attn_kv_scratch(c, a, rows, group);
    float *scores = svlm_cpu_scratch(c, thread, SVLM_SCRATCH_OP, s_bytes + kv_bytes);
    svlm_attn_kv kv;
    svlm_attn_kv_view(c, a, kvh, r0, rows, group, (float *)((char *)scores + s_bytes), &kv);
    const float *q = a->q + (int64_t)kvh * group * hd; /* the group's query heads are adjacent */
    svlm_attn_kv_scores(c, thread, &kv, group, rows, hd, q, hd, scores, rows);
    for (int g = 0; g < group; g++) {
        float *s = scores + (int64_t)g * rows, mx = s[0];
        for (int64_t t = 1; t < rows; t++)
            mx = s[t] > mx ? s[t] : mx;
        float *dst = part_at(j, kvh, p, g);
        dst[hd] = mx;
        dst[hd + 1] = c->mm.exp_row(s, rows, a->scale);
    }
    /* the group's outputs are hd + 2 floats apart: one product loads each value row once for all */
    svlm_attn_kv_values(c, thread, &kv, group, hd, rows, scores, rows, part_at(j, kvh, p, 0), hd + 2);
}

static void merge_task(void *ctx, int task, int thread) {
    (void)thread;
    const split_job *j = ctx;
    const svlm_attn_args *a = j->a;
    int kvh = task / j->group, g = task % j->group, hd = a->head_dim;
    float m = -INFINITY;
    for (int p = 0; p < j->n_split; p++)
        m = fmaxf(m, part_at(j, kvh, p, g)[hd]);
    float *out = a->out + (int64_t)(kvh * j->group + g) * hd, sum = 0.0f;
    memset(out, 0, sizeof(float) * (size_t)hd);
    for (int p = 0; p < j->n_split; p++) {
        const float *src = part_at(j, kvh, p, g);
        float w = expf(a->scale * (src[hd] - m)); /* the part's exps were taken from its own max */
        sum += w * src[hd + 1];
        for (int d = 0; d < hd; d++)
            out[d] += w * src[d];
    }
    for (int d = 0; d < hd; d++)
        out[d] /= sum;
}

int svlm_cpu_attention_split(svlm_cpu *c, const svlm_attn_args *a) {
    if (a->n_q != 1 || c->n_threads < 2) return 0;
    int64_t want = ((int64_t)c->n_threads * 4 + a->n_kv_head - 1) / a->n_kv_head;
    int64_t most = a->n_kv / MIN_PART_ROWS;
    int n_split = (int)(want < most ? want : most);
    if (n_split < 2) return 0;
    split_job j = {c, a, n_split, a->n_head / a->n_kv_head, (a->n_kv + n_split - 1) / n_split, NULL};
    n_split = j.n_split = (int)((a->n_kv + j.part_rows - 1) / j.part_rows); /* no empty part */
    j.part = svlm_cpu_act_buffer(c, sizeof(float) * (size_t)a->n_kv_head * (size_t)n_split * (size_t)j.group *
                                        ((size_t)a->head_dim + 2));
    svlm_pool_run(c->pool, part_task, &j, a->n_kv_head * n_split);
    svlm_pool_run(c->pool, merge_task, &j, a->n_head);
    return 1;
}
