/* enc_image.h - image decoding and CLIP preprocessing.
 *
 * Decoding: the format is decided by the file's leading bytes (enc_image_sniff),
 * never by its name: JPEG (libjpeg-turbo), PNG (libpng), HEIC/HEIF and AVIF
 * (libheif), WebP (libwebp), TIFF (libtiff), GIF (giflib), each converted to 8-bit
 * RGB the way PIL's Image.open(f).convert("RGB") does, with the EXIF orientation
 * applied first (ImageOps.exif_transpose).  Alpha is dropped, not composited.
 * Images beyond max_pixels are refused before any pixel buffer is allocated
 * (decompression bombs).  Animated or multi-page files give their first frame/page.
 *
 * Decoding details (checked against Pillow 9.4 / libheif in tests/test_image.c):
 *  - JPEG pixels are bit-identical to PIL's (same libjpeg-turbo, same settings).
 *    CMYK/YCCK JPEGs are read as Adobe-inverted CMYK and converted as PIL does.
 *    The orientation is the IFD0 Orientation tag (1..8) of the first APP1 "Exif"
 *    block, applied as ImageOps.exif_transpose; width/height are after it.  A
 *    broken EXIF block is ignored (orientation 1), not an error.
 *  - A truncated JPEG is an error (libjpeg only warns; PIL refuses it too).  Other
 *    libjpeg warnings (corrupt entropy data, extraneous bytes) are ignored as PIL
 *    ignores them: such files decode.  More than 500 scans is refused.
 *  - PNG: 16-bit samples keep their high byte.  This matches PIL for RGB(A) and
 *    gray+alpha; for 16-bit grayscale PIL 9.4 (mode "I") clamps values to 255
 *    instead, which whitens the photo, so there we deliberately differ.  tRNS and
 *    alpha are dropped without compositing.  Ancillary chunks (ICC profiles, text,
 *    gamma, ...) are skipped unread; no colour management, as in PIL.
 *  - HEIC/HEIF/AVIF: the primary image as libheif decodes it (heif-convert's
 *    pixels), with libheif applying the container's irot/imir/clap transforms.
 *    EXIF Orientation inside a HEIF is NOT applied: HEIF says irot/imir are the
 *    truth, and phones write both (applying both would rotate twice).  Thumbnails
 *    are never used.  Higher bit depths come out as libheif's 8-bit conversion.
 *  - WebP: lossy, lossless, with alpha (dropped); animated: the first frame on its
 *    canvas (transparent areas black, as PIL's first frame converted to RGB).
 *    Orientation from the EXIF chunk.
 *  - TIFF: 8- and 16-bit (high byte, as PIL for RGB/RGBA; 16-bit gray keeps its
 *    high byte too, where PIL 9.4 clamps: the same deliberate difference as PNG),
 *    any compression libtiff reads (LZW, Deflate, JPEG, PackBits, ...), gray,
 *    palette, RGB, RGBA (unassociated alpha dropped unchanged, as PIL), CMYK;
 *    the first page (IFD) only; orientation from the Orientation tag.
 *  - GIF: the first frame through its palette (local or global), on the logical
 *    screen as Pillow 9.4 fills it (enc_decode_gif.c).
 *  - All functions are reentrant: no global state; error details go to the
 *    calling thread's umg_err_msg(), naming the format ("corrupt HEIC: ...").
 *
 * Preprocessing (CLIP's, as in OpenAI's clip.load and HF CLIPImageProcessor):
 * resize the shorter side to `resize_shortest` with PIL's antialiased bicubic
 * computed in 8-bit fixed point (the longer side becomes
 * int(resize_shortest * long / short)), center crop crop_w x crop_h (offsets
 * round((W - crop_w) / 2) with Python's round-half-even), scale to [0,1],
 * normalize with mean/std.  Output float32 [3, crop_h, crop_w], C,H,W. */
#ifndef ENC_IMAGE_H
#define ENC_IMAGE_H

#include <stddef.h>
#include <stdint.h>

/* 64 Mpx: larger than any camera photo users ingest, small enough that the RGB
 * buffer (192 MB) cannot take a server down. */
#define ENC_IMAGE_MAX_PIXELS_DEFAULT (64ull * 1024 * 1024)

/* An 8-bit RGB image, rows top to bottom, pixels interleaved R,G,B.
 * The image owns rgb; free with enc_image_free. */
typedef struct enc_image {
    int width, height;
    uint8_t *rgb; /* width * height * 3 bytes */
} enc_image;

