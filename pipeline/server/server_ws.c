/* The websocket JSON protocol (docs/protocol.md): message assembly, limits, dispatch. */
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "pipeline/server/server_internal.h"
#include "pipeline/source_backend.h"

#define QUESTION_MAX_BYTES 8192
#define URI_MAX_BYTES      1024

void srv_ws_send_json(svlm_server *srv, srv_conn *c, json_t *msg) {
    char *text = json_dumps(msg, JSON_COMPACT);
    json_decref(msg);
    if (!text || c->kill) {
        free(text);
        return;
    }
    srv_msg *m = srv_msg_new(text, strlen(text));
    free(text);
    if (!m) return;
    srv_queue_push(&c->out, m);
    if (c->out.bytes > srv->cfg.max_send_queue_bytes) {
        /* A reader this far behind would hold memory without bound: let it go. */
        srv->metrics.slow_reader_disconnects++;
        lwsl_user("svlm: client %llu fell %zu bytes behind; disconnecting\n", (unsigned long long)c->serial,
                  c->out.bytes);
        srv_queue_clear(&c->out);
        c->kill = 1;
        /* now: the close in srv_ws_writeable would wait for a window a reader that does not read
         * never opens, keeping its slot and the socket's buffers */
        lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, LWS_TO_KILL_ASYNC);
        return;
    }
    lws_callback_on_writable(c->wsi);
}

void srv_ws_error(svlm_server *srv, srv_conn *c, const char *req_id, const char *code, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    srv_utf8_fix(msg); /* the engine's messages quote URIs and keys, cut at a byte limit */
    srv->metrics.ws_errors++;
    json_t *m = srv_reply("error", req_id);
    json_object_set_new(m, "code", json_string(code));
    json_object_set_new(m, "message", json_string(msg));
    srv_ws_send_json(srv, c, m);
}

srv_conn *srv_find_conn(svlm_server *srv, uint64_t serial) {
    for (srv_conn *c = srv->clients; c; c = c->next)
        if (c->serial == serial) return c;
    return NULL;
}

int srv_ws_established(svlm_server *srv, srv_conn *c) {
    c->kind = CONN_WS;
    c->serial = ++srv->next_serial;
    c->authed = !srv->cfg.token[0] || c->token_ok;
    c->status_interval = srv->cfg.status_interval_s;
    c->next_status = srv_now() + c->status_interval;
    c->bucket = 2 * srv->cfg.max_messages_per_s;
    c->bucket_t = srv_now();
    c->next = srv->clients;
    if (srv->clients) srv->clients->prev = c;
    srv->clients = c;
    if (srv->n_clients >= srv->cfg.max_clients) {
        srv->metrics.clients_refused++;
        srv_ws_error(srv, c, "", "too_many_clients", "the server has %d clients, its limit", srv->n_clients);
        c->closing = 1;
        c->authed = 0;
        c->kind = CONN_NONE; /* not counted; only its error goes out */
        return 0;
    }
    srv->n_clients++;
    srv->metrics.clients_total++;
    /* a client slot is taken before the hello that authenticates it: one that stays silent goes,
     * told why (srv_ws_tick); the library's timeout, a little later, closes one that reads nothing */
    if (!c->authed) {
        c->auth_deadline = srv_now() + srv->cfg.auth_timeout_s;
        lws_set_timeout(c->wsi, PENDING_TIMEOUT_USER_OK, (int)srv->cfg.auth_timeout_s + 5);
    }
    return 0;
}

void srv_ws_closed(svlm_server *srv, srv_conn *c) {
    if (c->kind == CONN_WS) srv->n_clients--;
    for (srv_ask *a = srv->asks; a; a = a->next)
        if (a->conn == c) {
            a->conn = NULL; /* its done event frees it */
            srv_ask_cancel(srv, a);
        }
    for (srv_watch **pp = &srv->watches; *pp;) {
        srv_watch *w = *pp;
        if (w->conn == c) {
            srv->be.unwatch(srv->be.ctx, w->backend_id);
            *pp = w->next;
            free(w);
        } else {
            pp = &w->next;
        }
    }
    if (c->prev)
        c->prev->next = c->next;
    else if (srv->clients == c)
        srv->clients = c->next;
    if (c->next) c->next->prev = c->prev;
    c->next = c->prev = NULL;
    free(c->rx);
    c->rx = NULL;
    srv_queue_clear(&c->out);
    c->kind = CONN_NONE;
}

