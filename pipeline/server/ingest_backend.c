/* Ingest-only server backend: one reader thread per stream keeps the latest frame and the
 * stream's counters. See ingest_backend.h. */
#include "pipeline/server/ingest_backend.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "pipeline/source.h"

typedef struct ingest_stream {
    struct ingest_stream *next;
    svlm_ingest_backend *owner;
    char name[SVLM_BACKEND_NAME_MAX];
    char uri[512];
    svlm_source *src;
    pthread_t thread;
    /* under owner->lock */
    svlm_frame latest;
    char state[16];
    int64_t frames, drops, reconnects;
    double fps_ema, last_wall, video_time;
} ingest_stream;

struct svlm_ingest_backend {
    pthread_mutex_t lock;
    ingest_stream *streams;
    int n_streams, max_streams;
    char model[128];
};

static double wall_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *reader(void *arg) {
    ingest_stream *s = arg;
    svlm_ingest_backend *b = s->owner;
    for (;;) {
        svlm_source_item item;
        svlm_err err = {0};
        svlm_status st = svlm_source_next(s->src, &item, &err);
        pthread_mutex_lock(&b->lock);
        if (st != SVLM_OK) {
            snprintf(s->state, sizeof s->state, "%s", st == SVLM_E_END || st == SVLM_E_CANCELLED ? "ended" : "failed");
            pthread_mutex_unlock(&b->lock);
            return NULL;
        }
        if (item.kind == SVLM_ITEM_FRAME) {
            double now = wall_now();
            if (s->last_wall > 0 && now > s->last_wall) {
                double fps = 1.0 / (now - s->last_wall);
                s->fps_ema = s->fps_ema > 0 ? 0.8 * s->fps_ema + 0.2 * fps : fps;
            }
            s->last_wall = now;
            s->frames++;
            s->video_time = item.frame.pts;
            svlm_frame_release(&s->latest);
            s->latest = item.frame;
            snprintf(s->state, sizeof s->state, "running");
        } else {
            const svlm_source_event *ev = &item.event;
            if (ev->kind == SVLM_EVENT_DROP) s->drops += ev->count;
            else if (ev->kind == SVLM_EVENT_RECONNECT) s->reconnects++, snprintf(s->state, sizeof s->state, "running");
            else if (ev->kind == SVLM_EVENT_STALL) snprintf(s->state, sizeof s->state, "stalled");
            else if (ev->kind == SVLM_EVENT_DISCONNECT) snprintf(s->state, sizeof s->state, "reconnecting");
        }
        pthread_mutex_unlock(&b->lock);
    }
}

static ingest_stream *find(svlm_ingest_backend *b, const char *name) {
    for (ingest_stream *s = b->streams; s; s = s->next)
        if (!strcmp(s->name, name)) return s;
    return NULL;
}

static void info(void *ctx, svlm_backend_info *out) {
    svlm_ingest_backend *b = ctx;
    memset(out, 0, sizeof *out);
    snprintf(out->model, sizeof out->model, "%s", b->model);
}

static svlm_status open_stream(void *ctx, const svlm_backend_open_req *req, svlm_err *err) {
    svlm_ingest_backend *b = ctx;
    pthread_mutex_lock(&b->lock);
    int exists = find(b, req->name) != NULL, full = b->n_streams >= b->max_streams;
    if (!exists && !full) b->n_streams++; /* reserve the slot while opening */
    pthread_mutex_unlock(&b->lock);
    if (exists) return svlm_fail(err, SVLM_E_INVALID, "a stream named '%s' is open already", req->name);
    if (full) return svlm_fail(err, SVLM_E_LIMIT, "at most %d streams", b->max_streams);
    ingest_stream *s = calloc(1, sizeof *s);
    svlm_source_opts opts;
    svlm_source_opts_default(&opts);
    if (req->fps > 0) opts.fps = req->fps;
    opts.pace = SVLM_PACE_REALTIME; /* a recording plays like a camera */
    svlm_status st = s ? svlm_source_open(&s->src, req->uri, &opts, err) : svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    if (st == SVLM_OK) {
        s->owner = b;
        snprintf(s->name, sizeof s->name, "%s", req->name);
        snprintf(s->uri, sizeof s->uri, "%s", req->uri);
        snprintf(s->state, sizeof s->state, "opening");
        if (pthread_create(&s->thread, NULL, reader, s)) st = svlm_fail(err, SVLM_E_NOMEM, "cannot start a reader");
    }
    pthread_mutex_lock(&b->lock);
    if (st == SVLM_OK) {
        s->next = b->streams;
        b->streams = s;
    } else {
        b->n_streams--;
    }
    pthread_mutex_unlock(&b->lock);
    if (st != SVLM_OK && s) {
        svlm_source_close(s->src);
        free(s);
    }
    return st;
}

static void stop_stream(ingest_stream *s) {
    svlm_source_cancel(s->src);
    pthread_join(s->thread, NULL);
    svlm_source_close(s->src);
    svlm_frame_release(&s->latest);
    free(s);
}

