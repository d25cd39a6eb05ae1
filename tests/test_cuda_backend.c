/*
 * The CUDA backend against the CPU backend and against double-precision references: every op,
 * matmuls of every weight type in decode (matrix-vector, n <= 8) and batched (cuBLAS) form, with
 * activation buffers from the backend's svlm_k_alloc (also at an offset inside an allocation),
 * from malloc, and a mix of both. Each comparison prints its measured error next to its
 * tolerance, so one run on a GPU machine shows the margins.
 *
 * Tolerances: element-wise ops and norms 1e-5 relative (absolute below 1); add/add_bias exact;
 * RoPE 1e-5 + 5e-7 * pos (float32 angles, computed pair by pair or by powf, differ by a few ulps
 * of pos); attention 1e-4 absolute of values in [-1, 1] (the tensor-core paths more, see
 * attention_tol; every case runs with the flash kernel off, then on). Matmuls are held to a
 * double-precision product of the stored weights (see matmul_err): float rounding, plus in batched
 * products the rounding of bf16 operands (cuBLAS on tensor cores; tf32 and f16 keep more bits),
 * plus in decode products of quantized weights the rounding of 8-bit activations (the CPU's way;
 * the GPU may keep floats); and to the CPU's results, relative to the largest output.
 *
 * Skips (77) where no GPU is usable (svlm_kernels_create_cuda returns E_UNSUPPORTED), unless
 * SVLM_TEST_REQUIRE_GPU=1 (scripts/gpu-check.sh), which makes that a failure.
 * SVLM_TEST_CUDA_AS_CPU=1 (or =avx2, =avx512) puts a scalar-level (that level's) CPU backend in
 * the GPU's place: a check of this test itself on a machine without a GPU.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/dtype.h"
#include "kernels/kernels.h"
#include "test.h"
#include "test_argmax_rows.h"
#include "test_gpu.h"
#include "test_ref_attention.h"

static svlm_kernels *G, *C; /* the backend under test, the CPU reference */
static svlm_kernels
    *G_flash; /* for the attention tests: G with the WMMA flash kernel from FLASH_MIN_Q queries */
static svlm_kernels *G_mma;         /* the same with the kernel's mma.sync form (the default) */
static int flash_on;                /* G is G_flash or G_mma now (2: G_mma) */
static svlm_kernels *G_host_argmax; /* SVLM_CUDA_ARGMAX=0: greedy ids searched on the host */

static uint64_t rng_state = 0x2545f4914f6cdd1dULL;
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
static void *xmalloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    REQUIRE(p, "out of memory (%zu bytes)", bytes);
    return p;
}

/* ---- buffers handed to the backend under test ---- */

enum { BUF_ALLOC, BUF_HOST, BUF_MIXED, BUF_MODES };
static const char *mode_names[BUF_MODES] = {"k_alloc", "malloc", "mixed"};
static int buf_mode, buf_seq, dev_seq, n_bufs;
static struct {
    void *base;
    int dev;
} bufs[64];

/* A buffer of `bytes` holding a copy of src (zeros when src is NULL): from svlm_k_alloc of the
 * backend under test (every other one 256 bytes into its allocation), from malloc, or
 * alternately one and the other, by buf_mode. Freed by bufs_free. */
static void *tbuf(const void *src, size_t bytes) {
    REQUIRE(n_bufs < 64, "too many test buffers");
    int seq = buf_seq++;
    int dev = buf_mode == BUF_ALLOC || (buf_mode == BUF_MIXED && seq % 2 == 0);
    int inner = dev && dev_seq++ % 2 == 1;
    char *base = dev ? svlm_k_alloc(G, bytes + 256) : malloc(bytes ? bytes : 1);
    REQUIRE(base, "%s of %zu bytes failed", dev ? "svlm_k_alloc" : "malloc", bytes);
    if (dev) REQUIRE(((uintptr_t)base & 63) == 0, "svlm_k_alloc returned %p, not 64-byte aligned", base);
    bufs[n_bufs].base = base;
    bufs[n_bufs++].dev = dev;
    char *p = base + (inner ? 256 : 0);
    if (src)
        memcpy(p, src, bytes);
    else
        memset(p, 0, bytes);
    return p;
}
static void bufs_free(void) {
    for (int i = 0; i < n_bufs; i++) {
        if (bufs[i].dev)
            svlm_k_free(G, bufs[i].base);
        else
            free(bufs[i].base);
    }
    n_bufs = 0;
}

/* max |a - b| / (|b| + floor): relative error, absolute where |b| < floor. */
static double rel_err(const float *a, const float *b, int64_t n, double floor_) {
    double worst = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double e = fabs((double)a[i] - b[i]) / (fabs(b[i]) + floor_);
        if (!(e <= worst)) worst = e; /* NaN counts as a failure */
    }
    return worst;
}

/* Checks one comparison and keeps the worst share of its tolerance per buffer mode. Returns 1
 * when the line should be printed: every comparison in the first mode, failures in the others. */
