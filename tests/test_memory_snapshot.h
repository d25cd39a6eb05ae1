/* A memory bank's persisted entries, taken to compare a bank before and after (a reopen, a
 * refused push): the tests of memory/ share it. */
#ifndef SVLM_TESTS_TEST_MEMORY_SNAPSHOT_H
#define SVLM_TESTS_TEST_MEMORY_SNAPSHOT_H

#include "memory/memory_bank.h"

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

#endif
