/* bench_open - how long db_open takes when a data directory's index
 * snapshots are missing (deleted, or lost with a crash before the first
 * checkpoint), against the normal open from the snapshots measured in the
 * same run as the peer.
 *
 *   bench_open [--n 100000] [--dim 512] [--dir /tmp/umg_bench_open]
 *              [--runs 3] [--peer-runs 3]
 *
 * Makes DIR once, unless it already holds N images: N images with one
 * clustered random unit vector each (512 clusters, no regions) through
 * db_put_images, then db_checkpoint, which trains the approximate index and
 * writes the snapshots (minutes at 100,000 x 512 on a 2-core VM).  Then each
 * run is a fresh process (--child) that times db_open and closes without a
 * checkpoint: --peer-runs with the snapshots in place, --runs with
 * images.faiss and regions.faiss moved aside (put back after each run).
 * Each run line: open seconds, the image index type, its vector count and
 * the median of 21 k=10 searches right after the open (ms).
 * Prints one line per run and the medians; the LMDB pages are in the page
 * cache after the first run (a restart's situation).
 *
 *   bench_open --stall 1 [--n 100000] [--dim 512] [--dir ...] [--runs 3]
 *
 * How long an ingest waits for a checkpoint writing the snapshot of a large
 * exact index: DIR.stall is made with N images and approx_threshold above N
 * (so the index stays exact: no training); then, --runs times, a thread puts
 * one image per transaction in a loop while the main thread runs
 * db_checkpoint after 1 s; reports the checkpoint's time, the median put
 * before it, and the longest put that overlapped it.  DIR.stall is removed
 * first.
 *
 *   bench_open --background 1 [--n 100000] [--dim 512] [--dir ...] [--threshold 50000]
 *
 * The whole path once, on DIR.bg (a copy of DIR without its snapshots):
 * db_open, then db_checkpoint on a thread as the server's background
 * checkpoint runs it, while the main thread puts one image and searches for
 * it every 200 ms; reports the open, the build, put and search latency
 * during it, and whether every image written during the build is the top
 * hit for its own vector after the swap. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <math.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "../common.h"
#include "db.h"
#include "umg_error.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static double urand(void) { return bench_urand(&rng); }
static float gauss(void) { return bench_gauss(&rng); }

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench_open: %s: %s: %s\n", what, umg_strerror(rc), umg_err_msg());
    exit(1);
}

static void log_line(void *ud, int level, const char *msg)
{
    (void)ud, (void)level;
    fprintf(stderr, "  [db] %s\n", msg);
}

static uint64_t threshold_opt; /* --threshold: db_options.approx_threshold (0 = default) */

static db_options options(int dim, const uint8_t *fp)
{
    db_options o = db_options_default();
    if (threshold_opt)
        o.approx_threshold = threshold_opt;
    o.fingerprint = fp;
    o.model_name = "bench-open-random";
    o.dim = dim;
    o.log = log_line;
    return o;
}

static const uint8_t FP[32] = { 0x0b, 0xe7 };

/* Fresh process: "seconds image_factory index_images search_p50_ms" (k=10
 * searches of 21 random queries right after the open). */
static int child(const char *dir, int dim)
{
    db_options o = options(dim, FP);
    db_t *db;
    double t0 = bench_now();
    int rc = db_open(dir, &o, &db);
    double t = bench_now() - t0;
    if (rc)
        die("open", rc);
    db_stats st;
    db_stats_get(db, &st);
    enum { NQ = 21 };
    double lat[NQ];
    float *q = malloc(sizeof *q * (size_t)dim);
    for (int i = 0; i < NQ; i++) {
        for (int j = 0; j < dim; j++)
            q[j] = gauss();
        db_hit h[10];
        int nh;
        double s = bench_now();
        if ((rc = db_search(db, DB_KIND_IMAGE, q, NULL, h, 10, &nh)))
            die("search", rc);
        lat[i] = (bench_now() - s) * 1e3;
    }
    free(q);
    printf("%.4f %s %llu %.2f\n", t, st.image_factory, (unsigned long long)st.index_images,
           bench_median(lat, NQ));
    db_close(db);
    return 0;
}

static void fill(db_t *db, size_t n, int dim);

