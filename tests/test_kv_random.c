/*
 * The paged KV cache against a plain model of it, on random work: appends of every kind and
 * length, forks, frees and grown windows on up to six sequences sharing one pool. After each step
 * every live sequence holds exactly the tokens the model says (oldest spans of a kind evicted
 * first), each row reads back what its writer stored at its position, the pages a sequence holds
 * stay within its window (plus one page a kind after a fork), and the pool's pages in use never
 * pass its bound. A refused append or fork must change nothing.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llm/kv_cache.h"
#include "test.h"
#include "test_rand.h"

enum { DIM = 2, MAX_SEQS = 6, MAX_TOKENS = 256, MAX_SPANS = 128, STEPS = 6000 };

typedef struct model_seq {
    svlm_kv_seq *seq;
    svlm_kv_policy pol;
    int writer; /* who appends to it: a number no other sequence uses */
    int n, n_spans;
    int64_t pos[MAX_TOKENS];
    int by[MAX_TOKENS];
    svlm_kv_kind span_kind[MAX_SPANS];
    int span_n[MAX_SPANS];
    int count[SVLM_KV_N_KINDS];
    int64_t stream_len;
} model_seq;

static float row_value(int64_t pos, int writer) {
    return (float)(pos * 64 + writer);
}

/* The model's side of an append: the kind's oldest spans leave until the new one fits. */
static void model_append(model_seq *m, svlm_kv_kind kind, int n) {
    for (int si = 0; si < m->n_spans && m->count[kind] + n > m->pol.budget[kind];) {
        if (m->span_kind[si] != kind) {
            si++;
            continue;
        }
        int start = 0;
        for (int j = 0; j < si; j++)
            start += m->span_n[j];
        const int gone = m->span_n[si];
        memmove(m->pos + start, m->pos + start + gone, (size_t)(m->n - start - gone) * sizeof *m->pos);
        memmove(m->by + start, m->by + start + gone, (size_t)(m->n - start - gone) * sizeof *m->by);
        memmove(m->span_kind + si, m->span_kind + si + 1,
                (size_t)(m->n_spans - si - 1) * sizeof *m->span_kind);
        memmove(m->span_n + si, m->span_n + si + 1, (size_t)(m->n_spans - si - 1) * sizeof *m->span_n);
        m->n -= gone;
        m->n_spans--;
        m->count[kind] -= gone;
    }
    for (int i = 0; i < n; i++) {
        m->pos[m->n + i] = m->stream_len + i;
        m->by[m->n + i] = m->writer;
    }
    m->span_kind[m->n_spans] = kind;
    m->span_n[m->n_spans++] = n;
    m->n += n;
    m->count[kind] += n;
    m->stream_len += n;
}

static int check_seq(const model_seq *m, int step) {
    const svlm_kv_seq *s = m->seq;
    int ok = svlm_kv_seq_len(s) == m->n && svlm_kv_seq_n_spans(s) == m->n_spans;
    for (int k = 0; k < SVLM_KV_N_KINDS; k++)
        ok &= svlm_kv_seq_count(s, (svlm_kv_kind)k) == m->count[k];
    for (int i = 0; ok && i < m->n; i++) {
        const float *k = svlm_kv_seq_k_row(s, 0, i), *v = svlm_kv_seq_v_row(s, 0, i);
        const float want = row_value(m->pos[i], m->by[i]);
        ok = svlm_kv_seq_pos(s, i) == m->pos[i] && k[0] == want && k[DIM - 1] == want && v[0] == -want;
    }
    const int window =
        svlm_kv_policy_pages(&m->pol, svlm_kv_pool_params_of(svlm_kv_seq_pool(s))->page_tokens);
    CHECK(ok, "step %d: sequence of writer %d differs from the model (%d tokens, model %d)", step, m->writer,
          svlm_kv_seq_len(s), m->n);
    /* (a fork whose source wrote on into their newest page of a kind starts a page of its own) */
    const int slack = m->writer == 1 ? 0 : SVLM_KV_N_KINDS;
    CHECK(svlm_kv_seq_pages(s) <= window + slack, "step %d: %d pages held, the window's are %d", step,
          svlm_kv_seq_pages(s), window);
    return ok;
}

