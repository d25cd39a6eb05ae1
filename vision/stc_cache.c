/* The STC feature cache: change detection, reference refresh, and the partial encoder pass. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "vision/encoder_internal.h"
#include "vision/stc_cache.h"

#define BLOCKS_PER_SIDE 4  /* patch summary: 4x4 block means per channel */
#define HIST_BINS       16 /* per channel, over the block means, for cut detection */

struct svlm_stc_cache {
    svlm_vision_ctx *vc;
    svlm_stc_controls ctl;
    int S, p, g, N, D, T, E, n_layer;
    int nb, desc_len; /* blocks per patch side, summary length per patch */
    int has_ref, has_prev;
    int frames_on_ref;                                   /* frames encoded since the reference was computed */
    float *desc, *ref_desc, *prev_desc;                  /* [N][desc_len] */
    float hist[3 * HIST_BINS], prev_hist[3 * HIST_BINS]; /* colour histograms, fractions */
    float *change;                                       /* [N] against the reference */
    float *ga, *gb, *resid; /* [N * nb * nb] one channel's block means, for global_fit */
    uint8_t *mask, *grown;  /* [N] dynamic */
    int32_t *idx;           /* [N] dynamic patch indices */
    float **ref_k, **ref_v; /* [n_layer] of [N][D], from svlm_k_alloc */
    float *ref_enc;         /* [N][D] post-LayerNorm output of the reference, svlm_k_alloc */
    float *ref_out;         /* [T][E] connector output of the reference */
    /* The partial pass works where the kernels' buffers are (a GPU: no host loop over them): the
     * reference rows a frame's dynamic rows stand in for, saved meanwhile ([N][D] each), and where
     * each dynamic row goes in every layer's reference keys and values and in the residual stream
     * ([n_layer][2][N] then [N] pointers, host and kernels' side). */
    float *save_k, *save_v;
    void **rows_host, **rows_k;
};

static void free_kv(svlm_stc_cache *c) {
    for (int l = 0; l < c->n_layer; l++) {
        if (c->ref_k && c->ref_k[l]) svlm_k_free(c->vc->k, c->ref_k[l]);
        if (c->ref_v && c->ref_v[l]) svlm_k_free(c->vc->k, c->ref_v[l]);
    }
    free(c->ref_k);
    free(c->ref_v);
}

void svlm_stc_cache_free(svlm_stc_cache *c) {
    if (!c) return;
    free_kv(c);
    free(c->desc);
    free(c->ref_desc);
    free(c->prev_desc);
    free(c->change);
    free(c->ga);
    free(c->gb);
    free(c->resid);
    free(c->mask);
    free(c->grown);
    free(c->idx);
    void *bufs[] = {c->ref_enc, c->save_k, c->save_v, c->rows_k};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        if (bufs[i]) svlm_k_free(c->vc->k, bufs[i]);
    free(c->rows_host);
    free(c->ref_out);
    free(c);
}

