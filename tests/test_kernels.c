/*
 * The CPU kernels against scalar double-precision references, at every SIMD level this CPU
 * has (forced through SVLM_SIMD), with odd sizes. Matmuls of every weight type are compared
 * with dequantize (the reference dtype.c) + f32 dot; the tolerance is the error that 8-bit
 * activation quantization may cause (per 32-value block, half a step of max|x|/127 times
 * sum|w|) plus float rounding. Batched matmuls (from 6 rows of a weight packed once, from 16 of
 * any) of quantized and BF16 weights at the AVX-512 level, and of F16 ones with SVLM_BF16=all, use
 * bf16 products: both operands rounded to 8 significant bits (2^-8 relative each), so each product
 * may be off by 2^-7 of itself. At the AVX2 level the same batches of quantized weights take the
 * f16 GEMM: weights rounded to 11 significant bits (2^-11 relative), activations exact. SVLM_KERNEL_BENCH=1
 * runs the benchmarks instead.
 */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/threadpool.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/dtype.h"
#include "kernels/kernels.h"
#include "test.h"
#include "test_argmax_rows.h"
#include "test_ref_attention.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;
static float frand(void) { /* uniform in [-1, 1) */
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((rng_state >> 40) * (1.0 / 8388608.0)) - 1.0f;
}
static void fill(float *x, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++)
        x[i] = frand() * scale;
}

/* indices as svlm_cpu_level: x86-64's levels, then AArch64's (a CPU has one family) */
static const char *levels[] = {"scalar", "avx2", "avx512", "neon", "neon-dotprod"};
enum { N_LEVELS = sizeof levels / sizeof levels[0] };

/* Creates the backend at a forced level; NULL when this CPU lacks it. */
static svlm_kernels *make_kernels(const char *level, int threads) {
    setenv("SVLM_SIMD", level, 1);
    svlm_kernels *k = NULL;
    svlm_err err;
    svlm_status st = svlm_kernels_create_cpu(threads, &k, &err);
    unsetenv("SVLM_SIMD");
    if (st == SVLM_E_UNSUPPORTED) return NULL;
    REQUIRE(st == SVLM_OK, "create cpu kernels at %s: %s", level, err.msg);
    return k;
}

/* ---- f32 GEMM (attention's products and F32 weights) ---- */

/* Both forms of the backend's f32 GEMM against a double-precision reference on shapes that
 * leave every edge of the blocking (rows past a 12-row panel, columns past a 32-column strip and
 * a 16-wide transpose, K past a 256 slice and not a multiple of 16; the one- to four-row forms of
 * decode attention, keys past eight and columns past 64) and on strided operands. */
static void test_gemm(svlm_kernels *k) {
    static const int64_t Ms[] = {1, 2, 3, 4, 5, 12, 13, 64}, Ns[] = {1, 8, 17, 33, 64, 70},
                         Ks[] = {1, 8, 15, 64, 300};
    int bad = 0, cases = 0;
    for (size_t mi = 0; mi < 8; mi++)
        for (size_t ni = 0; ni < 6; ni++)
            for (size_t ki = 0; ki < 5; ki++)
                for (int trans = 0; trans < 2; trans++) {
                    const int64_t M = Ms[mi], N = Ns[ni], K = Ks[ki], pad = 3;
                    const int64_t lda = K + pad, ldb = (trans ? K : N) + pad, ldc = N + pad;
                    float *A = malloc(sizeof(float) * (size_t)(M * lda)),
                          *B = malloc(sizeof(float) * (size_t)((trans ? N : K) * ldb)),
                          *C = malloc(sizeof(float) * (size_t)(M * ldc));
                    REQUIRE(A && B && C, "out of memory");
                    for (int64_t i = 0; i < M * lda; i++)
                        A[i] = frand();
                    for (int64_t i = 0; i < (trans ? N : K) * ldb; i++)
                        B[i] = frand();
                    for (int64_t i = 0; i < M * ldc; i++)
                        C[i] = 1e30f; /* every element must be written; the padding must stay */
                    (trans ? k->cpu.mm.gemm_nt : k->cpu.mm.gemm_nn)(&k->cpu, 0, M, N, K, A, lda, B, ldb, C,
                                                                    ldc);
                    for (int64_t i = 0; i < M; i++)
                        for (int64_t j = 0; j < ldc; j++) {
                            if (j >= N) {
                                bad += C[i * ldc + j] != 1e30f;
                                continue;
                            }
                            double want = 0, mag = 0;
                            for (int64_t q = 0; q < K; q++) {
                                double b = trans ? B[j * ldb + q] : B[q * ldb + j];
                                want += (double)A[i * lda + q] * b;
                                mag += fabs((double)A[i * lda + q] * b);
                            }
                            bad += !(fabs(C[i * ldc + j] - want) <= 1e-5 * mag + 1e-30);
                        }
                    cases++;
                    free(A);
                    free(B);
                    free(C);
                }
    CHECK(bad == 0, "%s: %d GEMM elements off (or padding written) over %d shapes", svlm_kernels_name(k), bad,
          cases);
}

/* ---- thread pool ---- */

typedef struct pool_ctx {
    svlm_pool *pool;
    atomic_int hits[1000];
    atomic_int nested;
} pool_ctx;

typedef struct nested_ctx {
    pool_ctx *outer;
    int thread; /* the outer task's thread: an inline run must keep it */
} nested_ctx;

static void nested_task(void *ctx, int task, int thread) {
    (void)task;
    nested_ctx *n = ctx;
    atomic_fetch_add(&n->outer->nested, thread == n->thread ? 1 : 1000);
}
static void count_task(void *ctx, int task, int thread) {
    pool_ctx *c = ctx;
    atomic_fetch_add(&c->hits[task], 1);
    if (thread < 0 || thread >= svlm_pool_size(c->pool)) atomic_fetch_add(&c->hits[task], 100);
    if (task % 100 == 0) { /* runs inline */
        nested_ctx n = {c, thread};
        svlm_pool_run(c->pool, nested_task, &n, 3);
    }
}

typedef struct sum_ctx {
    atomic_llong sum;
    atomic_int count;
} sum_ctx;

static void sum_task(void *ctx, int task, int thread) {
    (void)thread;
    sum_ctx *c = ctx;
    atomic_fetch_add(&c->sum, task);
    atomic_fetch_add(&c->count, 1);
}

