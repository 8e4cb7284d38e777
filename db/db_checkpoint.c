/* db_checkpoint.c - index snapshots, index builds swapped in while writers
 * and searches go on, and log pruning (docs/storage.md, "Snapshots and
 * recovery"; lock order in db.c's opening comment). */
#include "db_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "umg_error.h"

/* ---- checkpoint ---- */

typedef struct prune_ctx {
    uint64_t upto;
} prune_ctx;

static int prune_fn(db_t *db, MDB_txn *txn, void *arg)
{
    prune_ctx *p = arg;
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, db->dbi[D_LOG], &cur);
    if (rc)
        return rc;
    MDB_val k, v;
    while ((rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST)) == 0 && db_rd_be64(k.mv_data) <= p->upto)
        if ((rc = mdb_cursor_del(cur, 0)))
            break;
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND)
        return rc;
    /* a snapshot older than this can no longer be caught up */
    return db_meta_put(db, txn, "pruned", &p->upto, 8);
}

/* Rebuild `kind` with factory from a read snapshot, without blocking writers,
 * then catch up with the log under the writer mutex and swap. */
static int rebuild_online(db_t *db, int kind)
{
    /* The build holds a read transaction for a long time, and growing the
     * map must wait for it (and new readers queue behind that wait): make
     * room first so that writers are unlikely to fill the map meanwhile. */
    MDB_envinfo info;
    MDB_stat est;
    mdb_env_info(db->env, &info);
    mdb_env_stat(db->env, &est);
    if ((uint64_t)(info.me_last_pgno + 1) * est.ms_psize * 2 > info.me_mapsize) {
        int g = db_grow_map(db);
        if (g)
            return g;
    }
    MDB_txn *txn;
    int rc = db_rtxn_begin(db, &txn);
    if (rc)
        return rc;
    double t0 = db_mono_s();
    uint64_t seq = 0;
    db_meta_get_u64(db, txn, "seq", &seq);
    uint64_t n = db_vec_count(db, txn, kind);
    char want[128];
    db_wanted_factory(db, kind, n, want, sizeof want);
    idx_index *nix = NULL;
    rc = db_build_index(db, txn, kind, want, &nix);
    db_rtxn_end(db, txn);
    if (rc)
        return rc;
    size_t caught_up = 0;
    pthread_mutex_lock(&db->wmutex);
    if ((rc = db_rtxn_begin(db, &txn)) == 0) {
        /* the writes committed during the build; the log up to here is kept
         * while a build runs (see db_checkpoint_ex) */
        rc = db_replay_log(db, txn, kind, nix, seq, &caught_up);
        db_rtxn_end(db, txn);
    }
    if (!rc) {
        char was[128];
        pthread_rwlock_wrlock(&db->ixlock); /* waits for running searches */
        idx_index *old = db->ix[kind];
        snprintf(was, sizeof was, "%s", idx_factory(old));
        db->ix[kind] = nix;
        db->ix_gen[kind]++;
        db->stale[kind] = 0;
        pthread_rwlock_unlock(&db->ixlock);
        idx_close(old);
        db_logf(db, DB_LOG_INFO, "%s index %s: built from %llu stored vectors in %.1f s, caught up with %zu log "
                "entries written meanwhile; it replaces the %s index", db_kind_name(kind), idx_factory(nix),
                (unsigned long long)n, db_mono_s() - t0, caught_up, was);
        nix = NULL;
    }
    pthread_mutex_unlock(&db->wmutex);
    idx_close(nix);
    return rc;
}

/* The nlist of an "IVF<nlist>,..." factory; 0 for anything else. */
static long ivf_nlist(const char *factory)
{
    const char *p = strstr(factory, "IVF");
    return p ? strtol(p + 3, NULL, 10) : 0;
}

/* Whether a checkpoint should build `kind` anew (caller holds wmutex); the
 * wanted factory into want, the reason into why.  Exactly three cases:
 *   - an update of the in-memory index failed (stale);
 *   - the index is exact and the collection reached approx_threshold (also
 *     an index db_open rebuilt exact because its snapshot was unusable);
 *   - an automatic IVF index whose collection grew so much that the
 *     automatic nlist is at least twice the trained one (4x the vectors).
 * In particular a factory string that merely differs from today's automatic
 * choice (a snapshot written by another version's formula, fewer lists
 * wanted after deletes, an approximate index configured earlier) is kept:
 * retraining it would cost minutes and gain nothing, and a session that only
 * searched must never retrain.  The index is never downgraded below the
 * threshold (deletes would make it thrash). */
static int needs_build(db_t *db, int kind, char *want, size_t wlen, char *why, size_t ylen)
{
    idx_index *ix = db->ix[kind];
    uint64_t n = (uint64_t)idx_count(ix);
    db_wanted_factory(db, kind, n, want, wlen);
    if (db->stale[kind]) {
        snprintf(why, ylen, "an update of the in-memory index failed");
        return 1;
    }
    if (n < db->approx_threshold || idx_factory_is_exact(want))
        return 0;
    if (idx_is_exact(ix)) {
        if (db->no_switch[kind])
            return 0;
        snprintf(why, ylen, "%llu vectors reached the approximate threshold %llu", (unsigned long long)n,
                 (unsigned long long)db->approx_threshold);
        return 1;
    }
    if (db->factory_opt[kind])
        return 0; /* a configured factory that differs was rebuilt at open */
    long have = ivf_nlist(idx_factory(ix)), wanted = ivf_nlist(want);
    char same_family[128];
    snprintf(same_family, sizeof same_family, "IVF%ld,PQ%dnp", have, db->dim / 8);
    if (db->dim % 8)
        snprintf(same_family, sizeof same_family, "IVF%ld,SQ8", have);
    if (have > 0 && wanted >= 2 * have && !strcmp(same_family, idx_factory(ix))) {
        snprintf(why, ylen, "the collection grew to %llu vectors (%ld lists wanted, trained with %ld)",
                 (unsigned long long)n, wanted, have);
        return 1;
    }
    return 0;
}