int srv_ws_writeable(svlm_server *srv, srv_conn *c) {
    (void)srv;
    if (c->kill) return -1;
    srv_msg *m = srv_queue_pop(&c->out);
    if (m) {
        int n = lws_write(c->wsi, m->buf + LWS_PRE, m->len, LWS_WRITE_TEXT);
        free(m);
        if (n < 0) return -1;
    }
    if (c->out.head)
        lws_callback_on_writable(c->wsi);
    else if (c->closing) {
        lws_close_reason(c->wsi,
                         c->closing == 2 ? LWS_CLOSE_STATUS_GOINGAWAY : LWS_CLOSE_STATUS_POLICY_VIOLATION,
                         NULL, 0);
        return -1;
    }
    return 0;
}

/* ---- field access: each returns 0, or sends an error and returns -1 ---- */

typedef struct req_ctx {
    svlm_server *srv;
    srv_conn *c;
    json_t *msg;
    const char *type;
    char id[SRV_ID_MAX];
} req_ctx;

static int bad(req_ctx *r, const char *code, const char *fmt, const char *field) {
    srv_ws_error(r->srv, r->c, r->id, code, fmt, field);
    return -1;
}

static int get_string(req_ctx *r, const char *key, int required, size_t max_len, const char **out) {
    json_t *v = json_object_get(r->msg, key);
    *out = NULL;
    if (!v || json_is_null(v)) return required ? bad(r, "bad_message", "missing field '%s'", key) : 0;
    if (!json_is_string(v)) return bad(r, "bad_message", "field '%s' must be a string", key);
    if (json_string_length(v) > max_len) return bad(r, "bad_message", "field '%s' is too long", key);
    if (strlen(json_string_value(v)) != json_string_length(v))
        return bad(r, "bad_message", "field '%s' contains a NUL character", key);
    *out = json_string_value(v);
    return 0;
}

static int get_number(req_ctx *r, const char *key, double lo, double hi, double def, double *out) {
    json_t *v = json_object_get(r->msg, key);
    *out = def;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) return bad(r, "bad_message", "field '%s' must be a number", key);
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi) {
        char m[160];
        snprintf(m, sizeof m, "field '%%s' must be between %g and %g", lo, hi);
        return bad(r, "bad_message", m, key);
    }
    *out = x;
    return 0;
}

static int get_int(req_ctx *r, const char *key, long lo, long hi, long def, long *out) {
    json_t *v = json_object_get(r->msg, key);
    *out = def;
    if (!v || json_is_null(v)) return 0;
    if (!json_is_integer(v)) return bad(r, "bad_message", "field '%s' must be an integer", key);
    json_int_t x = json_integer_value(v);
    if (x < lo || x > hi) {
        char m[160];
        snprintf(m, sizeof m, "field '%%s' must be between %ld and %ld", lo, hi);
        return bad(r, "bad_message", m, key);
    }
    *out = (long)x;
    return 0;
}

static int get_stream(req_ctx *r, const char **name, int must_exist) {
    if (get_string(r, "stream", 1, SVLM_BACKEND_NAME_MAX, name)) return -1;
    if (!srv_stream_name_ok(*name))
        return bad(r, "bad_message", "field '%s' must be 1-63 characters of A-Z a-z 0-9 _ . -", "stream");
    if (must_exist) {
        svlm_backend_stream_status st;
        svlm_err err = {0};
        if (r->srv->be.stream_status(r->srv->be.ctx, *name, &st, &err) != SVLM_OK)
            return bad(r, "unknown_stream", "no stream named '%s'", *name);
    }
    return 0;
}

