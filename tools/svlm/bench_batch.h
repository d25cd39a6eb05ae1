/* `svlm bench --decode-batch N`: decode steps of N sequences evaluated together. */
#ifndef SVLM_TOOLS_BENCH_BATCH_H
#define SVLM_TOOLS_BENCH_BATCH_H

#include "kernels/kernels.h"
#include "llm/llama.h"

/* n_seq sequences, each prefilled with `prompt` tokens, then `steps` batched decode steps; the
 * best of `reps` runs as aggregate tokens per second in *tps. */
svlm_status cli_bench_decode_batch(svlm_llama *m, svlm_kernels *k, int n_seq, int prompt, int steps, int reps,
                                   double *tps, svlm_err *err);

#endif
