/*
 * GGUF reader: small files built byte by byte here parse to exactly what was written;
 * a corpus of malformed variants (truncations, huge counts and lengths, bad tensor
 * extents, unknown types, invalid strings, duplicates) is each rejected with a message
 * naming the problem; random corruption never crashes (run under ASan/UBSan to see that);
 * and the shared stories260K and vocab files show their known contents.
 * Every parse of a corpus file goes through an exactly-sized heap copy so that ASan sees
 * any read past its end.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "llm/gguf.h"
#include "test.h"

/* ---- a tiny little-endian byte builder -------------------------------------------------------- */

typedef struct {
    uint8_t *p;
    size_t n, cap;
} bytes;

static void put(bytes *b, const void *src, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        REQUIRE(b->p, "out of memory");
    }
    if (n) memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void put_le(bytes *b, uint64_t v, int n) {
    for (int i = 0; i < n; i++) {
        uint8_t c = (uint8_t)(v >> (8 * i));
        put(b, &c, 1);
    }
}
static void put_u8(bytes *b, uint8_t v) {
    put_le(b, v, 1);
}
static void put_u32(bytes *b, uint32_t v) {
    put_le(b, v, 4);
}
static void put_u64(bytes *b, uint64_t v) {
    put_le(b, v, 8);
}
static void put_f32(bytes *b, float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    put_u32(b, u);
}
static void put_strn(bytes *b, const char *s, size_t n) {
    put_u64(b, n);
    put(b, s, n);
}
static void put_str(bytes *b, const char *s) {
    put_strn(b, s, strlen(s));
}
static void kv_head(bytes *b, const char *key, uint32_t type) {
    put_str(b, key);
    put_u32(b, type);
}
static void kv_u32(bytes *b, const char *key, uint32_t v) {
    kv_head(b, key, GGUF_UINT32);
    put_u32(b, v);
}
static void kv_str(bytes *b, const char *key, const char *v) {
    kv_head(b, key, GGUF_STRING);
    put_str(b, v);
}
static void bytes_free(bytes *b) {
    free(b->p);
}

typedef struct {
    const char *name;
    uint32_t n_dims;
    uint64_t ne[4];
    uint32_t type;
    uint64_t offset;
} tinfo;

static void put_tensor(bytes *b, const tinfo *t) {
    put_str(b, t->name);
    put_u32(b, t->n_dims);
    for (uint32_t d = 0; d < t->n_dims && d < 4; d++)
        put_u64(b, t->ne[d]);
    put_u32(b, t->type);
    put_u64(b, t->offset);
}

/* A whole file: header, the given metadata section, tensor infos, padding, data_len bytes. */
static bytes make_gguf(uint32_t version, uint64_t n_kv, const bytes *kvs, uint64_t n_t, const tinfo *ts,
                       size_t alignment, size_t data_len) {
    bytes b = {0};
    put(&b, "GGUF", 4);
    put_u32(&b, version);
    put_u64(&b, n_t);
    put_u64(&b, n_kv);
    if (kvs) put(&b, kvs->p, kvs->n);
    for (uint64_t i = 0; i < n_t; i++)
        put_tensor(&b, &ts[i]);
    while (b.n % alignment)
        put_u8(&b, 0);
    for (size_t i = 0; i < data_len; i++)
        put_u8(&b, (uint8_t)(i * 7 + 1));
    return b;
}

/* ---- open helpers ------------------------------------------------------------------------------ */

/* Opens an exactly-sized heap copy of b[0..n) so ASan sees any over-read. */
static svlm_status open_copy(const uint8_t *p, size_t n, gguf_file **f, svlm_err *err, uint8_t **copy) {
    *copy = malloc(n ? n : 1);
    REQUIRE(*copy, "out of memory");
    if (n) memcpy(*copy, p, n);
    return gguf_open_buffer(*copy, n, f, err);
}

static void expect_reject_n(const uint8_t *p, size_t n, const char *what, const char *needle) {
    gguf_file *f = (gguf_file *)1;
    svlm_err err = {0};
    uint8_t *copy;
    svlm_status st = open_copy(p, n, &f, &err, &copy);
    CHECK(st != SVLM_OK, "%s: accepted", what);
    CHECK(f == NULL, "%s: out handle not NULL on failure", what);
    CHECK(err.msg[0] != 0, "%s: empty error message", what);
    if (needle)
        CHECK(strstr(err.msg, needle) != NULL, "%s: message '%s' does not mention '%s'", what, err.msg,
              needle);
    if (st == SVLM_OK) gguf_close(f);
    free(copy);
}

static void expect_reject(bytes *b, const char *what, const char *needle) {
    expect_reject_n(b->p, b->n, what, needle);
    bytes_free(b);
}

static gguf_file *expect_accept(const bytes *b, uint8_t **copy, const char *what) {
    gguf_file *f = NULL;
    svlm_err err = {0};
    svlm_status st = open_copy(b->p, b->n, &f, &err, copy);
    CHECK(st == SVLM_OK, "%s: rejected: %s", what, err.msg);
    return st == SVLM_OK ? f : NULL;
}

