/* The two-lane scheduler: an ingest lane for frames, an answer lane for questions. */
#include "pipeline/stream_engine.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/threadpool.h"
#include "vision/preprocess.h"

/* answer contexts kept for reuse: a few on the CPU; on a GPU a batch's worth, since making one
 * (managed memory, first touches) costs more than its memory */
enum { MAX_IDLE_CTX = 36, CPU_IDLE_CTX = 4, MAX_INGEST_BATCH = 64, CPU_MAX_ACTIVE = 8 };
/* frames of different streams encoded together on a GPU: on an H100, 256 streams at 1 fps kept up
 * with batches of up to 32 (0.999 fps each, p99 time to first token 74 ms) and fell just short
 * with 16 (0.948 fps, p99 107 ms) */
enum { GPU_INGEST_BATCH = 32 };
/* answered turns joined into a live stream's context about this many tokens at a time (the
 * default of params.join_piece_tokens) between frames (a frame is 64 to 81 tokens for SmolVLM2): four
 * 256-token answers that end together were one block of 1,000+ tokens that every other stream's frames waited
 * behind */
enum { JOIN_PIECE_TOKENS = 256 };

typedef struct question {
    uint64_t id;
    int sid, pin, cancel;
    int64_t pin_frames; /* pinned: forked once this many frames of the stream were handled */
    char *text;
    svlm_ask_opts o;
    svlm_stream_token_fn on_token;
    svlm_engine_done_fn on_done;
    void *user;
    svlm_stream_fork *fork;
    svlm_stream_answer *ans;
    svlm_llama_ctx *ctx;
    int ctx_n;
    svlm_dtype ctx_type;
    double t_ask, t_start, t_first;
    struct question *next;
} question;

/* A frame waiting in its stream's queue. */
typedef struct queued_frame {
    svlm_frame f;
    int restart; /* the first frame after a break in the video (a reconnect): token compression
                    starts over at it instead of comparing it with a frame from before the break */
} queued_frame;

typedef struct lane_stream {
    svlm_stream *s;
    queued_frame *queue; /* ring of params.frame_queue frames */
    int head, n;
    int restart_next; /* a break was reported after the last frame pushed: the next one restarts */
    int64_t handled;  /* frames ingested or dropped */
    int join_due;     /* an answered turn waits to be joined */
    int in_flight;    /* questions forked (or about to be) and not ended */
    int closing;      /* being removed: no frames or questions taken */
    int refusing;     /* pushes refused (svlm_engine_refuse_pushes): its feeder is stopping */
    int ingesting;    /* its frames on the ingest lane (a batch running, one ahead) */
    int pages_wait;   /* a fork was refused for pages: its fresh questions wait for one of its answers */
    svlm_stc *stc;    /* token compression state (NULL: off) */
} lane_stream;

typedef struct idle_ctx {
    svlm_llama_ctx *ctx;
    int n;
    svlm_dtype type;
} idle_ctx;

struct svlm_engine {
    svlm_llama *model;
    const svlm_mmproj *mp;
    svlm_engine_params p;
    svlm_kernels *k_ingest, *k_answer;
    svlm_llama_batch *batch; /* decode steps of several answers at once (NULL: one at a time) */
    svlm_err *batch_errs;    /* one per answer of a batch (kept off the lane's stack: ~0.5 KB each) */
    svlm_vision_ctx *vc;
    svlm_pool *pre_pool;     /* preprocesses a batch's frames in parallel (NULL: one by one) */
    svlm_pool *lane_pool;    /* the lane's host work during a pass: pages, memory banks */
    svlm_llama_multi *multi; /* a batch's frames reach their streams in one decoder pass */
    /* Batches of frames for the encoder, two so that the next one is taken from the queues and
     * preprocessed (its own thread, on pre_pool) while the lane runs the current one on the
     * device: `ahead` is the slot holding such a batch, or -1. */
    struct ingest_slot *slots;
    int ahead;
    float *embd, *kept_embd; /* ingest_batch tiles: every row of each, the kept rows of each */
    int32_t *kept;           /* [ingest_batch][tokens_per_tile] */
    svlm_stc_controls stc;
    pthread_mutex_t compute_mu; /* the ingest kernels: the lane, or a stream being created */
    /* callers waiting for compute_mu besides the lane (a stream opening or closing): the lane,
     * which takes it again as soon as it lets it go, waits for them first (see lane_compute_lock) */
    atomic_int compute_waiting;
    pthread_mutex_t mu;
    pthread_cond_t cv_ingest, cv_answer, cv_room, cv_idle;
    pthread_t th_ingest, th_answer;
    int threads_started, stop, ingest_busy, answer_busy, draining;
    /* svlm_engine_stop: one caller claims the teardown (joins the lanes, ends what is left); any
     * other waits until it is stopped, so the lanes are joined once */
    int stop_claimed, stopped;
    int started_last; /* the answer lane's last work was a question's start */
    lane_stream *streams;
    int n_streams, rr_ingest, rr_join, ingest_sid; /* ingest_sid: the stream the lane works on (-1) */
    question *pinned, *ready, *active;             /* lists; ready is FIFO */
    question *hand;      /* the answer lane's questions while it works on them unlocked: cancels reach them */
    question *rr_active; /* the active answer to step next */
    uint64_t next_qid;
    idle_ctx idle[MAX_IDLE_CTX];
    int n_idle, max_idle;
    /* answers the device's memory held when a context could not be had (0: no limit): fresh
     * questions start only below it, and try for more a second after it was set */
    int mem_cap;
    double mem_cap_at;
    svlm_engine_metrics m;
};

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void list_append(question **list, question *q) {
    q->next = NULL;
    while (*list)
        list = &(*list)->next;
    *list = q;
}

static int list_remove(question **list, question *q) {
    for (; *list; list = &(*list)->next)
        if (*list == q) {
            *list = q->next;
            q->next = NULL;
            return 1;
        }
    return 0;
}

/* ---- the answer lane ---- */

static int token_relay(void *user, int32_t id, const char *piece, size_t len) {
    question *q = user;
    if (q->t_first == 0) q->t_first = now_ms();
    if (__atomic_load_n(&q->cancel, __ATOMIC_RELAXED)) return 1;
    return q->on_token ? q->on_token(q->user, id, piece, len) : 0;
}

static void ctx_release(svlm_engine *e, question *q) {
    if (!q->ctx) return;
    pthread_mutex_lock(&e->mu);
    if (e->n_idle < e->max_idle) {
        e->idle[e->n_idle++] = (idle_ctx){q->ctx, q->ctx_n, q->ctx_type};
        q->ctx = NULL;
    }
    pthread_mutex_unlock(&e->mu);
    svlm_llama_ctx_free(q->ctx);
    q->ctx = NULL;
}

/* A context of n rows or more, of the stream's KV type (so that it can copy the stream's window). */
static svlm_status ctx_acquire(svlm_engine *e, question *q, int n, svlm_dtype type, svlm_err *err) {
    pthread_mutex_lock(&e->mu);
    for (int i = 0; i < e->n_idle; i++)
        if (e->idle[i].n >= n && e->idle[i].type == type) {
            q->ctx = e->idle[i].ctx;
            q->ctx_n = e->idle[i].n;
            q->ctx_type = type;
            e->idle[i] = e->idle[--e->n_idle];
            break;
        }
    pthread_mutex_unlock(&e->mu);
    if (q->ctx) return SVLM_OK;
    q->ctx_n = n;
    q->ctx_type = type;
    svlm_status st = svlm_llama_ctx_create(e->model, e->k_answer, n, type, &q->ctx, err);
    if (!st) st = svlm_llama_ctx_reserve_greedy(q->ctx, err); /* all its memory now, or none */
    if (st) {
        svlm_llama_ctx_free(q->ctx);
        q->ctx = NULL;
    }
    return st;
}

/* Ends a question: callback, its pages and context back, the turn queued for joining. */
static void question_end(svlm_engine *e, question *q, svlm_status st, const char *msg) {
    svlm_answer_metrics am = {0};
    char *answer = NULL;
    if (q->ans) svlm_stream_answer_finish(q->ans, st == SVLM_OK, &answer, &am);
    q->ans = NULL;
    svlm_stream_fork_free(q->fork);
    q->fork = NULL;
    ctx_release(e, q);
    am.wait_ms = q->t_start > 0 ? q->t_start - q->t_ask : 0;
    am.ttft_ms = q->t_first > 0 ? q->t_first - q->t_ask : 0;
    if (q->on_done) q->on_done(q->user, q->id, st, st == SVLM_OK ? (answer ? answer : "") : NULL, &am, msg);
    free(answer);
    pthread_mutex_lock(&e->mu);
    list_remove(&e->hand, q); /* (before q is freed: cancels look there under mu) */
    if (st == SVLM_OK)
        e->m.questions_done++;
    else if (st == SVLM_E_CANCELLED)
        e->m.questions_cancelled++;
    else
        e->m.questions_failed++;
    if (st == SVLM_OK) e->streams[q->sid].join_due = 1;
    e->streams[q->sid].in_flight--;
    e->streams[q->sid].pages_wait = 0; /* (its fork's pages are promised no more) */
    pthread_cond_signal(&e->cv_ingest);
    pthread_cond_broadcast(&e->cv_idle); /* remove_stream waits for its answers */
    pthread_mutex_unlock(&e->mu);
    free(q->text);
    free(q);
}

