/* A stream's bounded context: frame ingestion, forked questions, metrics. */
#include "pipeline/stream.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "common/threadpool.h"
#include "pipeline/stream_internal.h"
#include "vision/prompt.h"

/* A turn answered while joins are deferred, waiting for the ingest side to prefill it. */
typedef struct pending_turn {
    int32_t *ids;
    int n;
    int64_t turn;
    struct pending_turn *next;
} pending_turn;

struct svlm_stream {
    svlm_llama *model;
    const svlm_tokenizer *tok;
    svlm_vlm_specials specials;
    svlm_stream_params p;
    svlm_kv_pool *pool;
    pthread_mutex_t mu; /* guards seq, ingest ctx and the counters */
    svlm_kv_seq *seq;
    svlm_llama_ctx *ingest;
    int64_t frames_in, frames_dropped, questions, answers_joined;
    double prefill_ms_total, encode_ms_total;
    int64_t encodes, image_rows_in;
    int64_t stc[8]; /* frames, patches, recomputed, reused, partial, cuts, tokens, kept */
    int memory_on;
    stream_memory mem; /* used under mu (the hook runs inside add_frame) */
    double time_offset, t_last;
    int deferred_join; /* (read without mu by answer_finish: atomic) */
    /* The waiting turns have a lock of their own: an answer's end queues its turn without waiting
     * for the frame or join prefill that holds mu (the engine's answer lane would stall behind it). */
    pthread_mutex_t join_mu;
    pending_turn *pending, **pending_tail;
    /* The metrics as last read under mu, for readers that must not wait for a prefill (the
     * server's status, on its service thread): svlm_stream_metrics_peek. */
    pthread_mutex_t snap_mu;
    svlm_stream_metrics snap;
};

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

int svlm_stream_ctx_size(const svlm_stream *s) {
    return s->p.sink_tokens + s->p.vision_tokens + s->p.text_tokens + s->p.answer_room + s->p.memory_room;
}
svlm_dtype svlm_stream_kv_type(const svlm_stream *s) {
    return s->p.kv_type;
}

int svlm_stream_pool_pages(const svlm_stream_params *p) {
    /* the stream and max_answers forks, each with its answer room and, at worst, a whole window of
     * pages the stream has evicted since the fork (pages are made as they are used: the bound costs
     * nothing until reached); never below the bound for a few forks that came before */
    const int64_t cap = (int64_t)p->sink_tokens + p->vision_tokens + p->text_tokens,
                  B = p->page_tokens > 0 ? p->page_tokens : 16;
    const int64_t room = (int64_t)p->answer_room + p->memory_room,
                  answers = p->max_answers > 0 ? p->max_answers : 4;
    if (cap + room > (1 << 28)) return INT32_MAX / 2; /* (budgets this large are refused) */
    const svlm_kv_policy stream = {{p->sink_tokens, p->vision_tokens, p->text_tokens}, 1},
                         fork = {{p->sink_tokens, p->vision_tokens, (int)(p->text_tokens + room)}, 1};
    const int64_t least = 4 * ((cap + 4 * room) / B + 16);
    int64_t want = svlm_kv_policy_pages(&stream, (int)B) + answers * svlm_kv_policy_pages(&fork, (int)B) + 16;
    if (want < least) want = least;
    return (int)(want < INT32_MAX / 2 ? want : INT32_MAX / 2);
}

