/*
 * The CUDA backend's data ops and deferred mode against the CPU backend: svlm_k_copy between
 * host memory and svlm_k_alloc buffers, svlm_k_store and svlm_k_load (f32, f16), svlm_k_round_f16,
 * svlm_k_gather_rows, svlm_k_gelu_tanh_f16, svlm_k_attention_multi, matmul_multi's one-launch products,
 * chains of ops run with svlm_k_defer on, which must give exactly what the same chain gives op by op,
 * svlm_k_store_rows, decode-like steps replayed from a recording (svlm_k_replay_begin/end), and
 * svlm_kernels_forget_range freeing a closed model's device copies.
 *
 * Tolerances: copies, stores, roundings and gathers are exact (IEEE round-to-nearest-even on both
 * sides); the f16-table GELU may differ by one f16 step where the two backends' expf differ by an
 * ulp across a rounding boundary (2^-10 relative); a deferred chain equals its op-by-op run bit
 * for bit (same kernels, same order) and the CPU within 1e-4.
 *
 * Skips (77) without a usable GPU unless SVLM_TEST_REQUIRE_GPU=1; SVLM_TEST_CUDA_AS_CPU=1 puts a
 * CPU backend in the GPU's place (a check of this test without a GPU).
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/dtype.h"
#include "kernels/kernels.h"
#include "test.h"
#include "test_gpu.h"
#include "test_rand.h"

static svlm_kernels *G, *C;

static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static float frand(void) { /* uniform in [-1, 1) */
    return test_frand(&rng);
}

static float *host_floats(int64_t n, float scale) {
    return test_floats(&rng, n, scale);
}

static void *galloc(size_t bytes) {
    void *p = svlm_k_alloc(G, bytes);
    REQUIRE(p, "svlm_k_alloc(%zu) failed", bytes);
    return p;
}

static double max_rel(const float *a, const float *b, int64_t n) {
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]) / fmax(1.0, fabs((double)b[i]));
        if (!(d <= worst)) worst = d; /* NaN counts as worst */
    }
    return worst;
}

static void test_copy(void) {
    enum { N = 100003 };
    float *src = host_floats(N, 5.0f), *back = host_floats(N, 0.0f);
    float *a = galloc(sizeof(float) * N), *b = galloc(sizeof(float) * N);
    for (int deferred = 0; deferred < 2; deferred++) {
        memset(back, 0, sizeof(float) * N);
        if (deferred) svlm_k_defer(G, 1);
        svlm_k_copy(G, a, src, sizeof(float) * N);              /* host -> device */
        svlm_k_copy(G, b + 7, a + 3, sizeof(float) * (N - 10)); /* device -> device, offsets */
        svlm_k_copy(G, back, b, sizeof(float) * N);             /* device -> host: complete on return */
        int ok = !memcmp(back + 7, src + 3, sizeof(float) * (N - 10));
        if (deferred) svlm_k_defer(G, 0);
        CHECK(ok, "copy chain host -> k_alloc -> k_alloc -> host (%s) lost data",
              deferred ? "deferred" : "op by op");
    }
    /* deferred code reuses host buffers right after copying them across (embeddings, positions,
     * page rows): the copy must have taken the data when it returns */
    svlm_k_defer(G, 1);
    memcpy(back, src, sizeof(float) * N);
    svlm_k_copy(G, a, back, sizeof(float) * N);
    memset(back, 0xff, sizeof(float) * N); /* NaNs */
    svlm_k_copy(G, b, a, sizeof(float) * N);
    svlm_k_copy(G, back, b, sizeof(float) * N);
    int kept = !memcmp(back, src, sizeof(float) * N);
    svlm_k_defer(G, 0);
    CHECK(kept, "a host buffer rewritten right after svlm_k_copy took it changed what the copy delivered");
    /* host -> host goes straight through */
    svlm_k_copy(G, back, src, sizeof(float) * 100);
    CHECK(!memcmp(back, src, sizeof(float) * 100), "host -> host copy");
    /* svlm_k_alloc_host memory (page-locked on a GPU) both ways, in deferred mode as the passes use it */
    float *pinned = svlm_k_alloc_host(G, sizeof(float) * N);
    REQUIRE(pinned, "svlm_k_alloc_host failed");
    svlm_k_defer(G, 1);
    svlm_k_copy(G, a, src, sizeof(float) * N);
    svlm_k_copy(G, pinned, a, sizeof(float) * N); /* device -> page-locked host: complete on return */
    int pin_ok = !memcmp(pinned, src, sizeof(float) * N);
    for (int i = 0; i < N; i++)
        pinned[i] = -src[i];
    svlm_k_copy(G, b, pinned, sizeof(float) * N);
    svlm_k_copy(G, back, b, sizeof(float) * N);
    svlm_k_defer(G, 0);
    for (int i = 0; i < N && pin_ok; i++)
        pin_ok = back[i] == -src[i];
    CHECK(pin_ok, "copies to and from svlm_k_alloc_host memory lost data");
    svlm_k_free_host(G, pinned);
    svlm_k_free(G, a);
    svlm_k_free(G, b);
    free(src);
    free(back);
    printf("copy: exact in both modes\n");
}

static void test_store_round(void) {
    enum { N = 5000 };
    float *src = host_floats(N, 70000.0f); /* beyond f16's range too: infinities both sides */
    for (int i = 0; i < 100; i++)
        src[i] *= 1e-9f; /* f16 subnormals and zeros */
    float *gs = galloc(sizeof(float) * N);
    svlm_k_copy(G, gs, src, sizeof(float) * N);
    uint16_t *gh = galloc(2 * (N + 64)), hc[N], hg[N];
    svlm_k_store(G, gh + 64, SVLM_F16, gs, N);
    svlm_k_store(C, hc, SVLM_F16, src, N);
    svlm_k_copy(G, hg, gh + 64, sizeof hg);
    CHECK(!memcmp(hg, hc, sizeof hg), "store f16 differs from the CPU's");
    float *gf = galloc(sizeof(float) * N), *fb = host_floats(N, 0.0f);
    /* and back: svlm_k_load from device f16, host f16 (staged) and f32 */
    float *lc = host_floats(N, 0.0f), *lg = galloc(sizeof(float) * N);
    svlm_k_load(C, lc, hc, SVLM_F16, N);
    svlm_k_load(G, lg, gh + 64, SVLM_F16, N);
    svlm_k_copy(G, fb, lg, sizeof(float) * N);
    CHECK(!memcmp(fb, lc, sizeof(float) * N), "load f16 (device) differs from the CPU's");
    memset(fb, 0, sizeof(float) * N);
    svlm_k_load(G, fb, hc, SVLM_F16, N);
    CHECK(!memcmp(fb, lc, sizeof(float) * N),
          "load f16 (host source and destination) differs from the CPU's");
    svlm_k_load(G, lg, src, SVLM_F32, N);
    svlm_k_copy(G, fb, lg, sizeof(float) * N);
    CHECK(!memcmp(fb, src, sizeof(float) * N), "load f32 is not a copy");
    svlm_k_free(G, lg);
    free(lc);
    svlm_k_store(G, gf, SVLM_F32, gs, N);
    svlm_k_copy(G, fb, gf, sizeof(float) * N);
    CHECK(!memcmp(fb, src, sizeof(float) * N), "store f32 is not a copy");

    float *rc = host_floats(N, 0.0f);
    memcpy(rc, src, sizeof(float) * N);
    svlm_k_round_f16(C, rc, N);
    svlm_k_round_f16(G, gs, N);
    svlm_k_copy(G, fb, gs, sizeof(float) * N);
    CHECK(!memcmp(fb, rc, sizeof(float) * N), "round_f16 differs from the CPU's");
    /* a host pointer is staged and written back */
    memcpy(fb, src, sizeof(float) * N);
    svlm_k_round_f16(G, fb, N);
    CHECK(!memcmp(fb, rc, sizeof(float) * N), "round_f16 on host memory differs from the CPU's");
    svlm_k_free(G, gs);
    svlm_k_free(G, gh);
    svlm_k_free(G, gf);
    free(src);
    free(fb);
    free(rc);
    printf("store f16/f32, load f16/f32, round_f16: exact\n");
}

static void test_gather_gelu(void) {
    enum { ROWS = 300, DIM = 771, NI = 1000 };
    float *src = host_floats((int64_t)ROWS * DIM, 3.0f);
    int32_t idx[NI];
    for (int i = 0; i < NI; i++)
        idx[i] = (int32_t)((i * 7919u) % ROWS);
    float *gs = galloc(sizeof(float) * ROWS * DIM), *gd = galloc(sizeof(float) * NI * DIM);
    float *dc = host_floats((int64_t)NI * DIM, 0.0f), *dg = host_floats((int64_t)NI * DIM, 0.0f);
    svlm_k_copy(G, gs, src, sizeof(float) * ROWS * DIM);
    svlm_k_gather_rows(G, gd, gs, idx, NI, DIM);
    svlm_k_gather_rows(C, dc, src, idx, NI, DIM);
    svlm_k_copy(G, dg, gd, sizeof(float) * NI * DIM);
    CHECK(!memcmp(dg, dc, sizeof(float) * NI * DIM), "gather_rows k_alloc -> k_alloc");
    memset(dg, 0, sizeof(float) * NI * DIM);
    svlm_k_gather_rows(G, dg, src, idx, NI, DIM); /* host source and destination: staged */
    CHECK(!memcmp(dg, dc, sizeof(float) * NI * DIM), "gather_rows host -> host");

    /* GELU through the f16 table, on values around the +-10 cut-offs too */
    const int64_t n = (int64_t)NI * DIM;
    for (int64_t i = 0; i < n; i++)
        dc[i] *= 4.0f;
    dc[0] = 10.0f, dc[1] = -10.0f, dc[2] = 9.999f, dc[3] = -9.999f, dc[4] = 0.0f;
    svlm_k_copy(G, gd, dc, sizeof(float) * (size_t)n);
    svlm_k_gelu_tanh_f16(C, dc, n);
    svlm_k_gelu_tanh_f16(G, gd, n);
    svlm_k_copy(G, dg, gd, sizeof(float) * (size_t)n);
    int64_t differ = 0;
    for (int64_t i = 0; i < n; i++)
        differ += dg[i] != dc[i];
    double e = max_rel(dg, dc, n);
    printf("gather_rows: exact; gelu_tanh_f16: %lld of %lld values differ, max %.3g (tolerance 2^-10)\n",
           (long long)differ, (long long)n, e);
    CHECK(e <= 1.0 / 1024, "gelu_tanh_f16 differs from the CPU's by %g", e);
    svlm_k_free(G, gs);
    svlm_k_free(G, gd);
    free(src);
    free(dc);
    free(dg);
}