int db_build_pending(db_t *db)
{
    if (db->read_only)
        return 0;
    int pending = 0;
    char want[128], why[200];
    pthread_mutex_lock(&db->wmutex);
    for (int kind = 0; kind < 2; kind++)
        pending |= needs_build(db, kind, want, sizeof want, why, sizeof why);
    pthread_mutex_unlock(&db->wmutex);
    return pending;
}

int db_checkpoint(db_t *db) { return db_checkpoint_ex(db, 0); }

int db_checkpoint_ex(db_t *db, int flags)
{
    if (db->read_only)
        return umg_err_set(UMG_EPERM, "checkpoint: data directory opened read-only");
    pthread_mutex_lock(&db->ckmutex);
    int rc = 0, build_rc = 0;
    char build_msg[600] = "";
    for (int kind = 0; kind < 2 && !rc; kind++) {
        char want[128], why[200];
        const char *name = kind ? "region" : "image";
        pthread_mutex_lock(&db->wmutex);
        uint64_t n = (uint64_t)idx_count(db->ix[kind]);
        int rebuild = needs_build(db, kind, want, sizeof want, why, sizeof why);
        int stale = db->stale[kind];
        pthread_mutex_unlock(&db->wmutex);
        if (rebuild && ((flags & DB_CHECKPOINT_NO_BUILD) || db->building[kind])) {
            /* LMDB + the log make the build repeatable at any later time */
            if (!db->building[kind])
                db_logf(db, DB_LOG_INFO, "%s index: %s; building %s is left to a later checkpoint", name, why,
                        want);
            if (stale)
                continue; /* it may lack vectors its snapshot would claim: keep the older snapshot + log */
        } else if (rebuild) {
            db_logf(db, DB_LOG_INFO, "building the %s index (%s, %llu vectors): %s", name, want,
                    (unsigned long long)n, why);
            /* without ckmutex: another checkpoint (a stop's NO_BUILD one) must
             * not wait minutes for this build; building[] keeps it to one */
            db->building[kind] = 1;
            pthread_mutex_unlock(&db->ckmutex);
            int brc = rebuild_online(db, kind);
            pthread_mutex_lock(&db->ckmutex);
            db->building[kind] = 0;
            if (brc) {
                /* the index in use is still valid: its snapshot is still worth writing */
                build_rc = brc;
                snprintf(build_msg, sizeof build_msg, "%s", umg_err_msg());
                db_logf(db, brc == UMG_ESHUTDOWN ? DB_LOG_INFO : DB_LOG_WARN, "building the %s index: %s", name,
                        build_msg);
                if (stale)
                    continue;
            }
        }
        /* The index must not change between reading seq and serializing it:
         * both under the writer mutex.  Writing the serialized copy to disk
         * (seconds for an exact index of 100,000+ vectors) does not need it,
         * so ingest goes on meanwhile; ckmutex keeps the writes of snapshots
         * to one at a time and in the order their copies were taken. */
        pthread_mutex_lock(&db->wmutex);
        MDB_txn *txn;
        uint64_t seq = 0, gen = db->ix_gen[kind];
        idx_snapshot *snap = NULL;
        if (!(rc = db_rtxn_begin(db, &txn))) {
            db_meta_get_u64(db, txn, "seq", &seq);
            db_rtxn_end(db, txn);
            /* the same index, unchanged since its snapshot (a session that only
             * searched, or a stop that leaves a build for later): nothing to write */
            if (seq != 0 && seq == db->snap_seq[kind] && db->snap_gen[kind] == gen) {
                pthread_mutex_unlock(&db->wmutex);
                continue;
            }
            idx_stamp stamp = { .seq = seq };
            memcpy(stamp.collection, db->collection, IDX_COLLECTION_BYTES);
            rc = idx_snapshot_take(db->ix[kind], &stamp, &snap);
        }
        pthread_mutex_unlock(&db->wmutex);
        if (!rc) {
            char path[DB_MAX_PATH + 32];
            db_snap_path(db, kind, path, sizeof path);
            rc = idx_snapshot_write(snap, path);
        }
        idx_snapshot_free(snap);
        if (!rc) {
            /* a build's swap meanwhile bumped ix_gen past gen: that index is
             * still to be written, which the next checkpoint sees */
            pthread_mutex_lock(&db->wmutex);
            __atomic_store_n(&db->snap_seq[kind], seq, __ATOMIC_RELAXED); /* read by db_stats_get */
            db->snap_gen[kind] = gen;
            pthread_mutex_unlock(&db->wmutex);
        }
    }
    /* A build running in another checkpoint catches up from the log entries
     * after its read snapshot, which may be older than these snapshots:
     * pruning them now would lose those writes from the index it swaps in.
     * Its own checkpoint prunes when it is done. */
    if (!rc && !db->building[0] && !db->building[1]) {
        prune_ctx p = { db->snap_seq[0] < db->snap_seq[1] ? db->snap_seq[0] : db->snap_seq[1] };
        pthread_mutex_lock(&db->wmutex);
        rc = db_write_txn(db, prune_fn, &p, "pruning the log");
        pthread_mutex_unlock(&db->wmutex);
    }
    pthread_mutex_unlock(&db->ckmutex);
    if (!rc && build_rc)
        rc = umg_err_set(build_rc, "%s", build_msg);
    return rc;
}
