/* HTTP on the websocket port: health, metrics, stream listing, snapshots, the web page, and
 * the routing of POST /v1/chat/completions to server_openai.c. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "pipeline/server/server_internal.h"

#define HTTP_CHUNK 16384

static int add_cors(srv_conn *c, unsigned char **p, unsigned char *end) {
    if (!c->cors[0]) return 0;
    return lws_add_http_header_by_name(c->wsi, (const unsigned char *)"access-control-allow-origin:",
                                       (const unsigned char *)c->cors, (int)strlen(c->cors), p, end) ||
           lws_add_http_header_by_name(
               c->wsi, (const unsigned char *)"vary:", (const unsigned char *)"Origin", 6, p, end);
}

static int add_header(srv_conn *c, const char *name, const char *value, unsigned char **p,
                      unsigned char *end) {
    return lws_add_http_header_by_name(c->wsi, (const unsigned char *)name, (const unsigned char *)value,
                                       (int)strlen(value), p, end);
}

/* libwebsockets 4.1 writes "HTTP/1.1 429 " with no reason phrase for the codes it does not know:
 * the status line (the first of the headers at start) gets one. */
static int add_reason(int status, unsigned char *start, unsigned char **p, unsigned char *end) {
    const char *reason = status == 204 ? "No Content" : status == 429 ? "Too Many Requests" : NULL;
    unsigned char *eol = reason ? memchr(start, '\r', (size_t)(*p - start)) : NULL;
    if (!eol || eol == start || eol[-1] != ' ') return 0; /* libwebsockets gave one */
    const size_t n = strlen(reason);
    if ((size_t)(end - *p) <= n) return -1;
    memmove(eol + n, eol, (size_t)(*p - eol));
    memcpy(eol, reason, n);
    *p += n;
    return 0;
}

int srv_http_head(srv_conn *c, int status, const char *type, lws_filepos_t len, unsigned char *start,
                  unsigned char **p, unsigned char *end) {
    if (lws_add_http_common_headers(c->wsi, (unsigned)status, type, len, p, end) ||
        add_reason(status, start, p, end) || add_cors(c, p, end))
        return -1;
    /* what clients act on: the methods a path takes, how to authenticate, when to try again */
    if (status == 405 && c->allow && add_header(c, "allow:", c->allow, p, end)) return -1;
    if (status == 401 && add_header(c, "www-authenticate:", "Bearer", p, end)) return -1;
    if (status == 429 && add_header(c, "retry-after:", "1", p, end)) return -1;
    return 0;
}

/* A preflight's Access-Control-Request-Headers, echoed when it is a plain list of header names
 * (the OpenAI SDKs send their own x-stainless-* headers besides Authorization and Content-Type). */
static const char *requested_headers(srv_conn *c, char *buf, int cap) {
    static const char *const fallback = "Authorization, Content-Type";
    static const char tchar[] = "!#$%&'*+-.^_`|~"; /* besides letters and digits (RFC 9110 token) */
    const int n = lws_hdr_total_length(c->wsi, WSI_TOKEN_HTTP_AC_REQUEST_HEADERS);
    if (n <= 0 || n >= cap || lws_hdr_copy(c->wsi, buf, cap, WSI_TOKEN_HTTP_AC_REQUEST_HEADERS) <= 0)
        return fallback;
    int in_name = 0, names = 0;
    for (const char *s = buf; *s; s++) {
        const unsigned char ch = (unsigned char)*s;
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
            strchr(tchar, ch)) {
            if (!in_name) names++;
            in_name = 1;
        } else if (ch == ',') {
            if (!in_name) return fallback; /* an empty name */
            in_name = 0;
        } else if (ch == ' ' || ch == '\t') {
            if (in_name && s[1] && s[1] != ',' && s[1] != ' ' && s[1] != '\t') return fallback;
        } else {
            return fallback;
        }
    }
    return names && in_name ? buf : fallback;
}