static void make_dir(const char *dir, size_t n, int dim)
{
    db_options o = options(dim, FP);
    db_t *db;
    int rc = db_open(dir, &o, &db);
    if (rc)
        die("create", rc);
    db_stats st;
    db_stats_get(db, &st);
    if (st.images == n) {
        fprintf(stderr, "bench_open: reusing %s (%zu images, %s)\n", dir, n, st.image_factory);
        db_close(db);
        return;
    }
    if (st.images)
        fprintf(stderr, "bench_open: %s holds %llu images, not %zu: remove it first\n", dir,
                (unsigned long long)st.images, n), exit(1);
    double t0 = bench_now();
    fill(db, n, dim);
    double t_put = bench_now() - t0;
    t0 = bench_now();
    if ((rc = db_checkpoint(db)))
        die("checkpoint", rc);
    db_stats_get(db, &st);
    fprintf(stderr, "bench_open: made %s: %zu images in %.1f s, checkpoint (%s) %.1f s\n", dir, n, t_put,
            st.image_factory, bench_now() - t0);
    db_close(db);
}

/* n images with one clustered random vector each, 1000 per transaction. */
static void fill(db_t *db, size_t n, int dim)
{
    int rc;
    const int nc = 512, batch = 1000;
    float *centers = malloc(sizeof *centers * (size_t)nc * dim);
    float *x = malloc(sizeof *x * (size_t)batch * dim);
    db_image_in *ins = calloc(batch, sizeof *ins);
    char (*paths)[40] = calloc(batch, 40);
    if (!centers || !x || !ins || !paths)
        die("memory", UMG_ENOMEM);
    for (size_t i = 0; i < (size_t)nc * dim; i++)
        centers[i] = gauss();
    for (size_t im = 0; im < n; im += batch) {
        int nb = (int)(n - im < (size_t)batch ? n - im : (size_t)batch);
        for (int b = 0; b < nb; b++) {
            const float *c = centers + (size_t)(urand() * nc) % nc * dim;
            float *v = x + (size_t)b * dim;
            for (int j = 0; j < dim; j++)
                v[j] = c[j] + 0.6f * gauss(); /* db_put_images normalizes */
            db_image_in *in = &ins[b];
            memset(in, 0, sizeof *in);
            snprintf(paths[b], 40, "/bench-open/%zu.jpg", im + b);
            in->path = paths[b];
            size_t id = im + b;
            memcpy(in->sha256, &id, sizeof id);
            in->width = 640, in->height = 480;
            in->vector = v;
        }
        if ((rc = db_put_images(db, ins, nb, NULL, NULL)))
            die("put", rc);
    }
    free(centers);
    free(x);
    free(ins);
    free(paths);
}

/* --stall: puts in a loop, each timed with its start. */
typedef struct putter {
    db_t *db;
    int dim;
    volatile int stop;
    size_t n, cap, next;
    double *start, *lat;
} putter;

static void *put_loop(void *arg)
{
    putter *p = arg;
    float *v = malloc(sizeof *v * (size_t)p->dim);
    while (!p->stop && p->n < p->cap) {
        for (int j = 0; j < p->dim; j++)
            v[j] = gauss();
        char path[64];
        snprintf(path, sizeof path, "/bench-open/stall/%zu.jpg", p->next++);
        db_image_in in = { .path = path, .width = 640, .height = 480, .vector = v };
        memcpy(in.sha256, &p->next, sizeof p->next);
        in.sha256[31] = 0x5a;
        double t0 = bench_now();
        int rc = db_put_image(p->db, &in, NULL, NULL);
        if (rc)
            die("put during checkpoint", rc);
        p->start[p->n] = t0;
        p->lat[p->n++] = bench_now() - t0;
    }
    free(v);
    return NULL;
}

static int stall(const char *dir, size_t n, int dim, int runs)
{
    char sdir[700], cmd[800];
    snprintf(sdir, sizeof sdir, "%s.stall", dir);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", sdir);
    if (system(cmd))
        return 1;
    db_options o = options(dim, FP);
    o.approx_threshold = n + 1000000; /* exact: the snapshot is the vectors themselves */
    db_t *db;
    int rc = db_open(sdir, &o, &db);
    if (rc)
        die("open", rc);
    fill(db, n, dim);
    printf("bench_open --stall: %s, %zu image vectors x %d in an exact index; puts of one image while "
           "db_checkpoint writes its snapshot\n", sdir, n, dim);
    double *ck = malloc(sizeof *ck * (size_t)runs), *worst = malloc(sizeof *worst * (size_t)runs);
    double *before = malloc(sizeof *before * (size_t)runs);
    putter p = { .db = db, .dim = dim, .cap = 1000000 };
    p.start = malloc(sizeof *p.start * p.cap);
    p.lat = malloc(sizeof *p.lat * p.cap);
    for (int r = 0; r < runs; r++) {
        p.n = 0;
        p.stop = 0;
        pthread_t t;
        pthread_create(&t, NULL, put_loop, &p);
        usleep(1000000);
        double c0 = bench_now();
        if ((rc = db_checkpoint(db)))
            die("checkpoint", rc);
        double c1 = bench_now();
        usleep(300000);
        p.stop = 1;
        pthread_join(t, NULL);
        ck[r] = c1 - c0;
        size_t nb = 0;
        worst[r] = 0;
        double *pre = malloc(sizeof *pre * (p.n ? p.n : 1));
        for (size_t i = 0; i < p.n; i++) {
            if (p.start[i] + p.lat[i] < c0)
                pre[nb++] = p.lat[i];
            else if (p.start[i] < c1 && p.lat[i] > worst[r])
                worst[r] = p.lat[i];
        }
        before[r] = nb ? bench_median(pre, nb) : -1;
        free(pre);
        printf("  run %d: checkpoint %.3f s; puts before it: median %.1f ms (%zu puts); longest put overlapping "
               "it: %.1f ms\n", r + 1, ck[r], before[r] * 1e3, nb, worst[r] * 1e3);
    }
    printf("median over %d runs: checkpoint %.3f s; put before it %.1f ms; longest put during it %.1f ms\n", runs,
           bench_median(ck, (size_t)runs), bench_median(before, (size_t)runs) * 1e3,
           bench_median(worst, (size_t)runs) * 1e3);
    db_close(db);
    free(p.start);
    free(p.lat);
    free(ck);
    free(worst);
    free(before);
    return 0;
}

