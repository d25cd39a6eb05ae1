/*
 * The KV pool's page promise with pinned forks. A question's fork keeps every page it shares with
 * its stream after the stream evicts them, so each fork may come to hold a whole window of pages
 * of its own. Part 1 forks a stream "pinned" (the fork lives on, answers, and the stream moves a
 * whole window ahead) until the pool refuses: the refusal is SVLM_E_LIMIT at the fork and changes
 * nothing, the stream's own appends never fail, no page is shared wrongly (every row reads back
 * what its writer stored), and the pages in use never pass the pool's bound. (Before, every fork
 * was taken and the stream's next frames found the pool full.) Part 2: a fork whose window grows
 * past the promise is refused the same way. Part 3: short spans of another kind between frames
 * never keep a frame's page alive (pages hold one kind each), so a sequence holds at most its
 * window of pages, and the pool's pages in use are what it holds. (Before, each short turn
 * kept pages alive once the frames around it had gone: 7 pages held for a window of 5.)
 */
#include <stdlib.h>
#include <string.h>

#include "llm/kv_cache.h"
#include "test.h"

enum { B = 4, DIM = 2, SINKS = 4, VISION = 16, TEXT = 8, ANSWER = 8, FRAME = 4 };

/* pages of a window: each kind's budget in whole pages plus a part-filled one */
static int window_pages(int sinks, int vision, int text) {
    svlm_kv_policy pol = {{sinks, vision, text}, 0};
    int want = (sinks ? (sinks + B - 1) / B + 1 : 0) + (vision + B - 1) / B + 1 + (text + B - 1) / B + 1;
    CHECK(svlm_kv_policy_pages(&pol, B) == want, "svlm_kv_policy_pages: %d, want %d",
          svlm_kv_policy_pages(&pol, B), want);
    return want;
}

static svlm_kv_pool *new_pool(int max_pages) {
    svlm_kv_pool_params p = {
        .n_layer = 1, .kv_dim = DIM, .type = SVLM_F32, .page_tokens = B, .max_pages = max_pages};
    svlm_kv_pool *pool = NULL;
    svlm_err err = {0};
    REQUIRE(svlm_kv_pool_create(&p, &pool, &err) == SVLM_OK, "%s", err.msg);
    return pool;
}

static svlm_kv_seq *new_stream(svlm_kv_pool *pool) {
    /* stream positions (no re-assignment): a row's value names its position and its writer */
    svlm_kv_policy pol = {{SINKS, VISION, TEXT}, 0};
    svlm_kv_seq *s = NULL;
    svlm_err err = {0};
    REQUIRE(svlm_kv_seq_create(pool, &pol, &s, &err) == SVLM_OK, "%s", err.msg);
    return s;
}

static float row_value(const svlm_kv_seq *s, int idx, int writer) {
    return (float)(svlm_kv_seq_pos(s, idx) * 100 + writer);
}

/* Appends a span of n tokens and writes its rows; returns the status. */
static svlm_status put(svlm_kv_seq *s, svlm_kv_kind kind, int n, int writer) {
    svlm_err err = {0};
    int first = -1;
    svlm_status st = svlm_kv_seq_append(s, kind, 0, n, &first, &err);
    if (st) return st;
    float k[FRAME * DIM] = {0}, v[FRAME * DIM] = {0};
    for (int i = 0; i < n; i++)
        for (int d = 0; d < DIM; d++)
            k[i * DIM + d] = row_value(s, first + i, writer), v[i * DIM + d] = -k[i * DIM + d];
    svlm_kv_seq_write(s, 0, first, n, k, v);
    return SVLM_OK;
}

/* Every row of tokens [0, n_from) was written by `from`, the rest by `own`. */
static int rows_intact(const svlm_kv_seq *s, int n_from, int from, int own) {
    for (int i = 0; i < svlm_kv_seq_len(s); i++) {
        const float *k = svlm_kv_seq_k_row(s, 0, i), *v = svlm_kv_seq_v_row(s, 0, i);
        float want = row_value(s, i, i < n_from ? from : own);
        if (k[0] != want || k[DIM - 1] != want || v[0] != -want) return 0;
    }
    return 1;
}

/* The stream moves a whole vision window and a text turn ahead: what a fork shares now is left to
 * the fork alone. Returns the appends refused. */
static int advance(svlm_kv_seq *s) {
    int refused = 0;
    for (int f = 0; f < VISION / FRAME + 1; f++)
        refused += put(s, SVLM_KV_VISION, FRAME, 0) != SVLM_OK;
    refused += put(s, SVLM_KV_TEXT, TEXT / 2, 0) != SVLM_OK;
    return refused;
}

typedef struct fork_rec {
    svlm_kv_seq *seq;
    int n_from; /* tokens it had from the stream */
} fork_rec;

