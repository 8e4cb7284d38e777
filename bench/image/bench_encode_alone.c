/* bench_encode_alone - the two peers of `umgdb embed`'s end-to-end throughput
 * (issue 17, "decoding runs beside encoding"; driven by bench/image/pipeline):
 *
 *  1. decode + preprocess CPU per photo: each file read, decoded and
 *     preprocessed on one thread as `umgdb embed` does it (--decode fast, the
 *     default), process CPU time per photo;
 *  2. the encoder alone: the same photos' preprocessed tensors (made in step 1,
 *     untimed there) encoded in batches of --batch with the arrangement `umgdb
 *     embed --threads T` uses (E = min(T, batches) threads, each its own run
 *     state, T / E threads inside its products, batches taken in order),
 *     images/s over wall time and CPU ms per photo.
 *
 *   bench_encode_alone --model DIR [--threads 2] [--batch 16] [--reps 1] FILE...
 *
 * Medians over --reps; one JSON object on stdout. */
#include "../common.h"
#include "enc.h"
#include "umg_error.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Milliseconds: wall (monotonic) or the process's CPU time. */
static double wall_ms(void) { return bench_now() * 1e3; }
static double cpu_ms(void) { return bench_process_cpu() * 1e3; }
static double median(double *v, int n) { return bench_median(v, (size_t)n); }
struct shared {
    const float *pixels; /* [n, per] */
    size_t per;
    int n, batch, next; /* next batch to take */
    pthread_mutex_t mu;
};

struct worker {
    struct shared *sh;
    enc_run *run;
    float *embeds;
    int rc;
};

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct shared *sh = w->sh;
    for (;;) {
        pthread_mutex_lock(&sh->mu);
        int k = sh->next++;
        pthread_mutex_unlock(&sh->mu);
        int first = k * sh->batch;
        if (first >= sh->n || w->rc)
            break;
        int nb = sh->n - first < sh->batch ? sh->n - first : sh->batch;
        w->rc = enc_encode_pixels(w->run, sh->pixels + (size_t)first * sh->per, nb, w->embeds, NULL);
    }
    return NULL;
}

static void die(const char *what)
{
    fprintf(stderr, "bench_encode_alone: %s: %s\n", what, umg_err_msg());
    exit(1);
}

int main(int argc, char **argv)
{
    const char *model_dir = NULL;
    int threads = 2, batch = 16, reps = 1, first_file = argc;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc)
            model_dir = argv[++i];
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--batch") && i + 1 < argc)
            batch = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else {
            first_file = i;
            break;
        }
    }
    int n = argc - first_file;
    if (!model_dir || n < 1 || threads < 1 || batch < 1 || reps < 1 || reps > 100) {
        fprintf(stderr, "usage: bench_encode_alone --model DIR [--threads T] [--batch B] [--reps R] FILE...\n");
        return 2;
    }
    enc_model *m = NULL;
    if (enc_model_open(model_dir, &m))
        die(model_dir);
    const enc_config *c = enc_model_config(m);
    size_t per = (size_t)c->channels * c->image_size * c->image_size;
    float *pixels = malloc((size_t)n * per * sizeof(float));
    double dec[100], ips[100], cpu[100];
    if (!pixels)
        die("out of memory");

    /* 1. decode + preprocess, one thread */
    enc_decode_opts dopt = {.fast_for = enc_model_preproc(m)};
    for (int r = 0; r < reps; r++) {
        double t0 = cpu_ms();
        for (int i = 0; i < n; i++) {
            enc_image img = {0};
            if (enc_image_load_ex(argv[first_file + i], &dopt, &img, NULL) ||
                enc_preprocess(&img, enc_model_preproc(m), pixels + (size_t)i * per))
                die(argv[first_file + i]);
            enc_image_free(&img);
        }
        dec[r] = (cpu_ms() - t0) / n;
    }

    /* 2. the encoder alone */
    int n_batches = (n + batch - 1) / batch;
    int E = n_batches < threads ? n_batches : threads;
    enc_set_threads(threads / E > 0 ? threads / E : 1);
    struct shared sh = {.pixels = pixels, .per = per, .n = n, .batch = batch};
    pthread_mutex_init(&sh.mu, NULL);
    struct worker w[256];
    pthread_t th[256];
    for (int e = 0; e < E; e++) {
        w[e] = (struct worker){.sh = &sh};
        w[e].embeds = malloc((size_t)batch * enc_model_dim(m) * sizeof(float));
        if (!w[e].embeds || enc_run_create(m, batch, &w[e].run))
            die("run state");
    }
    for (int r = -1; r < reps; r++) { /* r = -1: warm-up, a batch per thread (weights paged in) */
        sh.next = 0;
        sh.n = r < 0 && E * batch < n ? E * batch : n;
        double t0 = wall_ms(), c0 = cpu_ms();
        for (int e = 0; e < E; e++)
            if (pthread_create(&th[e], NULL, worker_main, &w[e]))
                die("thread");
        for (int e = 0; e < E; e++)
            pthread_join(th[e], NULL);
        double wall = wall_ms() - t0, c1 = cpu_ms() - c0;
        for (int e = 0; e < E; e++)
            if (w[e].rc)
                die("encoding");
        if (r >= 0) {
            ips[r] = sh.n / (wall / 1e3);
            cpu[r] = c1 / sh.n;
        }
    }
    printf("{\"photos\": %d, \"threads\": %d, \"batch\": %d, \"encoders\": %d, \"reps\": %d, "
           "\"decode_cpu_ms_per_photo\": %.3f, \"encoder_alone_images_per_s\": %.3f, "
           "\"encoder_cpu_ms_per_photo\": %.3f}\n",
           n, threads, batch, E, reps, median(dec, reps), median(ips, reps), median(cpu, reps));
    for (int e = 0; e < E; e++) {
        enc_run_close(w[e].run);
        free(w[e].embeds);
    }
    pthread_mutex_destroy(&sh.mu);
    free(pixels);
    enc_model_close(m);
    return 0;
}
