/* db.c - LMDB data directory + FAISS indexes; see db.h and docs/storage.md.
 *
 * LMDB named databases (keys u64 are big-endian so cursors walk in id order):
 *   meta         "schema" u32, "fingerprint" [32], "model" str, "dim" u32,
 *                "next_id" u64, "seq" u64
 *   images       id -> image record (see enc_image_rec)
 *   paths        SHA-256(path) -> id     (paths can exceed LMDB's 511-byte keys)
 *   hashes       SHA-256(content) -> id  (dupsort: identical files at two paths)
 *   regions      id -> region record
 *   img_regions  image id -> region id   (dupsort)
 *   ivec, rvec   id -> float16[dim]      (image / region vectors)
 *   log          seq -> {op, kind, id}   adds and deletes, replayed into FAISS
 *   extra        image id ++ name -> blob
 */
#include "db.h"

#include <errno.h>
#include <lmdb.h>
#include <math.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "idx.h"
#include "umg_error.h"

typedef _Float16 f16;

enum { LOG_ADD = 1, LOG_DEL = 2 };
enum {
    D_META, D_IMAGES, D_PATHS, D_HASHES, D_REGIONS, D_IMG_REGIONS, D_IVEC, D_RVEC, D_LOG, D_EXTRA, D_COUNT
};
static const char *const dbi_names[D_COUNT] = {
    "meta", "images", "paths", "hashes", "regions", "img_regions", "ivec", "rvec", "log", "extra"
};
static const unsigned dbi_flags[D_COUNT] = {
    0, 0, 0, MDB_DUPSORT | MDB_DUPFIXED, 0, MDB_DUPSORT | MDB_DUPFIXED, 0, 0, 0, 0
};
static const char *const snap_names[2] = { "images.faiss", "regions.faiss" };

struct db_t {
    MDB_env *env;
    MDB_dbi dbi[D_COUNT];
    int dim;
    int read_only;
    char *dir;
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

/* ---- small helpers ---- */

static void db_logf(db_t *db, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void db_logf(db_t *db, int level, const char *fmt, ...)
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

static void be64(unsigned char *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (unsigned char)v;
}
static uint64_t rd_be64(const void *q)
{
    const unsigned char *p = q;
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | p[i];
    return v;
}

/* An MDB (negative, < -30000) or errno (positive) code, as opposed to a UMG one. */
static int is_foreign(int rc) { return rc > 0 || (rc >= MDB_KEYEXIST && rc <= MDB_LAST_ERRCODE); }

static int mdb_fail(int rc, const char *what)
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

static int translate(int rc, const char *what)
{
    if (rc == 0 || !is_foreign(rc))
        return rc;
    return mdb_fail(rc, what);
}

static int normalize_copy(const float *v, int dim, float *out)
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

static void to_f16(const float *v, int dim, f16 *out)
{
    for (int i = 0; i < dim; i++)
        out[i] = (f16)v[i];
}
static void from_f16(const void *src, int dim, float *out)
{
    const f16 *h = src; /* LMDB values are only 2-byte aligned at best; copy through memcpy */
    for (int i = 0; i < dim; i++) {
        f16 x;
        memcpy(&x, h + i, sizeof x);
        out[i] = (float)x;
    }
}

/* ---- transactions ---- */

static int rtxn_begin(db_t *db, MDB_txn **txn)
{
    pthread_rwlock_rdlock(&db->envlock);
    int rc = mdb_txn_begin(db->env, NULL, MDB_RDONLY, txn);
    if (rc) {
        pthread_rwlock_unlock(&db->envlock);
        return mdb_fail(rc, "read transaction");
    }
    return 0;
}
static void rtxn_end(db_t *db, MDB_txn *txn)
{
    mdb_txn_abort(txn);
    pthread_rwlock_unlock(&db->envlock);
}

static int grow_map(db_t *db)
{
    MDB_envinfo info;
    pthread_rwlock_wrlock(&db->envlock);
    mdb_env_info(db->env, &info);
    size_t next = info.me_mapsize * 2;
    int rc = mdb_env_set_mapsize(db->env, next);
    pthread_rwlock_unlock(&db->envlock);
    if (rc)
        return mdb_fail(rc, "growing the LMDB map");
    db_logf(db, DB_LOG_INFO, "LMDB map grown to %zu MiB", next >> 20);
    return 0;
}

static int disk_nearly_full(const char *dir)
{
    struct statvfs sv;
    return !statvfs(dir, &sv) && (uint64_t)sv.f_bavail * sv.f_frsize < ((uint64_t)4 << 20);
}

typedef int (*txn_fn)(db_t *db, MDB_txn *txn, void *arg);

/* Run fn in a write transaction (caller holds wmutex); MDB_MAP_FULL grows the
 * map and runs fn again from scratch, so fn must be restartable. */
static int write_txn(db_t *db, txn_fn fn, void *arg, const char *what)
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
            int g = grow_map(db);
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
        return translate(rc, what);
    }
    return umg_err_set(UMG_EDB, "%s: LMDB map could not grow enough", what);
}

static int meta_get_u64(db_t *db, MDB_txn *txn, const char *key, uint64_t *v)
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
static int meta_put(db_t *db, MDB_txn *txn, const char *key, const void *v, size_t n)
{
    MDB_val k = { strlen(key), (void *)key }, d = { n, (void *)v };
    return mdb_put(txn, db->dbi[D_META], &k, &d, 0);
}

/* Counters of a write transaction: loaded at its start, stored at its end. */
typedef struct counters {
    uint64_t next_id, seq;
} counters;

static int counters_load(db_t *db, MDB_txn *txn, counters *c)
{
    int rc = meta_get_u64(db, txn, "next_id", &c->next_id);
    if (!rc)
        rc = meta_get_u64(db, txn, "seq", &c->seq);
    if (!rc && c->next_id == 0)
        c->next_id = 1;
    return rc;
}
static int counters_store(db_t *db, MDB_txn *txn, const counters *c)
{
    int rc = meta_put(db, txn, "next_id", &c->next_id, 8);
    if (!rc)
        rc = meta_put(db, txn, "seq", &c->seq, 8);
    return rc;
}

static int log_append(db_t *db, MDB_txn *txn, counters *c, int op, int kind, uint64_t id)
{
    unsigned char key[8], val[10];
    be64(key, ++c->seq);
    val[0] = (unsigned char)op;
    val[1] = (unsigned char)kind;
    be64(val + 2, id);
    MDB_val k = { 8, key }, d = { 10, val };
    return mdb_put(txn, db->dbi[D_LOG], &k, &d, MDB_APPEND);
}

/* ---- records ---- */

/* image record: u32 version, sha[32], u32 w, u32 h, u64 bytes, i64 mtime,
 * i64 ingest, u32 n_regions, u32 path_len, path, u32 n_tags, (u32 len, bytes)* */
#define IMG_REC_VERSION 1u

typedef struct wbuf {
    unsigned char *p;
    size_t n, cap;
    int oom;
} wbuf;

