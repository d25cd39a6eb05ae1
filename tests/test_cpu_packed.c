/*
 * The GEMMs' packed weights, kept once per process (kernels/cpu/packed_weights.c): with the
 * cache the products are bit for bit those of per-call packing (cap 0), for Q8_0, Q4_K, BF16 (the
 * bf16 GEMM) and F16 (the f16 GEMM) weights of 700 rows (panels of 96 and a partial strip) and 17
 * and 64 token rows; 7 rows (a decode batch) take the kept copy at the AVX-512 level, bit for bit
 * the first rows of a larger product, and with nothing kept and a cap of 0 pack nothing (the dot
 * products serve them);
 * an F16 weight through both GEMMs (SVLM_BF16=all on one backend) gets each GEMM's own packing;
 * the same for the AVX2 level's f16 GEMM with Q8_0, Q4_K and F16 weights;
 * the second product uses the kept copy (the cache's size does not grow); new contents at the same address
 * are seen (the entry's checksum no longer matches); a weight under 64 KB is never kept; and over
 * the cap nothing is kept, each product packing its own; two backends on two threads using one new
 * weight at once (one packs it, the other packs its own meanwhile or uses the kept copy) get the
 * same products (run under ThreadSanitizer in CI); svlm_k_forget and svlm_kernels_forget_range drop
 * a weight's copy. The AVX2 checks need that level, the rest the AVX-512 BF16 level (skips
 * without them).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/kernels.h"
#include "test.h"

enum { ROWS = 700, COLS = 512, MAXN = 64 };

static uint32_t rng = 7u;
static void fill(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        rng = rng * 1664525u + 1013904223u;
        x[i] = (float)(rng >> 8) / 8388608.0f - 1.0f;
    }
}

static void quantize(svlm_dtype t, const float *src, void *data, int64_t rows, int64_t cols) {
    const size_t rb = svlm_row_bytes(t, cols);
    for (int64_t r = 0; r < rows; r++)
        REQUIRE(svlm_quantize_row(t, src + r * cols, (char *)data + (size_t)r * rb, cols) == 0, "quantize");
}

/* y = w x for n rows through the cache (a large cap), or packed per call: w's bytes copied to an
 * address the cache has no entry for, with a cap of 0. */
static void product(svlm_kernels *k, const svlm_weight *w, const float *x, int64_t n, float *y, int cached) {
    if (cached) {
        svlm_cpu_packed_set_limit((size_t)1 << 30);
        svlm_k_matmul(k, w, x, n, y);
        return;
    }
    const size_t bytes = (size_t)w->rows * w->row_bytes;
    void *copy = malloc(bytes);
    REQUIRE(copy, "out of memory");
    memcpy(copy, w->data, bytes);
    svlm_weight wc = *w;
    wc.data = copy;
    svlm_cpu_packed_set_limit(0);
    const size_t kept = svlm_cpu_packed_bytes();
    svlm_k_matmul(k, &wc, x, n, y);
    CHECK(svlm_cpu_packed_bytes() == kept, "a product with a cap of 0 kept its packing");
    free(copy);
}

/* decode_rows: a batch under 16 rows that takes the kept copy at this level (0: none does) */
static void check_type(svlm_kernels *k, svlm_dtype t, float *src, float *x, int64_t decode_rows) {
    const size_t rb = svlm_row_bytes(t, COLS);
    void *data = malloc(rb * ROWS);
    float *y0 = malloc(sizeof(float) * MAXN * ROWS), *y1 = malloc(sizeof(float) * MAXN * ROWS);
    REQUIRE(data && y0 && y1, "out of memory");
    const char *name = svlm_dtype_get(t)->name;
    fill(src, (size_t)ROWS * COLS);
    quantize(t, src, data, ROWS, COLS);
    svlm_weight w = {t, ROWS, COLS, data, rb};
    const int64_t ns[] = {17, MAXN};
    for (int ni = 0; ni < 2; ni++) {
        const int64_t n = ns[ni];
        fill(x, (size_t)n * COLS);
        product(k, &w, x, n, y0, 0);
        const size_t before = svlm_cpu_packed_bytes();
        product(k, &w, x, n, y1, 1);
        CHECK(!memcmp(y0, y1, sizeof(float) * (size_t)(n * ROWS)), "%s n %lld: kept packing differs", name,
              (long long)n);
        const size_t kept = svlm_cpu_packed_bytes();
        CHECK(kept > before || ni > 0, "%s: the first cached product kept nothing", name);
        product(k, &w, x, n, y1, 1);
        CHECK(!memcmp(y0, y1, sizeof(float) * (size_t)(n * ROWS)) && svlm_cpu_packed_bytes() == kept,
              "%s n %lld: the second product differs or packed again", name, (long long)n);
    }
    if (decode_rows) { /* a decode batch: the kept copy, the same sums as the first rows of 64 */
        product(k, &w, x, decode_rows, y0, 1);
        CHECK(!memcmp(y0, y1, sizeof(float) * (size_t)(decode_rows * ROWS)),
              "%s n %lld: differs from the rows of a product of 64", name, (long long)decode_rows);
        product(k, &w, x, decode_rows, y0, 0); /* (checks that nothing is kept: no packing per call either) */
    }
    /* new contents at the same address: the old packing must not be used */
    fill(src, (size_t)ROWS * COLS);
    quantize(t, src, data, ROWS, COLS);
    fill(x, (size_t)MAXN * COLS);
    product(k, &w, x, MAXN, y0, 0);
    product(k, &w, x, MAXN, y1, 1);
    CHECK(!memcmp(y0, y1, sizeof(float) * (size_t)(MAXN * ROWS)),
          "%s: new weights at the same address unseen", name);
    /* forgotten (a buffer about to be freed or rewritten, a model file closing): dropped */
    const size_t held = svlm_cpu_packed_bytes();
    if (t == SVLM_BF16)
        svlm_kernels_forget_range(data, rb * ROWS);
    else
        svlm_k_forget(k, data);
    CHECK(svlm_cpu_packed_bytes() < held, "%s: forgetting the weight kept its packing (%zu bytes)", name,
          held);
    free(data);
    free(y0);
    free(y1);
}

