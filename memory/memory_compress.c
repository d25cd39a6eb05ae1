/* Token compression: clustering many tokens into a few representatives, and merging clips. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "memory/memory_internal.h"

#define LLOYD_ROUNDS 4

float mem_cosine(const float *a, const float *b, int d) {
    double ab = 0, aa = 0, bb = 0;
    for (int i = 0; i < d; i++) {
        ab += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    if (aa <= 0 || bb <= 0) return aa == bb ? 1.0f : 0.0f; /* two zero vectors are the same */
    return (float)(ab / sqrt(aa * bb));
}

void mem_normalise(float *v, int d) {
    double s = 0;
    for (int i = 0; i < d; i++)
        s += (double)v[i] * v[i];
    if (s <= 0) return;
    float inv = (float)(1.0 / sqrt(s));
    for (int i = 0; i < d; i++)
        v[i] *= inv;
}

/* Farthest-point seeding from the token farthest from the mean direction, then Lloyd rounds
 * assigning by cosine and averaging members (centroids keep the members' scale). */
int mem_cluster(const float *x, int n, int d, int k, float *c) {
    if (k >= n) {
        memcpy(c, x, (size_t)n * (size_t)d * sizeof(float));
        return 0;
    }
    float *best = malloc((size_t)n * sizeof(float));
    int *assign = malloc((size_t)n * sizeof(int));
    double *acc = malloc((size_t)k * (size_t)d * sizeof(double));
    int *count = malloc((size_t)k * sizeof(int));
    float *mean = malloc((size_t)d * sizeof(float));
    if (!best || !assign || !acc || !count || !mean) {
        free(best), free(assign), free(acc), free(count), free(mean);
        return -1;
    }
    memset(mean, 0, (size_t)d * sizeof(float));
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++)
            mean[j] += x[(size_t)i * d + j];
    int first = 0;
    float lo = 2;
    for (int i = 0; i < n; i++) {
        float s = mem_cosine(x + (size_t)i * d, mean, d);
        if (s < lo) lo = s, first = i;
    }
    memcpy(c, x + (size_t)first * d, (size_t)d * sizeof(float));
    for (int i = 0; i < n; i++)
        best[i] = mem_cosine(x + (size_t)i * d, c, d);
    for (int q = 1; q < k; q++) {
        int far = 0;
        for (int i = 1; i < n; i++)
            if (best[i] < best[far]) far = i;
        memcpy(c + (size_t)q * d, x + (size_t)far * d, (size_t)d * sizeof(float));
        for (int i = 0; i < n; i++) {
            float s = mem_cosine(x + (size_t)i * d, c + (size_t)q * d, d);
            if (s > best[i]) best[i] = s;
        }
    }
    for (int round = 0; round < LLOYD_ROUNDS; round++) {
        for (int i = 0; i < n; i++) {
            int arg = 0;
            float hi = -2;
            for (int q = 0; q < k; q++) {
                float s = mem_cosine(x + (size_t)i * d, c + (size_t)q * d, d);
                if (s > hi) hi = s, arg = q;
            }
            assign[i] = arg;
        }
        memset(acc, 0, (size_t)k * (size_t)d * sizeof(double));
        memset(count, 0, (size_t)k * sizeof(int));
        for (int i = 0; i < n; i++) {
            count[assign[i]]++;
            for (int j = 0; j < d; j++)
                acc[(size_t)assign[i] * d + j] += x[(size_t)i * d + j];
        }
        for (int q = 0; q < k; q++) /* an empty cluster keeps its seed */
            if (count[q])
                for (int j = 0; j < d; j++)
                    c[(size_t)q * d + j] = (float)(acc[(size_t)q * d + j] / count[q]);
    }
    free(best), free(assign), free(acc), free(count), free(mean);
    return 0;
}

double mem_cluster_cost(int n, int d, int k) {
    if (k >= n) return (double)n * d;
    /* the mean, seeding (a pass a centroid) and the Lloyd rounds (every token against every centroid) */
    return (double)n * d * (2.0 + (double)k * (1 + LLOYD_ROUNDS) + LLOYD_ROUNDS);
}

/* Keys after mem_refresh_keys on n_tokens tokens, from n_keys before. */
static int keys_after_refresh(const svlm_memory *m, int n_tokens, int n_keys) {
    if (m->opts.key_dim > 0) return n_keys; /* external keys are kept as they are */
    return n_tokens < 1 ? 1 : n_tokens < SVLM_MEMORY_MAX_KEYS ? n_tokens : SVLM_MEMORY_MAX_KEYS;
}

