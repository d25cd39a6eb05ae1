/* The engine backend's answers: stream questions and watch evaluations through the stream
 * engine's answer lane, still images on their own worker, ask and cancel. See engine_backend.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "pipeline/server/engine_internal.h"

/* ---- jobs ------------------------------------------------------------------------------ */

void eng_job_free(eng_job *j) {
    if (!j) return;
    for (int i = 0; i < j->n_images; i++)
        free((void *)j->images[i].data), free((void *)j->images[i].mime);
    free(j->images);
    free(j->question);
    free(j->answer);
    free(j);
}

static void answer_append(eng_job *j, const char *text, size_t len) {
    if (j->answer_len + len + 1 > j->answer_cap) {
        size_t cap = j->answer_cap ? j->answer_cap * 2 : 128;
        while (cap < j->answer_len + len + 1)
            cap *= 2;
        char *p = realloc(j->answer, cap);
        if (!p) return;
        j->answer = p, j->answer_cap = cap;
    }
    memcpy(j->answer + j->answer_len, text, len);
    j->answer_len += len;
    j->answer[j->answer_len] = 0;
}

static void deliver(eng_job *j, const char *text, size_t len) {
    if (j->kind == JOB_WATCH)
        answer_append(j, text, len);
    else
        j->cb.on_token(j->cb.user, text, len);
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
                if (utf8_valid((const unsigned char *)j->utf8, j->utf8_n))
                    memcpy(out + n, j->utf8, j->utf8_n), n += j->utf8_n;
                else
                    memcpy(out + n, REPLACEMENT, 3), n += 3;
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
    return atomic_load(&j->cancelled);
}

/* Ends a job for its consumer: a watch's result, or the ask's done. */
static void job_done(eng *e, eng_job *j, svlm_status st, const char *msg) {
    eng_job_emit(j, "", 0, 1); /* whatever UTF-8 was held back */
    if (j->kind == JOB_WATCH) {
        eng_watch_result(e, j->watch_id, st ? NULL : (j->answer ? j->answer : ""), j->video_time);
        return;
    }
    svlm_backend_done d = {0};
    d.cancelled = st == SVLM_E_CANCELLED;
    d.status = d.cancelled ? SVLM_OK : st;
    if (st && !d.cancelled) snprintf(d.error, sizeof d.error, "%.255s", msg ? msg : "");
    d.prompt_tokens = j->prompt_tokens;
    d.completion_tokens = j->n_tokens;
    d.max_tokens = j->max_tokens; /* after the engine's caps: the server tells a cut answer by it */
    d.memory_time_anchored = j->am.memory_time_anchored;
    for (int i = 0; i < j->am.memory_hits && d.n_memory < (int)(sizeof d.memory / sizeof d.memory[0]); i++) {
        d.memory[d.n_memory].t0 = j->am.memory_t0[i];
        d.memory[d.n_memory].t1 = j->am.memory_t1[i];
        snprintf(d.memory[d.n_memory].tier, sizeof d.memory[0].tier, "%s",
                 svlm_memory_tier_name((svlm_memory_tier)j->am.memory_tier[i]));
        d.n_memory++;
    }
    d.queue_wait_ms = j->t_started > 0 ? j->t_started - j->t_asked : 0;
    d.ttft_ms = j->n_tokens ? j->t_first - j->t_asked : 0;
    if (d.queue_wait_ms > d.ttft_ms && j->n_tokens) d.queue_wait_ms = d.ttft_ms;
    d.decode_ms = j->n_tokens > 1 ? j->t_last - j->t_first : 0;
    d.frames_during = j->am.frames_during;
    j->cb.on_done(j->cb.user, &d);
}

/* ---- stream questions on the answer lane ------------------------------------------------ */

static int on_lane_token(void *user, int32_t id, const char *piece, size_t len) {
    (void)id;
    eng_job *j = user;
    if (!j->t_started) j->t_started = eng_now_ms(); /* prefill is done by the first token */
    return eng_job_token(j, piece, len);
}

static void on_lane_done(void *user, uint64_t qid, svlm_status st, const char *answer,
                         const svlm_answer_metrics *am, const char *err_msg) {
    (void)qid, (void)answer;
    eng_job *j = user;
    eng *e = j->owner;
    if (am->wait_ms > 0) j->t_started = j->t_asked + am->wait_ms;
    j->prompt_tokens += am->memory_tokens; /* the memory rows placed before the question count too */
    j->am = *am;
    job_done(e, j, st, err_msg);
    pthread_mutex_lock(&e->lock); /* also waits for eng_job_submit to have recorded qid */
    for (eng_job **pp = &e->jobs; *pp; pp = &(*pp)->next)
        if (*pp == j) {
            *pp = j->next;
            break;
        }
    e->n_jobs--;
    pthread_mutex_unlock(&e->lock);
    eng_stream_unref(j->s);
    eng_job_free(j);
}

