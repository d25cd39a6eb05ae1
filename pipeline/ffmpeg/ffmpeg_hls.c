/* Downloading an HLS playlist through FFmpeg's HTTP client (see pipeline/hls_playlist.h). */
#include <libavformat/avio.h>
#include <libavutil/dict.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "pipeline/ffmpeg/ffmpeg_input.h"
#include "pipeline/hls_playlist.h"

#define PLAYLIST_MAX (4 << 20) /* a live playlist is a few KB; a VOD one of a day of 2 s segments ~3 MB */

static int stop_cb(void *opaque) {
    return svlm_ctl_should_stop(opaque) != SVLM_STOP_NONE;
}

/* A failed open or read: the open timeout as "no answer" (as an open of the stream says it), a
 * cancel as such, else FFmpeg's error. */
static svlm_status stopped(svlm_ingest_ctl *ctl, int rc, const char *url, svlm_err *err) {
    const svlm_stop_reason why = svlm_ctl_should_stop(ctl);
    if (why == SVLM_STOP_OPEN_TIMEOUT) {
        char safe[512];
        svlm_uri_redact_source(url, safe, sizeof safe);
        return svlm_fail(err, SVLM_E_IO,
                         "cannot read the playlist %s: no answer in time (check the host, port and path; "
                         "--open-timeout S waits longer)",
                         safe);
    }
    if (why) return svlm_ctl_stop_error(ctl, err, "HLS playlist");
    return svlm_ff_fail(err, rc, "cannot read the playlist", url);
}

/* The body at url into a new buffer (*text, *len), network protocols only. */
static svlm_status download(const char *url, svlm_ingest_ctl *ctl, char **text, size_t *len, svlm_err *err) {
    *text = NULL, *len = 0;
    AVIOInterruptCB icb = {stop_cb, ctl};
    AVDictionary *opts = NULL;
    av_dict_set(&opts, "rw_timeout", "10000000", 0);
    av_dict_set(&opts, "protocol_whitelist", "http,https,tls,tcp", 0);
    AVIOContext *pb = NULL;
    int rc = avio_open2(&pb, url, AVIO_FLAG_READ, &icb, &opts);
    av_dict_free(&opts);
    if (rc < 0) return stopped(ctl, rc, url, err);
    size_t cap = 16384;
    char *buf = malloc(cap);
    svlm_status st = buf ? SVLM_OK : svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    while (st == SVLM_OK) {
        if (*len == cap) {
            char *g = cap < PLAYLIST_MAX ? realloc(buf, cap * 2) : NULL;
            if (!g) {
                st = svlm_fail(err, SVLM_E_FORMAT, "the HLS playlist is over %d MB", PLAYLIST_MAX >> 20);
                break;
            }
            buf = g, cap *= 2;
        }
        const int n = avio_read(pb, (unsigned char *)buf + *len, (int)(cap - *len));
        if (n == AVERROR_EOF || n == 0) break;
        if (n < 0)
            st = stopped(ctl, n, url, err);
        else
            *len += (size_t)n;
    }
    avio_closep(&pb);
    if (st != SVLM_OK) {
        free(buf);
        *len = 0;
        return st;
    }
    *text = buf;
    return SVLM_OK;
}

svlm_status svlm_hls_fetch(const char *url, svlm_ingest_ctl *ctl, svlm_hls_playlist *out, svlm_err *err) {
    memset(out, 0, sizeof *out);
    char *at = malloc(SVLM_URI_MAX);
    if (!at) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    snprintf(at, SVLM_URI_MAX, "%s", url);
    svlm_status st = SVLM_OK;
    for (int level = 0; level < 2; level++) { /* a master playlist, then its first variant's */
        char *text;
        size_t len;
        if ((st = download(at, ctl, &text, &len, err))) break;
        st = svlm_hls_parse(text, len, out, err);
        free(text);
        if (st || !out->variant[0]) break;
        char *next = malloc(SVLM_URI_MAX);
        if (!next) {
            st = svlm_fail(err, SVLM_E_NOMEM, "out of memory");
            break;
        }
        if (svlm_hls_resolve(at, out->variant, next, SVLM_URI_MAX)) {
            free(next);
            st = svlm_fail(err, SVLM_E_FORMAT, "the HLS playlist's variant URL is too long");
            break;
        }
        free(at);
        at = next;
        if (level == 1) st = svlm_fail(err, SVLM_E_FORMAT, "the HLS variant playlist lists variants again");
    }
    free(at);
    return st;
}
