/* ingest.c - photos in, records and vectors stored (ingest.h): the crops of
 * region mode crop, the per-photo preparation, the batched encode, region
 * pooling and the store with the same-path-same-content rule. */
#include "ingest.h"
#include "engine_internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "capture.h"
#include "enc_image.h"
#include "umg_error.h"

struct eng_ingest {
    char *path;               /* stored path (NUL-terminated copy) */
    uint8_t sha[32];
    uint64_t bytes;
    int64_t mtime;
    const uint8_t *data;      /* the encoded photo until prepared (borrowed, or owned: take_data) */
    size_t len;
    uint8_t *owned;           /* data, when the engine was given it to free */
    int bytes_private;        /* eng_ingest_req.bytes_private */
    db_capture capture;       /* from the photo's EXIF, stored in its record */
    int width, height;
    float *pixels;            /* [3, S, S], ENC_FIT_PAD */
    enc_preproc_geom geom;
    enc_box *boxes;
    int n_boxes;
    eng_crop *crops;          /* region mode crop: one per box, same order */
    int n_crops;
    char **tags;
    int n_tags;
    int prepared, done;
    int replace;              /* store_batch: the path holds other bytes */
    eng *held_by;             /* the engine whose queued_bytes count `held` (until encoded) */
    uint64_t held;
    eng_ingest_result res;
};

static void sha256(const void *data, size_t len, uint8_t out[32])
{
    unsigned int n = 32;
    EVP_Digest(data, len, out, &n, EVP_sha256(), NULL);
}

static void ingest_fail(eng_ingest *ing, int code, const char *msg)
{
    if (code >= 0) code = UMG_EINTERNAL;
    if (!msg || !*msg) msg = umg_strerror(code);
    ing->res.rc = code;
    snprintf(ing->res.msg, sizeof ing->res.msg, "%s", msg);
    ing->done = 1;
}

static void ingest_succeed(eng_ingest *ing, uint64_t image_id, int regions, int duplicate, int replaced)
{
    ing->res.rc = 0; /* the CPU times stay */
    ing->res.msg[0] = 0;
    ing->res.image_id = image_id;
    ing->res.regions = regions;
    ing->res.duplicate = duplicate;
    ing->res.replaced = replaced;
    ing->done = 1;
}

/* What path holds now: 0 nothing, 1 a photo with these very bytes (its id and
 * region count in *id, *nreg), 2 another photo (it is to be replaced). */
static int path_holds(eng *e, const char *path, const uint8_t sha[32], uint64_t *id, int *nreg)
{
    if (db_find_path(e->db, path, id) != 0) return 0;
    db_image old;
    if (db_get_image(e->db, *id, &old) != 0) return 2;
    int same = !memcmp(old.sha256, sha, 32);
    *nreg = old.n_regions;
    db_image_free(&old);
    return same ? 1 : 2;
}

/* ---- region crops (region mode crop) ------------------------------------ */

/* Crop box (original pixels, any floats) out of img, rounded outward to whole
 * pixels and clipped to the image; *cropped gets that integer box (what is
 * stored and answered).  The crop is then resized exactly as enc_preprocess
 * resizes a photo with ENC_FIT_PAD: longer side to S, aspect kept.
 * UMG_EINVAL (no message) when nothing of the box is inside the image. */
int eng_crop_make(const eng *e, const enc_image *img, const float box[4], float cropped[4], eng_crop *out)
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
    enc_preproc_geometry(&e->pad, c.width, c.height, &g);
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
void eng_crop_pixels(const eng *e, const eng_crop *c, float *out)
{
    const size_t S = (size_t)e->image_size;
    for (int ch = 0; ch < 3; ch++) {
        float *plane = out + (size_t)ch * S * S;
        memset(plane, 0, S * S * sizeof(float));
        for (int y = 0; y < c->h; y++) {
            float *row = plane + (size_t)(y + c->off_y) * S + (size_t)c->off_x;
            const uint8_t *src = c->rgb + (size_t)y * c->w * 3 + ch;
            for (int x = 0; x < c->w; x++) row[x] = e->norm_lut[ch][src[3 * x]];
        }
    }
}

