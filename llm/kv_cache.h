/*
 * A paged, bounded KV cache for streams (StreamingLLM / StreamingVLM policy).
 *
 * Storage: a pool of fixed-size pages, each holding `page_tokens` token rows of K and V for every
 * layer (F32 or F16). Pages are reference-counted: forking a sequence shares all its pages, and a
 * sequence that appends into a page it shares copies that page first (copy on write). Freeing a
 * sequence (a finished or cancelled question) drops its references; pages nobody holds go back
 * to the pool's free list.
 *
 * A sequence is the ordered list of the tokens it holds (each token is a slot in some page) and
 * the spans the caller tagged them with: a span is one frame, one dialogue turn or the sinks, and
 * tokens leave only as whole spans. Three kinds have their own budgets: sinks (never evicted),
 * vision and text. Appending a span of a kind first evicts the oldest spans of that kind until
 * the new one fits; an eviction hook sees each span before it goes (the memory bank's input).
 *
 * Pages by kind: a page holds tokens of one kind only. A kind's spans leave oldest first, so its
 * pages leave in the order they came, and a kind's new tokens go into its newest page: a short
 * dialogue turn between two frames never keeps a frame's page alive after the frame has gone.
 * Each kind therefore holds at most its budget in whole pages plus one (part-filled pages at its
 * oldest and newest ends).
 *
 * Promise: a fork keeps every page it shares after its source evicts them, so any sequence may
 * come to hold its whole window of pages on its own (svlm_kv_policy_pages, or what it holds if
 * more: a fork whose source wrote on into their shared newest page of a kind starts a page of its
 * own). The pool promises each sequence that share and never more than max_pages in all: a fork,
 * or a larger budget, that would break the promise is refused at once (SVLM_E_LIMIT, nothing
 * changed) instead of some later append, often the stream's own, finding the pool full. Created
 * sequences are counted but not refused (their appends find the pool full when pages run out, as
 * before). While the promise holds, an append within its sequence's window finds its pages, the
 * pages its eviction frees going to it before anyone else.
 *
 * Positions: a token's RoPE position is its index in the sequence (0..n-1, contiguous after an
 * eviction), or, with reassign_positions off, its index in the whole stream (for comparisons).
 * Keys are stored BEFORE RoPE. A shift therefore never rewrites a page (so shared pages stay
 * shared and F16 keys are never re-rounded); the decoder rotates keys when it copies them into
 * its working copy (llm/llama_eval.c), which it redoes only for the rows an eviction moved.
 *
 * Threads: the pool is safe to use from several threads. A sequence belongs to one thread at a
 * time; forking reads the source, so the caller serialises a fork with appends to the source.
 */
#ifndef SVLM_LLM_KV_CACHE_H
#define SVLM_LLM_KV_CACHE_H

#include <stddef.h>
#include <stdint.h>

#include "kernels/dtype.h"
#include "svlm.h"

typedef enum svlm_kv_kind {
    SVLM_KV_SINK = 0,
    SVLM_KV_VISION = 1,
    SVLM_KV_TEXT = 2,
    SVLM_KV_N_KINDS = 3
} svlm_kv_kind;

typedef struct svlm_kv_pool svlm_kv_pool;
typedef struct svlm_kv_seq svlm_kv_seq;

typedef struct svlm_kv_pool_params {
    int n_layer;
    int kv_dim;      /* elements per token row of K (and of V): n_head_kv * head_dim */
    svlm_dtype type; /* SVLM_F32 or SVLM_F16 */
    int page_tokens; /* token rows per page, e.g. 16 */
    int max_pages;   /* hard bound on the pool's memory */
} svlm_kv_pool_params;

svlm_status svlm_kv_pool_create(const svlm_kv_pool_params *p, svlm_kv_pool **out, svlm_err *err);
/* Every sequence of the pool must have been freed. */
void svlm_kv_pool_free(svlm_kv_pool *pool);
const svlm_kv_pool_params *svlm_kv_pool_params_of(const svlm_kv_pool *pool);
int svlm_kv_pool_pages_in_use(svlm_kv_pool *pool);
/* The sum of the live sequences' shares (see "Promise" above). */
int svlm_kv_pool_pages_promised(svlm_kv_pool *pool);
size_t svlm_kv_pool_page_bytes(const svlm_kv_pool *pool);

typedef struct svlm_kv_policy {
    int budget[SVLM_KV_N_KINDS]; /* most tokens of each kind held at once */
    int reassign_positions;      /* 1: position = index in the cache; 0: index in the stream */
} svlm_kv_policy;

