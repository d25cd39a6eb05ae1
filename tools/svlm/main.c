/* svlm: one binary, many subcommands (see commands.def). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

#include "cli.h"
#include "pipeline/source.h"
#include "svlm.h"

typedef struct {
    const char *name;
    int (*fn)(int, char **);
    const char *help;
} command;

static const command commands[] = {
#define SVLM_CMD(name, help) {#name, cmd_##name, help},
#include "commands.def"
#undef SVLM_CMD
};

/* Command names are C identifiers in commands.def; on the command line '-' stands for '_'
 * (svlm bench-vision runs cmd_bench_vision). */
static int name_matches(const char *arg, const char *name) {
    for (; *arg && *name; arg++, name++)
        if (*arg != *name && !(*arg == '-' && *name == '_')) return 0;
    return !*arg && !*name;
}

static void print_name(FILE *f, const char *name) {
    char buf[32];
    size_t i = 0;
    for (; name[i] && i + 1 < sizeof buf; i++)
        buf[i] = name[i] == '_' ? '-' : name[i];
    buf[i] = 0;
    fprintf(f, "  %-14s ", buf);
}

static void usage(FILE *f) {
    fprintf(f, "svlm %s — streaming video-language-model runtime\n\nusage: svlm COMMAND [options]\n\n",
            svlm_version());
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        print_name(f, commands[i].name);
        fprintf(f, "%s\n", commands[i].help);
    }
    fprintf(f, "\nRun 'svlm COMMAND --help' for a command's options.\n");
}

/* glibc hands a freed block of 128 KiB or more straight back to the kernel (and trims arenas
 * above 128 KiB of free space), so every frame's images, rows and pages came back as fresh pages
 * to fault in and zero: half the host time of many streams. Blocks up to 32 MiB now come from
 * the heap, and up to 64 MiB of free space stays at the top of each arena for the next frame
 * (so a process may hold that much more per arena than it uses). MALLOC_MMAP_THRESHOLD_,
 * MALLOC_TRIM_THRESHOLD_ or glibc.malloc tunables, when set, win. */
static void keep_freed_memory(void) {
#ifdef __GLIBC__
    const char *tunables = getenv("GLIBC_TUNABLES");
    if ((tunables && strstr(tunables, "glibc.malloc.")) || getenv("MALLOC_MMAP_THRESHOLD_") ||
        getenv("MALLOC_TRIM_THRESHOLD_"))
        return;
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
#endif
}

int main(int argc, char **argv) {
    keep_freed_memory();
    /* FFmpeg's decoders log every damaged slice (two lines a frame of a damaged camera, for ever, in
     * serve's log): svlm counts them itself (corrupt events); `svlm frames --verbose` shows them */
    svlm_source_library_log(0);
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("svlm %s\n", svlm_version());
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (name_matches(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "svlm: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}
