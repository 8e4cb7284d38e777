/* enc_decode_tiff.c - TIFF through libtiff, first page (IFD) only, to 8-bit RGB
 * as PIL's Image.open(f).convert("RGB"):
 *  - gray (1/2/4/8/16-bit, min-is-black or min-is-white), palette (1/2/4/8-bit,
 *    colour map >> 8 as PIL), RGB (8/16-bit), CMYK (8-bit, PIL's cmyk2rgb), JPEG-
 *    compressed YCbCr (libjpeg's RGB, as PIL asks libtiff for it); 16-bit keeps
 *    the high byte (PIL: the same for RGB/RGBA; 16-bit gray: see enc_image.h);
 *    extra samples (alpha) are dropped unchanged.  Strips and tiles, any
 *    compression libtiff reads (none, LZW, Deflate, JPEG, PackBits, ...).
 *  - Anything else libtiff can read (planar-separate, uncompressed YCbCr, 16-bit
 *    CMYK, LogLuv, ...) goes through libtiff's TIFFRGBAImage: decoded, but not
 *    checked against PIL (it premultiplies unassociated alpha, for one).
 * Orientation: the Orientation tag, applied as ImageOps.exif_transpose.
 * Errors and warnings go to per-file handlers (TIFFOpenOptions), never to
 * libtiff's process-wide ones. */
#include "enc_decode.h"
#include "umg_error.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <tiffio.h>

/* No single buffer libtiff allocates for one file may exceed this (a corrupt
 * header claiming a huge strip); a 64 Mpx 16-bit RGBA strip still fits. */
#define ENC_TIFF_MAX_ALLOC ((tmsize_t)1 << 29)

typedef struct tiff_mem {
    const uint8_t *data;
    size_t len;
    toff_t pos;
    char msg[256]; /* the first error libtiff reported */
} tiff_mem;

static tmsize_t mem_read(thandle_t h, void *buf, tmsize_t n)
{
    tiff_mem *m = (tiff_mem *)h;
    if (n < 0 || m->pos >= m->len)
        return 0;
    size_t k = (size_t)n < m->len - m->pos ? (size_t)n : m->len - m->pos;
    memcpy(buf, m->data + m->pos, k);
    m->pos += k;
    return (tmsize_t)k;
}

static tmsize_t mem_write(thandle_t h, void *buf, tmsize_t n)
{
    (void)h, (void)buf, (void)n;
    return -1;
}

static toff_t mem_seek(thandle_t h, toff_t off, int whence)
{
    tiff_mem *m = (tiff_mem *)h;
    toff_t base = whence == SEEK_CUR ? m->pos : whence == SEEK_END ? m->len : 0;
    if (off > UINT64_MAX - base)
        return (toff_t)-1;
    m->pos = base + off;
    return m->pos;
}

static int mem_close(thandle_t h)
{
    (void)h;
    return 0;
}

static toff_t mem_size(thandle_t h)
{
    return ((tiff_mem *)h)->len;
}

/* "Mapping" the buffer lets libtiff read uncompressed strips in place. */
static int mem_map(thandle_t h, void **base, toff_t *size)
{
    tiff_mem *m = (tiff_mem *)h;
    *base = (void *)m->data;
    *size = m->len;
    return 1;
}

static void mem_unmap(thandle_t h, void *base, toff_t size)
{
    (void)h, (void)base, (void)size;
}

static int on_error(TIFF *tif, void *user, const char *module, const char *fmt, va_list ap)
{
    (void)tif, (void)module;
    tiff_mem *m = user;
    if (!m->msg[0])
        vsnprintf(m->msg, sizeof m->msg, fmt, ap);
    return 1; /* handled: libtiff's global handler stays quiet */
}

static int on_warning(TIFF *tif, void *user, const char *module, const char *fmt, va_list ap)
{
    (void)tif, (void)user, (void)module, (void)fmt, (void)ap;
    return 1; /* unknown tags and the like: PIL ignores them too */
}

