/* test_regions.c - box geometry, NMS, dense region pooling (hand case and the
 * golden file written by tools/umgtrain/pooling.py), proposals (synthetic
 * scenes: determinism, bounds, R cap) and proposal recall on the committed
 * coco-mini annotations (issue 5 targets). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <jansson.h>

#include "enc_image.h"
#include "enc_regions.h"
#include "umg_error.h"

static enc_box B(float x, float y, float w, float h, float score)
{
    enc_box b = {x, y, w, h, score, ENC_BOX_SEGMENTS};
    return b;
}

static void test_iou(void **state)
{
    enc_box a = B(0, 0, 10, 10, 0), b = B(5, 0, 10, 10, 0), c = B(20, 20, 5, 5, 0);
    assert_float_equal(enc_box_iou(&a, &a), 1.0f, 1e-6);
    assert_float_equal(enc_box_iou(&a, &b), 50.0f / 150.0f, 1e-6);
    assert_float_equal(enc_box_iou(&b, &a), 50.0f / 150.0f, 1e-6);
    assert_float_equal(enc_box_iou(&a, &c), 0.0f, 0);
    enc_box empty = B(0, 0, 0, 10, 0);
    assert_float_equal(enc_box_iou(&a, &empty), 0.0f, 0);
}

static void test_nms(void **state)
{
    enc_box bx[6] = {
        B(0, 0, 10, 10, 0.5f),   /* suppressed by [2] (IoU 0.82) */
        B(50, 50, 10, 10, 0.9f), /* kept first */
        B(0, 0, 10, 11, 0.8f),   /* kept */
        B(5, 0, 10, 10, 0.7f),   /* IoU 1/3 with [2]: kept */
        B(50, 50, 10, 10, 0.9f), /* identical tie of [1]: suppressed */
        B(100, 100, 5, 5, 0.1f), /* kept */
    };
    enc_box copy[6];
    memcpy(copy, bx, sizeof bx);
    int n = enc_box_nms(copy, 6, 0.5f, 10);
    assert_int_equal(n, 4);
    assert_float_equal(copy[0].score, 0.9f, 0);
    assert_float_equal(copy[0].x, 50, 0);
    assert_float_equal(copy[1].score, 0.8f, 0);
    assert_float_equal(copy[2].score, 0.7f, 0);
    assert_float_equal(copy[3].score, 0.1f, 0);
    for (int i = 0; i < n; i++)
        for (int j = i + 1; j < n; j++)
            assert_true(enc_box_iou(&copy[i], &copy[j]) <= 0.5f);
    /* max_keep caps the count, keeping the best */
    memcpy(copy, bx, sizeof bx);
    assert_int_equal(enc_box_nms(copy, 6, 0.5f, 2), 2);
    assert_float_equal(copy[1].score, 0.8f, 0);
    /* threshold 1 keeps everything but reorders */
    memcpy(copy, bx, sizeof bx);
    assert_int_equal(enc_box_nms(copy, 6, 1.0f, 10), 6);
    assert_float_equal(copy[5].score, 0.1f, 0);
    assert_int_equal(enc_box_nms(NULL, 0, 0.5f, 3), 0);
    assert_int_equal(enc_box_nms(NULL, 2, 0.5f, 3), UMG_EINVAL);
}

/* ---- pooling ------------------------------------------------------------ */

