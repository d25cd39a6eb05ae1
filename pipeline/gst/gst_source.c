/*
 * The GStreamer backend: SOURCE ! videoconvert ! videoscale ! capsfilter(RGB) ! appsink.
 * SOURCE is uridecodebin (files, rtsp, http, HLS), v4l2src (webcams) or a user's launch
 * description (gst:...). A pad probe in front of videoconvert runs the sampler, so frames
 * that sampling discards are never colour-converted or scaled. appsink rows are padded to
 * 4 bytes; frames are repacked to a tight stride. videoflip turns frames the way players show
 * them (a phone's portrait clip carries an image-orientation tag), as the FFmpeg backend does.
 */
#include <gst/app/gstappsink.h>
#include <gst/gst.h>
#include <gst/video/video.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "pipeline/source_backend.h"
#include "pipeline/timeline.h"

#define ELEMENT_PREFIX "svlm_"

typedef struct gst_ctx {
    GstElement *pipeline, *sink, *conv;
    GstBus *bus;
    GstPad *probe_pad;
    gulong probe_id;
    svlm_ingest_ctl *ctl;
    svlm_sampler *sampler; /* used only on the streaming thread, inside the probe */
    svlm_source_opts opts;
    const svlm_uri *uri;
    int live;
    GstClockTime first_pts; /* live: pts 0 is the first frame */
    /* Replay: the first frame's stream time (set by the probe, before appsink has the frame),
     * subtracted as the FFmpeg backend subtracts the stream's start, so that both start at 0: a
     * segment may start before the first frame (MPEG-TS: at its first PCR; MP4: an empty edit). */
    double first_t;
    int have_first_t;
    /* Synthesizes the times of buffers without a timestamp and (replay) of those whose timestamps
     * do not advance: used only on the streaming thread, inside the probe. */
    svlm_frame_clock clock;
    /* Replay: the stream's own timestamps stopped advancing somewhere. A decoder's output is
     * judged only once its input was (a decoder that lost frames to damaged data may give the
     * frames after them the same time, e.g. box_printed_text_handheld.mp4: not a stuck file);
     * without a decoder the frames are the stream itself. */
    atomic_int have_decoder, input_stalled;
    /* Live, and the decoder's input has no timestamps (MJPEG over HTTP: multipartdemux sets none,
     * and the decoder counted frames at a guessed 25 fps, a 5 fps camera's time running 5 times too
     * slow): frames are timed by their arrival, from arrival0 (monotonic seconds; 0: none yet). */
    atomic_int arrival;
    double arrival0;
    /* A network source made a local file's source (refuse_local_file): nothing of it is delivered. */
    atomic_int local_refused;
    /* The reference of the meta that carries a synthesized time from the probe to the frame. */
    GstCaps *time_ref;
} gst_ctx;

static void gst_close(void *ctx) {
    gst_ctx *c = ctx;
    if (!c) return;
    if (c->pipeline) gst_element_set_state(c->pipeline, GST_STATE_NULL);
    if (c->probe_pad) {
        gst_pad_remove_probe(c->probe_pad, c->probe_id);
        gst_object_unref(c->probe_pad);
    }
    if (c->bus) gst_object_unref(c->bus);
    if (c->sink) gst_object_unref(c->sink);
    if (c->conv) gst_object_unref(c->conv);
    if (c->pipeline) gst_object_unref(c->pipeline);
    if (c->time_ref) gst_caps_unref(c->time_ref);
    free(c);
}

/* Seconds from the stream's start for a buffer timestamp under the pad's segment. */
static double stream_seconds(gst_ctx *c, const GstSegment *seg, GstClockTime pts) {
    if (!GST_CLOCK_TIME_IS_VALID(pts)) return 0;
    if (c->live) {
        if (!GST_CLOCK_TIME_IS_VALID(c->first_pts)) c->first_pts = pts;
        return pts >= c->first_pts ? (double)(pts - c->first_pts) / GST_SECOND : 0;
    }
    guint64 t = seg ? gst_segment_to_stream_time(seg, GST_FORMAT_TIME, pts) : pts;
    return (GST_CLOCK_TIME_IS_VALID(t) ? (double)t / GST_SECOND : (double)pts / GST_SECOND) - c->first_t;
}

static const char *safe_target(const svlm_uri *uri) {
    return uri->kind == SVLM_URI_RTSP ? "rtsp source" : uri->target;
}

