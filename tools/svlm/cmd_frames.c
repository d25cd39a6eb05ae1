/* svlm frames SOURCE: deliver sampled RGB frames from any source, as JSON lines and/or PNGs. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>

#include "cli.h"
#include "pipeline/png_write.h"
#include "pipeline/source.h"

static svlm_source *volatile running_source;
static volatile sig_atomic_t stop_reason; /* 1 = interrupted, 2 = --duration elapsed */

static void on_signal(int sig) {
    stop_reason = sig == SIGALRM ? 2 : 1;
    svlm_source_cancel(running_source); /* async-signal-safe by contract */
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: svlm frames SOURCE [options]\n"
            "  SOURCE: file path, file://, rtsp://[user:pass@]host/..., http(s)://..., v4l2:///dev/videoN,\n"
            "          gst:LAUNCH, pattern:[size=WxH,rate=F,duration=S,live]\n"
            "  --fps F            sampling rate (default 1; 0 = every frame)\n"
            "  --max-frames N     stop after N frames\n"
            "  --duration S       stop after S seconds of wall-clock time\n"
            "  --speed realtime|max   pacing of a recording, or of a file read --live (default max)\n"
            "  --out DIR          write frame_NNNNNN.png files\n"
            "  --json             one JSON line per frame and per event\n"
            "  --backend ffmpeg|gst|pattern|auto\n"
            "  --size WxH | --max-edge N | --native   output size (default longest edge 512)\n"
            "  --live | --replay  override the URI's default\n"
            "  --transport tcp|udp    RTSP transport\n"
            "  --open-timeout S, --stall-timeout S (live watchdog, default 5), --reconnect-max N, --queue N\n"
            "  --verbose          let FFmpeg print its warnings\n");
}

static void mean_rgb(const svlm_frame *f, double m[3]) {
    double s[3] = {0, 0, 0};
    for (int y = 0; y < f->height; y++) {
        const uint8_t *row = f->data + (size_t)y * f->stride;
        for (int x = 0; x < f->width; x++)
            for (int c = 0; c < 3; c++)
                s[c] += row[3 * x + c];
    }
    double n = (double)f->width * f->height;
    for (int c = 0; c < 3; c++)
        m[c] = s[c] / n;
}

static void print_stats(const svlm_source *src, const char *reason, int json) {
    svlm_source_stats st;
    svlm_source_stats_get(src, &st);
    if (json)
        printf("{\"event\":\"stats\",\"reason\":\"%s\",\"decoded\":%lld,\"delivered\":%lld,\"dropped\":%lld,"
               "\"corrupt\":%lld,\"reconnects\":%lld}\n",
               reason, (long long)st.decoded, (long long)st.delivered, (long long)st.dropped,
               (long long)st.corrupt, (long long)st.reconnects);
    else
        fprintf(stderr,
                "svlm: %s: %lld decoded, %lld delivered, %lld dropped, %lld corrupt, %lld reconnects\n",
                reason, (long long)st.decoded, (long long)st.delivered, (long long)st.dropped,
                (long long)st.corrupt, (long long)st.reconnects);
}

static void print_event(const svlm_source_event *e, const svlm_source *src, int json) {
    static const char *names[] = {"?", "drop", "corrupt", "stall", "disconnect", "reconnect", "eos", "retry"};
    const char *name = e->kind >= 1 && e->kind <= SVLM_EVENT_RETRY ? names[e->kind] : "?";
    if (!json) {
        fprintf(stdout, "event %s count %lld total %lld%s%s\n", name, (long long)e->count,
                (long long)e->total, e->detail[0] ? ": " : "", e->detail);
        return;
    }
    printf("{\"event\":\"%s\"", name);
    switch (e->kind) {
    case SVLM_EVENT_DROP:
    case SVLM_EVENT_CORRUPT:
        printf(",\"count\":%lld,\"total\":%lld", (long long)e->count, (long long)e->total);
        break;
    case SVLM_EVENT_STALL: printf(",\"seconds\":%.3f", e->seconds); break;
    case SVLM_EVENT_RETRY:
        printf(",\"failed\":%lld,\"attempt\":%lld", (long long)e->count, (long long)e->total);
        break;
    case SVLM_EVENT_RECONNECT:
        printf(",\"attempts\":%lld,\"total\":%lld,\"downtime\":%.3f", (long long)e->count,
               (long long)e->total, e->seconds);
        break;
    case SVLM_EVENT_EOS: {
        svlm_source_stats st;
        svlm_source_stats_get(src, &st);
        printf(",\"decoded\":%lld,\"delivered\":%lld,\"corrupt\":%lld", (long long)st.decoded,
               (long long)st.delivered, (long long)st.corrupt);
        break;
    }
    default: break;
    }
    if (e->detail[0]) {
        printf(",\"detail\":");
        cli_json_str(stdout, e->detail, strlen(e->detail));
    }
    printf("}\n");
}

static int parse_size(const char *s, int *w, int *h) {
    char *end;
    long a = strtol(s, &end, 10);
    if (*end != 'x') return -1;
    long b = strtol(end + 1, &end, 10);
    if (*end || a < 1 || b < 1 || a > 16384 || b > 16384) return -1;
    *w = (int)a;
    *h = (int)b;
    return 0;
}