svlm_status svlm_stream_create(svlm_llama *m, svlm_kernels *k, const svlm_stream_params *p,
                               const char *system_prompt, svlm_stream **out, svlm_err *err) {
    *out = NULL;
    if (p->sink_tokens < 0 || p->vision_tokens <= 0 || p->text_tokens <= 0 || p->rows_per_frame <= 0 ||
        p->answer_room < 0 || p->page_tokens < 0)
        return svlm_fail(err, SVLM_E_INVALID, "stream: window budgets and rows per frame must be positive");
    svlm_stream *s = calloc(1, sizeof *s);
    if (!s) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    s->model = m;
    s->tok = svlm_llama_tokenizer(m);
    s->p = *p;
    if (!s->p.answer_room) s->p.answer_room = 256;
    if (!s->p.page_tokens) s->p.page_tokens = 16;
    if (s->p.memory_top_k <= 0) s->p.memory_top_k = 3;
    if (s->p.memory_tokens <= 0) s->p.memory_tokens = 64;
    if (!s->p.memory)
        s->p.memory_room = 0;
    else if (s->p.memory_room <= 0)
        s->p.memory_room = s->p.memory_tokens + 24 * s->p.memory_top_k;
    s->pending_tail = &s->pending;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->join_mu, NULL);
    pthread_mutex_init(&s->snap_mu, NULL);
    svlm_status st = svlm_vlm_specials_find(s->tok, &s->specials, err);
    const int cap = s->p.sink_tokens + s->p.vision_tokens + s->p.text_tokens;
    if (s->p.max_answers <= 0) s->p.max_answers = 4;
    const int pages = svlm_stream_pool_pages(&s->p);
    if (!st) st = svlm_llama_kv_pool_create(m, s->p.kv_type, s->p.page_tokens, pages, &s->pool, err);
    svlm_kv_policy pol = {{s->p.sink_tokens, s->p.vision_tokens, s->p.text_tokens}, 1};
    if (!st) st = svlm_kv_seq_create(s->pool, &pol, &s->seq, err);
    if (!st) st = svlm_llama_ctx_create(m, k, cap, s->p.kv_type, &s->ingest, err);
    /* on a GPU each frame's eviction moves the window's rows there in one op instead of bringing
     * them over from the pages (SVLM_KV_SHIFT=0 or 1 decides) */
    const char *shift = getenv("SVLM_KV_SHIFT");
    const int follow = shift && *shift ? atoi(shift) != 0 : svlm_kernels_is_gpu(k);
    if (!st && follow) st = svlm_llama_ctx_follow_moves(s->ingest, 1, err);
    if (!st && s->p.memory) {
        s->memory_on = 1;
        st = stream_memory_init(&s->mem, m, &s->p, err);
        if (!st) {
            svlm_kv_evict_hook hook = {stream_memory_on_evict, &s->mem};
            svlm_kv_seq_set_hook(s->seq, &hook);
            svlm_memory_stats ms;
            svlm_memory_stats_get(s->mem.bank, &ms);
            /* a resumed bank: this stream's clock continues after what it remembers */
            if (ms.frames > 0 || ms.t_last > 0) s->time_offset = (double)(int64_t)ms.t_last + 1.0;
        }
    }
    if (!st && system_prompt && *system_prompt) {
        int32_t *ids = NULL;
        size_t n = 0;
        st = svlm_tokenize(s->tok, system_prompt, strlen(system_prompt), 1, 1, &ids, &n, err);
        if (!st && (n == 0 || n > (size_t)s->p.sink_tokens))
            st = svlm_fail(err, SVLM_E_LIMIT, "the system prompt has %zu tokens, the sink budget is %d", n,
                           s->p.sink_tokens);
        if (!st)
            st = svlm_llama_eval_seq(s->ingest, s->seq, SVLM_KV_SINK, 0, ids, NULL, (int)n, NULL, 0, err);
        free(ids);
    }
    if (st) {
        svlm_stream_free(s);
        return st;
    }
    *out = s;
    return SVLM_OK;
}

void svlm_stream_free(svlm_stream *s) {
    if (!s) return;
    svlm_llama_ctx_free(s->ingest);
    svlm_kv_seq_free(s->seq);
    if (s->memory_on) {
        svlm_err err = {0};
        /* the last clip and event persist (no bank: its creation failed, and so did the stream's) */
        if (s->mem.bank) svlm_memory_flush(s->mem.bank, &err);
        stream_memory_free(&s->mem);
    }
    while (s->pending) {
        pending_turn *t = s->pending;
        s->pending = t->next;
        free(t->ids);
        free(t);
    }
    svlm_kv_pool_free(s->pool);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->join_mu);
    pthread_mutex_destroy(&s->snap_mu);
    free(s);
}

/* Prefills the turns answered since the last frame (deferred joins), oldest first, under mu: all
 * of them (max_tokens <= 0) or until at least max_tokens tokens went in. 1 if turns remain. */
static int join_pending_locked(svlm_stream *s, int max_tokens) {
    int joined = 0;
    while (max_tokens <= 0 || joined < max_tokens) {
        pthread_mutex_lock(&s->join_mu);
        pending_turn *t = s->pending;
        if (t && !(s->pending = t->next)) s->pending_tail = &s->pending;
        pthread_mutex_unlock(&s->join_mu);
        if (!t) break;
        svlm_err join_err = {0};
        if (svlm_llama_eval_seq(s->ingest, s->seq, SVLM_KV_TEXT, t->turn, t->ids, NULL, t->n, NULL, 0,
                                &join_err) == SVLM_OK)
            s->answers_joined++;
        joined += t->n;
        free(t->ids);
        free(t);
    }
    if (s->memory_on) stream_memory_flush(&s->mem); /* (turns evict turns: nothing, as a rule) */
    pthread_mutex_lock(&s->join_mu);
    const int more = s->pending != NULL;
    pthread_mutex_unlock(&s->join_mu);
    return more;
}

svlm_status svlm_stream_join_pending(svlm_stream *s, svlm_err *err) {
    (void)err;
    pthread_mutex_lock(&s->mu);
    join_pending_locked(s, 0);
    pthread_mutex_unlock(&s->mu);
    return SVLM_OK;
}

int svlm_stream_join_some(svlm_stream *s, int max_tokens) {
    pthread_mutex_lock(&s->mu);
    const int more = join_pending_locked(s, max_tokens);
    pthread_mutex_unlock(&s->mu);
    return more;
}