/* A synthesized frame's duration, in seconds: from the decoded caps' frame rate, else the
 * buffer's own duration, else 25 fps. A rate far above any camera's (more than 500 fps) is a
 * guess from a time base, not the stream's rate: ignored. */
static double synth_step(GstPad *pad, GstBuffer *buf) {
    double step = 0;
    GstCaps *caps = gst_pad_get_current_caps(pad);
    gint n = 0, d = 0;
    if (caps && gst_caps_get_size(caps) > 0 &&
        gst_structure_get_fraction(gst_caps_get_structure(caps, 0), "framerate", &n, &d) && n > 0 && d > 0 &&
        (double)n / d <= 500)
        step = (double)d / n;
    if (caps) gst_caps_unref(caps);
    const GstClockTime dur = GST_BUFFER_DURATION(buf);
    if (step <= 0 && GST_CLOCK_TIME_IS_VALID(dur) && dur > 0 && dur <= 10 * GST_SECOND)
        step = (double)dur / GST_SECOND;
    return step > 0 ? step : 1.0 / 25;
}

/* A buffer's time, in seconds: its own timestamp, or a synthesized one where it has none or (a
 * recording) where the timestamps stop advancing, said once so that a file of all-zero timestamps
 * is not a mystery; (live) shifted back once its clock leapt forward. A time not its own travels
 * with the buffer (a reference timestamp meta), so that the frame read from appsink later carries
 * the same time. */
static double buffer_time(gst_ctx *c, GstPad *pad, GstPadProbeInfo *info) {
    GstBuffer *buf = GST_PAD_PROBE_INFO_BUFFER(info);
    if (c->live && atomic_load(&c->arrival)) { /* see gst_ctx.arrival */
        const double now = svlm_mono_now();
        if (!c->arrival0) c->arrival0 = now;
        const GstClockTime at = (GstClockTime)llround((now - c->arrival0) * GST_SECOND);
        buf = gst_buffer_make_writable(buf);
        GST_PAD_PROBE_INFO_DATA(info) = buf;
        gst_buffer_add_reference_timestamp_meta(buf, c->time_ref, at, GST_CLOCK_TIME_NONE);
        return (double)at / GST_SECOND;
    }
    const GstClockTime ts = GST_BUFFER_PTS(buf);
    const int has_ts = GST_CLOCK_TIME_IS_VALID(ts);
    double t = 0;
    if (has_ts) {
        GstEvent *ev = gst_pad_get_sticky_event(pad, GST_EVENT_SEGMENT, 0);
        const GstSegment *seg = NULL;
        if (ev) gst_event_parse_segment(ev, &seg);
        t = stream_seconds(c, seg, ts);
        if (!c->live && !c->have_first_t) c->first_t = t, c->have_first_t = 1, t = 0;
        if (ev) gst_event_unref(ev);
    }
    /* (a decoder's output is judged once its input was seen to stall) */
    c->clock.replay = !c->live && (atomic_load(&c->input_stalled) || !atomic_load(&c->have_decoder));
    const int own = has_ts && !svlm_frame_clock_stalled(&c->clock, has_ts, (int64_t)ts, t);
    const int64_t replaced = c->clock.replaced, leaps = c->clock.leaps;
    const double step = own && !c->live ? 0 : synth_step(pad, buf), shift = c->clock.shift;
    const double out =
        svlm_frame_clock_next(&c->clock, has_ts, has_ts ? (int64_t)ts : 0, t, step, svlm_mono_now());
    if (own && out == t) return out; /* its own time */
    char safe[1024];
    if (!replaced && c->clock.replaced) {
        svlm_uri_redact(safe_target(c->uri), safe, sizeof safe);
        fprintf(stderr,
                "svlm: %s: timestamps do not advance (a frame at %.3f s after one at %.3f s): timing such "
                "frames by the frame rate instead, %.4g s a frame\n",
                safe, t, out - step, step);
    }
    if (!leaps && c->clock.leaps) {
        svlm_uri_redact(safe_target(c->uri), safe, sizeof safe);
        fprintf(stderr,
                "svlm: %s: the stream's clock leapt %.0f s ahead: continuing from the previous frame\n", safe,
                shift - c->clock.shift);
    }
    /* whole nanoseconds, as the frame will carry it */
    const GstClockTime out_ns = (GstClockTime)llround(out * GST_SECOND);
    buf = gst_buffer_make_writable(buf);
    GST_PAD_PROBE_INFO_DATA(info) = buf;
    gst_buffer_add_reference_timestamp_meta(buf, c->time_ref, out_ns, GST_CLOCK_TIME_NONE);
    return (double)out_ns / GST_SECOND;
}

