/* enc_regions.h - class-agnostic region proposals and dense region pooling
 * (issue 5; design, measured cost and recall in docs/regions.md).
 *
 * Boxes are [x, y, w, h] in pixels of the decoded enc_image, i.e. after its
 * EXIF orientation was applied: the coordinates a user sees.
 *
 * Proposals: enc_propose() segments a downscaled copy of the photo several
 * times (Felzenszwalb-Huttenlocher graph segmentation), groups the segments
 * hierarchically (selective search: colour, texture, size and fill
 * similarities), scores every box of every hierarchy, removes near duplicates
 * (NMS) and keeps the R best, topped up with a few coarse context windows.
 * Deterministic: the same pixels and options give the same boxes, in the same
 * order, on every run and thread (no randomness, no shared state; thread-safe).
 *
 * Dense pooling: enc_region_pool() turns the projected patch tokens of one
 * image pass into the embedding of a box.  Its definition is shared bit for
 * bit (up to float rounding) with tools/umgtrain/pooling.py; the golden file
 * tests/fixtures/pooling/golden.json pins it down. */
#ifndef ENC_REGIONS_H
#define ENC_REGIONS_H

#include "enc_image.h"

enum enc_box_method {
    ENC_BOX_WINDOW = 0,  /* coarse context window: whole image, halves, thirds */
    ENC_BOX_SEGMENTS = 1 /* bounding box of a group of segments (selective search) */
};

typedef struct enc_box {
    float x, y, w, h; /* pixels of the oriented image */
    float score;      /* rank key, higher first; comparable within one call only */
    int method;       /* enum enc_box_method */
} enc_box;

/* "window" / "segments"; static string, "unknown" for other values. */
const char *enc_box_method_name(int method);

typedef struct enc_propose_opts {
    int max_boxes;   /* R: at most this many boxes (default 32) */
    float nms_iou;   /* a box overlapping a better one by more than this is dropped (default 0.6) */
    int min_side;    /* boxes narrower or lower than this many original pixels are dropped (default 12) */
    int work_side;   /* the photo is segmented at this longer side (default 128; 32..1024) */
    int windows;     /* number of coarse windows added, 0..7 (default 3: whole, left/right half
                        or top/bottom half by aspect); they take the last slots of R */
} enc_propose_opts;

void enc_propose_opts_default(enc_propose_opts *o);

/* Propose up to min(opts->max_boxes, max_out) boxes for img into out, ranked
 * (best first), and set *n_out.  opts NULL = defaults.  Allocates and frees its
 * own working memory (a few hundred KB at work_side 128).
 * Errors: UMG_EINVAL (bad image or options), UMG_ENOMEM. */
int enc_propose(const enc_image *img, const enc_propose_opts *opts, enc_box *out, int max_out,
                int *n_out);

/* Intersection over union of two boxes (0 if either is empty). */
float enc_box_iou(const enc_box *a, const enc_box *b);

/* Greedy non-maximum suppression in place: sorts boxes by score (descending;
 * ties keep their input order), then keeps a box only if its IoU with every
 * kept box is <= iou, until max_keep boxes are kept.  The kept boxes end up in
 * boxes[0 .. return value), best first.  Returns their count (>= 0), or
 * UMG_ENOMEM / UMG_EINVAL. */
int enc_box_nms(enc_box *boxes, int n, float iou, int max_keep);

/* Box <-> patch grid, through the preprocessing geometry (enc_preproc_geometry)
 * of the fit the patches were computed with.
 * enc_box_to_grid: box [x,y,w,h] in original pixels -> grid rectangle
 *   [gx0, gy0, gx1, gy1] in patch units (column, row), clipped to the network
 *   input; exactly the rectangle enc_region_pool weighs cells with.
 * enc_box_from_grid: the inverse: grid rectangle -> [x,y,w,h] in original
 *   pixels, clipped to the image img_w x img_h (e.g. cell (row i, col j) is
 *   {j, i, j+1, i+1}).  A rectangle wholly in the padding gives w or h = 0. */
void enc_box_to_grid(const enc_preproc_geom *g, int patch_size, const float box[4], float grid[4]);
void enc_box_from_grid(const enc_preproc_geom *g, int patch_size, const float grid[4], int img_w,
                       int img_h, float box[4]);

/* Dense region embedding: pool patch tokens over a box.
 *   patches [grid*grid, dim]: projected patch tokens of one image, row-major over
 *           the grid, raw as enc_encode_pixels outputs them;
 *   geom:   enc_preproc_geometry of the fit the image was encoded with (ENC_FIT_PAD
 *           at ingest, so that every box of the photo is on the grid);
 *   box:    [x, y, w, h] in original (oriented) pixels;
 *   out:    [dim], L2-normalized.
 * Definition (shared with tools/umgtrain/pooling.py):
 *   x0 = x*scale_x + off_x, x1 = (x+w)*scale_x + off_x (same for y), clipped to
 *   [0,input_w] x [0,input_h], divided by patch_size; cell (row i, col j) weighs
 *   w_ij = overlap([x0,x1],[j,j+1]) * overlap([y0,y1],[i,i+1]); every token is
 *   L2-normalized first (a zero token stays zero); out = normalize(sum w_ij t_ij / sum w_ij).
 * Errors: UMG_EINVAL for bad arguments, a non-finite box, or a box with no
 * overlap with the grid (zero total weight: the caller skips that region). */
int enc_region_pool(const float *patches, int grid, int dim, int patch_size,
                    const enc_preproc_geom *geom, const float box[4], float *out);

#endif
