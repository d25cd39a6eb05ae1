/*
 * Retrieval: rank entries against a question's representations, filtered by time.
 *
 * Cost per question is bounded, coarse to fine: the question's mean vector against the
 * SVLM_MEMORY_MAX_KEYS keys of at most opts.max_entries entries (the budget merges old clips
 * to keep that count), then the best FINE_CANDIDATES entries again with up to MAX_QUERY_VECS
 * question vectors (longer questions are pooled into chunk means).
 */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "memory/memory_internal.h"

#define MAX_QUERY_VECS  8
#define FINE_CANDIDATES 64   /* entries re-scored with every question vector */
#define FIRST_MARGIN    0.1f /* "first": entries within this of the best score count as relevant */
#define AT_WINDOW_S     30.0 /* "at 12:30" covers 12:00 .. 13:00 */
/* A small preference between equally similar entries: events keep the changed detail. */
static const float tier_prior[SVLM_MEMORY_N_TIERS] = {0.01f, 0.0f, 0.02f};

void svlm_memory_query_default(svlm_memory_query *q) {
    memset(q, 0, sizeof *q);
    q->t_from = -INFINITY;
    q->t_to = INFINITY;
    q->top_k = 4;
}

typedef struct cand {
    float rank, score;
    int index;
    double t0;
} cand;

static int by_rank(const void *pa, const void *pb) {
    const cand *a = pa, *b = pb;
    return (a->rank < b->rank) - (a->rank > b->rank);
}

static int by_time(const void *pa, const void *pb) {
    const cand *a = pa, *b = pb;
    return (a->t0 > b->t0) - (a->t0 < b->t0);
}

/* Question vectors as at most MAX_QUERY_VECS unit vectors (chunk means). */
static float *pool_query(const float *v, int n, int d, int *n_out) {
    int k = n < MAX_QUERY_VECS ? n : MAX_QUERY_VECS;
    float *q = calloc((size_t)k * (size_t)d, sizeof(float));
    if (!q) return NULL;
    for (int i = 0; i < n; i++) {
        float *dst = q + (size_t)((int64_t)i * k / n) * d;
        for (int j = 0; j < d; j++)
            dst[j] += v[(size_t)i * d + j];
    }
    for (int c = 0; c < k; c++)
        mem_normalise(q + (size_t)c * d, d);
    *n_out = k;
    return q;
}

static float best_similarity(const mem_entry *e, const float *q, int nq, int d) {
    float best = -1;
    for (int a = 0; a < nq; a++)
        for (int b = 0; b < e->n_keys; b++) {
            const float *x = q + (size_t)a * d, *y = e->keys + (size_t)b * d;
            float p[8] = {0}; /* independent sums let the compiler vectorise */
            int j = 0;
            for (; j + 8 <= d; j += 8)
                for (int l = 0; l < 8; l++)
                    p[l] += x[j + l] * y[j + l];
            float s = ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7]));
            for (; j < d; j++)
                s += x[j] * y[j];
            if (s > best) best = s;
        }
    return best;
}

