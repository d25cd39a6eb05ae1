/* The decoder against llama.cpp's logits for stories260K, plus cache and batching invariants. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "llm/llama_internal.h"
#include "test.h"

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m)) m = d; /* NaN propagates as a failure */
    }
    return m;
}

/* The 44-token prompt of fixtures/stories260K/logits_prompt.json. */
static const int32_t prompt[] = {1,   403, 407, 261, 378, 432, 383, 286, 261, 376, 400, 428, 395, 392, 412,
                                 444, 426, 392, 412, 444, 397, 355, 267, 352, 379, 322, 265, 282, 295, 433,
                                 335, 345, 374, 432, 261, 262, 423, 388, 268, 315, 418, 426, 385, 328};
enum { N = sizeof prompt / sizeof prompt[0] };

int test_main(void) {
    test_data_or_skip();
    svlm_err err = {0};
    svlm_kernels *k = NULL;
    svlm_llama *m = NULL;
    REQUIRE(svlm_kernels_create_cpu(2, &k, &err) == SVLM_OK, "%s", err.msg);
    REQUIRE(svlm_llama_load(test_data("models/stories260K.gguf"), &m, &err) == SVLM_OK, "%s", err.msg);
    const svlm_llama_hparams *hp = svlm_llama_hparams_of(m);
    CHECK(hp->n_vocab == 512 && hp->n_embd == 64 && hp->n_layer == 5 && hp->n_head == 8 &&
              hp->n_head_kv == 4 && hp->n_ff == 172 && hp->rope_base == 10000.0f && !hp->tied_output,
          "unexpected hparams");
    const int V = hp->n_vocab;
    size_t n_ref = 0;
    float *ref = test_read_f32(test_data("fixtures/stories260K/logits_prompt.f32"), &n_ref);
    REQUIRE(ref && n_ref == (size_t)N * V, "cannot read logits_prompt.f32");

    /* 1. whole prompt in one batch, F32 cache: within 1e-4 of llama.cpp (F32 KV, no flash-attn) */
    float *all = malloc(sizeof(float) * N * V), *step = malloc(sizeof(float) * N * V);
    svlm_llama_ctx *c = NULL;
    REQUIRE(svlm_llama_ctx_create(m, k, N, SVLM_F32, &c, &err) == SVLM_OK, "%s", err.msg);
    REQUIRE(svlm_llama_eval(c, prompt, NULL, N, all, 1, &err) == SVLM_OK, "%s", err.msg);
    double d = max_abs_diff(all, ref, (size_t)N * V);
    printf("batched prompt vs llama.cpp: max |d logit| = %.3g (tolerance 1e-4)\n", d);
    CHECK(d <= 1e-4, "batched logits differ by %g", d);

    /* 2. one token at a time gives the same rows (decode path = prefill path) */
    svlm_llama_ctx_reset(c);
    for (int i = 0; i < N; i++)
        REQUIRE(svlm_llama_eval(c, prompt + i, NULL, 1, step + (size_t)i * V, 0, &err) == SVLM_OK, "%s",
                err.msg);
    d = max_abs_diff(step, ref, (size_t)N * V);
    printf("token-by-token vs llama.cpp: max |d logit| = %.3g (tolerance 1e-4)\n", d);
    CHECK(d <= 1e-4, "step logits differ by %g", d);

    /* 3. the context is full now: one more token is refused, nothing is lost */
    int32_t one = 5;
    CHECK(svlm_llama_eval(c, &one, NULL, 1, NULL, 0, &err) == SVLM_E_LIMIT, "overflow not refused");
    CHECK(svlm_llama_ctx_n_past(c) == N, "a refused eval changed the cache");
    int32_t bad = V;
    svlm_llama_ctx_reset(c);
    CHECK(svlm_llama_eval(c, &bad, NULL, 1, NULL, 0, &err) == SVLM_E_INVALID, "bad id accepted");
    int32_t img = -1;
    CHECK(svlm_llama_eval(c, &img, NULL, 1, NULL, 0, &err) == SVLM_E_INVALID, "embedding without data");

    /* 4. embeddings passed in place of ids give the same logits as the ids themselves */
    {
        float *emb = malloc(sizeof(float) * N * hp->n_embd);
        int32_t ids[N];
        for (int i = 0; i < N; i++) {
            ids[i] = i % 3 ? prompt[i] : -1;
            svlm_dequantize_row(m->tok_embd.type,
                                (const uint8_t *)m->tok_embd.data + (size_t)prompt[i] * m->tok_embd.row_bytes,
                                emb + (size_t)i * hp->n_embd, hp->n_embd);
        }
        /* compact: rows only for the -1 positions, in order */
        int r = 0;
        for (int i = 0; i < N; i++)
            if (ids[i] < 0)
                memmove(emb + (size_t)r++ * hp->n_embd, emb + (size_t)i * hp->n_embd,
                        sizeof(float) * hp->n_embd);
        svlm_llama_ctx_reset(c);
        REQUIRE(svlm_llama_eval(c, ids, emb, N, step, 1, &err) == SVLM_OK, "%s", err.msg);
        d = max_abs_diff(step, all, (size_t)N * V);
        CHECK(d <= 1e-5, "embedding input differs by %g", d);
        free(emb);
    }
    svlm_llama_ctx_free(c);

    /* 5. F16 KV cache: close to F32 (llama.cpp's F16+flash-attn run differs by 0.0145 at most) */
    REQUIRE(svlm_llama_ctx_create(m, k, N, SVLM_F16, &c, &err) == SVLM_OK, "%s", err.msg);
    REQUIRE(svlm_llama_eval(c, prompt, NULL, N, step, 1, &err) == SVLM_OK, "%s", err.msg);
    d = max_abs_diff(step, ref, (size_t)N * V);
    printf("F16 KV cache vs F32 reference: max |d logit| = %.3g (tolerance 2e-2)\n", d);
    CHECK(d <= 2e-2, "F16 cache differs by %g", d);
    svlm_llama_ctx_free(c);

    /* 6. loading errors are reported, not crashed on */
    svlm_llama *bad_m = NULL;
    CHECK(svlm_llama_load(test_data("models/vocab/ggml-vocab-gpt-2.gguf"), &bad_m, &err) != SVLM_OK && !bad_m,
          "a vocab-only file loaded as a model");
    CHECK(strlen(err.msg) > 0, "no error message");
    CHECK(svlm_llama_load("/nonexistent/model.gguf", &bad_m, &err) != SVLM_OK && !bad_m, "missing file");

    free(all);
    free(step);
    free(ref);
    svlm_llama_free(m);
    svlm_kernels_destroy(k);
    return 0;
}
