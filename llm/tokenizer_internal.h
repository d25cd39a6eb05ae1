/*
 * Internals shared by the tokenizer files: the vocabulary tables, a growable id list and
 * the bigram queue that both merge algorithms use.
 */
#ifndef SVLM_LLM_TOKENIZER_INTERNAL_H
#define SVLM_LLM_TOKENIZER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "llm/tokenizer.h"

/* Token attributes (bit set; llama.cpp's llama_token_attr values). */
enum {
    TOK_ATTR_UNDEFINED = 0,
    TOK_ATTR_UNKNOWN = 1 << 0,
    TOK_ATTR_UNUSED = 1 << 1,
    TOK_ATTR_NORMAL = 1 << 2,
    TOK_ATTR_CONTROL = 1 << 3,
    TOK_ATTR_USER_DEFINED = 1 << 4,
    TOK_ATTR_BYTE = 1 << 5,
};

typedef enum { TOK_KIND_SPM, TOK_KIND_BPE } tok_kind;
/* BPE pre-tokenizers: the GPT-2 pattern alone, or every \p{N} split off first. */
typedef enum { TOK_PRE_GPT2, TOK_PRE_DIGITS_GPT2 } tok_pre;

typedef struct tok_entry {
    uint32_t text_off, text_len; /* into arena */
    float score;
    uint16_t attr;
} tok_entry;

/* Open-addressing hash from a byte string to an index (slots hold index + 1, 0 = empty). */
typedef struct tok_hash {
    uint32_t *slots;
    uint32_t mask;
} tok_hash;

struct svlm_tokenizer {
    tok_kind kind;
    tok_pre pre;
    int n_vocab;
    tok_entry *tok;
    char *arena; /* token texts and merge strings */
    size_t arena_len, arena_cap;
    tok_hash by_text; /* token text -> id (the last id wins on duplicates, as in llama.cpp) */

    uint32_t n_merges;
    uint32_t *merge_off, *merge_len; /* "left right" strings in arena, by rank */
    tok_hash merge_rank;             /* merge string -> rank (the first rank wins) */

    int32_t bos, eos, unk, eot, eom;
    int add_bos, add_eos, add_space_prefix, clean_spaces;
    int32_t byte_token[256]; /* fallback id for a raw byte, or -1 */

    int32_t *special; /* CONTROL/USER_DEFINED/UNKNOWN ids, longest text first */
    size_t n_special;
    uint8_t *eog; /* per id: ends generation */
};

typedef struct tok_ids {
    int32_t *v;
    size_t n, cap;
} tok_ids;

int tok_ids_push(tok_ids *ids, int32_t id); /* 0 on success, -1 out of memory */

static inline const char *tok_text(const svlm_tokenizer *t, int32_t id, size_t *len) {
    *len = t->tok[id].text_len;
    return t->arena + t->tok[id].text_off;
}

uint64_t tok_hash_bytes(uint64_t h, const char *s, size_t n);
#define TOK_HASH_SEED 0xcbf29ce484222325ULL

/* Id of the token whose text is s[0..n), or -1. */
int32_t tok_lookup(const svlm_tokenizer *t, const char *s, size_t n);
/* Rank of the merge "left right", or -1. */
int32_t tok_merge_rank(const svlm_tokenizer *t, const char *l, size_t nl, const char *r, size_t nr);

/* A queue of candidate merges of adjacent symbols: the highest priority comes first, ties go
 * to the leftmost pair. `size` is the merged byte length, used to spot stale entries. */
typedef struct tok_bigram {
    double prio;
    int32_t left, right;
    uint32_t size;
} tok_bigram;

typedef struct tok_queue {
    tok_bigram *v;
    size_t n, cap;
} tok_queue;

int tok_queue_push(tok_queue *q, tok_bigram b); /* 0 on success, -1 out of memory */
tok_bigram tok_queue_pop(tok_queue *q);         /* requires q->n > 0 */

/* A symbol of the merge algorithms: a byte range of the working text in a linked list. */
typedef struct tok_symbol {
    uint32_t off, n; /* n == 0: merged away */
    int32_t prev, next;
} tok_symbol;

/* Encode one text fragment (no special tokens inside) and append the ids.
 * Both return 0, or -1 when memory runs out. */
int tok_spm_encode(const svlm_tokenizer *t, const char *text, size_t len, int space_prefix, tok_ids *out);
int tok_bpe_encode(const svlm_tokenizer *t, const char *text, size_t len, tok_ids *out);

#endif
