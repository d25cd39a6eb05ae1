/*
 * The engine's ingest lane with frames of several streams encoded as one batch
 * (svlm_engine_params.ingest_batch, the default on a GPU), on the CPU with the vision-tiny models
 * (SVLM_TEST_DATA): the same frames pushed to three streams with batches of 1 and of 3 must give
 * every stream the same frames and tokens of each kind, answers to questions on the streams, no
 * drops, and batches that did form, the next one preprocessed while one ran; with token compression
 * too (each frame the same path, patches recomputed and tokens kept in batches as one at a time); a
 * stream removed while its
 * frames queue leaves the others whole; a flood of questions runs at most max_active answers at once and
 * answers them all, also when the device has room for only two of them; and one stream's burst of questions
 * does not make another stream's question wait for all of it.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llm/llama.h"
#include "pipeline/source_backend.h"
#include "pipeline/stream_engine.h"
#include "test.h"
#include "test_tiny_models.h"
#include "vision/image.h"
#include "vision/mmproj.h"

enum { N_STREAMS = 3, N_FRAMES = 4, W = 96, H = 64 };

/* Frame k of stream s (allocated): a gradient with a box that moves with k, in a colour of s. */
static void draw_frame(svlm_frame *f, int s, int k) {
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            uint8_t *p = f->data + (size_t)y * f->stride + (size_t)x * 3;
            int box = x >= 10 + 12 * k && x < 30 + 12 * k && y >= 20 && y < 40;
            p[0] = (uint8_t)(box ? 60 * s + 40 : x * 2);
            p[1] = (uint8_t)(box ? 200 - 50 * s : y * 3);
            p[2] = (uint8_t)((x + y + 37 * s) & 255);
        }
    f->pts = 0.5 * k;
}

static void make_frame(svlm_frame *f, int s, int k) {
    svlm_err err = {0};
    REQUIRE(svlm_frame_alloc(f, W, H, &err) == SVLM_OK, "%s", err.msg);
    draw_frame(f, s, k);
}

typedef struct answers {
    int done, ok;
    int closed; /* gated_token: 1 holds every answer at its first token until the test opens it */
} answers;

/* Holds an answer at its token while a->closed: the answer lane waits there, so that questions
 * asked meanwhile all find it running (the null backend answers faster than a burst is asked). */
