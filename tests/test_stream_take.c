/*
 * An answer's context that copies its stream's window at the fork (svlm_stream_fork_into) holds,
 * bit for bit, what one that builds it from the pages holds, and answers the same: the tiny
 * SmolVLM text model, a stream whose frames have pushed older ones out of its window, the two
 * contexts compared row by row after the question and answer. A stream on F16 pages has an F16
 * context of its own, unlike an F32 answer's: there the copy is declined and the answer built as
 * before; an F16 answer context (the engine's for such a stream) takes the copy, with the same
 * rows as one built from the pages. test_cuda_stream_take runs it on a GPU (SVLM_TEST_TAKE_ON_GPU=1): device
 * copies.
 */
#include <stdlib.h>
#include <string.h>

#include "llm/llama_internal.h"
#include "pipeline/stream.h"
#include "test.h"
#include "test_working_copy.h"
#include "test_gpu.h"

enum { ROWS = 8, FRAMES = 30 };

static svlm_llama *model;
static svlm_kernels *kern;

static svlm_stream *new_stream(svlm_dtype kv) {
    svlm_stream_params p = {.sink_tokens = 32,
                            .vision_tokens = 60,
                            .text_tokens = 120,
                            .answer_room = 64,
                            .rows_per_frame = ROWS,
                            .page_tokens = 16,
                            .kv_type = kv};
    svlm_stream *s = NULL;
    svlm_err err = {0};
    REQUIRE(svlm_stream_create(model, kern, &p, "<|im_start|>System: describe the video.<end_of_utterance>\n",
                               &s, &err) == SVLM_OK,
            "%s", err.msg);
    const int E = svlm_llama_hparams_of(model)->n_embd;
    float *frame = malloc(sizeof(float) * ROWS * (size_t)E);
    REQUIRE(frame, "out of memory");
    for (int i = 0; i < FRAMES; i++) {
        for (int j = 0; j < ROWS * E; j++)
            frame[j] = 0.3f * (float)((j * 7 + i * 13) % 23 - 11) / 11.0f;
        REQUIRE(svlm_stream_add_frame(s, (double)i, frame, &err) == SVLM_OK, "%s", err.msg);
    }
    free(frame);
    return s;
}

/* Two answers to the same question on forks made one after the other: ctx a copies the window
 * (fork_into), ctx b builds it from the pages (fork_now). */
static void answer_both(svlm_stream *s, svlm_llama_ctx *a, svlm_llama_ctx *b, char **ans_a, char **ans_b,
                        svlm_answer_metrics *am_a, svlm_answer_metrics *am_b) {
    svlm_err err = {0};
    svlm_stream_fork *fa = NULL, *fb = NULL;
    REQUIRE(svlm_stream_fork_into(s, a, &fa, &err) == SVLM_OK, "%s", err.msg);
    REQUIRE(svlm_stream_fork_now(s, &fb, &err) == SVLM_OK, "%s", err.msg);
    svlm_ask_opts o = {.max_tokens = 6};
    REQUIRE(svlm_stream_ask_fork_opts(s, fa, a, "What moves?", &o, NULL, NULL, ans_a, am_a, &err) == SVLM_OK,
            "%s", err.msg);
    REQUIRE(svlm_stream_ask_fork_opts(s, fb, b, "What moves?", &o, NULL, NULL, ans_b, am_b, &err) == SVLM_OK,
            "%s", err.msg);
}

/* Two answer contexts of type t sized for s. */
static void two_contexts(svlm_stream *s, svlm_dtype t, svlm_llama_ctx **a, svlm_llama_ctx **b) {
    svlm_err err = {0};
    REQUIRE(svlm_llama_ctx_create(model, kern, svlm_stream_ctx_size(s), t, a, &err) == SVLM_OK &&
                svlm_llama_ctx_create(model, kern, svlm_stream_ctx_size(s), t, b, &err) == SVLM_OK,
            "%s", err.msg);
}