static void test_pool(void) {
    { /* more tasks than one run counts: split into several, indices still 0..n-1 once each */
        svlm_pool *p;
        svlm_err err;
        REQUIRE(svlm_pool_create(2, &p, &err) == SVLM_OK, "pool: %s", err.msg);
        static sum_ctx c;
        const int n = (1 << 20) + 5;
        svlm_pool_run(p, sum_task, &c, n);
        CHECK(atomic_load(&c.count) == n && atomic_load(&c.sum) == (long long)n * (n - 1) / 2,
              "big run: %d tasks, sum %lld", atomic_load(&c.count), (long long)atomic_load(&c.sum));
        svlm_pool_destroy(p);
    }
    for (int threads = 1; threads <= 3; threads++) {
        svlm_pool *p;
        svlm_err err;
        REQUIRE(svlm_pool_create(threads, &p, &err) == SVLM_OK, "pool: %s", err.msg);
        CHECK(svlm_pool_size(p) == threads, "pool size %d", svlm_pool_size(p));
        static pool_ctx c;
        for (int round = 0; round < 200; round++) {
            memset(&c, 0, sizeof c);
            c.pool = p;
            int n = 1 + (round * 37) % 1000;
            svlm_pool_run(p, count_task, &c, n);
            int bad = 0;
            for (int t = 0; t < n; t++)
                bad += atomic_load(&c.hits[t]) != 1;
            CHECK(bad == 0, "threads %d round %d: %d tasks not run exactly once", threads, round, bad);
            CHECK(atomic_load(&c.nested) == 3 * ((n + 99) / 100), "nested runs %d", atomic_load(&c.nested));
        }
        svlm_pool_destroy(p);
    }
}

/* Many short runs on several pools at once, each driven by its own thread (as when a server
 * runs several models): a lost wake-up would hang here, a task run twice or never shows in the
 * sums. Short on purpose: it should take well under a second. */
enum { STRESS_POOLS = 3, STRESS_RUNS = 3000 };

typedef struct stress_ctx {
    int pool_threads;
    int bad;
} stress_ctx;

static void *stress_driver(void *arg) {
    stress_ctx *s = arg;
    svlm_pool *p;
    svlm_err err;
    if (svlm_pool_create(s->pool_threads, &p, &err) != SVLM_OK) {
        s->bad = -1;
        return NULL;
    }
    sum_ctx c;
    for (int r = 0; r < STRESS_RUNS; r++) {
        int n = 1 + r % 7;
        atomic_store(&c.sum, 0);
        atomic_store(&c.count, 0);
        svlm_pool_run(p, sum_task, &c, n);
        if (atomic_load(&c.count) != n || atomic_load(&c.sum) != (long long)n * (n - 1) / 2) s->bad++;
        if (r % 500 == 499) { /* let the workers fall asleep: the next run must wake them */
            struct timespec ts = {0, 300000};
            nanosleep(&ts, NULL);
        }
    }
    svlm_pool_destroy(p);
    return NULL;
}

static void test_pool_stress(void) {
    pthread_t th[STRESS_POOLS];
    stress_ctx s[STRESS_POOLS];
    for (int i = 0; i < STRESS_POOLS; i++) {
        s[i] = (stress_ctx){2 + i % 2, 0};
        REQUIRE(pthread_create(&th[i], NULL, stress_driver, &s[i]) == 0, "pthread_create");
    }
    for (int i = 0; i < STRESS_POOLS; i++) {
        pthread_join(th[i], NULL);
        CHECK(s[i].bad == 0, "pool stress %d (%d threads): %d bad runs", i, s[i].pool_threads, s[i].bad);
    }
}

/* ---- matmul ---- */

static const svlm_dtype weight_types[] = {SVLM_F32,  SVLM_F16,  SVLM_BF16, SVLM_Q8_0, SVLM_Q4_0, SVLM_Q4_1,
                                          SVLM_Q5_0, SVLM_Q5_1, SVLM_Q4_K, SVLM_Q5_K, SVLM_Q6_K};

typedef struct wcase {
    svlm_weight w;
    float *deq; /* rows x cols, the reference values of the stored weights */
} wcase;

static wcase make_weight(svlm_dtype t, int64_t rows, int64_t cols) {
    wcase c;
    size_t rb = svlm_row_bytes(t, cols);
    REQUIRE(rb > 0, "row bytes of %s x %lld", svlm_dtype_get(t)->name, (long long)cols);
    float *src = malloc(sizeof(float) * (size_t)(rows * cols));
    c.deq = malloc(sizeof(float) * (size_t)(rows * cols));
    void *data = malloc(rb * (size_t)rows);
    REQUIRE(src && c.deq && data, "out of memory");
    fill(src, rows * cols, 0.5f);
    for (int64_t r = 0; r < rows; r++) {
        REQUIRE(svlm_quantize_row(t, src + r * cols, (char *)data + r * rb, cols) == 0, "quantize %s",
                svlm_dtype_get(t)->name);
        REQUIRE(svlm_dequantize_row(t, (char *)data + r * rb, c.deq + r * cols, cols) == 0, "dequantize");
    }
    free(src);
    c.w = (svlm_weight){t, rows, cols, data, rb};
    return c;
}

/* Max over outputs of |y - ref| / bound, where bound is what activation quantization allows. */
static double matmul_error(const wcase *c, const float *x, int64_t n, const float *y, int quantized,
                           double rounding) {
    int64_t rows = c->w.rows, cols = c->w.cols;
    double worst = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * cols;
        for (int64_t r = 0; r < rows; r++) {
            const float *w = c->deq + r * cols;
            double ref = 0.0, mag = 0.0, qbound = 0.0;
            for (int64_t b = 0; b < cols; b += 32) {
                double amax = 0.0, wsum = 0.0;
                for (int64_t j = 0; j < 32 && b + j < cols; j++) {
                    ref += (double)w[b + j] * xi[b + j];
                    mag += fabs((double)w[b + j] * xi[b + j]);
                    amax = fmax(amax, fabs(xi[b + j]));
                    wsum += fabs(w[b + j]);
                }
                qbound += wsum * amax / 254.0;
            }
            double bound = (rounding + 1e-5) * mag + 1e-30 + (quantized ? 1.01 * qbound : 0.0);
            double e = fabs(y[i * rows + r] - ref) / bound;
            if (e > worst) worst = e;
        }
    }
    return worst;
}

/* The relative rounding of each product when a batch of n rows of weight type t may go through
 * the bf16 GEMM at level li (2^-7; from 6 rows on where the weight is packed once, from 16 in any
 * case), or the AVX2 level's f16 GEMM with quantized weights rounded to f16 (2^-11; from 16 rows
 * on); 0 otherwise. */
static double product_rounding(size_t li, svlm_dtype t, int64_t n) {
    const char *bf16 = getenv("SVLM_BF16"), *f16 = getenv("SVLM_F16_GEMM");
    if (n < 6 || t == SVLM_F32) return 0;
    if (li == 1) /* (from 16 rows on only, at this level) */
        return n >= 16 && svlm_dtype_get(t)->is_quantized && !(f16 && !strcmp(f16, "0")) ? 1.0 / 2048 : 0;
    if (li != 2 || (bf16 && !strcmp(bf16, "0"))) return 0;
    return t != SVLM_F16 || (bf16 && !strcmp(bf16, "all")) ? 1.0 / 128 : 0;
}

