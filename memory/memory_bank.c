/* The bank: entries in time order, and the per-frame path (change score, clip and event
 * detectors, SHORT frames). Budget and persistence are applied at the end of each push. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "memory/memory_internal.h"

#define WARMUP_FRAMES 5
/* An interval past this many frame intervals is a break in the video (a reconnect's gap, a
 * paused source): it neither stretches the frame interval estimate nor is covered by the entry
 * that ends before it, so a question about the gap does not get what was seen before it. */
#define GAP_INTERVALS 2

/* Where an entry whose last frame is at t_last ends at the latest: a frame's interval after it. */
static double end_after(const svlm_memory *m, double t_last, double t1) {
    double cap = t_last + GAP_INTERVALS * (m->dt > 0 ? m->dt : 1.0);
    return t1 < cap ? t1 : cap;
}

const char *svlm_memory_tier_name(svlm_memory_tier tier) {
    switch (tier) {
    case SVLM_MEMORY_SHORT: return "short";
    case SVLM_MEMORY_MID: return "mid";
    case SVLM_MEMORY_EVENT: return "event";
    }
    return "?";
}

void svlm_memory_opts_default(svlm_memory_opts *o) {
    memset(o, 0, sizeof *o);
    o->budget_bytes = (size_t)64 << 20;
    o->max_entries = 4096;
    o->short_frames = 8;
    o->mid_tokens = 8;
    o->clip_similarity = 0.97f;
    o->clip_max_s = 60;
    o->event_z = 6;
    o->event_min_change = 0.02f;
    o->event_gap_s = 1;
    o->event_max_s = 60;
    o->event_frames = 3;
    o->event_tokens = 16;
    o->event_share = 0.5f;
}

/* ---- entries --------------------------------------------------------------------------- */

size_t mem_entry_bytes(const svlm_memory *m, const mem_entry *e) {
    return sizeof *e + (size_t)e->n_tokens * (size_t)m->opts.dim * sizeof(float) +
           (size_t)e->n_keys * (size_t)m->kdim * sizeof(float);
}

mem_entry *mem_entry_new(svlm_memory *m, svlm_memory_tier tier, int n_tokens, int n_keys) {
    mem_entry *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->tier = tier;
    e->n_tokens = n_tokens;
    e->n_keys = n_keys;
    e->tokens = malloc((size_t)(n_tokens > 0 ? n_tokens : 1) * (size_t)m->opts.dim * sizeof(float));
    /* just the keys it holds, as mem_entry_bytes counts them (mem_refresh_keys resizes them) */
    e->keys = malloc((size_t)(n_keys > 0 ? n_keys : 1) * (size_t)m->kdim * sizeof(float));
    if (!e->tokens || !e->keys) {
        mem_entry_free(e);
        return NULL;
    }
    return e;
}

void mem_entry_free(mem_entry *e) {
    if (!e) return;
    free(e->tokens);
    free(e->keys);
    free(e);
}

static int entry_before(const mem_entry *a, const mem_entry *b) {
    return a->t0 < b->t0 || (a->t0 == b->t0 && a->id < b->id);
}

svlm_status mem_insert(svlm_memory *m, mem_entry *e, svlm_err *err) {
    if (m->n_entries == m->cap_entries) {
        int cap = m->cap_entries ? m->cap_entries * 2 : 64;
        mem_entry **p = realloc(m->entries, (size_t)cap * sizeof *p);
        if (!p) {
            mem_entry_free(e);
            return svlm_fail(err, SVLM_E_NOMEM, "memory: out of memory for the entry table");
        }
        m->entries = p;
        m->cap_entries = cap;
    }
    if (!e->id && m->next_id >= MEM_MAX_ID) { /* only a crafted bank file gets here */
        mem_entry_free(e);
        return svlm_fail(err, SVLM_E_LIMIT, "memory: the bank's entry ids are used up (next id %llu)",
                         (unsigned long long)m->next_id);
    }
    if (!e->id)
        e->id = m->next_id++;
    else if (e->id >= m->next_id)
        m->next_id = e->id + 1;
    /* a clip's end is its last frame plus a frame's interval: kept within what a load takes */
    if (e->t1 > MEM_MAX_TIME) e->t1 = e->t0 > MEM_MAX_TIME ? e->t0 : MEM_MAX_TIME;
    int i = m->n_entries;
    while (i > 0 && entry_before(e, m->entries[i - 1]))
        i--;
    memmove(m->entries + i + 1, m->entries + i, (size_t)(m->n_entries - i) * sizeof *m->entries);
    m->entries[i] = e;
    m->n_entries++;
    m->entry_bytes += mem_entry_bytes(m, e);
    m->st.tier_entries[e->tier]++;
    m->st.tier_bytes[e->tier] += mem_entry_bytes(m, e);
    if (e->tier != SVLM_MEMORY_SHORT && !e->persisted) m->dirty = 1;
    return SVLM_OK;
}

