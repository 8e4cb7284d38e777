/* enc_decode_heif.c - HEIC/HEIF and AVIF through libheif: the primary image, as
 * libheif's own decode gives it (heif-convert's pixels), converted to 8-bit RGB.
 *
 * libheif applies the container's transformations (irot, imir, clap) itself, so
 * the EXIF Orientation a phone also writes is not applied again (HEIF makes
 * irot/imir authoritative; heif-convert ignores EXIF orientation too).  HEIF
 * thumbnails are separate, smaller pictures: never used, even on the fast path.
 * Phones store a photo as a grid of 512x512 tiles (a 12 MP photo: 48), which
 * libheif decodes in parallel: on opts->threads threads, 0 meaning every online
 * CPU (libheif 1.15's own default is a fixed 4, whatever the machine).  1 decodes
 * them in the calling thread (libheif's 0), for callers that already decode
 * several photos at once.  The size checked against max_pixels is the grid's
 * full size (its ispe), before any tile is decoded.  libheif 1.15 converts each
 * whole (padded) tile to RGB 4:4:4 before pasting the part inside the grid, then
 * the canvas to what is asked: where the crop falls does not change a pixel, and
 * heif-convert's PNG (asking what we ask) is ours, last tile column included
 * (docs/benchmarks.md, "Grid HEIC against heif-convert"). */
#include "enc_decode.h"
#include "umg_error.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libheif/heif.h>

/* Phones write a few hundred bytes to a few tens of KB of EXIF. */
#define ENC_HEIF_MAX_EXIF_BYTES (4u << 20)

/* libheif's setting for `threads` tile threads: its 0 decodes the tiles in the
 * calling thread, n > 0 on up to n threads of its own while the caller waits. */
static int heif_tile_threads(int threads)
{
    if (threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        threads = n < 1 ? 1 : n > 64 ? 64 : (int)n;
    }
    return threads == 1 ? 0 : threads;
}

static int heif_fail(const char *fmt, const char *what, struct heif_error e)
{
    int code = UMG_EFORMAT;
    if (e.subcode == heif_suberror_Security_limit_exceeded)
        code = UMG_ETOOBIG; /* reported as an allocation error with this subcode */
    else if (e.code == heif_error_Memory_allocation_error)
        code = UMG_ENOMEM;
    else if (e.code == heif_error_Unsupported_feature || e.code == heif_error_Unsupported_filetype)
        code = UMG_EUNSUPPORTED;
    return umg_err_set(code, "%s %s: %s", code == UMG_EFORMAT ? "corrupt" : "cannot decode", fmt,
                       e.message && *e.message ? e.message : what);
}

/* The handle's first Exif block: 4 bytes (big-endian offset to the TIFF header
 * past them), then the TIFF structure. */
static void read_exif(const struct heif_image_handle *h, enc_image_meta *meta)
{
    heif_item_id id;
    if (heif_image_handle_get_list_of_metadata_block_IDs(h, "Exif", &id, 1) < 1)
        return;
    size_t n = heif_image_handle_get_metadata_size(h, id);
    if (n < 12 || n > ENC_HEIF_MAX_EXIF_BYTES)
        return;
    uint8_t *buf = malloc(n);
    if (!buf)
        return;
    struct heif_error e = heif_image_handle_get_metadata(h, id, buf);
    if (e.code == heif_error_Ok) {
        uint32_t skip = (uint32_t)buf[0] << 24 | (uint32_t)buf[1] << 16 | (uint32_t)buf[2] << 8 | buf[3];
        if (skip <= n - 4 - 8)
            enc_exif_read(buf + 4 + skip, n - 4 - skip, NULL, meta); /* orientation: see above */
    }
    free(buf);
}

int enc_decode_heif(const uint8_t *data, size_t len, int format, const enc_decode_opts *o, enc_image *out,
                    enc_image_meta *meta)
{
    const char *fmt = enc_image_format_name(format);
    struct heif_context *ctx = heif_context_alloc();
    struct heif_image_handle *h = NULL;
    struct heif_image *img = NULL;
    struct heif_decoding_options *dopt = NULL;
    int rc = 0;
    if (!ctx)
        return umg_err_set(UMG_ENOMEM, "%s: cannot create decoder", fmt);
    heif_context_set_max_decoding_threads(ctx, heif_tile_threads(o->threads));
    struct heif_error e = heif_context_read_from_memory_without_copy(ctx, data, len, NULL);
    if (e.code != heif_error_Ok) {
        rc = heif_fail(fmt, "unreadable container", e);
        goto done;
    }
    e = heif_context_get_primary_image_handle(ctx, &h);
    if (e.code != heif_error_Ok) {
        rc = heif_fail(fmt, "no primary image", e);
        goto done;
    }
    /* The size after libheif's transformations (a rotation keeps the pixel count). */
    int W = heif_image_handle_get_width(h), H = heif_image_handle_get_height(h);
    if ((rc = enc_check_size(fmt, W < 0 ? 0 : (uint64_t)W, H < 0 ? 0 : (uint64_t)H, o->max_pixels)))
        goto done;
    read_exif(h, meta);
    dopt = heif_decoding_options_alloc();
    if (!dopt) {
        rc = umg_err_set(UMG_ENOMEM, "%s: cannot create decoder", fmt);
        goto done;
    }
    dopt->convert_hdr_to_8bit = 1; /* 10/12-bit photos: libheif's own reduction to 8 bits */
    e = heif_decode_image(h, &img, heif_colorspace_RGB, heif_chroma_interleaved_RGB, dopt);
    if (e.code != heif_error_Ok) {
        rc = heif_fail(fmt, "decoding failed", e);
        goto done;
    }
    int stride = 0;
    const uint8_t *plane = heif_image_get_plane_readonly(img, heif_channel_interleaved, &stride);
    int w = heif_image_get_width(img, heif_channel_interleaved);
    int hh = heif_image_get_height(img, heif_channel_interleaved);
    if (!plane || w <= 0 || hh <= 0 || (uint64_t)w * hh > (uint64_t)W * H + (uint64_t)W + H ||
        heif_image_get_bits_per_pixel_range(img, heif_channel_interleaved) != 8 || stride < 3 * w) {
        rc = umg_err_set(UMG_EFORMAT, "corrupt %s: decoded image %dx%d does not match its header %dx%d", fmt, w, hh,
                         W, H);
        goto done;
    }
    out->rgb = malloc((size_t)w * hh * 3);
    if (!out->rgb) {
        rc = umg_err_set(UMG_ENOMEM, "%s: out of memory for %dx%d pixels", fmt, w, hh);
        goto done;
    }
    for (int y = 0; y < hh; y++)
        memcpy(out->rgb + (size_t)y * w * 3, plane + (size_t)y * stride, (size_t)w * 3);
    out->width = meta->full_width = w;
    out->height = meta->full_height = hh;
done:
    heif_image_release(img);
    heif_decoding_options_free(dopt);
    heif_image_handle_release(h);
    heif_context_free(ctx);
    return rc;
}
