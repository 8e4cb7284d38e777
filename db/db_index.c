/* db_index.c - the FAISS indexes kept in step with LMDB (db.c's opening
 * comment: invariants and lock order): post-commit updates, builds from the
 * stored vectors, log replay, the open from a snapshot with its consistency
 * check, and search. */
#include "db_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "umg_error.h"

/* ---- FAISS maintenance ---- */

/* Apply post-commit changes to the in-memory indexes.  LMDB already holds
 * them, so a failure only marks the index for a rebuild. */
void db_index_apply(db_t *db, int kind, const uint64_t *del, size_t ndel,
                        const float *add, const uint64_t *add_ids, size_t nadd)
{
    int rc = 0;
    if (ndel)
        rc = idx_remove(db->ix[kind], (int64_t)ndel, (const int64_t *)del, NULL);
    if (!rc && nadd)
        rc = idx_add(db->ix[kind], (int64_t)nadd, add, (const int64_t *)add_ids);
    if (rc) {
        db->stale[kind] = 1;
        db_logf(db, DB_LOG_WARN, "%s index update failed (%s); it will be rebuilt from LMDB",
                kind ? "region" : "image", umg_err_msg());
    }
}

uint64_t db_vec_count(db_t *db, MDB_txn *txn, int kind)
{
    MDB_stat st;
    if (mdb_stat(txn, db->dbi[kind ? D_RVEC : D_IVEC], &st))
        return 0;
    return st.ms_entries;
}

/* The factory an index of n vectors should have: exact below the threshold,
 * else the configured one or the automatic one. */
const char *db_wanted_factory(db_t *db, int kind, uint64_t n, char *buf, size_t len)
{
    if (n >= db->approx_threshold && db->factory_opt[kind]) {
        snprintf(buf, len, "%s", db->factory_opt[kind]);
        return buf;
    }
    return idx_auto_factory(db->dim, n, db->approx_threshold, buf, len);
}

int db_build_cancelled(db_t *db) { return __atomic_load_n(&db->cancel_builds, __ATOMIC_RELAXED); }
int db_build_cancel_err(void)
{
    return umg_err_set(UMG_ESHUTDOWN, "index build cancelled (shutting down); LMDB still holds every vector");
}

void db_cancel_builds(db_t *db)
{
    if (db)
        __atomic_store_n(&db->cancel_builds, 1, __ATOMIC_RELAXED);
}

/* Create an empty index of factory; a factory FAISS rejects is logged and
 * replaced by the exact one for good (no_switch: not retried). */
int db_create_or_exact(db_t *db, int kind, const char *factory, idx_index **ix)
{
    int rc = idx_create(db->dim, factory, ix);
    if (rc && strcmp(factory, IDX_FACTORY_EXACT)) {
        db_logf(db, DB_LOG_WARN, "index type %s unusable (%s); using %s", factory, umg_err_msg(),
                IDX_FACTORY_EXACT);
        rc = idx_create(db->dim, IDX_FACTORY_EXACT, ix);
        db->no_switch[kind] = 1;
    }
    return rc;
}

/* Build an index of `kind` made by factory from every stored vector visible
 * in txn.  The FAISS training call itself cannot be interrupted;
 * db_cancel_builds stops the build before and after it and between batches
 * of adds. */
