/* db_records.c - the records of the data directory (layouts: db.c's opening
 * comment): encoding, validation when decoding, put, delete, lookups, extras. */
#include "db_internal.h"

#include <math.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "umg_error.h"

/* ---- records ---- */

/* image record: u32 version, sha[32], u32 w, u32 h, u64 bytes, i64 mtime,
 * i64 ingest, u32 n_regions, u32 path_len, path, u32 n_tags, (u32 len, bytes)* */
#define IMG_REC_VERSION 1u
#define IMG_REC_VERSION_CAPTURE 2u  /* version 1 + the capture fields (db.c) */
enum { CAP_TAKEN = 1, CAP_OFFSET = 2, CAP_CAMERA = 4, CAP_GPS = 8 };

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

static unsigned capture_flags(const db_capture *c)
{
    if (!c)
        return 0;
    return (c->has_taken ? CAP_TAKEN : 0) | (c->has_taken && c->has_offset ? CAP_OFFSET : 0) |
           (c->camera[0] ? CAP_CAMERA : 0) | (c->has_gps ? CAP_GPS : 0);
}

static int encode_image_rec(const db_image_in *in, int64_t ingest, wbuf *b)
{
    /* version 1 unless something of the capture is known: a collection
     * without EXIF stays readable by builds from before version 2 */
    unsigned cf = capture_flags(in->capture);
    wb_u32(b, cf ? IMG_REC_VERSION_CAPTURE : IMG_REC_VERSION);
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
    if (cf) {
        const db_capture *c = in->capture;
        unsigned char flags = (unsigned char)cf;
        wb_put(b, &flags, 1);
        if (cf & CAP_TAKEN)
            wb_u64(b, (uint64_t)c->taken);
        if (cf & CAP_OFFSET) {
            int16_t off = (int16_t)c->offset_minutes;
            wb_put(b, &off, 2);
        }
        if (cf & CAP_CAMERA) {
            unsigned char cl = (unsigned char)strlen(c->camera);
            wb_put(b, &cl, 1);
            wb_put(b, c->camera, cl);
        }
        if (cf & CAP_GPS) {
            wb_put(b, &c->lat, 8);
            wb_put(b, &c->lon, 8);
        }
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

/* What check_capture accepts; NULL when c is valid, else what is wrong. */
static const char *capture_problem(const db_capture *c)
{
    if (c->has_taken && (c->taken < DB_MIN_TAKEN || c->taken > DB_MAX_TAKEN))
        return "capture time out of range";
    if (c->has_taken && c->has_offset &&
        (c->offset_minutes < -DB_MAX_OFFSET_MINUTES || c->offset_minutes > DB_MAX_OFFSET_MINUTES))
        return "capture time offset out of range";
    size_t cl = strnlen(c->camera, sizeof c->camera);
    if (cl > DB_MAX_CAMERA || !db_text_ok(c->camera, cl))
        return "camera name too long or not UTF-8";
    if (c->has_gps && !(c->lat >= -90 && c->lat <= 90 && c->lon >= -180 && c->lon <= 180))
        return "GPS position out of range";
    return NULL;
}

/* The capture fields of a version 2 record (after the tags). */
static const char *decode_capture(rbuf *b, db_capture *c)
{
    unsigned char flags = 0, cl = 0;
    rb_get(b, &flags, 1);
    if (!flags || (flags & ~(CAP_TAKEN | CAP_OFFSET | CAP_CAMERA | CAP_GPS)) ||
        ((flags & CAP_OFFSET) && !(flags & CAP_TAKEN)))
        return "capture flags invalid";
    if (flags & CAP_TAKEN) {
        c->has_taken = 1;
        c->taken = (int64_t)rb_u64(b);
    }
    if (flags & CAP_OFFSET) {
        int16_t off = 0;
        rb_get(b, &off, 2);
        c->has_offset = 1;
        c->offset_minutes = off;
    }
    if (flags & CAP_CAMERA) {
        rb_get(b, &cl, 1);
        if (!cl || cl > DB_MAX_CAMERA)
            return "camera name length out of range";
        rb_get(b, c->camera, cl);
        c->camera[cl] = 0;
        if (strlen(c->camera) != cl)
            return "camera name holds a NUL";
    }
    if (flags & CAP_GPS) {
        c->has_gps = 1;
        rb_get(b, &c->lat, 8);
        rb_get(b, &c->lon, 8);
    }
    if (b->bad)
        return "shorter than its lengths say";
    return capture_problem(c);
}

/* Decode an image record, checking everything db_put_images guarantees
 * (lengths within the record and the limits, UTF-8 text, no bytes left
 * over): a damaged record is UMG_EINTERNAL (db_damaged()), never garbage out. */
static int decode_image_rec(db_t *db, uint64_t id, const MDB_val *v, db_image *out)
{
    memset(out, 0, sizeof *out);
    rbuf b = { v->mv_data, v->mv_size, 0, 0 };
    out->id = id;
    const char *bad = NULL;
    uint32_t version = rb_u32(&b);
    rb_get(&b, out->sha256, 32);
    out->width = rb_u32(&b);
    out->height = rb_u32(&b);
    out->bytes = rb_u64(&b);
    out->mtime = (int64_t)rb_u64(&b);
    out->ingest_time = (int64_t)rb_u64(&b);
    uint32_t nr = rb_u32(&b);
    out->n_regions = (int)nr;
    out->path = rb_str(&b);
    uint32_t nt = rb_u32(&b);
    if (b.bad == 2)
        goto oom;
    if (version != IMG_REC_VERSION && version != IMG_REC_VERSION_CAPTURE)
        bad = "unknown record version";
    else if (b.bad)
        bad = "shorter than its lengths say";
    else if (nr > DB_MAX_REGIONS)
        bad = "region count out of range";
    else if (!*out->path || strlen(out->path) > DB_MAX_PATH || !db_text_ok(out->path, strlen(out->path)))
        bad = "path empty, too long or not UTF-8";
    else if (nt > DB_MAX_TAGS)
        bad = "tag count out of range";
    if (!bad && nt) {
        out->tags = calloc(nt, sizeof *out->tags);
        if (!out->tags)
            goto oom;
        for (uint32_t i = 0; i < nt && !bad; i++) {
            out->tags[i] = rb_str(&b);
            out->n_tags = (int)i + 1;
            if (b.bad == 2)
                goto oom;
            if (b.bad)
                bad = "shorter than its lengths say";
            else if (strlen(out->tags[i]) > DB_MAX_TAG || !db_text_ok(out->tags[i], strlen(out->tags[i])))
                bad = "tag too long or not UTF-8";
        }
    }
    if (!bad && version == IMG_REC_VERSION_CAPTURE)
        bad = decode_capture(&b, &out->capture);
    if (!bad && b.off != b.n)
        bad = "bytes after its last field";
    if (bad) {
        db_image_free(out);
        return db_damaged(db, "image %llu: %s", (unsigned long long)id, bad);
    }
    return 0;
oom:
    db_image_free(out);
    return umg_err_set(UMG_ENOMEM, "image record");
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

static int decode_region_rec(db_t *db, uint64_t id, const MDB_val *v, db_region *out)
{
    memset(out, 0, sizeof *out);
    const unsigned char *p = v->mv_data;
    if (v->mv_size < 30 || p[29] > DB_MAX_METHOD || v->mv_size != 30u + p[29])
        return db_damaged(db, "region %llu: %zu bytes, not a region record", (unsigned long long)id, v->mv_size);
    out->id = id;
    memcpy(&out->image_id, p, 8);
    memcpy(out->box, p + 8, 16);
    memcpy(&out->score, p + 24, 4);
    out->has_score = p[28];
    memcpy(out->method, p + 30, p[29]);
    out->method[p[29]] = '\0';
    int finite = !out->has_score || isfinite(out->score); /* db_put_images checks both */
    for (int i = 0; i < 4; i++)
        finite &= isfinite(out->box[i]) != 0;
    const char *bad = !out->image_id ? "no image id"
                      : p[28] > 1 ? "score flag out of range"
                      : !finite ? "box or score not finite"
                      : !db_text_ok(out->method, p[29]) ? "method not UTF-8" : NULL;
    if (bad) {
        memset(out, 0, sizeof *out);
        return db_damaged(db, "region %llu: %s", (unsigned long long)id, bad);
    }
    return 0;
}

/* ---- delete (inside a write transaction) ---- */

int db_idlist_push(idlist *l, uint64_t id)
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
int db_delete_in_txn(db_t *db, MDB_txn *txn, counters *c, uint64_t id, idlist *regs)
{
    unsigned char key[8];
    db_be64(key, id);
    MDB_val k = { 8, key }, v;
    int rc = mdb_get(txn, db->dbi[D_IMAGES], &k, &v);
    if (rc == MDB_NOTFOUND)
        return umg_err_set(UMG_ENOENT, "image %llu not found", (unsigned long long)id);
    if (rc)
        return rc;
    db_image img;
    rc = decode_image_rec(db, id, &v, &img);
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
    if ((rc = db_log_append(db, txn, c, LOG_DEL, DB_KIND_IMAGE, id)))
        return rc;

    /* regions */
    MDB_cursor *cur;
    if ((rc = mdb_cursor_open(txn, db->dbi[D_IMG_REGIONS], &cur)))
        return rc;
    MDB_val ck = { 8, key }, cv;
    rc = mdb_cursor_get(cur, &ck, &cv, MDB_SET_KEY);
    while (rc == 0) {
        uint64_t rid;
        if ((rc = db_id_value(db, &cv, "img_regions", &rid)) || (rc = db_idlist_push(regs, rid)))
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
        db_be64(rk, regs->v[i]);
        MDB_val rkv = { 8, rk };
        rc = mdb_del(txn, db->dbi[D_REGIONS], &rkv, NULL);
        if (!rc || rc == MDB_NOTFOUND)
            rc = mdb_del(txn, db->dbi[D_RVEC], &rkv, NULL);
        if (rc && rc != MDB_NOTFOUND)
            return rc;
        if ((rc = db_log_append(db, txn, c, LOG_DEL, DB_KIND_REGION, regs->v[i])))
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
        uint64_t old;
        if ((rc = db_id_value(db, &pv, "paths", &old)))
            return rc;
        if (!in->replace)
            return umg_err_set(UMG_EEXIST, "%s is already stored as image %llu", in->path,
                               (unsigned long long)old);
        if ((rc = db_delete_in_txn(db, txn, c, old, &p->old_regs)) || (rc = db_idlist_push(&p->old_images, old)))
            return rc;
    } else if (rc != MDB_NOTFOUND) {
        return rc;
    }

    uint64_t id = c->next_id++;
    *image_id = id;
    unsigned char key[8];
    db_be64(key, id);
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
        (rc = db_log_append(db, txn, c, LOG_ADD, DB_KIND_IMAGE, id)))
        return rc;
    for (int i = 0; i < in->n_regions; i++) {
        uint64_t rid = c->next_id++;
        rids[i] = rid;
        unsigned char rk[8], rec[30 + DB_MAX_METHOD];
        db_be64(rk, rid);
        MDB_val rkv = { 8, rk }, rv = { encode_region_rec(id, &in->regions[i], rec), rec };
        MDB_val rvec = { (size_t)db->dim * 2, (void *)(h + (size_t)db->dim * (1 + (size_t)i)) };
        MDB_val ridv = { 8, rk };
        if ((rc = mdb_put(txn, db->dbi[D_REGIONS], &rkv, &rv, MDB_APPEND)) ||
            (rc = mdb_put(txn, db->dbi[D_RVEC], &rkv, &rvec, MDB_APPEND)) ||
            (rc = mdb_put(txn, db->dbi[D_IMG_REGIONS], &k, &ridv, 0)) ||
            (rc = db_log_append(db, txn, c, LOG_ADD, DB_KIND_REGION, rid)))
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
    int rc = db_counters_load(db, txn, &c);
    const f16 *h = p->h;
    uint64_t *rids = p->rids;
    for (int i = 0; i < p->n && !rc; i++) {
        rc = put_one(db, txn, &c, p, &p->ins[i], h, &p->image_ids[i], rids);
        h += (size_t)db->dim * (1 + (size_t)p->ins[i].n_regions);
        rids += p->ins[i].n_regions;
    }
    if (!rc)
        rc = db_counters_store(db, txn, &c);
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
    if (!db_text_ok(in->path, strlen(in->path)))
        return umg_err_set(UMG_EUTF8, "image path is not UTF-8");
    if (in->n_regions < 0 || in->n_regions > DB_MAX_REGIONS || (in->n_regions && !in->regions))
        return umg_err_set(UMG_EINVAL, "%s: bad region count %d", in->path, in->n_regions);
    if (in->n_tags < 0 || in->n_tags > DB_MAX_TAGS || (in->n_tags && !in->tags))
        return umg_err_set(UMG_EINVAL, "%s: bad tag count %d", in->path, in->n_tags);
    for (int i = 0; i < in->n_tags; i++)
        if (!in->tags[i] || strlen(in->tags[i]) > DB_MAX_TAG)
            return umg_err_set(UMG_EINVAL, "%s: tag %d missing or too long", in->path, i);
        else if (!db_text_ok(in->tags[i], strlen(in->tags[i])))
            return umg_err_set(UMG_EUTF8, "%s: tag %d is not UTF-8", in->path, i);
    for (int i = 0; i < in->n_regions; i++) {
        const db_region_in *r = &in->regions[i];
        if (!r->vector)
            return umg_err_set(UMG_EINVAL, "%s: region %d has no vector", in->path, i);
        if (r->method && strlen(r->method) > DB_MAX_METHOD)
            return umg_err_set(UMG_EINVAL, "%s: region %d method longer than %d bytes", in->path, i,
                               DB_MAX_METHOD);
        if (r->method && !db_text_ok(r->method, strlen(r->method)))
            return umg_err_set(UMG_EUTF8, "%s: region %d method is not UTF-8", in->path, i);
        if (r->has_score && !isfinite(r->score))
            return umg_err_set(UMG_EINVAL, "%s: region %d score is not finite", in->path, i);
        for (int j = 0; j < 4; j++)
            if (!isfinite(r->box[j]))
                return umg_err_set(UMG_EINVAL, "%s: region %d box is not finite", in->path, i);
    }
    const char *cap = in->capture ? capture_problem(in->capture) : NULL;
    if (cap)
        return umg_err_set(UMG_EINVAL, "%s: %s", in->path, cap);
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
            rc = db_normalize_copy(j ? ins[i].regions[j - 1].vector : ins[i].vector, dim, norm + (size_t)dim * at);
            if (rc)
                rc = umg_err_set(rc, "%s: %s %d: %s", ins[i].path, j ? "region" : "image", j ? j - 1 : 0,
                                 umg_err_msg());
            /* FAISS gets exactly what LMDB stores (float16-rounded), so a
             * rebuilt index equals the incrementally grown one */
            db_to_f16(norm + (size_t)dim * at, dim, h + (size_t)dim * at);
            db_from_f16(h + (size_t)dim * at, dim,
                     j ? rvecs + (size_t)dim * ri++ : ivecs + (size_t)dim * i);
        }
    }
    if (rc)
        goto out;

    pthread_mutex_lock(&db->wmutex);
    rc = db_write_txn(db, put_fn, &p, ins[0].path);
    if (!rc) {
        db_index_apply(db, DB_KIND_IMAGE, p.old_images.v, p.old_images.n, ivecs, img_ids, (size_t)n);
        db_index_apply(db, DB_KIND_REGION, p.old_regs.v, p.old_regs.n, rvecs, rids, nreg);
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
    int rc = db_counters_load(db, txn, &c);
    if (!rc)
        rc = db_delete_in_txn(db, txn, &c, d->id, &d->regs);
    if (!rc)
        rc = db_counters_store(db, txn, &c);
    return rc;
}

int db_delete_image(db_t *db, uint64_t image_id)
{
    del_ctx d = { .id = image_id };
    char what[64];
    snprintf(what, sizeof what, "deleting image %llu", (unsigned long long)image_id);
    pthread_mutex_lock(&db->wmutex);
    int rc = db_write_txn(db, del_fn, &d, what);
    if (!rc) {
        db_index_apply(db, DB_KIND_IMAGE, &image_id, 1, NULL, NULL, 0);
        db_index_apply(db, DB_KIND_REGION, d.regs.v, d.regs.n, NULL, NULL, 0);
    }
    pthread_mutex_unlock(&db->wmutex);
    free(d.regs.v);
    return rc;
}

/* ---- reads ---- */

int db_get_by_id(db_t *db, MDB_txn *txn, int dbi, uint64_t id, MDB_val *v)
{
    unsigned char key[8];
    db_be64(key, id);
    MDB_val k = { 8, key };
    return mdb_get(txn, db->dbi[dbi], &k, v);
}

/* The image (kind DB_KIND_IMAGE, out a db_image) or region record id,
 * decoded into out, in a read transaction of its own. */
static int get_record(db_t *db, int kind, uint64_t id, void *out)
{
    MDB_txn *txn;
    int rc = db_rtxn_begin(db, &txn);
    if (rc)
        return rc;
    int region = kind == DB_KIND_REGION;
    MDB_val v;
    rc = db_get_by_id(db, txn, region ? D_REGIONS : D_IMAGES, id, &v);
    if (rc == MDB_NOTFOUND)
        rc = umg_err_set(UMG_ENOENT, "%s %llu not found", region ? "region" : "image", (unsigned long long)id);
    else if (!rc)
        rc = region ? decode_region_rec(db, id, &v, out) : decode_image_rec(db, id, &v, out);
    db_rtxn_end(db, txn);
    return db_translate(rc, region ? "reading a region" : "reading an image");
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
    int rc = db_rtxn_begin(db, &txn);
    if (rc)
        return rc;
    MDB_val k = { 32, ph }, v;
    rc = mdb_get(txn, db->dbi[D_PATHS], &k, &v);
    if (rc == MDB_NOTFOUND)
        rc = umg_err_set(UMG_ENOENT, "%s not found", path);
    else if (!rc)
        rc = db_id_value(db, &v, "paths", id);
    db_rtxn_end(db, txn);
    return db_translate(rc, "path lookup");
}

int db_find_hash(db_t *db, const uint8_t sha256[32], uint64_t *ids, int max, int *n)
{
    *n = 0;
    MDB_txn *txn;
    int rc = db_rtxn_begin(db, &txn);
    if (rc)
        return rc;
    MDB_cursor *cur;
    if (!(rc = mdb_cursor_open(txn, db->dbi[D_HASHES], &cur))) {
        MDB_val k = { 32, (void *)sha256 }, v;
        int cnt = 0;
        for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_KEY); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT_DUP)) {
            uint64_t id;
            if ((rc = db_id_value(db, &v, "hashes", &id)))
                break;
            if (cnt < max)
                ids[cnt] = id;
            cnt++;
        }
        mdb_cursor_close(cur);
        *n = cnt;
        rc = rc == MDB_NOTFOUND ? (cnt ? 0 : umg_err_set(UMG_ENOENT, "no image with this content hash")) : rc;
    }
    db_rtxn_end(db, txn);
    return db_translate(rc, "hash lookup");
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
    int rc = db_rtxn_begin(db, &txn);
    if (rc)
        return rc;
    MDB_cursor *cur;
    int cnt = 0;
    if (!(rc = mdb_cursor_open(txn, db->dbi[D_IMAGES], &cur))) {
        unsigned char key[8];
        db_be64(key, after + 1);
        MDB_val k = { 8, key }, v;
        for (rc = after == UINT64_MAX ? MDB_NOTFOUND : mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
             rc == 0 && cnt < max; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))
            ids[cnt++] = db_rd_be64(k.mv_data);
        mdb_cursor_close(cur);
        if (rc == MDB_NOTFOUND || cnt == max)
            rc = 0;
    }
    db_rtxn_end(db, txn);
    *n = cnt;
    return db_translate(rc, "listing images");
}

