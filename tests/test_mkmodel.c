/*
 * The GGUF writer and `svlm mkmodel`.
 *
 * Writer: every metadata type written and read back by our reader, tensor alignment and
 * data placement, and clear errors (duplicates, bad shapes, short data, unwritable paths)
 * that never leave a file behind.
 * mkmodel: tiny models of every --type re-read by our reader with the expected keys,
 * tensors and shapes; the values of each quantized file dequantize to the F32 file's values
 * within the type's error; same seed → same bytes, other seed → other weights; the
 * SmolVLM2-256M tensor table (--list) against names and shapes computed here from the
 * spec's table (../shared/docs/smolvlm2-spec.md §1, §4, §5), including the Q4_K_M mix with
 * its fallbacks; the 49280-token vocabulary (--vocab-only) with SmolVLM2's special ids and
 * merges consistent with the tokens.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kernels/dtype.h"
#include "llm/gguf.h"
#include "llm/gguf_write.h"
#include "test.h"

static char tmp[4096];

static const char *tmp_path(const char *name) {
    static char buf[4][4200];
    static int slot;
    char *b = buf[slot++ % 4];
    snprintf(b, sizeof buf[0], "%s/%s", tmp, name);
    return b;
}

static int file_exists(const char *p) {
    struct stat sb;
    return stat(p, &sb) == 0;
}

static int run(const char *args) {
    const char *bin = getenv("SVLM_BIN");
    char cmd[16384];
    if (snprintf(cmd, sizeof cmd, "'%s' %s >/dev/null 2>%s/stderr.txt", bin, args, tmp) >= (int)sizeof cmd)
        return -1;
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* ---- writer ----------------------------------------------------------------------------- */

