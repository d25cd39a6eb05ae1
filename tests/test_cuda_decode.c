/*
 * The CUDA kernels' weight decoders (kernels/cuda/quant_decode.h, compiled here for the CPU)
 * against the reference dequantizers, for every type and across several super-blocks, so the
 * GPU's reading of every format is checked on machines without a GPU. Tolerance: the GPU may
 * fuse a multiply and an add, so 2^-20 of the row's largest magnitude instead of bit equality.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "kernels/cuda/quant_decode.h"
#include "kernels/dtype.h"
#include "test.h"

typedef float (*decode_fn)(const uint8_t *row, int64_t sb, int l);

static uint32_t rng_state = 12345;
static float rnd(void) {
    rng_state = rng_state * 1664525u + 1013904223u;
    return (float)((rng_state >> 8) & 0xffffff) / 16777216.0f * 2.0f - 1.0f;
}

static void check_type(int type, decode_fn fn, int64_t cols) {
    const svlm_dtype_info *info = svlm_dtype_get(type);
    REQUIRE(info, "type %d unknown", type);
    const int rows = 3;
    size_t row_bytes = svlm_row_bytes((svlm_dtype)type, cols);
    REQUIRE(row_bytes > 0, "%s: no row size for %lld columns", info->name, (long long)cols);
    float *src = malloc(sizeof(float) * (size_t)cols), *ref = malloc(sizeof(float) * (size_t)cols);
    uint8_t *q = malloc(row_bytes * rows);
    REQUIRE(src && ref && q, "out of memory");
    int bad = 0;
    double worst = 0;
    for (int r = 0; r < rows; r++) {
        /* rows of different scales, with outliers, so every scale and min code is exercised */
        float scale = r == 0 ? 1.0f : r == 1 ? 0.02f : 37.0f;
        for (int64_t i = 0; i < cols; i++)
            src[i] = rnd() * scale * (i % 97 == 5 ? 8.0f : 1.0f) + (r == 2 ? 0.5f * scale : 0.0f);
        uint8_t *row = q + row_bytes * (size_t)r;
        REQUIRE(!svlm_quantize_row((svlm_dtype)type, src, row, cols), "%s: quantize", info->name);
        REQUIRE(!svlm_dequantize_row((svlm_dtype)type, row, ref, cols), "%s: dequantize", info->name);
        float mx = 0;
        for (int64_t i = 0; i < cols; i++)
            mx = fmaxf(mx, fabsf(ref[i]));
        for (int64_t i = 0; i < cols; i++) {
            float got = fn(row, i / 32, (int)(i % 32));
            double err = fabs((double)got - ref[i]);
            if (err > worst) worst = err;
            if (err > mx * 0x1p-20 && bad++ < 3)
                fprintf(stderr, "%s row %d element %lld: decoded %g, reference %g\n", info->name, r,
                        (long long)i, got, ref[i]);
        }
    }
    CHECK(bad == 0, "%s: %d of %lld elements decoded wrongly", info->name, bad, (long long)(cols * rows));
    printf("%-5s %4lld columns: max |decoded - reference| = %.3g\n", info->name, (long long)cols, worst);
    free(src);
    free(ref);
    free(q);
}

/* The lane forms (a warp's 32 lanes over one super-block) give every element of every super-block
 * exactly once, with the element decoder's value bit for bit. The row starts at a 16-byte boundary,
 * as a device copy of a weight does, so the loads' alignment is the device's (quant_decode.h's host
 * stand-ins return all ones for a misaligned one). */
typedef void (*lane_fn)(const uint8_t *blk, int l, float *v, int *off);
static void check_lanes(int type, lane_fn lane, decode_fn fn) {
    enum { COLS = 768, SUPER = 256 };
    const svlm_dtype_info *info = svlm_dtype_get(type);
    const size_t row_bytes = svlm_row_bytes((svlm_dtype)type, COLS), blk_bytes = row_bytes / (COLS / SUPER);
    float *src = malloc(sizeof(float) * COLS);
    uint8_t *row = malloc(row_bytes);
    REQUIRE(src && row, "out of memory");
    for (int i = 0; i < COLS; i++)
        src[i] = rnd() * (i % 61 == 3 ? 9.0f : 1.0f) + (i >= SUPER ? 0.3f : 0.0f);
    REQUIRE(!svlm_quantize_row((svlm_dtype)type, src, row, COLS), "%s: quantize", info->name);
    int bad = 0, seen_bad = 0;
    for (int s = 0; s < COLS / SUPER; s++) {
        int seen[SUPER] = {0};
        for (int l = 0; l < 32; l++) {
            float v[8];
            int off[2];
            lane(row + blk_bytes * (size_t)s, l, v, off);
            for (int e = 0; e < 8; e++) {
                const int o = off[e / 4] + e % 4, i = s * SUPER + o;
                if (o < 0 || o >= SUPER) {
                    seen_bad++;
                    continue;
                }
                seen[o]++;
                const float want = fn(row, i / 32, i % 32);
                if (v[e] != want && bad++ < 3)
                    fprintf(stderr, "%s lane %d super-block %d element %d: %g, element decoder %g\n",
                            info->name, l, s, o, v[e], want);
            }
        }
        for (int o = 0; o < SUPER; o++)
            seen_bad += seen[o] != 1;
    }
    CHECK(bad == 0 && seen_bad == 0, "%s lane form: %d values differ, %d elements not covered once",
          info->name, bad, seen_bad);
    printf("%-5s lane form: %d super-blocks, every element once, equal to the element decoder\n", info->name,
           COLS / SUPER);
    free(src);
    free(row);
}

int test_main(void) {
#define RUN(ID, FN)                                                                                          \
    check_type(ID, FN, 768);                                                                                 \
    if (!svlm_dtype_get(ID)->is_quantized || svlm_dtype_get(ID)->block_size == 32) check_type(ID, FN, 576);
    SVLM_QD_TYPES(RUN)
#undef RUN
    /* plain types may end in a partial sub-block: the kernels mask those lanes */
    check_type(SVLM_F32, qd_f32, 77);
    check_type(SVLM_F16, qd_f16, 77);
    check_lanes(SVLM_Q4_K, qd_q4_k_lane, qd_q4_k);
    check_lanes(SVLM_Q6_K, qd_q6_k_lane, qd_q6_k);
    return 0;
}