/* Tokens of text (special: markers in it are special tokens), -1 on failure. */
static int count_tokens(eng *e, const char *text, int special) {
    int32_t *ids = NULL;
    size_t n_ids = 0;
    svlm_err err = {0};
    svlm_status st =
        svlm_tokenize(svlm_llama_tokenizer(e->model), text, strlen(text), 0, special, &ids, &n_ids, &err);
    free(ids);
    return st ? -1 : (int)n_ids;
}

/* Question + chat template tokens, to fit max_tokens into the stream's answer room: counted as the
 * stream builds the turn (svlm_stream_answer_start), the question as plain text, so that one
 * holding a literal "<end_of_utterance>" is not counted short and then refused. */
static int turn_tokens(eng *e, const char *question) {
    char *q = malloc(strlen(question) + 2);
    if (!q) return -1;
    q[0] = ' ';
    strcpy(q + 1, question);
    const int head = count_tokens(e, "<|im_start|>User:", 1), body = count_tokens(e, q, 0),
              tail = count_tokens(e, "<end_of_utterance>\nAssistant:", 1);
    free(q);
    return head < 0 || body < 0 || tail < 0 ? -1 : head + body + tail;
}

svlm_status eng_question_fits(eng *e, const char *question, int *n_q, int *room, svlm_err *err) {
    *n_q = turn_tokens(e, question);
    *room = e->sp.answer_room - *n_q - 4; /* a little slack for tokenization at the seams */
    return *n_q < 0    ? svlm_fail(err, SVLM_E_INVALID, "the question cannot be tokenized")
           : *room < 1 ? svlm_fail(err, SVLM_E_TOO_LONG, "the question is too long (%d tokens)", *n_q)
                       : SVLM_OK;
}

svlm_status eng_job_submit(eng *e, eng_job *j, uint64_t *id, svlm_err *err) {
    int n_q = 0, room = 0;
    svlm_status st = eng_question_fits(e, j->question, &n_q, &room, err);
    if (j->max_tokens > room) j->max_tokens = room;
    j->prompt_tokens = n_q;
    j->owner = e;
    svlm_ask_opts o = {.max_tokens = j->max_tokens, .use_memory = 1, .sampling = j->sampling};
    /* under the lock, so that on_done (which takes it) finds j listed with its qid */
    pthread_mutex_lock(&e->lock);
    if (!st && e->stopping) st = svlm_fail(err, SVLM_E_CANCELLED, "the engine is stopping");
    if (!st && e->n_jobs >= e->o.max_queued)
        st = svlm_fail(err, SVLM_E_LIMIT, "%d questions are waiting already", e->n_jobs);
    if (!st) {
        *id = j->id = ++e->next_id;
        j->t_asked = eng_now_ms();
        j->video_time = j->s->video_time;
        st = svlm_engine_ask(e->engine, j->s->sid, j->question, &o, 0, on_lane_token, on_lane_done, j,
                             &j->qid, err);
    }
    if (!st) {
        j->next = e->jobs;
        e->jobs = j;
        e->n_jobs++;
    }
    pthread_mutex_unlock(&e->lock);
    return st;
}

/* ---- still images on their own worker --------------------------------------------------- */

static void *image_worker(void *arg) {
    eng *e = arg;
    for (;;) {
        pthread_mutex_lock(&e->lock);
        while (!e->image_head && !e->stopping)
            pthread_cond_wait(&e->cv, &e->lock);
        eng_job *j = e->image_head;
        if (!j) {
            pthread_mutex_unlock(&e->lock);
            return NULL;
        }
        if (!(e->image_head = j->next)) e->image_tail = NULL;
        e->image_running = j;
        pthread_mutex_unlock(&e->lock);

        svlm_err err = {0};
        j->t_started = eng_now_ms();
        svlm_status st =
            atomic_load(&j->cancelled) ? SVLM_E_CANCELLED : eng_image_answer(e, j, &j->prompt_tokens, &err);
        job_done(e, j, st, err.msg);

        pthread_mutex_lock(&e->lock);
        e->image_running = NULL;
        e->n_jobs--;
        pthread_mutex_unlock(&e->lock);
        eng_job_free(j);
    }
}

svlm_status eng_images_start(eng *e, svlm_err *err) {
    if (pthread_create(&e->image_thread, NULL, image_worker, e))
        return svlm_fail(err, SVLM_E_NOMEM, "cannot start the image worker");
    e->image_thread_started = 1;
    return SVLM_OK;
}

