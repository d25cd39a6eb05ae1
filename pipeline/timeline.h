/*
 * A source's timeline: the timestamps its consumers see, in seconds, never going back. After a
 * reconnect the new session's restarted clock continues the timeline (the wall-clock gap added);
 * a live source whose clock jumps back by more than SVLM_TIMELINE_JUMP_S (an encoder restart, an
 * HLS discontinuity) is re-anchored the same way, so its frames are not all filed at one time
 * until the new clock catches up; smaller steps back (a recording's last frames, jitter) are held
 * at the last time. A live clock's leaps forward are taken out, and its lag held at a bound, before
 * sampling (svlm_frame_clock).
 */
#ifndef SVLM_PIPELINE_TIMELINE_H
#define SVLM_PIPELINE_TIMELINE_H

#include <stdint.h>

#define SVLM_TIMELINE_JUMP_S 1.0
/* A live clock leaps when a frame's time is further ahead of its arrival than any frame before it
 * was (out - arrival), by more than this many seconds or frames (the larger). */
#define SVLM_TIMELINE_LEAP_S      10.0
#define SVLM_TIMELINE_LEAP_FRAMES 50
/* A live clock lags when a frame's time is further behind its arrival than the least delayed frame's
 * was, by more than this many seconds or SVLM_TIMELINE_LEAP_FRAMES frames (the larger): more than a
 * live HLS stream's segment (up to 10 s), whose first frames come a segment late. */
#define SVLM_TIMELINE_LAG_S 20.0

typedef struct svlm_timeline {
    double offset; /* added to the source's pts */
    double last, last_wall;
    int have_last, new_session, live;
} svlm_timeline;

void svlm_timeline_init(svlm_timeline *t, int live);
/* The next frame starts a new session whose timestamps restart (a reconnect). */
void svlm_timeline_new_session(svlm_timeline *t);
/* The timeline's time of a frame with this pts (seconds, the source's clock) that arrived at wall
 * (seconds, a monotonic clock). */
double svlm_timeline_place(svlm_timeline *t, double pts, double wall);

/*
 * A backend's clock, before sampling: a frame's own timestamp, or a synthesized one (the previous
 * frame's time plus a frame) where it has none, or — for a recording — where its timestamps do not
 * advance: the same timestamp as the previous frame's (every pts 0, a pts stuck at one value), one
 * more than SVLM_TIMELINE_JUMP_S before it (timestamps that restart), or, once synthesizing, one
 * that has not yet passed the synthesized time. A recording's smaller step back is left as it is
 * (the timeline holds it). A live clock (live set) that leaps forward (a camera's clock set an hour
 * on, an HLS discontinuity) continues from the previous frame instead, and its later frames keep
 * that shift: the leap is judged on every decoded frame against its arrival (a live source cannot
 * run ahead of real time), so a start-up burst (frames faster than real time, each a frame later),
 * a real gap, or a gap after frames that came late is not one, where the timeline, seeing only the
 * frames sampling kept (on the wall clock), could not tell them apart.
 * A live clock that lags (a demuxer's guessed frame rate slower than the camera's, an MJPEG stream
 * over HTTP at 25 fps for a 5 fps camera) is held SVLM_TIMELINE_LAG_S behind: from there its times
 * follow the arrival clock, never going back. A live clock's smaller jumps back are the timeline's
 * to handle.
 */
typedef struct svlm_frame_clock {
    int replay;
    int live; /* take out forward leaps (set after init) */
    int have_last;
    double last;     /* the previous frame's time, seconds */
    int64_t last_ts; /* its own timestamp (valid when last_had_ts) */
    int last_had_ts;
    int synth;        /* the previous frame's time was synthesized in place of its own */
    int64_t replaced; /* frames whose own (non-advancing) timestamp was replaced */
    double ahead_max; /* live: the largest (time - arrival) of the frames so far */
    double shift;     /* live: added to frames' own times since the leaps so far */
    int64_t leaps;
    int64_t lags; /* live: frames held at the lag bound */
} svlm_frame_clock;

void svlm_frame_clock_init(svlm_frame_clock *c, int replay);
/* Whether a frame with this timestamp (has_ts: it has one; ts: its own units; t: in seconds) would
 * get a synthesized time because its timestamp does not advance. */
int svlm_frame_clock_stalled(const svlm_frame_clock *c, int has_ts, int64_t ts, double t);
/* The time of the next frame in seconds; step: a frame's duration, for synthesized times (and a live
 * clock's leaps); wall: its arrival, seconds on a monotonic clock (used by live clocks only). */
double svlm_frame_clock_next(svlm_frame_clock *c, int has_ts, int64_t ts, double t, double step, double wall);

#endif
