/* Small helpers of the server: message queues, token checks, names, status JSON. */
#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "pipeline/server/server_internal.h"
#include "pipeline/source_backend.h"

double srv_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

srv_msg *srv_msg_new(const void *data, size_t len) {
    srv_msg *m = malloc(sizeof *m + LWS_PRE + len + 1);
    if (!m) return NULL;
    m->next = NULL;
    m->len = len;
    if (len) memcpy(m->buf + LWS_PRE, data, len);
    m->buf[LWS_PRE + len] = 0;
    return m;
}

void srv_queue_push(srv_queue *q, srv_msg *m) {
    m->next = NULL;
    if (q->tail)
        q->tail->next = m;
    else
        q->head = m;
    q->tail = m;
    q->bytes += m->len;
}

srv_msg *srv_queue_pop(srv_queue *q) {
    srv_msg *m = q->head;
    if (!m) return NULL;
    q->head = m->next;
    if (!q->head) q->tail = NULL;
    q->bytes -= m->len;
    return m;
}

void srv_queue_clear(srv_queue *q) {
    srv_msg *m;
    while ((m = srv_queue_pop(q)))
        free(m);
}

/* Compares every byte whatever the contents, so the time taken says nothing about where a
 * guess went wrong; the length difference is folded in the same way. */
int svlm_token_equal(const char *expected, const char *presented, size_t presented_len) {
    size_t n = strlen(expected);
    unsigned diff = (unsigned)(n != presented_len);
    for (size_t i = 0; i < presented_len; i++) {
        unsigned char e = n ? (unsigned char)expected[i % n] : 0;
        diff |= (unsigned)(e ^ (unsigned char)presented[i]);
    }
    return n > 0 && diff == 0;
}

int svlm_host_is_loopback(const char *host) {
    if (!strcasecmp(host, "localhost") || !strcmp(host, "::1") || !strcmp(host, "[::1]")) return 1;
    /* 127.b.c.d in plain decimal (sscanf's %u took signs, spaces and leading zeros: "127.0.0.+1",
     * which a browser reads as a name) */
    const char *p = host;
    for (int part = 0; part < 4; part++) {
        const size_t n = strspn(p, "0123456789");
        if (n == 0 || n > 3 || (n > 1 && *p == '0') || atoi(p) > 255 || (part == 0 && atoi(p) != 127))
            return 0;
        p += n;
        if (part < 3 && *p++ != '.') return 0;
    }
    return *p == 0;
}

/* Makes s valid UTF-8 in place: jansson refuses a string that is not, and a reply built with it
 * lost its text (an error without its message, or an HTTP error not sent at all). A sequence
 * that a byte limit cut short at the end is dropped; any other invalid byte becomes '?'. */
void srv_utf8_fix(char *s) {
    size_t n = strlen(s), i = 0;
    while (i < n) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80 ? 1 : c < 0xC2 ? 0 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : c < 0xF5 ? 4 : 0, k = 1;
        while (len && k < len && i + k < n && ((unsigned char)s[i + k] & 0xC0) == 0x80)
            k++;
        if (len && k == len) {
            const unsigned char *b = (const unsigned char *)s + i;
            unsigned cp = len == 3   ? (b[0] & 0x0Fu) << 12 | (b[1] & 0x3Fu) << 6 | (b[2] & 0x3Fu)
                          : len == 4 ? (b[0] & 0x07u) << 18 | (b[1] & 0x3Fu) << 12 | (b[2] & 0x3Fu) << 6 |
                                           (b[3] & 0x3Fu)
                                     : 0;
            int ok = len < 3 || (len == 3 ? cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF)
                                          : cp >= 0x10000 && cp <= 0x10FFFF);
            if (ok) {
                i += len;
                continue;
            }
        } else if (len && i + k == n) {
            s[i] = 0; /* cut short at the end */
            return;
        }
        s[i++] = '?';
    }
}

int srv_stream_name_ok(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n >= SVLM_BACKEND_NAME_MAX) return 0;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '-' && s[i] != '.') return 0;
    return 1;
}

int svlm_server_stream_name_ok(const char *name) {
    return srv_stream_name_ok(name);
}

int srv_presented_token(struct lws *wsi, char *buf, size_t cap) {
    /* lws 4.1 leaves "token=VALUE" in buf and returns where VALUE starts. */
    const char *v = lws_get_urlarg_by_name(wsi, "token=", buf, (int)cap);
    if (v) {
        memmove(buf, v, strlen(v) + 1);
        return 1;
    }
    char auth[320];
    /* the scheme's name is case-insensitive (RFC 9110): "bearer x" is the same */
    if (lws_hdr_copy(wsi, auth, sizeof auth, WSI_TOKEN_HTTP_AUTHORIZATION) > 0 &&
        !strncasecmp(auth, "Bearer", 6) && (auth[6] == ' ' || auth[6] == '\t')) {
        snprintf(buf, cap, "%s", auth + 6 + strspn(auth + 6, " \t"));
        return 1;
    }
    return 0;
}

int srv_authorized(svlm_server *srv, struct lws *wsi) {
    if (!srv->cfg.token[0]) return 1;
    char tok[320];
    if (!srv_presented_token(wsi, tok, sizeof tok)) return 0;
    return svlm_token_equal(srv->cfg.token, tok, strlen(tok));
}

json_t *srv_status_json(const svlm_backend_stream_status *st) {
    /* a camera's password stays with the server: every client, the page included, lists streams */
    char uri[sizeof st->uri + 16]; /* ("a@" becomes "***@"); a cut inside a character: not JSON */
    svlm_uri_redact_source(st->uri, uri, sizeof uri);
    srv_utf8_fix(uri);
    json_t *mem = json_object();
    int64_t total = 0;
    for (int k = 0; k < st->n_tiers && k < SVLM_BACKEND_MAX_TIERS; k++) {
        json_object_set_new(mem, st->tiers[k].name, json_integer(st->tiers[k].bytes));
        total += st->tiers[k].bytes;
    }
    double n = st->frames_in > 0 ? (double)st->frames_in : 1.0;
    json_t *o = json_pack("{s:s, s:s, s:s, s:b, s:f, s:I, s:I, s:I, s:f, s:f, s:f, s:o, s:I}", "stream",
                          st->name, "uri", uri, "state", st->state, "live", st->live, "fps_in", st->fps_in,
                          "frames_in", (json_int_t)st->frames_in, "drops", (json_int_t)st->drops,
                          "reconnects", (json_int_t)st->reconnects, "video_time", st->video_time,
                          "encoder_ms", st->encoder_ms_sum / n, "prefill_ms", st->prefill_ms_sum / n,
                          "memory", mem, "memory_total", (json_int_t)total);
    if (o && st->kv_type[0]) json_object_set_new(o, "kv_type", json_string(st->kv_type));
    if (o && st->reason[0]) {
        char reason[sizeof st->reason];
        svlm_uri_redact(st->reason, reason, sizeof reason); /* (a backend's words may quote the URI) */
        srv_utf8_fix(reason);
        json_object_set_new(o, "reason", json_string(reason));
    }
    return o;
}
