/* server_ops.c - what each operation does: handlers registered in the
 * protocol's command table (called on the loop thread), their threadpool
 * work, and the encoder thread's batch (encode, pool regions, store). */
#include "server_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "umg_error.h"

#define PATCH_TOKENS_EXTRA "patch_tokens"
#define CAPTURE_EXTRA "capture"      /* EXIF capture metadata (enc_image_meta_serialize), issue 17 */
#define REGION_NMS_IOU 0.5f        /* region hits of one image overlapping more than this: keep the best */
#define MAX_FETCH 10000            /* most candidates one query takes from an index */
/* "refine": "pixel" (docs/regions.md, "Pixel-level refinement"; chosen on the
 * synthetic world's held-out seed 2000 with bench/regions/refine_experiments.py) */
#define REFINE_HEAT_FRAC 0.5       /* heat mask: 0 at the photo's min + this share of its heat range, 1 at its max */
#define REFINE_WEIGHT 0.5          /* soft IoU's weight, in units of the photo's region-cosine range */

/* ---- small helpers -------------------------------------------------------- */

static int pack_key(msgpack_packer *pk, const char *k) { return proto_pack_cstr(pk, k); }

static void pack_box(msgpack_packer *pk, const float b[4])
{
    msgpack_pack_array(pk, 4);
    for (int i = 0; i < 4; i++) {
        float v = b[i];
        /* whole pixels stay integers on the wire: easier to read and compare */
        if (v == floorf(v) && fabsf(v) < 1e9f) msgpack_pack_int64(pk, (int64_t)v);
        else msgpack_pack_float(pk, v);
    }
}

static void pack_strn(msgpack_packer *pk, const char *s, size_t n)
{
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

/* IEEE half <-> single, round to nearest even. */
static uint16_t f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000u;
    int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    uint32_t mant = x & 0x7fffffu;
    if (((x >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00u | (mant ? 0x200u : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7c00u);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        mant |= 0x800000u;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t h = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (h & 1))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = ((uint32_t)exp << 10) | (mant >> 13), rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ffu, x;
    if (exp == 0) {
        if (!mant) x = sign;
        else {
            exp = 127 - 15 + 1;
            while (!(mant & 0x400u)) {
                mant <<= 1;
                exp--;
            }
            x = sign | (exp << 23) | ((mant & 0x3ffu) << 13);
        }
    } else if (exp == 31) {
        x = sign | 0x7f800000u | (mant << 13);
    } else {
        x = sign | ((exp - 15 + 127) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &x, 4);
    return f;
}

void srv_job_error(srv_job *job, int code, const char *msg)
{
    if (code >= 0) code = UMG_EINTERNAL;
    if (!msg || !*msg) msg = umg_strerror(code);
    job->status = code;
    snprintf(job->errmsg, sizeof job->errmsg, "%s", msg);
    job->resp.size = 0;
    if (proto_response_error(&job->resp, job->id, code, msg)) job->resp.size = 0;
}

/* End a success response begun with proto_response_begin; keeps the status
 * in step when the builder had to replace it by an error. */
static void job_response_end(srv_job *job, proto_writer *w)
{
    int rc = proto_response_end(w, job->s->limits.max_frame);
    if (rc) {
        job->status = rc;
        snprintf(job->errmsg, sizeof job->errmsg, "%s", umg_err_msg());
    }
}

static void sha256(const void *data, size_t len, uint8_t out[32])
{
    unsigned int n = 32;
    EVP_Digest(data, len, out, &n, EVP_sha256(), NULL);
}

/* ---- run pool (query encodes) --------------------------------------------- */

static int pool_acquire(srv_run_pool *p)
{
    pthread_mutex_lock(&p->mu);
    for (;;) {
        for (int i = 0; i < p->n; i++)
            if (!p->busy[i]) {
                p->busy[i] = 1;
                pthread_mutex_unlock(&p->mu);
                return i;
            }
        pthread_cond_wait(&p->cv, &p->mu);
    }
}

static void pool_release(srv_run_pool *p, int i)
{
    pthread_mutex_lock(&p->mu);
    p->busy[i] = 0;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

/* ---- init ------------------------------------------------------------------ */

int srv_ops_init(srv *s)
{
    const enc_config *mc = enc_model_config(s->model);
    s->dim = enc_model_dim(s->model);
    s->grid = enc_model_grid(s->model);
    s->image_size = mc->image_size;
    s->patch_size = mc->patch_size;
    s->pad = *enc_model_preproc(s->model);
    s->pad.fit = ENC_FIT_PAD;
    /* enc_preprocess's ToTensor + Normalize, in the same float32 order, for
     * crops resized in stage 1 and normalized by the encoder thread */
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++) s->norm_lut[c][v] = ((float)v / 255.0f - s->pad.mean[c]) / s->pad.std[c];

    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 9);
    pack_key(&pk, "protocol"), msgpack_pack_uint32(&pk, PROTO_VERSION);
    pack_key(&pk, "server"), proto_pack_cstr(&pk, UMG_VERSION);
    pack_key(&pk, "model"), proto_pack_cstr(&pk, enc_model_name(s->model));
    pack_key(&pk, "dim"), msgpack_pack_int32(&pk, s->dim);
    pack_key(&pk, "grid"), msgpack_pack_int32(&pk, s->grid);
    pack_key(&pk, "region_mode"), proto_pack_cstr(&pk, srv_region_mode_name(s->region_mode));
    pack_key(&pk, "precision"), proto_pack_cstr(&pk, enc_precision_name(enc_model_precision(s->model)));
    pack_key(&pk, "kernels"), proto_pack_cstr(&pk, enc_model_kernels(s->model));
    pack_key(&pk, "auth_required"), (s->cfg.token || s->cfg.require_auth) ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk);
    s->hello_len = sb.size;
    s->hello_result = msgpack_sbuffer_release(&sb);
    if (!s->hello_result) return umg_err_set(UMG_ENOMEM, "out of memory");

    srv_run_pool *p = &s->runs;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    int n = s->cfg.threads;
    p->runs = calloc((size_t)n, sizeof *p->runs);
    p->patches = calloc((size_t)n, sizeof *p->patches);
    p->busy = calloc((size_t)n, sizeof *p->busy);
    if (!p->runs || !p->patches || !p->busy) return umg_err_set(UMG_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++) {
        int rc = enc_run_create(s->model, 1, &p->runs[i]);
        if (rc) return rc;
        p->n = i + 1;
        p->patches[i] = malloc((size_t)s->grid * s->grid * s->dim * sizeof(float));
        if (!p->patches[i]) return umg_err_set(UMG_ENOMEM, "out of memory");
    }
    srv_text_batcher *b = &s->text;
    pthread_mutex_init(&b->mu, NULL);
    pthread_condattr_t ca; /* the linger's deadline must not move with the wall clock */
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&b->linger_cv, &ca);
    pthread_condattr_destroy(&ca);
    b->inited = 1;
    int lanes = srv_text_lanes(&s->cfg);
    if (!(b->lanes = calloc((size_t)lanes, sizeof *b->lanes))) return umg_err_set(UMG_ENOMEM, "out of memory");
    /* one lane keeps today's single pass over every thread; several share the threads out */
    int per_lane = lanes > 1 ? (s->cfg.threads / lanes > 0 ? s->cfg.threads / lanes : 1) : 0;
    for (int i = 0; i < lanes; i++) {
        srv_text_lane *l = &b->lanes[i];
        int rc = enc_run_create(s->model, SRV_TEXT_BATCH, &l->run);
        if (rc) return rc;
        b->n_lanes = i + 1;
        if (!(l->embeds = malloc((size_t)SRV_TEXT_BATCH * s->dim * sizeof(float))))
            return umg_err_set(UMG_ENOMEM, "out of memory");
    }
    b->free_lanes = b->n_lanes;
    b->per_lane_threads = per_lane;
    const char *hold = getenv("UMG_TEST_TEXT_PASS_MS");
    if (hold && atoi(hold) > 0) {
        b->test_pass_ms = atoi(hold);
        srv_log(s, SRV_LOG_WARN, "UMG_TEST_TEXT_PASS_MS: every text pass lasts at least %d ms (a test hook)",
                b->test_pass_ms);
    }
    return 0;
}

void srv_ops_fini(srv *s)
{
    srv_run_pool *p = &s->runs;
    if (p->runs) {
        for (int i = 0; i < p->n; i++) {
            enc_run_close(p->runs[i]);
            free(p->patches[i]);
        }
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->cv);
    }
    free(p->runs);
    free(p->patches);
    free(p->busy);
    srv_text_batcher *b = &s->text;
    if (b->inited) {
        for (int i = 0; i < b->n_lanes; i++) {
            enc_run_close(b->lanes[i].run);
            free(b->lanes[i].embeds);
        }
        free(b->lanes);
        pthread_mutex_destroy(&b->mu);
        pthread_cond_destroy(&b->linger_cv);
        memset(b, 0, sizeof *b);
    }
    free(s->hello_result);
}

/* ---- hello / ping / stats (loop thread, no blocking work) ----------------- */

static void answer_hello(srv_job *job)
{
    proto_writer w;
    if (proto_response_begin(&w, &job->resp, job->id) == 0) {
        msgpack_sbuffer_write(&job->resp, job->s->hello_result, job->s->hello_len);
        job_response_end(job, &w);
    } else {
        srv_job_error(job, UMG_ENOMEM, "out of memory");
    }
}

/* Token check in constant time (over digests, so lengths leak nothing either). */
static int token_ok(const char *want, const char *got, size_t got_len)
{
    uint8_t a[32], b[32];
    sha256(want, strlen(want), a);
    sha256(got, got_len, b);
    return CRYPTO_memcmp(a, b, 32) == 0;
}

static int h_hello(void *ctx, proto_request *req)
{
    srv_job *job = ctx;
    srv_conn *c = job->conn;
    srv *s = job->s;
    if (s->cfg.token || s->cfg.require_auth) {
        const char *tok;
        size_t tl;
        if (!proto_obj_str(proto_req_arg(req, "token"), &tok, &tl) || !token_ok(s->cfg.token, tok, tl)) {
            /* a wrong token ends the connection: no guessing on one socket */
            c->close_after_writes = 1;
            uv_read_stop(&c->h.stream);
            c->reading = 0;
            return umg_err_set(UMG_EAUTH, "hello: missing or wrong token");
        }
        c->authed = 1;
    }
    answer_hello(job);
    return 1;
}

