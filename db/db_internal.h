/* db_internal.h - what the files of db/ share: the handle, the LMDB
 * databases, and the helpers each file uses from another.  Not for use
 * outside db/ (db.h is the API).  Invariants, lock order and record layouts:
 * the opening comment of db.c.
 *
 *   db.c             the handle: open (lock, file checks, model and
 *                    collection identity, refusal of lost writes), close,
 *                    probe, settings, stats; transactions, meta, errors
 *   db_records.c     the records: their encoding and validation, put,
 *                    delete, lookups, extras
 *   db_index.c       the FAISS indexes kept in step with LMDB: apply after
 *                    commit, build from LMDB, replay the log, open from a
 *                    snapshot, the consistency check, search
 *   db_checkpoint.c  snapshots, index builds swapped in online, log pruning */
#ifndef DB_INTERNAL_H
#define DB_INTERNAL_H

#include <lmdb.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "db.h"
#include "idx.h"

typedef uint16_t f16; /* IEEE half bits (umg_half.h), native byte order */

/* log entry ops */
enum { LOG_ADD = 1, LOG_DEL = 2 };
/* the named LMDB databases (db.c: names and flags) */
enum {
    D_META, D_IMAGES, D_PATHS, D_HASHES, D_REGIONS, D_IMG_REGIONS, D_IVEC, D_RVEC, D_LOG, D_EXTRA, D_COUNT
};
extern const char *const db_snap_names[2]; /* "images.faiss", "regions.faiss" */
#define LOCK_FILE "umgdb.lock"
#define LMDB_DATA_FILE "data.mdb"

/* A snapshot read before LMDB is opened (db_open): its stamp decides whether
 * LMDB lost writes it covers (refused) before the open writes anything. */
typedef struct snap_pre {
    idx_index *ix;
    idx_stamp stamp;
    int rc;                    /* of idx_load */
    char msg[600];             /* its message when rc != 0 */
} snap_pre;

struct db_t {
    MDB_env *env;
    MDB_dbi dbi[D_COUNT];
    int dim;
    int read_only;
    char *dir;
    int lock_fd;               /* DIR/umgdb.lock, flock'd exclusively for the handle's life; -1 none */
    int accept_data_loss;      /* db_options.accept_data_loss */
    uint8_t collection[IDX_COLLECTION_BYTES]; /* meta "collection"; zeros: none (read-only, unmigrated) */
    int collection_migrated;   /* this open recorded the id of a directory made before ids existed */
    snap_pre pre[2];           /* only during db_open */
    char *factory_opt[2];      /* configured factories; NULL = automatic */
    uint64_t approx_threshold;
    int nprobe;
    int rerank_candidates;
    db_log_fn log;
    void *log_ud;

    idx_index *ix[2];
    uint64_t snap_seq[2];
    int stale[2];              /* a FAISS update failed: rebuild at checkpoint */
    int no_switch[2];          /* the wanted factory was unusable: stay exact, do not retry */
    int cancel_builds;         /* db_cancel_builds: builds give up at their next step (atomic) */
    int building[2];           /* a checkpoint is building this index (under ckmutex) */
    uint64_t ix_gen[2];        /* bumped when ix[] is replaced (under wmutex) */
    uint64_t snap_gen[2];      /* the ix_gen the snapshot on disk was written from / loaded into */

    pthread_mutex_t wmutex;    /* one writer */
    pthread_mutex_t ckmutex;   /* one checkpoint */
    pthread_rwlock_t envlock;  /* txns shared, map resize exclusive */
    pthread_rwlock_t ixlock;   /* searches shared, swapping ix[] exclusive */
    int wmutex_ok, ckmutex_ok, envlock_ok, ixlock_ok;
};

/* A write transaction's body: run by db_write_txn, restartable. */
typedef int (*txn_fn)(db_t *db, MDB_txn *txn, void *arg);

/* Counters of a write transaction: loaded at its start, stored at its end. */
typedef struct counters {
    uint64_t next_id, seq;
} counters;

