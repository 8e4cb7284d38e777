#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* strcasestr */
#endif
/* test_image.c - decoding, EXIF orientation, resize, CLIP preprocessing and fit-pad,
 * geometry, preprocessor_config.json, hostile files.
 *
 * Expected pixels come from Pillow (tools/make_test_images.py writes
 * tests/fixtures/images/) and from the reference CLIP preprocessing
 * (tests/fixtures/clip-tiny/pixels). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jpeglib.h>

#include "enc_decode.h" /* enc_meta_set_camera */
#include "enc_image.h"
#include "enc_thumb.h"
#include "test_util.h"
#include "umg_error.h"

#define IMG_DIR UMG_FIXTURES_DIR "/images"
#define CLIP_DIR UMG_FIXTURES_DIR "/clip-tiny"
#define MAXPX ENC_IMAGE_MAX_PIXELS_DEFAULT

/* Fixture bytes as uint8_t or float buffers (tu_read_file, void * for either). */
static void *read_all(const char *path, size_t *len) { return tu_read_file(path, len); }

/* "name w h [a b]" from the fixture manifest; returns the number of integers read. */
static int manifest(const char *name, int v[4])
{
    /* make_test_images.py's, then make_format_images.py's */
    static const char *const files[] = {IMG_DIR "/manifest.txt", IMG_DIR "/manifest_formats.txt"};
    int found = 0;
    for (int i = 0; i < 2 && !found; i++) {
        FILE *f = fopen(files[i], "r");
        assert_non_null(f);
        char line[256], n[128];
        while (fgets(line, sizeof line, f)) {
            int k = sscanf(line, "%127s %d %d %d %d", n, &v[0], &v[1], &v[2], &v[3]);
            if (k >= 3 && strcmp(n, name) == 0) {
                found = k - 1;
                break;
            }
        }
        fclose(f);
    }
    if (!found)
        fail_msg("%s not in manifest.txt", name);
    return found;
}

/* Decoded image must equal NAME.rgb byte for byte. */
static void expect_rgb(const enc_image *im, const char *rgb_name)
{
    int v[4];
    manifest(rgb_name, v);
    char path[512];
    snprintf(path, sizeof path, IMG_DIR "/%s", rgb_name);
    size_t len;
    uint8_t *want = read_all(path, &len);
    assert_int_equal(im->width, v[0]);
    assert_int_equal(im->height, v[1]);
    assert_int_equal(len, (size_t)v[0] * v[1] * 3);
    size_t ndiff = 0;
    int maxd = 0;
    for (size_t i = 0; i < len; i++) {
        int d = abs((int)im->rgb[i] - (int)want[i]);
        ndiff += d != 0;
        if (d > maxd)
            maxd = d;
    }
    if (ndiff)
        fail_msg("%s: %zu of %zu bytes differ from Pillow (max %d)", rgb_name, ndiff, len, maxd);
    free(want);
}

static void load_ok(const char *path, enc_image *im)
{
    int rc = enc_image_load(path, MAXPX, im);
    if (rc)
        fail_msg("%s: rc %d %s", path, rc, umg_err_msg());
}

/* out (n floats) against the float32 file at path. */
typedef struct f32_diff {
    double mean, max;
    size_t exact; /* bit-identical values */
} f32_diff;

static f32_diff diff_f32_file(const float *out, const char *path, size_t n)
{
    size_t len;
    float *ref = read_all(path, &len);
    assert_int_equal(len, n * sizeof(float));
    double sum = 0;
    f32_diff d = {0, 0, 0};
    for (size_t j = 0; j < n; j++) {
        double e = fabs((double)out[j] - ref[j]);
        sum += e;
        if (e > d.max)
            d.max = e;
        d.exact += out[j] == ref[j];
    }
    d.mean = sum / n;
    free(ref);
    return d;
}

/* ---------------------------------------------------------------- CLIP fixture */

static void test_clip_fixture_pixels(void **state)
{
    static const char *names[] = {"astronaut.png", "camera.png", "chelsea.png", "coffee.png",
                                  "motorcycle_left.png", "rocket.jpg"};
    const size_t n = 3 * 224 * 224;
    float *out = malloc(n * sizeof(float));
    assert_non_null(out);
    enc_preproc p;
    assert_int_equal(enc_preproc_load(CLIP_DIR, 224, &p), 0); /* no preprocessor_config.json: defaults */
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        char path[512], base[128];
        snprintf(path, sizeof path, CLIP_DIR "/images/%s", names[i]);
        snprintf(base, sizeof base, "%s", names[i]);
        *strrchr(base, '.') = 0;
        enc_image im;
        load_ok(path, &im);
        assert_int_equal(enc_preprocess(&im, &p, out), 0);
        snprintf(path, sizeof path, CLIP_DIR "/pixels/%s.f32", base);
        f32_diff d = diff_f32_file(out, path, n);
        printf("  %-20s %4dx%-4d mean|diff| %.3g  max|diff| %.3g  bit-identical %zu/%zu\n", names[i], im.width,
               im.height, d.mean, d.max, d.exact, n);
        assert_true(d.mean <= 0.005);
        assert_true(d.max <= 0.05);
        /* PIL's arithmetic is reproduced exactly; anything else is a regression. */
        assert_int_equal(d.exact, n);
        enc_image_free(&im);
    }
    free(out);
}

/* ---------------------------------------------------------------- geometry */

static void expect_geom(int fit, int shortest, int crop, int w, int h, int rw, int rh, int ox, int oy)
{
    enc_preproc p;
    enc_preproc_default(&p, crop);
    p.resize_shortest = shortest;
    p.fit = fit;
    enc_preproc_geom g;
    enc_preproc_geometry(&p, w, h, &g);
    if (g.resized_w != rw || g.resized_h != rh || g.off_x != ox || g.off_y != oy)
        fail_msg("fit %d %dx%d -> got %dx%d at %d,%d, want %dx%d at %d,%d", fit, w, h, g.resized_w, g.resized_h,
                 g.off_x, g.off_y, rw, rh, ox, oy);
    assert_int_equal(g.input_w, crop);
    assert_int_equal(g.input_h, crop);
    assert_true(g.scale_x == (float)((double)rw / w));
    assert_true(g.scale_y == (float)((double)rh / h));
}

static void test_geometry(void **state)
{
    /* CROP, from torchvision's formulas: long = int(224 * long / short),
     * crop offset round((L - 224) / 2) with halves to even. */
    expect_geom(ENC_FIT_CROP, 224, 224, 640, 427, 335, 224, -56, 0); /* 55.5 -> 56 */
    expect_geom(ENC_FIT_CROP, 224, 224, 427, 640, 224, 335, 0, -56);
    expect_geom(ENC_FIT_CROP, 224, 224, 337, 224, 337, 224, -56, 0); /* 56.5 -> 56 */
    expect_geom(ENC_FIT_CROP, 224, 224, 339, 224, 339, 224, -58, 0); /* 57.5 -> 58 */
    expect_geom(ENC_FIT_CROP, 224, 224, 451, 300, 336, 224, -56, 0); /* 336.746... truncated */
    expect_geom(ENC_FIT_CROP, 224, 224, 512, 512, 224, 224, 0, 0);
    expect_geom(ENC_FIT_CROP, 224, 224, 10, 5, 448, 224, -112, 0);   /* upscale */
    /* Shorter side smaller than the crop: torchvision pads (224 - 200) // 2 first. */
    expect_geom(ENC_FIT_CROP, 200, 224, 400, 300, 266, 200, -21, 12);

    /* PAD: the values the Python twin (tools/umgtrain/preprocess.py) computed for the goldens. */
    static const char *pads[] = {"pad_chelsea_64.f32", "pad_portrait_64.f32", "pad_strip_64.f32", "pad_small_64.f32"};
    static const int sizes[][2] = {{451, 300}, {150, 260}, {600, 6}, {40, 29}};
    for (int i = 0; i < 4; i++) {
        int v[4];
        assert_int_equal(manifest(pads[i], v), 4);
        expect_geom(ENC_FIT_PAD, 64, 64, sizes[i][0], sizes[i][1], v[0], v[1], v[2], v[3]);
    }
    expect_geom(ENC_FIT_PAD, 224, 224, 640, 480, 224, 168, 0, 28);
    expect_geom(ENC_FIT_PAD, 224, 224, 233, 377, 138, 224, 43, 0); /* int(138.4...) */
    expect_geom(ENC_FIT_PAD, 224, 224, 10000, 1, 224, 1, 0, 111);  /* at least 1 pixel */

    /* The documented mapping: x_in = x * scale + off. */
    enc_preproc p;
    enc_preproc_default(&p, 224);
    enc_preproc_geom g;
    enc_preproc_geometry(&p, 640, 427, &g);
    assert_true(fabsf(640 * g.scale_x + g.off_x - (335 - 56)) < 1e-3f);
}

/* ---------------------------------------------------------------- PAD vs Pillow */

static void test_pad_vs_pillow(void **state)
{
    static const char *cases[][2] = {
        {CLIP_DIR "/images/chelsea.png", "pad_chelsea_64.f32"},
        {IMG_DIR "/portrait.png", "pad_portrait_64.f32"},
        {IMG_DIR "/strip.png", "pad_strip_64.f32"},
        {IMG_DIR "/small.png", "pad_small_64.f32"},
    };
    const int S = 64;
    const size_t n = 3 * S * S;
    float out[3 * 64 * 64];
    for (int i = 0; i < 4; i++) {
        enc_image im;
        load_ok(cases[i][0], &im);
        enc_preproc p;
        enc_preproc_default(&p, S);
        p.fit = ENC_FIT_PAD;
        assert_int_equal(enc_preprocess(&im, &p, out), 0);
        char path[512];
        snprintf(path, sizeof path, IMG_DIR "/%s", cases[i][1]);
        f32_diff d = diff_f32_file(out, path, n);
        printf("  %-22s max|diff| %.3g  bit-identical %zu/%zu\n", cases[i][1], d.max, d.exact, n);
        assert_int_equal(d.exact, n);
        /* Padding is exactly 0 (the mean colour after normalization). */
        enc_preproc_geom g;
        enc_preproc_geometry(&p, im.width, im.height, &g);
        if (g.off_y > 0)
            for (int c = 0; c < 3; c++)
                assert_true(out[(size_t)c * S * S] == 0.0f && out[(size_t)c * S * S + S * S - 1] == 0.0f);
        enc_image_free(&im);
    }
}

