/* db.c - the umgdb data directory: LMDB (the source of truth) plus two FAISS
 * indexes derived from it; API in db.h, user-level description in
 * docs/storage.md.  This file: the handle (open, close, probe, settings,
 * stats) and the helpers the other files share (db_internal.h lists who
 * does what: db_records.c, db_index.c, db_checkpoint.c).
 *
 * FILES IN THE DATA DIRECTORY (created 0700, files 0600)
 *   umgdb.lock      flock(LOCK_EX) by the one read-write handle, for its life;
 *                   holds its pid (text) for the refusal message.  Read-only
 *                   handles take no lock (they write nothing).
 *   data.mdb        LMDB.  Before mdb_env_open its two meta pages are read with
 *                   pread and the file must hold every page up to the newest
 *                   meta's last page (else SIGBUS inside liblmdb).
 *   lock.mdb        LMDB's reader table.
 *   images.faiss, regions.faiss   snapshots (index/idx.h: header with seq and
 *                   collection id, checksum, FAISS payload).  Derived data.
 *
 * LMDB DATABASES.  Byte order: every key that is an id or a sequence number is
 * a big-endian u64 (cursors then walk in id order, and MDB_APPEND applies);
 * every number inside a value is in the host's byte order (little-endian on
 * every machine umgdb runs on: a data directory is not portable to a
 * big-endian host), floats IEEE-754.
 *   meta         "schema" u32 (DB_SCHEMA_VERSION), "fingerprint" [32] (the
 *                model), "model" str, "dim" u32, "collection" [16] (random at
 *                creation; in every snapshot header; recorded at the first open
 *                of a directory made before it), "next_id" u64, "seq" u64 (last
 *                log entry), "pruned" u64 (log dropped up to here),
 *                "setting.<name>" UTF-8 (db_setting_*: the server's
 *                "region_mode")
 *   images       id -> image record (db_records.c, encode_image_rec):
 *                  u32 version (1 or 2), u8 sha256[32], u32 width, u32 height,
 *                  u64 bytes, i64 mtime, i64 ingest_time, u32 n_regions,
 *                  u32 path_len, path (UTF-8, no NUL), u32 n_tags,
 *                  n_tags x (u32 len, UTF-8 bytes); version 1: nothing after.
 *                  Version 2 (written only when some capture field is known,
 *                  so records without one stay version 1) goes on with the
 *                  capture (db_capture): u8 flags (1 taken, 2 offset, 4
 *                  camera, 8 gps; not 0; offset only with taken), then only
 *                  the flagged fields in this order: i64 taken (clock seconds
 *                  from 1970-01-01T00:00:00, no zone), i16 offset minutes east
 *                  of UTC, u8 camera_len (1..127) + camera (UTF-8), f64 lat,
 *                  f64 lon; nothing after.  Both versions are read.
 *   paths        SHA-256(path) -> id      (paths can exceed LMDB's 511-byte keys)
 *   hashes       SHA-256(content) -> id   (MDB_DUPSORT|DUPFIXED: one file at two paths)
 *   regions      id -> region record (encode_region_rec), 30..61 bytes:
 *                  u64 image_id, f32 box[4] (x, y, w, h in original pixels),
 *                  f32 score, u8 has_score (0/1), u8 method_len (<= 31), method
 *   img_regions  image id -> region id    (MDB_DUPSORT|DUPFIXED)
 *   ivec, rvec   id -> f16[dim], L2-normalized before rounding (image / region)
 *   log          seq -> u8 op (LOG_ADD/LOG_DEL), u8 kind (DB_KIND_*), be64 id
 *   extra        be64 image id ++ name -> blob: "patch_tokens" (float16
 *                projected patch tokens), "thumb" (DB_THUMB_EXTRA: the photo's
 *                JPEG thumbnail, encoder/enc_thumb.h, ~10-20 KB: LMDB keeps
 *                it in overflow pages; db_get_thumb checks its JPEG magic).
 *                Extras are written in the image's put transaction and
 *                deleted with the image (db_delete_in_txn), so a thumbnail
 *                exists exactly when its image does, and every copy or
 *                backup of data.mdb holds it: why thumbnails live here and
 *                not as files under the data directory, which would need
 *                their own write-then-commit ordering, crash cleanup and
 *                backup step.  A move keeps them (same photo, same id).
 *   Values of paths/hashes/img_regions are be64 ids.  Every decoder checks
 *   sizes, limits and UTF-8 and reports anything else as UMG_EINTERNAL with a
 *   log line (db_damaged): stored bytes never reach a caller unchecked.
 *
 * INVARIANTS
 *   - Ids come from next_id, shared by images and regions, never reused, so
 *     the newest id of an index is its largest; replay order does not matter.
 *   - A write is one LMDB transaction (records, vectors, log entries,
 *     counters); FAISS is updated after the commit, under the writer mutex,
 *     so an index always equals "LMDB at some seq" plus at most the write in
 *     progress.  A failed update marks the index stale (rebuilt later).
 *   - A snapshot covers LMDB's log up to its seq and belongs to the
 *     collection whose id it records.  At open: a snapshot of another
 *     collection, unusable, older than the pruned log, or disagreeing with
 *     LMDB after the replay (count or newest id) is rebuilt from LMDB; a
 *     snapshot NEWER than LMDB (of this collection, or LMDB new) means LMDB
 *     lost acknowledged writes: the open is refused, before anything is
 *     written, unless accept_data_loss.
 *   - LMDB is never changed from FAISS.
 *
 * LOCK ORDER (never take an earlier one while holding a later one)
 *   ckmutex (one checkpoint) -> wmutex (one writer) -> ixlock (the ix[]
 *   pointers: searches shared, swaps exclusive) -> envlock (LMDB map resize
 *   exclusive, every transaction shared) -> FAISS's own index lock (idx.h).
 *   A checkpoint releases ckmutex while it builds an index (building[] keeps
 *   one build per index) and holds wmutex only to copy a snapshot in memory. */
