/* The k-th smallest of n floats without sorting them all. */
#ifndef SVLM_COMMON_SELECT_H
#define SVLM_COMMON_SELECT_H

#include <stddef.h>

/* The value a full ascending sort would put at v[k] (k < n; no NaN in v), found in O(n) on
 * average by quickselect; v is reordered. */
float svlm_nth_smallest(float *v, size_t n, size_t k);

#endif