typedef struct lane {
    svlm_kernels *k;
    const svlm_weight *w;
    const float *x;
    float *y;
} lane;

static void *lane_run(void *arg) {
    lane *l = arg;
    for (int i = 0; i < 3; i++)
        svlm_k_matmul(l->k, l->w, l->x, MAXN, l->y + (size_t)i * MAXN * ROWS);
    return NULL;
}

/* A CPU backend made with SVLM_SIMD=simd and SVLM_BF16=bf16 (NULL: unset); NULL with *st
 * SVLM_E_UNSUPPORTED where this CPU lacks the level. */
static svlm_kernels *backend(const char *simd, const char *bf16, svlm_status *st, svlm_err *err) {
    svlm_kernels *k = NULL;
    setenv("SVLM_SIMD", simd, 1);
    if (bf16) setenv("SVLM_BF16", bf16, 1);
    *st = svlm_kernels_create_cpu(2, &k, err);
    unsetenv("SVLM_SIMD");
    unsetenv("SVLM_BF16");
    REQUIRE(*st == SVLM_OK || *st == SVLM_E_UNSUPPORTED, "%s", err->msg);
    return k;
}

/* A new ROWS x COLS weight of type t (its data is the caller's to free) and MAXN input rows. */
static svlm_weight new_weight(svlm_dtype t, float *src, float *x) {
    const size_t rb = svlm_row_bytes(t, COLS);
    void *data = malloc(rb * ROWS);
    REQUIRE(data, "out of memory");
    fill(src, (size_t)ROWS * COLS);
    quantize(t, src, data, ROWS, COLS);
    fill(x, (size_t)MAXN * COLS);
    return (svlm_weight){t, ROWS, COLS, data, rb};
}

/* Two lanes at once on a weight nobody packed yet. */
static void two_lanes(svlm_kernels *k0, float *src, float *x) {
    svlm_err err = {0};
    svlm_status st;
    svlm_kernels *k1 = backend("avx512", NULL, &st, &err);
    float *y = malloc(sizeof(float) * 7 * MAXN * ROWS);
    REQUIRE(k1 && y, "out of memory");
    svlm_weight w = new_weight(SVLM_Q8_0, src, x);
    void *data = (void *)w.data;
    product(k0, &w, x, MAXN, y, 0); /* the reference, packed per call */
    svlm_cpu_packed_set_limit((size_t)1 << 30);
    lane a = {k0, &w, x, y + (size_t)MAXN * ROWS}, b = {k1, &w, x, y + (size_t)4 * MAXN * ROWS};
    pthread_t th;
    REQUIRE(pthread_create(&th, NULL, lane_run, &b) == 0, "thread");
    lane_run(&a);
    pthread_join(th, NULL);
    for (int i = 1; i < 7; i++)
        CHECK(!memcmp(y, y + (size_t)i * MAXN * ROWS, sizeof(float) * MAXN * ROWS),
              "two lanes at once: product %d differs", i);
    free(data);
    free(y);
    svlm_kernels_destroy(k1);
}

/* One F16 weight through the f16 GEMM (default) and the bf16 GEMM (SVLM_BF16=all): each backend
 * keeps and uses its own layout, so each product equals its own packing per call. */
