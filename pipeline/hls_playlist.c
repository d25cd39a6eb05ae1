/* HLS playlists: parsing what a live source needs to follow one (see hls_playlist.h). */
#include "pipeline/hls_playlist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

static int starts(const char *line, size_t n, const char *tag) {
    const size_t k = strlen(tag);
    return n >= k && !memcmp(line, tag, k);
}

svlm_status svlm_hls_parse(const char *text, size_t n, svlm_hls_playlist *out, svlm_err *err) {
    memset(out, 0, sizeof *out);
    if (n >= 3 && !memcmp(text, "\xEF\xBB\xBF", 3)) text += 3, n -= 3; /* a UTF-8 byte order mark */
    int seen_header = 0, variant_next = 0;
    for (size_t at = 0; at < n;) {
        const char *line = text + at;
        const char *nl = memchr(line, '\n', n - at);
        size_t len = nl ? (size_t)(nl - line) : n - at;
        at += len + (nl != NULL);
        while (len && (line[len - 1] == '\r' || line[len - 1] == ' ' || line[len - 1] == '\t'))
            len--;
        if (!len) continue;
        if (!seen_header) {
            if (!starts(line, len, "#EXTM3U"))
                return svlm_fail(err, SVLM_E_FORMAT, "not an HLS playlist (#EXTM3U)");
            seen_header = 1;
            continue;
        }
        if (starts(line, len, "#EXT-X-MEDIA-SEQUENCE:")) {
            char num[32];
            const size_t k = strlen("#EXT-X-MEDIA-SEQUENCE:");
            snprintf(num, sizeof num, "%.*s", (int)(len - k < sizeof num - 1 ? len - k : sizeof num - 1),
                     line + k);
            char *end;
            long long v = strtoll(num, &end, 10);
            if (end != num && v >= 0) out->first_seq = v;
        } else if (starts(line, len, "#EXT-X-TARGETDURATION:")) {
            char num[32];
            const size_t k = strlen("#EXT-X-TARGETDURATION:");
            snprintf(num, sizeof num, "%.*s", (int)(len - k < sizeof num - 1 ? len - k : sizeof num - 1),
                     line + k);
            const double v = strtod(num, NULL);
            if (v > 0 && v < 3600) out->target_duration = v;
        } else if (starts(line, len, "#EXT-X-ENDLIST")) {
            out->finished = 1;
        } else if (starts(line, len, "#EXT-X-STREAM-INF:")) {
            variant_next = 1;
        } else if (line[0] != '#') {
            if (variant_next && !out->variant[0] && len < sizeof out->variant)
                memcpy(out->variant, line, len), out->variant[len] = 0;
            else if (!variant_next)
                out->n_segments++;
            variant_next = 0;
        }
    }
    if (!seen_header) return svlm_fail(err, SVLM_E_FORMAT, "not an HLS playlist (empty)");
    return SVLM_OK;
}

int64_t svlm_hls_last_seq(const svlm_hls_playlist *p) {
    return p->first_seq + p->n_segments - 1;
}

int svlm_hls_resolve(const char *base, const char *ref, char *out, size_t n) {
    const char *scheme_end = strstr(base, "://");
    int w;
    if (strstr(ref, "://") || !scheme_end) {
        w = snprintf(out, n, "%s", ref);
    } else if (ref[0] == '/' && ref[1] == '/') { /* the same scheme */
        w = snprintf(out, n, "%.*s:%s", (int)(scheme_end - base), base, ref);
    } else if (ref[0] == '/') { /* the same host */
        const char *host = scheme_end + 3;
        const size_t auth = strcspn(host, "/?#");
        w = snprintf(out, n, "%.*s%s", (int)(host - base + auth), base, ref);
    } else { /* beside the playlist: its folder, without the query */
        const size_t path_len = strcspn(base, "?#");
        size_t dir = path_len;
        while (dir > (size_t)(scheme_end + 3 - base) && base[dir - 1] != '/')
            dir--;
        if (dir <= (size_t)(scheme_end + 3 - base)) /* "http://host" with no path */
            w = snprintf(out, n, "%.*s/%s", (int)path_len, base, ref);
        else
            w = snprintf(out, n, "%.*s%s", (int)dir, base, ref);
    }
    return w < 0 || (size_t)w >= n ? -1 : 0;
}

#ifndef SVLM_HAVE_FFMPEG
svlm_status svlm_hls_fetch(const char *url, svlm_ingest_ctl *ctl, svlm_hls_playlist *out, svlm_err *err) {
    (void)url, (void)ctl;
    memset(out, 0, sizeof *out);
    return svlm_fail(err, SVLM_E_UNSUPPORTED, "reading an HLS playlist needs FFmpeg");
}
#endif
