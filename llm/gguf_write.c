/* Streaming GGUF v3 writer: header, metadata and tensor table from memory, data streamed. */
#include "llm/gguf_write.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/checked.h"
#include "common/err.h"

#define GGUF_MAGIC             "GGUF"
#define GGUF_VERSION           3u
#define GGUF_DEFAULT_ALIGNMENT 32u
#define GGUF_MAX_NAME          63 /* ggml's GGML_MAX_NAME minus the terminator */

typedef struct {
    uint8_t *p;
    size_t len, cap;
} byte_buf;

typedef struct {
    char *name;
    svlm_dtype type;
    int n_dims;
    int64_t ne[4];
    uint64_t offset; /* within the data section */
    size_t nbytes;
} tensor_info;

struct gguf_writer {
    char *path, *tmp_path;
    FILE *f;
    size_t alignment;
    byte_buf kv; /* serialized key/value records */
    uint64_t n_kv;
    char **keys; /* for the duplicate check */
    tensor_info *tensors;
    uint64_t n_tensors, cap_tensors;
    uint64_t data_size; /* aligned size of the data section so far */
    int header_written, finished, failed;
    uint64_t cur;    /* tensor being written */
    size_t cur_done; /* its bytes written so far */
};

/* ---- in-memory serialization ------------------------------------------------------------ */

static int buf_put(byte_buf *b, const void *data, size_t n) {
    size_t need;
    if (!svlm_add_size(b->len, n, &need)) return -1;
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < need) {
            if (!svlm_mul_size(cap, 2, &cap)) return -1;
        }
        uint8_t *p = realloc(b->p, cap);
        if (!p) return -1;
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->len, data, n);
    b->len = need;
    return 0;
}

/* GGUF is little-endian; these helpers write fixed-width integers byte by byte. */
static int buf_le(byte_buf *b, uint64_t v, int bytes) {
    uint8_t tmp[8];
    for (int i = 0; i < bytes; i++)
        tmp[i] = (uint8_t)(v >> (8 * i));
    return buf_put(b, tmp, (size_t)bytes);
}

static int buf_str(byte_buf *b, const char *s, size_t len) {
    return buf_le(b, len, 8) || buf_put(b, s, len);
}

/* A metadata record cut short by a failed allocation would corrupt the file: refuse to go on. */
static svlm_status oom(gguf_writer *w, svlm_err *err) {
    w->failed = 1;
    return svlm_fail(err, SVLM_E_NOMEM, "gguf writer: out of memory");
}

/* Validates the key, checks it is new, writes "key, type" and remembers the key. */
static svlm_status begin_kv(gguf_writer *w, const char *key, gguf_vtype type, svlm_err *err) {
    if (!w || !key) return svlm_fail(err, SVLM_E_INVALID, "gguf writer: NULL argument");
    if (w->failed) return svlm_fail(err, SVLM_E_INVALID, "gguf writer: an earlier call failed");
    if (w->header_written)
        return svlm_fail(err, SVLM_E_INVALID, "gguf writer: metadata '%s' set after tensor data began", key);
    size_t len = strlen(key);
    if (len == 0) return svlm_fail(err, SVLM_E_INVALID, "gguf writer: empty metadata key");
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (!strcmp(w->keys[i], key))
            return svlm_fail(err, SVLM_E_INVALID, "gguf writer: metadata key '%s' set twice", key);
    char **keys = realloc(w->keys, (size_t)(w->n_kv + 1) * sizeof *keys);
    if (!keys) return oom(w, err);
    w->keys = keys;
    if (!(keys[w->n_kv] = strdup(key))) return oom(w, err);
    if (buf_str(&w->kv, key, len) || buf_le(&w->kv, (uint64_t)type, 4)) {
        free(keys[w->n_kv]);
        return oom(w, err);
    }
    w->n_kv++;
    return SVLM_OK;
}

static svlm_status set_scalar(gguf_writer *w, const char *key, gguf_vtype t, uint64_t bits, svlm_err *err) {
    svlm_status st = begin_kv(w, key, t, err);
    if (st) return st;
    if (buf_le(&w->kv, bits, (int)gguf_vtype_size(t))) return oom(w, err);
    return SVLM_OK;
}

