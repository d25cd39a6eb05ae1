/* Loading a text model with its compute backend for the CLI commands, and printing tokens. */
#ifndef SVLM_TOOLS_TEXT_MODEL_H
#define SVLM_TOOLS_TEXT_MODEL_H

#include <stddef.h>
#include <stdio.h>

#include "kernels/kernels.h"
#include "llm/llama.h"

typedef struct cli_text_model {
    svlm_llama *model;
    svlm_kernels *kernels;
} cli_text_model;

/* Prints the error and returns -1 on failure. backend: a name for svlm_kernels_create_named (NULL:
 * $SVLM_BACKEND, else the CPU); threads <= 0: all CPUs (for the CPU backend). */
int cli_text_model_open(cli_text_model *tm, const char *path, const char *backend, int threads);
void cli_text_model_close(cli_text_model *tm);

/* Whether a context of n_ctx tokens' keys and values (kv: SVLM_F32 or SVLM_F16) fits in 75% of this
 * machine's memory; if not, says so on stderr, with `fewer` (the flag that asks for fewer tokens),
 * and returns 0. A context of a million tokens asked for tens of GB, and the machine ran out of
 * memory (the OOM killer) instead of saying so. */
int cli_kv_fits(const svlm_llama_hparams *hp, long long n_ctx, svlm_dtype kv, const char *fewer);

/* Streams token text to f, holding back an incomplete UTF-8 sequence until it completes. */
typedef struct cli_utf8_stream {
    char pending[8];
    size_t n;
} cli_utf8_stream;
void cli_utf8_put(cli_utf8_stream *s, FILE *f, const char *bytes, size_t len);
void cli_utf8_flush(cli_utf8_stream *s, FILE *f);

#endif
