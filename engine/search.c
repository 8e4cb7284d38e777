/* search.c - queries (search.h): query vectors of texts and images, the
 * search with its over-fetch, filters and per-photo suppression, heatmaps,
 * and the pixel-level refinement of region hits. */
#include "search.h"
#include "engine_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "enc_image.h"
#include "umg_error.h"

/* "refine": "pixel" (docs/regions.md, "Pixel-level refinement"; chosen on the
 * synthetic world's held-out seed 2000 with bench/regions/refine_experiments.py) */
#define REFINE_HEAT_FRAC 0.5       /* heat mask: 0 at the photo's min + this share of its heat range, 1 at its max */
#define REFINE_WEIGHT 0.5          /* soft IoU's weight, in units of the photo's region-cosine range */

/* ---- filters and boxes ---------------------------------------------------- */

static int filters_any(const eng_filters *f)
{
    return f->path_prefix.ptr || f->n_tags > 0 || f->has_taken_after || f->has_taken_before || f->camera.ptr ||
           f->has_near;
}

static int passes(const eng_filters *f, const db_image *img)
{
    const eng_str *p = &f->path_prefix;
    if (p->ptr && (strlen(img->path) < p->len || memcmp(img->path, p->ptr, p->len))) return 0;
    for (int i = 0; i < f->n_tags; i++) {
        const eng_str *t = &f->tags[i];
        int found = 0;
        for (int j = 0; j < img->n_tags && !found; j++)
            found = strlen(img->tags[j]) == t->len && !memcmp(img->tags[j], t->ptr, t->len);
        if (!found) return 0;
    }
    const db_capture *c = &img->capture;
    if (f->has_taken_after && !eng_taken_passes(c, &f->taken_after, 1)) return 0;
    if (f->has_taken_before && !eng_taken_passes(c, &f->taken_before, 0)) return 0;
    if (f->camera.ptr && !eng_camera_matches(c->camera, f->camera.ptr, f->camera.len)) return 0;
    if (f->has_near && (!c->has_gps || eng_km_between(f->near_lat, f->near_lon, c->lat, c->lon) > f->near_km))
        return 0;
    return 1;
}

/* Whether box b of a photo goes when box a of the same photo, scoring at
 * least as well, is kept: they overlap (IoU) or one mostly contains the
 * other (search.h). */
static int box_suppressed(const float a[4], const float b[4])
{
    enc_box x = {a[0], a[1], a[2], a[3], 0, 0}, y = {b[0], b[1], b[2], b[3], 0, 0};
    if (enc_box_iou(&x, &y) > ENG_REGION_NMS_IOU) return 1;
    double ix = fmin(a[0] + a[2], b[0] + b[2]) - fmax(a[0], b[0]);
    double iy = fmin(a[1] + a[3], b[1] + b[3]) - fmax(a[1], b[1]);
    if (ix <= 0 || iy <= 0) return 0;
    double smaller = fmin((double)a[2] * a[3], (double)b[2] * b[3]);
    return smaller > 0 && ix * iy / smaller > ENG_REGION_CONTAIN;
}

/* ---- heatmaps ------------------------------------------------------------- */

/* heat[G*G] = tok[G*G, D] . q: the query's cosine with every patch token (pixel
 * granularity, and the mask of refine). */
static void heat_of(const eng *e, const float *tok, const float *q, float *heat)
{
    size_t GG = (size_t)e->grid * e->grid, D = (size_t)e->dim;
    for (size_t c = 0; c < GG; c++) {
        double dot = 0;
        for (size_t d = 0; d < D; d++) dot += (double)tok[c * D + d] * q[d];
        heat[c] = (float)dot;
    }
}

