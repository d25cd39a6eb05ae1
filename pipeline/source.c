/*
 * A source: a backend plus what every backend shares — sampling, real-time pacing of
 * replays, the reader thread and drop-oldest queue of live sources, the watchdog and the
 * reconnect loop with exponential backoff and jitter.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "pipeline/frame_queue.h"
#include "pipeline/hls_playlist.h"
#include "pipeline/source_backend.h"
#include "pipeline/timeline.h"

#define PENDING_MAX 4
/* A recording read from a local file through GStreamer that gives no frame for this many stall
 * timeouts (30 s by default) is over: an animated GIF's pipeline (avdemux_gif) never ends, and the replay
 * waited for ever, a thread at 100%. */
#define GST_REPLAY_STALLS 6

struct svlm_source {
    svlm_source_opts opts;
    svlm_uri uri;
    const svlm_backend_ops *ops;
    void *bctx;
    svlm_ingest_ctl ctl;
    svlm_sampler sampler;
    int live, reconnectable;
    int pace_live;     /* a local file opened live: read in real time, like the camera it stands for */
    int fifo, fifo_fd; /* the FILE is a named pipe; its descriptor once a writer wrote (-1 before) */
    unsigned jitter_seed;

    /* replay: items produced in the consumer's thread, handed out in order */
    svlm_source_item pending[PENDING_MAX];
    int n_pending;
    svlm_status finished; /* SVLM_OK while running */
    svlm_err finished_err;
    int paced;
    double pace_mono0, pace_pts0;

    /* live */
    pthread_t reader;
    int reader_started;
    svlm_frame_queue queue;

    /* the timeline (producer side): keeps pts increasing across reconnects */
    svlm_timeline timeline;
    int64_t corrupt_reported;
    svlm_err first_err; /* keep_trying: why the first open failed (the reader reconnects first) */

    int64_t delivered;
    atomic_llong reconnects;

    /* a live HLS playlist: the sequence number of the last segment played (-1: unknown), and where
     * the next open starts (see svlm_backend_args.hls_start) */
    int64_t hls_played;
    int hls_start;
    int64_t hls_seen; /* its last segment's number when last read (-1: never read) */
    int hls_resync;   /* lost while its server was down too: what it played is not known */
};

void svlm_source_opts_default(svlm_source_opts *o) {
    memset(o, 0, sizeof *o);
    o->fps = 1.0;
    o->max_edge = 512;
    o->backend = SVLM_BACKEND_AUTO;
    o->pace = SVLM_PACE_MAX;
    o->live = -1;
    o->transport = SVLM_TRANSPORT_AUTO;
    o->open_timeout_s = 10;
    o->stall_timeout_s = 5;
    o->max_reconnects = -1;
    o->backoff_initial_s = 0.25;
    o->backoff_max_s = 5;
    o->queue_frames = 4;
}

static svlm_status check_opts(const svlm_source_opts *o, svlm_err *err) {
    if (!isfinite(o->fps) || o->fps < 0 || o->fps > 1000)
        return svlm_fail(err, SVLM_E_INVALID, "fps must be from 0 to 1000, got %g", o->fps);
    if (o->max_edge < 0 || o->max_edge > 16384)
        return svlm_fail(err, SVLM_E_INVALID, "max_edge must be from 0 to 16384");
    if ((o->width > 0) != (o->height > 0) || o->width < 0 || o->height < 0 || o->width > 16384 ||
        o->height > 16384)
        return svlm_fail(err, SVLM_E_INVALID, "output size must give both width and height, 1 to 16384");
    if (!(o->open_timeout_s > 0) || !(o->stall_timeout_s >= 0) || !(o->backoff_initial_s > 0) ||
        !(o->backoff_max_s >= o->backoff_initial_s))
        return svlm_fail(err, SVLM_E_INVALID,
                         "timeouts and backoff must be positive (backoff_max >= backoff_initial)");
    if (o->queue_frames < 1 || o->queue_frames > 1024)
        return svlm_fail(err, SVLM_E_INVALID, "queue_frames must be from 1 to 1024");
    return SVLM_OK;
}

/* Whether an HLS playlist is finished (#EXT-X-ENDLIST: video on demand), bounded by the open
 * timeout: read as text where FFmpeg can fetch it, else through a probe of its own (it reads
 * segments too; not when may_probe is 0): a finished playlist has a duration, a live one none.
 * *target_s and *last_seq (may be NULL): its target duration and last segment's number when read
 * (0 and -1 otherwise). fetch_err (may be NULL): why it could not be read (status SVLM_OK when it
 * was, or when this build cannot read it). */
