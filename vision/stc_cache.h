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

/* pixels [3][S][S] -> out [T][E]; fills every field of info except n_kept. */
svlm_status svlm_stc_cache_encode(svlm_stc_cache *c, const float *pixels, float *out,
                                  svlm_stc_frame_info *info, svlm_err *err);

#endif
