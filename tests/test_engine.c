/* test_engine.c - the engine (engine/) without a server: ingest into real
 * LMDB + FAISS files in a temporary directory with the fixture model
 * tests/fixtures/clip-tiny, then the search's rules checked against
 * independent computations from the database: filters, per-photo NMS of
 * region hits, heatmaps from the stored float16 patch tokens, refine, the
 * over-fetch, query vectors of stored images and boxes, and the
 * same-path-same-content rule of ingest.  clip-tiny has random weights: these
 * tests check the rules, not meaning (tests/meaning does that). */
#include <ctype.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "enc_image.h"
#include "enc_regions.h"
#include "engine.h"
#include "ingest.h"
#include "search.h"
#include "sync.h"
#include "test_util.h"
#include "umg_error.h"
#include "umg_half.h"

#define MODEL UMG_FIXTURES_DIR "/clip-tiny"
#define IMG(name) UMG_FIXTURES_DIR "/clip-tiny/images/" name

typedef struct photo {
    const char *file, *path;
    const char *tags[2];
    int n_tags;
} photo;

static const photo photos[] = {
    {"astronaut.png", "/a/astronaut.png", {"space"}, 1},
    {"rocket.jpg", "/a/rocket.jpg", {"space", "tall"}, 2},
    {"chelsea.png", "/b/chelsea.png", {"cat"}, 1},
    {"coffee.png", "/b/coffee.png", {0}, 0},
    {"camera.png", "/b/camera.png", {0}, 0},
    {"motorcycle_left.png", "/c/motorcycle.png", {"tall"}, 1},
};
enum { N_PHOTOS = sizeof photos / sizeof photos[0], REGIONS = 8 };

typedef struct fixture {
    char dir[256];
    enc_model *model;
    db_t *db;
    eng *e;
    int dim, grid;
    uint64_t ids[N_PHOTOS];
} fixture;

static uint8_t *read_photo(const char *file, size_t *len)
{
    char path[512];
    snprintf(path, sizeof path, "%s", file);
    uint8_t *b = (uint8_t *)tu_read_file(path, len);
    assert_non_null(b);
    return b;
}

static int ingest_file(eng *e, const char *file, const char *path, const char *const *tags, int n_tags,
                       eng_ingest_result *res)
{
    size_t len;
    uint8_t *b = read_photo(file, &len);
    eng_str t[4];
    for (int i = 0; i < n_tags; i++) t[i] = (eng_str){tags[i], strlen(tags[i])};
    eng_ingest_req r = {.path = path, .data = b, .len = len, .mtime = 1, .tags = t, .n_tags = n_tags};
    int rc = eng_ingest_one(e, &r, res);
    free(b);
    return rc;
}

static void open_engine(fixture *f, int region_mode, int no_patches)
{
    assert_int_equal(enc_model_open(MODEL, &f->model), 0);
    uint8_t fp[32];
    db_options o = eng_db_options(f->model, fp);
    char data[300];
    snprintf(data, sizeof data, "%s/data", f->dir);
    assert_int_equal(db_open(data, &o, &f->db), 0);
    eng_config c = {.region_mode = region_mode, .regions = REGIONS, .batch = 4, .threads = 1,
                    .no_patches = no_patches, .text_lanes = 1};
    assert_int_equal(eng_create(f->model, f->db, &c, &f->e), 0);
    f->dim = eng_dim(f->e);
    f->grid = eng_grid(f->e);
}

static void close_engine(fixture *f)
{
    eng_close(f->e);
    db_close(f->db);
    enc_model_close(f->model);
    f->e = NULL, f->db = NULL, f->model = NULL;
}

static fixture *setup_with(int region_mode, int no_patches)
{
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    assert_non_null(tu_mkdtemp(f->dir, sizeof f->dir, "umg-engine-"));
    open_engine(f, region_mode, no_patches);
    for (int i = 0; i < N_PHOTOS; i++) {
        eng_ingest_result r;
        char file[400];
        snprintf(file, sizeof file, "%s%s", IMG(""), photos[i].file);
        int rc = ingest_file(f->e, file, photos[i].path, photos[i].tags, photos[i].n_tags, &r);
        if (rc) fail_msg("ingest %s: %s", photos[i].file, r.msg);
        assert_false(r.duplicate);
        assert_true(r.regions > 0);
        f->ids[i] = r.image_id;
    }
    return f;
}

static int setup_dense(void **state)
{
    *state = setup_with(ENG_REGION_MODE_DENSE, 0);
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    close_engine(f);
    tu_rm_rf(f->dir);
    free(f);
    return 0;
}

/* A query vector that is not any photo's: the mean of two stored ones plus a
 * little of a third, so that scores spread. */
static void mixed_query(fixture *f, float *q)
{
    float *a = malloc((size_t)f->dim * sizeof *a), *b = malloc((size_t)f->dim * sizeof *b);
    assert_int_equal(db_get_vector(f->db, DB_KIND_IMAGE, f->ids[0], a), 0);
    assert_int_equal(db_get_vector(f->db, DB_KIND_IMAGE, f->ids[2], b), 0);
    for (int d = 0; d < f->dim; d++) q[d] = a[d] + 0.7f * b[d] + 0.05f * (float)((d % 7) - 3);
    free(a);
    free(b);
}

enum { ALL_BOXES = 100000 };

static int search(fixture *f, const float *q, int k, int gran, int refine, const eng_filters *filt, eng_hits *out)
{
    /* every box a photo may show: the per-photo rules of test_region_nms */
    eng_search_req r = {.query = q, .k = k, .granularity = gran, .refine = refine, .per_photo = ALL_BOXES};
    if (filt) r.filters = *filt;
    return eng_search(f->e, &r, out);
}

static const photo *photo_of(fixture *f, uint64_t id)
{
    for (int i = 0; i < N_PHOTOS; i++)
        if (f->ids[i] == id) return &photos[i];
    fail_msg("hit of unknown image %llu", (unsigned long long)id);
    return NULL;
}

static float iou(const float a[4], const float b[4])
{
    double x0 = fmax(a[0], b[0]), y0 = fmax(a[1], b[1]);
    double x1 = fmin(a[0] + a[2], b[0] + b[2]), y1 = fmin(a[1] + a[3], b[1] + b[3]);
    double in = x1 > x0 && y1 > y0 ? (x1 - x0) * (y1 - y0) : 0;
    double u = (double)a[2] * a[3] + (double)b[2] * b[3] - in;
    return u > 0 ? (float)(in / u) : 0;
}

/* Intersection over the smaller box's area: how much one contains the other. */
static double containment(const float a[4], const float b[4])
{
    double x0 = fmax(a[0], b[0]), y0 = fmax(a[1], b[1]);
    double x1 = fmin(a[0] + a[2], b[0] + b[2]), y1 = fmin(a[1] + a[3], b[1] + b[3]);
    double in = x1 > x0 && y1 > y0 ? (x1 - x0) * (y1 - y0) : 0;
    return in / fmin((double)a[2] * a[3], (double)b[2] * b[3]);
}

/* The documented rule for two boxes of one photo (search.h). */
static int suppressed(const float a[4], const float b[4])
{
    return iou(a, b) > ENG_REGION_NMS_IOU || containment(a, b) > ENG_REGION_CONTAIN;
}

/* Image hits: sorted, each photo once, the photo's own record (path, size). */
static void test_image_hits(void **state)
{
    fixture *f = *state;
    float q[512];
    mixed_query(f, q);
    eng_hits h;
    assert_int_equal(search(f, q, 10, ENG_GRAN_IMAGE, 0, NULL, &h), 0);
    assert_int_equal(h.n, N_PHOTOS);
    for (int i = 0; i < h.n; i++) {
        const photo *p = photo_of(f, h.hits[i].image_id);
        assert_string_equal(h.hits[i].path, p->path);
        db_image img;
        assert_int_equal(db_get_image(f->db, h.hits[i].image_id, &img), 0);
        assert_int_equal(h.hits[i].width, img.width);
        assert_int_equal(h.hits[i].height, img.height);
        assert_true(img.width > 0 && img.height > 0);
        db_image_free(&img);
        assert_false(h.hits[i].has_box);
        assert_null(h.hits[i].heat);
        if (i) assert_true(h.hits[i - 1].score >= h.hits[i].score);
        for (int j = 0; j < i; j++) assert_true(h.hits[j].image_id != h.hits[i].image_id);
    }
    eng_hits_free(&h);
    /* k cuts the list */
    assert_int_equal(search(f, q, 2, ENG_GRAN_IMAGE, 0, NULL, &h), 0);
    assert_int_equal(h.n, 2);
    eng_hits_free(&h);
}

/* Filters: each keeps exactly the unfiltered hits that pass it, in order. */
static void test_filters(void **state)
{
    fixture *f = *state;
    float q[512];
    mixed_query(f, q);
    eng_hits all, h;
    assert_int_equal(search(f, q, 10, ENG_GRAN_IMAGE, 0, NULL, &all), 0);

    eng_filters pf = {.path_prefix = {"/b/", 3}};
    assert_int_equal(search(f, q, 10, ENG_GRAN_IMAGE, 0, &pf, &h), 0);
    int want = 0;
    for (int i = 0; i < all.n; i++)
        if (!strncmp(all.hits[i].path, "/b/", 3)) {
            assert_true(want < h.n);
            assert_int_equal(h.hits[want].image_id, all.hits[i].image_id);
            want++;
        }
    assert_int_equal(h.n, want);
    assert_int_equal(want, 3);
    eng_hits_free(&h);

    eng_str space_tall[2] = {{"space", 5}, {"tall", 4}};
    eng_filters tf = {.tags = space_tall, .n_tags = 1};
    assert_int_equal(search(f, q, 10, ENG_GRAN_IMAGE, 0, &tf, &h), 0);
    assert_int_equal(h.n, 2); /* astronaut, rocket */
    for (int i = 0; i < h.n; i++) assert_true(!strncmp(h.hits[i].path, "/a/", 3));
    eng_hits_free(&h);
    tf.n_tags = 2; /* every tag must match: the rocket only */
    assert_int_equal(search(f, q, 10, ENG_GRAN_IMAGE, 0, &tf, &h), 0);
    assert_int_equal(h.n, 1);
    assert_string_equal(h.hits[0].path, "/a/rocket.jpg");
    eng_hits_free(&h);
    eng_str part = {"spac", 4}; /* a tag matches whole, not as a prefix */
    eng_filters pt = {.tags = &part, .n_tags = 1};
    assert_int_equal(search(f, q, 10, ENG_GRAN_IMAGE, 0, &pt, &h), 0);
    assert_int_equal(h.n, 0);
    eng_hits_free(&h);

    /* min_score: the unfiltered list cut where scores fall below it */
    double cut = (all.hits[1].score + all.hits[2].score) / 2;
    eng_filters mf = {.has_min_score = 1, .min_score = cut};
    assert_int_equal(search(f, q, 10, ENG_GRAN_IMAGE, 0, &mf, &h), 0);
    assert_int_equal(h.n, 2);
    for (int i = 0; i < h.n; i++) assert_int_equal(h.hits[i].image_id, all.hits[i].image_id);
    eng_hits_free(&h);
    eng_hits_free(&all);
}

