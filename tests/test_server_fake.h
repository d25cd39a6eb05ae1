/*
 * A deterministic stand-in engine for the server's protocol and limit tests (not shipped):
 * streams count frames on the wall clock at their fps, answers are fixed words sent one per
 * tick by a timer thread, watches alert every interval with the frame number.
 *
 * Answers: the question "long:N" gives N tokens of 1000 bytes (slow-reader tests), any other
 * question cycles through WORDS starting at a word chosen by the question's length, ending
 * after 12 tokens or max_tokens. "capped:N" is answered as another question, but the engine cuts
 * it at N tokens (as the real one does at its longest answer) and says so in done.max_tokens.
 * "toolong" is refused as too long for the context. "memory:N" (N <= 8) reports N spans of memory. An image
 * whose bytes start "BAD" cannot be decoded (the answer fails as the engine's does). URIs starting "fail:"
 * fail to open.
 */
#ifndef SVLM_TESTS_SERVER_FAKE_H
#define SVLM_TESTS_SERVER_FAKE_H

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "pipeline/server/server_backend.h"

#define FAKE_MAX 64
static const char *const fake_words[] = {"the ",  "quick ", "brown ", "fox ", "jumps ",
                                         "over ", "a ",     "lazy ",  "dog "};

typedef struct fake_stream {
    int used;
    char name[SVLM_BACKEND_NAME_MAX], uri[256];
    double fps, t_open;
} fake_stream;

typedef struct fake_ask {
    int used, cancelled, n_sent, n_total, long_tokens, first_word, limit, bad_image, memory_spans;
    uint64_t id;
    double t_ask, t_first;
    int64_t frames_at_ask;
    char stream[SVLM_BACKEND_NAME_MAX];
    char image_text[96];
    svlm_backend_ask_cb cb;
} fake_ask;

typedef struct fake_watch {
    int used;
    uint64_t id;
    double interval, next;
    char stream[SVLM_BACKEND_NAME_MAX];
    svlm_backend_watch_cb cb;
} fake_watch;

typedef struct fake_engine {
    pthread_mutex_t lock;
    pthread_t timer;
    int stop;
    double tick_s;
    uint64_t next_id;
    fake_stream streams[FAKE_MAX];
    fake_ask asks[256];
    fake_watch watches[FAKE_MAX];
} fake_engine;

static double fake_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static fake_stream *fake_find(fake_engine *e, const char *name) {
    for (int i = 0; i < FAKE_MAX; i++)
        if (e->streams[i].used && !strcmp(e->streams[i].name, name)) return &e->streams[i];
    return NULL;
}

static int64_t fake_frames(const fake_stream *s) {
    return (int64_t)((fake_now() - s->t_open) * s->fps) + 1;
}

/* a GPU of 5678 bytes, 1234 of them in use */
static void fake_compute(void *ctx, svlm_backend_compute *out) {
    (void)ctx;
    *out = (svlm_backend_compute){
        .backend = "fake \"gpu\"", .gpu = 1, .device_known = 1, .device_used = 1234, .device_total = 5678};
}

static void fake_info(void *ctx, svlm_backend_info *out) {
    (void)ctx;
    snprintf(out->model, sizeof out->model, "fake-test-engine");
    out->stand_in = 1;
}

static svlm_status fake_open(void *ctx, const svlm_backend_open_req *req, svlm_err *err) {
    fake_engine *e = ctx;
    if (!strncmp(req->uri, "fail:", 5)) {
        snprintf(err->msg, sizeof err->msg, "cannot open %s: no such source", req->uri);
        return SVLM_E_IO;
    }
    pthread_mutex_lock(&e->lock);
    svlm_status st = SVLM_E_LIMIT;
    if (fake_find(e, req->name)) st = SVLM_E_INVALID;
    for (int i = 0; i < FAKE_MAX && st == SVLM_E_LIMIT; i++)
        if (!e->streams[i].used) {
            fake_stream *s = &e->streams[i];
            s->used = 1;
            snprintf(s->name, sizeof s->name, "%s", req->name);
            snprintf(s->uri, sizeof s->uri, "%s", req->uri);
            s->fps = req->fps > 0 ? req->fps : 1;
            s->t_open = fake_now();
            st = SVLM_OK;
        }
    pthread_mutex_unlock(&e->lock);
    if (st != SVLM_OK) snprintf(err->msg, sizeof err->msg, "cannot open %s", req->name);
    return st;
}

