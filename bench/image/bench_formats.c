/* bench_formats - phone-size photos (issue 17): what the fast decode (JPEG DCT
 * scaling as PIL's draft(), then the exact bicubic resize) costs and changes,
 * against the peers the issue names, all in one run:
 *
 *  1. cosine of the embedding from the fast decode to the exact (full-resolution)
 *     one, for every photo of the set (target >= 0.999);
 *  2. decode + preprocess CPU of each large JPEG over a 640x427 one (median of
 *     the small set), against `djpeg -scale 1/8 -outfile /dev/null FILE`'s CPU
 *     (its process start-up, measured on a 32x16 JPEG, subtracted) (target <= 1.25x);
 *  3. HEIC/AVIF decode + preprocess CPU against `heif-convert FILE out.y4m`
 *     (libheif's own decode, writing uncompressed YUV; start-up subtracted the
 *     same way) (target <= 1.1x);
 *  4. decode + preprocess + encode CPU per photo (the encoder on --threads
 *     threads, batch 1): 12 MP JPEG throughput over 640x427 (target >= 0.7x).
 *
 *   build/bench/image/bench_formats --model DIR [--set DIR] [--reps N] [--threads T]
 *
 * --set: the directory bench/image/make_photo_set writes (large/, small/, heif/).
 * Times are process CPU time (the machine is shared: wall time would mostly
 * measure the others), medians over reps, the peers measured in between. */
#include "enc.h"
#include "umg_error.h"

#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    char path[1024];
    void *data;
    size_t len;
} blob;

static double cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n ? v[n / 2] : 0;
}

static int cmp_blob(const void *a, const void *b)
{
    return strcmp(((const blob *)a)->path, ((const blob *)b)->path);
}

static int load_dir(const char *dir, blob **out)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0, cap = 16;
    blob *v = malloc(cap * sizeof *v);
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        if (n == cap)
            v = realloc(v, (cap *= 2) * sizeof *v);
        snprintf(v[n].path, sizeof v[n].path, "%s/%s", dir, e->d_name);
        FILE *f = fopen(v[n].path, "rb");
        if (!f)
            continue;
        fseek(f, 0, SEEK_END);
        v[n].len = (size_t)ftell(f);
        fseek(f, 0, SEEK_SET);
        v[n].data = malloc(v[n].len);
        if (fread(v[n].data, 1, v[n].len, f) == v[n].len)
            n++;
        else
            free(v[n].data);
        fclose(f);
    }
    closedir(d);
    qsort(v, (size_t)n, sizeof *v, cmp_blob);
    *out = v;
    return n;
}

/* CPU (user + sys, ms) of running argv to completion. */
static double child_cpu_ms(char *const argv[])
{
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open("/dev/null", O_WRONLY);
        dup2(fd, 1);
        dup2(fd, 2);
        execvp(argv[0], argv);
        _exit(127);
    }
    int st;
    struct rusage ru;
    if (wait4(pid, &st, 0, &ru) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "bench_formats: %s failed\n", argv[0]);
        exit(1);
    }
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

typedef struct {
    const enc_preproc *pre;
    float *px;
    enc_run *run; /* NULL: decode + preprocess only */
    float *emb;
} pipe_ctx;

/* decode (+ fast path) + preprocess (+ encode); exits on error: the set is ours. */
static void pipeline(pipe_ctx *c, const blob *b, int fast)
{
    enc_decode_opts o = {.fast_for = fast ? c->pre : NULL};
    enc_image im;
    if (enc_image_decode_ex(b->data, b->len, &o, &im, NULL) || enc_preprocess(&im, c->pre, c->px) ||
        (c->run && enc_encode_pixels(c->run, c->px, 1, c->emb, NULL))) {
        fprintf(stderr, "bench_formats: %s: %s\n", b->path, umg_err_msg());
        exit(1);
    }
    enc_image_free(&im);
}

static double time_pipeline(pipe_ctx *c, const blob *b, int fast)
{
    double t0 = cpu_ms();
    pipeline(c, b, fast);
    return cpu_ms() - t0;
}