static void test_writer_roundtrip(void) {
    const char *path = tmp_path("rt.gguf");
    svlm_err err = {0};
    gguf_writer *w = NULL;
    {
        svlm_status st_ = gguf_writer_create(path, 0, &w, &err);
        REQUIRE(st_ == SVLM_OK, "create: %s", err.msg);
    }
    CHECK(gguf_writer_set_u8(w, "t.u8", 200, &err) == SVLM_OK, "%s", err.msg);
    CHECK(gguf_writer_set_i8(w, "t.i8", -100, &err) == SVLM_OK, "%s", err.msg);
    CHECK(gguf_writer_set_u16(w, "t.u16", 60000, &err) == SVLM_OK, "%s", err.msg);
    CHECK(gguf_writer_set_i16(w, "t.i16", -30000, &err) == SVLM_OK, "%s", err.msg);
    CHECK(gguf_writer_set_u32(w, "t.u32", 4000000000u, &err) == SVLM_OK, "%s", err.msg);
    CHECK(gguf_writer_set_i32(w, "t.i32", -2000000000, &err) == SVLM_OK, "%s", err.msg);
    CHECK(gguf_writer_set_u64(w, "t.u64", 1ull << 60, &err) == SVLM_OK, "%s", err.msg);
    CHECK(gguf_writer_set_i64(w, "t.i64", -(1ll << 60), &err) == SVLM_OK, "%s", err.msg);
    CHECK(gguf_writer_set_f32(w, "t.f32", 1.5f, &err) == SVLM_OK, "%s", err.msg);
    CHECK(gguf_writer_set_f64(w, "t.f64", -2.25, &err) == SVLM_OK, "%s", err.msg);
    CHECK(gguf_writer_set_bool(w, "t.bool", 1, &err) == SVLM_OK, "%s", err.msg);
    CHECK(gguf_writer_set_str(w, "t.str", "héllo", &err) == SVLM_OK, "%s", err.msg);
    CHECK(gguf_writer_set_str_n(w, "t.empty", "", 0, &err) == SVLM_OK, "%s", err.msg);
    const char *strs[3] = {"a", "", "Ġthe"};
    CHECK(gguf_writer_set_arr_str(w, "t.astr", strs, 3, &err) == SVLM_OK, "%s", err.msg);
    const int32_t ints[4] = {1, -2, 3, -4};
    CHECK(gguf_writer_set_arr(w, "t.ai32", GGUF_INT32, ints, 4, &err) == SVLM_OK, "%s", err.msg);
    const float fl[2] = {0.5f, -0.25f};
    CHECK(gguf_writer_set_arr(w, "t.af32", GGUF_FLOAT32, fl, 2, &err) == SVLM_OK, "%s", err.msg);
    CHECK(gguf_writer_set_arr(w, "t.aempty", GGUF_UINT8, NULL, 0, &err) == SVLM_OK, "%s", err.msg);

    /* Errors that must not spoil the writer. */
    CHECK(gguf_writer_set_u32(w, "t.u32", 1, &err) == SVLM_E_INVALID && strstr(err.msg, "twice"),
          "dup key: %s", err.msg);
    CHECK(gguf_writer_set_arr(w, "t.bad", GGUF_STRING, ints, 1, &err) == SVLM_E_INVALID,
          "string elems via set_arr");
    int64_t ne_bad[2] = {33, 2};
    CHECK(gguf_writer_add_tensor(w, "bad", SVLM_Q8_0, 2, ne_bad, &err) == SVLM_E_INVALID,
          "q8_0 with ne0 33 accepted");

    /* Odd sizes so that every tensor needs padding to the next 32-byte boundary. */
    int64_t ne_a[1] = {3}, ne_b[2] = {32, 3}, ne_c[3] = {5, 1, 2};
    CHECK(gguf_writer_add_tensor(w, "a", SVLM_F32, 1, ne_a, &err) == SVLM_OK, "%s", err.msg);
    CHECK(gguf_writer_add_tensor(w, "b", SVLM_Q8_0, 2, ne_b, &err) == SVLM_OK, "%s", err.msg);
    CHECK(gguf_writer_add_tensor(w, "c", SVLM_F16, 3, ne_c, &err) == SVLM_OK, "%s", err.msg);
    CHECK(gguf_writer_add_tensor(w, "a", SVLM_F32, 1, ne_a, &err) == SVLM_E_INVALID,
          "duplicate tensor accepted");
    uint8_t data[12 + 102 + 20];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 7 + 1);
    /* In three chunks that straddle the tensor boundaries. */
    CHECK(gguf_writer_write_data(w, data, 5, &err) == SVLM_OK, "%s", err.msg);
    CHECK(gguf_writer_write_data(w, data + 5, 100, &err) == SVLM_OK, "%s", err.msg);
    CHECK(gguf_writer_set_u32(w, "late", 1, &err) == SVLM_E_INVALID, "metadata after data accepted");
    CHECK(gguf_writer_write_data(w, data + 105, sizeof data - 105, &err) == SVLM_OK, "%s", err.msg);
    CHECK(!file_exists(path), "file visible before finish");
    {
        svlm_status st_ = gguf_writer_finish(w, &err);
        REQUIRE(st_ == SVLM_OK, "finish: %s", err.msg);
    }
    gguf_writer_destroy(w);
    CHECK(!file_exists(tmp_path("rt.gguf.tmp")), "temporary file left behind");

    gguf_file *f = NULL;
    {
        svlm_status st_ = gguf_open(path, &f, &err);
        REQUIRE(st_ == SVLM_OK, "reader rejects our file: %s", err.msg);
    }
    CHECK(f->version == 3 && f->n_kv == 17 && f->n_tensors == 3, "header %u %llu %llu", f->version,
          (unsigned long long)f->n_kv, (unsigned long long)f->n_tensors);
    CHECK(f->alignment == 32 && f->data_offset % 32 == 0, "alignment %zu offset %zu", f->alignment,
          f->data_offset);
    CHECK(gguf_find_kv(f, "general.alignment") == NULL, "default alignment written as a key");
    uint32_t u32;
    int64_t i64;
    float f32;
    int b;
    CHECK(gguf_get_u32(f, "t.u8", &u32) && u32 == 200, "u8");
    CHECK(gguf_get_i64(f, "t.i8", &i64) && i64 == -100, "i8");
    CHECK(gguf_get_u32(f, "t.u16", &u32) && u32 == 60000, "u16");
    CHECK(gguf_get_i64(f, "t.i16", &i64) && i64 == -30000, "i16");
    CHECK(gguf_get_u32(f, "t.u32", &u32) && u32 == 4000000000u, "u32");
    CHECK(gguf_get_i64(f, "t.i32", &i64) && i64 == -2000000000, "i32");
    CHECK(gguf_find_kv(f, "t.u64") && gguf_find_kv(f, "t.u64")->v.u64 == (1ull << 60), "u64");
    CHECK(gguf_get_i64(f, "t.i64", &i64) && i64 == -(1ll << 60), "i64");
    CHECK(gguf_get_f32(f, "t.f32", &f32) && f32 == 1.5f, "f32");
    CHECK(gguf_find_kv(f, "t.f64") && gguf_find_kv(f, "t.f64")->v.f64 == -2.25, "f64");
    CHECK(gguf_get_bool(f, "t.bool", &b) && b == 1, "bool");
    char *s = gguf_get_str_dup(f, "t.str");
    CHECK(s && !strcmp(s, "héllo"), "str '%s'", s ? s : "(null)");
    free(s);
    s = gguf_get_str_dup(f, "t.empty");
    CHECK(s && !*s, "empty str");
    free(s);
    const gguf_kv *kv = gguf_get_arr(f, "t.astr", GGUF_STRING);
    CHECK(kv && kv->arr_n == 3 && kv->arr_strs[2].len == strlen("Ġthe") &&
              !memcmp(kv->arr_strs[2].ptr, "Ġthe", kv->arr_strs[2].len) && kv->arr_strs[1].len == 0,
          "string array");
    kv = gguf_get_arr(f, "t.ai32", GGUF_INT32);
    CHECK(kv && kv->arr_n == 4 && !memcmp(kv->data, ints, sizeof ints), "i32 array");
    kv = gguf_get_arr(f, "t.af32", GGUF_FLOAT32);
    CHECK(kv && kv->arr_n == 2 && !memcmp(kv->data, fl, sizeof fl), "f32 array");
    kv = gguf_get_arr(f, "t.aempty", GGUF_UINT8);
    CHECK(kv && kv->arr_n == 0, "empty array");
    const char *names[3] = {"a", "b", "c"};
    size_t at = 0, sizes[3] = {12, 102, 20};
    for (int i = 0; i < 3; i++) {
        const gguf_tensor *t = gguf_find_tensor(f, names[i]);
        REQUIRE(t, "tensor %s missing", names[i]);
        CHECK(t->offset % 32 == 0, "tensor %s at %llu", names[i], (unsigned long long)t->offset);
        CHECK(t->nbytes == sizes[i] && !memcmp(t->data, data + at, sizes[i]), "tensor %s data", names[i]);
        at += sizes[i];
    }
    const gguf_tensor *c = gguf_find_tensor(f, "c");
    CHECK(c && c->n_dims == 3 && c->ne[0] == 5 && c->ne[1] == 1 && c->ne[2] == 2 && c->type == SVLM_F16,
          "c shape");
    gguf_close(f);
}

