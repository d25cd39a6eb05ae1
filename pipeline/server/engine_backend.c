/* The engine backend's streams: open, read, status, snapshots, close; and its lifetime.
 * See engine_backend.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "pipeline/server/engine_internal.h"

#define SYSTEM_PROMPT "<|im_start|>System: You are watching a live video.<end_of_utterance>\n"

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
    o->answer_threads = 0; /* the engine's: 8 on the CPU, 64 on a GPU */
    o->frames_window = 8;
    o->text_window = 512;
    o->sink_tokens = 64;
    o->frame_queue = 2;
    o->kv_type = SVLM_F32;
    o->max_answer_tokens = 256;
    o->max_queued = 1024;
    svlm_stc_controls_default(&o->stc);
    o->memory = 1;
    o->memory_budget = (size_t)64 << 20;
    o->memory_tokens = 64;
    svlm_source_opts so;
    svlm_source_opts_default(&so);
    o->open_timeout_s = so.open_timeout_s;
    o->stall_timeout_s = so.stall_timeout_s;
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

/* reason: why it is down or failed (NULL: it is not) */
static void set_state(eng_stream *s, const char *state, const char *reason) {
    pthread_mutex_lock(&s->owner->lock);
    snprintf(s->state, sizeof s->state, "%s", state);
    snprintf(s->reason, sizeof s->reason, "%s", reason ? reason : "");
    pthread_mutex_unlock(&s->owner->lock);
}

/* Keeps a copy of the frame for snapshots (the engine takes the frame itself); under e->lock. */
static void keep_latest(eng_stream *s, const svlm_frame *f) {
    const size_t row = (size_t)f->width * 3, need = row * (size_t)f->height;
    if (need > s->latest_cap) {
        uint8_t *g = realloc(s->latest, need);
        if (!g) return; /* the snapshot stays at the previous frame */
        s->latest = g;
        s->latest_cap = need;
    }
    for (int y = 0; y < f->height; y++)
        memcpy(s->latest + (size_t)y * row, f->data + (size_t)y * f->stride, row);
    s->latest_w = f->width, s->latest_h = f->height, s->latest_stride = (int)row;
    s->latest_index = f->index;
    s->latest_pts = f->pts;
}

/* The source reader: frames into the engine's queue as they come; encoding, prefill and answers
 * run on the engine's lanes. A camera's full queue drops its oldest frame (counted): the stream
 * stays at now. A recording's waits for room instead: played at real time while the engine keeps
 * up, it loses no frame when it does not (it then falls behind the wall clock). */
static void *reader(void *arg) {
    eng_stream *s = arg;
    eng *e = s->owner;
    const int wait_for_room = !svlm_source_is_live(s->src);
    for (;;) {
        svlm_source_item item;
        svlm_err err = {0};
        svlm_status st = svlm_source_next(s->src, &item, &err);
        if (st != SVLM_OK) {
            const int failed = st != SVLM_E_END && st != SVLM_E_CANCELLED;
            set_state(s, failed ? "failed" : "ended", failed ? err.msg : NULL);
            if (st != SVLM_E_END && st != SVLM_E_CANCELLED)
                fprintf(stderr, "svlm serve: stream %s: %s\n", s->name, err.msg);
            return NULL;
        }
        if (item.kind == SVLM_ITEM_EVENT) {
            const svlm_source_event *ev = &item.event;
            for (int64_t i = 0; ev->kind == SVLM_EVENT_DROP && i < ev->count; i++)
                svlm_stream_note_drop(s->stream);
            /* in order with the frames: after a reconnect token compression starts over (an error
             * means the stream is being removed: the next push says so) */
            (void)svlm_engine_push_event(e->engine, s->sid, ev, &err);
            pthread_mutex_lock(&e->lock);
            if (ev->kind == SVLM_EVENT_RECONNECT) { /* the source's running count: merged events count too */
                s->reconnects = ev->total, snprintf(s->state, sizeof s->state, "running");
                s->reason[0] = 0;
            } else if (ev->kind == SVLM_EVENT_STALL || ev->kind == SVLM_EVENT_DISCONNECT ||
                       ev->kind == SVLM_EVENT_RETRY) {
                /* (a stall is followed at once by its disconnect: the reason keeps saying so) */
                snprintf(s->state, sizeof s->state, "%s",
                         ev->kind == SVLM_EVENT_STALL ? "stalled" : "reconnecting");
                snprintf(s->reason, sizeof s->reason, "%s",
                         ev->detail[0] ? ev->detail : "the source was lost");
            }
            pthread_mutex_unlock(&e->lock);
            continue;
        }
        double now = eng_wall();
        pthread_mutex_lock(&e->lock);
        const int cap = (int)(sizeof s->arrivals / sizeof s->arrivals[0]);
        s->arrivals[s->n_arrivals % cap] = now;
        s->n_arrivals++;
        const int n = s->n_arrivals < cap ? s->n_arrivals : cap;
        const double oldest = s->arrivals[(s->n_arrivals - n) % cap];
        if (n > 1 && now > oldest) s->fps_recent = (n - 1) / (now - oldest);
        s->last_wall = now;
        s->video_time = item.frame.pts + s->time_offset; /* the stream's clock, its memory's too */
        keep_latest(s, &item.frame);
        snprintf(s->state, sizeof s->state, "running");
        s->reason[0] = 0;
        pthread_mutex_unlock(&e->lock);
        if (svlm_engine_push_frame(e->engine, s->sid, &item.frame, wait_for_room,
                                   &err)) { /* the stream is being removed */
            set_state(s, "ended", NULL);
            return NULL;
        }
    }
}

