/* bench_pipeline.c - the server's ingest work in one process, without the
 * server: the engine's ingest (engine/ingest.h) driven as the server drives
 * it, the peer that separates what the server itself costs (sockets,
 * msgpack, queues, threadpool hand-offs) from the ingest's own work.
 *
 *   bench_pipeline MODEL_DIR PHOTO... [--threads 2] [--workers 2] [--batch 16] [--regions 32]
 *                  [--precision fp32|fp16] [--decode exact|fast] [--repeat N] [--thumbs 1|0]
 *
 * PHOTO: files or directories (their *.jpg / *.png, not recursive), read into
 * memory first (not timed); --repeat N ingests each N times under distinct
 * stored names (so that one large photo makes a run).  --decode is the
 * engine's decode mode (eng_config.decode; default exact).  The database is a fresh temporary directory
 * (dense region mode), removed at the end.  Then, timed, as the server does it:
 *   stage 1 on --workers threads, per photo: eng_ingest_begin (SHA-256, the
 *     same-path check) and eng_ingest_prepare (decode with EXIF orientation,
 *     preprocess with ENC_FIT_PAD, propose --regions boxes, and the JPEG
 *     thumbnail unless --thumbs 0);
 *   one encoder thread with OpenBLAS on --threads threads, per batch of up to
 *     --batch ready photos (it waits for a full batch while photos are still
 *     in stage 1): eng_ingest_store_batch (encode with patch tokens, pool
 *     every box, patch tokens to float16, one LMDB transaction + index add).
 * One batch of zeros is encoded first, untimed (faults the weights in).
 * Prints one JSON object: photos, seconds (wall), photos_per_s, cpu_s (the
 * process's user + system CPU over the timed part), batches, and the CPU
 * milliseconds per photo of each step (thread CPU clocks): decode, preprocess,
 * propose and thumb (stage 1: eng_ingest_result's times), store (the encoder
 * thread: encode, pool, float16, LMDB and index); and the disk: data.mdb's
 * used bytes per photo stored (db_stats map_used over photos; the peer run
 * with --thumbs 0 gives what thumbnails add) and the thumbnails' own bytes
 * per photo (db_get_thumb). */
#include <dirent.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include "../common.h"
#include "enc.h"
#include "enc_image.h"
#include "engine.h"
#include "ingest.h"
#include "umg_error.h"
#include "umg_util.h"

typedef struct photo {
    char *path;
    uint8_t *bytes;
    size_t len;
    eng_ingest *ing;
    int rc;
} photo;

static struct {
    photo *p;
    int n;
    int next;                  /* next photo for stage 1 */
    int ready_upto;            /* stage 1 done, in order of completion: ready[] */
    int *ready;
    int stage1_done;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    eng *e;
    int regions;
    double cpu_decode, cpu_pre, cpu_prop, cpu_thumb; /* ms, summed over photos */
} g;

/* CPU milliseconds of the calling thread. */
static double cpu_ms(void) { return bench_thread_cpu() * 1e3; }

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench_pipeline: %s: %s (%s)\n", what, umg_strerror(rc), umg_err_msg());
    exit(1);
}

static long repeat = 1;

static void add_file(const char *path)
{
    for (long k = 0; k < repeat; k++) {
        photo *np = realloc(g.p, sizeof *g.p * (size_t)(g.n + 1));
        if (!np) die("photos", UMG_ENOMEM);
        g.p = np;
        memset(&g.p[g.n], 0, sizeof g.p[g.n]);
        int rc = umg_read_file(path, (size_t)1 << 30, &g.p[g.n].bytes, &g.p[g.n].len);
        if (rc) die("read", rc);
        char name[4200];
        snprintf(name, sizeof name, "%s#%ld", path, k);
        g.p[g.n].path = strdup(repeat > 1 ? name : path);
        g.n++;
    }
}

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void add_path(const char *path)
{
    struct stat st;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        if (!d) return;
        char **names = NULL;
        int n = 0;
        struct dirent *e;
        while ((e = readdir(d))) {
            size_t l = strlen(e->d_name);
            if (l > 4 && (!strcmp(e->d_name + l - 4, ".jpg") || !strcmp(e->d_name + l - 4, ".png"))) {
                names = realloc(names, sizeof *names * (size_t)(n + 1));
                names[n++] = strdup(e->d_name);
            }
        }
        closedir(d);
        qsort(names, (size_t)n, sizeof *names, by_name);
        for (int i = 0; i < n; i++) {
            char full[4096];
            snprintf(full, sizeof full, "%s/%s", path, names[i]);
            add_file(full);
            free(names[i]);
        }
        free(names);
    } else {
        add_file(path);
    }
}

