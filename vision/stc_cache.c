/* The STC feature cache: change detection, reference refresh, and the partial encoder pass. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "common/select.h"
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
    /* the plan for the frame svlm_stc_cache_plan saw, which svlm_stc_cache_run carries out */
    int planned, m;
    svlm_stc_reason why;
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
    if (c->ref_enc) svlm_k_free(c->vc->k, c->ref_enc);
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
    /* 4 x 4 blocks whatever the patch (14-px ones too: blocks of 3 and 4 px); one block for a
     * 14-px patch saw only its mean colour, and motion inside it reused stale features */
    c->nb = c->p < BLOCKS_PER_SIDE ? c->p : BLOCKS_PER_SIDE;
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
    if (ok && ctl->cache) ok = (c->ref_enc = svlm_k_alloc(vc->k, sizeof(float) * ND)) != NULL;
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
    c->planned = 0;
}

/* Per patch: the mean of each channel over each of its nb x nb blocks. Block edges fall at
 * b * p / nb: equal blocks when nb divides p (16-px patches: 4 px), else within a pixel of each
 * other (14 px: 3, 4, 3, 4). */
static void summarise(const svlm_stc_cache *c, const float *px, float *desc) {
    size_t plane = (size_t)c->S * c->S;
    for (int pi = 0; pi < c->N; pi++) {
        int py = pi / c->g, pxl = pi % c->g;
        float *d = desc + (size_t)pi * c->desc_len;
        for (int ch = 0; ch < 3; ch++)
            for (int by = 0; by < c->nb; by++)
                for (int bx = 0; bx < c->nb; bx++) {
                    const int y0 = by * c->p / c->nb, h = (by + 1) * c->p / c->nb - y0;
                    const int x0 = bx * c->p / c->nb, w = (bx + 1) * c->p / c->nb - x0;
                    const float *src =
                        px + ch * plane + (size_t)(py * c->p + y0) * c->S + (size_t)(pxl * c->p + x0);
                    float s = 0;
                    for (int y = 0; y < h; y++)
                        for (int x = 0; x < w; x++)
                            s += src[(size_t)y * c->S + x];
                    *d++ = s * (1.0f / (float)(h * w));
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
        const float median = svlm_nth_smallest(c->resid, n, n / 2); /* (a sort cost 1 ms a channel) */
        float *f = fit + 2 * ch;
        fit_affine(c->ga, c->gb, n, first, median, f);
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

/* ---- the plan: what a frame needs, decided on the host ------------------------------------ */

void svlm_stc_cache_plan(svlm_stc_cache *c, const float *pixels, svlm_stc_frame_info *info) {
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
    c->why = why;
    c->m = m;
    c->planned = 1;
    if (why != SVLM_STC_NO_REFRESH) { /* the run makes the frame the reference, once computed */
        info->path = SVLM_STC_FULL;
        info->reason = why;
        info->n_recomputed = c->N;
        return;
    }
    c->frames_on_ref++;
    info->path = m == 0 ? SVLM_STC_REUSED : SVLM_STC_PARTIAL;
    info->n_recomputed = m;
}

/* ---- the run: the planned frames of several streams as one batch ---------------------------- */

/* Full passes, which become their streams' references (keys, values and outputs kept), as one
 * batch of the encoder: the tiles gathered when they are not already side by side. */
static void run_full(svlm_stc_cache *const *cs, const int *which, int nf, const float *pixels, float *out) {
    svlm_vision_ctx *vc = cs[which[0]]->vc;
    svlm_kernels *k = vc->k;
    const svlm_stc_cache *c0 = cs[which[0]];
    const size_t tile = (size_t)3 * c0->S * c0->S, ND = (size_t)c0->N * c0->D, TE = (size_t)c0->T * c0->E;
    int side_by_side = 1;
    for (int j = 1; j < nf; j++)
        side_by_side &= which[j] == which[0] + j;
    const float *px = pixels + (size_t)which[0] * tile;
    if (!side_by_side) {
        if (vc->stage_tiles < nf) {
            svlm_k_free_host(k, vc->stage);
            vc->stage = svlm_k_alloc_host(k, sizeof(float) * tile * (size_t)nf);
            vc->stage_tiles = vc->stage ? nf : 0;
        }
        if (!vc->stage) { /* no room to gather them: one at a time */
            for (int j = 0; j < nf; j++)
                run_full(cs, &which[j], 1, pixels, out);
            return;
        }
        for (int j = 0; j < nf; j++)
            memcpy(vc->stage + (size_t)j * tile, pixels + (size_t)which[j] * tile, sizeof(float) * tile);
        px = vc->stage;
    }
    float *const *save_k[SVLM_VISION_MAX_BATCH], *const *save_v[SVLM_VISION_MAX_BATCH];
    for (int j = 0; j < nf; j++) {
        const svlm_stc_cache *c = cs[which[j]];
        save_k[j] = c->ctl.cache ? c->ref_k : NULL;
        save_v[j] = c->ctl.cache ? c->ref_v : NULL;
    }
    vc->save_k = save_k;
    vc->save_v = save_v;
    svlm_siglip_forward(vc, px, nf);
    vc->save_k = vc->save_v = NULL;
    svlm_connector_forward(vc, nf);
    for (int j = 0; j < nf; j++) {
        svlm_stc_cache *c = cs[which[j]];
        float *o = out + (size_t)which[j] * TE;
        svlm_k_copy(k, o, vc->proj + (size_t)j * TE, sizeof(float) * TE);
        if (!c->ctl.cache) continue;
        svlm_k_copy(k, c->ref_enc, vc->x + (size_t)j * ND, sizeof(float) * ND);
        memcpy(c->ref_out, o, sizeof(float) * TE);
        /* the frame is the reference now (its summary: the plan's, still prev_desc) */
        memcpy(c->ref_desc, c->prev_desc, sizeof(float) * (size_t)c->N * c->desc_len);
        c->has_ref = 1;
        c->frames_on_ref = 0;
    }
}

/* Room for n row pointers in the context's tables. */
static int rows_room(svlm_vision_ctx *vc, size_t n) {
    if (vc->rows_cap >= n) return 1;
    if (vc->rows_k) svlm_k_free(vc->k, vc->rows_k);
    free(vc->rows_host);
    vc->rows_host = malloc(n * sizeof(void *));
    vc->rows_k = svlm_k_alloc(vc->k, n * sizeof(void *));
    vc->rows_cap = vc->rows_host && vc->rows_k ? n : 0;
    return vc->rows_cap != 0;
}

/* Partial passes: only the dynamic patches of every stream, together (rows of the streams one
 * after another), through every block; static ones keep their references' outputs. In each layer
 * a stream's dynamic keys and values stand in for its reference's rows during its attention (the
 * reference rows saved and put back): row gathers and stores on the kernels' side, O(m) rows, as a
 * GPU's buffers must not be looped over on the host (that would move their pages each time). */
static svlm_status run_partial(svlm_stc_cache *const *cs, const int *which, int np, const float *pixels,
                               float *out, svlm_err *err) {
    svlm_vision_ctx *vc = cs[which[0]]->vc;
    svlm_kernels *k = vc->k;
    const svlm_mmproj_hparams *hp = &vc->m->hp;
    const int64_t D = hp->n_embd, N = hp->n_patches, L = hp->n_layer;
    const size_t TE = (size_t)hp->tokens_per_tile * (size_t)hp->proj_dim;
    int64_t off[SVLM_VISION_MAX_BATCH], M = 0;
    for (int j = 0; j < np; j++) {
        off[j] = M;
        M += cs[which[j]]->m;
    }
    int32_t *tile = malloc(sizeof(int32_t) * 2 * (size_t)M), *idx = tile ? tile + M : NULL;
    if (!tile || !rows_room(vc, (size_t)(2 * L + 1) * (size_t)M)) {
        free(tile);
        return svlm_fail(err, SVLM_E_NOMEM, "stc: out of memory for the row tables of %lld patches",
                         (long long)M);
    }
    void **rh = vc->rows_host;
    for (int j = 0; j < np; j++) { /* where each dynamic row goes: its layers' keys and values, then x */
        const svlm_stc_cache *c = cs[which[j]];
        for (int r = 0; r < c->m; r++) {
            const int64_t row = off[j] + r;
            const size_t at = (size_t)c->idx[r] * (size_t)D;
            for (int64_t il = 0; il < L; il++) {
                rh[(2 * il) * M + row] = c->ref_k[il] + at;
                rh[(2 * il + 1) * M + row] = c->ref_v[il] + at;
            }
            rh[2 * L * M + row] = vc->x + ((size_t)j * (size_t)N + (size_t)c->idx[r]) * (size_t)D;
            tile[row] = which[j];
            idx[row] = c->idx[r];
        }
    }
    svlm_k_copy(k, vc->rows_k, rh, sizeof(void *) * (size_t)(2 * L + 1) * (size_t)M);
    svlm_siglip_embed_rows(vc, pixels, tile, idx, M, vc->x);
    free(tile);
    /* the reference rows wait in scratch nothing uses between a layer's first half and its second
     * (h: the normed rows; shuf: the connector's, [B*N][D] as well) */
    float *save_k = vc->h, *save_v = vc->shuf;
    for (int64_t il = 0; il < L; il++) {
        void *const *to_k = vc->rows_k + (size_t)(2 * il) * (size_t)M, *const *to_v = to_k + M;
        svlm_siglip_attn_in(vc, (int)il, vc->x, M);
        for (int j = 0; j < np; j++) {
            const svlm_stc_cache *c = cs[which[j]];
            svlm_k_gather_rows(k, save_k + off[j] * D, c->ref_k[il], c->idx, c->m, D);
            svlm_k_gather_rows(k, save_v + off[j] * D, c->ref_v[il], c->idx, c->m, D);
        }
        svlm_k_store_rows(k, to_k, SVLM_F32, vc->kk, M, D);
        svlm_k_store_rows(k, to_v, SVLM_F32, vc->v, M, D);
        svlm_siglip_part parts[SVLM_VISION_MAX_BATCH];
        for (int j = 0; j < np; j++) {
            const svlm_stc_cache *c = cs[which[j]];
            parts[j] = (svlm_siglip_part){vc->q + off[j] * D, c->ref_k[il], c->ref_v[il],
                                          vc->attn + off[j] * D, c->m};
        }
        svlm_siglip_attention_parts(vc, parts, np, N);
        svlm_k_store_rows(k, to_k, SVLM_F32, save_k, M, D);
        svlm_k_store_rows(k, to_v, SVLM_F32, save_v, M, D);
        svlm_siglip_attn_out_ffn(vc, (int)il, vc->x, M);
    }
    svlm_k_layernorm(k, vc->x, vc->m->post_ln_w, vc->m->post_ln_b, vc->x, M, D, hp->eps);
    /* each tile of x = its reference's output with its dynamic rows replaced (q holds the new rows
     * meanwhile) */
    svlm_k_copy(k, vc->q, vc->x, sizeof(float) * (size_t)(M * D));
    for (int j = 0; j < np; j++)
        svlm_k_copy(k, vc->x + (size_t)j * (size_t)(N * D), cs[which[j]]->ref_enc,
                    sizeof(float) * (size_t)(N * D));
    svlm_k_store_rows(k, vc->rows_k + (size_t)(2 * L) * (size_t)M, SVLM_F32, vc->q, M, D);
    svlm_connector_forward(vc, np);
    for (int j = 0; j < np; j++)
        svlm_k_copy(k, out + (size_t)which[j] * TE, vc->proj + (size_t)j * TE, sizeof(float) * TE);
    return SVLM_OK;
}

svlm_status svlm_stc_cache_run(svlm_stc_cache *const *cs, int n, const float *pixels, float *out,
                               svlm_err *err) {
    if (!cs || n < 1 || !cs[0] || !pixels || !out)
        return svlm_fail(err, SVLM_E_INVALID, "stc cache: bad arguments");
    svlm_vision_ctx *vc = cs[0]->vc;
    if (n > vc->max_batch)
        return svlm_fail(err, SVLM_E_INVALID, "stc cache: %d frames in one run; the vision context takes %d",
                         n, vc->max_batch);
    int full[SVLM_VISION_MAX_BATCH], part[SVLM_VISION_MAX_BATCH], nf = 0, np = 0;
    for (int i = 0; i < n; i++) {
        if (!cs[i] || cs[i]->vc != vc || !cs[i]->planned)
            return svlm_fail(err, SVLM_E_INVALID,
                             "stc cache: frame %d of the run has no plan on this vision context", i);
        for (int j = 0; j < i; j++)
            if (cs[j] == cs[i])
                return svlm_fail(err, SVLM_E_INVALID,
                                 "stc cache: one stream twice in a run (frames %d and %d)", j, i);
    }
    const size_t TE = (size_t)cs[0]->T * (size_t)cs[0]->E;
    for (int i = 0; i < n; i++) {
        svlm_stc_cache *c = cs[i];
        c->planned = 0;
        if (c->why != SVLM_STC_NO_REFRESH)
            full[nf++] = i;
        else if (c->m == 0)
            memcpy(out + (size_t)i * TE, c->ref_out, sizeof(float) * TE);
        else
            part[np++] = i;
    }
    svlm_status st = SVLM_OK;
    svlm_k_defer(vc->k, 1);
    if (nf) run_full(cs, full, nf, pixels, out);
    if (np) st = run_partial(cs, part, np, pixels, out, err);
    svlm_k_defer(vc->k, 0);
    return st;
}

svlm_status svlm_stc_cache_encode(svlm_stc_cache *c, const float *pixels, float *out,
                                  svlm_stc_frame_info *info, svlm_err *err) {
    if (!c || !pixels || !out || !info) return svlm_fail(err, SVLM_E_INVALID, "stc cache: bad arguments");
    svlm_stc_cache_plan(c, pixels, info);
    return svlm_stc_cache_run(&c, 1, pixels, out, err);
}
