/* svlm generate: text continuation of a prompt. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "llm/sampler.h"
#include "text_model.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: svlm generate -m MODEL -p PROMPT [-n N] [--temp T] [--top-k K] [--top-p P]\n"
            "                     [--min-p P] [--repeat-penalty R] [--seed S] [--threads K]\n"
            "                     [--kv f32|f16] [--backend B] [--no-special] [--json]\n"
            "  -n N             tokens to generate (default 64)\n"
            "  --temp T         0 = greedy (default 0.8)\n"
            "  --no-special     do not parse special tokens written in the prompt\n"
            "  --json           print one JSON object: prompt_tokens, prompt_ids, tokens, text and the\n"
            "                   timings prompt_ms, generate_ms, prompt_tps, generate_tps\n" CLI_BACKEND_HELP);
}

int cmd_generate(int argc, char **argv) {
    const char *model_path = NULL, *prompt = NULL, *backend = NULL;
    long long n_predict = 64, threads = 0, seed = 0;
    int json = 0, parse_special = 1;
    svlm_dtype kv_type = SVLM_F32;
    svlm_sampler_params sp = svlm_sampler_params_default();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        double d;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json")) {
            json = 1;
        } else if (!strcmp(a, "--no-special")) {
            parse_special = 0;
        } else if (!(v = cli_value(argc, argv, &i))) {
            return 2;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            model_path = v;
        } else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) {
            prompt = v;
        } else if (!strcmp(a, "-n")) {
            if (cli_int(a, v, 0, 1 << 20, &n_predict)) return 2;
        } else if (!strcmp(a, "--threads") || !strcmp(a, "-t")) {
            if (cli_int(a, v, 1, 1024, &threads)) return 2;
        } else if (!strcmp(a, "--seed")) {
            if (cli_int(a, v, 0, 0x7fffffffffffffffLL, &seed)) return 2;
        } else if (!strcmp(a, "--temp")) {
            if (cli_float(a, v, 0, 100, &d)) return 2;
            sp.temp = (float)d;
        } else if (!strcmp(a, "--top-k")) {
            long long x;
            if (cli_int(a, v, 0, 1 << 24, &x)) return 2;
            sp.top_k = (int)x;
        } else if (!strcmp(a, "--top-p")) {
            if (cli_float(a, v, 0, 1, &d)) return 2;
            sp.top_p = (float)d;
        } else if (!strcmp(a, "--min-p")) {
            if (cli_float(a, v, 0, 1, &d)) return 2;
            sp.min_p = (float)d;
        } else if (!strcmp(a, "--repeat-penalty")) {
            if (cli_float(a, v, 0.01, 100, &d)) return 2;
            sp.repeat_penalty = (float)d;
        } else if (!strcmp(a, "--kv")) {
            if (cli_kv_type(a, v, &kv_type)) return 2;
        } else if (!strcmp(a, "--backend")) {
            if (cli_backend(a, v)) return 2;
            backend = v;
        } else {
            fprintf(stderr, "svlm generate: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!model_path || !prompt) {
        fprintf(stderr, "svlm generate: -m MODEL and -p PROMPT are required\n");
        usage(stderr);
        return 2;
    }
    sp.seed = (uint64_t)seed;

    cli_text_model tm;
    if (cli_text_model_open(&tm, model_path, backend, (int)threads)) return 1;
    const svlm_llama_hparams *hp = svlm_llama_hparams_of(tm.model);
    const svlm_tokenizer *tok = svlm_llama_tokenizer(tm.model);
    svlm_err err = {0};
    int32_t *ids = NULL, *gen = NULL;
    float *logits = NULL;
    svlm_llama_ctx *ctx = NULL;
    svlm_sampler *smp = NULL;
    int rc = 1;
    size_t n_prompt = 0;
    if (svlm_tokenize(tok, prompt, strlen(prompt), 1, parse_special, &ids, &n_prompt, &err)) {
        fprintf(stderr, "svlm: cannot tokenize the prompt: %s\n", err.msg);
        goto done;
    }
    if (n_prompt == 0) {
        fprintf(stderr, "svlm: the prompt is empty and the model adds no BOS token\n");
        goto done;
    }
    int n_ctx = (int)(n_prompt + (size_t)n_predict);
    if (n_ctx > hp->n_ctx_train) /* as llama.cpp warns: positions past it were never trained */
        fprintf(stderr,
                "svlm: warning: %zu prompt + %lld new tokens exceed the %d tokens the model was trained on; "
                "the text past them may degrade\n",
                n_prompt, n_predict, hp->n_ctx_train);
    /* the context holds every token's keys and values from the start */
    if (!cli_kv_fits(hp, n_ctx, kv_type, "-n")) goto done;
    if (svlm_llama_ctx_create(tm.model, tm.kernels, n_ctx, kv_type, &ctx, &err) ||
        svlm_sampler_create(&sp, hp->n_vocab, &smp, &err)) {
        fprintf(stderr, "svlm: %s\n", err.msg);
        goto done;
    }
    logits = malloc((size_t)hp->n_vocab * sizeof(float));
    gen = malloc(((size_t)n_predict + 1) * sizeof(int32_t));
    if (!logits || !gen) {
        fprintf(stderr, "svlm: out of memory\n");
        goto done;
    }
    for (size_t i = 0; i < n_prompt; i++)
        svlm_sampler_accept(smp, ids[i]);
    double t0 = cli_now();
    if (svlm_llama_eval(ctx, ids, NULL, (int)n_prompt, logits, 0, &err)) {
        fprintf(stderr, "svlm: %s\n", err.msg);
        goto done;
    }
    double t1 = cli_now();
    int n_gen = 0;
    cli_utf8_stream us = {0};
    if (!json) {
        fwrite(prompt, 1, strlen(prompt), stdout);
        fflush(stdout);
    }
    while (n_gen < n_predict) {
        /* NaN logits sampled as token 0 again and again, printed as text with exit status 0 */
        for (int v = 0; v < hp->n_vocab; v++)
            if (!isfinite(logits[v])) {
                fprintf(
                    stderr,
                    "\nsvlm: the model's logits after %zu tokens are not finite (token %d: %g): its weights "
                    "are damaged, or overflow their type\n",
                    n_prompt + (size_t)n_gen, v, (double)logits[v]);
                goto done;
            }
        int32_t id = svlm_sampler_sample(smp, logits);
        if (svlm_tokenizer_is_eog(tok, id)) break;
        gen[n_gen++] = id;
        if (!json) { /* tokens may be up to 1 KB, and an unmapped byte's marker repeats one */
            char small[256], *heap;
            size_t len;
            const char *piece = svlm_token_piece_whole(tok, id, 0, small, sizeof small, &heap, &len);
            if (!piece) {
                fprintf(stderr, "\nsvlm: out of memory\n");
                goto done;
            }
            cli_utf8_put(&us, stdout, piece, len);
            free(heap);
        }
        if (n_gen == n_predict) break;
        if (svlm_llama_eval(ctx, &id, NULL, 1, logits, 0, &err)) {
            fprintf(stderr, "\nsvlm: %s\n", err.msg);
            goto done;
        }
    }
    double t2 = cli_now();
    double pp_tps = n_prompt / (t1 - t0 > 0 ? t1 - t0 : 1e-9);
    double tg_tps = n_gen > 1 ? (n_gen - 1) / (t2 - t1 > 0 ? t2 - t1 : 1e-9) : 0;
    if (json) {
        size_t text_len = 0; /* (a NUL token would end strlen early) */
        char *text = svlm_detokenize_len(tok, gen, (size_t)n_gen, 0, &text_len);
        printf("{\"prompt_tokens\":%zu,\"prompt_ids\":[", n_prompt);
        for (size_t i = 0; i < n_prompt; i++)
            printf("%s%d", i ? "," : "", ids[i]);
        printf("],\"tokens\":[");
        for (int i = 0; i < n_gen; i++)
            printf("%s%d", i ? "," : "", gen[i]);
        printf("],\"text\":");
        cli_json_str(stdout, text ? text : "", text_len);
        printf(",\"prompt_ms\":%.3f,\"generate_ms\":%.3f,\"prompt_tps\":%.2f,\"generate_tps\":%.2f}\n",
               (t1 - t0) * 1e3, (t2 - t1) * 1e3, pp_tps, tg_tps);
        free(text);
    } else {
        cli_utf8_flush(&us, stdout);
        printf("\n");
        fflush(stdout); /* the text's end before the figures on stderr, also when both go to one file */
        fprintf(stderr, "svlm: prompt %zu tokens at %.1f tok/s, generated %d tokens at %.1f tok/s (%s)\n",
                n_prompt, pp_tps, n_gen, tg_tps, svlm_kernels_name(tm.kernels));
    }
    rc = 0;
done:
    free(ids);
    free(gen);
    free(logits);
    svlm_sampler_free(smp);
    svlm_llama_ctx_free(ctx);
    cli_text_model_close(&tm);
    return rc;
}