int db_build_index(db_t *db, MDB_txn *txn, int kind, const char *factory, idx_index **out)
{
    *out = NULL;
    int dim = db->dim;
    uint64_t n = db_vec_count(db, txn, kind);
    idx_index *ix = NULL;
    int rc = db_create_or_exact(db, kind, factory, &ix);
    if (rc)
        return rc;
    idx_set_nprobe(ix, db->nprobe);
    MDB_dbi dbi = db->dbi[kind ? D_RVEC : D_IVEC];
    const size_t batch = 4096;
    float *x = NULL;
    int64_t *ids = NULL;
    MDB_cursor *cur = NULL;

    if (db_build_cancelled(db)) {
        rc = db_build_cancel_err();
        goto out;
    }
    if (idx_needs_training(ix)) {
        /* an even sample over the id range; memory bounded by max_train */
        uint64_t max_train = 65536; /* >= 64 per list up to nlist 1024 (1M vectors) */
        uint64_t ntrain = n < max_train ? n : max_train;
        uint64_t step = ntrain ? n / ntrain : 1;
        x = malloc(sizeof *x * (size_t)dim * (ntrain ? ntrain : 1));
        if (!x) {
            rc = umg_err_set(UMG_ENOMEM, "training sample of %llu vectors", (unsigned long long)ntrain);
            goto out;
        }
        if ((rc = mdb_cursor_open(txn, dbi, &cur)))
            goto out;
        MDB_val k, v;
        uint64_t i = 0, t = 0;
        for (int r = mdb_cursor_get(cur, &k, &v, MDB_FIRST); r == 0 && t < ntrain;
             r = mdb_cursor_get(cur, &k, &v, MDB_NEXT), i++)
            if (i % step == 0 && v.mv_size == (size_t)dim * 2) /* the adds below report a bad one */
                db_from_f16(v.mv_data, dim, x + (size_t)dim * t++);
        mdb_cursor_close(cur);
        cur = NULL;
        double t0 = db_mono_s();
        rc = idx_train(ix, (int64_t)t, x);
        free(x);
        x = NULL;
        if (!rc && db_build_cancelled(db))
            rc = db_build_cancel_err();
        if (rc)
            goto out;
        db_logf(db, DB_LOG_INFO, "%s index %s: trained on %llu vectors in %.1f s; adding %llu", db_kind_name(kind),
                idx_factory(ix), (unsigned long long)t, db_mono_s() - t0, (unsigned long long)n);
    }
    x = malloc(sizeof *x * (size_t)dim * batch);
    ids = malloc(sizeof *ids * batch);
    if (!x || !ids) {
        rc = umg_err_set(UMG_ENOMEM, "index build buffers");
        goto out;
    }
    if ((rc = mdb_cursor_open(txn, dbi, &cur)))
        goto out;
    MDB_val k, v;
    size_t nb = 0;
    for (int r = mdb_cursor_get(cur, &k, &v, MDB_FIRST); r == 0; r = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        if (v.mv_size != (size_t)dim * 2 || k.mv_size != 8) {
            /* one damaged vector must not keep the rest of the collection
             * from being served: left out (logged; db_stats reports the
             * index one short of LMDB) */
            db_damaged(db, "%s vector of %zu bytes under a key of %zu bytes: left out of the index", db_kind_name(kind),
                    v.mv_size, k.mv_size);
            continue;
        }
        ids[nb] = (int64_t)db_rd_be64(k.mv_data);
        db_from_f16(v.mv_data, dim, x + (size_t)dim * nb);
        if (++nb == batch) {
            if ((rc = idx_add(ix, (int64_t)nb, x, ids)))
                goto out;
            nb = 0;
            if (db_build_cancelled(db)) {
                rc = db_build_cancel_err();
                goto out;
            }
        }
    }
    rc = idx_add(ix, (int64_t)nb, x, ids);
out:
    if (cur)
        mdb_cursor_close(cur);
    free(x);
    free(ids);
    rc = db_translate(rc, "reading stored vectors");
    if (rc)
        idx_close(ix);
    else
        *out = ix;
    return rc;
}

/* Replay log entries after `from` into ix (txn sees the current state);
 * *entries (may be NULL) gets how many entries of `kind` there were. */
