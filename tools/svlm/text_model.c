#include "text_model.h"

#include <stdio.h>
#include <unistd.h>

int cli_text_model_open(cli_text_model *tm, const char *path, const char *backend, int threads) {
    svlm_err err = {0};
    tm->model = NULL;
    tm->kernels = NULL;
    if (svlm_kernels_create_named(backend, threads, &tm->kernels, &err) != SVLM_OK) {
        fprintf(stderr, "svlm: cannot start the compute backend: %s\n", err.msg);
        return -1;
    }
    if (svlm_llama_load(path, &tm->model, &err) != SVLM_OK) {
        fprintf(stderr, "svlm: cannot load model: %s\n", err.msg);
        svlm_kernels_destroy(tm->kernels);
        tm->kernels = NULL;
        return -1;
    }
    return 0;
}

int cli_kv_fits(const svlm_llama_hparams *hp, long long n_ctx, svlm_dtype kv, const char *fewer) {
    const double kv_bytes = (double)n_ctx * hp->n_layer * 2.0 * hp->n_head_kv * hp->head_dim *
                            (kv == SVLM_F16 ? 2.0 : 4.0),
                 ram = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGESIZE);
    if (!(ram > 0 && kv_bytes > 0.75 * ram)) return 1;
    fprintf(
        stderr,
        "svlm: %lld tokens need %.1f GiB of KV cache, more than this machine's %.1f GiB of memory allows: "
        "ask for fewer with %s (the model was trained on %d tokens)%s\n",
        n_ctx, kv_bytes / (1 << 30), ram / (1 << 30), fewer, hp->n_ctx_train,
        kv == SVLM_F16 ? "" : ", or halve it with --kv f16");
    return 0;
}

void cli_text_model_close(cli_text_model *tm) {
    svlm_llama_free(tm->model);
    svlm_kernels_destroy(tm->kernels);
    tm->model = NULL;
    tm->kernels = NULL;
}

/* Expected length of a UTF-8 sequence from its first byte (1 for invalid lead bytes). */
static size_t seq_len(unsigned char c) {
    return c < 0xC0 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : c < 0xF8 ? 4 : 1;
}

void cli_utf8_put(cli_utf8_stream *s, FILE *f, const char *bytes, size_t len) {
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)bytes[i];
        if (s->n && (c & 0xC0) != 0x80) cli_utf8_flush(s, f); /* broken sequence: emit as is */
        s->pending[s->n++] = (char)c;
        if (s->n >= seq_len((unsigned char)s->pending[0]) || s->n == sizeof s->pending) {
            fwrite(s->pending, 1, s->n, f);
            s->n = 0;
        }
    }
    fflush(f);
}

void cli_utf8_flush(cli_utf8_stream *s, FILE *f) {
    if (s->n) fwrite(s->pending, 1, s->n, f);
    s->n = 0;
    fflush(f);
}