svlm_status gguf_writer_set_u8(gguf_writer *w, const char *k, uint8_t v, svlm_err *e) {
    return set_scalar(w, k, GGUF_UINT8, v, e);
}
svlm_status gguf_writer_set_i8(gguf_writer *w, const char *k, int8_t v, svlm_err *e) {
    return set_scalar(w, k, GGUF_INT8, (uint8_t)v, e);
}
svlm_status gguf_writer_set_u16(gguf_writer *w, const char *k, uint16_t v, svlm_err *e) {
    return set_scalar(w, k, GGUF_UINT16, v, e);
}
svlm_status gguf_writer_set_i16(gguf_writer *w, const char *k, int16_t v, svlm_err *e) {
    return set_scalar(w, k, GGUF_INT16, (uint16_t)v, e);
}
svlm_status gguf_writer_set_u32(gguf_writer *w, const char *k, uint32_t v, svlm_err *e) {
    return set_scalar(w, k, GGUF_UINT32, v, e);
}
svlm_status gguf_writer_set_i32(gguf_writer *w, const char *k, int32_t v, svlm_err *e) {
    return set_scalar(w, k, GGUF_INT32, (uint32_t)v, e);
}
svlm_status gguf_writer_set_u64(gguf_writer *w, const char *k, uint64_t v, svlm_err *e) {
    return set_scalar(w, k, GGUF_UINT64, v, e);
}
svlm_status gguf_writer_set_i64(gguf_writer *w, const char *k, int64_t v, svlm_err *e) {
    return set_scalar(w, k, GGUF_INT64, (uint64_t)v, e);
}
svlm_status gguf_writer_set_bool(gguf_writer *w, const char *k, int v, svlm_err *e) {
    return set_scalar(w, k, GGUF_BOOL, v ? 1 : 0, e);
}

svlm_status gguf_writer_set_f32(gguf_writer *w, const char *k, float v, svlm_err *e) {
    uint32_t bits;
    memcpy(&bits, &v, 4);
    return set_scalar(w, k, GGUF_FLOAT32, bits, e);
}

svlm_status gguf_writer_set_f64(gguf_writer *w, const char *k, double v, svlm_err *e) {
    uint64_t bits;
    memcpy(&bits, &v, 8);
    return set_scalar(w, k, GGUF_FLOAT64, bits, e);
}

svlm_status gguf_writer_set_str_n(gguf_writer *w, const char *key, const char *v, size_t len, svlm_err *err) {
    if (!v && len)
        return svlm_fail(err, SVLM_E_INVALID, "gguf writer: NULL string for '%s'", key ? key : "?");
    svlm_status st = begin_kv(w, key, GGUF_STRING, err);
    if (st) return st;
    if (buf_str(&w->kv, v, len)) return oom(w, err);
    return SVLM_OK;
}

svlm_status gguf_writer_set_str(gguf_writer *w, const char *key, const char *v, svlm_err *err) {
    if (!v) return svlm_fail(err, SVLM_E_INVALID, "gguf writer: NULL string for '%s'", key ? key : "?");
    return gguf_writer_set_str_n(w, key, v, strlen(v), err);
}

svlm_status gguf_writer_set_arr(gguf_writer *w, const char *key, gguf_vtype elem_type, const void *elems,
                                uint64_t n, svlm_err *err) {
    size_t esize = gguf_vtype_size(elem_type), total;
    if (!esize)
        return svlm_fail(err, SVLM_E_INVALID, "gguf writer: '%s': array element type %d is not a scalar",
                         key ? key : "?", (int)elem_type);
    if (n > SIZE_MAX || !svlm_mul_size((size_t)n, esize, &total))
        return svlm_fail(err, SVLM_E_INVALID, "gguf writer: '%s': array of %llu elements is too large",
                         key ? key : "?", (unsigned long long)n);
    if (!elems && n)
        return svlm_fail(err, SVLM_E_INVALID, "gguf writer: NULL array for '%s'", key ? key : "?");
    svlm_status st = begin_kv(w, key, GGUF_ARRAY, err);
    if (st) return st;
    /* Stored little-endian; the host is assumed little-endian as everywhere in svlm. */
    if (buf_le(&w->kv, (uint64_t)elem_type, 4) || buf_le(&w->kv, n, 8) || buf_put(&w->kv, elems, total))
        return oom(w, err);
    return SVLM_OK;
}

