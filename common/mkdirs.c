#include "common/mkdirs.h"

#include <errno.h>
#include <sys/stat.h>

int svlm_mkdirs(char *path) {
    for (char *p = path + 1; *p; p++) {
        if (*p != '/' || p[-1] == '/') continue;
        *p = 0;
        const int bad = mkdir(path, 0755) && errno != EEXIST;
        *p = '/';
        if (bad) return -1;
    }
    return mkdir(path, 0755) && errno != EEXIST ? -1 : 0;
}
