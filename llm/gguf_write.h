/*
 * Streaming GGUF v3 writer.
 *
 * Usage: create → set metadata (any order) → add every tensor's info → for each tensor in
 * the order added, write its bytes (in one or several chunks) → finish. Metadata and the
 * tensor table are kept in memory (they are small); tensor data goes straight to the file,
 * so a model far larger than memory can be written chunk by chunk.
 *
 * The file is written to "PATH.tmp" and renamed to PATH only by a successful finish, so a
 * failed or interrupted write never leaves a half-written PATH behind. Tensors start at
 * multiples of the alignment: 32, the GGUF default, unless create asks for another, in
 * which case general.alignment is written (llama.cpp's converter omits the key at 32).
 */
#ifndef SVLM_LLM_GGUF_WRITE_H
#define SVLM_LLM_GGUF_WRITE_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/dtype.h"
#include "llm/gguf.h"
#include "svlm.h"

typedef struct gguf_writer gguf_writer;

/* Starts a file at path (data goes to path.tmp until finish). alignment: a power of two
 * that is a multiple of 8, or 0 for the default 32. */
svlm_status gguf_writer_create(const char *path, size_t alignment, gguf_writer **out, svlm_err *err);
/* Removes the temporary file unless finish succeeded. Accepts NULL. */
void gguf_writer_destroy(gguf_writer *w);

/* Metadata. A key may be set once; a second set of the same key is an error. Strings are
 * copied (len bytes, need not be NUL-terminated for the _n variant). */
svlm_status gguf_writer_set_u8(gguf_writer *w, const char *key, uint8_t v, svlm_err *err);
svlm_status gguf_writer_set_i8(gguf_writer *w, const char *key, int8_t v, svlm_err *err);
svlm_status gguf_writer_set_u16(gguf_writer *w, const char *key, uint16_t v, svlm_err *err);
svlm_status gguf_writer_set_i16(gguf_writer *w, const char *key, int16_t v, svlm_err *err);
svlm_status gguf_writer_set_u32(gguf_writer *w, const char *key, uint32_t v, svlm_err *err);
svlm_status gguf_writer_set_i32(gguf_writer *w, const char *key, int32_t v, svlm_err *err);
svlm_status gguf_writer_set_u64(gguf_writer *w, const char *key, uint64_t v, svlm_err *err);
svlm_status gguf_writer_set_i64(gguf_writer *w, const char *key, int64_t v, svlm_err *err);
svlm_status gguf_writer_set_f32(gguf_writer *w, const char *key, float v, svlm_err *err);
svlm_status gguf_writer_set_f64(gguf_writer *w, const char *key, double v, svlm_err *err);
svlm_status gguf_writer_set_bool(gguf_writer *w, const char *key, int v, svlm_err *err);
svlm_status gguf_writer_set_str(gguf_writer *w, const char *key, const char *v, svlm_err *err);
svlm_status gguf_writer_set_str_n(gguf_writer *w, const char *key, const char *v, size_t len, svlm_err *err);
/* Array of n scalars of elem_type (any scalar type except STRING/ARRAY), given as raw
 * little-endian element bytes (bool: one byte 0/1 each). */
svlm_status gguf_writer_set_arr(gguf_writer *w, const char *key, gguf_vtype elem_type, const void *elems,
                                uint64_t n, svlm_err *err);
/* Array of n strings (NUL-terminated). */
svlm_status gguf_writer_set_arr_str(gguf_writer *w, const char *key, const char *const *strs, uint64_t n,
                                    svlm_err *err);
/* Array of n strings given as (ptr, len): they may hold NUL bytes, as GGUF strings may (a copy of
 * a file's tokenizer.ggml.tokens must keep every byte). */
svlm_status gguf_writer_set_arr_str_n(gguf_writer *w, const char *key, const gguf_str *strs, uint64_t n,
                                      svlm_err *err);

/* Declares the next tensor: ne in ggml order (ne[0] fastest), n_dims 1..4, ne[0] a multiple
 * of the type's block size. Names are unique and at most 63 bytes (ggml's limit). */
svlm_status gguf_writer_add_tensor(gguf_writer *w, const char *name, svlm_dtype type, int n_dims,
                                   const int64_t *ne, svlm_err *err);

/* Writes the next bytes of tensor data. The first call writes the header, metadata and
 * tensor table (after that no metadata or tensor may be added). Chunks fill the tensors in
 * the order they were added; a chunk may span tensors. */
svlm_status gguf_writer_write_data(gguf_writer *w, const void *data, size_t n, svlm_err *err);

/* Checks that every tensor got all its bytes, flushes, closes and renames into place. */
svlm_status gguf_writer_finish(gguf_writer *w, svlm_err *err);

/* Bytes a tensor of this type and shape occupies (0 on overflow or a bad shape). */
size_t gguf_tensor_bytes(svlm_dtype type, int n_dims, const int64_t *ne);

#endif
