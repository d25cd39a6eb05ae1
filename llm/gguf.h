/*
 * GGUF v2/v3 reader. The file is memory-mapped; every count, length, offset and size is
 * validated against the file with overflow-checked arithmetic before use, so a malformed
 * file is rejected with a message naming what is wrong and never read out of bounds.
 * Strings returned point into the mapping (not NUL-terminated: use the length), except
 * key/tensor names, which the reader copies and NUL-terminates.
 */
#ifndef SVLM_LLM_GGUF_H
#define SVLM_LLM_GGUF_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/dtype.h"
#include "svlm.h"

typedef enum gguf_vtype {
    GGUF_UINT8 = 0,
    GGUF_INT8 = 1,
    GGUF_UINT16 = 2,
    GGUF_INT16 = 3,
    GGUF_UINT32 = 4,
    GGUF_INT32 = 5,
    GGUF_FLOAT32 = 6,
    GGUF_BOOL = 7,
    GGUF_STRING = 8,
    GGUF_ARRAY = 9,
    GGUF_UINT64 = 10,
    GGUF_INT64 = 11,
    GGUF_FLOAT64 = 12,
    GGUF_VTYPE_COUNT = 13,
} gguf_vtype;

typedef struct gguf_str {
    const char *ptr;
    uint64_t len;
} gguf_str;

/* One metadata value. For arrays, `arr_type`/`arr_n` describe the elements; fixed-size elements
 * are raw little-endian bytes at `data`, string elements are decoded in `arr_strs`. */
typedef struct gguf_kv {
    char *key;
    gguf_vtype type;
    union {
        uint64_t u64;
        int64_t i64;
        double f64;
        int b;
        gguf_str str;
    } v;                 /* scalars, widened */
    gguf_vtype arr_type; /* arrays only */
    uint64_t arr_n;
    const uint8_t *data;      /* arrays only: raw element bytes (or string records) */
    const gguf_str *arr_strs; /* arrays of strings: decoded (ptr,len) per element */
} gguf_kv;

typedef struct gguf_tensor {
    char *name;
    svlm_dtype type;
    int n_dims;
    int64_t ne[4];   /* ggml order: ne[0] fastest; unused dims are 1 */
    uint64_t offset; /* relative to the data section */
    size_t nbytes;
    const void *data; /* points into the mapping */
} gguf_tensor;

typedef struct gguf_file {
    uint32_t version;
    uint64_t n_kv, n_tensors;
    gguf_kv *kv;
    gguf_tensor *tensors;
    size_t alignment;
    size_t data_offset; /* start of the tensor data section in the file */
    const uint8_t *map;
    size_t size;
    char *path;
} gguf_file;

/* Opens and validates a file. On failure *out is NULL and err says what is wrong. */
svlm_status gguf_open(const char *path, gguf_file **out, svlm_err *err);
/* Same, over a caller-owned buffer (kept, not copied; used by fuzz/corpus tests). */
svlm_status gguf_open_buffer(const void *buf, size_t size, gguf_file **out, svlm_err *err);
void gguf_close(gguf_file *f);

const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key);
const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name);

/* Typed getters: return 1 and set *out if the key exists with a compatible scalar type
 * (any integer type for the integer getters if the value fits; f32/f64 for floats), else 0. */
int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out);
int gguf_get_i64(const gguf_file *f, const char *key, int64_t *out);
int gguf_get_f32(const gguf_file *f, const char *key, float *out);
int gguf_get_bool(const gguf_file *f, const char *key, int *out);
/* String value copied into a new NUL-terminated buffer (caller frees); NULL if absent. */
char *gguf_get_str_dup(const gguf_file *f, const char *key);
/* Array getters: the kv if it is an array of the given element type, else NULL. */
const gguf_kv *gguf_get_arr(const gguf_file *f, const char *key, gguf_vtype elem_type);

const char *gguf_vtype_name(gguf_vtype t);
/* Bytes of one fixed-size value; 0 for strings, arrays and unknown types. */
size_t gguf_vtype_size(gguf_vtype t);

#endif