/* Region hits with every box a photo may show (per_photo large): the greedy
 * per-photo suppression over the region ranking (overlap or containment),
 * recomputed here from every stored region's cosine with the query; by
 * default (per_photo 0 = 1) each photo's best box only; per_photo 2 the first
 * two boxes the rule keeps of each photo. */
static void test_region_nms(void **state)
{
    fixture *f = *state;
    float q[512];
    mixed_query(f, q);
    db_hit cand[N_PHOTOS * REGIONS];
    float qn[512];
    memcpy(qn, q, sizeof(float) * (size_t)f->dim);
    enc_l2_normalize(qn, f->dim);
    int nc;
    assert_int_equal(db_search(f->db, DB_KIND_REGION, qn, NULL, cand, N_PHOTOS * REGIONS, &nc), 0);
    assert_true(nc > N_PHOTOS);
    /* the oracle: walk the ranking, keep a box unless a kept box of its photo suppresses it */
    db_region kept[N_PHOTOS * REGIONS];
    int nk = 0, contained_only = 0;
    for (int i = 0; i < nc; i++) {
        db_region r;
        assert_int_equal(db_get_region(f->db, cand[i].id, &r), 0);
        int drop = 0;
        for (int j = 0; j < nk && !drop; j++) {
            drop = kept[j].image_id == r.image_id && suppressed(kept[j].box, r.box);
            contained_only |= drop && iou(kept[j].box, r.box) <= ENG_REGION_NMS_IOU;
        }
        if (!drop) kept[nk++] = r;
    }
    assert_true(contained_only); /* the containment rule had something to do */
    int k = nk < 12 ? nk : 12;
    eng_hits h;
    assert_int_equal(search(f, q, k, ENG_GRAN_REGION, 0, NULL, &h), 0);
    assert_int_equal(h.n, k);
    int overlapping_dropped = nk < nc; /* the rule had something to do */
    assert_true(overlapping_dropped);
    for (int i = 0; i < h.n; i++) {
        assert_true(h.hits[i].has_box);
        assert_int_equal(h.hits[i].region_id, kept[i].id);
        assert_int_equal(h.hits[i].image_id, kept[i].image_id);
        assert_memory_equal(h.hits[i].box, kept[i].box, sizeof kept[i].box);
        for (int j = 0; j < i; j++)
            if (h.hits[j].image_id == h.hits[i].image_id) assert_false(suppressed(h.hits[j].box, h.hits[i].box));
    }
    eng_hits_free(&h);

    /* per_photo 1 (the default) and 2: the oracle's boxes, at most that many per photo */
    for (int per = 0; per <= 2; per++) {
        eng_search_req r = {.query = q, .k = 12, .granularity = ENG_GRAN_REGION, .per_photo = per};
        assert_int_equal(eng_search(f->e, &r, &h), 0);
        int cap = per ? per : 1, w = 0, shown[N_PHOTOS] = {0};
        for (int i = 0; i < nk && w < 12; i++) {
            int p = (int)(photo_of(f, kept[i].image_id) - photos);
            if (shown[p] == cap) continue;
            shown[p]++;
            assert_true(w < h.n);
            assert_int_equal(h.hits[w].region_id, kept[i].id);
            w++;
        }
        assert_int_equal(h.n, w);
        assert_int_equal(w, cap == 1 ? N_PHOTOS : 12);
        eng_hits_free(&h);
    }
}

/* Pixel granularity: the heatmap is the normalized query's dot product with
 * every stored (float16) patch token; the extent is where the grid lies. */
static void test_heatmap(void **state)
{
    fixture *f = *state;
    float q[512], qn[512];
    mixed_query(f, q);
    memcpy(qn, q, sizeof(float) * (size_t)f->dim);
    enc_l2_normalize(qn, f->dim);
    eng_hits h;
    assert_int_equal(search(f, q, N_PHOTOS, ENG_GRAN_PIXEL, 0, NULL, &h), 0);
    assert_int_equal(h.n, N_PHOTOS);
    assert_int_equal(h.grid, f->grid);
    size_t GG = (size_t)f->grid * f->grid;
    int non_square = 0;
    for (int i = 0; i < h.n; i++) {
        const eng_hit *x = &h.hits[i];
        assert_non_null(x->heat);
        void *blob;
        size_t len;
        assert_int_equal(db_get_extra(f->db, x->image_id, "patch_tokens", &blob, &len), 0);
        assert_int_equal(len, GG * (size_t)f->dim * 2);
        const uint8_t *b = blob;
        for (size_t c = 0; c < GG; c++) {
            double dot = 0;
            for (int d = 0; d < f->dim; d++) {
                size_t at = 2 * (c * (size_t)f->dim + (size_t)d);
                dot += (double)umg_f16_to_f32((uint16_t)(b[at] | b[at + 1] << 8)) * qn[d];
            }
            assert_float_equal(x->heat[c], dot, 1e-5);
        }
        free(blob);
        /* the grid covers the photo: its padding, if any, lies outside the photo */
        assert_true(x->extent[0] <= 0.01f && x->extent[1] <= 0.01f);
        assert_true(x->extent[0] + x->extent[2] >= (float)x->width - 0.01f);
        assert_true(x->extent[1] + x->extent[3] >= (float)x->height - 0.01f);
        if (x->width == x->height) {
            assert_float_equal(x->extent[0], 0, 1e-3);
            assert_float_equal(x->extent[2], x->width, 1e-3);
        } else {
            non_square = 1;
            assert_true(x->extent[0] < -0.5f || x->extent[1] < -0.5f);
        }
    }
    assert_true(non_square);
    eng_hits_free(&h);
}

/* Refine: the photos keep the places of the region search; within a photo
 * its boxes come by refined score (score + a non-negative agreement),
 * overlap-suppressed; without the region granularity it is refused. */
static void test_refine(void **state)
{
    fixture *f = *state;
    float q[512];
    mixed_query(f, q);
    eng_hits plain, ref;
    assert_int_equal(search(f, q, 10, ENG_GRAN_REGION, 0, NULL, &plain), 0);
    assert_int_equal(search(f, q, 10, ENG_GRAN_REGION, 1, NULL, &ref), 0);
    assert_true(ref.n > 0 && ref.n <= plain.n);
    int agreed = 0, p = 0;
    for (int i = 0; i < ref.n; i++) {
        const eng_hit *x = &ref.hits[i];
        assert_int_equal(x->has_refined, 1);
        assert_true(x->refined >= x->score - 1e-6f);
        /* its place is one of the photo's places in the plain list, in order */
        while (p < plain.n && plain.hits[p].image_id != x->image_id) p++;
        assert_true(p < plain.n);
        agreed |= x->refined > x->score + 1e-4f; /* the box overlaps the photo's heat mask */
        p++;
        for (int j = 0; j < i; j++)
            if (ref.hits[j].image_id == x->image_id) {
                assert_true(ref.hits[j].refined >= x->refined);
                assert_false(suppressed(ref.hits[j].box, x->box));
            }
        /* the score is the box's own cosine with the query */
        float v[512], qn[512];
        memcpy(qn, q, sizeof(float) * (size_t)f->dim);
        enc_l2_normalize(qn, f->dim);
        assert_int_equal(db_get_vector(f->db, DB_KIND_REGION, x->region_id, v), 0);
        double dot = 0;
        for (int d = 0; d < f->dim; d++) dot += (double)v[d] * qn[d];
        assert_float_equal(x->score, dot, 1e-5);
    }
    assert_true(agreed);
    eng_hits_free(&plain);
    eng_hits_free(&ref);
    assert_int_equal(search(f, q, 10, ENG_GRAN_IMAGE, 1, NULL, &ref), UMG_EINVAL);
    assert_int_equal(search(f, q, 0, ENG_GRAN_IMAGE, 0, NULL, &ref), UMG_EINVAL);
}

/* Over-fetch: a filter that passes one photo among many still finds it with
 * k = 1 (the index is asked for more than k). */
static void test_overfetch(void **state)
{
    fixture *f = *state;
    float q[512];
    mixed_query(f, q);
    eng_hits all, h;
    assert_int_equal(search(f, q, N_PHOTOS, ENG_GRAN_IMAGE, 0, NULL, &all), 0);
    const char *last = all.hits[all.n - 1].path; /* the worst photo for this query */
    eng_filters pf = {.path_prefix = {last, strlen(last)}};
    assert_int_equal(search(f, q, 1, ENG_GRAN_IMAGE, 0, &pf, &h), 0);
    assert_int_equal(h.n, 1);
    assert_string_equal(h.hits[0].path, last);
    eng_hits_free(&h);
    eng_hits_free(&all);
}

/* Query vectors: a stored image queries as its own vector and is left out;
 * a box of it as the pooled tokens; the bytes of the photo as the same photo
 * (it is the top hit when not excluded). */
