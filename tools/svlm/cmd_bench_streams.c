/*
 * svlm bench-streams: N live streams on one engine (pipeline/stream_engine.h), each fed F frames
 * per second of its own moving picture drawn in-process (no video library needed), with questions
 * arriving at a steady rate. After a warmup it measures for S seconds and reports whether the
 * engine keeps up: frames ingested per stream per second, drops, time to first token percentiles,
 * answer tokens per second and how busy each lane was.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "common/err.h"
#include "stream_flags.h"
#include "pipeline/source_backend.h" /* svlm_frame_alloc, svlm_wall_now */
#include "pipeline/stream_engine.h"

enum { FRAME_W = 640, FRAME_H = 480, BOX = 96, MAX_STREAMS = 1024 };
#define TTFT_TARGET_MS 250.0 /* the verdict's bounds: p99 time to first token ... */
#define FPS_SHARE      0.95  /* ... and the share of the target frame rate ingested */
#define SYSTEM_PROMPT  "<|im_start|>System: You are watching a live video.<end_of_utterance>\n"

static void usage(FILE *f) {
    fprintf(
        f,
        "usage: svlm bench-streams -m TEXT_GGUF --mmproj MMPROJ_GGUF [--streams N] [--fps F]\n"
        "                          [--duration S] [--warmup W] [--question-tokens Q] [--answer-tokens A]\n"
        "                          [--ask-every SEC] [--threads K] [--decode-batch B] [--ingest-batch B]\n"
        "                          [--max-waiting W]\n"
        "                          [--backend B] [--no-stc] [--drain-max SEC] [--progress] [--json]\n"
        "                          [stream controls]\n"
        "N streams each get F frames per second (%dx%d, drawn in-process, a moving box per stream;\n"
        "live: a full queue drops its oldest frame) and a question every SEC seconds, spread evenly.\n"
        "  --streams N          streams on the engine, 1..%d (default 1)\n"
        "  --fps F              frames per second per stream (default 1)\n"
        "  --duration S         seconds measured (default 30), after --warmup W seconds (default 5)\n"
        "  --question-tokens Q  question length in the model's tokens (default 20)\n"
        "  --answer-tokens A    greedy answer tokens at most (default 8)\n"
        "  --ask-every SEC      seconds between one stream's questions (default 10; 0: none)\n"
        "  --threads K          kernel threads of each lane, ingest and answer (default 1)\n"
        "  --decode-batch B     answers decoded together in one step (default 16)\n"
        "  --ingest-batch B     frames of different streams encoded together (default 0: 32 on a GPU,\n"
        "                       1 on the CPU)\n"
        "  --max-waiting W      a question due while its stream already has W unanswered is skipped\n"
        "                       and counted (default 8): an engine that falls behind does not queue\n"
        "                       questions without end\n"
        "  --no-stc             no token compression (the same as --stc off)\n"
        "  --drain-max SEC      after the window, wait at most this long for the queues (default 30)\n"
        "  --progress           a line on stderr each second (the default when stderr is a terminal)\n"
        "  --json               the report as one JSON object\n" CLI_BACKEND_HELP
        "Keeps up: frames per stream per second >= %.2f x F and p99 time to first token < %.0f ms, with\n"
        "every question of the window asked and answered.\n",
        FRAME_W, FRAME_H, MAX_STREAMS, FPS_SHARE, TTFT_TARGET_MS);
    stream_flags_usage(f);
}

typedef struct bench_args {
    const char *model, *mmproj, *backend;
    long long streams, question_tokens, answer_tokens, threads, decode_batch, ingest_batch, max_waiting;
    double fps, duration, warmup, ask_every, drain_max;
    int json, progress;
    stream_flags sf; /* (with the KV cache type) */
} bench_args;

typedef struct samples {
    double *v;
    size_t n, cap;
} samples;

/* Counters by phase: [0] questions asked during the warmup, [1] in the measured window. */
typedef struct bench {
    pthread_mutex_t mu; /* done callbacks run on the answer lane */
    samples ttft[2];    /* ms, answered questions */
    int64_t asked[2], started[2], answered[2], failed[2], cancelled[2]; /* started: a first token came */
    int64_t skipped[2];     /* due while their stream had max_waiting unanswered: not asked */
    int *waiting;           /* per stream: asked, not yet done */
    int64_t copied[2];      /* answered ones whose context copied the stream's window at the fork */
    int64_t window_tokens;  /* tokens of answers that ended inside the window */
    int64_t window_answers; /* and how many answers those were */
    double rate_sum;        /* per-answer decode rates, measured questions */
    double t_win0, t_win1;  /* the window, monotonic seconds */
    char first_err[256];
} bench;

typedef struct q_rec {
    bench *b;
    int measured, started, stream;
} q_rec;

typedef struct result {
    double secs, lag_max_ms, drain_s;
    int64_t frames, pushed, drops, stream_min, stream_max; /* frames: all streams; one stream's */
    double fps_per_stream, fps_share, ingest_busy, answer_busy, tok_s, tok_s_per_answer, answer_len;
    double p50, p90, p99, max;
    int64_t asked, started, answered, failed, unanswered, copied, skipped;
    double encode_ms, prefill_ms; /* ingest cost of a frame, mean over every frame so far */
    double ingest_batch_mean;     /* frames per encoder batch of 2+ streams in the window */
    double ingest_batch_share;    /* share of the window's frames encoded in such batches */
    double ingest_ahead_share;    /* share of the window's batches preprocessed ahead */
    /* op calls in the window (the null backend counts them: a GPU's launches and transfers) per
     * frame ingested and per answer token (question starts included); 0 where not counted */
    uint64_t ingest_ops, answer_ops;
    double ops_per_frame, ops_per_token;
    int question_tokens, keeps_up;
    int64_t memory_waits; /* question starts that waited for a running answer's memory */
    int answers_max;      /* the most answers running at once, since the start */
    size_t kv_per_stream, bank_per_stream, rss;
    svlm_dtype kv; /* the streams' KV cache type */
    /* device memory (svlm_kernels_device_memory): in use once the first stream was added (its
     * system prompt's prefill uploaded the weights and made the backends' workspaces), once all
     * were, at the end (answers' contexts, copies made on first use), the device's size (0:
     * unknown); dev_known 0 where the buffers are host memory */
    size_t dev_one, dev_streams, dev_end, dev_total;
    int dev_known;
    /* token compression over every frame so far (stc_frames 0: off): shares of the patches
     * recomputed and of the frames reused outright, partial and full; tokens kept a frame of
     * stc_tokens */
    int64_t stc_frames;
    double stc_recomputed, stc_reused, stc_partial, stc_full, stc_kept, stc_tokens;
} result;