static void test_crop_pads_small_resize(void **state)
{
    /* resize_shortest < crop: torchvision's CenterCrop pads with black (value 0). */
    enc_image im;
    load_ok(IMG_DIR "/src.png", &im); /* 37x23 */
    enc_preproc p;
    enc_preproc_default(&p, 32);
    p.resize_shortest = 20; /* -> 32x20 (int(20 * 37 / 23) = 32), pad rows 6..25 */
    float out[3 * 32 * 32];
    assert_int_equal(enc_preprocess(&im, &p, out), 0);
    enc_image r;
    assert_int_equal(enc_image_resize(&im, 32, 20, &r), 0);
    for (int c = 0; c < 3; c++) {
        const float black = (0.0f / 255.0f - p.mean[c]) / p.std[c];
        for (int y = 0; y < 32; y++)
            for (int x = 0; x < 32; x++) {
                float v = out[(c * 32 + y) * 32 + x];
                if (y < 6 || y >= 26)
                    assert_true(v == black);
                else
                    assert_true(v == ((float)r.rgb[((y - 6) * 32 + x) * 3 + c] / 255.0f - p.mean[c]) / p.std[c]);
            }
    }
    enc_image_free(&r);
    enc_image_free(&im);
}

/* ---------------------------------------------------------------- decoding */

static void test_exif_orientation(void **state)
{
    for (int o = 1; o <= 8; o++) {
        char path[512], rgb[64];
        snprintf(path, sizeof path, IMG_DIR "/exif_%d.jpg", o);
        snprintf(rgb, sizeof rgb, "exif_%d.rgb", o);
        enc_image im;
        load_ok(path, &im);
        /* Every file holds the same upright 32x16 photo once its orientation is applied. */
        assert_int_equal(im.width, 32);
        assert_int_equal(im.height, 16);
        const uint8_t *tl = im.rgb + (3 * 32 + 3) * 3;    /* inside the red marker */
        const uint8_t *br = im.rgb + (12 * 32 + 28) * 3;  /* inside the blue block */
        const uint8_t *tr = im.rgb + (3 * 32 + 28) * 3;   /* gray */
        if (!(tl[0] > 200 && tl[1] < 50 && tl[2] < 50))
            fail_msg("orientation %d: marker pixel is %d,%d,%d, not red", o, tl[0], tl[1], tl[2]);
        assert_true(br[2] > 200 && br[0] < 50);
        assert_true(abs(tr[0] - 128) < 10 && abs(tr[2] - 128) < 10);
        expect_rgb(&im, rgb);
        enc_image_free(&im);
    }
}

/* IMG_DIR/<name><ext> decodes to <name>.rgb (Pillow's pixels), for each name. */
static void expect_decoded_as_pillow(const char *const *names, size_t n, const char *ext)
{
    for (size_t i = 0; i < n; i++) {
        char path[512], rgb[64];
        snprintf(path, sizeof path, IMG_DIR "/%s%s", names[i], ext);
        snprintf(rgb, sizeof rgb, "%s.rgb", names[i]);
        enc_image im;
        load_ok(path, &im);
        printf("  %s\n", names[i]);
        expect_rgb(&im, rgb);
        enc_image_free(&im);
    }
}

static void test_png_variants(void **state)
{
    static const char *names[] = {
        "png_rgb", "png_rgba", "png_gray", "png_gray_alpha", "png_gray1", "png_gray2", "png_gray4",
        "png_gray_trns", "png_rgb16", "png_rgba16", "png_gray_alpha16", "png_gray16", "png_rgb_interlaced",
        "png_rgba16_interlaced", "png_gray2_interlaced", "png_palette", "png_palette_trns",
        "png_palette4_trns_interlaced", "png_palette1",
    };
    expect_decoded_as_pillow(names, sizeof names / sizeof *names, ".png");
}

static void test_cmyk_jpeg(void **state)
{
    static const char *names[] = {"cmyk"};
    expect_decoded_as_pillow(names, 1, ".jpg");
}

static void test_jpeg_variants(void **state)
{
    /* Progressive 4:2:0, 4:2:2 with odd sizes, grayscale, and EXIF orientation 6 in
     * Motorola byte order behind an XMP APP1 block (61x45 stored, 45x61 upright). */
    static const char *names[] = {"jpeg_progressive", "jpeg_422_odd", "jpeg_gray", "jpeg_exif6_be_xmp"};
    expect_decoded_as_pillow(names, sizeof names / sizeof *names, ".jpg");
}

static void test_jpeg_scan_bomb(void **state)
{
    /* Repeat the last scan of a progressive JPEG: a few extra scans decode (libjpeg
     * only warns about the bogus progression, as PIL ignores), hundreds are refused. */
    size_t len;
    uint8_t *jpg = read_all(IMG_DIR "/jpeg_progressive.jpg", &len);
    size_t sos = 0;
    for (size_t i = 2; i + 1 < len; i++)
        if (jpg[i] == 0xFF && jpg[i + 1] == 0xDA)
            sos = i; /* 0xFF in entropy data is always stuffed, so this is a marker */
    assert_true(sos > 0);
    assert_true(jpg[len - 2] == 0xFF && jpg[len - 1] == 0xD9);
    const size_t scan = len - 2 - sos;
    const int repeats[] = {5, 600};
    for (int r = 0; r < 2; r++) {
        size_t n = len + scan * repeats[r];
        uint8_t *buf = malloc(n);
        memcpy(buf, jpg, len - 2);
        for (int k = 0; k < repeats[r]; k++)
            memcpy(buf + len - 2 + scan * k, jpg + sos, scan);
        memcpy(buf + n - 2, "\xff\xd9", 2);
        enc_image im;
        int rc = enc_image_decode(buf, n, MAXPX, &im);
        if (r == 0) {
            assert_int_equal(rc, 0); /* pixels differ: each repeated refinement adds bits */
            assert_int_equal(im.width, 61);
            assert_int_equal(im.height, 45);
            enc_image_free(&im);
        } else {
            assert_int_equal(rc, UMG_EFORMAT);
            assert_non_null(strstr(umg_err_msg(), "scans"));
            assert_null(im.rgb);
        }
        free(buf);
    }
    free(jpg);
}

/* exif_1.jpg (upright 32x16, Orientation 1) with an extra APP1 payload inserted
 * right after SOI, so that it is the first Exif block the decoder sees. */
static uint8_t *jpeg_with_app1(const uint8_t *payload, size_t plen, size_t *len)
{
    size_t n;
    uint8_t *jpg = read_all(IMG_DIR "/exif_1.jpg", &n);
    uint8_t *out = malloc(n + plen + 4);
    memcpy(out, jpg, 2);
    out[2] = 0xFF;
    out[3] = 0xE1;
    out[4] = (uint8_t)((plen + 2) >> 8);
    out[5] = (uint8_t)(plen + 2);
    memcpy(out + 6, payload, plen);
    memcpy(out + 6 + plen, jpg + 2, n - 2);
    *len = n + plen + 4;
    free(jpg);
    return out;
}

/* "Exif\0\0" + little-endian TIFF with one IFD0 entry (tag, type, count, value). */
static size_t exif_block(uint8_t *b, uint16_t tag, uint16_t type, uint32_t count, uint32_t value, uint32_t ifd_off)
{
    static const uint8_t head[] = {'E', 'x', 'i', 'f', 0, 0, 'I', 'I', 42, 0};
    memcpy(b, head, sizeof head);
    uint8_t *t = b + 6;
    t[4] = (uint8_t)ifd_off; t[5] = (uint8_t)(ifd_off >> 8); t[6] = (uint8_t)(ifd_off >> 16); t[7] = (uint8_t)(ifd_off >> 24);
    uint8_t *e = t + 8;
    e[0] = 1; e[1] = 0;                                   /* one entry */
    e[2] = (uint8_t)tag; e[3] = (uint8_t)(tag >> 8);
    e[4] = (uint8_t)type; e[5] = (uint8_t)(type >> 8);
    e[6] = (uint8_t)count; e[7] = (uint8_t)(count >> 8); e[8] = (uint8_t)(count >> 16); e[9] = (uint8_t)(count >> 24);
    e[10] = (uint8_t)value; e[11] = (uint8_t)(value >> 8); e[12] = (uint8_t)(value >> 16); e[13] = (uint8_t)(value >> 24);
    memset(e + 14, 0, 4);                                 /* no next IFD */
    return 6 + 8 + 18;
}

