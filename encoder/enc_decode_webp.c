/* enc_decode_webp.c - WebP through libwebp: lossy, lossless, with alpha (dropped,
 * not composited, as PIL's convert("RGB")), and animated WebP's first frame on
 * its canvas (libwebp's animation decoder, as PIL uses it: outside the first
 * frame the canvas is transparent black, which converts to black).
 * The orientation comes from the EXIF chunk, applied as for a JPEG. */
#include "enc_decode.h"
#include "umg_error.h"

#include <stdlib.h>
#include <string.h>

#include <webp/decode.h>
#include <webp/demux.h>

static const char *status_name(VP8StatusCode st)
{
    switch (st) {
    case VP8_STATUS_OUT_OF_MEMORY: return "out of memory";
    case VP8_STATUS_INVALID_PARAM: return "invalid parameter";
    case VP8_STATUS_BITSTREAM_ERROR: return "bitstream error";
    case VP8_STATUS_UNSUPPORTED_FEATURE: return "unsupported feature";
    case VP8_STATUS_SUSPENDED: return "suspended";
    case VP8_STATUS_USER_ABORT: return "aborted";
    case VP8_STATUS_NOT_ENOUGH_DATA: return "truncated (not enough data)";
    default: return "error";
    }
}

/* EXIF chunk (VP8X files only): orientation and capture metadata. */
static void read_exif(const WebPData *wd, int *orientation, enc_image_meta *meta)
{
    WebPDemuxer *dmx = WebPDemux(wd);
    if (!dmx)
        return;
    WebPChunkIterator it;
    if ((WebPDemuxGetI(dmx, WEBP_FF_FORMAT_FLAGS) & EXIF_FLAG) && WebPDemuxGetChunk(dmx, "EXIF", 1, &it)) {
        enc_exif_read(it.chunk.bytes, it.chunk.size, orientation, meta);
        WebPDemuxReleaseChunkIterator(&it);
    }
    WebPDemuxDelete(dmx);
}

/* The first frame of an animation: RGBA canvas, alpha dropped. */
static int first_frame(const WebPData *wd, int W, int H, uint8_t *rgb)
{
    WebPAnimDecoderOptions opt;
    if (!WebPAnimDecoderOptionsInit(&opt))
        return umg_err_set(UMG_EINTERNAL, "WebP: libwebp version mismatch");
    opt.color_mode = MODE_RGBA;
    opt.use_threads = 0;
    WebPAnimDecoder *dec = WebPAnimDecoderNew(wd, &opt);
    if (!dec)
        return umg_err_set(UMG_EFORMAT, "corrupt WebP: animation cannot be read");
    WebPAnimInfo info;
    uint8_t *canvas = NULL;
    int ts, rc = 0;
    if (!WebPAnimDecoderGetInfo(dec, &info) || (int)info.canvas_width != W || (int)info.canvas_height != H) {
        rc = umg_err_set(UMG_EFORMAT, "corrupt WebP: animation canvas does not match the header");
    } else if (!WebPAnimDecoderGetNext(dec, &canvas, &ts) || !canvas) {
        rc = umg_err_set(UMG_EFORMAT, "corrupt WebP: first frame cannot be decoded");
    } else {
        size_t n = (size_t)W * H;
        for (size_t i = 0; i < n; i++) {
            rgb[3 * i + 0] = canvas[4 * i + 0];
            rgb[3 * i + 1] = canvas[4 * i + 1];
            rgb[3 * i + 2] = canvas[4 * i + 2];
        }
    }
    WebPAnimDecoderDelete(dec);
    return rc;
}

int enc_decode_webp(const uint8_t *data, size_t len, const enc_decode_opts *o, enc_image *out, enc_image_meta *meta)
{
    WebPBitstreamFeatures f;
    VP8StatusCode st = WebPGetFeatures(data, len, &f);
    if (st != VP8_STATUS_OK)
        return umg_err_set(st == VP8_STATUS_OUT_OF_MEMORY ? UMG_ENOMEM : UMG_EFORMAT, "corrupt WebP: %s",
                           status_name(st));
    int rc = enc_check_size("WebP", (uint64_t)(f.width > 0 ? f.width : 0), (uint64_t)(f.height > 0 ? f.height : 0),
                            o->max_pixels);
    if (rc)
        return rc;
    const int W = f.width, H = f.height;
    WebPData wd = {data, len};
    int orientation = 1;
    read_exif(&wd, &orientation, meta);
    uint8_t *rgb = malloc((size_t)W * H * 3);
    if (!rgb)
        return umg_err_set(UMG_ENOMEM, "WebP: out of memory for %dx%d pixels", W, H);
    if (f.has_animation) {
        rc = first_frame(&wd, W, H, rgb);
    } else {
        WebPDecoderConfig cfg;
        if (!WebPInitDecoderConfig(&cfg)) {
            free(rgb);
            return umg_err_set(UMG_EINTERNAL, "WebP: libwebp version mismatch");
        }
        /* Default options (fancy upsampling), as PIL's decoder uses them. */
        cfg.output.colorspace = MODE_RGB;
        cfg.output.is_external_memory = 1;
        cfg.output.u.RGBA.rgba = rgb;
        cfg.output.u.RGBA.stride = W * 3;
        cfg.output.u.RGBA.size = (size_t)W * H * 3;
        st = WebPDecode(data, len, &cfg);
        WebPFreeDecBuffer(&cfg.output);
        if (st != VP8_STATUS_OK)
            rc = umg_err_set(st == VP8_STATUS_OUT_OF_MEMORY ? UMG_ENOMEM : UMG_EFORMAT, "corrupt WebP: %s",
                             status_name(st));
    }
    if (rc) {
        free(rgb);
        return rc;
    }
    out->width = W;
    out->height = H;
    out->rgb = rgb;
    meta->orientation = orientation;
    meta->full_width = orientation >= 5 ? H : W;
    meta->full_height = orientation >= 5 ? W : H;
    if ((rc = enc_apply_orientation(out, orientation)))
        enc_image_free(out);
    return rc;
}
