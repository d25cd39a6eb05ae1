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
    int64_t promised; /* the sum of the live sequences' shares (see seq_share) */
};

/* One kind's pages in a sequence, oldest first (a ring), with the tokens of the sequence in each.
 * A kind's spans leave oldest first, so its pages leave from the front, and its new tokens go into
 * the newest page: short spans of other kinds in between never keep a page alive. */
typedef struct kv_pages {
    int *id, *live;
    int head, n, cap;
} kv_pages;

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
    kv_pages pages[SVLM_KV_N_KINDS];    /* each kind's pages: a page holds tokens of one kind only */
    int32_t last_slot[SVLM_KV_N_KINDS]; /* the kind's newest token's slot (-1: none) */
    int64_t stream_len, evicted_spans, evicted_tokens;
    int held;  /* distinct pages its tokens are in: the pages of every kind */
    int share; /* pages the pool promises it (seq_share) */
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

/* Pages an append lets go of: unreferenced ones are caught for the append's own rows (up to
 * `want`) rather than freed, so no other sequence takes them in between. */
typedef struct page_catch {
    int *ids;
    int n, want;
} page_catch;

static void pool_unref_catch(svlm_kv_pool *pool, int id, page_catch *c) {
    pthread_mutex_lock(&pool->mu);
    if (--pool->refs[id] == 0) {
        if (c && c->n < c->want) {
            c->ids[c->n++] = id;
            pool->refs[id] = 1;
            pool->used[id] = 0;
        } else {
            pool->free_ids[pool->n_free++] = id;
            pool->in_use--;
        }
    }
    pthread_mutex_unlock(&pool->mu);
}

/* Moves a sequence's share from `from` to `to` pages. A growth past max_pages is refused (-1,
 * nothing changes) unless forced: a sequence that was created, or already took its pages. */
static int pool_promise(svlm_kv_pool *pool, int from, int to, int force) {
    pthread_mutex_lock(&pool->mu);
    int ok = force || to <= from || pool->promised - from + to <= pool->p.max_pages;
    if (ok) pool->promised += to - from;
    pthread_mutex_unlock(&pool->mu);
    return ok ? 0 : -1;
}

int svlm_kv_pool_pages_promised(svlm_kv_pool *pool) {
    pthread_mutex_lock(&pool->mu);
    int64_t n = pool->promised;
    pthread_mutex_unlock(&pool->mu);
    return n < INT32_MAX ? (int)n : INT32_MAX;
}