static int finished_playlist(const char *uri, const svlm_source_opts *opts, double *target_s,
                             int64_t *last_seq, int may_probe, svlm_err *fetch_err) {
    if (target_s) *target_s = 0;
    if (last_seq) *last_seq = -1;
    if (fetch_err) memset(fetch_err, 0, sizeof *fetch_err);
    svlm_ingest_ctl ctl;
    svlm_ctl_init(&ctl, 0);
    ctl.abort_flag = opts->abort_flag;
    atomic_store(&ctl.open_deadline_ns, (long long)((svlm_mono_now() + opts->open_timeout_s) * 1e9));
    svlm_hls_playlist pl;
    svlm_err ferr = {0};
    const svlm_status fs = svlm_hls_fetch(uri, &ctl, &pl, &ferr);
    if (fs == SVLM_OK && target_s) *target_s = pl.target_duration;
    if (fs == SVLM_OK && last_seq) *last_seq = svlm_hls_last_seq(&pl);
    if (fs != SVLM_OK && fs != SVLM_E_UNSUPPORTED && fetch_err) *fetch_err = ferr;
    if (fs != SVLM_E_UNSUPPORTED || !may_probe) return fs == SVLM_OK && pl.finished;
    svlm_source_opts po = *opts;
    po.live = 1;
    svlm_probe_info info;
    memset(&info, 0, sizeof info);
    svlm_err perr = {0};
    return svlm_source_probe(uri, &po, &info, &perr) == SVLM_OK && info.duration > 0;
}

/*
 * A named pipe's open(2) blocks in the kernel until a writer opens it, out of reach of the open
 * timeout and of a cancel. So it is opened here without blocking and polled until a writer has
 * written something (or ctl says stop); the backends then read that descriptor.
 */
static svlm_status fifo_wait(const char *path, svlm_ingest_ctl *ctl, double timeout_s, int *fd_out,
                             svlm_err *err) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return svlm_fail(err, SVLM_E_IO, "cannot open the named pipe %s: %s", path, strerror(errno));
    for (;;) {
        struct pollfd p = {fd, POLLIN, 0};
        int n = poll(&p, 1, 50); /* short: a cancel or the deadline is noticed within 50 ms */
        if (n > 0 && (p.revents & POLLIN)) break;
        const svlm_stop_reason why = svlm_ctl_should_stop(ctl);
        svlm_status st = SVLM_OK;
        if (n > 0 && (p.revents & (POLLHUP | POLLERR)))
            st = svlm_fail(err, SVLM_E_IO, "%s: the named pipe's writer closed it without writing anything",
                           path);
        else if (n < 0 && errno != EINTR)
            st = svlm_fail(err, SVLM_E_IO, "cannot wait on the named pipe %s: %s", path, strerror(errno));
        else if (why == SVLM_STOP_OPEN_TIMEOUT)
            st = svlm_fail(err, SVLM_E_IO,
                           "%s is a named pipe (FIFO) and nothing was written to it within %g s: start the "
                           "program that writes the video into it (--open-timeout S waits longer)",
                           path, timeout_s);
        else if (why)
            st = svlm_ctl_stop_error(ctl, err, path);
        if (st != SVLM_OK) {
            close(fd);
            return st;
        }
    }
    *fd_out = fd;
    return SVLM_OK;
}

static svlm_status open_backend(svlm_source *s, svlm_err *err) {
    svlm_ctl_touch(&s->ctl); /* (no freeze before the deadline: the backoff before it was none) */
    atomic_store(&s->ctl.stop_reason, SVLM_STOP_NONE);
    atomic_store(&s->ctl.open_deadline_ns, (long long)((svlm_mono_now() + s->opts.open_timeout_s) * 1e9));
    svlm_status st = SVLM_OK;
    if (s->fifo && s->fifo_fd < 0) {
        st = fifo_wait(s->uri.target, &s->ctl, s->opts.open_timeout_s, &s->fifo_fd, err);
        /* the writer came: the backend's own open gets the whole timeout, not what the wait left */
        atomic_store(&s->ctl.open_deadline_ns, (long long)((svlm_mono_now() + s->opts.open_timeout_s) * 1e9));
    }
    svlm_backend_args args = {&s->uri, &s->opts, &s->ctl, &s->sampler, s->fifo_fd, s->hls_start};
    if (st == SVLM_OK) st = s->ops->open(&s->bctx, &args, err);
    atomic_store(&s->ctl.open_deadline_ns, 0);
    svlm_ctl_touch(&s->ctl);
    if (st != SVLM_OK) s->bctx = NULL;
    if (st != SVLM_OK && err) svlm_redact_in_place(err->msg, sizeof err->msg); /* (it may quote the URI) */
    return st;
}