/* Streaming thread: count every decoded frame, drop those the sampler does not keep. */
static GstPadProbeReturn sample_probe(GstPad *pad, GstPadProbeInfo *info, gpointer user) {
    gst_ctx *c = user;
    GstBuffer *buf = GST_PAD_PROBE_INFO_BUFFER(info);
    if (atomic_load(&c->local_refused)) return GST_PAD_PROBE_DROP;
    atomic_fetch_add(&c->ctl->decoded, 1);
    if (!c->sampler) return GST_PAD_PROBE_OK; /* probing: let it preroll */
    if (GST_BUFFER_FLAG_IS_SET(buf, GST_BUFFER_FLAG_CORRUPTED)) {
        atomic_fetch_add(&c->ctl->corrupt, 1);
        return GST_PAD_PROBE_DROP; /* no progress: a stream of only these is stalled */
    }
    svlm_ctl_touch(c->ctl);
    const double pts = buffer_time(c, pad, info);
    return svlm_sampler_take(c->sampler, pts, svlm_wall_now()) ? GST_PAD_PROBE_OK : GST_PAD_PROBE_DROP;
}

/* uridecodebin made its source: tune RTSP for latency and transport. */
static void on_source_setup(GstElement *bin, GstElement *source, gpointer user) {
    (void)bin;
    gst_ctx *c = user;
    GObjectClass *klass = G_OBJECT_GET_CLASS(source);
    if (g_object_class_find_property(klass, "latency") && c->uri->kind == SVLM_URI_RTSP)
        g_object_set(source, "latency", (guint)0, NULL); /* the default 2000 ms jitter buffer */
    if (g_object_class_find_property(klass, "protocols") && c->opts.transport != SVLM_TRANSPORT_AUTO)
        g_object_set(source, "protocols", c->opts.transport == SVLM_TRANSPORT_TCP ? 0x4u : 0x1u, NULL);
}

/* A video decoder's input, watched for timestamps that do not advance (on its streaming thread). */
typedef struct input_watch {
    gst_ctx *c;
    svlm_frame_clock pts, dts;
} input_watch;

static int input_stalls(svlm_frame_clock *clock, GstClockTime ts) {
    const int has_ts = GST_CLOCK_TIME_IS_VALID(ts);
    svlm_frame_clock_next(clock, has_ts, has_ts ? (int64_t)ts : 0, has_ts ? (double)ts / GST_SECOND : 0, 0,
                          0);
    return clock->replaced > 0;
}

static GstPadProbeReturn input_probe(GstPad *pad, GstPadProbeInfo *info, gpointer user) {
    (void)pad;
    input_watch *w = user;
    GstBuffer *buf = GST_PAD_PROBE_INFO_BUFFER(info);
    /* every packet to both clocks: a timestamp that repeats in decode order, or goes back more
     * than SVLM_TIMELINE_JUMP_S (B-frames' presentation times step back a frame or two) */
    const int pts = input_stalls(&w->pts, GST_BUFFER_PTS(buf));
    const int dts = input_stalls(&w->dts, GST_BUFFER_DTS(buf));
    if (pts || dts) {
        atomic_store(&w->c->input_stalled, 1);
        return GST_PAD_PROBE_REMOVE; /* said once is enough */
    }
    return GST_PAD_PROBE_OK;
}

/* A live decoder's first input: without a timestamp, its frames are timed by arrival (gst_ctx). */
static GstPadProbeReturn live_input_probe(GstPad *pad, GstPadProbeInfo *info, gpointer user) {
    (void)pad;
    gst_ctx *c = user;
    GstBuffer *buf = GST_PAD_PROBE_INFO_BUFFER(info);
    if (!GST_CLOCK_TIME_IS_VALID(GST_BUFFER_PTS(buf)) && !GST_CLOCK_TIME_IS_VALID(GST_BUFFER_DTS(buf)))
        atomic_store(&c->arrival, 1);
    return GST_PAD_PROBE_REMOVE;
}

