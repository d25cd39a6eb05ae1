/*
 * libFuzzer harness: svlm_tokenize / svlm_detokenize / svlm_token_piece on arbitrary bytes with
 * real vocabularies (SPM: stories260K, llama-spm; BPE: gpt-2, refact, starcoder, and mkmodel's
 * smollm vocabulary when FUZZ_TOK_EXTRA names it). Byte 0 picks the vocabulary and flags;
 * the rest is the text (or, with flag 0x80, int32 ids for detokenization).
 * Vocabularies: $FUZZ_VOCAB_DIR, else $SVLM_TEST_DATA/models, else ../shared/models; none found
 * is a skip (77), said on stderr.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llm/gguf.h"
#include "llm/tokenizer.h"

#define MAXV 8
static svlm_tokenizer *toks[MAXV];
static int n_toks;

static void add(const char *path) {
    gguf_file *f = NULL;
    svlm_err err = {0};
    svlm_tokenizer *t = NULL;
    if (gguf_open(path, &f, &err) || svlm_tokenizer_load(f, &t, &err)) {
        fprintf(stderr, "fuzz_tokenizer: %s: %s\n", path, err.msg);
        gguf_close(f);
        return;
    }
    gguf_close(f); /* the tokenizer must not keep pointers into the file */
    toks[n_toks++] = t;
    fprintf(stderr, "fuzz_tokenizer: vocabulary %d: %s (%d tokens)\n", n_toks - 1, path,
            svlm_tokenizer_n_vocab(t));
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc, (void)argv;
    const char *dir = getenv("FUZZ_VOCAB_DIR"), *data = getenv("SVLM_TEST_DATA");
    char dbuf[4096];
    if (!dir) {
        snprintf(dbuf, sizeof dbuf, "%s/models", data && *data ? data : "../shared");
        dir = dbuf;
    }
    static const char *names[] = {"stories260K.gguf", "vocab/ggml-vocab-llama-spm.gguf",
                                  "vocab/ggml-vocab-gpt-2.gguf", "vocab/ggml-vocab-refact.gguf",
                                  "vocab/ggml-vocab-starcoder.gguf"};
    char p[4096];
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (snprintf(p, sizeof p, "%s/%s", dir, names[i]) < (int)sizeof p) add(p);
    }
    const char *extra = getenv("FUZZ_TOK_EXTRA");
    if (extra) add(extra);
    if (!n_toks) {
        fprintf(stderr, "SKIP: no vocabulary found in %s (set SVLM_TEST_DATA or FUZZ_VOCAB_DIR)\n", dir);
        exit(77);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const svlm_tokenizer *t = toks[(data[0] & 7) % n_toks];
    int add_special = data[0] >> 3 & 1, parse_special = data[0] >> 4 & 1, special = data[0] >> 5 & 1;
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    char piece[32];
    if (data[0] & 0x80) {
        size_t n = len / 4;
        int32_t *ids = malloc((n ? n : 1) * sizeof *ids);
        memcpy(ids, text, n * 4);
        free(svlm_detokenize(t, ids, n, special));
        for (size_t i = 0; i < n; i++)
            (void)svlm_token_piece(t, ids[i], special, piece, sizeof piece);
        free(ids);
        return 0;
    }
    int32_t *ids = NULL;
    size_t n = 0;
    svlm_err err = {0};
    if (svlm_tokenize(t, text, len, add_special, parse_special, &ids, &n, &err) == SVLM_OK) {
        int nv = svlm_tokenizer_n_vocab(t);
        for (size_t i = 0; i < n; i++) {
            if (ids[i] < 0 || ids[i] >= nv) abort(); /* ids must be in the vocabulary */
            (void)svlm_token_piece(t, ids[i], special, piece, sizeof piece);
        }
        char *s = svlm_detokenize(t, ids, n, special);
        free(s);
        free(ids);
    }
    return 0;
}
