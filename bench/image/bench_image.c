/* bench_image - decode + CLIP preprocessing time per photo (median over files x reps),
 * split into decode and preprocess, for the 640x480 JPEGs of coco-mini by default,
 * then the same work in Pillow + numpy (bench/image/pillow_peer.py) as the peer.
 * Also the JPEG thumbnail ingest makes from the decoded pixels (enc_thumb.h);
 * --fast decodes as a fast-decoding ingest would (enc_decode_opts.fast_for the
 * fit-pad preprocessing: JPEGs DCT-shrunk), so the thumbnail is made from those
 * fewer pixels.
 *
 *   build/bench/image/bench_image [--reps N] [--all-sizes] [--no-peer] [--fast] [DIR]
 *
 * Files are read into memory first: the figures exclude disk I/O.  Single thread;
 * times are thread CPU time (both here and in the peer). */
#include "enc_image.h"
#include "enc_thumb.h"
#include "umg_error.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    char path[1024];
    void *data;
    size_t len;
} blob;

static double now_ms(void)
{
    struct timespec ts;
    /* Thread CPU time: the machine is shared, so wall time mostly measures the others. */
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, size_t n)
{
    qsort(v, n, sizeof *v, cmp_double);
    return n ? v[n / 2] : 0;
}

static int cmp_blob(const void *a, const void *b)
{
    return strcmp(((const blob *)a)->path, ((const blob *)b)->path);
}

int main(int argc, char **argv)
{
    const char *dir = UMG_SOURCE_DIR "/../shared/data/coco-mini/val2017";
    int reps = 5, all_sizes = 0, peer = 1, fast = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--all-sizes"))
            all_sizes = 1;
        else if (!strcmp(argv[i], "--no-peer"))
            peer = 0;
        else if (!strcmp(argv[i], "--fast"))
            fast = 1;
        else
            dir = argv[i];
    }
    DIR *d = opendir(dir);
    if (!d) {
        fprintf(stderr, "bench_image: cannot open %s\n", dir);
        return 1;
    }
    size_t cap = 64, n = 0;
    blob *files = malloc(cap * sizeof *files);
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        if (l < 5 || strcmp(e->d_name + l - 4, ".jpg"))
            continue;
        if (n == cap)
            files = realloc(files, (cap *= 2) * sizeof *files);
        snprintf(files[n].path, sizeof files[n].path, "%s/%s", dir, e->d_name);
        FILE *f = fopen(files[n].path, "rb");
        if (!f)
            continue;
        fseek(f, 0, SEEK_END);
        files[n].len = (size_t)ftell(f);
        fseek(f, 0, SEEK_SET);
        files[n].data = malloc(files[n].len);
        if (fread(files[n].data, 1, files[n].len, f) != files[n].len) {
            fclose(f);
            free(files[n].data);
            continue;
        }
        fclose(f);
        /* Keep only 640x480 photos unless asked otherwise. */
        enc_image im;
        if (enc_image_decode(files[n].data, files[n].len, ENC_IMAGE_MAX_PIXELS_DEFAULT, &im) != 0) {
            fprintf(stderr, "bench_image: %s: %s\n", files[n].path, umg_err_msg());
            free(files[n].data);
            continue;
        }
        int keep = all_sizes || (im.width == 640 && im.height == 480);
        enc_image_free(&im);
        if (!keep) {
            free(files[n].data);
            continue;
        }
        n++;
    }
    closedir(d);
    qsort(files, n, sizeof *files, cmp_blob);
    if (!n) {
        fprintf(stderr, "bench_image: no matching JPEGs in %s\n", dir);
        return 1;
    }

    enc_preproc p, pad;
    enc_preproc_default(&p, 224);
    enc_preproc_default(&pad, 224);
    pad.fit = ENC_FIT_PAD;
    enc_decode_opts dopt = {.fast_for = fast ? &pad : NULL};
    float *out = malloc(3 * 224 * 224 * sizeof(float));
    size_t runs = (size_t)reps * n;
    double *t_dec = malloc(runs * sizeof(double)), *t_pre = malloc(runs * sizeof(double)),
           *t_all = malloc(runs * sizeof(double)), *t_pad = malloc(runs * sizeof(double)),
           *t_thumb = malloc(runs * sizeof(double));
    double thumb_bytes = 0;
    size_t k = 0;
    for (int r = 0; r < reps; r++)
        for (size_t i = 0; i < n; i++, k++) {
            enc_image im;
            double t0 = now_ms();
            if (enc_image_decode_ex(files[i].data, files[i].len, &dopt, &im, NULL) != 0)
                return 1;
            double t1 = now_ms();
            p.fit = ENC_FIT_CROP;
            if (enc_preprocess(&im, &p, out) != 0)
                return 1;
            double t2 = now_ms();
            p.fit = ENC_FIT_PAD;
            if (enc_preprocess(&im, &p, out) != 0)
                return 1;
            double t3 = now_ms();
            uint8_t *jpeg;
            size_t jl;
            if (enc_thumb_make(&im, ENC_THUMB_LONG_SIDE, ENC_THUMB_QUALITY, &jpeg, &jl) != 0)
                return 1;
            t_thumb[k] = now_ms() - t3;
            thumb_bytes += (double)jl;
            free(jpeg);
            enc_image_free(&im);
            t_dec[k] = t1 - t0;
            t_pre[k] = t2 - t1;
            t_all[k] = t2 - t0;
            t_pad[k] = t3 - t2;
        }
    double ours = median(t_all, runs);
    printf("%zu JPEGs%s from %s, %d reps, 1 thread, CPU-time medians:\n", n, all_sizes ? "" : " (640x480)", dir, reps);
    printf("umgdb          decode%s %.2f ms + preprocess(crop) %.2f ms; decode+preprocess %.2f ms/image"
           "  (fit-pad preprocess %.2f ms; thumbnail %.2f ms, %.0f bytes)\n",
           fast ? " (fast)" : "", median(t_dec, runs), median(t_pre, runs), ours, median(t_pad, runs),
           median(t_thumb, runs), thumb_bytes / (double)runs);
    fflush(stdout);

    if (peer) {
        /* The peer prints its own median; run it on the same files. */
        size_t cmdlen = 256;
        for (size_t i = 0; i < n; i++)
            cmdlen += strlen(files[i].path) + 3;
        char *cmd = malloc(cmdlen);
        int off = snprintf(cmd, cmdlen, "/usr/bin/python3 %s/bench/image/pillow_peer.py %d", UMG_SOURCE_DIR, reps);
        for (size_t i = 0; i < n; i++)
            off += snprintf(cmd + off, cmdlen - off, " '%s'", files[i].path);
        int rc = system(cmd);
        if (rc != 0)
            fprintf(stderr, "bench_image: peer failed (needs python3-pil, python3-numpy)\n");
        free(cmd);
    }
    for (size_t i = 0; i < n; i++)
        free(files[i].data);
    free(files);
    free(out);
    free(t_dec);
    free(t_pre);
    free(t_all);
    free(t_pad);
    free(t_thumb);
    return 0;
}