static void event_item(svlm_source_item *item, svlm_source_event_kind kind, int64_t count, int64_t total,
                       const char *detail) {
    memset(item, 0, sizeof *item);
    item->kind = SVLM_ITEM_EVENT;
    item->event.kind = kind;
    item->event.count = count;
    item->event.total = total;
    if (detail) snprintf(item->event.detail, sizeof item->event.detail, "%.255s", detail);
}

/* A CORRUPT event when the decoder skipped something since the last report. */
static int corrupt_event(svlm_source *s, svlm_source_item *item) {
    int64_t now = atomic_load(&s->ctl.corrupt);
    if (now == s->corrupt_reported) return 0;
    event_item(item, SVLM_EVENT_CORRUPT, now - s->corrupt_reported, now, NULL);
    s->corrupt_reported = now;
    return 1;
}

static void place_on_timeline(svlm_source *s, svlm_frame *f) {
    /* (some files carry timestamps that step back at their end, box_printed_text_handheld.mp4 for
     * one: consumers get a timeline that never goes backwards) */
    f->pts = svlm_timeline_place(&s->timeline, f->pts, f->wall);
}

static svlm_status read_backend(svlm_source *s, svlm_frame *f, svlm_err *err) {
    svlm_ctl_touch(&s->ctl);
    atomic_store(&s->ctl.stop_reason, SVLM_STOP_NONE);
    const svlm_status st = s->ops->read(s->bctx, f, err);
    if (st != SVLM_OK && err) svlm_redact_in_place(err->msg, sizeof err->msg); /* (it may quote the URI) */
    return st;
}

/* ---- live: the reader thread ------------------------------------------------------------- */

static void push_event(svlm_source *s, svlm_source_event_kind kind, int64_t count, int64_t total,
                       double seconds, const char *detail) {
    svlm_source_item item;
    event_item(&item, kind, count, total, detail);
    item.event.seconds = seconds;
    svlm_frame_queue_push(&s->queue, &item);
}

/* The live HLS playlist now, within the open timeout (no stall counted meanwhile). */
static svlm_status fetch_playlist(svlm_source *s, svlm_hls_playlist *pl, svlm_err *err) {
    atomic_store(&s->ctl.stop_reason, SVLM_STOP_NONE);
    atomic_store(&s->ctl.open_deadline_ns, (long long)((svlm_mono_now() + s->opts.open_timeout_s) * 1e9));
    svlm_status st = svlm_hls_fetch(s->uri.target, &s->ctl, pl, err);
    atomic_store(&s->ctl.open_deadline_ns, 0);
    svlm_ctl_touch(&s->ctl);
    return st;
}

/* A live HLS playlist lost (its end reached, or a stall): what it lists now was played, so a
 * reconnect waits for segments after its last one and starts at them (reopened as it was, it
 * played its last segments again, old frames as new ones, every few seconds for as long as its
 * encoder was down). Returns 1 when the playlist has become finished: the stream is over. why (n
 * bytes) is the disconnect's reason, made plainer when the playlist explains it. */
static int hls_lost(svlm_source *s, svlm_status st, char *why, size_t n) {
    svlm_hls_playlist pl;
    svlm_err perr = {0};
    const svlm_status fs = fetch_playlist(s, &pl, &perr);
    if (fs == SVLM_E_UNSUPPORTED) /* (no FFmpeg to read it with: ask a probe) */
        return st == SVLM_E_END && finished_playlist(s->uri.target, &s->opts, NULL, NULL, 1, NULL);
    if (fs != SVLM_OK) { /* unreachable now: what was played is read once it answers again */
        s->hls_resync = 1;
        return 0;
    }
    if (pl.finished && st == SVLM_E_END) return 1;
    const int64_t last = svlm_hls_last_seq(&pl);
    /* numbered below what it listed when opened: its encoder started over meanwhile, and what it
     * lists now is new (reopened at once) */
    s->hls_played = last < s->hls_seen ? -1 : last;
    s->hls_seen = last;
    if (st == SVLM_E_END)
        snprintf(why, n,
                 "end of stream: the live playlist lists no segment after #%lld (has its encoder stopped?)",
                 (long long)s->hls_played);
    return 0;
}

/* Before a reconnect's open: SVLM_OK when the playlist has segments not yet played (the open
 * starts at the first of them), E_AGAIN while it has none, E_END when it finished without any. */
