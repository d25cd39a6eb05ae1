/*
 * libFuzzer harness: the text parsers of a stream's settings, none of which opens anything:
 *  0 source URIs: svlm_uri_parse, svlm_uri_default_live, svlm_backend_choose for every backend,
 *    and for pattern: URIs the parameter list (svlm_source_probe: parse_params only; built
 *    without FFmpeg and GStreamer nothing else can open);
 *  1 an `open` message's "options" JSON over a server's defaults (eng_stream_options; needs the
 *    server, SVLM_HAVE_SERVER);
 *  2 STC controls by name: lines "NAME=VALUE" through svlm_stc_control_set / _get;
 *  3 a question's time anchor: svlm_memory_parse_time_query;
 *  4 the stream flags of `svlm serve` and `svlm replay` (tools/svlm/stream_flags.c): argv split
 *    at newlines through stream_flags_parse, stream_flags_check, cli_backend and cli_kv_type.
 * Byte 0: bits 0-2 pick the parser (5-7 wrap), bits 3-7 are flags; the rest is the text, up to
 * its first NUL.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "memory/memory_bank.h"
#include "pipeline/source_backend.h"
#include "stream_flags.h"
#include "vision/stc.h"
#ifdef SVLM_HAVE_SERVER
#include "pipeline/server/engine_internal.h"
#endif

static volatile double sink; /* keeps the reads below */

static void source_uri(const char *s, uint8_t flags) {
    svlm_uri *u = malloc(sizeof *u);
    if (!u) return;
    svlm_err err = {0};
    if (svlm_uri_parse(s, u, &err) == SVLM_OK) {
        if (strlen(u->target) >= sizeof u->target || (!*u->target && u->kind != SVLM_URI_PATTERN)) abort();
        double acc = svlm_uri_default_live(u) + (double)strlen(svlm_uri_kind_name(u->kind));
        static const svlm_backend_kind kinds[] = {SVLM_BACKEND_AUTO, SVLM_BACKEND_FFMPEG, SVLM_BACKEND_GST,
                                                  SVLM_BACKEND_PATTERN};
        for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++) {
            svlm_err e2 = {0};
            const svlm_backend_ops *ops = svlm_backend_choose(kinds[k], u, &e2);
            acc += ops ? (double)strlen(ops->name) : (double)strlen(e2.msg);
        }
        if (u->kind == SVLM_URI_PATTERN) { /* only the pattern backend is built: nothing is opened */
            svlm_source_opts o;
            svlm_source_opts_default(&o);
            o.live = flags & 0x08 ? 1 : -1;
            svlm_probe_info *info = malloc(sizeof *info);
            if (info && svlm_source_probe(s, &o, info, &err) == SVLM_OK) {
                if (info->n_streams != 1 || info->streams[0].width < 2 || info->streams[0].height < 2)
                    abort();
                acc += info->streams[0].fps + info->duration;
            }
            free(info);
        }
        sink = acc;
    } else {
        sink = (double)strlen(err.msg);
    }
    svlm_backend_kind bk;
    if (svlm_backend_kind_parse(s, &bk) == 0) sink = (double)strlen(svlm_backend_kind_name(bk));
    free(u);
}

#ifdef SVLM_HAVE_SERVER
static void stream_options(const char *s, uint8_t flags) {
    static svlm_engine_backend e; /* only its settings are read */
    svlm_engine_backend_opts_default(&e.o);
    e.o.memory = !(flags & 0x08);
    e.tokens_per_tile = 64;
    eng_stream_settings set;
    svlm_err err = {0};
    svlm_status st = eng_stream_options(&e, flags & 0x10 ? NULL : s, &set, &err);
    if (st == SVLM_OK) {
        if (set.memory && !e.o.memory) abort();
        sink = set.sp.vision_tokens + set.sp.text_tokens + set.sp.memory_tokens + set.stc.enabled;
    } else if (!err.msg[0] || err.status != st) {
        abort(); /* a refusal always says why */
    }
}
#else
static void stream_options(const char *s, uint8_t flags) {
    (void)s, (void)flags;
}
#endif

static void stc_controls(char *s) {
    svlm_stc_controls c;
    svlm_stc_controls_default(&c);
    double acc = 0;
    for (char *save = NULL, *line = strtok_r(s, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *val = strchr(line, '=');
        if (val) *val++ = 0;
        svlm_err err = {0};
        if (svlm_stc_control_set(&c, line, val, &err) == SVLM_OK) {
            double v = svlm_stc_control_get(&c, line);
            if (isnan(v)) abort(); /* what was set can be read back */
            acc += v;
        }
        acc += (double)strlen(err.msg);
    }
    sink = acc;
}

static void time_query(const char *s, uint8_t flags) {
    static const double nows[] = {0, 30, 3725.5, 86400 * 3, 1e9, -5, 1e300, INFINITY};
    svlm_memory_query q;
    svlm_memory_query_default(&q);
    if (svlm_memory_parse_time_query(s, nows[flags >> 5], &q)) sink = q.t_from + q.t_to + q.first;
}

static void cli_flags(char *s) {
    char *argv[64];
    int argc = 0;
    argv[argc++] = "serve";
    for (char *save = NULL, *a = strtok_r(s, "\n", &save); a && argc < 64; a = strtok_r(NULL, "\n", &save))
        argv[argc++] = a;
    stream_flags f;
    stream_flags_default(&f);
    for (int i = 1; i < argc; i++) {
        int rc = stream_flags_parse(&f, "serve", argc, argv, &i);
        if (rc < 0) break;
        if (rc == 0) { /* not a stream flag: the other shared checks */
            svlm_dtype dt;
            if (!cli_backend(argv[i], argv[i])) sink = 1;
            if (!cli_kv_type(argv[i], argv[i], &dt)) sink = dt;
        }
    }
    stream_flags_check(&f, "serve");
    sink = f.memory_mib + (double)f.frames_window + (double)f.queue + f.stc.keep_ratio;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!size) return 0;
    uint8_t sel = data[0] & 7, flags = data[0] & 0xF8;
    char *s = malloc(size);
    if (!s) return 0;
    memcpy(s, data + 1, size - 1);
    s[size - 1] = 0;
    switch (sel % 5) {
    case 0: source_uri(s, flags); break;
    case 1: stream_options(s, flags); break;
    case 2: stc_controls(s); break;
    case 3: time_query(s, flags); break;
    default: cli_flags(s); break;
    }
    free(s);
    return 0;
}