static void heatmap(eng *e, eng_hit *h, const float *q)
{
    int rc;
    float *tok = eng_patch_tokens_load(e, h->image_id, &rc);
    if (!tok) return; /* no tokens stored (no_patches): the hit goes without */
    h->heat = malloc((size_t)e->grid * e->grid * sizeof(float));
    if (h->heat) heat_of(e, tok, q, h->heat);
    free(tok);
    enc_preproc_geom g;
    enc_preproc_geometry(&e->pad, (int)h->width, (int)h->height, &g);
    /* where the whole grid lies in original pixels (beyond the photo where padded) */
    h->extent[0] = -(float)g.off_x / g.scale_x;
    h->extent[1] = -(float)g.off_y / g.scale_y;
    h->extent[2] = (float)g.input_w / g.scale_x;
    h->extent[3] = (float)g.input_h / g.scale_y;
}

/* ---- refine --------------------------------------------------------------- */

static double overlap1(double a0, double a1, double b0, double b1)
{
    double lo = a0 > b0 ? a0 : b0, hi = a1 < b1 ? a1 : b1;
    return hi > lo ? hi - lo : 0;
}

/* Cell coverage [G*G] of box: the share of each grid cell under it, the
 * weights enc_region_pool gives the cells before dividing by their sum. */