/* An allowed other site's preflight (OPTIONS): what its scripts may send. */
static int preflight(srv_conn *c) {
    unsigned char hdr[LWS_PRE + 3072], *start = hdr + LWS_PRE, *p = start, *end = hdr + sizeof hdr - 1;
    char asked[1024];
    const char *const h[][2] = {{"access-control-allow-methods:", "GET, POST, OPTIONS"},
                                {"access-control-allow-headers:", requested_headers(c, asked, sizeof asked)},
                                {"access-control-max-age:", "600"}};
    if (srv_http_head(c, 204, NULL, 0, start, &p, end)) return -1;
    for (size_t i = 0; i < sizeof h / sizeof h[0]; i++)
        if (add_header(c, h[i][0], h[i][1], &p, end)) return -1;
    if (lws_finalize_write_http_header(c->wsi, start, &p, end)) return -1;
    free(c->resp); /* an empty body, ended as srv_http_writeable ends every response */
    c->resp = srv_msg_new(NULL, 0);
    c->resp_off = 0;
    if (!c->resp) return -1;
    lws_callback_on_writable(c->wsi);
    return 0;
}

int srv_http_respond(srv_conn *c, int status, const char *type, const void *body, size_t len) {
    unsigned char hdr[LWS_PRE + 1536], *start = hdr + LWS_PRE, *p = start, *end = hdr + sizeof hdr - 1;
    if (srv_http_head(c, status, type, len, start, &p, end)) return -1;
    if (add_header(c, "cache-control:", "no-store", &p, end)) return -1;
    /* A POST's connection closes after its answer: libwebsockets 4.1 mixes up a request that
     * follows a POST body in the same read (pipelining): the next one was answered with a
     * header and no body, or not at all. Not before the body is read (a 401 ahead of a large
     * body): the client, still sending, would see a broken pipe instead of the answer. */
    if (c->close_after && add_header(c, "connection:", "close", &p, end)) return -1;
    if (lws_finalize_write_http_header(c->wsi, start, &p, end)) return -1;
    free(c->resp);
    /* HEAD: the headers GET would have (Content-Length included) and no body */
    c->resp = c->is_head ? srv_msg_new(NULL, 0) : srv_msg_new(body, len);
    c->resp_off = 0;
    if (!c->resp) return -1;
    lws_callback_on_writable(c->wsi);
    return 0;
}

int srv_http_respond_json(srv_conn *c, int status, json_t *body) {
    char *text = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!text) return -1;
    int rc = srv_http_respond(c, status, "application/json", text, strlen(text));
    free(text);
    return rc;
}

int srv_http_error_param(srv_conn *c, int status, const char *code, const char *msg, const char *param) {
    /* The OpenAI error shape, so its clients show the message. A message that is not valid UTF-8
     * (the engine's, cut at a byte limit) would make json_pack fail and the request go unanswered. */
    char text[512];
    snprintf(text, sizeof text, "%s", msg);
    srv_utf8_fix(text);
    const char *type = status >= 500 ? "server_error" : status == 429 ? "requests" : "invalid_request_error";
    return srv_http_respond_json(c, status,
                                 json_pack("{s:{s:s, s:s, s:o, s:s}}", "error", "message", text, "type", type,
                                           "param", param ? json_string(param) : json_null(), "code", code));
}

int srv_http_error(srv_conn *c, int status, const char *code, const char *msg) {
    return srv_http_error_param(c, status, code, msg, NULL);
}

int srv_writes_pending(const svlm_server *srv) {
    for (const srv_conn *c = srv->clients; c; c = c->next)
        if (c->out.head) return 1;
    for (const srv_conn *c = srv->http_conns; c; c = c->hnext)
        if (c->resp || c->sse) return 1; /* (an event stream ends with its connection) */
    return 0;
}

static const char *mime_of(const char *name) {
    const char *dot = strrchr(name, '.');
    if (!dot) return NULL;
    static const char *map[][2] = {{".html", "text/html; charset=utf-8"},
                                   {".css", "text/css"},
                                   {".js", "text/javascript"},
                                   {".svg", "image/svg+xml"},
                                   {".png", "image/png"},
                                   {".ico", "image/x-icon"}};
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (!strcmp(dot, map[i][0])) return map[i][1];
    return NULL;
}

