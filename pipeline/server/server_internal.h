/* Shared state of the server's parts (core, websocket, HTTP, OpenAI, metrics, events). Every
 * field is touched only on the service thread, except those under `lock` in svlm_server. */
#ifndef SVLM_PIPELINE_SERVER_INTERNAL_H
#define SVLM_PIPELINE_SERVER_INTERNAL_H

#include <libwebsockets.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>

#include "pipeline/server/server.h"
#include "pipeline/server/server_metrics.h"

#define SRV_PROTOCOL_VERSION 1
#define SRV_ID_MAX           128

/* An outgoing message: LWS_PRE bytes of headroom, then len bytes. */
typedef struct srv_msg {
    struct srv_msg *next;
    size_t len;
    unsigned char buf[];
} srv_msg;

typedef struct srv_queue {
    srv_msg *head, *tail;
    size_t bytes;
} srv_queue;

typedef enum { CONN_NONE = 0, CONN_WS, CONN_HTTP } srv_conn_kind;

struct srv_ask;

/* lws per-session data: one per connection, websocket or HTTP. */
typedef struct srv_conn {
    srv_conn_kind kind;
    struct srv_conn *next, *prev; /* websocket clients list */
    struct lws *wsi;
    uint64_t serial;
    int authed;
    int token_ok; /* the upgrade request carried the token (?token=, Bearer) */
    int kill;     /* close at the next writeable callback */
    int closing;  /* close once the send queue is empty: 1 policy violation (1008), 2 going away (1001) */
    double auth_deadline; /* a client not yet authenticated: its hello must come by then */
    srv_queue out;
    /* websocket */
    char *rx;
    size_t rx_len;
    int rx_oversize, rx_binary;
    double bucket, bucket_t;
    int n_asks, n_watches;
    double status_interval, next_status;
    /* HTTP */
    char path[256];
    int is_post;
    int is_head; /* answered with headers only */
    char *body;
    size_t body_len;
    int body_oversize;
    int rejected; /* a POST answered with an error before its body: the body is read, then dropped */
    /* libwebsockets 4.1 lost track of a request pipelined after another (sent in the same read):
     * its "body" was the request's own first bytes, and the end of it came again and again, the
     * service thread spinning for good. Such a connection is closed unanswered (a pipelining
     * client sends again what a closed connection left unanswered, RFC 9112 9.3.2). */
    int body_garbled, body_completions;
    int close_after;   /* a chat POST's body was read, or one that cannot be (no or a bad Content-Length):
                          the connection closes after the answer */
    const char *allow; /* a 405's Allow header */
    struct srv_conn *hnext, *hprev; /* HTTP connections list (shutdown sends their last answers) */
    int hlinked;
    char cors[512]; /* an allowed other site's Origin, echoed in Access-Control-Allow-Origin ("" none) */
    int http_status;
    srv_msg *resp; /* whole response body, sent in pieces */
    size_t resp_off;
    int sse;             /* streaming chat completion in progress */
    int sse_done;        /* final event queued: close after the queue drains */
    struct srv_ask *ask; /* HTTP chat completion in progress */
    char ask_model[64];
    int ask_stream_flag;
    int ask_max_tokens;
    int ask_usage;         /* stream_options.include_usage: a usage chunk ends the stream */
    int ask_images;        /* the question carries images (an engine failure may be about them) */
    long long ask_created; /* one `created` for every chunk of the answer */
    /* `stop` strings (at most 4): the answer text is cut before the first one found */
    char *stop[4];
    int n_stop;
    size_t stop_max;  /* the longest one's length */
    size_t stop_from; /* where the next search starts in the answer text */
    size_t sent;      /* answer bytes sent as events (a stop string's possible start is held back) */
} srv_conn;

typedef struct srv_ask {
    struct srv_ask *next;
    srv_conn *conn; /* NULL once the asker went away */
    uint64_t backend_id;
    int started;             /* backend accepted it (cancel applies) */
    char req_id[SRV_ID_MAX]; /* the client's id as compact JSON */
    char stream[SVLM_BACKEND_NAME_MAX];
    double t_asked, t_first;
    char *text;
    size_t text_len, text_cap;
    int n_tokens;
    int max_tokens;
    int stopped; /* a stop string ended the text: later tokens are dropped, its cancel is a finish */
} srv_ask;

