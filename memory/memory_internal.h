/* Shared inside memory/: the bank's layout and the helpers its files give each other. */
#ifndef SVLM_MEMORY_INTERNAL_H
#define SVLM_MEMORY_INTERNAL_H

#include <pthread.h>

#include "memory/memory_bank.h"

/* Frame times (stream seconds) the bank takes and persists: within +-31,700 years, so a resumed
 * stream's clock converts to int64 milliseconds and a reloaded record never holds what a push
 * would have refused. */
#define MEM_MAX_TIME 1e12
/* What a persisted entry may hold, so the loader's limits are the writer's: ids count up from 1
 * (a larger one would wrap next_id), frames an entry stands for and times a clip was merged (merges
 * add them up and saturate here). */
#define MEM_MAX_ID     ((uint64_t)1 << 62)
#define MEM_MAX_FRAMES ((int64_t)1 << 48)
#define MEM_MAX_LEVEL  (1 << 16)
/* Most ids removed_ids holds: it is outside the budget, and saves that fail for days (a full disk)
 * retired records into it without end. Past it a record is left on disk, unlisted, for the next
 * complete save to delete (svlm_memory.orphans). */
#define MEM_MAX_REMOVED(m) ((m)->opts.max_entries > 64 ? (m)->opts.max_entries : 64)

typedef struct mem_entry {
    uint64_t id;
    svlm_memory_tier tier;
    int plan; /* a planned entry (resume): its node in svlm_memory.plan, + 1; 0: tokens and keys are in memory
               * (it sits in what was padding: mem_entry_bytes, and so every budget, is unchanged) */
    double t0, t1;
    int64_t n_frames;
    int n_tokens;
    int level;
    float importance;
    float *tokens; /* [n_tokens][dim] */
    int n_keys;
    float *keys;   /* [n_keys][key width], unit length */
    int persisted; /* its record is on disk as it is now */
    uint32_t crc;  /* of that record */
} mem_entry;

/* Resume (memory_resume.c) applies the budget to entries made from their records' headers alone,
 * "planned" entries (tokens and keys NULL), before it reads any payload: the budget's merges and
 * halvings of planned entries are noted here instead of computed, so only the records that the
 * budget keeps something of are read, and only what it keeps is computed (memory_budget.c's steps
 * are the same code either way). */
typedef struct mem_plan_node {
    int rec;      /* a record: its index in the resume's list; -1: a merge of from[0] and from[1] */
    int from[2];  /* a merge's two nodes (indices) */
    int halvings; /* a record: times its tokens are halved (an event's shrinks) */
    int n_tokens; /* tokens after that */
} mem_plan_node;

/* A manifest's row: a record listed, with its checksum. */
typedef struct mem_row {
    uint64_t id;
    uint32_t crc;
} mem_row;

/* The clip being built: per-position sums of similar consecutive frames. */
typedef struct mem_clip {
    int open;
    int n_tokens;
    int64_t n_frames;
    double t0, t_last;
    double *sum;     /* [n_tokens][dim] */
    double *key_sum; /* [key_dim] (external keys only) */
    float *mean_dir; /* [dim] unit mean token of the clip's first frame */
} mem_clip;

/* The event being built. */
typedef struct mem_event {
    int open;
    int n_tokens; /* baseline frame size */
    double t0, t_last_spike;
    double t_last; /* its last frame */
    int calm;      /* no salient change since calm_since */
    double calm_since;
    float peak_z;
    int frames_kept;
    int n_kept;      /* tokens in kept[] */
    float *baseline; /* [n_tokens][dim]: the scene before the event */
    float *kept;     /* [event_frames * event_tokens][dim] */
    double *key_sum; /* [key_dim] */
    int64_t n_frames;
} mem_event;

struct svlm_memory {
    pthread_mutex_t lock;
    svlm_memory_opts opts;
    char *dir;
    int kdim; /* key width: key_dim or dim */

    mem_entry **entries; /* time order (t0, id) */
    int n_entries, cap_entries;
    uint64_t next_id;
    size_t entry_bytes; /* sum of mem_entry_bytes over entries */

    /* detectors */
    int prev_n;               /* tokens of the previous frame (0: none yet) */
    float *prev;              /* [prev_n][dim] */
    float *dist;              /* [prev_n] scratch */
    double prev_t, dt;        /* last time, frame interval estimate */
    double chg_mean, chg_dev; /* usual change score: median and scaled MAD of recent calm frames */
    int64_t chg_n;
    float chg_hist[64]; /* the last calm change scores (a ring) */
    mem_clip clip;
    mem_event event;
    size_t work_bytes;

