#include "pipeline/ffmpeg/ffmpeg_input.h"

#include <errno.h>
#include <libavutil/display.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"

static int interrupt_cb(void *opaque) {
    return svlm_ctl_should_stop(opaque) != SVLM_STOP_NONE;
}

svlm_status svlm_ff_fail(svlm_err *err, int averr, const char *what, const char *target) {
    char msg[AV_ERROR_MAX_STRING_SIZE] = {0}, safe[512];
    av_strerror(averr, msg, sizeof msg);
    svlm_uri_redact_source(target, safe, sizeof safe); /* (one URL: its login ends only at /?#) */
    if (averr == AVERROR_EXIT) return svlm_fail(err, SVLM_E_CANCELLED, "%s %s: interrupted", what, safe);
    if (averr == AVERROR(ENOENT)) return svlm_fail(err, SVLM_E_IO, "%s %s: no such file", what, safe);
    if (averr == AVERROR(ECONNREFUSED))
        return svlm_fail(err, SVLM_E_IO, "%s %s: connection refused (nothing listens on that host and port)",
                         what, safe);
    if (averr == AVERROR(ETIMEDOUT) || averr == AVERROR(EHOSTUNREACH) || averr == AVERROR(ENETUNREACH))
        return svlm_fail(err, SVLM_E_IO, "%s %s: host unreachable (%s)", what, safe, msg);
    if (averr == AVERROR_HTTP_UNAUTHORIZED || averr == AVERROR_HTTP_FORBIDDEN || averr == AVERROR(EACCES) ||
        averr == AVERROR(EPERM))
        return svlm_fail(err, SVLM_E_IO,
                         "%s %s: login refused or access denied (check the user:password in the URL)", what,
                         safe);
    if (averr == AVERROR_HTTP_NOT_FOUND)
        return svlm_fail(err, SVLM_E_IO, "%s %s: not found on the server (HTTP 404)", what, safe);
    if (averr == AVERROR_INVALIDDATA)
        return svlm_fail(err, SVLM_E_FORMAT, "%s %s: not a media file FFmpeg recognises, or damaged", what,
                         safe);
    if (averr == AVERROR_EOF)
        return svlm_fail(
            err, SVLM_E_FORMAT,
            "%s %s: it ends before any video (an empty or truncated file, or a server that closed "
            "the connection)",
            what, safe);
    if (averr == AVERROR_PROTOCOL_NOT_FOUND)
        return svlm_fail(err, SVLM_E_UNSUPPORTED, "%s %s: this FFmpeg build lacks the protocol", what, safe);
    return svlm_fail(err, SVLM_E_IO, "%s %s: %s", what, safe, msg);
}

/* A failure once the open deadline has passed is the timeout, and one after a cancel the cancel,
 * whatever FFmpeg made of it (its own socket timeout reads as "invalid data" for RTSP, our interrupt
 * as AVERROR_EXIT or, for RTSP, "invalid data" too). */
static svlm_status open_fail(const svlm_backend_args *a, int averr, const char *what, svlm_err *err) {
    const svlm_stop_reason why = a->ctl ? svlm_ctl_should_stop(a->ctl) : SVLM_STOP_NONE;
    if (why == SVLM_STOP_CANCEL) return svlm_ff_fail(err, AVERROR_EXIT, what, a->uri->target);
    if (why == SVLM_STOP_OPEN_TIMEOUT) {
        char safe[512];
        svlm_uri_redact_source(a->uri->target, safe, sizeof safe);
        return svlm_fail(err, SVLM_E_IO,
                         "%s %s: no answer within %g s (check the host, port and path; --open-timeout S "
                         "waits longer)",
                         what, safe, a->opts->open_timeout_s);
    }
    return svlm_ff_fail(err, averr, what, a->uri->target);
}

/* A named pipe read through our own AVIO context: FFmpeg's pipe: protocol, given the descriptor
 * the source opened without blocking, retried an empty pipe every millisecond (about 2 % of a core
 * on an idle pipe) and lost the file's name, the probe's hint. Here a read waits in poll (up to
 * 100 ms at a time, so that the source's stop and watchdog are heard), and the name goes to
 * avformat_open_input. */
typedef struct fifo_io {
    int fd;
    svlm_ingest_ctl *ctl;
} fifo_io;

static int fifo_read(void *opaque, uint8_t *buf, int size) {
    fifo_io *f = opaque;
    for (;;) {
        const ssize_t n = read(f->fd, buf, (size_t)size);
        if (n > 0) return (int)n;
        if (n == 0) return AVERROR_EOF; /* the writer closed the pipe */
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) return AVERROR(errno);
        if (f->ctl && svlm_ctl_should_stop(f->ctl) != SVLM_STOP_NONE) return AVERROR_EXIT;
        struct pollfd p = {.fd = f->fd, .events = POLLIN};
        if (poll(&p, 1, 100) < 0 && errno != EINTR) return AVERROR(errno);
    }
}

