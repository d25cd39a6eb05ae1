/* svlm serve: the websocket/HTTP server (pipeline/server) in front of the streams. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"

#ifndef SVLM_HAVE_SERVER
int cmd_serve(int argc, char **argv) {
    (void)argc;
    (void)argv;
    fprintf(stderr, "svlm serve: not built with the server libraries (install libwebsockets-dev and "
                    "libjansson-dev, then rebuild)\n");
    return 2;
}
#else
#include <jansson.h>

#include "pipeline/server/engine_backend.h"
#include "pipeline/source_backend.h"
#include "pipeline/server/server.h"
#include "serve_demo.h"
#include "stream_flags.h"

/* The sources' messages quote the URI as given: its password (user:pass@, ?password=) is
 * replaced by the redacted form wherever it appears. */
static void redact_uri_in(char *msg, size_t cap, const char *uri, const char *shown) {
    const size_t n = strlen(uri);
    char *at = n ? strstr(msg, uri) : NULL;
    if (!at || !strcmp(uri, shown) || !cap) return;
    char out[sizeof((svlm_err *)0)->msg];
    const char *parts[3] = {msg, shown, at + n};
    const size_t lens[3] = {(size_t)(at - msg), strlen(shown), strlen(at + n)};
    size_t k = 0;
    for (int p = 0; p < 3; p++) /* (cut to fit, as a message may be) */
        for (size_t c = 0; c < lens[p] && k + 1 < sizeof out; c++)
            out[k++] = parts[p][c];
    out[k] = 0;
    snprintf(msg, cap, "%.*s", (int)(cap - 1), out);
}

#define MAX_SOURCES 64
#define DEMO_SOURCE "pattern:size=320x240,rate=5,duration=0,live"

static svlm_server *volatile running;
static void on_signal(int sig) {
    (void)sig;
    if (running) svlm_server_stop(running);
}

static void usage(FILE *f) {
    fprintf(
        f,
        "usage: svlm serve -m TEXT_GGUF --mmproj MMPROJ_GGUF [options]\n"
        "       svlm serve --demo [options]\n"
        "  --demo                a generated random-weight tiny SmolVLM2 instead of -m/--mmproj\n"
        "                        (made once into --cache-dir), and without --source a built-in\n"
        "                        test pattern as stream 'demo'\n"
        "  --cache-dir DIR       where --demo keeps its model ($XDG_CACHE_HOME/svlm or ~/.cache/svlm)\n"
        "  --answer-threads N    answers running at once (default 8 on the CPU, 64 on a GPU)\n"
        "  --decode-batch N      of those, how many step together, reading the weights once (16;\n"
        "                        1: one answer per step)\n"
        "  --ingest-batch N      frames of up to N streams encoded as one batch (32 on a GPU, 1 on\n"
        "                        the CPU: there a question may wait for a whole batch)\n"
        "  --threads N           compute threads for answers (all CPUs but one, kept for ingest)\n"
        "  --backend B           compute on cpu, cuda (cuda:N for GPU N) or auto (a GPU when one is\n"
        "                        usable); default $SVLM_BACKEND, else cpu. Without a usable GPU,\n"
        "                        cuda runs on the CPU. null computes nothing (answers are meaningless)\n"
        "  --source NAME=URI     open a stream at start (repeatable; URIs as in 'svlm frames')\n"
        "  --live | --replay     after a --source: that source is a camera (stall watchdog, reconnects,\n"
        "                        the oldest waiting frame dropped when behind) or a recording (played\n"
        "                        at real time; when behind, it waits: no frame dropped). Default\n"
        "                        from the URI: RTSP, webcams and unfinished HLS playlists are live, so\n"
        "                        an MJPEG or MPEG-TS camera over http(s):// needs --live. A live source\n"
        "                        that cannot be reached at start starts reconnecting; a recording that\n"
        "                        cannot be opened stops the start\n"
        "  --open-timeout S      every source's connect/open limit (10)\n"
        "  --stall-timeout S     live sources: no frame for S seconds is a stall, then a reconnect\n"
        "                        (5; 0: no watchdog)\n"
        "  --max-answer-tokens N the longest answer (256; 1-4096): a question asking for more is cut\n"
        "                        there (finish_reason \"length\"); the context's answer room also bounds it\n"
        "  --listen HOST:PORT    (127.0.0.1:8080) HOST: an IPv4 address or a name of this machine,\n"
        "                        0.0.0.0 for all; any other host than loopback needs a token\n"
        "  --token-file FILE     clients must present this token (hello, ?token=, Bearer)\n"
        "  --allow-local-open    without a token, clients may still open gst: pipelines and local\n"
        "                        files (anyone on this machine can connect to loopback)\n"
        "  --allow-origin ORIGIN a web page of this origin (https://host:port) may use the server;\n"
        "                        repeatable (websocket and HTTP, with CORS). Browsers' requests from\n"
        "                        other sites are refused: a page you visit could otherwise ask\n"
        "                        about your cameras\n"
        "  --config FILE         JSON: {\"listen\", \"token_file\", \"web\", \"allowed_origins\": [ORIGIN],\n"
        "                        \"allow_local_open\": true|false, \"open_timeout_s\", \"stall_timeout_s\",\n"
        "                        \"max_answer_tokens\",\n"
        "                        \"sources\": {NAME: URI or\n"
        "                        {\"uri\": URI, \"live\": true|false}},\n"
        "                        \"max_message_bytes\", \"max_messages_per_s\", "
        "\"max_questions_per_client\",\n"
        "                        \"max_questions_total\", \"max_watches_per_client\", \"max_streams\",\n"
        "                        \"max_clients\", \"max_send_queue_bytes\", \"status_interval_s\",\n"
        "                        \"auth_timeout_s\",\n"
        "                        \"stc\": {\"stc\": \"on\"|\"off\", NAME: VALUE}, \"memory\": {\"on\", "
        "\"budget_mib\",\n"
        "                        \"dir\", \"tokens\"}, \"stream\": {\"sinks\", \"frames_window\", "
        "\"text_window\",\n"
        "                        \"queue\", \"answer_threads\", \"kv\"}} (docs/streaming.md)\n"
        "  --web DIR             the page's folder (demos/web next to the binary's source tree)\n"
        "Protocol: docs/protocol.md. The page: http://HOST:PORT/\n");
    stream_flags_usage(f);
}