mem_entry *mem_take(svlm_memory *m, int i) {
    mem_entry *e = m->entries[i];
    size_t b = mem_entry_bytes(m, e);
    m->entry_bytes -= b;
    m->st.tier_entries[e->tier]--;
    m->st.tier_bytes[e->tier] -= b;
    memmove(m->entries + i, m->entries + i + 1, (size_t)(m->n_entries - i - 1) * sizeof *m->entries);
    m->n_entries--;
    return e;
}

/* A persisted entry's record is deleted once the next manifest no longer lists it. */
static void retire_record(svlm_memory *m, const mem_entry *e) {
    if (!e->persisted || !m->dir) return;
    if (m->n_removed == m->cap_removed && m->cap_removed < MEM_MAX_REMOVED(m)) {
        int cap = m->cap_removed ? m->cap_removed * 2 : 16;
        if (cap > MEM_MAX_REMOVED(m)) cap = MEM_MAX_REMOVED(m);
        uint64_t *p = realloc(m->removed_ids, (size_t)cap * sizeof *p);
        if (p) {
            m->removed_ids = p;
            m->cap_removed = cap;
        }
    }
    /* Without room the record stays on disk (the manifest there may list it: it cannot go before the
     * next one is written); the save whose manifest no longer lists it deletes it with the orphans. */
    if (m->n_removed < m->cap_removed)
        m->removed_ids[m->n_removed++] = e->id;
    else
        m->orphans = 1;
    m->dirty = 1;
}

void mem_remove(svlm_memory *m, int i) {
    mem_entry *e = mem_take(m, i);
    retire_record(m, e);
    mem_entry_free(e);
}

svlm_status mem_renew(svlm_memory *m, int i, svlm_err *err) {
    mem_entry *e = mem_take(m, i);
    retire_record(m, e);
    e->id = 0;
    e->persisted = 0;
    return mem_insert(m, e, err);
}

svlm_status mem_refresh_keys(svlm_memory *m, mem_entry *e) {
    if (m->opts.key_dim > 0) return SVLM_OK; /* external keys are kept as they are */
    int k = e->n_tokens < SVLM_MEMORY_MAX_KEYS ? e->n_tokens : SVLM_MEMORY_MAX_KEYS;
    if (k < 1) k = 1;
    if (k != e->n_keys) {
        float *g = realloc(e->keys, (size_t)k * (size_t)m->kdim * sizeof(float));
        if (!g && k > e->n_keys) return SVLM_E_NOMEM;
        if (g) e->keys = g; /* (a failed shrink keeps the larger block) */
    }
    if (e->n_tokens <= k)
        memcpy(e->keys, e->tokens, (size_t)k * (size_t)m->kdim * sizeof(float));
    else if (mem_cluster(e->tokens, e->n_tokens, m->kdim, k, e->keys))
        return SVLM_E_NOMEM;
    for (int j = 0; j < k; j++)
        mem_normalise(e->keys + (size_t)j * (size_t)m->kdim, m->kdim);
    e->n_keys = k;
    return SVLM_OK;
}

/* Entry keys from the mean of external per-frame keys. */
static void keys_from_sum(svlm_memory *m, mem_entry *e, const double *sum) {
    for (int j = 0; j < m->kdim; j++)
        e->keys[j] = (float)sum[j];
    mem_normalise(e->keys, m->kdim);
    e->n_keys = 1;
}

/* ---- create / free --------------------------------------------------------------------- */

