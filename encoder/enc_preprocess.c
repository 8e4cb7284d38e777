/* enc_preprocess.c - PIL's antialiased bicubic resize in 8-bit fixed point, and
 * CLIP's preprocessing (resize shorter side, center crop, normalize) or the
 * fit-pad variant used at ingest.
 *
 * The resampler reproduces Pillow's ImagingResample (Resample.c) arithmetic so that
 * pixels match PIL bit for bit: separable, horizontal pass first into an 8-bit
 * clamped intermediate, then vertical; for each output pixel the filter support
 * is 2 (bicubic, a = -0.5) times the downscale factor, weights are computed in
 * double at (src - center + 0.5) / scale, normalized to sum 1 and rounded to
 * fixed point with PRECISION_BITS = 32 - 8 - 2 fractional bits; sums start at
 * one half and are clamped to 0..255.
 *
 * Every output pixel depends only on its own coordinate, so computing just a
 * window of the full-size output (the center crop) yields the same values as
 * resizing everything and cropping afterwards, for a fraction of the work. */
#include "enc_image.h"
#include "umg_error.h"

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PRECISION_BITS (32 - 8 - 2)

static const float CLIP_MEAN[3] = {0.48145466f, 0.4578275f, 0.40821073f};
static const float CLIP_STD[3] = {0.26862954f, 0.26130258f, 0.27577711f};

static double bicubic(double x)
{
    const double a = -0.5;
    if (x < 0.0)
        x = -x;
    if (x < 1.0)
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0)
        return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}

/* Fixed-point weights of output positions [first, first + count) of a resize from
 * in_size to out_size: output i reads inputs [start[i], start[i] + len[i]) with
 * weights k[i * ksize + j]. */
typedef struct {
    int ksize;
    int *start, *len;
    int32_t *k;
} coeffs;

static void coeffs_free(coeffs *c)
{
    free(c->start);
    free(c->len);
    free(c->k);
    memset(c, 0, sizeof *c);
}

static int coeffs_init(coeffs *c, int in_size, int out_size, int first, int count)
{
    memset(c, 0, sizeof *c);
    double scale = (double)in_size / out_size;
    double filterscale = scale < 1.0 ? 1.0 : scale;
    double support = 2.0 * filterscale;
    c->ksize = (int)ceil(support) * 2 + 1;
    c->start = malloc(sizeof(int) * (size_t)count);
    c->len = malloc(sizeof(int) * (size_t)count);
    c->k = malloc(sizeof(int32_t) * (size_t)count * c->ksize);
    double *w = malloc(sizeof(double) * c->ksize);
    if (!c->start || !c->len || !c->k || !w) {
        free(w);
        coeffs_free(c);
        return umg_err_set(UMG_ENOMEM, "resize: out of memory for %d filter taps", count);
    }
    double ss = 1.0 / filterscale;
    for (int i = 0; i < count; i++) {
        int xx = first + i;
        double center = (xx + 0.5) * scale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0)
            xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in_size)
            xmax = in_size;
        xmax -= xmin;
        double ww = 0.0;
        for (int x = 0; x < xmax; x++) {
            w[x] = bicubic((x + xmin - center + 0.5) * ss);
            ww += w[x];
        }
        int32_t *k = c->k + (size_t)i * c->ksize;
        for (int x = 0; x < c->ksize; x++) {
            double v = x < xmax ? (ww != 0.0 ? w[x] / ww : w[x]) : 0.0;
            k[x] = (int32_t)(v < 0 ? -0.5 + v * (1 << PRECISION_BITS) : 0.5 + v * (1 << PRECISION_BITS));
        }
        c->start[i] = xmin;
        c->len[i] = xmax;
    }
    free(w);
    return 0;
}

static inline uint8_t clip8(int32_t v)
{
    v >>= PRECISION_BITS;
    return v < 0 ? 0 : v > 255 ? 255 : (uint8_t)v;
}

/* The inner loops of both passes, over contiguous memory so that the compiler
 * vectorizes them (restrict: a uint8_t pointer may otherwise alias acc).  -O2's
 * "very cheap" vectorizer cost model leaves them scalar, hence O3 here. */
