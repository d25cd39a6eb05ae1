/* Shared by memory_store.c (the files) and memory_resume.c (the budget planned on opening): the
 * records opening found, and the steps of each that the other runs. */
#ifndef SVLM_MEMORY_RESUME_H
#define SVLM_MEMORY_RESUME_H

#include <stddef.h>
#include <stdint.h>

#include "memory/memory_internal.h"

/* Bytes of a record's header (its layout: memory_store.c). */
#define MEM_REC_HEADER 72

/* A record found on opening the directory, from its header and trailing checksum alone. */
typedef struct mem_rec_found {
    uint64_t id;
    uint32_t crc; /* its trailing checksum */
    int rejected; /* refused (reported; set aside where there was a file): not part of the bank */
    int verified; /* read whole and verified (its header vouched for) */
    size_t size;  /* bytes */
    uint8_t head[MEM_REC_HEADER];
    mem_entry *loaded; /* read and verified, not yet used; NULL: not read (or used) */
} mem_rec_found;

/* The records opening found (the manifest's, or the directory's), refused ones included: refused,
 * a record is kept in the list so that nothing deletes it as an orphan. */
typedef struct mem_resume {
    mem_rec_found *r;
    int n, cap;
    int *slot; /* ids hashed (open addressing): index in r + 1, 0 empty; n_slot a power of 2 > 2 n */
    int n_slot;
    int listed;       /* from a verified manifest */
    uint64_t next_id; /* the manifest's */
} mem_resume;

/* memory_store.c */
/* Appends fmt, given a and b, to the load report's detail ("; " between; what does not fit is left out). */
void mem_note(svlm_memory *m, const char *fmt, const char *a, const char *b);
/* The entry fields a checked header gives. */
void mem_header_to_entry(const uint8_t *p, uint32_t crc, mem_entry *e);
/* The tokens a checked header gives. */
int mem_record_tokens(const uint8_t *p);
/* Reads record i whole and verifies it; 0, 1 when it is refused (reported, set aside where there is
 * a file), or -1 when out of memory (the open fails rather than drop the record). */
int mem_verify_record(svlm_memory *m, mem_resume *rs, int i);

/* memory_resume.c */
/* The entries of the records found, within the budget: the budget is applied to planned entries;
 * only the records it keeps something of are read (and verified: one refused, it is planned again
 * without it), then what it keeps is computed from them. The result is what loading every record
 * and then applying the budget gives (memory_resume.c's RESUME_* for when it evicts only, and the note in
 * memory_bank.h for the difference). Fills the report's loaded, skipped and evict_only. */
svlm_status mem_resume_entries(svlm_memory *m, mem_resume *rs, svlm_err *err);

#endif