static void test_image_vectors(void **state)
{
    fixture *f = *state;
    float v[512], stored[512];
    uint64_t exclude = 0;
    eng_image_query byid = {.by_id = 1, .image_id = f->ids[2]};
    assert_int_equal(eng_image_vector(f->e, &byid, v, &exclude), 0);
    assert_int_equal(exclude, f->ids[2]);
    assert_int_equal(db_get_vector(f->db, DB_KIND_IMAGE, f->ids[2], stored), 0);
    assert_memory_equal(v, stored, sizeof(float) * (size_t)f->dim);
    eng_search_req r = {.query = v, .k = N_PHOTOS, .granularity = ENG_GRAN_IMAGE, .exclude_image = exclude};
    eng_hits h;
    assert_int_equal(eng_search(f->e, &r, &h), 0);
    assert_int_equal(h.n, N_PHOTOS - 1);
    for (int i = 0; i < h.n; i++) assert_true(h.hits[i].image_id != f->ids[2]);
    eng_hits_free(&h);

    size_t len;
    uint8_t *b = read_photo(IMG("chelsea.png"), &len);
    eng_image_query bytes = {.data = b, .len = len};
    assert_int_equal(eng_image_vector(f->e, &bytes, v, &exclude), 0);
    assert_int_equal(exclude, 0);
    double dot = 0;
    for (int d = 0; d < f->dim; d++) dot += (double)v[d] * stored[d];
    assert_true(dot > 0.999); /* the stored vector went through float16 */

    /* a box: of the stored tokens (by id) and of the decoded bytes agree */
    float vb[512];
    byid.has_box = bytes.has_box = 1;
    float box[4] = {40, 30, 120, 100};
    memcpy(byid.box, box, sizeof box);
    memcpy(bytes.box, box, sizeof box);
    assert_int_equal(eng_image_vector(f->e, &byid, v, &exclude), 0);
    assert_int_equal(exclude, 0);
    assert_int_equal(eng_image_vector(f->e, &bytes, vb, &exclude), 0);
    double c = 0, na = 0, nb = 0;
    for (int d = 0; d < f->dim; d++) c += (double)v[d] * vb[d], na += (double)v[d] * v[d], nb += (double)vb[d] * vb[d];
    assert_true(c / sqrt(na * nb) > 0.999);
    float outside[4] = {5000, 5000, 10, 10};
    memcpy(bytes.box, outside, sizeof outside);
    assert_int_equal(eng_image_vector(f->e, &bytes, vb, &exclude), UMG_EINVAL);
    free(b);
    eng_image_query none = {.by_id = 1, .image_id = 999999};
    assert_int_equal(eng_image_vector(f->e, &none, v, &exclude), UMG_ENOENT);
}

/* Text vectors through the lanes equal the encoder's own encoding. */
static void test_text_vector(void **state)
{
    fixture *f = *state;
    float v[512], want[512];
    assert_int_equal(eng_text_vector(f->e, "a photo of a cat", 16, v), 0);
    enc_run *run;
    assert_int_equal(enc_run_create(f->model, 1, &run), 0);
    assert_int_equal(enc_encode_text(run, "a photo of a cat", 16, want, NULL, NULL), 0);
    enc_run_close(run);
    for (int d = 0; d < f->dim; d++) assert_float_equal(v[d], want[d], 1e-5);
    eng_stats st;
    eng_stats_get(f->e, &st);
    assert_int_equal(st.texts, 1);
    assert_int_equal(st.n_lanes, 1);
    assert_int_equal(st.lanes[0].texts, 1);
    assert_int_equal(st.ingested, N_PHOTOS);
}

/* The query cache through eng_text_vector: texts that tokenize alike ("A  Dog",
 * "a dog") share an entry; a hit skips the text tower (its count stays) and
 * hands back the very vector the tower made; another text misses. */
static void test_query_cache(void **state)
{
    fixture *f = *state;
    eng_close(f->e);
    eng_config c = {.region_mode = ENG_REGION_MODE_DENSE, .regions = REGIONS, .batch = 4, .threads = 1,
                    .text_lanes = 1, .query_cache = 2};
    assert_int_equal(eng_create(f->model, f->db, &c, &f->e), 0);
    float first[512], again[512], other[512];
    assert_int_equal(eng_text_vector(f->e, "A  Dog", 6, first), 0);
    memset(again, 0, sizeof again);
    assert_int_equal(eng_text_vector(f->e, "a dog", 5, again), 0);
    assert_memory_equal(first, again, (size_t)f->dim * sizeof(float));
    assert_int_equal(eng_text_vector(f->e, "a cat", 5, other), 0);
    assert_memory_not_equal(first, other, (size_t)f->dim * sizeof(float));
    eng_stats st;
    eng_stats_get(f->e, &st);
    assert_int_equal(st.texts, 2);          /* the tower ran for "A  Dog" and "a cat" only */
    assert_int_equal(st.query_cache.hits, 1);
    assert_int_equal(st.query_cache.misses, 2);
    assert_int_equal(st.query_cache.entries, 2);
    assert_int_equal(st.query_cache.capacity, 2);
    /* off (0, the engine's default): every text through the tower */
    eng_close(f->e);
    c.query_cache = 0;
    assert_int_equal(eng_create(f->model, f->db, &c, &f->e), 0);
    assert_int_equal(eng_text_vector(f->e, "a dog", 5, again), 0);
    assert_int_equal(eng_text_vector(f->e, "a dog", 5, again), 0);
    eng_stats_get(f->e, &st);
    assert_int_equal(st.texts, 2);
    assert_int_equal(st.query_cache.hits + st.query_cache.misses, 0);
    c.query_cache = -1;
    eng *bad = NULL;
    assert_int_equal(eng_create(f->model, f->db, &c, &bad), UMG_EINVAL);
    assert_null(bad);
}

/* The same path with the same bytes is a duplicate (nothing stored); with
 * other bytes it replaces the photo. */
static void test_same_path_rule(void **state)
{
    fixture *f = *state;
    eng_ingest_result r;
    const char *none[1] = {0};
    assert_int_equal(ingest_file(f->e, IMG("chelsea.png"), "/b/chelsea.png", none, 0, &r), 0);
    assert_true(r.duplicate);
    assert_false(r.replaced);
    assert_int_equal(r.image_id, f->ids[2]);
    db_image img;
    assert_int_equal(db_get_image(f->db, f->ids[2], &img), 0);
    assert_int_equal(r.regions, img.n_regions);
    db_image_free(&img);
    /* other bytes at that path */
    assert_int_equal(ingest_file(f->e, IMG("coffee.png"), "/b/chelsea.png", none, 0, &r), 0);
    assert_false(r.duplicate);
    assert_true(r.replaced);
    assert_true(r.image_id != f->ids[2]);
    assert_int_equal(db_get_image(f->db, f->ids[2], &img), UMG_ENOENT);
    uint64_t id;
    assert_int_equal(db_find_path(f->db, "/b/chelsea.png", &id), 0);
    assert_int_equal(id, r.image_id);
    f->ids[2] = r.image_id;
    /* two photos for one path in one batch: the second is a duplicate of the first */
    size_t len;
    uint8_t *b = read_photo(IMG("rocket.jpg"), &len);
    eng_ingest_req req = {.path = "/d/twice.jpg", .data = b, .len = len};
    eng_ingest *x[2];
    for (int i = 0; i < 2; i++) {
        assert_int_equal(eng_ingest_begin(f->e, &req, &x[i]), 0);
        assert_false(eng_ingest_done(x[i]));
        assert_int_equal(eng_ingest_prepare(f->e, x[i]), 0);
    }
    eng_ingest_store_batch(f->e, x, 2);
    const eng_ingest_result *r0 = eng_ingest_result_of(x[0]), *r1 = eng_ingest_result_of(x[1]);
    assert_int_equal(r0->rc, 0);
    assert_int_equal(r1->rc, 0);
    assert_false(r0->duplicate);
    assert_true(r1->duplicate);
    assert_int_equal(r0->image_id, r1->image_id);
    eng_ingest_free(x[0]);
    eng_ingest_free(x[1]);
    free(b);
    /* an undecodable photo fails alone, with the decoder's code */
    const uint8_t junk[] = "not a photo";
    eng_ingest_req bad = {.path = "/d/junk.jpg", .data = junk, .len = sizeof junk};
    assert_true(eng_ingest_one(f->e, &bad, &r) < 0);
    assert_true(r.rc < 0);
    assert_true(strlen(r.msg) > 0);
}

/* ---- folders that change (engine/sync.h) ---- */

/* Listing by path prefix, paged; re-pathing keeps the id, vectors and
 * regions; re-pathing onto an occupied path replaces that image (gone from
 * LMDB and the index). */