svlm_status svlm_stc_cache_create(svlm_vision_ctx *vc, const svlm_stc_controls *ctl, svlm_stc_cache **out,
                                  svlm_err *err) {
    *out = NULL;
    svlm_stc_cache *c = calloc(1, sizeof *c);
    if (!c) return svlm_fail(err, SVLM_E_NOMEM, "stc cache: out of memory");
    const svlm_mmproj_hparams *hp = &vc->m->hp;
    c->vc = vc;
    c->ctl = *ctl;
    c->S = hp->image_size;
    c->p = hp->patch_size;
    c->g = c->S / c->p;
    c->N = hp->n_patches;
    c->D = hp->n_embd;
    c->T = hp->tokens_per_tile;
    c->E = hp->proj_dim;
    c->n_layer = hp->n_layer;
    c->nb = c->p % BLOCKS_PER_SIDE == 0 ? BLOCKS_PER_SIDE : 1;
    c->desc_len = 3 * c->nb * c->nb;
    size_t N = (size_t)c->N, ND = N * (size_t)c->D, dl = N * (size_t)c->desc_len;
    int ok = (c->desc = malloc(sizeof(float) * dl)) && (c->ref_desc = malloc(sizeof(float) * dl)) &&
             (c->prev_desc = malloc(sizeof(float) * dl)) && (c->change = malloc(sizeof(float) * N)) &&
             (c->ga = malloc(sizeof(float) * dl)) && (c->gb = malloc(sizeof(float) * dl)) &&
             (c->resid = malloc(sizeof(float) * dl)) && (c->mask = malloc(N)) && (c->grown = malloc(N)) &&
             (c->idx = malloc(sizeof(int32_t) * N)) &&
             (c->ref_out = malloc(sizeof(float) * (size_t)c->T * (size_t)c->E)) &&
             (c->ref_k = calloc((size_t)c->n_layer, sizeof(float *))) &&
             (c->ref_v = calloc((size_t)c->n_layer, sizeof(float *)));
    if (ok && ctl->cache)
        ok = (c->ref_enc = svlm_k_alloc(vc->k, sizeof(float) * ND)) &&
             (c->save_k = svlm_k_alloc(vc->k, sizeof(float) * ND)) &&
             (c->save_v = svlm_k_alloc(vc->k, sizeof(float) * ND)) &&
             (c->rows_host = calloc((2 * (size_t)c->n_layer + 1) * N, sizeof(void *))) &&
             (c->rows_k = svlm_k_alloc(vc->k, (2 * (size_t)c->n_layer + 1) * N * sizeof(void *)));
    for (int l = 0; ok && l < c->n_layer && ctl->cache; l++)
        ok = (c->ref_k[l] = svlm_k_alloc(vc->k, sizeof(float) * ND)) &&
             (c->ref_v[l] = svlm_k_alloc(vc->k, sizeof(float) * ND));
    if (!ok) {
        svlm_stc_cache_free(c);
        return svlm_fail(err, SVLM_E_NOMEM, "stc cache: out of memory for the reference state");
    }
    *out = c;
    return SVLM_OK;
}

void svlm_stc_cache_reset(svlm_stc_cache *c) {
    c->has_ref = c->has_prev = 0;
    c->frames_on_ref = 0;
}

/* Per patch: the mean of each channel over each (p/nb)^2 block. */
static void summarise(const svlm_stc_cache *c, const float *px, float *desc) {
    int bs = c->p / c->nb;
    size_t plane = (size_t)c->S * c->S;
    float inv = 1.0f / (float)(bs * bs);
    for (int pi = 0; pi < c->N; pi++) {
        int py = pi / c->g, pxl = pi % c->g;
        float *d = desc + (size_t)pi * c->desc_len;
        for (int ch = 0; ch < 3; ch++)
            for (int by = 0; by < c->nb; by++)
                for (int bx = 0; bx < c->nb; bx++) {
                    const float *src = px + ch * plane + (size_t)(py * c->p + by * bs) * c->S +
                                       (size_t)(pxl * c->p + bx * bs);
                    float s = 0;
                    for (int y = 0; y < bs; y++)
                        for (int x = 0; x < bs; x++)
                            s += src[(size_t)y * c->S + x];
                    *d++ = s * inv;
                }
    }
}

/* Mean |a - (gain * b + offset)| per channel over the patch's summary. */
static float patch_change(const svlm_stc_cache *c, const float *a, const float *b, const float fit[6],
                          int pi) {
    const float *x = a + (size_t)pi * c->desc_len, *y = b + (size_t)pi * c->desc_len;
    int per_ch = c->nb * c->nb;
    float s = 0;
    for (int i = 0; i < c->desc_len; i++) {
        int ch = i / per_ch;
        s += fabsf(x[i] - fit[2 * ch] * y[i] - fit[2 * ch + 1]);
    }
    return s / (float)c->desc_len;
}