static void test_writer_errors(void) {
    svlm_err err = {0};
    gguf_writer *w = NULL;
    CHECK(gguf_writer_create(tmp_path("no/such/dir/x.gguf"), 0, &w, &err) == SVLM_E_IO && !w &&
              strstr(err.msg, "no/such/dir"),
          "unwritable path: %s", err.msg);
    CHECK(gguf_writer_create(tmp_path("x.gguf"), 24, &w, &err) == SVLM_E_INVALID && !w,
          "alignment 24 accepted");

    /* Short data: finish fails, nothing appears at the path, the temp file goes away. */
    const char *path = tmp_path("short.gguf");
    {
        svlm_status st_ = gguf_writer_create(path, 0, &w, &err);
        REQUIRE(st_ == SVLM_OK, "%s", err.msg);
    }
    int64_t ne[1] = {8};
    CHECK(gguf_writer_add_tensor(w, "x", SVLM_F32, 1, ne, &err) == SVLM_OK, "%s", err.msg);
    float v[8] = {0};
    CHECK(gguf_writer_write_data(w, v, 16, &err) == SVLM_OK, "%s", err.msg);
    CHECK(gguf_writer_finish(w, &err) == SVLM_E_INVALID && strstr(err.msg, "'x'"), "short data: %s", err.msg);
    gguf_writer_destroy(w);
    CHECK(!file_exists(path) && !file_exists(tmp_path("short.gguf.tmp")), "short file left behind");

    /* Too much data. */
    {
        svlm_status st_ = gguf_writer_create(path, 64, &w, &err);
        REQUIRE(st_ == SVLM_OK, "%s", err.msg);
    }
    CHECK(gguf_writer_add_tensor(w, "x", SVLM_F32, 1, ne, &err) == SVLM_OK, "%s", err.msg);
    float big[9] = {0};
    CHECK(gguf_writer_write_data(w, big, sizeof big, &err) == SVLM_E_INVALID, "overlong data accepted");
    gguf_writer_destroy(w);
    CHECK(!file_exists(path), "overlong file left behind");

    /* Non-default alignment is written as general.alignment and honoured. */
    {
        svlm_status st_ = gguf_writer_create(path, 64, &w, &err);
        REQUIRE(st_ == SVLM_OK, "%s", err.msg);
    }
    int64_t n3[1] = {3};
    CHECK(gguf_writer_add_tensor(w, "x", SVLM_F32, 1, n3, &err) == SVLM_OK, "%s", err.msg);
    CHECK(gguf_writer_add_tensor(w, "y", SVLM_F32, 1, n3, &err) == SVLM_OK, "%s", err.msg);
    CHECK(gguf_writer_write_data(w, big, 24, &err) == SVLM_OK, "%s", err.msg);
    {
        svlm_status st_ = gguf_writer_finish(w, &err);
        REQUIRE(st_ == SVLM_OK, "%s", err.msg);
    }
    gguf_writer_destroy(w);
    gguf_file *f = NULL;
    {
        svlm_status st_ = gguf_open(path, &f, &err);
        REQUIRE(st_ == SVLM_OK, "%s", err.msg);
    }
    uint32_t a = 0;
    CHECK(gguf_get_u32(f, "general.alignment", &a) && a == 64 && f->alignment == 64 &&
              f->data_offset % 64 == 0,
          "alignment 64");
    CHECK(gguf_find_tensor(f, "y") && gguf_find_tensor(f, "y")->offset == 64, "y offset");
    gguf_close(f);
}

/* ---- mkmodel: expected layouts computed from the spec's numbers ----------------------- */

typedef struct {
    const char *name;
    int n_dims;
    int64_t ne[4];
} expect;

typedef struct {
    int vocab, embd, layers, heads, kv_heads, ff, tied;
    int tile, patch, vembd, vff, vlayers, scale;
} dims;

static const dims tiny = {1024, 96, 3, 6, 2, 256, 1, 64, 16, 96, 256, 2, 2};
static const dims s256m = {49280, 576, 30, 9, 3, 1536, 0, 512, 16, 768, 3072, 12, 4};

static int add_expect(expect *e, int n, const char *name, int nd, int64_t a, int64_t b, int64_t c,
                      int64_t d) {
    e[n].name = strdup(name);
    e[n].n_dims = nd;
    e[n].ne[0] = a, e[n].ne[1] = b, e[n].ne[2] = c, e[n].ne[3] = d;
    return n + 1;
}

static int text_expect(const dims *m, expect *e) {
    int n = 0, hd = m->embd / m->heads;
    char nm[64];
    n = add_expect(e, n, "token_embd.weight", 2, m->embd, m->vocab, 1, 1);
    for (int i = 0; i < m->layers; i++) {
#define T(suffix, nd, a, b)                                                                                  \
    snprintf(nm, sizeof nm, "blk.%d." suffix, i);                                                            \
    n = add_expect(e, n, nm, nd, a, b, 1, 1);
        T("attn_norm.weight", 1, m->embd, 1);
        T("attn_q.weight", 2, m->embd, m->heads * hd);
        T("attn_k.weight", 2, m->embd, m->kv_heads * hd);
        T("attn_v.weight", 2, m->embd, m->kv_heads * hd);
        T("attn_output.weight", 2, m->heads * hd, m->embd);
        T("ffn_norm.weight", 1, m->embd, 1);
        T("ffn_gate.weight", 2, m->embd, m->ff);
        T("ffn_up.weight", 2, m->embd, m->ff);
        T("ffn_down.weight", 2, m->ff, m->embd);
#undef T
    }
    n = add_expect(e, n, "output_norm.weight", 1, m->embd, 1, 1, 1);
    if (!m->tied) n = add_expect(e, n, "output.weight", 2, m->embd, m->vocab, 1, 1);
    return n;
}

