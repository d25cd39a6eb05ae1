/* svlm describe: answer a question about one image (SmolVLM2: mmproj + text model). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "llm/sampler.h"
#include "text_model.h"
#include "vision/encoder.h"
#include "vision/image.h"
#include "vision/mmproj.h"
#include "vision/preprocess.h"
#include "vision/prompt.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: svlm describe -m TEXT_GGUF --mmproj MMPROJ_GGUF --image FILE -p PROMPT [-n N]\n"
            "                     [--temp T] [--top-k K] [--top-p P] [--min-p P] [--seed S]\n"
            "                     [--threads K] [--backend B] [--json] [--raw] [--dump-dir DIR]\n"
            "  -n N            tokens to generate (default 128)\n"
            "  --temp T        0 = greedy (default 0); with T > 0, --top-k (40), --top-p (0.95) and\n"
            "                  --min-p (0.05) cut the draw as in svlm generate\n"
            "  --raw           use PROMPT verbatim (special tokens parsed); %s marks the image\n"
            "  --dump-dir DIR  write pixels_K.f32 [3][S][S] and embd_K.f32 [tokens][n_embd] for the K-th\n"
            "                  image chunk in prompt order, and logits.f32 after the whole prompt\n"
            "  --json          print one JSON object: prompt layout, tokens, text, timings\n" CLI_BACKEND_HELP
            "Images: PNG and PPM always; JPEG and other formats when svlm is built with FFmpeg.\n",
            SVLM_MEDIA_MARKER);
}

typedef struct describe_args {
    const char *model, *mmproj, *image, *prompt, *dump_dir, *backend;
    long long n_predict, threads;
    svlm_sampler_params sampling;
    int json, raw;
} describe_args;

static int parse(int argc, char **argv, describe_args *a) {
    memset(a, 0, sizeof *a);
    a->n_predict = 128;
    a->sampling = svlm_sampler_params_default();
    a->sampling.temp = 0; /* greedy unless asked: describe's answers are references */
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v;
        double d;
        long long x;
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) {
            usage(stdout);
            return 1;
        } else if (!strcmp(f, "--json")) {
            a->json = 1;
        } else if (!strcmp(f, "--raw")) {
            a->raw = 1;
        } else if (!(v = cli_value(argc, argv, &i))) {
            return -1;
        } else if (!strcmp(f, "-m") || !strcmp(f, "--model")) {
            a->model = v;
        } else if (!strcmp(f, "--mmproj")) {
            a->mmproj = v;
        } else if (!strcmp(f, "--image")) {
            a->image = v;
        } else if (!strcmp(f, "-p") || !strcmp(f, "--prompt")) {
            a->prompt = v;
        } else if (!strcmp(f, "--dump-dir")) {
            a->dump_dir = v;
        } else if (!strcmp(f, "-n")) {
            if (cli_int(f, v, 0, 1 << 20, &a->n_predict)) return -1;
        } else if (!strcmp(f, "--threads") || !strcmp(f, "-t")) {
            if (cli_int(f, v, 1, 1024, &a->threads)) return -1;
        } else if (!strcmp(f, "--seed")) {
            if (cli_int(f, v, 0, 0x7fffffffffffffffLL, &x)) return -1;
            a->sampling.seed = (uint64_t)x;
        } else if (!strcmp(f, "--temp")) {
            if (cli_float(f, v, 0, 100, &d)) return -1;
            a->sampling.temp = (float)d;
        } else if (!strcmp(f, "--top-k")) {
            if (cli_int(f, v, 0, 1 << 24, &x)) return -1;
            a->sampling.top_k = (int)x;
        } else if (!strcmp(f, "--top-p")) {
            if (cli_float(f, v, 0, 1, &d)) return -1;
            a->sampling.top_p = (float)d;
        } else if (!strcmp(f, "--min-p")) {
            if (cli_float(f, v, 0, 1, &d)) return -1;
            a->sampling.min_p = (float)d;
        } else if (!strcmp(f, "--backend")) {
            if (cli_backend(f, v)) return -1;
            a->backend = v;
        } else {
            fprintf(stderr, "svlm describe: unknown option '%s'\n", f);
            usage(stderr);
            return -1;
        }
    }
    if (!a->model || !a->mmproj || !a->image || !a->prompt) {
        fprintf(stderr, "svlm describe: -m, --mmproj, --image and -p are required\n");
        usage(stderr);
        return -1;
    }
    return 0;
}