int db_scan_images(db_t *db, db_image_fn fn, void *ud)
{
    MDB_txn *txn;
    int rc = db_rtxn_begin(db, &txn);
    if (rc)
        return rc;
    MDB_cursor *cur;
    if (!(rc = mdb_cursor_open(txn, db->dbi[D_IMAGES], &cur))) {
        MDB_val k, v;
        for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            db_image img;
            int r = k.mv_size == 8 ? decode_image_rec(db, db_rd_be64(k.mv_data), &v, &img)
                                   : db_damaged(db, "images: key of %zu bytes", k.mv_size);
            if (r == UMG_EINTERNAL)
                continue; /* damaged: logged, left out as lookups leave it out */
            if (r) {
                rc = r;
                break;
            }
            r = fn(ud, &img);
            db_image_free(&img);
            if (r) {
                rc = r;
                break;
            }
        }
        mdb_cursor_close(cur);
        if (rc == MDB_NOTFOUND)
            rc = 0;
    }
    db_rtxn_end(db, txn);
    return rc > 0 ? rc : db_translate(rc, "scanning images");
}

int db_list_regions(db_t *db, uint64_t image_id, db_region **out, int *n)
{
    *out = NULL;
    *n = 0;
    MDB_txn *txn;
    int rc = db_rtxn_begin(db, &txn);
    if (rc)
        return rc;
    MDB_val v;
    db_region *list = NULL;
    int cnt = 0;
    rc = db_get_by_id(db, txn, D_IMAGES, image_id, &v);
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
    db_be64(key, image_id);
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
        uint64_t rid;
        MDB_val rv;
        rc = db_id_value(db, &v, "img_regions", &rid);
        if (!rc)
            rc = db_get_by_id(db, txn, D_REGIONS, rid, &rv);
        if (!rc)
            rc = decode_region_rec(db, rid, &rv, &list[cnt++]);
        if (!rc && (size_t)cnt < total)
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT_DUP);
    }
    mdb_cursor_close(cur);
    if (rc == MDB_NOTFOUND)
        rc = 0;
