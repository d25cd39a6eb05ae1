/* The stream's hand-off to memory with the tiny SmolVLM text model: frames leaving the window
 * reach the bank, a needle asked about long after it left is retrieved and introduced by its
 * time range in the question's prompt, time anchors find it, a restart resumes the bank and
 * continues the clock. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/threadpool.h"
#include "llm/llama.h"
#include "pipeline/stream.h"
#include "test.h"

enum { ROWS = 8, N_FRAMES = 120, EVENT_AT = 40, EVENT_LEN = 3 };

static svlm_llama *model;
static svlm_kernels *kern;

/* A slowly drifting scene; frames EVENT_AT.. EVENT_AT+2 show something else entirely. */
static void make_frame(int i, int E, float *out) {
    const int event = i >= EVENT_AT && i < EVENT_AT + EVENT_LEN;
    for (int r = 0; r < ROWS; r++)
        for (int j = 0; j < E; j++) {
            float calm =
                0.5f * (float)((r * 7 + j * 13) % 17 - 8) / 8.0f + 0.001f * (float)i * (float)(j % 3);
            float odd = ((r * 5 + j * 11) % 9 < 3) ? 1.5f : -1.2f;
            out[(size_t)r * E + j] = event ? odd : calm;
        }
}

static svlm_stream *new_stream(const char *dir) {
    static svlm_memory_opts mo;
    svlm_memory_opts_default(&mo);
    mo.budget_bytes = 1 << 20;
    mo.dir = dir;
    svlm_stream_params p = {.sink_tokens = 32,
                            .vision_tokens = 70,
                            .text_tokens = 120,
                            .answer_room = 64,
                            .rows_per_frame = ROWS,
                            .page_tokens = 16,
                            .kv_type = SVLM_F32,
                            .memory = &mo,
                            .memory_room = 160,
                            .memory_top_k = 3};
    svlm_stream *s = NULL;
    svlm_err err = {0};
    REQUIRE(svlm_stream_create(model, kern, &p, "<|im_start|>System: describe the video.<end_of_utterance>\n",
                               &s, &err) == SVLM_OK,
            "%s", err.msg);
    return s;
}

static int covers_event(const svlm_answer_metrics *am, int *which) {
    for (int i = 0; i < am->memory_hits; i++)
        if (am->memory_t0[i] <= EVENT_AT + 0.5 && am->memory_t1[i] >= EVENT_AT + 0.5) {
            *which = i;
            return 1;
        }
    return 0;
}

/* The engine's batched ingest (svlm_streams_add_frames, its banks pushed on a pool) fills three
 * streams' banks exactly as frame-by-frame appends fill one: the same frames, entries, bytes and
 * novelty of a probe, bit for bit (the bank gets the frames' rows, not the decoder's numbers). */
static void batched_like_single(int E, float *frame) {
    enum { NB = 3 };
    svlm_err err = {0};
    svlm_stream *one = new_stream(NULL), *many[NB];
    for (int j = 0; j < NB; j++)
        many[j] = new_stream(NULL);
    svlm_llama_multi *mb = NULL;
    svlm_pool *pool = NULL;
    REQUIRE(!svlm_llama_multi_create(model, kern, NB * svlm_llama_multi_item_max(), &mb, &err), "%s",
            err.msg);
    REQUIRE(!svlm_pool_create(NB, &pool, &err), "%s", err.msg);
    for (int i = 0; i < N_FRAMES; i++) {
        make_frame(i, E, frame);
        REQUIRE(svlm_stream_add_frame(one, (double)i, frame, &err) == SVLM_OK, "%s", err.msg);
        double t[NB];
        const float *rows[NB];
        int nt[NB];
        svlm_status st[NB];
        svlm_err errs[NB];
        for (int j = 0; j < NB; j++) {
            t[j] = (double)i;
            rows[j] = frame;
            nt[j] = ROWS;
        }
        REQUIRE(svlm_streams_add_frames(mb, pool, many, t, rows, nt, NB, st, errs) == SVLM_OK, "%s",
                errs[0].msg);
        for (int j = 0; j < NB; j++)
            REQUIRE(st[j] == SVLM_OK, "frame %d, stream %d: %s", i, j, errs[j].msg);
    }
    svlm_stream_metrics a;
    svlm_stream_metrics_get(one, &a);
    float *na = malloc(sizeof(float) * ROWS), *nb = malloc(sizeof(float) * ROWS);
    REQUIRE(na && nb, "out of memory");
    make_frame(EVENT_AT, E, frame);
    REQUIRE(svlm_memory_novelty(svlm_stream_memory(one), frame, ROWS, na, &err) == SVLM_OK, "%s", err.msg);
    int same = 1;
    for (int j = 0; j < NB; j++) {
        svlm_stream_metrics b;
        svlm_stream_metrics_get(many[j], &b);
        same &= b.memory_frames == a.memory_frames && b.memory_bytes == a.memory_bytes &&
                b.memory_events == a.memory_events && b.memory_push_errors == 0 &&
                !memcmp(b.memory_tier_entries, a.memory_tier_entries, sizeof a.memory_tier_entries);
        REQUIRE(svlm_memory_novelty(svlm_stream_memory(many[j]), frame, ROWS, nb, &err) == SVLM_OK, "%s",
                err.msg);
        same &= !memcmp(na, nb, sizeof(float) * ROWS);
    }
    printf("batched ingest (%d streams a pass, banks pushed on a pool): %lld frames in each bank, %zu bytes, "
           "compared with frame-by-frame appends\n",
           NB, (long long)a.memory_frames, a.memory_bytes);
    CHECK(same && a.memory_frames >= N_FRAMES - 10, "batched banks differ from frame-by-frame ones");
    free(na);
    free(nb);
    svlm_pool_destroy(pool);
    svlm_llama_multi_free(mb);
    svlm_stream_free(one);
    for (int j = 0; j < NB; j++)
        svlm_stream_free(many[j]);
}

