/* test_db.c - the LMDB data directory on real files in temporary directories. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "db.h"
#include "test_util.h"
#include "umg_error.h"

#define DIM 32

static uint8_t FP_A[32] = { 0xaa, 1, 2, 3 };
static uint8_t FP_B[32] = { 0xbb, 9, 9, 9 };

static uint64_t rng_state = 88172645463325252ull;
static void rand_vec(float *v, int n)
{
    for (int i = 0; i < n; i++)
        v[i] = tu_frand(&rng_state);
}

typedef struct fixture {
    char dir[256];
    char data[300];
    int log_lines;
    char last_log[768];
    char all_log[8192];   /* every line since the last clear, '\n'-separated (truncated) */
    /* build gate: when armed, the build that logs "trained on" (an index
     * build in db_checkpoint, after training, before its adds and its
     * catch-up from the log) waits there until released */
    pthread_mutex_t gate_mu;
    pthread_cond_t gate_cv;
    int gate_armed, gate_in_build, gate_release;
} fixture;

static void count_log(void *ud, int level, const char *msg)
{
    fixture *f = ud;
    (void)level;
    pthread_mutex_lock(&f->gate_mu);
    f->log_lines++;
    snprintf(f->last_log, sizeof f->last_log, "%s", msg);
    size_t used = strlen(f->all_log);
    snprintf(f->all_log + used, sizeof f->all_log - used, "%s\n", msg);
    if (f->gate_armed && strstr(msg, "trained on")) {
        f->gate_in_build = 1;
        pthread_cond_broadcast(&f->gate_cv);
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_sec += 60; /* never hang the suite on a broken test */
        while (!f->gate_release)
            if (pthread_cond_timedwait(&f->gate_cv, &f->gate_mu, &dl))
                break;
    }
    pthread_mutex_unlock(&f->gate_mu);
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    if (!tu_mkdtemp(f->dir, sizeof f->dir, "umg_test_db_"))
        return -1;
    pthread_mutex_init(&f->gate_mu, NULL);
    pthread_cond_init(&f->gate_cv, NULL);
    snprintf(f->data, sizeof f->data, "%s/data", f->dir);
    *state = f;
    return 0;
}
static int teardown(void **state)
{
    fixture *f = *state;
    tu_rm_rf(f->dir);
    pthread_mutex_destroy(&f->gate_mu);
    pthread_cond_destroy(&f->gate_cv);
    free(f);
    return 0;
}

static db_options opts_for(fixture *f)
{
    db_options o = db_options_default();
    o.fingerprint = FP_A;
    o.model_name = "clip-test-a";
    o.dim = DIM;
    o.log = count_log;
    o.log_ud = f;
    return o;
}

static db_t *open_ok(fixture *f, const db_options *o)
{
    db_t *db = NULL;
    int rc = db_open(f->data, o, &db);
    if (rc)
        fail_msg("db_open: %s: %s", umg_strerror(rc), umg_err_msg());
    return db;
}

/* open_ok from the snapshots: nothing logged (no index rebuilt). */
static db_t *reopen_from_snapshots(fixture *f, const db_options *o)
{
    f->log_lines = 0;
    db_t *db = open_ok(f, o);
    assert_int_equal(f->log_lines, 0);
    return db;
}

/* An image with nr regions and random vectors (into vecs: (1+nr) x DIM). */
typedef struct img_buf {
    db_image_in in;
    db_region_in regs[8];
    float vecs[9][DIM];
    char path[64];
} img_buf;

static void make_image(img_buf *b, const char *path, int nr)
{
    memset(b, 0, sizeof *b);
    snprintf(b->path, sizeof b->path, "%s", path);
    for (int i = 0; i <= nr; i++)
        rand_vec(b->vecs[i], DIM);
    b->in.path = b->path;
    for (int i = 0; i < 32; i++)
        b->in.sha256[i] = (uint8_t)((*path ? path[i % strlen(path)] : 0) + i);
    b->in.width = 640;
    b->in.height = 480;
    b->in.bytes = 12345;
    b->in.mtime = 1700000000;
    b->in.vector = b->vecs[0];
    b->in.n_regions = nr;
    b->in.regions = b->regs;
    for (int i = 0; i < nr; i++) {
        b->regs[i].box[0] = (float)i;
        b->regs[i].box[1] = 2.0f * i;
        b->regs[i].box[2] = 10.0f + i;
        b->regs[i].box[3] = 20.0f + i;
        b->regs[i].method = i % 2 ? "grid-3" : "grid-2";
        b->regs[i].score = 0.5f + 0.01f * i;
        b->regs[i].has_score = 1;
        b->regs[i].vector = b->vecs[1 + i];
    }
}

