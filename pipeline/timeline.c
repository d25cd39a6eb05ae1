#include "pipeline/timeline.h"

#include <math.h>
#include <string.h>

void svlm_timeline_init(svlm_timeline *t, int live) {
    memset(t, 0, sizeof *t);
    t->live = live;
}

void svlm_timeline_new_session(svlm_timeline *t) {
    t->new_session = 1;
}

double svlm_timeline_place(svlm_timeline *t, double pts, double wall) {
    if (t->have_last) {
        const double gap = wall > t->last_wall ? wall - t->last_wall : 0;
        const int jumped_back = t->live && pts + t->offset < t->last - SVLM_TIMELINE_JUMP_S;
        if (t->new_session || jumped_back) t->offset = t->last + gap - pts;
    }
    t->new_session = 0;
    double out = pts + t->offset;
    if (t->have_last && out < t->last) out = t->last;
    t->last = out;
    t->last_wall = wall;
    t->have_last = 1;
    return out;
}

void svlm_frame_clock_init(svlm_frame_clock *c, int replay) {
    memset(c, 0, sizeof *c);
    c->replay = replay;
}

int svlm_frame_clock_stalled(const svlm_frame_clock *c, int has_ts, int64_t ts, double t) {
    if (!c->replay || !has_ts || !c->have_last) return 0;
    if (c->synth) return t <= c->last;
    return (c->last_had_ts && ts == c->last_ts) || t < c->last - SVLM_TIMELINE_JUMP_S;
}

double svlm_frame_clock_next(svlm_frame_clock *c, int has_ts, int64_t ts, double t, double step,
                             double wall) {
    const int stalled = svlm_frame_clock_stalled(c, has_ts, ts, t);
    double out = t + c->shift;
    if (!has_ts || stalled) {
        out = c->have_last ? c->last + step : 0;
    } else if (c->live && c->have_last) {
        /* A live source never runs ahead of real time: out - wall stays at most where its least
         * delayed frame put it, and climbs only by a frame at a time in a start-up burst. A frame
         * far beyond that leapt; one after a gap, or after frames that came late, did not. */
        if (out - wall - c->ahead_max > fmax(SVLM_TIMELINE_LEAP_S, SVLM_TIMELINE_LEAP_FRAMES * step)) {
            const double to = fmax(c->last + step, wall + c->ahead_max); /* as if it had not leapt */
            c->shift += to - out;
            out = to;
            c->leaps++;
        }
        /* Nor does it fall ever further behind: a clock slower than real time (a demuxer's guessed
         * frame rate) is held at a bound behind its least delayed frame, so it follows the wall
         * clock from there. Held, not shifted: frames that merely came late keep their own times
         * once they are within the bound again. */
        const double floor_t =
            wall + c->ahead_max - fmax(SVLM_TIMELINE_LAG_S, SVLM_TIMELINE_LEAP_FRAMES * step);
        if (out < floor_t) {
            out = floor_t;
            c->lags++;
        }
    }
    if (c->live) c->ahead_max = c->have_last ? fmax(c->ahead_max, out - wall) : out - wall;
    c->replaced += stalled;
    /* a frame without a timestamp neither starts nor ends the replacing */
    if (has_ts) c->synth = stalled;
    c->last_ts = ts;
    c->last_had_ts = has_ts;
    c->last = out;
    c->have_last = 1;
    return out;
}
