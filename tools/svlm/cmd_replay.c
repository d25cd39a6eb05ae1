/*
 * svlm replay: the whole pipeline on a recording. Frames are sampled and handed to the engine
 * (pipeline/stream_engine.h), which encodes them and appends them to a bounded stream context on
 * its ingest lane; each --ask "T:QUESTION" is asked when the video reaches T seconds and answered
 * on the answer lane while ingestion goes on. Frames leaving the window go to the memory bank.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "stream_flags.h"
#include "pipeline/source.h"
#include "pipeline/stream_engine.h"
#include "vision/encoder.h"

enum { MAX_ASKS = 256 };

static void usage(FILE *f) {
    fprintf(
        f,
        "usage: svlm replay VIDEO -m TEXT_GGUF --mmproj MMPROJ_GGUF [--fps F] [--speed realtime|max]\n"
        "                   [--ask \"T:QUESTION\"]... [--max-tokens N] [--threads K] [--stats-every N]\n"
        "                   [--backend B] [stream controls] [--json]\n"
        "  --ask T:Q          ask Q when the video reaches T: seconds (95) or M:SS, H:MM:SS (1:35)\n"
        "                     (repeatable)\n"
        "  --fps F            frames sampled per second of video (default 1)\n"
        "  --speed S          max: as fast as the engine goes, every frame (default); realtime: at the\n"
        "                     video's own pace, as a camera\n"
        "  --max-tokens N     longest answer (default 32)\n"
        "  --threads K        kernel threads of each lane, ingest and answer (default 1)\n" CLI_BACKEND_HELP
        "  --stats-every N    with --json, a counters line every N frames (rss_bytes, kv_bytes, ...)\n"
        "  --json             one line per answer (as they come), then one line of stream counters\n"
        "A live replay (--speed realtime) drops the oldest waiting frame beyond --queue.\n");
    stream_flags_usage(f);
}

typedef struct ask_item {
    double t;
    const char *question;
} ask_item;

typedef struct replay {
    svlm_stream *stream;
    ask_item asks[MAX_ASKS];
    int n_asks, n_asked, json, failed, progress, answered;
    pthread_mutex_t out_mu; /* answers come from the answer lane, progress from the main thread */
} replay;

static void on_done(void *user, uint64_t qid, svlm_status st, const char *answer,
                    const svlm_answer_metrics *am, const char *err_msg) {
    replay *r = user;
    const ask_item *a = &r->asks[qid - 1];
    pthread_mutex_lock(&r->out_mu);
    r->answered++;
    if (st) {
        fprintf(stderr, "%ssvlm: question at %.1f s: %s\n", r->progress ? "\r\033[K" : "", a->t, err_msg);
        r->failed = 1;
    } else if (r->json) {
        printf("{\"t\":%.3f,\"question\":", a->t);
        cli_json_str(stdout, a->question, strlen(a->question));
        printf(",\"answer\":");
        cli_json_str(stdout, answer, strlen(answer));
        printf(
            ",\"tokens\":%d,\"ttft_ms\":%.3f,\"tokens_per_s\":%.1f,\"queue_ms\":%.3f,\"frames_during\":%lld,"
            "\"memory_hits\":%d,\"memory_tokens\":%d,\"retrieve_ms\":%.3f}\n",
            am->tokens, am->ttft_ms, am->tokens_per_s, am->wait_ms, (long long)am->frames_during,
            am->memory_hits, am->memory_tokens, am->retrieve_ms);
    } else {
        printf("%s[%.1f s] %s\n> %s\n  (%d tokens, first after %.0f ms, %lld frames ingested meanwhile, %d "
               "memories)\n",
               r->progress ? "\r\033[K" : "", a->t, a->question, answer, am->tokens, am->ttft_ms,
               (long long)am->frames_during, am->memory_hits);
    }
    fflush(stdout);
    pthread_mutex_unlock(&r->out_mu);
}

static int cmp_ask(const void *a, const void *b) {
    double d = ((const ask_item *)a)->t - ((const ask_item *)b)->t;
    return d < 0 ? -1 : d > 0;
}

/* Asks the questions due by video time t: those before it (before_t set: the frame at t is not
 * pushed yet, and a question between two sampled frames must not see the later one) or up to it. */