static void stream_free(eng *e, eng_stream *s) {
    if (!s) return;
    if (s->thread_started) {
        svlm_source_cancel(s->src);
        /* a recording's reader may wait for room in the queue: let it go now, not once the lane
         * has come round to this stream again (seconds a frame per stream on a CPU) */
        if (s->stream) svlm_engine_refuse_pushes(e->engine, s->sid);
        pthread_join(s->thread, NULL);
    }
    if (s->stream) svlm_engine_remove_stream(e->engine, s->sid); /* cancels its answers, waits for them */
    svlm_source_close(s->src);
    svlm_engine_free_stream(e->engine, s->stream);
    free(s->latest);
    free(s);
}

/* keep_trying: see svlm_engine_backend_open_start (then *down says why the source is down). */
static svlm_status stream_build(eng *e, const svlm_backend_open_req *req, int keep_trying, eng_stream *s,
                                svlm_err *down, svlm_err *err) {
    s->owner = e;
    snprintf(s->name, sizeof s->name, "%s", req->name);
    snprintf(s->uri, sizeof s->uri, "%s", req->uri);
    snprintf(s->state, sizeof s->state, "opening");
    eng_stream_settings set;
    svlm_status st = eng_stream_options(e, req->options, &set, err);
    if (st) return st;
    svlm_stream_params sp = set.sp;
    svlm_memory_opts mo = e->mo;
    char dir[1024];
    if (e->memory_dir[0]) { /* each stream resumes its own bank */
        /* the name becomes a folder name: "." or ".." would leave the memory folder */
        if (!req->name[0] || !strcmp(req->name, ".") || !strcmp(req->name, "..") || strchr(req->name, '/'))
            return svlm_fail(err, SVLM_E_INVALID, "stream name '%s' cannot name a memory folder", req->name);
        snprintf(dir, sizeof dir, "%s/%s", e->memory_dir, req->name);
        mo.dir = dir;
    }
    sp.memory = set.memory ? &mo : NULL;
    svlm_source_opts so;
    svlm_source_opts_default(&so);
    if (req->fps > 0) so.fps = req->fps;
    so.live = set.live;           /* an HTTP camera (MJPEG, MPEG-TS) says so: only its URI's kind is known */
    so.pace = SVLM_PACE_REALTIME; /* a recording (and a file opened live) plays at real time */
    so.open_timeout_s = e->o.open_timeout_s;
    so.stall_timeout_s = e->o.stall_timeout_s;
    so.abort_flag = &e->shutdown;
    so.keep_trying = keep_trying;
    svlm_err first = {0};
    st = svlm_source_open(&s->src, req->uri, &so, &first);
    if (st && err) *err = first;
    if (!st && first.status != SVLM_OK) { /* down now: the source's reader reconnects */
        if (down) *down = first;
        snprintf(s->state, sizeof s->state, "reconnecting");
        snprintf(s->reason, sizeof s->reason, "%s", first.msg);
    }
    if (!st)
        st = svlm_engine_open_stream_with(e->engine, &sp, SYSTEM_PROMPT, &set.stc, &s->stream, &s->sid, err);
    if (st) return st;
    svlm_stream_metrics m;
    svlm_stream_metrics_get(s->stream, &m);
    s->time_offset = m.time_offset;
    if (pthread_create(&s->thread, NULL, reader, s))
        return svlm_fail(err, SVLM_E_NOMEM, "cannot start a reader thread");
    s->thread_started = 1;
    return SVLM_OK;
}