static void test_exif_hostile(void **state)
{
    uint8_t b[256];
    size_t len;
    enc_image im;
    /* Sanity: a well-formed block with Orientation 3 is honoured (upside down: the
     * marker moves to the bottom-right). */
    uint8_t *jpg = jpeg_with_app1(b, exif_block(b, 0x0112, 3, 1, 3, 8), &len);
    assert_int_equal(enc_image_decode(jpg, len, MAXPX, &im), 0);
    assert_int_equal(im.width, 32);
    const uint8_t *p = im.rgb + (12 * 32 + 28) * 3;
    assert_true(p[0] > 200 && p[1] < 50);
    enc_image_free(&im);
    free(jpg);

    /* Broken blocks: orientation ignored (1), the photo still decodes as stored. */
    struct { size_t n; const char *what; } cases[6];
    uint8_t blocks[6][256];
    cases[0].n = exif_block(blocks[0], 0x0112, 3, 1, 9, 8);          cases[0].what = "orientation 9";
    cases[1].n = exif_block(blocks[1], 0x0112, 3, 1, 0, 8);          cases[1].what = "orientation 0";
    cases[2].n = exif_block(blocks[2], 0x0112, 4, 1, 6, 8);          cases[2].what = "orientation as LONG";
    cases[3].n = exif_block(blocks[3], 0x0112, 3, 0, 6, 8);          cases[3].what = "zero components";
    cases[4].n = exif_block(blocks[4], 0x0112, 3, 1, 6, 0x7fffff00); cases[4].what = "IFD offset past the end";
    cases[5].n = 6 + 60;                                              cases[5].what = "random TIFF bytes";
    memcpy(blocks[5], "Exif\0\0", 6);
    srand(99);
    for (int i = 6; i < 66; i++)
        blocks[5][i] = (uint8_t)rand();
    for (int c = 0; c < 6; c++) {
        jpg = jpeg_with_app1(blocks[c], cases[c].n, &len);
        int rc = enc_image_decode(jpg, len, MAXPX, &im);
        if (rc)
            fail_msg("EXIF %s: rc %d %s", cases[c].what, rc, umg_err_msg());
        expect_rgb(&im, "exif_1.rgb");
        enc_image_free(&im);
        free(jpg);
    }
    /* A block cut right after the header. */
    jpg = jpeg_with_app1((const uint8_t *)"Exif\0\0II", 8, &len);
    assert_int_equal(enc_image_decode(jpg, len, MAXPX, &im), 0);
    expect_rgb(&im, "exif_1.rgb");
    enc_image_free(&im);
    free(jpg);
}

/* Compress a CMYK buffer with libjpeg as Adobe CMYK or as YCCK (PIL cannot write YCCK). */
static uint8_t *compress_cmyk(const uint8_t *cmyk, int w, int h, J_COLOR_SPACE space, size_t *len)
{
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr err;
    c.err = jpeg_std_error(&err);
    jpeg_create_compress(&c);
    unsigned char *buf = NULL;
    unsigned long n = 0;
    jpeg_mem_dest(&c, &buf, &n);
    c.image_width = (JDIMENSION)w;
    c.image_height = (JDIMENSION)h;
    c.input_components = 4;
    c.in_color_space = JCS_CMYK;
    jpeg_set_defaults(&c);
    jpeg_set_colorspace(&c, space);
    for (int i = 0; i < c.num_components; i++)
        c.comp_info[i].h_samp_factor = c.comp_info[i].v_samp_factor = 1;
    jpeg_set_quality(&c, 100, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(cmyk + (size_t)c.next_scanline * w * 4);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    *len = n;
    return buf;
}

static void test_ycck_jpeg(void **state)
{
    const int w = 24, h = 16;
    uint8_t cmyk[24 * 16 * 4];
    for (int i = 0; i < w * h; i++) {
        int x = i % w, y = i / w;
        cmyk[4 * i + 0] = (uint8_t)(x * 10);
        cmyk[4 * i + 1] = (uint8_t)(y * 15);
        cmyk[4 * i + 2] = (uint8_t)(128 + x * 5);
        cmyk[4 * i + 3] = (uint8_t)(x < 12 ? 40 : 230);
    }
    size_t n1, n2;
    uint8_t *a = compress_cmyk(cmyk, w, h, JCS_CMYK, &n1), *b = compress_cmyk(cmyk, w, h, JCS_YCCK, &n2);
    enc_image ia, ib;
    assert_int_equal(enc_image_decode(a, n1, MAXPX, &ia), 0);
    assert_int_equal(enc_image_decode(b, n2, MAXPX, &ib), 0);
    assert_int_equal(ib.width, w);
    assert_int_equal(ib.height, h);
    /* Both stored colour spaces give the same RGB up to the YCC rounding. */
    int maxd = 0;
    for (int i = 0; i < w * h * 3; i++) {
        int d = abs((int)ia.rgb[i] - (int)ib.rgb[i]);
        if (d > maxd)
            maxd = d;
    }
    assert_true(maxd <= 6);
    /* And the conversion is PIL's, r = c * k / 255 on the stored (inverted) values:
     * the right half (k = 230) is much brighter than the left (k = 40). */
    assert_true(ia.rgb[(8 * w + 20) * 3] > ia.rgb[(8 * w + 2) * 3] + 100);
    enc_image_free(&ia);
    enc_image_free(&ib);
    free(a);
    free(b);
}

/* ---------------------------------------------------------------- resize, crop */

static void test_resize_vs_pillow(void **state)
{
    static const int sizes[][2] = {{80, 50}, {9, 5}, {37, 11}, {100, 23}, {5, 60}, {1, 1}, {36, 22}};
    enc_image src;
    load_ok(IMG_DIR "/src.png", &src);
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        enc_image r;
        assert_int_equal(enc_image_resize(&src, sizes[i][0], sizes[i][1], &r), 0);
        char rgb[64];
        snprintf(rgb, sizeof rgb, "resize_%dx%d.rgb", sizes[i][0], sizes[i][1]);
        expect_rgb(&r, rgb);
        enc_image_free(&r);
    }
    /* Same size: an exact copy. */
    enc_image r;
    assert_int_equal(enc_image_resize(&src, src.width, src.height, &r), 0);
    assert_memory_equal(r.rgb, src.rgb, (size_t)src.width * src.height * 3);
    enc_image_free(&r);
    assert_int_equal(enc_image_resize(&src, 0, 5, &r), UMG_EINVAL);
    assert_null(r.rgb);
    assert_int_equal(enc_image_resize(&src, 100000, 100000, &r), UMG_ETOOBIG);
    assert_null(r.rgb);
    enc_image_free(&src);
}

static void test_crop(void **state)
{
    enc_image src;
    load_ok(IMG_DIR "/src.png", &src); /* 37x23 */
    enc_image c;
    assert_int_equal(enc_image_crop(&src, 5, 7, 10, 4, &c), 0);
    assert_int_equal(c.width, 10);
    assert_int_equal(c.height, 4);
    for (int y = 0; y < 4; y++)
        assert_memory_equal(c.rgb + y * 10 * 3, src.rgb + ((7 + y) * 37 + 5) * 3, 10 * 3);
    enc_image_free(&c);
    assert_null(c.rgb);

    /* Clipped to the image. */
    assert_int_equal(enc_image_crop(&src, -3, -2, 10, 10, &c), 0);
    assert_int_equal(c.width, 7);
    assert_int_equal(c.height, 8);
    assert_memory_equal(c.rgb, src.rgb, 7 * 3);
    enc_image_free(&c);
    assert_int_equal(enc_image_crop(&src, 30, 20, INT_MAX, INT_MAX, &c), 0);
    assert_int_equal(c.width, 7);
    assert_int_equal(c.height, 3);
    assert_memory_equal(c.rgb, src.rgb + (20 * 37 + 30) * 3, 7 * 3);
    enc_image_free(&c);
    assert_int_equal(enc_image_crop(&src, INT_MIN, INT_MIN, INT_MAX, INT_MAX, &c), UMG_EINVAL);

    /* Empty after clipping. */
    assert_int_equal(enc_image_crop(&src, 37, 0, 5, 5, &c), UMG_EINVAL);
    assert_null(c.rgb);
    assert_int_equal(enc_image_crop(&src, -10, 0, 10, 5, &c), UMG_EINVAL);
    assert_int_equal(enc_image_crop(&src, 0, 0, 0, 5, &c), UMG_EINVAL);
    assert_int_equal(enc_image_crop(&src, 0, 0, -4, 5, &c), UMG_EINVAL);
    enc_image_free(&src);
    enc_image_free(NULL);
}

/* ---------------------------------------------------------------- preprocessor_config.json */

static char tmpdir[64];

static int setup_tmp(void **state)
{
    return tu_mkdtemp(tmpdir, sizeof tmpdir, "umg_test_image_") ? 0 : -1;
}

static int teardown_tmp(void **state)
{
    tu_rm_rf(tmpdir);
    return 0;
}

static int load_config(const char *json, enc_preproc *p)
{
    char path[512];
    snprintf(path, sizeof path, "%s/preprocessor_config.json", tmpdir);
    tu_write_file(path, json, strlen(json));
    return enc_preproc_load(tmpdir, 224, p);
}

