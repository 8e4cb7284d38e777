/* bench_dense.c - the dense feature variants (docs/regions.md, "Dense feature
 * variants"): their cost per image, and what they do to region retrieval on the
 * synthetic world.
 *
 *   bench_dense MODEL_DIR --cost [--sizes 224,320,448] [--repeats 15]
 *       Thread CPU time of one image through the vision tower with its patch
 *       tokens (batch 1, one thread, OpenBLAS single-threaded), per input size
 *       and dense mode, median of --repeats rounds (every configuration once
 *       per round) after a warm-up round; the peer measured in the same run is
 *       plain mode at the checkpoint's own size (ratios), and the embedding
 *       alone (no patches) is printed next to it.
 *
 *   bench_dense MODEL_DIR --world ANNOTATIONS.json [--sizes ...] [--out PREFIX] [--max-boxes 32]
 *       ANNOTATIONS.json from tools/synthworld/generate (photos next to it).
 *       Every photo is decoded, fitted with ENC_FIT_PAD at each input size,
 *       encoded in each dense mode; regions are pooled (enc_region_pool) over
 *       (a) each object's annotated box and (b) the photo's proposals
 *       (enc_propose, R = --max-boxes).  Printed per size and mode:
 *         gt_top1        the annotated box's vector ranks its own full phrase
 *                        ("small red circle") first among all 96;
 *         gt_top1_cs     ... its colour+shape phrase first among all 48;
 *         gt_rank        mean rank of the own full phrase (1 = first);
 *         prop_top1      the same as gt_top1 for the proposal with the best IoU
 *                        (>= 0.5) with the object's box (objects without one:
 *                        `covered` says how many have one);
 *       and with --out, PREFIX-<size>-<mode>.json: text-to-region results over
 *       all proposals of all photos, in tools/umgtrain/meaning.py's format
 *       (hits best first, a hit overlapping a better hit of the same photo by
 *       IoU > 0.5 suppressed, 50 hits), for `meaning.py score`.
 * One JSON object per line on stdout. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "../common.h"
#include "enc.h"
#include "enc_regions.h"
#include "umg_error.h"

#define MAX_SIZES 8
#define N_MODES 3

static const char *const SIZES_W[] = {"small", "large"};
static const char *const COLOURS[] = {"red", "green", "blue", "yellow", "purple", "orange", "white", "black"};
static const char *const SHAPES[] = {"circle", "square", "triangle", "star", "ring", "cross"};
#define N_SZ 2
#define N_COL 8
#define N_SH 6
#define N_FULL (N_SZ * N_COL * N_SH)
#define N_CS (N_COL * N_SH)

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench_dense: %s: %s: %s\n", what, umg_error_name(rc), umg_err_msg());
    exit(1);
}

static int parse_sizes(const char *s, int *sizes)
{
    int n = 0;
    while (*s && n < MAX_SIZES) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v <= 0)
            break;
        sizes[n++] = (int)v;
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

/* ---- cost ------------------------------------------------------------------ */

/* Every (size, mode) once per round, rounds repeated: load changes on this
 * shared machine then hit every configuration alike, which keeps the ratios
 * honest even when the absolute times drift. */