/* Decoders keep going past damaged data (reported as warnings) instead of failing; a replay's
 * decoders have their input watched, a live one's first input is looked at. */
static void watch_decoder(gst_ctx *c, GstElement *el) {
    if (!GST_IS_VIDEO_DECODER(el)) return;
    if (g_object_class_find_property(G_OBJECT_GET_CLASS(el), "max-errors"))
        g_object_set(el, "max-errors", -1, NULL);
    GstPad *pad = gst_element_get_static_pad(el, "sink");
    if (c->live) {
        if (pad) gst_pad_add_probe(pad, GST_PAD_PROBE_TYPE_BUFFER, live_input_probe, c, NULL);
        if (pad) gst_object_unref(pad);
        return;
    }
    if (!pad) {
        atomic_store(&c->input_stalled, 1); /* unwatched: its output is judged as it is */
        return;
    }
    input_watch *w = g_new0(input_watch, 1);
    w->c = c;
    svlm_frame_clock_init(&w->pts, 1);
    svlm_frame_clock_init(&w->dts, 1);
    gst_pad_add_probe(pad, GST_PAD_PROBE_TYPE_BUFFER, input_probe, w, g_free);
    gst_object_unref(pad);
    atomic_store(&c->have_decoder, 1);
}

/* A network stream that makes a source of a local file (an HLS or DASH playlist's file://
 * segment: GStreamer follows it, FFmpeg's network whitelist does not) fails instead: a playlist
 * from the network may not read this machine's files. */
static void refuse_local_file(gst_ctx *c, GstElement *el) {
    if (c->uri->kind != SVLM_URI_RTSP && c->uri->kind != SVLM_URI_HTTP) return;
    GstElementFactory *f = gst_element_get_factory(el);
    const char *name = f ? GST_OBJECT_NAME(f) : "";
    static const char *const local[] = {"filesrc", "giosrc", "multifilesrc", "splitfilesrc", "fdsrc"};
    for (size_t i = 0; i < sizeof local / sizeof local[0]; i++)
        if (!strcmp(name, local[i])) {
            atomic_store(&c->local_refused, 1);
            GError *e = g_error_new(GST_RESOURCE_ERROR, GST_RESOURCE_ERROR_OPEN_READ,
                                    "the network stream names a local file (a playlist's file:// "
                                    "segment?): refused");
            gst_element_post_message(c->pipeline, gst_message_new_error(GST_OBJECT(el), e, NULL));
            g_error_free(e);
            return;
        }
}

static void on_element_added(GstBin *bin, GstBin *sub, GstElement *el, gpointer user) {
    (void)bin, (void)sub;
    refuse_local_file(user, el);
    watch_decoder(user, el);
}

/* The decoders a launch description names (made before the signal above was connected). */
static void watch_decoders_in(gst_ctx *c) {
    GstIterator *it = gst_bin_iterate_recurse(GST_BIN(c->pipeline));
    GValue v = G_VALUE_INIT;
    for (GstIteratorResult r; (r = gst_iterator_next(it, &v)) != GST_ITERATOR_DONE;) {
        if (r == GST_ITERATOR_RESYNC) {
            gst_iterator_resync(it);
            continue;
        }
        if (r != GST_ITERATOR_OK) break;
        watch_decoder(c, g_value_get_object(&v));
        g_value_reset(&v);
    }
    g_value_unset(&v);
    gst_iterator_free(it);
}

static char *caps_string(const svlm_source_opts *o) {
    if (o->width > 0 && o->height > 0)
        return g_strdup_printf("video/x-raw,format=RGB,width=%d,height=%d,pixel-aspect-ratio=1/1", o->width,
                               o->height);
    if (o->max_edge > 0)
        return g_strdup_printf("video/x-raw,format=RGB,width=[1,%d],height=[1,%d],pixel-aspect-ratio=1/1",
                               o->max_edge, o->max_edge);
    /* (square pixels: an anamorphic picture, DVD or HDV, is widened as players show it) */
    return g_strdup("video/x-raw,format=RGB,pixel-aspect-ratio=1/1");
}

