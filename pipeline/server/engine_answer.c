/* The engine backend's answers: the job queue, the workers, the compute gate, ask and cancel.
 * See engine_backend.h for the scheduling policy. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "pipeline/server/engine_internal.h"

/* ---- the gate: one worker computes at a time; first-token work goes first -------------- */

void eng_gate_acquire(eng_gate *g, int prefill) {
    pthread_mutex_lock(&g->mu);
    if (prefill) {
        g->prefill_waiting++;
        while (g->busy) pthread_cond_wait(&g->cv, &g->mu);
        g->prefill_waiting--;
    } else {
        /* answers already streaming take turns in arrival order, after any waiting prefill */
        uint64_t ticket = g->decode_next++;
        while (g->busy || g->prefill_waiting > 0 || g->decode_serving != ticket) pthread_cond_wait(&g->cv, &g->mu);
        g->decode_serving++;
    }
    g->busy = 1;
    pthread_mutex_unlock(&g->mu);
}

void eng_gate_release(eng_gate *g) {
    pthread_mutex_lock(&g->mu);
    g->busy = 0;
    pthread_cond_broadcast(&g->cv);
    pthread_mutex_unlock(&g->mu);
}

/* ---- jobs ------------------------------------------------------------------------------ */

void eng_job_free(eng_job *j) {
    if (!j) return;
    for (int i = 0; i < j->n_images; i++) free((void *)j->images[i].data), free((void *)j->images[i].mime);
    free(j->images);
    free(j->question);
    free(j->answer);
    free(j);
}

static void answer_append(eng_job *j, const char *text, size_t len) {
    if (j->answer_len + len + 1 > j->answer_cap) {
        size_t cap = j->answer_cap ? j->answer_cap * 2 : 128;
        while (cap < j->answer_len + len + 1) cap *= 2;
        char *p = realloc(j->answer, cap);
        if (!p) return;
        j->answer = p, j->answer_cap = cap;
    }
    memcpy(j->answer + j->answer_len, text, len);
    j->answer_len += len;
    j->answer[j->answer_len] = 0;
}

static void deliver(eng_job *j, const char *text, size_t len) {
    if (j->kind == JOB_WATCH) answer_append(j, text, len);
    else j->cb.on_token(j->cb.user, text, len);
}

/* Expected length of a UTF-8 sequence from its first byte (0 for a byte that cannot start one). */
static size_t utf8_len(unsigned char c) {
    return c < 0x80 ? 1 : c < 0xC2 ? 0 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : c < 0xF5 ? 4 : 0;
}

/* A complete sequence is valid unless overlong, a surrogate or past U+10FFFF. */
static int utf8_valid(const unsigned char *b, size_t n) {
    if (n == 3) {
        unsigned cp = (b[0] & 0x0Fu) << 12 | (b[1] & 0x3Fu) << 6 | (b[2] & 0x3Fu);
        return cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF);
    }
    if (n == 4) {
        unsigned cp = (b[0] & 0x07u) << 18 | (b[1] & 0x3Fu) << 12 | (b[2] & 0x3Fu) << 6 | (b[3] & 0x3Fu);
        return cp >= 0x10000 && cp <= 0x10FFFF;
    }
    return 1;
}

#define REPLACEMENT "\xEF\xBF\xBD" /* U+FFFD: what a byte that is not UTF-8 becomes */

/* Whole, valid characters only: a model (a random-weight one above all) can emit byte tokens
 * that never form a character, and JSON text must be valid UTF-8. */
void eng_job_emit(eng_job *j, const char *text, size_t len, int flush) {
    char out[300];
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)text[i];
        if (j->utf8_n && (c & 0xC0) != 0x80) { /* a sequence cut short */
            memcpy(out + n, REPLACEMENT, 3), n += 3;
            j->utf8_n = 0;
        }
        if (!j->utf8_n && !utf8_len(c)) {
            memcpy(out + n, REPLACEMENT, 3), n += 3;
        } else {
            j->utf8[j->utf8_n++] = (char)c;
            if (j->utf8_n == utf8_len((unsigned char)j->utf8[0])) {
                if (utf8_valid((const unsigned char *)j->utf8, j->utf8_n)) memcpy(out + n, j->utf8, j->utf8_n), n += j->utf8_n;
                else memcpy(out + n, REPLACEMENT, 3), n += 3;
                j->utf8_n = 0;
            }
        }
        if (n > sizeof out - 16) deliver(j, out, n), n = 0;
    }
    if (flush && j->utf8_n) memcpy(out + n, REPLACEMENT, 3), n += 3, j->utf8_n = 0;
    if (n || !flush) deliver(j, out, n); /* every token is one piece, even an empty one */
}

int eng_job_token(eng_job *j, const char *piece, size_t len) {
    double now = eng_now_ms();
    if (!j->n_tokens) j->t_first = now;
    j->t_last = now;
    j->n_tokens++;
    eng_job_emit(j, piece, len, 0);
    eng_gate_release(&j->owner->gate);
    eng_gate_acquire(&j->owner->gate, 0);
    return atomic_load(&j->cancelled);
}

