/*
 * The special-token partition: the text is split around control, user-defined and unknown
 * tokens exactly as llama.cpp's tokenizer_st_partition does it. There, each special token in
 * turn (longest text first, then lowest id) takes its leftmost non-overlapping occurrences in
 * whatever is still raw text, which scans the text once per special token: a vocabulary of
 * 50,000 of them made 100 KB of text take seconds.
 *
 * Here a compacted trie of the special texts gives, in one walk per position, the longest
 * special token starting there; the shorter ones starting there are its ancestors with an id.
 * Taking candidates (token, position) in llama.cpp's order (longest, then lowest id, then
 * leftmost) from a heap and keeping each one that overlaps nothing kept before gives the same
 * split: a token's occurrence survives llama.cpp's passes exactly when no token ranked before
 * it took a byte of it, and its own earlier occurrences are among those. The cost is one walk
 * per position where a special text may start, as deep as the text follows the trie (a few bytes
 * for real vocabularies, at most the longest special text: 1 KB), plus a heap operation per
 * candidate, whatever the number of special tokens.
 */
#include <stdlib.h>
#include <string.h>

#include "llm/tokenizer_internal.h"

/* A candidate's heap key orders (longest text, lowest id, leftmost position) in one integer. */
#define KEY_POS_BITS 28
#define KEY_ID_BITS  24
_Static_assert(TOK_MAX_TEXT <= (1u << KEY_POS_BITS), "positions fit the key");
_Static_assert(TOK_MAX_VOCAB <= (1u << KEY_ID_BITS), "ids fit the key");
_Static_assert(TOK_MAX_TOKEN_BYTES <= 1024, "(1024 - length) fits the key's top 10 bits below bit 62");

static int is_special(uint16_t attr) {
    return (attr & (TOK_ATTR_CONTROL | TOK_ATTR_USER_DEFINED | TOK_ATTR_UNKNOWN)) != 0;
}

/* Without parse_special, control and unknown tokens stay text (even if also user-defined). */
static int in_user_mode(uint16_t attr) {
    return !(attr & (TOK_ATTR_CONTROL | TOK_ATTR_UNKNOWN));
}

/* ---- building the trie ------------------------------------------------------------------ */

typedef struct text_key {
    const char *s;
    uint32_t len;
    int32_t id;
} text_key;