static void wb_put(wbuf *b, const void *src, size_t n)
{
    if (b->oom)
        return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 256;
        while (cap < b->n + n)
            cap *= 2;
        unsigned char *q = realloc(b->p, cap);
        if (!q) {
            b->oom = 1;
            return;
        }
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void wb_u32(wbuf *b, uint32_t v) { wb_put(b, &v, 4); }
static void wb_u64(wbuf *b, uint64_t v) { wb_put(b, &v, 8); }

static int encode_image_rec(const db_image_in *in, int64_t ingest, wbuf *b)
{
    wb_u32(b, IMG_REC_VERSION);
    wb_put(b, in->sha256, 32);
    wb_u32(b, in->width);
    wb_u32(b, in->height);
    wb_u64(b, in->bytes);
    wb_u64(b, (uint64_t)in->mtime);
    wb_u64(b, (uint64_t)ingest);
    wb_u32(b, (uint32_t)in->n_regions);
    size_t pl = strlen(in->path);
    wb_u32(b, (uint32_t)pl);
    wb_put(b, in->path, pl);
    wb_u32(b, (uint32_t)in->n_tags);
    for (int i = 0; i < in->n_tags; i++) {
        size_t tl = strlen(in->tags[i]);
        wb_u32(b, (uint32_t)tl);
        wb_put(b, in->tags[i], tl);
    }
    return b->oom ? umg_err_set(UMG_ENOMEM, "image record") : 0;
}

typedef struct rbuf {
    const unsigned char *p;
    size_t n, off;
    int bad;
} rbuf;

static void rb_get(rbuf *b, void *dst, size_t n)
{
    if (b->bad || b->n - b->off < n) {
        b->bad = 1;
        memset(dst, 0, n);
        return;
    }
    memcpy(dst, b->p + b->off, n);
    b->off += n;
}
static uint32_t rb_u32(rbuf *b) { uint32_t v; rb_get(b, &v, 4); return v; }
static uint64_t rb_u64(rbuf *b) { uint64_t v; rb_get(b, &v, 8); return v; }
static char *rb_str(rbuf *b)
{
    uint32_t n = rb_u32(b);
    if (b->bad || b->n - b->off < n) {
        b->bad = 1;
        return NULL;
    }
    char *s = malloc((size_t)n + 1);
    if (!s) {
        b->bad = 2;
        return NULL;
    }
    memcpy(s, b->p + b->off, n);
    s[n] = '\0';
    b->off += n;
    return s;
}

void db_image_free(db_image *img)
{
    if (!img)
        return;
    free(img->path);
    if (img->tags)
        for (int i = 0; i < img->n_tags; i++)
            free(img->tags[i]);
    free(img->tags);
    memset(img, 0, sizeof *img);
}

static int decode_image_rec(uint64_t id, const MDB_val *v, db_image *out)
{
    memset(out, 0, sizeof *out);
    rbuf b = { v->mv_data, v->mv_size, 0, 0 };
    out->id = id;
    if (rb_u32(&b) != IMG_REC_VERSION)
        return umg_err_set(UMG_EFORMAT, "image %llu: unknown record version", (unsigned long long)id);
    rb_get(&b, out->sha256, 32);
    out->width = rb_u32(&b);
    out->height = rb_u32(&b);
    out->bytes = rb_u64(&b);
    out->mtime = (int64_t)rb_u64(&b);
    out->ingest_time = (int64_t)rb_u64(&b);
    out->n_regions = (int)rb_u32(&b);
    out->path = rb_str(&b);
    uint32_t nt = rb_u32(&b);
    if (!b.bad && nt > DB_MAX_TAGS)
        b.bad = 1;
    if (!b.bad && nt) {
        out->tags = calloc(nt, sizeof *out->tags);
        if (!out->tags)
            b.bad = 2;
        for (uint32_t i = 0; i < nt && !b.bad; i++) {
            out->tags[i] = rb_str(&b);
            out->n_tags = (int)i + 1;
        }
    }
    if (b.bad) {
        int oom = b.bad == 2;
        db_image_free(out);
        return oom ? umg_err_set(UMG_ENOMEM, "image record")
                   : umg_err_set(UMG_EFORMAT, "image %llu: corrupt record", (unsigned long long)id);
    }
    return 0;
}

/* region record: u64 image_id, f32 box[4], f32 score, u8 has_score, u8 mlen, method */
static size_t encode_region_rec(uint64_t image_id, const db_region_in *r, unsigned char *buf)
{
    size_t ml = r->method ? strlen(r->method) : 0;
    unsigned char *p = buf;
    memcpy(p, &image_id, 8), p += 8;
    memcpy(p, r->box, 16), p += 16;
    memcpy(p, &r->score, 4), p += 4;
    *p++ = (unsigned char)(r->has_score != 0);
    *p++ = (unsigned char)ml;
    memcpy(p, r->method ? r->method : "", ml), p += ml;
    return (size_t)(p - buf);
}

static int decode_region_rec(uint64_t id, const MDB_val *v, db_region *out)
{
    memset(out, 0, sizeof *out);
    const unsigned char *p = v->mv_data;
    if (v->mv_size < 30 || v->mv_size != 30u + p[29] || p[29] > DB_MAX_METHOD)
        return umg_err_set(UMG_EFORMAT, "region %llu: corrupt record", (unsigned long long)id);
    out->id = id;
    memcpy(&out->image_id, p, 8);
    memcpy(out->box, p + 8, 16);
    memcpy(&out->score, p + 24, 4);
    out->has_score = p[28];
    memcpy(out->method, p + 30, p[29]);
    out->method[p[29]] = '\0';
    return 0;
}

/* ---- delete (inside a write transaction) ---- */

typedef struct idlist {
    uint64_t *v;
    size_t n, cap;
} idlist;

static int idlist_push(idlist *l, uint64_t id)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        uint64_t *q = realloc(l->v, cap * sizeof *q);
        if (!q)
            return umg_err_set(UMG_ENOMEM, "id list");
        l->v = q;
        l->cap = cap;
    }
    l->v[l->n++] = id;
    return 0;
}

