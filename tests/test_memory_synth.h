/*
 * Synthetic visual tokens for the memory tests: a slowly changing scene (fixed per-position
 * base vectors plus a slow random walk shared by all tokens, plus per-frame noise) and
 * optional events: for event_len seconds the middle half of the positions show an "object"
 * vector instead of the scene.
 */
#ifndef SVLM_TESTS_MEMORY_SYNTH_H
#define SVLM_TESTS_MEMORY_SYNTH_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SYNTH_MAX_EVENTS 64

typedef struct synth {
    int T, D;
    uint64_t rng;
    float noise, drift_step;
    float *base;  /* [T][D] */
    float *drift; /* [D] */
    int n_events;
    double event_t[SYNTH_MAX_EVENTS], event_len[SYNTH_MAX_EVENTS];
    float *object;      /* [SYNTH_MAX_EVENTS][D] */
    float *noise_table; /* when set (synth_fast_noise), noise is read from it at random offsets */
} synth;

#define SYNTH_NOISE_TABLE (1 << 20)

/* Uniform in [-1, 1) (xorshift64*): fast enough for millions of tokens. */
static inline float synth_uniform(uint64_t *s) {
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    uint64_t r = *s * 2685821657736338717ull;
    return (float)((double)(r >> 11) * (2.0 / 9007199254740992.0) - 1.0);
}

/* Roughly normal (sum of three uniforms, unit variance). */
static inline float synth_gauss(uint64_t *s) {
    return (synth_uniform(s) + synth_uniform(s) + synth_uniform(s));
}

static inline void synth_init(synth *s, int T, int D, uint64_t seed) {
    memset(s, 0, sizeof *s);
    s->T = T;
    s->D = D;
    s->rng = seed * 0x9E3779B97F4A7C15ull + 1;
    s->noise = 0.05f;
    s->drift_step = 0.003f;
    s->base = malloc((size_t)T * D * sizeof(float));
    s->drift = calloc((size_t)D, sizeof(float));
    s->object = malloc((size_t)SYNTH_MAX_EVENTS * D * sizeof(float));
    for (int i = 0; i < T * D; i++)
        s->base[i] = synth_gauss(&s->rng);
    for (int i = 0; i < SYNTH_MAX_EVENTS * D; i++)
        s->object[i] = synth_gauss(&s->rng);
}

/* Cheaper noise for long runs: a fixed table read at a random offset per token. */
static inline void synth_fast_noise(synth *s) {
    s->noise_table = malloc(SYNTH_NOISE_TABLE * sizeof(float));
    for (int i = 0; i < SYNTH_NOISE_TABLE; i++)
        s->noise_table[i] = synth_gauss(&s->rng);
}

static inline void synth_free(synth *s) {
    free(s->noise_table);
    free(s->base);
    free(s->drift);
    free(s->object);
}

static inline int synth_add_event(synth *s, double t, double len) {
    if (s->n_events == SYNTH_MAX_EVENTS) return -1;
    s->event_t[s->n_events] = t;
    s->event_len[s->n_events] = len;
    return s->n_events++;
}

static inline int synth_event_at(const synth *s, double t) {
    for (int e = 0; e < s->n_events; e++)
        if (t >= s->event_t[e] && t < s->event_t[e] + s->event_len[e]) return e;
    return -1;
}

/* An object token: the event's vector with a little per-token variation. */
static inline void synth_object_token(synth *s, int e, float *out) {
    for (int j = 0; j < s->D; j++)
        out[j] = s->object[(size_t)e * s->D + j] + 0.2f * synth_gauss(&s->rng);
}

/* The frame at time t (call with increasing t, one call per frame). */
static inline void synth_frame(synth *s, double t, float *out) {
    int e = synth_event_at(s, t), T = s->T, D = s->D;
    for (int i = 0; i < T; i++) {
        float *o = out + (size_t)i * D;
        if (e >= 0 && i >= T / 4 && i < 3 * T / 4)
            synth_object_token(s, e, o);
        else
            for (int j = 0; j < D; j++)
                o[j] = s->base[(size_t)i * D + j] + s->drift[j];
        if (s->noise_table) {
            uint64_t r = (uint64_t)((synth_uniform(&s->rng) + 1) * 0.5 * (SYNTH_NOISE_TABLE - D));
            const float *nz = s->noise_table + r;
            for (int j = 0; j < D; j++)
                o[j] += s->noise * nz[j];
        } else {
            for (int j = 0; j < D; j++)
                o[j] += s->noise * synth_gauss(&s->rng);
        }
    }
    for (int j = 0; j < D; j++)
        s->drift[j] += s->drift_step * synth_gauss(&s->rng);
}

#endif