out:
    db_rtxn_end(db, txn);
    rc = db_translate(rc, "listing regions");
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
    int rc = db_rtxn_begin(db, &txn);
    if (rc)
        return rc;
    MDB_val v;
    rc = db_get_by_id(db, txn, kind ? D_RVEC : D_IVEC, id, &v);
    if (rc == MDB_NOTFOUND)
        rc = umg_err_set(UMG_ENOENT, "%s %llu has no vector", kind ? "region" : "image", (unsigned long long)id);
    else if (!rc && v.mv_size != (size_t)db->dim * 2)
        rc = db_damaged(db, "%s %llu: vector of %zu bytes", db_kind_name(kind), (unsigned long long)id, v.mv_size);
    else if (!rc)
        db_from_f16(v.mv_data, db->dim, out);
    db_rtxn_end(db, txn);
    return db_translate(rc, "reading a vector");
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
    int rc = db_get_by_id(db, txn, D_IMAGES, e->id, &v);
    if (rc == MDB_NOTFOUND)
        return umg_err_set(UMG_ENOENT, "image %llu not found", (unsigned long long)e->id);
    if (rc)
        return rc;
    size_t nl = strlen(e->name);
    unsigned char ek[8 + DB_MAX_EXTRA_NAME];
    db_be64(ek, e->id);
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
    int rc = db_write_txn(db, extra_fn, &e, name);
    pthread_mutex_unlock(&db->wmutex);
    return rc;
}