/* ---- a valid file with every value type ---------------------------------------------------------- */

static const int32_t arr_i32[] = {-3, 0, 7, 2147483647};
static const float arr_f32[] = {0.5f, -1.25f, 3e9f};
static const char *arr_strs[] = {"<unk>", "", "\xe2\x96\x81the", "a\"b"};

static uint64_t full_kvs(bytes *k) {
    kv_str(k, "general.architecture", "llama");
    kv_head(k, "t.u8", GGUF_UINT8);
    put_u8(k, 200);
    kv_head(k, "t.i8", GGUF_INT8);
    put_u8(k, 0x80); /* -128 */
    kv_head(k, "t.u16", GGUF_UINT16);
    put_le(k, 65535, 2);
    kv_head(k, "t.i16", GGUF_INT16);
    put_le(k, 0xfffe, 2); /* -2 */
    kv_u32(k, "t.u32", 4000000000u);
    kv_head(k, "t.i32", GGUF_INT32);
    put_u32(k, (uint32_t)-5);
    kv_head(k, "t.f32", GGUF_FLOAT32);
    put_f32(k, 1e-5f);
    kv_head(k, "t.bool", GGUF_BOOL);
    put_u8(k, 1);
    kv_head(k, "t.u64", GGUF_UINT64);
    put_u64(k, UINT64_MAX);
    kv_head(k, "t.i64", GGUF_INT64);
    put_u64(k, (uint64_t)INT64_MIN);
    kv_head(k, "t.f64", GGUF_FLOAT64);
    double d = -2.5e-300;
    uint64_t du;
    memcpy(&du, &d, 8);
    put_u64(k, du);
    kv_head(k, "t.arr_i32", GGUF_ARRAY);
    put_u32(k, GGUF_INT32);
    put_u64(k, 4);
    for (int i = 0; i < 4; i++)
        put_u32(k, (uint32_t)arr_i32[i]);
    kv_head(k, "t.arr_f32", GGUF_ARRAY);
    put_u32(k, GGUF_FLOAT32);
    put_u64(k, 3);
    for (int i = 0; i < 3; i++)
        put_f32(k, arr_f32[i]);
    kv_head(k, "t.arr_str", GGUF_ARRAY);
    put_u32(k, GGUF_STRING);
    put_u64(k, 4);
    for (int i = 0; i < 4; i++)
        put_str(k, arr_strs[i]);
    kv_head(k, "t.arr_empty", GGUF_ARRAY);
    put_u32(k, GGUF_UINT8);
    put_u64(k, 0);
    kv_head(k, "t.arr_bool", GGUF_ARRAY);
    put_u32(k, GGUF_BOOL);
    put_u64(k, 2);
    put_u8(k, 0);
    put_u8(k, 1);
    kv_str(k, "t.str_nul", "x"); /* overwritten below with an embedded NUL in the value */
    k->p[k->n - 1] = 0;          /* values may hold NULs; only keys and names may not */
    return 18;
}

/* f32 [4,2] (32 B) at 0, q8_0 [32] (34 B) at 32, q4_K [256,2] (288 B) at 96, f16 [3] at 384. */
static const tinfo valid_tensors[] = {
    {"a", 2, {4, 2}, SVLM_F32, 0},
    {"blk.0.b", 1, {32}, SVLM_Q8_0, 32},
    {"c", 2, {256, 2}, SVLM_Q4_K, 96},
    {"d.\xc3\xa9", 1, {3}, SVLM_F16, 384},
};
#define VALID_DATA_LEN (384 + 6)

static bytes valid_file(void) {
    bytes k = {0};
    uint64_t n_kv = full_kvs(&k);
    bytes b = make_gguf(3, n_kv, &k, 4, valid_tensors, 32, VALID_DATA_LEN);
    bytes_free(&k);
    return b;
}

