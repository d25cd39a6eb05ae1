/* A stream's hand-off to memory: frames leaving the window go to the bank; a question's best
 * entries are placed before it, each introduced by its time range. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "pipeline/stream_internal.h"

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

svlm_status stream_memory_init(stream_memory *sm, const svlm_llama *m, const svlm_stream_params *p,
                               svlm_err *err) {
    memset(sm, 0, sizeof *sm);
    const svlm_llama_hparams *hp = svlm_llama_hparams_of(m);
    sm->rows = p->rows_per_frame;
    sm->n_embd = hp->n_embd;
    sm->top_k = p->memory_top_k > 0 ? p->memory_top_k : 3;
    if (sm->top_k > SVLM_STREAM_MAX_HITS) sm->top_k = SVLM_STREAM_MAX_HITS;
    sm->room = p->memory_room;
    sm->tok_embd = gguf_find_tensor(svlm_llama_gguf(m), "token_embd.weight");
    if (!sm->tok_embd || sm->tok_embd->ne[0] != hp->n_embd)
        return svlm_fail(err, SVLM_E_FORMAT, "stream memory: the model has no usable token_embd.weight");
    /* every frame the window can hold, plus the one arriving: a pruned frame can be as small as
     * its header (a dozen tokens) and one row, so a slot per 8 window tokens; a slot's rows are
     * allocated at the size of the frame it holds and freed once the bank has it, so the ring
     * holds the window's rows, not a full frame a slot (282 frames' rows for an 8-frame window
     * of 256-row frames) */
    sm->ring_n = p->vision_tokens / 8 + 2;
    sm->ring = calloc((size_t)sm->ring_n, sizeof *sm->ring);
    if (!sm->ring) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    svlm_memory_opts mo = *p->memory;
    mo.dim = sm->n_embd;
    mo.key_dim = 0;
    mo.read_only = 0;
    return svlm_memory_create(&mo, &sm->bank, err);
}

void stream_memory_free(stream_memory *sm) {
    if (sm->ring)
        for (int i = 0; i < sm->ring_n; i++)
            free(sm->ring[i].rows);
    free(sm->ring);
    svlm_memory_free(sm->bank);
    memset(sm, 0, sizeof *sm);
}

size_t stream_memory_ring_bytes(const stream_memory *sm) {
    size_t n = 0;
    for (int i = 0; i < sm->ring_n; i++)
        n += (size_t)sm->ring[i].cap * (size_t)sm->n_embd * sizeof(float);
    return n;
}

void stream_memory_similarity(void *user, const float *tokens, int n, int dim, float *similarity) {
    stream_memory *sm = user;
    svlm_err err = {0};
    int ok = svlm_memory_count(sm->bank) > 0 && dim == sm->n_embd &&
             svlm_memory_novelty(sm->bank, tokens, n, similarity, &err) == SVLM_OK;
    for (int i = 0; i < n; i++)
        similarity[i] = ok ? 1.0f - similarity[i] : -2.0f; /* -2: nothing to compare with */
}

void stream_memory_remember(stream_memory *sm, int64_t tag, double t, const float *rows, int n) {
    stream_frame_slot *slot = &sm->ring[sm->ring_next];
    sm->ring_next = (sm->ring_next + 1) % sm->ring_n;
    slot->used = 0;
    if (n > slot->cap) {
        float *g = realloc(slot->rows, (size_t)n * (size_t)sm->n_embd * sizeof(float));
        if (!g) {
            sm->push_errors++; /* this frame will not be remembered */
            return;
        }
        slot->rows = g;
        slot->cap = n;
    }
    memcpy(slot->rows, rows, (size_t)n * (size_t)sm->n_embd * sizeof(float));
    slot->n = n;
    slot->tag = tag;
    slot->t = t;
    slot->used = 1;
}

