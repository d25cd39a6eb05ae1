/*
 * svlm replay: the whole pipeline on a recording. Frames are sampled, encoded and appended to a
 * bounded stream context as they come; each --ask "T:QUESTION" is handed to a question thread
 * when the video reaches T seconds and answered from a fork while ingestion goes on.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "pipeline/source.h"
#include "pipeline/stream.h"
#include "text_model.h"
#include "vision/encoder.h"
#include "vision/preprocess.h"

enum { MAX_ASKS = 64 };

static void usage(FILE *f) {
    fprintf(f, "usage: svlm replay VIDEO -m TEXT_GGUF --mmproj MMPROJ_GGUF [--fps F] [--speed realtime|max]\n"
               "                   [--ask \"T:QUESTION\"]... [--max-tokens N] [--frames-window N]\n"
               "                   [--text-window N] [--threads K] [--json]\n"
               "  --ask T:Q          ask Q when the video reaches T seconds (repeatable)\n"
               "  --frames-window N  frames kept in the context (default 8)\n"
               "  --text-window N    dialogue tokens kept in the context (default 512)\n"
               "  --json             one line per answer, then one line of stream counters\n");
}

typedef struct ask_item {
    double t;
    const char *question;
    svlm_stream_fork *fork; /* taken at the frame the question is due, so replays repeat exactly */
} ask_item;

typedef struct replay {
    svlm_stream *stream;
    svlm_llama *model;
    svlm_kernels *kernels;
    ask_item asks[MAX_ASKS];
    int n_asks, n_due, max_tokens, json, finished, failed;
    pthread_mutex_t mu;
    pthread_cond_t cv;
} replay;

static int print_piece(void *user, int32_t id, const char *piece, size_t len) {
    (void)id;
    if (!((replay *)user)->json) fwrite(piece, 1, len, stdout), fflush(stdout);
    return 0;
}

/* Answers the questions in order as they become due. */
static void *question_thread(void *arg) {
    replay *r = arg;
    svlm_err err = {0};
    svlm_llama_ctx *ctx = NULL;
    if (svlm_llama_ctx_create(r->model, r->kernels, svlm_stream_ctx_size(r->stream), SVLM_F32, &ctx, &err)) {
        fprintf(stderr, "svlm: %s\n", err.msg);
        r->failed = 1;
        return NULL;
    }
    for (int next = 0; next < r->n_asks; next++) {
        pthread_mutex_lock(&r->mu);
        while (r->n_due <= next && !r->finished) pthread_cond_wait(&r->cv, &r->mu);
        pthread_mutex_unlock(&r->mu);
        const ask_item *a = &r->asks[next];
        if (!r->json) printf("\n[%.1f s] %s\n> ", a->t, a->question);
        char *answer = NULL;
        svlm_answer_metrics am;
        svlm_stream_fork *f = a->fork;
        r->asks[next].fork = NULL;
        if (!f || svlm_stream_ask_fork(r->stream, f, ctx, a->question, r->max_tokens, print_piece, r, &answer, &am,
                                       &err)) {
            if (!f) snprintf(err.msg, sizeof err.msg, "the stream could not be forked");
            fprintf(stderr, "svlm: question at %.1f s: %s\n", a->t, err.msg);
            r->failed = 1;
            continue;
        }
        if (r->json) {
            printf("{\"t\":%.3f,\"question\":", a->t);
            cli_json_str(stdout, a->question, strlen(a->question));
            printf(",\"answer\":");
            cli_json_str(stdout, answer, strlen(answer));
            printf(",\"tokens\":%d,\"ttft_ms\":%.3f,\"tokens_per_s\":%.1f,\"queue_ms\":%.3f,\"frames_during\":%lld}\n",
                   am.tokens, am.ttft_ms, am.tokens_per_s, am.wait_ms, (long long)am.frames_during);
        } else {
            printf("\n  (%d tokens, first after %.0f ms, %lld frames ingested meanwhile)\n", am.tokens, am.ttft_ms,
                   (long long)am.frames_during);
        }
        fflush(stdout);
        free(answer);
    }
    svlm_llama_ctx_free(ctx);
    return NULL;
}

static int cmp_ask(const void *a, const void *b) {
    double d = ((const ask_item *)a)->t - ((const ask_item *)b)->t;
    return d < 0 ? -1 : d > 0;
}

static void make_due(replay *r, double t) {
    pthread_mutex_lock(&r->mu);
    while (r->n_due < r->n_asks && r->asks[r->n_due].t <= t) {
        svlm_err err = {0};
        if (svlm_stream_fork_now(r->stream, &r->asks[r->n_due].fork, &err))
            fprintf(stderr, "svlm: question at %.1f s: %s\n", r->asks[r->n_due].t, err.msg);
        r->n_due++;
    }
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
}