enum layout { L_GRAY, L_GRAY_INV, L_PALETTE, L_RGB, L_CMYK };

typedef struct tiff_conv {
    int layout, bps, spp;
    const uint16_t *cmap[3];
} tiff_conv;

/* Sample i of a row of bps-bit samples, as 0..255 (16-bit: high byte; sub-byte
 * depths scaled to 0..255 as PIL's "L;2" / "L;4" / "1" unpackers do) or, for a
 * palette, the raw index. */
static inline unsigned sample(const uint8_t *row, size_t i, int bps, int scale)
{
    if (bps == 8)
        return row[i];
    if (bps == 16)
        return ((const uint16_t *)row)[i] >> 8; /* libtiff gives native byte order */
    unsigned shift = 8 - bps - (unsigned)(i * bps % 8);
    unsigned v = (row[i * bps / 8] >> shift) & ((1u << bps) - 1);
    return scale ? v * 255 / ((1u << bps) - 1) : v;
}

static void convert_row(const tiff_conv *c, const uint8_t *src, uint8_t *dst, uint32_t W)
{
    const int spp = c->spp, bps = c->bps;
    for (uint32_t x = 0; x < W; x++, dst += 3) {
        size_t s = (size_t)x * spp;
        switch (c->layout) {
        case L_GRAY:
        case L_GRAY_INV: {
            unsigned v = sample(src, s, bps, 1);
            dst[0] = dst[1] = dst[2] = (uint8_t)(c->layout == L_GRAY ? v : 255 - v);
            break;
        }
        case L_PALETTE: {
            unsigned i = sample(src, s, bps, 0);
            dst[0] = (uint8_t)(c->cmap[0][i] >> 8);
            dst[1] = (uint8_t)(c->cmap[1][i] >> 8);
            dst[2] = (uint8_t)(c->cmap[2][i] >> 8);
            break;
        }
        case L_RGB:
            dst[0] = (uint8_t)sample(src, s, bps, 1);
            dst[1] = (uint8_t)sample(src, s + 1, bps, 1);
            dst[2] = (uint8_t)sample(src, s + 2, bps, 1);
            break;
        default: { /* L_CMYK, 8-bit: PIL's cmyk2rgb */
            unsigned nk = 255 - src[s + 3];
            dst[0] = enc_muldiv255(255 - src[s], nk);
            dst[1] = enc_muldiv255(255 - src[s + 1], nk);
            dst[2] = enc_muldiv255(255 - src[s + 2], nk);
        }
        }
    }
}

/* The layouts read directly (everything else: TIFFRGBAImage).  0 if not one. */
static int direct_layout(TIFF *tif, uint16_t photo, uint16_t bps, uint16_t spp, tiff_conv *c)
{
    uint16_t planar = PLANARCONFIG_CONTIG, sfmt = SAMPLEFORMAT_UINT, compression = COMPRESSION_NONE;
    TIFFGetFieldDefaulted(tif, TIFFTAG_PLANARCONFIG, &planar);
    TIFFGetFieldDefaulted(tif, TIFFTAG_SAMPLEFORMAT, &sfmt);
    TIFFGetFieldDefaulted(tif, TIFFTAG_COMPRESSION, &compression);
    if (planar != PLANARCONFIG_CONTIG || sfmt != SAMPLEFORMAT_UINT || spp < 1)
        return 0;
    int sub_byte = bps == 1 || bps == 2 || bps == 4;
    if (sub_byte && TIFFIsTiled(tif))
        return 0; /* tile rows are padded per tile: left to TIFFRGBAImage */
    *c = (tiff_conv){.bps = bps, .spp = spp};
    switch (photo) {
    case PHOTOMETRIC_MINISBLACK:
    case PHOTOMETRIC_MINISWHITE:
        c->layout = photo == PHOTOMETRIC_MINISBLACK ? L_GRAY : L_GRAY_INV;
        return sub_byte || bps == 8 || bps == 16;
    case PHOTOMETRIC_PALETTE:
        c->layout = L_PALETTE;
        return (sub_byte || bps == 8) && spp == 1 &&
               TIFFGetField(tif, TIFFTAG_COLORMAP, &c->cmap[0], &c->cmap[1], &c->cmap[2]) && c->cmap[2];
    case PHOTOMETRIC_RGB:
        c->layout = L_RGB;
        return (bps == 8 || bps == 16) && spp >= 3;
    case PHOTOMETRIC_YCBCR:
        /* libjpeg converts to RGB, as PIL asks libtiff to. */
        if (compression != COMPRESSION_JPEG || bps != 8 || spp != 3)
            return 0;
        if (!TIFFSetField(tif, TIFFTAG_JPEGCOLORMODE, JPEGCOLORMODE_RGB))
            return 0;
        c->layout = L_RGB;
        return 1;
    case PHOTOMETRIC_SEPARATED: {
        uint16_t inkset = INKSET_CMYK;
        TIFFGetFieldDefaulted(tif, TIFFTAG_INKSET, &inkset);
        c->layout = L_CMYK;
        return inkset == INKSET_CMYK && bps == 8 && spp >= 4;
    }
    default:
        return 0;
    }
}