int db_replay_log(db_t *db, MDB_txn *txn, int kind, idx_index *ix, uint64_t from, size_t *entries)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, db->dbi[D_LOG], &cur);
    if (rc)
        return db_translate(rc, "log");
    idlist dels = { 0 }, adds = { 0 };
    unsigned char key[8];
    db_be64(key, from + 1);
    MDB_val k = { 8, key }, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        const unsigned char *e = v.mv_data;
        if (v.mv_size != 10 || k.mv_size != 8) {
            rc = db_damaged(db, "log entry of %zu bytes", v.mv_size);
            break;
        }
        if (e[1] != kind)
            continue;
        /* Ids are never reused, so order does not matter: remove every deleted
         * id, add every added id whose vector still exists. */
        if ((rc = db_idlist_push(e[0] == LOG_DEL ? &dels : &adds, db_rd_be64(e + 2))))
            break;
    }
    mdb_cursor_close(cur);
    if (rc == MDB_NOTFOUND)
        rc = 0;
    if (entries)
        *entries = dels.n + adds.n;
    if (!rc && dels.n)
        rc = idx_remove(ix, (int64_t)dels.n, (const int64_t *)dels.v, NULL);
    float *x = NULL;
    int64_t *ids = NULL;
    if (!rc && adds.n) {
        x = malloc(sizeof *x * (size_t)db->dim * adds.n);
        ids = malloc(sizeof *ids * adds.n);
        if (!x || !ids)
            rc = umg_err_set(UMG_ENOMEM, "replay buffers");
        size_t m = 0;
        for (size_t i = 0; i < adds.n && !rc; i++) {
            unsigned char vk[8];
            db_be64(vk, adds.v[i]);
            MDB_val kk = { 8, vk }, vv;
            int r = mdb_get(txn, db->dbi[kind ? D_RVEC : D_IVEC], &kk, &vv);
            if (r == MDB_NOTFOUND)
                continue;
            if (r) {
                rc = r;
                break;
            }
            if (vv.mv_size != (size_t)db->dim * 2) {
                rc = db_damaged(db, "%s %llu: vector of %zu bytes", db_kind_name(kind), (unsigned long long)adds.v[i],
                             vv.mv_size);
                break;
            }
            db_from_f16(vv.mv_data, db->dim, x + (size_t)db->dim * m);
            ids[m++] = (int64_t)adds.v[i];
        }
        if (!rc)
            rc = idx_add(ix, (int64_t)m, x, ids);
    }
    free(x);
    free(ids);
    free(dels.v);
    free(adds.v);
    return db_translate(rc, "replaying the log");
}

/* The newest (largest) id with a stored vector of kind; 0 when none. */
int db_newest_vec_id(db_t *db, MDB_txn *txn, int kind, uint64_t *id)
{
    *id = 0;
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, db->dbi[kind ? D_RVEC : D_IVEC], &cur);
    if (rc)
        return rc;
    MDB_val k, v;
    rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    mdb_cursor_close(cur);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (!rc && k.mv_size != 8)
        return db_damaged(db, "%s vector under a key of %zu bytes", db_kind_name(kind), k.mv_size);
    if (!rc)
        *id = db_rd_be64(k.mv_data);
    return rc;
}

/* Whether ix agrees with LMDB (txn): the same number of vectors and the same
 * newest id.  The count alone misses a delete and an add that cancel out
 * (two servers on one directory did that); the newest id catches the add.
 * An index that cannot list its ids is compared by count.  0 = agrees, else
 * 1 with the difference in why. */
int db_index_disagrees(db_t *db, MDB_txn *txn, int kind, idx_index *ix, char *why, size_t len)
{
    uint64_t want = db_vec_count(db, txn, kind), newest = 0;
    int64_t have = idx_count(ix), max_id = -1;
    if ((uint64_t)have != want) {
        snprintf(why, len, "%s index holds %lld vectors, LMDB %llu", db_kind_name(kind), (long long)have,
                 (unsigned long long)want);
        return 1;
    }
    if (db_newest_vec_id(db, txn, kind, &newest) || idx_max_id(ix, &max_id))
        return 0;
    if ((max_id < 0 ? 0 : (uint64_t)max_id) != newest) {
        snprintf(why, len, "%s index's newest id is %lld, LMDB's %llu", db_kind_name(kind), (long long)max_id,
                 (unsigned long long)newest);
        return 1;
    }
    return 0;
}

/* At open: the snapshot db_open read (pre[kind]) + the log after it, or a
 * rebuild from LMDB when it is missing, unusable, another collection's, or
 * disagrees with LMDB (index_disagrees). */
