/* STC controls (defaults, setting by name) and the per-stream cache + pruner pair. */
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "vision/encoder_internal.h"
#include "vision/stc.h"
#include "vision/stc_cache.h"
#include "vision/stc_prune.h"

/* Tuned on the fixed-camera recordings (docs/stc.md). */
void svlm_stc_controls_default(svlm_stc_controls *c) {
    *c = (svlm_stc_controls){
        .enabled = 1,
        .cache = 1,
        .change_threshold = 0.05f,
        .dilate = 0,
        .max_dynamic = 0.5f,
        .cut_ratio = 0.5f,
        .cut_colour = 0.175f,
        .drift_threshold = 0.04f,
        .refresh_interval = 32,
        .prune = 1,
        .keep_ratio = 0.4f,
        .keep_count = 0,
        .keep_floor = 4,
        .keyframe_ratio = 1.0f,
        .redundant = 1e-3f,
        .spatial_weight = 0.5f,
        .temporal_weight = 1.0f,
        .novelty_floor = 0.05f,
    };
}

void svlm_stc_controls_off(svlm_stc_controls *c) {
    svlm_stc_controls_default(c);
    c->enabled = c->cache = c->prune = 0;
}

typedef svlm_stc_control_desc control;
#define INT_CTL(n, field, lo, hi, help)                                                                      \
    { n, help, 1, lo, hi, offsetof(svlm_stc_controls, field) }
#define FLT_CTL(n, field, lo, hi, help)                                                                      \
    { n, help, 0, lo, hi, offsetof(svlm_stc_controls, field) }
static const control controls[] = {
    INT_CTL("cache", cache, 0, 1, "feature cache on (1) or off (0)"),
    FLT_CTL("change-threshold", change_threshold, 0, 2,
            "patch change (normalised pixel units) that makes a patch dynamic"),
    INT_CTL("dilate", dilate, 0, 8, "grow the dynamic set by this many patches"),
    FLT_CTL("max-dynamic", max_dynamic, 0, 1,
            "share of dynamic patches above which the frame is recomputed in full"),
    FLT_CTL("cut-ratio", cut_ratio, 0, 1,
            "share of patches changed since the previous frame that is a scene cut"),
    FLT_CTL("cut-colour", cut_colour, 0, 1, "colour-histogram distance that a scene cut also needs"),
    FLT_CTL("drift-threshold", drift_threshold, 0, 2,
            "mean change of static patches vs the reference that forces a refresh"),
    INT_CTL("refresh-interval", refresh_interval, 0, 1000000,
            "refresh the reference after this many frames (0: never)"),
    INT_CTL("prune", prune, 0, 1, "token pruner on (1) or off (0)"),
    FLT_CTL("keep-ratio", keep_ratio, 0, 1, "share of a frame's tokens handed to the decoder"),
    INT_CTL("keep-count", keep_count, 0, 1000000,
            "tokens per frame handed to the decoder (0: use keep-ratio)"),
    INT_CTL("keep-floor", keep_floor, 0, 1000000, "never fewer tokens per frame than this"),
    FLT_CTL("keyframe-ratio", keyframe_ratio, 0, 1, "share kept on the first frame and on scene cuts"),
    FLT_CTL("redundant", redundant, 0, 2,
            "novelty (cosine distance) under which a token is dropped within the budget"),
    FLT_CTL("spatial-weight", spatial_weight, 0, 100, "weight of spatial salience in the token score"),
    FLT_CTL("temporal-weight", temporal_weight, 0, 100, "weight of temporal novelty in the token score"),
    FLT_CTL("novelty-floor", novelty_floor, 0, 2, "novelty scale below which changes count as noise"),
};
#define N_CONTROLS ((int)(sizeof controls / sizeof controls[0]))

const svlm_stc_control_desc *svlm_stc_control_list(int *n) {
    *n = N_CONTROLS;
    return controls;
}

static const control *find(const char *name) {
    char canon[64];
    size_t len = strlen(name);
    if (len >= sizeof canon) return NULL;
    for (size_t i = 0; i <= len; i++)
        canon[i] = name[i] == '_' ? '-' : name[i];
    for (int i = 0; i < N_CONTROLS; i++)
        if (!strcmp(canon, controls[i].name)) return &controls[i];
    return NULL;
}

