/* The paged, bounded KV cache: a page pool with reference counts, and sequences over it. */
#include "llm/kv_cache.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "kernels/cpu/f16_round.h"

struct svlm_kv_pool {
    svlm_kv_pool_params p;
    size_t row_bytes, page_bytes;
    pthread_mutex_t mu;
    uint8_t **mem; /* [max_pages], allocated on first use */
    int *refs;     /* sequences holding each page */
    int *used;     /* rows written into each page */
    int *free_ids; /* stack of released page ids */
    int n_free, n_made, in_use;
};

typedef struct kv_span_rec {
    svlm_kv_kind kind;
    int64_t tag, stream_pos;
    int start, n;
} kv_span_rec;

struct svlm_kv_seq {
    svlm_kv_pool *pool;
    svlm_kv_policy policy;
    svlm_kv_evict_hook hook;
    uint64_t uid, epoch;
    int kept, gone;     /* the latest eviction (see svlm_kv_version) */
    int n, cap;         /* tokens held; allocated length of slot/spos */
    int32_t *slot;      /* page * page_tokens + row, per token */
    int64_t *spos;      /* index in the stream, per token */
    kv_span_rec *spans; /* in order; starts are indices into slot */
    int n_spans, cap_spans;
    int count[SVLM_KV_N_KINDS];
    int64_t stream_len, evicted_spans, evicted_tokens;
};

/* Ids only have to be unique across the process so a working copy never mistakes one sequence
 * for another (even of another pool); a counter is the simplest way. */
static atomic_uint_fast64_t next_uid = 1;

svlm_status svlm_kv_pool_create(const svlm_kv_pool_params *p, svlm_kv_pool **out, svlm_err *err) {
    *out = NULL;
    if (p->n_layer <= 0 || p->kv_dim <= 0 || p->page_tokens <= 0 || p->max_pages <= 0)
        return svlm_fail(err, SVLM_E_INVALID,
                         "KV pool: layers, row size, page size and page count must be positive");
    if (p->type != SVLM_F32 && p->type != SVLM_F16)
        return svlm_fail(err, SVLM_E_INVALID, "KV pool: the cache type must be f32 or f16");
    svlm_kv_pool *pool = calloc(1, sizeof *pool);
    if (!pool) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    pool->p = *p;
    pthread_mutex_init(&pool->mu, NULL); /* (first: svlm_kv_pool_free destroys it on any failure) */
    pool->row_bytes = (size_t)p->kv_dim * (p->type == SVLM_F32 ? 4 : 2);
    pool->page_bytes = pool->row_bytes * (size_t)p->page_tokens * 2 * (size_t)p->n_layer;
    pool->mem = calloc((size_t)p->max_pages, sizeof *pool->mem);
    pool->refs = calloc((size_t)p->max_pages, sizeof(int));
    pool->used = calloc((size_t)p->max_pages, sizeof(int));
    pool->free_ids = calloc((size_t)p->max_pages, sizeof(int));
    if (!pool->mem || !pool->refs || !pool->used || !pool->free_ids) {
        svlm_kv_pool_free(pool);
        return svlm_fail(err, SVLM_E_NOMEM, "out of memory for a %d-page KV pool", p->max_pages);
    }
    *out = pool;
    return SVLM_OK;
}

void svlm_kv_pool_free(svlm_kv_pool *pool) {
    if (!pool) return;
    if (pool->mem)
        for (int i = 0; i < pool->n_made; i++)
            free(pool->mem[i]);
    pthread_mutex_destroy(&pool->mu);
    free(pool->mem);
    free(pool->refs);
    free(pool->used);
    free(pool->free_ids);
    free(pool);
}

const svlm_kv_pool_params *svlm_kv_pool_params_of(const svlm_kv_pool *pool) {
    return &pool->p;
}
size_t svlm_kv_pool_page_bytes(const svlm_kv_pool *pool) {
    return pool->page_bytes;
}