/* ---- one photo ------------------------------------------------------------ */

/* ---- ingest memory (ingest.h, "Memory") ------------------------------------ */

/* What a photo holds from its decode until store_batch has encoded it: its
 * network input, its boxes and, in region mode crop, at most R crops of S x S
 * 8-bit pixels.  A fixed upper bound, known before decoding. */
static uint64_t prepared_bytes(const eng *e)
{
    uint64_t S = (uint64_t)e->image_size, R = e->cfg.regions > 0 ? (uint64_t)e->cfg.regions : 0;
    uint64_t b = 3 * S * S * sizeof(float) + R * sizeof(enc_box);
    if (e->cfg.region_mode == ENG_REGION_MODE_CROP) b += R * (S * S * 3 + sizeof(eng_crop));
    return b;
}

/* Admit a photo to preparation: wait while the photos admitted before it hold
 * cfg.queue_memory (one photo is always admitted when none holds any, so that
 * a cap below one photo still makes progress). */
static void queue_admit(eng *e, eng_ingest *ing)
{
    uint64_t need = prepared_bytes(e), cap = e->cfg.queue_memory;
    pthread_mutex_lock(&e->mem_mu);
    if (cap && e->mem.queued_bytes > 0 && e->mem.queued_bytes + need > cap) {
        e->mem.queue_waits++;
        while (e->mem.queued_bytes > 0 && e->mem.queued_bytes + need > cap) pthread_cond_wait(&e->mem_cv, &e->mem_mu);
    }
    e->mem.queued++;
    e->mem.queued_bytes += need;
    if (e->mem.queued_bytes > e->mem.queued_peak) e->mem.queued_peak = e->mem.queued_bytes;
    pthread_mutex_unlock(&e->mem_mu);
    ing->held_by = e;
    ing->held = need;
}

/* The photo's pixels are encoded (or it failed): its room goes to the next. */
static void queue_release(eng_ingest *ing)
{
    eng *e = ing->held_by;
    if (!e) return;
    pthread_mutex_lock(&e->mem_mu);
    e->mem.queued--;
    e->mem.queued_bytes -= ing->held;
    pthread_cond_broadcast(&e->mem_cv);
    pthread_mutex_unlock(&e->mem_mu);
    ing->held_by = NULL;
    ing->held = 0;
}

/* A decode starting (bytes 0, count +1), its buffer returned (bytes > 0,
 * count 0) or released (bytes < 0, count -1). */
static void decode_account(eng *e, int count, int64_t bytes)
{
    pthread_mutex_lock(&e->mem_mu);
    e->mem.decoding += count;
    e->mem.decoded_bytes = (uint64_t)((int64_t)e->mem.decoded_bytes + bytes);
    if (e->mem.decoded_bytes > e->mem.decoded_peak) e->mem.decoded_peak = e->mem.decoded_bytes;
    pthread_mutex_unlock(&e->mem_mu);
}

/* ---- fast decode: the decoded photo is the full-size one, shrunk ----------- */

/* Boxes found on the decoded photo (dw x dh) in the full-size photo's pixels
 * (fw x fh, both oriented), clipped to it.  The decode scaled both axes by
 * dw/fw and dh/fh (DCT scaling: ceil(full / 2^k)); the mapping is that ratio
 * per axis, so a box on the decoded pixels covers the same fraction of the
 * full photo.  (A JPEG whose side is not a multiple of 2^k has its last
 * decoded column/row made from fewer than 2^k pixels: there the ratio
 * places edges up to 2^k - 1 full pixels off, under one decoded pixel.) */
static void boxes_to_full(enc_box *b, int n, int dw, int dh, int fw, int fh)
{
    const double sx = (double)fw / dw, sy = (double)fh / dh;
    for (int i = 0; i < n; i++) {
        double x0 = b[i].x * sx, y0 = b[i].y * sy, x1 = (b[i].x + b[i].w) * sx, y1 = (b[i].y + b[i].h) * sy;
        x0 = x0 < 0 ? 0 : x0 > fw ? fw : x0;
        y0 = y0 < 0 ? 0 : y0 > fh ? fh : y0;
        x1 = x1 < x0 ? x0 : x1 > fw ? fw : x1;
        y1 = y1 < y0 ? y0 : y1 > fh ? fh : y1;
        b[i].x = (float)x0, b[i].y = (float)y0, b[i].w = (float)(x1 - x0), b[i].h = (float)(y1 - y0);
    }
}

