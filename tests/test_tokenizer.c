/*
 * Tokenizers. Part 1 builds small SPM and BPE vocabularies with the GGUF writer and checks
 * behaviours derived by hand from the algorithms (merge order by score / rank, byte
 * fallback, "▁" prefix rules, digit splitting, the \s+(?!\S) rule, contractions, special
 * tokens, pieces, detokenization, clean-up of spaces) and that malformed tokenizer metadata
 * is rejected with a clear error. Part 2 (needs ../shared) runs the 46 reference strings
 * beside each vocab GGUF (.inp/.out, made with the Hugging Face tokenizers) with
 * add_special = false and compares every id.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llm/gguf.h"
#include "llm/gguf_write.h"
#include "llm/tokenizer.h"
#include "test.h"

/* ---- helpers ------------------------------------------------------------------------------ */

static svlm_tokenizer *load(const char *path, svlm_status *st, svlm_err *err) {
    gguf_file *f = NULL;
    svlm_tokenizer *t = NULL;
    *st = gguf_open(path, &f, err);
    if (*st == SVLM_OK) *st = svlm_tokenizer_load(f, &t, err);
    gguf_close(f);
    return t;
}

/* Tokenizes and compares with the expected ids (n_exp of them). */
static void expect_ids(const svlm_tokenizer *t, const char *what, const char *text, int add_special,
                       int parse_special, const int32_t *exp, size_t n_exp) {
    int32_t *ids = NULL;
    size_t n = 0;
    svlm_err err = {0};
    svlm_status st = svlm_tokenize(t, text, strlen(text), add_special, parse_special, &ids, &n, &err);
    int same = st == SVLM_OK && n == n_exp && (n == 0 || !memcmp(ids, exp, n * sizeof *ids));
    CHECK(same, "%s: tokenize(\"%s\", add_special=%d, parse_special=%d) differs", what, text, add_special,
          parse_special);
    if (!same) {
        fprintf(stderr, "  got:");
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "\n  exp:");
        for (size_t i = 0; i < n_exp; i++)
            fprintf(stderr, " %d", exp[i]);
        fprintf(stderr, "\n");
    }
    free(ids);
}
#define EXPECT(t, what, text, add, parse, ...)                                                               \
    do {                                                                                                     \
        const int32_t exp_[] = {__VA_ARGS__};                                                                \
        expect_ids(t, what, text, add, parse, exp_, sizeof exp_ / sizeof exp_[0]);                           \
    } while (0)

static void expect_detok(const svlm_tokenizer *t, const char *what, const int32_t *ids, size_t n, int special,
                         const char *exp) {
    char *s = svlm_detokenize(t, ids, n, special);
    CHECK(s && !strcmp(s, exp), "%s: detokenize gave \"%s\", expected \"%s\"", what, s ? s : "(null)", exp);
    free(s);
}

typedef struct vocab_spec {
    const char *model, *pre;
    const char *const *tokens;
    size_t n_tokens;
    const float *scores;
    const int32_t *types;
    const char *const *merges;
    size_t n_merges;
    int with_bos_eos;
} vocab_spec;

static void write_vocab(const char *path, const vocab_spec *v) {
    svlm_err err = {0};
    gguf_writer *w = NULL;
    svlm_status st = gguf_writer_create(path, 0, &w, &err);
    if (!st) st = gguf_writer_set_str(w, "general.architecture", "llama", &err);
    if (!st && v->model) st = gguf_writer_set_str(w, "tokenizer.ggml.model", v->model, &err);
    if (!st && v->pre) st = gguf_writer_set_str(w, "tokenizer.ggml.pre", v->pre, &err);
    if (!st && v->tokens)
        st = gguf_writer_set_arr_str(w, "tokenizer.ggml.tokens", v->tokens, v->n_tokens, &err);
    if (!st && v->scores)
        st = gguf_writer_set_arr(w, "tokenizer.ggml.scores", GGUF_FLOAT32, v->scores, v->n_tokens, &err);
    if (!st && v->types)
        st = gguf_writer_set_arr(w, "tokenizer.ggml.token_type", GGUF_INT32, v->types, v->n_tokens, &err);
    if (!st && v->merges)
        st = gguf_writer_set_arr_str(w, "tokenizer.ggml.merges", v->merges, v->n_merges, &err);
    if (!st && v->with_bos_eos) st = gguf_writer_set_u32(w, "tokenizer.ggml.bos_token_id", 1, &err);
    if (!st && v->with_bos_eos) st = gguf_writer_set_u32(w, "tokenizer.ggml.eos_token_id", 2, &err);
    if (!st) st = gguf_writer_finish(w, &err);
    gguf_writer_destroy(w);
    REQUIRE(st == SVLM_OK, "writing %s: %s", path, err.msg);
}