/* A decode-like chain on backend k: every buffer but `out` from svlm_k_alloc of k, inputs copied
 * in, the result copied out to host memory at the end. */
static void chain(svlm_kernels *k, int deferred, const svlm_weight *w, const float *x0, const float *nw,
                  const int32_t *pos, int n, float *out) {
    enum { E = 256, NH = 4, HD = 64, NKV = 40 };
    float *x = svlm_k_alloc(k, sizeof(float) * n * E), *h = svlm_k_alloc(k, sizeof(float) * n * E);
    float *q = svlm_k_alloc(k, sizeof(float) * n * E), *att = svlm_k_alloc(k, sizeof(float) * n * E);
    float *kv = svlm_k_alloc(k, sizeof(float) * NKV * E);
    int32_t *pk = svlm_k_alloc(k, sizeof(int32_t) * n);
    REQUIRE(x && h && q && att && kv && pk, "svlm_k_alloc failed");
    if (deferred) svlm_k_defer(k, 1);
    svlm_k_copy(k, x, x0, sizeof(float) * n * E);
    svlm_k_copy(k, pk, pos, sizeof(int32_t) * n);
    for (int layer = 0; layer < 3; layer++) {
        svlm_k_rmsnorm(k, x, nw, h, n, E, 1e-5f);
        svlm_k_matmul(k, w, h, n, q);
        svlm_k_rope(k, q, n, NH, HD, HD, pk, 10000.0f, 0);
        svlm_k_store(k, kv + (size_t)layer * n * E, SVLM_F32, q, (int64_t)n * E);
        svlm_k_round_f16(k, q, (int64_t)n * E);
        svlm_attn_args a = {.q = q,
                            .k = kv,
                            .v = kv,
                            .kv_type = SVLM_F32,
                            .kv_stride = E,
                            .out = att,
                            .n_q = n,
                            .n_kv = (layer + 1) * n,
                            .n_head = NH,
                            .n_kv_head = NH,
                            .head_dim = HD,
                            .causal = 1,
                            .scale = 0.125f};
        svlm_k_attention(k, &a);
        svlm_k_add(k, x, att, (int64_t)n * E);
    }
    svlm_k_copy(k, out, x, sizeof(float) * n * E);
    if (deferred) svlm_k_defer(k, 0);
    void *bufs[] = {x, h, q, att, kv, pk};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        svlm_k_free(k, bufs[i]);
}

static void test_deferred_chain(void) {
    enum { E = 256, MAXN = 12 };
    float *wd = host_floats((int64_t)E * E, 0.1f), *x0 = host_floats(MAXN * E, 1.0f),
          *nw = host_floats(E, 1.0f);
    svlm_weight w = {SVLM_F32, E, E, wd, sizeof(float) * E};
    int32_t pos[MAXN];
    for (int i = 0; i < MAXN; i++)
        pos[i] = 100 + 3 * i;
    const int ns[2] = {1, MAXN}; /* decode (matrix-vector) and a batched product */
    for (int t = 0; t < 2; t++) {
        int n = ns[t];
        float *a = host_floats(n * E, 0.0f), *b = host_floats(n * E, 0.0f), *c = host_floats(n * E, 0.0f);
        chain(G, 0, &w, x0, nw, pos, n, a);
        chain(G, 1, &w, x0, nw, pos, n, b);
        chain(C, 0, &w, x0, nw, pos, n, c);
        CHECK(!memcmp(a, b, sizeof(float) * n * E), "n=%d: the deferred chain differs from op by op", n);
        double e = max_rel(b, c, (int64_t)n * E);
        printf("deferred chain n=%d: identical to op by op; max |gpu - cpu| %.3g (tolerance 1e-4)\n", n, e);
        CHECK(e <= 1e-4, "n=%d: deferred chain differs from the CPU by %g", n, e);
        free(a);
        free(b);
        free(c);
    }
    /* svlm_k_sync makes deferred results readable in place */
    float *g = galloc(sizeof(float) * E);
    svlm_k_defer(G, 1);
    svlm_k_copy(G, g, x0, sizeof(float) * E);
    svlm_k_add(G, g, g, E);
    svlm_k_sync(G);
    int ok = 1;
    for (int i = 0; i < E; i++)
        ok &= g[i] == x0[i] + x0[i];
    svlm_k_defer(G, 0);
    CHECK(ok, "svlm_k_sync: a deferred add is not visible to the host");
    svlm_k_free(G, g);
    svlm_k_forget(G, wd); /* the weight and the norm vector were uploaded */
    svlm_k_forget(G, nw);
    free(wd);
    free(x0);
    free(nw);
}

/* Decode attentions of several sequences at once (split over blocks, lanes over rows) equal the
 * same attentions one by one (the kernel that walks rows per warp) within 1e-5 -- the sums go in
 * another order -- and the CPU's within 1e-4; with a host buffer among them it falls back. Shapes:
 * a few sequences, one long cache (many splits), many short ones (one split each). */
/* NI attentions in one svlm_k_attention_multi call, each over its own cache of up to MAXKV rows
 * after its queries: NQ = 1, decode steps; NQ > 1, the frames of many streams (NQ / 2 to NQ
 * queries each, through the flash kernel on a GPU: f16 operands, 1e-3 against the CPU). */
static void attention_multi_case(int NI, int MAXKV, int NQ) {
    enum { NH = 6, NKVH = 2, HD = 64, KVD = NKVH * HD };
    const int64_t QS = (int64_t)NQ * NH * HD; /* floats of one item's queries or output */
    const double tol_cpu = NQ > 1 ? 1e-3 : 1e-4;
    for (int f16 = 0; f16 < 2; f16++) {
        const size_t elt = f16 ? 2 : 4;
        svlm_attn_args *ag = calloc((size_t)NI, sizeof *ag), *ac = calloc((size_t)NI, sizeof *ac);
        void **kc = calloc((size_t)NI, sizeof(void *)), **vc = calloc((size_t)NI, sizeof(void *));
        void **kg = calloc((size_t)NI, sizeof(void *)), **vg = calloc((size_t)NI, sizeof(void *));
        REQUIRE(ag && ac && kc && vc && kg && vg, "out of memory");
        float *qh = host_floats(NI * QS, 1.0f), *outs = host_floats(2 * NI * QS, 0.0f);
        float *oc = host_floats(NI * QS, 0.0f);
        float *qg = galloc(sizeof(float) * NI * QS), *og = galloc(sizeof(float) * 2 * NI * QS);
        svlm_k_copy(G, qg, qh, sizeof(float) * NI * QS);
        for (int i = 0; i < NI; i++) {
            const int64_t n_q = NQ > 1 ? NQ - (i * 7) % (NQ / 2) : 1;
            const int64_t n_kv = NI == 1 ? MAXKV : n_q + (i * 97) % MAXKV;
            float *kf = host_floats(n_kv * KVD, 1.0f), *vf = host_floats(n_kv * KVD, 1.0f);
            kc[i] = malloc(elt * (size_t)n_kv * KVD);
            vc[i] = malloc(elt * (size_t)n_kv * KVD);
            REQUIRE(kc[i] && vc[i], "out of memory");
            svlm_k_store(C, kc[i], f16 ? SVLM_F16 : SVLM_F32, kf, n_kv * KVD);
            svlm_k_store(C, vc[i], f16 ? SVLM_F16 : SVLM_F32, vf, n_kv * KVD);
            kg[i] = galloc(elt * (size_t)n_kv * KVD);
            vg[i] = galloc(elt * (size_t)n_kv * KVD);
            svlm_k_copy(G, kg[i], kc[i], elt * (size_t)n_kv * KVD);
            svlm_k_copy(G, vg[i], vc[i], elt * (size_t)n_kv * KVD);
            free(kf);
            free(vf);
            ac[i] = (svlm_attn_args){.q = qh + i * QS,
                                     .k = kc[i],
                                     .v = vc[i],
                                     .kv_type = f16 ? SVLM_F16 : SVLM_F32,
                                     .kv_stride = KVD,
                                     .out = oc + i * QS,
                                     .n_q = n_q,
                                     .n_kv = n_kv,
                                     .n_head = NH,
                                     .n_kv_head = NKVH,
                                     .head_dim = HD,
                                     .causal = 1,
                                     .scale = 0.125f};
            ag[i] = ac[i];
            ag[i].q = qg + i * QS;
            ag[i].k = kg[i];
            ag[i].v = vg[i];
            ag[i].out = og + i * QS;
        }
        svlm_k_attention_multi(C, ac, NI);
        svlm_k_defer(G, 1);
        svlm_k_attention_multi(G, ag, NI);
        for (int i = 0; i < NI; i++) { /* one by one, into the second half */
            svlm_attn_args one = ag[i];
            one.out += NI * QS;
            svlm_k_attention(G, &one);
        }
        svlm_k_copy(G, outs, og, sizeof(float) * 2 * NI * QS);
        svlm_k_defer(G, 0);
        /* rows past an item's queries stay zero in all three */
        double e1 = max_rel(outs, outs + NI * QS, NI * QS);
        CHECK(e1 <= 1e-5, "attention_multi (%s KV) differs from one by one by %g", f16 ? "f16" : "f32", e1);
        double e = max_rel(outs, oc, NI * QS);
        printf("attention_multi %d items of up to %d queries (their caches up to %d rows more), %s KV: %.3g "
               "off one by one (tolerance 1e-5); max |gpu - cpu| %.3g (tolerance %g)\n",
               NI, NQ, MAXKV, f16 ? "f16" : "f32", e1, e, tol_cpu);
        CHECK(e <= tol_cpu, "attention_multi differs from the CPU by %g", e);
        /* a host output among them: the backend goes one by one */
        float *host_out = host_floats(QS, 0.0f);
        ag[NI / 2].out = host_out;
        svlm_k_attention_multi(G, ag, NI);
        e = max_rel(host_out, oc + NI / 2 * QS, QS);
        CHECK(e <= tol_cpu, "attention_multi with a host output differs from the CPU by %g", e);
        free(host_out);
        for (int i = 0; i < NI; i++) {
            free(kc[i]);
            free(vc[i]);
            svlm_k_free(G, kg[i]);
            svlm_k_free(G, vg[i]);
        }
        svlm_k_free(G, qg);
        svlm_k_free(G, og);
        free(qh);
        free(outs);
        free(oc);
        free(ag);
        free(ac);
        free(kc);
        free(vc);
        free(kg);
        free(vg);
    }
}

