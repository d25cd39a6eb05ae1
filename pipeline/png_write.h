/* Writes an RGB24 frame as a PNG file: zlib-compressed when zlib is built in, otherwise
 * with stored (uncompressed) deflate blocks, which every PNG reader accepts. */
#ifndef SVLM_PIPELINE_PNG_WRITE_H
#define SVLM_PIPELINE_PNG_WRITE_H

#include "pipeline/source.h"

svlm_status svlm_png_write(const char *path, const svlm_frame *frame, svlm_err *err);

#endif