static int gated_token(void *user, int32_t id, const char *piece, size_t len) {
    (void)id, (void)piece, (void)len;
    answers *a = user;
    while (__atomic_load_n(&a->closed, __ATOMIC_SEQ_CST)) {
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
    return 0;
}

static void on_done(void *user, uint64_t qid, svlm_status st, const char *answer,
                    const svlm_answer_metrics *am, const char *err_msg) {
    (void)qid, (void)answer, (void)am, (void)err_msg;
    answers *a = user;
    __atomic_add_fetch(&a->done, 1, __ATOMIC_SEQ_CST);
    if (st == SVLM_OK) __atomic_add_fetch(&a->ok, 1, __ATOMIC_SEQ_CST);
}

typedef struct run_result {
    svlm_stream_metrics sm[N_STREAMS];
    svlm_engine_metrics em;
    answers ans;
} run_result;

static void run(svlm_llama *m, const svlm_mmproj *mp, int batch, int remove_middle, int with_stc,
                run_result *r) {
    svlm_err err = {0};
    svlm_stc_controls stc;
    svlm_stc_controls_default(&stc);
    stc.enabled = with_stc;
    svlm_engine_params ep = {
        .frame_queue = N_FRAMES, .max_streams = N_STREAMS, .ingest_batch = batch, .stc = &stc};
    svlm_engine *e = NULL;
    REQUIRE(svlm_engine_create(m, mp, &ep, &e, &err) == SVLM_OK, "%s", err.msg);
    svlm_stream *s[N_STREAMS];
    int sid[N_STREAMS];
    svlm_stream_params sp = tiny_stream_params(mp, 8, 64);
    for (int i = 0; i < N_STREAMS; i++)
        REQUIRE(svlm_engine_open_stream(e, &sp, "You watch a camera.", &s[i], &sid[i], &err) == SVLM_OK, "%s",
                err.msg);
    /* all frames queued first (the lane may already take some): batches form when it falls behind */
    for (int k = 0; k < N_FRAMES; k++)
        for (int i = 0; i < N_STREAMS; i++) {
            svlm_frame f;
            make_frame(&f, i, k);
            REQUIRE(svlm_engine_push_frame(e, sid[i], &f, 1, &err) == SVLM_OK, "%s", err.msg);
        }
    if (remove_middle) svlm_engine_remove_stream(e, sid[1]);
    svlm_engine_drain(e);
    memset(r, 0, sizeof *r);
    for (int i = 0; i < N_STREAMS; i++) {
        if (remove_middle && i == 1) continue;
        svlm_ask_opts o = {.max_tokens = 4};
        REQUIRE(svlm_engine_ask(e, sid[i], "What moves?", &o, 1, NULL, on_done, &r->ans, NULL, &err) ==
                    SVLM_OK,
                "%s", err.msg);
    }
    svlm_engine_drain(e);
    svlm_engine_metrics_get(e, &r->em);
    svlm_engine_stop(e);
    for (int i = 0; i < N_STREAMS; i++) {
        svlm_stream_metrics_get(s[i], &r->sm[i]);
        svlm_stream_free(s[i]);
    }
    svlm_engine_free(e);
}

/* An engine without token compression (on the CPU, with the answer lane's limits given) and
 * n_streams streams of the vision-tiny shape, each with text_tokens of text window. */
static svlm_engine *answer_engine_opts(svlm_llama *m, const svlm_mmproj *mp, int max_active, int decode_batch,
                                       int text_tokens, int n_streams, int join_piece, svlm_stream **s,
                                       int *sid) {
    svlm_err err = {0};
    svlm_stc_controls stc;
    svlm_stc_controls_default(&stc);
    stc.enabled = 0; /* copied by the engine */
    svlm_engine_params ep = {.max_streams = n_streams,
                             .max_active = max_active,
                             .decode_batch = decode_batch,
                             .stc = &stc,
                             .join_piece_tokens = join_piece};
    svlm_engine *e = NULL;
    REQUIRE(svlm_engine_create(m, mp, &ep, &e, &err) == SVLM_OK, "%s", err.msg);
    svlm_stream_params sp = tiny_stream_params(mp, 4, text_tokens);
    for (int i = 0; i < n_streams; i++)
        REQUIRE(svlm_engine_open_stream(e, &sp, "You watch a camera.", &s[i], &sid[i], &err) == SVLM_OK, "%s",
                err.msg);
    return e;
}

static svlm_engine *answer_engine(svlm_llama *m, const svlm_mmproj *mp, int max_active, int decode_batch,
                                  int text_tokens, int n_streams, svlm_stream **s, int *sid) {
    return answer_engine_opts(m, mp, max_active, decode_batch, text_tokens, n_streams, 0, s, sid);
}

/* A flood of questions on one stream: at most max_active answers run at once (each holds a
 * context), and every question is answered. */
static void flood(svlm_llama *m, const svlm_mmproj *mp) {
    enum { N_Q = 40, MAX_ACTIVE = 4 };
    svlm_err err = {0};
    svlm_stream *s = NULL;
    int sid = 0;
    svlm_engine *e = answer_engine(m, mp, MAX_ACTIVE, 3, 64, 1, &s, &sid);
    svlm_frame f;
    make_frame(&f, 0, 0);
    REQUIRE(svlm_engine_push_frame(e, sid, &f, 1, &err) == SVLM_OK, "%s", err.msg);
    answers ans = {0};
    for (int i = 0; i < N_Q; i++) {
        svlm_ask_opts o = {.max_tokens = 6};
        REQUIRE(svlm_engine_ask(e, sid, "What moves?", &o, 0, NULL, on_done, &ans, NULL, &err) == SVLM_OK,
                "%s", err.msg);
    }
    int most = 0;
    while (__atomic_load_n(&ans.done, __ATOMIC_SEQ_CST) < N_Q) {
        svlm_engine_metrics em;
        svlm_engine_metrics_get(e, &em);
        most = em.active_answers > most ? em.active_answers : most;
        struct timespec ts = {0, 200000};
        nanosleep(&ts, NULL);
    }
    svlm_engine_drain(e);
    CHECK(ans.ok == N_Q, "a flood of %d questions: %d answered", N_Q, ans.ok);
    CHECK(most <= MAX_ACTIVE, "%d answers ran at once, max_active %d", most, MAX_ACTIVE);
    printf("a flood of %d questions: all answered, at most %d of them running at once (max_active %d)\n", N_Q,
           most, MAX_ACTIVE);
    svlm_engine_stop(e);
    svlm_stream_free(s);
    svlm_engine_free(e);
}

/* on_done of failed_frame's questions: queues a frame that fails before its prefill (wider than an
 * image may be) on the answered stream, before the engine marks the turn as waiting to be joined. */
typedef struct bad_frame_ctx {
    svlm_engine *e;
    int sid;
    answers ans;
} bad_frame_ctx;

static void push_bad_frame(void *user, uint64_t qid, svlm_status st, const char *answer,
                           const svlm_answer_metrics *am, const char *err_msg) {
    bad_frame_ctx *c = user;
    svlm_err err = {0};
    svlm_frame f;
    make_frame(&f, 0, 0);
    f.width = SVLM_IMAGE_MAX_SIDE + 1; /* (the image's check fails before its pixels are read) */
    CHECK(svlm_engine_push_frame(c->e, c->sid, &f, 0, &err) == SVLM_OK, "%s", err.msg);
    on_done(&c->ans, qid, st, answer, am, err_msg);
}

/* A frame that fails before its prefill (which joins the stream's answered turns first) does not
 * leave those turns waiting for the next frame: while another stream's frames keep the ingest lane
 * busy, each answer of stream 0 ends with a failing frame queued on it; after the drain every
 * answered turn has joined. */
static void failed_frame(svlm_llama *m, const svlm_mmproj *mp) {
    enum { N_Q = 3 };
    svlm_err err = {0};
    svlm_stream *s[2] = {0};
    int sid[2];
    svlm_engine *e = answer_engine(m, mp, 4, 4, 1024, 2, s, sid);
    bad_frame_ctx c = {e, sid[0], {0}};
    svlm_frame f;
    make_frame(&f, 0, 0);
    REQUIRE(svlm_engine_push_frame(e, sid[0], &f, 1, &err) == SVLM_OK, "%s", err.msg);
    svlm_engine_drain(e);
    for (int q = 0, k = 0; q < N_Q; q++) {
        svlm_ask_opts o = {.max_tokens = 4};
        REQUIRE(svlm_engine_ask(e, sid[0], "What moves?", &o, 0, NULL, push_bad_frame, &c, NULL, &err) ==
                    SVLM_OK,
                "%s", err.msg);
        while (__atomic_load_n(&c.ans.done, __ATOMIC_SEQ_CST) <= q) { /* stream 1 keeps the lane busy */
            make_frame(&f, 1, k++ % 8);
            REQUIRE(svlm_engine_push_frame(e, sid[1], &f, 1, &err) == SVLM_OK, "%s", err.msg);
        }
    }
    svlm_engine_drain(e);
    svlm_stream_metrics sm;
    svlm_stream_metrics_get(s[0], &sm);
    CHECK(c.ans.ok == N_Q && sm.answers_joined == N_Q && sm.frames_dropped == N_Q,
          "failing frames after answers: %d of %d answered, %lld joined, %lld frames dropped", c.ans.ok, N_Q,
          (long long)sm.answers_joined, (long long)sm.frames_dropped);
    printf("a frame failing before its prefill: %lld of %d answered turns joined after the drain\n",
           (long long)sm.answers_joined, N_Q);
    svlm_engine_stop(e);
    for (int i = 0; i < 2; i++)
        svlm_stream_free(s[i]);
    svlm_engine_free(e);
}

/* Answered turns on several streams at once, in pieces of one token (one turn a piece) between
 * frames: after the drain every answered turn has joined its stream (the ingest lane joins a piece
 * of one stream a pass, streams in turn, and comes back for what is left). */
static void joins_on_streams(svlm_llama *m, const svlm_mmproj *mp) {
    enum { N_S = 3, N_Q = 6 };
    svlm_err err = {0};
    svlm_stream *s[N_S] = {0};
    int sid[N_S];
    svlm_engine *e = answer_engine_opts(m, mp, 8, 8, 1024, N_S, 1, s, sid);
    answers ans[N_S] = {{0}};
    for (int i = 0; i < N_S; i++) {
        svlm_frame f;
        make_frame(&f, i, 0);
        REQUIRE(svlm_engine_push_frame(e, sid[i], &f, 1, &err) == SVLM_OK, "%s", err.msg);
    }
    for (int q = 0; q < N_Q; q++)
        for (int i = 0; i < N_S; i++) {
            svlm_ask_opts o = {.max_tokens = 48};
            REQUIRE(svlm_engine_ask(e, sid[i], "Tell me about the moving box.", &o, 0, NULL, on_done, &ans[i],
                                    NULL, &err) == SVLM_OK,
                    "%s", err.msg);
        }
    /* frames arrive meanwhile: a stream's frame first joins all of its waiting turns, the lane
     * joins the rest a piece at a time when no frame waits */
    for (int k = 1; k <= 8; k++)
        for (int i = 0; i < N_S; i++) {
            svlm_frame f;
            make_frame(&f, i, k);
            REQUIRE(svlm_engine_push_frame(e, sid[i], &f, 1, &err) == SVLM_OK, "%s", err.msg);
        }
    svlm_engine_drain(e);
    int joined = 0;
    for (int i = 0; i < N_S; i++) {
        svlm_stream_metrics sm;
        svlm_stream_metrics_get(s[i], &sm);
        CHECK(ans[i].ok == N_Q && sm.answers_joined == ans[i].ok,
              "stream %d: %d of %d answered, %lld turns joined after the drain", i, ans[i].ok, N_Q,
              (long long)sm.answers_joined);
        joined += (int)sm.answers_joined;
    }
    printf("joins on %d streams: %d answered turns, all joined after the drain\n", N_S, joined);
    svlm_engine_stop(e);
    for (int i = 0; i < N_S; i++)
        svlm_stream_free(s[i]);
    svlm_engine_free(e);
}

/* A device too small for every answer's context (the null backend with SVLM_NULL_DEVICE_MIB):
 * the questions that find no memory wait for a running answer to end instead of failing, and all
 * are answered. */
static void device_full(svlm_llama *m, const svlm_mmproj *mp) {
    enum { N_Q = 8 };
    svlm_err err = {0};
    svlm_stream *s = NULL;
    int sid = 0;
    const char *backend_was = getenv("SVLM_BACKEND");
    char *restore = backend_was ? strdup(backend_was) : NULL;
    REQUIRE(setenv("SVLM_BACKEND", "null", 1) == 0 && unsetenv("SVLM_NULL_DEVICE_MIB") == 0, "setenv");
    /* what the engine and its stream hold once a frame went through, and one answer's context */
    svlm_engine *e = answer_engine(m, mp, N_Q, 4, 64, 1, &s, &sid);
    svlm_frame f;
    make_frame(&f, 0, 0);
    REQUIRE(svlm_engine_push_frame(e, sid, &f, 1, &err) == SVLM_OK, "%s", err.msg);
    svlm_engine_drain(e);
    svlm_kernels *k = svlm_engine_ingest_kernels(e);
    size_t base = 0, with_ctx = 0, total = 0;
    svlm_llama_ctx *c = NULL;
    REQUIRE(svlm_kernels_device_memory(k, &base, &total), "the null backend counts its blocks");
    REQUIRE(svlm_llama_ctx_create(m, k, svlm_stream_ctx_size(s), SVLM_F32, &c, &err) == SVLM_OK &&
                svlm_llama_ctx_reserve_greedy(c, &err) == SVLM_OK,
            "%s", err.msg);
    svlm_kernels_device_memory(k, &with_ctx, &total);
    svlm_llama_ctx_free(c);
    svlm_engine_stop(e);
    svlm_stream_free(s);
    svlm_engine_free(e);
    /* room for two and a half contexts beside them (a tenth of the device stays free) */
    const double cap_mib = ((double)base + 2.5 * (double)(with_ctx - base)) / 0.9 / 1048576.0;
    char v[64];
    snprintf(v, sizeof v, "%.6f", cap_mib);
    REQUIRE(setenv("SVLM_NULL_DEVICE_MIB", v, 1) == 0, "setenv");
    e = answer_engine(m, mp, N_Q, 4, 64, 1, &s, &sid);
    make_frame(&f, 0, 0);
    REQUIRE(svlm_engine_push_frame(e, sid, &f, 1, &err) == SVLM_OK, "%s", err.msg);
    svlm_engine_drain(e);
    /* first with a context's worth held by someone else (room for one answer), then without it:
     * after a second the answers try for more and find room for two */
    void *other = svlm_k_alloc(svlm_engine_ingest_kernels(e), with_ctx - base);
    REQUIRE(other, "the other user's block");
    int most[2] = {0, 0}, ok[2] = {0, 0};
    uint64_t waits[2] = {0, 0};
    for (int round = 0; round < 2; round++) {
        answers ans = {.closed = 1}; /* the first answer waits until all are asked */
        for (int i = 0; i < N_Q; i++) {
            svlm_ask_opts o = {.max_tokens = 6};
            REQUIRE(svlm_engine_ask(e, sid, "What moves?", &o, 0, gated_token, on_done, &ans, NULL, &err) ==
                        SVLM_OK,
                    "%s", err.msg);
        }
        __atomic_store_n(&ans.closed, 0, __ATOMIC_SEQ_CST);
        svlm_engine_drain(e);
        svlm_engine_metrics em;
        svlm_engine_metrics_get(e, &em);
        most[round] = em.active_answers_max;
        waits[round] = em.memory_waits;
        ok[round] = ans.ok;
        if (round == 0) {
            svlm_k_free(svlm_engine_ingest_kernels(e), other);
            struct timespec ts = {1, 200000000};
            nanosleep(&ts, NULL);
        }
    }
    CHECK(ok[0] == N_Q && ok[1] == N_Q, "a nearly full device: %d and %d of %d questions answered", ok[0],
          ok[1], N_Q);
    CHECK(waits[0] > 0 && most[0] == 1, "room for one: %llu waits for memory, %d answers at once",
          (unsigned long long)waits[0], most[0]);
    CHECK(most[1] == 2, "room for two again: %d answers at once", most[1]);
    printf(
        "a device with room for one, then two answers' contexts (%.1f KiB each): %d and %d of %d questions "
        "answered, at most %d then %d at once, %llu starts put off for memory\n",
        (double)(with_ctx - base) / 1024.0, ok[0], ok[1], N_Q, most[0], most[1],
        (unsigned long long)waits[1]);
    svlm_engine_stop(e);
    svlm_stream_free(s);
    svlm_engine_free(e);
    unsetenv("SVLM_NULL_DEVICE_MIB");
    if (restore)
        setenv("SVLM_BACKEND", restore, 1);
    else
        unsetenv("SVLM_BACKEND");
    free(restore);
}

/* Fairness between streams: stream 0 asks 20 questions at once, then stream 1 one; with two
 * answer slots, stream 1's question is taken up as soon as a slot frees, not after the burst. */
typedef struct order_rec {
    int n, order[32], tokens[32];
    int closed; /* gated_order_token holds every answer at its token while set */
} order_rec;
typedef struct tagged {
    order_rec *rec;
    int sid;
} tagged;
static void on_done_order(void *user, uint64_t qid, svlm_status st, const char *answer,
                          const svlm_answer_metrics *am, const char *err_msg) {
    (void)qid, (void)st, (void)answer, (void)err_msg;
    tagged *t = user;
    int i = __atomic_fetch_add(&t->rec->n, 1, __ATOMIC_SEQ_CST);
    if (i < 32) {
        t->rec->order[i] = t->sid;
        t->rec->tokens[i] = am ? am->tokens : 0;
    }
}

/* Holds the answer lane at an answer's token while the record is closed (as gated_token does). */
static int gated_order_token(void *user, int32_t id, const char *piece, size_t len) {
    (void)id, (void)piece, (void)len;
    tagged *t = user;
    while (__atomic_load_n(&t->rec->closed, __ATOMIC_SEQ_CST)) {
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
    }
    return 0;
}

static void burst(svlm_llama *m, const svlm_mmproj *mp) {
    enum { N_Q = 20 };
    svlm_err err = {0};
    svlm_stream *s[2];
    int sid[2];
    svlm_engine *e = answer_engine(m, mp, 2, 2, 64, 2, s, sid);
    order_rec rec = {0};
    tagged tags[2] = {{&rec, 0}, {&rec, 1}};
    svlm_ask_opts o = {.max_tokens = 6};
    for (int i = 0; i < N_Q; i++)
        REQUIRE(svlm_engine_ask(e, sid[0], "What moves?", &o, 0, NULL, on_done_order, &tags[0], NULL, &err) ==
                    SVLM_OK,
                "%s", err.msg);
    REQUIRE(svlm_engine_ask(e, sid[1], "And here?", &o, 0, NULL, on_done_order, &tags[1], NULL, &err) ==
                SVLM_OK,
            "%s", err.msg);
    svlm_engine_drain(e);
    int at = -1;
    for (int i = 0; i < rec.n && i < 32; i++)
        if (rec.order[i] == 1) at = i;
    printf("stream 1's question after a burst of %d on stream 0 ended %d of %d\n", N_Q, at + 1, rec.n);
    CHECK(rec.n == N_Q + 1, "%d of %d questions ended", rec.n, N_Q + 1);
    CHECK(at >= 0 && at < 5, "stream 1's question ended %d of %d: it waited for the other stream's burst",
          at + 1, rec.n);
    svlm_engine_stop(e);
    for (int i = 0; i < 2; i++)
        svlm_stream_free(s[i]);
    svlm_engine_free(e);
}

/* Paces an answer at a millisecond a token (the null backend's answers end too fast to be caught
 * running). */
static int slow_token(void *user, int32_t id, const char *piece, size_t len) {
    (void)user, (void)id, (void)piece, (void)len;
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
    return 0;
}

/* The same once the burst holds the slots: stream 0's long answers are running when stream 1 asks.
 * The last slot is kept for a stream with no answer running, so stream 1's short answer starts at
 * once and ends first (when stream 0 could take every slot it waited for a whole 200-token answer). */
static void burst_running(svlm_llama *m, const svlm_mmproj *mp) {
    enum { N_Q = 6 };
    svlm_err err = {0};
    svlm_stream *s[2];
    int sid[2];
    svlm_engine *e = answer_engine(m, mp, 2, 2, 512, 2, s, sid);
    order_rec rec = {0};
    tagged tags[2] = {{&rec, 0}, {&rec, 1}};
    svlm_ask_opts longer = {.max_tokens = 200}, shorter = {.max_tokens = 3};
    for (int i = 0; i < N_Q; i++)
        REQUIRE(svlm_engine_ask(e, sid[0], "What moves?", &longer, 0, slow_token, on_done_order, &tags[0],
                                NULL, &err) == SVLM_OK,
                "%s", err.msg);
    svlm_engine_metrics em = {0};
    for (int i = 0; i < 20000 && em.active_answers < 1; i++) {
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
        svlm_engine_metrics_get(e, &em);
    }
    /* and the second slot taken if stream 0 may take it (it may not: 20 ms) */
    for (int i = 0; i < 200 && em.active_answers < 2; i++) {
        struct timespec ts = {0, 100000};
        nanosleep(&ts, NULL);
        svlm_engine_metrics_get(e, &em);
    }
    CHECK(em.active_answers >= 1 && __atomic_load_n(&rec.n, __ATOMIC_SEQ_CST) == 0,
          "stream 0's first answer is not running (%d running, %d ended)", em.active_answers, rec.n);
    REQUIRE(svlm_engine_ask(e, sid[1], "And here?", &shorter, 0, NULL, on_done_order, &tags[1], NULL, &err) ==
                SVLM_OK,
            "%s", err.msg);
    svlm_engine_drain(e);
    svlm_engine_metrics_get(e, &em);
    printf("stream 1's 3-token question asked while stream 0's 200-token answers ran: ended %d of %d "
           "(at most %d running at once)\n",
           rec.order[0] == 1   ? 1
           : rec.order[1] == 1 ? 2
                               : 0,
           rec.n, em.active_answers_max);
    CHECK(rec.n == N_Q + 1, "%d of %d questions ended", rec.n, N_Q + 1);
    CHECK(rec.order[0] == 1, "stream 1's question did not end first: it waited for stream 0's answers");
    CHECK(em.active_answers_max <= 2, "%d answers ran at once (max_active 2)", em.active_answers_max);
    /* a question the stream refuses (more tokens than its answer room) counts as failed */
    svlm_ask_opts too_long = {.max_tokens = 100000};
    REQUIRE(svlm_engine_ask(e, sid[1], "And now?", &too_long, 0, NULL, on_done_order, &tags[1], NULL, &err) ==
                SVLM_OK,
            "%s", err.msg);
    svlm_engine_drain(e);
    svlm_engine_metrics_get(e, &em);
    CHECK(em.questions_done == N_Q + 1 && em.questions_failed == 1 && em.questions_cancelled == 0,
          "questions: %lld done, %lld failed, %lld cancelled (expected %d, 1, 0)",
          (long long)em.questions_done, (long long)em.questions_failed, (long long)em.questions_cancelled,
          N_Q + 1);
    svlm_engine_stop(e);
    for (int i = 0; i < 2; i++)
        svlm_stream_free(s[i]);
    svlm_engine_free(e);
}

/* Rotation inside the answer lane: three answers running, batches of two. Two long answers (40
 * tokens) must not hold the batch while a short one (3 tokens) waits after its first token: the
 * short one ends first. */
static void rotation(svlm_llama *m, const svlm_mmproj *mp) {
    svlm_err err = {0};
    svlm_stream *s = NULL;
    int sid = 0;
    svlm_engine *e = answer_engine(m, mp, 3, 2, 128, 1, &s, &sid);
    order_rec rec = {.closed = 1};
    tagged tags[3] = {{&rec, 0}, {&rec, 1}, {&rec, 2}};
    /* the first answer is held at its first token until all three are asked: on a busy machine the
     * asks, one after another, could otherwise land after a long answer had ended (a CI run saw
     * the order 0 2 1: the first one's 120 tokens done before the third ask) */
    const int max_tokens[3] = {120, 120, 3};
    for (int i = 0; i < 3; i++) {
        svlm_ask_opts o = {.max_tokens = max_tokens[i]};
        REQUIRE(svlm_engine_ask(e, sid, "What moves?", &o, 0, gated_order_token, on_done_order, &tags[i],
                                NULL, &err) == SVLM_OK,
                "%s", err.msg);
    }
    __atomic_store_n(&rec.closed, 0, __ATOMIC_SEQ_CST);
    svlm_engine_drain(e);
    printf(
        "two 120-token answers and a 3-token one, batches of 2: they ended in the order %d %d %d (%d, %d, %d "
        "tokens)\n",
        rec.order[0], rec.order[1], rec.order[2], rec.tokens[0], rec.tokens[1], rec.tokens[2]);
    CHECK(rec.n == 3, "%d of 3 questions ended", rec.n);
    /* meaningful when the long ones ran long (a random model could end an answer early) */
    int long_ran = 1;
    for (int i = 0; i < 3; i++)
        if (rec.order[i] != 2) long_ran &= rec.tokens[i] > 8;
    if (long_ran)
        CHECK(rec.order[0] == 2, "the short answer ended %s: the long ones held the batch",
              rec.order[1] == 2 ? "second" : "last");
    svlm_engine_stop(e);
    svlm_stream_free(s);
    svlm_engine_free(e);
}

/* Live frames on two streams without token compression and one with it, batches of 2: the one
 * with it gets its turns too (a batch stops at it; the lane's lookahead takes a batch only when
 * the next stream has no token compression). Before, batches formed ahead kept it waiting. */
typedef struct live_push {
    svlm_engine *e;
    int sid, stream;
    int *stop; /* read and written atomically */
} live_push;

static void *push_live(void *arg) { /* (no REQUIRE here: the test's counters are the main thread's) */
    live_push *lp = arg;
    for (int k = 0; !__atomic_load_n(lp->stop, __ATOMIC_ACQUIRE); k++) {
        svlm_frame f;
        svlm_err err = {0};
        if (svlm_frame_alloc(&f, W, H, &err) != SVLM_OK) break;
        draw_frame(&f, lp->stream, k % 8);
        (void)svlm_engine_push_frame(lp->e, lp->sid, &f, 0, &err); /* a full queue drops its oldest */
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

static void mixed_stc(svlm_llama *m, const svlm_mmproj *mp) {
    svlm_err err = {0};
    svlm_stc_controls off, on;
    svlm_stc_controls_default(&off);
    svlm_stc_controls_default(&on);
    off.enabled = 0;
    on.enabled = 1;
    svlm_engine_params ep = {.frame_queue = 2, .max_streams = 3, .ingest_batch = 2, .stc = &off};
    svlm_engine *e = NULL;
    REQUIRE(svlm_engine_create(m, mp, &ep, &e, &err) == SVLM_OK, "%s", err.msg);
    svlm_stream_params sp = tiny_stream_params(mp, 8, 64);
    svlm_stream *s[3];
    int sid[3];
    for (int i = 0; i < 3; i++)
        REQUIRE(svlm_engine_open_stream_with(e, &sp, "You watch a camera.", i == 2 ? &on : &off, &s[i],
                                             &sid[i], &err) == SVLM_OK,
                "%s", err.msg);
    int stop = 0;
    live_push lp[3];
    pthread_t th[3];
    for (int i = 0; i < 3; i++) {
        lp[i] = (live_push){e, sid[i], i, &stop};
        REQUIRE(pthread_create(&th[i], NULL, push_live, &lp[i]) == 0, "pthread_create");
    }
    struct timespec ts = {1, 500000000};
    nanosleep(&ts, NULL);
    __atomic_store_n(&stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    svlm_engine_drain(e);
    int64_t in[3];
    for (int i = 0; i < 3; i++) {
        svlm_stream_metrics sm;
        svlm_stream_metrics_get(s[i], &sm);
        in[i] = sm.frames_in;
    }
    const int64_t least = in[0] < in[1] ? in[0] : in[1];
    printf(
        "live frames for 1.5 s, batches of 2: %lld and %lld frames ingested without token compression, %lld "
        "with it\n",
        (long long)in[0], (long long)in[1], (long long)in[2]);
    CHECK(least > 0 && in[2] * 10 >= least * 3,
          "the stream with token compression got %lld frames, the others %lld", (long long)in[2],
          (long long)least);
    svlm_engine_stop(e);
    for (int i = 0; i < 3; i++)
        svlm_stream_free(s[i]);
    svlm_engine_free(e);
}

int test_main(void) {
    svlm_llama *m = NULL;
    svlm_mmproj *mp = NULL;
    tiny_models_load(&m, &mp);

    run_result one, three;
    run(m, mp, 1, 0, 0, &one);
    run(m, mp, 3, 0, 0, &three);
    for (int i = 0; i < N_STREAMS; i++) {
        CHECK(one.sm[i].frames_in == N_FRAMES && three.sm[i].frames_in == N_FRAMES,
              "stream %d ingested %lld frames one at a time, %lld in batches (want %d)", i,
              (long long)one.sm[i].frames_in, (long long)three.sm[i].frames_in, N_FRAMES);
        for (int kind = 0; kind < SVLM_KV_N_KINDS; kind++)
            CHECK(one.sm[i].tokens[kind] == three.sm[i].tokens[kind],
                  "stream %d: %d tokens of kind %d one at a time, %d in batches", i, one.sm[i].tokens[kind],
                  kind, three.sm[i].tokens[kind]);
    }
    CHECK(one.em.frames_done == N_STREAMS * N_FRAMES && three.em.frames_done == N_STREAMS * N_FRAMES,
          "frames done: %lld and %lld", (long long)one.em.frames_done, (long long)three.em.frames_done);
    CHECK(one.em.frames_dropped == 0 && three.em.frames_dropped == 0, "dropped frames");
    CHECK(one.em.ingest_batches == 0, "batches of 1 made %llu batches",
          (unsigned long long)one.em.ingest_batches);
    CHECK(three.em.ingest_batches > 0 && three.em.ingest_batch_frames <= 3 * three.em.ingest_batches,
          "batches of 3: %llu batches of %llu frames", (unsigned long long)three.em.ingest_batches,
          (unsigned long long)three.em.ingest_batch_frames);
    CHECK(one.ans.ok == N_STREAMS && three.ans.ok == N_STREAMS, "answers: %d and %d of %d", one.ans.ok,
          three.ans.ok, N_STREAMS);
    /* every frame is queued before the lane is far: after the first batch the next is taken and
     * preprocessed while one runs */
    CHECK(three.em.ingest_batches < 2 || three.em.ingest_batches_ahead >= 1,
          "%llu batches, none preprocessed while the one before ran",
          (unsigned long long)three.em.ingest_batches);
    printf(
        "3 streams x %d frames: one at a time and in batches of 3 (%llu batches, %llu frames, %llu of them "
        "preprocessed while the one before ran) ingest the same frames and tokens; %d + %d answers\n",
        N_FRAMES, (unsigned long long)three.em.ingest_batches,
        (unsigned long long)three.em.ingest_batch_frames, (unsigned long long)three.em.ingest_batches_ahead,
        one.ans.ok, three.ans.ok);

    /* with token compression: the batch's streams planned apart, encoded together (svlm_stc_run) */
    run(m, mp, 1, 0, 1, &one);
    run(m, mp, 3, 0, 1, &three);
    for (int i = 0; i < N_STREAMS; i++) {
        const svlm_stream_metrics *a = &one.sm[i], *b = &three.sm[i];
        CHECK(a->frames_in == N_FRAMES && b->frames_in == N_FRAMES,
              "token compression: stream %d ingested %lld frames one at a time, %lld in batches", i,
              (long long)a->frames_in, (long long)b->frames_in);
        CHECK(
            a->stc_frames == N_FRAMES && b->stc_frames == N_FRAMES &&
                a->stc_recomputed == b->stc_recomputed && a->stc_reused == b->stc_reused &&
                a->stc_partial == b->stc_partial && a->stc_kept == b->stc_kept,
            "token compression, stream %d: one at a time %lld frames, %lld patches recomputed, %lld reused, "
            "%lld partial, %lld tokens kept; in batches %lld, %lld, %lld, %lld, %lld",
            i, (long long)a->stc_frames, (long long)a->stc_recomputed, (long long)a->stc_reused,
            (long long)a->stc_partial, (long long)a->stc_kept, (long long)b->stc_frames,
            (long long)b->stc_recomputed, (long long)b->stc_reused, (long long)b->stc_partial,
            (long long)b->stc_kept);
        for (int kind = 0; kind < SVLM_KV_N_KINDS; kind++)
            CHECK(a->tokens[kind] == b->tokens[kind],
                  "token compression, stream %d: %d tokens of kind %d one at a time, %d in batches", i,
                  a->tokens[kind], kind, b->tokens[kind]);
    }
    CHECK(three.em.ingest_batches > 0, "token compression: no batch of 3 formed");
    CHECK(one.ans.ok == N_STREAMS && three.ans.ok == N_STREAMS, "token compression: answers %d and %d of %d",
          one.ans.ok, three.ans.ok, N_STREAMS);
    printf(
        "with token compression: %llu batches of %llu frames; %lld of %lld patches recomputed, %lld tokens "
        "kept in stream 0, as one at a time\n",
        (unsigned long long)three.em.ingest_batches, (unsigned long long)three.em.ingest_batch_frames,
        (long long)three.sm[0].stc_recomputed, (long long)three.sm[0].stc_patches,
        (long long)three.sm[0].stc_kept);

    run_result rm;
    for (int with_stc = 0; with_stc < 2; with_stc++) { /* (its frames may be in a batch taken ahead) */
        run(m, mp, 3, 1, with_stc, &rm);
        CHECK(
            rm.sm[0].frames_in == N_FRAMES && rm.sm[2].frames_in == N_FRAMES,
            "with the middle stream removed (token compression %d), the others ingested %lld and %lld frames",
            with_stc, (long long)rm.sm[0].frames_in, (long long)rm.sm[2].frames_in);
        CHECK(rm.ans.ok == 2, "answers with the middle stream removed (token compression %d): %d", with_stc,
              rm.ans.ok);
    }

    flood(m, mp);
    device_full(m, mp);
    burst(m, mp);
    burst_running(m, mp);
    rotation(m, mp);
    joins_on_streams(m, mp);
    failed_frame(m, mp);
    mixed_stc(m, mp);

    svlm_mmproj_free(mp);
    svlm_llama_free(m);
    return 0;
}