static void box_cover(const eng *e, const enc_preproc_geom *g, const float box[4], float *cov)
{
    float r[4];
    enc_box_to_grid(g, e->patch_size, box, r);
    for (int i = 0; i < e->grid; i++) {
        double wy = overlap1(r[1], r[3], i, i + 1);
        for (int j = 0; j < e->grid; j++) cov[i * e->grid + j] = (float)(wy * overlap1(r[0], r[2], j, j + 1));
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

/* Re-rank one photo's stored boxes with the query's heatmap over its patch
 * tokens: refined = cosine + REFINE_WEIGHT * (the photo's cosine range) *
 * soft IoU(box cover, heat mask).  Fills out[] (by refined score, boxes
 * a better one suppresses dropped (box_suppressed), and those under
 * min_score) and *n.  *n = -1: the photo has no patch tokens; left as it is. */
static int refine_photo(eng *e, const float *q, const eng_hit *h, const eng_filters *f, refined_box **out, int *n)
{
    *out = NULL;
    *n = -1;
    int rc, nr = 0;
    float *tok = eng_patch_tokens_load(e, h->image_id, &rc);
    if (!tok) return rc == UMG_ENOENT ? 0 : rc;
    db_region *regs = NULL;
    size_t GG = (size_t)e->grid * e->grid, D = (size_t)e->dim;
    float *heat = malloc(GG * 3 * sizeof(float)), *photo = heat + GG, *cov = heat + 2 * GG;
    float *vec = malloc(D * sizeof(float));
    refined_box *rb = NULL;
    rc = heat && vec ? 0 : umg_err_set(UMG_ENOMEM, "out of memory");
    if (!rc) rc = db_list_regions(e->db, h->image_id, &regs, &nr);
    if (!rc && nr > 0 && !(rb = malloc((size_t)nr * sizeof *rb))) rc = umg_err_set(UMG_ENOMEM, "out of memory");
    if (rc || nr <= 0) goto done;

    enc_preproc_geom g;
    enc_preproc_geometry(&e->pad, (int)h->width, (int)h->height, &g);
    const float whole[4] = {0, 0, (float)h->width, (float)h->height};
    box_cover(e, &g, whole, photo);
    double hmax = -INFINITY, hmin = INFINITY;
    heat_of(e, tok, q, heat);
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
        if ((rc = db_get_vector(e->db, DB_KIND_REGION, regs[i].id, vec))) goto done;
        double dot = 0, inter = 0, area = 0;
        for (size_t d = 0; d < D; d++) dot += (double)vec[d] * q[d];
        box_cover(e, &g, regs[i].box, cov);
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
        if (f->has_min_score && rb[i].score < f->min_score) continue;
        int overlap = 0;
        for (int j = 0; j < kept && !overlap; j++) overlap = box_suppressed(rb[j].box, rb[i].box);
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

/* Refine: every photo keeps the places the region search gave it in hits;
 * the boxes in those places become its best boxes by refined score (out of
 * all its stored boxes, not only those the index returned).  A photo with
 * fewer such boxes than places gives up the rest.  *nh may shrink. */
static int refine_hits(eng *e, const float *q, eng_hit *hits, int *nh, const eng_filters *f)
{
    int rc = 0;
    for (int i = 0; !rc && i < *nh; i++) {
        if (hits[i].has_refined) continue; /* a place of a photo already done */
        refined_box *rb;
        int n;
        rc = refine_photo(e, q, &hits[i], f, &rb, &n);
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

/* ---- search --------------------------------------------------------------- */

void eng_hits_free(eng_hits *h)
{
    if (!h) return;
    for (int i = 0; i < h->n; i++) {
        free(h->hits[i].path);
        free(h->hits[i].heat);
    }
    free(h->hits);
    memset(h, 0, sizeof *h);
}

/* The photos that pass a filter, for a search within them: their ids and
 * how many vectors they hold; the scan stops once there are more than
 * ENG_SCAN_MAX (the index is then the faster way). */
typedef struct matching {
    const eng_filters *f;
    uint64_t exclude;
    int regions;             /* count region vectors, not photos */
    uint64_t *ids;
    size_t n, cap;
    uint64_t vectors;
} matching;

static int match_photo(void *ud, const db_image *img)
{
    matching *m = ud;
    if (img->id == m->exclude || !passes(m->f, img)) return 0;
    m->vectors += m->regions ? (uint64_t)img->n_regions : 1;
    if (m->vectors > ENG_SCAN_MAX) return 1; /* too many: stop */
    if (m->n == m->cap) {
        size_t cap = m->cap ? 2 * m->cap : 64;
        uint64_t *p = realloc(m->ids, cap * sizeof *p);
        if (!p) return umg_err_set(UMG_ENOMEM, "out of memory");
        m->ids = p, m->cap = cap;
    }
    m->ids[m->n++] = img->id;
    return 0;
}

/* Each photo's hits so far, for the per-photo rules of region hits: an
 * open-addressing table image id -> its latest hit, hits chained by
 * prev_same (so a candidate is compared with its own photo's boxes only). */
typedef struct photo_table {
    uint64_t *key;
    int *last;               /* hit index of the photo's latest hit */
    int *prev_same;          /* per hit: the same photo's previous hit, -1 none */
    size_t mask;
} photo_table;

static int photos_init(photo_table *t, int need)
{
    size_t cap = 64;
    while (cap < 2 * (size_t)need) cap *= 2;
    t->key = calloc(cap, sizeof *t->key);
    t->last = malloc(cap * sizeof *t->last);
    t->prev_same = malloc((size_t)need * sizeof *t->prev_same);
    t->mask = cap - 1;
    return t->key && t->last && t->prev_same ? 0 : umg_err_set(UMG_ENOMEM, "out of memory");
}

static void photos_free(photo_table *t)
{
    free(t->key);
    free(t->last);
    free(t->prev_same);
}

static void photos_clear(photo_table *t) { memset(t->key, 0, (t->mask + 1) * sizeof *t->key); }

/* The slot of image id (ids are >= 1; key 0 marks an empty slot). */
static size_t photos_slot(const photo_table *t, uint64_t id)
{
    size_t i = (size_t)(id * 0x9E3779B97F4A7C15ull >> 20) & t->mask;
    while (t->key[i] && t->key[i] != id) i = (i + 1) & t->mask;
    return i;
}

static void hits_clear(eng_hit *hits, int *nh)
{
    for (int i = 0; i < *nh; i++) {
        free(hits[i].path);
        free(hits[i].heat);
    }
    memset(hits, 0, (size_t)*nh * sizeof *hits);
    *nh = 0;
}

/* Walk candidates (best first) into hits until need of them: min_score,
 * the excluded photo, the filters and, for region hits, the per-photo rules
 * (at most per_photo boxes of a photo; none a better box suppresses).
 * *last_score: the score of the candidate that made the last hit. */
static int take(eng *e, const eng_search_req *req, int per_photo, const db_hit *cand, int nc, photo_table *pt,
                eng_hit *hits, int *nh, int need, float *last_score)
{
    const eng_filters *f = &req->filters;
    int region = req->granularity == ENG_GRAN_REGION;
    for (int i = 0; i < nc && *nh < need; i++) {
        if (f->has_min_score && cand[i].score < f->min_score) break; /* sorted by score */
        eng_hit h = {.score = cand[i].score};
        size_t slot = 0;
        if (region) {
            db_region r;
            if (db_get_region(e->db, cand[i].id, &r)) continue; /* deleted meanwhile */
            h.region_id = r.id;
            h.image_id = r.image_id;
            memcpy(h.box, r.box, sizeof h.box);
            h.has_box = 1;
            slot = photos_slot(pt, h.image_id);
            int n_same = 0, drop = 0;
            if (pt->key[slot])
                for (int j = pt->last[slot]; j >= 0 && !drop; j = pt->prev_same[j], n_same++)
                    drop = box_suppressed(hits[j].box, h.box);
            if (drop || n_same >= per_photo) continue;
        } else {
            h.image_id = cand[i].id;
        }
        if (h.image_id == req->exclude_image) continue;
        db_image img;
        if (db_get_image(e->db, h.image_id, &img)) continue;
        if (passes(f, &img)) {
            h.path = strdup(img.path);
            h.width = img.width;
            h.height = img.height;
            h.capture = img.capture;
            if (!h.path) {
                db_image_free(&img);
                return umg_err_set(UMG_ENOMEM, "out of memory");
            }
            if (region) {
                pt->prev_same[*nh] = pt->key[slot] ? pt->last[slot] : -1;
                pt->key[slot] = h.image_id;
                pt->last[slot] = *nh;
            }
            hits[(*nh)++] = h;
            *last_score = cand[i].score;
        }
        db_image_free(&img);
    }
    return 0;
}

int eng_search(eng *e, const eng_search_req *req, eng_hits *out)
{
    memset(out, 0, sizeof *out);
    int gran = req->granularity;
    if (req->k < 1 || req->k > ENG_MAX_FETCH || gran < ENG_GRAN_IMAGE || gran > ENG_GRAN_PIXEL)
        return umg_err_set(UMG_EINVAL, "search: k %d, granularity %d", req->k, gran);
    if (req->offset < 0 || req->offset > ENG_MAX_OFFSET || req->per_photo < 0)
        return umg_err_set(UMG_EINVAL, "search: offset %d (0..%d), per_photo %d", req->offset, ENG_MAX_OFFSET,
                           req->per_photo);
    if (req->refine && gran != ENG_GRAN_REGION)
        return umg_err_set(UMG_EINVAL, "search: refine re-ranks region boxes: it needs the region granularity");
    int need = req->offset + req->k, per_photo = req->per_photo ? req->per_photo : ENG_PER_PHOTO_DEFAULT;
    const eng_filters *f = &req->filters;
    int kind = gran == ENG_GRAN_REGION ? DB_KIND_REGION : DB_KIND_IMAGE;
    float *q = malloc((size_t)e->dim * sizeof(float));
    eng_hit *hits = calloc((size_t)need, sizeof *hits);
    photo_table pt = {0};
    db_hit *cand = NULL;
    matching m = {.f = f, .exclude = req->exclude_image, .regions = kind == DB_KIND_REGION};
    int nc = 0, nh = 0, rc = q && hits ? 0 : umg_err_set(UMG_ENOMEM, "out of memory");
    float last = 0;
    if (!rc) rc = photos_init(&pt, need);
    if (rc) goto done;
    memcpy(q, req->query, (size_t)e->dim * sizeof(float));
    enc_l2_normalize(q, e->dim);

    /* A filter that few photos pass: score them all, exactly. */
    if (filters_any(f)) {
        rc = db_scan_images(e->db, match_photo, &m);
        if (rc < 0) goto done;
        if (rc == 0) {
            int all = m.vectors ? (int)m.vectors : 1;
            if (!(cand = malloc((size_t)all * sizeof *cand))) {
                rc = umg_err_set(UMG_ENOMEM, "out of memory");
                goto done;
            }
            if (m.n) rc = db_search_within(e->db, kind, q, m.ids, m.n, cand, all, &nc);
            if (!rc) rc = take(e, req, per_photo, cand, nc, &pt, hits, &nh, need, &last);
            goto refine;
        }
        rc = 0; /* many pass: the index, over-fetching */
    }
    /* Over-fetch from the index, doubling until need hits remain after the
     * filters and the per-photo rules, or the index has no more.  Also while
     * the candidates end level with the last hit: FAISS cuts a run of equal
     * scores (copies of a photo) anywhere, db_search orders a whole run by id,
     * so the pages of one query agree only when the run is whole. */
    uint64_t fetch = (uint64_t)need * (gran == ENG_GRAN_REGION ? 4 : 1) * (filters_any(f) ? 8 : 1) +
                     (req->exclude_image ? 1 : 0);
    if (fetch > ENG_MAX_FETCH) fetch = ENG_MAX_FETCH;
    for (;;) {
        db_hit *more = realloc(cand, fetch * sizeof *cand);
        if (!more) {
            rc = umg_err_set(UMG_ENOMEM, "out of memory");
            break;
        }
        cand = more;
        if ((rc = db_search(e->db, kind, q, NULL, cand, (int)fetch, &nc))) break;
        hits_clear(hits, &nh);
        photos_clear(&pt);
        if ((rc = take(e, req, per_photo, cand, nc, &pt, hits, &nh, need, &last))) break;
        if ((uint64_t)nc < fetch || fetch >= ENG_MAX_FETCH) break;
        if (nh >= need && cand[nc - 1].score < last) break;
        fetch = fetch * 2 > ENG_MAX_FETCH ? ENG_MAX_FETCH : fetch * 2;
    }
refine:
    if (!rc && req->refine) rc = refine_hits(e, q, hits, &nh, f);
    if (!rc) {
        /* the page: hits[offset..] */
        int skip = req->offset < nh ? req->offset : nh;
        for (int i = 0; i < skip; i++) free(hits[i].path);
        memmove(hits, hits + skip, (size_t)(nh - skip) * sizeof *hits);
        nh -= skip;
        if (gran == ENG_GRAN_PIXEL)
            for (int i = 0; i < nh; i++) heatmap(e, &hits[i], q);
    }
done:
    out->hits = hits;
    out->n = nh;
    out->grid = e->grid;
    if (rc) eng_hits_free(out);
    photos_free(&pt);
    free(m.ids);
    free(cand);
    free(q);
    return rc;
}

/* ---- query vectors -------------------------------------------------------- */

int eng_text_vector(eng *e, const char *text, size_t len, float *vec)
{
    /* tokenized on the calling thread (in parallel), encoded batched */
    int32_t ids[ENC_CONTEXT_LENGTH];
    int max_positions = enc_model_config(e->model)->max_positions, n_ids = 0;
    int max_ids = max_positions < ENC_CONTEXT_LENGTH ? max_positions : ENC_CONTEXT_LENGTH;
    int rc = enc_tokenize(enc_model_tokenizer(e->model), text ? text : "", len, ids, max_ids, &n_ids);
    if (rc || eng_qcache_get(e->qcache, ids, n_ids, vec)) return rc;
    rc = eng_lanes_encode(e->lanes, ids, n_ids, vec);
    if (!rc) eng_qcache_put(e->qcache, ids, n_ids, vec);
    return rc;
}

int eng_image_vector(eng *e, const eng_image_query *q, float *vec, uint64_t *exclude)
{
    const float *box = q->box;
    int has_box = q->has_box;
    int rc;
    if (q->by_id) {
        uint64_t id = q->image_id;
        *exclude = has_box ? 0 : id;
        if (!has_box) {
            rc = db_get_vector(e->db, DB_KIND_IMAGE, id, vec);
            if (rc == UMG_ENOENT) return umg_err_set(UMG_ENOENT, "query_image: no image %llu", (unsigned long long)id);
            return rc;
        }
        if (e->cfg.region_mode == ENG_REGION_MODE_CROP)
            return umg_err_set(UMG_EUNSUPPORTED, "query_image: a box on a stored image needs the photo's pixels, "
                                                 "which are not stored, and region mode crop compares crops: send "
                                                 "the photo's bytes with the box");
        db_image img;
        if ((rc = db_get_image(e->db, id, &img)))
            return rc == UMG_ENOENT ? umg_err_set(UMG_ENOENT, "query_image: no image %llu", (unsigned long long)id) : rc;
        enc_preproc_geom g;
        enc_preproc_geometry(&e->pad, (int)img.width, (int)img.height, &g);
        db_image_free(&img);
        float *tok = eng_patch_tokens_load(e, id, &rc);
        if (!tok)
            return rc == UMG_ENOENT ? umg_err_set(UMG_EUNSUPPORTED, "query_image: image %llu has no patch tokens "
                                                                   "stored (server runs with --no-patches)",
                                                  (unsigned long long)id)
                                    : rc;
        /* stored tokens are normalized per token; pooling normalizes them anyway */
        rc = enc_region_pool(tok, e->grid, e->dim, e->patch_size, &g, box, vec);
        free(tok);
        if (rc) return umg_err_set(UMG_EINVAL, "query_image: box is outside the image");
        return 0;
    }
    *exclude = 0;
    enc_image img = {0};
    if ((rc = enc_image_decode(q->data, q->len, ENC_IMAGE_MAX_PIXELS_DEFAULT, &img))) return rc;
    size_t S = (size_t)e->image_size;
    if (has_box && e->cfg.region_mode == ENG_REGION_MODE_CROP) {
        /* the box's crop, encoded as ingest encodes region crops */
        eng_crop c;
        float cut[4];
        rc = eng_crop_make(e, &img, box, cut, &c);
        enc_image_free(&img);
        if (rc == UMG_EINVAL) return umg_err_set(UMG_EINVAL, "query_image: box is outside the image");
        if (rc) return rc;
        float *px = malloc(3 * S * S * sizeof(float));
        if (px) {
            eng_crop_pixels(e, &c, px);
            int i = eng_pool_acquire(&e->runs);
            rc = enc_encode_pixels(e->runs.runs[i], px, 1, vec, NULL);
            eng_pool_release(&e->runs, i);
        } else {
            rc = umg_err_set(UMG_ENOMEM, "out of memory");
        }
        free(px);
        free(c.rgb);
        return rc;
    }
    float *pixels = malloc(3 * S * S * sizeof(float));
    enc_preproc_geom g;
    rc = pixels ? enc_preprocess(&img, &e->pad, pixels) : umg_err_set(UMG_ENOMEM, "out of memory");
    enc_preproc_geometry(&e->pad, img.width, img.height, &g);
    enc_image_free(&img);
    if (!rc) {
        int i = eng_pool_acquire(&e->runs);
        rc = enc_encode_pixels(e->runs.runs[i], pixels, 1, vec, has_box ? e->runs.patches[i] : NULL);
        if (!rc && has_box &&
            enc_region_pool(e->runs.patches[i], e->grid, e->dim, e->patch_size, &g, box, vec))
            rc = umg_err_set(UMG_EINVAL, "query_image: box is outside the image");
        eng_pool_release(&e->runs, i);
    }
    free(pixels);
    return rc;
}