static int cmp_text(const void *a, const void *b) { /* bytes, a prefix first, then by id */
    const text_key *x = a, *y = b;
    int c = memcmp(x->s, y->s, x->len < y->len ? x->len : y->len);
    if (c) return c;
    if (x->len != y->len) return x->len < y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

typedef struct trie_build {
    tok_snode *node;
    uint32_t *parent;
    uint32_t n;
} trie_build;

static uint32_t add_node(trie_build *b, uint32_t parent, uint32_t depth, uint32_t text_off) {
    uint32_t v = b->n++;
    b->node[v] = (tok_snode){.text_off = text_off, .depth = depth, .id = {-1, -1}};
    b->parent[v] = parent;
    return v;
}

/* The texts sorted, equal texts merged into one leaf holding each mode's lowest id. Inserting
 * in order keeps the path to the last leaf on a stack: a new text shares lcp bytes with the
 * last one, so it hangs below the deepest node of that path at depth <= lcp, which is split at
 * lcp if no node is there. Returns the node count. */
static uint32_t build_nodes(const svlm_tokenizer *t, const text_key *keys, size_t n, trie_build *b,
                            uint32_t *stack) {
    uint32_t top = 0;
    stack[0] = add_node(b, 0, 0, 0);
    for (size_t i = 0; i < n; i++) {
        const text_key *k = &keys[i];
        if (i && k->len == keys[i - 1].len && !memcmp(k->s, keys[i - 1].s, k->len)) {
            tok_snode *leaf = &b->node[stack[top]]; /* an equal text: ids come lowest first */
            if (leaf->id[TOK_MODE_USER] < 0 && in_user_mode(t->tok[k->id].attr))
                leaf->id[TOK_MODE_USER] = k->id;
            continue;
        }
        uint32_t lcp = 0;
        if (i) {
            const text_key *p = &keys[i - 1];
            while (lcp < p->len && lcp < k->len && p->s[lcp] == k->s[lcp])
                lcp++;
        }
        uint32_t last = 0;
        while (b->node[stack[top]].depth > lcp)
            last = stack[top--];
        if (b->node[stack[top]].depth < lcp) { /* split the edge to `last` at lcp */
            uint32_t mid = add_node(b, stack[top], lcp, b->node[last].text_off);
            b->parent[last] = mid;
            stack[++top] = mid;
        }
        uint32_t leaf = add_node(b, stack[top], k->len, (uint32_t)(k->s - t->arena));
        b->node[leaf].id[TOK_MODE_PARSE] = k->id;
        if (in_user_mode(t->tok[k->id].attr)) b->node[leaf].id[TOK_MODE_USER] = k->id;
        stack[++top] = leaf;
    }
    return b->n;
}

/* Sets each node's up links from its parent's, parents first (breadth first from the root). */
static int link_up(const tok_special *sp, tok_snode *node, uint32_t n) {
    uint32_t *queue = malloc((size_t)n * sizeof *queue);
    if (!queue) return -1;
    uint32_t q_end = 1;
    queue[0] = 0;
    for (uint32_t q = 0; q < q_end; q++) {
        const tok_snode *p = &node[queue[q]];
        for (uint32_t i = p->kids; i < p->kids + p->n_kids; i++) {
            uint32_t v = sp->kid[i];
            for (int m = 0; m < 2; m++)
                node[v].up[m] = p->id[m] >= 0 ? queue[q] : p->up[m];
            queue[q_end++] = v;
        }
    }
    free(queue);
    return 0;
}

/* Groups the children by parent, ordered by their first edge byte, then sets the up links. */
static int link_nodes(svlm_tokenizer *t, trie_build *b) {
    tok_special *sp = &t->special;
    const uint32_t n = b->n;
    uint64_t *order = malloc(((size_t)n + 1) * sizeof *order);
    sp->kid = malloc(((size_t)n + 1) * sizeof *sp->kid);
    sp->kid_byte = malloc((size_t)n + 1);
    if (!order || !sp->kid || !sp->kid_byte) {
        free(order);
        return -1;
    }
    for (uint32_t v = 1; v < n; v++) { /* (parent, byte, node) packed: node indices < 2^26 */
        unsigned char c = (unsigned char)t->arena[b->node[v].text_off + b->node[b->parent[v]].depth];
        order[v - 1] = ((uint64_t)b->parent[v] << 8 | c) << 26 | v;
    }
    qsort(order, n - 1, sizeof *order, cmp_u64);
    for (uint32_t i = 0; i + 1 < n; i++) {
        uint32_t v = (uint32_t)(order[i] & ((1u << 26) - 1)), p = b->parent[v];
        unsigned char c = (unsigned char)(order[i] >> 26);
        if (!b->node[p].n_kids++) b->node[p].kids = i;
        sp->kid[i] = v;
        sp->kid_byte[i] = c;
        if (p == 0) sp->root[c] = v;
    }
    sp->only_first = b->node[0].n_kids == 1 ? sp->kid_byte[0] : -1;
    free(order);
    return link_up(sp, b->node, n);
}

int tok_special_build(svlm_tokenizer *t) {
    tok_special *sp = &t->special;
    size_t n = 0;
    for (int32_t id = 0; id < t->n_vocab; id++)
        n += is_special(t->tok[id].attr);
    text_key *keys = malloc((n + 1) * sizeof *keys);
    uint32_t *stack = malloc((n + 2) * sizeof *stack);
    /* a leaf per distinct text and at most one split node per leaf, plus the root */
    trie_build b = {malloc((2 * n + 1) * sizeof *b.node), malloc((2 * n + 1) * sizeof *b.parent), 0};
    int rc = -1;
    if (!keys || !stack || !b.node || !b.parent) goto out;
    n = 0;
    for (int32_t id = 0; id < t->n_vocab; id++) {
        if (!is_special(t->tok[id].attr)) continue;
        size_t len;
        const char *s = tok_text(t, id, &len);
        keys[n++] = (text_key){s, (uint32_t)len, id};
        sp->n_tokens[TOK_MODE_PARSE]++;
        sp->n_tokens[TOK_MODE_USER] += in_user_mode(t->tok[id].attr);
    }
    qsort(keys, n, sizeof *keys, cmp_text);
    build_nodes(t, keys, n, &b, stack);
    if (link_nodes(t, &b)) goto out;
    sp->node = b.node;
    b.node = NULL;
    rc = 0;
out:
    free(keys);
    free(stack);
    free(b.node);
    free(b.parent);
    return rc;
}

void tok_special_free(tok_special *sp) {
    free(sp->node);
    free(sp->kid);
    free(sp->kid_byte);
    memset(sp, 0, sizeof *sp);
}

/* ---- finding candidates ----------------------------------------------------------------- */

static uint32_t kid_of(const tok_special *sp, const tok_snode *nd, unsigned char c) {
    uint32_t lo = nd->kids, hi = nd->kids + nd->n_kids;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        if (sp->kid_byte[mid] < c)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < nd->kids + nd->n_kids && sp->kid_byte[lo] == c ? sp->kid[lo] : 0;
}

/* The deepest node whose text starts s[pos..] and is a token of the mode; 0 if none. */
static uint32_t longest_at(const svlm_tokenizer *t, const unsigned char *s, size_t len, size_t pos,
                           int mode) {
    const tok_special *sp = &t->special;
    const unsigned char *arena = (const unsigned char *)t->arena;
    uint32_t best = 0, d = 0, v = sp->root[s[pos]];
    while (v) {
        const tok_snode *nd = &sp->node[v];
        if (nd->depth > len - pos) break;
        /* the edge's first byte chose v; the rest of it must follow (short edges, as nested
         * tokens like "a", "aa", "aaa" make, compare faster without a call) */
        const uint32_t rest = nd->depth - d - 1;
        if (rest > 16) {
            if (memcmp(s + pos + d + 1, arena + nd->text_off + d + 1, rest)) break;
        } else {
            for (uint32_t i = d + 1; i < nd->depth; i++)
                if (s[pos + i] != arena[nd->text_off + i]) return best;
        }
        d = nd->depth;
        if (nd->id[mode] >= 0) best = v;
        v = pos + d < len ? kid_of(sp, nd, s[pos + d]) : 0;
    }
    return best;
}

typedef struct cand {
    uint64_t key;
    uint32_t node;
} cand;

typedef struct cand_heap {
    cand *v;
    size_t n, cap;
} cand_heap;

static uint64_t cand_key(const tok_snode *nd, size_t pos, int mode) {
    return (uint64_t)(TOK_MAX_TOKEN_BYTES - nd->depth) << (KEY_ID_BITS + KEY_POS_BITS) |
           (uint64_t)nd->id[mode] << KEY_POS_BITS | pos;
}

static int heap_push(cand_heap *h, cand c) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        cand *v = realloc(h->v, cap * sizeof *v);
        if (!v) return -1;
        h->v = v;
        h->cap = cap;
    }
    size_t i = h->n++;
    for (; i > 0 && c.key < h->v[(i - 1) / 2].key; i = (i - 1) / 2)
        h->v[i] = h->v[(i - 1) / 2];
    h->v[i] = c;
    return 0;
}