static int on_engine_token(void *user, int32_t id, const char *piece, size_t len) {
    (void)id;
    return eng_job_token(user, piece, len);
}

/* Question + chat template tokens, to fit max_tokens into the stream's answer room. */
static int turn_tokens(eng *e, const char *question) {
    const char *head = "<|im_start|>User: ", *tail = "<end_of_utterance>\nAssistant:";
    size_t n = strlen(head) + strlen(question) + strlen(tail) + 1;
    char *text = malloc(n);
    if (!text) return -1;
    snprintf(text, n, "%s%s%s", head, question, tail);
    int32_t *ids = NULL;
    size_t n_ids = 0;
    svlm_err err = {0};
    svlm_status st = svlm_tokenize(svlm_llama_tokenizer(e->model), text, strlen(text), 0, 1, &ids, &n_ids, &err);
    free(text);
    free(ids);
    return st ? -1 : (int)n_ids;
}

static svlm_status answer_stream(eng *e, svlm_llama_ctx *ctx, eng_job *j, svlm_backend_done *d, double *video_time,
                                 svlm_err *err) {
    int n_q = turn_tokens(e, j->question);
    int room = e->sp.answer_room - n_q - 4; /* a little slack for tokenization at the seams */
    if (n_q < 0) return svlm_fail(err, SVLM_E_INVALID, "the question cannot be tokenized");
    if (room < 1) return svlm_fail(err, SVLM_E_LIMIT, "the question is too long (%d tokens)", n_q);
    int max_tokens = j->max_tokens < room ? j->max_tokens : room;
    d->prompt_tokens = n_q;
    pthread_mutex_lock(&e->lock);
    *video_time = j->s->video_time;
    pthread_mutex_unlock(&e->lock);
    svlm_stream_fork *f = NULL;
    svlm_status st = svlm_stream_fork_now(j->s->stream, &f, err);
    if (st) return st;
    svlm_answer_metrics am;
    st = svlm_stream_ask_fork(j->s->stream, f, ctx, j->question, max_tokens, on_engine_token, j, NULL, &am, err);
    d->frames_during = am.frames_during;
    return st;
}

static void run_job(eng *e, svlm_llama_ctx *ctx, eng_job *j) {
    svlm_backend_done d = {0};
    svlm_err err = {0};
    svlm_status st = SVLM_OK;
    double video_time = 0;
    j->t_started = eng_now_ms();
    if (!atomic_load(&j->cancelled)) {
        eng_gate_acquire(&e->gate, 1);
        j->t_started = eng_now_ms();
        if (atomic_load(&j->cancelled)) st = SVLM_E_CANCELLED;
        else if (j->kind == JOB_IMAGE) st = eng_image_answer(e, j, &d.prompt_tokens, &err);
        else st = answer_stream(e, ctx, j, &d, &video_time, &err);
        eng_gate_release(&e->gate);
    } else {
        st = SVLM_E_CANCELLED;
    }
    eng_job_emit(j, "", 0, 1); /* whatever UTF-8 was held back */
    if (j->kind == JOB_WATCH) {
        eng_watch_result(e, j->watch_id, st ? NULL : (j->answer ? j->answer : ""), video_time);
        return;
    }
    d.cancelled = st == SVLM_E_CANCELLED;
    d.status = d.cancelled ? SVLM_OK : st;
    if (st && !d.cancelled) snprintf(d.error, sizeof d.error, "%.255s", err.msg);
    d.completion_tokens = j->n_tokens;
    d.queue_wait_ms = j->t_started - j->t_asked;
    d.ttft_ms = j->n_tokens ? j->t_first - j->t_asked : 0;
    d.decode_ms = j->n_tokens > 1 ? j->t_last - j->t_first : 0;
    j->cb.on_done(j->cb.user, &d);
}

static void *worker(void *arg) {
    eng *e = arg;
    svlm_llama_ctx *ctx = NULL;
    svlm_err err = {0};
    if (svlm_llama_ctx_create(e->model, e->k_answer, e->ctx_size, SVLM_F32, &ctx, &err))
        fprintf(stderr, "svlm serve: an answer worker has no decoder context: %s\n", err.msg);
    for (;;) {
        pthread_mutex_lock(&e->lock);
        while (!e->queue_head && !e->stopping) pthread_cond_wait(&e->cv, &e->lock);
        eng_job *j = e->queue_head;
        if (!j) {
            pthread_mutex_unlock(&e->lock);
            break;
        }
        if (!(e->queue_head = j->next)) e->queue_tail = NULL;
        e->n_queued--;
        j->next = e->running;
        e->running = j;
        pthread_mutex_unlock(&e->lock);

        run_job(e, ctx, j);

        pthread_mutex_lock(&e->lock);
        for (eng_job **pp = &e->running; *pp; pp = &(*pp)->next)
            if (*pp == j) {
                *pp = j->next;
                break;
            }
        pthread_mutex_unlock(&e->lock);
        if (j->s) {
            eng_stream_refresh(j->s); /* the fork's pages are gone, the turn has joined */
            eng_stream_unref(j->s);
        }
        eng_job_free(j);
    }
    svlm_llama_ctx_free(ctx);
    return NULL;
}