static void test_valid(void) {
    bytes b = valid_file();
    uint8_t *copy;
    gguf_file *f = expect_accept(&b, &copy, "valid file");
    REQUIRE(f, "cannot continue");
    CHECK(f->version == 3 && f->n_kv == 18 && f->n_tensors == 4, "header %u %llu %llu", f->version,
          (unsigned long long)f->n_kv, (unsigned long long)f->n_tensors);
    CHECK(f->alignment == 32, "default alignment %zu", f->alignment);
    CHECK(f->data_offset % 32 == 0 && f->data_offset + VALID_DATA_LEN == b.n, "data offset %zu",
          f->data_offset);

    char *arch = gguf_get_str_dup(f, "general.architecture");
    CHECK(arch && !strcmp(arch, "llama"), "architecture '%s'", arch ? arch : "(null)");
    free(arch);
    uint32_t u32 = 0;
    int64_t i64 = 0;
    float f32 = 0;
    int bv = 0;
    CHECK(gguf_get_u32(f, "t.u8", &u32) && u32 == 200, "u8 %u", u32);
    CHECK(gguf_get_i64(f, "t.i8", &i64) && i64 == -128, "i8 %lld", (long long)i64);
    CHECK(!gguf_get_u32(f, "t.i8", &u32), "negative i8 read as u32");
    CHECK(gguf_get_u32(f, "t.u16", &u32) && u32 == 65535, "u16 %u", u32);
    CHECK(gguf_get_i64(f, "t.i16", &i64) && i64 == -2, "i16 %lld", (long long)i64);
    CHECK(gguf_get_u32(f, "t.u32", &u32) && u32 == 4000000000u, "u32 %u", u32);
    CHECK(gguf_get_i64(f, "t.i32", &i64) && i64 == -5, "i32 %lld", (long long)i64);
    CHECK(gguf_get_f32(f, "t.f32", &f32) && f32 == 1e-5f, "f32 %g", f32);
    CHECK(gguf_get_bool(f, "t.bool", &bv) && bv == 1, "bool %d", bv);
    CHECK(!gguf_get_i64(f, "t.u64", &i64), "u64 max read as i64");
    CHECK(!gguf_get_u32(f, "t.u64", &u32), "u64 max read as u32");
    CHECK(gguf_find_kv(f, "t.u64")->v.u64 == UINT64_MAX, "u64 value");
    CHECK(gguf_get_i64(f, "t.i64", &i64) && i64 == INT64_MIN, "i64 %lld", (long long)i64);
    CHECK(gguf_get_f32(f, "t.f64", &f32) && gguf_find_kv(f, "t.f64")->v.f64 == -2.5e-300, "f64");
    CHECK(!gguf_get_f32(f, "t.u32", &f32) && !gguf_get_bool(f, "t.u8", &bv),
          "type-mismatched getters succeed");
    CHECK(!gguf_get_u32(f, "missing.key", &u32) && !gguf_find_kv(f, "missing.key"), "missing key found");
    const gguf_kv *nul = gguf_find_kv(f, "t.str_nul");
    CHECK(nul && nul->type == GGUF_STRING && nul->v.str.len == 1 && nul->v.str.ptr[0] == 0,
          "string with NUL");

    const gguf_kv *ai = gguf_get_arr(f, "t.arr_i32", GGUF_INT32);
    CHECK(ai && ai->arr_n == 4, "i32 array");
    for (int i = 0; ai && i < 4; i++) {
        int32_t v;
        memcpy(&v, ai->data + 4 * i, 4);
        CHECK(v == arr_i32[i], "arr_i32[%d] = %d", i, v);
    }
    CHECK(!gguf_get_arr(f, "t.arr_i32", GGUF_UINT32), "array element type not checked");
    const gguf_kv *af = gguf_get_arr(f, "t.arr_f32", GGUF_FLOAT32);
    CHECK(af && af->arr_n == 3, "f32 array");
    for (int i = 0; af && i < 3; i++) {
        float v;
        memcpy(&v, af->data + 4 * i, 4);
        CHECK(v == arr_f32[i], "arr_f32[%d] = %g", i, v);
    }
    const gguf_kv *as = gguf_get_arr(f, "t.arr_str", GGUF_STRING);
    CHECK(as && as->arr_n == 4 && as->arr_strs, "string array");
    for (int i = 0; as && i < 4; i++)
        CHECK(as->arr_strs[i].len == strlen(arr_strs[i]) &&
                  !memcmp(as->arr_strs[i].ptr, arr_strs[i], strlen(arr_strs[i])),
              "arr_str[%d]", i);
    const gguf_kv *ae = gguf_get_arr(f, "t.arr_empty", GGUF_UINT8);
    CHECK(ae && ae->arr_n == 0, "empty array");
    const gguf_kv *ab = gguf_get_arr(f, "t.arr_bool", GGUF_BOOL);
    CHECK(ab && ab->arr_n == 2 && ab->data[0] == 0 && ab->data[1] == 1, "bool array");

    /* Tensors: shapes, types, sizes, and data pointers at data_offset + offset. */
    const size_t want_bytes[] = {32, 34, 288, 6};
    for (int i = 0; i < 4; i++) {
        const tinfo *w = &valid_tensors[i];
        const gguf_tensor *t = gguf_find_tensor(f, w->name);
        REQUIRE(t, "tensor %s missing", w->name);
        CHECK(t == &f->tensors[i], "tensor %s is not entry %d", w->name, i);
        CHECK(t->type == (svlm_dtype)w->type && t->n_dims == (int)w->n_dims, "tensor %s type/dims", w->name);
        for (int d = 0; d < 4; d++)
            CHECK(t->ne[d] == (d < (int)w->n_dims ? (int64_t)w->ne[d] : 1), "tensor %s ne[%d]=%lld", w->name,
                  d, (long long)t->ne[d]);
        CHECK(t->nbytes == want_bytes[i], "tensor %s nbytes %zu", w->name, t->nbytes);
        CHECK(t->offset == w->offset, "tensor %s offset", w->name);
        CHECK((const uint8_t *)t->data == copy + f->data_offset + w->offset, "tensor %s data pointer",
              w->name);
        CHECK(((const uint8_t *)t->data)[0] == (uint8_t)(w->offset * 7 + 1), "tensor %s first byte", w->name);
    }
    CHECK(!gguf_find_tensor(f, "nope"), "missing tensor found");
    gguf_close(f);
    free(copy);

    /* Version 2 has the same layout. */
    b.p[4] = 2;
    f = expect_accept(&b, &copy, "version 2 file");
    CHECK(f && f->version == 2, "version 2");
    gguf_close(f);
    free(copy);
    bytes_free(&b);
}