static double worst_share[BUF_MODES];
static char worst_what[BUF_MODES][100];
static int note(const char *what, double err, double tol) {
    double share = err <= tol ? (tol > 0 ? err / tol : 0.0) : INFINITY;
    if (share >= worst_share[buf_mode]) {
        worst_share[buf_mode] = share;
        snprintf(worst_what[buf_mode], sizeof worst_what[0], "%s", what);
    }
    CHECK(err <= tol, "%s (%s buffers): error %.3g above %.3g", what, mode_names[buf_mode], err, tol);
    return buf_mode == BUF_ALLOC || !(err <= tol);
}
static void report(const char *what, double err, double tol) {
    if (note(what, err, tol))
        printf("  %-62s %-8s %.3g (tolerance %.3g)\n", what, mode_names[buf_mode], err, tol);
}

/* ---- matmul ---- */

static const svlm_dtype weight_types[] = {SVLM_F32,  SVLM_F16,  SVLM_BF16, SVLM_Q4_0, SVLM_Q4_1, SVLM_Q5_0,
                                          SVLM_Q5_1, SVLM_Q8_0, SVLM_Q4_K, SVLM_Q5_K, SVLM_Q6_K};
enum { N_TYPES = sizeof weight_types / sizeof weight_types[0] };

typedef struct wcase {
    svlm_weight w;
    float *deq; /* rows x cols: the values the stored weight represents */
} wcase;

/* Every weight stays allocated until the end: the GPU keeps uploaded weights by address, so a
 * freed weight's address must not come back holding other values within one backend's life. */
static wcase make_weight(svlm_dtype t, int64_t rows, int64_t cols) {
    wcase c;
    size_t rb = svlm_row_bytes(t, cols);
    REQUIRE(rb > 0, "row bytes of %s x %lld", svlm_dtype_get(t)->name, (long long)cols);
    float *src = xmalloc(sizeof(float) * (size_t)(rows * cols));
    c.deq = xmalloc(sizeof(float) * (size_t)(rows * cols));
    char *data = xmalloc(rb * (size_t)rows);
    fill(src, rows * cols, 0.5f);
    for (int64_t r = 0; r < rows; r++) {
        REQUIRE(svlm_quantize_row(t, src + r * cols, data + r * rb, cols) == 0, "quantize %s",
                svlm_dtype_get(t)->name);
        REQUIRE(svlm_dequantize_row(t, data + r * rb, c.deq + r * cols, cols) == 0, "dequantize");
    }
    free(src);
    c.w = (svlm_weight){t, rows, cols, data, rb};
    return c;
}

/* Worst |y - ref| / bound over the n x rows outputs, where ref is the double-precision product of
 * x with the stored weights and bound = 1e-5 * sum |w x| (float rounding), plus
 *  - bf16: eight standard deviations of what rounding both operands to 8 significant bits adds
 *    (each product off by at most 2^-8 of itself per operand, std <= 2^-8 sqrt(2/3) for both),
 *    and 2^-10 of the output (an f16 result);
 *  - q8: six standard deviations of what 8-bit activations add (x rounded to steps of
 *    max |x| / 127 per 32 values, as the CPU does; error uniform within half a step).
 * The rounding errors are independent, so their sum over hundreds of products stays well inside
 * (the largest of ~10^4 outputs sits near 4 standard deviations), while a misread block or scale
 * lands far outside. Also returns in *vs max |y - y2| / max |ref| (y2 another backend's result),
 * or max |y - ref| / max |ref| when y2 is NULL. */
static double matmul_err(const wcase *c, const float *x, int64_t n, const float *y, int bf16, int q8,
                         const float *y2, double *vs) {
    int64_t rows = c->w.rows, cols = c->w.cols;
    double worst = 0.0, ymax = 1e-30, dmax = 0.0;
    for (int64_t i = 0; i < n; i++) {
        const float *xi = x + i * cols;
        for (int64_t r = 0; r < rows; r++) {
            const float *w = c->deq + r * cols;
            double ref = 0.0, mag = 0.0, var = 0.0, p2 = 0.0;
            for (int64_t b = 0; b < cols; b += 32) {
                double amax = 0.0, w2 = 0.0;
                for (int64_t j = b; j < b + 32 && j < cols; j++) {
                    double p = (double)w[j] * xi[j];
                    ref += p;
                    mag += fabs(p);
                    p2 += p * p;
                    amax = fmax(amax, fabs(xi[j]));
                    w2 += (double)w[j] * w[j];
                }
                double step = amax / 127.0;
                var += w2 * step * step / 12.0;
            }
            double bound = 1e-5 * mag + 1e-30;
            if (bf16) bound += 8.0 * 0.0032 * sqrt(p2) + fabs(ref) / 1024;
            if (q8) bound += 6.0 * sqrt(var);
            double e = fabs(y[i * rows + r] - ref) / bound;
            if (!(e <= worst)) worst = e;
            ymax = fmax(ymax, fabs(ref));
            double d = fabs(y[i * rows + r] - (y2 ? (double)y2[i * rows + r] : ref));
            if (!(d <= dmax)) dmax = d;
        }
    }
    *vs = dmax / ymax;
    return worst;
}

/* Batched products (n >= 8) may take bf16 operands; decode products (n <= 8: the GPU's
 * matrix-vector kernels take up to 8 rows) of quantized weights 8-bit activations. */
#define BF16_AT(n)      ((n) >= 8)
#define Q8_AT(quant, n) ((quant) && (n) <= 8)
/* |gpu - cpu| / max |y|: float decode, quantized decode (the CPU's 8-bit activations alone
 * move outputs by up to 6e-3 of the largest, measured), batched (bf16 on either side). */
#define VS_F32   1e-5
#define VS_QUANT 2e-2
#define VS_BATCH 2e-2

