/*
 * The memory bank: what a stream remembers after frames leave the decoder's window, within
 * one byte budget, however long the stream runs.
 *
 * Tiers (the working window itself is the streaming engine's KV cache, not kept here):
 *   SHORT  full visual tokens of the most recent frames handed over (opts.short_frames).
 *   MID    clips: runs of similar consecutive frames, averaged per token position, then
 *          clustered into opts.mid_tokens representative tokens (VideoChat-Flash /
 *          Flash-VStream style). Under budget pressure adjacent clips merge (coarser time).
 *   EVENT  salient moments: a frame-to-frame change of the visual tokens far above the
 *          stream's usual change (a scene cut, something entering or leaving). An event keeps
 *          the tokens that changed against the scene before it, from its first few frames,
 *          with its time range. It ends when the scene returns to what it was before (the
 *          thing left: the range ends there), when a new salient change follows at least
 *          opts.event_gap_s of calm (that change starts the next event; the range ends where
 *          the calm began), or after opts.event_max_s. Events are entries once they end.
 * Every entry carries [t0, t1) in stream seconds, a token count, bytes, an importance and up
 * to SVLM_MEMORY_MAX_KEYS unit summary keys that retrieval ranks against. An entry ends at most
 * two frame intervals after its last frame: a gap in the frame times (a reconnect, a paused
 * source) is covered by no entry, and does not count as a frame interval.
 *
 * Budget rule (memory_budget.c): after every push the bank's bytes (entries, keys and the
 * working buffers of the detectors) are at most opts.budget_bytes. When over, in order:
 *   1. merge the oldest adjacent pair of MID clips at the lowest merge level (old detail
 *      goes first; a merged clip keeps the larger token count, so its time resolution halves);
 *   2. evict the oldest MID clip;
 *   3. drop the oldest SHORT frame;
 *   4. halve the tokens of the least important EVENT (down to 2 tokens);
 *   5. evict the least important EVENT (importance = peak change z-score; ties: oldest).
 * Events may hold at most opts.event_share of the budget: beyond it steps 4-5 run first, so
 * a busy stream still keeps its recent frames and a coarse timeline of clips.
 * The same steps run when the number of entries exceeds opts.max_entries, which is what keeps
 * the cost of a question bounded (see memory_retrieve).
 *
 * Interface with the streaming engine: call svlm_memory_push() for every frame that leaves
 * the decoder's window (or directly from the vision stage), in time order, with the frame's
 * visual tokens after the connector ([n_tokens][dim] float32, dim = the decoder's n_embd).
 * Optionally pass a per-frame key ([key_dim] floats, e.g. the mean of the frame's attention
 * keys at one layer); then queries are ranked in that key space instead of token space.
 * At question time call svlm_memory_retrieve() with the question's representations (its
 * mean-pooled hidden states or keys, same space as the entry keys), and place each hit's
 * tokens into the forked context after svlm_memory_format_intro() ("Memory from 12:03 to
 * 12:41:"). svlm_memory_parse_time_query() turns "at 12:30", "in the last five minutes",
 * "when did ... first happen" into a time filter.
 *
 * Threading: every call takes the bank's lock, so the engine may push from its ingest thread
 * while questions retrieve from others. Retrieval results are copies owned by the caller.
 *
 * Persistence (memory_store.c): with opts.dir, MID and EVENT entries are written as they
 * change: one checksummed record file per entry plus a checksummed MANIFEST, each written to
 * a temporary file, fsynced and renamed. On open the directory is verified; records that are
 * corrupt, truncated or missing are reported (svlm_memory_load_report) and skipped, and the
 * bank resumes with what verified. SHORT frames and the clip/event still being built are not
 * persisted (they are the last seconds of the stream). A resumed stream continues its clock
 * after svlm_memory_stats.t_last (restored from the directory: the manifest's, or without one the
 * latest end among the records read and verified), so times stay ordered: a bank that resumed a
 * manifest or records refuses an earlier frame time (svlm_memory_push). Saves that keep failing
 * (a full disk) leave the records of evicted entries on disk, unlisted once a save succeeds again,
 * which then deletes them; what the bank keeps in memory for that stays bounded.
 * A record refused (corrupt, unreadable, not a regular file) is renamed NAME.corrupt, out of the
 * bank's way, by a writing open; a record is never deleted for being refused or unreadable.
 * A file that is not a regular file (a FIFO, a device, a directory) where the manifest, a record
 * or LOCK belongs is refused without being waited on: LOCK's fails the open; so does a directory
 * named MANIFEST for a writing open (a rebuilt manifest could not replace it), while a reader
 * scans the records as without a manifest; a FIFO, socket or device named MANIFEST is reported
 * like a corrupt manifest (the records scanned, a rebuilt manifest replaces it), and one named as
 * a record like a corrupt record.
 * Opening applies the budget before reading payloads: the budget's steps run on the records'
 * headers (sizes, times, importance are all they look at), and only the records that something
 * is kept of are read and verified, so a directory larger than the budget costs what the budget
 * keeps, not what the directory holds. The entries are those that loading every record and then
 * applying the budget gives (the same merges and shrinks, computed on what is kept), except:
 * records never read are never verified, so a corrupt one among those evicted counts as its
 * header says instead of being set aside; and where redoing the merges and shrinks of what is
 * kept would read more than 4 budgets or cluster far more than a bank's own entries need (records
 * crafted with thousands of tokens), the budget evicts only (oldest clips first, then the least
 * important events) and nothing is clustered (load report: evict_only). Records evicted unread
 * are counted (skipped, and in detail) and deleted as evictions are, by a save, which opening
 * then makes at once (an unread record is not vouched for, so none stays listed). Without a valid
 * manifest (or with records refused), opening first writes one listing the records as found, so
 * that a save that fails or is interrupted leaves orphans the next open deletes, never records
 * loaded beside those they were made from. Should a save on opening fail (a full disk), the bank
 * opens all the same with its entries in memory, says so in the load report's detail (and on
 * stderr), and the next save tries again. Out of memory while opening fails the open rather than
 * drop a record.
 */