/* The device memory each stream after the first took (NAN with one stream), and how many such
 * streams the device holds beside what the run needed besides them (the CUDA backend keeps a
 * tenth of the device free). */
static double dev_per_stream(const result *r, int64_t n) {
    if (n < 2) return NAN;
    return r->dev_streams > r->dev_one ? (double)(r->dev_streams - r->dev_one) / (double)(n - 1) : 0;
}
static double dev_streams_fit(const result *r, int64_t n) {
    const double per = dev_per_stream(r, n), rest = (double)r->dev_end - per * (double)n;
    if (!r->dev_total || !(per > 0)) return NAN;
    const double fit = floor((0.9 * (double)r->dev_total - rest) / per);
    return fit > 0 ? fit : 0;
}

/* ---- flags ---- */

static void args_default(bench_args *a) {
    memset(a, 0, sizeof *a);
    a->streams = 1;
    a->fps = 1;
    a->duration = 30;
    a->warmup = 5;
    a->question_tokens = 20;
    a->answer_tokens = 8;
    a->ask_every = 10;
    a->threads = 1;
    a->decode_batch = 16;
    a->drain_max = 30;
    a->max_waiting = 8;
    stream_flags_default(&a->sf);
}

static int takes_value(const char *f) {
    static const char *const flags[] = {"-m",
                                        "--model",
                                        "--mmproj",
                                        "--backend",
                                        "--max-waiting",
                                        "--streams",
                                        "--threads",
                                        "-t",
                                        "--fps",
                                        "--duration",
                                        "--warmup",
                                        "--question-tokens",
                                        "--answer-tokens",
                                        "--ask-every",
                                        "--decode-batch",
                                        "--ingest-batch",
                                        "--drain-max"};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        if (!strcmp(f, flags[i])) return 1;
    return 0;
}

/* One flag of takes_value with its value; 0, or -1 after printing the error. */
static int parse_value(bench_args *a, const char *f, const char *v) {
    if (!strcmp(f, "-m") || !strcmp(f, "--model")) {
        a->model = v;
        return 0;
    }
    if (!strcmp(f, "--mmproj")) {
        a->mmproj = v;
        return 0;
    }
    if (!strcmp(f, "--backend")) {
        a->backend = v;
        return cli_backend(f, v);
    }
    if (!strcmp(f, "--max-waiting")) return cli_int(f, v, 1, 1 << 20, &a->max_waiting);
    if (!strcmp(f, "--streams")) return cli_int(f, v, 1, MAX_STREAMS, &a->streams);
    if (!strcmp(f, "--question-tokens")) return cli_int(f, v, 1, 1024, &a->question_tokens);
    if (!strcmp(f, "--answer-tokens")) return cli_int(f, v, 1, 1024, &a->answer_tokens);
    if (!strcmp(f, "--threads") || !strcmp(f, "-t")) return cli_int(f, v, 1, 1024, &a->threads);
    if (!strcmp(f, "--decode-batch")) return cli_int(f, v, 1, 1024, &a->decode_batch);
    if (!strcmp(f, "--ingest-batch")) return cli_int(f, v, 0, 64, &a->ingest_batch);
    if (!strcmp(f, "--fps")) return cli_float(f, v, 0.01, 120, &a->fps);
    if (!strcmp(f, "--duration")) return cli_float(f, v, 0.1, 86400, &a->duration);
    if (!strcmp(f, "--warmup")) return cli_float(f, v, 0, 3600, &a->warmup);
    if (!strcmp(f, "--ask-every")) {
        if (cli_float(f, v, 0, 86400, &a->ask_every)) return -1;
        if (a->ask_every > 0 && a->ask_every < 0.01) {
            fprintf(stderr, "svlm: --ask-every expects 0 (no questions) or at least 0.01 s, got '%s'\n", v);
            return -1;
        }
        return 0;
    }
    return cli_float(f, v, 0, 3600, &a->drain_max); /* --drain-max */
}

/* 0: run, 1: help printed, -1: bad usage (printed). */
static int parse_args(bench_args *a, int argc, char **argv) {
    args_default(a);
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v;
        int sf_rc;
        if (!strcmp(f, "-h") || !strcmp(f, "--help")) {
            usage(stdout);
            return 1;
        } else if (!strcmp(f, "--json")) {
            a->json = 1;
        } else if (!strcmp(f, "--progress")) {
            a->progress = 1;
        } else if (!strcmp(f, "--no-stc")) {
            a->sf.stc.enabled = 0;
        } else if ((sf_rc = stream_flags_parse(&a->sf, "bench-streams", argc, argv, &i)) != 0) {
            if (sf_rc < 0) return -1;
        } else if (!takes_value(f)) {
            if (f[0] != '-')
                fprintf(stderr,
                        "svlm bench-streams: unexpected argument '%s' (frames are drawn in-process)\n", f);
            else
                fprintf(stderr, "svlm bench-streams: unknown option '%s'\n", f);
            usage(stderr);
            return -1;
        } else if (!(v = cli_value(argc, argv, &i)) || parse_value(a, f, v)) {
            return -1;
        }
    }
    if (!a->model || !a->mmproj) {
        fprintf(stderr, "svlm bench-streams: -m and --mmproj are required\n");
        usage(stderr);
        return -1;
    }
    if (a->sf.memory_dir) { /* N streams cannot share one persisted bank */
        fprintf(stderr, "svlm bench-streams: --memory-dir is not supported (each stream has its own bank)\n");
        return -1;
    }
    if (stream_flags_check(&a->sf, "bench-streams")) return -1;
    if (isatty(2)) a->progress = 1;
    return 0;
}

