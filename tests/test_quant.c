/*
 * Element types: the type table, fp16/bf16 conversion (exhaustive round trips, rounding
 * edge cases, and agreement with an independent double-precision rounding on random
 * inputs), dequantization of hand-built blocks against the written formulas of
 * smolvlm2-spec.md §5 (recomputed here per element from raw bytes at fixed offsets, in
 * double), and quantize→dequantize error bounds per type.
 *
 * Stated bounds (d = the block scale as computed before its fp16 rounding):
 *   f16  |err| <= h(x) (below)                  bf16 |err| <= 2^-8 |x|
 *   h(v) = the fp16 rounding error of v, at most max(|v| 2^-11, 2^-25) (subnormal scales)
 *   q8_0, q8_1: d = amax/127, |err| <= d/2 + 127 h(d)   (the second term: d stored as fp16)
 *   q8_K:       d = amax/127 (f32), |err| <= d/2 (+1e-6 relative)
 *   q4_0: |d| = amax/8, q5_0: |d| = amax/16; the value opposite the extreme can clip by one
 *         step, so |err| <= |d| + 8 h(d) (q4_0), |d| + 16 h(d) (q5_0)
 *   q4_1: d = (max-min)/15, q5_1: d = (max-min)/31: |err| <= d/2 + qmax h(d) + h(min)
 *   q4_K, q5_K, q6_K (searched scales, 6/8-bit sub-scales): RMS error on U(-1,1) rows at most
 *         0.036, 0.019, 0.0090 and max error at most 0.12, 0.07, 0.025 (measured 0.031/0.016/
 *         0.0077 and 0.085/0.052/0.017 when written); all types: an all-zero row stays zero,
 *         and values on the format's grid round-trip exactly.
 * Run-to-run determinism and the rounding rules are what make the fast kernels comparable.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/f16_round.h"
#include "kernels/dtype.h"
#include "test.h"

static uint32_t rng_state = 0x12345678u;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 17;
    rng_state ^= rng_state << 5;
    return rng_state;
}
static float rnd_uniform(void) {
    return (float)((rnd() >> 8) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

static float f32_of(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static uint32_t bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* Independent decoding of an IEEE half, by the definition. */
static double half_value(uint16_t h) {
    int e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(1024 + m, e - 25);
    return (h & 0x8000) ? -v : v;
}

/* Independent f32 -> half rounding in double (round half to even via nearbyint). */
static uint16_t half_reference(float x) {
    uint16_t sign = signbit(x) ? 0x8000 : 0;
    double a = fabs((double)x);
    if (isnan(x)) return 0xffff; /* marker: only "is NaN" is compared */
    if (a >= 65520.0) return sign | 0x7c00;
    if (a < ldexp(1, -14)) return sign | (uint16_t)nearbyint(a * ldexp(1, 24)); /* may reach 0x400 */
    int e;
    frexp(a, &e);                               /* a = f * 2^e, f in [0.5, 1) */
    e -= 1;                                     /* a in [2^e, 2^(e+1)) */
    double q = nearbyint(a * ldexp(1, 10 - e)); /* 1024 .. 2048 */
    if (q == 2048) {
        q = 1024;
        e++;
    }
    if (e > 15) return sign | 0x7c00;
    return sign | (uint16_t)((e + 15) << 10) | (uint16_t)(q - 1024);
}