static void check_matmul(const wcase *c, int64_t n) {
    int64_t rows = c->w.rows, cols = c->w.cols;
    const char *tn = svlm_dtype_get(c->w.type)->name;
    int quant = svlm_dtype_get(c->w.type)->is_quantized, batched = n >= 8;
    float *x = xmalloc(sizeof(float) * (size_t)(n * cols)), *yc = xmalloc(sizeof(float) * (size_t)(n * rows));
    fill(x, n * cols, 2.0f);
    svlm_k_matmul(C, &c->w, x, n, yc);
    float *xg = tbuf(x, sizeof(float) * (size_t)(n * cols)),
          *yg = tbuf(NULL, sizeof(float) * (size_t)(n * rows));
    svlm_k_matmul(G, &c->w, xg, n, yg);
    double vs, e = matmul_err(c, x, n, yg, BF16_AT(n), Q8_AT(quant, n), yc, &vs);
    double tol = batched ? VS_BATCH : quant ? VS_QUANT : VS_F32;
    char what[96];
    snprintf(what, sizeof what, "matmul %s %lldx%lld n=%lld", tn, (long long)rows, (long long)cols,
             (long long)n);
    int shown = note(what, e, 1.0);
    shown |= note(what, vs, tol);
    if (shown) { /* with the CPU's own errors, for scale (test_kernels checks those) */
        double cvs, ce = matmul_err(c, x, n, yc, BF16_AT(n), Q8_AT(quant, n), NULL, &cvs);
        printf("  matmul %-5s %3lldx%-3lld n=%-2lld %-8s %.3g of the bound, |gpu-cpu|/max|y| %.2g (tolerance "
               "%.0g); "
               "cpu: %.3g, |cpu-ref| %.2g\n",
               tn, (long long)rows, (long long)cols, (long long)n, mode_names[buf_mode], e, vs, tol, ce, cvs);
    }
    bufs_free();
    free(x);
    free(yc);
}

static void test_matmul(const wcase *cases, int n_cases) {
    const int64_t ns[] = {1, 3, 8, 40};
    for (int i = 0; i < n_cases; i++)
        for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++)
            check_matmul(&cases[i], ns[ni]);
}

/* matmul_multi (q/k/v, gate/up) against the reference, for weights of several types and sizes
 * sharing the input: cs[0..2] are Q8_0 96 x 256, F16 200 x 256, Q4_K 19 x 256. */
enum { MULTI_COLS = 256, NW = 3 };
static void test_matmul_multi(const wcase *cs) {
    const int64_t COLS = MULTI_COLS;
    svlm_dtype types[NW];
    int64_t rows[NW];
    const svlm_weight *ws[NW];
    for (int i = 0; i < NW; i++) {
        types[i] = cs[i].w.type;
        rows[i] = cs[i].w.rows;
        ws[i] = &cs[i].w;
    }
    const int64_t ns[] = {1, 3, 40};
    for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
        int64_t n = ns[ni];
        float *x = xmalloc(sizeof(float) * (size_t)(n * COLS)), *xg = NULL;
        float *yc[NW], *yg[NW];
        fill(x, n * COLS, 1.0f);
        xg = tbuf(x, sizeof(float) * (size_t)(n * COLS));
        for (int i = 0; i < NW; i++) {
            yc[i] = xmalloc(sizeof(float) * (size_t)(n * rows[i]));
            yg[i] = tbuf(NULL, sizeof(float) * (size_t)(n * rows[i]));
        }
        svlm_k_matmul_multi(C, ws, NW, x, n, yc);
        svlm_k_matmul_multi(G, ws, NW, xg, n, yg);
        for (int i = 0; i < NW; i++) {
            int quant = svlm_dtype_get(types[i])->is_quantized;
            double vs, e = matmul_err(&cs[i], x, n, yg[i], BF16_AT(n), Q8_AT(quant, n), yc[i], &vs);
            double tol = n >= 8 ? VS_BATCH : quant ? VS_QUANT : VS_F32;
            char what[96];
            snprintf(what, sizeof what, "matmul_multi %s n=%lld", svlm_dtype_get(types[i])->name,
                     (long long)n);
            int shown = note(what, e, 1.0);
            shown |= note(what, vs, tol);
            if (shown)
                printf(
                    "  matmul_multi %-5s %3lldx%-3lld n=%-2lld %-8s %.3g of the bound, |gpu-cpu|/max|y| %.2g "
                    "(tolerance %.0g)\n",
                    svlm_dtype_get(types[i])->name, (long long)rows[i], (long long)COLS, (long long)n,
                    mode_names[buf_mode], e, vs, tol);
            free(yc[i]);
        }
        /* n = 0 is a no-op, as on the CPU */
        yg[0][0] = 42.0f;
        svlm_k_matmul(G, ws[0], xg, 0, yg[0]);
        svlm_k_matmul_multi(G, ws, NW, xg, 0, yg);
        CHECK(yg[0][0] == 42.0f, "a matmul of 0 rows wrote its output");
        bufs_free();
        free(x);
    }
}

/* ---- norms, RoPE, element-wise ops ---- */

