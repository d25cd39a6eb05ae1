/* The media libraries' own logging (process-global, so only programs call this). */
#include "pipeline/source.h"

#ifdef SVLM_HAVE_FFMPEG
#include <libavutil/log.h>
#endif

void svlm_source_library_log(int verbose) {
#ifdef SVLM_HAVE_FFMPEG
    /* Decoders log every damaged slice at "error" level; svlm counts those itself. */
    av_log_set_level(verbose ? AV_LOG_WARNING : AV_LOG_FATAL);
#else
    (void)verbose;
#endif
}
