/*
 * svlm perplexity: streaming evaluation of a text. The text is tokenized (BOS first) and fed as a
 * stream; every target token is scored with the cache as it is at that moment:
 *   dense      all earlier tokens at their absolute positions (the cache grows)
 *   window     S sinks + the most recent W - S tokens, positions re-assigned inside the cache
 *              (--no-reassign keeps the stream positions instead)
 *   recompute  the same tokens evaluated from scratch for every target (slow, exact baseline)
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common/err.h"
#include "text_model.h"

static void usage(FILE *f) {
    fprintf(f, "usage: svlm perplexity -m MODEL -f TEXT [--ctx N] [--first N] [--sinks S] [--window W]\n"
               "                       [--mode dense|window|recompute] [--no-reassign] [--kv f32|f16]\n"
               "                       [--threads K] [--backend B] [--tokens-out FILE] [--json]\n"
               "  --ctx N        tokens of the text to stream, BOS included (default 8192)\n"
               "  --first N      index of the first scored token (default 512)\n"
               "  --window W     cache size in tokens, sinks included (default 256)\n"
               "  --sinks S      leading tokens kept for ever (default 4; 0 for recompute)\n"
               "  --tokens-out F write the streamed token ids as int32\n"
               "  --json         one JSON object with the perplexity and the mean negative log-likelihood\n");
    fputs(CLI_BACKEND_HELP, f);
}

typedef enum { MODE_DENSE, MODE_WINDOW, MODE_RECOMPUTE } ppl_mode;

typedef struct ppl_run {
    svlm_llama *model;
    svlm_kernels *kernels;
    const int32_t *ids;
    int n, first, sinks, window, reassign;
    svlm_dtype kv;
    double nll_sum;
    long scored;
} ppl_run;

/* Adds -log p(target) under the logits row. */
static void score(ppl_run *r, const float *logits, int32_t target, int n_vocab) {
    double mx = logits[0];
    for (int i = 1; i < n_vocab; i++)
        if (logits[i] > mx) mx = logits[i];
    double sum = 0;
    for (int i = 0; i < n_vocab; i++)
        sum += exp((double)logits[i] - mx);
    r->nll_sum += mx + log(sum) - (double)logits[target];
    r->scored++;
}

/* The logits row after token i predicts token i + 1; rows first-1 .. n-2 are scored. */
static int row_scored(const ppl_run *r, int i) {
    return i >= r->first - 1 && i + 1 < r->n;
}

static svlm_status run_dense(ppl_run *r, float *logits, int n_vocab, svlm_err *err) {
    enum { CHUNK = 256 };
    svlm_llama_ctx *c = NULL;
    svlm_status st = svlm_llama_ctx_create(r->model, r->kernels, r->n, r->kv, &c, err);
    for (int i = 0; st == SVLM_OK && i < r->n; i += CHUNK) {
        int m = r->n - i < CHUNK ? r->n - i : CHUNK;
        st = svlm_llama_eval(c, r->ids + i, NULL, m, logits, 1, err);
        for (int j = 0; st == SVLM_OK && j < m; j++)
            if (row_scored(r, i + j)) score(r, logits + (size_t)j * n_vocab, r->ids[i + j + 1], n_vocab);
    }
    svlm_llama_ctx_free(c);
    return st;
}

static svlm_status run_window(ppl_run *r, float *logits, int n_vocab, svlm_err *err) {
    enum { PAGE = 16 };
    svlm_kv_pool *pool = NULL;
    svlm_kv_seq *seq = NULL;
    svlm_llama_ctx *c = NULL;
    svlm_kv_policy pol = {{r->sinks, 0, r->window - r->sinks}, r->reassign};
    svlm_status st = svlm_llama_kv_pool_create(r->model, r->kv, PAGE, r->window / PAGE + 8, &pool, err);
    if (!st) st = svlm_kv_seq_create(pool, &pol, &seq, err);
    if (!st) st = svlm_llama_ctx_create(r->model, r->kernels, r->window, SVLM_F32, &c, err);
    for (int i = 0; st == SVLM_OK && i < r->n; i++) {
        svlm_kv_kind kind = i < r->sinks ? SVLM_KV_SINK : SVLM_KV_TEXT;
        st = svlm_llama_eval_seq(c, seq, kind, i, r->ids + i, NULL, 1, logits, 0, err);
        if (st == SVLM_OK && row_scored(r, i)) score(r, logits, r->ids[i + 1], n_vocab);
    }
    svlm_llama_ctx_free(c);
    svlm_kv_seq_free(seq);
    svlm_kv_pool_free(pool);
    return st;
}