#if defined(__GNUC__) && !defined(__clang__)
#define VECTORIZE __attribute__((optimize("O3")))
#else
#define VECTORIZE
#endif
VECTORIZE static void acc_init(int32_t *restrict acc, size_t n)
{
    for (size_t x = 0; x < n; x++)
        acc[x] = 1 << (PRECISION_BITS - 1);
}

VECTORIZE static void acc_add(int32_t *restrict acc, const uint8_t *restrict row, int32_t k, size_t n)
{
    for (size_t x = 0; x < n; x++)
        acc[x] += row[x] * k;
}

VECTORIZE static void acc_store(uint8_t *restrict dst, const int32_t *restrict acc, size_t n)
{
    for (size_t x = 0; x < n; x++)
        dst[x] = clip8(acc[x]);
}

/* Pixel-transpose rows x cols pixels: dst[c][r] = src[r][c] (3 bytes each). */
static void transpose_rgb(uint8_t *restrict dst, size_t dst_stride, const uint8_t *restrict src, size_t src_stride,
                          int rows, int cols)
{
    enum { B = 16 }; /* tiles keep both sides in cache */
    for (int r0 = 0; r0 < rows; r0 += B)
        for (int c0 = 0; c0 < cols; c0 += B) {
            int r1 = r0 + B < rows ? r0 + B : rows, c1 = c0 + B < cols ? c0 + B : cols;
            for (int r = r0; r < r1; r++) {
                const uint8_t *s = src + (size_t)r * src_stride;
                for (int c = c0; c < c1; c++) {
                    uint8_t *d = dst + (size_t)c * dst_stride + (size_t)r * 3;
                    d[0] = s[3 * c];
                    d[1] = s[3 * c + 1];
                    d[2] = s[3 * c + 2];
                }
            }
        }
}

/* Window [ox, ox + ow) x [oy, oy + oh) of src resized to full_w x full_h, written
 * to dst (ow * oh * 3 bytes, row stride ow * 3).  The window must lie inside the
 * full output.
 *
 * The horizontal pass runs on the transposed source: each output column is then a
 * weighted sum of whole input columns, contiguous in memory, the same vector loop
 * as the vertical pass.  Integer sums are exact, so the order of accumulation does
 * not change any value. */
static int resample_window(const enc_image *src, int full_w, int full_h, int ox, int oy, int ow, int oh,
                           uint8_t *dst)
{
    const int W = src->width, H = src->height;
    const int need_h = full_w != W, need_v = full_h != H;
    coeffs ch = {0}, cv = {0};
    uint8_t *tmp = NULL, *srcT = NULL, *outT = NULL;
    int32_t *acc = NULL;
    int rc = 0;

    /* Input rows the vertical pass reads. */
    int row0 = oy, row1 = oy + oh;
    if (need_v) {
        if ((rc = coeffs_init(&cv, H, full_h, oy, oh)))
            goto done;
        row0 = cv.start[0];
        row1 = 0;
        for (int i = 0; i < oh; i++)
            if (cv.start[i] + cv.len[i] > row1)
                row1 = cv.start[i] + cv.len[i];
    }
    const int R = row1 - row0;
    const size_t n_h = (size_t)R * 3, n_v = (size_t)ow * 3;
    acc = malloc(sizeof(int32_t) * (n_h > n_v ? n_h : n_v));
    if (!acc)
        goto nomem;

    /* Horizontal pass into tmp (rows row0..row1, columns of the window), or the
     * source itself when the width does not change. */
    const uint8_t *hsrc;
    size_t hstride;
    if (need_h) {
        if ((rc = coeffs_init(&ch, W, full_w, ox, ow)))
            goto done;
        int col0 = ch.start[0], col1 = 0;
        for (int i = 0; i < ow; i++)
            if (ch.start[i] + ch.len[i] > col1)
                col1 = ch.start[i] + ch.len[i];
        srcT = malloc((size_t)(col1 - col0) * n_h);
        outT = malloc((size_t)ow * n_h);
        uint8_t *out = dst;
        if (need_v)
            out = tmp = malloc((size_t)R * ow * 3);
        if (!srcT || !outT || !out)
            goto nomem;
        transpose_rgb(srcT, n_h, src->rgb + (size_t)row0 * W * 3 + (size_t)col0 * 3, (size_t)W * 3, R, col1 - col0);
        for (int i = 0; i < ow; i++) {
            const int32_t *k = ch.k + (size_t)i * ch.ksize;
            acc_init(acc, n_h);
            for (int j = 0; j < ch.len[i]; j++)
                acc_add(acc, srcT + (size_t)(ch.start[i] + j - col0) * n_h, k[j], n_h);
            acc_store(outT + (size_t)i * n_h, acc, n_h);
        }
        transpose_rgb(out, (size_t)ow * 3, outT, n_h, ow, R);
        if (!need_v)
            goto done;
        hsrc = tmp;
        hstride = (size_t)ow * 3;
    } else {
        hsrc = src->rgb + (size_t)row0 * W * 3 + (size_t)ox * 3;
        hstride = (size_t)W * 3;
        if (!need_v) {
            for (int y = 0; y < oh; y++)
                memcpy(dst + (size_t)y * ow * 3, hsrc + (size_t)y * hstride, (size_t)ow * 3);
            goto done;
        }
    }

    /* Vertical pass, row by row. */
    for (int i = 0; i < oh; i++) {
        const int32_t *k = cv.k + (size_t)i * cv.ksize;
        acc_init(acc, n_v);
        for (int j = 0; j < cv.len[i]; j++)
            acc_add(acc, hsrc + (size_t)(cv.start[i] + j - row0) * hstride, k[j], n_v);
        acc_store(dst + (size_t)i * n_v, acc, n_v);
    }
    goto done;
nomem:
    rc = umg_err_set(UMG_ENOMEM, "resize: out of memory (%dx%d to %dx%d)", W, H, full_w, full_h);
done:
    coeffs_free(&ch);
    coeffs_free(&cv);
    free(tmp);
    free(srcT);
    free(outT);
    free(acc);
    return rc;
}