/* The network input of img placed as g (the geometry of the full-size photo,
 * which is what search.c recomputes from the stored width and height): when
 * img is the full-size photo, enc_preprocess; when it was decoded shrunk, it
 * is resized straight to g's size (the same PIL bicubic) and padded as
 * ENC_FIT_PAD pads, so that patch tokens and boxes agree with g exactly. */
static int input_pixels(const eng *e, const enc_image *img, const enc_preproc_geom *g, int full_w, int full_h,
                        float *out)
{
    if (img->width == full_w && img->height == full_h) return enc_preprocess(img, &e->pad, out);
    enc_image r = {0};
    int rc = enc_image_resize(img, g->resized_w, g->resized_h, &r);
    if (rc) return rc;
    eng_crop c = {.rgb = r.rgb, .w = r.width, .h = r.height, .off_x = g->off_x, .off_y = g->off_y};
    eng_crop_pixels(e, &c, out);
    enc_image_free(&r);
    return 0;
}

/* ---- one photo ------------------------------------------------------------ */

void eng_ingest_free(eng_ingest *ing)
{
    if (!ing) return;
    queue_release(ing);
    free(ing->path);
    free(ing->owned);
    free(ing->pixels);
    free(ing->boxes);
    for (int i = 0; i < ing->n_crops; i++) free(ing->crops[i].rgb);
    free(ing->crops);
    if (ing->tags)
        for (int i = 0; i < ing->n_tags; i++) free(ing->tags[i]);
    free(ing->tags);
    free(ing);
}

int eng_ingest_done(const eng_ingest *ing) { return ing->done; }
const eng_ingest_result *eng_ingest_result_of(const eng_ingest *ing) { return &ing->res; }

int eng_ingest_begin(eng *e, const eng_ingest_req *req, eng_ingest **out)
{
    *out = NULL;
    eng_ingest *ing = calloc(1, sizeof *ing);
    if (!ing) {
        if (req->take_data) free((void *)req->data);
        return umg_err_set(UMG_ENOMEM, "out of memory");
    }
    if (req->take_data) ing->owned = (uint8_t *)req->data;
    if (!(ing->path = strdup(req->path))) {
        eng_ingest_free(ing);
        return umg_err_set(UMG_ENOMEM, "out of memory");
    }
    ing->mtime = req->mtime;
    ing->bytes_private = req->bytes_private;
    ing->bytes = req->len;
    ing->data = req->data;
    ing->len = req->len;
    sha256(req->data, req->len, ing->sha);

    /* unchanged content at the same path: nothing to do */
    uint64_t id;
    int nreg = 0;
    if (path_holds(e, ing->path, ing->sha, &id, &nreg) == 1) {
        ingest_succeed(ing, id, nreg, 1, 0);
        *out = ing;
        return 0;
    }

    /* tags: copies, so that the batch owns plain C strings */
    if (req->n_tags > 0) {
        if (!(ing->tags = calloc((size_t)req->n_tags, sizeof *ing->tags))) {
            eng_ingest_free(ing);
            return umg_err_set(UMG_ENOMEM, "out of memory");
        }
        for (int i = 0; i < req->n_tags; i++) {
            char *tag = strndup(req->tags[i].ptr, req->tags[i].len);
            if (!tag) {
                eng_ingest_free(ing);
                return umg_err_set(UMG_ENOMEM, "out of memory");
            }
            ing->tags[ing->n_tags++] = tag;
        }
    }
    *out = ing;
    return 0;
}

static double thread_cpu_ms(void)
{
    struct timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return (double)t.tv_sec * 1e3 + t.tv_nsec * 1e-6;
}

