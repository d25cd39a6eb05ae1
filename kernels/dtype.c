/* The type table (names, block sizes, byte sizes) and exact scalar float conversions. */
#include "kernels/dtype.h"

#include <string.h>
#include <strings.h>

#include "common/checked.h"

static const svlm_dtype_info dtype_table[SVLM_DTYPE_COUNT] = {
    [SVLM_F32] = {"f32", 1, 4, 0},
    [SVLM_F16] = {"f16", 1, 2, 0},
    [SVLM_Q4_0] = {"q4_0", SVLM_QK4_0, sizeof(svlm_block_q4_0), 1},
    [SVLM_Q4_1] = {"q4_1", SVLM_QK4_1, sizeof(svlm_block_q4_1), 1},
    [SVLM_Q5_0] = {"q5_0", SVLM_QK5_0, sizeof(svlm_block_q5_0), 1},
    [SVLM_Q5_1] = {"q5_1", SVLM_QK5_1, sizeof(svlm_block_q5_1), 1},
    [SVLM_Q8_0] = {"q8_0", SVLM_QK8_0, sizeof(svlm_block_q8_0), 1},
    [SVLM_Q8_1] = {"q8_1", SVLM_QK8_1, sizeof(svlm_block_q8_1), 1},
    /* Q2_K and Q3_K: known layouts (so files holding them open), no (de)quantizer yet. */
    [SVLM_Q2_K] = {"q2_k", SVLM_QK_K, 84, 1},
    [SVLM_Q3_K] = {"q3_k", SVLM_QK_K, 110, 1},
    [SVLM_Q4_K] = {"q4_k", SVLM_QK_K, sizeof(svlm_block_q4_K), 1},
    [SVLM_Q5_K] = {"q5_k", SVLM_QK_K, sizeof(svlm_block_q5_K), 1},
    [SVLM_Q6_K] = {"q6_k", SVLM_QK_K, sizeof(svlm_block_q6_K), 1},
    [SVLM_Q8_K] = {"q8_k", SVLM_QK_K, sizeof(svlm_block_q8_K), 1},
    [SVLM_I8] = {"i8", 1, 1, 0},
    [SVLM_I16] = {"i16", 1, 2, 0},
    [SVLM_I32] = {"i32", 1, 4, 0},
    [SVLM_I64] = {"i64", 1, 8, 0},
    [SVLM_F64] = {"f64", 1, 8, 0},
    [SVLM_BF16] = {"bf16", 1, 2, 0},
};

_Static_assert(sizeof(svlm_block_q8_1) == 36, "q8_1 layout");
_Static_assert(sizeof(svlm_block_q8_K) == 292, "q8_K layout");

const svlm_dtype_info *svlm_dtype_get(int type) {
    if (type < 0 || type >= SVLM_DTYPE_COUNT || !dtype_table[type].name) return NULL;
    return &dtype_table[type];
}

int svlm_dtype_from_name(const char *name, svlm_dtype *out) {
    if (!name) return -1;
    for (int t = 0; t < SVLM_DTYPE_COUNT; t++) {
        if (dtype_table[t].name && !strcasecmp(name, dtype_table[t].name)) {
            *out = (svlm_dtype)t;
            return 0;
        }
    }
    return -1;
}

size_t svlm_row_bytes(svlm_dtype t, int64_t n) {
    const svlm_dtype_info *info = svlm_dtype_get((int)t);
    if (!info || n < 0 || n % info->block_size) return 0;
    uint64_t bytes;
    if (!svlm_mul_u64((uint64_t)(n / info->block_size), info->type_size, &bytes) || bytes > SIZE_MAX)
        return 0;
    return (size_t)bytes;
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float svlm_f16_to_f32(svlm_f16 h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    if (exp == 0x1f) /* inf; a NaN comes out quiet, as F16C gives it (f16_round.h's arrays use it) */
        return f32_from_bits(sign | 0x7f800000u | (mant << 13) | (mant ? 0x400000u : 0));
    if (exp != 0) return f32_from_bits(sign | ((exp + 112) << 23) | (mant << 13));
    if (mant == 0) return f32_from_bits(sign);
    /* Subnormal half: normalise the mantissa into an f32 exponent. */
    int e = -1;
    do {
        mant <<= 1;
        e++;
    } while (!(mant & 0x400));
    return f32_from_bits(sign | ((uint32_t)(112 - e) << 23) | ((mant & 0x3ff) << 13));
}

svlm_f16 svlm_f32_to_f16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    x &= 0x7fffffffu;
    if (x > 0x7f800000u) /* NaN: keep it quiet and keep the top payload bits, as F16C does */
        return (svlm_f16)(sign | 0x7e00 | ((x >> 13) & 0x3ff));
    if (x >= 0x47800000u) return (svlm_f16)(sign | 0x7c00); /* >= 65536 (and inf) */
    if (x >= 0x38800000u) {
        /* Normal half: rebias the exponent, round the 13 dropped bits to nearest even.
         * A carry out of the mantissa correctly bumps the exponent (up to inf). */
        uint32_t r = x - 0x38000000u;
        r += 0xfffu + ((r >> 13) & 1);
        return (svlm_f16)(sign | (r >> 13));
    }
    if (x < 0x33000000u) return sign; /* below half the smallest subnormal: rounds to zero */
    /* Subnormal half: value = m * 2^(e-150), in units of 2^-24 that is m >> (126 - e). */
    uint32_t e = x >> 23;
    uint32_t m = (x & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e; /* 14..24 */
    uint32_t h = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) h++;
    return (svlm_f16)(sign | h);
}

float svlm_bf16_to_f32(svlm_bf16 h) {
    return f32_from_bits((uint32_t)h << 16);
}

svlm_bf16 svlm_f32_to_bf16(float f) {
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (svlm_bf16)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1); /* round to nearest even; overflow carries into inf */
    return (svlm_bf16)(u >> 16);
}