static svlm_status fake_close(void *ctx, const char *name, svlm_err *err) {
    fake_engine *e = ctx;
    pthread_mutex_lock(&e->lock);
    fake_stream *s = fake_find(e, name);
    if (s) s->used = 0;
    for (int i = 0; s && i < 256; i++) /* its questions are cancelled, as the engine's are */
        if (e->asks[i].used && !strcmp(e->asks[i].stream, name)) e->asks[i].cancelled = 1;
    pthread_mutex_unlock(&e->lock);
    if (!s) snprintf(err->msg, sizeof err->msg, "no stream named %s", name);
    return s ? SVLM_OK : SVLM_E_INVALID;
}

static void fake_fill(const fake_stream *s, svlm_backend_stream_status *o) {
    memset(o, 0, sizeof *o);
    snprintf(o->name, sizeof o->name, "%s", s->name);
    snprintf(o->uri, sizeof o->uri, "%s", s->uri);
    snprintf(o->state, sizeof o->state, "running");
    o->live = 1;
    o->frames_in = fake_frames(s);
    o->fps_in = s->fps;
    o->video_time = (double)o->frames_in / s->fps;
    o->encoder_ms_sum = 2.0 * (double)o->frames_in;
    o->prefill_ms_sum = 1.0 * (double)o->frames_in;
    o->n_tiers = 3;
    const char *tiers[] = {"kv_sink", "kv_vision", "kv_text"};
    for (int k = 0; k < 3; k++) {
        snprintf(o->tiers[k].name, sizeof o->tiers[k].name, "%s", tiers[k]);
        o->tiers[k].bytes = 4096 * (k + 1);
    }
}

static int fake_list(void *ctx, svlm_backend_stream_status *out, int cap) {
    fake_engine *e = ctx;
    int n = 0;
    pthread_mutex_lock(&e->lock);
    for (int i = 0; i < FAKE_MAX; i++)
        if (e->streams[i].used) {
            if (n < cap) fake_fill(&e->streams[i], &out[n]);
            n++;
        }
    pthread_mutex_unlock(&e->lock);
    return n;
}

static svlm_status fake_status(void *ctx, const char *name, svlm_backend_stream_status *out, svlm_err *err) {
    fake_engine *e = ctx;
    pthread_mutex_lock(&e->lock);
    fake_stream *s = fake_find(e, name);
    if (s) fake_fill(s, out);
    pthread_mutex_unlock(&e->lock);
    if (!s) snprintf(err->msg, sizeof err->msg, "no stream named %s", name);
    return s ? SVLM_OK : SVLM_E_INVALID;
}

static svlm_status fake_frame(void *ctx, const char *name, svlm_backend_frame *out, svlm_err *err) {
    fake_engine *e = ctx;
    pthread_mutex_lock(&e->lock);
    fake_stream *s = fake_find(e, name);
    int64_t idx = s ? fake_frames(s) : 0;
    pthread_mutex_unlock(&e->lock);
    if (!s) {
        snprintf(err->msg, sizeof err->msg, "no stream named %s", name);
        return SVLM_E_INVALID;
    }
    int w = 64, h = 48;
    out->data = malloc((size_t)w * h * 3);
    if (!out->data) return SVLM_E_NOMEM;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *p = out->data + (size_t)(y * w + x) * 3;
            p[0] = (uint8_t)(x * 4), p[1] = (uint8_t)(y * 5), p[2] = (uint8_t)(idx * 16);
        }
    out->size = (size_t)w * h * 3;
    out->width = w, out->height = h, out->stride = w * 3;
    out->index = idx;
    out->is_jpeg = 0;
    return SVLM_OK;
}

