/* The server's life: configuration, the libwebsockets context and its one callback, the
 * service loop, the periodic tick, and an orderly shutdown. */
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "pipeline/server/server_internal.h"

#define SHUTDOWN_GRACE_S 1.5 /* at most, for the last answers to reach their clients */

void svlm_server_config_default(svlm_server_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    snprintf(cfg->host, sizeof cfg->host, "127.0.0.1");
    cfg->port = 8080;
    cfg->max_message_bytes = 1 << 20;
    cfg->max_messages_per_s = 50;
    cfg->max_questions_per_client = 4;
    cfg->max_questions_total = 64;
    cfg->max_watches_per_client = 8;
    cfg->max_streams = 16;
    cfg->max_clients = 256;
    cfg->max_send_queue_bytes = 4u << 20;
    cfg->status_interval_s = 5;
    cfg->auth_timeout_s = 10;
}

static svlm_server *server_of(struct lws *wsi) {
    return lws_context_user(lws_get_context(wsi));
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len) {
    srv_conn *c = user;
    svlm_server *srv;
    switch (reason) {
    case LWS_CALLBACK_EVENT_WAIT_CANCELLED: srv_events_drain(server_of(wsi)); return 0;
    case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION: {
        char uri[64];
        if (lws_hdr_copy(wsi, uri, sizeof uri, WSI_TOKEN_GET_URI) <= 0 || strcmp(uri, "/v1/ws")) return -1;
        if (atomic_load(&server_of(wsi)->stop)) return -1;      /* stopping: the last answers go out */
        if (srv_origin_refusal(server_of(wsi), wsi, NULL, 0)) { /* another site's page: the handshake fails */
            server_of(wsi)->metrics.clients_refused++;
            return -1;
        }
        /* The request's headers and query are gone once established: check the token now. */
        if (c) c->token_ok = srv_authorized(server_of(wsi), wsi);
        return 0;
    }
    case LWS_CALLBACK_ESTABLISHED: c->wsi = wsi; return srv_ws_established(server_of(wsi), c);
    case LWS_CALLBACK_RECEIVE:
        /* stopping: no new question or watch may reach the backend, which is about to go */
        if (!atomic_load(&server_of(wsi)->stop)) srv_ws_receive(server_of(wsi), c, in, len);
        return 0;
    case LWS_CALLBACK_SERVER_WRITEABLE: return srv_ws_writeable(server_of(wsi), c);
    case LWS_CALLBACK_CLOSED: srv_ws_closed(server_of(wsi), c); return 0;
    case LWS_CALLBACK_HTTP:
        c->wsi = wsi;
        return srv_http_request(server_of(wsi), c, in ? (const char *)in : "/");
    case LWS_CALLBACK_HTTP_BODY: return srv_http_body(server_of(wsi), c, in, len);
    case LWS_CALLBACK_HTTP_BODY_COMPLETION: return srv_http_body_done(server_of(wsi), c);
    case LWS_CALLBACK_HTTP_WRITEABLE: return srv_http_writeable(server_of(wsi), c);
    case LWS_CALLBACK_CLOSED_HTTP:
    case LWS_CALLBACK_HTTP_DROP_PROTOCOL: /* either may come last: freeing twice is harmless */
        srv = server_of(wsi);
        if (c && c->kind == CONN_HTTP) srv_http_closed(srv, c);
        return 0;
    default: break;
    }
    return lws_callback_http_dummy(wsi, reason, user, in, len);
}

static const struct lws_protocols protocols[] = {
    {"svlm-v1", callback, sizeof(srv_conn), 65536, 0, NULL, 0},
    {NULL, NULL, 0, 0, 0, NULL, 0},
};

static void tick(lws_sorted_usec_list_t *sul) {
    svlm_server *srv = lws_container_of(sul, svlm_server, tick);
    if (!atomic_load(&srv->stop)) srv_ws_tick(srv); /* (stopping: no status pushes to wait for) */
    lws_sul_schedule(srv->ctx, 0, &srv->tick, tick, 250 * LWS_US_PER_MS);
}

