/*
 * The server over the deterministic fake engine (test_server_fake.h).
 *
 * Run by ctest: a self-check of the HTTP side through a raw socket, the token comparison, the
 * loopback rule and the config checks.
 * Run with SVLM_SERVER_HOST=1 (by tests/py/test_server_*.py): serves on 127.0.0.1, prints
 * "PORT n", and stops when stdin closes. SVLM_SERVER_TOKEN sets a token, SVLM_SERVER_WEB the
 * page folder, SVLM_SERVER_STREAMS "name=uri,..." opens streams at start, SVLM_SERVER_LIMITS
 * "key=value,..." overrides limits (clients, per_client, total, streams, rate, message_bytes,
 * send_queue_bytes, status_interval, watches, auth_timeout), SVLM_SERVER_ALLOW_ORIGIN the allowed
 * origins, SVLM_SERVER_LOCAL_OPEN (set) lets clients without a token open pipelines and files,
 * SVLM_FAKE_TICK_MS the token interval (5). SIGTERM stops it as it stops svlm serve.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pipeline/server/server.h"
#include "test.h"
#include "test_server_fake.h"

static void *serve_thread(void *arg) {
    svlm_server_run(arg, NULL);
    return NULL;
}

static void apply_limits(svlm_server_config *cfg, const char *spec) {
    char buf[512];
    snprintf(buf, sizeof buf, "%s", spec);
    for (char *save = NULL, *kv = strtok_r(buf, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        if (!eq) continue;
        *eq = 0;
        double v = atof(eq + 1);
        if (!strcmp(kv, "clients"))
            cfg->max_clients = (int)v;
        else if (!strcmp(kv, "per_client"))
            cfg->max_questions_per_client = (int)v;
        else if (!strcmp(kv, "total"))
            cfg->max_questions_total = (int)v;
        else if (!strcmp(kv, "streams"))
            cfg->max_streams = (int)v;
        else if (!strcmp(kv, "rate"))
            cfg->max_messages_per_s = v;
        else if (!strcmp(kv, "message_bytes"))
            cfg->max_message_bytes = (size_t)v;
        else if (!strcmp(kv, "send_queue_bytes"))
            cfg->max_send_queue_bytes = (size_t)v;
        else if (!strcmp(kv, "status_interval"))
            cfg->status_interval_s = v;
        else if (!strcmp(kv, "watches"))
            cfg->max_watches_per_client = (int)v;
        else if (!strcmp(kv, "auth_timeout"))
            cfg->auth_timeout_s = v;
    }
}

static svlm_server *volatile host_srv;
static void on_term(int sig) {
    (void)sig;
    if (host_srv) svlm_server_stop(host_srv);
}

static int host_mode(void) {
    /* SIGTERM for this (main) thread only, so that it ends the wait on stdin below */
    sigset_t term;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &term, NULL);
    svlm_server_config cfg;
    svlm_server_config_default(&cfg);
    cfg.port = getenv("SVLM_SERVER_PORT") ? atoi(getenv("SVLM_SERVER_PORT")) : 0; /* 0: any free one */
    const char *tok = getenv("SVLM_SERVER_TOKEN"), *web = getenv("SVLM_SERVER_WEB");
    if (tok) snprintf(cfg.token, sizeof cfg.token, "%s", tok);
    if (web) snprintf(cfg.web_root, sizeof cfg.web_root, "%s", web);
    cfg.local_open = getenv("SVLM_SERVER_LOCAL_OPEN") != NULL;
    if (getenv("SVLM_SERVER_ALLOW_ORIGIN"))
        snprintf(cfg.allowed_origins, sizeof cfg.allowed_origins, "%s", getenv("SVLM_SERVER_ALLOW_ORIGIN"));
    if (getenv("SVLM_SERVER_LIMITS")) apply_limits(&cfg, getenv("SVLM_SERVER_LIMITS"));
    double tick_ms = getenv("SVLM_FAKE_TICK_MS") ? atof(getenv("SVLM_FAKE_TICK_MS")) : 5;
    svlm_server_backend be;
    fake_engine *fe = fake_engine_start(tick_ms / 1000.0, &be);
    REQUIRE(fe, "fake engine");
    if (getenv("SVLM_SERVER_STREAMS")) {
        char buf[512];
        snprintf(buf, sizeof buf, "%s", getenv("SVLM_SERVER_STREAMS"));
        for (char *save = NULL, *kv = strtok_r(buf, ",", &save); kv; kv = strtok_r(NULL, ",", &save)) {
            char *eq = strchr(kv, '=');
            REQUIRE(eq, "SVLM_SERVER_STREAMS wants name=uri");
            *eq = 0;
            svlm_backend_open_req req = {kv, eq + 1, 1.0, NULL};
            svlm_err err = {0};
            REQUIRE(fake_open(fe, &req, &err) == SVLM_OK, "%s", err.msg);
        }
    }
    svlm_server *srv;
    svlm_err err = {0};
    REQUIRE(svlm_server_create(&srv, &cfg, &be, &err) == SVLM_OK, "%s", err.msg);
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, serve_thread, srv) == 0, "thread");
    host_srv = srv;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term; /* no SA_RESTART: fgets returns */
    sigaction(SIGTERM, &sa, NULL);
    pthread_sigmask(SIG_UNBLOCK, &term, NULL);
    printf("PORT %d\n", svlm_server_port(srv));
    fflush(stdout);
    char line[256];
    while (fgets(line, sizeof line, stdin)) {
    }
    host_srv = NULL;
    svlm_server_stop(srv);
    pthread_join(th, NULL);
    svlm_server_destroy(srv);
    fake_engine_stop(fe);
    return 0;
}

