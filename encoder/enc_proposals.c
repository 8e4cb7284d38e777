/* enc_proposals.c - class-agnostic region proposals: selective search on a
 * downscaled photo (see enc_regions.h and docs/regions.md).
 *
 *   1. area-average downscale to work_side, 3-tap Gaussian smoothing;
 *   2. per strategy: Felzenszwalb-Huttenlocher graph segmentation (colour space,
 *      k), then greedy hierarchical grouping of adjacent segments by a sum of
 *      colour / texture / size / fill similarities; every region of every
 *      hierarchy is a candidate box;
 *   3. candidates are scored (see score_candidates), near duplicates
 *      suppressed, the best R kept, and a few coarse windows added.
 * Everything is integer-ordered or stable-sorted: no randomness. */
#include "enc_regions.h"

#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "umg_error.h"

#define COLOR_BINS 25
#define TEX_ORI 8
#define TEX_BINS 10
#define COLOR_DIM (3 * COLOR_BINS)
#define TEX_DIM (3 * TEX_ORI * TEX_BINS)

void enc_propose_opts_default(enc_propose_opts *o)
{
    o->max_boxes = 32;
    o->nms_iou = 0.6f;
    o->min_side = 12;
    o->work_side = 128;
    o->windows = 3;
}

/* ---- working image ------------------------------------------------------ */

typedef struct work {
    int w, h;        /* downscaled size */
    float sx, sy;    /* original pixels per work pixel */
    float *rgb;      /* [h*w*3] smoothed, 0..255 */
    float *lab;      /* [h*w*3] smoothed, scaled to 0..255 per channel */
    float *gmag;     /* [h*w] gradient magnitude of the smoothed luminance */
    uint16_t *tex;   /* [h*w*3] texture bin per pixel and channel (ori*TEX_BINS+mag bin) */
    int *fine;       /* [h*w] labels of the first (finest) segmentation */
    int nfine;
} work;

/* Area-average downscale (box filter over the source pixels each output pixel
 * covers, fractional at the edges): no aliasing, and cheap.  Separable:
 * columns first into tmp [src_h][w][3], then rows. */
static int downscale(const enc_image *img, int w, int h, float *dst)
{
    int W = img->width, H = img->height;
    float *tmp = malloc((size_t)H * w * 3 * sizeof *tmp);
    if (!tmp)
        return UMG_ENOMEM;
    double fx = (double)W / w, fy = (double)H / h;
    for (int x = 0; x < w; x++) {
        double x0 = x * fx, x1 = (x + 1) * fx;
        int ix0 = (int)x0, ix1 = (int)ceil(x1);
        if (ix1 > W) ix1 = W;
        float inv = (float)(1.0 / (x1 - x0));
        for (int sy = 0; sy < H; sy++) {
            const uint8_t *row = img->rgb + (size_t)sy * W * 3;
            float acc0 = 0, acc1 = 0, acc2 = 0;
            for (int sx = ix0; sx < ix1; sx++) {
                float wx = (float)(fmin(x1, sx + 1) - fmax(x0, sx));
                acc0 += wx * row[sx * 3];
                acc1 += wx * row[sx * 3 + 1];
                acc2 += wx * row[sx * 3 + 2];
            }
            float *t = tmp + ((size_t)sy * w + x) * 3;
            t[0] = acc0 * inv;
            t[1] = acc1 * inv;
            t[2] = acc2 * inv;
        }
    }
    for (int y = 0; y < h; y++) {
        double y0 = y * fy, y1 = (y + 1) * fy;
        int iy0 = (int)y0, iy1 = (int)ceil(y1);
        if (iy1 > H) iy1 = H;
        float inv = (float)(1.0 / (y1 - y0));
        float *d = dst + (size_t)y * w * 3;
        for (int i = 0; i < w * 3; i++)
            d[i] = 0;
        for (int sy = iy0; sy < iy1; sy++) {
            float wy = (float)(fmin(y1, sy + 1) - fmax(y0, sy));
            const float *t = tmp + (size_t)sy * w * 3;
            for (int i = 0; i < w * 3; i++)
                d[i] += wy * t[i];
        }
        for (int i = 0; i < w * 3; i++)
            d[i] *= inv;
    }
    free(tmp);
    return 0;
}

/* Separable [1 2 1]/4 smoothing (sigma ~0.7), edges replicated. */
static void smooth3(float *img, float *tmp, int w, int h, int ch)
{
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int xl = x > 0 ? x - 1 : 0, xr = x < w - 1 ? x + 1 : w - 1;
            for (int c = 0; c < ch; c++)
                tmp[((size_t)y * w + x) * ch + c] =
                    0.25f * img[((size_t)y * w + xl) * ch + c] + 0.5f * img[((size_t)y * w + x) * ch + c] +
                    0.25f * img[((size_t)y * w + xr) * ch + c];
        }
    for (int y = 0; y < h; y++) {
        int yu = y > 0 ? y - 1 : 0, yd = y < h - 1 ? y + 1 : h - 1;
        for (int x = 0; x < w; x++)
            for (int c = 0; c < ch; c++)
                img[((size_t)y * w + x) * ch + c] =
                    0.25f * tmp[((size_t)yu * w + x) * ch + c] + 0.5f * tmp[((size_t)y * w + x) * ch + c] +
                    0.25f * tmp[((size_t)yd * w + x) * ch + c];
    }
}

static float srgb_to_linear(float v)
{
    v /= 255.0f;
    return v <= 0.04045f ? v / 12.92f : powf((v + 0.055f) / 1.055f, 2.4f);
}

static float lab_f(float t)
{
    return t > 0.008856f ? cbrtf(t) : 7.787f * t + 16.0f / 116.0f;
}

/* CIE Lab (D65), rescaled so every channel spans about 0..255 like RGB: the
 * segmentation's k then means the same in both spaces. */
static void rgb_to_lab(const float *rgb, float *lab, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        float r = srgb_to_linear(rgb[i * 3]), g = srgb_to_linear(rgb[i * 3 + 1]),
              b = srgb_to_linear(rgb[i * 3 + 2]);
        float X = (0.4124f * r + 0.3576f * g + 0.1805f * b) / 0.95047f;
        float Y = 0.2126f * r + 0.7152f * g + 0.0722f * b;
        float Z = (0.0193f * r + 0.1192f * g + 0.9505f * b) / 1.08883f;
        float fx = lab_f(X), fy = lab_f(Y), fz = lab_f(Z);
        float L = 116.0f * fy - 16.0f, A = 500.0f * (fx - fy), B = 200.0f * (fy - fz);
        lab[i * 3] = L * 2.55f;
        lab[i * 3 + 1] = A + 128.0f;
        lab[i * 3 + 2] = B + 128.0f;
    }
}

/* Texture: per channel, the orientation (8 bins) and magnitude (10 bins) of the
 * gradient of the smoothed image: a cheap stand-in for selective search's
 * Gaussian-derivative histograms. */