static void test_attention_multi(void) {
    attention_multi_case(7, 300, 1);
    attention_multi_case(1, 3000, 1);
    attention_multi_case(40, 50, 1);
    attention_multi_case(5, 700, 81);  /* frames after a window of frames */
    attention_multi_case(33, 90, 130); /* query tiles past some items' queries */
    /* the many-query cases again through the flash kernel's WMMA form (SVLM_CUDA_FLASH_MMA=0; G
     * takes the mma.sync form), whose one launch for many sequences they are the only check of */
    setenv("SVLM_CUDA_FLASH_MMA", "0", 1);
    svlm_kernels *wmma = test_gpu_backend(), *plain = G;
    unsetenv("SVLM_CUDA_FLASH_MMA");
    G = wmma;
    attention_multi_case(5, 700, 81);
    attention_multi_case(33, 90, 130);
    G = plain;
    svlm_kernels_destroy(wmma);
}

/* q/k/v-like products of weights alike (matmul_multi into svlm_k_alloc outputs: one launch on a
 * GPU) equal the same products one by one on the same backend (1e-6 of the largest output), and
 * the CPU's within the decode products' tolerance (8-bit activations on the CPU: 2e-2). */
static void test_matvec_together(void) {
    enum { COLS = 512, NW = 3 };
    const int64_t rows[NW] = {96, 32, 32};
    const svlm_dtype types[] = {SVLM_Q8_0, SVLM_Q4_K, SVLM_F16, SVLM_Q6_K};
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        const svlm_dtype type = types[t];
        const size_t rb = svlm_row_bytes(type, COLS);
        svlm_weight w[NW];
        const svlm_weight *ws[NW];
        void *data[NW];
        float *row = host_floats(COLS, 1.0f);
        for (int i = 0; i < NW; i++) {
            data[i] = malloc(rb * (size_t)rows[i]);
            REQUIRE(data[i], "out of memory");
            for (int64_t r = 0; r < rows[i]; r++) {
                for (int c = 0; c < COLS; c++)
                    row[c] = frand();
                REQUIRE(!svlm_quantize_row(type, row, (char *)data[i] + (size_t)r * rb, COLS), "quantize");
            }
            w[i] = (svlm_weight){type, rows[i], COLS, data[i], rb};
            ws[i] = &w[i];
        }
        for (int n = 1; n <= 5; n += 4) {
            float *x = host_floats((int64_t)n * COLS, 1.0f), *xg = galloc(sizeof(float) * n * COLS);
            svlm_k_copy(G, xg, x, sizeof(float) * n * COLS);
            float *yt[NW], *y1[NW], *yc[NW], *h1 = host_floats(n * 96, 0), *ht = host_floats(n * 96, 0);
            for (int i = 0; i < NW; i++) {
                yt[i] = galloc(sizeof(float) * n * rows[i]);
                y1[i] = galloc(sizeof(float) * n * rows[i]);
                yc[i] = host_floats(n * rows[i], 0.0f);
            }
            svlm_k_matmul_multi(G, ws, NW, xg, n, yt);
            for (int i = 0; i < NW; i++)
                svlm_k_matmul(G, &w[i], xg, n, y1[i]);
            svlm_k_matmul_multi(C, ws, NW, x, n, yc);
            double worst = 0;
            for (int i = 0; i < NW; i++) {
                svlm_k_copy(G, ht, yt[i], sizeof(float) * n * rows[i]);
                svlm_k_copy(G, h1, y1[i], sizeof(float) * n * rows[i]);
                double ymax = 0, d = 0, d1 = 0;
                for (int64_t j = 0; j < n * rows[i]; j++) {
                    ymax = fmax(ymax, fabs(yc[i][j]));
                    d = fmax(d, fabs((double)ht[j] - yc[i][j]));
                    d1 = fmax(d1, fabs((double)ht[j] - h1[j]));
                }
                /* the same per-row arithmetic: equal up to the compiler's choice of contractions */
                CHECK(d1 <= 1e-6 * fmax(ymax, 1e-30),
                      "%s n=%d weight %d: together and one by one differ by %g", svlm_dtype_get(type)->name,
                      n, i, d1);
                worst = fmax(worst, d / fmax(ymax, 1e-30));
            }
            printf(
                "matmul_multi %s n=%d into k_alloc outputs: equal to one by one; |gpu - cpu| / max|y| %.3g "
                "(tolerance 2e-2)\n",
                svlm_dtype_get(type)->name, n, worst);
            CHECK(worst <= 2e-2, "%s n=%d: products together differ from the CPU by %g",
                  svlm_dtype_get(type)->name, n, worst);
            for (int i = 0; i < NW; i++) {
                svlm_k_free(G, yt[i]);
                svlm_k_free(G, y1[i]);
                free(yc[i]);
            }
            svlm_k_free(G, xg);
            free(x);
            free(h1);
            free(ht);
        }
        for (int i = 0; i < NW; i++) {
            svlm_k_forget(G, data[i]);
            free(data[i]);
        }
        free(row);
    }
}

/* One decode-like step of NS sequences (rows) through the step tables, as llama_eval.c runs it:
 * 3 layers of rmsnorm, product, RoPE, the rows' keys stored into their caches (store_rows) and
 * each row's attention over its own cache (attention_items), residual. With `skip_add` the last
 * layer leaves out its add: a different run under the same key. */
enum { RS = 2, RE = 256, RNH = 4, RHD = 64, RLAYERS = 3, RMAXKV = 16 };
typedef struct replay_bufs {
    float *x, *h, *q, *att;
    void *cache[RLAYERS][RS]; /* [RMAXKV][RE] each, type `type` */
    void **dsts;              /* [RLAYERS][RS] */
    svlm_attn_item *items;    /* [RLAYERS][RS] */
    int32_t *pos;
    svlm_dtype type;
} replay_bufs;

static void replay_alloc(svlm_kernels *k, replay_bufs *b, svlm_dtype type) {
    const size_t elt = type == SVLM_F16 ? 2 : 4;
    b->type = type;
    b->x = svlm_k_alloc(k, sizeof(float) * RS * RE);
    b->h = svlm_k_alloc(k, sizeof(float) * RS * RE);
    b->q = svlm_k_alloc(k, sizeof(float) * RS * RE);
    b->att = svlm_k_alloc(k, sizeof(float) * RS * RE);
    b->dsts = svlm_k_alloc(k, sizeof(void *) * RLAYERS * RS);
    b->items = svlm_k_alloc(k, sizeof(svlm_attn_item) * RLAYERS * RS);
    b->pos = svlm_k_alloc(k, sizeof(int32_t) * RS);
    REQUIRE(b->x && b->h && b->q && b->att && b->dsts && b->items && b->pos, "svlm_k_alloc failed");
    for (int l = 0; l < RLAYERS; l++)
        for (int r = 0; r < RS; r++)
            REQUIRE((b->cache[l][r] = svlm_k_alloc(k, elt * RMAXKV * RE)), "svlm_k_alloc failed");
}

static void replay_free(svlm_kernels *k, replay_bufs *b) {
    void *bufs[] = {b->x, b->h, b->q, b->att, b->dsts, b->items, b->pos};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        svlm_k_free(k, bufs[i]);
    for (int l = 0; l < RLAYERS; l++)
        for (int r = 0; r < RS; r++)
            svlm_k_free(k, b->cache[l][r]);
}

static void replay_ops(svlm_kernels *k, replay_bufs *b, const svlm_weight *w, const float *nw, int skip_add) {
    const svlm_attn_args shape = {.kv_type = b->type,
                                  .kv_stride = RE,
                                  .n_head = RNH,
                                  .n_kv_head = RNH,
                                  .head_dim = RHD,
                                  .causal = 1,
                                  .scale = 0.125f};
    for (int l = 0; l < RLAYERS; l++) {
        svlm_k_rmsnorm(k, b->x, nw, b->h, RS, RE, 1e-5f);
        svlm_k_matmul(k, w, b->h, RS, b->q);
        svlm_k_rope(k, b->q, RS, RNH, RHD, RHD, b->pos, 10000.0f, 0);
        svlm_k_store_rows(k, b->dsts + l * RS, b->type, b->q, RS, RE);
        svlm_k_attention_items(k, &shape, b->items + l * RS, RS);
        if (!(skip_add && l == RLAYERS - 1)) svlm_k_add(k, b->x, b->att, (int64_t)RS * RE);
    }
}

/* Step `step` (cache row `step` of every sequence): returns what svlm_k_replay_end said. */
static int replay_step(svlm_kernels *k, replay_bufs *b, const svlm_weight *w, const float *nw, int step,
                       const float *x0, int skip_add, float *out) {
    const size_t row = (b->type == SVLM_F16 ? 2 : 4) * (size_t)RE;
    void *dsts[RLAYERS * RS];
    svlm_attn_item items[RLAYERS * RS];
    int32_t pos[RS];
    for (int r = 0; r < RS; r++)
        pos[r] = 10 * r + step;
    for (int l = 0; l < RLAYERS; l++)
        for (int r = 0; r < RS; r++) {
            dsts[l * RS + r] = (char *)b->cache[l][r] + (size_t)step * row;
            items[l * RS + r] =
                (svlm_attn_item){b->q + r * RE, b->cache[l][r], b->cache[l][r], b->att + r * RE, step + 1};
        }
    svlm_k_defer(k, 1);
    svlm_k_copy(k, b->x, x0, sizeof(float) * RS * RE);
    svlm_k_copy(k, b->pos, pos, sizeof pos);
    svlm_k_copy(k, b->dsts, dsts, sizeof dsts);
    svlm_k_copy(k, b->items, items, sizeof items);
    svlm_k_replay_begin(k, b, 1);
    replay_ops(k, b, w, nw, skip_add);
    int ran = svlm_k_replay_end(k);
    if (!ran) replay_ops(k, b, w, nw, skip_add);
    svlm_k_copy(k, out, b->x, sizeof(float) * RS * RE);
    svlm_k_defer(k, 0);
    return ran;
}

/* Replayed steps (CUDA Graphs) give what the CPU gives step after step, with each step's own
 * inputs, cache rows and lengths; a different run under the same key is caught (its ops issued
 * again) and still right. */