/* Decode an encoded image held in memory (any format above, decided by
 * enc_image_sniff), exactly (full resolution).  On success out->rgb is malloc'ed
 * and owned by the caller.
 * Errors: UMG_EUNSUPPORTED ("unsupported format: video/mp4"), UMG_EFORMAT
 * (corrupt/truncated, the message names the format),
 * UMG_ETOOBIG (width*height > max_pixels, or a dimension > 65535), UMG_ENOMEM. */
int enc_image_decode(const void *data, size_t len, uint64_t max_pixels, enc_image *out);
/* Read a file and decode it (same errors, plus UMG_ENOENT / UMG_EIO / UMG_EPERM). */
int enc_image_load(const char *path, uint64_t max_pixels, enc_image *out);
void enc_image_free(enc_image *img); /* frees rgb, sets it NULL; NULL-safe */

/* Copy the rectangle [x, x+w) x [y, y+h), clipped to the image, into a new image
 * (out->rgb malloc'ed, owned by the caller).  UMG_EINVAL if the clipped rectangle
 * is empty. */
int enc_image_crop(const enc_image *src, int x, int y, int w, int h, enc_image *out);

/* Resize to exactly dst_w x dst_h with PIL's antialiased bicubic (8-bit); the result
 * is bit-identical to Image.resize((dst_w, dst_h), Image.BICUBIC).  out->rgb is
 * malloc'ed, owned by the caller.  UMG_EINVAL for a size <= 0, UMG_ETOOBIG beyond
 * ENC_IMAGE_MAX_PIXELS_DEFAULT. */
int enc_image_resize(const enc_image *src, int dst_w, int dst_h, enc_image *out);

/* How the photo is fitted into the square network input.
 *   ENC_FIT_CROP  CLIP's own preprocessing (above): exact reference embeddings,
 *                 but the borders of a non-square photo are cut off.
 *   ENC_FIT_PAD   resize the LONGER side to crop_w (same PIL bicubic), paste it
 *                 centered on a crop_w x crop_h canvas whose padding is 0 after
 *                 normalization (the mean colour): the whole photo is seen, so
 *                 the dense patch grid covers every box of it.  Used at ingest for
 *                 region search (see docs/regions.md).
 *                 The shorter side is int(crop_w * short / long), truncated, at
 *                 least 1, exactly as tools/umgtrain/preprocess.py (the Python twin
 *                 the region model is trained with); offsets (S - size) / 2 with
 *                 integer division.  For a non-square input the photo is fitted
 *                 inside crop_w x crop_h the same way.
 * In CROP mode a resize_shortest smaller than the crop pads with black (value 0
 * before normalization), as torchvision's CenterCrop does. */
enum enc_fit { ENC_FIT_CROP = 0, ENC_FIT_PAD = 1 };

typedef struct enc_preproc {
    int resize_shortest; /* shorter side after resize (224 for CLIP), ENC_FIT_CROP */
    int crop_w, crop_h;  /* network input size (224 x 224) */
    float mean[3], std[3];
    int fit;             /* enum enc_fit; ENC_FIT_CROP by default */
} enc_preproc;

/* CLIP defaults for a model of the given input size. */
void enc_preproc_default(enc_preproc *p, int image_size);
/* Defaults, overridden by <model_dir>/preprocessor_config.json when it exists
 * (size / shortest_edge, crop_size, image_mean, image_std).  A missing file is
 * not an error; a corrupt one is UMG_EFORMAT, as is a crop_size other than
 * image_size; "size": {"height", "width"} (a fixed-size resize, not CLIP's) is
 * UMG_EUNSUPPORTED.  On error *p holds the defaults. */
int enc_preproc_load(const char *model_dir, int image_size, enc_preproc *p);

/* Where the original photo lands in the network input, to map boxes from
 * original pixels to input pixels:
 *   x_in = x_orig * scale_x + off_x,   y_in = y_orig * scale_y + off_y
 * CROP: scale_x = resized_w / width, off_x = -crop_x (negative: cut off; positive
 *       when the crop is wider than the resized photo and pads it);
 * PAD:  scale_x = resized_w / width, off_x = pad_left.
 * Pure arithmetic, no allocation; width/height <= 0 leave all but input_w/h at 0. */
typedef struct enc_preproc_geom {
    int resized_w, resized_h; /* size of the photo after resizing */
    int off_x, off_y;         /* its top-left corner in input pixels (CROP: -crop_x, -crop_y) */
    float scale_x, scale_y;   /* resized / original */
    int input_w, input_h;     /* network input size */
} enc_preproc_geom;
void enc_preproc_geometry(const enc_preproc *p, int width, int height, enc_preproc_geom *g);

