/*
 * svlm bench-vision SOURCE... --mmproj MMPROJ: the vision stage on real video, with and without
 * streaming token compression. Every sampled frame is encoded twice, through STC and through the
 * plain encoder (the full recompute), so the time of each and the fidelity of the cached output
 * come from the same frames.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "pipeline/source.h"
#include "vision/encoder.h"
#include "vision/mmproj.h"
#include "vision/preprocess.h"
#include "vision/stc.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: svlm bench-vision SOURCE... --mmproj MMPROJ [--stc on|off] [--fps F] [--max-frames N]\n"
            "                         [--threads K] [--backend B] [--json] [--stc-NAME VALUE ...]\n"
            "  SOURCE          recordings or any svlm source URI; one result per source\n"
            "  --fps F         sampling rate (default 1; 0 = every frame)\n"
            "  --max-frames N  frames per source (default: all)\n"
            "  --stc off       time the plain encoder only (every token to the decoder)\n"
            "  --per-frame     one line per frame on stderr (path, refresh reason, change, tokens, "
            "fidelity)\n" CLI_BACKEND_HELP "STC controls (defaults in brackets):\n");
    svlm_stc_controls d;
    svlm_stc_controls_default(&d);
    int n;
    const svlm_stc_control_desc *list = svlm_stc_control_list(&n);
    for (int i = 0; i < n; i++)
        fprintf(f, "  --stc-%-18s %s [%g]\n", list[i].name, list[i].help,
                svlm_stc_control_get(&d, list[i].name));
}

typedef struct clip_stats {
    int frames, reused, partial, full, cuts;
    int64_t recomputed, patches, kept, tokens;
    int refresh[SVLM_STC_UNCACHED + 1];
    double full_s, stc_s;
    double cos_sum, cos_min, cut_cos_min, prev_cos_sum;
    int64_t cos_n, prev_cos_n;
} clip_stats;

static double cosine(const float *a, const float *b, int n) {
    double ab = 0, aa = 0, bb = 0;
    for (int i = 0; i < n; i++) {
        ab += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    return aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : (aa == bb ? 1.0 : 0.0);
}

typedef struct bench {
    const svlm_mmproj *mp;
    svlm_vision_ctx *vc;
    svlm_stc_controls ctl;
    int frame_edge;
    float *pixels, *full, *stc_out, *prev_full, *kept_tok;
    int32_t *kept;
    int per_frame; /* print one line per frame to stderr */
} bench;