/* Stage 1, as the server's stage-1 workers do it. */
static void *stage1_main(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&g.mu);
        int i = g.next < g.n ? g.next++ : -1;
        pthread_mutex_unlock(&g.mu);
        if (i < 0) break;
        photo *p = &g.p[i];
        eng_ingest_req r = {.path = p->path, .data = p->bytes, .len = p->len};
        p->rc = eng_ingest_begin(g.e, &r, &p->ing);
        if (!p->rc && eng_ingest_done(p->ing)) p->rc = UMG_EEXIST; /* a photo given twice */
        if (!p->rc) p->rc = eng_ingest_prepare(g.e, p->ing);
        const eng_ingest_result *res = p->ing ? eng_ingest_result_of(p->ing) : NULL;
        pthread_mutex_lock(&g.mu);
        if (res)
            g.cpu_decode += res->cpu_ms_decode, g.cpu_pre += res->cpu_ms_preprocess, g.cpu_prop += res->cpu_ms_propose,
                g.cpu_thumb += res->cpu_ms_thumb;
        g.ready[g.ready_upto++] = i;
        g.stage1_done++;
        pthread_cond_broadcast(&g.cv);
        pthread_mutex_unlock(&g.mu);
    }
    return NULL;
}

static int parse_opt(const char *flag, const char *v, long min, long *out)
{
    if (umg_parse_long(v, min, 1 << 20, out) == 0) return 0;
    fprintf(stderr, "bench_pipeline: %s wants an integer >= %ld, not '%s'\n", flag, min, v);
    exit(2);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_pipeline MODEL_DIR PHOTO... [--threads 2] [--workers 2] [--batch 16] "
                        "[--regions 32] [--precision fp32|fp16] [--decode exact|fast] [--repeat N] [--thumbs 1|0]\n");
        return 2;
    }
    long threads = 2, workers = 2, batch = 16, regions_opt = 32, thumbs = 1;
    int precision = ENC_PRECISION_FP32, fast = 0;
    const char *model_dir = argv[1];
    for (int i = 2; i < argc; i++) {
        if (!strncmp(argv[i], "--", 2)) {
            if (i + 1 >= argc) {
                fprintf(stderr, "bench_pipeline: %s needs a value\n", argv[i]);
                return 2;
            }
            const char *f = argv[i], *v = argv[i + 1];
            i++;
            if (!strcmp(f, "--precision")) {
                if (enc_precision_parse(v, &precision)) {
                    fprintf(stderr, "bench_pipeline: --precision wants fp32 or fp16\n");
                    return 2;
                }
            } else if (!strcmp(f, "--decode")) {
                if (enc_decode_mode_parse(v, &fast)) {
                    fprintf(stderr, "bench_pipeline: --decode wants exact or fast\n");
                    return 2;
                }
            } else if (!strcmp(f, "--repeat")) parse_opt(f, v, 1, &repeat);
            else if (!strcmp(f, "--threads")) parse_opt(f, v, 1, &threads);
            else if (!strcmp(f, "--workers")) parse_opt(f, v, 1, &workers);
            else if (!strcmp(f, "--batch")) parse_opt(f, v, 1, &batch);
            else if (!strcmp(f, "--regions")) parse_opt(f, v, 0, &regions_opt);
            else if (!strcmp(f, "--thumbs")) parse_opt(f, v, 0, &thumbs);
            else {
                fprintf(stderr, "bench_pipeline: unknown option %s\n", f);
                return 2;
            }
        }
    }
    for (int i = 2; i < argc; i++) { /* the photos, once every option (--repeat) is known */
        if (!strncmp(argv[i], "--", 2)) i++;
        else add_path(argv[i]);
    }
    if (g.n == 0) {
        fprintf(stderr, "bench_pipeline: no photos\n");
        return 2;
    }
    g.regions = (int)regions_opt;
    enc_set_threads((int)threads);
    enc_model *m;
    enc_model_options mopt = {.precision = precision};
    int rc = enc_model_open_ex(model_dir, &mopt, &m);
    if (rc) die("model", rc);
    char dir[] = "/tmp/umg-bench-pipeline-XXXXXX";
    if (!mkdtemp(dir)) die("temporary directory", UMG_EIO);
    uint8_t fp[32];
    db_options o = eng_db_options(m, fp);
    db_t *db;
    if ((rc = db_open(dir, &o, &db))) die("database", rc);
    eng_config ec = {.region_mode = ENG_REGION_MODE_DENSE, .regions = g.regions, .batch = (int)batch,
                     .threads = (int)threads, .text_lanes = 1, .decode = fast ? ENG_DECODE_FAST : ENG_DECODE_EXACT,
                     .no_thumbs = !thumbs};
    if ((rc = eng_create(m, db, &ec, &g.e))) die("engine", rc);
    g.ready = calloc((size_t)g.n, sizeof *g.ready);
    pthread_t *th = calloc((size_t)workers, sizeof *th);
    eng_ingest **bt = calloc((size_t)batch, sizeof *bt);
    if (!g.ready || !th || !bt) die("buffers", UMG_ENOMEM);
    pthread_mutex_init(&g.mu, NULL);
    pthread_cond_init(&g.cv, NULL);

    /* warm-up, not timed: the first pass faults in the mmapped weights */
    {
        enc_run *run;
        const enc_config *mc = enc_model_config(m);
        size_t S3 = 3 * (size_t)mc->image_size * mc->image_size;
        float *px = calloc(S3 * (size_t)batch, sizeof(float)), *emb = malloc((size_t)batch * o.dim * sizeof(float));
        if (!px || !emb) die("warm-up", UMG_ENOMEM);
        if ((rc = enc_run_create(m, (int)batch, &run)) || (rc = enc_encode_pixels(run, px, (int)batch, emb, NULL)))
            die("warm-up", rc);
        enc_run_close(run);
        free(px);
        free(emb);
    }

    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    double t0 = bench_now(), cpu_store = 0;
    for (int w = 0; w < workers; w++) pthread_create(&th[w], NULL, stage1_main, NULL);
    int taken = 0, batches = 0, failed = 0, regions = 0;
    while (taken < g.n) {
        pthread_mutex_lock(&g.mu);
        /* like the server's encoder thread: a full batch, or what is ready once stage 1 is over */
        while (g.ready_upto - taken < batch && g.stage1_done < g.n) pthread_cond_wait(&g.cv, &g.mu);
        int nb = g.ready_upto - taken < batch ? g.ready_upto - taken : (int)batch;
        int idx[nb > 0 ? nb : 1];
        for (int j = 0; j < nb; j++) idx[j] = g.ready[taken + j];
        pthread_mutex_unlock(&g.mu);
        taken += nb;
        int ok = 0;
        for (int j = 0; j < nb; j++) {
            if (g.p[idx[j]].rc) {
                failed++;
                continue;
            }
            bt[ok++] = g.p[idx[j]].ing;
        }
        if (!ok) continue;
        double c0 = cpu_ms();
        eng_ingest_store_batch(g.e, bt, ok);
        cpu_store += cpu_ms() - c0;
        for (int j = 0; j < ok; j++) {
            const eng_ingest_result *r = eng_ingest_result_of(bt[j]);
            if (r->rc) {
                fprintf(stderr, "bench_pipeline: %s\n", r->msg);
                failed++;
            } else {
                regions += r->regions;
            }
        }
        batches++;
    }
    double wall = bench_now() - t0;
    for (int w = 0; w < workers; w++) pthread_join(th[w], NULL);
    getrusage(RUSAGE_SELF, &ru1);
