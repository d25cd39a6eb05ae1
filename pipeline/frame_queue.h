/*
 * The bounded queue between a live source's reader thread and its consumer. Pushing never
 * blocks: when `capacity` frames are waiting, the oldest frame is dropped (and counted).
 * Events and the final status are never dropped. One producer, one consumer.
 */
#ifndef SVLM_PIPELINE_FRAME_QUEUE_H
#define SVLM_PIPELINE_FRAME_QUEUE_H

#include <pthread.h>
#include <stdatomic.h>

#include "pipeline/source.h"

typedef struct svlm_queue_node svlm_queue_node;

typedef struct svlm_frame_queue {
    pthread_mutex_t lock;
    pthread_cond_t ready;
    svlm_queue_node *head, *tail;
    int frames, capacity;
    int64_t dropped_pending, dropped_total;
    int closed; /* the producer finished: final status below */
    svlm_status final_status;
    svlm_err final_err;
} svlm_frame_queue;

svlm_status svlm_frame_queue_init(svlm_frame_queue *q, int capacity);
/* Frees whatever is still queued. */
void svlm_frame_queue_destroy(svlm_frame_queue *q);

/* Takes ownership of item (its frame pixels). Returns 0, or -1 when out of memory (then the
 * frame is released and counted as dropped). */
int svlm_frame_queue_push(svlm_frame_queue *q, svlm_source_item *item);
/* The producer is done; consumers get `status` (with err) after the queued items. */
void svlm_frame_queue_finish(svlm_frame_queue *q, svlm_status status, const svlm_err *err);

/* Waits for the next item: SVLM_OK with *item (a pending DROP event comes first), the final
 * status once the queue is finished and empty, or SVLM_E_CANCELLED as soon as *cancel is set
 * (polled every 50 ms, so cancelling needs no lock). */
svlm_status svlm_frame_queue_pop(svlm_frame_queue *q, svlm_source_item *item, atomic_int *cancel,
                                 svlm_err *err);

int64_t svlm_frame_queue_dropped(svlm_frame_queue *q);

#endif
