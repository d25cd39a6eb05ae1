/*
 * Shared state of the engine backend's parts: streams and their ingest threads
 * (engine_backend.c), the answer queue, workers and compute gate (engine_answer.c), still
 * images (engine_image.c) and watches (engine_watch.c).
 *
 * Locks, outermost first: watch_lock, lock. Neither is held while computing; `lock` guards
 * the stream list, each stream's counters and latest frame, stream references, the job queue
 * and the running list. The gate (its own lock) lets one answer thread compute at a time.
 */
#ifndef SVLM_PIPELINE_SERVER_ENGINE_INTERNAL_H
#define SVLM_PIPELINE_SERVER_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "kernels/kernels.h"
#include "llm/llama.h"
#include "pipeline/server/engine_backend.h"
#include "pipeline/source.h"
#include "pipeline/stream.h"
#include "vision/encoder.h"

typedef struct svlm_engine_backend eng;

typedef struct eng_stream {
    struct eng_stream *next;
    eng *owner;
    char name[SVLM_BACKEND_NAME_MAX];
    char uri[512];
    svlm_source *src;
    svlm_stream *stream;
    svlm_kernels *k_stream;  /* the stream's own prefill and the joins of answered turns (under its lock) */
    svlm_kernels *k_encode;  /* the ingest thread's vision encoder */
    svlm_vision_ctx *vc;
    float *pixels, *embd;
    pthread_t thread;
    int thread_started;
    /* under owner->lock */
    int refs;                /* jobs using the stream; close waits for zero */
    int closing;
    svlm_frame latest;
    char state[16];
    int64_t reconnects;
    double fps_ema, last_wall, video_time, encoder_ms_sum;
    svlm_stream_metrics metrics; /* a copy, so status never waits for the stream's own lock */
} eng_stream;

typedef enum eng_job_kind { JOB_ASK, JOB_IMAGE, JOB_WATCH } eng_job_kind;

typedef struct eng_job {
    struct eng_job *next;
    uint64_t id;
    eng *owner;
    eng_job_kind kind;
    eng_stream *s;           /* JOB_ASK, JOB_WATCH: referenced (refs) */
    char *question;
    int max_tokens;
    svlm_backend_ask_cb cb;  /* JOB_ASK, JOB_IMAGE */
    uint64_t watch_id;       /* JOB_WATCH */
    int n_images;
    svlm_backend_image *images; /* copies */
    atomic_int cancelled;
    double t_asked, t_started, t_first, t_last;
    int n_tokens;
    char utf8[8];            /* an incomplete UTF-8 sequence held back */
    size_t utf8_n;
    char *answer;            /* JOB_WATCH: the text so far */
    size_t answer_len, answer_cap;
} eng_job;

typedef struct eng_gate {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int busy, prefill_waiting;
    uint64_t decode_next, decode_serving;
} eng_gate;

typedef struct eng_watcher {
    struct eng_watcher *next;
    uint64_t id;
    char stream[SVLM_BACKEND_NAME_MAX];
    char *question;
    int cond_true;
    double interval, next_due;
    int max_tokens, in_flight, evaluated, last_yes;
    char *last_answer;
    svlm_backend_watch_cb cb;
} eng_watcher;

struct svlm_engine_backend {
    svlm_engine_backend_opts o;
    char model_label[128];
    svlm_llama *model;
    svlm_mmproj *mmproj;
    svlm_kernels *k_answer;      /* answer workers, one at a time through the gate */
    svlm_vision_ctx *image_vc;   /* still images, under the gate */
    svlm_stream_params sp;
    int ctx_size, n_embd, tokens_per_tile;
    size_t kv_bytes_per_token;

    pthread_mutex_t lock;
    pthread_cond_t cv;           /* jobs queued, streams released */
    eng_stream *streams;
    int n_streams;               /* including those being opened */
    eng_job *queue_head, *queue_tail, *running;
    int n_queued;
    uint64_t next_id;
    int stopping;
    pthread_t *workers;
    int n_workers;

    eng_gate gate;

    pthread_mutex_t watch_lock;
    pthread_cond_t watch_cv;     /* wakes the timer: a new watch, or stop */
    int watch_stop;
    eng_watcher *watches;
    pthread_t watch_thread;
    int watch_thread_started;
};

double eng_now_ms(void);
double eng_wall(void);

/* Streams (engine_backend.c). */
eng_stream *eng_stream_ref(eng *e, const char *name); /* NULL when absent or closing */
void eng_stream_unref(eng_stream *s);
/* Copies the stream's metrics for status (takes the stream's lock, then e->lock; hold neither). */
void eng_stream_refresh(eng_stream *s);

/* Answers (engine_answer.c). */
svlm_status eng_workers_start(eng *e, svlm_err *err);
void eng_workers_stop(eng *e);
/* Queues a job (takes ownership); fails when the engine is stopping or the queue is full. */
svlm_status eng_job_submit(eng *e, eng_job *j, uint64_t *id, svlm_err *err);
/* An answer token: timing, delivery, then the gate goes to whoever waits. Returns nonzero to stop. */
int eng_job_token(eng_job *j, const char *piece, size_t len);
svlm_status eng_ask(void *ctx, const svlm_backend_ask_req *req, const svlm_backend_ask_cb *cb, uint64_t *id,
                    svlm_err *err);
void eng_cancel(void *ctx, uint64_t id);
void eng_job_free(eng_job *j);
/* Sets the cancel flag of every queued or running job on stream s (or with this id when s is NULL). */
void eng_jobs_cancel(eng *e, eng_stream *s, uint64_t id);
void eng_gate_acquire(eng_gate *g, int prefill);
void eng_gate_release(eng_gate *g);
/* Hands a piece of answer text to the job's consumer in whole UTF-8 characters. */
void eng_job_emit(eng_job *j, const char *text, size_t len, int flush);

/* Still images (engine_image.c): answers j on the worker's thread, inside the gate. */
svlm_status eng_image_answer(eng *e, eng_job *j, int *prompt_tokens, svlm_err *err);

/* Watches (engine_watch.c). */
svlm_status eng_watch_start_thread(eng *e, svlm_err *err);
void eng_watch_stop_thread(eng *e);
/* A watch evaluation finished (answer NULL on failure): alerts if its condition fires. */
void eng_watch_result(eng *e, uint64_t watch_id, const char *answer, double video_time);
svlm_status eng_watch(void *ctx, const svlm_backend_watch_req *req, const svlm_backend_watch_cb *cb, uint64_t *id,
                      svlm_err *err);
void eng_unwatch(void *ctx, uint64_t id);

#endif