/* n images with nr regions each at <dir><i>.jpg into bufs/ins, stored with
 * one db_put_images (ids, rids may be NULL). */
static void put_images(db_t *db, img_buf *bufs, db_image_in *ins, int n, const char *dir, int nr, uint64_t *ids,
                       uint64_t *rids)
{
    for (int i = 0; i < n; i++) {
        char p[32];
        snprintf(p, sizeof p, "%s%d.jpg", dir, i);
        make_image(&bufs[i], p, nr);
        ins[i] = bufs[i].in;
    }
    assert_int_equal(db_put_images(db, ins, n, ids, rids), 0);
}

/* The stored counts, and the indexes holding exactly the stored vectors. */
static void assert_counts(db_t *db, uint64_t images, uint64_t regions)
{
    db_stats st;
    assert_int_equal(db_stats_get(db, &st), 0);
    assert_int_equal(st.images, images);
    assert_int_equal(st.regions, regions);
    assert_int_equal(st.index_images, images);
    assert_int_equal(st.index_regions, regions);
}

/* The image index's factory string is want. */
static void assert_image_factory(db_t *db, const char *want)
{
    db_stats st;
    assert_int_equal(db_stats_get(db, &st), 0);
    assert_string_equal(st.image_factory, want);
}

/* Enough images (no regions) to pass approx_threshold 600: the automatic
 * switch to IVF-PQ at the next checkpoint. */
enum { N_IVF = 700 };
typedef struct ivf_images {
    img_buf bufs[N_IVF];
    db_image_in ins[N_IVF];
    uint64_t ids[N_IVF];
} ivf_images;

/* N_IVF images at <dir><i>.jpg, stored; one static set (too big for the
 * stack), overwritten by the next call. */
static const ivf_images *put_ivf_images(db_t *db, const char *dir)
{
    static ivf_images s;
    put_images(db, s.bufs, s.ins, N_IVF, dir, 0, s.ids, NULL);
    return &s;
}

static void assert_vec_close(const float *stored, const float *raw)
{
    double n = 0;
    for (int i = 0; i < DIM; i++)
        n += (double)raw[i] * raw[i];
    n = sqrt(n);
    for (int i = 0; i < DIM; i++)
        assert_true(fabs(stored[i] - raw[i] / n) < 2e-3);
}

static void test_roundtrip(void **state)
{
    fixture *f = *state;
    db_options o = opts_for(f);
    db_t *db = open_ok(f, &o);
    img_buf b;
    make_image(&b, "/photos/a.jpg", 3);
    const char *tags[] = { "beach", "2021" };
    b.in.tags = tags;
    b.in.n_tags = 2;
    b.in.ingest_time = 1700000500;
    uint8_t patches[100];
    for (int i = 0; i < 100; i++)
        patches[i] = (uint8_t)(i * 7);
    db_extra_in ex = { "patch_tokens", patches, sizeof patches };
    b.in.extras = &ex;
    b.in.n_extras = 1;
    uint64_t id, rids[3];
    assert_int_equal(db_put_image(db, &b.in, &id, rids), 0);
    assert_true(id > 0);
    assert_true(rids[0] != id && rids[1] != rids[0] && rids[2] != rids[1]);

    db_image img;
    assert_int_equal(db_get_image(db, id, &img), 0);
    assert_string_equal(img.path, "/photos/a.jpg");
    assert_memory_equal(img.sha256, b.in.sha256, 32);
    assert_int_equal(img.width, 640);
    assert_int_equal(img.height, 480);
    assert_int_equal(img.bytes, 12345);
    assert_int_equal(img.mtime, 1700000000);
    assert_int_equal(img.ingest_time, 1700000500);
    assert_int_equal(img.n_tags, 2);
    assert_string_equal(img.tags[1], "2021");
    assert_int_equal(img.n_regions, 3);
    db_image_free(&img);

    uint64_t got;
    assert_int_equal(db_find_path(db, "/photos/a.jpg", &got), 0);
    assert_int_equal(got, id);
    assert_int_equal(db_find_path(db, "/photos/b.jpg", &got), UMG_ENOENT);
    uint64_t hids[4];
    int nh;
    assert_int_equal(db_find_hash(db, b.in.sha256, hids, 4, &nh), 0);
    assert_int_equal(nh, 1);
    assert_int_equal(hids[0], id);

    db_region *regs;
    int nr;
    assert_int_equal(db_list_regions(db, id, &regs, &nr), 0);
    assert_int_equal(nr, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(regs[i].id, rids[i]);
        assert_int_equal(regs[i].image_id, id);
        assert_true(regs[i].box[2] == 10.0f + i);
        assert_string_equal(regs[i].method, i % 2 ? "grid-3" : "grid-2");
        assert_true(regs[i].has_score && fabsf(regs[i].score - (0.5f + 0.01f * i)) < 1e-6f);
    }
    free(regs);
    db_region r;
    assert_int_equal(db_get_region(db, rids[2], &r), 0);
    assert_int_equal(r.image_id, id);

    float v[DIM];
    assert_int_equal(db_get_vector(db, DB_KIND_IMAGE, id, v), 0);
    assert_vec_close(v, b.vecs[0]);
    assert_int_equal(db_get_vector(db, DB_KIND_REGION, rids[1], v), 0);
    assert_vec_close(v, b.vecs[2]);

    void *data;
    size_t len;
    assert_int_equal(db_get_extra(db, id, "patch_tokens", &data, &len), 0);
    assert_int_equal(len, 100);
    assert_memory_equal(data, patches, 100);
    free(data);
    assert_int_equal(db_get_extra(db, id, "other", &data, &len), UMG_ENOENT);

    /* the same file at another path: two ids under one hash */
    img_buf b2;
    make_image(&b2, "/photos/copy.jpg", 0);
    memcpy(b2.in.sha256, b.in.sha256, 32);
    uint64_t id2;
    assert_int_equal(db_put_image(db, &b2.in, &id2, NULL), 0);
    assert_int_equal(db_find_hash(db, b.in.sha256, hids, 4, &nh), 0);
    assert_int_equal(nh, 2);
    db_close(db);

    /* everything survives a reopen (no checkpoint: indexes rebuilt from LMDB) */
    db = open_ok(f, &o);
    assert_int_equal(db_get_image(db, id, &img), 0);
    assert_string_equal(img.path, "/photos/a.jpg");
    db_image_free(&img);
    assert_counts(db, 2, 3);
    db_close(db);
}

