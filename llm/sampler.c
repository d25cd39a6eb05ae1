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
    candidate *cand;
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
    if (!s->recent || !s->cand) {
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
    free(s);
}

void svlm_sampler_accept(svlm_sampler *s, int32_t id) {
    if (s->p.repeat_last_n <= 0) return;
    s->recent[s->recent_at] = id;
    s->recent_at = (s->recent_at + 1) % s->p.repeat_last_n;
    if (s->n_recent < s->p.repeat_last_n) s->n_recent++;
}

/* Greatest logit first, NaNs last: a NaN compared "before" everything, an inconsistent order that
 * left the draw to chance positions (it always gave the least likely token). */
static int by_logit_desc(const void *a, const void *b) {
    float x = ((const candidate *)a)->logit, y = ((const candidate *)b)->logit;
    if (isnan(x) || isnan(y)) {
        if (!isnan(x)) return -1;
        if (!isnan(y)) return 1;
    } else if (x != y) {
        return x < y ? 1 : -1;
    }
    return ((const candidate *)a)->id - ((const candidate *)b)->id;
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
        int m = n;
        if (s->p.top_k > 0 && s->p.top_k < m) {
            /* partial selection would be faster; a full sort of 49k floats is ~2 ms, fine per token */
            m = s->p.top_k;
        }
        qsort(c, (size_t)n, sizeof *c, by_logit_desc);
        while (m > 1 && isnan(c[m - 1].logit)) /* never drawn (all NaN: the first id) */
            m--;
        /* softmax over the kept candidates at temperature 1 for top-p / min-p filtering */
        double sum = 0;
        for (int i = 0; i < m; i++)
            sum += c[i].p = (float)exp((double)c[i].logit - c[0].logit);
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
        for (int i = 0; i < m; i++)
            sum += c[i].p = (float)exp(((double)c[i].logit - c[0].logit) / s->p.temp);
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
