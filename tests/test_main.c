#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test.h"

int svlm_test_failures = 0;
int svlm_test_checks = 0;

const char *test_data(const char *rel) {
    static char buf[8][4096];
    static int slot = 0;
    const char *root = getenv("SVLM_TEST_DATA");
    if (!root || !*root) root = "../shared";
    struct stat st;
    if (stat(root, &st) != 0 || !S_ISDIR(st.st_mode)) return NULL;
    char *b = buf[slot++ % 8];
    snprintf(b, sizeof buf[0], "%s/%s", root, rel ? rel : "");
    return b;
}

const char *test_data_or_skip(void) {
    const char *d = test_data("");
    if (!d) SKIP("test data folder not found (set SVLM_TEST_DATA to the shared/ folder)");
    return d;
}

float *test_read_f32(const char *path, size_t *n) {
    *n = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    float *d = NULL;
    long sz = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (sz >= 0 && fseek(f, 0, SEEK_SET) == 0 && (d = malloc((size_t)sz + 1)) &&
        fread(d, 1, (size_t)sz, f) != (size_t)sz) {
        free(d);
        d = NULL;
    }
    fclose(f);
    if (d) *n = (size_t)sz / sizeof(float);
    return d;
}

const char *test_tmpdir(void) {
    static char buf[4096];
    const char *base = getenv("SVLM_TEST_TMP");
    if (!base || !*base) base = "/tmp";
    mkdir(base, 0755);
    snprintf(buf, sizeof buf, "%s/t%ld", base, (long)getpid());
    mkdir(buf, 0755);
    return buf;
}

int main(void) {
    int rc = test_main();
    if (rc == 77) return 77;
    printf("%d checks, %d failed\n", svlm_test_checks, svlm_test_failures);
    return (rc != 0 || svlm_test_failures) ? 1 : 0;
}
