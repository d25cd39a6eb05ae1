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

/* Limits the loader enforces; the special-token partition packs them into one 64-bit key. */
enum { TOK_MAX_TOKEN_BYTES = 1024 }; /* bytes of one token's text */
#define TOK_MAX_VOCAB (1u << 24)     /* tokens in a vocabulary */
#define TOK_MAX_TEXT  (1u << 28)     /* bytes of text tokenized at once */

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

/* The special tokens as a compacted trie of their texts: node 0 is the root, each edge a run of
 * bytes. Mode 0 holds every special token (parse_special), mode 1 the user-defined ones only
 * (tokens that are also control or unknown are not split out without parse_special). */
enum { TOK_MODE_PARSE = 0, TOK_MODE_USER = 1 };

typedef struct tok_snode {
    uint32_t text_off;     /* arena offset of a special text that runs through this node */
    uint32_t depth;        /* bytes from the root */
    uint32_t kids, n_kids; /* children: kid[kids .. kids + n_kids), by the first byte of their edge */
    int32_t id[2];         /* per mode, the token whose text ends here (lowest id of equal texts), or -1 */
    uint32_t up[2];        /* per mode, the deepest proper ancestor with an id (0: none) */
} tok_snode;

typedef struct tok_special {
    tok_snode *node;
    uint32_t *kid;      /* child node indices, grouped by parent */
    uint8_t *kid_byte;  /* the first edge byte of each kid */
    uint32_t root[256]; /* the root's child by first byte (0: none) */
    int only_first;     /* the first byte of every special text when they all share it, else -1 */
    size_t n_tokens[2]; /* special tokens per mode */
} tok_special;

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

    tok_special special; /* CONTROL/USER_DEFINED/UNKNOWN tokens, indexed for the partition */
    uint8_t *eog;        /* per id: ends generation */
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

/* A stretch of the input: raw text [off, off+len) or one special token (id >= 0). */
typedef struct tok_frag {
    int32_t id;
    size_t off, len;
} tok_frag;

typedef struct tok_frags {
    tok_frag *v;
    size_t n, cap;
} tok_frags;

/* Builds t->special from the token attributes (0, or -1 when memory runs out); frees it. */
int tok_special_build(svlm_tokenizer *t);
void tok_special_free(tok_special *sp);
/* Splits text around special tokens as llama.cpp does (see tokenizer_special.c). Without
 * parse_special only user-defined tokens are split out. Returns 0, or -1 when memory runs out. */
int tok_partition(const svlm_tokenizer *t, const char *text, size_t len, int parse_special, tok_frags *out);

/* Encode one text fragment (no special tokens inside) and append the ids.
 * Both return 0, or -1 when memory runs out. */
int tok_spm_encode(const svlm_tokenizer *t, const char *text, size_t len, int space_prefix, tok_ids *out);
int tok_bpe_encode(const svlm_tokenizer *t, const char *text, size_t len, tok_ids *out);

#endif