/* fmt's AVIO context for the pipe fd (fmt->pb, AVFMT_FLAG_CUSTOM_IO), or an error. */
static int fifo_attach(AVFormatContext *fmt, int fd, svlm_ingest_ctl *ctl) {
    enum { BUF = 1 << 16 };
    fifo_io *f = av_mallocz(sizeof *f);
    uint8_t *buf = av_malloc(BUF);
    AVIOContext *pb = f && buf ? avio_alloc_context(buf, BUF, 0, f, fifo_read, NULL, NULL) : NULL;
    if (!pb) {
        av_free(buf);
        av_free(f);
        return AVERROR(ENOMEM);
    }
    f->fd = fd;
    f->ctl = ctl;
    fmt->pb = pb;
    fmt->flags |= AVFMT_FLAG_CUSTOM_IO;
    return 0;
}

/* The pipe's AVIO context, its buffer and state (avformat_close_input leaves a custom one). */
static void fifo_detach(AVIOContext **pb) {
    if (!*pb) return;
    av_freep(&(*pb)->opaque);
    av_freep(&(*pb)->buffer);
    avio_context_free(pb);
}

void svlm_ff_close_input(AVFormatContext **fmt) {
    if (!*fmt) return;
    AVIOContext *pb = ((*fmt)->flags & AVFMT_FLAG_CUSTOM_IO) ? (*fmt)->pb : NULL;
    avformat_close_input(fmt);
    fifo_detach(&pb);
}

svlm_status svlm_ff_open_input(AVFormatContext **out, const svlm_backend_args *a, svlm_err *err) {
    *out = NULL;
    const svlm_uri *uri = a->uri;
    AVFormatContext *fmt = avformat_alloc_context();
    if (!fmt) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    fmt->interrupt_callback.callback = interrupt_cb;
    fmt->interrupt_callback.opaque = a->ctl;

    AVDictionary *opts = NULL;
    if (uri->kind == SVLM_URI_RTSP) {
        if (a->opts->transport == SVLM_TRANSPORT_TCP) av_dict_set(&opts, "rtsp_transport", "tcp", 0);
        if (a->opts->transport == SVLM_TRANSPORT_UDP) av_dict_set(&opts, "rtsp_transport", "udp", 0);
        /* socket I/O timeout in microseconds; the interrupt callback also enforces ours */
        char us[32];
        snprintf(us, sizeof us, "%lld", (long long)(a->opts->open_timeout_s * 1e6));
        av_dict_set(&opts, "timeout", us, 0);
    }
    if (uri->kind == SVLM_URI_HTTP) av_dict_set(&opts, "rw_timeout", "10000000", 0);
    /* a live playlist reopened: start at the segments not played yet (by default its last three) */
    if (uri->kind == SVLM_URI_HTTP && uri->is_hls && a->hls_start < 0)
        av_dict_set_int(&opts, "live_start_index", a->hls_start, 0);
    if (a->opts->live) {
        /* Cut stream probing (it costs ~1 s before the first frame) and demuxer buffering. */
        av_dict_set(&opts, "fflags", "nobuffer", 0);
        av_dict_set(&opts, "probesize", "65536", 0);
        av_dict_set(&opts, "analyzeduration", "200000", 0);
        if (uri->kind == SVLM_URI_RTSP) av_dict_set(&opts, "max_delay", "100000", 0);
    }
    /* a named pipe: the descriptor the source opened without blocking (see svlm_backend_args) */
    AVIOContext *pipe_pb = NULL;
    if (a->fifo_fd >= 0) {
        if (fifo_attach(fmt, a->fifo_fd, a->ctl) < 0) {
            av_dict_free(&opts);
            avformat_free_context(fmt);
            return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
        }
        pipe_pb = fmt->pb;
    }
    int rc = avformat_open_input(&fmt, uri->target, NULL, &opts); /* (frees fmt on failure) */
    av_dict_free(&opts);
    if (rc < 0) {
        fifo_detach(&pipe_pb);
        return open_fail(a, rc, "cannot open", err);
    }
    rc = avformat_find_stream_info(fmt, NULL);
    if (rc < 0) {
        svlm_ff_close_input(&fmt);
        return open_fail(a, rc, "cannot read the streams of", err);
    }
    *out = fmt;
    return SVLM_OK;
}

/* Clockwise quarter turns (0 to 3) that a display matrix asks players to show frames with, as
 * ffmpeg's autorotate reads it; a matrix that is no quarter turn is ignored. */
int svlm_ff_display_turns(const int32_t *matrix) {
    if (!matrix) return 0;
    double theta = -av_display_rotation_get(matrix);
    if (!isfinite(theta)) return 0;
    theta -= 360 * floor(theta / 360 + 0.9 / 360);
    const double q = round(theta / 90);
    return fabs(theta - 90 * q) < 1 ? (int)q % 4 : 0;
}

int svlm_ff_stream_turns(const AVStream *st) {
#if LIBAVCODEC_VERSION_INT >= AV_VERSION_INT(60, 30, 100)
    const AVPacketSideData *sd = av_packet_side_data_get(
        st->codecpar->coded_side_data, st->codecpar->nb_coded_side_data, AV_PKT_DATA_DISPLAYMATRIX);
    return sd && sd->size >= 9 * sizeof(int32_t) ? svlm_ff_display_turns((const int32_t *)sd->data) : 0;
#else
    size_t size = 0;
    const uint8_t *m = av_stream_get_side_data(st, AV_PKT_DATA_DISPLAYMATRIX, &size);
    return m && size >= 9 * sizeof(int32_t) ? svlm_ff_display_turns((const int32_t *)m) : 0;
#endif
}
