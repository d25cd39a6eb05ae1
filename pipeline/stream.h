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
#include "llm/sampler.h"
#include "memory/memory_bank.h"
#include "svlm.h"

typedef struct svlm_stream svlm_stream;

typedef struct svlm_stream_params {
    int sink_tokens;    /* budget for the system prompt (kept for ever) */
    int vision_tokens;  /* window of recent frames, in tokens */
    int text_tokens;    /* window of recent dialogue, in tokens */
    int answer_room;    /* question + answer tokens a fork may add on top (default 256) */
    int rows_per_frame; /* image-embedding rows per frame (the projector's tokens per tile) */
    int page_tokens;    /* KV page size (default 16) */
    svlm_dtype kv_type; /* SVLM_F32 or SVLM_F16 */
    /* Memory (memory/memory_bank.h). NULL: frames leaving the window are dropped. Otherwise each
     * frame that leaves goes to a bank made with these options (dim is set to n_embd, key_dim to
     * 0: keys in token space), and a question places its best entries before itself. With
     * memory->dir the bank persists, and a restarted stream resumes it and continues its clock
     * after the bank's last time (see svlm_stream_metrics.time_offset). */
    const svlm_memory_opts *memory;
    int memory_room;   /* memory tokens (intros included) a question may add (default memory_tokens +
                          24 per entry for the intros) */
    int memory_top_k;  /* entries placed per question (default 3) */
    int memory_tokens; /* memory rows placed per question at most (default 64): they are prefilled
                          before the question, so they bound what memory adds to the time to
                          first token (see docs/streaming.md) */
    int max_answers;   /* answers running on the stream at once that its KV pool holds pages for
                          (default 4; the engine passes its max_active): each may keep a window of
                          older pages alive beside its own */
} svlm_stream_params;

typedef struct svlm_stream_metrics {
    int64_t frames_in, frames_dropped, questions, answers_joined;
    double prefill_ms_per_frame; /* mean */
    int tokens[SVLM_KV_N_KINDS]; /* cache occupancy by kind */
    int64_t evicted_spans, evicted_tokens;
    size_t kv_bytes;                       /* pages in use (stream and its forks) */
    size_t kv_page_bytes;                  /* one page */
    size_t kv_kind_bytes[SVLM_KV_N_KINDS]; /* the stream's own rows by kind (sink, vision, text) */
    double encode_ms_per_frame;            /* mean, as reported by the caller (svlm_stream_note_encode) */
    /* memory bank (zeros without one) */
    int memory_on;
    size_t memory_bytes, memory_budget, memory_tier_bytes[SVLM_MEMORY_N_TIERS];
    int memory_tier_entries[SVLM_MEMORY_N_TIERS];
    int64_t memory_frames, memory_events, memory_push_errors;
    size_t frame_ring_bytes; /* recent frames' rows kept for the hand-off */
    double time_offset;      /* added to caller frame times (a resumed stream's clock) */
    double t_last;           /* stream time of the newest frame */
    int64_t image_rows_in;   /* image rows appended over all frames (frames may be pruned) */
    /* token compression (svlm_stream_note_stc; zeros when the caller does not use it) */
    int64_t stc_frames, stc_patches, stc_recomputed, stc_reused, stc_partial, stc_cuts, stc_tokens, stc_kept;
} svlm_stream_metrics;

enum { SVLM_STREAM_MAX_HITS = 8 };

typedef struct svlm_answer_metrics {
    int tokens;
    double wait_ms, ttft_ms, tokens_per_s; /* lock wait, question prefill + first token, decode rate */
    int64_t frames_during;                 /* frames ingested between the fork and the answer's end */
    int window_copied; /* its context copied the stream's window at the fork (svlm_stream_fork_into) */
    /* memory placed before the question */
    int memory_hits, memory_tokens, memory_time_anchored;
    double retrieve_ms;
    double memory_t0[SVLM_STREAM_MAX_HITS], memory_t1[SVLM_STREAM_MAX_HITS];
    int memory_tier[SVLM_STREAM_MAX_HITS];
} svlm_answer_metrics;

/* Called with each answer token (piece = its text); return nonzero to cancel the answer. */
typedef int (*svlm_stream_token_fn)(void *user, int32_t id, const char *piece, size_t len);

/* system_prompt (may be NULL) is tokenized with special tokens and becomes the sinks. The model
 * must outlive the stream; `k` runs the stream's own prefill. */
svlm_status svlm_stream_create(svlm_llama *m, svlm_kernels *k, const svlm_stream_params *p,
                               const char *system_prompt, svlm_stream **out, svlm_err *err);
void svlm_stream_free(svlm_stream *s);

/* Appends one frame at video time t: "\nFrame from MM:SS:" + its image block, with
 * rows_per_frame embedding rows [rows][n_embd]. Older frames leave whole. */
