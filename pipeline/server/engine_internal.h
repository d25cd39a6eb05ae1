/*
 * Shared state of the engine backend's parts: streams and their source readers
 * (engine_backend.c), questions through the stream engine's answer lane (engine_answer.c),
 * still images (engine_image.c) and watches (engine_watch.c).
 *
 * One scheduler: every stream's frames go to pipeline/stream_engine's ingest lane and every
 * stream question (watch evaluations included) to its answer lane. What stays here is the
 * server's side: reading sources (which block), snapshots, the job records that turn engine
 * callbacks into backend callbacks, and a separate worker for still-image questions (they
 * belong to no stream).
 *
 * Locks, outermost first: watch_lock, lock. Neither is held while computing; `lock` guards the
 * stream list, each stream's counters and latest frame, stream references and the job list.
 */
#ifndef SVLM_PIPELINE_SERVER_ENGINE_INTERNAL_H
#define SVLM_PIPELINE_SERVER_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>

#include "kernels/kernels.h"
#include "llm/llama.h"
#include "pipeline/server/engine_backend.h"
#include "pipeline/source.h"
#include "pipeline/stream_engine.h"
#include "vision/encoder.h"

typedef struct svlm_engine_backend eng;

typedef struct eng_stream {
    struct eng_stream *next;
    eng *owner;
    char name[SVLM_BACKEND_NAME_MAX];
    char uri[1024]; /* (as long as an open or --source may give) */
    svlm_source *src;
    svlm_stream *stream;
    int sid;          /* the stream engine's id */
    pthread_t thread; /* the source reader: frames into the engine's queue */
    int thread_started;
    /* under owner->lock */
    int refs; /* jobs using the stream; close waits for zero */
    int closing;
    uint8_t *latest; /* RGB24 copy of the newest frame, for snapshots */
    size_t latest_cap;
    int latest_w, latest_h, latest_stride;
    int64_t latest_index;
    double latest_pts;
    char state[16];
    char reason[512]; /* why the source is down or failed ("": it is not) */
    int64_t reconnects;
    double fps_recent, last_wall, video_time; /* last_wall: the last frame's arrival (eng_wall) */
    /* the last arrivals (a ring): the rate over them (an average of 1/gap read 90 fps for a 1 fps
     * HLS stream, whose frames come a segment at a time, milliseconds apart) */
    double arrivals[16];
    int n_arrivals;
    double time_offset; /* a resumed memory bank's clock: added to the source's frame times */
} eng_stream;

typedef enum eng_job_kind { JOB_ASK, JOB_IMAGE, JOB_WATCH } eng_job_kind;

typedef struct eng_job {
    struct eng_job *next; /* the backend's job list (cancel), or the image queue */
    uint64_t id;          /* the backend's id */
    uint64_t qid;         /* the stream engine's question id (stream jobs) */
    eng *owner;
    eng_job_kind kind;
    eng_stream *s; /* JOB_ASK, JOB_WATCH: referenced (refs) */
    char *question;
    int max_tokens, prompt_tokens;
    svlm_sampler_params sampling; /* JOB_ASK: temp <= 0 greedy */
    double video_time;            /* stream time when asked */
    svlm_backend_ask_cb cb;       /* JOB_ASK, JOB_IMAGE */
    uint64_t watch_id;            /* JOB_WATCH */
    int n_images;
    svlm_backend_image *images; /* copies */
    atomic_int cancelled;
    double t_asked, t_started, t_first, t_last;
    int n_tokens;
    svlm_answer_metrics am; /* JOB_ASK: the stream's account of the answer (memory placed) */
    char utf8[8];           /* an incomplete UTF-8 sequence held back */
    size_t utf8_n;
    char *answer; /* JOB_WATCH: the text so far */
    size_t answer_len, answer_cap;
} eng_job;

typedef struct eng_watcher {
    struct eng_watcher *next;
    uint64_t id;
    char stream[SVLM_BACKEND_NAME_MAX];
    char *question;
    int cond_true;
    double interval, next_due, last_vt; /* last_vt: the stream's video time at the last evaluation */
    int max_tokens, in_flight, evaluated, last_yes;
    char *last_answer;
    svlm_backend_watch_cb cb;
} eng_watcher;

#define SVLM_BACKEND_MAX_OPENING 16

