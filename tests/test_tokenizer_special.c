/*
 * The special-token partition. Part 1 checks it against a direct transcription of llama.cpp's
 * algorithm (each special token in turn, longest text first then lowest id, takes its leftmost
 * non-overlapping occurrences in the raw text left): random vocabularies of overlapping
 * control, user-defined and unknown tokens (equal texts included) over a five-letter alphabet,
 * random texts, both parse_special settings. Part 2 loads a vocabulary of 50,000 control tokens
 * and splits 100 KB of text holding 8,000 of them into exactly the expected ids; the partition
 * used to scan the text once per special token, which took seconds for this.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llm/gguf.h"
#include "llm/gguf_write.h"
#include "llm/tokenizer.h"
#include "test.h"

enum { TYPE_UNKNOWN = 2, TYPE_CONTROL = 3, TYPE_USER = 4 };

static uint32_t lcg(uint32_t *state) {
    *state = *state * 1664525u + 1013904223u;
    return *state >> 8;
}

/* ---- a byte-level BPE vocabulary: the specials first, then one token per byte -------------- */

/* GPT-2's byte -> code point map, as UTF-8. */
static void byte_symbol(int b, char out[3]) {
    int n = 0;
    unsigned c = 0;
    for (int x = 0; x < 256; x++) {
        int direct = (x >= 0x21 && x <= 0x7E) || (x >= 0xA1 && x <= 0xAC) || (x >= 0xAE && x <= 0xFF);
        if (x == b) {
            c = direct ? (unsigned)x : 256u + (unsigned)n;
            break;
        }
        n += !direct;
    }
    if (c < 0x80)
        out[0] = (char)c, out[1] = 0;
    else
        out[0] = (char)(0xC0 | (c >> 6)), out[1] = (char)(0x80 | (c & 0x3F)), out[2] = 0;
}

/* Writes and loads a vocabulary: ids 0..n_special-1 the given specials, then byte b at
 * n_special + b (so a one-byte special text still reads as its byte: the last id wins), then
 * one merge of bytes 0 and 1, which no text here holds (the file needs a merge list). */
static svlm_tokenizer *load_vocab(const char *name, const char *const *specials, const int32_t *types,
                                  size_t n_special) {
    size_t n = n_special + 257;
    const char **tokens = malloc(n * sizeof *tokens);
    int32_t *ty = malloc(n * sizeof *ty);
    static char bytes[256][3];
    REQUIRE(tokens && ty, "out of memory");
    for (size_t i = 0; i < n_special; i++)
        tokens[i] = specials[i], ty[i] = types[i];
    for (int b = 0; b < 256; b++) {
        byte_symbol(b, bytes[b]);
        tokens[n_special + (size_t)b] = bytes[b], ty[n_special + (size_t)b] = 1;
    }
    char merged[8], merge[8];
    snprintf(merged, sizeof merged, "%s%s", bytes[0], bytes[1]);
    snprintf(merge, sizeof merge, "%s %s", bytes[0], bytes[1]);
    tokens[n - 1] = merged, ty[n - 1] = 1;
    const char *merges[] = {merge};

    char path[4096];
    snprintf(path, sizeof path, "%s/%s", test_tmpdir(), name);
    svlm_err err = {0};
    gguf_writer *w = NULL;
    svlm_status st = gguf_writer_create(path, 0, &w, &err);
    if (!st) st = gguf_writer_set_str(w, "tokenizer.ggml.model", "gpt2", &err);
    if (!st) st = gguf_writer_set_str(w, "tokenizer.ggml.pre", "gpt-2", &err);
    if (!st) st = gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", tokens, n, &err);
    if (!st) st = gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_INT32, ty, n, &err);
    if (!st) st = gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", merges, 1, &err);
    if (!st) st = gguf_writer_finish(w, &err);
    gguf_writer_destroy(w);
    free(tokens);
    free(ty);
    REQUIRE(st == SVLM_OK, "writing %s: %s", path, err.msg);
    gguf_file *f = NULL;
    svlm_tokenizer *t = NULL;
    st = gguf_open(path, &f, &err);
    if (!st) st = svlm_tokenizer_load(f, &t, &err);
    gguf_close(f);
    REQUIRE(st == SVLM_OK, "loading %s: %s", path, err.msg);
    return t;
}

/* ---- the reference: llama.cpp's tokenizer_st_partition, one pass per special token --------- */

