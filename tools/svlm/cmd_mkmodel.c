/* svlm mkmodel: writes random-weight GGUF models with SmolVLM2's real layout (see mkmodel.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "common/err.h"
#include "mkmodel.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: svlm mkmodel --arch llama|smolvlm --shape SHAPE --type TYPE [--seed S] -o PREFIX\n"
            "                    [--mmproj-type TYPE] [--corpus FILE] [--vocab-only] [--list] [--quiet]\n"
            "\n"
            "Writes random-weight GGUF files with the metadata keys, tensor names and shapes that\n"
            "llama.cpp's converter writes for SmolVLM2, loadable by svlm and by llama.cpp:\n"
            "  PREFIX.gguf         the text model (Llama architecture, gpt2/smollm tokenizer)\n"
            "  PREFIX-mmproj.gguf  the vision projector (only with --arch smolvlm)\n"
            "\n"
            "  --arch A         llama (text model only) or smolvlm (text model + mmproj)\n"
            "  --shape S        %s (default tiny)\n"
            "  --type T         %s (default f16)\n"
            "                   quantized types follow llama-quantize: the output head gets Q6_K\n"
            "                   (Q8_0 when its rows are not a multiple of 256), q4_k is Q4_K_S,\n"
            "                   q4_k_m the Q4_K_M mix, and rows a type cannot hold fall back\n"
            "                   (Q4_K→Q5_0, Q5_K→Q5_1, Q6_K→Q8_0, else F16); norms stay F32\n"
            "  --mmproj-type T  type of the projector's matrices (default: --type when it is\n"
            "                   f32/f16/bf16/q8_0, else q8_0, as published SmolVLM2 pairs are)\n"
            "  --seed S         weights are a deterministic function of the seed (default 42)\n"
            "  --corpus FILE    English text to learn BPE merges from (default: a built-in text)\n"
            "  --vocab-only     write only PREFIX.gguf's metadata and vocabulary, no tensors\n"
            "  --list           print the tensor tables (\"FILE NAME TYPE NE0 NE1 ...\"), write nothing\n"
            "  --quiet          no progress on stderr\n",
            mk_shape_names(), mk_ftype_names());
}

/* Published SmolVLM2 projectors are F16 or Q8_0 even next to Q4_K_M text models. */
static svlm_dtype default_mmproj_type(svlm_dtype t) {
    return (t == SVLM_F32 || t == SVLM_F16 || t == SVLM_BF16 || t == SVLM_Q8_0) ? t : SVLM_Q8_0;
}

static char *with_suffix(const char *prefix, const char *suffix) {
    size_t a = strlen(prefix), b = strlen(suffix);
    char *s = malloc(a + b + 1);
    if (!s) return NULL;
    memcpy(s, prefix, a);
    memcpy(s + a, suffix, b + 1);
    return s;
}

static long long file_size(const char *path) {
    struct stat sb;
    return stat(path, &sb) == 0 ? (long long)sb.st_size : -1;
}