/* The frame ring holds the rows of the frames still in the window (and the one arriving), not a
 * full frame in every slot: the ring has a slot per 8 window tokens (for pruned frames), and
 * slots that kept their largest frame's rows made an 8-frame window of 256-row frames hold 282. */
static void ring_holds_window(int E) {
    enum { R = 64, WINDOW = 3 * (R + 24), FRAMES = 60 };
    static svlm_memory_opts mo;
    svlm_memory_opts_default(&mo);
    mo.budget_bytes = 4 << 20;
    svlm_stream_params p = {.sink_tokens = 32,
                            .vision_tokens = WINDOW,
                            .text_tokens = 120,
                            .answer_room = 64,
                            .rows_per_frame = R,
                            .page_tokens = 16,
                            .kv_type = SVLM_F32,
                            .memory = &mo,
                            .memory_room = 160,
                            .memory_top_k = 3};
    svlm_stream *s = NULL;
    svlm_err err = {0};
    REQUIRE(svlm_stream_create(model, kern, &p, NULL, &s, &err) == SVLM_OK, "%s", err.msg);
    float *frame = malloc((size_t)R * E * sizeof(float));
    REQUIRE(frame, "out of memory");
    size_t most = 0;
    for (int i = 0; i < FRAMES; i++) {
        for (int r = 0; r < R; r++)
            for (int j = 0; j < E; j++)
                frame[(size_t)r * E + j] = 0.5f * (float)((r * 7 + j * 13 + i) % 17 - 8) / 8.0f;
        REQUIRE(svlm_stream_add_frame(s, (double)i, frame, &err) == SVLM_OK, "%s", err.msg);
        svlm_stream_metrics m;
        svlm_stream_metrics_get(s, &m);
        if (m.frame_ring_bytes > most) most = m.frame_ring_bytes;
    }
    svlm_stream_metrics m;
    svlm_stream_metrics_get(s, &m);
    const size_t bound = (size_t)(WINDOW + R) * (size_t)E * sizeof(float);
    printf("frame ring: at most %zu bytes over %d frames of %d rows (the window and one frame: %zu)\n", most,
           FRAMES, R, bound);
    CHECK(most <= bound, "the frame ring held %zu bytes, the window's rows and one frame are %zu", most,
          bound);
    CHECK(m.memory_frames == m.evicted_spans && m.memory_frames >= FRAMES - 4 && m.memory_push_errors == 0,
          "memory frames %lld, evicted spans %lld, push errors %lld", (long long)m.memory_frames,
          (long long)m.evicted_spans, (long long)m.memory_push_errors);
    free(frame);
    svlm_stream_free(s);
}