svlm_status eng_workers_start(eng *e, svlm_err *err) {
    e->workers = calloc((size_t)e->o.answer_threads, sizeof *e->workers);
    if (!e->workers) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    for (int i = 0; i < e->o.answer_threads; i++) {
        if (pthread_create(&e->workers[i], NULL, worker, e)) return svlm_fail(err, SVLM_E_NOMEM, "cannot start a worker");
        e->n_workers++;
    }
    return SVLM_OK;
}

void eng_workers_stop(eng *e) {
    pthread_mutex_lock(&e->lock);
    e->stopping = 1;
    for (eng_job *j = e->queue_head; j; j = j->next) atomic_store(&j->cancelled, 1);
    for (eng_job *j = e->running; j; j = j->next) atomic_store(&j->cancelled, 1);
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->lock);
    for (int i = 0; i < e->n_workers; i++) pthread_join(e->workers[i], NULL);
    free(e->workers);
    e->workers = NULL;
    e->n_workers = 0;
}

svlm_status eng_job_submit(eng *e, eng_job *j, uint64_t *id, svlm_err *err) {
    pthread_mutex_lock(&e->lock);
    svlm_status st = e->stopping              ? svlm_fail(err, SVLM_E_CANCELLED, "the engine is stopping")
                   : e->n_queued >= e->o.max_queued ? svlm_fail(err, SVLM_E_LIMIT, "%d questions are waiting already", e->n_queued)
                                                   : SVLM_OK;
    if (!st) {
        *id = j->id = ++e->next_id;
        j->owner = e;
        j->t_asked = eng_now_ms();
        if (e->queue_tail) e->queue_tail->next = j;
        else e->queue_head = j;
        e->queue_tail = j;
        e->n_queued++;
        pthread_cond_signal(&e->cv);
    }
    pthread_mutex_unlock(&e->lock);
    return st;
}

void eng_jobs_cancel(eng *e, eng_stream *s, uint64_t id) {
    pthread_mutex_lock(&e->lock);
    eng_job *lists[2] = {e->queue_head, e->running};
    for (int l = 0; l < 2; l++)
        for (eng_job *j = lists[l]; j; j = j->next)
            if (s ? j->s == s : j->id == id) atomic_store(&j->cancelled, 1);
    pthread_mutex_unlock(&e->lock);
}

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static svlm_status copy_images(eng_job *j, const svlm_backend_ask_req *req, svlm_err *err) {
    if (!(j->images = calloc((size_t)req->n_images, sizeof *j->images))) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    for (int i = 0; i < req->n_images; i++, j->n_images++) {
        const svlm_backend_image *in = &req->images[i];
        uint8_t *data = malloc(in->size ? in->size : 1);
        char *mime = dup_str(in->mime ? in->mime : "");
        if (!data || !mime) {
            free(data), free(mime);
            return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
        }
        memcpy(data, in->data, in->size);
        j->images[i] = (svlm_backend_image){data, in->size, mime};
    }
    return SVLM_OK;
}

#define MAX_IMAGES 4

svlm_status eng_ask(void *ctx, const svlm_backend_ask_req *req, const svlm_backend_ask_cb *cb, uint64_t *id,
                    svlm_err *err) {
    eng *e = ctx;
    if (!req->question || req->max_tokens < 1) return svlm_fail(err, SVLM_E_INVALID, "a question and max_tokens >= 1");
    if (req->n_images > MAX_IMAGES) return svlm_fail(err, SVLM_E_INVALID, "at most %d images per question", MAX_IMAGES);
    eng_job *j = calloc(1, sizeof *j);
    if (!j || !(j->question = dup_str(req->question))) {
        eng_job_free(j);
        return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    }
    j->kind = req->n_images > 0 ? JOB_IMAGE : JOB_ASK;
    j->cb = *cb;
    j->max_tokens = req->max_tokens < e->o.max_answer_tokens ? req->max_tokens : e->o.max_answer_tokens;
    svlm_status st = SVLM_OK;
    if (j->kind == JOB_IMAGE) st = copy_images(j, req, err);
    else if (!(j->s = eng_stream_ref(e, req->stream)))
        st = svlm_fail(err, SVLM_E_INVALID, "no stream named '%s'", req->stream ? req->stream : "");
    if (!st) st = eng_job_submit(e, j, id, err); /* from here on a worker owns j */
    if (st) {
        if (j->s) eng_stream_unref(j->s);
        eng_job_free(j);
    }
    return st;
}

void eng_cancel(void *ctx, uint64_t id) { eng_jobs_cancel(ctx, NULL, id); }
