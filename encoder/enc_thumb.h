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
 * upscaled: when the decoder shrank a JPEG by its DCT (enc_decode_opts.fast_for,
 * the server's default --decode fast, which keeps the decoded photo at least
 * the size the preprocessing resizes it to: with ENC_FIT_PAD the longer side
 * 224 px), the thumbnail is made from those pixels and is then smaller than
 * long_side whenever they are (a 500x375 photo decodes at 1/2, 250x188, and so
 * is its thumbnail; a 640x427 one at 1/2, 320x214): never enlarged beyond the
 * pixels there are.  The resize is enc_image_resize (PIL's antialiased
 * bicubic), a proper low-pass filter for downscaling, after a box average by
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
 * decode delivers anyway (224..448 px on the long side), so fast decoding loses
 * little; ~8-17 KB at quality 80 (docs/benchmarks.md, "Thumbnails"). */
#define ENC_THUMB_LONG_SIDE 320
#define ENC_THUMB_QUALITY 80

/* The thumbnail size of a w x h photo (w, h >= 1) for long_side (>= 1). */
void enc_thumb_size(int w, int h, int long_side, int *tw, int *th);

/* Encode img as a thumbnail (above).  *jpeg is malloc'ed (free()), *len its
 * bytes.  quality 1..100. */
int enc_thumb_make(const enc_image *img, int long_side, int quality, uint8_t **jpeg, size_t *len);

#endif