static void test_table(void) {
    static const struct {
        int type;
        const char *name;
        int block;
        size_t bytes;
    } want[] = {
        {SVLM_F32, "f32", 1, 4},       {SVLM_F16, "f16", 1, 2},       {SVLM_BF16, "bf16", 1, 2},
        {SVLM_Q4_0, "q4_0", 32, 18},   {SVLM_Q4_1, "q4_1", 32, 20},   {SVLM_Q5_0, "q5_0", 32, 22},
        {SVLM_Q5_1, "q5_1", 32, 24},   {SVLM_Q8_0, "q8_0", 32, 34},   {SVLM_Q8_1, "q8_1", 32, 36},
        {SVLM_Q2_K, "q2_k", 256, 84},  {SVLM_Q3_K, "q3_k", 256, 110}, {SVLM_Q4_K, "q4_k", 256, 144},
        {SVLM_Q5_K, "q5_k", 256, 176}, {SVLM_Q6_K, "q6_k", 256, 210}, {SVLM_Q8_K, "q8_k", 256, 292},
        {SVLM_I8, "i8", 1, 1},         {SVLM_I16, "i16", 1, 2},       {SVLM_I32, "i32", 1, 4},
        {SVLM_I64, "i64", 1, 8},       {SVLM_F64, "f64", 1, 8},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const svlm_dtype_info *info = svlm_dtype_get(want[i].type);
        REQUIRE(info, "type %d missing", want[i].type);
        CHECK(!strcmp(info->name, want[i].name) && info->block_size == want[i].block &&
                  info->type_size == want[i].bytes,
              "type %d: %s %d %zu", want[i].type, info->name, info->block_size, info->type_size);
        CHECK(info->is_quantized == (want[i].block > 1), "%s is_quantized", info->name);
        svlm_dtype t;
        char upper[16];
        for (size_t c = 0; c <= strlen(want[i].name); c++)
            upper[c] = (char)(want[i].name[c] >= 'a' ? want[i].name[c] - 32 : want[i].name[c]);
        CHECK(svlm_dtype_from_name(upper, &t) == 0 && (int)t == want[i].type, "from_name(%s)", upper);
    }
    const int unknown[] = {-1, 4, 5, 16, 29, 31, 39, SVLM_DTYPE_COUNT, 1000};
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++)
        CHECK(svlm_dtype_get(unknown[i]) == NULL, "type %d known", unknown[i]);
    svlm_dtype t;
    CHECK(svlm_dtype_from_name("q4_k_m", &t) < 0 && svlm_dtype_from_name("", &t) < 0 &&
              svlm_dtype_from_name(NULL, &t) < 0,
          "bogus names accepted");
    CHECK(svlm_row_bytes(SVLM_Q8_0, 64) == 68 && svlm_row_bytes(SVLM_Q4_K, 576 * 256) == 576 * 144,
          "row bytes");
    CHECK(svlm_row_bytes(SVLM_F32, 0) == 0 && svlm_row_bytes(SVLM_F32, 3) == 12, "f32 row bytes");
    CHECK(svlm_row_bytes(SVLM_Q8_0, 33) == 0, "partial block");
    CHECK(svlm_row_bytes(SVLM_F32, -32) == 0, "negative n");
    CHECK(svlm_row_bytes(SVLM_F64, INT64_MAX - 7) == 0 && svlm_row_bytes(SVLM_F32, INT64_MAX) == 0,
          "overflow not caught");
    CHECK(svlm_row_bytes(SVLM_Q8_K, INT64_MAX - 255) == (size_t)((INT64_MAX - 255) / 256) * 292,
          "largest q8_K row");
    CHECK(svlm_row_bytes((svlm_dtype)4, 32) == 0, "unknown type has a row size");
}

