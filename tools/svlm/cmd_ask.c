/* svlm ask URL STREAM QUESTION: asks a running `svlm serve` over its websocket protocol and
 * prints the answer's tokens as they arrive. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#ifndef SVLM_HAVE_SERVER
int cmd_ask(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr,
            "svlm ask: not built with the server libraries (install libwebsockets-dev and libjansson-dev, "
            "then rebuild)\n");
    return 2;
}
#else
#include <jansson.h>
#include <libwebsockets.h>

typedef struct ask_client {
    char *out[3]; /* messages still to send */
    int n_out, sent;
    char *rx;
    size_t rx_len;
    int json, finished, rc, cancel_sent, established;
    const char *req_id;
} ask_client;

/* Ctrl-C counts here: the first cancels the question on the server (its "done" ends the
 * run), a second one, or a first before the connection is up, exits at once. */
static volatile sig_atomic_t interrupted;
static void on_sigint(int sig) {
    (void)sig;
    if (interrupted < 2) interrupted++;
}

static void usage(FILE *f) {
    fprintf(f, "usage: svlm ask [options] URL STREAM QUESTION\n"
               "  URL                 ws://HOST:PORT (the path defaults to /v1/ws), or the page's "
               "http://HOST:PORT/\n"
               "  --max-tokens N      answer length limit (256)\n"
               "  --temperature T     0 = greedy (0)\n"
               "  --top-p P           with a temperature: sample from the top tokens up to P (1)\n"
               "  --seed S            with a temperature: the draw's seed (a fresh one)\n"
               "  --token-file FILE   the server's token (or env SVLM_TOKEN)\n"
               "  --timeout S         give up after S seconds (120)\n"
               "  --json              print every server message as a JSON line\n");
}

static void handle(ask_client *a, const char *text, size_t len) {
    json_t *m = json_loadb(text, len, 0, NULL);
    const char *type = m ? json_string_value(json_object_get(m, "type")) : NULL;
    if (a->json) {
        fwrite(text, 1, len, stdout);
        fputc('\n', stdout);
        fflush(stdout);
    }
    if (!type) {
        fprintf(stderr, "svlm ask: the server sent something that is not a protocol message\n");
        a->finished = 1, a->rc = 1;
    } else if (!strcmp(type, "token")) {
        if (!a->json) {
            const char *t = json_string_value(json_object_get(m, "text"));
            fputs(t ? t : "", stdout);
            fflush(stdout);
        }
    } else if (!strcmp(type, "done")) {
        if (!a->json) fputc('\n', stdout);
        if (json_is_true(json_object_get(m, "cancelled"))) fprintf(stderr, "svlm ask: cancelled\n");
        a->finished = 1;
    } else if (!strcmp(type, "error")) {
        const char *code = json_string_value(json_object_get(m, "code"));
        const char *msg = json_string_value(json_object_get(m, "message"));
        fprintf(stderr, "svlm ask: %s: %s\n", code ? code : "error", msg ? msg : "(no message)");
        if (code && !strcmp(code, "unauthorized"))
            fprintf(stderr, "svlm ask: give the server's token with --token-file FILE or $SVLM_TOKEN\n");
        a->finished = 1, a->rc = 1;
    }
    json_decref(m);
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in, size_t len) {
    (void)user;
    ask_client *a = lws_context_user(lws_get_context(wsi));
    switch (reason) {
    case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
        fprintf(stderr,
                "svlm ask: cannot connect: %s (is 'svlm serve' running and listening at that address?)\n",
                in ? (const char *)in : "unknown error");
        a->finished = 1, a->rc = 1;
        return 0;
    case LWS_CALLBACK_CLIENT_ESTABLISHED:
        a->established = 1;
        lws_callback_on_writable(wsi);
        return 0;
    case LWS_CALLBACK_CLIENT_WRITEABLE:
        if (interrupted && !a->cancel_sent && a->sent == a->n_out) {
            char msg[200];
            snprintf(msg, sizeof msg, "{\"type\":\"cancel\",\"id\":%s}", a->req_id);
            unsigned char buf[LWS_PRE + 256];
            size_t n = strlen(msg);
            memcpy(buf + LWS_PRE, msg, n);
            a->cancel_sent = 1;
            return lws_write(wsi, buf + LWS_PRE, n, LWS_WRITE_TEXT) < (int)n ? -1 : 0;
        }
        if (a->sent < a->n_out) {
            size_t n = strlen(a->out[a->sent]);
            unsigned char *buf = malloc(LWS_PRE + n);
            if (!buf) return -1;
            memcpy(buf + LWS_PRE, a->out[a->sent], n);
            int w = lws_write(wsi, buf + LWS_PRE, n, LWS_WRITE_TEXT);
            free(buf);
            if (w < (int)n) return -1;
            if (++a->sent < a->n_out) lws_callback_on_writable(wsi);
        }
        return 0;
    case LWS_CALLBACK_CLIENT_RECEIVE: {
        char *p = realloc(a->rx, a->rx_len + len + 1);
        if (!p) return -1;
        a->rx = p;
        memcpy(a->rx + a->rx_len, in, len);
        a->rx_len += len;
        if (lws_is_final_fragment(wsi)) {
            handle(a, a->rx, a->rx_len);
            a->rx_len = 0;
        }
        return a->finished ? -1 : 0;
    }
    case LWS_CALLBACK_CLIENT_CLOSED:
        if (!a->finished) {
            fprintf(stderr, "svlm ask: the server closed the connection\n");
            a->finished = 1, a->rc = 1;
        }
        return 0;
    default: return 0;
    }
}