static void test_list_and_move(void **state)
{
    fixture *f = *state;
    db_image page[8];
    int n;
    uint64_t next;
    assert_int_equal(eng_list_prefix(f->e, "/b/", 0, 8, page, &n, &next), 0);
    assert_int_equal(n, 3);
    assert_int_equal(next, 0);
    for (int i = 0; i < n; i++) {
        assert_int_equal(page[i].id, f->ids[2 + i]);   /* id order */
        assert_string_equal(page[i].path, photos[2 + i].path);
        db_image_free(&page[i]);
    }
    /* one at a time: every page holds at most one, the pages together all three */
    uint64_t after = 0, seen[4];
    int total = 0, pages = 0;
    do {
        assert_int_equal(eng_list_prefix(f->e, "/b/", after, 1, page, &n, &next), 0);
        assert_true(n <= 1);
        for (int i = 0; i < n; i++) seen[total++] = page[i].id, db_image_free(&page[i]);
        after = next;
        pages++;
    } while (next && pages < 20);
    assert_int_equal(total, 3);
    for (int i = 0; i < 3; i++) assert_int_equal(seen[i], f->ids[2 + i]);
    assert_int_equal(eng_list_prefix(f->e, "/nowhere/", 0, 8, page, &n, &next), 0);
    assert_int_equal(n, 0);
    /* the scan bound: one record looked at per call, so the first pages (the
     * /a/ photos) hold nothing yet say where to go on */
    after = 0, total = 0, pages = 0;
    int empty_pages = 0;
    do {
        assert_int_equal(db_list_path_prefix(f->db, "/b/", after, 8, 1, page, &n, &next), 0);
        assert_true(n <= 1);
        if (!n && next) empty_pages++;
        for (int i = 0; i < n; i++) seen[total++] = page[i].id, db_image_free(&page[i]);
        after = next;
        pages++;
    } while (next && pages < 20);
    assert_int_equal(total, 3);
    assert_int_equal(empty_pages, 2);   /* /a/astronaut.png, /a/rocket.jpg */

    /* re-path chelsea: same id, vectors and regions; the old path is free */
    uint64_t cat = f->ids[2], replaced = 99;
    db_image before, after_img;
    assert_int_equal(db_get_image(f->db, cat, &before), 0);
    float *v0 = malloc((size_t)f->dim * sizeof *v0), *v1 = malloc((size_t)f->dim * sizeof *v1);
    assert_int_equal(db_get_vector(f->db, DB_KIND_IMAGE, cat, v0), 0);
    assert_int_equal(eng_move(f->e, cat, "/b/sub/cat.png", 77, &replaced), 0);
    assert_int_equal(replaced, 0);
    assert_int_equal(db_get_image(f->db, cat, &after_img), 0);
    assert_string_equal(after_img.path, "/b/sub/cat.png");
    assert_int_equal(after_img.mtime, 77);
    assert_memory_equal(after_img.sha256, before.sha256, 32);
    assert_int_equal(after_img.n_regions, before.n_regions);
    assert_int_equal(after_img.n_tags, 1);
    assert_string_equal(after_img.tags[0], "cat");
    assert_int_equal(after_img.ingest_time, before.ingest_time);
    db_image_free(&before);
    db_image_free(&after_img);
    assert_int_equal(db_get_vector(f->db, DB_KIND_IMAGE, cat, v1), 0);
    assert_memory_equal(v0, v1, (size_t)f->dim * sizeof *v0);
    uint64_t id;
    assert_int_equal(db_find_path(f->db, "/b/chelsea.png", &id), UMG_ENOENT);
    assert_int_equal(db_find_path(f->db, "/b/sub/cat.png", &id), 0);
    assert_int_equal(id, cat);
    /* mtime 0 keeps it */
    assert_int_equal(eng_move(f->e, cat, "/b/sub/cat2.png", 0, NULL), 0);
    assert_int_equal(db_get_image(f->db, cat, &after_img), 0);
    assert_int_equal(after_img.mtime, 77);
    db_image_free(&after_img);

    /* onto camera's path: camera is replaced, gone from LMDB and from searches */
    uint64_t camera = f->ids[4], coffee = f->ids[3];
    assert_int_equal(db_get_vector(f->db, DB_KIND_IMAGE, camera, v0), 0);
    assert_int_equal(eng_move(f->e, coffee, "/b/camera.png", 0, &replaced), 0);
    assert_int_equal(replaced, camera);
    assert_int_equal(db_get_image(f->db, camera, &after_img), UMG_ENOENT);
    assert_int_equal(db_find_path(f->db, "/b/camera.png", &id), 0);
    assert_int_equal(id, coffee);
    db_hit hits[N_PHOTOS];
    assert_int_equal(db_search(f->db, DB_KIND_IMAGE, v0, NULL, hits, N_PHOTOS, &n), 0);
    assert_int_equal(n, N_PHOTOS - 1);
    for (int i = 0; i < n; i++) assert_true(hits[i].id != camera);
    assert_int_equal(eng_list_prefix(f->e, "/b/", 0, 8, page, &n, &next), 0);
    assert_int_equal(n, 2);
    for (int i = 0; i < n; i++) db_image_free(&page[i]);
    /* moving onto its own path changes nothing; an unknown id is not found */
    assert_int_equal(eng_move(f->e, coffee, "/b/camera.png", 0, &replaced), 0);
    assert_int_equal(replaced, 0);
    assert_int_equal(eng_move(f->e, 123456, "/b/x.png", 0, NULL), UMG_ENOENT);
    assert_true(eng_move(f->e, coffee, "", 0, NULL) < 0);
    free(v0);
    free(v1);
}

/* The plan's rules over made-up listings: a file's content is the first
 * byte of its hash (a table), "exists" is a set of paths. */
typedef struct fake_fs {
    const char *const *paths;   /* content code per path */
    const int *content;
    int n;
    const char *const *present; /* extra paths that exist without being listed */
    int n_present;
    int hashes;
} fake_fs;

static int fake_hash(void *ud, const char *path, uint8_t out[32])
{
    fake_fs *fs = ud;
    fs->hashes++;
    memset(out, 0, 32);
    for (int i = 0; i < fs->n; i++)
        if (!strcmp(fs->paths[i], path)) {
            out[0] = (uint8_t)fs->content[i];
            return fs->content[i] ? 0 : UMG_EIO;   /* content 0: unreadable */
        }
    fail_msg("hash of unlisted %s", path);
    return UMG_EIO;
}

static int fake_exists(void *ud, const char *path)
{
    fake_fs *fs = ud;
    for (int i = 0; i < fs->n_present; i++)
        if (!strcmp(fs->present[i], path)) return 1;
    return 0;
}

static const eng_sync_step *step_of_file(const eng_sync_plan *p, long file)
{
    for (size_t i = 0; i < p->n; i++)
        if (p->steps[i].file == file) return &p->steps[i];
    fail_msg("no step for file %ld", file);
    return NULL;
}

static void test_sync_plan(void **state)
{
    (void)state;
    /* on disk now */
    static const char *const dpaths[] = {
        "/p/same.jpg",     /* 0 stored, same size+mtime: unchanged, not read */
        "/p/touched.jpg",  /* 1 stored, mtime differs, same content: unchanged */
        "/p/edited.jpg",   /* 2 stored, other content: changed */
        "/p/new.jpg",      /* 3 not stored, new content: added */
        "/p/sub/moved.jpg",/* 4 content of gone /p/old.jpg: moved */
        "/p/copy.jpg",     /* 5 content of same.jpg (still there): added, a duplicate */
        "/p/over.jpg",     /* 6 stored (other content); now the content of gone /p/renamed.jpg: moved over it */
        "/p/twin1.jpg",    /* 7, 8: content 9, two gone images have it: two moves */
        "/p/twin2.jpg",
        "/p/twin3.jpg",    /* 9: content 9 a third time, nothing gone left: added */
        "/p/unread.jpg",   /* 10 not stored, cannot be read: added (sent; fails where it is sent) */
    };
    static const int content[] = {1, 2, 30, 4, 5, 1, 6, 9, 9, 9, 0};
    enum { ND = sizeof dpaths / sizeof dpaths[0] };
    eng_sync_file files[ND];
    for (int i = 0; i < ND; i++) files[i] = (eng_sync_file){dpaths[i], 100, 1000};
    files[1].mtime = 2000;
    files[2].size = 200;
    files[6].size = 300;
    /* stored */
    static const struct { const char *path; int content; } st[] = {
        {"/p/same.jpg", 1}, {"/p/touched.jpg", 2}, {"/p/edited.jpg", 3},
        {"/p/old.jpg", 5},          /* 3 gone: moved to sub/moved.jpg */
        {"/p/over.jpg", 7},         /* 4 */
        {"/p/renamed.jpg", 6},      /* 5 gone: moved onto over.jpg */
        {"/p/deleted.jpg", 8},      /* 6 gone: removed */
        {"/p/notaphoto.jpg", 8},    /* 7 not listed but exists: kept */
        {"/p/t1.jpg", 9}, {"/p/t2.jpg", 9},   /* 8, 9 gone twins */
    };
    enum { NS = sizeof st / sizeof st[0] };
    eng_sync_stored stored[NS];
    for (int i = 0; i < NS; i++) {
        stored[i] = (eng_sync_stored){.id = 100 + (uint64_t)i, .path = st[i].path, .size = 100, .mtime = 1000};
        stored[i].sha256[0] = (uint8_t)st[i].content;
    }
    static const char *const present[] = {"/p/notaphoto.jpg"};
    fake_fs fs = {dpaths, content, ND, present, 1, 0};
    eng_sync_io io = {fake_hash, fake_exists, &fs};
    eng_sync_plan p;
    assert_int_equal(eng_sync_plan_make(files, ND, stored, NS, &io, &p), 0);
    assert_int_equal(step_of_file(&p, 0)->action, ENG_SYNC_UNCHANGED);
    assert_int_equal(step_of_file(&p, 1)->action, ENG_SYNC_UNCHANGED);
    assert_int_equal(step_of_file(&p, 2)->action, ENG_SYNC_CHANGE);
    assert_int_equal(step_of_file(&p, 2)->stored, 2);
    assert_int_equal(step_of_file(&p, 3)->action, ENG_SYNC_ADD);
    assert_int_equal(step_of_file(&p, 4)->action, ENG_SYNC_MOVE);
    assert_int_equal(step_of_file(&p, 4)->stored, 3);
    assert_int_equal(step_of_file(&p, 5)->action, ENG_SYNC_ADD);
    assert_int_equal(step_of_file(&p, 6)->action, ENG_SYNC_MOVE);
    assert_int_equal(step_of_file(&p, 6)->stored, 5);
    assert_int_equal(step_of_file(&p, 7)->action, ENG_SYNC_MOVE);
    assert_int_equal(step_of_file(&p, 8)->action, ENG_SYNC_MOVE);
    assert_true(step_of_file(&p, 7)->stored != step_of_file(&p, 8)->stored);
    assert_true(step_of_file(&p, 7)->stored >= 8 && step_of_file(&p, 8)->stored >= 8);
    assert_int_equal(step_of_file(&p, 9)->action, ENG_SYNC_ADD);
    assert_int_equal(step_of_file(&p, 10)->action, ENG_SYNC_ADD);
    /* the one removal: deleted.jpg; not notaphoto.jpg (exists), not the moved ones */
    int removes = 0;
    for (size_t i = 0; i < p.n; i++)
        if (p.steps[i].action == ENG_SYNC_REMOVE) {
            removes++;
            assert_int_equal(p.steps[i].stored, 6);
            assert_int_equal(p.steps[i].file, -1);
        }
    assert_int_equal(removes, 1);
    assert_int_equal(p.unchanged, 2);
    assert_int_equal(p.changed, 1);
    assert_int_equal(p.added, 4);
    assert_int_equal(p.moved, 4);
    assert_int_equal(p.removed, 1);
    /* same.jpg was never read: every file but it was hashed */
    assert_int_equal(fs.hashes, ND - 1);
    assert_int_equal(p.hashed, ND - 1);
    eng_sync_plan_free(&p);

    /* nothing changed: nothing hashed, nothing to do */
    fs.hashes = 0;
    assert_int_equal(eng_sync_plan_make(files, 1, stored, 1, &io, &p), 0);
    assert_int_equal(p.n, 1);
    assert_int_equal(p.unchanged, 1);
    assert_int_equal(fs.hashes, 0);
    eng_sync_plan_free(&p);
    /* an empty folder: everything stored is removed */
    assert_int_equal(eng_sync_plan_make(NULL, 0, stored, 3, &io, &p), 0);
    assert_int_equal(p.removed, 3);
    eng_sync_plan_free(&p);
}

