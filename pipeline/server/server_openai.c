/*
 * POST /v1/chat/completions, compatible with the OpenAI chat API: the stream to ask about is
 * the `model` (or the extra field `svlm_stream`); image_url parts (data: URLs) are answered
 * as still images; `stream: true` answers as server-sent events.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "llm/unicode.h"
#include "pipeline/server/server_internal.h"

#define MAX_IMAGES 4

typedef struct chat_req {
    char question[8192 + 1]; /* as the websocket's ask: up to 8192 bytes */
    size_t qlen;
    svlm_backend_image images[MAX_IMAGES];
    char mimes[MAX_IMAGES][32];
    int n_images;
    int too_long; /* the question passed its limit */
} chat_req;

static void chat_req_free(chat_req *r) {
    for (int i = 0; i < r->n_images; i++)
        free((void *)r->images[i].data);
}

/* Joins a text part to the question; an error message when it would pass the websocket's limit
 * (cut there, the engine would answer another question, maybe ending inside a character). */
static const char *add_text(chat_req *r, const char *s) {
    const size_t n = strlen(s), sep = r->qlen > 0;
    if (r->qlen + sep + n >= sizeof r->question) {
        r->too_long = 1;
        return "the question (the last user message's text) may have at most 8192 bytes";
    }
    if (sep) r->question[r->qlen++] = '\n';
    memcpy(r->question + r->qlen, s, n);
    r->qlen += n;
    r->question[r->qlen] = 0;
    return NULL;
}

/* "data:image/png;base64,...." → bytes. Returns an error message or NULL. */
static const char *add_image(chat_req *r, const char *url) {
    if (r->n_images >= MAX_IMAGES) return "at most 4 images per request";
    if (strncmp(url, "data:", 5)) return "image_url must be a data: URL (this server fetches nothing)";
    const char *comma = strchr(url, ',');
    const char *b64 = comma ? strstr(url, ";base64,") : NULL;
    if (!comma || b64 != comma - 7) return "image_url data: URLs must be base64";
    size_t mime_len = (size_t)(b64 - (url + 5));
    svlm_backend_image *im = &r->images[r->n_images];
    snprintf(r->mimes[r->n_images], sizeof r->mimes[0], "%.*s", (int)(mime_len < 31 ? mime_len : 31),
             url + 5);
    size_t in_len = strlen(comma + 1);
    char *out = malloc(in_len / 4 * 3 + 8);
    if (!out) return "out of memory";
    int n = lws_b64_decode_string(comma + 1, out, (int)(in_len / 4 * 3 + 8));
    if (n <= 0) {
        free(out);
        return "image_url has invalid base64";
    }
    im->data = (const uint8_t *)out;
    im->size = (size_t)n;
    im->mime = r->mimes[r->n_images];
    r->n_images++;
    return NULL;
}

/* The question is the last user message: its text parts joined, its images kept. */
static const char *parse_messages(json_t *messages, chat_req *r) {
    if (!json_is_array(messages) || json_array_size(messages) == 0)
        return "'messages' must be a non-empty array";
    json_t *last = NULL;
    size_t i;
    json_t *m;
    json_array_foreach(messages, i, m) {
        if (!json_is_object(m)) return "each message must be an object";
        json_t *role = json_object_get(m, "role");
        if (!json_is_string(role)) return "each message needs a string 'role'";
        if (!strcmp(json_string_value(role), "user")) last = m;
    }
    if (!last) return "no message with role 'user'";
    json_t *content = json_object_get(last, "content");
    if (json_is_string(content)) return add_text(r, json_string_value(content));
    if (!json_is_array(content)) return "'content' must be a string or an array of parts";
    json_t *part;
    json_array_foreach(content, i, part) {
        json_t *type = json_object_get(part, "type");
        if (!json_is_string(type)) return "each content part needs a string 'type'";
        const char *t = json_string_value(type);
        if (!strcmp(t, "text")) {
            json_t *text = json_object_get(part, "text");
            if (!json_is_string(text)) return "a text part needs a string 'text'";
            const char *e = add_text(r, json_string_value(text));
            if (e) return e;
        } else if (!strcmp(t, "image_url")) {
            json_t *iu = json_object_get(part, "image_url");
            json_t *url = json_is_object(iu) ? json_object_get(iu, "url") : iu;
            if (!json_is_string(url)) return "an image_url part needs a string 'url'";
            const char *e = add_image(r, json_string_value(url));
            if (e) return e;
        } else {
            return "content parts must be 'text' or 'image_url'";
        }
    }
    /* no text (an image alone, or []) is an empty question, as content "" is: the engine answers
     * it as it does any other (about the images, or the stream as it is now) */
    return NULL;
}

