#include "llm/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

typedef struct {
    int32_t id;
    float logit;
    float p;
} candidate;

struct svlm_sampler {
    svlm_sampler_params p;
    int n_vocab;
    uint64_t rng[2];
    int32_t *recent; /* ring of the last repeat_last_n tokens */
    int n_recent, recent_at;
    candidate *cand, *tmp; /* tmp: the radix sort's other buffer */
};

svlm_sampler_params svlm_sampler_params_default(void) {
    svlm_sampler_params p = {.temp = 0.8f,
                             .top_k = 40,
                             .top_p = 0.95f,
                             .min_p = 0.05f,
                             .repeat_penalty = 1.0f,
                             .repeat_last_n = 64,
                             .seed = 0};
    return p;
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* xoroshiro128+ : uniform double in [0, 1). */
static double next_uniform(uint64_t s[2]) {
    uint64_t s0 = s[0], s1 = s[1], r = s0 + s1;
    s1 ^= s0;
    s[0] = ((s0 << 24) | (s0 >> 40)) ^ s1 ^ (s1 << 16);
    s[1] = (s1 << 37) | (s1 >> 27);
    return (double)(r >> 11) * (1.0 / 9007199254740992.0);
}

svlm_status svlm_sampler_create(const svlm_sampler_params *p, int n_vocab, svlm_sampler **out,
                                svlm_err *err) {
    *out = NULL;
    if (n_vocab <= 0) return svlm_fail(err, SVLM_E_INVALID, "empty vocabulary");
    /* NaN passed every "off" test and an infinite penalty made 0 * inf = NaN logits */
    if (!isfinite(p->temp) || isnan(p->top_p) || isnan(p->min_p))
        return svlm_fail(err, SVLM_E_INVALID,
                         "sampler: temperature %g, top-p %g and min-p %g must be numbers", (double)p->temp,
                         (double)p->top_p, (double)p->min_p);
    if (!(p->repeat_penalty > 0 && isfinite(p->repeat_penalty)) || p->repeat_last_n < 0)
        return svlm_fail(
            err, SVLM_E_INVALID,
            "sampler: repeat penalty %g must be a positive number, repeat_last_n %d not negative",
            (double)p->repeat_penalty, p->repeat_last_n);
    svlm_sampler *s = calloc(1, sizeof *s);
    if (!s) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    s->p = *p;
    s->n_vocab = n_vocab;
    uint64_t seed = p->seed;
    s->rng[0] = splitmix64(&seed);
    s->rng[1] = splitmix64(&seed);
    s->recent = calloc((size_t)(p->repeat_last_n > 0 ? p->repeat_last_n : 1), sizeof(int32_t));
    s->cand = malloc((size_t)n_vocab * sizeof(candidate));
    s->tmp = malloc((size_t)n_vocab * sizeof(candidate));
    if (!s->recent || !s->cand || !s->tmp) {
        svlm_sampler_free(s);
        return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    }
    *out = s;
    return SVLM_OK;
}

void svlm_sampler_free(svlm_sampler *s) {
    if (!s) return;
    free(s->recent);
    free(s->cand);
    free(s->tmp);
    free(s);
}

void svlm_sampler_accept(svlm_sampler *s, int32_t id) {
    if (s->p.repeat_last_n <= 0) return;
    s->recent[s->recent_at] = id;
    s->recent_at = (s->recent_at + 1) % s->p.repeat_last_n;
    if (s->n_recent < s->p.repeat_last_n) s->n_recent++;
}

/* The candidates a draw at temperature t can reach, greatest logit first and equal logits by id,
 * in c[0..*m): NaNs are never drawn, nor is a logit more than 30 * max(t, 1) below the greatest (each
 * such token weighs under e^-30 at temperature t and at 1, where top-p and min-p filter: 49,280 of
 * them under 5e-9 of the draw). A real model's logits leave a few hundred of 49k, sorted in
 * microseconds; even a flat random one keeps all, sorted by 4 stable byte passes (a qsort of 49k
 * took 11 ms a token, more than the decode step). */
static uint32_t desc_key(float f) {
    uint32_t u;
    if (f == 0.0f) f = 0.0f; /* -0 ties +0, as they compare */
    memcpy(&u, &f, 4);
    u = (u & 0x80000000u) ? ~u : (u | 0x80000000u); /* unsigned order = float order */
    return ~u;                                      /* greatest first */
}

static void sort_candidates(candidate *c, candidate *tmp, int n, float temp, int *m) {
    float mx = 0;
    int any = 0;
    for (int i = 0; i < n; i++)
        if (!isnan(c[i].logit) && (!any || c[i].logit > mx)) mx = c[i].logit, any = 1;
    const double cut = 30.0 * (temp > 1 ? temp : 1);
    int k = 0;
    for (int i = 0; i < n; i++) /* (in id order: the sort below is stable) */
        if (!isnan(c[i].logit) && (c[i].logit == mx || (double)mx - c[i].logit <= cut)) c[k++] = c[i];
    *m = k;
    candidate *src = c, *dst = tmp;
    for (int shift = 0; shift < 32; shift += 8) {
        int count[257] = {0};
        for (int i = 0; i < k; i++)
            count[((desc_key(src[i].logit) >> shift) & 255) + 1]++;
        if (count[((desc_key(src[0].logit) >> shift) & 255) + 1] == k) continue; /* one byte value */
        for (int b = 0; b < 256; b++)
            count[b + 1] += count[b];
        for (int i = 0; i < k; i++)
            dst[count[(desc_key(src[i].logit) >> shift) & 255]++] = src[i];
        candidate *t = src;
        src = dst, dst = t;
    }
    if (src != c) memcpy(c, src, (size_t)k * sizeof *c);
}

/* A candidate's weight against the top one, e^((l - top) / t) with inv_t = 1/t: 1 for the top's
 * equals (so that infinite logits tie instead of giving inf - inf = NaN), and, where 1/t overflows
 * (t under about 3e-39), 0 for the rest: greedy, the limit as t goes to 0. */
static float rel_weight(float l, float top, float inv_t) {
    return l == top ? 1.0f : expf((l - top) * inv_t);
}

int32_t svlm_sampler_sample(svlm_sampler *s, const float *logits) {
    const int n = s->n_vocab;
    candidate *c = s->cand;
    for (int i = 0; i < n; i++)
        c[i] = (candidate){i, logits[i], 0};
    if (s->p.repeat_penalty != 1.0f) {
        for (int j = 0; j < s->n_recent; j++) {
            int32_t id = s->recent[j];
            if (id < 0 || id >= n) continue;
            /* penalise once per distinct token (it may appear several times in the ring) */
            int seen = 0;
            for (int q = 0; q < j; q++)
                seen |= s->recent[q] == id;
            if (seen) continue;
            float *l = &c[id].logit;
            *l = *l > 0 ? *l / s->p.repeat_penalty : *l * s->p.repeat_penalty;
        }
    }
    int32_t chosen;
    if (s->p.temp <= 0) {
        int best = 0;
        for (int i = 1; i < n; i++)
            if (c[i].logit > c[best].logit) best = i;
        chosen = c[best].id;
    } else {
        int m = 0;
        sort_candidates(c, s->tmp, n, s->p.temp, &m);
        if (m == 0) { /* every logit NaN: the first id, as greedy gives */
            svlm_sampler_accept(s, 0);
            return 0;
        }
        if (s->p.top_k > 0 && s->p.top_k < m) m = s->p.top_k;
        /* softmax over the kept candidates at temperature 1 for top-p / min-p filtering (float exp:
         * the arguments lie in [-30 max(t, 1), 0]; sums in double) */
        double sum = 0;
        if (s->p.top_p < 1.0f || s->p.min_p > 0)
            for (int i = 0; i < m; i++)
                sum += c[i].p = rel_weight(c[i].logit, c[0].logit, 1.0f);
        if (s->p.top_p < 1.0f) {
            double acc = 0;
            for (int i = 0; i < m; i++) {
                acc += c[i].p / sum;
                if (acc >= s->p.top_p) {
                    m = i + 1;
                    break;
                }
            }
        }
        if (s->p.min_p > 0) {
            int keep = 1;
            while (keep < m && c[keep].p >= s->p.min_p * c[0].p)
                keep++;
            m = keep;
        }
        sum = 0;
        const float inv_t = 1.0f / s->p.temp;
        for (int i = 0; i < m; i++)
            sum += c[i].p = rel_weight(c[i].logit, c[0].logit, inv_t);
        double r = next_uniform(s->rng) * sum, acc = 0;
        chosen = c[m - 1].id;
        for (int i = 0; i < m; i++) {
            acc += c[i].p;
            if (r < acc) {
                chosen = c[i].id;
                break;
            }
        }
    }
    svlm_sampler_accept(s, chosen);
    return chosen;
}