static svlm_status fake_ask_start(void *ctx, const svlm_backend_ask_req *req, const svlm_backend_ask_cb *cb,
                                  uint64_t *id, svlm_err *err) {
    fake_engine *e = ctx;
    if (!strcmp(req->question, "toolong")) {
        snprintf(err->msg, sizeof err->msg, "the question is too long (%d tokens)", 5000);
        return SVLM_E_TOO_LONG;
    }
    pthread_mutex_lock(&e->lock);
    fake_ask *a = NULL;
    for (int i = 0; i < 256 && !a; i++)
        if (!e->asks[i].used) a = &e->asks[i];
    if (!a) {
        pthread_mutex_unlock(&e->lock);
        snprintf(err->msg, sizeof err->msg, "the fake engine is full");
        return SVLM_E_LIMIT;
    }
    memset(a, 0, sizeof *a);
    a->used = 1;
    a->id = ++e->next_id;
    a->cb = *cb;
    a->t_ask = fake_now();
    snprintf(a->stream, sizeof a->stream, "%s", req->stream ? req->stream : "");
    fake_stream *s = req->stream ? fake_find(e, req->stream) : NULL;
    a->frames_at_ask = s ? fake_frames(s) : 0;
    a->limit = req->max_tokens;
    if (req->n_images > 0) {
        snprintf(a->image_text, sizeof a->image_text, "%d image(s), first %zu bytes of %s", req->n_images,
                 req->images[0].size, req->images[0].mime);
        a->n_total = 1;
        a->bad_image = req->images[0].size >= 3 && !memcmp(req->images[0].data, "BAD", 3);
    } else if (!strncmp(req->question, "long:", 5)) {
        a->long_tokens = 1;
        a->n_total = atoi(req->question + 5);
    } else {
        a->n_total = 12;
        a->first_word = (int)(strlen(req->question) % 9);
    }
    if (!strncmp(req->question, "capped:", 7) && atoi(req->question + 7) < a->limit)
        a->limit = atoi(req->question + 7);
    if (a->n_total > a->limit) a->n_total = a->limit;
    a->memory_spans = 0;
    if (!strncmp(req->question, "memory:", 7)) a->memory_spans = atoi(req->question + 7) % 9;
    *id = a->id;
    pthread_mutex_unlock(&e->lock);
    return SVLM_OK;
}

static void fake_cancel(void *ctx, uint64_t id) {
    fake_engine *e = ctx;
    pthread_mutex_lock(&e->lock);
    for (int i = 0; i < 256; i++)
        if (e->asks[i].used && e->asks[i].id == id) e->asks[i].cancelled = 1;
    pthread_mutex_unlock(&e->lock);
}

static svlm_status fake_watch_start(void *ctx, const svlm_backend_watch_req *req,
                                    const svlm_backend_watch_cb *cb, uint64_t *id, svlm_err *err) {
    fake_engine *e = ctx;
    pthread_mutex_lock(&e->lock);
    for (int i = 0; i < FAKE_MAX; i++)
        if (!e->watches[i].used) {
            fake_watch *w = &e->watches[i];
            w->used = 1;
            w->id = *id = ++e->next_id;
            w->interval = req->interval_s;
            w->next = fake_now() + req->interval_s;
            snprintf(w->stream, sizeof w->stream, "%s", req->stream);
            w->cb = *cb;
            pthread_mutex_unlock(&e->lock);
            return SVLM_OK;
        }
    pthread_mutex_unlock(&e->lock);
    snprintf(err->msg, sizeof err->msg, "the fake engine has no room for another watch");
    return SVLM_E_LIMIT;
}

static void fake_unwatch(void *ctx, uint64_t id) {
    fake_engine *e = ctx;
    pthread_mutex_lock(&e->lock); /* alerts are sent under this lock: none runs after this */
    for (int i = 0; i < FAKE_MAX; i++)
        if (e->watches[i].used && e->watches[i].id == id) e->watches[i].used = 0;
    pthread_mutex_unlock(&e->lock);
}

