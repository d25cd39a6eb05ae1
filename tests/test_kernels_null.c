/*
 * The null backend's contract (kernels/kernels_null.c), which bench-streams' host-ceiling figures
 * rest on:
 *  - it is created by name, says it is a GPU and computes nothing;
 *  - a copy between two of its blocks (from any null backend: one "device") is skipped, one from
 *    or to host memory is done;
 *  - logits read from its blocks or from a product into host memory have their largest value at
 *    an ordinary token for the vocabulary sizes svlm meets (never the first 17 ids nor the last
 *    128, where special and end-of-turn tokens live), so greedy answers run their full length;
 *    svlm_k_argmax over its blocks gives, without reading them, the index the rows hold, and over
 *    host rows their true argmax;
 *  - it counts its blocks as device memory;
 *  - the pixels' upload copies no more than the patches hold (tiles whose side the patch does not
 *    divide);
 *  - unknown backend names still fail with a message.
 */
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "test.h"

static int64_t argmax(const float *x, int64_t n) {
    int64_t best = 0;
    for (int64_t i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

static void check_rows(const float *logits, int64_t rows, int64_t vocab, const char *where) {
    for (int64_t r = 0; r < rows; r++) {
        const int64_t j = argmax(logits + r * vocab, vocab);
        CHECK(j >= 17 && j < vocab - 128, "%s: vocabulary %lld, row %lld: greedy picks id %lld", where,
              (long long)vocab, (long long)r, (long long)j);
    }
}

int test_main(void) {
    svlm_err err = {0};
    svlm_kernels *a = NULL, *b = NULL;
    REQUIRE(svlm_kernels_create_named("null", 1, &a, &err) == SVLM_OK, "%s", err.msg);
    REQUIRE(svlm_kernels_create_named("null", 1, &b, &err) == SVLM_OK, "%s", err.msg);
    CHECK(svlm_kernels_is_gpu(a), "the null backend takes a GPU's policies: is_gpu is 0");
    CHECK(!svlm_kernels_computes(a), "the null backend says it computes");
    CHECK(!strncmp(svlm_kernels_name(a), "null", 4), "name %s", svlm_kernels_name(a));

    /* copies: device to device skipped (across backends too), host to device and back done */
    enum { N = 4096 };
    float *d1 = svlm_k_alloc(a, sizeof(float) * N), *d2 = svlm_k_alloc(b, sizeof(float) * N);
    float host[N], back[N];
    REQUIRE(d1 && d2, "null blocks not allocated");
    for (int i = 0; i < N; i++)
        host[i] = (float)(7 * i % 101) - 50.0f;
    const float before = d2[5];
    svlm_k_copy(a, d2, d1 + 1, sizeof(float) * 100); /* a device-side copy: nothing happens */
    CHECK(d2[5] == before, "a copy between two null blocks was done (%g -> %g)", before, d2[5]);
    svlm_k_copy(a, d1, host, sizeof host);
    svlm_k_copy(b, back, d1, sizeof back);
    CHECK(!memcmp(host, back, sizeof host), "host -> null block -> host did not give the bytes back");
    /* every op call counts, on its own backend: a's two copies (the skipped one too), b's one */
    CHECK(svlm_kernels_ops(a) == 2 && svlm_kernels_ops(b) == 1, "op counts %llu and %llu, expected 2 and 1",
          (unsigned long long)svlm_kernels_ops(a), (unsigned long long)svlm_kernels_ops(b));
    svlm_k_add(a, d1, d1, N);
    svlm_k_copy(a, d1, d1, 0); /* nothing to do: kernels.c never calls the backend */
    CHECK(svlm_kernels_ops(a) == 3, "op count %llu after an add, expected 3",
          (unsigned long long)svlm_kernels_ops(a));

    /* logits: in a fresh block (a batch's, on the "device") and from a product into host memory */
    const int64_t vocabs[] = {1024, 32000, 49152, 49280, 151936};
    for (size_t v = 0; v < sizeof vocabs / sizeof vocabs[0]; v++) {
        const int64_t V = vocabs[v], rows = 16;
        float *dev = svlm_k_alloc(a, sizeof(float) * (size_t)(rows * V));
        float *out = malloc(sizeof(float) * (size_t)(rows * V));
        REQUIRE(dev && out, "out of memory");
        check_rows(dev, rows, V, "a fresh block");
        /* the greedy search, from the block's start (an ordinary token) and from inside it (rows of
         * another length: the index the rows hold) */
        int32_t ids[16];
        const int64_t offs[2] = {0, 5}, dims[2] = {V, V - 7};
        for (int o = 0; o < 2; o++) {
            const float *x = dev + offs[o];
            svlm_k_argmax(a, x, rows - 1, dims[o], ids);
            for (int64_t r = 0; r < rows - 1; r++) {
                const int64_t want = argmax(x + r * dims[o], dims[o]);
                CHECK(ids[r] == want && (o || (want >= 17 && want < dims[o] - 128)),
                      "argmax over a block (offset %lld, rows of %lld), row %lld: %d, the row's is %lld",
                      (long long)offs[o], (long long)dims[o], (long long)r, ids[r], (long long)want);
            }
        }
        /* short rows, some without a peak of the pattern */
        svlm_k_argmax(a, dev, 7, 100, ids);
        for (int64_t r = 0; r < 7; r++)
            CHECK(ids[r] == argmax(dev + r * 100, 100),
                  "argmax over rows of 100, row %lld: %d, the row's is %lld", (long long)r, ids[r],
                  (long long)argmax(dev + r * 100, 100));
        for (int64_t i = 0; i < V; i++)
            out[i] = (float)((i * 7919) % 10007);
        svlm_k_argmax(a, out, 1, V, ids);
        CHECK(ids[0] == argmax(out, V), "argmax over host memory: %d, expected %lld", ids[0],
              (long long)argmax(out, V));
        const svlm_weight head = {.type = SVLM_F32, .rows = V, .cols = 8, .data = NULL, .row_bytes = 32};
        svlm_k_matmul(a, &head, d1, rows, out);
        check_rows(out, rows, V, "a product into host memory");
        svlm_k_free(a, dev);
        free(out);
    }
    /* the pixels' upload fills only what the patches hold: a 60-pixel tile of 14-pixel patches
     * (tiny-p14, as 2.2B's 384 / 14) has 16 patches of 588 values, fewer than its 10800 pixels
     * (ASan catches a longer copy) */
    {
        const int B = 2, S = 60, P = 14, g = S / P;
        const size_t held = (size_t)B * g * g * 3 * P * P;
        float *pixels = malloc(sizeof(float) * (size_t)B * 3 * S * S);
        float *patches = svlm_k_alloc(a, sizeof(float) * held), *y = svlm_k_alloc(a, sizeof(float) * 64);
        REQUIRE(pixels && patches && y, "out of memory");
        for (int i = 0; i < B * 3 * S * S; i++)
            pixels[i] = (float)i;
        const svlm_weight pw = {.type = SVLM_F16, .rows = 8, .cols = 3 * P * P, .data = NULL, .row_bytes = 0};
        svlm_k_patch_embed(a, &pw, pixels, B, S, P, patches, y);
        CHECK(patches[held - 1] == (float)(held - 1), "the pixels' upload did not reach the patches' end");
        svlm_k_im2col(a, patches, pixels, B, S, P, 0);
        free(pixels);
        svlm_k_free(a, patches);
        svlm_k_free(a, y);
    }
    /* device memory: every null backend's blocks, counted as they come and go */
    size_t used0 = 0, used1 = 0, used2 = 0, total = 1;
    CHECK(svlm_kernels_device_memory(a, &used0, &total) && total == 0, "device memory unknown (total %zu)",
          total);
    void *blk = svlm_k_alloc(b, 1000);
    svlm_kernels_device_memory(a, &used1, &total);
    svlm_k_free(b, blk);
    svlm_kernels_device_memory(b, &used2, &total);
    CHECK(used0 >= 2 * sizeof(float) * N && used1 == used0 + 1024 && used2 == used0,
          "device memory %zu, with a 1000-byte block %zu, after it %zu", used0, used1, used2);
    svlm_k_free(a, d1);
    svlm_k_free(b, d2);
    svlm_kernels_destroy(a);
    svlm_kernels_destroy(b);

    svlm_kernels *cpu = NULL;
    REQUIRE(svlm_kernels_create_named("cpu", 1, &cpu, &err) == SVLM_OK, "%s", err.msg);
    CHECK(svlm_kernels_computes(cpu), "the CPU backend says it computes nothing");
    CHECK(!svlm_kernels_device_memory(cpu, &used0, &total), "the CPU backend reported device memory");
    svlm_kernels_destroy(cpu);

    svlm_kernels *bad = NULL;
    CHECK(svlm_kernels_create_named("nul", 1, &bad, &err) == SVLM_E_INVALID && !bad &&
              strstr(err.msg, "null"),
          "an unknown name: %s", err.msg);
    return 0;
}