static void test_pool_hand(void **state)
{
    /* 2x2 grid of 10-pixel patches, identity geometry. */
    enc_preproc_geom g = {20, 20, 0, 0, 1.0f, 1.0f, 20, 20};
    const float patches[4 * 2] = {
        3, 4,  /* (0,0) -> (0.6, 0.8) */
        0, 2,  /* (0,1) -> (0, 1) */
        -1, 0, /* (1,0) -> (-1, 0) */
        0, 0,  /* (1,1) zero token: weight counts, direction none */
    };
    float out[2];
    /* x 5..15, y 0..10: cells (0,0) and (0,1), half each */
    const float box1[4] = {5, 0, 10, 10};
    assert_int_equal(enc_region_pool(patches, 2, 2, 10, &g, box1, out), 0);
    float ex = 0.5f * 0.6f + 0.5f * 0.0f, ey = 0.5f * 0.8f + 0.5f * 1.0f;
    float nn = sqrtf(ex * ex + ey * ey);
    assert_float_equal(out[0], ex / nn, 1e-6);
    assert_float_equal(out[1], ey / nn, 1e-6);
    /* x 0..10, y 5..20: (0,0) weight 0.5, (1,0) weight 1 */
    const float box2[4] = {0, 5, 10, 15};
    assert_int_equal(enc_region_pool(patches, 2, 2, 10, &g, box2, out), 0);
    ex = (0.5f * 0.6f - 1.0f) / 1.5f;
    ey = (0.5f * 0.8f) / 1.5f;
    nn = sqrtf(ex * ex + ey * ey);
    assert_float_equal(out[0], ex / nn, 1e-6);
    assert_float_equal(out[1], ey / nn, 1e-6);
    /* scale 0.5 + offset 5: box 0..10 lands on 5..10 -> (0,0) quarter, only cell */
    enc_preproc_geom g2 = {10, 10, 5, 5, 0.5f, 0.5f, 20, 20};
    const float box3[4] = {0, 0, 10, 10};
    assert_int_equal(enc_region_pool(patches, 2, 2, 10, &g2, box3, out), 0);
    assert_float_equal(out[0], 0.6f, 1e-6);
    assert_float_equal(out[1], 0.8f, 1e-6);
    /* the grid rectangle helper agrees */
    float gr[4];
    enc_box_to_grid(&g2, 10, box3, gr);
    assert_float_equal(gr[0], 0.5f, 1e-6);
    assert_float_equal(gr[1], 0.5f, 1e-6);
    assert_float_equal(gr[2], 1.0f, 1e-6);
    assert_float_equal(gr[3], 1.0f, 1e-6);
}

static void test_pool_errors(void **state)
{
    enc_preproc_geom g = {20, 20, 0, 0, 1.0f, 1.0f, 20, 20};
    float patches[8] = {1, 0, 1, 0, 1, 0, 1, 0}, out[2];
    const float outside[4] = {30, 30, 5, 5}, empty[4] = {5, 5, 0, 3}, nan_box[4] = {NAN, 0, 3, 3};
    const float ok[4] = {0, 0, 5, 5};
    assert_int_equal(enc_region_pool(patches, 2, 2, 10, &g, outside, out), UMG_EINVAL);
    assert_int_equal(enc_region_pool(patches, 2, 2, 10, &g, empty, out), UMG_EINVAL);
    assert_int_equal(enc_region_pool(patches, 2, 2, 10, &g, nan_box, out), UMG_EINVAL);
    assert_int_equal(enc_region_pool(NULL, 2, 2, 10, &g, ok, out), UMG_EINVAL);
    assert_int_equal(enc_region_pool(patches, 0, 2, 10, &g, ok, out), UMG_EINVAL);
    assert_int_equal(enc_region_pool(patches, 2, 2, 10, &g, ok, out), 0);
}

static float jnum(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    assert_non_null(v);
    assert_true(json_is_number(v));
    return (float)json_number_value(v);
}