/* Without patch tokens: no heatmaps, refine leaves boxes as they are, and a
 * box on a stored image is refused. */
static void test_no_patches(void **state)
{
    fixture *f = setup_with(ENG_REGION_MODE_DENSE, 1);
    float q[512];
    mixed_query(f, q);
    eng_hits h;
    assert_int_equal(search(f, q, 3, ENG_GRAN_PIXEL, 0, NULL, &h), 0);
    assert_int_equal(h.n, 3);
    for (int i = 0; i < h.n; i++) assert_null(h.hits[i].heat);
    eng_hits_free(&h);
    eng_hits plain;
    assert_int_equal(search(f, q, 5, ENG_GRAN_REGION, 0, NULL, &plain), 0);
    assert_int_equal(search(f, q, 5, ENG_GRAN_REGION, 1, NULL, &h), 0);
    assert_int_equal(h.n, plain.n);
    for (int i = 0; i < h.n; i++) {
        assert_int_equal(h.hits[i].has_refined, 0);
        assert_int_equal(h.hits[i].region_id, plain.hits[i].region_id);
    }
    eng_hits_free(&h);
    eng_hits_free(&plain);
    float v[512];
    uint64_t ex;
    eng_image_query bx = {.by_id = 1, .image_id = f->ids[0], .has_box = 1, .box = {0, 0, 50, 50}};
    assert_int_equal(eng_image_vector(f->e, &bx, v, &ex), UMG_EUNSUPPORTED);
    /* the thumbnail is stored without patch tokens too (the photo's only extra) */
    void *t;
    size_t tl;
    assert_int_equal(db_get_thumb(f->db, f->ids[0], &t, &tl), 0);
    free(t);
    *state = f;
    teardown(state);
}

/* Every photo ingested has its thumbnail: the stored record's (oriented)
 * size, capped at ENC_THUMB_LONG_SIDE, its CPU time reported; an engine
 * with no_thumbs stores none. */
static void test_thumbs_at_ingest(void **state)
{
    fixture *f = *state;
    for (int i = 0; i < N_PHOTOS; i++) {
        void *t;
        size_t tl;
        assert_int_equal(db_get_thumb(f->db, f->ids[i], &t, &tl), 0);
        enc_image th = {0};
        assert_int_equal(enc_image_decode(t, tl, ENC_IMAGE_MAX_PIXELS_DEFAULT, &th), 0);
        db_image img;
        assert_int_equal(db_get_image(f->db, f->ids[i], &img), 0);
        int lw = img.width >= img.height;
        assert_int_equal(lw ? th.width : th.height, img.width > 320 || img.height > 320 ? 320
                                                     : (int)(lw ? img.width : img.height));
        assert_true(fabs((double)th.width / th.height - (double)img.width / img.height) < 0.02);
        db_image_free(&img);
        enc_image_free(&th);
        free(t);
    }
    eng_ingest_result r;
    size_t len;
    uint8_t *b = read_photo(IMG("rocket.jpg"), &len);
    eng_ingest_req q = {.path = "/t/rocket.jpg", .data = b, .len = len};
    assert_int_equal(eng_ingest_one(f->e, &q, &r), 0);
    assert_true(r.cpu_ms_thumb > 0);
    /* another engine over the same data, without thumbnails */
    eng_close(f->e);
    eng_config c = {.region_mode = ENG_REGION_MODE_DENSE, .regions = REGIONS, .batch = 4, .threads = 1,
                    .text_lanes = 1, .no_thumbs = 1};
    assert_int_equal(eng_create(f->model, f->db, &c, &f->e), 0);
    q.path = "/t/rocket-2.jpg";
    assert_int_equal(eng_ingest_one(f->e, &q, &r), 0);
    assert_true(r.cpu_ms_thumb == 0);
    void *t;
    size_t tl;
    assert_int_equal(db_get_thumb(f->db, r.image_id, &t, &tl), UMG_ENOENT);
    assert_non_null(strstr(umg_err_msg(), "has no thumbnail"));
    free(b);
}

/* Region mode crop: boxes are whole pixels, each region vector is its crop's
 * embedding; a box on a stored image needs the photo's bytes. */
static void test_crop_mode(void **state)
{
    fixture *f = setup_with(ENG_REGION_MODE_CROP, 0);
    float q[512];
    mixed_query(f, q);
    eng_hits h;
    assert_int_equal(search(f, q, 8, ENG_GRAN_REGION, 0, NULL, &h), 0);
    assert_true(h.n > 0);
    for (int i = 0; i < h.n; i++)
        for (int c = 0; c < 4; c++) assert_float_equal(h.hits[i].box[c], floorf(h.hits[i].box[c]), 0);
    /* the best region's vector is the crop's own embedding (encoded alone here) */
    size_t len;
    const photo *p = photo_of(f, h.hits[0].image_id);
    char file[400];
    snprintf(file, sizeof file, "%s%s", IMG(""), p->file);
    uint8_t *b = read_photo(file, &len);
    eng_image_query bq = {.data = b, .len = len, .has_box = 1};
    memcpy(bq.box, h.hits[0].box, sizeof bq.box);
    float v[512], stored[512];
    uint64_t ex;
    assert_int_equal(eng_image_vector(f->e, &bq, v, &ex), 0);
    assert_int_equal(db_get_vector(f->db, DB_KIND_REGION, h.hits[0].region_id, stored), 0);
    enc_l2_normalize(v, f->dim);
    double dot = 0;
    for (int d = 0; d < f->dim; d++) dot += (double)v[d] * stored[d];
    assert_true(dot > 0.999);
    free(b);
    eng_hits_free(&h);
    eng_image_query bx = {.by_id = 1, .image_id = f->ids[0], .has_box = 1, .box = {0, 0, 50, 50}};
    assert_int_equal(eng_image_vector(f->e, &bx, v, &ex), UMG_EUNSUPPORTED);
    *state = f;
    teardown(state);
}

/* ---- a large collection of stored vectors (no photos encoded) ------------ */

/* 10,000 images put straight through db_put_images with random vectors (the
 * encoder has nothing to do with filters), 3 regions each with disjoint
 * boxes.  Tags: "needle" on one image (1 in 10,000), "few" on 50, "common"
 * on 9,000; the 1,000 images without "common" have their vectors (image and
 * regions) around one direction, the query's, so that a search of the index
 * for it meets thousands of them before the first "common" one. */
static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

enum { BIG_N = 10000, BIG_R = 3, NEEDLE = 7777, FEW_EVERY = 200, COMMON_N = 9000 };

typedef struct big {
    fixture f;
    uint64_t ids[BIG_N];
    float q[32];
} big;

static void rand_unit(uint64_t *st, float *v, int dim, const float *around, float noise)
{
    for (int d = 0; d < dim; d++) v[d] = (around ? around[d] : 0) + noise * tu_frand(st);
}

static big *big_setup(void)
{
    big *b = calloc(1, sizeof *b);
    assert_non_null(b);
    fixture *f = &b->f;
    assert_non_null(tu_mkdtemp(f->dir, sizeof f->dir, "umg-engine-big-"));
    open_engine(f, ENG_REGION_MODE_DENSE, 0);
    int D = f->dim;
    assert_true(D <= 32);
    uint64_t st = 42;
    rand_unit(&st, b->q, D, NULL, 1);
    enum { BATCH = 1000 };
    float *vec = malloc(sizeof(float) * (size_t)D * BATCH * (1 + BIG_R));
    db_image_in *ins = calloc(BATCH, sizeof *ins);
    db_region_in *rins = calloc(BATCH * BIG_R, sizeof *rins);
    char (*paths)[32] = calloc(BATCH, sizeof *paths);
    const char *tags[BATCH][2];
    assert_true(vec && ins && rins && paths);
    for (int at = 0; at < BIG_N; at += BATCH) {
        for (int j = 0; j < BATCH; j++) {
            int i = at + j, nt = 0;
            snprintf(paths[j], sizeof paths[j], "/big/%05d.jpg", i);
            if (i < COMMON_N) tags[j][nt++] = "common";
            if (i == NEEDLE) tags[j][nt++] = "needle";
            if (i % FEW_EVERY == 3) tags[j][nt++] = "few";
            float *v = vec + (size_t)D * (1 + BIG_R) * j;
            int near = i >= COMMON_N; /* the query's neighbourhood */
            for (int r = 0; r <= BIG_R; r++) rand_unit(&st, v + (size_t)D * r, D, near ? b->q : NULL, near ? 0.2f : 1);
            db_image_in *in = &ins[j];
            memset(in, 0, sizeof *in);
            in->path = paths[j];
            in->sha256[0] = (uint8_t)i, in->sha256[1] = (uint8_t)(i >> 8);
            in->width = 300, in->height = 200, in->bytes = 1000, in->mtime = 1;
            in->tags = tags[j];
            in->n_tags = nt;
            in->vector = v;
            in->regions = &rins[j * BIG_R];
            in->n_regions = BIG_R;
            for (int r = 0; r < BIG_R; r++)
                rins[j * BIG_R + r] = (db_region_in){.box = {(float)r * 100, 0, 90, 90}, .vector = v + (size_t)D * (1 + r)};
        }
        assert_int_equal(db_put_images(f->db, ins, BATCH, b->ids + at, NULL), 0);
    }
    free(vec), free(ins), free(rins), free(paths);
    return b;
}

static void big_teardown(big *b)
{
    close_engine(&b->f);
    tu_rm_rf(b->f.dir);
    free(b);
}

static int has_tag(int i, const char *tag)
{
    if (!strcmp(tag, "common")) return i < COMMON_N;
    if (!strcmp(tag, "needle")) return i == NEEDLE;
    return i % FEW_EVERY == 3; /* "few" */
}

typedef struct scored {
    uint64_t id, image_id;
    double score;
} scored;

static int by_score(const void *a, const void *b)
{
    const scored *x = a, *y = b;
    return x->score != y->score ? (x->score < y->score ? 1 : -1) : (x->id > y->id) - (x->id < y->id);
}

/* The oracle: every stored vector of the images with tag (NULL: all) scored
 * against q in full, best first, at most per_photo per image (regions). */
