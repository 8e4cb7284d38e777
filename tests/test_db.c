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
#include <sys/file.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <lmdb.h>
#include <openssl/sha.h>

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

/* ---- issue 14: the data directory's integrity ---- */

/* The directory's LMDB opened directly (the db handle closed), to damage or
 * rewrite records as a faulty disk or another tool would. */
typedef struct raw_db {
    MDB_env *env;
    MDB_txn *txn;
} raw_db;

static void raw_begin(raw_db *r, const char *dir)
{
    assert_int_equal(mdb_env_create(&r->env), 0);
    mdb_env_set_maxdbs(r->env, 16);
    assert_int_equal(mdb_env_open(r->env, dir, 0, 0600), 0);
    assert_int_equal(mdb_txn_begin(r->env, NULL, 0, &r->txn), 0);
}
static MDB_dbi raw_dbi(raw_db *r, const char *name)
{
    MDB_dbi d;
    unsigned flags = !strcmp(name, "hashes") || !strcmp(name, "img_regions") ? MDB_DUPSORT | MDB_DUPFIXED : 0;
    assert_int_equal(mdb_dbi_open(r->txn, name, flags, &d), 0);
    return d;
}
static void raw_put(raw_db *r, const char *dbi, const void *key, size_t klen, const void *val, size_t vlen)
{
    MDB_val k = { klen, (void *)key }, v = { vlen, (void *)val };
    assert_int_equal(mdb_put(r->txn, raw_dbi(r, dbi), &k, &v, 0), 0);
}
/* A copy of the value at key (free()), *len its size. */
static void *raw_get(raw_db *r, const char *dbi, const void *key, size_t klen, size_t *len)
{
    MDB_val k = { klen, (void *)key }, v;
    assert_int_equal(mdb_get(r->txn, raw_dbi(r, dbi), &k, &v), 0);
    void *copy = malloc(v.mv_size);
    memcpy(copy, v.mv_data, v.mv_size);
    *len = v.mv_size;
    return copy;
}
static void raw_end(raw_db *r)
{
    assert_int_equal(mdb_txn_commit(r->txn), 0);
    mdb_env_close(r->env);
}
static void be64_key(unsigned char *k, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        k[i] = (unsigned char)v;
}

static void copy_file(const char *from, const char *to)
{
    size_t len;
    char *b = tu_read_file(from, &len);
    tu_write_file(to, b, len);
    free(b);
}

/* A new directory holding n images of nr regions at <dir><i>.jpg (ids may be
 * NULL), checkpointed and closed. */
static void fill_checkpointed(fixture *f, const db_options *o, img_buf *bufs, db_image_in *ins, int n,
                              const char *dir, int nr, uint64_t *ids)
{
    db_t *db = open_ok(f, o);
    put_images(db, bufs, ins, n, dir, nr, ids, NULL);
    assert_int_equal(db_checkpoint(db), 0);
    db_close(db);
}

/* A second opener of a data directory is refused, naming the holder's pid:
 * another handle of this process, and another process (a forked child
 * holding it); once the holder closes, the directory opens again. */
static void test_lock_refuses_second_opener(void **state)
{
    fixture *f = *state;
    db_options o = opts_for(f);
    db_t *db = open_ok(f, &o), *db2 = NULL;
    char pid[32];
    snprintf(pid, sizeof pid, "pid %ld", (long)getpid());
    assert_int_equal(db_open(f->data, &o, &db2), UMG_EBUSY);
    assert_null(db2);
    assert_non_null(strstr(umg_err_msg(), pid));
    assert_non_null(strstr(umg_err_msg(), "in use"));
    o.read_only = 1; /* a read-only open writes nothing and takes no lock */
    db2 = open_ok(f, &o);
    db_close(db2);
    o.read_only = 0;
    db_close(db);

    int ready[2], go[2];
    assert_int_equal(pipe(ready), 0);
    assert_int_equal(pipe(go), 0);
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        db_t *c = NULL;
        char ok = db_open(f->data, &o, &c) ? 'n' : 'y';
        if (write(ready[1], &ok, 1) != 1 || read(go[0], &ok, 1) != 1) {}
        db_close(c);
        _exit(0);
    }
    char ok = 0;
    assert_int_equal(read(ready[0], &ok, 1), 1);
    assert_int_equal(ok, 'y');
    snprintf(pid, sizeof pid, "pid %ld", (long)child);
    assert_int_equal(db_open(f->data, &o, &db2), UMG_EBUSY);
    assert_non_null(strstr(umg_err_msg(), pid));
    assert_int_equal(write(go[1], "x", 1), 1);
    int st;
    assert_int_equal(waitpid(child, &st, 0), child);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    for (int i = 0; i < 2; i++)
        close(ready[i]), close(go[i]);
    db = open_ok(f, &o);
    db_close(db);
}