static void test_preproc_load(void **state)
{
    enc_preproc p, def;
    enc_preproc_default(&def, 224);
    assert_int_equal(def.resize_shortest, 224);
    assert_int_equal(def.crop_w, 224);
    assert_true(def.mean[0] == 0.48145466f && def.std[2] == 0.27577711f);
    assert_int_equal(def.fit, ENC_FIT_CROP);

    /* The file of openai/clip-vit-base-patch32 (older layout: ints). */
    assert_int_equal(load_config("{\"crop_size\": 224, \"do_center_crop\": true, \"do_normalize\": true,"
                                 " \"do_resize\": true, \"feature_extractor_type\": \"CLIPFeatureExtractor\","
                                 " \"image_mean\": [0.48145466, 0.4578275, 0.40821073],"
                                 " \"image_std\": [0.26862954, 0.26130258, 0.27577711],"
                                 " \"resample\": 3, \"size\": 224}", &p), 0);
    assert_memory_equal(&p, &def, sizeof p);

    /* Newer layout with objects, other size and statistics. */
    assert_int_equal(load_config("{\"size\": {\"shortest_edge\": 256}, \"crop_size\": {\"height\": 224, \"width\": 224},"
                                 " \"image_mean\": [0.5, 0.5, 0.5], \"image_std\": [0.25, 0.5, 1]}", &p), 0);
    assert_int_equal(p.resize_shortest, 256);
    assert_int_equal(p.crop_w, 224);
    assert_int_equal(p.crop_h, 224);
    assert_true(p.mean[1] == 0.5f && p.std[0] == 0.25f && p.std[2] == 1.0f);

    /* Errors: corrupt JSON, wrong types, a crop the model cannot take, fixed-size resize. */
    assert_int_equal(load_config("{\"size\": 224,", &p), UMG_EFORMAT);
    assert_non_null(strstr(umg_err_msg(), "preprocessor_config.json"));
    assert_memory_equal(&p, &def, sizeof p); /* left at the defaults */
    assert_int_equal(load_config("[1, 2]", &p), UMG_EFORMAT);
    assert_int_equal(load_config("{\"size\": \"big\"}", &p), UMG_EFORMAT);
    assert_int_equal(load_config("{\"size\": -3}", &p), UMG_EFORMAT);
    assert_int_equal(load_config("{\"image_mean\": [0.5, 0.5]}", &p), UMG_EFORMAT);
    assert_int_equal(load_config("{\"image_std\": [0.5, 0, 0.5]}", &p), UMG_EFORMAT);
    assert_int_equal(load_config("{\"crop_size\": 336}", &p), UMG_EFORMAT);
    assert_non_null(strstr(umg_err_msg(), "336"));
    assert_int_equal(load_config("{\"size\": {\"height\": 224, \"width\": 224}}", &p), UMG_EUNSUPPORTED);

    /* No file: defaults. */
    char path[512];
    snprintf(path, sizeof path, "%s/preprocessor_config.json", tmpdir);
    unlink(path);
    assert_int_equal(enc_preproc_load(tmpdir, 224, &p), 0);
    assert_memory_equal(&p, &def, sizeof p);
}

/* ---------------------------------------------------------------- hostile input */

static void expect_error(const void *data, size_t len, uint64_t max_pixels, int code, const char *what)
{
    enc_image im = {.width = 7, .height = 7, .rgb = (uint8_t *)1};
    umg_err_clear();
    int rc = enc_image_decode(data, len, max_pixels, &im);
    if (rc != code)
        fail_msg("%s: rc %d (%s), want %d", what, rc, umg_err_msg(), code);
    assert_null(im.rgb);
    assert_true(strlen(umg_err_msg()) > 0);
}

static void test_empty_and_garbage(void **state)
{
    expect_error("", 0, MAXPX, UMG_EUNSUPPORTED, "zero bytes");
    char path[512];
    snprintf(path, sizeof path, "%s/empty.jpg", tmpdir);
    tu_write_file(path, "", 0);
    enc_image im;
    assert_int_equal(enc_image_load(path, MAXPX, &im), UMG_EUNSUPPORTED);
    assert_non_null(strstr(umg_err_msg(), "empty.jpg"));
    assert_int_equal(enc_image_load(UMG_FIXTURES_DIR "/no/such/file.png", MAXPX, &im), UMG_ENOENT);
    assert_int_equal(enc_image_load(UMG_FIXTURES_DIR, MAXPX, &im), UMG_EINVAL);

    uint8_t junk[4096];
    srand(12345);
    for (size_t i = 0; i < sizeof junk; i++)
        junk[i] = (uint8_t)rand();
    junk[0] = 0x42; /* no known magic */
    expect_error(junk, sizeof junk, MAXPX, UMG_EUNSUPPORTED, "random garbage");
    expect_error("GIF89a\1\0\1\0", 10, MAXPX, UMG_EFORMAT, "GIF cut in its header");
    assert_non_null(strstr(umg_err_msg(), "GIF"));
    /* Right magic, garbage after it. */
    memcpy(junk, "\xff\xd8\xff", 3);
    expect_error(junk, sizeof junk, MAXPX, UMG_EFORMAT, "JPEG magic + garbage");
    memcpy(junk, "\x89PNG\r\n\x1a\n", 8);
    expect_error(junk, sizeof junk, MAXPX, UMG_EFORMAT, "PNG magic + garbage");
    expect_error("\x89PN", 3, MAXPX, UMG_EFORMAT, "PNG signature cut");
}

/* data (len bytes) cut to each of cuts[0..n) bytes: refused as malformed. */
static void expect_cuts_refused(const uint8_t *data, size_t len, const char *kind, const size_t *cuts, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char what[64];
        snprintf(what, sizeof what, "%s cut at %zu of %zu", kind, cuts[i], len);
        expect_error(data, cuts[i], MAXPX, UMG_EFORMAT, what);
    }
}

static void test_truncated(void **state)
{
    size_t len;
    uint8_t *jpg = read_all(CLIP_DIR "/images/rocket.jpg", &len);
    const size_t jcuts[] = {1, 2, 3, 4, 20, 200, 1000, len / 3, len / 2, len - 100, len - 2};
    expect_cuts_refused(jpg, len, "JPEG", jcuts, sizeof jcuts / sizeof *jcuts);
    free(jpg);

    uint8_t *png = read_all(CLIP_DIR "/images/chelsea.png", &len);
    const size_t pcuts[] = {5, 8, 12, 20, 30, 33, 100, 1000, len / 3, len / 2, len * 9 / 10};
    expect_cuts_refused(png, len, "PNG", pcuts, sizeof pcuts / sizeof *pcuts);
    free(png);

    /* A progressive JPEG truncated (the whole-image coefficient buffer path). */
    size_t n;
    uint8_t *small = read_all(IMG_DIR "/exif_6.jpg", &n);
    expect_error(small, n / 2, MAXPX, UMG_EFORMAT, "small JPEG cut in half");
    free(small);
}

/* Offset of the first marker 0xFF m1 or 0xFF m2 after SOI, 0 if none. */
static size_t find_marker(const uint8_t *jpg, size_t len, uint8_t m1, uint8_t m2)
{
    for (size_t i = 2; i + 1 < len; i++)
        if (jpg[i] == 0xFF && (jpg[i + 1] == m1 || jpg[i + 1] == m2))
            return i;
    return 0;
}

static void test_corrupt(void **state)
{
    size_t len;
    /* PNG: a flipped byte inside the image data fails the chunk CRC. */
    uint8_t *png = read_all(CLIP_DIR "/images/chelsea.png", &len);
    png[len / 2] ^= 0x55;
    expect_error(png, len, MAXPX, UMG_EFORMAT, "PNG with a flipped IDAT byte");
    free(png);

    /* JPEG: an unsupported sample precision in the frame header. */
    uint8_t *jpg = read_all(IMG_DIR "/exif_1.jpg", &len);
    size_t sof = find_marker(jpg, len, 0xC0, 0xC2);
    assert_true(sof > 0);
    uint8_t save = jpg[sof + 4];
    jpg[sof + 4] = 7;
    expect_error(jpg, len, MAXPX, UMG_EFORMAT, "JPEG precision 7");
    jpg[sof + 4] = save;
    /* Zero components. */
    jpg[sof + 9] = 0;
    expect_error(jpg, len, MAXPX, UMG_EFORMAT, "JPEG with 0 components");
    free(jpg);

    /* Random byte mutations of small files: any outcome but a crash, a leak (ASan)
     * or an inconsistent result. */
    static const char *files[] = {IMG_DIR "/exif_6.jpg", IMG_DIR "/png_palette4_trns_interlaced.png",
                                  IMG_DIR "/png_rgba16.png", IMG_DIR "/cmyk.jpg"};
    srand(777);
    int failures = 0, successes = 0;
    for (size_t f = 0; f < sizeof files / sizeof *files; f++) {
        uint8_t *orig = read_all(files[f], &len);
        uint8_t *buf = malloc(len);
        for (int it = 0; it < 150; it++) {
            memcpy(buf, orig, len);
            int nflip = 1 + rand() % 4;
            for (int k = 0; k < nflip; k++)
                buf[rand() % len] = (uint8_t)rand();
            enc_image im;
            int rc = enc_image_decode(buf, len, MAXPX, &im);
            if (rc == 0) {
                assert_non_null(im.rgb);
                assert_true(im.width > 0 && im.height > 0);
                successes++;
            } else {
                assert_true(rc == UMG_EFORMAT || rc == UMG_ETOOBIG || rc == UMG_EUNSUPPORTED);
                assert_null(im.rgb);
                failures++;
            }
            enc_image_free(&im);
        }
        free(buf);
        free(orig);
    }
    printf("  mutations: %d decoded, %d refused\n", successes, failures);
    assert_true(failures > 0);
}

static uint32_t crc32_png(const uint8_t *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1)));
    }
    return c ^ 0xFFFFFFFFu;
}

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* A small valid PNG whose IHDR is rewritten to w x h (CRC fixed). */
static uint8_t *png_with_size(uint32_t w, uint32_t h, size_t *len)
{
    uint8_t *png = read_all(IMG_DIR "/png_rgb.png", len);
    assert_memory_equal(png + 12, "IHDR", 4);
    put32(png + 16, w);
    put32(png + 20, h);
    put32(png + 29, crc32_png(png + 12, 17));
    return png;
}

