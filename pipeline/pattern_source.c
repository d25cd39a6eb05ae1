/*
 * The built-in test pattern: moving colour bars with the frame number painted as a row of
 * 16 black/white cells (most significant bit first) along the top, so tests can read back
 * which frame they got. Needs no library; drawn directly at the output size.
 *   pattern:size=WxH,rate=FPS,duration=S,live
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "pipeline/source_backend.h"

typedef struct pattern_ctx {
    int width, height; /* native */
    int out_w, out_h;
    double rate, duration;
    int live;
    int64_t n; /* next frame number */
    double start_mono;
    svlm_ingest_ctl *ctl;
    svlm_sampler *sampler;
} pattern_ctx;

static svlm_status parse_params(pattern_ctx *p, const char *params, svlm_err *err) {
    p->width = 640;
    p->height = 480;
    p->rate = 25;
    p->duration = 10;
    char buf[SVLM_URI_MAX];
    snprintf(buf, sizeof buf, "%s", params);
    for (char *save = NULL, *tok = strtok_r(buf, ",&", &save); tok; tok = strtok_r(NULL, ",&", &save)) {
        char *val = strchr(tok, '=');
        if (val) *val++ = 0;
        char *end = NULL;
        if (!strcmp(tok, "live")) {
            p->live = !val || !strcmp(val, "1");
        } else if (!strcmp(tok, "size") && val) {
            long w = strtol(val, &end, 10), h = 0;
            if (end && *end == 'x') h = strtol(end + 1, &end, 10);
            if (!end || *end || w < 2 || h < 2 || w > 8192 || h > 8192)
                return svlm_fail(err, SVLM_E_INVALID,
                                 "pattern: size must be WxH from 2x2 to 8192x8192, got '%s'", val);
            p->width = (int)w;
            p->height = (int)h;
        } else if (!strcmp(tok, "rate") && val) {
            p->rate = strtod(val, &end);
            if (!end || *end || !(p->rate > 0 && p->rate <= 1000))
                return svlm_fail(err, SVLM_E_INVALID, "pattern: rate must be from 0 to 1000, got '%s'", val);
        } else if (!strcmp(tok, "duration") && val) {
            p->duration = strtod(val, &end);
            if (!end || *end || !(p->duration >= 0 && p->duration <= 1e7))
                return svlm_fail(err, SVLM_E_INVALID,
                                 "pattern: duration must be seconds >= 0 (0 = endless), got '%s'", val);
        } else {
            return svlm_fail(err, SVLM_E_INVALID,
                             "pattern: unknown parameter '%s' (known: size=WxH, rate=FPS, duration=S, live)",
                             tok);
        }
    }
    return SVLM_OK;
}

static svlm_status pattern_open(void **out, const svlm_backend_args *a, svlm_err *err) {
    pattern_ctx *p = calloc(1, sizeof *p);
    if (!p) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    svlm_status st = parse_params(p, a->uri->target, err);
    if (st != SVLM_OK) {
        free(p);
        return st;
    }
    svlm_output_size(a->opts, p->width, p->height, &p->out_w, &p->out_h);
    p->live = a->opts->live;
    p->ctl = a->ctl;
    p->sampler = a->sampler;
    p->start_mono = svlm_mono_now();
    *out = p;
    return SVLM_OK;
}

static void draw(int64_t n, svlm_frame *f) {
    static const uint8_t bars[8][3] = {{235, 235, 235}, {235, 235, 16}, {16, 235, 235}, {16, 235, 16},
                                       {235, 16, 235},  {235, 16, 16},  {16, 16, 235},  {16, 16, 16}};
    int shift = (int)(n * 4 % (f->width > 0 ? f->width : 1)); /* bars scroll 4 px per frame */
    int cell = f->width / 16 > 0 ? f->width / 16 : 1, cell_h = cell < f->height ? cell : f->height;
    for (int y = 0; y < f->height; y++) {
        uint8_t *row = f->data + (size_t)y * f->stride;
        for (int x = 0; x < f->width; x++) {
            const uint8_t *c = bars[((x + shift) % f->width) * 8 / f->width];
            uint8_t *px = row + 3 * x;
            if (y < cell_h && x / cell < 16) {
                uint8_t v = ((n >> (15 - x / cell)) & 1) ? 255 : 0;
                px[0] = px[1] = px[2] = v;
            } else {
                px[0] = c[0];
                px[1] = c[1];
                px[2] = c[2];
            }
        }
    }
}

static svlm_status pattern_read(void *ctx, svlm_frame *out, svlm_err *err) {
    pattern_ctx *p = ctx;
    for (;;) {
        double pts = (double)p->n / p->rate;
        if (p->duration > 0 && pts >= p->duration - 1e-9) return SVLM_E_END;
        if (p->live) {
            double wait = p->start_mono + pts - svlm_mono_now();
            if (wait > 0 && svlm_ctl_sleep(p->ctl, wait))
                return svlm_fail(err, SVLM_E_CANCELLED, "pattern: cancelled");
        }
        if (svlm_ctl_should_stop(p->ctl)) return svlm_ctl_stop_error(p->ctl, err, "pattern");
        int64_t n = p->n++;
        atomic_fetch_add(&p->ctl->decoded, 1);
        svlm_ctl_touch(p->ctl);
        double wall = svlm_wall_now();
        if (!svlm_sampler_take(p->sampler, pts, wall)) continue;
        svlm_status st = svlm_frame_alloc(out, p->out_w, p->out_h, err);
        if (st != SVLM_OK) return st;
        draw(n, out);
        out->pts = pts;
        out->wall = wall;
        return SVLM_OK;
    }
}

static void pattern_close(void *ctx) {
    free(ctx);
}

static svlm_status pattern_probe(const svlm_backend_args *a, svlm_probe_info *info, svlm_err *err) {
    pattern_ctx p;
    memset(&p, 0, sizeof p);
    svlm_status st = parse_params(&p, a->uri->target, err);
    if (st != SVLM_OK) return st;
    snprintf(info->container, sizeof info->container, "pattern");
    info->duration = p.duration;
    info->n_streams = 1;
    svlm_stream_desc *d = &info->streams[0];
    snprintf(d->type, sizeof d->type, "video");
    snprintf(d->codec, sizeof d->codec, "raw");
    d->width = p.width;
    d->height = p.height;
    d->fps = p.rate;
    d->duration = p.duration;
    return SVLM_OK;
}

const svlm_backend_ops svlm_pattern_backend = {"pattern", pattern_open, pattern_read, pattern_close,
                                               pattern_probe};
