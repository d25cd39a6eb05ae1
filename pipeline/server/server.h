/*
 * svlm's network server: the websocket JSON protocol (docs/protocol.md), HTTP on the same
 * port (/health, /metrics, /v1/streams, snapshots, /v1/chat/completions, the web page), and
 * the safety limits. It runs libwebsockets' service loop on the thread that calls
 * svlm_server_run() and talks to the engine only through server_backend.h.
 */
#ifndef SVLM_PIPELINE_SERVER_H
#define SVLM_PIPELINE_SERVER_H

#include "pipeline/server/server_backend.h"

typedef struct svlm_server_config {
    char host[64];                /* listen address ("127.0.0.1") */
    int port;                     /* 0: any free port (see svlm_server_port) */
    char token[256];              /* "" = no token; required when host is not loopback */
    char web_root[512];           /* folder served at / (demos/web); "" = no page */
    char allowed_origins[1024];   /* browsers' Origins taken besides the server's own page, comma-
                                     separated ("*": any); see server_origin.c */
    int local_open;               /* without a token, `open` may name gst: pipelines and local files
                                     too (0: only with a token; any local user reaches loopback) */
    size_t max_message_bytes;     /* largest websocket message or HTTP body accepted (1 MiB) */
    double max_messages_per_s;    /* per client, token bucket with a burst of twice this (50) */
    int max_questions_per_client; /* concurrent answers per client (4) */
    int max_questions_total;      /* concurrent answers in all (64) */
    int max_watches_per_client;   /* (8) */
    int max_streams;              /* (16) */
    int max_clients;              /* websocket clients (256) */
    size_t max_send_queue_bytes;  /* per client; a client further behind is disconnected (4 MiB) */
    double status_interval_s;     /* default push interval of `status` messages (0 = off; 5) */
    double auth_timeout_s;        /* with a token: a websocket client not authenticated within this long
                                     is closed, so idle connections cannot hold every client slot (10) */
} svlm_server_config;

void svlm_server_config_default(svlm_server_config *cfg);

typedef struct svlm_server svlm_server;

/* host:port checked as the server will listen on it: host resolved to its IPv4 address (written to
 * addr, e.g. "localhost" -> "127.0.0.1") and bound once; an error says why not and what to do
 * (port in use, not an address of this machine, privileged port, IPv6). */
svlm_status svlm_server_listen_address(const char *host, int port, char *addr, size_t cap, svlm_err *err);

/* Whether a stream name is one clients can address: 1 to SVLM_BACKEND_NAME_MAX - 1 letters, digits,
 * '_', '-' or '.'. */
int svlm_server_stream_name_ok(const char *name);

/* Validates the config (a non-loopback host without a token is refused) and binds. */
svlm_status svlm_server_create(svlm_server **out, const svlm_server_config *cfg,
                               const svlm_server_backend *backend, svlm_err *err);
/* The port actually bound. */
int svlm_server_port(const svlm_server *srv);
/* Serves until svlm_server_stop(). */
svlm_status svlm_server_run(svlm_server *srv, svlm_err *err);
/* Any thread; async-signal-safe (stores a flag and wakes the loop through a pipe). */
void svlm_server_stop(svlm_server *srv);
/* Cancels outstanding answers and watches, waits for their callbacks, frees; accepts NULL. */
void svlm_server_destroy(svlm_server *srv);

/* Constant-time comparison of a presented token with the configured one (1 = equal). */
int svlm_token_equal(const char *expected, const char *presented, size_t presented_len);
/* 1 when host is 127.0.0.0/8, ::1 or "localhost". */
int svlm_host_is_loopback(const char *host);

#endif