int svlm_kv_pool_pages_in_use(svlm_kv_pool *pool) {
    pthread_mutex_lock(&pool->mu);
    int n = pool->in_use;
    pthread_mutex_unlock(&pool->mu);
    return n;
}

/* Takes n fresh pages (refcount 1, empty) into ids, all or none. */
static int pool_take(svlm_kv_pool *pool, int n, int *ids) {
    pthread_mutex_lock(&pool->mu);
    int ok = pool->n_free + (pool->p.max_pages - pool->n_made) >= n;
    int got = 0;
    while (ok && got < n) {
        int id;
        if (pool->n_free) {
            id = pool->free_ids[--pool->n_free];
        } else {
            id = pool->n_made;
            /* 64-byte alignment keeps rows friendly to SIMD loads in the copy loops */
            size_t bytes = (pool->page_bytes + 63) / 64 * 64;
            pool->mem[id] = aligned_alloc(64, bytes);
            if (!pool->mem[id]) {
                ok = 0;
                break;
            }
            pool->n_made++;
        }
        pool->refs[id] = 1;
        pool->used[id] = 0;
        ids[got++] = id;
    }
    if (!ok) /* give back what was taken */
        while (got)
            pool->free_ids[pool->n_free++] = ids[--got], pool->refs[ids[got]] = 0;
    pool->in_use += got;
    pthread_mutex_unlock(&pool->mu);
    return ok;
}

static void pool_ref(svlm_kv_pool *pool, int id) {
    pthread_mutex_lock(&pool->mu);
    pool->refs[id]++;
    pthread_mutex_unlock(&pool->mu);
}

static void pool_unref(svlm_kv_pool *pool, int id) {
    pthread_mutex_lock(&pool->mu);
    if (--pool->refs[id] == 0) {
        pool->free_ids[pool->n_free++] = id;
        pool->in_use--;
    }
    pthread_mutex_unlock(&pool->mu);
}

static int pool_refs(svlm_kv_pool *pool, int id) {
    pthread_mutex_lock(&pool->mu);
    int r = pool->refs[id];
    pthread_mutex_unlock(&pool->mu);
    return r;
}

static uint8_t *row_ptr(const svlm_kv_pool *pool, int32_t slot, int layer, int is_v) {
    const int B = pool->p.page_tokens;
    size_t row = ((size_t)layer * 2 + (size_t)is_v) * (size_t)B + (size_t)(slot % B);
    return pool->mem[slot / B] + row * pool->row_bytes;
}

/* ---- sequences ---------------------------------------------------------------------------- */

static svlm_status check_policy(const svlm_kv_policy *policy, svlm_err *err) {
    long total = 0;
    for (int k = 0; k < SVLM_KV_N_KINDS; k++) {
        if (policy->budget[k] < 0) return svlm_fail(err, SVLM_E_INVALID, "KV budgets must not be negative");
        total += policy->budget[k];
    }
    if (total <= 0 || total > (1L << 28))
        return svlm_fail(err, SVLM_E_INVALID, "KV budgets must sum to 1..2^28 tokens");
    return SVLM_OK;
}

static svlm_status seq_reserve(svlm_kv_seq *s, int n_tokens, int n_spans, svlm_err *err) {
    if (n_tokens > s->cap) {
        int cap = s->cap ? s->cap : 64;
        while (cap < n_tokens)
            cap *= 2;
        int32_t *slot = realloc(s->slot, (size_t)cap * sizeof *slot);
        if (slot) s->slot = slot;
        int64_t *spos = slot ? realloc(s->spos, (size_t)cap * sizeof *spos) : NULL;
        if (spos) s->spos = spos;
        if (!slot || !spos) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
        s->cap = cap;
    }
    if (n_spans > s->cap_spans) {
        int cap = s->cap_spans ? s->cap_spans * 2 : 16;
        if (cap < n_spans) cap = n_spans;
        kv_span_rec *sp = realloc(s->spans, (size_t)cap * sizeof *sp);
        if (!sp) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
        s->spans = sp;
        s->cap_spans = cap;
    }
    return SVLM_OK;
}

