/* svlm quantize: a copy of a GGUF model with its weight matrices in another type. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "llm/gguf.h"
#include "llm/gguf_write.h"
#include "common/err.h"
#include "mkmodel.h"

/* On a terminal one line is redrawn per tensor; into a log a line is written at each quarter. */
static void report_progress(uint64_t done, uint64_t total, int tty) {
    if (tty)
        fprintf(stderr, "\rsvlm quantize: %llu/%llu tensors", (unsigned long long)done,
                (unsigned long long)total);
    else if (done == total || done * 4 / total != (done - 1) * 4 / total)
        fprintf(stderr, "svlm quantize: %llu/%llu tensors\n", (unsigned long long)done,
                (unsigned long long)total);
}

static void usage(FILE *f) {
    fprintf(
        f,
        "usage: svlm quantize IN.gguf OUT.gguf --type f32|f16|bf16|q8_0|q4_0|q4_1|q5_0|q5_1|q4_k|q5_k|q6_k\n"
        "  Weight matrices (2-D '*.weight' tensors) are converted; vectors (norms, biases) keep\n"
        "  their type, and so does a matrix whose rows are not a multiple of the type's block.\n");
}

/* Copies one metadata value into the writer. */
static svlm_status copy_kv(gguf_writer *w, const gguf_kv *kv, svlm_err *err) {
    switch (kv->type) {
    case GGUF_UINT8: return gguf_writer_set_u8(w, kv->key, (uint8_t)kv->v.u64, err);
    case GGUF_INT8: return gguf_writer_set_i8(w, kv->key, (int8_t)kv->v.i64, err);
    case GGUF_UINT16: return gguf_writer_set_u16(w, kv->key, (uint16_t)kv->v.u64, err);
    case GGUF_INT16: return gguf_writer_set_i16(w, kv->key, (int16_t)kv->v.i64, err);
    case GGUF_UINT32: return gguf_writer_set_u32(w, kv->key, (uint32_t)kv->v.u64, err);
    case GGUF_INT32: return gguf_writer_set_i32(w, kv->key, (int32_t)kv->v.i64, err);
    case GGUF_UINT64: return gguf_writer_set_u64(w, kv->key, kv->v.u64, err);
    case GGUF_INT64: return gguf_writer_set_i64(w, kv->key, kv->v.i64, err);
    case GGUF_FLOAT32: return gguf_writer_set_f32(w, kv->key, (float)kv->v.f64, err);
    case GGUF_FLOAT64: return gguf_writer_set_f64(w, kv->key, kv->v.f64, err);
    case GGUF_BOOL: return gguf_writer_set_bool(w, kv->key, kv->v.b, err);
    case GGUF_STRING: return gguf_writer_set_str_n(w, kv->key, kv->v.str.ptr, (size_t)kv->v.str.len, err);
    case GGUF_ARRAY:
        if (kv->arr_type == GGUF_STRING) /* by length: a token's text may hold NUL bytes */
            return gguf_writer_set_arr_str_n(w, kv->key, kv->arr_strs, kv->arr_n, err);
        return gguf_writer_set_arr(w, kv->key, kv->arr_type, kv->data, kv->arr_n, err);
    default: return svlm_fail(err, SVLM_E_UNSUPPORTED, "metadata '%s' has an unknown type", kv->key);
    }
}

/* The type a tensor gets in the copy. */
static svlm_dtype target_type(const gguf_tensor *t, svlm_dtype want) {
    size_t len = strlen(t->name);
    int is_matrix = t->n_dims == 2 && len > 7 && !strcmp(t->name + len - 7, ".weight");
    const svlm_dtype_info *wi = svlm_dtype_get(want);
    if (!is_matrix || t->ne[0] % wi->block_size) return t->type;
    return want;
}