static void test_pool_golden(void **state)
{
    const char *path = UMG_FIXTURES_DIR "/pooling/golden.json";
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root)
        fail_msg("%s: %s", path, jerr.text);
    json_t *cases = json_object_get(root, "cases");
    assert_true(json_is_array(cases));
    assert_true(json_array_size(cases) >= 5);
    size_t ci;
    json_t *c;
    json_array_foreach(cases, ci, c) {
        int grid = (int)jnum(c, "grid"), dim = (int)jnum(c, "dim"), ps = (int)jnum(c, "patch_size");
        json_t *jg = json_object_get(c, "geom");
        enc_preproc_geom g;
        g.resized_w = (int)jnum(jg, "resized_w");
        g.resized_h = (int)jnum(jg, "resized_h");
        g.off_x = (int)jnum(jg, "off_x");
        g.off_y = (int)jnum(jg, "off_y");
        g.scale_x = jnum(jg, "scale_x");
        g.scale_y = jnum(jg, "scale_y");
        g.input_w = (int)jnum(jg, "input_w");
        g.input_h = (int)jnum(jg, "input_h");
        json_t *jp = json_object_get(c, "patches");
        assert_int_equal(json_array_size(jp), (size_t)grid * grid);
        float *patches = malloc((size_t)grid * grid * dim * sizeof *patches);
        float *out = malloc((size_t)dim * sizeof *out);
        assert_non_null(patches);
        assert_non_null(out);
        for (int i = 0; i < grid * grid; i++) {
            json_t *row = json_array_get(jp, (size_t)i);
            assert_int_equal(json_array_size(row), (size_t)dim);
            for (int d = 0; d < dim; d++)
                patches[(size_t)i * dim + d] = (float)json_number_value(json_array_get(row, (size_t)d));
        }
        float box[4];
        for (int k = 0; k < 4; k++)
            box[k] = (float)json_number_value(json_array_get(json_object_get(c, "box"), (size_t)k));
        json_t *exp = json_object_get(c, "expected");
        int rc = enc_region_pool(patches, grid, dim, ps, &g, box, out);
        if (json_is_null(exp) || !exp) {
            assert_int_equal(rc, UMG_EINVAL); /* the twin has no vector for it either */
        } else {
            if (rc)
                fail_msg("case %zu: rc %d %s", ci, rc, umg_err_msg());
            assert_int_equal(json_array_size(exp), (size_t)dim);
            for (int d = 0; d < dim; d++) {
                float e = (float)json_number_value(json_array_get(exp, (size_t)d));
                if (fabsf(out[d] - e) > 1e-5f)
                    fail_msg("case %zu (%s) dim %d: %.7f vs golden %.7f", ci,
                             json_string_value(json_object_get(c, "note")), d, out[d], e);
            }
        }
        free(patches);
        free(out);
    }
    json_decref(root);
}

static void test_grid_roundtrip(void **state)
{
    enc_preproc p;
    enc_preproc_default(&p, 224);
    p.fit = ENC_FIT_PAD;
    enc_preproc_geom g;
    enc_preproc_geometry(&p, 640, 427, &g);
    const float box[4] = {100.5f, 20, 300, 250};
    float gr[4], back[4];
    enc_box_to_grid(&g, 32, box, gr);
    assert_true(gr[0] >= 0 && gr[2] <= 7 && gr[1] >= 0 && gr[3] <= 7);
    enc_box_from_grid(&g, 32, gr, 640, 427, back);
    for (int k = 0; k < 4; k++)
        assert_float_equal(back[k], box[k], 1e-3);
    /* a whole-grid rectangle maps back to the whole photo (the padding is cut off) */
    const float all[4] = {0, 0, 7, 7};
    enc_box_from_grid(&g, 32, all, 640, 427, back);
    assert_float_equal(back[0], 0, 1e-4);
    assert_float_equal(back[1], 0, 1e-4);
    assert_float_equal(back[2], 640, 1e-3);
    assert_float_equal(back[3], 427, 1e-3);
}

/* ---- proposals on synthetic scenes ------------------------------------- */