/* A malloc'd copy of image_id's extra `name` (1..DB_MAX_EXTRA_NAME bytes,
 * checked by the caller) as txn sees it; MDB_NOTFOUND when absent. */
static int copy_extra(db_t *db, MDB_txn *txn, uint64_t image_id, const char *name, void **data, size_t *len)
{
    size_t nl = strlen(name);
    unsigned char ek[8 + DB_MAX_EXTRA_NAME];
    db_be64(ek, image_id);
    memcpy(ek + 8, name, nl);
    MDB_val k = { 8 + nl, ek }, v;
    int rc = mdb_get(txn, db->dbi[D_EXTRA], &k, &v);
    if (rc)
        return rc;
    if (!(*data = malloc(v.mv_size ? v.mv_size : 1)))
        return umg_err_set(UMG_ENOMEM, "extra %s (%zu bytes)", name, v.mv_size);
    memcpy(*data, v.mv_data, v.mv_size);
    *len = v.mv_size;
    return 0;
}

int db_get_extra(db_t *db, uint64_t image_id, const char *name, void **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    if (!name || !*name || strlen(name) > DB_MAX_EXTRA_NAME)
        return umg_err_set(UMG_EINVAL, "extra name of 1..%d bytes required", DB_MAX_EXTRA_NAME);
    MDB_txn *txn;
    int rc = db_rtxn_begin(db, &txn);
    if (rc)
        return rc;
    rc = copy_extra(db, txn, image_id, name, data, len);
    if (rc == MDB_NOTFOUND)
        rc = umg_err_set(UMG_ENOENT, "image %llu has no %s", (unsigned long long)image_id, name);
    db_rtxn_end(db, txn);
    return db_translate(rc, name);
}