static int read_token(const char *path, char *buf, size_t cap) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "svlm ask: cannot read --token-file %s\n", path);
        return -1;
    }
    size_t n = fread(buf, 1, cap - 1, f);
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        fprintf(stderr, "svlm ask: cannot read --token-file %s\n", path);
        return -1;
    }
    buf[n] = 0;
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' || buf[n - 1] == '\t'))
        buf[--n] = 0;
    if (n == cap - 1) { /* (a cut token would only meet "wrong token") */
        fprintf(stderr, "svlm ask: the token in %s is longer than %zu characters\n", path, cap - 2);
        return -1;
    }
    return 0;
}

/* The HOST[:PORT] of a ws:// URL: a host, and a port from 1 to 65535 when there is one. */
static int url_authority_ok(const char *url) {
    const char *p = strstr(url, "://");
    if (!p) return 0;
    p += 3;
    size_t len = strcspn(p, "/?#");
    const char *end = p + len, *colon = NULL, *host_end = p;
    if (*p == '[') { /* [IPv6]:PORT */
        const char *rb = memchr(p, ']', len);
        if (!rb || rb == p + 1) return 0;
        host_end = rb + 1;
        if (host_end < end && *host_end != ':') return 0;
        colon = host_end < end ? host_end : NULL;
    } else {
        colon = memchr(p, ':', len);
        host_end = colon ? colon : end;
    }
    if (host_end == p) return 0;
    if (!colon) return 1;
    long port = 0;
    if (colon + 1 == end) return 0;
    for (const char *q = colon + 1; q < end; q++) {
        if (*q < '0' || *q > '9') return 0;
        port = port * 10 + (*q - '0');
        if (port > 65535) return 0;
    }
    return port >= 1;
}

