/*
 * Persistent worker pool. A run publishes (fn, ctx, n_tasks) under a new generation number;
 * workers notice it by spinning briefly on the generation (decode issues hundreds of short
 * runs per token, so waking through a condition variable each time would cost more than the
 * work) and fall back to sleeping on a condition variable when the pool stays idle.
 * Tasks are handed out through an atomic counter, so uneven tasks balance themselves.
 */
#include "common/threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SVLM_CPU_RELAX() _mm_pause()
#else
#define SVLM_CPU_RELAX() ((void)0)
#endif

/* How long a worker polls for the next run before it sleeps (decode issues runs every few
 * microseconds), and how long the caller polls for stragglers before yielding its core.
 * Measured in time, not iterations: PAUSE costs anywhere from 10 to 150 cycles. */
#define WORKER_SPIN_NS 100000
#define CALLER_SPIN_NS 50000

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

struct svlm_pool;

typedef struct worker {
    struct svlm_pool *pool;
    pthread_t thread;
    int index;
} worker;

struct svlm_pool {
    int size;
    worker *workers; /* size - 1 threads; the caller is worker 0 */

    /* the current run */
    svlm_task_fn fn;
    void *ctx;
    /* One word holds the run's generation, task count and next task, so a worker claims a
     * task only within the run it woke for: one that arrives late can neither miss a run nor
     * take a task of the next one (checking a separate count could mix two runs). */
    _Atomic uint64_t claim;
    atomic_int done_tasks;
    atomic_uint generation;
    atomic_int stop;

    pthread_mutex_t lock;
    pthread_cond_t wake;
    atomic_int sleepers;
};

/* Set while a thread executes tasks, so that nested runs execute inline (on that thread's
 * index, so per-thread scratch stays private). */
static _Thread_local const svlm_pool *in_pool_task; /* the pool whose task this thread runs */
static _Thread_local int pool_thread_index;

#define TASK_BITS 20
#define TASK_MASK ((1u << TASK_BITS) - 1)
#define GEN_MASK  0xffffffu /* 24 bits of generation */

static uint64_t claim_word(unsigned gen, unsigned n_tasks, unsigned next) {
    return (uint64_t)(gen & GEN_MASK) << (2 * TASK_BITS) | (uint64_t)n_tasks << TASK_BITS | next;
}

static void run_tasks(svlm_pool *p, unsigned gen, int thread) {
    const svlm_pool *outer = in_pool_task; /* a task of another pool may drive this one */
    int outer_index = pool_thread_index;
    in_pool_task = p;
    pool_thread_index = thread;
    int done = 0;
    uint64_t v = atomic_load_explicit(&p->claim, memory_order_acquire);
    for (;;) {
        unsigned next = (unsigned)v & TASK_MASK, n = (unsigned)(v >> TASK_BITS) & TASK_MASK;
        if ((unsigned)(v >> (2 * TASK_BITS)) != (gen & GEN_MASK) || next >= n) break;
        if (!atomic_compare_exchange_weak_explicit(&p->claim, &v, v + 1, memory_order_acq_rel,
                                                   memory_order_acquire))
            continue;
        /* The run cannot end while we hold a claimed task, so fn and ctx are this run's. */
        p->fn(p->ctx, (int)next, thread);
        done++;
        v = atomic_load_explicit(&p->claim, memory_order_acquire);
    }
    /* One count per thread and run, not per task: the counter's cache line moves between
     * cores once per thread (the run is not over until every claimed task is counted). */
    if (done) atomic_fetch_add_explicit(&p->done_tasks, done, memory_order_release);
    in_pool_task = outer;
    pool_thread_index = outer_index;
}

static void *worker_main(void *arg) {
    worker *w = arg;
    svlm_pool *p = w->pool;
    unsigned seen = 0; /* the generation at creation, even if this thread starts late */
    for (;;) {
        unsigned gen = seen;
        uint64_t deadline = now_ns() + WORKER_SPIN_NS;
        for (int i = 0;; i++) {
            gen = atomic_load_explicit(&p->generation, memory_order_acquire);
            if (gen != seen || ((i & 63) == 63 && now_ns() > deadline)) break;
            SVLM_CPU_RELAX();
        }
        if (gen == seen) {
            pthread_mutex_lock(&p->lock);
            atomic_fetch_add(&p->sleepers, 1);
            while ((gen = atomic_load(&p->generation)) == seen && !atomic_load(&p->stop))
                pthread_cond_wait(&p->wake, &p->lock);
            atomic_fetch_sub(&p->sleepers, 1);
            pthread_mutex_unlock(&p->lock);
        }
        if (atomic_load_explicit(&p->stop, memory_order_acquire)) break;
        seen = gen;
        run_tasks(p, gen, w->index);
    }
    return NULL;
}

