/* The stream's hand-off to its memory bank (stream_memory.c), shared with stream.c. */
#ifndef SVLM_PIPELINE_STREAM_INTERNAL_H
#define SVLM_PIPELINE_STREAM_INTERNAL_H

#include "pipeline/stream.h"

/* One recent frame's connector rows: the KV cache keeps K/V, not the embeddings the bank wants. */
typedef struct stream_frame_slot {
    int64_t tag; /* the frame's span tag (time in ms) */
    double t;
    int used;
    int n, cap;  /* rows held (a pruned frame has fewer than rows_per_frame), rows allocated */
    float *rows; /* [cap][n_embd] */
} stream_frame_slot;

typedef struct stream_memory {
    svlm_memory *bank;
    int rows, n_embd, top_k, room;
    stream_frame_slot *ring;
    int ring_n, ring_next;
    const gguf_tensor *tok_embd; /* the decoder's input embeddings: the questions' key space */
    int64_t push_errors, missing;
    /* evicted frames whose push into the bank waits for stream_memory_flush (ring slots) */
    int push_q[4], n_push;
} stream_memory;

/* Opens the bank (resuming p->memory->dir when set). */
svlm_status stream_memory_init(stream_memory *sm, const svlm_llama *m, const svlm_stream_params *p,
                               svlm_err *err);
void stream_memory_free(stream_memory *sm);
/* Pushes the frames evicted since the last call into the bank (their eviction only queued them:
 * a batch of streams pushes in parallel after its pass). The stream's lock is held. */
void stream_memory_flush(stream_memory *sm);
/* Keeps the rows of the frame about to be appended (copied into the ring). */
void stream_memory_remember(stream_memory *sm, int64_t tag, double t, const float *rows, int n);
/* Bytes of the frame ring. */
size_t stream_memory_ring_bytes(const stream_memory *sm);
/* The token pruner's memory lookup (vision/stc.h svlm_stc_memory_fn; user = the stream_memory):
 * 1 - svlm_memory_novelty, or below -1 while the bank is empty. */
void stream_memory_similarity(void *user, const float *tokens, int n, int dim, float *similarity);
/* The KV cache's eviction hook (user = the stream_memory): frames go to the bank. */
void stream_memory_on_evict(void *user, const svlm_kv_seq *seq, const svlm_kv_span *span);

/*
 * Retrieves for a question and appends each hit, in time order, as "\nMemory from A to B:" plus
 * its rows (ids -1, rows into *embd) to ids. At most `room` tokens are added. Fills the memory
 * fields of am; appends a readable form to text (when not NULL).
 */
typedef struct stream_prompt {
    int32_t *ids;
    int n, cap;
    float *embd; /* [n_rows][n_embd] */
    int n_rows;
    char *text; /* readable form, or NULL when not asked for */
    size_t text_len, text_cap;
} stream_prompt;
svlm_status stream_prompt_push_text(stream_prompt *p, const svlm_tokenizer *t, const char *text, int special,
                                    svlm_err *err);
void stream_prompt_free(stream_prompt *p);
svlm_status stream_memory_prompt(stream_memory *sm, const svlm_tokenizer *tok, const char *question,
                                 double now, const svlm_ask_opts *o, stream_prompt *out,
                                 svlm_answer_metrics *am, svlm_err *err);

#endif
