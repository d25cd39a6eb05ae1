/*
 * Tokenizer loading from GGUF metadata, dispatch to the special-token partition
 * (tokenizer_special.c) and to the SPM or BPE algorithm, token pieces and detokenization. The behaviour
 * follows llama.cpp's llama-vocab.cpp (see the spec, section 6) so that token ids match it exactly.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "llm/tokenizer_internal.h"
#include "llm/unicode.h"

/* ---- small containers ------------------------------------------------------------------ */

int tok_ids_push(tok_ids *ids, int32_t id) {
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 64;
        int32_t *v = realloc(ids->v, cap * sizeof *v);
        if (!v) return -1;
        ids->v = v;
        ids->cap = cap;
    }
    ids->v[ids->n++] = id;
    return 0;
}

static int bigram_before(const tok_bigram *a, const tok_bigram *b) {
    return a->prio > b->prio || (a->prio == b->prio && a->left < b->left);
}

int tok_queue_push(tok_queue *q, tok_bigram b) {
    if (q->n == q->cap) {
        size_t cap = q->cap ? q->cap * 2 : 64;
        tok_bigram *v = realloc(q->v, cap * sizeof *v);
        if (!v) return -1;
        q->v = v;
        q->cap = cap;
    }
    size_t i = q->n++;
    while (i > 0) { /* sift up */
        size_t parent = (i - 1) / 2;
        if (!bigram_before(&b, &q->v[parent])) break;
        q->v[i] = q->v[parent];
        i = parent;
    }
    q->v[i] = b;
    return 0;
}

tok_bigram tok_queue_pop(tok_queue *q) {
    tok_bigram top = q->v[0], last = q->v[--q->n];
    size_t i = 0;
    for (;;) { /* sift down */
        size_t c = 2 * i + 1;
        if (c >= q->n) break;
        if (c + 1 < q->n && bigram_before(&q->v[c + 1], &q->v[c])) c++;
        if (!bigram_before(&q->v[c], &last)) break;
        q->v[i] = q->v[c];
        i = c;
    }
    if (q->n) q->v[i] = last;
    return top;
}

/* ---- hashing ---------------------------------------------------------------------------- */