static void test_replay(void) {
    float *wd = host_floats((int64_t)RE * RE, 0.1f), *nw = host_floats(RE, 1.0f);
    svlm_weight w = {SVLM_F32, RE, RE, wd, sizeof(float) * RE};
    const char *graphs = getenv("SVLM_CUDA_GRAPHS");
    const int graphs_on = svlm_kernels_is_gpu(G) && !(graphs && !strcmp(graphs, "0"));
    for (int f16 = 0; f16 < 2; f16++) {
        replay_bufs bg, bc;
        replay_alloc(G, &bg, f16 ? SVLM_F16 : SVLM_F32);
        replay_alloc(C, &bc, f16 ? SVLM_F16 : SVLM_F32);
        float *og = host_floats(RS * RE, 0.0f), *oc = host_floats(RS * RE, 0.0f);
        double worst = 0;
        int refused = -1;
        for (int step = 0; step < 8; step++) {
            float *x0 = host_floats(RS * RE, 1.0f);
            const int odd = step == 5; /* not the recorded run */
            int ran = replay_step(G, &bg, &w, nw, step, x0, odd, og);
            REQUIRE(replay_step(C, &bc, &w, nw, step, x0, odd, oc), "the CPU refused a run");
            if (odd) refused = !ran;
            worst = fmax(worst, max_rel(og, oc, RS * RE));
            free(x0);
        }
        /* f16 caches: a last-bit difference upstream can flip a stored key by one f16 step (2^-10) */
        const double tol = f16 ? 1e-3 : 1e-4;
        printf("replayed decode steps (%s caches): 8 steps, max |gpu - cpu| %.3g (tolerance %g); a different "
               "run under the same key %s\n",
               f16 ? "f16" : "f32", worst, tol, refused ? "was refused and issued again" : "ran");
        CHECK(worst <= tol, "replayed steps (%s caches) differ from the CPU by %g", f16 ? "f16" : "f32",
              worst);
        /* steps 2..4 replay the recording: step 5's calls differ from it */
        if (graphs_on) CHECK(refused == 1, "a run that differs from the recording was replayed");
        free(og);
        free(oc);
        svlm_k_replay_forget(G, &bg);
        replay_free(G, &bg);
        replay_free(C, &bc);
    }
    svlm_k_forget(G, wd);
    svlm_k_forget(G, nw);
    free(wd);
    free(nw);
}

/* store_rows puts each row where its table entry says, f32 as is and f16 rounded as svlm_k_store. */
static void test_store_rows(void) {
    enum { N = 5, DIM = 300 };
    for (int f16 = 0; f16 < 2; f16++) {
        const svlm_dtype t = f16 ? SVLM_F16 : SVLM_F32;
        const size_t elt = f16 ? 2 : 4;
        float *src = host_floats(N * DIM, 3.0f), *sg = galloc(sizeof(float) * N * DIM);
        char *dg = galloc(elt * N * DIM * 2), *dc = calloc(N * DIM * 2, elt),
             *back = calloc(N * DIM * 2, elt);
        REQUIRE(dc && back, "out of memory");
        void *tg[N], *tc[N], **tk = galloc(sizeof(void *) * N);
        for (int i = 0; i < N; i++) { /* rows land reversed and spaced out */
            tg[i] = dg + elt * (size_t)DIM * (size_t)(2 * (N - 1 - i));
            tc[i] = dc + elt * (size_t)DIM * (size_t)(2 * (N - 1 - i));
        }
        svlm_k_copy(G, sg, src, sizeof(float) * N * DIM);
        svlm_k_copy(G, tk, tg, sizeof tg);
        svlm_k_store_rows(G, tk, t, sg, N, DIM);
        svlm_k_store_rows(C, tc, t, src, N, DIM);
        svlm_k_copy(G, back, dg, elt * N * DIM * 2);
        CHECK(!memcmp(back, dc, elt * N * DIM * 2), "store_rows (%s) differs from the CPU",
              f16 ? "f16" : "f32");
        svlm_k_free(G, sg);
        svlm_k_free(G, dg);
        svlm_k_free(G, tk);
        free(src);
        free(dc);
        free(back);
    }
    printf("store_rows f32 and f16: equal to the CPU\n");
}

/* The fused decode products (rmsnorm + q/k/v, rmsnorm + gate/up + SwiGLU, product + residual)
 * equal the op sequences they stand for on the same backend within 1e-5 of the largest output
 * (the norm's sum goes in another order), and the CPU's within the decode products' 2e-2 (8-bit
 * activations on the CPU). On the default backend n = 1, 3, 8 take the fused kernels and n = 20
 * the cuBLAS path; with matvec up to 16 rows, n = 9, 12, 16 take the kernels' 16-row form. */
static void fused_products(svlm_kernels *GU, const int *ns, int n_ns) {
    /* Q4_K rows: multiples of 256; 768 columns: four warps share a row, the norm prologue with them */
    enum { E = 768, F = 512, QD = 768, KVD = 64 };
    const svlm_dtype types[] = {SVLM_Q8_0, SVLM_Q4_K};
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        const svlm_dtype type = types[t];
        const int64_t rows[5] = {QD, KVD, KVD, F, F}, cols[5] = {E, E, E, E, E};
        svlm_weight w[6];
        void *data[6];
        for (int i = 0; i < 6; i++) { /* q, k, v, gate, up, down (F -> E) */
            const int64_t r = i < 5 ? rows[i] : E, c = i < 5 ? cols[i] : F;
            const size_t rb = svlm_row_bytes(type, c);
            data[i] = malloc(rb * (size_t)r);
            REQUIRE(data[i], "out of memory");
            float *row = host_floats(c, 1.0f);
            for (int64_t j = 0; j < r; j++) {
                for (int64_t q = 0; q < c; q++)
                    row[q] = frand();
                REQUIRE(!svlm_quantize_row(type, row, (char *)data[i] + (size_t)j * rb, c), "quantize");
            }
            free(row);
            w[i] = (svlm_weight){type, r, c, data[i], rb};
        }
        float *nw = host_floats(E, 1.0f);
        for (int ni = 0; ni < n_ns; ni++) {
            const int n = ns[ni];
            float *x = host_floats((int64_t)n * E, 2.0f);
            /* outputs: q k v | gate | x after the residuals; fused (f) and sequence (s) on the GPU, CPU (c)
             */
            const size_t out_n = (size_t)n * (QD + 2 * KVD + F + E);
            float *of = host_floats((int64_t)out_n, 0), *os = host_floats((int64_t)out_n, 0),
                  *oc = host_floats((int64_t)out_n, 0);
            for (int mode = 0; mode < 3; mode++) {
                svlm_kernels *k = mode == 2 ? C : GU;
                float *xb = svlm_k_alloc(k, sizeof(float) * n * E),
                      *h = svlm_k_alloc(k, sizeof(float) * n * (E > F ? E : F));
                float *q = svlm_k_alloc(k, sizeof(float) * n * QD),
                      *kk = svlm_k_alloc(k, sizeof(float) * n * KVD),
                      *v = svlm_k_alloc(k, sizeof(float) * n * KVD),
                      *g = svlm_k_alloc(k, sizeof(float) * n * F),
                      *u = svlm_k_alloc(k, sizeof(float) * n * F);
                REQUIRE(xb && h && q && kk && v && g && u, "svlm_k_alloc failed");
                svlm_k_copy(k, xb, x, sizeof(float) * n * E);
                const svlm_weight *qkv[3] = {&w[0], &w[1], &w[2]}, *gu[2] = {&w[3], &w[4]};
                float *ys[3] = {q, kk, v}, *gus[2] = {g, u};
                if (mode == 1) { /* the sequence the fused ops stand for */
                    svlm_k_rmsnorm(k, xb, nw, h, n, E, 1e-5f);
                    svlm_k_matmul_multi(k, qkv, 3, h, n, ys);
                    svlm_k_matmul(k, &w[0], q, n, h); /* a residual: x += q Wq^T (Wq is E x E) */
                    svlm_k_add(k, xb, h, (int64_t)n * E);
                    svlm_k_rmsnorm(k, xb, nw, h, n, E, 1e-5f);
                    svlm_k_matmul_multi(k, gu, 2, h, n, gus);
                    svlm_k_silu_mul(k, g, u, (int64_t)n * F);
                    svlm_k_matmul(k, &w[5], g, n, h);
                    svlm_k_add(k, xb, h, (int64_t)n * E);
                } else {
                    svlm_k_rmsnorm_matmul_multi(k, xb, nw, 1e-5f, h, qkv, 3, n, ys);
                    svlm_k_matmul_add(k, &w[0], q, n, xb, h);
                    svlm_k_rmsnorm_swiglu(k, xb, nw, 1e-5f, h, &w[3], &w[4], n, g, u);
                    svlm_k_matmul_add(k, &w[5], g, n, xb, h);
                }
                float *o = mode == 0 ? of : mode == 1 ? os : oc;
                svlm_k_copy(k, o, q, sizeof(float) * n * QD);
                svlm_k_copy(k, o + n * QD, kk, sizeof(float) * n * KVD);
                svlm_k_copy(k, o + n * (QD + KVD), v, sizeof(float) * n * KVD);
                svlm_k_copy(k, o + n * (QD + 2 * KVD), g, sizeof(float) * n * F);
                svlm_k_copy(k, o + n * (QD + 2 * KVD + F), xb, sizeof(float) * n * E);
                void *bufs[] = {xb, h, q, kk, v, g, u};
                for (size_t b = 0; b < sizeof bufs / sizeof bufs[0]; b++)
                    svlm_k_free(k, bufs[b]);
            }
            double ymax = 0, dfs = 0, dfc = 0;
            for (size_t i = 0; i < out_n; i++) {
                ymax = fmax(ymax, fabs(oc[i]));
                dfs = fmax(dfs, fabs((double)of[i] - os[i]));
                dfc = fmax(dfc, fabs((double)of[i] - oc[i]));
            }
            dfs /= fmax(ymax, 1e-30);
            dfc /= fmax(ymax, 1e-30);
            printf(
                "fused decode products %s n=%d: %.3g off the op sequence (tolerance 1e-5), %.3g off the cpu "
                "(tolerance 2e-2), of max|y|\n",
                svlm_dtype_get(type)->name, n, dfs, dfc);
            CHECK(dfs <= 1e-5, "%s n=%d: fused products differ from the op sequence by %g",
                  svlm_dtype_get(type)->name, n, dfs);
            CHECK(dfc <= 2e-2, "%s n=%d: fused products differ from the CPU by %g",
                  svlm_dtype_get(type)->name, n, dfc);
            free(x);
            free(of);
            free(os);
            free(oc);
        }
        for (int i = 0; i < 6; i++) {
            svlm_k_forget(GU, data[i]);
            free(data[i]);
        }
        svlm_k_forget(GU, nw);
        free(nw);
    }
}

/* The default backend (matvec up to 8 rows, cuBLAS above) and one that takes the matvec kernels
 * up to 16 rows (SVLM_CUDA_MATVEC_ROWS=16, the engine's decode batch). */
