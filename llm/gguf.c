/*
 * GGUF v2/v3 reader. Every read goes through a bounds-checked cursor, and every size that
 * is derived from file contents (counts, lengths, tensor extents) is computed with
 * overflow-checked arithmetic and compared with the file size before anything is
 * allocated or dereferenced, so a malformed file yields a message, never an over-read.
 * Allocation grows with what has actually been parsed, never with a count the file claims.
 */
#include "llm/gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/checked.h"
#include "common/err.h"
#include "kernels/kernels.h"

#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_KEY_BYTES     4096 /* far beyond any real key; keeps messages sane */
#define GGUF_MAX_NAME_BYTES    64   /* the GGUF spec's limit for tensor names       */
#define GGUF_MAX_DIMS          4

/* The public struct plus lookup indexes and ownership; gguf_file* points at `pub`. */
typedef struct gguf_impl {
    gguf_file pub;
    uint64_t kv_cap, tensor_cap;
    const gguf_kv **kv_sorted;         /* by key, for gguf_find_kv           */
    const gguf_tensor **tensor_sorted; /* by name, for gguf_find_tensor      */
    int owns_map;
} gguf_impl;

typedef struct cursor {
    const uint8_t *base;
    size_t size, pos;
} cursor;

/* ---- primitive reads --------------------------------------------------------------------- */

static int has(const cursor *c, uint64_t n) {
    return n <= c->size - c->pos;
}