static void test_bad_input(void **state)
{
    fixture *f = *state;
    db_options o = opts_for(f);
    db_t *db = open_ok(f, &o);
    img_buf b;
    make_image(&b, "/x.jpg", 1);
    b.in.vector = NULL;
    assert_int_equal(db_put_image(db, &b.in, NULL, NULL), UMG_EINVAL);
    make_image(&b, "/x.jpg", 1);
    b.vecs[1][3] = NAN;
    assert_int_equal(db_put_image(db, &b.in, NULL, NULL), UMG_EINVAL);
    make_image(&b, "/x.jpg", 1);
    memset(b.vecs[0], 0, sizeof b.vecs[0]);
    assert_int_equal(db_put_image(db, &b.in, NULL, NULL), UMG_EINVAL);
    make_image(&b, "/x.jpg", 1);
    b.regs[0].method = "a-method-name-that-is-far-too-long-to-store";
    assert_int_equal(db_put_image(db, &b.in, NULL, NULL), UMG_EINVAL);
    make_image(&b, "", 0);
    assert_int_equal(db_put_image(db, &b.in, NULL, NULL), UMG_EINVAL);
    /* nothing was written by the failures */
    db_stats st;
    assert_int_equal(db_stats_get(db, &st), 0);
    assert_int_equal(st.images, 0);
    assert_int_equal(st.seq, 0);
    db_close(db);
}

static void test_duplicate_and_replace(void **state)
{
    fixture *f = *state;
    db_options o = opts_for(f);
    db_t *db = open_ok(f, &o);
    img_buf b;
    make_image(&b, "/p/1.jpg", 2);
    uint64_t id1, r1[2], id2, r2[3];
    assert_int_equal(db_put_image(db, &b.in, &id1, r1), 0);
    assert_int_equal(db_put_image(db, &b.in, &id2, r1), UMG_EEXIST);
    make_image(&b, "/p/1.jpg", 3);
    b.in.replace = 1;
    assert_int_equal(db_put_image(db, &b.in, &id2, r2), 0);
    assert_true(id2 > id1);
    db_image img;
    assert_int_equal(db_get_image(db, id1, &img), UMG_ENOENT);
    db_region r;
    assert_int_equal(db_get_region(db, r1[0], &r), UMG_ENOENT);
    uint64_t got;
    assert_int_equal(db_find_path(db, "/p/1.jpg", &got), 0);
    assert_int_equal(got, id2);
    assert_counts(db, 1, 3);
    db_close(db);
}

