/*
 * The FFmpeg backend: libavformat demuxes (files, RTSP, HTTP, HLS), libavcodec decodes,
 * libswscale converts and scales only the frames the sampler keeps. While the next kept
 * frame is far ahead, the decoder skips non-reference frames (AVDISCARD_NONREF): nothing
 * else depends on them, so skipping them never damages later frames. Frames come out the way
 * players show them: a phone's portrait clip (a display matrix) is turned upright.
 */
#include <libavcodec/avcodec.h>
#include <libavformat/avformat.h>
#include <libavutil/display.h>
#include <libavutil/imgutils.h>
#include <libswscale/swscale.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "pipeline/ffmpeg/ffmpeg_input.h"
#include "pipeline/timeline.h"

typedef struct ff_ctx {
    AVFormatContext *fmt;
    AVCodecContext *dec;
    AVStream *st;
    int vidx;
    AVPacket *pkt;
    AVFrame *frame;
    struct SwsContext *sws;
    int sws_w, sws_h, sws_fmt;
    const svlm_uri *uri; /* lives in the source */
    char safe[512];      /* its target for messages: a login's password left out */
    svlm_ingest_ctl *ctl;
    svlm_sampler *sampler;
    svlm_source_opts opts;
    int64_t base_ts;        /* stream timestamp of pts 0 */
    double frame_dur;       /* seconds, from the stream's frame rate */
    int rate_known;         /* frame_dur comes from a plausible frame rate of the stream */
    double prev_dur;        /* the previous frame's own duration in seconds (0: unknown) */
    svlm_frame_clock clock; /* synthesizes missing and (replay) non-advancing timestamps */
    /* live, and the demuxer has no timestamps (MJPEG over HTTP): its pts count frames at a guessed
     * rate (25 fps), so frames are timed by their arrival instead */
    int arrival;
    double arrival0; /* arrival of the first frame (monotonic seconds; 0: none yet) */
    int draining;
    int bad_reads;     /* consecutive unreadable packets */
    int turns;         /* clockwise quarter turns the stream's display matrix asks for */
    uint8_t *turn_buf; /* a scaled frame before it is turned */
    size_t turn_cap;
} ff_ctx;

static void ff_close(void *ctx) {
    ff_ctx *c = ctx;
    if (!c) return;
    sws_freeContext(c->sws);
    av_frame_free(&c->frame);
    av_packet_free(&c->pkt);
    avcodec_free_context(&c->dec);
    svlm_ff_close_input(&c->fmt);
    free(c->turn_buf);
    free(c);
}