/* One weight of type t with `cols` columns and `rows` rows, n = 1, 3, 7, 17, 20, 64, at every
 * level (the GEMMs' last tiles: AVX-512 8 and 4 rows, AVX2 6, 4 and 2). */
static void check_matmul(svlm_dtype t, int64_t rows, int64_t cols, float *x, float *y, float *y_scalar) {
    const int64_t ns[] = {1, 3, 7, 17, 20, 64};
    wcase c = make_weight(t, rows, cols);
    int quantized = svlm_dtype_get(t)->is_quantized;
    for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
        int64_t n = ns[ni];
        fill(x, n * cols, 2.0f);
        for (size_t li = 0; li < N_LEVELS; li++) {
            svlm_kernels *k = make_kernels(levels[li], li == 1 ? 3 : 2);
            if (!k) continue;
            svlm_k_matmul(k, &c.w, x, n, y);
            double rounding = product_rounding(li, t, n);
            double e = matmul_error(&c, x, n, y, quantized, rounding);
            CHECK(e <= 1.0, "%s %s cols=%lld n=%lld: error %.3g of the bound", svlm_kernels_name(k),
                  svlm_dtype_get(t)->name, (long long)cols, (long long)n, e);
            /* the SIMD levels compute the same sums as the scalar one, up to rounding */
            if (li == 0) {
                memcpy(y_scalar, y, sizeof(float) * (size_t)(n * rows));
            } else if (!rounding) {
                /* relative to the largest output: sums that cancel keep absolute rounding */
                double worst = 0.0, ymax = 1e-30;
                for (int64_t i = 0; i < n * rows; i++)
                    ymax = fmax(ymax, fabs(y_scalar[i]));
                for (int64_t i = 0; i < n * rows; i++)
                    worst = fmax(worst, fabs(y[i] - y_scalar[i]) / ymax);
                CHECK(worst < 1e-5, "%s %s cols=%lld n=%lld differs from scalar by %.3g",
                      svlm_kernels_name(k), svlm_dtype_get(t)->name, (long long)cols, (long long)n, worst);
            }
            svlm_kernels_destroy(k);
        }
    }
    free(c.deq);
    free((void *)c.w.data);
}

static void test_matmul(void) {
    const int64_t rows = 37; /* not a multiple of the thread counts or of a vector width */
    float *x = malloc(sizeof(float) * 64 * 768), *y = malloc(sizeof(float) * 64 * 221);
    float *y_scalar = malloc(sizeof(float) * 64 * 221);
    REQUIRE(x && y && y_scalar, "out of memory");
    for (size_t ti = 0; ti < sizeof weight_types / sizeof weight_types[0]; ti++) {
        svlm_dtype t = weight_types[ti];
        int bs = svlm_dtype_get(t)->block_size;
        /* one block (the minimum), then an odd number of blocks (SIMD loops unroll by two) */
        check_matmul(t, rows, bs == 1 ? 7 : bs, x, y, y_scalar);
        check_matmul(t, rows, bs == 256 ? 768 : (bs == 32 ? 96 : 83), x, y, y_scalar);
    }
    /* several weight panels per matmul (the bf16 GEMM packs 96 rows per task) */
    check_matmul(SVLM_F16, 211, 83, x, y, y_scalar);
    check_matmul(SVLM_Q8_0, 211, 64, x, y, y_scalar);
    /* weights of 64 KB and more are packed once: 7 rows take the packed GEMMs too */
    check_matmul(SVLM_F16, 211, 300, x, y, y_scalar);
    check_matmul(SVLM_Q8_0, 211, 512, x, y, y_scalar);
    /* a last strip of 29 rows (the AVX2 tile's second half partly masked), cached */
    check_matmul(SVLM_F16, 221, 300, x, y, y_scalar);
    check_matmul(SVLM_Q4_K, 221, 512, x, y, y_scalar);
    free(x);
    free(y);
    free(y_scalar);
}

/* svlm_k_matmul_multi gives what separate svlm_k_matmul calls give, bit for bit (same kernels),
 * for a mix of weight types sharing the input, in decode (n < 8) and batched. */
static void test_matmul_multi(void) {
    enum { COLS = 256, NW = 3 };
    const svlm_dtype types[NW] = {SVLM_Q8_0, SVLM_F16, SVLM_Q4_K};
    const int64_t rows[NW] = {37, 200, 19};
    static float x[16 * COLS], y_one[NW][16 * 200], y_multi[NW][16 * 200];
    wcase cs[NW];
    const svlm_weight *ws[NW];
    float *ys[NW];
    for (int i = 0; i < NW; i++) {
        cs[i] = make_weight(types[i], rows[i], COLS);
        ws[i] = &cs[i].w;
        ys[i] = y_multi[i];
    }
    for (size_t li = 0; li < N_LEVELS; li++) {
        svlm_kernels *k = make_kernels(levels[li], 2);
        if (!k) continue;
        const int64_t ns[] = {1, 2, 16};
        for (size_t ni = 0; ni < 3; ni++) {
            int64_t n = ns[ni];
            fill(x, n * COLS, 1.0f);
            int same = 1;
            for (int i = 0; i < NW; i++)
                svlm_k_matmul(k, ws[i], x, n, y_one[i]);
            svlm_k_matmul_multi(k, ws, NW, x, n, ys);
            for (int i = 0; i < NW; i++)
                same &= !memcmp(y_one[i], y_multi[i], sizeof(float) * (size_t)(n * rows[i]));
            CHECK(same, "%s matmul_multi n=%lld differs from separate matmuls", svlm_kernels_name(k),
                  (long long)n);
        }
        svlm_kernels_destroy(k);
    }
    for (int i = 0; i < NW; i++) {
        free(cs[i].deq);
        free((void *)cs[i].w.data);
    }
}

/* The vision encoder's fused ops (y += x W^T + b; layer norm + products with biases; the GELU
 * feed-forward half) against the op sequences they stand for on the same backend, at every level,
 * for Q8_0 and F16 weights of 64 KB and more (which the GEMMs over packed weights take, adding the
 * bias and residual as they store), 24, 20 and 7 rows: bit for bit ((sum + b) + y, as the sequence
 * adds them); also without a bias, and in place (x is y, which the CPU runs as the sequence). */