int db_get_thumb(db_t *db, uint64_t image_id, void **jpeg, size_t *len)
{
    *jpeg = NULL;
    *len = 0;
    MDB_txn *txn;
    int rc = db_rtxn_begin(db, &txn);
    if (rc)
        return rc;
    rc = copy_extra(db, txn, image_id, DB_THUMB_EXTRA, jpeg, len);
    if (rc == MDB_NOTFOUND) {
        /* which 404: no such image, or one stored before thumbnails were made */
        MDB_val v;
        rc = db_get_by_id(db, txn, D_IMAGES, image_id, &v);
        if (rc == MDB_NOTFOUND)
            rc = umg_err_set(UMG_ENOENT, "no image %llu", (unsigned long long)image_id);
        else if (!rc)
            rc = umg_err_set(UMG_ENOENT, "image %llu has no thumbnail: it was stored before thumbnails were "
                             "made at ingest (delete it and ingest it again to get one)",
                             (unsigned long long)image_id);
    } else if (!rc && (*len < 4 || memcmp(*jpeg, "\xff\xd8\xff", 3))) {
        rc = db_damaged(db, "image %llu: thumbnail of %zu bytes is not a JPEG", (unsigned long long)image_id, *len);
        free(*jpeg);
        *jpeg = NULL;
        *len = 0;
    }
    db_rtxn_end(db, txn);
    return db_translate(rc, "reading a thumbnail");
}

