/*
 * The CPU backend object: thread pool, per-thread scratch, the SIMD level found at run time
 * (cpuid + xgetbv, lowered by SVLM_SIMD), and the svlm_k_* entry points. The entry points go
 * through a table of operations so that a device backend can supply its own.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/err.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/f16_round.h"
#include "kernels/kernels.h"

#ifdef SVLM_HAVE_OPENBLAS
#include <cblas.h>
#endif
#ifdef SVLM_X86
#include <cpuid.h>
#endif
#if defined(SVLM_ARM64) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20) /* the kernel's bit for the dot product instructions */
#endif
#endif

/* ---- SIMD level detection ---- */

static svlm_cpu_level detect_level(void) {
#ifdef SVLM_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return SVLM_CPU_SCALAR;
    int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1, f16c = (c >> 29) & 1;
    if (!osxsave || !avx) return SVLM_CPU_SCALAR;
    unsigned xlo, xhi;
    __asm__ volatile("xgetbv" : "=a"(xlo), "=d"(xhi) : "c"(0));
    (void)xhi;
    if ((xlo & 0x6) != 0x6) return SVLM_CPU_SCALAR; /* the OS does not save YMM state */
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return SVLM_CPU_SCALAR;
    int avx2 = (b >> 5) & 1;
    if (!(avx2 && fma && f16c)) return SVLM_CPU_SCALAR;
    int f = (b >> 16) & 1, dq = (b >> 17) & 1, bw = (b >> 30) & 1, vl = (b >> 31) & 1, vnni = (c >> 11) & 1;
    int bf16 = 0;
    if (__get_cpuid_count(7, 1, &a, &b, &c, &d)) bf16 = (a >> 5) & 1;
    int zmm_state = (xlo & 0xe0) == 0xe0;
    if (f && dq && bw && vl && vnni && bf16 && zmm_state) return SVLM_CPU_AVX512;
    return SVLM_CPU_AVX2;
#elif defined(SVLM_ARM64) && defined(__linux__)
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) ? SVLM_CPU_NEON_DOT : SVLM_CPU_NEON;
#elif defined(SVLM_ARM64)
    return SVLM_CPU_NEON; /* (no HWCAP to ask: the dot product only where the kernel says so) */
#else
    return SVLM_CPU_SCALAR;
#endif
}

static const char *level_name(svlm_cpu_level l) {
    switch (l) {
    case SVLM_CPU_AVX512: return "avx512-vnni-bf16";
    case SVLM_CPU_AVX2: return "avx2";
    case SVLM_CPU_NEON: return "neon";
    case SVLM_CPU_NEON_DOT: return "neon-dotprod";
    default: return "scalar";
    }
}

/* The SVLM_SIMD values a CPU at this level takes. */
static const char *simd_values(svlm_cpu_level l) {
    switch (l) {
    case SVLM_CPU_AVX512: return "scalar, avx2 or avx512";
    case SVLM_CPU_AVX2: return "scalar or avx2";
    case SVLM_CPU_NEON_DOT: return "scalar, neon or neon-dotprod";
    case SVLM_CPU_NEON: return "scalar or neon";
    default: return "scalar only";
    }
}

/* Applies SVLM_SIMD (which may only lower the level). */
static svlm_status choose_level(svlm_cpu_level *level, svlm_err *err) {
    *level = detect_level();
    const char *env = getenv("SVLM_SIMD");
    if (!env || !*env) return SVLM_OK;
    svlm_cpu_level want;
    if (!strcmp(env, "scalar"))
        want = SVLM_CPU_SCALAR;
    else if (!strcmp(env, "avx2"))
        want = SVLM_CPU_AVX2;
    else if (!strcmp(env, "avx512"))
        want = SVLM_CPU_AVX512;
    else if (!strcmp(env, "neon"))
        want = SVLM_CPU_NEON;
    else if (!strcmp(env, "neon-dotprod"))
        want = SVLM_CPU_NEON_DOT;
    else
        return svlm_fail(
            err, SVLM_E_INVALID,
            "SVLM_SIMD=%s: expected scalar, avx2, avx512 (x86-64), neon or neon-dotprod (AArch64)", env);
    /* the levels of one family are ordered; another family's are not available at all */
    int arm_want = want >= SVLM_CPU_NEON, arm_have = *level >= SVLM_CPU_NEON;
    if (want != SVLM_CPU_SCALAR && (arm_want != arm_have || want > *level))
        return svlm_fail(err, SVLM_E_UNSUPPORTED, "SVLM_SIMD=%s: this CPU takes %s", env,
                         simd_values(*level));
    *level = want;
    return SVLM_OK;
}

