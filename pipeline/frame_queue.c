#include "pipeline/frame_queue.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"

struct svlm_queue_node {
    svlm_source_item item;
    svlm_queue_node *next;
};

svlm_status svlm_frame_queue_init(svlm_frame_queue *q, int capacity) {
    memset(q, 0, sizeof *q);
    q->capacity = capacity > 0 ? capacity : 1;
    if (pthread_mutex_init(&q->lock, NULL)) return SVLM_E_NOMEM;
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&q->ready, &attr);
    pthread_condattr_destroy(&attr);
    if (rc) {
        pthread_mutex_destroy(&q->lock);
        return SVLM_E_NOMEM;
    }
    return SVLM_OK;
}

void svlm_frame_queue_destroy(svlm_frame_queue *q) {
    for (svlm_queue_node *n = q->head, *next; n; n = next) {
        next = n->next;
        if (n->item.kind == SVLM_ITEM_FRAME) svlm_frame_release(&n->item.frame);
        free(n);
    }
    q->head = q->tail = NULL;
    pthread_cond_destroy(&q->ready);
    pthread_mutex_destroy(&q->lock);
}

/* Unlinks the oldest frame node; caller holds the lock. */
static void drop_oldest_frame(svlm_frame_queue *q) {
    svlm_queue_node *prev = NULL, *n = q->head;
    while (n && n->item.kind != SVLM_ITEM_FRAME) {
        prev = n;
        n = n->next;
    }
    if (!n) return;
    if (prev)
        prev->next = n->next;
    else
        q->head = n->next;
    if (q->tail == n) q->tail = prev;
    svlm_frame_release(&n->item.frame);
    free(n);
    q->frames--;
    q->dropped_pending++;
    q->dropped_total++;
}

/* b, a newer event of a's kind, absorbs a: the counts add up (a reconnect's downtime too); the
 * total (a running total), the detail and the other seconds are b's own. */
static void merge_event(svlm_source_event *b, const svlm_source_event *a) {
    b->count += a->count;
    if (b->kind == SVLM_EVENT_RECONNECT) b->seconds += a->seconds;
}

/* DISCONNECT and RECONNECT are breaks in the video (the engine restarts token compression at the
 * next frame): one may merge into another only where no frame lies between them, else the
 * frames between would lose (or gain) the break before them. */
static int is_break(const svlm_queue_node *n) {
    return n->item.kind == SVLM_ITEM_EVENT &&
           (n->item.event.kind == SVLM_EVENT_DISCONNECT || n->item.event.kind == SVLM_EVENT_RECONNECT);
}

/* The newest queued event, and whether a frame was queued after it; caller holds the lock. */
static svlm_queue_node *last_event(svlm_frame_queue *q, int *frame_after) {
    svlm_queue_node *last = NULL;
    *frame_after = 0;
    for (svlm_queue_node *n = q->head; n; n = n->next)
        if (n->item.kind == SVLM_ITEM_EVENT)
            last = n, *frame_after = 0;
        else
            *frame_after = 1;
    return last;
}

static void unlink_node(svlm_frame_queue *q, svlm_queue_node *prev, svlm_queue_node *n) {
    if (prev)
        prev->next = n->next;
    else
        q->head = n->next;
    if (q->tail == n) q->tail = prev;
}

/* Whether the events between the frames around n (its run) hold a break besides n. */
static int run_has_other_break(svlm_queue_node *run, const svlm_queue_node *n) {
    for (; run && run->item.kind == SVLM_ITEM_EVENT; run = run->next)
        if (run != n && is_break(run)) return 1;
    return 0;
}

/* Over the cap: the oldest event whose kind comes again later is merged into the next one of its
 * kind, a break only where another break stays between its frames. Returns 0 when none may go;
 * caller holds the lock. */
static int merge_oldest_event(svlm_frame_queue *q) {
    svlm_queue_node *run = q->head; /* the first node of n's run of events */
    for (svlm_queue_node *prev = NULL, *n = q->head; n; prev = n, n = n->next) {
        if (n->item.kind != SVLM_ITEM_EVENT) {
            run = n->next;
            continue;
        }
        if (is_break(n) && !run_has_other_break(run, n)) continue;
        svlm_queue_node *later = n->next;
        while (later && (later->item.kind != SVLM_ITEM_EVENT || later->item.event.kind != n->item.event.kind))
            later = later->next;
        if (!later) continue;
        merge_event(&later->item.event, &n->item.event);
        unlink_node(q, prev, n);
        free(n);
        q->events--;
        q->events_merged++;
        return 1;
    }
    return 0;
}

