/* What the tests of memory/ share: a bank's persisted entries, taken to compare a bank before and
 * after (a reopen, a refused push), and a run of synthetic frames pushed into it. */
#ifndef SVLM_TESTS_TEST_MEMORY_SNAPSHOT_H
#define SVLM_TESTS_TEST_MEMORY_SNAPSHOT_H

#include <stdlib.h>

#include "memory/memory_bank.h"
#include "test.h"
#include "test_memory_synth.h"

#define SNAPSHOT_MAX 512

typedef struct snapshot {
    int n;
    svlm_memory_entry_info e[SNAPSHOT_MAX];
} snapshot;

/* The persisted tiers only (SHORT frames are not written). */
static inline void take(svlm_memory *m, snapshot *s) {
    s->n = 0;
    for (int i = 0; i < svlm_memory_count(m) && s->n < SNAPSHOT_MAX; i++) {
        svlm_memory_entry_info e;
        svlm_memory_entry(m, i, &e);
        if (e.tier != SVLM_MEMORY_SHORT) s->e[s->n++] = e;
    }
}

static inline int same_entry(const svlm_memory_entry_info *a, const svlm_memory_entry_info *b) {
    return a->id == b->id && a->tier == b->tier && a->t0 == b->t0 && a->t1 == b->t1 &&
           a->n_tokens == b->n_tokens && a->n_frames == b->n_frames && a->importance == b->importance &&
           a->level == b->level;
}

static inline int same_entries(const snapshot *a, const snapshot *b) {
    if (a->n != b->n) return 0;
    for (int i = 0; i < a->n; i++)
        if (!same_entry(&a->e[i], &b->e[i])) return 0;
    return 1;
}

/* Frames f0 .. f1 - 1 of s, each pushed at t = f (every push must succeed), then a flush. */
static inline void push_frames(svlm_memory *m, synth *s, int f0, int f1) {
    float *frame = malloc(sizeof(float) * (size_t)s->T * (size_t)s->D);
    REQUIRE(frame, "out of memory");
    svlm_err err = {0};
    for (int f = f0; f < f1; f++) {
        synth_frame(s, f, frame);
        REQUIRE(svlm_memory_push(m, f, frame, s->T, NULL, &err) == SVLM_OK, "frame %d: %s", f, err.msg);
    }
    REQUIRE(svlm_memory_flush(m, &err) == SVLM_OK, "%s", err.msg);
    free(frame);
}

#endif