/* One frame through STC and the plain encoder. */
static int bench_frame(bench *b, svlm_stc *stc, const svlm_frame *f, int have_prev, clip_stats *cs,
                       svlm_err *err) {
    const svlm_mmproj_hparams *hp = &b->mp->hp;
    svlm_image img = {0};
    if (svlm_image_alloc(&img, f->width, f->height, err)) return -1;
    for (int y = 0; y < f->height; y++)
        memcpy(img.rgb + (size_t)y * f->width * 3, f->data + (size_t)y * f->stride, (size_t)f->width * 3);
    svlm_preproc_params pp = {.tile = hp->image_size, .longest_edge = hp->image_size};
    memcpy(pp.mean, hp->image_mean, sizeof pp.mean);
    memcpy(pp.std, hp->image_std, sizeof pp.std);
    svlm_status st = svlm_preprocess_frame(&img, &pp, b->frame_edge, b->pixels, err);
    svlm_image_free(&img);
    if (st) return -1;

    int T = hp->tokens_per_tile, E = hp->proj_dim;
    svlm_stc_frame_info info = {0};
    double t0 = cli_now();
    if (b->ctl.enabled && svlm_stc_frame(stc, b->pixels, b->stc_out, b->kept, b->kept_tok, &info, err))
        return -1;
    double t1 = cli_now();
    if (svlm_vision_encode(b->vc, b->pixels, 1, b->full, err)) return -1;
    double t2 = cli_now();
    cs->frames++;
    cs->full_s += t2 - t1;
    cs->tokens += T;
    cs->patches += hp->n_patches;
    if (!b->ctl.enabled) {
        cs->kept += T;
        cs->recomputed += hp->n_patches;
        return 0;
    }
    cs->stc_s += t1 - t0;
    cs->kept += info.n_kept;
    cs->recomputed += info.n_recomputed;
    cs->reused += info.path == SVLM_STC_REUSED;
    cs->partial += info.path == SVLM_STC_PARTIAL;
    cs->full += info.path == SVLM_STC_FULL;
    if (info.path == SVLM_STC_FULL) cs->refresh[info.reason]++;
    double frame_min = 1.0;
    for (int t = 0; t < T; t++) {
        double c = cosine(b->stc_out + (size_t)t * E, b->full + (size_t)t * E, E);
        cs->cos_sum += c;
        cs->cos_n++;
        frame_min = fmin(frame_min, c);
        if (have_prev) {
            cs->prev_cos_sum += cosine(b->prev_full + (size_t)t * E, b->full + (size_t)t * E, E);
            cs->prev_cos_n++;
        }
    }
    cs->cos_min = fmin(cs->cos_min, frame_min);
    if (b->per_frame)
        fprintf(stderr,
                "frame %d pts %.2f: %s%s%s recomputed %d/%d changed-vs-prev %.3f (mean %.3f, colour %.3f) "
                "drift %.4f kept %d/%d min cos %.4f (%.1f / %.1f ms)\n",
                cs->frames - 1, f->pts,
                info.path == SVLM_STC_FULL     ? "full ("
                : info.path == SVLM_STC_REUSED ? "reused"
                                               : "partial",
                info.path == SVLM_STC_FULL ? svlm_stc_reason_name(info.reason) : "",
                info.path == SVLM_STC_FULL ? ")" : "", info.n_recomputed, info.n_patches,
                info.changed_vs_prev, info.change_vs_prev, info.colour_change, info.drift, info.n_kept, T,
                frame_min, (t1 - t0) * 1e3, (t2 - t1) * 1e3);
    if (info.cut) {
        cs->cuts++;
        cs->cut_cos_min = fmin(cs->cut_cos_min, frame_min);
    }
    memcpy(b->prev_full, b->full, sizeof(float) * (size_t)T * E);
    return 0;
}

static int bench_source(bench *b, const char *uri, double fps, long long max_frames, clip_stats *cs) {
    svlm_err err = {0};
    svlm_source_opts opts;
    svlm_source_opts_default(&opts);
    opts.fps = fps;
    svlm_source *src = NULL;
    svlm_stc *stc = NULL;
    memset(cs, 0, sizeof *cs);
    cs->cos_min = cs->cut_cos_min = 1.0;
    if (svlm_source_open(&src, uri, &opts, &err) ||
        (b->ctl.enabled && svlm_stc_create(b->vc, &b->ctl, &stc, &err))) {
        fprintf(stderr, "svlm: %s: %s\n", uri, err.msg);
        svlm_source_close(src);
        return -1;
    }
    int rc = 0;
    while (max_frames < 0 || cs->frames < max_frames) {
        svlm_source_item item;
        svlm_status st = svlm_source_next(src, &item, &err);
        if (st == SVLM_E_END) break;
        if (st) {
            fprintf(stderr, "svlm: %s: %s\n", uri, err.msg);
            rc = -1;
            break;
        }
        if (item.kind != SVLM_ITEM_FRAME) { /* after a break, no frame compares with one before it */
            const svlm_source_event_kind ek = item.event.kind;
            if (stc && (ek == SVLM_EVENT_DISCONNECT || ek == SVLM_EVENT_RECONNECT)) svlm_stc_reset(stc);
            continue;
        }
        int r = bench_frame(b, stc, &item.frame, cs->frames > 0, cs, &err);
        svlm_frame_release(&item.frame);
        if (r) {
            fprintf(stderr, "svlm: %s: %s\n", uri, err.msg);
            rc = -1;
            break;
        }
    }
    svlm_stc_free(stc);
    svlm_source_close(src);
    if (!rc && cs->frames == 0) {
        fprintf(stderr, "svlm: %s: no frames\n", uri);
        rc = -1;
    }
    return rc;
}

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