svlm_status svlm_kv_seq_create(svlm_kv_pool *pool, const svlm_kv_policy *policy, svlm_kv_seq **out,
                               svlm_err *err) {
    *out = NULL;
    svlm_status st = check_policy(policy, err);
    if (st) return st;
    svlm_kv_seq *s = calloc(1, sizeof *s);
    if (!s) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    s->pool = pool;
    s->policy = *policy;
    s->uid = atomic_fetch_add(&next_uid, 1);
    *out = s;
    return SVLM_OK;
}

/* Calls fn once per distinct page among tokens [a, b) (a page's tokens are contiguous). */
static void for_each_page(const svlm_kv_seq *s, int a, int b, void (*fn)(svlm_kv_pool *, int)) {
    const int B = s->pool->p.page_tokens;
    for (int i = a; i < b; i++)
        if (i == a || s->slot[i] / B != s->slot[i - 1] / B) fn(s->pool, s->slot[i] / B);
}

svlm_status svlm_kv_seq_fork(const svlm_kv_seq *src, svlm_kv_seq **out, svlm_err *err) {
    svlm_status st = svlm_kv_seq_create(src->pool, &src->policy, out, err);
    if (st) return st;
    svlm_kv_seq *s = *out;
    if ((st = seq_reserve(s, src->n, src->n_spans, err))) {
        svlm_kv_seq_free(s);
        *out = NULL;
        return st;
    }
    if (src->n) { /* (an empty sequence may have no arrays yet: no memcpy from NULL) */
        memcpy(s->slot, src->slot, (size_t)src->n * sizeof *s->slot);
        memcpy(s->spos, src->spos, (size_t)src->n * sizeof *s->spos);
    }
    if (src->n_spans) memcpy(s->spans, src->spans, (size_t)src->n_spans * sizeof *s->spans);
    memcpy(s->count, src->count, sizeof s->count);
    s->n = src->n;
    s->n_spans = src->n_spans;
    s->stream_len = src->stream_len;
    for_each_page(s, 0, s->n, pool_ref);
    return SVLM_OK;
}

void svlm_kv_seq_free(svlm_kv_seq *s) {
    if (!s) return;
    for_each_page(s, 0, s->n, pool_unref);
    free(s->slot);
    free(s->spos);
    free(s->spans);
    free(s);
}

void svlm_kv_seq_set_hook(svlm_kv_seq *s, const svlm_kv_evict_hook *hook) {
    if (hook)
        s->hook = *hook;
    else
        memset(&s->hook, 0, sizeof s->hook);
}

svlm_status svlm_kv_seq_set_policy(svlm_kv_seq *s, const svlm_kv_policy *policy, svlm_err *err) {
    svlm_status st = check_policy(policy, err);
    if (st) return st;
    /* (nothing is evicted now: a budget below what the sequence holds would leave it longer than
     * its capacity, and the next append's rows past the context made for that capacity) */
    for (int k = 0; k < SVLM_KV_N_KINDS; k++)
        if (policy->budget[k] < s->count[k])
            return svlm_fail(err, SVLM_E_INVALID, "KV budget %d for kind %d is below the %d tokens held",
                             policy->budget[k], k, s->count[k]);
    s->policy = *policy;
    return SVLM_OK;
}

int svlm_kv_seq_len(const svlm_kv_seq *s) {
    return s->n;
}
int svlm_kv_seq_count(const svlm_kv_seq *s, svlm_kv_kind kind) {
    return kind >= 0 && kind < SVLM_KV_N_KINDS ? s->count[kind] : 0;
}
int svlm_kv_seq_capacity(const svlm_kv_seq *s) {
    int t = 0;
    for (int k = 0; k < SVLM_KV_N_KINDS; k++)
        t += s->policy.budget[k];
    return t;
}
int svlm_kv_seq_n_spans(const svlm_kv_seq *s) {
    return s->n_spans;
}
int64_t svlm_kv_seq_evicted_spans(const svlm_kv_seq *s) {
    return s->evicted_spans;
}
int64_t svlm_kv_seq_evicted_tokens(const svlm_kv_seq *s) {
    return s->evicted_tokens;
}
svlm_kv_pool *svlm_kv_seq_pool(const svlm_kv_seq *s) {
    return s->pool;
}

