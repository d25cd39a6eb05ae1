/* URI parsing and the choice of backend per scheme. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "common/err.h"
#include "pipeline/source_backend.h"

static int has_prefix(const char *s, const char *p) {
    return strncasecmp(s, p, strlen(p)) == 0;
}

static svlm_status set_target(svlm_uri *out, svlm_uri_kind kind, const char *target, const char *uri,
                              svlm_err *err) {
    if (!*target) return svlm_fail(err, SVLM_E_INVALID, "source '%s' names nothing after its scheme", uri);
    if (strlen(target) >= sizeof out->target) return svlm_fail(err, SVLM_E_INVALID, "source URI is too long");
    out->kind = kind;
    strcpy(out->target, target);
    return SVLM_OK;
}

/* Whether a network URI names a host: its authority (after "://", before the path), less any
 * user:password@, is not empty and does not start with the port. */
static int names_host(const char *uri) {
    const char *a = strstr(uri, "://") + 3;
    size_t n = strcspn(a, "/?#");
    for (size_t i = n; i > 0; i--)
        if (a[i - 1] == '@') {
            a += i;
            n -= i;
            break;
        }
    return n > 0 && a[0] != ':';
}

svlm_status svlm_uri_parse(const char *uri, svlm_uri *out, svlm_err *err) {
    memset(out, 0, sizeof *out);
    if (!uri || !*uri) return svlm_fail(err, SVLM_E_INVALID, "empty source URI");
    const int net = has_prefix(uri, "rtsp://") || has_prefix(uri, "rtsps://") || has_prefix(uri, "http://") ||
                    has_prefix(uri, "https://");
    if (net && !names_host(uri)) {
        char safe[512]; /* (no password in messages) */
        svlm_uri_redact(uri, safe, sizeof safe);
        return svlm_fail(err, SVLM_E_INVALID,
                         "source '%s' names no host (e.g. rtsp://192.168.1.20:554/stream)", safe);
    }
    if (has_prefix(uri, "rtsp://") || has_prefix(uri, "rtsps://"))
        return set_target(out, SVLM_URI_RTSP, uri, uri, err);
    if (has_prefix(uri, "http://") || has_prefix(uri, "https://")) {
        svlm_status st = set_target(out, SVLM_URI_HTTP, uri, uri, err);
        const char *q = strpbrk(uri, "?#");
        size_t n = q ? (size_t)(q - uri) : strlen(uri);
        out->is_hls = n >= 5 && strncasecmp(uri + n - 5, ".m3u8", 5) == 0;
        return st;
    }
    if (has_prefix(uri, "file://")) return set_target(out, SVLM_URI_FILE, uri + 7, uri, err);
    if (has_prefix(uri, "v4l2://")) return set_target(out, SVLM_URI_V4L2, uri + 7, uri, err);
    if (has_prefix(uri, "gst:")) return set_target(out, SVLM_URI_GST, uri + 4, uri, err);
    if (has_prefix(uri, "pattern:") || has_prefix(uri, "testsrc:")) {
        out->kind = SVLM_URI_PATTERN;
        return strlen(uri + 8) < sizeof out->target
                   ? (strcpy(out->target, uri + 8), SVLM_OK)
                   : svlm_fail(err, SVLM_E_INVALID, "source URI is too long");
    }
    /* "scheme://..." that we do not know, rather than a file called like that. */
    const char *colon = strstr(uri, "://");
    if (colon) {
        int ok = colon > uri;
        for (const char *c = uri; c < colon; c++)
            if (!((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') || (*c >= '0' && *c <= '9') ||
                  *c == '+' || *c == '-' || *c == '.'))
                ok = 0;
        if (ok) {
            char safe[512]; /* (no password in messages) */
            svlm_uri_redact(uri, safe, sizeof safe);
            return svlm_fail(err, SVLM_E_INVALID,
                             "unknown URI scheme '%.*s' in '%s' (known: file, rtsp, rtsps, http, https, "
                             "v4l2, gst:, pattern:, testsrc:)",
                             (int)(colon - uri), uri, safe);
        }
    }
    return set_target(out, SVLM_URI_FILE, uri, uri, err);
}

/* The value after each `key=` of keys (a NULL-ended list, matched after one of `starts`) as "***",
 * up to one of `stops`, in place; the text only shrinks or keeps its length. */
static void mask_values(char *s, const char *const *keys, const char *starts, const char *stops) {
    for (char *p = s; *p; p++) {
        if (p != s && !strchr(starts, p[-1])) continue;
        for (const char *const *k = keys; *k; k++) {
            const size_t kl = strlen(*k);
            if (strncasecmp(p, *k, kl)) continue;
            char *v = p + kl;
            const size_t vl = strcspn(v, stops);
            if (vl > 3) {
                memcpy(v, "***", 3);
                memmove(v + 3, v + vl, strlen(v + vl) + 1);
            } else if (vl > 0) {
                memset(v, '*', vl);
            }
            p = v;
            break;
        }
    }
}

static const char *const url_keys[] = {
    "password=", "passwd=", "pass=",   "pwd=",  "token=", "access_token=", "api_key=",
    "apikey=",   "key=",    "secret=", "auth=", "sig=",   "signature=",    NULL};
static const char *const gst_keys[] = {"user-pw=", "proxy-pw=", NULL};

void svlm_uri_redact(const char *s, char *out, size_t n) {
    size_t o = 0;
    while (*s && o + 1 < n) {
        const char *sep = strstr(s, "://");
        /* user:password@ ends at the authority's last '@' (a password may hold one, as FFmpeg reads it) */
        size_t auth = sep ? strcspn(sep + 3, "/?# \t\"'") : 0, login = auth;
        while (login > 0 && sep[3 + login - 1] != '@')
            login--;
        login = login > 0 ? login - 1 : auth; /* at the '@', or past the authority: no login */
        size_t keep = sep ? (size_t)(sep + 3 - s) : strlen(s);
        o += (size_t)snprintf(out + o, n - o, "%.*s", (int)keep, s);
        if (o >= n) break;
        s += keep;
        if (sep && s[login] == '@') {
            o += (size_t)snprintf(out + o, n - o, "***");
            s += login;
        }
    }
    if (o >= n) o = n - 1;
    out[o] = 0;
    /* and password-like values: a query's (?password=), a launch description's (user-pw=) */
    mask_values(out, gst_keys, " \t!", " \t!");
    mask_values(out, url_keys, "?&", "& \t!#\"'");
}

void svlm_redact_in_place(char *s, size_t n) {
    char tmp[1024];
    if (!n) return;
    svlm_uri_redact(s, tmp, sizeof tmp < n ? sizeof tmp : n);
    snprintf(s, n, "%s", tmp);
}

void svlm_uri_redact_source(const char *uri, char *out, size_t n) {
    if (!n) return;
    /* a launch description: URLs anywhere in it, and its sources' password properties */
    if (!strncmp(uri, "gst:", 4)) {
        svlm_uri_redact(uri, out, n);
        mask_values(out, gst_keys, " \t!", " \t!");
        mask_values(out, url_keys, "?&", "& \t!#");
        return;
    }
    /* one URL or path: the authority ends only where FFmpeg ends it (/?#), so a password with a
     * space or a quote is hidden too */
    const char *sep = strstr(uri, "://");
    size_t login = sep ? strcspn(sep + 3, "/?#") : 0;
    while (login > 0 && sep[3 + login - 1] != '@')
        login--;
    if (login > 0)
        snprintf(out, n, "%.*s***%s", (int)(sep + 3 - uri), uri, sep + 3 + login - 1);
    else
        snprintf(out, n, "%s", uri);
    mask_values(out, url_keys, "?&", "&#");
}

const char *svlm_uri_kind_name(svlm_uri_kind kind) {
    switch (kind) {
    case SVLM_URI_FILE: return "file";
    case SVLM_URI_RTSP: return "rtsp";
    case SVLM_URI_HTTP: return "http";
    case SVLM_URI_V4L2: return "v4l2";
    case SVLM_URI_GST: return "gst";
    case SVLM_URI_PATTERN: return "pattern";
    }
    return "?";
}

int svlm_uri_default_live(const svlm_uri *uri) {
    switch (uri->kind) {
    case SVLM_URI_RTSP:
    case SVLM_URI_V4L2: return 1;
    case SVLM_URI_HTTP: return uri->is_hls;
    case SVLM_URI_PATTERN: {
        /* the "live" key, as a whole word in the comma/ampersand list */
        char buf[SVLM_URI_MAX];
        snprintf(buf, sizeof buf, "%s", uri->target);
        for (char *save = NULL, *tok = strtok_r(buf, ",&", &save); tok; tok = strtok_r(NULL, ",&", &save))
            if (!strcmp(tok, "live") || !strcmp(tok, "live=1")) return 1;
        return 0;
    }
    default: return 0;
    }
}

const char *svlm_backend_kind_name(svlm_backend_kind kind) {
    switch (kind) {
    case SVLM_BACKEND_FFMPEG: return "ffmpeg";
    case SVLM_BACKEND_GST: return "gst";
    case SVLM_BACKEND_PATTERN: return "pattern";
    default: return "auto";
    }
}

int svlm_backend_kind_parse(const char *name, svlm_backend_kind *out) {
    if (!strcmp(name, "auto"))
        *out = SVLM_BACKEND_AUTO;
    else if (!strcmp(name, "ffmpeg"))
        *out = SVLM_BACKEND_FFMPEG;
    else if (!strcmp(name, "gst") || !strcmp(name, "gstreamer"))
        *out = SVLM_BACKEND_GST;
    else if (!strcmp(name, "pattern"))
        *out = SVLM_BACKEND_PATTERN;
    else
        return -1;
    return 0;
}

int svlm_source_backend_available(svlm_backend_kind kind) {
    switch (kind) {
#ifdef SVLM_HAVE_FFMPEG
    case SVLM_BACKEND_FFMPEG: return 1;
#endif
#ifdef SVLM_HAVE_GST
    case SVLM_BACKEND_GST: return 1;
#endif
    case SVLM_BACKEND_PATTERN: return 1;
    default: return 0;
    }
}

static const svlm_backend_ops *ops_of(svlm_backend_kind kind) {
    switch (kind) {
#ifdef SVLM_HAVE_FFMPEG
    case SVLM_BACKEND_FFMPEG: return &svlm_ffmpeg_backend;
#endif
#ifdef SVLM_HAVE_GST
    case SVLM_BACKEND_GST: return &svlm_gst_backend;
#endif
    case SVLM_BACKEND_PATTERN: return &svlm_pattern_backend;
    default: return NULL;
    }
}

static const char *library_of(svlm_backend_kind kind) {
    return kind == SVLM_BACKEND_FFMPEG ? "FFmpeg (libavformat, libavcodec, libswscale)"
                                       : "GStreamer (gstreamer-1.0, gstreamer-app-1.0, gstreamer-video-1.0)";
}

const svlm_backend_ops *svlm_backend_choose(svlm_backend_kind kind, const svlm_uri *uri, svlm_err *err) {
    const char *scheme = svlm_uri_kind_name(uri->kind);
    if (uri->kind == SVLM_URI_PATTERN) {
        if (kind != SVLM_BACKEND_AUTO && kind != SVLM_BACKEND_PATTERN) {
            svlm_fail(err, SVLM_E_INVALID,
                      "pattern: sources use the built-in backend (for a GStreamer test source use "
                      "gst:videotestsrc)");
            return NULL;
        }
        return &svlm_pattern_backend;
    }
    if (kind == SVLM_BACKEND_PATTERN) {
        svlm_fail(err, SVLM_E_INVALID, "the pattern backend only serves pattern: sources, not %s", scheme);
        return NULL;
    }
    int gst_only = uri->kind == SVLM_URI_V4L2 || uri->kind == SVLM_URI_GST;
    if (gst_only && kind == SVLM_BACKEND_FFMPEG) {
        svlm_fail(err, SVLM_E_INVALID, "%s sources need the gst backend, not ffmpeg", scheme);
        return NULL;
    }
    int chosen = kind == SVLM_BACKEND_AUTO;
    if (chosen) {
        /* FFmpeg is the default where it can serve the scheme: faster to the first frame on
         * files and it reports codec details; GStreamer serves the rest and fills in. */
        kind = gst_only                      ? SVLM_BACKEND_GST
               : ops_of(SVLM_BACKEND_FFMPEG) ? SVLM_BACKEND_FFMPEG
                                             : SVLM_BACKEND_GST;
    }
    const svlm_backend_ops *ops = ops_of(kind);
    if (!ops) {
        if (chosen && !gst_only)
            svlm_fail(err, SVLM_E_UNSUPPORTED,
                      "this svlm was built without FFmpeg and without GStreamer; %s sources need one of them "
                      "(only pattern: works)",
                      scheme);
        else
            svlm_fail(err, SVLM_E_UNSUPPORTED,
                      "this svlm was built without %s, which %s sources need with this backend",
                      library_of(kind), scheme);
        return NULL;
    }
    return ops;
}
