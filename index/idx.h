/* idx.h - a FAISS vector index behind a small C API (inner product on
 * L2-normalized vectors, 64-bit ids chosen by the caller).
 *
 *   idx_index *ix;  idx_create(512, NULL, &ix);          exact: "IDMap2,Flat"
 *   idx_add(ix, n, vectors, ids);
 *   idx_search(ix, query, 10, ids, scores, &n_hits);
 *   idx_save(ix, "images.faiss", &stamp);                 atomic snapshot
 *   idx_close(ix);
 *
 * Index kinds.  The factory string is FAISS's (faiss::index_factory).  A
 * factory that cannot hold ids itself (Flat, HNSW, PQ, SQ...) is wrapped in an
 * IndexIDMap2; IVF indexes store ids natively and are used as they are (saves
 * the id map's memory).  "exact" means the factory is plain Flat.
 * idx_auto_factory() gives the default by collection size: exact while small,
 * IVF-PQ (codes of dim/8 bytes) once large; approximate results should be
 * re-ranked exactly (idx_search_rerank) from the caller's stored vectors.
 *
 * Threads: every function may be called from any thread; searches run
 * concurrently with each other, add/remove/train/set_nprobe take the index
 * exclusively (an internal rwlock).
 *
 * Errors: 0 or a negative UMG_E* code; FAISS exceptions become UMG_EINDEX with
 * FAISS's message copied into umg_err_msg().
 *
 * Snapshot file (little-endian integers): a fixed header (magic "UMGIDX1\n",
 * u32 version 2, u32 dimension, u64 the caller's sequence number, u64 vector
 * count, u64 payload length, u64 FNV-1a 64 checksum of the payload, u32
 * factory length, the caller's 16-byte collection id (version 2 only), the
 * factory string) followed by FAISS's own serialization.  Written to PATH.tmp
 * (mode 0600), fsynced, renamed over PATH, directory fsynced.  idx_load
 * verifies header and checksum before FAISS parses a byte, so a truncated or
 * garbage file is UMG_EFORMAT, never a crash; it reads version 1 files
 * (written before the collection id) with an all-zero id. */
#ifndef IDX_H
#define IDX_H

#include <stddef.h>
#include <stdint.h>

typedef struct idx_index idx_index;

/* Factory used while the collection is small. */
#define IDX_FACTORY_EXACT "Flat"

/* The automatic factory for a collection of n vectors of dimension dim, into
 * buf (always NUL-terminated): IDX_FACTORY_EXACT below approx_threshold (and
 * below IDX_AUTO_MIN_APPROX),
 * else "IVF<nlist>,PQ<m>np" with nlist ~ 2 sqrt(n) (a power of two in
 * [256, 16384]) and m = dim/8 bytes per code ("np": no polysemous
 * training, which costs minutes); an 8-bit scalar quantizer when dim is not
 * a multiple of 8.  Returns buf. */
const char *idx_auto_factory(int dim, uint64_t n, uint64_t approx_threshold,
                             char *buf, size_t len);
/* The automatic choice stays exact below this many vectors, whatever the
 * threshold (FAISS trains neither 256 IVF lists nor PQ's 256 centroids on fewer). */
#define IDX_AUTO_MIN_APPROX 256

/* OpenMP threads FAISS may use in searches, adds, removes and training, from
 * now on, in every thread that calls idx_* (n <= 0: FAISS's default, i.e.
 * OMP_NUM_THREADS or every core).  On a machine whose cores are busy with
 * other work (the server's encoder), 1 avoids OpenMP threads spinning
 * against it.  UMG_EUNSUPPORTED when FAISS has no OpenMP. */
int idx_set_threads(int n);

/* Create an empty index.  factory NULL or "" means IDX_FACTORY_EXACT.
 * UMG_EINVAL for dim < 1; UMG_EINDEX (FAISS's message) for a bad factory. */
int idx_create(int dim, const char *factory, idx_index **out);
void idx_close(idx_index *ix); /* NULL-safe */

int idx_dim(const idx_index *ix);
int64_t idx_count(idx_index *ix);
/* 1 for a flat (exact) index, 0 for an approximate one. */
int idx_is_exact(const idx_index *ix);
/* 1 when an index made by this factory string would be exact. */
int idx_factory_is_exact(const char *factory);
/* The factory string the index was created with; lives as long as ix. */
const char *idx_factory(const idx_index *ix);
/* The largest id the index holds into *max_id (-1 when empty): a pass over
 * its ids (IDMap and IVF indexes; UMG_EUNSUPPORTED for others).  Lets the
 * caller check that the newest ids it stored are in the index. */