#ifdef SVLM_X86
/* The f16 GEMM (kernels/cpu/gemm_f16.inc) for batched matmuls of F16 weights, and at the AVX2
 * level of quantized ones (SVLM_F16_GEMM unset or 1), or weights dequantized to f32 on every call
 * for the f32 GEMM (0; comparisons). */
static int use_f16_gemm(void) {
    const char *env = getenv("SVLM_F16_GEMM");
    return !env || strcmp(env, "0") != 0;
}

/* OpenBLAS's SGEMM is faster than ours where it runs its AVX-512 kernels; ours replaces the
 * portable loops otherwise. OpenBLAS picks its kernels by the CPU's model number when it loads,
 * and takes a model newer than itself for an old one: Debian 12's 0.3.21 runs its SSE3
 * ("Prescott") kernels on an Emerald Rapids, where a dense 4096-token pass of stories260K took
 * 7.0 s against 1.16 s with ours (0.59 s with its AVX-512 kernels, OPENBLAS_CORETYPE=SkylakeX).
 * So on an AVX-512 CPU ours runs unless OpenBLAS runs AVX-512 kernels, whether it chose them or
 * OPENBLAS_CORETYPE did. SVLM_GEMM=own|blas picks one (tests, benchmarks). */
static int use_own_gemm(void) {
    const char *env = getenv("SVLM_GEMM");
    if (env && !strcmp(env, "own")) return 1;
    if (env && !strcmp(env, "blas")) return 0;
#ifdef SVLM_HAVE_OPENBLAS
    const char *core = openblas_get_corename(), *avx512[] = {"skylakex", "cooperlake", "sapphirerapids"};
    for (size_t i = 0; core && i < sizeof avx512 / sizeof *avx512; i++)
        if (!strcasecmp(core, avx512[i])) return 0;
    return 1;
#else
    return 1;
#endif
}
#endif

/* Which batched matmuls use bf16 products (SVLM_BF16): "quant" (default) quantized and BF16
 * weights, whose stored precision the bf16 rounding of activations matches; "all" F16 weights
 * too (twice as fast, but 8 instead of 11 significant bits of the weights); "0" none. */
static svlm_status choose_bf16(svlm_cpu_level level, int *quant, int *f16, svlm_err *err) {
    const char *env = getenv("SVLM_BF16");
    *quant = level == SVLM_CPU_AVX512; /* (the AArch64 levels rank above it but have no bf16 GEMM) */
    *f16 = 0;
    if (!env || !*env || !strcmp(env, "quant")) return SVLM_OK;
    if (!strcmp(env, "0"))
        *quant = 0;
    else if (!strcmp(env, "all"))
        *f16 = *quant;
    else
        return svlm_fail(err, SVLM_E_INVALID, "SVLM_BF16=%s: expected quant, all or 0", env);
    return SVLM_OK;
}

/* ---- scratch ---- */

void *svlm_cpu_scratch(svlm_cpu *c, int thread, int slot, size_t bytes) {
    int i = thread * SVLM_SCRATCH_SLOTS + slot;
    if (bytes > c->scratch_cap[i]) {
        free(c->scratch[i]);
        size_t cap = (bytes + bytes / 4 + 63) / 64 * 64;
        c->scratch[i] = aligned_alloc(64, cap);
        if (!c->scratch[i]) {
            fprintf(stderr, "svlm: out of memory for %zu bytes of kernel scratch\n", cap);
            abort();
        }
        c->scratch_cap[i] = cap;
    }
    return c->scratch[i];
}

