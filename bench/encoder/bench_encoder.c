/* bench_encoder.c - images/s and text-query latency of the C encoder.
 *
 *   bench_encoder MODEL_DIR [--threads 2] [--repeats 7] [--text-repeats 30]
 *                 [--budget 15] [--query "a photo of a dog in the snow"]
 *                 [--check ONNX_DIR]
 *
 * Images/s at batch 1 and 16 on --threads threads, two ways:
 *   workers  T threads, each with its own enc_run, OpenBLAS single-threaded
 *            (how `umgdb embed --threads T` encodes many photos: one read-only
 *            model, one run state per thread);
 *   blas     one enc_run, OpenBLAS on T threads (one stream of batches, as
 *            ONNX Runtime's intra-op threads run it).
 * Text latency: enc_encode_text (tokenize + text tower over the real tokens) on
 * one thread, wall time and the thread's CPU time.  Every figure is the median of up to --repeats timed repeats
 * after a warm-up (fewer, but at least 3, when they would take more than
 * --budget seconds).  --check ONNX_DIR first compares the encoder with the torch
 * outputs that tools/export_onnx.py stored in ONNX_DIR/export.json (cosine),
 * so that a broken encoder cannot look fast.  One JSON object on stdout. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "../common.h"
#include "enc.h"
#include "enc_kernels.h"
#include "umg_error.h"

#define MAX_REPEATS 1000

typedef struct bench_args {
    const char *model_dir;
    const char *check_dir;
    const char *query;
    int threads;
    int repeats;
    int text_repeats;
    double budget_s;
    int precision; /* enum enc_precision */
} bench_args;

/* Median, min and max of v[0..n) (sorts v). */
typedef struct stats { double median, min, max; } stats;
static stats stats_of(double *v, int n)
{
    double median = bench_median(v, (size_t)n); /* sorts v first */
    stats s = { median, v[0], v[n - 1] };
    return s;
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench_encoder: %s: %s (%s)\n", what, umg_strerror(rc), umg_err_msg());
    exit(1);
}

/* ---- images/s ------------------------------------------------------------ */

typedef struct worker {
    const enc_model *model;
    enc_run *run;
    const float *pixels; /* [batch, 3, S, S] */
    float *embeds;       /* [batch, D] */
    int batch, runs, rc;
    pthread_t tid;
} worker;

static void *worker_main(void *arg)
{
    worker *w = arg;
    for (int i = 0; i < w->runs && w->rc == 0; i++)
        w->rc = enc_encode_pixels(w->run, w->pixels, w->batch, w->embeds, NULL);
    return NULL;
}

/* One timed repeat: n_workers threads each encoding `runs` batches.  With one
 * worker, it runs on the calling thread (OpenBLAS then uses its own threads). */
/* The process's CPU seconds (every thread): the figure that a busy machine
 * disturbs least (wall time there includes waiting for a core). */
