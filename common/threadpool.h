/* A fixed pool of worker threads for data-parallel loops (one pool per runtime, no globals). */
#ifndef SVLM_COMMON_THREADPOOL_H
#define SVLM_COMMON_THREADPOOL_H

#include "svlm.h"

typedef struct svlm_pool svlm_pool;

/* fn(ctx, task, thread): runs task `task` (0..n_tasks-1) on worker `thread` (0..size-1). */
typedef void (*svlm_task_fn)(void *ctx, int task, int thread);

/* n_threads <= 0 means one per online CPU. The calling thread counts as worker 0. */
svlm_status svlm_pool_create(int n_threads, svlm_pool **out, svlm_err *err);
void svlm_pool_destroy(svlm_pool *p);
int svlm_pool_size(const svlm_pool *p);
/* Runs all tasks and returns when every one has finished. Not reentrant: one run at a time
 * per pool (callers serialise; nested calls from inside a task run inline). */
void svlm_pool_run(svlm_pool *p, svlm_task_fn fn, void *ctx, int n_tasks);

#endif