/* The string arrays' common part: strs[i] (NUL-terminated) or, without strs, lens[i] (ptr, len). */
static svlm_status set_arr_str(gguf_writer *w, const char *key, const char *const *strs, const gguf_str *lens,
                               uint64_t n, svlm_err *err) {
    for (uint64_t i = 0; i < n; i++)
        if (strs ? !strs[i] : (!lens[i].ptr && lens[i].len))
            return svlm_fail(err, SVLM_E_INVALID, "gguf writer: '%s': string %llu is NULL", key ? key : "?",
                             (unsigned long long)i);
    svlm_status st = begin_kv(w, key, GGUF_ARRAY, err);
    if (st) return st;
    int bad = buf_le(&w->kv, GGUF_STRING, 4) || buf_le(&w->kv, n, 8);
    for (uint64_t i = 0; i < n && !bad; i++)
        bad = strs ? buf_str(&w->kv, strs[i], strlen(strs[i]))
                   : lens[i].len > SIZE_MAX || buf_str(&w->kv, lens[i].ptr, (size_t)lens[i].len);
    if (bad) return oom(w, err);
    return SVLM_OK;
}

svlm_status gguf_writer_set_arr_str(gguf_writer *w, const char *key, const char *const *strs, uint64_t n,
                                    svlm_err *err) {
    if (!strs && n)
        return svlm_fail(err, SVLM_E_INVALID, "gguf writer: NULL array for '%s'", key ? key : "?");
    return set_arr_str(w, key, strs, NULL, n, err);
}

svlm_status gguf_writer_set_arr_str_n(gguf_writer *w, const char *key, const gguf_str *strs, uint64_t n,
                                      svlm_err *err) {
    if (!strs && n)
        return svlm_fail(err, SVLM_E_INVALID, "gguf writer: NULL array for '%s'", key ? key : "?");
    return set_arr_str(w, key, NULL, strs, n, err);
}

/* ---- tensors ---------------------------------------------------------------------------- */

size_t gguf_tensor_bytes(svlm_dtype type, int n_dims, const int64_t *ne) {
    if (n_dims < 1 || n_dims > 4 || !ne) return 0;
    size_t rows = 1;
    for (int i = 1; i < n_dims; i++) {
        if (ne[i] <= 0 || !svlm_mul_size(rows, (size_t)ne[i], &rows)) return 0;
    }
    if (ne[0] <= 0) return 0;
    size_t row = svlm_row_bytes(type, ne[0]), total;
    if (!row || !svlm_mul_size(row, rows, &total)) return 0;
    return total;
}

static uint64_t align_up(uint64_t x, uint64_t a, int *ok) {
    uint64_t r = x % a, out = x;
    if (r && !svlm_add_u64(x, a - r, &out)) *ok = 0;
    return out;
}

svlm_status gguf_writer_add_tensor(gguf_writer *w, const char *name, svlm_dtype type, int n_dims,
                                   const int64_t *ne, svlm_err *err) {
    if (!w || !name || !ne) return svlm_fail(err, SVLM_E_INVALID, "gguf writer: NULL argument");
    if (w->failed) return svlm_fail(err, SVLM_E_INVALID, "gguf writer: an earlier call failed");
    if (w->header_written)
        return svlm_fail(err, SVLM_E_INVALID, "gguf writer: tensor '%s' added after tensor data began", name);
    size_t len = strlen(name);
    if (len == 0 || len > GGUF_MAX_NAME)
        return svlm_fail(err, SVLM_E_INVALID, "gguf writer: tensor name '%s' must have 1 to %d bytes", name,
                         GGUF_MAX_NAME);
    if (n_dims < 1 || n_dims > 4)
        return svlm_fail(err, SVLM_E_INVALID, "gguf writer: tensor '%s' has %d dims (1 to 4 allowed)", name,
                         n_dims);
    const svlm_dtype_info *ti = svlm_dtype_get((int)type);
    if (!ti || !ti->name)
        return svlm_fail(err, SVLM_E_INVALID, "gguf writer: tensor '%s' has unknown type %d", name,
                         (int)type);
    size_t nbytes = gguf_tensor_bytes(type, n_dims, ne);
    if (!nbytes)
        return svlm_fail(
            err, SVLM_E_INVALID,
            "gguf writer: tensor '%s': shape does not fit type %s (ne[0] = %lld, block %d) or is too large",
            name, ti->name, (long long)ne[0], ti->block_size);
    for (uint64_t i = 0; i < w->n_tensors; i++)
        if (!strcmp(w->tensors[i].name, name))
            return svlm_fail(err, SVLM_E_INVALID, "gguf writer: tensor '%s' added twice", name);
    if (w->n_tensors == w->cap_tensors) {
        uint64_t cap = w->cap_tensors ? w->cap_tensors * 2 : 64;
        tensor_info *t = realloc(w->tensors, (size_t)cap * sizeof *t);
        if (!t) return svlm_fail(err, SVLM_E_NOMEM, "gguf writer: out of memory");
        w->tensors = t;
        w->cap_tensors = cap;
    }
    int ok = 1;
    uint64_t end;
    uint64_t offset = w->data_size;
    if (!svlm_add_u64(offset, nbytes, &end)) ok = 0;
    end = align_up(end, w->alignment, &ok);
    if (!ok)
        return svlm_fail(err, SVLM_E_INVALID, "gguf writer: tensor data exceeds 2^64 bytes at '%s'", name);
    tensor_info *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    if (!(t->name = strdup(name))) return svlm_fail(err, SVLM_E_NOMEM, "gguf writer: out of memory");
    t->type = type;
    t->n_dims = n_dims;
    for (int i = 0; i < 4; i++)
        t->ne[i] = i < n_dims ? ne[i] : 1;
    t->offset = offset;
    t->nbytes = nbytes;
    w->data_size = end;
    w->n_tensors++;
    return SVLM_OK;
}