static void test_bombs(void **state)
{
    size_t len;
    uint8_t *png = png_with_size(100000, 100000, &len);
    expect_error(png, len, MAXPX, UMG_ETOOBIG, "PNG 100000x100000");
    assert_non_null(strstr(umg_err_msg(), "100000"));
    free(png);
    png = png_with_size(60000, 60000, &len); /* each side allowed, the product is not */
    expect_error(png, len, MAXPX, UMG_ETOOBIG, "PNG 60000x60000");
    free(png);
    png = png_with_size(0x7fffffff, 1, &len);
    expect_error(png, len, MAXPX, UMG_ETOOBIG, "PNG 2^31-1 wide");
    free(png);
    png = png_with_size(37, 23, &len); /* unchanged: still decodes */
    enc_image im;
    assert_int_equal(enc_image_decode(png, len, MAXPX, &im), 0);
    enc_image_free(&im);
    expect_error(png, len, 37 * 23 - 1, UMG_ETOOBIG, "PNG over a small max_pixels");
    free(png);

    /* JPEG sizes are 16-bit: 65535x65535 is the most a header can claim. */
    uint8_t *jpg = read_all(IMG_DIR "/exif_1.jpg", &len);
    size_t sof = find_marker(jpg, len, 0xC0, 0xC0);
    assert_true(sof > 0);
    static const uint16_t dims[][2] = {{65535, 65535}, {60000, 60000}, {65000, 2000}};
    for (int i = 0; i < 3; i++) {
        jpg[sof + 5] = (uint8_t)(dims[i][1] >> 8);
        jpg[sof + 6] = (uint8_t)dims[i][1];
        jpg[sof + 7] = (uint8_t)(dims[i][0] >> 8);
        jpg[sof + 8] = (uint8_t)dims[i][0];
        char what[64];
        snprintf(what, sizeof what, "JPEG %ux%u", dims[i][0], dims[i][1]);
        expect_error(jpg, len, MAXPX, UMG_ETOOBIG, what);
    }
    free(jpg);
    jpg = read_all(IMG_DIR "/exif_1.jpg", &len);
    expect_error(jpg, len, 32 * 16 - 1, UMG_ETOOBIG, "JPEG over a small max_pixels");
    free(jpg);
}

/* ---------------------------------------------------------------- formats (issue 17) */

/* IMG_DIR/name's bytes (malloc'd). */
static uint8_t *read_image(const char *name, size_t *len)
{
    char path[512];
    snprintf(path, sizeof path, IMG_DIR "/%s", name);
    return read_all(path, len);
}

/* NAME decoded exactly equals REF decoded (same pixels in another container). */
static void expect_same_pixels(const char *name, const char *ref)
{
    char p1[512], p2[512];
    snprintf(p1, sizeof p1, IMG_DIR "/%s", name);
    snprintf(p2, sizeof p2, IMG_DIR "/%s", ref);
    enc_image a, b;
    load_ok(p1, &a);
    load_ok(p2, &b);
    if (a.width != b.width || a.height != b.height)
        fail_msg("%s is %dx%d, %s %dx%d", name, a.width, a.height, ref, b.width, b.height);
    size_t n = (size_t)a.width * a.height * 3, ndiff = 0;
    for (size_t i = 0; i < n; i++)
        ndiff += a.rgb[i] != b.rgb[i];
    if (ndiff)
        fail_msg("%s: %zu of %zu bytes differ from %s", name, ndiff, n, ref);
    enc_image_free(&a);
    enc_image_free(&b);
}

static void test_sniff(void **state)
{
    static const struct {
        const char *file;
        int fmt;
        const char *name;
    } files[] = {
        {"exif_1.jpg", ENC_FMT_JPEG, "JPEG"},       {"fmt_src.png", ENC_FMT_PNG, "PNG"},
        {"fmt.heic", ENC_FMT_HEIC, "HEIC"},         {"fmt.avif", ENC_FMT_AVIF, "AVIF"},
        {"fmt_lossy.webp", ENC_FMT_WEBP, "WebP"},   {"fmt_lzw.tif", ENC_FMT_TIFF, "TIFF"},
        {"fmt_rgb16.tif", ENC_FMT_TIFF, "TIFF"},    {"fmt.gif", ENC_FMT_GIF, "GIF"},
    };
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        size_t len;
        uint8_t *d = read_image(files[i].file, &len);
        const char *what = NULL;
        assert_int_equal(enc_image_sniff(d, len < ENC_IMAGE_SNIFF_BYTES ? len : ENC_IMAGE_SNIFF_BYTES, &what),
                         files[i].fmt);
        assert_string_equal(what, files[i].name);
        assert_string_equal(enc_image_format_name(files[i].fmt), files[i].name);
        enc_image_meta meta;
        enc_image im;
        assert_int_equal(enc_image_decode_ex(d, len, NULL, &im, &meta), 0);
        assert_int_equal(meta.format, files[i].fmt);
        enc_image_free(&im);
        free(d);
    }
    /* Not images: named by their magic, refused as unsupported with that name. */
    static const struct {
        const char *head;
        size_t len;
        const char *mime;
    } others[] = {
        {"\0\0\0\x20" "ftypisom\0\0\2\0isomiso2avc1mp41", 32, "video/mp4"},
        {"\0\0\0\x14" "ftypqt  \0\0\0\0qt  ", 20, "video/quicktime"},
        {"%PDF-1.7\n%", 10, "application/pdf"},
        {"PK\3\4\x14\0\0\0", 8, "application/zip"},
        {"BM\x36\0\0\0\0\0", 8, "image/bmp"},
        {"\x1a\x45\xdf\xa3\x9f\x42\x86\x81", 8, "video/webm"},
    };
    for (size_t i = 0; i < sizeof others / sizeof *others; i++) {
        const char *what = NULL;
        assert_int_equal(enc_image_sniff(others[i].head, others[i].len, &what), ENC_FMT_UNKNOWN);
        assert_non_null(what);
        assert_string_equal(what, others[i].mime);
        expect_error(others[i].head, others[i].len, MAXPX, UMG_EUNSUPPORTED, others[i].mime);
        char want[96];
        snprintf(want, sizeof want, "unsupported format: %s", others[i].mime);
        if (!strstr(umg_err_msg(), want))
            fail_msg("error \"%s\" does not say \"%s\"", umg_err_msg(), want);
    }
    /* An AVIF whose major brand is mif1 is still AVIF (compatible brands). */
    const char *what;
    assert_int_equal(enc_image_sniff("\0\0\0\x18" "ftypmif1\0\0\0\0mif1avif", 24, &what), ENC_FMT_AVIF);
    assert_int_equal(enc_image_sniff("\0\0\0\x18" "ftypmif1\0\0\0\0mif1heic", 24, &what), ENC_FMT_HEIC);
    assert_int_equal(enc_image_sniff("\x42\x43", 2, &what), ENC_FMT_UNKNOWN);
    assert_null(what);
}

/* The same pixels in another container decode to the same RGB, hence the same
 * network input (and so the same vectors: preprocessing and the encoder are
 * deterministic functions of it). */
static void test_same_pixels_other_containers(void **state)
{
    static const char *const same[] = {"fmt_lossless.webp", "fmt_lzw.tif", "fmt_deflate.tif", "fmt_tiled.tif",
                                       "fmt_multipage.tif", "fmt_planar.tif"};
    for (size_t i = 0; i < sizeof same / sizeof *same; i++)
        expect_same_pixels(same[i], "fmt_src.png");
    /* lossless WebP with alpha: the RGB under the alpha is kept (-exact), dropped alpha */
    expect_same_pixels("fmt_alpha_lossless.webp", "fmt_src_rgba.png");

    enc_preproc p;
    enc_preproc_default(&p, 24);
    float a[3 * 24 * 24], b[3 * 24 * 24];
    enc_image x, y;
    load_ok(IMG_DIR "/fmt_src.png", &x);
    load_ok(IMG_DIR "/fmt_lossless.webp", &y);
    assert_int_equal(enc_preprocess(&x, &p, a), 0);
    assert_int_equal(enc_preprocess(&y, &p, b), 0);
    assert_memory_equal(a, b, sizeof a);
    enc_image_free(&x);
    enc_image_free(&y);
}

static void test_formats_vs_pillow(void **state)
{
    static const char *const names[] = {
        "fmt_lossy.webp", "fmt_alpha_lossy.webp", "fmt_alpha_lossless.webp", "fmt_anim.webp", "fmt_exif6.webp",
        "fmt_gray.tif", "fmt_bilevel.tif", "fmt_jpeg.tif", "fmt_ycbcr_jpeg.tif", "fmt_rgba.tif",
        "fmt_palette.tif", "fmt_rgb16.tif", "fmt_rgba16.tif", "fmt_cmyk.tif", "fmt_gray16.tif", "fmt_exif6.tif",
        "fmt.gif", "fmt_noninterlaced.gif", "fmt_anim.gif", "fmt_small_frame.gif",
    };
    expect_decoded_as_pillow(names, sizeof names / sizeof *names, ""); /* NAME.rgb beside NAME */
}

/* HEIC/AVIF give exactly libheif's own decode (heif-convert's PNG beside each). */
static void test_heif_vs_libheif(void **state)
{
    static const char *const names[] = {"fmt.heic", "fmt.avif", "fmt_alpha.heic", "fmt_irot.heic",
                                        "fmt_exif6.heic"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        char png[160];
        snprintf(png, sizeof png, "%s.png", names[i]);
        expect_same_pixels(names[i], png);
    }
    enc_image im;
    enc_image_meta meta;
    /* irot: libheif rotates (stored 48x32); EXIF Orientation 6 without irot: not
     * rotated again, as heif-convert. */
    assert_int_equal(enc_image_load_ex(IMG_DIR "/fmt_irot.heic", NULL, &im, &meta), 0);
    assert_int_equal(im.width, 32);
    assert_int_equal(im.height, 48);
    enc_image_free(&im);
    assert_int_equal(enc_image_load_ex(IMG_DIR "/fmt_exif6.heic", NULL, &im, &meta), 0);
    assert_int_equal(im.width, 32);
    assert_int_equal(im.height, 48);
    assert_int_equal(meta.orientation, 1);
    enc_image_free(&im);
}

