/*
 * The vision-tiny fixture models (SVLM_TEST_DATA) that the engine tests run on the CPU backend;
 * a skip (77), said, without them.
 */
#ifndef SVLM_TESTS_TEST_TINY_MODELS_H
#define SVLM_TESTS_TEST_TINY_MODELS_H

#include <stdlib.h>

#include "llm/llama.h"
#include "pipeline/stream.h"
#include "test.h"
#include "vision/mmproj.h"

static inline void tiny_models_load(svlm_llama **m, svlm_mmproj **mp) {
    const char *tp = test_data("fixtures/vision-tiny/models/tiny-smolvlm-text-f32.gguf");
    const char *mpp = test_data("fixtures/vision-tiny/models/tiny-smolvlm-mmproj-f32.gguf");
    if (!tp || !mpp) SKIP("test data folder not found (set SVLM_TEST_DATA): no vision-tiny models");
    setenv("SVLM_BACKEND", "cpu", 1);
    svlm_err err = {0};
    REQUIRE(svlm_llama_load(tp, m, &err) == SVLM_OK, "%s", err.msg);
    REQUIRE(svlm_mmproj_load(mpp, mp, &err) == SVLM_OK, "%s", err.msg);
}

/* A stream's budgets on these models: 16 sink tokens, a window of `frames` frames and `text` tokens
 * of dialogue, f32 cache rows. */
static inline svlm_stream_params tiny_stream_params(const svlm_mmproj *mp, int frames, int text) {
    return (svlm_stream_params){.sink_tokens = 16,
                                .vision_tokens = frames * mp->hp.tokens_per_tile,
                                .text_tokens = text,
                                .rows_per_frame = mp->hp.tokens_per_tile,
                                .kv_type = SVLM_F32};
}

#endif
