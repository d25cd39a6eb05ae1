/* Prometheus text exposition (version 0.0.4) of the server's and the engine's figures. */
#include "pipeline/server/server_metrics.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void hist_init(srv_hist *h, const double *le, int n) {
    memset(h, 0, sizeof *h);
    h->n_le = n;
    memcpy(h->le, le, (size_t)n * sizeof *le);
}

void srv_metrics_init(srv_metrics *m) {
    memset(m, 0, sizeof *m);
    static const double ttft[] = {0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.7, 1, 2, 5, 10};
    static const double tps[] = {1, 2, 5, 10, 20, 50, 100, 200, 500, 1000};
    static const double wait[] = {0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
    hist_init(&m->ttft_s, ttft, (int)(sizeof ttft / sizeof *ttft));
    hist_init(&m->tokens_per_s, tps, (int)(sizeof tps / sizeof *tps));
    hist_init(&m->queue_wait_s, wait, (int)(sizeof wait / sizeof *wait));
}

void srv_hist_add(srv_hist *h, double v) {
    int i = 0;
    while (i < h->n_le && v > h->le[i])
        i++;
    if (i < h->n_le) h->counts[i]++;
    h->count++;
    h->sum += v;
}

void srv_text_printf(srv_text *t, const char *fmt, ...) {
    if (t->failed) return;
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        size_t room = t->cap - t->len;
        int n = vsnprintf(t->buf ? t->buf + t->len : NULL, t->buf ? room : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = 1;
            return;
        }
        if (t->buf && (size_t)n < room) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap ? t->cap * 2 : 4096;
        while (cap - t->len <= (size_t)n)
            cap *= 2;
        char *b = realloc(t->buf, cap);
        if (!b) {
            t->failed = 1;
            return;
        }
        t->buf = b;
        t->cap = cap;
    }
}

/* Label values: escape backslash, quote and newline as the format requires. */
static const char *label(const char *s, char *buf, size_t cap) {
    size_t o = 0;
    for (; *s && o + 3 < cap; s++) {
        if (*s == '\\' || *s == '"') {
            buf[o++] = '\\';
            buf[o++] = *s;
        } else if (*s == '\n') {
            buf[o++] = '\\';
            buf[o++] = 'n';
        } else
            buf[o++] = *s;
    }
    buf[o] = 0;
    return buf;
}