/* Preprocess img into out[3 * crop_h * crop_w] according to p->fit.  Allocates temporary buffers
 * (this runs once per image, outside the model's forward pass).  Only the part of
 * the resized photo that is visible in the input is computed, with values
 * identical to resizing everything first.  The result is bit-identical to the
 * reference (PIL + torchvision, float32). */
int enc_preprocess(const enc_image *img, const enc_preproc *p, float *out);

/* ---------------------------------------------------------------- formats */

enum enc_image_format {
    ENC_FMT_UNKNOWN = 0, /* not an image this library decodes */
    ENC_FMT_JPEG, ENC_FMT_PNG, ENC_FMT_HEIC, ENC_FMT_AVIF, ENC_FMT_WEBP, ENC_FMT_TIFF, ENC_FMT_GIF,
};

/* Leading bytes enc_image_sniff needs to tell every format it knows apart (fewer
 * are fine: it decides on what it has). */
#define ENC_IMAGE_SNIFF_BYTES 64

/* The format of an encoded file from its leading bytes (magic numbers, never the
 * name).  *what (if what != NULL) gets a static description: the format's name
 * ("JPEG", "PNG", "HEIC", "AVIF", "WebP", "TIFF", "GIF") when supported; for a
 * recognised file of another kind its MIME type ("video/mp4", "video/quicktime",
 * "application/pdf", "application/zip", "image/bmp", ...); NULL if unrecognised. */
int enc_image_sniff(const void *data, size_t len, const char **what);
const char *enc_image_format_name(int format); /* "JPEG", ...; "unknown" */

/* Capture metadata from EXIF (JPEG APP1, HEIF Exif item, WebP EXIF chunk, TIFF
 * IFDs).  Each field has its own known flag; a missing or unreadable field is
 * unknown, never an error (garbage EXIF leaves everything unknown). */
typedef struct enc_image_meta {
    int format;                 /* enum enc_image_format */
    int full_width, full_height; /* the photo's size, oriented, before any fast-decode shrink */
    int orientation;            /* EXIF orientation applied, 1..8 (1: none) */
    int taken_at_known;         /* DateTimeOriginal */
    char taken_at[32];          /* ISO 8601 "2019-07-14T12:00:00", + "+02:00" when offset_known */
    int offset_known;           /* OffsetTimeOriginal */
    int offset_minutes;         /* east of UTC */
    int camera_known;
    char camera[128];           /* brand and Model joined ("Fujifilm X-T3" from "FUJIFILM"
                                 * + "X-T3"): well-known makes as their brand is written,
                                 * the make not repeated when the model starts with it */
    int gps_known;
    double lat, lon;            /* signed decimal degrees (S and W negative) */
} enc_image_meta;

/* How to decode.  Zero-initialised = enc_image_decode's behaviour. */
typedef struct enc_decode_opts {
    uint64_t max_pixels;         /* 0: ENC_IMAGE_MAX_PIXELS_DEFAULT; checked on the full size */
    /* Fast path (NULL: exact, full resolution): the image will be preprocessed
     * with *fast_for, so a JPEG may be decoded shrunk by its DCT (1/2, 1/4, 1/8) as
     * PIL's draft() picks it: the largest scale whose result is still at least the
     * size enc_preproc_geometry resizes to (both sides), then the exact bicubic
     * resize runs from there.  Not bit-identical to the exact path (embedding
     * cosine >= 0.999 measured, docs/benchmarks.md); other formats decode in full
     * (HEIF thumbnails are other pictures, never used). */
    const enc_preproc *fast_for;
    int threads;                 /* HEIF tile-decoding threads; 0: libheif's default */
} enc_decode_opts;

/* enc_image_decode with options; meta (may be NULL) receives the format, size and
 * capture metadata.  Same errors as enc_image_decode. */
int enc_image_decode_ex(const void *data, size_t len, const enc_decode_opts *opts, enc_image *out,
                        enc_image_meta *meta);
/* enc_image_load with options (same errors). */
int enc_image_load_ex(const char *path, const enc_decode_opts *opts, enc_image *out, enc_image_meta *meta);

/* The "--decode" names: "exact" -> 0, "fast" -> 1; UMG_EINVAL otherwise. */
int enc_decode_mode_parse(const char *name, int *fast);

#endif