static int mmproj_expect(const dims *m, expect *e) {
    int n = 0, g = m->tile / m->patch;
    char nm[64];
    n = add_expect(e, n, "v.patch_embd.weight", 4, m->patch, m->patch, 3, m->vembd);
    n = add_expect(e, n, "v.patch_embd.bias", 1, m->vembd, 1, 1, 1);
    n = add_expect(e, n, "v.position_embd.weight", 2, m->vembd, g * g, 1, 1);
    static const char *const lin[4] = {"attn_q", "attn_k", "attn_v", "attn_out"};
    for (int i = 0; i < m->vlayers; i++) {
        for (int k = 0; k < 4; k++) {
            snprintf(nm, sizeof nm, "v.blk.%d.%s.weight", i, lin[k]);
            n = add_expect(e, n, nm, 2, m->vembd, m->vembd, 1, 1);
            snprintf(nm, sizeof nm, "v.blk.%d.%s.bias", i, lin[k]);
            n = add_expect(e, n, nm, 1, m->vembd, 1, 1, 1);
        }
        static const char *const ln[4] = {"ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias"};
        for (int k = 0; k < 4; k++) {
            snprintf(nm, sizeof nm, "v.blk.%d.%s", i, ln[k]);
            n = add_expect(e, n, nm, 1, m->vembd, 1, 1, 1);
        }
        snprintf(nm, sizeof nm, "v.blk.%d.ffn_up.weight", i);
        n = add_expect(e, n, nm, 2, m->vembd, m->vff, 1, 1);
        snprintf(nm, sizeof nm, "v.blk.%d.ffn_up.bias", i);
        n = add_expect(e, n, nm, 1, m->vff, 1, 1, 1);
        snprintf(nm, sizeof nm, "v.blk.%d.ffn_down.weight", i);
        n = add_expect(e, n, nm, 2, m->vff, m->vembd, 1, 1);
        snprintf(nm, sizeof nm, "v.blk.%d.ffn_down.bias", i);
        n = add_expect(e, n, nm, 1, m->vembd, 1, 1, 1);
    }
    n = add_expect(e, n, "v.post_ln.weight", 1, m->vembd, 1, 1, 1);
    n = add_expect(e, n, "v.post_ln.bias", 1, m->vembd, 1, 1, 1);
    n = add_expect(e, n, "mm.model.fc.weight", 2, (int64_t)m->vembd * m->scale * m->scale, m->embd, 1, 1);
    return n;
}

static void free_expect(expect *e, int n) {
    for (int i = 0; i < n; i++)
        free((void *)e[i].name);
}

static void check_tensors(const gguf_file *f, const expect *e, int n, const char *what) {
    CHECK(f->n_tensors == (uint64_t)n, "%s: %llu tensors, expected %d", what,
          (unsigned long long)f->n_tensors, n);
    for (int i = 0; i < n; i++) {
        const gguf_tensor *t = gguf_find_tensor(f, e[i].name);
        CHECK(t != NULL, "%s: tensor %s missing", what, e[i].name);
        if (!t) continue;
        int same = t->n_dims == e[i].n_dims;
        for (int d = 0; d < 4 && same; d++)
            same = t->ne[d] == e[i].ne[d];
        CHECK(same, "%s: %s has a different shape", what, e[i].name);
        CHECK(t->offset % 32 == 0, "%s: %s misaligned", what, e[i].name);
        if (t->n_dims == 1) CHECK(t->type == SVLM_F32, "%s: 1-D %s is not F32", what, e[i].name);
    }
}

static void check_u32(const gguf_file *f, const char *key, uint32_t want) {
    uint32_t v = 0;
    CHECK(gguf_get_u32(f, key, &v) && v == want, "%s = %u, expected %u", key, v, want);
}

static void check_f32(const gguf_file *f, const char *key, float want) {
    float v = 0;
    CHECK(gguf_get_f32(f, key, &v) && fabsf(v - want) <= 1e-6f * fabsf(want), "%s = %g, expected %g", key, v,
          want);
}

static void check_str(const gguf_file *f, const char *key, const char *want) {
    char *s = gguf_get_str_dup(f, key);
    CHECK(s && !strcmp(s, want), "%s = '%s', expected '%s'", key, s ? s : "(absent)", want);
    free(s);
}