static void test_fused_products(void) {
    const int ns[4] = {1, 3, 8, 20}, wide[3] = {9, 12, 16};
    fused_products(G, ns, 4);
    setenv("SVLM_CUDA_MATVEC_ROWS", "16", 1);
    svlm_kernels *g16 = test_gpu_backend();
    unsetenv("SVLM_CUDA_MATVEC_ROWS");
    fused_products(g16, wide, 3);
    svlm_kernels_destroy(g16);
}

/* The vision encoder's fused ops (a layer of it: layer norm + q/k/v with biases, a product with
 * bias and residual, the GELU feed-forward half) against the op sequence they stand for on the
 * same GPU and against the CPU, for batched bf16 products (n past the matvec rows), through
 * cuBLASLt's epilogues (SVLM_CUDA_LT=1: required, so a declined product fails the test) and
 * through cuBLAS with separate passes (SVLM_CUDA_LT=0). Against
 * the sequence: the same bf16 operands (F16 weights: f16 operands against TF32 ones, the same
 * precision) and f32 sums, but another GEMM algorithm sums in another
 * order and the residual adds in another order; a last-bit change before the GELU's f16 rounding
 * and the next product's bf16 one can move a rounded value a step (2^-9 relative), a handful of
 * which in a 1024-term sum stay under 2e-3 of max|y|. Against the CPU: bf16 operands, 2e-2. */
static void encoder_fused_case(svlm_kernels *GL, const char *label, svlm_dtype type, int n, double tol_seq) {
    enum { D = 256, F = 1024 };
    const int64_t rows[6] = {D, D, D, D, F, D}, cols[6] = {D, D, D, D, D, F}; /* q k v o up down */
    svlm_weight w[6];
    void *data[6];
    float *b[6];
    for (int i = 0; i < 6; i++) {
        const size_t rb = svlm_row_bytes(type, cols[i]);
        data[i] = malloc(rb * (size_t)rows[i]);
        REQUIRE(data[i], "out of memory");
        float *row = host_floats(cols[i], 0.25f);
        for (int64_t j = 0; j < rows[i]; j++) {
            for (int64_t q = 0; q < cols[i]; q++)
                row[q] = frand() * 0.25f;
            REQUIRE(!svlm_quantize_row(type, row, (char *)data[i] + (size_t)j * rb, cols[i]), "quantize");
        }
        free(row);
        w[i] = (svlm_weight){type, rows[i], cols[i], data[i], rb};
        b[i] = host_floats(rows[i], 0.5f);
    }
    float *ln_w = host_floats(D, 1.0f), *ln_b = host_floats(D, 0.2f), *x = host_floats((int64_t)n * D, 2.0f);
    const size_t out_n = (size_t)n * (3 * D + D);
    float *o[3];
    for (int mode = 0; mode < 3; mode++) { /* fused on GL, the sequence on GL, the CPU */
        svlm_kernels *k = mode == 2 ? C : GL;
        o[mode] = host_floats((int64_t)out_n, 0);
        float *xb = svlm_k_alloc(k, sizeof(float) * n * D), *h = svlm_k_alloc(k, sizeof(float) * n * D),
              *ff = svlm_k_alloc(k, sizeof(float) * n * F), *tmp = svlm_k_alloc(k, sizeof(float) * n * D),
              *q = svlm_k_alloc(k, sizeof(float) * n * D), *kk = svlm_k_alloc(k, sizeof(float) * n * D),
              *v = svlm_k_alloc(k, sizeof(float) * n * D);
        REQUIRE(xb && h && ff && tmp && q && kk && v, "svlm_k_alloc failed");
        svlm_k_copy(k, xb, x, sizeof(float) * n * D);
        const svlm_weight *qkv[3] = {&w[0], &w[1], &w[2]};
        const float *bs[3] = {b[0], b[1], b[2]};
        float *ys[3] = {q, kk, v};
        if (mode == 1) {
            svlm_k_layernorm(k, xb, ln_w, ln_b, h, n, D, 1e-6f);
            svlm_k_matmul_multi(k, qkv, 3, h, n, ys);
            for (int i = 0; i < 3; i++)
                svlm_k_add_bias(k, ys[i], bs[i], n, D);
            svlm_k_matmul(k, &w[3], v, n, tmp); /* v stands in for the attention's output */
            svlm_k_add_bias(k, tmp, b[3], n, D);
            svlm_k_add(k, xb, tmp, (int64_t)n * D);
            svlm_k_layernorm(k, xb, ln_w, ln_b, h, n, D, 1e-6f);
            svlm_k_matmul(k, &w[4], h, n, ff);
            svlm_k_add_bias_gelu_f16(k, ff, b[4], n, F);
            svlm_k_matmul(k, &w[5], ff, n, tmp);
            svlm_k_add_bias(k, tmp, b[5], n, D);
            svlm_k_add(k, xb, tmp, (int64_t)n * D);
        } else {
            svlm_k_layernorm_matmul_bias(k, xb, ln_w, ln_b, 1e-6f, h, qkv, bs, 3, n, ys);
            svlm_k_matmul_bias_add(k, &w[3], b[3], v, n, xb, tmp);
            svlm_k_layernorm_gelu_ffn_add(k, xb, ln_w, ln_b, 1e-6f, &w[4], b[4], &w[5], b[5], n, h, ff, tmp);
        }
        svlm_k_copy(k, o[mode], q, sizeof(float) * n * D);
        svlm_k_copy(k, o[mode] + n * D, kk, sizeof(float) * n * D);
        svlm_k_copy(k, o[mode] + 2 * n * D, v, sizeof(float) * n * D);
        svlm_k_copy(k, o[mode] + 3 * n * D, xb, sizeof(float) * n * D);
        float *bufs[] = {xb, h, ff, tmp, q, kk, v};
        for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
            svlm_k_free(k, bufs[i]);
    }
    double ymax = 0, dfs = 0, dfc = 0;
    for (size_t i = 0; i < out_n; i++) {
        ymax = fmax(ymax, fabs(o[2][i]));
        double a = fabs((double)o[0][i] - o[1][i]), c = fabs((double)o[0][i] - o[2][i]);
        if (!(a <= dfs)) dfs = a; /* NaN counts as worst */
        if (!(c <= dfc)) dfc = c;
    }
    dfs /= fmax(ymax, 1e-30);
    dfc /= fmax(ymax, 1e-30);
    printf("encoder fused ops (%s) %s n=%d: %.3g off the op sequence (tolerance %g), %.3g off the cpu "
           "(tolerance 2e-2), of max|y| %.3g\n",
           label, svlm_dtype_get(type)->name, n, dfs, tol_seq, dfc, ymax);
    CHECK(dfs <= tol_seq, "%s %s n=%d: fused encoder ops differ from the op sequence by %g", label,
          svlm_dtype_get(type)->name, n, dfs);
    CHECK(dfc <= 2e-2, "%s %s n=%d: fused encoder ops differ from the CPU by %g", label,
          svlm_dtype_get(type)->name, n, dfc);
    for (int i = 0; i < 6; i++) {
        svlm_k_forget(GL, data[i]);
        free(data[i]);
        free(b[i]);
    }
    for (int i = 0; i < 3; i++)
        free(o[i]);
    free(ln_w);
    free(ln_b);
    free(x);
}

/* With the GELU in the up product's epilogue (cuBLASLt's tanh form; the default: tested, and
 * required, unless SVLM_CUDA_LT_GELU=0): the sequence's f16-table GELU rounds its input and output through
 * f16 before the operand's bf16 rounding, which moves about one GELU output in eight a bf16 step
 * (2^-8 relative), and the epilogue adds the bias rounded to bf16; in a 1024-term sum the largest
 * output moves up to about 2e-3 of max|y| (simulated for this case's shapes and ranges, with a
 * 1e-3 relative error in the tanh as well), so 4e-3 against the sequence. The CPU bound stays
 * 2e-2. */
static void test_encoder_fused(void) {
    /* the outside value says whether the epilogue case runs; it is put back at the end */
    const char *g = getenv("SVLM_CUDA_LT_GELU");
    char *outside = g ? strdup(g) : NULL;
    const int gelu_off = outside && !strcmp(outside, "0");
    setenv("SVLM_CUDA_LT_GELU", "0", 1); /* beside SVLM_CUDA_LT=0 it could not be required */
    setenv("SVLM_CUDA_LT", "0", 1);
    svlm_kernels *plain = test_gpu_backend();
    setenv("SVLM_CUDA_LT", "1", 1); /* required: a product cuBLASLt declined would end the test */
    svlm_kernels *lt = test_gpu_backend();
    setenv("SVLM_CUDA_LT_GELU", "1", 1); /* required as well */
    svlm_kernels *lt_gelu = gelu_off ? NULL : test_gpu_backend();
    if (gelu_off) printf("SKIP encoder fused ops with the GELU epilogue: SVLM_CUDA_LT_GELU=0\n");
    if (outside)
        setenv("SVLM_CUDA_LT_GELU", outside, 1);
    else
        unsetenv("SVLM_CUDA_LT_GELU");
    free(outside);
    unsetenv("SVLM_CUDA_LT");
    /* F16: f16 operands (the sequence rounds them to TF32: the same 11 significant bits) */
    const svlm_dtype types[3] = {SVLM_Q8_0, SVLM_Q4_K, SVLM_F16};
    const int ns[3] = {4, 100, 1030}; /* 4: the matvec kernels, so the sequence itself */
    for (int t = 0; t < 3; t++)
        for (int i = 0; i < 3; i++) {
            encoder_fused_case(lt, "cuBLASLt", types[t], ns[i], 2e-3);
            if (lt_gelu) encoder_fused_case(lt_gelu, "cuBLASLt, GELU epilogue", types[t], ns[i], 4e-3);
            encoder_fused_case(plain, "cuBLAS + passes", types[t], ns[i], 2e-3);
        }
    svlm_kernels_destroy(plain);
    svlm_kernels_destroy(lt);
    if (lt_gelu) svlm_kernels_destroy(lt_gelu);
}

/* svlm_k_rmsnorm_qkv_rope_store (a decode step's q/k/v with RoPE and the cache stores, one kernel
 * on a GPU) equals svlm_k_rmsnorm_matmul_multi + svlm_k_rope_store, the sequence it stands for, on
 * a backend that runs that sequence (SVLM_CUDA_QKV_ROPE=0) bit for bit (memcmp): the rows sum as
 * the q/k/v kernel sums them and rotate as rope_store_kernel rotates them. Against the CPU within
 * the decode products' 2e-2 of the largest value. On a GPU the fused backend must leave kx and vx
 * as they were (a NaN fill): the one kernel ran, not the sequence. Variants: f32 and f16 caches,
 * keep and round (f16 and f32 caches), a partial rotation, NeoX RoPE (the sequence on every
 * backend); Q8_0 and Q4_K weights of 256 columns (2 warps a row) and 576 / 512 (4 warps a row,
 * Q8_0 with a last round of fewer sub-blocks); 1, 3, 8 rows, and 16 on backends taking 16. */