static svlm_status retrieve_locked(svlm_memory *m, const svlm_memory_query *q, svlm_memory_hits *out,
                                   svlm_err *err) {
    if (!q->vecs || q->n_vecs < 1 || q->top_k < 1 || q->max_tokens < 0 || !(q->t_from <= q->t_to))
        return svlm_fail(err, SVLM_E_INVALID, "memory: a query needs vectors, top_k >= 1 and t_from <= t_to");
    int d = m->kdim, nq = 0;
    float *qv = pool_query(q->vecs, q->n_vecs, d, &nq);
    float *mean = calloc((size_t)d, sizeof(float));
    cand *c = malloc((size_t)(m->n_entries ? m->n_entries : 1) * sizeof *c);
    if (!qv || !mean || !c) {
        free(qv);
        free(mean);
        free(c);
        return svlm_fail(err, SVLM_E_NOMEM, "memory: out of memory for a query");
    }
    for (int a = 0; a < nq; a++)
        for (int j = 0; j < d; j++)
            mean[j] += qv[(size_t)a * d + j];
    mem_normalise(mean, d);
    int n = 0;
    for (int i = 0; i < m->n_entries; i++) {
        const mem_entry *e = m->entries[i];
        if (e->t1 <= q->t_from || e->t0 > q->t_to) continue;
        float s = best_similarity(e, mean, 1, d);
        c[n++] = (cand){s + tier_prior[e->tier], s, i, e->t0};
    }
    free(mean);
    qsort(c, (size_t)n, sizeof *c, by_rank);
    if (nq > 1) {
        int fine = n < FINE_CANDIDATES ? n : FINE_CANDIDATES;
        for (int i = 0; i < fine; i++) {
            const mem_entry *e = m->entries[c[i].index];
            float s = best_similarity(e, qv, nq, d);
            if (s > c[i].score) c[i].score = s, c[i].rank = s + tier_prior[e->tier];
        }
        qsort(c, (size_t)fine, sizeof *c, by_rank);
    }
    free(qv);
    out->scanned = n;
    if (q->first && n > 0) {
        int relevant = 1;
        while (relevant < n && c[relevant].rank >= c[0].rank - FIRST_MARGIN)
            relevant++;
        qsort(c, (size_t)relevant, sizeof *c, by_time);
    }
    int want = q->top_k < n ? q->top_k : n, tokens = 0;
    out->hit = calloc((size_t)(want ? want : 1), sizeof *out->hit);
    if (!out->hit) {
        free(c);
        return svlm_fail(err, SVLM_E_NOMEM, "memory: out of memory for a query");
    }
    for (int i = 0; i < n && out->n < want; i++) { /* (past the top k when some did not fit) */
        const mem_entry *e = m->entries[c[i].index];
        /* a hit over the cap is skipped, the next ranked one may fit (the first is no exception:
         * a cap of N rows is kept) */
        if (q->max_tokens && tokens + e->n_tokens > q->max_tokens) continue;
        svlm_memory_hit *h = &out->hit[out->n];
        h->tokens = malloc((size_t)e->n_tokens * (size_t)m->opts.dim * sizeof(float));
        if (!h->tokens) {
            free(c);
            svlm_memory_hits_free(out);
            return svlm_fail(err, SVLM_E_NOMEM, "memory: out of memory for a query");
        }
        memcpy(h->tokens, e->tokens, (size_t)e->n_tokens * (size_t)m->opts.dim * sizeof(float));
        h->id = e->id;
        h->tier = e->tier;
        h->t0 = e->t0;
        h->t1 = e->t1;
        h->score = c[i].score;
        h->n_tokens = e->n_tokens;
        tokens += e->n_tokens;
        out->n++;
    }
    free(c);
    return SVLM_OK;
}

svlm_status svlm_memory_retrieve(svlm_memory *m, const svlm_memory_query *q, svlm_memory_hits *out,
                                 svlm_err *err) {
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&m->lock);
    svlm_status st = retrieve_locked(m, q, out, err);
    pthread_mutex_unlock(&m->lock);
    return st;
}

void svlm_memory_hits_free(svlm_memory_hits *h) {
    if (!h) return;
    for (int i = 0; i < h->n; i++)
        free(h->hit[i].tokens);
    free(h->hit);
    memset(h, 0, sizeof *h);
}