/* ---- folders that change: listing by path prefix, re-pathing ---- */

int db_list_path_prefix(db_t *db, const char *prefix, uint64_t after, int max, int max_scan, db_image *out,
                        int *n, uint64_t *next)
{
    *n = 0;
    *next = 0;
    if (!prefix || max < 1 || max_scan < 1 || !out)
        return umg_err_set(UMG_EINVAL, "db_list_path_prefix: bad arguments");
    size_t pl = strlen(prefix);
    MDB_txn *txn;
    int rc = db_rtxn_begin(db, &txn);
    if (rc)
        return rc;
    MDB_cursor *cur;
    int cnt = 0, scanned = 0;
    uint64_t last = 0;
    if (!(rc = mdb_cursor_open(txn, db->dbi[D_IMAGES], &cur))) {
        unsigned char key[8];
        db_be64(key, after + 1);
        MDB_val k = { 8, key }, v;
        for (rc = after == UINT64_MAX ? MDB_NOTFOUND : mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
             rc == 0 && cnt < max && scanned < max_scan; rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            uint64_t id = db_rd_be64(k.mv_data);
            last = id;
            scanned++;
            db_image img;
            int r = decode_image_rec(db, id, &v, &img);
            if (r == UMG_ENOMEM) {
                rc = r;
                break;
            }
            if (r)   /* a damaged record (logged by db_damaged): not listed, the walk goes on */
                continue;
            if (strncmp(img.path, prefix, pl)) {
                db_image_free(&img);
                continue;
            }
            out[cnt++] = img;
        }
        int more = rc == 0;   /* stopped by a limit with records left */
        mdb_cursor_close(cur);
        if (rc == MDB_NOTFOUND)
            rc = 0;
        if (!rc && more)
            *next = last;
    }
    db_rtxn_end(db, txn);
    if (rc) {
        for (int i = 0; i < cnt; i++)
            db_image_free(&out[i]);
        cnt = 0;
        *next = 0;
    }
    *n = cnt;
    return db_translate(rc, "listing images by path");
}