static void test_norms(void) {
    const int64_t dims[] = {77, 576, 2048};
    for (size_t di = 0; di < 3; di++) {
        const int64_t n = 7, dim = dims[di];
        float *x = xmalloc(sizeof(float) * (size_t)(n * dim)), *w = xmalloc(sizeof(float) * (size_t)dim);
        float *b = xmalloc(sizeof(float) * (size_t)dim), *yc = xmalloc(sizeof(float) * (size_t)(n * dim));
        fill(x, n * dim, 3.0f);
        for (int64_t i = 0; i < n * dim; i++) /* rows with an offset: layernorm must remove it */
            x[i] += (float)(i / dim) - 3.0f;
        fill(w, dim, 1.0f);
        fill(b, dim, 1.0f);
        char what[96];
        float *xg = tbuf(x, sizeof(float) * (size_t)(n * dim)), *wg = tbuf(w, sizeof(float) * (size_t)dim);
        float *bg = tbuf(b, sizeof(float) * (size_t)dim), *yg = tbuf(NULL, sizeof(float) * (size_t)(n * dim));

        svlm_k_rmsnorm(C, x, w, yc, n, dim, 1e-5f);
        svlm_k_rmsnorm(G, xg, wg, yg, n, dim, 1e-5f);
        snprintf(what, sizeof what, "rmsnorm dim=%lld", (long long)dim);
        report(what, rel_err(yg, yc, n * dim, 1.0), 1e-5);
        memcpy(yg, x, sizeof(float) * (size_t)(n * dim)); /* in place */
        svlm_k_rmsnorm(G, yg, wg, yg, n, dim, 1e-5f);
        snprintf(what, sizeof what, "rmsnorm dim=%lld in place", (long long)dim);
        report(what, rel_err(yg, yc, n * dim, 1.0), 1e-5);

        for (int with_bias = 0; with_bias < 2; with_bias++) {
            svlm_k_layernorm(C, x, w, with_bias ? b : NULL, yc, n, dim, 1e-6f);
            svlm_k_layernorm(G, xg, wg, with_bias ? bg : NULL, yg, n, dim, 1e-6f);
            snprintf(what, sizeof what, "layernorm dim=%lld bias=%d", (long long)dim, with_bias);
            report(what, rel_err(yg, yc, n * dim, 1.0), 1e-5);
            memcpy(yg, x, sizeof(float) * (size_t)(n * dim));
            svlm_k_layernorm(G, yg, wg, with_bias ? bg : NULL, yg, n, dim, 1e-6f);
            snprintf(what, sizeof what, "layernorm dim=%lld bias=%d in place", (long long)dim, with_bias);
            report(what, rel_err(yg, yc, n * dim, 1.0), 1e-5);
        }
        bufs_free();
        free(x);
        free(w);
        free(b);
        free(yc);
    }
}

static void test_rope(void) {
    enum { N = 8 };
    const int32_t pos[N] = {0, 1, 2, 5, 17, 100, 1000, 4095};
    const struct {
        int n_head, head_dim, n_rot;
        float base;
    } cs[] = {{3, 64, 64, 10000.0f},
              {3, 64, 32, 10000.0f},
              {9, 64, 64, 100000.0f},
              {8, 8, 8, 10000.0f},
              {2, 128, 96, 500000.0f}};
    for (size_t ci = 0; ci < sizeof cs / sizeof cs[0]; ci++) {
        for (int neox = 0; neox < 2; neox++) {
            int H = cs[ci].n_head, D = cs[ci].head_dim;
            size_t len = (size_t)N * H * D;
            float *x = xmalloc(sizeof(float) * len), *yc = xmalloc(sizeof(float) * len);
            fill(x, (int64_t)len, 1.0f);
            memcpy(yc, x, sizeof(float) * len);
            float *yg = tbuf(x, sizeof(float) * len);
            int32_t *pg = tbuf(pos, sizeof pos);
            svlm_k_rope(C, yc, N, H, D, cs[ci].n_rot, pos, cs[ci].base, neox);
            svlm_k_rope(G, yg, N, H, D, cs[ci].n_rot, pg, cs[ci].base, neox);
            /* float32 angles: pos * theta_scale^j rounded pair by pair or by powf differ by a few
             * ulps of pos; dims past n_rot stay as they are */
            double worst = 0.0;
            int untouched = 1;
            for (int t = 0; t < N; t++)
                for (int i = 0; i < H * D; i++) {
                    size_t k = (size_t)t * H * D + (size_t)i;
                    double e = fabs((double)yg[k] - yc[k]) / (1e-5 + 5e-7 * pos[t]);
                    if (!(e <= worst)) worst = e;
                    if (i % D >= cs[ci].n_rot) untouched &= yg[k] == x[k];
                }
            char what[96];
            snprintf(what, sizeof what, "rope heads=%d head_dim=%d n_rot=%d base=%g neox=%d (share)", H, D,
                     cs[ci].n_rot, cs[ci].base, neox);
            report(what, worst, 1.0);
            CHECK(untouched, "%s changed dims past n_rot", what);
            bufs_free();
            free(x);
            free(yc);
        }
    }
}