static void check_text_keys(const gguf_file *f, const dims *m, uint32_t file_type) {
    check_str(f, "general.architecture", "llama");
    check_u32(f, "general.file_type", file_type);
    check_u32(f, "general.quantization_version", 2);
    check_u32(f, "llama.block_count", (uint32_t)m->layers);
    check_u32(f, "llama.embedding_length", (uint32_t)m->embd);
    check_u32(f, "llama.feed_forward_length", (uint32_t)m->ff);
    check_u32(f, "llama.attention.head_count", (uint32_t)m->heads);
    check_u32(f, "llama.attention.head_count_kv", (uint32_t)m->kv_heads);
    check_u32(f, "llama.rope.dimension_count", (uint32_t)(m->embd / m->heads));
    check_u32(f, "llama.vocab_size", (uint32_t)m->vocab);
    check_f32(f, "llama.rope.freq_base", 100000.0f);
    check_f32(f, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    CHECK(gguf_find_kv(f, "llama.context_length") != NULL, "context_length missing");
    check_str(f, "tokenizer.ggml.model", "gpt2");
    check_str(f, "tokenizer.ggml.pre", "smollm");
    const gguf_kv *tok = gguf_get_arr(f, "tokenizer.ggml.tokens", GGUF_STRING);
    const gguf_kv *typ = gguf_get_arr(f, "tokenizer.ggml.token_type", GGUF_INT32);
    CHECK(tok && tok->arr_n == (uint64_t)m->vocab, "token count");
    CHECK(typ && typ->arr_n == (uint64_t)m->vocab, "token_type count");
    CHECK(gguf_get_arr(f, "tokenizer.ggml.merges", GGUF_STRING) != NULL, "merges missing");
    check_u32(f, "tokenizer.ggml.bos_token_id", 1);
    check_u32(f, "tokenizer.ggml.unknown_token_id", 0);
    check_u32(f, "tokenizer.ggml.padding_token_id", 2);
    char *tpl = gguf_get_str_dup(f, "tokenizer.chat_template");
    /* llama.cpp picks its smolvlm chat format when the template has both markers. */
    CHECK(tpl && strstr(tpl, "<|im_start|>") && strstr(tpl, "<end_of_utterance>"), "chat template");
    free(tpl);
}

static void check_mmproj_keys(const gguf_file *f, const dims *m) {
    check_str(f, "general.architecture", "clip");
    check_str(f, "general.type", "mmproj");
    check_str(f, "clip.projector_type", "idefics3");
    int b = 0;
    CHECK(gguf_get_bool(f, "clip.has_vision_encoder", &b) && b, "has_vision_encoder");
    CHECK(gguf_get_bool(f, "clip.use_gelu", &b) && b, "use_gelu");
    check_u32(f, "clip.vision.image_size", (uint32_t)m->tile);
    check_u32(f, "clip.vision.patch_size", (uint32_t)m->patch);
    check_u32(f, "clip.vision.embedding_length", (uint32_t)m->vembd);
    check_u32(f, "clip.vision.feed_forward_length", (uint32_t)m->vff);
    check_u32(f, "clip.vision.block_count", (uint32_t)m->vlayers);
    check_u32(f, "clip.vision.projector.scale_factor", (uint32_t)m->scale);
    check_u32(f, "clip.vision.projection_dim", (uint32_t)m->embd);
    check_f32(f, "clip.vision.attention.layer_norm_epsilon", 1e-6f);
    CHECK(gguf_find_kv(f, "clip.vision.attention.head_count") &&
              gguf_find_kv(f, "clip.vision.preproc_image_size"),
          "head_count / preproc_image_size missing");
    const gguf_kv *mean = gguf_get_arr(f, "clip.vision.image_mean", GGUF_FLOAT32);
    const gguf_kv *std = gguf_get_arr(f, "clip.vision.image_std", GGUF_FLOAT32);
    CHECK(mean && mean->arr_n == 3 && std && std->arr_n == 3, "image_mean/std");
}

/* Dequantized values of a tensor (caller frees). */
static float *tensor_values(const gguf_tensor *t, int64_t *count) {
    int64_t n = 1, ne0 = t->ne[0];
    for (int d = 0; d < t->n_dims; d++)
        n *= t->ne[d];
    float *out = malloc((size_t)n * sizeof *out);
    size_t row = svlm_row_bytes(t->type, ne0);
    for (int64_t r = 0; r < n / ne0 && out; r++)
        if (svlm_dequantize_row(t->type, (const uint8_t *)t->data + r * row, out + r * ne0, ne0)) {
            free(out);
            return NULL;
        }
    *count = n;
    return out;
}

/* Every tensor of file f holds the reference file's values within the type's error. */
static void check_values_match(const gguf_file *f, const gguf_file *ref, const char *what) {
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i], *r = gguf_find_tensor(ref, t->name);
        if (!r) continue;
        int64_t n = 0, nr = 0;
        float *a = tensor_values(t, &n), *b = tensor_values(r, &nr);
        CHECK(a && b && n == nr, "%s: cannot read %s", what, t->name);
        if (a && b && n == nr) {
            double err2 = 0, ref2 = 0, dev2 = 0, mean = 0;
            for (int64_t k = 0; k < n; k++)
                mean += b[k];
            mean /= (double)n;
            for (int64_t k = 0; k < n; k++) {
                err2 += (double)(a[k] - b[k]) * (a[k] - b[k]);
                ref2 += (double)b[k] * b[k];
                dev2 += (b[k] - mean) * (b[k] - mean);
            }
            /* Relative RMS error against the spread of the weights: 4-bit types land near
             * 0.1, 8-bit near 0.005; 0.2 catches misplaced or garbage data (≈1.4). */
            double rel = sqrt(err2 / (dev2 > 0 ? dev2 : ref2 > 0 ? ref2 : 1));
            CHECK(rel < 0.2, "%s: %s (type %d) differs from f32: rel rms %.3f", what, t->name, (int)t->type,
                  rel);
        }
        free(a);
        free(b);
    }
}

