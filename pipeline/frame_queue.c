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

int svlm_frame_queue_push(svlm_frame_queue *q, svlm_source_item *item) {
    svlm_queue_node *n = malloc(sizeof *n);
    pthread_mutex_lock(&q->lock);
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
            if (n->item.kind == SVLM_ITEM_FRAME) q->frames--;
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
