/*
 * Resuming a bank within its budget: on opening, the budget is applied to entries planned from
 * the records' headers alone (memory_store.c finds and checks them without reading a payload),
 * memory_budget.c's own steps noting the merges and halvings of planned entries instead of
 * computing them. Only the records the budget keeps something of are then read and verified, and
 * only what it keeps is computed from them, by the same merges and halvings in the same order: the
 * result is what loading every record and then applying the budget gives, and opening costs what
 * the budget keeps, not what the directory holds. Kept apart from memory_store.c, which owns the
 * files and their format.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "memory/memory_internal.h"
#include "memory/memory_resume.h"

/* What a resume may spend to give exactly what loading every record and then applying the budget
 * gives: reading the records that the budget keeps something of, up to RESUME_READ_BUDGETS times
 * the budget, and redoing the budget's merges and shrinks of them, up to RESUME_WORK_PER_BYTE
 * vector elements (mem_cluster_cost) per byte of budget, about 10 s for 64 MiB here. A bank
 * reopened under the budget it was written with needs neither; one written under a budget up to
 * about 4 times larger stays within both (its entries are a bank's own, a clip of mid_tokens, an
 * event of event_frames x event_tokens: 10 to 75 per byte measured, halving the budget to
 * quartering it). Past either, the budget evicts only (in its own order: oldest clips, then the
 * least important events), so at most the budget is read and nothing is clustered: a directory of
 * 128 MiB of 4096-token records took about 600 s of clustering to fit a 64 MiB budget. */
#define RESUME_READ_BUDGETS  4
#define RESUME_WORK_PER_BYTE 128

/* Empties the table and fills it with one planned entry a record found (and not refused), as
 * loading them all fills it: the same entries in the same order, the same ids to come, the same
 * table size (which the budget counts). */
static svlm_status plan_table(svlm_memory *m, const mem_resume *rs, svlm_err *err) {
    for (int i = 0; i < m->n_entries; i++)
        mem_entry_free(m->entries[i]);
    free(m->entries);
    m->entries = NULL;
    m->n_entries = m->cap_entries = 0;
    m->entry_bytes = 0;
    memset(m->st.tier_entries, 0, sizeof m->st.tier_entries);
    memset(m->st.tier_bytes, 0, sizeof m->st.tier_bytes);
    m->st.merges = m->st.evictions = m->st.shrinks = 0;
    m->n_removed = 0;
    m->dirty = 0;
    m->next_id = 1;
    m->n_plan = 0;
    for (int i = 0; i < rs->n; i++) {
        if (rs->r[i].rejected) continue;
        mem_entry *e = calloc(1, sizeof *e); /* tokens and keys NULL: a planned entry */
        if (e) mem_header_to_entry(rs->r[i].head, rs->r[i].crc, e);
        if (e && !(e->plan = mem_plan_add(m, i, -1, -1, e->n_tokens))) {
            free(e);
            e = NULL;
        }
        if (!e) return svlm_fail(err, SVLM_E_NOMEM, "memory: out of memory opening %s", m->dir);
        svlm_status st = mem_insert(m, e, err);
        if (st) return st;
    }
    if (rs->listed && rs->next_id > m->next_id) m->next_id = rs->next_id;
    return SVLM_OK;
}

/* The table planned, then the budget applied to it (a writing bank; a reader keeps everything). */
static svlm_status plan(svlm_memory *m, const mem_resume *rs, int evict_only, svlm_err *err) {
    svlm_status st = plan_table(m, rs, err);
    if (st || m->opts.read_only) return st;
    m->evict_only = evict_only;
    st = mem_enforce_budget(m, err);
    m->evict_only = 0;
    return st;
}

/* Marks live[node] for the nodes that the table's entries stand on. stack: room for n_plan. */
static void mark_live(const svlm_memory *m, char *live, int *stack) {
    int top = 0;
    memset(live, 0, (size_t)m->n_plan);
    for (int i = 0; i < m->n_entries; i++)
        if (m->entries[i]->plan) stack[top++] = m->entries[i]->plan - 1;
    while (top) { /* a node is part of one entry only: each is pushed once */
        int x = stack[--top];
        live[x] = 1;
        if (m->plan[x].rec < 0) {
            stack[top++] = m->plan[x].from[0];
            stack[top++] = m->plan[x].from[1];
        }
    }
}

