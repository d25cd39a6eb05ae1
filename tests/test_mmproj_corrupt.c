/*
 * Damaged mmproj files: the vision-tiny fixture projector rewritten with one thing wrong at a time
 * (each tensor missing, each tensor mis-shaped or of an integer type, each metadata key missing or
 * of the wrong type, and out-of-range hyperparameters). Each must either be refused with a message
 * that starts "mmproj" (or names the GGUF problem), or load and encode a tile without a crash (a
 * key that is optional, a smaller block count). Runs under ASan/UBSan with the unit tests.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "llm/gguf.h"
#include "llm/gguf_write.h"
#include "test.h"
#include "vision/encoder.h"
#include "vision/mmproj.h"

typedef enum { M_NONE, M_DROP_KV, M_KV_AS_STR, M_DROP_T, M_SHAPE_T, M_TYPE_T, M_SET_U32, M_SET_F32 } mkind;

typedef struct mutation {
    mkind kind;
    uint64_t index;  /* kv or tensor */
    const char *key; /* M_SET_*: the key to replace (added when absent) */
    double value;
} mutation;

static void copy_kv(gguf_writer *w, const gguf_kv *kv, svlm_err *err) {
    svlm_status st = SVLM_OK;
    switch (kv->type) {
    case GGUF_UINT8: st = gguf_writer_set_u8(w, kv->key, (uint8_t)kv->v.u64, err); break;
    case GGUF_INT8: st = gguf_writer_set_i8(w, kv->key, (int8_t)kv->v.i64, err); break;
    case GGUF_UINT16: st = gguf_writer_set_u16(w, kv->key, (uint16_t)kv->v.u64, err); break;
    case GGUF_INT16: st = gguf_writer_set_i16(w, kv->key, (int16_t)kv->v.i64, err); break;
    case GGUF_UINT32: st = gguf_writer_set_u32(w, kv->key, (uint32_t)kv->v.u64, err); break;
    case GGUF_INT32: st = gguf_writer_set_i32(w, kv->key, (int32_t)kv->v.i64, err); break;
    case GGUF_UINT64: st = gguf_writer_set_u64(w, kv->key, kv->v.u64, err); break;
    case GGUF_INT64: st = gguf_writer_set_i64(w, kv->key, kv->v.i64, err); break;
    case GGUF_FLOAT32: st = gguf_writer_set_f32(w, kv->key, (float)kv->v.f64, err); break;
    case GGUF_FLOAT64: st = gguf_writer_set_f64(w, kv->key, kv->v.f64, err); break;
    case GGUF_BOOL: st = gguf_writer_set_bool(w, kv->key, kv->v.b, err); break;
    case GGUF_STRING: st = gguf_writer_set_str_n(w, kv->key, kv->v.str.ptr, kv->v.str.len, err); break;
    case GGUF_ARRAY:
        REQUIRE(kv->arr_type != GGUF_STRING && kv->arr_type != GGUF_ARRAY, "%s: nested array", kv->key);
        st = gguf_writer_set_arr(w, kv->key, kv->arr_type, kv->data, kv->arr_n, err);
        break;
    default: REQUIRE(0, "%s: type %d", kv->key, kv->type);
    }
    REQUIRE(st == SVLM_OK, "copy %s: %s", kv->key, err->msg);
}