void stream_memory_on_evict(void *user, const svlm_kv_seq *seq, const svlm_kv_span *span) {
    (void)seq;
    stream_memory *sm = user;
    if (span->kind != SVLM_KV_VISION) return; /* dialogue turns are not remembered */
    for (int i = 0; i < sm->ring_n; i++) {
        stream_frame_slot *slot = &sm->ring[i];
        if (!slot->used || slot->tag != span->tag) continue;
        if (sm->n_push == (int)(sizeof sm->push_q / sizeof sm->push_q[0])) stream_memory_flush(sm);
        sm->push_q[sm->n_push++] = i; /* pushed by stream_memory_flush, in eviction order */
        slot->used = 0; /* (its rows stay until then: the next frame is remembered after the flush) */
        return;
    }
    sm->missing++; /* cannot happen while the ring outsizes the window; counted, not fatal */
}

void stream_memory_flush(stream_memory *sm) {
    for (int j = 0; j < sm->n_push; j++) {
        stream_frame_slot *slot = &sm->ring[sm->push_q[j]];
        svlm_err err = {0};
        if (svlm_memory_push(sm->bank, slot->t, slot->rows, slot->n, NULL, &err)) sm->push_errors++;
        free(slot->rows);
        slot->rows = NULL;
        slot->cap = 0;
    }
    sm->n_push = 0;
}

/* ---- the question's prompt ---- */

static int grow(void **p, int *cap, int need, size_t elt) {
    if (need <= *cap) return 0;
    int c = need * 2 + 16;
    void *g = realloc(*p, (size_t)c * elt);
    if (!g) return -1;
    *p = g;
    *cap = c;
    return 0;
}

static void text_add(stream_prompt *p, const char *s, size_t n) {
    if (!p->text) return;
    if (p->text_len + n + 1 > p->text_cap) {
        size_t c = (p->text_len + n + 1) * 2;
        char *g = realloc(p->text, c);
        if (!g) return; /* the readable form is best effort */
        p->text = g;
        p->text_cap = c;
    }
    memcpy(p->text + p->text_len, s, n);
    p->text_len += n;
    p->text[p->text_len] = 0;
}

svlm_status stream_prompt_push_text(stream_prompt *p, const svlm_tokenizer *t, const char *text, int special,
                                    svlm_err *err) {
    int32_t *part = NULL;
    size_t np = 0;
    svlm_status st = svlm_tokenize(t, text, strlen(text), 0, special, &part, &np, err);
    if (st) return st;
    if (grow((void **)&p->ids, &p->cap, p->n + (int)np, sizeof *p->ids)) {
        free(part);
        return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    }
    memcpy(p->ids + p->n, part, np * sizeof *part);
    p->n += (int)np;
    free(part);
    text_add(p, text, strlen(text));
    return SVLM_OK;
}

void stream_prompt_free(stream_prompt *p) {
    free(p->ids);
    free(p->embd);
    free(p->text);
    memset(p, 0, sizeof *p);
}

/* The question's tokens through the decoder's input embedding table: the same space the bank's
 * keys live in (they are derived from connector outputs, which are decoder input embeddings). */
static svlm_status question_vecs(const stream_memory *sm, const svlm_tokenizer *tok, const char *question,
                                 float **out, int *n_out, svlm_err *err) {
    int32_t *ids = NULL;
    size_t n = 0;
    *out = NULL;
    *n_out = 0;
    svlm_status st = svlm_tokenize(tok, question, strlen(question), 0, 0, &ids, &n, err);
    if (st || n == 0) {
        free(ids);
        return st;
    }
    const int E = sm->n_embd;
    float *v = malloc(n * (size_t)E * sizeof(float));
    if (!v) st = svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    const size_t row_bytes = svlm_row_bytes(sm->tok_embd->type, E);
    for (size_t i = 0; !st && i < n; i++) {
        if (ids[i] < 0 || ids[i] >= sm->tok_embd->ne[1]) {
            st = svlm_fail(err, SVLM_E_INVALID, "question token %d outside the embedding table", (int)ids[i]);
            break;
        }
        if (svlm_dequantize_row(sm->tok_embd->type,
                                (const uint8_t *)sm->tok_embd->data + (size_t)ids[i] * row_bytes,
                                v + i * (size_t)E, E))
            st = svlm_fail(err, SVLM_E_UNSUPPORTED, "cannot read the token embedding table");
    }
    free(ids);
    if (st) {
        free(v);
        return st;
    }
    *out = v;
    *n_out = (int)n;
    return SVLM_OK;
}