static svlm_status hls_ready(svlm_source *s, svlm_err *err) {
    s->hls_start = 0;
    if (s->hls_played < 0 && !s->hls_resync) return SVLM_OK;
    svlm_hls_playlist pl;
    if (fetch_playlist(s, &pl, err) != SVLM_OK) return SVLM_OK; /* the open says what is wrong */
    const int64_t last = svlm_hls_last_seq(&pl), fresh = last - s->hls_played;
    if (s->hls_resync) { /* lost with its server: it came back listing these, taken as played (a live
                          * stream resumes at now; reopened at once, its last segments came again) */
        s->hls_resync = 0;
        s->hls_seen = last;
        if (last >= s->hls_played || s->hls_played < 0) {
            s->hls_played = last;
            return svlm_fail(err, SVLM_E_AGAIN,
                             "the live playlist is back; waiting for a segment after #%lld", (long long)last);
        }
    }
    s->hls_seen = last;
    if (last < s->hls_played) { /* an encoder that started over, numbering from 0 again: a new stream */
        s->hls_played = -1;
        return SVLM_OK;
    }
    if (fresh <= 0 && pl.finished) return svlm_fail(err, SVLM_E_END, "the playlist has finished");
    if (fresh <= 0)
        return svlm_fail(err, SVLM_E_AGAIN,
                         "the live playlist lists no segment after #%lld (has its encoder stopped?)",
                         (long long)s->hls_played);
    /* (a playlist that skipped ahead past what it lists: its last few, as the backend would) */
    if (fresh <= pl.n_segments) s->hls_start = -(int)fresh;
    return SVLM_OK;
}

/* Closes the lost stream and reopens it with exponential backoff and jitter. */
static svlm_status reconnect(svlm_source *s, const char *why, svlm_err *err) {
    push_event(s, SVLM_EVENT_DISCONNECT, 0, atomic_load(&s->reconnects), 0, why);
    if (s->bctx) s->ops->close(s->bctx); /* (none when the first open failed: keep_trying) */
    s->bctx = NULL;
    double down_since = svlm_mono_now(), delay = s->opts.backoff_initial_s;
    svlm_err last = {0};
    for (int attempt = 1;; attempt++) {
        double jitter = 0.75 + 0.5 * ((double)rand_r(&s->jitter_seed) / RAND_MAX);
        if (svlm_ctl_sleep(&s->ctl, delay * jitter))
            return svlm_fail(err, SVLM_E_CANCELLED, "source cancelled");
        svlm_status st = hls_ready(s, &last);
        if (st == SVLM_E_END) return svlm_fail(err, st, "%s", last.msg);
        if (st == SVLM_OK) {
            /* before the open: a GStreamer pipeline samples on its own thread as soon as it runs */
            svlm_sampler_restart(&s->sampler);
            st = open_backend(s, &last);
        }
        if (st == SVLM_OK) {
            long long total = atomic_fetch_add(&s->reconnects, 1) + 1;
            push_event(s, SVLM_EVENT_RECONNECT, attempt, total, svlm_mono_now() - down_since, NULL);
            svlm_timeline_new_session(&s->timeline);
            return SVLM_OK;
        }
        if (st == SVLM_E_CANCELLED) return svlm_fail(err, st, "source cancelled");
        /* why it is still down, as it changes (the disconnect's reason stayed all along) */
        push_event(s, SVLM_EVENT_RETRY, 1, attempt, 0, last.msg);
        if (s->opts.max_reconnects >= 0 && attempt >= s->opts.max_reconnects)
            return svlm_fail(err, st, "gave up after %d reconnect attempt%s: %s", attempt,
                             attempt == 1 ? "" : "s", last.msg);
        delay = fmin(delay * 2, s->opts.backoff_max_s);
    }
}

static int pace(svlm_source *s, double pts);