static void hist(srv_text *t, const char *name, const char *help, const srv_hist *h) {
    srv_text_printf(t, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    int64_t cum = 0;
    for (int i = 0; i < h->n_le; i++) {
        cum += h->counts[i];
        srv_text_printf(t, "%s_bucket{le=\"%g\"} %lld\n", name, h->le[i], (long long)cum);
    }
    srv_text_printf(t, "%s_bucket{le=\"+Inf\"} %lld\n%s_sum %.6f\n%s_count %lld\n", name, (long long)h->count,
                    name, h->sum, name, (long long)h->count);
}

static void head(srv_text *t, const char *name, const char *type, const char *help) {
    srv_text_printf(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

#define PER_STREAM(metric, type, help, fmt, expr)                                                            \
    do {                                                                                                     \
        head(out, metric, type, help);                                                                       \
        for (int i = 0; i < n_streams; i++) {                                                                \
            const svlm_backend_stream_status *s = &streams[i];                                               \
            srv_text_printf(out, "%s{stream=\"%s\"} " fmt "\n", metric, label(s->name, lb, sizeof lb),       \
                            expr);                                                                           \
        }                                                                                                    \
    } while (0)

void srv_metrics_render(srv_text *out, const srv_metrics *m, const svlm_backend_stream_status *streams,
                        int n_streams, int clients, int questions_active, double uptime_s) {
    char lb[160], lb2[64];
    head(out, "svlm_uptime_seconds", "gauge", "Seconds since the server started.");
    srv_text_printf(out, "svlm_uptime_seconds %.3f\n", uptime_s);
    head(out, "svlm_streams", "gauge", "Streams open.");
    srv_text_printf(out, "svlm_streams %d\n", n_streams);
    PER_STREAM("svlm_frames_in_total", "counter", "Sampled frames that entered the engine.", "%lld",
               (long long)s->frames_in);
    PER_STREAM("svlm_frames_dropped_total", "counter", "Frames dropped at ingest.", "%lld",
               (long long)s->drops);
    PER_STREAM("svlm_reconnects_total", "counter", "Source reconnects.", "%lld", (long long)s->reconnects);
    PER_STREAM("svlm_fps_in", "gauge", "Recent frames per second into the engine.", "%.3f", s->fps_in);
    PER_STREAM("svlm_encoder_seconds_total", "counter", "Vision encoder time over all frames.", "%.6f",
               s->encoder_ms_sum / 1000.0);
    PER_STREAM("svlm_prefill_seconds_total", "counter", "Frame prefill time over all frames.", "%.6f",
               s->prefill_ms_sum / 1000.0);
    PER_STREAM("svlm_video_seconds", "gauge", "Seconds of video ingested.", "%.3f", s->video_time);
    head(out, "svlm_memory_bytes", "gauge", "Memory per stream and tier.");
    for (int i = 0; i < n_streams; i++)
        for (int k = 0; k < streams[i].n_tiers && k < SVLM_BACKEND_MAX_TIERS; k++)
            srv_text_printf(out, "svlm_memory_bytes{stream=\"%s\",tier=\"%s\"} %lld\n",
                            label(streams[i].name, lb, sizeof lb),
                            label(streams[i].tiers[k].name, lb2, sizeof lb2),
                            (long long)streams[i].tiers[k].bytes);
    head(out, "svlm_questions_total", "counter", "Answers finished, by outcome.");
    srv_text_printf(out, "svlm_questions_total{outcome=\"ok\"} %lld\n", (long long)m->questions_ok);
    srv_text_printf(out, "svlm_questions_total{outcome=\"cancelled\"} %lld\n",
                    (long long)m->questions_cancelled);
    srv_text_printf(out, "svlm_questions_total{outcome=\"error\"} %lld\n", (long long)m->questions_failed);
    head(out, "svlm_questions_active", "gauge", "Answers in progress.");
    srv_text_printf(out, "svlm_questions_active %d\n", questions_active);
    head(out, "svlm_answer_tokens_total", "counter", "Answer tokens sent.");
    srv_text_printf(out, "svlm_answer_tokens_total %lld\n", (long long)m->answer_tokens);
    hist(out, "svlm_ttft_seconds", "Time from a question to its first answer token, as the server saw it.",
         &m->ttft_s);
    hist(out, "svlm_tokens_per_second", "Answer decoding speed per question.", &m->tokens_per_s);
    hist(out, "svlm_queue_wait_seconds", "Time a question waited before its prefill started.",
         &m->queue_wait_s);
    head(out, "svlm_clients", "gauge", "Websocket clients connected.");
    srv_text_printf(out, "svlm_clients %d\n", clients);
    head(out, "svlm_clients_total", "counter", "Websocket clients accepted.");
    srv_text_printf(out, "svlm_clients_total %lld\n", (long long)m->clients_total);
    head(out, "svlm_clients_refused_total", "counter",
         "Websocket clients refused (the limit, or another site's page).");
    srv_text_printf(out, "svlm_clients_refused_total %lld\n", (long long)m->clients_refused);
    head(out, "svlm_slow_reader_disconnects_total", "counter", "Clients disconnected for falling behind.");
    srv_text_printf(out, "svlm_slow_reader_disconnects_total %lld\n", (long long)m->slow_reader_disconnects);
    head(out, "svlm_ws_messages_total", "counter", "Websocket messages received.");
    srv_text_printf(out, "svlm_ws_messages_total %lld\n", (long long)m->ws_messages);
    head(out, "svlm_ws_errors_total", "counter", "Error replies sent.");
    srv_text_printf(out, "svlm_ws_errors_total %lld\n", (long long)m->ws_errors);
    head(out, "svlm_http_requests_total", "counter", "HTTP requests.");
    srv_text_printf(out, "svlm_http_requests_total %lld\n", (long long)m->http_requests);
    head(out, "svlm_alerts_total", "counter", "Watch alerts pushed.");
    srv_text_printf(out, "svlm_alerts_total %lld\n", (long long)m->alerts);
}

void srv_metrics_render_compute(srv_text *out, const svlm_backend_compute *c) {
    char lb[160];
    head(out, "svlm_compute_info", "gauge", "The backend that computes, and whether it is a GPU.");
    srv_text_printf(out, "svlm_compute_info{backend=\"%s\",gpu=\"%d\"} 1\n", label(c->backend, lb, sizeof lb),
                    c->gpu);
    if (!c->device_known) return;
    head(out, "svlm_device_memory_bytes", "gauge",
         "Device memory in use (all of it, as the driver counts) and the device's size.");
    srv_text_printf(out, "svlm_device_memory_bytes{kind=\"used\"} %zu\n", c->device_used);
    if (c->device_total)
        srv_text_printf(out, "svlm_device_memory_bytes{kind=\"total\"} %zu\n", c->device_total);
}