typedef struct srv_watch {
    struct srv_watch *next;
    svlm_server *srv;
    uint64_t serial;
    srv_conn *conn;
    uint64_t backend_id;
    char req_id[SRV_ID_MAX];
    char stream[SVLM_BACKEND_NAME_MAX];
} srv_watch;

typedef enum { EV_TOKEN = 1, EV_DONE, EV_ALERT, EV_JOB } srv_event_kind;

/* Handed from engine and worker threads to the service thread. */
typedef struct srv_event {
    struct srv_event *next;
    srv_event_kind kind;
    srv_ask *ask;    /* TOKEN, DONE */
    uint64_t serial; /* ALERT: watch serial; JOB: connection serial */
    svlm_backend_done done;
    double video_time, wall; /* ALERT */
    svlm_status status;      /* JOB */
    char job_type[16];       /* JOB: "opened" / "closed" */
    char req_id[SRV_ID_MAX];
    char stream[SVLM_BACKEND_NAME_MAX];
    char error[512];
    size_t len;
    char text[];
} srv_event;

struct svlm_server {
    svlm_server_config cfg;
    svlm_server_backend be;
    svlm_backend_info info;
    struct lws_context *ctx;
    struct lws_vhost *vhost;
    int port;
    char listen_addr[64]; /* the numeric address (libwebsockets keeps a pointer to it) */
    atomic_int stop;
    double t_start;

    pthread_mutex_t lock; /* guards events, alive and jobs */
    pthread_cond_t cond;
    srv_event *ev_head, *ev_tail;
    int outstanding_asks; /* asks whose on_done has not run yet */
    int jobs;             /* open/close worker threads running */
    int alive;            /* lws context exists: callbacks may wake it */

    srv_conn *clients;    /* websocket clients */
    srv_conn *http_conns; /* HTTP connections */
    int n_clients;
    uint64_t next_serial;
    srv_ask *asks;
    int n_asks;
    srv_watch *watches;
    int pending_opens;
    /* the streams a close job is closing: no watch may start on one (it would outlive the stream,
     * the close having ended the stream's watches already when it reports) */
    struct srv_closing {
        struct srv_closing *next;
        char name[SVLM_BACKEND_NAME_MAX];
    } * closing_streams;
    lws_sorted_usec_list_t tick;
    srv_metrics metrics;
    /* last encoded snapshot per stream (a small cache: the page polls once a second) */
    struct {
        char name[SVLM_BACKEND_NAME_MAX];
        int64_t index;
        srv_msg *jpeg;
    } snaps[8];
};

/* ---- server_util.c ---- */
double srv_now(void);
srv_msg *srv_msg_new(const void *data, size_t len);
void srv_queue_push(srv_queue *q, srv_msg *m);
srv_msg *srv_queue_pop(srv_queue *q);
void srv_queue_clear(srv_queue *q);
int srv_stream_name_ok(const char *s);
void srv_utf8_fix(char *s); /* in place: a cut sequence at the end dropped, other bad bytes '?' */
/* Reads "token=" from the URL query or "Authorization: Bearer" into buf (1 = found). */
int srv_presented_token(struct lws *wsi, char *buf, size_t cap);
int srv_authorized(svlm_server *srv, struct lws *wsi);
json_t *srv_status_json(const svlm_backend_stream_status *st);

/* ---- server_origin.c ---- */
/* NULL when a browser's request may be served (by its Origin and Host headers), else why not.
 * cors (cap bytes, or NULL): the Origin when it is an allowed other site's, to echo in
 * Access-Control-Allow-Origin (the page's own needs none); "" otherwise. */
const char *srv_origin_refusal(const svlm_server *srv, struct lws *wsi, char *cors, size_t cap);