/* Only plain file names straight under web_root: no '/', no '..', no hidden files. */
static int serve_static(svlm_server *srv, srv_conn *c, const char *uri) {
    const char *name = !strcmp(uri, "/") ? "index.html" : uri + 1;
    const char *mime = mime_of(name);
    int ok = srv->cfg.web_root[0] && mime && name[0] != '.';
    for (const char *s = name; ok && *s; s++)
        if (!(*s >= 'a' && *s <= 'z') && !(*s >= '0' && *s <= '9') && *s != '_' && *s != '-' && *s != '.')
            ok = 0;
    if (!ok) return srv_http_error(c, 404, "not_found", "no such page");
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", srv->cfg.web_root, name);
    int n = lws_serve_http_file(c->wsi, path, mime, NULL, 0);
    if (n < 0) return -1;
    if (n > 0 && lws_http_transaction_completed(c->wsi)) return -1;
    return 0;
}

static svlm_backend_stream_status *all_streams(svlm_server *srv, int *n) {
    int cap = srv->cfg.max_streams + 8;
    svlm_backend_stream_status *st = calloc((size_t)cap, sizeof *st);
    *n = 0;
    if (!st) return NULL;
    *n = srv->be.list_streams(srv->be.ctx, st, cap);
    if (*n > cap) *n = cap;
    return st;
}

static int metrics(svlm_server *srv, srv_conn *c) {
    int n;
    svlm_backend_stream_status *st = all_streams(srv, &n);
    srv_text t = {0};
    srv_metrics_render(&t, &srv->metrics, st, n, srv->n_clients, srv->n_asks, srv_now() - srv->t_start);
    free(st);
    if (srv->be.compute) {
        svlm_backend_compute comp;
        srv->be.compute(srv->be.ctx, &comp);
        srv_metrics_render_compute(&t, &comp);
    }
    if (t.failed) {
        free(t.buf);
        return srv_http_error(c, 500, "server_error", "out of memory");
    }
    int rc = srv_http_respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", t.buf, t.len);
    free(t.buf);
    return rc;
}

static int streams(svlm_server *srv, srv_conn *c, const char *only) {
    int n;
    svlm_backend_stream_status *st = all_streams(srv, &n);
    json_t *arr = json_array();
    json_t *one = NULL;
    for (int i = 0; i < n; i++) {
        json_t *s = srv_status_json(&st[i]);
        if (only && !strcmp(only, st[i].name)) one = json_incref(s);
        json_array_append_new(arr, s);
    }
    free(st);
    if (only) {
        json_decref(arr);
        if (!one) return srv_http_error(c, 404, "unknown_stream", "no such stream");
        return srv_http_respond_json(c, 200, one);
    }
    return srv_http_respond_json(c, 200, json_pack("{s:o}", "streams", arr));
}

static json_t *model_json(const char *name) {
    return json_pack("{s:s, s:s, s:i, s:s}", "id", name, "object", "model", "created", 0, "owned_by", "svlm");
}

/* OpenAI clients list models first: every stream is a model here. */
static int models(svlm_server *srv, srv_conn *c) {
    int n;
    svlm_backend_stream_status *st = all_streams(srv, &n);
    json_t *arr = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(arr, model_json(st[i].name));
    free(st);
    return srv_http_respond_json(c, 200, json_pack("{s:s, s:o}", "object", "list", "data", arr));
}

/* GET /v1/models/NAME (the SDKs' models.retrieve). */
static int model_one(svlm_server *srv, srv_conn *c, const char *name) {
    svlm_backend_stream_status st;
    svlm_err err = {0};
    if (!srv_stream_name_ok(name) || srv->be.stream_status(srv->be.ctx, name, &st, &err) != SVLM_OK)
        return srv_http_error_param(c, 404, "model_not_found",
                                    "no such model: every open stream is one (GET /v1/models lists them)",
                                    "model");
    return srv_http_respond_json(c, 200, model_json(name));
}

/* The endpoints served to GET (and HEAD): another method there is 405, not 404. */
static int get_endpoint(const char *uri) {
    return !strcmp(uri, "/health") || !strcmp(uri, "/metrics") || !strcmp(uri, "/v1/models") ||
           !strncmp(uri, "/v1/models/", 11) || !strcmp(uri, "/v1/streams") ||
           !strncmp(uri, "/v1/streams/", 12);
}