static svlm_status check_opts(const svlm_memory_opts *o, svlm_err *err) {
    if (o->dim < 1 || o->dim > (1 << 16))
        return svlm_fail(err, SVLM_E_INVALID, "memory: dim must be 1..65536, got %d", o->dim);
    if (o->key_dim < 0 || o->key_dim > (1 << 16))
        return svlm_fail(err, SVLM_E_INVALID, "memory: key_dim must be 0..65536, got %d", o->key_dim);
    if (o->budget_bytes < ((size_t)64 << 10))
        return svlm_fail(err, SVLM_E_INVALID, "memory: budget must be at least 64 KiB, got %zu bytes",
                         o->budget_bytes);
    if (o->max_entries < 8 || o->short_frames < 0 || o->mid_tokens < 1 || o->event_frames < 1 ||
        o->event_tokens < 1)
        return svlm_fail(err, SVLM_E_INVALID,
                         "memory: need max_entries >= 8, short_frames >= 0, mid_tokens, event_frames, "
                         "event_tokens >= 1");
    if (!(o->clip_similarity >= -1 && o->clip_similarity <= 1) || !(o->clip_max_s > 0) || !(o->event_z > 0) ||
        !(o->event_min_change >= 0) || !(o->event_gap_s > 0) || !(o->event_max_s > 0) ||
        !(o->event_share > 0 && o->event_share <= 1))
        return svlm_fail(err, SVLM_E_INVALID,
                         "memory: clip_similarity must be in [-1, 1]; clip_max_s, event_z, "
                         "event_gap_s, event_max_s > 0; event_min_change >= 0; event_share in (0, 1]");
    return SVLM_OK;
}

svlm_status svlm_memory_create(const svlm_memory_opts *opts, svlm_memory **out, svlm_err *err) {
    *out = NULL;
    svlm_memory_opts o = *opts;
    if (o.read_only) {
        if (!o.dir) return svlm_fail(err, SVLM_E_INVALID, "memory: read_only needs a directory");
        if (o.dim == 0) {
            svlm_status st = mem_store_peek_dims(o.dir, &o.dim, &o.key_dim, err);
            if (st) return st;
        }
    }
    svlm_status st = check_opts(&o, err);
    if (st) return st;
    svlm_memory *m = calloc(1, sizeof *m);
    if (!m) return svlm_fail(err, SVLM_E_NOMEM, "memory: out of memory");
    pthread_mutex_init(&m->lock, NULL);
    m->lock_fd = -1;
    m->opts = o;
    m->kdim = o.key_dim > 0 ? o.key_dim : o.dim;
    m->next_id = 1;
    m->st.budget = o.budget_bytes;
    if (o.dir) {
        m->dir = strdup(o.dir);
        if (!m->dir) {
            svlm_memory_free(m);
            return svlm_fail(err, SVLM_E_NOMEM, "memory: out of memory");
        }
        m->opts.dir = m->dir;
        st = mem_store_load(m, err);
        if (st) {
            svlm_memory_free(m);
            return st;
        }
        if (!o.read_only && (st = mem_enforce_budget(m, err))) {
            svlm_memory_free(m);
            return st;
        }
    }
    *out = m;
    return SVLM_OK;
}

static void free_work(svlm_memory *m) {
    free(m->prev);
    free(m->dist);
    free(m->clip.sum);
    free(m->clip.key_sum);
    free(m->clip.mean_dir);
    free(m->event.baseline);
    free(m->event.kept);
    free(m->event.key_sum);
    m->prev = m->dist = m->clip.mean_dir = m->event.baseline = m->event.kept = NULL;
    m->clip.sum = m->clip.key_sum = m->event.key_sum = NULL;
    m->work_bytes = 0;
}