static void test_f16(void) {
    /* Every half survives half -> f32 -> half; the f32 value is the definition's. */
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = svlm_f16_to_f32((svlm_f16)h);
        double want = half_value((uint16_t)h);
        svlm_f16 back = svlm_f32_to_f16(f);
        if (isnan(want)) {
            bad += !isnan(f) || ((back & 0x7c00) != 0x7c00) || !(back & 0x3ff) || !(back & 0x200) ||
                   ((back ^ h) & 0x8000);
        } else {
            bad += (double)f != want || back != h || !!signbit(f) != !!(h & 0x8000);
        }
    }
    CHECK(bad == 0, "%d halves do not round-trip", bad);

    const struct {
        float x;
        uint16_t h;
    } cases[] = {
        {1.0f, 0x3c00},
        {-2.0f, 0xc000},
        {65504.0f, 0x7bff},
        {65519.99f, 0x7bff},
        {65520.0f, 0x7c00},
        {1e9f, 0x7c00},
        {INFINITY, 0x7c00},
        {-INFINITY, 0xfc00},
        {0.0f, 0x0000},
        {-0.0f, 0x8000},
        {0x1p-24f, 0x0001},
        {0x1p-25f, 0x0000},
        {0x1.000002p-25f, 0x0001},
        {0x3p-25f, 0x0002},
        {0x5p-25f, 0x0002},
        {0x1p-14f, 0x0400},
        {0x1.ffcp-15f, 0x0400},
        {0x1.ff4p-15f, 0x03fe},
        {1.0f + 0x1p-11f, 0x3c00},
        {1.0f + 0x3p-11f, 0x3c02},
        {1.0f + 0x1.2p-11f, 0x3c01},
        {-1e-30f, 0x8000},
        {FLT_MIN, 0x0000},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t got = svlm_f32_to_f16(cases[i].x);
        CHECK(got == cases[i].h, "f32_to_f16(%a) = 0x%04x, want 0x%04x", cases[i].x, got, cases[i].h);
    }
    uint16_t qn = svlm_f32_to_f16(f32_of(0x7f800001u)); /* signalling NaN comes out quiet */
    CHECK((qn & 0x7e00) == 0x7e00, "sNaN -> 0x%04x", qn);
    CHECK(svlm_f16_to_f32(0x0001) == 0x1p-24f && svlm_f16_to_f32(0x03ff) == 0x3ffp-24f, "subnormal widening");

    /* Random f32 bit patterns and values near the half range agree with the reference. */
    int mismatches = 0;
    for (int i = 0; i < 400000; i++) {
        uint32_t u = rnd();
        if (i & 1) u = (u & 0x807fffffu) | ((uint32_t)(100 + rnd() % 45) << 23); /* exponents 2^-27..2^17 */
        float x = f32_of(u);
        uint16_t got = svlm_f32_to_f16(x), want = half_reference(x);
        if (isnan(x) ? !isnan(svlm_f16_to_f32(got)) : got != want) {
            if (mismatches++ < 5) fprintf(stderr, "f16(%a): got 0x%04x want 0x%04x\n", x, got, want);
        }
    }
    CHECK(mismatches == 0, "%d f32->f16 mismatches against the reference", mismatches);
}

/* The array conversions (F16C where the CPU has it) give the scalar functions' bits: every half,
 * and 2^20 spread f32 patterns with every exponent, NaNs, infinities and subnormals among them. */
static void test_f16_arrays(void) {
    enum { N = 1 << 20 };
    float *f = malloc(sizeof(float) * N), *g = malloc(sizeof(float) * 65536);
    svlm_f16 *h = malloc(sizeof(svlm_f16) * 65536), *a = malloc(sizeof(svlm_f16) * N);
    REQUIRE(f && g && h && a, "out of memory");
    int bad = 0;
    for (uint32_t i = 0; i < 65536; i++)
        h[i] = (svlm_f16)i;
    svlm_f16_to_f32_array(g, h, 65536);
    for (uint32_t i = 0; i < 65536; i++)
        bad += bits_of(g[i]) != bits_of(svlm_f16_to_f32(h[i]));
    CHECK(bad == 0, "%d halves widen differently in arrays", bad);
    CHECK(isnan(svlm_f16_to_f32(0x7c01)) && (bits_of(svlm_f16_to_f32(0x7c01)) & 0x400000u),
          "a signalling half NaN widens to a quiet NaN");
    for (uint32_t i = 0; i < N; i++)
        f[i] = f32_of(i * 4099u + (i & 7));
    svlm_f32_to_f16_array(a, f, N);
    bad = 0;
    for (uint32_t i = 0; i < N; i++)
        bad += a[i] != svlm_f32_to_f16(f[i]);
    CHECK(bad == 0, "%d floats narrow differently in arrays", bad);
    free(f);
    free(g);
    free(h);
    free(a);
}

