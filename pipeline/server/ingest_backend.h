/*
 * A server backend made of real video ingest only (pipeline/source.h): streams open, run,
 * reconnect and report their health, and snapshots show their latest frames; questions and
 * watches answer SVLM_E_UNSUPPORTED ("engine_unavailable") until the streaming engine is
 * wired in. `svlm serve` uses it so the server, the page and the sources can be run today;
 * the engine backend replaces ask/cancel/watch/unwatch (and the counters) when it lands.
 */
#ifndef SVLM_PIPELINE_SERVER_INGEST_BACKEND_H
#define SVLM_PIPELINE_SERVER_INGEST_BACKEND_H

#include "pipeline/server/server_backend.h"

typedef struct svlm_ingest_backend svlm_ingest_backend;

/* model: what the page shows as the model name. max_streams bounds open streams. */
svlm_status svlm_ingest_backend_create(svlm_ingest_backend **out, const char *model, int max_streams,
                                       svlm_server_backend *iface, svlm_err *err);
/* Stops every stream's reader; accepts NULL. */
void svlm_ingest_backend_destroy(svlm_ingest_backend *b);

#endif