static void texture_bins(const float *img, int w, int h, uint16_t *tex, float *gmag)
{
    for (int y = 0; y < h; y++) {
        int yu = y > 0 ? y - 1 : 0, yd = y < h - 1 ? y + 1 : h - 1;
        for (int x = 0; x < w; x++) {
            int xl = x > 0 ? x - 1 : 0, xr = x < w - 1 ? x + 1 : w - 1;
            float gm = 0;
            for (int c = 0; c < 3; c++) {
                float gx = img[((size_t)y * w + xr) * 3 + c] - img[((size_t)y * w + xl) * 3 + c];
                float gy = img[((size_t)yd * w + x) * 3 + c] - img[((size_t)yu * w + x) * 3 + c];
                float m = sqrtf(gx * gx + gy * gy);
                if (m > gm) gm = m;
                float a = atan2f(gy, gx); /* -pi..pi */
                int o = (int)((a + (float)M_PI) * (TEX_ORI / (2.0f * (float)M_PI)));
                if (o >= TEX_ORI) o = TEX_ORI - 1;
                if (o < 0) o = 0;
                /* magnitude bins on a sqrt scale: most gradients are small */
                int mb = (int)(sqrtf(m) * (TEX_BINS / 16.0f));
                if (mb >= TEX_BINS) mb = TEX_BINS - 1;
                tex[((size_t)y * w + x) * 3 + c] = (uint16_t)(c * TEX_ORI * TEX_BINS + o * TEX_BINS + mb);
            }
            gmag[(size_t)y * w + x] = gm;
        }
    }
}

/* ---- Felzenszwalb-Huttenlocher segmentation ----------------------------- */

typedef struct {
    int a, b;
    float wgt;
} edge;

static int uf_find(int *parent, int x)
{
    while (parent[x] != x) {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    return x;
}

typedef struct seg_scratch {
    edge *edges, *sorted;
    int *count;     /* bucket counts for the counting sort */
    int *parent, *size;
    float *thr;
} seg_scratch;

#define WEIGHT_BUCKETS 4096
#define WEIGHT_SCALE 8.0f

/* Graph over 8-connected pixels, edge weight = colour distance; edges sorted by
 * weight with a stable counting sort on the weight quantized to 1/8 (exact
 * enough, O(n), deterministic).  Returns the number of segments, labels[] in
 * 0..n-1 ordered by first pixel in raster order. */
static int segment(const float *img, int w, int h, float k, int min_size, seg_scratch *s,
                   int *labels)
{
    int n = w * h, ne = 0;
    edge *E = s->edges;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int p = y * w + x;
            const float *a = img + (size_t)p * 3;
            static const int dx[4] = {1, 0, 1, 1}, dy[4] = {0, 1, 1, -1};
            for (int d = 0; d < 4; d++) {
                int xx = x + dx[d], yy = y + dy[d];
                if (xx >= w || yy < 0 || yy >= h)
                    continue;
                int q = yy * w + xx;
                const float *b = img + (size_t)q * 3;
                float d0 = a[0] - b[0], d1 = a[1] - b[1], d2 = a[2] - b[2];
                E[ne].a = p;
                E[ne].b = q;
                E[ne].wgt = sqrtf(d0 * d0 + d1 * d1 + d2 * d2);
                ne++;
            }
        }
    memset(s->count, 0, (WEIGHT_BUCKETS + 1) * sizeof *s->count);
    for (int i = 0; i < ne; i++) {
        int q = (int)(E[i].wgt * WEIGHT_SCALE);
        if (q >= WEIGHT_BUCKETS) q = WEIGHT_BUCKETS - 1;
        s->count[q + 1]++;
    }
    for (int i = 0; i < WEIGHT_BUCKETS; i++)
        s->count[i + 1] += s->count[i];
    for (int i = 0; i < ne; i++) {
        int q = (int)(E[i].wgt * WEIGHT_SCALE);
        if (q >= WEIGHT_BUCKETS) q = WEIGHT_BUCKETS - 1;
        s->sorted[s->count[q]++] = E[i];
    }
    for (int i = 0; i < n; i++) {
        s->parent[i] = i;
        s->size[i] = 1;
        s->thr[i] = k;
    }
    for (int i = 0; i < ne; i++) {
        int a = uf_find(s->parent, s->sorted[i].a), b = uf_find(s->parent, s->sorted[i].b);
        if (a == b)
            continue;
        float wgt = s->sorted[i].wgt;
        if (wgt <= s->thr[a] && wgt <= s->thr[b]) {
            if (s->size[a] < s->size[b]) { int t = a; a = b; b = t; }
            s->parent[b] = a;
            s->size[a] += s->size[b];
            s->thr[a] = wgt + k / s->size[a];
        }
    }
    for (int i = 0; i < ne; i++) {
        int a = uf_find(s->parent, s->sorted[i].a), b = uf_find(s->parent, s->sorted[i].b);
        if (a != b && (s->size[a] < min_size || s->size[b] < min_size)) {
            if (s->size[a] < s->size[b]) { int t = a; a = b; b = t; }
            s->parent[b] = a;
            s->size[a] += s->size[b];
        }
    }
    int nl = 0;
    /* s->size is reused as the root -> label map */
    for (int i = 0; i < n; i++)
        s->size[i] = -1;
    for (int i = 0; i < n; i++) {
        int r = uf_find(s->parent, i);
        if (s->size[r] < 0)
            s->size[r] = nl++;
        labels[i] = s->size[r];
    }
    return nl;
}

/* ---- hierarchical grouping ---------------------------------------------- */

typedef struct region {
    int x0, y0, x1, y1; /* inclusive bbox in work pixels */
    int size;
    int alive;
    int born;           /* merge step that created it (0 for segments) */
    int cand;           /* its index in the candidate list, -1 if none */
    float *col, *tex;   /* L1-normalized histograms */
    /* contour: 4-neighbour pixel pairs across the region's boundary with other
     * regions, and inside it, with their summed colour differences (x16,
     * integers so that the sums do not depend on the order) */
    int64_t bsum, isum;
    int blen, ilen;
} region;

typedef struct pair {
    int a, b;
    float sim;
    int len;      /* shared boundary: pixel pairs and their colour differences */
    int64_t sum;
} pair;

enum { SIM_COLOR = 1, SIM_TEXTURE = 2, SIM_SIZE = 4, SIM_FILL = 8 };

static float hist_isect(const float *a, const float *b, int n)
{
    float s = 0;
    for (int i = 0; i < n; i++)
        s += a[i] < b[i] ? a[i] : b[i];
    return s;
}

