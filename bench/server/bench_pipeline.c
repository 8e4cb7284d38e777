/* bench_pipeline.c - the server's ingest work in one process, without the
 * server: the peer that separates what the server itself costs (sockets,
 * msgpack, SHA-256, queues, LMDB) from the work regions add to encoding.
 *
 *   bench_pipeline MODEL_DIR PHOTO... [--threads 2] [--workers 2] [--batch 16] [--regions 32]
 *
 * PHOTO: files or directories (their *.jpg / *.png, not recursive), read into
 * memory first (not timed).  Then, timed, as the server does it:
 *   stage 1 on --workers threads, per photo: decode (EXIF orientation),
 *     preprocess with ENC_FIT_PAD, propose --regions boxes (enc_propose);
 *   one encoder thread with OpenBLAS on --threads threads, per batch of up to
 *     --batch ready photos (it waits for a full batch while photos are still
 *     in stage 1): enc_encode_pixels with patch tokens, enc_region_pool of
 *     every box, patch tokens L2-normalized to float16 (what the server
 *     stores).
 * One batch of zeros is encoded first, untimed (faults the weights in).
 * Prints one JSON object: photos, seconds (wall), photos_per_s, cpu_s (the
 * process's user + system CPU over the timed part), batches, and
 * the CPU milliseconds per photo of each step (thread CPU clocks). */
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
#include "enc_regions.h"
#include "umg_error.h"

typedef struct photo {
    char *path;
    uint8_t *bytes;
    size_t len;
    float *pixels;             /* 3 S S */
    enc_preproc_geom geom;
    enc_box *boxes;
    int n_boxes;
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
    enc_preproc pad;
    int regions, S;
    double cpu_decode, cpu_pre, cpu_prop; /* ms, summed over photos */
} g;

/* CPU milliseconds of the calling thread. */
static double cpu_ms(void) { return bench_thread_cpu() * 1e3; }

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench_pipeline: %s: %s (%s)\n", what, umg_strerror(rc), umg_err_msg());
    exit(1);
}

static void add_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "bench_pipeline: cannot open %s\n", path);
        exit(1);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    photo *np = realloc(g.p, sizeof *g.p * (size_t)(g.n + 1));
    uint8_t *b = malloc(n > 0 ? (size_t)n : 1);
    if (!np || !b) {
        fprintf(stderr, "bench_pipeline: out of memory\n");
        exit(1);
    }
    g.p = np;
    if (fread(b, 1, (size_t)n, f) != (size_t)n) {
        fprintf(stderr, "bench_pipeline: cannot read %s\n", path);
        exit(1);
    }
    fclose(f);
    memset(&g.p[g.n], 0, sizeof g.p[g.n]);
    g.p[g.n].path = strdup(path);
    g.p[g.n].bytes = b;
    g.p[g.n].len = (size_t)n;
    g.n++;
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

/* Stage 1, as ingest_prepare in cli/server_ops.c does it. */
static void *stage1_main(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_mutex_lock(&g.mu);
        int i = g.next < g.n ? g.next++ : -1;
        pthread_mutex_unlock(&g.mu);
        if (i < 0) break;
        photo *p = &g.p[i];
        double t0 = cpu_ms();
        enc_image img = {0};
        p->rc = enc_image_decode(p->bytes, p->len, ENC_IMAGE_MAX_PIXELS_DEFAULT, &img);
        double t1 = cpu_ms(), t2 = t1, t3 = t1;
        if (!p->rc) {
            p->pixels = malloc(3 * (size_t)g.S * g.S * sizeof(float));
            p->rc = p->pixels ? enc_preprocess(&img, &g.pad, p->pixels) : UMG_ENOMEM;
            enc_preproc_geometry(&g.pad, img.width, img.height, &p->geom);
            t2 = cpu_ms();
            if (!p->rc && g.regions > 0) {
                enc_propose_opts po;
                enc_propose_opts_default(&po);
                po.max_boxes = g.regions;
                p->boxes = malloc((size_t)g.regions * sizeof *p->boxes);
                p->rc = p->boxes ? enc_propose(&img, &po, p->boxes, g.regions, &p->n_boxes) : UMG_ENOMEM;
            }
            t3 = cpu_ms();
        }
        enc_image_free(&img);
        pthread_mutex_lock(&g.mu);
        g.cpu_decode += t1 - t0;
        g.cpu_pre += t2 - t1;
        g.cpu_prop += t3 - t2;
        g.ready[g.ready_upto++] = i;
        g.stage1_done++;
        pthread_cond_broadcast(&g.cv);
        pthread_mutex_unlock(&g.mu);
    }
    return NULL;
}