static void run_cost(const enc_model *m, const int *sizes, int n_sizes, int repeats)
{
    int D = enc_model_dim(m), native = enc_model_config(m)->image_size;
    enum { N_CFG = N_MODES + 1 }; /* embedding only, then the modes */
    enc_run *runs[MAX_SIZES];
    float *px[MAX_SIZES], *patches[MAX_SIZES], emb[1024];
    double *t = malloc(sizeof(double) * (size_t)repeats * n_sizes * N_CFG);
    for (int si = 0; si < n_sizes; si++) {
        int S = sizes[si], rc = enc_run_create_ex(m, 1, S, &runs[si]);
        if (rc)
            die("enc_run_create_ex", rc);
        int G = enc_run_grid(runs[si]);
        px[si] = malloc(sizeof(float) * 3 * S * S);
        patches[si] = malloc(sizeof(float) * G * G * D);
        uint64_t seed = 12345;
        for (int i = 0; i < 3 * S * S; i++) { /* content does not change the cost; keep it finite */
            seed = seed * 6364136223846793005ull + 1442695040888963407ull;
            px[si][i] = (float)((seed >> 40) & 0xffff) / 65536.0f * 4.0f - 2.0f;
        }
    }
    for (int k = -1; k < repeats; k++) /* round -1: warm-up */
        for (int si = 0; si < n_sizes; si++)
            for (int c = 0; c < N_CFG; c++) {
                enc_run_set_dense_mode(runs[si], c == 0 ? ENC_DENSE_PLAIN : c - 1);
                double t0 = bench_thread_cpu();
                int rc = enc_encode_pixels(runs[si], px[si], 1, emb, c == 0 ? NULL : patches[si]);
                if (rc)
                    die("enc_encode_pixels", rc);
                if (k >= 0)
                    t[((size_t)si * N_CFG + c) * repeats + k] = (bench_thread_cpu() - t0) * 1e3;
            }
    double base = 0;
    for (int si = 0; si < n_sizes; si++)
        if (sizes[si] == native)
            base = bench_median(t + ((size_t)si * N_CFG + 1) * repeats, repeats);
    for (int si = 0; si < n_sizes; si++)
        for (int c = 0; c < N_CFG; c++) {
            double *v = t + ((size_t)si * N_CFG + c) * repeats, med = bench_median(v, repeats);
            printf("{\"cost\":true,\"input_size\":%d,\"grid\":%d,\"mode\":\"%s\",\"cpu_ms_median\":%.2f,"
                   "\"cpu_ms_min\":%.2f,\"repeats\":%d",
                   sizes[si], enc_run_grid(runs[si]), c == 0 ? "embedding-only" : enc_dense_mode_name(c - 1), med,
                   v[0], repeats);
            if (base > 0)
                printf(",\"vs_plain_native\":%.2f", med / base);
            printf("}\n");
        }
    for (int si = 0; si < n_sizes; si++) {
        free(px[si]);
        free(patches[si]);
        enc_run_close(runs[si]);
    }
    free(t);
}

/* ---- region retrieval on the synthetic world ---------------------------------- */

typedef struct hit {
    float score;
    int photo, box;
} hit;

static int cmp_hit(const void *a, const void *b)
{
    const hit *x = a, *y = b;
    if (x->score != y->score)
        return x->score < y->score ? 1 : -1;
    if (x->photo != y->photo)
        return x->photo - y->photo;
    return x->box - y->box;
}

typedef struct photo {
    const char *file;
    enc_image img;
    int n_obj;
    enc_box obj[8];
    int full[8], cs[8]; /* phrase indices of the objects */
    int n_prop;
    enc_box prop[64];
} photo;

static float dot(const float *a, const float *b, int n)
{
    float s = 0;
    for (int i = 0; i < n; i++)
        s += a[i] * b[i];
    return s;
}

static int phrase_index(const char *const *list, int n, const char *v)
{
    for (int i = 0; i < n; i++)
        if (!strcmp(list[i], v))
            return i;
    return -1;
}

static void encode_phrase(enc_run *r, const char *text, float *out, int D)
{
    int rc = enc_encode_text(r, text, strlen(text), out, NULL, NULL);
    if (rc)
        die(text, rc);
    enc_l2_normalize(out, D);
}

/* 1-based rank of own among the n phrase vectors for region vector v. */
static int rank_of(const float *v, const float *phr, int n, int own, int D)
{
    float s = dot(v, phr + (size_t)own * D, D);
    int rank = 1;
    for (int i = 0; i < n; i++)
        if (i != own && dot(v, phr + (size_t)i * D, D) > s)
            rank++;
    return rank;
}