static float similarity(const region *a, const region *b, int sims, int img_size)
{
    float s = 0;
    if (sims & SIM_COLOR)
        s += hist_isect(a->col, b->col, COLOR_DIM) / 3.0f;
    if (sims & SIM_TEXTURE)
        s += hist_isect(a->tex, b->tex, TEX_DIM) / 3.0f;
    if (sims & SIM_SIZE)
        s += 1.0f - (float)(a->size + b->size) / img_size;
    if (sims & SIM_FILL) {
        int bw = (a->x1 > b->x1 ? a->x1 : b->x1) - (a->x0 < b->x0 ? a->x0 : b->x0) + 1;
        int bh = (a->y1 > b->y1 ? a->y1 : b->y1) - (a->y0 < b->y0 ? a->y0 : b->y0) + 1;
        s += 1.0f - (float)(bw * bh - a->size - b->size) / img_size;
    }
    return s;
}

static int cmp_u64(const void *pa, const void *pb)
{
    uint64_t a = *(const uint64_t *)pa, b = *(const uint64_t *)pb;
    return (a > b) - (a < b);
}

/* A candidate box in work pixels, with what the grouping knew about it. */
typedef struct cand {
    int x0, y0, x1, y1;
    int strategy;
    int size;      /* pixels of the region (fill = size / box area) */
    float level;   /* 0 = a segment, 1 = the last merge (whole image) */
    float merge_sim; /* similarity at which it was merged into its parent (1+ if never) */
    float life;    /* merge steps it survived, / total merges */
    float votes;   /* strategies that produced (nearly) the same box */
    float contour; /* mean colour difference across the region's boundary */
    float inside;  /* mean colour difference between neighbouring pixels inside it */
    float perim;   /* boundary length of the region (4-neighbour pixel pairs) */
    float score;
} cand;

typedef struct grouping_scratch {
    region *regs;      /* up to 2*nseg */
    float *hists;      /* (2*nseg) * (COLOR_DIM + TEX_DIM) */
    pair *pairs;
    uint64_t *keys;
    int cap_regs, cap_pairs;
} grouping_scratch;

static int ensure_grouping(grouping_scratch *g, int nseg, int npairs)
{
    if (2 * nseg > g->cap_regs) {
        free(g->regs);
        free(g->hists);
        g->cap_regs = 2 * nseg;
        g->regs = malloc((size_t)g->cap_regs * sizeof *g->regs);
        g->hists = malloc((size_t)g->cap_regs * (COLOR_DIM + TEX_DIM) * sizeof *g->hists);
        if (!g->regs || !g->hists) {
            g->cap_regs = 0;
            return UMG_ENOMEM;
        }
    }
    if (npairs > g->cap_pairs) {
        free(g->pairs);
        free(g->keys);
        g->cap_pairs = npairs;
        g->pairs = malloc((size_t)npairs * sizeof *g->pairs);
        g->keys = malloc((size_t)npairs * sizeof *g->keys);
        if (!g->pairs || !g->keys) {
            g->cap_pairs = 0;
            return UMG_ENOMEM;
        }
    }
    return 0;
}

/* Record region r as candidate i; returns i. */
static int emit(cand *cands, int i, const region *r, int strategy, float level)
{
    cand *c = &cands[i];
    c->x0 = r->x0;
    c->y0 = r->y0;
    c->x1 = r->x1;
    c->y1 = r->y1;
    c->strategy = strategy;
    c->size = r->size;
    c->level = level;
    c->merge_sim = 0;
    c->life = 0;
    c->votes = 0;
    c->contour = r->blen > 0 ? (float)r->bsum / (16.0f * r->blen) : 0;
    c->inside = r->ilen > 0 ? (float)r->isum / (16.0f * r->ilen) : 0;
    c->perim = (float)r->blen;
    c->score = 0;
    return i;
}

static void step_done(cand *cands, const region *r, float sim, int step, int total)
{
    if (r->cand < 0)
        return;
    cands[r->cand].merge_sim = sim;
    cands[r->cand].life = (float)(step - r->born) / total;
}

/* Group the segments of `labels` and append every region's box to cands.
 * Returns the number appended or a negative error. */
