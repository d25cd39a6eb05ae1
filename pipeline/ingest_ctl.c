/* The control block shared by a source and its backend: cancel flag, watchdog, clocks. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "pipeline/source_backend.h"

static long long ns_of(const struct timespec *ts) {
    return (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec;
}

static long long mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ns_of(&ts);
}

double svlm_mono_now(void) {
    return (double)mono_ns() * 1e-9;
}

double svlm_wall_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* The process's heartbeat: a thread that beats every BEAT_NS and adds each gap longer than
 * SVLM_CTL_FROZEN_S (less one beat) to the frozen total: time in which nothing of this process ran.
 * Started once per process (a forked child starts its own). */
#define BEAT_NS 100000000LL
static atomic_llong hb_frozen_ns, hb_last_ns;
static atomic_int hb_pid;
static pthread_mutex_t hb_lock = PTHREAD_MUTEX_INITIALIZER;

static void *heartbeat(void *arg) {
    (void)arg;
    const struct timespec beat = {0, BEAT_NS};
    for (;;) {
        nanosleep(&beat, NULL);
        const long long now = mono_ns(), gap = now - atomic_load(&hb_last_ns);
        if (gap > (long long)(SVLM_CTL_FROZEN_S * 1e9)) atomic_fetch_add(&hb_frozen_ns, gap - BEAT_NS);
        atomic_store(&hb_last_ns, now);
    }
    return NULL;
}

static void heartbeat_start(void) {
    const int pid = (int)getpid();
    if (atomic_load(&hb_pid) == pid) return;
    pthread_mutex_lock(&hb_lock);
    if (atomic_load(&hb_pid) != pid) {
        atomic_store(&hb_last_ns, mono_ns());
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create(&t, &attr, heartbeat, NULL) == 0) atomic_store(&hb_pid, pid);
        pthread_attr_destroy(&attr);
    }
    pthread_mutex_unlock(&hb_lock);
}

/* The frozen total at `now`, with a gap the heartbeat has not closed yet counted as it will be (a
 * check right after a resume may run before the heartbeat's first beat). Never decreases. */
static long long frozen_ns(long long now) {
    if (atomic_load(&hb_pid) != (int)getpid()) return 0; /* no heartbeat: no credit */
    const long long pending = now - atomic_load(&hb_last_ns);
    return atomic_load(&hb_frozen_ns) +
           (pending > (long long)(SVLM_CTL_FROZEN_S * 1e9) ? pending - BEAT_NS : 0);
}

void svlm_ctl_init(svlm_ingest_ctl *ctl, double stall_timeout_s) {
    atomic_init(&ctl->cancel, 0);
    ctl->abort_flag = NULL;
    atomic_init(&ctl->progress_ns, mono_ns());
    heartbeat_start();
    atomic_init(&ctl->frozen_seen_ns, frozen_ns(mono_ns()));
    atomic_init(&ctl->open_deadline_ns, 0);
    atomic_init(&ctl->decoded, 0);
    atomic_init(&ctl->corrupt, 0);
    atomic_init(&ctl->corrupt_at_progress, 0);
    atomic_init(&ctl->stop_reason, SVLM_STOP_NONE);
    ctl->stall_timeout_s = stall_timeout_s;
}

void svlm_ctl_touch(svlm_ingest_ctl *ctl) {
    const long long now = mono_ns();
    atomic_store(&ctl->progress_ns, now);
    atomic_store(&ctl->corrupt_at_progress, atomic_load(&ctl->corrupt));
}

int svlm_ctl_cancelled(svlm_ingest_ctl *ctl) {
    return atomic_load(&ctl->cancel) || (ctl->abort_flag && atomic_load(ctl->abort_flag));
}

svlm_stop_reason svlm_ctl_should_stop(svlm_ingest_ctl *ctl) {
    svlm_stop_reason why = SVLM_STOP_NONE;
    long long now = mono_ns();
    /* the process did not run for a while (SIGSTOP, a VM paused): the source had no chance to
     * deliver, so that time moves the watchdog's and the open's marks on */
    const long long f = frozen_ns(now), lost = f - atomic_exchange(&ctl->frozen_seen_ns, f);
    if (lost > 0) {
        long long p = atomic_load(&ctl->progress_ns);
        atomic_compare_exchange_strong(&ctl->progress_ns, &p, p + lost < now ? p + lost : now);
        long long d = atomic_load(&ctl->open_deadline_ns);
        if (d) atomic_compare_exchange_strong(&ctl->open_deadline_ns, &d, d + lost);
    }
    long long deadline = atomic_load(&ctl->open_deadline_ns);
    if (svlm_ctl_cancelled(ctl))
        why = SVLM_STOP_CANCEL;
    else if (deadline && now > deadline)
        why = SVLM_STOP_OPEN_TIMEOUT;
    else if (!deadline && ctl->stall_timeout_s > 0 &&
             now - atomic_load(&ctl->progress_ns) > (long long)(ctl->stall_timeout_s * 1e9))
        why = SVLM_STOP_STALL;
    if (why) atomic_store(&ctl->stop_reason, why);
    return why;
}