typedef struct ref_frag {
    int id, off, len; /* id -1: raw text */
} ref_frag;

/* Splits the raw fragments of frags[0..n) around every occurrence of one token; returns the
 * new count (out has room for 2 * n + len + 1). */
static int split_by(const char *text, const ref_frag *frags, int n, int id, const char *s, int slen,
                    ref_frag *out) {
    int m = 0;
    for (int i = 0; i < n; i++) {
        if (frags[i].id >= 0) {
            out[m++] = frags[i];
            continue;
        }
        int pos = frags[i].off, end = frags[i].off + frags[i].len;
        for (int at = pos; at + slen <= end;) {
            if (memcmp(text + at, s, (size_t)slen)) {
                at++;
                continue;
            }
            if (at > pos) out[m++] = (ref_frag){-1, pos, at - pos};
            out[m++] = (ref_frag){id, at, slen};
            at = pos = at + slen;
        }
        if (pos < end) out[m++] = (ref_frag){-1, pos, end - pos};
    }
    return m;
}

/* The expected ids: specials in llama.cpp's order, then raw bytes as their byte tokens. */
static size_t reference_ids(const char *const *specials, const int32_t *types, int n_special,
                            const char *text, int len, int parse, int32_t *ids) {
    ref_frag *a = malloc((size_t)(3 * len + 4) * sizeof *a), *b = malloc((size_t)(3 * len + 4) * sizeof *b);
    int *order = malloc((size_t)(n_special + 1) * sizeof *order);
    REQUIRE(a && b && order, "out of memory");
    int n = 0;
    if (len) a[n++] = (ref_frag){-1, 0, len};
    for (int i = 0; i < n_special; i++) { /* longest first, then lowest id (insertion sort) */
        int j = i;
        for (; j > 0 && strlen(specials[order[j - 1]]) < strlen(specials[i]); j--)
            order[j] = order[j - 1];
        order[j] = i;
    }
    for (int k = 0; k < n_special; k++) {
        int id = order[k];
        if (!parse && types[id] != TYPE_USER) continue; /* control and unknown need parse_special */
        n = split_by(text, a, n, id, specials[id], (int)strlen(specials[id]), b);
        ref_frag *tmp = a;
        a = b;
        b = tmp;
    }
    size_t m = 0;
    for (int i = 0; i < n; i++) {
        if (a[i].id >= 0)
            ids[m++] = a[i].id;
        else
            for (int j = 0; j < a[i].len; j++)
                ids[m++] = n_special + (unsigned char)text[a[i].off + j];
    }
    free(a);
    free(b);
    free(order);
    return m;
}

static int same_ids(const svlm_tokenizer *t, const char *text, size_t len, int parse, const int32_t *exp,
                    size_t n_exp) {
    int32_t *ids = NULL;
    size_t n = 0;
    svlm_err err = {0};
    svlm_status st = svlm_tokenize(t, text, len, 0, parse, &ids, &n, &err);
    int same = st == SVLM_OK && n == n_exp && (n == 0 || !memcmp(ids, exp, n * sizeof *ids));
    free(ids);
    return same;
}

/* ---- part 1: random vocabularies against the reference ----------------------------------- */

static void random_word(uint32_t *rng, char *buf, int max_len) {
    static const char alphabet[] = "ab<|>";
    int len = 1 + (int)(lcg(rng) % (uint32_t)max_len);
    for (int i = 0; i < len; i++)
        buf[i] = alphabet[lcg(rng) % 5];
    buf[len] = 0;
}

