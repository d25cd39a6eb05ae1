/*
 * The STC feature cache ("cacher") for one stream of single-tile frames.
 *
 * Change is measured per patch in pixel space: each patch is summarised by the means of its
 * 4x4-pixel blocks (48 values for 16-px patches), which averages codec noise away but keeps
 * motion; a patch's change is the mean |difference| of those summaries.
 *
 * Reference state (the last fully computed frame): per layer its keys and values [N][D], its
 * post-LayerNorm encoder output [N][D] and its connector output [T][E]. A partial frame embeds
 * only the dynamic patches, runs them through every block (their queries see all N keys: their
 * own new ones and the reference's for static patches), and takes the reference's outputs for
 * the static patches; the connector then runs over the mixed encoder output. Comparing each
 * frame with the fixed reference (not with the previous frame) keeps errors from compounding.
 */
#ifndef SVLM_VISION_STC_CACHE_H
#define SVLM_VISION_STC_CACHE_H

#include "vision/encoder.h"
#include "vision/stc.h"

typedef struct svlm_stc_cache svlm_stc_cache;

svlm_status svlm_stc_cache_create(svlm_vision_ctx *vc, const svlm_stc_controls *ctl, svlm_stc_cache **out,
                                  svlm_err *err);
void svlm_stc_cache_free(svlm_stc_cache *c);
void svlm_stc_cache_reset(svlm_stc_cache *c);

/* pixels [3][S][S] -> out [T][E]; fills every field of info except n_kept. The plan then the run
 * of a batch of one. */
svlm_status svlm_stc_cache_encode(svlm_stc_cache *c, const float *pixels, float *out,
                                  svlm_stc_frame_info *info, svlm_err *err);

/* The host's half: change detection and the decision (full pass, partial pass or the reference
 * reused), which the next run of c carries out; fills every field of info except n_kept. Touches
 * c only, so plans of different streams may run on different threads. */
void svlm_stc_cache_plan(svlm_stc_cache *c, const float *pixels, svlm_stc_frame_info *info);
/* The planned frames of n different streams on one vision context, as one batch (n <= its
 * max_batch): full passes together, then partial passes together (every stream's dynamic patches
 * in the same products; each attends to its own reference). pixels: n tiles [3][S][S]; out
 * [n][T][E]. Frame i's result is that of encoding it alone, within float rounding. */
svlm_status svlm_stc_cache_run(svlm_stc_cache *const *cs, int n, const float *pixels, float *out,
                               svlm_err *err);

#endif
