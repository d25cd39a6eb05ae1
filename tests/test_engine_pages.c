/*
 * A stream's KV pool refusing a fork (its pages promised to its running answers) holds back only
 * that stream's questions (vision-tiny models, SVLM_TEST_DATA, on the CPU). Stream A, whose pool
 * is sized for one answer, is asked 18 long questions at once: more forks than its pool can
 * promise, so some wait for A's running answers. Then stream B, with an empty pool, is asked a
 * short one. Every question must be answered; a page refusal is not a lack of device memory, so
 * the engine's memory waits (which cap every stream's new answers for up to a second) stay at 0.
 * Before, the refusal went through the memory path: memory_waits rose and B's question waited
 * for one of A's answers (about 940 ms here) although B's pool was empty.
 * Then pinned_forks_ahead: a question whose fork is refused while the pages are held by pinned
 * questions' forks waiting behind it (nothing of its stream running) waits for them instead of
 * failing (before: it failed in 2 of 3 runs).
 */
#include <stdint.h>
#include <stdlib.h>

#include "llm/llama.h"
#include "pipeline/stream_engine.h"
#include "test.h"
#include "test_tiny_models.h"
#include "vision/mmproj.h"

enum { N_A = 18 };

static int answered[2], failed;
static char first_error[256]; /* the first failed question's message */

static void on_done(void *user, uint64_t qid, svlm_status st, const char *answer,
                    const svlm_answer_metrics *am, const char *msg) {
    (void)qid, (void)answer, (void)am;
    if (st == SVLM_OK) {
        __atomic_add_fetch(&answered[(intptr_t)user], 1, __ATOMIC_SEQ_CST);
    } else if (__atomic_add_fetch(&failed, 1, __ATOMIC_SEQ_CST) == 1) { /* (callbacks: one lane) */
        snprintf(first_error, sizeof first_error, "%s", msg ? msg : "");
    }
}

/* Stream A's pool filled by pinned questions' forks (taken when their frame is handled, past
 * max_active) while an unpinned question X waits for the one running answer: when that answer
 * ends, nothing of A runs, X's fork is refused, and the pinned questions behind X hold the pages.
 * X must wait for them (they start first: they hold their forks), not fail. */
static void pinned_forks_ahead(svlm_llama *m, const svlm_mmproj *mp, const svlm_stream_params *sp) {
    enum { N_PINNED = 16 };
    svlm_engine_params ep = {.max_streams = 1, .max_active = 1};
    svlm_engine *e = NULL;
    svlm_err err = {0};
    REQUIRE(svlm_engine_create(m, mp, &ep, &e, &err) == SVLM_OK, "%s", err.msg);
    svlm_stream *s = NULL;
    int sid = -1;
    REQUIRE(svlm_engine_open_stream(e, sp, "You watch a camera.", &s, &sid, &err) == SVLM_OK, "%s", err.msg);
    answered[0] = answered[1] = failed = 0;
    first_error[0] = 0;
    const svlm_ask_opts running = {.max_tokens = 400}, waiting = {.max_tokens = 4};
    REQUIRE(svlm_engine_ask(e, sid, "What moves?", &running, 0, NULL, on_done, (void *)(intptr_t)0, NULL,
                            &err) == SVLM_OK,
            "%s", err.msg);
    REQUIRE(svlm_engine_ask(e, sid, "And now?", &waiting, 0, NULL, on_done, (void *)(intptr_t)1, NULL,
                            &err) == SVLM_OK,
            "%s", err.msg);
    for (int k = 0; k < N_PINNED; k++) /* (no frame pushed: forked at once) */
        REQUIRE(svlm_engine_ask(e, sid, "What moved?", &waiting, 1, NULL, on_done, (void *)(intptr_t)0, NULL,
                                &err) == SVLM_OK,
                "%s", err.msg);
    svlm_engine_drain(e);
    printf("one stream, one answer at a time, %d pinned forks behind a waiting question: %d of %d answered, "
           "%d failed\n",
           N_PINNED, answered[0] + answered[1], N_PINNED + 2, failed);
    CHECK(answered[1] == 1 && answered[0] == N_PINNED + 1 && failed == 0,
          "the waiting question %s; %d of %d others answered, %d failed (%s)",
          answered[1] ? "answered" : "FAILED", answered[0], N_PINNED + 1, failed, first_error);
    svlm_engine_stop(e);
    svlm_engine_remove_stream(e, sid);
    svlm_engine_free_stream(e, s);
    svlm_engine_free(e);
}

int test_main(void) {
    svlm_llama *m = NULL;
    svlm_mmproj *mp = NULL;
    tiny_models_load(&m, &mp);
    svlm_err err = {0};
    svlm_engine_params ep = {.max_streams = 2, .max_active = 64, .decode_batch = 64};
    svlm_engine *e = NULL;
    REQUIRE(svlm_engine_create(m, mp, &ep, &e, &err) == SVLM_OK, "%s", err.msg);
    svlm_stream_params sp = tiny_stream_params(mp, 4, 96);
    sp.answer_room = 1024;
    sp.max_answers = 1;
    svlm_stream *s[2];
    int sid[2];
    for (int i = 0; i < 2; i++)
        REQUIRE(svlm_engine_open_stream(e, &sp, "You watch a camera.", &s[i], &sid[i], &err) == SVLM_OK, "%s",
                err.msg);
    const svlm_ask_opts long_answer = {.max_tokens = 600}, short_answer = {.max_tokens = 4};
    for (int k = 0; k < N_A; k++)
        REQUIRE(svlm_engine_ask(e, sid[0], "What moves?", &long_answer, 0, NULL, on_done, (void *)(intptr_t)0,
                                NULL, &err) == SVLM_OK,
                "%s", err.msg);
    REQUIRE(svlm_engine_ask(e, sid[1], "What moves?", &short_answer, 0, NULL, on_done, (void *)(intptr_t)1,
                            NULL, &err) == SVLM_OK,
            "%s", err.msg);
    svlm_engine_drain(e);
    svlm_engine_metrics em;
    svlm_engine_metrics_get(e, &em);
    printf("stream A: %d of %d answered; stream B: %d of 1; %d failed; memory waits %llu\n", answered[0], N_A,
           answered[1], failed, (unsigned long long)em.memory_waits);
    CHECK(answered[0] == N_A && answered[1] == 1 && failed == 0, "answered %d + %d of %d, %d failed",
          answered[0], answered[1], N_A + 1, failed);
    CHECK(em.memory_waits == 0, "a page refusal counted %llu memory waits (every stream's starts capped)",
          (unsigned long long)em.memory_waits);
    svlm_engine_stop(e);
    for (int i = 0; i < 2; i++) {
        svlm_engine_remove_stream(e, sid[i]);
        svlm_engine_free_stream(e, s[i]);
    }
    svlm_engine_free(e);
    pinned_forks_ahead(m, mp, &sp);
    svlm_mmproj_free(mp);
    svlm_llama_free(m);
    return 0;
}