svlm_kv_version svlm_kv_seq_version(const svlm_kv_seq *s) {
    svlm_kv_version v = {s->uid, s->epoch, s->kept, s->gone};
    return v;
}

int32_t svlm_kv_seq_pos(const svlm_kv_seq *s, int idx) {
    return s->policy.reassign_positions ? idx : (int32_t)s->spos[idx];
}

const void *svlm_kv_seq_k_row(const svlm_kv_seq *s, int layer, int idx) {
    return row_ptr(s->pool, s->slot[idx], layer, 0);
}
const void *svlm_kv_seq_v_row(const svlm_kv_seq *s, int layer, int idx) {
    return row_ptr(s->pool, s->slot[idx], layer, 1);
}

/* Removes span si after showing it to the hook, and releases the pages no token refers to now. */
static void evict_span(svlm_kv_seq *s, int si, int *first_change) {
    kv_span_rec sp = s->spans[si];
    if (s->hook.on_evict) {
        svlm_kv_span view = {sp.kind, sp.tag, sp.start, sp.n, sp.stream_pos};
        s->hook.on_evict(s->hook.user, s, &view);
    }
    const int B = s->pool->p.page_tokens, a = sp.start, b = sp.start + sp.n;
    for (int i = a; i < b; i++) {
        if (i > a && s->slot[i] / B == s->slot[i - 1] / B) continue;
        int page = s->slot[i] / B;
        int shared_before = a > 0 && s->slot[a - 1] / B == page;
        int shared_after = b < s->n && s->slot[b] / B == page;
        if (!shared_before && !shared_after) pool_unref(s->pool, page);
    }
    memmove(s->slot + a, s->slot + b, (size_t)(s->n - b) * sizeof *s->slot);
    memmove(s->spos + a, s->spos + b, (size_t)(s->n - b) * sizeof *s->spos);
    memmove(s->spans + si, s->spans + si + 1, (size_t)(s->n_spans - si - 1) * sizeof *s->spans);
    s->n_spans--;
    for (int j = si; j < s->n_spans; j++)
        s->spans[j].start -= sp.n;
    s->n -= sp.n;
    s->count[sp.kind] -= sp.n;
    s->evicted_spans++;
    s->evicted_tokens += sp.n;
    if (a < *first_change) *first_change = a;
}

/* Copies the written rows of page `from` into the fresh page `to` (all layers). */
static void copy_page(svlm_kv_pool *pool, int from, int to) {
    const int B = pool->p.page_tokens, used = pool->used[from];
    for (int l = 0; l < pool->p.n_layer; l++)
        for (int kv = 0; kv < 2; kv++)
            memcpy(row_ptr(pool, to * B, l, kv), row_ptr(pool, from * B, l, kv),
                   (size_t)used * pool->row_bytes);
    pool->used[to] = used;
}