static char *tmp_path(const char *name) {
    static char buf[8][4096];
    static int slot;
    char *b = buf[slot++ % 8];
    snprintf(b, sizeof buf[0], "%s/%s", test_tmpdir(), name);
    return b;
}

/* ---- part 1a: a small SentencePiece-style vocabulary -------------------------------------- */

#define SPM_BYTE(b) (3 + (b))
enum { SPM_SPACE = 259, SPM_A, SPM_B, SPM_SPACE_A, SPM_AB, SPM_N };

static void test_spm_synthetic(void) {
    static char names[SPM_N][8];
    const char *tokens[SPM_N];
    float scores[SPM_N];
    int32_t types[SPM_N];
    const char *fixed[] = {"<unk>", "<s>", "</s>"};
    const int32_t fixed_types[] = {2, 3, 3};
    for (int i = 0; i < 3; i++)
        tokens[i] = fixed[i], types[i] = fixed_types[i], scores[i] = 0;
    for (int b = 0; b < 256; b++) {
        snprintf(names[SPM_BYTE(b)], sizeof names[0], "<0x%02X>", b);
        tokens[SPM_BYTE(b)] = names[SPM_BYTE(b)];
        types[SPM_BYTE(b)] = 6;
        scores[SPM_BYTE(b)] = 0;
    }
    /* "▁a" and "ab" both exist but "▁ab" does not: which pair merges first decides the result. */
    const char *words[] = {"\xE2\x96\x81", "a", "b", "\xE2\x96\x81\x61" /* ▁a */, "ab"};
    const float word_scores[] = {-100, -100, -100, -1.0f, -0.5f};
    for (int i = 0; i < 5; i++)
        tokens[SPM_SPACE + i] = words[i], scores[SPM_SPACE + i] = word_scores[i], types[SPM_SPACE + i] = 1;
    vocab_spec v = {"llama", NULL, tokens, SPM_N, scores, types, NULL, 0, 1};
    const char *path = tmp_path("spm.gguf");
    write_vocab(path, &v);

    svlm_err err = {0};
    svlm_status st;
    svlm_tokenizer *t = load(path, &st, &err);
    REQUIRE(t, "loading the SPM vocabulary: %s", err.msg);
    CHECK(svlm_tokenizer_n_vocab(t) == SPM_N, "n_vocab %d", svlm_tokenizer_n_vocab(t));
    CHECK(svlm_tokenizer_bos(t) == 1 && svlm_tokenizer_eos(t) == 2, "bos/eos");
    CHECK(svlm_tokenizer_add_bos(t) == 1, "SPM adds BOS by default");
    CHECK(svlm_tokenizer_is_eog(t, 2) && !svlm_tokenizer_is_eog(t, 1), "EOS ends generation, BOS does not");
    CHECK(svlm_tokenizer_find(t, "<s>") == 1 && svlm_tokenizer_find(t, "nope") == -1, "find");

    /* "▁ab▁ab": "ab" (-0.5) beats "▁a" (-1), leaving "▁" alone. */
    EXPECT(t, "spm merge order", "ab ab", 0, 0, SPM_SPACE, SPM_AB, SPM_SPACE, SPM_AB);
    EXPECT(t, "spm BOS", "ab ab", 1, 0, 1, SPM_SPACE, SPM_AB, SPM_SPACE, SPM_AB);
    EXPECT(t, "spm prefix", "a", 0, 0, SPM_SPACE_A);
    EXPECT(t, "spm empty", "", 0, 0, );
    EXPECT(t, "spm empty with BOS", "", 1, 0, 1);
    /* Not a token: one byte token per UTF-8 byte. */
    EXPECT(t, "spm byte fallback", "\xC3\xA9", 0, 0, SPM_SPACE, SPM_BYTE(0xC3), SPM_BYTE(0xA9));
    EXPECT(t, "spm invalid utf-8", "\xFF", 0, 0, SPM_SPACE, SPM_BYTE(0xFF));
    /* After a parsed special token the next text gets its "▁" prefix again. */
    EXPECT(t, "spm special parsed", "<s>a", 1, 1, 1, 1, SPM_SPACE_A);
    EXPECT(t, "spm special as text", "<s>a", 0, 0, SPM_SPACE, SPM_BYTE('<'), SPM_BYTE('s'), SPM_BYTE('>'),
           SPM_A);

    const int32_t ab_ab[] = {SPM_SPACE, SPM_AB, SPM_SPACE, SPM_AB};
    expect_detok(t, "spm detok strips the prefix space", ab_ab, 4, 0, "ab ab");
    const int32_t with_bos[] = {1, SPM_SPACE_A};
    expect_detok(t, "spm detok after hidden BOS", with_bos, 2, 0, " a");
    expect_detok(t, "spm detok with specials", with_bos, 2, 1, "<s> a");
    char piece[8];
    CHECK(svlm_token_piece(t, SPM_BYTE('A'), 0, piece, sizeof piece) == 1 && piece[0] == 'A', "byte piece");
    CHECK(svlm_token_piece(t, SPM_SPACE_A, 0, piece, sizeof piece) == 2 && !memcmp(piece, " a", 2),
          "▁ piece");
    CHECK(svlm_token_piece(t, 1, 0, piece, sizeof piece) == 0, "hidden control piece");
    CHECK(svlm_token_piece(t, 1, 1, piece, sizeof piece) == 3 && !memcmp(piece, "<s>", 3),
          "shown control piece");
    CHECK(svlm_token_piece(t, -1, 1, piece, sizeof piece) == 0 &&
              svlm_token_piece(t, SPM_N, 1, piece, 8) == 0,
          "invalid ids give empty pieces");
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK(svlm_tokenize(t, NULL, 3, 0, 0, &ids, &n, &err) == SVLM_E_INVALID, "NULL text with a length");
    svlm_tokenizer_free(t);
}