/* A merge of a and b apart from its tokens and keys: what the merge of planned entries gives too. */
static void merge_header(const mem_entry *a, const mem_entry *b, mem_entry *e) {
    e->t0 = a->t0 < b->t0 ? a->t0 : b->t0;
    e->t1 = a->t1 > b->t1 ? a->t1 : b->t1;
    /* saturated at what a bank file may hold (memory_store.c refuses more on load) */
    e->n_frames = a->n_frames > MEM_MAX_FRAMES - b->n_frames ? MEM_MAX_FRAMES : a->n_frames + b->n_frames;
    e->level = (a->level > b->level ? a->level : b->level) + 1;
    if (e->level > MEM_MAX_LEVEL) e->level = MEM_MAX_LEVEL;
    e->importance = 1.0f / (float)(1 + e->level);
}

mem_entry *mem_merge_clips(svlm_memory *m, const mem_entry *a, const mem_entry *b) {
    int d = m->opts.dim, n = a->n_tokens + b->n_tokens;
    int k = a->n_tokens > b->n_tokens ? a->n_tokens : b->n_tokens;
    float *both = malloc((size_t)n * (size_t)d * sizeof(float));
    mem_entry *e = mem_entry_new(m, SVLM_MEMORY_MID, k, 1);
    if (!both || !e) {
        free(both);
        mem_entry_free(e);
        return NULL;
    }
    memcpy(both, a->tokens, (size_t)a->n_tokens * (size_t)d * sizeof(float));
    memcpy(both + (size_t)a->n_tokens * d, b->tokens, (size_t)b->n_tokens * (size_t)d * sizeof(float));
    int rc = mem_cluster(both, n, d, k, e->tokens);
    free(both);
    if (rc || mem_refresh_keys(m, e)) {
        mem_entry_free(e);
        return NULL;
    }
    if (m->opts.key_dim > 0) { /* frame-weighted mean of the two keys */
        double wa = (double)a->n_frames, wb = (double)b->n_frames;
        for (int j = 0; j < m->kdim; j++)
            e->keys[j] = (float)(wa * a->keys[j] + wb * b->keys[j]);
        mem_normalise(e->keys, m->kdim);
        e->n_keys = 1;
    }
    merge_header(a, b, e);
    return e;
}

int mem_halve_tokens(svlm_memory *m, mem_entry *e) {
    int d = m->opts.dim, k = e->n_tokens / 2;
    float *c = malloc((size_t)k * (size_t)d * sizeof(float));
    if (!c || mem_cluster(e->tokens, e->n_tokens, d, k, c)) {
        free(c);
        return -1;
    }
    free(e->tokens);
    e->tokens = c;
    e->n_tokens = k;
    return mem_refresh_keys(m, e) ? -1 : 0;
}

int mem_plan_add(svlm_memory *m, int rec, int from0, int from1, int n_tokens) {
    if (m->n_plan == m->cap_plan) {
        int cap = m->cap_plan ? m->cap_plan * 2 : 256;
        mem_plan_node *p = realloc(m->plan, (size_t)cap * sizeof *p);
        if (!p) return 0;
        m->plan = p;
        m->cap_plan = cap;
    }
    m->plan[m->n_plan] = (mem_plan_node){rec, {from0, from1}, 0, n_tokens};
    return ++m->n_plan;
}

mem_entry *mem_merge_planned(svlm_memory *m, const mem_entry *a, const mem_entry *b) {
    if (!a->plan || !b->plan) return NULL; /* a resume plans every entry: never one of each */
    mem_entry *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    int k = a->n_tokens > b->n_tokens ? a->n_tokens : b->n_tokens;
    e->tier = SVLM_MEMORY_MID;
    e->n_tokens = k;
    e->n_keys = m->opts.key_dim > 0 ? 1 : keys_after_refresh(m, k, 1); /* as mem_merge_clips sets them */
    merge_header(a, b, e);
    e->plan = mem_plan_add(m, -1, a->plan - 1, b->plan - 1, k);
    if (!e->plan) {
        free(e);
        return NULL;
    }
    return e;
}

int mem_halve_planned(svlm_memory *m, mem_entry *e) {
    mem_plan_node *p = &m->plan[e->plan - 1];
    if (p->rec < 0) return -1; /* only events shrink, and only merges of clips are nodes of their own */
    e->n_tokens /= 2;
    e->n_keys = keys_after_refresh(m, e->n_tokens, e->n_keys);
    p->halvings++;
    p->n_tokens = e->n_tokens;
    return 0;
}
