/*
 * Frame sampling at a target rate: keeps the first frame at or after each multiple of
 * 1/fps, counted from the first frame. Recordings are sampled by their timestamps, live
 * sources by the arrival clock (their timestamps may jump or restart).
 */
#ifndef SVLM_PIPELINE_SAMPLER_H
#define SVLM_PIPELINE_SAMPLER_H

typedef struct svlm_sampler {
    double interval; /* seconds between kept frames; 0 keeps every frame */
    int by_wall;     /* sample on the wall clock instead of pts */
    int started;
    double next_due; /* time (pts or wall) of the next frame to keep */
} svlm_sampler;

void svlm_sampler_init(svlm_sampler *s, double fps, int by_wall);
/* 1 if the frame with this pts (seconds) arriving at wall (seconds) is kept. */
int svlm_sampler_take(svlm_sampler *s, double pts, double wall);
/* How far ahead (seconds, on the sampler's clock) the next kept frame is from t; 0 when the
 * next frame at or after t would be kept. Lets decoders skip work that sampling discards. */
double svlm_sampler_lead(const svlm_sampler *s, double pts, double wall);
/* Forgets the timeline (after a reconnect the timestamps restart). */
void svlm_sampler_restart(svlm_sampler *s);

#endif