static char *describe(const svlm_uri *uri) {
    /* (videoflip is in gst-plugins-good: without it frames stay as decoded) */
    GstElementFactory *flip = gst_element_factory_find("videoflip");
    const char *tail =
        flip ? "videoconvert name=" ELEMENT_PREFIX "conv ! videoflip name=" ELEMENT_PREFIX
               "flip video-direction=auto ! "
               "videoscale ! capsfilter name=" ELEMENT_PREFIX "caps ! appsink name=" ELEMENT_PREFIX "sink"
             : "videoconvert name=" ELEMENT_PREFIX "conv ! videoscale ! capsfilter name=" ELEMENT_PREFIX
               "caps ! appsink name=" ELEMENT_PREFIX "sink";
    if (flip) gst_object_unref(flip);
    switch (uri->kind) {
    case SVLM_URI_V4L2: return g_strdup_printf("v4l2src name=" ELEMENT_PREFIX "src ! %s", tail);
    case SVLM_URI_GST: return g_strdup_printf("%s ! %s", uri->target, tail);
    default: return g_strdup_printf("uridecodebin name=" ELEMENT_PREFIX "src ! %s", tail);
    }
}

/* A GStreamer error message as a clear svlm error. */
static svlm_status fail_from_message(GstMessage *msg, const char *target, svlm_err *err) {
    GError *gerr = NULL;
    gchar *dbg = NULL;
    gst_message_parse_error(msg, &gerr, &dbg);
    svlm_status st = SVLM_E_IO;
    const char *hint = "";
    if (gerr && (g_error_matches(gerr, GST_CORE_ERROR, GST_CORE_ERROR_MISSING_PLUGIN) ||
                 g_error_matches(gerr, GST_STREAM_ERROR, GST_STREAM_ERROR_CODEC_NOT_FOUND))) {
        st = SVLM_E_UNSUPPORTED;
        hint = "unsupported codec or format: ";
    } else if (gerr && g_error_matches(gerr, GST_RESOURCE_ERROR, GST_RESOURCE_ERROR_NOT_AUTHORIZED)) {
        hint = "login refused: ";
    } else if (gerr && (g_error_matches(gerr, GST_STREAM_ERROR, GST_STREAM_ERROR_TYPE_NOT_FOUND) ||
                        g_error_matches(gerr, GST_STREAM_ERROR, GST_STREAM_ERROR_WRONG_TYPE))) {
        st = SVLM_E_FORMAT;
        hint = "not a media file GStreamer recognises: ";
    }
    if (dbg && strstr(dbg, "not-linked")) hint = "no video stream that GStreamer can decode: ";
    /* The debug text's last line names the cause (e.g. "Failed to connect."). */
    const char *why = dbg ? strrchr(dbg, '\n') : NULL;
    why = why ? why + 1 : dbg;
    if (why && !*why) why = NULL;
    svlm_fail(err, st, "%s: %s%s%s%.200s%s", target, hint, gerr ? gerr->message : "GStreamer error",
              why ? " (" : "", why ? why : "", why ? ")" : "");
    if (gerr) g_error_free(gerr);
    g_free(dbg);
    return st;
}

/* Reads pending bus messages: an ERROR fails, EOS returns SVLM_E_END, decoder warnings count
 * as corrupt data. SVLM_OK when nothing final is waiting. */
static svlm_status drain_bus(gst_ctx *c, const char *target, svlm_err *err) {
    GstMessage *msg;
    while ((msg = gst_bus_pop_filtered(c->bus, GST_MESSAGE_ERROR | GST_MESSAGE_EOS | GST_MESSAGE_WARNING))) {
        svlm_status st = SVLM_OK;
        if (GST_MESSAGE_TYPE(msg) == GST_MESSAGE_ERROR)
            st = fail_from_message(msg, target, err);
        else if (GST_MESSAGE_TYPE(msg) == GST_MESSAGE_EOS)
            st = SVLM_E_END;
        else {
            GError *gerr = NULL;
            gst_message_parse_warning(msg, &gerr, NULL);
            if (gerr && gerr->domain == GST_STREAM_ERROR) atomic_fetch_add(&c->ctl->corrupt, 1);
            if (gerr) g_error_free(gerr);
        }
        gst_message_unref(msg);
        if (st != SVLM_OK) return st;
    }
    return SVLM_OK;
}

