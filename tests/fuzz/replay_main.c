/*
 * Runs a fuzz target (LLVMFuzzerTestOneInput) over files, for builds without libFuzzer: the
 * corpus of tests/fuzz/corpus/<target>/ (seeds and every input that once broke a parser) is
 * replayed by ctest, under ASan/UBSan in the sanitizer build. A crash, a sanitizer report or an
 * abort in the target fails the run; the file being read is printed first, so it is named.
 *
 * Usage: fuzz_<target>_replay FILE|DIR...   (a folder: every regular file in it, in name order)
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* optional, as with libFuzzer: a target's one-time setup (it may exit 77: skipped) */
__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv);

static int run_file(const char *path) {
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st) || st.st_size < 0) {
        fprintf(stderr, "fuzz replay: cannot open %s\n", path);
        if (f) fclose(f);
        return 1;
    }
    /* exactly the file's bytes, so ASan sees a read past the input's end */
    const size_t n = (size_t)st.st_size;
    uint8_t *buf = malloc(n ? n : 1);
    const int ok = buf && fread(buf, 1, n, f) == n;
    fclose(f);
    if (!ok) {
        fprintf(stderr, "fuzz replay: cannot read %s\n", path);
        free(buf);
        return 1;
    }
    printf("%s (%zu bytes)\n", path, n);
    fflush(stdout);
    LLVMFuzzerTestOneInput(buf, n);
    free(buf);
    return 0;
}

static int by_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int run_dir(const char *dir, int *count) {
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "fuzz replay: cannot open folder %s\n", dir);
        return 1;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    int failed = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        size_t len = strlen(dir) + strlen(e->d_name) + 2;
        char *p = malloc(len);
        if (!p) {
            failed = 1;
            break;
        }
        snprintf(p, len, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(p, &st) || !S_ISREG(st.st_mode)) {
            free(p);
            continue;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 64;
            char **nn = realloc(names, cap * sizeof *nn);
            if (!nn) {
                free(p);
                failed = 1;
                break;
            }
            names = nn;
        }
        names[n++] = p;
    }
    closedir(d);
    if (n) qsort(names, n, sizeof *names, by_name);
    for (size_t i = 0; i < n; i++) {
        if (!failed) {
            failed |= run_file(names[i]);
            (*count)++;
        }
        free(names[i]);
    }
    free(names);
    return failed;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
        return 2;
    }
    if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
    int failed = 0, count = 0;
    for (int i = 1; i < argc && !failed; i++) {
        struct stat st;
        if (stat(argv[i], &st)) {
            fprintf(stderr, "fuzz replay: %s does not exist\n", argv[i]);
            failed = 1;
        } else if (S_ISDIR(st.st_mode)) {
            failed = run_dir(argv[i], &count);
        } else {
            failed = run_file(argv[i]);
            count++;
        }
    }
    if (!failed && count == 0) {
        fprintf(stderr, "fuzz replay: no inputs found\n");
        failed = 1;
    }
    printf("%d inputs replayed%s\n", count, failed ? ", FAILED" : ", no fault");
    return failed;
}