uint64_t tok_hash_bytes(uint64_t h, const char *s, size_t n) { /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static uint32_t slot_of(uint64_t h, uint32_t mask) {
    return (uint32_t)(h ^ (h >> 29)) & mask;
}

static int hash_init(tok_hash *h, size_t n) {
    size_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    h->slots = calloc(cap, sizeof *h->slots);
    h->mask = (uint32_t)(cap - 1);
    return h->slots ? 0 : -1;
}

int32_t tok_lookup(const svlm_tokenizer *t, const char *s, size_t n) {
    for (uint32_t i = slot_of(tok_hash_bytes(TOK_HASH_SEED, s, n), t->by_text.mask);;
         i = (i + 1) & t->by_text.mask) {
        uint32_t v = t->by_text.slots[i];
        if (!v) return -1;
        const tok_entry *e = &t->tok[v - 1];
        if (e->text_len == n && !memcmp(t->arena + e->text_off, s, n)) return (int32_t)(v - 1);
    }
}

int32_t tok_merge_rank(const svlm_tokenizer *t, const char *l, size_t nl, const char *r, size_t nr) {
    uint64_t h = tok_hash_bytes(tok_hash_bytes(tok_hash_bytes(TOK_HASH_SEED, l, nl), " ", 1), r, nr);
    for (uint32_t i = slot_of(h, t->merge_rank.mask);; i = (i + 1) & t->merge_rank.mask) {
        uint32_t v = t->merge_rank.slots[i];
        if (!v) return -1;
        const char *m = t->arena + t->merge_off[v - 1];
        if (t->merge_len[v - 1] == nl + 1 + nr && !memcmp(m, l, nl) && m[nl] == ' ' &&
            !memcmp(m + nl + 1, r, nr))
            return (int32_t)(v - 1);
    }
}

/* The string with index idx of a hash table's key set (token texts or merges). */
typedef const char *(*str_at_fn)(const svlm_tokenizer *t, uint32_t idx, size_t *len);

static const char *token_text_at(const svlm_tokenizer *t, uint32_t idx, size_t *len) {
    return tok_text(t, (int32_t)idx, len);
}

static const char *merge_at(const svlm_tokenizer *t, uint32_t idx, size_t *len) {
    *len = t->merge_len[idx];
    return t->arena + t->merge_off[idx];
}

/* Inserts keys 0..n-1 in order; on a duplicate string, `replace` decides whether the later
 * index wins. The home slots are computed first so that they can be prefetched: the table is
 * larger than the caches and the inserts would otherwise wait on memory one by one. */
static int hash_fill(tok_hash *h, const svlm_tokenizer *t, str_at_fn str_at, uint32_t n, int replace) {
    enum { AHEAD = 16 };
    uint32_t *home = malloc(((size_t)n + 1) * sizeof *home);
    if (!home) return -1;
    for (uint32_t k = 0; k < n; k++) {
        size_t len;
        const char *s = str_at(t, k, &len);
        home[k] = slot_of(tok_hash_bytes(TOK_HASH_SEED, s, len), h->mask);
    }
    for (uint32_t k = 0; k < n; k++) {
        if (k + AHEAD < n) __builtin_prefetch(&h->slots[home[k + AHEAD]], 1);
        size_t len, m;
        const char *s = str_at(t, k, &len);
        for (uint32_t i = home[k];; i = (i + 1) & h->mask) {
            uint32_t v = h->slots[i];
            if (!v) {
                h->slots[i] = k + 1;
                break;
            }
            const char *o = str_at(t, v - 1, &m);
            if (m == len && !memcmp(o, s, len)) {
                if (replace) h->slots[i] = k + 1;
                break;
            }
        }
    }
    free(home);
    return 0;
}

/* ---- loading ---------------------------------------------------------------------------- */

/* Makes room for n more arena bytes in one allocation; -1 if out of memory or past 4 GiB
 * (offsets are 32-bit). */
static int arena_reserve(svlm_tokenizer *t, uint64_t n) {
    if (n > UINT32_MAX - t->arena_len) return -1;
    if (t->arena_len + n <= t->arena_cap) return 0;
    char *a = realloc(t->arena, t->arena_len + (size_t)n);
    if (!a) return -1;
    t->arena = a;
    t->arena_cap = t->arena_len + (size_t)n;
    return 0;
}

/* Appends bytes to the arena; returns the offset, or -1 (out of memory or past 4 GiB). */
static int64_t arena_add(svlm_tokenizer *t, const char *s, size_t n) {
    if (arena_reserve(t, n)) return -1;
    if (n) memcpy(t->arena + t->arena_len, s, n);
    t->arena_len += n;
    return (int64_t)(t->arena_len - n);
}

static uint16_t attr_of_type(int32_t type) {
    switch (type) { /* GGUF token types: 1 normal, 2 unknown, 3 control, 4 user, 5 unused, 6 byte */
    case 1: return TOK_ATTR_NORMAL;
    case 2: return TOK_ATTR_UNKNOWN;
    case 3: return TOK_ATTR_CONTROL;
    case 4: return TOK_ATTR_USER_DEFINED;
    case 5: return TOK_ATTR_UNUSED;
    case 6: return TOK_ATTR_BYTE;
    default: return TOK_ATTR_UNDEFINED;
    }
}

static int hex_digit(char c) {
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* The byte a BYTE token "<0xXX>" stands for (the digits at 3..4, read like strtol). */
static char byte_token_value(const char *s, size_t n) {
    int v = 0;
    for (size_t i = 3; i < 5 && i < n && hex_digit(s[i]) >= 0; i++)
        v = v * 16 + hex_digit(s[i]);
    return (char)v;
}

/* Writes into a caller's buffer up to its capacity while counting the full length. */
typedef struct piece_out {
    char *buf;
    size_t cap, n;
} piece_out;

static void put_bytes(piece_out *o, const char *s, size_t n) {
    if (o->n < o->cap) memcpy(o->buf + o->n, s, n < o->cap - o->n ? n : o->cap - o->n);
    o->n += n;
}

/* The output bytes of token id (special tokens shown). Pieces are made on demand: they are
 * cheap, and caching them would double the load time. */
static void write_piece(const svlm_tokenizer *t, int32_t id, piece_out *o) {
    size_t n;
    const char *s = tok_text(t, id, &n);
    uint16_t attr = t->tok[id].attr;
    if (attr & (TOK_ATTR_UNKNOWN | TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED)) {
        put_bytes(o, s, n);
    } else if (attr & TOK_ATTR_NORMAL) {
        if (t->kind == TOK_KIND_SPM) { /* "▁" stands for a space */
            for (size_t i = 0; i < n;) {
                size_t run = i;
                while (run < n && !(run + 3 <= n && !memcmp(s + run, "\xE2\x96\x81", 3)))
                    run++;
                put_bytes(o, s + i, run - i);
                if (run < n) put_bytes(o, " ", 1);
                i = run + 3;
            }
            return;
        }
        for (size_t i = 0; i < n;) { /* byte-level BPE: every code point stands for one byte */
            uint32_t cpt = svlm_utf8_decode((const unsigned char *)s, n, &i);
            int b = svlm_gpt2_cpt_to_byte(cpt);
            if (b >= 0) {
                char c = (char)b;
                put_bytes(o, &c, 1);
                continue;
            }
            char utf8[4], hex[2]; /* llama.cpp's marker for a code point outside the byte map */
            static const char digits[] = "0123456789abcdef";
            size_t k = svlm_utf8_encode(cpt, utf8);
            put_bytes(o, "[UNK_BYTE_0x", 12);
            for (size_t j = 0; j < k; j++) {
                hex[0] = digits[(unsigned char)utf8[j] >> 4];
                hex[1] = digits[(unsigned char)utf8[j] & 15];
                put_bytes(o, hex, 2);
            }
            put_bytes(o, s, n);
            put_bytes(o, "]", 1);
        }
    } else if (attr & TOK_ATTR_BYTE) {
        char b = byte_token_value(s, n);
        put_bytes(o, &b, 1);
    }
}

static const char *const eot_texts[] = {"<|eot_id|>",
                                        "<|im_end|>",
                                        "<|end|>",
                                        "<end_of_turn>",
                                        "<|endoftext|>",
                                        "<|end_of_text|>",
                                        "<EOT>",
                                        "_<EOT>",
                                        "[EOT]",
                                        "<\xEF\xBD\x9C"
                                        "end\xE2\x96\x81"
                                        "of\xE2\x96\x81"
                                        "sentence\xEF\xBD\x9C>",
                                        "<end_of_utterance>",
                                        NULL};
static const char *const eog_texts[] = {"<|eot_id|>",
                                        "<|im_end|>",
                                        "<|end|>",
                                        "<|return|>",
                                        "<|call|>",
                                        "<|flush|>",
                                        "<|calls|>",
                                        "<end_of_turn>",
                                        "<|endoftext|>",
                                        "</s>",
                                        "<|eom_id|>",
                                        "<EOT>",
                                        "_<EOT>",
                                        "[EOT]",
                                        "[EOS]",
                                        "<|end_of_text|>",
                                        "<end_of_utterance>",
                                        "<eos>",
                                        "<turn|>",
                                        "<|tool_response>",
                                        "<\xEF\xBD\x9C"
                                        "end\xE2\x96\x81"
                                        "of\xE2\x96\x81"
                                        "sentence\xEF\xBD\x9C>",
                                        NULL};
static const char *const eom_texts[] = {"<|eom_id|>", NULL};
/* Fill-in-the-middle markers: pad, repo and file-separator tokens also end generation. */
static const char *const fim_pre_texts[] = {"<|fim_prefix|>",    "<fim-prefix>",    "<fim_prefix>", "<PRE>",
                                            "\xE2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>",   NULL};
static const char *const fim_suf_texts[] = {"<|fim_suffix|>",    "<fim-suffix>",    "<fim_suffix>", "<SUF>",
                                            "\xE2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>",   NULL};
static const char *const fim_mid_texts[] = {"<|fim_middle|>",    "<fim-middle>",    "<fim_middle>", "<MID>",
                                            "\xE2\x96\x81<MID>", "<|code_middle|>", "<|middle|>",   NULL};
static const char *const fim_pad_texts[] = {"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", NULL};
static const char *const fim_rep_texts[] = {"<|fim_repo|>", "<|repo_name|>", "<fim-repo>",
                                            "<REPO>",       "<reponame>",    NULL};
static const char *const fim_sep_texts[] = {"<|file_sep|>", NULL};

/* Id of a special token: from the key if it is present and in range, else by the first text
 * in `texts` that is a token (which then becomes a control token, as llama.cpp does). */
static int32_t find_marker(svlm_tokenizer *t, const gguf_file *f, const char *key, const char *const *texts) {
    uint32_t v;
    if (key && gguf_get_u32(f, key, &v) && v < (uint32_t)t->n_vocab) return (int32_t)v;
    for (size_t i = 0; texts && texts[i]; i++) {
        int32_t id = tok_lookup(t, texts[i], strlen(texts[i]));
        if (id >= 0) {
            t->tok[id].attr |= TOK_ATTR_CONTROL;
            return id;
        }
    }
    return -1;
}

/* End-of-generation ids: EOS, EOT, EOM, the FIM pad/repo/separator tokens and every token
 * whose text is a known end marker (llama.cpp's list); those also become control tokens. */
static svlm_status mark_eog(svlm_tokenizer *t, const gguf_file *f) {
    t->eog = calloc((size_t)t->n_vocab, 1);
    if (!t->eog) return SVLM_E_NOMEM;
    t->eot = find_marker(t, f, "tokenizer.ggml.eot_token_id", eot_texts);
    t->eom = find_marker(t, f, "tokenizer.ggml.eom_token_id", eom_texts);
    static const struct {
        const char *key, *old_key;
        const char *const *texts;
    } fim_markers[] = {/* found only for their control attribute */
                       {"tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id", fim_pre_texts},
                       {"tokenizer.ggml.fim_suf_token_id", "tokenizer.ggml.suffix_token_id", fim_suf_texts},
                       {"tokenizer.ggml.fim_mid_token_id", "tokenizer.ggml.middle_token_id", fim_mid_texts}};
    for (size_t i = 0; i < sizeof fim_markers / sizeof fim_markers[0]; i++)
        if (find_marker(t, f, fim_markers[i].key, NULL) < 0)
            find_marker(t, f, fim_markers[i].old_key, fim_markers[i].texts);
    int32_t ends[] = {find_marker(t, f, "tokenizer.ggml.fim_pad_token_id", fim_pad_texts),
                      find_marker(t, f, "tokenizer.ggml.fim_rep_token_id", fim_rep_texts),
                      find_marker(t, f, "tokenizer.ggml.fim_sep_token_id", fim_sep_texts),
                      t->eos,
                      t->eot,
                      t->eom};
    for (size_t i = 0; i < sizeof ends / sizeof ends[0]; i++)
        if (ends[i] >= 0) t->eog[ends[i]] = 1;
    for (size_t i = 0; eog_texts[i]; i++) {
        int32_t id = tok_lookup(t, eog_texts[i], strlen(eog_texts[i]));
        if (id >= 0) {
            t->eog[id] = 1;
            t->tok[id].attr |= TOK_ATTR_CONTROL;
        }
    }
    return SVLM_OK;
}

static int32_t special_id(const gguf_file *f, const char *key, int32_t dflt, int n_vocab) {
    uint32_t v;
    if (gguf_get_u32(f, key, &v) && v < (uint32_t)n_vocab) return (int32_t)v;
    return dflt < n_vocab ? dflt : -1;
}

/* Pre-tokenizers we implement, by tokenizer.ggml.pre; clean_spaces as llama.cpp sets it. */
static const struct {
    const char *name;
    tok_pre pre;
    int clean_spaces;
} bpe_pres[] = {
    {"smollm", TOK_PRE_DIGITS_GPT2, 0}, {"starcoder", TOK_PRE_DIGITS_GPT2, 1},
    {"refact", TOK_PRE_DIGITS_GPT2, 1}, {"codeshell", TOK_PRE_DIGITS_GPT2, 1},
    {"gpt-2", TOK_PRE_GPT2, 1},         {"phi-2", TOK_PRE_GPT2, 1},
    {"mpt", TOK_PRE_GPT2, 1},
};

static svlm_status load_kind(svlm_tokenizer *t, const gguf_file *f, svlm_err *err) {
    char *model = gguf_get_str_dup(f, "tokenizer.ggml.model");
    if (!model) return svlm_fail(err, SVLM_E_FORMAT, "tokenizer: no tokenizer.ggml.model string in the file");
    svlm_status st = SVLM_OK;
    if (!strcmp(model, "llama")) {
        t->kind = TOK_KIND_SPM;
    } else if (!strcmp(model, "gpt2")) {
        t->kind = TOK_KIND_BPE;
        char *pre = gguf_get_str_dup(f, "tokenizer.ggml.pre");
        size_t i = 0, n = sizeof bpe_pres / sizeof bpe_pres[0];
        while (pre && i < n && strcmp(pre, bpe_pres[i].name))
            i++;
        if (!pre || i == n) {
            st = svlm_fail(
                err, SVLM_E_UNSUPPORTED,
                "tokenizer: pre-tokenizer '%s' is not supported (supported: smollm, starcoder, refact, "
                "codeshell, gpt-2, phi-2, mpt)",
                pre ? pre : "(missing)");
        } else {
            t->pre = bpe_pres[i].pre;
            t->clean_spaces = bpe_pres[i].clean_spaces;
        }
        free(pre);
    } else {
        st = svlm_fail(err, SVLM_E_UNSUPPORTED, "tokenizer: model type '%s' is not supported (llama or gpt2)",
                       model);
    }
    free(model);
    return st;
}

/* Reads a numeric per-token array (`elem` type, at least n elements) or reports why not. */
static svlm_status per_token_array(const gguf_file *f, const char *key, gguf_vtype elem, size_t n,
                                   const uint8_t **data, svlm_err *err) {
    *data = NULL;
    if (!gguf_find_kv(f, key)) return SVLM_OK;
    const gguf_kv *kv = gguf_get_arr(f, key, elem);
    if (!kv)
        return svlm_fail(err, SVLM_E_FORMAT, "tokenizer: %s is not an array of %s", key,
                         gguf_vtype_name(elem));
    if (kv->arr_n < n)
        return svlm_fail(err, SVLM_E_FORMAT, "tokenizer: %s has %llu entries for %zu tokens", key,
                         (unsigned long long)kv->arr_n, n);
    *data = kv->data;
    return SVLM_OK;
}

static svlm_status load_tokens(svlm_tokenizer *t, const gguf_file *f, svlm_err *err) {
    const gguf_kv *toks = gguf_get_arr(f, "tokenizer.ggml.tokens", GGUF_STRING);
    if (!toks || !toks->arr_strs)
        return svlm_fail(err, SVLM_E_FORMAT, "tokenizer: no tokenizer.ggml.tokens string array");
    if (toks->arr_n == 0 || toks->arr_n > TOK_MAX_VOCAB)
        return svlm_fail(err, SVLM_E_FORMAT, "tokenizer: %llu tokens (expected 1 to 16777216)",
                         (unsigned long long)toks->arr_n);
    size_t n = (size_t)toks->arr_n;
    const uint8_t *scores, *types;
    svlm_status st = per_token_array(f, "tokenizer.ggml.scores", GGUF_FLOAT32, n, &scores, err);
    if (!st) st = per_token_array(f, "tokenizer.ggml.token_type", GGUF_INT32, n, &types, err);
    if (st) return st;

    uint64_t total = 0;
    for (size_t i = 0; i < n; i++) {
        /* real vocabularies' longest tokens are tens of bytes: a crafted one of megabytes made a
         * detokenized piece of (its code points x its length) bytes (an unknown byte's marker
         * repeats the token) */
        if (toks->arr_strs[i].len > TOK_MAX_TOKEN_BYTES)
            return svlm_fail(err, SVLM_E_FORMAT, "tokenizer: token %zu is %llu bytes long (at most %d)", i,
                             (unsigned long long)toks->arr_strs[i].len, TOK_MAX_TOKEN_BYTES);
        total += toks->arr_strs[i].len ? toks->arr_strs[i].len : 32;
    }
    if (arena_reserve(t, total))
        return svlm_fail(err, SVLM_E_NOMEM, "tokenizer: token texts do not fit in memory");
    t->n_vocab = (int)n;
    t->tok = calloc(n, sizeof *t->tok);
    if (!t->tok || hash_init(&t->by_text, n)) return svlm_fail(err, SVLM_E_NOMEM, "tokenizer: out of memory");
    for (size_t i = 0; i < n; i++) {
        const gguf_str *s = &toks->arr_strs[i];
        char empty[32];
        const char *text = s->ptr;
        size_t len = (size_t)s->len;
        if (!len) { /* llama.cpp renames empty tokens so that they cannot match */
            len = (size_t)snprintf(empty, sizeof empty, "[EMPTY_%zu]", i);
            text = empty;
        }
        int64_t off = arena_add(t, text, len);
        if (off < 0) return svlm_fail(err, SVLM_E_NOMEM, "tokenizer: token texts do not fit in memory");
        tok_entry *e = &t->tok[i];
        e->text_off = (uint32_t)off;
        e->text_len = (uint32_t)len;
        if (scores) memcpy(&e->score, scores + 4 * i, 4);
        int32_t type = 1;
        if (types) memcpy(&type, types + 4 * i, 4);
        e->attr = attr_of_type(type);
    }
    if (hash_fill(&t->by_text, t, token_text_at, (uint32_t)n, 1))
        return svlm_fail(err, SVLM_E_NOMEM, "tokenizer: out of memory");
    return SVLM_OK;
}

static svlm_status load_merges(svlm_tokenizer *t, const gguf_file *f, svlm_err *err) {
    const gguf_kv *m = gguf_get_arr(f, "tokenizer.ggml.merges", GGUF_STRING);
    if (!m || !m->arr_strs)
        return svlm_fail(err, SVLM_E_FORMAT,
                         "tokenizer: gpt2 tokenizer without a tokenizer.ggml.merges string array");
    if (m->arr_n > (1u << 24))
        return svlm_fail(err, SVLM_E_FORMAT, "tokenizer: %llu merges (at most 16777216)",
                         (unsigned long long)m->arr_n);
    t->n_merges = (uint32_t)m->arr_n;
    uint64_t total = 0;
    for (uint32_t i = 0; i < t->n_merges; i++)
        total += m->arr_strs[i].len;
    if (arena_reserve(t, total))
        return svlm_fail(err, SVLM_E_NOMEM, "tokenizer: merges do not fit in memory");
    t->merge_off = malloc((t->n_merges + 1) * sizeof *t->merge_off);
    t->merge_len = malloc((t->n_merges + 1) * sizeof *t->merge_len);
    if (!t->merge_off || !t->merge_len || hash_init(&t->merge_rank, t->n_merges))
        return svlm_fail(err, SVLM_E_NOMEM, "tokenizer: out of memory");
    for (uint32_t i = 0; i < t->n_merges; i++) {
        int64_t off = arena_add(t, m->arr_strs[i].ptr, (size_t)m->arr_strs[i].len);
        if (off < 0) return svlm_fail(err, SVLM_E_NOMEM, "tokenizer: merges do not fit in memory");
        t->merge_off[i] = (uint32_t)off;
        t->merge_len[i] = (uint32_t)m->arr_strs[i].len;
    }
    if (hash_fill(&t->merge_rank, t, merge_at, t->n_merges, 0))
        return svlm_fail(err, SVLM_E_NOMEM, "tokenizer: out of memory");
    return SVLM_OK;
}

static svlm_status load_flags(svlm_tokenizer *t, const gguf_file *f) {
    int spm = t->kind == TOK_KIND_SPM;
    t->bos = special_id(f, "tokenizer.ggml.bos_token_id", spm ? 1 : 11, t->n_vocab);
    t->eos = special_id(f, "tokenizer.ggml.eos_token_id", spm ? 2 : 11, t->n_vocab);
    t->unk = special_id(f, "tokenizer.ggml.unknown_token_id", spm ? 0 : -1, t->n_vocab);
    t->add_bos = spm;
    t->add_eos = 0;
    t->add_space_prefix = spm;
    gguf_get_bool(f, "tokenizer.ggml.add_bos_token", &t->add_bos);
    gguf_get_bool(f, "tokenizer.ggml.add_eos_token", &t->add_eos);
    gguf_get_bool(f, "tokenizer.ggml.add_space_prefix", &t->add_space_prefix);
    return mark_eog(t, f);
}

/* Byte fallback ids: SPM uses "<0xXX>" (or the one-byte token); byte-level BPE looks up the
 * raw byte of the mapped text as a token, as llama.cpp does. */
static void load_byte_tokens(svlm_tokenizer *t) {
    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        int32_t id = -1;
        if (t->kind == TOK_KIND_SPM) {
            char hex[7];
            snprintf(hex, sizeof hex, "<0x%02X>", b);
            id = tok_lookup(t, hex, 6);
            if (id < 0) id = tok_lookup(t, &c, 1);
            if (id < 0) id = t->unk;
        } else {
            id = tok_lookup(t, &c, 1);
        }
        t->byte_token[b] = id;
    }
}

svlm_status svlm_tokenizer_load(const gguf_file *f, svlm_tokenizer **out, svlm_err *err) {
    if (!out) return svlm_fail(err, SVLM_E_INVALID, "tokenizer: no output handle");
    *out = NULL;
    if (!f) return svlm_fail(err, SVLM_E_INVALID, "tokenizer: no GGUF file");
    svlm_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return svlm_fail(err, SVLM_E_NOMEM, "tokenizer: out of memory");
    svlm_status st = load_kind(t, f, err);
    if (!st) st = load_tokens(t, f, err);
    if (!st && t->kind == TOK_KIND_BPE) st = load_merges(t, f, err);
    if (!st && (st = load_flags(t, f)) != SVLM_OK) svlm_fail(err, st, "tokenizer: out of memory");
    if (!st) {
        load_byte_tokens(t);
        if (tok_special_build(t)) st = svlm_fail(err, SVLM_E_NOMEM, "tokenizer: out of memory");
    }
    if (st) {
        svlm_tokenizer_free(t);
        return st;
    }
    *out = t;
    return SVLM_OK;
}

void svlm_tokenizer_free(svlm_tokenizer *t) {
    if (!t) return;
    free(t->tok);
    free(t->arena);
    free(t->by_text.slots);
    free(t->merge_off);
    free(t->merge_len);
    free(t->merge_rank.slots);
    tok_special_free(&t->special);
    free(t->eog);
    free(t);
}

/* ---- queries ---------------------------------------------------------------------------- */

int svlm_tokenizer_n_vocab(const svlm_tokenizer *t) {
    return t->n_vocab;
}
int32_t svlm_tokenizer_bos(const svlm_tokenizer *t) {
    return t->bos;
}
int32_t svlm_tokenizer_eos(const svlm_tokenizer *t) {
    return t->eos;
}
int svlm_tokenizer_add_bos(const svlm_tokenizer *t) {
    return t->add_bos && t->bos >= 0;
}

int svlm_tokenizer_is_eog(const svlm_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && t->eog[id];
}

int32_t svlm_tokenizer_find(const svlm_tokenizer *t, const char *text) {
    return text ? tok_lookup(t, text, strlen(text)) : -1;
}

/* ---- tokenization ----------------------------------------------------------------------- */

svlm_status svlm_tokenize(const svlm_tokenizer *t, const char *text, size_t len, int add_special,
                          int parse_special, int32_t **ids, size_t *n_ids, svlm_err *err) {
    if (!t || !ids || !n_ids || (!text && len))
        return svlm_fail(err, SVLM_E_INVALID, "tokenize: missing argument");
    *ids = NULL;
    *n_ids = 0;
    if (len > TOK_MAX_TEXT) /* symbol offsets are 32-bit and a word may grow 8-fold when mapped */
        return svlm_fail(err, SVLM_E_LIMIT, "tokenize: %zu bytes of text (at most %u at once)", len,
                         TOK_MAX_TEXT);
    tok_frags fs = {0};
    tok_ids out = {0};
    if (tok_partition(t, text, len, parse_special, &fs)) goto oom;
    int spm = t->kind == TOK_KIND_SPM;
    if (add_special && t->add_bos && t->bos >= 0 && tok_ids_push(&out, t->bos)) goto oom;
    int prev_special = 1; /* SPM: the text start counts as "after a special token" */
    for (size_t i = 0; i < fs.n; i++) {
        const tok_frag *fr = &fs.v[i];
        int rc;
        if (fr->id >= 0) {
            rc = tok_ids_push(&out, fr->id);
            prev_special = 1;
        } else if (spm) {
            rc = tok_spm_encode(t, text + fr->off, fr->len, t->add_space_prefix && prev_special, &out);
            prev_special = 0;
        } else {
            rc = tok_bpe_encode(t, text + fr->off, fr->len, &out);
        }
        if (rc) goto oom;
    }
    if (add_special && t->add_eos && t->eos >= 0 && tok_ids_push(&out, t->eos)) goto oom;
    if (!out.v && !(out.v = malloc(sizeof *out.v))) goto oom; /* a real allocation even when empty */
    free(fs.v);
    *ids = out.v;
    *n_ids = out.n;
    return SVLM_OK;
oom:
    free(fs.v);
    free(out.v);
    return svlm_fail(err, SVLM_E_NOMEM, "tokenize: out of memory (%zu bytes of text)", len);
}

/* ---- pieces and detokenization ---------------------------------------------------------- */

size_t svlm_token_piece(const svlm_tokenizer *t, int32_t id, int special, char *buf, size_t cap) {
    if (!t || id < 0 || id >= t->n_vocab) return 0;
    if (!special && (t->tok[id].attr & (TOK_ATTR_CONTROL | TOK_ATTR_UNKNOWN))) return 0;
    piece_out o = {buf, buf ? cap : 0, 0};
    write_piece(t, id, &o);
    return o.n;
}

const char *svlm_token_piece_whole(const svlm_tokenizer *t, int32_t id, int special, char *buf, size_t cap,
                                   char **heap, size_t *len) {
    *heap = NULL;
    *len = svlm_token_piece(t, id, special, buf, cap);
    if (*len <= cap) return buf;
    if (!(*heap = malloc(*len))) return NULL;
    svlm_token_piece(t, id, special, *heap, *len);
    return *heap;
}

/* llama.cpp's clean_up_tokenization_spaces for BPE vocabs: drops the space before ?!., and
 * before the contractions 's 'm 're 've, and the spaces around a lone " ' ". In place. */
static size_t clean_spaces(char *s, size_t n) {
    size_t w;
    if (n < 2) return n;
    w = 1;
    for (size_t i = 1; i < n; i++) {
        char x = s[i];
        if (s[i - 1] == ' ' && (x == '?' || x == '!' || x == '.' || x == ',')) w--;
        s[w++] = x;
    }
    n = w;
    w = 1;
    for (size_t i = 1; i < n; i++) {
        char x = s[i];
        if (x == '\'' && i + 1 < n && s[i - 1] == ' ' && s[i + 1] == ' ') {
            w--;        /* the space before */
            s[++i] = 0; /* the space after: skipped, and no longer a space for the next test */
        }
        s[w++] = x;
    }
    n = w;
    w = 1;
    for (size_t i = 1; i < n; i++) {
        char x = s[i];
        if (s[i - 1] == ' ' && x == '\'' && i + 1 < n) {
            char x1 = s[i + 1], x2 = i + 2 < n ? s[i + 2] : 0;
            if (x1 == 's' || x1 == 'm' || (x1 == 'r' && x2 == 'e') || (x1 == 'v' && x2 == 'e')) w--;
        }
        s[w++] = x;
    }
    return w;
}

char *svlm_detokenize(const svlm_tokenizer *t, const int32_t *ids, size_t n, int special) {
    return svlm_detokenize_len(t, ids, n, special, NULL);
}

char *svlm_detokenize_len(const svlm_tokenizer *t, const int32_t *ids, size_t n, int special, size_t *len) {
    if (len) *len = 0;
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += svlm_token_piece(t, ids[i], special, NULL, 0);
    char *s = malloc(total + 1);
    if (!s) return NULL;
    size_t w = 0;
    for (size_t i = 0; i < n; i++) {
        size_t k = svlm_token_piece(t, ids[i], special, s + w, total - w);
        if (i == 0 && t->add_space_prefix && k && s[0] == ' ') { /* the space the encoder added */
            memmove(s, s + 1, k - 1);
            k--;
        }
        w += k;
    }
    if (t->clean_spaces) w = clean_spaces(s, w);
    s[w] = 0;
    if (len) *len = w;
    return s;
}