static void test_search_and_delete(void **state)
{
    fixture *f = *state;
    db_options o = opts_for(f);
    db_t *db = open_ok(f, &o);
    enum { N = 60 };
    static img_buf bufs[N];
    static db_image_in ins[N];
    uint64_t ids[N], rids[2 * N];
    put_images(db, bufs, ins, N, "/s/", 2, ids, rids);
    db_hit hits[2 * N];
    int n;
    for (int i = 0; i < N; i++) {
        assert_int_equal(db_search(db, DB_KIND_IMAGE, bufs[i].vecs[0], NULL, hits, 5, &n), 0);
        assert_int_equal(n, 5);
        assert_int_equal(hits[0].id, ids[i]);
        assert_true(hits[0].score > 0.999f && hits[0].score >= hits[1].score);
        assert_int_equal(db_search(db, DB_KIND_REGION, bufs[i].vecs[2], NULL, hits, 1, &n), 0);
        assert_int_equal(hits[0].id, rids[2 * i + 1]);
    }
    /* forced re-rank gives the same top hit with exact scores */
    db_search_opts so = { .rerank = 1, .candidates = 20 };
    assert_int_equal(db_search(db, DB_KIND_IMAGE, bufs[7].vecs[0], &so, hits, 3, &n), 0);
    assert_int_equal(hits[0].id, ids[7]);

    /* delete: image, regions, vectors, extras gone; never returned */
    assert_int_equal(db_put_extra(db, ids[7], "patch_tokens", "abc", 3), 0);
    assert_int_equal(db_delete_image(db, ids[7]), 0);
    assert_int_equal(db_delete_image(db, ids[7]), UMG_ENOENT);
    void *data;
    size_t len;
    assert_int_equal(db_get_extra(db, ids[7], "patch_tokens", &data, &len), UMG_ENOENT);
    float v[DIM];
    assert_int_equal(db_get_vector(db, DB_KIND_REGION, rids[14], v), UMG_ENOENT);
    assert_int_equal(db_search(db, DB_KIND_IMAGE, bufs[7].vecs[0], NULL, hits, N, &n), 0);
    assert_int_equal(n, N - 1);
    for (int i = 0; i < n; i++)
        assert_true(hits[i].id != ids[7]);
    assert_int_equal(db_search(db, DB_KIND_REGION, bufs[7].vecs[1], NULL, hits, 2 * N, &n), 0);
    assert_int_equal(n, 2 * N - 2);
    for (int i = 0; i < n; i++)
        assert_true(hits[i].id != rids[14] && hits[i].id != rids[15]);
    uint64_t got;
    assert_int_equal(db_find_path(db, "/s/7.jpg", &got), UMG_ENOENT);

    /* checkpoint, more changes, reopen: snapshot + replay equals LMDB */
    assert_int_equal(db_checkpoint(db), 0);
    assert_int_equal(db_delete_image(db, ids[8]), 0);
    img_buf extra;
    make_image(&extra, "/s/late.jpg", 1);
    uint64_t late;
    assert_int_equal(db_put_image(db, &extra.in, &late, NULL), 0);
    db_close(db);
    db = reopen_from_snapshots(f, &o);
    db_stats st;
    assert_int_equal(db_stats_get(db, &st), 0);
    assert_int_equal(st.images, N - 1);
    assert_int_equal(st.index_images, N - 1);
    assert_int_equal(st.index_regions, st.regions);
    assert_int_equal(db_search(db, DB_KIND_IMAGE, extra.vecs[0], NULL, hits, 1, &n), 0);
    assert_int_equal(hits[0].id, late);
    assert_int_equal(db_search(db, DB_KIND_IMAGE, bufs[8].vecs[0], NULL, hits, N, &n), 0);
    for (int i = 0; i < n; i++)
        assert_true(hits[i].id != ids[8] && hits[i].id != ids[7]);
    db_close(db);
}

static void test_other_model(void **state)
{
    fixture *f = *state;
    db_options o = opts_for(f);
    db_t *db = open_ok(f, &o);
    db_close(db);
    db_options other = opts_for(f);
    other.fingerprint = FP_B;
    other.model_name = "clip-test-b";
    assert_int_equal(db_open(f->data, &other, &db), UMG_EMODEL);
    assert_null(db);
    assert_non_null(strstr(umg_err_msg(), "clip-test-a"));
    other = opts_for(f);
    other.dim = DIM * 2;
    assert_int_equal(db_open(f->data, &other, &db), UMG_EMODEL);
    assert_non_null(strstr(umg_err_msg(), "clip-test-a"));
    char *name;
    uint8_t fp[32];
    int dim;
    assert_int_equal(db_probe(f->data, &name, fp, &dim), 0);
    assert_string_equal(name, "clip-test-a");
    assert_memory_equal(fp, FP_A, 32);
    assert_int_equal(dim, DIM);
    free(name);
    assert_int_equal(db_probe(f->dir, &name, fp, &dim), UMG_ENOENT);
}