static void *reader_main(void *arg) {
    svlm_source *s = arg;
    svlm_err err = {0};
    svlm_status st = SVLM_OK;
    if (!s->bctx) { /* keep_trying: the first open failed, its message is in first_err */
        st = reconnect(s, s->first_err.msg, &err);
        if (st != SVLM_OK) {
            svlm_frame_queue_finish(&s->queue, st, &err);
            return NULL;
        }
    }
    for (;;) {
        svlm_frame f;
        memset(&f, 0, sizeof f);
        if (svlm_ctl_cancelled(&s->ctl)) {
            st = svlm_fail(&err, SVLM_E_CANCELLED, "source cancelled");
            break;
        }
        st = read_backend(s, &f, &err);
        svlm_source_item item;
        if (corrupt_event(s, &item)) svlm_frame_queue_push(&s->queue, &item);
        if (st == SVLM_OK && s->pace_live) {
            if (pace(s, f.pts)) {
                svlm_frame_release(&f);
                st = svlm_fail(&err, SVLM_E_CANCELLED, "source cancelled");
                break;
            }
            f.wall = svlm_wall_now(); /* it "arrives" when due */
        }
        if (st == SVLM_OK) {
            place_on_timeline(s, &f);
            memset(&item, 0, sizeof item);
            item.kind = SVLM_ITEM_FRAME;
            item.frame = f;
            svlm_frame_queue_push(&s->queue, &item);
            continue;
        }
        if (st == SVLM_E_CANCELLED || svlm_ctl_cancelled(&s->ctl)) break;
        if (atomic_load(&s->ctl.stop_reason) == SVLM_STOP_STALL)
            push_event(s, SVLM_EVENT_STALL, 0, 0, s->ctl.stall_timeout_s, err.msg);
        /* a live gst: pipeline that reads files (filesrc, multifilesrc) is done at its end; one
         * that ends otherwise (an HTTP camera closing souphttpsrc, an RTSP BYE) reconnects */
        const int gst_file_end =
            st == SVLM_E_END && s->uri.kind == SVLM_URI_GST && strstr(s->uri.target, "filesrc") != NULL;
        char why[256];
        snprintf(why, sizeof why, "%.255s", st == SVLM_E_END ? "end of stream" : err.msg);
        /* a live HLS playlist that has become finished (#EXT-X-ENDLIST: its encoder stopped) is
         * done too: reopened, it played again from its start, old frames as new ones, about four
         * times a second for ever */
        const int hls_finished = s->reconnectable && st != SVLM_E_NOMEM && s->uri.kind == SVLM_URI_HTTP &&
                                 s->uri.is_hls && hls_lost(s, st, why, sizeof why);
        if (s->reconnectable && st != SVLM_E_NOMEM && !gst_file_end && !hls_finished) {
            st = reconnect(s, why, &err);
            if (st == SVLM_OK) continue;
            if (st == SVLM_E_END) push_event(s, SVLM_EVENT_EOS, 0, 0, 0, NULL); /* it finished meanwhile */
            break;
        }
        if (st == SVLM_E_END) push_event(s, SVLM_EVENT_EOS, 0, 0, 0, NULL);
        break;
    }
    svlm_frame_queue_finish(&s->queue, st, &err);
    return NULL;
}

/* ---- open / next / close ----------------------------------------------------------------- */