static void test_alignment(void) {
    /* general.alignment = 64: the data section and the tensor offsets follow it. */
    bytes k = {0};
    kv_u32(&k, "general.alignment", 64);
    kv_str(&k, "general.name", "abc"); /* makes the header length not a multiple of 64 */
    tinfo ts[] = {{"x", 1, {3}, SVLM_F32, 0}, {"y", 1, {5}, SVLM_F32, 64}};
    bytes b = make_gguf(3, 2, &k, 2, ts, 64, 64 + 20);
    uint8_t *copy;
    gguf_file *f = expect_accept(&b, &copy, "alignment 64");
    if (f) {
        CHECK(f->alignment == 64 && f->data_offset % 64 == 0, "alignment %zu data %zu", f->alignment,
              f->data_offset);
        CHECK(gguf_find_tensor(f, "y")->data == copy + f->data_offset + 64, "aligned tensor pointer");
        gguf_close(f);
    }
    free(copy);
    bytes_free(&b);

    /* An offset aligned to 32 but not to the declared 64. */
    tinfo mis[] = {{"x", 1, {3}, SVLM_F32, 0}, {"y", 1, {5}, SVLM_F32, 32}};
    b = make_gguf(3, 2, &k, 2, mis, 64, 64);
    expect_reject(&b, "offset misaligned for general.alignment", "alignment");
    bytes_free(&k);

    /* 1, 2 and 4: powers of two, but tensors read in place as f32, f16 or quant blocks need 8 (the
     * spec's rule; an alignment of 1 made the first decode load a float from an odd address) */
    const uint32_t bad_alignments[] = {0, 48, 3, 1, 2, 4};
    for (int i = 0; i < 6; i++) {
        k = (bytes){0};
        kv_u32(&k, "general.alignment", bad_alignments[i]);
        b = make_gguf(3, 1, &k, 0, NULL, 32, 0);
        expect_reject(&b, "bad general.alignment", "general.alignment");
        bytes_free(&k);
    }
    k = (bytes){0};
    kv_str(&k, "general.alignment", "32");
    b = make_gguf(3, 1, &k, 0, NULL, 32, 0);
    expect_reject(&b, "string general.alignment", "general.alignment");
    bytes_free(&k);
}

/* ---- the malformed corpus -------------------------------------------------------------------------- */

static void test_truncation(void) {
    bytes b = valid_file();
    for (size_t n = 0; n < b.n; n++) {
        char what[128];
        snprintf(what, sizeof what, "valid file truncated to %zu of %zu bytes", n, b.n);
        expect_reject_n(b.p, n, what, NULL);
    }
    bytes_free(&b);
}

/* One file with a single metadata entry whose bytes are given. */
static void reject_kv(const bytes *kv, const char *what, const char *needle) {
    bytes b = make_gguf(3, 1, kv, 0, NULL, 32, 0);
    expect_reject(&b, what, needle);
}

static void test_bad_header(void) {
    bytes b = valid_file();
    memcpy(b.p, "GGUG", 4);
    expect_reject(&b, "bad magic", "not a GGUF file");
    b = valid_file();
    b.p[4] = 1;
    expect_reject(&b, "version 1", "version 1");
    b = valid_file();
    b.p[4] = 4;
    expect_reject(&b, "version 4", "version 4");
    b = valid_file();
    b.p[4] = 0;
    b.p[7] = 3;
    expect_reject(&b, "big-endian", "big-endian");

    /* Counts that cannot fit in the file. */
    const uint64_t huge[] = {UINT64_MAX, (uint64_t)1 << 63, 1u << 20, 19};
    for (int i = 0; i < 4; i++) {
        b = valid_file();
        for (int j = 0; j < 8; j++)
            b.p[16 + j] = (uint8_t)(huge[i] >> (8 * j)); /* n_kv */
        expect_reject(&b, "huge metadata count", i < 3 ? "metadata count" : NULL);
        b = valid_file();
        for (int j = 0; j < 8; j++)
            b.p[8 + j] = (uint8_t)(huge[i] >> (8 * j)); /* n_tensors */
        expect_reject(&b, "huge tensor count", i < 3 ? "tensor count" : NULL);
    }
}

