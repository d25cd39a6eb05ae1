/*
 * The engine's teardown racing its other calls, with the vision-tiny models (SVLM_TEST_DATA) on the
 * CPU: a few hundred rounds, each an engine with two streams holding queued frames, pinned and
 * unpinned questions and running answers, then two threads let go at once:
 *   remove   one thread removes stream 0 (and frees it as soon as that returns), the other stops
 *   stop     both threads stop the engine
 *   push     one thread keeps pushing (blocking) frames and asking questions, the other stops
 * Every round: each accepted question's done callback ran exactly once, those of a removed stream
 * before remove_stream returned; the engine's counters add up (asked = done + cancelled + failed,
 * pushed = frames done + dropped) and nothing is left queued or running. The ASan and TSan builds
 * run the same rounds for use after free, double joins and unlocked accesses. (Freeing the engine
 * cannot race a removal: the removed stream must be freed before the engine, and only after
 * remove_stream returned.)
 */
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "llm/llama.h"
#include "pipeline/source_backend.h"
#include "pipeline/stream_engine.h"
#include "test.h"
#include "test_tiny_models.h"
#include "vision/mmproj.h"

enum { ROUNDS = 300, W = 96, H = 64, MAX_Q = 256, N_S = 2 };
enum { RACE_REMOVE, RACE_STOP, RACE_PUSH, N_RACES };

typedef struct round_state round_state;

typedef struct qtag {
    round_state *r;
    int stream;
} qtag;

struct round_state {
    svlm_engine *e;
    svlm_stream *s[N_S];
    int sid[N_S], kind;
    unsigned seed;
    int go;                 /* the racing threads start together */
    int asked[N_S];         /* questions accepted, per stream */
    int done[N_S];          /* done callbacks, per stream */
    int calls[MAX_Q + 1];   /* done callbacks, per question id */
    qtag tags[N_S];         /* (user pointers of each stream's questions) */
    int pushed;             /* frames accepted */
    int done_delay_us;      /* each done callback sleeps this long: stop ends questions slowly */
    int early;              /* remove_stream returned before its stream's questions were done */
    int refused_after_stop; /* pushes and asks refused once the engine stopped */
};

static void sleep_us(long us) {
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    nanosleep(&ts, NULL);
}

static unsigned next_rand(unsigned *s) {
    *s = *s * 1103515245u + 12345u;
    return (*s >> 16) & 0x7fff;
}

static void make_frame(svlm_frame *f, int k) {
    svlm_err err = {0};
    REQUIRE(svlm_frame_alloc(f, W, H, &err) == SVLM_OK, "%s", err.msg);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            uint8_t *p = f->data + (size_t)y * f->stride + (size_t)x * 3;
            const int box = x >= 8 * k % 70 && x < 8 * k % 70 + 20 && y >= 20 && y < 40;
            p[0] = (uint8_t)(box ? 220 : x * 2);
            p[1] = (uint8_t)(box ? 30 : y * 3);
            p[2] = (uint8_t)(x + y);
        }
    f->pts = 0.25 * k;
}

static void on_done(void *user, uint64_t qid, svlm_status st, const char *answer,
                    const svlm_answer_metrics *am, const char *err_msg) {
    (void)st, (void)answer, (void)am, (void)err_msg;
    qtag *t = user;
    if (qid <= MAX_Q) __atomic_add_fetch(&t->r->calls[qid], 1, __ATOMIC_SEQ_CST);
    if (t->r->done_delay_us) sleep_us(t->r->done_delay_us);
    __atomic_add_fetch(&t->r->done[t->stream], 1, __ATOMIC_SEQ_CST);
}

static svlm_status ask(round_state *r, int i, int pin) {
    svlm_err err = {0};
    svlm_ask_opts o = {.max_tokens = 6};
    svlm_status st =
        svlm_engine_ask(r->e, r->sid[i], "What moves?", &o, pin, NULL, on_done, &r->tags[i], NULL, &err);
    if (!st) __atomic_add_fetch(&r->asked[i], 1, __ATOMIC_SEQ_CST);
    return st;
}

static svlm_status push(round_state *r, int i, int k, int block) {
    svlm_err err = {0};
    svlm_frame f;
    make_frame(&f, k);
    svlm_status st = svlm_engine_push_frame(r->e, r->sid[i], &f, block, &err);
    if (!st) __atomic_add_fetch(&r->pushed, 1, __ATOMIC_SEQ_CST);
    return st;
}