int svlm_stream_turns_waiting(svlm_stream *s) {
    pthread_mutex_lock(&s->join_mu);
    const int waiting = s->pending != NULL;
    pthread_mutex_unlock(&s->join_mu);
    return waiting;
}

void svlm_stream_set_deferred_join(svlm_stream *s, int on) {
    pthread_mutex_lock(&s->mu);
    __atomic_store_n(&s->deferred_join, on, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&s->mu);
}

int64_t svlm_stream_frames_in(const svlm_stream *s) {
    return __atomic_load_n(&s->frames_in, __ATOMIC_RELAXED);
}

void svlm_stream_note_encode(svlm_stream *s, double ms) {
    pthread_mutex_lock(&s->mu);
    s->encode_ms_total += ms;
    s->encodes++;
    pthread_mutex_unlock(&s->mu);
}

svlm_memory *svlm_stream_memory(svlm_stream *s) {
    return s->memory_on ? s->mem.bank : NULL;
}

void svlm_stream_memory_similarity(void *user, const float *tokens, int n, int dim, float *similarity) {
    svlm_stream *s = user;
    if (!s->memory_on) {
        for (int i = 0; i < n; i++)
            similarity[i] = -2.0f;
        return;
    }
    stream_memory_similarity(&s->mem, tokens, n, dim, similarity); /* the bank has its own lock */
}

void svlm_stream_note_stc(svlm_stream *s, int n_patches, int n_recomputed, int path, int cut, int n_tokens,
                          int n_kept) {
    pthread_mutex_lock(&s->mu);
    s->stc[0]++;
    s->stc[1] += n_patches;
    s->stc[2] += n_recomputed;
    s->stc[3] += path == 2;
    s->stc[4] += path == 1;
    s->stc[5] += cut != 0;
    s->stc[6] += n_tokens;
    s->stc[7] += n_kept;
    pthread_mutex_unlock(&s->mu);
}

svlm_status svlm_stream_add_frame(svlm_stream *s, double t_seconds, const float *embd, svlm_err *err) {
    return svlm_stream_add_frame_tokens(s, t_seconds, embd, s->p.rows_per_frame, err);
}

/* The first half of appending a frame: its prompt built, the stream locked, answered turns
 * joined, the frame remembered. On success the stream stays locked for frame_end. */
static svlm_status frame_begin(svlm_stream *s, double t_seconds, const float *embd, int n_tokens,
                               svlm_prompt *fp, int64_t *tag, double *t_abs, svlm_err *err) {
    svlm_prompt_init(fp);
    if (n_tokens < 1 || n_tokens > s->p.rows_per_frame)
        return svlm_fail(err, SVLM_E_INVALID, "a frame has 1 to %d image rows, got %d", s->p.rows_per_frame,
                         n_tokens);
    t_seconds += s->time_offset;
    svlm_status st = svlm_prompt_frame(fp, s->tok, &s->specials, t_seconds, n_tokens, err);
    if (!st && fp->n_image_rows != (size_t)n_tokens)
        st = svlm_fail(err, SVLM_E_INVALID, "frame layout has %zu image rows, expected %d", fp->n_image_rows,
                       n_tokens);
    if (st) return st;
    pthread_mutex_lock(&s->mu);
    if (s->deferred_join != 2) join_pending_locked(s, 0);
    /* the tag is the frame time in milliseconds: what the memory bank files it under */
    *tag = (int64_t)(t_seconds * 1000.0);
    *t_abs = t_seconds;
    if (s->memory_on) stream_memory_remember(&s->mem, *tag, t_seconds, embd, n_tokens);
    return SVLM_OK;
}

/* The second half: the frames the append evicted into the memory bank (when not done already),
 * counters, then the stream unlocked. */
static void frame_end(svlm_stream *s, svlm_status st, double t_abs, int n_tokens, double prefill_ms) {
    if (s->memory_on) stream_memory_flush(&s->mem);
    if (!st) {
        s->t_last = t_abs;
        __atomic_store_n(&s->frames_in, s->frames_in + 1, __ATOMIC_RELAXED); /* (read without mu) */
        s->image_rows_in += n_tokens;
        s->prefill_ms_total += prefill_ms;
    }
    pthread_mutex_unlock(&s->mu);
}

svlm_status svlm_stream_add_frame_tokens(svlm_stream *s, double t_seconds, const float *embd, int n_tokens,
                                         svlm_err *err) {
    svlm_prompt fp;
    int64_t tag = 0;
    double t_abs = 0;
    svlm_status st = frame_begin(s, t_seconds, embd, n_tokens, &fp, &tag, &t_abs, err);
    if (!st) {
        double t0 = now_ms();
        st = svlm_llama_eval_seq(s->ingest, s->seq, SVLM_KV_VISION, tag, fp.ids, embd, (int)fp.n, NULL, 0,
                                 err);
        frame_end(s, st, t_abs, n_tokens, now_ms() - t0);
    }
    svlm_prompt_free(&fp);
    return st;
}

