/* fuzz_image.c - libFuzzer target over one image decoder (issue 17), compiled once
 * per format by tests/fuzz/CMakeLists.txt with FUZZ_FORMAT set to an
 * enum enc_image_format value: fuzz_image_jpeg, _png, _heif (HEIC and AVIF),
 * _webp, _tiff, _gif.  Inputs of another format are rejected (return -1: not
 * added to the corpus), so each target spends its time in its own decoder.
 *
 * Every input goes through enc_image_decode_ex with capture metadata (EXIF
 * parsing for JPEG/HEIF/WebP/TIFF); a JPEG also through the fast (DCT-scaled)
 * path.  Checked: a success has a consistent image, a failure a known error code,
 * an empty image and a message; ASan/UBSan/LSan catch the rest. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "enc_image.h"
#include "umg_error.h"

/* Small enough that a fuzzer's input cannot make it allocate much (the limit is
 * checked from the header, before any pixel buffer). */
#define FUZZ_MAX_PIXELS (4u << 20)

#define CHECK(cond)                                                                                 \
    do {                                                                                            \
        if (!(cond)) {                                                                              \
            fprintf(stderr, "%s:%d: check failed: %s (%s)\n", __FILE__, __LINE__, #cond, umg_err_msg()); \
            abort();                                                                                \
        }                                                                                           \
    } while (0)

static void decode_once(const uint8_t *data, size_t size, const enc_preproc *fast_for)
{
    enc_decode_opts o = {.max_pixels = FUZZ_MAX_PIXELS, .fast_for = fast_for, .threads = 1};
    enc_image im;
    enc_image_meta meta;
    int rc = enc_image_decode_ex(data, size, &o, &im, &meta);
    if (rc == 0) {
        CHECK(im.rgb && im.width > 0 && im.height > 0);
        CHECK((uint64_t)im.width * im.height <= FUZZ_MAX_PIXELS);
        CHECK(meta.full_width >= im.width || meta.full_width >= im.height);
        CHECK(!meta.taken_at_known || strlen(meta.taken_at) >= 19);
        CHECK(!meta.gps_known || (meta.lat >= -90 && meta.lat <= 90 && meta.lon >= -180 && meta.lon <= 180));
        /* touch every byte: an uninitialised or short buffer shows up under the sanitizers */
        unsigned sum = 0;
        for (size_t i = 0; i < (size_t)im.width * im.height * 3; i++)
            sum += im.rgb[i];
        (void)sum;
        enc_image_free(&im);
    } else {
        CHECK(rc == UMG_EFORMAT || rc == UMG_ETOOBIG || rc == UMG_EUNSUPPORTED || rc == UMG_ENOMEM);
        CHECK(im.rgb == NULL);
        CHECK(umg_err_msg()[0] != 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fmt = enc_image_sniff(data, size, NULL);
    int want = FUZZ_FORMAT;
    if (!(fmt == want || (want == ENC_FMT_HEIC && fmt == ENC_FMT_AVIF)))
        return -1;
    decode_once(data, size, NULL);
    if (fmt == ENC_FMT_JPEG) {
        enc_preproc p;
        enc_preproc_default(&p, 32);
        decode_once(data, size, &p);
    }
    return 0;
}
