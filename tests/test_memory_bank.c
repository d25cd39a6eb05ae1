/*
 * The memory bank on synthetic tokens: needle in a 2-hour haystack (the event becomes one
 * EVENT entry with its true time range, a query from its content ranks it first, time-anchored
 * questions find it, the budget holds at every frame), the budget rule's order, time parsing
 * and formatting, and clear errors for bad input.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "memory/memory_bank.h"
#include "test.h"
#include "test_memory_synth.h"

#define T_TOK 16
#define DIM   64

static void test_format(void) {
    char b[64];
    svlm_memory_format_intro(723.9, 761.0, b, sizeof b);
    CHECK(!strcmp(b, "Memory from 12:03 to 12:41:"), "got '%s'", b);
    svlm_memory_format_intro(3600 + 62, 7322, b, sizeof b);
    CHECK(!strcmp(b, "Memory from 1:01:02 to 2:02:02:"), "got '%s'", b);
    svlm_memory_format_clock(-5, b, sizeof b);
    CHECK(!strcmp(b, "00:00"), "negative clamps to zero, got '%s'", b);
}

static void test_parse_time(void) {
    svlm_memory_query q;
    svlm_memory_query_default(&q);
    CHECK(svlm_memory_parse_time_query("What was on the table at 12:30?", 5000, &q) == 1, "at 12:30");
    CHECK(q.t_from == 750 - 30 && q.t_to == 750 + 30, "at 12:30 -> [%g, %g]", q.t_from, q.t_to);
    svlm_memory_query_default(&q);
    CHECK(svlm_memory_parse_time_query("Anything at 1:02:03", 9000, &q) == 1 && q.t_from == 3723 - 30,
          "h:mm:ss");
    svlm_memory_query_default(&q);
    CHECK(svlm_memory_parse_time_query("Who came in the last five minutes?", 1000, &q) == 1, "last five");
    CHECK(q.t_from == 700 && q.t_to == 1000, "last five minutes -> [%g, %g]", q.t_from, q.t_to);
    svlm_memory_query_default(&q);
    CHECK(svlm_memory_parse_time_query("In the past 2 hours, did it rain?", 10000, &q) == 1 &&
              q.t_from == 2800,
          "past 2 hours -> %g", q.t_from);
    svlm_memory_query_default(&q);
    CHECK(svlm_memory_parse_time_query("What happened in the last minute", 600, &q) == 1 && q.t_from == 540,
          "last minute -> %g", q.t_from);
    svlm_memory_query_default(&q);
    CHECK(svlm_memory_parse_time_query("What happened ten minutes ago?", 3600, &q) == 1 &&
              q.t_from == 3000 - 90 && q.t_to == 3000 + 90,
          "ten minutes ago -> [%g, %g]", q.t_from, q.t_to);
    svlm_memory_query_default(&q);
    CHECK(svlm_memory_parse_time_query("between 10:00 and 12:30 who left", 9000, &q) == 1 &&
              q.t_from == 600 && q.t_to == 750,
          "between -> [%g, %g]", q.t_from, q.t_to);
    svlm_memory_query_default(&q);
    CHECK(svlm_memory_parse_time_query("When did the dog first appear?", 9000, &q) == 1 && q.first == 1 &&
              isinf(q.t_from),
          "first");
    static const char *const earliest[] = {"What happened at the start?", "Who was there in the beginning",
                                           "the earliest sighting of a van"};
    for (size_t i = 0; i < sizeof earliest / sizeof earliest[0]; i++) {
        svlm_memory_query_default(&q);
        CHECK(svlm_memory_parse_time_query(earliest[i], 9000, &q) == 1 && q.first == 1, "'%s' is not 'first'",
              earliest[i]);
    }
    svlm_memory_query_default(&q);
    CHECK(svlm_memory_parse_time_query("Who restarted the starter?", 9000, &q) == 0 && !q.first,
          "start look-alikes");
    svlm_memory_query_default(&q);
    CHECK(svlm_memory_parse_time_query("What colour is the car?", 9000, &q) == 0 && isinf(q.t_to) && !q.first,
          "no anchor");
    CHECK(svlm_memory_parse_time_query("thirst at 99:99 firstly", 9000, &q) == 0,
          "look-alikes do not anchor");
}

static void check_errors(void) {
    svlm_memory_opts o;
    svlm_memory_opts_default(&o);
    svlm_memory *m = NULL;
    svlm_err err = {0};
    o.dim = 0;
    CHECK(svlm_memory_create(&o, &m, &err) == SVLM_E_INVALID && !m && strstr(err.msg, "dim"), "%s", err.msg);
    o.dim = DIM;
    o.budget_bytes = 1000;
    CHECK(svlm_memory_create(&o, &m, &err) == SVLM_E_INVALID && strstr(err.msg, "budget"), "%s", err.msg);
    svlm_memory_opts_default(&o);
    o.dim = DIM;
    REQUIRE(svlm_memory_create(&o, &m, &err) == SVLM_OK, "%s", err.msg);
    float tok[4 * DIM] = {0}, key[DIM] = {0};
    CHECK(svlm_memory_push(m, 1, tok, 4, key, &err) == SVLM_E_INVALID && strstr(err.msg, "key"), "%s",
          err.msg);
    CHECK(svlm_memory_push(m, NAN, tok, 4, NULL, &err) == SVLM_E_INVALID, "NaN time");
    CHECK(svlm_memory_push(m, 5, tok, 4, NULL, &err) == SVLM_OK, "%s", err.msg);
    CHECK(svlm_memory_push(m, 4, tok, 4, NULL, &err) == SVLM_E_INVALID && strstr(err.msg, "backwards"), "%s",
          err.msg);
    CHECK(svlm_memory_push(m, 6, tok, 0, NULL, &err) == SVLM_E_INVALID, "no tokens");
    svlm_memory_query q;
    svlm_memory_query_default(&q);
    svlm_memory_hits h;
    CHECK(svlm_memory_retrieve(m, &q, &h, &err) == SVLM_E_INVALID && h.n == 0, "query without vectors");
    svlm_memory_free(m);
}

/* Query vector: the mean of a few fresh object tokens of event e. */
static void object_query(synth *s, int e, float *q) {
    float tok[DIM];
    memset(q, 0, DIM * sizeof(float));
    for (int k = 0; k < 4; k++) {
        synth_object_token(s, e, tok);
        for (int j = 0; j < DIM; j++)
            q[j] += tok[j] / 4;
    }
}