static uint64_t le(const uint8_t *p, int n) {
    uint64_t v = 0;
    for (int i = n - 1; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static svlm_status truncated(const cursor *c, svlm_err *err, const char *what, uint64_t need) {
    return svlm_fail(err, SVLM_E_FORMAT,
                     "%s at offset %zu needs %llu bytes but the file ends at %zu (truncated file)", what,
                     c->pos, (unsigned long long)need, c->size);
}

static svlm_status read_uint(cursor *c, int n, uint64_t *out, svlm_err *err, const char *what) {
    *out = 0;
    if (!has(c, (uint64_t)n)) return truncated(c, err, what, (uint64_t)n);
    *out = le(c->base + c->pos, n);
    c->pos += (size_t)n;
    return SVLM_OK;
}

static svlm_status read_u32(cursor *c, uint32_t *out, svlm_err *err, const char *what) {
    uint64_t v = 0;
    svlm_status st = read_uint(c, 4, &v, err, what);
    *out = (uint32_t)v;
    return st;
}

/* A gguf-string: u64 length, then that many bytes. */
static svlm_status read_str(cursor *c, gguf_str *out, svlm_err *err, const char *what) {
    uint64_t len = 0;
    size_t at = c->pos;
    svlm_status st = read_uint(c, 8, &len, err, what);
    if (st) return st;
    if (!has(c, len))
        return svlm_fail(err, SVLM_E_FORMAT,
                         "%s at offset %zu claims %llu bytes but only %zu remain before the end of the "
                         "file (size %zu)",
                         what, at, (unsigned long long)len, c->size - c->pos, c->size);
    out->ptr = (const char *)c->base + c->pos;
    out->len = len;
    c->pos += (size_t)len;
    return SVLM_OK;
}

/* Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF. */
static int utf8_valid(const uint8_t *s, uint64_t n) {
    uint64_t i = 0;
    while (i < n) {
        uint8_t b = s[i];
        int extra;
        uint32_t cp, min;
        if (b < 0x80) {
            i++;
            continue;
        }
        if ((b & 0xe0) == 0xc0) {
            extra = 1;
            cp = b & 0x1f;
            min = 0x80;
        } else if ((b & 0xf0) == 0xe0) {
            extra = 2;
            cp = b & 0x0f;
            min = 0x800;
        } else if ((b & 0xf8) == 0xf0) {
            extra = 3;
            cp = b & 0x07;
            min = 0x10000;
        } else
            return 0;
        if ((uint64_t)extra > n - i - 1) return 0;
        for (int k = 1; k <= extra; k++) {
            if ((s[i + k] & 0xc0) != 0x80) return 0;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
        i += (uint64_t)extra + 1;
    }
    return 1;
}

/* Keys and tensor names: non-empty, bounded, valid UTF-8, no NUL; returned as a C string. */
static svlm_status read_name(cursor *c, char **out, uint64_t max_len, svlm_err *err, const char *what) {
    size_t at = c->pos;
    gguf_str s = {0};
    svlm_status st = read_str(c, &s, err, what);
    if (st) return st;
    if (s.len == 0) return svlm_fail(err, SVLM_E_FORMAT, "%s at offset %zu is empty", what, at);
    if (s.len > max_len)
        return svlm_fail(err, SVLM_E_FORMAT, "%s at offset %zu is %llu bytes long (limit %llu)", what, at,
                         (unsigned long long)s.len, (unsigned long long)max_len);
    if (memchr(s.ptr, 0, (size_t)s.len))
        return svlm_fail(err, SVLM_E_FORMAT, "%s at offset %zu contains a NUL byte", what, at);
    if (!utf8_valid((const uint8_t *)s.ptr, s.len))
        return svlm_fail(err, SVLM_E_FORMAT, "%s at offset %zu is not valid UTF-8", what, at);
    *out = malloc((size_t)s.len + 1);
    if (!*out) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    memcpy(*out, s.ptr, (size_t)s.len);
    (*out)[s.len] = 0;
    return SVLM_OK;
}

/* ---- metadata values --------------------------------------------------------------------- */

const char *gguf_vtype_name(gguf_vtype t) {
    static const char *names[GGUF_VTYPE_COUNT] = {"u8",   "i8",     "u16",   "i16", "u32", "i32", "f32",
                                                  "bool", "string", "array", "u64", "i64", "f64"};
    return (unsigned)t < GGUF_VTYPE_COUNT ? names[t] : "unknown";
}

size_t gguf_vtype_size(gguf_vtype t) {
    switch (t) {
    case GGUF_UINT8:
    case GGUF_INT8:
    case GGUF_BOOL: return 1;
    case GGUF_UINT16:
    case GGUF_INT16: return 2;
    case GGUF_UINT32:
    case GGUF_INT32:
    case GGUF_FLOAT32: return 4;
    case GGUF_UINT64:
    case GGUF_INT64:
    case GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

static int vtype_is_signed(gguf_vtype t) {
    return t == GGUF_INT8 || t == GGUF_INT16 || t == GGUF_INT32 || t == GGUF_INT64;
}

static int vtype_is_int(gguf_vtype t) {
    return t == GGUF_UINT8 || t == GGUF_UINT16 || t == GGUF_UINT32 || t == GGUF_UINT64 || vtype_is_signed(t);
}

static double f32_of_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Decodes one fixed-size scalar at p into kv->v (widened). */
static void decode_scalar(gguf_vtype t, const uint8_t *p, gguf_kv *kv) {
    int n = (int)gguf_vtype_size((gguf_vtype)t);
    uint64_t raw = le(p, n);
    switch (t) {
    case GGUF_INT8: kv->v.i64 = (int8_t)raw; break;
    case GGUF_INT16: kv->v.i64 = (int16_t)raw; break;
    case GGUF_INT32: kv->v.i64 = (int32_t)raw; break;
    case GGUF_INT64: kv->v.i64 = (int64_t)raw; break;
    case GGUF_FLOAT32: kv->v.f64 = f32_of_bits((uint32_t)raw); break;
    case GGUF_FLOAT64: memcpy(&kv->v.f64, &raw, sizeof raw); break;
    case GGUF_BOOL: kv->v.b = (int)raw; break;
    default: kv->v.u64 = raw; break;
    }
}

static svlm_status read_array(cursor *c, gguf_kv *kv, svlm_err *err) {
    uint32_t et = 0;
    uint64_t n = 0;
    svlm_status st = read_u32(c, &et, err, "array element type");
    if (!st) st = read_uint(c, 8, &n, err, "array length");
    if (st) return st;
    if (et == GGUF_ARRAY)
        return svlm_fail(err, SVLM_E_UNSUPPORTED, "nested arrays (array of arrays) are not supported");
    if (et >= GGUF_VTYPE_COUNT) return svlm_fail(err, SVLM_E_FORMAT, "unknown array element type %u", et);
    kv->arr_type = (gguf_vtype)et;
    kv->arr_n = n;
    kv->data = c->base + c->pos;
    if (et != GGUF_STRING) {
        uint64_t bytes;
        if (!svlm_mul_u64(n, (uint64_t)gguf_vtype_size((gguf_vtype)et), &bytes) || !has(c, bytes))
            return svlm_fail(err, SVLM_E_FORMAT,
                             "array of %llu %s values at offset %zu runs past the end of the file (size %zu)",
                             (unsigned long long)n, gguf_vtype_name((gguf_vtype)et), c->pos, c->size);
        if (et == GGUF_BOOL)
            for (uint64_t i = 0; i < n; i++)
                if (kv->data[i] > 1)
                    return svlm_fail(err, SVLM_E_FORMAT, "bool array element %llu is %u, not 0 or 1",
                                     (unsigned long long)i, kv->data[i]);
        c->pos += (size_t)bytes;
        return SVLM_OK;
    }
    /* Every string takes at least its 8-byte length, which bounds the allocation by the file. */
    if (n > (c->size - c->pos) / 8)
        return svlm_fail(err, SVLM_E_FORMAT,
                         "array of %llu strings at offset %zu cannot fit in the %zu bytes left in the file",
                         (unsigned long long)n, c->pos, c->size - c->pos);
    gguf_str *strs = malloc((size_t)(n ? n : 1) * sizeof *strs);
    if (!strs)
        return svlm_fail(err, SVLM_E_NOMEM, "out of memory for an array of %llu strings",
                         (unsigned long long)n);
    kv->arr_strs = strs;
    for (uint64_t i = 0; i < n; i++) {
        st = read_str(c, &strs[i], err, "string");
        if (st) {
            svlm_err_prefix(err, "array element %llu of %llu", (unsigned long long)i, (unsigned long long)n);
            return st;
        }
    }
    return SVLM_OK;
}

static svlm_status read_value(cursor *c, gguf_kv *kv, svlm_err *err) {
    uint32_t t = 0;
    size_t at = c->pos;
    svlm_status st = read_u32(c, &t, err, "value type");
    if (st) return st;
    if (t >= GGUF_VTYPE_COUNT)
        return svlm_fail(err, SVLM_E_FORMAT, "unknown value type %u at offset %zu", t, at);
    kv->type = (gguf_vtype)t;
    if (t == GGUF_STRING) return read_str(c, &kv->v.str, err, "string value");
    if (t == GGUF_ARRAY) return read_array(c, kv, err);
    int n = (int)gguf_vtype_size((gguf_vtype)t);
    if (!has(c, (uint64_t)n)) return truncated(c, err, gguf_vtype_name(kv->type), (uint64_t)n);
    decode_scalar(kv->type, c->base + c->pos, kv);
    if (t == GGUF_BOOL && c->base[c->pos] > 1)
        return svlm_fail(err, SVLM_E_FORMAT, "bool value at offset %zu is %u, not 0 or 1", c->pos,
                         c->base[c->pos]);
    c->pos += (size_t)n;
    return SVLM_OK;
}

/* ---- lookup indexes ------------------------------------------------------------------------ */

static int cmp_kv(const void *a, const void *b) {
    return strcmp((*(const gguf_kv *const *)a)->key, (*(const gguf_kv *const *)b)->key);
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp((*(const gguf_tensor *const *)a)->name, (*(const gguf_tensor *const *)b)->name);
}

static int cmp_tensor_offset(const void *a, const void *b) {
    uint64_t x = (*(const gguf_tensor *const *)a)->offset, y = (*(const gguf_tensor *const *)b)->offset;
    return x < y ? -1 : x > y;
}

static svlm_status index_kvs(gguf_impl *g, svlm_err *err) {
    gguf_file *f = &g->pub;
    g->kv_sorted = malloc((size_t)(f->n_kv ? f->n_kv : 1) * sizeof *g->kv_sorted);
    if (!g->kv_sorted) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    for (uint64_t i = 0; i < f->n_kv; i++)
        g->kv_sorted[i] = &f->kv[i];
    qsort(g->kv_sorted, (size_t)f->n_kv, sizeof *g->kv_sorted, cmp_kv);
    for (uint64_t i = 1; i < f->n_kv; i++)
        if (!strcmp(g->kv_sorted[i - 1]->key, g->kv_sorted[i]->key))
            return svlm_fail(err, SVLM_E_FORMAT, "metadata key '%s' appears more than once",
                             g->kv_sorted[i]->key);
    return SVLM_OK;
}

/* Tensor names must be unique and tensor extents must not overlap. */
static svlm_status index_tensors(gguf_impl *g, svlm_err *err) {
    gguf_file *f = &g->pub;
    size_t n = (size_t)f->n_tensors;
    g->tensor_sorted = malloc((n ? n : 1) * sizeof *g->tensor_sorted);
    if (!g->tensor_sorted) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    for (size_t i = 0; i < n; i++)
        g->tensor_sorted[i] = &f->tensors[i];
    qsort(g->tensor_sorted, n, sizeof *g->tensor_sorted, cmp_tensor_offset);
    for (size_t i = 1; i < n; i++) {
        const gguf_tensor *a = g->tensor_sorted[i - 1], *b = g->tensor_sorted[i];
        if (a->offset + a->nbytes > b->offset) /* both ends were checked against the file */
            return svlm_fail(
                err, SVLM_E_FORMAT, "tensors '%s' (data [%llu, %llu)) and '%s' (data [%llu, %llu)) overlap",
                a->name, (unsigned long long)a->offset, (unsigned long long)(a->offset + a->nbytes), b->name,
                (unsigned long long)b->offset, (unsigned long long)(b->offset + b->nbytes));
    }
    qsort(g->tensor_sorted, n, sizeof *g->tensor_sorted, cmp_tensor_name);
    for (size_t i = 1; i < n; i++)
        if (!strcmp(g->tensor_sorted[i - 1]->name, g->tensor_sorted[i]->name))
            return svlm_fail(err, SVLM_E_FORMAT, "tensor name '%s' appears more than once",
                             g->tensor_sorted[i]->name);
    return SVLM_OK;
}

/* ---- header, metadata, tensor table ----------------------------------------------------------- */

/* Checks magic and version; the declared counts go to *n_kv / *n_tensors (not into f, whose
 * counts track entries actually parsed, for cleanup). */
static svlm_status read_header(cursor *c, gguf_file *f, uint64_t *n_kv, uint64_t *n_tensors, svlm_err *err) {
    if (c->size < 4 || memcmp(c->base, "GGUF", 4))
        return svlm_fail(err, SVLM_E_FORMAT, "not a GGUF file (the first 4 bytes are not 'GGUF')");
    c->pos = 4;
    uint32_t version = 0;
    svlm_status st = read_u32(c, &version, err, "GGUF version");
    if (st) return st;
    if (version == 1)
        return svlm_fail(err, SVLM_E_UNSUPPORTED,
                         "GGUF version 1 is not supported (an obsolete layout with 32-bit counts); "
                         "re-convert the model with a current llama.cpp");
    if (version == 0x02000000u || version == 0x03000000u)
        return svlm_fail(err, SVLM_E_UNSUPPORTED, "big-endian GGUF files are not supported");
    if (version != 2 && version != 3)
        return svlm_fail(err, SVLM_E_UNSUPPORTED, "unsupported GGUF version %u (svlm reads versions 2 and 3)",
                         version);
    f->version = version;
    st = read_uint(c, 8, n_tensors, err, "tensor count");
    if (!st) st = read_uint(c, 8, n_kv, err, "metadata count");
    if (st) return st;
    /* Smallest possible records: a key/value is 8+1+4+1 bytes, a tensor info 8+1+4+8+4+8. */
    uint64_t left = c->size - c->pos;
    if (*n_kv > left / 14)
        return svlm_fail(err, SVLM_E_FORMAT,
                         "metadata count %llu cannot fit in the %llu bytes after the header",
                         (unsigned long long)*n_kv, (unsigned long long)left);
    if (*n_tensors > left / 33)
        return svlm_fail(err, SVLM_E_FORMAT,
                         "tensor count %llu cannot fit in the %llu bytes after the header",
                         (unsigned long long)*n_tensors, (unsigned long long)left);
    return SVLM_OK;
}

static svlm_status grow(void **arr, uint64_t *cap, uint64_t need, size_t elem, svlm_err *err) {
    if (need <= *cap) return SVLM_OK;
    uint64_t n = *cap ? *cap * 2 : 16;
    if (n < need) n = need;
    size_t bytes;
    if (!svlm_mul_size((size_t)n, elem, &bytes)) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    void *p = realloc(*arr, bytes);
    if (!p) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    memset((char *)p + (size_t)*cap * elem, 0, (size_t)(n - *cap) * elem);
    *arr = p;
    *cap = n;
    return SVLM_OK;
}

static svlm_status read_metadata(cursor *c, gguf_impl *g, uint64_t n_kv, svlm_err *err) {
    gguf_file *f = &g->pub;
    for (uint64_t i = 0; i < n_kv; i++) {
        svlm_status st = grow((void **)&f->kv, &g->kv_cap, i + 1, sizeof *f->kv, err);
        if (st) return st;
        gguf_kv *kv = &f->kv[i];
        f->n_kv = i + 1; /* counts the entry for cleanup even when it fails half-read */
        st = read_name(c, &kv->key, GGUF_MAX_KEY_BYTES, err, "metadata key");
        if (st) {
            svlm_err_prefix(err, "metadata entry %llu of %llu", (unsigned long long)i,
                            (unsigned long long)n_kv);
            return st;
        }
        st = read_value(c, kv, err);
        if (st) {
            svlm_err_prefix(err, "metadata key '%s'", kv->key);
            return st;
        }
    }
    return SVLM_OK;
}

static svlm_status read_alignment(gguf_impl *g, svlm_err *err) {
    gguf_file *f = &g->pub;
    f->alignment = GGUF_DEFAULT_ALIGNMENT;
    const gguf_kv *kv = gguf_find_kv(f, "general.alignment");
    if (!kv) return SVLM_OK;
    if (!vtype_is_int(kv->type))
        return svlm_fail(err, SVLM_E_FORMAT, "general.alignment has type %s, expected an integer (u32)",
                         gguf_vtype_name(kv->type));
    uint64_t a = kv->v.u64;
    /* a multiple of 8, as the GGUF spec asks: tensors are read in place as floats, f16 and quant
     * blocks, and an alignment of 1 or 2 put them at addresses their loads may not use */
    if ((vtype_is_signed(kv->type) && kv->v.i64 <= 0) || a < 8 || (a & (a - 1)) || a > (1u << 30))
        return svlm_fail(err, SVLM_E_FORMAT,
                         "general.alignment %llu is not a power of two from 8 to 2^30 (GGUF's rule: tensors "
                         "are read in place)",
                         vtype_is_signed(kv->type) && kv->v.i64 < 0 ? 0ull : (unsigned long long)a);
    f->alignment = (size_t)a;
    return SVLM_OK;
}

static svlm_status read_tensor_info(cursor *c, gguf_tensor *t, svlm_err *err) {
    svlm_status st = read_name(c, &t->name, GGUF_MAX_NAME_BYTES, err, "tensor name");
    if (st) return st;
    uint32_t n_dims = 0, type = 0;
    if ((st = read_u32(c, &n_dims, err, "dimension count"))) return st;
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return svlm_fail(err, SVLM_E_FORMAT, "has %u dimensions (expected 1 to %d)", n_dims, GGUF_MAX_DIMS);
    t->n_dims = (int)n_dims;
    uint64_t elems = 1;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) {
        uint64_t ne = 1;
        if (d < (int)n_dims && (st = read_uint(c, 8, &ne, err, "dimension"))) return st;
        if (ne == 0 || ne > (uint64_t)INT64_MAX)
            return svlm_fail(err, SVLM_E_FORMAT, "dimension %d is %llu (must be 1 .. 2^63-1)", d,
                             (unsigned long long)ne);
        if (!svlm_mul_u64(elems, ne, &elems) || elems > (uint64_t)INT64_MAX)
            return svlm_fail(err, SVLM_E_FORMAT, "element count overflows 64 bits");
        t->ne[d] = (int64_t)ne;
    }
    if ((st = read_u32(c, &type, err, "tensor type"))) return st;
    const svlm_dtype_info *info = svlm_dtype_get((int)type);
    if (!info)
        return svlm_fail(err, SVLM_E_UNSUPPORTED, "has tensor type id %u, which svlm does not support", type);
    t->type = (svlm_dtype)type;
    if (t->ne[0] % info->block_size)
        return svlm_fail(err, SVLM_E_FORMAT, "row length %lld is not a multiple of the %s block size %d",
                         (long long)t->ne[0], info->name, info->block_size);
    uint64_t bytes = svlm_row_bytes(t->type, t->ne[0]);
    for (int d = 1; d < GGUF_MAX_DIMS && bytes; d++)
        if (!svlm_mul_u64(bytes, (uint64_t)t->ne[d], &bytes)) bytes = 0;
    if (!bytes || bytes > SIZE_MAX) return svlm_fail(err, SVLM_E_FORMAT, "byte size overflows");
    t->nbytes = (size_t)bytes;
    return read_uint(c, 8, &t->offset, err, "tensor data offset");
}

static svlm_status read_tensor_table(cursor *c, gguf_impl *g, uint64_t n_tensors, svlm_err *err) {
    gguf_file *f = &g->pub;
    for (uint64_t i = 0; i < n_tensors; i++) {
        svlm_status st = grow((void **)&f->tensors, &g->tensor_cap, i + 1, sizeof *f->tensors, err);
        if (st) return st;
        f->n_tensors = i + 1;
        gguf_tensor *t = &f->tensors[i];
        st = read_tensor_info(c, t, err);
        if (st) {
            if (t->name)
                svlm_err_prefix(err, "tensor '%s'", t->name);
            else
                svlm_err_prefix(err, "tensor %llu of %llu", (unsigned long long)i,
                                (unsigned long long)n_tensors);
            return st;
        }
    }
    return SVLM_OK;
}

/* Aligns the data section and checks that every tensor lies inside it, aligned. */
static svlm_status place_tensors(cursor *c, gguf_impl *g, svlm_err *err) {
    gguf_file *f = &g->pub;
    size_t a = f->alignment, pad = (a - c->pos % a) % a, data;
    if (!svlm_add_size(c->pos, pad, &data)) return svlm_fail(err, SVLM_E_FORMAT, "data offset overflows");
    if (data > c->size) {
        if (f->n_tensors)
            return svlm_fail(
                err, SVLM_E_FORMAT,
                "the tensor data section starts at offset %zu, past the end of the file (size %zu)", data,
                c->size);
        data = c->size; /* no tensors: the closing padding may be absent */
    }
    f->data_offset = data;
    uint64_t avail = c->size - data;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        gguf_tensor *t = &f->tensors[i];
        uint64_t end;
        if (t->offset % a)
            return svlm_fail(err, SVLM_E_FORMAT,
                             "tensor '%s': data offset %llu is not a multiple of the alignment %zu", t->name,
                             (unsigned long long)t->offset, a);
        if (!svlm_add_u64(t->offset, t->nbytes, &end) || end > avail)
            return svlm_fail(err, SVLM_E_FORMAT,
                             "tensor '%s': data [offset %llu, %zu bytes) runs past the end of the file "
                             "(data section of %llu bytes at file offset %zu, file size %zu)",
                             t->name, (unsigned long long)t->offset, t->nbytes, (unsigned long long)avail,
                             data, c->size);
        t->data = c->base + data + t->offset;
    }
    return SVLM_OK;
}

static svlm_status parse(gguf_impl *g, svlm_err *err) {
    gguf_file *f = &g->pub;
    cursor c = {f->map, f->size, 0};
    if (f->size < 24)
        return svlm_fail(err, SVLM_E_FORMAT, "file of %zu bytes is too small for a GGUF header (24 bytes)",
                         f->size);
    uint64_t n_kv = 0, n_tensors = 0;
    svlm_status st = read_header(&c, f, &n_kv, &n_tensors, err);
    if (st) return st;
    if ((st = read_metadata(&c, g, n_kv, err))) return st;
    if ((st = index_kvs(g, err))) return st;
    if ((st = read_alignment(g, err))) return st;
    if ((st = read_tensor_table(&c, g, n_tensors, err))) return st;
    if ((st = place_tensors(&c, g, err))) return st;
    return index_tensors(g, err);
}

/* ---- open / close -------------------------------------------------------------------------- */

static svlm_status open_impl(const void *buf, size_t size, int owns_map, const char *path, gguf_file **out,
                             svlm_err *err) {
    gguf_impl *g = calloc(1, sizeof *g);
    if (!g) {
        if (owns_map) munmap((void *)buf, size);
        return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    }
    g->pub.map = buf;
    g->pub.size = size;
    g->owns_map = owns_map;
    svlm_status st = SVLM_OK;
    if (path && !(g->pub.path = strdup(path))) st = svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    if (!st) st = parse(g, err);
    if (st) {
        gguf_close(&g->pub);
        return st;
    }
    *out = &g->pub;
    return SVLM_OK;
}

svlm_status gguf_open_buffer(const void *buf, size_t size, gguf_file **out, svlm_err *err) {
    if (!out) return svlm_fail(err, SVLM_E_INVALID, "gguf_open_buffer: out is NULL");
    *out = NULL;
    if (!buf && size) return svlm_fail(err, SVLM_E_INVALID, "gguf_open_buffer: buffer is NULL");
    return open_impl(buf ? buf : "", size, 0, NULL, out, err);
}

svlm_status gguf_open(const char *path, gguf_file **out, svlm_err *err) {
    if (!out) return svlm_fail(err, SVLM_E_INVALID, "gguf_open: out is NULL");
    *out = NULL;
    if (!path) return svlm_fail(err, SVLM_E_INVALID, "gguf_open: path is NULL");
    /* non-blocking: opening a FIFO for reading waits for a writer (for ever); it is refused below
     * as not a regular file, and a regular file's reads (mmap) do not see the flag */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) return svlm_fail(err, SVLM_E_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return svlm_fail(err, SVLM_E_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return svlm_fail(err, SVLM_E_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)sb.st_size > SIZE_MAX) {
        close(fd);
        return svlm_fail(err, SVLM_E_UNSUPPORTED, "%s: file too large to map", path);
    }
    size_t size = (size_t)sb.st_size;
    if (size < 24) {
        close(fd);
        return svlm_fail(err, SVLM_E_FORMAT,
                         "%s: file of %zu bytes is too small for a GGUF header (24 bytes)", path, size);
    }
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd); /* the mapping keeps the file */
    if (map == MAP_FAILED) return svlm_fail(err, SVLM_E_IO, "%s: mmap failed: %s", path, strerror(e));
    svlm_status st = open_impl(map, size, 1, path, out, err);
    if (st) svlm_err_prefix(err, "%s", path);
    return st;
}

void gguf_close(gguf_file *f) {
    if (!f) return;
    gguf_impl *g = (gguf_impl *)f; /* pub is the first member */
    for (uint64_t i = 0; i < f->n_kv; i++) {
        free(f->kv[i].key);
        free((void *)f->kv[i].arr_strs);
    }
    for (uint64_t i = 0; i < f->n_tensors; i++)
        free(f->tensors[i].name);
    free(f->kv);
    free(f->tensors);
    free(g->kv_sorted);
    free(g->tensor_sorted);
    free(f->path);
    svlm_kernels_forget_range(f->map, f->size); /* packed copies of its weights */
    if (g->owns_map) munmap((void *)f->map, f->size);
    free(g);
}

/* ---- lookups and typed getters --------------------------------------------------------------- */

const gguf_kv *gguf_find_kv(const gguf_file *f, const char *key) {
    const gguf_impl *g = (const gguf_impl *)f;
    if (!f || !key || !g->kv_sorted) return NULL;
    gguf_kv probe = {.key = (char *)key};
    const gguf_kv *pp = &probe;
    const gguf_kv **hit = bsearch(&pp, g->kv_sorted, (size_t)f->n_kv, sizeof *g->kv_sorted, cmp_kv);
    return hit ? *hit : NULL;
}

const gguf_tensor *gguf_find_tensor(const gguf_file *f, const char *name) {
    const gguf_impl *g = (const gguf_impl *)f;
    if (!f || !name || !g->tensor_sorted) return NULL;
    gguf_tensor probe = {.name = (char *)name};
    const gguf_tensor *pp = &probe;
    const gguf_tensor **hit =
        bsearch(&pp, g->tensor_sorted, (size_t)f->n_tensors, sizeof *g->tensor_sorted, cmp_tensor_name);
    return hit ? *hit : NULL;
}

/* An integer value as (is_negative, magnitude as u64) so callers can range-check. */
static int get_int(const gguf_file *f, const char *key, int *neg, uint64_t *mag) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv || !vtype_is_int(kv->type)) return 0;
    if (vtype_is_signed(kv->type) && kv->v.i64 < 0) {
        *neg = 1;
        *mag = (uint64_t)0 - (uint64_t)kv->v.i64;
    } else {
        *neg = 0;
        *mag = kv->v.u64;
    }
    return 1;
}