int idx_max_id(idx_index *ix, int64_t *max_id);
/* 1 when the index still needs idx_train before idx_add. */
int idx_needs_training(idx_index *ix);

/* Train on n vectors (n x dim floats, L2-normalized).  No-op when the index
 * needs no training. */
int idx_train(idx_index *ix, int64_t n, const float *x);
/* Add n vectors with their ids.  Adding an id twice is the caller's bug: the
 * index would then hold both copies. */
int idx_add(idx_index *ix, int64_t n, const float *x, const int64_t *ids);
/* Remove ids (absent ones are ignored); *removed (may be NULL) gets the count. */
int idx_remove(idx_index *ix, int64_t n, const int64_t *ids, int64_t *removed);
/* Search breadth of approximate indexes (IVF nprobe / HNSW efSearch); ignored
 * by exact indexes.  <= 0 keeps the current value. */
int idx_set_nprobe(idx_index *ix, int nprobe);

/* The k best by inner product.  ids/scores hold k entries; *n_hits gets how
 * many are valid (fewer than k when the index is small), best first. */
int idx_search(idx_index *ix, const float *query, int k,
               int64_t *ids, float *scores, int *n_hits);

/* Fetch the exact stored vector of id into out (dim floats).  Return 0, or
 * UMG_ENOENT to drop the candidate (deleted meanwhile), or another error to
 * abort the search. */
typedef int (*idx_vector_fn)(void *ud, int64_t id, float *out);

/* Approximate search for `candidates` (>= k) hits, then exact inner products
 * from get_vector, best k kept.  Candidates the callback reports as missing
 * are dropped, so this also filters deleted ids. */
int idx_search_rerank(idx_index *ix, const float *query, int k, int candidates,
                      idx_vector_fn get_vector, void *ud,
                      int64_t *ids, float *scores, int *n_hits);

/* What a snapshot records about its owner: the log position the index covers
 * and the collection it belongs to (opaque bytes; all zero = none recorded),
 * so that a snapshot copied from another data directory is recognised. */
#define IDX_COLLECTION_BYTES 16
typedef struct idx_stamp {
    uint64_t seq;
    uint8_t collection[IDX_COLLECTION_BYTES];
} idx_stamp;

/* Write an atomic snapshot recording stamp (seq: the caller's log position the
 * index covers).  Holds the index shared while serializing in memory, then
 * writes without the lock.  UMG_ENOSPC / UMG_EPERM / UMG_EIO name the path; a
 * failed save leaves the previous snapshot intact. */
int idx_save(idx_index *ix, const char *path, const idx_stamp *stamp);
/* idx_save in two steps, so that a caller can hold its own locks only while
 * the index must not change: idx_snapshot_take serializes the index (held
 * shared) and the header recording stamp into a heap copy that no longer
 * depends on ix; idx_snapshot_write computes the checksum and writes it
 * atomically as idx_save does (PATH.tmp, fsync, rename, directory fsync).
 * Two writes to the same path must not run at once (they share PATH.tmp).
 * idx_snapshot_free is NULL-safe; the copy is as large as the index's
 * serialization (its dim x 4 bytes per vector when exact). */
typedef struct idx_snapshot idx_snapshot;
int idx_snapshot_take(idx_index *ix, const idx_stamp *stamp, idx_snapshot **out);
int idx_snapshot_write(idx_snapshot *s, const char *path);
void idx_snapshot_free(idx_snapshot *s);

/* Load a snapshot; *stamp (may be NULL) gets what it records.  UMG_ENOENT if
 * absent; UMG_EFORMAT (with the reason) for a truncated, garbage or
 * checksum-failing file, a dimension other than dim, or a path that is not a
 * regular file (opened non-blocking: a FIFO does not hang it); UMG_EINDEX if
 * FAISS rejects the payload. */
int idx_load(const char *path, int dim, idx_index **out, idx_stamp *stamp);

/* Bytes of the FAISS serialization (a close proxy for the resident size of
 * compressed indexes); for benchmarks and stats.  < 0 on error. */
int64_t idx_serialized_bytes(idx_index *ix);

#endif
