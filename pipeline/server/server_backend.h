/*
 * What the server needs from the engine, and nothing more: a struct of function pointers and
 * a context. The server never includes engine headers; the engine (or a test fake) fills one
 * of these in. Everything here is plain data so either side can change inside freely.
 *
 * Threading contract:
 *   - The server calls every function from its service thread, except open_stream and
 *     close_stream, which it calls from a short-lived worker thread because opening a network
 *     source may block for seconds. All functions may be called concurrently with each other.
 *   - Callbacks (on_token, on_done, on_alert) may arrive on any engine thread, at any time
 *     after the call that registered them has returned or even before it returns. The server
 *     hands them to its service thread itself; callbacks must not block.
 *   - ask(): on_done is called exactly once per successful ask() (also after cancel(), with
 *     cancelled = 1), and no on_token after it. Cancelling an id that finished is harmless.
 *   - unwatch(): when it returns, no on_alert for that watch runs or will run.
 *   - Strings passed in are only valid during the call: copy what you keep.
 */
#ifndef SVLM_PIPELINE_SERVER_BACKEND_H
#define SVLM_PIPELINE_SERVER_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "svlm.h"

#define SVLM_BACKEND_NAME_MAX  64 /* stream names: [A-Za-z0-9_.-]{1,63} */
#define SVLM_BACKEND_MAX_TIERS 6

typedef struct svlm_backend_open_req {
    const char *name;    /* stream name chosen by the client */
    const char *uri;     /* any URI pipeline/source.h accepts */
    double fps;          /* sampling rate (frames per second); 0: the engine's default */
    const char *options; /* the client's "options" object as compact JSON, or NULL */
} svlm_backend_open_req;

/* One memory tier: e.g. "kv_sink", "kv_vision", "kv_text", "memory_bank". */
typedef struct svlm_backend_tier {
    char name[24];
    int64_t bytes;
} svlm_backend_tier;

typedef struct svlm_backend_stream_status {
    char name[SVLM_BACKEND_NAME_MAX];
    char uri[1024];   /* (whole: a status cut inside a character would not be JSON) */
    char state[16];   /* "opening", "running", "stalled", "reconnecting", "ended", "failed" */
    char reason[512]; /* why it is stalled, reconnecting or failed ("" otherwise) */
    int live;
    double fps_in;     /* sampled frames per second entering the engine, recent average */
    int64_t frames_in; /* frames that entered the engine */
    int64_t drops;     /* frames dropped at ingest (source queue and engine backlog) */
    int64_t reconnects;
    double video_time;                     /* seconds of video ingested */
    double encoder_ms_sum, prefill_ms_sum; /* totals over frames_in, for means and /metrics */
    char kv_type[8];                       /* the stream's KV cache type: "f32", "f16" ("": unknown) */
    int n_tiers;
    svlm_backend_tier tiers[SVLM_BACKEND_MAX_TIERS];
} svlm_backend_stream_status;

/* A still image given with a question (OpenAI image_url parts): encoded bytes as sent. */
typedef struct svlm_backend_image {
    const uint8_t *data;
    size_t size;
    const char *mime; /* "image/jpeg", "image/png", ... or "" when unknown */
} svlm_backend_image;

typedef struct svlm_backend_ask_req {
    const char *stream; /* stream to ask about; may be NULL when images are given */
    const char *question;
    int max_tokens;
    float temperature; /* 0: greedy */
    int n_images;      /* > 0: answer about these still images instead of the stream */
    const svlm_backend_image *images;
    /* with temperature > 0: nucleus sampling (top_p in (0, 1); 0 or 1: off) and the draw's seed
     * (has_seed 0: a fresh one, so answers differ) */
    float top_p;
    int has_seed;
    uint64_t seed;
} svlm_backend_ask_req;