int gguf_get_u32(const gguf_file *f, const char *key, uint32_t *out) {
    int neg;
    uint64_t mag;
    if (!get_int(f, key, &neg, &mag) || neg || mag > UINT32_MAX) return 0;
    *out = (uint32_t)mag;
    return 1;
}

int gguf_get_i64(const gguf_file *f, const char *key, int64_t *out) {
    int neg;
    uint64_t mag;
    if (!get_int(f, key, &neg, &mag)) return 0;
    if (!neg && mag > (uint64_t)INT64_MAX) return 0;
    *out = neg ? (int64_t)(0 - mag) : (int64_t)mag;
    return 1;
}

int gguf_get_f32(const gguf_file *f, const char *key, float *out) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv || (kv->type != GGUF_FLOAT32 && kv->type != GGUF_FLOAT64)) return 0;
    *out = (float)kv->v.f64;
    return 1;
}

int gguf_get_bool(const gguf_file *f, const char *key, int *out) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv || kv->type != GGUF_BOOL) return 0;
    *out = kv->v.b;
    return 1;
}

char *gguf_get_str_dup(const gguf_file *f, const char *key) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    if (!kv || kv->type != GGUF_STRING || kv->v.str.len >= SIZE_MAX) return NULL;
    char *s = malloc((size_t)kv->v.str.len + 1);
    if (!s) return NULL;
    memcpy(s, kv->v.str.ptr, (size_t)kv->v.str.len);
    s[kv->v.str.len] = 0;
    return s;
}

const gguf_kv *gguf_get_arr(const gguf_file *f, const char *key, gguf_vtype elem_type) {
    const gguf_kv *kv = gguf_find_kv(f, key);
    return kv && kv->type == GGUF_ARRAY && kv->arr_type == elem_type ? kv : NULL;
}