static svlm_status open_stream_with(eng *e, const svlm_backend_open_req *req, int keep_trying, svlm_err *down,
                                    svlm_err *err) {
    if (atomic_load(&e->shutdown)) return svlm_fail(err, SVLM_E_CANCELLED, "the server is stopping");
    pthread_mutex_lock(&e->lock);
    int exists = find_locked(e, req->name) != NULL, slot = -1;
    for (int i = 0; i < SVLM_BACKEND_MAX_OPENING; i++) {
        if (e->opening[i][0] && !strcmp(e->opening[i], req->name)) exists = 1;
        if (!e->opening[i][0] && slot < 0) slot = i;
    }
    int full = e->n_streams >= e->o.max_streams || slot < 0;
    if (!exists && !full) {
        e->n_streams++; /* the slot and the name are ours while opening */
        snprintf(e->opening[slot], sizeof e->opening[slot], "%s", req->name);
    }
    pthread_mutex_unlock(&e->lock);
    if (exists) return svlm_fail(err, SVLM_E_EXISTS, "a stream named '%s' is open already", req->name);
    if (full)
        return svlm_fail(err, SVLM_E_LIMIT, "at most %d streams (and %d opening at once)", e->o.max_streams,
                         SVLM_BACKEND_MAX_OPENING);
    eng_stream *s = calloc(1, sizeof *s);
    svlm_status st =
        s ? stream_build(e, req, keep_trying, s, down, err) : svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    pthread_mutex_lock(&e->lock);
    e->opening[slot][0] = 0;
    if (!st) {
        s->next = e->streams;
        e->streams = s;
    } else {
        e->n_streams--;
    }
    pthread_mutex_unlock(&e->lock);
    if (st) stream_free(e, s);
    return st;
}

static svlm_status open_stream(void *ctx, const svlm_backend_open_req *req, svlm_err *err) {
    return open_stream_with(ctx, req, 0, NULL, err);
}

svlm_status svlm_engine_backend_open_start(svlm_engine_backend *e, const svlm_backend_open_req *req,
                                           svlm_err *down, svlm_err *err) {
    return open_stream_with(e, req, 1, down, err);
}