int cmd_frames(int argc, char **argv) {
    svlm_source_opts opts;
    svlm_source_opts_default(&opts);
    const char *uri = NULL, *out_dir = NULL;
    long long max_frames = -1, ll;
    double duration = 0;
    int json = 0, verbose = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json"))
            json = 1;
        else if (!strcmp(a, "--verbose"))
            verbose = 1;
        else if (!strcmp(a, "--native"))
            opts.max_edge = 0;
        else if (!strcmp(a, "--live"))
            opts.live = 1;
        else if (!strcmp(a, "--replay"))
            opts.live = 0;
        else if (!strcmp(a, "--fps")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_float(a, v, 0, 1000, &opts.fps)) return 2;
        } else if (!strcmp(a, "--max-frames")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_int(a, v, 0, INT64_MAX, &max_frames)) return 2;
        } else if (!strcmp(a, "--duration")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_float(a, v, 0.001, 1e6, &duration)) return 2;
        } else if (!strcmp(a, "--speed")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (!strcmp(v, "realtime"))
                opts.pace = SVLM_PACE_REALTIME;
            else if (!strcmp(v, "max"))
                opts.pace = SVLM_PACE_MAX;
            else {
                fprintf(stderr, "svlm: --speed expects realtime or max, got '%s'\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--out")) {
            if (!(out_dir = cli_value(argc, argv, &i))) return 2;
        } else if (!strcmp(a, "--backend")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (svlm_backend_kind_parse(v, &opts.backend)) {
                fprintf(stderr, "svlm: --backend expects ffmpeg, gst, pattern or auto, got '%s'\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--size")) {
            if (!(v = cli_value(argc, argv, &i))) return 2;
            if (parse_size(v, &opts.width, &opts.height)) {
                fprintf(stderr, "svlm: --size expects WxH (1 to 16384 each), got '%s'\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--max-edge")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_int(a, v, 0, 16384, &ll)) return 2;
            opts.max_edge = (int)ll;
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
        } else if (!strcmp(a, "--stall-timeout")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_float(a, v, 0, 3600, &opts.stall_timeout_s)) return 2;
        } else if (!strcmp(a, "--reconnect-max")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_int(a, v, -1, 1000000, &ll)) return 2;
            opts.max_reconnects = (int)ll;
        } else if (!strcmp(a, "--queue")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_int(a, v, 1, 1024, &ll)) return 2;
            opts.queue_frames = (int)ll;
        } else if (a[0] == '-' && a[1]) {
            fprintf(stderr, "svlm: frames: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        } else if (!uri)
            uri = a;
        else {
            fprintf(stderr, "svlm: frames takes one SOURCE, got '%s' and '%s'\n", uri, a);
            return 2;
        }
    }
    if (!uri) {
        usage(stderr);
        return 2;
    }
    svlm_source_library_log(verbose);

    svlm_err err = {0};
    svlm_source *src = NULL;
    if (svlm_source_open(&src, uri, &opts, &err) != SVLM_OK) {
        fprintf(stderr, "svlm: %s\n", err.msg);
        return 1;
    }
    /* (made once the source opened: a source that fails leaves no empty folder behind) */
    int out_err = out_dir && mkdir(out_dir, 0755) ? errno : 0;
    struct stat sb;
    if (out_err == EEXIST) /* a folder already there is fine; a file is not */
        out_err = stat(out_dir, &sb) == 0 && S_ISDIR(sb.st_mode) ? 0 : ENOTDIR;
    if (out_err) {
        fprintf(stderr, "svlm: cannot create %s: %s\n", out_dir, strerror(out_err));
        svlm_source_close(src);
        return 1;
    }
    running_source = src;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGALRM, &sa, NULL);
    if (duration > 0) {
        struct itimerval t = {{0, 0},
                              {(time_t)duration, (suseconds_t)((duration - (double)(time_t)duration) * 1e6)}};
        setitimer(ITIMER_REAL, &t, NULL);
    }

    int rc = 0;
    const char *reason = "eos";
    int64_t frames = 0;
    while (max_frames < 0 || frames < max_frames) {
        svlm_source_item item;
        svlm_status st = svlm_source_next(src, &item, &err);
        if (st == SVLM_E_END) break;
        if (st == SVLM_E_CANCELLED) {
            reason = stop_reason == 2 ? "duration" : "interrupted";
            break;
        }
        if (st != SVLM_OK) {
            if (json) {
                printf("{\"event\":\"error\",\"status\":\"%s\",\"message\":", svlm_status_str(st));
                cli_json_str(stdout, err.msg, strlen(err.msg));
                printf("}\n");
            }
            fprintf(stderr, "svlm: %s\n", err.msg);
            reason = "error";
            rc = 1;
            break;
        }
        if (item.kind == SVLM_ITEM_EVENT) {
            print_event(&item.event, src, json);
            fflush(stdout);
            continue;
        }
        svlm_frame *f = &item.frame;
        char path[4096] = "";
        if (out_dir) {
            snprintf(path, sizeof path, "%s/frame_%06lld.png", out_dir, (long long)f->index);
            if (svlm_png_write(path, f, &err) != SVLM_OK) {
                fprintf(stderr, "svlm: %s\n", err.msg);
                svlm_frame_release(f);
                rc = 1;
                reason = "error";
                break;
            }
        }
        double m[3];
        mean_rgb(f, m);
        if (json) {
            printf("{\"index\":%lld,\"pts\":%.6f,\"wall\":%.6f,\"width\":%d,\"height\":%d,\"mean\":[%.2f,%."
                   "2f,%.2f]",
                   (long long)f->index, f->pts, f->wall, f->width, f->height, m[0], m[1], m[2]);
            if (path[0]) {
                printf(",\"file\":");
                cli_json_str(stdout, path, strlen(path));
            }
            printf("}\n");
        } else {
            printf("frame %lld pts %.3f %dx%d%s%s\n", (long long)f->index, f->pts, f->width, f->height,
                   path[0] ? " " : "", path);
        }
        fflush(stdout);
        svlm_frame_release(f);
        frames++;
    }
    if (max_frames >= 0 && frames >= max_frames) reason = "max-frames";
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_REAL, &off, NULL);
    print_stats(src, reason, json);
    running_source = NULL;
    svlm_source_close(src);
    return rc;
}