static int need_id(req_ctx *r) {
    if (!r->id[0]) return bad(r, "bad_message", "'%s' needs an id", r->type);
    return 0;
}

/* ---- requests ---- */

static void do_hello(req_ctx *r) {
    svlm_server *srv = r->srv;
    long version;
    const char *token;
    double interval;
    if (get_int(r, "version", 0, 1000000, SRV_PROTOCOL_VERSION, &version) ||
        get_string(r, "token", 0, 300, &token) ||
        get_number(r, "status_interval", 0, 3600, r->c->status_interval, &interval))
        return;
    if (version != SRV_PROTOCOL_VERSION) {
        srv_ws_error(srv, r->c, r->id, "unsupported_version", "this server speaks protocol version %d",
                     SRV_PROTOCOL_VERSION);
        return;
    }
    if (srv->cfg.token[0] && !r->c->authed) {
        if (!token || !svlm_token_equal(srv->cfg.token, token, strlen(token))) {
            srv_ws_error(srv, r->c, r->id, "unauthorized",
                         token ? "wrong token" : "this server needs a token");
            r->c->closing = 1;
            return;
        }
        r->c->authed = 1;
        lws_set_timeout(r->c->wsi, NO_PENDING_TIMEOUT, 0);
    }
    r->c->status_interval = interval;
    r->c->next_status = srv_now() + interval;
    const svlm_server_config *cfg = &srv->cfg;
    json_t *m = srv_reply("hello", r->id);
    json_object_set_new(m, "version", json_integer(SRV_PROTOCOL_VERSION));
    json_object_set_new(m, "server", json_string("svlm " SVLM_VERSION_STRING));
    json_object_set_new(m, "model", json_string(srv->info.model));
    json_object_set_new(m, "stand_in", json_boolean(srv->info.stand_in));
    json_object_set_new(
        m, "limits",
        json_pack("{s:I, s:f, s:i, s:i, s:i, s:i, s:i, s:I}", "max_message_bytes",
                  (json_int_t)cfg->max_message_bytes, "max_messages_per_s", cfg->max_messages_per_s,
                  "max_questions_per_client", cfg->max_questions_per_client, "max_questions_total",
                  cfg->max_questions_total, "max_watches_per_client", cfg->max_watches_per_client,
                  "max_streams", cfg->max_streams, "max_clients", cfg->max_clients, "max_send_queue_bytes",
                  (json_int_t)cfg->max_send_queue_bytes));
    srv_ws_send_json(srv, r->c, m);
}

/* /dev/videoN: a camera (a v4l2 path elsewhere tells whether a file exists, or opens any device) */
static int is_video_device(const char *path) {
    const size_t n = strlen("/dev/video");
    return !strncmp(path, "/dev/video", n) && path[n] && strspn(path + n, "0123456789") == strlen(path + n);
}