/* Decode, preprocess, propose, crop: the CPU of one photo. */
static int ingest_pixels(eng *e, eng_ingest *ing)
{
    int rc;
    enc_image img = {0};
    double t0 = thread_cpu_ms();
    enc_image_meta meta;
    /* region mode crop cuts its crops from the decoded pixels: it needs them all */
    int fast = e->cfg.decode == ENG_DECODE_FAST && e->cfg.region_mode != ENG_REGION_MODE_CROP;
    enc_decode_opts dopt = {.fast_for = fast ? &e->pad : NULL};
    if ((rc = enc_image_decode_ex(ing->data, ing->len, &dopt, &img, &meta))) {
        /* a file read for the client is one it may not be able to read:
         * none of its bytes go back (the decoder quotes leading bytes) */
        if (ing->bytes_private)
            return umg_err_set(rc, "ingest: %s: %s", ing->path,
                               rc == UMG_EUNSUPPORTED ? "not a supported image" : "not a decodable image");
        return rc;
    }
    eng_capture_from_meta(&meta, &ing->capture);
    double t1 = thread_cpu_ms(), t2 = t1;
    ing->res.cpu_ms_decode = t1 - t0;
    int64_t decoded = (int64_t)img.width * img.height * 3;
    decode_account(e, 0, decoded);
    free(ing->owned); /* the pixels are all we need now */
    ing->owned = NULL;
    ing->data = NULL;
    /* stored, answered and mapped: the full-size (oriented) photo, however it was decoded */
    ing->width = meta.full_width > 0 ? meta.full_width : img.width;
    ing->height = meta.full_height > 0 ? meta.full_height : img.height;
    ing->res.decoded_width = img.width;
    ing->res.decoded_height = img.height;
    size_t S = (size_t)e->image_size;
    ing->pixels = malloc(3 * S * S * sizeof(float));
    if (!ing->pixels) rc = umg_err_set(UMG_ENOMEM, "out of memory");
    enc_preproc_geometry(&e->pad, ing->width, ing->height, &ing->geom);
    if (!rc) rc = input_pixels(e, &img, &ing->geom, ing->width, ing->height, ing->pixels);
    t2 = thread_cpu_ms();
    ing->res.cpu_ms_preprocess = t2 - t1;
    if (!rc && e->cfg.regions > 0) {
        ing->boxes = malloc((size_t)e->cfg.regions * sizeof *ing->boxes);
        enc_propose_opts po;
        enc_propose_opts_default(&po);
        po.max_boxes = e->cfg.regions;
        /* min_side counts full-size pixels: as many decoded ones as they shrank to (rounded down:
         * no box the full-size decode keeps is dropped) */
        po.min_side = (int)((int64_t)po.min_side * img.width / ing->width);
        if (!ing->boxes) rc = umg_err_set(UMG_ENOMEM, "out of memory");
        else rc = enc_propose(&img, &po, ing->boxes, e->cfg.regions, &ing->n_boxes);
        if (!rc) boxes_to_full(ing->boxes, ing->n_boxes, img.width, img.height, ing->width, ing->height);
    }
    if (!rc && e->cfg.region_mode == ENG_REGION_MODE_CROP && ing->n_boxes > 0) {
        /* crops are cut here, from the decoded photo; the encoding step only
         * normalizes and encodes them */
        if (!(ing->crops = calloc((size_t)ing->n_boxes, sizeof *ing->crops)))
            rc = umg_err_set(UMG_ENOMEM, "out of memory");
        int kept = 0;
        for (int b = 0; !rc && b < ing->n_boxes; b++) {
            enc_box *bx = &ing->boxes[b];
            float in[4] = {bx->x, bx->y, bx->w, bx->h}, cut[4];
            int r = eng_crop_make(e, &img, in, cut, &ing->crops[kept]);
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
    decode_account(e, 0, -decoded);
    ing->res.cpu_ms_propose = thread_cpu_ms() - t2;
    return rc;
}

int eng_ingest_prepare(eng *e, eng_ingest *ing)
{
    if (ing->done || ing->prepared) return umg_err_set(UMG_EINVAL, "ingest: photo already prepared");
    umg_err_clear();
    queue_admit(e, ing);
    decode_account(e, 1, 0);
    int rc = ingest_pixels(e, ing);
    decode_account(e, -1, 0);
    if (rc) {
        queue_release(ing);
        ingest_fail(ing, rc, umg_err_msg());
    } else
        ing->prepared = 1;
    return rc;
}

/* ---- a batch (the store_batch thread) ------------------------------------ */

typedef struct scratch_layout {
    size_t pixels, embeds, patches, regvecs, cropvecs, f16, ins, rins, extras, ids, rids, total;
} scratch_layout;

static scratch_layout layout(const eng *e)
{
    size_t B = (size_t)e->cfg.batch, S = (size_t)e->image_size, D = (size_t)e->dim, GG = (size_t)e->grid * e->grid;
    size_t R = e->cfg.regions > 0 ? (size_t)e->cfg.regions : 1;
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
    PLACE(extras, B * sizeof(db_extra_in));
    PLACE(ids, B * sizeof(uint64_t));
    PLACE(rids, B * R * sizeof(uint64_t));
#undef PLACE
    l.total = o;
    return l;
}

size_t eng_ingest_scratch_size(const eng *e) { return layout(e).total; }

/* Region mode crop: every crop of the batch through the whole vision tower,
 * cfg.batch crops per forward pass (crops of several images share a pass);
 * crop b of image i lands in regvecs[(i * R + b) * D].  Each crop's 8-bit
 * pixels are freed once normalized into the pass's input. */
static int encode_crops(eng *e, enc_run *run, eng_ingest **ings, int n, float *pixels, float *tmp, float *regvecs,
                        size_t R)
{
    const size_t S3 = 3 * (size_t)e->image_size * e->image_size, D = (size_t)e->dim;
    const int B = e->cfg.batch;
    float *dst[B];
    int m = 0;
    for (int i = 0; i < n; i++) {
        eng_ingest *ing = ings[i];
        for (int b = 0; b < ing->n_crops; b++) {
            eng_crop_pixels(e, &ing->crops[b], pixels + (size_t)m * S3);
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

void eng_ingest_store_batch(eng *e, eng_ingest **ings, int n)
{
    if (n <= 0 || n > e->cfg.batch) return;
    enc_run *run = e->ingest_run;
    scratch_layout l = layout(e);
    char *base = e->ingest_scratch;
    float *pixels = (float *)(base + l.pixels), *embeds = (float *)(base + l.embeds);
    float *patches = (float *)(base + l.patches), *regvecs = (float *)(base + l.regvecs);
    float *cropvecs = (float *)(base + l.cropvecs);
    uint16_t *f16 = (uint16_t *)(base + l.f16);
    db_image_in *ins = (db_image_in *)(base + l.ins);
    db_region_in *rins = (db_region_in *)(base + l.rins);
    db_extra_in *extras = (db_extra_in *)(base + l.extras);
    uint64_t *ids = (uint64_t *)(base + l.ids), *rids = (uint64_t *)(base + l.rids);
    size_t S3 = 3 * (size_t)e->image_size * e->image_size, D = (size_t)e->dim, GG = (size_t)e->grid * e->grid;
    size_t R = e->cfg.regions > 0 ? (size_t)e->cfg.regions : 1;
    int crop_mode = e->cfg.region_mode == ENG_REGION_MODE_CROP;
    int want_patches = (!crop_mode && e->cfg.regions > 0) || !e->cfg.no_patches;

    if (e->cfg.test_store_batch_ms > 0) {
        struct timespec ts = {e->cfg.test_store_batch_ms / 1000, (long)(e->cfg.test_store_batch_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    umg_err_clear();
    for (int i = 0; i < n; i++) {
        memcpy(pixels + i * S3, ings[i]->pixels, S3 * sizeof(float));
        free(ings[i]->pixels);
        ings[i]->pixels = NULL;
    }
    int rc = enc_encode_pixels(run, pixels, n, embeds, want_patches ? patches : NULL);
    if (!rc && crop_mode) rc = encode_crops(e, run, ings, n, pixels, cropvecs, regvecs, R);
    for (int i = 0; i < n; i++) queue_release(ings[i]); /* pixels and crops are in the batch's buffers now */
    if (rc) {
        char msg[300];
        snprintf(msg, sizeof msg, "encoding failed: %s", umg_err_msg());
        for (int i = 0; i < n; i++) ingest_fail(ings[i], rc, msg);
        return;
    }

    /* regions and patch tokens, per image */
    for (int i = 0; i < n; i++) {
        eng_ingest *ing = ings[i];
        const float *pt = patches + (size_t)i * GG * D;
        int nr = 0;
        for (int b = 0; b < ing->n_boxes; b++) {
            const enc_box *bx = &ing->boxes[b];
            float box[4] = {bx->x, bx->y, bx->w, bx->h};
            float *v = regvecs + ((size_t)i * R + (size_t)nr) * D;
            if (crop_mode) enc_l2_normalize(v, e->dim); /* crop b's embedding, b == nr: no box is skipped */
            else if (enc_region_pool(pt, e->grid, e->dim, e->patch_size, &ing->geom, box, v)) continue; /* off the grid */
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
        if (!e->cfg.no_patches) {
            uint16_t *h = f16 + (size_t)i * GG * D;
            eng_patch_tokens_encode(e, pt, h);
            extras[i].name = ENG_PATCH_TOKENS_EXTRA;
            extras[i].data = h;
            extras[i].len = GG * D * sizeof(uint16_t);
            in->extras = &extras[i];
            in->n_extras = 1;
        }
        in->capture = &ing->capture;
    }

    /* store: rounds of photos with distinct paths (a path twice in one batch
     * goes to the next round, where it is a duplicate or a replacement) */
    int remaining = n;
    while (remaining > 0) {
        int sel[n], ns = 0;
        for (int i = 0; i < n; i++) {
            if (ings[i]->done) continue;
            int clash = 0;
            for (int j = 0; j < ns; j++)
                if (!strcmp(ings[sel[j]]->path, ings[i]->path)) clash = 1;
            if (clash) continue;
            /* re-check against the database: another photo may have been
             * stored at this path since eng_ingest_begin */
            eng_ingest *ing = ings[i];
            uint64_t old_id;
            int nreg = 0;
            int holds = path_holds(e, ing->path, ing->sha, &old_id, &nreg);
            if (holds == 1) {
                ingest_succeed(ing, old_id, nreg, 1, 0);
                remaining--;
                continue;
            }
            ins[i].replace = holds == 2;
            sel[ns++] = i;
        }
        if (!ns) break;
        /* contiguous copies for one db_put_images call */
        db_image_in batch_in[ns];
        for (int j = 0; j < ns; j++) batch_in[j] = ins[sel[j]];
        rc = db_put_images(e->db, batch_in, ns, ids, rids);
        if (rc && ns > 1) {
            /* isolate the failing photo: one transaction each */
            for (int j = 0; j < ns; j++) {
                int i = sel[j];
                int r1 = db_put_image(e->db, &batch_in[j], &ids[j], rids);
                if (r1) ingest_fail(ings[i], r1, umg_err_msg());
                else ingest_succeed(ings[i], ids[j], ins[i].n_regions, 0, ins[i].replace);
                remaining--;
            }
        } else {
            for (int j = 0; j < ns; j++) {
                int i = sel[j];
                if (rc) ingest_fail(ings[i], rc, umg_err_msg());
                else ingest_succeed(ings[i], ids[j], ins[i].n_regions, 0, ins[i].replace);
                remaining--;
            }
        }
        if (!rc) {
            pthread_mutex_lock(&e->stats_mu);
            e->ingested += (uint64_t)ns;
            e->ingest_batches++;
            pthread_mutex_unlock(&e->stats_mu);
        }
    }
}

int eng_ingest_one(eng *e, const eng_ingest_req *req, eng_ingest_result *out)
{
    memset(out, 0, sizeof *out);
    eng_ingest *ing;
    int rc = eng_ingest_begin(e, req, &ing);
    if (rc) {
        out->rc = rc;
        snprintf(out->msg, sizeof out->msg, "%s", umg_err_msg());
        return rc;
    }
    if (!ing->done && eng_ingest_prepare(e, ing) == 0) eng_ingest_store_batch(e, &ing, 1);
    *out = ing->res;
    eng_ingest_free(ing);
    if (out->rc) umg_err_set(out->rc, "%s", out->msg);
    return out->rc;
}
