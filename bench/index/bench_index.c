/* bench_index - the storage layer at scale: N random clustered vectors
 * stored as regions (plus one image vector per `per_image` regions) through
 * db_put_images, the checkpoint that trains the approximate index, search
 * latency at k=10 on one thread, recall@10 against exact search, bytes per
 * vector in memory and on disk, and the time to reopen the data directory.
 *
 *   bench_index [--n 1000000] [--dim 512] [--per-image 10] [--queries 1000]
 *               [--dir /tmp/umg_bench_index] [--nprobe 32] [--candidates 10]
 *
 * Peer measured in the same run: exact search (FAISS flat over the same
 * float32 vectors, one thread). */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../common.h"
#include "db.h"
#include "idx.h"
#include "umg_error.h"

static uint64_t rng = 0x2545f4914f6cdd1dull;
static double urand(void) { return bench_urand(&rng); }
static float gauss(void) { return bench_gauss(&rng); }

/* n vectors around nc centers: center + noise (sigma per component relative
 * to the center's), normalized.  sigma 0.6 gives cosine ~0.86 to the center
 * and ~0.74 between members of a cluster, like region embeddings of one
 * kind of object. */
static void clustered(float *x, size_t n, int d, const float *centers, int nc, float sigma)
{
    for (size_t i = 0; i < n; i++) {
        const float *c = centers + (size_t)(urand() * nc) % nc * d;
        float *v = x + i * d;
        double s = 0;
        for (int j = 0; j < d; j++) {
            v[j] = c[j] + sigma * gauss();
            s += (double)v[j] * v[j];
        }
        float inv = (float)(1 / sqrt(s));
        for (int j = 0; j < d; j++)
            v[j] *= inv;
    }
}

static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, res = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &res) != 2)
            res = 0;
        fclose(f);
    }
    return res * (sysconf(_SC_PAGESIZE) / 1024);
}

static long long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) ? -1 : (long long)st.st_size;
}

/* How many of the nh hits are among the query's exact top 10 (gt: rows of
 * the ground truth, -1 for none; row_id: row -> db id). */
static long true_hits(const db_hit *h, int nh, const int64_t *gt, const uint64_t *row_id)
{
    long n = 0;
    for (int a = 0; a < nh; a++)
        for (int b = 0; b < 10; b++)
            if (gt[b] >= 0 && h[a].id == row_id[gt[b]]) {
                n++;
                break;
            }
    return n;
}

/* Exact top-10 of each query by inner product, blocked sgemm. */
static void ground_truth(const float *x, size_t n, int d, const float *q, int nq, int64_t *gt)
{
    const size_t block = 16384;
    float *sc = malloc(sizeof *sc * block * nq);
    float *best = malloc(sizeof *best * nq * 10);
    for (int i = 0; i < nq * 10; i++)
        best[i] = -INFINITY, gt[i] = -1;
    for (size_t b0 = 0; b0 < n; b0 += block) {
        size_t nb = n - b0 < block ? n - b0 : block;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, (int)nb, d, 1.0f, q, d,
                    x + b0 * d, d, 0.0f, sc, (int)nb);
        for (int i = 0; i < nq; i++) {
            float *bs = best + i * 10;
            int64_t *bi = gt + i * 10;
            for (size_t j = 0; j < nb; j++) {
                float s = sc[(size_t)i * nb + j];
                if (s <= bs[9])
                    continue;
                int p = 9;
                while (p > 0 && bs[p - 1] < s) {
                    bs[p] = bs[p - 1];
                    bi[p] = bi[p - 1];
                    p--;
                }
                bs[p] = s;
                bi[p] = (int64_t)(b0 + j);
            }
        }
    }
    free(sc);
    free(best);
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench_index: %s: %s: %s\n", what, umg_strerror(rc), umg_err_msg());
    exit(1);
}

static void quiet_log(void *ud, int level, const char *msg)
{
    (void)ud, (void)level;
    fprintf(stderr, "  [db] %s\n", msg);
}

