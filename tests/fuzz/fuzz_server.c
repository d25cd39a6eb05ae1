/*
 * libFuzzer harness: the server's parsing and validation of client messages, without a network:
 *  - websocket JSON messages through srv_ws_receive() (assembly, limits, handle(): JSON
 *    parsing, field checks, dispatch to hello/open/close/list/status/ask/cancel/watch/unwatch),
 *  - HTTP POST /v1/chat/completions bodies through srv_http_body() + srv_http_body_done()
 *    (srv_openai_chat: JSON, messages/content parts, data: URL base64 images).
 * libwebsockets' per-connection calls are replaced by stubs below (the executable's
 * definitions take precedence over libwebsockets.so's); the engine is a synchronous fake.
 *
 * Input: segments separated by 0xFF. Byte 0 of each segment: bit0 binary frame, bit1 not the
 * final fragment, bit2 HTTP chat body (rest of the segment), bit3 drain the send queue now.
 * Byte 0 of the whole input bit 0x40: the server requires a token ("tok").
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "pipeline/server/server_internal.h"

static volatile unsigned sink; /* keeps the reads below */

/* ---- libwebsockets stubs ---- */
static int stub_binary, stub_final = 1;
int lws_callback_on_writable(struct lws *wsi) {
    (void)wsi;
    return 1;
}
int lws_frame_is_binary(struct lws *wsi) {
    (void)wsi;
    return stub_binary;
}
int lws_is_final_fragment(struct lws *wsi) {
    (void)wsi;
    return stub_final;
}
int lws_add_http_common_headers(struct lws *wsi, unsigned int code, const char *content_type,
                                lws_filepos_t content_len, unsigned char **p, unsigned char *end) {
    (void)wsi, (void)code, (void)content_type, (void)content_len, (void)p, (void)end;
    return 0;
}
int lws_add_http_header_by_name(struct lws *wsi, const unsigned char *name, const unsigned char *value,
                                int length, unsigned char **p, unsigned char *end) {
    (void)wsi, (void)name, (void)value, (void)length, (void)p, (void)end;
    return 0;
}
int lws_finalize_write_http_header(struct lws *wsi, unsigned char *start, unsigned char **p,
                                   unsigned char *end) {
    (void)wsi, (void)start, (void)p, (void)end;
    return 0;
}
int lws_write(struct lws *wsi, unsigned char *buf, size_t len, enum lws_write_protocol protocol) {
    (void)wsi, (void)protocol;
    unsigned char s = 0; /* read what would be sent */
    for (size_t i = 0; i < len; i++)
        s ^= buf[i];
    sink = s;
    return (int)len;
}
void lws_close_reason(struct lws *wsi, enum lws_close_status status, unsigned char *buf, size_t len) {
    (void)wsi, (void)status, (void)buf, (void)len;
}
void lws_set_timeout(struct lws *wsi, enum pending_timeout reason, int secs) {
    (void)wsi, (void)reason, (void)secs;
}
int lws_http_transaction_completed(struct lws *wsi) {
    (void)wsi;
    return 0;
}

/* ---- a synchronous fake engine: streams "cam" and "s1" exist ---- */
#define PEND 64
static struct {
    uint64_t id;
    svlm_backend_ask_cb cb;
} pending[PEND];
static uint64_t next_id;

static int known(const char *n) {
    return !strcmp(n, "cam") || !strcmp(n, "s1");
}
static void fk_info(void *ctx, svlm_backend_info *out) {
    (void)ctx;
    snprintf(out->model, sizeof out->model, "fake");
}
static svlm_status fk_open(void *ctx, const svlm_backend_open_req *req, svlm_err *err) {
    (void)ctx;
    if (!strncmp(req->uri, "fail:", 5)) return svlm_fail(err, SVLM_E_IO, "cannot open %s", req->uri);
    return SVLM_OK;
}
static svlm_status fk_close(void *ctx, const char *name, svlm_err *err) {
    (void)ctx;
    return known(name) ? SVLM_OK : svlm_fail(err, SVLM_E_INVALID, "no stream %s", name);
}
static void fill(svlm_backend_stream_status *o, const char *n) {
    memset(o, 0, sizeof *o);
    snprintf(o->name, sizeof o->name, "%s", n);
    snprintf(o->uri, sizeof o->uri, "pattern:");
    snprintf(o->state, sizeof o->state, "running");
    o->n_tiers = 1;
    snprintf(o->tiers[0].name, sizeof o->tiers[0].name, "kv_text");
}
static int fk_list(void *ctx, svlm_backend_stream_status *out, int cap) {
    (void)ctx;
    if (cap > 0) fill(&out[0], "cam");
    if (cap > 1) fill(&out[1], "s1");
    return 2;
}
static svlm_status fk_status(void *ctx, const char *name, svlm_backend_stream_status *out, svlm_err *err) {
    (void)ctx;
    if (!known(name)) return svlm_fail(err, SVLM_E_INVALID, "no stream %s", name);
    fill(out, name);
    return SVLM_OK;
}
static svlm_status fk_frame(void *ctx, const char *name, svlm_backend_frame *out, svlm_err *err) {
    (void)ctx, (void)name, (void)out;
    return svlm_fail(err, SVLM_E_AGAIN, "no frame");
}
static svlm_status fk_ask(void *ctx, const svlm_backend_ask_req *req, const svlm_backend_ask_cb *cb,
                          uint64_t *id, svlm_err *err) {
    (void)ctx;
    *id = ++next_id;
    if (!strncmp(req->question, "fail", 4)) return svlm_fail(err, SVLM_E_INVALID, "refused");
    for (int i = 0; i < req->n_images; i++) { /* read every image byte */
        uint8_t s = 0;
        for (size_t k = 0; k < req->images[i].size; k++)
            s ^= req->images[i].data[k];
        sink = s + (unsigned)strlen(req->images[i].mime);
    }
    if (!strncmp(req->question, "hold", 4)) { /* stays running until cancelled */
        for (int i = 0; i < PEND; i++)
            if (!pending[i].id) {
                pending[i].id = *id;
                pending[i].cb = *cb;
                return SVLM_OK;
            }
        return svlm_fail(err, SVLM_E_LIMIT, "full");
    }
    cb->on_token(cb->user, req->question, strlen(req->question) > 20 ? 20 : strlen(req->question));
    svlm_backend_done d = {0};
    d.completion_tokens = 1;
    if (!strncmp(req->question, "err", 3)) d.status = SVLM_E_IO, snprintf(d.error, sizeof d.error, "boom");
    cb->on_done(cb->user, &d);
    return SVLM_OK;
}
static void fk_cancel(void *ctx, uint64_t id) {
    (void)ctx;
    for (int i = 0; i < PEND; i++)
        if (pending[i].id == id) {
            svlm_backend_done d = {0};
            d.cancelled = 1;
            pending[i].id = 0;
            pending[i].cb.on_done(pending[i].cb.user, &d);
        }
}
static svlm_status fk_watch(void *ctx, const svlm_backend_watch_req *req, const svlm_backend_watch_cb *cb,
                            uint64_t *id, svlm_err *err) {
    (void)ctx, (void)err;
    *id = ++next_id;
    svlm_backend_alert a = {req->question, 1.5, 2.5};
    cb->on_alert(cb->user, &a);
    return SVLM_OK;
}
static void fk_unwatch(void *ctx, uint64_t id) {
    (void)ctx, (void)id;
}