static void test_read_only_open(void **state)
{
    fixture *f = *state;
    db_options o = opts_for(f);
    db_t *db = open_ok(f, &o);
    img_buf b;
    make_image(&b, "/ro.jpg", 1);
    uint64_t id;
    assert_int_equal(db_put_image(db, &b.in, &id, NULL), 0);
    db_close(db);
    o.read_only = 1;
    db = open_ok(f, &o);
    db_hit h;
    int n;
    assert_int_equal(db_search(db, DB_KIND_IMAGE, b.vecs[0], NULL, &h, 1, &n), 0);
    assert_int_equal(h.id, id);
    make_image(&b, "/ro2.jpg", 0);
    assert_int_equal(db_put_image(db, &b.in, &id, NULL), UMG_EPERM);
    assert_int_equal(db_checkpoint(db), UMG_EPERM);
    db_close(db);
    char missing[400];
    snprintf(missing, sizeof missing, "%s/absent", f->dir);
    assert_int_equal(db_open(missing, &o, &db), UMG_ENOENT);
}

static void test_map_grows(void **state)
{
    fixture *f = *state;
    db_options o = opts_for(f);
    o.initial_map_size = 64 << 10; /* 64 KiB: full after a few images */
    db_t *db = open_ok(f, &o);
    static img_buf bufs[50];
    static db_image_in ins[50];
    static uint8_t blob[20000];
    db_extra_in ex = { "blob", blob, sizeof blob };
    for (int round = 0; round < 4; round++) {
        for (int i = 0; i < 50; i++) {
            char p[32];
            snprintf(p, sizeof p, "/m/%d/%d.jpg", round, i);
            make_image(&bufs[i], p, 4);
            bufs[i].in.extras = &ex;
            bufs[i].in.n_extras = 1;
            ins[i] = bufs[i].in;
        }
        int rc = db_put_images(db, ins, 50, NULL, NULL);
        if (rc)
            fail_msg("%s", umg_err_msg());
    }
    db_stats st;
    assert_int_equal(db_stats_get(db, &st), 0);
    assert_int_equal(st.images, 200);
    assert_true(st.map_size >= 4u << 20);
    assert_true(f->log_lines > 0); /* growth is logged */
    db_close(db);
}

/* Writers and readers at once: no errors, every write searchable after. */
typedef struct conc {
    db_t *db;
    volatile int stop;
    int errors;
    float q[DIM];
} conc;