typedef struct move_ctx {
    uint64_t id;
    const char *path;
    int64_t mtime;
    uint64_t replaced;   /* the image that was at path, deleted */
    idlist regs;         /* its regions */
} move_ctx;

/* Every field of the record is carried over; only path (and mtime) change. */
static int move_fn(db_t *db, MDB_txn *txn, void *arg)
{
    move_ctx *m = arg;
    m->replaced = 0;
    m->regs.n = 0;
    MDB_val v;
    int rc = db_get_by_id(db, txn, D_IMAGES, m->id, &v);
    if (rc == MDB_NOTFOUND)
        return umg_err_set(UMG_ENOENT, "image %llu not found", (unsigned long long)m->id);
    if (rc)
        return rc;
    db_image img;
    if ((rc = decode_image_rec(db, m->id, &v, &img)))
        return rc;
    unsigned char oldk[32], newk[32], idk[8];
    SHA256((const unsigned char *)img.path, strlen(img.path), oldk);
    SHA256((const unsigned char *)m->path, strlen(m->path), newk);
    db_be64(idk, m->id);
    counters c;
    rc = db_counters_load(db, txn, &c);
    int same_path = !strcmp(img.path, m->path);
    if (!rc && !same_path) {
        MDB_val pk = { 32, newk }, pv;
        rc = mdb_get(txn, db->dbi[D_PATHS], &pk, &pv);
        uint64_t holder = 0;
        if (!rc && !(rc = db_id_value(db, &pv, "paths", &holder)) && holder != m->id) {
            rc = db_delete_in_txn(db, txn, &c, holder, &m->regs);
            m->replaced = holder;
        }
        if (rc == MDB_NOTFOUND)
            rc = 0;
        MDB_val ok = { 32, oldk };
        if (!rc) {
            rc = mdb_del(txn, db->dbi[D_PATHS], &ok, NULL);
            if (rc == MDB_NOTFOUND)
                rc = 0;
        }
        MDB_val idv = { 8, idk };
        if (!rc)
            rc = mdb_put(txn, db->dbi[D_PATHS], &pk, &idv, 0);
    }
    if (!rc) {
        db_image_in in = {.path = m->path, .width = img.width, .height = img.height, .bytes = img.bytes,
                          .mtime = m->mtime ? m->mtime : img.mtime, .tags = (const char *const *)img.tags,
                          .n_tags = img.n_tags, .n_regions = img.n_regions};
        memcpy(in.sha256, img.sha256, 32);
        wbuf b = {0};
        rc = encode_image_rec(&in, img.ingest_time, &b);
        MDB_val k = { 8, idk }, nv = { b.n, b.p };
        if (!rc)
            rc = mdb_put(txn, db->dbi[D_IMAGES], &k, &nv, 0);
        free(b.p);
    }
    db_image_free(&img);
    if (!rc)
        rc = db_counters_store(db, txn, &c);
    return rc;
}