static void do_open(req_ctx *r) {
    svlm_server *srv = r->srv;
    const char *name, *uri;
    double fps;
    if (get_stream(r, &name, 0) || get_string(r, "uri", 1, URI_MAX_BYTES, &uri) ||
        get_number(r, "fps", 0, 120, 0, &fps))
        return;
    json_t *opts = json_object_get(r->msg, "options");
    if (opts && !json_is_object(opts) && !json_is_null(opts)) {
        bad(r, "bad_message", "field '%s' must be an object", "options");
        return;
    }
    /* A gst: pipeline can write files, and a path reads any file the server's user can: on a
     * server without a token anyone on this machine may connect (loopback is every local user's),
     * so those come only from the operator (--source), a token holder, or with --allow-local-open. */
    svlm_uri parsed;
    svlm_err uerr = {0};
    if (!srv->cfg.token[0] && !srv->cfg.local_open && svlm_uri_parse(uri, &parsed, &uerr) == SVLM_OK &&
        (parsed.kind == SVLM_URI_GST || parsed.kind == SVLM_URI_FILE ||
         (parsed.kind == SVLM_URI_V4L2 && !is_video_device(parsed.target)))) {
        srv_ws_error(srv, r->c, r->id, "not_allowed",
                     "this server has no token, so clients may not open %s (anyone on this machine can "
                     "connect): give it with --source at start, or start the server with --token-file or "
                     "--allow-local-open",
                     parsed.kind == SVLM_URI_GST    ? "gst: pipelines"
                     : parsed.kind == SVLM_URI_FILE ? "local files (a webcam: v4l2:///dev/videoN)"
                                                    : "devices other than /dev/videoN");
        return;
    }
    svlm_backend_stream_status st;
    svlm_err err = {0};
    if (srv->be.stream_status(srv->be.ctx, name, &st, &err) == SVLM_OK) {
        bad(r, "stream_exists", "a stream named '%s' is open already", name);
        return;
    }
    int n = srv->be.list_streams(srv->be.ctx, NULL, 0);
    if (n + srv->pending_opens >= srv->cfg.max_streams) {
        srv_ws_error(srv, r->c, r->id, "too_many_streams", "the server has %d streams, its limit", n);
        return;
    }
    char *opt_text = opts && json_is_object(opts) ? json_dumps(opts, JSON_COMPACT) : NULL;
    if (srv_job_start(srv, r->c, "open", r->id, name, uri, fps, opt_text) == 0)
        srv->pending_opens++;
    else
        srv_ws_error(srv, r->c, r->id, "server_busy", "could not start the open");
    free(opt_text);
}

static void do_close(req_ctx *r) {
    const char *name;
    if (get_stream(r, &name, 1)) return;
    if (srv_job_start(r->srv, r->c, "close", r->id, name, NULL, 0, NULL))
        srv_ws_error(r->srv, r->c, r->id, "server_busy", "could not start the close");
}

static json_t *streams_json(svlm_server *srv, const char *only) {
    json_t *arr = json_array();
    int cap = srv->cfg.max_streams + 8;
    svlm_backend_stream_status *st = calloc((size_t)cap, sizeof *st);
    if (!st) return arr;
    int n = srv->be.list_streams(srv->be.ctx, st, cap);
    for (int i = 0; i < n && i < cap; i++)
        if (!only || !strcmp(only, st[i].name)) json_array_append_new(arr, srv_status_json(&st[i]));
    free(st);
    return arr;
}

static void do_list(req_ctx *r) {
    json_t *m = srv_reply("streams", r->id);
    json_object_set_new(m, "streams", streams_json(r->srv, NULL));
    srv_ws_send_json(r->srv, r->c, m);
}

static void do_status(req_ctx *r) {
    const char *name = NULL;
    json_t *one = json_object_get(r->msg, "stream"); /* null: every stream, as when left out */
    if (one && !json_is_null(one) && get_stream(r, &name, 1)) return;
    json_t *m = srv_reply("status", r->id);
    json_object_set_new(m, "streams", streams_json(r->srv, name));
    srv_ws_send_json(r->srv, r->c, m);
}

static srv_ask *find_ask(svlm_server *srv, srv_conn *c, const char *id) {
    for (srv_ask *a = srv->asks; a; a = a->next)
        if (a->conn == c && !strcmp(a->req_id, id)) return a;
    return NULL;
}

static srv_watch *find_watch(svlm_server *srv, srv_conn *c, const char *id) {
    for (srv_watch *w = srv->watches; w; w = w->next)
        if (w->conn == c && !strcmp(w->req_id, id)) return w;
    return NULL;
}