/* Makes room for one more event. Where every waiting break is alone between its frames (a
 * camera lost again and again beside a consumer that reads nothing), the oldest frame goes
 * (counted as dropped) until two breaks meet; caller holds the lock. */
static void make_event_room(svlm_frame_queue *q) {
    while (q->events >= SVLM_QUEUE_MAX_EVENTS && !merge_oldest_event(q) && q->frames > 0)
        drop_oldest_frame(q);
}

int svlm_frame_queue_push(svlm_frame_queue *q, svlm_source_item *item) {
    svlm_queue_node *n = malloc(sizeof *n);
    pthread_mutex_lock(&q->lock);
    int frame_after = 0;
    svlm_queue_node *last = item->kind == SVLM_ITEM_EVENT ? last_event(q, &frame_after) : NULL;
    if (last && last->item.event.kind == item->event.kind && !(frame_after && is_break(last))) {
        /* the same kind again: merged */
        svlm_source_event newer = item->event;
        merge_event(&newer, &last->item.event);
        last->item.event = newer;
        q->events_merged++;
        pthread_cond_signal(&q->ready);
        pthread_mutex_unlock(&q->lock);
        free(n);
        memset(item, 0, sizeof *item);
        return 0;
    }
    if (!n) {
        if (item->kind == SVLM_ITEM_FRAME) {
            svlm_frame_release(&item->frame);
            q->dropped_pending++;
            q->dropped_total++;
        }
        pthread_mutex_unlock(&q->lock);
        return -1;
    }
    n->item = *item;
    n->next = NULL;
    if (item->kind == SVLM_ITEM_FRAME) {
        if (q->frames >= q->capacity) drop_oldest_frame(q);
        q->frames++;
    } else {
        make_event_room(q);
        q->events++;
    }
    if (q->tail)
        q->tail->next = n;
    else
        q->head = n;
    q->tail = n;
    pthread_cond_signal(&q->ready);
    pthread_mutex_unlock(&q->lock);
    memset(item, 0, sizeof *item); /* ownership moved */
    return 0;
}

void svlm_frame_queue_finish(svlm_frame_queue *q, svlm_status status, const svlm_err *err) {
    pthread_mutex_lock(&q->lock);
    q->closed = 1;
    q->final_status = status;
    if (err) q->final_err = *err;
    pthread_cond_signal(&q->ready);
    pthread_mutex_unlock(&q->lock);
}

svlm_status svlm_frame_queue_pop(svlm_frame_queue *q, svlm_source_item *item, atomic_int *cancel,
                                 svlm_err *err) {
    svlm_status st = SVLM_OK;
    pthread_mutex_lock(&q->lock);
    for (;;) {
        if (cancel && atomic_load(cancel)) {
            st = svlm_fail(err, SVLM_E_CANCELLED, "source cancelled");
            break;
        }
        if (q->dropped_pending) {
            memset(item, 0, sizeof *item);
            item->kind = SVLM_ITEM_EVENT;
            item->event.kind = SVLM_EVENT_DROP;
            item->event.count = q->dropped_pending;
            item->event.total = q->dropped_total;
            q->dropped_pending = 0;
            break;
        }
        if (q->head) {
            svlm_queue_node *n = q->head;
            q->head = n->next;
            if (!q->head) q->tail = NULL;
            if (n->item.kind == SVLM_ITEM_FRAME)
                q->frames--;
            else
                q->events--;
            *item = n->item;
            free(n);
            break;
        }
        if (q->closed) {
            st = q->final_status;
            if (err && st != SVLM_OK) *err = q->final_err;
            break;
        }
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_nsec += 50 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&q->ready, &q->lock, &ts);
    }
    pthread_mutex_unlock(&q->lock);
    return st;
}

int64_t svlm_frame_queue_dropped(svlm_frame_queue *q) {
    pthread_mutex_lock(&q->lock);
    int64_t d = q->dropped_total;
    pthread_mutex_unlock(&q->lock);
    return d;
}

void svlm_frame_queue_event_counts(svlm_frame_queue *q, int *waiting, int64_t *merged) {
    pthread_mutex_lock(&q->lock);
    if (waiting) *waiting = q->events;
    if (merged) *merged = q->events_merged;
    pthread_mutex_unlock(&q->lock);
}