static uint16_t to_f16(float f)
{
    _Float16 h = (_Float16)f;
    uint16_t u;
    memcpy(&u, &h, 2);
    return u;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_pipeline MODEL_DIR PHOTO... [--threads 2] [--workers 2] [--batch 16] "
                        "[--regions 32] [--precision fp32|fp16]\n");
        return 2;
    }
    int threads = 2, workers = 2, batch = 16, precision = ENC_PRECISION_FP32;
    g.regions = 32;
    const char *model_dir = argv[1];
    for (int i = 2; i < argc; i++) {
        if (!strncmp(argv[i], "--", 2)) {
            if (i + 1 >= argc) {
                fprintf(stderr, "bench_pipeline: %s needs a value\n", argv[i]);
                return 2;
            }
            if (!strcmp(argv[i], "--precision")) {
                if (enc_precision_parse(argv[i + 1], &precision)) {
                    fprintf(stderr, "bench_pipeline: --precision wants fp32 or fp16\n");
                    return 2;
                }
                i++;
                continue;
            }
            int v = atoi(argv[i + 1]);
            if (!strcmp(argv[i], "--threads")) threads = v;
            else if (!strcmp(argv[i], "--workers")) workers = v;
            else if (!strcmp(argv[i], "--batch")) batch = v;
            else if (!strcmp(argv[i], "--regions")) g.regions = v;
            else {
                fprintf(stderr, "bench_pipeline: unknown option %s\n", argv[i]);
                return 2;
            }
            if (v < 0 || (v == 0 && strcmp(argv[i], "--regions"))) {
                fprintf(stderr, "bench_pipeline: %s wants a positive integer\n", argv[i]);
                return 2;
            }
            i++;
        } else {
            add_path(argv[i]);
        }
    }
    if (g.n == 0) {
        fprintf(stderr, "bench_pipeline: no photos\n");
        return 2;
    }
    enc_set_threads(threads);
    enc_model *m;
    enc_model_options mopt = {.precision = precision};
    int rc = enc_model_open_ex(model_dir, &mopt, &m);
    if (rc) die("model", rc);
    const enc_config *mc = enc_model_config(m);
    int D = enc_model_dim(m), G = enc_model_grid(m);
    size_t GG = (size_t)G * G;
    g.S = mc->image_size;
    g.pad = *enc_model_preproc(m);
    g.pad.fit = ENC_FIT_PAD;
    enc_run *run;
    if ((rc = enc_run_create(m, batch, &run))) die("run", rc);
    size_t S3 = 3 * (size_t)g.S * g.S;
    float *pixels = malloc(S3 * (size_t)batch * sizeof(float));
    float *embeds = malloc((size_t)batch * D * sizeof(float));
    float *patches = malloc((size_t)batch * GG * D * sizeof(float));
    float *regvec = malloc((size_t)D * sizeof(float));
    uint16_t *f16 = malloc(GG * D * sizeof(uint16_t));
    g.ready = calloc((size_t)g.n, sizeof *g.ready);
    pthread_t *th = calloc((size_t)workers, sizeof *th);
    if (!pixels || !embeds || !patches || !regvec || !f16 || !g.ready || !th) {
        fprintf(stderr, "bench_pipeline: out of memory\n");
        return 1;
    }
    pthread_mutex_init(&g.mu, NULL);
    pthread_cond_init(&g.cv, NULL);

    /* warm-up, not timed: the first pass faults in the mmapped weights */
    memset(pixels, 0, S3 * (size_t)batch * sizeof(float));
    if ((rc = enc_encode_pixels(run, pixels, batch, embeds, patches))) die("warm-up", rc);

    struct rusage ru0, ru1;
    getrusage(RUSAGE_SELF, &ru0);
    double t0 = bench_now(), cpu_enc = 0, cpu_pool = 0;
    for (int w = 0; w < workers; w++) pthread_create(&th[w], NULL, stage1_main, NULL);
    int taken = 0, batches = 0, failed = 0, regions = 0;
    uint32_t sink = 0; /* keeps the float16 work from being optimized away */
    while (taken < g.n) {
        pthread_mutex_lock(&g.mu);
        /* like the server's encoder thread: a full batch, or what is ready once stage 1 is over */
        while (g.ready_upto - taken < batch && g.stage1_done < g.n) pthread_cond_wait(&g.cv, &g.mu);
        int nb = g.ready_upto - taken < batch ? g.ready_upto - taken : batch;
        int idx[nb > 0 ? nb : 1];
        for (int j = 0; j < nb; j++) idx[j] = g.ready[taken + j];
        pthread_mutex_unlock(&g.mu);
        taken += nb;
        int ok = 0, okidx[nb > 0 ? nb : 1];
        for (int j = 0; j < nb; j++) {
            if (g.p[idx[j]].rc) {
                failed++;
                continue;
            }
            memcpy(pixels + (size_t)ok * S3, g.p[idx[j]].pixels, S3 * sizeof(float));
            okidx[ok++] = idx[j];
        }
        if (!ok) continue;
        double c0 = cpu_ms();
        if ((rc = enc_encode_pixels(run, pixels, ok, embeds, patches))) die("encode", rc);
        double c1 = cpu_ms();
        for (int j = 0; j < ok; j++) {
            photo *p = &g.p[okidx[j]];
            const float *pt = patches + (size_t)j * GG * D;
            for (int b = 0; b < p->n_boxes; b++) {
                float box[4] = {p->boxes[b].x, p->boxes[b].y, p->boxes[b].w, p->boxes[b].h};
                if (!enc_region_pool(pt, G, D, mc->patch_size, &p->geom, box, regvec)) regions++;
            }
            for (size_t c = 0; c < GG; c++) {
                const float *t = pt + c * D;
                double ss = 0;
                for (int d = 0; d < D; d++) ss += (double)t[d] * t[d];
                float inv = ss > 0 ? (float)(1.0 / sqrt(ss)) : 0.f;
                for (int d = 0; d < D; d++) f16[c * D + d] = to_f16(t[d] * inv);
            }
            sink += f16[GG * D / 2];
        }
        cpu_pool += cpu_ms() - c1;
        cpu_enc += c1 - c0;
        batches++;
    }
    double wall = bench_now() - t0;
    for (int w = 0; w < workers; w++) pthread_join(th[w], NULL);
    getrusage(RUSAGE_SELF, &ru1);