static int online_cpus(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

svlm_status svlm_pool_create(int n_threads, svlm_pool **out, svlm_err *err) {
    *out = NULL;
    if (n_threads <= 0) n_threads = online_cpus();
    if (n_threads > 1024) return svlm_fail(err, SVLM_E_INVALID, "thread count %d is too large", n_threads);
    svlm_pool *p = calloc(1, sizeof *p);
    if (!p) return svlm_fail(err, SVLM_E_NOMEM, "out of memory for the thread pool");
    p->size = n_threads;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    if (n_threads > 1) {
        p->workers = calloc((size_t)n_threads - 1, sizeof *p->workers);
        if (!p->workers) {
            p->size = 1; /* no threads to join */
            svlm_pool_destroy(p);
            return svlm_fail(err, SVLM_E_NOMEM, "out of memory for the thread pool");
        }
    }
    for (int i = 1; i < n_threads; i++) {
        worker *w = &p->workers[i - 1];
        w->pool = p;
        w->index = i;
        if (pthread_create(&w->thread, NULL, worker_main, w) != 0) {
            p->size = i; /* destroy joins only the threads that started */
            svlm_pool_destroy(p);
            return svlm_fail(err, SVLM_E_NOMEM, "cannot start worker thread %d", i);
        }
    }
    *out = p;
    return SVLM_OK;
}

void svlm_pool_destroy(svlm_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->lock);
    atomic_store(&p->stop, 1);
    atomic_fetch_add(&p->generation, 1);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (int i = 1; i < p->size; i++)
        pthread_join(p->workers[i - 1].thread, NULL);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->lock);
    free(p->workers);
    free(p);
}

int svlm_pool_size(const svlm_pool *p) {
    return p ? p->size : 1;
}

typedef struct offset_ctx {
    svlm_task_fn fn;
    void *ctx;
    int offset;
} offset_ctx;

static void offset_task(void *ctx, int task, int thread) {
    offset_ctx *o = ctx;
    o->fn(o->ctx, o->offset + task, thread);
}

void svlm_pool_run(svlm_pool *p, svlm_task_fn fn, void *ctx, int n_tasks) {
    if (n_tasks <= 0) return;
    if (n_tasks > (int)TASK_MASK) { /* more tasks than a claim word counts: several runs */
        for (int done = 0; done < n_tasks; done += (int)TASK_MASK) {
            offset_ctx o = {fn, ctx, done};
            svlm_pool_run(p, offset_task, &o,
                          n_tasks - done < (int)TASK_MASK ? n_tasks - done : (int)TASK_MASK);
        }
        return;
    }
    if (!p || p->size == 1 || n_tasks == 1 || in_pool_task == p) {
        /* Inline on this thread. Mark it as inside the pool meanwhile, so that a run nested in
         * these tasks stays inline too and keeps this thread's index (its scratch). */
        const svlm_pool *outer = in_pool_task;
        int outer_index = pool_thread_index, thread = p && outer == p ? outer_index : 0;
        in_pool_task = p;
        pool_thread_index = thread;
        for (int t = 0; t < n_tasks; t++)
            fn(ctx, t, thread);
        in_pool_task = outer;
        pool_thread_index = outer_index;
        return;
    }
    unsigned gen = atomic_load_explicit(&p->generation, memory_order_relaxed) + 1;
    /* Every task of the previous run is claimed (next == n), so no late worker can claim from
     * its word; the release store of the new word publishes fn and ctx. */
    p->fn = fn;
    p->ctx = ctx;
    atomic_store_explicit(&p->done_tasks, 0, memory_order_relaxed);
    atomic_store_explicit(&p->claim, claim_word(gen, (unsigned)n_tasks, 0), memory_order_release);
    /* Publishes the run. Sequentially consistent, like the sleepers counter, so either we see
     * a worker's sleepers increment or it sees the new generation. */
    atomic_store(&p->generation, gen);
    if (atomic_load(&p->sleepers) > 0) {
        pthread_mutex_lock(&p->lock);
        pthread_cond_broadcast(&p->wake);
        pthread_mutex_unlock(&p->lock);
    }
    run_tasks(p, gen, 0);
    /* Only tasks other threads claimed are outstanding. They finish within microseconds unless
     * the machine is oversubscribed and their thread lost its core: then give ours away. */
    uint64_t deadline = 0;
    for (int i = 0; atomic_load_explicit(&p->done_tasks, memory_order_acquire) < n_tasks; i++) {
        if ((i & 63) == 63) {
            uint64_t t = now_ns();
            if (!deadline)
                deadline = t + CALLER_SPIN_NS;
            else if (t > deadline)
                sched_yield();
        }
        SVLM_CPU_RELAX();
    }
}
