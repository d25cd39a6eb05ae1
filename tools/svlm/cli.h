/* Shared helpers of the svlm subcommands: strict flag parsing and JSON output. */
#ifndef SVLM_TOOLS_CLI_H
#define SVLM_TOOLS_CLI_H

#include <stdint.h>
#include <stdio.h>

#include "kernels/dtype.h"

#define SVLM_CMD(name, help) int cmd_##name(int argc, char **argv);
#include "commands.def"
#undef SVLM_CMD

/* Each returns 0 and sets *out, or prints "svlm: FLAG expects ..." to stderr and returns -1. */
int cli_int(const char *flag, const char *s, long long lo, long long hi, long long *out);
int cli_float(const char *flag, const char *s, double lo, double hi, double *out);
/* The value after a flag, or NULL after printing "svlm: FLAG needs a value" (or, for a word that is
 * not a flag, "svlm: unexpected argument"). Advances *i. */
const char *cli_value(int argc, char **argv, int *i);
/* -1 after printing "svlm CMD: FLAG names INPUT" when `out` is the same file as `in` (by any path
 * or link): writing it would destroy the input (a model read while it is overwritten); else 0. */
int cli_output_not_input(const char *cmd, const char *flag, const char *out, const char *in);
/* Parses a KV cache type ("f32" or "f16"). */
int cli_kv_type(const char *flag, const char *s, svlm_dtype *out);
/* Checks a compute backend name for svlm_kernels_create_named: cpu, cuda, cuda:N, auto or null. */
int cli_backend(const char *flag, const char *s);
/* The --backend line of the commands' --help texts. */
#define CLI_BACKEND_HELP                                                                                     \
    "  --backend B      compute on cpu, cuda (cuda:N for GPU N) or auto (a GPU when one is usable);\n"       \
    "                   default $SVLM_BACKEND, else cpu. Without a usable GPU, cuda runs on the CPU.\n"      \
    "                   null computes nothing: it measures svlm's own host work at the model's shapes\n"
/* Prints s as a JSON string literal (quotes, escapes, invalid UTF-8 replaced by U+FFFD). */
void cli_json_str(FILE *f, const char *s, size_t len);
/* Monotonic seconds. */
double cli_now(void);
/* The process's resident memory in bytes (/proc/self/statm; 0 where that is unreadable). */
size_t cli_rss_bytes(void);

#endif