#ifndef SVLM_MEMORY_BANK_H
#define SVLM_MEMORY_BANK_H

#include <stddef.h>
#include <stdint.h>

#include "svlm.h"

#define SVLM_MEMORY_MAX_KEYS 4

typedef enum svlm_memory_tier {
    SVLM_MEMORY_SHORT = 0,
    SVLM_MEMORY_MID = 1,
    SVLM_MEMORY_EVENT = 2,
} svlm_memory_tier;
#define SVLM_MEMORY_N_TIERS 3

const char *svlm_memory_tier_name(svlm_memory_tier tier); /* "short", "mid", "event" */

typedef struct svlm_memory_opts {
    int dim;                /* token width D (required; 0 only with read_only: taken from dir) */
    int key_dim;            /* width of per-frame keys; 0: keys are derived from the tokens */
    size_t budget_bytes;    /* the stream's whole memory (64 MiB) */
    int max_entries;        /* cap on entries, bounds retrieval cost (4096) */
    int short_frames;       /* SHORT frames kept in full (8) */
    int mid_tokens;         /* representative tokens per clip (8) */
    float clip_similarity;  /* cosine of a frame's mean token to the clip's to join it (0.97) */
    double clip_max_s;      /* longest clip in stream seconds (60) */
    float event_z;          /* change above mean + event_z * deviation is salient (6) */
    float event_min_change; /* ... and above this absolute change score (0.02) */
    double event_gap_s;     /* calm that separates two events (1 s) */
    double event_max_s;     /* longest event (60) */
    int event_frames;       /* frames of an event whose changed tokens are kept (3) */
    int event_tokens;       /* changed tokens kept per event frame (16) */
    float event_share;      /* most of the budget events may hold (0.5) */
    const char *dir;        /* persistence directory (created if absent), or NULL */
    int read_only;          /* open dir for inspection: no writes, pushes refused */
} svlm_memory_opts;

void svlm_memory_opts_default(svlm_memory_opts *opts);

typedef struct svlm_memory svlm_memory;

/* Creates a bank. With opts->dir, resumes from what the directory holds and verifies
 * (see svlm_memory_load_report). Fails on invalid options, or when dir holds a bank of a
 * different dim/key_dim. */
svlm_status svlm_memory_create(const svlm_memory_opts *opts, svlm_memory **out, svlm_err *err);
void svlm_memory_free(svlm_memory *m);

/* One frame: t in stream seconds (non-decreasing), tokens [n_tokens][dim], key [key_dim] or
 * NULL (required when opts.key_dim > 0). Returns SVLM_E_LIMIT if one frame cannot fit the
 * budget at all (the working buffers for its size and one SHORT frame; the bank is left as it
 * was), SVLM_E_IO if persisting failed (the bank in memory stays consistent; the next push or
 * flush saves again), SVLM_E_INVALID for a time that goes backwards, also in a bank resumed from
 * opts.dir whose caller's clock restarted: t before svlm_memory_stats.t_last (the bank left as it
 * was; svlm's streams add svlm_stream_metrics.time_offset, past it). */
svlm_status svlm_memory_push(svlm_memory *m, double t, const float *tokens, int n_tokens, const float *key,
                             svlm_err *err);

/* Closes the clip and event being built (end of stream) so they become entries (and are
 * persisted). Pushing more frames afterwards is allowed. */
svlm_status svlm_memory_flush(svlm_memory *m, svlm_err *err);

