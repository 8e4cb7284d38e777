/* enc_regions.c - box geometry (IoU, NMS, box <-> patch grid) and dense region
 * pooling.  The proposals themselves are in enc_proposals.c. */
#include "enc_regions.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "umg_error.h"

const char *enc_box_method_name(int method)
{
    switch (method) {
    case ENC_BOX_WINDOW: return "window";
    case ENC_BOX_SEGMENTS: return "segments";
    default: return "unknown";
    }
}

float enc_box_iou(const enc_box *a, const enc_box *b)
{
    if (!(a->w > 0 && a->h > 0 && b->w > 0 && b->h > 0))
        return 0.0f;
    float ix = fminf(a->x + a->w, b->x + b->w) - fmaxf(a->x, b->x);
    float iy = fminf(a->y + a->h, b->y + b->h) - fmaxf(a->y, b->y);
    if (ix <= 0 || iy <= 0)
        return 0.0f;
    float inter = ix * iy;
    return inter / (a->w * a->h + b->w * b->h - inter);
}

/* qsort is not stable: sort an index array with the index as the tie-break so
 * that equal scores keep their input order on every libc. */
typedef struct {
    float score;
    int idx;
} score_idx;

static int cmp_score_desc(const void *pa, const void *pb)
{
    const score_idx *a = pa, *b = pb;
    if (a->score > b->score) return -1;
    if (a->score < b->score) return 1;
    return (a->idx > b->idx) - (a->idx < b->idx);
}

int enc_box_nms(enc_box *boxes, int n, float iou, int max_keep)
{
    if (n < 0 || (n > 0 && !boxes))
        return umg_err_set(UMG_EINVAL, "enc_box_nms: bad arguments");
    if (n == 0 || max_keep <= 0)
        return 0;
    score_idx *order = malloc((size_t)n * sizeof *order);
    enc_box *sorted = malloc((size_t)n * sizeof *sorted);
    if (!order || !sorted) {
        free(order);
        free(sorted);
        return umg_err_set(UMG_ENOMEM, "enc_box_nms: %d boxes", n);
    }
    for (int i = 0; i < n; i++) {
        /* NaN scores rank last instead of breaking the comparison. */
        order[i].score = isnan(boxes[i].score) ? -INFINITY : boxes[i].score;
        order[i].idx = i;
    }
    qsort(order, (size_t)n, sizeof *order, cmp_score_desc);
    for (int i = 0; i < n; i++)
        sorted[i] = boxes[order[i].idx];
    int kept = 0;
    for (int i = 0; i < n && kept < max_keep; i++) {
        int ok = 1;
        for (int k = 0; k < kept; k++) {
            if (enc_box_iou(&sorted[i], &boxes[k]) > iou) {
                ok = 0;
                break;
            }
        }
        if (ok)
            boxes[kept++] = sorted[i];
    }
    free(order);
    free(sorted);
    return kept;
}

static double clampd(double v, double lo, double hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

/* The grid rectangle in double precision: the one place that defines it, for
 * both enc_box_to_grid and the pooling. */
static void box_to_grid_d(const enc_preproc_geom *g, int patch_size, const float box[4], double r[4])
{
    double x0 = (double)box[0] * g->scale_x + g->off_x;
    double x1 = ((double)box[0] + box[2]) * g->scale_x + g->off_x;
    double y0 = (double)box[1] * g->scale_y + g->off_y;
    double y1 = ((double)box[1] + box[3]) * g->scale_y + g->off_y;
    r[0] = clampd(x0, 0, g->input_w) / patch_size;
    r[1] = clampd(y0, 0, g->input_h) / patch_size;
    r[2] = clampd(x1, 0, g->input_w) / patch_size;
    r[3] = clampd(y1, 0, g->input_h) / patch_size;
}

void enc_box_to_grid(const enc_preproc_geom *g, int patch_size, const float box[4], float grid[4])
{
    double r[4];
    box_to_grid_d(g, patch_size, box, r);
    for (int i = 0; i < 4; i++)
        grid[i] = (float)r[i];
}

void enc_box_from_grid(const enc_preproc_geom *g, int patch_size, const float grid[4], int img_w,
                       int img_h, float box[4])
{
    double x0 = ((double)grid[0] * patch_size - g->off_x) / g->scale_x;
    double y0 = ((double)grid[1] * patch_size - g->off_y) / g->scale_y;
    double x1 = ((double)grid[2] * patch_size - g->off_x) / g->scale_x;
    double y1 = ((double)grid[3] * patch_size - g->off_y) / g->scale_y;
    x0 = clampd(x0, 0, img_w);
    x1 = clampd(x1, 0, img_w);
    y0 = clampd(y0, 0, img_h);
    y1 = clampd(y1, 0, img_h);
    box[0] = (float)x0;
    box[1] = (float)y0;
    box[2] = (float)(x1 > x0 ? x1 - x0 : 0);
    box[3] = (float)(y1 > y0 ? y1 - y0 : 0);
}

static double overlap(double a0, double a1, double b0, double b1)
{
    double v = fmin(a1, b1) - fmax(a0, b0);
    return v > 0 ? v : 0;
}

int enc_region_pool(const float *patches, int grid, int dim, int patch_size,
                    const enc_preproc_geom *geom, const float box[4], float *out)
{
    if (!patches || !geom || !box || !out || grid <= 0 || dim <= 0 || patch_size <= 0 ||
        grid > 4096 || geom->input_w <= 0 || geom->input_h <= 0 || !(geom->scale_x > 0) ||
        !(geom->scale_y > 0))
        return umg_err_set(UMG_EINVAL, "enc_region_pool: bad arguments");
    for (int i = 0; i < 4; i++)
        if (!isfinite(box[i]))
            return umg_err_set(UMG_EINVAL, "enc_region_pool: box has a non-finite coordinate");
    double r[4];
    box_to_grid_d(geom, patch_size, box, r);

    double *acc = calloc((size_t)dim, sizeof *acc);
    if (!acc)
        return umg_err_set(UMG_ENOMEM, "enc_region_pool: dim %d", dim);
    double wsum = 0;
    for (int i = 0; i < grid; i++) {
        double wy = overlap(r[1], r[3], i, i + 1);
        if (wy <= 0)
            continue;
        for (int j = 0; j < grid; j++) {
            double wx = overlap(r[0], r[2], j, j + 1);
            if (wx <= 0)
                continue;
            double w = wx * wy;
            const float *t = patches + ((size_t)i * grid + j) * dim;
            double nn = 0;
            for (int d = 0; d < dim; d++)
                nn += (double)t[d] * t[d];
            /* A zero token contributes its weight but no direction, as in the twin. */
            double s = nn > 0 ? w / sqrt(nn) : 0;
            for (int d = 0; d < dim; d++)
                acc[d] += s * t[d];
            wsum += w;
        }
    }
    if (!(wsum > 0)) {
        free(acc);
        return umg_err_set(UMG_EINVAL,
                           "enc_region_pool: box [%g,%g,%g,%g] does not overlap the patch grid",
                           box[0], box[1], box[2], box[3]);
    }
    double nn = 0;
    for (int d = 0; d < dim; d++) {
        acc[d] /= wsum;
        nn += acc[d] * acc[d];
    }
    double inv = nn > 0 ? 1.0 / sqrt(nn) : 1.0;
    for (int d = 0; d < dim; d++)
        out[d] = (float)(acc[d] * inv);
    free(acc);
    return 0;
}
