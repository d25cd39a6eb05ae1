/* svlm probe SOURCE: print the streams of a source (codec, size, frame rate, duration). */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "pipeline/source.h"

static void usage(FILE *f) {
    fprintf(f, "usage: svlm probe SOURCE [--json] [--backend ffmpeg|gst|pattern|auto] [--transport tcp|udp] "
               "[--open-timeout S]\n");
}

static void print_json(const svlm_probe_info *info) {
    printf("{\"backend\":\"%s\",\"container\":", info->backend);
    cli_json_str(stdout, info->container, strlen(info->container));
    printf(",\"duration\":%.6f,\"bit_rate\":%lld,\"live\":%s,\"streams\":[", info->duration,
           (long long)info->bit_rate, info->live ? "true" : "false");
    for (int i = 0; i < info->n_streams; i++) {
        const svlm_stream_desc *d = &info->streams[i];
        printf("%s{\"index\":%d,\"type\":\"%s\",\"codec\":", i ? "," : "", d->index, d->type);
        cli_json_str(stdout, d->codec, strlen(d->codec));
        if (!strcmp(d->type, "video"))
            printf(",\"width\":%d,\"height\":%d,\"fps\":%.6f", d->width, d->height, d->fps);
        if (!strcmp(d->type, "audio"))
            printf(",\"sample_rate\":%d,\"channels\":%d", d->sample_rate, d->channels);
        printf(",\"duration\":%.6f}", d->duration);
    }
    printf("]}\n");
}

static void print_text(const char *uri, const svlm_probe_info *info) {
    printf("%s: %s (%s backend), duration %.3f s%s\n", uri, info->container, info->backend, info->duration,
           info->live ? ", live" : "");
    for (int i = 0; i < info->n_streams; i++) {
        const svlm_stream_desc *d = &info->streams[i];
        printf("  stream %d: %s %s", d->index, d->type, d->codec);
        if (!strcmp(d->type, "video")) printf(" %dx%d %.3f fps", d->width, d->height, d->fps);
        if (!strcmp(d->type, "audio")) printf(" %d Hz %d ch", d->sample_rate, d->channels);
        if (d->duration > 0) printf(" %.3f s", d->duration);
        printf("\n");
    }
}

int cmd_probe(int argc, char **argv) {
    svlm_source_opts opts;
    svlm_source_opts_default(&opts);
    const char *uri = NULL, *v;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json"))
            json = 1;
        else if (!strcmp(a, "--backend")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (svlm_backend_kind_parse(v, &opts.backend)) {
                fprintf(stderr, "svlm: --backend expects ffmpeg, gst, pattern or auto, got '%s'\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--transport")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!strcmp(v, "tcp"))
                opts.transport = SVLM_TRANSPORT_TCP;
            else if (!strcmp(v, "udp"))
                opts.transport = SVLM_TRANSPORT_UDP;
            else {
                fprintf(stderr, "svlm: --transport expects tcp or udp, got '%s'\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--open-timeout")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_float(a, v, 0.1, 3600, &opts.open_timeout_s))
                return 2;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "svlm: probe: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        } else if (!uri)
            uri = a;
        else {
            fprintf(stderr, "svlm: probe takes one SOURCE, got '%s' and '%s'\n", uri, a);
            return 2;
        }
    }
    if (!uri) {
        usage(stderr);
        return 2;
    }
    svlm_probe_info info;
    svlm_err err = {0};
    if (svlm_source_probe(uri, &opts, &info, &err) != SVLM_OK) {
        fprintf(stderr, "svlm: %s\n", err.msg);
        return 1;
    }
    if (json)
        print_json(&info);
    else
        print_text(uri, &info);
    return 0;
}
