/*
 * What a source backend (FFmpeg, GStreamer, the built-in pattern) implements, and the pieces
 * that source.c shares with them: the parsed URI, the control block (cancel flag, watchdog,
 * counters) and the sampler. Internal to pipeline/.
 */
#ifndef SVLM_PIPELINE_SOURCE_BACKEND_H
#define SVLM_PIPELINE_SOURCE_BACKEND_H

#include <stdatomic.h>

#include "pipeline/sampler.h"
#include "pipeline/source.h"

typedef enum svlm_uri_kind {
    SVLM_URI_FILE = 1,
    SVLM_URI_RTSP,
    SVLM_URI_HTTP, /* http and https */
    SVLM_URI_V4L2,
    SVLM_URI_GST,
    SVLM_URI_PATTERN,
} svlm_uri_kind;

#define SVLM_URI_MAX 4096
typedef struct svlm_uri {
    svlm_uri_kind kind;
    /* FILE: the path; RTSP/HTTP: the whole URL; V4L2: the device path; GST: the launch
     * description; PATTERN: the parameter list. */
    char target[SVLM_URI_MAX];
    int is_hls; /* an HTTP URL ending in .m3u8 */
} svlm_uri;

/* Parses uri; an unknown scheme or an empty target is SVLM_E_INVALID with a clear message. */
svlm_status svlm_uri_parse(const char *uri, svlm_uri *out, svlm_err *err);
const char *svlm_uri_kind_name(svlm_uri_kind kind);
/* Live unless told otherwise: RTSP, V4L2, HLS; the pattern decides from its "live" key. */
int svlm_uri_default_live(const svlm_uri *uri);
/* s with the "user:pass@" after each "://" written as "***@" (a launch description may hold
 * several URLs) and password-like values (?password=, user-pw=) as "***", into out (n bytes), so
 * that passwords never reach a message. */
void svlm_uri_redact(const char *s, char *out, size_t n);
/* The same on a message in place (s holds n bytes): what a backend says may quote its URI. */
void svlm_redact_in_place(char *s, size_t n);
/* A source's URI as clients may see it: the login of a URL ("user:pass@" ends only at /?#, as
 * FFmpeg reads it), password-like query values (password=, pwd=, token=, ...) and, in a gst:
 * description, also the user-pw= / proxy-pw= properties as "***". out may be cut at n bytes. */
void svlm_uri_redact_source(const char *uri, char *out, size_t n);

/* Why a blocking backend call should give up. */
typedef enum svlm_stop_reason {
    SVLM_STOP_NONE = 0,
    SVLM_STOP_CANCEL,
    SVLM_STOP_STALL,
    SVLM_STOP_OPEN_TIMEOUT
} svlm_stop_reason;

typedef struct svlm_ingest_ctl {
    atomic_int cancel;
    const atomic_int *abort_flag;  /* the owner's (opts.abort_flag): non-zero cancels too; NULL: none */
    atomic_llong progress_ns;      /* monotonic time of the last good decoded frame (or of the read start) */
    atomic_llong frozen_seen_ns;   /* the process's frozen time as of the last check (ingest_ctl.c) */
    atomic_llong open_deadline_ns; /* while opening: give up after this; 0 otherwise */
    atomic_llong decoded;
    atomic_llong corrupt;
    /* corrupt as it was at progress_ns: more since then means data came but did not decode */
    atomic_llong corrupt_at_progress;
    atomic_int stop_reason; /* the last reason svlm_ctl_should_stop returned */
    double stall_timeout_s; /* 0: no watchdog */
} svlm_ingest_ctl;

void svlm_ctl_init(svlm_ingest_ctl *ctl, double stall_timeout_s);
/* Marks progress now (a frame decoded cleanly, or a read or open began). Not for frames the decoder
 * flagged as damaged: a stream of only those must still trip the watchdog. */
