/*
 * Replayed runs (svlm_k_replay_begin/end in kernels.h) as CUDA Graphs. A decode step is some 15
 * small ops per layer, and launching each costs the host more than the GPU's work; a graph of
 * the whole run goes in one launch, and the GPU runs its kernels back to back.
 *
 * Per key: the first run goes as usual (weights get uploaded, buffers sized, nothing that would
 * break a capture is left to happen); the second is captured from the stream and instantiated;
 * later runs skip the ops (kernels.c only hashes their calls) and launch the graph, after
 * checking that the calls hash the same as the recorded ones. The recording holds addresses of
 * staging and scratch buffers and of weights' device copies, so it is made again when one of
 * those moved (cu_generation). A failed capture or a differing hash means the ops did not run:
 * svlm_k_replay_end says so and the caller issues them again; a key that fails a few times is
 * no longer recorded.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cuda/cuda_internal.h"

enum { MAX_FAILS = 4 };

_Thread_local int cu_capturing, cu_capture_failed;

static unsigned generation(const cu_ctx *c) {
    return c->buf_gen * 2654435761u + cu_weights_generation();
}

static void drop_exec(cu_graph *g) {
    if (g->exec) (void)cudaGraphExecDestroy(g->exec);
    g->exec = NULL;
}

/* The entry of (owner, shape), or the least recently used one made over to it. */
static cu_graph *entry_for(cu_ctx *c, const void *owner, uint64_t shape) {
    cu_graph *lru = &c->graphs[0];
    for (int i = 0; i < CU_GRAPHS; i++) {
        cu_graph *g = &c->graphs[i];
        if (g->last_use && g->owner == owner && g->shape == shape) return g;
        if (g->last_use < lru->last_use) lru = g;
    }
    drop_exec(lru);
    memset(lru, 0, sizeof *lru);
    lru->owner = owner;
    lru->shape = shape;
    return lru;
}

void cu_replay_forget(svlm_kernels *k, const void *owner) {
    for (int i = 0; i < CU_GRAPHS; i++) {
        cu_graph *g = &CU(k)->graphs[i];
        if (g->last_use && g->owner == owner) {
            drop_exec(g);
            memset(g, 0, sizeof *g);
        }
    }
}

void cu_graphs_init(svlm_kernels *k) {
    const char *e = getenv("SVLM_CUDA_GRAPHS");
    CU(k)->graphs_on = !(e && !strcmp(e, "0"));
}

void cu_graphs_free(svlm_kernels *k) {
    for (int i = 0; i < CU_GRAPHS; i++)
        drop_exec(&CU(k)->graphs[i]);
}

int cu_replay_begin(svlm_kernels *k, const void *owner, uint64_t shape) {
    cu_ctx *c = CU(k);
    c->graph_mode = REPLAY_OFF;
    if (!c->graphs_on || c->defer <= 0) return REPLAY_OFF;
    cu_graph *g = entry_for(c, owner, shape);
    c->graph_cur = (int)(g - c->graphs);
    g->last_use = ++c->graph_clock;
    if (g->fails >= MAX_FAILS) return REPLAY_OFF;
    if (!g->seen) {
        g->seen = 1;
        return REPLAY_OFF;
    }
    if (g->exec && g->gen == generation(c)) return c->graph_mode = REPLAY_SKIP;
    if (g->exec) { /* a buffer or weight copy moved: run as usual once (uploads happen there, not
                    * inside a capture), record next time */
        drop_exec(g);
        return REPLAY_OFF;
    }
    c->graph_gen0 = generation(c);
    cu_begin(k);
    /* relaxed: other lanes' threads keep allocating and synchronising their own streams */
    if (cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeRelaxed) != cudaSuccess) {
        (void)cudaGetLastError();
        g->fails++;
        cu_prof_stop(k, "replay: capture refused");
        return REPLAY_OFF;
    }
    cu_capturing = 1;
    cu_capture_failed = 0;
    cu_prof_stop(k, "replay: capture begins");
    return c->graph_mode = REPLAY_RECORD;
}

/* Ends a capture: the instantiated (or updated) graph of the run, or NULL when it failed. */
static cudaGraphExec_t finish_capture(cu_ctx *c, cu_graph *g) {
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(c->stream, &graph);
    const int failed = cu_capture_failed || e != cudaSuccess || !graph;
    cu_capturing = 0;
    cu_capture_failed = 0;
    c->n_wb = 0; /* staged outputs of the captured ops never ran: nothing to copy back */
    c->pinned_out = 0;
    (void)cudaGetLastError();
    if (failed) {
        if (graph) (void)cudaGraphDestroy(graph);
        drop_exec(g);
        return NULL;
    }
    if (g->exec) { /* same shape, new addresses or sizes: patch the instantiated graph */
        cudaGraphExecUpdateResultInfo info;
        if (cudaGraphExecUpdate(g->exec, graph, &info) != cudaSuccess) {
            (void)cudaGetLastError();
            drop_exec(g);
        }
    }
    if (!g->exec && cudaGraphInstantiate(&g->exec, graph, 0) != cudaSuccess) {
        (void)cudaGetLastError();
        g->exec = NULL;
    }
    (void)cudaGraphDestroy(graph);
    return g->exec;
}

int cu_replay_end(svlm_kernels *k, uint64_t calls_hash) {
    cu_ctx *c = CU(k);
    const int mode = c->graph_mode;
    c->graph_mode = REPLAY_OFF;
    if (mode == REPLAY_OFF) return 1;
    cu_graph *g = &c->graphs[c->graph_cur];
    cu_begin(k);
    if (mode == REPLAY_RECORD) {
        if (!finish_capture(c, g)) {
            g->fails++;
            cu_prof_stop(k, "replay: capture failed (ops issued again)");
            return 0;
        }
        g->hash = calls_hash;
        g->gen = generation(c);
        if (g->gen != c->graph_gen0) { /* something moved while recording: its old address is in it */
            drop_exec(g);
            g->fails++;
            cu_prof_stop(k, "replay: buffers moved while recording (ops issued again)");
            return 0;
        }
    } else if (calls_hash != g->hash) { /* not the recorded run: record again next time */
        g->fails++;
        drop_exec(g);
        cu_prof_stop(k, "replay: calls differ (ops issued again)");
        return 0;
    }
    cu_check(cudaGraphLaunch(g->exec, c->stream), "launching a recorded run");
    cu_prof_stop(k, mode == REPLAY_RECORD ? "replay: recorded and launched" : "replay: launched");
    return 1;
}