static double process_cpu(void)
{
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

/* cpu_ms_per_image: if not NULL, the process's CPU time per image. */
static double images_repeat(worker *ws, int n_workers, double *cpu_ms_per_image)
{
    double t0 = bench_now(), c0 = process_cpu();
    if (n_workers == 1) {
        worker_main(&ws[0]);
    } else {
        for (int i = 0; i < n_workers; i++)
            if (pthread_create(&ws[i].tid, NULL, worker_main, &ws[i]) != 0) {
                fprintf(stderr, "bench_encoder: pthread_create failed\n");
                exit(1);
            }
        for (int i = 0; i < n_workers; i++)
            pthread_join(ws[i].tid, NULL);
    }
    double dt = bench_now() - t0, cpu = process_cpu() - c0;
    int images = 0;
    for (int i = 0; i < n_workers; i++) {
        if (ws[i].rc != 0)
            die("enc_encode_pixels", ws[i].rc);
        images += ws[i].batch * ws[i].runs;
    }
    if (cpu_ms_per_image)
        *cpu_ms_per_image = cpu * 1e3 / images;
    return images / dt;
}

/* Repeats are sized from the warm-up: each lasts >= ~0.3 s (batch 1 runs
 * several batches per repeat) and one measurement takes about budget_s, within
 * [3, max_repeats] repeats, so a slow build or a busy machine still finishes. */
static stats bench_images(const enc_model *m, const float *pixels, int batch, int n_workers,
                          int blas_threads, int max_repeats, double budget_s, int *repeats_out, stats *cpu_out)
{
    int dim = enc_model_dim(m);
    worker *ws = calloc((size_t)n_workers, sizeof *ws);
    if (!ws)
        die("calloc", UMG_ENOMEM);
    for (int i = 0; i < n_workers; i++) {
        ws[i].model = m;
        ws[i].pixels = pixels;
        ws[i].batch = batch;
        ws[i].runs = 1;
        ws[i].embeds = malloc(sizeof(float) * (size_t)batch * (size_t)dim);
        if (!ws[i].embeds)
            die("malloc", UMG_ENOMEM);
        int rc = enc_run_create(m, batch, &ws[i].run);
        if (rc)
            die("enc_run_create", rc);
    }
    enc_set_threads(blas_threads);
    /* warm-up: pages in the weights, grows BLAS buffers, times one run */
    double run_s = (double)(batch * n_workers) / images_repeat(ws, n_workers, NULL);
    int runs = batch == 1 ? (int)ceil(0.3 / run_s) : 1;
    if (runs < 1)
        runs = 1;
    int repeats = (int)(budget_s / (runs * run_s));
    repeats = repeats < 3 ? 3 : repeats > max_repeats ? max_repeats : repeats;
    for (int i = 0; i < n_workers; i++)
        ws[i].runs = runs;
    double rates[MAX_REPEATS], cpu[MAX_REPEATS];
    for (int r = 0; r < repeats; r++)
        rates[r] = images_repeat(ws, n_workers, &cpu[r]);
    *cpu_out = stats_of(cpu, repeats);
    for (int i = 0; i < n_workers; i++) {
        enc_run_close(ws[i].run);
        free(ws[i].embeds);
    }
    free(ws);
    *repeats_out = repeats;
    return stats_of(rates, repeats);
}

/* ---- correctness check against export.json ------------------------------- */

static double cosine(const float *a, const double *b, int n)
{
    double ab = 0, aa = 0, bb = 0;
    for (int i = 0; i < n; i++) {
        ab += a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += b[i] * b[i];
    }
    return ab / sqrt(aa * bb);
}

/* Reads json array `arr` of numbers into out[0..n); 0 if it has exactly n. */
static int json_doubles(const json_t *arr, double *out, int n)
{
    if (!json_is_array(arr) || (int)json_array_size(arr) != n)
        return -1;
    for (int i = 0; i < n; i++) {
        const json_t *v = json_array_get(arr, (size_t)i);
        if (!json_is_number(v))
            return -1;
        out[i] = json_number_value(v);
    }
    return 0;
}

typedef struct check_result { double image_cos, text_cos; int done; } check_result;

static check_result check_against_export(const enc_model *m, const char *dir)
{
    check_result res = { 0, 0, 0 };
    char path[4096];
    snprintf(path, sizeof path, "%s/export.json", dir);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    const json_t *check = root ? json_object_get(root, "check") : NULL;
    if (!check) {
        fprintf(stderr, "bench_encoder: %s: no \"check\" object (%s)\n", path, jerr.text);
        exit(1);
    }
    const enc_config *cfg = enc_model_config(m);
    int dim = enc_model_dim(m), s = cfg->image_size, n_img = 2;
    size_t img_len = (size_t)3 * s * s;
    float *pixels = malloc(sizeof(float) * img_len * n_img);
    float *embeds = malloc(sizeof(float) * (size_t)dim * n_img);
    double *want = malloc(sizeof(double) * (size_t)dim);
    if (!pixels || !embeds || !want)
        die("malloc", UMG_ENOMEM);
    snprintf(path, sizeof path, "%s/check_pixels.f32", dir);
    FILE *f = fopen(path, "rb");
    if (!f || fread(pixels, sizeof(float), img_len * n_img, f) != img_len * n_img) {
        fprintf(stderr, "bench_encoder: %s: cannot read %zu floats\n", path, img_len * n_img);
        exit(1);
    }
    fclose(f);

    enc_run *run;
    int rc = enc_run_create(m, n_img, &run);
    if (rc)
        die("enc_run_create", rc);
    rc = enc_encode_pixels(run, pixels, n_img, embeds, NULL);
    if (rc)
        die("enc_encode_pixels", rc);
    res.image_cos = 1.0;
    const json_t *img_ref = json_object_get(check, "image_embeds");
    for (int i = 0; i < n_img; i++) {
        if (json_doubles(json_array_get(img_ref, (size_t)i), want, dim)) {
            fprintf(stderr, "bench_encoder: export.json: image_embeds[%d] is not %d numbers\n", i, dim);
            exit(1);
        }
        double c = cosine(embeds + (size_t)i * dim, want, dim);
        if (c < res.image_cos)
            res.image_cos = c;
    }
    const json_t *ids_json = json_object_get(check, "ids");
    int n_ids = (int)json_array_size(ids_json);
    int32_t ids[ENC_CONTEXT_LENGTH];
    if (n_ids < 2 || n_ids > ENC_CONTEXT_LENGTH) {
        fprintf(stderr, "bench_encoder: export.json: bad ids\n");
        exit(1);
    }
    for (int i = 0; i < n_ids; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(ids_json, (size_t)i));
    rc = enc_encode_ids(run, ids, n_ids, embeds);
    if (rc)
        die("enc_encode_ids", rc);
    if (json_doubles(json_object_get(check, "text_embed"), want, dim)) {
        fprintf(stderr, "bench_encoder: export.json: text_embed is not %d numbers\n", dim);
        exit(1);
    }
    res.text_cos = cosine(embeds, want, dim);
    res.done = 1;
    enc_run_close(run);
    free(pixels);
    free(embeds);
    free(want);
    json_decref(root);
    return res;
}

/* ---- main ------------------------------------------------------------------ */

static void usage(void)
{
    fprintf(stderr, "usage: bench_encoder MODEL_DIR [--threads N] [--repeats N] [--text-repeats N]\n"
                    "                     [--budget SECONDS] [--query TEXT] [--check ONNX_DIR]\n"
                    "                     [--precision fp32|fp16|int8|bf16|auto]\n");
    exit(2);
}

static int int_arg(const char *s, int lo, int hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        usage();
    return (int)v;
}

static bench_args parse_args(int argc, char **argv)
{
    bench_args a = { NULL, NULL, "a photo of a dog in the snow", 2, 7, 30, 15.0, ENC_PRECISION_FP32 };
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i];
        if (k[0] != '-') {
            if (a.model_dir)
                usage();
            a.model_dir = k;
            continue;
        }
        if (i + 1 >= argc)
            usage();
        const char *v = argv[++i];
        if (!strcmp(k, "--threads"))
            a.threads = int_arg(v, 1, 256);
        else if (!strcmp(k, "--repeats"))
            a.repeats = int_arg(v, 1, MAX_REPEATS);
        else if (!strcmp(k, "--text-repeats"))
            a.text_repeats = int_arg(v, 1, MAX_REPEATS);
        else if (!strcmp(k, "--budget"))
            a.budget_s = int_arg(v, 1, 3600);
        else if (!strcmp(k, "--query"))
            a.query = v;
        else if (!strcmp(k, "--check"))
            a.check_dir = v;
        else if (!strcmp(k, "--precision")) {
            if (enc_precision_parse(v, &a.precision))
                usage();
        }
        else
            usage();
    }
    if (!a.model_dir)
        usage();
    return a;
}