static void test_needle(void) {
    synth s;
    synth_init(&s, T_TOK, DIM, 42);
    double len = 2 * 3600;
    uint64_t r = 7;
    double event_t = 600 + floor((synth_uniform(&r) + 1) / 2 * (len - 1200));
    int ev = synth_add_event(&s, event_t, 3);

    svlm_memory_opts o;
    svlm_memory_opts_default(&o);
    o.dim = DIM;
    o.budget_bytes = 256 << 10; /* tight: clips must merge during the run */
    svlm_memory *m = NULL;
    svlm_err err = {0};
    REQUIRE(svlm_memory_create(&o, &m, &err) == SVLM_OK, "%s", err.msg);
    float *frame = malloc(T_TOK * DIM * sizeof(float));
    size_t peak = 0;
    int over = 0;
    for (int f = 0; f < (int)len; f++) {
        synth_frame(&s, f, frame);
        REQUIRE(svlm_memory_push(m, f, frame, T_TOK, NULL, &err) == SVLM_OK, "frame %d: %s", f, err.msg);
        svlm_memory_stats st;
        svlm_memory_stats_get(m, &st);
        if (st.bytes > peak) peak = st.bytes;
        over += st.bytes > o.budget_bytes;
    }
    REQUIRE(svlm_memory_flush(m, &err) == SVLM_OK, "%s", err.msg);
    svlm_memory_stats st;
    svlm_memory_stats_get(m, &st);
    CHECK(over == 0, "bytes exceeded the budget after %d frames (peak %zu > %zu)", over, peak,
          o.budget_bytes);
    CHECK(st.merges > 0, "the budget should have forced merges");
    printf("needle at %.0f s; peak %zu of %zu bytes; %d entries (short %d, mid %d, event %d); %lld merges\n",
           event_t, peak, o.budget_bytes, svlm_memory_count(m), st.tier_entries[0], st.tier_entries[1],
           st.tier_entries[2], (long long)st.merges);

    /* the event is one EVENT entry with the right time range, and the only one */
    int found = 0;
    uint64_t event_id = 0;
    for (int i = 0; i < svlm_memory_count(m); i++) {
        svlm_memory_entry_info e;
        svlm_memory_entry(m, i, &e);
        if (e.tier != SVLM_MEMORY_EVENT) continue;
        printf("event %llu: [%.1f, %.1f) %d tokens, importance %.1f\n", (unsigned long long)e.id, e.t0, e.t1,
               e.n_tokens, e.importance);
        if (fabs(e.t0 - event_t) <= 1 && fabs(e.t1 - (event_t + 3)) <= 1) found++, event_id = e.id;
    }
    CHECK(found == 1, "expected one event at [%.0f, %.0f), found %d", event_t, event_t + 3, found);
    CHECK(st.tier_entries[SVLM_MEMORY_EVENT] == 1, "a slowly drifting scene is not an event (%d events)",
          st.tier_entries[SVLM_MEMORY_EVENT]);

    /* a query built from the event's content ranks it first, well ahead of the scene */
    float qv[DIM];
    object_query(&s, ev, qv);
    svlm_memory_query q;
    svlm_memory_query_default(&q);
    q.vecs = qv;
    q.n_vecs = 1;
    q.top_k = 8;
    svlm_memory_hits h;
    REQUIRE(svlm_memory_retrieve(m, &q, &h, &err) == SVLM_OK, "%s", err.msg);
    REQUIRE(h.n > 1, "hits %d", h.n);
    CHECK(h.hit[0].id == event_id && h.hit[0].tier == SVLM_MEMORY_EVENT, "top hit %llu (%s) is not the event",
          (unsigned long long)h.hit[0].id, svlm_memory_tier_name(h.hit[0].tier));
    CHECK(h.hit[0].score > 0.9f, "event similarity %.3f", h.hit[0].score);
    float best_other = -1;
    for (int i = 0; i < h.n; i++)
        if (h.hit[i].t1 <= event_t || h.hit[i].t0 >= event_t + 3)
            best_other = fmaxf(best_other, h.hit[i].score);
    CHECK(h.hit[0].score - best_other > 0.5f, "scene entries too close: %.3f vs %.3f", h.hit[0].score,
          best_other);
    CHECK(h.hit[0].n_tokens > 0 && isfinite(h.hit[0].tokens[0]), "hit tokens");
    CHECK(h.scanned <= o.max_entries, "scanned %d", h.scanned);
    /* a token cap is kept whatever the ranking: the event, over it, is skipped (the first hit was
     * always placed, 7 rows for a cap of 1), and the best hits that fit come instead */
    const int event_rows = h.hit[0].n_tokens;
    int smallest = event_rows;
    for (int i = 1; i < h.n; i++)
        smallest = h.hit[i].n_tokens < smallest ? h.hit[i].n_tokens : smallest;
    svlm_memory_hits_free(&h);
    for (int cap = 1; cap <= event_rows; cap++) {
        q.max_tokens = cap;
        REQUIRE(svlm_memory_retrieve(m, &q, &h, &err) == SVLM_OK, "%s", err.msg);
        int rows = 0, has_event = 0;
        for (int i = 0; i < h.n; i++)
            rows += h.hit[i].n_tokens, has_event |= h.hit[i].id == event_id;
        CHECK(rows <= cap, "a cap of %d tokens placed %d", cap, rows);
        CHECK(has_event == (cap >= event_rows), "cap %d (the event has %d rows): event %s", cap, event_rows,
              has_event ? "placed" : "skipped");
        CHECK(cap < smallest || h.n > 0, "a cap of %d placed nothing (the smallest hit has %d rows)", cap,
              smallest);
        svlm_memory_hits_free(&h);
    }

    /* time-anchored questions */
    char question[128], clock[32];
    svlm_memory_format_clock(event_t + 1, clock, sizeof clock);
    snprintf(question, sizeof question, "What was happening at %s?", clock);
    svlm_memory_query_default(&q);
    q.vecs = qv;
    q.n_vecs = 1;
    CHECK(svlm_memory_parse_time_query(question, len, &q) == 1, "%s", question);
    REQUIRE(svlm_memory_retrieve(m, &q, &h, &err) == SVLM_OK, "%s", err.msg);
    CHECK(h.n > 0 && h.hit[0].id == event_id, "'%s' should find the event first", question);
    for (int i = 0; i < h.n; i++)
        CHECK(h.hit[i].t1 > q.t_from && h.hit[i].t0 <= q.t_to, "hit outside the window");
    svlm_memory_hits_free(&h);

    svlm_memory_query_default(&q);
    q.vecs = qv;
    q.n_vecs = 1;
    svlm_memory_parse_time_query("What happened in the last five minutes?", event_t + 200, &q);
    REQUIRE(svlm_memory_retrieve(m, &q, &h, &err) == SVLM_OK, "%s", err.msg);
    CHECK(h.n > 0 && h.hit[0].id == event_id, "last five minutes (just after the event) finds it");
    svlm_memory_hits_free(&h);

    svlm_memory_query_default(&q);
    q.vecs = qv;
    q.n_vecs = 1;
    svlm_memory_parse_time_query("What happened in the last five minutes?", len, &q);
    REQUIRE(svlm_memory_retrieve(m, &q, &h, &err) == SVLM_OK, "%s", err.msg);
    for (int i = 0; i < h.n; i++)
        CHECK(h.hit[i].id != event_id, "the event is not in the last five minutes");
    svlm_memory_hits_free(&h);

    svlm_memory_query_default(&q);
    q.vecs = qv;
    q.n_vecs = 1;
    svlm_memory_parse_time_query("When did the object first appear?", len, &q);
    REQUIRE(svlm_memory_retrieve(m, &q, &h, &err) == SVLM_OK, "%s", err.msg);
    CHECK(h.n > 0 && fabs(h.hit[0].t0 - event_t) <= 1, "first appearance at %.0f, got %.0f", event_t,
          h.n ? h.hit[0].t0 : -1);
    svlm_memory_hits_free(&h);

    svlm_memory_free(m);
    free(frame);
    synth_free(&s);
}

