#include "common/bandwidth.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const uint64_t *buf;
    size_t n;
    int parts;
    uint64_t sums[256];
} bw_job;

static void read_part(void *ctx, int task, int thread) {
    (void)thread;
    bw_job *j = ctx;
    size_t per = j->n / (size_t)j->parts, lo = per * (size_t)task,
           hi = task == j->parts - 1 ? j->n : lo + per;
    uint64_t a = 0, b = 0, c = 0, d = 0;
    for (size_t i = lo; i + 4 <= hi; i += 4) {
        a += j->buf[i];
        b ^= j->buf[i + 1];
        c += j->buf[i + 2];
        d ^= j->buf[i + 3];
    }
    j->sums[task % 256] = a + b + c + d; /* keeps the loads alive */
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

double svlm_measure_read_bandwidth(svlm_pool *pool, size_t bytes, int reps) {
    uint64_t *buf = malloc(bytes);
    if (!buf) return 0;
    memset(buf, 1, bytes);
    bw_job j = {.buf = buf, .n = bytes / sizeof(uint64_t), .parts = svlm_pool_size(pool)};
    double best = 0;
    for (int r = 0; r < reps; r++) {
        double t0 = now_s();
        svlm_pool_run(pool, read_part, &j, j.parts);
        double dt = now_s() - t0;
        if (dt > 0 && bytes / dt > best) best = bytes / dt;
    }
    free(buf);
    return best;
}