static int h_ping(void *ctx, proto_request *req)
{
    answer_hello(ctx);
    return 1;
}

static uint64_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long long size = 0, rss = 0;
    if (f) {
        if (fscanf(f, "%llu %llu", &size, &rss) != 2) rss = 0;
        fclose(f);
    }
    return rss * (uint64_t)sysconf(_SC_PAGESIZE);
}

static int h_stats(void *ctx, proto_request *req)
{
    srv_job *job = ctx;
    srv *s = job->s;
    db_stats st;
    int rc = db_stats_get(s->db, &st);
    if (rc) return rc;
    pthread_mutex_lock(&s->q_mu);
    int qlen = s->q_len;
    uint64_t ingested = s->ingested, batches = s->ingest_batches;
    pthread_mutex_unlock(&s->q_mu);
    proto_writer w;
    if (proto_response_begin(&w, &job->resp, job->id)) return UMG_ENOMEM;
    msgpack_packer *pk = &w.pk;
    msgpack_pack_map(pk, 18);
    pack_key(pk, "images"), msgpack_pack_uint64(pk, st.images);
    /* whether the indexes agree with LMDB (db_stats): a mismatch is shown, not hidden */
    pack_key(pk, "index_consistent"), st.consistent ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    pack_key(pk, "index_mismatch"), proto_pack_cstr(pk, st.mismatch);
    pack_key(pk, "regions"), msgpack_pack_uint64(pk, st.regions);
    pack_key(pk, "index");
    msgpack_pack_map(pk, 2);
    pack_key(pk, "image");
    msgpack_pack_map(pk, 2);
    pack_key(pk, "type"), proto_pack_cstr(pk, st.image_factory);
    pack_key(pk, "vectors"), msgpack_pack_uint64(pk, st.index_images);
    pack_key(pk, "region");
    msgpack_pack_map(pk, 2);
    pack_key(pk, "type"), proto_pack_cstr(pk, st.region_factory);
    pack_key(pk, "vectors"), msgpack_pack_uint64(pk, st.index_regions);
    pack_key(pk, "memory_bytes"), msgpack_pack_uint64(pk, rss_bytes());
    pack_key(pk, "db_map_bytes"), msgpack_pack_uint64(pk, st.map_size);
    pack_key(pk, "db_used_bytes"), msgpack_pack_uint64(pk, st.map_used);
    pack_key(pk, "uptime_s"), msgpack_pack_double(pk, (double)(srv_now_ns() - s->t_start_ns) / 1e9);
    pack_key(pk, "model"), proto_pack_cstr(pk, enc_model_name(s->model));
    pack_key(pk, "dim"), msgpack_pack_int32(pk, s->dim);
    pack_key(pk, "region_mode"), proto_pack_cstr(pk, srv_region_mode_name(s->region_mode));
    pack_key(pk, "precision"), proto_pack_cstr(pk, enc_precision_name(enc_model_precision(s->model)));
    pack_key(pk, "kernels"), proto_pack_cstr(pk, enc_model_kernels(s->model));
    uint64_t unsent = 0;
    int paused = 0;
    for (const srv_conn *c = s->conns; c; c = c->next) {
        unsent += c->unsent;
        paused += !c->reading && !c->eof && !c->close_after_writes;
    }
    pack_key(pk, "queues");
    msgpack_pack_map(pk, 5);
    pack_key(pk, "encoder"), msgpack_pack_int32(pk, qlen);
    pack_key(pk, "in_flight"), msgpack_pack_int32(pk, s->jobs_inflight - 1); /* not counting this one */
    pack_key(pk, "connections"), msgpack_pack_int32(pk, s->n_conns);
    pack_key(pk, "paused_connections"), msgpack_pack_int32(pk, paused);   /* backpressure */
    pack_key(pk, "unsent_bytes"), msgpack_pack_uint64(pk, unsent);
    pack_key(pk, "ingest");
    msgpack_pack_map(pk, 2);
    pack_key(pk, "images"), msgpack_pack_uint64(pk, ingested);
    pack_key(pk, "batches"), msgpack_pack_uint64(pk, batches);
    srv_text_batcher *tb = &s->text;
    uint64_t lane_counts[SRV_MAX_TEXT_LANES][2];
    pthread_mutex_lock(&tb->mu);
    uint64_t text_batches = tb->batches, texts = tb->texts;
    for (int i = 0; i < tb->n_lanes; i++) lane_counts[i][0] = tb->lanes[i].texts, lane_counts[i][1] = tb->lanes[i].batches;
    pthread_mutex_unlock(&tb->mu);
    pack_key(pk, "text_queries"); /* text-tower passes, and the texts they encoded */
    msgpack_pack_map(pk, 3);
    pack_key(pk, "texts"), msgpack_pack_uint64(pk, texts);
    pack_key(pk, "batches"), msgpack_pack_uint64(pk, text_batches);
    pack_key(pk, "lanes"); /* the same per lane */
    msgpack_pack_array(pk, (size_t)tb->n_lanes);
    for (int i = 0; i < tb->n_lanes; i++) {
        msgpack_pack_map(pk, 2);
        pack_key(pk, "texts"), msgpack_pack_uint64(pk, lane_counts[i][0]);
        pack_key(pk, "batches"), msgpack_pack_uint64(pk, lane_counts[i][1]);
    }
    pthread_mutex_lock(&s->ck_mu);
    uint64_t ck_done = s->ck_done, ck_builds = s->ck_builds;
    int ck_busy = s->ck_busy;
    pthread_mutex_unlock(&s->ck_mu);
    pack_key(pk, "checkpoints"); /* background ones (the checkpoint thread) */
    msgpack_pack_map(pk, 3);
    pack_key(pk, "done"), msgpack_pack_uint64(pk, ck_done);
    pack_key(pk, "index_builds"), msgpack_pack_uint64(pk, ck_builds);
    pack_key(pk, "running"), ck_busy ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    job_response_end(job, &w);
    return 1;
}

/* ---- region crops (region mode crop) ------------------------------------ */

/* A region's crop, resized as ENC_FIT_PAD resizes it, kept in 8 bits until the
 * encoder thread normalizes it: a quarter of the float input's size, so that
 * queued ingests hold at most R * S * S * 3 bytes of crops each. */
typedef struct srv_crop {
    uint8_t *rgb;                 /* w * h * 3 */
    int w, h;                     /* size after resizing (the longer side is S) */
    int off_x, off_y;             /* its top-left corner in the S x S input */
} srv_crop;

/* Crop box (original pixels, any floats) out of img, rounded outward to whole
 * pixels and clipped to the image; *cropped gets that integer box (what is
 * stored and answered).  The crop is then resized exactly as enc_preprocess
 * resizes a photo with ENC_FIT_PAD: longer side to S, aspect kept.
 * UMG_EINVAL (no message) when nothing of the box is inside the image. */
static int crop_make(const srv *s, const enc_image *img, const float box[4], float cropped[4], srv_crop *out)
{
    memset(out, 0, sizeof *out);
    for (int i = 0; i < 4; i++)
        if (!isfinite(box[i])) return UMG_EINVAL;
    /* the tolerance keeps float noise of a whole-pixel edge from adding a pixel */
    double x0 = floor((double)box[0] + 1e-3), y0 = floor((double)box[1] + 1e-3);
    double x1 = ceil((double)box[0] + box[2] - 1e-3), y1 = ceil((double)box[1] + box[3] - 1e-3);
    if (x0 < 0) x0 = 0;
    if (y0 < 0) y0 = 0;
    if (x1 > img->width) x1 = img->width;
    if (y1 > img->height) y1 = img->height;
    if (!(x1 > x0 && y1 > y0)) return UMG_EINVAL;
    enc_image c = {0}, r = {0};
    int rc = enc_image_crop(img, (int)x0, (int)y0, (int)(x1 - x0), (int)(y1 - y0), &c);
    if (rc) return rc;
    enc_preproc_geom g;
    enc_preproc_geometry(&s->pad, c.width, c.height, &g);
    rc = enc_image_resize(&c, g.resized_w, g.resized_h, &r);
    enc_image_free(&c);
    if (rc) return rc;
    out->rgb = r.rgb;
    out->w = r.width;
    out->h = r.height;
    out->off_x = g.off_x;
    out->off_y = g.off_y;
    cropped[0] = (float)x0;
    cropped[1] = (float)y0;
    cropped[2] = (float)(x1 - x0);
    cropped[3] = (float)(y1 - y0);
    return 0;
}

/* The network input [3, S, S] of a crop: the padding is the mean colour (0
 * after normalization), as ENC_FIT_PAD pads. */
static void crop_pixels(const srv *s, const srv_crop *c, float *out)
{
    const size_t S = (size_t)s->image_size;
    for (int ch = 0; ch < 3; ch++) {
        float *plane = out + (size_t)ch * S * S;
        memset(plane, 0, S * S * sizeof(float));
        for (int y = 0; y < c->h; y++) {
            float *row = plane + (size_t)(y + c->off_y) * S + (size_t)c->off_x;
            const uint8_t *src = c->rgb + (size_t)y * c->w * 3 + ch;
            for (int x = 0; x < c->w; x++) row[x] = s->norm_lut[ch][src[3 * x]];
        }
    }
}

/* ---- ingest, stage 1 (threadpool) ----------------------------------------- */

struct srv_ingest {
    char *path;               /* stored path (NUL-terminated copy) */
    uint8_t *owned;           /* file bytes read for a path ingest */
    uint8_t sha[32];
    uint64_t bytes;
    int64_t mtime;
    int width, height;
    float *pixels;            /* [3, S, S], ENC_FIT_PAD */
    enc_preproc_geom geom;
    enc_box *boxes;
    int n_boxes;
    srv_crop *crops;          /* region mode crop: one per box, same order */
    int n_crops;
    const char **tags;
    int n_tags;
    const uint8_t *data;      /* the encoded photo: owned, or inside the request (lives with the job) */
    size_t len;
    char capture[256];        /* CAPTURE_EXTRA's bytes, capture_len of them (0: nothing known) */
    size_t capture_len;
    /* filled by the encoder */
    uint64_t image_id;
    int n_regions;
    int replace;
    int done;
};

