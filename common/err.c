#include "common/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *svlm_status_str(svlm_status st) {
    switch (st) {
    case SVLM_OK: return "OK";
    case SVLM_E_INVALID: return "E_INVALID";
    case SVLM_E_NOMEM: return "E_NOMEM";
    case SVLM_E_IO: return "E_IO";
    case SVLM_E_FORMAT: return "E_FORMAT";
    case SVLM_E_UNSUPPORTED: return "E_UNSUPPORTED";
    case SVLM_E_DEVICE: return "E_DEVICE";
    case SVLM_E_AGAIN: return "E_AGAIN";
    case SVLM_E_END: return "E_END";
    case SVLM_E_CANCELLED: return "E_CANCELLED";
    case SVLM_E_LIMIT: return "E_LIMIT";
    case SVLM_E_TOO_LONG: return "E_TOO_LONG";
    case SVLM_E_EXISTS: return "E_EXISTS";
    }
    return "E_UNKNOWN";
}

const char *svlm_version(void) {
    return SVLM_VERSION_STRING;
}

svlm_status svlm_fail(svlm_err *err, svlm_status st, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->status = st;
    }
    return st;
}

void svlm_err_prefix(svlm_err *err, const char *fmt, ...) {
    if (!err) return;
    char pre[256], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(pre, sizeof pre, fmt, ap);
    va_end(ap);
    size_t n = strlen(pre);
    /* already said by the layer below (a file's path from gguf_open, then again from a loader) */
    if (n && !strncmp(err->msg, pre, n) && err->msg[n] == ':') return;
    memcpy(old, err->msg, sizeof old);
    snprintf(err->msg, sizeof err->msg, "%.200s: %.300s", pre, old);
}