static int qkv_rope_cases(svlm_kernels *gf, svlm_kernels *gs, const int *ns, int n_ns, double *worst_cpu) {
    enum { NH = 4, NKVH = 2, HD = 64, QD = NH * HD, KVD = NKVH * HD, SLOTS = 32, NMAX = 16 };
    const svlm_dtype wtypes[2] = {SVLM_Q8_0, SVLM_Q4_K};
    const int widths[2][2] = {{256, 576}, {256, 512}};
    const int on_gpu = !test_gpu_as_cpu();
    int cases = 0;
    for (int wt = 0; wt < 2; wt++)
        for (int wd = 0; wd < 2; wd++) {
            const int E = widths[wt][wd];
            const int64_t rows[3] = {QD, KVD, KVD};
            svlm_weight w[3];
            void *data[3];
            for (int i = 0; i < 3; i++) {
                const size_t rb = svlm_row_bytes(wtypes[wt], E);
                data[i] = malloc(rb * (size_t)rows[i]);
                REQUIRE(data[i], "out of memory");
                float *row = host_floats(E, 1.0f);
                for (int64_t j = 0; j < rows[i]; j++) {
                    for (int q = 0; q < E; q++)
                        row[q] = frand() * 0.1f;
                    REQUIRE(!svlm_quantize_row(wtypes[wt], row, (char *)data[i] + (size_t)j * rb, E),
                            "quantize");
                }
                free(row);
                w[i] = (svlm_weight){wtypes[wt], rows[i], E, data[i], rb};
            }
            const svlm_weight *ws[3] = {&w[0], &w[1], &w[2]};
            float *nw = host_floats(E, 1.0f);
            for (int variant = 0; variant < 5; variant++)
                for (int ni = 0; ni < n_ns; ni++) {
                    /* 0: f32 cache; 1: f16 cache, round, keep; 2: f32 + keep, 32 of 64 dims rotated;
                     * 3: NeoX; 4: f32 cache, round, keep (f16 pages under an f32 working copy) */
                    const int n = ns[ni], f16 = variant == 1, round = variant == 1 || variant == 4;
                    const int use_keep = variant == 1 || variant == 2 || variant == 4;
                    const int n_rot = variant == 2 ? 32 : HD, neox = variant == 3;
                    const svlm_dtype t = f16 ? SVLM_F16 : SVLM_F32;
                    const size_t elt = f16 ? 2 : 4;
                    float *x0 = host_floats((int64_t)n * E, 2.0f);
                    int32_t pos[NMAX];
                    for (int r = 0; r < n; r++)
                        pos[r] = 3 + 37 * r;
                    const int64_t total = (int64_t)n * QD + 2 * (int64_t)n * KVD + (int64_t)SLOTS * KVD;
                    float *nan_rows = malloc(sizeof(float) * (size_t)n * KVD);
                    REQUIRE(nan_rows, "out of memory");
                    for (int64_t i = 0; i < (int64_t)n * KVD; i++)
                        nan_rows[i] = NAN;
                    float *res[3];
                    int untouched = 0;
                    for (int mode = 0; mode < 3; mode++) { /* fused (gf), the sequence (gs), the CPU */
                        svlm_kernels *k = mode == 0 ? gf : mode == 1 ? gs : C;
                        float *x = svlm_k_alloc(k, sizeof(float) * n * E),
                              *h = svlm_k_alloc(k, sizeof(float) * n * E),
                              *q = svlm_k_alloc(k, sizeof(float) * n * QD),
                              *kx = svlm_k_alloc(k, sizeof(float) * n * KVD),
                              *vx = svlm_k_alloc(k, sizeof(float) * n * KVD),
                              *keep = svlm_k_alloc(k, sizeof(float) * 2 * n * KVD);
                        char *cache = svlm_k_alloc(k, elt * SLOTS * KVD);
                        void **dk = svlm_k_alloc(k, sizeof(void *) * 2 * n);
                        int32_t *pk = svlm_k_alloc(k, sizeof(int32_t) * n);
                        REQUIRE(x && h && q && kx && vx && keep && cache && dk && pk, "svlm_k_alloc failed");
                        void *dh[2 * NMAX];
                        for (int r = 0; r < n;
                             r++) { /* keys in odd slots from the top, values in even ones */
                            dh[r] = cache + elt * KVD * (size_t)(SLOTS - 1 - 2 * r);
                            dh[n + r] = cache + elt * KVD * (size_t)(2 * r);
                        }
                        char *zero = calloc(SLOTS * KVD, elt);
                        REQUIRE(zero, "out of memory");
                        svlm_k_copy(k, cache, zero, elt * SLOTS * KVD);
                        free(zero);
                        svlm_k_copy(k, kx, nan_rows, sizeof(float) * n * KVD);
                        svlm_k_copy(k, vx, nan_rows, sizeof(float) * n * KVD);
                        svlm_k_copy(k, x, x0, sizeof(float) * n * E);
                        svlm_k_copy(k, dk, dh, sizeof(void *) * 2 * n);
                        svlm_k_copy(k, pk, pos, sizeof(int32_t) * n);
                        const svlm_rope_store_args ra = {.n_head = NH,
                                                         .n_kv_head = NKVH,
                                                         .head_dim = HD,
                                                         .n_rot = n_rot,
                                                         .pos = pk,
                                                         .base = 10000.0f,
                                                         .neox = neox,
                                                         .dsts = dk,
                                                         .kv_type = t,
                                                         .keep = use_keep ? keep : NULL,
                                                         .round = round};
                        svlm_k_rmsnorm_qkv_rope_store(k, x, nw, 1e-5f, h, ws, n, q, kx, vx, &ra);
                        float *o = res[mode] = calloc((size_t)total, sizeof(float));
                        REQUIRE(o, "out of memory");
                        svlm_k_copy(k, o, q, sizeof(float) * n * QD);
                        if (use_keep) svlm_k_copy(k, o + n * QD, keep, sizeof(float) * 2 * n * KVD);
                        char *ch = malloc(elt * SLOTS * KVD);
                        REQUIRE(ch, "out of memory");
                        svlm_k_copy(k, ch, cache, elt * SLOTS * KVD);
                        svlm_k_load(C, o + n * QD + 2 * n * KVD, ch, t, SLOTS * KVD);
                        free(ch);
                        if (mode == 0) { /* the fused kernel writes neither kx nor vx */
                            float *kb = malloc(sizeof(float) * (size_t)n * KVD);
                            REQUIRE(kb, "out of memory");
                            svlm_k_copy(k, kb, kx, sizeof(float) * n * KVD);
                            untouched = isnan(kb[0]) && isnan(kb[(int64_t)n * KVD - 1]);
                            free(kb);
                        }
                        void *bufs[] = {x, h, q, kx, vx, keep, cache, dk, pk};
                        for (size_t b = 0; b < sizeof bufs / sizeof bufs[0]; b++)
                            svlm_k_free(k, bufs[b]);
                    }
                    free(nan_rows);
                    double big = 1e-30, e_cpu = 0;
                    for (int64_t i = 0; i < total; i++) {
                        big = fmax(big, fabs(res[2][i]));
                        const double c = fabs((double)res[0][i] - res[2][i]);
                        if (!(c <= e_cpu)) e_cpu = c;
                    }
                    e_cpu /= big;
                    *worst_cpu = fmax(*worst_cpu, e_cpu);
                    cases++;
                    CHECK(!memcmp(res[0], res[1], sizeof(float) * (size_t)total),
                          "q/k/v + rope_store (%s, %d cols, variant %d, n=%d) differs from its op sequence",
                          svlm_dtype_get(wtypes[wt])->name, E, variant, n);
                    CHECK(e_cpu <= 2e-2,
                          "q/k/v + rope_store (%s, %d cols, variant %d, n=%d) differs from the CPU by %g",
                          svlm_dtype_get(wtypes[wt])->name, E, variant, n, e_cpu);
                    CHECK(!on_gpu || untouched == !neox,
                          "q/k/v + rope_store (%s, %d cols, variant %d, n=%d): %s",
                          svlm_dtype_get(wtypes[wt])->name, E, variant, n,
                          neox ? "NeoX did not take the sequence" : "the fused kernel did not run");
                    for (int mode = 0; mode < 3; mode++)
                        free(res[mode]);
                    free(x0);
                }
            for (int i = 0; i < 3; i++) {
                svlm_k_forget(gf, data[i]);
                svlm_k_forget(gs, data[i]);
                free(data[i]);
            }
            svlm_k_forget(gf, nw);
            svlm_k_forget(gs, nw);
            free(nw);
        }
    return cases;
}

static void test_qkv_rope(void) {
    const int ns[3] = {1, 3, 8}, ns16[1] = {16};
    double worst_cpu = 0;
    setenv("SVLM_CUDA_QKV_ROPE", "0", 1);
    svlm_kernels *gs = test_gpu_backend();
    setenv("SVLM_CUDA_MATVEC_ROWS", "16", 1);
    svlm_kernels *gs16 = test_gpu_backend();
    unsetenv("SVLM_CUDA_QKV_ROPE");
    svlm_kernels *g16 = test_gpu_backend();
    unsetenv("SVLM_CUDA_MATVEC_ROWS");
    int cases = qkv_rope_cases(G, gs, ns, 3, &worst_cpu);
    cases += qkv_rope_cases(g16, gs16, ns16, 1, &worst_cpu);
    printf("rmsnorm + q/k/v + rope_store: %d cases equal to their op sequence bit for bit; max |gpu - cpu| "
           "%.3g of the largest value (tolerance 2e-2)\n",
           cases, worst_cpu);
    svlm_kernels_destroy(gs);
    svlm_kernels_destroy(gs16);
    svlm_kernels_destroy(g16);
}

/* svlm_k_rope_store equals the sequence it stands for (copy to keep, f16 rounding, RoPE on q and
 * the keys, stores) on the same backend within 1e-6 (an f16 step for f16 caches), and the CPU's
 * within 1e-5 (f32 caches) or one f16 step (f16 caches). Rows land in scattered cache slots. */