int cmd_ask(int argc, char **argv) {
    const char *pos[3];
    int n_pos = 0;
    long long max_tokens = 256, seed = -1;
    double temperature = 0, top_p = 1, timeout = 120;
    char token[320] = "";
    ask_client a = {0};
    if (getenv("SVLM_TOKEN")) {
        if (strlen(getenv("SVLM_TOKEN")) >= sizeof token - 1) {
            fprintf(stderr, "svlm ask: $SVLM_TOKEN is longer than %zu characters\n", sizeof token - 2);
            return 2;
        }
        snprintf(token, sizeof token, "%s", getenv("SVLM_TOKEN"));
    }
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--json")) {
            a.json = 1;
        } else if (!strcmp(argv[i], "--max-tokens")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_int("--max-tokens", v, 1, 4096, &max_tokens))
                return 2;
        } else if (!strcmp(argv[i], "--temperature")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_float("--temperature", v, 0, 2, &temperature))
                return 2;
        } else if (!strcmp(argv[i], "--top-p")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_float("--top-p", v, 0, 1, &top_p)) return 2;
        } else if (!strcmp(argv[i], "--seed")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_int("--seed", v, 0, INT64_MAX, &seed)) return 2;
        } else if (!strcmp(argv[i], "--timeout")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_float("--timeout", v, 0.1, 86400, &timeout)) return 2;
        } else if (!strcmp(argv[i], "--token-file")) {
            if (!(v = cli_value(argc, argv, &i)) || read_token(v, token, sizeof token)) return 2;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "svlm ask: unknown option %s\n", argv[i]);
            usage(stderr);
            return 2;
        } else if (n_pos < 3) {
            pos[n_pos++] = argv[i];
        } else {
            fprintf(stderr, "svlm ask: too many arguments\n");
            return 2;
        }
    }
    if (n_pos != 3) {
        usage(stderr);
        return 2;
    }
    char url[1024];
    snprintf(url, sizeof url, "%s", pos[0]);
    const char *scheme, *host, *path;
    int port;
    const char *auth = strstr(url, "://");
    if (auth && memchr(auth + 3, '@', strcspn(auth + 3, "/?#"))) { /* user:password@: not echoed */
        fprintf(stderr,
                "svlm ask: the URL carries a user or password; svlm serve checks a token instead: give "
                "ws://HOST:PORT and --token-file FILE (or $SVLM_TOKEN)\n");
        return 2;
    }
    /* the page's address (http://HOST:PORT/, which svlm serve prints) names the same server: the
     * websocket is on the same port */
    int tls = 0;
    if (strlen(pos[0]) >= sizeof url || !url_authority_ok(url) ||
        lws_parse_uri(url, &scheme, &host, &port, &path) ||
        !((tls = !strcmp(scheme, "wss") || !strcmp(scheme, "https")) || !strcmp(scheme, "ws") ||
          !strcmp(scheme, "http"))) {
        fprintf(stderr,
                "svlm ask: URL must look like ws://HOST:PORT or wss://HOST:PORT (PORT from 1 to 65535; the "
                "page's "
                "http://HOST:PORT/ works too), not '%s'\n",
                pos[0]);
        return 2;
    }
    char full_path[512];
    while (*path == '/')
        path++; /* lws_parse_uri leaves the leading slash off, or not */
    snprintf(full_path, sizeof full_path, "/%s", path[0] ? path : "v1/ws");

    a.req_id = "\"q1\"";
    json_t *hello = json_pack("{s:s, s:i, s:i}", "type", "hello", "version", 1, "status_interval", 0);
    if (token[0]) json_object_set_new(hello, "token", json_string(token));
    json_t *ask =
        json_pack("{s:s, s:s, s:s, s:s, s:I, s:f}", "type", "ask", "id", "q1", "stream", pos[1], "question",
                  pos[2], "max_tokens", (json_int_t)max_tokens, "temperature", temperature);
    if (ask && top_p < 1) json_object_set_new(ask, "top_p", json_real(top_p));
    if (ask && seed >= 0) json_object_set_new(ask, "seed", json_integer((json_int_t)seed));
    if (!hello || !ask) {
        fprintf(stderr, "svlm ask: the stream name and question must be UTF-8\n");
        json_decref(hello);
        json_decref(ask);
        return 2;
    }
    a.out[a.n_out++] = json_dumps(hello, JSON_COMPACT);
    a.out[a.n_out++] = json_dumps(ask, JSON_COMPACT);
    json_decref(hello);
    json_decref(ask);

    static const struct lws_protocols protocols[] = {{"svlm-client", callback, 0, 65536, 0, NULL, 0},
                                                     {NULL, NULL, 0, 0, 0, NULL, 0}};
    lws_set_log_level(LLL_ERR, NULL);
    struct lws_context_creation_info info;
    memset(&info, 0, sizeof info);
    info.port = CONTEXT_PORT_NO_LISTEN;
    info.protocols = protocols;
    info.user = &a;
    if (tls) info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
    struct lws_context *ctx = lws_create_context(&info);
    if (!ctx) {
        fprintf(stderr, "svlm ask: cannot start libwebsockets\n");
        return 1;
    }
    struct lws_client_connect_info cc;
    memset(&cc, 0, sizeof cc);
    cc.context = ctx;
    cc.address = host;
    cc.port = port;
    cc.path = full_path;
    cc.host = host;
    cc.origin = NULL; /* not a browser: no Origin (the server refuses other sites' pages) */
    cc.local_protocol_name = "svlm-client";
    cc.ssl_connection = tls ? LCCSCF_USE_SSL : 0;
    struct lws *wsi = lws_client_connect_via_info(&cc);
    if (!wsi) {
        fprintf(stderr, "svlm ask: cannot connect to %s\n", pos[0]);
        a.rc = 1;
        a.finished = 1;
    }
    signal(SIGINT, on_sigint);
    double t0 = cli_now();
    int cancel_requested = 0;
    double t_cancel = 0;
    while (!a.finished) {
        /* not connected yet, a second Ctrl-C, or no reply to the cancel within 2 s: leave now */
        if (interrupted &&
            (!a.established || interrupted > 1 || (cancel_requested && cli_now() - t_cancel > 2.0))) {
            fprintf(stderr, "\nsvlm ask: interrupted\n");
            a.rc = 130;
            break;
        }
        if (interrupted && !cancel_requested && wsi) {
            cancel_requested = 1;
            t_cancel = cli_now();
            lws_callback_on_writable(wsi);
        }
        if (cli_now() - t0 > timeout) {
            fprintf(stderr, "svlm ask: no answer within %g s\n", timeout);
            a.rc = 1;
            break;
        }
        if (lws_service(ctx, 100) < 0) break;
    }
    lws_context_destroy(ctx);
    for (int i = 0; i < a.n_out; i++)
        free(a.out[i]);
    free(a.rx);
    return a.rc;
}
#endif