/* A data.mdb shorter than its meta page says (truncated to 8 KiB, to half)
 * is refused by name; before the check, LMDB touched the missing pages and
 * the process died of SIGBUS. */
static void test_truncated_data_mdb(void **state)
{
    fixture *f = *state;
    db_options o = opts_for(f);
    db_t *db = open_ok(f, &o);
    img_buf bufs[60];
    db_image_in ins[60];
    put_images(db, bufs, ins, 60, "/trunc/", 3, NULL, NULL);
    db_close(db);
    char mdb[400], saved[400];
    snprintf(mdb, sizeof mdb, "%s/data.mdb", f->data);
    snprintf(saved, sizeof saved, "%s/data.mdb.saved", f->dir);
    copy_file(mdb, saved);
    struct stat st;
    assert_int_equal(stat(mdb, &st), 0);
    assert_true(st.st_size > 4 * 8192);
    off_t sizes[] = { 8192, st.st_size / 2, 100 };
    for (int i = 0; i < 3; i++) {
        copy_file(saved, mdb);
        assert_int_equal(truncate(mdb, sizes[i]), 0);
        assert_int_equal(db_open(f->data, &o, &db), UMG_EFORMAT);
        assert_null(db);
        assert_non_null(strstr(umg_err_msg(), mdb));
        assert_non_null(strstr(umg_err_msg(), "truncated"));
        char *name;
        uint8_t fp[32];
        int dim;
        assert_int_equal(db_probe(f->data, &name, fp, &dim), UMG_EFORMAT);
    }
    copy_file(saved, mdb);
    db = open_ok(f, &o);
    assert_counts(db, 60, 180);
    db_close(db);
}

/* Snapshots that cover more than the database holds (data.mdb deleted,
 * emptied, or an older copy put back) are refused, writing nothing; with
 * accept_data_loss the open serves what LMDB holds. */
static void test_lost_database_refused(void **state)
{
    fixture *f = *state;
    db_options o = opts_for(f);
    db_t *db = open_ok(f, &o);
    img_buf bufs[10];
    db_image_in ins[10];
    put_images(db, bufs, ins, 5, "/lost/a", 1, NULL, NULL);
    db_close(db);
    char mdb[400], old[400], snap[400];
    snprintf(mdb, sizeof mdb, "%s/data.mdb", f->data);
    snprintf(old, sizeof old, "%s/data.mdb.old", f->dir);
    snprintf(snap, sizeof snap, "%s/images.faiss", f->data);
    copy_file(mdb, old); /* 5 images */
    db = open_ok(f, &o);
    put_images(db, bufs, ins, 5, "/lost/b", 1, NULL, NULL);
    assert_int_equal(db_checkpoint(db), 0);
    db_close(db);
    size_t snap_len;
    char *snap_bytes = tu_read_file(snap, &snap_len);

    /* deleted, emptied, older copy */
    for (int round = 0; round < 3; round++) {
        if (round == 0)
            assert_int_equal(unlink(mdb), 0);
        else if (round == 1)
            assert_int_equal(truncate(mdb, 0), 0);
        else
            copy_file(old, mdb);
        for (int again = 0; again < 2; again++) { /* the refusal changed nothing */
            assert_int_equal(db_open(f->data, &o, &db), UMG_EDB);
            assert_null(db);
            assert_non_null(strstr(umg_err_msg(), "--accept-data-loss"));
            assert_non_null(strstr(umg_err_msg(), round == 2 ? "holds only" : "holds nothing"));
        }
        size_t len;
        char *now = tu_read_file(snap, &len);
        assert_int_equal(len, snap_len);
        assert_memory_equal(now, snap_bytes, len);
        free(now);
    }
    /* accepted: the older copy's 5 images are served and the snapshots rebuilt */
    o.accept_data_loss = 1;
    f->all_log[0] = '\0';
    db = open_ok(f, &o);
    assert_non_null(strstr(f->all_log, "accept_data_loss"));
    assert_counts(db, 5, 5);
    assert_int_equal(db_checkpoint(db), 0);
    db_close(db);
    o.accept_data_loss = 0;
    db = reopen_from_snapshots(f, &o);
    assert_counts(db, 5, 5);
    db_close(db);
    free(snap_bytes);
}