static void test_bad_metadata(void) {
    bytes k = {0};
    /* Lengths. */
    put_u64(&k, UINT64_MAX);
    put(&k, "abcdefgh", 8);
    reject_kv(&k, "key length 2^64-1", "claims");
    bytes_free(&k);
    k = (bytes){0};
    put_u64(&k, 100);
    put(&k, "abcdefghijklmnop", 16);
    reject_kv(&k, "key length past EOF", "claims");
    bytes_free(&k);
    k = (bytes){0};
    kv_head(&k, "s", GGUF_STRING);
    put_u64(&k, (uint64_t)1 << 62);
    put(&k, "abcdefgh", 8);
    reject_kv(&k, "string value length 2^62", "claims");
    bytes_free(&k);

    /* Arrays: element count × size overflowing, past EOF, string counts, nesting, types. */
    const uint64_t counts[] = {UINT64_MAX, (uint64_t)1 << 62, (uint64_t)1 << 61, 1000};
    for (int i = 0; i < 4; i++) {
        k = (bytes){0};
        kv_head(&k, "a", GGUF_ARRAY);
        put_u32(&k, GGUF_UINT32);
        put_u64(&k, counts[i]);
        put_u32(&k, 1);
        reject_kv(&k, "u32 array count too large", "runs past the end");
        bytes_free(&k);
        k = (bytes){0};
        kv_head(&k, "a", GGUF_ARRAY);
        put_u32(&k, GGUF_STRING);
        put_u64(&k, counts[i]);
        put_str(&k, "x");
        reject_kv(&k, "string array count too large", "strings");
        bytes_free(&k);
    }
    k = (bytes){0};
    kv_head(&k, "a", GGUF_ARRAY);
    put_u32(&k, GGUF_STRING);
    put_u64(&k, 2);
    put_str(&k, "ok");
    put_u64(&k, 1000); /* second string runs past the end */
    put(&k, "abcdefghijklmnopqrstuvwxyz", 26);
    reject_kv(&k, "string in array past EOF", "array element 1");
    bytes_free(&k);
    k = (bytes){0};
    kv_head(&k, "a", GGUF_ARRAY);
    put_u32(&k, GGUF_ARRAY);
    put_u64(&k, 1);
    put_u32(&k, GGUF_UINT8);
    put_u64(&k, 1);
    put_u8(&k, 0);
    reject_kv(&k, "nested array", "nested");
    bytes_free(&k);
    const uint32_t bad_types[] = {13, 255, 0xffffffffu};
    for (int i = 0; i < 3; i++) {
        k = (bytes){0};
        kv_head(&k, "v", bad_types[i]);
        put_u64(&k, 0);
        reject_kv(&k, "unknown value type", "unknown value type");
        bytes_free(&k);
        k = (bytes){0};
        kv_head(&k, "a", GGUF_ARRAY);
        put_u32(&k, bad_types[i]);
        put_u64(&k, 0);
        reject_kv(&k, "unknown array element type", "unknown array element type");
        bytes_free(&k);
    }
    k = (bytes){0};
    kv_head(&k, "b", GGUF_BOOL);
    put_u8(&k, 2);
    reject_kv(&k, "bool 2", "not 0 or 1");
    bytes_free(&k);

    /* Keys: invalid UTF-8 in several ways, NUL, empty, too long, duplicated. */
    const char *bad_keys[] = {"bad\xff", "over\xc0\x80long", "surr\xed\xa0\x80", "cut\xe2\x96",
                              "big\xf4\x90\x80\x80"};
    for (int i = 0; i < 5; i++) {
        k = (bytes){0};
        kv_u32(&k, bad_keys[i], 1);
        reject_kv(&k, "invalid UTF-8 key", "UTF-8");
        bytes_free(&k);
    }
    k = (bytes){0};
    put_strn(&k, "a\0b", 3);
    put_u32(&k, GGUF_UINT8);
    put_u8(&k, 1);
    reject_kv(&k, "key with NUL", "NUL");
    bytes_free(&k);
    k = (bytes){0};
    kv_u32(&k, "", 1);
    reject_kv(&k, "empty key", "empty");
    bytes_free(&k);
    k = (bytes){0};
    char *longkey = malloc(5000);
    REQUIRE(longkey, "oom");
    memset(longkey, 'k', 4999);
    longkey[4999] = 0;
    kv_u32(&k, longkey, 1);
    free(longkey);
    reject_kv(&k, "5000-byte key", "limit");
    bytes_free(&k);
    k = (bytes){0};
    kv_u32(&k, "general.dup", 1);
    kv_str(&k, "general.other", "x");
    kv_u32(&k, "general.dup", 2);
    bytes b = make_gguf(3, 3, &k, 0, NULL, 32, 0);
    expect_reject(&b, "duplicate key", "general.dup");
    bytes_free(&k);
}