/* A textured background with three flat-coloured objects. */
static void synth_scene(enc_image *img, int w, int h, const int objs[3][4])
{
    img->width = w;
    img->height = h;
    img->rgb = malloc((size_t)w * h * 3);
    assert_non_null(img->rgb);
    uint32_t s = 12345;
    for (int i = 0; i < w * h; i++) {
        s = s * 1103515245u + 12345u;
        int n = (int)(s >> 27); /* 0..31 of noise */
        img->rgb[i * 3] = (uint8_t)(90 + n);
        img->rgb[i * 3 + 1] = (uint8_t)(120 + n);
        img->rgb[i * 3 + 2] = (uint8_t)(80 + n);
    }
    static const uint8_t col[3][3] = {{230, 30, 30}, {20, 40, 220}, {250, 240, 40}};
    for (int o = 0; o < 3; o++)
        for (int y = objs[o][1]; y < objs[o][1] + objs[o][3]; y++)
            for (int x = objs[o][0]; x < objs[o][0] + objs[o][2]; x++)
                memcpy(img->rgb + ((size_t)y * w + x) * 3, col[o], 3);
}

static void test_propose_synthetic(void **state)
{
    const int objs[3][4] = {{40, 50, 120, 90}, {300, 200, 150, 160}, {480, 30, 100, 60}};
    enc_image img;
    synth_scene(&img, 640, 400, objs);
    enc_propose_opts o;
    enc_propose_opts_default(&o);
    enc_box a[64], b[64];
    int na = 0, nb = 0;
    assert_int_equal(enc_propose(&img, &o, a, 64, &na), 0);
    assert_true(na > 0 && na <= o.max_boxes);
    /* deterministic: same boxes, same order */
    assert_int_equal(enc_propose(&img, &o, b, 64, &nb), 0);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, (size_t)na * sizeof *a);
    for (int i = 0; i < na; i++) {
        assert_true(a[i].x >= 0 && a[i].y >= 0 && a[i].w > 0 && a[i].h > 0);
        assert_true(a[i].x + a[i].w <= 640.001f && a[i].y + a[i].h <= 400.001f);
        assert_true(a[i].method == ENC_BOX_WINDOW || a[i].method == ENC_BOX_SEGMENTS);
        if (i > 0)
            assert_true(a[i].score <= a[i - 1].score); /* ranked */
        for (int j = 0; j < i; j++)
            if (a[i].method == ENC_BOX_SEGMENTS && a[j].method == ENC_BOX_SEGMENTS)
                assert_true(enc_box_iou(&a[i], &a[j]) <= o.nms_iou + 1e-6f);
    }
    /* every object is found tightly */
    for (int k = 0; k < 3; k++) {
        enc_box gt = B((float)objs[k][0], (float)objs[k][1], (float)objs[k][2], (float)objs[k][3], 0);
        float best = 0;
        for (int i = 0; i < na; i++)
            best = fmaxf(best, enc_box_iou(&gt, &a[i]));
        if (best < 0.7f) /* boxes snap to work pixels (5 original pixels here) */
            fail_msg("object %d found with IoU %.3f only", k, best);
    }
    /* the whole image is among the boxes (as a window, or a segment group repeating it) */
    enc_box all = B(0, 0, 640, 400, 0);
    float whole = 0;
    for (int i = 0; i < na; i++)
        whole = fmaxf(whole, enc_box_iou(&all, &a[i]));
    assert_true(whole > 0.6f);
    /* R caps: opts and max_out */
    o.max_boxes = 5;
    assert_int_equal(enc_propose(&img, &o, a, 64, &na), 0);
    assert_true(na == 5);
    o.max_boxes = 32;
    assert_int_equal(enc_propose(&img, &o, a, 3, &na), 0);
    assert_true(na == 3);
    enc_image_free(&img);
}