#define TV_S(tv) ((double)(tv).tv_sec + (tv).tv_usec * 1e-6)
    double cpu_s = TV_S(ru1.ru_utime) - TV_S(ru0.ru_utime) + TV_S(ru1.ru_stime) - TV_S(ru0.ru_stime);
    int done = g.n - failed;
    /* the disk: data.mdb's used bytes and the thumbnails' own, per photo stored */
    db_stats st;
    if ((rc = db_stats_get(db, &st))) die("stats", rc);
    double thumb_bytes = 0;
    uint64_t ids[256], after = 0;
    int got;
    while (db_list_images(db, after, ids, 256, &got) == 0 && got > 0) {
        for (int i = 0; i < got; i++) {
            void *t;
            size_t tl;
            if (db_get_thumb(db, ids[i], &t, &tl) == 0) thumb_bytes += (double)tl, free(t);
        }
        after = ids[got - 1];
    }
    printf("{\"photos\": %d, \"failed\": %d, \"regions\": %d, \"seconds\": %.3f, \"photos_per_s\": %.3f, "
           "\"cpu_s\": %.2f, \"batches\": %d, \"threads\": %ld, \"workers\": %ld, \"batch\": %ld, \"max_regions\": %d, "
           "\"thumbs\": %ld, \"cpu_ms_per_photo\": {\"decode\": %.2f, \"preprocess\": %.2f, \"propose\": %.2f, "
           "\"thumb\": %.2f, \"store\": %.2f}, \"data_mdb_used_bytes_per_photo\": %.0f, \"thumb_bytes_per_photo\": %.0f}\n",
           done, failed, regions, wall, done / wall, cpu_s, batches, threads, workers, batch, g.regions, thumbs,
           g.cpu_decode / g.n, g.cpu_pre / g.n, g.cpu_prop / g.n, g.cpu_thumb / g.n, done ? cpu_store / done : 0,
           done ? (double)st.map_used / done : 0, done ? thumb_bytes / done : 0);
    for (int i = 0; i < g.n; i++) {
        free(g.p[i].path);
        free(g.p[i].bytes);
        eng_ingest_free(g.p[i].ing);
    }
    free(g.p);
    free(g.ready);
    free(th);
    free(bt);
    eng_close(g.e);
    db_close(db);
    enc_model_close(m);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd)) fprintf(stderr, "bench_pipeline: could not remove %s\n", dir);
    return failed ? 1 : 0;
}