/* A file with the given tensor table and enough data for the largest valid extent. */
static void reject_tensors(const tinfo *ts, int n, size_t data_len, const char *what, const char *needle) {
    bytes b = make_gguf(3, 0, NULL, (uint64_t)n, ts, 32, data_len);
    expect_reject(&b, what, needle);
}

static void test_bad_tensors(void) {
    /* Extents. */
    tinfo past[] = {{"blk.3.attn_q.weight", 2, {4, 4}, SVLM_F32, 32}}; /* 64 B at 32, data 64 */
    reject_tensors(past, 1, 64, "tensor past EOF", "runs past the end of the file");
    tinfo wrap[] = {{"w", 1, {8}, SVLM_F32, UINT64_MAX - 31}};
    reject_tensors(wrap, 1, 64, "offset + size wraps", "runs past the end");
    tinfo far[] = {{"w", 1, {8}, SVLM_F32, (uint64_t)1 << 40}};
    reject_tensors(far, 1, 64, "offset 2^40", "runs past the end");
    tinfo overlap[] = {{"a", 1, {16}, SVLM_F32, 0}, {"b", 1, {8}, SVLM_F32, 32}};
    reject_tensors(overlap, 2, 64, "overlapping tensors", "overlap");
    tinfo same[] = {{"a", 1, {8}, SVLM_F32, 0}, {"b", 1, {8}, SVLM_F32, 64}, {"c", 1, {8}, SVLM_F32, 0}};
    reject_tensors(same, 3, 96, "tensors at the same offset", "overlap");
    tinfo misaligned[] = {{"a", 1, {8}, SVLM_F32, 4}};
    reject_tensors(misaligned, 1, 64, "misaligned offset", "alignment");
    tinfo dup[] = {{"a", 1, {8}, SVLM_F32, 0}, {"a", 1, {8}, SVLM_F32, 32}};
    reject_tensors(dup, 2, 64, "duplicate tensor name", "more than once");

    /* Types and shapes. */
    const uint32_t bad_types[] = {4, 5, 16, 29, 31, 39, 1000, 0xffffffffu};
    for (int i = 0; i < 8; i++) {
        tinfo t[] = {{"t", 1, {256}, bad_types[i], 0}};
        reject_tensors(t, 1, 1024, "unknown tensor type", "tensor type");
    }
    const uint32_t bad_dims[] = {0, 5, 0xffffffffu};
    for (int i = 0; i < 3; i++) {
        tinfo t[] = {{"t", bad_dims[i], {1, 1, 1, 1}, SVLM_F32, 0}};
        reject_tensors(t, 1, 64, "bad n_dims", "dimensions");
    }
    tinfo zero[] = {{"t", 2, {4, 0}, SVLM_F32, 0}};
    reject_tensors(zero, 1, 64, "zero dimension", "dimension 1");
    tinfo neg[] = {{"t", 1, {(uint64_t)1 << 63}, SVLM_F32, 0}};
    reject_tensors(neg, 1, 64, "dimension 2^63", "dimension 0");
    tinfo prod[] = {{"t", 3, {1u << 22, 1u << 21, 1u << 21}, SVLM_F32, 0}};
    reject_tensors(prod, 1, 64, "element count overflow", "overflow");
    tinfo bytes_ovf[] = {{"t", 2, {(uint64_t)1 << 31, (uint64_t)1 << 31}, SVLM_F32, 0}};
    reject_tensors(bytes_ovf, 1, 64, "byte size overflow", "overflow");
    tinfo rows[] = {{"t", 1, {33}, SVLM_Q8_0, 0}, {"u", 1, {200}, SVLM_Q4_K, 64}};
    reject_tensors(rows, 1, 64, "q8_0 row not a multiple of 32", "multiple");
    reject_tensors(rows + 1, 1, 256, "q4_K row not a multiple of 256", "multiple");

    /* Names. */
    const char *bad_names[] = {"n\xff", "\xc1\xbf", "",
                               "0123456789012345678901234567890123456789012345678901234567890123X"};
    const char *needles[] = {"UTF-8", "UTF-8", "empty", "limit"};
    for (int i = 0; i < 4; i++) {
        tinfo t[] = {{bad_names[i], 1, {8}, SVLM_F32, 0}};
        reject_tensors(t, 1, 32, "bad tensor name", needles[i]);
    }
    bytes b = {0};
    put(&b, "GGUF", 4);
    put_u32(&b, 3);
    put_u64(&b, 1);
    put_u64(&b, 0);
    put_strn(&b, "a\0", 2);
    put_u32(&b, 1);
    put_u64(&b, 8);
    put_u32(&b, SVLM_F32);
    put_u64(&b, 0);
    while (b.n % 32)
        put_u8(&b, 0);
    for (int i = 0; i < 32; i++)
        put_u8(&b, 0);
    expect_reject(&b, "tensor name with NUL", "NUL");

    /* Data section start beyond the file when tensors exist. */
    tinfo one[] = {{"a", 1, {8}, SVLM_F32, 0}};
    b = make_gguf(3, 0, NULL, 1, one, 32, 0);
    while (b.n % 32 == 0)
        b.n--; /* drop the padding too */
    expect_reject(&b, "no data section", "past the end");
}