svlm_status svlm_source_open(svlm_source **out, const char *uri, const svlm_source_opts *opts_in,
                             svlm_err *err) {
    *out = NULL;
    svlm_source_opts opts;
    if (opts_in)
        opts = *opts_in;
    else
        svlm_source_opts_default(&opts);
    svlm_status st = check_opts(&opts, err);
    if (st != SVLM_OK) return st;

    svlm_source *s = calloc(1, sizeof *s);
    if (!s) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    s->fifo_fd = -1;
    s->hls_played = s->hls_seen = -1;
    st = svlm_uri_parse(uri, &s->uri, err);
    if (st == SVLM_OK && s->uri.kind == SVLM_URI_FILE) {
        struct stat sb;
        if (stat(s->uri.target, &sb) != 0)
            st = svlm_fail(err, SVLM_E_IO, "no such file: %s", s->uri.target);
        else if (S_ISDIR(sb.st_mode))
            st = svlm_fail(err, SVLM_E_INVALID, "%s is a directory, not a video file", s->uri.target);
        s->fifo = st == SVLM_OK && S_ISFIFO(sb.st_mode);
    }
    if (st == SVLM_OK && !(s->ops = svlm_backend_choose(opts.backend, &s->uri, err)))
        st = err ? err->status : SVLM_E_UNSUPPORTED;
    if (st != SVLM_OK) {
        free(s);
        return st;
    }
    svlm_status missing = SVLM_OK; /* a webcam not plugged in: keep_trying waits for it */
    if (s->uri.kind == SVLM_URI_V4L2) {
        struct stat sb;
        if (stat(s->uri.target, &sb) != 0)
            missing = svlm_fail(&s->first_err, SVLM_E_IO,
                                "no camera at %s: plug one in, or name another as v4l2:///dev/videoN "
                                "('ls /dev/video*' lists them)",
                                s->uri.target);
    }
    s->live = opts.live >= 0 ? opts.live != 0 : svlm_uri_default_live(&s->uri);
    double segment_s = 0; /* a live HLS playlist's target duration */
    svlm_err unread = {0};
    if (s->uri.kind == SVLM_URI_HTTP && s->uri.is_hls && opts.live != 0 &&
        finished_playlist(uri, &opts, &segment_s, &s->hls_seen, opts.live < 0, &unread) && opts.live < 0)
        s->live = 0; /* a VOD playlist would otherwise play again from its start at every end */
    /* a playlist that could not be read is the open's failure: the backend's open after it took a
     * second open timeout (20 s for "no answer within 10 s") */
    if (unread.status == SVLM_E_IO && missing == SVLM_OK) { /* (a text it cannot parse: the backend tries) */
        s->first_err = unread;
        svlm_redact_in_place(s->first_err.msg, sizeof s->first_err.msg);
        missing = unread.status;
    }
    opts.live = s->live;
    s->opts = opts;
    /* (a gst: pipeline opened live is a camera too: a webcam's, say) */
    s->reconnectable = s->live && (s->uri.kind == SVLM_URI_RTSP || s->uri.kind == SVLM_URI_HTTP ||
                                   s->uri.kind == SVLM_URI_V4L2 || s->uri.kind == SVLM_URI_GST);
    /* A local file read live stands in for a camera: in real time when asked (a server's streams),
     * else decoding would hand it over in one burst. (A named pipe's writer sets its own pace.) */
    s->pace_live = s->live && s->uri.kind == SVLM_URI_FILE && !s->fifo && opts.pace == SVLM_PACE_REALTIME;
    s->jitter_seed = (unsigned)(svlm_mono_now() * 1e6) ^ (unsigned)(uintptr_t)s;
    atomic_init(&s->reconnects, 0);
    /* The watchdog guards live sources; a replay may legitimately wait on its consumer, and the
     * built-in pattern cannot stall (its own pacing, or the process being stopped, is no stall). */
    svlm_ctl_init(&s->ctl, s->live && s->uri.kind != SVLM_URI_PATTERN ? opts.stall_timeout_s : 0);
#ifdef SVLM_HAVE_GST
    /* (local files only: a recording over the network that pauses is waited for, as before) */
    const int local = s->uri.kind == SVLM_URI_FILE ||
                      (s->uri.kind == SVLM_URI_GST && strstr(s->uri.target, "filesrc") != NULL);
    if (!s->live && local && s->ops == &svlm_gst_backend)
        s->ctl.stall_timeout_s = GST_REPLAY_STALLS * opts.stall_timeout_s;
#endif
    /* a live HLS playlist delivers a segment at a time, a target duration apart (6 s is usual): a
     * watchdog shorter than two of them called each wait for the next a stall */
    if (s->ctl.stall_timeout_s > 0 && s->ctl.stall_timeout_s < 2 * segment_s)
        s->ctl.stall_timeout_s = 2 * segment_s;
    s->ctl.abort_flag = opts.abort_flag;
    /* (a paced file is decoded ahead of its time: it is sampled by its timestamps) */
    /* (so is a live HLS playlist: its frames come a segment at a time, in bursts, and were sampled
     * once a segment by their arrival) */
    svlm_sampler_init(&s->sampler, opts.fps, s->live && !s->pace_live && !s->uri.is_hls);
    svlm_timeline_init(&s->timeline, s->live);

    const int keep_trying = opts.keep_trying && s->reconnectable;
    if (missing != SVLM_OK && !keep_trying) {
        if (err) *err = s->first_err;
        free(s);
        return missing;
    }
    st = missing != SVLM_OK ? missing : open_backend(s, &s->first_err);
    if (st != SVLM_OK && err) *err = s->first_err;
    /* keep_trying: the reader starts with a reconnect (no backend yet); a bad option, URI or codec
     * will not get better */
    if (st != SVLM_OK && keep_trying && st != SVLM_E_NOMEM && st != SVLM_E_INVALID &&
        st != SVLM_E_UNSUPPORTED && st != SVLM_E_CANCELLED)
        st = SVLM_OK;
    if (st == SVLM_OK && s->live) {
        st = svlm_frame_queue_init(&s->queue, opts.queue_frames);
        if (st != SVLM_OK)
            svlm_fail(err, st, "cannot create the frame queue");
        else if (pthread_create(&s->reader, NULL, reader_main, s) != 0) {
            svlm_frame_queue_destroy(&s->queue);
            st = svlm_fail(err, SVLM_E_NOMEM, "cannot start the reader thread");
        } else
            s->reader_started = 1;
    }
    if (st != SVLM_OK) {
        if (s->bctx) s->ops->close(s->bctx);
        if (s->fifo_fd >= 0) close(s->fifo_fd);
        free(s);
        return st;
    }
    *out = s;
    return SVLM_OK;
}