static int read_direct(TIFF *tif, tiff_mem *m, const tiff_conv *c, uint32_t W, uint32_t H, uint8_t *rgb)
{
    if (!TIFFIsTiled(tif)) {
        tmsize_t sl = TIFFScanlineSize(tif);
        if (sl <= 0 || (uint64_t)sl < ((uint64_t)W * c->spp * c->bps + 7) / 8)
            return umg_err_set(UMG_EFORMAT, "corrupt TIFF: scanline size %lld for %u pixels", (long long)sl, W);
        uint8_t *row = _TIFFmalloc(sl);
        if (!row)
            return umg_err_set(UMG_ENOMEM, "TIFF: out of memory for a scanline");
        int rc = 0;
        for (uint32_t y = 0; y < H; y++) {
            if (TIFFReadScanline(tif, row, y, 0) < 0) {
                rc = umg_err_set(UMG_EFORMAT, "corrupt TIFF: row %u: %s", y, m->msg[0] ? m->msg : "unreadable");
                break;
            }
            convert_row(c, row, rgb + (size_t)y * W * 3, W);
        }
        _TIFFfree(row);
        return rc;
    }
    uint32_t tw = 0, th = 0;
    TIFFGetField(tif, TIFFTAG_TILEWIDTH, &tw);
    TIFFGetField(tif, TIFFTAG_TILELENGTH, &th);
    tmsize_t ts = TIFFTileSize(tif);
    const size_t px = (size_t)c->spp * c->bps / 8; /* bytes per pixel (bps 8 or 16 here) */
    if (tw == 0 || th == 0 || ts <= 0 || (uint64_t)ts < (uint64_t)tw * th * px)
        return umg_err_set(UMG_EFORMAT, "corrupt TIFF: tile %ux%u of %lld bytes", tw, th, (long long)ts);
    uint8_t *tile = _TIFFmalloc(ts);
    int rc = 0;
    if (!tile)
        rc = umg_err_set(UMG_ENOMEM, "TIFF: out of memory for a %ux%u tile", tw, th);
    for (uint32_t y0 = 0; y0 < H && !rc; y0 += th) {
        uint32_t rows = H - y0 < th ? H - y0 : th;
        /* one band of tiles, then converted row by row */
        uint8_t *band = malloc((size_t)rows * W * px);
        if (!band) {
            rc = umg_err_set(UMG_ENOMEM, "TIFF: out of memory for a band of tiles");
            break;
        }
        for (uint32_t x0 = 0; x0 < W && !rc; x0 += tw) {
            if (TIFFReadTile(tif, tile, x0, y0, 0, 0) < 0) {
                rc = umg_err_set(UMG_EFORMAT, "corrupt TIFF: tile at %u,%u: %s", x0, y0,
                                 m->msg[0] ? m->msg : "unreadable");
                break;
            }
            uint32_t cols = W - x0 < tw ? W - x0 : tw;
            for (uint32_t r = 0; r < rows; r++)
                memcpy(band + ((size_t)r * W + x0) * px, tile + (size_t)r * tw * px, (size_t)cols * px);
        }
        for (uint32_t r = 0; r < rows && !rc; r++)
            convert_row(c, band + (size_t)r * W * px, rgb + (size_t)(y0 + r) * W * 3, W);
        free(band);
    }
    _TIFFfree(tile);
    return rc;
}