static int write_f32(const char *dir, const char *name, int k, const float *data, size_t n) {
    char path[4096];
    if (k >= 0)
        snprintf(path, sizeof path, "%s/%s_%d.f32", dir, name, k);
    else
        snprintf(path, sizeof path, "%s/%s.f32", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, sizeof(float), n, f) != n || fclose(f)) {
        fprintf(stderr, "svlm: cannot write '%s': %s\n", path, strerror(errno));
        if (f) fclose(f);
        return -1;
    }
    return 0;
}

static int dump_chunks(const char *dir, const svlm_tiles *tiles, const float *embd, size_t emb_floats) {
    if (mkdir(dir, 0777) && errno != EEXIST) {
        fprintf(stderr, "svlm: cannot create '%s': %s\n", dir, strerror(errno));
        return -1;
    }
    size_t tile = (size_t)3 * tiles->size * tiles->size;
    for (int k = 0; k < tiles->n_tiles; k++)
        if (write_f32(dir, "pixels", k, tiles->pixels + tile * (size_t)k, tile) ||
            write_f32(dir, "embd", k, embd + emb_floats * (size_t)k, emb_floats))
            return -1;
    return 0;
}

static svlm_image_decoder image_fallback(void) {
#ifdef SVLM_HAVE_FFMPEG
    return svlm_image_decode_ffmpeg;
#else
    return NULL;
#endif
}

