/* enc_decode.h - internal to umg_image (not installed, not for callers): what the
 * per-format decoders (enc_image.c, enc_decode_*.c) and the EXIF reader share.
 *
 * Every decoder has the same contract: on success out->rgb (malloc'ed, owned by
 * the caller) holds the oriented 8-bit RGB image and meta->full_width/height its
 * oriented full size; on failure out->rgb is NULL, nothing leaks, and the error
 * (umg_err_set) names the format.  max_pixels is checked on the header's size
 * before any pixel buffer is allocated.  meta is never NULL here. */
#ifndef ENC_DECODE_H
#define ENC_DECODE_H

#include <stddef.h>
#include <stdint.h>

#include "enc_image.h"

/* Neither format can describe more per side in practice; JPEG cannot at all. */
#define ENC_IMAGE_MAX_SIDE 65535

/* UMG_EFORMAT for a zero size, UMG_ETOOBIG beyond ENC_IMAGE_MAX_SIDE per side or
 * max_pixels in all; fmt names the format in the message. */
int enc_check_size(const char *fmt, uint64_t w, uint64_t h, uint64_t max_pixels);

/* Apply EXIF orientation o (1..8, as PIL's ImageOps.exif_transpose) to img,
 * replacing its buffer; 5-8 swap width and height.  Other values: no change. */
int enc_apply_orientation(enc_image *img, int o);

/* PIL's CMYK -> RGB (Convert.c cmyk2rgb): r = (255 - c) * (255 - k) / 255 rounded,
 * computed as round(a * b / 255) exactly.  Adobe JPEGs store inverted CMYK, which
 * PIL reads as "CMYK;I": there a = c', b = k' directly. */
static inline uint8_t enc_muldiv255(unsigned a, unsigned b)
{
    unsigned t = a * b + 128;
    return (uint8_t)(((t >> 8) + t) >> 8);
}

/* Read an EXIF block: a TIFF structure ("II*\0" / "MM\0*"), optionally behind the
 * "Exif\0\0" header of a JPEG APP1 segment.  Sets *orientation (1 when absent or
 * invalid; may be NULL) and the capture fields of meta (may be NULL).  Garbage
 * leaves everything unknown; never an error. */
void enc_exif_read(const uint8_t *data, size_t len, int *orientation, enc_image_meta *meta);

/* The capture fields from EXIF values as strings/numbers, validated (enc_exif.c;
 * for containers whose EXIF is not read through libexif, TIFF's through libtiff):
 * DateTimeOriginal "YYYY:MM:DD HH:MM:SS" + OffsetTimeOriginal "+HH:MM" (may be
 * NULL); Make and Model (either may be NULL); GPS degrees/minutes/seconds and
 * their "N"/"S", "E"/"W" references.  Invalid values leave the fields unknown. */
void enc_meta_set_taken_at(enc_image_meta *meta, const char *datetime, const char *offset);
void enc_meta_set_camera(enc_image_meta *meta, const char *make, const char *model);
void enc_meta_set_gps(enc_image_meta *meta, const double lat_dms[3], const char *lat_ref, const double lon_dms[3],
                      const char *lon_ref);

/* The per-format decoders (enc_decode_<format>.c). */
int enc_decode_heif(const uint8_t *data, size_t len, int format, const enc_decode_opts *o, enc_image *out,
                    enc_image_meta *meta);
int enc_decode_webp(const uint8_t *data, size_t len, const enc_decode_opts *o, enc_image *out, enc_image_meta *meta);
int enc_decode_tiff(const uint8_t *data, size_t len, const enc_decode_opts *o, enc_image *out, enc_image_meta *meta);
int enc_decode_gif(const uint8_t *data, size_t len, const enc_decode_opts *o, enc_image *out, enc_image_meta *meta);

#endif