void *svlm_cpu_act_buffer(svlm_cpu *c, size_t bytes) {
    if (bytes > c->act_cap) {
        free(c->act);
        size_t cap = (bytes + bytes / 4 + 63) / 64 * 64;
        c->act = aligned_alloc(64, cap);
        if (!c->act) {
            fprintf(stderr, "svlm: out of memory for %zu bytes of matmul activations\n", cap);
            abort();
        }
        c->act_cap = cap;
    }
    return c->act;
}

/* ---- the CPU table ---- */

#define CPU(k) (&(k)->cpu)

static void cpu_destroy(svlm_kernels *k) {
    for (int t = 0; t < k->n_threads * SVLM_SCRATCH_SLOTS; t++)
        free(k->cpu.scratch[t]);
    free(k->cpu.scratch);
    free(k->cpu.scratch_cap);
    free(k->cpu.act);
    svlm_pool_destroy(k->cpu.pool);
    free(k);
}
static void cpu_matmul(svlm_kernels *k, const svlm_weight *w, const float *x, int64_t n, float *y) {
    svlm_cpu_matmul(CPU(k), w, x, n, y);
}
static void cpu_matmul_multi(svlm_kernels *k, const svlm_weight *const *ws, int n_w, const float *x,
                             int64_t n, float *const *ys) {
    svlm_cpu_matmul_multi(CPU(k), ws, n_w, x, n, ys);
}
static void cpu_rmsnorm(svlm_kernels *k, const float *x, const float *w, float *y, int64_t n, int64_t dim,
                        float eps) {
    svlm_cpu_rmsnorm(CPU(k), x, w, y, n, dim, eps);
}
static void cpu_layernorm(svlm_kernels *k, const float *x, const float *w, const float *b, float *y,
                          int64_t n, int64_t dim, float eps) {
    svlm_cpu_layernorm(CPU(k), x, w, b, y, n, dim, eps);
}
static void cpu_rope(svlm_kernels *k, float *x, int64_t n, int n_head, int head_dim, int n_rot,
                     const int32_t *pos, float base, int neox) {
    svlm_cpu_rope(CPU(k), x, n, n_head, head_dim, n_rot, pos, base, neox);
}
static void cpu_attention(svlm_kernels *k, const svlm_attn_args *a) {
    svlm_cpu_attention(CPU(k), a);
}
static void cpu_silu_mul(svlm_kernels *k, float *gate, const float *up, int64_t n) {
    svlm_cpu_silu_mul(CPU(k), gate, up, n);
}
static void cpu_gelu_tanh(svlm_kernels *k, float *x, int64_t n) {
    svlm_cpu_gelu_tanh(CPU(k), x, n);
}
static void cpu_add(svlm_kernels *k, float *y, const float *x, int64_t n) {
    svlm_cpu_add(CPU(k), y, x, n);
}
static void cpu_add_bias(svlm_kernels *k, float *y, const float *b, int64_t n_rows, int64_t dim) {
    svlm_cpu_add_bias(CPU(k), y, b, n_rows, dim);
}
static void cpu_softmax(svlm_kernels *k, float *x, int64_t n_rows, int64_t dim) {
    svlm_cpu_softmax(CPU(k), x, n_rows, dim);
}
static void cpu_argmax(svlm_kernels *k, const float *x, int64_t n_rows, int64_t dim, int32_t *ids) {
    (void)k;
    svlm_cpu_argmax(x, n_rows, dim, ids);
}
static void *cpu_alloc(svlm_kernels *k, size_t bytes) {
    (void)k;
    size_t rounded = (bytes + 63) / 64 * 64;
    if (rounded < bytes) return NULL;
    void *p = aligned_alloc(64, rounded ? rounded : 64);
    if (p) memset(p, 0, rounded);
    return p;
}
static void cpu_free(svlm_kernels *k, void *p) {
    (void)k;
    free(p);
}