void svlm_memory_free(svlm_memory *m) {
    if (!m) return;
    for (int i = 0; i < m->n_entries; i++)
        mem_entry_free(m->entries[i]);
    free(m->entries);
    free_work(m);
    free(m->removed_ids);
    free(m->plan);
    free(m->found_rows);
    mem_store_unlock(m);
    free(m->dir);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

/* Bytes of the working buffers for frames of n tokens (alloc_work's). */
static size_t work_bytes_for(const svlm_memory *m, int n) {
    size_t d = (size_t)m->opts.dim, kd = (size_t)m->kdim, nn = (size_t)n;
    size_t kept = (size_t)m->opts.event_frames * (size_t)m->opts.event_tokens;
    return nn * d * (2 * sizeof(float) + sizeof(double)) + 2 * nn * sizeof(float) + 2 * d * sizeof(float) +
           kept * d * sizeof(float) + 2 * kd * sizeof(double);
}

/* Working buffers sized for frames of n tokens. */
static svlm_status alloc_work(svlm_memory *m, int n, svlm_err *err) {
    free_work(m);
    size_t d = (size_t)m->opts.dim, kd = (size_t)m->kdim, nn = (size_t)n;
    size_t kept = (size_t)m->opts.event_frames * (size_t)m->opts.event_tokens;
    m->prev = malloc(nn * d * sizeof(float));
    m->dist = malloc(2 * nn * sizeof(float) + d * sizeof(float));
    m->clip.sum = malloc(nn * d * sizeof(double));
    m->clip.key_sum = calloc(kd, sizeof(double));
    m->clip.mean_dir = malloc(d * sizeof(float));
    m->event.baseline = malloc(nn * d * sizeof(float));
    m->event.kept = malloc(kept * d * sizeof(float));
    m->event.key_sum = calloc(kd, sizeof(double));
    if (!m->prev || !m->dist || !m->clip.sum || !m->clip.key_sum || !m->clip.mean_dir || !m->event.baseline ||
        !m->event.kept || !m->event.key_sum) {
        free_work(m);
        return svlm_fail(err, SVLM_E_NOMEM, "memory: out of memory for frames of %d tokens", n);
    }
    m->work_bytes = work_bytes_for(m, n);
    return SVLM_OK;
}

/* ---- change score ---------------------------------------------------------------------- */

static void token_distances(const svlm_memory *m, const float *a, const float *b, int n, float *dist) {
    int d = m->opts.dim;
    for (int i = 0; i < n; i++)
        dist[i] = 1.0f - mem_cosine(a + (size_t)i * d, b + (size_t)i * d, d);
}

static int cmp_float_desc(const void *pa, const void *pb) {
    float a = *(const float *)pa, b = *(const float *)pb;
    return (a < b) - (a > b);
}

/* Mean of the largest eighth of the per-token distances: a local change (someone entering a
 * corner) counts as much as a global one, and noise spread over the frame counts little. */
static float change_score(const float *dist, int n, float *scratch) {
    memcpy(scratch, dist, (size_t)n * sizeof(float));
    qsort(scratch, (size_t)n, sizeof(float), cmp_float_desc);
    int top = (n + 7) / 8;
    double s = 0;
    for (int i = 0; i < top; i++)
        s += scratch[i];
    return (float)(s / top);
}

static float deviation(const svlm_memory *m) {
    double floor = 0.1 * m->chg_mean + 1e-4;
    return (float)(m->chg_dev > floor ? m->chg_dev : floor);
}

/* Median and MAD over the last calm frames: one cut during warm-up does not skew them. */
static void update_change_stats(svlm_memory *m, float score) {
    int cap = (int)(sizeof m->chg_hist / sizeof m->chg_hist[0]);
    m->chg_hist[m->chg_n % cap] = score;
    m->chg_n++;
    int n = m->chg_n < cap ? (int)m->chg_n : cap;
    float v[sizeof m->chg_hist / sizeof m->chg_hist[0]];
    memcpy(v, m->chg_hist, (size_t)n * sizeof(float));
    qsort(v, (size_t)n, sizeof(float), cmp_float_desc);
    float med = v[n / 2];
    for (int i = 0; i < n; i++)
        v[i] = fabsf(m->chg_hist[i] - med);
    qsort(v, (size_t)n, sizeof(float), cmp_float_desc);
    m->chg_mean = med;
    m->chg_dev = 1.4826 * v[n / 2];
}

/* ---- clips (MID) ----------------------------------------------------------------------- */

static void mean_direction(const svlm_memory *m, const float *tokens, int n, float *out) {
    int d = m->opts.dim;
    memset(out, 0, (size_t)d * sizeof(float));
    for (int i = 0; i < n; i++)
        for (int j = 0; j < d; j++)
            out[j] += tokens[(size_t)i * d + j];
    mem_normalise(out, d);
}

static svlm_status close_clip(svlm_memory *m, double t1, svlm_err *err) {
    mem_clip *c = &m->clip;
    if (!c->open) return SVLM_OK;
    c->open = 0;
    int d = m->opts.dim, n = c->n_tokens;
    int k = m->opts.mid_tokens < n ? m->opts.mid_tokens : n;
    float *mean = malloc((size_t)n * (size_t)d * sizeof(float));
    mem_entry *e = mem_entry_new(m, SVLM_MEMORY_MID, k, 1);
    if (!mean || !e) {
        free(mean);
        mem_entry_free(e);
        return svlm_fail(err, SVLM_E_NOMEM, "memory: out of memory closing a clip");
    }
    for (size_t i = 0; i < (size_t)n * (size_t)d; i++)
        mean[i] = (float)(c->sum[i] / (double)c->n_frames);
    int rc = k == n ? (memcpy(e->tokens, mean, (size_t)n * (size_t)d * sizeof(float)), 0)
                    : mem_cluster(mean, n, d, k, e->tokens);
    free(mean);
    if (rc || mem_refresh_keys(m, e)) {
        mem_entry_free(e);
        return svlm_fail(err, SVLM_E_NOMEM, "memory: out of memory closing a clip");
    }
    if (m->opts.key_dim > 0) keys_from_sum(m, e, c->key_sum);
    e->t0 = c->t0;
    e->t1 = t1 > c->t_last ? end_after(m, c->t_last, t1) : c->t_last + m->dt;
    e->n_frames = c->n_frames;
    e->importance = 1.0f;
    return mem_insert(m, e, err);
}

static svlm_status clip_step(svlm_memory *m, double t, const float *tokens, int n, const float *key,
                             const float *dir, int spike, svlm_err *err) {
    mem_clip *c = &m->clip;
    (void)spike; /* a clip ends when its content changes, not at every burst of motion */
    if (c->open && (t - c->t0 >= m->opts.clip_max_s ||
                    mem_cosine(dir, c->mean_dir, m->opts.dim) < m->opts.clip_similarity)) {
        svlm_status st = close_clip(m, t, err);
        if (st) return st;
    }
    size_t nd = (size_t)n * (size_t)m->opts.dim;
    if (!c->open) {
        c->open = 1;
        c->n_tokens = n;
        c->n_frames = 0;
        c->t0 = t;
        memset(c->sum, 0, nd * sizeof(double));
        memset(c->key_sum, 0, (size_t)m->kdim * sizeof(double));
        memcpy(c->mean_dir, dir, (size_t)m->opts.dim * sizeof(float));
    }
    for (size_t i = 0; i < nd; i++)
        c->sum[i] += tokens[i];
    if (key)
        for (int j = 0; j < m->kdim; j++)
            c->key_sum[j] += key[j];
    c->n_frames++;
    c->t_last = t;
    return SVLM_OK;
}

/* ---- events ---------------------------------------------------------------------------- */

static svlm_status close_event(svlm_memory *m, double t1, svlm_err *err) {
    mem_event *ev = &m->event;
    if (!ev->open) return SVLM_OK;
    ev->open = 0;
    if (ev->n_kept == 0) return SVLM_OK;
    mem_entry *e = mem_entry_new(m, SVLM_MEMORY_EVENT, ev->n_kept, 1);
    if (!e) return svlm_fail(err, SVLM_E_NOMEM, "memory: out of memory closing an event");
    memcpy(e->tokens, ev->kept, (size_t)ev->n_kept * (size_t)m->opts.dim * sizeof(float));
    if (mem_refresh_keys(m, e)) {
        mem_entry_free(e);
        return svlm_fail(err, SVLM_E_NOMEM, "memory: out of memory closing an event");
    }
    if (m->opts.key_dim > 0) keys_from_sum(m, e, ev->key_sum);
    e->t0 = ev->t0;
    e->t1 = t1 > ev->t0 ? end_after(m, ev->t_last, t1) : ev->t0 + m->dt;
    e->n_frames = ev->n_frames;
    e->importance = ev->peak_z;
    m->st.events++;
    return mem_insert(m, e, err);
}

/* Keeps the tokens of this frame that changed most against the scene before the event (all
 * of them ranked when there is no baseline), in their original order. */
static void keep_changed_tokens(svlm_memory *m, const float *tokens, int n, const float *dist_b) {
    mem_event *ev = &m->event;
    int d = m->opts.dim, cap = m->opts.event_tokens < n ? m->opts.event_tokens : n;
    float *sorted = m->dist + n; /* second half of the scratch */
    float cut = -1;
    if (dist_b) {
        memcpy(sorted, dist_b, (size_t)n * sizeof(float));
        qsort(sorted, (size_t)n, sizeof(float), cmp_float_desc);
        cut = sorted[cap - 1];
        if (cut < 0.5f * sorted[0]) cut = 0.5f * sorted[0];
    }
    int taken = 0;
    for (int i = 0; i < n && taken < cap; i++) {
        int take = dist_b ? dist_b[i] >= cut : (i * cap / n != (i + 1) * cap / n || n == cap);
        if (!take) continue;
        memcpy(ev->kept + (size_t)ev->n_kept * d, tokens + (size_t)i * d, (size_t)d * sizeof(float));
        ev->n_kept++;
        taken++;
    }
    ev->frames_kept++;
}

static svlm_status event_step(svlm_memory *m, double t, const float *tokens, int n, const float *key,
                              int spike, float z, svlm_err *err) {
    mem_event *ev = &m->event;
    svlm_status st;
    float *dist_b = m->dist + n; /* distances to the baseline; dist holds frame-to-frame */
    int have_baseline = ev->open && ev->n_tokens == n;
    if (ev->open) {
        if (have_baseline) {
            token_distances(m, tokens, ev->baseline, n, dist_b);
            float *scratch = malloc((size_t)n * sizeof(float));
            if (!scratch) return svlm_fail(err, SVLM_E_NOMEM, "memory: out of memory");
            float back = change_score(dist_b, n, scratch);
            free(scratch);
            /* The scene is what it was before the event: whatever came has left. */
            if (back < m->chg_mean + 2 * deviation(m) || back < 0.5f * m->opts.event_min_change)
                return close_event(m, t, err);
        }
        if (spike && ev->calm && t - ev->calm_since >= m->opts.event_gap_s) {
            /* a new change after a calm spell is the next event */
            if ((st = close_event(m, ev->calm_since, err))) return st;
        } else if (t - ev->t0 >= m->opts.event_max_s) {
            if ((st = close_event(m, ev->calm ? ev->calm_since : t, err))) return st;
            if (!spike) return SVLM_OK;
        } else if (spike) {
            ev->t_last_spike = t;
            ev->calm = 0;
            if (z > ev->peak_z) ev->peak_z = z;
        } else if (!ev->calm) {
            ev->calm = 1;
            ev->calm_since = t;
        }
    }
    if (!ev->open) {
        if (!spike) return SVLM_OK;
        ev->open = 1;
        ev->n_tokens = m->prev_n == n ? n : 0;
        if (ev->n_tokens) memcpy(ev->baseline, m->prev, (size_t)n * (size_t)m->opts.dim * sizeof(float));
        ev->t0 = ev->t_last_spike = t;
        ev->calm = 0;
        ev->peak_z = z;
        ev->frames_kept = ev->n_kept = 0;
        ev->n_frames = 0;
        memset(ev->key_sum, 0, (size_t)m->kdim * sizeof(double));
        have_baseline = ev->n_tokens == n;
        if (have_baseline) token_distances(m, tokens, ev->baseline, n, dist_b);
    }
    if (ev->frames_kept < m->opts.event_frames) {
        /* keep_changed_tokens sorts in the second half of the scratch: copy the distances */
        float *db = NULL;
        if (have_baseline) {
            db = malloc((size_t)n * sizeof(float));
            if (!db) return svlm_fail(err, SVLM_E_NOMEM, "memory: out of memory");
            memcpy(db, dist_b, (size_t)n * sizeof(float));
        }
        keep_changed_tokens(m, tokens, n, db);
        free(db);
    }
    if (key)
        for (int j = 0; j < m->kdim; j++)
            ev->key_sum[j] += key[j];
    ev->n_frames++;
    ev->t_last = t;
    return SVLM_OK;
}

/* ---- the per-frame path ---------------------------------------------------------------- */

/* A SHORT frame's key is its mean token direction (clustering every frame would cost more
 * than everything else a push does). */
static svlm_status add_short(svlm_memory *m, double t, const float *tokens, int n, const float *key,
                             const float *dir, svlm_err *err) {
    if (m->opts.short_frames == 0) return SVLM_OK;
    mem_entry *e = mem_entry_new(m, SVLM_MEMORY_SHORT, n, 1);
    if (!e) return svlm_fail(err, SVLM_E_NOMEM, "memory: out of memory for a frame");
    memcpy(e->tokens, tokens, (size_t)n * (size_t)m->opts.dim * sizeof(float));
    memcpy(e->keys, key ? key : dir, (size_t)m->kdim * sizeof(float));
    mem_normalise(e->keys, m->kdim);
    e->t0 = t;
    e->t1 = t + (m->dt > 0 ? m->dt : 1.0);
    e->n_frames = 1;
    e->importance = 1.0f;
    svlm_status st = mem_insert(m, e, err);
    if (st) return st;
    while (m->st.tier_entries[SVLM_MEMORY_SHORT] > m->opts.short_frames)
        for (int i = 0; i < m->n_entries; i++)
            if (m->entries[i]->tier == SVLM_MEMORY_SHORT) {
                mem_remove(m, i);
                break;
            }
    return SVLM_OK;
}

static svlm_status push_locked(svlm_memory *m, double t, const float *tokens, int n, const float *key,
                               svlm_err *err) {
    svlm_status st;
    if (m->opts.read_only) return svlm_fail(err, SVLM_E_INVALID, "memory: the bank is open read-only");
    if (!tokens || n < 1 || n > (1 << 20))
        return svlm_fail(err, SVLM_E_INVALID, "memory: a frame needs 1..1048576 tokens, got %d", n);
    if (!(fabs(t) <= MEM_MAX_TIME) || (m->st.frames > 0 && t < m->prev_t))
        return svlm_fail(err, SVLM_E_INVALID,
                         "memory: frame time %.3f is not finite, beyond 1e12 s or goes backwards (last %.3f)",
                         t, m->prev_t);
    /* a caller's clock restarted at 0 would file new frames among the resumed ones: retrieval by
     * time would mix the two, and merges join clips across them */
    if (m->st.frames == 0 && m->resumed && t < m->st.t_last)
        return svlm_fail(err, SVLM_E_INVALID,
                         "memory: frame time %.3f is before the end of the resumed bank (t_last %.3f): "
                         "continue the stream's clock after svlm_memory_stats.t_last",
                         t, m->st.t_last);
    if ((m->opts.key_dim > 0) != (key != NULL))
        return svlm_fail(err, SVLM_E_INVALID, "memory: a per-frame key is %s",
                         m->opts.key_dim > 0 ? "required (key_dim > 0)" : "not expected (key_dim = 0)");
    if (n != m->prev_n || !m->prev) {
        /* A new frame size. Its working buffers and one SHORT frame must fit, or the frame is
         * refused with the bank untouched: else the budget evicted every entry (persisted: the next
         * save deleted their records) to make room for buffers it could not fit anyway. */
        size_t need = work_bytes_for(m, n) + (size_t)m->cap_entries * sizeof(mem_entry *);
        if (m->opts.short_frames > 0)
            need += sizeof(mem_entry) + ((size_t)n * (size_t)m->opts.dim + (size_t)m->kdim) * sizeof(float);
        if (need > m->opts.budget_bytes)
            return svlm_fail(err, SVLM_E_LIMIT,
                             "memory: frames of %d tokens need %zu bytes of working buffers, more than the "
                             "budget of %zu bytes",
                             n, need, m->opts.budget_bytes);
        /* finish what was built for the old size, then resize the buffers */
        if ((st = close_event(m, t, err)) || (st = close_clip(m, t, err))) return st;
        if ((st = alloc_work(m, n, err))) return st;
        m->prev_n = 0;
    }
    float *dir = m->dist + 2 * (size_t)n;
    mean_direction(m, tokens, n, dir);
    int spike = 0;
    float z = 0;
    if (m->prev_n == n) {
        token_distances(m, tokens, m->prev, n, m->dist);
        float score = change_score(m->dist, n, m->dist + n);
        if (m->chg_n >= WARMUP_FRAMES) {
            z = (float)((score - m->chg_mean) / deviation(m));
            spike = z > m->opts.event_z && score > m->opts.event_min_change;
        }
        if (!spike) update_change_stats(m, score);
        if (t > m->prev_t) {
            /* a gap counts as a few intervals: a slower rate is still learnt, a gap is not */
            double step = t - m->prev_t, most = 4 * m->dt;
            if (m->dt > 0 && step > most) step = most;
            m->dt = m->dt > 0 ? 0.9 * m->dt + 0.1 * step : step;
        }
    }
    if ((st = event_step(m, t, tokens, n, key, spike, z, err))) return st;
    if ((st = clip_step(m, t, tokens, n, key, dir, spike, err))) return st;
    if ((st = add_short(m, t, tokens, n, key, dir, err))) return st;
    memcpy(m->prev, tokens, (size_t)n * (size_t)m->opts.dim * sizeof(float));
    m->prev_n = n;
    m->prev_t = t;
    if (m->st.frames == 0 && m->n_entries <= m->st.tier_entries[SVLM_MEMORY_SHORT]) m->st.t_first = t;
    m->st.frames++;
    m->st.t_last = t;
    if ((st = mem_enforce_budget(m, err))) return st;
    if (m->dir && m->dirty) return mem_store_sync(m, err);
    return SVLM_OK;
}

svlm_status svlm_memory_push(svlm_memory *m, double t, const float *tokens, int n_tokens, const float *key,
                             svlm_err *err) {
    pthread_mutex_lock(&m->lock);
    svlm_status st = push_locked(m, t, tokens, n_tokens, key, err);
    pthread_mutex_unlock(&m->lock);
    return st;
}

svlm_status svlm_memory_flush(svlm_memory *m, svlm_err *err) {
    pthread_mutex_lock(&m->lock);
    double end = m->prev_t + (m->dt > 0 ? m->dt : 1.0);
    svlm_status st = SVLM_OK;
    if (!m->opts.read_only) {
        if (!(st = close_event(m, m->event.open && m->event.calm ? m->event.calm_since : end, err)) &&
            !(st = close_clip(m, end, err)) && !(st = mem_enforce_budget(m, err)) && m->dir && m->dirty)
            st = mem_store_sync(m, err);
    }
    pthread_mutex_unlock(&m->lock);
    return st;
}

/* ---- inspection ------------------------------------------------------------------------ */

void svlm_memory_stats_get(svlm_memory *m, svlm_memory_stats *s) {
    pthread_mutex_lock(&m->lock);
    *s = m->st;
    s->work_bytes = m->work_bytes;
    s->bytes = mem_total_bytes(m);
    pthread_mutex_unlock(&m->lock);
}

int svlm_memory_count(svlm_memory *m) {
    pthread_mutex_lock(&m->lock);
    int n = m->n_entries;
    pthread_mutex_unlock(&m->lock);
    return n;
}

svlm_status svlm_memory_entry(svlm_memory *m, int i, svlm_memory_entry_info *info) {
    pthread_mutex_lock(&m->lock);
    svlm_status st = SVLM_E_INVALID;
    if (i >= 0 && i < m->n_entries) {
        const mem_entry *e = m->entries[i];
        info->id = e->id;
        info->tier = e->tier;
        info->t0 = e->t0;
        info->t1 = e->t1;
        info->n_frames = e->n_frames;
        info->n_tokens = e->n_tokens;
        info->bytes = mem_entry_bytes(m, e);
        info->importance = e->importance;
        info->level = e->level;
        st = SVLM_OK;
    }
    pthread_mutex_unlock(&m->lock);
    return st;
}

void svlm_memory_load_report_get(svlm_memory *m, svlm_memory_load_report *r) {
    pthread_mutex_lock(&m->lock);
    *r = m->report;
    pthread_mutex_unlock(&m->lock);
}