static void test_fused_bias(void) {
    const struct {
        svlm_dtype t;
        int64_t e, f; /* model width, feed-forward width */
    } cases[] = {{SVLM_Q8_0, 256, 288}, {SVLM_F16, 300, 200}};
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const int64_t E = cases[ci].e, F = cases[ci].f;
        wcase w1 = make_weight(cases[ci].t, F, E), w2 = make_weight(cases[ci].t, E, F),
              w3 = make_weight(cases[ci].t, E, E);
        const int64_t EF = E + F, NR = 24; /* room for NR rows of either width */
        float *buf = malloc(sizeof(float) * (size_t)(NR * (3 * E + 3 * EF + 5 * F) + 3 * E + F));
        REQUIRE(buf && w1.deq && w2.deq && w3.deq, "out of memory");
        float *x = buf, *xs = x + NR * E, *xf = xs + NR * E, *h = xf + NR * E, *tmp = h + NR * EF,
              *ys = tmp + NR * EF, *yf = ys + NR * 2 * F, *ff = yf + NR * 2 * F, *lnw = ff + NR * EF,
              *lnb = lnw + E, *b1 = lnb + E, *b2 = b1 + F;
        fill(lnw, E, 1.0f);
        fill(lnb, E, 0.5f);
        fill(b1, F, 0.5f);
        fill(b2, E, 0.5f);
        for (size_t li = 0; li < N_LEVELS; li++) {
            svlm_kernels *k = make_kernels(levels[li], 2);
            if (!k) continue;
            const int64_t ns[] = {24, 20, 7}; /* (24: whole tiles, read in place by the f16 GEMM) */
            for (int ni = 0; ni < 3; ni++) {
                const int64_t n = ns[ni];
                const char *name = svlm_kernels_name(k), *type = svlm_dtype_get(cases[ci].t)->name;
                const size_t row_e = sizeof(float) * (size_t)(n * E);
                fill(x, n * E, 1.0f);
                fill(h, n * F, 1.0f);
                /* y += x W^T + b (W2 is E x F: inputs of F columns); without a bias; in place (x is
                 * y, against the sequence out of place) */
                for (int form = 0; form < 3; form++) {
                    const svlm_weight *w = form == 2 ? &w3.w : &w2.w;
                    const float *in = form == 2 ? x : h, *b = form == 1 ? NULL : b2;
                    memcpy(xs, x, row_e);
                    memcpy(xf, x, row_e);
                    svlm_k_seq_matmul_bias_add(k, w, b, in, n, xs, tmp);
                    svlm_k_matmul_bias_add(k, w, b, form == 2 ? xf : in, n, xf, tmp);
                    CHECK(!memcmp(xs, xf, row_e),
                          "%s %s n=%lld: matmul_bias_add (%s) differs from its sequence", name, type,
                          (long long)n,
                          form == 0   ? "bias"
                          : form == 1 ? "no bias"
                                      : "in place");
                }
                /* layer norm + two products with biases (one without) */
                const svlm_weight *ws[2] = {&w1.w, &w1.w};
                const float *bs[2] = {b1, NULL};
                float *yss[2] = {ys, ys + n * F}, *yfs[2] = {yf, yf + n * F};
                svlm_k_seq_layernorm_matmul_bias(k, x, lnw, lnb, 1e-6f, h, ws, bs, 2, n, yss);
                svlm_k_layernorm_matmul_bias(k, x, lnw, lnb, 1e-6f, h, ws, bs, 2, n, yfs);
                CHECK(!memcmp(ys, yf, sizeof(float) * (size_t)(2 * n * F)),
                      "%s %s n=%lld: layernorm_matmul_bias differs from its sequence", name, type,
                      (long long)n);
                /* the GELU feed-forward half, in place on x */
                memcpy(xs, x, row_e);
                memcpy(xf, x, row_e);
                svlm_k_seq_layernorm_gelu_ffn_add(k, xs, lnw, lnb, 1e-6f, &w1.w, b1, &w2.w, b2, n, h, ff,
                                                  tmp);
                svlm_k_layernorm_gelu_ffn_add(k, xf, lnw, lnb, 1e-6f, &w1.w, b1, &w2.w, b2, n, h, ff, tmp);
                CHECK(!memcmp(xs, xf, row_e),
                      "%s %s n=%lld: layernorm_gelu_ffn_add differs from its sequence", name, type,
                      (long long)n);
            }
            svlm_kernels_destroy(k);
        }
        free(buf);
        free(w1.deq);
        free(w2.deq);
        free(w3.deq);
        free((void *)w1.w.data);
        free((void *)w2.w.data);
        free((void *)w3.w.data);
    }
}

/* The four-row dot kernels (used by decode matvecs) against the one-row kernel of the same
 * level (the same sums in another order: 1e-5 of sum |w x|) and against a double-precision
 * dot of the dequantized weights with the activations the kernel sees (quantized ones for the
 * svlm_q8a types; 1e-5 of sum |w x| for float rounding), at every start row of an odd row
 * count and at block counts with and without the kernels' tails. */
static void check_dot4(const svlm_cpu_matmul_ops *ops, const char *level, svlm_dtype t, int64_t cols) {
    enum { ROWS = 7 };
    wcase c = make_weight(t, ROWS, cols);
    float *x = malloc(sizeof(float) * (size_t)cols), *xq = malloc(sizeof(float) * (size_t)cols);
    svlm_q8a *q8 = malloc(sizeof(svlm_q8a) * (size_t)(cols / 32 + 1));
    REQUIRE(x && xq && q8, "out of memory");
    fill(x, cols, 2.0f);
    const void *act = x;
    memcpy(xq, x, sizeof(float) * (size_t)cols);
    if (svlm_cpu_type_uses_q8a(t)) {
        svlm_cpu_quantize_q8a(x, q8, cols);
        for (int64_t i = 0; i < cols; i++)
            xq[i] = q8[i / 32].d * (float)q8[i / 32].qs[i % 32];
        act = q8;
    }
    double worst_row = 0.0, worst_ref = 0.0;
    for (int64_t r0 = 0; r0 + 4 <= ROWS; r0++) {
        float out[4];
        ops->dot4[t](cols, (const char *)c.w.data + (size_t)r0 * c.w.row_bytes, c.w.row_bytes, act, out);
        for (int k = 0; k < 4; k++) {
            const float *w = c.deq + (r0 + k) * cols;
            double ref = 0.0, mag = 1e-30;
            for (int64_t i = 0; i < cols; i++) {
                ref += (double)w[i] * xq[i];
                mag += fabs((double)w[i] * xq[i]);
            }
            float one = ops->dot[t](cols, (const char *)c.w.data + (size_t)(r0 + k) * c.w.row_bytes, act);
            worst_row = fmax(worst_row, fabs(out[k] - one) / mag);
            worst_ref = fmax(worst_ref, fabs(out[k] - ref) / mag);
        }
    }
    CHECK(worst_row <= 1e-5, "%s dot4 %s cols=%lld differs from the one-row dot by %.3g", level,
          svlm_dtype_get(t)->name, (long long)cols, worst_row);
    CHECK(worst_ref <= 1e-5, "%s dot4 %s cols=%lld differs from the reference by %.3g", level,
          svlm_dtype_get(t)->name, (long long)cols, worst_ref);
    free(x);
    free(xq);
    free(q8);
    free(c.deq);
    free((void *)c.w.data);
}

