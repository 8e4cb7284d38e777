/* test_engine.c - the engine (engine/) without a server: ingest into real
 * LMDB + FAISS files in a temporary directory with the fixture model
 * tests/fixtures/clip-tiny, then the search's rules checked against
 * independent computations from the database: filters, per-photo NMS of
 * region hits, heatmaps from the stored float16 patch tokens, refine, the
 * over-fetch, query vectors of stored images and boxes, and the
 * same-path-same-content rule of ingest.  clip-tiny has random weights: these
 * tests check the rules, not meaning (tests/meaning does that). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "engine.h"
#include "ingest.h"
#include "search.h"
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
    enc_model_fingerprint(f->model, fp);
    db_options o = db_options_default();
    o.fingerprint = fp;
    o.model_name = enc_model_name(f->model);
    o.dim = enc_model_dim(f->model);
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

static int search(fixture *f, const float *q, int k, int gran, int refine, const eng_filters *filt, eng_hits *out)
{
    eng_search_req r = {.query = q, .k = k, .granularity = gran, .refine = refine};
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

/* Region hits: the greedy per-photo suppression over the region ranking,
 * recomputed here from every stored region's cosine with the query. */
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
    /* the oracle: walk the ranking, keep a box unless a kept box of its photo overlaps it > 0.5 */
    db_region kept[N_PHOTOS * REGIONS];
    int nk = 0;
    for (int i = 0; i < nc; i++) {
        db_region r;
        assert_int_equal(db_get_region(f->db, cand[i].id, &r), 0);
        int drop = 0;
        for (int j = 0; j < nk && !drop; j++) drop = kept[j].image_id == r.image_id && iou(kept[j].box, r.box) > ENG_REGION_NMS_IOU;
        if (!drop) kept[nk++] = r;
    }
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
            if (h.hits[j].image_id == h.hits[i].image_id) assert_true(iou(h.hits[j].box, h.hits[i].box) <= ENG_REGION_NMS_IOU);
    }
    eng_hits_free(&h);
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
                assert_true(iou(ref.hits[j].box, x->box) <= ENG_REGION_NMS_IOU);
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
    *state = f;
    teardown(state);
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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_image_hits, setup_dense, teardown),
        cmocka_unit_test_setup_teardown(test_filters, setup_dense, teardown),
        cmocka_unit_test_setup_teardown(test_region_nms, setup_dense, teardown),
        cmocka_unit_test_setup_teardown(test_heatmap, setup_dense, teardown),
        cmocka_unit_test_setup_teardown(test_refine, setup_dense, teardown),
        cmocka_unit_test_setup_teardown(test_overfetch, setup_dense, teardown),
        cmocka_unit_test_setup_teardown(test_image_vectors, setup_dense, teardown),
        cmocka_unit_test_setup_teardown(test_text_vector, setup_dense, teardown),
        cmocka_unit_test_setup_teardown(test_query_cache, setup_dense, teardown),
        cmocka_unit_test_setup_teardown(test_same_path_rule, setup_dense, teardown),
        cmocka_unit_test(test_no_patches),
        cmocka_unit_test(test_crop_mode),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