/* `svlm_stream`, else `model` when it names a stream, else the only stream there is. */
static int pick_stream(svlm_server *srv, json_t *body, int has_images, char *out, size_t cap) {
    svlm_backend_stream_status st;
    svlm_err err;
    json_t *extra = json_object_get(body, "svlm_stream"), *model = json_object_get(body, "model");
    const char *want = json_is_string(extra) ? json_string_value(extra) : NULL;
    if (want) {
        snprintf(out, cap, "%s", want);
        return srv->be.stream_status(srv->be.ctx, want, &st, &err) == SVLM_OK;
    }
    if (json_is_string(model) &&
        srv->be.stream_status(srv->be.ctx, json_string_value(model), &st, &err) == SVLM_OK) {
        snprintf(out, cap, "%s", json_string_value(model));
        return 1;
    }
    out[0] = 0;
    if (has_images) return 1;
    svlm_backend_stream_status one;
    if (srv->be.list_streams(srv->be.ctx, &one, 1) == 1) {
        snprintf(out, cap, "%s", one.name);
        return 1;
    }
    return 0;
}

/* Drops a UTF-8 sequence that a byte limit cut short at the end of s (JSON strings must be valid
 * UTF-8: jansson refuses the whole reply otherwise). */
static void trim_cut_utf8(char *s) {
    size_t n = strlen(s), start = n;
    while (start > 0 && n - start < 4 && ((unsigned char)s[start - 1] & 0xC0) == 0x80)
        start--; /* back over continuation bytes to the lead byte */
    if (start == 0) return;
    if (start - 1 + svlm_utf8_lead_len((unsigned char)s[start - 1]) > n) s[start - 1] = 0;
}

/* One server-sent event, "data: TEXT". */
static void sse_line(srv_conn *c, const char *text) {
    const size_t n = strlen(text);
    char *line = malloc(n + 16);
    if (line) {
        int len = snprintf(line, n + 16, "data: %s\n\n", text);
        srv_msg *m = srv_msg_new(line, (size_t)len);
        if (m) srv_queue_push(&c->out, m);
    }
    free(line);
    lws_callback_on_writable(c->wsi);
}

/* An event with obj (taken); NULL (a chunk that could not be built, out of memory) sends nothing:
 * it must not read as the end, which only sse_end says. */
static void sse_push(srv_conn *c, json_t *obj) {
    char *text = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (text) sse_line(c, text);
    free(text);
}

static void sse_end(srv_conn *c) {
    sse_line(c, "[DONE]");
}

static json_t *chunk(srv_conn *c, json_t *delta, const char *finish) {
    char id[48];
    snprintf(id, sizeof id, "chatcmpl-%llu", (unsigned long long)c->serial);
    return json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:o, s:o}]}", "id", id, "object", "chat.completion.chunk",
                     "created", (json_int_t)c->ask_created, "model", c->ask_model, "choices", "index", 0,
                     "delta", delta, "finish_reason", finish ? json_string(finish) : json_null());
}

void srv_openai_reset(srv_conn *c) {
    for (int i = 0; i < c->n_stop; i++)
        free(c->stop[i]);
    c->n_stop = 0;
    c->stop_max = c->stop_from = c->sent = 0;
}

#define STOP_MAX_BYTES 256

/* `stop`: null, a string or an array of up to 4 strings (none empty). An error message or NULL. */
static const char *parse_stop(json_t *stop, srv_conn *c) {
    if (!stop || json_is_null(stop)) return NULL;
    const char *bad = "'stop' must be a string or an array of up to 4 non-empty strings";
    const size_t n = json_is_array(stop) ? json_array_size(stop) : 1;
    if (n > 4) return bad;
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_is_array(stop) ? json_array_get(stop, i) : stop;
        if (!json_is_string(s) || json_string_length(s) == 0) return bad;
        if (json_string_length(s) > STOP_MAX_BYTES) return "'stop' strings may have at most 256 bytes";
        if (strlen(json_string_value(s)) != json_string_length(s)) return "'stop' strings may not hold NUL";
        if (!(c->stop[c->n_stop] = strdup(json_string_value(s)))) return "out of memory";
        if (json_string_length(s) > c->stop_max) c->stop_max = json_string_length(s);
        c->n_stop++;
    }
    return NULL;
}

