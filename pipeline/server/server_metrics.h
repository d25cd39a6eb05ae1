/* The server's own counters and histograms, and the Prometheus text rendering of them together
 * with the engine's per-stream figures. Service thread only. */
#ifndef SVLM_PIPELINE_SERVER_METRICS_H
#define SVLM_PIPELINE_SERVER_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "pipeline/server/server_backend.h"

#define SRV_HIST_BUCKETS 12

typedef struct srv_hist {
    double le[SRV_HIST_BUCKETS]; /* upper bounds, ascending */
    int n_le;
    int64_t counts[SRV_HIST_BUCKETS]; /* per bucket (not cumulative) */
    int64_t count;
    double sum;
} srv_hist;

typedef struct srv_metrics {
    int64_t questions_ok, questions_cancelled, questions_failed;
    int64_t answer_tokens;
    int64_t ws_messages, ws_errors, http_requests;
    int64_t clients_total, clients_refused, slow_reader_disconnects;
    int64_t alerts;
    srv_hist ttft_s, tokens_per_s, queue_wait_s;
} srv_metrics;

void srv_metrics_init(srv_metrics *m);
void srv_hist_add(srv_hist *h, double v);

typedef struct srv_text {
    char *buf;
    size_t len, cap;
    int failed;
} srv_text;
void srv_text_printf(srv_text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Appends the exposition of m, the streams and the live gauges to out. */
void srv_metrics_render(srv_text *out, const srv_metrics *m, const svlm_backend_stream_status *streams,
                        int n_streams, int clients, int questions_active, double uptime_s);
/* The compute backend's gauges (name, GPU or not, device memory where it has its own). */
void srv_metrics_render_compute(srv_text *out, const svlm_backend_compute *c);

#endif