static void test_bf16(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = svlm_bf16_to_f32((svlm_bf16)h);
        bad += bits_of(f) != h << 16;
        svlm_bf16 back = svlm_f32_to_bf16(f);
        bad += isnan(f) ? !(back & 0x40) || (back & 0x7f80) != 0x7f80 : back != h;
    }
    CHECK(bad == 0, "%d bf16 values do not round-trip", bad);
    const struct {
        uint32_t f;
        uint16_t h;
    } cases[] = {
        {0x3f800000u, 0x3f80}, {0x3f808000u, 0x3f80}, {0x3f818000u, 0x3f82}, {0x3f808001u, 0x3f81},
        {0x3f80ffffu, 0x3f81}, {0x7f7fffffu, 0x7f80}, {0xff7fffffu, 0xff80}, {0x7f800000u, 0x7f80},
        {0x00018000u, 0x0002}, {0x00008000u, 0x0000}, {0x80000001u, 0x8000}, {0x7f800001u, 0x7fc0},
        {0xffc00000u, 0xffc0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t got = svlm_f32_to_bf16(f32_of(cases[i].f));
        CHECK(got == cases[i].h, "f32_to_bf16(0x%08x) = 0x%04x, want 0x%04x", cases[i].f, got, cases[i].h);
    }
    /* Random values: the result is one of the two neighbours and the nearer one. */
    int worse = 0;
    for (int i = 0; i < 200000; i++) {
        uint32_t u = rnd() & 0x7f7fffffu;
        uint16_t h = svlm_f32_to_bf16(f32_of(u));
        int e = (int)((u >> 23) & 0xff);
        double x = f32_of(u), lo = f32_of(u & 0xffff0000u);
        double hi = lo + ldexp(1, (e ? e : 1) - 134); /* next bf16 up, unbounded exponent */
        double got = svlm_bf16_to_f32(h);
        double best = fabs(x - lo) < fabs(hi - x)   ? lo
                      : fabs(x - lo) > fabs(hi - x) ? hi
                      : ((u >> 16) & 1)             ? hi
                                                    : lo;
        if (best >= 0x1p128) best = INFINITY; /* rounds past the largest finite: overflow */
        worse += got != best;
    }
    CHECK(worse == 0, "%d bf16 roundings are not to the nearest (even)", worse);
}

/* ---- dequantization against the written formulas ------------------------------------------------ */

static uint16_t le16(const uint8_t *p) {
    return (uint16_t)(p[0] | p[1] << 8);
}