/* ---- file output ------------------------------------------------------------------------ */

static svlm_status io_fail(gguf_writer *w, svlm_err *err, const char *what) {
    w->failed = 1;
    return svlm_fail(err, SVLM_E_IO, "gguf writer: %s '%s': %s", what, w->tmp_path, strerror(errno));
}

static svlm_status put_file(gguf_writer *w, const void *p, size_t n, svlm_err *err) {
    if (n && fwrite(p, 1, n, w->f) != n) return io_fail(w, err, "cannot write");
    return SVLM_OK;
}

static svlm_status put_zeros(gguf_writer *w, uint64_t n, svlm_err *err) {
    static const uint8_t zeros[256];
    while (n) {
        size_t k = n < sizeof zeros ? (size_t)n : sizeof zeros;
        svlm_status st = put_file(w, zeros, k, err);
        if (st) return st;
        n -= k;
    }
    return SVLM_OK;
}

static svlm_status write_header(gguf_writer *w, svlm_err *err) {
    byte_buf head = {0};
    int bad = buf_put(&head, GGUF_MAGIC, 4) || buf_le(&head, GGUF_VERSION, 4) ||
              buf_le(&head, w->n_tensors, 8) || buf_le(&head, w->n_kv, 8) ||
              buf_put(&head, w->kv.p, w->kv.len);
    for (uint64_t i = 0; i < w->n_tensors && !bad; i++) {
        const tensor_info *t = &w->tensors[i];
        bad = buf_str(&head, t->name, strlen(t->name)) || buf_le(&head, (uint64_t)t->n_dims, 4);
        for (int d = 0; d < t->n_dims && !bad; d++)
            bad = buf_le(&head, (uint64_t)t->ne[d], 8);
        bad = bad || buf_le(&head, (uint64_t)t->type, 4) || buf_le(&head, t->offset, 8);
    }
    if (bad) {
        free(head.p);
        w->failed = 1;
        return svlm_fail(err, SVLM_E_NOMEM, "gguf writer: out of memory building the header");
    }
    int ok = 1;
    uint64_t padded = align_up(head.len, w->alignment, &ok);
    svlm_status st = put_file(w, head.p, head.len, err);
    if (!st) st = put_zeros(w, padded - head.len, err);
    free(head.p);
    w->header_written = 1;
    return st;
}

/* Zero padding after tensor cur, up to where the next one starts (or the data end). */
static svlm_status close_tensor(gguf_writer *w, svlm_err *err) {
    const tensor_info *t = &w->tensors[w->cur];
    uint64_t next = w->cur + 1 < w->n_tensors ? w->tensors[w->cur + 1].offset : w->data_size;
    svlm_status st = put_zeros(w, next - (t->offset + t->nbytes), err);
    w->cur++;
    w->cur_done = 0;
    return st;
}

svlm_status gguf_writer_write_data(gguf_writer *w, const void *data, size_t n, svlm_err *err) {
    if (!w || (!data && n)) return svlm_fail(err, SVLM_E_INVALID, "gguf writer: NULL argument");
    if (w->failed) return svlm_fail(err, SVLM_E_INVALID, "gguf writer: an earlier call failed");
    if (w->finished) return svlm_fail(err, SVLM_E_INVALID, "gguf writer: data written after finish");
    svlm_status st;
    if (!w->header_written && (st = write_header(w, err))) return st;
    const uint8_t *p = data;
    while (n) {
        if (w->cur >= w->n_tensors) {
            w->failed = 1;
            return svlm_fail(err, SVLM_E_INVALID, "gguf writer: %zu bytes of data beyond the last tensor", n);
        }
        const tensor_info *t = &w->tensors[w->cur];
        size_t left = t->nbytes - w->cur_done, k = n < left ? n : left;
        if ((st = put_file(w, p, k, err))) return st;
        p += k;
        n -= k;
        w->cur_done += k;
        if (w->cur_done == t->nbytes && (st = close_tensor(w, err))) return st;
    }
    return SVLM_OK;
}