/* Delete image id and everything hanging off it; region ids go to regs. */
static int delete_in_txn(db_t *db, MDB_txn *txn, counters *c, uint64_t id, idlist *regs)
{
    unsigned char key[8];
    be64(key, id);
    MDB_val k = { 8, key }, v;
    int rc = mdb_get(txn, db->dbi[D_IMAGES], &k, &v);
    if (rc == MDB_NOTFOUND)
        return umg_err_set(UMG_ENOENT, "image %llu not found", (unsigned long long)id);
    if (rc)
        return rc;
    db_image img;
    rc = decode_image_rec(id, &v, &img);
    if (rc)
        return rc;
    unsigned char ph[32];
    SHA256((const unsigned char *)img.path, strlen(img.path), ph);
    MDB_val pk = { 32, ph }, hk = { 32, img.sha256 }, idv = { 8, key };
    rc = mdb_del(txn, db->dbi[D_PATHS], &pk, NULL);
    if (!rc || rc == MDB_NOTFOUND)
        rc = mdb_del(txn, db->dbi[D_HASHES], &hk, &idv);
    db_image_free(&img);
    if (rc && rc != MDB_NOTFOUND)
        return rc;
    if ((rc = mdb_del(txn, db->dbi[D_IMAGES], &k, NULL)))
        return rc;
    rc = mdb_del(txn, db->dbi[D_IVEC], &k, NULL);
    if (rc && rc != MDB_NOTFOUND)
        return rc;
    if ((rc = log_append(db, txn, c, LOG_DEL, DB_KIND_IMAGE, id)))
        return rc;

    /* regions */
    MDB_cursor *cur;
    if ((rc = mdb_cursor_open(txn, db->dbi[D_IMG_REGIONS], &cur)))
        return rc;
    MDB_val ck = { 8, key }, cv;
    rc = mdb_cursor_get(cur, &ck, &cv, MDB_SET_KEY);
    while (rc == 0) {
        if ((rc = idlist_push(regs, rd_be64(cv.mv_data))))
            break;
        rc = mdb_cursor_get(cur, &ck, &cv, MDB_NEXT_DUP);
    }
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND)
        return rc;
    rc = mdb_del(txn, db->dbi[D_IMG_REGIONS], &k, NULL);
    if (rc && rc != MDB_NOTFOUND)
        return rc;
    for (size_t i = 0; i < regs->n; i++) {
        unsigned char rk[8];
        be64(rk, regs->v[i]);
        MDB_val rkv = { 8, rk };
        rc = mdb_del(txn, db->dbi[D_REGIONS], &rkv, NULL);
        if (!rc || rc == MDB_NOTFOUND)
            rc = mdb_del(txn, db->dbi[D_RVEC], &rkv, NULL);
        if (rc && rc != MDB_NOTFOUND)
            return rc;
        if ((rc = log_append(db, txn, c, LOG_DEL, DB_KIND_REGION, regs->v[i])))
            return rc;
    }

    /* extras: keys id ++ name */
    if ((rc = mdb_cursor_open(txn, db->dbi[D_EXTRA], &cur)))
        return rc;
    for (;;) {
        MDB_val ek = { 8, key }, ev;
        rc = mdb_cursor_get(cur, &ek, &ev, MDB_SET_RANGE);
        if (rc || ek.mv_size < 8 || memcmp(ek.mv_data, key, 8))
            break;
        if ((rc = mdb_cursor_del(cur, 0)))
            break;
    }
    mdb_cursor_close(cur);
    return rc == MDB_NOTFOUND ? 0 : rc;
}

/* ---- FAISS maintenance ---- */

/* Apply post-commit changes to the in-memory indexes.  LMDB already holds
 * them, so a failure only marks the index for a rebuild. */