static void cpu_copy(svlm_kernels *k, void *dst, const void *src, size_t bytes) {
    (void)k;
    memmove(dst, src, bytes);
}
static void cpu_store(svlm_kernels *k, void *dst, svlm_dtype dst_type, const float *src, int64_t n) {
    (void)k;
    if (dst_type == SVLM_F16) {
        svlm_f32_to_f16_array(dst, src, (size_t)n);
    } else {
        memmove(dst, src, sizeof(float) * (size_t)n);
    }
}
static void cpu_load(svlm_kernels *k, float *dst, const void *src, svlm_dtype src_type, int64_t n) {
    (void)k;
    if (src_type == SVLM_F16) {
        svlm_f16_to_f32_array(dst, src, (size_t)n);
    } else {
        memmove(dst, src, sizeof(float) * (size_t)n);
    }
}
static void cpu_round_f16(svlm_kernels *k, float *x, int64_t n) {
    (void)k;
    svlm_f16_round(x, (size_t)n);
}
static void cpu_gather_rows(svlm_kernels *k, float *dst, const float *src, const int32_t *idx, int64_t n,
                            int64_t dim) {
    (void)k;
    for (int64_t i = 0; i < n; i++)
        memcpy(dst + (size_t)(i * dim), src + (size_t)idx[i] * (size_t)dim, sizeof(float) * (size_t)dim);
}
static void cpu_gelu_tanh_f16(svlm_kernels *k, float *x, int64_t n) {
    svlm_gelu_round_in(x, (size_t)n);
    svlm_cpu_gelu_tanh(CPU(k), x, n);
    svlm_gelu_round_out(x, (size_t)n);
}

/* The vision encoder's fused ops: their products' biases and residuals are added as the GEMM
 * over packed weights stores its sums (svlm_cpu_epilogue), which spares a pass over the outputs
 * for each; a product no such GEMM takes runs as the op sequence. */
/* 1 when the n rows of x (cols wide) and of y (rows wide) share memory: the GEMMs may read x
 * after storing into y, so such a call takes the op sequence (through tmp, or in place as before). */
static int overlap(const float *x, int64_t cols, const float *y, int64_t rows, int64_t n) {
    const uintptr_t x0 = (uintptr_t)x, y0 = (uintptr_t)y;
    return x0 < y0 + sizeof(float) * (size_t)(n * rows) && y0 < x0 + sizeof(float) * (size_t)(n * cols);
}
static void cpu_matmul_bias_add(svlm_kernels *k, const svlm_weight *w, const float *b, const float *x,
                                int64_t n, float *y, float *tmp) {
    const svlm_cpu_epilogue ep = {b, 1};
    if (overlap(x, w->cols, y, w->rows, n) || !svlm_cpu_matmul_fused(CPU(k), w, x, n, y, &ep))
        svlm_k_seq_matmul_bias_add(k, w, b, x, n, y, tmp);
}
/* y = x W^T + b: the fused GEMM, else the product then the bias. */
static void matmul_bias(svlm_kernels *k, const svlm_weight *w, const float *b, const float *x, int64_t n,
                        float *y) {
    const svlm_cpu_epilogue ep = {b, 0};
    if (!overlap(x, w->cols, y, w->rows, n) && svlm_cpu_matmul_fused(CPU(k), w, x, n, y, &ep)) return;
    svlm_cpu_matmul(CPU(k), w, x, n, y);
    if (b) svlm_cpu_add_bias(CPU(k), y, b, n, w->rows);
}
static void cpu_layernorm_matmul_bias(svlm_kernels *k, const float *x, const float *ln_w, const float *ln_b,
                                      float eps, float *h, const svlm_weight *const *ws,
                                      const float *const *bs, int n_w, int64_t n, float *const *ys) {
    if (n < SVLM_CPU_GEMM_MIN_ROWS) { /* (few rows: the dot products of all weights share one run) */
        svlm_k_seq_layernorm_matmul_bias(k, x, ln_w, ln_b, eps, h, ws, bs, n_w, n, ys);
        return;
    }
    svlm_cpu_layernorm(CPU(k), x, ln_w, ln_b, h, n, ws[0]->cols, eps);
    for (int i = 0; i < n_w; i++)
        matmul_bias(k, ws[i], bs[i], h, n, ys[i]);
}
static void cpu_layernorm_gelu_ffn_add(svlm_kernels *k, float *x, const float *ln_w, const float *ln_b,
                                       float eps, const svlm_weight *w1, const float *b1,
                                       const svlm_weight *w2, const float *b2, int64_t n, float *h, float *ff,
                                       float *tmp) {
    svlm_cpu_layernorm(CPU(k), x, ln_w, ln_b, h, n, w1->cols, eps);
    matmul_bias(k, w1, b1, h, n, ff);
    cpu_gelu_tanh_f16(k, ff, n * w1->rows);
    cpu_matmul_bias_add(k, w2, b2, ff, n, x, tmp);
}