static void settle(svlm_server *srv) {
    pthread_mutex_lock(&srv->lock);
    while (srv->jobs > 0)
        pthread_cond_wait(&srv->cond, &srv->lock);
    pthread_mutex_unlock(&srv->lock);
    srv_events_drain(srv);
}

static int debug = -1;
static void show(const char *who, srv_queue *q) {
    if (!debug) return;
    for (srv_msg *m = q->head; m; m = m->next)
        fprintf(stderr, "%s: %.*s\n", who, (int)m->len, m->buf + LWS_PRE);
}
static void drain_out(svlm_server *srv, srv_conn *c) {
    for (int i = 0; i < 1000 && c->out.head; i++)
        if (srv_ws_writeable(srv, c) < 0) break;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (debug < 0) debug = getenv("FUZZ_DEBUG") != NULL;
    if (debug) fprintf(stderr, "run (size %zu)\n", size);
    static svlm_server srv_store;
    svlm_server *srv = &srv_store;
    memset(srv, 0, sizeof *srv);
    svlm_server_config_default(&srv->cfg);
    srv->cfg.max_message_bytes = 8192;
    srv->cfg.max_messages_per_s = 1e9;
    srv->cfg.max_send_queue_bytes = 1 << 16;
    if (size && data[0] & 0x40) snprintf(srv->cfg.token, sizeof srv->cfg.token, "tok");
    srv->be = (svlm_server_backend){NULL,     fk_info, fk_open,   fk_close, fk_list,    fk_status,
                                    fk_frame, fk_ask,  fk_cancel, fk_watch, fk_unwatch, NULL};
    snprintf(srv->info.model, sizeof srv->info.model, "fake");
    pthread_mutex_init(&srv->lock, NULL);
    pthread_cond_init(&srv->cond, NULL);
    srv->t_start = srv_now();

    srv_conn *ws = calloc(1, sizeof *ws);
    srv_conn *http = calloc(1, sizeof *http);
    srv_ws_established(srv, ws);
    http->kind = CONN_HTTP;
    http->serial = 1000;
    http->is_post = 1;

    size_t pos = 0;
    while (pos < size) {
        const uint8_t *seg = data + pos, *end = memchr(seg, 0xFF, size - pos);
        size_t n = end ? (size_t)(end - seg) : size - pos;
        pos += n + 1;
        if (!n) continue;
        uint8_t ctl = seg[0];
        if (ctl & 4) {
            srv_http_body(srv, http, seg + 1, n - 1);
            srv_http_body_done(srv, http);
            settle(srv);
            if (debug && http->resp)
                fprintf(stderr, "http: %.*s\n", (int)http->resp->len, http->resp->buf + LWS_PRE);
            show("sse", &http->out);
            free(http->resp), http->resp = NULL;
            srv_queue_clear(&http->out);
            http->sse = http->sse_done = 0;
        } else {
            stub_binary = ctl & 1;
            stub_final = !(ctl & 2);
            srv_ws_receive(srv, ws, seg + 1, n - 1);
            settle(srv);
        }
        if (ctl & 8) drain_out(srv, ws);
    }
    stub_final = 1;
    show("ws", &ws->out);
    srv_ws_closed(srv, ws);
    srv_http_closed(srv, http);
    settle(srv);
    for (int i = 0; i < PEND; i++) /* asks whose connection went away: cancel them */
        if (pending[i].id) fk_cancel(NULL, pending[i].id);
    settle(srv);
    if (srv->asks || srv->watches || srv->n_asks) abort(); /* everything must be freed by now */
    free(ws);
    free(http);
    pthread_mutex_destroy(&srv->lock);
    pthread_cond_destroy(&srv->cond);
    return 0;
}