    svlm_memory_stats st;
    svlm_memory_load_report report;
    uint64_t *removed_ids; /* records to delete from dir after the next manifest (MEM_MAX_REMOVED) */
    int n_removed, cap_removed;
    int orphans;     /* records retired past that cap: the next complete save deletes every record it
                      * does not list, as the next open would */
    int dirty;       /* entries changed since the last manifest */
    int resumed;     /* dir held a bank (a manifest or verified records): st.t_last is where it ended */
    int lock_fd;     /* dir/LOCK, held (flock) while a writing bank has dir open; -1: none */
    int other_width; /* records skipped for another model's width (no manifest to say so) */

    /* resume only (memory_resume.c; found_rows: memory_store.c) */
    mem_plan_node *plan; /* what planned entries stand for */
    int n_plan, cap_plan;
    int evict_only; /* the budget evicts only (no merges, no shrinks) */
    /* The directory's records as opening found them (not refused), when no manifest there lists
     * just them (none, a corrupt one, or one listing records set aside): the next save writes
     * them as the manifest before it writes any new record, so whatever records a failed or
     * interrupted save leaves are orphans that the next open deletes, never loaded beside the
     * records they were made from. NULL once written. */
    mem_row *found_rows;
    int n_found_rows;
};

/* memory_bank.c */
size_t mem_entry_bytes(const svlm_memory *m, const mem_entry *e);
mem_entry *mem_entry_new(svlm_memory *m, svlm_memory_tier tier, int n_tokens, int n_keys);
void mem_entry_free(mem_entry *e);
/* Inserts in time order; takes ownership. */
svlm_status mem_insert(svlm_memory *m, mem_entry *e, svlm_err *err);
/* Takes entry i out of the table, its record left as it is; the caller owns it. */
mem_entry *mem_take(svlm_memory *m, int i);
/* Removes entry i and frees it (remembering its record for deletion). */
void mem_remove(svlm_memory *m, int i);
/* Entry i changed: it gets a new id, so a save written under it never replaces the record the
 * current manifest lists (a save that fails before its manifest leaves the old state whole);
 * the old record goes with the next manifest. Fails only for memory or ids (the entry is lost). */
svlm_status mem_renew(svlm_memory *m, int i, svlm_err *err);
/* Re-derives the keys from the tokens (key_dim == 0) after tokens changed. */
svlm_status mem_refresh_keys(svlm_memory *m, mem_entry *e);

/* memory_compress.c */
/* Clusters n vectors [n][d] into k <= n centroids [k][d] (farthest-point start, a few Lloyd
 * rounds on cosine). Deterministic. Returns 0, or -1 when out of memory. */
int mem_cluster(const float *x, int n, int d, int k, float *centroids);
/* The work of mem_cluster(x, n, d, k): vector elements it visits (a few multiply-adds each). */
double mem_cluster_cost(int n, int d, int k);
/* Merges entries a and b (adjacent MID clips) into a new entry. NULL when out of memory. */
mem_entry *mem_merge_clips(svlm_memory *m, const mem_entry *a, const mem_entry *b);
/* Halves an entry's tokens by clustering them (an event's shrink); keys re-derived. -1: out of memory. */
int mem_halve_tokens(svlm_memory *m, mem_entry *e);
/* The same two on planned entries (both planned): the result's header as the real ones give it,
 * the work noted in m->plan. NULL / -1 when out of memory. */
mem_entry *mem_merge_planned(svlm_memory *m, const mem_entry *a, const mem_entry *b);
int mem_halve_planned(svlm_memory *m, mem_entry *e);
/* Appends a node to m->plan; returns its index + 1 (for mem_entry.plan), 0 when out of memory. */
int mem_plan_add(svlm_memory *m, int rec, int from0, int from1, int n_tokens);
float mem_cosine(const float *a, const float *b, int d);
void mem_normalise(float *v, int d);

/* memory_budget.c */
/* Applies the budget rule until bytes <= budget and entries <= max_entries. */
svlm_status mem_enforce_budget(svlm_memory *m, svlm_err *err);
size_t mem_total_bytes(const svlm_memory *m);

/* memory_store.c */
svlm_status mem_store_load(svlm_memory *m, svlm_err *err);
/* Writes changed entries and the manifest, then deletes removed records. */
svlm_status mem_store_sync(svlm_memory *m, svlm_err *err);
/* Releases the directory's lock; a directory that holds nothing but it (a stream opened and closed
 * before its bank kept anything) goes too: a server's DIR/NAME for each name ever opened stayed. */
void mem_store_unlock(svlm_memory *m);
/* Reads only the manifest header of dir: dim and key_dim. */
svlm_status mem_store_peek_dims(const char *dir, int *dim, int *key_dim, svlm_err *err);
uint32_t mem_crc32(uint32_t crc, const void *data, size_t n);

#endif