static svlm_status open_decoder(ff_ctx *c, svlm_err *err) {
    const AVCodec *codec = NULL;
    int idx = av_find_best_stream(c->fmt, AVMEDIA_TYPE_VIDEO, -1, -1, &codec, 0);
    if (idx == AVERROR_STREAM_NOT_FOUND)
        return svlm_fail(err, SVLM_E_FORMAT, "%s has no video stream", c->safe);
    if (idx == AVERROR_DECODER_NOT_FOUND || (idx >= 0 && !codec)) {
        int any = -1;
        for (unsigned i = 0; i < c->fmt->nb_streams; i++)
            if (c->fmt->streams[i]->codecpar->codec_type == AVMEDIA_TYPE_VIDEO) any = (int)i;
        const AVCodecParameters *par = any >= 0 ? c->fmt->streams[any]->codecpar : NULL;
        char tag[AV_FOURCC_MAX_STRING_SIZE] = "?";
        if (par) av_fourcc_make_string(tag, par->codec_tag);
        return svlm_fail(err, SVLM_E_UNSUPPORTED,
                         "unsupported video codec '%s' (tag %s): this FFmpeg has no decoder for it",
                         par ? avcodec_get_name(par->codec_id) : "?", tag);
    }
    if (idx < 0) return svlm_ff_fail(err, idx, "no usable video stream in", c->uri->target);
    c->vidx = idx;
    c->st = c->fmt->streams[idx];
    for (unsigned i = 0; i < c->fmt->nb_streams; i++)
        if ((int)i != idx) c->fmt->streams[i]->discard = AVDISCARD_ALL; /* audio etc.: not even demuxed */

    c->dec = avcodec_alloc_context3(codec);
    if (!c->dec) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    int rc = avcodec_parameters_to_context(c->dec, c->st->codecpar);
    if (rc < 0) return svlm_ff_fail(err, rc, "bad codec parameters in", c->uri->target);
    c->dec->pkt_timebase = c->st->time_base;
    c->dec->thread_count = 0;
    /* Frame threads add a frame of delay per thread: live sources use slice threads only. */
    if (c->opts.live) {
        c->dec->thread_type = FF_THREAD_SLICE;
        c->dec->flags |= AV_CODEC_FLAG_LOW_DELAY;
    }
    rc = avcodec_open2(c->dec, codec, NULL);
    if (rc < 0) return svlm_ff_fail(err, rc, "cannot open the decoder for", c->uri->target);

    AVRational fr = c->st->avg_frame_rate.num ? c->st->avg_frame_rate : c->st->r_frame_rate;
    c->frame_dur = fr.num > 0 && fr.den > 0 ? av_q2d(av_inv_q(fr)) : 1.0 / 25;
    /* (a rate far above any camera's is a guess from the time base, e.g. 1000 for Matroska) */
    c->rate_known = fr.num > 0 && fr.den > 0 && av_q2d(fr) <= 500;
    /* Live streams start mid-way: their first frame is pts 0. */
    c->base_ts = c->opts.live ? AV_NOPTS_VALUE : c->st->start_time;
    c->arrival = c->opts.live && (c->fmt->iformat->flags & AVFMT_NOTIMESTAMPS);
    c->turns = svlm_ff_stream_turns(c->st);
    return SVLM_OK;
}

static svlm_status ff_open(void **out, const svlm_backend_args *a, svlm_err *err) {
    ff_ctx *c = calloc(1, sizeof *c);
    if (!c) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    c->uri = a->uri;
    svlm_uri_redact_source(c->uri->target, c->safe, sizeof c->safe);
    c->ctl = a->ctl;
    c->sampler = a->sampler;
    c->opts = *a->opts;
    svlm_frame_clock_init(&c->clock, !c->opts.live);
    c->clock.live = c->opts.live;
    svlm_status st = svlm_ff_open_input(&c->fmt, a, err);
    if (st == SVLM_OK) st = open_decoder(c, err);
    if (st == SVLM_OK && (!(c->pkt = av_packet_alloc()) || !(c->frame = av_frame_alloc())))
        st = svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    if (st != SVLM_OK) {
        ff_close(c);
        return st;
    }
    *out = c;
    return SVLM_OK;
}

static double ts_seconds(ff_ctx *c, int64_t ts) {
    if (c->base_ts == AV_NOPTS_VALUE) c->base_ts = ts; /* no declared start: the first frame is 0 */
    return (double)(ts - c->base_ts) * av_q2d(c->st->time_base);
}

/* A synthesized frame's duration: from the stream's frame rate, else the previous frame's own
 * duration, else 25 fps. */
static double synth_step(const ff_ctx *c) {
    return c->rate_known ? c->frame_dur : c->prev_dur > 0 && c->prev_dur <= 10 ? c->prev_dur : 1.0 / 25;
}

static double frame_duration(const ff_ctx *c, const AVFrame *f) {
#if LIBAVUTIL_VERSION_INT >= AV_VERSION_INT(57, 30, 100)
    int64_t d = f->duration;
#else
    int64_t d = f->pkt_duration;
#endif
    return d > 0 ? (double)d * av_q2d(c->st->time_base) : 0;
}

/* A frame's time: its own timestamp, or a synthesized one where it has none or (a recording) where
 * the timestamps stop advancing: said once, so that a file of all-zero timestamps is not a mystery;
 * (live) shifted back once the stream's clock leapt forward, said once too. */