static void flush_task(void *ctx, int i, int thread) {
    (void)thread;
    svlm_stream *s = ((svlm_stream *const *)ctx)[i];
    if (s->memory_on) stream_memory_flush(&s->mem);
}

svlm_status svlm_streams_add_frames(svlm_llama_multi *mb, svlm_pool *pool, svlm_stream *const *ss,
                                    const double *t_seconds, const float *const *embd, const int *n_tokens,
                                    int n, svlm_status *st, svlm_err *errs) {
    enum { MAX = 256 };
    if (n < 1 || n > MAX)
        return svlm_fail(&errs[0], SVLM_E_INVALID, "1 to %d frames at once, not %d", MAX, n);
    svlm_prompt fp[MAX];
    int64_t tag[MAX];
    double t_abs[MAX];
    svlm_llama_multi_item items[MAX];
    int at[MAX], ni = 0; /* items[at[i]] is frame i's, or -1 */
    /* frame_begin locks each frame's stream until frame_end: in address order, one order for every
     * batch (a batch holds each stream once) */
    int order[MAX];
    for (int i = 0; i < n; i++) {
        int j = i;
        for (; j > 0 && (uintptr_t)ss[order[j - 1]] > (uintptr_t)ss[i]; j--)
            order[j] = order[j - 1];
        order[j] = i;
    }
    for (int o = 0; o < n; o++) {
        const int i = order[o];
        at[i] = -1;
        st[i] = frame_begin(ss[i], t_seconds[i], embd[i], n_tokens[i], &fp[i], &tag[i], &t_abs[i], &errs[i]);
    }
    for (int i = 0; i < n; i++) {
        if (st[i]) continue;
        if (fp[i].n > (size_t)svlm_llama_multi_item_max()) { /* too long for a shared pass: alone */
            double t0 = now_ms();
            st[i] = svlm_llama_eval_seq(ss[i]->ingest, ss[i]->seq, SVLM_KV_VISION, tag[i], fp[i].ids, embd[i],
                                        (int)fp[i].n, NULL, 0, &errs[i]);
            frame_end(ss[i], st[i], t_abs[i], n_tokens[i], now_ms() - t0);
            continue;
        }
        items[ni] = (svlm_llama_multi_item){.ctx = ss[i]->ingest,
                                            .seq = ss[i]->seq,
                                            .kind = SVLM_KV_VISION,
                                            .tag = tag[i],
                                            .ids = fp[i].ids,
                                            .embd = embd[i],
                                            .n = (int)fp[i].n};
        at[i] = ni++;
    }
    const double t0 = now_ms();
    svlm_err e = {0};
    svlm_status all = ni ? svlm_llama_eval_seq_multi(mb, items, ni, &e) : SVLM_OK;
    const double per = ni ? (now_ms() - t0) / ni : 0;
    /* the frames the pass evicted go into the streams' banks side by side (each bank its own) */
    svlm_stream *locked[MAX];
    int nk = 0;
    for (int i = 0; i < n; i++)
        if (at[i] >= 0) locked[nk++] = ss[i];
    if (pool && nk > 1) svlm_pool_run(pool, flush_task, locked, nk);
    for (int i = 0; i < n; i++) {
        if (at[i] >= 0) {
            const svlm_llama_multi_item *it = &items[at[i]];
            st[i] = all ? all : it->status;
            if (all)
                errs[i] = e;
            else if (st[i])
                svlm_fail(&errs[i], st[i], "%s", it->err_msg);
            frame_end(ss[i], st[i], t_abs[i], n_tokens[i], per);
        }
        svlm_prompt_free(&fp[i]);
    }
    return SVLM_OK;
}

/* Without mu: the engine counts a drop under its own lock, which must not wait for this stream's
 * frame prefill (every lane and push would wait with it). */
void svlm_stream_note_drop(svlm_stream *s) {
    __atomic_add_fetch(&s->frames_dropped, 1, __ATOMIC_RELAXED);
}

struct svlm_stream_fork {
    svlm_kv_seq *seq;
    int64_t frames_at_fork, turn;
    double t_created, wait_ms, now; /* now: stream time of the newest frame it holds */
    int prepared;                   /* memory retrieved at the fork (svlm_stream_fork_prepare) */
    int copy_taken;                 /* the answer's context copied the stream's window at the fork */
    stream_prompt pr;
    svlm_answer_metrics am;
};

svlm_status svlm_stream_fork_now(svlm_stream *s, svlm_stream_fork **out, svlm_err *err) {
    return svlm_stream_fork_into(s, NULL, out, err);
}

