/*
 * The hand-over from engine and worker threads to the service thread: callbacks copy what
 * they carry into an event, queue it under the lock and wake the loop with
 * lws_cancel_service(); the service thread drains the queue in LWS_CALLBACK_EVENT_WAIT_CANCELLED.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "pipeline/server/server_internal.h"

void srv_event_push(svlm_server *srv, srv_event *ev) {
    ev->next = NULL;
    pthread_mutex_lock(&srv->lock);
    if (srv->ev_tail)
        srv->ev_tail->next = ev;
    else
        srv->ev_head = ev;
    srv->ev_tail = ev;
    if (srv->alive) lws_cancel_service(srv->ctx);
    pthread_mutex_unlock(&srv->lock);
}

static srv_event *event_new(srv_event_kind kind, const char *text, size_t len) {
    srv_event *ev = calloc(1, sizeof *ev + len + 1);
    if (!ev) return NULL;
    ev->kind = kind;
    ev->len = len;
    if (len) memcpy(ev->text, text, len);
    return ev;
}

void srv_ask_on_token(void *user, const char *text, size_t len) {
    srv_ask_ticket *t = user;
    srv_event *ev = event_new(EV_TOKEN, text, len);
    if (!ev) return; /* out of memory: the token is lost, the answer's done still arrives */
    ev->ask = t->ask;
    srv_event_push(t->srv, ev);
}

void srv_ask_on_done(void *user, const svlm_backend_done *done) {
    srv_ask_ticket *t = user;
    svlm_server *srv = t->srv;
    srv_event *ev = event_new(EV_DONE, NULL, 0);
    /* The done event is the only way the ask is ever freed: without memory for it, spin
     * briefly rather than leak an ask that a client waits on forever. */
    while (!ev) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
        ev = event_new(EV_DONE, NULL, 0);
    }
    ev->ask = t->ask;
    ev->done = *done;
    free(t);
    srv_event_push(srv, ev);
    pthread_mutex_lock(&srv->lock);
    srv->outstanding_asks--;
    pthread_cond_broadcast(&srv->cond);
    pthread_mutex_unlock(&srv->lock);
}

/* user is the srv_watch: it outlives every alert callback (unwatch waits for them). */
void srv_watch_alert(void *user, const svlm_backend_alert *alert) {
    srv_watch *w = user;
    const char *answer = alert->answer ? alert->answer : "";
    srv_event *ev = event_new(EV_ALERT, answer, strlen(answer));
    if (!ev) return;
    ev->serial = w->serial;
    ev->video_time = alert->video_time;
    ev->wall = alert->wall;
    srv_event_push(w->srv, ev);
}

/* "Too long" (SVLM_E_TOO_LONG) gets its own code, apart from "busy" (SVLM_E_LIMIT): retrying it
 * is useless, and a 429 or server_busy invites a retry. */
const char *srv_fail_code(const svlm_backend_done *d, int had_images) {
    if (d->status == SVLM_E_TOO_LONG) return "question_too_long";
    /* a still image the engine cannot read: its decoder's errors start "image" (engine_image.c) */
    if (had_images && !strncmp(d->error, "image", 5) && d->status != SVLM_E_NOMEM &&
        d->status != SVLM_E_DEVICE)
        return "invalid_image";
    return "answer_failed";
}

srv_ask *srv_ask_start(svlm_server *srv, srv_conn *conn, const svlm_backend_ask_req *req, const char *req_id,
                       const char **code, svlm_err *err) {
    if (atomic_load(&srv->stop)) { /* a body read in the shutdown's grace: the backend is about to go */
        *code = "server_stopping";
        svlm_fail(err, SVLM_E_CANCELLED, "the server is stopping");
        return NULL;
    }
    srv_ask *a = calloc(1, sizeof *a);
    srv_ask_ticket *t = calloc(1, sizeof *t);
    if (!a || !t) {
        free(a);
        free(t);
        *code = "server_busy";
        svlm_fail(err, SVLM_E_NOMEM, "out of memory");
        return NULL;
    }
    a->conn = conn;
    snprintf(a->req_id, sizeof a->req_id, "%s", req_id);
    snprintf(a->stream, sizeof a->stream, "%s", req->stream ? req->stream : "");
    a->t_asked = srv_now();
    a->max_tokens = req->max_tokens;
    t->srv = srv;
    t->ask = a;
    svlm_backend_ask_cb cb = {srv_ask_on_token, srv_ask_on_done, t};
    pthread_mutex_lock(&srv->lock);
    srv->outstanding_asks++;
    pthread_mutex_unlock(&srv->lock);
    svlm_status st = srv->be.ask(srv->be.ctx, req, &cb, &a->backend_id, err);
    if (st != SVLM_OK) {
        pthread_mutex_lock(&srv->lock);
        srv->outstanding_asks--;
        pthread_mutex_unlock(&srv->lock);
        free(t);
        free(a);
        *code = st == SVLM_E_TOO_LONG      ? "question_too_long"
                : st == SVLM_E_LIMIT       ? "server_busy"
                : st == SVLM_E_UNSUPPORTED ? "engine_unavailable"
                : st == SVLM_E_INVALID     ? "bad_request"
                                           : "backend_error";
        return NULL;
    }
    a->started = 1;
    a->next = srv->asks;
    srv->asks = a;
    srv->n_asks++;
    if (conn && conn->kind == CONN_WS) conn->n_asks++;
    return a;
}