static void pending_push(svlm_source *s, const svlm_source_item *item) {
    s->pending[s->n_pending++] = *item;
}

static void pending_pop(svlm_source *s, svlm_source_item *item) {
    *item = s->pending[0];
    memmove(s->pending, s->pending + 1, (size_t)(s->n_pending - 1) * sizeof s->pending[0]);
    s->n_pending--;
}

/* Replay (or a local file read live) in real time: a frame is not handed out before its pts has
 * elapsed. */
static int pace(svlm_source *s, double pts) {
    if (s->opts.pace != SVLM_PACE_REALTIME) return 0;
    if (!s->paced) {
        s->paced = 1;
        s->pace_mono0 = svlm_mono_now();
        s->pace_pts0 = pts;
        return 0;
    }
    double wait = s->pace_mono0 + (pts - s->pace_pts0) - svlm_mono_now();
    return wait > 0 ? svlm_ctl_sleep(&s->ctl, wait) : 0;
}

/* The source's name for a message, without its passwords (one URL's login ends only at /?#). */
static void safe_name(const svlm_source *s, char *out, size_t n) {
    if (s->uri.kind == SVLM_URI_GST)
        svlm_uri_redact(s->uri.target, out, n);
    else
        svlm_uri_redact_source(s->uri.target, out, n);
}

static svlm_status next_replay(svlm_source *s, svlm_source_item *item, svlm_err *err) {
    if (s->n_pending) {
        pending_pop(s, item);
        return SVLM_OK;
    }
    if (s->finished != SVLM_OK) {
        if (err) *err = s->finished_err;
        return s->finished;
    }
    svlm_frame f;
    memset(&f, 0, sizeof f);
    svlm_status st = read_backend(s, &f, err);
    svlm_source_item ev;
    if (corrupt_event(s, &ev)) pending_push(s, &ev);
    if (st == SVLM_OK) {
        if (pace(s, f.pts)) {
            svlm_frame_release(&f);
            return svlm_fail(err, SVLM_E_CANCELLED, "source cancelled");
        }
        if (s->opts.pace == SVLM_PACE_REALTIME) f.wall = svlm_wall_now(); /* it "arrives" when due */
        place_on_timeline(s, &f);
        svlm_source_item fi;
        memset(&fi, 0, sizeof fi);
        fi.kind = SVLM_ITEM_FRAME;
        fi.frame = f;
        pending_push(s, &fi);
    } else if (st != SVLM_E_CANCELLED && atomic_load(&s->ctl.stop_reason) == SVLM_STOP_STALL &&
               atomic_load(&s->ctl.decoded) > 0) { /* see GST_REPLAY_STALLS */
        char safe[512];
        safe_name(s, safe, sizeof safe);
        fprintf(stderr, "svlm: %s: GStreamer gave no frame for %.0f s after %lld: taken as its end\n", safe,
                s->ctl.stall_timeout_s, (long long)atomic_load(&s->ctl.decoded));
        event_item(&ev, SVLM_EVENT_EOS, 0, 0, NULL);
        pending_push(s, &ev);
        s->finished = SVLM_E_END;
        svlm_fail(&s->finished_err, SVLM_E_END, "end of stream");
    } else if (st == SVLM_E_END && atomic_load(&s->ctl.decoded) == 0) {
        /* a recording that ends without one decodable frame is no video, not an empty one */
        char safe[512];
        safe_name(s, safe, sizeof safe);
        const long long bad = atomic_load(&s->ctl.corrupt);
        char count[64] = "";
        if (bad) snprintf(count, sizeof count, ", %lld damaged packets or frames", bad);
        s->finished = svlm_fail(&s->finished_err, SVLM_E_FORMAT,
                                "%s: no video frame could be decoded (an empty, truncated or damaged file%s)",
                                safe, count);
        if (err) *err = s->finished_err;
        return s->finished;
    } else if (st == SVLM_E_END) {
        event_item(&ev, SVLM_EVENT_EOS, 0, 0, NULL);
        pending_push(s, &ev);
        s->finished = SVLM_E_END;
        svlm_fail(&s->finished_err, SVLM_E_END, "end of stream");
    } else {
        if (st != SVLM_E_CANCELLED) {
            s->finished = st;
            if (err) s->finished_err = *err;
        }
        return st;
    }
    pending_pop(s, item);
    return SVLM_OK;
}

