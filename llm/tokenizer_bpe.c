/*
 * Byte-level BPE (tokenizer.ggml.model = "gpt2"), as llama.cpp does it: the text is cut into
 * words by the pre-tokenizer (optionally every \p{N} alone, then the GPT-2 pattern
 * 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+), each word's
 * bytes are written as GPT-2 code points, and the adjacent pair with the lowest merge rank
 * is merged until no pair is in the merge table.
 */
#include <stdlib.h>
#include <string.h>

#include "llm/tokenizer_internal.h"
#include "llm/unicode.h"

typedef struct bpe_work {
    const svlm_tokenizer *t;
    const uint32_t *cpt;
    tok_ids *out;
    char *buf; /* the current word in GPT-2 code points */
    size_t buf_cap;
    tok_symbol *sym;
    size_t sym_cap;
    tok_queue queue;
} bpe_work;

/* Queues the merge of symbols l and r when "left right" is a merge. */
static int try_pair(bpe_work *w, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return 0;
    const tok_symbol *a = &w->sym[l], *b = &w->sym[r];
    int32_t rank = tok_merge_rank(w->t, w->buf + a->off, a->n, w->buf + b->off, b->n);
    if (rank < 0) return 0;
    return tok_queue_push(&w->queue, (tok_bigram){-(double)rank, l, r, a->n + b->n});
}

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t cap2 = *cap ? *cap : 64;
    while (cap2 < need)
        cap2 *= 2;
    void *q = realloc(*p, cap2 * elem);
    if (!q) return -1;
    *p = q;
    *cap = cap2;
    return 0;
}

/* Encodes the word made of code points [b, e) and appends its ids. */
static int encode_word(bpe_work *w, size_t b, size_t e) {
    if (grow((void **)&w->buf, &w->buf_cap, 8 * (e - b), 1) ||
        grow((void **)&w->sym, &w->sym_cap, 4 * (e - b), sizeof *w->sym))
        return -1;
    size_t n_buf = 0;
    int32_t n_sym = 0;
    for (size_t i = b; i < e; i++) {
        char utf8[4];
        size_t k = svlm_utf8_encode(w->cpt[i], utf8);
        for (size_t j = 0; j < k; j++) { /* one symbol per byte, written as its code point */
            size_t m = svlm_utf8_encode(svlm_gpt2_byte_cpt[(unsigned char)utf8[j]], w->buf + n_buf);
            w->sym[n_sym] = (tok_symbol){(uint32_t)n_buf, (uint32_t)m, n_sym - 1, n_sym + 1};
            n_sym++;
            n_buf += m;
        }
    }
    w->sym[n_sym - 1].next = -1;

    w->queue.n = 0;
    for (int32_t i = 1; i < n_sym; i++)
        if (try_pair(w, i - 1, i)) return -1;
    while (w->queue.n) {
        tok_bigram g = tok_queue_pop(&w->queue);
        tok_symbol *l = &w->sym[g.left], *r = &w->sym[g.right];
        if (!l->n || !r->n || l->n + r->n != g.size) continue; /* stale: a side was merged since */
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) w->sym[r->next].prev = g.left;
        if (try_pair(w, l->prev, g.left) || try_pair(w, g.left, l->next)) return -1;
    }

    for (int32_t i = 0; i != -1; i = w->sym[i].next) {
        const tok_symbol *s = &w->sym[i];
        int32_t id = tok_lookup(w->t, w->buf + s->off, s->n);
        if (id >= 0) {
            if (tok_ids_push(w->out, id)) return -1;
            continue;
        }
        /* Not a token (only with an incomplete vocabulary): llama.cpp looks up each byte of the
         * mapped text and drops those that are not tokens either. */
        for (uint32_t j = 0; j < s->n; j++) {
            int32_t bt = w->t->byte_token[(unsigned char)w->buf[s->off + j]];
            if (bt >= 0 && tok_ids_push(w->out, bt)) return -1;
        }
    }
    return 0;
}

/* What the GPT-2 pattern sees at position p of [.., e): a class, or END past the range. */
enum { K_END, K_SPACE, K_LETTER, K_NUMBER, K_OTHER };

static int kind_at(const uint32_t *c, size_t p, size_t e) {
    if (p >= e) return K_END;
    uint8_t cls = svlm_unicode_class(c[p]);
    if (cls & SVLM_UCLASS_WHITESPACE) return K_SPACE;
    cls &= SVLM_UCLASS_MASK;
    return cls == SVLM_UCLASS_LETTER ? K_LETTER : cls == SVLM_UCLASS_NUMBER ? K_NUMBER : K_OTHER;
}

/* Cuts [b, e) by the GPT-2 pattern and encodes each word. */
static int gpt2_split(bpe_work *w, size_t b, size_t e) {
    const uint32_t *c = w->cpt;
    size_t pos = b;
    while (pos < e) {
        size_t start = pos;
        uint32_t cp = c[pos];
        if (cp == '\'' && pos + 1 < e) { /* 's 't 'm 'd 're 've 'll (lower case only) */
            uint32_t n1 = c[pos + 1], n2 = pos + 2 < e ? c[pos + 2] : 0;
            if (n1 == 's' || n1 == 't' || n1 == 'm' || n1 == 'd')
                pos += 2;
            else if ((n1 == 'r' && n2 == 'e') || (n1 == 'v' && n2 == 'e') || (n1 == 'l' && n2 == 'l'))
                pos += 3;
        }
        if (pos == start) {
            size_t q = pos + (cp == ' '); /* " ?" before a letter, number or other run */
            int k = kind_at(c, q, e);
            if (k == K_LETTER || k == K_NUMBER || k == K_OTHER) {
                while (kind_at(c, q, e) == k)
                    q++;
                pos = q;
            } else {
                size_t n_space = 0;
                while (kind_at(c, pos + n_space, e) == K_SPACE)
                    n_space++;
                if (n_space > 1 && pos + n_space < e)
                    pos += n_space - 1; /* \s+(?!\S): leave the last */
                else if (n_space > 0)
                    pos += n_space;
                else
                    pos++;
            }
        }
        if (encode_word(w, start, pos)) return -1;
    }
    return 0;
}

int tok_bpe_encode(const svlm_tokenizer *t, const char *text, size_t len, tok_ids *out) {
    if (len == 0) return 0;
    uint32_t *cpt = malloc(len * sizeof *cpt);
    if (!cpt) return -1;
    size_t n = 0;
    for (size_t pos = 0; pos < len;)
        cpt[n++] = svlm_utf8_decode((const unsigned char *)text, len, &pos);

    bpe_work w = {.t = t, .cpt = cpt, .out = out};
    int rc = 0;
    if (t->pre == TOK_PRE_DIGITS_GPT2) { /* every \p{N} alone, the stretches between them as they are */
        size_t run = 0;
        for (size_t i = 0; i < n && !rc; i++) {
            if (!svlm_unicode_is_number(cpt[i])) continue;
            if (i > run) rc = gpt2_split(&w, run, i);
            if (!rc) rc = gpt2_split(&w, i, i + 1);
            run = i + 1;
        }
        if (!rc && run < n) rc = gpt2_split(&w, run, n);
    } else {
        rc = gpt2_split(&w, 0, n);
    }
    free(cpt);
    free(w.buf);
    free(w.sym);
    free(w.queue.v);
    return rc;
}
