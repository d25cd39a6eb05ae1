/*
 * The server backend over the streaming engine (pipeline/stream.h): what `svlm serve` runs.
 *
 * Each open stream has an ingest thread: source (pipeline/source.h) -> sampled frames ->
 * SmolVLM2 video preprocessing -> vision encoder -> svlm_stream_add_frame. It has its own
 * compute backends, so answers never stall it; a live source that outruns it drops frames at
 * its bounded queue (counted in `drops`).
 *
 * Questions (stream questions, still-image questions and watch evaluations) go into one FIFO
 * queue served by `answer_threads` workers, each with its own decoder context. The workers
 * share one compute backend through a gate that lets one of them compute at a time and hands
 * it over after every token, favouring questions waiting for their first token (prefill)
 * over answers already streaming: several answers progress at once, interleaved, and a new
 * question's first token does not wait for other answers to finish. A stream question is
 * forked from the stream when a worker takes it (so queue wait shows in its TTFT).
 *
 * Watches: every `interval` seconds of stream time the watch's question is answered on the
 * stream's current context. Condition "true": an alert when a yes/no answer turns yes (the
 * answer starts with "yes" or "true", case-insensitive; the first yes counts). Condition
 * "change": an alert when the answer differs from the previous one (the first answer counts,
 * so a client learns the starting state).
 *
 * Decoding is greedy (the engine's sampler); temperature is accepted and ignored.
 */
#ifndef SVLM_PIPELINE_SERVER_ENGINE_BACKEND_H
#define SVLM_PIPELINE_SERVER_ENGINE_BACKEND_H

#include "pipeline/server/server_backend.h"

typedef struct svlm_engine_backend_opts {
    const char *text_path;   /* SmolVLM2 text model GGUF */
    const char *mmproj_path; /* its vision projector GGUF */
    const char *model_label; /* what the page and /v1/models show (NULL: the text file's name) */
    int stand_in;            /* 1: a random-weight stand-in (the page shows a banner) */
    int max_streams;         /* (16) */
    int answer_threads;      /* workers answering at once, interleaved (4) */
    int compute_threads;     /* threads of the answer workers' compute backend (0: all CPUs but
                                one, which the ingest threads have; at least 1) */
    int frames_window;       /* frames kept in each stream's context (8) */
    int text_window;         /* dialogue tokens kept (512) */
    int max_answer_tokens;   /* longer requests are cut to this (256) */
    int max_queued;          /* questions waiting for a worker (1024) */
} svlm_engine_backend_opts;

void svlm_engine_backend_opts_default(svlm_engine_backend_opts *o);

typedef struct svlm_engine_backend svlm_engine_backend;

/* Loads both models and starts the workers; fills *iface. */
svlm_status svlm_engine_backend_create(const svlm_engine_backend_opts *o, svlm_engine_backend **out,
                                       svlm_server_backend *iface, svlm_err *err);
/* Closes every stream, cancels and waits for every answer; accepts NULL. Call after the
 * server is destroyed. */
void svlm_engine_backend_destroy(svlm_engine_backend *b);

#endif