/* Work of mem_refresh_keys on k tokens. */
static double keys_cost(const svlm_memory *m, int k) {
    return m->opts.key_dim > 0 ? 0 : mem_cluster_cost(k, m->kdim, SVLM_MEMORY_MAX_KEYS);
}

/* What giving the table's entries their tokens takes: bytes of records still to read, and work. */
static void plan_cost(const svlm_memory *m, const mem_resume *rs, const char *live, double *read,
                      double *work) {
    *read = *work = 0;
    for (int i = 0; i < m->n_plan; i++) {
        if (!live[i]) continue;
        const mem_plan_node *p = &m->plan[i];
        if (p->rec >= 0) {
            const mem_rec_found *r = &rs->r[p->rec];
            if (!r->loaded) *read += (double)r->size;
            int n = mem_record_tokens(r->head);
            for (int h = 0; h < p->halvings; n /= 2, h++)
                *work += mem_cluster_cost(n, m->opts.dim, n / 2) + keys_cost(m, n / 2);
        } else {
            int n = m->plan[p->from[0]].n_tokens + m->plan[p->from[1]].n_tokens;
            *work += mem_cluster_cost(n, m->opts.dim, p->n_tokens) + keys_cost(m, p->n_tokens);
        }
    }
}

/* The fields of an entry's header that the budget looks at, the same bit for bit (a NaN is equal
 * to itself here, and -0 differs from 0: what is compared is what the plan computed from). */
static int same_header(const mem_entry *a, const mem_entry *b) {
    return a->tier == b->tier && !memcmp(&a->t0, &b->t0, sizeof a->t0) &&
           !memcmp(&a->t1, &b->t1, sizeof a->t1) && a->n_frames == b->n_frames && a->level == b->level &&
           !memcmp(&a->importance, &b->importance, sizeof a->importance) && a->n_tokens == b->n_tokens &&
           a->n_keys == b->n_keys;
}

/* Gives planned entry i its tokens and keys: computed from its records, read and verified (in
 * rs), by the same merges and halvings, in the same order, as the budget would have done on them
 * loaded. Should what is computed not be what was planned (it never is: the plan's arithmetic is
 * the merge's and the halving's), the entry computed replaces the planned one, under its id, and
 * *differs is set (the caller applies the budget again). made: room for n_plan entries; stack: for
 * 2 n_plan + 1. */
static svlm_status materialize(svlm_memory *m, mem_resume *rs, int i, mem_entry **made, int *stack,
                               int *differs, svlm_err *err) {
    mem_entry *e = m->entries[i];
    int top = 0, root = e->plan - 1;
    stack[top++] = root;
    while (top) { /* post-order: a merge after its two parts; ~x: x's parts are done */
        int x = stack[--top];
        if (x >= 0) {
            stack[top++] = ~x;
            if (m->plan[x].rec < 0) {
                stack[top++] = m->plan[x].from[1];
                stack[top++] = m->plan[x].from[0];
            }
            continue;
        }
        x = ~x;
        const mem_plan_node *p = &m->plan[x];
        if (p->rec >= 0) {
            made[x] = rs->r[p->rec].loaded;
            rs->r[p->rec].loaded = NULL;
            if (!made[x]) return svlm_fail(err, SVLM_E_INVALID, "memory: resume: a record was not read");
            for (int h = 0; h < p->halvings; h++)
                if (mem_halve_tokens(m, made[x]))
                    return svlm_fail(err, SVLM_E_NOMEM, "memory: out of memory while compressing");
        } else {
            made[x] = mem_merge_clips(m, made[p->from[0]], made[p->from[1]]);
            mem_entry_free(made[p->from[0]]);
            mem_entry_free(made[p->from[1]]);
            made[p->from[0]] = made[p->from[1]] = NULL;
            if (!made[x]) return svlm_fail(err, SVLM_E_NOMEM, "memory: out of memory while compressing");
        }
    }
    mem_entry *x = made[root];
    made[root] = NULL;
    if (!same_header(x, e)) {
        /* kept as really computed: the planned entry's bytes and place in time are replaced too */
        mem_entry *old = mem_take(m, i);
        x->id = old->id;
        x->persisted = old->persisted;
        x->crc = old->crc;
        x->plan = 0;
        mem_entry_free(old);
        *differs = 1;
        return mem_insert(m, x, err);
    }
    e->tokens = x->tokens;
    e->keys = x->keys;
    x->tokens = x->keys = NULL;
    mem_entry_free(x);
    e->plan = 0;
    return SVLM_OK;
}