static int group(const work *wk, const float *colimg, const int *labels, int nseg, int sims,
                 int strategy, grouping_scratch *g, cand *cands, int cap_cands)
{
    int w = wk->w, h = wk->h, n = w * h;
    /* adjacency keys (4-connectivity), deduplicated by sorting */
    int nk = 0;
    int maxk = 2 * n;
    int rc = ensure_grouping(g, nseg, maxk);
    if (rc)
        return rc;
    /* key = smaller label (20 bits) | larger label (20 bits) | colour difference
     * x16 (24 bits): labels < w*h <= 2^20 (work_side <= 1024). */
    for (int i = 0; i < nseg; i++) {
        g->regs[i].isum = 0;
        g->regs[i].ilen = 0;
    }
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int p = y * w + x, l = labels[p];
            for (int d = 0; d < 2; d++) {
                int q = d ? p + w : p + 1;
                if (d ? y + 1 >= h : x + 1 >= w)
                    continue;
                int m = labels[q];
                const float *ca = colimg + (size_t)p * 3, *cb = colimg + (size_t)q * 3;
                float d0 = ca[0] - cb[0], d1 = ca[1] - cb[1], d2 = ca[2] - cb[2];
                uint64_t cd = (uint64_t)(sqrtf(d0 * d0 + d1 * d1 + d2 * d2) * 16.0f);
                if (cd > 0xffffff) cd = 0xffffff;
                if (m == l) {
                    g->regs[l].isum += (int64_t)cd;
                    g->regs[l].ilen++;
                    continue;
                }
                uint64_t lo = (uint64_t)(l < m ? l : m), hi = (uint64_t)(l < m ? m : l);
                g->keys[nk++] = lo << 44 | hi << 24 | cd;
            }
        }
    qsort(g->keys, (size_t)nk, sizeof *g->keys, cmp_u64);
    int np = 0;
    for (int i = 0; i < nk; i++) {
        if (i == 0 || g->keys[i] >> 24 != g->keys[i - 1] >> 24) {
            g->pairs[np].a = (int)(g->keys[i] >> 44);
            g->pairs[np].b = (int)(g->keys[i] >> 24 & 0xfffff);
            g->pairs[np].len = 0;
            g->pairs[np].sum = 0;
            np++;
        }
        g->pairs[np - 1].len++;
        g->pairs[np - 1].sum += (int64_t)(g->keys[i] & 0xffffff);
    }

    const int HD = COLOR_DIM + TEX_DIM;
    memset(g->hists, 0, (size_t)nseg * HD * sizeof *g->hists);
    for (int i = 0; i < nseg; i++) {
        region *r = &g->regs[i];
        r->bsum = 0;
        r->blen = 0;
        r->x0 = w;
        r->y0 = h;
        r->x1 = -1;
        r->y1 = -1;
        r->size = 0;
        r->alive = 1;
        r->born = 0;
        r->col = g->hists + (size_t)i * HD;
        r->tex = r->col + COLOR_DIM;
    }
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int p = y * w + x;
            region *r = &g->regs[labels[p]];
            if (x < r->x0) r->x0 = x;
            if (x > r->x1) r->x1 = x;
            if (y < r->y0) r->y0 = y;
            if (y > r->y1) r->y1 = y;
            r->size++;
            for (int c = 0; c < 3; c++) {
                int b = (int)(colimg[(size_t)p * 3 + c] * (COLOR_BINS / 256.0f));
                if (b < 0) b = 0;
                if (b >= COLOR_BINS) b = COLOR_BINS - 1;
                r->col[c * COLOR_BINS + b] += 1;
                r->tex[wk->tex[(size_t)p * 3 + c]] += 1;
            }
        }
    for (int i = 0; i < nseg; i++) {
        float inv = 1.0f / (3.0f * g->regs[i].size);
        for (int d = 0; d < HD; d++)
            g->regs[i].col[d] *= inv;
    }
    for (int i = 0; i < np; i++) {
        pair *pp = &g->pairs[i];
        pp->sim = similarity(&g->regs[pp->a], &g->regs[pp->b], sims, n);
        g->regs[pp->a].bsum += pp->sum;
        g->regs[pp->b].bsum += pp->sum;
        g->regs[pp->a].blen += pp->len;
        g->regs[pp->b].blen += pp->len;
    }

    int nc = 0;
    int total_merges = nseg - 1;
    if (total_merges < 1) total_merges = 1;
    for (int i = 0; i < nseg; i++)
        g->regs[i].cand = nc < cap_cands ? emit(cands, nc++, &g->regs[i], strategy, 0) : -1;
    int nr = nseg, step = 0;
    while (np > 0) {
        int best = 0;
        for (int i = 1; i < np; i++)
            if (g->pairs[i].sim > g->pairs[best].sim)
                best = i;
        int a = g->pairs[best].a, b = g->pairs[best].b;
        float bsim = g->pairs[best].sim;
        int shared_len = g->pairs[best].len;
        int64_t shared_sum = g->pairs[best].sum;
        region *ra = &g->regs[a], *rb = &g->regs[b], *t = &g->regs[nr];
        t->x0 = ra->x0 < rb->x0 ? ra->x0 : rb->x0;
        t->y0 = ra->y0 < rb->y0 ? ra->y0 : rb->y0;
        t->x1 = ra->x1 > rb->x1 ? ra->x1 : rb->x1;
        t->y1 = ra->y1 > rb->y1 ? ra->y1 : rb->y1;
        t->size = ra->size + rb->size;
        t->bsum = ra->bsum + rb->bsum - 2 * shared_sum;
        t->blen = ra->blen + rb->blen - 2 * shared_len;
        t->isum = ra->isum + rb->isum + shared_sum;
        t->ilen = ra->ilen + rb->ilen + shared_len;
        t->alive = 1;
        t->born = ++step;
        t->col = g->hists + (size_t)nr * HD;
        t->tex = t->col + COLOR_DIM;
        float fa = (float)ra->size / t->size, fb = (float)rb->size / t->size;
        for (int d = 0; d < HD; d++)
            t->col[d] = fa * ra->col[d] + fb * rb->col[d];
        ra->alive = rb->alive = 0;
        step_done(cands, ra, bsim, step, total_merges);
        step_done(cands, rb, bsim, step, total_merges);
        /* rewrite pairs touching a or b to t, drop the merged pair and duplicates */
        int out = 0;
        for (int i = 0; i < np; i++) {
            pair p = g->pairs[i];
            if ((p.a == a && p.b == b) || (p.a == b && p.b == a))
                continue;
            int other = -1;
            if (p.a == a || p.a == b) other = p.b;
            else if (p.b == a || p.b == b) other = p.a;
            if (other >= 0) {
                int dup = 0;
                for (int j = 0; j < out; j++)
                    if (g->pairs[j].a == nr && g->pairs[j].b == other) {
                        /* t touches other through both a and b: one pair, both boundaries */
                        g->pairs[j].len += p.len;
                        g->pairs[j].sum += p.sum;
                        dup = 1;
                        break;
                    }
                if (dup)
                    continue;
                p.a = nr;
                p.b = other;
                p.sim = similarity(t, &g->regs[other], sims, n);
            }
            g->pairs[out++] = p;
        }
        np = out;
        t->cand = nc < cap_cands ? emit(cands, nc++, t, strategy, (float)step / total_merges) : -1;
        nr++;
    }
    for (int i = 0; i < nr; i++)
        if (g->regs[i].alive)
            step_done(cands, &g->regs[i], 2.0f, total_merges + 1, total_merges);
    return nc;
}

/* ---- scoring, selection ------------------------------------------------- */

typedef struct strategy {
    int space;   /* 0 RGB, 1 Lab */
    float k;     /* FH threshold scale */
    int sims;    /* SIM_* */
} strategy;

#define SIM_ALL (SIM_COLOR | SIM_TEXTURE | SIM_SIZE | SIM_FILL)
/* Two colour spaces x three scales.  The first is the finest: its segments are
 * the superpixels of the straddling feature. */
static const strategy STRATEGIES[] = {
    {0, 30, SIM_ALL}, {1, 30, SIM_ALL}, {0, 60, SIM_ALL},
    {1, 60, SIM_ALL}, {0, 120, SIM_ALL}, {1, 120, SIM_ALL},
};
#define N_STRATEGIES ((int)(sizeof STRATEGIES / sizeof STRATEGIES[0]))

/* One call's settings: the constants above, or (ENC_PROPOSALS_TUNING, the
 * tuning bench's build only) what its environment asks for. */
typedef struct tuning {
    float min_size_frac;  /* FH min segment size, fraction of the work image */
    float kscale;
    int nstrat;
    int scoring;
    strategy strats[16];  /* the first nstrat are used */
} tuning;
_Static_assert(sizeof STRATEGIES <= sizeof ((tuning *)0)->strats, "tuning holds the strategies");

static tuning default_tuning(void)
{
    tuning t = {1.0f / 600, 1.0f, N_STRATEGIES, 0, {{0}}};
    memcpy(t.strats, STRATEGIES, sizeof STRATEGIES);
#ifdef ENC_PROPOSALS_TUNING
    const char *e;
    if ((e = getenv("P_MINFRAC"))) t.min_size_frac = (float)atof(e);
    if ((e = getenv("P_KSCALE"))) t.kscale = (float)atof(e);
    if ((e = getenv("P_NSTRAT"))) t.nstrat = atoi(e) < N_STRATEGIES ? atoi(e) : N_STRATEGIES;
    if ((e = getenv("P_SCORING"))) t.scoring = atoi(e);
    if ((e = getenv("P_STRATS"))) {
        int n = 0, off = 0, sp, sm;
        float k;
        while (n < 16 && sscanf(e + off, "%d:%f:%d%n", &sp, &k, &sm, &off) == 3) {
            t.strats[n].space = sp; t.strats[n].k = k; t.strats[n].sims = sm; n++;
            e += off; off = 0;
            if (*e == ',') e++;
        }
        t.nstrat = n;
    }
#endif
    return t;
}