static int too_large(svlm_server *srv, srv_conn *c) {
    char msg[160];
    snprintf(msg, sizeof msg, "the request body is over %zu bytes (the server's max_message_bytes)",
             srv->cfg.max_message_bytes);
    return srv_http_error(c, 413, "message_too_large", msg);
}

/* How libwebsockets 4.1 frames the request's body: a POST, PUT or PATCH without Content-Length
 * has everything after its headers read as body (up to 100 MB: a chunked body is not decoded), and
 * a Content-Length that is not a number reads as 0, its body then parsed as the next request.
 * 0: a Content-Length (*len) or no body; 1: no Content-Length (or Transfer-Encoding); 2: a bad one. */
static int body_framing(struct lws *wsi, long long *len) {
    char cl[64];
    *len = 0;
    const int has_body_method = lws_hdr_total_length(wsi, WSI_TOKEN_POST_URI) > 0 ||
                                lws_hdr_total_length(wsi, WSI_TOKEN_PUT_URI) > 0 ||
                                lws_hdr_total_length(wsi, WSI_TOKEN_PATCH_URI) > 0;
    if (lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_TRANSFER_ENCODING) > 0) return 1;
    const int n = lws_hdr_total_length(wsi, WSI_TOKEN_HTTP_CONTENT_LENGTH);
    if (n <= 0) return has_body_method ? 1 : 0;
    if (n >= (int)sizeof cl || lws_hdr_copy(wsi, cl, sizeof cl, WSI_TOKEN_HTTP_CONTENT_LENGTH) <= 0 ||
        strspn(cl, "0123456789") != strlen(cl))
        return 2;
    const char *digits = cl + strspn(cl, "0"); /* leading zeros are allowed, and say nothing */
    if (strlen(digits) > 18) return 2;         /* (more than any body this server takes anyway) */
    *len = atoll(digits);
    return 0;
}

static int expects_continue(struct lws *wsi) {
    char v[32];
    return lws_hdr_copy(wsi, v, sizeof v, WSI_TOKEN_HTTP_EXPECT) > 0 && !strcasecmp(v, "100-continue");
}