static void test_random_vocabularies(void) {
    enum { VOCABS = 150, TEXTS = 40, MAX_SPECIAL = 14 };
    uint32_t rng = 2024;
    int cases = 0, bad = 0;
    for (int v = 0; v < VOCABS && bad < 5; v++) {
        char words[MAX_SPECIAL][8];
        const char *specials[MAX_SPECIAL];
        int32_t types[MAX_SPECIAL];
        int n_special = 1 + (int)(lcg(&rng) % MAX_SPECIAL);
        for (int i = 0; i < n_special; i++) {
            random_word(&rng, words[i], v % 3 ? 4 : 2); /* short words: many equal texts */
            specials[i] = words[i];
            types[i] = (int32_t[]){TYPE_CONTROL, TYPE_USER, TYPE_USER, TYPE_UNKNOWN}[lcg(&rng) % 4];
        }
        svlm_tokenizer *t = load_vocab("partition-random.gguf", specials, types, (size_t)n_special);
        for (int k = 0; k < TEXTS && bad < 5; k++) {
            char text[64];
            int len = (int)(lcg(&rng) % 48);
            for (int i = 0; i < len; i++)
                text[i] = "ab<|>c"[lcg(&rng) % 6];
            text[len] = 0;
            for (int parse = 0; parse < 2; parse++) {
                int32_t exp[64];
                size_t n_exp = reference_ids(specials, types, n_special, text, len, parse, exp);
                cases++;
                if (same_ids(t, text, (size_t)len, parse, exp, n_exp)) continue;
                bad++;
                CHECK(0, "vocabulary %d, text \"%s\", parse_special=%d: ids differ from llama.cpp's order", v,
                      text, parse);
                for (int i = 0; i < n_special; i++)
                    fprintf(stderr, "  special %d: \"%s\" type %d\n", i, specials[i], types[i]);
            }
        }
        svlm_tokenizer_free(t);
    }
    CHECK(bad == 0 && cases == 2 * VOCABS * TEXTS, "%d of %d cases differ", bad, cases);
    printf("random vocabularies: %d of %d cases as llama.cpp splits them\n", cases - bad, cases);
}

/* ---- part 2: 50,000 control tokens ------------------------------------------------------- */

enum { N_CONTROL = 50000, N_IN_TEXT = 8000 };

static void test_many_specials(void) {
    /* ids: <|s_00000|>.. control, then "<|s_" and "|>" user-defined (split out even without
     * parse_special, where the controls stay text) */
    const size_t n_special = N_CONTROL + 2;
    char *names = malloc((size_t)N_CONTROL * 12);
    const char **specials = malloc(n_special * sizeof *specials);
    int32_t *types = malloc(n_special * sizeof *types);
    REQUIRE(names && specials && types, "out of memory");
    for (int i = 0; i < N_CONTROL; i++) {
        snprintf(names + (size_t)i * 12, 12, "<|s_%05d|>", i);
        specials[i] = names + (size_t)i * 12;
        types[i] = TYPE_CONTROL;
    }
    const int32_t user_open = N_CONTROL, user_close = N_CONTROL + 1, byte0 = N_CONTROL + 2;
    specials[user_open] = "<|s_", types[user_open] = TYPE_USER;
    specials[user_close] = "|>", types[user_close] = TYPE_USER;
    svlm_tokenizer *t = load_vocab("partition-50k.gguf", specials, types, n_special);

    /* "ab" then a control token, 8,000 times (every id once at most, scattered): 104 KB */
    const size_t len = (size_t)N_IN_TEXT * 13;
    char *text = malloc(len + 1);
    int32_t *parsed = malloc((size_t)N_IN_TEXT * 3 * sizeof *parsed);
    int32_t *plain = malloc((size_t)N_IN_TEXT * 10 * sizeof *plain);
    REQUIRE(text && parsed && plain, "out of memory");
    size_t n_parsed = 0, n_plain = 0;
    for (int k = 0; k < N_IN_TEXT; k++) {
        int id = (int)((long)k * 7919 % N_CONTROL);
        memcpy(text + (size_t)k * 13, "ab", 2);
        memcpy(text + (size_t)k * 13 + 2, specials[id], 11);
        parsed[n_parsed++] = byte0 + 'a', parsed[n_parsed++] = byte0 + 'b', parsed[n_parsed++] = id;
        plain[n_plain++] = byte0 + 'a', plain[n_plain++] = byte0 + 'b', plain[n_plain++] = user_open;
        for (int d = 4; d < 9; d++)
            plain[n_plain++] = byte0 + specials[id][d];
        plain[n_plain++] = user_close;
    }
    text[len] = 0;
    CHECK(same_ids(t, text, len, 1, parsed, n_parsed), "50,000 controls: the parsed text differs");
    CHECK(same_ids(t, text, len, 0, plain, n_plain),
          "50,000 controls: the text without parse_special differs");
    printf("%d control tokens: %zu bytes holding %d of them split as expected\n", N_CONTROL, len, N_IN_TEXT);
    free(text);
    free(parsed);
    free(plain);
    free(names);
    free(specials);
    free(types);
    svlm_tokenizer_free(t);
}

int test_main(void) {
    test_random_vocabularies();
    test_many_specials();
    return 0;
}