static void test_dot4(void) {
    for (size_t li = 1; li < N_LEVELS; li++) {
        svlm_kernels *k = make_kernels(levels[li], 1); /* only to learn whether the CPU has the level */
        if (!k) continue;
        svlm_kernels_destroy(k);
        svlm_cpu_matmul_ops ops;
        svlm_cpu_matmul_init_ref(&ops);
#ifdef SVLM_X86
        svlm_cpu_matmul_init_avx2(&ops);
        if (li == 2) svlm_cpu_matmul_init_avx512(&ops);
#endif
#ifdef SVLM_ARM64
        if (li == 3) svlm_cpu_matmul_init_neon(&ops);
        if (li == 4) svlm_cpu_matmul_init_neon_dot(&ops);
#endif
        /* decode matvecs of Q8_0 weights must get the four-row kernel */
        CHECK(ops.dot4[SVLM_Q8_0] != NULL, "%s: no four-row dot for Q8_0", levels[li]);
        for (size_t ti = 0; ti < sizeof weight_types / sizeof weight_types[0]; ti++) {
            svlm_dtype t = weight_types[ti];
            if (!ops.dot4[t]) continue;
            int bs = svlm_dtype_get(t)->block_size;
            if (bs == 1) { /* float rows: vector tails (8 and 16 lanes) and an odd scalar tail */
                check_dot4(&ops, levels[li], t, 7);
                check_dot4(&ops, levels[li], t, 83);
            } else { /* one block, an odd count, and SmolVLM2-256M's 576 columns */
                check_dot4(&ops, levels[li], t, bs);
                check_dot4(&ops, levels[li], t, bs == 32 ? 96 : 768);
            }
            if (576 % bs == 0) check_dot4(&ops, levels[li], t, 576);
        }
    }
}

/* ---- other ops ---- */

static double rel_err(double got, double ref, double floor_) {
    return fabs(got - ref) / (fabs(ref) + floor_);
}

/* Mean and 1 / sqrt(population variance + eps) of a row, in double. */
static void row_stats(const float *x, int64_t dim, double eps, double *mean, double *inv_std) {
    double m = 0.0, var = 0.0;
    for (int64_t i = 0; i < dim; i++)
        m += x[i];
    m /= dim;
    for (int64_t i = 0; i < dim; i++)
        var += (x[i] - m) * (x[i] - m);
    *mean = m;
    *inv_std = 1.0 / sqrt(var / dim + eps);
}

static void test_norms(svlm_kernels *k) {
    const int64_t n = 5, dim = 77;
    float x[5 * 77], w[77], b[77], y[5 * 77];
    fill(x, n * dim, 3.0f);
    fill(w, dim, 1.0f);
    fill(b, dim, 1.0f);
    svlm_k_rmsnorm(k, x, w, y, n, dim, 1e-5f);
    double worst = 0.0;
    for (int64_t r = 0; r < n; r++) {
        double ss = 0.0;
        for (int64_t i = 0; i < dim; i++)
            ss += (double)x[r * dim + i] * x[r * dim + i];
        double s = 1.0 / sqrt(ss / dim + 1e-5);
        for (int64_t i = 0; i < dim; i++)
            worst = fmax(worst, rel_err(y[r * dim + i], x[r * dim + i] * s * w[i], 1e-3));
    }
    CHECK(worst < 1e-6, "%s rmsnorm rel error %.3g", svlm_kernels_name(k), worst);

    for (int with_bias = 0; with_bias < 2; with_bias++) {
        memcpy(y, x, sizeof x);
        svlm_k_layernorm(k, y, w, with_bias ? b : NULL, y, n, dim, 1e-6f); /* in place */
        worst = 0.0;
        for (int64_t r = 0; r < n; r++) {
            double mean, s;
            row_stats(x + r * dim, dim, 1e-6, &mean, &s);
            for (int64_t i = 0; i < dim; i++) {
                double term = (x[r * dim + i] - mean) * s * w[i], bias = with_bias ? b[i] : 0.0;
                /* relative to the sizes of the operands: x - mean and the bias add may cancel */
                double size = (fabs(x[r * dim + i]) + fabs(mean)) * s * fabs(w[i]) + fabs(bias);
                worst = fmax(worst, fabs(y[r * dim + i] - (term + bias)) / (size + 1e-30));
            }
        }
        CHECK(worst < 2e-6, "%s layernorm (bias %d) rel error %.3g", svlm_kernels_name(k), with_bias, worst);
    }

    /* rows far from zero (an offset of 50 against a spread of 1): against the reference's own
     * float steps (a double mean and variance, then x - (float)mean in float), a kernel must be
     * within float rounding; one whose mean is summed in float alone is 1e-5 off */
    float xo[5 * 77];
    for (int64_t i = 0; i < n * dim; i++)
        xo[i] = 50.0f + x[i] / 3.0f;
    svlm_k_layernorm(k, xo, w, NULL, y, n, dim, 1e-6f);
    worst = 0.0;
    for (int64_t r = 0; r < n; r++) {
        double mean, inv_std;
        row_stats(xo + r * dim, dim, 1e-6, &mean, &inv_std);
        const float m = (float)mean, s = (float)inv_std;
        for (int64_t i = 0; i < dim; i++) {
            const float ref = (xo[r * dim + i] - m) * s * w[i];
            worst = fmax(worst, fabs(y[r * dim + i] - ref) / (fabs(w[i]) + 1e-30)); /* |normalised| ~ 1 */
        }
    }
    CHECK(worst < 1e-6, "%s layernorm of rows offset by 50: error %.3g", svlm_kernels_name(k), worst);
}

static void test_rope(svlm_kernels *k) {
    enum { N = 7, H = 3, D = 64 };
    const int n_rots[] = {64, 32};
    static float x[N * H * D], y[N * H * D];
    int32_t pos[N] = {0, 1, 5, 17, 100, 1000, 4095};
    for (int neox = 0; neox < 2; neox++) {
        for (int ri = 0; ri < 2; ri++) {
            int n_rot = n_rots[ri];
            fill(x, N * H * D, 1.0f);
            memcpy(y, x, sizeof x);
            svlm_k_rope(k, y, N, H, D, n_rot, pos, 10000.0f, neox);
            float theta_scale = powf(10000.0f, -2.0f / (float)n_rot);
            double worst = 0.0;
            int untouched_ok = 1;
            for (int t = 0; t < N; t++) {
                float theta = (float)pos[t];
                for (int p = 0; p < n_rot / 2; p++, theta *= theta_scale) {
                    double cs = cos((double)theta), sn = sin((double)theta);
                    for (int h = 0; h < H; h++) {
                        int i0 = neox ? p : 2 * p, i1 = neox ? p + n_rot / 2 : 2 * p + 1;
                        const float *a = x + (t * H + h) * D, *o = y + (t * H + h) * D;
                        worst = fmax(worst, fabs(o[i0] - (a[i0] * cs - a[i1] * sn)));
                        worst = fmax(worst, fabs(o[i1] - (a[i0] * sn + a[i1] * cs)));
                    }
                }
                for (int h = 0; h < H; h++)
                    for (int i = n_rot; i < D; i++)
                        untouched_ok &= x[(t * H + h) * D + i] == y[(t * H + h) * D + i];
            }
            CHECK(worst < 2e-6, "%s rope neox=%d n_rot=%d error %.3g", svlm_kernels_name(k), neox, n_rot,
                  worst);
            CHECK(untouched_ok, "rope changed dims beyond n_rot");
        }
    }
}

