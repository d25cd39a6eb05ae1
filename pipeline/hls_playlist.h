/*
 * Just enough of an HLS playlist to follow a live one across reconnects: which segments it lists
 * (by media sequence number) and whether it is finished. Reopened, a live playlist plays again from
 * a few segments before its end, so a source that knows the last segment it played can wait for
 * new ones (an encoder that died leaves its playlist as it was) and start at the first of them.
 */
#ifndef SVLM_PIPELINE_HLS_PLAYLIST_H
#define SVLM_PIPELINE_HLS_PLAYLIST_H

#include <stddef.h>
#include <stdint.h>

#include "pipeline/source_backend.h"

typedef struct svlm_hls_playlist {
    int finished;      /* #EXT-X-ENDLIST: no segment will be added */
    int64_t first_seq; /* #EXT-X-MEDIA-SEQUENCE, 0 when absent */
    int64_t n_segments;
    double target_duration;     /* #EXT-X-TARGETDURATION: the longest segment, seconds (0: not given) */
    char variant[SVLM_URI_MAX]; /* a master playlist: its first variant's URL as written ("" otherwise) */
} svlm_hls_playlist;

/* Parses playlist text (n bytes, not NUL-terminated); SVLM_E_FORMAT when it is not an M3U8. */
svlm_status svlm_hls_parse(const char *text, size_t n, svlm_hls_playlist *out, svlm_err *err);

/* The sequence number of the playlist's last segment (first_seq - 1 when it lists none). */
int64_t svlm_hls_last_seq(const svlm_hls_playlist *p);

/* ref resolved against the playlist URL base, into out (n bytes); -1 when it does not fit. */
int svlm_hls_resolve(const char *base, const char *ref, char *out, size_t n);

/* Downloads the media playlist at url (a master playlist's first variant followed once), bounded
 * by ctl's open deadline and cancel. SVLM_E_UNSUPPORTED in a build without FFmpeg. */
svlm_status svlm_hls_fetch(const char *url, svlm_ingest_ctl *ctl, svlm_hls_playlist *out, svlm_err *err);

#endif