static int check_image(const enc_image *img, const char *what)
{
    if (!img || !img->rgb || img->width <= 0 || img->height <= 0)
        return umg_err_set(UMG_EINVAL, "%s: empty or NULL image", what);
    return 0;
}

int enc_image_resize(const enc_image *src, int dst_w, int dst_h, enc_image *out)
{
    int rc = check_image(src, "resize");
    if (rc)
        return rc;
    if (!out)
        return umg_err_set(UMG_EINVAL, "resize: NULL output");
    out->width = out->height = 0;
    out->rgb = NULL;
    if (dst_w <= 0 || dst_h <= 0)
        return umg_err_set(UMG_EINVAL, "resize: target size %dx%d", dst_w, dst_h);
    if ((uint64_t)dst_w * (uint64_t)dst_h > ENC_IMAGE_MAX_PIXELS_DEFAULT)
        return umg_err_set(UMG_ETOOBIG, "resize: target size %dx%d exceeds %llu pixels", dst_w, dst_h,
                           (unsigned long long)ENC_IMAGE_MAX_PIXELS_DEFAULT);
    uint8_t *buf = malloc((size_t)dst_w * dst_h * 3);
    if (!buf)
        return umg_err_set(UMG_ENOMEM, "resize: out of memory for %dx%d", dst_w, dst_h);
    rc = resample_window(src, dst_w, dst_h, 0, 0, dst_w, dst_h, buf);
    if (rc) {
        free(buf);
        return rc;
    }
    out->width = dst_w;
    out->height = dst_h;
    out->rgb = buf;
    return 0;
}

/* ---------------------------------------------------------------- preprocessing */

void enc_preproc_default(enc_preproc *p, int image_size)
{
    memset(p, 0, sizeof *p);
    p->resize_shortest = image_size;
    p->crop_w = p->crop_h = image_size;
    memcpy(p->mean, CLIP_MEAN, sizeof p->mean);
    memcpy(p->std, CLIP_STD, sizeof p->std);
    p->fit = ENC_FIT_CROP;
}

/* A positive size given as an int or as an object member; 0 when absent. */
static int json_size(json_t *v, const char *member, int *out)
{
    if (json_is_object(v))
        v = json_object_get(v, member);
    if (!v) {
        *out = 0;
        return 0;
    }
    if (!json_is_integer(v) || json_integer_value(v) <= 0 || json_integer_value(v) > 65535)
        return -1;
    *out = (int)json_integer_value(v);
    return 0;
}