static cand heap_pop(cand_heap *h) { /* requires h->n > 0 */
    cand top = h->v[0], last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && h->v[c + 1].key < h->v[c].key) c++;
        if (last.key <= h->v[c].key) break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n) h->v[i] = last;
    return top;
}

/* ---- the partition ---------------------------------------------------------------------- */

static int frag_push(tok_frags *fs, int32_t id, size_t off, size_t len) {
    if (fs->n == fs->cap) {
        size_t cap = fs->cap ? fs->cap * 2 : 16;
        tok_frag *v = realloc(fs->v, cap * sizeof *v);
        if (!v) return -1;
        fs->v = v;
        fs->cap = cap;
    }
    fs->v[fs->n++] = (tok_frag){id, off, len};
    return 0;
}

/* Takes candidates in llama.cpp's order and keeps those that overlap nothing kept: kept[]
 * gets each one's key with the position in front (so sorting it orders the text). A candidate
 * that runs into kept bytes gives way to the next shorter token starting at its position
 * that ends before them. */
static int select_tokens(const svlm_tokenizer *t, cand_heap *h, uint8_t *covered, int mode, uint64_t *kept,
                         size_t *n_kept) {
    const tok_snode *node = t->special.node;
    const uint64_t pos_mask = (1u << KEY_POS_BITS) - 1;
    while (h->n) {
        cand c = heap_pop(h);
        size_t pos = (size_t)(c.key & pos_mask);
        if (covered[pos]) continue; /* so is every token starting there */
        uint32_t depth = node[c.node].depth;
        const uint8_t *hit = memchr(covered + pos, 1, depth);
        if (!hit) {
            memset(covered + pos, 1, depth);
            kept[(*n_kept)++] = (uint64_t)pos << KEY_ID_BITS | (uint64_t)node[c.node].id[mode];
            continue;
        }
        uint32_t u = node[c.node].up[mode];
        while (u && node[u].depth > (uint32_t)(hit - (covered + pos)))
            u = node[u].up[mode];
        if (u && heap_push(h, (cand){cand_key(&node[u], pos, mode), u})) return -1;
    }
    return 0;
}