svlm_status svlm_kv_seq_append(svlm_kv_seq *s, svlm_kv_kind kind, int64_t tag, int n, int *first,
                               svlm_err *err) {
    if (kind < 0 || kind >= SVLM_KV_N_KINDS)
        return svlm_fail(err, SVLM_E_INVALID, "bad KV span kind %d", (int)kind);
    if (n <= 0) return svlm_fail(err, SVLM_E_INVALID, "a KV span needs at least one token");
    if (n > s->policy.budget[kind])
        return svlm_fail(err, SVLM_E_LIMIT, "a span of %d tokens exceeds its window of %d", n,
                         s->policy.budget[kind]);
    if (kind == SVLM_KV_SINK && s->count[kind] + n > s->policy.budget[kind])
        return svlm_fail(err, SVLM_E_LIMIT, "the %d sink tokens are taken", s->policy.budget[kind]);
    svlm_kv_pool *pool = s->pool;
    const int B = pool->p.page_tokens;
    /* worst case: a copied tail page plus fresh pages for every token */
    const int worst = (n + B - 1) / B + 1;
    int ids_local[8], *ids = worst <= 8 ? ids_local : malloc((size_t)worst * sizeof(int));
    if (!ids) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    svlm_status st = seq_reserve(s, s->n + n, s->n_spans + 1, err);
    if (st == SVLM_OK && !pool_take(pool, worst, ids))
        st = svlm_fail(err, SVLM_E_LIMIT, "KV pool full (%d pages of %d tokens)", pool->p.max_pages, B);
    if (st) {
        if (ids != ids_local) free(ids);
        return st;
    }
    /* evict the oldest spans of this kind, whole, until the new span fits */
    const int n_before = s->n;
    int first_change = n_before, gone = 0, one_run = 1;
    while (s->count[kind] + n > s->policy.budget[kind]) {
        int si = 0;
        while (s->spans[si].kind != kind)
            si++;
        /* the spans removed by one append form one run when each starts where the last was */
        if (gone && s->spans[si].start != first_change) one_run = 0;
        gone += s->spans[si].n;
        evict_span(s, si, &first_change);
    }
    int next = 0;
    /* where the tail page stands: append into it when this sequence wrote its last row */
    int room = 0, tail_page = -1;
    if (s->n > 0) {
        int32_t last = s->slot[s->n - 1];
        int page = last / B, row = last % B;
        if (row + 1 == pool->used[page] && row + 1 < B) {
            tail_page = page;
            room = B - (row + 1);
            if (pool_refs(pool, page) > 1) { /* shared with a fork: copy it first */
                int copy = ids[next++];
                copy_page(pool, page, copy);
                for (int i = s->n - 1; i >= 0 && s->slot[i] / B == page; i--)
                    s->slot[i] = copy * B + s->slot[i] % B;
                pool_unref(pool, page);
                tail_page = copy;
            }
        }
    }
    const int start = s->n;
    for (int i = 0; i < n; i++) {
        if (!room) {
            tail_page = ids[next++];
            room = B;
        }
        s->slot[start + i] = tail_page * B + pool->used[tail_page]++;
        s->spos[start + i] = s->stream_len + i;
        room--;
    }
    while (next < worst)
        pool_unref(pool, ids[next++]); /* unused pages go back */
    if (ids != ids_local) free(ids);
    kv_span_rec *sp = &s->spans[s->n_spans++];
    sp->kind = kind;
    sp->tag = tag;
    sp->start = start;
    sp->n = n;
    sp->stream_pos = s->stream_len;
    s->n += n;
    s->count[kind] += n;
    s->stream_len += n;
    if (first_change < n_before) { /* an eviction moved or removed rows from first_change on */
        s->epoch++;
        s->kept = first_change;
        s->gone = one_run ? gone : 0;
    }
    *first = start;
    return SVLM_OK;
}

static void store_row(const svlm_kv_pool *pool, uint8_t *dst, const float *src) {
    if (pool->p.type == SVLM_F32) {
        memcpy(dst, src, pool->row_bytes);
    } else {
        svlm_f32_to_f16_array((svlm_f16 *)dst, src, (size_t)pool->p.kv_dim);
    }
}

void svlm_kv_seq_write(svlm_kv_seq *s, int layer, int first, int n, const float *k, const float *v) {
    const int D = s->pool->p.kv_dim;
    for (int i = 0; i < n; i++) {
        int32_t slot = s->slot[first + i];
        store_row(s->pool, row_ptr(s->pool, slot, layer, 0), k + (size_t)i * D);
        store_row(s->pool, row_ptr(s->pool, slot, layer, 1), v + (size_t)i * D);
    }
}
