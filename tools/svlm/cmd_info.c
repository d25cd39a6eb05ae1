/* svlm info: a GGUF file's header, metadata and tensor table, as text or JSON. */
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "cli.h"
#include "llm/gguf.h"

#define STRING_PREVIEW_BYTES 120 /* long string values are cut in text output */

static void usage(FILE *f) {
    fprintf(f, "usage: svlm info FILE [--json] [--head N]\n"
               "  prints the GGUF version, the metadata (arrays abbreviated to their first N\n"
               "  elements, default 8) and the tensor table with totals per type\n");
}

/* ---- values ---------------------------------------------------------------------------------- */

static void print_double(FILE *o, double v, int is_f32, int json) {
    if (json && !isfinite(v))
        fputs("null", o);
    else
        fprintf(o, is_f32 ? "%.9g" : "%.17g", v);
}

static void print_str(FILE *o, gguf_str s, int json) {
    if (json || s.len <= STRING_PREVIEW_BYTES) {
        cli_json_str(o, s.ptr, (size_t)s.len);
        return;
    }
    cli_json_str(o, s.ptr, STRING_PREVIEW_BYTES);
    fprintf(o, "... (%" PRIu64 " bytes)", s.len);
}

/* Element i of a fixed-size array, decoded as a one-off scalar kv. */
static gguf_kv array_elem(const gguf_kv *arr, uint64_t i) {
    static const int sizes[GGUF_VTYPE_COUNT] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
    int n = sizes[arr->arr_type];
    const uint8_t *p = arr->data + i * (uint64_t)n;
    uint64_t raw = 0;
    for (int b = n - 1; b >= 0; b--)
        raw = raw << 8 | p[b];
    gguf_kv e = {.type = arr->arr_type};
    switch (arr->arr_type) {
    case GGUF_INT8: e.v.i64 = (int8_t)raw; break;
    case GGUF_INT16: e.v.i64 = (int16_t)raw; break;
    case GGUF_INT32: e.v.i64 = (int32_t)raw; break;
    case GGUF_INT64: e.v.i64 = (int64_t)raw; break;
    case GGUF_FLOAT32: {
        uint32_t u = (uint32_t)raw;
        float f;
        memcpy(&f, &u, sizeof f);
        e.v.f64 = f;
        break;
    }
    case GGUF_FLOAT64: memcpy(&e.v.f64, &raw, sizeof raw); break;
    case GGUF_BOOL: e.v.b = (int)raw; break;
    default: e.v.u64 = raw; break;
    }
    return e;
}

static void print_scalar(FILE *o, const gguf_kv *kv, int json) {
    switch (kv->type) {
    case GGUF_INT8:
    case GGUF_INT16:
    case GGUF_INT32:
    case GGUF_INT64: fprintf(o, "%" PRId64, kv->v.i64); break;
    case GGUF_FLOAT32: print_double(o, kv->v.f64, 1, json); break;
    case GGUF_FLOAT64: print_double(o, kv->v.f64, 0, json); break;
    case GGUF_BOOL: fputs(kv->v.b ? "true" : "false", o); break;
    case GGUF_STRING: print_str(o, kv->v.str, json); break;
    default: fprintf(o, "%" PRIu64, kv->v.u64); break;
    }
}

/* The first `head` elements of an array, comma-separated, with "..." when cut. */
static void print_array_head(FILE *o, const gguf_kv *kv, uint64_t head, int json) {
    uint64_t n = kv->arr_n < head ? kv->arr_n : head;
    fputc('[', o);
    for (uint64_t i = 0; i < n; i++) {
        if (i) fputs(", ", o);
        if (kv->arr_type == GGUF_STRING) {
            print_str(o, kv->arr_strs[i], json);
        } else {
            gguf_kv e = array_elem(kv, i);
            print_scalar(o, &e, json);
        }
    }
    if (!json && n < kv->arr_n) fputs(n ? ", ..." : "...", o);
    fputc(']', o);
}

/* ---- totals ---------------------------------------------------------------------------------- */

typedef struct {
    uint64_t params, bytes;
    uint64_t type_tensors[SVLM_DTYPE_COUNT], type_bytes[SVLM_DTYPE_COUNT];
} totals;

static uint64_t tensor_elems(const gguf_tensor *t) {
    return (uint64_t)t->ne[0] * (uint64_t)t->ne[1] * (uint64_t)t->ne[2] * (uint64_t)t->ne[3];
}

static totals count_totals(const gguf_file *f) {
    totals s;
    memset(&s, 0, sizeof s);
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        s.params += tensor_elems(t);
        s.bytes += t->nbytes;
        s.type_tensors[t->type]++;
        s.type_bytes[t->type] += t->nbytes;
    }
    return s;
}

static void shape_text(const gguf_tensor *t, char *buf, size_t cap) {
    size_t len = 0;
    len += (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < t->n_dims && len < cap; d++)
        len += (size_t)snprintf(buf + len, cap - len, "%s%" PRId64, d ? ", " : "", t->ne[d]);
    if (len < cap) snprintf(buf + len, cap - len, "]");
}

/* ---- text and JSON reports ---------------------------------------------------------------------- */

