/*
 * mkmodel: a synthetic but valid byte-level BPE vocabulary (tokenizer.ggml.model = gpt2).
 *
 * Layout: leading special tokens, the 256 byte symbols, merge tokens, trailing special
 * tokens. Merges are learned from English text (byte-pair counting over the corpus's words,
 * the way BPE is trained), then padded with filler merges (a known token + a letter) up to
 * the vocabulary size. Every merge "a b" has both parts and its result a+b in the
 * vocabulary, every merge token is produced by exactly one merge, and no text repeats.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "mkmodel.h"

/* ---- a string → int map with open addressing ------------------------------------------- */

typedef struct {
    char **keys;
    int *vals;
    size_t cap, n;
} str_map;

static uint64_t hash_bytes(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static int map_grow(str_map *m) {
    size_t cap = m->cap ? m->cap * 2 : 1024;
    char **keys = calloc(cap, sizeof *keys);
    int *vals = calloc(cap, sizeof *vals);
    if (!keys || !vals) {
        free(keys);
        free(vals);
        return -1;
    }
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->keys[i]) continue;
        size_t j = hash_bytes(m->keys[i]) & (cap - 1);
        while (keys[j])
            j = (j + 1) & (cap - 1);
        keys[j] = m->keys[i];
        vals[j] = m->vals[i];
    }
    free(m->keys);
    free(m->vals);
    m->keys = keys;
    m->vals = vals;
    m->cap = cap;
    return 0;
}

/* Slot of key, or of the empty place where it would go. */
static size_t map_slot(const str_map *m, const char *key) {
    size_t j = hash_bytes(key) & (m->cap - 1);
    while (m->keys[j] && strcmp(m->keys[j], key))
        j = (j + 1) & (m->cap - 1);
    return j;
}

static int *map_get(const str_map *m, const char *key) {
    if (!m->cap) return NULL;
    size_t j = map_slot(m, key);
    return m->keys[j] ? &m->vals[j] : NULL;
}

/* Inserts a copy of key (must be absent) with value v. */
static int map_put(str_map *m, const char *key, int v) {
    if ((m->n + 1) * 2 > m->cap && map_grow(m)) return -1;
    size_t j = map_slot(m, key);
    if (!(m->keys[j] = strdup(key))) return -1;
    m->vals[j] = v;
    m->n++;
    return 0;
}

static void map_free(str_map *m) {
    for (size_t i = 0; i < m->cap; i++)
        free(m->keys[i]);
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}

/* ---- the vocabulary under construction -------------------------------------------------- */

typedef struct {
    mk_vocab *v;
    int cap_tokens;
    str_map index;         /* token text → id */
    char **raw;            /* raw bytes of each token (NUL-terminated; specials: NULL) */
    char byte_sym[256][3]; /* GPT-2 byte → unicode symbol, UTF-8 */
} builder;

/* GPT-2's byte-to-unicode table: printable bytes map to themselves, the other 68 to
 * U+0100.. in byte order (so space is U+0120 'Ġ' and newline U+010A 'Ċ'). */
static void init_byte_symbols(builder *b) {
    int next = 256;
    for (int c = 0; c < 256; c++) {
        int printable = (c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE);
        int cp = printable ? c : next++;
        if (cp < 0x80) {
            b->byte_sym[c][0] = (char)cp;
            b->byte_sym[c][1] = 0;
        } else {
            b->byte_sym[c][0] = (char)(0xC0 | (cp >> 6));
            b->byte_sym[c][1] = (char)(0x80 | (cp & 0x3F));
            b->byte_sym[c][2] = 0;
        }
    }
}

/* Appends a token; text and raw are taken over. Returns its id or -1. */
static int push_token(builder *b, char *text, char *raw, int type) {
    mk_vocab *v = b->v;
    if (!text || v->n_tokens >= b->cap_tokens || map_put(&b->index, text, v->n_tokens)) {
        free(text);
        free(raw);
        return -1;
    }
    v->tokens[v->n_tokens] = text;
    v->types[v->n_tokens] = type;
    b->raw[v->n_tokens] = raw;
    return v->n_tokens++;
}