static void check_f32_statistics(const gguf_file *f) {
    const gguf_tensor *t = gguf_find_tensor(f, "blk.0.attn_q.weight");
    const gguf_tensor *norm = gguf_find_tensor(f, "blk.0.attn_norm.weight");
    REQUIRE(t && norm && t->type == SVLM_F32, "f32 tensors missing");
    int64_t n = 0;
    float *v = tensor_values(t, &n);
    REQUIRE(v, "read attn_q");
    double s = 0, s2 = 0;
    for (int64_t i = 0; i < n; i++) {
        CHECK(isfinite(v[i]), "non-finite weight");
        s += v[i], s2 += (double)v[i] * v[i];
    }
    double mean = s / n, sd = sqrt(s2 / n - mean * mean);
    /* 9216 draws: the sample std is within a few percent of 0.02. */
    CHECK(fabs(mean) < 0.002 && fabs(sd - 0.02) < 0.002, "attn_q mean %g std %g, want 0 / 0.02", mean, sd);
    free(v);
    v = tensor_values(norm, &n);
    REQUIRE(v, "read attn_norm");
    s = 0;
    for (int64_t i = 0; i < n; i++)
        s += v[i];
    CHECK(fabs(s / n - 1.0) < 0.01, "norm mean %g, want 1", s / n);
    free(v);
}

static int same_bytes(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int same = fa && fb;
    while (same) {
        int ca = fgetc(fa), cb = fgetc(fb);
        if (ca != cb) same = 0;
        if (ca == EOF || cb == EOF) break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return same;
}

static const struct {
    const char *name;
    uint32_t file_type;
} types[] = {
    {"f32", 0},  {"f16", 1},  {"bf16", 32}, {"q8_0", 7},  {"q4_0", 2},  {"q4_1", 3},
    {"q5_0", 8}, {"q5_1", 9}, {"q4_k", 14}, {"q5_k", 16}, {"q6_k", 18}, {"q4_k_m", 15},
};

static void test_mkmodel_tiny(void) {
    expect te[64], me[64];
    int nt = text_expect(&tiny, te), nm = mmproj_expect(&tiny, me);
    gguf_file *ref = NULL, *ref_mm = NULL;
    char args[4300], path[4300], mpath[4300];
    svlm_err err = {0};
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        snprintf(args, sizeof args,
                 "mkmodel --arch smolvlm --shape tiny --type %s --mmproj-type %s --seed 7 -o '%s/tiny-%s'",
                 types[k].name, !strcmp(types[k].name, "q4_k_m") ? "q4_k" : types[k].name, tmp,
                 types[k].name);
        CHECK(run(args) == 0, "mkmodel --type %s failed", types[k].name);
        snprintf(path, sizeof path, "%s/tiny-%s.gguf", tmp, types[k].name);
        snprintf(mpath, sizeof mpath, "%s/tiny-%s-mmproj.gguf", tmp, types[k].name);
        gguf_file *f = NULL, *m = NULL;
        CHECK(gguf_open(path, &f, &err) == SVLM_OK, "%s: %s", path, err.msg);
        CHECK(gguf_open(mpath, &m, &err) == SVLM_OK, "%s: %s", mpath, err.msg);
        if (f) {
            check_text_keys(f, &tiny, types[k].file_type);
            check_tensors(f, te, nt, types[k].name);
        }
        if (m) {
            check_mmproj_keys(m, &tiny);
            check_tensors(m, me, nm, types[k].name);
        }
        if (k == 0) {
            ref = f, ref_mm = m;
            if (f) check_f32_statistics(f);
            continue;
        }
        if (f && ref) check_values_match(f, ref, types[k].name);
        if (m && ref_mm) check_values_match(m, ref_mm, types[k].name);
        gguf_close(f);
        gguf_close(m);
    }
    gguf_close(ref);
    gguf_close(ref_mm);
    free_expect(te, nt);
    free_expect(me, nm);

    /* Same seed → same bytes; another seed → other weights, same layout. */
    snprintf(args, sizeof args,
             "mkmodel --arch smolvlm --shape tiny --type q4_0 --mmproj-type q4_0 --seed 7 -o '%s/again'",
             tmp);
    CHECK(run(args) == 0, "mkmodel again");
    CHECK(same_bytes(tmp_path("again.gguf"), tmp_path("tiny-q4_0.gguf")), "same seed, different text bytes");
    CHECK(same_bytes(tmp_path("again-mmproj.gguf"), tmp_path("tiny-q4_0-mmproj.gguf")),
          "same seed, different mmproj");
    snprintf(args, sizeof args, "mkmodel --arch smolvlm --shape tiny --type q4_0 --seed 8 -o '%s/other'",
             tmp);
    CHECK(run(args) == 0, "mkmodel other seed");
    CHECK(!same_bytes(tmp_path("other.gguf"), tmp_path("tiny-q4_0.gguf")), "other seed, same text bytes");
    gguf_file *a = NULL, *b = NULL;
    if (gguf_open(tmp_path("other.gguf"), &a, &err) == SVLM_OK &&
        gguf_open(tmp_path("tiny-q4_0.gguf"), &b, &err) == SVLM_OK) {
        CHECK(a->size == b->size && a->n_tensors == b->n_tensors, "other seed changed the layout");
        const gguf_tensor *ta = gguf_find_tensor(a, "blk.1.ffn_up.weight"),
                          *tb = gguf_find_tensor(b, "blk.1.ffn_up.weight");
        CHECK(ta && tb && memcmp(ta->data, tb->data, ta->nbytes) != 0, "other seed, same weights");
    }
    gguf_close(a);
    gguf_close(b);

    /* --arch llama: the text model only. */
    snprintf(args, sizeof args, "mkmodel --arch llama --shape tiny --type f16 -o '%s/plain'", tmp);
    CHECK(run(args) == 0, "mkmodel --arch llama");
    CHECK(file_exists(tmp_path("plain.gguf")) && !file_exists(tmp_path("plain-mmproj.gguf")),
          "llama arch files");

    /* Bad flags get a usage error; an unwritable prefix fails cleanly. */
    CHECK(run("mkmodel --arch smolvlm --shape tiny --type q3_k -o x") == 2, "unknown type accepted");
    CHECK(run("mkmodel --arch gpt --shape tiny -o x") == 2, "unknown arch accepted");
    CHECK(run("mkmodel --arch llama --shape huge -o x") == 2, "unknown shape accepted");
    CHECK(run("mkmodel --arch llama --shape tiny --seed -1 -o x") == 2, "negative seed accepted");
    CHECK(run("mkmodel --arch llama --shape tiny") == 2, "missing -o accepted");
    snprintf(args, sizeof args, "mkmodel --arch llama --shape tiny -o '%s/missing/dir/m'", tmp);
    CHECK(run(args) == 1, "unwritable prefix accepted");
}

