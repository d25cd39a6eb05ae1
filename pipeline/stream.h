/*
 * One live stream's context: frames go into a bounded sink + window cache as they arrive (the
 * SmolVLM2 video-frame layout), and questions are answered from a fork of that cache while
 * ingestion goes on. The vision encoder and the frame source stay outside: add_frame takes the
 * frame's image-embedding rows.
 *
 * Threads: add_frame and ask may be called from different threads at once; several asks may run
 * at once, each with its own decoder context. A short lock covers forking the cache and the
 * moment an answered turn joins the stream's text window; prefill and decoding run unlocked.
 */
#ifndef SVLM_PIPELINE_STREAM_H
#define SVLM_PIPELINE_STREAM_H

#include <stddef.h>
#include <stdint.h>

#include "llm/llama.h"
#include "svlm.h"

typedef struct svlm_stream svlm_stream;

typedef struct svlm_stream_params {
    int sink_tokens;      /* budget for the system prompt (kept for ever) */
    int vision_tokens;    /* window of recent frames, in tokens */
    int text_tokens;      /* window of recent dialogue, in tokens */
    int answer_room;      /* question + answer tokens a fork may add on top (default 256) */
    int rows_per_frame;   /* image-embedding rows per frame (the projector's tokens per tile) */
    int page_tokens;      /* KV page size (default 16) */
    svlm_dtype kv_type;   /* SVLM_F32 or SVLM_F16 */
} svlm_stream_params;

typedef struct svlm_stream_metrics {
    int64_t frames_in, frames_dropped, questions, answers_joined;
    double prefill_ms_per_frame; /* mean */
    int tokens[SVLM_KV_N_KINDS]; /* cache occupancy by kind */
    int64_t evicted_spans, evicted_tokens;
    size_t kv_bytes;             /* pages in use (stream and its forks) */
} svlm_stream_metrics;

typedef struct svlm_answer_metrics {
    int tokens;
    double wait_ms, ttft_ms, tokens_per_s; /* lock wait, question prefill + first token, decode rate */
    int64_t frames_during;                 /* frames ingested between the fork and the answer's end */
} svlm_answer_metrics;

/* Called with each answer token (piece = its text); return nonzero to cancel the answer. */
typedef int (*svlm_stream_token_fn)(void *user, int32_t id, const char *piece, size_t len);

/* system_prompt (may be NULL) is tokenized with special tokens and becomes the sinks. The model
 * must outlive the stream; `k` runs the stream's own prefill. */
svlm_status svlm_stream_create(svlm_llama *m, svlm_kernels *k, const svlm_stream_params *p, const char *system_prompt,
                               svlm_stream **out, svlm_err *err);
void svlm_stream_free(svlm_stream *s);

/* Appends one frame at video time t: "\nFrame from MM:SS:" + its image block, with
 * rows_per_frame embedding rows [rows][n_embd]. Older frames leave whole. */
svlm_status svlm_stream_add_frame(svlm_stream *s, double t_seconds, const float *embd, svlm_err *err);
/* Counts a frame the caller dropped because the stream could not keep up. */
void svlm_stream_note_drop(svlm_stream *s);

/*
 * Answers a question from the stream's current context (greedy, up to max_tokens), on `ctx`, a
 * decoder context the caller owns (n_ctx >= svlm_stream_ctx_size). The question and answer then
 * join the stream's text window. *answer (may be NULL) gets the text (caller frees). Returns
 * SVLM_E_CANCELLED when the callback cancels; the fork's pages are freed either way.
 */
svlm_status svlm_stream_ask(svlm_stream *s, svlm_llama_ctx *ctx, const char *question, int max_tokens,
                            svlm_stream_token_fn on_token, void *user, char **answer, svlm_answer_metrics *am,
                            svlm_err *err);
int svlm_stream_ctx_size(const svlm_stream *s);

/* The same in two steps, so a question can be pinned to the frame it was asked at: fork now
 * (cheap, shares pages), answer later on another thread. ask_fork consumes the fork. */
typedef struct svlm_stream_fork svlm_stream_fork;
svlm_status svlm_stream_fork_now(svlm_stream *s, svlm_stream_fork **out, svlm_err *err);
void svlm_stream_fork_free(svlm_stream_fork *f);
svlm_status svlm_stream_ask_fork(svlm_stream *s, svlm_stream_fork *f, svlm_llama_ctx *ctx, const char *question,
                                 int max_tokens, svlm_stream_token_fn on_token, void *user, char **answer,
                                 svlm_answer_metrics *am, svlm_err *err);

void svlm_stream_metrics_get(svlm_stream *s, svlm_stream_metrics *out);

#endif
