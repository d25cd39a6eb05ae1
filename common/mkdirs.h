/* Directory creation with every missing parent ("mkdir -p"). */
#ifndef SVLM_COMMON_MKDIRS_H
#define SVLM_COMMON_MKDIRS_H

/* Creates path and its missing parents (mode 0755); an existing directory is fine. 0, or -1 with
 * errno set (path is restored whatever happens: it is only cut in place for a moment). */
int svlm_mkdirs(char *path);

#endif
