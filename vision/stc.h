/*
 * Streaming token compression (STC): less encoder work and fewer decoder tokens per video frame.
 *
 *   feature cache (stc_cache.h): a reference frame's per-layer keys/values and outputs are kept;
 *       a new frame recomputes only the patches that changed against it ("dynamic" tokens, which
 *       attend to the cached keys/values of the static ones), reuses the reference outright when
 *       nothing changed, and refreshes the reference on a schedule, on drift and on a scene cut.
 *   pruner (stc_prune.h): after the connector, keeps a per-frame budget of the tokens that are
 *       most salient (unlike their neighbours and the frame mean) and most novel (unlike the
 *       same position in the previous frame and what memory already holds), in their order.
 *
 * svlm_stc ties both to one vision context for one stream. Controls are on by default with the
 * settings tuned in docs/stc.md; `enabled = 0` gives exactly the plain encoder's output with
 * every token kept. Every control can be set by name (CLI flags --stc-NAME, server config keys).
 */
#ifndef SVLM_VISION_STC_H
#define SVLM_VISION_STC_H

#include <stddef.h>
#include <stdint.h>

#include "svlm.h"
#include "vision/encoder.h"

typedef struct svlm_stc_controls {
    int enabled; /* 0: plain encoder, every token kept (bit-identical to svlm_vision_encode);
                    -1: the engine's choice: on for the CPU, off on a GPU (there the encoder is a
                    few ms a frame, batched across streams, and STC's host-side work costs more
                    than it saves); svlm_stc_create takes -1 as on */
    /* feature cache */
    int cache;              /* 0: always a full encoder pass (cut detection still runs for the pruner) */
    float change_threshold; /* a patch is dynamic when its change against the reference exceeds this
                               (mean |difference| of 4x4-pixel block means, normalised pixel units) */
    int dilate;             /* grow the dynamic set by this many patches in each direction */
    float max_dynamic;      /* share of dynamic patches above which the frame is recomputed in full
                               and becomes the new reference */
    float cut_ratio;        /* share of patches changed against the previous frame above which the frame
                               is a scene cut (1: never) ... */
    float cut_colour;       /* ... when its colour histogram also moved this far (0..1) */
    float drift_threshold;  /* mean change of the static patches against the reference that forces a
                               refresh (slow light/exposure change accumulates against a fixed reference) */
    int refresh_interval;   /* refresh after this many frames on the same reference (0: never) */
    /* pruner */
    int prune;            /* 0: every token goes to the decoder */
    float keep_ratio;     /* budget as a share of the frame's tokens (used when keep_count is 0) */
    int keep_count;       /* budget as a token count (0: use keep_ratio) */
    int keep_floor;       /* never fewer tokens than this */
    float keyframe_ratio; /* budget share for the first frame and scene cuts */
    float redundant;      /* tokens whose novelty is below this (cosine distance) are dropped even
                             within the budget, down to the floor */
    float spatial_weight, temporal_weight; /* score = ws * salience/max + wt * novelty/max(max, floor) */
    float novelty_floor;                   /* novelty below this scale counts as noise in the score */
} svlm_stc_controls;

void svlm_stc_controls_default(svlm_stc_controls *c);
/* Everything off: the uncached, unpruned result. */
void svlm_stc_controls_off(svlm_stc_controls *c);

/* Sets control `name` ("change-threshold" or "change_threshold"; "stc" takes on/off) from text.
 * Clear error for an unknown name or a value out of range. */
svlm_status svlm_stc_control_set(svlm_stc_controls *c, const char *name, const char *value, svlm_err *err);

typedef struct svlm_stc_control_desc {
    const char *name; /* dash form */
    const char *help;
    int is_int; /* int field, else float */
    double lo, hi;
    size_t offset; /* of the field in svlm_stc_controls */
} svlm_stc_control_desc;
/* The settable controls, for help texts and config parsers; *n receives the count. */
const svlm_stc_control_desc *svlm_stc_control_list(int *n);
/* Current value of a control by name (NAN when unknown). */
double svlm_stc_control_get(const svlm_stc_controls *c, const char *name);