/* Many events, a budget too small for all: order of the rule, and bytes at every frame. */
static void test_budget_order(void) {
    synth s;
    synth_init(&s, T_TOK, DIM, 3);
    for (int e = 0; e < 40; e++)
        synth_add_event(&s, 100 + e * 45, 3);
    svlm_memory_opts o;
    svlm_memory_opts_default(&o);
    o.dim = DIM;
    o.budget_bytes = 160 << 10;
    svlm_memory *m = NULL;
    svlm_err err = {0};
    REQUIRE(svlm_memory_create(&o, &m, &err) == SVLM_OK, "%s", err.msg);
    float frame[T_TOK * DIM];
    int over = 0, events_over_share = 0;
    for (int f = 0; f < 2000; f++) {
        synth_frame(&s, f, frame);
        REQUIRE(svlm_memory_push(m, f, frame, T_TOK, NULL, &err) == SVLM_OK, "frame %d: %s", f, err.msg);
        svlm_memory_stats st;
        svlm_memory_stats_get(m, &st);
        over += st.bytes > o.budget_bytes;
        events_over_share += st.tier_bytes[SVLM_MEMORY_EVENT] > o.budget_bytes / 2;
    }
    svlm_memory_stats st;
    svlm_memory_stats_get(m, &st);
    CHECK(over == 0, "over budget after %d frames", over);
    CHECK(events_over_share == 0, "events held more than their share after %d frames", events_over_share);
    CHECK(st.events == 40, "detected %lld of 40 events", (long long)st.events);
    CHECK(st.shrinks > 0 && st.merges > 0, "the budget should have shrunk events and merged clips");
    /* events lose detail before any is dropped: all 40 are still there, the oldest findable */
    CHECK(st.tier_entries[SVLM_MEMORY_EVENT] == 40, "kept %d of 40 events",
          st.tier_entries[SVLM_MEMORY_EVENT]);
    CHECK(st.tier_entries[SVLM_MEMORY_MID] > 1 && st.tier_entries[SVLM_MEMORY_SHORT] == o.short_frames,
          "recent frames and clips keep their room (%d mid, %d short)", st.tier_entries[1],
          st.tier_entries[0]);
    float qv[DIM];
    object_query(&s, 0, qv);
    svlm_memory_query q;
    svlm_memory_query_default(&q);
    q.vecs = qv;
    q.n_vecs = 1;
    svlm_memory_hits h;
    REQUIRE(svlm_memory_retrieve(m, &q, &h, &err) == SVLM_OK, "%s", err.msg);
    CHECK(h.n > 0 && h.hit[0].tier == SVLM_MEMORY_EVENT && fabs(h.hit[0].t0 - 100) <= 1,
          "the oldest event is still found first (got %.0f)", h.n ? h.hit[0].t0 : -1);
    svlm_memory_hits_free(&h);
    /* oldest detail first: older clips are at least as merged as newer ones */
    int last_level = 1 << 30, ordered = 1;
    for (int i = 0; i < svlm_memory_count(m); i++) {
        svlm_memory_entry_info e;
        svlm_memory_entry(m, i, &e);
        if (e.tier != SVLM_MEMORY_MID) continue;
        if (e.level > last_level + 1) ordered = 0;
        last_level = e.level;
    }
    CHECK(ordered, "merge levels should not grow towards the present");
    printf("budget order: %lld events, %d kept, %lld merges, %lld shrinks, %lld evictions\n",
           (long long)st.events, st.tier_entries[2], (long long)st.merges, (long long)st.shrinks,
           (long long)st.evictions);

    /* novelty: the scene is familiar, a new object is not */
    float nov[T_TOK], obj[T_TOK * DIM];
    synth_frame(&s, 2000, frame);
    REQUIRE(svlm_memory_novelty(m, frame, T_TOK, nov, &err) == SVLM_OK, "%s", err.msg);
    for (int i = 0; i < T_TOK; i++)
        synth_object_token(&s, 63, obj + i * DIM);
    float nov_obj[T_TOK];
    REQUIRE(svlm_memory_novelty(m, obj, T_TOK, nov_obj, &err) == SVLM_OK, "%s", err.msg);
    CHECK(nov[0] < 0.3f && nov_obj[0] > 0.6f, "novelty scene %.2f, new object %.2f", nov[0], nov_obj[0]);
    svlm_memory_free(m);
    synth_free(&s);
}