svlm_status svlm_memory_novelty(svlm_memory *m, const float *tokens, int n, float *novelty, svlm_err *err) {
    if (m->opts.key_dim > 0)
        return svlm_fail(err, SVLM_E_UNSUPPORTED, "memory: novelty needs keys in token space (key_dim 0)");
    if (!tokens || n < 0) return svlm_fail(err, SVLM_E_INVALID, "memory: novelty needs tokens");
    pthread_mutex_lock(&m->lock);
    int d = m->opts.dim, first = m->n_entries > 16 ? m->n_entries - 16 : 0;
    const mem_entry *last = NULL; /* the newest full frame, compared position by position */
    for (int i = m->n_entries - 1; i >= 0 && !last; i--)
        if (m->entries[i]->tier == SVLM_MEMORY_SHORT && m->entries[i]->n_tokens == n) last = m->entries[i];
    for (int t = 0; t < n; t++) {
        const float *x = tokens + (size_t)t * d;
        float best = last ? mem_cosine(x, last->tokens + (size_t)t * d, d) : -1.0f;
        for (int i = first; i < m->n_entries; i++) {
            const mem_entry *e = m->entries[i];
            for (int k = 0; k < e->n_keys; k++) {
                float s = mem_cosine(x, e->keys + (size_t)k * d, d);
                if (s > best) best = s;
            }
        }
        novelty[t] = m->n_entries ? 1.0f - best : 1.0f;
    }
    pthread_mutex_unlock(&m->lock);
    return SVLM_OK;
}

/* ---- text ------------------------------------------------------------------------------ */

