/* svlm logits: the logits after each token of a given sequence, as raw float32. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "text_model.h"

static void usage(FILE *f) {
    fprintf(f, "usage: svlm logits -m MODEL --tokens ID,ID,... --out FILE [--threads K] [--kv f32|f16]\n"
               "                   [--backend B]\n"
               "  writes float32 row-major [n_tokens][n_vocab]; row i = logits after tokens "
               "0..i\n" CLI_BACKEND_HELP);
}

/* Parses "1,2,3" into a new array. */
static int parse_ids(const char *s, int32_t **out, int *n) {
    int cap = 16, cnt = 0;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) return -1;
    const char *p = s;
    while (*p) {
        char *end;
        errno = 0;
        long v = strtol(p, &end, 10);
        if (end == p || errno || v < 0 || v > 0x7fffffff || (*end && *end != ',')) {
            fprintf(stderr, "svlm: --tokens expects comma-separated token ids, bad at '%s'\n", p);
            free(ids);
            return -1;
        }
        if (cnt == cap) {
            int32_t *g = realloc(ids, (size_t)(cap *= 2) * sizeof *ids);
            if (!g) {
                free(ids);
                return -1;
            }
            ids = g;
        }
        ids[cnt++] = (int32_t)v;
        p = *end ? end + 1 : end;
        if (*end && !*p) { /* "1,2,": a comma promises one more id */
            fprintf(stderr, "svlm: --tokens expects comma-separated token ids, it ends with a comma\n");
            free(ids);
            return -1;
        }
    }
    if (!cnt) {
        fprintf(stderr, "svlm: --tokens is empty\n");
        free(ids);
        return -1;
    }
    *out = ids;
    *n = cnt;
    return 0;
}

int cmd_logits(int argc, char **argv) {
    const char *model_path = NULL, *tokens = NULL, *out_path = NULL, *backend = NULL;
    long long threads = 0;
    svlm_dtype kv_type = SVLM_F32;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!(v = cli_value(argc, argv, &i))) {
            return 2;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            model_path = v;
        } else if (!strcmp(a, "--tokens")) {
            tokens = v;
        } else if (!strcmp(a, "--out") || !strcmp(a, "-o")) {
            out_path = v;
        } else if (!strcmp(a, "--threads") || !strcmp(a, "-t")) {
            if (cli_int(a, v, 1, 1024, &threads)) return 2;
        } else if (!strcmp(a, "--kv")) {
            if (cli_kv_type(a, v, &kv_type)) return 2;
        } else if (!strcmp(a, "--backend")) {
            if (cli_backend(a, v)) return 2;
            backend = v;
        } else {
            fprintf(stderr, "svlm logits: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!model_path || !tokens || !out_path) {
        fprintf(stderr, "svlm logits: -m, --tokens and --out are required\n");
        usage(stderr);
        return 2;
    }
    if (cli_output_not_input("logits", "--out", out_path, model_path)) return 2;
    int32_t *ids;
    int n;
    if (parse_ids(tokens, &ids, &n)) return 2;
    cli_text_model tm;
    if (cli_text_model_open(&tm, model_path, backend, (int)threads)) {
        free(ids);
        return 1;
    }
    const int n_vocab = svlm_llama_hparams_of(tm.model)->n_vocab;
    svlm_err err = {0};
    svlm_llama_ctx *ctx = NULL;
    float *logits = malloc((size_t)n * n_vocab * sizeof(float));
    int rc = 1;
    if (!logits) {
        fprintf(stderr, "svlm: out of memory\n");
        goto done;
    }
    if (svlm_llama_ctx_create(tm.model, tm.kernels, n, kv_type, &ctx, &err) ||
        svlm_llama_eval(ctx, ids, NULL, n, logits, 1, &err)) {
        fprintf(stderr, "svlm: %s\n", err.msg);
        goto done;
    }
    FILE *f = fopen(out_path, "wb");
    if (!f) {
        fprintf(stderr, "svlm: cannot write '%s': %s\n", out_path, strerror(errno));
        goto done;
    }
    size_t w = fwrite(logits, sizeof(float), (size_t)n * n_vocab, f);
    if (fclose(f) != 0 || w != (size_t)n * n_vocab) {
        fprintf(stderr, "svlm: writing '%s' failed: %s\n", out_path, strerror(errno));
        goto done;
    }
    rc = 0;
done:
    free(ids);
    free(logits);
    svlm_llama_ctx_free(ctx);
    cli_text_model_close(&tm);
    return rc;
}
