/*
 * Video sources: turn a file, camera or network stream into a steady stream of sampled,
 * timestamped RGB frames.
 *
 * URIs (the backend in brackets is the default, --backend / opts.backend overrides it):
 *   PATH or file://PATH                    recordings              [ffmpeg, else gst]
 *                  (a named pipe is opened once its writer has written, within opts.open_timeout_s)
 *   rtsp://[user:pass@]host[:port]/path    IP cameras, live        [ffmpeg, else gst]
 *   http(s)://...  (progressive, HLS .m3u8) replay; .m3u8 is live  [ffmpeg, else gst]
 *                  unless the playlist is finished (video on demand: it has a duration)
 *   v4l2:///dev/videoN                     webcams, live           [gst only]
 *   gst:LAUNCH                             any GStreamer source    [gst only]
 *   pattern:[KEY=VAL,...] or testsrc:...   built-in test pattern   [always available]
 *       keys: size=WxH (640x480), rate=FPS (25), duration=S (10, 0 = endless), live (flag)
 *
 * Frames are RGB24, packed 3 bytes per pixel, rows `stride` bytes apart, already scaled to
 * the output size (opts.max_edge or opts.width/height); each is scaled and colour-converted
 * once, and frames that sampling throws away are not converted at all.
 *
 * Threading and blocking:
 *   - One consumer thread calls svlm_source_next(); a source is not otherwise thread-safe.
 *   - svlm_source_cancel() may be called from any thread, and from a signal handler (it only
 *     stores an atomic flag). A blocked svlm_source_next() then returns SVLM_E_CANCELLED
 *     within about 100 ms. svlm_source_open() and svlm_source_probe() run before a handle
 *     exists: they block for at most opts.open_timeout_s.
 *   - svlm_source_next() blocks until a frame or an event is ready: for replay it decodes in
 *     the caller's thread (paced to real time when opts.pace is REALTIME); for live sources a
 *     reader thread decodes into a bounded queue that drops the oldest frame when the consumer
 *     lags (reported as a DROP event), so the network is never stalled by the consumer. Its
 *     events are bounded too: one of the same kind as the last waiting event is merged into it
 *     (counts added; total, detail and seconds the newer ones, a reconnect's downtime added), and
 *     beyond a few waiting events the oldest whose kind comes again is merged into that later one,
 *     so a consumer that reads late gets every total and the sum of every count.
 *
 * Ownership: a frame returned by svlm_source_next() belongs to the caller, which releases
 * it with svlm_frame_release() (it may keep it as long as it likes, on any thread).
 */
#ifndef SVLM_PIPELINE_SOURCE_H
#define SVLM_PIPELINE_SOURCE_H

#include <stdatomic.h>
#include <stdint.h>

#include "svlm.h"

typedef enum svlm_backend_kind {
    SVLM_BACKEND_AUTO = 0,
    SVLM_BACKEND_FFMPEG,
    SVLM_BACKEND_GST,
    SVLM_BACKEND_PATTERN,
} svlm_backend_kind;

typedef enum svlm_pace { SVLM_PACE_MAX = 0, SVLM_PACE_REALTIME } svlm_pace;
typedef enum svlm_transport {
    SVLM_TRANSPORT_AUTO = 0,
    SVLM_TRANSPORT_TCP,
    SVLM_TRANSPORT_UDP
} svlm_transport;

typedef struct svlm_source_opts {
    double fps;        /* sampling rate in frames per second; 0 keeps every frame (default 1) */
    int max_edge;      /* scale so the longest edge is at most this; 0 keeps native size (512) */
    int width, height; /* exact output size when both > 0 (overrides max_edge) */
    svlm_backend_kind backend;
    svlm_pace pace;           /* replay: as fast as the consumer takes frames, or real time (a local
                                 file opened live is always read in real time) */
    int live;                 /* -1: from the URI (rtsp, v4l2, HLS, live pattern), 0: replay, 1: live */
    svlm_transport transport; /* RTSP transport (AUTO: the library's choice, usually UDP then TCP) */
    double open_timeout_s;    /* connect/open limit (10) */
    double stall_timeout_s;   /* live watchdog: no cleanly decoded frame for this long = stalled (5);
                                 not for the built-in pattern, which cannot stall */
    int max_reconnects;       /* live: consecutive failed reconnects before giving up, -1 = forever (-1) */
    double backoff_initial_s; /* first reconnect delay (0.25), doubling up to backoff_max_s (5) with ±25%
                                 jitter */
    double backoff_max_s;
    int queue_frames; /* live queue capacity in frames (4) */
    /* Optional, the owner's: while it is non-zero, opens, probes, reads and reconnects give up as if
     * cancelled (a server shutting down stops opens that hang; NULL: none). Must outlive the source. */
    const atomic_int *abort_flag;
    /* A live source that reconnects (RTSP, HTTP, v4l2, gst:) whose first open fails still opens:
     * it starts as if it had just been lost (a DISCONNECT event saying why, then reconnects with
     * backoff), and svlm_source_open returns SVLM_OK with *err holding why the first open failed
     * (err->status not SVLM_OK). Not for bad options, an unsupported URI or codec (0) */
    int keep_trying;
} svlm_source_opts;

void svlm_source_opts_default(svlm_source_opts *opts);