#define NFEAT 26
#define CC_BINS 8 /* per Lab channel, for the colour contrast feature */

static int cmp_u64(const void *pa, const void *pb);

/* votes: how many strategies produced a box with the same coordinates
 * quantized to 1/24 of the work image side. */
static int count_votes(cand *c, int n, int side, int nstrat)
{
    uint64_t *keys = malloc((size_t)n * sizeof *keys);
    if (!keys)
        return UMG_ENOMEM;
    float q = 24.0f / side;
    for (int i = 0; i < n; i++) {
        uint64_t k = 0;
        k = (uint64_t)lroundf(c[i].x0 * q);
        k = k << 8 | (uint64_t)lroundf(c[i].y0 * q);
        k = k << 8 | (uint64_t)lroundf((c[i].x1 + 1) * q);
        k = k << 8 | (uint64_t)lroundf((c[i].y1 + 1) * q);
        keys[i] = k << 24 | (uint64_t)c[i].strategy << 20 | (uint64_t)i;
    }
    qsort(keys, (size_t)n, sizeof *keys, cmp_u64);
    for (int i = 0; i < n;) {
        int j = i, distinct = 0, last = -1;
        while (j < n && keys[j] >> 24 == keys[i] >> 24) {
            int st = (int)(keys[j] >> 20 & 15);
            if (st != last) distinct++;
            last = st;
            j++;
        }
        for (int t = i; t < j; t++)
            c[keys[t] & 0xfffff].votes = (float)distinct / nstrat;
        i = j;
    }
    free(keys);
    return 0;
}

static double rect_sum(const double *ii, int w, int x0, int y0, int x1, int y1)
{
    /* sum over [x0,x1) x [y0,y1) of an integral image with a zero first row/column */
    int s = w + 1;
    return ii[(size_t)y1 * s + x1] - ii[(size_t)y0 * s + x1] - ii[(size_t)y1 * s + x0] + ii[(size_t)y0 * s + x0];
}

static int clampi(int v, int lo, int hi)
{
    return v < lo ? lo : (v > hi ? hi : v);
}

/* Superpixel straddling (Alexe et al.'s objectness cue): segments of the fine
 * segmentation should lie wholly inside or wholly outside an object's box. */
static float straddling(const cand *c, const work *wk, const int *seg_size, int *count, int *touched)
{
    int nt = 0, w = wk->w;
    for (int y = c->y0; y <= c->y1; y++)
        for (int x = c->x0; x <= c->x1; x++) {
            int l = wk->fine[y * w + x];
            if (count[l]++ == 0)
                touched[nt++] = l;
        }
    float area = (float)(c->x1 - c->x0 + 1) * (c->y1 - c->y0 + 1), cut = 0;
    for (int i = 0; i < nt; i++) {
        int l = touched[i], in = count[l], out = seg_size[l] - in;
        cut += (float)(in < out ? in : out);
        count[l] = 0;
    }
    return 1.0f - cut / area;
}

/* 1 - histogram intersection of the Lab colours inside the box and in a ring
 * around it (colour contrast: objects stand out from their surroundings). */
static float colour_contrast(const cand *c, const work *wk, const int32_t *cii)
{
    int w = wk->w, h = wk->h, s = w + 1;
    int x0 = c->x0, y0 = c->y0, x1 = c->x1 + 1, y1 = c->y1 + 1;
    int rw = (x1 - x0) / 4 + 1, rh = (y1 - y0) / 4 + 1;
    int ox0 = clampi(x0 - rw, 0, w), oy0 = clampi(y0 - rh, 0, h);
    int ox1 = clampi(x1 + rw, 0, w), oy1 = clampi(y1 + rh, 0, h);
    float in_area = (float)(x1 - x0) * (y1 - y0), ring_area = (float)(ox1 - ox0) * (oy1 - oy0) - in_area;
    if (ring_area <= 0)
        return 0;
    float isect = 0;
    for (int b = 0; b < 3 * CC_BINS; b++) {
        const int32_t *ii = cii + (size_t)b * s * (h + 1);
#define RS(X0, Y0, X1, Y1) (ii[(size_t)(Y1) * s + (X1)] - ii[(size_t)(Y0) * s + (X1)] - ii[(size_t)(Y1) * s + (X0)] + ii[(size_t)(Y0) * s + (X0)])
        float in = (float)RS(x0, y0, x1, y1);
        float out = (float)RS(ox0, oy0, ox1, oy1) - in;
#undef RS
        in /= in_area;
        out /= ring_area;
        isect += in < out ? in : out;
    }
    return 1.0f - isect / 3.0f;
}

static void features(const cand *c, const work *wk, const double *ii, float *f)
{
    int w = wk->w, h = wk->h;
    int x0 = c->x0, y0 = c->y0, x1 = c->x1 + 1, y1 = c->y1 + 1;
    int bw = x1 - x0, bh = y1 - y0;
    float area = (float)bw * bh, ia = (float)w * h;
    int band = (int)(0.12f * (bw < bh ? bw : bh) + 0.5f);
    if (band < 1) band = 1;
    double all = rect_sum(ii, w, x0, y0, x1, y1);
    int cx0 = x0 + band, cy0 = y0 + band, cx1 = x1 - band, cy1 = y1 - band;
    double inner = 0;
    float inner_area = 0;
    if (cx1 > cx0 && cy1 > cy0) {
        inner = rect_sum(ii, w, cx0, cy0, cx1, cy1);
        inner_area = (float)(cx1 - cx0) * (cy1 - cy0);
    }
    int ox0 = clampi(x0 - band, 0, w), oy0 = clampi(y0 - band, 0, h);
    int ox1 = clampi(x1 + band, 0, w), oy1 = clampi(y1 + band, 0, h);
    double outer = rect_sum(ii, w, ox0, oy0, ox1, oy1) - all;
    float outer_area = (float)(ox1 - ox0) * (oy1 - oy0) - area;
    float ring_in = (float)((all - inner) / (area - inner_area > 0 ? area - inner_area : 1));
    float ring_out = outer_area > 0 ? (float)(outer / outer_area) : ring_in;
    float center = inner_area > 0 ? (float)(inner / inner_area) : ring_in;
    float la = logf(area / ia);
    f[0] = 1;
    f[1] = c->level;
    f[2] = c->level == 0;
    f[3] = la;
    f[4] = la * la;
    f[5] = fabsf(logf((float)bw / bh));
    f[6] = c->size / area;
    f[7] = c->merge_sim > 2 ? 2 : c->merge_sim;
    f[8] = c->life;
    f[9] = c->votes;
    f[10] = ring_in / 32.0f;
    f[11] = ring_out / 32.0f;
    f[12] = center / 32.0f;
    f[13] = (ring_in - ring_out) / 32.0f;
    f[14] = ((x0 == 0) + (y0 == 0) + (x1 == w) + (y1 == h)) / 4.0f;
    for (int s = 0; s < 4; s++)
        f[15 + s] = c->strategy == s;
    f[21] = sqrtf(c->level);
    f[22] = la * la * la;
    f[23] = c->contour / 32.0f;
    f[24] = logf((c->contour + 1.0f) / (c->inside + 1.0f));
    f[25] = c->inside / 32.0f;
}