int db_index_open(db_t *db, int kind)
{
    char path[DB_MAX_PATH + 32];
    db_snap_path(db, kind, path, sizeof path);
    MDB_txn *txn;
    int rc = db_rtxn_begin(db, &txn);
    if (rc)
        return rc;
    uint64_t lmdb_seq = 0, pruned = 0;
    db_meta_get_u64(db, txn, "seq", &lmdb_seq);
    db_meta_get_u64(db, txn, "pruned", &pruned);
    uint64_t want = db_vec_count(db, txn, kind);
    snap_pre *pre = &db->pre[kind];
    idx_index *ix = pre->ix;
    pre->ix = NULL;
    uint64_t seq = pre->stamp.seq;
    const uint8_t *owner = pre->stamp.collection;
    int have_id = !db_all_zero(db->collection, sizeof db->collection);
    const char *why = NULL;
    char reason[sizeof pre->msg + 64]; /* room for a prefix before the whole snapshot message */
    rc = pre->rc;
    if (rc == UMG_ENOENT) {
        why = want ? "no snapshot" : NULL;
    } else if (rc) {
        snprintf(reason, sizeof reason, "snapshot unusable: %s", pre->msg);
        why = reason;
    } else if (have_id && !db_all_zero(owner, IDX_COLLECTION_BYTES) && memcmp(owner, db->collection, IDX_COLLECTION_BYTES)) {
        why = "snapshot belongs to another data directory (its collection id differs)";
    } else if (have_id && db_all_zero(owner, IDX_COLLECTION_BYTES) && !db->collection_migrated) {
        why = "snapshot records no collection id";
    } else if (seq > lmdb_seq) {
        why = "snapshot is newer than the database (accepted: accept_data_loss)"; /* else check_model refused */
    } else if (seq < pruned) {
        why = "snapshot is older than the log kept to catch it up";
    } else if (db->factory_opt[kind] && !idx_is_exact(ix) && strcmp(db->factory_opt[kind], idx_factory(ix))) {
        why = "configured index type changed";
    } else {
        idx_set_nprobe(ix, db->nprobe);
        rc = db_replay_log(db, txn, kind, ix, seq, NULL);
        if (rc) {
            snprintf(reason, sizeof reason, "log replay failed: %s", umg_err_msg());
            why = reason;
        } else if (db_index_disagrees(db, txn, kind, ix, reason, sizeof reason)) {
            why = reason; /* snapshot + log disagree with LMDB */
        }
    }
    if (rc == UMG_ENOENT || why) {
        idx_close(ix);
        ix = NULL;
        /* An approximate index takes minutes to train and fill at 100,000+
         * vectors, and the open would block for all of it: load the vectors
         * into an exact index instead (a copy of the stored vectors: about a
         * second at 100,000 x 512), serve from it at once, and leave the
         * approximate build to a checkpoint (needs_build: an exact index past
         * the threshold), which the server runs in the background and swaps in. */
        char fbuf[128];
        const char *factory = db_wanted_factory(db, kind, want, fbuf, sizeof fbuf);
        int deferred = 0;
        if (!idx_factory_is_exact(factory)) {
            idx_index *probe = NULL; /* an unusable factory is reported now, not at the checkpoint */
            if (!db_create_or_exact(db, kind, factory, &probe) && !idx_is_exact(probe))
                deferred = 1;
            idx_close(probe);
            factory = IDX_FACTORY_EXACT;
        }
        if (why)
            db_logf(db, DB_LOG_WARN, "%s: %s; rebuilding the %s index from %llu stored vectors%s", path, why,
                    db_kind_name(kind), (unsigned long long)want, deferred ? " into an exact index" : "");
        double t0 = db_mono_s();
        rc = db_build_index(db, txn, kind, factory, &ix);
        if (!rc && deferred && db->read_only)
            db_logf(db, DB_LOG_WARN, "%s index: %llu vectors loaded into an exact index (%s) in %.2f s; searches "
                    "are exact (slower at this size): a read-only open builds no %s", db_kind_name(kind),
                    (unsigned long long)want, IDX_FACTORY_EXACT, db_mono_s() - t0, fbuf);
        else if (!rc && deferred)
            db_logf(db, DB_LOG_WARN, "%s index: %llu vectors loaded into an exact index (%s) in %.2f s; searches "
                    "are exact (slower at this size) until a checkpoint builds %s", db_kind_name(kind),
                    (unsigned long long)want, IDX_FACTORY_EXACT, db_mono_s() - t0, fbuf);
        seq = 0; /* nothing on disk covers it yet */
    }
    db_rtxn_end(db, txn);
    if (rc)
        return rc;
    db->ix[kind] = ix;
    db->snap_seq[kind] = seq;
    db->ix_gen[kind] = 1;
    /* loaded from the snapshot; a snapshot without the collection id just
     * recorded (migration) is rewritten by the next checkpoint */
    db->snap_gen[kind] = seq && !db->collection_migrated ? 1 : 0;
    return 0;
}