/* ---- part 1b: a small byte-level BPE vocabulary -------------------------------------------- */

/* GPT-2's byte -> code point map, written out independently of the library's table. */
static unsigned gpt2_cpt(int b) {
    int n = 0;
    for (int c = 0; c < 256; c++) {
        int direct = (c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
        if (c == b) return direct ? (unsigned)c : 256u + (unsigned)n;
        if (!direct) n++;
    }
    return 0;
}

enum { BPE_AB = 256, BPE_SPACE_AB, BPE_12, BPE_BC, BPE_2SPACE, BPE_APOS_S, BPE_IM_END, BPE_USER, BPE_N };

static const char *write_bpe(const char *name, const char *pre) {
    static char names[256][4];
    const char *tokens[BPE_N];
    int32_t types[BPE_N];
    for (int b = 0; b < 256; b++) { /* token id b is the byte b */
        unsigned c = gpt2_cpt(b);
        if (c < 0x80)
            names[b][0] = (char)c, names[b][1] = 0;
        else
            names[b][0] = (char)(0xC0 | (c >> 6)), names[b][1] = (char)(0x80 | (c & 0x3F)), names[b][2] = 0;
        tokens[b] = names[b];
        types[b] = 1;
    }
    const char *words[] = {
        "ab", "\xC4\xA0\x61\x62" /* Ġab */, "12", "bc", "\xC4\xA0\xC4\xA0", "'s", "<|im_end|>", "<user>"};
    const int32_t word_types[] = {1, 1, 1, 1, 1, 1, 3, 4};
    for (int i = 0; i < 8; i++)
        tokens[256 + i] = words[i], types[256 + i] = word_types[i];
    const char *merges[] = {"a b", "\xC4\xA0 ab", "1 2", "b c", "\xC4\xA0 \xC4\xA0", "' s"};
    vocab_spec v = {"gpt2", pre, tokens, BPE_N, NULL, types, merges, 6, 0};
    const char *path = tmp_path(name);
    write_vocab(path, &v);
    return path;
}

static void test_bpe_synthetic(void) {
    svlm_err err = {0};
    svlm_status st;
    svlm_tokenizer *sm = load(write_bpe("bpe-smollm.gguf", "smollm"), &st, &err);
    REQUIRE(sm, "loading the smollm BPE vocabulary: %s", err.msg);
    svlm_tokenizer *g2 = load(write_bpe("bpe-gpt2.gguf", "gpt-2"), &st, &err);
    REQUIRE(g2, "loading the gpt-2 BPE vocabulary: %s", err.msg);

    CHECK(svlm_tokenizer_add_bos(sm) == 0, "BPE adds no BOS by default");
    EXPECT(sm, "bpe merges", "ab ab", 0, 0, BPE_AB, BPE_SPACE_AB);
    EXPECT(sm, "bpe add_special adds nothing", "ab ab", 1, 0, BPE_AB, BPE_SPACE_AB);
    /* "a b" (rank 0) is applied before "b c" (rank 3). */
    EXPECT(sm, "bpe merge rank", "abc", 0, 0, BPE_AB, 'c');
    /* smollm splits every digit off before merging; gpt-2 keeps the number together. */
    EXPECT(sm, "smollm digits", "x12", 0, 0, 'x', '1', '2');
    EXPECT(g2, "gpt-2 digits", "x12", 0, 0, 'x', BPE_12);
    /* \s+(?!\S): two spaces before a word leave one for the word; at the end they stay together. */
    EXPECT(sm, "space run before a word", "a  b", 0, 0, 'a', ' ', ' ', 'b');
    EXPECT(sm, "space run at the end", "a  ", 0, 0, 'a', BPE_2SPACE);
    /* Contractions are lower case only. */
    EXPECT(sm, "contraction", "it's", 0, 0, 'i', 't', BPE_APOS_S);
    EXPECT(sm, "no upper-case contraction", "it'S", 0, 0, 'i', 't', '\'', 'S');
    /* Bytes map to GPT-2 code points: é is C3 A9, the newline is Ċ. */
    EXPECT(sm, "byte mapping", "\xC3\xA9\n", 0, 0, 0xC3, 0xA9, '\n');
    EXPECT(sm, "invalid utf-8 becomes U+FFFD", "\xFF", 0, 0, 0xEF, 0xBF, 0xBD);
    /* Control tokens need parse_special; user-defined tokens are always split out. */
    EXPECT(sm, "control parsed", "<|im_end|>x", 0, 1, BPE_IM_END, 'x');
    EXPECT(sm, "control as text", "<|im_end|>x", 0, 0, '<', '|', 'i', 'm', '_', 'e', 'n', 'd', '|', '>', 'x');
    EXPECT(sm, "user-defined", "a<user>b", 0, 0, 'a', BPE_USER, 'b');

    CHECK(svlm_tokenizer_is_eog(sm, BPE_IM_END), "<|im_end|> ends generation");
    const int32_t ab_ab[] = {BPE_AB, BPE_SPACE_AB};
    expect_detok(sm, "bpe detok", ab_ab, 2, 0, "ab ab");
    const int32_t bytes_nl[] = {0xC3, 0xA9, '\n', BPE_IM_END};
    expect_detok(sm, "bpe detok bytes, hidden control", bytes_nl, 4, 0, "\xC3\xA9\n");
    expect_detok(sm, "bpe detok shown control", bytes_nl, 4, 1, "\xC3\xA9\n<|im_end|>");
    /* clean_up_tokenization_spaces: on for gpt-2, off for smollm. */
    const int32_t a_comma[] = {'a', ' ', ',', ' ', '\'', 's'};
    expect_detok(g2, "gpt-2 cleans spaces", a_comma, 6, 0, "a,'s");
    expect_detok(sm, "smollm keeps spaces", a_comma, 6, 0, "a , 's");
    svlm_tokenizer_free(sm);
    svlm_tokenizer_free(g2);
}

/* ---- part 1c: round trips and arbitrary bytes ---------------------------------------------- */

static uint32_t lcg(uint32_t *state) {
    *state = *state * 1664525u + 1013904223u;
    return *state >> 8;
}

/* Text from fragments that exercise every rule: letters, digits, space runs, newlines, tabs,
 * contractions, multi-byte characters, special-token text and its pieces. */
static size_t random_text(uint32_t *rng, char *buf, size_t cap) {
    static const char *const parts[] = {"a",
                                        "b",
                                        "ab",
                                        "abc",
                                        "x12",
                                        "7",
                                        " ",
                                        "  ",
                                        "\n",
                                        "\t",
                                        "'s",
                                        "'S",
                                        "it",
                                        "\xC3\xA9",
                                        "\xE6\x97\xA5",
                                        "\xF0\x9F\xA6\x99",
                                        "<s>",
                                        "</s>",
                                        "<|im_end|>",
                                        "<user>",
                                        "<",
                                        "|",
                                        ",",
                                        "?",
                                        "Hello",
                                        "\xE2\x80\x8D",
                                        "\xC2\xA0"};
    size_t n = 0, k = lcg(rng) % 12;
    for (size_t i = 0; i < k; i++) {
        const char *p = parts[lcg(rng) % (sizeof parts / sizeof parts[0])];
        size_t m = strlen(p);
        if (n + m >= cap) break;
        memcpy(buf + n, p, m);
        n += m;
    }
    buf[n] = 0;
    return n;
}

/* With every byte in the vocabulary, detokenizing gives back the text exactly (SPM: the
 * prefix space is added and removed again; BPE: no space clean-up for smollm). */
static void test_round_trips(void) {
    svlm_err err = {0};
    svlm_status st;
    svlm_tokenizer *spm = load(tmp_path("spm.gguf"), &st, &err);
    svlm_tokenizer *bpe = load(tmp_path("bpe-smollm.gguf"), &st, &err);
    REQUIRE(spm && bpe, "reloading the synthetic vocabularies: %s", err.msg);
    uint32_t rng = 12345;
    int bad = 0;
    for (int iter = 0; iter < 400; iter++) {
        char text[256];
        size_t n = random_text(&rng, text, sizeof text);
        svlm_tokenizer *t = iter % 2 ? bpe : spm;
        int parse = iter % 2; /* SPM would add a "▁" after a parsed special token */
        int32_t *ids = NULL;
        size_t n_ids = 0;
        st = svlm_tokenize(t, text, n, 0, parse, &ids, &n_ids, &err);
        char *back = st == SVLM_OK ? svlm_detokenize(t, ids, n_ids, 1) : NULL;
        if (!back || strcmp(back, text)) {
            bad++;
            CHECK(0, "%s round trip of \"%s\" gave \"%s\"", iter % 2 ? "bpe" : "spm", text,
                  back ? back : "(error)");
        }
        free(back);
        free(ids);
        if (bad > 5) break;
    }
    /* Arbitrary bytes (invalid UTF-8 included) give valid ids and no crash. */
    for (int iter = 0; iter < 400; iter++) {
        char text[64];
        size_t n = lcg(&rng) % sizeof text;
        for (size_t i = 0; i < n; i++)
            text[i] = (char)(lcg(&rng) & 0xFF);
        svlm_tokenizer *t = iter % 2 ? bpe : spm;
        int32_t *ids = NULL;
        size_t n_ids = 0;
        st = svlm_tokenize(t, text, n, iter % 3 == 0, iter % 4 == 0, &ids, &n_ids, &err);
        int in_range = st == SVLM_OK;
        for (size_t i = 0; in_range && i < n_ids; i++)
            in_range = ids[i] >= 0 && ids[i] < svlm_tokenizer_n_vocab(t);
        CHECK(in_range, "random bytes (iteration %d): status %d or an id out of range", iter, st);
        char *back = svlm_detokenize(t, ids, n_ids, iter % 2);
        CHECK(back != NULL, "detokenize of random ids");
        free(back);
        free(ids);
    }
    svlm_tokenizer_free(spm);
    svlm_tokenizer_free(bpe);
}

/* ---- part 1d: malformed metadata ----------------------------------------------------------- */

static void expect_load_error(const char *name, const vocab_spec *v, svlm_status want, const char *needle) {
    const char *path = tmp_path(name);
    write_vocab(path, v);
    svlm_err err = {0};
    svlm_status st;
    svlm_tokenizer *t = load(path, &st, &err);
    CHECK(!t && st == want && strstr(err.msg, needle), "%s: got status %d '%s', expected %d with '%s'", name,
          st, err.msg, want, needle);
    svlm_tokenizer_free(t);
}

static void test_bad_metadata(void) {
    const char *tokens[] = {"<unk>", "<s>", "</s>", "a"};
    const float scores[] = {0, 0, 0, 0};
    const int32_t types[] = {2, 3, 3, 1};
    const char *merges[] = {"a a"};
    vocab_spec v = {NULL, NULL, tokens, 4, scores, types, NULL, 0, 0};
    expect_load_error("no-model.gguf", &v, SVLM_E_FORMAT, "tokenizer.ggml.model");
    v.model = "bert";
    expect_load_error("bert.gguf", &v, SVLM_E_UNSUPPORTED, "bert");
    v.model = "llama";
    v.tokens = NULL;
    expect_load_error("no-tokens.gguf", &v, SVLM_E_FORMAT, "tokenizer.ggml.tokens");
    v.tokens = tokens;
    v.n_tokens = 0;
    expect_load_error("zero-tokens.gguf", &v, SVLM_E_FORMAT, "tokens");
    v.n_tokens = 4;
    v.model = "gpt2";
    v.pre = "smollm";
    expect_load_error("no-merges.gguf", &v, SVLM_E_FORMAT, "merges");
    v.merges = merges;
    v.n_merges = 1;
    v.pre = "qwen2";
    expect_load_error("bad-pre.gguf", &v, SVLM_E_UNSUPPORTED, "qwen2");
    v.pre = NULL;
    expect_load_error("no-pre.gguf", &v, SVLM_E_UNSUPPORTED, "missing");

    /* A token of 2,000 bytes (real vocabularies' longest are tens): refused, naming it. */
    char *huge = malloc(2001);
    REQUIRE(huge, "out of memory");
    memset(huge, 'x', 2000);
    huge[2000] = 0;
    const char *long_tokens[] = {"<unk>", "<s>", "</s>", huge};
    vocab_spec lv = {"llama", NULL, long_tokens, 4, scores, types, NULL, 0, 0};
    expect_load_error("long-token.gguf", &lv, SVLM_E_FORMAT, "token 3 is 2000 bytes long");
    free(huge);

    /* Per-token arrays shorter than the vocabulary, or of the wrong type. */
    const char *five[] = {"<unk>", "<s>", "</s>", "a", "b"};
    const char *path = tmp_path("short-scores.gguf");
    {
        svlm_err err = {0};
        gguf_writer *gw = NULL;
        svlm_status st = gguf_writer_create(path, 0, &gw, &err);
        if (!st) st = gguf_writer_set_str(gw, "tokenizer.ggml.model", "llama", &err);
        if (!st) st = gguf_writer_set_arr_str(gw, "tokenizer.ggml.tokens", five, 5, &err);
        if (!st) st = gguf_writer_set_arr(gw, "tokenizer.ggml.scores", GGUF_FLOAT32, scores, 4, &err);
        if (!st) st = gguf_writer_finish(gw, &err);
        gguf_writer_destroy(gw);
        REQUIRE(st == SVLM_OK, "writing %s: %s", path, err.msg);
        svlm_tokenizer *t = load(path, &st, &err);
        CHECK(!t && st == SVLM_E_FORMAT && strstr(err.msg, "scores"), "short scores: %d '%s'", st, err.msg);
        svlm_tokenizer_free(t);
    }
    path = tmp_path("float-types.gguf");
    {
        svlm_err err = {0};
        gguf_writer *gw = NULL;
        svlm_status st = gguf_writer_create(path, 0, &gw, &err);
        if (!st) st = gguf_writer_set_str(gw, "tokenizer.ggml.model", "llama", &err);
        if (!st) st = gguf_writer_set_arr_str(gw, "tokenizer.ggml.tokens", five, 4, &err);
        if (!st) st = gguf_writer_set_arr(gw, "tokenizer.ggml.token_type", GGUF_FLOAT32, scores, 4, &err);
        if (!st) st = gguf_writer_finish(gw, &err);
        gguf_writer_destroy(gw);
        REQUIRE(st == SVLM_OK, "writing %s: %s", path, err.msg);
        svlm_tokenizer *t = load(path, &st, &err);
        CHECK(!t && st == SVLM_E_FORMAT && strstr(err.msg, "token_type"), "float token types: %d '%s'", st,
              err.msg);
        svlm_tokenizer_free(t);
    }
    svlm_err err = {0};
    svlm_tokenizer *t = NULL;
    CHECK(svlm_tokenizer_load(NULL, &t, &err) == SVLM_E_INVALID && !t, "NULL file");
}

/* ---- part 2: the reference strings beside the shared vocab files --------------------------- */

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) buf[n] = 0, *len = (size_t)n;
    return buf;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* bos/eos as the files' metadata gives them; EOS must end generation. */
