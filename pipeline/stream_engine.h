/*
 * The scheduler for streams: frames of several streams and questions on them, at once.
 *
 * Two lanes, each one thread with its own kernels (svlm_kernels is not safe for concurrent
 * calls, and on a 2-core machine one core per lane keeps the two from fighting):
 *   ingest lane  takes the next queued frame (streams in turn), encodes it and appends it to its
 *                stream; answered turns join their stream's dialogue here too (deferred joins).
 *                With params.ingest_batch > 1 (the default on a GPU) it takes the next frames of
 *                up to that many streams of one kind (all with token compression, or all without)
 *                and encodes them as one batch (with token compression: each frame planned on the
 *                host, in parallel, then the batch's full and partial passes run together); while
 *                a batch runs, the next one is taken and preprocessed on a thread of its own (the
 *                host's resizing overlaps the device's work).
 *   answer lane  a new question first (fork, memory, prefill, first token: time to first token
 *                comes first), otherwise one decode step of the active answers in turn; when
 *                questions keep coming, starts and decode steps alternate, and at most
 *                params.max_active answers run (more wait, unforked); a question whose context
 *                finds no device memory while others run goes back into the queue, and fresh
 *                ones start only below the number running then (tried again once a second or
 *                when idle). The next question taken up is the oldest of the stream with the
 *                fewest running answers: one stream's burst does not hold every slot while
 *                another stream waits.
 * Ingest never waits for an answer: frames wait in a small queue per stream; a live push into a
 * full queue drops the oldest frame (counted in the stream's drops), a replay push
 * (block = 1) waits for room instead, so a replay at full speed ingests every frame.
 *
 * Questions are pinned (pin = 1: forked right after every frame pushed before the ask has been
 * ingested; with params.exact also after the earlier answers joined, so replays repeat exactly) or not
 * (forked when the answer lane takes them up: the context as it is then, no wait for queued frames).
 * Cancelling a question frees its pages.
 */
#ifndef SVLM_PIPELINE_STREAM_ENGINE_H
#define SVLM_PIPELINE_STREAM_ENGINE_H

#include <stdint.h>

#include "pipeline/source.h"
#include "pipeline/stream.h"
#include "vision/encoder.h"
#include "vision/stc.h"

typedef struct svlm_engine svlm_engine;

typedef struct svlm_engine_params {
    int ingest_threads;           /* kernel threads of the ingest lane (default 1) */
    int answer_threads;           /* kernel threads of the answer lane (default 1) */
    int frame_queue;              /* frames waiting per stream (default 2) */
    int max_streams;              /* default 16 */
    int max_active;               /* answers running at once (0: 8 on the CPU, 4 decode batches on a GPU);
                                     more wait, unforked */
    int decode_batch;             /* answers whose decode steps run as one batch (continuous batching: the
                                     weights are read once per step for all of them); default 16, 1 = one
                                     answer per step; exact replays always step one at a time */
    int ingest_batch;             /* frames of different streams encoded together (0: 32 on a GPU, 1 on the
                                     CPU; at most 64; exact replays 1) */
    int exact;                    /* replays: a pinned question forks only after the earlier answers of its
                                     stream joined the dialogue, and that stream's frames wait for the fork
                                     (answers then repeat exactly; ingest does wait for answers: not for live) */
    const svlm_stc_controls *stc; /* token compression on every stream (copied): NULL = the tuned
                                     defaults (on); enabled = 0: the plain encoder, every token */
    int join_piece_tokens;        /* live: answered turns join their stream between frames about this
                                     many tokens at a time, one stream a piece (default 256) */
} svlm_engine_params;

/* The models must outlive the engine. */
svlm_status svlm_engine_create(svlm_llama *m, const svlm_mmproj *mp, const svlm_engine_params *p,
                               svlm_engine **out, svlm_err *err);
/* Stops the lanes, cancels what is pending and joins answered turns: the streams are the
 * caller's again (free them before the engine: their contexts use the engine's kernels). From any
 * thread, also while others push, ask or remove streams (those are refused from now on, or end
 * before it returns); a second caller returns once the first has stopped it. Not from a callback. */
void svlm_engine_stop(svlm_engine *e);
/* Stops (if not yet) and frees the engine: once every other call on it has returned (a removed
 * stream is freed after its remove_stream returned, and before the engine). */
void svlm_engine_free(svlm_engine *e);
/* The kernels to create streams with (their ingest context runs on the ingest lane). */
svlm_kernels *svlm_engine_ingest_kernels(svlm_engine *e);
/* The answer lane's kernels (what answers compute on; the same device as the ingest lane's). */
svlm_kernels *svlm_engine_answer_kernels(svlm_engine *e);

/* Serves s (created with svlm_engine_ingest_kernels) from now on; sets deferred joins. Only while
 * the ingest lane is idle (before any frame): use svlm_engine_open_stream on a running engine. */
