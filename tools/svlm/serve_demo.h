/* The stand-in model of `svlm serve --demo`. */
#ifndef SVLM_TOOLS_SERVE_DEMO_H
#define SVLM_TOOLS_SERVE_DEMO_H

#include <stddef.h>

/* Makes sure the tiny random-weight SmolVLM2 pair exists in cache_dir (NULL: $XDG_CACHE_HOME/svlm,
 * else ~/.cache/svlm), generating it the first time; fills both paths. Prints the error and
 * returns -1 on failure. */
int serve_demo_models(const char *cache_dir, char *text, size_t text_cap, char *mmproj, size_t mmproj_cap);

#endif
