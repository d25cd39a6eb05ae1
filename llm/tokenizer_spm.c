/*
 * SentencePiece-style tokenization (tokenizer.ggml.model = "llama"), as llama.cpp does it:
 * spaces become "▁", the text is split into UTF-8 characters, and the adjacent pair whose
 * concatenation is the best-scoring vocabulary token is merged until no pair is a token.
 * Characters that end up as no token are written as byte tokens (<0xXX>).
 */
#include <stdlib.h>
#include <string.h>

#include "llm/tokenizer_internal.h"
#include "llm/unicode.h"

typedef struct spm_work {
    const svlm_tokenizer *t;
    const char *buf;
    tok_symbol *sym;
    tok_queue queue;
} spm_work;

/* Queues the merge of symbols l and r when their concatenation is a token. */
static int try_pair(spm_work *w, int32_t l, int32_t r) {
    if (l < 0 || r < 0) return 0;
    uint32_t n = w->sym[l].n + w->sym[r].n;
    int32_t id = tok_lookup(w->t, w->buf + w->sym[l].off, n);
    if (id < 0) return 0;
    return tok_queue_push(&w->queue, (tok_bigram){w->t->tok[id].score, l, r, n});
}

int tok_spm_encode(const svlm_tokenizer *t, const char *text, size_t len, int space_prefix, tok_ids *out) {
    static const char space_mark[3] = {'\xE2', '\x96', '\x81'}; /* "▁" U+2581 */
    size_t n_spaces = (size_t)space_prefix;
    for (size_t i = 0; i < len; i++)
        n_spaces += text[i] == ' ';
    size_t n_buf = len + (size_t)space_prefix + 2 * n_spaces;
    if (n_buf == 0) return 0;
    if (n_buf > UINT32_MAX) return -1;

    char *buf = malloc(n_buf);
    tok_symbol *sym = malloc(n_buf * sizeof *sym);
    spm_work w = {t, buf, sym, {0}};
    int rc = -1;
    if (!buf || !sym) goto done;
    size_t k = 0;
    if (space_prefix) memcpy(buf + k, space_mark, 3), k += 3;
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ')
            memcpy(buf + k, space_mark, 3), k += 3;
        else
            buf[k++] = text[i];
    }

    /* One symbol per UTF-8 character (judged by the lead byte, clamped to the end). */
    int32_t n_sym = 0;
    for (size_t off = 0; off < n_buf;) {
        size_t n = svlm_utf8_lead_len((unsigned char)buf[off]);
        if (n > n_buf - off) n = n_buf - off;
        sym[n_sym] = (tok_symbol){(uint32_t)off, (uint32_t)n, n_sym - 1, off + n < n_buf ? n_sym + 1 : -1};
        n_sym++;
        off += n;
    }
    for (int32_t i = 1; i < n_sym; i++)
        if (try_pair(&w, i - 1, i)) goto done;

    while (w.queue.n) {
        tok_bigram b = tok_queue_pop(&w.queue);
        tok_symbol *l = &sym[b.left], *r = &sym[b.right];
        if (!l->n || !r->n || l->n + r->n != b.size) continue; /* stale: a side was merged since */
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) sym[r->next].prev = b.left;
        if (try_pair(&w, l->prev, b.left) || try_pair(&w, b.left, l->next)) goto done;
    }

    /* Every merge produced a token, so what is left is a token or one unknown character. */
    for (int32_t i = 0; i != -1; i = sym[i].next) {
        int32_t id = tok_lookup(t, buf + sym[i].off, sym[i].n);
        if (id >= 0) {
            if (tok_ids_push(out, id)) goto done;
            continue;
        }
        for (uint32_t j = 0; j < sym[i].n; j++) {
            int32_t b = t->byte_token[(unsigned char)buf[sym[i].off + j]];
            if (b >= 0 && tok_ids_push(out, b)) goto done;
        }
    }
    rc = 0;
done:
    free(buf);
    free(sym);
    free(w.queue.v);
    return rc;
}