/* a took the window at the fork, b built it from the pages: the same rows, the same answer. */
static void check_copied(const char *what, svlm_llama_ctx *a, svlm_llama_ctx *b, const char *ans_a,
                         const char *ans_b, const svlm_answer_metrics *am_a,
                         const svlm_answer_metrics *am_b) {
    CHECK(am_a->window_copied == 1 && am_b->window_copied == 0, "%s: copied %d and %d (want 1, 0)", what,
          am_a->window_copied, am_b->window_copied);
    CHECK(test_same_working_copies(a, b), "%s: the copied window and the one built from the pages differ",
          what);
    CHECK(ans_a && ans_b && !strcmp(ans_a, ans_b), "%s: answers '%s' and '%s'", what, ans_a ? ans_a : "",
          ans_b ? ans_b : "");
}

int test_main(void) {
    test_data_or_skip();
    svlm_err err = {0};
    if (getenv("SVLM_TEST_TAKE_ON_GPU")) /* test_cuda_stream_take: the backend under test */
        kern = test_gpu_backend();
    else
        REQUIRE(svlm_kernels_create_cpu(2, &kern, &err) == SVLM_OK, "%s", err.msg);
    printf("backend: %s\n", svlm_kernels_name(kern));
    REQUIRE(svlm_llama_load(test_data("fixtures/vision-tiny/models/tiny-smolvlm-text-f32.gguf"), &model,
                            &err) == SVLM_OK,
            "%s", err.msg);
    svlm_stream *s = new_stream(SVLM_F32);
    svlm_stream_metrics m;
    svlm_stream_metrics_get(s, &m);
    CHECK(m.evicted_spans > 0, "no frame left the window");
    svlm_llama_ctx *a = NULL, *b = NULL;
    two_contexts(s, SVLM_F32, &a, &b);
    char *ans_a = NULL, *ans_b = NULL;
    svlm_answer_metrics am_a, am_b;
    answer_both(s, a, b, &ans_a, &ans_b, &am_a, &am_b);
    check_copied("f32", a, b, ans_a, ans_b, &am_a, &am_b);
    const int rows = a->mirror_n;
    printf(
        "f32 stream, %lld frames evicted: the answer's context took the window at the fork; all %d rows it "
        "held after the answer equal those of the one built from the pages, answer '%s' both ways\n",
        (long long)m.evicted_spans, rows, ans_a ? ans_a : "");
    free(ans_a);
    free(ans_b);
    svlm_stream_free(s);

    /* f16 pages: the stream's context is f16, the answer's f32: declined, built from the pages */
    s = new_stream(SVLM_F16);
    answer_both(s, a, b, &ans_a, &ans_b, &am_a, &am_b);
    CHECK(am_a.window_copied == 0, "an f16 window was copied into an f32 context");
    CHECK(test_same_working_copies(a, b) && ans_a && ans_b && !strcmp(ans_a, ans_b),
          "f16 stream: the two contexts differ");
    printf("f16 stream: the copy declined (the stream's context is f16), both contexts built from the pages, "
           "equal\n");
    free(ans_a);
    free(ans_b);
    svlm_llama_ctx_free(a);
    svlm_llama_ctx_free(b);

    /* f16 answer contexts, as the engine gives an f16 stream's questions: the window copied,
     * equal to one built from the pages */
    two_contexts(s, SVLM_F16, &a, &b);
    answer_both(s, a, b, &ans_a, &ans_b, &am_a, &am_b);
    check_copied("f16", a, b, ans_a, ans_b, &am_a, &am_b);
    printf(
        "f16 stream, f16 answer contexts: the window copied, all %d rows equal those built from the pages, "
        "answer '%s' both ways\n",
        a->mirror_n, ans_a ? ans_a : "");
    free(ans_a);
    free(ans_b);
    svlm_stream_free(s);
    svlm_llama_ctx_free(a);
    svlm_llama_ctx_free(b);
    svlm_llama_free(model);
    svlm_kernels_destroy(kern);
    return 0;
}