/* Both racers wait for go, then a random few microseconds, so that every order comes up. */
static void start_line(round_state *r, unsigned *seed) {
    while (!__atomic_load_n(&r->go, __ATOMIC_SEQ_CST))
        ;
    const unsigned spin = next_rand(seed) % 4000;
    for (volatile unsigned i = 0; i < spin; i++)
        ;
}

static void remove_first(round_state *r) {
    svlm_engine_remove_stream(r->e, r->sid[0]);
    /* the contract: its questions ended (done callbacks ran) and nothing of the engine touches it */
    if (__atomic_load_n(&r->done[0], __ATOMIC_SEQ_CST) != __atomic_load_n(&r->asked[0], __ATOMIC_SEQ_CST))
        __atomic_store_n(&r->early, 1, __ATOMIC_SEQ_CST);
    svlm_engine_free_stream(r->e, r->s[0]); /* (the engine may still run: the other thread stops it) */
    r->s[0] = NULL;
}

/* Pushes and asks on stream 1 until the engine refuses (it stopped). */
static void push_until_refused(round_state *r) {
    for (int k = 0; k < 10000; k++) {
        svlm_status a = push(r, 1, k, 1), b = k % 4 == 0 ? ask(r, 1, k % 8 == 0) : SVLM_OK;
        if (a == SVLM_E_CANCELLED || b == SVLM_E_CANCELLED) {
            __atomic_store_n(&r->refused_after_stop, 1, __ATOMIC_SEQ_CST);
            return;
        }
    }
}

static void *racer_a(void *arg) {
    round_state *r = arg;
    unsigned seed = r->seed * 7u + 1u;
    start_line(r, &seed);
    if (r->kind == RACE_REMOVE)
        remove_first(r);
    else if (r->kind == RACE_STOP)
        svlm_engine_stop(r->e);
    else
        push_until_refused(r);
    return NULL;
}

static void *racer_b(void *arg) {
    round_state *r = arg;
    unsigned seed = r->seed * 13u + 5u;
    start_line(r, &seed);
    svlm_engine_stop(r->e);
    return NULL;
}

static void setup(round_state *r, svlm_llama *m, const svlm_mmproj *mp, int round) {
    svlm_err err = {0};
    svlm_stc_controls stc;
    svlm_stc_controls_default(&stc);
    stc.enabled = round % 3 != 0;
    /* batches of 2 take the next frames ahead while one runs: stopping then drops frames taken */
    svlm_engine_params ep = {
        .max_streams = N_S, .frame_queue = 2, .ingest_batch = round % 2 ? 2 : 1, .stc = &stc};
    REQUIRE(svlm_engine_create(m, mp, &ep, &r->e, &err) == SVLM_OK, "%s", err.msg);
    svlm_stream_params sp = tiny_stream_params(mp, 4, 96);
    for (int i = 0; i < N_S; i++) {
        r->tags[i] = (qtag){r, i};
        REQUIRE(svlm_engine_open_stream(r->e, &sp, "You watch a camera.", &r->s[i], &r->sid[i], &err) ==
                    SVLM_OK,
                "%s", err.msg);
    }
}

/* Frames and questions in every state: queued, taken by the lane, pinned, running. */
static void load(round_state *r) {
    for (int i = 0; i < N_S; i++) {
        for (int k = 0; k < 3; k++)
            REQUIRE(push(r, i, k, 0) == SVLM_OK, "push");
        REQUIRE(ask(r, i, 1) == SVLM_OK && ask(r, i, 0) == SVLM_OK, "ask");
        REQUIRE(push(r, i, 3, 0) == SVLM_OK && ask(r, i, i) == SVLM_OK, "push and ask");
    }
    sleep_us(next_rand(&r->seed) % 3000); /* the lanes somewhere in that work */
}

