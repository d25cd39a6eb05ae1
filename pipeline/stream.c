/* A stream's bounded context: frame ingestion, forked questions, metrics. */
#include "pipeline/stream.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "vision/prompt.h"

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
    double prefill_ms_total;
};

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

int svlm_stream_ctx_size(const svlm_stream *s) {
    return s->p.sink_tokens + s->p.vision_tokens + s->p.text_tokens + s->p.answer_room;
}

svlm_status svlm_stream_create(svlm_llama *m, svlm_kernels *k, const svlm_stream_params *p, const char *system_prompt,
                               svlm_stream **out, svlm_err *err) {
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
    pthread_mutex_init(&s->mu, NULL);
    svlm_status st = svlm_vlm_specials_find(s->tok, &s->specials, err);
    const int cap = s->p.sink_tokens + s->p.vision_tokens + s->p.text_tokens;
    /* the stream plus a few concurrent forks, each with its answer room and part-filled pages */
    const int pages = 4 * ((cap + 4 * s->p.answer_room) / s->p.page_tokens + 16);
    if (!st) st = svlm_llama_kv_pool_create(m, s->p.kv_type, s->p.page_tokens, pages, &s->pool, err);
    svlm_kv_policy pol = {{s->p.sink_tokens, s->p.vision_tokens, s->p.text_tokens}, 1};
    if (!st) st = svlm_kv_seq_create(s->pool, &pol, &s->seq, err);
    if (!st) st = svlm_llama_ctx_create(m, k, cap, s->p.kv_type, &s->ingest, err);
    if (!st && system_prompt && *system_prompt) {
        int32_t *ids = NULL;
        size_t n = 0;
        st = svlm_tokenize(s->tok, system_prompt, strlen(system_prompt), 1, 1, &ids, &n, err);
        if (!st && (n == 0 || n > (size_t)s->p.sink_tokens))
            st = svlm_fail(err, SVLM_E_LIMIT, "the system prompt has %zu tokens, the sink budget is %d", n,
                           s->p.sink_tokens);
        if (!st) st = svlm_llama_eval_seq(s->ingest, s->seq, SVLM_KV_SINK, 0, ids, NULL, (int)n, NULL, 0, err);
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
    svlm_kv_pool_free(s->pool);
    pthread_mutex_destroy(&s->mu);
    free(s);
}

svlm_status svlm_stream_add_frame(svlm_stream *s, double t_seconds, const float *embd, svlm_err *err) {
    svlm_prompt fp;
    svlm_prompt_init(&fp);
    svlm_status st = svlm_prompt_frame(&fp, s->tok, &s->specials, t_seconds, s->p.rows_per_frame, err);
    if (!st && fp.n_image_rows != (size_t)s->p.rows_per_frame)
        st = svlm_fail(err, SVLM_E_INVALID, "frame layout has %zu image rows, expected %d", fp.n_image_rows,
                       s->p.rows_per_frame);
    if (!st) {
        pthread_mutex_lock(&s->mu);
        double t0 = now_ms();
        /* the tag is the frame time in milliseconds: what the memory bank files it under */
        st = svlm_llama_eval_seq(s->ingest, s->seq, SVLM_KV_VISION, (int64_t)(t_seconds * 1000.0), fp.ids, embd,
                                 (int)fp.n, NULL, 0, err);
        if (!st) {
            s->frames_in++;
            s->prefill_ms_total += now_ms() - t0;
        }
        pthread_mutex_unlock(&s->mu);
    }
    svlm_prompt_free(&fp);
    return st;
}

void svlm_stream_note_drop(svlm_stream *s) {
    pthread_mutex_lock(&s->mu);
    s->frames_dropped++;
    pthread_mutex_unlock(&s->mu);
}

/* Appends the tokens of text (special tokens parsed or not) to a growing id list. */
static svlm_status push_text(const svlm_tokenizer *t, const char *text, int special, int32_t **ids, int *n, int *cap,
                             svlm_err *err) {
    int32_t *part = NULL;
    size_t np = 0;
    svlm_status st = svlm_tokenize(t, text, strlen(text), 0, special, &part, &np, err);
    if (st) return st;
    if (*n + (int)np > *cap) {
        int c = (*n + (int)np) * 2 + 16;
        int32_t *g = realloc(*ids, (size_t)c * sizeof *g);
        if (!g) {
            free(part);
            return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
        }
        *ids = g;
        *cap = c;
    }
    memcpy(*ids + *n, part, np * sizeof *part);
    *n += (int)np;
    free(part);
    return SVLM_OK;
}

static int32_t argmax(const float *x, int n) {
    int32_t best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

struct svlm_stream_fork {
    svlm_kv_seq *seq;
    int64_t frames_at_fork, turn;
    double t_created, wait_ms;
};

svlm_status svlm_stream_fork_now(svlm_stream *s, svlm_stream_fork **out, svlm_err *err) {
    *out = NULL;
    svlm_stream_fork *f = calloc(1, sizeof *f);
    if (!f) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    f->t_created = now_ms();
    pthread_mutex_lock(&s->mu);
    f->wait_ms = now_ms() - f->t_created;
    svlm_status st = svlm_kv_seq_fork(s->seq, &f->seq, err);
    f->frames_at_fork = s->frames_in;
    f->turn = ++s->questions;
    pthread_mutex_unlock(&s->mu);
    if (st) {
        free(f);
        return st;
    }
    /* the answer grows the fork's dialogue window, never evicting what the stream had */
    svlm_kv_policy pol = {{s->p.sink_tokens, s->p.vision_tokens, s->p.text_tokens + s->p.answer_room}, 1};
    svlm_kv_seq_set_policy(f->seq, &pol);
    *out = f;
    return SVLM_OK;
}

void svlm_stream_fork_free(svlm_stream_fork *f) {
    if (!f) return;
    svlm_kv_seq_free(f->seq);
    free(f);
}

svlm_status svlm_stream_ask(svlm_stream *s, svlm_llama_ctx *ctx, const char *question, int max_tokens,
                            svlm_stream_token_fn on_token, void *user, char **answer, svlm_answer_metrics *am,
                            svlm_err *err) {
    svlm_stream_fork *f = NULL;
    svlm_status st = svlm_stream_fork_now(s, &f, err);
    if (st) return st;
    return svlm_stream_ask_fork(s, f, ctx, question, max_tokens, on_token, user, answer, am, err);
}

svlm_status svlm_stream_ask_fork(svlm_stream *s, svlm_stream_fork *f, svlm_llama_ctx *ctx, const char *question,
                                 int max_tokens, svlm_stream_token_fn on_token, void *user, char **answer,
                                 svlm_answer_metrics *am, svlm_err *err) {
    svlm_answer_metrics local = {0};
    if (!am) am = &local;
    memset(am, 0, sizeof *am);
    if (answer) *answer = NULL;
    if (max_tokens <= 0) {
        svlm_stream_fork_free(f);
        return svlm_fail(err, SVLM_E_INVALID, "max_tokens must be positive");
    }
    /* the SmolVLM2 chat turn; the question itself is plain text */
    int32_t *ids = NULL;
    int n_q = 0, cap = 0;
    svlm_status st = push_text(s->tok, "<|im_start|>User:", 1, &ids, &n_q, &cap, err);
    char *q = malloc(strlen(question) + 2);
    if (!q) st = svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    if (!st) {
        q[0] = ' ';
        strcpy(q + 1, question);
        st = push_text(s->tok, q, 0, &ids, &n_q, &cap, err);
    }
    free(q);
    if (!st) st = push_text(s->tok, "<end_of_utterance>\nAssistant:", 1, &ids, &n_q, &cap, err);
    if (!st && n_q + max_tokens > s->p.answer_room)
        st = svlm_fail(err, SVLM_E_LIMIT, "a %d-token question and %d answer tokens exceed the answer room of %d", n_q,
                       max_tokens, s->p.answer_room);
    if (!st && !ctx) st = svlm_fail(err, SVLM_E_INVALID, "ask needs a decoder context");
    int32_t *grow = st ? NULL : realloc(ids, (size_t)(n_q + max_tokens + 1) * sizeof *ids);
    if (!st && !grow) st = svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    if (st) {
        free(ids);
        svlm_stream_fork_free(f);
        return st;
    }
    ids = grow;

    /* times count from the fork: the moment the question was asked */
    const double t0 = f->t_created;
    am->wait_ms = f->wait_ms;
    svlm_kv_seq *fork = f->seq;
    const int64_t frames_at_fork = f->frames_at_fork, turn = f->turn;
    f->seq = NULL;
    svlm_stream_fork_free(f);
    const int n_vocab = svlm_llama_hparams_of(s->model)->n_vocab;
    float *logits = st ? NULL : malloc((size_t)n_vocab * sizeof(float));
    if (!st && !logits) st = svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    if (!st) {
        st = svlm_llama_eval_seq(ctx, fork, SVLM_KV_TEXT, turn, ids, NULL, n_q, logits, 0, err);
    }
    int n = n_q, eog = 0;
    double t_first = 0;
    while (!st && n < n_q + max_tokens) {
        int32_t id = argmax(logits, n_vocab);
        if (n == n_q) t_first = now_ms();
        ids[n++] = id;
        if (svlm_tokenizer_is_eog(s->tok, id)) {
            eog = 1;
            break;
        }
        char piece[256];
        size_t len = svlm_token_piece(s->tok, id, 0, piece, sizeof piece);
        if (on_token && on_token(user, id, piece, len < sizeof piece ? len : sizeof piece)) {
            st = svlm_fail(err, SVLM_E_CANCELLED, "answer cancelled");
            break;
        }
        if (n < n_q + max_tokens) st = svlm_llama_eval_seq(ctx, fork, SVLM_KV_TEXT, turn, &id, NULL, 1, logits, 0, err);
    }
    double t_end = now_ms();
    svlm_kv_seq_free(fork);
    free(logits);
    int n_answer = n - n_q - eog;
    am->tokens = n_answer;
    if (t_first > 0) {
        am->ttft_ms = t_first - t0;
        am->tokens_per_s = n_answer > 1 && t_end > t_first ? (n_answer - 1) / ((t_end - t_first) / 1e3) : 0;
    }
    if (!st && answer) *answer = svlm_detokenize(s->tok, ids + n_q, (size_t)n_answer, 0);
    if (!st) {
        /* the turn joins the stream's dialogue window, when it fits there */
        pthread_mutex_lock(&s->mu);
        am->frames_during = s->frames_in - frames_at_fork;
        if (n <= s->p.text_tokens) {
            svlm_err join_err = {0};
            if (svlm_llama_eval_seq(s->ingest, s->seq, SVLM_KV_TEXT, turn, ids, NULL, n, NULL, 0, &join_err) == SVLM_OK)
                s->answers_joined++;
        }
        pthread_mutex_unlock(&s->mu);
    }
    free(ids);
    return st;
}

void svlm_stream_metrics_get(svlm_stream *s, svlm_stream_metrics *out) {
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&s->mu);
    out->frames_in = s->frames_in;
    out->frames_dropped = s->frames_dropped;
    out->questions = s->questions;
    out->answers_joined = s->answers_joined;
    out->prefill_ms_per_frame = s->frames_in ? s->prefill_ms_total / (double)s->frames_in : 0;
    for (int k = 0; k < SVLM_KV_N_KINDS; k++) out->tokens[k] = svlm_kv_seq_count(s->seq, (svlm_kv_kind)k);
    out->evicted_spans = svlm_kv_seq_evicted_spans(s->seq);
    out->evicted_tokens = svlm_kv_seq_evicted_tokens(s->seq);
    pthread_mutex_unlock(&s->mu);
    out->kv_bytes = (size_t)svlm_kv_pool_pages_in_use(s->pool) * svlm_kv_pool_page_bytes(s->pool);
}