/* Snapshots copied from another data directory with the same sequence and
 * count (the same ids) are recognised by the collection id and rebuilt: every
 * image finds itself.  Before the id they were served silently. */
static void test_foreign_snapshots_rebuilt(void **state)
{
    fixture *f = *state;
    char other[400];
    snprintf(other, sizeof other, "%s/other", f->dir);
    db_options o = opts_for(f);
    img_buf bufs[8];
    db_image_in ins[8];
    db_t *db = NULL;
    assert_int_equal(db_open(other, &o, &db), 0);
    put_images(db, bufs, ins, 8, "/b/", 1, NULL, NULL);
    assert_int_equal(db_checkpoint(db), 0);
    db_close(db);
    uint64_t ids[8];
    fill_checkpointed(f, &o, bufs, ins, 8, "/a/", 1, ids);
    for (int k = 0; k < 2; k++) {
        char from[500], to[500];
        snprintf(from, sizeof from, "%s/%s", other, k ? "regions.faiss" : "images.faiss");
        snprintf(to, sizeof to, "%s/%s", f->data, k ? "regions.faiss" : "images.faiss");
        copy_file(from, to);
    }
    f->all_log[0] = '\0';
    db = open_ok(f, &o);
    assert_non_null(strstr(f->all_log, "another data directory"));
    for (int i = 0; i < 8; i++)
        assert_int_equal(top1(db, bufs[i].vecs[0]), ids[i]);
    assert_int_equal(db_checkpoint(db), 0);
    db_close(db);
    db = reopen_from_snapshots(f, &o);
    db_close(db);
}

/* The snapshot file as version 1 (no collection id), as written before ids. */
static void snapshot_to_v1(const char *path)
{
    size_t len;
    char *v2 = tu_read_file(path, &len);
    enum { FIXED_V1 = 52 };
    assert_int_equal(v2[8], 2);
    memmove(v2 + FIXED_V1, v2 + FIXED_V1 + 16, len - FIXED_V1 - 16);
    v2[8] = 1;
    tu_write_file(path, v2, len - 16);
    free(v2);
}

/* A directory from before collection ids (no meta "collection", version 1
 * snapshots) gets an id at its first open, keeps its snapshots (no rebuild),
 * and the next checkpoint writes them with the id. */
static void test_collection_id_migration(void **state)
{
    fixture *f = *state;
    db_options o = opts_for(f);
    img_buf bufs[6];
    db_image_in ins[6];
    uint64_t ids[6];
    fill_checkpointed(f, &o, bufs, ins, 6, "/mig/", 2, ids);
    db_t *db;
    raw_db r;
    raw_begin(&r, f->data);
    MDB_val k = { 10, "collection" };
    assert_int_equal(mdb_del(r.txn, raw_dbi(&r, "meta"), &k, NULL), 0);
    raw_end(&r);
    char snap[2][400];
    for (int i = 0; i < 2; i++) {
        snprintf(snap[i], sizeof snap[i], "%s/%s", f->data, i ? "regions.faiss" : "images.faiss");
        snapshot_to_v1(snap[i]);
    }

    f->all_log[0] = '\0';
    db = open_ok(f, &o);
    assert_non_null(strstr(f->all_log, "recorded a collection id"));
    assert_null(strstr(f->all_log, "rebuilding"));
    assert_counts(db, 6, 12);
    assert_int_equal(top1(db, bufs[3].vecs[0]), ids[3]);
    assert_int_equal(db_checkpoint(db), 0); /* rewrites the snapshots although nothing changed */
    db_close(db);
    raw_begin(&r, f->data);
    size_t len;
    unsigned char *id = raw_get(&r, "meta", "collection", 10, &len);
    raw_end(&r);
    assert_int_equal(len, 16);
    for (int i = 0; i < 2; i++) {
        size_t sl;
        char *s = tu_read_file(snap[i], &sl);
        assert_int_equal(s[8], 2);
        assert_memory_equal(s + 52, id, 16);
        free(s);
    }
    free(id);
    db = reopen_from_snapshots(f, &o);
    db_close(db);
}

/* A FIFO named like a snapshot: the open does not hang, it rebuilds. */
static void test_fifo_snapshot(void **state)
{
    fixture *f = *state;
    db_options o = opts_for(f);
    db_t *db = open_ok(f, &o);
    img_buf b;
    make_image(&b, "/fifo.jpg", 1);
    uint64_t id;
    assert_int_equal(db_put_image(db, &b.in, &id, NULL), 0);
    db_close(db);
    char fifo[400];
    snprintf(fifo, sizeof fifo, "%s/images.faiss", f->data);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    f->all_log[0] = '\0';
    alarm(30); /* the old code blocks in open(): fail by SIGALRM instead of hanging */
    db = open_ok(f, &o);
    alarm(0);
    assert_non_null(strstr(f->all_log, "not a regular file"));
    assert_int_equal(top1(db, b.vecs[0]), id);
    db_close(db);
}