void srv_ask_cancel(svlm_server *srv, srv_ask *ask) {
    if (ask->started) srv->be.cancel(srv->be.ctx, ask->backend_id);
}

static void ask_append(srv_ask *a, const char *text, size_t len) {
    if (a->text_len + len + 1 > a->text_cap) {
        size_t cap = a->text_cap ? a->text_cap : 256;
        while (cap < a->text_len + len + 1)
            cap *= 2;
        char *p = realloc(a->text, cap);
        if (!p) return;
        a->text = p;
        a->text_cap = cap;
    }
    memcpy(a->text + a->text_len, text, len);
    a->text_len += len;
    a->text[a->text_len] = 0;
}

static void ask_free(svlm_server *srv, srv_ask *a) {
    for (srv_ask **pp = &srv->asks; *pp; pp = &(*pp)->next)
        if (*pp == a) {
            *pp = a->next;
            srv->n_asks--;
            break;
        }
    free(a->text);
    free(a);
}

static json_t *id_json(const char *req_id) {
    json_t *id = req_id[0] ? json_loads(req_id, JSON_DECODE_ANY, NULL) : NULL;
    return id ? id : json_null();
}

json_t *srv_reply(const char *type, const char *req_id) {
    json_t *o = json_object();
    json_object_set_new(o, "type", json_string(type));
    if (req_id && req_id[0]) json_object_set_new(o, "id", id_json(req_id));
    return o;
}

static void on_token(svlm_server *srv, srv_event *ev) {
    srv_ask *a = ev->ask;
    if (a->n_tokens == 0) {
        a->t_first = srv_now();
        srv_hist_add(&srv->metrics.ttft_s, a->t_first - a->t_asked);
    }
    a->n_tokens++;
    srv->metrics.answer_tokens++;
    if (a->stopped) return; /* a stop string ended the text: what the cancel did not stop in time */
    ask_append(a, ev->text, ev->len);
    srv_conn *c = a->conn;
    if (!c) return;
    if (c->kind == CONN_WS) {
        json_t *m = srv_reply("token", a->req_id);
        json_object_set_new(m, "text", json_stringn(ev->text, ev->len));
        srv_ws_send_json(srv, c, m);
    } else if (ev->len) {
        srv_openai_token(srv, c, a);
    }
}