#define TV_S(tv) ((double)(tv).tv_sec + (tv).tv_usec * 1e-6)
    double cpu_s = TV_S(ru1.ru_utime) - TV_S(ru0.ru_utime) + TV_S(ru1.ru_stime) - TV_S(ru0.ru_stime);
    int done = g.n - failed;
    printf("{\"photos\": %d, \"failed\": %d, \"regions\": %d, \"seconds\": %.3f, \"photos_per_s\": %.3f, "
           "\"cpu_s\": %.2f, \"batches\": %d, \"threads\": %d, \"workers\": %d, \"batch\": %d, \"max_regions\": %d, "
           "\"cpu_ms_per_photo\": {\"decode\": %.2f, \"preprocess\": %.2f, \"propose\": %.2f, "
           "\"encode\": %.2f, \"pool_f16\": %.2f}, \"sink\": %u}\n",
           done, failed, regions, wall, done / wall, cpu_s, batches, threads, workers, batch, g.regions,
           g.cpu_decode / g.n, g.cpu_pre / g.n, g.cpu_prop / g.n, done ? cpu_enc / done : 0,
           done ? cpu_pool / done : 0, sink);
    for (int i = 0; i < g.n; i++) {
        free(g.p[i].path);
        free(g.p[i].bytes);
        free(g.p[i].pixels);
        free(g.p[i].boxes);
    }
    free(g.p);
    free(g.ready);
    free(th);
    free(pixels);
    free(embeds);
    free(patches);
    free(regvec);
    free(f16);
    enc_run_close(run);
    enc_model_close(m);
    return failed ? 1 : 0;
}