/* Random corruption: whatever happens, no crash, and an accepted file keeps its promises. */
static void test_random_corruption(void) {
    bytes b = valid_file();
    uint32_t seed = 12345;
    int accepted = 0;
    for (int iter = 0; iter < 4000; iter++) {
        uint8_t *m = malloc(b.n);
        REQUIRE(m, "oom");
        memcpy(m, b.p, b.n);
        int flips = 1 + iter % 4;
        for (int j = 0; j < flips; j++) {
            seed = seed * 1664525u + 1013904223u;
            size_t at = (seed >> 8) % (b.n - VALID_DATA_LEN); /* corrupt the header and tables */
            seed = seed * 1664525u + 1013904223u;
            m[at] = (iter & 8) ? (uint8_t)(seed >> 24) : (uint8_t)(m[at] ^ (1u << ((seed >> 24) & 7)));
        }
        gguf_file *f = NULL;
        svlm_err err = {0};
        if (gguf_open_buffer(m, b.n, &f, &err) == SVLM_OK) {
            accepted++;
            for (uint64_t i = 0; i < f->n_tensors; i++) {
                const gguf_tensor *t = &f->tensors[i];
                const uint8_t *p = t->data;
                CHECK(p >= m + f->data_offset && p + t->nbytes <= m + b.n,
                      "accepted tensor outside the buffer");
            }
            gguf_close(f);
        } else {
            CHECK(err.msg[0], "rejected without a message");
        }
        free(m);
    }
    printf("random corruption: %d of 4000 mutated files still valid\n", accepted);
    bytes_free(&b);
}

/* ---- files on disk ------------------------------------------------------------------------------------ */

static void test_open_path(void) {
    gguf_file *f = (gguf_file *)1;
    svlm_err err = {0};
    CHECK(gguf_open("/nonexistent/x.gguf", &f, &err) == SVLM_E_IO && !f && strstr(err.msg, "x.gguf"),
          "missing file: %s", err.msg);
    CHECK(gguf_open(test_tmpdir(), &f, &err) != SVLM_OK && !f, "directory accepted");
    char path[4200];
    /* a FIFO: refused at once (opening it for reading waited for a writer, for ever) */
    snprintf(path, sizeof path, "%s/fifo.gguf", test_tmpdir());
    remove(path);
    REQUIRE(mkfifo(path, 0600) == 0, "cannot make a FIFO at %s", path);
    CHECK(gguf_open(path, &f, &err) == SVLM_E_IO && !f && strstr(err.msg, "not a regular file"), "FIFO: %s",
          err.msg);
    remove(path);
    snprintf(path, sizeof path, "%s/empty.gguf", test_tmpdir());
    FILE *fp = fopen(path, "wb");
    REQUIRE(fp, "cannot create %s", path);
    fclose(fp);
    CHECK(gguf_open(path, &f, &err) == SVLM_E_FORMAT && strstr(err.msg, "too small"), "empty file: %s",
          err.msg);

    bytes b = valid_file();
    snprintf(path, sizeof path, "%s/valid.gguf", test_tmpdir());
    fp = fopen(path, "wb");
    REQUIRE(fp, "cannot create %s", path);
    fwrite(b.p, 1, b.n, fp);
    fclose(fp);
    CHECK(gguf_open(path, &f, &err) == SVLM_OK, "valid file on disk: %s", err.msg);
    if (f) {
        CHECK(f->n_tensors == 4 && f->path && !strcmp(f->path, path), "path and tensors");
        const gguf_tensor *t = gguf_find_tensor(f, "c");
        CHECK(t && !memcmp(t->data, b.p + f->data_offset + 96, 288), "mapped tensor bytes");
        gguf_close(f);
    }
    fp = fopen(path, "wb");
    fwrite(b.p, 1, b.n - 1, fp);
    fclose(fp);
    CHECK(gguf_open(path, &f, &err) == SVLM_E_FORMAT && strstr(err.msg, path), "truncated file on disk: %s",
          err.msg);
    remove(path);
    bytes_free(&b);
    gguf_close(NULL);
}

/* ---- the shared model files ------------------------------------------------------------------------------
 */

static uint8_t *read_all(const char *path, size_t *n) {
    FILE *fp = fopen(path, "rb");
    if (!fp) return NULL;
    fseek(fp, 0, SEEK_END);
    long sz = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *p = malloc(sz > 0 ? (size_t)sz : 1);
    if (p && fread(p, 1, (size_t)sz, fp) != (size_t)sz) {
        free(p);
        p = NULL;
    }
    fclose(fp);
    *n = (size_t)sz;
    return p;
}