/* Adds an origin browsers' requests may come from ("*": any). */
static int allow_origin(const char *given, svlm_server_config *cfg) {
    const size_t used = strlen(cfg->allowed_origins);
    char o[512]; /* as a browser sends it: scheme://host[:port], no path (a trailing '/' dropped) */
    snprintf(o, sizeof o, "%s", given);
    const size_t len = strlen(o);
    if (len > 1 && o[len - 1] == '/') o[len - 1] = 0;
    const char *sep = strstr(o, "://");
    if (!*o || strlen(given) >= sizeof o || strchr(o, ',') || strchr(o, ' ') || (strcmp(o, "*") && !sep) ||
        (sep && (strchr(sep + 3, '/') || !sep[3]))) {
        fprintf(stderr,
                "svlm serve: --allow-origin expects an origin as a browser sends it (https://host:port) "
                "or *, got '%s'\n",
                given);
        return -1;
    }
    if (used + strlen(o) + 2 > sizeof cfg->allowed_origins) {
        fprintf(stderr, "svlm serve: too many allowed origins\n");
        return -1;
    }
    snprintf(cfg->allowed_origins + used, sizeof cfg->allowed_origins - used, "%s%s", used ? "," : "", o);
    return 0;
}

static int parse_listen(const char *s, svlm_server_config *cfg) {
    const char *colon = strrchr(s, ':');
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || colon == s || (size_t)(colon - s) >= sizeof cfg->host || colon[1] < '0' || colon[1] > '9' ||
        *end || port > 65535)
        return fprintf(
                   stderr,
                   "svlm serve: --listen expects HOST:PORT (PORT from 0 to 65535), e.g. 127.0.0.1:8080\n"),
               -1;
    snprintf(cfg->host, sizeof cfg->host, "%.*s", (int)(colon - s), s);
    cfg->port = (int)port;
    return 0;
}