/* ---- search ---- */

typedef struct fetch_ctx {
    db_t *db;
    MDB_txn *txn;
    int kind;
} fetch_ctx;

static int fetch_vector(void *ud, int64_t id, float *out)
{
    fetch_ctx *f = ud;
    MDB_val v;
    int rc = db_get_by_id(f->db, f->txn, f->kind ? D_RVEC : D_IVEC, (uint64_t)id, &v);
    if (rc == MDB_NOTFOUND)
        return UMG_ENOENT;
    if (rc)
        return db_mdb_fail(rc, "reading a vector");
    if (v.mv_size != (size_t)f->db->dim * 2)
        return db_damaged(f->db, "%s %lld: vector of %zu bytes", db_kind_name(f->kind), (long long)id, v.mv_size);
    db_from_f16(v.mv_data, f->db->dim, out);
    return 0;
}

/* Best first; equal scores (copies of one photo) by increasing id, so that
 * the same hits come in the same order whatever k asked for them (pages). */
static int by_score_then_id(const void *a, const void *b)
{
    const db_hit *x = a, *y = b;
    if (x->score != y->score)
        return x->score < y->score ? 1 : -1;
    return x->id < y->id ? -1 : x->id > y->id;
}

int db_search(db_t *db, int kind, const float *query, const db_search_opts *opts,
              db_hit *hits, int k, int *n)
{
    *n = 0;
    if (kind != DB_KIND_IMAGE && kind != DB_KIND_REGION)
        return umg_err_set(UMG_EINVAL, "search kind %d", kind);
    if (k < 1 || k > 100000)
        return umg_err_set(UMG_EINVAL, "search k = %d out of range", k);
    float *q = malloc(sizeof *q * (size_t)db->dim);
    int64_t *ids = malloc(sizeof *ids * (size_t)k);
    float *sc = malloc(sizeof *sc * (size_t)k);
    int rc = 0;
    if (!q || !ids || !sc) {
        rc = umg_err_set(UMG_ENOMEM, "search buffers");
        goto out;
    }
    if ((rc = db_normalize_copy(query, db->dim, q)))
        goto out;
    pthread_rwlock_rdlock(&db->ixlock);
    idx_index *ix = db->ix[kind];
    int rerank = opts ? opts->rerank : -1;
    if (rerank < 0)
        rerank = !idx_is_exact(ix);
    MDB_txn *txn;
    if ((rc = db_rtxn_begin(db, &txn))) {
        pthread_rwlock_unlock(&db->ixlock);
        goto out;
    }
    fetch_ctx f = { db, txn, kind };
    int nh = 0;
    if (rerank) {
        int cand = opts && opts->candidates > 0 ? opts->candidates : k * db->rerank_candidates;
        rc = idx_search_rerank(ix, q, k, cand, fetch_vector, &f, ids, sc, &nh);
    } else {
        rc = idx_search(ix, q, k, ids, sc, &nh);
        /* an id deleted between LMDB's commit and FAISS's removal */
        int m = 0;
        for (int i = 0; i < nh && !rc; i++) {
            MDB_val v;
            int r = db_get_by_id(db, txn, kind ? D_RVEC : D_IVEC, (uint64_t)ids[i], &v);
            if (r == 0) {
                ids[m] = ids[i];
                sc[m++] = sc[i];
            } else if (r != MDB_NOTFOUND) {
                rc = db_mdb_fail(r, "search filter");
            }
        }
        nh = m;
    }
    db_rtxn_end(db, txn);
    pthread_rwlock_unlock(&db->ixlock);
    if (!rc) {
        for (int i = 0; i < nh; i++) {
            hits[i].id = (uint64_t)ids[i];
            hits[i].score = sc[i];
        }
        qsort(hits, (size_t)nh, sizeof *hits, by_score_then_id);
        *n = nh;
    }
out:
    free(q);
    free(ids);
    free(sc);
    return rc;
}

