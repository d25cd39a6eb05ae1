/*
 * The STC token pruner: which of a frame's connector tokens go to the decoder.
 *
 * Per token i of the frame's gw x gh grid (cosine distances, d(a, b) = 1 - cos(a, b)):
 *   salience  s_i = (d(x_i, mean of its 4-neighbours) + d(x_i, frame mean)) / 2
 *   novelty   n_i = d(x_i, previous frame's token i), and when a memory lookup is set,
 *                   min(that, 1 - highest similarity to anything memory holds)
 *   score     = ws * s_i / max_j s_j + wt * n_i / max(max_j n_j, novelty_floor)
 * The first frame (no previous one) and keyframes (scene cuts) score salience only.
 * Budget: keep_count, or ceil(keep_ratio * n) (keyframe_ratio on keyframes), at least
 * keep_floor and at most n; tokens with novelty below `redundant` are dropped even within the
 * budget (never below the floor), so an unchanged frame costs only the floor. The top-scoring
 * tokens are kept and returned in their original order, with their grid indices.
 */
#ifndef SVLM_VISION_STC_PRUNE_H
#define SVLM_VISION_STC_PRUNE_H

#include <stdint.h>

#include "vision/stc.h"

typedef struct svlm_stc_pruner svlm_stc_pruner;

svlm_status svlm_stc_pruner_create(const svlm_stc_controls *ctl, int grid_w, int grid_h, int dim,
                                   svlm_stc_pruner **out, svlm_err *err);
void svlm_stc_pruner_free(svlm_stc_pruner *p);
void svlm_stc_pruner_reset(svlm_stc_pruner *p);
void svlm_stc_pruner_set_memory(svlm_stc_pruner *p, svlm_stc_memory_fn fn, void *user);

/* tokens [n][dim], n = grid_w * grid_h. Writes the kept indices (ascending) to kept[n], the kept
 * tokens in order to kept_tokens (NULL: not written) and, when scores is not NULL, each token's
 * score to scores[n]. Returns the number kept. */
int svlm_stc_prune(svlm_stc_pruner *p, const float *tokens, int keyframe, int32_t *kept, float *kept_tokens,
                   float *scores);

#endif