svlm_status svlm_stream_add_frame(svlm_stream *s, double t_seconds, const float *embd, svlm_err *err);
/* The same with n_tokens rows (1..rows_per_frame): a frame whose tokens were pruned (vision/stc.h)
 * gets an image block of n_tokens <image> positions, the kept tokens in their order. The memory
 * bank gets these rows when the frame leaves the window. */
svlm_status svlm_stream_add_frame_tokens(svlm_stream *s, double t_seconds, const float *embd, int n_tokens,
                                         svlm_err *err);
/* Frames of n different streams appended in one pass of the decoder over all their rows (the
 * engine's batched ingest): like n svlm_stream_add_frame_tokens calls, each frame's outcome in
 * st[i] (errs[i] says why). mb: scratch made for this model and the streams' kernels with room for
 * every frame's rows; a frame whose prompt is longer than svlm_llama_multi_item_max() goes alone.
 * pool (or NULL): pushes the frames the pass evicted into the streams' memory banks in parallel.
 * Returns SVLM_E_INVALID (in errs[0]) when n is out of 1..256, else SVLM_OK. */
struct svlm_pool;
svlm_status svlm_streams_add_frames(svlm_llama_multi *mb, struct svlm_pool *pool, svlm_stream *const *ss,
                                    const double *t_seconds, const float *const *embd, const int *n_tokens,
                                    int n, svlm_status *st, svlm_err *errs);
/* Records what token compression did with a frame (metrics only): encoder tokens and those
 * recomputed, reused outright (path 2) or partly (path 1), a scene cut, connector tokens and kept. */
void svlm_stream_note_stc(svlm_stream *s, int n_patches, int n_recomputed, int path, int cut, int n_tokens,
                          int n_kept);
/* Counts a frame the caller dropped because the stream could not keep up. */
void svlm_stream_note_drop(svlm_stream *s);

/*
 * Answers a question from the stream's current context (greedy, up to max_tokens), on `ctx`, a
 * decoder context the caller owns (n_ctx >= svlm_stream_ctx_size). The question and answer then
 * join the stream's text window. *answer (may be NULL) gets the text (caller frees). Returns
 * SVLM_E_CANCELLED when the callback cancels, SVLM_E_TOO_LONG when the question's turn and
 * max_tokens exceed the answer room; the fork's pages are freed either way.
 */
svlm_status svlm_stream_ask(svlm_stream *s, svlm_llama_ctx *ctx, const char *question, int max_tokens,
                            svlm_stream_token_fn on_token, void *user, char **answer, svlm_answer_metrics *am,
                            svlm_err *err);
int svlm_stream_ctx_size(const svlm_stream *s);
/* The pages a stream's KV pool may hold for these (resolved) parameters: the stream and
 * max_answers answers forked from it, each forked at a different frame. */
int svlm_stream_pool_pages(const svlm_stream_params *p);
/* The stream's KV type: an answer context of this type takes the stream's window by copying its
 * working copy (svlm_llama_ctx_take_copy) instead of rebuilding it from the pages. */
svlm_dtype svlm_stream_kv_type(const svlm_stream *s);

/* The same in two steps, so a question can be pinned to the frame it was asked at: fork now
 * (cheap, shares pages), answer later on another thread. ask_fork consumes the fork. */
typedef struct svlm_stream_fork svlm_stream_fork;
svlm_status svlm_stream_fork_now(svlm_stream *s, svlm_stream_fork **out, svlm_err *err);
/* The same, and ctx (the context that will answer on the fork) copies the stream's window from
 * the stream's own context while the stream is locked, when their KV types match: the answer then
 * starts without building it from the pages (svlm_llama_ctx_take_copy). */
svlm_status svlm_stream_fork_into(svlm_stream *s, svlm_llama_ctx *ctx, svlm_stream_fork **out, svlm_err *err);
void svlm_stream_fork_free(svlm_stream_fork *f);
svlm_status svlm_stream_ask_fork(svlm_stream *s, svlm_stream_fork *f, svlm_llama_ctx *ctx,
                                 const char *question, int max_tokens, svlm_stream_token_fn on_token,
                                 void *user, char **answer, svlm_answer_metrics *am, svlm_err *err);

void svlm_stream_metrics_get(svlm_stream *s, svlm_stream_metrics *out);
/* The same without waiting for a frame or join being prefilled: its figures are then those of the
 * last read before it (frames in, drops and the pool's pages are current). For status readers on
 * threads that must not stall (the server's). */
void svlm_stream_metrics_peek(svlm_stream *s, svlm_stream_metrics *out);
/* Frames appended so far, without waiting for a frame being appended (metrics_get waits). */
int64_t svlm_stream_frames_in(const svlm_stream *s);