/* What happened to one frame. */
typedef enum svlm_stc_path { SVLM_STC_FULL = 0, SVLM_STC_PARTIAL, SVLM_STC_REUSED } svlm_stc_path;
typedef enum svlm_stc_reason {
    SVLM_STC_NO_REFRESH = 0,
    SVLM_STC_FIRST,    /* no reference yet */
    SVLM_STC_CUT,      /* scene cut against the previous frame */
    SVLM_STC_DRIFT,    /* static patches drifted from the reference */
    SVLM_STC_SCHEDULE, /* refresh_interval reached */
    SVLM_STC_DYNAMIC,  /* too much of the frame changed */
    SVLM_STC_UNCACHED, /* cache off */
} svlm_stc_reason;
const char *svlm_stc_reason_name(svlm_stc_reason r);

typedef struct svlm_stc_frame_info {
    svlm_stc_path path;
    svlm_stc_reason reason; /* why a full pass ran (path FULL) */
    int cut;                /* a scene cut was detected */
    int n_patches;          /* encoder tokens of the frame */
    int n_recomputed;       /* encoder tokens computed this frame (n_patches for FULL, 0 for REUSED) */
    float changed_vs_prev;  /* share of patches changed against the previous frame */
    float change_vs_prev;   /* mean patch change against the previous frame */
    float colour_change;    /* colour-histogram distance to the previous frame (0..1) */
    float drift;            /* mean change of the static patches against the reference */
    int n_tokens;           /* connector tokens of the frame */
    int n_kept;             /* tokens handed to the decoder */
} svlm_stc_frame_info;

typedef struct svlm_stc svlm_stc;

/* Memory lookup for the pruner: similarity[i] = the highest cosine similarity of token i to what
 * memory holds (-1 or less when memory is empty). Called once per frame, from svlm_stc_frame. */
typedef void (*svlm_stc_memory_fn)(void *user, const float *tokens, int n, int dim, float *similarity);

/* One stream's STC state on the vision context vc (one frame = one tile; vc is not owned and
 * must outlive it, and is used by one thread at a time). */
svlm_status svlm_stc_create(svlm_vision_ctx *vc, const svlm_stc_controls *ctl, svlm_stc **out, svlm_err *err);
void svlm_stc_free(svlm_stc *s);
/* Forget the reference and the previous frame (a new stream or a seek). */
void svlm_stc_reset(svlm_stc *s);
void svlm_stc_set_memory(svlm_stc *s, svlm_stc_memory_fn fn, void *user);

/*
 * Encodes one preprocessed frame (pixels [3][S][S]).
 *   tokens:      [T][E] every connector token of the frame (cached where the frame was static)
 *   kept:        [T] capacity; receives the kept token indices, ascending (their grid positions)
 *   kept_tokens: NULL or [T][E] capacity; receives the kept tokens in order
 *   info:        NULL or what happened (n_kept is the count)
 */
svlm_status svlm_stc_frame(svlm_stc *s, const float *pixels, float *tokens, int32_t *kept, float *kept_tokens,
                           svlm_stc_frame_info *info, svlm_err *err);

/*
 * svlm_stc_frame in two halves, so that frames of many streams share the encoder (a GPU's batch):
 *   plan: the host's half for one stream (change detection, what the frame needs); touches s only,
 *         so plans of different streams may run on different threads. info: every field but
 *         n_kept.
 *   run:  the planned frames of n different streams on one vision context, as one batch (n at
 *         most the context's batch size): pixels [n] tiles; tokens [n][T][E]; kept [n][T];
 *         kept_tokens NULL or [n][T][E]; info [n], their plans' (n_kept set here). Each frame's
 *         result is what svlm_stc_frame gives it alone, within float rounding.
 */
void svlm_stc_plan(svlm_stc *s, const float *pixels, svlm_stc_frame_info *info);
svlm_status svlm_stc_run(svlm_stc *const *s, int n, const float *pixels, float *tokens, int32_t *kept,
                         float *kept_tokens, svlm_stc_frame_info *info, svlm_err *err);

#endif