static int cmp_float(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Least squares a[i] ~ gain * b[i] + offset over the i whose |residual| under `prev` is at
 * most cap (all of them when prev is NULL). A flat picture gets an offset only. */
static void fit_affine(const float *a, const float *b, size_t n, const float *prev, float cap, float out[2]) {
    double sb = 0, sa = 0, sbb = 0, sab = 0, k = 0;
    for (size_t i = 0; i < n; i++) {
        double x = b[i], y = a[i];
        if (prev && fabs(y - prev[0] * x - prev[1]) > cap) continue;
        sb += x, sa += y, sbb += x * x, sab += x * y, k++;
    }
    double var = k * sbb - sb * sb;
    out[0] = k >= 2 && var > 1e-9 * k * k ? (float)((k * sab - sb * sa) / var) : 1.0f;
    out[1] = k > 0 ? (float)((sa - out[0] * sb) / k) : 0.0f;
}

/* The picture-wide exposure / white-balance change from b to a: per channel a gain and offset
 * fitted over every block mean, then refitted without the half of the blocks that fit worst
 * (the moving ones). Measuring change after removing it keeps auto-exposure from looking like
 * motion; what it removed (returned: the mean change the fit explains) still counts as drift. */
static float global_fit(svlm_stc_cache *c, const float *a, const float *b, float fit[6]) {
    int per_ch = c->nb * c->nb;
    size_t n = (size_t)c->N * (size_t)per_ch;
    double explained = 0; /* mean |fitted change| over every block of every channel */
    for (int ch = 0; ch < 3; ch++) {
        for (int pi = 0; pi < c->N; pi++) {
            size_t src = (size_t)pi * c->desc_len + (size_t)ch * per_ch, dst = (size_t)pi * per_ch;
            memcpy(c->ga + dst, a + src, sizeof(float) * (size_t)per_ch);
            memcpy(c->gb + dst, b + src, sizeof(float) * (size_t)per_ch);
        }
        float first[2];
        fit_affine(c->ga, c->gb, n, NULL, 0, first);
        for (size_t i = 0; i < n; i++)
            c->resid[i] = fabsf(c->ga[i] - first[0] * c->gb[i] - first[1]);
        qsort(c->resid, n, sizeof(float), cmp_float);
        float *f = fit + 2 * ch;
        fit_affine(c->ga, c->gb, n, first, c->resid[n / 2], f);
        for (size_t i = 0; i < n; i++)
            explained += fabsf((f[0] - 1.0f) * c->gb[i] + f[1]);
    }
    return (float)(explained / (3.0 * (double)n));
}

/* Per channel, the share of block means in each of HIST_BINS bins over [-1, 1] (normalised
 * pixels; values outside are clamped into the end bins). */
static void colour_hist(const svlm_stc_cache *c, const float *desc, float *hist) {
    int per_ch = c->nb * c->nb;
    memset(hist, 0, sizeof(float) * 3 * HIST_BINS);
    float w = 1.0f / (float)(c->N * per_ch);
    for (int pi = 0; pi < c->N; pi++)
        for (int i = 0; i < c->desc_len; i++) {
            int bin = (int)floorf((desc[(size_t)pi * c->desc_len + i] + 1.0f) * 0.5f * HIST_BINS);
            bin = bin < 0 ? 0 : bin >= HIST_BINS ? HIST_BINS - 1 : bin;
            hist[(i / per_ch) * HIST_BINS + bin] += w;
        }
}

/* Half the L1 distance of the histograms, averaged over channels: 0 same colours, 1 disjoint. */
static float hist_distance(const float *a, const float *b) {
    float s = 0;
    for (int i = 0; i < 3 * HIST_BINS; i++)
        s += fabsf(a[i] - b[i]);
    return s / 6.0f;
}

/* Grows the dynamic mask by ctl.dilate patches (square neighbourhood); returns the count. */
static int dynamic_set(svlm_stc_cache *c) {
    int r = c->ctl.dilate, g = c->g, n = 0;
    for (int i = 0; i < c->N; i++)
        c->mask[i] = c->change[i] > c->ctl.change_threshold;
    memcpy(c->grown, c->mask, (size_t)c->N);
    if (r > 0)
        for (int i = 0; i < c->N; i++) {
            if (!c->mask[i]) continue;
            int y = i / g, x = i % g;
            for (int yy = y - r; yy <= y + r; yy++)
                for (int xx = x - r; xx <= x + r; xx++)
                    if (yy >= 0 && yy < g && xx >= 0 && xx < g) c->grown[yy * g + xx] = 1;
        }
    for (int i = 0; i < c->N; i++)
        if (c->grown[i]) c->idx[n++] = i;
    return n;
}

/* A full pass that also becomes the reference (keys/values captured by the blocks). */
static void full_pass(svlm_stc_cache *c, const float *pixels, const float *desc, float *out) {
    svlm_vision_ctx *vc = c->vc;
    size_t ND = (size_t)c->N * c->D, TE = (size_t)c->T * c->E;
    if (c->ctl.cache) {
        vc->save_k = c->ref_k;
        vc->save_v = c->ref_v;
    }
    svlm_siglip_forward(vc, pixels, 1);
    vc->save_k = vc->save_v = NULL;
    svlm_connector_forward(vc, 1);
    svlm_k_copy(vc->k, out, vc->proj, sizeof(float) * TE);
    if (!c->ctl.cache) return;
    svlm_k_copy(vc->k, c->ref_enc, vc->x, sizeof(float) * ND);
    memcpy(c->ref_out, out, sizeof(float) * TE);
    memcpy(c->ref_desc, desc, sizeof(float) * (size_t)c->N * c->desc_len);
    c->has_ref = 1;
    c->frames_on_ref = 0;
}

/* Only the m dynamic patches through every block; static ones keep the reference's outputs. Each
 * layer's dynamic keys and values stand in for the reference's rows during its attention (the
 * reference rows saved and put back): row gathers and stores on the kernels' side, O(m) rows, as
 * a GPU's buffers must not be looped over on the host (that would move their pages each time). */
static void partial_pass(svlm_stc_cache *c, const float *pixels, int m, float *out) {
    svlm_vision_ctx *vc = c->vc;
    svlm_kernels *k = vc->k;
    const svlm_mmproj_hparams *hp = &vc->m->hp;
    const int D = c->D, L = c->n_layer;
    for (int il = 0; il < L; il++) /* dynamic row i's place in layer il's reference keys, values */
        for (int i = 0; i < m; i++) {
            const size_t at = (size_t)c->idx[i] * D;
            c->rows_host[(size_t)(2 * il) * m + i] = c->ref_k[il] + at;
            c->rows_host[(size_t)(2 * il + 1) * m + i] = c->ref_v[il] + at;
        }
    for (int i = 0; i < m; i++) /* and in the residual stream */
        c->rows_host[(size_t)(2 * L) * m + i] = vc->x + (size_t)c->idx[i] * D;
    svlm_k_copy(k, c->rows_k, c->rows_host, sizeof(void *) * (2 * (size_t)L + 1) * (size_t)m);
    svlm_siglip_embed_rows(vc, pixels, c->idx, m, vc->x);
    for (int il = 0; il < L; il++) {
        void *const *to_k = c->rows_k + (size_t)(2 * il) * m, *const *to_v = to_k + m;
        svlm_siglip_attn_in(vc, il, vc->x, m);
        svlm_k_gather_rows(k, c->save_k, c->ref_k[il], c->idx, m, D);
        svlm_k_gather_rows(k, c->save_v, c->ref_v[il], c->idx, m, D);
        svlm_k_store_rows(k, to_k, SVLM_F32, vc->kk, m, D);
        svlm_k_store_rows(k, to_v, SVLM_F32, vc->v, m, D);
        svlm_siglip_attention(vc, vc->q, c->ref_k[il], c->ref_v[il], m, c->N, vc->attn);
        svlm_k_store_rows(k, to_k, SVLM_F32, c->save_k, m, D);
        svlm_k_store_rows(k, to_v, SVLM_F32, c->save_v, m, D);
        svlm_siglip_attn_out_ffn(vc, il, vc->x, m);
    }
    svlm_k_layernorm(k, vc->x, vc->m->post_ln_w, vc->m->post_ln_b, vc->x, m, D, hp->eps);
    /* vc->x = the reference output with the dynamic rows replaced (q holds the new rows meanwhile) */
    svlm_k_copy(k, vc->q, vc->x, sizeof(float) * (size_t)m * D);
    svlm_k_copy(k, vc->x, c->ref_enc, sizeof(float) * (size_t)c->N * D);
    svlm_k_store_rows(k, c->rows_k + (size_t)(2 * L) * m, SVLM_F32, vc->q, m, D);
    svlm_connector_forward(vc, 1);
    svlm_k_copy(k, out, vc->proj, sizeof(float) * (size_t)c->T * c->E);
}

svlm_status svlm_stc_cache_encode(svlm_stc_cache *c, const float *pixels, float *out,
                                  svlm_stc_frame_info *info, svlm_err *err) {
    if (!c || !pixels || !out || !info) return svlm_fail(err, SVLM_E_INVALID, "stc cache: bad arguments");
    memset(info, 0, sizeof *info);
    info->n_patches = c->N;
    info->n_tokens = c->T;
    summarise(c, pixels, c->desc);
    colour_hist(c, c->desc, c->hist);

    if (c->has_prev) { /* a cut: most of the picture changed since the previous frame */
        int changed = 0;
        float fit[6];
        global_fit(c, c->desc, c->prev_desc, fit);
        double sum = 0;
        for (int i = 0; i < c->N; i++) {
            float d = patch_change(c, c->desc, c->prev_desc, fit, i);
            changed += d > c->ctl.change_threshold;
            sum += d;
        }
        info->changed_vs_prev = (float)changed / (float)c->N;
        info->change_vs_prev = (float)(sum / c->N);
        info->colour_change = hist_distance(c->hist, c->prev_hist);
        /* camera motion changes most patches too, but keeps the colours; a cut changes both */
        info->cut = info->changed_vs_prev > c->ctl.cut_ratio && info->colour_change > c->ctl.cut_colour;
    }
    float *t = c->prev_desc; /* the current summary becomes the previous one */
    c->prev_desc = c->desc;
    c->desc = t;
    memcpy(c->prev_hist, c->hist, sizeof c->hist);
    c->has_prev = 1;
    const float *desc = c->prev_desc;

    svlm_stc_reason why = SVLM_STC_NO_REFRESH;
    int m = 0;
    if (!c->ctl.cache)
        why = SVLM_STC_UNCACHED;
    else if (!c->has_ref)
        why = SVLM_STC_FIRST;
    else if (info->cut)
        why = SVLM_STC_CUT;
    else if (c->ctl.refresh_interval > 0 && c->frames_on_ref >= c->ctl.refresh_interval)
        why = SVLM_STC_SCHEDULE;
    else {
        float fit[6];
        float expo = global_fit(c, desc, c->ref_desc, fit);
        for (int i = 0; i < c->N; i++)
            c->change[i] = patch_change(c, desc, c->ref_desc, fit, i);
        m = dynamic_set(c);
        double residual = 0;
        int n_static = 0;
        for (int i = 0; i < c->N; i++)
            if (!c->mask[i]) {
                residual += c->change[i];
                n_static++;
            }
        /* what reusing the static patches ignores: the exposure change plus their own small changes */
        info->drift = expo + (n_static ? (float)(residual / n_static) : 0.0f);
        if (info->drift > c->ctl.drift_threshold)
            why = SVLM_STC_DRIFT;
        else if ((float)m > c->ctl.max_dynamic * (float)c->N)
            why = SVLM_STC_DYNAMIC;
    }

    if (why != SVLM_STC_NO_REFRESH) {
        full_pass(c, pixels, desc, out);
        info->path = SVLM_STC_FULL;
        info->reason = why;
        info->n_recomputed = c->N;
        return SVLM_OK;
    }
    c->frames_on_ref++;
    if (m == 0) {
        memcpy(out, c->ref_out, sizeof(float) * (size_t)c->T * c->E);
        info->path = SVLM_STC_REUSED;
        return SVLM_OK;
    }
    partial_pass(c, pixels, m, out);
    info->path = SVLM_STC_PARTIAL;
    info->n_recomputed = m;
    return SVLM_OK;
}