/* In-place moves down (memmove), then the keys re-rotated from the moved rows a chunk at a time. */
static void cpu_kv_shift(svlm_kernels *k, const svlm_kv_shift_args *a) {
    const int64_t dim = (int64_t)a->n_kv_head * a->head_dim, chunk = a->n < 256 ? a->n : 256;
    const size_t elt = a->type == SVLM_F16 ? 2 : 4, row = (size_t)dim * elt;
    float *tmp = malloc(sizeof(float) * (size_t)(chunk * dim));
    if (!tmp) {
        fprintf(stderr, "svlm: out of memory moving a working copy's rows\n");
        abort();
    }
    for (int l = 0; l < a->n_layer; l++) {
        uint8_t *raw = a->raw[l], *kc = a->kc[l], *vc = a->vc[l];
        memmove(raw + (size_t)a->dst * row, raw + (size_t)a->src * row, (size_t)a->n * row);
        memmove(vc + (size_t)a->dst * row, vc + (size_t)a->src * row, (size_t)a->n * row);
        for (int64_t i = 0; i < a->n; i += chunk) {
            const int64_t m = a->n - i < chunk ? a->n - i : chunk;
            cpu_load(k, tmp, raw + (size_t)(a->dst + i) * row, a->type, m * dim);
            svlm_cpu_rope(CPU(k), tmp, m, a->n_kv_head, a->head_dim, a->n_rot, a->pos + i, a->base, a->neox);
            cpu_store(k, kc + (size_t)(a->dst + i) * row, a->type, tmp, m * dim);
        }
    }
    free(tmp);
}

static void cpu_forget(svlm_kernels *k, const void *weight_data) {
    (void)k;
    svlm_cpu_packed_forget(weight_data, 0);
}

void svlm_kernels_forget_range(const void *data, size_t bytes) {
    svlm_cpu_packed_forget(data, bytes);
#ifdef SVLM_HAVE_CUDA
    svlm_cuda_weights_forget_range(data, bytes);
#endif
}

static const backend_ops cpu_ops = {
    .destroy = cpu_destroy,
    .forget = cpu_forget,
    .matmul = cpu_matmul,
    .matmul_multi = cpu_matmul_multi,
    .rmsnorm = cpu_rmsnorm,
    .layernorm = cpu_layernorm,
    .rope = cpu_rope,
    .attention = cpu_attention,
    .silu_mul = cpu_silu_mul,
    .gelu_tanh = cpu_gelu_tanh,
    .add = cpu_add,
    .add_bias = cpu_add_bias,
    .softmax = cpu_softmax,
    .argmax = cpu_argmax,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .copy = cpu_copy,
    .store = cpu_store,
    .load = cpu_load,
    .round_f16 = cpu_round_f16,
    .gather_rows = cpu_gather_rows,
    .gelu_tanh_f16 = cpu_gelu_tanh_f16,
    .kv_shift = cpu_kv_shift,
    .matmul_bias_add = cpu_matmul_bias_add,
    .layernorm_matmul_bias = cpu_layernorm_matmul_bias,
    .layernorm_gelu_ffn_add = cpu_layernorm_gelu_ffn_add,
};