static double frame_time(ff_ctx *c, const AVFrame *f) {
    int64_t ts = f->best_effort_timestamp;
    int has_ts = ts != AV_NOPTS_VALUE;
    double t = has_ts ? ts_seconds(c, ts) : 0;
    const double now = svlm_mono_now();
    if (c->arrival) {
        if (c->arrival0 <= 0) c->arrival0 = now;
        t = now - c->arrival0;
        ts = (int64_t)llround(t * 1e6);
        has_ts = 1;
    }
    const int64_t replaced = c->clock.replaced, leaps = c->clock.leaps;
    const double step = synth_step(c), shift = c->clock.shift;
    const double out = svlm_frame_clock_next(&c->clock, has_ts, ts, t, step, now);
    if (!replaced && c->clock.replaced) {
        fprintf(stderr,
                "svlm: %s: timestamps do not advance (a frame at %.3f s after one at %.3f s): timing such "
                "frames by the frame rate instead, %.4g s a frame\n",
                c->safe, t, out - step, step);
    }
    if (!leaps && c->clock.leaps) {
        fprintf(stderr,
                "svlm: %s: the stream's clock leapt %.0f s ahead: continuing from the previous frame\n",
                c->safe, shift - c->clock.shift);
    }
    c->prev_dur = frame_duration(c, f);
    return out;
}

/* Skip non-reference frames while the next kept frame is more than a few frames (plus the
 * decoder's reordering delay) ahead of this packet. */
static void choose_skip(ff_ctx *c, const AVPacket *pkt) {
    if (c->sampler->interval <= 0 || pkt->pts == AV_NOPTS_VALUE) {
        c->dec->skip_frame = AVDISCARD_DEFAULT;
        return;
    }
    double pts = (double)(pkt->pts - (c->base_ts == AV_NOPTS_VALUE ? pkt->pts : c->base_ts)) *
                 av_q2d(c->st->time_base);
    /* A packet whose timestamp does not advance gets its time from the frame count: every frame
     * must be decoded for that count. */
    if (svlm_frame_clock_stalled(&c->clock, 1, pkt->pts, pts)) {
        c->dec->skip_frame = AVDISCARD_DEFAULT;
        return;
    }
    double margin = 4 * c->frame_dur + 0.1;
    c->dec->skip_frame =
        svlm_sampler_lead(c->sampler, pts, svlm_wall_now()) > margin ? AVDISCARD_NONREF : AVDISCARD_DEFAULT;
}

/* src (w x h, tight RGB24) turned clockwise by turns quarter turns into out. */
static void turn_rgb(const uint8_t *src, int w, int h, int turns, svlm_frame *out) {
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int dx = x, dy = y;
            if (turns == 1) dx = h - 1 - y, dy = x;
            if (turns == 2) dx = w - 1 - x, dy = h - 1 - y;
            if (turns == 3) dx = y, dy = w - 1 - x;
            memcpy(out->data + (size_t)dy * out->stride + (size_t)dx * 3, src + ((size_t)y * w + x) * 3, 3);
        }
}

/* The picture's size in square pixels: an anamorphic one (DVD, DVB, HDV: 1440x1080 shown 16:9)
 * widened by its sample aspect ratio, or made taller when that is below 1, as players show it. */
static void display_size(int w, int h, AVRational sar, int *dw, int *dh) {
    *dw = w, *dh = h;
    if (sar.num <= 0 || sar.den <= 0 || sar.num == sar.den) return;
    const double r = av_q2d(sar);
    if (r < 0.1 || r > 10) return; /* (nonsense metadata) */
    if (r > 1)
        *dw = (int)fmin(16384, lround(w * r));
    else
        *dh = (int)fmin(16384, lround(h / r));
}