static void test_activations(svlm_kernels *k) {
    enum { N = 4099 };
    static float g[N], u[N], y[N];
    fill(g, N, 12.0f);
    fill(u, N, 2.0f);
    memcpy(y, g, sizeof g);
    svlm_k_silu_mul(k, y, u, N);
    double worst = 0.0;
    for (int i = 0; i < N; i++)
        worst = fmax(worst, rel_err(y[i], g[i] / (1.0 + exp(-(double)g[i])) * u[i], 1e-30));
    CHECK(worst < 2e-6, "%s silu_mul rel error %.3g", svlm_kernels_name(k), worst);

    memcpy(y, g, sizeof g);
    y[0] = 0.0f;
    y[1] = -30.0f;
    y[2] = 30.0f;
    y[3] = 1e-4f;
    svlm_k_gelu_tanh(k, y, N);
    worst = 0.0;
    for (int i = 0; i < N; i++) {
        double v = i == 0 ? 0.0 : i == 1 ? -30.0 : i == 2 ? 30.0 : i == 3 ? 1e-4f : g[i];
        /* 0.5 v (1 + tanh(u)) written as v / (1 + exp(-2u)), exact in double for negative v too */
        double arg = 2.0 * sqrt(2.0 / M_PI) * (v + 0.044715 * v * v * v);
        double ref = v / (1.0 + exp(-arg));
        /* float rounding of the argument (relative 2^-23 per step, a few steps) grows with |arg| */
        double allowed = 1e-6 + 4.0 * 1.2e-7 * fabs(arg);
        worst = fmax(worst, rel_err(y[i], ref, 1e-30) / allowed);
    }
    CHECK(worst < 1.0, "%s gelu_tanh error %.3g of the allowed", svlm_kernels_name(k), worst);

    memcpy(y, g, sizeof g);
    svlm_k_add(k, y, u, N);
    int ok = 1;
    for (int i = 0; i < N; i++)
        ok &= y[i] == g[i] + u[i];
    CHECK(ok, "add");

    memcpy(y, g, sizeof g);
    svlm_k_add_bias(k, y, u, 3, 1000);
    ok = 1;
    for (int i = 0; i < N; i++)
        ok &= y[i] == (i < 3000 ? g[i] + u[i % 1000] : g[i]);
    CHECK(ok, "add_bias");

    /* softmax: rows with huge offsets must not overflow */
    enum { R = 5, C = 333 };
    static float s[R * C];
    fill(s, R * C, 20.0f);
    for (int c = 0; c < C; c++)
        s[C + c] += 1000.0f, s[2 * C + c] -= 1000.0f;
    memcpy(y, s, sizeof s);
    svlm_k_softmax(k, y, R, C);
    worst = 0.0;
    for (int r = 0; r < R; r++) {
        double mx = -INFINITY, sum = 0.0;
        for (int c = 0; c < C; c++)
            mx = fmax(mx, s[r * C + c]);
        for (int c = 0; c < C; c++)
            sum += exp((double)s[r * C + c] - mx);
        for (int c = 0; c < C; c++)
            worst = fmax(worst, rel_err(y[r * C + c], exp((double)s[r * C + c] - mx) / sum, 1e-30));
    }
    CHECK(worst < 2e-5, "%s softmax rel error %.3g", svlm_kernels_name(k), worst);
}

/* greedy argmax: the stated rule on special and random rows, dims from 4 to a vocabulary */
static void test_argmax(svlm_kernels *k) {
    const int64_t dims[] = {4, 5, 1023, 49280};
    for (size_t d = 0; d < sizeof dims / sizeof dims[0]; d++) {
        const int64_t rows = 13, dim = dims[d];
        float *x = malloc(sizeof(float) * (size_t)(rows * dim));
        int32_t ids[13];
        REQUIRE(x, "out of memory");
        argmax_rows_fill(x, rows, dim, (uint64_t)dim);
        for (int r = 0; r < rows; r++)
            ids[r] = -1;
        svlm_k_argmax(k, x, rows, dim, ids);
        int bad = 0;
        for (int r = 0; r < rows; r++)
            if (ids[r] != argmax_expected(x + r * dim, dim)) {
                if (!bad++)
                    fprintf(stderr, "  row %d of %lld: %d, expected %d\n", r, (long long)dim, ids[r],
                            argmax_expected(x + r * dim, dim));
            }
        CHECK(!bad, "%s argmax over rows of %lld: %d rows differ", svlm_kernels_name(k), (long long)dim, bad);
        free(x);
    }
}

static void attention_case(svlm_kernels *k, int64_t n_q, int64_t n_kv, int n_head, int n_kv_head, int hd,
                           int causal, svlm_dtype kv_type) {
    int64_t stride = (int64_t)n_kv_head * hd + 5; /* rows padded like a cache with spare room */
    float *q = malloc(sizeof(float) * (size_t)(n_q * n_head * hd));
    float *kf = malloc(sizeof(float) * (size_t)(n_kv * stride)),
          *vf = malloc(sizeof(float) * (size_t)(n_kv * stride));
    svlm_f16 *k16 = malloc(2 * (size_t)(n_kv * stride)), *v16 = malloc(2 * (size_t)(n_kv * stride));
    float *out = malloc(sizeof(float) * (size_t)(n_q * n_head * hd));
    REQUIRE(q && kf && vf && k16 && v16 && out, "out of memory");
    fill(q, n_q * n_head * hd, 1.5f);
    fill(kf, n_kv * stride, 1.5f);
    fill(vf, n_kv * stride, 1.0f);
    for (int64_t i = 0; i < n_kv * stride; i++) {
        k16[i] = svlm_f32_to_f16(kf[i]);
        v16[i] = svlm_f32_to_f16(vf[i]);
        if (kv_type == SVLM_F16) { /* the reference sees the stored values */
            kf[i] = svlm_f16_to_f32(k16[i]);
            vf[i] = svlm_f16_to_f32(v16[i]);
        }
    }
    float scale = 1.0f / sqrtf((float)hd);
    svlm_attn_args a = {q,
                        kv_type == SVLM_F16 ? (void *)k16 : (void *)kf,
                        kv_type == SVLM_F16 ? (void *)v16 : (void *)vf,
                        kv_type,
                        stride,
                        out,
                        n_q,
                        n_kv,
                        n_head,
                        n_kv_head,
                        hd,
                        causal,
                        scale};
    svlm_k_attention(k, &a);
    double worst =
        ref_attention_error(q, kf, vf, out, n_q, n_kv, n_head, n_kv_head, hd, stride, causal, scale);
    CHECK(worst < 2e-5, "%s attention n_q=%lld n_kv=%lld heads %d/%d causal=%d %s: error %.3g",
          svlm_kernels_name(k), (long long)n_q, (long long)n_kv, n_head, n_kv_head, causal,
          svlm_dtype_get(kv_type)->name, worst);
    free(q);
    free(kf);
    free(vf);
    free(k16);
    free(v16);
    free(out);
}