static void *reader(void *arg)
{
    conc *c = arg;
    db_hit h[10];
    while (!c->stop) {
        int n;
        if (db_search(c->db, DB_KIND_REGION, c->q, NULL, h, 10, &n))
            __atomic_add_fetch(&c->errors, 1, __ATOMIC_RELAXED);
        db_stats st;
        if (db_stats_get(c->db, &st))
            __atomic_add_fetch(&c->errors, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

static void test_concurrent(void **state)
{
    fixture *f = *state;
    db_options o = opts_for(f);
    o.initial_map_size = 128 << 10; /* growth while readers run */
    o.approx_threshold = 300;       /* a checkpoint switches to IVF while readers run */
    o.region_factory = "IVF16,Flat";
    db_t *db = open_ok(f, &o);
    conc c = { .db = db };
    rand_vec(c.q, DIM);
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, reader, &c);
    for (int i = 0; i < 80; i++) {
        img_buf b;
        char p[32];
        snprintf(p, sizeof p, "/c/%d.jpg", i);
        make_image(&b, p, 5);
        assert_int_equal(db_put_image(db, &b.in, NULL, NULL), 0);
        if (i % 20 == 19)
            assert_int_equal(db_delete_image(db, (uint64_t)(i - 10) * 6 + 1), 0);
        if (i == 70) {
            int rc = db_checkpoint(db);
            if (rc)
                fail_msg("%s", umg_err_msg());
        }
    }
    c.stop = 1;
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(c.errors, 0);
    db_stats st;
    assert_int_equal(db_stats_get(db, &st), 0);
    assert_string_equal(st.region_factory, "IVF16,Flat");
    assert_int_equal(st.index_regions, st.regions);
    assert_int_equal(st.index_images, st.images);
    db_close(db);
    /* the IVF snapshot loads back */
    db = reopen_from_snapshots(f, &o);
    assert_int_equal(db_stats_get(db, &st), 0);
    assert_string_equal(st.region_factory, "IVF16,Flat");
    db_close(db);
}

/* The automatic switch to IVF-PQ at a checkpoint, re-ranked searches. */
static void test_auto_approximate(void **state)
{
    fixture *f = *state;
    db_options o = opts_for(f);
    o.approx_threshold = 600;
    o.nprobe = 256; /* every list: only PQ + re-rank decide */
    db_t *db = open_ok(f, &o);
    const ivf_images *im = put_ivf_images(db, "/auto/");
    assert_image_factory(db, "Flat");
    assert_int_equal(db_checkpoint(db), 0);
    db_stats st;
    assert_int_equal(db_stats_get(db, &st), 0);
    assert_string_equal(st.image_factory, "IVF256,PQ4np");
    assert_int_equal(st.index_images, N_IVF);
    int top1 = 0;
    for (int i = 0; i < N_IVF; i += 7) {
        db_hit h[3];
        int n;
        assert_int_equal(db_search(db, DB_KIND_IMAGE, im->bufs[i].vecs[0], NULL, h, 3, &n), 0);
        assert_int_equal(n, 3);
        top1 += h[0].id == im->ids[i];
        /* re-ranked scores are exact cosines of stored (float16) vectors */
        assert_true(h[0].score <= 1.001f && h[0].score >= h[1].score);
    }
    assert_int_equal(top1, (N_IVF + 6) / 7);
    db_close(db);
    db = reopen_from_snapshots(f, &o);
    assert_image_factory(db, "IVF256,PQ4np");
    db_close(db);
}

/* Regression (bench/server, 21 min stop): a session that only searched must
 * never retrain at its checkpoint, even when the snapshot's IVF factory is not
 * what today's automatic choice would be (here: more lists, as an earlier
 * formula made).  Also: NO_BUILD leaves a pending switch for later, and
 * db_cancel_builds stops a build without touching the index in use. */
static void test_searches_never_retrain(void **state)
{
    fixture *f = *state;
    db_options o = opts_for(f);
    o.approx_threshold = 600;
    o.image_factory = "IVF512,PQ4np"; /* automatic at 700 vectors would be IVF256,PQ4np */
    db_t *db = open_ok(f, &o);
    const ivf_images *im = put_ivf_images(db, "/ro/");
    assert_int_equal(db_checkpoint(db), 0);
    db_close(db);

    o.image_factory = NULL; /* automatic from now on */
    db = reopen_from_snapshots(f, &o);
    assert_int_equal(db_build_pending(db), 0);
    for (int i = 0; i < N_IVF; i += 50) { /* a session of reads */
        db_hit h[3];
        int n;
        assert_int_equal(db_search(db, DB_KIND_IMAGE, im->bufs[i].vecs[0], NULL, h, 3, &n), 0);
        assert_int_equal(h[0].id, im->ids[i]);
        db_image img;
        assert_int_equal(db_get_image(db, im->ids[i], &img), 0);
        db_image_free(&img);
    }
    assert_int_equal(db_build_pending(db), 0);
    char snap[400];
    snprintf(snap, sizeof snap, "%s/images.faiss", f->data);
    struct stat before, after;
    assert_int_equal(stat(snap, &before), 0);
    assert_int_equal(db_checkpoint(db), 0);
    assert_int_equal(f->log_lines, 0); /* no "building the image index" */
    assert_image_factory(db, "IVF512,PQ4np");
    /* nothing changed: the snapshot is not even rewritten (a rewrite renames a new file over it) */
    assert_int_equal(stat(snap, &after), 0);
    assert_int_equal(after.st_ino, before.st_ino);
    db_close(db);
}

static void test_checkpoint_no_build(void **state)
{
    fixture *f = *state;
    db_options o = opts_for(f);
    o.approx_threshold = 600;
    db_t *db = open_ok(f, &o);
    const ivf_images *im = put_ivf_images(db, "/ro/");
    assert_int_equal(db_build_pending(db), 1);
    f->log_lines = 0;
    assert_int_equal(db_checkpoint_ex(db, DB_CHECKPOINT_NO_BUILD), 0);
    assert_int_equal(f->log_lines, 1);
    assert_non_null(strstr(f->last_log, "left to a later checkpoint"));
    db_stats st;
    assert_int_equal(db_stats_get(db, &st), 0);
    assert_string_equal(st.image_factory, "Flat");
    assert_int_equal(st.snapshot_seq[0], st.seq);
    db_close(db);

    /* the exact snapshot is complete: no rebuild at open; the switch is still pending */
    db = reopen_from_snapshots(f, &o);
    assert_int_equal(db_build_pending(db), 1);
    /* cancelled: the build gives up, the exact index keeps serving */
    db_cancel_builds(db);
    assert_int_equal(db_checkpoint(db), UMG_ESHUTDOWN);
    assert_int_equal(db_stats_get(db, &st), 0);
    assert_string_equal(st.image_factory, "Flat");
    assert_int_equal(st.index_images, N_IVF);
    db_hit h[1];
    int n;
    assert_int_equal(db_search(db, DB_KIND_IMAGE, im->bufs[3].vecs[0], NULL, h, 1, &n), 0);
    assert_int_equal(h[0].id, im->ids[3]);
    db_close(db);

    db = open_ok(f, &o);
    assert_int_equal(db_checkpoint(db), 0);
    assert_int_equal(db_stats_get(db, &st), 0);
    assert_string_equal(st.image_factory, "IVF256,PQ4np");
    assert_int_equal(db_build_pending(db), 0);
    db_close(db);
}

static uint64_t top1(db_t *db, const float *q)
{
    db_hit h[1];
    int n = 0;
    assert_int_equal(db_search(db, DB_KIND_IMAGE, q, NULL, h, 1, &n), 0);
    assert_int_equal(n, 1);
    return h[0].id;
}

typedef struct ck_thread {
    db_t *db;
    int rc;
} ck_thread;

static void *run_checkpoint(void *arg)
{
    ck_thread *c = arg;
    c->rc = db_checkpoint(c->db);
    return NULL;
}

/* Issue 4: an open whose snapshot is missing, past the approximate
 * threshold, used to train the approximate index inside db_open (minutes at
 * 100,000+ vectors, before the server answers anything).  Now it loads the
 * stored vectors into an exact index, serves from it, and the checkpoint
 * builds the approximate index from a read snapshot and swaps it in; writes
 * and deletes made during the build are caught up from the log, also when
 * another checkpoint (a stop's NO_BUILD one) wrote snapshots meanwhile (it
 * must not prune the log the build still needs). */
static void test_open_without_snapshot_serves_exact(void **state)
{
    fixture *f = *state;
    db_options o = opts_for(f);
    o.approx_threshold = 600;
    o.nprobe = 256; /* every list: only PQ + re-rank decide */
    db_t *db = open_ok(f, &o);
    const ivf_images *im = put_ivf_images(db, "/snapless/");
    assert_int_equal(db_checkpoint(db), 0);
    assert_image_factory(db, "IVF256,PQ4np");
    db_close(db);
    char snap[400];
    snprintf(snap, sizeof snap, "%s/images.faiss", f->data);
    assert_int_equal(unlink(snap), 0);

    f->all_log[0] = '\0';
    db = open_ok(f, &o);
    /* no training in the open: the exact index, holding every stored vector */
    assert_image_factory(db, "Flat");
    assert_counts(db, N_IVF, 0);
    assert_null(strstr(f->all_log, "trained on"));
    assert_non_null(strstr(f->all_log, "no snapshot; rebuilding the image index from 700 stored vectors"));
    assert_non_null(strstr(f->all_log, "until a checkpoint builds IVF256,PQ4np"));
    assert_int_equal(db_build_pending(db), 1);
    for (int i = 0; i < N_IVF; i += 35)
        assert_int_equal(top1(db, im->bufs[i].vecs[0]), im->ids[i]);

    /* the build, held after its training (its read snapshot is taken) */
    pthread_mutex_lock(&f->gate_mu);
    f->gate_armed = 1;
    pthread_mutex_unlock(&f->gate_mu);
    ck_thread ck = { db, -1 };
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, run_checkpoint, &ck), 0);
    pthread_mutex_lock(&f->gate_mu);
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 60;
    while (!f->gate_in_build)
        if (pthread_cond_timedwait(&f->gate_cv, &f->gate_mu, &dl))
            break;
    int in_build = f->gate_in_build;
    pthread_mutex_unlock(&f->gate_mu);
    if (!in_build) {
        pthread_join(t, NULL);
        fail_msg("the checkpoint never trained an index; log:\n%s", f->all_log);
    }

    /* meanwhile: a write and a delete, served at once by the exact index */
    img_buf late;
    make_image(&late, "/snapless/late.jpg", 0);
    uint64_t late_id = 0;
    assert_int_equal(db_put_image(db, &late.in, &late_id, NULL), 0);
    uint64_t gone = im->ids[5];
    assert_int_equal(db_delete_image(db, gone), 0);
    assert_image_factory(db, "Flat");
    assert_int_equal(top1(db, late.vecs[0]), late_id);
    assert_true(top1(db, im->bufs[5].vecs[0]) != gone);
    /* a stop's checkpoint while the build runs: snapshots of the exact index, log kept */
    assert_int_equal(db_checkpoint_ex(db, DB_CHECKPOINT_NO_BUILD), 0);

    pthread_mutex_lock(&f->gate_mu);
    f->gate_release = 1;
    f->gate_armed = 0;
    pthread_cond_broadcast(&f->gate_cv);
    pthread_mutex_unlock(&f->gate_mu);
    pthread_join(t, NULL);
    if (ck.rc)
        fail_msg("checkpoint: %s: %s", umg_strerror(ck.rc), umg_err_msg());

    /* swapped in, caught up: the write found, the delete gone, counts equal */
    assert_image_factory(db, "IVF256,PQ4np");
    assert_int_equal(top1(db, late.vecs[0]), late_id);
    assert_true(top1(db, im->bufs[5].vecs[0]) != gone);
    assert_counts(db, N_IVF, 0);
    assert_int_equal(db_build_pending(db), 0);
    for (int i = 0; i < N_IVF; i += 35)
        if (i != 5)
            assert_int_equal(top1(db, im->bufs[i].vecs[0]), im->ids[i]);
    assert_non_null(strstr(f->all_log, "caught up with 2 log entries written meanwhile; it replaces the Flat index"));
    db_close(db);

    /* the checkpoint after the swap wrote the approximate snapshot, with the write */
    db = reopen_from_snapshots(f, &o);
    assert_image_factory(db, "IVF256,PQ4np");
    assert_counts(db, N_IVF, 0);
    assert_int_equal(top1(db, late.vecs[0]), late_id);
    db_close(db);
}