/* The engine's counters add up: every question asked ended, every frame pushed done or dropped. */
static int counters_add_up(round_state *r, int round, int asked) {
    svlm_engine_metrics em;
    svlm_engine_metrics_get(r->e, &em);
    const int64_t ended = em.questions_done + em.questions_cancelled + em.questions_failed;
    const int64_t frames = em.frames_done + em.frames_dropped;
    CHECK(ended == asked && em.queued_questions == 0 && em.active_answers == 0,
          "round %d (race %d): %d asked, %lld ended, %d queued, %d running", round, r->kind, asked,
          (long long)ended, em.queued_questions, em.active_answers);
    CHECK(frames == r->pushed && em.queued_frames == 0,
          "round %d (race %d): %d frames pushed, %lld done + %lld dropped, %d queued", round, r->kind,
          r->pushed, (long long)em.frames_done, (long long)em.frames_dropped, em.queued_frames);
    return ended == asked && frames == r->pushed;
}

/* What every round must find once both threads are back (the engine stopped, not yet freed). */
static void check_round(round_state *r, int round, int *bad) {
    const int asked = r->asked[0] + r->asked[1], done = r->done[0] + r->done[1];
    int once = 1;
    for (int q = 1; q <= MAX_Q; q++)
        once &= r->calls[q] <= 1;
    CHECK(once && done == asked, "round %d (race %d): %d questions asked, %d done callbacks (each once: %d)",
          round, r->kind, asked, done, once);
    CHECK(!r->early, "round %d (race %d): remove_stream returned before its questions were done", round,
          r->kind);
    if (r->kind == RACE_PUSH) CHECK(r->refused_after_stop, "round %d: pushes were never refused", round);
    const int counted = counters_add_up(r, round, asked);
    *bad += !(once && done == asked && !r->early && counted);
}

static void one_round(svlm_llama *m, const svlm_mmproj *mp, int round, int only, int *bad) {
    round_state *r = calloc(1, sizeof *r);
    REQUIRE(r, "out of memory");
    r->kind = only >= 0 && only < N_RACES ? only : round % N_RACES;
    r->seed = 0x9e3779b9u * (unsigned)(round + 1);
    r->done_delay_us = next_rand(&r->seed) % 2 ? 200 : 0;
    setup(r, m, mp, round);
    load(r);
    pthread_t a, b;
    REQUIRE(pthread_create(&a, NULL, racer_a, r) == 0 && pthread_create(&b, NULL, racer_b, r) == 0,
            "threads");
    __atomic_store_n(&r->go, 1, __ATOMIC_SEQ_CST);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    check_round(r, round, bad);
    svlm_engine_stop(r->e); /* (stopped already: returns at once) */
    for (int i = 0; i < N_S; i++)
        svlm_stream_free(r->s[i]);
    svlm_engine_free(r->e);
    free(r);
}

/* svlm_engine_refuse_pushes, before the stream is removed (a closing recording's feeder): its
 * pushes fail, blocking or not, and the other stream's go on. (A push already waiting for room
 * checks the same flag when the call wakes it.) */
static void refused_pushes(svlm_llama *m, const svlm_mmproj *mp) {
    round_state *r = calloc(1, sizeof *r);
    REQUIRE(r, "out of memory");
    setup(r, m, mp, 1);
    svlm_engine_refuse_pushes(r->e, r->sid[0]);
    CHECK(push(r, 0, 0, 1) == SVLM_E_CANCELLED && push(r, 0, 1, 0) == SVLM_E_CANCELLED,
          "a push to a stream refusing them was taken");
    CHECK(push(r, 1, 0, 1) == SVLM_OK, "the other stream's push was refused");
    svlm_engine_remove_stream(r->e, r->sid[0]);
    svlm_engine_stop(r->e);
    for (int i = 0; i < N_S; i++)
        svlm_stream_free(r->s[i]);
    svlm_engine_free(r->e);
    free(r);
}

int test_main(void) {
    svlm_llama *m = NULL;
    svlm_mmproj *mp = NULL;
    tiny_models_load(&m, &mp);
    refused_pushes(m, mp);
    const char *env = getenv("SVLM_RACE_ROUNDS");
    const int rounds = env && atoi(env) > 0 ? atoi(env) : ROUNDS;
    const char *only = getenv("SVLM_RACE_ONLY"); /* one kind of race (0..2), to look at it alone */
    int bad = 0;
    for (int round = 0; round < rounds; round++)
        one_round(m, mp, round, only ? atoi(only) : -1, &bad);
    printf("%d rounds of remove/stop, stop/stop and push+ask/stop races: %d with a fault\n", rounds, bad);
    svlm_mmproj_free(mp);
    svlm_llama_free(m);
    return 0;
}