static int read_token(const char *path, svlm_server_config *cfg) {
    char buf[sizeof cfg->token + 1]; /* one byte more: a longer token is refused, not cut */
    FILE *f = fopen(path, "r");
    if (!f) return fprintf(stderr, "svlm serve: cannot read the token file %s\n", path), -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    int bad = ferror(f);
    fclose(f);
    if (bad) return fprintf(stderr, "svlm serve: cannot read the token file %s\n", path), -1;
    buf[n] = 0;
    while (n && strchr("\r\n \t", buf[n - 1]))
        buf[--n] = 0;
    if (n >= sizeof cfg->token)
        return fprintf(stderr, "svlm serve: the token in %s is longer than %zu characters\n", path,
                       sizeof cfg->token - 1),
               -1;
    if (n < 8) return fprintf(stderr, "svlm serve: the token in %s is shorter than 8 characters\n", path), -1;
    memcpy(cfg->token, buf, n + 1);
    return 0;
}

typedef struct source_arg {
    char name[SVLM_BACKEND_NAME_MAX];
    char uri[1024];
    int live;           /* -1: from the URI (--live: 1, --replay: 0) */
    const char *config; /* the --config file that named it, or NULL: the command line */
} source_arg;

/* config: the --config file the source comes from (its messages name the file and sources.NAME),
 * or NULL for --source NAME=URI. */
static int add_source(source_arg *src, int *n, const char *name, size_t name_len, const char *uri,
                      const char *config) {
    if (*n >= MAX_SOURCES)
        return fprintf(stderr, "svlm serve: at most %d sources (--source and the config's \"sources\")\n",
                       MAX_SOURCES),
               -1;
    if (!name_len || name_len >= SVLM_BACKEND_NAME_MAX || !uri[0] || strlen(uri) >= sizeof src->uri) {
        if (config)
            fprintf(stderr,
                    "svlm serve: %s: sources.%.*s: a source needs a NAME of 1 to %d bytes and a URI of 1 to "
                    "%zu bytes\n",
                    config, (int)(name_len < 80 ? name_len : 80), name, SVLM_BACKEND_NAME_MAX - 1,
                    sizeof src->uri - 1);
        else
            fprintf(stderr,
                    "svlm serve: a source needs a NAME of 1 to %d bytes and a URI of 1 to %zu bytes "
                    "(--source NAME=URI)\n",
                    SVLM_BACKEND_NAME_MAX - 1, sizeof src->uri - 1);
        return -1;
    }
    char nm[SVLM_BACKEND_NAME_MAX];
    snprintf(nm, sizeof nm, "%.*s", (int)name_len, name);
    /* a name clients cannot address (the protocol's rule), or one given twice, is the operator's typo */
    const char *bad =
        !svlm_server_stream_name_ok(nm) ? "may hold only letters, digits, '_', '-' and '.'" : NULL;
    for (int i = 0; i < *n && !bad; i++)
        if (!strcmp(src[i].name, nm)) bad = "is given twice";
    if (bad) {
        if (config)
            fprintf(stderr, "svlm serve: %s: sources.%s: the stream name %s\n", config, nm, bad);
        else
            fprintf(stderr, "svlm serve: --source %s=...: the stream name %s\n", nm, bad);
        return -1;
    }
    snprintf(src[*n].name, sizeof src[*n].name, "%s", nm);
    snprintf(src[*n].uri, sizeof src[*n].uri, "%s", uri);
    src[*n].live = -1;
    src[*n].config = config;
    (*n)++;
    return 0;
}

/* --live / --replay: the kind of the --source given last on the command line (last: its index). */
static int set_source_live(source_arg *src, int last, const char *flag) {
    if (last < 0)
        return fprintf(stderr, "svlm serve: %s applies to the --source before it (--source NAME=URI %s)\n",
                       flag, flag),
               -1;
    if (src[last].live >= 0)
        return fprintf(stderr, "svlm serve: --source %s has --live or --replay already\n", src[last].name),
               -1;
    src[last].live = !strcmp(flag, "--live");
    return 0;
}

/* "sources": {NAME: URI or {"uri": URI, "live": bool}} */
static int config_source(const char *path, const char *name, json_t *v, source_arg *src, int *n_src) {
    const char *uri = json_is_string(v) ? json_string_value(v) : NULL;
    json_t *live = NULL;
    if (json_is_object(v)) {
        const char *key;
        json_t *x;
        json_object_foreach(v, key, x) {
            if (!strcmp(key, "uri") && json_is_string(x))
                uri = json_string_value(x);
            else if (!strcmp(key, "live") && json_is_boolean(x))
                live = x;
            else
                return fprintf(stderr,
                               "svlm serve: %s: sources.%s.%s: unknown key or wrong type (uri: string, "
                               "live: true or false)\n",
                               path, name, key),
                       -1;
        }
    }
    if (!uri)
        return fprintf(stderr,
                       "svlm serve: %s: sources.%s must be a URI string or {\"uri\": URI, \"live\": bool}\n",
                       path, name),
               -1;
    if (add_source(src, n_src, name, strlen(name), uri, path)) return -1;
    if (live) src[*n_src - 1].live = json_is_true(live);
    return 0;
}

