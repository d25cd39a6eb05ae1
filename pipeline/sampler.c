#include "pipeline/sampler.h"

#include <math.h>

/* Timestamps of 29.97 fps clips and container rounding put frames a hair before the grid. */
#define SAMPLER_TOLERANCE 1e-3

void svlm_sampler_init(svlm_sampler *s, double fps, int by_wall) {
    s->interval = fps > 0 ? 1.0 / fps : 0;
    s->by_wall = by_wall;
    s->started = 0;
    s->next_due = 0;
}

void svlm_sampler_restart(svlm_sampler *s) {
    s->started = 0;
}

int svlm_sampler_take(svlm_sampler *s, double pts, double wall) {
    double t = s->by_wall ? wall : pts;
    if (s->interval <= 0) return 1;
    /* A timeline that went far backwards (a wrapped or restarted stream) starts over. */
    if (s->started && t < s->next_due - 4 * s->interval - 1.0) s->started = 0;
    if (!s->started) {
        s->started = 1;
        s->next_due = t + s->interval;
        return 1;
    }
    if (t < s->next_due - SAMPLER_TOLERANCE) return 0;
    /* Next grid point after t; a long gap skips the points it covered. */
    double steps = floor((t - s->next_due + SAMPLER_TOLERANCE) / s->interval) + 1;
    s->next_due += steps * s->interval;
    return 1;
}

double svlm_sampler_lead(const svlm_sampler *s, double pts, double wall) {
    if (s->interval <= 0 || !s->started) return 0;
    double lead = s->next_due - (s->by_wall ? wall : pts);
    return lead > 0 ? lead : 0;
}