static void on_done(svlm_server *srv, srv_event *ev) {
    srv_ask *a = ev->ask;
    const svlm_backend_done *d = &ev->done;
    double now = srv_now();
    if (d->cancelled && !a->stopped)
        srv->metrics.questions_cancelled++;
    else if (d->status != SVLM_OK)
        srv->metrics.questions_failed++;
    else
        srv->metrics.questions_ok++;
    double tps =
        d->decode_ms > 0 && d->completion_tokens > 1 ? (d->completion_tokens - 1) * 1000.0 / d->decode_ms : 0;
    if (tps > 0) srv_hist_add(&srv->metrics.tokens_per_s, tps);
    srv_hist_add(&srv->metrics.queue_wait_s, d->queue_wait_ms / 1000.0);
    srv_conn *c = a->conn;
    if (c && c->kind == CONN_WS) {
        c->n_asks--;
        if (d->status != SVLM_OK && !d->cancelled) {
            srv_ws_error(srv, c, a->req_id, srv_fail_code(d, 0), "%s",
                         d->error[0] ? d->error : svlm_status_str(d->status));
        } else {
            /* why it ended: a token limit (the asked max_tokens, or the engine's own, which it
             * reports), the model's end, or a cancel */
            const int limit =
                d->max_tokens > 0 && d->max_tokens < a->max_tokens ? d->max_tokens : a->max_tokens;
            json_t *m = srv_reply("done", a->req_id);
            json_object_set_new(m, "stream", json_string(a->stream));
            json_object_set_new(m, "text", json_stringn(a->text ? a->text : "", a->text_len));
            json_object_set_new(m, "cancelled", json_boolean(d->cancelled));
            json_object_set_new(m, "finish_reason",
                                json_string(d->cancelled                    ? "cancelled"
                                            : d->completion_tokens >= limit ? "length"
                                                                            : "stop"));
            json_object_set_new(
                m, "tokens",
                json_pack("{s:i, s:i}", "prompt", d->prompt_tokens, "completion", d->completion_tokens));
            if (d->n_memory > 0) { /* which past the answer drew on: a client can show or check it */
                json_t *spans = json_array();
                for (int i = 0; i < d->n_memory && i < (int)(sizeof d->memory / sizeof d->memory[0]); i++)
                    json_array_append_new(
                        spans, json_pack("{s:f, s:f, s:s}", "from", round(d->memory[i].t0 * 1e3) / 1e3, "to",
                                         round(d->memory[i].t1 * 1e3) / 1e3, "tier", d->memory[i].tier));
                json_object_set_new(
                    m, "memory",
                    json_pack("{s:b, s:o}", "time_anchored", d->memory_time_anchored, "spans", spans));
            }
            json_object_set_new(m, "timings",
                                json_pack("{s:f, s:f, s:f, s:f, s:f}", "queue_wait_ms", d->queue_wait_ms,
                                          "ttft_ms", d->ttft_ms, "client_ttft_ms",
                                          a->n_tokens ? (a->t_first - a->t_asked) * 1000.0 : 0.0,
                                          "tokens_per_s", tps, "total_ms", (now - a->t_asked) * 1000.0));
            json_object_set_new(m, "frames_during", json_integer(d->frames_during));
            srv_ws_send_json(srv, c, m);
        }
    } else if (c && c->kind == CONN_HTTP) {
        srv_openai_done(c, a, d);
        c->ask = NULL;
    }
    ask_free(srv, a);
}

static void on_alert(svlm_server *srv, srv_event *ev) {
    srv_watch *w = srv->watches;
    while (w && w->serial != ev->serial)
        w = w->next;
    if (!w || !w->conn) return; /* unwatched since: dropped */
    srv->metrics.alerts++;
    json_t *m = srv_reply("alert", w->req_id);
    json_object_set_new(m, "stream", json_string(w->stream));
    json_object_set_new(m, "answer", json_stringn(ev->text, ev->len));
    json_object_set_new(m, "video_time", json_real(ev->video_time));
    json_object_set_new(m, "wall", json_real(ev->wall));
    srv_ws_send_json(srv, w->conn, m);
}

/* A closed stream's watches end with it (they outlived it, held their clients' watch slots, and
 * fired again on a new stream of the same name): each owner is told, with the reason. None can
 * have started since the close began (srv_closing_find). */
static void end_watches_of(svlm_server *srv, const char *stream) {
    for (srv_watch **pp = &srv->watches; *pp;) {
        srv_watch *w = *pp;
        if (strcmp(w->stream, stream)) {
            pp = &w->next;
            continue;
        }
        srv->be.unwatch(srv->be.ctx, w->backend_id);
        *pp = w->next;
        if (w->conn) {
            w->conn->n_watches--;
            json_t *m = srv_reply("unwatched", w->req_id);
            json_object_set_new(m, "reason", json_string("stream_closed"));
            srv_ws_send_json(srv, w->conn, m);
        }
        free(w);
    }
}

static void on_job(svlm_server *srv, srv_event *ev) {
    if (!strcmp(ev->job_type, "opened")) srv->pending_opens--;
    if (!strcmp(ev->job_type, "closed")) {
        if (ev->status == SVLM_OK) end_watches_of(srv, ev->stream);
        srv_closing_end(srv, ev->stream);
    }
    srv_conn *c = srv_find_conn(srv, ev->serial);
    if (!c) return;
    if (ev->status != SVLM_OK) {
        /* (two opens of one name at once both pass the server's check: the backend tells) */
        const char *code = strcmp(ev->job_type, "opened") ? "unknown_stream"
                           : ev->status == SVLM_E_LIMIT   ? "too_many_streams"
                           : ev->status == SVLM_E_EXISTS  ? "stream_exists"
                                                          : "open_failed";
        srv_ws_error(srv, c, ev->req_id, code, "%s", ev->error);
        return;
    }
    json_t *m = srv_reply(ev->job_type, ev->req_id);
    json_object_set_new(m, "stream", json_string(ev->stream));
    srv_ws_send_json(srv, c, m);
}

