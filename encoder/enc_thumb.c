/* enc_thumb.c - JPEG thumbnails of decoded photos (enc_thumb.h): resize with
 * enc_image_resize, encode with libjpeg-turbo into memory. */
#include "enc_thumb.h"

#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>

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
    enc_image small = {0};
    const enc_image *src = img;
    if (tw != img->width || th != img->height) {
        int rc = enc_image_resize(img, tw, th, &small);
        if (rc) return rc;
        src = &small;
    }
    unsigned char *buf = NULL;
    unsigned long n = 0;
    int rc = compress_rgb(src, quality, &buf, &n);
    enc_image_free(&small);
    if (rc) {
        free(buf);
        return rc;
    }
    *jpeg = buf;
    *len = n;
    return 0;
}
