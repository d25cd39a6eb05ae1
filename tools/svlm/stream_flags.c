/* Stream controls shared by svlm replay and svlm serve (stream_flags.h). */
#include "stream_flags.h"

#include <string.h>

#include "cli.h"

void stream_flags_default(stream_flags *f) {
    memset(f, 0, sizeof *f);
    svlm_stc_controls_default(&f->stc);
    f->stc.enabled = -1; /* unless --stc says: on for the CPU, off on a GPU (the engine decides) */
    f->memory = 1;
    f->memory_mib = 64;
    f->memory_tokens = 64;
    f->sinks = 64;
    f->frames_window = 8;
    f->text_window = 512;
    f->queue = 2;
    f->kv = SVLM_F16;
}

int stream_flags_parse(stream_flags *f, const char *cmd, int argc, char **argv, int *i) {
    const char *a = argv[*i], *v;
    if (!strcmp(a, "--no-memory")) {
        f->memory = 0;
        return 1;
    }
    struct {
        const char *flag;
        long long *p;
        long long lo, hi;
    } ints[] = {
        {"--memory-tokens", &f->memory_tokens, 1, 1 << 20},
        {"--sinks", &f->sinks, 16, 1 << 16},
        {"--frames-window", &f->frames_window, 1, 4096},
        {"--text-window", &f->text_window, 16, 1 << 20},
        {"--queue", &f->queue, 1, 1024},
    };
    int is_int = -1;
    for (int k = 0; k < (int)(sizeof ints / sizeof ints[0]); k++)
        if (!strcmp(a, ints[k].flag)) is_int = k;
    const int ours = is_int >= 0 || !strcmp(a, "--memory-budget") || !strcmp(a, "--memory-dir") ||
                     !strcmp(a, "--stc") || !strncmp(a, "--stc-", 6) || !strcmp(a, "--kv");
    if (!ours) return 0;
    if (!(v = cli_value(argc, argv, i))) return -1;
    if (is_int >= 0) return cli_int(a, v, ints[is_int].lo, ints[is_int].hi, ints[is_int].p) ? -1 : 1;
    if (!strcmp(a, "--memory-budget")) return cli_float(a, v, 0.0625, 1 << 20, &f->memory_mib) ? -1 : 1;
    if (!strcmp(a, "--kv")) {
        f->kv_given = 1;
        return cli_kv_type(a, v, &f->kv) ? -1 : 1;
    }
    if (!strcmp(a, "--memory-dir")) {
        f->memory_dir = v;
        return 1;
    }
    svlm_err err = {0};
    if (a[5] && f->stc.enabled < 0) f->stc.enabled = 1; /* tuning a control asks for compression */
    if (svlm_stc_control_set(&f->stc, a[5] ? a + 6 : "stc", v, &err)) {
        fprintf(stderr, "svlm %s: %s: %s\n", cmd, a, err.msg);
        return -1;
    }
    return 1;
}

int stream_flags_check(const stream_flags *f, const char *cmd) {
    if (f->memory_dir && !f->memory) {
        fprintf(stderr, "svlm %s: --memory-dir needs the memory (drop --no-memory)\n", cmd);
        return -1;
    }
    return 0;
}

void stream_flags_usage(FILE *out) {
    fprintf(out,
            "stream controls:\n"
            "  --frames-window N  frames kept in the context (8)\n"
            "  --text-window N    dialogue tokens kept in the context (512)\n"
            "  --sinks N          tokens kept for ever for the system prompt (64)\n"
            "  --kv f32|f16       KV cache type (default: f16 on the CPU, f32 on a GPU); f16 holds\n"
            "                     each stream's context in half the memory, and on the CPU its\n"
            "                     decode reads it directly (faster than f32 over long windows)\n"
            "  --queue N          frames waiting for the encoder per stream; a live source drops\n"
            "                     the oldest beyond it (2)\n"
            "  --memory-budget M  memory bank budget in MiB per stream (64)\n"
            "  --memory-dir DIR   persist the bank there (a rerun resumes it)\n"
            "  --memory-tokens N  memory rows placed before a question at most (64): they are\n"
            "                     prefilled with the question, so they bound its first-token time\n"
            "  --no-memory        frames leaving the window are dropped\n"
            "  --stc on|off       token compression (on: tuned defaults; off: every token, plain encoder;\n"
            "                     default: on for the CPU, off on a GPU)\n");
    int n = 0;
    const svlm_stc_control_desc *d = svlm_stc_control_list(&n);
    svlm_stc_controls def;
    svlm_stc_controls_default(&def);
    for (int k = 0; k < n; k++)
        fprintf(out, "  --stc-%-18s %s (%g)\n", d[k].name, d[k].help, svlm_stc_control_get(&def, d[k].name));
}

svlm_dtype stream_flags_kv(const stream_flags *f, int gpu) {
    if (f->kv_given) return f->kv;
    return gpu ? SVLM_F32 : SVLM_F16;
}