static void test_propose_edge_cases(void **state)
{
    enc_propose_opts o;
    enc_propose_opts_default(&o);
    enc_box out[32];
    int n = -1;
    /* tiny and flat images still work */
    uint8_t px[3 * 3 * 2];
    memset(px, 128, sizeof px);
    enc_image tiny = {3, 2, px};
    o.min_side = 0;
    assert_int_equal(enc_propose(&tiny, &o, out, 32, &n), 0);
    assert_true(n >= 1 && n <= 32);
    for (int i = 0; i < n; i++)
        assert_true(out[i].x >= 0 && out[i].x + out[i].w <= 3.001f && out[i].y + out[i].h <= 2.001f);
    /* one-pixel-high panorama */
    uint8_t *row = calloc(2000 * 3, 1);
    enc_image pano = {2000, 1, row};
    assert_int_equal(enc_propose(&pano, &o, out, 32, &n), 0);
    free(row);
    /* bad arguments */
    assert_int_equal(enc_propose(NULL, &o, out, 32, &n), UMG_EINVAL);
    enc_image none = {0, 0, NULL};
    assert_int_equal(enc_propose(&none, &o, out, 32, &n), UMG_EINVAL);
    o.work_side = 8;
    assert_int_equal(enc_propose(&tiny, &o, out, 32, &n), UMG_EINVAL);
    enc_propose_opts_default(&o);
    o.nms_iou = 0;
    assert_int_equal(enc_propose(&tiny, &o, out, 32, &n), UMG_EINVAL);
    enc_propose_opts_default(&o);
    assert_int_equal(enc_propose(&tiny, &o, NULL, 32, &n), UMG_EINVAL);
    assert_int_equal(enc_propose(&tiny, &o, NULL, 0, &n), 0);
    assert_int_equal(n, 0);
}

/* ---- recall on coco-mini (issue 5) -------------------------------------- */

/* Issue 5 targets: recall of the annotated boxes of area >= 32x32 at IoU 0.5,
 * >= 0.60 with R = 32 and >= 0.75 with R = 64.  NOT MET: the levels asserted
 * here are the ones measured (docs/regions.md: 0.414 and 0.513 over all 159
 * photos; 0.473 and 0.582 on the val2017 half, which the score was not fitted
 * on) minus a 0.02 margin, so that a regression fails the test; the targets
 * stay printed next to them. */
#define TARGET_R32 0.60
#define TARGET_R64 0.75
#define FLOOR_R32 0.39
#define FLOOR_R64 0.49
#define FLOOR_VAL_R32 0.45
#define FLOOR_VAL_R64 0.56

typedef struct recall_acc {
    int total, hit32, hit64;
    int images;
} recall_acc;

static void recall_split(const char *split, int stride, recall_acc *acc)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/coco-mini/annotations/instances_%s2017.json", UMG_FIXTURES_DIR, split);
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root)
        fail_msg("%s: %s", path, jerr.text);
    json_t *images = json_object_get(root, "images"), *anns = json_object_get(root, "annotations");
    assert_true(json_is_array(images) && json_is_array(anns));
    size_t ii;
    json_t *im;
    int idx = 0;
    json_array_foreach(images, ii, im) {
        json_int_t id = json_integer_value(json_object_get(im, "id"));
        /* the annotated boxes of this image with area >= 32x32, crowds excluded */
        enc_box gt[128];
        int ngt = 0;
        size_t ai;
        json_t *a;
        json_array_foreach(anns, ai, a) {
            if (json_integer_value(json_object_get(a, "image_id")) != id)
                continue;
            if (json_integer_value(json_object_get(a, "iscrowd")))
                continue;
            json_t *bb = json_object_get(a, "bbox");
            enc_box b = B((float)json_number_value(json_array_get(bb, 0)),
                          (float)json_number_value(json_array_get(bb, 1)),
                          (float)json_number_value(json_array_get(bb, 2)),
                          (float)json_number_value(json_array_get(bb, 3)), 0);
            if (b.w * b.h >= 32.0f * 32.0f && ngt < 128)
                gt[ngt++] = b;
        }
        if (ngt == 0)
            continue;
        if (idx++ % stride)
            continue;
        snprintf(path, sizeof path, "%s/coco-mini/%s2017/%s", UMG_FIXTURES_DIR, split,
                 json_string_value(json_object_get(im, "file_name")));
        enc_image img;
        int rc = enc_image_load(path, ENC_IMAGE_MAX_PIXELS_DEFAULT, &img);
        if (rc)
            fail_msg("%s: %s", path, umg_err_msg());
        assert_int_equal(img.width, (int)json_integer_value(json_object_get(im, "width")));
        assert_int_equal(img.height, (int)json_integer_value(json_object_get(im, "height")));
        enc_propose_opts o;
        enc_propose_opts_default(&o);
        enc_box out[64];
        int n32 = 0, n64 = 0;
        for (int pass = 0; pass < 2; pass++) {
            o.max_boxes = pass ? 64 : 32;
            int n = 0;
            assert_int_equal(enc_propose(&img, &o, out, 64, &n), 0);
            assert_true(n <= o.max_boxes);
            for (int g = 0; g < ngt; g++) {
                float best = 0;
                for (int k = 0; k < n; k++)
                    best = fmaxf(best, enc_box_iou(&gt[g], &out[k]));
                if (best >= 0.5f) {
                    if (pass) n64++;
                    else n32++;
                }
            }
        }
        acc->total += ngt;
        acc->hit32 += n32;
        acc->hit64 += n64;
        acc->images++;
        enc_image_free(&img);
    }
    json_decref(root);
}