void srv_ingest_free(srv_ingest *ing)
{
    if (!ing) return;
    free(ing->path);
    free(ing->owned);
    free(ing->pixels);
    free(ing->boxes);
    for (int i = 0; i < ing->n_crops; i++) free(ing->crops[i].rgb);
    free(ing->crops);
    if (ing->tags)
        for (int i = 0; i < ing->n_tags; i++) free((char *)ing->tags[i]);
    free(ing->tags);
    free(ing);
}

static void answer_ingest(srv_job *job, uint64_t image_id, int regions, int duplicate, int replaced)
{
    proto_writer w;
    if (proto_response_begin(&w, &job->resp, job->id)) {
        srv_job_error(job, UMG_ENOMEM, "out of memory");
        return;
    }
    msgpack_pack_map(&w.pk, 3 + (replaced != 0));
    pack_key(&w.pk, "image_id"), msgpack_pack_uint64(&w.pk, image_id);
    pack_key(&w.pk, "regions"), msgpack_pack_int32(&w.pk, regions);
    pack_key(&w.pk, "duplicate"), duplicate ? msgpack_pack_true(&w.pk) : msgpack_pack_false(&w.pk);
    if (replaced) pack_key(&w.pk, "replaced"), msgpack_pack_true(&w.pk);
    job_response_end(job, &w);
}

/* ---- ingest by path ------------------------------------------------------ */

int srv_path_normalize(const char *path, char *out, size_t size)
{
    if (path[0] != '/') return umg_err_set(UMG_EINVAL, "path must be absolute");
    size_t n = 0;
    const char *p = path;
    while (*p) {
        while (*p == '/') p++;
        const char *e = p;
        while (*e && *e != '/') e++;
        size_t len = (size_t)(e - p);
        if (len == 0 || (len == 1 && p[0] == '.')) {
            /* nothing: an empty or "." component */
        } else if (len == 2 && p[0] == '.' && p[1] == '.') {
            while (n > 0 && out[n - 1] != '/') n--; /* drop the last component ("/.." stays "/") */
            if (n > 0) n--;
        } else {
            if (n + 1 + len + 1 > size) return umg_err_set(UMG_ETOOBIG, "path too long");
            out[n++] = '/';
            memcpy(out + n, p, len);
            n += len;
        }
        p = e;
    }
    if (n == 0) out[n++] = '/';
    out[n] = 0;
    return 0;
}

/* The part of the normalized path p below root (itself normalized), or NULL
 * if p is not root or below it. */
static const char *below(const char *root, const char *p)
{
    size_t n = strlen(root);
    if (n == 1) return p + 1; /* root "/" */
    if (strncmp(p, root, n) || (p[n] != '/' && p[n] != 0)) return NULL;
    return p[n] == '/' ? p + n + 1 : p + n;
}

/* openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS: the kernel resolves
 * rel under dirfd, refusing ".." out of it and every symlink, in one step, so
 * that nothing renamed or swapped meanwhile can lead it elsewhere.  -1 with
 * errno ENOSYS where the kernel (< 5.6) or a seccomp filter lacks it. */
static int openat2_beneath(int dirfd, const char *rel, int flags)
{
#ifdef SYS_openat2
    struct open_how how = {.flags = (uint64_t)flags,
                           .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS};
    return (int)syscall(SYS_openat2, dirfd, rel, &how, sizeof how);
#else
    errno = ENOSYS;
    return -1;
#endif
}

/* Without openat2: one component at a time, each directory opened with
 * O_NOFOLLOW | O_DIRECTORY relative to the previous one, so a symlink at any
 * level fails instead of being followed (ENOTDIR for a directory component,
 * as for a file there; ELOOP for the last one).  rel is normalized: no ".",
 * "..", or empty components. */