int db_move_image(db_t *db, uint64_t image_id, const char *path, int64_t mtime, uint64_t *replaced)
{
    if (replaced)
        *replaced = 0;
    if (!path || !*path)
        return umg_err_set(UMG_EINVAL, "image path is required");
    if (strlen(path) >= DB_MAX_PATH)
        return umg_err_set(UMG_ETOOBIG, "image path longer than %d bytes", DB_MAX_PATH - 1);
    if (!db_text_ok(path, strlen(path)))
        return umg_err_set(UMG_EUTF8, "image path is not UTF-8");
    move_ctx m = { .id = image_id, .path = path, .mtime = mtime };
    char what[64];
    snprintf(what, sizeof what, "moving image %llu", (unsigned long long)image_id);
    pthread_mutex_lock(&db->wmutex);
    int rc = db_write_txn(db, move_fn, &m, what);
    if (!rc && m.replaced) {
        db_index_apply(db, DB_KIND_IMAGE, &m.replaced, 1, NULL, NULL, 0);
        db_index_apply(db, DB_KIND_REGION, m.regs.v, m.regs.n, NULL, NULL, 0);
    }
    pthread_mutex_unlock(&db->wmutex);
    free(m.regs.v);
    if (!rc && replaced)
        *replaced = m.replaced;
    return rc;
}