static void pool_unref(svlm_kv_pool *pool, int id) {
    pool_unref_catch(pool, id, NULL);
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

/* The i-th oldest page of a kind's ring. */
static int *pages_id(const kv_pages *q, int i) {
    return &q->id[(q->head + i) % q->cap];
}
static int *pages_live(const kv_pages *q, int i) {
    return &q->live[(q->head + i) % q->cap];
}

/* Room for `more` pages at the back of the ring (the ring is unwrapped into the new arrays). */
static int pages_reserve(kv_pages *q, int more) {
    if (q->n + more <= q->cap) return 0;
    int cap = q->cap ? q->cap : 8;
    while (cap < q->n + more)
        cap *= 2;
    int *id = malloc((size_t)cap * sizeof *id), *live = malloc((size_t)cap * sizeof *live);
    if (!id || !live) {
        free(id);
        free(live);
        return -1;
    }
    for (int i = 0; i < q->n; i++)
        id[i] = *pages_id(q, i), live[i] = *pages_live(q, i);
    free(q->id);
    free(q->live);
    q->id = id;
    q->live = live;
    q->head = 0;
    q->cap = cap;
    return 0;
}

static void pages_push(kv_pages *q, int id) { /* (room reserved) */
    q->n++;
    *pages_id(q, q->n - 1) = id;
    *pages_live(q, q->n - 1) = 0;
}

static void pages_pop(kv_pages *q) {
    q->head = (q->head + 1) % q->cap;
    q->n--;
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

int svlm_kv_policy_pages(const svlm_kv_policy *policy, int page_tokens) {
    /* a kind's tokens fill its pages in order, from anywhere in the oldest to anywhere in the
     * newest: its budget in whole pages plus one */
    int64_t pages = 0; /* budgets are at most 2^28 in all (check_policy) */
    for (int k = 0; k < SVLM_KV_N_KINDS; k++)
        if (policy->budget[k] > 0) pages += (policy->budget[k] + page_tokens - 1) / page_tokens + 1;
    return pages < INT32_MAX ? (int)pages : INT32_MAX;
}

/* The pages a sequence may come to hold on its own under the policy, or what it holds if more (a
 * fork whose source wrote on into their shared newest page of a kind starts a page of its own).
 * Forks keep what it shares after it evicts, so each sequence needs this much whatever the others
 * hold. */
static int seq_share(const svlm_kv_policy *policy, int page_tokens, int held) {
    int window = svlm_kv_policy_pages(policy, page_tokens);
    return held > window ? held : window;
}

static svlm_kv_seq *seq_new(svlm_kv_pool *pool, const svlm_kv_policy *policy, int share) {
    svlm_kv_seq *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->pool = pool;
    s->policy = *policy;
    s->share = share;
    s->uid = atomic_fetch_add(&next_uid, 1);
    for (int k = 0; k < SVLM_KV_N_KINDS; k++)
        s->last_slot[k] = -1;
    return s;
}

svlm_status svlm_kv_seq_create(svlm_kv_pool *pool, const svlm_kv_policy *policy, svlm_kv_seq **out,
                               svlm_err *err) {
    *out = NULL;
    svlm_status st = check_policy(policy, err);
    if (st) return st;
    svlm_kv_seq *s = seq_new(pool, policy, seq_share(policy, pool->p.page_tokens, 0));
    if (!s) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    pool_promise(pool, 0, s->share, 1); /* (not refused: see kv_cache.h) */
    *out = s;
    return SVLM_OK;
}

static svlm_status refuse_share(svlm_kv_pool *pool, int share, const char *what, svlm_err *err) {
    return svlm_fail(err, SVLM_E_LIMIT,
                     "KV pool full: %s needs %d pages of its own at worst and the pool has promised %d of "
                     "its %d pages to other sequences",
                     what, share, svlm_kv_pool_pages_promised(pool), pool->p.max_pages);
}

svlm_status svlm_kv_seq_fork(const svlm_kv_seq *src, svlm_kv_seq **out, svlm_err *err) {
    *out = NULL;
    svlm_kv_pool *pool = src->pool;
    /* the fork will keep every page it shares now once src has moved on */
    if (pool_promise(pool, 0, src->share, 0)) return refuse_share(pool, src->share, "a fork", err);
    svlm_kv_seq *s = seq_new(pool, &src->policy, src->share);
    if (!s) {
        pool_promise(pool, src->share, 0, 1);
        return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    }
    svlm_status st = seq_reserve(s, src->n, src->n_spans, err);
    for (int k = 0; k < SVLM_KV_N_KINDS && !st; k++)
        if (pages_reserve(&s->pages[k], src->pages[k].n)) st = svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    if (st) {
        svlm_kv_seq_free(s); /* (gives the share back) */
        return st;
    }
    if (src->n) { /* (an empty sequence may have no arrays yet: no memcpy from NULL) */
        memcpy(s->slot, src->slot, (size_t)src->n * sizeof *s->slot);
        memcpy(s->spos, src->spos, (size_t)src->n * sizeof *s->spos);
    }
    if (src->n_spans) memcpy(s->spans, src->spans, (size_t)src->n_spans * sizeof *s->spans);
    memcpy(s->count, src->count, sizeof s->count);
    memcpy(s->last_slot, src->last_slot, sizeof s->last_slot);
    for (int k = 0; k < SVLM_KV_N_KINDS; k++)
        for (int i = 0; i < src->pages[k].n; i++) {
            pages_push(&s->pages[k], *pages_id(&src->pages[k], i));
            *pages_live(&s->pages[k], i) = *pages_live(&src->pages[k], i);
            pool_ref(pool, *pages_id(&src->pages[k], i));
        }
    s->n = src->n;
    s->n_spans = src->n_spans;
    s->stream_len = src->stream_len;
    s->held = src->held;
    *out = s;
    return SVLM_OK;
}

void svlm_kv_seq_free(svlm_kv_seq *s) {
    if (!s) return;
    for (int k = 0; k < SVLM_KV_N_KINDS; k++) {
        for (int i = 0; i < s->pages[k].n; i++)
            pool_unref(s->pool, *pages_id(&s->pages[k], i));
        free(s->pages[k].id);
        free(s->pages[k].live);
    }
    pool_promise(s->pool, s->share, 0, 1);
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
    int share = seq_share(policy, s->pool->p.page_tokens, s->held);
    if (pool_promise(s->pool, s->share, share, 0))
        return refuse_share(s->pool, share, "the larger window", err);
    s->share = share;
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
int svlm_kv_seq_pages(const svlm_kv_seq *s) {
    return s->held;
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

/* Removes span si after showing it to the hook, and releases the pages of its kind that no token
 * is in now (catching those nobody holds for the append). The span is its kind's oldest, so its
 * tokens are in the kind's oldest pages, in order. */
static void evict_span(svlm_kv_seq *s, int si, int *first_change, page_catch *c) {
    kv_span_rec sp = s->spans[si];
    if (s->hook.on_evict) {
        svlm_kv_span view = {sp.kind, sp.tag, sp.start, sp.n, sp.stream_pos};
        s->hook.on_evict(s->hook.user, s, &view);
    }
    const int a = sp.start, b = sp.start + sp.n;
    kv_pages *q = &s->pages[sp.kind];
    for (int left = sp.n; left > 0;) {
        int *live = pages_live(q, 0), take = *live < left ? *live : left;
        *live -= take;
        left -= take;
        if (*live == 0) {
            pool_unref_catch(s->pool, *pages_id(q, 0), c);
            pages_pop(q);
            s->held--;
        }
    }
    if (!q->n) s->last_slot[sp.kind] = -1;
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

/* What an append does to pages, worked out before anything changes. */
typedef struct append_plan {
    int n_evict;         /* the kind's oldest spans that leave */
    int leaving;         /* their tokens */
    int released, freed; /* pages the sequence lets go of; of those, pages nobody else holds */
    int tail_page, room; /* the page the new rows continue (-1: a fresh one) and its free rows */
    int copy;            /* 1: that page is shared, so it is copied first */
    int fresh;           /* new pages for the rows past it */
} append_plan;

/* The kind's pages the leaving spans empty, and the newest one after them (under pool->mu). */
static void plan_pages(const svlm_kv_seq *s, svlm_kv_kind kind, int n, append_plan *pl) {
    const svlm_kv_pool *pool = s->pool;
    const int B = pool->p.page_tokens;
    const kv_pages *q = &s->pages[kind];
    int left = pl->leaving;
    while (pl->released < q->n && *pages_live(q, pl->released) <= left) {
        left -= *pages_live(q, pl->released);
        pl->freed += pool->refs[*pages_id(q, pl->released)] == 1;
        pl->released++;
    }
    pl->tail_page = -1;
    const int32_t last = s->last_slot[kind];
    if (pl->released < q->n &&
        last >= 0) { /* continue the newest page when this sequence wrote its last row */
        int page = last / B, row = last % B;
        if (row + 1 == pool->used[page] && row + 1 < B) {
            pl->tail_page = page;
            pl->room = B - (row + 1);
            pl->copy = pool->refs[page] > 1;
        }
    }
    pl->fresh = n > pl->room ? (n - pl->room + B - 1) / B : 0;
}

static void plan_append(const svlm_kv_seq *s, svlm_kv_kind kind, int n, append_plan *pl) {
    memset(pl, 0, sizeof *pl);
    int count = s->count[kind]; /* the oldest spans of the kind leave until the new one fits */
    for (int si = 0; si < s->n_spans && count + n > s->policy.budget[kind]; si++)
        if (s->spans[si].kind == kind) {
            count -= s->spans[si].n;
            pl->leaving += s->spans[si].n;
            pl->n_evict++;
        }
    pthread_mutex_lock(&s->pool->mu);
    plan_pages(s, kind, n, pl);
    pthread_mutex_unlock(&s->pool->mu);
}

/* Evicts the planned spans, catching the pages they free into ids (after the `taken` ones). */
static void evict_planned(svlm_kv_seq *s, svlm_kv_kind kind, const append_plan *pl, int *ids, int taken,
                          int need, int *first_change, int *gone, int *one_run) {
    page_catch c = {ids + taken, 0, need - taken};
    for (int e = 0; e < pl->n_evict; e++) {
        int si = 0;
        while (s->spans[si].kind != kind)
            si++;
        /* the spans removed by one append form one run when each starts where the last was */
        if (*gone && s->spans[si].start != *first_change) *one_run = 0;
        *gone += s->spans[si].n;
        evict_span(s, si, first_change, &c);
    }
    /* c.n == c.want: the plan counted pages only this sequence held, and another sequence can
     * only drop its references meanwhile (a fork of this one waits for the append) */
}

/* The newest page of a kind is shared with a fork: this sequence writes on into a copy. */
static void copy_newest_page(svlm_kv_seq *s, kv_pages *q, int copy) {
    const int B = s->pool->p.page_tokens, page = *pages_id(q, q->n - 1);
    copy_page(s->pool, page, copy);
    /* the page's tokens are the newest of their kind: look from the end */
    for (int i = s->n - 1, left = *pages_live(q, q->n - 1); i >= 0 && left; i--)
        if (s->slot[i] / B == page) {
            s->slot[i] = copy * B + s->slot[i] % B;
            left--;
        }
    *pages_id(q, q->n - 1) = copy;
    pool_unref(s->pool, page);
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
    kv_pages *q = &s->pages[kind];
    append_plan pl;
    plan_append(s, kind, n, &pl);
    /* the pages the eviction frees are the append's own; only the rest are taken now */
    const int need = pl.copy + pl.fresh, taken = need > pl.freed ? need - pl.freed : 0;
    int ids_local[8], *ids = need <= 8 ? ids_local : malloc((size_t)need * sizeof(int));
    if (!ids) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    svlm_status st = seq_reserve(s, s->n + n, s->n_spans + 1, err);
    if (st == SVLM_OK && pages_reserve(q, pl.fresh)) st = svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    if (st == SVLM_OK && taken && !pool_take(pool, taken, ids))
        st = svlm_fail(err, SVLM_E_LIMIT, "KV pool full (%d pages of %d tokens)", pool->p.max_pages, B);
    if (st) {
        if (ids != ids_local) free(ids);
        return st;
    }
    const int n_before = s->n;
    int first_change = n_before, gone = 0, one_run = 1;
    evict_planned(s, kind, &pl, ids, taken, need, &first_change, &gone, &one_run);
    int next = 0, room = pl.room, tail_page = pl.tail_page;
    if (pl.copy) { /* shared with a fork: copy it first */
        copy_newest_page(s, q, ids[next++]);
        tail_page = *pages_id(q, q->n - 1);
    }
    const int start = s->n;
    for (int i = 0; i < n; i++) {
        if (!room) {
            tail_page = ids[next++];
            room = B;
            pages_push(q, tail_page);
            s->held++;
        }
        s->slot[start + i] = tail_page * B + pool->used[tail_page]++;
        s->spos[start + i] = s->stream_len + i;
        (*pages_live(q, q->n - 1))++;
        room--;
    }
    s->last_slot[kind] = s->slot[start + n - 1];
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
    /* a sequence past its window (a page of its own after a fork) keeps what it took: the pool
     * promises less */
    int share = seq_share(&s->policy, B, s->held);
    pool_promise(pool, s->share, share, 1);
    s->share = share;
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