static void print_text(FILE *o, const gguf_file *f, uint64_t head) {
    fprintf(o, "file: %s\n", f->path);
    fprintf(o,
            "GGUF version %u, %" PRIu64 " metadata entries, %" PRIu64 " tensors, alignment %zu, "
            "data section at offset %zu, file size %zu bytes\n\nmetadata:\n",
            f->version, f->n_kv, f->n_tensors, f->alignment, f->data_offset, f->size);
    for (uint64_t i = 0; i < f->n_kv; i++) {
        const gguf_kv *kv = &f->kv[i];
        if (kv->type == GGUF_ARRAY) {
            char type[48];
            snprintf(type, sizeof type, "%s[%" PRIu64 "]", gguf_vtype_name(kv->arr_type), kv->arr_n);
            fprintf(o, "  %-44s %-14s ", kv->key, type);
            print_array_head(o, kv, head, 0);
        } else {
            fprintf(o, "  %-44s %-14s ", kv->key, gguf_vtype_name(kv->type));
            print_scalar(o, kv, 0);
        }
        fputc('\n', o);
    }
    fprintf(o, "\ntensors:\n  %-40s %-6s %-24s %14s %14s\n", "name", "type", "shape", "offset", "bytes");
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        char shape[96];
        shape_text(t, shape, sizeof shape);
        fprintf(o, "  %-40s %-6s %-24s %14" PRIu64 " %14zu\n", t->name, svlm_dtype_get(t->type)->name, shape,
                t->offset, t->nbytes);
    }
    totals s = count_totals(f);
    fprintf(o, "\ntotals: %" PRIu64 " tensors, %" PRIu64 " parameters, %" PRIu64 " bytes (%.2f MiB)\n",
            f->n_tensors, s.params, s.bytes, (double)s.bytes / (1024.0 * 1024.0));
    for (int t = 0; t < SVLM_DTYPE_COUNT; t++)
        if (s.type_tensors[t])
            fprintf(o, "  %-6s %6" PRIu64 " tensors %16" PRIu64 " bytes\n", svlm_dtype_get(t)->name,
                    s.type_tensors[t], s.type_bytes[t]);
}

static void print_json(FILE *o, const gguf_file *f, uint64_t head) {
    fputs("{\"file\":", o);
    cli_json_str(o, f->path, strlen(f->path));
    fprintf(o, ",\"version\":%u,\"alignment\":%zu,\"data_offset\":%zu,\"size\":%zu,\"metadata\":[",
            f->version, f->alignment, f->data_offset, f->size);
    for (uint64_t i = 0; i < f->n_kv; i++) {
        const gguf_kv *kv = &f->kv[i];
        fputs(i ? ",{\"key\":" : "{\"key\":", o);
        cli_json_str(o, kv->key, strlen(kv->key));
        fprintf(o, ",\"type\":\"%s\"", gguf_vtype_name(kv->type));
        if (kv->type == GGUF_ARRAY) {
            fprintf(o, ",\"elem_type\":\"%s\",\"count\":%" PRIu64 ",\"head\":", gguf_vtype_name(kv->arr_type),
                    kv->arr_n);
            print_array_head(o, kv, head, 1);
        } else {
            fputs(",\"value\":", o);
            print_scalar(o, kv, 1);
        }
        fputc('}', o);
    }
    fputs("],\"tensors\":[", o);
    for (uint64_t i = 0; i < f->n_tensors; i++) {
        const gguf_tensor *t = &f->tensors[i];
        fputs(i ? ",{\"name\":" : "{\"name\":", o);
        cli_json_str(o, t->name, strlen(t->name));
        fprintf(o, ",\"type\":\"%s\",\"shape\":[", svlm_dtype_get(t->type)->name);
        for (int d = 0; d < t->n_dims; d++)
            fprintf(o, "%s%" PRId64, d ? "," : "", t->ne[d]);
        fprintf(o, "],\"offset\":%" PRIu64 ",\"bytes\":%zu}", t->offset, t->nbytes);
    }
    totals s = count_totals(f);
    fprintf(o,
            "],\"totals\":{\"tensors\":%" PRIu64 ",\"parameters\":%" PRIu64 ",\"bytes\":%" PRIu64
            ",\"by_type\":{",
            f->n_tensors, s.params, s.bytes);
    int first = 1;
    for (int t = 0; t < SVLM_DTYPE_COUNT; t++) {
        if (!s.type_tensors[t]) continue;
        fprintf(o, "%s\"%s\":{\"tensors\":%" PRIu64 ",\"bytes\":%" PRIu64 "}", first ? "" : ",",
                svlm_dtype_get(t)->name, s.type_tensors[t], s.type_bytes[t]);
        first = 0;
    }
    fputs("}}}\n", o);
}

int cmd_info(int argc, char **argv) {
    const char *path = NULL;
    int json = 0;
    long long head = 8;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--json")) {
            json = 1;
        } else if (!strcmp(argv[i], "--head")) {
            const char *v = cli_value(argc, argv, &i);
            if (!v || cli_int("--head", v, 0, 1000000, &head)) return 2;
        } else if (argv[i][0] == '-' && argv[i][1]) {
            fprintf(stderr, "svlm info: unknown option '%s'\n", argv[i]);
            usage(stderr);
            return 2;
        } else if (path) {
            fprintf(stderr, "svlm info: expects one FILE, got '%s' and '%s'\n", path, argv[i]);
            return 2;
        } else {
            path = argv[i];
        }
    }
    if (!path) {
        usage(stderr);
        return 2;
    }
    gguf_file *f;
    svlm_err err = {0};
    if (gguf_open(path, &f, &err)) {
        fprintf(stderr, "svlm info: %s\n", err.msg);
        return 1;
    }
    if (json)
        print_json(stdout, f, (uint64_t)head);
    else
        print_text(stdout, f, (uint64_t)head);
    gguf_close(f);
    return 0;
}