/* In a fresh process: time db_open and the resident memory it adds. */
static int reopen_child(const char *dir, int dim)
{
    uint8_t fp[32] = { 0x5e };
    db_options o = db_options_default();
    o.fingerprint = fp;
    o.model_name = "bench-random";
    o.dim = dim;
    long rss0 = rss_kb();
    double t0 = bench_now();
    db_t *db;
    int rc = db_open(dir, &o, &db);
    if (rc)
        die("reopen", rc);
    double t = bench_now() - t0;
    long rss1 = rss_kb();
    printf("%.3f %ld\n", t, rss1 - rss0);
    db_close(db);
    return 0;
}

int main(int argc, char **argv)
{
    bench_one_blas_thread(argv);
    setvbuf(stdout, NULL, _IOLBF, 0);
    size_t n = 1000000;
    int dim = 512, per_image = 10, nq = 1000, nprobe = 32, cand = 10, reopen_only = 0, reuse = 0;
    const char *dir = "/tmp/umg_bench_index";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--n"))
            n = strtoull(argv[i + 1], NULL, 10);
        else if (!strcmp(argv[i], "--dim"))
            dim = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--per-image"))
            per_image = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--queries"))
            nq = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--dir"))
            dir = argv[i + 1];
        else if (!strcmp(argv[i], "--nprobe"))
            nprobe = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--candidates"))
            cand = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reopen-only"))
            reopen_only = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--reuse"))
            reuse = atoi(argv[i + 1]); /* keep the directory of a previous run: search only */
        else {
            fprintf(stderr, "unknown option %s\n", argv[i]);
            return 2;
        }
    }
    size_t n_img = (n + per_image - 1) / per_image;
    if (reopen_only)
        return reopen_child(dir, dim);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (!reuse && system(cmd)) {
        fprintf(stderr, "cannot clear %s\n", dir);
        return 1;
    }
    printf("bench_index: %zu region vectors (%zu images x %d), dim %d, %d queries, nprobe %d, "
           "re-rank %d candidates per hit, %d threads for building\n",
           n, n_img, per_image, dim, nq, nprobe, cand, omp_get_max_threads());

    /* data */
    double t0 = bench_now();
    int nc = 20000;
    float *centers = malloc(sizeof *centers * (size_t)nc * dim);
    for (size_t i = 0; i < (size_t)nc * dim; i++)
        centers[i] = gauss();
    float *x = malloc(sizeof *x * n * dim);
    float *xi = malloc(sizeof *xi * n_img * dim);
    float *q = malloc(sizeof *q * (size_t)nq * dim);
    if (!x || !xi || !q) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    clustered(x, n, dim, centers, nc, 0.6f);
    clustered(xi, n_img, dim, centers, nc, 0.6f);
    clustered(q, (size_t)nq, dim, centers, nc, 0.6f);
    printf("generate: %.1f s\n", bench_now() - t0);

    /* ingest */
    uint8_t fp[32] = { 0x5e };
    db_options o = db_options_default();
    o.fingerprint = fp;
    o.model_name = "bench-random";
    o.dim = dim;
    o.nprobe = nprobe;
    o.rerank_candidates = cand;
    o.log = quiet_log;
    db_t *db;
    int rc;
    uint64_t *row_id = malloc(sizeof *row_id * n); /* region vector row -> its db id */
    double t_ingest = 0, t_ck = 0;
    db_stats st;
    if (reuse) {
        /* ids as a fresh directory assigns them: image, then its regions */
        for (size_t r = 0; r < n; r++)
            row_id[r] = (r / per_image) * (uint64_t)(per_image + 1) + 2 + r % per_image;
        goto searches;
    }
    if ((rc = db_open(dir, &o, &db)))
        die("open", rc);
    const int batch = 100; /* images per transaction */
    db_image_in *ins = calloc(batch, sizeof *ins);
    db_region_in *regs = calloc((size_t)batch * per_image, sizeof *regs);
    char (*paths)[32] = calloc(batch, 32);
    uint64_t *rids = malloc(sizeof *rids * (size_t)batch * per_image);
    t0 = bench_now();
    size_t row = 0;
    for (size_t im = 0; im < n_img; im += batch) {
        int nb = (int)(n_img - im < (size_t)batch ? n_img - im : (size_t)batch);
        size_t first = row;
        for (int b = 0; b < nb; b++) {
            db_image_in *in = &ins[b];
            memset(in, 0, sizeof *in);
            snprintf(paths[b], 32, "/bench/%zu.jpg", im + b);
            in->path = paths[b];
            memcpy(in->sha256, &im, sizeof im);
            in->sha256[31] = (uint8_t)b;
            in->width = 640, in->height = 480;
            in->vector = xi + (im + b) * dim;
            int nr = 0;
            for (; nr < per_image && row < n; nr++, row++) {
                db_region_in *r = &regs[(size_t)b * per_image + nr];
                r->box[2] = r->box[3] = 100;
                r->method = "bench";
                r->vector = x + row * dim;
            }
            in->regions = &regs[(size_t)b * per_image];
            in->n_regions = nr;
        }
        if ((rc = db_put_images(db, ins, nb, NULL, rids)))
            die("put", rc);
        memcpy(row_id + first, rids, sizeof *rids * (row - first));
    }
    t_ingest = bench_now() - t0;
    printf("ingest: %zu images + %zu regions in %.1f s: %.0f vectors/s (LMDB commit per %d images, "
           "exact FAISS index)\n", n_img, n, t_ingest, (n + n_img) / t_ingest, batch);

    t0 = bench_now();
    if ((rc = db_checkpoint(db)))
        die("checkpoint", rc);
    t_ck = bench_now() - t0;
    db_stats_get(db, &st);
    printf("checkpoint (train + build approximate indexes, snapshots): %.1f s; images: %s, regions: %s\n",
           t_ck, st.image_factory, st.region_factory);
    printf("stored: %llu images, %llu regions; in FAISS: %llu, %llu\n", (unsigned long long)st.images,
           (unsigned long long)st.regions, (unsigned long long)st.index_images,
           (unsigned long long)st.index_regions);
    db_close(db);
    free(ins);
    free(regs);
    free(paths);
    free(rids);
