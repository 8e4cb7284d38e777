/* enc_thumb.c - JPEG thumbnails of decoded photos (enc_thumb.h): a box
 * reduction by an integer factor for large photos, then enc_image_resize,
 * encoded with libjpeg-turbo into memory. */
#include "enc_thumb.h"

#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>

#include "umg_error.h"

void enc_thumb_size(int w, int h, int long_side, int *tw, int *th)
{
    int lw = w >= h;
    int L = lw ? w : h, S = lw ? h : w;
    int nl = L < long_side ? L : long_side; /* never upscaled */
    int ns = (int)lround((double)S * nl / L);
    if (ns < 1) ns = 1;
    *tw = lw ? nl : ns;
    *th = lw ? ns : nl;
}

/* Large photos are box-reduced first, as Pillow's Image.thumbnail() does
 * (its reducing_gap 2): when the photo is at least 2 f times the thumbnail
 * (f >= 2), blocks of f x f pixels are averaged, so the bicubic resize after
 * it still reduces by 2x or more.  The antialiased bicubic alone reads ~4
 * source pixels per output pixel and direction for each step of reduction,
 * which made a 12 MP photo's thumbnail cost twice its exact JPEG decode
 * (115 ms; docs/benchmarks.md, "Thumbnails"); the box average reads each
 * pixel once.  Unlike Image.reduce, the last block of a row or column also
 * takes the W mod f pixels left over (f..2f-1 wide) instead of being a
 * narrow block of its own: the resize after it maps the reduced image onto
 * the thumbnail uniformly, and a narrow block would count as a whole pixel
 * (Pillow corrects that with a source box, which enc_image_resize has not). */
static int reduce_factor(int w, int h, int tw, int th)
{
    int fw = w / (2 * tw), fh = h / (2 * th);
    return fw < fh ? fw : fh;
}

/* [*b0, *b1): the source pixels of block o of n blocks of f over size. */
static void block(int o, int n, int f, int size, int *b0, int *b1)
{
    *b0 = o * f;
    *b1 = o == n - 1 ? size : *b0 + f;
}

static int box_reduce(const enc_image *src, int f, enc_image *out)
{
    int ow = src->width / f, oh = src->height / f;
    uint32_t *acc = calloc((size_t)ow * 3, sizeof *acc);
    out->rgb = malloc((size_t)ow * oh * 3);
    if (!acc || !out->rgb) {
        free(acc);
        enc_image_free(out);
        return umg_err_set(UMG_ENOMEM, "thumbnail: out of memory reducing %dx%d", src->width, src->height);
    }
    out->width = ow, out->height = oh;
    for (int oy = 0; oy < oh; oy++) {
        int y0, y1, x0, x1;
        block(oy, oh, f, src->height, &y0, &y1);
        memset(acc, 0, (size_t)ow * 3 * sizeof *acc);
        for (int y = y0; y < y1; y++) {
            const uint8_t *row = src->rgb + (size_t)y * src->width * 3;
            for (int ox = 0; ox < ow; ox++) {
                uint32_t *a = acc + (size_t)ox * 3;
                block(ox, ow, f, src->width, &x0, &x1);
                for (int x = x0; x < x1; x++) a[0] += row[3 * x], a[1] += row[3 * x + 1], a[2] += row[3 * x + 2];
            }
        }
        uint8_t *dst = out->rgb + (size_t)oy * ow * 3;
        for (int ox = 0; ox < ow; ox++) {
            block(ox, ow, f, src->width, &x0, &x1);
            uint32_t n = (uint32_t)((x1 - x0) * (y1 - y0));
            for (int c = 0; c < 3; c++) dst[3 * ox + c] = (uint8_t)((acc[3 * ox + c] + n / 2) / n);
        }
    }
    free(acc);
    return 0;
}

/* libjpeg aborts through error_exit: back to compress_rgb with the message. */
struct thumb_err {
    struct jpeg_error_mgr pub;
    jmp_buf jump;
    char msg[JMSG_LENGTH_MAX];
};

static void thumb_on_error(j_common_ptr cinfo)
{
    struct thumb_err *e = (struct thumb_err *)cinfo->err;
    cinfo->err->format_message(cinfo, e->msg);
    longjmp(e->jump, 1);
}

/* The buffer libjpeg grows is the caller's (*buf, freed by it on error too),
 * so nothing it must free lives in this frame across the longjmp. */
static int compress_rgb(const enc_image *img, int quality, unsigned char **buf, unsigned long *n)
{
    struct jpeg_compress_struct c;
    struct thumb_err err;
    c.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = thumb_on_error;
    if (setjmp(err.jump)) {
        int oom = err.pub.msg_code == JERR_OUT_OF_MEMORY;
        jpeg_destroy_compress(&c);
        return umg_err_set(oom ? UMG_ENOMEM : UMG_EINTERNAL, "thumbnail: JPEG encoding failed: %s", err.msg);
    }
    jpeg_create_compress(&c);
    jpeg_mem_dest(&c, buf, n);
    c.image_width = (JDIMENSION)img->width;
    c.image_height = (JDIMENSION)img->height;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c); /* YCbCr 4:2:0, baseline */
    jpeg_set_quality(&c, quality, TRUE);
    c.optimize_coding = TRUE; /* ~5-10% smaller; a second pass over a few KB of coefficients */
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(img->rgb + (size_t)c.next_scanline * (size_t)img->width * 3);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    return 0;
}

int enc_thumb_make(const enc_image *img, int long_side, int quality, uint8_t **jpeg, size_t *len)
{
    *jpeg = NULL;
    *len = 0;
    if (!img || !img->rgb || img->width < 1 || img->height < 1 || long_side < 1 || quality < 1 || quality > 100)
        return umg_err_set(UMG_EINVAL, "thumbnail: bad arguments");
    int tw, th;
    enc_thumb_size(img->width, img->height, long_side, &tw, &th);
    enc_image reduced = {0}, small = {0};
    const enc_image *src = img;
    int f = reduce_factor(img->width, img->height, tw, th);
    if (f >= 2) {
        int rc = box_reduce(img, f, &reduced);
        if (rc) return rc;
        src = &reduced;
    }
    if (tw != src->width || th != src->height) {
        int rc = enc_image_resize(src, tw, th, &small);
        enc_image_free(&reduced);
        if (rc) return rc;
        src = &small;
    }
    unsigned char *buf = NULL;
    unsigned long n = 0;
    int rc = compress_rgb(src, quality, &buf, &n);
    enc_image_free(&reduced);
    enc_image_free(&small);
    if (rc) {
        free(buf);
        return rc;
    }
    *jpeg = buf;
    *len = n;
    return 0;
}