static void test_elementwise(void) {
    enum { N = 4099, R = 5, D = 333, RV = 3, DV = 50000 };
    float *g = xmalloc(sizeof(float) * N), *u = xmalloc(sizeof(float) * N), *yc = xmalloc(sizeof(float) * N);
    fill(g, N, 12.0f);
    fill(u, N, 2.0f);
    g[0] = 0.0f, g[1] = -30.0f, g[2] = 30.0f, g[3] = 1e-4f, g[4] = -100.0f;
    float *gg = tbuf(g, sizeof(float) * N), *ug = tbuf(u, sizeof(float) * N);

    memcpy(yc, g, sizeof(float) * N);
    svlm_k_silu_mul(C, yc, u, N);
    svlm_k_silu_mul(G, gg, ug, N);
    report("silu_mul n=4099", rel_err(gg, yc, N, 1.0), 1e-5);

    memcpy(gg, g, sizeof(float) * N);
    memcpy(yc, g, sizeof(float) * N);
    svlm_k_gelu_tanh(C, yc, N);
    svlm_k_gelu_tanh(G, gg, N);
    report("gelu_tanh n=4099", rel_err(gg, yc, N, 1.0), 1e-5);

    memcpy(gg, g, sizeof(float) * N);
    memcpy(yc, g, sizeof(float) * N);
    svlm_k_add(C, yc, u, N);
    svlm_k_add(G, gg, ug, N);
    report("add n=4099 (exact)", rel_err(gg, yc, N, 1e-30), 0.0);

    memcpy(gg, g, sizeof(float) * N);
    memcpy(yc, g, sizeof(float) * N);
    svlm_k_add_bias(C, yc, u, 3, 1000);
    svlm_k_add_bias(G, gg, ug, 3, 1000);
    report("add_bias 3x1000 (exact, rest untouched)", rel_err(gg, yc, N, 1e-30), 0.0);
    bufs_free();
    free(g);
    free(u);
    free(yc);

    /* softmax: rows with huge offsets must not overflow; a vocabulary-sized row */
    const int64_t rows[2] = {R, RV}, dims[2] = {D, DV};
    for (int si = 0; si < 2; si++) {
        int64_t n = rows[si] * dims[si];
        float *s = xmalloc(sizeof(float) * (size_t)n), *sc = xmalloc(sizeof(float) * (size_t)n);
        fill(s, n, 20.0f);
        for (int64_t c = 0; c < dims[si]; c++)
            s[dims[si] + c] += 1000.0f, s[2 * dims[si] + c] -= 1000.0f;
        memcpy(sc, s, sizeof(float) * (size_t)n);
        float *sg = tbuf(s, sizeof(float) * (size_t)n);
        svlm_k_softmax(C, sc, rows[si], dims[si]);
        svlm_k_softmax(G, sg, rows[si], dims[si]);
        char what[96];
        snprintf(what, sizeof what, "softmax %lldx%lld (relative per element)", (long long)rows[si],
                 (long long)dims[si]);
        report(what, rel_err(sg, sc, n, 1e-30), 2e-5);
        bufs_free();
        free(s);
        free(sc);
    }

    /* greedy argmax: the same index as the CPU and the stated rule, exactly (a decode batch of
     * vocabulary rows, and short rows), ids into the backend's memory or the host's */
    const int64_t arows[2] = {16, 13}, adims[2] = {49280, 37};
    for (int si = 0; si < 2; si++) {
        const int64_t n = arows[si] * adims[si];
        float *x = xmalloc(sizeof(float) * (size_t)n);
        argmax_rows_fill(x, arows[si], adims[si], 77 + (uint64_t)si);
        int32_t ic[16], *ig = tbuf(NULL, sizeof(int32_t) * 16);
        int32_t *ih = tbuf(NULL, sizeof(int32_t) * 16); /* ids in the backend's memory or the host's */
        svlm_k_argmax(C, x, arows[si], adims[si], ic);
        const float *gx = tbuf(x, sizeof(float) * (size_t)n);
        svlm_k_argmax(G, gx, arows[si], adims[si], ig);
        svlm_k_argmax(G_host_argmax ? G_host_argmax : C, gx, arows[si], adims[si], ih);
        double differ = 0;
        for (int64_t r = 0; r < arows[si]; r++)
            differ +=
                ig[r] != ic[r] || ih[r] != ic[r] || ic[r] != argmax_expected(x + r * adims[si], adims[si]);
        char what[96];
        snprintf(what, sizeof what, "argmax %lldx%lld (rows differing)", (long long)arows[si],
                 (long long)adims[si]);
        report(what, differ, 0);
        bufs_free();
        free(x);
    }
}

/* ---- attention ---- */

/* G (made with SVLM_CUDA_FLASH=0) takes n_q >= ATTN_GEMM_MIN_Q (set through SVLM_CUDA_ATTN_GEMM_MIN_Q in
 * test_main; 128 by default) to cuBLAS on tensor cores,
 * whose operands keep 10 mantissa bits (TF32 for f32 K/V; f16 copies of Q and P for f16 K/V): a
 * probability or V value read 2^-10 off (TF32 may truncate; f16 rounds, 2^-11) moves an output by
 * at most 2^-10 max |v| ~ 1e-3, its error in the scores (std ~6e-4 with |q|, |k| <= 1.5, hd 64)
 * by less. A CPU emulation of the path measured 8.3e-4 worst (truncating TF32; 1e-4 rounding)
 * and 3.3e-4 (f16), so 3e-3 and 2e-3. Fewer queries (the kernel), SVLM_CUDA_TF32=0 for f32 K/V,
 * and a CPU standing in for the GPU: 1e-4.
 * G_flash takes n_q >= FLASH_MIN_Q with head_dim <= 128 to the fused flash kernel, which rounds Q, K,
 * V and the probabilities to f16 (f32 accumulation): V's rounding alone moves an output by up to
 * 2^-12 max |v| = 2.4e-4, and a CPU emulation of the kernel's tiling measured 4.4e-4 worst over
 * these cases (f32 K/V; 2.8e-4 f16), so 1e-3. */