static void test_proposal_recall_coco_mini(void **state)
{
    /* Every photo in Release; the sanitizer build (10x slower) takes every 4th
     * (UMG_RECALL_STRIDE overrides) with a wider margin for the smaller sample. */
    int stride = 1;
#if defined(__SANITIZE_ADDRESS__)
    stride = 4;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
    stride = 4;
#endif
#endif
    const char *e = getenv("UMG_RECALL_STRIDE");
    if (e && atoi(e) > 0)
        stride = atoi(e);
    recall_acc tr = {0}, val = {0};
    recall_split("train", stride, &tr);
    recall_split("val", stride, &val);
    assert_true(tr.total > 0 && val.total > 0);
    recall_acc acc = {tr.total + val.total, tr.hit32 + val.hit32, tr.hit64 + val.hit64, tr.images + val.images};
    double r32 = (double)acc.hit32 / acc.total, r64 = (double)acc.hit64 / acc.total;
    double v32 = (double)val.hit32 / val.total, v64 = (double)val.hit64 / val.total;
    double margin = stride == 1 ? 0.0 : 0.05;
    printf("proposal recall, %d photos (stride %d), %d boxes >= 32x32, IoU 0.5: "
           "R=32 %.3f (floor %.2f, issue target %.2f), R=64 %.3f (floor %.2f, target %.2f); "
           "val2017 (held out, %d photos) R=32 %.3f (floor %.2f), R=64 %.3f (floor %.2f)\n",
           acc.images, stride, acc.total, r32, FLOOR_R32 - margin, TARGET_R32, r64, FLOOR_R64 - margin,
           TARGET_R64, val.images, v32, FLOOR_VAL_R32 - margin, v64, FLOOR_VAL_R64 - margin);
    if (stride == 1)
        assert_int_equal(acc.images, 158); /* 159 annotated photos; one has no box >= 32x32 */
    assert_true(r32 >= FLOOR_R32 - margin);
    assert_true(r64 >= FLOOR_R64 - margin);
    assert_true(v32 >= FLOOR_VAL_R32 - margin);
    assert_true(v64 >= FLOOR_VAL_R64 - margin);
    assert_true(r64 >= r32);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_iou),
        cmocka_unit_test(test_nms),
        cmocka_unit_test(test_pool_hand),
        cmocka_unit_test(test_pool_errors),
        cmocka_unit_test(test_pool_golden),
        cmocka_unit_test(test_grid_roundtrip),
        cmocka_unit_test(test_propose_synthetic),
        cmocka_unit_test(test_propose_edge_cases),
        cmocka_unit_test(test_proposal_recall_coco_mini),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