/* Under umask 022 the directory is 0700 and every file in it 0600. */
static void test_file_modes(void **state)
{
    fixture *f = *state;
    mode_t old = umask(022);
    db_options o = opts_for(f);
    db_t *db = open_ok(f, &o);
    img_buf b;
    make_image(&b, "/mode.jpg", 1);
    assert_int_equal(db_put_image(db, &b.in, NULL, NULL), 0);
    assert_int_equal(db_checkpoint(db), 0);
    db_close(db);
    umask(old);
    struct stat st;
    assert_int_equal(stat(f->data, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0700);
    const char *files[] = { "data.mdb", "lock.mdb", "umgdb.lock", "images.faiss", "regions.faiss" };
    for (int i = 0; i < 5; i++) {
        char p[400];
        snprintf(p, sizeof p, "%s/%s", f->data, files[i]);
        assert_int_equal(stat(p, &st), 0);
        if ((st.st_mode & 0777) != 0600)
            fail_msg("%s: mode %o", p, st.st_mode & 0777);
    }
}

static int count_image(void *ud, const db_image *img)
{
    (void)img;
    ++*(int *)ud;
    return 0;
}

static int stop_at_second(void *ud, const db_image *img)
{
    (void)img;
    return ++*(int *)ud == 2 ? 7 : 0;
}

/* Capture metadata in the image record (issue 17): without it a record is
 * version 1, byte for byte the old layout; with it version 2, read back as
 * written; a damaged capture (unknown flag, offset without time, empty
 * camera, position out of range, cut short) is UMG_EINTERNAL, and
 * db_scan_images leaves such a record out and goes on; out-of-range input is
 * refused.  db_search_within scores a subset exactly as the exact index does. */
static void test_capture_records(void **state)
{
    fixture *f = *state;
    db_options o = opts_for(f);
    db_t *db = open_ok(f, &o);
    img_buf bufs[7];
    uint64_t ids[7], rids[7][2];
    db_capture full = {.has_taken = 1, .taken = 1563105600, .has_offset = 1, .offset_minutes = 120,
                       .has_gps = 1, .lat = -33.8568, .lon = 151.2153};
    snprintf(full.camera, sizeof full.camera, "FUJIFILM X-T3");
    for (int i = 0; i < 7; i++) {
        char p[32];
        snprintf(p, sizeof p, "/cap/%d.jpg", i);
        make_image(&bufs[i], p, 2);
        if (i) bufs[i].in.capture = &full;
        assert_int_equal(db_put_image(db, &bufs[i].in, &ids[i], rids[i]), 0);
    }
    db_image img;
    assert_int_equal(db_get_image(db, ids[0], &img), 0);
    assert_false(img.capture.has_taken || img.capture.has_gps || img.capture.camera[0]);
    db_image_free(&img);
    assert_int_equal(db_get_image(db, ids[1], &img), 0);
    assert_memory_equal(&img.capture, &full, sizeof full);
    db_image_free(&img);
    db_capture bad = full;
    bad.offset_minutes = 2000;
    img_buf b;
    make_image(&b, "/cap/bad.jpg", 0);
    b.in.capture = &bad;
    uint64_t bid;
    assert_int_equal(db_put_image(db, &b.in, &bid, NULL), UMG_EINVAL);
    bad = full, bad.taken = DB_MAX_TAKEN + 1;
    assert_int_equal(db_put_image(db, &b.in, &bid, NULL), UMG_EINVAL);

    /* search within: images 1, 3 and a gone id; regions of 2 and 4 */
    float q[DIM];
    rand_vec(q, DIM);
    db_hit all[7], sub[4];
    int na, ns;
    assert_int_equal(db_search(db, DB_KIND_IMAGE, q, NULL, all, 7, &na), 0);
    uint64_t want[2] = {ids[1], ids[3]}, pick[3] = {ids[3], 999999, ids[1]};
    assert_int_equal(db_search_within(db, DB_KIND_IMAGE, q, pick, 3, sub, 4, &ns), 0);
    assert_int_equal(ns, 2);
    for (int i = 0, w = 0; i < na; i++)
        if (all[i].id == want[0] || all[i].id == want[1]) {
            assert_int_equal(sub[w].id, all[i].id);
            assert_float_equal(sub[w].score, all[i].score, 1e-5);
            w++;
        }
    uint64_t two[2] = {ids[2], ids[4]};
    assert_int_equal(db_search_within(db, DB_KIND_REGION, q, two, 2, sub, 4, &ns), 0);
    assert_int_equal(ns, 4);
    for (int i = 0; i < ns; i++) {
        assert_true(sub[i].id == rids[2][0] || sub[i].id == rids[2][1] || sub[i].id == rids[4][0] ||
                    sub[i].id == rids[4][1]);
        if (i) assert_true(sub[i - 1].score >= sub[i].score);
        float v[DIM];
        assert_int_equal(db_get_vector(db, DB_KIND_REGION, sub[i].id, v), 0);
        double dot = 0, qq = 0;
        for (int d = 0; d < DIM; d++) dot += (double)v[d] * q[d], qq += (double)q[d] * q[d];
        assert_float_equal(sub[i].score, dot / sqrt(qq), 1e-5);
    }
    assert_int_equal(db_search_within(db, DB_KIND_REGION, q, two, 2, sub, 1, &ns), 0);
    assert_int_equal(ns, 1); /* k cuts */
    db_close(db);

    unsigned char k[7][8];
    raw_db r;
    raw_begin(&r, f->data);
    size_t len0, len;
    for (int i = 0; i < 7; i++) be64_key(k[i], ids[i]);
    unsigned char *rec = raw_get(&r, "images", k[0], 8, &len0);
    uint32_t version;
    memcpy(&version, rec, 4);
    assert_int_equal(version, 1);
    /* v1: 76 fixed bytes, the path, the tag count; nothing after */
    assert_int_equal(len0, 76 + strlen("/cap/0.jpg") + 4);
    free(rec);
    rec = raw_get(&r, "images", k[1], 8, &len);
    memcpy(&version, rec, 4);
    assert_int_equal(version, 2);
    size_t cap_at = len0; /* same path length: the capture starts where version 1 ended */
    /* flags 1|2|4|8, i64, i16, u8 13 + "FUJIFILM X-T3", f64, f64 */
    assert_int_equal(len, cap_at + 1 + 8 + 2 + 1 + 13 + 16);
    assert_int_equal(rec[cap_at], 15);
    unsigned char *orig = malloc(len);
    memcpy(orig, rec, len);
    struct { size_t at; unsigned char byte; int cut; } dmg[5] = {
        {0, 0x1f, 0},             /* an unknown flag */
        {0, 0x02, 0},             /* an offset without a time (the rest then misreads too) */
        {11, 0, 0},               /* camera length 0 */
        {12 + 13 + 7, 0x7f, 0},   /* latitude's top byte: 2^1000-ish, out of range */
        {0, 0, 1},                /* cut short by one byte */
    };
    for (int d = 0; d < 5; d++) {
        memcpy(rec, orig, len);
        if (!dmg[d].cut) rec[cap_at + dmg[d].at] = dmg[d].byte;
        raw_put(&r, "images", k[2 + d], 8, rec, len - (size_t)dmg[d].cut);
    }
    free(orig);
    free(rec);
    raw_end(&r);
    db = open_ok(f, &o);
    for (int d = 0; d < 5; d++) {
        if (db_get_image(db, ids[2 + d], &img) != UMG_EINTERNAL) fail_msg("damage %d read as valid", d);
        assert_null(img.path);
    }
    int n = 0;
    assert_int_equal(db_scan_images(db, count_image, &n), 0);
    assert_int_equal(n, 2); /* images 0 and 1 */
    n = 0;
    assert_int_equal(db_scan_images(db, stop_at_second, &n), 7); /* the callback's value, and it stopped */
    assert_int_equal(n, 2);
    db_close(db);
}

/* Damaged records (through LMDB itself, as flipped bits on disk would read)
 * are UMG_EINTERNAL with a log line, never invalid UTF-8 or out-of-range
 * bytes handed up: a path that is not UTF-8, a tag count past the record,
 * trailing bytes, a region with a bad method or flag, short id values and
 * vectors; then 25 seeds of random byte flips in every image and region
 * record (each decode is either valid or UMG_EINTERNAL; ASan checks the
 * reads). */
static void test_damaged_records(void **state)
{
    fixture *f = *state;
    db_options o = opts_for(f);
    db_t *db = open_ok(f, &o);
    img_buf bufs[4];
    db_image_in ins[4];
    uint64_t ids[4], rids[8];
    const char *tags[] = { "beach", "2024" };
    for (int i = 0; i < 4; i++) {
        char p[32];
        snprintf(p, sizeof p, "/dmg/%d.jpg", i);
        make_image(&bufs[i], p, 2);
        bufs[i].in.tags = tags;
        bufs[i].in.n_tags = 2;
        ins[i] = bufs[i].in;
    }
    assert_int_equal(db_put_images(db, ins, 4, ids, rids), 0);
    db_close(db);

    unsigned char k0[8], k1[8], k2[8], r0[8], r1[8];
    be64_key(k0, ids[0]), be64_key(k1, ids[1]), be64_key(k2, ids[2]);
    be64_key(r0, rids[0]), be64_key(r1, rids[1]);
    raw_db r;
    raw_begin(&r, f->data);
    size_t len;
    unsigned char *rec = raw_get(&r, "images", k0, 8, &len);
    /* image 0: a path byte that is not UTF-8 (the path starts after 4+32+4+4+8+8+8+4+4 = 76 bytes) */
    rec[76 + 1] = 0xff;
    raw_put(&r, "images", k0, 8, rec, len);
    free(rec);
    /* image 1: one byte more than its fields */
    rec = raw_get(&r, "images", k1, 8, &len);
    rec = realloc(rec, len + 1);
    rec[len] = 0;
    raw_put(&r, "images", k1, 8, rec, len + 1);
    free(rec);
    /* image 2: the tag count (after the path) says 200 */
    rec = raw_get(&r, "images", k2, 8, &len);
    uint32_t plen;
    memcpy(&plen, rec + 72, 4);
    uint32_t many = 200;
    memcpy(rec + 76 + plen, &many, 4);
    raw_put(&r, "images", k2, 8, rec, len);
    free(rec);
    /* region 0: a method byte that is not UTF-8; region 1: score flag 7 */
    rec = raw_get(&r, "regions", r0, 8, &len);
    rec[30] = 0xc0;
    raw_put(&r, "regions", r0, 8, rec, len);
    free(rec);
    rec = raw_get(&r, "regions", r1, 8, &len);
    rec[28] = 7;
    raw_put(&r, "regions", r1, 8, rec, len);
    free(rec);
    /* the path of image 3 maps to a 3-byte id; image 3's vector is 5 bytes */
    unsigned char ph[32]; /* the paths key: SHA-256 of the path */
    SHA256((const unsigned char *)"/dmg/3.jpg", strlen("/dmg/3.jpg"), ph);
    raw_put(&r, "paths", ph, 32, "abc", 3);
    unsigned char k3[8];
    be64_key(k3, ids[3]);
    raw_put(&r, "ivec", k3, 8, "short", 5);
    raw_end(&r);

    o.accept_data_loss = 0;
    f->all_log[0] = '\0';
    db = open_ok(f, &o); /* the image index is rebuilt: a stored vector is damaged */
    db_image img;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(db_get_image(db, ids[i], &img), UMG_EINTERNAL);
        assert_non_null(strstr(umg_err_msg(), "damaged record"));
        assert_null(img.path);
    }
    assert_non_null(strstr(f->all_log, "damaged record"));
    db_region reg;
    assert_int_equal(db_get_region(db, rids[0], &reg), UMG_EINTERNAL);
    assert_int_equal(db_get_region(db, rids[1], &reg), UMG_EINTERNAL);
    assert_int_equal(db_get_region(db, rids[2], &reg), 0);
    db_region *list;
    int n;
    assert_int_equal(db_list_regions(db, ids[0], &list, &n), UMG_EINTERNAL);
    uint64_t id;
    assert_int_equal(db_find_path(db, "/dmg/3.jpg", &id), UMG_EINTERNAL);
    float v[DIM];
    assert_int_equal(db_get_vector(db, DB_KIND_IMAGE, ids[3], v), UMG_EINTERNAL);
    assert_int_equal(db_delete_image(db, ids[0]), UMG_EINTERNAL); /* nothing half-deleted */
    db_close(db);

    /* random flips in every image and region record, 25 seeds */
    uint64_t seed_state = 12345;
    for (int seed = 0; seed < 25; seed++) {
        raw_begin(&r, f->data);
        MDB_dbi d[2] = { raw_dbi(&r, "images"), raw_dbi(&r, "regions") };
        for (int t = 0; t < 2; t++) {
            MDB_cursor *c;
            assert_int_equal(mdb_cursor_open(r.txn, d[t], &c), 0);
            MDB_val kk, vv;
            for (int rc = mdb_cursor_get(c, &kk, &vv, MDB_FIRST); rc == 0; rc = mdb_cursor_get(c, &kk, &vv, MDB_NEXT)) {
                unsigned char *b = malloc(vv.mv_size);
                memcpy(b, vv.mv_data, vv.mv_size);
                for (int flips = 0; flips < 3; flips++) {
                    size_t at = (size_t)((tu_frand(&seed_state) + 1) * 0.5f * (float)vv.mv_size) % vv.mv_size;
                    b[at] ^= (unsigned char)(1u << ((unsigned)((tu_frand(&seed_state) + 1) * 4) % 8));
                }
                MDB_val nv = { vv.mv_size, b };
                assert_int_equal(mdb_cursor_put(c, &kk, &nv, MDB_CURRENT), 0);
                free(b);
            }
            mdb_cursor_close(c);
        }
        raw_end(&r);
        db = open_ok(f, &o);
        for (int i = 0; i < 4; i++) {
            int rc = db_get_image(db, ids[i], &img);
            if (rc == 0) {
                assert_true(img.path && *img.path);
                for (int t = 0; t < img.n_tags; t++)
                    assert_true(strlen(img.tags[t]) <= DB_MAX_TAG);
                db_image_free(&img);
            } else {
                assert_true(rc == UMG_EINTERNAL || rc == UMG_ENOENT);
            }
            for (int j = 0; j < 2; j++) {
                rc = db_get_region(db, rids[2 * i + j], &reg);
                assert_true(rc == 0 || rc == UMG_EINTERNAL);
                if (rc == 0)
                    assert_true(strlen(reg.method) <= DB_MAX_METHOD);
            }
        }
        db_close(db);
    }
}

