/*
 * A client's per-stream settings: the "options" object of an `open` message, over the server's
 * defaults (its flags and --config). Unknown keys and out-of-range values are refused with a
 * message naming them, so a typo never silently falls back to a default.
 */
#include <jansson.h>
#include <string.h>

#include "common/err.h"
#include "pipeline/server/engine_internal.h"

/* An integer option in [lo, hi]; 0 when absent (*out untouched), -1 with err set when bad. */
static int int_option(json_t *o, const char *key, long long lo, long long hi, int *out, svlm_err *err) {
    json_t *v = json_object_get(o, key);
    if (!v) return 0;
    if (!json_is_integer(v) || json_integer_value(v) < lo || json_integer_value(v) > hi) {
        svlm_fail(err, SVLM_E_INVALID, "option '%s' must be an integer from %lld to %lld", key, lo, hi);
        return -1;
    }
    *out = (int)json_integer_value(v);
    return 0;
}

/* A switch: true/false or "on"/"off". */
static int bool_option(json_t *o, const char *key, int *out, svlm_err *err) {
    json_t *v = json_object_get(o, key);
    if (!v) return 0;
    if (json_is_boolean(v))
        *out = json_is_true(v);
    else if (json_is_string(v) && !strcmp(json_string_value(v), "on"))
        *out = 1;
    else if (json_is_string(v) && !strcmp(json_string_value(v), "off"))
        *out = 0;
    else {
        svlm_fail(err, SVLM_E_INVALID, "option '%s' must be true, false, \"on\" or \"off\"", key);
        return -1;
    }
    return 0;
}

svlm_status eng_stream_options(const svlm_engine_backend *e, const char *json, eng_stream_settings *out,
                               svlm_err *err) {
    out->sp = e->sp;
    out->memory = e->o.memory;
    out->stc = e->o.stc;
    out->live = -1;
    if (!json || !*json) return SVLM_OK;
    json_error_t jerr;
    json_t *o = json_loads(json, JSON_REJECT_DUPLICATES, &jerr);
    if (!o || !json_is_object(o)) {
        json_decref(o);
        return svlm_fail(err, SVLM_E_INVALID, "'options' must be a JSON object");
    }
    static const char *const known[] = {"stc",         "memory",        "frames_window",
                                        "text_window", "memory_tokens", "live"};
    const char *key;
    json_t *v;
    svlm_status st = SVLM_OK;
    json_object_foreach(o, key, v) {
        size_t i = 0;
        while (i < sizeof known / sizeof known[0] && strcmp(key, known[i]))
            i++;
        if (i == sizeof known / sizeof known[0]) {
            st = svlm_fail(err, SVLM_E_INVALID,
                           "unknown option '%.60s' (known: stc, memory, frames_window, text_window, "
                           "memory_tokens, live)",
                           key);
            break;
        }
    }
    int frames = e->o.frames_window, text = e->o.text_window, mem_tokens = e->o.memory_tokens;
    int stc_on = e->o.stc.enabled;
    if (!st &&
        (bool_option(o, "stc", &stc_on, err) || bool_option(o, "memory", &out->memory, err) ||
         bool_option(o, "live", &out->live, err) || int_option(o, "frames_window", 1, 256, &frames, err) ||
         int_option(o, "text_window", 16, 8192, &text, err) ||
         int_option(o, "memory_tokens", 1, 1024, &mem_tokens, err)))
        st = err->status ? err->status : SVLM_E_INVALID;
    json_decref(o);
    if (st) return st;
    if (out->memory && !e->o.memory)
        return svlm_fail(err, SVLM_E_INVALID, "memory is off for this server (svlm serve --no-memory)");
    out->stc.enabled = stc_on;
    /* the same arithmetic as the server's own defaults (engine_backend.c) */
    out->sp.vision_tokens = frames * (e->tokens_per_tile + 24);
    out->sp.text_tokens = text;
    out->sp.memory_tokens = mem_tokens;
    return SVLM_OK;
}