/* src rewritten to path with mutation m. */
static void write_mutant(const gguf_file *src, const mutation *m, const char *path) {
    svlm_err err = {0};
    gguf_writer *w = NULL;
    REQUIRE(gguf_writer_create(path, 0, &w, &err) == SVLM_OK, "%s", err.msg);
    int set_done = 0;
    for (uint64_t i = 0; i < src->n_kv; i++) {
        const gguf_kv *kv = &src->kv[i];
        if ((m->kind == M_DROP_KV || m->kind == M_KV_AS_STR) && m->index == i) {
            if (m->kind == M_KV_AS_STR)
                REQUIRE(gguf_writer_set_str(w, kv->key, "12", &err) == SVLM_OK, "%s", err.msg);
            continue;
        }
        if ((m->kind == M_SET_U32 || m->kind == M_SET_F32) && !strcmp(kv->key, m->key)) continue;
        copy_kv(w, kv, &err);
    }
    if (m->kind == M_SET_U32)
        REQUIRE(gguf_writer_set_u32(w, m->key, (uint32_t)m->value, &err) == SVLM_OK, "%s", err.msg);
    if (m->kind == M_SET_F32)
        REQUIRE(gguf_writer_set_f32(w, m->key, (float)m->value, &err) == SVLM_OK, "%s", err.msg);
    (void)set_done;
    size_t *bytes = calloc(src->n_tensors, sizeof(size_t));
    REQUIRE(bytes != NULL, "out of memory");
    for (uint64_t i = 0; i < src->n_tensors; i++) {
        const gguf_tensor *t = &src->tensors[i];
        if (m->kind == M_DROP_T && m->index == i) continue;
        int64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
        svlm_dtype type = t->type;
        int nd = t->n_dims;
        if (m->kind == M_SHAPE_T && m->index == i) { /* one more row: same rank, wrong shape */
            if (nd == 1) nd = 2;
            ne[1] += 1;
        }
        if (m->kind == M_TYPE_T && m->index == i) type = SVLM_I32; /* (F32's width, no floats) */
        REQUIRE(gguf_writer_add_tensor(w, t->name, type, nd, ne, &err) == SVLM_OK, "%s", err.msg);
        bytes[i] = gguf_tensor_bytes(type, nd, ne);
    }
    for (uint64_t i = 0; i < src->n_tensors; i++) {
        const gguf_tensor *t = &src->tensors[i];
        if (m->kind == M_DROP_T && m->index == i) continue;
        if (bytes[i] == t->nbytes) {
            REQUIRE(gguf_writer_write_data(w, t->data, t->nbytes, &err) == SVLM_OK, "%s", err.msg);
        } else {
            uint8_t *z = calloc(1, bytes[i]);
            REQUIRE(z != NULL, "out of memory");
            memcpy(z, t->data, t->nbytes < bytes[i] ? t->nbytes : bytes[i]);
            REQUIRE(gguf_writer_write_data(w, z, bytes[i], &err) == SVLM_OK, "%s", err.msg);
            free(z);
        }
    }
    free(bytes);
    REQUIRE(gguf_writer_finish(w, &err) == SVLM_OK, "%s", err.msg);
    gguf_writer_destroy(w);
}

static int n_refused, n_loaded;

/* Loads path: a refusal needs a clear message; a load must encode one tile. */
static void try_load(const char *path, const char *what, int must_fail) {
    svlm_err err = {0};
    svlm_mmproj *m = NULL;
    svlm_status st = svlm_mmproj_load(path, &m, &err);
    if (st) {
        n_refused++;
        CHECK(m == NULL && err.msg[0] &&
                  (strstr(err.msg, "mmproj") || strstr(err.msg, "GGUF") || strstr(err.msg, "gguf") ||
                   strstr(err.msg, "tensor")),
              "%s: refused with an unclear message '%s'", what, err.msg);
        return;
    }
    n_loaded++;
    CHECK(!must_fail, "%s: loaded, but it must be refused", what);
    svlm_kernels *k = NULL;
    REQUIRE(svlm_kernels_create_cpu(1, &k, &err) == SVLM_OK, "%s", err.msg);
    svlm_vision_ctx *vc = NULL;
    const svlm_mmproj_hparams *hp = &m->hp;
    st = svlm_vision_ctx_create(m, k, 1, &vc, &err);
    if (!st) {
        size_t tile = (size_t)3 * hp->image_size * hp->image_size;
        float *px = calloc(tile, sizeof(float)),
              *out = malloc(sizeof(float) * (size_t)hp->tokens_per_tile * (size_t)hp->proj_dim);
        REQUIRE(px && out, "out of memory");
        st = svlm_vision_encode(vc, px, 1, out, &err);
        CHECK(st == SVLM_OK, "%s: loaded but encode failed: %s", what, err.msg);
        free(px);
        free(out);
    }
    svlm_vision_ctx_free(vc);
    svlm_kernels_destroy(k);
    svlm_mmproj_free(m);
}