/* One HTTP/1.0 exchange on a fresh connection; returns the whole response (malloc'd). */
static char *http_get(int port, const char *request) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {0};
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a)) {
        if (fd >= 0) close(fd);
        return NULL;
    }
    if (write(fd, request, strlen(request)) < 0) {
        close(fd);
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    ssize_t r;
    while (buf && n + 1 < cap && (r = read(fd, buf + n, cap - 1 - n)) > 0)
        n += (size_t)r;
    close(fd);
    if (buf) buf[n] = 0;
    return buf;
}

int test_main(void) {
    /* token comparison and the loopback rule */
    CHECK(svlm_token_equal("s3cret", "s3cret", 6), "equal tokens");
    CHECK(!svlm_token_equal("s3cret", "s3cres", 6), "last byte differs");
    CHECK(!svlm_token_equal("s3cret", "s3cret!", 7), "longer");
    CHECK(!svlm_token_equal("s3cret", "s3cre", 5), "prefix");
    CHECK(!svlm_token_equal("", "", 0), "an empty token never matches");
    CHECK(svlm_host_is_loopback("127.0.0.1") && svlm_host_is_loopback("127.1.2.3") &&
              svlm_host_is_loopback("::1") && svlm_host_is_loopback("localhost"),
          "loopback");
    CHECK(!svlm_host_is_loopback("0.0.0.0") && !svlm_host_is_loopback("192.168.1.2") &&
              !svlm_host_is_loopback("127.0.0.1x") && !svlm_host_is_loopback("300.0.0.1"),
          "not loopback");

    if (getenv("SVLM_SERVER_HOST")) return host_mode();

    svlm_server_backend be;
    fake_engine *fe = fake_engine_start(0.005, &be);
    REQUIRE(fe, "fake engine");
    svlm_server_config cfg;
    svlm_server_config_default(&cfg);
    cfg.port = 0;
    svlm_server *srv = NULL;
    svlm_err err = {0};

    snprintf(cfg.host, sizeof cfg.host, "0.0.0.0");
    CHECK(svlm_server_create(&srv, &cfg, &be, &err) == SVLM_E_INVALID && !srv && strstr(err.msg, "token"),
          "a non-loopback listen without a token is refused: %s", err.msg);
    snprintf(cfg.host, sizeof cfg.host, "127.0.0.1");
    svlm_server_backend broken = be;
    broken.ask = NULL;
    CHECK(svlm_server_create(&srv, &cfg, &broken, &err) == SVLM_E_INVALID,
          "a backend without ask is refused");
    cfg.max_clients = 0;
    CHECK(svlm_server_create(&srv, &cfg, &be, &err) == SVLM_E_INVALID, "max_clients 0 is refused");
    cfg.max_clients = 8;

    svlm_backend_open_req req = {"cam", "pattern:", 2.0, NULL};
    REQUIRE(fake_open(fe, &req, &err) == SVLM_OK, "open");
    REQUIRE(svlm_server_create(&srv, &cfg, &be, &err) == SVLM_OK, "%s", err.msg);
    int port = svlm_server_port(srv);
    CHECK(port > 0 && port < 65536, "a port was chosen: %d", port);
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, serve_thread, srv) == 0, "thread");

    char *r = http_get(port, "GET /health HTTP/1.0\r\n\r\n");
    CHECK(r && strstr(r, "200 OK") && strstr(r, "\"status\":\"ok\"") && strstr(r, "\"streams\":1"),
          "/health: %s", r ? r : "(no reply)");
    free(r);
    r = http_get(port, "GET /metrics HTTP/1.0\r\n\r\n");
    CHECK(r && strstr(r, "svlm_frames_in_total{stream=\"cam\"}") &&
              strstr(r, "# TYPE svlm_ttft_seconds histogram") &&
              strstr(r, "svlm_memory_bytes{stream=\"cam\",tier=\"kv_text\"} 12288") &&
              strstr(r, "svlm_compute_info{backend=\"fake \\\"gpu\\\"\",gpu=\"1\"} 1") &&
              strstr(r, "svlm_device_memory_bytes{kind=\"used\"} 1234") &&
              strstr(r, "svlm_device_memory_bytes{kind=\"total\"} 5678"),
          "/metrics: %.300s", r ? r : "(no reply)");
    free(r);
    r = http_get(port, "GET /v1/streams/nope/snapshot.jpg HTTP/1.0\r\n\r\n");
    CHECK(r && strstr(r, "404"), "snapshot of an unknown stream: %.200s", r ? r : "(no reply)");
    free(r);
#ifdef SVLM_HAVE_FFMPEG
    r = http_get(port, "GET /v1/streams/cam/snapshot.jpg HTTP/1.0\r\n\r\n");
    char *body = r ? strstr(r, "\r\n\r\n") : NULL;
    CHECK(body && strstr(r, "image/jpeg") && (unsigned char)body[4] == 0xFF && (unsigned char)body[5] == 0xD8,
          "snapshot is a JPEG");
    free(r);
#endif
    r = http_get(port, "GET /../etc/passwd HTTP/1.0\r\n\r\n");
    CHECK(r && !strstr(r, "root:"), "no path traversal");
    free(r);

    svlm_server_stop(srv);
    pthread_join(th, NULL);
    svlm_server_destroy(srv);
    fake_engine_stop(fe);
    return 0;
}