static int big_oracle(big *b, const char *tag, int region, int per_photo, scored *out)
{
    int D = b->f.dim, n = 0;
    float qn[32], v[32];
    memcpy(qn, b->q, sizeof(float) * (size_t)D);
    enc_l2_normalize(qn, D);
    for (int i = 0; i < BIG_N; i++) {
        if (tag && !has_tag(i, tag)) continue;
        db_region *regs = NULL;
        int nr = 1;
        if (region) assert_int_equal(db_list_regions(b->f.db, b->ids[i], &regs, &nr), 0);
        for (int r = 0; r < nr; r++) {
            uint64_t id = region ? regs[r].id : b->ids[i];
            assert_int_equal(db_get_vector(b->f.db, region ? DB_KIND_REGION : DB_KIND_IMAGE, id, v), 0);
            double dot = 0;
            for (int d = 0; d < D; d++) dot += (double)v[d] * qn[d];
            out[n++] = (scored){id, b->ids[i], dot};
        }
        free(regs);
    }
    qsort(out, (size_t)n, sizeof *out, by_score);
    if (!region) return n;
    int w = 0;
    for (int i = 0; i < n; i++) {
        int same = 0;
        for (int j = 0; j < w; j++) same += out[j].image_id == out[i].image_id;
        if (same < per_photo) out[w++] = out[i];
    }
    return w;
}

static int big_search(big *b, const char *tag, int gran, int k, int offset, int per_photo, eng_hits *h)
{
    eng_str t = {tag, tag ? strlen(tag) : 0};
    eng_search_req r = {.query = b->q, .k = k, .granularity = gran, .offset = offset, .per_photo = per_photo};
    if (tag) r.filters = (eng_filters){.tags = &t, .n_tags = 1};
    return eng_search(b->f.e, &r, h);
}

/* Filters find k hits whenever k matching photos (or regions) exist: a tag
 * on 1 image in 10,000 answers k = 3 with that image (and its best box, or
 * its 3 boxes with per_photo 3); a tag on 50 with the 50 best in the oracle's
 * order; a tag on 9,000 whose photos all rank after the 1,000 others in the
 * index (3,000 region vectors before the first match) still gives the k
 * best, as the oracle computes them from every stored vector. */
static void test_selective_filters(void **state)
{
    (void)state;
    big *b = big_setup();
    scored *want = malloc(sizeof *want * BIG_N * BIG_R);
    eng_hits h;
    assert_non_null(want);
    double t0 = now_s();
    assert_int_equal(big_search(b, "needle", ENG_GRAN_IMAGE, 3, 0, 0, &h), 0);
    double t_needle = now_s() - t0;
    assert_int_equal(h.n, 1);
    assert_int_equal(h.hits[0].image_id, b->ids[NEEDLE]);
    assert_string_equal(h.hits[0].path, "/big/07777.jpg");
    eng_hits_free(&h);
    assert_int_equal(big_search(b, "needle", ENG_GRAN_REGION, 3, 0, 0, &h), 0);
    assert_int_equal(h.n, 1);
    assert_int_equal(big_oracle(b, "needle", 1, 1, want), 1);
    assert_int_equal(h.hits[0].region_id, want[0].id);
    eng_hits_free(&h);
    assert_int_equal(big_search(b, "needle", ENG_GRAN_REGION, 3, 0, 3, &h), 0);
    assert_int_equal(h.n, 3);
    assert_int_equal(big_oracle(b, "needle", 1, 3, want), 3);
    for (int i = 0; i < 3; i++) assert_int_equal(h.hits[i].region_id, want[i].id);
    eng_hits_free(&h);

    struct { const char *tag; int region, k; } cases[] = {
        {"few", 0, 50}, {"few", 1, 50}, {"common", 0, 40}, {"common", 1, 40}, {NULL, 1, 40}, {NULL, 0, 40},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        int n = big_oracle(b, cases[c].tag, cases[c].region, 1, want);
        assert_true(n >= cases[c].k);
        assert_int_equal(big_search(b, cases[c].tag, cases[c].region ? ENG_GRAN_REGION : ENG_GRAN_IMAGE, cases[c].k, 0,
                                    0, &h), 0);
        assert_int_equal(h.n, cases[c].k);
        for (int i = 0; i < h.n; i++) {
            assert_int_equal(cases[c].region ? h.hits[i].region_id : h.hits[i].image_id, want[i].id);
            assert_float_equal(h.hits[i].score, want[i].score, 1e-5);
        }
        eng_hits_free(&h);
    }
    /* the figure docs/protocol.md quotes (load-dependent: printed, not asserted) */
    t0 = now_s();
    assert_int_equal(big_search(b, "common", ENG_GRAN_REGION, 10, 0, 0, &h), 0);
    printf("# 10,000 images: 'needle' (1 match, exact scan) %.1f ms; 'common' regions k 10 (index, doubling) %.1f ms\n",
           t_needle * 1e3, (now_s() - t0) * 1e3);
    eng_hits_free(&h);
    free(want);
    big_teardown(b);
}

/* Pagination: pages of 7 hits at offsets 0, 7, 14, ... concatenated are the
 * first hits of one query for 100, with or without a filter, both ways of
 * filtering (the exact scan of "few", the index for "common") and both
 * granularities; past the last hit a page is empty; offset is bounded. */
static void test_pages(void **state)
{
    (void)state;
    big *b = big_setup();
    struct { const char *tag; int gran, k; } cases[] = {
        {NULL, ENG_GRAN_IMAGE, 100}, {NULL, ENG_GRAN_REGION, 100}, {"common", ENG_GRAN_REGION, 100},
        {"common", ENG_GRAN_IMAGE, 100}, {"few", ENG_GRAN_IMAGE, 50}, {"few", ENG_GRAN_REGION, 50},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        eng_hits one, page;
        int gran = cases[c].gran, k = cases[c].k;
        assert_int_equal(big_search(b, cases[c].tag, gran, k, 0, 0, &one), 0);
        assert_int_equal(one.n, k);
        int at = 0;
        for (int off = 0; off < k + 7; off += 7) {
            assert_int_equal(big_search(b, cases[c].tag, gran, 7, off, 0, &page), 0);
            if (off >= k && cases[c].tag && !strcmp(cases[c].tag, "few")) assert_int_equal(page.n, 0); /* only 50 */
            for (int i = 0; i < page.n && at < k; i++, at++) {
                assert_int_equal(page.hits[i].image_id, one.hits[at].image_id);
                assert_int_equal(page.hits[i].region_id, one.hits[at].region_id);
                assert_string_equal(page.hits[i].path, one.hits[at].path);
            }
            eng_hits_free(&page);
        }
        assert_int_equal(at, k);
        eng_hits_free(&one);
    }
    eng_hits h;
    assert_int_equal(big_search(b, NULL, ENG_GRAN_IMAGE, 5, ENG_MAX_OFFSET, 0, &h), 0);
    assert_int_equal(h.n, 0); /* 10,000 images: nothing after the 10,000th */
    eng_hits_free(&h);
    assert_int_equal(big_search(b, NULL, ENG_GRAN_IMAGE, 5, ENG_MAX_OFFSET - 2, 0, &h), 0);
    assert_int_equal(h.n, 2);
    eng_hits_free(&h);
    assert_int_equal(big_search(b, NULL, ENG_GRAN_IMAGE, 5, ENG_MAX_OFFSET + 1, 0, &h), UMG_EINVAL);
    assert_int_equal(big_search(b, NULL, ENG_GRAN_IMAGE, 5, -1, 0, &h), UMG_EINVAL);
    big_teardown(b);
}

/* ---- capture metadata ------------------------------------------------------ */

static int64_t clock_of(const char *iso)
{
    eng_time t;
    assert_int_equal(eng_time_parse(iso, strlen(iso), &t), 0);
    return t.clock;
}

/* ISO 8601 in: dates, date-times, offsets, and what is refused; out: the
 * record's clock time and offset as get and hits show them. */