static void index_apply(db_t *db, int kind, const uint64_t *del, size_t ndel,
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

static uint64_t vec_count(db_t *db, MDB_txn *txn, int kind)
{
    MDB_stat st;
    if (mdb_stat(txn, db->dbi[kind ? D_RVEC : D_IVEC], &st))
        return 0;
    return st.ms_entries;
}

/* The factory an index of n vectors should have: exact below the threshold,
 * else the configured one or the automatic one. */
static const char *wanted_factory(db_t *db, int kind, uint64_t n, char *buf, size_t len)
{
    if (n >= db->approx_threshold && db->factory_opt[kind]) {
        snprintf(buf, len, "%s", db->factory_opt[kind]);
        return buf;
    }
    return idx_auto_factory(db->dim, n, db->approx_threshold, buf, len);
}

static int build_cancelled(db_t *db) { return __atomic_load_n(&db->cancel_builds, __ATOMIC_RELAXED); }
static int build_cancel_err(void)
{
    return umg_err_set(UMG_ESHUTDOWN, "index build cancelled (shutting down); LMDB still holds every vector");
}

void db_cancel_builds(db_t *db)
{
    if (db)
        __atomic_store_n(&db->cancel_builds, 1, __ATOMIC_RELAXED);
}

static double mono_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

static const char *kind_name(int kind) { return kind ? "region" : "image"; }

/* Create an empty index of factory; a factory FAISS rejects is logged and
 * replaced by the exact one for good (no_switch: not retried). */
static int create_or_exact(db_t *db, int kind, const char *factory, idx_index **ix)
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
static int build_index(db_t *db, MDB_txn *txn, int kind, const char *factory, idx_index **out)
{
    *out = NULL;
    int dim = db->dim;
    uint64_t n = vec_count(db, txn, kind);
    idx_index *ix = NULL;
    int rc = create_or_exact(db, kind, factory, &ix);
    if (rc)
        return rc;
    idx_set_nprobe(ix, db->nprobe);
    MDB_dbi dbi = db->dbi[kind ? D_RVEC : D_IVEC];
    const size_t batch = 4096;
    float *x = NULL;
    int64_t *ids = NULL;
    MDB_cursor *cur = NULL;

    if (build_cancelled(db)) {
        rc = build_cancel_err();
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
            if (i % step == 0)
                from_f16(v.mv_data, dim, x + (size_t)dim * t++);
        mdb_cursor_close(cur);
        cur = NULL;
        double t0 = mono_s();
        rc = idx_train(ix, (int64_t)t, x);
        free(x);
        x = NULL;
        if (!rc && build_cancelled(db))
            rc = build_cancel_err();
        if (rc)
            goto out;
        db_logf(db, DB_LOG_INFO, "%s index %s: trained on %llu vectors in %.1f s; adding %llu", kind_name(kind),
                idx_factory(ix), (unsigned long long)t, mono_s() - t0, (unsigned long long)n);
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
            rc = umg_err_set(UMG_EFORMAT, "stored vector of %zu bytes", v.mv_size);
            goto out;
        }
        ids[nb] = (int64_t)rd_be64(k.mv_data);
        from_f16(v.mv_data, dim, x + (size_t)dim * nb);
        if (++nb == batch) {
            if ((rc = idx_add(ix, (int64_t)nb, x, ids)))
                goto out;
            nb = 0;
            if (build_cancelled(db)) {
                rc = build_cancel_err();
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
    rc = translate(rc, "reading stored vectors");
    if (rc)
        idx_close(ix);
    else
        *out = ix;
    return rc;
}

/* Replay log entries after `from` into ix (txn sees the current state);
 * *entries (may be NULL) gets how many entries of `kind` there were. */
static int replay_log(db_t *db, MDB_txn *txn, int kind, idx_index *ix, uint64_t from, size_t *entries)
{
    MDB_cursor *cur;
    int rc = mdb_cursor_open(txn, db->dbi[D_LOG], &cur);
    if (rc)
        return translate(rc, "log");
    idlist dels = { 0 }, adds = { 0 };
    unsigned char key[8];
    be64(key, from + 1);
    MDB_val k = { 8, key }, v;
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        const unsigned char *e = v.mv_data;
        if (v.mv_size != 10) {
            rc = umg_err_set(UMG_EFORMAT, "log entry of %zu bytes", v.mv_size);
            break;
        }
        if (e[1] != kind)
            continue;
        /* Ids are never reused, so order does not matter: remove every deleted
         * id, add every added id whose vector still exists. */
        if ((rc = idlist_push(e[0] == LOG_DEL ? &dels : &adds, rd_be64(e + 2))))
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
            be64(vk, adds.v[i]);
            MDB_val kk = { 8, vk }, vv;
            int r = mdb_get(txn, db->dbi[kind ? D_RVEC : D_IVEC], &kk, &vv);
            if (r == MDB_NOTFOUND)
                continue;
            if (r) {
                rc = r;
                break;
            }
            from_f16(vv.mv_data, db->dim, x + (size_t)db->dim * m);
            ids[m++] = (int64_t)adds.v[i];
        }
        if (!rc)
            rc = idx_add(ix, (int64_t)m, x, ids);
    }
    free(x);
    free(ids);
    free(dels.v);
    free(adds.v);
    return translate(rc, "replaying the log");
}

static void snap_path(db_t *db, int kind, char *buf, size_t len)
{
    snprintf(buf, len, "%s/%s", db->dir, snap_names[kind]);
}

/* At open: snapshot + replay, or rebuild. */
static int index_open(db_t *db, int kind)
{
    char path[DB_MAX_PATH + 32];
    snap_path(db, kind, path, sizeof path);
    MDB_txn *txn;
    int rc = rtxn_begin(db, &txn);
    if (rc)
        return rc;
    uint64_t seq = 0, lmdb_seq = 0, pruned = 0;
    meta_get_u64(db, txn, "seq", &lmdb_seq);
    meta_get_u64(db, txn, "pruned", &pruned);
    uint64_t want = vec_count(db, txn, kind);
    idx_index *ix = NULL;
    const char *why = NULL;
    char reason[600];
    rc = idx_load(path, db->dim, &ix, &seq);
    if (rc == UMG_ENOENT) {
        why = want ? "no snapshot" : NULL;
    } else if (rc) {
        snprintf(reason, sizeof reason, "snapshot unusable: %s", umg_err_msg());
        why = reason;
    } else if (seq > lmdb_seq) {
        why = "snapshot is newer than the database";
    } else if (seq < pruned) {
        why = "snapshot is older than the log kept to catch it up";
    } else if (db->factory_opt[kind] && !idx_is_exact(ix) && strcmp(db->factory_opt[kind], idx_factory(ix))) {
        why = "configured index type changed";
    } else {
        idx_set_nprobe(ix, db->nprobe);
        rc = replay_log(db, txn, kind, ix, seq, NULL);
        if (rc) {
            snprintf(reason, sizeof reason, "log replay failed: %s", umg_err_msg());
            why = reason;
        } else if ((uint64_t)idx_count(ix) != want) {
            snprintf(reason, sizeof reason, "snapshot+log hold %lld vectors, LMDB %llu",
                     (long long)idx_count(ix), (unsigned long long)want);
            why = reason;
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
        const char *factory = wanted_factory(db, kind, want, fbuf, sizeof fbuf);
        int deferred = 0;
        if (!idx_factory_is_exact(factory)) {
            idx_index *probe = NULL; /* an unusable factory is reported now, not at the checkpoint */
            if (!create_or_exact(db, kind, factory, &probe) && !idx_is_exact(probe))
                deferred = 1;
            idx_close(probe);
            factory = IDX_FACTORY_EXACT;
        }
        if (why)
            db_logf(db, DB_LOG_WARN, "%s: %s; rebuilding the %s index from %llu stored vectors%s", path, why,
                    kind_name(kind), (unsigned long long)want, deferred ? " into an exact index" : "");
        double t0 = mono_s();
        rc = build_index(db, txn, kind, factory, &ix);
        if (!rc && deferred && db->read_only)
            db_logf(db, DB_LOG_WARN, "%s index: %llu vectors loaded into an exact index (%s) in %.2f s; searches "
                    "are exact (slower at this size): a read-only open builds no %s", kind_name(kind),
                    (unsigned long long)want, IDX_FACTORY_EXACT, mono_s() - t0, fbuf);
        else if (!rc && deferred)
            db_logf(db, DB_LOG_WARN, "%s index: %llu vectors loaded into an exact index (%s) in %.2f s; searches "
                    "are exact (slower at this size) until a checkpoint builds %s", kind_name(kind),
                    (unsigned long long)want, IDX_FACTORY_EXACT, mono_s() - t0, fbuf);
        seq = 0; /* nothing on disk covers it yet */
    }
    rtxn_end(db, txn);
    if (rc)
        return rc;
    db->ix[kind] = ix;
    db->snap_seq[kind] = seq;
    db->ix_gen[kind] = 1;
    db->snap_gen[kind] = seq ? 1 : 0; /* loaded from the snapshot */
    return 0;
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

/* Check (or, for a new directory, record) the model identity. */
static int check_model(db_t *db, MDB_txn *txn, void *arg)
{
    const db_options *o = arg;
    MDB_val k = { 11, "fingerprint" }, v;
    int rc = mdb_get(txn, db->dbi[D_META], &k, &v);
    if (rc == MDB_NOTFOUND) {
        if (db->read_only)
            return umg_err_set(UMG_ENOENT, "%s: not an umgdb data directory", db->dir);
        uint32_t schema = DB_SCHEMA_VERSION, dim = (uint32_t)o->dim;
        if ((rc = meta_put(db, txn, "fingerprint", o->fingerprint, 32)) ||
            (rc = meta_put(db, txn, "model", o->model_name, strlen(o->model_name))) ||
            (rc = meta_put(db, txn, "dim", &dim, 4)) || (rc = meta_put(db, txn, "schema", &schema, 4)))
            return rc;
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
    return 0;
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
    db->dim = opt->dim;
    db->read_only = opt->read_only;
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

    if (!db->read_only && mkdir(dir, 0755) && errno != EEXIST) {
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
    if ((rc = mdb_env_create(&db->env))) {
        db->env = NULL;
        rc = mdb_fail(rc, "mdb_env_create");
        goto fail;
    }
    mdb_env_set_maxdbs(db->env, D_COUNT + 2);
    mdb_env_set_maxreaders(db->env, 512);
    mdb_env_set_mapsize(db->env, opt->initial_map_size ? opt->initial_map_size : (size_t)64 << 20);
    rc = mdb_env_open(db->env, dir, MDB_NOTLS | (db->read_only ? MDB_RDONLY : 0), 0644);
    if (rc) {
        char what[DB_MAX_PATH + 32];
        snprintf(what, sizeof what, "%s: opening LMDB", dir);
        rc = mdb_fail(rc, what);
        goto fail;
    }
    int dead = 0; /* reader slots of killed processes pin old pages: free them */
    if (!db->read_only && !mdb_reader_check(db->env, &dead) && dead)
        db_logf(db, DB_LOG_INFO, "%s: cleared %d stale LMDB reader slot(s)", dir, dead);
    if (db->read_only) {
        MDB_txn *txn;
        if ((rc = rtxn_begin(db, &txn)))
            goto fail;
        rc = open_dbis(db, txn, (void *)opt);
        /* handles opened in a read txn survive only if it commits */
        if (rc == 0)
            rc = mdb_txn_commit(txn);
        else
            mdb_txn_abort(txn);
        pthread_rwlock_unlock(&db->envlock);
        rc = translate(rc, "opening databases");
    } else {
        rc = write_txn(db, open_dbis, (void *)opt, "opening databases");
    }
    if (rc)
        goto fail;
    for (int k = 0; k < 2 && !rc; k++)
        rc = index_open(db, k);
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
        free(db->factory_opt[k]);
    }
    if (db->env)
        mdb_env_close(db->env);
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
    MDB_env *env;
    int rc = mdb_env_create(&env);
    if (rc)
        return mdb_fail(rc, "mdb_env_create");
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
    return translate(rc, dir);
}

/* ---- put ---- */

typedef struct put_ctx {
    const db_image_in *ins;
    int n;
    const f16 *h;          /* per image: its vector then its regions' vectors */
    int64_t now;
    uint64_t *image_ids;   /* n */
    uint64_t *rids;        /* all regions, in input order */
    idlist old_images, old_regs; /* replaced */
} put_ctx;

static int put_one(db_t *db, MDB_txn *txn, counters *c, put_ctx *p, const db_image_in *in,
                   const f16 *h, uint64_t *image_id, uint64_t *rids)
{
    unsigned char ph[32];
    SHA256((const unsigned char *)in->path, strlen(in->path), ph);
    MDB_val pk = { 32, ph }, pv;
    int rc = mdb_get(txn, db->dbi[D_PATHS], &pk, &pv);
    if (rc == 0) {
        uint64_t old = rd_be64(pv.mv_data);
        if (!in->replace)
            return umg_err_set(UMG_EEXIST, "%s is already stored as image %llu", in->path,
                               (unsigned long long)old);
        if ((rc = delete_in_txn(db, txn, c, old, &p->old_regs)) || (rc = idlist_push(&p->old_images, old)))
            return rc;
    } else if (rc != MDB_NOTFOUND) {
        return rc;
    }

    uint64_t id = c->next_id++;
    *image_id = id;
    unsigned char key[8];
    be64(key, id);
    MDB_val k = { 8, key }, v;
    wbuf b = { 0 };
    rc = encode_image_rec(in, in->ingest_time ? in->ingest_time : p->now, &b);
    if (!rc) {
        v.mv_size = b.n, v.mv_data = b.p;
        rc = mdb_put(txn, db->dbi[D_IMAGES], &k, &v, MDB_APPEND);
    }
    free(b.p);
    if (rc)
        return rc;
    MDB_val idv = { 8, key }, hk = { 32, (void *)in->sha256 };
    if ((rc = mdb_put(txn, db->dbi[D_PATHS], &pk, &idv, 0)) ||
        (rc = mdb_put(txn, db->dbi[D_HASHES], &hk, &idv, 0)))
        return rc;
    MDB_val vv = { (size_t)db->dim * 2, (void *)h };
    if ((rc = mdb_put(txn, db->dbi[D_IVEC], &k, &vv, MDB_APPEND)) ||
        (rc = log_append(db, txn, c, LOG_ADD, DB_KIND_IMAGE, id)))
        return rc;
    for (int i = 0; i < in->n_regions; i++) {
        uint64_t rid = c->next_id++;
        rids[i] = rid;
        unsigned char rk[8], rec[30 + DB_MAX_METHOD];
        be64(rk, rid);
        MDB_val rkv = { 8, rk }, rv = { encode_region_rec(id, &in->regions[i], rec), rec };
        MDB_val rvec = { (size_t)db->dim * 2, (void *)(h + (size_t)db->dim * (1 + (size_t)i)) };
        MDB_val ridv = { 8, rk };
        if ((rc = mdb_put(txn, db->dbi[D_REGIONS], &rkv, &rv, MDB_APPEND)) ||
            (rc = mdb_put(txn, db->dbi[D_RVEC], &rkv, &rvec, MDB_APPEND)) ||
            (rc = mdb_put(txn, db->dbi[D_IMG_REGIONS], &k, &ridv, 0)) ||
            (rc = log_append(db, txn, c, LOG_ADD, DB_KIND_REGION, rid)))
            return rc;
    }
    for (int i = 0; i < in->n_extras; i++) {
        const db_extra_in *e = &in->extras[i];
        size_t nl = strlen(e->name);
        unsigned char ek[8 + DB_MAX_EXTRA_NAME];
        memcpy(ek, key, 8);
        memcpy(ek + 8, e->name, nl);
        MDB_val ekv = { 8 + nl, ek }, ev = { e->len, (void *)e->data };
        if ((rc = mdb_put(txn, db->dbi[D_EXTRA], &ekv, &ev, 0)))
            return rc;
    }
    return 0;
}

static int put_fn(db_t *db, MDB_txn *txn, void *arg)
{
    put_ctx *p = arg;
    p->old_images.n = 0;
    p->old_regs.n = 0;
    counters c;
    int rc = counters_load(db, txn, &c);
    const f16 *h = p->h;
    uint64_t *rids = p->rids;
    for (int i = 0; i < p->n && !rc; i++) {
        rc = put_one(db, txn, &c, p, &p->ins[i], h, &p->image_ids[i], rids);
        h += (size_t)db->dim * (1 + (size_t)p->ins[i].n_regions);
        rids += p->ins[i].n_regions;
    }
    if (!rc)
        rc = counters_store(db, txn, &c);
    return rc;
}

static int check_input(const db_t *db, const db_image_in *in)
{
    if (!in->path || !*in->path)
        return umg_err_set(UMG_EINVAL, "image path is required");
    if (strlen(in->path) > DB_MAX_PATH) /* the protocol's 1..4096 bytes */
        return umg_err_set(UMG_ETOOBIG, "image path longer than %d bytes", DB_MAX_PATH);
    if (!in->vector)
        return umg_err_set(UMG_EINVAL, "%s: image vector is required", in->path);
    if (in->n_regions < 0 || in->n_regions > 100000 || (in->n_regions && !in->regions))
        return umg_err_set(UMG_EINVAL, "%s: bad region count %d", in->path, in->n_regions);
    if (in->n_tags < 0 || in->n_tags > DB_MAX_TAGS || (in->n_tags && !in->tags))
        return umg_err_set(UMG_EINVAL, "%s: bad tag count %d", in->path, in->n_tags);
    for (int i = 0; i < in->n_tags; i++)
        if (!in->tags[i] || strlen(in->tags[i]) > 4096)
            return umg_err_set(UMG_EINVAL, "%s: tag %d missing or too long", in->path, i);
    for (int i = 0; i < in->n_regions; i++) {
        const db_region_in *r = &in->regions[i];
        if (!r->vector)
            return umg_err_set(UMG_EINVAL, "%s: region %d has no vector", in->path, i);
        if (r->method && strlen(r->method) > DB_MAX_METHOD)
            return umg_err_set(UMG_EINVAL, "%s: region %d method longer than %d bytes", in->path, i,
                               DB_MAX_METHOD);
        for (int j = 0; j < 4; j++)
            if (!isfinite(r->box[j]))
                return umg_err_set(UMG_EINVAL, "%s: region %d box is not finite", in->path, i);
    }
    if (in->n_extras < 0 || (in->n_extras && !in->extras))
        return umg_err_set(UMG_EINVAL, "%s: bad extra count", in->path);
    for (int i = 0; i < in->n_extras; i++) {
        const db_extra_in *e = &in->extras[i];
        if (!e->name || !*e->name || strlen(e->name) > DB_MAX_EXTRA_NAME || (e->len && !e->data))
            return umg_err_set(UMG_EINVAL, "%s: extra %d needs a name of 1..%d bytes and data", in->path,
                               i, DB_MAX_EXTRA_NAME);
        if (e->len > ((size_t)1 << 30))
            return umg_err_set(UMG_ETOOBIG, "%s: extra %s is larger than 1 GiB", in->path, e->name);
    }
    (void)db;
    return 0;
}

int db_put_images(db_t *db, const db_image_in *ins, int n, uint64_t *image_ids, uint64_t *region_ids)
{
    if (!db || (!ins && n) || n < 0)
        return umg_err_set(UMG_EINVAL, "db_put_images: bad arguments");
    if (n == 0)
        return 0;
    int rc = 0;
    size_t nvec = 0, nreg = 0;
    for (int i = 0; i < n && !rc; i++) {
        rc = check_input(db, &ins[i]);
        nvec += 1 + (size_t)ins[i].n_regions;
        nreg += (size_t)ins[i].n_regions;
    }
    if (rc)
        return rc;
    int dim = db->dim;
    float *norm = malloc(sizeof *norm * (size_t)dim * nvec);
    f16 *h = malloc(sizeof *h * (size_t)dim * nvec);
    uint64_t *img_ids = malloc(sizeof *img_ids * (size_t)n);
    uint64_t *rids = malloc(sizeof *rids * (nreg + 1));
    float *ivecs = malloc(sizeof *ivecs * (size_t)dim * (size_t)n);
    float *rvecs = malloc(sizeof *rvecs * (size_t)dim * (nreg + 1));
    put_ctx p = { .ins = ins, .n = n, .h = h, .image_ids = img_ids, .rids = rids, .now = (int64_t)time(NULL) };
    if (!norm || !h || !img_ids || !rids || !ivecs || !rvecs) {
        rc = umg_err_set(UMG_ENOMEM, "vectors of %d images", n);
        goto out;
    }
    size_t at = 0, ri = 0;
    for (int i = 0; i < n && !rc; i++) {
        for (int j = 0; j <= ins[i].n_regions && !rc; j++, at++) {
            rc = normalize_copy(j ? ins[i].regions[j - 1].vector : ins[i].vector, dim, norm + (size_t)dim * at);
            if (rc)
                rc = umg_err_set(rc, "%s: %s %d: %s", ins[i].path, j ? "region" : "image", j ? j - 1 : 0,
                                 umg_err_msg());
            /* FAISS gets exactly what LMDB stores (float16-rounded), so a
             * rebuilt index equals the incrementally grown one */
            to_f16(norm + (size_t)dim * at, dim, h + (size_t)dim * at);
            from_f16(h + (size_t)dim * at, dim,
                     j ? rvecs + (size_t)dim * ri++ : ivecs + (size_t)dim * i);
        }
    }
    if (rc)
        goto out;

    pthread_mutex_lock(&db->wmutex);
    rc = write_txn(db, put_fn, &p, ins[0].path);
    if (!rc) {
        index_apply(db, DB_KIND_IMAGE, p.old_images.v, p.old_images.n, ivecs, img_ids, (size_t)n);
        index_apply(db, DB_KIND_REGION, p.old_regs.v, p.old_regs.n, rvecs, rids, nreg);
    }
    pthread_mutex_unlock(&db->wmutex);
    if (!rc) {
        if (image_ids)
            memcpy(image_ids, img_ids, sizeof *img_ids * (size_t)n);
        if (region_ids)
            memcpy(region_ids, rids, sizeof *rids * nreg);
    }
out:
    free(norm);
    free(h);
    free(img_ids);
    free(rids);
    free(ivecs);
    free(rvecs);
    free(p.old_images.v);
    free(p.old_regs.v);
    return rc;
}

int db_put_image(db_t *db, const db_image_in *in, uint64_t *image_id, uint64_t *region_ids)
{
    return db_put_images(db, in, in ? 1 : 0, image_id, region_ids);
}

/* ---- delete ---- */

typedef struct del_ctx {
    uint64_t id;
    idlist regs;
} del_ctx;

static int del_fn(db_t *db, MDB_txn *txn, void *arg)
{
    del_ctx *d = arg;
    d->regs.n = 0;
    counters c;
    int rc = counters_load(db, txn, &c);
    if (!rc)
        rc = delete_in_txn(db, txn, &c, d->id, &d->regs);
    if (!rc)
        rc = counters_store(db, txn, &c);
    return rc;
}

int db_delete_image(db_t *db, uint64_t image_id)
{
    del_ctx d = { .id = image_id };
    char what[64];
    snprintf(what, sizeof what, "deleting image %llu", (unsigned long long)image_id);
    pthread_mutex_lock(&db->wmutex);
    int rc = write_txn(db, del_fn, &d, what);
    if (!rc) {
        index_apply(db, DB_KIND_IMAGE, &image_id, 1, NULL, NULL, 0);
        index_apply(db, DB_KIND_REGION, d.regs.v, d.regs.n, NULL, NULL, 0);
    }
    pthread_mutex_unlock(&db->wmutex);
    free(d.regs.v);
    return rc;
}

/* ---- reads ---- */

static int get_by_id(db_t *db, MDB_txn *txn, int dbi, uint64_t id, MDB_val *v)
{
    unsigned char key[8];
    be64(key, id);
    MDB_val k = { 8, key };
    return mdb_get(txn, db->dbi[dbi], &k, v);
}

/* The image (kind DB_KIND_IMAGE, out a db_image) or region record id,
 * decoded into out, in a read transaction of its own. */
static int get_record(db_t *db, int kind, uint64_t id, void *out)
{
    MDB_txn *txn;
    int rc = rtxn_begin(db, &txn);
    if (rc)
        return rc;
    int region = kind == DB_KIND_REGION;
    MDB_val v;
    rc = get_by_id(db, txn, region ? D_REGIONS : D_IMAGES, id, &v);
    if (rc == MDB_NOTFOUND)
        rc = umg_err_set(UMG_ENOENT, "%s %llu not found", region ? "region" : "image", (unsigned long long)id);
    else if (!rc)
        rc = region ? decode_region_rec(id, &v, out) : decode_image_rec(id, &v, out);
    rtxn_end(db, txn);
    return translate(rc, region ? "reading a region" : "reading an image");
}

int db_get_image(db_t *db, uint64_t id, db_image *out)
{
    memset(out, 0, sizeof *out);
    return get_record(db, DB_KIND_IMAGE, id, out);
}

int db_find_path(db_t *db, const char *path, uint64_t *id)
{
    *id = 0;
    if (!path)
        return umg_err_set(UMG_EINVAL, "db_find_path: NULL path");
    unsigned char ph[32];
    SHA256((const unsigned char *)path, strlen(path), ph);
    MDB_txn *txn;
    int rc = rtxn_begin(db, &txn);
    if (rc)
        return rc;
    MDB_val k = { 32, ph }, v;
    rc = mdb_get(txn, db->dbi[D_PATHS], &k, &v);
    if (rc == MDB_NOTFOUND)
        rc = umg_err_set(UMG_ENOENT, "%s not found", path);
    else if (!rc)
        *id = rd_be64(v.mv_data);
    rtxn_end(db, txn);
    return translate(rc, "path lookup");
}

int db_find_hash(db_t *db, const uint8_t sha256[32], uint64_t *ids, int max, int *n)
{
    *n = 0;
    MDB_txn *txn;
    int rc = rtxn_begin(db, &txn);
    if (rc)
        return rc;
    MDB_cursor *cur;
    if (!(rc = mdb_cursor_open(txn, db->dbi[D_HASHES], &cur))) {
        MDB_val k = { 32, (void *)sha256 }, v;
        int cnt = 0;
        for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_KEY); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT_DUP)) {
            if (cnt < max)
                ids[cnt] = rd_be64(v.mv_data);
            cnt++;
        }
        mdb_cursor_close(cur);
        *n = cnt;
        rc = rc == MDB_NOTFOUND ? (cnt ? 0 : umg_err_set(UMG_ENOENT, "no image with this content hash")) : rc;
    }
    rtxn_end(db, txn);
    return translate(rc, "hash lookup");
}

int db_get_region(db_t *db, uint64_t id, db_region *out)
{
    memset(out, 0, sizeof *out);
    return get_record(db, DB_KIND_REGION, id, out);
}

int db_list_images(db_t *db, uint64_t after, uint64_t *ids, int max, int *n)
{
    *n = 0;
    if (max < 0 || (max && !ids))
        return umg_err_set(UMG_EINVAL, "db_list_images: bad buffer");
    MDB_txn *txn;
    int rc = rtxn_begin(db, &txn);
    if (rc)
        return rc;
    MDB_cursor *cur;
    int cnt = 0;
    if (!(rc = mdb_cursor_open(txn, db->dbi[D_IMAGES], &cur))) {
        unsigned char key[8];
        be64(key, after + 1);
        MDB_val k = { 8, key }, v;
        for (rc = after == UINT64_MAX ? MDB_NOTFOUND : mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
             rc == 0 && cnt < max; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
            ids[cnt++] = rd_be64(k.mv_data);
        mdb_cursor_close(cur);
        if (rc == MDB_NOTFOUND || cnt == max)
            rc = 0;
    }
    rtxn_end(db, txn);
    *n = cnt;
    return translate(rc, "listing images");
}

int db_list_regions(db_t *db, uint64_t image_id, db_region **out, int *n)
{
    *out = NULL;
    *n = 0;
    MDB_txn *txn;
    int rc = rtxn_begin(db, &txn);
    if (rc)
        return rc;
    MDB_val v;
    db_region *list = NULL;
    int cnt = 0;
    rc = get_by_id(db, txn, D_IMAGES, image_id, &v);
    if (rc == MDB_NOTFOUND) {
        rc = umg_err_set(UMG_ENOENT, "image %llu not found", (unsigned long long)image_id);
        goto out;
    }
    if (rc)
        goto out;
    MDB_cursor *cur;
    if ((rc = mdb_cursor_open(txn, db->dbi[D_IMG_REGIONS], &cur)))
        goto out;
    unsigned char key[8];
    be64(key, image_id);
    MDB_val k = { 8, key };
    size_t total = 0;
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_KEY);
    if (!rc)
        rc = mdb_cursor_count(cur, &total);
    if (!rc && total) {
        list = calloc(total, sizeof *list);
        if (!list)
            rc = umg_err_set(UMG_ENOMEM, "region list");
    }
    while (rc == 0 && (size_t)cnt < total) {
        uint64_t rid = rd_be64(v.mv_data);
        MDB_val rv;
        rc = get_by_id(db, txn, D_REGIONS, rid, &rv);
        if (!rc)
            rc = decode_region_rec(rid, &rv, &list[cnt++]);
        if (!rc && (size_t)cnt < total)
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT_DUP);
    }
    mdb_cursor_close(cur);
    if (rc == MDB_NOTFOUND)
        rc = 0;
out:
    rtxn_end(db, txn);
    rc = translate(rc, "listing regions");
    if (rc) {
        free(list);
        return rc;
    }
    *out = list;
    *n = cnt;
    return 0;
}