typedef struct svlm_memory_stats {
    size_t bytes; /* everything accounted against the budget */
    size_t budget;
    size_t tier_bytes[SVLM_MEMORY_N_TIERS];
    int tier_entries[SVLM_MEMORY_N_TIERS];
    size_t work_bytes; /* detector buffers (previous frame, clip sums) */
    int64_t frames;    /* frames pushed */
    int64_t events;    /* events detected */
    int64_t merges, evictions, shrinks;
    double t_first, t_last; /* stream time covered */
} svlm_memory_stats;
void svlm_memory_stats_get(svlm_memory *m, svlm_memory_stats *s);

typedef struct svlm_memory_entry_info {
    uint64_t id;
    svlm_memory_tier tier;
    double t0, t1;    /* [t0, t1) stream seconds */
    int64_t n_frames; /* frames it stands for */
    int n_tokens;
    size_t bytes;
    float importance;
    int level; /* MID: times merged */
} svlm_memory_entry_info;

/* Entries in time order (t0, then id). Index i in [0, count). */
int svlm_memory_count(svlm_memory *m);
svlm_status svlm_memory_entry(svlm_memory *m, int i, svlm_memory_entry_info *info);

/* What opening opts.dir found: records loaded and rejected, and why. */
typedef struct svlm_memory_load_report {
    int loaded, rejected;
    int skipped;       /* records the budget evicted on opening, left unread (see Persistence above) */
    int evict_only;    /* 1: the budget was applied on opening by eviction only (see Persistence) */
    size_t bytes_read; /* bytes of records read whole (of the others, 76 bytes of header and checksum) */
    int manifest_ok;   /* 1: MANIFEST verified; 0: absent, corrupt or not a regular file (records scanned) */
    char detail[512];  /* human-readable list of problems and of what the budget skipped, empty when none */
} svlm_memory_load_report;
void svlm_memory_load_report_get(svlm_memory *m, svlm_memory_load_report *r);

/* ---- retrieval (memory_retrieve.c) ---------------------------------------------------- */

typedef struct svlm_memory_query {
    const float *vecs;   /* question representations [n_vecs][key width]: key_dim, or dim */
    int n_vecs;          /* more than 8 are pooled into 8 chunk means (bounded cost) */
    double t_from, t_to; /* only entries overlapping [t_from, t_to] (defaults: everything) */
    int first;           /* "when did ... first": earliest relevant entries first */
    int top_k;           /* hits wanted (default 4) */
    int max_tokens;      /* at most this many tokens in all: a hit that would pass it is skipped; 0: no cap */
} svlm_memory_query;

void svlm_memory_query_default(svlm_memory_query *q);

/* Fills q's time filter from the question's wording; now = the stream's current time.
 * Returns 1 when the question was anchored in time, 0 otherwise (q unchanged). Understood:
 * "at MM:SS" / "at H:MM:SS" (±30 s), "between A and B", "in the last N seconds/minutes/hours"
 * (digits or words one..sixty, "a"/"an"), "N minutes ago" (±30 s... ±10% of N), "first" (also "the
 * start", "the beginning", "earliest"). */
int svlm_memory_parse_time_query(const char *question, double now, svlm_memory_query *q);

typedef struct svlm_memory_hit {
    uint64_t id;
    svlm_memory_tier tier;
    double t0, t1;
    float score; /* cosine similarity of the best (question vector, entry key) pair */
    int n_tokens;
    float *tokens; /* [n_tokens][dim], owned by the hits */
} svlm_memory_hit;

typedef struct svlm_memory_hits {
    int n;
    svlm_memory_hit *hit; /* best first, or earliest first for q->first */
    int scanned;          /* entries scored */
} svlm_memory_hits;

svlm_status svlm_memory_retrieve(svlm_memory *m, const svlm_memory_query *q, svlm_memory_hits *out,
                                 svlm_err *err);
void svlm_memory_hits_free(svlm_memory_hits *h);

/* Novelty of each of n tokens [n][dim] against what memory holds: 1 - the best cosine with
 * the same position of the newest SHORT frame (when it has n tokens) and with the keys of
 * the most recent entries (at most 16); 1 for an empty bank. For the token pruner. Needs keys in
 * token space (opts.key_dim == 0), else SVLM_E_UNSUPPORTED. */
svlm_status svlm_memory_novelty(svlm_memory *m, const float *tokens, int n, float *novelty, svlm_err *err);

/* "MM:SS" below an hour, "H:MM:SS" from an hour on (stream seconds, rounded down). */
void svlm_memory_format_clock(double t, char *buf, size_t n);
/* "Memory from 12:03 to 12:41:" — the text that introduces a hit in the question's context. */
void svlm_memory_format_intro(double t0, double t1, char *buf, size_t n);

#endif