/* --background: the whole path at scale on a copy of DIR without its
 * snapshots: the open, then db_checkpoint on a thread (the server's
 * background checkpoint) while this thread puts one image and searches for
 * it every 200 ms; after the swap every one of them must be found. */
typedef struct ck_arg {
    db_t *db;
    int rc;
    volatile int done;
    double end;
} ck_arg;

static void *ck_main(void *arg)
{
    ck_arg *c = arg;
    c->rc = db_checkpoint(c->db);
    c->end = bench_now();
    c->done = 1;
    return NULL;
}

static uint64_t top1(db_t *db, const float *q, double *ms)
{
    db_hit h[10];
    int nh = 0;
    double s = bench_now();
    int rc = db_search(db, DB_KIND_IMAGE, q, NULL, h, 10, &nh);
    if (ms)
        *ms = (bench_now() - s) * 1e3;
    if (rc)
        die("search", rc);
    return nh ? h[0].id : 0;
}

static int background(const char *dir, size_t n, int dim)
{
    char bdir[700], cmd[4096];
    snprintf(bdir, sizeof bdir, "%s.bg", dir);
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -a '%s' '%s' && rm -f '%s/images.faiss' '%s/regions.faiss'", bdir,
             dir, bdir, bdir, bdir);
    if (system(cmd))
        return 1;
    db_options o = options(dim, FP);
    db_t *db;
    double t0 = bench_now();
    int rc = db_open(bdir, &o, &db);
    double t_open = bench_now() - t0;
    if (rc)
        die("open", rc);
    db_stats st;
    db_stats_get(db, &st);
    printf("bench_open --background: %s (%llu image vectors x %d, snapshots deleted): db_open %.3f s, image "
           "index %s, build pending %d\n", bdir, (unsigned long long)st.index_images, dim, t_open,
           st.image_factory, db_build_pending(db));
    enum { MAXP = 20000 };
    float *vecs = malloc(sizeof *vecs * (size_t)MAXP * dim);
    uint64_t *ids = malloc(sizeof *ids * MAXP);
    double *put_ms = malloc(sizeof *put_ms * MAXP), *search_ms = malloc(sizeof *search_ms * MAXP);
    size_t np = 0, wrong = 0;
    ck_arg ck = { db, -1, 0, 0 };
    pthread_t t;
    double b0 = bench_now();
    pthread_create(&t, NULL, ck_main, &ck);
    while (!ck.done && np < MAXP) {
        float *v = vecs + np * (size_t)dim;
        for (int j = 0; j < dim; j++)
            v[j] = gauss();
        char path[64];
        snprintf(path, sizeof path, "/bench-open/bg/%zu.jpg", np);
        db_image_in in = { .path = path, .width = 640, .height = 480, .vector = v };
        memcpy(in.sha256, &np, sizeof np);
        in.sha256[31] = 0xb6;
        double s = bench_now();
        if ((rc = db_put_image(db, &in, &ids[np], NULL)))
            die("put during the build", rc);
        put_ms[np] = (bench_now() - s) * 1e3;
        wrong += top1(db, v, &search_ms[np]) != ids[np];
        np++;
        usleep(200000);
    }
    pthread_join(t, NULL);
    if (ck.rc)
        die("background checkpoint", ck.rc);
    double t_build = ck.end - b0;
    db_stats_get(db, &st);
    size_t missing = 0;
    double *after_ms = malloc(sizeof *after_ms * (np ? np : 1));
    for (size_t i = 0; i < np; i++)
        missing += top1(db, vecs + i * (size_t)dim, &after_ms[i]) != ids[i];
    printf("  checkpoint with the build: %.1f s; during it %zu puts (median %.1f ms), each searched at once: median "
           "%.1f ms, %zu not top-1\n", t_build, np, np ? bench_median(put_ms, np) : 0,
           np ? bench_median(search_ms, np) : 0, wrong);
    printf("  after the swap: image index %s, %llu vectors in FAISS, %llu in LMDB; the %zu written during the "
           "build: %zu not top-1; search median %.2f ms\n", st.image_factory,
           (unsigned long long)st.index_images, (unsigned long long)st.images, np, missing,
           np ? bench_median(after_ms, np) : 0);
    db_close(db);
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", bdir);
    if (system(cmd))
        fprintf(stderr, "bench_open: could not remove %s\n", bdir);
    free(vecs);
    free(ids);
    free(put_ms);
    free(search_ms);
    free(after_ms);
    return 0;
}