static void both_layouts(svlm_kernels *k0, float *src, float *x) {
    svlm_err err = {0};
    svlm_status st;
    svlm_kernels *k1 = backend("avx512", "all", &st, &err);
    float *y = malloc(sizeof(float) * 4 * MAXN * ROWS);
    REQUIRE(k1 && y, "out of memory");
    svlm_weight w = new_weight(SVLM_F16, src, x);
    void *data = (void *)w.data;
    float *f16_own = y, *bf16_own = y + MAXN * ROWS, *f16_kept = y + 2 * MAXN * ROWS,
          *bf16_kept = y + 3 * MAXN * ROWS;
    product(k0, &w, x, MAXN, f16_own, 0);
    product(k1, &w, x, MAXN, bf16_own, 0);
    CHECK(memcmp(f16_own, bf16_own, sizeof(float) * MAXN * ROWS),
          "f16 and bf16 GEMMs gave the same products");
    const size_t before = svlm_cpu_packed_bytes();
    for (int round = 0; round < 2; round++) { /* the second round finds both copies kept */
        product(k0, &w, x, MAXN, f16_kept, 1);
        product(k1, &w, x, MAXN, bf16_kept, 1);
        CHECK(!memcmp(f16_own, f16_kept, sizeof(float) * MAXN * ROWS),
              "F16 weight, f16 GEMM: round %d differs", round);
        CHECK(!memcmp(bf16_own, bf16_kept, sizeof(float) * MAXN * ROWS),
              "F16 weight, bf16 GEMM: round %d differs", round);
    }
    CHECK(svlm_cpu_packed_bytes() >= before + 2 * (size_t)ROWS * COLS * 2, "both layouts were not kept");
    svlm_k_forget(k0, data);
    free(data);
    free(y);
    svlm_kernels_destroy(k1);
}

int test_main(void) {
    svlm_err err = {0};
    float *src = malloc(sizeof(float) * ROWS * COLS), *x = malloc(sizeof(float) * MAXN * COLS);
    REQUIRE(src && x, "out of memory");
    /* the AVX2 level's f16 GEMM packs F16 and quantized weights (BF16 ones take the f32 GEMM) */
    svlm_status st;
    svlm_kernels *k2 = backend("avx2", NULL, &st, &err);
    if (!k2) SKIP("no AVX2 level on this CPU: %s", err.msg);
    const svlm_dtype avx2_types[] = {SVLM_Q8_0, SVLM_Q4_K, SVLM_F16};
    for (size_t i = 0; i < sizeof avx2_types / sizeof avx2_types[0]; i++)
        check_type(k2, avx2_types[i], src, x, 0); /* (decode batches take the dot products) */
    svlm_kernels_destroy(k2);

    svlm_kernels *k = backend("avx512", NULL, &st, &err);
    /* (without AVX-512 BF16 the run ends here: failed if the AVX2 checks failed, else skipped) */
    REQUIRE(!svlm_test_failures, "the AVX2 level's checks failed");
    if (!k) SKIP("AVX2 level checked; no AVX-512 level on this CPU: %s", err.msg);
    if (!strstr(svlm_kernels_name(k), "bf16"))
        SKIP("AVX2 level checked; no AVX-512 BF16 on this CPU (%s)", svlm_kernels_name(k));
    const svlm_dtype types[] = {SVLM_Q8_0, SVLM_Q4_K, SVLM_BF16, SVLM_F16};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        check_type(k, types[i], src, x, 7);
    two_lanes(k, src, x);
    both_layouts(k, src, x);

    /* a small weight is never kept; over the cap nothing is */
    const svlm_dtype t = SVLM_Q8_0;
    const size_t rb = svlm_row_bytes(t, COLS);
    void *small = malloc(rb * 32), *big = malloc(rb * ROWS);
    float *y = malloc(sizeof(float) * MAXN * ROWS);
    REQUIRE(small && big && y, "out of memory");
    fill(src, (size_t)ROWS * COLS);
    quantize(t, src, small, 32, COLS);
    quantize(t, src, big, ROWS, COLS);
    fill(x, (size_t)MAXN * COLS);
    svlm_weight ws = {t, 32, COLS, small, rb}, wb = {t, ROWS, COLS, big, rb};
    size_t kept = svlm_cpu_packed_bytes();
    product(k, &ws, x, MAXN, y, 1);
    CHECK(svlm_cpu_packed_bytes() == kept, "a %zu-byte weight was kept", rb * 32);
    svlm_cpu_packed_set_limit(kept + 1024); /* room for nothing more */
    svlm_k_matmul(k, &wb, x, MAXN, y);
    CHECK(svlm_cpu_packed_bytes() == kept, "a weight over the cap was kept");
    printf("packed weights kept: %.1f MiB\n", (double)svlm_cpu_packed_bytes() / (1 << 20));
    free(small);
    free(big);
    free(y);
    free(src);
    free(x);
    svlm_kernels_destroy(k);
    return 0;
}
