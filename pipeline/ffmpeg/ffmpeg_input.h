/* Opening an input with libavformat: options per scheme, interrupt callback, clear errors. */
#ifndef SVLM_PIPELINE_FFMPEG_INPUT_H
#define SVLM_PIPELINE_FFMPEG_INPUT_H

#include <libavformat/avformat.h>

#include "pipeline/source_backend.h"

/* Opens and probes the input (honouring ctl: cancel and the open deadline). */
svlm_status svlm_ff_open_input(AVFormatContext **out, const svlm_backend_args *args, svlm_err *err);

/* Clockwise quarter turns (0 to 3) that a display matrix (9 int32, may be NULL), or a stream's,
 * asks players to show frames with, as ffmpeg's autorotate reads it; a matrix that is no quarter
 * turn is ignored. */
int svlm_ff_display_turns(const int32_t *matrix);
int svlm_ff_stream_turns(const AVStream *st);

/* Closes what svlm_ff_open_input opened (a named pipe's own reader too); *fmt becomes NULL. */
void svlm_ff_close_input(AVFormatContext **fmt);

/* A message for an FFmpeg error code, with the likely cause spelled out. */
svlm_status svlm_ff_fail(svlm_err *err, int averr, const char *what, const char *target);

#endif