static int json_triple(json_t *v, float out[3])
{
    if (!v)
        return 0;
    if (!json_is_array(v) || json_array_size(v) != 3)
        return -1;
    for (int i = 0; i < 3; i++) {
        json_t *e = json_array_get(v, i);
        if (!json_is_number(e))
            return -1;
        out[i] = (float)json_number_value(e);
    }
    return 0;
}

int enc_preproc_load(const char *model_dir, int image_size, enc_preproc *p)
{
    if (!model_dir || !p || image_size <= 0)
        return umg_err_set(UMG_EINVAL, "preprocessor: bad arguments");
    enc_preproc_default(p, image_size);
    char path[4096];
    if ((size_t)snprintf(path, sizeof path, "%s/preprocessor_config.json", model_dir) >= sizeof path)
        return umg_err_set(UMG_EINVAL, "preprocessor: model path too long");
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0; /* optional file: CLIP defaults */
    fclose(f);

    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root)
        return umg_err_set(UMG_EFORMAT, "%s: line %d: %s", path, jerr.line, jerr.text);
    int rc = 0;
    if (!json_is_object(root)) {
        rc = umg_err_set(UMG_EFORMAT, "%s: not a JSON object", path);
        goto done;
    }
    json_t *size = json_object_get(root, "size");
    if (json_is_object(size) && !json_object_get(size, "shortest_edge")) {
        rc = umg_err_set(UMG_EUNSUPPORTED, "%s: \"size\" without \"shortest_edge\" (fixed-size resize) is not supported",
                         path);
        goto done;
    }
    int shortest = 0, cw = 0, chh = 0;
    json_t *crop = json_object_get(root, "crop_size");
    if (json_size(size, "shortest_edge", &shortest) || json_size(crop, "width", &cw) ||
        json_size(crop, "height", &chh)) {
        rc = umg_err_set(UMG_EFORMAT, "%s: \"size\" / \"crop_size\" must be positive integers", path);
        goto done;
    }
    if (json_is_integer(crop))
        chh = cw;
    if (shortest)
        p->resize_shortest = shortest;
    if (cw)
        p->crop_w = cw;
    if (chh)
        p->crop_h = chh;
    if (p->crop_w != image_size || p->crop_h != image_size) {
        rc = umg_err_set(UMG_EFORMAT, "%s: crop_size %dx%d does not match the model's image_size %d", path, p->crop_w,
                         p->crop_h, image_size);
        goto done;
    }
    if (json_triple(json_object_get(root, "image_mean"), p->mean) ||
        json_triple(json_object_get(root, "image_std"), p->std)) {
        rc = umg_err_set(UMG_EFORMAT, "%s: image_mean / image_std must be arrays of 3 numbers", path);
        goto done;
    }
    for (int i = 0; i < 3; i++)
        if (!(p->std[i] > 0.0f)) {
            rc = umg_err_set(UMG_EFORMAT, "%s: image_std[%d] = %g is not positive", path, i, p->std[i]);
            goto done;
        }
done:
    json_decref(root);
    if (rc)
        enc_preproc_default(p, image_size);
    return rc;
}

/* (int)(num / den) computed in double as Python's int(a * b / c), saturated so that
 * absurd ratios cannot overflow int. */
static int int_ratio(int64_t num, int64_t den)
{
    double v = (double)num / (double)den;
    return v >= (double)INT_MAX ? INT_MAX : (int)v;
}

/* Python's round(d / 2.0) for an integer d: halves go to the even neighbour. */
static int round_half_even_half(int d)
{
    return (int)nearbyint(d / 2.0);
}

