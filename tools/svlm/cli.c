#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

int cli_int(const char *flag, const char *s, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        fprintf(stderr, "svlm: %s expects an integer from %lld to %lld, got '%s'\n", flag, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_float(const char *flag, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v) || v < lo || v > hi) {
        fprintf(stderr, "svlm: %s expects a number from %.10g to %.10g, got '%s'\n", flag, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

int cli_kv_type(const char *flag, const char *s, svlm_dtype *out) {
    if (!strcmp(s, "f32"))
        *out = SVLM_F32;
    else if (!strcmp(s, "f16"))
        *out = SVLM_F16;
    else {
        fprintf(stderr, "svlm: %s expects f32 or f16, got '%s'\n", flag, s);
        return -1;
    }
    return 0;
}

int cli_backend(const char *flag, const char *s) {
    int ok = !strcmp(s, "cpu") || !strcmp(s, "cuda") || !strcmp(s, "auto") || !strcmp(s, "null");
    if (!ok && !strncmp(s, "cuda:", 5) && s[5]) {
        char *end;
        errno = 0;
        long v = strtol(s + 5, &end, 10);
        ok = !errno && !*end && v >= 0 && v < 64 && s[5] >= '0' && s[5] <= '9';
    }
    if (!ok) fprintf(stderr, "svlm: %s expects cpu, cuda, cuda:N, auto or null, got '%s'\n", flag, s);
    return ok ? 0 : -1;
}

int cli_output_not_input(const char *cmd, const char *flag, const char *out, const char *in) {
    struct stat so, si;
    if (!out || !in || stat(out, &so) || stat(in, &si) || so.st_dev != si.st_dev || so.st_ino != si.st_ino)
        return 0;
    fprintf(stderr, "svlm %s: %s %s is the input %s: write to another file\n", cmd, flag, out, in);
    return -1;
}

const char *cli_value(int argc, char **argv, int *i) {
    if (argv[*i][0] != '-') { /* a stray word, not a flag that lost its value */
        fprintf(stderr, "svlm: unexpected argument '%s' (options start with '-'; quote text with spaces)\n",
                argv[*i]);
        return NULL;
    }
    if (*i + 1 >= argc) {
        /* (some commands take the value before they know the flag: it may also be unknown) */
        fprintf(stderr, "svlm: %s needs a value, or is not an option here (see --help)\n", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

/* Length of the valid UTF-8 sequence at s (0 if invalid). */
static size_t utf8_len(const unsigned char *s, size_t n) {
    if (s[0] < 0x80) return 1;
    size_t len = (s[0] & 0xE0) == 0xC0 ? 2 : (s[0] & 0xF0) == 0xE0 ? 3 : (s[0] & 0xF8) == 0xF0 ? 4 : 0;
    if (!len || len > n || (s[0] == 0xC0 || s[0] == 0xC1) || s[0] > 0xF4) return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return len;
}

void cli_json_str(FILE *f, const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    fputc('"', f);
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        if (c == '"' || c == '\\') {
            fputc('\\', f);
            fputc(c, f);
            i++;
        } else if (c < 0x20) {
            switch (c) {
            case '\n': fputs("\\n", f); break;
            case '\r': fputs("\\r", f); break;
            case '\t': fputs("\\t", f); break;
            default: fprintf(f, "\\u%04x", c);
            }
            i++;
        } else {
            size_t l = utf8_len(s + i, n - i);
            if (!l) {
                fputs("\\ufffd", f);
                i++;
            } else {
                fwrite(s + i, 1, l, f);
                i += l;
            }
        }
    }
    fputc('"', f);
}

size_t cli_rss_bytes(void) {
    long pages = 0, resident = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return 0;
    if (fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    fclose(f);
    return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

double cli_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}