void svlm_memory_format_clock(double t, char *buf, size_t n) {
    if (!isfinite(t) || t < 0) t = 0;
    if (t > 1e9) t = 1e9;
    long s = (long)floor(t);
    if (s < 3600)
        snprintf(buf, n, "%02ld:%02ld", s / 60, s % 60);
    else
        snprintf(buf, n, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
}

void svlm_memory_format_intro(double t0, double t1, char *buf, size_t n) {
    char a[32], b[32];
    svlm_memory_format_clock(t0, a, sizeof a);
    svlm_memory_format_clock(t1, b, sizeof b);
    snprintf(buf, n, "Memory from %s to %s:", a, b);
}

/* "12:30" or "1:02:03" at s; returns seconds or -1, and the characters used. */
static double parse_clock(const char *s, int *used) {
    long part[3];
    int np = 0, i = 0;
    while (np < 3) {
        if (!isdigit((unsigned char)s[i])) return -1;
        long v = 0;
        int digits = 0;
        while (isdigit((unsigned char)s[i]) && digits < 6)
            v = v * 10 + (s[i++] - '0'), digits++;
        part[np++] = v;
        if (np > 1 && (digits != 2 || v > 59)) return -1;
        if (s[i] != ':' || !isdigit((unsigned char)s[i + 1])) break;
        i++;
    }
    if (np < 2) return -1;
    *used = i;
    return np == 2 ? part[0] * 60.0 + part[1] : part[0] * 3600.0 + part[1] * 60.0 + part[2];
}

static const struct {
    const char *word;
    int value;
} number_words[] = {
    {"a", 1},           {"an", 1},      {"one", 1},      {"two", 2},     {"three", 3},   {"four", 4},
    {"five", 5},        {"six", 6},     {"seven", 7},    {"eight", 8},   {"nine", 9},    {"ten", 10},
    {"eleven", 11},     {"twelve", 12}, {"fifteen", 15}, {"twenty", 20}, {"thirty", 30}, {"forty", 40},
    {"forty-five", 45}, {"fifty", 50},  {"sixty", 60},   {"ninety", 90}, {"few", 3},     {"couple", 2},
};

/* A count (digits or a number word) then a unit at s; returns seconds or -1. A missing count
 * means one ("the last minute"). */
static double parse_duration(const char *s, int *used) {
    int i = 0;
    double count = -1;
    while (s[i] == ' ')
        i++;
    if (isdigit((unsigned char)s[i])) {
        char *end;
        count = strtod(s + i, &end);
        i = (int)(end - s);
    } else {
        for (size_t w = 0; w < sizeof number_words / sizeof number_words[0]; w++) {
            size_t len = strlen(number_words[w].word);
            if (!strncmp(s + i, number_words[w].word, len) && s[i + len] == ' ') {
                count = number_words[w].value;
                i += (int)len;
                break;
            }
        }
    }
    if (count < 0) count = 1;
    while (s[i] == ' ')
        i++;
    if (!strncmp(s + i, "of ", 3)) i += 3; /* "couple of minutes" */
    static const struct {
        const char *unit;
        double seconds;
    } units[] = {{"hour", 3600}, {"hr", 3600}, {"minute", 60}, {"min", 60}, {"second", 1}, {"sec", 1}};
    for (size_t u = 0; u < sizeof units / sizeof units[0]; u++) {
        size_t len = strlen(units[u].unit);
        if (!strncmp(s + i, units[u].unit, len)) {
            i += (int)len;
            while (isalpha((unsigned char)s[i]))
                i++;
            *used = i;
            return count * units[u].seconds;
        }
    }
    return -1;
}

int svlm_memory_parse_time_query(const char *question, double now, svlm_memory_query *q) {
    if (!question) return 0;
    size_t n = strlen(question);
    char *s = malloc(n + 2);
    if (!s) return 0;
    for (size_t i = 0; i < n; i++)
        s[i] = (char)tolower((unsigned char)question[i]);
    s[n] = s[n + 1] = 0;
    int anchored = 0, used = 0;
    char *p;
    if ((p = strstr(s, "between "))) {
        double a = parse_clock(p + 8, &used);
        char *and = a >= 0 ? strstr(p + 8 + used, " and ") : NULL;
        double b = and? parse_clock(and+5, &used) : -1;
        if (a >= 0 && b >= 0) {
            q->t_from = a < b ? a : b;
            q->t_to = a < b ? b : a;
            anchored = 1;
        }
    }
    static const char *const lasts[] = {"in the last ",   "in the past ",     "during the last ",
                                        "over the last ", "in the previous ", "within the last "};
    for (size_t k = 0; !anchored && k < sizeof lasts / sizeof lasts[0]; k++) {
        if (!(p = strstr(s, lasts[k]))) continue;
        double span = parse_duration(p + strlen(lasts[k]), &used);
        if (span >= 0) {
            q->t_from = now - span;
            q->t_to = now;
            anchored = 1;
        }
    }
    if (!anchored && (p = strstr(s, " ago"))) {
        /* walk back to the start of "N units" */
        char *start = p;
        int words = 0;
        while (start > s && words < 3) {
            start--;
            if (*start == ' ') words++;
        }
        for (char *try = start; try < p && !anchored; try++) {
            if (try != s && try[-1] != ' ') continue;
            double span = parse_duration(try, &used);
            if (span >= 0 && try + used == p) {
                double slack = AT_WINDOW_S + 0.1 * span;
                q->t_from = now - span - slack;
                q->t_to = now - span + slack;
                anchored = 1;
            }
        }
    }
    static const char *const ats[] = {"at ", "around ", "about "};
    for (size_t k = 0; !anchored && k < sizeof ats / sizeof ats[0]; k++) {
        for (p = strstr(s, ats[k]); p && !anchored; p = strstr(p + 1, ats[k])) {
            if (p != s && isalpha((unsigned char)p[-1])) continue;
            double t = parse_clock(p + strlen(ats[k]), &used);
            if (t >= 0) {
                q->t_from = t - AT_WINDOW_S;
                q->t_to = t + AT_WINDOW_S;
                anchored = 1;
            }
        }
    }
    /* "first" and what asks for the same: the earliest relevant entries ("at the start", "in the
     * beginning", "earliest"), whole words only */
    static const char *const earliest[] = {"first", "the start", "the beginning", "earliest"};
    for (size_t k = 0; !q->first && k < sizeof earliest / sizeof earliest[0]; k++) {
        const size_t n = strlen(earliest[k]);
        for (p = strstr(s, earliest[k]); p; p = strstr(p + 1, earliest[k]))
            if ((p == s || !isalpha((unsigned char)p[-1])) && !isalpha((unsigned char)p[n])) {
                q->first = 1;
                anchored = 1;
                break;
            }
    }
    free(s);
    return anchored;
}