static svlm_status convert(ff_ctx *c, const AVFrame *f, svlm_frame *out, svlm_err *err) {
    /* a frame's own display matrix (H.264/HEVC orientation SEI) overrides the stream's */
    const AVFrameSideData *sd = av_frame_get_side_data(f, AV_FRAME_DATA_DISPLAYMATRIX);
    const int turns =
        sd && sd->size >= 9 * sizeof(int32_t) ? svlm_ff_display_turns((const int32_t *)sd->data) : c->turns;
    /* the output size is the shown picture's; scaling happens before the turn */
    int ow, oh, dw, dh;
    display_size(f->width, f->height,
                 f->sample_aspect_ratio.num ? f->sample_aspect_ratio : c->st->sample_aspect_ratio, &dw, &dh);
    if (turns & 1)
        svlm_output_size(&c->opts, dh, dw, &ow, &oh);
    else
        svlm_output_size(&c->opts, dw, dh, &ow, &oh);
    const int sw = turns & 1 ? oh : ow, sh = turns & 1 ? ow : oh;
    svlm_status st = svlm_frame_alloc(out, ow, oh, err);
    if (st != SVLM_OK) return st;
    if (turns && c->turn_cap < (size_t)ow * oh * 3) {
        free(c->turn_buf);
        c->turn_cap = 0;
        if (!(c->turn_buf = malloc((size_t)ow * oh * 3 + SVLM_FRAME_SLACK))) {
            svlm_frame_release(out);
            return svlm_fail(err, SVLM_E_NOMEM, "out of memory for a %dx%d frame", ow, oh);
        }
        c->turn_cap = (size_t)ow * oh * 3;
    }
    int flags = (sw < f->width || sh < f->height) ? SWS_AREA : SWS_BILINEAR;
    c->sws = sws_getCachedContext(c->sws, f->width, f->height, f->format, sw, sh, AV_PIX_FMT_RGB24, flags,
                                  NULL, NULL, NULL);
    if (!c->sws) {
        svlm_frame_release(out);
        return svlm_fail(err, SVLM_E_UNSUPPORTED, "cannot convert %s frames to RGB",
                         av_get_pix_fmt_name(f->format));
    }
    /* Honour the stream's colour matrix and range (BT.709 HD vs BT.601 SD, full vs limited). */
    int space = f->colorspace == AVCOL_SPC_UNSPECIFIED ? (f->height >= 720 ? SWS_CS_ITU709 : SWS_CS_ITU601)
                                                       : (int)f->colorspace;
    int full = f->color_range == AVCOL_RANGE_JPEG;
    sws_setColorspaceDetails(c->sws, sws_getCoefficients(space), full, sws_getCoefficients(SWS_CS_DEFAULT), 1,
                             0, 1 << 16, 1 << 16);
    uint8_t *dst[4] = {turns ? c->turn_buf : out->data, NULL, NULL, NULL};
    int dst_stride[4] = {turns ? sw * 3 : out->stride, 0, 0, 0};
    sws_scale(c->sws, (const uint8_t *const *)f->data, f->linesize, 0, f->height, dst, dst_stride);
    if (turns) turn_rgb(c->turn_buf, sw, sh, turns, out);
    return SVLM_OK;
}

/* One decoded frame: count it, keep it if the sampler wants it. Returns 1 when *out is filled. */
static int on_frame(ff_ctx *c, svlm_frame *out, svlm_status *st, svlm_err *err) {
    AVFrame *f = c->frame;
    atomic_fetch_add(&c->ctl->decoded, 1);
    if (f->decode_error_flags || (f->flags & AV_FRAME_FLAG_CORRUPT)) {
        atomic_fetch_add(&c->ctl->corrupt, 1);
        av_frame_unref(f);
        return 0; /* no progress: a stream of only these is stalled (the watchdog reconnects) */
    }
    svlm_ctl_touch(c->ctl);
    double pts = frame_time(c, f);
    double wall = svlm_wall_now();
    int keep = svlm_sampler_take(c->sampler, pts, wall);
    if (keep) {
        *st = convert(c, f, out, err);
        out->pts = pts;
        out->wall = wall;
    }
    av_frame_unref(f);
    return keep;
}

