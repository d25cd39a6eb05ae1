/* svlm tokenize: tokenize text with a model's tokenizer and print the ids. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "llm/gguf.h"
#include "llm/tokenizer.h"

static void usage(FILE *f) {
    fprintf(f, "usage: svlm tokenize -m MODEL [--no-bos] [--parse-special] [--json [--pieces]] TEXT\n"
               "       svlm tokenize -m MODEL [...] -f FILE\n\n"
               "  -m MODEL          GGUF file whose tokenizer to use\n"
               "  --no-bos          do not add BOS/EOS (add_special = false)\n"
               "  --parse-special   control tokens written in the text (e.g. <s>) become their ids\n"
               "  --json            print {\"tokens\":[...]} instead of one id and piece per line\n"
               "  --pieces          with --json, add \"pieces_hex\" (each token's bytes, specials shown)\n"
               "                    and \"text\" (the ids detokenized, specials hidden)\n"
               "  -f FILE           read the text from FILE ('-' for stdin) instead of TEXT\n");
}

/* Reads a whole file (or stdin for "-") into a new buffer. */
static char *read_all(const char *path, size_t *len) {
    FILE *f = strcmp(path, "-") ? fopen(path, "rb") : stdin;
    if (!f) return NULL;
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        char *b = realloc(buf, cap *= 2);
        if (!b) free(buf);
        buf = b;
    }
    int bad = ferror(f);
    if (f != stdin) fclose(f);
    if (bad) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

/* The "pieces_hex" and "text" members of the JSON output. */
static int print_pieces(const svlm_tokenizer *tok, const int32_t *ids, size_t n) {
    fputs(",\"pieces_hex\":[", stdout);
    for (size_t i = 0; i < n; i++) {
        size_t k = svlm_token_piece(tok, ids[i], 1, NULL, 0);
        unsigned char *p = malloc(k + 1);
        if (!p) return -1;
        svlm_token_piece(tok, ids[i], 1, (char *)p, k);
        printf(i ? ",\"" : "\"");
        for (size_t j = 0; j < k; j++)
            printf("%02x", p[j]);
        putchar('"');
        free(p);
    }
    size_t text_len = 0; /* (a NUL token would end strlen early) */
    char *text = svlm_detokenize_len(tok, ids, n, 0, &text_len);
    if (!text) return -1;
    fputs("],\"text\":", stdout);
    cli_json_str(stdout, text, text_len);
    free(text);
    return 0;
}

int cmd_tokenize(int argc, char **argv) {
    const char *model = NULL, *text = NULL, *file = NULL;
    int add_special = 1, parse_special = 0, json = 0, pieces = 0, only_text = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!only_text && !strcmp(a, "--")) {
            only_text = 1;
        } else if (!only_text && (!strcmp(a, "-h") || !strcmp(a, "--help"))) {
            usage(stdout);
            return 0;
        } else if (!only_text && !strcmp(a, "-m")) {
            if (!(model = cli_value(argc, argv, &i))) return 2;
        } else if (!only_text && !strcmp(a, "-f")) {
            if (!(file = cli_value(argc, argv, &i))) return 2;
        } else if (!only_text && !strcmp(a, "--no-bos")) {
            add_special = 0;
        } else if (!only_text && !strcmp(a, "--parse-special")) {
            parse_special = 1;
        } else if (!only_text && !strcmp(a, "--json")) {
            json = 1;
        } else if (!only_text && !strcmp(a, "--pieces")) {
            pieces = 1;
        } else if (!only_text && a[0] == '-' && a[1] && !text) {
            fprintf(stderr,
                    "svlm tokenize: unknown option '%s' (put '--' before text that starts with '-')\n", a);
            return 2;
        } else if (!text) {
            text = a;
        } else {
            fprintf(stderr, "svlm tokenize: more than one TEXT ('%s'); quote the text\n", a);
            return 2;
        }
    }
    if (!model || (!text && !file) || (text && file)) {
        fprintf(stderr, "svlm tokenize: %s\n",
                !model ? "-m MODEL is required" : "give exactly one of TEXT or -f FILE");
        usage(stderr);
        return 2;
    }

    if (pieces && !json) {
        fprintf(stderr, "svlm tokenize: --pieces only adds to --json output\n");
        return 2;
    }

    size_t len = text ? strlen(text) : 0;
    char *owned = NULL;
    if (file && !(owned = read_all(file, &len))) {
        fprintf(stderr, "svlm tokenize: cannot read '%s'\n", file);
        return 1;
    }
    if (owned) text = owned;

    svlm_err err = {0};
    gguf_file *f = NULL;
    svlm_tokenizer *tok = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    int rc = 1;
    if (gguf_open(model, &f, &err) || svlm_tokenizer_load(f, &tok, &err) ||
        svlm_tokenize(tok, text, len, add_special, parse_special, &ids, &n, &err)) {
        fprintf(stderr, "svlm tokenize: %s\n", err.msg);
        goto done;
    }
    if (json) {
        fputs("{\"tokens\":[", stdout);
        for (size_t i = 0; i < n; i++)
            printf(i ? ",%d" : "%d", ids[i]);
        putchar(']');
        if (pieces && print_pieces(tok, ids, n)) {
            fprintf(stderr, "svlm tokenize: out of memory\n");
            goto done;
        }
        fputs("}\n", stdout);
    } else {
        for (size_t i = 0; i < n; i++) {
            size_t k = svlm_token_piece(tok, ids[i], 1, NULL, 0);
            char *piece = malloc(k + 1);
            if (!piece) {
                fprintf(stderr, "svlm tokenize: out of memory\n");
                goto done;
            }
            svlm_token_piece(tok, ids[i], 1, piece, k);
            printf("%6d ", ids[i]);
            cli_json_str(stdout, piece, k);
            putchar('\n');
            free(piece);
        }
    }
    rc = 0;
done:
    free(ids);
    svlm_tokenizer_free(tok);
    gguf_close(f);
    free(owned);
    return rc;
}