#define ATTN_GEMM_MIN_Q 32
#define FLASH_MIN_Q     2
static double attention_tol(int64_t n_q, svlm_dtype kv_type, int hd) {
    if (!svlm_kernels_is_gpu(G)) return 1e-4;
    if (flash_on && n_q >= FLASH_MIN_Q && hd <= 128) return 1e-3;
    if (n_q < ATTN_GEMM_MIN_Q) return 1e-4;
    if (kv_type == SVLM_F16) return 2e-3;
    const char *tf32 = getenv("SVLM_CUDA_TF32");
    return tf32 && !strcmp(tf32, "0") ? 1e-4 : 3e-3;
}

static void attention_case(int64_t n_q, int64_t n_kv, int n_head, int n_kv_head, int hd, int causal,
                           svlm_dtype kv_type, int pad) {
    int64_t stride = (int64_t)n_kv_head * hd + pad; /* rows padded like a cache with spare room */
    size_t nq = (size_t)(n_q * n_head * hd), nkv = (size_t)(n_kv * stride), esz = kv_type == SVLM_F16 ? 2 : 4;
    float *q = xmalloc(sizeof(float) * nq), *kf = xmalloc(sizeof(float) * nkv),
          *vf = xmalloc(sizeof(float) * nkv);
    svlm_f16 *k16 = xmalloc(2 * nkv), *v16 = xmalloc(2 * nkv);
    float *oc = xmalloc(sizeof(float) * nq);
    fill(q, (int64_t)nq, 1.5f);
    fill(kf, (int64_t)nkv, 1.5f);
    fill(vf, (int64_t)nkv, 1.0f);
    for (size_t i = 0; i < nkv; i++) {
        k16[i] = svlm_f32_to_f16(kf[i]);
        v16[i] = svlm_f32_to_f16(vf[i]);
        if (kv_type == SVLM_F16) { /* the reference sees the stored values */
            kf[i] = svlm_f16_to_f32(k16[i]);
            vf[i] = svlm_f16_to_f32(v16[i]);
        }
    }
    const void *kh = kv_type == SVLM_F16 ? (void *)k16 : (void *)kf;
    const void *vh = kv_type == SVLM_F16 ? (void *)v16 : (void *)vf;
    float scale = 1.0f / sqrtf((float)hd);
    svlm_attn_args a = {q, kh, vh, kv_type, stride, oc, n_q, n_kv, n_head, n_kv_head, hd, causal, scale};
    svlm_k_attention(C, &a);
    a.q = tbuf(q, sizeof(float) * nq);
    a.k = tbuf(kh, esz * nkv);
    a.v = tbuf(vh, esz * nkv);
    a.out = tbuf(NULL, sizeof(float) * nq);
    for (size_t i = 0; i < nq; i++) /* garbage where the backend must write zeros */
        a.out[i] = NAN;
    svlm_k_attention(G, &a);

    double worst =
        ref_attention_error(q, kf, vf, a.out, n_q, n_kv, n_head, n_kv_head, hd, stride, causal, scale);
    double vs = 0.0;
    for (size_t i = 0; i < nq; i++) {
        double d = fabs((double)a.out[i] - oc[i]);
        if (!(d <= vs)) vs = d;
    }
    char what[96];
    snprintf(what, sizeof what, "attention %s q=%lld kv=%lld heads=%d/%d hd=%d causal=%d pad=%d%s",
             svlm_dtype_get(kv_type)->name, (long long)n_q, (long long)n_kv, n_head, n_kv_head, hd, causal,
             pad,
             flash_on == 2 ? " flash mma"
             : flash_on    ? " flash"
                           : "");
    double tol = attention_tol(n_q, kv_type, hd);
    int shown = note(what, worst, tol);
    shown |= note(what, vs, tol);
    if (shown)
        printf("  %-62s %-8s %.3g, |gpu-cpu| %.3g (tolerance %.3g)\n", what, mode_names[buf_mode], worst, vs,
               tol);
    bufs_free();
    free(q);
    free(kf);
    free(vf);
    free(k16);
    free(v16);
    free(oc);
}