svlm_status svlm_kernels_create_cpu(int n_threads, svlm_kernels **out, svlm_err *err) {
    *out = NULL;
    svlm_cpu_level level;
    int bf16_quant, bf16_f16;
    svlm_status st = choose_level(&level, err);
    if (st == SVLM_OK) st = choose_bf16(level, &bf16_quant, &bf16_f16, err);
    if (st != SVLM_OK) return st;
    svlm_kernels *k = calloc(1, sizeof *k);
    if (!k) return svlm_fail(err, SVLM_E_NOMEM, "out of memory for the CPU backend");
    k->ops = &cpu_ops;
    st = svlm_pool_create(n_threads, &k->cpu.pool, err);
    if (st != SVLM_OK) {
        free(k);
        return st;
    }
    k->n_threads = k->cpu.n_threads = svlm_pool_size(k->cpu.pool);
    k->cpu.scratch = calloc((size_t)k->n_threads * SVLM_SCRATCH_SLOTS, sizeof *k->cpu.scratch);
    k->cpu.scratch_cap = calloc((size_t)k->n_threads * SVLM_SCRATCH_SLOTS, sizeof *k->cpu.scratch_cap);
    if (!k->cpu.scratch || !k->cpu.scratch_cap) {
        cpu_destroy(k);
        return svlm_fail(err, SVLM_E_NOMEM, "out of memory for the CPU backend");
    }
    k->cpu.level = level;
    svlm_cpu_matmul_init_ref(&k->cpu.mm);
    int blas = 0; /* whether OpenBLAS's SGEMM runs the f32 products (said in the name) */
#ifdef SVLM_HAVE_OPENBLAS
    blas = 1;
#endif
#ifdef SVLM_X86
    if (level >= SVLM_CPU_AVX2) svlm_cpu_matmul_init_avx2(&k->cpu.mm);
    if (level == SVLM_CPU_AVX2) svlm_cpu_rows_init_avx2(&k->cpu.mm);
    if (level >= SVLM_CPU_AVX512) svlm_cpu_matmul_init_avx512(&k->cpu.mm);
    if (level >= SVLM_CPU_AVX512) svlm_cpu_rows_f16_init_avx512(&k->cpu.mm);
    if (level >= SVLM_CPU_AVX512 && use_own_gemm()) {
        svlm_cpu_gemm_init_avx512(&k->cpu.mm);
        blas = 0;
    } else if (level >= SVLM_CPU_AVX512) {
        svlm_cpu_gemm_rows_init_avx512(&k->cpu.mm);
    }
    if (bf16_quant) svlm_cpu_gemm_bf16_init_avx512(&k->cpu.mm);
    if (level == SVLM_CPU_AVX2 && use_f16_gemm()) svlm_cpu_gemm_f16_init_avx2(&k->cpu.mm);
    if (level >= SVLM_CPU_AVX512 && use_f16_gemm()) svlm_cpu_gemm_f16_init_avx512(&k->cpu.mm);
    k->cpu.bf16_f16 = bf16_f16;
#else
#ifdef SVLM_ARM64
    if (level == SVLM_CPU_NEON) svlm_cpu_matmul_init_neon(&k->cpu.mm);
    if (level == SVLM_CPU_NEON_DOT) svlm_cpu_matmul_init_neon_dot(&k->cpu.mm);
#endif
    (void)bf16_quant, (void)bf16_f16;
#endif
    (void)blas; /* read only with OpenBLAS */
#ifdef SVLM_HAVE_OPENBLAS
    /* Our pool already splits GEMMs across the cores; OpenBLAS threads on top would fight it.
     * (A process-wide setting.) */
    openblas_set_num_threads(1);
#endif
#ifdef SVLM_HAVE_OPENBLAS
    if (blas) {
        snprintf(k->name, sizeof k->name, "cpu-%s x%d, OpenBLAS %s", level_name(level), k->n_threads,
                 openblas_get_corename());
    } else
#endif
        snprintf(k->name, sizeof k->name, "cpu-%s x%d", level_name(level), k->n_threads);
    *out = k;
    return SVLM_OK;
}