static void run(uint64_t seed, int page_tokens, int max_pages) {
    svlm_kv_pool_params pp = {
        .n_layer = 1, .kv_dim = DIM, .type = SVLM_F32, .page_tokens = page_tokens, .max_pages = max_pages};
    svlm_kv_pool *pool = NULL;
    svlm_err err = {0};
    REQUIRE(svlm_kv_pool_create(&pp, &pool, &err) == SVLM_OK, "%s", err.msg);
    static model_seq ms[MAX_SEQS];
    memset(ms, 0, sizeof ms);
    int next_writer = 1, appends = 0, refused_appends = 0, forks = 0, refused_forks = 0, most_in_use = 0;
    ms[0].pol = (svlm_kv_policy){{5, 23, 11}, 0};
    ms[0].writer = next_writer++;
    REQUIRE(svlm_kv_seq_create(pool, &ms[0].pol, &ms[0].seq, &err) == SVLM_OK, "%s", err.msg);
    uint64_t r = seed;
    for (int step = 0; step < STEPS; step++) {
        const int op = (int)(test_rand_u64(&r) % 100), i = (int)(test_rand_u64(&r) % MAX_SEQS);
        model_seq *m = &ms[i];
        if (!m->seq) continue;
        if (op < 80) { /* an append: sinks first, then frames and turns of any length */
            svlm_kv_kind kind = m->count[SVLM_KV_SINK] < 3 && m->n_spans < 2 ? SVLM_KV_SINK
                                : op % 2                                     ? SVLM_KV_VISION
                                                                             : SVLM_KV_TEXT;
            const int most = m->pol.budget[kind] - (kind == SVLM_KV_SINK ? m->count[kind] : 0);
            if (most <= 0) continue;
            const int n = 1 + (int)(test_rand_u64(&r) % (uint64_t)most);
            int first = -1;
            const int len_before = svlm_kv_seq_len(m->seq);
            appends++;
            svlm_status st = svlm_kv_seq_append(m->seq, kind, step, n, &first, &err);
            if (st) {
                refused_appends++;
                CHECK(st == SVLM_E_LIMIT && svlm_kv_seq_len(m->seq) == len_before,
                      "step %d: a refused append (%d '%s') changed the sequence", step, st, err.msg);
            } else {
                model_append(m, kind, n);
                CHECK(first == m->n - n, "step %d: first %d, model %d", step, first, m->n - n);
                float k[64 * DIM], v[64 * DIM];
                for (int t = 0; t < n; t++)
                    for (int d = 0; d < DIM; d++)
                        k[t * DIM + d] = row_value(m->pos[first + t], m->writer),
                                    v[t * DIM + d] = -k[t * DIM + d];
                svlm_kv_seq_write(m->seq, 0, first, n, k, v);
            }
        } else if (op < 90) { /* a fork into a free place */
            int j = 0;
            while (j < MAX_SEQS && ms[j].seq)
                j++;
            if (j == MAX_SEQS) continue;
            forks++;
            svlm_kv_seq *f = NULL;
            const int promised = svlm_kv_pool_pages_promised(pool);
            if (svlm_kv_seq_fork(m->seq, &f, &err)) {
                refused_forks++;
                CHECK(!f && svlm_kv_pool_pages_promised(pool) == promised, "step %d: a refused fork", step);
                continue;
            }
            ms[j] = *m;
            ms[j].seq = f;
            ms[j].writer = next_writer++;
            if (op % 2) { /* its dialogue window grows, as a question's does */
                svlm_kv_policy grown = m->pol;
                grown.budget[SVLM_KV_TEXT] += 9;
                if (svlm_kv_seq_set_policy(f, &grown, &err) == SVLM_OK) ms[j].pol = grown;
            }
        } else { /* a sequence ends (the first lives on: it is the stream) */
            if (i == 0) continue;
            svlm_kv_seq_free(m->seq);
            m->seq = NULL;
        }
        int in_use = svlm_kv_pool_pages_in_use(pool);
        most_in_use = in_use > most_in_use ? in_use : most_in_use;
        CHECK(in_use <= max_pages, "step %d: %d pages in use of %d", step, in_use, max_pages);
        for (int j = 0; j < MAX_SEQS; j++)
            if (ms[j].seq && !check_seq(&ms[j], step)) {
                step = STEPS; /* (stop at the first divergence: the rest follows from it) */
                break;
            }
    }
    for (int j = 0; j < MAX_SEQS; j++)
        svlm_kv_seq_free(ms[j].seq);
    CHECK(svlm_kv_pool_pages_in_use(pool) == 0 && svlm_kv_pool_pages_promised(pool) == 0,
          "%d pages in use and %d promised with no sequence", svlm_kv_pool_pages_in_use(pool),
          svlm_kv_pool_pages_promised(pool));
    printf(
        "pages of %d, pool of %d: %d appends (%d refused), %d forks (%d refused), at most %d pages in use\n",
        page_tokens, max_pages, appends, refused_appends, forks, refused_forks, most_in_use);
    svlm_kv_pool_free(pool);
}

int test_main(void) {
    run(0x9e3779b97f4a7c15ull, 4, 200);
    run(0x2545f4914f6cdd1dull, 3, 200);
    run(0x94d049bb133111ebull, 16, 200);
    run(0xbf58476d1ce4e5b9ull, 4, 40); /* a tight pool: forks refused */
    return 0;
}