double svlm_stc_control_get(const svlm_stc_controls *c, const char *name) {
    if (!strcmp(name, "stc")) return c->enabled;
    const control *k = find(name);
    if (!k) return NAN;
    const char *p = (const char *)c + k->offset;
    return k->is_int ? (double)*(const int *)p : (double)*(const float *)p;
}

svlm_status svlm_stc_control_set(svlm_stc_controls *c, const char *name, const char *value, svlm_err *err) {
    if (!name || !value) return svlm_fail(err, SVLM_E_INVALID, "stc: a control needs a name and a value");
    if (!strcmp(name, "stc")) {
        if (!strcmp(value, "on") || !strcmp(value, "1") || !strcmp(value, "true"))
            c->enabled = 1;
        else if (!strcmp(value, "off") || !strcmp(value, "0") || !strcmp(value, "false"))
            c->enabled = 0;
        else
            return svlm_fail(err, SVLM_E_INVALID, "stc: expects on or off, not '%s'", value);
        return SVLM_OK;
    }
    const control *k = find(name);
    if (!k) return svlm_fail(err, SVLM_E_INVALID, "stc: unknown control '%s'", name);
    char *end = NULL;
    double v = strtod(value, &end);
    if (!*value || *end || !isfinite(v) || v < k->lo || v > k->hi || (k->is_int && v != floor(v)))
        return svlm_fail(err, SVLM_E_INVALID, "stc: %s expects %s from %g to %g, not '%s'", k->name,
                         k->is_int ? "an integer" : "a number", k->lo, k->hi, value);
    char *p = (char *)c + k->offset;
    if (k->is_int)
        *(int *)p = (int)v;
    else
        *(float *)p = (float)v;
    return SVLM_OK;
}

const char *svlm_stc_reason_name(svlm_stc_reason r) {
    static const char *names[] = {"none", "first", "cut", "drift", "schedule", "dynamic", "uncached"};
    return r >= 0 && r <= SVLM_STC_UNCACHED ? names[r] : "?";
}

/* ---- one stream ---------------------------------------------------------------------------- */

struct svlm_stc {
    svlm_vision_ctx *vc;
    svlm_stc_controls ctl;
    svlm_stc_cache *cache;
    svlm_stc_pruner *pruner;
};

svlm_status svlm_stc_create(svlm_vision_ctx *vc, const svlm_stc_controls *ctl, svlm_stc **out,
                            svlm_err *err) {
    *out = NULL;
    if (!vc || !ctl) return svlm_fail(err, SVLM_E_INVALID, "stc: bad arguments");
    svlm_stc *s = calloc(1, sizeof *s);
    if (!s) return svlm_fail(err, SVLM_E_NOMEM, "stc: out of memory");
    s->vc = vc;
    s->ctl = *ctl;
    const svlm_mmproj_hparams *hp = &vc->m->hp;
    int gt = hp->image_size / hp->patch_size / hp->scale_factor; /* connector grid side */
    svlm_status st = SVLM_OK;
    if (ctl->enabled) st = svlm_stc_cache_create(vc, ctl, &s->cache, err);
    if (!st && ctl->enabled && ctl->prune)
        st = svlm_stc_pruner_create(ctl, gt, gt, hp->proj_dim, &s->pruner, err);
    if (st) {
        svlm_stc_free(s);
        return st;
    }
    *out = s;
    return SVLM_OK;
}

void svlm_stc_free(svlm_stc *s) {
    if (!s) return;
    svlm_stc_cache_free(s->cache);
    svlm_stc_pruner_free(s->pruner);
    free(s);
}

void svlm_stc_reset(svlm_stc *s) {
    if (s->cache) svlm_stc_cache_reset(s->cache);
    if (s->pruner) svlm_stc_pruner_reset(s->pruner);
}

void svlm_stc_set_memory(svlm_stc *s, svlm_stc_memory_fn fn, void *user) {
    if (s->pruner) svlm_stc_pruner_set_memory(s->pruner, fn, user);
}

void svlm_stc_plan(svlm_stc *s, const float *pixels, svlm_stc_frame_info *info) {
    const svlm_mmproj_hparams *hp = &s->vc->m->hp;
    if (s->cache) {
        svlm_stc_cache_plan(s->cache, pixels, info);
        return;
    }
    memset(info, 0, sizeof *info); /* off: exactly the plain encoder, every token */
    info->reason = SVLM_STC_UNCACHED;
    info->n_patches = info->n_recomputed = hp->n_patches;
    info->n_tokens = hp->tokens_per_tile;
}