/* "stc": {"stc": "on"|"off"|true|false, NAME: number|true|false} (NAME as in --stc-NAME). */
static int config_stc(const char *path, json_t *obj, stream_flags *sf) {
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        char text[64];
        if (json_is_boolean(v))
            snprintf(text, sizeof text, "%s", json_is_true(v) ? "1" : "0");
        else if (json_is_number(v))
            snprintf(text, sizeof text, "%.17g", json_number_value(v));
        else if (json_is_string(v) && !strcmp(key, "stc"))
            snprintf(text, sizeof text, "%.60s", json_string_value(v));
        else
            return fprintf(stderr, "svlm serve: %s: stc.%s must be a number (or on/off for stc.stc)\n", path,
                           key),
                   -1;
        svlm_err err = {0};
        if (svlm_stc_control_set(&sf->stc, key, text, &err))
            return fprintf(stderr, "svlm serve: %s: stc.%s: %s\n", path, key, err.msg), -1;
    }
    return 0;
}

/* Numbers of an object into long long fields: {name, field, lo, hi}. */
typedef struct config_int {
    const char *name;
    long long *p;
    long long lo, hi;
} config_int;
static int config_ints(const char *path, const char *section, const char *key, json_t *v,
                       const config_int *ints, int n, int *known) {
    for (int i = 0; i < n; i++) {
        if (strcmp(key, ints[i].name)) continue;
        *known = 1;
        double x = json_number_value(v);
        if (!json_is_number(v) || x < (double)ints[i].lo || x > (double)ints[i].hi ||
            x != (double)(long long)x)
            return fprintf(stderr, "svlm serve: %s: %s.%s must be an integer from %lld to %lld\n", path,
                           section, key, ints[i].lo, ints[i].hi),
                   -1;
        *ints[i].p = (long long)x;
    }
    return 0;
}

static char config_memory_dir[1024];

/* "memory": {"on": bool, "budget_mib": number, "dir": string, "tokens": integer} */
static int config_memory(const char *path, json_t *obj, stream_flags *sf) {
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        int known = 0;
        config_int ints[] = {{"tokens", &sf->memory_tokens, 1, 1 << 20}};
        if (config_ints(path, "memory", key, v, ints, 1, &known)) return -1;
        if (known) continue;
        if (!strcmp(key, "on") && json_is_boolean(v))
            sf->memory = json_is_true(v);
        else if (!strcmp(key, "budget_mib") && json_is_number(v) && json_number_value(v) >= 0.0625 &&
                 json_number_value(v) <= (double)(1 << 20))
            sf->memory_mib = json_number_value(v);
        else if (!strcmp(key, "dir") && json_is_string(v) &&
                 strlen(json_string_value(v)) < sizeof config_memory_dir) {
            snprintf(config_memory_dir, sizeof config_memory_dir, "%s", json_string_value(v));
            sf->memory_dir = config_memory_dir;
        } else
            return fprintf(stderr,
                           "svlm serve: %s: memory.%s: unknown key or wrong type/range (on: bool, "
                           "budget_mib: 0.0625..1048576, dir: string, tokens: integer)\n",
                           path, key),
                   -1;
    }
    return 0;
}

/* "stream": {"sinks", "frames_window", "text_window", "queue", "answer_threads"} (integers) and
 * "kv" ("f32" or "f16") */