/* Linear objectness score over the features above; weights fitted on the
 * coco-mini train2017 half by bench/regions/fit_weights.py (docs/regions.md):
 * logistic regression, then a search that maximizes recall@16/32/64 directly,
 * averaged over 8 bootstrap resamples.  Changing a feature means refitting. */
static const float WEIGHTS[NFEAT] = {
    0.0000f, 0.4225f, 0.0017f, 1.1887f, 0.4750f, -0.7359f, 1.4712f, 0.1680f,
    -1.3153f, -0.8949f, 0.2146f, 0.0175f, 0.2049f, 0.2393f, -0.7902f, -0.5691f,
    0.0375f, -0.5249f, 0.4377f, 1.0563f, 0.6449f, 0.2580f, 0.0540f, 0.3365f,
    -0.2289f, -0.2324f};

#ifdef ENC_PROPOSALS_TUNING
/* Candidate cues under evaluation (dumped after the scored features, not
 * scored): saliency, texture contrast, global colour distinctness, position. */
#define NXF 10
#define XO_BINS 8
typedef struct xcues {
    double *sal;   /* integral image of frequency-tuned saliency */
    double *ori;   /* XO_BINS integral planes of magnitude-weighted orientation */
    double sal_mean;
} xcues;

static int xcues_init(xcues *x, const work *wk)
{
    int w = wk->w, h = wk->h, s = w + 1;
    size_t cs = (size_t)s * (h + 1), n = (size_t)w * h;
    x->sal = calloc(cs, sizeof *x->sal);
    x->ori = calloc(cs * XO_BINS, sizeof *x->ori);
    if (!x->sal || !x->ori)
        return UMG_ENOMEM;
    double m[3] = {0, 0, 0};
    for (size_t p = 0; p < n; p++)
        for (int c = 0; c < 3; c++)
            m[c] += wk->lab[p * 3 + c];
    for (int c = 0; c < 3; c++)
        m[c] /= (double)n;
    double tot = 0;
    for (int y = 0; y < h; y++) {
        double row = 0, orow[XO_BINS] = {0};
        int yu = y > 0 ? y - 1 : 0, yd = y < h - 1 ? y + 1 : h - 1;
        for (int x0 = 0; x0 < w; x0++) {
            size_t p = (size_t)y * w + x0;
            double d0 = wk->lab[p * 3] - m[0], d1 = wk->lab[p * 3 + 1] - m[1], d2 = wk->lab[p * 3 + 2] - m[2];
            double sv = sqrt(d0 * d0 + d1 * d1 + d2 * d2);
            row += sv;
            tot += sv;
            x->sal[(size_t)(y + 1) * s + x0 + 1] = x->sal[(size_t)y * s + x0 + 1] + row;
            int xl = x0 > 0 ? x0 - 1 : 0, xr = x0 < w - 1 ? x0 + 1 : w - 1;
            float gx = wk->lab[((size_t)y * w + xr) * 3] - wk->lab[((size_t)y * w + xl) * 3];
            float gy = wk->lab[((size_t)yd * w + x0) * 3] - wk->lab[((size_t)yu * w + x0) * 3];
            float a = atan2f(gy, gx);
            if (a < 0) a += (float)M_PI; /* orientation, not direction */
            int o = (int)(a * (XO_BINS / (float)M_PI));
            o = o >= XO_BINS ? XO_BINS - 1 : o;
            orow[o] += sqrt(gx * gx + gy * gy);
            for (int k = 0; k < XO_BINS; k++) {
                double *pl = x->ori + (size_t)k * cs;
                pl[(size_t)(y + 1) * s + x0 + 1] = pl[(size_t)y * s + x0 + 1] + orow[k];
            }
        }
    }
    x->sal_mean = tot / (double)n + 1e-6;
    return 0;
}

static void xcues_free(xcues *x)
{
    free(x->sal);
    free(x->ori);
}

static void xcues_features(const cand *c, const work *wk, const xcues *x, const int32_t *cii, float *f)
{
    int w = wk->w, h = wk->h, s = w + 1;
    size_t cs = (size_t)s * (h + 1);
    int x0 = c->x0, y0 = c->y0, x1 = c->x1 + 1, y1 = c->y1 + 1;
    int rw = (x1 - x0) / 4 + 1, rh = (y1 - y0) / 4 + 1;
    int ox0 = clampi(x0 - rw, 0, w), oy0 = clampi(y0 - rh, 0, h);
    int ox1 = clampi(x1 + rw, 0, w), oy1 = clampi(y1 + rh, 0, h);
    double in_area = (double)(x1 - x0) * (y1 - y0), ring_area = (double)(ox1 - ox0) * (oy1 - oy0) - in_area;
    double sin_ = rect_sum(x->sal, w, x0, y0, x1, y1), sout = rect_sum(x->sal, w, ox0, oy0, ox1, oy1) - sin_;
    double sall = rect_sum(x->sal, w, 0, 0, w, h);
    f[0] = (float)(sin_ / in_area / x->sal_mean);
    f[1] = ring_area > 0 ? (float)((sin_ / in_area - sout / ring_area) / x->sal_mean) : 0;
    f[2] = (float)(sin_ / sall - in_area / ((double)w * h));
    /* texture contrast: 1 - intersection of the orientation histograms in the box and the ring */
    double hin[XO_BINS], hout[XO_BINS], tin = 1e-9, tout = 1e-9;
    for (int k = 0; k < XO_BINS; k++) {
        hin[k] = rect_sum(x->ori + (size_t)k * cs, w, x0, y0, x1, y1);
        hout[k] = rect_sum(x->ori + (size_t)k * cs, w, ox0, oy0, ox1, oy1) - hin[k];
        tin += hin[k];
        tout += hout[k];
    }
    double is = 0;
    for (int k = 0; k < XO_BINS; k++)
        is += fmin(hin[k] / tin, hout[k] / tout);
    f[3] = ring_area > 0 ? (float)(1 - is) : 0;
    /* global colour distinctness: the box's Lab histogram against the whole photo's */
    float isect = 0;
    for (int b = 0; b < 3 * CC_BINS; b++) {
        const int32_t *ii = cii + (size_t)b * cs;
#define RS(X0, Y0, X1, Y1) (ii[(size_t)(Y1) * s + (X1)] - ii[(size_t)(Y0) * s + (X1)] - ii[(size_t)(Y1) * s + (X0)] + ii[(size_t)(Y0) * s + (X0)])
        float in = (float)RS(x0, y0, x1, y1) / (float)in_area;
        float all = (float)RS(0, 0, w, h) / (float)(w * h);
#undef RS
        isect += in < all ? in : all;
    }
    f[4] = 1.0f - isect / 3.0f;
    float cx = 0.5f * (x0 + x1) / w, cy = 0.5f * (y0 + y1) / h;
    f[5] = fabsf(cx - 0.5f);
    f[6] = cy;
    f[7] = fabsf(cy - 0.5f);
    /* compactness of the region: boundary length over the circumference of a disc of its area */
    f[8] = c->perim / (2.0f * sqrtf((float)M_PI * (float)c->size));
    f[9] = c->perim / (2.0f * (float)((x1 - x0) + (y1 - y0)));
}
#endif