void enc_preproc_geometry(const enc_preproc *p, int width, int height, enc_preproc_geom *g)
{
    memset(g, 0, sizeof *g);
    g->input_w = p->crop_w;
    g->input_h = p->crop_h;
    if (width <= 0 || height <= 0)
        return;
    int rw, rh;
    if (p->fit == ENC_FIT_PAD) {
        /* Longer side to the input size, shorter side int(S * short / long) but at
         * least 1: truncation, as tools/umgtrain/preprocess.py (the Python twin the
         * region model is trained with) does.  For a non-square input the photo is
         * fitted inside crop_w x crop_h the same way. */
        if ((int64_t)width * p->crop_h >= (int64_t)height * p->crop_w) {
            rw = p->crop_w;
            rh = int_ratio((int64_t)p->crop_w * height, width);
        } else {
            rh = p->crop_h;
            rw = int_ratio((int64_t)p->crop_h * width, height);
        }
        if (rw < 1) rw = 1;
        if (rh < 1) rh = 1;
        g->off_x = (p->crop_w - rw) / 2;
        g->off_y = (p->crop_h - rh) / 2;
    } else {
        /* torchvision Resize(int): short side -> S, long side int(S * long / short). */
        const int S = p->resize_shortest;
        if (width <= height) {
            rw = S;
            rh = int_ratio((int64_t)S * height, width);
        } else {
            rh = S;
            rw = int_ratio((int64_t)S * width, height);
        }
        /* torchvision CenterCrop: round((W - crop) / 2); a crop larger than the
         * image pads (crop - W) // 2 on the left/top first. */
        g->off_x = rw >= p->crop_w ? -round_half_even_half(rw - p->crop_w) : (p->crop_w - rw) / 2;
        g->off_y = rh >= p->crop_h ? -round_half_even_half(rh - p->crop_h) : (p->crop_h - rh) / 2;
    }
    g->resized_w = rw;
    g->resized_h = rh;
    g->scale_x = (float)((double)rw / width);
    g->scale_y = (float)((double)rh / height);
}

int enc_preprocess(const enc_image *img, const enc_preproc *p, float *out)
{
    int rc = check_image(img, "preprocess");
    if (rc)
        return rc;
    if (!p || !out || p->crop_w <= 0 || p->crop_h <= 0 || p->resize_shortest <= 0 ||
        (p->fit != ENC_FIT_CROP && p->fit != ENC_FIT_PAD))
        return umg_err_set(UMG_EINVAL, "preprocess: bad parameters");
    enc_preproc_geom g;
    enc_preproc_geometry(p, img->width, img->height, &g);
    /* Only the visible window is computed, so a long resized side costs nothing;
     * the bound only keeps the coordinate arithmetic inside int. */
    if (g.resized_w > (1 << 28) || g.resized_h > (1 << 28))
        return umg_err_set(UMG_ETOOBIG, "preprocess: %dx%d image would resize to %dx%d", img->width, img->height,
                           g.resized_w, g.resized_h);
    const int CW = p->crop_w, CH = p->crop_h;

    /* The part of the resized photo that is visible in the input. */
    int x0 = g.off_x > 0 ? g.off_x : 0, y0 = g.off_y > 0 ? g.off_y : 0;
    int x1 = g.off_x + g.resized_w < CW ? g.off_x + g.resized_w : CW;
    int y1 = g.off_y + g.resized_h < CH ? g.off_y + g.resized_h : CH;
    int vw = x1 - x0, vh = y1 - y0;
    uint8_t *win = malloc((size_t)vw * vh * 3);
    if (!win)
        return umg_err_set(UMG_ENOMEM, "preprocess: out of memory");
    rc = resample_window(img, g.resized_w, g.resized_h, x0 - g.off_x, y0 - g.off_y, vw, vh, win);
    if (rc) {
        free(win);
        return rc;
    }

    /* ToTensor + Normalize in float32, in torch's order: (v / 255 - mean) / std. */
    float lut[3][256];
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++)
            lut[c][v] = ((float)v / 255.0f - p->mean[c]) / p->std[c];
    /* Outside the photo: torchvision pads a too-small crop with black; PAD uses
     * the mean colour, 0 after normalization. */
    for (int c = 0; c < 3; c++) {
        const float fill = p->fit == ENC_FIT_PAD ? 0.0f : lut[c][0];
        float *plane = out + (size_t)c * CW * CH;
        for (int y = 0; y < CH; y++) {
            float *row = plane + (size_t)y * CW;
            if (y < y0 || y >= y1) {
                for (int x = 0; x < CW; x++)
                    row[x] = fill;
                continue;
            }
            const uint8_t *w = win + (size_t)(y - y0) * vw * 3 + c;
            for (int x = 0; x < x0; x++)
                row[x] = fill;
            for (int x = x0; x < x1; x++)
                row[x] = lut[c][w[3 * (x - x0)]];
            for (int x = x1; x < CW; x++)
                row[x] = fill;
        }
    }
    free(win);
    return 0;
}