int srv_http_request(svlm_server *srv, srv_conn *c, const char *uri) {
    /* A kept-alive connection carries several requests: start clean. */
    free(c->body);
    free(c->resp);
    srv_openai_reset(c);
    c->body = NULL;
    c->resp = NULL;
    c->body_len = 0;
    c->body_oversize = 0;
    c->body_garbled = 0;
    c->body_completions = 0;
    c->close_after = 0;
    c->allow = NULL;
    /* libwebsockets reads the body of any request (a GET or PUT may carry one too) and reports
     * its end: `rejected` keeps every body but an accepted chat POST's from running as a chat
     * request (a GET /health with a chat body was answered, without the token) */
    c->rejected = 1;
    c->kind = CONN_HTTP;
    if (!c->hlinked) {
        c->hnext = srv->http_conns;
        c->hprev = NULL;
        if (srv->http_conns) srv->http_conns->hprev = c;
        srv->http_conns = c;
        c->hlinked = 1;
    }
    c->serial = ++srv->next_serial;
    srv->metrics.http_requests++;
    snprintf(c->path, sizeof c->path, "%s", uri);
    c->is_post = lws_hdr_total_length(c->wsi, WSI_TOKEN_POST_URI) > 0;
    c->is_head = lws_hdr_total_length(c->wsi, WSI_TOKEN_HEAD_URI) > 0;
    long long body_len;
    const int framing = body_framing(c->wsi, &body_len);
    /* whatever the answer, such a connection cannot carry another request: its next one was
     * read as this body (never answered), or this body as the next request */
    if (framing) c->close_after = 1;
    /* a client waiting for "100 Continue" before its body may never send it after a refusal */
    const int expect = expects_continue(c->wsi);
    if (expect && body_len > 0) c->close_after = 1; /* (cleared below when the body is taken) */
    if (atomic_load(&srv->stop)) {
        c->close_after = 1;
        return srv_http_error(c, 503, "server_stopping", "the server is stopping");
    }
    const char *refused = srv_origin_refusal(srv, c->wsi, c->cors, sizeof c->cors);
    if (refused) return srv_http_error(c, 403, "forbidden_origin", refused);
    if (c->cors[0] && lws_hdr_total_length(c->wsi, WSI_TOKEN_OPTIONS_URI) > 0) return preflight(c);
    const int is_get = lws_hdr_total_length(c->wsi, WSI_TOKEN_GET_URI) > 0 ||
                       lws_hdr_total_length(c->wsi, WSI_TOKEN_HEAD_URI) > 0;
    const int is_chat = !strcmp(uri, "/v1/chat/completions");
    if (!c->is_post && !is_get) { /* a DELETE must not look done */
        c->allow = is_chat ? "POST" : "GET, HEAD";
        return srv_http_error(c, 405, "method_not_allowed",
                              "only GET (and POST to /v1/chat/completions) is served; streams are opened "
                              "and closed over the websocket (docs/protocol.md)");
    }
    if (is_get && is_chat) {
        c->allow = "POST";
        return srv_http_error(c, 405, "method_not_allowed", "/v1/chat/completions takes POST");
    }
    if (c->is_post) {
        if (!is_chat && get_endpoint(uri)) {
            c->allow = "GET, HEAD";
            return srv_http_error(c, 405, "method_not_allowed", "this endpoint takes GET");
        }
        if (!is_chat) return srv_http_error(c, 404, "not_found", "no such endpoint");
        if (!srv_authorized(srv, c->wsi))
            return srv_http_error(c, 401, "unauthorized", "a valid token is required");
        if (framing == 1)
            return srv_http_error(
                c, 411, "bad_request",
                "a JSON body with a Content-Length is required (chunked bodies are not read)");
        if (framing == 2) return srv_http_error(c, 400, "bad_request", "the Content-Length is not a number");
        if (body_len <= 0) return srv_http_error(c, 400, "bad_request", "the request has no body");
        if ((unsigned long long)body_len > srv->cfg.max_message_bytes) {
            /* told now rather than after the body when the client waits to be asked for it */
            if (expect) return too_large(srv, c);
            c->body_oversize = 1;
        }
        c->rejected = 0;
        c->close_after = 0; /* (the Expect above: the body comes; set again once it is read) */
        if (expect) {       /* the client waits for this before it sends the body */
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            unsigned char buf[LWS_PRE + sizeof cont];
            memcpy(buf + LWS_PRE, cont, sizeof cont - 1);
            if (lws_write(c->wsi, buf + LWS_PRE, sizeof cont - 1, LWS_WRITE_HTTP_HEADERS) !=
                (int)sizeof cont - 1)
                return -1;
        }
        return 0; /* the body follows */
    }
    if (!strcmp(uri, "/health")) {
        int n = srv->be.list_streams(srv->be.ctx, NULL, 0);
        return srv_http_respond_json(c, 200,
                                     json_pack("{s:s, s:i, s:i, s:f}", "status", "ok", "streams", n,
                                               "clients", srv->n_clients, "uptime_s",
                                               srv_now() - srv->t_start));
    }
    if (strncmp(uri, "/v1/", 4) && strcmp(uri, "/metrics")) return serve_static(srv, c, uri);
    if (!srv_authorized(srv, c->wsi))
        return srv_http_error(c, 401, "unauthorized", "a valid token is required");
    if (!strcmp(uri, "/metrics")) return metrics(srv, c);
    if (!strcmp(uri, "/v1/streams")) return streams(srv, c, NULL);
    if (!strcmp(uri, "/v1/models")) return models(srv, c);
    if (!strncmp(uri, "/v1/models/", 11)) return model_one(srv, c, uri + 11);
    if (!strncmp(uri, "/v1/streams/", 12)) {
        char name[SVLM_BACKEND_NAME_MAX + 16];
        snprintf(name, sizeof name, "%s", uri + 12);
        char *slash = strchr(name, '/');
        if (slash) *slash = 0;
        if (!srv_stream_name_ok(name)) return srv_http_error(c, 404, "unknown_stream", "no such stream");
        if (!slash) return streams(srv, c, name);
        if (!strcmp(slash + 1, "snapshot.jpg")) return srv_snapshot(srv, c, name);
    }
    return srv_http_error(c, 404, "not_found", "no such endpoint");
}

