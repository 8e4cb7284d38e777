/* enc_thumb.h - a small JPEG preview of a photo, made from pixels already
 * decoded (the thumbnail the server keeps per image: GET /v1/images/{id}/thumb,
 * docs/http.md "Thumbnails").
 *
 * Input: the decoded, EXIF-oriented pixels (enc_image_decode applies the
 * orientation), so the preview is upright and costs no second decode.  Output:
 * a baseline JPEG (libjpeg-turbo, 4:2:0, optimized Huffman tables, no EXIF or
 * other metadata: nothing of the original's GPS or camera data goes into it).
 *
 * Size: the longer side becomes min(long_side, the longer side of the pixels
 * given), the shorter one keeps the aspect (rounded, at least 1).  Never
 * upscaled.  When the decoder shrank a JPEG by its DCT (enc_decode_opts.fast_for,
 * the server's default --decode fast) the thumbnail is made from those pixels;
 * the decode keeps at least 1.5x the size the preprocessing resizes to (with
 * ENC_FIT_PAD and a 224 input, 336 px on the longer side), so a photo of 320 px
 * or more still gives a full 320 px thumbnail (a 4000x3000 photo decodes at 1/8,
 * 500x375; 500x375 and 640x427 ones decode in full).  The resize is
 * enc_image_resize (PIL's antialiased bicubic), a proper low-pass filter for downscaling, after a box average by
 * an integer factor for photos over twice the thumbnail's size (enc_thumb.c).
 *
 * Reentrant; errors through umg_err_set: UMG_EINVAL (bad arguments), UMG_ENOMEM. */
#ifndef ENC_THUMB_H
#define ENC_THUMB_H

#include <stddef.h>
#include <stdint.h>

#include "enc_image.h"

/* What the server stores.  320 px: a results grid shows previews ~150-200 CSS px
 * wide, so 320 is sharp at 2x device pixels, and it is about what a DCT-shrunk
 * decode delivers anyway (336 px and more on the long side), so fast decoding
 * loses nothing; ~8-17 KB at quality 80 (docs/benchmarks.md, "Thumbnails"). */
#define ENC_THUMB_LONG_SIDE 320
#define ENC_THUMB_QUALITY 80

/* The thumbnail size of a w x h photo (w, h >= 1) for long_side (>= 1). */
void enc_thumb_size(int w, int h, int long_side, int *tw, int *th);

/* Encode img as a thumbnail (above).  *jpeg is malloc'ed (free()), *len its
 * bytes.  quality 1..100. */
int enc_thumb_make(const enc_image *img, int long_side, int quality, uint8_t **jpeg, size_t *len);

#endif