svlm_status svlm_stream_fork_into(svlm_stream *s, svlm_llama_ctx *ctx, svlm_stream_fork **out,
                                  svlm_err *err) {
    *out = NULL;
    svlm_stream_fork *f = calloc(1, sizeof *f);
    if (!f) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    f->t_created = now_ms();
    pthread_mutex_lock(&s->mu);
    f->wait_ms = now_ms() - f->t_created;
    svlm_status st = svlm_kv_seq_fork(s->seq, &f->seq, err);
    /* memory, question and answer grow the fork's dialogue window, never evicting what the stream
     * had (a growth the pool cannot promise refuses the fork: no question counted, no copy made) */
    svlm_kv_policy pol = {
        {s->p.sink_tokens, s->p.vision_tokens, s->p.text_tokens + s->p.answer_room + s->p.memory_room}, 1};
    if (!st && (st = svlm_kv_seq_set_policy(f->seq, &pol, err))) svlm_kv_seq_free(f->seq);
    if (!st) {
        f->frames_at_fork = s->frames_in;
        f->turn = ++s->questions;
        f->now = s->t_last;
        /* while the stream is locked its context is still (every append ends with its ops finished):
         * the answer's context copies the window from it instead of building it from the pages */
        if (ctx) f->copy_taken = svlm_llama_ctx_take_copy(ctx, s->ingest, s->seq, f->seq);
    }
    pthread_mutex_unlock(&s->mu);
    if (st) {
        free(f);
        return st;
    }
    *out = f;
    return SVLM_OK;
}

void svlm_stream_fork_free(svlm_stream_fork *f) {
    if (!f) return;
    svlm_kv_seq_free(f->seq);
    stream_prompt_free(&f->pr);
    free(f);
}

svlm_status svlm_stream_fork_prepare(svlm_stream *s, svlm_stream_fork *f, const char *question,
                                     const svlm_ask_opts *o, svlm_err *err) {
    stream_prompt_free(&f->pr);
    memset(&f->am, 0, sizeof f->am);
    f->prepared = 0;
    svlm_status st = SVLM_OK;
    if (o->prompt_text && !(f->pr.text = calloc(1, 1))) st = svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    if (!st && s->memory_on && o->use_memory)
        st = stream_memory_prompt(&s->mem, s->tok, question, f->now, o, &f->pr, &f->am, err);
    if (st) {
        stream_prompt_free(&f->pr);
        return st;
    }
    f->prepared = 1;
    return SVLM_OK;
}

struct svlm_stream_answer {
    svlm_stream *s;
    svlm_llama_ctx *ctx;
    svlm_kv_seq *fork;
    stream_prompt pr; /* memory, then the question turn from q_start, then the answer */
    int q_start, n_end, max_tokens, eog;
    int32_t next;          /* the token picked after the last one evaluated */
    svlm_sampler *sampler; /* NULL: greedy */
    float *logits;         /* [n_vocab] on the host, with a sampler */
    int64_t frames_at_fork, turn;
    double t0, t_first;
    svlm_stream_token_fn on_token;
    void *user;
    svlm_answer_metrics am;
};

static void answer_free(svlm_stream_answer *a) {
    if (!a) return;
    svlm_sampler_free(a->sampler);
    free(a->logits);
    svlm_kv_seq_free(a->fork);
    stream_prompt_free(&a->pr);
    free(a);
}

/* Evaluates n tokens of the answer's turn and picks the next one: greedy where the logits are
 * made, or the sampler's draw from them. */
static svlm_status answer_eval(svlm_stream_answer *a, const int32_t *ids, const float *embd, int n,
                               svlm_err *err) {
    if (!a->sampler)
        return svlm_llama_eval_seq_greedy(a->ctx, a->fork, SVLM_KV_TEXT, a->turn, ids, embd, n, &a->next,
                                          err);
    svlm_status st =
        svlm_llama_eval_seq(a->ctx, a->fork, SVLM_KV_TEXT, a->turn, ids, embd, n, a->logits, 0, err);
    if (!st) a->next = svlm_sampler_sample(a->sampler, a->logits);
    return st;
}