int test_main(void) {
    test_data_or_skip();
    svlm_err err = {0};
    gguf_file *src = NULL;
    REQUIRE(gguf_open(test_data("fixtures/vision-tiny/models/tiny-smolvlm-mmproj-f32.gguf"), &src, &err) ==
                SVLM_OK,
            "%s", err.msg);
    char path[512], what[256];
    snprintf(path, sizeof path, "%s/mutant-mmproj.gguf", test_tmpdir());

    mutation none = {M_NONE, 0, NULL, 0};
    write_mutant(src, &none, path);
    try_load(path, "unchanged copy", 0);
    REQUIRE(n_loaded == 1, "the unchanged copy does not load");

    /* keys llama.cpp's idefics3 files need; others (eps, preproc size, descriptions) are optional */
    static const char *required[] = {"clip.projector_type",
                                     "clip.vision.image_size",
                                     "clip.vision.patch_size",
                                     "clip.vision.embedding_length",
                                     "clip.vision.feed_forward_length",
                                     "clip.vision.block_count",
                                     "clip.vision.attention.head_count",
                                     "clip.vision.projector.scale_factor",
                                     "clip.vision.image_mean",
                                     "clip.vision.image_std",
                                     "clip.use_gelu"};
    for (uint64_t i = 0; i < src->n_kv; i++) {
        int req = 0;
        for (size_t r = 0; r < sizeof required / sizeof required[0]; r++)
            req |= !strcmp(src->kv[i].key, required[r]);
        mutation m = {M_DROP_KV, i, NULL, 0};
        write_mutant(src, &m, path);
        snprintf(what, sizeof what, "without key %s", src->kv[i].key);
        try_load(path, what, req);
        if (src->kv[i].type != GGUF_STRING) {
            m.kind = M_KV_AS_STR;
            write_mutant(src, &m, path);
            snprintf(what, sizeof what, "key %s as a string", src->kv[i].key);
            try_load(path, what, req);
        }
    }
    for (uint64_t i = 0; i < src->n_tensors; i++) {
        static const mkind kinds[] = {M_DROP_T, M_SHAPE_T, M_TYPE_T};
        static const char *names[] = {"without", "mis-shaped", "integer"};
        for (int j = 0; j < 3; j++) {
            mutation m = {kinds[j], i, NULL, 0};
            write_mutant(src, &m, path);
            snprintf(what, sizeof what, "%s tensor %s", names[j], src->tensors[i].name);
            /* every tensor of the fixture is used; the projection's output width is the file's
             * (checked against the text model by its users) */
            try_load(path, what,
                     !(kinds[j] == M_SHAPE_T && !strcmp(src->tensors[i].name, "mm.model.fc.weight")));
        }
    }
    /* out-of-range or inconsistent hyperparameters */
    static const struct {
        mkind kind;
        const char *key;
        double value;
        int must_fail;
    } bad[] = {
        {M_SET_U32, "clip.vision.image_size", 0, 1},
        {M_SET_U32, "clip.vision.image_size", 64, 1}, /* fewer patches than the position table */
        {M_SET_U32, "clip.vision.image_size", 4096, 1},
        {M_SET_U32, "clip.vision.image_size", 100000, 1},
        {M_SET_U32, "clip.vision.patch_size", 0, 1},
        {M_SET_U32, "clip.vision.patch_size", 200, 1},
        {M_SET_U32, "clip.vision.patch_size", 1, 1},
        {M_SET_U32, "clip.vision.projector.scale_factor", 0, 1},
        {M_SET_U32, "clip.vision.projector.scale_factor", 3, 1},
        {M_SET_U32, "clip.vision.attention.head_count", 0, 1},
        {M_SET_U32, "clip.vision.attention.head_count", 5, 1},
        {M_SET_U32, "clip.vision.attention.head_count", 96000, 1},
        {M_SET_U32, "clip.vision.embedding_length", 0, 1},
        {M_SET_U32, "clip.vision.embedding_length", 48, 1},
        {M_SET_U32, "clip.vision.feed_forward_length", 0, 1},
        {M_SET_U32, "clip.vision.block_count", 0, 1},
        {M_SET_U32, "clip.vision.block_count", 4, 1},
        {M_SET_U32, "clip.vision.block_count", 2, 0}, /* a shorter tower: loads */
        {M_SET_U32, "clip.vision.preproc_image_size", 0, 0},
        {M_SET_U32, "clip.vision.preproc_image_size", 0xffffffffu, 0},
        {M_SET_F32, "clip.vision.attention.layer_norm_epsilon", 0, 1},
        {M_SET_F32, "clip.vision.attention.layer_norm_epsilon", -1, 1},
        {M_SET_F32, "clip.vision.attention.layer_norm_epsilon", NAN, 1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        mutation m = {bad[i].kind, 0, bad[i].key, bad[i].value};
        write_mutant(src, &m, path);
        snprintf(what, sizeof what, "%s = %g", bad[i].key, bad[i].value);
        try_load(path, what, bad[i].must_fail);
    }
    printf("mmproj mutants: %d refused, %d loaded and encoded\n", n_refused, n_loaded);
    gguf_close(src);
    return 0;
}