static void test_attention(svlm_kernels *k) {
    for (int f16 = 0; f16 < 2; f16++) {
        svlm_dtype t = f16 ? SVLM_F16 : SVLM_F32;
        attention_case(k, 1, 1, 9, 3, 64, 1, t);     /* first decode step */
        attention_case(k, 1, 300, 9, 3, 64, 1, t);   /* decode over a cache (kv rows split in parts) */
        attention_case(k, 1, 777, 4, 2, 32, 1, t);   /* uneven parts */
        attention_case(k, 1, 133, 8, 2, 24, 1, t);   /* groups of 4, rows not a vector's multiple */
        attention_case(k, 1, 61, 4, 4, 16, 1, t);    /* groups of 1, one part, keys not 8's multiple */
        attention_case(k, 1, 150, 6, 2, 20, 1, t);   /* head size not 8's multiple */
        attention_case(k, 3, 40, 6, 2, 32, 1, t);    /* a few new tokens after a prefix */
        attention_case(k, 70, 70, 4, 1, 16, 1, t);   /* causal prefill, two query blocks */
        attention_case(k, 130, 130, 4, 4, 24, 0, t); /* encoder: no mask */
    }
}

/* ---- benchmarks (SVLM_KERNEL_BENCH=1) ---- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
/* CPU seconds of the whole process: on a busy machine, work per CPU-second is what the
 * kernels would reach on idle cores (with one thread there is no spinning to inflate it). */
static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct read_job {
    const uint64_t *data;
    int64_t words, chunk;
    uint64_t sums[64];
} read_job;

static void read_task(void *ctx, int task, int thread) {
    read_job *j = ctx;
    int64_t b = task * j->chunk, e = b + j->chunk < j->words ? b + j->chunk : j->words;
    uint64_t s = 0;
    for (int64_t i = b; i < e; i++)
        s ^= j->data[i];
    j->sums[thread] ^= s;
}

static void bench_matvec(svlm_kernels *k, svlm_pool *pool, svlm_dtype t) {
    /* SmolVLM2-256M decoder: per layer q,k,v,o, gate, up, down; then the 49280-row output head */
    const int64_t shapes[7][2] = {{576, 576},  {192, 576},  {192, 576}, {576, 576},
                                  {1536, 576}, {1536, 576}, {576, 1536}};
    enum { LAYERS = 30 };
    svlm_weight ws[LAYERS * 7 + 1];
    size_t total = 0;
    for (int i = 0; i < LAYERS * 7 + 1; i++) {
        int64_t rows = i < LAYERS * 7 ? shapes[i % 7][0] : 49280,
                cols = i < LAYERS * 7 ? shapes[i % 7][1] : 576;
        if (svlm_dtype_get(t)->block_size == 256 && cols % 256) cols = 768; /* K-quants need 256 | cols */
        size_t rb = svlm_row_bytes(t, cols);
        ws[i] = (svlm_weight){t, rows, cols, NULL, rb};
        total += rb * (size_t)rows;
    }
    char *data = malloc(total);
    REQUIRE(data, "out of memory");
    { /* quantize one row of random values and repeat it: realistic scales, quick to build */
        float row[1536];
        char qrow[4096];
        fill(row, 1536, 0.1f);
        size_t off = 0;
        for (int i = 0; i < LAYERS * 7 + 1; i++) {
            svlm_quantize_row(t, row, qrow, ws[i].cols);
            ws[i].data = data + off;
            for (int64_t r = 0; r < ws[i].rows; r++, off += ws[i].row_bytes)
                memcpy(data + off, qrow, ws[i].row_bytes);
        }
    }
    float x[1536], y[49280];
    fill(x, 1536, 1.0f);
    int reps = 20;
    double best = 1e9, best_cpu = 1e9;
    for (int rep = 0; rep < reps; rep++) {
        double t0 = now_s(), c0 = cpu_s();
        for (int i = 0; i < LAYERS * 7 + 1; i++)
            svlm_k_matmul(k, &ws[i], x, 1, y);
        double dt = now_s() - t0, dc = cpu_s() - c0;
        if (dt < best) best = dt;
        if (dc < best_cpu) best_cpu = dc;
    }
    /* the machine's read bandwidth over the same amount of memory */
    read_job rj = {(const uint64_t *)data, (int64_t)(total / 8), 0, {0}};
    rj.chunk = rj.words / 64;
    double best_read = 1e9;
    for (int rep = 0; rep < 10; rep++) {
        double t0 = now_s();
        svlm_pool_run(pool, read_task, &rj, (int)((rj.words + rj.chunk - 1) / rj.chunk));
        double dt = now_s() - t0;
        if (dt < best_read) best_read = dt;
    }
    printf("matvec %-5s %s: %.1f MB per token, %.3f ms, %.1f GB/s (%.0f tok/s); plain read %.1f GB/s -> "
           "%.0f%% of "
           "the bound; %.1f GB per CPU-second\n",
           svlm_dtype_get(t)->name, svlm_kernels_name(k), total / 1e6, best * 1e3, total / best / 1e9,
           1.0 / best, total / best_read / 1e9, 100.0 * best_read / best, total / best_cpu / 1e9);
    free(data);
}