svlm_status svlm_source_next(svlm_source *s, svlm_source_item *item, svlm_err *err) {
    memset(item, 0, sizeof *item);
    if (svlm_ctl_cancelled(&s->ctl)) return svlm_fail(err, SVLM_E_CANCELLED, "source cancelled");
    svlm_status st =
        s->live ? svlm_frame_queue_pop(&s->queue, item, &s->ctl.cancel, err) : next_replay(s, item, err);
    if (st == SVLM_OK && item->kind == SVLM_ITEM_FRAME) item->frame.index = s->delivered++;
    return st;
}

void svlm_source_cancel(svlm_source *s) {
    if (s) atomic_store(&s->ctl.cancel, 1);
}

void svlm_source_stats_get(const svlm_source *s, svlm_source_stats *st) {
    svlm_source *m = (svlm_source *)s; /* atomics and the queue lock need non-const access */
    memset(st, 0, sizeof *st);
    st->decoded = atomic_load(&m->ctl.decoded);
    st->delivered = m->delivered;
    st->dropped = m->live ? svlm_frame_queue_dropped(&m->queue) : 0;
    st->corrupt = atomic_load(&m->ctl.corrupt);
    st->reconnects = atomic_load(&m->reconnects);
}

const char *svlm_source_backend_name(const svlm_source *s) {
    return s->ops->name;
}
int svlm_source_is_live(const svlm_source *s) {
    return s->live;
}

void svlm_source_close(svlm_source *s) {
    if (!s) return;
    atomic_store(&s->ctl.cancel, 1);
    if (s->reader_started) {
        pthread_join(s->reader, NULL);
        svlm_frame_queue_destroy(&s->queue);
    }
    if (s->bctx) s->ops->close(s->bctx);
    if (s->fifo_fd >= 0) close(s->fifo_fd); /* after the backend: it reads this descriptor */
    for (int i = 0; i < s->n_pending; i++)
        if (s->pending[i].kind == SVLM_ITEM_FRAME) svlm_frame_release(&s->pending[i].frame);
    free(s);
}

svlm_status svlm_source_probe(const char *uri_str, const svlm_source_opts *opts_in, svlm_probe_info *info,
                              svlm_err *err) {
    memset(info, 0, sizeof *info);
    svlm_source_opts opts;
    if (opts_in)
        opts = *opts_in;
    else
        svlm_source_opts_default(&opts);
    svlm_status st = check_opts(&opts, err);
    if (st != SVLM_OK) return st;
    svlm_uri *uri = calloc(1, sizeof *uri);
    if (!uri) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    st = svlm_uri_parse(uri_str, uri, err);
    struct stat sb;
    int fifo = 0, fifo_fd = -1;
    if (st == SVLM_OK && uri->kind == SVLM_URI_FILE && stat(uri->target, &sb) != 0)
        st = svlm_fail(err, SVLM_E_IO, "no such file: %s", uri->target);
    else if (st == SVLM_OK && uri->kind == SVLM_URI_FILE)
        fifo = S_ISFIFO(sb.st_mode);
    const svlm_backend_ops *ops = st == SVLM_OK ? svlm_backend_choose(opts.backend, uri, err) : NULL;
    if (st == SVLM_OK && !ops) st = err ? err->status : SVLM_E_UNSUPPORTED;
    if (st == SVLM_OK) {
        if (opts.live < 0) opts.live = svlm_uri_default_live(uri);
        svlm_ingest_ctl ctl;
        svlm_ctl_init(&ctl, 0);
        ctl.abort_flag = opts.abort_flag;
        atomic_store(&ctl.open_deadline_ns, (long long)((svlm_mono_now() + opts.open_timeout_s) * 1e9));
        if (fifo) { /* (then the whole timeout again for the backend, as open_backend does) */
            st = fifo_wait(uri->target, &ctl, opts.open_timeout_s, &fifo_fd, err);
            atomic_store(&ctl.open_deadline_ns, (long long)((svlm_mono_now() + opts.open_timeout_s) * 1e9));
        }
        svlm_backend_args args = {uri, &opts, &ctl, NULL, fifo_fd, 0};
        if (st == SVLM_OK) st = ops->probe(&args, info, err);
        if (st != SVLM_OK && err) svlm_redact_in_place(err->msg, sizeof err->msg);
        snprintf(info->backend, sizeof info->backend, "%s", ops->name);
        info->live = opts.live;
        /* as svlm_source_open decides: a finished HLS playlist (it has a duration) is a recording */
        if (st == SVLM_OK && (!opts_in || opts_in->live < 0) && uri->kind == SVLM_URI_HTTP && uri->is_hls &&
            info->duration > 0)
            info->live = 0;
    }
    if (fifo_fd >= 0) close(fifo_fd);
    free(uri);
    return st;
}