/* External per-frame keys: entries are ranked in the key space. */
static void test_external_keys(void) {
    enum { KD = 8 };
    svlm_memory_opts o;
    svlm_memory_opts_default(&o);
    o.dim = DIM;
    o.key_dim = KD;
    svlm_memory *m = NULL;
    svlm_err err = {0};
    REQUIRE(svlm_memory_create(&o, &m, &err) == SVLM_OK, "%s", err.msg);
    synth s;
    synth_init(&s, T_TOK, DIM, 5);
    synth_add_event(&s, 300, 3);
    float frame[T_TOK * DIM];
    for (int f = 0; f < 600; f++) {
        float key[KD] = {0};
        key[synth_event_at(&s, f) >= 0 ? 1 : 0] = 1; /* the "model" marks the event in key dim 1 */
        key[2] = 0.1f;
        synth_frame(&s, f, frame);
        REQUIRE(svlm_memory_push(m, f, frame, T_TOK, key, &err) == SVLM_OK, "%s", err.msg);
    }
    svlm_memory_flush(m, &err);
    float qv[KD] = {0, 1, 0, 0, 0, 0, 0, 0};
    svlm_memory_query q;
    svlm_memory_query_default(&q);
    q.vecs = qv;
    q.n_vecs = 1;
    svlm_memory_hits h;
    REQUIRE(svlm_memory_retrieve(m, &q, &h, &err) == SVLM_OK, "%s", err.msg);
    CHECK(h.n > 0 && h.hit[0].t0 >= 299 && h.hit[0].t0 <= 301 && h.hit[0].score > 0.9f,
          "key-space query finds the event (t0 %.0f, score %.2f)", h.n ? h.hit[0].t0 : -1,
          h.n ? h.hit[0].score : 0);
    svlm_memory_hits_free(&h);
    float nov[T_TOK];
    CHECK(svlm_memory_novelty(m, frame, T_TOK, nov, &err) == SVLM_E_UNSUPPORTED, "novelty needs token keys");
    svlm_memory_free(m);
    synth_free(&s);
}

int test_main(void) {
    test_format();
    test_parse_time();
    check_errors();
    test_needle();
    test_budget_order();
    test_external_keys();
    return 0;
}