static void ask_due(replay *r, svlm_engine *e, int sid, double t, int before_t, int pin, int max_tokens) {
    while (r->n_asked < r->n_asks && (before_t ? r->asks[r->n_asked].t < t : r->asks[r->n_asked].t <= t)) {
        svlm_err err = {0};
        svlm_ask_opts o = {.max_tokens = max_tokens, .use_memory = 1};
        uint64_t qid = 0;
        /* question ids count from 1 in ask order: on_done finds its item by id */
        if (svlm_engine_ask(e, sid, r->asks[r->n_asked].question, &o, pin, NULL, on_done, r, &qid, &err)) {
            fprintf(stderr, "svlm: question at %.1f s: %s\n", r->asks[r->n_asked].t, err.msg);
            r->failed = 1;
        }
        r->n_asked++;
    }
}

static void print_counters(replay *r, svlm_engine *e, double video_t, double secs, int final) {
    svlm_stream_metrics m;
    svlm_engine_metrics em;
    svlm_stream_metrics_get(r->stream, &m);
    svlm_engine_metrics_get(e, &em);
    printf("{%s\"frames\":%lld,\"drops\":%lld,\"tokens\":{\"sink\":%d,\"vision\":%d,\"text\":%d},"
           "\"evicted_spans\":%lld,\"evicted_tokens\":%lld,\"kv_bytes\":%zu,"
           "\"kv_tier_bytes\":{\"sink\":%zu,\"vision\":%zu,\"text\":%zu},",
           final ? "" : "\"progress\":true,", (long long)m.frames_in, (long long)m.frames_dropped,
           m.tokens[SVLM_KV_SINK], m.tokens[SVLM_KV_VISION], m.tokens[SVLM_KV_TEXT],
           (long long)m.evicted_spans, (long long)m.evicted_tokens, m.kv_bytes, m.kv_kind_bytes[SVLM_KV_SINK],
           m.kv_kind_bytes[SVLM_KV_VISION], m.kv_kind_bytes[SVLM_KV_TEXT]);
    printf("\"memory\":{\"on\":%s,\"bytes\":%zu,\"budget\":%zu,\"short\":%zu,\"mid\":%zu,\"event\":%zu,"
           "\"entries\":{\"short\":%d,\"mid\":%d,\"event\":%d},\"frames\":%lld,\"events\":%lld,\"ring_"
           "bytes\":%zu},",
           m.memory_on ? "true" : "false", m.memory_bytes, m.memory_budget,
           m.memory_tier_bytes[SVLM_MEMORY_SHORT], m.memory_tier_bytes[SVLM_MEMORY_MID],
           m.memory_tier_bytes[SVLM_MEMORY_EVENT], m.memory_tier_entries[SVLM_MEMORY_SHORT],
           m.memory_tier_entries[SVLM_MEMORY_MID], m.memory_tier_entries[SVLM_MEMORY_EVENT],
           (long long)m.memory_frames, (long long)m.memory_events, m.frame_ring_bytes);
    const double frames = m.frames_in > 0 ? (double)m.frames_in : 1,
                 stc_frames = m.stc_frames > 0 ? (double)m.stc_frames : 1;
    printf("\"stc\":{\"on\":%s,\"tokens_per_frame\":%.2f,\"tokens_per_frame_full\":%.2f,\"recomputed_share\":"
           "%.4f,"
           "\"frames_reused\":%lld,\"frames_partial\":%lld,\"cuts\":%lld},",
           m.stc_frames > 0 ? "true" : "false", (double)m.image_rows_in / frames,
           m.stc_frames > 0 ? (double)m.stc_tokens / stc_frames : (double)m.image_rows_in / frames,
           m.stc_patches > 0 ? (double)m.stc_recomputed / (double)m.stc_patches : 1.0,
           (long long)m.stc_reused, (long long)m.stc_partial, (long long)m.stc_cuts);
    printf("\"kv_page_bytes\":%zu,", m.kv_page_bytes);
    printf(
        "\"encode_ms_per_frame\":%.3f,\"prefill_ms_per_frame\":%.3f,\"ingest_busy_ms\":%.1f,\"answer_busy_"
        "ms\":%.1f,"
        "\"questions\":%lld,\"answers_joined\":%lld,\"time_offset\":%.3f,\"rss_bytes\":%zu,\"video_s\":%.3f,"
        "\"seconds\":%.3f,\"fps\":%.2f}\n",
        m.encode_ms_per_frame, m.prefill_ms_per_frame, em.ingest_busy_ms, em.answer_busy_ms,
        (long long)m.questions, (long long)m.answers_joined, m.time_offset, cli_rss_bytes(), video_t, secs,
        (double)m.frames_in / (secs + 1e-9));
}

/* One field of digits, with a fraction when `frac`: its value and length (0: none). */
static size_t time_field(const char *s, int frac, double *value) {
    size_t n = strspn(s, "0123456789");
    if (n && frac && s[n] == '.' && s[n + 1] >= '0' && s[n + 1] <= '9')
        n += 1 + strspn(s + n + 1, "0123456789");
    if (n == 0 || n > 24) return 0;
    char buf[32];
    memcpy(buf, s, n);
    buf[n] = 0;
    *value = strtod(buf, NULL);
    return n;
}

