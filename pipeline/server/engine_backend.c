/* The engine backend's streams: open, ingest, status, snapshots, close; and its lifetime.
 * See engine_backend.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "pipeline/server/engine_internal.h"
#include "vision/preprocess.h"

#define SYSTEM_PROMPT "<|im_start|>System: You are watching a live video.<end_of_utterance>\n"
#define FRAME_EDGE 512 /* SmolVLM2's video longest edge */

double eng_now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

double eng_wall(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void svlm_engine_backend_opts_default(svlm_engine_backend_opts *o) {
    memset(o, 0, sizeof *o);
    o->max_streams = 16;
    o->answer_threads = 4;
    o->frames_window = 8;
    o->text_window = 512;
    o->max_answer_tokens = 256;
    o->max_queued = 1024;
}

static eng_stream *find_locked(eng *e, const char *name) {
    for (eng_stream *s = e->streams; s; s = s->next)
        if (!strcmp(s->name, name)) return s;
    return NULL;
}

eng_stream *eng_stream_ref(eng *e, const char *name) {
    pthread_mutex_lock(&e->lock);
    eng_stream *s = name ? find_locked(e, name) : NULL;
    if (s && s->closing) s = NULL;
    if (s) s->refs++;
    pthread_mutex_unlock(&e->lock);
    return s;
}

void eng_stream_unref(eng_stream *s) {
    eng *e = s->owner;
    pthread_mutex_lock(&e->lock);
    if (--s->refs == 0) pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->lock);
}

void eng_stream_refresh(eng_stream *s) {
    svlm_stream_metrics m;
    svlm_stream_metrics_get(s->stream, &m);
    pthread_mutex_lock(&s->owner->lock);
    s->metrics = m;
    pthread_mutex_unlock(&s->owner->lock);
}

/* Video preprocessing and the encoder: one frame into s->embd [tokens_per_tile][n_embd]. */
static svlm_status encode_frame(eng_stream *s, const svlm_frame *f, svlm_err *err) {
    const svlm_mmproj *mp = s->owner->mmproj;
    svlm_image img = {0};
    svlm_status st = svlm_image_alloc(&img, f->width, f->height, err);
    if (st) return st;
    for (int y = 0; y < f->height; y++)
        memcpy(img.rgb + (size_t)y * f->width * 3, f->data + (size_t)y * f->stride, (size_t)f->width * 3);
    svlm_preproc_params pp = {.tile = mp->hp.image_size, .longest_edge = mp->hp.preproc_image_size};
    memcpy(pp.mean, mp->hp.image_mean, sizeof pp.mean);
    memcpy(pp.std, mp->hp.image_std, sizeof pp.std);
    st = svlm_preprocess_frame(&img, &pp, FRAME_EDGE, s->pixels, err);
    if (!st) st = svlm_vision_encode(s->vc, s->pixels, 1, s->embd, err);
    svlm_image_free(&img);
    return st;
}

static void set_state(eng_stream *s, const char *state) {
    pthread_mutex_lock(&s->owner->lock);
    snprintf(s->state, sizeof s->state, "%s", state);
    pthread_mutex_unlock(&s->owner->lock);
}

/* The ingest thread: frames into the stream as they come; answers run elsewhere. */
static void *ingest(void *arg) {
    eng_stream *s = arg;
    eng *e = s->owner;
    for (;;) {
        svlm_source_item item;
        svlm_err err = {0};
        svlm_status st = svlm_source_next(s->src, &item, &err);
        if (st != SVLM_OK) {
            set_state(s, st == SVLM_E_END || st == SVLM_E_CANCELLED ? "ended" : "failed");
            if (st != SVLM_E_END && st != SVLM_E_CANCELLED)
                fprintf(stderr, "svlm serve: stream %s: %s\n", s->name, err.msg);
            return NULL;
        }
        if (item.kind == SVLM_ITEM_EVENT) {
            const svlm_source_event *ev = &item.event;
            for (int64_t i = 0; ev->kind == SVLM_EVENT_DROP && i < ev->count; i++) svlm_stream_note_drop(s->stream);
            if (ev->kind == SVLM_EVENT_DROP) eng_stream_refresh(s);
            pthread_mutex_lock(&e->lock);
            if (ev->kind == SVLM_EVENT_RECONNECT) s->reconnects++, snprintf(s->state, sizeof s->state, "running");
            else if (ev->kind == SVLM_EVENT_STALL) snprintf(s->state, sizeof s->state, "stalled");
            else if (ev->kind == SVLM_EVENT_DISCONNECT) snprintf(s->state, sizeof s->state, "reconnecting");
            pthread_mutex_unlock(&e->lock);
            continue;
        }
        double t0 = eng_now_ms();
        st = encode_frame(s, &item.frame, &err);
        double t1 = eng_now_ms();
        if (!st) st = svlm_stream_add_frame(s->stream, item.frame.pts, s->embd, &err);
        if (st) {
            fprintf(stderr, "svlm serve: stream %s: frame at %.2f s: %s\n", s->name, item.frame.pts, err.msg);
            svlm_frame_release(&item.frame);
            set_state(s, "failed");
            return NULL;
        }
        eng_stream_refresh(s);
        double now = eng_wall();
        pthread_mutex_lock(&e->lock);
        if (s->last_wall > 0 && now > s->last_wall) {
            double fps = 1.0 / (now - s->last_wall);
            s->fps_ema = s->fps_ema > 0 ? 0.8 * s->fps_ema + 0.2 * fps : fps;
        }
        s->last_wall = now;
        s->video_time = item.frame.pts;
        s->encoder_ms_sum += t1 - t0;
        svlm_frame_release(&s->latest);
        s->latest = item.frame; /* kept for snapshots */
        snprintf(s->state, sizeof s->state, "running");
        pthread_mutex_unlock(&e->lock);
    }
}