/* The fragments between the kept tokens (sorted by position). */
static int emit_fragments(const svlm_tokenizer *t, const uint64_t *kept, size_t n_kept, size_t len,
                          tok_frags *out) {
    size_t at = 0;
    for (size_t i = 0; i < n_kept; i++) {
        size_t pos = (size_t)(kept[i] >> KEY_ID_BITS);
        int32_t id = (int32_t)(kept[i] & ((1u << KEY_ID_BITS) - 1));
        if (pos > at && frag_push(out, -1, at, pos - at)) return -1;
        if (frag_push(out, id, 0, 0)) return -1;
        at = pos + t->tok[id].text_len;
    }
    return at < len ? frag_push(out, -1, at, len - at) : 0;
}

/* The longest token of the mode at every position that has one, into the heap. */
static int find_candidates(const svlm_tokenizer *t, const unsigned char *s, size_t len, int mode,
                           cand_heap *h) {
    const tok_special *sp = &t->special;
    for (size_t pos = 0; sp->n_tokens[mode] && pos < len; pos++) {
        if (sp->only_first >= 0) { /* real vocabularies: every special text starts with '<' */
            const unsigned char *next = memchr(s + pos, sp->only_first, len - pos);
            if (!next) break;
            pos = (size_t)(next - s);
        } else if (!sp->root[s[pos]]) {
            continue;
        }
        uint32_t v = longest_at(t, s, len, pos, mode);
        if (v && heap_push(h, (cand){cand_key(&sp->node[v], pos, mode), v})) return -1;
    }
    return 0;
}

int tok_partition(const svlm_tokenizer *t, const char *text, size_t len, int parse_special, tok_frags *out) {
    const int mode = parse_special ? TOK_MODE_PARSE : TOK_MODE_USER;
    cand_heap h = {0};
    uint8_t *covered = NULL;
    uint64_t *kept = NULL;
    size_t n_kept = 0;
    int rc = -1;
    *out = (tok_frags){0};
    if (find_candidates(t, (const unsigned char *)text, len, mode, &h)) goto out;
    if (h.n) {
        /* at most one kept token per start position, so per candidate found */
        covered = calloc(len, 1);
        kept = malloc(h.n * sizeof *kept);
        if (!covered || !kept || select_tokens(t, &h, covered, mode, kept, &n_kept)) goto out;
        qsort(kept, n_kept, sizeof *kept, cmp_u64);
    }
    rc = emit_fragments(t, kept, n_kept, len, out);
out:
    free(h.v);
    free(covered);
    free(kept);
    if (rc) {
        free(out->v);
        *out = (tok_frags){0};
    }
    return rc;
}