svlm_status mem_resume_entries(svlm_memory *m, mem_resume *rs, svlm_err *err) {
    svlm_status st = SVLM_OK;
    char *live = NULL;
    int *stack = NULL;
    mem_entry **made = NULL;
    double read = 0, work = 0;
    for (;;) {
        int evict_only = 0;
        if ((st = plan(m, rs, 0, err))) goto done;
        for (int pass = 0; pass < 2; pass++) {
            free(live);
            free(stack);
            live = malloc((size_t)m->n_plan + 1);
            stack = malloc((2 * (size_t)m->n_plan + 1) * sizeof *stack);
            if (!live || !stack) {
                st = svlm_fail(err, SVLM_E_NOMEM, "memory: out of memory opening %s", m->dir);
                goto done;
            }
            mark_live(m, live, stack);
            if (pass == 1) break;
            plan_cost(m, rs, live, &read, &work);
            double budget = (double)m->opts.budget_bytes;
            if (m->opts.read_only ||
                (read <= RESUME_READ_BUDGETS * budget && work <= RESUME_WORK_PER_BYTE * budget))
                break;
            if ((st = plan(m, rs, 1, err))) goto done;
            evict_only = 1;
        }
        m->report.evict_only = evict_only;
        int refused = 0;
        for (int i = 0; i < m->n_plan; i++) {
            if (!live[i] || m->plan[i].rec < 0 || rs->r[m->plan[i].rec].loaded) continue;
            int v = mem_verify_record(m, rs, m->plan[i].rec);
            if (v < 0) {
                st = svlm_fail(err, SVLM_E_NOMEM, "memory: out of memory reading the records of %s", m->dir);
                goto done;
            }
            refused += v;
        }
        if (!refused) break;
    }
    made = calloc((size_t)m->n_plan + 1, sizeof *made);
    if (!made) {
        st = svlm_fail(err, SVLM_E_NOMEM, "memory: out of memory opening %s", m->dir);
        goto done;
    }
    int kept = 0, found = 0;
    double unread = 0;
    for (int i = 0; i < m->n_plan; i++)
        kept += live[i] && m->plan[i].rec >= 0;
    for (int i = 0; i < rs->n; i++)
        if (!rs->r[i].rejected) {
            found++;
            if (!rs->r[i].loaded) unread += (double)rs->r[i].size;
        }
    int differs = 0;
    for (int i = 0; i < m->n_entries && !st; i++) {
        if (!m->entries[i]->plan) continue;
        int d = 0;
        st = materialize(m, rs, i, made, stack, &d, err);
        if (d) differs = 1, i = -1; /* the table changed order: from the start (done ones are skipped) */
    }
    if (st) goto done;
    m->report.loaded += kept;
    m->report.skipped += found - kept;
    if (found > kept) {
        char msg[160];
        snprintf(msg, sizeof msg, "%d of %d records evicted on opening (%.0f KiB left unread)", found - kept,
                 found, unread / 1024);
        mem_note(m, "budget: %s%s", msg, "");
    }
    if (differs) {
        /* the entries are what was computed; the budget then holds on those */
        mem_note(
            m, "budget: %s%s",
            "an entry computed on opening differed from its plan: kept as computed, the budget applied to it",
            "");
        if (!m->opts.read_only && (st = mem_enforce_budget(m, err))) goto done;
    }
    if (m->report.evict_only) {
        char msg[200];
        snprintf(msg, sizeof msg,
                 "evicted only: merging and shrinking to fit would have read %.0f KiB and cost %.3g element "
                 "operations",
                 read / 1024, work);
        mem_note(m, "budget: %s%s", msg, "");
    }
done:
    if (made)
        for (int i = 0; i < m->n_plan; i++)
            mem_entry_free(made[i]);
    free(made);
    free(live);
    free(stack);
    for (int i = 0; i < rs->n; i++) { /* read before a plan left them out */
        mem_entry_free(rs->r[i].loaded);
        rs->r[i].loaded = NULL;
    }
    free(m->plan);
    m->plan = NULL;
    m->n_plan = m->cap_plan = 0;
    return st;
}