static void stream_free(eng_stream *s) {
    if (!s) return;
    if (s->thread_started) {
        svlm_source_cancel(s->src);
        pthread_join(s->thread, NULL);
    }
    svlm_source_close(s->src);
    svlm_stream_free(s->stream);
    svlm_vision_ctx_free(s->vc);
    svlm_kernels_destroy(s->k_encode);
    svlm_kernels_destroy(s->k_stream);
    svlm_frame_release(&s->latest);
    free(s->pixels);
    free(s->embd);
    free(s);
}

static svlm_status stream_build(eng *e, const svlm_backend_open_req *req, eng_stream *s, svlm_err *err) {
    s->owner = e;
    snprintf(s->name, sizeof s->name, "%s", req->name);
    snprintf(s->uri, sizeof s->uri, "%s", req->uri);
    snprintf(s->state, sizeof s->state, "opening");
    const int S = e->mmproj->hp.image_size;
    s->pixels = malloc((size_t)3 * S * S * sizeof(float));
    s->embd = malloc((size_t)e->tokens_per_tile * e->n_embd * sizeof(float));
    if (!s->pixels || !s->embd) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    svlm_status st;
    /* one thread each: ingest keeps to its own core, the answers' backend has the rest */
    if ((st = svlm_kernels_create_cpu(1, &s->k_stream, err)) || (st = svlm_kernels_create_cpu(1, &s->k_encode, err)) ||
        (st = svlm_vision_ctx_create(e->mmproj, s->k_encode, 1, &s->vc, err)) ||
        (st = svlm_stream_create(e->model, s->k_stream, &e->sp, SYSTEM_PROMPT, &s->stream, err)))
        return st;
    svlm_stream_metrics_get(s->stream, &s->metrics);
    svlm_source_opts so;
    svlm_source_opts_default(&so);
    if (req->fps > 0) so.fps = req->fps;
    so.pace = SVLM_PACE_REALTIME; /* a recording plays like a camera */
    if ((st = svlm_source_open(&s->src, req->uri, &so, err))) return st;
    if (pthread_create(&s->thread, NULL, ingest, s)) return svlm_fail(err, SVLM_E_NOMEM, "cannot start an ingest thread");
    s->thread_started = 1;
    return SVLM_OK;
}

static svlm_status open_stream(void *ctx, const svlm_backend_open_req *req, svlm_err *err) {
    eng *e = ctx;
    pthread_mutex_lock(&e->lock);
    int exists = find_locked(e, req->name) != NULL, full = e->n_streams >= e->o.max_streams;
    if (!exists && !full) e->n_streams++; /* the slot is ours while opening */
    pthread_mutex_unlock(&e->lock);
    if (exists) return svlm_fail(err, SVLM_E_INVALID, "a stream named '%s' is open already", req->name);
    if (full) return svlm_fail(err, SVLM_E_LIMIT, "at most %d streams", e->o.max_streams);
    eng_stream *s = calloc(1, sizeof *s);
    svlm_status st = s ? stream_build(e, req, s, err) : svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    pthread_mutex_lock(&e->lock);
    if (!st && find_locked(e, req->name)) /* opened by another client meanwhile */
        st = svlm_fail(err, SVLM_E_INVALID, "a stream named '%s' is open already", req->name);
    if (!st) {
        s->next = e->streams;
        e->streams = s;
    } else {
        e->n_streams--;
    }
    pthread_mutex_unlock(&e->lock);
    if (st) stream_free(s);
    return st;
}