static void print_stats(const char *name, stats s, const char *unit, int repeats, int last)
{
    printf("      \"%s\": {\"%s\": %.4f, \"min\": %.4f, \"max\": %.4f, \"repeats\": %d}%s\n", name, unit,
           s.median, s.min, s.max, repeats, last ? "" : ",");
}

int main(int argc, char **argv)
{
    bench_args a = parse_args(argc, argv);
    const char *cap = getenv("UMG_CPU"); /* as umgdb: caps the kernels (docs/benchmarks.md) */
    if (cap && *cap && enc_cpu_limit_named(cap))
        die("UMG_CPU", UMG_EINVAL);
    double t0 = bench_now();
    enc_model *m;
    enc_model_options mopt = {.precision = a.precision};
    int rc = enc_model_open_ex(a.model_dir, &mopt, &m);
    if (rc)
        die(a.model_dir, rc);
    double load_s = bench_now() - t0;
    const enc_config *cfg = enc_model_config(m);

    check_result chk = { 0, 0, 0 };
    enc_set_threads(a.threads);
    if (a.check_dir) {
        chk = check_against_export(m, a.check_dir);
        /* the accuracy guard's floors for the approximate precisions (docs/benchmarks.md) */
        double floor = a.precision == ENC_PRECISION_INT8 ? 0.995 : a.precision == ENC_PRECISION_BF16 ? 0.999 : 0.9999;
        if (chk.image_cos < floor || chk.text_cos < floor) {
            fprintf(stderr, "bench_encoder: encoder disagrees with torch: image cosine %.6f, text %.6f\n",
                    chk.image_cos, chk.text_cos);
            return 1;
        }
    }

    /* Pixel values do not change the work; a fixed pseudo-random fill. */
    size_t img_len = (size_t)cfg->channels * cfg->image_size * cfg->image_size;
    float *pixels = malloc(sizeof(float) * img_len * 16);
    if (!pixels)
        die("malloc", UMG_ENOMEM);
    uint32_t x = 12345;
    for (size_t i = 0; i < img_len * 16; i++) {
        x = x * 1103515245u + 12345u;
        pixels[i] = (float)(x / 4294967296.0 * 4.0 - 2.0);
    }

    static const int batches[2] = { 1, 16 };
    stats workers[2], blas[2], workers_cpu[2], blas_cpu[2];
    int workers_rep[2], blas_rep[2];
    for (int b = 0; b < 2; b++) {
        workers[b] = bench_images(m, pixels, batches[b], a.threads, 1, a.repeats, a.budget_s, &workers_rep[b],
                                  &workers_cpu[b]);
        blas[b] = bench_images(m, pixels, batches[b], 1, a.threads, a.repeats, a.budget_s, &blas_rep[b],
                               &blas_cpu[b]);
    }

    /* Text: one thread, tokenization included (it is part of a query's cost). */
    enc_set_threads(1);
    enc_run *run;
    rc = enc_run_create(m, 1, &run);
    if (rc)
        die("enc_run_create", rc);
    int dim = enc_model_dim(m);
    float *embed = malloc(sizeof(float) * (size_t)dim);
    int32_t ids[ENC_CONTEXT_LENGTH];
    int n_ids = 0;
    if (!embed)
        die("malloc", UMG_ENOMEM);
    size_t qlen = strlen(a.query);
    double tw = bench_now();
    for (int w = 0; w < 3; w++)
        if ((rc = enc_encode_text(run, a.query, qlen, embed, ids, &n_ids)))
            die("enc_encode_text", rc);
    /* both calls per repeat: about 2x the warm-up's per-call time */
    int text_repeats = (int)(a.budget_s / (2 * (bench_now() - tw) / 3));
    text_repeats = text_repeats < 5 ? 5 : text_repeats > a.text_repeats ? a.text_repeats : text_repeats;
    double ms[MAX_REPEATS], ms_ids[MAX_REPEATS], cpu_ms[MAX_REPEATS];
    for (int r = 0; r < text_repeats; r++) {
        double t = bench_now(), c = bench_thread_cpu();
        rc = enc_encode_text(run, a.query, qlen, embed, ids, &n_ids);
        ms[r] = (bench_now() - t) * 1e3;
        cpu_ms[r] = (bench_thread_cpu() - c) * 1e3;
        if (rc)
            die("enc_encode_text", rc);
        t = bench_now();
        rc = enc_encode_ids(run, ids, n_ids, embed);
        ms_ids[r] = (bench_now() - t) * 1e3;
        if (rc)
            die("enc_encode_ids", rc);
    }
    stats text = stats_of(ms, text_repeats), text_ids = stats_of(ms_ids, text_repeats);
    stats text_cpu = stats_of(cpu_ms, text_repeats);

    /* the machine may be shared: record how busy it was (-1: unknown) */
    double loadavg = -1;
    FILE *la = fopen("/proc/loadavg", "r");
    if (la) {
        if (fscanf(la, "%lf", &loadavg) != 1)
            loadavg = -1;
        fclose(la);
    }

    json_t *dir_json = json_string(a.model_dir); /* NULL if not UTF-8 */
    char *dir_quoted = dir_json ? json_dumps(dir_json, JSON_ENCODE_ANY) : NULL;
    printf("{\n  \"model_dir\": %s,\n", dir_quoted ? dir_quoted : "null");
    free(dir_quoted);
    json_decref(dir_json);
    printf("  \"vision\": {\"hidden\": %d, \"layers\": %d, \"image_size\": %d, \"patch_size\": %d},\n",
           cfg->vision.hidden, cfg->vision.layers, cfg->image_size, cfg->patch_size);
    printf("  \"text_tower\": {\"hidden\": %d, \"layers\": %d},\n", cfg->text.hidden, cfg->text.layers);
    printf("  \"precision\": \"%s\",\n", enc_precision_name(enc_model_precision(m)));
    printf("  \"kernels\": \"%s\",\n", enc_model_kernels(m));
    printf("  \"load_s\": %.3f,\n  \"threads\": %d,\n  \"repeats\": %d,\n  \"loadavg_1m\": %.2f,\n", load_s,
           a.threads, a.repeats, loadavg);
    if (chk.done)
        printf("  \"verify_cosine\": {\"image\": %.8f, \"text\": %.8f},\n", chk.image_cos, chk.text_cos);
    printf("  \"images\": {\n");
    for (int mode = 0; mode < 2; mode++) {
        printf("    \"%s\": {\n", mode == 0 ? "workers" : "blas");
        for (int b = 0; b < 2; b++) {
            char name[16];
            snprintf(name, sizeof name, "batch%d", batches[b]);
            print_stats(name, mode == 0 ? workers[b] : blas[b], "images_per_s",
                        mode == 0 ? workers_rep[b] : blas_rep[b], 0);
            snprintf(name, sizeof name, "batch%d_cpu", batches[b]);
            print_stats(name, mode == 0 ? workers_cpu[b] : blas_cpu[b], "cpu_ms_per_image",
                        mode == 0 ? workers_rep[b] : blas_rep[b], b == 1);
        }
        printf("    }%s\n", mode == 0 ? "," : "");
    }
    printf("  },\n  \"text\": {\n");
    printf("    \"query_tokens\": %d,\n    \"ids\": [", n_ids);
    for (int i = 0; i < n_ids; i++)
        printf("%s%d", i ? ", " : "", ids[i]);
    printf("],\n    \"repeats\": %d,\n", text_repeats);
    printf("    \"encode_text\": {\"ms\": %.4f, \"min\": %.4f, \"max\": %.4f},\n", text.median, text.min, text.max);
    printf("    \"encode_text_cpu\": {\"ms\": %.4f, \"min\": %.4f, \"max\": %.4f},\n", text_cpu.median,
           text_cpu.min, text_cpu.max);
    printf("    \"encode_ids\": {\"ms\": %.4f, \"min\": %.4f, \"max\": %.4f}\n  }\n}\n", text_ids.median,
           text_ids.min, text_ids.max);

    free(embed);
    free(pixels);
    enc_run_close(run);
    enc_model_close(m);
    return 0;
}