int cmd_describe(int argc, char **argv) {
    describe_args a;
    int pr = parse(argc, argv, &a);
    if (pr) return pr > 0 ? 0 : 2;

    svlm_err err = {0};
    cli_text_model tm = {0};
    svlm_mmproj *mp = NULL;
    svlm_vision_ctx *vc = NULL;
    svlm_image img = {0};
    svlm_tiles tiles = {0};
    svlm_prompt prompt;
    svlm_llama_ctx *ctx = NULL;
    svlm_sampler *smp = NULL;
    float *embd = NULL, *logits = NULL;
    int32_t *gen = NULL;
    int rc = 1, n_gen = 0;
    svlm_prompt_init(&prompt);

    double t0 = cli_now();
    if (svlm_image_load(a.image, image_fallback(), &img, &err)) {
        fprintf(stderr, "svlm: cannot read the image: %s\n", err.msg);
        goto done;
    }
    if (svlm_mmproj_load(a.mmproj, &mp, &err)) {
        fprintf(stderr, "svlm: cannot load the projector: %s\n", err.msg);
        goto done;
    }
    if (cli_text_model_open(&tm, a.model, a.backend, (int)a.threads)) goto done;
    const svlm_llama_hparams *hp = svlm_llama_hparams_of(tm.model);
    const svlm_tokenizer *tok = svlm_llama_tokenizer(tm.model);
    const svlm_mmproj_hparams *vp = &mp->hp;
    if (vp->proj_dim != hp->n_embd) {
        fprintf(stderr,
                "svlm: the projector does not match the text model: it outputs %d-wide embeddings, '%s' is "
                "%d wide\n",
                vp->proj_dim, a.model, hp->n_embd);
        goto done;
    }
    svlm_preproc_params pp = {.tile = vp->image_size, .longest_edge = vp->preproc_image_size};
    memcpy(pp.mean, vp->image_mean, sizeof pp.mean);
    memcpy(pp.std, vp->image_std, sizeof pp.std);
    svlm_vlm_specials sp;
    if (svlm_preprocess_image(&img, &pp, &tiles, &err) || svlm_vlm_specials_find(tok, &sp, &err) ||
        svlm_prompt_build(&prompt, tok, &sp, a.prompt, a.raw, tiles.rows, tiles.cols, vp->tokens_per_tile,
                          &err)) {
        fprintf(stderr, "svlm: %s\n", err.msg);
        goto done;
    }
    double t1 = cli_now();
    size_t emb_floats = (size_t)vp->tokens_per_tile * (size_t)hp->n_embd;
    embd = malloc(sizeof(float) * emb_floats * (size_t)tiles.n_tiles);
    if (!embd) {
        fprintf(stderr, "svlm: out of memory\n");
        goto done;
    }
    if (svlm_vision_ctx_create(mp, tm.kernels, tiles.n_tiles < 4 ? tiles.n_tiles : 4, &vc, &err) ||
        svlm_vision_encode(vc, tiles.pixels, tiles.n_tiles, embd, &err)) {
        fprintf(stderr, "svlm: vision encoder: %s\n", err.msg);
        goto done;
    }
    double t2 = cli_now();
    if (a.dump_dir && dump_chunks(a.dump_dir, &tiles, embd, emb_floats)) goto done;

    int n_ctx = (int)(prompt.n + (size_t)a.n_predict + 1);
    logits = malloc(sizeof(float) * (size_t)hp->n_vocab);
    gen = malloc(sizeof(int32_t) * ((size_t)a.n_predict + 1));
    if (!logits || !gen) {
        fprintf(stderr, "svlm: out of memory\n");
        goto done;
    }
    if (svlm_llama_ctx_create(tm.model, tm.kernels, n_ctx, SVLM_F32, &ctx, &err) ||
        svlm_sampler_create(&a.sampling, hp->n_vocab, &smp, &err) ||
        svlm_llama_eval(ctx, prompt.ids, embd, (int)prompt.n, logits, 0, &err)) {
        fprintf(stderr, "svlm: %s\n", err.msg);
        goto done;
    }
    double t3 = cli_now();
    if (a.dump_dir && write_f32(a.dump_dir, "logits", -1, logits, (size_t)hp->n_vocab)) goto done;
    for (size_t i = 0; i < prompt.n; i++)
        if (prompt.ids[i] >= 0) svlm_sampler_accept(smp, prompt.ids[i]);
    cli_utf8_stream us = {0};
    while (n_gen < a.n_predict) {
        int32_t id = svlm_sampler_sample(smp, logits);
        if (svlm_tokenizer_is_eog(tok, id)) break;
        gen[n_gen++] = id;
        if (!a.json) {
            char small[256], *heap;
            size_t len;
            const char *piece = svlm_token_piece_whole(tok, id, 0, small, sizeof small, &heap, &len);
            if (piece) cli_utf8_put(&us, stdout, piece, len); /* (out of memory: the JSON still has it) */
            free(heap);
        }
        if (n_gen == a.n_predict) break;
        if (svlm_llama_eval(ctx, &id, NULL, 1, logits, 0, &err)) {
            fprintf(stderr, "\nsvlm: %s\n", err.msg);
            goto done;
        }
    }
    double t4 = cli_now();
    if (a.json) {
        size_t text_len = 0; /* (a NUL token would end strlen early) */
        char *text = svlm_detokenize_len(tok, gen, (size_t)n_gen, 0, &text_len);
        printf("{\"image\":{\"width\":%d,\"height\":%d,\"rows\":%d,\"cols\":%d,\"tiles\":%d,\"tokens_per_"
               "tile\":%d},",
               img.w, img.h, tiles.rows, tiles.cols, tiles.n_tiles, vp->tokens_per_tile);
        printf("\"prompt_tokens\":%zu,\"prompt_ids\":[", prompt.n);
        for (size_t i = 0; i < prompt.n; i++)
            printf("%s%d", i ? "," : "", prompt.ids[i]);
        printf("],\"tokens\":[");
        for (int i = 0; i < n_gen; i++)
            printf("%s%d", i ? "," : "", gen[i]);
        printf("],\"text\":");
        cli_json_str(stdout, text ? text : "", text_len);
        printf(",\"preprocess_ms\":%.3f,\"encode_ms\":%.3f,\"prompt_ms\":%.3f,\"generate_ms\":%.3f}\n",
               (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3, (t4 - t3) * 1e3);
        free(text);
    } else {
        cli_utf8_flush(&us, stdout);
        printf("\n");
        fflush(stdout); /* the text's end before the figures on stderr, also when both go to one file */
        fprintf(stderr,
                "svlm: %d tiles (%dx%d + overview) encoded in %.0f ms, prompt %zu tokens in %.0f ms, %d "
                "tokens generated (%s)\n",
                tiles.n_tiles, tiles.cols, tiles.rows, (t2 - t1) * 1e3, prompt.n, (t3 - t2) * 1e3, n_gen,
                svlm_kernels_name(tm.kernels));
    }
    rc = 0;
done:
    free(embd);
    free(logits);
    free(gen);
    svlm_sampler_free(smp);
    svlm_llama_ctx_free(ctx);
    svlm_prompt_free(&prompt);
    svlm_tiles_free(&tiles);
    svlm_image_free(&img);
    svlm_vision_ctx_free(vc);
    svlm_mmproj_free(mp);
    cli_text_model_close(&tm);
    return rc;
}