static int score_candidates(cand *c, int n, const work *wk, int nstrat, FILE *dump)
{
    int w = wk->w, h = wk->h, s = w + 1;
    double *ii = calloc((size_t)(w + 1) * (h + 1), sizeof *ii);
    if (!ii)
        return UMG_ENOMEM;
    for (int y = 0; y < h; y++) {
        double row = 0;
        for (int x = 0; x < w; x++) {
            row += wk->gmag[(size_t)y * w + x];
            ii[(size_t)(y + 1) * s + x + 1] = ii[(size_t)y * s + x + 1] + row;
        }
    }
    int rc = count_votes(c, n, w > h ? w : h, nstrat);
    size_t cs = (size_t)(w + 1) * (h + 1);
    int32_t *cii = calloc(cs * 3 * CC_BINS, sizeof *cii);
    int *seg_size = calloc((size_t)wk->nfine, sizeof *seg_size);
    int *count = calloc((size_t)wk->nfine, sizeof *count);
    int *touched = malloc((size_t)wk->nfine * sizeof *touched);
    if (rc || !cii || !seg_size || !count || !touched) {
        free(ii);
        free(cii);
        free(seg_size);
        free(count);
        free(touched);
        return UMG_ENOMEM;
    }
    for (int p = 0; p < w * h; p++)
        seg_size[wk->fine[p]]++;
    for (int ch = 0; ch < 3; ch++)
        for (int y = 0; y < h; y++) {
            int32_t row[CC_BINS] = {0};
            for (int x = 0; x < w; x++) {
                int b = (int)(wk->lab[((size_t)y * w + x) * 3 + ch] * (CC_BINS / 256.0f));
                b = clampi(b, 0, CC_BINS - 1);
                row[b]++;
                for (int k = 0; k < CC_BINS; k++) {
                    int32_t *plane = cii + (size_t)(ch * CC_BINS + k) * cs;
                    plane[(size_t)(y + 1) * s + x + 1] = plane[(size_t)y * s + x + 1] + row[k];
                }
            }
        }
    float f[NFEAT];
#ifdef ENC_PROPOSALS_TUNING
    xcues xc = {0};
    float xf[NXF];
    if (dump && xcues_init(&xc, wk)) {
        xcues_free(&xc);
        dump = NULL;
    }
#endif
    for (int i = 0; i < n; i++) {
        features(&c[i], wk, ii, f);
        f[19] = straddling(&c[i], wk, seg_size, count, touched);
        f[20] = colour_contrast(&c[i], wk, cii);
        float sc = 0;
        for (int k = 0; k < NFEAT; k++)
            sc += WEIGHTS[k] * f[k];
        c[i].score = sc;
        if (dump) {
            fprintf(dump, "C %g %g %g %g", c[i].x0 * wk->sx, c[i].y0 * wk->sy, (c[i].x1 + 1) * wk->sx,
                    (c[i].y1 + 1) * wk->sy);
            for (int k = 0; k < NFEAT; k++)
                fprintf(dump, " %g", f[k]);
#ifdef ENC_PROPOSALS_TUNING
            xcues_features(&c[i], wk, &xc, cii, xf);
            for (int k = 0; k < NXF; k++)
                fprintf(dump, " %g", xf[k]);
#endif
            fputc('\n', dump);
        }
    }
#ifdef ENC_PROPOSALS_TUNING
    xcues_free(&xc);
#endif
    free(ii);
    free(cii);
    free(seg_size);
    free(count);
    free(touched);
    return 0;
}

static void add_window(enc_box *w, int *n, float x, float y, float bw, float bh)
{
    w[*n].x = x;
    w[*n].y = y;
    w[*n].w = bw;
    w[*n].h = bh;
    w[*n].score = 0;
    w[*n].method = ENC_BOX_WINDOW;
    (*n)++;
}

/* Whole image, then the two halves along the longer side, then thirds. */
static int coarse_windows(int W, int H, int count, enc_box *w)
{
    int n = 0;
    float fw = (float)W, fh = (float)H;
    add_window(w, &n, 0, 0, fw, fh);
    if (W >= H) {
        add_window(w, &n, 0, 0, fw / 2, fh);
        add_window(w, &n, fw / 2, 0, fw / 2, fh);
        add_window(w, &n, 0, 0, fw / 3, fh);
        add_window(w, &n, fw / 3, 0, fw / 3, fh);
        add_window(w, &n, 2 * fw / 3, 0, fw / 3, fh);
        add_window(w, &n, fw / 4, fh / 4, fw / 2, fh / 2);
    } else {
        add_window(w, &n, 0, 0, fw, fh / 2);
        add_window(w, &n, 0, fh / 2, fw, fh / 2);
        add_window(w, &n, 0, 0, fw, fh / 3);
        add_window(w, &n, 0, fh / 3, fw, fh / 3);
        add_window(w, &n, 0, 2 * fh / 3, fw, fh / 3);
        add_window(w, &n, fw / 4, fh / 4, fw / 2, fh / 2);
    }
    return count < n ? count : n;
}