/* A question's fork: its text window grows by the answer room and the answer is decoded. */
static svlm_status answer_fork(svlm_kv_seq *stream, int writer, fork_rec *out, svlm_err *err) {
    svlm_status st = svlm_kv_seq_fork(stream, &out->seq, err);
    if (st) return st;
    out->n_from = svlm_kv_seq_len(stream);
    svlm_kv_policy grown = {{SINKS, VISION, TEXT + ANSWER}, 0};
    if ((st = svlm_kv_seq_set_policy(out->seq, &grown, err))) return st;
    for (int t = 0; t < ANSWER && !st; t++)
        st = put(out->seq, SVLM_KV_TEXT, 1, writer);
    return st;
}

static void test_pinned_forks(void) {
    const int stream_share = window_pages(SINKS, VISION, TEXT);
    const int fork_share = window_pages(SINKS, VISION, TEXT + ANSWER);
    const int max_pages = stream_share + 2 * fork_share; /* room for two answers at once */
    svlm_kv_pool *pool = new_pool(max_pages);
    svlm_kv_seq *s = new_stream(pool);
    int refused = put(s, SVLM_KV_SINK, SINKS, 0) != SVLM_OK;
    refused += advance(s);
    CHECK(svlm_kv_pool_pages_promised(pool) == stream_share,
          "a stream promised %d pages, its window needs %d", svlm_kv_pool_pages_promised(pool), stream_share);

    fork_rec forks[8] = {0};
    int n_forks = 0, most_in_use = 0;
    svlm_status no_room = SVLM_OK;
    svlm_err err = {0};
    while (n_forks < 8) {
        int in_use = svlm_kv_pool_pages_in_use(pool), promised = svlm_kv_pool_pages_promised(pool);
        fork_rec f = {0};
        svlm_status st = answer_fork(s, 1 + n_forks, &f, &err);
        if (st) { /* refused at the fork: nothing taken, nothing promised */
            no_room = st;
            CHECK(!f.seq && svlm_kv_pool_pages_in_use(pool) == in_use &&
                      svlm_kv_pool_pages_promised(pool) == promised,
                  "a refused fork left a sequence (%p), %d -> %d pages in use, %d -> %d promised",
                  (void *)f.seq, in_use, svlm_kv_pool_pages_in_use(pool), promised,
                  svlm_kv_pool_pages_promised(pool));
            svlm_kv_seq_free(f.seq);
            break;
        }
        forks[n_forks++] = f;
        refused += advance(s); /* the pinned fork keeps the old window */
        int now = svlm_kv_pool_pages_in_use(pool);
        most_in_use = now > most_in_use ? now : most_in_use;
        CHECK(svlm_kv_pool_pages_promised(pool) <= max_pages, "%d of %d pages promised",
              svlm_kv_pool_pages_promised(pool), max_pages);
    }
    CHECK(n_forks == 2, "%d pinned forks taken, the pool promises room for 2", n_forks);
    CHECK(no_room == SVLM_E_LIMIT && strstr(err.msg, "KV pool full"),
          "the fork past the promise: status %d '%s'", no_room, err.msg);
    CHECK(refused == 0, "the stream's own appends were refused %d times", refused);
    CHECK(most_in_use <= max_pages, "%d pages in use, the pool has %d", most_in_use, max_pages);
    /* every fork still reads what was stored: no pinned page was handed out again */
    for (int i = 0; i < n_forks; i++)
        CHECK(rows_intact(forks[i].seq, forks[i].n_from, 0, 1 + i), "fork %d's rows changed", i);
    CHECK(rows_intact(s, svlm_kv_seq_len(s), 0, 0), "the stream's rows changed");

    /* an answer that ends gives its promise back: the next question forks */
    svlm_kv_seq_free(forks[0].seq);
    fork_rec again = {0};
    CHECK(answer_fork(s, 9, &again, &err) == SVLM_OK, "a fork after one was freed: %s", err.msg);
    CHECK(advance(s) == 0 && rows_intact(again.seq, again.n_from, 0, 9), "the new fork or the stream");
    svlm_kv_seq_free(again.seq);
    for (int i = 1; i < n_forks; i++)
        svlm_kv_seq_free(forks[i].seq);
    svlm_kv_seq_free(s);
    CHECK(svlm_kv_pool_pages_in_use(pool) == 0 && svlm_kv_pool_pages_promised(pool) == 0,
          "%d pages in use and %d promised with no sequence", svlm_kv_pool_pages_in_use(pool),
          svlm_kv_pool_pages_promised(pool));
    svlm_kv_pool_free(pool);
}