int cmd_quantize(int argc, char **argv) {
    const char *in = NULL, *out = NULL, *type_name = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--type")) {
            if (!(type_name = cli_value(argc, argv, &i))) return 2;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "svlm quantize: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        } else if (!in) {
            in = argv[i];
        } else if (!out) {
            out = argv[i];
        } else {
            fprintf(stderr, "svlm quantize: unexpected argument '%s'\n", argv[i]);
            return 2;
        }
    }
    svlm_dtype want;
    if (!in || !out || !type_name) {
        fprintf(stderr, "svlm quantize: IN, OUT and --type are required\n");
        usage(stderr);
        return 2;
    }
    if (svlm_dtype_from_name(type_name, &want) ||
        !(want == SVLM_F16 || want == SVLM_BF16 || want == SVLM_F32 || want == SVLM_Q8_0 ||
          want == SVLM_Q4_0 || want == SVLM_Q4_1 || want == SVLM_Q5_0 || want == SVLM_Q5_1 ||
          want == SVLM_Q4_K || want == SVLM_Q5_K || want == SVLM_Q6_K)) {
        fprintf(stderr,
                "svlm quantize: --type '%s' is not one svlm writes (f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, "
                "q5_1, q4_k, q5_k, q6_k)\n",
                type_name);
        return 2;
    }
    /* OUT replaces its file when done (a temporary, then a rename): naming IN again would replace
     * the model being converted, a lossy copy in place of the original, even a read-only one */
    if (cli_output_not_input("quantize", "OUT", out, in)) return 2;
    svlm_err err = {0};
    gguf_file *f = NULL;
    gguf_writer *w = NULL;
    float *row = NULL;
    void *qrow = NULL;
    int rc = 1, drawn = 0; /* drawn: a progress line is open on the terminal */
    const int tty = isatty(2);
    if (gguf_open(in, &f, &err) || gguf_writer_create(out, f->alignment == 32 ? 0 : f->alignment, &w, &err))
        goto fail;
    /* the metadata as it was, but for what describes the tensors' types: the new type's */
    for (uint64_t i = 0; i < f->n_kv; i++)
        if (strcmp(f->kv[i].key, "general.alignment") && strcmp(f->kv[i].key, "general.file_type") &&
            strcmp(f->kv[i].key, "general.quantization_version") && copy_kv(w, &f->kv[i], &err))
            goto fail;
    if (gguf_writer_set_u32(w, "general.file_type", mk_file_type_of(want), &err) ||
        gguf_writer_set_u32(w, "general.quantization_version", GGML_QUANT_VERSION, &err))
        goto fail;
    int64_t max_cols = 1;
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        if (gguf_writer_add_tensor(w, t->name, target_type(t, want), t->n_dims, t->ne, &err)) goto fail;
        if (t->ne[0] > max_cols) max_cols = t->ne[0];
    }
    row = malloc((size_t)max_cols * sizeof(float));
    qrow = malloc(svlm_row_bytes(SVLM_F32, max_cols));
    if (!row || !qrow) {
        svlm_fail(&err, SVLM_E_NOMEM, "out of memory");
        goto fail;
    }
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        svlm_dtype to = target_type(t, want);
        if (to == t->type) {
            if (gguf_writer_write_data(w, t->data, t->nbytes, &err)) goto fail;
            report_progress(i + 1, f->n_tensors, tty);
            drawn = tty;
            continue;
        }
        size_t in_row = svlm_row_bytes(t->type, t->ne[0]), out_row = svlm_row_bytes(to, t->ne[0]);
        int64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
        for (int64_t r = 0; r < rows; r++) {
            if (svlm_dequantize_row(t->type, (const uint8_t *)t->data + (size_t)r * in_row, row, t->ne[0]) ||
                svlm_quantize_row(to, row, qrow, t->ne[0])) {
                svlm_fail(&err, SVLM_E_UNSUPPORTED, "tensor '%s': cannot convert %s to %s", t->name,
                          svlm_dtype_get(t->type)->name, svlm_dtype_get(to)->name);
                goto fail;
            }
            if (gguf_writer_write_data(w, qrow, out_row, &err)) goto fail;
        }
        report_progress(i + 1, f->n_tensors, tty);
        drawn = tty;
    }
    if (gguf_writer_finish(w, &err)) goto fail;
    fprintf(stderr, "%ssvlm quantize: wrote %s\n", drawn ? "\n" : "", out);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "%ssvlm quantize: %s\n", drawn ? "\n" : "", err.msg);
done:
    free(row);
    free(qrow);
    gguf_writer_destroy(w);
    gguf_close(f);
    return rc;
}