svlm_status svlm_stream_answer_start(svlm_stream *s, svlm_stream_fork *f, svlm_llama_ctx *ctx,
                                     const char *question, const svlm_ask_opts *o,
                                     svlm_stream_token_fn on_token, void *user, svlm_stream_answer **out,
                                     svlm_err *err) {
    *out = NULL;
    svlm_stream_answer *a = calloc(1, sizeof *a);
    if (!a) {
        svlm_stream_fork_free(f);
        return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    }
    a->s = s;
    a->ctx = ctx;
    a->fork = f->seq;
    f->seq = NULL;
    a->frames_at_fork = f->frames_at_fork;
    a->turn = f->turn;
    a->t0 = f->t_created; /* times count from the fork: the moment the question was asked */
    a->am.wait_ms = f->wait_ms;
    a->on_token = on_token;
    a->user = user;
    a->max_tokens = o->max_tokens;
    const double now = f->now;
    const int prepared = f->prepared;
    if (prepared) { /* memory as it was at the fork */
        a->pr = f->pr;
        memset(&f->pr, 0, sizeof f->pr);
        const double wait = a->am.wait_ms;
        a->am = f->am;
        a->am.wait_ms = wait;
    }
    const int copied = f->copy_taken;
    svlm_stream_fork_free(f);
    svlm_status st = SVLM_OK;
    if (o->max_tokens <= 0) st = svlm_fail(err, SVLM_E_INVALID, "max_tokens must be positive");
    if (!st && !ctx) st = svlm_fail(err, SVLM_E_INVALID, "ask needs a decoder context");
    if (!st && !prepared && o->prompt_text && !(a->pr.text = calloc(1, 1)))
        st = svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    if (!st && !prepared && s->memory_on && o->use_memory)
        st = stream_memory_prompt(&s->mem, s->tok, question, now, o, &a->pr, &a->am, err);
    a->am.window_copied = copied;
    a->q_start = a->pr.n;
    /* the SmolVLM2 chat turn; the question itself is plain text */
    if (!st) st = stream_prompt_push_text(&a->pr, s->tok, "<|im_start|>User:", 1, err);
    char *q = st ? NULL : malloc(strlen(question) + 2);
    if (!st && !q) st = svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    if (!st) {
        q[0] = ' ';
        strcpy(q + 1, question);
        st = stream_prompt_push_text(&a->pr, s->tok, q, 0, err);
    }
    free(q);
    if (!st) st = stream_prompt_push_text(&a->pr, s->tok, "<end_of_utterance>\nAssistant:", 1, err);
    const int n_q = a->pr.n - a->q_start;
    if (!st && n_q + o->max_tokens > s->p.answer_room)
        st = svlm_fail(err, SVLM_E_TOO_LONG,
                       "a %d-token question and %d answer tokens exceed the answer room of %d", n_q,
                       o->max_tokens, s->p.answer_room);
    if (!st && o->prompt_text) {
        *o->prompt_text = a->pr.text;
        a->pr.text = NULL;
    }
    if (!st) {
        int32_t *g = realloc(a->pr.ids, (size_t)(a->pr.n + o->max_tokens + 1) * sizeof *g);
        if (!g)
            st = svlm_fail(err, SVLM_E_NOMEM, "out of memory");
        else
            a->pr.ids = g;
    }
    if (!st && o->sampling.temp > 0) {
        const int n_vocab = svlm_llama_hparams_of(s->model)->n_vocab;
        st = svlm_sampler_create(&o->sampling, n_vocab, &a->sampler, err);
        if (!st && !(a->logits = malloc((size_t)n_vocab * sizeof *a->logits)))
            st = svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    }
    if (!st) st = answer_eval(a, a->pr.ids, a->pr.embd, a->pr.n, err);
    a->n_end = a->pr.n;
    if (st) {
        answer_free(a);
        return st;
    }
    *out = a;
    return SVLM_OK;
}

/* Picks the next token, records it and hands it out. *more = 1 when it must be evaluated (the
 * answer goes on); *id is that token. */
static svlm_status answer_emit(svlm_stream_answer *a, int32_t *id_out, int *more, svlm_err *err) {
    *more = 0;
    const int limit = a->pr.n + a->max_tokens;
    if (a->eog || a->n_end >= limit) return SVLM_OK;
    const int32_t id = a->next;
    if (a->n_end == a->pr.n) a->t_first = now_ms();
    a->pr.ids[a->n_end++] = id;
    if (svlm_tokenizer_is_eog(a->s->tok, id)) {
        a->eog = 1;
        return SVLM_OK;
    }
    char small[256], *heap;
    size_t len;
    const char *piece = svlm_token_piece_whole(a->s->tok, id, 0, small, sizeof small, &heap, &len);
    if (!piece) return svlm_fail(err, SVLM_E_NOMEM, "out of memory for a %zu-byte token", len);
    const int cancelled = a->on_token && a->on_token(a->user, id, piece, len);
    free(heap);
    if (cancelled) return svlm_fail(err, SVLM_E_CANCELLED, "answer cancelled");
    *id_out = id;
    *more = a->n_end < limit;
    return SVLM_OK;
}

svlm_status svlm_stream_answer_step(svlm_stream_answer *a, int *done, svlm_err *err) {
    *done = 1;
    int32_t id = 0;
    int more = 0;
    svlm_status st = answer_emit(a, &id, &more, err);
    if (st || !more) return st;
    st = answer_eval(a, &id, NULL, 1, err);
    if (!st) *done = 0;
    return st;
}