static void test_capture_times(void **state)
{
    (void)state;
    eng_time t;
    assert_int_equal(eng_time_parse("1970-01-01", 10, &t), 0);
    assert_true(t.clock == 0 && !t.has_offset);
    assert_true(clock_of("1970-01-02T00:00:01") == 86401);
    assert_true(clock_of("2019-07-14T12:00") == 1563105600);    /* date -u -d 2019-07-14T12:00Z +%s */
    assert_true(clock_of("2000-02-29 23:59:59.75") == 951868799); /* leap day; fractions ignored */
    assert_true(clock_of("1969-12-31T23:59:59") == -1);
    assert_true(clock_of("0001-01-01") == DB_MIN_TAKEN && clock_of("9999-12-31T23:59:59") == DB_MAX_TAKEN);
    assert_int_equal(eng_time_parse("2019-07-14T12:00:00+02:00", 25, &t), 0);
    assert_true(t.has_offset && t.offset_minutes == 120 && t.clock == 1563105600);
    assert_int_equal(eng_time_parse("2019-07-14T12:00-05:30", 22, &t), 0);
    assert_true(t.has_offset && t.offset_minutes == -330);
    assert_int_equal(eng_time_parse("2019-07-14T12:00Z", 17, &t), 0);
    assert_true(t.has_offset && t.offset_minutes == 0);
    const char *bad[] = {"", "2019", "2019-7-14", "2019-02-29", "1900-02-29", "2019-13-01", "2019-07-14T24:00",
                         "2019-07-14T12", "2019-07-14T12:00:00+2", "2019-07-14T12:00:00+19:00", "0000-01-01",
                         "2019-07-14x", "2019-07-14T12:00:00.", "2019-07-14+02:00", "2019-07-14T12:60"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        if (eng_time_parse(bad[i], strlen(bad[i]), &t) != UMG_EINVAL) fail_msg("accepted '%s'", bad[i]);
    char buf[40];
    db_capture c = {.has_taken = 1, .taken = 1563105600, .has_offset = 1, .offset_minutes = 120};
    assert_int_equal(eng_taken_format(&c, buf, sizeof buf), 25);
    assert_string_equal(buf, "2019-07-14T12:00:00+02:00");
    c = (db_capture){.has_taken = 1, .taken = -1, .has_offset = 1, .offset_minutes = -570};
    eng_taken_format(&c, buf, sizeof buf);
    assert_string_equal(buf, "1969-12-31T23:59:59-09:30");
    c = (db_capture){.has_taken = 1, .taken = DB_MIN_TAKEN};
    eng_taken_format(&c, buf, sizeof buf);
    assert_string_equal(buf, "0001-01-01T00:00:00");
    c.has_taken = 0;
    assert_int_equal(eng_taken_format(&c, buf, sizeof buf), 0);
    assert_string_equal(buf, "");
    /* every day of 1899..2101 round-trips through text */
    for (int64_t d = -25567; d < 48000; d += 1) {
        c = (db_capture){.has_taken = 1, .taken = d * 86400 + 3723};
        eng_taken_format(&c, buf, sizeof buf);
        if (clock_of(buf) != c.taken) fail_msg("%s", buf);
    }
    /* the decoder's fields: what the database would refuse becomes unknown */
    enc_image_meta m = {.taken_at_known = 1, .camera_known = 1, .gps_known = 1, .lat = 91, .lon = 0};
    snprintf(m.taken_at, sizeof m.taken_at, "2019-07-14T12:00:00+02:00");
    snprintf(m.camera, sizeof m.camera, "Caf\xc3\xa9 \xc3");  /* a name cut inside a character */
    eng_capture_from_meta(&m, &c);
    assert_true(c.has_taken && c.has_offset && c.offset_minutes == 120 && c.taken == 1563105600);
    assert_string_equal(c.camera, "Caf\xc3\xa9 ");
    assert_false(c.has_gps);
    assert_float_equal(eng_km_between(48.8566, 2.3522, 51.5074, -0.1278), 343.5, 1.0); /* Paris-London */
    assert_float_equal(eng_km_between(0, 0, 0, 180), 20015.1, 0.5);                    /* half the equator */
    assert_true(eng_camera_matches("FUJIFILM X-T3", "fujifilm x", 10));
    assert_false(eng_camera_matches("FUJIFILM X-T3", "X-T30", 5));
}

/* The date, camera and place filters on stored records (put through the
 * database with random vectors): each query returns exactly the photos the
 * documented rule passes, computed here independently, in score order; a
 * photo that does not know a field never passes its filter; records
 * without capture read back with nothing known. */
static void test_capture_filters(void **state)
{
    (void)state;
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    assert_non_null(tu_mkdtemp(f->dir, sizeof f->dir, "umg-engine-cap-"));
    open_engine(f, ENG_REGION_MODE_DENSE, 0);
    enum { N = 12 };
    /* clock time, offset (minutes, or NONE), camera, position (or none) */
    enum { NONE = 9999 };
    struct { const char *when; int off; const char *camera; double lat, lon; } ph[N] = {
        {"2019-07-14T12:00:00", 120, "FUJIFILM X-T3", -33.8568, 151.2153},   /* Sydney */
        {"2019-07-14T23:30:00", NONE, "Canon EOS 5D Mark IV", 48.8584, 2.2945}, /* Paris, no offset */
        {"2019-07-15T00:00:00", -300, "Apple iPhone 12", 40.7128, -74.0060},  /* New York */
        {"2019-07-13T23:59:59", 0, "", 51.5007, -0.1246},                    /* London, no camera */
        {NULL, 0, "FUJIFILM X100V", 48.8606, 2.3376},                       /* no date */
        {"2020-01-01T00:00:00", NONE, "fujifilm x-t3", NAN, NAN},            /* no place */
        {"1999-12-31T23:59:59", 60, "", NAN, NAN},
        {"2019-07-14T00:00:00", 840, "Samsung SM-G991B", -36.8485, 174.7633}, /* Auckland, +14:00 */
        {NULL, 0, "", NAN, NAN},                                             /* nothing known */
        {"2019-07-14T09:59:59", 120, "FUJIFILM X-T3", -33.87, 151.21},
        {"2019-07-14T10:00:00", NONE, "", 48.80, 2.35},
        {"2019-07-14T10:00:00", 0, "Nikon", 0, 0},
    };
    int D = f->dim;
    uint64_t st = 7, ids[N];
    float vec[N][32];
    db_capture cap[N];
    for (int i = 0; i < N; i++) {
        for (int d = 0; d < D; d++) vec[i][d] = tu_frand(&st);
        memset(&cap[i], 0, sizeof cap[i]);
        if (ph[i].when) {
            cap[i].has_taken = 1;
            cap[i].taken = clock_of(ph[i].when);
            cap[i].has_offset = ph[i].off != NONE;
            cap[i].offset_minutes = ph[i].off != NONE ? ph[i].off : 0;
        }
        snprintf(cap[i].camera, sizeof cap[i].camera, "%s", ph[i].camera);
        if (!isnan(ph[i].lat)) cap[i].has_gps = 1, cap[i].lat = ph[i].lat, cap[i].lon = ph[i].lon;
        char path[32];
        snprintf(path, sizeof path, "/cap/%02d.jpg", i);
        db_image_in in = {.path = path, .width = 10, .height = 10, .mtime = 1, .vector = vec[i], .capture = &cap[i]};
        in.sha256[0] = (uint8_t)i;
        assert_int_equal(db_put_image(f->db, &in, &ids[i], NULL), 0);
    }
    /* stored and read back as given; nothing known: nothing read */
    for (int i = 0; i < N; i++) {
        db_image img;
        assert_int_equal(db_get_image(f->db, ids[i], &img), 0);
        assert_memory_equal(&img.capture, &cap[i], sizeof cap[i]);
        db_image_free(&img);
    }
    /* out of range: refused, nothing stored */
    db_capture badc = {.has_gps = 1, .lat = 100};
    db_image_in bad = {.path = "/cap/bad.jpg", .width = 1, .height = 1, .vector = vec[0], .capture = &badc};
    uint64_t bid;
    assert_int_equal(db_put_image(f->db, &bad, &bid, NULL), UMG_EINVAL);

    float q[32];
    for (int d = 0; d < D; d++) q[d] = tu_frand(&st);
    eng_hits all;
    assert_int_equal(search(f, q, N, ENG_GRAN_IMAGE, 0, NULL, &all), 0);
    assert_int_equal(all.n, N);
    struct { const char *after, *before, *camera; double lat, lon, km; } cases[] = {
        {"2019-07-14", "2019-07-15", NULL, 0, 0, 0},              /* clock times of 14 July */
        {"2019-07-14T10:00:00Z", NULL, NULL, 0, 0, 0},             /* instants from 10:00 UTC */
        {NULL, "2019-07-14T10:00:00+02:00", NULL, 0, 0, 0},        /* = 08:00 UTC, exclusive */
        {"2019-07-14T10:00", "2019-07-14T10:00:01", NULL, 0, 0, 0}, /* exactly 10:00 clock, inclusive */
        {NULL, NULL, "fujifilm", 0, 0, 0},
        {NULL, NULL, "X-T3", 0, 0, 0},
        {NULL, NULL, "nikon", 0, 0, 0},
        {NULL, NULL, NULL, 48.8566, 2.3522, 10},                   /* Paris, 10 km */
        {NULL, NULL, NULL, -33.8688, 151.2093, 2},                 /* Sydney, 2 km */
        {"2019-01-01", NULL, "fuji", -33.8688, 151.2093, 50},      /* all three */
        {"2030-01-01", NULL, NULL, 0, 0, 0},                       /* none */
    };
    /* the table's answers worked out by hand: 14 July's clock times 0 1 7 9 10 11; from 10:00 UTC
     * 0 (12:00+02:00) 1 2 5 10 (no offset: read as UTC) 11; before 08:00 UTC 3 6 7 9; clock 10:00
     * 10 11; fujifilm 0 4 5 9; X-T3 0 5 9; nikon 11; Paris 1 4 10; Sydney 0 9; all three 0 9 */
    int expect[] = {6, 6, 4, 2, 4, 3, 1, 3, 2, 2, 0};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        eng_filters flt = {0};
        if (cases[c].after) flt.has_taken_after = !eng_time_parse(cases[c].after, strlen(cases[c].after), &flt.taken_after);
        if (cases[c].before) flt.has_taken_before = !eng_time_parse(cases[c].before, strlen(cases[c].before), &flt.taken_before);
        if (cases[c].camera) flt.camera = (eng_str){cases[c].camera, strlen(cases[c].camera)};
        if (cases[c].km > 0) flt.has_near = 1, flt.near_lat = cases[c].lat, flt.near_lon = cases[c].lon, flt.near_km = cases[c].km;
        /* the oracle, from the table above */
        int want[N], nw = 0;
        for (int h = 0; h < all.n; h++) {
            int i = 0;
            while (ids[i] != all.hits[h].image_id) i++;
            int pass = 1;
            for (int b = 0; b < 2; b++) {
                const char *bound = b ? cases[c].before : cases[c].after;
                if (!bound) continue;
                if (!ph[i].when) { pass = 0; continue; }
                eng_time t;
                eng_time_parse(bound, strlen(bound), &t);
                int64_t photo = clock_of(ph[i].when), lim = t.clock;
                if (t.has_offset) lim -= t.offset_minutes * 60, photo -= ph[i].off != NONE ? ph[i].off * 60 : 0;
                pass &= b ? photo < lim : photo >= lim;
            }
            if (cases[c].camera) {
                char lc[64], ln[64];
                size_t k;
                for (k = 0; ph[i].camera[k]; k++) lc[k] = (char)tolower((unsigned char)ph[i].camera[k]);
                lc[k] = 0;
                for (k = 0; cases[c].camera[k]; k++) ln[k] = (char)tolower((unsigned char)cases[c].camera[k]);
                ln[k] = 0;
                pass &= strstr(lc, ln) != NULL;
            }
            if (cases[c].km > 0) {
                /* the spherical law of cosines, an independent formula */
                double r = M_PI / 180, a1 = cases[c].lat * r, a2 = ph[i].lat * r, dl = (cases[c].lon - ph[i].lon) * r;
                double km = 6371.0088 * acos(fmin(1, sin(a1) * sin(a2) + cos(a1) * cos(a2) * cos(dl)));
                pass &= !isnan(ph[i].lat) && km <= cases[c].km;
            }
            if (pass) want[nw++] = i;
        }
        if (nw != expect[c]) fail_msg("case %zu: the oracle passes %d, worked out %d", c, nw, expect[c]);
        eng_hits h;
        assert_int_equal(search(f, q, N, ENG_GRAN_IMAGE, 0, &flt, &h), 0);
        if (h.n != nw) fail_msg("case %zu: %d hits, want %d", c, h.n, nw);
        for (int i = 0; i < nw; i++) {
            assert_int_equal(h.hits[i].image_id, ids[want[i]]);
            assert_memory_equal(&h.hits[i].capture, &cap[want[i]], sizeof cap[0]); /* hits carry it */
        }
        eng_hits_free(&h);
    }
    eng_hits_free(&all);
    close_engine(f);
    tu_rm_rf(f->dir);
    free(f);
}

