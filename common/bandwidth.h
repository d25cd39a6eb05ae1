/* Measures the machine's sustained memory read bandwidth (for "share of the bandwidth bound"). */
#ifndef SVLM_COMMON_BANDWIDTH_H
#define SVLM_COMMON_BANDWIDTH_H

#include "common/threadpool.h"

/* Bytes per second read by all pool threads streaming over a buffer of `bytes` (far larger
 * than the caches, e.g. 1 GiB); best of `reps` passes. Returns 0 on allocation failure. */
double svlm_measure_read_bandwidth(svlm_pool *pool, size_t bytes, int reps);

#endif
