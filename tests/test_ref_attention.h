/*
 * The attention reference shared by the kernel tests: softmax(q k^T scale) v in double, with the
 * causal rule of svlm_k_attention (query i sees kv rows j <= n_kv - n_q + i; none: zeros) and GQA.
 * q: [n_q][n_head][hd]; kf, vf: f32 rows `stride` apart; out: what the backend wrote. Returns the
 * largest |out - reference| (NaN counts as infinite).
 */
#ifndef SVLM_TESTS_TEST_REF_ATTENTION_H
#define SVLM_TESTS_TEST_REF_ATTENTION_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static inline double ref_attention_error(const float *q, const float *kf, const float *vf, const float *out,
                                         int64_t n_q, int64_t n_kv, int n_head, int n_kv_head, int hd,
                                         int64_t stride, int causal, float scale) {
    double worst = 0.0;
    double *p = malloc(sizeof(double) * (size_t)(n_kv > 0 ? n_kv : 1));
    if (!p) return INFINITY;
    for (int64_t i = 0; i < n_q; i++) {
        for (int h = 0; h < n_head; h++) {
            int kvh = h / (n_head / n_kv_head);
            int64_t vis = causal ? n_kv - n_q + i + 1 : n_kv;
            double mx = -INFINITY, sum = 0.0;
            for (int64_t j = 0; j < vis; j++) {
                double s = 0.0;
                for (int d = 0; d < hd; d++)
                    s += (double)q[(i * n_head + h) * hd + d] * kf[j * stride + kvh * hd + d];
                p[j] = s * scale;
                mx = fmax(mx, p[j]);
            }
            for (int64_t j = 0; j < vis; j++)
                sum += (p[j] = exp(p[j] - mx));
            for (int d = 0; d < hd; d++) {
                double o = 0.0; /* no visible row: zeros */
                for (int64_t j = 0; j < vis; j++)
                    o += p[j] / sum * vf[j * stride + kvh * hd + d];
                double e = fabs(out[(i * n_head + h) * hd + d] - o);
                if (!(e <= worst)) worst = e;
            }
        }
    }
    free(p);
    return worst;
}

#endif