static int cmp_hit_time(const void *a, const void *b) {
    const svlm_memory_hit *x = a, *y = b;
    return x->t0 < y->t0 ? -1 : x->t0 > y->t0;
}

svlm_status stream_memory_prompt(stream_memory *sm, const svlm_tokenizer *tok, const char *question,
                                 double now, const svlm_ask_opts *o, stream_prompt *out,
                                 svlm_answer_metrics *am, svlm_err *err) {
    const double t0 = now_ms();
    svlm_memory_query q;
    svlm_memory_query_default(&q);
    q.top_k = sm->top_k;
    /* intros are a dozen tokens each: leave them room */
    q.max_tokens = sm->room - sm->top_k * 24;
    if (q.max_tokens <= 0) return SVLM_OK;
    am->memory_time_anchored = svlm_memory_parse_time_query(question, now, &q);
    float *own = NULL;
    int n_own = 0;
    svlm_status st = SVLM_OK;
    if (o->query_vecs && o->n_query_vecs > 0) {
        q.vecs = o->query_vecs;
        q.n_vecs = o->n_query_vecs;
    } else {
        st = question_vecs(sm, tok, question, &own, &n_own, err);
        q.vecs = own;
        q.n_vecs = n_own;
    }
    svlm_memory_hits hits = {0};
    if (!st && q.n_vecs > 0) st = svlm_memory_retrieve(sm->bank, &q, &hits, err);
    free(own);
    if (st) return st;
    if (!q.first) qsort(hits.hit, (size_t)hits.n, sizeof *hits.hit, cmp_hit_time); /* read as a timeline */
    const int E = sm->n_embd;
    int rows = 0; /* memory rows placed (intros not counted) */
    for (int i = 0; !st && i < hits.n && am->memory_hits < SVLM_STREAM_MAX_HITS; i++) {
        const svlm_memory_hit *h = &hits.hit[i];
        char intro[96], line[112];
        svlm_memory_format_intro(h->t0, h->t1, intro, sizeof intro);
        snprintf(line, sizeof line, "\n%s", intro);
        const int n_before = out->n;
        const size_t text_before = out->text_len;
        st = stream_prompt_push_text(out, tok, line, 0, err);
        if (st) break;
        /* does not fit, its rows in the memory_tokens cap or with its intro in the room: skip it */
        if (rows + h->n_tokens > q.max_tokens ||
            out->n - n_before + h->n_tokens + am->memory_tokens > sm->room) {
            out->n = n_before;
            if (out->text) out->text[out->text_len = text_before] = 0; /* (its intro too) */
            continue;
        }
        float *embd =
            grow((void **)&out->ids, &out->cap, out->n + h->n_tokens, sizeof *out->ids)
                ? NULL
                : realloc(out->embd, (size_t)(out->n_rows + h->n_tokens) * (size_t)E * sizeof(float));
        if (!embd) { /* (out->embd stays: the caller frees it) */
            st = svlm_fail(err, SVLM_E_NOMEM, "out of memory");
            break;
        }
        out->embd = embd;
        for (int r = 0; r < h->n_tokens; r++)
            out->ids[out->n++] = -1;
        memcpy(out->embd + (size_t)out->n_rows * E, h->tokens, (size_t)h->n_tokens * E * sizeof(float));
        out->n_rows += h->n_tokens;
        rows += h->n_tokens;
        char shown[48];
        int rl = snprintf(shown, sizeof shown, "<memory:%d rows>", h->n_tokens);
        text_add(out, shown, (size_t)rl);
        am->memory_t0[am->memory_hits] = h->t0;
        am->memory_t1[am->memory_hits] = h->t1;
        am->memory_tier[am->memory_hits] = (int)h->tier;
        am->memory_hits++;
        am->memory_tokens += out->n - n_before;
    }
    svlm_memory_hits_free(&hits);
    am->retrieve_ms = now_ms() - t0;
    return st;
}