static void attention_cases(void) {
    for (int f16 = 0; f16 < 2; f16++) {
        svlm_dtype t = f16 ? SVLM_F16 : SVLM_F32;
        attention_case(1, 1, 9, 3, 64, 1, t, 5);       /* first decode step */
        attention_case(1, 300, 9, 3, 64, 1, t, 5);     /* decode over a cache */
        attention_case(1, 777, 4, 2, 32, 1, t, 3);     /* uneven lengths */
        attention_case(1, 100, 8, 2, 128, 1, t, 0);    /* wide heads, cache rows exactly one token */
        attention_case(3, 40, 6, 2, 32, 1, t, 5);      /* a few new tokens after a prefix */
        attention_case(44, 44, 8, 4, 8, 1, t, 0);      /* stories260K: head_dim 8 */
        attention_case(70, 70, 4, 1, 16, 1, t, 5);     /* causal prefill */
        attention_case(64, 200, 9, 3, 64, 1, t, 5);    /* prefill after a prefix (an image's tokens) */
        attention_case(5, 3, 4, 2, 64, 1, t, 5);       /* n_kv < n_q: the first two queries see nothing */
        attention_case(130, 130, 4, 4, 24, 0, t, 5);   /* encoder: no mask */
        attention_case(256, 256, 12, 12, 64, 0, t, 0); /* SigLIP-like */
        attention_case(2, 50, 4, 2, 64, 0, t, 5);      /* no mask, n_q < n_kv */
        /* the cuBLAS path (n_q >= ATTN_GEMM_MIN_Q) on the GPU */
        attention_case(100, 300, 9, 3, 64, 1, t, 0);   /* decoder prefill after a prefix, unpadded rows */
        attention_case(100, 300, 9, 3, 64, 1, t, 5);   /* the same, padded rows (odd strides) */
        attention_case(32, 32, 9, 3, 64, 1, t, 5);     /* exactly at the threshold */
        attention_case(31, 96, 9, 3, 64, 1, t, 5);     /* one below: the kernel */
        attention_case(40, 10, 4, 2, 64, 1, t, 0);     /* n_kv < n_q: 30 queries see nothing */
        attention_case(48, 1000, 2, 1, 8, 1, t, 0);    /* MQA, tiny heads, a long prefix */
        attention_case(200, 200, 16, 16, 72, 0, t, 3); /* head_dim not a power of two */
        /* the flash kernel's tiles (64 queries, 64 kv rows) and padded head dims */
        attention_case(77, 77, 4, 2, 8, 0, t, 0);     /* head_dim 8; n_q, n_kv not multiples of 64 */
        attention_case(150, 90, 4, 4, 72, 1, t, 3);   /* head_dim 72, causal, n_kv < n_q */
        attention_case(90, 150, 4, 2, 80, 1, t, 4);   /* head_dim 80, causal, n_kv > n_q */
        attention_case(129, 200, 4, 2, 128, 1, t, 8); /* head_dim 128; one query past two tiles */
        attention_case(100, 130, 9, 3, 64, 0, t, 7);  /* GQA 9/3, odd padded stride */
        attention_case(65, 65, 9, 3, 24, 1, t, 0);    /* one row into a second tile */
        attention_case(16, 5, 2, 1, 40, 1, t, 1);     /* 11 of 16 queries see nothing */
        attention_case(40, 60, 2, 2, 160, 0, t, 0);   /* head_dim past 128: flash declines */
    }
    if (buf_mode == BUF_ALLOC) /* one vision tile: 1024 tokens, 12 heads (f32 K/V, as the encoder) */
        attention_case(1024, 1024, 12, 12, 64, 0, SVLM_F32, 0);
}

/* Every case through G (cuBLAS and the kernel), then through G_flash (the flash kernel), then
 * G_mma (its mma.sync form: the same rounding, so the same tolerance). */
static void test_attention(void) {
    attention_cases();
    if (!G_flash) return;
    svlm_kernels *plain = G;
    G = G_flash;
    flash_on = 1;
    attention_cases();
    if (G_mma) {
        G = G_mma;
        flash_on = 2;
        attention_cases();
    }
    G = plain;
    flash_on = 0;
}

/* ---- backend creation ---- */

static void test_create(void) {
    svlm_err err = {0};
    svlm_kernels *k = NULL;
    CHECK(!svlm_kernels_is_gpu(C), "the CPU backend says it is a GPU");
    CHECK(svlm_kernels_is_gpu(G), "%s: svlm_kernels_is_gpu is 0", svlm_kernels_name(G));
    CHECK(strstr(svlm_kernels_name(G), "cuda") != NULL, "backend name '%s'", svlm_kernels_name(G));
    REQUIRE(svlm_kernels_create_named("cuda:0", 1, &k, &err) == SVLM_OK, "cuda:0: %s", err.msg);
    CHECK(svlm_kernels_is_gpu(k), "cuda:0 gave %s", svlm_kernels_name(k));
    svlm_kernels_destroy(k);
    REQUIRE(svlm_kernels_create_named("auto", 1, &k, &err) == SVLM_OK, "auto: %s", err.msg);
    CHECK(svlm_kernels_is_gpu(k), "auto gave %s on a machine with a GPU", svlm_kernels_name(k));
    svlm_kernels_destroy(k);
    REQUIRE(svlm_kernels_create_named("cpu", 1, &k, &err) == SVLM_OK, "cpu: %s", err.msg);
    CHECK(!svlm_kernels_is_gpu(k), "cpu gave %s", svlm_kernels_name(k));
    svlm_kernels_destroy(k);
    k = NULL;
    CHECK(svlm_kernels_create_named("cuda0", 1, &k, &err) == SVLM_E_INVALID && !k, "bad name accepted");
    /* svlm_k_alloc: zero-filled, aligned, writable from the host */
    unsigned char *p = svlm_k_alloc(G, 1000003);
    REQUIRE(p, "svlm_k_alloc of 1000003 bytes failed");
    int zero = 1;
    for (size_t i = 0; i < 1000003; i++)
        zero &= p[i] == 0;
    CHECK(zero && ((uintptr_t)p & 63) == 0, "svlm_k_alloc: not zero-filled or not 64-byte aligned");
    memset(p, 7, 1000003);
    /* device memory: the driver's count, with this block in it, and without it */
    size_t with = 0, without = 0, total = 0;
    CHECK(svlm_kernels_device_memory(G, &with, &total) && total > with, "device memory: %zu of %zu", with,
          total);
    svlm_k_free(G, p);
    svlm_kernels_device_memory(G, &without, &total);
    CHECK(with >= without + 1000003, "device memory: %zu with a 1000003-byte block, %zu without", with,
          without);
}

