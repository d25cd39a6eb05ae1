/* The stream controls `svlm replay` and `svlm serve` share: token compression (--stc, --stc-NAME),
 * memory (--memory-budget, --memory-dir, --memory-tokens, --no-memory) and the context's budgets
 * (--sinks, --frames-window, --text-window, --queue, --kv); and the server config's "stc", "memory"
 * and "stream" objects (docs/streaming.md). */
#ifndef SVLM_TOOLS_STREAM_FLAGS_H
#define SVLM_TOOLS_STREAM_FLAGS_H

#include <stdio.h>

#include "vision/stc.h"

typedef struct stream_flags {
    svlm_stc_controls stc;   /* tuned defaults: on */
    int memory;              /* 1 (--no-memory: 0) */
    double memory_mib;       /* bank budget per stream (64) */
    const char *memory_dir;  /* NULL */
    long long memory_tokens; /* memory rows placed before a question at most (64) */
    long long sinks;         /* system-prompt budget in tokens (64) */
    long long frames_window; /* frames kept in the context (8) */
    long long text_window;   /* dialogue tokens kept (512) */
    long long queue;         /* frames waiting for the encoder per stream (2) */
    svlm_dtype kv;           /* KV cache type, when kv_given (--kv, or the config's stream.kv) */
    int kv_given;            /* 0: stream_flags_kv picks */
} stream_flags;

void stream_flags_default(stream_flags *f);
/* Looks at argv[*i]: 1 = one of ours (its value consumed, *i advanced), 0 = not ours,
 * -1 = a bad value (the error is printed, prefixed with cmd). */
int stream_flags_parse(stream_flags *f, const char *cmd, int argc, char **argv, int *i);
/* Consistency after parsing: 0 or -1 (printed). */
int stream_flags_check(const stream_flags *f, const char *cmd);
void stream_flags_usage(FILE *out);
/* The streams' KV cache type: --kv's, else f16 on the CPU (half the memory, and its decode reads
 * f16 rows directly) and f32 on a GPU (what its stream figures were measured with). */
svlm_dtype stream_flags_kv(const stream_flags *f, int gpu);

#endif