/* Through TIFFRGBAImage, rows in stored order (the orientation is applied later,
 * like every format's). */
static int read_rgba(TIFF *tif, tiff_mem *m, uint32_t W, uint32_t H, uint8_t *rgb)
{
    char emsg[1024] = "";
    if (!TIFFRGBAImageOK(tif, emsg))
        return umg_err_set(UMG_EUNSUPPORTED, "unsupported TIFF: %s", emsg);
    TIFFRGBAImage img;
    if (!TIFFRGBAImageBegin(&img, tif, 1, emsg))
        return umg_err_set(UMG_EFORMAT, "corrupt TIFF: %s", emsg[0] ? emsg : m->msg);
    img.req_orientation = img.orientation; /* no flipping by libtiff */
    uint32_t *raster = _TIFFmalloc((tmsize_t)W * H * 4);
    int rc = 0;
    if (!raster)
        rc = umg_err_set(UMG_ENOMEM, "TIFF: out of memory for %ux%u pixels", W, H);
    else if (!TIFFRGBAImageGet(&img, raster, W, H))
        rc = umg_err_set(UMG_EFORMAT, "corrupt TIFF: %s", m->msg[0] ? m->msg : "image data unreadable");
    else
        for (size_t i = 0; i < (size_t)W * H; i++) {
            rgb[3 * i + 0] = (uint8_t)TIFFGetR(raster[i]);
            rgb[3 * i + 1] = (uint8_t)TIFFGetG(raster[i]);
            rgb[3 * i + 2] = (uint8_t)TIFFGetB(raster[i]);
        }
    _TIFFfree(raster);
    TIFFRGBAImageEnd(&img);
    return rc;
}

/* A GPS coordinate of the current (GPS) directory as 3 doubles: libtiff keeps
 * these rationals as float or double depending on its version. */
static int gps_triple(TIFF *tif, uint32_t tag, double out[3])
{
    const TIFFField *f = TIFFFieldWithTag(tif, tag);
    void *v = NULL;
    if (!f || !TIFFGetField(tif, tag, &v) || !v)
        return 0;
    int size = TIFFFieldSetGetSize(f);
    for (int i = 0; i < 3; i++)
        out[i] = size == 8 ? ((const double *)v)[i] : size == 4 ? ((const float *)v)[i] : NAN;
    return size == 4 || size == 8;
}

/* Capture metadata from IFD0 (Make, Model) and its EXIF and GPS sub-IFDs, read
 * through libtiff: the IFDs of a TIFF may sit anywhere in the file (libtiff writes
 * them after the pixels), so handing libexif the file would mean copying all of it. */
static void read_metadata(TIFF *tif, enc_image_meta *meta)
{
    char *make = NULL, *model = NULL;
    uint64_t exif_off = 0, gps_off = 0;
    TIFFGetField(tif, TIFFTAG_MAKE, &make);
    TIFFGetField(tif, TIFFTAG_MODEL, &model);
    enc_meta_set_camera(meta, make, model);
    int has_exif = TIFFGetField(tif, TIFFTAG_EXIFIFD, &exif_off), has_gps = TIFFGetField(tif, TIFFTAG_GPSIFD, &gps_off);
    if (has_exif && exif_off && TIFFReadEXIFDirectory(tif, exif_off)) {
        char *dto = NULL, *off = NULL;
        TIFFGetField(tif, EXIFTAG_DATETIMEORIGINAL, &dto);
        TIFFGetField(tif, EXIFTAG_OFFSETTIMEORIGINAL, &off);
        enc_meta_set_taken_at(meta, dto, off);
    }
    if (has_gps && gps_off && TIFFReadGPSDirectory(tif, gps_off)) {
        char *lat_ref = NULL, *lon_ref = NULL;
        double lat[3], lon[3];
        if (TIFFGetField(tif, GPSTAG_LATITUDEREF, &lat_ref) && TIFFGetField(tif, GPSTAG_LONGITUDEREF, &lon_ref) &&
            gps_triple(tif, GPSTAG_LATITUDE, lat) && gps_triple(tif, GPSTAG_LONGITUDE, lon))
            enc_meta_set_gps(meta, lat, lat_ref, lon, lon_ref);
    }
}

