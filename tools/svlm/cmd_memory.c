/* svlm memory dump DIR [--json]: list a stream's persisted memory (verified, read-only). */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "memory/memory_bank.h"

static void usage(FILE *f) {
    fprintf(f, "usage: svlm memory dump DIR [--json]\n"
               "Lists the entries of a memory directory (tier, time range, frames, tokens, bytes,\n"
               "importance) after verifying it; nothing is changed. Exit status 3 when some\n"
               "records failed verification (they are listed under problems).\n");
}

static void dump_text(svlm_memory *m, const svlm_memory_load_report *r) {
    svlm_memory_stats s;
    svlm_memory_stats_get(m, &s);
    printf("%d entries, %zu bytes", svlm_memory_count(m), s.bytes);
    printf(" (mid %zu, event %zu); %d records loaded, %d rejected\n", s.tier_bytes[SVLM_MEMORY_MID],
           s.tier_bytes[SVLM_MEMORY_EVENT], r->loaded, r->rejected);
    if (r->detail[0]) printf("problems: %s\n", r->detail);
    printf("%-6s %-5s %-10s %-10s %7s %7s %10s %10s\n", "id", "tier", "from", "to", "frames", "tokens",
           "bytes", "importance");
    for (int i = 0; i < svlm_memory_count(m); i++) {
        svlm_memory_entry_info e;
        if (svlm_memory_entry(m, i, &e)) break;
        char a[32], b[32];
        svlm_memory_format_clock(e.t0, a, sizeof a);
        svlm_memory_format_clock(e.t1, b, sizeof b);
        printf("%-6llu %-5s %-10s %-10s %7lld %7d %10zu %10.3f\n", (unsigned long long)e.id,
               svlm_memory_tier_name(e.tier), a, b, (long long)e.n_frames, e.n_tokens, e.bytes, e.importance);
    }
}

static void dump_json(svlm_memory *m, const svlm_memory_load_report *r) {
    printf("{\"loaded\":%d,\"rejected\":%d,\"manifest_ok\":%s,\"problems\":", r->loaded, r->rejected,
           r->manifest_ok ? "true" : "false");
    cli_json_str(stdout, r->detail, strlen(r->detail));
    printf(",\"entries\":[");
    for (int i = 0; i < svlm_memory_count(m); i++) {
        svlm_memory_entry_info e;
        if (svlm_memory_entry(m, i, &e)) break;
        printf("%s{\"id\":%llu,\"tier\":\"%s\",\"t0\":%.3f,\"t1\":%.3f,\"frames\":%lld,\"tokens\":%d,"
               "\"bytes\":%zu,\"importance\":%.4f,\"level\":%d}",
               i ? "," : "", (unsigned long long)e.id, svlm_memory_tier_name(e.tier), e.t0, e.t1,
               (long long)e.n_frames, e.n_tokens, e.bytes, e.importance, e.level);
    }
    printf("]}\n");
}

int cmd_memory(int argc, char **argv) {
    const char *dir = NULL;
    int json = 0, have_verb = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json"))
            json = 1;
        else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "svlm: memory: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        } else if (!have_verb) {
            if (strcmp(a, "dump")) {
                fprintf(stderr, "svlm: memory: unknown action '%s' (expected dump)\n", a);
                return 2;
            }
            have_verb = 1;
        } else if (!dir)
            dir = a;
        else {
            fprintf(stderr, "svlm: memory dump takes one DIR, got '%s' and '%s'\n", dir, a);
            return 2;
        }
    }
    if (!have_verb || !dir) {
        usage(stderr);
        return 2;
    }
    svlm_memory_opts o;
    svlm_memory_opts_default(&o);
    o.dir = dir;
    o.read_only = 1;
    o.budget_bytes = (size_t)1 << 40; /* inspection: show everything the directory holds */
    o.max_entries = 1 << 30;
    svlm_memory *m = NULL;
    svlm_err err = {0};
    if (svlm_memory_create(&o, &m, &err)) {
        fprintf(stderr, "svlm: memory dump %s: %s\n", dir, err.msg);
        return 1;
    }
    svlm_memory_load_report r;
    svlm_memory_load_report_get(m, &r);
    if (json)
        dump_json(m, &r);
    else
        dump_text(m, &r);
    svlm_memory_free(m);
    return r.rejected ? 3 : 0;
}