static void check_markers(const svlm_tokenizer *t, const char *name, int32_t bos, int32_t eos, int add_bos) {
    CHECK(svlm_tokenizer_bos(t) == bos && svlm_tokenizer_eos(t) == eos, "%s: bos %d eos %d", name,
          svlm_tokenizer_bos(t), svlm_tokenizer_eos(t));
    CHECK(svlm_tokenizer_add_bos(t) == add_bos, "%s: add_bos %d", name, svlm_tokenizer_add_bos(t));
    CHECK(svlm_tokenizer_is_eog(t, eos), "%s: EOS %d does not end generation", name, eos);
}

static void test_vocab_file(const char *name, int32_t bos, int32_t eos, int add_bos) {
    char rel[256];
    snprintf(rel, sizeof rel, "models/vocab/%s.gguf", name);
    const char *gguf_path = test_data(rel);
    size_t inp_len = 0, out_len = 0;
    char inp_rel[300], out_rel[300];
    snprintf(inp_rel, sizeof inp_rel, "%s.inp", rel);
    snprintf(out_rel, sizeof out_rel, "%s.out", rel);
    char *inp = read_file(test_data(inp_rel), &inp_len), *out = read_file(test_data(out_rel), &out_len);
    REQUIRE(inp && out, "%s: cannot read the .inp/.out pair", name);

    svlm_err err = {0};
    svlm_status st;
    double t0 = now();
    svlm_tokenizer *t = load(gguf_path, &st, &err);
    double t_load = now() - t0;
    REQUIRE(t, "%s: %s", name, err.msg);
    check_markers(t, name, bos, eos, add_bos);

    /* Cases are separated by "\n__ggml_vocab_test__\n" (also after the last); one .out line each. */
    static const char sep[] = "\n__ggml_vocab_test__\n";
    char *case_start = inp, *line = out;
    int n_cases = 0, n_ok = 0;
    double t_tok = 0;
    size_t bytes = 0;
    while (case_start < inp + inp_len) {
        char *case_end = strstr(case_start, sep);
        REQUIRE(case_end, "%s: case %d has no separator", name, n_cases);
        char *line_end = strchr(line, '\n');
        REQUIRE(line_end, "%s: .out has fewer lines than .inp has cases", name);
        *line_end = 0;

        int32_t exp[4096];
        size_t n_exp = 0;
        for (char *p = line, *e; n_exp < 4096; p = e) {
            long v = strtol(p, &e, 10);
            if (e == p) break;
            exp[n_exp++] = (int32_t)v;
        }
        int32_t *ids = NULL;
        size_t n = 0;
        double t1 = now();
        st = svlm_tokenize(t, case_start, (size_t)(case_end - case_start), 0, 0, &ids, &n, &err);
        t_tok += now() - t1;
        bytes += (size_t)(case_end - case_start);
        int same = st == SVLM_OK && n == n_exp && (n == 0 || !memcmp(ids, exp, n * sizeof *ids));
        CHECK(same, "%s case %d (\"%.40s\"): %zu ids, expected %zu", name, n_cases, case_start, n, n_exp);
        n_ok += same;
        free(ids);
        n_cases++;
        case_start = case_end + strlen(sep);
        line = line_end + 1;
    }
    CHECK(n_cases == 46, "%s: %d cases, expected 46", name, n_cases);
    printf("%-22s %2d/%d cases match; load %.1f ms; tokenize %.3f ms per KB\n", name, n_ok, n_cases,
           1e3 * t_load, 1e3 * t_tok / ((double)bytes / 1024.0));
    svlm_tokenizer_free(t);
    free(inp);
    free(out);
}

int test_main(void) {
    test_spm_synthetic();
    test_bpe_synthetic();
    test_round_trips();
    test_bad_metadata();
    if (!test_data("")) {
        printf("SKIP part 2: shared data not found (set SVLM_TEST_DATA)\n");
        return 0;
    }
    test_vocab_file("ggml-vocab-llama-spm", 1, 2, 1);
    test_vocab_file("ggml-vocab-gpt-2", 50256, 50256, 0);
    test_vocab_file("ggml-vocab-starcoder", 0, 0, 0);
    test_vocab_file("ggml-vocab-refact", 0, 0, 0);
    return 0;
}