static int config_stream(const char *path, json_t *obj, stream_flags *sf, long long *answer_threads) {
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v) {
        int known = 0;
        config_int ints[] = {{"sinks", &sf->sinks, 16, 1 << 16},
                             {"frames_window", &sf->frames_window, 1, 4096},
                             {"text_window", &sf->text_window, 16, 1 << 20},
                             {"queue", &sf->queue, 1, 1024},
                             {"answer_threads", answer_threads, 1, 1024}};
        if (!strcmp(key, "kv")) {
            const char *t = json_string_value(v);
            if (!t || (strcmp(t, "f32") && strcmp(t, "f16")))
                return fprintf(stderr, "svlm serve: %s: stream.kv must be \"f32\" or \"f16\"\n", path), -1;
            sf->kv = strcmp(t, "f16") ? SVLM_F32 : SVLM_F16;
            sf->kv_given = 1;
            continue;
        }
        if (config_ints(path, "stream", key, v, ints, (int)(sizeof ints / sizeof ints[0]), &known)) return -1;
        if (!known) return fprintf(stderr, "svlm serve: %s: unknown key stream.%s\n", path, key), -1;
    }
    return 0;
}

static int load_config(const char *path, svlm_server_config *cfg, source_arg *src, int *n_src,
                       stream_flags *sf, long long *answer_threads, svlm_engine_backend_opts *eo) {
    struct stat sb; /* a folder read as empty JSON ("'[' or '{' expected"), a FIFO blocked */
    if (stat(path, &sb)) return fprintf(stderr, "svlm serve: --config %s: %s\n", path, strerror(errno)), -1;
    if (!S_ISREG(sb.st_mode)) return fprintf(stderr, "svlm serve: --config %s: not a file\n", path), -1;
    json_error_t jerr;
    json_t *root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return fprintf(stderr, "svlm serve: %s:%d:%d: %s\n", path, jerr.line, jerr.column, jerr.text), -1;
    int rc = 0;
    const char *key;
    json_t *v;
    if (!json_is_object(root)) rc = (fprintf(stderr, "svlm serve: %s: must be a JSON object\n", path), -1);
    json_object_foreach(root, key, v) {
        if (rc) break;
        struct {
            const char *name;
            int is_size;
            void *p;
            double lo, hi;
        } nums[] = {
            {"max_message_bytes", 1, &cfg->max_message_bytes, 1024, 1 << 30},
            {"max_messages_per_s", 0, &cfg->max_messages_per_s, 0.01, 1e6},
            {"max_questions_per_client", 2, &cfg->max_questions_per_client, 1, 1 << 20},
            {"max_questions_total", 2, &cfg->max_questions_total, 1, 1 << 20},
            {"max_watches_per_client", 2, &cfg->max_watches_per_client, 0, 1 << 20},
            {"max_streams", 2, &cfg->max_streams, 1, 4096},
            {"max_clients", 2, &cfg->max_clients, 1, 1 << 20},
            {"max_send_queue_bytes", 1, &cfg->max_send_queue_bytes, 4096, 1 << 30},
            {"status_interval_s", 0, &cfg->status_interval_s, 0, 3600},
            {"auth_timeout_s", 0, &cfg->auth_timeout_s, 1, 3600},
            {"open_timeout_s", 0, &eo->open_timeout_s, 0.1, 3600},
            {"stall_timeout_s", 0, &eo->stall_timeout_s, 0, 3600},
            {"max_answer_tokens", 2, &eo->max_answer_tokens, 1, 4096},
        };
        int known = 0;
        for (size_t i = 0; i < sizeof nums / sizeof nums[0]; i++) {
            if (strcmp(key, nums[i].name)) continue;
            known = 1;
            double x = json_number_value(v);
            if (!json_is_number(v) || x < nums[i].lo || x > nums[i].hi ||
                (nums[i].is_size && x != (double)(long long)x)) {
                rc = (fprintf(stderr, "svlm serve: %s: '%s' must be %s from %.10g to %.10g\n", path, key,
                              nums[i].is_size ? "an integer" : "a number", nums[i].lo, nums[i].hi),
                      -1);
            } else if (nums[i].is_size == 1)
                *(size_t *)nums[i].p = (size_t)x;
            else if (nums[i].is_size == 2)
                *(int *)nums[i].p = (int)x;
            else
                *(double *)nums[i].p = x;
        }
        if (known) continue;
        if (!strcmp(key, "listen") && json_is_string(v))
            rc = parse_listen(json_string_value(v), cfg);
        else if (!strcmp(key, "token_file") && json_is_string(v))
            rc = read_token(json_string_value(v), cfg);
        else if (!strcmp(key, "web") && json_is_string(v))
            snprintf(cfg->web_root, sizeof cfg->web_root, "%s", json_string_value(v));
        else if (!strcmp(key, "allow_local_open") && json_is_boolean(v))
            cfg->local_open = json_is_true(v);
        else if (!strcmp(key, "allowed_origins") && json_is_array(v)) {
            size_t k;
            json_t *o;
            json_array_foreach(v, k, o) {
                if (rc) break;
                rc = json_is_string(o)
                         ? allow_origin(json_string_value(o), cfg)
                         : (fprintf(stderr, "svlm serve: %s: allowed_origins holds strings\n", path), -1);
            }
        } else if (!strcmp(key, "stc") && json_is_object(v))
            rc = config_stc(path, v, sf);
        else if (!strcmp(key, "memory") && json_is_object(v))
            rc = config_memory(path, v, sf);
        else if (!strcmp(key, "stream") && json_is_object(v))
            rc = config_stream(path, v, sf, answer_threads);
        else if (!strcmp(key, "sources") && json_is_object(v)) {
            const char *name;
            json_t *one;
            json_object_foreach(v, name, one) {
                if ((rc = config_source(path, name, one, src, n_src))) break;
            }
        } else
            rc = (fprintf(stderr, "svlm serve: %s: unknown key or wrong type: '%s'\n", path, key), -1);
    }
    json_decref(root);
    return rc;
}

