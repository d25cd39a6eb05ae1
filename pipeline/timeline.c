#include "pipeline/timeline.h"

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