/* Tile grids, as phones store HEIC (tools/make_heif_grid.py: 64x64 tiles, 4x3,
 * cropped to 240x180): libheif's own pixels on any number of tile threads, the
 * irot orientation applied to the whole grid, the pixel limit on the grid's full
 * size (a tile is only 4096 pixels), and a grid declaring 75.8 Mpx in 1 KB
 * refused before anything is decoded.  fmt_grid_odd.heic (241x181): odd crops of
 * the last tile column (49 px) and row (53 px) of 4:2:0 tiles, also libheif's
 * pixels (libheif 1.15 converts each whole tile to RGB before cropping). */
static void test_heif_grid(void **state)
{
    expect_same_pixels("fmt_grid.heic", "fmt_grid.heic.png");
    expect_same_pixels("fmt_grid_irot.heic", "fmt_grid_irot.heic.png");
    expect_same_pixels("fmt_grid_odd.heic", "fmt_grid_odd.heic.png");
    enc_image odd;
    load_ok(IMG_DIR "/fmt_grid_odd.heic", &odd);
    assert_int_equal(odd.width, 241);
    assert_int_equal(odd.height, 181);
    enc_image_free(&odd);
    size_t len;
    uint8_t *d = read_image("fmt_grid.heic", &len);
    enc_image ref;
    load_ok(IMG_DIR "/fmt_grid.heic.png", &ref);
    assert_int_equal(ref.width, 240);
    assert_int_equal(ref.height, 180);
    for (int threads = 0; threads <= 4; threads++) {
        enc_decode_opts o = {.threads = threads};
        enc_image im;
        enc_image_meta meta;
        assert_int_equal(enc_image_decode_ex(d, len, &o, &im, &meta), 0);
        assert_int_equal(meta.full_width, 240);
        assert_int_equal(meta.full_height, 180);
        assert_int_equal(im.width, 240);
        assert_int_equal(im.height, 180);
        if (memcmp(im.rgb, ref.rgb, (size_t)240 * 180 * 3))
            fail_msg("grid decoded on %d tile threads differs from heif-convert's", threads);
        enc_image_free(&im);
    }
    /* The rotated grid is the unrotated one turned 90 degrees anticlockwise. */
    enc_image rot;
    load_ok(IMG_DIR "/fmt_grid_irot.heic", &rot);
    assert_int_equal(rot.width, 180);
    assert_int_equal(rot.height, 240);
    for (int y = 0; y < 240; y++)
        for (int x = 0; x < 180; x++)
            if (memcmp(rot.rgb + ((size_t)y * 180 + x) * 3, ref.rgb + ((size_t)x * 240 + 239 - y) * 3, 3))
                fail_msg("irot grid pixel (%d, %d) is not the rotated grid's", x, y);
    enc_image_free(&rot);
    enc_image_free(&ref);
    expect_error(d, len, 240 * 180 - 1, UMG_ETOOBIG, "grid 240x180 over a limit of 43199 pixels");
    enc_image im;
    assert_int_equal(enc_image_decode(d, len, 240 * 180, &im), 0);
    enc_image_free(&im);
    free(d);
    d = read_image("fmt_grid_bomb.heic", &len);
    assert_true(len < 4096);
    expect_error(d, len, MAXPX, UMG_ETOOBIG, "grid of 17x17 tiles of 512x512");
    if (!strstr(umg_err_msg(), "8704x8704"))
        fail_msg("grid bomb: \"%s\" does not give the grid's full size", umg_err_msg());
    free(d);
}

/* Orientation in each container: the upright photo (fmt_src.png, 48x32) comes back. */
static void test_orientation_containers(void **state)
{
    static const char *const names[] = {"fmt_exif6.webp", "fmt_exif6.tif"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        char path[512];
        snprintf(path, sizeof path, IMG_DIR "/%s", names[i]);
        enc_image im;
        enc_image_meta meta;
        assert_int_equal(enc_image_load_ex(path, NULL, &im, &meta), 0);
        assert_int_equal(meta.orientation, 6);
        assert_int_equal(im.width, 48);
        assert_int_equal(im.height, 32);
        assert_int_equal(meta.full_width, 48);
        enc_image_free(&im);
    }
    expect_same_pixels("fmt_exif6.tif", "fmt_src.png"); /* lossless: exactly the source */
    expect_same_pixels("fmt_exif6.webp", "fmt_src.png");
}

static const char *const format_files[] = {
    "fmt.heic", "fmt.avif", "fmt_alpha.heic", "fmt_lossy.webp", "fmt_lossless.webp", "fmt_anim.webp",
    "fmt_exif6.webp", "fmt_lzw.tif", "fmt_jpeg.tif", "fmt_ycbcr_jpeg.tif", "fmt_tiled.tif", "fmt_rgb16.tif",
    "fmt.gif", "fmt_anim.gif", "fmt_noninterlaced.gif", "fmt_grid.heic",
};

/* Every format cut short or damaged: an error naming the format, never a crash or
 * a leak (ASan), never out->rgb set. */
static void test_formats_truncated_corrupt(void **state)
{
    for (size_t f = 0; f < sizeof format_files / sizeof *format_files; f++) {
        size_t len;
        uint8_t *d = read_image(format_files[f], &len);
        const char *name;
        enc_image_sniff(d, len, &name);
        const size_t cuts[] = {5, 12, 30, 100, len / 3, len / 2, len * 9 / 10, len - 1};
        for (size_t c = 0; c < sizeof cuts / sizeof *cuts; c++) {
            if (cuts[c] >= len)
                continue;
            enc_image im = {.rgb = (uint8_t *)1};
            int rc = enc_image_decode(d, cuts[c], MAXPX, &im);
            /* A GIF or TIFF cut after its first frame's data (later frames, a later
             * page's IFD) still holds the whole first image: then it must be exact. */
            if (rc == 0 && cuts[c] >= len / 2 && (strstr(name, "GIF") || strstr(name, "TIFF"))) {
                enc_image whole;
                assert_int_equal(enc_image_decode(d, len, MAXPX, &whole), 0);
                assert_int_equal(im.width, whole.width);
                assert_int_equal(im.height, whole.height);
                assert_memory_equal(im.rgb, whole.rgb, (size_t)im.width * im.height * 3);
                enc_image_free(&whole);
                enc_image_free(&im);
                continue;
            }
            if (rc != UMG_EFORMAT)
                fail_msg("%s cut at %zu of %zu: rc %d (%s)", format_files[f], cuts[c], len, rc, umg_err_msg());
            assert_null(im.rgb);
            if (cuts[c] >= 12 && !strcasestr(umg_err_msg(), name))
                fail_msg("%s cut at %zu: \"%s\" does not name %s", format_files[f], cuts[c], umg_err_msg(), name);
        }
        /* random byte mutations: any outcome but a crash, a leak or an inconsistent result */
        uint8_t *buf = malloc(len);
        srand(1700 + (unsigned)f);
        int refused = 0;
        for (int it = 0; it < 60; it++) {
            memcpy(buf, d, len);
            for (int k = 0, n = 1 + rand() % 6; k < n; k++)
                buf[16 + rand() % (len - 16)] = (uint8_t)rand();
            enc_image im;
            int rc = enc_image_decode(buf, len, MAXPX, &im);
            if (rc == 0) {
                assert_non_null(im.rgb);
                assert_true(im.width > 0 && im.height > 0);
            } else {
                if (rc != UMG_EFORMAT && rc != UMG_ETOOBIG && rc != UMG_EUNSUPPORTED)
                    fail_msg("%s mutated: rc %d (%s)", format_files[f], rc, umg_err_msg());
                assert_null(im.rgb);
                refused++;
            }
            enc_image_free(&im);
        }
        free(buf);
        free(d);
    }
}

/* The pixel limit, per format, from the header: refused before decoding. */
static void test_formats_pixel_limit(void **state)
{
    for (size_t f = 0; f < sizeof format_files / sizeof *format_files; f++) {
        size_t len;
        uint8_t *d = read_image(format_files[f], &len);
        enc_image im;
        enc_image_meta meta;
        assert_int_equal(enc_image_decode_ex(d, len, NULL, &im, &meta), 0);
        uint64_t px = (uint64_t)im.width * im.height;
        enc_image_free(&im);
        expect_error(d, len, px - 1, UMG_ETOOBIG, format_files[f]);
        free(d);
    }
    /* Headers claiming huge sizes: a GIF screen and a TIFF of 60000x60000 */
    size_t len;
    uint8_t *gif = read_all(IMG_DIR "/fmt.gif", &len);
    gif[6] = gif[7] = gif[8] = gif[9] = 0xff;
    expect_error(gif, len, MAXPX, UMG_ETOOBIG, "GIF screen 65535x65535");
    free(gif);
    uint8_t *tif = read_all(IMG_DIR "/fmt_rgb16.tif", &len); /* our own writer: SHORT width/height at fixed places */
    assert_memory_equal(tif, "II*\0\x08\0\0\0", 8);
    int n = tif[8] | tif[9] << 8;
    for (int i = 0; i < n; i++) {
        uint8_t *e = tif + 10 + 12 * i;
        int tag = e[0] | e[1] << 8;
        if (tag == 256 || tag == 257)
            e[8] = 0x60, e[9] = 0xea; /* 60000 */
    }
    expect_error(tif, len, MAXPX, UMG_ETOOBIG, "TIFF 60000x60000");
    free(tif);
}

static void load_meta(const char *name, enc_image_meta *meta)
{
    char path[512];
    snprintf(path, sizeof path, IMG_DIR "/%s", name);
    enc_image im;
    int rc = enc_image_load_ex(path, NULL, &im, meta);
    if (rc)
        fail_msg("%s: rc %d %s", name, rc, umg_err_msg());
    enc_image_free(&im);
}

/* Camera names as people read them: brands for capitalised or suffixed makes,
 * the make once, unknown makes as written. */