svlm_status gguf_writer_finish(gguf_writer *w, svlm_err *err) {
    if (!w) return svlm_fail(err, SVLM_E_INVALID, "gguf writer: NULL argument");
    if (w->failed) return svlm_fail(err, SVLM_E_INVALID, "gguf writer: an earlier call failed");
    if (w->finished || !w->f) return svlm_fail(err, SVLM_E_INVALID, "gguf writer: finish called twice");
    svlm_status st;
    if (!w->header_written && (st = write_header(w, err))) return st;
    if (w->cur < w->n_tensors) {
        w->failed = 1;
        return svlm_fail(err, SVLM_E_INVALID,
                         "gguf writer: tensor '%s' got %zu of %zu bytes (%llu more tensors got none)",
                         w->tensors[w->cur].name, w->cur_done, w->tensors[w->cur].nbytes,
                         (unsigned long long)(w->n_tensors - w->cur - 1));
    }
    if (fflush(w->f) != 0) return io_fail(w, err, "cannot flush");
    FILE *f = w->f;
    w->f = NULL;
    if (fclose(f) != 0) return io_fail(w, err, "cannot close");
    if (rename(w->tmp_path, w->path) != 0) {
        w->failed = 1;
        return svlm_fail(err, SVLM_E_IO, "gguf writer: cannot rename '%s' to '%s': %s", w->tmp_path, w->path,
                         strerror(errno));
    }
    w->finished = 1;
    return SVLM_OK;
}

svlm_status gguf_writer_create(const char *path, size_t alignment, gguf_writer **out, svlm_err *err) {
    if (!out) return svlm_fail(err, SVLM_E_INVALID, "gguf writer: NULL argument");
    *out = NULL;
    if (!path || !*path) return svlm_fail(err, SVLM_E_INVALID, "gguf writer: empty path");
    if (alignment == 0) alignment = GGUF_DEFAULT_ALIGNMENT;
    if (alignment % 8 || (alignment & (alignment - 1)) || alignment > UINT32_MAX)
        return svlm_fail(err, SVLM_E_INVALID,
                         "gguf writer: alignment %zu is not a power of two multiple of 8", alignment);
    gguf_writer *w = calloc(1, sizeof *w);
    if (!w) return svlm_fail(err, SVLM_E_NOMEM, "gguf writer: out of memory");
    w->alignment = alignment;
    size_t n = strlen(path);
    w->path = strdup(path);
    w->tmp_path = malloc(n + 5);
    if (!w->path || !w->tmp_path) {
        gguf_writer_destroy(w);
        return svlm_fail(err, SVLM_E_NOMEM, "gguf writer: out of memory");
    }
    memcpy(w->tmp_path, path, n);
    memcpy(w->tmp_path + n, ".tmp", 5);
    w->f = fopen(w->tmp_path, "wb");
    if (!w->f) {
        svlm_status st =
            svlm_fail(err, SVLM_E_IO, "gguf writer: cannot create '%s': %s", w->tmp_path, strerror(errno));
        free(w->tmp_path);
        w->tmp_path = NULL; /* nothing to remove */
        gguf_writer_destroy(w);
        return st;
    }
    setvbuf(w->f, NULL, _IOFBF, 1 << 20);
    if (alignment != GGUF_DEFAULT_ALIGNMENT) {
        svlm_status st = gguf_writer_set_u32(w, "general.alignment", (uint32_t)alignment, err);
        if (st) {
            gguf_writer_destroy(w);
            return st;
        }
    }
    *out = w;
    return SVLM_OK;
}

void gguf_writer_destroy(gguf_writer *w) {
    if (!w) return;
    if (w->f) fclose(w->f);
    if (!w->finished && w->tmp_path) remove(w->tmp_path);
    for (uint64_t i = 0; i < w->n_kv; i++)
        free(w->keys[i]);
    free(w->keys);
    for (uint64_t i = 0; i < w->n_tensors; i++)
        free(w->tensors[i].name);
    free(w->tensors);
    free(w->kv.p);
    free(w->path);
    free(w->tmp_path);
    free(w);
}