/* db_stats reports whether the indexes agree with LMDB.  A failed index
 * update (HNSW cannot remove: the delete leaves the index one vector ahead)
 * is a real mismatch and is reported, not hidden. */
static void test_stats_report_mismatch(void **state)
{
    fixture *f = *state;
    db_options o = opts_for(f);
    o.image_factory = "HNSW16";
    o.approx_threshold = 1;
    db_t *db = open_ok(f, &o);
    img_buf bufs[300];
    db_image_in ins[300];
    uint64_t ids[300];
    put_images(db, bufs, ins, 300, "/hnsw/", 0, ids, NULL);
    db_stats st;
    assert_int_equal(db_stats_get(db, &st), 0);
    assert_int_equal(st.consistent, 1);
    assert_string_equal(st.mismatch, "");
    assert_int_equal(st.newest_id[0], ids[299]);
    assert_int_equal(st.index_newest_id[0], (int64_t)ids[299]);
    assert_int_equal(db_checkpoint(db), 0);
    assert_int_equal(db_stats_get(db, &st), 0);
    assert_string_equal(st.image_factory, "HNSW16");
    assert_int_equal(st.consistent, 1);
    assert_int_equal(db_delete_image(db, ids[5]), 0);
    assert_int_equal(db_stats_get(db, &st), 0);
    assert_int_equal(st.consistent, 0);
    assert_non_null(strstr(st.mismatch, "image index holds 300 vectors, LMDB 299"));
    db_close(db);
}