searches:;

    /* ground truth on the float32 originals */
    t0 = bench_now();
    int64_t *gt = malloc(sizeof *gt * (size_t)nq * 10);
    ground_truth(x, n, dim, q, nq, gt);
    printf("ground truth (sgemm): %.1f s\n", bench_now() - t0);

    /* exact peer: one thread, FAISS flat over the float32 vectors */
    omp_set_num_threads(1);
    idx_index *flat;
    if ((rc = idx_create(dim, "Flat", &flat)))
        die("flat", rc);
    int64_t *lab = malloc(sizeof *lab * n);
    for (size_t i = 0; i < n; i++)
        lab[i] = (int64_t)i;
    if ((rc = idx_add(flat, (int64_t)n, x, lab)))
        die("flat add", rc);
    int npeer = nq < 10 ? nq : 10;
    double *lat_peer = malloc(sizeof *lat_peer * npeer);
    for (int i = 0; i < npeer; i++) {
        int64_t ids[10];
        float sc[10];
        int nh;
        double s = bench_now();
        idx_search(flat, q + (size_t)i * dim, 10, ids, sc, &nh);
        lat_peer[i] = (bench_now() - s) * 1e3;
    }
    bench_sort(lat_peer, (size_t)npeer);
    idx_close(flat);
    free(lab);
    free(x);
    free(xi);

    /* reopen in a fresh process: time and resident memory of db_open */
    char rcmd[800];
    snprintf(rcmd, sizeof rcmd, "/proc/%d/exe --dir '%s' --dim %d --reopen-only 1", (int)getpid(), dir, dim);
    FILE *pp = popen(rcmd, "r");
    double t_open = -1;
    long rss_delta = -1;
    if (!pp || fscanf(pp, "%lf %ld", &t_open, &rss_delta) != 2)
        fprintf(stderr, "reopen child failed\n");
    if (pp)
        pclose(pp);
    if ((rc = db_open(dir, &o, &db)))
        die("reopen", rc);
    db_stats_get(db, &st);

    /* search, one thread */
    double *lat = malloc(sizeof *lat * nq), *lat_plain = malloc(sizeof *lat_plain * nq);
    long hit = 0, hit_plain = 0;
    db_hit h[10];
    int nh;
    db_search_opts plain = { .rerank = 0 };
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < nq; i++) {
            double s = bench_now();
            if ((rc = db_search(db, DB_KIND_REGION, q + (size_t)i * dim, pass ? &plain : NULL, h, 10, &nh)))
                die("search", rc);
            (pass ? lat_plain : lat)[i] = (bench_now() - s) * 1e3;
            *(pass ? &hit_plain : &hit) += true_hits(h, nh, gt + i * 10, row_id);
        }
    }
    bench_sort(lat, (size_t)nq);
    bench_sort(lat_plain, (size_t)nq);

    char path[700];
    snprintf(path, sizeof path, "%s/regions.faiss", dir);
    long long snap = file_size(path);
    snprintf(path, sizeof path, "%s/images.faiss", dir);
    long long snap_img = file_size(path);
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    long long lmdb = file_size(path);

    printf("\nresults (region index, %zu vectors, %s; stored %llu images + %llu regions, FAISS %llu + %llu):\n",
           n, st.region_factory, (unsigned long long)st.images, (unsigned long long)st.regions,
           (unsigned long long)st.index_images, (unsigned long long)st.index_regions);
    printf("  search k=10, re-ranked from LMDB: p50 %.3f ms  p99 %.3f ms  recall@10 %.4f\n",
           lat[nq / 2], lat[(int)(nq * 0.99)], hit / (10.0 * nq));
    printf("  search k=10, no re-rank:         p50 %.3f ms  p99 %.3f ms  recall@10 %.4f\n",
           lat_plain[nq / 2], lat_plain[(int)(nq * 0.99)], hit_plain / (10.0 * nq));
    printf("  peer: exact flat search (float32, 1 thread, %d queries): p50 %.1f ms  p99 %.1f ms  "
           "(approximate+re-rank p50 is %.0fx faster)\n",
           npeer, lat_peer[npeer / 2], lat_peer[npeer - 1], lat_peer[npeer / 2] / lat[nq / 2]);
    printf("  index in memory: %.1f bytes/vector (snapshot payload = FAISS serialization: codes, ids, "
           "centroids, PQ tables)\n", (double)snap / n);
    printf("  fresh process RSS growth from db_open: %.1f MiB (%.1f bytes per stored vector, both indexes "
           "+ LMDB pages touched)\n", rss_delta / 1024.0, rss_delta * 1024.0 / (double)(n + n_img));
    printf("  on disk: region snapshot %.1f B/vector, image snapshot %.1f MiB, LMDB data.mdb %.1f B per "
           "stored vector (float16 vectors + records + log)\n",
           (double)snap / n, snap_img / 1048576.0, (double)lmdb / (double)(n + n_img));
    printf("  reopen (snapshots + log replay): %.2f s\n", t_open);
    if (!reuse)
        printf("  add: %.0f vectors/s through db_put_images; approximate build at checkpoint %.1f s\n",
               (n + n_img) / t_ingest, t_ck);
    db_close(db);

    /* the breadth/accuracy trade-off: other nprobe and re-rank pools */
    static const int sweep[][2] = { { 32, 10 }, { 16, 10 }, { 64, 10 }, { 32, 20 }, { 64, 20 } };
    printf("  sweep (re-ranked, %d queries):\n", nq);
    for (size_t w = 0; w < sizeof sweep / sizeof sweep[0]; w++) {
        db_options ow = o;
        ow.nprobe = sweep[w][0];
        ow.rerank_candidates = sweep[w][1];
        if ((rc = db_open(dir, &ow, &db)))
            die("reopen", rc);
        long hw = 0;
        double cpu = 0;
        for (int i = 0; i < nq; i++) {
            double s = bench_now(), c0 = bench_thread_cpu();
            if ((rc = db_search(db, DB_KIND_REGION, q + (size_t)i * dim, NULL, h, 10, &nh)))
                die("search", rc);
            lat[i] = (bench_now() - s) * 1e3;
            cpu += bench_thread_cpu() - c0;
            hw += true_hits(h, nh, gt + i * 10, row_id);
        }
        bench_sort(lat, (size_t)nq);
        printf("    nprobe %2d, %2d candidates/hit: p50 %.3f ms  p99 %.3f ms  (CPU %.3f ms/query)  recall@10 %.4f\n",
               sweep[w][0], sweep[w][1], lat[nq / 2], lat[(int)(nq * 0.99)], cpu * 1e3 / nq, hw / (10.0 * nq));
        db_close(db);
    }
    free(lat);
    free(lat_plain);
    free(lat_peer);
    free(gt);
    free(q);
    free(row_id);
    free(centers);
    return 0;
}