/* llama.cpp's use_more_bits, as the spec states it (§5). */
static int more_bits(int i, int n) {
    return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2;
}

static void test_mkmodel_256m_list(void) {
    expect te[400], me[256];
    int nt = text_expect(&s256m, te), nm = mmproj_expect(&s256m, me);
    char args[4300];
    snprintf(args, sizeof args,
             "mkmodel --arch smolvlm --shape smolvlm2-256m --type q4_k_m --list > '%s/list.txt'", tmp);
    const char *bin = getenv("SVLM_BIN");
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "'%s' %s", bin, args);
    CHECK(system(cmd) == 0, "mkmodel --list failed");
    FILE *f = fopen(tmp_path("list.txt"), "r");
    REQUIRE(f, "no list output");
    char line[512];
    int seen_t = 0, seen_m = 0;
    while (fgets(line, sizeof line, f)) {
        char file[16], name[80], type[16];
        long long ne[4] = {1, 1, 1, 1};
        int k = sscanf(line, "%15s %79s %15s %lld %lld %lld %lld", file, name, type, &ne[0], &ne[1], &ne[2],
                       &ne[3]);
        REQUIRE(k >= 4, "bad list line: %s", line);
        int is_text = !strcmp(file, "text");
        expect *e = is_text ? te : me;
        int n = is_text ? nt : nm, idx = -1;
        for (int i = 0; i < n; i++)
            if (!strcmp(e[i].name, name)) idx = i;
        CHECK(idx >= 0, "unexpected tensor %s %s", file, name);
        if (idx < 0) continue;
        CHECK(k - 3 == e[idx].n_dims, "%s: %d dims, expected %d", name, k - 3, e[idx].n_dims);
        for (int d = 0; d < 4; d++)
            CHECK(ne[d] == e[idx].ne[d], "%s ne[%d] = %lld, expected %lld", name, d, ne[d],
                  (long long)e[idx].ne[d]);
        is_text ? seen_t++ : seen_m++;
        /* The Q4_K_M mix on 576-wide rows (spec §5): Q4_K → Q5_0 and Q6_K → Q8_0 fallbacks;
         * only ffn_down (1536-wide rows) keeps K types. The mmproj is Q8_0, F32 embeddings. */
        const char *want = NULL;
        int layer = -1;
        sscanf(name, "blk.%d.", &layer);
        if (k == 4)
            want = "f32";
        else if (!is_text)
            want = strstr(name, "patch_embd") || strstr(name, "position_embd") ? "f32" : "q8_0";
        else if (!strcmp(name, "output.weight"))
            want = "q8_0";
        else if (strstr(name, "ffn_down"))
            want = more_bits(layer, 30) ? "q6_k" : "q4_k";
        else if (strstr(name, "attn_v"))
            want = more_bits(layer, 30) ? "q8_0" : "q5_0";
        else
            want = "q5_0";
        CHECK(!strcmp(type, want), "%s is %s, expected %s", name, type, want);
    }
    fclose(f);
    CHECK(seen_t == nt && nt == 273, "text tensors listed %d of %d", seen_t, nt);
    CHECK(seen_m == nm && nm == 198, "mmproj tensors listed %d of %d", seen_m, nm);
    free_expect(te, nt);
    free_expect(me, nm);
}

/* Metadata arrays are not aligned in GGUF files: read elements byte-wise. */
static int32_t elem_i32(const gguf_kv *kv, uint64_t i) {
    int32_t v;
    memcpy(&v, kv->data + 4 * i, 4);
    return v;
}

static int token_id(const gguf_kv *tok, const char *text) {
    size_t n = strlen(text);
    for (uint64_t i = 0; i < tok->arr_n; i++)
        if (tok->arr_strs[i].len == n && !memcmp(tok->arr_strs[i].ptr, text, n)) return (int)i;
    return -1;
}

static int cmp_str(const void *a, const void *b) {
    const gguf_str *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->ptr, y->ptr, n);
    return c ? c : (x->len > y->len) - (x->len < y->len);
}

static int has_token(const gguf_str *sorted, uint64_t n, const char *p, size_t len) {
    gguf_str key = {p, len};
    return bsearch(&key, sorted, (size_t)n, sizeof *sorted, cmp_str) != NULL;
}