static void test_stories(void) {
    const char *path = test_data("models/stories260K.gguf");
    gguf_file *f = NULL;
    svlm_err err = {0};
    svlm_status st = gguf_open(path, &f, &err); /* not inside REQUIRE: it evaluates twice */
    REQUIRE(st == SVLM_OK, "%s: %s", path, err.msg);
    CHECK(f->version == 3 && f->n_kv == 19 && f->n_tensors == 48, "stories260K: v%u %llu kv %llu tensors",
          f->version, (unsigned long long)f->n_kv, (unsigned long long)f->n_tensors);
    uint32_t u = 0;
    CHECK(gguf_get_u32(f, "llama.embedding_length", &u) && u == 64, "embedding_length %u", u);
    CHECK(gguf_get_u32(f, "llama.block_count", &u) && u == 5, "block_count %u", u);
    CHECK(gguf_get_u32(f, "llama.attention.head_count_kv", &u) && u == 4, "head_count_kv %u", u);
    float eps = 0;
    CHECK(gguf_get_f32(f, "llama.attention.layer_norm_rms_epsilon", &eps) && eps == 1e-5f, "eps %g", eps);
    char *model = gguf_get_str_dup(f, "tokenizer.ggml.model");
    CHECK(model && !strcmp(model, "llama"), "tokenizer model");
    free(model);
    const gguf_kv *tok = gguf_get_arr(f, "tokenizer.ggml.tokens", GGUF_STRING);
    CHECK(tok && tok->arr_n == 512 && tok->arr_strs[1].len == 3 && !memcmp(tok->arr_strs[1].ptr, "<s>", 3),
          "tokens");
    const gguf_tensor *t = gguf_find_tensor(f, "token_embd.weight");
    CHECK(t && t->type == SVLM_F32 && t->n_dims == 2 && t->ne[0] == 64 && t->ne[1] == 512 &&
              t->nbytes == 131072,
          "token_embd.weight");
    t = gguf_find_tensor(f, "blk.4.ffn_down.weight");
    CHECK(t && t->ne[0] == 172 && t->ne[1] == 64, "blk.4.ffn_down.weight");
    gguf_close(f);

    /* Truncated at every offset of the header and at a stride through the data. */
    size_t n;
    uint8_t *all = read_all(path, &n);
    REQUIRE(all, "cannot read %s", path);
    size_t header_end = 14176;
    for (size_t cut = 0; cut < n; cut += cut < header_end ? 1 : 4093) {
        char what[128];
        snprintf(what, sizeof what, "stories260K cut at %zu", cut);
        expect_reject_n(all, cut, what, NULL);
    }
    free(all);
}

static void test_vocab_files(void) {
    struct {
        const char *file, *model;
        uint64_t n_tokens;
    } vocabs[] = {
        {"models/vocab/ggml-vocab-gpt-2.gguf", "gpt2", 50257},
        {"models/vocab/ggml-vocab-llama-spm.gguf", "llama", 32000},
        {"models/vocab/ggml-vocab-refact.gguf", "gpt2", 49216},
        {"models/vocab/ggml-vocab-starcoder.gguf", "gpt2", 49152},
    };
    for (int i = 0; i < 4; i++) {
        const char *path = test_data(vocabs[i].file);
        gguf_file *f = NULL;
        svlm_err err = {0};
        CHECK(gguf_open(path, &f, &err) == SVLM_OK, "%s: %s", path, err.msg);
        if (!f) continue;
        char *model = gguf_get_str_dup(f, "tokenizer.ggml.model");
        CHECK(model && !strcmp(model, vocabs[i].model), "%s: model %s", path, model ? model : "(null)");
        free(model);
        const gguf_kv *tok = gguf_get_arr(f, "tokenizer.ggml.tokens", GGUF_STRING);
        CHECK(tok && tok->arr_n == vocabs[i].n_tokens, "%s: token count", path);
        CHECK(f->n_tensors == 0, "%s: vocab-only file has tensors", path);
        gguf_close(f);
    }
    /* A 1.7 MB file of 100k strings cut at a spread of offsets. */
    size_t n;
    uint8_t *all = read_all(test_data(vocabs[0].file), &n);
    REQUIRE(all, "cannot read the gpt-2 vocab");
    for (size_t cut = 0; cut < n; cut += 1 + cut / 32) {
        char what[128];
        snprintf(what, sizeof what, "gpt-2 vocab cut at %zu", cut);
        expect_reject_n(all, cut, what, NULL);
    }
    free(all);
}

int test_main(void) {
    test_valid();
    test_alignment();
    test_truncation();
    test_bad_header();
    test_bad_metadata();
    test_bad_tensors();
    test_random_corruption();
    test_open_path();
    if (!test_data("models/stories260K.gguf")) {
        printf("SKIP (partly): ../shared not found; shared GGUF files not checked\n");
        return 0;
    }
    test_stories();
    test_vocab_files();
    return 0;
}