static void do_ask(req_ctx *r) {
    svlm_server *srv = r->srv;
    const char *stream, *question;
    long max_tokens, seed;
    double temperature, top_p;
    if (need_id(r) || get_string(r, "question", 1, QUESTION_MAX_BYTES, &question) ||
        get_int(r, "max_tokens", 1, 4096, 256, &max_tokens) ||
        get_number(r, "temperature", 0, 2, 0, &temperature) || get_number(r, "top_p", 0, 1, 1, &top_p) ||
        get_int(r, "seed", 0, LONG_MAX, -1, &seed) || get_stream(r, &stream, 1))
        return;
    if (!question[0]) {
        bad(r, "bad_message", "field '%s' is empty", "question");
        return;
    }
    if (find_ask(srv, r->c, r->id) || find_watch(srv, r->c, r->id)) {
        bad(r, "duplicate_id", "id %s is in use by a request still running", r->id);
        return;
    }
    if (r->c->n_asks >= srv->cfg.max_questions_per_client) {
        srv_ws_error(srv, r->c, r->id, "too_many_questions", "at most %d questions at once per client",
                     srv->cfg.max_questions_per_client);
        return;
    }
    if (srv->n_asks >= srv->cfg.max_questions_total) {
        srv_ws_error(srv, r->c, r->id, "server_busy", "the server is answering %d questions, its limit",
                     srv->n_asks);
        return;
    }
    svlm_backend_ask_req req = {.stream = stream,
                                .question = question,
                                .max_tokens = (int)max_tokens,
                                .temperature = (float)temperature,
                                .top_p = (float)top_p,
                                .has_seed = seed >= 0,
                                .seed = seed >= 0 ? (uint64_t)seed : 0};
    const char *code = NULL;
    svlm_err err = {0};
    if (!srv_ask_start(srv, r->c, &req, r->id, &code, &err))
        srv_ws_error(srv, r->c, r->id, code, "%s", err.msg);
}

static void do_cancel(req_ctx *r) {
    if (need_id(r)) return;
    srv_ask *a = find_ask(r->srv, r->c, r->id);
    if (!a) {
        bad(r, "unknown_id", "no question with id %s is running", r->id);
        return;
    }
    srv_ask_cancel(r->srv, a); /* its done (cancelled: true) is the reply */
}

static void do_watch(req_ctx *r) {
    svlm_server *srv = r->srv;
    const char *stream, *question, *condition;
    double interval;
    long max_tokens;
    if (need_id(r) || get_string(r, "question", 1, QUESTION_MAX_BYTES, &question) ||
        get_string(r, "condition", 0, 16, &condition) ||
        get_number(r, "interval", 0.1, 86400, 5, &interval) ||
        get_int(r, "max_tokens", 1, 1024, 32, &max_tokens) || get_stream(r, &stream, 1))
        return;
    if (!condition) condition = "change";
    if (strcmp(condition, "true") && strcmp(condition, "change")) {
        bad(r, "bad_message", "field '%s' must be \"true\" or \"change\"", "condition");
        return;
    }
    if (find_ask(srv, r->c, r->id) || find_watch(srv, r->c, r->id)) {
        bad(r, "duplicate_id", "id %s is in use by a request still running", r->id);
        return;
    }
    if (srv_closing_find(srv, stream)) {
        srv_ws_error(srv, r->c, r->id, "unknown_stream", "stream '%s' is closing", stream);
        return;
    }
    if (r->c->n_watches >= srv->cfg.max_watches_per_client) {
        srv_ws_error(srv, r->c, r->id, "too_many_watches", "at most %d watches per client",
                     srv->cfg.max_watches_per_client);
        return;
    }
    srv_watch *w = calloc(1, sizeof *w);
    if (!w) {
        srv_ws_error(srv, r->c, r->id, "server_busy", "out of memory");
        return;
    }
    w->srv = srv;
    w->serial = ++srv->next_serial;
    w->conn = r->c;
    snprintf(w->req_id, sizeof w->req_id, "%s", r->id);
    snprintf(w->stream, sizeof w->stream, "%s", stream);
    svlm_backend_watch_req req = {stream, question, condition, interval, (int)max_tokens};
    svlm_backend_watch_cb cb = {srv_watch_alert, w};
    svlm_err err = {0};
    svlm_status st = srv->be.watch(srv->be.ctx, &req, &cb, &w->backend_id, &err);
    if (st != SVLM_OK) {
        free(w);
        srv_ws_error(srv, r->c, r->id,
                     st == SVLM_E_UNSUPPORTED ? "engine_unavailable"
                     : st == SVLM_E_TOO_LONG  ? "question_too_long"
                     : st == SVLM_E_INVALID   ? "unknown_stream" /* (its other fields were checked here) */
                                              : "backend_error",
                     "%s", err.msg);
        return;
    }
    w->next = srv->watches;
    srv->watches = w;
    r->c->n_watches++;
    json_t *m = srv_reply("watching", r->id);
    json_object_set_new(m, "stream", json_string(stream));
    srv_ws_send_json(srv, r->c, m);
}