int db_get_vector(db_t *db, int kind, uint64_t id, float *out)
{
    if (kind != DB_KIND_IMAGE && kind != DB_KIND_REGION)
        return umg_err_set(UMG_EINVAL, "vector kind %d", kind);
    MDB_txn *txn;
    int rc = rtxn_begin(db, &txn);
    if (rc)
        return rc;
    MDB_val v;
    rc = get_by_id(db, txn, kind ? D_RVEC : D_IVEC, id, &v);
    if (rc == MDB_NOTFOUND)
        rc = umg_err_set(UMG_ENOENT, "%s %llu has no vector", kind ? "region" : "image", (unsigned long long)id);
    else if (!rc && v.mv_size != (size_t)db->dim * 2)
        rc = umg_err_set(UMG_EFORMAT, "stored vector of %zu bytes", v.mv_size);
    else if (!rc)
        from_f16(v.mv_data, db->dim, out);
    rtxn_end(db, txn);
    return translate(rc, "reading a vector");
}

/* ---- extras ---- */

typedef struct extra_ctx {
    uint64_t id;
    const char *name;
    const void *data;
    size_t len;
} extra_ctx;

static int extra_fn(db_t *db, MDB_txn *txn, void *arg)
{
    extra_ctx *e = arg;
    MDB_val v;
    int rc = get_by_id(db, txn, D_IMAGES, e->id, &v);
    if (rc == MDB_NOTFOUND)
        return umg_err_set(UMG_ENOENT, "image %llu not found", (unsigned long long)e->id);
    if (rc)
        return rc;
    size_t nl = strlen(e->name);
    unsigned char ek[8 + DB_MAX_EXTRA_NAME];
    be64(ek, e->id);
    memcpy(ek + 8, e->name, nl);
    MDB_val k = { 8 + nl, ek }, d = { e->len, (void *)e->data };
    return mdb_put(txn, db->dbi[D_EXTRA], &k, &d, 0);
}