static svlm_status build(gst_ctx *c, const svlm_backend_args *a, svlm_err *err) {
    GError *gerr = NULL;
    if (!gst_init_check(NULL, NULL, &gerr)) {
        svlm_status st = svlm_fail(err, SVLM_E_UNSUPPORTED, "GStreamer failed to initialise: %s",
                                   gerr ? gerr->message : "?");
        if (gerr) g_error_free(gerr);
        return st;
    }
    c->time_ref = gst_caps_new_empty_simple("timestamp/x-svlm-frame-time");
    char *caps = caps_string(a->opts);
    char *desc = describe(a->uri);
    c->pipeline = gst_parse_launch_full(desc, NULL, GST_PARSE_FLAG_FATAL_ERRORS, &gerr);
    g_free(desc);
    if (!c->pipeline) {
        g_free(caps);
        /* a launch string that ends in a sink, or gives no video, fails to link to svlm's own tail */
        const int tail_link = a->uri->kind == SVLM_URI_GST && gerr &&
                              g_error_matches(gerr, GST_PARSE_ERROR, GST_PARSE_ERROR_LINK);
        svlm_status st = svlm_fail(
            err, SVLM_E_INVALID, "GStreamer cannot build the pipeline: %s%s", gerr ? gerr->message : "?",
            tail_link ? " (a gst: pipeline must end in raw or decodable video, without a "
                        "sink: svlm adds its own)"
                      : "");
        if (gerr) g_error_free(gerr);
        return st;
    }
    GstElement *capsfilter = gst_bin_get_by_name(GST_BIN(c->pipeline), ELEMENT_PREFIX "caps");
    GstCaps *gcaps = gst_caps_from_string(caps);
    g_object_set(capsfilter, "caps", gcaps, NULL);
    gst_caps_unref(gcaps);
    gst_object_unref(capsfilter);
    g_free(caps);

    GstElement *src = gst_bin_get_by_name(GST_BIN(c->pipeline), ELEMENT_PREFIX "src");
    if (src && a->uri->kind == SVLM_URI_V4L2) g_object_set(src, "device", a->uri->target, NULL);
    if (src && a->uri->kind != SVLM_URI_V4L2) {
        /* (a named pipe: fdsrc reads the descriptor the source opened without blocking) */
        gchar *u = a->fifo_fd >= 0                 ? g_strdup_printf("fd://%d", a->fifo_fd)
                   : a->uri->kind == SVLM_URI_FILE ? gst_filename_to_uri(a->uri->target, NULL)
                                                   : g_strdup(a->uri->target);
        g_object_set(src, "uri", u, NULL);
        g_free(u);
        g_signal_connect(src, "source-setup", G_CALLBACK(on_source_setup), c);
    }
    if (src) gst_object_unref(src);
    watch_decoders_in(c);
    g_signal_connect(c->pipeline, "deep-element-added", G_CALLBACK(on_element_added), c);

    c->sink = gst_bin_get_by_name(GST_BIN(c->pipeline), ELEMENT_PREFIX "sink");
    c->conv = gst_bin_get_by_name(GST_BIN(c->pipeline), ELEMENT_PREFIX "conv");
    /* appsink: no clock sync (pacing is ours), a short queue that pushes back on replay */
    g_object_set(c->sink, "sync", FALSE, "max-buffers", 2, "drop", FALSE, "emit-signals", FALSE, NULL);
    c->probe_pad = gst_element_get_static_pad(c->conv, "sink");
    c->probe_id = gst_pad_add_probe(c->probe_pad, GST_PAD_PROBE_TYPE_BUFFER, sample_probe, c, NULL);
    c->bus = gst_element_get_bus(c->pipeline);
    return SVLM_OK;
}