/* One span as the eviction hook sees it: tokens start..start+n-1 of the sequence, still there. */
typedef struct svlm_kv_span {
    svlm_kv_kind kind;
    int64_t tag; /* the caller's tag: a frame time, a turn number */
    int start, n;
    int64_t stream_pos; /* index in the stream of the span's first token */
} svlm_kv_span;

typedef struct svlm_kv_evict_hook {
    void (*on_evict)(void *user, const svlm_kv_seq *seq, const svlm_kv_span *span);
    void *user;
} svlm_kv_evict_hook;

/* The most pages a sequence under the policy holds: each kind's budget in whole pages plus one. */
int svlm_kv_policy_pages(const svlm_kv_policy *policy, int page_tokens);

svlm_status svlm_kv_seq_create(svlm_kv_pool *pool, const svlm_kv_policy *policy, svlm_kv_seq **out,
                               svlm_err *err);
/* A sequence holding the same tokens as src, sharing its pages; no hook. Refused (SVLM_E_LIMIT)
 * when the pool cannot promise it src's share. */
svlm_status svlm_kv_seq_fork(const svlm_kv_seq *src, svlm_kv_seq **out, svlm_err *err);
void svlm_kv_seq_free(svlm_kv_seq *seq);
void svlm_kv_seq_set_hook(svlm_kv_seq *seq, const svlm_kv_evict_hook *hook);
/* Replaces the budgets (e.g. a question's fork may grow its text window for the answer). Takes
 * effect at the next append; nothing is evicted now, so a budget below what the sequence holds of
 * its kind is refused (SVLM_E_INVALID, as an invalid policy is), and a larger window the pool
 * cannot promise (SVLM_E_LIMIT). */
svlm_status svlm_kv_seq_set_policy(svlm_kv_seq *seq, const svlm_kv_policy *policy, svlm_err *err);

int svlm_kv_seq_len(const svlm_kv_seq *seq);
int svlm_kv_seq_count(const svlm_kv_seq *seq, svlm_kv_kind kind);
int svlm_kv_seq_capacity(const svlm_kv_seq *seq); /* sum of the budgets */
int svlm_kv_seq_pages(const svlm_kv_seq *seq);    /* distinct pages it refers to, shared or not */
int svlm_kv_seq_n_spans(const svlm_kv_seq *seq);
int64_t svlm_kv_seq_evicted_spans(const svlm_kv_seq *seq);
int64_t svlm_kv_seq_evicted_tokens(const svlm_kv_seq *seq);
svlm_kv_pool *svlm_kv_seq_pool(const svlm_kv_seq *seq);

/*
 * Starts a new span of n tokens at the end (evicting older spans of the kind first, whole), and
 * returns the index of its first token. The rows are then written with svlm_kv_seq_write. Fails
 * (SVLM_E_LIMIT) without changing anything when n exceeds the kind's budget or the pool is full.
 */
svlm_status svlm_kv_seq_append(svlm_kv_seq *seq, svlm_kv_kind kind, int64_t tag, int n, int *first,
                               svlm_err *err);
/* Stores n rows (pre-RoPE keys, values; f32 [n][kv_dim]) of one layer at indices first.. */
void svlm_kv_seq_write(svlm_kv_seq *seq, int layer, int first, int n, const float *k, const float *v);
/* The stored rows of token idx (kv_dim elements of the pool's type). */
const void *svlm_kv_seq_k_row(const svlm_kv_seq *seq, int layer, int idx);
const void *svlm_kv_seq_v_row(const svlm_kv_seq *seq, int layer, int idx);
/* The RoPE position of token idx under the policy. */
int32_t svlm_kv_seq_pos(const svlm_kv_seq *seq, int idx);

/*
 * For working copies (the decoder's contiguous K/V): a sequence has a unique id; `epoch` grows at
 * each eviction, and rows below `kept` were untouched by the latest one. A copy made at epoch e
 * with m rows is still valid for min(m, kept) rows at epoch e + 1, for m rows at epoch e. When
 * the latest eviction removed one run of `gone` rows at `kept` (gone > 0), the rows after it only
 * moved: row i >= kept at epoch e + 1 was row i + gone at epoch e (its position may differ).
 */
typedef struct svlm_kv_version {
    uint64_t uid, epoch;
    int kept, gone;
} svlm_kv_version;
svlm_kv_version svlm_kv_seq_version(const svlm_kv_seq *seq);

#endif
