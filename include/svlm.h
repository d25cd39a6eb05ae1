/*
 * svlm — a streaming video-language-model runtime.
 *
 * This header is the manual for the public C API. Conventions:
 *   - Every call that can fail returns svlm_status: 0 (SVLM_OK) on success, a negative
 *     value otherwise. Counts and handles come back through out-parameters.
 *   - Objects are opaque and come in create/destroy pairs. A failed create leaves the
 *     out-handle NULL. Destroy functions accept NULL.
 *   - The library keeps no global state; everything hangs off the objects you create.
 *   - On failure, a human-readable detail is written to the svlm_err you pass (may be NULL).
 */
#ifndef SVLM_H
#define SVLM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SVLM_VERSION_STRING "0.1.0"

/* One status enum for the whole library. AGAIN and END are flow signals, not failures. */
typedef enum svlm_status {
    SVLM_OK = 0,
    SVLM_E_INVALID = -1,     /* a bad argument or a malformed input                */
    SVLM_E_NOMEM = -2,       /* an allocation failed                               */
    SVLM_E_IO = -3,          /* a file or network operation failed                 */
    SVLM_E_FORMAT = -4,      /* a file is not what it claims to be (GGUF, image…)  */
    SVLM_E_UNSUPPORTED = -5, /* valid input that svlm cannot handle (yet)          */
    SVLM_E_DEVICE = -6,      /* the compute device failed or is absent             */
    SVLM_E_AGAIN = -7,       /* try again later (queue full, no data yet)          */
    SVLM_E_END = -8,         /* end of stream / end of answer                      */
    SVLM_E_CANCELLED = -9,   /* the operation was cancelled                        */
    SVLM_E_LIMIT = -10,      /* a configured limit was reached                     */
    SVLM_E_TOO_LONG = -11,   /* an input longer than the model or its room takes   */
    SVLM_E_EXISTS = -12,     /* a name in use already (a stream's)                 */
} svlm_status;

/* Short stable name of a status, e.g. "E_FORMAT". Never NULL. */
const char *svlm_status_str(svlm_status st);

/* Detail of the last failure of a call. Callers own it (usually on the stack). */
typedef struct svlm_err {
    svlm_status status;
    char msg[512];
} svlm_err;

/* Version string of the library. */
const char *svlm_version(void);

#ifdef __cplusplus
}
#endif
#endif /* SVLM_H */