int enc_decode_tiff(const uint8_t *data, size_t len, const enc_decode_opts *o, enc_image *out, enc_image_meta *meta)
{
    tiff_mem m = {.data = data, .len = len};
    TIFFOpenOptions *opts = TIFFOpenOptionsAlloc();
    if (!opts)
        return umg_err_set(UMG_ENOMEM, "TIFF: cannot create decoder");
    TIFFOpenOptionsSetMaxSingleMemAlloc(opts, ENC_TIFF_MAX_ALLOC);
    TIFFOpenOptionsSetErrorHandlerExtR(opts, on_error, &m);
    TIFFOpenOptionsSetWarningHandlerExtR(opts, on_warning, &m);
    TIFF *tif = TIFFClientOpenExt("TIFF", "r", (thandle_t)&m, mem_read, mem_write, mem_seek, mem_close, mem_size,
                                  mem_map, mem_unmap, opts);
    TIFFOpenOptionsFree(opts);
    if (!tif)
        return umg_err_set(UMG_EFORMAT, "corrupt TIFF: %s", m.msg[0] ? m.msg : "cannot read the header");
    uint32_t W = 0, H = 0;
    uint16_t bps = 1, spp = 1, photo = 0, orientation = ORIENTATION_TOPLEFT;
    uint8_t *rgb = NULL;
    int rc = 0;
    TIFFGetField(tif, TIFFTAG_IMAGEWIDTH, &W);
    TIFFGetField(tif, TIFFTAG_IMAGELENGTH, &H);
    if ((rc = enc_check_size("TIFF", W, H, o->max_pixels)))
        goto done;
    TIFFGetFieldDefaulted(tif, TIFFTAG_BITSPERSAMPLE, &bps);
    TIFFGetFieldDefaulted(tif, TIFFTAG_SAMPLESPERPIXEL, &spp);
    TIFFGetFieldDefaulted(tif, TIFFTAG_ORIENTATION, &orientation);
    if (orientation < 1 || orientation > 8)
        orientation = 1;
    if (!TIFFGetField(tif, TIFFTAG_PHOTOMETRIC, &photo)) {
        rc = umg_err_set(UMG_EFORMAT, "corrupt TIFF: no PhotometricInterpretation tag");
        goto done;
    }
    rgb = malloc((size_t)W * H * 3);
    if (!rgb) {
        rc = umg_err_set(UMG_ENOMEM, "TIFF: out of memory for %ux%u pixels", W, H);
        goto done;
    }
    tiff_conv c;
    if (direct_layout(tif, photo, bps, spp, &c))
        rc = read_direct(tif, &m, &c, W, H, rgb);
    else
        rc = read_rgba(tif, &m, W, H, rgb);
    if (rc)
        goto done;
    out->width = (int)W;
    out->height = (int)H;
    out->rgb = rgb;
    rgb = NULL;
    meta->orientation = orientation;
    meta->full_width = (int)(orientation >= 5 ? H : W);
    meta->full_height = (int)(orientation >= 5 ? W : H);
    if ((rc = enc_apply_orientation(out, orientation)))
        enc_image_free(out);
    else
        read_metadata(tif, meta); /* last: it leaves the image's directory */
done:
    free(rgb);
    TIFFClose(tif);
    return rc;
}