/* Plays the pipeline until the decoded format is known (the first frame reached videoconvert). */
static svlm_status start(gst_ctx *c, svlm_err *err) {
    const char *target = safe_target(c->uri);
    if (gst_element_set_state(c->pipeline, GST_STATE_PLAYING) == GST_STATE_CHANGE_FAILURE) {
        svlm_status st = drain_bus(c, target, err);
        return st != SVLM_OK
                   ? st
                   : svlm_fail(err, SVLM_E_IO, "%s: GStreamer could not start the pipeline", target);
    }
    for (;;) {
        svlm_status st = drain_bus(c, target, err);
        if (st == SVLM_E_END)
            return svlm_fail(err, SVLM_E_FORMAT,
                             "%s: the stream ended before any video frame (no video stream?)", target);
        if (st != SVLM_OK) return st;
        GstCaps *caps = gst_pad_get_current_caps(c->probe_pad);
        if (caps) {
            gst_caps_unref(caps);
            return SVLM_OK;
        }
        const svlm_stop_reason why = svlm_ctl_should_stop(c->ctl);
        /* uridecodebin buffers an endless HTTP stream (an MJPEG camera's) and never starts it */
        if (why == SVLM_STOP_OPEN_TIMEOUT && c->uri->kind == SVLM_URI_HTTP && !c->uri->is_hls)
            return svlm_fail(err, SVLM_E_IO,
                             "%s: timed out while opening (GStreamer plays no endless HTTP stream such as an "
                             "MJPEG camera's: use --backend ffmpeg, or a gst: pipeline of souphttpsrc ! "
                             "multipartdemux ! jpegdec)",
                             target);
        if (why) return svlm_ctl_stop_error(c->ctl, err, target);
        GstMessage *msg =
            gst_bus_timed_pop_filtered(c->bus, 20 * GST_MSECOND, GST_MESSAGE_ERROR | GST_MESSAGE_EOS);
        if (msg) {
            st = GST_MESSAGE_TYPE(msg) == GST_MESSAGE_ERROR
                     ? fail_from_message(msg, target, err)
                     : svlm_fail(err, SVLM_E_FORMAT,
                                 "%s: the stream ended before any video frame (no video stream?)", target);
            gst_message_unref(msg);
            return st;
        }
    }
}

static svlm_status gst_open_common(gst_ctx **out, const svlm_backend_args *a, svlm_err *err) {
    gst_ctx *c = calloc(1, sizeof *c);
    if (!c) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    c->ctl = a->ctl;
    c->sampler = a->sampler;
    c->opts = *a->opts;
    c->uri = a->uri;
    c->live = a->opts->live;
    c->first_pts = GST_CLOCK_TIME_NONE;
    svlm_frame_clock_init(&c->clock, !c->live);
    c->clock.live = c->live;
    svlm_status st = build(c, a, err);
    if (st == SVLM_OK) st = start(c, err);
    if (st != SVLM_OK) {
        gst_close(c);
        return st;
    }
    *out = c;
    return SVLM_OK;
}

static svlm_status gst_open(void **out, const svlm_backend_args *a, svlm_err *err) {
    gst_ctx *c = NULL;
    svlm_status st = gst_open_common(&c, a, err);
    *out = c;
    return st;
}

/* Copies a sample into a tight RGB24 frame (appsink rows are padded to 4 bytes). */
static svlm_status copy_sample(gst_ctx *c, GstSample *sample, svlm_frame *out, svlm_err *err) {
    GstVideoInfo info;
    GstCaps *caps = gst_sample_get_caps(sample);
    GstBuffer *buf = gst_sample_get_buffer(sample);
    if (!caps || !buf || !gst_video_info_from_caps(&info, caps) ||
        GST_VIDEO_INFO_FORMAT(&info) != GST_VIDEO_FORMAT_RGB)
        return svlm_fail(err, SVLM_E_FORMAT, "GStreamer delivered a sample without RGB video caps");
    GstVideoFrame vf;
    if (!gst_video_frame_map(&vf, &info, buf, GST_MAP_READ))
        return svlm_fail(err, SVLM_E_FORMAT, "cannot map a GStreamer video frame");
    int w = GST_VIDEO_FRAME_WIDTH(&vf), h = GST_VIDEO_FRAME_HEIGHT(&vf);
    svlm_status st = svlm_frame_alloc(out, w, h, err);
    if (st == SVLM_OK) {
        const uint8_t *src = GST_VIDEO_FRAME_PLANE_DATA(&vf, 0);
        int stride = GST_VIDEO_FRAME_PLANE_STRIDE(&vf, 0);
        for (int y = 0; y < h; y++)
            memcpy(out->data + (size_t)y * out->stride, src + (size_t)y * stride, (size_t)w * 3);
        /* a synthesized time (buffer_time) or the buffer's own */
        GstReferenceTimestampMeta *synth = gst_buffer_get_reference_timestamp_meta(buf, c->time_ref);
        out->pts = synth ? (double)synth->timestamp / GST_SECOND
                         : stream_seconds(c, gst_sample_get_segment(sample), GST_BUFFER_PTS(buf));
        out->wall = svlm_wall_now();
    }
    gst_video_frame_unmap(&vf);
    return st;
}

