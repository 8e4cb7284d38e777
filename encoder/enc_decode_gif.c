/* enc_decode_gif.c - GIF through giflib: the first frame, as Pillow 9.4 gives it
 * (Image.open(f).convert("RGB")): a canvas of the logical screen size (grown to
 * hold the frame if the frame reaches beyond it), filled with the frame's
 * transparent index when it has one, else index 0, the frame's indices drawn on
 * it, then everything through the frame's palette (the local colour map, else the
 * global one; without either the indices are gray levels).  Transparency is not
 * composited.  Later frames are never read. */
#include "enc_decode.h"
#include "umg_error.h"

#include <stdlib.h>
#include <string.h>

#include <gif_lib.h>

typedef struct gif_mem {
    const uint8_t *data;
    size_t len, pos;
} gif_mem;

static int mem_read(GifFileType *g, GifByteType *buf, int n)
{
    gif_mem *m = g->UserData;
    if (n <= 0 || m->pos >= m->len)
        return 0;
    size_t k = (size_t)n < m->len - m->pos ? (size_t)n : m->len - m->pos;
    memcpy(buf, m->data + m->pos, k);
    m->pos += k;
    return (int)k;
}

static int gif_fail(int err)
{
    const char *s = GifErrorString(err);
    return umg_err_set(err == D_GIF_ERR_NOT_ENOUGH_MEM ? UMG_ENOMEM : UMG_EFORMAT, "corrupt GIF: %s",
                       s ? s : "unreadable");
}

/* Palette entry i as RGB (black beyond a short palette, gray levels without one). */
static void color(const ColorMapObject *cm, unsigned i, uint8_t *dst)
{
    if (!cm) {
        dst[0] = dst[1] = dst[2] = (uint8_t)i;
    } else if ((int)i < cm->ColorCount) {
        dst[0] = cm->Colors[i].Red;
        dst[1] = cm->Colors[i].Green;
        dst[2] = cm->Colors[i].Blue;
    } else {
        dst[0] = dst[1] = dst[2] = 0;
    }
}

static int first_frame(GifFileType *gif, const enc_decode_opts *o, enc_image *out)
{
    int transparent = -1, type;
    for (;;) {
        if (DGifGetRecordType(gif, (GifRecordType *)&type) == GIF_ERROR)
            return gif_fail(gif->Error);
        if (type == TERMINATE_RECORD_TYPE)
            return umg_err_set(UMG_EFORMAT, "corrupt GIF: no image in the file");
        if (type == EXTENSION_RECORD_TYPE) {
            int code;
            GifByteType *ext;
            if (DGifGetExtension(gif, &code, &ext) == GIF_ERROR)
                return gif_fail(gif->Error);
            /* Graphic Control: [4, flags, delay lo, delay hi, transparent index] */
            if (code == GRAPHICS_EXT_FUNC_CODE && ext && ext[0] >= 4)
                transparent = (ext[1] & 1) ? ext[4] : -1;
            while (ext)
                if (DGifGetExtensionNext(gif, &ext) == GIF_ERROR)
                    return gif_fail(gif->Error);
            continue;
        }
        if (type == IMAGE_DESC_RECORD_TYPE)
            break;
    }
    if (DGifGetImageDesc(gif) == GIF_ERROR)
        return gif_fail(gif->Error);
    const GifImageDesc *d = &gif->Image;
    if (d->Left < 0 || d->Top < 0 || d->Width <= 0 || d->Height <= 0)
        return umg_err_set(UMG_EFORMAT, "corrupt GIF: frame %dx%d at %d,%d", d->Width, d->Height, d->Left, d->Top);
    uint64_t W = (uint64_t)d->Left + (uint64_t)d->Width, H = (uint64_t)d->Top + (uint64_t)d->Height;
    if (W < (uint64_t)gif->SWidth)
        W = (uint64_t)gif->SWidth;
    if (H < (uint64_t)gif->SHeight)
        H = (uint64_t)gif->SHeight;
    int rc = enc_check_size("GIF", W, H, o->max_pixels);
    if (rc)
        return rc;
    const ColorMapObject *cm = d->ColorMap ? d->ColorMap : gif->SColorMap;
    uint8_t *rgb = malloc((size_t)W * H * 3);
    GifPixelType *line = malloc((size_t)d->Width);
    if (!rgb || !line) {
        free(rgb);
        free(line);
        return umg_err_set(UMG_ENOMEM, "GIF: out of memory for %llux%llu pixels", (unsigned long long)W,
                           (unsigned long long)H);
    }
    uint8_t fill[3];
    color(cm, transparent >= 0 ? (unsigned)transparent : 0, fill);
    for (size_t i = 0; i < (size_t)W * H; i++)
        memcpy(rgb + 3 * i, fill, 3);
    /* Interlaced frames store rows in four passes. */
    static const int start[4] = {0, 4, 2, 1}, step[4] = {8, 8, 4, 2};
    const int passes = d->Interlace ? 4 : 1;
    for (int p = 0; p < passes && !rc; p++)
        for (int y = d->Interlace ? start[p] : 0; y < d->Height; y += d->Interlace ? step[p] : 1) {
            if (DGifGetLine(gif, line, d->Width) == GIF_ERROR) {
                rc = gif_fail(gif->Error);
                break;
            }
            uint8_t *dst = rgb + (((size_t)(d->Top + y)) * W + (size_t)d->Left) * 3;
            for (int x = 0; x < d->Width; x++)
                color(cm, line[x], dst + 3 * x);
        }
    free(line);
    if (rc) {
        free(rgb);
        return rc;
    }
    out->width = (int)W;
    out->height = (int)H;
    out->rgb = rgb;
    return 0;
}

int enc_decode_gif(const uint8_t *data, size_t len, const enc_decode_opts *o, enc_image *out, enc_image_meta *meta)
{
    gif_mem m = {.data = data, .len = len};
    int err = 0;
    GifFileType *gif = DGifOpen(&m, mem_read, &err);
    if (!gif)
        return gif_fail(err);
    int rc = first_frame(gif, o, out);
    DGifCloseFile(gif, &err);
    if (!rc) {
        meta->full_width = out->width;
        meta->full_height = out->height;
    }
    return rc;
}