/* Frees the idle contexts (their memory, on a GPU, for a context of another size or type). */
static void drop_idle(svlm_engine *e) {
    pthread_mutex_lock(&e->mu);
    int n = e->n_idle;
    idle_ctx idle[MAX_IDLE_CTX];
    memcpy(idle, e->idle, sizeof(idle_ctx) * (size_t)n);
    e->n_idle = 0;
    pthread_mutex_unlock(&e->mu);
    for (int i = 0; i < n; i++)
        svlm_llama_ctx_free(idle[i].ctx);
}

enum { START_ENDED, START_GOES_ON, START_WAITS, START_WAITS_PAGES };

/* Whether stream sid's pages are held by forks that will end: its answers running, or its
 * questions waiting with forks (pinned ones, forked at their frame). Counted when a fork was
 * refused, not before: the ingest lane or an ask may fork pinned questions meanwhile. */
static int stream_forks_held_locked(svlm_engine *e, int sid) {
    int held = 0;
    for (question *a = e->active; a && !held; a = a->next)
        held = a->sid == sid;
    for (question *r = e->ready; r && !held; r = r->next)
        held = r->sid == sid && r->fork;
    return held;
}

static int stream_forks_held(svlm_engine *e, int sid) {
    pthread_mutex_lock(&e->mu);
    const int held = stream_forks_held_locked(e, sid);
    pthread_mutex_unlock(&e->mu);
    return held;
}

/* The question's fork; SVLM_E_LIMIT with *wait set: the stream's pool has promised its pages to
 * forks that will end (the question waits for one of them). Refused with none held, it tries
 * again (they ended in between), a few times before it gives up. */
static svlm_status fork_or_wait(svlm_engine *e, question *q, svlm_stream *s, int *wait, svlm_err *err) {
    *wait = 0;
    svlm_status st = SVLM_E_LIMIT;
    for (int tries = 0; tries < 3 && st == SVLM_E_LIMIT; tries++) {
        st = svlm_stream_fork_into(s, q->ctx, &q->fork, err);
        if (st == SVLM_E_LIMIT && stream_forks_held(e, q->sid)) {
            *wait = 1;
            break;
        }
    }
    return st;
}

/* Fork (unless pinned), memory, prefill and the first token. START_WAITS: no memory for the
 * answer's context while others run (others_active): the question waits for one of them.
 * START_WAITS_PAGES: no pages of the stream's KV pool for its fork while forks of the stream
 * hold them (fork_or_wait): the stream's questions without a fork wait for one of those to end
 * (other streams' go on). *held: the question had a context. */
static int question_start(svlm_engine *e, question *q, int others_active, int *held) {
    svlm_err err = {0};
    svlm_stream *s = e->streams[q->sid].s;
    q->t_start = now_ms();
    svlm_status st = __atomic_load_n(&q->cancel, __ATOMIC_RELAXED) ? SVLM_E_CANCELLED : SVLM_OK;
    if (st) snprintf(err.msg, sizeof err.msg, "answer cancelled");
    if (!st) st = ctx_acquire(e, q, svlm_stream_ctx_size(s), svlm_stream_kv_type(s), &err);
    if (st == SVLM_E_NOMEM) { /* the idle contexts' memory first, then the running answers' */
        drop_idle(e);
        st = ctx_acquire(e, q, svlm_stream_ctx_size(s), svlm_stream_kv_type(s), &err);
        if (st == SVLM_E_NOMEM && others_active) return START_WAITS;
    }
    *held = st == SVLM_OK;
    if (!st && !q->fork) {
        int wait = 0;
        st = fork_or_wait(e, q, s, &wait, &err);
        if (wait) {
            ctx_release(e, q);
            *held = 0;
            return START_WAITS_PAGES;
        }
    }
    if (!st) {
        svlm_stream_fork *f = q->fork;
        q->fork = NULL;
        st = svlm_stream_answer_start(s, f, q->ctx, q->text, &q->o, token_relay, q, &q->ans, &err);
    }
    int done = 1;
    if (!st) st = svlm_stream_answer_step(q->ans, &done, &err);
    if (st || done) {
        question_end(e, q, st, st ? err.msg : "");
        return START_ENDED;
    }
    return START_GOES_ON;
}

static int question_step(svlm_engine *e, question *q) {
    svlm_err err = {0};
    int done = 1;
    svlm_status st = __atomic_load_n(&q->cancel, __ATOMIC_RELAXED) ? SVLM_E_CANCELLED : SVLM_OK;
    if (st)
        snprintf(err.msg, sizeof err.msg, "answer cancelled");
    else
        st = svlm_stream_answer_step(q->ans, &done, &err);
    if (st || done) {
        question_end(e, q, st, st ? err.msg : "");
        return 0;
    }
    return 1;
}

/* One decode step of up to decode_batch active answers together (called and returning with
 * e->mu held). Cancelled ones end first; the rest go back to the active list in order. */
static void step_batch(svlm_engine *e) {
    const int max = svlm_llama_batch_max(e->batch);
    question *qs[max];
    svlm_stream_answer *as[max];
    int n = 0;
    while (e->active && n < max) {
        qs[n] = e->active;
        list_remove(&e->active, qs[n]);
        list_append(&e->hand, qs[n]);
        n++;
    }
    e->answer_busy = 1;
    pthread_mutex_unlock(&e->mu);
    const double t0 = now_ms();
    int live = 0;
    for (int i = 0; i < n; i++) {
        if (__atomic_load_n(&qs[i]->cancel, __ATOMIC_RELAXED)) {
            question_end(e, qs[i], SVLM_E_CANCELLED, "answer cancelled");
            continue;
        }
        qs[live] = qs[i];
        as[live++] = qs[i]->ans;
    }
    int done[max];
    svlm_status st[max];
    svlm_err *errs = e->batch_errs;
    memset(errs, 0, sizeof(svlm_err) * (size_t)max);
    if (live && svlm_stream_answers_step(e->batch, as, live, done, st, errs))
        for (int i = 0; i < live; i++) { /* no memory for the batch: one by one, as without it */
            st[i] = svlm_stream_answer_step(as[i], &done[i], &errs[i]);
        }
    int goes_on = 0;
    for (int i = 0; i < live; i++) {
        if (st[i] || done[i])
            question_end(e, qs[i], st[i], st[i] ? errs[i].msg : "");
        else
            qs[goes_on++] = qs[i];
    }
    pthread_mutex_lock(&e->mu);
    e->m.answer_busy_ms += now_ms() - t0;
    e->answer_busy = 0;
    e->m.decode_batches++;
    e->m.decode_batch_answers += (uint64_t)live;
    /* back at the end, in their order: with more answers running than a batch holds, the next
     * step takes the ones that waited (the first ones would otherwise hold the batch until they end) */
    for (int i = 0; i < goes_on; i++) {
        list_remove(&e->hand, qs[i]);
        list_append(&e->active, qs[i]);
    }
    e->rr_active = e->active;
}

/* The ready question to take up next (under e->mu): a cancelled one first (it ends at once),
 * else the oldest of the stream with the fewest running answers, so that one stream's burst of
 * questions does not hold every answer slot while another stream's question waits. */
static question *next_ready(svlm_engine *e) {
    if (!e->ready) return NULL;
    for (question *c = e->ready; c; c = c->next)
        if (__atomic_load_n(&c->cancel, __ATOMIC_RELAXED)) return c;
    int running[e->n_streams > 0 ? e->n_streams : 1];
    memset(running, 0, sizeof running);
    for (question *a = e->active; a; a = a->next)
        if (a->sid >= 0 && a->sid < e->n_streams) running[a->sid]++;
    question *best = NULL;
    for (question *c = e->ready; c; c = c->next) { /* FIFO: the first of a count wins */
        /* a stream waiting for pages: its questions already forked start (they hold theirs) */
        if (c->sid >= 0 && c->sid < e->n_streams && e->streams[c->sid].pages_wait && !c->fork) continue;
        if (!best || (c->sid >= 0 && c->sid < e->n_streams && best->sid >= 0 && best->sid < e->n_streams &&
                      running[c->sid] < running[best->sid]))
            best = c;
    }
    return best;
}