static void test_rope_store(void) {
    enum { N = 3, NH = 6, NKVH = 2, HD = 64, KVD = NKVH * HD, SLOTS = 8 };
    int32_t pos[N] = {5, 17, 1000};
    for (int variant = 0; variant < 4; variant++) {
        const int f16 = variant & 1, neox = variant >> 1, round = f16, use_keep = variant != 0;
        const svlm_dtype t = f16 ? SVLM_F16 : SVLM_F32;
        const size_t elt = f16 ? 2 : 4;
        float *q0 = host_floats(N * NH * HD, 2.0f), *k0 = host_floats(N * KVD, 2.0f),
              *v0 = host_floats(N * KVD, 2.0f);
        /* results: q, keep, cache (as floats) for fused GPU (0), sequence GPU (1), fused CPU (2) */
        float *res[3];
        for (int mode = 0; mode < 3; mode++) {
            svlm_kernels *k = mode == 2 ? C : G;
            float *q = svlm_k_alloc(k, sizeof(float) * N * NH * HD),
                  *kx = svlm_k_alloc(k, sizeof(float) * N * KVD),
                  *vx = svlm_k_alloc(k, sizeof(float) * N * KVD),
                  *keep = svlm_k_alloc(k, sizeof(float) * 2 * N * KVD);
            char *cache = svlm_k_alloc(k, elt * SLOTS * KVD);
            void **dk = svlm_k_alloc(k, sizeof(void *) * 2 * N);
            int32_t *pk = svlm_k_alloc(k, sizeof pos);
            REQUIRE(q && kx && vx && keep && cache && dk && pk, "svlm_k_alloc failed");
            void *dh[2 * N];
            for (int r = 0; r < N; r++) { /* keys in slots 7, 5, 3; values in 0, 2, 4 */
                dh[r] = cache + elt * KVD * (size_t)(7 - 2 * r);
                dh[N + r] = cache + elt * KVD * (size_t)(2 * r);
            }
            svlm_k_copy(k, q, q0, sizeof(float) * N * NH * HD);
            svlm_k_copy(k, kx, k0, sizeof(float) * N * KVD);
            svlm_k_copy(k, vx, v0, sizeof(float) * N * KVD);
            svlm_k_copy(k, dk, dh, sizeof dh);
            svlm_k_copy(k, pk, pos, sizeof pos);
            float *kp = use_keep ? keep : NULL;
            if (mode == 1) {
                if (kp) {
                    svlm_k_copy(k, kp, kx, sizeof(float) * N * KVD);
                    svlm_k_copy(k, kp + N * KVD, vx, sizeof(float) * N * KVD);
                }
                if (round) {
                    svlm_k_round_f16(k, kx, N * KVD);
                    svlm_k_round_f16(k, vx, N * KVD);
                }
                svlm_k_rope(k, q, N, NH, HD, HD, pk, 10000.0f, neox);
                svlm_k_rope(k, kx, N, NKVH, HD, HD, pk, 10000.0f, neox);
                svlm_k_store_rows(k, dk, t, kx, N, KVD);
                svlm_k_store_rows(k, dk + N, t, vx, N, KVD);
            } else {
                svlm_k_rope_store(k, q, kx, vx, N, NH, NKVH, HD, HD, pk, 10000.0f, neox, dk, t, kp, round);
            }
            float *o = res[mode] = calloc(N * NH * HD + 2 * N * KVD + SLOTS * KVD, sizeof(float));
            REQUIRE(o, "out of memory");
            svlm_k_copy(k, o, q, sizeof(float) * N * NH * HD);
            if (kp) svlm_k_copy(k, o + N * NH * HD, kp, sizeof(float) * 2 * N * KVD);
            char *ch = malloc(elt * SLOTS * KVD);
            REQUIRE(ch, "out of memory");
            svlm_k_copy(k, ch, cache, elt * SLOTS * KVD);
            svlm_k_load(C, o + N * NH * HD + 2 * N * KVD, ch, t, SLOTS * KVD);
            free(ch);
            void *bufs[] = {q, kx, vx, keep, cache, dk, pk};
            for (size_t b = 0; b < sizeof bufs / sizeof bufs[0]; b++)
                svlm_k_free(k, bufs[b]);
        }
        const int64_t total = N * NH * HD + 2 * N * KVD + SLOTS * KVD;
        const double tol = f16 ? 1e-3 : 1e-5, e_seq = max_rel(res[0], res[1], total),
                     e = max_rel(res[0], res[2], total);
        printf("rope_store %s cache, neox %d, keep %d: %.3g off its op sequence (must be 0: one rotation "
               "for every kernel, cuda_rope.cuh), %.3g off the cpu (tolerance %g)\n",
               f16 ? "f16" : "f32", neox, use_keep, e_seq, e, tol);
        CHECK(e_seq == 0, "rope_store (%s cache, neox %d) differs from its op sequence by %g",
              f16 ? "f16" : "f32", neox, e_seq);
        CHECK(e <= tol, "rope_store differs from the CPU by %g", e);
        for (int mode = 0; mode < 3; mode++)
            free(res[mode]);
        free(q0);
        free(k0);
        free(v0);
    }
}

/* svlm_k_kv_shift: rows of 3 layers' raw keys and values moved down over themselves (the ranges
 * overlap), the keys re-rotated from the moved raw ones; against the same done op by op (load,
 * store, RoPE) on the backend under test and against the CPU's op. Moves are exact; rows outside
 * the destination keep their bits. */
static void test_kv_shift(void) {
    enum { L = 3, ROWS = 40, NKVH = 2, HD = 64, DIM = NKVH * HD, DST = 4, SRC = 16, N = 20 };
    int32_t pos[N];
    for (int i = 0; i < N; i++)
        pos[i] = DST + i + (i > 10 ? 300 : 0);
    for (int variant = 0; variant < 4; variant++) {
        const int f16 = variant & 1, neox = variant >> 1;
        const svlm_dtype t = f16 ? SVLM_F16 : SVLM_F32;
        const size_t elt = f16 ? 2 : 4, layer_bytes = elt * ROWS * DIM;
        float *init = host_floats(3 * L * ROWS * DIM, 2.0f);
        float *res[3]; /* raw, k, v of every layer as floats: op (0), op by op (1), the CPU's op (2) */
        for (int mode = 0; mode < 3; mode++) {
            svlm_kernels *k = mode == 2 ? C : G;
            void *raw[L], *kc[L], *vc[L];
            float *f = svlm_k_alloc(k, sizeof(float) * N * DIM);
            int32_t *pk = svlm_k_alloc(k, sizeof pos);
            REQUIRE(f && pk, "svlm_k_alloc failed");
            svlm_k_copy(k, pk, pos, sizeof pos);
            for (int l = 0; l < L; l++) {
                void **bufs[3] = {raw, kc, vc};
                for (int b = 0; b < 3; b++) {
                    bufs[b][l] = svlm_k_alloc(k, layer_bytes);
                    REQUIRE(bufs[b][l], "svlm_k_alloc failed");
                    svlm_k_store(k, bufs[b][l], t, init + (size_t)(3 * l + b) * ROWS * DIM, ROWS * DIM);
                }
            }
            if (mode == 1) {
                for (int l = 0; l < L; l++) {
                    svlm_k_load(k, f, (char *)vc[l] + elt * SRC * DIM, t, N * DIM);
                    svlm_k_store(k, (char *)vc[l] + elt * DST * DIM, t, f, N * DIM);
                    svlm_k_load(k, f, (char *)raw[l] + elt * SRC * DIM, t, N * DIM);
                    svlm_k_store(k, (char *)raw[l] + elt * DST * DIM, t, f, N * DIM);
                    svlm_k_rope(k, f, N, NKVH, HD, HD, pk, 10000.0f, neox);
                    svlm_k_store(k, (char *)kc[l] + elt * DST * DIM, t, f, N * DIM);
                }
            } else {
                const svlm_kv_shift_args a = {.raw = raw,
                                              .kc = kc,
                                              .vc = vc,
                                              .n_layer = L,
                                              .type = t,
                                              .dst = DST,
                                              .src = SRC,
                                              .n = N,
                                              .n_kv_head = NKVH,
                                              .head_dim = HD,
                                              .n_rot = HD,
                                              .neox = neox,
                                              .base = 10000.0f,
                                              .pos = pk};
                svlm_k_kv_shift(k, &a);
            }
            float *o = res[mode] = calloc((size_t)3 * L * ROWS * DIM, sizeof(float));
            char *h = malloc(layer_bytes);
            REQUIRE(o && h, "out of memory");
            for (int l = 0; l < L; l++) {
                void *bufs[3] = {raw[l], kc[l], vc[l]};
                for (int b = 0; b < 3; b++) {
                    svlm_k_copy(k, h, bufs[b], layer_bytes);
                    svlm_k_load(C, o + (size_t)(3 * l + b) * ROWS * DIM, h, t, ROWS * DIM);
                    svlm_k_free(k, bufs[b]);
                }
            }
            free(h);
            svlm_k_free(k, f);
            svlm_k_free(k, pk);
        }
        int moved_exact = 1, others_kept = 1;
        double e_seq = 0, e_cpu = 0;
        for (int l = 0; l < L; l++)
            for (int b = 0; b < 3; b++) {
                const size_t at = (size_t)(3 * l + b) * ROWS * DIM;
                const float *in = init + at;
                for (int r = 0; r < ROWS; r++) {
                    const int moved = r >= DST && r < DST + N;
                    const float *g = res[0] + at + (size_t)r * DIM;
                    if (!moved || b != 1) { /* raw keys, values, and rows outside: exact everywhere */
                        float want[DIM];
                        const float *src = in + (size_t)(moved ? r - DST + SRC : r) * DIM;
                        for (int j = 0; j < DIM; j++)
                            want[j] = f16 ? svlm_f16_to_f32(svlm_f32_to_f16(src[j])) : src[j];
                        for (int mo = 0; mo < 3; mo++)
                            *(moved ? &moved_exact : &others_kept) &=
                                !memcmp(res[mo] + at + (size_t)r * DIM, want, sizeof want);
                    } else {
                        e_seq = fmax(e_seq, max_rel(g, res[1] + at + (size_t)r * DIM, DIM));
                        e_cpu = fmax(e_cpu, max_rel(g, res[2] + at + (size_t)r * DIM, DIM));
                    }
                }
            }
        printf("kv_shift %s, neox %d: moves exact %d, other rows kept %d; keys %.3g off the op sequence "
               "(must be 0: a context that follows moves holds what one that syncs from the pages holds), "
               "%.3g off the cpu (tolerance %g)\n",
               f16 ? "f16" : "f32", neox, moved_exact, others_kept, e_seq, e_cpu, f16 ? 1e-3 : 1e-5);
        CHECK(moved_exact && others_kept, "kv_shift (%s) moved or touched rows wrongly", f16 ? "f16" : "f32");
        CHECK(e_seq == 0, "kv_shift keys differ from the op sequence by %g", e_seq);
        CHECK(e_cpu <= (f16 ? 1e-3 : 1e-5), "kv_shift keys differ from the CPU by %g", e_cpu);
        for (int mode = 0; mode < 3; mode++)
            free(res[mode]);
        free(init);
    }
}

