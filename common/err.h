/* Error reporting helpers: format a message into an svlm_err and return the status. */
#ifndef SVLM_COMMON_ERR_H
#define SVLM_COMMON_ERR_H

#include "svlm.h"

#if defined(__GNUC__)
#define SVLM_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define SVLM_PRINTF(a, b)
#endif

/* Writes the formatted message into err (if not NULL) and returns st. */
svlm_status svlm_fail(svlm_err *err, svlm_status st, const char *fmt, ...) SVLM_PRINTF(3, 4);

/* Prepends "prefix: " to an existing message (for context as errors bubble up). */
void svlm_err_prefix(svlm_err *err, const char *fmt, ...) SVLM_PRINTF(2, 3);

#endif