static void print_clip(const char *uri, const clip_stats *c, int stc_on, int json, int first) {
    double n = c->frames, full_ms = c->full_s * 1e3 / n, stc_ms = c->stc_s * 1e3 / n;
    double recomputed = (double)c->recomputed / (double)c->patches, tok = (double)c->kept / n;
    double tok_saved = 1.0 - (double)c->kept / (double)c->tokens;
    double cos_mean = c->cos_n ? c->cos_sum / (double)c->cos_n : 1.0;
    double prev_cos = c->prev_cos_n ? c->prev_cos_sum / (double)c->prev_cos_n : NAN;
    if (json) {
        printf("%s{\"source\":", first ? "" : ",");
        cli_json_str(stdout, uri, strlen(uri));
        printf(",\"stc\":%s,\"frames\":%d,\"full_ms_per_frame\":%.3f", stc_on ? "true" : "false", c->frames,
               full_ms);
        if (stc_on) {
            printf(",\"stc_ms_per_frame\":%.3f,\"encoder_time_saved\":%.4f,\"recomputed_share\":%.4f,"
                   "\"frames_reused\":%d,\"frames_partial\":%d,\"frames_full\":%d,\"refresh\":{",
                   stc_ms, 1.0 - stc_ms / full_ms, recomputed, c->reused, c->partial, c->full);
            for (int r = SVLM_STC_FIRST; r <= SVLM_STC_UNCACHED; r++)
                printf("%s\"%s\":%d", r > SVLM_STC_FIRST ? "," : "", svlm_stc_reason_name((svlm_stc_reason)r),
                       c->refresh[r]);
            printf("},\"cuts\":%d,\"cos_mean\":%.5f,\"cos_min\":%.5f,", c->cuts, cos_mean, c->cos_min);
            if (c->cuts) printf("\"cut_cos_min\":%.5f,", c->cut_cos_min);
            if (!isnan(prev_cos)) printf("\"prev_frame_cos_mean\":%.5f,", prev_cos);
        } else {
            printf(",");
        }
        printf("\"tokens_per_frame\":%.2f,\"tokens_full\":%lld,\"tokens_saved\":%.4f}", tok,
               (long long)(c->tokens / c->frames), tok_saved);
        return;
    }
    if (first)
        printf("%-34s %6s %9s %9s %6s %7s %6s %5s %9s %7s %7s %7s %7s\n", "source", "frames", "full ms",
               "stc ms", "saved", "recomp", "reused", "cuts", "tok/frame", "tok-", "cos", "cosmin", "cutmin");
    if (!stc_on) {
        printf("%-34s %6d %9.1f %9s %6s %7s %6s %5s %9.1f %7s %7s %7s %7s\n", base_name(uri), c->frames,
               full_ms, "-", "-", "100%", "-", "-", tok, "0%", "-", "-", "-");
        return;
    }
    char cut[16] = "-";
    if (c->cuts) snprintf(cut, sizeof cut, "%.4f", c->cut_cos_min);
    printf("%-34s %6d %9.1f %9.1f %5.1f%% %6.1f%% %6d %5d %9.1f %6.1f%% %7.4f %7.4f %7s\n", base_name(uri),
           c->frames, full_ms, stc_ms, 100 * (1 - stc_ms / full_ms), 100 * recomputed, c->reused, c->cuts,
           tok, 100 * tok_saved, cos_mean, c->cos_min, cut);
}

