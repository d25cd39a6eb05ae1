/* HTTP on the websocket port: health, metrics, stream listing, snapshots, the web page, and
 * the routing of POST /v1/chat/completions to server_openai.c. */
#include <stdlib.h>
#include <string.h>

#include "pipeline/server/server_internal.h"

#define HTTP_CHUNK 16384

int srv_http_add_cors(srv_conn *c, unsigned char **p, unsigned char *end) {
    if (!c->cors[0]) return 0;
    return lws_add_http_header_by_name(c->wsi, (const unsigned char *)"access-control-allow-origin:",
                                       (const unsigned char *)c->cors, (int)strlen(c->cors), p, end) ||
           lws_add_http_header_by_name(
               c->wsi, (const unsigned char *)"vary:", (const unsigned char *)"Origin", 6, p, end);
}

/* An allowed other site's preflight (OPTIONS): what its scripts may send. */
static int preflight(srv_conn *c) {
    unsigned char hdr[LWS_PRE + 1536], *start = hdr + LWS_PRE, *p = start, *end = hdr + sizeof hdr - 1;
    static const char *const h[][2] = {{"access-control-allow-methods:", "GET, POST, OPTIONS"},
                                       {"access-control-allow-headers:", "Authorization, Content-Type"},
                                       {"access-control-max-age:", "600"}};
    if (lws_add_http_common_headers(c->wsi, 204, NULL, 0, &p, end) || srv_http_add_cors(c, &p, end))
        return -1;
    for (size_t i = 0; i < sizeof h / sizeof h[0]; i++)
        if (lws_add_http_header_by_name(c->wsi, (const unsigned char *)h[i][0],
                                        (const unsigned char *)h[i][1], (int)strlen(h[i][1]), &p, end))
            return -1;
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
    if (lws_add_http_common_headers(c->wsi, (unsigned)status, type, len, &p, end)) return -1;
    if (srv_http_add_cors(c, &p, end)) return -1;
    if (lws_add_http_header_by_name(
            c->wsi, (const unsigned char *)"cache-control:", (const unsigned char *)"no-store", 8, &p, end))
        return -1;
    /* A POST's connection closes after its answer: libwebsockets 4.1 mixes up a request that
     * follows a POST body in the same read (pipelining): the next one was answered with a
     * header and no body, or not at all. Not before the body is read (a 401 ahead of a large
     * body): the client, still sending, would see a broken pipe instead of the answer. */
    if (c->close_after && lws_add_http_header_by_name(c->wsi, (const unsigned char *)"connection:",
                                                      (const unsigned char *)"close", 5, &p, end))
        return -1;
    if (lws_finalize_write_http_header(c->wsi, start, &p, end)) return -1;
    free(c->resp);
    c->resp = srv_msg_new(body, len);
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

int srv_http_error(srv_conn *c, int status, const char *code, const char *msg) {
    /* The OpenAI error shape, so its clients show the message. A message that is not valid UTF-8
     * (the engine's, cut at a byte limit) would make json_pack fail and the request go unanswered. */
    char text[512];
    snprintf(text, sizeof text, "%s", msg);
    srv_utf8_fix(text);
    return srv_http_respond_json(c, status,
                                 json_pack("{s:{s:s, s:s, s:s}}", "error", "message", text, "type",
                                           status >= 500 ? "server_error" : "invalid_request_error", "code",
                                           code));
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

/* OpenAI clients list models first: every stream is a model here. */
static int models(svlm_server *srv, srv_conn *c) {
    int n;
    svlm_backend_stream_status *st = all_streams(srv, &n);
    json_t *arr = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(arr, json_pack("{s:s, s:s, s:i, s:s}", "id", st[i].name, "object", "model",
                                             "created", 0, "owned_by", "svlm"));
    free(st);
    return srv_http_respond_json(c, 200, json_pack("{s:s, s:o}", "object", "list", "data", arr));
}

int srv_http_request(svlm_server *srv, srv_conn *c, const char *uri) {
    /* A kept-alive connection carries several requests: start clean. */
    free(c->body);
    free(c->resp);
    c->body = NULL;
    c->resp = NULL;
    c->body_len = 0;
    c->body_oversize = 0;
    c->close_after = 0;
    /* libwebsockets reads the body of any request (a GET or PUT may carry one too) and reports
     * its end: `rejected` keeps every body but an accepted chat POST's from running as a chat
     * request (a GET /health with a chat body was answered, without the token) */
    c->rejected = 1;
    c->kind = CONN_HTTP;
    c->serial = ++srv->next_serial;
    srv->metrics.http_requests++;
    snprintf(c->path, sizeof c->path, "%s", uri);
    c->is_post = lws_hdr_total_length(c->wsi, WSI_TOKEN_POST_URI) > 0;
    const char *refused = srv_origin_refusal(srv, c->wsi, c->cors, sizeof c->cors);
    if (refused) return srv_http_error(c, 403, "forbidden_origin", refused);
    if (c->cors[0] && lws_hdr_total_length(c->wsi, WSI_TOKEN_OPTIONS_URI) > 0) return preflight(c);
    if (!c->is_post && lws_hdr_total_length(c->wsi, WSI_TOKEN_GET_URI) <= 0 &&
        lws_hdr_total_length(c->wsi, WSI_TOKEN_HEAD_URI) <= 0) /* a DELETE must not look done */
        return srv_http_error(c, 405, "method_not_allowed",
                              "only GET (and POST to /v1/chat/completions) is served; streams are opened "
                              "and closed over the websocket (docs/protocol.md)");
    if (c->is_post) {
        if (strcmp(uri, "/v1/chat/completions"))
            return srv_http_error(c, 404, "not_found", "no such endpoint");
        if (!srv_authorized(srv, c->wsi))
            return srv_http_error(c, 401, "unauthorized", "a valid token is required");
        char cl[32];
        if (lws_hdr_copy(c->wsi, cl, sizeof cl, WSI_TOKEN_HTTP_CONTENT_LENGTH) <= 0 || atol(cl) <= 0)
            return srv_http_error(c, 411, "bad_request", "a JSON body with a Content-Length is required");
        c->rejected = 0;
        if ((size_t)atol(cl) > srv->cfg.max_message_bytes) c->body_oversize = 1;
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

int srv_http_body(svlm_server *srv, srv_conn *c, const void *in, size_t len) {
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
    if (c->rejected) { /* answered already (401, 404, 411) */
        free(c->body);
        c->body = NULL;
        c->body_len = 0;
        return 0;
    }
    c->close_after = 1;
    int rc = c->body_oversize ? srv_http_error(c, 413, "message_too_large", "the request body is too large")
                              : srv_openai_chat(srv, c);
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
    c->kind = CONN_NONE;
}
