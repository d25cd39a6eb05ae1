/* The STC token pruner: salience and novelty scores, a per-frame budget, order kept. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "vision/stc_prune.h"

struct svlm_stc_pruner {
    svlm_stc_controls ctl;
    int gw, gh, n, dim;
    int has_prev;
    float *prev;                        /* [n][dim] the previous frame's tokens */
    float *mean;                        /* [dim] */
    float *nbr;                         /* [dim] */
    float *sal, *nov, *score, *mem_sim; /* [n] */
    int32_t *order;                     /* [n] */
    svlm_stc_memory_fn memory;
    void *memory_user;
};

void svlm_stc_pruner_free(svlm_stc_pruner *p) {
    if (!p) return;
    free(p->prev);
    free(p->mean);
    free(p->nbr);
    free(p->sal);
    free(p->nov);
    free(p->score);
    free(p->mem_sim);
    free(p->order);
    free(p);
}

svlm_status svlm_stc_pruner_create(const svlm_stc_controls *ctl, int grid_w, int grid_h, int dim,
                                   svlm_stc_pruner **out, svlm_err *err) {
    *out = NULL;
    if (grid_w < 1 || grid_h < 1 || dim < 1 || grid_w > 4096 || grid_h > 4096)
        return svlm_fail(err, SVLM_E_INVALID, "stc pruner: bad token grid %dx%d of width %d", grid_w, grid_h,
                         dim);
    svlm_stc_pruner *p = calloc(1, sizeof *p);
    if (!p) return svlm_fail(err, SVLM_E_NOMEM, "stc pruner: out of memory");
    p->ctl = *ctl;
    p->gw = grid_w;
    p->gh = grid_h;
    p->n = grid_w * grid_h;
    p->dim = dim;
    size_t n = (size_t)p->n;
    if (!(p->prev = malloc(sizeof(float) * n * (size_t)dim)) ||
        !(p->mean = malloc(sizeof(float) * (size_t)dim)) || !(p->nbr = malloc(sizeof(float) * (size_t)dim)) ||
        !(p->sal = malloc(sizeof(float) * n)) || !(p->nov = malloc(sizeof(float) * n)) ||
        !(p->score = malloc(sizeof(float) * n)) || !(p->mem_sim = malloc(sizeof(float) * n)) ||
        !(p->order = malloc(sizeof(int32_t) * n))) {
        svlm_stc_pruner_free(p);
        return svlm_fail(err, SVLM_E_NOMEM, "stc pruner: out of memory");
    }
    *out = p;
    return SVLM_OK;
}

void svlm_stc_pruner_reset(svlm_stc_pruner *p) {
    p->has_prev = 0;
}

void svlm_stc_pruner_set_memory(svlm_stc_pruner *p, svlm_stc_memory_fn fn, void *user) {
    p->memory = fn;
    p->memory_user = user;
}