static int push_merge(builder *b, int left, int right) {
    mk_vocab *v = b->v;
    const char *l = v->tokens[left], *r = v->tokens[right];
    size_t nl = strlen(l), nr = strlen(r);
    char *m = malloc(nl + nr + 2), *t = malloc(nl + nr + 1);
    size_t rl = strlen(b->raw[left]), rr = strlen(b->raw[right]);
    char *raw = malloc(rl + rr + 1);
    if (!m || !t || !raw) {
        free(m);
        free(t);
        free(raw);
        return -1;
    }
    memcpy(m, l, nl);
    m[nl] = ' ';
    memcpy(m + nl + 1, r, nr + 1);
    memcpy(t, l, nl);
    memcpy(t + nl, r, nr + 1);
    memcpy(raw, b->raw[left], rl);
    memcpy(raw + rl, b->raw[right], rr + 1);
    int id = push_token(b, t, raw, MK_TOK_NORMAL);
    if (id < 0) {
        free(m);
        return -1;
    }
    v->merges[v->n_merges++] = m;
    return id;
}

/* Would merging these two tokens give a text the vocabulary already has? */
static int concat_known(const builder *b, int left, int right) {
    const char *l = b->v->tokens[left], *r = b->v->tokens[right];
    size_t nl = strlen(l), nr = strlen(r);
    char buf[512];
    if (nl + nr >= sizeof buf) return 1; /* never build tokens that long */
    memcpy(buf, l, nl);
    memcpy(buf + nl, r, nr + 1);
    return map_get(&b->index, buf) != NULL;
}

/* ---- corpus → words --------------------------------------------------------------------- */

/* A built-in text (written for svlm) so that a fresh checkout needs no data files. */
static const char builtin_corpus[] =
    "The little robot woke up before the sun. It rolled to the window and looked at the garden, "
    "where the flowers were still closed and the grass was wet with dew. The robot liked the morning "
    "because the house was quiet and it could think about the day.\n\n"
    "First it would water the plants. Then it would help the girl find her shoes, which she always "
    "lost under the bed. After that it would clean the kitchen, count the apples in the basket and "
    "write the number on the board: one, two, three, four, five, six, seven, eight, nine, ten.\n\n"
    "\"Good morning!\" said the girl when she came down the stairs. \"Did you see the cat? She was "
    "sitting on the roof again, looking at the birds.\" The robot said that it had seen the cat, and "
    "that the birds were not afraid of her at all, because they could fly and she could not.\n\n"
    "They went outside together. The girl picked a red flower and gave it to the robot. The robot "
    "held it carefully in its metal hand and said thank you. It did not know what to do with a "
    "flower, but it knew that the gift was important, so it put the flower in a glass of water on "
    "the table, next to the window, where the sun would find it in the afternoon.\n\n"
    "In the evening the family sat in the living room. The father read a story about a brave "
    "knight who traveled across the mountains to find a dragon. The dragon was not angry; it was "
    "only lonely, and the knight became its friend. The mother laughed and the girl asked for "
    "another story. The robot listened and learned new words: mountain, dragon, lonely, friend.\n\n"
    "Video frames arrive one after another, twenty-four or thirty every second. A model that "
    "watches a camera must describe what it sees: a person walking, a car stopping at the light, "
    "a dog running after a ball in the park. It answers questions about the scene, and it must be "
    "fast enough to keep up with the stream, in 2024 and 2025 and in the years after.\n";