static void do_unwatch(req_ctx *r) {
    if (need_id(r)) return;
    for (srv_watch **pp = &r->srv->watches; *pp; pp = &(*pp)->next) {
        srv_watch *w = *pp;
        if (w->conn == r->c && !strcmp(w->req_id, r->id)) {
            r->srv->be.unwatch(r->srv->be.ctx, w->backend_id);
            *pp = w->next;
            free(w);
            r->c->n_watches--;
            srv_ws_send_json(r->srv, r->c, srv_reply("unwatched", r->id));
            return;
        }
    }
    bad(r, "unknown_id", "no watch with id %s", r->id);
}

static const struct {
    const char *type;
    void (*fn)(req_ctx *);
} handlers[] = {
    {"hello", do_hello},   {"open", do_open},     {"close", do_close},
    {"list", do_list},     {"status", do_status}, {"ask", do_ask},
    {"cancel", do_cancel}, {"watch", do_watch},   {"unwatch", do_unwatch},
};

static int take_token(svlm_server *srv, srv_conn *c) {
    double now = srv_now(), rate = srv->cfg.max_messages_per_s;
    c->bucket = fmin(2 * rate, c->bucket + (now - c->bucket_t) * rate);
    c->bucket_t = now;
    if (c->bucket < 1) return 0;
    c->bucket -= 1;
    return 1;
}

/* A message's "id" as the JSON text replies echo (out[SRV_ID_MAX], "" when absent or null).
 * Returns 0, or -1 with why (why[why_cap]) the id is refused, or -2 out of memory. */
static int read_id(const json_t *msg, char *out, char *why, size_t why_cap) {
    out[0] = 0;
    json_t *id = json_object_get(msg, "id");
    if (!id || json_is_null(id)) return 0;
    if (!json_is_string(id) && !json_is_integer(id))
        return snprintf(why, why_cap, "field 'id' must be a string or an integer"), -1;
    if (json_is_string(id) && json_string_length(id) > 100)
        return snprintf(why, why_cap, "field 'id' is longer than 100 bytes"), -1;
    char *s = json_dumps(id, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!s) return -2;
    /* replies echo the id as this text: cut short, it would no longer parse, and two ids with the
     * same beginning would collide (control characters take 6 bytes each once escaped) */
    const size_t n = strlen(s);
    if (n < SRV_ID_MAX) memcpy(out, s, n + 1);
    free(s);
    if (n >= SRV_ID_MAX)
        return snprintf(why, why_cap, "field 'id' is longer than %d bytes once written as JSON",
                        SRV_ID_MAX - 1),
               -1;
    return 0;
}