/* One stream's settings: the server's, with a client's `open` options applied. */
typedef struct eng_stream_settings {
    svlm_stream_params sp;
    int memory;
    svlm_stc_controls stc;
    int live; /* -1: from the URI (RTSP, webcams, HLS that is not finished); 0: a recording; 1: a
                 camera (watchdog, reconnects, the oldest frame dropped when behind) */
} eng_stream_settings;

struct svlm_engine_backend {
    svlm_engine_backend_opts o;
    char model_label[128];
    char memory_dir[512];
    svlm_llama *model;
    svlm_mmproj *mmproj;
    svlm_engine *engine; /* the two lanes: ingest and answers */
    svlm_stream_params sp;
    svlm_memory_opts mo;
    int n_embd, tokens_per_tile;
    size_t kv_bytes_per_token;

    pthread_mutex_t lock;
    pthread_cond_t cv; /* streams released, image jobs queued */
    eng_stream *streams;
    int n_streams; /* including those being opened */
    /* names of streams being opened (not yet in `streams`): a second open of the same name is
     * refused at once, so two banks never share one memory folder */
    char opening[SVLM_BACKEND_MAX_OPENING][SVLM_BACKEND_NAME_MAX];
    eng_job *jobs; /* stream jobs in the engine (for cancel) */
    int n_jobs;
    uint64_t next_id;
    int stopping;
    atomic_int shutdown; /* sources' abort_flag: opens and reads give up (the server is stopping) */

    /* still images: one worker with its own kernels and encoder */
    svlm_kernels *k_image;
    svlm_vision_ctx *image_vc;
    eng_job *image_head, *image_tail, *image_running;
    pthread_t image_thread;
    int image_thread_started;

    pthread_mutex_t watch_lock;
    pthread_cond_t watch_cv; /* wakes the timer: a new watch, or stop */
    int watch_stop;
    eng_watcher *watches;
    pthread_t watch_thread;
    int watch_thread_started;
};

/* Parses an `open` message's options (JSON text, NULL or "" for none) over e's defaults:
 * {"stc": on/off, "memory": on/off, "frames_window": 1-256, "text_window": 16-8192,
 * "memory_tokens": 1-1024}. Unknown keys or bad values: SVLM_E_INVALID naming them. */
svlm_status eng_stream_options(const svlm_engine_backend *e, const char *json, eng_stream_settings *out,
                               svlm_err *err);

double eng_now_ms(void);
double eng_wall(void);

/* Streams (engine_backend.c). */
eng_stream *eng_stream_ref(eng *e, const char *name); /* NULL when absent or closing */
void eng_stream_unref(eng_stream *s);

/* Answers (engine_answer.c). */
/* Whether the question's chat turn leaves room for an answer token: *n_q its tokens, *room the
 * answer tokens it leaves; SVLM_E_TOO_LONG or SVLM_E_INVALID otherwise. */
svlm_status eng_question_fits(eng *e, const char *question, int *n_q, int *room, svlm_err *err);
/* Queues a stream job (JOB_ASK or JOB_WATCH; takes ownership of j and its stream reference). */
svlm_status eng_job_submit(eng *e, eng_job *j, uint64_t *id, svlm_err *err);
/* An answer token: timing and delivery. Returns nonzero to stop. */
int eng_job_token(eng_job *j, const char *piece, size_t len);
svlm_status eng_ask(void *ctx, const svlm_backend_ask_req *req, const svlm_backend_ask_cb *cb, uint64_t *id,
                    svlm_err *err);
void eng_cancel(void *ctx, uint64_t id);
void eng_job_free(eng_job *j);
/* Hands a piece of answer text to the job's consumer in whole UTF-8 characters. */
void eng_job_emit(eng_job *j, const char *text, size_t len, int flush);
/* The still-image worker. */
svlm_status eng_images_start(eng *e, svlm_err *err);
void eng_images_stop(eng *e);

/* Still images (engine_image.c): answers j on the image worker. */
svlm_status eng_image_answer(eng *e, eng_job *j, int *prompt_tokens, svlm_err *err);

/* Watches (engine_watch.c). */
svlm_status eng_watch_start_thread(eng *e, svlm_err *err);
void eng_watch_stop_thread(eng *e);
/* A watch evaluation finished (answer NULL on failure): alerts if its condition fires. */
void eng_watch_result(eng *e, uint64_t watch_id, const char *answer, double video_time);
svlm_status eng_watch(void *ctx, const svlm_backend_watch_req *req, const svlm_backend_watch_cb *cb,
                      uint64_t *id, svlm_err *err);
void eng_unwatch(void *ctx, uint64_t id);

#endif