static void *answer_lane(void *arg) {
    svlm_engine *e = arg;
    pthread_mutex_lock(&e->mu);
    while (!e->stop) {
        question *q = next_ready(e);
        int n_active = 0;
        for (question *a = e->active; a; a = a->next)
            n_active++;
        /* a fresh question waits while max_active answers run, or as many as the device's
         * memory held when the last context could not be had */
        if (e->mem_cap && (now_ms() - e->mem_cap_at > 1000 || (!e->active && !e->ready)))
            e->mem_cap = 0; /* memory may have come back: one try a second, or when idle */
        const int cap = e->mem_cap > 0 && (e->p.max_active <= 0 || e->mem_cap < e->p.max_active)
                            ? e->mem_cap
                            : e->p.max_active;
        /* the last slot is kept for a stream with no answer running while other streams are
         * open: a burst of questions on one stream never holds every slot, so a quiet stream's
         * question starts at once instead of after a whole answer */
        if (q && cap > 1 && n_active >= cap - 1 && !__atomic_load_n(&q->cancel, __ATOMIC_RELAXED)) {
            int mine = 0, open = 0;
            for (question *a = e->active; a; a = a->next)
                mine += a->sid == q->sid;
            for (int i = 0; i < e->n_streams; i++)
                open += e->streams[i].s && !e->streams[i].closing;
            if (mine > 0 && open > 1) q = NULL;
        }
        if (q && cap > 0 && n_active >= cap && !__atomic_load_n(&q->cancel, __ATOMIC_RELAXED)) q = NULL;
        /* under a stream of questions, starts and decode steps take turns: answers already
         * running keep streaming instead of waiting for every newcomer's first token */
        if (q && !__atomic_load_n(&q->cancel, __ATOMIC_RELAXED) && e->started_last && e->active) q = NULL;
        int fresh = q != NULL;
        e->started_last = fresh;
        if (fresh) {
            list_remove(&e->ready, q);
        } else if (e->active && e->active->next && e->batch) {
            step_batch(e);
            continue;
        } else if (e->active) {
            q = e->rr_active && list_remove(&e->active, e->rr_active) ? e->rr_active : NULL;
            if (!q) {
                q = e->active;
                list_remove(&e->active, q);
            }
        } else {
            pthread_cond_broadcast(&e->cv_idle);
            pthread_cond_wait(&e->cv_answer, &e->mu);
            continue;
        }
        e->answer_busy = 1;
        list_append(&e->hand, q);
        /* the step's successor keeps the round robin going */
        pthread_mutex_unlock(&e->mu);
        const double t0 = now_ms();
        int held = 0;
        int goes_on = fresh ? question_start(e, q, n_active > 0, &held) : question_step(e, q);
        pthread_mutex_lock(&e->mu);
        e->m.answer_busy_ms += now_ms() - t0;
        e->answer_busy = 0;
        if (fresh && held && n_active + 1 > e->m.active_answers_max) e->m.active_answers_max = n_active + 1;
        if (goes_on == START_WAITS_PAGES) { /* at the front; its stream's questions wait for its answers */
            list_remove(&e->hand, q);
            q->next = e->ready;
            e->ready = q;
            /* (once none holds pages no question_end would clear it: then it tries again at once) */
            e->streams[q->sid].pages_wait = stream_forks_held_locked(e, q->sid);
            e->started_last = 0;
        } else if (goes_on == START_WAITS) { /* ahead of later ones again, once an answer ends */
            list_remove(&e->hand, q);
            q->next = e->ready;
            e->ready = q;
            e->mem_cap = n_active;
            e->mem_cap_at = now_ms();
            e->m.memory_waits++;
            e->started_last = 0;
        } else if (goes_on) { /* (an ended question is gone: question_end unlinked and freed it) */
            list_remove(&e->hand, q);
            list_append(&e->active, q);
        }
        e->rr_active = e->active;
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

/* ---- the ingest lane ---- */

/* Pinned questions whose frames are all handled are forked now (under e->mu). */
static void release_pinned(svlm_engine *e, int sid) {
    question **pp = &e->pinned;
    lane_stream *ls = &e->streams[sid];
    while (*pp) {
        question *q = *pp;
        /* exact replays: the earlier answers have joined the dialogue first */
        const int wait_dialogue = e->p.exact && !q->cancel && (ls->in_flight > 0 || ls->join_due);
        if (q->sid != sid || q->pin_frames > ls->handled || wait_dialogue) {
            pp = &q->next;
            continue;
        }
        ls->in_flight++;
        *pp = q->next;
        svlm_err err = {0};
        if (svlm_stream_fork_now(e->streams[sid].s, &q->fork, &err)) q->fork = NULL; /* retried at start */
        /* exact replays: memory as of this frame too (the bank moves on while the answer waits) */
        else if (e->p.exact && !q->cancel &&
                 svlm_stream_fork_prepare(e->streams[sid].s, q->fork, q->text, &q->o, &err)) {
            svlm_stream_fork_free(q->fork); /* retried at start */
            q->fork = NULL;
        }
        list_append(&e->ready, q);
        pthread_cond_signal(&e->cv_answer);
    }
}

/* A pinned question of the stream is due but waits for earlier answers (exact replays). */
static int pinned_due(svlm_engine *e, int sid) {
    for (question *q = e->pinned; q; q = q->next)
        if (q->sid == sid && q->pin_frames <= e->streams[sid].handled) return 1;
    return 0;
}

/* f as the encoder's input tile, into pixels. */
static svlm_status preprocess_frame(svlm_engine *e, const svlm_frame *f, float *pixels, svlm_err *err) {
    const svlm_mmproj *mp = e->mp;
    svlm_image img = {0};
    svlm_status st = svlm_image_alloc(&img, f->width, f->height, err);
    if (st) return st;
    for (int y = 0; y < f->height; y++)
        memcpy(img.rgb + (size_t)y * f->width * 3, f->data + (size_t)y * f->stride, (size_t)f->width * 3);
    svlm_preproc_params pp = {.tile = mp->hp.image_size, .longest_edge = mp->hp.preproc_image_size};
    memcpy(pp.mean, mp->hp.image_mean, sizeof pp.mean);
    memcpy(pp.std, mp->hp.image_std, sizeof pp.std);
    /* frames go to the encoder's tile size (SmolVLM2's video_size: 512, 384 for 2.2B), as
     * bench-vision and the tests preprocess them */
    st = svlm_preprocess_frame(&img, &pp, mp->hp.image_size, pixels, err);
    svlm_image_free(&img);
    return st;
}

/* What token compression did to a frame of s, into its counters. */
static void note_stc(svlm_stream *s, const svlm_stc_frame_info *f) {
    svlm_stream_note_stc(s, f->n_patches, f->n_recomputed, (int)f->path, f->cut, f->n_tokens, f->n_kept);
}

/* Encodes f into e->embd; with token compression the kept rows go to e->kept_embd (*n_rows of
 * them, *rows set to it), else *rows = e->embd with every row. restart: f is the first frame after
 * a break, so token compression forgets the frames before it (even if f fails: the next one is
 * after the break too). */
static svlm_status encode_frame(svlm_engine *e, lane_stream *ls, const svlm_frame *f, int restart,
                                float *pixels, const float **rows, int *n_rows, svlm_err *err) {
    const svlm_mmproj *mp = e->mp;
    if (!e->vc) return svlm_fail(err, SVLM_E_INVALID, "the engine has no vision model");
    if (restart && ls->stc) svlm_stc_reset(ls->stc);
    svlm_status st = preprocess_frame(e, f, pixels, err);
    *rows = e->embd;
    *n_rows = mp->hp.tokens_per_tile;
    if (!st && !ls->stc) st = svlm_vision_encode(e->vc, pixels, 1, e->embd, err);
    if (!st && ls->stc) {
        svlm_stc_frame_info info;
        st = svlm_stc_frame(ls->stc, pixels, e->embd, e->kept, e->kept_embd, &info, err);
        if (!st) {
            note_stc(ls->s, &info);
            *rows = e->kept_embd;
            *n_rows = info.n_kept;
        }
    }
    return st;
}

/* A batch's frames and their preprocessing: the frames taken from their streams' queues, the
 * tiles, each frame's outcome so far. */
typedef struct ingest_slot {
    svlm_engine *e;
    int nb, sids[MAX_INGEST_BATCH];
    svlm_frame fr[MAX_INGEST_BATCH];
    int restart[MAX_INGEST_BATCH]; /* the queued frames' restart flags */
    float *pixels;                 /* ingest_batch tiles */
    svlm_status st[MAX_INGEST_BATCH];
    svlm_err err[MAX_INGEST_BATCH];
    svlm_stc_frame_info stc[MAX_INGEST_BATCH]; /* token compression's plan for each frame */
    pthread_t th;
    int running; /* th preprocesses it: joined before the batch runs */
} ingest_slot;

static void pre_task(void *ctx, int i, int thread) {
    (void)thread;
    ingest_slot *b = ctx;
    const svlm_mmproj_hparams *hp = &b->e->mp->hp;
    const size_t tile = (size_t)3 * hp->image_size * hp->image_size;
    b->st[i] = preprocess_frame(b->e, &b->fr[i], b->pixels + (size_t)i * tile, &b->err[i]);
}

/* The batch's frames as tiles, in parallel with a pool (resizing a 640x480 frame costs the host
 * ~5 ms). */
static void preprocess_batch(ingest_slot *b) {
    if (b->e->pre_pool)
        svlm_pool_run(b->e->pre_pool, pre_task, b, b->nb);
    else
        for (int i = 0; i < b->nb; i++)
            pre_task(b, i, 0);
}

static void *preprocess_thread(void *arg) {
    preprocess_batch(arg);
    return NULL;
}

static void plan_task(void *ctx, int i, int thread) {
    (void)thread;
    ingest_slot *b = ctx;
    const svlm_mmproj_hparams *hp = &b->e->mp->hp;
    const size_t tile = (size_t)3 * hp->image_size * hp->image_size;
    svlm_stc *stc = b->e->streams[b->sids[i]].stc;
    if (b->restart[i]) svlm_stc_reset(stc); /* (here, in the stream's frame order: not when taken ahead) */
    if (!b->st[i]) svlm_stc_plan(stc, b->pixels + (size_t)i * tile, &b->stc[i]);
}

/* Token compression's host half for a batch of such streams (each stream at most once in a
 * batch, and its frames in order: the lane's batch, before the next one is taken). */
static void plan_batch(svlm_engine *e, ingest_slot *b) {
    if (!e->streams[b->sids[0]].stc) return;
    if (e->pre_pool)
        svlm_pool_run(e->pre_pool, plan_task, b, b->nb);
    else
        for (int i = 0; i < b->nb; i++)
            plan_task(b, i, 0);
}

/* Frames of nb streams, all with token compression (planned) or all without, preprocessed:
 * encoded as one batch, then appended each to its stream. b->st[i]: frame i's outcome. */
static void ingest_batch(svlm_engine *e, ingest_slot *b) {
    const svlm_mmproj *mp = e->mp;
    const size_t tile = (size_t)3 * mp->hp.image_size * mp->hp.image_size;
    const int T = mp->hp.tokens_per_tile, nb = b->nb;
    const size_t emb = (size_t)T * mp->hp.proj_dim;
    int slot[MAX_INGEST_BATCH], n_ok = 0;
    svlm_status *st = b->st;
    svlm_err err = {0};
    svlm_stc *stcs[MAX_INGEST_BATCH] = {0};
    svlm_stc_frame_info info[MAX_INGEST_BATCH];
    const double t0 = now_ms();
    if (!e->vc) {
        for (int i = 0; i < nb; i++)
            st[i] = svlm_fail(&err, SVLM_E_INVALID, "the engine has no vision model");
        return;
    }
    for (int i = 0; i < nb; i++) { /* failed frames leave holes: close them up */
        if (st[i]) {
            slot[i] = -1;
            continue;
        }
        if (n_ok != i)
            memmove(b->pixels + (size_t)n_ok * tile, b->pixels + (size_t)i * tile, sizeof(float) * tile);
        stcs[n_ok] = e->streams[b->sids[i]].stc;
        info[n_ok] = b->stc[i];
        slot[i] = n_ok++;
    }
    const int with_stc = stcs[0] != NULL;
    svlm_status enc = SVLM_OK;
    if (n_ok && with_stc)
        enc = svlm_stc_run(stcs, n_ok, b->pixels, e->embd, e->kept, e->kept_embd, info, &err);
    else if (n_ok)
        enc = svlm_vision_encode(e->vc, b->pixels, n_ok, e->embd, &err);
    const double per_frame = n_ok ? (now_ms() - t0) / n_ok : 0;
    /* the encoded frames reach their streams in one pass of the decoder over all their rows */
    svlm_stream *ss[MAX_INGEST_BATCH];
    double ts[MAX_INGEST_BATCH];
    const float *rows[MAX_INGEST_BATCH];
    int nt[MAX_INGEST_BATCH], which[MAX_INGEST_BATCH], na = 0;
    svlm_status sa[MAX_INGEST_BATCH];
    for (int i = 0; i < nb; i++) {
        if (slot[i] < 0) continue;
        st[i] = enc;
        if (st[i]) continue;
        svlm_stream_note_encode(e->streams[b->sids[i]].s, per_frame);
        ss[na] = e->streams[b->sids[i]].s;
        ts[na] = b->fr[i].pts;
        rows[na] = e->embd + (size_t)slot[i] * emb;
        nt[na] = T;
        if (with_stc) {
            const svlm_stc_frame_info *f = &info[slot[i]];
            note_stc(ss[na], f);
            rows[na] = e->kept_embd + (size_t)slot[i] * emb;
            nt[na] = f->n_kept;
        }
        which[na++] = i;
    }
    if (na == 0) return;
    if (e->multi) {
        (void)svlm_streams_add_frames(e->multi, e->lane_pool, ss, ts, rows, nt, na, sa, b->err);
        for (int j = 0; j < na; j++)
            st[which[j]] = sa[j];
    } else {
        for (int j = 0; j < na; j++)
            st[which[j]] = svlm_stream_add_frame_tokens(ss[j], ts[j], rows[j], nt[j], &err);
    }
}

/* Takes the next frame of each stream in sids into b, marking them on the lane. Under e->mu. */
static void take_frames(svlm_engine *e, ingest_slot *b, const int *sids, int nb) {
    b->nb = nb;
    for (int i = 0; i < nb; i++) {
        lane_stream *ls = &e->streams[sids[i]];
        b->sids[i] = sids[i];
        b->fr[i] = ls->queue[ls->head].f;
        b->restart[i] = ls->queue[ls->head].restart;
        b->st[i] = SVLM_OK;
        memset(&ls->queue[ls->head], 0, sizeof ls->queue[ls->head]);
        ls->head = (ls->head + 1) % e->p.frame_queue;
        ls->n--;
        ls->ingesting++;
        if (!e->p.exact) ls->join_due = 0; /* add_frame joins first */
    }
    e->rr_ingest = (sids[nb - 1] + 1) % e->n_streams;
    pthread_cond_broadcast(&e->cv_room);
}

/* A batch from stream sid on (sids[0] = sid): with the next streams' frames, up to ingest_batch,
 * while they are of sid's kind (token compression or not: the two run the encoder differently),
 * stopping at a stream of the other kind with frames (rr_ingest then lands on it: it goes next).
 * Under e->mu. */
static int gather_batch(svlm_engine *e, int sid, int *sids) {
    int nb = 0;
    const int with_stc = e->streams[sid].stc != NULL;
    sids[nb++] = sid;
    for (int i = 1; i < e->n_streams && nb < e->p.ingest_batch; i++) {
        const lane_stream *ls = &e->streams[(sid + i) % e->n_streams];
        if (ls->n == 0 || ls->closing) continue;
        if ((ls->stc != NULL) != with_stc) break;
        sids[nb++] = (sid + i) % e->n_streams;
    }
    return nb;
}

/* While the lane runs a batch on the device: the batch the lane would take next goes into the
 * other slot and is preprocessed on its own thread (token compression's plans wait for the lane:
 * they follow the frames before them). Takes e->mu. */
static void look_ahead(svlm_engine *e, int slot) {
    ingest_slot *b = &e->slots[slot];
    int sids[MAX_INGEST_BATCH], nb = 0, sid = -1;
    pthread_mutex_lock(&e->mu);
    for (int i = 0; i < e->n_streams && sid < 0 && !e->stop; i++) {
        const int j = (e->rr_ingest + i) % e->n_streams;
        if (e->streams[j].n > 0 && !e->streams[j].closing) sid = j;
    }
    if (sid >= 0) nb = gather_batch(e, sid, sids);
    if (nb > 0) {
        take_frames(e, b, sids, nb);
        e->ahead = slot;
    }
    pthread_mutex_unlock(&e->mu);
    if (nb == 0) return;
    b->running = pthread_create(&b->th, NULL, preprocess_thread, b) == 0;
    if (!b->running) preprocess_batch(b); /* no thread: now, before the current batch */
}

/* compute_mu for a caller other than the lane: counted, so that the lane lets it in. A mutex is not
 * fair: the lane, taking it again at once batch after batch, kept an open waiting for minutes. */
static void compute_lock(svlm_engine *e) {
    atomic_fetch_add(&e->compute_waiting, 1);
    pthread_mutex_lock(&e->compute_mu);
    atomic_fetch_sub(&e->compute_waiting, 1);
}

/* compute_mu for the lane: after those waiting for it (at most one batch each way). */
static void lane_compute_lock(svlm_engine *e) {
    while (atomic_load(&e->compute_waiting) > 0) {
        const struct timespec pause = {0, 200000}; /* 0.2 ms: they are woken, and take it */
        nanosleep(&pause, NULL);
    }
    pthread_mutex_lock(&e->compute_mu);
}

/* One piece of answered turns joined into a stream (under e->mu, let go while it runs): live, one
 * piece of one stream, streams in turn; exact replays (at a due question or the end), every
 * stream's all. without_frames: only a stream with no frames queued or being ingested (its own
 * frames would join it). Returns whether joins are left for a later pass. */
static int join_piece(svlm_engine *e, int without_frames) {
    int more = 0;
    for (int i = 0; i < e->n_streams; i++) {
        const int j = (e->rr_join + i) % e->n_streams;
        lane_stream *ls = &e->streams[j];
        if (!ls->join_due || ls->closing || (e->p.exact && !e->draining)) continue;
        if (without_frames && (ls->n > 0 || ls->ingesting > 0)) continue; /* its own frames join it */
        ls->join_due = 0;
        e->ingest_busy = 1;
        e->ingest_sid = j;
        pthread_mutex_unlock(&e->mu);
        svlm_err err = {0};
        int left = 0;
        lane_compute_lock(e);
        if (e->p.exact)
            svlm_stream_join_pending(ls->s, &err);
        else
            left = svlm_stream_join_some(ls->s, e->p.join_piece_tokens);
        pthread_mutex_unlock(&e->compute_mu);
        pthread_mutex_lock(&e->mu);
        e->ingest_busy = 0;
        e->ingest_sid = -1;
        if (left && !ls->closing) ls->join_due = 1;
        if (e->p.exact) continue;
        e->rr_join = (j + 1) % e->n_streams;
        for (int k = 0; k < e->n_streams; k++)
            if (e->streams[k].join_due && !e->streams[k].closing) more = 1;
        break;
    }
    return more;
}

static void *ingest_lane(void *arg) {
    svlm_engine *e = arg;
    pthread_mutex_lock(&e->mu);
    while (!e->stop) {
        if (e->p.exact) /* turns join before a due question forks, frames wait for that fork */
            for (int j = 0; j < e->n_streams; j++) {
                lane_stream *ls = &e->streams[j];
                if (!ls->s || ls->closing) continue;
                /* at a due question, or when draining once the stream's last frame is in: joining
                 * while frames still wait would put the turn at a timing-dependent place */
                if (ls->join_due && ls->in_flight == 0 && (pinned_due(e, j) || (e->draining && ls->n == 0))) {
                    ls->join_due = 0;
                    e->ingest_busy = 1; /* drain waits for the join, not just for join_due */
                    e->ingest_sid = j;
                    pthread_mutex_unlock(&e->mu);
                    svlm_err err = {0};
                    lane_compute_lock(e);
                    svlm_stream_join_pending(ls->s, &err);
                    pthread_mutex_unlock(&e->compute_mu);
                    pthread_mutex_lock(&e->mu);
                    e->ingest_busy = 0;
                    e->ingest_sid = -1;
                }
                release_pinned(e, j);
            }
        int cur = e->ahead, sids[MAX_INGEST_BATCH], nb = 0; /* cur: the slot of the batch to run */
        const int from_ahead = cur >= 0;
        if (from_ahead) {
            e->ahead = -1; /* its frames were taken and are being preprocessed */
        } else {
            int sid = -1;
            for (int i = 0; i < e->n_streams && sid < 0; i++) {
                int j = (e->rr_ingest + i) % e->n_streams;
                if (e->streams[j].n > 0 && !e->streams[j].closing && !(e->p.exact && pinned_due(e, j)))
                    sid = j;
            }
            if (sid < 0) {
                /* no frame coming: join answered turns now (exact replays: at a due question or the
                 * end, every stream's all at once); live, one piece of one stream a pass (streams in
                 * turn), then frames are looked for again: a frame that comes meanwhile waits for
                 * one piece, not for a burst of long answers ending together on several streams */
                int more = join_piece(e, 0); /* joins left for the next pass */
                /* a frame pushed while the lock was let go for a join signalled nobody: look again */
                for (int k = 0; k < e->n_streams && !more; k++)
                    more = e->streams[k].n > 0 && !e->streams[k].closing && !(e->p.exact && pinned_due(e, k));
                pthread_cond_broadcast(&e->cv_idle);
                if (!e->stop && !more) pthread_cond_wait(&e->cv_ingest, &e->mu);
                continue;
            }
            nb = gather_batch(e, sid, sids);
            cur = 0; /* no batch ahead: neither slot is in use */
            take_frames(e, &e->slots[cur], sids, nb);
        }
        ingest_slot *b = &e->slots[cur];
        nb = b->nb;
        e->ingest_busy = 1;
        e->ingest_sid = b->sids[0];
        pthread_mutex_unlock(&e->mu);

        lane_compute_lock(e);
        const double t0 = now_ms();
        svlm_status *st = b->st;
        if (nb == 1 && !from_ahead) {
            lane_stream *ls = &e->streams[b->sids[0]];
            svlm_err err = {0};
            const float *rows = NULL;
            int n_rows = 0;
            st[0] = encode_frame(e, ls, &b->fr[0], b->restart[0], b->pixels, &rows, &n_rows, &err);
            const double t1 = now_ms();
            if (!st[0]) svlm_stream_note_encode(ls->s, t1 - t0);
            if (!st[0]) st[0] = svlm_stream_add_frame_tokens(ls->s, b->fr[0].pts, rows, n_rows, &err);
        } else {
            if (b->running) {
                pthread_join(b->th, NULL);
                b->running = 0;
            } else if (!from_ahead && e->vc) { /* (without a vision model the frames fail below) */
                preprocess_batch(b);
            }
            if (e->vc) plan_batch(e, b);
            /* the next batch is preprocessed on the host while this one runs on the device */
            if (e->p.ingest_batch > 1 && !e->p.exact && e->vc) look_ahead(e, 1 - cur);
            ingest_batch(e, b);
        }
        for (int i = 0; i < nb; i++) {
            /* a frame that failed is lost: counted with the drops */
            if (st[i]) svlm_stream_note_drop(e->streams[b->sids[i]].s);
            svlm_frame_release(&b->fr[i]);
        }
        pthread_mutex_unlock(&e->compute_mu);

        pthread_mutex_lock(&e->mu);
        e->m.ingest_busy_ms += now_ms() - t0;
        e->ingest_busy = 0;
        e->ingest_sid = -1;
        if (nb > 1) {
            e->m.ingest_batches++;
            e->m.ingest_batch_frames += (uint64_t)nb;
            e->m.ingest_batches_ahead += (uint64_t)from_ahead;
        }
        for (int i = 0; i < nb; i++) {
            lane_stream *ls = &e->streams[b->sids[i]];
            ls->ingesting--;
            ls->handled++;
            if (st[i])
                e->m.frames_dropped++;
            else
                e->m.frames_done++;
            /* take_frames left the stream's answered turns to this frame's prefill: when the frame
             * failed before it, they are due again (else they would wait for the next frame) */
            if (st[i] && !e->p.exact && !ls->closing && svlm_stream_turns_waiting(ls->s)) ls->join_due = 1;
            release_pinned(e, b->sids[i]);
        }
        b->nb = 0;
        /* a stream whose frames stopped (paused, stalled, ended) still gets its answered turns
         * joined while other streams keep this lane busy: one piece between batches */
        if (!e->p.exact && !e->stop) (void)join_piece(e, 1);
        pthread_cond_broadcast(&e->cv_idle);
    }
    if (e->ahead >= 0) { /* stopping: the batch ahead is dropped */
        ingest_slot *b = &e->slots[e->ahead];
        if (b->running) pthread_join(b->th, NULL);
        b->running = 0;
        for (int i = 0; i < b->nb; i++) {
            e->streams[b->sids[i]].ingesting--;
            e->streams[b->sids[i]].handled++;
            e->m.frames_dropped++; /* (taken from the queue, so stop's count of queued frames misses it) */
            svlm_frame_release(&b->fr[i]);
        }
        b->nb = 0;
        e->ahead = -1;
        pthread_cond_broadcast(&e->cv_idle);
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

/* ---- the interface ---- */

svlm_status svlm_engine_create(svlm_llama *m, const svlm_mmproj *mp, const svlm_engine_params *p,
                               svlm_engine **out, svlm_err *err) {
    *out = NULL;
    svlm_engine *e = calloc(1, sizeof *e);
    if (!e) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    e->model = m;
    e->mp = mp;
    if (p) e->p = *p;
    if (e->p.ingest_threads <= 0) e->p.ingest_threads = 1;
    if (e->p.answer_threads <= 0) e->p.answer_threads = 1;
    if (e->p.frame_queue <= 0) e->p.frame_queue = 2;
    if (e->p.join_piece_tokens <= 0) e->p.join_piece_tokens = JOIN_PIECE_TOKENS;
    if (e->p.max_streams <= 0) e->p.max_streams = 16;
    if (e->p.stc)
        e->stc = *e->p.stc;
    else
        svlm_stc_controls_default(&e->stc);
    e->p.stc = NULL;
    e->ingest_sid = -1;
    e->ahead = -1;
    pthread_mutex_init(&e->compute_mu, NULL);
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->cv_ingest, NULL);
    pthread_cond_init(&e->cv_answer, NULL);
    pthread_cond_init(&e->cv_room, NULL);
    pthread_cond_init(&e->cv_idle, NULL);
    svlm_status st = SVLM_OK;
    if (mp && mp->hp.proj_dim != svlm_llama_hparams_of(m)->n_embd)
        st = svlm_fail(err, SVLM_E_INVALID, "the projector makes %d-wide embeddings, the text model takes %d",
                       mp->hp.proj_dim, svlm_llama_hparams_of(m)->n_embd);
    /* one backend per lane: the CPU, or a GPU when SVLM_BACKEND says so */
    if (!st) st = svlm_kernels_create_named(NULL, e->p.ingest_threads, &e->k_ingest, err);
    if (!st) st = svlm_kernels_create_named(NULL, e->p.answer_threads, &e->k_answer, err);
    /* on one GPU, answers (someone waits for the first token) go ahead of frames */
    if (!st && svlm_kernels_is_gpu(e->k_answer)) svlm_kernels_set_priority(e->k_answer, 1);
    if (e->p.decode_batch <= 0) e->p.decode_batch = 16;
    /* every running answer holds a context: an unbounded number of them under a flood of
     * questions runs out of memory before any finishes. A GPU keeps four decode batches busy. */
    if (e->p.max_active <= 0)
        e->p.max_active =
            e->k_answer && svlm_kernels_is_gpu(e->k_answer) ? 4 * e->p.decode_batch : CPU_MAX_ACTIVE;
    if (e->p.exact) e->p.decode_batch = 1; /* a replay's answers repeat exactly: one at a time */
    if (!st && e->p.decode_batch > 1)
        st = svlm_llama_batch_create(m, e->k_answer, e->p.decode_batch, &e->batch, err);
    e->max_idle = CPU_IDLE_CTX;
    if (e->k_answer && svlm_kernels_is_gpu(e->k_answer))
        e->max_idle = e->p.decode_batch + 4 < MAX_IDLE_CTX ? e->p.decode_batch + 4 : MAX_IDLE_CTX;
    if (!st && e->batch && !(e->batch_errs = calloc((size_t)e->p.decode_batch, sizeof *e->batch_errs)))
        st = svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    /* frames of several streams through the encoder together: a GPU's products fill up. The CPU
     * takes one frame at a time unless asked: there a question waits for the whole batch's pass
     * into its stream, and batches of 4 busy streams with token compression ingest only 3 % more
     * frames since the weights are packed once (docs/stc.md) */
    if (e->p.ingest_batch <= 0)
        e->p.ingest_batch = e->k_ingest && svlm_kernels_is_gpu(e->k_ingest) ? GPU_INGEST_BATCH : 1;
    if (e->p.ingest_batch > MAX_INGEST_BATCH) e->p.ingest_batch = MAX_INGEST_BATCH;
    if (e->p.exact) e->p.ingest_batch = 1; /* a replay's frames go in order, one at a time */
    if (!st && mp && e->p.ingest_batch > 1) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN); /* two cores stay with the lanes */
        int n = cpus > 4 ? (int)cpus - 2 : 2;
        if (n > e->p.ingest_batch) n = e->p.ingest_batch;
        if (n > 1) st = svlm_pool_create(n, &e->pre_pool, err);
    }
    if (!st && mp && e->p.ingest_batch > 1)
        st = svlm_llama_multi_create(m, e->k_ingest, e->p.ingest_batch * svlm_llama_multi_item_max(),
                                     &e->multi, err);
    /* the lane's own host work during a pass (pages, banks) runs while pre_pool preprocesses the
     * next batch: a pool of its own */
    if (!st && e->multi) st = svlm_pool_create(4, &e->lane_pool, err);
    if (!st && e->multi) svlm_llama_multi_set_pool(e->multi, e->lane_pool);
    /* the lane's batches (without a vision model too: its frames fail one by one, with a message) */
    if (!st && !(e->slots = calloc(2, sizeof *e->slots))) st = svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    for (int i = 0; !st && i < 2; i++)
        e->slots[i].e = e;
    if (!st && mp) {
        const int B = e->p.ingest_batch;
        st = svlm_vision_ctx_create(mp, e->k_ingest, B, &e->vc, err);
        const int S = mp->hp.image_size, T = mp->hp.tokens_per_tile;
        /* the pixels go to the encoder and its rows come back in one copy each per batch: in
         * page-locked memory on a GPU, DMA without the host's CPU (16 tiles: 50 MB of pixels) */
        for (int i = 0; e->slots && i < 2; i++) /* (the second slot only holds batches ahead) */
            if (i == 0 || B > 1)
                e->slots[i].pixels = svlm_k_alloc_host(e->k_ingest, (size_t)B * 3 * S * S * sizeof(float));
        e->embd = svlm_k_alloc_host(e->k_ingest, (size_t)B * T * mp->hp.proj_dim * sizeof(float));
        e->kept_embd = malloc((size_t)B * T * mp->hp.proj_dim * sizeof(float));
        e->kept = malloc((size_t)B * T * sizeof *e->kept);
        if (!st && (!e->slots || !e->slots[0].pixels || (B > 1 && !e->slots[1].pixels) || !e->embd ||
                    !e->kept_embd || !e->kept))
            st = svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    }
    e->streams = calloc((size_t)e->p.max_streams, sizeof *e->streams);
    if (!st && !e->streams) st = svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    if (!st) {
        if (pthread_create(&e->th_ingest, NULL, ingest_lane, e) != 0) {
            st = svlm_fail(err, SVLM_E_IO, "cannot start the ingest lane");
        } else if (pthread_create(&e->th_answer, NULL, answer_lane, e) != 0) {
            pthread_mutex_lock(&e->mu);
            e->stop = 1;
            pthread_cond_broadcast(&e->cv_ingest);
            pthread_mutex_unlock(&e->mu);
            pthread_join(e->th_ingest, NULL);
            st = svlm_fail(err, SVLM_E_IO, "cannot start the answer lane");
        } else {
            e->threads_started = 1;
        }
    }
    if (st) {
        svlm_engine_free(e);
        return st;
    }
    *out = e;
    return SVLM_OK;
}

/* Ends every question left once the lanes are gone. Each is taken from its list under e->mu and
 * ended without it (question_end takes it), so a remove_stream or cancel meanwhile finds the lists
 * whole; a stream's removal waits for in_flight, so its questions end before it returns. */
static void end_all_questions(svlm_engine *e) {
    pthread_mutex_lock(&e->mu);
    for (;;) {
        question *q = e->pinned;
        if (q) {
            e->pinned = q->next;
            e->streams[q->sid].in_flight++; /* question_end counts it out */
        } else if ((q = e->ready)) {
            e->ready = q->next;
        } else if ((q = e->active)) {
            e->active = q->next;
        } else {
            break;
        }
        list_append(&e->hand, q); /* (question_end unlinks it; cancels look there) */
        pthread_mutex_unlock(&e->mu);
        question_end(e, q, SVLM_E_CANCELLED, "the engine stopped");
        pthread_mutex_lock(&e->mu);
    }
    pthread_mutex_unlock(&e->mu);
}

/* Drops every queued frame (counted: pushed = done + dropped, stopped or not). Under e->mu, as
 * remove_stream does it, so no frame is released or counted twice. */
static void drop_all_frames(svlm_engine *e) {
    for (int i = 0; e->streams && i < e->n_streams; i++) {
        lane_stream *ls = &e->streams[i];
        for (int j = 0; j < ls->n; j++)
            svlm_frame_release(&ls->queue[(ls->head + j) % e->p.frame_queue].f);
        e->m.frames_dropped += ls->n;
        ls->n = 0;
    }
}

/* Joins every stream's answered turns and ends deferred joins: the streams are the caller's again.
 * Each stream is marked as the ingest lane's meanwhile (ingest_sid), so a remove_stream of it
 * waits; one already being removed is left to its remover. */
static void join_all_turns(svlm_engine *e) {
    pthread_mutex_lock(&e->mu);
    for (int i = 0; e->streams && i < e->n_streams; i++) {
        svlm_stream *s = e->streams[i].s;
        if (!s || e->streams[i].closing) continue;
        e->ingest_sid = i;
        pthread_mutex_unlock(&e->mu);
        svlm_err err = {0};
        compute_lock(e); /* (an open_stream may be prefilling on these kernels) */
        svlm_stream_join_pending(s, &err);
        svlm_stream_set_deferred_join(s, 0);
        pthread_mutex_unlock(&e->compute_mu);
        pthread_mutex_lock(&e->mu);
        e->ingest_sid = -1;
        pthread_cond_broadcast(&e->cv_idle);
    }
    pthread_mutex_unlock(&e->mu);
}

void svlm_engine_stop(svlm_engine *e) {
    if (!e) return;
    pthread_mutex_lock(&e->mu);
    if (e->stop_claimed) { /* another caller stops it: return once it has */
        while (!e->stopped)
            pthread_cond_wait(&e->cv_idle, &e->mu);
        pthread_mutex_unlock(&e->mu);
        return;
    }
    e->stop_claimed = e->stop = 1;
    pthread_cond_broadcast(&e->cv_ingest);
    pthread_cond_broadcast(&e->cv_answer);
    pthread_cond_broadcast(&e->cv_room);
    pthread_cond_broadcast(&e->cv_idle); /* drain returns */
    pthread_mutex_unlock(&e->mu);
    if (e->threads_started) { /* (set once, before the engine was handed out) */
        pthread_join(e->th_ingest, NULL);
        pthread_join(e->th_answer, NULL);
    }
    end_all_questions(e);
    pthread_mutex_lock(&e->mu);
    drop_all_frames(e);
    pthread_mutex_unlock(&e->mu);
    join_all_turns(e);
    pthread_mutex_lock(&e->mu);
    e->stopped = 1;
    pthread_cond_broadcast(&e->cv_idle);
    pthread_mutex_unlock(&e->mu);
}

void svlm_engine_free(svlm_engine *e) {
    if (!e) return;
    svlm_engine_stop(e);
    for (int i = 0; e->streams && i < e->n_streams; i++) {
        free(e->streams[i].queue);
        svlm_stc_free(e->streams[i].stc);
    }
    for (int i = 0; i < e->n_idle; i++)
        svlm_llama_ctx_free(e->idle[i].ctx);
    free(e->streams);
    svlm_vision_ctx_free(e->vc);
    if (e->pre_pool) svlm_pool_destroy(e->pre_pool);
    svlm_llama_multi_free(e->multi);
    if (e->lane_pool) svlm_pool_destroy(e->lane_pool);
    for (int i = 0; e->slots && i < 2; i++)
        svlm_k_free_host(e->k_ingest, e->slots[i].pixels);
    free(e->slots);
    svlm_k_free_host(e->k_ingest, e->embd);
    free(e->kept_embd);
    free(e->kept);
    svlm_llama_batch_free(e->batch);
    free(e->batch_errs);
    svlm_kernels_destroy(e->k_ingest);
    svlm_kernels_destroy(e->k_answer);
    pthread_mutex_destroy(&e->mu);
    pthread_mutex_destroy(&e->compute_mu);
    pthread_cond_destroy(&e->cv_ingest);
    pthread_cond_destroy(&e->cv_answer);
    pthread_cond_destroy(&e->cv_room);
    pthread_cond_destroy(&e->cv_idle);
    free(e);
}

svlm_kernels *svlm_engine_ingest_kernels(svlm_engine *e) {
    return e->k_ingest;
}
svlm_kernels *svlm_engine_answer_kernels(svlm_engine *e) {
    return e->k_answer;
}

svlm_status svlm_engine_add_stream(svlm_engine *e, svlm_stream *s, int *id, svlm_err *err) {
    return svlm_engine_add_stream_with(e, s, NULL, id, err);
}

svlm_status svlm_engine_add_stream_with(svlm_engine *e, svlm_stream *s, const svlm_stc_controls *stc_controls,
                                        int *id, svlm_err *err) {
    if (!stc_controls) stc_controls = &e->stc;
    svlm_stc_controls resolved = *stc_controls;
    if (resolved.enabled < 0) resolved.enabled = !svlm_kernels_is_gpu(e->k_ingest);
    stc_controls = &resolved;
    queued_frame *queue = calloc((size_t)e->p.frame_queue, sizeof *queue);
    if (!queue) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    svlm_stc *stc = NULL;
    if (stc_controls->enabled && e->vc) {
        compute_lock(e); /* it allocates on the ingest kernels */
        svlm_status st = svlm_stc_create(e->vc, stc_controls, &stc, err);
        pthread_mutex_unlock(&e->compute_mu);
        if (st) {
            free(queue);
            return st;
        }
        /* the pruner's novelty also looks at what the stream's memory already holds */
        if (svlm_stream_memory(s)) svlm_stc_set_memory(stc, svlm_stream_memory_similarity, s);
    }
    pthread_mutex_lock(&e->mu);
    int slot = -1;
    for (int i = 0; i < e->n_streams && slot < 0; i++)
        if (!e->streams[i].s) slot = i; /* a removed stream's place */
    if (e->stop || (slot < 0 && e->n_streams == e->p.max_streams)) {
        const int stopped = e->stop; /* (stop would not join its turns nor end its deferred joins) */
        pthread_mutex_unlock(&e->mu);
        free(queue);
        compute_lock(e);
        svlm_stc_free(stc);
        pthread_mutex_unlock(&e->compute_mu);
        if (stopped) return svlm_fail(err, SVLM_E_CANCELLED, "the engine has stopped");
        return svlm_fail(err, SVLM_E_LIMIT, "the engine serves at most %d streams", e->p.max_streams);
    }
    if (slot < 0) slot = e->n_streams++;
    svlm_stream_set_deferred_join(s, e->p.exact ? 2 : 1);
    e->streams[slot] = (lane_stream){.s = s, .queue = queue, .stc = stc};
    *id = slot;
    pthread_mutex_unlock(&e->mu);
    return SVLM_OK;
}

svlm_status svlm_engine_open_stream(svlm_engine *e, const svlm_stream_params *p, const char *system_prompt,
                                    svlm_stream **out, int *id, svlm_err *err) {
    return svlm_engine_open_stream_with(e, p, system_prompt, NULL, out, id, err);
}

svlm_status svlm_engine_open_stream_with(svlm_engine *e, const svlm_stream_params *p,
                                         const char *system_prompt, const svlm_stc_controls *stc,
                                         svlm_stream **out, int *id, svlm_err *err) {
    *out = NULL;
    svlm_stream_params sp = *p;
    if (sp.max_answers <= 0) sp.max_answers = e->p.max_active; /* its pool holds them all */
    compute_lock(e); /* the system prompt runs on the ingest kernels */
    svlm_status st = svlm_stream_create(e->model, e->k_ingest, &sp, system_prompt, out, err);
    pthread_mutex_unlock(&e->compute_mu);
    if (!st) st = svlm_engine_add_stream_with(e, *out, stc, id, err);
    if (st) {
        svlm_engine_free_stream(e, *out); /* (the lane may be running other streams on its kernels) */
        *out = NULL;
    }
    return st;
}

void svlm_engine_refuse_pushes(svlm_engine *e, int sid) {
    pthread_mutex_lock(&e->mu);
    if (sid >= 0 && sid < e->n_streams && e->streams[sid].s) {
        e->streams[sid].refusing = 1;
        pthread_cond_broadcast(&e->cv_room);
    }
    pthread_mutex_unlock(&e->mu);
}

void svlm_engine_remove_stream(svlm_engine *e, int sid) {
    pthread_mutex_lock(&e->mu);
    if (sid < 0 || sid >= e->n_streams || !e->streams[sid].s) {
        pthread_mutex_unlock(&e->mu);
        return;
    }
    lane_stream *ls = &e->streams[sid];
    ls->closing = 1;
    question *lists[] = {e->ready, e->active, e->hand};
    for (int l = 0; l < 3; l++)
        for (question *q = lists[l]; q; q = q->next)
            if (q->sid == sid) __atomic_store_n(&q->cancel, 1, __ATOMIC_RELAXED);
    for (question **pp = &e->pinned; *pp;) { /* pinned ones end at once, on the answer lane */
        question *q = *pp;
        if (q->sid != sid) {
            pp = &q->next;
            continue;
        }
        *pp = q->next;
        q->cancel = 1;
        ls->in_flight++;
        list_append(&e->ready, q);
    }
    pthread_cond_signal(&e->cv_answer);
    for (int j = 0; j < ls->n; j++)
        svlm_frame_release(&ls->queue[(ls->head + j) % e->p.frame_queue].f);
    e->m.frames_dropped += ls->n; /* (pushed = done + dropped, the stream removed or not) */
    ls->n = 0;
    pthread_cond_broadcast(&e->cv_room);
    /* answers end on the answer lane, or in svlm_engine_stop once the lanes are gone (it ends every
     * list, then joins turns with ingest_sid set): either way they end before the stream goes */
    while (ls->in_flight > 0 || e->ingest_sid == sid || ls->ingesting)
        pthread_cond_wait(&e->cv_idle, &e->mu);
    svlm_stc *stc = ls->stc;
    free(ls->queue);
    svlm_stream_set_deferred_join(ls->s, 0);
    *ls = (lane_stream){0};
    pthread_mutex_unlock(&e->mu);
    compute_lock(e); /* it frees on the ingest kernels, which the lane may be using */
    svlm_stc_free(stc);
    pthread_mutex_unlock(&e->compute_mu);
}

void svlm_engine_free_stream(svlm_engine *e, svlm_stream *s) {
    if (!s) return;
    if (!e) {
        svlm_stream_free(s);
        return;
    }
    compute_lock(e);
    svlm_stream_free(s);
    pthread_mutex_unlock(&e->compute_mu);
}

/* A dropped frame was the first after a break: the frame after it (queued, or the next pushed) is. */
static void pass_restart(lane_stream *ls) {
    if (ls->n > 0)
        ls->queue[ls->head].restart = 1;
    else
        ls->restart_next = 1;
}

svlm_status svlm_engine_push_frame(svlm_engine *e, int sid, svlm_frame *frame, int block, svlm_err *err) {
    pthread_mutex_lock(&e->mu);
    if (e->stop) { /* no lane would take it up */
        pthread_mutex_unlock(&e->mu);
        svlm_frame_release(frame);
        return svlm_fail(err, SVLM_E_CANCELLED, "the engine has stopped");
    }
    if (sid < 0 || sid >= e->n_streams || !e->streams[sid].s || e->streams[sid].closing) {
        pthread_mutex_unlock(&e->mu);
        svlm_frame_release(frame);
        return svlm_fail(err, SVLM_E_INVALID, "no stream %d", sid);
    }
    lane_stream *ls = &e->streams[sid];
    const svlm_stream *mine = ls->s;
    while (block && ls->n == e->p.frame_queue && !e->stop && ls->s == mine && !ls->closing && !ls->refusing)
        pthread_cond_wait(&e->cv_room, &e->mu);
    if (ls->s != mine || ls->closing) { /* removed (or its slot reused) while this push waited */
        pthread_mutex_unlock(&e->mu);
        svlm_frame_release(frame);
        return svlm_fail(err, SVLM_E_INVALID, "stream %d was closed", sid);
    }
    if (ls->refusing) {
        pthread_mutex_unlock(&e->mu);
        svlm_frame_release(frame);
        return svlm_fail(err, SVLM_E_CANCELLED, "stream %d takes no more frames", sid);
    }
    if (e->stop) { /* stopped while this push waited: no lane takes it, stop counted the queue */
        pthread_mutex_unlock(&e->mu);
        svlm_frame_release(frame);
        return svlm_fail(err, SVLM_E_CANCELLED, "the engine has stopped");
    }
    if (ls->n == e->p.frame_queue) { /* live and full: the oldest waiting frame goes */
        const int restart = ls->queue[ls->head].restart;
        svlm_frame_release(&ls->queue[ls->head].f);
        ls->head = (ls->head + 1) % e->p.frame_queue;
        ls->n--;
        if (restart) pass_restart(ls); /* the break is still between the frames before and after it */
        ls->handled++;
        e->m.frames_dropped++;
        svlm_stream_note_drop(ls->s);
        release_pinned(e, sid);
    }
    ls->queue[(ls->head + ls->n) % e->p.frame_queue] = (queued_frame){*frame, ls->restart_next};
    ls->restart_next = 0;
    ls->n++;
    memset(frame, 0, sizeof *frame);
    pthread_cond_signal(&e->cv_ingest);
    pthread_mutex_unlock(&e->mu);
    return SVLM_OK;
}

/* A disconnect and the reconnect after it are breaks in the video: what comes after is not the
 * scene that the frames before it showed (a camera down for minutes, another scene). Drops, corrupt
 * packets and stalls are not: the frames around them are still of one scene. */
static int breaks_video(svlm_source_event_kind kind) {
    return kind == SVLM_EVENT_DISCONNECT || kind == SVLM_EVENT_RECONNECT;
}

svlm_status svlm_engine_push_event(svlm_engine *e, int sid, const svlm_source_event *ev, svlm_err *err) {
    pthread_mutex_lock(&e->mu);
    if (e->stop) {
        pthread_mutex_unlock(&e->mu);
        return svlm_fail(err, SVLM_E_CANCELLED, "the engine has stopped");
    }
    if (sid < 0 || sid >= e->n_streams || !e->streams[sid].s || e->streams[sid].closing) {
        pthread_mutex_unlock(&e->mu);
        return svlm_fail(err, SVLM_E_INVALID, "no stream %d", sid);
    }
    /* on the next frame pushed, in its order: the frames queued before the break still compare
     * with the ones before them */
    if (breaks_video(ev->kind)) e->streams[sid].restart_next = 1;
    pthread_mutex_unlock(&e->mu);
    return SVLM_OK;
}

svlm_status svlm_engine_ask(svlm_engine *e, int sid, const char *question_text, const svlm_ask_opts *o,
                            int pin, svlm_stream_token_fn on_token, svlm_engine_done_fn on_done, void *user,
                            uint64_t *qid, svlm_err *err) {
    if (!o || o->max_tokens <= 0) return svlm_fail(err, SVLM_E_INVALID, "max_tokens must be positive");
    question *q = calloc(1, sizeof *q);
    if (q) q->text = strdup(question_text);
    if (!q || !q->text) {
        free(q);
        return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    }
    q->t_ask = now_ms();
    q->o = *o;
    q->o.prompt_text = NULL; /* its owner would be the answer lane's */
    q->o.query_vecs = NULL;
    q->o.n_query_vecs = 0;
    q->on_token = on_token;
    q->on_done = on_done;
    q->user = user;
    q->pin = pin;
    pthread_mutex_lock(&e->mu);
    if (e->stop) { /* no lane would take it up: its done would never come */
        pthread_mutex_unlock(&e->mu);
        free(q->text);
        free(q);
        return svlm_fail(err, SVLM_E_CANCELLED, "the engine has stopped");
    }
    if (sid < 0 || sid >= e->n_streams || !e->streams[sid].s || e->streams[sid].closing) {
        pthread_mutex_unlock(&e->mu);
        free(q->text);
        free(q);
        return svlm_fail(err, SVLM_E_INVALID, "no stream %d", sid);
    }
    q->sid = sid;
    q->id = ++e->next_qid;
    if (qid) *qid = q->id;
    lane_stream *ls = &e->streams[sid];
    q->pin_frames = ls->handled + ls->n + ls->ingesting;
    if (pin) {
        list_append(&e->pinned, q);
        release_pinned(e, sid);
    } else {
        ls->in_flight++;
        list_append(&e->ready, q);
        pthread_cond_signal(&e->cv_answer);
    }
    pthread_mutex_unlock(&e->mu);
    return SVLM_OK;
}

void svlm_engine_cancel(svlm_engine *e, uint64_t qid) {
    pthread_mutex_lock(&e->mu);
    question *lists[] = {e->pinned, e->ready, e->active, e->hand};
    for (int l = 0; l < 4; l++)
        for (question *q = lists[l]; q; q = q->next)
            if (q->id == qid) __atomic_store_n(&q->cancel, 1, __ATOMIC_RELAXED);
    /* a pinned question waiting for its frame is ended at once */
    for (question *q = e->pinned; q; q = q->next)
        if (q->id == qid) {
            list_remove(&e->pinned, q);
            e->streams[q->sid].in_flight++;
            list_append(&e->ready, q);
            pthread_cond_signal(&e->cv_answer);
            break;
        }
    pthread_mutex_unlock(&e->mu);
}

static int busy(svlm_engine *e) {
    if (e->pinned || e->ready || e->active || e->ingest_busy || e->answer_busy || e->ahead >= 0) return 1;
    for (int i = 0; i < e->n_streams; i++)
        if (e->streams[i].n > 0 || e->streams[i].join_due) return 1;
    return 0;
}

void svlm_engine_drain(svlm_engine *e) {
    pthread_mutex_lock(&e->mu);
    e->draining++; /* exact replays join their last turns now */
    while (busy(e) && !e->stop) {
        pthread_cond_signal(&e->cv_ingest);
        pthread_cond_signal(&e->cv_answer);
        pthread_cond_wait(&e->cv_idle, &e->mu);
    }
    e->draining--;
    pthread_mutex_unlock(&e->mu);
}

void svlm_engine_metrics_get(svlm_engine *e, svlm_engine_metrics *out) {
    pthread_mutex_lock(&e->mu);
    *out = e->m;
    int n = 0;
    for (question *q = e->active; q; q = q->next)
        n++;
    for (question *q = e->hand; q; q = q->next) /* (the lane's: one starting or stepping, or a batch) */
        n++;
    out->active_answers = n;
    n = 0;
    for (question *q = e->ready; q; q = q->next)
        n++;
    for (question *q = e->pinned; q; q = q->next)
        n++;
    out->queued_questions = n;
    n = 0;
    for (int i = 0; i < e->n_streams; i++)
        n += e->streams[i].n;
    out->queued_frames = n;
    pthread_mutex_unlock(&e->mu);
    out->ingest_ops = svlm_kernels_ops(e->k_ingest);
    out->answer_ops = svlm_kernels_ops(e->k_answer);
}