int test_main(void) {
    test_data_or_skip();
    svlm_err err = {0};
    REQUIRE(svlm_kernels_create_cpu(2, &kern, &err) == SVLM_OK, "%s", err.msg);
    REQUIRE(svlm_llama_load(test_data("fixtures/vision-tiny/models/tiny-smolvlm-text-f32.gguf"), &model,
                            &err) == SVLM_OK,
            "%s", err.msg);
    const int E = svlm_llama_hparams_of(model)->n_embd;
    float *frame = malloc((size_t)ROWS * E * sizeof(float)),
          *needle = malloc((size_t)ROWS * E * sizeof(float));
    REQUIRE(frame && needle, "out of memory");
    char dir[] = "/tmp/svlm_stream_memoryXXXXXX";
    REQUIRE(mkdtemp(dir), "mkdtemp failed");

    svlm_stream *s = new_stream(dir);
    for (int i = 0; i < N_FRAMES; i++) {
        make_frame(i, E, frame);
        REQUIRE(svlm_stream_add_frame(s, (double)i, frame, &err) == SVLM_OK, "%s", err.msg);
    }
    svlm_stream_metrics m;
    svlm_stream_metrics_get(s, &m);
    /* every frame but those still in the window went to the bank, none lost on the way */
    CHECK(m.memory_on && m.memory_frames == m.evicted_spans && m.memory_frames >= N_FRAMES - 10,
          "memory frames %lld, evicted spans %lld", (long long)m.memory_frames, (long long)m.evicted_spans);
    CHECK(m.memory_push_errors == 0, "%lld pushes failed", (long long)m.memory_push_errors);
    CHECK(m.memory_bytes > 0 && m.memory_bytes <= m.memory_budget, "memory %zu of %zu", m.memory_bytes,
          m.memory_budget);
    CHECK(m.memory_tier_entries[SVLM_MEMORY_EVENT] >= 1, "no event entry (events %lld)",
          (long long)m.memory_events);

    /* the question is built from the needle's own content: its entry ranks first and is placed */
    svlm_llama_ctx *ctx = NULL;
    REQUIRE(svlm_llama_ctx_create(model, kern, svlm_stream_ctx_size(s), SVLM_F32, &ctx, &err) == SVLM_OK,
            "%s", err.msg);
    make_frame(EVENT_AT, E, needle);
    char *prompt = NULL, *answer = NULL;
    svlm_answer_metrics am;
    svlm_ask_opts o = {
        .max_tokens = 4, .use_memory = 1, .query_vecs = needle, .n_query_vecs = ROWS, .prompt_text = &prompt};
    svlm_stream_fork *f = NULL;
    REQUIRE(svlm_stream_fork_now(s, &f, &err) == SVLM_OK, "%s", err.msg);
    REQUIRE(svlm_stream_ask_fork_opts(s, f, ctx, "What was different?", &o, NULL, NULL, &answer, &am, &err) ==
                SVLM_OK,
            "%s", err.msg);
    int hit = -1;
    CHECK(am.memory_hits >= 1 && covers_event(&am, &hit), "%d hits, none covers %d s", am.memory_hits,
          EVENT_AT);
    if (hit >= 0) {
        CHECK(am.memory_tier[hit] == SVLM_MEMORY_EVENT, "the needle came from tier %d", am.memory_tier[hit]);
        char intro[96];
        svlm_memory_format_intro(am.memory_t0[hit], am.memory_t1[hit], intro, sizeof intro);
        CHECK(prompt && strstr(prompt, intro), "'%s' not in the prompt: %s", intro,
              prompt ? prompt : "(none)");
    }
    CHECK(prompt && strstr(prompt, "What was different?") > strstr(prompt, "Memory from"),
          "memory is not before the question: %s", prompt ? prompt : "(none)");
    CHECK(am.memory_tokens > 0 && am.memory_tokens <= 160, "memory tokens %d", am.memory_tokens);
    free(prompt);
    free(answer);

    /* a time anchor finds it from the question's own words */
    REQUIRE(svlm_stream_fork_now(s, &f, &err) == SVLM_OK, "%s", err.msg);
    svlm_ask_opts o2 = {.max_tokens = 4, .use_memory = 1};
    REQUIRE(svlm_stream_ask_fork_opts(s, f, ctx, "What happened at 00:41?", &o2, NULL, NULL, NULL, &am,
                                      &err) == SVLM_OK,
            "%s", err.msg);
    CHECK(am.memory_time_anchored == 1, "the time anchor was not understood");
    for (int i = 0; i < am.memory_hits; i++)
        CHECK(am.memory_t1[i] >= 41 - 30 && am.memory_t0[i] <= 41 + 30,
              "hit %d at %.0f-%.0f s outside 00:41 +- 30 s", i, am.memory_t0[i], am.memory_t1[i]);
    CHECK(am.memory_hits >= 1, "no hit for a time-anchored question");
    svlm_stream_metrics_get(s, &m);
    const int entries_before =
        m.memory_tier_entries[SVLM_MEMORY_MID] + m.memory_tier_entries[SVLM_MEMORY_EVENT];
    svlm_llama_ctx_free(ctx);
    svlm_stream_free(s); /* flushes: the clip and event being built persist too */

    /* restart: the bank comes back from the directory and the clock goes on after it */
    s = new_stream(dir);
    svlm_stream_metrics_get(s, &m);
    /* (the frames still in the window and the SHORT tier are not persisted: the clock resumes after
     * what the bank kept) */
    const double offset = m.time_offset;
    CHECK(offset > EVENT_AT + EVENT_LEN && offset <= N_FRAMES, "the clock restarts at %.1f s", offset);
    CHECK(m.memory_tier_entries[SVLM_MEMORY_MID] + m.memory_tier_entries[SVLM_MEMORY_EVENT] >= entries_before,
          "restored %d entries, had %d",
          m.memory_tier_entries[SVLM_MEMORY_MID] + m.memory_tier_entries[SVLM_MEMORY_EVENT], entries_before);
    make_frame(0, E, frame);
    REQUIRE(svlm_stream_add_frame(s, 0.0, frame, &err) == SVLM_OK, "%s", err.msg);
    svlm_stream_metrics_get(s, &m);
    CHECK(m.t_last == offset, "a resumed stream's first frame sits at %.1f s, not %.1f s", m.t_last, offset);
    svlm_stream_free(s);

    batched_like_single(E, frame);
    ring_holds_window(E);

    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CHECK(system(cmd) == 0, "cannot remove %s", dir);
    free(frame);
    free(needle);
    svlm_llama_free(model);
    svlm_kernels_destroy(kern);
    return 0;
}