static void test_mkmodel_real_vocab(void) {
    char args[4300];
    snprintf(args, sizeof args, "mkmodel --arch smolvlm --shape smolvlm2-256m --vocab-only -o '%s/vocab'",
             tmp);
    CHECK(run(args) == 0, "mkmodel --vocab-only failed");
    gguf_file *f = NULL;
    svlm_err err = {0};
    {
        svlm_status st_ = gguf_open(tmp_path("vocab.gguf"), &f, &err);
        REQUIRE(st_ == SVLM_OK, "%s", err.msg);
    }
    CHECK(f->n_tensors == 0, "vocab-only file has tensors");
    check_text_keys(f, &s256m, 1); /* default --type f16 */
    const gguf_kv *tok = gguf_get_arr(f, "tokenizer.ggml.tokens", GGUF_STRING);
    const gguf_kv *typ = gguf_get_arr(f, "tokenizer.ggml.token_type", GGUF_INT32);
    const gguf_kv *mer = gguf_get_arr(f, "tokenizer.ggml.merges", GGUF_STRING);
    REQUIRE(tok && typ && mer && tok->arr_n == 49280, "vocabulary arrays");
    /* SmolVLM2's special ids (spec §2.4, §3, §6.1). */
    struct {
        const char *text;
        int id;
    } specials[] = {
        {"<|endoftext|>", 0},     {"<|im_start|>", 1},
        {"<|im_end|>", 2},        {"<global-img>", 49152},
        {"<row_1_col_1>", 49153}, {"<row_2_col_3>", 49153 + 6 + 2},
        {"<row_6_col_6>", 49188}, {"<fake_token_around_image>", 49189},
        {"<image>", 49190},       {"<end_of_utterance>", 49279},
    };
    for (size_t i = 0; i < sizeof specials / sizeof specials[0]; i++) {
        CHECK(token_id(tok, specials[i].text) == specials[i].id, "%s at %d, expected %d", specials[i].text,
              token_id(tok, specials[i].text), specials[i].id);
        CHECK(elem_i32(typ, (uint64_t)specials[i].id) == 3, "%s is not CONTROL", specials[i].text);
    }
    check_u32(f, "tokenizer.ggml.eos_token_id", 49279);
    /* Token texts are unique; the byte symbols are all there ('Ġ' is the space, 'Ċ' newline). */
    gguf_str *sorted = malloc((size_t)tok->arr_n * sizeof *sorted);
    REQUIRE(sorted, "oom");
    memcpy(sorted, tok->arr_strs, (size_t)tok->arr_n * sizeof *sorted);
    qsort(sorted, (size_t)tok->arr_n, sizeof *sorted, cmp_str);
    int dups = 0;
    for (uint64_t i = 1; i < tok->arr_n; i++)
        dups += !cmp_str(&sorted[i - 1], &sorted[i]);
    CHECK(dups == 0, "%d duplicate token texts", dups);
    CHECK(token_id(tok, "Ġ") >= 0 && token_id(tok, "Ċ") >= 0 && token_id(tok, "a") >= 0 &&
              token_id(tok, "Ā") >= 0,
          "byte symbols missing");
    /* Merges: "left right", both parts and the joined text are tokens; one merge per
     * normal token beyond the 256 byte symbols. */
    int bad = 0, normal = 0;
    for (uint64_t i = 0; i < typ->arr_n; i++)
        normal += elem_i32(typ, i) == 1;
    CHECK((uint64_t)(normal - 256) == mer->arr_n, "%d normal tokens for %llu merges", normal,
          (unsigned long long)mer->arr_n);
    for (uint64_t i = 0; i < mer->arr_n && bad < 5; i++) {
        const char *p = mer->arr_strs[i].ptr;
        size_t len = mer->arr_strs[i].len;
        const char *sp = memchr(p, ' ', len);
        char joined[512];
        int ok = sp && sp != p && (size_t)(sp - p) + 1 < len && len < sizeof joined;
        if (ok) {
            size_t l = (size_t)(sp - p), r = len - l - 1;
            memcpy(joined, p, l);
            memcpy(joined + l, sp + 1, r);
            ok = !memchr(sp + 1, ' ', r) && has_token(sorted, tok->arr_n, p, l) &&
                 has_token(sorted, tok->arr_n, sp + 1, r) && has_token(sorted, tok->arr_n, joined, l + r);
        }
        if (!ok) {
            bad++;
            CHECK(ok, "merge %llu '%.*s' is inconsistent", (unsigned long long)i, (int)len, p);
        }
    }
    CHECK(token_id(tok, "Ġthe") >= 0, "no 'Ġthe' token: merges are not learned from English");
    free(sorted);
    gguf_close(f);
}

/* Removes what this test wrote (about 20 MB), unless something failed: then it stays for a look. */
static void cleanup(void) {
    if (svlm_test_failures) {
        printf("files kept in %s\n", tmp);
        return;
    }
    static const char *const names[] = {"rt.gguf",    "short.gguf",        "again.gguf", "again-mmproj.gguf",
                                        "other.gguf", "other-mmproj.gguf", "plain.gguf", "vocab.gguf",
                                        "list.txt",   "stderr.txt"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        remove(tmp_path(names[i]));
    char name[64];
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        snprintf(name, sizeof name, "tiny-%s.gguf", types[k].name);
        remove(tmp_path(name));
        snprintf(name, sizeof name, "tiny-%s-mmproj.gguf", types[k].name);
        remove(tmp_path(name));
    }
    rmdir(tmp);
}

int test_main(void) {
    snprintf(tmp, sizeof tmp, "%s", test_tmpdir());
    test_writer_roundtrip();
    test_writer_errors();
    if (!getenv("SVLM_BIN")) {
        printf("SVLM_BIN not set: skipping the mkmodel checks\n");
    } else {
        test_mkmodel_tiny();
        test_mkmodel_256m_list();
        test_mkmodel_real_vocab();
    }
    cleanup();
    return 0;
}