static svlm_status close_stream(void *ctx, const char *name, svlm_err *err) {
    eng *e = ctx;
    pthread_mutex_lock(&e->lock);
    eng_stream *s = find_locked(e, name);
    if (s && s->closing) s = NULL;
    if (s) s->closing = 1; /* no new references from here on */
    pthread_mutex_unlock(&e->lock);
    if (!s) return svlm_fail(err, SVLM_E_INVALID, "no stream named '%s'", name);
    svlm_source_cancel(s->src);
    eng_jobs_cancel(e, s, 0);
    pthread_mutex_lock(&e->lock);
    while (s->refs > 0) pthread_cond_wait(&e->cv, &e->lock);
    for (eng_stream **pp = &e->streams; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    e->n_streams--;
    pthread_mutex_unlock(&e->lock);
    stream_free(s);
    return SVLM_OK;
}

static void tier(svlm_backend_stream_status *o, const char *name, int64_t bytes) {
    if (o->n_tiers >= SVLM_BACKEND_MAX_TIERS) return;
    snprintf(o->tiers[o->n_tiers].name, sizeof o->tiers[0].name, "%s", name);
    o->tiers[o->n_tiers++].bytes = bytes;
}

/* Under e->lock. */
static void fill(eng *e, eng_stream *s, svlm_backend_stream_status *o) {
    memset(o, 0, sizeof *o);
    snprintf(o->name, sizeof o->name, "%s", s->name);
    snprintf(o->uri, sizeof o->uri, "%s", s->uri);
    snprintf(o->state, sizeof o->state, "%s", s->state);
    o->live = svlm_source_is_live(s->src);
    o->fps_in = s->fps_ema;
    o->reconnects = s->reconnects;
    o->video_time = s->video_time;
    o->encoder_ms_sum = s->encoder_ms_sum;
    const svlm_stream_metrics m = s->metrics;
    o->frames_in = m.frames_in;
    o->drops = m.frames_dropped;
    o->prefill_ms_sum = m.prefill_ms_per_frame * (double)m.frames_in;
    const int64_t per = (int64_t)e->kv_bytes_per_token;
    int64_t sink = m.tokens[SVLM_KV_SINK] * per, vision = m.tokens[SVLM_KV_VISION] * per,
            text = m.tokens[SVLM_KV_TEXT] * per, other = (int64_t)m.kv_bytes - sink - vision - text;
    tier(o, "kv_sink", sink);
    tier(o, "kv_vision", vision);
    tier(o, "kv_text", text);
    /* the rest of the page pool in use: answers' forks and the unfilled ends of pages */
    tier(o, "kv_other", other > 0 ? other : 0);
    tier(o, "latest_frame", s->latest.data ? (int64_t)s->latest.stride * s->latest.height : 0);
}

static int list_streams(void *ctx, svlm_backend_stream_status *out, int cap) {
    eng *e = ctx;
    int n = 0;
    pthread_mutex_lock(&e->lock);
    for (eng_stream *s = e->streams; s; s = s->next, n++)
        if (n < cap) fill(e, s, &out[n]);
    pthread_mutex_unlock(&e->lock);
    return n;
}

static svlm_status stream_status(void *ctx, const char *name, svlm_backend_stream_status *out, svlm_err *err) {
    eng *e = ctx;
    pthread_mutex_lock(&e->lock);
    eng_stream *s = find_locked(e, name);
    if (s) fill(e, s, out);
    pthread_mutex_unlock(&e->lock);
    return s ? SVLM_OK : svlm_fail(err, SVLM_E_INVALID, "no stream named '%s'", name);
}

static svlm_status latest_frame(void *ctx, const char *name, svlm_backend_frame *out, svlm_err *err) {
    eng *e = ctx;
    svlm_status st = SVLM_OK;
    pthread_mutex_lock(&e->lock);
    eng_stream *s = find_locked(e, name);
    if (!s) st = svlm_fail(err, SVLM_E_INVALID, "no stream named '%s'", name);
    else if (!s->latest.data) st = SVLM_E_AGAIN;
    else {
        const svlm_frame *f = &s->latest;
        size_t size = (size_t)f->stride * (size_t)f->height;
        if (!(out->data = malloc(size))) st = svlm_fail(err, SVLM_E_NOMEM, "out of memory");
        else {
            memcpy(out->data, f->data, size);
            out->size = size;
            out->is_jpeg = 0;
            out->width = f->width, out->height = f->height, out->stride = f->stride;
            out->index = f->index;
            out->pts = f->pts;
        }
    }
    pthread_mutex_unlock(&e->lock);
    return st;
}

static void info(void *ctx, svlm_backend_info *out) {
    eng *e = ctx;
    memset(out, 0, sizeof *out);
    snprintf(out->model, sizeof out->model, "%s", e->model_label);
    out->stand_in = e->o.stand_in;
}

static svlm_status load_models(eng *e, svlm_err *err) {
    svlm_status st;
    if ((st = svlm_llama_load(e->o.text_path, &e->model, err))) return st; /* messages name the file */
    if ((st = svlm_mmproj_load(e->o.mmproj_path, &e->mmproj, err))) return st;
    const svlm_llama_hparams *hp = svlm_llama_hparams_of(e->model);
    e->n_embd = hp->n_embd;
    e->tokens_per_tile = e->mmproj->hp.tokens_per_tile;
    if (e->mmproj->hp.proj_dim != hp->n_embd)
        return svlm_fail(err, SVLM_E_INVALID, "the projector makes %d-wide embeddings, the text model takes %d",
                         e->mmproj->hp.proj_dim, hp->n_embd);
    e->kv_bytes_per_token = (size_t)2 * hp->n_layer * hp->n_head_kv * hp->head_dim * sizeof(float);
    /* a frame is its header ("\nFrame from MM:SS:", a few tokens) plus the image block */
    svlm_stream_params sp = {.sink_tokens = 64,
                             .vision_tokens = e->o.frames_window * (e->tokens_per_tile + 24),
                             .text_tokens = e->o.text_window,
                             .answer_room = e->o.max_answer_tokens + 256, /* the question's share */
                             .rows_per_frame = e->tokens_per_tile,
                             .kv_type = SVLM_F32};
    e->sp = sp;
    e->ctx_size = sp.sink_tokens + sp.vision_tokens + sp.text_tokens + sp.answer_room;
    int threads = e->o.compute_threads;
    if (threads <= 0) { /* every CPU but one: the streams' ingest threads have that one */
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 2 ? (int)n - 1 : 1;
    }
    if ((st = svlm_kernels_create_cpu(threads, &e->k_answer, err))) return st;
    return svlm_vision_ctx_create(e->mmproj, e->k_answer, 4, &e->image_vc, err);
}

svlm_status svlm_engine_backend_create(const svlm_engine_backend_opts *o, svlm_engine_backend **out,
                                       svlm_server_backend *iface, svlm_err *err) {
    *out = NULL;
    if (!o->text_path || !o->mmproj_path) return svlm_fail(err, SVLM_E_INVALID, "the engine needs both model files");
    if (o->max_streams < 1 || o->answer_threads < 1 || o->answer_threads > 64 || o->frames_window < 1 ||
        o->text_window < 16 || o->max_answer_tokens < 1 || o->max_queued < 1)
        return svlm_fail(err, SVLM_E_INVALID, "engine options out of range");
    eng *e = calloc(1, sizeof *e);
    if (!e) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    e->o = *o;
    const char *base = strrchr(o->text_path, '/');
    snprintf(e->model_label, sizeof e->model_label, "%s",
             o->model_label ? o->model_label : base ? base + 1 : o->text_path);
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->cv, NULL);
    pthread_mutex_init(&e->watch_lock, NULL);
    pthread_cond_init(&e->watch_cv, NULL);
    pthread_mutex_init(&e->gate.mu, NULL);
    pthread_cond_init(&e->gate.cv, NULL);
    svlm_status st = load_models(e, err);
    e->o.text_path = e->o.mmproj_path = e->o.model_label = NULL; /* the caller's strings are not kept */
    if (!st) st = eng_workers_start(e, err);
    if (!st) st = eng_watch_start_thread(e, err);
    if (st) {
        svlm_engine_backend_destroy(e);
        return st;
    }
    svlm_server_backend be = {e,         info,    open_stream, close_stream, list_streams, stream_status,
                              latest_frame, eng_ask, eng_cancel, eng_watch,   eng_unwatch};
    *iface = be;
    *out = e;
    return SVLM_OK;
}

void svlm_engine_backend_destroy(svlm_engine_backend *e) {
    if (!e) return;
    eng_watch_stop_thread(e);
    /* close every stream: cancels its answers and waits for them */
    for (;;) {
        pthread_mutex_lock(&e->lock);
        eng_stream *s = e->streams;
        while (s && s->closing) s = s->next;
        char name[SVLM_BACKEND_NAME_MAX] = "";
        if (s) snprintf(name, sizeof name, "%s", s->name);
        pthread_mutex_unlock(&e->lock);
        if (!s) break;
        svlm_err err = {0};
        close_stream(e, name, &err);
    }
    eng_workers_stop(e);
    while (e->watches) {
        eng_watcher *w = e->watches;
        e->watches = w->next;
        free(w->question);
        free(w->last_answer);
        free(w);
    }
    svlm_vision_ctx_free(e->image_vc);
    svlm_kernels_destroy(e->k_answer);
    svlm_mmproj_free(e->mmproj);
    svlm_llama_free(e->model);
    pthread_cond_destroy(&e->gate.cv);
    pthread_mutex_destroy(&e->gate.mu);
    pthread_cond_destroy(&e->watch_cv);
    pthread_mutex_destroy(&e->watch_lock);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->lock);
    free(e);
}
