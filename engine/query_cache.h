/* query_cache.h - the embeddings of recent text queries, so that a text asked
 * again (by one user paging, by many users asking the same thing) skips the
 * text tower.  Keyed by the exact token ids the tokenizer made (CLIP's
 * tokenizer lowercases and folds whitespace, so "A  Dog" and "a dog" share an
 * entry); least recently used entries are dropped first.  The vector handed
 * back is a copy of the one stored, bit for bit.
 *
 * Threads: every function but create/close may be called from many threads
 * at once (one mutex; a lookup costs a hash and a copy of dim floats, a few
 * microseconds against milliseconds for the tower).  Two threads that miss the
 * same text at once both encode it; the second put refreshes the entry. */
#ifndef UMG_ENGINE_QUERY_CACHE_H
#define UMG_ENGINE_QUERY_CACHE_H

#include <stdint.h>

#define ENG_QCACHE_MAX_IDS 77     /* ids per key at most (the text tower's context) */
#define ENG_QCACHE_MAX 1000000    /* entries at most */

typedef struct eng_qcache eng_qcache;

/* A cache of up to capacity vectors of dim floats.  capacity 0: *out = NULL,
 * which every function below accepts as "off" (always a miss, nothing kept).
 * UMG_EINVAL for capacity < 0 or > ENG_QCACHE_MAX or dim < 1; UMG_ENOMEM.
 * *out: eng_qcache_close. */
int eng_qcache_create(int capacity, int dim, eng_qcache **out);
void eng_qcache_close(eng_qcache *c); /* NULL-safe; no other call may be running */

/* 1 and vec[0..dim) filled if ids[0..n_ids) is cached (it becomes the most
 * recent), else 0 and vec untouched.  Counts a hit or a miss (not when off). */
int eng_qcache_get(eng_qcache *c, const int32_t *ids, int n_ids, float *vec);
/* Store a copy of vec under ids (n_ids > ENG_QCACHE_MAX_IDS: not stored),
 * dropping the least recently used entry when full. */
void eng_qcache_put(eng_qcache *c, const int32_t *ids, int n_ids, const float *vec);

typedef struct eng_qcache_counts {
    uint64_t hits, misses;
    int entries, capacity;        /* all 0 when off */
} eng_qcache_counts;
void eng_qcache_counts_get(eng_qcache *c, eng_qcache_counts *out);

#endif