typedef struct svlm_backend_done {
    int cancelled;      /* stopped by cancel() */
    svlm_status status; /* SVLM_OK, or why the answer failed */
    char error[256];    /* when status != SVLM_OK */
    int prompt_tokens;  /* tokens the question added (including images) */
    int completion_tokens;
    double queue_wait_ms;  /* from ask() to the start of its prefill */
    double ttft_ms;        /* from ask() to the first answer token */
    double decode_ms;      /* from the first to the last answer token */
    int64_t frames_during; /* frames ingested on the stream while this answer was made */
    /* The token limit the answer ran under: the asked max_tokens after the engine's own caps (its
     * longest answer, the room left in the context). An answer with this many tokens was cut by
     * it (finish_reason "length"). 0: not reported (the server compares with the asked one). */
    int max_tokens;
    /* The stream's past the answer drew on: memory entries placed before the question (video
     * seconds, the tier: "short", "mid", "event"), and whether the question named a time ("ten
     * minutes ago", "at 1:05") that chose them. */
    int n_memory, memory_time_anchored;
    struct {
        double t0, t1;
        char tier[8];
    } memory[8];
} svlm_backend_done;

typedef struct svlm_backend_ask_cb {
    /* A piece of answer text (whole UTF-8 characters; may be empty for a token that produced
     * none yet). */
    void (*on_token)(void *user, const char *text, size_t len);
    void (*on_done)(void *user, const svlm_backend_done *done);
    void *user;
} svlm_backend_ask_cb;

typedef struct svlm_backend_watch_req {
    const char *stream;
    const char *question;  /* asked every interval_s seconds of stream time */
    const char *condition; /* "true": alert when a yes/no answer turns yes;
                              "change": alert when the answer text changes */
    double interval_s;
    int max_tokens;
} svlm_backend_watch_req;

typedef struct svlm_backend_alert {
    const char *answer;
    double video_time; /* stream time the answer is about */
    double wall;       /* Unix seconds */
} svlm_backend_alert;

typedef struct svlm_backend_watch_cb {
    void (*on_alert)(void *user, const svlm_backend_alert *alert);
    void *user;
} svlm_backend_watch_cb;

/* A frame for snapshots: either ready JPEG bytes or RGB24 for the server to encode. The
 * backend allocates with malloc; the server frees data. */
typedef struct svlm_backend_frame {
    uint8_t *data;
    size_t size;
    int is_jpeg; /* 1: data is a JPEG file; 0: RGB24 of width x height, stride */
    int width, height, stride;
    int64_t index; /* frame number, so the server can cache its encoding */
    double pts;
} svlm_backend_frame;

typedef struct svlm_backend_info {
    char model[128]; /* what /v1/models and the page show */
    int stand_in;    /* 1: random-weight stand-in model (the page shows a banner) */
} svlm_backend_info;

/* What computes (read at each /metrics): the answer lane's backend, and its device's memory. */
typedef struct svlm_backend_compute {
    char backend[64]; /* svlm_kernels_name, e.g. "cuda:0 NVIDIA H100" or "cpu-avx2 x8" */
    int gpu;
    int device_known; /* 0: buffers are host memory (the process's resident size tells) */
    size_t device_used, device_total;
} svlm_backend_compute;

typedef struct svlm_server_backend {
    void *ctx;

    void (*info)(void *ctx, svlm_backend_info *out);

    svlm_status (*open_stream)(void *ctx, const svlm_backend_open_req *req, svlm_err *err);
    svlm_status (*close_stream)(void *ctx, const char *name, svlm_err *err);
    /* Fills up to cap entries, returns how many streams exist (may exceed cap). */
    int (*list_streams)(void *ctx, svlm_backend_stream_status *out, int cap);
    svlm_status (*stream_status)(void *ctx, const char *name, svlm_backend_stream_status *out, svlm_err *err);
    /* SVLM_E_AGAIN: the stream has no frame yet. */
    svlm_status (*latest_frame)(void *ctx, const char *name, svlm_backend_frame *out, svlm_err *err);

    /* Starts an answer; *id identifies it for cancel(). SVLM_E_LIMIT when the engine is full,
     * SVLM_E_TOO_LONG when the question cannot fit (done's status too, for one found out later). */
    svlm_status (*ask)(void *ctx, const svlm_backend_ask_req *req, const svlm_backend_ask_cb *cb,
                       uint64_t *id, svlm_err *err);
    void (*cancel)(void *ctx, uint64_t id);

    svlm_status (*watch)(void *ctx, const svlm_backend_watch_req *req, const svlm_backend_watch_cb *cb,
                         uint64_t *id, svlm_err *err);
    void (*unwatch)(void *ctx, uint64_t id);

    void (*compute)(void *ctx, svlm_backend_compute *out); /* NULL: not reported */
} svlm_server_backend;

#endif