static void test_camera_names(void **state)
{
    (void)state;
    static const struct { const char *make, *model, *want; } cases[] = {
        {"FUJIFILM", "X-T3", "Fujifilm X-T3"},
        {"NIKON CORPORATION", "NIKON D750", "Nikon D750"},
        {"OLYMPUS IMAGING CORP.", "E-M5MarkII", "Olympus E-M5MarkII"},
        {"Canon", "Canon EOS 5D Mark IV", "Canon EOS 5D Mark IV"},
        {"SONY", "ILCE-7M3", "Sony ILCE-7M3"},
        {"samsung", "SM-G991B", "Samsung SM-G991B"},
        {"LGE", "Nexus 5", "LG Nexus 5"},
        {"Apple", "iPhone 12 Pro", "Apple iPhone 12 Pro"},
        {"EASTMAN KODAK COMPANY", "KODAK EASYSHARE C813", "Kodak EASYSHARE C813"},
        {"Acme Cam Co", "X1", "Acme Cam Co X1"},
        {"Acme", "Acme", "Acme"},
        {NULL, "X1", "X1"},
        {"NIKON", NULL, "Nikon"},
        {"Fujifilmx", "Z", "Fujifilmx Z"}, /* a first word only starting like a brand: kept */
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        enc_image_meta m;
        memset(&m, 0, sizeof m);
        enc_meta_set_camera(&m, cases[i].make, cases[i].model);
        assert_true(m.camera_known);
        if (strcmp(m.camera, cases[i].want) != 0)
            fail_msg("make \"%s\" model \"%s\": \"%s\", want \"%s\"", cases[i].make ? cases[i].make : "(none)",
                     cases[i].model ? cases[i].model : "(none)", m.camera, cases[i].want);
    }
    enc_image_meta m;
    memset(&m, 0, sizeof m);
    enc_meta_set_camera(&m, NULL, " ");
    assert_false(m.camera_known);
}

static void test_capture_metadata(void **state)
{
    static const char *const full[] = {"meta_full.jpg", "meta_full.heic", "meta_full.tif", "meta_full.webp"};
    for (size_t i = 0; i < sizeof full / sizeof *full; i++) {
        enc_image_meta m;
        load_meta(full[i], &m);
        printf("  %-16s taken_at %s camera \"%s\" gps %.6f,%.6f\n", full[i], m.taken_at, m.camera, m.lat, m.lon);
        assert_true(m.taken_at_known && m.offset_known && m.camera_known && m.gps_known);
        assert_string_equal(m.taken_at, "2019-07-14T12:00:00+02:00");
        assert_int_equal(m.offset_minutes, 120);
        assert_string_equal(m.camera, "Fujifilm X-T3"); /* EXIF says "FUJIFILM" */
        assert_true(fabs(m.lat - -33.8568) < 1e-6 && fabs(m.lon - 151.2153) < 1e-6);
    }
    enc_image_meta m;
    load_meta("meta_partial.jpg", &m); /* no offset; the model repeats the make; west */
    assert_true(m.taken_at_known && !m.offset_known);
    assert_string_equal(m.taken_at, "2021-01-02T03:04:05");
    assert_string_equal(m.camera, "Canon EOS 5D Mark IV");
    assert_true(m.gps_known && fabs(m.lat - 40.6892) < 1e-6 && fabs(m.lon - -74.0445) < 1e-6);
    /* "0000:00:00 00:00:00" and a latitude without longitude: unknown; the offset
     * alone says nothing */
    load_meta("meta_bad.jpg", &m);
    assert_false(m.taken_at_known || m.offset_known || m.camera_known || m.gps_known);
    static const char *const none[] = {"fmt_src.png", "exif_1.jpg", "meta_garbage.jpg", "meta_cut_ifd.jpg",
                                       "fmt.heic", "fmt_lzw.tif", "fmt_lossy.webp", "fmt.gif"};
    for (size_t i = 0; i < sizeof none / sizeof *none; i++) {
        load_meta(none[i], &m);
        if (m.taken_at_known || m.offset_known || m.camera_known || m.gps_known)
            fail_msg("%s: metadata found where there is none", none[i]);
        assert_string_equal(m.taken_at, "");
    }

    /* EXIF garbage never makes a photo undecodable: same pixels as without it */
    enc_image a, b;
    load_ok(IMG_DIR "/meta_garbage.jpg", &a);
    load_ok(IMG_DIR "/meta_full.jpg", &b);
    assert_int_equal(a.width, b.width);
    assert_memory_equal(a.rgb, b.rgb, (size_t)a.width * a.height * 3);
    enc_image_free(&a);
    enc_image_free(&b);
}

/* libjpeg's own DCT-scaled decode of data at 1/scale. */
static uint8_t *libjpeg_scaled(const uint8_t *data, size_t len, int scale, int *w, int *h)
{
    struct jpeg_decompress_struct c;
    struct jpeg_error_mgr e;
    c.err = jpeg_std_error(&e);
    jpeg_create_decompress(&c);
    jpeg_mem_src(&c, data, (unsigned long)len);
    jpeg_read_header(&c, TRUE);
    c.out_color_space = JCS_RGB;
    c.scale_num = 1;
    c.scale_denom = (unsigned)scale;
    jpeg_start_decompress(&c);
    *w = (int)c.output_width;
    *h = (int)c.output_height;
    uint8_t *rgb = malloc((size_t)*w * *h * 3);
    while (c.output_scanline < c.output_height) {
        JSAMPROW row = rgb + (size_t)c.output_scanline * *w * 3;
        jpeg_read_scanlines(&c, &row, 1);
    }
    jpeg_finish_decompress(&c);
    jpeg_destroy_decompress(&c);
    return rgb;
}

/* The fast path: JPEG DCT scaling chosen as PIL's draft() (largest of 1/2/4/8 that
 * keeps both sides >= the resize target), pixels exactly libjpeg's scaled decode. */
static void test_fast_decode(void **state)
{
    size_t len;
    uint8_t *jpg = read_all(CLIP_DIR "/images/rocket.jpg", &len); /* 640x427 */
    static const struct {
        int size, scale;
    } cases[] = {{224, 1}, {200, 1}, {100, 2}, {53, 4}, {40, 4}, {107, 2}, {26, 8}};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        enc_preproc p;
        enc_preproc_default(&p, cases[i].size);
        /* resized to int(size * 640 / 427) x size: the draft keeps >= 1.5x both (200: 1/2
         * would keep 320x214 >= 299x200, but under 1.5x: decoded in full) */
        enc_decode_opts o = {.fast_for = &p};
        enc_image im;
        enc_image_meta meta;
        assert_int_equal(enc_image_decode_ex(jpg, len, &o, &im, &meta), 0);
        int w, h;
        uint8_t *want = libjpeg_scaled(jpg, len, cases[i].scale, &w, &h);
        if (im.width != w || im.height != h)
            fail_msg("target %d: %dx%d, want scale 1/%d = %dx%d", cases[i].size, im.width, im.height,
                     cases[i].scale, w, h);
        assert_memory_equal(im.rgb, want, (size_t)w * h * 3);
        assert_int_equal(meta.full_width, 640);
        assert_int_equal(meta.full_height, 427);
        enc_preproc_geom g;
        enc_preproc_geometry(&p, 640, 427, &g);
        assert_true(2 * im.width >= 3 * g.resized_w && 2 * im.height >= 3 * g.resized_h);
        free(want);
        enc_image_free(&im);
    }
    /* exact path: bit-identical to enc_image_decode whatever the options say otherwise */
    enc_decode_opts exact = {0};
    enc_image a, b;
    assert_int_equal(enc_image_decode_ex(jpg, len, &exact, &a, NULL), 0);
    assert_int_equal(enc_image_decode(jpg, len, MAXPX, &b), 0);
    assert_int_equal(a.width, 640);
    assert_memory_equal(a.rgb, b.rgb, (size_t)640 * 427 * 3);
    enc_image_free(&a);
    enc_image_free(&b);
    free(jpg);

    /* Orientation 6 (stored 16x32, shown 32x16): the target is turned with it. */
    uint8_t *j6 = read_all(IMG_DIR "/exif_6.jpg", &len);
    enc_preproc p;
    enc_preproc_default(&p, 4); /* shown 32x16 resizes to 8x4: stored target 4x8, x1.5 6x12: scale 2
                                 * (a target not turned, 12x6, would allow no scaling) */
    enc_decode_opts o = {.fast_for = &p};
    enc_image im;
    enc_image_meta meta;
    assert_int_equal(enc_image_decode_ex(j6, len, &o, &im, &meta), 0);
    assert_int_equal(im.width, 16);
    assert_int_equal(im.height, 8);
    assert_int_equal(meta.full_width, 32);
    assert_int_equal(meta.full_height, 16);
    enc_image_free(&im);
    free(j6);

    int fast = -1;
    assert_int_equal(enc_decode_mode_parse("fast", &fast), 0);
    assert_int_equal(fast, 1);
    assert_int_equal(enc_decode_mode_parse("exact", &fast), 0);
    assert_int_equal(fast, 0);
    assert_int_equal(enc_decode_mode_parse("quick", &fast), UMG_EINVAL);
}

/* ---- thumbnails (enc_thumb.h) --------------------------------------------------- */

static double mean_abs_diff(const enc_image *a, const enc_image *b)
{
    assert_int_equal(a->width, b->width);
    assert_int_equal(a->height, b->height);
    size_t n = (size_t)a->width * a->height * 3;
    double s = 0;
    for (size_t i = 0; i < n; i++) s += abs((int)a->rgb[i] - (int)b->rgb[i]);
    return s / (double)n;
}