/* 1 - cos(a, b); 1 when either is zero. */
static float cos_dist(const float *a, const float *b, int n) {
    double ab = 0, aa = 0, bb = 0;
    for (int i = 0; i < n; i++) {
        ab += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    if (aa <= 0 || bb <= 0) return 1.0f;
    return (float)(1.0 - ab / sqrt(aa * bb));
}

static void salience(svlm_stc_pruner *p, const float *x) {
    int D = p->dim;
    memset(p->mean, 0, sizeof(float) * (size_t)D);
    for (int i = 0; i < p->n; i++)
        for (int j = 0; j < D; j++)
            p->mean[j] += x[(size_t)i * D + j];
    for (int i = 0; i < p->n; i++) {
        int y = i / p->gw, xx = i % p->gw, k = 0;
        static const int dy[4] = {-1, 1, 0, 0}, dx[4] = {0, 0, -1, 1};
        memset(p->nbr, 0, sizeof(float) * (size_t)D);
        for (int d = 0; d < 4; d++) {
            int ny = y + dy[d], nx = xx + dx[d];
            if (ny < 0 || ny >= p->gh || nx < 0 || nx >= p->gw) continue;
            const float *r = x + (size_t)(ny * p->gw + nx) * D;
            for (int j = 0; j < D; j++)
                p->nbr[j] += r[j];
            k++;
        }
        const float *xi = x + (size_t)i * D;
        float local = k ? cos_dist(xi, p->nbr, D) : 0.0f;
        p->sal[i] = 0.5f * (local + cos_dist(xi, p->mean, D)); /* a sum has the mean's direction */
    }
}

static float max_of(const float *v, int n) {
    float m = 0;
    for (int i = 0; i < n; i++)
        m = v[i] > m ? v[i] : m;
    return m;
}

/* Insertion sorts (a frame has tens to hundreds of tokens; no shared state, unlike qsort's
 * comparator would need). Ties keep the earlier token first, so choices are deterministic. */
static void sort_by_score_desc(int32_t *order, const float *score, int n) {
    for (int i = 1; i < n; i++) {
        int32_t v = order[i];
        int j = i - 1;
        while (j >= 0 && (score[order[j]] < score[v] || (score[order[j]] == score[v] && order[j] > v))) {
            order[j + 1] = order[j];
            j--;
        }
        order[j + 1] = v;
    }
}

static void sort_ascending(int32_t *v, int n) {
    for (int i = 1; i < n; i++) {
        int32_t x = v[i];
        int j = i - 1;
        while (j >= 0 && v[j] > x) {
            v[j + 1] = v[j];
            j--;
        }
        v[j + 1] = x;
    }
}

static int budget(const svlm_stc_pruner *p, int keyframe) {
    const svlm_stc_controls *c = &p->ctl;
    int k = c->keep_count > 0 && !keyframe
                ? c->keep_count
                : (int)ceilf((keyframe ? c->keyframe_ratio : c->keep_ratio) * (float)p->n);
    if (k < c->keep_floor) k = c->keep_floor;
    return k < p->n ? (k > 0 ? k : 1) : p->n; /* (at least one: a frame is never handed over empty) */
}

int svlm_stc_prune(svlm_stc_pruner *p, const float *tokens, int keyframe, int32_t *kept, float *kept_tokens,
                   float *scores) {
    const svlm_stc_controls *c = &p->ctl;
    int n = p->n, D = p->dim;
    int fresh = keyframe || !p->has_prev; /* nothing to be novel against: salience alone */
    salience(p, tokens);
    for (int i = 0; i < n; i++)
        p->nov[i] = fresh ? 1.0f : cos_dist(tokens + (size_t)i * D, p->prev + (size_t)i * D, D);
    if (p->memory && !fresh) {
        p->memory(p->memory_user, tokens, n, D, p->mem_sim);
        for (int i = 0; i < n; i++) {
            float m = 1.0f - p->mem_sim[i];
            if (p->mem_sim[i] > -1.0f && m < p->nov[i]) p->nov[i] = m;
        }
    }
    float smax = max_of(p->sal, n), nmax = max_of(p->nov, n);
    if (nmax < c->novelty_floor) nmax = c->novelty_floor;
    for (int i = 0; i < n; i++) {
        float s = smax > 0 ? p->sal[i] / smax : 0.0f;
        float v = fresh ? 0.0f : (nmax > 0 ? p->nov[i] / nmax : 0.0f);
        p->score[i] = c->spatial_weight * s + c->temporal_weight * v;
        p->order[i] = i;
    }
    if (scores) memcpy(scores, p->score, sizeof(float) * (size_t)n);

    int k = budget(p, keyframe || !p->has_prev);
    sort_by_score_desc(p->order, p->score, n);
    int n_kept = 0;
    /* a frame keeps one token at least, whatever the controls: the stream takes no empty frame (it
     * would be dropped as an error), and an unchanged scene still marks that time passed */
    const int floor = c->keep_floor > 1 ? c->keep_floor : 1;
    for (int r = 0; r < n && n_kept < k; r++) {
        int i = p->order[r];
        if (!fresh && n_kept >= floor && p->nov[i] < c->redundant) continue;
        kept[n_kept++] = i;
    }
    sort_ascending(kept, n_kept);
    if (kept_tokens)
        for (int r = 0; r < n_kept; r++)
            memcpy(kept_tokens + (size_t)r * D, tokens + (size_t)kept[r] * D, sizeof(float) * (size_t)D);
    memcpy(p->prev, tokens, sizeof(float) * (size_t)n * (size_t)D);
    p->has_prev = 1;
    return n_kept;
}