/* ---- figures ---- */

static int samples_push(samples *s, double v) {
    if (s->n == s->cap) {
        size_t cap = s->cap ? 2 * s->cap : 256;
        double *g = realloc(s->v, cap * sizeof *g);
        if (!g) return -1;
        s->v = g;
        s->cap = cap;
    }
    s->v[s->n++] = v;
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of sorted v (so p50 <= p90 <= p99 <= max always). */
static double percentile(const double *v, size_t n, double p) {
    size_t r = (size_t)ceil(p / 100.0 * (double)n);
    return v[r > 0 ? r - 1 : 0];
}

/* p99 of a copy of s (under b->mu); NAN when empty. */
static double p99_of(const samples *s) {
    if (!s->n) return NAN;
    double *c = malloc(s->n * sizeof *c);
    if (!c) return NAN;
    memcpy(c, s->v, s->n * sizeof *c);
    qsort(c, s->n, sizeof *c, cmp_double);
    double p = percentile(c, s->n, 99);
    free(c);
    return p;
}

/* ---- questions ---- */

static void on_done(void *user, uint64_t qid, svlm_status st, const char *answer,
                    const svlm_answer_metrics *am, const char *err_msg) {
    (void)qid, (void)answer;
    q_rec *q = user;
    bench *b = q->b;
    const int k = q->measured;
    const double now = cli_now();
    pthread_mutex_lock(&b->mu);
    b->waiting[q->stream]--;
    if (st == SVLM_OK) {
        b->answered[k]++;
        b->copied[k] += am->window_copied != 0;
        samples_push(&b->ttft[k], am->ttft_ms); /* out of memory: one sample fewer */
        if (k) b->rate_sum += am->tokens_per_s;
        if (now >= b->t_win0 && now < b->t_win1) b->window_tokens += am->tokens, b->window_answers++;
    } else if (st == SVLM_E_CANCELLED) {
        b->cancelled[k]++;
    } else {
        if (!b->failed[0] && !b->failed[1]) snprintf(b->first_err, sizeof b->first_err, "%s", err_msg);
        b->failed[k]++;
    }
    pthread_mutex_unlock(&b->mu);
    free(q);
}

/* Counts the questions whose first token came (an answer lane that only starts questions and
 * never finishes them shows here). */
static int on_token(void *user, int32_t id, const char *piece, size_t len) {
    (void)id, (void)piece, (void)len;
    q_rec *q = user;
    if (!q->started) {
        q->started = 1;
        pthread_mutex_lock(&q->b->mu);
        q->b->started[q->measured]++;
        pthread_mutex_unlock(&q->b->mu);
    }
    return 0;
}

/* Token count of a question as the stream tokenizes it (a space, then the text). */
static int question_len(const svlm_tokenizer *t, const char *text, char *tmp) {
    int32_t *ids = NULL;
    size_t n = 0;
    tmp[0] = ' ';
    strcpy(tmp + 1, text);
    svlm_err err = {0};
    if (svlm_tokenize(t, tmp, strlen(tmp), 0, 0, &ids, &n, &err)) return 1 << 30;
    free(ids);
    return (int)n;
}

/* A question of `target` tokens (or the nearest below that words reach), in a new string. */
static char *build_question(const svlm_tokenizer *t, int target, int *n_tokens) {
    static const char *const words[] = {"is",  "anyone", "in",   "the",    "picture", "right", "now",
                                        "and", "what",   "are",  "they",   "doing",   "near",  "a",
                                        "red", "box",    "that", "moves",  "across",  "this",  "camera",
                                        "or",  "does",   "it",   "appear", "empty",   "to",    "you"};
    const int n_words = (int)(sizeof words / sizeof words[0]);
    const size_t cap = (size_t)target * 16 + 64;
    char *q = malloc(cap), *cand = malloc(cap), *tmp = malloc(cap + 2);
    if (!q || !cand || !tmp) {
        free(q), free(cand), free(tmp);
        return NULL;
    }
    snprintf(q, cap, "What");
    int n = question_len(t, q, tmp);
    /* add words while they fit; a word that would overshoot is skipped for a shorter one */
    for (int w = 0, misses = 0; n < target && misses < n_words; w = (w + 1) % n_words) {
        if (strlen(q) + strlen(words[w]) + 3 >= cap) break;
        snprintf(cand, cap, "%s %s", q, words[w]);
        int c = question_len(t, cand, tmp);
        if (c <= target) {
            memcpy(q, cand, strlen(cand) + 1);
            n = c, misses = 0;
        } else {
            misses++;
        }
    }
    snprintf(cand, cap, "%s?", q);
    int c = question_len(t, cand, tmp);
    if (c <= target || c == n) memcpy(q, cand, strlen(cand) + 1), n = c;
    free(cand);
    free(tmp);
    *n_tokens = n;
    return q;
}

/* ---- frames ---- */

/* The shared background: a diagonal colour gradient. */
static uint8_t *make_background(void) {
    uint8_t *bg = malloc((size_t)FRAME_W * FRAME_H * 3);
    if (!bg) return NULL;
    for (int y = 0; y < FRAME_H; y++)
        for (int x = 0; x < FRAME_W; x++) {
            uint8_t *p = bg + ((size_t)y * FRAME_W + x) * 3;
            p[0] = (uint8_t)(x * 255 / FRAME_W);
            p[1] = (uint8_t)(y * 255 / FRAME_H);
            p[2] = (uint8_t)((x + y) * 255 / (FRAME_W + FRAME_H));
        }
    return bg;
}

/* Position k steps along a path that bounces between 0 and len. */
static int bounce(int64_t start, int64_t k, int speed, int len) {
    int64_t p = (start + k * speed) % (2 * (int64_t)len);
    return (int)(p <= len ? p : 2 * len - p);
}

/* Frame k of stream i: the background and a box of the stream's own colour, speed and path. */
static svlm_status draw_frame(const uint8_t *bg, int i, int64_t k, double fps, svlm_frame *f, svlm_err *err) {
    svlm_status st = svlm_frame_alloc(f, FRAME_W, FRAME_H, err);
    if (st) return st;
    memcpy(f->data, bg, (size_t)FRAME_W * FRAME_H * 3);
    const unsigned h = (unsigned)i * 2654435761u;
    const uint8_t c[3] = {(uint8_t)(h >> 24), (uint8_t)(h >> 16), (uint8_t)(h >> 8)};
    const int x0 = bounce(i * 37, k, 8 + (int)(h % 29), FRAME_W - BOX),
              y0 = bounce(i * 53, k, 5 + (int)(h >> 5) % 23, FRAME_H - BOX);
    for (int y = y0; y < y0 + BOX; y++)
        for (int x = x0; x < x0 + BOX; x++)
            memcpy(f->data + (size_t)y * f->stride + (size_t)x * 3, c, 3);
    f->pts = (double)k / fps;
    f->wall = svlm_wall_now();
    f->index = k;
    return SVLM_OK;
}

/* ---- the run ---- */

typedef struct run_ctx {
    const bench_args *a;
    bench *b;
    svlm_engine *e;
    svlm_stream **streams;
    int *sids;
    int64_t *frames0; /* each stream's frames_in when the window opened */
    const char *question;
    double t0, next_progress;
} run_ctx;

static void print_progress(run_ctx *r, const char *phase) {
    svlm_engine_metrics m;
    svlm_engine_metrics_get(r->e, &m);
    bench *b = r->b;
    pthread_mutex_lock(&b->mu);
    const int k = b->asked[1] > 0;
    const int64_t asked = b->asked[k], started = b->started[k], answered = b->answered[k];
    const double p99 = p99_of(&b->ttft[k]);
    pthread_mutex_unlock(&b->mu);
    char p99_text[32] = "-";
    if (isfinite(p99)) snprintf(p99_text, sizeof p99_text, "%.0f ms", p99);
    fprintf(stderr,
            "t=%.0fs %s frames %lld drops %lld queued %d questions %lld started %lld answered %lld active %d "
            "p99 %s\n",
            cli_now() - r->t0, phase, (long long)m.frames_done, (long long)m.frames_dropped, m.queued_frames,
            (long long)asked, (long long)started, (long long)answered, m.active_answers, p99_text);
}

static void sleep_until(double t) {
    struct timespec ts;
    ts.tv_sec = (time_t)t;
    ts.tv_nsec = (long)((t - (double)ts.tv_sec) * 1e9);
    if (ts.tv_nsec > 999999999) ts.tv_nsec = 999999999;
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

/* Waits until monotonic time t, printing progress each second meanwhile. */
static void wait_until(run_ctx *r, double t, const char *phase) {
    for (;;) {
        double now = cli_now();
        if (r->a->progress && now >= r->next_progress) {
            print_progress(r, phase);
            r->next_progress = now - fmod(now - r->t0, 1.0) + 1.0;
        }
        if (now >= t) return;
        sleep_until(r->a->progress && r->next_progress < t ? r->next_progress : t);
    }
}

static svlm_status push_frame(run_ctx *r, const uint8_t *bg, int i, int64_t k, svlm_err *err) {
    svlm_frame f;
    svlm_status st = draw_frame(bg, i, k, r->a->fps, &f, err);
    if (!st) st = svlm_engine_push_frame(r->e, r->sids[i], &f, 0, err);
    return st;
}

static svlm_status ask(run_ctx *r, int i, int measured, svlm_err *err) {
    bench *b = r->b;
    pthread_mutex_lock(&b->mu);
    const int skip = b->waiting[i] >= r->a->max_waiting;
    b->skipped[measured] += skip;
    pthread_mutex_unlock(&b->mu);
    if (skip) return SVLM_OK;
    q_rec *q = malloc(sizeof *q);
    if (!q) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    q->b = b;
    q->measured = measured;
    q->started = 0;
    q->stream = i;
    svlm_ask_opts o = {.max_tokens = (int)r->a->answer_tokens, .use_memory = r->a->sf.memory};
    pthread_mutex_lock(&b->mu);
    b->asked[measured]++;
    b->waiting[i]++;
    pthread_mutex_unlock(&b->mu);
    svlm_status st = svlm_engine_ask(r->e, r->sids[i], r->question, &o, 0, on_token, on_done, q, NULL, err);
    if (st) { /* no callback comes */
        pthread_mutex_lock(&b->mu);
        b->waiting[i]--;
        pthread_mutex_unlock(&b->mu);
        free(q);
    }
    return st;
}

/* Each stream's frames so far, at the window's start. */
static void note_stream_frames(run_ctx *r) {
    for (int i = 0; i < (int)r->a->streams; i++) {
        svlm_stream_metrics m;
        svlm_stream_metrics_get(r->streams[i], &m);
        r->frames0[i] = m.frames_in;
    }
}

/* At the window's end: the frames of the window and the fewest and most a stream ingested (a starved stream
 * shows here), the mean KV pages and memory bank of a stream, and what a frame costs to ingest. */
static void stream_figures(run_ctx *r, result *res) {
    const int N = (int)r->a->streams;
    size_t kv = 0, bank = 0;
    double frames = 0, encode = 0, prefill = 0;
    int64_t window = 0, stc[6] = {0}; /* frames, patches, recomputed, reused, partial, kept */
    int64_t stc_tokens = 0;
    for (int i = 0; i < N; i++) {
        svlm_stream_metrics m;
        svlm_stream_metrics_get(r->streams[i], &m);
        const int64_t got = m.frames_in - r->frames0[i];
        window += got;
        if (!i || got < res->stream_min) res->stream_min = got;
        if (!i || got > res->stream_max) res->stream_max = got;
        kv += m.kv_bytes;
        bank += m.memory_bytes + m.frame_ring_bytes;
        frames += (double)m.frames_in;
        encode += m.encode_ms_per_frame * (double)m.frames_in;
        prefill += m.prefill_ms_per_frame * (double)m.frames_in;
        stc[0] += m.stc_frames, stc[1] += m.stc_patches, stc[2] += m.stc_recomputed;
        stc[3] += m.stc_reused, stc[4] += m.stc_partial, stc[5] += m.stc_kept;
        stc_tokens += m.stc_tokens;
    }
    res->stc_frames = stc[0];
    if (stc[0] > 0) {
        const double f = (double)stc[0];
        res->stc_recomputed = stc[1] ? (double)stc[2] / (double)stc[1] : 0;
        res->stc_reused = (double)stc[3] / f;
        res->stc_partial = (double)stc[4] / f;
        res->stc_full = 1 - res->stc_reused - res->stc_partial;
        res->stc_kept = (double)stc[5] / f;
        res->stc_tokens = (double)stc_tokens / f;
    }
    res->encode_ms = frames > 0 ? encode / frames : NAN;
    res->prefill_ms = frames > 0 ? prefill / frames : NAN;
    res->kv_per_stream = kv / (size_t)N;
    res->bank_per_stream = bank / (size_t)N;
    /* the window's frames from the streams' counts, as the fewest and most are: the engine's count
     * was read a moment apart and may hold a frame more or less */
    res->frames = window;
}

/* Frames and questions on their schedule until the window ends: frame k of stream i is due at
 * (k + i/N) / F, question q (stream q mod N) at (q + 1/2) * SEC / N. Fills the window's figures. */
static svlm_status produce(run_ctx *r, result *res, svlm_err *err) {
    const bench_args *a = r->a;
    const int N = (int)a->streams;
    const double frame_step = 1.0 / ((double)N * a->fps), t_win0 = a->warmup, t_end = a->warmup + a->duration;
    const double ask_step = a->ask_every > 0 ? a->ask_every / N : INFINITY;
    uint8_t *bg = make_background();
    if (!bg) return svlm_fail(err, SVLM_E_NOMEM, "out of memory");
    svlm_engine_metrics m0 = {0}, m1;
    double tm0 = r->t0;
    int64_t j = 0, q = 0, pushed0 = 0;
    int measuring = t_win0 <= 0;
    if (measuring) svlm_engine_metrics_get(r->e, &m0);
    svlm_status st = SVLM_OK;
    for (;;) {
        const double tf = (double)j * frame_step, tq = ((double)q + 0.5) * ask_step;
        double t = tf < tq ? tf : tq;
        if (!measuring && t >= t_win0) t = t_win0;
        if (t >= t_end) break;
        wait_until(r, r->t0 + t, measuring ? "measure" : "warmup");
        const double lag = (cli_now() - r->t0 - t) * 1e3;
        if (measuring && lag > res->lag_max_ms) res->lag_max_ms = lag;
        if (!measuring && t >= t_win0) { /* the window opens */
            measuring = 1;
            svlm_engine_metrics_get(r->e, &m0);
            tm0 = cli_now();
            pushed0 = j;
            note_stream_frames(r);
        } else if (tf <= tq) {
            if ((st = push_frame(r, bg, (int)(j % N), j / N, err))) break;
            j++;
        } else {
            if ((st = ask(r, (int)(q % N), measuring, err))) break;
            q++;
        }
    }
    free(bg);
    if (st) return st;
    wait_until(r, r->t0 + t_end, "measure");
    svlm_engine_metrics_get(r->e, &m1);
    res->secs = cli_now() - tm0;
    res->frames = m1.frames_done - m0.frames_done;
    res->drops = m1.frames_dropped - m0.frames_dropped;
    res->pushed = j - pushed0;
    res->ingest_busy = (m1.ingest_busy_ms - m0.ingest_busy_ms) / (res->secs * 1e3);
    res->answer_busy = (m1.answer_busy_ms - m0.answer_busy_ms) / (res->secs * 1e3);
    res->memory_waits = (int64_t)(m1.memory_waits - m0.memory_waits);
    res->answers_max = m1.active_answers_max;
    const uint64_t nbat = m1.ingest_batches - m0.ingest_batches,
                   nfr = m1.ingest_batch_frames - m0.ingest_batch_frames;
    res->ingest_batch_mean = nbat ? (double)nfr / (double)nbat : 0;
    res->ingest_batch_share = res->frames > 0 ? (double)nfr / (double)res->frames : 0;
    const uint64_t nahead = m1.ingest_batches_ahead - m0.ingest_batches_ahead;
    res->ingest_ahead_share = nbat ? (double)nahead / (double)nbat : 0;
    res->ingest_ops = m1.ingest_ops - m0.ingest_ops;
    res->answer_ops = m1.answer_ops - m0.answer_ops;
    res->ops_per_frame = res->frames > 0 ? (double)res->ingest_ops / (double)res->frames : 0;
    stream_figures(r, res); /* (res->frames from here on: the streams' own counts) */
    res->rss = cli_rss_bytes();
    return SVLM_OK;
}

/* After the window: until nothing is queued or running, or the cap. */
static void drain(run_ctx *r, result *res) {
    const double start = cli_now();
    for (;;) {
        svlm_engine_metrics m;
        svlm_engine_metrics_get(r->e, &m);
        if ((!m.queued_frames && !m.queued_questions && !m.active_answers) ||
            cli_now() - start >= r->a->drain_max)
            break;
        wait_until(r, cli_now() + 0.02, "drain");
    }
    res->drain_s = cli_now() - start;
}

/* The figures of the measured questions (the engine has stopped: every callback has run). */
static void summarize(const bench_args *a, bench *b, result *res) {
    samples *s = &b->ttft[1];
    res->asked = b->asked[1];
    res->started = b->started[1];
    res->answered = b->answered[1];
    res->failed = b->failed[1];
    res->unanswered = b->asked[1] - b->answered[1] - b->failed[1];
    res->copied = b->copied[1];
    res->skipped = b->skipped[1];
    res->p50 = res->p90 = res->p99 = res->max = NAN;
    if (s->n) {
        qsort(s->v, s->n, sizeof *s->v, cmp_double);
        res->p50 = percentile(s->v, s->n, 50);
        res->p90 = percentile(s->v, s->n, 90);
        res->p99 = percentile(s->v, s->n, 99);
        res->max = s->v[s->n - 1];
    }
    res->tok_s = (double)b->window_tokens / res->secs;
    res->ops_per_token = b->window_tokens ? (double)res->answer_ops / (double)b->window_tokens : 0;
    res->answer_len = b->window_answers ? (double)b->window_tokens / (double)b->window_answers : NAN;
    res->tok_s_per_answer = res->answered ? b->rate_sum / (double)res->answered : NAN;
    res->fps_per_stream = (double)res->frames / (double)a->streams / res->secs;
    res->fps_share = res->fps_per_stream / a->fps;
    res->keeps_up = res->fps_share >= FPS_SHARE && !res->unanswered && !res->failed && !res->skipped &&
                    (!res->answered || res->p99 < TTFT_TARGET_MS);
}

/* ---- reports ---- */

static void json_num(const char *key, double v, int comma) {
    if (isfinite(v))
        printf("\"%s\":%.3f%s", key, v, comma ? "," : "");
    else
        printf("\"%s\":null%s", key, comma ? "," : "");
}

/* --stc: on, off, or (not yet resolved) the engine's choice: on for the CPU, off on a GPU */
static const char *stc_name(int enabled, int json) {
    if (enabled < 0) return json ? "\"auto\"" : "auto";
    return enabled ? (json ? "true" : "on") : (json ? "false" : "off");
}

static void report_json(const bench_args *a, const result *r, const char *backend, int gpu) {
    printf("{\"backend\":");
    cli_json_str(stdout, backend, strlen(backend));
    printf(",\"gpu\":%s,\"streams\":%lld,\"target_fps\":%g,\"warmup_s\":%g,\"seconds\":%.3f,\"stc\":%s,"
           "\"memory\":%s,\"frames\":%lld,\"frames_pushed\":%lld,\"dropped\":%lld,\"stream_frames_min\":%lld,"
           "\"stream_frames_max\":%lld,",
           gpu ? "true" : "false", a->streams, a->fps, a->warmup, r->secs, stc_name(a->sf.stc.enabled, 1),
           a->sf.memory ? "true" : "false", (long long)r->frames, (long long)r->pushed, (long long)r->drops,
           (long long)r->stream_min, (long long)r->stream_max);
    json_num("fps_per_stream", r->fps_per_stream, 1);
    json_num("fps_share", r->fps_share, 1);
    printf(
        "\"question_tokens\":%d,\"answer_tokens\":%lld,\"questions_asked\":%lld,\"questions_started\":%lld,"
        "\"questions_answered\":%lld,"
        "\"questions_failed\":%lld,\"questions_unanswered\":%lld,\"questions_skipped\":%lld,"
        "\"answers_window_copied\":%lld,\"ttft_ms\":{",
        r->question_tokens, a->answer_tokens, (long long)r->asked, (long long)r->started,
        (long long)r->answered, (long long)r->failed, (long long)r->unanswered, (long long)r->skipped,
        (long long)r->copied);
    json_num("p50", r->p50, 1);
    json_num("p90", r->p90, 1);
    json_num("p99", r->p99, 1);
    json_num("max", r->max, 0);
    printf("},");
    json_num("answer_tok_s", r->tok_s, 1);
    json_num("answer_tok_s_per_answer", r->tok_s_per_answer, 1);
    json_num("answer_tokens_mean", r->answer_len, 1);
    json_num("encode_ms_per_frame", r->encode_ms, 1);
    json_num("prefill_ms_per_frame", r->prefill_ms, 1);
    json_num("ingest_busy", r->ingest_busy, 1);
    json_num("ingest_batch_mean", r->ingest_batch_mean, 1);
    json_num("ingest_ops_per_frame", r->ops_per_frame, 1);
    json_num("answer_ops_per_token", r->ops_per_token, 1);
    json_num("ingest_batch_share", r->ingest_batch_share, 1);
    json_num("ingest_ahead_share", r->ingest_ahead_share, 1);
    json_num("answer_busy", r->answer_busy, 1);
    printf("\"answers_running_max\":%d,\"answer_memory_waits\":%lld,", r->answers_max,
           (long long)r->memory_waits);
    if (r->stc_frames) {
        json_num("stc_recomputed_share", r->stc_recomputed, 1);
        json_num("stc_reused_share", r->stc_reused, 1);
        json_num("stc_partial_share", r->stc_partial, 1);
        json_num("stc_full_share", r->stc_full, 1);
        json_num("stc_tokens_kept_per_frame", r->stc_kept, 1);
    }
    json_num("producer_lag_max_ms", r->lag_max_ms, 1);
    json_num("drain_s", r->drain_s, 1);
    if (r->dev_known) {
        printf("\"device_bytes_one_stream\":%zu,\"device_bytes_end\":%zu,\"device_bytes_total\":%zu,",
               r->dev_one, r->dev_end, r->dev_total);
        json_num("device_bytes_per_stream", dev_per_stream(r, a->streams), 1);
        json_num("device_streams_fit", dev_streams_fit(r, a->streams), 1);
    }
    printf("\"kv\":\"%s\",\"kv_bytes_per_stream\":%zu,\"memory_bank_bytes_per_stream\":%zu,\"rss_bytes\":%zu,"
           "\"keeps_up\":%s}\n",
           r->kv == SVLM_F16 ? "f16" : "f32", r->kv_per_stream, r->bank_per_stream, r->rss,
           r->keeps_up ? "true" : "false");
}

static void report_text(const bench_args *a, const result *r, const char *backend) {
    const double mib = 1024.0 * 1024.0;
    printf("backend          %s\n", backend);
    printf("streams          %lld at %g fps each (stc %s, memory %s)\n", a->streams, a->fps,
           stc_name(a->sf.stc.enabled, 0), a->sf.memory ? "on" : "off");
    printf("seconds          %.2f measured after %g s of warmup\n", r->secs, a->warmup);
    printf("fps_per_stream   %.3f (%.1f %% of target)\n", r->fps_per_stream, 100 * r->fps_share);
    printf("frames           %lld ingested (%lld to %lld per stream), %lld pushed, %lld dropped\n",
           (long long)r->frames, (long long)r->stream_min, (long long)r->stream_max, (long long)r->pushed,
           (long long)r->drops);
    printf(
        "questions        %lld asked, %lld started, %lld answered, %lld failed, %lld unanswered (%d tokens, "
        "up to %lld answer tokens)\n",
        (long long)r->asked, (long long)r->started, (long long)r->answered, (long long)r->failed,
        (long long)r->unanswered, r->question_tokens, a->answer_tokens);
    if (r->skipped)
        printf("questions        %lld more skipped: their stream had %lld unanswered (--max-waiting)\n",
               (long long)r->skipped, a->max_waiting);
    if (r->answered)
        printf(
            "ttft_ms          p50 %.1f p90 %.1f p99 %.1f max %.1f; %lld of %lld answers copied the stream's "
            "window\n",
            r->p50, r->p90, r->p99, r->max, (long long)r->copied, (long long)r->answered);
    else
        printf("ttft_ms          none answered in the window\n");
    printf("answer_tok_s     %.1f aggregate, %.1f per answer\n", r->tok_s,
           isfinite(r->tok_s_per_answer) ? r->tok_s_per_answer : 0.0);
    printf("lanes_busy       ingest %.1f %% answer %.1f %%\n", 100 * r->ingest_busy, 100 * r->answer_busy);
    printf("answers          at most %d running at once", r->answers_max);
    if (r->memory_waits)
        printf("; %lld starts waited for a running answer's memory", (long long)r->memory_waits);
    printf("\n");
    printf("ingest_batch     %.1f frames per encoder batch of several streams; %.0f %% of frames in them; "
           "%.0f %% of batches preprocessed while the one before ran\n",
           r->ingest_batch_mean, 100 * r->ingest_batch_share, 100 * r->ingest_ahead_share);
    printf("ingest_ms        %.2f encode %.2f prefill per frame\n",
           isfinite(r->encode_ms) ? r->encode_ms : 0.0, isfinite(r->prefill_ms) ? r->prefill_ms : 0.0);
    if (r->ingest_ops || r->answer_ops)
        printf("device_ops       %.1f per frame (ingest lane), %.1f per answer token (answer lane, question "
               "starts included)\n",
               r->ops_per_frame, r->ops_per_token);
    if (r->stc_frames)
        printf(
            "stc              %.1f %% of patches recomputed; frames %.0f %% reused, %.0f %% partial, %.0f %% "
            "full; %.1f of %.0f tokens kept a frame\n",
            100 * r->stc_recomputed, 100 * r->stc_reused, 100 * r->stc_partial, 100 * r->stc_full,
            r->stc_kept, r->stc_tokens);
    printf("memory           per stream: KV %.2f MiB (%s), memory bank %.2f MiB; process %.1f MiB resident\n",
           (double)r->kv_per_stream / mib, r->kv == SVLM_F16 ? "f16" : "f32",
           (double)r->bank_per_stream / mib, (double)r->rss / mib);
    if (r->dev_known) {
        const double per = dev_per_stream(r, a->streams);
        if (isfinite(per))
            printf("device_memory    %.1f MiB per stream after the first; ", per / mib);
        else
            printf("device_memory    per stream: run two or more to tell; ");
        printf("%.1f MiB with the engine and one stream, %.1f MiB at the end", (double)r->dev_one / mib,
               (double)r->dev_end / mib);
        const double fit = dev_streams_fit(r, a->streams);
        if (isfinite(fit))
            printf("; %.0f such streams fit in the device's %.1f GiB\n", fit,
                   (double)r->dev_total / (mib * 1024));
        else
            printf("\n");
    }
    printf("producer_lag_ms  %.1f max; drain %.2f s\n", r->lag_max_ms, r->drain_s);
    printf("keeps up: %s (fps >= %.2f*target and p99 < %.0f ms)\n", r->keeps_up ? "yes" : "no", FPS_SHARE,
           TTFT_TARGET_MS);
}

/* ---- setup ---- */

static int open_streams(run_ctx *r, const svlm_mmproj *mp, int q_tokens, result *res, svlm_err *err) {
    const bench_args *a = r->a;
    const int T = mp->hp.tokens_per_tile;
    svlm_memory_opts mo;
    svlm_memory_opts_default(&mo);
    mo.budget_bytes = (size_t)(a->sf.memory_mib * 1048576.0);
    res->kv = stream_flags_kv(&a->sf, svlm_kernels_is_gpu(svlm_engine_ingest_kernels(r->e)));
    /* a frame is its header ("\nFrame from MM:SS:", a few tokens) plus the image block; the
     * answer room holds the chat turn around the question too */
    svlm_stream_params sp = {.sink_tokens = (int)a->sf.sinks,
                             .vision_tokens = (int)a->sf.frames_window * (T + 24),
                             .text_tokens = (int)a->sf.text_window,
                             .answer_room = q_tokens + (int)a->answer_tokens + 64,
                             .rows_per_frame = T,
                             .kv_type = res->kv,
                             .memory = a->sf.memory ? &mo : NULL,
                             .memory_tokens = (int)a->sf.memory_tokens};
    for (int i = 0; i < (int)a->streams; i++) {
        if (svlm_engine_open_stream(r->e, &sp, SYSTEM_PROMPT, &r->streams[i], &r->sids[i], err)) {
            char what[sizeof err->msg - 64]; /* room for the words around it */
            snprintf(what, sizeof what, "%.440s", err->msg);
            snprintf(err->msg, sizeof err->msg, "opening stream %d of %lld: %s", i + 1, a->streams, what);
            return -1;
        }
        if (!i)
            res->dev_known =
                svlm_kernels_device_memory(svlm_engine_ingest_kernels(r->e), &res->dev_one, &res->dev_total);
        if (a->progress && (i + 1) % 64 == 0)
            fprintf(stderr, "opened %d of %lld streams\n", i + 1, a->streams);
    }
    return 0;
}

int cmd_bench_streams(int argc, char **argv) {
    bench_args a;
    int prc = parse_args(&a, argc, argv);
    if (prc) return prc > 0 ? 0 : 2;
    /* the engine's lanes make their kernels from SVLM_BACKEND */
    if (a.backend && setenv("SVLM_BACKEND", a.backend, 1)) {
        fprintf(stderr, "svlm bench-streams: cannot set SVLM_BACKEND\n");
        return 1;
    }
    bench b = {.t_win0 = INFINITY, .t_win1 = INFINITY};
    pthread_mutex_init(&b.mu, NULL);
    svlm_err err = {0};
    svlm_llama *model = NULL;
    svlm_mmproj *mp = NULL;
    char *question = NULL;
    run_ctx r = {.a = &a, .b = &b};
    result res = {0};
    int rc = 1;
    r.streams = calloc((size_t)a.streams, sizeof *r.streams);
    r.sids = calloc((size_t)a.streams, sizeof *r.sids);
    r.frames0 = calloc((size_t)a.streams, sizeof *r.frames0);
    b.waiting = calloc((size_t)a.streams, sizeof *b.waiting);
    if (!r.streams || !r.sids || !r.frames0 || !b.waiting) {
        fprintf(stderr, "svlm: out of memory\n");
        goto done;
    }
    if (svlm_llama_load(a.model, &model, &err)) {
        fprintf(stderr, "svlm: cannot load model: %s\n", err.msg);
        goto done;
    }
    if (svlm_mmproj_load(a.mmproj, &mp, &err)) {
        fprintf(stderr, "svlm: cannot load the vision model: %s\n", err.msg);
        goto done;
    }
    if (!(question =
              build_question(svlm_llama_tokenizer(model), (int)a.question_tokens, &res.question_tokens))) {
        fprintf(stderr, "svlm: out of memory\n");
        goto done;
    }
    r.question = question;
    svlm_engine_params ep = {.ingest_threads = (int)a.threads,
                             .answer_threads = (int)a.threads,
                             .frame_queue = (int)a.sf.queue,
                             .max_streams = (int)a.streams,
                             .decode_batch = (int)a.decode_batch,
                             .ingest_batch = (int)a.ingest_batch,
                             .stc = &a.sf.stc};
    if (svlm_engine_create(model, mp, &ep, &r.e, &err) ||
        open_streams(&r, mp, res.question_tokens, &res, &err)) {
        fprintf(stderr, "svlm: %s\n", err.msg);
        goto done;
    }
    svlm_kernels *k = svlm_engine_ingest_kernels(r.e);
    svlm_kernels_device_memory(k, &res.dev_streams, &res.dev_total);
    r.t0 = r.next_progress = cli_now();
    b.t_win0 = r.t0 + a.warmup;
    b.t_win1 = b.t_win0 + a.duration;
    if (produce(&r, &res, &err)) {
        fprintf(stderr, "svlm: %s\n", err.msg);
        goto done;
    }
    drain(&r, &res);
    svlm_kernels_device_memory(k, &res.dev_end, &res.dev_total);
    svlm_engine_stop(r.e); /* what is left is cancelled: every done callback has run */
    summarize(&a, &b, &res);
    if (b.first_err[0]) fprintf(stderr, "svlm bench-streams: a question failed: %s\n", b.first_err);
    if (a.sf.stc.enabled < 0)
        a.sf.stc.enabled = !svlm_kernels_is_gpu(k); /* the engine's choice, as it made it */
    if (a.json)
        report_json(&a, &res, svlm_kernels_name(k), svlm_kernels_is_gpu(k));
    else
        report_text(&a, &res, svlm_kernels_name(k));
    rc = b.failed[0] || b.failed[1] ? 1 : 0;
done:
    svlm_engine_stop(r.e);
    for (int i = 0; r.streams && i < (int)a.streams; i++)
        svlm_stream_free(r.streams[i]);
    svlm_engine_free(r.e);
    free(r.streams);
    free(r.sids);
    free(r.frames0);
    free(b.waiting);
    free(question);
    svlm_mmproj_free(mp);
    svlm_llama_free(model);
    for (int i = 0; i < 2; i++)
        free(b.ttft[i].v);
    pthread_mutex_destroy(&b.mu);
    return rc;
}