/* Preprocesses and encodes one frame into embd [tokens_per_tile][n_embd]. */
static svlm_status encode_frame(const svlm_frame *f, const svlm_mmproj *mp, svlm_vision_ctx *vc, float *pixels,
                                float *embd, svlm_err *err) {
    svlm_image img = {0};
    svlm_status st = svlm_image_alloc(&img, f->width, f->height, err);
    if (st) return st;
    for (int y = 0; y < f->height; y++)
        memcpy(img.rgb + (size_t)y * f->width * 3, f->data + (size_t)y * f->stride, (size_t)f->width * 3);
    svlm_preproc_params pp = {.tile = mp->hp.image_size, .longest_edge = mp->hp.preproc_image_size};
    memcpy(pp.mean, mp->hp.image_mean, sizeof pp.mean);
    memcpy(pp.std, mp->hp.image_std, sizeof pp.std);
    st = svlm_preprocess_frame(&img, &pp, 512, pixels, err);
    if (!st) st = svlm_vision_encode(vc, pixels, 1, embd, err);
    svlm_image_free(&img);
    return st;
}

int cmd_replay(int argc, char **argv) {
    const char *video = NULL, *text_path = NULL, *mmproj_path = NULL;
    double fps = 1;
    long long threads = 0, max_tokens = 32, frames_window = 8, text_window = 512;
    int json = 0;
    svlm_pace pace = SVLM_PACE_MAX;
    replay r = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json")) {
            json = 1;
        } else if (a[0] != '-' && !video) {
            video = a;
        } else if (!(v = cli_value(argc, argv, &i))) {
            return 2;
        } else if (!strcmp(a, "-m") || !strcmp(a, "--model")) {
            text_path = v;
        } else if (!strcmp(a, "--mmproj")) {
            mmproj_path = v;
        } else if (!strcmp(a, "--fps")) {
            if (cli_float(a, v, 0.01, 240, &fps)) return 2;
        } else if (!strcmp(a, "--threads") || !strcmp(a, "-t")) {
            if (cli_int(a, v, 1, 1024, &threads)) return 2;
        } else if (!strcmp(a, "--max-tokens")) {
            if (cli_int(a, v, 1, 4096, &max_tokens)) return 2;
        } else if (!strcmp(a, "--frames-window")) {
            if (cli_int(a, v, 1, 4096, &frames_window)) return 2;
        } else if (!strcmp(a, "--text-window")) {
            if (cli_int(a, v, 16, 1 << 20, &text_window)) return 2;
        } else if (!strcmp(a, "--speed")) {
            if (!strcmp(v, "max")) pace = SVLM_PACE_MAX;
            else if (!strcmp(v, "realtime")) pace = SVLM_PACE_REALTIME;
            else {
                fprintf(stderr, "svlm: --speed expects realtime or max, got '%s'\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--ask")) {
            char *end;
            double t = strtod(v, &end);
            if (end == v || *end != ':' || !end[1] || !(t >= 0)) {
                fprintf(stderr, "svlm: --ask expects T:QUESTION (T in seconds), got '%s'\n", v);
                return 2;
            }
            if (r.n_asks == MAX_ASKS) {
                fprintf(stderr, "svlm: at most %d questions\n", MAX_ASKS);
                return 2;
            }
            r.asks[r.n_asks].t = t;
            r.asks[r.n_asks++].question = end + 1;
        } else {
            fprintf(stderr, "svlm replay: unknown option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!video || !text_path || !mmproj_path) {
        fprintf(stderr, "svlm replay: VIDEO, -m and --mmproj are required\n");
        usage(stderr);
        return 2;
    }
    qsort(r.asks, (size_t)r.n_asks, sizeof r.asks[0], cmp_ask);
    r.max_tokens = (int)max_tokens;
    r.json = json;
    pthread_mutex_init(&r.mu, NULL);
    pthread_cond_init(&r.cv, NULL);

    svlm_err err = {0};
    cli_text_model tm = {0};
    svlm_mmproj *mp = NULL;
    svlm_vision_ctx *vc = NULL;
    svlm_source *src = NULL;
    float *pixels = NULL, *embd = NULL;
    int rc = 1, thread_started = 0;
    pthread_t th;
    if (cli_text_model_open(&tm, text_path, (int)threads)) goto done;
    if (svlm_mmproj_load(mmproj_path, &mp, &err) || svlm_vision_ctx_create(mp, tm.kernels, 1, &vc, &err)) {
        fprintf(stderr, "svlm: cannot load the vision model: %s\n", err.msg);
        goto done;
    }
    const int E = svlm_llama_hparams_of(tm.model)->n_embd, T = mp->hp.tokens_per_tile, S = mp->hp.image_size;
    if (mp->hp.proj_dim != E) {
        fprintf(stderr, "svlm: the projector makes %d-wide embeddings, the text model takes %d\n", mp->hp.proj_dim, E);
        goto done;
    }
    pixels = malloc((size_t)3 * S * S * sizeof(float));
    embd = malloc((size_t)T * E * sizeof(float));
    if (!pixels || !embd) {
        fprintf(stderr, "svlm: out of memory\n");
        goto done;
    }
    /* a frame is its header ("\nFrame from MM:SS:", a few tokens) plus the image block */
    svlm_stream_params sp = {.sink_tokens = 64, .vision_tokens = (int)frames_window * (T + 24),
                             .text_tokens = (int)text_window, .answer_room = (int)max_tokens + 128,
                             .rows_per_frame = T, .kv_type = SVLM_F32};
    if (svlm_stream_create(tm.model, tm.kernels, &sp, "<|im_start|>System: You are watching a video.<end_of_utterance>\n",
                           &r.stream, &err)) {
        fprintf(stderr, "svlm: %s\n", err.msg);
        goto done;
    }
    svlm_source_opts so;
    svlm_source_opts_default(&so);
    so.fps = fps;
    so.pace = pace;
    so.live = 0;
    if (svlm_source_open(&src, video, &so, &err)) {
        fprintf(stderr, "svlm: %s\n", err.msg);
        goto done;
    }
    r.model = tm.model;
    r.kernels = tm.kernels;
    if (pthread_create(&th, NULL, question_thread, &r) != 0) {
        fprintf(stderr, "svlm: cannot start the question thread\n");
        goto done;
    }
    thread_started = 1;
    const int progress = !json && isatty(2);
    double t0 = cli_now(), video_t = 0, encode_ms = 0;
    for (;;) {
        svlm_source_item item;
        svlm_status st = svlm_source_next(src, &item, &err);
        if (st == SVLM_E_END) break;
        if (st) {
            fprintf(stderr, "svlm: %s\n", err.msg);
            goto done;
        }
        if (item.kind == SVLM_ITEM_EVENT) {
            for (int64_t i = 0; item.event.kind == SVLM_EVENT_DROP && i < item.event.count; i++)
                svlm_stream_note_drop(r.stream);
            continue;
        }
        video_t = item.frame.pts;
        double e0 = cli_now();
        st = encode_frame(&item.frame, mp, vc, pixels, embd, &err);
        encode_ms += (cli_now() - e0) * 1e3;
        if (!st) st = svlm_stream_add_frame(r.stream, video_t, embd, &err);
        svlm_frame_release(&item.frame);
        if (st) {
            fprintf(stderr, "svlm: frame at %.2f s: %s\n", video_t, err.msg);
            goto done;
        }
        make_due(&r, video_t); /* a question at T sees the frames up to T */
        if (progress) {
            svlm_stream_metrics m;
            svlm_stream_metrics_get(r.stream, &m);
            fprintf(stderr, "\r%7.1f s video, %lld frames, %.2fx real time   ", video_t, (long long)m.frames_in,
                    video_t / (cli_now() - t0 + 1e-9));
        }
    }
    make_due(&r, 1e300); /* questions past the end are asked at the end */
    pthread_mutex_lock(&r.mu);
    r.finished = 1;
    pthread_cond_broadcast(&r.cv);
    pthread_mutex_unlock(&r.mu);
    pthread_join(th, NULL);
    thread_started = 0;
    svlm_stream_metrics m;
    svlm_stream_metrics_get(r.stream, &m);
    double secs = cli_now() - t0;
    if (json) {
        printf("{\"frames\":%lld,\"drops\":%lld,\"tokens\":{\"sink\":%d,\"vision\":%d,\"text\":%d},"
               "\"evicted_spans\":%lld,\"evicted_tokens\":%lld,\"kv_bytes\":%zu,\"encode_ms_per_frame\":%.3f,"
               "\"prefill_ms_per_frame\":%.3f,\"questions\":%lld,\"video_s\":%.3f,\"seconds\":%.3f,\"fps\":%.2f}\n",
               (long long)m.frames_in, (long long)m.frames_dropped, m.tokens[SVLM_KV_SINK], m.tokens[SVLM_KV_VISION],
               m.tokens[SVLM_KV_TEXT], (long long)m.evicted_spans, (long long)m.evicted_tokens, m.kv_bytes,
               m.frames_in ? encode_ms / (double)m.frames_in : 0, m.prefill_ms_per_frame, (long long)m.questions,
               video_t, secs, (double)m.frames_in / (secs + 1e-9));
    } else {
        printf("\n%lld frames (%lld dropped) in %.2f s (%.1f frames/s), %zu bytes of KV\n", (long long)m.frames_in,
               (long long)m.frames_dropped, secs, (double)m.frames_in / (secs + 1e-9), m.kv_bytes);
    }
    rc = r.failed ? 1 : 0;
done:
    if (thread_started) { /* an ingest error: release the question thread, then wait for it */
        pthread_mutex_lock(&r.mu);
        r.n_due = r.n_asks;
        r.finished = 1;
        pthread_cond_broadcast(&r.cv);
        pthread_mutex_unlock(&r.mu);
        pthread_join(th, NULL);
    }
    svlm_source_close(src);
    for (int i = 0; i < r.n_asks; i++) svlm_stream_fork_free(r.asks[i].fork);
    svlm_stream_free(r.stream);
    svlm_vision_ctx_free(vc);
    svlm_mmproj_free(mp);
    free(pixels);
    free(embd);
    if (tm.model) cli_text_model_close(&tm);
    pthread_mutex_destroy(&r.mu);
    pthread_cond_destroy(&r.cv);
    return rc;
}