svlm_status svlm_engine_add_stream(svlm_engine *e, svlm_stream *s, int *id, svlm_err *err);
/* Creates a stream on the ingest lane's kernels (the system prompt is prefilled while the lane
 * pauses between frames) and serves it: any time, from any thread. *out stays the caller's. */
svlm_status svlm_engine_open_stream(svlm_engine *e, const svlm_stream_params *p, const char *system_prompt,
                                    svlm_stream **out, int *id, svlm_err *err);
/* The same two with this stream's own token-compression controls (copied; NULL: the engine's). */
svlm_status svlm_engine_add_stream_with(svlm_engine *e, svlm_stream *s, const svlm_stc_controls *stc, int *id,
                                        svlm_err *err);
svlm_status svlm_engine_open_stream_with(svlm_engine *e, const svlm_stream_params *p,
                                         const char *system_prompt, const svlm_stc_controls *stc,
                                         svlm_stream **out, int *id, svlm_err *err);
/* Stops serving a stream: its questions are cancelled (their done callbacks run), queued frames
 * dropped; returns once nothing of the engine touches it. The caller then frees the stream, with
 * svlm_engine_free_stream while the engine runs. */
void svlm_engine_remove_stream(svlm_engine *e, int id);
/* Pushes to the stream are refused from now on (SVLM_E_CANCELLED), one waiting for room included:
 * its feeder, blocked in a push, can be stopped and joined before svlm_engine_remove_stream
 * (which must come after it: the stream's slot may be reused once it returns). */
void svlm_engine_refuse_pushes(svlm_engine *e, int stream_id);
/* svlm_stream_free of a stream made with svlm_engine_open_stream, once removed (or never added):
 * its context lives on the ingest kernels, which the ingest lane may be using for other streams. */
void svlm_engine_free_stream(svlm_engine *e, svlm_stream *s);

/* Queues a frame (the engine takes it: the caller's struct is cleared). block = 0: a full queue
 * drops its oldest frame; block = 1: waits for room. */
svlm_status svlm_engine_push_frame(svlm_engine *e, int stream_id, svlm_frame *frame, int block,
                                   svlm_err *err);

/* A source event of the stream (pipeline/source.h), in its order among the stream's frames: after
 * a disconnect or a reconnect, the next frame pushed starts the stream's token compression over
 * (encoded in full, like a stream's first frame, never compared with a frame from before the
 * break); frames queued before the event are not affected. Other events change nothing here. */
svlm_status svlm_engine_push_event(svlm_engine *e, int stream_id, const svlm_source_event *ev, svlm_err *err);

/* Called once per question when it ends: on the answer lane, or on svlm_engine_stop's caller for
 * those it cancels (status SVLM_OK, SVLM_E_CANCELLED or an error; answer NULL unless OK).
 * am->ttft_ms and wait_ms count from the ask call. */
typedef void (*svlm_engine_done_fn)(void *user, uint64_t qid, svlm_status st, const char *answer,
                                    const svlm_answer_metrics *am, const char *err_msg);

/* Queues a question (copied); on_token runs on the answer lane (return nonzero to cancel). */
svlm_status svlm_engine_ask(svlm_engine *e, int stream_id, const char *question, const svlm_ask_opts *o,
                            int pin, svlm_stream_token_fn on_token, svlm_engine_done_fn on_done, void *user,
                            uint64_t *qid, svlm_err *err);
/* Cancels a queued or running question (its done callback reports SVLM_E_CANCELLED). */
void svlm_engine_cancel(svlm_engine *e, uint64_t qid);

/* Waits until every queued frame and question is done. */
void svlm_engine_drain(svlm_engine *e);

typedef struct svlm_engine_metrics {
    int64_t frames_done, frames_dropped, questions_done, questions_cancelled;
    int64_t questions_failed; /* ended with an error (asked = done + cancelled + failed + queued + running) */
    int active_answers, queued_questions, queued_frames;
    double ingest_busy_ms, answer_busy_ms;         /* time each lane spent working */
    uint64_t decode_batches, decode_batch_answers; /* batched decode steps, answers they stepped */
    uint64_t ingest_batches, ingest_batch_frames;  /* encoder batches of 2+ streams' frames, their frames */
    uint64_t ingest_batches_ahead;                 /* of those, preprocessed while the batch before ran */
    uint64_t memory_waits;           /* question starts put off for a running answer's memory (device full;
                                      * a question may be put off more than once) */
    int active_answers_max;          /* the most answers that ran at once (each holds a context) */
    uint64_t ingest_ops, answer_ops; /* op calls on each lane's kernels (svlm_kernels_ops: the null
                                      * backend counts them; 0 on the others) */
} svlm_engine_metrics;
void svlm_engine_metrics_get(svlm_engine *e, svlm_engine_metrics *out);

#endif