int db_put_extra(db_t *db, uint64_t image_id, const char *name, const void *data, size_t len)
{
    if (!name || !*name || strlen(name) > DB_MAX_EXTRA_NAME || (len && !data))
        return umg_err_set(UMG_EINVAL, "extra needs a name of 1..%d bytes and data", DB_MAX_EXTRA_NAME);
    if (len > ((size_t)1 << 30))
        return umg_err_set(UMG_ETOOBIG, "extra %s is larger than 1 GiB", name);
    extra_ctx e = { image_id, name, data, len };
    pthread_mutex_lock(&db->wmutex);
    int rc = write_txn(db, extra_fn, &e, name);
    pthread_mutex_unlock(&db->wmutex);
    return rc;
}

int db_get_extra(db_t *db, uint64_t image_id, const char *name, void **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    if (!name || !*name || strlen(name) > DB_MAX_EXTRA_NAME)
        return umg_err_set(UMG_EINVAL, "extra name of 1..%d bytes required", DB_MAX_EXTRA_NAME);
    size_t nl = strlen(name);
    unsigned char ek[8 + DB_MAX_EXTRA_NAME];
    be64(ek, image_id);
    memcpy(ek + 8, name, nl);
    MDB_txn *txn;
    int rc = rtxn_begin(db, &txn);
    if (rc)
        return rc;
    MDB_val k = { 8 + nl, ek }, v;
    rc = mdb_get(txn, db->dbi[D_EXTRA], &k, &v);
    if (rc == MDB_NOTFOUND) {
        rc = umg_err_set(UMG_ENOENT, "image %llu has no %s", (unsigned long long)image_id, name);
    } else if (!rc) {
        *data = malloc(v.mv_size ? v.mv_size : 1);
        if (!*data)
            rc = umg_err_set(UMG_ENOMEM, "extra %s (%zu bytes)", name, v.mv_size);
        else {
            memcpy(*data, v.mv_data, v.mv_size);
            *len = v.mv_size;
        }
    }
    rtxn_end(db, txn);
    return translate(rc, name);
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
    int rc = get_by_id(f->db, f->txn, f->kind ? D_RVEC : D_IVEC, (uint64_t)id, &v);
    if (rc == MDB_NOTFOUND)
        return UMG_ENOENT;
    if (rc)
        return mdb_fail(rc, "reading a vector");
    if (v.mv_size != (size_t)f->db->dim * 2)
        return umg_err_set(UMG_EFORMAT, "stored vector of %zu bytes", v.mv_size);
    from_f16(v.mv_data, f->db->dim, out);
    return 0;
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
    if ((rc = normalize_copy(query, db->dim, q)))
        goto out;
    pthread_rwlock_rdlock(&db->ixlock);
    idx_index *ix = db->ix[kind];
    int rerank = opts ? opts->rerank : -1;
    if (rerank < 0)
        rerank = !idx_is_exact(ix);
    MDB_txn *txn;
    if ((rc = rtxn_begin(db, &txn))) {
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
            int r = get_by_id(db, txn, kind ? D_RVEC : D_IVEC, (uint64_t)ids[i], &v);
            if (r == 0) {
                ids[m] = ids[i];
                sc[m++] = sc[i];
            } else if (r != MDB_NOTFOUND) {
                rc = mdb_fail(r, "search filter");
            }
        }
        nh = m;
    }
    rtxn_end(db, txn);
    pthread_rwlock_unlock(&db->ixlock);
    if (!rc) {
        for (int i = 0; i < nh; i++) {
            hits[i].id = (uint64_t)ids[i];
            hits[i].score = sc[i];
        }
        *n = nh;
    }