static svlm_status gst_read(void *ctx, svlm_frame *out, svlm_err *err) {
    gst_ctx *c = ctx;
    const char *target = safe_target(c->uri);
    for (;;) {
        GstSample *sample = gst_app_sink_try_pull_sample(GST_APP_SINK(c->sink), 50 * GST_MSECOND);
        if (sample) {
            svlm_status st = copy_sample(c, sample, out, err);
            gst_sample_unref(sample);
            return st;
        }
        svlm_status st = drain_bus(c, target, err);
        if (st != SVLM_OK) return st;
        if (gst_app_sink_is_eos(GST_APP_SINK(c->sink))) return SVLM_E_END;
        if (svlm_ctl_should_stop(c->ctl)) return svlm_ctl_stop_error(c->ctl, err, target);
    }
}

/* Whether a clip's orientation tag (which videoflip follows) turns frames a quarter: read from the
 * tag events that passed the probe pad (sticky: stored there before the first buffer). */
static int quarter_turned(gst_ctx *c) {
    int odd = 0;
    for (guint i = 0;; i++) {
        GstEvent *ev = gst_pad_get_sticky_event(c->probe_pad, GST_EVENT_TAG, i);
        if (!ev) break;
        GstTagList *tags = NULL;
        gchar *o = NULL;
        gst_event_parse_tag(ev, &tags);
        if (tags && gst_tag_list_get_string(tags, GST_TAG_IMAGE_ORIENTATION, &o)) {
            odd = g_str_has_suffix(o, "-90") || g_str_has_suffix(o, "-270");
            g_free(o);
        }
        gst_event_unref(ev);
    }
    return odd;
}

/* The size frames come out at (before scaling), as the FFmpeg backend says: turned when the clip's
 * orientation tag asks (videoflip turns them); only where videoflip is in the pipeline. */
static void turned_size(gst_ctx *c, svlm_stream_desc *d) {
    GstElement *flip = gst_bin_get_by_name(GST_BIN(c->pipeline), ELEMENT_PREFIX "flip");
    if (flip && !c->live) { /* a first frame at the sink: every tag before it has passed the probe */
        GstSample *first = gst_app_sink_try_pull_sample(GST_APP_SINK(c->sink), 2 * GST_SECOND);
        if (first) gst_sample_unref(first);
    }
    if (flip && quarter_turned(c)) {
        int w = d->width;
        d->width = d->height;
        d->height = w;
    }
    if (flip) gst_object_unref(flip);
}

static svlm_status gst_probe(const svlm_backend_args *a, svlm_probe_info *info, svlm_err *err) {
    gst_ctx *c = NULL;
    svlm_status st = gst_open_common(&c, a, err);
    if (st != SVLM_OK) return st;
    snprintf(info->container, sizeof info->container, "%s", svlm_uri_kind_name(a->uri->kind));
    gint64 dur = 0;
    GstCaps *caps = gst_pad_get_current_caps(c->probe_pad);
    GstVideoInfo vi;
    if (caps && gst_video_info_from_caps(&vi, caps)) {
        svlm_stream_desc *d = &info->streams[info->n_streams++];
        snprintf(d->type, sizeof d->type, "video");
        /* GStreamer shows the decoded format here, not the codec */
        snprintf(d->codec, sizeof d->codec, "raw (%s)",
                 gst_video_format_to_string(GST_VIDEO_INFO_FORMAT(&vi)));
        d->width = GST_VIDEO_INFO_WIDTH(&vi);
        d->height = GST_VIDEO_INFO_HEIGHT(&vi);
        turned_size(c, d); /* the size frames come out at, as the FFmpeg backend says */
        d->fps =
            GST_VIDEO_INFO_FPS_D(&vi) ? (double)GST_VIDEO_INFO_FPS_N(&vi) / GST_VIDEO_INFO_FPS_D(&vi) : 0;
    }
    if (caps) gst_caps_unref(caps);
    if (gst_element_query_duration(c->pipeline, GST_FORMAT_TIME, &dur) && dur > 0)
        info->duration = (double)dur / GST_SECOND;
    if (info->n_streams) info->streams[0].duration = info->duration;
    gst_close(c);
    return SVLM_OK;
}

const svlm_backend_ops svlm_gst_backend = {"gst", gst_open, gst_read, gst_close, gst_probe};
