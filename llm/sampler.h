/*
 * Token sampling: greedy (temp <= 0), or repetition penalty → top-k → top-p → min-p →
 * temperature → a draw from a seeded PRNG. One sampler per answer (it remembers recent tokens).
 */
#ifndef SVLM_LLM_SAMPLER_H
#define SVLM_LLM_SAMPLER_H

#include <stdint.h>

#include "svlm.h"

typedef struct svlm_sampler_params {
    float temp;           /* <= 0: greedy argmax                          */
    int top_k;            /* <= 0: off                                    */
    float top_p;          /* >= 1: off                                    */
    float min_p;          /* <= 0: off                                    */
    float repeat_penalty; /* 1: off; > 1 penalises recent tokens          */
    int repeat_last_n;    /* how many recent tokens the penalty looks at  */
    uint64_t seed;
} svlm_sampler_params;

typedef struct svlm_sampler svlm_sampler;

svlm_sampler_params svlm_sampler_params_default(void);
/* SVLM_E_INVALID for a NaN or infinite temperature, a NaN top_p or min_p, a repeat penalty that is
 * not a finite number > 0, a negative repeat_last_n or n_vocab <= 0. */
svlm_status svlm_sampler_create(const svlm_sampler_params *p, int n_vocab, svlm_sampler **out, svlm_err *err);
void svlm_sampler_free(svlm_sampler *s);
/* Picks the next token from logits [n_vocab] (not modified) and remembers it. NaN logits are
 * never drawn; greedy keeps svlm_k_argmax's rule (a NaN at index 0 gives 0). */
int32_t svlm_sampler_sample(svlm_sampler *s, const float *logits);
/* Remembers a token that was not sampled (e.g. the prompt) for the repetition penalty. */
void svlm_sampler_accept(svlm_sampler *s, int32_t id);

#endif
