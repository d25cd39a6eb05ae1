/* Watches: standing questions re-asked on a stream every `interval` seconds of stream time,
 * with an alert when the answer turns yes or changes (see engine_backend.h). One timer thread
 * queues evaluations as ordinary jobs; alerts run under watch_lock, so unwatch is final. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common/err.h"
#include "pipeline/server/engine_internal.h"

#define TICK_MS 100

static int is_yes(const char *a) {
    while (*a && (isspace((unsigned char)*a) || ispunct((unsigned char)*a)))
        a++;
    return !strncasecmp(a, "yes", 3) || !strncasecmp(a, "true", 4);
}

/* Under watch_lock: queues an evaluation on the answer lane when the stream has moved on by the
 * interval. */
static void maybe_queue(eng *e, eng_watcher *w) {
    eng_stream *s = eng_stream_ref(e, w->stream);
    if (!s) return;
    pthread_mutex_lock(&e->lock);
    double vt = s->video_time;
    int has_frame = s->latest != NULL;
    pthread_mutex_unlock(&e->lock);
    /* (not svlm_stream_metrics_get: it waits for a frame's prefill, with watch_lock held, and the
     * answer lane waits for watch_lock to report every watch's result) */
    const int64_t frames_in = svlm_stream_frames_in(s->stream);
    eng_job *j = NULL;
    svlm_err err = {0};
    uint64_t id;
    /* a stream's video time never goes back: when it does, the stream was closed and opened again
     * under its name, and the watch starts over, its first answer an alert again (its next
     * evaluation was due at the old stream's time: silence until the new one got there) */
    if (w->evaluated && vt + 1.0 < w->last_vt) {
        w->evaluated = 0;
        w->last_yes = 0;
        free(w->last_answer);
        w->last_answer = NULL;
    }
    /* the first evaluation waits for a frame in the context, not just one read */
    if (has_frame && frames_in > 0 && (!w->evaluated || vt >= w->next_due) && (j = calloc(1, sizeof *j))) {
        size_t n = strlen(w->question) + 1;
        j->question = malloc(n);
        j->kind = JOB_WATCH;
        j->s = s;
        j->watch_id = w->id;
        j->max_tokens = w->max_tokens < e->o.max_answer_tokens ? w->max_tokens : e->o.max_answer_tokens;
        if (j->question) memcpy(j->question, w->question, n);
        if (j->question && eng_job_submit(e, j, &id, &err) == SVLM_OK) {
            w->in_flight = 1;
            w->evaluated = 1;
            w->next_due = vt + w->interval;
            w->last_vt = vt;
            return; /* the job holds the stream reference */
        }
        eng_job_free(j);
    }
    eng_stream_unref(s);
}

static void *timer(void *arg) {
    eng *e = arg;
    for (;;) {
        pthread_mutex_lock(&e->watch_lock);
        if (e->watch_stop) {
            pthread_mutex_unlock(&e->watch_lock);
            return NULL;
        }
        for (eng_watcher *w = e->watches; w; w = w->next)
            if (!w->in_flight) maybe_queue(e, w);
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += TICK_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
        if (!e->watch_stop) pthread_cond_timedwait(&e->watch_cv, &e->watch_lock, &ts);
        pthread_mutex_unlock(&e->watch_lock);
    }
}

svlm_status eng_watch_start_thread(eng *e, svlm_err *err) {
    if (pthread_create(&e->watch_thread, NULL, timer, e))
        return svlm_fail(err, SVLM_E_NOMEM, "cannot start the watch timer");
    e->watch_thread_started = 1;
    return SVLM_OK;
}

void eng_watch_stop_thread(eng *e) {
    if (!e->watch_thread_started) return;
    pthread_mutex_lock(&e->watch_lock);
    e->watch_stop = 1;
    pthread_cond_broadcast(&e->watch_cv);
    pthread_mutex_unlock(&e->watch_lock);
    pthread_join(e->watch_thread, NULL);
    e->watch_thread_started = 0;
}

void eng_watch_result(eng *e, uint64_t watch_id, const char *answer, double video_time) {
    pthread_mutex_lock(&e->watch_lock);
    eng_watcher *w = e->watches;
    while (w && w->id != watch_id)
        w = w->next;
    if (w) { /* else unwatched meanwhile: the answer goes nowhere */
        w->in_flight = 0;
        if (answer) {
            int yes = is_yes(answer);
            int fire =
                w->cond_true ? yes && !w->last_yes : !w->last_answer || strcmp(w->last_answer, answer) != 0;
            w->last_yes = yes;
            size_t n = strlen(answer) + 1;
            char *copy = malloc(n);
            if (copy) {
                memcpy(copy, answer, n);
                free(w->last_answer);
                w->last_answer = copy;
            }
            if (fire) {
                svlm_backend_alert al = {answer, video_time, eng_wall()};
                w->cb.on_alert(w->cb.user, &al);
            }
        }
    }
    pthread_mutex_unlock(&e->watch_lock);
}

svlm_status eng_watch(void *ctx, const svlm_backend_watch_req *req, const svlm_backend_watch_cb *cb,
                      uint64_t *id, svlm_err *err) {
    eng *e = ctx;
    if (!req->stream || !req->question || !(req->interval_s > 0) || req->max_tokens < 1)
        return svlm_fail(err, SVLM_E_INVALID,
                         "a watch needs a stream, a question, an interval and max_tokens");
    eng_stream *s = eng_stream_ref(e, req->stream);
    if (!s) return svlm_fail(err, SVLM_E_INVALID, "no stream named '%s'", req->stream);
    eng_stream_unref(s);
    /* a question too long for the answer room would be refused at every evaluation, silently: the
     * watch would never fire */
    int n_q = 0, room = 0;
    svlm_status st = eng_question_fits(e, req->question, &n_q, &room, err);
    if (st) return st;
    eng_watcher *w = calloc(1, sizeof *w);
    size_t n = strlen(req->question) + 1;
    if (!w || !(w->question = malloc(n))) {
        free(w);
        return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    }
    memcpy(w->question, req->question, n);
    snprintf(w->stream, sizeof w->stream, "%s", req->stream);
    w->cond_true = req->condition && !strcmp(req->condition, "true");
    w->interval = req->interval_s;
    w->max_tokens = req->max_tokens;
    w->cb = *cb;
    pthread_mutex_lock(&e->watch_lock);
    pthread_mutex_lock(&e->lock);
    *id = w->id = ++e->next_id;
    pthread_mutex_unlock(&e->lock);
    w->next = e->watches;
    e->watches = w;
    pthread_cond_broadcast(&e->watch_cv); /* the first evaluation need not wait for a tick */
    pthread_mutex_unlock(&e->watch_lock);
    return SVLM_OK;
}

void eng_unwatch(void *ctx, uint64_t id) {
    eng *e = ctx;
    pthread_mutex_lock(&e->watch_lock);
    for (eng_watcher **pp = &e->watches; *pp; pp = &(*pp)->next)
        if ((*pp)->id == id) {
            eng_watcher *w = *pp;
            *pp = w->next;
            free(w->question);
            free(w->last_answer);
            free(w);
            break;
        }
    pthread_mutex_unlock(&e->watch_lock);
}
