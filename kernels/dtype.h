/*
 * Element types of weights and activations, with the GGUF/ggml type ids and the exact
 * block layouts of the quantized formats (little-endian, packed, as stored in GGUF files).
 */
#ifndef SVLM_KERNELS_DTYPE_H
#define SVLM_KERNELS_DTYPE_H

#include <stddef.h>
#include <stdint.h>

typedef enum svlm_dtype {
    SVLM_F32 = 0,
    SVLM_F16 = 1,
    SVLM_Q4_0 = 2,
    SVLM_Q4_1 = 3,
    SVLM_Q5_0 = 6,
    SVLM_Q5_1 = 7,
    SVLM_Q8_0 = 8,
    SVLM_Q8_1 = 9,
    SVLM_Q2_K = 10,
    SVLM_Q3_K = 11,
    SVLM_Q4_K = 12,
    SVLM_Q5_K = 13,
    SVLM_Q6_K = 14,
    SVLM_Q8_K = 15,
    SVLM_I8 = 24,
    SVLM_I16 = 25,
    SVLM_I32 = 26,
    SVLM_I64 = 27,
    SVLM_F64 = 28,
    SVLM_BF16 = 30,
    SVLM_DTYPE_COUNT = 40,
} svlm_dtype;

typedef uint16_t svlm_f16;  /* IEEE half, raw bits */
typedef uint16_t svlm_bf16; /* bfloat16, raw bits  */

#define SVLM_QK4_0        32
#define SVLM_QK4_1        32
#define SVLM_QK5_0        32
#define SVLM_QK5_1        32
#define SVLM_QK8_0        32
#define SVLM_QK8_1        32
#define SVLM_QK_K         256
#define SVLM_K_SCALE_SIZE 12

typedef struct {
    svlm_f16 d;
    uint8_t qs[SVLM_QK4_0 / 2];
} svlm_block_q4_0;
typedef struct {
    svlm_f16 d, m;
    uint8_t qs[SVLM_QK4_1 / 2];
} svlm_block_q4_1;
typedef struct {
    svlm_f16 d;
    uint8_t qh[4];
    uint8_t qs[SVLM_QK5_0 / 2];
} svlm_block_q5_0;
typedef struct {
    svlm_f16 d, m;
    uint8_t qh[4];
    uint8_t qs[SVLM_QK5_1 / 2];
} svlm_block_q5_1;
typedef struct {
    svlm_f16 d;
    int8_t qs[SVLM_QK8_0];
} svlm_block_q8_0;
typedef struct {
    svlm_f16 d, s;
    int8_t qs[SVLM_QK8_1];
} svlm_block_q8_1; /* s = d * sum(qs) */
typedef struct {
    svlm_f16 d, dmin;
    uint8_t scales[SVLM_K_SCALE_SIZE];
    uint8_t qs[SVLM_QK_K / 2];
} svlm_block_q4_K;
typedef struct {
    svlm_f16 d, dmin;
    uint8_t scales[SVLM_K_SCALE_SIZE];
    uint8_t qh[SVLM_QK_K / 8];
    uint8_t qs[SVLM_QK_K / 2];
} svlm_block_q5_K;
typedef struct {
    uint8_t ql[SVLM_QK_K / 2];
    uint8_t qh[SVLM_QK_K / 4];
    int8_t scales[SVLM_QK_K / 16];
    svlm_f16 d;
} svlm_block_q6_K;
typedef struct {
    float d;
    int8_t qs[SVLM_QK_K];
    int16_t bsums[SVLM_QK_K / 16];
} svlm_block_q8_K;

_Static_assert(sizeof(svlm_block_q4_0) == 18, "q4_0 layout");
_Static_assert(sizeof(svlm_block_q4_1) == 20, "q4_1 layout");
_Static_assert(sizeof(svlm_block_q5_0) == 22, "q5_0 layout");
_Static_assert(sizeof(svlm_block_q5_1) == 24, "q5_1 layout");
_Static_assert(sizeof(svlm_block_q8_0) == 34, "q8_0 layout");
_Static_assert(sizeof(svlm_block_q4_K) == 144, "q4_K layout");
_Static_assert(sizeof(svlm_block_q5_K) == 176, "q5_K layout");
_Static_assert(sizeof(svlm_block_q6_K) == 210, "q6_K layout");

typedef struct svlm_dtype_info {
    const char *name; /* "f32", "q8_0", ... NULL for unknown ids */
    int block_size;   /* elements per block (1 for plain types)   */
    size_t type_size; /* bytes per block                          */
    int is_quantized;
} svlm_dtype_info;

/* Info for a type id; returns NULL for ids svlm does not know. */
const svlm_dtype_info *svlm_dtype_get(int type);
/* Parses "f32", "q4_k", ... (case-insensitive). Returns 0 and sets *out, or -1. */
int svlm_dtype_from_name(const char *name, svlm_dtype *out);
/* Bytes for n elements of type t; 0 on overflow, unknown type or n not a multiple of the block. */
size_t svlm_row_bytes(svlm_dtype t, int64_t n);

/* Scalar conversions (round-to-nearest-even, as ggml does). */
float svlm_f16_to_f32(svlm_f16 h);
svlm_f16 svlm_f32_to_f16(float f);
float svlm_bf16_to_f32(svlm_bf16 h);
svlm_bf16 svlm_f32_to_bf16(float f);

/* Reference (scalar, readable) dequantization of n elements; n a multiple of the block size.
 * Supported: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q8_1 Q4_K Q5_K Q6_K Q8_K. Returns 0 or -1. */
int svlm_dequantize_row(svlm_dtype t, const void *src, float *dst, int64_t n);
/* Reference quantization (same formulas as ggml's *_ref quantizers) of n elements.
 * Supported: the same list. Returns 0 or -1. */
int svlm_quantize_row(svlm_dtype t, const float *src, void *dst, int64_t n);

#endif