/* The parameter an error message is about: the name it starts with ('max_tokens' must ...). */
static const char *param_of(const char *e, char *buf, size_t cap) {
    const char *q = e[0] == '\'' ? strchr(e + 1, '\'') : NULL;
    if (!q || (size_t)(q - e) > cap) return NULL;
    snprintf(buf, cap, "%.*s", (int)(q - e - 1), e + 1);
    return buf;
}

int srv_openai_chat(svlm_server *srv, srv_conn *c) {
    json_error_t jerr;
    json_t *body = json_loadb(c->body ? c->body : "", c->body_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!body) {
        char msg[300];
        snprintf(msg, sizeof msg, "invalid JSON at line %d column %d: %s", jerr.line, jerr.column, jerr.text);
        return srv_http_error(c, 400, "bad_json", msg);
    }
    int rc;
    chat_req *r = calloc(1, sizeof *r);
    const char *e = r ? NULL : "out of memory";
    json_t *stream = json_object_get(body, "stream"), *mt = json_object_get(body, "max_tokens");
    json_t *temp = json_object_get(body, "temperature"), *top_p = json_object_get(body, "top_p"),
           *seed = json_object_get(body, "seed");
    const char *mt_name = "max_tokens";
    if (!mt || json_is_null(mt)) { /* clients send "max_tokens": null beside the newer name */
        mt = json_object_get(body, "max_completion_tokens");
        mt_name = "max_completion_tokens";
    }
    json_t *n = json_object_get(body, "n"), *opts = json_object_get(body, "stream_options");
    char mt_bad[80], param_buf[40];
    snprintf(mt_bad, sizeof mt_bad, "'%s' must be an integer from 1 to 4096", mt_name);
    if (!e && !json_is_object(body)) e = "the body must be a JSON object";
    if (!e && stream && !json_is_boolean(stream) && !json_is_null(stream)) e = "'stream' must be a boolean";
    if (!e && mt && !json_is_null(mt) &&
        (!json_is_integer(mt) || json_integer_value(mt) < 1 || json_integer_value(mt) > 4096))
        e = mt_bad;
    if (!e && temp && !json_is_null(temp) &&
        (!json_is_number(temp) || !(json_number_value(temp) >= 0 && json_number_value(temp) <= 2)))
        e = "'temperature' must be a number from 0 to 2";
    if (!e && top_p && !json_is_null(top_p) &&
        (!json_is_number(top_p) || !(json_number_value(top_p) >= 0 && json_number_value(top_p) <= 1)))
        e = "'top_p' must be a number from 0 to 1";
    if (!e && seed && !json_is_null(seed) && !(json_is_integer(seed) && json_integer_value(seed) >= 0))
        e = "'seed' must be an integer from 0"; /* as the websocket's */
    json_t *model = json_object_get(body, "model");
    if (!e && model && !json_is_null(model) && !json_is_string(model)) e = "'model' must be a string";
    /* one answer per request: n > 1 would be billed for choices that never come */
    if (!e && n && !json_is_null(n) && !(json_is_integer(n) && json_integer_value(n) == 1))
        e = "'n': only n=1 is supported";
    if (!e && opts && !json_is_null(opts) && !json_is_object(opts)) e = "'stream_options' must be an object";
    if (!e) e = parse_stop(json_object_get(body, "stop"), c);
    const char *param = e ? param_of(e, param_buf, sizeof param_buf) : NULL;
    if (!e && (e = parse_messages(json_object_get(body, "messages"), r))) param = "messages";
    if (e) {
        rc = srv_http_error_param(c, 400, r && r->too_long ? "context_length_exceeded" : "bad_request", e,
                                  param);
        goto out;
    }
    char name[SVLM_BACKEND_NAME_MAX];
    if (!pick_stream(srv, body, r->n_images > 0, name, sizeof name)) {
        rc = srv_http_error_param(
            c, 404, "unknown_stream",
            "name an open stream in 'model' (or 'svlm_stream'); GET /v1/models lists them",
            json_object_get(body, "svlm_stream") ? "svlm_stream" : "model");
        goto out;
    }
    if (srv->n_asks >= srv->cfg.max_questions_total) {
        rc = srv_http_error(c, 429, "rate_limit_exceeded",
                            "the server is answering as many questions as it may");
        goto out;
    }
    snprintf(c->ask_model, sizeof c->ask_model, "%s",
             name[0]                 ? name
             : json_is_string(model) ? json_string_value(model)
                                     : "svlm");
    trim_cut_utf8(c->ask_model);
    c->ask_stream_flag = json_is_true(stream);
    c->ask_max_tokens = mt && json_is_integer(mt) ? (int)json_integer_value(mt) : 256;
    c->ask_usage = json_is_object(opts) && json_is_true(json_object_get(opts, "include_usage"));
    c->ask_images = r->n_images > 0;
    c->ask_created = (long long)time(NULL);
    svlm_backend_ask_req req = {
        .stream = name[0] ? name : NULL,
        .question = r->question,
        .max_tokens = c->ask_max_tokens,
        .temperature = temp && json_is_number(temp) ? (float)json_number_value(temp) : 0.0f,
        .n_images = r->n_images,
        .images = r->images,
        .top_p = top_p && json_is_number(top_p) ? (float)json_number_value(top_p) : 1.0f,
        .has_seed = seed && json_is_integer(seed),
        .seed = seed && json_is_integer(seed) ? (uint64_t)json_integer_value(seed) : 0}; /* (any integer) */
    const char *code = NULL;
    svlm_err err = {0};
    c->ask = srv_ask_start(srv, c, &req, "", &code, &err);
    if (!c->ask) {
        const char *msg = err.msg[0] ? err.msg : "the engine refused the question";
        if (!strcmp(code, "question_too_long")) /* not worth a retry, unlike a 429 */
            rc = srv_http_error_param(c, 400, "context_length_exceeded", msg, "messages");
        else if (!strcmp(code, "server_busy"))
            rc = srv_http_error(c, 429, "rate_limit_exceeded", msg);
        else
            rc = srv_http_error(c, !strcmp(code, "bad_request") ? 400 : 503, code, msg);
        goto out;
    }
    rc = 0;
    if (c->ask_stream_flag) {
        unsigned char hdr[LWS_PRE + 1536], *start = hdr + LWS_PRE, *p = start, *end = hdr + sizeof hdr - 1;
        if (srv_http_head(c, 200, "text/event-stream", LWS_ILLEGAL_HTTP_CONTENT_LEN, start, &p, end) ||
            lws_add_http_header_by_name(c->wsi, (const unsigned char *)"cache-control:",
                                        (const unsigned char *)"no-cache", 8, &p, end) ||
            lws_finalize_write_http_header(c->wsi, start, &p, end)) {
            rc = -1;
            goto out;
        }
        c->sse = 1;
        sse_push(c, chunk(c, json_pack("{s:s, s:s}", "role", "assistant", "content", ""), NULL));
    }
out:
    if (r) chat_req_free(r);
    free(r);
    json_decref(body);
    return rc;
}