/* ---- server_events.c ---- */
extern const svlm_backend_ask_cb srv_ask_cb_template;
void srv_event_push(svlm_server *srv, srv_event *ev);
void srv_events_drain(svlm_server *srv);
void srv_ask_on_token(void *user, const char *text, size_t len);
void srv_ask_on_done(void *user, const svlm_backend_done *done);
/* The user pointer given to the backend for an ask: the ask plus its server. */
typedef struct srv_ask_ticket {
    svlm_server *srv;
    srv_ask *ask;
} srv_ask_ticket;
srv_ask *srv_ask_start(svlm_server *srv, srv_conn *conn, const svlm_backend_ask_req *req, const char *req_id,
                       const char **code, svlm_err *err);
void srv_ask_cancel(svlm_server *srv, srv_ask *ask);
/* The error code for a failed answer: "question_too_long", "invalid_image" (had_images) or
 * "answer_failed". */
const char *srv_fail_code(const svlm_backend_done *d, int had_images);
void srv_watch_alert(void *user, const svlm_backend_alert *alert);
/* Runs backend open/close on a worker thread; the reply comes back as an EV_JOB. */
int srv_job_start(svlm_server *srv, srv_conn *conn, const char *type, const char *req_id, const char *stream,
                  const char *uri, double fps, const char *options);
/* Whether a close job is closing the stream; its end (the closed event, or a job never started). */
int srv_closing_find(const svlm_server *srv, const char *stream);
void srv_closing_end(svlm_server *srv, const char *stream);

/* ---- server_ws.c ---- */
void srv_ws_send_json(svlm_server *srv, srv_conn *c, json_t *msg); /* steals msg */
void srv_ws_error(svlm_server *srv, srv_conn *c, const char *req_id, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
int srv_ws_established(svlm_server *srv, srv_conn *c);
void srv_ws_receive(svlm_server *srv, srv_conn *c, const void *in, size_t len);
int srv_ws_writeable(svlm_server *srv, srv_conn *c);
void srv_ws_closed(svlm_server *srv, srv_conn *c);
void srv_ws_tick(svlm_server *srv);
srv_conn *srv_find_conn(svlm_server *srv, uint64_t serial);
/* Builds a reply object {"type": type, "id": <req_id>} (req_id is compact JSON or ""). */
json_t *srv_reply(const char *type, const char *req_id);

/* ---- server_http.c ---- */
int srv_http_request(svlm_server *srv, srv_conn *c, const char *uri);
int srv_http_body(svlm_server *srv, srv_conn *c, const void *in, size_t len);
int srv_http_body_done(svlm_server *srv, srv_conn *c);
int srv_http_writeable(svlm_server *srv, srv_conn *c);
void srv_http_closed(svlm_server *srv, srv_conn *c);
/* Queues a whole response and asks for a writeable callback (returns 0, or -1 to close). */
int srv_http_respond(srv_conn *c, int status, const char *type, const void *body, size_t len);
int srv_http_respond_json(srv_conn *c, int status, json_t *body); /* steals body */
int srv_http_error(srv_conn *c, int status, const char *code, const char *msg);
/* The same naming the request's parameter at fault (OpenAI's "param"; NULL: null). */
int srv_http_error_param(srv_conn *c, int status, const char *code, const char *msg, const char *param);
/* A response's status line and common headers (CORS, and Allow, WWW-Authenticate or Retry-After
 * by status): len LWS_ILLEGAL_HTTP_CONTENT_LEN for none (the close ends the body). */
int srv_http_head(srv_conn *c, int status, const char *type, lws_filepos_t len, unsigned char *start,
                  unsigned char **p, unsigned char *end);
/* Whether answers queued to clients are still being written (a stopping server waits for them). */
int srv_writes_pending(const svlm_server *srv);

/* ---- server_openai.c ---- */
int srv_openai_chat(svlm_server *srv, srv_conn *c);
/* The ask's text grew: stop strings are looked for, and a streaming answer sends what it may. */
void srv_openai_token(svlm_server *srv, srv_conn *c, srv_ask *ask);
void srv_openai_reset(srv_conn *c); /* frees a request's stop strings */
void srv_openai_done(srv_conn *c, srv_ask *ask, const svlm_backend_done *done);

/* ---- server_snapshot.c ---- */
int srv_snapshot(svlm_server *srv, srv_conn *c, const char *stream);
void srv_snapshots_free(svlm_server *srv);

#endif