typedef struct put_thread {
    db_t *db;
    const db_image_in *in;
    int rc;
    int done; /* atomic */
} put_thread;

static void *run_put(void *arg)
{
    put_thread *p = arg;
    p->rc = db_put_image(p->db, p->in, NULL, NULL);
    __atomic_store_n(&p->done, 1, __ATOMIC_RELEASE);
    return NULL;
}

/* Issue 4: writing a snapshot to disk (seconds for an exact index of
 * 100,000+ vectors) used to hold the writer mutex, stalling ingest.  Here
 * the snapshot's temporary file is a FIFO that this test reads only later,
 * so the write blocks in the middle; a put must complete meanwhile. */
static void test_snapshot_write_does_not_block_writers(void **state)
{
    fixture *f = *state;
    db_options o = opts_for(f);
    db_t *db = open_ok(f, &o);
    put_ivf_images(db, "/fifo/"); /* ~95 KB of exact index: more than a pipe holds */
    char tmp[400];
    snprintf(tmp, sizeof tmp, "%s/images.faiss.tmp", f->data);
    assert_int_equal(mkfifo(tmp, 0600), 0);
    ck_thread ck = { db, -1 };
    pthread_t tc, tp;
    assert_int_equal(pthread_create(&tc, NULL, run_checkpoint, &ck), 0);
    /* non-blocking open, then wait for the first bytes: the checkpoint is
     * then inside the file write (and cannot finish it: nobody reads yet) */
    int fd = open(tmp, O_RDONLY | O_NONBLOCK);
    assert_true(fd >= 0);
    struct pollfd pfd = { .fd = fd, .events = POLLIN };
    if (poll(&pfd, 1, 30000) != 1) {
        close(fd);
        pthread_join(tc, NULL);
        fail_msg("the checkpoint never wrote to %s (rc %d: %s)", tmp, ck.rc, umg_err_msg());
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);

    img_buf b;
    make_image(&b, "/fifo/during.jpg", 0);
    put_thread pt = { db, &b.in, -1, 0 };
    assert_int_equal(pthread_create(&tp, NULL, run_put, &pt), 0);
    int done = 0;
    for (int i = 0; i < 1000 && !(done = __atomic_load_n(&pt.done, __ATOMIC_ACQUIRE)); i++)
        usleep(10000); /* up to 10 s */

    char buf[4096];
    size_t got = 0;
    for (ssize_t r; (r = read(fd, buf, sizeof buf)) > 0;)
        got += (size_t)r;
    close(fd);
    pthread_join(tc, NULL);
    pthread_join(tp, NULL);
    assert_true(done); /* the put finished while the snapshot write was blocked */
    assert_int_equal(pt.rc, 0);
    assert_true(got > 65536);
    /* a FIFO cannot be fsynced: this checkpoint failed, its temporary file is gone */
    assert_true(ck.rc != 0);
    assert_int_equal(access(tmp, F_OK), -1);

    assert_int_equal(db_checkpoint(db), 0);
    db_close(db);
    db = reopen_from_snapshots(f, &o);
    assert_counts(db, N_IVF + 1, 0);
    uint64_t id;
    assert_int_equal(db_find_path(db, "/fifo/during.jpg", &id), 0);
    assert_int_equal(top1(db, b.vecs[0]), id);
    db_close(db);
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_input, setup, teardown),
        cmocka_unit_test_setup_teardown(test_duplicate_and_replace, setup, teardown),
        cmocka_unit_test_setup_teardown(test_search_and_delete, setup, teardown),
        cmocka_unit_test_setup_teardown(test_other_model, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_only_open, setup, teardown),
        cmocka_unit_test_setup_teardown(test_map_grows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auto_approximate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_searches_never_retrain, setup, teardown),
        cmocka_unit_test_setup_teardown(test_checkpoint_no_build, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_without_snapshot_serves_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_snapshot_write_does_not_block_writers, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