svlm_status svlm_server_create(svlm_server **out, const svlm_server_config *cfg,
                               const svlm_server_backend *backend, svlm_err *err) {
    *out = NULL;
    const svlm_server_backend *b = backend;
    if (!b || !b->info || !b->open_stream || !b->close_stream || !b->list_streams || !b->stream_status ||
        !b->latest_frame || !b->ask || !b->cancel || !b->watch || !b->unwatch)
        return svlm_fail(err, SVLM_E_INVALID, "the server backend is missing functions");
    if (cfg->port < 0 || cfg->port > 65535)
        return svlm_fail(err, SVLM_E_INVALID, "port %d is out of range", cfg->port);
    if (cfg->max_message_bytes < 1024 || cfg->max_messages_per_s <= 0 || cfg->max_questions_per_client < 1 ||
        cfg->max_questions_total < 1 || cfg->max_streams < 1 || cfg->max_clients < 1 ||
        cfg->max_send_queue_bytes < 4096 || cfg->max_watches_per_client < 0 || cfg->status_interval_s < 0 ||
        cfg->auth_timeout_s < 1 || cfg->auth_timeout_s > 3600)
        return svlm_fail(err, SVLM_E_INVALID, "a server limit is out of range");
    char addr[64];
    svlm_status st = svlm_server_listen_address(cfg->host, cfg->port, addr, sizeof addr, err);
    if (st != SVLM_OK) return st;
    if (!svlm_host_is_loopback(addr) && !cfg->token[0]) /* (the address the name resolves to decides) */
        return svlm_fail(err, SVLM_E_INVALID,
                         "listening on %s (not loopback) needs a token: pass --token-file FILE", cfg->host);
    svlm_server *srv = calloc(1, sizeof *srv);
    if (!srv) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    srv->cfg = *cfg;
    srv->be = *b;
    b->info(b->ctx, &srv->info);
    srv->t_start = srv_now();
    srv_metrics_init(&srv->metrics);
    pthread_mutex_init(&srv->lock, NULL);
    pthread_cond_init(&srv->cond, NULL);

    lws_set_log_level(LLL_ERR | LLL_USER, NULL);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = cfg->port;
    snprintf(srv->listen_addr, sizeof srv->listen_addr, "%s", addr);
    info.iface = srv->listen_addr; /* numeric: a name made libwebsockets defer listening for ever */
    info.protocols = protocols;
    info.user = srv;
    /* No LWS_SERVER_OPTION_VALIDATE_UTF8: with it, libwebsockets closed the connection (1007) on a
     * text message that is not UTF-8, and the client's answers and watches went with it; jansson
     * checks the whole message instead, and it gets a bad_json error as docs/protocol.md says. */
    /* a failed bind fails the context (else it retries every 30 s, listening nowhere meanwhile) */
    info.options = LWS_SERVER_OPTION_DISABLE_IPV6 | LWS_SERVER_OPTION_FAIL_UPON_UNABLE_TO_BIND;
    /* Request headers beyond this close the connection unanswered (libwebsockets 4.1 has no 431):
     * browsers send every cookie of localhost, 4 KiB was too little. Each connection holds this
     * much only while its headers are parsed and its request is answered. */
    info.max_http_header_data = 16384;
    info.timeout_secs = 30;
    info.ka_time = 0;
    srv->ctx = lws_create_context(&info);
    if (!srv->ctx) { /* (the address bound just above: something took it since) */
        svlm_fail(err, SVLM_E_IO, "could not listen on %s:%d (in use, or not an address of this machine)",
                  cfg->host, cfg->port);
        pthread_mutex_destroy(&srv->lock);
        pthread_cond_destroy(&srv->cond);
        free(srv);
        return SVLM_E_IO;
    }
    srv->vhost = lws_get_vhost_by_name(srv->ctx, "default");
    srv->port = srv->vhost ? lws_get_vhost_listen_port(srv->vhost) : cfg->port;
    srv->alive = 1;
    lws_sul_schedule(srv->ctx, 0, &srv->tick, tick, 250 * LWS_US_PER_MS);
    *out = srv;
    return SVLM_OK;
}

int svlm_server_port(const svlm_server *srv) {
    return srv->port;
}

svlm_status svlm_server_run(svlm_server *srv, svlm_err *err) {
    (void)err;
    while (!atomic_load(&srv->stop))
        if (lws_service(srv->ctx, 0) < 0) break;
    return SVLM_OK;
}

void svlm_server_stop(svlm_server *srv) {
    atomic_store(&srv->stop, 1);
    lws_cancel_service(srv->ctx);
}

void svlm_server_destroy(svlm_server *srv) {
    if (!srv) return;
    atomic_store(&srv->stop, 1); /* (also when svlm_server_stop was not called) */
    for (srv_ask *a = srv->asks; a; a = a->next)
        srv_ask_cancel(srv, a);
    while (srv->watches) {
        srv_watch *w = srv->watches;
        srv->be.unwatch(srv->be.ctx, w->backend_id);
        srv->watches = w->next;
        free(w);
    }
    /* The backend still holds our callbacks until every answer reports done and every
     * open/close returns: wait for them, then no engine thread can reach us. */
    pthread_mutex_lock(&srv->lock);
    while (srv->outstanding_asks > 0 || srv->jobs > 0)
        pthread_cond_wait(&srv->cond, &srv->lock);
    pthread_mutex_unlock(&srv->lock);
    srv_events_drain(srv);
    /* Those answers' endings are queued to their clients (503 answer_cancelled, an error event and
     * [DONE], a websocket done): serve a little longer so that they go out. New requests are
     * refused meanwhile (srv->stop), so nothing new reaches the backend. */
    const double until = srv_now() + SHUTDOWN_GRACE_S;
    while (srv_writes_pending(srv) && srv_now() < until)
        if (lws_service(srv->ctx, 0) < 0) break;
    /* then each websocket client gets a close frame (1001, going away), not a dropped connection */
    for (srv_conn *c = srv->clients; c; c = c->next)
        if (c->kind == CONN_WS && !c->kill && !c->closing) {
            c->closing = 2;
            lws_callback_on_writable(c->wsi);
        }
    const double closes_until = srv_now() + 0.3;
    while (srv->clients && srv_now() < closes_until)
        if (lws_service(srv->ctx, 0) < 0) break;
    pthread_mutex_lock(&srv->lock);
    srv->alive = 0;
    pthread_mutex_unlock(&srv->lock);
    lws_sul_cancel(&srv->tick);
    lws_context_destroy(srv->ctx);
    srv_events_drain(srv); /* nothing can be queued any more; frees leftovers */
    srv_snapshots_free(srv);
    while (srv->closing_streams) /* (each close job's event ended its entry: none should be left) */
        srv_closing_end(srv, srv->closing_streams->name);
    pthread_mutex_destroy(&srv->lock);
    pthread_cond_destroy(&srv->cond);
    free(srv);
}