/* Runs the child `runs` times; times into t.  Returns the last child's line. */
static void timed_opens(const char *self, const char *dir, int dim, int runs, int aside, double *t, char *last,
                        size_t lastlen)
{
    char cmd[1200], snap[700], moved[700];
    static const char *const names[2] = { "images.faiss", "regions.faiss" };
    for (int r = 0; r < runs; r++) {
        for (int k = 0; k < 2 && aside; k++) {
            snprintf(snap, sizeof snap, "%s/%s", dir, names[k]);
            snprintf(moved, sizeof moved, "%s/%s.aside", dir, names[k]);
            if (rename(snap, moved)) {
                perror(snap);
                exit(1);
            }
        }
        snprintf(cmd, sizeof cmd, "'%s' --child 1 --dir '%s' --dim %d", self, dir, dim);
        FILE *p = popen(cmd, "r");
        char line[300] = "";
        if (!p || !fgets(line, sizeof line, p) || sscanf(line, "%lf", &t[r]) != 1) {
            fprintf(stderr, "bench_open: child failed\n");
            exit(1);
        }
        pclose(p);
        line[strcspn(line, "\n")] = '\0';
        printf("  %s run %d: %s\n", aside ? "snapshots missing" : "with snapshots", r + 1, line);
        snprintf(last, lastlen, "%s", line);
        for (int k = 0; k < 2 && aside; k++) {
            snprintf(snap, sizeof snap, "%s/%s", dir, names[k]);
            snprintf(moved, sizeof moved, "%s/%s.aside", dir, names[k]);
            if (rename(moved, snap)) {
                perror(moved);
                exit(1);
            }
        }
    }
}

int main(int argc, char **argv)
{
    bench_one_blas_thread(argv);
    setvbuf(stdout, NULL, _IOLBF, 0);
    size_t n = 100000;
    int dim = 512, runs = 3, peer_runs = 3, is_child = 0, stall_mode = 0, bg_mode = 0;
    const char *dir = "/tmp/umg_bench_open";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--n"))
            n = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--dim"))
            dim = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--dir"))
            dir = argv[i + 1];
        else if (!strcmp(argv[i], "--runs"))
            runs = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--peer-runs"))
            peer_runs = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--child"))
            is_child = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--stall"))
            stall_mode = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threshold"))
            threshold_opt = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--background"))
            bg_mode = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (is_child)
        return child(dir, dim);
    if (runs < 1 || peer_runs < 1 || n < 1 || dim < 1)
        return 2;
    if (stall_mode)
        return stall(dir, n, dim, runs);
    if (bg_mode) {
        make_dir(dir, n, dim);
        return background(dir, n, dim);
    }
    char self[600];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl <= 0)
        return 1;
    self[sl] = '\0';
    make_dir(dir, n, dim);
    printf("bench_open: %s, %zu image vectors x %d\n", dir, n, dim);
    double *tp = malloc(sizeof *tp * (size_t)peer_runs), *tm = malloc(sizeof *tm * (size_t)runs);
    char last_peer[300], last_missing[300];
    timed_opens(self, dir, dim, peer_runs, 0, tp, last_peer, sizeof last_peer);
    timed_opens(self, dir, dim, runs, 1, tm, last_missing, sizeof last_missing);
    double mp = bench_median(tp, (size_t)peer_runs), mm = bench_median(tm, (size_t)runs);
    char fpeer[130] = "?", fmissing[130] = "?";
    sscanf(last_peer, "%*f %129s", fpeer);
    sscanf(last_missing, "%*f %129s", fmissing);
    printf("median db_open: with snapshots %.4f s (%d runs, image index %s); snapshots missing %.4f s (%d runs, "
           "image index %s); ratio %.1fx\n", mp, peer_runs, fpeer, mm, runs, fmissing, mm / mp);
    free(tp);
    free(tm);
    return 0;
}