#include "db_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>
#include <math.h>

#include "proto_check.h"
#include "umg_error.h"

static const char *const dbi_names[D_COUNT] = {
    "meta", "images", "paths", "hashes", "regions", "img_regions", "ivec", "rvec", "log", "extra"
};
static const unsigned dbi_flags[D_COUNT] = {
    0, 0, 0, MDB_DUPSORT | MDB_DUPFIXED, 0, MDB_DUPSORT | MDB_DUPFIXED, 0, 0, 0, 0
};
const char *const db_snap_names[2] = { "images.faiss", "regions.faiss" };

/* ---- small helpers ---- */

void db_logf(db_t *db, int level, const char *fmt, ...)
{
    char buf[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (db->log)
        db->log(db->log_ud, level, buf);
    else
        fprintf(stderr, "umgdb: %s: %s\n", level == DB_LOG_WARN ? "warning" : "info", buf);
}

void db_be64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}
uint64_t db_rd_be64(const void *q)
{
    const unsigned char *p = q;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* An MDB (negative, < -30000) or errno (positive) code, as opposed to a UMG one. */
static int is_foreign(int rc) { return rc > 0 || (rc >= MDB_KEYEXIST && rc <= MDB_LAST_ERRCODE); }

int db_mdb_fail(int rc, const char *what)
{
    if (rc > 0) {
        int u = umg_err_from_errno(rc);
        if (u == UMG_EPERM)
            return umg_err_set(u, "%s: %s (the data directory is not writable; open it read-only)",
                               what, strerror(rc));
        if (u == UMG_ENOSPC)
            return umg_err_set(u, "%s: no space left on device; nothing was written", what);
        return umg_err_set(u == UMG_EINVAL ? UMG_EDB : u, "%s: %s", what, strerror(rc));
    }
    return umg_err_set(UMG_EDB, "%s: %s", what, mdb_strerror(rc));
}

int db_translate(int rc, const char *what)
{
    if (rc == 0 || !is_foreign(rc))
        return rc;
    return db_mdb_fail(rc, what);
}

const char *db_kind_name(int kind) { return kind ? "region" : "image"; }

/* A record LMDB returned that cannot be what db.c wrote (flipped bytes, a
 * foreign tool): UMG_EINTERNAL and a log line, never its bytes to a caller. */
int db_damaged(db_t *db, const char *fmt, ...)
{
    char what[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    db_logf(db, DB_LOG_WARN, "%s/%s: damaged record: %s", db->dir, LMDB_DATA_FILE, what);
    return umg_err_set(UMG_EINTERNAL, "damaged record in the database: %s", what);
}

/* The 8-byte big-endian id an index value (paths, hashes, img_regions) holds. */
int db_id_value(db_t *db, const MDB_val *v, const char *what, uint64_t *id)
{
    *id = 0;
    if (v->mv_size != 8)
        return db_damaged(db, "%s: id value of %zu bytes", what, v->mv_size);
    *id = db_rd_be64(v->mv_data);
    return 0;
}

int db_normalize_copy(const float *v, int dim, float *out)
{
    double s = 0;
    for (int i = 0; i < dim; i++) {
        if (!isfinite(v[i]))
            return umg_err_set(UMG_EINVAL, "vector has a non-finite component at %d", i);
        s += (double)v[i] * v[i];
    }
    if (s <= 0)
        return umg_err_set(UMG_EINVAL, "vector is all zeros");
    float inv = (float)(1.0 / sqrt(s));
    for (int i = 0; i < dim; i++)
        out[i] = v[i] * inv;
    return 0;
}

void db_to_f16(const float *v, int dim, f16 *out)
{
    for (int i = 0; i < dim; i++)
        out[i] = (f16)v[i];
}
void db_from_f16(const void *src, int dim, float *out)
{
    const f16 *h = src; /* LMDB values are only 2-byte aligned at best; copy through memcpy */
    for (int i = 0; i < dim; i++) {
        f16 x;
        memcpy(&x, h + i, sizeof x);
        out[i] = (float)x;
    }
}

/* ---- transactions ---- */

int db_rtxn_begin(db_t *db, MDB_txn **txn)
{
    pthread_rwlock_rdlock(&db->envlock);
    int rc = mdb_txn_begin(db->env, NULL, MDB_RDONLY, txn);
    if (rc) {
        pthread_rwlock_unlock(&db->envlock);
        return db_mdb_fail(rc, "read transaction");
    }
    return 0;
}
void db_rtxn_end(db_t *db, MDB_txn *txn)
{
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&db->envlock);
}

int db_grow_map(db_t *db)
{
    MDB_envinfo info;
    pthread_rwlock_wrlock(&db->envlock);
    mdb_env_info(db->env, &info);
    size_t next = info.me_mapsize * 2;
    int rc = mdb_env_set_mapsize(db->env, next);
    pthread_rwlock_unlock(&db->envlock);
    if (rc)
        return db_mdb_fail(rc, "growing the LMDB map");
    db_logf(db, DB_LOG_INFO, "LMDB map grown to %zu MiB", next >> 20);
    return 0;
}

static int disk_nearly_full(const char *dir)
{
    struct statvfs sv;
    return !statvfs(dir, &sv) && (uint64_t)sv.f_bavail * sv.f_frsize < ((uint64_t)4 << 20);
}

/* Run fn in a write transaction (caller holds wmutex); MDB_MAP_FULL grows the
 * map and runs fn again from scratch, so fn must be restartable. */
int db_write_txn(db_t *db, txn_fn fn, void *arg, const char *what)
{
    if (db->read_only)
        return umg_err_set(UMG_EPERM, "%s: data directory opened read-only", what);
    for (int attempt = 0; attempt < 40; attempt++) {
        MDB_txn *txn;
        pthread_rwlock_rdlock(&db->envlock);
        int rc = mdb_txn_begin(db->env, NULL, 0, &txn);
        if (rc == 0) {
            rc = fn(db, txn, arg);
            if (rc == 0)
                rc = mdb_txn_commit(txn);
            else
                mdb_txn_abort(txn);
        }
        pthread_rwlock_unlock(&db->envlock);
        if (rc == MDB_MAP_FULL) {
            int g = db_grow_map(db);
            if (g)
                return g;
            continue;
        }
        if (rc == MDB_MAP_RESIZED) {
            pthread_rwlock_wrlock(&db->envlock);
            mdb_env_set_mapsize(db->env, 0);
            pthread_rwlock_unlock(&db->envlock);
            continue;
        }
        if (rc == EIO && disk_nearly_full(db->dir))
            rc = ENOSPC; /* LMDB reports a short write (disk full) as EIO */
        return db_translate(rc, what);
    }
    return umg_err_set(UMG_EDB, "%s: LMDB map could not grow enough", what);
}

int db_meta_get_u64(db_t *db, MDB_txn *txn, const char *key, uint64_t *v)
{
    MDB_val k = { strlen(key), (void *)key }, d;
    int rc = mdb_get(txn, db->dbi[D_META], &k, &d);
    if (rc == MDB_NOTFOUND) {
        *v = 0;
        return 0;
    }
    if (rc)
        return rc;
    if (d.mv_size != 8)
        return umg_err_set(UMG_EFORMAT, "meta %s: %zu bytes", key, d.mv_size);
    memcpy(v, d.mv_data, 8);
    return 0;
}
int db_meta_put(db_t *db, MDB_txn *txn, const char *key, const void *v, size_t n)
{
    MDB_val k = { strlen(key), (void *)key }, d = { n, (void *)v };
    return mdb_put(txn, db->dbi[D_META], &k, &d, 0);
}

int db_counters_load(db_t *db, MDB_txn *txn, counters *c)
{
    int rc = db_meta_get_u64(db, txn, "next_id", &c->next_id);
    if (!rc)
        rc = db_meta_get_u64(db, txn, "seq", &c->seq);
    if (!rc && c->next_id == 0)
        c->next_id = 1;
    return rc;
}
int db_counters_store(db_t *db, MDB_txn *txn, const counters *c)
{
    int rc = db_meta_put(db, txn, "next_id", &c->next_id, 8);
    if (!rc)
        rc = db_meta_put(db, txn, "seq", &c->seq, 8);
    return rc;
}

int db_log_append(db_t *db, MDB_txn *txn, counters *c, int op, int kind, uint64_t id)
{
    unsigned char key[8], val[10];
    db_be64(key, ++c->seq);
    val[0] = (unsigned char)op;
    val[1] = (unsigned char)kind;
    db_be64(val + 2, id);
    MDB_val k = { 8, key }, d = { 10, val };
    return mdb_put(txn, db->dbi[D_LOG], &k, &d, MDB_APPEND);
}

int db_text_ok(const char *p, size_t n) { return proto_utf8_valid(p, n) && !memchr(p, 0, n); }

int db_all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

double db_mono_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

void db_snap_path(db_t *db, int kind, char *buf, size_t len)
{
    snprintf(buf, len, "%s/%s", db->dir, db_snap_names[kind]);
}

/* ---- open / close ---- */

db_options db_options_default(void)
{
    db_options o;
    memset(&o, 0, sizeof o);
    o.approx_threshold = 50000;
    o.nprobe = 32;
    o.rerank_candidates = 10;
    o.initial_map_size = (size_t)64 << 20;
    return o;
}

static void hex8(const uint8_t *fp, char *out)
{
    for (int i = 0; i < 8; i++)
        sprintf(out + 2 * i, "%02x", fp[i]);
}

/* Snapshots that cover more of the log than LMDB holds mean that LMDB lost
 * committed writes (data.mdb emptied, deleted, or replaced by an older copy):
 * serving it would answer from a smaller collection and the next checkpoint
 * would overwrite the snapshots, the last trace of what was lost.  Refused
 * unless accept_data_loss.  A snapshot of another collection (its id
 * differs) says nothing about this one: index_open rebuilds it.  collection
 * NULL: none recorded; fresh: a database this open is creating. */
static int refuse_newer_snapshots(db_t *db, uint64_t lmdb_seq, const uint8_t *collection, int fresh)
{
    for (int kind = 0; kind < 2; kind++) {
        const snap_pre *pre = &db->pre[kind];
        if (!pre->ix || pre->stamp.seq <= lmdb_seq)
            continue;
        if (collection && !db_all_zero(pre->stamp.collection, IDX_COLLECTION_BYTES) &&
            memcmp(pre->stamp.collection, collection, IDX_COLLECTION_BYTES))
            continue;
        if (db->accept_data_loss) {
            db_logf(db, DB_LOG_WARN, "%s/%s: the %s snapshot covers %llu changes, %s %llu; serving what the "
                    "database holds (accept_data_loss)", db->dir, db_snap_names[kind], db_kind_name(kind),
                    (unsigned long long)pre->stamp.seq, LMDB_DATA_FILE, (unsigned long long)lmdb_seq);
            continue;
        }
        return umg_err_set(UMG_EDB,
                           "%s: the %s index snapshot %s covers %llu changes but the database %s holds %s%llu: "
                           "%s was emptied, deleted or replaced by an older copy, and serving it would lose "
                           "the difference (and overwrite the snapshots). Restore %s from a backup, or accept "
                           "the loss explicitly (umgdb serve --accept-data-loss) to serve what it holds",
                           db->dir, db_kind_name(kind), db_snap_names[kind], (unsigned long long)pre->stamp.seq,
                           LMDB_DATA_FILE, fresh ? "nothing (a new, empty database): seq " : "only ",
                           (unsigned long long)lmdb_seq, LMDB_DATA_FILE, LMDB_DATA_FILE);
    }
    return 0;
}

static int new_collection_id(uint8_t id[IDX_COLLECTION_BYTES])
{
    do {
        if (getrandom(id, IDX_COLLECTION_BYTES, 0) != IDX_COLLECTION_BYTES)
            return umg_err_set(umg_err_from_errno(errno), "collection id: getrandom: %s", strerror(errno));
    } while (db_all_zero(id, IDX_COLLECTION_BYTES)); /* zeros mean "none" */
    return 0;
}

/* The collection id (meta "collection"): read, or recorded now for a
 * directory made before ids existed (collection_migrated; not in a
 * read-only open, which leaves it zero). */
static int load_collection_id(db_t *db, MDB_txn *txn)
{
    MDB_val k = { 10, "collection" }, v;
    db->collection_migrated = 0;
    int rc = mdb_get(txn, db->dbi[D_META], &k, &v);
    if (rc == 0) {
        if (v.mv_size != IDX_COLLECTION_BYTES)
            return db_damaged(db, "meta collection of %zu bytes", v.mv_size);
        memcpy(db->collection, v.mv_data, IDX_COLLECTION_BYTES);
        return 0;
    }
    if (rc != MDB_NOTFOUND)
        return rc;
    memset(db->collection, 0, sizeof db->collection);
    if (db->read_only)
        return 0;
    if ((rc = new_collection_id(db->collection)) ||
        (rc = db_meta_put(db, txn, "collection", db->collection, IDX_COLLECTION_BYTES)))
        return rc;
    db->collection_migrated = 1;
    return 0;
}

/* Check (or, for a new directory, record) the model identity and the
 * collection id; refuse snapshots newer than the database.  Runs in the
 * open's first transaction: a refusal writes nothing. */
static int check_model(db_t *db, MDB_txn *txn, void *arg)
{
    const db_options *o = arg;
    MDB_val k = { 11, "fingerprint" }, v;
    int rc = mdb_get(txn, db->dbi[D_META], &k, &v);
    if (rc == MDB_NOTFOUND) {
        if (db->read_only)
            return umg_err_set(UMG_ENOENT, "%s: not an umgdb data directory", db->dir);
        if ((rc = refuse_newer_snapshots(db, 0, NULL, 1)))
            return rc;
        uint32_t schema = DB_SCHEMA_VERSION, dim = (uint32_t)o->dim;
        if ((rc = new_collection_id(db->collection)) ||
            (rc = db_meta_put(db, txn, "fingerprint", o->fingerprint, 32)) ||
            (rc = db_meta_put(db, txn, "model", o->model_name, strlen(o->model_name))) ||
            (rc = db_meta_put(db, txn, "dim", &dim, 4)) || (rc = db_meta_put(db, txn, "schema", &schema, 4)) ||
            (rc = db_meta_put(db, txn, "collection", db->collection, IDX_COLLECTION_BYTES)))
            return rc;
        db->collection_migrated = 0;
        return 0;
    }
    if (rc)
        return rc;
    uint8_t fp[32] = { 0 };
    if (v.mv_size == 32)
        memcpy(fp, v.mv_data, 32);
    MDB_val mk = { 5, "model" }, mv, dk = { 3, "dim" }, dv, sk = { 6, "schema" }, sv;
    char name[256] = "?";
    uint32_t dim = 0, schema = 0;
    if (!mdb_get(txn, db->dbi[D_META], &mk, &mv))
        snprintf(name, sizeof name, "%.*s", (int)(mv.mv_size < 255 ? mv.mv_size : 255), (char *)mv.mv_data);
    if (!mdb_get(txn, db->dbi[D_META], &dk, &dv) && dv.mv_size == 4)
        memcpy(&dim, dv.mv_data, 4);
    if (!mdb_get(txn, db->dbi[D_META], &sk, &sv) && sv.mv_size == 4)
        memcpy(&schema, sv.mv_data, 4);
    if (schema != DB_SCHEMA_VERSION)
        return umg_err_set(UMG_EUNSUPPORTED, "%s: schema version %u, this build reads %d",
                           db->dir, schema, DB_SCHEMA_VERSION);
    if (memcmp(fp, o->fingerprint, 32) || (int)dim != o->dim) {
        char a[17], b[17];
        hex8(fp, a);
        hex8(o->fingerprint, b);
        return umg_err_set(UMG_EMODEL,
                           "%s was built by model '%s' (dimension %u, fingerprint %s...); "
                           "this model is '%s' (dimension %d, fingerprint %s...). "
                           "Use the model that built it or another data directory",
                           db->dir, name, dim, a, o->model_name, o->dim, b);
    }
    uint64_t seq = 0;
    if ((rc = db_meta_get_u64(db, txn, "seq", &seq)) || (rc = load_collection_id(db, txn)))
        return rc;
    return refuse_newer_snapshots(db, seq, db_all_zero(db->collection, IDX_COLLECTION_BYTES) ? NULL : db->collection,
                                  0);
}

static int open_dbis(db_t *db, MDB_txn *txn, void *arg)
{
    for (int i = 0; i < D_COUNT; i++) {
        int rc = mdb_dbi_open(txn, dbi_names[i], dbi_flags[i] | (db->read_only ? 0 : MDB_CREATE), &db->dbi[i]);
        if (rc == MDB_NOTFOUND)
            return umg_err_set(UMG_ENOENT, "%s: not an umgdb data directory", db->dir);
        if (rc)
            return rc;
    }
    return check_model(db, txn, arg);
}

/* The exclusive lock on the data directory: flock on DIR/umgdb.lock, held
 * through lock_fd until db_close.  flock (not fcntl) locks belong to the open
 * file description, so a second db_open in the same process conflicts too,
 * and LMDB's own fcntl locks (which a second open in one process would
 * silently drop) are never put at risk.  The holder's pid is written into the
 * file for the refusal message; the file is never removed (removing it would
 * let a third opener lock a new inode while the first still runs). */
static int lock_dir(db_t *db)
{
    char path[DB_MAX_PATH + 32];
    snprintf(path, sizeof path, "%s/%s", db->dir, LOCK_FILE);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK, 0600);
    if (fd < 0)
        return umg_err_set(umg_err_from_errno(errno), "%s: %s", path, strerror(errno));
    if (flock(fd, LOCK_EX | LOCK_NB)) {
        int e = errno;
        char pid[24] = "";
        ssize_t n = e == EWOULDBLOCK ? pread(fd, pid, sizeof pid - 1, 0) : -1;
        close(fd);
        if (e != EWOULDBLOCK)
            return umg_err_set(umg_err_from_errno(e), "%s: flock: %s", path, strerror(e));
        pid[n > 0 ? n : 0] = '\0';
        pid[strspn(pid, "0123456789")] = '\0';
        return umg_err_set(UMG_EBUSY, "%s is in use by another umgdb process (pid %s holds %s); stop it or use "
                           "another data directory", db->dir, *pid ? pid : "unknown", path);
    }
    char line[24];
    int n = snprintf(line, sizeof line, "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) || pwrite(fd, line, (size_t)n, 0) != n)
        db_logf(db, DB_LOG_WARN, "%s: cannot record the pid: %s", path, strerror(errno)); /* only the message */
    db->lock_fd = fd;
    return 0;
}

/* LMDB maps data.mdb and reads the pages its meta page names: a file
 * shorter than that (truncated by a crash of the file system, a bad copy, a
 * `truncate`) makes the first access past its end a SIGBUS inside liblmdb.
 * So before mdb_env_open, read both meta pages with pread and check the file
 * holds every page up to the newest meta's last page.  The layout is LMDB
 * 0.9's on-disk format on a 64-bit build (mdb.c: a 16-byte page header, then
 * MDB_meta: u32 magic 0xBEEFC0DE, u32 version, void *address, size_t
 * mapsize, two 48-byte MDB_db whose first u32 of the first is the page size,
 * u64 last page, u64 txnid; native byte order).  A file that does not carry
 * the magic is left to LMDB, which reports MDB_INVALID cleanly; an absent
 * or empty file is a new database to LMDB.  Not a regular file: refused. */
#define LMDB_META_OFF 16
#define LMDB_META_LEN 136
static int check_lmdb_file(const char *dir)
{
    char path[DB_MAX_PATH + 32];
    snprintf(path, sizeof path, "%s/%s", dir, LMDB_DATA_FILE);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return errno == ENOENT ? 0 : umg_err_set(umg_err_from_errno(errno), "%s: %s", path, strerror(errno));
    struct stat st;
    int rc = 0;
    unsigned char m[2][LMDB_META_OFF + LMDB_META_LEN];
    uint32_t psize = 0;
    if (fstat(fd, &st)) {
        rc = umg_err_set(umg_err_from_errno(errno), "%s: %s", path, strerror(errno));
    } else if (!S_ISREG(st.st_mode)) {
        rc = umg_err_set(UMG_EFORMAT, "%s: not a regular file", path);
    } else if (st.st_size == 0) {
        /* a new database to LMDB */
    } else if (pread(fd, m[0], sizeof m[0], 0) != (ssize_t)sizeof m[0]) {
        rc = umg_err_set(UMG_EFORMAT, "%s: truncated to %lld bytes (shorter than LMDB's meta page); restore it "
                         "from a backup", path, (long long)st.st_size);
    } else {
        uint32_t magic;
        memcpy(&magic, m[0] + LMDB_META_OFF, 4);
        memcpy(&psize, m[0] + LMDB_META_OFF + 24, 4);
        if (magic != 0xBEEFC0DEu)
            goto out; /* not LMDB 0.9's format: LMDB decides */
        if (psize < 512 || psize > 65536 || (psize & (psize - 1)))
            rc = umg_err_set(UMG_EFORMAT, "%s: LMDB meta page records a page size of %u", path, psize);
        else if (pread(fd, m[1], sizeof m[1], psize) != (ssize_t)sizeof m[1])
            rc = umg_err_set(UMG_EFORMAT, "%s: truncated to %lld bytes (shorter than LMDB's two meta pages); "
                             "restore it from a backup", path, (long long)st.st_size);
    }
    if (!rc && psize) {
        /* LMDB uses the meta page with the larger transaction id */
        uint64_t txn[2], last[2];
        uint32_t magic1;
        for (int i = 0; i < 2; i++) {
            memcpy(&last[i], m[i] + LMDB_META_OFF + 120, 8);
            memcpy(&txn[i], m[i] + LMDB_META_OFF + 128, 8);
        }
        memcpy(&magic1, m[1] + LMDB_META_OFF, 4);
        int pick = magic1 == 0xBEEFC0DEu && txn[1] > txn[0];
        uint64_t need = (last[pick] + 1) * (uint64_t)psize;
        if (last[pick] > ((uint64_t)1 << 40) || (uint64_t)st.st_size < need)
            rc = umg_err_set(UMG_EFORMAT, "%s: truncated: %lld bytes, but its LMDB meta page records %llu pages of "
                             "%u bytes (%llu bytes); restore it from a backup", path, (long long)st.st_size,
                             (unsigned long long)last[pick] + 1, psize, (unsigned long long)need);
    }
out:
    close(fd);
    return rc;
}

int db_open(const char *dir, const db_options *opt, db_t **out)
{
    *out = NULL;
    if (!dir || !*dir || !opt || !opt->fingerprint || !opt->model_name || opt->dim < 1 || opt->dim > 65536)
        return umg_err_set(UMG_EINVAL, "db_open: directory, fingerprint, model name and dimension are required");
    if (strlen(dir) > DB_MAX_PATH)
        return umg_err_set(UMG_ETOOBIG, "db_open: directory path too long");
    db_t *db = calloc(1, sizeof *db);
    if (!db)
        return umg_err_set(UMG_ENOMEM, "db handle");
    int rc = 0;
    db->lock_fd = -1;
    db->dim = opt->dim;
    db->read_only = opt->read_only;
    db->accept_data_loss = opt->accept_data_loss;
    db->approx_threshold = opt->approx_threshold ? opt->approx_threshold : 50000;
    db->nprobe = opt->nprobe > 0 ? opt->nprobe : 32;
    db->rerank_candidates = opt->rerank_candidates > 0 ? opt->rerank_candidates : 10;
    db->log = opt->log;
    db->log_ud = opt->log_ud;
    db->dir = strdup(dir);
    for (int k = 0; k < 2; k++) {
        const char *f = k ? opt->region_factory : opt->image_factory;
        if (f && *f && !(db->factory_opt[k] = strdup(f)))
            rc = UMG_ENOMEM;
    }
    if (!db->dir || rc) {
        rc = umg_err_set(UMG_ENOMEM, "db handle");
        goto fail;
    }
    pthread_rwlockattr_t ra;
    pthread_rwlockattr_init(&ra);
    pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    db->envlock_ok = !pthread_rwlock_init(&db->envlock, &ra);
    db->ixlock_ok = !pthread_rwlock_init(&db->ixlock, &ra);
    pthread_rwlockattr_destroy(&ra);
    db->wmutex_ok = !pthread_mutex_init(&db->wmutex, NULL);
    db->ckmutex_ok = !pthread_mutex_init(&db->ckmutex, NULL);
    if (!db->envlock_ok || !db->ixlock_ok || !db->wmutex_ok || !db->ckmutex_ok) {
        rc = umg_err_set(UMG_ENOMEM, "db locks");
        goto fail;
    }

    if (!db->read_only && mkdir(dir, 0700) && errno != EEXIST) {
        rc = umg_err_set(umg_err_from_errno(errno), "%s: cannot create data directory: %s", dir, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (stat(dir, &st) || !S_ISDIR(st.st_mode)) {
        rc = umg_err_set(UMG_ENOENT, "%s: no such data directory", dir);
        goto fail;
    }
    if (!db->read_only && access(dir, W_OK)) {
        rc = umg_err_set(UMG_EPERM, "%s: data directory is not writable (%s); open it read-only",
                         dir, strerror(errno));
        goto fail;
    }
    /* read-only opens take no lock: they write nothing, and LMDB keeps their
     * reads consistent next to a writer */
    if (!db->read_only && (rc = lock_dir(db)))
        goto fail;
    if ((rc = check_lmdb_file(dir)))
        goto fail;
    /* the snapshots first: whether they cover more than LMDB holds is
     * decided before the open writes anything (check_model) */
    for (int k = 0; k < 2; k++) {
        char path[DB_MAX_PATH + 32];
        db_snap_path(db, k, path, sizeof path);
        db->pre[k].rc = idx_load(path, db->dim, &db->pre[k].ix, &db->pre[k].stamp);
        if (db->pre[k].rc)
            snprintf(db->pre[k].msg, sizeof db->pre[k].msg, "%s", umg_err_msg());
    }
    if ((rc = mdb_env_create(&db->env))) {
        db->env = NULL;
        rc = db_mdb_fail(rc, "mdb_env_create");
        goto fail;
    }
    mdb_env_set_maxdbs(db->env, D_COUNT + 2);
    mdb_env_set_maxreaders(db->env, 512);
    mdb_env_set_mapsize(db->env, opt->initial_map_size ? opt->initial_map_size : (size_t)64 << 20);
    rc = mdb_env_open(db->env, dir, MDB_NOTLS | (db->read_only ? MDB_RDONLY : 0), 0600);
    if (rc) {
        char what[DB_MAX_PATH + 32];
        snprintf(what, sizeof what, "%s: opening LMDB", dir);
        rc = db_mdb_fail(rc, what);
        goto fail;
    }
    int dead = 0; /* reader slots of killed processes pin old pages: free them */
    if (!db->read_only && !mdb_reader_check(db->env, &dead) && dead)
        db_logf(db, DB_LOG_INFO, "%s: cleared %d stale LMDB reader slot(s)", dir, dead);
    if (db->read_only) {
        MDB_txn *txn;
        if ((rc = db_rtxn_begin(db, &txn)))
            goto fail;
        rc = open_dbis(db, txn, (void *)opt);
        /* handles opened in a read txn survive only if it commits */
        if (rc == 0)
            rc = mdb_txn_commit(txn);
        else
            mdb_txn_abort(txn);
        pthread_rwlock_unlock(&db->envlock);
        rc = db_translate(rc, "opening databases");
    } else {
        rc = db_write_txn(db, open_dbis, (void *)opt, "opening databases");
    }
    if (rc)
        goto fail;
    if (db->collection_migrated)
        db_logf(db, DB_LOG_INFO, "%s: recorded a collection id (the directory predates them); the next "
                "checkpoint writes it into the snapshots", dir);
    for (int k = 0; k < 2 && !rc; k++)
        rc = db_index_open(db, k);
    if (rc)
        goto fail;
    *out = db;
    return 0;
fail:
    db_close(db);
    return rc;
}

void db_close(db_t *db)
{
    if (!db)
        return;
    for (int k = 0; k < 2; k++) {
        idx_close(db->ix[k]);
        idx_close(db->pre[k].ix);
        free(db->factory_opt[k]);
    }
    if (db->env)
        mdb_env_close(db->env);
    if (db->lock_fd >= 0)
        close(db->lock_fd); /* last: the directory is free once LMDB is closed */
    if (db->envlock_ok)
        pthread_rwlock_destroy(&db->envlock);
    if (db->ixlock_ok)
        pthread_rwlock_destroy(&db->ixlock);
    if (db->wmutex_ok)
        pthread_mutex_destroy(&db->wmutex);
    if (db->ckmutex_ok)
        pthread_mutex_destroy(&db->ckmutex);
    free(db->dir);
    free(db);
}

int db_probe(const char *dir, char **model_name, uint8_t fingerprint[32], int *dim)
{
    *model_name = NULL;
    int rc = check_lmdb_file(dir);
    if (rc)
        return rc;
    MDB_env *env;
    rc = mdb_env_create(&env);
    if (rc)
        return db_mdb_fail(rc, "mdb_env_create");
    mdb_env_set_maxdbs(env, D_COUNT + 2);
    MDB_txn *txn = NULL;
    MDB_dbi dbi;
    MDB_val k, v;
    rc = mdb_env_open(env, dir, MDB_RDONLY | MDB_NOTLS, 0644);
    if (rc == ENOENT) {
        rc = umg_err_set(UMG_ENOENT, "%s: not an umgdb data directory", dir);
        goto out;
    }
    if (rc || (rc = mdb_txn_begin(env, NULL, MDB_RDONLY, &txn)))
        goto out;
    if ((rc = mdb_dbi_open(txn, "meta", 0, &dbi))) {
        if (rc == MDB_NOTFOUND)
            rc = umg_err_set(UMG_ENOENT, "%s: not an umgdb data directory", dir);
        goto out;
    }
    k.mv_size = 11, k.mv_data = "fingerprint";
    if ((rc = mdb_get(txn, dbi, &k, &v)) || v.mv_size != 32)
        goto out;
    memcpy(fingerprint, v.mv_data, 32);
    k.mv_size = 3, k.mv_data = "dim";
    if ((rc = mdb_get(txn, dbi, &k, &v)) || v.mv_size != 4)
        goto out;
    uint32_t d;
    memcpy(&d, v.mv_data, 4);
    *dim = (int)d;
    k.mv_size = 5, k.mv_data = "model";
    if ((rc = mdb_get(txn, dbi, &k, &v)))
        goto out;
    if (!(*model_name = strndup(v.mv_data, v.mv_size)))
        rc = umg_err_set(UMG_ENOMEM, "model name");
out:
    if (txn)
        mdb_txn_abort(txn);
    mdb_env_close(env);
    if (rc == MDB_NOTFOUND)
        rc = umg_err_set(UMG_EFORMAT, "%s: data directory lacks its model record", dir);
    return db_translate(rc, dir);
}

/* ---- settings (meta "setting." + name) ---- */

typedef struct setting_ctx {
    char key[8 + DB_MAX_SETTING_NAME + 1];
    const char *value;
} setting_ctx;

static int setting_key(const char *name, setting_ctx *s)
{
    if (!name || !*name || strlen(name) > DB_MAX_SETTING_NAME)
        return umg_err_set(UMG_EINVAL, "setting name of 1..%d bytes required", DB_MAX_SETTING_NAME);
    snprintf(s->key, sizeof s->key, "setting.%s", name);
    return 0;
}

static int setting_fn(db_t *db, MDB_txn *txn, void *arg)
{
    setting_ctx *s = arg;
    if (s->value)
        return db_meta_put(db, txn, s->key, s->value, strlen(s->value));
    MDB_val k = { strlen(s->key), s->key };
    int rc = mdb_del(txn, db->dbi[D_META], &k, NULL);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

int db_setting_put(db_t *db, const char *name, const char *value)
{
    setting_ctx s = { .value = value };
    int rc = setting_key(name, &s);
    if (rc)
        return rc;
    if (value && strlen(value) > DB_MAX_SETTING)
        return umg_err_set(UMG_ETOOBIG, "setting %s: longer than %d bytes", name, DB_MAX_SETTING);
    if (value && !db_text_ok(value, strlen(value)))
        return umg_err_set(UMG_EUTF8, "setting %s: not UTF-8", name);
    pthread_mutex_lock(&db->wmutex);
    rc = db_write_txn(db, setting_fn, &s, s.key);
    pthread_mutex_unlock(&db->wmutex);
    return rc;
}

int db_setting_get(db_t *db, const char *name, char *buf, size_t len)
{
    setting_ctx s = { 0 };
    int rc = setting_key(name, &s);
    if (rc)
        return rc;
    if (len)
        buf[0] = '\0';
    MDB_txn *txn;
    if ((rc = db_rtxn_begin(db, &txn)))
        return rc;
    MDB_val k = { strlen(s.key), s.key }, v;
    rc = mdb_get(txn, db->dbi[D_META], &k, &v);
    if (rc == MDB_NOTFOUND)
        rc = UMG_ENOENT; /* no message: absence is an answer */
    else if (!rc && (v.mv_size > DB_MAX_SETTING || !db_text_ok(v.mv_data, v.mv_size)))
        rc = db_damaged(db, "setting %s: %zu bytes, not a setting", name, v.mv_size);
    else if (!rc && v.mv_size >= len)
        rc = umg_err_set(UMG_ETOOBIG, "setting %s: %zu bytes do not fit", name, v.mv_size);
    else if (!rc) {
        memcpy(buf, v.mv_data, v.mv_size);
        buf[v.mv_size] = '\0';
    }
    db_rtxn_end(db, txn);
    return db_translate(rc, s.key);
}

/* ---- stats ---- */

/* The consistency fields of db_stats (txn: a read transaction). */
static void stats_consistency(db_t *db, MDB_txn *txn, db_stats *out)
{
    out->consistent = 1;
    out->mismatch[0] = '\0';
    for (int kind = 0; kind < 2; kind++) {
        out->vectors[kind] = db_vec_count(db, txn, kind);
        db_newest_vec_id(db, txn, kind, &out->newest_id[kind]);
        if (idx_max_id(db->ix[kind], &out->index_newest_id[kind]))
            out->index_newest_id[kind] = -1;
        if (out->consistent && db_index_disagrees(db, txn, kind, db->ix[kind], out->mismatch, sizeof out->mismatch))
            out->consistent = 0;
    }
}

int db_stats_get(db_t *db, db_stats *out)
{
    memset(out, 0, sizeof *out);
    MDB_txn *txn;
    int rc = db_rtxn_begin(db, &txn);
    if (rc)
        return rc;
    MDB_stat st;
    if (!mdb_stat(txn, db->dbi[D_IMAGES], &st))
        out->images = st.ms_entries;
    if (!mdb_stat(txn, db->dbi[D_REGIONS], &st))
        out->regions = st.ms_entries;
    db_meta_get_u64(db, txn, "seq", &out->seq);
    MDB_envinfo info;
    mdb_env_info(db->env, &info);
    mdb_env_stat(db->env, &st);
    out->map_size = info.me_mapsize;
    out->map_used = (uint64_t)(info.me_last_pgno + 1) * st.ms_psize;
    /* the index handles are swapped under ixlock (exclusive); not the writer
     * mutex, which a checkpoint holds while it copies a snapshot (a fraction
     * of a second at 100,000s of vectors): the server answers stats on its
     * event loop */
    pthread_rwlock_rdlock(&db->ixlock);
    stats_consistency(db, txn, out);
    db_rtxn_end(db, txn);
    out->index_images = (uint64_t)idx_count(db->ix[0]);
    out->index_regions = (uint64_t)idx_count(db->ix[1]);
    out->snapshot_seq[0] = __atomic_load_n(&db->snap_seq[0], __ATOMIC_RELAXED);
    out->snapshot_seq[1] = __atomic_load_n(&db->snap_seq[1], __ATOMIC_RELAXED);
    snprintf(out->image_factory, sizeof out->image_factory, "%s", idx_factory(db->ix[0]));
    snprintf(out->region_factory, sizeof out->region_factory, "%s", idx_factory(db->ix[1]));
    pthread_rwlock_unlock(&db->ixlock);
    if (!out->consistent) {
        /* a write between its commit and its index update looks like a
         * mismatch: look again with writers held off */
        pthread_mutex_lock(&db->wmutex);
        pthread_rwlock_rdlock(&db->ixlock);
        if (!db_rtxn_begin(db, &txn)) {
            stats_consistency(db, txn, out);
            db_rtxn_end(db, txn);
        }
        pthread_rwlock_unlock(&db->ixlock);
        pthread_mutex_unlock(&db->wmutex);
    }
    return 0;
}
