/*
 * The server backend over the stream engine (pipeline/stream_engine.h): what `svlm serve` runs.
 *
 * One scheduler for everything: each open stream has a source reader thread that hands sampled
 * frames to the engine's ingest lane (SmolVLM2 video preprocessing, token compression
 * (vision/stc.h), the vision encoder, svlm_stream_add_frame_tokens); a live source that outruns
 * it drops frames at the engine's bounded per-stream queue (counted in `drops`). Stream
 * questions and watch evaluations go to the engine's answer lane, which starts new questions
 * first (fork, memory, prefill, first token) and otherwise steps the active answers round-robin,
 * at most `answer_threads` of them at once. A stream question is forked when the lane takes it up
 * (queue wait shows in its TTFT). Still-image questions belong to no stream: a separate worker
 * with its own kernels answers them one at a time.
 *
 * Watches: every `interval` seconds of stream time the watch's question is answered on the
 * stream's current context. Condition "true": an alert when a yes/no answer turns yes (the
 * answer starts with "yes" or "true", case-insensitive; the first yes counts). Condition
 * "change": an alert when the answer differs from the previous one (the first answer counts,
 * so a client learns the starting state).
 *
 * Stream answers are greedy, or sampled with the question's temperature, top_p and seed (the
 * stream's svlm_ask_opts.sampling); still-image answers are greedy.
 */
#ifndef SVLM_PIPELINE_SERVER_ENGINE_BACKEND_H
#define SVLM_PIPELINE_SERVER_ENGINE_BACKEND_H

#include "memory/memory_bank.h"
#include "pipeline/server/server_backend.h"
#include "vision/stc.h"

typedef struct svlm_engine_backend_opts {
    const char *text_path;   /* SmolVLM2 text model GGUF */
    const char *mmproj_path; /* its vision projector GGUF */
    const char *model_label; /* what the page and /v1/models show (NULL: the text file's name) */
    int stand_in;            /* 1: a random-weight stand-in (the page shows a banner) */
    int max_streams;         /* (16) */
    int answer_threads;      /* answers running at once (0: 8 on the CPU, 64 on a GPU); more wait */
    int decode_batch;        /* of those, decode steps run together (continuous batching); 0: 16 */
    int ingest_batch;        /* frames of different streams encoded together (0: 32 on a GPU, 1 on the
                                CPU) */
    int compute_threads;     /* kernel threads of the answer lane (0: all CPUs but one, which the
                                ingest lane has; at least 1) */
    int frames_window;       /* frames kept in each stream's context (8) */
    int text_window;         /* dialogue tokens kept (512) */
    int sink_tokens;         /* system-prompt budget (64) */
    int frame_queue;         /* frames waiting per stream; a live source drops the oldest past it (2) */
    svlm_dtype kv_type;      /* KV cache type: SVLM_F32 (default) or SVLM_F16 */
    int kv_auto;             /* 1: kv_type is f16 on the CPU, f32 on a GPU */
    int max_answer_tokens;   /* longer requests are cut to this (256) */
    int max_queued;          /* questions waiting or running (1024) */
    svlm_stc_controls stc;   /* token compression (defaults: on, tuned) */
    int memory;              /* 1: each stream has a memory bank (default) */
    size_t memory_budget;    /* bytes per stream (64 MiB) */
    const char *memory_dir;  /* persist each stream's bank in memory_dir/NAME (NULL: not) */
    int memory_tokens;       /* memory rows placed before a question at most (64) */
    double open_timeout_s;   /* sources: connect/open limit (10, as pipeline/source.h) */
    double stall_timeout_s;  /* sources: live watchdog, no frame for this long (5; 0: none) */
} svlm_engine_backend_opts;

void svlm_engine_backend_opts_default(svlm_engine_backend_opts *o);

typedef struct svlm_engine_backend svlm_engine_backend;

/* Loads both models and starts the workers; fills *iface. */
svlm_status svlm_engine_backend_create(const svlm_engine_backend_opts *o, svlm_engine_backend **out,
                                       svlm_server_backend *iface, svlm_err *err);
/* Opens a stream as the server's open_stream does, for a stream the server starts with: a live
 * source that reconnects (RTSP, v4l2, HTTP opened live, gst:) and cannot be reached now is opened
 * all the same, in state "reconnecting", retrying with the usual backoff; then *down says why it
 * could not be reached (down->status != SVLM_OK). Other failures (a recording that cannot be read,
 * a bad URI or option) fail as open_stream's do. */
svlm_status svlm_engine_backend_open_start(svlm_engine_backend *b, const svlm_backend_open_req *req,
                                           svlm_err *down, svlm_err *err);
/* The server is stopping: opens in progress (a URL that never answers holds one for up to the open
 * timeout) and sources' reads and reconnects give up at once, and new opens are refused. Call when
 * svlm_server_run returns, before svlm_server_destroy (which waits for those opens). Only stores a
 * flag: async-signal-safe. */
void svlm_engine_backend_shutdown(svlm_engine_backend *b);
/* Closes every stream, cancels and waits for every answer; accepts NULL. Call after the
 * server is destroyed. */
void svlm_engine_backend_destroy(svlm_engine_backend *b);

#endif