static int is_letter(uint8_t c) {
    return (unsigned)((c | 32) - 'a') < 26u || c >= 0x80;
}
static int is_digit(uint8_t c) {
    return (unsigned)(c - '0') < 10u;
}
static int is_space(uint8_t c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* Length of the next piece at p, in the spirit of GPT-2's pre-tokenizer with single
 * digits (SmolLM): " ?letters", one digit, " ?punctuation", or a whitespace run that leaves
 * its last space to the following word. */
static size_t next_piece(const uint8_t *p, size_t n) {
    size_t i = 0;
    if (is_space(p[0])) {
        while (i < n && is_space(p[i]))
            i++;
        if (i == n) return i;
        if (i > 1) return p[i - 1] == ' ' ? i - 1 : i;
        if (p[0] != ' ') return 1;
        /* one space before a non-space joins the piece that follows */
    }
    if (i < n && is_digit(p[i])) return i ? i : 1; /* digits stand alone */
    if (i < n && is_letter(p[i])) {
        while (i < n && is_letter(p[i]))
            i++;
        return i;
    }
    while (i < n && !is_space(p[i]) && !is_letter(p[i]) && !is_digit(p[i]))
        i++;
    return i ? i : 1;
}

typedef struct {
    int **sym; /* per word: symbol ids, -1 terminated */
    int *len;
    int *count;
    int n;
} word_set;

static void words_free(word_set *w) {
    for (int i = 0; i < w->n; i++)
        free(w->sym[i]);
    free(w->sym);
    free(w->len);
    free(w->count);
    memset(w, 0, sizeof *w);
}

/* Unique pieces of the corpus with their counts, as byte-symbol sequences. */
static svlm_status corpus_words(const builder *b, const char *text, size_t n, word_set *w, svlm_err *err) {
    (void)b;
    str_map seen = {0};
    int cap = 0;
    char piece[256];
    const uint8_t *p = (const uint8_t *)text;
    for (size_t at = 0; at < n;) {
        size_t k = next_piece(p + at, n - at);
        if (k < sizeof piece && memchr(p + at, 0, k) == NULL && k > 1) {
            memcpy(piece, p + at, k);
            piece[k] = 0;
            int *idx = map_get(&seen, piece);
            if (idx) {
                w->count[*idx]++;
            } else {
                if (w->n == cap) {
                    cap = cap ? cap * 2 : 1024;
                    int **sym = realloc(w->sym, (size_t)cap * sizeof *sym);
                    if (sym) w->sym = sym;
                    int *len = realloc(w->len, (size_t)cap * sizeof *len);
                    if (len) w->len = len;
                    int *cnt = realloc(w->count, (size_t)cap * sizeof *cnt);
                    if (cnt) w->count = cnt;
                    if (!sym || !len || !cnt) goto oom;
                }
                int *s = malloc((k + 1) * sizeof *s);
                if (!s) goto oom;
                for (size_t i = 0; i < k; i++)
                    s[i] = p[at + i]; /* byte symbol ids are 0..255 */
                s[k] = -1;
                w->sym[w->n] = s;
                w->len[w->n] = (int)k;
                w->count[w->n] = 1;
                if (map_put(&seen, piece, w->n)) {
                    free(s);
                    goto oom;
                }
                w->n++;
            }
        }
        at += k;
    }
    map_free(&seen);
    return SVLM_OK;
oom:
    map_free(&seen);
    return svlm_fail(err, SVLM_E_NOMEM, "mkmodel: out of memory reading the corpus");
}

/* ---- BPE training ----------------------------------------------------------------------- */

typedef struct {
    uint64_t *keys;
    int64_t *counts;
    size_t cap;
    size_t *used;
    size_t n_used;
} pair_map;

static uint64_t pair_key(int a, int b) {
    return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
}

static size_t pair_slot(const pair_map *m, uint64_t key) {
    size_t j = (size_t)((key * 0x9E3779B97F4A7C15ull) >> 20) & (m->cap - 1);
    while (m->keys[j] != UINT64_MAX && m->keys[j] != key)
        j = (j + 1) & (m->cap - 1);
    return j;
}

static int pair_add(pair_map *m, uint64_t key, int64_t c) {
    if ((m->n_used + 1) * 2 > m->cap) return -1; /* sized up front by the caller */
    size_t j = pair_slot(m, key);
    if (m->keys[j] == UINT64_MAX) {
        m->keys[j] = key;
        m->counts[j] = 0;
        m->used[m->n_used++] = j;
    }
    m->counts[j] += c;
    return 0;
}

static void pair_clear(pair_map *m) {
    for (size_t i = 0; i < m->n_used; i++)
        m->keys[m->used[i]] = UINT64_MAX;
    m->n_used = 0;
}

/* Maps word symbol ids (0..255 bytes, 256.. learned) to vocabulary ids. */
static int vocab_id(int sym, int first_byte, const int *learned_ids) {
    return sym < 256 ? first_byte + sym : learned_ids[sym - 256];
}

static svlm_status learn_merges(builder *b, word_set *w, int first_byte, int want, svlm_err *err) {
    size_t total = 0;
    for (int i = 0; i < w->n; i++)
        total += (size_t)w->len[i];
    pair_map pm = {0};
    pm.cap = 1024;
    while (pm.cap < 2 * total + 2)
        pm.cap *= 2;
    pm.keys = malloc(pm.cap * sizeof *pm.keys);
    pm.counts = malloc(pm.cap * sizeof *pm.counts);
    pm.used = malloc(pm.cap * sizeof *pm.used);
    int *learned_ids = malloc(((size_t)want + 1) * sizeof *learned_ids);
    uint64_t *banned = malloc(((size_t)want + 1024) * sizeof *banned);
    int n_banned = 0, max_banned = want + 1024;
    svlm_status st = SVLM_OK;
    if (!pm.keys || !pm.counts || !pm.used || !learned_ids || !banned) {
        st = svlm_fail(err, SVLM_E_NOMEM, "mkmodel: out of memory learning merges");
        goto done;
    }
    memset(pm.keys, 0xFF, pm.cap * sizeof *pm.keys);
    int learned = 0;
    while (learned < want) {
        pair_clear(&pm);
        for (int i = 0; i < w->n; i++)
            for (int j = 0; j + 1 < w->len[i]; j++)
                pair_add(&pm, pair_key(w->sym[i][j], w->sym[i][j + 1]), w->count[i]);
        /* Most frequent pair; ties go to the smaller key so the result is deterministic. */
        int64_t best = 1;
        uint64_t best_key = 0;
        for (size_t u = 0; u < pm.n_used; u++) {
            size_t j = pm.used[u];
            int64_t c = pm.counts[j];
            if (c < best || (c == best && pm.keys[j] > best_key)) continue;
            int ban = 0;
            for (int k = 0; k < n_banned && !ban; k++)
                ban = banned[k] == pm.keys[j];
            if (ban) continue;
            best = c;
            best_key = pm.keys[j];
        }
        if (best < 2) break; /* no pair repeats: the corpus has nothing more to teach */
        int a = (int)(best_key >> 32), c = (int)(uint32_t)best_key;
        int va = vocab_id(a, first_byte, learned_ids), vc = vocab_id(c, first_byte, learned_ids);
        if (concat_known(b, va, vc)) { /* same text reached by another pair: skip it */
            if (n_banned == max_banned) break;
            banned[n_banned++] = best_key;
            continue;
        }
        int id = push_merge(b, va, vc);
        if (id < 0) {
            st = svlm_fail(err, SVLM_E_NOMEM, "mkmodel: out of memory learning merges");
            goto done;
        }
        int sym = 256 + learned;
        learned_ids[learned++] = id;
        for (int i = 0; i < w->n; i++) {
            int *s = w->sym[i], o = 0;
            for (int j = 0; j < w->len[i]; j++) {
                if (j + 1 < w->len[i] && s[j] == a && s[j + 1] == c) {
                    s[o++] = sym;
                    j++;
                } else {
                    s[o++] = s[j];
                }
            }
            w->len[i] = o;
        }
    }
    b->v->n_learned = learned;
done:
    free(pm.keys);
    free(pm.counts);
    free(pm.used);
    free(learned_ids);
    free(banned);
    return st;
}

/* Filler merges: a word-like token followed by a lower-case letter, e.g. "Ġthe" + "x". */
static svlm_status add_fillers(builder *b, int first_byte, int first_merge, int want_total, svlm_err *err) {
    mk_vocab *v = b->v;
    /* Without learned tokens (an empty corpus) the letters themselves seed the fillers. */
    int start = v->n_tokens > first_merge ? first_merge : first_byte + 'a';
    for (int i = start; v->n_tokens < want_total; i++) {
        if (i >= v->n_tokens)
            return svlm_fail(err, SVLM_E_INVALID, "mkmodel: cannot build enough filler tokens");
        const char *raw = b->raw[i];
        size_t n = strlen(raw);
        if (n == 0 || n > 12 || !is_letter((uint8_t)raw[n - 1])) continue;
        for (int c = 'a'; c <= 'z' && v->n_tokens < want_total; c++) {
            int right = first_byte + c;
            if (concat_known(b, i, right)) continue;
            if (push_merge(b, i, right) < 0) return svlm_fail(err, SVLM_E_NOMEM, "mkmodel: out of memory");
        }
    }
    return SVLM_OK;
}

/* ---- special tokens and layout ---------------------------------------------------------- */

static const char *const smollm_specials[] = {
    "<|endoftext|>",    "<|im_start|>",    "<|im_end|>",     "<repo_name>",    "<reponame>",
    "<file_sep>",       "<filename>",      "<gh_stars>",     "<issue_start>",  "<issue_comment>",
    "<issue_closed>",   "<jupyter_start>", "<jupyter_text>", "<jupyter_code>", "<jupyter_output>",
    "<jupyter_script>", "<empty_output>",
};

static int push_special(builder *b, const char *text) {
    char *t = strdup(text);
    return push_token(b, t, NULL, MK_TOK_CONTROL);
}

static int push_rows(builder *b) {
    char name[32];
    for (int r = 1; r <= 6; r++)
        for (int c = 1; c <= 6; c++) {
            snprintf(name, sizeof name, "<row_%d_col_%d>", r, c);
            if (push_special(b, name) < 0) return -1;
        }
    return 0;
}

/* SmolVLM2's added tokens: 49152 <global-img>, 49153.. the 36 <row_R_col_C>, 49189
 * <fake_token_around_image>, 49190 <image>, reserved ids, 49279 <end_of_utterance>.
 * The tiny layout keeps them at the end of a 1024 vocabulary in a different order, so
 * code that hard-codes ids fails on one of the two. */
static int push_trailing(builder *b, int real) {
    int n_reserved = b->cap_tokens - 1 - (b->v->n_tokens + 1 + 36 + 2);
    if (real) {
        if (push_special(b, "<global-img>") < 0 || push_rows(b) ||
            push_special(b, "<fake_token_around_image>") < 0 || push_special(b, "<image>") < 0)
            return -1;
        char name[48];
        for (int i = 0; i < n_reserved; i++) {
            snprintf(name, sizeof name, "<|reserved_special_token_%d|>", i);
            if (push_special(b, name) < 0) return -1;
        }
        return push_special(b, "<end_of_utterance>") < 0 ? -1 : 0;
    }
    if (push_special(b, "<fake_token_around_image>") < 0 || push_special(b, "<image>") < 0 ||
        push_special(b, "<global-img>") < 0 || push_special(b, "<end_of_utterance>") < 0)
        return -1;
    return push_rows(b);
}

static char *read_corpus(const char *path, size_t *n, svlm_err *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        svlm_fail(err, SVLM_E_IO, "mkmodel: cannot open corpus '%s'", path);
        return NULL;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    while (buf) {
        len += fread(buf + len, 1, cap - len, f);
        if (len < cap) break;
        if (cap >= ((size_t)64 << 20)) break; /* 64 MiB is plenty of text */
        char *nb = realloc(buf, cap * 2);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    int bad = ferror(f);
    fclose(f);
    if (!buf || bad) {
        free(buf);
        svlm_fail(err, bad ? SVLM_E_IO : SVLM_E_NOMEM, "mkmodel: cannot read corpus '%s'", path);
        return NULL;
    }
    *n = len;
    return buf;
}

/* Learning stops here; the rest of a big vocabulary is fillers (keeps mkmodel fast). */
#define MAX_LEARNED_MERGES 8000

svlm_status mk_vocab_build(const mk_shape *s, const char *corpus_path, mk_vocab *out, svlm_err *err) {
    memset(out, 0, sizeof *out);
    builder b = {0};
    b.v = out;
    b.cap_tokens = s->text.n_vocab;
    int n_lead = s->real_vocab ? (int)(sizeof smollm_specials / sizeof *smollm_specials) : 3;
    int n_trail = s->real_vocab ? 128 : 40; /* SmolVLM2 added 128 tokens */
    int n_merge_tokens = b.cap_tokens - n_lead - 256 - n_trail;
    if (n_merge_tokens < 0)
        return svlm_fail(err, SVLM_E_INVALID, "mkmodel: vocabulary of %d is too small", b.cap_tokens);
    init_byte_symbols(&b);
    out->tokens = calloc((size_t)b.cap_tokens, sizeof *out->tokens);
    out->types = calloc((size_t)b.cap_tokens, sizeof *out->types);
    out->merges = calloc((size_t)b.cap_tokens, sizeof *out->merges);
    b.raw = calloc((size_t)b.cap_tokens, sizeof *b.raw);
    char *corpus = NULL;
    size_t corpus_len = 0;
    word_set words = {0};
    svlm_status st = SVLM_OK;
    if (!out->tokens || !out->types || !out->merges || !b.raw) goto oom;

    for (int i = 0; i < n_lead; i++)
        if (push_special(&b, smollm_specials[i]) < 0) goto oom;
    int first_byte = out->n_tokens;
    for (int c = 0; c < 256; c++) {
        char raw[2] = {(char)c, 0};
        char *rawcopy = malloc(2);
        if (!rawcopy) goto oom;
        memcpy(rawcopy, raw, 2);
        if (c == 0) rawcopy[0] = 0; /* NUL cannot live in a C string; it is never merged */
        if (push_token(&b, strdup(b.byte_sym[c]), rawcopy, MK_TOK_NORMAL) < 0) goto oom;
    }
    int first_merge = out->n_tokens;

    if (corpus_path) {
        if (!(corpus = read_corpus(corpus_path, &corpus_len, err))) {
            st = err ? err->status : SVLM_E_IO;
            goto fail;
        }
    }
    const char *text = corpus ? corpus : builtin_corpus;
    size_t text_len = corpus ? corpus_len : sizeof builtin_corpus - 1;
    if ((st = corpus_words(&b, text, text_len, &words, err))) goto fail;
    int want = n_merge_tokens < MAX_LEARNED_MERGES ? n_merge_tokens : MAX_LEARNED_MERGES;
    if ((st = learn_merges(&b, &words, first_byte, want, err))) goto fail;
    if ((st = add_fillers(&b, first_byte, first_merge, first_merge + n_merge_tokens, err))) goto fail;
    if (push_trailing(&b, s->real_vocab)) goto oom;
    if (out->n_tokens != b.cap_tokens) {
        st = svlm_fail(err, SVLM_E_INVALID, "mkmodel: built %d tokens, expected %d", out->n_tokens,
                       b.cap_tokens);
        goto fail;
    }
    int *id;
    out->bos = (id = map_get(&b.index, "<|im_start|>")) ? (uint32_t)*id : 0;
    out->eos = (id = map_get(&b.index, "<end_of_utterance>")) ? (uint32_t)*id : 0;
    out->unk = 0; /* <|endoftext|> */
    out->pad = (id = map_get(&b.index, "<|im_end|>")) ? (uint32_t)*id : 0;
    goto cleanup;
oom:
    st = svlm_fail(err, SVLM_E_NOMEM, "mkmodel: out of memory building the vocabulary");
fail:
    mk_vocab_free(out);
cleanup:
    words_free(&words);
    free(corpus);
    if (b.raw)
        for (int i = 0; i < b.cap_tokens; i++)
            free(b.raw[i]);
    free(b.raw);
    map_free(&b.index);
    return st;
}

void mk_vocab_free(mk_vocab *v) {
    if (!v) return;
    for (int i = 0; v->tokens && i < v->n_tokens; i++)
        free(v->tokens[i]);
    for (int i = 0; v->merges && i < v->n_merges; i++)
        free(v->merges[i]);
    free(v->tokens);
    free(v->types);
    free(v->merges);
    memset(v, 0, sizeof *v);
}