void srv_events_drain(svlm_server *srv) {
    pthread_mutex_lock(&srv->lock);
    srv_event *ev = srv->ev_head;
    srv->ev_head = srv->ev_tail = NULL;
    pthread_mutex_unlock(&srv->lock);
    while (ev) {
        srv_event *next = ev->next;
        switch (ev->kind) {
        case EV_TOKEN: on_token(srv, ev); break;
        case EV_DONE: on_done(srv, ev); break;
        case EV_ALERT: on_alert(srv, ev); break;
        case EV_JOB: on_job(srv, ev); break;
        }
        free(ev);
        ev = next;
    }
}

/* ---- open/close on a worker thread ---- */

typedef struct job {
    svlm_server *srv;
    uint64_t serial;
    char type[16];
    char req_id[SRV_ID_MAX];
    char stream[SVLM_BACKEND_NAME_MAX];
    char *uri, *options;
    double fps;
} job;

static void *job_main(void *arg) {
    job *j = arg;
    svlm_server *srv = j->srv;
    svlm_err err = {0};
    svlm_status st;
    if (!strcmp(j->type, "open")) {
        svlm_backend_open_req req = {j->stream, j->uri, j->fps, j->options};
        st = srv->be.open_stream(srv->be.ctx, &req, &err);
    } else {
        st = srv->be.close_stream(srv->be.ctx, j->stream, &err);
    }
    srv_event *ev = event_new(EV_JOB, NULL, 0);
    if (ev) {
        ev->serial = j->serial;
        ev->status = st;
        snprintf(ev->job_type, sizeof ev->job_type, "%s", !strcmp(j->type, "open") ? "opened" : "closed");
        snprintf(ev->req_id, sizeof ev->req_id, "%s", j->req_id);
        snprintf(ev->stream, sizeof ev->stream, "%s", j->stream);
        snprintf(ev->error, sizeof ev->error, "%s", err.msg);
        srv_event_push(srv, ev);
    }
    free(j->uri);
    free(j->options);
    free(j);
    pthread_mutex_lock(&srv->lock);
    srv->jobs--;
    pthread_cond_broadcast(&srv->cond);
    pthread_mutex_unlock(&srv->lock);
    return NULL;
}

int srv_closing_find(const svlm_server *srv, const char *stream) {
    for (const struct srv_closing *k = srv->closing_streams; k; k = k->next)
        if (!strcmp(k->name, stream)) return 1;
    return 0;
}

/* One entry per close job (two closes of a name each add one: the first to end leaves the other). */
static int closing_begin(svlm_server *srv, const char *stream) {
    struct srv_closing *k = calloc(1, sizeof *k);
    if (!k) return -1;
    snprintf(k->name, sizeof k->name, "%s", stream);
    k->next = srv->closing_streams;
    srv->closing_streams = k;
    return 0;
}

void srv_closing_end(svlm_server *srv, const char *stream) {
    for (struct srv_closing **pp = &srv->closing_streams; *pp; pp = &(*pp)->next)
        if (!strcmp((*pp)->name, stream)) {
            struct srv_closing *k = *pp;
            *pp = k->next;
            free(k);
            return;
        }
}

int srv_job_start(svlm_server *srv, srv_conn *conn, const char *type, const char *req_id, const char *stream,
                  const char *uri, double fps, const char *options) {
    job *j = calloc(1, sizeof *j);
    if (!j) return -1;
    j->srv = srv;
    j->serial = conn->serial;
    snprintf(j->type, sizeof j->type, "%s", type);
    snprintf(j->req_id, sizeof j->req_id, "%s", req_id);
    snprintf(j->stream, sizeof j->stream, "%s", stream);
    if (!strcmp(type, "close") && closing_begin(srv, stream)) {
        free(j);
        return -1;
    }
    j->uri = uri ? strdup(uri) : NULL;
    j->options = options ? strdup(options) : NULL;
    j->fps = fps;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_mutex_lock(&srv->lock);
    srv->jobs++;
    pthread_mutex_unlock(&srv->lock);
    pthread_t th;
    int rc = pthread_create(&th, &attr, job_main, j);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        if (!strcmp(type, "close")) srv_closing_end(srv, stream);
        pthread_mutex_lock(&srv->lock);
        srv->jobs--;
        pthread_mutex_unlock(&srv->lock);
        free(j->uri);
        free(j->options);
        free(j);
        return -1;
    }
    return 0;
}