/* ---- decode modes (eng_config.decode) -------------------------------------- */

/* A large photo: chelsea.png upscaled (PIL bicubic) to w x h stored pixels,
 * written as a JPEG with EXIF orientation `orient` (0: none). */
static void write_large_jpeg(const char *path, int w, int h, int orient)
{
    enc_image src = {0}, big = {0};
    assert_int_equal(enc_image_load(IMG("chelsea.png"), ENC_IMAGE_MAX_PIXELS_DEFAULT, &src), 0);
    assert_int_equal(enc_image_resize(&src, w, h, &big), 0);
    tu_write_jpeg(path, big.rgb, w, h, 90, orient);
    enc_image_free(&src);
    enc_image_free(&big);
}

static double cosine(const float *a, const float *b, int n)
{
    double ab = 0, aa = 0, bb = 0;
    for (int i = 0; i < n; i++) ab += (double)a[i] * b[i], aa += (double)a[i] * a[i], bb += (double)b[i] * b[i];
    return ab / sqrt(aa * bb);
}

/* The region vector of box pooled here from the photo's stored (float16,
 * normalized) patch tokens, with the geometry of the stored full size. */
static void pool_stored(fixture *f, uint64_t id, int w, int h, const float box[4], float *out)
{
    void *blob;
    size_t len, n = (size_t)f->grid * f->grid * f->dim;
    assert_int_equal(db_get_extra(f->db, id, "patch_tokens", &blob, &len), 0);
    assert_int_equal(len, n * 2);
    float *tok = malloc(n * sizeof *tok);
    assert_non_null(tok);
    const uint8_t *b = blob;
    for (size_t i = 0; i < n; i++) tok[i] = umg_f16_to_f32((uint16_t)(b[2 * i] | (b[2 * i + 1] << 8)));
    enc_preproc pad = *enc_model_preproc(f->model);
    pad.fit = ENC_FIT_PAD;
    enc_preproc_geom g;
    enc_preproc_geometry(&pad, w, h, &g);
    assert_int_equal(enc_region_pool(tok, f->grid, f->dim, enc_model_config(f->model)->patch_size, &g, box, out), 0);
    enc_l2_normalize(out, f->dim);
    free(tok);
    free(blob);
}

/* A large JPEG (2000x1500; and 2003x1499 stored with EXIF orientation 6, so
 * oriented 1499x2003, sides not multiples of 8) ingested with ENG_DECODE_FAST
 * and with ENG_DECODE_EXACT: fast decodes it shrunk (1/4), yet stores the
 * full-size width and height and boxes in full-size pixels (the whole-photo
 * window spans the full frame: boxes left in decoded pixels would end near
 * 250); each region vector is the pooling of the stored patch tokens over its
 * box placed by the full size's geometry; the image vector's cosine to the
 * exact decode's is >= 0.999, and boxes found by both agree in region vectors. */
static void test_fast_decode(void **state)
{
    (void)state;
    fixture *f = calloc(1, sizeof *f);
    assert_non_null(f);
    assert_non_null(tu_mkdtemp(f->dir, sizeof f->dir, "umg-engine-fast-"));
    open_engine(f, ENG_REGION_MODE_DENSE, 0);
    struct { const char *name; int w, h, orient, ow, oh; } big[] = {
        {"big.jpg", 2000, 1500, 0, 2000, 1500},
        {"big6.jpg", 2003, 1499, 6, 1499, 2003},
    };
    enum { NB = 2 };
    char files[NB][400];
    uint64_t ids[2][NB]; /* [exact, fast] */
    for (int i = 0; i < NB; i++) {
        snprintf(files[i], sizeof files[i], "%s/%s", f->dir, big[i].name);
        write_large_jpeg(files[i], big[i].w, big[i].h, big[i].orient);
    }
    for (int mode = 0; mode < 2; mode++) {
        eng_close(f->e);
        eng_config c = {.region_mode = ENG_REGION_MODE_DENSE, .regions = REGIONS, .batch = 4, .threads = 1,
                        .text_lanes = 1, .decode = mode ? ENG_DECODE_FAST : ENG_DECODE_EXACT};
        assert_int_equal(eng_create(f->model, f->db, &c, &f->e), 0);
        for (int i = 0; i < NB; i++) {
            char path[64];
            snprintf(path, sizeof path, "/%s/%s", mode ? "fast" : "exact", big[i].name);
            eng_ingest_result r;
            if (ingest_file(f->e, files[i], path, NULL, 0, &r)) fail_msg("%s: %s", path, r.msg);
            ids[mode][i] = r.image_id;
            if (mode) { /* shrunk by 4: ceil(side / 4) (1/8 would keep 250x188, under 1.5x the 224x168 input) */
                assert_int_equal(r.decoded_width, (big[i].ow + 3) / 4);
                assert_int_equal(r.decoded_height, (big[i].oh + 3) / 4);
            } else {
                assert_int_equal(r.decoded_width, big[i].ow);
                assert_int_equal(r.decoded_height, big[i].oh);
            }
        }
    }
    for (int i = 0; i < NB; i++) {
        db_image im[2];
        db_region *reg[2];
        int nreg[2];
        float v[2][512];
        for (int mode = 0; mode < 2; mode++) {
            assert_int_equal(db_get_image(f->db, ids[mode][i], &im[mode]), 0);
            assert_int_equal(im[mode].width, big[i].ow);
            assert_int_equal(im[mode].height, big[i].oh);
            assert_int_equal(db_get_vector(f->db, DB_KIND_IMAGE, ids[mode][i], v[mode]), 0);
            assert_int_equal(db_list_regions(f->db, ids[mode][i], &reg[mode], &nreg[mode]), 0);
            assert_true(nreg[mode] > 0);
            int whole = 0;
            for (int b = 0; b < nreg[mode]; b++) {
                const float *x = reg[mode][b].box;
                assert_true(x[0] >= 0 && x[1] >= 0 && x[2] > 0 && x[3] > 0);
                assert_true(x[0] + x[2] <= big[i].ow + 0.01f && x[1] + x[3] <= big[i].oh + 0.01f);
                if (x[0] < 1 && x[1] < 1 && x[0] + x[2] > big[i].ow - 1 && x[1] + x[3] > big[i].oh - 1) whole = 1;
                /* the stored region vector pools the cells under its full-size box */
                float want[512], got[512];
                pool_stored(f, ids[mode][i], big[i].ow, big[i].oh, x, want);
                assert_int_equal(db_get_vector(f->db, DB_KIND_REGION, reg[mode][b].id, got), 0);
                double cs = cosine(want, got, f->dim);
                if (cs < 0.999) fail_msg("%s mode %d region %d: cosine %.5f to its box's pooling", big[i].name, mode, b, cs);
            }
            if (!whole) fail_msg("%s mode %d: no box spans the full-size frame", big[i].name, mode);
        }
        double cs = cosine(v[0], v[1], f->dim);
        if (cs < 0.999) fail_msg("%s: image vector cosine fast vs exact %.6f", big[i].name, cs);
        /* boxes both modes found alike (the whole photo, a window at least) pool alike; only boxes of
         * a quarter of each side or more: a box of one or two patch cells moves with every pixel */
        int matched = 0;
        for (int a = 0; a < nreg[0]; a++) {
            if (reg[0][a].box[2] < big[i].ow / 4.f || reg[0][a].box[3] < big[i].oh / 4.f) continue;
            for (int b = 0; b < nreg[1]; b++) {
                int same = 1;
                for (int k = 0; k < 4; k++) same &= fabsf(reg[0][a].box[k] - reg[1][b].box[k]) < 0.5f;
                if (!same) continue;
                float ra[512], rb[512];
                assert_int_equal(db_get_vector(f->db, DB_KIND_REGION, reg[0][a].id, ra), 0);
                assert_int_equal(db_get_vector(f->db, DB_KIND_REGION, reg[1][b].id, rb), 0);
                double rc = cosine(ra, rb, f->dim);
                if (rc < 0.995) fail_msg("%s box %d: region cosine fast vs exact %.5f", big[i].name, a, rc);
                matched++;
            }
        }
        assert_true(matched >= 2);
        for (int mode = 0; mode < 2; mode++) {
            db_image_free(&im[mode]);
            free(reg[mode]);
        }
    }
    close_engine(f);
    tu_rm_rf(f->dir);
    free(f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_image_hits, setup_dense, teardown),
        cmocka_unit_test_setup_teardown(test_thumbs_at_ingest, setup_dense, teardown),
        cmocka_unit_test_setup_teardown(test_filters, setup_dense, teardown),
        cmocka_unit_test_setup_teardown(test_region_nms, setup_dense, teardown),
        cmocka_unit_test_setup_teardown(test_heatmap, setup_dense, teardown),
        cmocka_unit_test_setup_teardown(test_refine, setup_dense, teardown),
        cmocka_unit_test_setup_teardown(test_overfetch, setup_dense, teardown),
        cmocka_unit_test_setup_teardown(test_image_vectors, setup_dense, teardown),
        cmocka_unit_test_setup_teardown(test_text_vector, setup_dense, teardown),
        cmocka_unit_test_setup_teardown(test_query_cache, setup_dense, teardown),
        cmocka_unit_test_setup_teardown(test_same_path_rule, setup_dense, teardown),
        cmocka_unit_test_setup_teardown(test_list_and_move, setup_dense, teardown),
        cmocka_unit_test(test_sync_plan),
        cmocka_unit_test(test_no_patches),
        cmocka_unit_test(test_crop_mode),
        cmocka_unit_test(test_fast_decode),
        cmocka_unit_test(test_selective_filters),
        cmocka_unit_test(test_pages),
        cmocka_unit_test(test_capture_times),
        cmocka_unit_test(test_capture_filters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