/* Damaged frames since the last good one from which a stall is said to be a decoding failure. */
#define SVLM_STALL_DAMAGED_MIN 10

svlm_status svlm_ctl_stop_error(svlm_ingest_ctl *ctl, svlm_err *err, const char *what) {
    const long long damaged = atomic_load(&ctl->corrupt) - atomic_load(&ctl->corrupt_at_progress);
    switch (atomic_load(&ctl->stop_reason)) {
    case SVLM_STOP_STALL:
        /* data kept coming: not a silent server, so say what is wrong with it (a few damaged frames
         * are what a camera that dropped off the network leaves: then the plain message) */
        if (damaged >= SVLM_STALL_DAMAGED_MIN)
            return svlm_fail(
                err, SVLM_E_IO,
                "%s: stalled, no frame decoded for %.1f s: the %lld packets/frames that arrived "
                "failed to decode (a damaged stream, or an encoding this decoder cannot read: check "
                "the source's encoder settings; for RTSP try --transport tcp)",
                what, ctl->stall_timeout_s, damaged);
        return svlm_fail(err, SVLM_E_IO, "%s: stalled, no frame for %.1f s (watchdog)", what,
                         ctl->stall_timeout_s);
    case SVLM_STOP_OPEN_TIMEOUT: return svlm_fail(err, SVLM_E_IO, "%s: timed out while opening", what);
    case SVLM_STOP_NONE:
        /* an interruption left over from an earlier stop: the watchdog cut a read off mid-frame,
         * the partial frame still decoded (progress, so the reason was cleared), and the library's
         * input stays interrupted. Not a cancel, which ended a live stream for good: a stall */
        if (!svlm_ctl_cancelled(ctl))
            return svlm_fail(err, SVLM_E_IO, "%s: stalled, the read was cut off (watchdog)", what);
        return svlm_fail(err, SVLM_E_CANCELLED, "%s: cancelled", what);
    case SVLM_STOP_CANCEL:
    default: return svlm_fail(err, SVLM_E_CANCELLED, "%s: cancelled", what);
    }
}

int svlm_ctl_sleep(svlm_ingest_ctl *ctl, double seconds) {
    double end = svlm_mono_now() + seconds;
    for (;;) {
        if (svlm_ctl_cancelled(ctl)) return 1;
        double left = end - svlm_mono_now();
        if (left <= 0) return 0;
        if (left > 0.05) left = 0.05; /* wake often enough to notice a cancel */
        struct timespec ts = {(time_t)left, (long)((left - floor(left)) * 1e9)};
        nanosleep(&ts, NULL);
    }
}

void svlm_output_size(const svlm_source_opts *opts, int w, int h, int *out_w, int *out_h) {
    if (opts->width > 0 && opts->height > 0) {
        *out_w = opts->width;
        *out_h = opts->height;
        return;
    }
    int longest = w > h ? w : h;
    if (opts->max_edge <= 0 || longest <= opts->max_edge) {
        *out_w = w;
        *out_h = h;
        return;
    }
    /* Same rounding as GStreamer's videoscale, so both backends agree on the size (of square pixels:
     * for an anamorphic picture videoscale keeps the width, FFmpeg's source scales the widened one) */
    double scale = (double)opts->max_edge / longest;
    int ow = w >= h ? opts->max_edge : (int)lround(w * scale);
    int oh = h > w ? opts->max_edge : (int)lround(h * scale);
    *out_w = ow > 0 ? ow : 1;
    *out_h = oh > 0 ? oh : 1;
}

svlm_status svlm_frame_alloc(svlm_frame *frame, int w, int h, svlm_err *err) {
    memset(frame, 0, sizeof *frame);
    if (w <= 0 || h <= 0 || w > 16384 || h > 16384)
        return svlm_fail(err, SVLM_E_UNSUPPORTED, "frame size %dx%d is out of range", w, h);
    frame->data = malloc((size_t)w * 3 * (size_t)h + SVLM_FRAME_SLACK);
    if (!frame->data) return svlm_fail(err, SVLM_E_NOMEM, "out of memory for a %dx%d frame", w, h);
    frame->width = w;
    frame->height = h;
    frame->stride = w * 3;
    return SVLM_OK;
}

void svlm_frame_release(svlm_frame *frame) {
    if (!frame) return;
    free(frame->data);
    memset(frame, 0, sizeof *frame);
}