static void run_world(const enc_model *m, const char *ann_path, const int *sizes, int n_sizes, const char *out,
                      int max_boxes)
{
    json_error_t err;
    json_t *ann = json_load_file(ann_path, 0, &err);
    if (!ann) {
        fprintf(stderr, "bench_dense: %s: %s\n", ann_path, err.text);
        exit(1);
    }
    char dir[1024];
    snprintf(dir, sizeof dir, "%s", ann_path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *slash = 0;
    else
        snprintf(dir, sizeof dir, ".");
    json_t *images = json_object_get(ann, "images");
    int n = (int)json_array_size(images), D = enc_model_dim(m), P = enc_model_config(m)->patch_size;
    photo *ph = calloc((size_t)n, sizeof *ph);
    enc_propose_opts po;
    enc_propose_opts_default(&po);
    po.max_boxes = max_boxes;
    int n_obj_total = 0;
    for (int i = 0; i < n; i++) {
        json_t *im = json_array_get(images, i);
        ph[i].file = json_string_value(json_object_get(im, "file"));
        char path[2048];
        snprintf(path, sizeof path, "%s/%s", dir, ph[i].file);
        int rc = enc_image_load(path, ENC_IMAGE_MAX_PIXELS_DEFAULT, &ph[i].img);
        if (rc)
            die(path, rc);
        json_t *objs = json_object_get(im, "objects");
        for (size_t k = 0; k < json_array_size(objs) && k < 8; k++) {
            json_t *o = json_array_get(objs, k), *b = json_object_get(o, "box");
            enc_box *e = &ph[i].obj[ph[i].n_obj];
            e->x = (float)json_number_value(json_array_get(b, 0));
            e->y = (float)json_number_value(json_array_get(b, 1));
            e->w = (float)json_number_value(json_array_get(b, 2));
            e->h = (float)json_number_value(json_array_get(b, 3));
            int sz = phrase_index(SIZES_W, N_SZ, json_string_value(json_object_get(o, "size")));
            int c = phrase_index(COLOURS, N_COL, json_string_value(json_object_get(o, "colour")));
            int sh = phrase_index(SHAPES, N_SH, json_string_value(json_object_get(o, "shape")));
            if (sz < 0 || c < 0 || sh < 0) {
                fprintf(stderr, "bench_dense: %s: object %zu outside the world's vocabulary\n", ph[i].file, k);
                exit(1);
            }
            ph[i].full[ph[i].n_obj] = (sz * N_COL + c) * N_SH + sh;
            ph[i].cs[ph[i].n_obj] = c * N_SH + sh;
            ph[i].n_obj++;
        }
        n_obj_total += ph[i].n_obj;
        int rc2 = enc_propose(&ph[i].img, &po, ph[i].prop, 64, &ph[i].n_prop);
        if (rc2)
            die("enc_propose", rc2);
    }

    /* phrase vectors */
    enc_run *tr;
    int rc = enc_run_create(m, 1, &tr);
    if (rc)
        die("enc_run_create", rc);
    float *full = malloc(sizeof(float) * N_FULL * D), *cs = malloc(sizeof(float) * N_CS * D);
    char text[96];
    for (int s = 0; s < N_SZ; s++)
        for (int c = 0; c < N_COL; c++)
            for (int h = 0; h < N_SH; h++) {
                snprintf(text, sizeof text, "%s %s %s", SIZES_W[s], COLOURS[c], SHAPES[h]);
                encode_phrase(tr, text, full + (size_t)((s * N_COL + c) * N_SH + h) * D, D);
            }
    for (int c = 0; c < N_COL; c++)
        for (int h = 0; h < N_SH; h++) {
            snprintf(text, sizeof text, "%s %s", COLOURS[c], SHAPES[h]);
            encode_phrase(tr, text, cs + (size_t)(c * N_SH + h) * D, D);
        }

    float *props = malloc(sizeof(float) * (size_t)n * 64 * D);
    hit *hits = malloc(sizeof(hit) * (size_t)n * 64);
    for (int si = 0; si < n_sizes; si++) {
        int S = sizes[si];
        enc_run *r;
        if ((rc = enc_run_create_ex(m, 1, S, &r)))
            die("enc_run_create_ex", rc);
        int G = enc_run_grid(r);
        enc_preproc pp;
        enc_model_preproc_at(m, S, &pp);
        pp.fit = ENC_FIT_PAD;
        float *px = malloc(sizeof(float) * 3 * S * S), emb[1024], *patches = malloc(sizeof(float) * G * G * D);
        float *patches_all[N_MODES];
        for (int k = 0; k < N_MODES; k++)
            patches_all[k] = malloc(sizeof(float) * (size_t)n * G * G * D);
        for (int i = 0; i < n; i++) {
            if ((rc = enc_preprocess(&ph[i].img, &pp, px)))
                die("enc_preprocess", rc);
            for (int k = 0; k < N_MODES; k++) {
                enc_run_set_dense_mode(r, k);
                if ((rc = enc_encode_pixels(r, px, 1, emb, patches_all[k] + (size_t)i * G * G * D)))
                    die("enc_encode_pixels", rc);
            }
        }
        for (int k = 0; k < N_MODES; k++) {
            int top1 = 0, top1_cs = 0, covered = 0, prop_top1 = 0;
            double rank_sum = 0;
            int n_hits = 0;
            float v[1024];
            for (int i = 0; i < n; i++) {
                enc_preproc_geom g;
                enc_preproc_geometry(&pp, ph[i].img.width, ph[i].img.height, &g);
                const float *pt = patches_all[k] + (size_t)i * G * G * D;
                for (int o = 0; o < ph[i].n_obj; o++) {
                    float box[4] = {ph[i].obj[o].x, ph[i].obj[o].y, ph[i].obj[o].w, ph[i].obj[o].h};
                    if (enc_region_pool(pt, G, D, P, &g, box, v))
                        continue;
                    int rk = rank_of(v, full, N_FULL, ph[i].full[o], D);
                    top1 += rk == 1;
                    rank_sum += rk;
                    top1_cs += rank_of(v, cs, N_CS, ph[i].cs[o], D) == 1;
                }
                for (int b = 0; b < ph[i].n_prop; b++) {
                    float box[4] = {ph[i].prop[b].x, ph[i].prop[b].y, ph[i].prop[b].w, ph[i].prop[b].h};
                    float *pv = props + ((size_t)i * 64 + b) * D;
                    if (enc_region_pool(pt, G, D, P, &g, box, pv))
                        memset(pv, 0, sizeof(float) * D);
                }
                for (int o = 0; o < ph[i].n_obj; o++) {
                    int best = -1;
                    float best_iou = 0.5f;
                    for (int b = 0; b < ph[i].n_prop; b++) {
                        float iou = enc_box_iou(&ph[i].prop[b], &ph[i].obj[o]);
                        if (iou >= best_iou)
                            best_iou = iou, best = b;
                    }
                    if (best < 0)
                        continue;
                    covered++;
                    prop_top1 += rank_of(props + ((size_t)i * 64 + best) * D, full, N_FULL, ph[i].full[o], D) == 1;
                }
            }
            printf("{\"world\":\"%s\",\"photos\":%d,\"objects\":%d,\"input_size\":%d,\"grid\":%d,\"mode\":\"%s\","
                   "\"gt_top1\":%.3f,\"gt_top1_cs\":%.3f,\"gt_rank\":%.2f,\"covered\":%d,\"prop_top1\":%.3f}\n",
                   ann_path, n, n_obj_total, S, G, enc_dense_mode_name(k), top1 / (double)n_obj_total,
                   top1_cs / (double)n_obj_total, rank_sum / n_obj_total, covered,
                   covered ? prop_top1 / (double)covered : 0.0);
            fflush(stdout);
            if (!out)
                continue;
            /* text-to-region results for meaning.py: every full phrase and every
             * colour+shape phrase present in the world */
            char path[2048];
            snprintf(path, sizeof path, "%s-%d-%s.json", out, S, enc_dense_mode_name(k));
            json_t *results = json_array();
            int present_full[N_FULL] = {0}, present_cs[N_CS] = {0};
            for (int i = 0; i < n; i++)
                for (int o = 0; o < ph[i].n_obj; o++)
                    present_full[ph[i].full[o]] = present_cs[ph[i].cs[o]] = 1;
            for (int q = 0; q < N_FULL + N_CS; q++) {
                int is_full = q < N_FULL, idx = is_full ? q : q - N_FULL;
                if (!(is_full ? present_full[idx] : present_cs[idx]))
                    continue;
                const float *qv = is_full ? full + (size_t)idx * D : cs + (size_t)idx * D;
                n_hits = 0;
                for (int i = 0; i < n; i++)
                    for (int b = 0; b < ph[i].n_prop; b++)
                        hits[n_hits++] = (hit){dot(props + ((size_t)i * 64 + b) * D, qv, D), i, b};
                qsort(hits, (size_t)n_hits, sizeof *hits, cmp_hit);
                json_t *arr = json_array();
                int kept_i[50], kept_b[50], kept = 0;
                for (int h = 0; h < n_hits && kept < 50; h++) {
                    int dup = 0;
                    for (int j = 0; j < kept && !dup; j++)
                        dup = kept_i[j] == hits[h].photo &&
                              enc_box_iou(&ph[hits[h].photo].prop[hits[h].box], &ph[kept_i[j]].prop[kept_b[j]]) > 0.5f;
                    if (dup)
                        continue;
                    kept_i[kept] = hits[h].photo, kept_b[kept] = hits[h].box, kept++;
                    const enc_box *bx = &ph[hits[h].photo].prop[hits[h].box];
                    json_array_append_new(arr, json_pack("{s:s,s:f,s:[f,f,f,f]}", "path", ph[hits[h].photo].file,
                                                         "score", (double)hits[h].score, "box", (double)bx->x,
                                                         (double)bx->y, (double)bx->w, (double)bx->h));
                }
                if (is_full)
                    snprintf(text, sizeof text, "%s %s %s", SIZES_W[idx / (N_COL * N_SH)],
                             COLOURS[idx / N_SH % N_COL], SHAPES[idx % N_SH]);
                else
                    snprintf(text, sizeof text, "%s %s", COLOURS[idx / N_SH], SHAPES[idx % N_SH]);
                json_array_append_new(results, json_pack("{s:s,s:s,s:o}", "text", text, "granularity", "region",
                                                         "hits", arr));
            }
            if (json_dump_file(results, path, JSON_COMPACT))
                fprintf(stderr, "bench_dense: cannot write %s\n", path);
            json_decref(results);
        }
        for (int k = 0; k < N_MODES; k++)
            free(patches_all[k]);
        free(px);
        free(patches);
        enc_run_close(r);
    }
    free(props);
    free(hits);
    free(full);
    free(cs);
    enc_run_close(tr);
    for (int i = 0; i < n; i++)
        enc_image_free(&ph[i].img);
    free(ph);
    json_decref(ann);
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bench_dense MODEL_DIR --cost | --world ANNOTATIONS.json [--sizes A,B,..] "
                        "[--repeats N] [--out PREFIX] [--max-boxes R]\n");
        return 2;
    }
    const char *model_dir = argv[1], *world = NULL, *out = NULL;
    int cost = 0, repeats = 15, n_sizes = 0, max_boxes = 32, sizes[MAX_SIZES];
    for (int i = 2; i < argc; i++) {
        if (!strcmp(argv[i], "--cost"))
            cost = 1;
        else if (!strcmp(argv[i], "--world") && i + 1 < argc)
            world = argv[++i];
        else if (!strcmp(argv[i], "--out") && i + 1 < argc)
            out = argv[++i];
        else if (!strcmp(argv[i], "--sizes") && i + 1 < argc)
            n_sizes = parse_sizes(argv[++i], sizes);
        else if (!strcmp(argv[i], "--repeats") && i + 1 < argc)
            repeats = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--max-boxes") && i + 1 < argc)
            max_boxes = atoi(argv[++i]);
        else {
            fprintf(stderr, "bench_dense: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    if (repeats < 1 || max_boxes < 1 || max_boxes > 64) {
        fprintf(stderr, "bench_dense: --repeats >= 1, --max-boxes in [1, 64]\n");
        return 2;
    }
    enc_set_threads(1);
    enc_model *m;
    int rc = enc_model_open(model_dir, &m);
    if (rc)
        die(model_dir, rc);
    if (!n_sizes) { /* the checkpoint's size, x10/7 and x2 rounded to patches */
        int S = enc_model_config(m)->image_size, P = enc_model_config(m)->patch_size;
        sizes[0] = S;
        sizes[1] = (S * 10 / 7 + P / 2) / P * P;
        sizes[2] = 2 * S;
        n_sizes = 3;
    }
    if (cost)
        run_cost(m, sizes, n_sizes, repeats);
    if (world)
        run_world(m, world, sizes, n_sizes, out, max_boxes);
    enc_model_close(m);
    return 0;
}
