/*
 * Token compression across a live source's reconnect, through the engine (vision-tiny models,
 * SVLM_TEST_DATA, on the CPU): every stream is pushed four frames, the picture A, A with its box
 * moved (a partial pass against A, the reference), then A twice, with the source's events in
 * their place after the second frame, pushed while the frames before them still wait in the queue.
 *   stream 0: RECONNECT             the third frame, the cached reference's picture, is encoded in
 *   stream 1: DISCONNECT, RECONNECT full (a new reference) and the fourth reuses it; the second
 *                                   frame, queued before the event, still compares with the first
 *   stream 2: DROP (no break)       the control: the third and fourth frames reuse the first's
 * Once with frames one at a time and once in batches of streams (the batch path plans token
 * compression apart from the frame's taking), and once with a queue of one frame, where the frame
 * after the break is dropped by a live push and the break passes on to the frame after it.
 */
#include <stdlib.h>

#include "llm/llama.h"
#include "pipeline/source_backend.h"
#include "pipeline/stream_engine.h"
#include "test.h"
#include "test_tiny_models.h"
#include "vision/mmproj.h"

enum { W = 96, H = 64, N_S = 3, N_FRAMES = 4 };

/* Stream s's picture, its box moved right by `moved` pixels. */
static void picture(svlm_frame *f, int s, int moved, double t) {
    svlm_err err = {0};
    REQUIRE(svlm_frame_alloc(f, W, H, &err) == SVLM_OK, "%s", err.msg);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            uint8_t *p = f->data + (size_t)y * f->stride + (size_t)x * 3;
            const int box = x >= 30 + moved && x < 60 + moved && y >= 16 && y < 40;
            p[0] = (uint8_t)(box ? 200 - 40 * s : x * 2);
            p[1] = (uint8_t)(box ? 40 + 50 * s : y * 3);
            p[2] = (uint8_t)(x + y + 60 * s);
        }
    f->pts = t;
}

/* Frame k of stream s: A, A with its box moved by `moved` pixels, A, A. */
static void push(svlm_engine *e, int sid, int s, int k, int moved, int block) {
    svlm_err err = {0};
    svlm_frame f;
    picture(&f, s, k == 1 ? moved : 0, 0.5 * k);
    REQUIRE(svlm_engine_push_frame(e, sid, &f, block, &err) == SVLM_OK, "%s", err.msg);
}

static void event(svlm_engine *e, int sid, svlm_source_event_kind kind) {
    svlm_err err = {0};
    svlm_source_event ev = {.kind = kind, .count = 1, .total = 1};
    REQUIRE(svlm_engine_push_event(e, sid, &ev, &err) == SVLM_OK, "%s", err.msg);
}

/* Stream s's events after its second frame. */
static void events_of(svlm_engine *e, int sid, int s) {
    if (s == 1) event(e, sid, SVLM_EVENT_DISCONNECT);
    event(e, sid, s == 2 ? SVLM_EVENT_DROP : SVLM_EVENT_RECONNECT);
}

static svlm_engine *engine(svlm_llama *m, const svlm_mmproj *mp, int batch, int queue, svlm_stream **s,
                           int *sid) {
    svlm_err err = {0};
    svlm_stc_controls stc;
    svlm_stc_controls_default(&stc);
    stc.enabled = 1;
    svlm_engine_params ep = {.max_streams = N_S, .frame_queue = queue, .ingest_batch = batch, .stc = &stc};
    svlm_engine *e = NULL;
    REQUIRE(svlm_engine_create(m, mp, &ep, &e, &err) == SVLM_OK, "%s", err.msg);
    svlm_stream_params sp = tiny_stream_params(mp, 8, 64);
    for (int i = 0; i < N_S; i++)
        REQUIRE(svlm_engine_open_stream(e, &sp, "You watch a camera.", &s[i], &sid[i], &err) == SVLM_OK, "%s",
                err.msg);
    return e;
}

static void finish(svlm_engine *e, svlm_stream **s, svlm_stream_metrics *sm) {
    svlm_engine_drain(e);
    svlm_engine_stop(e);
    for (int i = 0; i < N_S; i++) {
        svlm_stream_metrics_get(s[i], &sm[i]);
        svlm_stream_free(s[i]);
    }
    svlm_engine_free(e);
}

/* Four frames a stream, queued with the events after the second (replay pushes: none dropped). */
static void run_queued(svlm_llama *m, const svlm_mmproj *mp, int batch, svlm_stream_metrics *sm,
                       svlm_engine_metrics *em) {
    svlm_stream *s[N_S];
    int sid[N_S];
    svlm_engine *e = engine(m, mp, batch, N_FRAMES, s, sid);
    for (int k = 0; k < N_FRAMES; k++)
        for (int i = 0; i < N_S; i++) {
            if (k == 2) events_of(e, sid[i], i);
            push(e, sid[i], i, k, 12, 1);
        }
    svlm_engine_drain(e);
    svlm_engine_metrics_get(e, em);
    finish(e, s, sm);
}