out:
    free(q);
    free(ids);
    free(sc);
    return rc;
}

/* ---- stats / checkpoint ---- */

int db_stats_get(db_t *db, db_stats *out)
{
    memset(out, 0, sizeof *out);
    MDB_txn *txn;
    int rc = rtxn_begin(db, &txn);
    if (rc)
        return rc;
    MDB_stat st;
    if (!mdb_stat(txn, db->dbi[D_IMAGES], &st))
        out->images = st.ms_entries;
    if (!mdb_stat(txn, db->dbi[D_REGIONS], &st))
        out->regions = st.ms_entries;
    meta_get_u64(db, txn, "seq", &out->seq);
    MDB_envinfo info;
    mdb_env_info(db->env, &info);
    mdb_env_stat(db->env, &st);
    out->map_size = info.me_mapsize;
    out->map_used = (uint64_t)(info.me_last_pgno + 1) * st.ms_psize;
    rtxn_end(db, txn);
    /* the index handles are swapped under ixlock (exclusive); not the writer
     * mutex, which a checkpoint holds while it writes a snapshot (seconds at
     * millions of vectors): the server answers stats on its event loop */
    pthread_rwlock_rdlock(&db->ixlock);
    out->index_images = (uint64_t)idx_count(db->ix[0]);
    out->index_regions = (uint64_t)idx_count(db->ix[1]);
    out->snapshot_seq[0] = __atomic_load_n(&db->snap_seq[0], __ATOMIC_RELAXED);
    out->snapshot_seq[1] = __atomic_load_n(&db->snap_seq[1], __ATOMIC_RELAXED);
    snprintf(out->image_factory, sizeof out->image_factory, "%s", idx_factory(db->ix[0]));
    snprintf(out->region_factory, sizeof out->region_factory, "%s", idx_factory(db->ix[1]));
    pthread_rwlock_unlock(&db->ixlock);
    return 0;
}

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
    while ((rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST)) == 0 && rd_be64(k.mv_data) <= p->upto)
        if ((rc = mdb_cursor_del(cur, 0)))
            break;
    mdb_cursor_close(cur);
    if (rc && rc != MDB_NOTFOUND)
        return rc;
    /* a snapshot older than this can no longer be caught up */
    return meta_put(db, txn, "pruned", &p->upto, 8);
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
        int g = grow_map(db);
        if (g)
            return g;
    }
    MDB_txn *txn;
    int rc = rtxn_begin(db, &txn);
    if (rc)
        return rc;
    double t0 = mono_s();
    uint64_t seq = 0;
    meta_get_u64(db, txn, "seq", &seq);
    uint64_t n = vec_count(db, txn, kind);
    char want[128];
    wanted_factory(db, kind, n, want, sizeof want);
    idx_index *nix = NULL;
    rc = build_index(db, txn, kind, want, &nix);
    rtxn_end(db, txn);
    if (rc)
        return rc;
    size_t caught_up = 0;
    pthread_mutex_lock(&db->wmutex);
    if ((rc = rtxn_begin(db, &txn)) == 0) {
        /* the writes committed during the build; the log up to here is kept
         * while a build runs (see db_checkpoint_ex) */
        rc = replay_log(db, txn, kind, nix, seq, &caught_up);
        rtxn_end(db, txn);
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
                "entries written meanwhile; it replaces the %s index", kind_name(kind), idx_factory(nix),
                (unsigned long long)n, mono_s() - t0, caught_up, was);
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
    wanted_factory(db, kind, n, want, wlen);
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
        if (!(rc = rtxn_begin(db, &txn))) {
            meta_get_u64(db, txn, "seq", &seq);
            rtxn_end(db, txn);
            /* the same index, unchanged since its snapshot (a session that only
             * searched, or a stop that leaves a build for later): nothing to write */
            if (seq != 0 && seq == db->snap_seq[kind] && db->snap_gen[kind] == gen) {
                pthread_mutex_unlock(&db->wmutex);
                continue;
            }
            rc = idx_snapshot_take(db->ix[kind], seq, &snap);
        }
        pthread_mutex_unlock(&db->wmutex);
        if (!rc) {
            char path[DB_MAX_PATH + 32];
            snap_path(db, kind, path, sizeof path);
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
        rc = write_txn(db, prune_fn, &p, "pruning the log");
        pthread_mutex_unlock(&db->wmutex);
    }
    pthread_mutex_unlock(&db->ckmutex);
    if (!rc && build_rc)
        rc = umg_err_set(build_rc, "%s", build_msg);
    return rc;
}