int cmd_mkmodel(int argc, char **argv) {
    const char *arch = NULL, *shape_name = "tiny", *type_name = "f16", *mmproj_name = NULL, *prefix = NULL;
    const char *corpus = NULL, *v;
    long long seed = 42;
    int list = 0, quiet = 0, vocab_only = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--arch")) {
            if (!(arch = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--shape")) {
            if (!(shape_name = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--type")) {
            if (!(type_name = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--mmproj-type")) {
            if (!(mmproj_name = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--seed")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_int("--seed", v, 0, INT64_MAX, &seed)) return 2;
        } else if (!strcmp(a, "-o") || !strcmp(a, "--output")) {
            if (!(prefix = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--corpus")) {
            if (!(corpus = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--list")) {
            list = 1;
        } else if (!strcmp(a, "--vocab-only")) {
            vocab_only = 1;
        } else if (!strcmp(a, "--quiet")) {
            quiet = 1;
        } else {
            fprintf(stderr, "svlm mkmodel: unknown option '%s' (see svlm mkmodel --help)\n", a);
            return 2;
        }
    }
    if (!arch || (strcmp(arch, "llama") && strcmp(arch, "smolvlm"))) {
        fprintf(stderr, "svlm mkmodel: --arch must be llama or smolvlm\n");
        return 2;
    }
    mk_options o = {0};
    o.seed = (uint64_t)seed;
    o.progress = !quiet;
    if (!(o.shape = mk_shape_find(shape_name))) {
        fprintf(stderr, "svlm mkmodel: unknown --shape '%s' (one of %s)\n", shape_name, mk_shape_names());
        return 2;
    }
    if (!(o.ftype = mk_ftype_find(type_name))) {
        fprintf(stderr, "svlm mkmodel: unknown --type '%s' (one of %s)\n", type_name, mk_ftype_names());
        return 2;
    }
    o.mmproj_type = default_mmproj_type(o.ftype->base);
    if (mmproj_name) {
        const mk_ftype *mt = mk_ftype_find(mmproj_name);
        if (!mt || mt->k_medium) {
            fprintf(stderr, "svlm mkmodel: unknown --mmproj-type '%s' (one of %s, except q4_k_m)\n",
                    mmproj_name, mk_ftype_names());
            return 2;
        }
        o.mmproj_type = mt->base;
    }
    if (!list && !prefix) {
        fprintf(stderr, "svlm mkmodel: -o PREFIX is required\n");
        return 2;
    }
    const char *base = prefix ? (strrchr(prefix, '/') ? strrchr(prefix, '/') + 1 : prefix) : NULL;
    /* "", "dir/", "." or "..": a hidden ".gguf" or "..gguf" */
    if (prefix && (!base[0] || !strcmp(base, ".") || !strcmp(base, ".."))) {
        fprintf(stderr,
                "svlm mkmodel: -o expects a file name prefix (PREFIX.gguf), got '%s'; e.g. -o %.*smodel\n",
                prefix, (int)(base - prefix), prefix);
        return 2;
    }
    const int with_mmproj = !strcmp(arch, "smolvlm") && !vocab_only;

    svlm_err err = {0};
    mk_plan text = {0}, mmproj = {0};
    mk_vocab vocab = {0};
    char *text_path = NULL, *mmproj_path = NULL;
    int rc = 1;
    if (!vocab_only && mk_plan_text(o.shape, o.ftype, &text, &err)) goto fail;
    if (with_mmproj && mk_plan_mmproj(o.shape, o.mmproj_type, &mmproj, &err)) goto fail;
    if (list) {
        mk_plan_print(stdout, "text", &text);
        mk_plan_print(stdout, "mmproj", &mmproj);
        rc = 0;
        goto done;
    }
    if (mk_vocab_build(o.shape, corpus, &vocab, &err)) goto fail;
    text_path = with_suffix(prefix, ".gguf");
    mmproj_path = with_suffix(prefix, "-mmproj.gguf");
    if (!text_path || !mmproj_path) {
        svlm_fail(&err, SVLM_E_NOMEM, "out of memory");
        goto fail;
    }
    if (mk_write_text(text_path, &o, &vocab, &text, &err)) goto fail;
    printf("wrote %s (%d tensors, %d tokens, %d merges of which %d learned, %lld bytes)\n", text_path, text.n,
           vocab.n_tokens, vocab.n_merges, vocab.n_learned, file_size(text_path));
    if (with_mmproj) {
        if (mk_write_mmproj(mmproj_path, &o, &mmproj, &err)) goto fail;
        printf("wrote %s (%d tensors, %lld bytes)\n", mmproj_path, mmproj.n, file_size(mmproj_path));
    }
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "svlm mkmodel: %s\n", err.msg);
done:
    mk_plan_free(&text);
    mk_plan_free(&mmproj);
    mk_vocab_free(&vocab);
    free(text_path);
    free(mmproj_path);
    return rc;
}