typedef struct svlm_frame {
    uint8_t *data; /* RGB24, owned by the caller once delivered: svlm_frame_release() */
    int width, height;
    int stride;    /* bytes between rows (>= 3 * width) */
    double pts;    /* presentation time, seconds from the stream's start; never decreases, also
                      across reconnects (live sources: the first frame is 0) */
    double wall;   /* wall-clock arrival time (decode time; for a real-time replay, the time it
                      was due), seconds since the Unix epoch */
    int64_t index; /* 0, 1, 2, ... over delivered frames */
} svlm_frame;

/* Frees the pixels and clears the struct; accepts NULL or an empty frame. */
void svlm_frame_release(svlm_frame *frame);

typedef enum svlm_source_event_kind {
    SVLM_EVENT_DROP = 1,   /* the live queue dropped `count` frames the consumer had not taken */
    SVLM_EVENT_CORRUPT,    /* the decoder skipped or flagged `count` corrupt packets/frames */
    SVLM_EVENT_STALL,      /* the watchdog found no frame for stall_timeout_s */
    SVLM_EVENT_DISCONNECT, /* the stream ended or failed; a reconnect follows (detail says why) */
    SVLM_EVENT_RECONNECT,  /* reopened after `count` attempts, `seconds` after the disconnect */
    SVLM_EVENT_EOS,        /* end of stream; the next call returns SVLM_E_END */
    SVLM_EVENT_RETRY,      /* `count` reconnect attempts failed, the last for `detail`; more follow */
} svlm_source_event_kind;

typedef struct svlm_source_event {
    svlm_source_event_kind kind;
    int64_t count;  /* see above */
    int64_t total;  /* running total of this kind (drops, corrupt, reconnects) */
    double seconds; /* RECONNECT: downtime */
    char detail[256];
} svlm_source_event;

typedef enum svlm_item_kind { SVLM_ITEM_FRAME = 1, SVLM_ITEM_EVENT } svlm_item_kind;

typedef struct svlm_source_item {
    svlm_item_kind kind;
    svlm_frame frame;        /* kind == FRAME */
    svlm_source_event event; /* kind == EVENT */
} svlm_source_item;

typedef struct svlm_source_stats {
    int64_t decoded;    /* frames the decoder produced (before sampling) */
    int64_t delivered;  /* frames handed to the consumer */
    int64_t dropped;    /* frames the live queue dropped */
    int64_t corrupt;    /* corrupt packets/frames skipped or flagged */
    int64_t reconnects; /* successful reconnects */
} svlm_source_stats;

typedef struct svlm_source svlm_source;

/* Opens uri. Fails with a clear message for an unknown scheme, a missing file, an unreachable
 * host, a refused login, a stream without video or an unsupported codec. */
svlm_status svlm_source_open(svlm_source **out, const char *uri, const svlm_source_opts *opts, svlm_err *err);

/* Next frame or event, in order. Returns SVLM_OK with *item filled, SVLM_E_END after the EOS
 * event, SVLM_E_CANCELLED after svlm_source_cancel(), or an error (fatal for the source). */
svlm_status svlm_source_next(svlm_source *src, svlm_source_item *item, svlm_err *err);

/* Thread-safe and async-signal-safe. */
void svlm_source_cancel(svlm_source *src);

void svlm_source_stats_get(const svlm_source *src, svlm_source_stats *stats);
/* Name of the backend in use ("ffmpeg", "gst", "pattern"), and whether the source is live. */
const char *svlm_source_backend_name(const svlm_source *src);
int svlm_source_is_live(const svlm_source *src);

/* Stops the reader, releases everything; accepts NULL. */
void svlm_source_close(svlm_source *src);

/* ---- probing ----------------------------------------------------------------------------- */

typedef struct svlm_stream_desc {
    int index;
    char type[16];  /* "video", "audio", "subtitle", "data" */
    char codec[32]; /* "h264", ... ("raw" when the backend only sees decoded caps) */
    int width, height;
    double fps;      /* 0 when unknown */
    double duration; /* seconds, 0 when unknown */
    int sample_rate, channels;
} svlm_stream_desc;

#define SVLM_PROBE_MAX_STREAMS 16
typedef struct svlm_probe_info {
    char backend[16];
    char container[64];
    double duration; /* seconds, 0 when unknown (live) */
    int64_t bit_rate;
    int live;
    int n_streams;
    svlm_stream_desc streams[SVLM_PROBE_MAX_STREAMS];
} svlm_probe_info;

svlm_status svlm_source_probe(const char *uri, const svlm_source_opts *opts, svlm_probe_info *info,
                              svlm_err *err);

/* ---- helpers shared with the CLI ----------------------------------------------------------- */

/* Which backends this build has: "ffmpeg", "gst", "pattern". */
int svlm_source_backend_available(svlm_backend_kind kind);
const char *svlm_backend_kind_name(svlm_backend_kind kind);
/* Parses "ffmpeg", "gst"/"gstreamer", "pattern", "auto". Returns -1 if unknown. */
int svlm_backend_kind_parse(const char *name, svlm_backend_kind *out);
/* Process-wide: how much the media libraries print to stderr (0: errors that stop a stream
 * only, 1: their warnings too, e.g. every damaged slice). For programs, not libraries. */
void svlm_source_library_log(int verbose);

#endif