static svlm_status ff_read(void *ctx, svlm_frame *out, svlm_err *err) {
    ff_ctx *c = ctx;
    for (;;) {
        int rc = avcodec_receive_frame(c->dec, c->frame);
        if (rc == 0) {
            svlm_status st = SVLM_OK;
            if (on_frame(c, out, &st, err)) return st;
            continue;
        }
        if (rc == AVERROR_EOF) return SVLM_E_END;
        if (rc != AVERROR(EAGAIN)) {
            atomic_fetch_add(&c->ctl->corrupt, 1); /* a frame the decoder gave up on */
            continue;
        }
        if (c->draining) return SVLM_E_END;
        if (svlm_ctl_should_stop(c->ctl)) return svlm_ctl_stop_error(c->ctl, err, c->safe);
        rc = av_read_frame(c->fmt, c->pkt);
        if (rc == AVERROR_EXIT) return svlm_ctl_stop_error(c->ctl, err, c->safe);
        if (rc == AVERROR_EOF || (rc < 0 && avio_feof(c->fmt->pb))) {
            c->draining = 1;
            c->dec->skip_frame = AVDISCARD_DEFAULT;
            avcodec_send_packet(c->dec, NULL);
            continue;
        }
        if (rc == AVERROR_INVALIDDATA && ++c->bad_reads < 1000) {
            atomic_fetch_add(&c->ctl->corrupt, 1); /* damaged container data: skip it */
            continue;
        }
        if (rc < 0) return svlm_ff_fail(err, rc, "stream lost:", c->uri->target);
        c->bad_reads = 0;
        if (c->pkt->stream_index != c->vidx) {
            av_packet_unref(c->pkt);
            continue;
        }
        if (c->pkt->flags & AV_PKT_FLAG_CORRUPT) atomic_fetch_add(&c->ctl->corrupt, 1);
        choose_skip(c, c->pkt);
        rc = avcodec_send_packet(c->dec, c->pkt);
        av_packet_unref(c->pkt);
        if (rc < 0 && rc != AVERROR(EAGAIN)) atomic_fetch_add(&c->ctl->corrupt, 1);
    }
}

static void describe_stream(const AVStream *s, svlm_stream_desc *d) {
    const AVCodecParameters *p = s->codecpar;
    d->index = s->index;
    snprintf(d->type, sizeof d->type, "%s",
             av_get_media_type_string(p->codec_type) ? av_get_media_type_string(p->codec_type) : "unknown");
    snprintf(d->codec, sizeof d->codec, "%s", avcodec_get_name(p->codec_id));
    if (p->codec_type == AVMEDIA_TYPE_VIDEO) { /* the size frames come out at: turned as shown */
        const int turned = svlm_ff_stream_turns(s) & 1;
        int dw, dh;
        display_size(p->width, p->height,
                     s->sample_aspect_ratio.num ? s->sample_aspect_ratio : p->sample_aspect_ratio, &dw, &dh);
        d->width = turned ? dh : dw;
        d->height = turned ? dw : dh;
        AVRational fr = s->avg_frame_rate.num ? s->avg_frame_rate : s->r_frame_rate;
        d->fps = fr.num > 0 && fr.den > 0 ? av_q2d(fr) : 0;
    }
    if (p->codec_type == AVMEDIA_TYPE_AUDIO) {
        d->sample_rate = p->sample_rate;
        d->channels = p->ch_layout.nb_channels;
    }
    d->duration = s->duration != AV_NOPTS_VALUE ? (double)s->duration * av_q2d(s->time_base) : 0;
}

static svlm_status ff_probe(const svlm_backend_args *a, svlm_probe_info *info, svlm_err *err) {
    AVFormatContext *fmt = NULL;
    svlm_status st = svlm_ff_open_input(&fmt, a, err);
    if (st != SVLM_OK) return st;
    snprintf(info->container, sizeof info->container, "%s", fmt->iformat->name);
    info->duration = fmt->duration != AV_NOPTS_VALUE ? (double)fmt->duration / AV_TIME_BASE : 0;
    info->bit_rate = fmt->bit_rate;
    for (unsigned i = 0; i < fmt->nb_streams && info->n_streams < SVLM_PROBE_MAX_STREAMS; i++)
        describe_stream(fmt->streams[i], &info->streams[info->n_streams++]);
    svlm_ff_close_input(&fmt);
    return SVLM_OK;
}

const svlm_backend_ops svlm_ffmpeg_backend = {"ffmpeg", ff_open, ff_read, ff_close, ff_probe};