static svlm_status run_recompute(ppl_run *r, float *logits, int n_vocab, svlm_err *err) {
    svlm_llama_ctx *c = NULL;
    int32_t *win = malloc((size_t)r->window * sizeof *win);
    svlm_status st = win ? svlm_llama_ctx_create(r->model, r->kernels, r->window, r->kv, &c, err)
                         : svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    for (int i = r->first - 1; st == SVLM_OK && i + 1 < r->n; i++) {
        /* the sinks, then the most recent tokens up to i, at positions 0.. */
        int m = 0, s = i + 1 < r->sinks ? i + 1 : r->sinks;
        for (int j = 0; j < s; j++)
            win[m++] = r->ids[j];
        int from = i - (r->window - s) + 1;
        if (from < s) from = s;
        for (int j = from; j <= i; j++)
            win[m++] = r->ids[j];
        svlm_llama_ctx_reset(c);
        st = svlm_llama_eval(c, win, NULL, m, logits, 0, err);
        if (st == SVLM_OK) score(r, logits, r->ids[i + 1], n_vocab);
    }
    svlm_llama_ctx_free(c);
    free(win);
    return st;
}

/* Reads a whole file into a new buffer. */
static char *read_text(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "svlm: cannot open '%s': %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    for (size_t got; buf && (got = fread(buf + n, 1, cap - n, f)) > 0;) {
        n += got;
        if (n == cap) {
            char *g = cap < ((size_t)1 << 30) ? realloc(buf, cap *= 2) : NULL;
            if (!g) {
                free(buf);
                buf = NULL;
            } else {
                buf = g;
            }
        }
    }
    const int bad = ferror(f) ? (errno ? errno : EIO) : 0; /* (EISDIR for a folder) */
    fclose(f);
    if (!buf || bad) {
        fprintf(stderr, "svlm: cannot read '%s' (%s)\n", path,
                bad ? strerror(bad) : "too large or out of memory");
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

static int write_tokens(const char *path, const int32_t *ids, int n) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "svlm: cannot write '%s': %s\n", path, strerror(errno));
        return -1;
    }
    size_t w = fwrite(ids, sizeof *ids, (size_t)n, f);
    if (fclose(f) != 0 || w != (size_t)n) {
        fprintf(stderr, "svlm: writing '%s' failed\n", path);
        return -1;
    }
    return 0;
}

