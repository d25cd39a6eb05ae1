/*
 * SVLM_CUDA_PROFILE=1: host time per CUDA op, printed when the backend goes. In deferred mode an
 * op's time is what it costs the host to queue it (launch, staging, weight lookup), and the waits
 * for the GPU show up on their own line, so the table says whether a run is bound by the host's
 * launches or by the GPU.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/cuda/cuda_internal.h"

static double now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec * 1e-3;
}

void cu_prof_init(svlm_kernels *k) {
    const char *e = getenv("SVLM_CUDA_PROFILE");
    CU(k)->prof = e && *e && strcmp(e, "0");
}

void cu_prof_start(svlm_kernels *k) {
    if (CU(k)->prof) CU(k)->prof_t0 = now_us();
}

void cu_prof_stop(svlm_kernels *k, const char *what) {
    cu_ctx *c = CU(k);
    if (!c->prof) return;
    double dt = now_us() - c->prof_t0;
    int i = 0;
    while (i < c->n_prof && strcmp(c->prof_ops[i].what, what))
        i++;
    if (i == c->n_prof) {
        if (c->n_prof == CU_PROF_OPS) return;
        c->prof_ops[c->n_prof++].what = what;
    }
    c->prof_ops[i].calls++;
    c->prof_ops[i].us += dt;
}

static int by_time(const void *a, const void *b) {
    double x = ((const cu_prof_op *)a)->us, y = ((const cu_prof_op *)b)->us;
    return x < y ? 1 : x > y ? -1 : 0;
}

void cu_prof_report(svlm_kernels *k) {
    cu_ctx *c = CU(k);
    if (!c->prof || !c->n_prof) return;
    qsort(c->prof_ops, (size_t)c->n_prof, sizeof c->prof_ops[0], by_time);
    double total = 0;
    for (int i = 0; i < c->n_prof; i++)
        total += c->prof_ops[i].us;
    fprintf(stderr, "svlm: CUDA profile of %s (host time per op; waits for the GPU on their own lines)\n",
            k->name);
    fprintf(stderr, "  %-28s %10s %10s %9s %6s\n", "op", "calls", "total ms", "us/call", "share");
    for (int i = 0; i < c->n_prof; i++) {
        const cu_prof_op *o = &c->prof_ops[i];
        fprintf(stderr, "  %-28s %10ld %10.1f %9.2f %5.1f%%\n", o->what, o->calls, o->us / 1000,
                o->us / (double)o->calls, 100 * o->us / total);
    }
}