/* The promise is checked when a fork's window grows too; a refused growth changes nothing. */
static void test_growth_refused(void) {
    const int stream_share = window_pages(SINKS, VISION, TEXT);
    svlm_kv_pool *pool = new_pool(2 * stream_share + 1); /* a fork fits, its answer room does not */
    svlm_kv_seq *s = new_stream(pool), *f = NULL;
    CHECK(put(s, SVLM_KV_SINK, SINKS, 0) == SVLM_OK && advance(s) == 0, "filling the stream");
    svlm_err err = {0};
    REQUIRE(svlm_kv_seq_fork(s, &f, &err) == SVLM_OK, "%s", err.msg);
    const int cap = svlm_kv_seq_capacity(f);
    svlm_kv_policy grown = {{SINKS, VISION, TEXT + ANSWER}, 0};
    CHECK(svlm_kv_seq_set_policy(f, &grown, &err) == SVLM_E_LIMIT && strstr(err.msg, "KV pool full"),
          "a window past the promise was taken: '%s'", err.msg);
    CHECK(svlm_kv_seq_capacity(f) == cap && svlm_kv_pool_pages_promised(pool) == 2 * stream_share,
          "the refused growth changed the capacity (%d) or the promise (%d)", svlm_kv_seq_capacity(f),
          svlm_kv_pool_pages_promised(pool));
    svlm_kv_policy smaller = {{SINKS, VISION, TEXT + 2}, 0}; /* one more page fits */
    CHECK(svlm_kv_seq_set_policy(f, &smaller, &err) == SVLM_OK, "a growth that fits: %s", err.msg);
    svlm_kv_seq_free(f);
    svlm_kv_seq_free(s);
    CHECK(svlm_kv_pool_pages_promised(pool) == 0, "%d pages promised with no sequence",
          svlm_kv_pool_pages_promised(pool));
    svlm_kv_pool_free(pool);
}

/* One-token turns between frames (and frames between turns): once the frames leave, the turns
 * keep none of their pages alive, and the other way round. */
static void test_mixed_spans(void) {
    svlm_kv_pool *pool = new_pool(64);
    svlm_kv_policy pol = {{0, FRAME, TEXT}, 0};
    svlm_kv_seq *s = NULL;
    svlm_err err = {0};
    REQUIRE(svlm_kv_seq_create(pool, &pol, &s, &err) == SVLM_OK, "%s", err.msg);
    const int window = window_pages(0, FRAME, TEXT);
    int most = 0;
    for (int i = 0; i < 4 * TEXT; i++) {
        CHECK(put(s, SVLM_KV_TEXT, 1 + i % 2, 0) == SVLM_OK &&
                  put(s, SVLM_KV_VISION, FRAME - i % 3, 0) == SVLM_OK,
              "append %d", i);
        int held = svlm_kv_seq_pages(s);
        most = held > most ? held : most;
        CHECK(svlm_kv_pool_pages_in_use(pool) == held, "holding %d pages, %d in use", held,
              svlm_kv_pool_pages_in_use(pool));
    }
    CHECK(most <= window, "%d pages held, the window's are %d", most, window);
    CHECK(svlm_kv_pool_pages_promised(pool) == window, "%d pages promised, the window's are %d",
          svlm_kv_pool_pages_promised(pool), window);
    CHECK(rows_intact(s, svlm_kv_seq_len(s), 0, 0), "rows changed");
    /* a fork shares the newest pages; each then writes on into pages of its own */
    svlm_kv_seq *f = NULL;
    REQUIRE(svlm_kv_seq_fork(s, &f, &err) == SVLM_OK, "%s", err.msg);
    for (int i = 0; i < 3; i++)
        CHECK(put(f, SVLM_KV_TEXT, 1, 1) == SVLM_OK && put(s, SVLM_KV_TEXT, 1, 0) == SVLM_OK &&
                  put(s, SVLM_KV_VISION, FRAME, 0) == SVLM_OK,
              "appends after the fork");
    /* (the fork's three turns are its newest tokens) */
    CHECK(rows_intact(f, svlm_kv_seq_len(f) - 3, 0, 1) && rows_intact(s, svlm_kv_seq_len(s), 0, 0),
          "rows changed after the fork");
    CHECK(svlm_kv_seq_pages(f) <= window + 1 && svlm_kv_seq_pages(s) <= window,
          "pages held: fork %d, stream %d", svlm_kv_seq_pages(f), svlm_kv_seq_pages(s));
    svlm_kv_seq_free(f);
    svlm_kv_seq_free(s);
    CHECK(svlm_kv_pool_pages_in_use(pool) == 0 && svlm_kv_pool_pages_promised(pool) == 0, "pages left");
    svlm_kv_pool_free(pool);
}

int test_main(void) {
    test_pinned_forks();
    test_growth_refused();
    test_mixed_spans();
    return 0;
}