void svlm_engine_backend_shutdown(svlm_engine_backend *e) {
    if (e) atomic_store(&e->shutdown, 1);
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
    /* its questions: the engine cancels them; their done callbacks drop the references */
    for (;;) {
        uint64_t qid = 0;
        pthread_mutex_lock(&e->lock);
        for (eng_job *j = e->jobs; j; j = j->next)
            if (j->s == s && !atomic_exchange(&j->cancelled, 1)) {
                qid = j->qid;
                break;
            }
        pthread_mutex_unlock(&e->lock);
        if (!qid) break;
        svlm_engine_cancel(e->engine, qid);
    }
    pthread_mutex_lock(&e->lock);
    while (s->refs > 0)
        pthread_cond_wait(&e->cv, &e->lock);
    for (eng_stream **pp = &e->streams; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    e->n_streams--;
    pthread_mutex_unlock(&e->lock);
    stream_free(e, s);
    return SVLM_OK;
}

static void tier(svlm_backend_stream_status *o, const char *name, int64_t bytes) {
    if (o->n_tiers >= SVLM_BACKEND_MAX_TIERS) return;
    snprintf(o->tiers[o->n_tiers].name, sizeof o->tiers[0].name, "%s", name);
    o->tiers[o->n_tiers++].bytes = bytes;
}

/* Under e->lock (the stream's metrics take its own short lock, never e->lock). */
static void fill(eng *e, eng_stream *s, svlm_backend_stream_status *o) {
    memset(o, 0, sizeof *o);
    snprintf(o->name, sizeof o->name, "%s", s->name);
    snprintf(o->uri, sizeof o->uri, "%s", s->uri);
    snprintf(o->state, sizeof o->state, "%s", s->state);
    snprintf(o->reason, sizeof o->reason, "%s", s->reason);
    o->live = svlm_source_is_live(s->src);
    /* the average over the frames that came decays while none comes: at most one over the time
     * since the last one (a stream reconnecting for 40 s is at 0.025), and none once it is over */
    o->fps_in = s->fps_recent;
    const double since = eng_wall() - s->last_wall;
    if (!strcmp(s->state, "ended") || !strcmp(s->state, "failed"))
        o->fps_in = 0;
    else if (s->last_wall > 0 && since > 0 && since * o->fps_in > 1)
        o->fps_in = 1 / since;
    o->reconnects = s->reconnects;
    o->video_time = s->video_time;
    snprintf(o->kv_type, sizeof o->kv_type, "%s", svlm_stream_kv_type(s->stream) == SVLM_F16 ? "f16" : "f32");
    svlm_stream_metrics m; /* (peek: the server's thread must not wait for this stream's prefill) */
    svlm_stream_metrics_peek(s->stream, &m);
    o->frames_in = m.frames_in;
    o->drops = m.frames_dropped;
    o->encoder_ms_sum = m.encode_ms_per_frame * (double)m.frames_in;
    o->prefill_ms_sum = m.prefill_ms_per_frame * (double)m.frames_in;
    const int64_t per = (int64_t)e->kv_bytes_per_token;
    int64_t sink = m.tokens[SVLM_KV_SINK] * per, vision = m.tokens[SVLM_KV_VISION] * per,
            text = m.tokens[SVLM_KV_TEXT] * per, other = (int64_t)m.kv_bytes - sink - vision - text;
    tier(o, "kv_sink", sink);
    tier(o, "kv_vision", vision);
    tier(o, "kv_text", text);
    /* the rest of the page pool in use: answers' forks and the unfilled ends of pages */
    tier(o, "kv_other", other > 0 ? other : 0);
    tier(o, "latest_frame", s->latest ? (int64_t)s->latest_stride * s->latest_h : 0);
    if (m.memory_on) tier(o, "memory_bank", (int64_t)(m.memory_bytes + m.frame_ring_bytes));
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

static svlm_status stream_status(void *ctx, const char *name, svlm_backend_stream_status *out,
                                 svlm_err *err) {
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
    if (!s)
        st = svlm_fail(err, SVLM_E_INVALID, "no stream named '%s'", name);
    else if (!s->latest)
        st = SVLM_E_AGAIN;
    else {
        size_t size = (size_t)s->latest_stride * (size_t)s->latest_h;
        if (!(out->data = malloc(size)))
            st = svlm_fail(err, SVLM_E_NOMEM, "out of memory");
        else {
            memcpy(out->data, s->latest, size);
            out->size = size;
            out->is_jpeg = 0;
            out->width = s->latest_w, out->height = s->latest_h, out->stride = s->latest_stride;
            out->index = s->latest_index;
            out->pts = s->latest_pts;
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

static void compute(void *ctx, svlm_backend_compute *out) {
    eng *e = ctx;
    memset(out, 0, sizeof *out);
    svlm_kernels *k = e->engine ? svlm_engine_answer_kernels(e->engine) : NULL;
    if (!k) return;
    snprintf(out->backend, sizeof out->backend, "%s", svlm_kernels_name(k));
    out->gpu = svlm_kernels_is_gpu(k);
    out->device_known = svlm_kernels_device_memory(k, &out->device_used, &out->device_total);
}

static svlm_status load_models(eng *e, svlm_err *err) {
    svlm_status st;
    if ((st = svlm_llama_load(e->o.text_path, &e->model, err))) return st; /* messages name the file */
    if ((st = svlm_mmproj_load(e->o.mmproj_path, &e->mmproj, err))) return st;
    const svlm_llama_hparams *hp = svlm_llama_hparams_of(e->model);
    e->n_embd = hp->n_embd;
    e->tokens_per_tile = e->mmproj->hp.tokens_per_tile;
    /* a frame is its header ("\nFrame from MM:SS:", a few tokens) plus the image block */
    svlm_stream_params sp = {.sink_tokens = e->o.sink_tokens,
                             .vision_tokens = e->o.frames_window * (e->tokens_per_tile + 24),
                             .text_tokens = e->o.text_window,
                             .answer_room = e->o.max_answer_tokens + 256, /* the question's share */
                             .rows_per_frame = e->tokens_per_tile,
                             .kv_type = e->o.kv_type,
                             .memory_tokens = e->o.memory_tokens};
    e->sp = sp;
    svlm_memory_opts_default(&e->mo);
    e->mo.budget_bytes = e->o.memory_budget;
    int threads = e->o.compute_threads;
    if (threads <= 0) { /* every CPU but one: the ingest lane has that one */
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n > 2 ? (int)n - 1 : 1;
    }
    svlm_engine_params ep = {.ingest_threads = 1,
                             .answer_threads = threads,
                             .frame_queue = e->o.frame_queue,
                             .max_streams = e->o.max_streams,
                             .max_active = e->o.answer_threads,
                             .decode_batch = e->o.decode_batch,
                             .ingest_batch = e->o.ingest_batch,
                             .stc = &e->o.stc};
    if ((st = svlm_engine_create(e->model, e->mmproj, &ep, &e->engine, err))) return st;
    if (e->o.kv_auto)
        e->sp.kv_type = svlm_kernels_is_gpu(svlm_engine_answer_kernels(e->engine)) ? SVLM_F32 : SVLM_F16;
    e->kv_bytes_per_token = (size_t)2 * hp->n_layer * hp->n_head_kv * hp->head_dim *
                            (e->sp.kv_type == SVLM_F16 ? 2 : sizeof(float));
    /* still images: their own kernels (one CPU thread, or the GPU of SVLM_BACKEND), so they never
     * touch the lanes' */
    if ((st = svlm_kernels_create_named(NULL, 1, &e->k_image, err))) return st;
    return svlm_vision_ctx_create(e->mmproj, e->k_image, 4, &e->image_vc, err);
}

svlm_status svlm_engine_backend_create(const svlm_engine_backend_opts *o, svlm_engine_backend **out,
                                       svlm_server_backend *iface, svlm_err *err) {
    *out = NULL;
    if (!o->text_path || !o->mmproj_path)
        return svlm_fail(err, SVLM_E_INVALID, "the engine needs both model files");
    if (o->max_streams < 1 || o->answer_threads < 0 || o->answer_threads > 1024 || o->decode_batch < 0 ||
        o->decode_batch > 1024 || o->ingest_batch < 0 || o->ingest_batch > 64 || o->frames_window < 1 ||
        o->text_window < 16 || o->max_answer_tokens < 1 || o->max_queued < 1 || o->sink_tokens < 16 ||
        o->frame_queue < 1 || o->memory_tokens < 1 || (o->memory && o->memory_budget < 4096) ||
        !(o->open_timeout_s > 0) || !(o->stall_timeout_s >= 0) ||
        (o->kv_type != SVLM_F32 && o->kv_type != SVLM_F16))
        return svlm_fail(err, SVLM_E_INVALID, "engine options out of range");
    if (o->memory_dir && strlen(o->memory_dir) >= 400)
        return svlm_fail(err, SVLM_E_INVALID, "the memory directory path is too long");
    eng *e = calloc(1, sizeof *e);
    if (!e) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    e->o = *o;
    const char *base = strrchr(o->text_path, '/');
    snprintf(e->model_label, sizeof e->model_label, "%s",
             o->model_label ? o->model_label
             : base         ? base + 1
                            : o->text_path);
    if (o->memory_dir) snprintf(e->memory_dir, sizeof e->memory_dir, "%s", o->memory_dir);
    pthread_mutex_init(&e->lock, NULL);
    pthread_cond_init(&e->cv, NULL);
    atomic_init(&e->shutdown, 0);
    pthread_mutex_init(&e->watch_lock, NULL);
    pthread_cond_init(&e->watch_cv, NULL);
    svlm_status st = load_models(e, err);
    e->o.text_path = e->o.mmproj_path = e->o.model_label = e->o.memory_dir =
        NULL; /* the caller's strings are not kept */
    if (!st) st = eng_images_start(e, err);
    if (!st) st = eng_watch_start_thread(e, err);
    if (st) {
        svlm_engine_backend_destroy(e);
        return st;
    }
    svlm_server_backend be = {
        e,       info,       open_stream, close_stream, list_streams, stream_status, latest_frame,
        eng_ask, eng_cancel, eng_watch,   eng_unwatch,  compute};
    *iface = be;
    *out = e;
    return SVLM_OK;
}

void svlm_engine_backend_destroy(svlm_engine_backend *e) {
    if (!e) return;
    eng_watch_stop_thread(e);
    /* the lanes first: they end after the frame they are on, and their questions as cancelled;
     * closed one by one while the lanes ran, each stream waited for a frame of its own (seconds
     * apiece on a CPU) */
    svlm_engine_stop(e->engine);
    /* close every stream: cancels its answers and waits for them */
    for (;;) {
        pthread_mutex_lock(&e->lock);
        eng_stream *s = e->streams;
        while (s && s->closing)
            s = s->next;
        char name[SVLM_BACKEND_NAME_MAX] = "";
        if (s) snprintf(name, sizeof name, "%s", s->name);
        pthread_mutex_unlock(&e->lock);
        if (!s) break;
        svlm_err err = {0};
        close_stream(e, name, &err);
    }
    eng_images_stop(e);
    svlm_engine_free(e->engine);
    while (e->watches) {
        eng_watcher *w = e->watches;
        e->watches = w->next;
        free(w->question);
        free(w->last_answer);
        free(w);
    }
    svlm_vision_ctx_free(e->image_vc);
    svlm_kernels_destroy(e->k_image);
    svlm_mmproj_free(e->mmproj);
    svlm_llama_free(e->model);
    pthread_cond_destroy(&e->watch_cv);
    pthread_mutex_destroy(&e->watch_lock);
    pthread_cond_destroy(&e->cv);
    pthread_mutex_destroy(&e->lock);
    free(e);
}