static void bench_gemm(svlm_kernels *k, svlm_dtype t, int64_t n) {
    const int64_t shapes[7][2] = {{576, 576},  {192, 576},  {192, 576}, {576, 576},
                                  {1536, 576}, {1536, 576}, {576, 1536}};
    wcase cs[7];
    float *x = malloc(sizeof(float) * (size_t)n * 1536), *y = malloc(sizeof(float) * (size_t)n * 1536);
    REQUIRE(x && y, "out of memory");
    fill(x, n * 1536, 1.0f);
    double flops = 0.0;
    for (int i = 0; i < 7; i++) {
        cs[i] = make_weight(t, shapes[i][0], shapes[i][1]);
        flops += 2.0 * (double)n * (double)shapes[i][0] * (double)shapes[i][1];
    }
    double best = 1e9, best_cpu = 1e9;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now_s(), c0 = cpu_s();
        for (int i = 0; i < 7; i++)
            svlm_k_matmul(k, &cs[i].w, x, n, y);
        double dt = now_s() - t0, dc = cpu_s() - c0;
        if (dt < best) best = dt;
        if (dc < best_cpu) best_cpu = dc;
    }
    printf("gemm   %-5s %s n=%lld: one layer's matmuls %.2f ms, %.1f GFLOP/s (30 layers: %.0f tok/s); "
           "%.1f GFLOP per CPU-second\n",
           svlm_dtype_get(t)->name, svlm_kernels_name(k), (long long)n, best * 1e3, flops / best / 1e9,
           (double)n / (best * 30.0), flops / best_cpu / 1e9);
    for (int i = 0; i < 7; i++) {
        free(cs[i].deq);
        free((void *)cs[i].w.data);
    }
    free(x);
    free(y);
}

static void bench_attention(svlm_kernels *k, int64_t n_q, int64_t n_kv, int n_head, int n_kv_head, int causal,
                            svlm_dtype kv_type) {
    int hd = 64;
    int64_t stride = (int64_t)n_kv_head * hd;
    float *q = calloc((size_t)(n_q * n_head * hd), sizeof(float)),
          *out = calloc((size_t)(n_q * n_head * hd), sizeof(float));
    void *kv = calloc((size_t)(n_kv * stride), 4);
    REQUIRE(q && out && kv, "out of memory");
    svlm_attn_args a = {q, kv, kv, kv_type, stride, out, n_q, n_kv, n_head, n_kv_head, hd, causal, 0.125f};
    double best = 1e9, best_cpu = 1e9;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now_s(), c0 = cpu_s();
        svlm_k_attention(k, &a);
        double dt = now_s() - t0, dc = cpu_s() - c0;
        if (dt < best) best = dt;
        if (dc < best_cpu) best_cpu = dc;
    }
    printf("attention n_q=%lld n_kv=%lld heads %d/%d causal=%d %s: %.3f ms (%.3f CPU-ms)\n", (long long)n_q,
           (long long)n_kv, n_head, n_kv_head, causal, svlm_dtype_get(kv_type)->name, best * 1e3,
           best_cpu * 1e3);
    free(q);
    free(out);
    free(kv);
}

static void bench(void) {
    const char *th = getenv("SVLM_BENCH_THREADS");
    int threads = th ? atoi(th) : 2;
    svlm_kernels *k = make_kernels(getenv("SVLM_BENCH_SIMD") ? getenv("SVLM_BENCH_SIMD") : "avx512", threads);
    if (!k) k = make_kernels("avx2", threads);
    if (!k) k = make_kernels("scalar", threads);
    svlm_pool *pool;
    svlm_err err;
    REQUIRE(svlm_pool_create(threads, &pool, &err) == SVLM_OK, "pool");
    const svlm_dtype types[] = {SVLM_Q8_0, SVLM_F16,  SVLM_Q4_0, SVLM_Q5_0,
                                SVLM_Q4_K, SVLM_Q6_K, SVLM_BF16, SVLM_F32};
    const char *only = getenv("SVLM_BENCH_ONLY"); /* matvec, gemm or attention */
    if (!only || !strcmp(only, "matvec"))
        for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
            bench_matvec(k, pool, types[i]);
    if (!only || !strcmp(only, "gemm"))
        for (size_t i = 0; i < 3; i++)
            bench_gemm(k, types[i], 512);
    if (only && strcmp(only, "attention")) goto done;
    bench_attention(k, 512, 512, 9, 3, 1, SVLM_F16);
    bench_attention(k, 1024, 1024, 12, 12, 0, SVLM_F32);
    bench_attention(k, 1, 4096, 9, 3, 1, SVLM_F16);
    bench_attention(k, 1, 4096, 9, 3, 1, SVLM_F32);
    bench_attention(k, 1, 4096, 12, 12, 1, SVLM_F16); /* MHA: one query row per kv head */
    bench_attention(k, 1, 4096, 12, 12, 1, SVLM_F32);
done:
    svlm_pool_destroy(pool);
    svlm_kernels_destroy(k);
}

int test_main(void) {
    if (getenv("SVLM_KERNEL_BENCH")) {
        bench();
        return 0;
    }
    /* a bad SVLM_SIMD value is an error, not a silent fallback */
    setenv("SVLM_SIMD", "avx9000", 1);
    svlm_kernels *bad = NULL;
    svlm_err err;
    CHECK(svlm_kernels_create_cpu(2, &bad, &err) == SVLM_E_INVALID && !bad, "SVLM_SIMD=avx9000 accepted");
    unsetenv("SVLM_SIMD");

    setenv("SVLM_BF16", "fast", 1);
    CHECK(svlm_kernels_create_cpu(2, &bad, &err) == SVLM_E_INVALID && !bad, "SVLM_BF16=fast accepted");
    unsetenv("SVLM_BF16");

    test_pool();
    test_pool_stress();
    test_dot4();
    test_matmul_multi();
    test_fused_bias();
    test_matmul(); /* default: bf16 products for quantized and BF16 weights */
    /* the settings below choose among x86 kernels: elsewhere they change nothing */
#ifdef SVLM_X86
    setenv("SVLM_BF16", "all", 1); /* F16 weights too */
    test_matmul();
    /* the AVX-512 level has its own GEMM besides OpenBLAS's: check both */
    for (int g = 0; g < 2; g++) {
        setenv("SVLM_GEMM", g ? "blas" : "own", 1);
        setenv("SVLM_BF16", "0", 1); /* every type through the f32 GEMM */
        test_matmul();
        unsetenv("SVLM_BF16");
        svlm_kernels *gk = make_kernels("avx512", 2);
        if (gk) test_attention(gk), test_gemm(gk);
        svlm_kernels_destroy(gk);
    }
    unsetenv("SVLM_GEMM");
#endif
    for (size_t li = 0; li < N_LEVELS; li++) {
        /* the AArch64 levels have the portable ops but for the products and the activations'
         * quantization, which test_matmul and test_dot4 checked above */
        if (li >= 3) continue;
        svlm_kernels *k = make_kernels(levels[li], li == 1 ? 3 : 2);
        if (!k) continue;
        void *p = svlm_k_alloc(k, 1000);
        CHECK(p && ((uintptr_t)p % 64) == 0 && ((char *)p)[999] == 0, "svlm_k_alloc: aligned, zeroed");
        svlm_k_free(k, p);
        test_norms(k);
        test_rope(k);
        test_activations(k);
        test_argmax(k);
        test_attention(k);
        test_gemm(k); /* (each level's few-row forms stand in front of its GEMM) */
        printf("%s: ops checked\n", svlm_kernels_name(k));
        svlm_kernels_destroy(k);
    }
    return 0;
}