/* The pruner's choice for one frame, or every token. */
static void keep(svlm_stc *s, float *tokens, int32_t *kept, float *kept_tokens, svlm_stc_frame_info *info) {
    const svlm_mmproj_hparams *hp = &s->vc->m->hp;
    const int T = hp->tokens_per_tile;
    if (s->pruner) {
        info->n_kept = svlm_stc_prune(s->pruner, tokens, info->cut, kept, kept_tokens, NULL);
        return;
    }
    for (int i = 0; i < T; i++)
        kept[i] = i;
    if (kept_tokens) memcpy(kept_tokens, tokens, sizeof(float) * (size_t)T * (size_t)hp->proj_dim);
    info->n_kept = T;
}

svlm_status svlm_stc_run(svlm_stc *const *s, int n, const float *pixels, float *tokens, int32_t *kept,
                         float *kept_tokens, svlm_stc_frame_info *info, svlm_err *err) {
    if (!s || n < 1 || !pixels || !tokens || !kept || !info)
        return svlm_fail(err, SVLM_E_INVALID, "stc run: bad arguments");
    enum { MAX = 256 };
    if (n > MAX) return svlm_fail(err, SVLM_E_INVALID, "stc run: %d frames at once, at most %d", n, MAX);
    for (int i = 0; i < n; i++)
        if (!s[i] || s[i]->vc != s[0]->vc)
            return svlm_fail(err, SVLM_E_INVALID,
                             "stc run: frame %d's stream is missing or on another vision context", i);
    const svlm_mmproj_hparams *hp = &s[0]->vc->m->hp;
    const int T = hp->tokens_per_tile;
    const size_t TE = (size_t)T * (size_t)hp->proj_dim, tile = (size_t)3 * hp->image_size * hp->image_size;
    /* streams with the feature cache go as one batch; any without it, one by one */
    svlm_stc_cache *cs[MAX] = {0};
    int with[MAX], n_with = 0;
    svlm_status st = SVLM_OK;
    for (int i = 0; i < n && !st; i++) {
        if (s[i]->cache)
            with[n_with++] = i;
        else
            st = svlm_vision_encode(s[i]->vc, pixels + (size_t)i * tile, 1, tokens + (size_t)i * TE, err);
    }
    if (!st && n_with == n) { /* the engine's case: in place */
        for (int i = 0; i < n; i++)
            cs[i] = s[i]->cache;
        st = svlm_stc_cache_run(cs, n, pixels, tokens, err);
    } else if (!st && n_with > 0) { /* mixed: the cached ones' tiles and outputs side by side */
        float *px = malloc(sizeof(float) * tile * (size_t)n_with),
              *out = malloc(sizeof(float) * TE * (size_t)n_with);
        if (!px || !out) st = svlm_fail(err, SVLM_E_NOMEM, "stc run: out of memory");
        for (int j = 0; !st && j < n_with; j++) {
            cs[j] = s[with[j]]->cache;
            memcpy(px + (size_t)j * tile, pixels + (size_t)with[j] * tile, sizeof(float) * tile);
        }
        if (!st) st = svlm_stc_cache_run(cs, n_with, px, out, err);
        for (int j = 0; !st && j < n_with; j++)
            memcpy(tokens + (size_t)with[j] * TE, out + (size_t)j * TE, sizeof(float) * TE);
        free(px);
        free(out);
    }
    if (st) return st;
    for (int i = 0; i < n; i++)
        keep(s[i], tokens + (size_t)i * TE, kept + (size_t)i * T,
             kept_tokens ? kept_tokens + (size_t)i * TE : NULL, &info[i]);
    return SVLM_OK;
}

svlm_status svlm_stc_frame(svlm_stc *s, const float *pixels, float *tokens, int32_t *kept, float *kept_tokens,
                           svlm_stc_frame_info *info, svlm_err *err) {
    if (!s || !pixels || !tokens || !kept) return svlm_fail(err, SVLM_E_INVALID, "stc frame: bad arguments");
    svlm_stc_frame_info local;
    if (!info) info = &local;
    svlm_stc_plan(s, pixels, info);
    return svlm_stc_run(&s, 1, pixels, tokens, kept, kept_tokens, info, err);
}
