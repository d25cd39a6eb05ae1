/*
 * A source's timeline: the timestamps its consumers see, in seconds, never going back. After a
 * reconnect the new session's restarted clock continues the timeline (the wall-clock gap added);
 * a live source whose clock jumps back by more than SVLM_TIMELINE_JUMP_S (an encoder restart, an
 * HLS discontinuity) is re-anchored the same way, so its frames are not all filed at one time
 * until the new clock catches up; smaller steps back (a recording's last frames, jitter) are held
 * at the last time.
 */
#ifndef SVLM_PIPELINE_TIMELINE_H
#define SVLM_PIPELINE_TIMELINE_H

#define SVLM_TIMELINE_JUMP_S 1.0

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

#endif