/* svlm_k_im2col: every value where the (channel, ky, kx) order puts it, rounded through f16 when
 * asked, exactly as the CPU's (and a direct reference). */
/* S need not be a multiple of P: the patches cover g = S / P a side (2.2B's 384-px tiles of 14-px
 * patches leave 6 pixels unread). */
static void im2col_case(int B, int S, int P) {
    const int GR = S / P, ROW = 3 * P * P;
    float *px = host_floats(B * 3 * S * S, 3.0f), *ref = host_floats(B * GR * GR * ROW, 0.0f);
    for (int t = 0; t < B; t++)
        for (int i = 0; i < GR * GR; i++)
            for (int c = 0; c < 3; c++)
                for (int ky = 0; ky < P; ky++)
                    for (int kx = 0; kx < P; kx++)
                        ref[((size_t)t * GR * GR + i) * ROW + (c * P + ky) * P + kx] =
                            px[(size_t)(t * 3 + c) * S * S + ((i / GR) * P + ky) * S + (i % GR) * P + kx];
    for (int round = 0; round < 2; round++) {
        float *dg = galloc(sizeof(float) * B * GR * GR * ROW), *hg = host_floats(B * GR * GR * ROW, 0.0f),
              *hc = host_floats(B * GR * GR * ROW, 0.0f);
        svlm_k_im2col(G, dg, px, B, S, P, round);
        svlm_k_copy(G, hg, dg, sizeof(float) * B * GR * GR * ROW);
        svlm_k_im2col(C, hc, px, B, S, P, round);
        int ok = !memcmp(hg, hc, sizeof(float) * B * GR * GR * ROW);
        for (int i = 0; i < B * GR * GR * ROW; i++)
            ok &= hc[i] == (round ? svlm_f16_to_f32(svlm_f32_to_f16(ref[i])) : ref[i]);
        CHECK(ok, "im2col (round %d) differs from the reference", round);
        svlm_k_free(G, dg);
        free(hg);
        free(hc);
    }
    printf("im2col of %d %dx%d images, %d-px patches (%d a side), f32 and f16-rounded: exact\n", B, S, S, P,
           GR);
    free(px);
    free(ref);
}

static void test_im2col(void) {
    im2col_case(2, 48, 16);
    im2col_case(2, 61, 14);
}

/* The patch embedding (cuDNN's convolution in a build with it, required there: a declined
 * convolution ends the test) against im2col + product on the same GPU and on the CPU: the
 * f16-rounded pixels and F16 weights are exact in TF32, so only the order of the f32 sums differs:
 * a TF32-style emulation of chunked sums measured 5.4e-6 of max|y|, so 3e-5. 14-px patches are the
 * 2.2B model's. */
static void patch_embed_case(svlm_kernels *GP, int B, int S, int P, int D) {
    const int GR = S / P, ROW = 3 * P * P, N = B * GR * GR;
    svlm_f16 *wd = malloc(sizeof(svlm_f16) * (size_t)D * ROW);
    REQUIRE(wd, "out of memory");
    for (int i = 0; i < D * ROW; i++)
        wd[i] = svlm_f32_to_f16(frand() * 0.1f);
    const svlm_weight w = {SVLM_F16, D, ROW, wd, sizeof(svlm_f16) * (size_t)ROW};
    float *px = host_floats((int64_t)B * 3 * S * S, 2.0f);
    float *out[3];
    for (int mode = 0; mode < 3; mode++) { /* the op on G, the sequence on G, the op on the CPU */
        svlm_kernels *k = mode == 2 ? C : GP;
        float *patches = svlm_k_alloc(k, sizeof(float) * (size_t)N * ROW),
              *y = svlm_k_alloc(k, sizeof(float) * N * D);
        REQUIRE(patches && y, "svlm_k_alloc failed");
        if (mode == 1) {
            svlm_k_im2col(k, patches, px, B, S, P, 1);
            svlm_k_matmul(k, &w, patches, N, y);
        } else {
            svlm_k_patch_embed(k, &w, px, B, S, P, patches, y);
        }
        out[mode] = host_floats((int64_t)N * D, 0.0f);
        svlm_k_copy(k, out[mode], y, sizeof(float) * (size_t)N * D);
        svlm_k_free(k, patches);
        svlm_k_free(k, y);
    }
    double ymax = 0, ds = 0, dc = 0;
    for (int i = 0; i < N * D; i++) {
        ymax = fmax(ymax, fabs(out[2][i]));
        double a = fabs((double)out[0][i] - out[1][i]), c = fabs((double)out[0][i] - out[2][i]);
        if (!(a <= ds)) ds = a;
        if (!(c <= dc)) dc = c;
    }
    ds /= fmax(ymax, 1e-30);
    dc /= fmax(ymax, 1e-30);
    printf("patch embedding of %d %dx%d images, %d-px patches, %d outputs: %.3g off im2col + product, %.3g "
           "off the "
           "cpu (tolerance 3e-5 of max|y| %.3g)\n",
           B, S, S, P, D, ds, dc, ymax);
    CHECK(ds <= 3e-5 && dc <= 3e-5, "patch embedding (%d-px patches): %g off the sequence, %g off the CPU", P,
          ds, dc);
    svlm_k_forget(GP, wd);
    free(wd);
    free(px);
    for (int i = 0; i < 3; i++)
        free(out[i]);
}

static void test_patch_embed(void) {
#ifdef SVLM_HAVE_CUDNN
    setenv("SVLM_CUDA_CUDNN", "1", 1);
#endif
    svlm_kernels *gp = test_gpu_backend();
    unsetenv("SVLM_CUDA_CUDNN");
    patch_embed_case(gp, 3, 64, 16, 96);
    patch_embed_case(gp, 2, 56, 14, 72);
    patch_embed_case(gp, 2, 61, 14, 40); /* 5 pixels past the patches: im2col + product on a GPU too */
    svlm_kernels_destroy(gp);
}

/* A model file closing (svlm_kernels_forget_range over its mapping) frees its weights' device
 * copies and their decodes for cuBLAS at once, and a product after it uploads them again and gives
 * the same numbers. */
static void test_forget_range(void) {
    enum { R = 2048, K = 4096, N = 16 }; /* 16 MB as stored, 16 MB more decoded to bf16 */
    svlm_bf16 *wd = malloc(sizeof(svlm_bf16) * R * K);
    REQUIRE(wd, "out of memory");
    for (int64_t i = 0; i < (int64_t)R * K; i++)
        wd[i] = svlm_f32_to_bf16(0.05f * frand());
    const svlm_weight w = {SVLM_BF16, R, K, wd, sizeof(svlm_bf16) * K};
    float *x = host_floats((int64_t)N * K, 1.0f), *y[2], *y1[2];
    for (int i = 0; i < 2; i++) {
        y[i] = host_floats((int64_t)N * R, 0.0f);
        y1[i] = host_floats(R, 0.0f);
    }
    size_t used0 = 0, used1 = 0, total = 0;
    for (int pass = 0; pass < 2; pass++) {
        svlm_k_matmul(G, &w, x, N, y[pass]);  /* the decode for cuBLAS */
        svlm_k_matmul(G, &w, x, 1, y1[pass]); /* the weight as stored */
        if (pass) break;
        int known = svlm_kernels_device_memory(G, &used0, &total);
        svlm_kernels_forget_range(wd, sizeof(svlm_bf16) * R * K);
        svlm_kernels_device_memory(G, &used1, &total);
        if (known && !test_gpu_as_cpu()) {
            printf("forget_range: device memory %.1f -> %.1f MiB\n", used0 / 1048576.0, used1 / 1048576.0);
            CHECK(used1 + ((size_t)24 << 20) <= used0,
                  "forgetting a 16 MB weight and its decode freed only %.1f MiB of the device",
                  ((double)used0 - (double)used1) / 1048576.0);
        }
    }
    CHECK(!memcmp(y[0], y[1], sizeof(float) * N * R) && !memcmp(y1[0], y1[1], sizeof(float) * R),
          "products after forget_range differ from those before it");
    svlm_kernels_forget_range(wd, sizeof(svlm_bf16) * R * K);
    free(wd);
    free(x);
    for (int i = 0; i < 2; i++) {
        free(y[i]);
        free(y1[i]);
    }
}

int test_main(void) {
    svlm_err err = {0};
    G = test_gpu_backend();
    /* The reference without bf16 or f16 GEMMs: f32 GEMMs, and 8-bit activations for the decode
     * products of up to 15 rows (where the default CPU backend takes the bf16 GEMM from 6 rows on,
     * a scalar stand-in's 8-bit products and those differ by up to 2e-2 of the largest value). */
    char *bf16 = getenv("SVLM_BF16") ? strdup(getenv("SVLM_BF16")) : NULL,
         *f16 = getenv("SVLM_F16_GEMM") ? strdup(getenv("SVLM_F16_GEMM")) : NULL;
    setenv("SVLM_BF16", "0", 1);
    setenv("SVLM_F16_GEMM", "0", 1);
    svlm_status st = svlm_kernels_create_cpu(0, &C, &err);
    if (bf16)
        setenv("SVLM_BF16", bf16, 1);
    else
        unsetenv("SVLM_BF16");
    if (f16)
        setenv("SVLM_F16_GEMM", f16, 1);
    else
        unsetenv("SVLM_F16_GEMM");
    free(bf16);
    free(f16);
    REQUIRE(st == SVLM_OK, "cpu backend: %s", err.msg);
    /* the answer lane's setting: everything below then runs on the high-priority stream */
    svlm_kernels_set_priority(G, 1);
    printf("backend under test: %s (high priority); reference: %s\n", svlm_kernels_name(G),
           svlm_kernels_name(C));
    test_copy();
    test_store_round();
    test_gather_gelu();
    test_deferred_chain();
    test_attention_multi();
    test_matvec_together();
    test_store_rows();
    test_fused_products();
    test_encoder_fused();
    test_rope_store();
    test_qkv_rope();
    test_kv_shift();
    test_im2col();
    test_patch_embed();
    test_replay();
    test_forget_range();
    svlm_kernels_destroy(G);
    svlm_kernels_destroy(C);
    return 0;
}