static int openat_walk(int rootfd, const char *rel, int flags)
{
    int dirfd = rootfd;
    const char *p = rel;
    for (;;) {
        const char *slash = strchr(p, '/');
        if (!slash) break;
        char comp[NAME_MAX + 1];
        size_t len = (size_t)(slash - p);
        if (len > NAME_MAX) {
            if (dirfd != rootfd) close(dirfd);
            errno = ENAMETOOLONG;
            return -1;
        }
        memcpy(comp, p, len);
        comp[len] = 0;
        int next = openat(dirfd, comp, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        int e = errno;
        if (dirfd != rootfd) close(dirfd);
        if (next < 0) {
            errno = e;
            return -1;
        }
        dirfd = next;
        p = slash + 1;
    }
    int fd = openat(dirfd, p, flags | O_NOFOLLOW);
    int e = errno;
    if (dirfd != rootfd) close(dirfd);
    errno = e;
    return fd;
}

/* Read an allowed file.  The path is normalized lexically (".", "..", "//")
 * and must then lie inside a root as given or as resolved at start: anything
 * else is forbidden before the filesystem is touched, so the answer says
 * nothing about what exists outside.  The file is then opened beneath the
 * root's descriptor without following any symlink (openat2, or a walk of
 * openat calls), so swapping a directory for a symlink during the ingest
 * cannot lead out of the root.  *norm gets the normalized path (malloc'd). */
static int read_allowed(srv *s, const char *path, char **norm_out, uint8_t **data, size_t *len, int64_t *mtime)
{
    if (!s->n_roots)
        return umg_err_set(UMG_EPERM, "ingest by path is off on this server (start it with --allow-root DIR); send the bytes instead");
    if (path[0] != '/') return umg_err_set(UMG_EINVAL, "ingest: path must be absolute");
    size_t cap = strlen(path) + 2;
    char *norm = malloc(cap);
    if (!norm) return umg_err_set(UMG_ENOMEM, "out of memory");
    int rc = srv_path_normalize(path, norm, cap);
    const char *rel = NULL;
    int root = -1;
    for (int i = 0; !rc && i < s->n_roots && !rel; i++) {
        if ((rel = below(s->roots_abs[i], norm)) || (rel = below(s->roots[i], norm))) root = i;
    }
    if (!rc && !rel) rc = umg_err_set(UMG_EPERM, "ingest: %s is outside the allowed roots", path);
    if (!rc && !*rel) rc = umg_err_set(UMG_EPERM, "ingest: %s is not a regular file", path);
    if (rc) {
        free(norm);
        return rc;
    }
    const int flags = O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY;
    int fd = s->no_openat2 ? -1 : openat2_beneath(s->root_fds[root], rel, flags);
    if (fd < 0 && (s->no_openat2 || errno == ENOSYS)) fd = openat_walk(s->root_fds[root], rel, flags);
    if (fd < 0) {
        int e = errno;
        free(norm);
        /* ENOTDIR: a file, or a symlink (the walk cannot tell), where a directory should be */
        if (e == ELOOP || e == EXDEV || e == ENOTDIR)
            return umg_err_set(UMG_EPERM, "ingest: %s: a symlink or a non-directory in the path (symlinks are not "
                                          "followed under --allow-root)", path);
        return umg_err_set(umg_err_from_errno(e), "ingest: %s: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        free(norm);
        return umg_err_set(UMG_EPERM, "ingest: %s is not a regular file", path);
    }
    if ((uint64_t)st.st_size > s->limits.max_frame) {
        close(fd);
        free(norm);
        return umg_err_set(UMG_ETOOBIG, "ingest: %s is %lld bytes, over the %u-byte limit", path,
                           (long long)st.st_size, s->limits.max_frame);
    }
    uint8_t *buf = malloc(st.st_size ? (size_t)st.st_size : 1);
    if (!buf) {
        close(fd);
        free(norm);
        return umg_err_set(UMG_ENOMEM, "out of memory");
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    *norm_out = norm;
    *data = buf;
    *len = got;
    *mtime = (int64_t)st.st_mtime;
    return 0;
}

static int ingest_prepare(srv_job *job)
{
    srv *s = job->s;
    srv_ingest *ing = job->ing;
    proto_request *req = job->req;
    const char *str;
    size_t sl;
    const uint8_t *data = NULL;
    size_t len = 0;
    int rc;
    if (proto_obj_str(proto_req_arg(req, "path"), &str, &sl)) {
        if (!(ing->path = strndup(str, sl))) return umg_err_set(UMG_ENOMEM, "out of memory");
        if (strlen(ing->path) != sl) return umg_err_set(UMG_EINVAL, "ingest: path contains a NUL byte");
        char *norm = NULL;
        if ((rc = read_allowed(s, ing->path, &norm, &ing->owned, &len, &ing->mtime))) return rc;
        free(ing->path);
        ing->path = norm; /* stored as normalized: "a/./b" and "a/b" are one photo */
        data = ing->owned;
    } else {
        proto_obj_str(proto_req_arg(req, "name"), &str, &sl);
        if (!(ing->path = strndup(str, sl))) return umg_err_set(UMG_ENOMEM, "out of memory");
        if (strlen(ing->path) != sl) return umg_err_set(UMG_EINVAL, "ingest: name contains a NUL byte");
        proto_obj_bin(proto_req_arg(req, "data"), &data, &len);
        ing->mtime = 0;   /* 0: the ingest time is recorded */
        proto_obj_int(proto_req_arg(req, "mtime"), &ing->mtime);   /* the client's file time, validated >= 1 */
    }
    ing->bytes = len;
    ing->data = data;
    ing->len = len;
    sha256(data, len, ing->sha);

    /* unchanged content at the same path: nothing to do */
    uint64_t id;
    if (db_find_path(s->db, ing->path, &id) == 0) {
        db_image old;
        if (db_get_image(s->db, id, &old) == 0) {
            int same = !memcmp(old.sha256, ing->sha, 32);
            int nreg = old.n_regions;
            db_image_free(&old);
            if (same) {
                answer_ingest(job, id, nreg, 1, 0);
                ing->done = 1;
                return 0;
            }
        }
    }

    /* tags: copies, so that the batch owns plain C strings */
    const msgpack_object *t = proto_req_arg(req, "tags");
    if (t && t->via.array.size) {
        ing->tags = calloc(t->via.array.size, sizeof *ing->tags);
        if (!ing->tags) return umg_err_set(UMG_ENOMEM, "out of memory");
        for (uint32_t i = 0; i < t->via.array.size; i++) {
            const msgpack_object *e = &t->via.array.ptr[i];
            char *tag = strndup(e->via.str.ptr, e->via.str.size);
            if (!tag) return umg_err_set(UMG_ENOMEM, "out of memory");
            ing->tags[ing->n_tags++] = tag;
        }
    }
    return 0;
}

/* Stage 1b (a stage-1 worker): decode, preprocess, propose, crop.  The CPU
 * of stage 1: it runs on --threads workers, not on the libuv pool, so that
 * it never oversubscribes the cores the encoder's BLAS threads run on (and
 * leaves the pool to queries while a collection is ingested). */
static int ingest_pixels(srv_job *job)
{
    srv *s = job->s;
    srv_ingest *ing = job->ing;
    int rc;
    enc_image img = {0};
    enc_image_meta meta;
    if ((rc = enc_image_decode_ex(ing->data, ing->len, NULL, &img, &meta))) {
        /* a file read by path is one the client may not be able to read:
         * none of its bytes go back (the decoder quotes leading bytes) */
        if (proto_req_arg(job->req, "path"))
            return umg_err_set(rc, "ingest: %s: %s", ing->path,
                               rc == UMG_EUNSUPPORTED ? "not a supported image" : "not a decodable image");
        return rc;
    }
    ing->capture_len = enc_image_meta_serialize(&meta, ing->capture, sizeof ing->capture);
    free(ing->owned); /* the pixels are all we need now */
    ing->owned = NULL;
    ing->data = NULL;
    ing->width = img.width;
    ing->height = img.height;
    size_t S = (size_t)s->image_size;
    ing->pixels = malloc(3 * S * S * sizeof(float));
    if (!ing->pixels) rc = umg_err_set(UMG_ENOMEM, "out of memory");
    if (!rc) rc = enc_preprocess(&img, &s->pad, ing->pixels);
    if (!rc) enc_preproc_geometry(&s->pad, img.width, img.height, &ing->geom);
    if (!rc && s->cfg.regions > 0) {
        ing->boxes = malloc((size_t)s->cfg.regions * sizeof *ing->boxes);
        enc_propose_opts po;
        enc_propose_opts_default(&po);
        po.max_boxes = s->cfg.regions;
        if (!ing->boxes) rc = umg_err_set(UMG_ENOMEM, "out of memory");
        else rc = enc_propose(&img, &po, ing->boxes, s->cfg.regions, &ing->n_boxes);
    }
    if (!rc && s->region_mode == SRV_REGION_MODE_CROP && ing->n_boxes > 0) {
        /* crops are cut here, from the decoded photo, on a stage-1 worker; the
         * encoder thread only normalizes and encodes them */
        if (!(ing->crops = calloc((size_t)ing->n_boxes, sizeof *ing->crops)))
            rc = umg_err_set(UMG_ENOMEM, "out of memory");
        int kept = 0;
        for (int b = 0; !rc && b < ing->n_boxes; b++) {
            enc_box *bx = &ing->boxes[b];
            float in[4] = {bx->x, bx->y, bx->w, bx->h}, cut[4];
            int r = crop_make(s, &img, in, cut, &ing->crops[kept]);
            if (r == UMG_EINVAL) continue; /* nothing left after rounding and clipping */
            if (r) {
                rc = r;
                break;
            }
            ing->boxes[kept] = *bx;
            ing->boxes[kept].x = cut[0], ing->boxes[kept].y = cut[1];
            ing->boxes[kept].w = cut[2], ing->boxes[kept].h = cut[3];
            ing->n_crops = ++kept;
        }
        ing->n_boxes = kept;
    }
    enc_image_free(&img);
    return rc;
}

void srv_stage1_run(srv_job *job)
{
    umg_err_clear();
    int rc = ingest_pixels(job);
    if (rc) {
        srv_job_error(job, rc, umg_err_msg());
        srv_stage1_end(job->s);
        srv_job_done_async(job->s, job); /* handed off: answered like the encoder answers */
        return;
    }
    srv_encoder_push(job->s, job); /* ends stage 1 too */
}

static void ingest_work(uv_work_t *w)
{
    srv_job *job = w->data;
    umg_err_clear();
    int rc = ingest_prepare(job);
    if (rc || job->ing->done) {
        if (rc) srv_job_error(job, rc, umg_err_msg());
        srv_stage1_end(job->s);
        return;
    }
    job->handed_off = 1;
    srv_stage1_push(job->s, job);
}

static int h_ingest(void *ctx, proto_request *req)
{
    srv_job *job = ctx;
    job->ing = calloc(1, sizeof *job->ing);
    if (!job->ing) return umg_err_set(UMG_ENOMEM, "out of memory");
    srv_stage1_begin(job->s);
    int rc = uv_queue_work(job->s->loop, &job->work, ingest_work, srv_after_work);
    if (rc) srv_stage1_end(job->s);
    return rc ? umg_err_set(UMG_EINTERNAL, "uv_queue_work: %s", uv_strerror(rc)) : 0;
}

/* ---- ingest, stage 2 (the encoder thread) --------------------------------- */

typedef struct scratch_layout {
    size_t pixels, embeds, patches, regvecs, cropvecs, f16, ins, rins, extras, ids, rids, total;
} scratch_layout;

static scratch_layout layout(const srv *s)
{
    size_t B = (size_t)s->cfg.batch, S = (size_t)s->image_size, D = (size_t)s->dim, GG = (size_t)s->grid * s->grid;
    size_t R = s->cfg.regions > 0 ? (size_t)s->cfg.regions : 1;
    scratch_layout l;
    size_t o = 0;
#define PLACE(field, bytes) (l.field = o, o += ((bytes) + 63) & ~(size_t)63)
    PLACE(pixels, B * 3 * S * S * sizeof(float));
    PLACE(embeds, B * D * sizeof(float));
    PLACE(patches, B * GG * D * sizeof(float));
    PLACE(regvecs, B * R * D * sizeof(float));
    PLACE(cropvecs, B * D * sizeof(float));
    PLACE(f16, B * GG * D * sizeof(uint16_t));
    PLACE(ins, B * sizeof(db_image_in));
    PLACE(rins, B * R * sizeof(db_region_in));
    PLACE(extras, 2 * B * sizeof(db_extra_in)); /* patch tokens, capture metadata */
    PLACE(ids, B * sizeof(uint64_t));
    PLACE(rids, B * R * sizeof(uint64_t));
#undef PLACE
    l.total = o;
    return l;
}

size_t srv_encode_scratch_size(const srv *s) { return layout(s).total; }

/* Region mode crop: every crop of the batch through the whole vision tower,
 * cfg.batch crops per forward pass (crops of several images share a pass);
 * crop b of image i lands in regvecs[(i * R + b) * D].  Each crop's 8-bit
 * pixels are freed once normalized into the pass's input. */
static int encode_crops(srv *s, enc_run *run, srv_job **jobs, int n, float *pixels, float *tmp, float *regvecs,
                        size_t R)
{
    const size_t S3 = 3 * (size_t)s->image_size * s->image_size, D = (size_t)s->dim;
    const int B = s->cfg.batch;
    float *dst[B];
    int m = 0;
    for (int i = 0; i < n; i++) {
        srv_ingest *ing = jobs[i]->ing;
        for (int b = 0; b < ing->n_crops; b++) {
            crop_pixels(s, &ing->crops[b], pixels + (size_t)m * S3);
            free(ing->crops[b].rgb);
            ing->crops[b].rgb = NULL;
            dst[m++] = regvecs + ((size_t)i * R + (size_t)b) * D;
            int last = i == n - 1 && b == ing->n_crops - 1;
            if (m < B && !last) continue;
            int rc = enc_encode_pixels(run, pixels, m, tmp, NULL);
            if (rc) return rc;
            for (int k = 0; k < m; k++) memcpy(dst[k], tmp + (size_t)k * D, D * sizeof(float));
            m = 0;
        }
    }
    if (m) { /* the last image had no crops */
        int rc = enc_encode_pixels(run, pixels, m, tmp, NULL);
        if (rc) return rc;
        for (int k = 0; k < m; k++) memcpy(dst[k], tmp + (size_t)k * D, D * sizeof(float));
    }
    return 0;
}

void srv_encode_batch(srv *s, enc_run *run, srv_job **jobs, int n, void *scratch)
{
    if (n <= 0 || n > s->cfg.batch) return;
    scratch_layout l = layout(s);
    char *base = scratch;
    float *pixels = (float *)(base + l.pixels), *embeds = (float *)(base + l.embeds);
    float *patches = (float *)(base + l.patches), *regvecs = (float *)(base + l.regvecs);
    float *cropvecs = (float *)(base + l.cropvecs);
    uint16_t *f16 = (uint16_t *)(base + l.f16);
    db_image_in *ins = (db_image_in *)(base + l.ins);
    db_region_in *rins = (db_region_in *)(base + l.rins);
    db_extra_in *extras = (db_extra_in *)(base + l.extras);
    uint64_t *ids = (uint64_t *)(base + l.ids), *rids = (uint64_t *)(base + l.rids);
    size_t S3 = 3 * (size_t)s->image_size * s->image_size, D = (size_t)s->dim, GG = (size_t)s->grid * s->grid;
    size_t R = s->cfg.regions > 0 ? (size_t)s->cfg.regions : 1;
    int crop_mode = s->region_mode == SRV_REGION_MODE_CROP;
    int want_patches = (!crop_mode && s->cfg.regions > 0) || !s->cfg.no_patches;

    for (int i = 0; i < n; i++) memcpy(pixels + i * S3, jobs[i]->ing->pixels, S3 * sizeof(float));
    int rc = enc_encode_pixels(run, pixels, n, embeds, want_patches ? patches : NULL);
    if (!rc && crop_mode) rc = encode_crops(s, run, jobs, n, pixels, cropvecs, regvecs, R);
    if (rc) {
        char msg[300];
        snprintf(msg, sizeof msg, "encoding failed: %s", umg_err_msg());
        for (int i = 0; i < n; i++) srv_job_error(jobs[i], rc, msg);
        return;
    }

    /* regions and patch tokens, per image */
    for (int i = 0; i < n; i++) {
        srv_ingest *ing = jobs[i]->ing;
        const float *pt = patches + (size_t)i * GG * D;
        int nr = 0;
        for (int b = 0; b < ing->n_boxes; b++) {
            const enc_box *bx = &ing->boxes[b];
            float box[4] = {bx->x, bx->y, bx->w, bx->h};
            float *v = regvecs + ((size_t)i * R + (size_t)nr) * D;
            if (crop_mode) enc_l2_normalize(v, s->dim); /* crop b's embedding, b == nr: no box is skipped */
            else if (enc_region_pool(pt, s->grid, s->dim, s->patch_size, &ing->geom, box, v)) continue; /* off the grid */
            db_region_in *r = &rins[(size_t)i * R + (size_t)nr];
            memset(r, 0, sizeof *r);
            memcpy(r->box, box, sizeof box);
            r->method = enc_box_method_name(bx->method);
            r->score = bx->score;
            r->has_score = 1;
            r->vector = v;
            nr++;
        }
        db_image_in *in = &ins[i];
        memset(in, 0, sizeof *in);
        in->path = ing->path;
        memcpy(in->sha256, ing->sha, 32);
        in->width = (uint32_t)ing->width;
        in->height = (uint32_t)ing->height;
        in->bytes = ing->bytes;
        in->mtime = ing->mtime ? ing->mtime : (int64_t)time(NULL);
        in->tags = (const char *const *)ing->tags;
        in->n_tags = ing->n_tags;
        in->vector = embeds + (size_t)i * D;
        in->regions = &rins[(size_t)i * R];
        in->n_regions = nr;
        if (!s->cfg.no_patches) {
            /* each token L2-normalized, then float16: heatmaps are cosines */
            uint16_t *h = f16 + (size_t)i * GG * D;
            for (size_t c = 0; c < GG; c++) {
                const float *t = pt + c * D;
                double ss = 0;
                for (size_t d = 0; d < D; d++) ss += (double)t[d] * t[d];
                float inv = ss > 0 ? (float)(1.0 / sqrt(ss)) : 0.f;
                for (size_t d = 0; d < D; d++) h[c * D + d] = f32_to_f16(t[d] * inv);
            }
            extras[2 * i].name = PATCH_TOKENS_EXTRA;
            extras[2 * i].data = h;
            extras[2 * i].len = GG * D * sizeof(uint16_t);
            in->extras = &extras[2 * i];
            in->n_extras = 1;
        }
        if (ing->capture_len) {
            db_extra_in *e = &extras[2 * i + in->n_extras];
            e->name = CAPTURE_EXTRA;
            e->data = ing->capture;
            e->len = ing->capture_len;
            in->extras = &extras[2 * i];
            in->n_extras++;
        }
        ing->n_regions = nr;
    }

    /* store: rounds of jobs with distinct paths (a path twice in one batch
     * goes to the next round, where it is a duplicate or a replacement) */
    int *state = calloc((size_t)n, sizeof *state); /* 0 pending, 1 done */
    if (!state) {
        for (int i = 0; i < n; i++) srv_job_error(jobs[i], UMG_ENOMEM, "out of memory");
        return;
    }
    int remaining = n;
    while (remaining > 0) {
        int sel[n], ns = 0;
        for (int i = 0; i < n; i++) {
            if (state[i]) continue;
            int clash = 0;
            for (int j = 0; j < ns; j++)
                if (!strcmp(jobs[sel[j]]->ing->path, jobs[i]->ing->path)) clash = 1;
            if (clash) continue;
            /* re-check against the database: another request may have stored
             * this path since stage 1 (the encoder is the only image writer) */
            srv_ingest *ing = jobs[i]->ing;
            uint64_t old_id;
            ins[i].replace = 0;
            if (db_find_path(s->db, ing->path, &old_id) == 0) {
                db_image old;
                if (db_get_image(s->db, old_id, &old) == 0) {
                    int same = !memcmp(old.sha256, ing->sha, 32);
                    int nreg = old.n_regions;
                    db_image_free(&old);
                    if (same) {
                        answer_ingest(jobs[i], old_id, nreg, 1, 0);
                        state[i] = 1;
                        remaining--;
                        continue;
                    }
                }
                ins[i].replace = 1;
            }
            sel[ns++] = i;
        }
        if (!ns) break;
        /* contiguous copies for one db_put_images call */
        db_image_in batch_in[ns];
        size_t roff[ns + 1];
        roff[0] = 0;
        for (int j = 0; j < ns; j++) {
            batch_in[j] = ins[sel[j]];
            roff[j + 1] = roff[j] + (size_t)ins[sel[j]].n_regions;
        }
        rc = db_put_images(s->db, batch_in, ns, ids, rids);
        if (rc && ns > 1) {
            /* isolate the failing image: one transaction each */
            for (int j = 0; j < ns; j++) {
                int i = sel[j];
                int r1 = db_put_image(s->db, &batch_in[j], &ids[j], rids);
                if (r1) srv_job_error(jobs[i], r1, umg_err_msg());
                else answer_ingest(jobs[i], ids[j], ins[i].n_regions, 0, ins[i].replace);
                state[i] = 1;
                remaining--;
            }
        } else {
            for (int j = 0; j < ns; j++) {
                int i = sel[j];
                if (rc) srv_job_error(jobs[i], rc, umg_err_msg());
                else answer_ingest(jobs[i], ids[j], ins[i].n_regions, 0, ins[i].replace);
                state[i] = 1;
                remaining--;
            }
        }
        if (!rc) {
            pthread_mutex_lock(&s->q_mu);
            s->ingested += (uint64_t)ns;
            s->ingest_batches++;
            pthread_mutex_unlock(&s->q_mu);
        }
    }
    free(state);
}

/* ---- searches (threadpool) ------------------------------------------------- */

typedef struct hit {
    uint64_t image_id, region_id;
    float score;
    float box[4];
    int has_box;
    char *path;
    float *heat;              /* grid*grid cosines, pixel granularity */
    float extent[4];
    uint32_t img_w, img_h;
    float refined;            /* score + pixel agreement ("refine": "pixel") */
    int has_refined;
} hit;

typedef struct filters {
    const char *prefix;
    size_t prefix_len;
    const msgpack_object *tags;
    double min_score;
    int has_min, any;
} filters;

static void read_filters(const proto_request *req, filters *f)
{
    memset(f, 0, sizeof *f);
    f->min_score = -INFINITY;
    const msgpack_object *m = proto_req_arg(req, "filters");
    if (!m) return;
    if (proto_obj_str(proto_map_get(m, "path_prefix"), &f->prefix, &f->prefix_len)) f->any = 1;
    f->tags = proto_map_get(m, "tags");
    if (f->tags && f->tags->via.array.size) f->any = 1;
    else f->tags = NULL;
    if (proto_obj_float(proto_map_get(m, "min_score"), &f->min_score)) f->has_min = 1;
}

static int passes(const filters *f, const db_image *img)
{
    if (f->prefix && (strlen(img->path) < f->prefix_len || memcmp(img->path, f->prefix, f->prefix_len))) return 0;
    if (f->tags)
        for (uint32_t i = 0; i < f->tags->via.array.size; i++) {
            const msgpack_object *t = &f->tags->via.array.ptr[i];
            int found = 0;
            for (int j = 0; j < img->n_tags && !found; j++)
                found = strlen(img->tags[j]) == t->via.str.size && !memcmp(img->tags[j], t->via.str.ptr, t->via.str.size);
            if (!found) return 0;
        }
    return 1;
}

static float box_iou(const float a[4], const float b[4])
{
    enc_box x = {a[0], a[1], a[2], a[3], 0, 0}, y = {b[0], b[1], b[2], b[3], 0, 0};
    return enc_box_iou(&x, &y);
}

/* Patch tokens of an image as floats (malloc'd), or NULL with an error. */
static float *load_patch_tokens(srv *s, uint64_t image_id, int *rc)
{
    void *blob;
    size_t len;
    size_t want = (size_t)s->grid * s->grid * s->dim;
    *rc = db_get_extra(s->db, image_id, PATCH_TOKENS_EXTRA, &blob, &len);
    if (*rc) return NULL;
    if (len != want * 2) {
        free(blob);
        *rc = umg_err_set(UMG_EFORMAT, "image %llu: patch tokens have %zu bytes, want %zu",
                          (unsigned long long)image_id, len, want * 2);
        return NULL;
    }
    float *out = malloc(want * sizeof(float));
    if (!out) {
        free(blob);
        *rc = umg_err_set(UMG_ENOMEM, "out of memory");
        return NULL;
    }
    const uint8_t *b = blob;
    for (size_t i = 0; i < want; i++) out[i] = f16_to_f32((uint16_t)(b[2 * i] | (b[2 * i + 1] << 8)));
    free(blob);
    return out;
}

/* heat[G*G] = tok[G*G, D] . q: the text's cosine with every patch token (pixel
 * granularity, and the mask of "refine": "pixel"). */
static void heat_of(const srv *s, const float *tok, const float *q, float *heat)
{
    size_t GG = (size_t)s->grid * s->grid, D = (size_t)s->dim;
    for (size_t c = 0; c < GG; c++) {
        double dot = 0;
        for (size_t d = 0; d < D; d++) dot += (double)tok[c * D + d] * q[d];
        heat[c] = (float)dot;
    }
}

static void heatmap(srv *s, hit *h, const float *q, const db_image *img)
{
    int rc;
    float *tok = load_patch_tokens(s, h->image_id, &rc);
    if (!tok) return; /* no tokens stored (--no-patches): the hit goes without */
    h->heat = malloc((size_t)s->grid * s->grid * sizeof(float));
    if (h->heat) heat_of(s, tok, q, h->heat);
    free(tok);
    enc_preproc_geom g;
    enc_preproc_geometry(&s->pad, (int)img->width, (int)img->height, &g);
    /* where the whole grid lies in original pixels (beyond the photo where padded) */
    h->extent[0] = -(float)g.off_x / g.scale_x;
    h->extent[1] = -(float)g.off_y / g.scale_y;
    h->extent[2] = (float)g.input_w / g.scale_x;
    h->extent[3] = (float)g.input_h / g.scale_y;
}

static double overlap1(double a0, double a1, double b0, double b1)
{
    double lo = a0 > b0 ? a0 : b0, hi = a1 < b1 ? a1 : b1;
    return hi > lo ? hi - lo : 0;
}

/* Cell coverage [G*G] of box: the share of each grid cell under it, the
 * weights enc_region_pool gives the cells before dividing by their sum. */
static void box_cover(const srv *s, const enc_preproc_geom *g, const float box[4], float *cov)
{
    float r[4];
    enc_box_to_grid(g, s->patch_size, box, r);
    for (int i = 0; i < s->grid; i++) {
        double wy = overlap1(r[1], r[3], i, i + 1);
        for (int j = 0; j < s->grid; j++) cov[i * s->grid + j] = (float)(wy * overlap1(r[0], r[2], j, j + 1));
    }
}

typedef struct refined_box {
    uint64_t id;
    float box[4];
    float score, refined;
} refined_box;

static int by_refined(const void *a, const void *b)
{
    const refined_box *x = a, *y = b;
    if (x->refined != y->refined) return x->refined < y->refined ? 1 : -1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Re-rank one photo's stored boxes with the text's heatmap over its patch
 * tokens: refined = cosine + REFINE_WEIGHT * (the photo's cosine range) *
 * soft IoU(box cover, heat mask).  Fills out[] (by refined score, boxes
 * overlapping a better one at IoU > REGION_NMS_IOU dropped, and those under
 * min_score) and *n.  *n = -1: the photo has no patch tokens; left as it is. */
static int refine_photo(srv *s, const float *q, const hit *h, const filters *f, refined_box **out, int *n)
{
    *out = NULL;
    *n = -1;
    int rc, nr = 0;
    float *tok = load_patch_tokens(s, h->image_id, &rc);
    if (!tok) return rc == UMG_ENOENT ? 0 : rc;
    db_region *regs = NULL;
    size_t GG = (size_t)s->grid * s->grid, D = (size_t)s->dim;
    float *heat = malloc(GG * 3 * sizeof(float)), *photo = heat + GG, *cov = heat + 2 * GG;
    float *vec = malloc(D * sizeof(float));
    refined_box *rb = NULL;
    rc = heat && vec ? 0 : umg_err_set(UMG_ENOMEM, "out of memory");
    if (!rc) rc = db_list_regions(s->db, h->image_id, &regs, &nr);
    if (!rc && nr > 0 && !(rb = malloc((size_t)nr * sizeof *rb))) rc = umg_err_set(UMG_ENOMEM, "out of memory");
    if (rc || nr <= 0) goto done;

    enc_preproc_geom g;
    enc_preproc_geometry(&s->pad, (int)h->img_w, (int)h->img_h, &g);
    const float whole[4] = {0, 0, (float)h->img_w, (float)h->img_h};
    box_cover(s, &g, whole, photo);
    double hmax = -INFINITY, hmin = INFINITY;
    heat_of(s, tok, q, heat);
    for (size_t c = 0; c < GG; c++)
        if (photo[c] > 0) { /* padding cells hold no photo: they neither set nor carry the mask */
            if (heat[c] > hmax) hmax = heat[c];
            if (heat[c] < hmin) hmin = heat[c];
        }
    /* heat mask: a ramp from the threshold up to the photo's hottest cell */
    double t = hmin + REFINE_HEAT_FRAC * (hmax - hmin), span = hmax - t, mass = 0;
    for (size_t c = 0; c < GG; c++) {
        double m = span > 0 ? (heat[c] - t) / span : 1;
        heat[c] = (float)(photo[c] * (m < 0 ? 0 : m > 1 ? 1 : m));
        mass += heat[c];
    }
    double cmax = -INFINITY, cmin = INFINITY;
    for (int i = 0; i < nr; i++) {
        if ((rc = db_get_vector(s->db, DB_KIND_REGION, regs[i].id, vec))) goto done;
        double dot = 0, inter = 0, area = 0;
        for (size_t d = 0; d < D; d++) dot += (double)vec[d] * q[d];
        box_cover(s, &g, regs[i].box, cov);
        for (size_t c = 0; c < GG; c++) inter += (double)cov[c] * heat[c], area += cov[c];
        double uni = area + mass - inter;
        rb[i].id = regs[i].id;
        memcpy(rb[i].box, regs[i].box, sizeof rb[i].box);
        rb[i].score = (float)dot;
        rb[i].refined = uni > 0 ? (float)(inter / uni) : 0; /* the soft IoU, for now */
        if (dot > cmax) cmax = dot;
        if (dot < cmin) cmin = dot;
    }
    for (int i = 0; i < nr; i++) rb[i].refined = (float)(rb[i].score + REFINE_WEIGHT * (cmax - cmin) * rb[i].refined);
    qsort(rb, (size_t)nr, sizeof *rb, by_refined);
    int kept = 0;
    for (int i = 0; i < nr; i++) {
        if (f->has_min && rb[i].score < f->min_score) continue;
        int overlap = 0;
        for (int j = 0; j < kept && !overlap; j++) overlap = box_iou(rb[j].box, rb[i].box) > REGION_NMS_IOU;
        if (!overlap) rb[kept++] = rb[i];
    }
    *out = rb;
    *n = kept;
    rb = NULL;
done:
    free(rb);
    free(regs);
    free(vec);
    free(heat);
    free(tok);
    return rc;
}

/* "refine": "pixel": every photo keeps the places the region search gave it
 * in hits; the boxes in those places become its best boxes by refined score
 * (out of all its stored boxes, not only those the index returned).  A photo
 * with fewer such boxes than places gives up the rest.  *nh may shrink. */
static int refine_hits(srv *s, const float *q, hit *hits, int *nh, const filters *f)
{
    int rc = 0;
    for (int i = 0; !rc && i < *nh; i++) {
        if (hits[i].has_refined) continue; /* a place of a photo already done */
        refined_box *rb;
        int n;
        rc = refine_photo(s, q, &hits[i], f, &rb, &n);
        if (rc || n < 0) {
            for (int j = i; j < *nh; j++)
                if (hits[j].image_id == hits[i].image_id) hits[j].has_refined = -1; /* unrefined */
            continue;
        }
        int used = 0;
        for (int j = i; j < *nh; j++) {
            if (hits[j].image_id != hits[i].image_id) continue;
            if (used < n) {
                hits[j].region_id = rb[used].id;
                memcpy(hits[j].box, rb[used].box, sizeof hits[j].box);
                hits[j].score = rb[used].score;
                hits[j].refined = rb[used].refined;
                hits[j].has_refined = 1;
                used++;
            } else {
                hits[j].has_refined = 2; /* place given up */
            }
        }
        free(rb);
    }
    int w = 0;
    for (int i = 0; i < *nh; i++) {
        if (hits[i].has_refined == 2) {
            free(hits[i].path);
            continue;
        }
        if (hits[i].has_refined < 0) hits[i].has_refined = 0;
        hits[w++] = hits[i];
    }
    *nh = w;
    return rc;
}

/* Search with q (dim floats, any norm), filter, group, answer job. */
static int search_answer(srv_job *job, const float *q_in, uint64_t exclude)
{
    srv *s = job->s;
    proto_request *req = job->req;
    uint64_t k = PROTO_DEFAULT_K;
    proto_obj_uint(proto_req_arg(req, "k"), &k);
    const msgpack_object *g = proto_req_arg(req, "granularity");
    int gran = proto_obj_str_eq(g, "region") ? 1 : proto_obj_str_eq(g, "pixel") ? 2 : 0;
    int refine = gran == 1 && proto_obj_str_eq(proto_req_arg(req, "refine"), "pixel");
    filters f;
    read_filters(req, &f);
    float *q = malloc((size_t)s->dim * sizeof(float));
    if (!q) return umg_err_set(UMG_ENOMEM, "out of memory");
    memcpy(q, q_in, (size_t)s->dim * sizeof(float));
    enc_l2_normalize(q, s->dim);

    int kind = gran == 1 ? DB_KIND_REGION : DB_KIND_IMAGE;
    /* over-fetch: filters and per-image suppression drop candidates */
    uint64_t fetch = k * (gran == 1 ? 4 : 1) * (f.any ? 8 : 1) + (exclude ? 1 : 0);
    if (fetch > MAX_FETCH) fetch = MAX_FETCH;
    db_hit *cand = malloc(fetch * sizeof *cand);
    hit *hits = calloc(k, sizeof *hits);
    int nc = 0, nh = 0, rc = 0;
    if (!cand || !hits) rc = umg_err_set(UMG_ENOMEM, "out of memory");
    if (!rc) rc = db_search(s->db, kind, q, NULL, cand, (int)fetch, &nc);
    for (int i = 0; !rc && i < nc && (uint64_t)nh < k; i++) {
        if (f.has_min && cand[i].score < f.min_score) break; /* sorted by score */
        hit h = {.score = cand[i].score};
        if (gran == 1) {
            db_region r;
            if (db_get_region(s->db, cand[i].id, &r)) continue; /* deleted meanwhile */
            h.region_id = r.id;
            h.image_id = r.image_id;
            memcpy(h.box, r.box, sizeof h.box);
            h.has_box = 1;
            int overlap = 0;
            for (int j = 0; j < nh && !overlap; j++)
                overlap = hits[j].image_id == h.image_id && box_iou(hits[j].box, h.box) > REGION_NMS_IOU;
            if (overlap) continue;
        } else {
            h.image_id = cand[i].id;
        }
        if (h.image_id == exclude) continue;
        db_image img;
        if (db_get_image(s->db, h.image_id, &img)) continue;
        if (passes(&f, &img)) {
            h.path = strdup(img.path);
            h.img_w = img.width;
            h.img_h = img.height;
            if (gran == 2) heatmap(s, &h, q, &img);
            hits[nh++] = h;
        }
        db_image_free(&img);
    }
    if (!rc && refine) rc = refine_hits(s, q, hits, &nh, &f);
    if (!rc) {
        proto_writer w;
        if (proto_response_begin(&w, &job->resp, job->id)) {
            rc = umg_err_set(UMG_ENOMEM, "out of memory");
        } else {
            msgpack_packer *pk = &w.pk;
            msgpack_pack_map(pk, 1);
            pack_key(pk, "hits");
            msgpack_pack_array(pk, (size_t)nh);
            for (int i = 0; i < nh; i++) {
                hit *h = &hits[i];
                msgpack_pack_map(pk, 3 + (h->has_box ? 2 : 0) + (h->heat ? 1 : 0) + (h->has_refined ? 1 : 0));
                pack_key(pk, "image_id"), msgpack_pack_uint64(pk, h->image_id);
                pack_key(pk, "path"), proto_pack_cstr(pk, h->path ? h->path : "");
                pack_key(pk, "score"), msgpack_pack_float(pk, h->score);
                if (h->has_box) {
                    pack_key(pk, "box"), pack_box(pk, h->box);
                    pack_key(pk, "region_id"), msgpack_pack_uint64(pk, h->region_id);
                }
                if (h->has_refined) pack_key(pk, "refined"), msgpack_pack_float(pk, h->refined);
                if (h->heat) {
                    size_t GG = (size_t)s->grid * s->grid;
                    pack_key(pk, "heatmap");
                    msgpack_pack_map(pk, 3);
                    pack_key(pk, "grid"), msgpack_pack_int32(pk, s->grid);
                    pack_key(pk, "extent"), pack_box(pk, h->extent);
                    pack_key(pk, "values");
                    msgpack_pack_array(pk, GG);
                    for (size_t c = 0; c < GG; c++) msgpack_pack_float(pk, h->heat[c]);
                }
            }
            job_response_end(job, &w);
        }
    }
    for (int i = 0; i < nh; i++) {
        free(hits[i].path);
        free(hits[i].heat);
    }
    free(hits);
    free(cand);
    free(q);
    return rc;
}

/* One text query waiting for a text lane (lives on its worker's stack). */
struct srv_text_req {
    const int32_t *ids;
    int n_ids;
    float *vec;
    pthread_cond_t cv;            /* its worker sleeps on it: woken alone, not with every waiter */
    int done, rc;
    char msg[256];
    srv_text_req *next;
};

/* Wake the owners of the first few waiting requests, as many as there are
 * free lanes, so that each free lane finds a worker to take it.  Under b->mu. */
static void lanes_kick(srv_text_batcher *b)
{
    srv_text_req *q = b->head;
    for (int i = 0; i < b->free_lanes && q; i++, q = q->next) pthread_cond_signal(&q->cv);
}

/* Encode ids into vec [dim], batched with whatever other text queries are
 * waiting: a worker that finds a lane free takes it and the oldest waiting
 * requests (its own among them or not; SRV_TEXT_BATCH at most, and its share
 * when other lanes are free too, so that a burst spreads over the lanes),
 * encodes them in one enc_encode_ids_batch, hands each its vector, and goes
 * again until its own is done.  Workers without a lane sleep, each on its
 * request's own condition variable, until their request is done or a lane
 * is there for them. */
static int text_encode(srv *s, const int32_t *ids, int n_ids, float *vec)
{
    srv_text_batcher *b = &s->text;
    srv_text_req me = {.ids = ids, .n_ids = n_ids, .vec = vec};
    pthread_cond_init(&me.cv, NULL);
    pthread_mutex_lock(&b->mu);
    if (b->tail) b->tail->next = &me;
    else b->head = &me;
    b->tail = &me;
    b->waiting++;
    if (b->lingering) pthread_cond_broadcast(&b->linger_cv); /* they count arrivals */
    while (!me.done) {
        if (!b->free_lanes || !b->head) {
            pthread_cond_wait(&me.cv, &b->mu);
            continue;
        }
        srv_text_lane *lane = NULL;
        for (int i = 0; i < b->n_lanes && !lane; i++)
            if (!b->lanes[i].busy) lane = &b->lanes[i];
        /* alone: every thread (a lone query as fast as with one lane); beside another pass: its share.
         * A pass that started alone keeps its helpers if another starts meanwhile; that one
         * then computes on its own thread (the encoder never waits for busy helpers). */
        if (b->per_lane_threads) enc_run_set_threads(lane->run, b->free_lanes == b->n_lanes ? 0 : b->per_lane_threads);
        lane->busy = 1;
        b->free_lanes--;
        int take = SRV_TEXT_BATCH;
        if (s->cfg.text_batch_wait_us > 0 && b->waiting < SRV_TEXT_BATCH) {
            /* linger, lane reserved, until the batch is full or the wait is over */
            struct timespec until;
            clock_gettime(CLOCK_MONOTONIC, &until);
            long ns = until.tv_nsec + (long)s->cfg.text_batch_wait_us * 1000L;
            until.tv_sec += ns / 1000000000L;
            until.tv_nsec = ns % 1000000000L;
            b->lingering++;
            while (b->waiting < SRV_TEXT_BATCH &&
                   pthread_cond_timedwait(&b->linger_cv, &b->mu, &until) != ETIMEDOUT) {
            }
            b->lingering--;
        } else if (b->n_lanes > 1) {
            /* this lane's share of the waiting requests, as if every lane took as many: a free lane
             * wakes for the rest, a busy one takes them when it is done.  Balanced batches end
             * sooner than one big batch on one thread beside a small one on the other (a pass
             * costs about its texts' tokens on its lane's thread) */
            int share = (b->waiting + b->n_lanes - 1) / b->n_lanes;
            if (share < take) take = share;
        }
        srv_text_req *batch[SRV_TEXT_BATCH];
        const int32_t *bids[SRV_TEXT_BATCH];
        int blen[SRV_TEXT_BATCH], n = 0;
        while (b->head && n < take) {
            srv_text_req *q = b->head;
            b->head = q->next;
            batch[n] = q, bids[n] = q->ids, blen[n] = q->n_ids, n++;
            b->waiting--;
        }
        if (!b->head) b->tail = NULL;
        if (n == 0) { /* other lanes took them all while this one lingered */
            lane->busy = 0;
            b->free_lanes++;
            continue;
        }
        lanes_kick(b);
        b->batches++;
        b->texts += (uint64_t)n;
        lane->batches++;
        lane->texts += (uint64_t)n;
        pthread_mutex_unlock(&b->mu);
        /* the owners sleep until done is set under the lock: their requests stay valid */
        umg_err_clear();
        int rc = enc_encode_ids_batch(lane->run, bids, blen, n, lane->embeds);
        if (b->test_pass_ms) {
            struct timespec hold = {b->test_pass_ms / 1000, (long)(b->test_pass_ms % 1000) * 1000000L};
            while (nanosleep(&hold, &hold) && errno == EINTR) {
            }
        }
        for (int i = 0; i < n; i++) {
            batch[i]->rc = rc;
            if (rc) snprintf(batch[i]->msg, sizeof batch[i]->msg, "%s", umg_err_msg());
            else memcpy(batch[i]->vec, lane->embeds + (size_t)i * s->dim, (size_t)s->dim * sizeof(float));
        }
        pthread_mutex_lock(&b->mu);
        for (int i = 0; i < n; i++) {
            batch[i]->done = 1;
            if (batch[i] != &me) pthread_cond_signal(&batch[i]->cv);
        }
        lane->busy = 0;
        b->free_lanes++;
        if (me.done) lanes_kick(b); /* someone else takes the lane this worker leaves */
    }
    pthread_mutex_unlock(&b->mu);
    pthread_cond_destroy(&me.cv);
    return me.rc ? umg_err_set(me.rc, "%s", me.msg) : 0;
}

static void query_work(uv_work_t *w)
{
    srv_job *job = w->data;
    srv *s = job->s;
    umg_err_clear();
    const char *text;
    size_t len;
    proto_obj_str(proto_req_arg(job->req, "text"), &text, &len);
    float *vec = malloc((size_t)s->dim * sizeof(float));
    int rc = vec ? 0 : umg_err_set(UMG_ENOMEM, "out of memory");
    if (!rc) {
        /* tokenize here (in parallel on the pool), encode batched */
        int32_t ids[ENC_CONTEXT_LENGTH];
        int max_positions = enc_model_config(s->model)->max_positions, n_ids = 0;
        int max_ids = max_positions < ENC_CONTEXT_LENGTH ? max_positions : ENC_CONTEXT_LENGTH;
        rc = enc_tokenize(enc_model_tokenizer(s->model), text ? text : "", len, ids, max_ids, &n_ids);
        if (!rc) rc = text_encode(s, ids, n_ids, vec);
    }
    if (!rc) rc = search_answer(job, vec, 0);
    if (rc) srv_job_error(job, rc, umg_err_msg());
    free(vec);
}

/* The query vector of an image (by id or bytes), optionally of a box in it. */
static int image_query_vector(srv_job *job, float *vec, uint64_t *exclude)
{
    srv *s = job->s;
    proto_request *req = job->req;
    double bd[4];
    int has_box = proto_obj_box(proto_req_arg(req, "box"), bd);
    float box[4] = {(float)bd[0], (float)bd[1], (float)bd[2], (float)bd[3]};
    uint64_t id;
    int rc;
    if (proto_obj_uint(proto_req_arg(req, "image_id"), &id)) {
        *exclude = has_box ? 0 : id;
        if (!has_box) {
            rc = db_get_vector(s->db, DB_KIND_IMAGE, id, vec);
            if (rc == UMG_ENOENT) return umg_err_set(UMG_ENOENT, "query_image: no image %llu", (unsigned long long)id);
            return rc;
        }
        if (s->region_mode == SRV_REGION_MODE_CROP)
            return umg_err_set(UMG_EUNSUPPORTED, "query_image: a box on a stored image needs the photo's pixels, "
                                                 "which are not stored, and region mode crop compares crops: send "
                                                 "the photo's bytes with the box");
        db_image img;
        if ((rc = db_get_image(s->db, id, &img)))
            return rc == UMG_ENOENT ? umg_err_set(UMG_ENOENT, "query_image: no image %llu", (unsigned long long)id) : rc;
        enc_preproc_geom g;
        enc_preproc_geometry(&s->pad, (int)img.width, (int)img.height, &g);
        db_image_free(&img);
        float *tok = load_patch_tokens(s, id, &rc);
        if (!tok)
            return rc == UMG_ENOENT ? umg_err_set(UMG_EUNSUPPORTED, "query_image: image %llu has no patch tokens "
                                                                   "stored (server runs with --no-patches)",
                                                  (unsigned long long)id)
                                    : rc;
        /* stored tokens are normalized per token; pooling normalizes them anyway */
        rc = enc_region_pool(tok, s->grid, s->dim, s->patch_size, &g, box, vec);
        free(tok);
        if (rc) return umg_err_set(UMG_EINVAL, "query_image: box is outside the image");
        return 0;
    }
    const uint8_t *data;
    size_t len;
    proto_obj_bin(proto_req_arg(req, "data"), &data, &len);
    *exclude = 0;
    enc_image img = {0};
    if ((rc = enc_image_decode(data, len, ENC_IMAGE_MAX_PIXELS_DEFAULT, &img))) return rc;
    size_t S = (size_t)s->image_size;
    if (has_box && s->region_mode == SRV_REGION_MODE_CROP) {
        /* the box's crop, encoded as ingest encodes region crops */
        srv_crop c;
        float cut[4];
        rc = crop_make(s, &img, box, cut, &c);
        enc_image_free(&img);
        if (rc == UMG_EINVAL) return umg_err_set(UMG_EINVAL, "query_image: box is outside the image");
        if (rc) return rc;
        float *px = malloc(3 * S * S * sizeof(float));
        if (px) {
            crop_pixels(s, &c, px);
            int i = pool_acquire(&s->runs);
            rc = enc_encode_pixels(s->runs.runs[i], px, 1, vec, NULL);
            pool_release(&s->runs, i);
        } else {
            rc = umg_err_set(UMG_ENOMEM, "out of memory");
        }
        free(px);
        free(c.rgb);
        return rc;
    }
    float *pixels = malloc(3 * S * S * sizeof(float));
    enc_preproc_geom g;
    rc = pixels ? enc_preprocess(&img, &s->pad, pixels) : umg_err_set(UMG_ENOMEM, "out of memory");
    enc_preproc_geometry(&s->pad, img.width, img.height, &g);
    enc_image_free(&img);
    if (!rc) {
        int i = pool_acquire(&s->runs);
        rc = enc_encode_pixels(s->runs.runs[i], pixels, 1, vec, has_box ? s->runs.patches[i] : NULL);
        if (!rc && has_box &&
            enc_region_pool(s->runs.patches[i], s->grid, s->dim, s->patch_size, &g, box, vec))
            rc = umg_err_set(UMG_EINVAL, "query_image: box is outside the image");
        pool_release(&s->runs, i);
    }
    free(pixels);
    return rc;
}

static void query_image_work(uv_work_t *w)
{
    srv_job *job = w->data;
    umg_err_clear();
    float *vec = malloc((size_t)job->s->dim * sizeof(float));
    uint64_t exclude = 0;
    int rc = vec ? image_query_vector(job, vec, &exclude) : umg_err_set(UMG_ENOMEM, "out of memory");
    if (!rc) rc = search_answer(job, vec, exclude);
    if (rc) srv_job_error(job, rc, umg_err_msg());
    free(vec);
}

/* ---- get / delete (threadpool) -------------------------------------------- */

static int resolve_image(srv_job *job, uint64_t *id)
{
    const char *p;
    size_t pl;
    if (proto_obj_uint(proto_req_arg(job->req, "image_id"), id)) return 0;
    proto_obj_str(proto_req_arg(job->req, "path"), &p, &pl);
    char *path = strndup(p, pl);
    if (!path) return umg_err_set(UMG_ENOMEM, "out of memory");
    int rc = db_find_path(job->s->db, path, id);
    if (rc == UMG_ENOENT) rc = umg_err_set(UMG_ENOENT, "no image at path '%s'", path);
    free(path);
    return rc;
}

static void get_work(uv_work_t *w)
{
    srv_job *job = w->data;
    srv *s = job->s;
    umg_err_clear();
    uint64_t id;
    db_image img;
    db_region *regs = NULL;
    int nreg = 0, have_img = 0;
    int rc = resolve_image(job, &id);
    if (!rc) {
        rc = db_get_image(s->db, id, &img);
        if (rc == UMG_ENOENT) rc = umg_err_set(UMG_ENOENT, "no image %llu", (unsigned long long)id);
        have_img = !rc;
    }
    if (!rc) rc = db_list_regions(s->db, id, &regs, &nreg);
    if (!rc) {
        proto_writer wr;
        if (proto_response_begin(&wr, &job->resp, job->id)) {
            rc = umg_err_set(UMG_ENOMEM, "out of memory");
        } else {
            msgpack_packer *pk = &wr.pk;
            char hex[65];
            for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", img.sha256[i]);
            /* capture metadata when the photo had any (absent fields: absent keys) */
            enc_image_meta cap = {0};
            void *cap_bytes = NULL;
            size_t cap_len = 0;
            if (db_get_extra(s->db, id, CAPTURE_EXTRA, &cap_bytes, &cap_len) == 0)
                enc_image_meta_parse(cap_bytes, cap_len, &cap); /* damaged: nothing known */
            free(cap_bytes);
            msgpack_pack_map(pk, 10 + (size_t)cap.taken_at_known + (size_t)cap.camera_known + (size_t)cap.gps_known);
            pack_key(pk, "image_id"), msgpack_pack_uint64(pk, img.id);
            pack_key(pk, "path"), proto_pack_cstr(pk, img.path);
            pack_key(pk, "width"), msgpack_pack_uint32(pk, img.width);
            pack_key(pk, "height"), msgpack_pack_uint32(pk, img.height);
            pack_key(pk, "bytes"), msgpack_pack_uint64(pk, img.bytes);
            pack_key(pk, "sha256"), pack_strn(pk, hex, 64);
            pack_key(pk, "mtime"), msgpack_pack_int64(pk, img.mtime);
            pack_key(pk, "ingest_time"), msgpack_pack_int64(pk, img.ingest_time);
            pack_key(pk, "tags");
            msgpack_pack_array(pk, (size_t)img.n_tags);
            for (int i = 0; i < img.n_tags; i++) proto_pack_cstr(pk, img.tags[i]);
            if (cap.taken_at_known) pack_key(pk, "taken_at"), proto_pack_cstr(pk, cap.taken_at);
            if (cap.camera_known) pack_key(pk, "camera"), proto_pack_cstr(pk, cap.camera);
            if (cap.gps_known) {
                pack_key(pk, "gps"), msgpack_pack_array(pk, 2);
                msgpack_pack_double(pk, cap.lat), msgpack_pack_double(pk, cap.lon);
            }
            pack_key(pk, "regions");
            msgpack_pack_array(pk, (size_t)nreg);
            for (int i = 0; i < nreg; i++) {
                msgpack_pack_map(pk, 3 + regs[i].has_score);
                pack_key(pk, "region_id"), msgpack_pack_uint64(pk, regs[i].id);
                pack_key(pk, "box"), pack_box(pk, regs[i].box);
                pack_key(pk, "method"), proto_pack_cstr(pk, regs[i].method);
                if (regs[i].has_score) pack_key(pk, "score"), msgpack_pack_float(pk, regs[i].score);
            }
            job_response_end(job, &wr);
        }
    }
    if (have_img) db_image_free(&img);
    free(regs);
    if (rc) srv_job_error(job, rc, umg_err_msg());
}

static void delete_work(uv_work_t *w)
{
    srv_job *job = w->data;
    umg_err_clear();
    uint64_t id;
    int rc = resolve_image(job, &id);
    if (!rc) {
        rc = db_delete_image(job->s->db, id);
        if (rc == UMG_ENOENT) rc = umg_err_set(UMG_ENOENT, "no image %llu", (unsigned long long)id);
    }
    if (!rc) {
        proto_writer wr;
        if (proto_response_begin(&wr, &job->resp, job->id)) {
            rc = umg_err_set(UMG_ENOMEM, "out of memory");
        } else {
            msgpack_pack_map(&wr.pk, 2);
            pack_key(&wr.pk, "image_id"), msgpack_pack_uint64(&wr.pk, id);
            pack_key(&wr.pk, "deleted"), msgpack_pack_true(&wr.pk);
            job_response_end(job, &wr);
        }
    }
    if (rc) srv_job_error(job, rc, umg_err_msg());
}

#define QUEUE_HANDLER(name, fn)                                                                    \
    static int name(void *ctx, proto_request *req)                                                 \
    {                                                                                              \
        srv_job *job = ctx;                                                                        \
        int rc = uv_queue_work(job->s->loop, &job->work, fn, srv_after_work);                     \
        return rc ? umg_err_set(UMG_EINTERNAL, "uv_queue_work: %s", uv_strerror(rc)) : 0;          \
    }
QUEUE_HANDLER(h_query_queue, query_work)

/* The one cross-argument rule of query, checked before the text tower runs. */
static int h_query(void *ctx, proto_request *req)
{
    const msgpack_object *r = proto_req_arg(req, "refine");
    if (r && !proto_obj_str_eq(r, "none") && !proto_obj_str_eq(proto_req_arg(req, "granularity"), "region"))
        return umg_err_set(UMG_EINVAL, "query: 'refine' \"pixel\" re-ranks region boxes: it needs 'granularity' \"region\"");
    return h_query_queue(ctx, req);
}
QUEUE_HANDLER(h_query_image, query_image_work)
QUEUE_HANDLER(h_get, get_work)
QUEUE_HANDLER(h_delete, delete_work)

void srv_register_handlers(void)
{
    proto_op_set_handler(PROTO_OP_HELLO, h_hello);
    proto_op_set_handler(PROTO_OP_PING, h_ping);
    proto_op_set_handler(PROTO_OP_INGEST, h_ingest);
    proto_op_set_handler(PROTO_OP_QUERY, h_query);
    proto_op_set_handler(PROTO_OP_QUERY_IMAGE, h_query_image);
    proto_op_set_handler(PROTO_OP_GET, h_get);
    proto_op_set_handler(PROTO_OP_DELETE, h_delete);
    proto_op_set_handler(PROTO_OP_STATS, h_stats);
}
