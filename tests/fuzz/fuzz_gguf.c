/*
 * libFuzzer harness: GGUF parsing (gguf_open_buffer), the typed getters, the tokenizer loader
 * (svlm_tokenizer_load + a tokenize/detokenize round), the mmproj loader (svlm_mmproj_from_gguf)
 * and the Llama loader (svlm_llama_load, through a memfd) with one token through a model it loads.
 *
 * Pass 1 parses the input as is. Pass 2 appends PAD zero bytes (sparse, in a memfd) so that an
 * input holding only header + metadata + tensor table (seeds truncated at the data section)
 * still reaches the loaders' tensor checks without the fuzzer having to carry megabytes of
 * weights.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "llm/gguf.h"
#include "llm/llama.h"
#include "llm/tokenizer.h"
#include "vision/mmproj.h"

#define PAD ((size_t)4 << 20)

static void poke_getters(const gguf_file *f) {
    for (uint64_t i = 0; i < f->n_kv; i++) {
        const char *k = f->kv[i].key;
        uint32_t u;
        int64_t i64;
        float x;
        int b;
        if (gguf_find_kv(f, k) != &f->kv[i]) abort();
        (void)gguf_get_u32(f, k, &u);
        (void)gguf_get_i64(f, k, &i64);
        (void)gguf_get_f32(f, k, &x);
        (void)gguf_get_bool(f, k, &b);
        free(gguf_get_str_dup(f, k));
        for (int t = 0; t < GGUF_VTYPE_COUNT; t++)
            (void)gguf_get_arr(f, k, (gguf_vtype)t);
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        if (gguf_find_tensor(f, t->name) != t) abort();
        /* every tensor must lie inside the buffer */
        if ((const uint8_t *)t->data < f->map || (const uint8_t *)t->data + t->nbytes > f->map + f->size)
            abort();
    }
}

static void poke_tokenizer(const gguf_file *f) {
    svlm_tokenizer *t = NULL;
    svlm_err err = {0};
    if (svlm_tokenizer_load(f, &t, &err) != SVLM_OK) return;
    static const char text[] = "Hello world! <s> 123 don't  \xe2\x96\x81x \xf0\x9f\x98\x80 <|im_end|>\n\t";
    int32_t *ids = NULL;
    size_t n = 0;
    for (int mode = 0; mode < 4; mode++) {
        if (svlm_tokenize(t, text, sizeof text - 1, mode & 1, mode >> 1, &ids, &n, &err) == SVLM_OK) {
            for (size_t i = 0; i < n; i++)
                if (ids[i] < 0 || ids[i] >= svlm_tokenizer_n_vocab(t)) abort(); /* ids index embeddings */
            free(svlm_detokenize(t, ids, n, mode & 1));
            free(ids);
        }
        ids = NULL;
    }
    int nv = svlm_tokenizer_n_vocab(t);
    char buf[64];
    for (int i = -1; i <= nv && i < 4096; i++)
        (void)svlm_token_piece(t, i, i & 1, buf, sizeof buf);
    (void)svlm_tokenizer_find(t, "<image>");
    (void)svlm_tokenizer_is_eog(t, 2);
    svlm_tokenizer_free(t);
}

static int memfd = -1;
static char memfd_path[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static int debug = -1;
    if (debug < 0) debug = getenv("FUZZ_DEBUG") != NULL;
    svlm_err err = {0};
    svlm_status st;
    /* pass 1: the bytes as given */
    gguf_file *f = NULL;
    if (gguf_open_buffer(data, size, &f, &err) == SVLM_OK) {
        poke_getters(f);
        poke_tokenizer(f);
        svlm_mmproj *mp = NULL;
        if (svlm_mmproj_from_gguf(f, &mp, &err) == SVLM_OK) svlm_mmproj_free(mp); /* takes f */
    }
    /* pass 2: padded with zeros, through the file loaders */
    if (size < 24 || memcmp(data, "GGUF", 4)) return 0;
    if (memfd < 0) {
        memfd = memfd_create("fuzz_gguf", 0);
        if (memfd < 0) abort();
        snprintf(memfd_path, sizeof memfd_path, "/proc/self/fd/%d", memfd);
    }
    if (ftruncate(memfd, 0) || ftruncate(memfd, (off_t)(size + PAD)) ||
        pwrite(memfd, data, size, 0) != (ssize_t)size)
        abort();
    svlm_llama *m = NULL;
    st = svlm_llama_load(memfd_path, &m, &err);
    if (debug) fprintf(stderr, "llama: %d %s\n", st, st ? err.msg : "ok");
    if (st == SVLM_OK) { /* one token through the decoder: a loaded model is read in place */
        static svlm_kernels *k;
        if (!k && svlm_kernels_create_cpu(1, &k, &err) != SVLM_OK) abort();
        svlm_llama_ctx *c = NULL;
        const int32_t tok = 0;
        float *logits = malloc(sizeof(float) * (size_t)svlm_llama_hparams_of(m)->n_vocab);
        if (logits && svlm_llama_ctx_create(m, k, 4, SVLM_F32, &c, &err) == SVLM_OK) {
            st = svlm_llama_eval(c, &tok, NULL, 1, logits, 0, &err);
            if (debug) fprintf(stderr, "eval: %d %s\n", st, st ? err.msg : "ok");
            svlm_llama_ctx_free(c);
        }
        free(logits);
        svlm_llama_free(m);
    }
    svlm_mmproj *mp = NULL;
    st = svlm_mmproj_load(memfd_path, &mp, &err);
    if (debug) fprintf(stderr, "mmproj: %d %s\n", st, st ? err.msg : "ok");
    if (st == SVLM_OK) svlm_mmproj_free(mp);
    return 0;
}
