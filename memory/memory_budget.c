/* The budget rule (stated in memory_bank.h): old clip detail goes first, events last. */
#include <stdlib.h>

#include "common/err.h"
#include "memory/memory_internal.h"

#define EVENT_MIN_TOKENS 2

size_t mem_total_bytes(const svlm_memory *m) {
    return m->entry_bytes + m->work_bytes + (size_t)m->cap_entries * sizeof(mem_entry *);
}

static int over(const svlm_memory *m) {
    return mem_total_bytes(m) > m->opts.budget_bytes || m->n_entries > m->opts.max_entries;
}

/* Step 1: the oldest adjacent pair of MID clips whose larger level is the lowest. */
static int merge_oldest_clips(svlm_memory *m) {
    if (m->evict_only) return 0;
    int best_a = -1, best_b = -1, best_level = 1 << 30, last = -1;
    for (int i = 0; i < m->n_entries; i++) {
        if (m->entries[i]->tier != SVLM_MEMORY_MID) continue;
        if (last >= 0) {
            const mem_entry *a = m->entries[last], *b = m->entries[i];
            int level = a->level > b->level ? a->level : b->level;
            if (level < best_level) best_level = level, best_a = last, best_b = i;
        }
        last = i;
    }
    if (best_a < 0) return 0;
    const mem_entry *a = m->entries[best_a], *b = m->entries[best_b];
    mem_entry *e = a->plan || b->plan ? mem_merge_planned(m, a, b) : mem_merge_clips(m, a, b);
    if (!e) return -1;
    mem_remove(m, best_b); /* b after a: a's index stays valid */
    mem_remove(m, best_a);
    if (mem_insert(m, e, NULL)) return -1;
    m->st.merges++;
    return 1;
}

static int evict_first_of(svlm_memory *m, svlm_memory_tier tier) {
    for (int i = 0; i < m->n_entries; i++)
        if (m->entries[i]->tier == tier) {
            mem_remove(m, i);
            m->st.evictions++;
            return 1;
        }
    return 0;
}

/* The least important event (ties: the oldest), optionally only among those that can shrink. */
static int least_important_event(const svlm_memory *m, int shrinkable) {
    int arg = -1;
    for (int i = 0; i < m->n_entries; i++) {
        const mem_entry *e = m->entries[i];
        if (e->tier != SVLM_MEMORY_EVENT || (shrinkable && e->n_tokens / 2 < EVENT_MIN_TOKENS)) continue;
        if (arg < 0 || e->importance < m->entries[arg]->importance) arg = i;
    }
    return arg;
}

/* Step 4: halve an event's tokens by clustering them. */
static int shrink_event(svlm_memory *m) {
    if (m->evict_only) return 0;
    int i = least_important_event(m, 1);
    if (i < 0) return 0;
    mem_entry *e = m->entries[i];
    size_t before = mem_entry_bytes(m, e);
    if (e->plan ? mem_halve_planned(m, e) : mem_halve_tokens(m, e)) return -1;
    size_t after = mem_entry_bytes(m, e);
    m->entry_bytes -= before - after;
    m->st.tier_bytes[SVLM_MEMORY_EVENT] -= before - after;
    m->st.shrinks++;
    /* a new id: the record rewritten under the old one replaced it before the manifest that
     * lists the new checksum, and a failed manifest write then lost the event on the next open */
    return mem_renew(m, i, NULL) ? -1 : 1;
}

static size_t event_cap(const svlm_memory *m) {
    return (size_t)((double)m->opts.budget_bytes * m->opts.event_share);
}

/* Step 4 or 5 on the least important event; 0 when there is none. */
static int reduce_events(svlm_memory *m) {
    int r = shrink_event(m);
    if (r) return r;
    int i = least_important_event(m, 0);
    if (i < 0) return 0;
    mem_remove(m, i);
    m->st.evictions++;
    return 1;
}

svlm_status mem_enforce_budget(svlm_memory *m, svlm_err *err) {
    int r = 0;
    /* Events may hold at most their share, so that recent frames and clips always have room. */
    while (m->st.tier_bytes[SVLM_MEMORY_EVENT] > event_cap(m) && (r = reduce_events(m)) > 0) {
    }
    while (r >= 0 && over(m)) {
        r = merge_oldest_clips(m);
        if (r == 0) r = evict_first_of(m, SVLM_MEMORY_MID);
        if (r == 0) r = evict_first_of(m, SVLM_MEMORY_SHORT);
        if (r == 0) r = reduce_events(m);
        if (r == 0)
            return svlm_fail(err, SVLM_E_LIMIT,
                             "memory: %zu bytes of working buffers exceed the budget of %zu",
                             mem_total_bytes(m), m->opts.budget_bytes);
    }
    if (r < 0) return svlm_fail(err, SVLM_E_NOMEM, "memory: out of memory while compressing");
    return SVLM_OK;
}