/* "T:QUESTION": T in seconds (95, 95.5) or sexagesimal, M:SS or H:MM:SS (1:35, 1:02:03.5: after
 * the first field, two digits each below 60, a fraction on the last only). 0, or -1 when
 * malformed. */
static int parse_ask(const char *v, double *t, const char **question) {
    double x, part;
    size_t n = time_field(v, 1, &x);
    if (!n) return -1;
    const char *end = v + n;
    for (int fields = 1; fields < 3 && !memchr(v, '.', (size_t)(end - v)) && end[0] == ':'; fields++) {
        const size_t m = time_field(end + 1, 1, &part);
        /* two whole digits below 60, then the question's ':' (else it is the question's text) */
        if (m < 2 || strspn(end + 1, "0123456789") != 2 || part >= 60 || end[1 + m] != ':') break;
        x = x * 60 + part;
        end += 1 + m;
    }
    if (*end != ':' || !end[1] || !(x <= 1e9)) return -1;
    *t = x;
    *question = end + 1;
    return 0;
}

int cmd_replay(int argc, char **argv) {
    const char *video = NULL, *text_path = NULL, *mmproj_path = NULL;
    double fps = 1;
    long long threads = 1, max_tokens = 32, stats_every = 0;
    int json = 0, sf_rc;
    stream_flags sf;
    stream_flags_default(&sf);
    svlm_pace pace = SVLM_PACE_MAX;
    replay r = {0};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--json")) {
            json = 1;
        } else if ((sf_rc = stream_flags_parse(&sf, "replay", argc, argv, &i)) != 0) {
            if (sf_rc < 0) return 2;
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
        } else if (!strcmp(a, "--stats-every")) {
            if (cli_int(a, v, 1, 1LL << 40, &stats_every)) return 2;
        } else if (!strcmp(a, "--speed")) {
            if (!strcmp(v, "max"))
                pace = SVLM_PACE_MAX;
            else if (!strcmp(v, "realtime"))
                pace = SVLM_PACE_REALTIME;
            else {
                fprintf(stderr, "svlm: --speed expects realtime or max, got '%s'\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--backend")) { /* the engine's lanes make their kernels from SVLM_BACKEND */
            if (cli_backend(a, v)) return 2;
            if (setenv("SVLM_BACKEND", v, 1)) {
                fprintf(stderr, "svlm replay: cannot set SVLM_BACKEND\n");
                return 1;
            }
        } else if (!strcmp(a, "--ask")) {
            double t;
            const char *question;
            if (parse_ask(v, &t, &question)) {
                fprintf(stderr,
                        "svlm: --ask expects T:QUESTION (T in seconds, 95 or 95.5, or as M:SS or H:MM:SS, "
                        "1:35), got '%s'\n",
                        v);
                return 2;
            }
            if (r.n_asks == MAX_ASKS) {
                fprintf(stderr, "svlm: at most %d questions\n", MAX_ASKS);
                return 2;
            }
            r.asks[r.n_asks].t = t;
            r.asks[r.n_asks++].question = question;
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
    if (stream_flags_check(&sf, "replay")) return 2;
    qsort(r.asks, (size_t)r.n_asks, sizeof r.asks[0], cmp_ask);
    r.json = json;
    r.progress = !json && isatty(2);
    pthread_mutex_init(&r.out_mu, NULL);

    svlm_err err = {0};
    svlm_llama *model = NULL;
    svlm_mmproj *mp = NULL;
    svlm_engine *engine = NULL;
    svlm_source *src = NULL;
    int rc = 1, sid = -1;
    if (svlm_llama_load(text_path, &model, &err)) {
        fprintf(stderr, "svlm: cannot load model: %s\n", err.msg);
        goto done;
    }
    if (svlm_mmproj_load(mmproj_path, &mp, &err)) {
        fprintf(stderr, "svlm: cannot load the vision model: %s\n", err.msg);
        goto done;
    }
    svlm_engine_params ep = {.ingest_threads = (int)threads,
                             .answer_threads = (int)threads,
                             .frame_queue = (int)sf.queue,
                             .exact = pace == SVLM_PACE_MAX,
                             .stc = &sf.stc};
    if (svlm_engine_create(model, mp, &ep, &engine, &err)) {
        fprintf(stderr, "svlm: %s\n", err.msg);
        goto done;
    }
    const int T = mp->hp.tokens_per_tile;
    svlm_memory_opts mo;
    svlm_memory_opts_default(&mo);
    mo.budget_bytes = (size_t)(sf.memory_mib * 1048576.0);
    mo.dir = sf.memory_dir;
    /* a frame is its header ("\nFrame from MM:SS:", a few tokens) plus the image block */
    svlm_stream_params sp = {
        .sink_tokens = (int)sf.sinks,
        .vision_tokens = (int)sf.frames_window * (T + 24),
        .text_tokens = (int)sf.text_window,
        .answer_room = (int)max_tokens + 128,
        .rows_per_frame = T,
        .kv_type = stream_flags_kv(&sf, svlm_kernels_is_gpu(svlm_engine_ingest_kernels(engine))),
        .memory = sf.memory ? &mo : NULL,
        .memory_tokens = (int)sf.memory_tokens};
    if (svlm_stream_create(model, svlm_engine_ingest_kernels(engine), &sp,
                           "<|im_start|>System: You are watching a video.<end_of_utterance>\n", &r.stream,
                           &err) ||
        svlm_engine_add_stream(engine, r.stream, &sid, &err)) {
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
    /* at full speed nothing is dropped and questions are pinned to their frame (replays repeat);
     * in real time the source does not wait for the encoder: a full queue drops its oldest frame */
    const int replay_exact = pace == SVLM_PACE_MAX;
    double t0 = cli_now(), video_t = 0, last_progress = 0;
    int64_t frames = 0;
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
            /* after a reconnect token compression starts over (in order with the frames) */
            (void)svlm_engine_push_event(engine, sid, &item.event, &err);
            continue;
        }
        video_t = item.frame.pts;
        /* a question at T sees the frames up to T: those due before this frame are asked first */
        ask_due(&r, engine, sid, video_t, 1, replay_exact, (int)max_tokens);
        if (svlm_engine_push_frame(engine, sid, &item.frame, replay_exact, &err)) {
            fprintf(stderr, "svlm: frame at %.2f s: %s\n", video_t, err.msg);
            goto done;
        }
        frames++;
        ask_due(&r, engine, sid, video_t, 0, replay_exact, (int)max_tokens); /* and at this frame's time */
        if (json && stats_every && frames % stats_every == 0) {
            pthread_mutex_lock(&r.out_mu);
            print_counters(&r, engine, video_t, cli_now() - t0, 0);
            fflush(stdout);
            pthread_mutex_unlock(&r.out_mu);
        }
        if (r.progress && cli_now() - last_progress > 0.2) {
            last_progress = cli_now();
            svlm_stream_metrics m;
            svlm_stream_metrics_get(r.stream, &m);
            pthread_mutex_lock(&r.out_mu);
            fprintf(stderr,
                    "\r\033[K%7.1f s video, %lld frames (%lld dropped), %.2fx real time, %d/%d answered",
                    video_t, (long long)m.frames_in, (long long)m.frames_dropped,
                    video_t / (cli_now() - t0 + 1e-9), r.answered, r.n_asked);
            pthread_mutex_unlock(&r.out_mu);
        }
    }
    for (int i = r.n_asked; i < r.n_asks; i++) /* said, not silently answered as if asked then */
        fprintf(stderr,
                "svlm: the question at %.1f s comes after the last sampled frame (%.1f s, the video's end or "
                "near it): asked at the end\n",
                r.asks[i].t, video_t);
    ask_due(&r, engine, sid, 1e300, 0, replay_exact,
            (int)max_tokens); /* questions past the end: at the end */
    svlm_engine_drain(engine);
    double secs = cli_now() - t0;
    if (json) {
        print_counters(&r, engine, video_t, secs, 1);
    } else {
        svlm_stream_metrics m;
        svlm_stream_metrics_get(r.stream, &m);
        if (r.progress) fprintf(stderr, "\r\033[K");
        printf("%lld frames (%lld dropped) in %.2f s (%.1f frames/s, %.2fx real time), %zu bytes of KV, "
               "%zu bytes of memory\n",
               (long long)m.frames_in, (long long)m.frames_dropped, secs, (double)m.frames_in / (secs + 1e-9),
               video_t / (secs + 1e-9), m.kv_bytes, m.memory_bytes);
    }
    rc = r.failed ? 1 : 0;
done:
    svlm_engine_stop(engine); /* cancels what is left; the stream is ours again */
    svlm_source_close(src);
    svlm_stream_free(r.stream);
    svlm_engine_free(engine);
    svlm_mmproj_free(mp);
    svlm_llama_free(model);
    pthread_mutex_destroy(&r.out_mu);
    return rc;
}