static svlm_status close_stream(void *ctx, const char *name, svlm_err *err) {
    svlm_ingest_backend *b = ctx;
    pthread_mutex_lock(&b->lock);
    ingest_stream *s = NULL;
    for (ingest_stream **pp = &b->streams; *pp; pp = &(*pp)->next)
        if (!strcmp((*pp)->name, name)) {
            s = *pp;
            *pp = s->next;
            b->n_streams--;
            break;
        }
    pthread_mutex_unlock(&b->lock);
    if (!s) return svlm_fail(err, SVLM_E_INVALID, "no stream named '%s'", name);
    stop_stream(s);
    return SVLM_OK;
}

static void fill(const ingest_stream *s, svlm_backend_stream_status *o) {
    memset(o, 0, sizeof *o);
    snprintf(o->name, sizeof o->name, "%s", s->name);
    snprintf(o->uri, sizeof o->uri, "%s", s->uri);
    snprintf(o->state, sizeof o->state, "%s", s->state);
    o->live = svlm_source_is_live(s->src);
    o->fps_in = s->fps_ema;
    o->frames_in = s->frames;
    o->drops = s->drops;
    o->reconnects = s->reconnects;
    o->video_time = s->video_time;
    o->n_tiers = 1;
    snprintf(o->tiers[0].name, sizeof o->tiers[0].name, "latest_frame");
    o->tiers[0].bytes = s->latest.data ? (int64_t)s->latest.stride * s->latest.height : 0;
}

static int list_streams(void *ctx, svlm_backend_stream_status *out, int cap) {
    svlm_ingest_backend *b = ctx;
    int n = 0;
    pthread_mutex_lock(&b->lock);
    for (ingest_stream *s = b->streams; s; s = s->next, n++)
        if (n < cap) fill(s, &out[n]);
    pthread_mutex_unlock(&b->lock);
    return n;
}

static svlm_status stream_status(void *ctx, const char *name, svlm_backend_stream_status *out, svlm_err *err) {
    svlm_ingest_backend *b = ctx;
    pthread_mutex_lock(&b->lock);
    ingest_stream *s = find(b, name);
    if (s) fill(s, out);
    pthread_mutex_unlock(&b->lock);
    return s ? SVLM_OK : svlm_fail(err, SVLM_E_INVALID, "no stream named '%s'", name);
}

static svlm_status latest_frame(void *ctx, const char *name, svlm_backend_frame *out, svlm_err *err) {
    svlm_ingest_backend *b = ctx;
    svlm_status st = SVLM_OK;
    pthread_mutex_lock(&b->lock);
    ingest_stream *s = find(b, name);
    if (!s) st = svlm_fail(err, SVLM_E_INVALID, "no stream named '%s'", name);
    else if (!s->latest.data) st = SVLM_E_AGAIN;
    else {
        const svlm_frame *f = &s->latest;
        size_t size = (size_t)f->stride * (size_t)f->height;
        out->data = malloc(size);
        if (!out->data) st = svlm_fail(err, SVLM_E_NOMEM, "out of memory");
        else {
            memcpy(out->data, f->data, size);
            out->size = size;
            out->is_jpeg = 0;
            out->width = f->width, out->height = f->height, out->stride = f->stride;
            out->index = f->index;
            out->pts = f->pts;
        }
    }
    pthread_mutex_unlock(&b->lock);
    return st;
}

static svlm_status ask(void *ctx, const svlm_backend_ask_req *req, const svlm_backend_ask_cb *cb, uint64_t *id,
                       svlm_err *err) {
    (void)ctx, (void)req, (void)cb, (void)id;
    return svlm_fail(err, SVLM_E_UNSUPPORTED, "this build's svlm serve has no streaming engine wired in yet");
}

static void cancel(void *ctx, uint64_t id) { (void)ctx, (void)id; }

static svlm_status watch(void *ctx, const svlm_backend_watch_req *req, const svlm_backend_watch_cb *cb, uint64_t *id,
                         svlm_err *err) {
    (void)ctx, (void)req, (void)cb, (void)id;
    return svlm_fail(err, SVLM_E_UNSUPPORTED, "this build's svlm serve has no streaming engine wired in yet");
}

static void unwatch(void *ctx, uint64_t id) { (void)ctx, (void)id; }

svlm_status svlm_ingest_backend_create(svlm_ingest_backend **out, const char *model, int max_streams,
                                       svlm_server_backend *iface, svlm_err *err) {
    *out = NULL;
    svlm_ingest_backend *b = calloc(1, sizeof *b);
    if (!b) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    pthread_mutex_init(&b->lock, NULL);
    b->max_streams = max_streams;
    snprintf(b->model, sizeof b->model, "%s", model);
    svlm_server_backend be = {b,     info,         open_stream, close_stream, list_streams, stream_status,
                              latest_frame, ask,   cancel,      watch,        unwatch};
    *iface = be;
    *out = b;
    return SVLM_OK;
}

void svlm_ingest_backend_destroy(svlm_ingest_backend *b) {
    if (!b) return;
    while (b->streams) {
        ingest_stream *s = b->streams;
        b->streams = s->next;
        stop_stream(s);
    }
    pthread_mutex_destroy(&b->lock);
    free(b);
}