svlm_status svlm_stream_answers_step(svlm_llama_batch *b, svlm_stream_answer *const *as, int n, int *done,
                                     svlm_status *st, svlm_err *errs) {
    const int max = svlm_llama_batch_max(b);
    svlm_llama_batch_item *items = calloc((size_t)(n < max ? n : max), sizeof *items);
    int *of = calloc((size_t)(n < max ? n : max), sizeof *of);
    if (!items || !of) {
        free(items);
        free(of);
        return SVLM_E_NOMEM;
    }
    for (int i0 = 0; i0 < n; i0 += max) {
        const int i1 = n - i0 < max ? n : i0 + max;
        int m = 0;
        for (int i = i0; i < i1; i++) {
            svlm_stream_answer *a = as[i];
            int32_t id = 0;
            int more = 0;
            done[i] = 1;
            st[i] = answer_emit(a, &id, &more, &errs[i]);
            if (st[i] || !more) continue;
            items[m] = (svlm_llama_batch_item){.ctx = a->ctx,
                                               .seq = a->fork,
                                               .kind = SVLM_KV_TEXT,
                                               .tag = a->turn,
                                               .id = id,
                                               .logits = a->logits,
                                               .next = a->sampler ? NULL : &a->next};
            of[m++] = i;
        }
        if (!m) continue;
        svlm_err berr = {0};
        svlm_status bst = svlm_llama_eval_batch(b, items, m, &berr);
        for (int j = 0; j < m; j++) {
            const int i = of[j];
            if (bst) {
                st[i] = bst;
                errs[i] = berr;
            } else if (items[j].status) {
                st[i] = items[j].status;
                snprintf(errs[i].msg, sizeof errs[i].msg, "%s", items[j].err_msg);
                errs[i].status = st[i];
            } else {
                done[i] = 0;
                if (as[i]->sampler) as[i]->next = svlm_sampler_sample(as[i]->sampler, as[i]->logits);
            }
        }
    }
    free(items);
    free(of);
    return SVLM_OK;
}

void svlm_stream_answer_finish(svlm_stream_answer *a, int ok, char **answer, svlm_answer_metrics *am) {
    if (answer) *answer = NULL;
    if (!a) return;
    svlm_stream *s = a->s;
    const double t_end = now_ms();
    /* the fork's pages go back now, before the turn joins the stream */
    svlm_kv_seq_free(a->fork);
    a->fork = NULL;
    const int n_answer = a->n_end - a->pr.n - a->eog;
    a->am.tokens = n_answer;
    if (a->t_first > 0) {
        a->am.ttft_ms = a->t_first - a->t0;
        a->am.tokens_per_s =
            n_answer > 1 && t_end > a->t_first ? (n_answer - 1) / ((t_end - a->t_first) / 1e3) : 0;
    }
    if (ok && answer) *answer = svlm_detokenize(s->tok, a->pr.ids + a->pr.n, (size_t)n_answer, 0);
    a->am.frames_during = svlm_stream_frames_in(s) - a->frames_at_fork;
    /* the turn (question and answer, not the memory) joins the dialogue window when it fits there;
     * deferred, it is only queued: no wait for the stream's lock, which a frame's prefill holds */
    const int n_turn = a->n_end - a->q_start;
    if (ok && n_turn <= s->p.text_tokens) {
        if (__atomic_load_n(&s->deferred_join, __ATOMIC_ACQUIRE)) {
            pending_turn *t = calloc(1, sizeof *t);
            int32_t *ids = malloc((size_t)n_turn * sizeof *ids);
            if (t && ids) {
                memcpy(ids, a->pr.ids + a->q_start, (size_t)n_turn * sizeof *ids);
                t->ids = ids;
                t->n = n_turn;
                t->turn = a->turn;
                pthread_mutex_lock(&s->join_mu);
                *s->pending_tail = t;
                s->pending_tail = &t->next;
                pthread_mutex_unlock(&s->join_mu);
            } else {
                free(t);
                free(ids);
            }
        } else {
            svlm_err join_err = {0};
            pthread_mutex_lock(&s->mu);
            if (svlm_llama_eval_seq(s->ingest, s->seq, SVLM_KV_TEXT, a->turn, a->pr.ids + a->q_start, NULL,
                                    n_turn, NULL, 0, &join_err) == SVLM_OK)
                s->answers_joined++;
            pthread_mutex_unlock(&s->mu);
        }
    }
    if (am) *am = a->am;
    answer_free(a);
}

svlm_status svlm_stream_ask_fork_opts(svlm_stream *s, svlm_stream_fork *f, svlm_llama_ctx *ctx,
                                      const char *question, const svlm_ask_opts *o,
                                      svlm_stream_token_fn on_token, void *user, char **answer,
                                      svlm_answer_metrics *am, svlm_err *err) {
    if (am) memset(am, 0, sizeof *am);
    if (answer) *answer = NULL;
    svlm_stream_answer *a = NULL;
    svlm_status st = svlm_stream_answer_start(s, f, ctx, question, o, on_token, user, &a, err);
    if (st) return st;
    int done = 0;
    while (!st && !done)
        st = svlm_stream_answer_step(a, &done, err);
    svlm_stream_answer_finish(a, st == SVLM_OK, answer, am);
    return st;
}

