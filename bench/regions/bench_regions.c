/* bench_regions - region proposals on coco-mini: time per photo on one thread
 * (decoding excluded; median and p95 of wall and thread CPU time) and recall of
 * the annotated boxes at IoU 0.5 / 0.7, all objects and area >= 32x32, for
 * R = 16, 32, 64; multi-scale grid windows (1x1 .. nxn tilings) are measured in
 * the same run as the peer.
 *   bench_regions [coco-mini dir]      (default: tests/fixtures/coco-mini)
 * Refitting the proposal score: see fit_weights.py. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "enc_image.h"
#include "enc_regions.h"
#include "umg_error.h"

#define MAX_GT 128

typedef struct photo {
    char path[1024];
    enc_box gt[MAX_GT];
    int ngt;
    int val; /* val2017 (held out from fitting the proposal score) */
} photo;

static int load_split(const char *dir, const char *split, photo **ph, int *n, int *cap)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/annotations/instances_%s2017.json", dir, split);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root) {
        fprintf(stderr, "%s: %s\n", path, jerr.text);
        return -1;
    }
    json_t *images = json_object_get(root, "images"), *anns = json_object_get(root, "annotations");
    size_t i, j;
    json_t *im, *a;
    json_array_foreach(images, i, im) {
        json_int_t id = json_integer_value(json_object_get(im, "id"));
        photo p;
        p.ngt = 0;
        p.val = strcmp(split, "val") == 0;
        json_array_foreach(anns, j, a) {
            if (json_integer_value(json_object_get(a, "image_id")) != id ||
                json_integer_value(json_object_get(a, "iscrowd")) || p.ngt >= MAX_GT)
                continue;
            json_t *bb = json_object_get(a, "bbox");
            enc_box b = {(float)json_number_value(json_array_get(bb, 0)),
                         (float)json_number_value(json_array_get(bb, 1)),
                         (float)json_number_value(json_array_get(bb, 2)),
                         (float)json_number_value(json_array_get(bb, 3)), 0, 0};
            p.gt[p.ngt++] = b;
        }
        if (p.ngt == 0)
            continue;
        snprintf(p.path, sizeof p.path, "%s/%s2017/%s", dir, split,
                 json_string_value(json_object_get(im, "file_name")));
        if (*n == *cap) {
            *cap = *cap ? *cap * 2 : 64;
            *ph = realloc(*ph, (size_t)*cap * sizeof **ph);
            if (!*ph)
                return -1;
        }
        (*ph)[(*n)++] = p;
    }
    json_decref(root);
    return 0;
}