/* ---- additions: options, step-wise answers (for the scheduler), memory ---- */

typedef struct svlm_ask_opts {
    int max_tokens;          /* required, > 0 */
    int use_memory;          /* 1: place memory hits before the question (when the stream has a bank) */
    const float *query_vecs; /* the question's representation for retrieval [n_query_vecs][n_embd];
                                NULL: the mean-pooled input embeddings of the question's tokens */
    int n_query_vecs;
    char **prompt_text; /* if not NULL: receives what was put before the answer (memory
                           intros, "<memory:N rows>" for their rows, the question turn) */
    /* How each answer token is picked: temp <= 0 (a zeroed struct) is greedy, found where the
     * logits are made; otherwise a sampler with these settings (start from
     * svlm_sampler_params_default(): invalid ones fail the answer), the logits brought to the host */
    svlm_sampler_params sampling;
} svlm_ask_opts;

/* Retrieves the question's memory now, from the bank as it is at the fork (answer_start then
 * uses it instead of retrieving at its own, later, moment): pinned questions of exact replays
 * see the same memory every run. o->prompt_text is honoured only if given here too. */
svlm_status svlm_stream_fork_prepare(svlm_stream *s, svlm_stream_fork *f, const char *question,
                                     const svlm_ask_opts *o, svlm_err *err);

/* A question being answered one token at a time (svlm_stream_ask_fork is start + steps + finish). */
typedef struct svlm_stream_answer svlm_stream_answer;

/* Consumes the fork: builds the prompt (memory, then the question), prefills it on ctx. */
svlm_status svlm_stream_answer_start(svlm_stream *s, svlm_stream_fork *f, svlm_llama_ctx *ctx,
                                     const char *question, const svlm_ask_opts *o,
                                     svlm_stream_token_fn on_token, void *user, svlm_stream_answer **out,
                                     svlm_err *err);
/* Emits the next token (callback) and evaluates it. *done = 1 at end of generation, the token
 * limit, or a cancel (then SVLM_E_CANCELLED). */
svlm_status svlm_stream_answer_step(svlm_stream_answer *a, int *done, svlm_err *err);
/* svlm_stream_answer_step for n answers (of any streams of one model, contexts on b's kernels)
 * with their decode steps evaluated together (continuous batching, svlm_llama_eval_batch):
 * done[i], st[i] and errs[i] are answer i's results as answer_step would give them. Returns
 * SVLM_E_NOMEM without stepping any answer when it cannot allocate. */
svlm_status svlm_stream_answers_step(svlm_llama_batch *b, svlm_stream_answer *const *as, int n, int *done,
                                     svlm_status *st, svlm_err *errs);
/* Ends the answer: frees the fork's pages; when ok (the answer completed), the turn joins the
 * stream's text window (now, or at the next frame with deferred joins). Frees a. */
void svlm_stream_answer_finish(svlm_stream_answer *a, int ok, char **answer, svlm_answer_metrics *am);

svlm_status svlm_stream_ask_fork_opts(svlm_stream *s, svlm_stream_fork *f, svlm_llama_ctx *ctx,
                                      const char *question, const svlm_ask_opts *o,
                                      svlm_stream_token_fn on_token, void *user, char **answer,
                                      svlm_answer_metrics *am, svlm_err *err);

/* Deferred joins: an answered turn is queued and prefilled by the next add_frame (on = 1) or
 * only by svlm_stream_join_pending (on = 2: the caller picks the moment, so replays repeat), so
 * the stream's own context and its kernels are used by one thread only (the engine's ingest
 * lane). Off (0) by default. */
void svlm_stream_set_deferred_join(svlm_stream *s, int on);
svlm_status svlm_stream_join_pending(svlm_stream *s, svlm_err *err);
/* Joins the oldest waiting turns until at least max_tokens tokens went in (a long backlog in
 * pieces, so that other streams' frames go between them); 1 if turns still wait. */
int svlm_stream_join_some(svlm_stream *s, int max_tokens);
/* 1 if answered turns wait to be joined (takes only the queue's own lock: callable under others). */
int svlm_stream_turns_waiting(svlm_stream *s);

/* Records the encoder time of a frame (metrics only). */
void svlm_stream_note_encode(svlm_stream *s, double ms);

/* The bank (NULL without memory); owned by the stream. Flushing at the end of a stream closes
 * the clip and event being built so they persist. */
svlm_memory *svlm_stream_memory(svlm_stream *s);

/* For the token pruner (vision/stc.h svlm_stc_memory_fn, user = the stream): each token's best
 * cosine similarity to what the stream's memory holds (svlm_memory_novelty); below -1 without a
 * bank or while it is empty. */
void svlm_stream_memory_similarity(void *user, const float *tokens, int n, int dim, float *similarity);

#endif