/* ---- search within a subset ---- */

typedef struct within_ctx {
    fetch_ctx f;
    const float *q;
    float *vec;
    db_hit *all;
    size_t n, cap;
} within_ctx;

static int within_score(within_ctx *w, uint64_t id)
{
    int rc = fetch_vector(&w->f, (int64_t)id, w->vec);
    if (rc == UMG_ENOENT)
        return 0; /* deleted meanwhile */
    if (rc)
        return rc;
    if (w->n == w->cap) {
        size_t cap = w->cap ? 2 * w->cap : 256;
        db_hit *p = realloc(w->all, cap * sizeof *p);
        if (!p)
            return umg_err_set(UMG_ENOMEM, "search within: %zu hits", cap);
        w->all = p, w->cap = cap;
    }
    /* float accumulation as FAISS's inner product does */
    float dot = 0;
    for (int d = 0; d < w->f.db->dim; d++)
        dot += w->vec[d] * w->q[d];
    w->all[w->n++] = (db_hit){ id, dot };
    return 0;
}

int db_search_within(db_t *db, int kind, const float *query, const uint64_t *image_ids, size_t n_ids,
                     db_hit *hits, int k, int *n)
{
    *n = 0;
    if (kind != DB_KIND_IMAGE && kind != DB_KIND_REGION)
        return umg_err_set(UMG_EINVAL, "search kind %d", kind);
    if (k < 1)
        return umg_err_set(UMG_EINVAL, "search k = %d out of range", k);
    within_ctx w = { { db, NULL, kind }, NULL, NULL, NULL, 0, 0 };
    float *q = malloc(sizeof *q * (size_t)db->dim);
    w.vec = malloc(sizeof *w.vec * (size_t)db->dim);
    int rc = q && w.vec ? db_normalize_copy(query, db->dim, q) : umg_err_set(UMG_ENOMEM, "search buffers");
    w.q = q;
    if (!rc && !(rc = db_rtxn_begin(db, &w.f.txn))) {
        MDB_cursor *cur = NULL;
        if (kind == DB_KIND_REGION)
            rc = mdb_cursor_open(w.f.txn, db->dbi[D_IMG_REGIONS], &cur);
        for (size_t i = 0; !rc && i < n_ids; i++) {
            if (kind == DB_KIND_IMAGE) {
                rc = within_score(&w, image_ids[i]);
                continue;
            }
            unsigned char key[8];
            db_be64(key, image_ids[i]);
            MDB_val kv = { 8, key }, v;
            int r;
            for (r = mdb_cursor_get(cur, &kv, &v, MDB_SET_KEY); r == 0 && !rc;
                 r = mdb_cursor_get(cur, &kv, &v, MDB_NEXT_DUP)) {
                uint64_t rid;
                if (!(rc = db_id_value(db, &v, "img_regions", &rid)))
                    rc = within_score(&w, rid);
            }
            if (!rc && r != MDB_NOTFOUND)
                rc = db_mdb_fail(r, "search within: regions of an image");
        }
        if (cur)
            mdb_cursor_close(cur);
        db_rtxn_end(db, w.f.txn);
        rc = db_translate(rc, "search within");
    }
    if (!rc) {
        qsort(w.all, w.n, sizeof *w.all, by_score_then_id);
        size_t m = w.n < (size_t)k ? w.n : (size_t)k;
        if (m)
            memcpy(hits, w.all, m * sizeof *hits);
        *n = (int)m;
    }
    free(w.all);
    free(w.vec);
    free(q);
    return rc;
}