/* The page ships in demos/web of the source tree; look beside the binary's build folder. */
static void default_web_root(svlm_server_config *cfg) {
    char exe[480];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return;
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (slash) *slash = 0;
    const char *rel[] = {"/../demos/web", "/../../demos/web", "/../share/svlm/web"};
    for (size_t i = 0; i < sizeof rel / sizeof rel[0]; i++) {
        char path[1024];
        snprintf(path, sizeof path, "%s%s/index.html", exe, rel[i]);
        if (access(path, R_OK) == 0) {
            snprintf(cfg->web_root, sizeof cfg->web_root, "%s%s", exe, rel[i]);
            return;
        }
    }
}

int cmd_serve(int argc, char **argv) {
    svlm_server_config cfg;
    svlm_server_config_default(&cfg);
    const char *model = NULL, *mmproj = NULL, *cache_dir = NULL;
    static source_arg src[MAX_SOURCES];
    int n_src = 0, demo = 0, last_source = -1; /* last_source: the last --source, for --live */
    svlm_engine_backend_opts eo;
    svlm_engine_backend_opts_default(&eo);
    stream_flags sf;
    stream_flags_default(&sf);
    long long num, answer_threads = eo.answer_threads;
    int sf_rc;
    for (int i = 1; i < argc; i++) {
        const char *v;
        if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "-m") || !strcmp(argv[i], "--model")) {
            if (!(model = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(argv[i], "--mmproj")) {
            if (!(mmproj = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(argv[i], "--demo")) {
            demo = 1;
        } else if (!strcmp(argv[i], "--cache-dir")) {
            if (!(cache_dir = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(argv[i], "--decode-batch")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_int(argv[i - 1], v, 1, 1024, &num)) return 2;
            eo.decode_batch = (int)num;
        } else if (!strcmp(argv[i], "--ingest-batch")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_int(argv[i - 1], v, 1, 64, &num)) return 2;
            eo.ingest_batch = (int)num;
        } else if (!strcmp(argv[i], "--answer-threads")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_int(argv[i - 1], v, 1, 1024, &answer_threads))
                return 2;
        } else if ((sf_rc = stream_flags_parse(&sf, "serve", argc, argv, &i)) != 0) {
            if (sf_rc < 0) return 2;
        } else if (!strcmp(argv[i], "--threads") || !strcmp(argv[i], "-t")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_int(argv[i - 1], v, 1, 1024, &num)) return 2;
            eo.compute_threads = (int)num;
        } else if (!strcmp(argv[i],
                           "--backend")) { /* the engine's lanes make their kernels from SVLM_BACKEND */
            if (!(v = cli_value(argc, argv, &i)) || cli_backend(argv[i - 1], v)) return 2;
            if (setenv("SVLM_BACKEND", v, 1)) {
                fprintf(stderr, "svlm serve: cannot set SVLM_BACKEND\n");
                return 1;
            }
        } else if (!strcmp(argv[i], "--source")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            const char *eq = strchr(v, '=');
            if (!eq) {
                fprintf(stderr, "svlm serve: --source expects NAME=URI, got '%s'\n", v);
                return 2;
            }
            if (add_source(src, &n_src, v, (size_t)(eq - v), eq + 1, NULL)) return 2; /* (it says why) */
            last_source = n_src - 1;
        } else if (!strcmp(argv[i], "--live") || !strcmp(argv[i], "--replay")) {
            if (set_source_live(src, last_source, argv[i])) return 2;
        } else if (!strcmp(argv[i], "--listen")) {
            if (!(v = cli_value(argc, argv, &i)) || parse_listen(v, &cfg)) return 2;
        } else if (!strcmp(argv[i], "--token-file")) {
            if (!(v = cli_value(argc, argv, &i)) || read_token(v, &cfg)) return 2;
        } else if (!strcmp(argv[i], "--config")) {
            if (!(v = cli_value(argc, argv, &i)) ||
                load_config(v, &cfg, src, &n_src, &sf, &answer_threads, &eo))
                return 2;
        } else if (!strcmp(argv[i], "--open-timeout")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_float(argv[i - 1], v, 0.1, 3600, &eo.open_timeout_s))
                return 2;
        } else if (!strcmp(argv[i], "--stall-timeout")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_float(argv[i - 1], v, 0, 3600, &eo.stall_timeout_s))
                return 2;
        } else if (!strcmp(argv[i], "--max-answer-tokens")) {
            long long n;
            if (!(v = cli_value(argc, argv, &i)) || cli_int(argv[i - 1], v, 1, 4096, &n)) return 2;
            eo.max_answer_tokens = (int)n;
        } else if (!strcmp(argv[i], "--allow-local-open")) {
            cfg.local_open = 1;
        } else if (!strcmp(argv[i], "--allow-origin")) {
            if (!(v = cli_value(argc, argv, &i)) || allow_origin(v, &cfg)) return 2;
        } else if (!strcmp(argv[i], "--web")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            snprintf(cfg.web_root, sizeof cfg.web_root, "%s", v);
        } else {
            fprintf(stderr, "svlm serve: unknown option %s (svlm serve --help lists them)\n", argv[i]);
            return 2;
        }
    }
    if (stream_flags_check(&sf, "serve")) return 2;
    eo.answer_threads = (int)answer_threads;
    eo.frames_window = (int)sf.frames_window;
    eo.text_window = (int)sf.text_window;
    eo.sink_tokens = (int)sf.sinks;
    eo.frame_queue = (int)sf.queue;
    eo.kv_type = sf.kv;
    eo.kv_auto = !sf.kv_given;
    eo.stc = sf.stc;
    eo.memory = sf.memory;
    eo.memory_budget = (size_t)(sf.memory_mib * 1048576.0);
    eo.memory_dir = sf.memory_dir;
    eo.memory_tokens = (int)sf.memory_tokens;
    static char demo_text[1024], demo_mmproj[1024];
    if (demo && (model || mmproj)) {
        fprintf(stderr, "svlm serve: --demo brings its own model: leave out -m and --mmproj\n");
        return 2;
    }
    if (!demo && (!model || !mmproj)) {
        /* (not the 60 lines of --help after it: the one line that says what is wrong would scroll away) */
        fprintf(stderr, "svlm serve: -m TEXT_GGUF and --mmproj MMPROJ_GGUF are required, or --demo for a "
                        "generated stand-in model (svlm serve --help lists every option)\n");
        return 2;
    }
    if (!demo) {
        const char *files[] = {model, mmproj};
        for (int i = 0; i < 2; i++)
            if (access(files[i], R_OK)) {
                fprintf(stderr, "svlm serve: cannot read %s\n", files[i]);
                return 1;
            }
    }
    { /* before the slow part, loading models: the address resolved and bound once */
        char addr[64];
        svlm_err lerr = {0};
        if (svlm_server_listen_address(cfg.host, cfg.port, addr, sizeof addr, &lerr) != SVLM_OK) {
            fprintf(stderr, "svlm serve: %s\n", lerr.msg);
            return 1;
        }
        if (!svlm_host_is_loopback(addr) && !cfg.token[0]) { /* (what the name resolves to decides) */
            fprintf(stderr, "svlm serve: listening on %s needs a token (--token-file)\n", cfg.host);
            return 2;
        }
    }
    if (cfg.web_root[0]) { /* a folder given (--web, "web"): it must hold the page */
        char index[sizeof cfg.web_root + 16];
        snprintf(index, sizeof index, "%s/index.html", cfg.web_root);
        if (access(index, R_OK)) {
            fprintf(stderr,
                    "svlm serve: the page's folder %s has no readable index.html (--web DIR takes the "
                    "folder of demos/web)\n",
                    cfg.web_root);
            return 2;
        }
    } else {
        default_web_root(&cfg);
    }
    if (demo) {
        if (serve_demo_models(cache_dir, demo_text, sizeof demo_text, demo_mmproj, sizeof demo_mmproj))
            return 1;
        model = demo_text, mmproj = demo_mmproj;
        eo.model_label = "svlm-demo (random-weight tiny SmolVLM2)";
        eo.stand_in = 1;
        if (!n_src) add_source(src, &n_src, "demo", 4, DEMO_SOURCE, NULL);
    }

    svlm_err err = {0};
    svlm_server_backend be;
    svlm_engine_backend *eb = NULL;
    eo.text_path = model;
    eo.mmproj_path = mmproj;
    eo.max_streams = cfg.max_streams;
    if (svlm_engine_backend_create(&eo, &eb, &be, &err)) {
        fprintf(stderr, "svlm serve: %s\n", err.msg);
        return 1;
    }
    for (int i = 0; i < n_src; i++) {
        /* the websocket open's own option (pipeline/server/engine_options.c) */
        const char *options = src[i].live < 0 ? NULL : src[i].live ? "{\"live\":true}" : "{\"live\":false}";
        svlm_backend_open_req req = {src[i].name, src[i].uri, 0, options};
        /* a camera that is down at start is retried as when it drops later; a recording fails */
        svlm_err down = {0};
        const svlm_status st = svlm_engine_backend_open_start(eb, &req, &down, &err);
        if (st == SVLM_OK && down.status == SVLM_OK) continue;
        char shown[sizeof src[i].uri];
        svlm_uri_redact_source(src[i].uri, shown, sizeof shown); /* no password in a message */
        redact_uri_in(down.msg, sizeof down.msg, src[i].uri, shown);
        redact_uri_in(err.msg, sizeof err.msg, src[i].uri, shown);
        if (src[i].config)
            fprintf(stderr, "svlm serve: %s: sources.%s (%s): ", src[i].config, src[i].name, shown);
        else
            fprintf(stderr, "svlm serve: --source %s=%s: ", src[i].name, shown);
        if (st == SVLM_OK) {
            fprintf(stderr, "%s: the stream is reconnecting (retries with backoff)\n", down.msg);
            continue;
        }
        fprintf(stderr, "%s\n", err.msg);
        svlm_engine_backend_destroy(eb);
        return 1;
    }
    svlm_server *srv = NULL;
    if (svlm_server_create(&srv, &cfg, &be, &err) != SVLM_OK) {
        fprintf(stderr, "svlm serve: %s\n", err.msg);
        svlm_engine_backend_destroy(eb);
        return 1;
    }
    if (cfg.web_root[0])
        fprintf(stderr, "svlm serve: the page is at http://%s:%d/ (websocket ws://%s:%d/v1/ws)\n", cfg.host,
                svlm_server_port(srv), cfg.host, svlm_server_port(srv));
    else /* (an installed binary without the source tree's demos/web) */
        fprintf(stderr,
                "svlm serve: listening at http://%s:%d/ (websocket ws://%s:%d/v1/ws); no page: demos/web "
                "was not found beside the binary, --web DIR names it\n",
                cfg.host, svlm_server_port(srv), cfg.host, svlm_server_port(srv));
    if (demo)
        fprintf(stderr,
                "svlm serve: demo mode: the model is a random-weight stand-in, its answers are noise; "
                "see the README for real SmolVLM2 files\n");
    running = srv;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    svlm_status st = svlm_server_run(srv, &err);
    running = NULL;
    /* an open of a URL that never answers would hold the server's shutdown for its open timeout */
    svlm_engine_backend_shutdown(eb);
    svlm_server_destroy(srv);
    svlm_engine_backend_destroy(eb);
    return st == SVLM_OK ? 0 : 1;
}
#endif