/* A finite half with a moderate exponent and random sign/mantissa. */
static void put_half(uint8_t *p) {
    uint16_t h = (uint16_t)(((rnd() & 1) << 15) | ((8 + rnd() % 14) << 10) | (rnd() & 1023));
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

/* 6-bit scale and min of sub-block j of a Q4_K/Q5_K block's 12 scale bytes, per §5. */
static void spec_scale_min(const uint8_t *s, int j, int *sc, int *mn) {
    if (j < 4) {
        *sc = s[j] & 63;
        *mn = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
        *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

/* Value of element i (0..block-1) of one block, from raw bytes; *mag: size of its terms. */
static double spec_value(svlm_dtype t, const uint8_t *b, int i, double *mag) {
    int j = i, lo = i < 16;
    *mag = 0;
    double d, m, q;
    switch (t) {
    case SVLM_Q4_0:
        d = half_value(le16(b));
        q = (lo ? (b[2 + j] & 15) : (b[2 + j - 16] >> 4)) - 8;
        *mag = fabs(q * d);
        return q * d;
    case SVLM_Q4_1:
        d = half_value(le16(b)), m = half_value(le16(b + 2));
        q = lo ? (b[4 + j] & 15) : (b[4 + j - 16] >> 4);
        *mag = fabs(q * d) + fabs(m);
        return q * d + m;
    case SVLM_Q5_0:
    case SVLM_Q5_1: {
        int is1 = t == SVLM_Q5_1;
        d = half_value(le16(b));
        m = is1 ? half_value(le16(b + 2)) : 0;
        const uint8_t *qh = b + (is1 ? 4 : 2), *qs = qh + 4;
        uint32_t h = (uint32_t)qh[0] | (uint32_t)qh[1] << 8 | (uint32_t)qh[2] << 16 | (uint32_t)qh[3] << 24;
        q = ((lo ? (qs[j] & 15) : (qs[j - 16] >> 4)) | (int)(((h >> j) & 1) << 4)) - (is1 ? 0 : 16);
        *mag = fabs(q * d) + fabs(m);
        return q * d + m;
    }
    case SVLM_Q8_0:
    case SVLM_Q8_1:
        d = half_value(le16(b));
        q = (int8_t)b[(t == SVLM_Q8_1 ? 4 : 2) + j];
        *mag = fabs(q * d);
        return q * d;
    case SVLM_Q4_K:
    case SVLM_Q5_K: {
        int g = i / 64, high = (i % 64) >= 32, l = i % 32, sc, mn;
        d = half_value(le16(b));
        double dmin = half_value(le16(b + 2));
        spec_scale_min(b + 4, 2 * g + high, &sc, &mn);
        const uint8_t *qs = b + (t == SVLM_Q5_K ? 48 : 16);
        q = high ? (qs[32 * g + l] >> 4) : (qs[32 * g + l] & 15);
        if (t == SVLM_Q5_K && ((b[16 + l] >> (2 * g + high)) & 1)) q += 16;
        *mag = fabs(d * sc * q) + fabs(dmin * mn);
        return d * sc * q - dmin * mn;
    }
    case SVLM_Q6_K: {
        int h = i / 128, r = i % 128, quarter = r / 32, l = r % 32, is = l / 16;
        const uint8_t *ql = b + 64 * h, *qh = b + 128 + 32 * h;
        const int8_t *sc = (const int8_t *)(b + 192 + 8 * h);
        d = half_value(le16(b + 208));
        int low4 = quarter == 0   ? ql[l] & 15
                   : quarter == 1 ? ql[l + 32] & 15
                   : quarter == 2 ? ql[l] >> 4
                                  : ql[l + 32] >> 4;
        q = (low4 | (((qh[l] >> (2 * quarter)) & 3) << 4)) - 32;
        *mag = fabs(d * sc[is + 2 * quarter] * q);
        return d * sc[is + 2 * quarter] * q;
    }
    case SVLM_Q8_K: {
        float df;
        memcpy(&df, b, 4);
        q = (int8_t)b[4 + i];
        *mag = fabs(df * q);
        return df * q;
    }
    default: return NAN;
    }
}

static const svlm_dtype quant_types[] = {SVLM_Q4_0, SVLM_Q4_1, SVLM_Q5_0, SVLM_Q5_1, SVLM_Q8_0,
                                         SVLM_Q8_1, SVLM_Q4_K, SVLM_Q5_K, SVLM_Q6_K, SVLM_Q8_K};
#define N_QUANT (sizeof quant_types / sizeof quant_types[0])

static void test_dequantize_formulas(void) {
    enum { BLOCKS = 3 };
    for (size_t ti = 0; ti < N_QUANT; ti++) {
        svlm_dtype t = quant_types[ti];
        const svlm_dtype_info *info = svlm_dtype_get(t);
        int qk = info->block_size;
        size_t bs = info->type_size;
        uint8_t *raw = malloc(bs * BLOCKS);
        float *out = malloc(sizeof(float) * (size_t)qk * BLOCKS);
        REQUIRE(raw && out, "oom");
        int bad = 0;
        for (int rep = 0; rep < 20; rep++) {
            for (size_t k = 0; k < bs * BLOCKS; k++)
                raw[k] = (uint8_t)rnd();
            for (int blk = 0; blk < BLOCKS; blk++) { /* make the fp16 scales finite */
                uint8_t *b = raw + bs * (size_t)blk;
                switch (t) {
                case SVLM_Q4_1:
                case SVLM_Q5_1:
                case SVLM_Q8_1:
                case SVLM_Q4_K:
                case SVLM_Q5_K:
                    put_half(b);
                    put_half(b + 2);
                    break;
                case SVLM_Q6_K: put_half(b + 208); break;
                case SVLM_Q8_K: {
                    float df = rnd_uniform() * 0.01f;
                    memcpy(b, &df, 4);
                    break;
                }
                default: put_half(b); break;
                }
            }
            CHECK(svlm_dequantize_row(t, raw, out, (int64_t)qk * BLOCKS) == 0, "%s dequantize failed",
                  info->name);
            for (int blk = 0; blk < BLOCKS; blk++) {
                for (int i = 0; i < qk; i++) {
                    double mag, want = spec_value(t, raw + bs * (size_t)blk, i, &mag);
                    double got = out[blk * qk + i];
                    /* float evaluation of the same formula: a few ulps of its terms */
                    if (!(fabs(got - want) <= 4 * FLT_EPSILON * mag + 1e-38)) {
                        if (bad++ < 5)
                            fprintf(stderr, "%s block %d elem %d: got %.9g want %.9g\n", info->name, blk, i,
                                    got, want);
                    }
                }
            }
        }
        CHECK(bad == 0, "%s: %d elements differ from the written formula", info->name, bad);
        CHECK(svlm_dequantize_row(t, raw, out, qk - 1) != 0 || qk == 1, "%s: partial block accepted",
              info->name);
        free(raw);
        free(out);
    }
    /* Plain types. */
    uint8_t h[4] = {0x00, 0x3c, 0x00, 0xc0}; /* f16 1, -2 */
    float o[2];
    CHECK(svlm_dequantize_row(SVLM_F16, h, o, 2) == 0 && o[0] == 1.0f && o[1] == -2.0f, "f16 row");
    uint8_t bf[4] = {0x80, 0x3f, 0x49, 0x40}; /* bf16 1, 3.140625 */
    CHECK(svlm_dequantize_row(SVLM_BF16, bf, o, 2) == 0 && o[0] == 1.0f && o[1] == 3.140625f, "bf16 row");
    CHECK(svlm_dequantize_row(SVLM_Q2_K, h, o, 256) != 0 && svlm_quantize_row(SVLM_I32, o, h, 1) != 0,
          "unsupported types accepted");
}

/* ---- quantize -> dequantize ------------------------------------------------------------------------------
 */

typedef struct {
    double rms, max;
} errstat;

/* Largest error of rounding v to fp16: half an ulp, or half the subnormal step 2^-24. */
static double h16err(double v) {
    return fmax(fabs(v) * 0x1p-11, 0x1p-25);
}

/* Round-trips n values; checks the per-block bound of the simple formats; returns the errors. */
static errstat roundtrip(svlm_dtype t, const float *x, int n, const char *data_name) {
    const svlm_dtype_info *info = svlm_dtype_get(t);
    size_t bytes = svlm_row_bytes(t, n);
    uint8_t *q = malloc(bytes), *q2 = malloc(bytes);
    float *y = malloc(sizeof(float) * (size_t)n);
    REQUIRE(q && q2 && y, "oom");
    CHECK(svlm_quantize_row(t, x, q, n) == 0 && svlm_dequantize_row(t, q, y, n) == 0, "%s failed",
          info->name);
    CHECK(svlm_quantize_row(t, x, q2, n) == 0 && !memcmp(q, q2, bytes), "%s quantization not deterministic",
          info->name);
    errstat s = {0, 0};
    int qk = info->block_size, over = 0;
    for (int b0 = 0; b0 < n; b0 += qk) {
        double amax = 0, mn = INFINITY, mx = -INFINITY;
        for (int i = b0; i < b0 + qk; i++) {
            amax = fmax(amax, fabs(x[i]));
            mn = fmin(mn, x[i]);
            mx = fmax(mx, x[i]);
        }
        double bound = INFINITY;
        switch (t) {
        case SVLM_Q8_0:
        case SVLM_Q8_1: bound = amax / 127 * 0.5 + 127 * h16err(amax / 127); break;
        case SVLM_Q8_K: bound = amax / 127 * 0.5 * (1 + 1e-6); break;
        case SVLM_Q4_0: bound = amax / 8 + 8 * h16err(amax / 8); break;
        case SVLM_Q5_0: bound = amax / 16 + 16 * h16err(amax / 16); break;
        case SVLM_Q4_1: bound = (mx - mn) / 15 * 0.5 + 15 * h16err((mx - mn) / 15) + h16err(mn); break;
        case SVLM_Q5_1: bound = (mx - mn) / 31 * 0.5 + 31 * h16err((mx - mn) / 31) + h16err(mn); break;
        default: break;
        }
        bound = bound * (1 + 1e-5) + 1e-30;
        for (int i = b0; i < b0 + qk; i++) {
            double e = fabs((double)y[i] - x[i]);
            double eb = t == SVLM_F16    ? h16err(x[i]) * (1 + 1e-6)
                        : t == SVLM_BF16 ? fabs(x[i]) * 0x1p-8 * (1 + 1e-6)
                                         : bound;
            if (e > eb && over++ < 3)
                fprintf(stderr, "%s on %s: x[%d]=%g -> %g, error %g > bound %g\n", info->name, data_name, i,
                        x[i], y[i], e, eb);
            s.rms += e * e;
            s.max = fmax(s.max, e);
        }
    }
    CHECK(over == 0, "%s on %s: %d elements over the stated bound", info->name, data_name, over);
    s.rms = sqrt(s.rms / n);
    free(q);
    free(q2);
    free(y);
    return s;
}

static void test_roundtrip(void) {
    enum { N = 256 * 64 };
    float *uni = malloc(sizeof(float) * N), *gauss = malloc(sizeof(float) * N),
          *pos = malloc(sizeof(float) * N);
    float *outl = malloc(sizeof(float) * N), *tiny = malloc(sizeof(float) * N),
          *zero = calloc(N, sizeof(float));
    REQUIRE(uni && gauss && pos && outl && tiny && zero, "oom");
    for (int i = 0; i < N; i++) {
        uni[i] = rnd_uniform();
        gauss[i] = (rnd_uniform() + rnd_uniform() + rnd_uniform() + rnd_uniform()) * 0.02f;
        pos[i] = 3.0f + rnd_uniform(); /* all positive: exercises the min of q4_1/q5_1/K-quants */
        outl[i] = rnd_uniform() * ((i % 97) == 5 ? 40.0f : 0.5f);
        tiny[i] = rnd_uniform() * 1e-4f; /* block scales land in fp16's subnormal range */
    }
    const svlm_dtype all[] = {SVLM_F16,  SVLM_BF16, SVLM_Q4_0, SVLM_Q4_1, SVLM_Q5_0, SVLM_Q5_1,
                              SVLM_Q8_0, SVLM_Q8_1, SVLM_Q4_K, SVLM_Q5_K, SVLM_Q6_K, SVLM_Q8_K};
    const struct {
        const float *x;
        const char *name;
    } sets[] = {{uni, "U(-1,1)"},
                {gauss, "bell(0.02)"},
                {pos, "U(2,4)"},
                {outl, "outliers"},
                {tiny, "U(-1e-4,1e-4)"}};
    printf("%-6s", "type");
    for (size_t s = 0; s < 5; s++)
        printf(" %22s", sets[s].name);
    printf("   (rms / max error)\n");
    for (size_t ti = 0; ti < sizeof all / sizeof all[0]; ti++) {
        svlm_dtype t = all[ti];
        printf("%-6s", svlm_dtype_get(t)->name);
        for (size_t s = 0; s < 5; s++) {
            errstat e = roundtrip(t, sets[s].x, N, sets[s].name);
            printf("    %9.3g / %8.3g", e.rms, e.max);
            if (s == 0) { /* stated bounds for the searched-scale K-quants on U(-1,1) */
                if (t == SVLM_Q4_K)
                    CHECK(e.rms <= 0.036 && e.max <= 0.12, "q4_K U(-1,1): rms %g max %g", e.rms, e.max);
                if (t == SVLM_Q5_K)
                    CHECK(e.rms <= 0.019 && e.max <= 0.07, "q5_K U(-1,1): rms %g max %g", e.rms, e.max);
                if (t == SVLM_Q6_K)
                    CHECK(e.rms <= 0.0090 && e.max <= 0.025, "q6_K U(-1,1): rms %g max %g", e.rms, e.max);
            }
        }
        printf("\n");
        errstat z = roundtrip(t, zero, N, "zeros");
        CHECK(z.max == 0, "%s: zeros do not stay zero", svlm_dtype_get(t)->name);
    }
    free(uni);
    free(gauss);
    free(pos);
    free(outl);
    free(tiny);
    free(zero);
}

/* Values already on a format's grid come back exactly. */
static void test_exact_grids(void) {
    float x[256], y[256];
    uint8_t q[512];
    /* q8_0: k * 2^-7 with k in -127..127 and |k| = 127 present in each block. */
    for (int i = 0; i < 256; i++)
        x[i] = (float)((i % 32 == 0) ? 127 : (int)(rnd() % 255) - 127) * 0x1p-7f;
    svlm_quantize_row(SVLM_Q8_0, x, q, 256);
    svlm_dequantize_row(SVLM_Q8_0, q, y, 256);
    CHECK(!memcmp(x, y, sizeof x), "q8_0 grid values changed");
    /* q4_0: (k - 8) * 2^-4 with the extreme -8 present. */
    for (int i = 0; i < 256; i++)
        x[i] = (float)((i % 32 == 3) ? -8 : (int)(rnd() % 16) - 8) * 0x1p-4f;
    svlm_quantize_row(SVLM_Q4_0, x, q, 256);
    svlm_dequantize_row(SVLM_Q4_0, q, y, 256);
    CHECK(!memcmp(x, y, sizeof x), "q4_0 grid values changed");
    /* q5_0: (k - 16) * 2^-5 with -16 present. */
    for (int i = 0; i < 256; i++)
        x[i] = (float)((i % 32 == 7) ? -16 : (int)(rnd() % 32) - 16) * 0x1p-5f;
    svlm_quantize_row(SVLM_Q5_0, x, q, 256);
    svlm_dequantize_row(SVLM_Q5_0, q, y, 256);
    CHECK(!memcmp(x, y, sizeof x), "q5_0 grid values changed");
    /* q8_K: integers -127..127 with 127 present (d = 1). */
    for (int i = 0; i < 256; i++)
        x[i] = (float)(i == 0 ? 127 : (int)(rnd() % 255) - 127);
    svlm_quantize_row(SVLM_Q8_K, x, q, 256);
    svlm_dequantize_row(SVLM_Q8_K, q, y, 256);
    CHECK(!memcmp(x, y, sizeof x), "q8_K grid values changed");
    svlm_block_q8_K kb;
    memcpy(&kb, q, sizeof kb);
    int bsum_bad = 0;
    for (int g = 0; g < 16; g++) {
        int s = 0;
        for (int i = 0; i < 16; i++)
            s += kb.qs[16 * g + i];
        bsum_bad += kb.bsums[g] != s;
    }
    CHECK(bsum_bad == 0, "q8_K bsums are not the group sums");
    /* q8_1: s = d * sum(q). */
    svlm_block_q8_1 b1;
    svlm_quantize_row(SVLM_Q8_1, x, &b1, 32);
    int sum = 0;
    for (int i = 0; i < 32; i++)
        sum += b1.qs[i];
    CHECK(fabs(svlm_f16_to_f32(b1.s) - sum * svlm_f16_to_f32(b1.d)) <=
              fabs(sum * svlm_f16_to_f32(b1.d)) * 0x1p-10,
          "q8_1 s = %g, d*sum = %g", svlm_f16_to_f32(b1.s), sum * svlm_f16_to_f32(b1.d));
}

int test_main(void) {
    test_table();
    test_f16();
    test_f16_arrays();
    test_bf16();
    test_dequantize_formulas();
    test_roundtrip();
    test_exact_grids();
    return 0;
}