int cmd_perplexity(int argc, char **argv) {
    const char *model_path = NULL, *text_path = NULL, *tokens_out = NULL, *mode_name = "window",
               *backend = NULL;
    long long n_ctx = 8192, first = 512, sinks = -1, window = 256, threads = 0;
    int json = 0, reassign = 1;
    svlm_dtype kv = SVLM_F32;
    ppl_mode mode = MODE_WINDOW;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json")) {
            json = 1;
        } else if (!strcmp(a, "--no-reassign")) {
            reassign = 0;
        } else if (!(v = cli_value(argc, argv, &i))) {
            return 2;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            model_path = v;
        } else if (!strcmp(a, "-f") || !strcmp(a, "--file")) {
            text_path = v;
        } else if (!strcmp(a, "--tokens-out")) {
            tokens_out = v;
        } else if (!strcmp(a, "--ctx")) {
            if (cli_int(a, v, 2, 1 << 24, &n_ctx)) return 2;
        } else if (!strcmp(a, "--first")) {
            if (cli_int(a, v, 1, 1 << 24, &first)) return 2;
        } else if (!strcmp(a, "--sinks")) {
            if (cli_int(a, v, 0, 1 << 20, &sinks)) return 2;
        } else if (!strcmp(a, "--window")) {
            if (cli_int(a, v, 1, 1 << 20, &window)) return 2;
        } else if (!strcmp(a, "--threads") || !strcmp(a, "-t")) {
            if (cli_int(a, v, 1, 1024, &threads)) return 2;
        } else if (!strcmp(a, "--mode")) {
            mode_name = v;
            if (!strcmp(v, "dense"))
                mode = MODE_DENSE;
            else if (!strcmp(v, "window"))
                mode = MODE_WINDOW;
            else if (!strcmp(v, "recompute"))
                mode = MODE_RECOMPUTE;
            else {
                fprintf(stderr, "svlm: --mode expects dense, window or recompute, got '%s'\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--kv")) {
            if (cli_kv_type(a, v, &kv)) return 2;
        } else if (!strcmp(a, "--backend")) {
            if (cli_backend(a, v)) return 2;
            backend = v;
        } else {
            fprintf(stderr, "svlm perplexity: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!model_path || !text_path) {
        fprintf(stderr, "svlm perplexity: -m and -f are required\n");
        usage(stderr);
        return 2;
    }
    if (cli_output_not_input("perplexity", "--tokens-out", tokens_out, model_path) ||
        cli_output_not_input("perplexity", "--tokens-out", tokens_out, text_path))
        return 2;
    if (sinks < 0) sinks = mode == MODE_RECOMPUTE ? 0 : 4;
    if (mode != MODE_DENSE && sinks >= window) {
        fprintf(stderr, "svlm: --sinks (%lld) must be smaller than --window (%lld)\n", sinks, window);
        return 2;
    }
    if (first >= n_ctx) {
        fprintf(stderr, "svlm: --first (%lld) must be below --ctx (%lld): the tokens after it are scored\n",
                first, n_ctx);
        return 2;
    }
    if (!reassign && mode != MODE_WINDOW) {
        fprintf(stderr, "svlm: --no-reassign applies to --mode window only\n");
        return 2;
    }
    size_t text_len = 0;
    char *text = read_text(text_path, &text_len);
    if (!text) return 1;
    cli_text_model tm;
    if (cli_text_model_open(&tm, model_path, backend, (int)threads)) {
        free(text);
        return 1;
    }
    svlm_err err = {0};
    int32_t *ids = NULL;
    size_t n_ids = 0;
    float *logits = NULL;
    int rc = 1;
    const int n_vocab = svlm_llama_hparams_of(tm.model)->n_vocab;
    if (svlm_tokenize(svlm_llama_tokenizer(tm.model), text, text_len, 1, 0, &ids, &n_ids, &err)) {
        fprintf(stderr, "svlm: tokenizing '%s' failed: %s\n", text_path, err.msg);
        goto done;
    }
    if ((long long)n_ids < n_ctx) n_ctx = (long long)n_ids;
    if (first >= n_ctx) { /* (--ctx was checked against --first above: the text is short) */
        fprintf(stderr, "svlm: the text has %lld tokens, fewer than --first + 1 (%lld)\n", n_ctx, first + 1);
        goto done;
    }
    /* a window wider than the text holds the whole text: no wider cache than that */
    if (mode != MODE_DENSE && window > n_ctx) window = n_ctx > sinks ? n_ctx : sinks + 1;
    if (!cli_kv_fits(svlm_llama_hparams_of(tm.model), mode == MODE_DENSE ? n_ctx : window, kv,
                     mode == MODE_DENSE ? "--ctx" : "--window"))
        goto done;
    if (tokens_out && write_tokens(tokens_out, ids, (int)n_ctx)) goto done;
    if (!(logits = malloc((size_t)256 * n_vocab * sizeof(float)))) {
        fprintf(stderr, "svlm: out of memory\n");
        goto done;
    }
    ppl_run r = {
        .model = tm.model,
        .kernels = tm.kernels,
        .ids = ids,
        .n = (int)n_ctx,
        .first = (int)first,
        .sinks = (int)sinks,
        .window = (int)window,
        .reassign = reassign,
        .kv = kv,
    };
    double t0 = cli_now();
    svlm_status st = mode == MODE_DENSE    ? run_dense(&r, logits, n_vocab, &err)
                     : mode == MODE_WINDOW ? run_window(&r, logits, n_vocab, &err)
                                           : run_recompute(&r, logits, n_vocab, &err);
    double secs = cli_now() - t0;
    if (st) {
        fprintf(stderr, "svlm: %s\n", err.msg);
        goto done;
    }
    double nll = r.nll_sum / (double)r.scored, ppl = exp(nll);
    if (json) { /* (a model whose logits are NaN or overflow: null, not a bare nan that is no JSON) */
        char ppl_s[32] = "null", nll_s[32] = "null";
        if (isfinite(ppl)) snprintf(ppl_s, sizeof ppl_s, "%.6f", ppl);
        if (isfinite(nll)) snprintf(nll_s, sizeof nll_s, "%.8f", nll);
        printf(
            "{\"mode\":\"%s\",\"tokens\":%lld,\"first\":%lld,\"scored\":%ld,\"sinks\":%lld,\"window\":%lld,"
            "\"reassign\":%s,\"kv\":\"%s\",\"ppl\":%s,\"nll\":%s,\"seconds\":%.3f}\n",
            mode_name, n_ctx, first, r.scored, mode == MODE_DENSE ? 0 : sinks,
            mode == MODE_DENSE ? n_ctx : window, reassign ? "true" : "false", kv == SVLM_F32 ? "f32" : "f16",
            ppl_s, nll_s, secs);
    } else {
        printf("perplexity %.4f (mean NLL %.5f) over %ld tokens (%lld..%lld), mode %s", ppl, nll, r.scored,
               first, n_ctx - 1, mode_name);
        if (mode != MODE_DENSE)
            printf(", %lld sinks + window %lld%s", sinks, window, reassign ? "" : ", stream positions");
        printf(", %.2f s\n", secs);
    }
    rc = 0;
done:
    free(logits);
    free(ids);
    free(text);
    cli_text_model_close(&tm);
    return rc;
}