void eng_images_stop(eng *e) {
    pthread_mutex_lock(&e->lock);
    e->stopping = 1;
    for (eng_job *j = e->image_head; j; j = j->next)
        atomic_store(&j->cancelled, 1);
    if (e->image_running) atomic_store(&e->image_running->cancelled, 1);
    pthread_cond_broadcast(&e->cv);
    pthread_mutex_unlock(&e->lock);
    if (e->image_thread_started) pthread_join(e->image_thread, NULL);
    e->image_thread_started = 0;
}

static svlm_status image_submit(eng *e, eng_job *j, uint64_t *id, svlm_err *err) {
    pthread_mutex_lock(&e->lock);
    svlm_status st = e->stopping ? svlm_fail(err, SVLM_E_CANCELLED, "the engine is stopping")
                     : e->n_jobs >= e->o.max_queued
                         ? svlm_fail(err, SVLM_E_LIMIT, "%d questions are waiting already", e->n_jobs)
                         : SVLM_OK;
    if (!st) {
        *id = j->id = ++e->next_id;
        j->owner = e;
        j->t_asked = eng_now_ms();
        if (e->image_tail)
            e->image_tail->next = j;
        else
            e->image_head = j;
        e->image_tail = j;
        e->n_jobs++;
        pthread_cond_broadcast(&e->cv);
    }
    pthread_mutex_unlock(&e->lock);
    return st;
}

/* ---- ask and cancel --------------------------------------------------------------------- */

static char *dup_str(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static svlm_status copy_images(eng_job *j, const svlm_backend_ask_req *req, svlm_err *err) {
    if (!(j->images = calloc((size_t)req->n_images, sizeof *j->images)))
        return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
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

/* A seed for a sampled answer that named none: answers asked alike then differ. */
static uint64_t eng_fresh_seed(eng *e) {
    static atomic_uint_fast64_t counter;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec + (uintptr_t)e +
                 0x9E3779B97F4A7C15u * atomic_fetch_add(&counter, 1);
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9u; /* splitmix64's finaliser: nearby times, far seeds */
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBu;
    return x ^ (x >> 31);
}

svlm_status eng_ask(void *ctx, const svlm_backend_ask_req *req, const svlm_backend_ask_cb *cb, uint64_t *id,
                    svlm_err *err) {
    eng *e = ctx;
    if (!req->question || req->max_tokens < 1)
        return svlm_fail(err, SVLM_E_INVALID, "a question and max_tokens >= 1");
    if (req->n_images > MAX_IMAGES)
        return svlm_fail(err, SVLM_E_INVALID, "at most %d images per question", MAX_IMAGES);
    eng_job *j = calloc(1, sizeof *j);
    if (!j || !(j->question = dup_str(req->question))) {
        eng_job_free(j);
        return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    }
    j->kind = req->n_images > 0 ? JOB_IMAGE : JOB_ASK;
    j->cb = *cb;
    j->max_tokens = req->max_tokens < e->o.max_answer_tokens ? req->max_tokens : e->o.max_answer_tokens;
    if (req->temperature > 0) { /* sampled: the stream's answer draws from its logits */
        j->sampling = svlm_sampler_params_default();
        j->sampling.top_k = 0, j->sampling.min_p = 0; /* as OpenAI's: temperature and top_p only */
        j->sampling.temp = req->temperature;
        j->sampling.top_p = req->top_p < 1 ? req->top_p : 1.0f; /* 0: the top token alone */
        j->sampling.seed = req->has_seed ? req->seed : eng_fresh_seed(e);
    }
    svlm_status st = SVLM_OK;
    if (j->kind == JOB_IMAGE) {
        st = copy_images(j, req, err);
        if (!st) st = image_submit(e, j, id, err);
    } else if (!(j->s = eng_stream_ref(e, req->stream))) {
        st = svlm_fail(err, SVLM_E_INVALID, "no stream named '%s'", req->stream ? req->stream : "");
    } else {
        st = eng_job_submit(e, j, id, err); /* from here on the answer lane owns j */
    }
    if (st) {
        if (j->s) eng_stream_unref(j->s);
        eng_job_free(j);
    }
    return st;
}

void eng_cancel(void *ctx, uint64_t id) {
    eng *e = ctx;
    uint64_t qid = 0;
    pthread_mutex_lock(&e->lock);
    for (eng_job *j = e->jobs; j; j = j->next)
        if (j->id == id) {
            atomic_store(&j->cancelled, 1);
            qid = j->qid;
        }
    for (eng_job *j = e->image_head; j; j = j->next)
        if (j->id == id) atomic_store(&j->cancelled, 1);
    if (e->image_running && e->image_running->id == id) atomic_store(&e->image_running->cancelled, 1);
    pthread_mutex_unlock(&e->lock);
    if (qid) svlm_engine_cancel(e->engine, qid); /* a queued question ends without waiting its turn */
}
