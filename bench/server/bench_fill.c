/* bench_fill.c - fill a data directory with N synthetic images for the
 * server's query benchmark, directly through db.h (encoding 100,000 real
 * photos would take hours on the benchmark machine; query latency does not
 * depend on where the vectors came from, only on how many there are and how
 * they spread).
 *
 *   bench_fill DATA_DIR MODEL_DIR N [--clusters 512] [--spread 0.6] [--batch 1000] [--seed 1]
 *
 * The directory is created with MODEL_DIR's fingerprint and dimension, so
 * `umgdb serve --data DATA_DIR --model MODEL_DIR` opens it as its own.
 * Vectors: a mixture of --clusters Gaussian clusters (random unit centres,
 * each vector = centre + spread * N(0, 1/dim) per component, normalized), so
 * an IVF index sees uneven, clustered data as with real photos rather than
 * uniform noise on the sphere.  Images: path /synthetic/NNNNNNN.jpg,
 * 640x480, no regions, content hash from the index.  Written in batches of
 * --batch images per transaction, then db_checkpoint (which trains and
 * switches to the approximate index once past the automatic threshold).
 * Prints one JSON object: images, seconds, the index factory. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "db.h"
#include "enc.h"
#include "umg_error.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* xorshift64*: reproducible without libc's rand state. */
static uint64_t rng_state;
static uint64_t rng_next(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}
static double rng_uniform(void) { return ((rng_next() >> 11) + 0.5) / 9007199254740992.0; }
static double rng_normal(void)
{
    return sqrt(-2 * log(rng_uniform())) * cos(2 * M_PI * rng_uniform());
}

static void normalize(float *v, int dim)
{
    double n = 0;
    for (int i = 0; i < dim; i++)
        n += (double)v[i] * v[i];
    n = sqrt(n);
    for (int i = 0; i < dim; i++)
        v[i] = (float)(v[i] / n);
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench_fill: %s: %s (%s)\n", what, umg_strerror(rc), umg_err_msg());
    exit(1);
}

static long arg_long(const char *s, long min, long max, const char *name)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || v < min || v > max) {
        fprintf(stderr, "bench_fill: %s wants an integer in [%ld, %ld]\n", name, min, max);
        exit(2);
    }
    return v;
}

static void quiet_log(void *ud, int level, const char *msg)
{
    (void)ud;
    fprintf(stderr, "bench_fill: db: %s%s\n", level == DB_LOG_WARN ? "warning: " : "", msg);
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: bench_fill DATA_DIR MODEL_DIR N [--clusters 512] [--spread 0.6] [--batch 1000] "
                        "[--seed 1]\n");
        return 2;
    }
    const char *dir = argv[1], *model_dir = argv[2];
    long n = arg_long(argv[3], 1, 100000000, "N");
    long clusters = 512, batch = 1000, seed = 1;
    double spread = 0.6;
    for (int i = 4; i < argc; i++) {
        if (i + 1 >= argc) {
            fprintf(stderr, "bench_fill: %s needs a value\n", argv[i]);
            return 2;
        }
        const char *k = argv[i], *v = argv[++i];
        if (!strcmp(k, "--clusters"))
            clusters = arg_long(v, 1, 1 << 20, k);
        else if (!strcmp(k, "--batch"))
            batch = arg_long(v, 1, 100000, k);
        else if (!strcmp(k, "--seed"))
            seed = arg_long(v, 0, 1L << 40, k);
        else if (!strcmp(k, "--spread"))
            spread = atof(v);
        else {
            fprintf(stderr, "bench_fill: unknown option %s\n", k);
            return 2;
        }
    }
    rng_state = 0x9e3779b97f4a7c15ull ^ (uint64_t)seed;

    enc_model *m;
    int rc = enc_model_open(model_dir, &m);
    if (rc)
        die("model", rc);
    uint8_t fp[32];
    enc_model_fingerprint(m, fp);
    int dim = enc_model_dim(m);
    db_options o = db_options_default();
    o.fingerprint = fp;
    o.model_name = enc_model_name(m);
    o.dim = dim;
    o.log = quiet_log;
    db_t *db;
    if ((rc = db_open(dir, &o, &db)))
        die(dir, rc);
    enc_model_close(m);   /* db_open copied what it keeps */

    float *centres = malloc((size_t)clusters * dim * sizeof *centres);
    float *vecs = malloc((size_t)batch * dim * sizeof *vecs);
    db_image_in *ins = calloc((size_t)batch, sizeof *ins);
    char (*paths)[32] = malloc((size_t)batch * sizeof *paths);
    if (!centres || !vecs || !ins || !paths) {
        fprintf(stderr, "bench_fill: out of memory\n");
        return 1;
    }
    for (long c = 0; c < clusters; c++) {
        for (int i = 0; i < dim; i++)
            centres[c * dim + i] = (float)rng_normal();
        normalize(centres + c * dim, dim);
    }
    double noise = spread / sqrt((double)dim);
    double t0 = now_s();
    for (long done = 0; done < n;) {
        long b = n - done < batch ? n - done : batch;
        for (long j = 0; j < b; j++) {
            long id = done + j;
            const float *c = centres + (rng_next() % (uint64_t)clusters) * dim;
            float *v = vecs + j * dim;
            for (int i = 0; i < dim; i++)
                v[i] = c[i] + (float)(noise * rng_normal());
            snprintf(paths[j], sizeof paths[j], "/synthetic/%07ld.jpg", id);
            db_image_in *in = &ins[j];
            memset(in, 0, sizeof *in);
            in->path = paths[j];
            for (int k = 0; k < 32; k++)
                in->sha256[k] = (uint8_t)(rng_next() >> 56);
            in->width = 640;
            in->height = 480;
            in->bytes = 100000;
            in->mtime = 1700000000;
            in->vector = v;
        }
        if ((rc = db_put_images(db, ins, (int)b, NULL, NULL)))
            die("db_put_images", rc);
        done += b;
        if (done % (batch * 20) == 0 || done == n)
            fprintf(stderr, "bench_fill: %ld/%ld images (%.1f s)\n", done, n, now_s() - t0);
    }
    double t_put = now_s() - t0;
    if ((rc = db_checkpoint(db)))
        die("db_checkpoint", rc);
    double t_all = now_s() - t0;
    db_stats st;
    if ((rc = db_stats_get(db, &st)))
        die("db_stats_get", rc);
    printf("{\"images\": %llu, \"put_s\": %.1f, \"total_s\": %.1f, \"image_factory\": \"%s\", "
           "\"map_used\": %llu}\n",
           (unsigned long long)st.images, t_put, t_all, st.image_factory, (unsigned long long)st.map_used);
    db_close(db);
    free(centres);
    free(vecs);
    free(ins);
    free(paths);
    return 0;
}