void svlm_ctl_touch(svlm_ingest_ctl *ctl);
/* Whether the source is cancelled (its own flag or the owner's abort_flag). */
int svlm_ctl_cancelled(svlm_ingest_ctl *ctl);
/* Cheap; called from library callbacks (FFmpeg interrupt callback, GStreamer poll loops), which
 * call it every 100 ms or so while they wait. Time the whole process did not run (stopped,
 * suspended, a paused VM: a heartbeat thread missed its beats by more than SVLM_CTL_FROZEN_S) is not
 * counted against the source, neither as a stall nor as open time; a reader merely blocked in a call
 * (a hung resolver, a slow decode) is, as the heartbeat went on. */
svlm_stop_reason svlm_ctl_should_stop(svlm_ingest_ctl *ctl);
#define SVLM_CTL_FROZEN_S 1.0
/* Status and message for a stop: CANCELLED, or E_IO "stalled/timed out". */
svlm_status svlm_ctl_stop_error(svlm_ingest_ctl *ctl, svlm_err *err, const char *what);

double svlm_mono_now(void);
double svlm_wall_now(void);
/* Sleeps up to seconds, waking early (returns 1) when the source is cancelled. */
int svlm_ctl_sleep(svlm_ingest_ctl *ctl, double seconds);

/* Output size for a native w x h under opts (max_edge / width+height); never 0. */
void svlm_output_size(const svlm_source_opts *opts, int w, int h, int *out_w, int *out_h);

/* Bytes allocated past a frame's last row: swscale's SIMD converters (yuv420p to RGB24, unscaled)
 * write whole blocks of 8 pixels, up to 21 bytes past a row whose width is no multiple of 8. Rows
 * are written in order, so only the last row's spill leaves the pixels: here. */
#define SVLM_FRAME_SLACK 256

/* Allocates an RGB24 frame of w x h with a tight stride (and SVLM_FRAME_SLACK bytes after it). */
svlm_status svlm_frame_alloc(svlm_frame *frame, int w, int h, svlm_err *err);

typedef struct svlm_backend_args {
    const svlm_uri *uri;
    const svlm_source_opts *opts; /* live already resolved to 0 or 1 */
    svlm_ingest_ctl *ctl;
    svlm_sampler *sampler; /* NULL when probing */
    /* >= 0: the FILE is a named pipe, already open here (non-blocking, data waiting): read this
     * descriptor (it stays the source's) instead of opening the path, which would block. */
    int fifo_fd;
    /* < 0: a live HLS playlist is to start this many segments before its end (the new ones since
     * the last one played); 0: the backend's default */
    int hls_start;
} svlm_backend_args;

typedef struct svlm_backend_ops {
    const char *name;
    /* Opens and starts the stream (bounded by opts->open_timeout_s through ctl). */
    svlm_status (*open)(void **ctx, const svlm_backend_args *args, svlm_err *err);
    /* Decodes until the sampler takes a frame and converts only that one into *out (pixels
     * newly allocated; pts in seconds from the stream's start; wall = decode time).
     * Bumps ctl->decoded for every decoded frame and ctl->corrupt for skipped corrupt data.
     * Returns SVLM_E_END at the end, SVLM_E_IO when the stream is lost, and the result of
     * svlm_ctl_stop_error() when ctl says stop. */
    svlm_status (*read)(void *ctx, svlm_frame *out, svlm_err *err);
    void (*close)(void *ctx);
    svlm_status (*probe)(const svlm_backend_args *args, svlm_probe_info *info, svlm_err *err);
} svlm_backend_ops;

extern const svlm_backend_ops svlm_pattern_backend;
#ifdef SVLM_HAVE_FFMPEG
extern const svlm_backend_ops svlm_ffmpeg_backend;
#endif
#ifdef SVLM_HAVE_GST
extern const svlm_backend_ops svlm_gst_backend;
#endif

/* The backend for kind (AUTO picks the default for the URI), or NULL with a message saying
 * what this build lacks or why the pair does not fit. */
const svlm_backend_ops *svlm_backend_choose(svlm_backend_kind kind, const svlm_uri *uri, svlm_err *err);

#endif