static double now(clockid_t c)
{
    struct timespec t;
    clock_gettime(c, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Tilings 1x1, 2x2, ..., until max_n windows: the grid baseline. */
static int grid_windows(int W, int H, int max_n, enc_box *out)
{
    int n = 0;
    for (int k = 1; n + k * k <= max_n; k++)
        for (int i = 0; i < k; i++)
            for (int j = 0; j < k; j++) {
                enc_box b = {(float)W * j / k, (float)H * i / k, (float)W / k, (float)H / k, 0, 0};
                out[n++] = b;
            }
    return n;
}

typedef struct tally {
    double hit[2][2]; /* [iou .5/.7][all/big] */
    double tot[2];
    int boxes;
} tally;

static void score(const photo *p, const enc_box *b, int n, tally *t)
{
    t->boxes += n;
    for (int g = 0; g < p->ngt; g++) {
        float best = 0;
        for (int k = 0; k < n; k++)
            best = fmaxf(best, enc_box_iou(&p->gt[g], &b[k]));
        int big = p->gt[g].w * p->gt[g].h >= 1024.0f;
        t->tot[0]++;
        t->tot[1] += big;
        for (int th = 0; th < 2; th++)
            if (best >= (th ? 0.7f : 0.5f)) {
                t->hit[th][0]++;
                t->hit[th][1] += big;
            }
    }
}

static void print_row(const char *name, int np, const tally *t)
{
    printf("| %-22s | %5.1f | %.3f | %.3f | %.3f | %.3f |\n", name, (double)t->boxes / np,
           t->hit[0][0] / t->tot[0], t->hit[1][0] / t->tot[0], t->hit[0][1] / t->tot[1],
           t->hit[1][1] / t->tot[1]);
}

int main(int argc, char **argv)
{
    const char *dir = argc > 1 ? argv[1] : UMG_FIXTURES_DIR "/coco-mini";
    photo *ph = NULL;
    int np = 0, cap = 0;
    if (load_split(dir, "train", &ph, &np, &cap) || load_split(dir, "val", &ph, &np, &cap) || np == 0) {
        fprintf(stderr, "bench_regions: cannot read %s\n", dir);
        return 1;
    }
    static const int Rs[3] = {16, 32, 64};
    tally prop[3], grid[2], by_split[2][3];
    memset(prop, 0, sizeof prop);
    memset(by_split, 0, sizeof by_split);
    memset(grid, 0, sizeof grid);
    double *wall = malloc((size_t)np * sizeof *wall), *cpu = malloc((size_t)np * sizeof *cpu);
    enc_box out[256];
    int grid_n[2] = {30, 70};
    /* bench_regions_tune (enc_proposals.c built with ENC_PROPOSALS_TUNING) with
     * P_DUMP=FILE: write every candidate's box and features for fit_weights.py. */
    const char *dump = getenv("P_DUMP");
    for (int i = 0; i < np; i++) {
        enc_image img;
        if (enc_image_load(ph[i].path, ENC_IMAGE_MAX_PIXELS_DEFAULT, &img)) {
            fprintf(stderr, "%s: %s\n", ph[i].path, umg_err_msg());
            return 1;
        }
        if (dump) {
            FILE *f = fopen(dump, "a");
            if (!f)
                return 1;
            fprintf(f, "I %s\n", ph[i].path);
            fclose(f);
            int n = 0;
            if (enc_propose(&img, NULL, out, 1, &n))
                return 1;
            enc_image_free(&img);
            continue;
        }
        for (int r = 0; r < 3; r++) {
            enc_propose_opts o;
            enc_propose_opts_default(&o);
            o.max_boxes = Rs[r];
            int n = 0;
            double w0 = now(CLOCK_MONOTONIC), c0 = now(CLOCK_THREAD_CPUTIME_ID);
            if (enc_propose(&img, &o, out, 256, &n)) {
                fprintf(stderr, "%s: %s\n", ph[i].path, umg_err_msg());
                return 1;
            }
            if (Rs[r] == 32) {
                wall[i] = now(CLOCK_MONOTONIC) - w0;
                cpu[i] = now(CLOCK_THREAD_CPUTIME_ID) - c0;
            }
            score(&ph[i], out, n, &prop[r]);
            score(&ph[i], out, n, &by_split[ph[i].val][r]);
        }
        for (int g = 0; g < 2; g++) {
            int n = grid_windows(img.width, img.height, grid_n[g], out);
            score(&ph[i], out, n, &grid[g]);
        }
        enc_image_free(&img);
    }
    if (dump) {
        free(wall);
        free(cpu);
        free(ph);
        return 0;
    }
    qsort(wall, (size_t)np, sizeof *wall, cmp_double);
    qsort(cpu, (size_t)np, sizeof *cpu, cmp_double);
    int p95 = (int)ceil(0.95 * np) - 1;
    printf("coco-mini: %d photos with boxes (%s)\n", np, dir);
    printf("enc_propose R=32, one thread, decoding excluded: wall median %.1f ms, p95 %.1f ms; "
           "thread CPU median %.1f ms, p95 %.1f ms\n\n",
           wall[np / 2] * 1e3, wall[p95] * 1e3, cpu[np / 2] * 1e3, cpu[p95] * 1e3);
    printf("recall of annotated boxes (%.0f objects, %.0f of area >= 32x32; crowds excluded)\n\n",
           prop[0].tot[0], prop[0].tot[1]);
    printf("| boxes                  | per photo | all IoU.5 | all IoU.7 | >=32x32 IoU.5 | >=32x32 IoU.7 |\n");
    printf("|---|---|---|---|---|---|\n");
    for (int r = 0; r < 3; r++) {
        char name[64];
        snprintf(name, sizeof name, "proposals R=%d", Rs[r]);
        print_row(name, np, &prop[r]);
    }
    for (int g = 0; g < 2; g++) {
        char name[64];
        snprintf(name, sizeof name, "grid windows <= %d", grid_n[g]);
        print_row(name, np, &grid[g]);
    }
    printf("\nby split, boxes >= 32x32, IoU 0.5 (the score is fitted on train2017; val2017 is held out)\n\n");
    printf("| split | R=16 | R=32 | R=64 |\n|---|---|---|---|\n");
    for (int sp = 0; sp < 2; sp++)
        printf("| %s | %.3f | %.3f | %.3f |\n", sp ? "val2017" : "train2017",
               by_split[sp][0].hit[0][1] / by_split[sp][0].tot[1], by_split[sp][1].hit[0][1] / by_split[sp][1].tot[1],
               by_split[sp][2].hit[0][1] / by_split[sp][2].tot[1]);
    free(wall);
    free(cpu);
    free(ph);
    return 0;
}