int enc_propose(const enc_image *img, const enc_propose_opts *opts, enc_box *out, int max_out,
                int *n_out)
{
    enc_propose_opts o;
    if (opts) o = *opts;
    else enc_propose_opts_default(&o);
#ifdef ENC_PROPOSALS_TUNING
    if (getenv("P_WORKSIDE")) o.work_side = atoi(getenv("P_WORKSIDE")); /* validated below */
#endif
    if (n_out) *n_out = 0;
    if (!img || !img->rgb || img->width <= 0 || img->height <= 0 || !n_out || max_out < 0 ||
        (max_out > 0 && !out))
        return umg_err_set(UMG_EINVAL, "enc_propose: bad arguments");
    if (o.max_boxes < 0 || o.work_side < 32 || o.work_side > 1024 || o.windows < 0 || o.windows > 7 ||
        !(o.nms_iou > 0 && o.nms_iou <= 1) || o.min_side < 0)
        return umg_err_set(UMG_EINVAL, "enc_propose: bad options (max_boxes %d, work_side %d, windows %d, nms_iou %g)",
                           o.max_boxes, o.work_side, o.windows, o.nms_iou);
    int R = o.max_boxes < max_out ? o.max_boxes : max_out;
    if (R == 0)
        return 0;
    tuning tn = default_tuning();

    int W = img->width, H = img->height;
    double s = (double)o.work_side / (W > H ? W : H);
    if (s > 1) s = 1;
    work wk = {0};
    wk.w = (int)lround(W * s);
    wk.h = (int)lround(H * s);
    if (wk.w < 1) wk.w = 1;
    if (wk.h < 1) wk.h = 1;
    wk.sx = (float)W / wk.w;
    wk.sy = (float)H / wk.h;
    size_t n = (size_t)wk.w * wk.h;
    int rc = 0;
    seg_scratch ss = {0};
    grouping_scratch gs = {0};
    cand *cands = NULL;
    enc_box *boxes = NULL;
    int *labels = NULL;
    float *tmp = NULL;
    int ncand = 0, cap = 0;

    wk.rgb = malloc(n * 3 * sizeof *wk.rgb);
    wk.lab = malloc(n * 3 * sizeof *wk.lab);
    wk.gmag = malloc(n * sizeof *wk.gmag);
    wk.tex = malloc(n * 3 * sizeof *wk.tex);
    tmp = malloc(n * 3 * sizeof *tmp);
    labels = malloc(n * sizeof *labels);
    wk.fine = malloc(n * sizeof *wk.fine);
    ss.edges = malloc(n * 4 * sizeof *ss.edges);
    ss.sorted = malloc(n * 4 * sizeof *ss.sorted);
    ss.count = malloc((WEIGHT_BUCKETS + 1) * sizeof *ss.count);
    ss.parent = malloc(n * sizeof *ss.parent);
    ss.size = malloc(n * sizeof *ss.size);
    ss.thr = malloc(n * sizeof *ss.thr);
    if (!wk.fine || !wk.rgb || !wk.lab || !wk.gmag || !wk.tex || !tmp || !labels || !ss.edges || !ss.sorted ||
        !ss.count || !ss.parent || !ss.size || !ss.thr) {
        rc = umg_err_set(UMG_ENOMEM, "enc_propose: working buffers for %dx%d", wk.w, wk.h);
        goto done;
    }
    if (downscale(img, wk.w, wk.h, wk.rgb)) {
        rc = umg_err_set(UMG_ENOMEM, "enc_propose: downscaling %dx%d", W, H);
        goto done;
    }
    smooth3(wk.rgb, tmp, wk.w, wk.h, 3);
    rgb_to_lab(wk.rgb, wk.lab, n);
    texture_bins(wk.rgb, wk.w, wk.h, wk.tex, wk.gmag);

    int min_size = (int)(tn.min_size_frac * (float)n + 0.5f);
    if (min_size < 2) min_size = 2;
    for (int si = 0; si < tn.nstrat; si++) {
        const strategy *st = &tn.strats[si];
        const float *colimg = st->space ? wk.lab : wk.rgb;
        int nseg = segment(colimg, wk.w, wk.h, st->k * tn.kscale, min_size, &ss, labels);
        if (si == 0) {
            memcpy(wk.fine, labels, n * sizeof *labels);
            wk.nfine = nseg;
        }
        if (ncand + 2 * nseg > cap) {
            int ncap = (ncand + 2 * nseg) * 2;
            cand *nc = realloc(cands, (size_t)ncap * sizeof *nc);
            if (!nc) {
                rc = umg_err_set(UMG_ENOMEM, "enc_propose: %d candidates", ncap);
                goto done;
            }
            cands = nc;
            cap = ncap;
        }
        int got = group(&wk, colimg, labels, nseg, st->sims, si, &gs, cands + ncand, cap - ncand);
        if (got < 0) {
            rc = umg_err_set(got, "enc_propose: grouping");
            goto done;
        }
        ncand += got;
    }
    FILE *dump = NULL;
#ifdef ENC_PROPOSALS_TUNING
    if (getenv("P_DUMP")) dump = fopen(getenv("P_DUMP"), "a");
#endif
    rc = score_candidates(cands, ncand, &wk, tn.nstrat, dump);
    if (dump) fclose(dump);
    if (rc) {
        rc = umg_err_set(rc, "enc_propose: scoring %d candidates", ncand);
        goto done;
    }

    int nwin_max = o.windows;
    boxes = malloc(((size_t)ncand + 8) * sizeof *boxes);
    if (!boxes) {
        rc = umg_err_set(UMG_ENOMEM, "enc_propose: %d candidates", ncand);
        goto done;
    }
    int nb = 0;
    for (int i = 0; i < ncand; i++) {
        const cand *c = &cands[i];
        float x0 = c->x0 * wk.sx, y0 = c->y0 * wk.sy;
        float x1 = (c->x1 + 1) * wk.sx, y1 = (c->y1 + 1) * wk.sy;
        if (x1 > W) x1 = (float)W;
        if (y1 > H) y1 = (float)H;
        if (x1 - x0 < o.min_side || y1 - y0 < o.min_side)
            continue;
        boxes[nb].x = x0;
        boxes[nb].y = y0;
        boxes[nb].w = x1 - x0;
        boxes[nb].h = y1 - y0;
        boxes[nb].score = c->score;
        boxes[nb].method = ENC_BOX_SEGMENTS;
        nb++;
    }
    int kept = enc_box_nms(boxes, nb, o.nms_iou, R);
    if (kept < 0) {
        rc = kept;
        goto done;
    }
    /* The windows take the last slots, unless they repeat a kept box. */
    enc_box win[8];
    int nwin = coarse_windows(W, H, nwin_max, win);
    int seg_slots = R - nwin;
    if (seg_slots < 0) seg_slots = 0;
    int m = 0, next = 0;
    while (m < seg_slots && next < kept)
        out[m++] = boxes[next++];
    int win_start = m;
    for (int i = 0; i < nwin && m < R; i++) {
        int dup = 0;
        for (int j = 0; j < m; j++)
            if (enc_box_iou(&win[i], &out[j]) > o.nms_iou) { dup = 1; break; }
        if (dup)
            continue;
        win[i].score = m > 0 ? out[m - 1].score : 0;
        out[m++] = win[i];
    }
    int first_tail = m;
    while (m < R && next < kept) {
        const enc_box *b = &boxes[next++];
        int dup = 0;
        for (int j = win_start; j < first_tail; j++) /* the windows just added */
            if (enc_box_iou(b, &out[j]) > o.nms_iou) { dup = 1; break; }
        if (!dup)
            out[m++] = *b;
    }
    *n_out = m;

done:
    free(wk.rgb);
    free(wk.lab);
    free(wk.gmag);
    free(wk.tex);
    free(tmp);
    free(labels);
    free(wk.fine);
    free(ss.edges);
    free(ss.sorted);
    free(ss.count);
    free(ss.parent);
    free(ss.size);
    free(ss.thr);
    free(gs.regs);
    free(gs.hists);
    free(gs.pairs);
    free(gs.keys);
    free(cands);
    free(boxes);
    return rc;
}