static void handle(svlm_server *srv, srv_conn *c, const char *text, size_t len) {
    req_ctx r = {srv, c, NULL, "", ""};
    json_error_t jerr;
    r.msg = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!r.msg) {
        srv_ws_error(srv, c, "", "bad_json", "line %d column %d: %s", jerr.line, jerr.column, jerr.text);
        return;
    }
    if (!json_is_object(r.msg)) {
        srv_ws_error(srv, c, "", "bad_message", "a message must be a JSON object");
        goto out;
    }
    char why[80];
    const int id_rc = read_id(r.msg, r.id, why, sizeof why);
    if (id_rc) {
        srv_ws_error(srv, c, "", id_rc == -2 ? "server_busy" : "bad_message", "%s",
                     id_rc == -2 ? "out of memory" : why);
        goto out;
    }
    json_t *type = json_object_get(r.msg, "type");
    if (!json_is_string(type)) {
        srv_ws_error(srv, c, r.id, "bad_message",
                     type ? "field 'type' must be a string" : "missing field 'type'");
        goto out;
    }
    r.type = json_string_value(type);
    if (!c->authed && strcmp(r.type, "hello")) {
        srv_ws_error(srv, c, r.id, "unauthorized", "send hello with the server's token first");
        goto out;
    }
    for (size_t i = 0; i < sizeof handlers / sizeof handlers[0]; i++)
        if (!strcmp(r.type, handlers[i].type)) {
            handlers[i].fn(&r);
            goto out;
        }
    char shown[40];
    snprintf(shown, sizeof shown, "%s", r.type);
    srv_utf8_fix(shown); /* cut at 39 bytes, maybe inside a character */
    srv_ws_error(srv, c, r.id, "unknown_type", "unknown message type '%s'", shown);
out:
    json_decref(r.msg);
}

void srv_ws_receive(svlm_server *srv, srv_conn *c, const void *in, size_t len) {
    if (c->kind != CONN_WS || c->closing || c->kill) return;
    if (!c->rx_len && !c->rx_oversize && !c->rx_binary) c->rx_binary = lws_frame_is_binary(c->wsi);
    if (!c->rx_oversize && !c->rx_binary) {
        if (c->rx_len + len > srv->cfg.max_message_bytes) {
            c->rx_oversize = 1;
        } else {
            char *p = realloc(c->rx, c->rx_len + len + 1);
            if (!p)
                c->rx_oversize = 1;
            else {
                c->rx = p;
                memcpy(c->rx + c->rx_len, in, len);
                c->rx_len += len;
            }
        }
    }
    if (!lws_is_final_fragment(c->wsi)) return;
    srv->metrics.ws_messages++;
    if (!take_token(srv, c)) {
        /* the refusal names the message's id, so a client can tell which request it lost */
        char id[SRV_ID_MAX] = "", why[80];
        json_t *msg =
            c->rx_binary || c->rx_oversize ? NULL : json_loadb(c->rx ? c->rx : "", c->rx_len, 0, NULL);
        if (json_is_object(msg) && read_id(msg, id, why, sizeof why)) id[0] = 0;
        json_decref(msg);
        srv_ws_error(srv, c, id, "rate_limited", "more than %g messages per second",
                     srv->cfg.max_messages_per_s);
    } else if (c->rx_binary) {
        srv_ws_error(srv, c, "", "binary_not_supported", "send JSON text messages, not binary ones");
    } else if (c->rx_oversize) {
        srv_ws_error(srv, c, "", "message_too_large", "a message may have at most %zu bytes",
                     srv->cfg.max_message_bytes);
    } else {
        handle(srv, c, c->rx ? c->rx : "", c->rx_len);
    }
    free(c->rx);
    c->rx = NULL;
    c->rx_len = 0;
    c->rx_oversize = c->rx_binary = 0;
}

void srv_ws_tick(svlm_server *srv) {
    double now = srv_now();
    for (srv_conn *c = srv->clients; c; c = c->next)
        if (c->kind == CONN_WS && !c->authed && !c->closing && !c->kill && now >= c->auth_deadline) {
            srv_ws_error(srv, c, "", "unauthorized", "no hello with the server's token within %g s",
                         srv->cfg.auth_timeout_s);
            c->closing = 1;
        }
    json_t *streams = NULL;
    for (srv_conn *c = srv->clients; c; c = c->next) {
        if (c->kind != CONN_WS || !c->authed || c->status_interval <= 0 || now < c->next_status) continue;
        c->next_status = now + c->status_interval;
        if (!streams) streams = streams_json(srv, NULL);
        json_t *m = srv_reply("status", "");
        json_object_set(m, "streams", streams);
        srv_ws_send_json(srv, c, m);
    }
    json_decref(streams);
}