/* At open, snapshot + log are checked against LMDB by count AND newest id:
 * a vector LMDB gained without a log entry while another went (the count
 * unchanged, as two servers on one directory managed) makes the open
 * rebuild, and the gained vector is found. */
static void test_open_checks_newest_id(void **state)
{
    fixture *f = *state;
    db_options o = opts_for(f);
    img_buf bufs[10];
    db_image_in ins[10];
    uint64_t ids[10];
    fill_checkpointed(f, &o, bufs, ins, 10, "/new/", 0, ids);
    db_t *db;
    raw_db r;
    raw_begin(&r, f->data);
    unsigned char k[8], knew[8];
    be64_key(k, ids[3]);
    be64_key(knew, ids[9] + 100);
    size_t len;
    void *vec = raw_get(&r, "ivec", k, 8, &len);
    MDB_val kv = { 8, k };
    assert_int_equal(mdb_del(r.txn, raw_dbi(&r, "ivec"), &kv, NULL), 0);
    raw_put(&r, "ivec", knew, 8, vec, len); /* image 3's vector under a new id */
    free(vec);
    raw_end(&r);
    f->all_log[0] = '\0';
    db = open_ok(f, &o);
    assert_non_null(strstr(f->all_log, "newest id"));
    assert_int_equal(top1(db, bufs[3].vecs[0]), ids[9] + 100);
    db_stats st;
    assert_int_equal(db_stats_get(db, &st), 0);
    assert_int_equal(st.consistent, 1);
    db_close(db);
}