/* A stop string in the answer text: the text ends before the first one (the rest of the answer is
 * cancelled; its done finishes it with "stop"). The search goes on where a stop string could
 * still end that the last search could not see whole. */
static void find_stop(svlm_server *srv, srv_conn *c, srv_ask *a) {
    for (size_t i = c->stop_from; i < a->text_len; i++)
        for (int k = 0; k < c->n_stop; k++) {
            const size_t n = strlen(c->stop[k]);
            if (n <= a->text_len - i && !memcmp(a->text + i, c->stop[k], n)) {
                a->text_len = i;
                a->text[i] = 0;
                a->stopped = 1;
                srv_ask_cancel(srv, a);
                return;
            }
        }
    c->stop_from = a->text_len >= c->stop_max ? a->text_len - c->stop_max + 1 : 0;
}

/* The length of the longest end of text[0, len) that begins a stop string (a whole one was cut
 * already): the bytes before it can start none, whatever comes next. */
static size_t stop_tail(const srv_conn *c, const char *text, size_t len) {
    size_t held = 0;
    for (int k = 0; k < c->n_stop; k++) {
        const size_t n = strlen(c->stop[k]);
        for (size_t t = (n - 1 < len ? n - 1 : len); t > held; t--)
            if (!memcmp(text + len - t, c->stop[k], t)) {
                held = t;
                break;
            }
    }
    return held;
}

/* Sends the answer text not sent yet, but for a tail that may be the start of a stop string
 * (all of it once the answer is finished). */