static void test_thumb_size(void **state)
{
    (void)state;
    static const int cases[][5] = {
        /* w, h, long side -> w, h */
        {640, 427, 320, 320, 214}, {427, 640, 320, 214, 320}, {4000, 3000, 320, 320, 240},
        {320, 100, 320, 320, 100}, {32, 16, 320, 32, 16} /* never upscaled */, {300, 224, 320, 300, 224},
        {10000, 1, 320, 320, 1}, {1, 10000, 320, 1, 320}, {5, 5, 320, 5, 5},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int tw, th;
        enc_thumb_size(cases[i][0], cases[i][1], cases[i][2], &tw, &th);
        if (tw != cases[i][3] || th != cases[i][4])
            fail_msg("%dx%d at %d: %dx%d, want %dx%d", cases[i][0], cases[i][1], cases[i][2], tw, th, cases[i][3],
                     cases[i][4]);
    }
}

/* Made from oriented pixels, the thumbnail is upright whatever the file's
 * EXIF orientation: each exif_N.jpg stores the same picture turned another
 * way; every thumbnail must look like the reference (PIL's exif_transpose),
 * and not like its mirror image. */
static void test_thumb_oriented(void **state)
{
    (void)state;
    enc_image ref = {0};
    ref.width = 32, ref.height = 16;
    size_t rl;
    ref.rgb = read_all(IMG_DIR "/exif_1.rgb", &rl);
    assert_int_equal(rl, 32 * 16 * 3);
    enc_image mirror = {32, 16, malloc(rl)};
    for (int y = 0; y < 16; y++)
        for (int x = 0; x < 32; x++) memcpy(mirror.rgb + (y * 32 + x) * 3, ref.rgb + (y * 32 + 31 - x) * 3, 3);
    for (int o = 1; o <= 8; o++) {
        char path[256];
        snprintf(path, sizeof path, IMG_DIR "/exif_%d.jpg", o);
        size_t len;
        uint8_t *jpg = read_all(path, &len);
        enc_image im = {0}, th = {0};
        assert_int_equal(enc_image_decode(jpg, len, MAXPX, &im), 0);
        uint8_t *t;
        size_t tl;
        assert_int_equal(enc_thumb_make(&im, ENC_THUMB_LONG_SIDE, ENC_THUMB_QUALITY, &t, &tl), 0);
        assert_true(tl > 3 && t[0] == 0xff && t[1] == 0xd8);
        assert_int_equal(enc_image_decode(t, tl, MAXPX, &th), 0);
        /* 32x16, as small as the photo: not enlarged to 320 */
        assert_int_equal(th.width, 32);
        assert_int_equal(th.height, 16);
        double d = mean_abs_diff(&th, &ref), dm = mean_abs_diff(&th, &mirror);
        if (!(d < 16 && dm > 40)) fail_msg("exif_%d: thumbnail differs from the upright photo by %.1f, from its mirror by %.1f", o, d, dm);
        free(t);
        free(jpg);
        enc_image_free(&im);
        enc_image_free(&th);
    }
    enc_image_free(&ref);
    enc_image_free(&mirror);
}

/* A real photo: long side 320 with the aspect kept, the pixels of the bicubic
 * resize up to JPEG's loss, none of the original's metadata. */
static void test_thumb_resized(void **state)
{
    (void)state;
    size_t len;
    uint8_t *jpg = read_all(CLIP_DIR "/images/rocket.jpg", &len);
    enc_image im = {0}, th = {0}, rs = {0};
    assert_int_equal(enc_image_decode(jpg, len, MAXPX, &im), 0);
    assert_int_equal(im.width, 640);
    uint8_t *t;
    size_t tl;
    assert_int_equal(enc_thumb_make(&im, ENC_THUMB_LONG_SIDE, ENC_THUMB_QUALITY, &t, &tl), 0);
    assert_int_equal(enc_image_decode(t, tl, MAXPX, &th), 0);
    assert_int_equal(th.width, 320);
    assert_int_equal(th.height, 214);
    assert_int_equal(enc_image_resize(&im, 320, 214, &rs), 0);
    double d = mean_abs_diff(&th, &rs);
    if (d > 4) fail_msg("thumbnail differs from the resized photo by %.2f per sample", d);
    assert_true(tl < 40000);                            /* ~15 KB at quality 80 */
    assert_null(memmem(t, tl, "Exif", 4));               /* no metadata carried over */
    /* a lower quality is smaller: the quality reaches the encoder */
    uint8_t *t2;
    size_t tl2;
    assert_int_equal(enc_thumb_make(&im, ENC_THUMB_LONG_SIDE, 30, &t2, &tl2), 0);
    assert_true(tl2 < tl * 3 / 4);
    free(t2);
    /* bad arguments */
    assert_int_equal(enc_thumb_make(&im, 0, 80, &t2, &tl2), UMG_EINVAL);
    assert_int_equal(enc_thumb_make(&im, 320, 101, &t2, &tl2), UMG_EINVAL);
    assert_null(t2);
    free(t);
    free(jpg);
    enc_image_free(&im);
    enc_image_free(&th);
    enc_image_free(&rs);
}

/* A photo over twice the thumbnail's size is box-reduced first (Pillow's
 * thumbnail() reducing_gap): the result must still match the plain bicubic
 * resize up to JPEG's loss, edge blocks included (sizes not divisible). */
static void test_thumb_reduced(void **state)
{
    (void)state;
    static const int sizes[][4] = {{2000, 1500, 320, 240}, {2001, 1333, 320, 213}, {333, 1999, 53, 320}};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        enc_image im = {sizes[k][0], sizes[k][1], malloc((size_t)sizes[k][0] * sizes[k][1] * 3)};
        for (int y = 0; y < im.height; y++)
            for (int x = 0; x < im.width; x++) {
                uint8_t *p = im.rgb + ((size_t)y * im.width + x) * 3;
                p[0] = (uint8_t)(255.0 * x / im.width);
                p[1] = (uint8_t)(127.5 + 120 * sin(x * 0.01) * cos(y * 0.013));
                p[2] = (uint8_t)(255.0 * y / im.height);
            }
        /* a bright last row and column: an edge block that averaged pixels it
         * does not have (or missed them) shows there */
        for (int x = 0; x < im.width; x++) memset(im.rgb + ((size_t)(im.height - 1) * im.width + x) * 3, 255, 3);
        for (int y = 0; y < im.height; y++) memset(im.rgb + ((size_t)y * im.width + im.width - 1) * 3, 255, 3);
        uint8_t *t;
        size_t tl;
        enc_image th = {0}, rs = {0};
        assert_int_equal(enc_thumb_make(&im, ENC_THUMB_LONG_SIDE, ENC_THUMB_QUALITY, &t, &tl), 0);
        assert_int_equal(enc_image_decode(t, tl, MAXPX, &th), 0);
        assert_int_equal(th.width, sizes[k][2]);
        assert_int_equal(th.height, sizes[k][3]);
        assert_int_equal(enc_image_resize(&im, th.width, th.height, &rs), 0);
        double d = mean_abs_diff(&th, &rs), edge = 0;
        for (int x = 0; x < th.width; x++) /* the last row */
            for (int c = 0; c < 3; c++) {
                size_t i = ((size_t)(th.height - 1) * th.width + x) * 3 + c;
                edge += abs((int)th.rgb[i] - (int)rs.rgb[i]);
            }
        for (int y = 0; y < th.height; y++) /* the last column */
            for (int c = 0; c < 3; c++) {
                size_t i = ((size_t)y * th.width + th.width - 1) * 3 + c;
                edge += abs((int)th.rgb[i] - (int)rs.rgb[i]);
            }
        edge /= 3.0 * (th.width + th.height);
        printf("  %dx%d: mean difference %.2f, on the last row and column %.2f\n", im.width, im.height, d, edge);
        if (d > 3 || edge > 8)
            fail_msg("%dx%d: reduced thumbnail differs from the bicubic resize by %.2f (edges %.2f)", im.width,
                     im.height, d, edge);
        free(t);
        enc_image_free(&im);
        enc_image_free(&th);
        enc_image_free(&rs);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_clip_fixture_pixels),
        cmocka_unit_test(test_geometry),
        cmocka_unit_test(test_pad_vs_pillow),
        cmocka_unit_test(test_crop_pads_small_resize),
        cmocka_unit_test(test_exif_orientation),
        cmocka_unit_test(test_png_variants),
        cmocka_unit_test(test_cmyk_jpeg),
        cmocka_unit_test(test_jpeg_variants),
        cmocka_unit_test(test_jpeg_scan_bomb),
        cmocka_unit_test(test_exif_hostile),
        cmocka_unit_test(test_ycck_jpeg),
        cmocka_unit_test(test_resize_vs_pillow),
        cmocka_unit_test(test_crop),
        cmocka_unit_test(test_preproc_load),
        cmocka_unit_test(test_empty_and_garbage),
        cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_corrupt),
        cmocka_unit_test(test_bombs),
        cmocka_unit_test(test_sniff),
        cmocka_unit_test(test_same_pixels_other_containers),
        cmocka_unit_test(test_formats_vs_pillow),
        cmocka_unit_test(test_heif_vs_libheif),
        cmocka_unit_test(test_heif_grid),
        cmocka_unit_test(test_orientation_containers),
        cmocka_unit_test(test_formats_truncated_corrupt),
        cmocka_unit_test(test_formats_pixel_limit),
        cmocka_unit_test(test_camera_names),
        cmocka_unit_test(test_capture_metadata),
        cmocka_unit_test(test_fast_decode),
        cmocka_unit_test(test_thumb_size),
        cmocka_unit_test(test_thumb_oriented),
        cmocka_unit_test(test_thumb_resized),
        cmocka_unit_test(test_thumb_reduced),
    };
    return cmocka_run_group_tests(tests, setup_tmp, teardown_tmp);
}