int cmd_bench_vision(int argc, char **argv) {
    const char *mmproj = NULL, *backend = NULL;
    const char **sources = calloc((size_t)argc, sizeof(char *));
    int n_src = 0, json = 0, rc = 2;
    long long threads = 0, max_frames = -1;
    double fps = 1.0;
    bench b = {0};
    svlm_stc_controls_default(&b.ctl);
    svlm_err err = {0};
    svlm_kernels *k = NULL;
    svlm_mmproj *mp = NULL;
    if (!sources) return 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            rc = 0;
            goto done;
        } else if (!strcmp(a, "--json")) {
            json = 1;
        } else if (!strcmp(a, "--per-frame")) {
            b.per_frame = 1;
        } else if (a[0] != '-' || !a[1]) {
            sources[n_src++] = a;
        } else if (!(v = cli_value(argc, argv, &i))) {
            goto done;
        } else if (!strcmp(a, "--mmproj")) {
            mmproj = v;
        } else if (!strcmp(a, "--fps")) {
            if (cli_float(a, v, 0, 1000, &fps)) goto done;
        } else if (!strcmp(a, "--max-frames")) {
            if (cli_int(a, v, 1, 1 << 30, &max_frames)) goto done;
        } else if (!strcmp(a, "--threads") || !strcmp(a, "-t")) {
            if (cli_int(a, v, 1, 1024, &threads)) goto done;
        } else if (!strcmp(a, "--backend")) {
            if (cli_backend(a, v)) goto done;
            backend = v;
        } else if (!strcmp(a, "--stc") || !strncmp(a, "--stc-", 6)) {
            if (svlm_stc_control_set(&b.ctl, a[5] ? a + 6 : "stc", v, &err)) {
                fprintf(stderr, "svlm: %s: %s\n", a, err.msg);
                goto done;
            }
        } else {
            fprintf(stderr, "svlm bench-vision: unknown option '%s'\n", a);
            usage(stderr);
            goto done;
        }
    }
    if (!mmproj || !n_src) {
        fprintf(stderr, "svlm bench-vision: a SOURCE and --mmproj are required\n");
        usage(stderr);
        goto done;
    }
    rc = 1;
    if (svlm_mmproj_load(mmproj, &mp, &err) || svlm_kernels_create_named(backend, (int)threads, &k, &err) ||
        svlm_vision_ctx_create(mp, k, 1, &b.vc, &err)) {
        fprintf(stderr, "svlm: %s\n", err.msg);
        goto done;
    }
    b.mp = mp;
    b.frame_edge = mp->hp.image_size;
    size_t S = (size_t)mp->hp.image_size, TE = (size_t)mp->hp.tokens_per_tile * (size_t)mp->hp.proj_dim;
    b.pixels = malloc(sizeof(float) * 3 * S * S);
    b.full = malloc(sizeof(float) * TE);
    b.stc_out = malloc(sizeof(float) * TE);
    b.prev_full = malloc(sizeof(float) * TE);
    b.kept_tok = malloc(sizeof(float) * TE);
    b.kept = malloc(sizeof(int32_t) * (size_t)mp->hp.tokens_per_tile);
    if (!b.pixels || !b.full || !b.stc_out || !b.prev_full || !b.kept_tok || !b.kept) {
        fprintf(stderr, "svlm: out of memory\n");
        goto done;
    }
    if (json) {
        printf("{\"mmproj\":");
        cli_json_str(stdout, mmproj, strlen(mmproj));
        printf(",\"backend\":\"%s\",\"fps\":%g,\"clips\":[", svlm_kernels_name(k), fps);
    } else
        printf("mmproj %s, %s, %g fps, STC %s\n", base_name(mmproj), svlm_kernels_name(k), fps,
               b.ctl.enabled ? "on" : "off");
    rc = 0;
    for (int i = 0, printed = 0; i < n_src; i++) {
        clip_stats cs;
        if (bench_source(&b, sources[i], fps, max_frames, &cs)) {
            rc = 1;
            continue;
        }
        print_clip(sources[i], &cs, b.ctl.enabled, json, printed++ == 0);
        fflush(stdout);
    }
    if (json) printf("]}\n");
done:
    free(b.pixels);
    free(b.full);
    free(b.stc_out);
    free(b.prev_full);
    free(b.kept_tok);
    free(b.kept);
    svlm_vision_ctx_free(b.vc);
    svlm_kernels_destroy(k);
    svlm_mmproj_free(mp);
    free(sources);
    return rc;
}