static void fake_step(fake_engine *e) {
    double now = fake_now();
    for (int i = 0; i < 256; i++) {
        fake_ask *a = &e->asks[i];
        if (!a->used) continue;
        if (!a->cancelled && a->n_sent < a->n_total && !a->bad_image) {
            char buf[1100];
            if (a->image_text[0])
                snprintf(buf, sizeof buf, "%s", a->image_text);
            else if (a->long_tokens) {
                memset(buf, 'x', 999);
                buf[999] = 0;
            } else
                snprintf(buf, sizeof buf, "%s", fake_words[(a->first_word + a->n_sent) % 9]);
            if (a->n_sent == 0) a->t_first = now;
            a->n_sent++;
            a->cb.on_token(a->cb.user, buf, strlen(buf));
            continue;
        }
        svlm_backend_done d;
        memset(&d, 0, sizeof d);
        d.cancelled = a->cancelled;
        d.status = SVLM_OK;
        d.prompt_tokens = 7;
        d.completion_tokens = a->n_sent;
        d.queue_wait_ms = 0.1;
        d.ttft_ms = a->n_sent ? (a->t_first - a->t_ask) * 1000 : 0;
        d.decode_ms = a->n_sent ? (now - a->t_first) * 1000 : 0;
        fake_stream *s = a->stream[0] ? fake_find(e, a->stream) : NULL;
        d.frames_during = s ? fake_frames(s) - a->frames_at_ask : 0;
        d.max_tokens = a->limit;
        if (a->memory_spans) { /* "memory:N": N spans of the past, a minute apart, time-anchored */
            d.n_memory = a->memory_spans;
            d.memory_time_anchored = 1;
            for (int k = 0; k < d.n_memory; k++) {
                d.memory[k].t0 = 60.0 * k;
                d.memory[k].t1 = 60.0 * k + 30;
                snprintf(d.memory[k].tier, sizeof d.memory[k].tier, "%s", k ? "mid" : "event");
            }
        }
        if (a->bad_image && !a->cancelled) {
            d.status = SVLM_E_FORMAT;
            snprintf(d.error, sizeof d.error, "image: not a PNG, JPEG or other image this build reads");
        }
        a->used = 0;
        a->cb.on_done(a->cb.user, &d);
    }
    for (int i = 0; i < FAKE_MAX; i++) {
        fake_watch *w = &e->watches[i];
        if (!w->used || now < w->next) continue;
        w->next = now + w->interval;
        fake_stream *s = fake_find(e, w->stream);
        char answer[64];
        snprintf(answer, sizeof answer, "frame %lld", s ? (long long)fake_frames(s) : -1LL);
        svlm_backend_alert al = {answer, s ? (double)fake_frames(s) / s->fps : 0, 0};
        w->cb.on_alert(w->cb.user, &al);
    }
}

static void *fake_timer(void *arg) {
    fake_engine *e = arg;
    for (;;) {
        pthread_mutex_lock(&e->lock);
        int stop = e->stop;
        if (!stop) fake_step(e);
        pthread_mutex_unlock(&e->lock);
        if (stop) return NULL;
        struct timespec ts = {0, (long)(e->tick_s * 1e9)};
        nanosleep(&ts, NULL);
    }
}

static fake_engine *fake_engine_start(double tick_s, svlm_server_backend *be) {
    fake_engine *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    pthread_mutex_init(&e->lock, NULL);
    e->tick_s = tick_s;
    if (pthread_create(&e->timer, NULL, fake_timer, e)) {
        free(e);
        return NULL;
    }
    svlm_server_backend b = {e,           fake_info,        fake_open,    fake_close,
                             fake_list,   fake_status,      fake_frame,   fake_ask_start,
                             fake_cancel, fake_watch_start, fake_unwatch, fake_compute};
    *be = b;
    return e;
}

/* Finishes every answer (done, cancelled) before stopping, as the backend contract asks. */
static void fake_engine_stop(fake_engine *e) {
    if (!e) return;
    for (;;) {
        pthread_mutex_lock(&e->lock);
        int busy = 0;
        for (int i = 0; i < 256; i++)
            busy |= e->asks[i].used;
        pthread_mutex_unlock(&e->lock);
        if (!busy) break;
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    pthread_mutex_lock(&e->lock);
    e->stop = 1;
    pthread_mutex_unlock(&e->lock);
    pthread_join(e->timer, NULL);
    pthread_mutex_destroy(&e->lock);
    free(e);
}

#endif