svlm_status svlm_stream_ask_fork(svlm_stream *s, svlm_stream_fork *f, svlm_llama_ctx *ctx,
                                 const char *question, int max_tokens, svlm_stream_token_fn on_token,
                                 void *user, char **answer, svlm_answer_metrics *am, svlm_err *err) {
    svlm_ask_opts o = {.max_tokens = max_tokens, .use_memory = 1};
    return svlm_stream_ask_fork_opts(s, f, ctx, question, &o, on_token, user, answer, am, err);
}

svlm_status svlm_stream_ask(svlm_stream *s, svlm_llama_ctx *ctx, const char *question, int max_tokens,
                            svlm_stream_token_fn on_token, void *user, char **answer, svlm_answer_metrics *am,
                            svlm_err *err) {
    svlm_stream_fork *f = NULL;
    svlm_status st = svlm_stream_fork_into(s, ctx, &f, err);
    if (st) return st;
    return svlm_stream_ask_fork(s, f, ctx, question, max_tokens, on_token, user, answer, am, err);
}

/* The metrics read under mu (the caller holds it); also kept as the snapshot peek returns. */
static void metrics_locked(svlm_stream *s, svlm_stream_metrics *out) {
    memset(out, 0, sizeof *out);
    const svlm_kv_pool_params *pp = svlm_kv_pool_params_of(s->pool);
    const size_t row_bytes = 2 * (size_t)pp->n_layer * svlm_row_bytes(pp->type, pp->kv_dim); /* K and V */
    out->frames_in = s->frames_in;
    out->frames_dropped = __atomic_load_n(&s->frames_dropped, __ATOMIC_RELAXED);
    out->questions = s->questions;
    out->answers_joined = s->answers_joined;
    out->prefill_ms_per_frame = s->frames_in ? s->prefill_ms_total / (double)s->frames_in : 0;
    out->encode_ms_per_frame = s->encodes ? s->encode_ms_total / (double)s->encodes : 0;
    for (int k = 0; k < SVLM_KV_N_KINDS; k++) {
        out->tokens[k] = svlm_kv_seq_count(s->seq, (svlm_kv_kind)k);
        out->kv_kind_bytes[k] = (size_t)out->tokens[k] * row_bytes;
    }
    out->evicted_spans = svlm_kv_seq_evicted_spans(s->seq);
    out->evicted_tokens = svlm_kv_seq_evicted_tokens(s->seq);
    out->time_offset = s->time_offset;
    out->image_rows_in = s->image_rows_in;
    out->stc_frames = s->stc[0], out->stc_patches = s->stc[1], out->stc_recomputed = s->stc[2];
    out->stc_reused = s->stc[3], out->stc_partial = s->stc[4], out->stc_cuts = s->stc[5];
    out->stc_tokens = s->stc[6], out->stc_kept = s->stc[7];
    out->t_last = s->t_last;
    if (s->memory_on) {
        svlm_memory_stats ms;
        svlm_memory_stats_get(s->mem.bank, &ms);
        out->memory_on = 1;
        out->memory_bytes = ms.bytes;
        out->memory_budget = ms.budget;
        for (int t = 0; t < SVLM_MEMORY_N_TIERS; t++) {
            out->memory_tier_bytes[t] = ms.tier_bytes[t];
            out->memory_tier_entries[t] = ms.tier_entries[t];
        }
        out->memory_frames = ms.frames;
        out->memory_events = ms.events;
        out->memory_push_errors = s->mem.push_errors;
        out->frame_ring_bytes = stream_memory_ring_bytes(&s->mem);
    }
    pthread_mutex_lock(&s->snap_mu);
    s->snap = *out;
    pthread_mutex_unlock(&s->snap_mu);
}

/* What needs no lock of the stream's: the pool's pages. */
static void metrics_unlocked(svlm_stream *s, svlm_stream_metrics *out) {
    out->kv_page_bytes = svlm_kv_pool_page_bytes(s->pool);
    out->kv_bytes = (size_t)svlm_kv_pool_pages_in_use(s->pool) * out->kv_page_bytes;
}

void svlm_stream_metrics_get(svlm_stream *s, svlm_stream_metrics *out) {
    pthread_mutex_lock(&s->mu);
    metrics_locked(s, out);
    pthread_mutex_unlock(&s->mu);
    metrics_unlocked(s, out);
}

void svlm_stream_metrics_peek(svlm_stream *s, svlm_stream_metrics *out) {
    if (pthread_mutex_trylock(&s->mu) == 0) {
        metrics_locked(s, out);
        pthread_mutex_unlock(&s->mu);
    } else { /* a frame or a join is being prefilled: the metrics from before it */
        pthread_mutex_lock(&s->snap_mu);
        *out = s->snap;
        pthread_mutex_unlock(&s->snap_mu);
        out->frames_in = svlm_stream_frames_in(s); /* (the counters are atomic: current) */
        out->frames_dropped = __atomic_load_n(&s->frames_dropped, __ATOMIC_RELAXED);
    }
    metrics_unlocked(s, out);
}
