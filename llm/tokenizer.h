/*
 * Tokenizers read from GGUF metadata: SentencePiece-style (tokenizer.ggml.model = llama) and
 * byte-level BPE (gpt2; pre-tokenizers smollm, gpt-2, starcoder, refact), with special tokens.
 */
#ifndef SVLM_LLM_TOKENIZER_H
#define SVLM_LLM_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "llm/gguf.h"
#include "svlm.h"

typedef struct svlm_tokenizer svlm_tokenizer;

svlm_status svlm_tokenizer_load(const gguf_file *f, svlm_tokenizer **out, svlm_err *err);
void svlm_tokenizer_free(svlm_tokenizer *t);

int svlm_tokenizer_n_vocab(const svlm_tokenizer *t);
int32_t svlm_tokenizer_bos(const svlm_tokenizer *t); /* -1 if none */
int32_t svlm_tokenizer_eos(const svlm_tokenizer *t); /* -1 if none */
int svlm_tokenizer_add_bos(const svlm_tokenizer *t); /* whether add_special prepends BOS */
/* End-of-generation: EOS, EOT, <end_of_utterance>, <|im_end|> and the like. */
int svlm_tokenizer_is_eog(const svlm_tokenizer *t, int32_t id);
/* Id of a token whose text is exactly `text` (e.g. "<image>"), or -1. */
int32_t svlm_tokenizer_find(const svlm_tokenizer *t, const char *text);

/* Tokenizes len bytes of text into a new array (*ids, caller frees). add_special: BOS/EOS as
 * the vocabulary asks; parse_special: control tokens written in the text become their ids. */
svlm_status svlm_tokenize(const svlm_tokenizer *t, const char *text, size_t len, int add_special,
                          int parse_special, int32_t **ids, size_t *n_ids, svlm_err *err);

/* The bytes of one token as it appears in output (control tokens: empty unless `special`).
 * Writes up to cap bytes and returns the full length (may split a UTF-8 character: callers
 * streaming text should hold back incomplete sequences). Invalid ids give 0. */
size_t svlm_token_piece(const svlm_tokenizer *t, int32_t id, int special, char *buf, size_t cap);
/* The whole piece: in buf when it fits, else in a new block set in *heap (the caller frees it;
 * NULL when the piece fit, and on running out of memory, which returns NULL). A piece may be
 * longer than the token's text: an unknown byte's marker stands for each of its bytes. */
const char *svlm_token_piece_whole(const svlm_tokenizer *t, int32_t id, int special, char *buf, size_t cap,
                                   char **heap, size_t *len);

/* Whole-sequence detokenization into a new NUL-terminated string (caller frees). */
char *svlm_detokenize(const svlm_tokenizer *t, const int32_t *ids, size_t n, int special);
/* The same with its length in *len: a token may stand for a NUL byte, which ends the C string early. */
char *svlm_detokenize_len(const svlm_tokenizer *t, const int32_t *ids, size_t n, int special, size_t *len);

#endif