int test_main(void) {
    svlm_err err = {0};
    const int as_cpu = test_gpu_as_cpu();
    /* the cases below reach the cuBLAS path from 32 queries; G takes them to cuBLAS and the kernel,
     * G_flash to the flash kernel */
    setenv("SVLM_CUDA_ATTN_GEMM_MIN_Q", "32", 1);
    setenv("SVLM_CUDA_FLASH", "0", 1);
    G = test_gpu_backend();
    unsetenv("SVLM_CUDA_FLASH");
    if (!as_cpu) {
        setenv("SVLM_CUDA_FLASH_MIN_Q", "2", 1);
        setenv("SVLM_CUDA_FLASH_MMA", "0", 1);
        G_flash = test_gpu_backend();
        setenv("SVLM_CUDA_FLASH_MMA", "1", 1);
        G_mma = test_gpu_backend();
        unsetenv("SVLM_CUDA_FLASH_MMA");
        setenv("SVLM_CUDA_ARGMAX", "0", 1);
        G_host_argmax = test_gpu_backend();
        unsetenv("SVLM_CUDA_ARGMAX");
        unsetenv("SVLM_CUDA_FLASH_MIN_Q");
    }
    REQUIRE(svlm_kernels_create_cpu(0, &C, &err) == SVLM_OK, "cpu backend: %s", err.msg);
    printf("backend under test: %s; reference: %s\n", svlm_kernels_name(G), svlm_kernels_name(C));
    if (!as_cpu) test_create();

    /* weights: every type at 256 and 576 columns (768 for the K-quants: 256 | cols), and float weights with
     * stories260K's odd sizes, and 300 and 530 columns: rows split over warps with a partial sub-block */
    wcase cases[2 * N_TYPES + 14 + NW];
    int n_cases = 0;
    cases[n_cases++] = make_weight(SVLM_Q8_0, 96, MULTI_COLS); /* for test_matmul_multi */
    cases[n_cases++] = make_weight(SVLM_F16, 200, MULTI_COLS);
    cases[n_cases++] = make_weight(SVLM_Q4_K, 19, MULTI_COLS);
    for (int i = 0; i < N_TYPES; i++) {
        cases[n_cases++] = make_weight(weight_types[i], 96, 256);
        int bs = svlm_dtype_get(weight_types[i])->block_size;
        cases[n_cases++] = make_weight(weight_types[i], 96, bs == 256 ? 768 : 576);
        if (bs == 1) cases[n_cases++] = make_weight(weight_types[i], 37, 172);
        /* rows split over two and four warps (9 and 16 sub-blocks of 32 and a partial one) */
        if (bs == 1) cases[n_cases++] = make_weight(weight_types[i], 29, 300);
        if (bs == 1) cases[n_cases++] = make_weight(weight_types[i], 21, 530);
    }
    /* a tall weight (as the output product): split over fewer warps a row, one here (parts_for_rows;
     * SVLM_CUDA_MATVEC_TALL=0: four) */
    cases[n_cases++] = make_weight(SVLM_Q8_0, 16400, 512);
    /* the real shapes' row sizes, which the staged form (SVLM_CUDA_MATVEC_STAGED=1, _K=1) copies
     * whole: SmolVLM2-256M's down product (Q8_0, 1536 columns: 1632-byte rows), 2.2B's Q4_K and Q6_K
     * rows of 2048 columns (1152 and 1680 bytes; Q6_K at 256 and 768 columns is not whole words and
     * never staged) and a Q4_1 row at the 1280-byte pair limit */
    cases[n_cases++] = make_weight(SVLM_Q8_0, 24, 1536);
    cases[n_cases++] = make_weight(SVLM_Q4_K, 24, 2048);
    cases[n_cases++] = make_weight(SVLM_Q6_K, 24, 2048);
    cases[n_cases++] = make_weight(SVLM_Q4_1, 24, 2048);
    for (buf_mode = 0; buf_mode < BUF_MODES; buf_mode++) {
        printf("---- buffers: %s ----\n", mode_names[buf_mode]);
        test_matmul(cases + NW, n_cases - NW);
        test_matmul_multi(cases);
        if (buf_mode == BUF_MIXED) continue; /* the other ops: two modes are enough */
        test_norms();
        test_rope();
        test_elementwise();
        test_attention();
    }
    for (int m = 0; m < BUF_MODES; m++)
        printf("%s buffers: worst comparison at %.3g of its tolerance (%s)\n", mode_names[m], worst_share[m],
               worst_what[m]);
    svlm_kernels_destroy(G); /* before the weights it may hold copies of are freed */
    if (G_flash) svlm_kernels_destroy(G_flash);
    if (G_mma) svlm_kernels_destroy(G_mma);
    if (G_host_argmax) svlm_kernels_destroy(G_host_argmax);
    svlm_kernels_destroy(C);
    for (int i = 0; i < n_cases; i++) {
        free(cases[i].deq);
        free((void *)cases[i].w.data);
    }
    return 0;
}