/* The paths of one stream's frames: full passes (the rest: partial passes or reused outright). */
static void check_stream(const svlm_stream_metrics *m, int s, int full, int partial, int reused,
                         const char *how) {
    const int64_t n_full = m->stc_frames - m->stc_partial - m->stc_reused;
    CHECK(m->stc_frames == N_FRAMES && n_full == full && m->stc_partial == partial && m->stc_reused == reused,
          "%s, stream %d: %lld frames, %lld full, %lld partial, %lld reused (want %d, %d, %d)", how, s,
          (long long)m->stc_frames, (long long)n_full, (long long)m->stc_partial, (long long)m->stc_reused,
          full, partial, reused);
}

static void queued(svlm_llama *m, const svlm_mmproj *mp, int batch) {
    svlm_stream_metrics sm[N_S];
    svlm_engine_metrics em;
    run_queued(m, mp, batch, sm, &em);
    const char *how = batch > 1 ? "in batches" : "one at a time";
    check_stream(&sm[0], 0, 2, 1, 1, how); /* the first frame, and the first after the reconnect */
    check_stream(&sm[1], 1, 2, 1, 1, how); /* two events of one break: one restart */
    check_stream(&sm[2], 2, 1, 1, 2, how); /* no break: the reference's picture is reused */
    CHECK(sm[0].stc_kept > sm[2].stc_kept, "%s: the restart kept %lld tokens, the control %lld", how,
          (long long)sm[0].stc_kept, (long long)sm[2].stc_kept);
    if (batch > 1) CHECK(em.ingest_batches > 0, "no batch of streams formed");
    printf("%s: after a reconnect %lld of %lld patches recomputed (%lld reused); without one %lld "
           "(%lld reused); %llu batches\n",
           how, (long long)sm[0].stc_recomputed, (long long)sm[0].stc_patches, (long long)sm[0].stc_reused,
           (long long)sm[2].stc_recomputed, (long long)sm[2].stc_reused,
           (unsigned long long)em.ingest_batches);
}

/* A queue of one: the first frame after the break is dropped by the live push of the next (while
 * the lane encodes an earlier stream's frame), and the restart goes with the frame that stays. */
static void dropped_after_break(svlm_llama *m, const svlm_mmproj *mp) {
    svlm_stream *s[N_S];
    int sid[N_S];
    svlm_engine *e = engine(m, mp, 1, 1, s, sid);
    for (int k = 0; k < 2; k++) { /* two frames each, one by one: the reference, then reused */
        for (int i = 0; i < N_S; i++)
            push(e, sid[i], i, k, 0, 1);
        svlm_engine_drain(e);
    }
    for (int i = 0; i < N_S; i++) {
        events_of(e, sid[i], i);
        push(e, sid[i], i, 2, 0, 0);
        push(e, sid[i], i, 3, 0, 0); /* drops frame 2 if the lane has not taken it yet */
    }
    svlm_engine_drain(e);
    svlm_engine_metrics em;
    svlm_engine_metrics_get(e, &em);
    svlm_stream_metrics sm[N_S];
    finish(e, s, sm);
    /* (the later streams' frame 2 waits behind stream 0's: their second push drops it) */
    CHECK(em.frames_dropped > 0, "a queue of one: no frame after the break was dropped");
    for (int i = 0; i < N_S; i++) { /* every frame A: full passes, the rest reused */
        const int64_t frames = sm[i].stc_frames, full = frames - sm[i].stc_partial - sm[i].stc_reused;
        const int want_full = i == 2 ? 1 : 2; /* whichever of frames 2 and 3 came first after the break */
        CHECK(frames >= 3 && full == want_full && sm[i].stc_partial == 0,
              "a queue of one, stream %d: %lld frames, %lld full, %lld partial (want %d full, 0 partial)", i,
              (long long)frames, (long long)full, (long long)sm[i].stc_partial, want_full);
    }
    printf("a queue of one: %lld, %lld and %lld frames ingested, %lld dropped\n", (long long)sm[0].stc_frames,
           (long long)sm[1].stc_frames, (long long)sm[2].stc_frames, (long long)em.frames_dropped);
}

int test_main(void) {
    svlm_llama *m = NULL;
    svlm_mmproj *mp = NULL;
    tiny_models_load(&m, &mp);
    queued(m, mp, 1);
    queued(m, mp, N_S);
    dropped_after_break(m, mp);
    svlm_mmproj_free(mp);
    svlm_llama_free(m);
    return 0;
}