typedef struct idlist {
    uint64_t *v;
    size_t n, cap;
} idlist;

/* ---- db.c: errors, encodings, transactions, meta ---- */

/* A log line through db_options.log (default: stderr). */
void db_logf(db_t *db, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void db_be64(unsigned char *p, uint64_t v);
uint64_t db_rd_be64(const void *q);
/* An errno (positive) or MDB code as a UMG code with a message. */
int db_mdb_fail(int rc, const char *what);
/* db_mdb_fail for foreign codes; UMG codes and 0 pass through. */
int db_translate(int rc, const char *what);
const char *db_kind_name(int kind);
/* A record that cannot be what db/ wrote: UMG_EINTERNAL and a log line. */
int db_damaged(db_t *db, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The 8-byte big-endian id an index value (paths, hashes, img_regions) holds. */
int db_id_value(db_t *db, const MDB_val *v, const char *what, uint64_t *id);
/* UTF-8 without NUL bytes: what paths, tags, methods and settings are. */
int db_text_ok(const char *p, size_t n);
int db_all_zero(const uint8_t *p, size_t n);
double db_mono_s(void);
int db_normalize_copy(const float *v, int dim, float *out);
void db_to_f16(const float *v, int dim, f16 *out);
void db_from_f16(const void *src, int dim, float *out);
void db_snap_path(db_t *db, int kind, char *buf, size_t len);
/* A read transaction under envlock (shared); db_rtxn_end releases both. */
int db_rtxn_begin(db_t *db, MDB_txn **txn);
void db_rtxn_end(db_t *db, MDB_txn *txn);
int db_grow_map(db_t *db);
/* Run fn in a write transaction (caller holds wmutex); MDB_MAP_FULL grows
 * the map and runs fn again from scratch. */
int db_write_txn(db_t *db, txn_fn fn, void *arg, const char *what);
int db_meta_get_u64(db_t *db, MDB_txn *txn, const char *key, uint64_t *v);
int db_meta_put(db_t *db, MDB_txn *txn, const char *key, const void *v, size_t n);
int db_counters_load(db_t *db, MDB_txn *txn, counters *c);
int db_counters_store(db_t *db, MDB_txn *txn, const counters *c);
int db_log_append(db_t *db, MDB_txn *txn, counters *c, int op, int kind, uint64_t id);

/* ---- db_records.c ---- */

int db_idlist_push(idlist *l, uint64_t id);
int db_get_by_id(db_t *db, MDB_txn *txn, int dbi, uint64_t id, MDB_val *v);
/* Delete image id and everything hanging off it; region ids go to regs. */
int db_delete_in_txn(db_t *db, MDB_txn *txn, counters *c, uint64_t id, idlist *regs);

/* ---- db_index.c ---- */

uint64_t db_vec_count(db_t *db, MDB_txn *txn, int kind);
int db_newest_vec_id(db_t *db, MDB_txn *txn, int kind, uint64_t *id);
/* Post-commit changes to the in-memory index; a failure marks it stale. */
void db_index_apply(db_t *db, int kind, const uint64_t *del, size_t ndel, const float *add,
                    const uint64_t *add_ids, size_t nadd);
const char *db_wanted_factory(db_t *db, int kind, uint64_t n, char *buf, size_t len);
int db_build_cancelled(db_t *db);
int db_build_cancel_err(void);
int db_create_or_exact(db_t *db, int kind, const char *factory, idx_index **ix);
int db_build_index(db_t *db, MDB_txn *txn, int kind, const char *factory, idx_index **out);
int db_replay_log(db_t *db, MDB_txn *txn, int kind, idx_index *ix, uint64_t from, size_t *entries);
/* 0 when ix holds LMDB's count and newest id, else 1 and why. */
int db_index_disagrees(db_t *db, MDB_txn *txn, int kind, idx_index *ix, char *why, size_t len);
int db_index_open(db_t *db, int kind);

#endif