static void sse_text(srv_conn *c, srv_ask *a, int finished) {
    size_t end = a->text_len;
    if (!finished && !a->stopped && c->n_stop) end -= stop_tail(c, a->text, end);
    while (end > c->sent && end < a->text_len && ((unsigned char)a->text[end] & 0xC0) == 0x80)
        end--; /* whole characters only */
    if (end <= c->sent) return;
    json_t *ch = chunk(c, json_pack("{s:s%}", "content", a->text + c->sent, end - c->sent), NULL);
    if (!ch) return; /* out of memory: these bytes go with the next chunk */
    sse_push(c, ch);
    c->sent = end;
}

void srv_openai_token(svlm_server *srv, srv_conn *c, srv_ask *ask) {
    if (c->n_stop && !ask->stopped && ask->text) find_stop(srv, c, ask);
    if (c->sse) sse_text(c, ask, 0);
}

void srv_openai_done(srv_conn *c, srv_ask *ask, const svlm_backend_done *d) {
    /* "length" for any token limit: the asked one, or one the engine put in its place (its longest
     * answer, the room left in the context), which it reports */
    const int limit =
        d->max_tokens > 0 && d->max_tokens < c->ask_max_tokens ? d->max_tokens : c->ask_max_tokens;
    const char *finish = !ask->stopped && d->completion_tokens >= limit ? "length" : "stop";
    json_t *usage = json_pack("{s:i, s:i, s:i}", "prompt_tokens", d->prompt_tokens, "completion_tokens",
                              d->completion_tokens, "total_tokens", d->prompt_tokens + d->completion_tokens);
    /* An answer cancelled here was cut short by its stream's close or the server's stop (a client
     * that left reads nothing): said as an error, not as a finished answer ("stop"); one that a
     * stop string ended was cancelled by the server, and is finished */
    int failed = !ask->stopped && (d->status != SVLM_OK || d->cancelled);
    const char *code = d->cancelled ? "answer_cancelled" : srv_fail_code(d, c->ask_images);
    int status = d->cancelled ? 503 : 500;
    const char *param = NULL;
    if (!d->cancelled && !strcmp(code, "question_too_long")) { /* the question's fault: not retried */
        code = "context_length_exceeded", status = 400, param = "messages";
    } else if (!d->cancelled && !strcmp(code, "invalid_image")) {
        status = 400, param = "messages";
    }
    char why[sizeof d->error + 64];
    if (d->cancelled)
        snprintf(why, sizeof why,
                 "the answer was cut short after %d tokens: its stream was closed or the "
                 "server is stopping",
                 d->completion_tokens);
    else if (!strcmp(code, "invalid_image"))
        snprintf(why, sizeof why, "an image_url could not be read as an image (%s)", d->error);
    else
        snprintf(why, sizeof why, "%s", d->error[0] ? d->error : svlm_status_str(d->status));
    srv_utf8_fix(why); /* cut at a byte limit: json_pack would fail, and the event be lost */
    if (c->sse) {
        if (failed) {
            sse_push(c, json_pack("{s:{s:s, s:s, s:o, s:s}}", "error", "message", why, "type",
                                  status >= 500 ? "server_error" : "invalid_request_error", "param",
                                  param ? json_string(param) : json_null(), "code", code));
            json_decref(usage);
        } else {
            sse_text(c, ask, 1);
            sse_push(c, chunk(c, json_object(), finish));
            if (c->ask_usage) { /* OpenAI's form: a chunk of its own, with no choices */
                json_t *last = chunk(c, json_object(), NULL);
                json_object_set_new(last, "choices", json_array());
                json_object_set_new(last, "usage", usage);
                sse_push(c, last);
            } else {
                json_decref(usage);
            }
        }
        sse_end(c);
        c->sse_done = 1;
        return;
    }
    if (failed) {
        json_decref(usage);
        srv_http_error_param(c, status, code, why, param);
        return;
    }
    char id[48];
    snprintf(id, sizeof id, "chatcmpl-%llu", (unsigned long long)c->serial);
    json_t *resp =
        json_pack("{s:s, s:s, s:I, s:s, s:[{s:i, s:{s:s, s:s%}, s:s}], s:o}", "id", id, "object",
                  "chat.completion", "created", (json_int_t)c->ask_created, "model", c->ask_model, "choices",
                  "index", 0, "message", "role", "assistant", "content", ask->text ? ask->text : "",
                  ask->text_len, "finish_reason", finish, "usage", usage);
    if (srv_http_respond_json(c, 200, resp))
        lws_set_timeout(c->wsi, PENDING_TIMEOUT_CLOSE_SEND, LWS_TO_KILL_ASYNC);
}