/* Thumbnails (db_get_thumb): stored with the image in its transaction, gone
 * with it (delete, replace of its path, another image moved onto its path),
 * kept by a move; an image without one and a damaged one are told apart. */
static void test_thumb_record(void **state)
{
    fixture *f = *state;
    db_options o = opts_for(f);
    db_t *db = open_ok(f, &o);
    static const uint8_t jpeg[] = {0xff, 0xd8, 0xff, 0xe0, 1, 2, 3, 0xff, 0xd9};
    db_extra_in ex = {DB_THUMB_EXTRA, jpeg, sizeof jpeg};
    img_buf a, b, c;
    make_image(&a, "/p/a.jpg", 1);
    a.in.extras = &ex, a.in.n_extras = 1;
    make_image(&b, "/p/b.jpg", 0); /* stored without one: as before thumbnails */
    uint64_t ida, idb, idc;
    assert_int_equal(db_put_image(db, &a.in, &ida, NULL), 0);
    assert_int_equal(db_put_image(db, &b.in, &idb, NULL), 0);
    void *t;
    size_t tl;
    assert_int_equal(db_get_thumb(db, ida, &t, &tl), 0);
    assert_int_equal(tl, sizeof jpeg);
    assert_memory_equal(t, jpeg, sizeof jpeg);
    free(t);
    assert_int_equal(db_get_thumb(db, idb, &t, &tl), UMG_ENOENT);
    assert_null(t);
    assert_non_null(strstr(umg_err_msg(), "has no thumbnail"));
    assert_int_equal(db_get_thumb(db, 999, &t, &tl), UMG_ENOENT);
    assert_non_null(strstr(umg_err_msg(), "no image 999"));
    /* not a JPEG: damaged, never returned */
    assert_int_equal(db_put_extra(db, idb, DB_THUMB_EXTRA, "GIF89a", 6), 0);
    assert_int_equal(db_get_thumb(db, idb, &t, &tl), UMG_EINTERNAL);
    assert_null(t);
    /* a move keeps it (same photo, same id) */
    uint64_t replaced;
    assert_int_equal(db_move_image(db, ida, "/q/a.jpg", 0, &replaced), 0);
    assert_int_equal(db_get_thumb(db, ida, &t, &tl), 0);
    free(t);
    /* replacing the path: the old image and its thumbnail go, the new one has its own */
    make_image(&c, "/q/a.jpg", 0);
    c.in.sha256[0] ^= 1;
    c.in.replace = 1;
    c.in.extras = &ex, c.in.n_extras = 1;
    assert_int_equal(db_put_image(db, &c.in, &idc, NULL), 0);
    assert_int_equal(db_get_thumb(db, ida, &t, &tl), UMG_ENOENT);
    assert_non_null(strstr(umg_err_msg(), "no image"));
    assert_int_equal(db_get_thumb(db, idc, &t, &tl), 0);
    free(t);
    /* moving another image onto its path deletes it with its thumbnail */
    assert_int_equal(db_put_extra(db, idb, DB_THUMB_EXTRA, jpeg, sizeof jpeg), 0);
    assert_int_equal(db_move_image(db, idb, "/q/a.jpg", 0, &replaced), 0);
    assert_int_equal(replaced, idc);
    assert_int_equal(db_get_thumb(db, idc, &t, &tl), UMG_ENOENT);
    /* delete; and nothing is left of it in LMDB after a reopen */
    assert_int_equal(db_delete_image(db, idb), 0);
    assert_int_equal(db_get_thumb(db, idb, &t, &tl), UMG_ENOENT);
    db_close(db);
    db = open_ok(f, &o);
    assert_int_equal(db_get_extra(db, idb, DB_THUMB_EXTRA, &t, &tl), UMG_ENOENT);
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
        cmocka_unit_test_setup_teardown(test_thumb_record, setup, teardown),
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
        cmocka_unit_test_setup_teardown(test_lock_refuses_second_opener, setup, teardown),
        cmocka_unit_test_setup_teardown(test_truncated_data_mdb, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lost_database_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_foreign_snapshots_rebuilt, setup, teardown),
        cmocka_unit_test_setup_teardown(test_collection_id_migration, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fifo_snapshot, setup, teardown),
        cmocka_unit_test_setup_teardown(test_file_modes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damaged_records, setup, teardown),
        cmocka_unit_test_setup_teardown(test_capture_records, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stats_report_mismatch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_open_checks_newest_id, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