int main(int argc, char **argv)
{
    const char *model = NULL, *set = NULL;
    int reps = 5, threads = 2;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc)
            model = argv[++i];
        else if (!strcmp(argv[i], "--set") && i + 1 < argc)
            set = argv[++i];
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_formats --model DIR [--set DIR] [--reps N] [--threads T]\n");
            return 2;
        }
    }
    char def[1024];
    if (!set) {
        snprintf(def, sizeof def, "%s/.cache/umgdb-bench/photos", getenv("HOME") ? getenv("HOME") : ".");
        set = def;
    }
    if (!model || reps < 1)
        return fprintf(stderr, "bench_formats: --model DIR is required\n"), 2;
    char dir[1200];
    blob *large, *small, *heif;
    snprintf(dir, sizeof dir, "%s/large", set);
    int n_large = load_dir(dir, &large);
    snprintf(dir, sizeof dir, "%s/small", set);
    int n_small = load_dir(dir, &small);
    snprintf(dir, sizeof dir, "%s/heif", set);
    int n_heif = load_dir(dir, &heif);
    if (!n_large || !n_small)
        return fprintf(stderr, "bench_formats: no photos in %s (run bench/image/make_photo_set)\n", set), 1;

    enc_model *m;
    if (enc_model_open(model, &m))
        return fprintf(stderr, "bench_formats: %s\n", umg_err_msg()), 1;
    enc_set_threads(threads);
    enc_run *run;
    if (enc_run_create(m, 1, &run))
        return fprintf(stderr, "bench_formats: %s\n", umg_err_msg()), 1;
    const enc_config *cfg = enc_model_config(m);
    const int D = enc_model_dim(m), S = cfg->image_size;
    float *px = malloc(sizeof(float) * 3 * S * S), *e1 = malloc(sizeof(float) * D), *e2 = malloc(sizeof(float) * D);
    pipe_ctx enc = {enc_model_preproc(m), px, run, e1}, dec = {enc_model_preproc(m), px, NULL, NULL};
    printf("model %s (image %d, dim %d), encoder threads %d, %d reps; set %s\n", model, S, D, threads, reps, set);

    /* 1. cosine fast vs exact */
    printf("\n1. embedding cosine, fast vs exact decode (target >= 0.999)\n");
    double min_cos = 1;
    blob *all[2] = {large, small};
    int n_all[2] = {n_large, n_small};
    for (int s = 0; s < 2; s++)
        for (int i = 0; i < n_all[s]; i++) {
            enc_image im;
            enc_image_meta meta;
            enc_decode_opts o = {.fast_for = enc.pre};
            enc_image_decode_ex(all[s][i].data, all[s][i].len, &o, &im, &meta);
            enc.emb = e1;
            pipeline(&enc, &all[s][i], 0);
            enc.emb = e2;
            pipeline(&enc, &all[s][i], 1);
            enc_l2_normalize(e1, D);
            enc_l2_normalize(e2, D);
            double dot = 0;
            for (int k = 0; k < D; k++)
                dot += (double)e1[k] * e2[k];
            if (dot < min_cos)
                min_cos = dot;
            printf("   %-60s %5dx%-5d decoded %4dx%-4d cosine %.6f\n", strrchr(all[s][i].path, '/') + 1,
                   meta.full_width, meta.full_height, im.width, im.height, dot);
            enc_image_free(&im);
        }
    printf("   min cosine over %d photos: %.6f\n", n_large + n_small, min_cos);

    /* 2. decode + preprocess CPU: small photos, each large JPEG, djpeg -scale 1/8 */
    printf("\n2. decode + preprocess CPU (1 thread) of a large JPEG over a 640x427 one, vs djpeg -scale 1/8\n");
    char tiny[] = UMG_SOURCE_DIR "/tests/fixtures/images/exif_1.jpg";
    double *t = malloc(sizeof(double) * (size_t)(reps * (n_small > 1 ? n_small : 1) + 1));
    int k = 0;
    for (int r = 0; r < reps; r++)
        for (int i = 0; i < n_small; i++)
            t[k++] = time_pipeline(&dec, &small[i], 1);
    double t_small = median(t, k);
    for (int r = 0; r < reps; r++)
        t[r] = child_cpu_ms((char *[]){"djpeg", "-outfile", "/dev/null", tiny, NULL});
    double t_startup = median(t, reps);
    printf("   640x427 JPEGs (%d): %.2f ms (fast = exact at this size); djpeg start-up %.2f ms (subtracted)\n",
           n_small, t_small, t_startup);
    double worst = 0;
    for (int i = 0; i < n_large; i++) {
        double *tf = malloc(sizeof(double) * reps), *te = malloc(sizeof(double) * reps),
               *td = malloc(sizeof(double) * reps);
        for (int r = 0; r < reps; r++) {
            tf[r] = time_pipeline(&dec, &large[i], 1);
            td[r] = child_cpu_ms((char *[]){"djpeg", "-scale", "1/8", "-outfile", "/dev/null", large[i].path, NULL}) -
                    t_startup;
            te[r] = r < 2 ? time_pipeline(&dec, &large[i], 0) : te[0];
        }
        double f = median(tf, reps), dj = median(td, reps), ex = median(te, reps < 2 ? reps : 2);
        double ratio = (f - t_small) / dj;
        if (ratio > worst)
            worst = ratio;
        printf("   %-40s fast %7.2f ms  exact %7.2f ms  extra over small %7.2f ms  djpeg 1/8 %6.2f ms  ratio %.2f\n",
               strrchr(large[i].path, '/') + 1, f, ex, f - t_small, dj, ratio);
        free(tf), free(te), free(td);
    }
    printf("   worst ratio (target <= 1.25): %.2f\n", worst);

    /* 3. HEIC / AVIF against heif-convert */
    if (n_heif) {
        printf("\n3. HEIC/AVIF decode + preprocess CPU (all libheif threads) vs heif-convert FILE out.y4m\n");
        char y4m[] = "/tmp/bench_formats_XXXXXX.y4m";
        int fd = mkstemps(y4m, 4);
        close(fd);
        char tiny_heic[] = UMG_SOURCE_DIR "/tests/fixtures/images/fmt.heic";
        for (int r = 0; r < reps; r++)
            t[r] = child_cpu_ms((char *[]){"heif-convert", tiny_heic, y4m, NULL});
        double hc_startup = median(t, reps);
        printf("   heif-convert start-up (48x32 HEIC) %.2f ms (subtracted)\n", hc_startup);
        for (int i = 0; i < n_heif; i++) {
            double *to = malloc(sizeof(double) * reps), *th = malloc(sizeof(double) * reps);
            for (int r = 0; r < reps; r++) {
                to[r] = time_pipeline(&dec, &heif[i], 1);
                th[r] = child_cpu_ms((char *[]){"heif-convert", heif[i].path, y4m, NULL}) - hc_startup;
            }
            double o = median(to, reps), h = median(th, reps);
            printf("   %-40s ours %7.2f ms  heif-convert %7.2f ms  ratio %.2f (target <= 1.1)\n",
                   strrchr(heif[i].path, '/') + 1, o, h, o / h);
            free(to), free(th);
        }
        unlink(y4m);
    }

    /* 4. throughput with the encoder: 12 MP JPEG vs 640x427 */
    const blob *mp12 = NULL;
    for (int i = 0; i < n_large; i++)
        if (strstr(large[i].path, "12mp"))
            mp12 = &large[i];
    if (mp12) {
        printf("\n4. decode + preprocess + encode CPU per photo (encoder on %d threads)\n", threads);
        double *ts = malloc(sizeof(double) * reps), *tl = malloc(sizeof(double) * reps),
               *te = malloc(sizeof(double) * reps);
        enc.emb = e1;
        for (int r = 0; r < reps; r++) {
            ts[r] = time_pipeline(&enc, &small[r % n_small], 1);
            tl[r] = time_pipeline(&enc, mp12, 1);
            te[r] = time_pipeline(&enc, mp12, 0);
        }
        double s = median(ts, reps), l = median(tl, reps), x = median(te, reps);
        printf("   640x427 %.1f ms, 12 MP fast %.1f ms (exact %.1f ms): 12 MP throughput %.2fx of 640x427 "
               "(exact %.2fx; target >= 0.7)\n", s, l, x, s / l, s / x);
        free(ts), free(tl), free(te);
    }
    enc_run_close(run);
    enc_model_close(m);
    return 0;
}
