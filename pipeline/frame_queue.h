/*
 * The bounded queue between a live source's reader thread and its consumer. Pushing never
 * blocks: when `capacity` frames are waiting, the oldest frame is dropped (and counted).
 * Events are bounded too, so that a camera failing (or sending damaged data) for days beside a
 * consumer that reads nothing cannot grow it: an event of the same kind as the last queued event
 * is merged into it (counts added, the newer total, detail and downtime), and beyond
 * SVLM_QUEUE_MAX_EVENTS waiting events the oldest one whose kind comes again later is merged into
 * that later one (counted in events_merged). What merging keeps exact: each kind's running total
 * (the newest event's), the sum of the counts, and the order of the kinds' first waiting events.
 * Breaks (DISCONNECT, RECONNECT) never merge across a frame: a break lies between two frames the
 * consumer reads exactly when one came between them; where only that could make room, the oldest
 * frame is dropped instead (counted). The final status is never dropped. One producer, one
 * consumer.
 */
#ifndef SVLM_PIPELINE_FRAME_QUEUE_H
#define SVLM_PIPELINE_FRAME_QUEUE_H

#include <pthread.h>
#include <stdatomic.h>

#include "pipeline/source.h"

typedef struct svlm_queue_node svlm_queue_node;

/* More than the kinds of event there are, so that some kind always comes twice beyond it. */
#define SVLM_QUEUE_MAX_EVENTS 16

typedef struct svlm_frame_queue {
    pthread_mutex_t lock;
    pthread_cond_t ready;
    svlm_queue_node *head, *tail;
    int frames, capacity;
    int events;            /* events waiting (at most SVLM_QUEUE_MAX_EVENTS) */
    int64_t events_merged; /* events merged into another one instead of being queued on their own */
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
/* Events waiting now, and events merged so far. */
void svlm_frame_queue_event_counts(svlm_frame_queue *q, int *waiting, int64_t *merged);

#endif