/* Whether a body's first bytes begin a request line ("POST /v1/... HTTP/1.1", or as much of it as
 * a short body holds: "PO"): see body_garbled. A JSON body starts with '{' or a space. */
static int request_line(const char *p, size_t len) {
    static const char *const methods[] = {"GET /",    "POST /",   "HEAD /", "PUT /",
                                          "DELETE /", "OPTIONS ", "PATCH /"};
    for (size_t i = 0; i < sizeof methods / sizeof methods[0]; i++) {
        const size_t k = strlen(methods[i]);
        if (len && !memcmp(p, methods[i], len < k ? len : k)) return 1;
    }
    return 0;
}

int srv_http_body(svlm_server *srv, srv_conn *c, const void *in, size_t len) {
    /* (only before the body's end: after a chat POST, libwebsockets hands the next request's
     * first bytes over as more body, and that answer is on its way) */
    if (c->body_len == 0 && !c->body_completions && request_line(in, len)) c->body_garbled = 1;
    if (c->body_oversize || c->rejected) return 0;
    if (c->body_len + len > srv->cfg.max_message_bytes) {
        c->body_oversize = 1;
        free(c->body);
        c->body = NULL;
        c->body_len = 0;
        return 0;
    }
    char *p = realloc(c->body, c->body_len + len + 1);
    if (!p) {
        c->body_oversize = 1;
        return 0;
    }
    c->body = p;
    memcpy(c->body + c->body_len, in, len);
    c->body_len += len;
    c->body[c->body_len] = 0;
    return 0;
}

int srv_http_body_done(svlm_server *srv, srv_conn *c) {
    c->body_completions++;
    if (c->body_garbled) return -1;
    if (c->rejected) { /* answered already (401, 404, 411) */
        free(c->body);
        c->body = NULL;
        c->body_len = 0;
        return 0;
    }
    c->close_after = 1;
    int rc = c->body_oversize ? too_large(srv, c) : srv_openai_chat(srv, c);
    /* libwebsockets 4.1 reports the end of a body twice when the next request follows it in the
     * same read (pipelining): the second ran as an empty chat request and answered a 400 */
    c->rejected = 1;
    free(c->body);
    c->body = NULL;
    c->body_len = 0;
    return rc;
}

int srv_http_writeable(svlm_server *srv, srv_conn *c) {
    (void)srv;
    if (c->sse) {
        srv_msg *m = srv_queue_pop(&c->out);
        if (m) {
            int n = lws_write(c->wsi, m->buf + LWS_PRE, m->len, LWS_WRITE_HTTP);
            free(m);
            if (n < 0) return -1;
        }
        if (c->out.head)
            lws_callback_on_writable(c->wsi);
        else if (c->sse_done)
            return -1; /* no Content-Length: the close ends the response */
        return 0;
    }
    if (!c->resp) return 0;
    size_t left = c->resp->len - c->resp_off, n = left > HTTP_CHUNK ? HTTP_CHUNK : left;
    int final = n == left;
    if (lws_write(c->wsi, c->resp->buf + LWS_PRE + c->resp_off, n,
                  final ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP) < (int)n)
        return -1;
    c->resp_off += n; /* the LWS_PRE bytes lws may use before the next piece are sent already */
    if (!final) {
        lws_callback_on_writable(c->wsi);
        return 0;
    }
    free(c->resp);
    c->resp = NULL;
    if (c->close_after) return -1; /* "connection: close" (above) */
    return lws_http_transaction_completed(c->wsi) ? -1 : 0;
}

void srv_http_closed(svlm_server *srv, srv_conn *c) {
    if (c->hlinked) {
        if (c->hprev)
            c->hprev->hnext = c->hnext;
        else
            srv->http_conns = c->hnext;
        if (c->hnext) c->hnext->hprev = c->hprev;
        c->hnext = c->hprev = NULL;
        c->hlinked = 0;
    }
    if (c->ask) {
        c->ask->conn = NULL;
        srv_ask_cancel(srv, c->ask);
        c->ask = NULL;
    }
    free(c->body);
    free(c->resp);
    c->body = NULL;
    c->resp = NULL;
    srv_queue_clear(&c->out);
    srv_openai_reset(c);
    c->kind = CONN_NONE;
}
