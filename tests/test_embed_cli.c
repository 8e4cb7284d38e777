/* test_embed_cli.c - `umgdb embed` run as a real process (env UMG_BIN), its
 * JSON lines checked against tests/fixtures/clip-tiny/reference.json. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "enc.h"
#include "enc_image.h"
#include "test_util.h"

#define TINY UMG_FIXTURES_DIR "/clip-tiny"

static json_t *ref;

/* got (already normalized) against normalize(want). */
static void check_normalized(json_t *got, json_t *want, const char *what)
{
    size_t n = json_array_size(want);
    assert_int_equal(json_array_size(got), n);
    double nw = 0, ng = 0, dot = 0, maxd = 0;
    for (size_t i = 0; i < n; i++)
        nw += pow(json_number_value(json_array_get(want, i)), 2);
    nw = sqrt(nw);
    for (size_t i = 0; i < n; i++) {
        double g = json_number_value(json_array_get(got, i)), w = json_number_value(json_array_get(want, i)) / nw;
        ng += g * g;
        dot += g * w;
        maxd = fmax(maxd, fabs(g - w));
    }
    if (fabs(sqrt(ng) - 1) > 1e-5 || dot / sqrt(ng) < 0.99999 || maxd > 1e-4)
        fail_msg("%s: |v| %.7f, cosine %.8f, max |diff| %.3g", what, sqrt(ng), dot / sqrt(ng), maxd);
}

static json_t *ref_image(const char *file)
{
    size_t i;
    json_t *it;
    json_array_foreach(json_object_get(ref, "images"), i, it)
        if (!strcmp(json_string_value(json_object_get(it, "file")), file))
            return it;
    fail_msg("no reference image %s", file);
    return NULL;
}

static void test_image_patches(void **state)
{
    const char *args[] = {"embed", "--model", TINY, "--image", TINY "/images/chelsea.png", "--patches", NULL};
    tu_result r = tu_run(args);
    if (r.status)
        fail_msg("exit %d: %s", r.status, r.err);
    json_t *ls = tu_json_lines(r.out);
    assert_int_equal(json_array_size(ls), 1);
    json_t *o = json_array_get(ls, 0), *want = ref_image("chelsea.png");
    check_normalized(json_object_get(o, "embedding"), json_object_get(want, "embedding"), "chelsea embedding");
    json_t *p = json_object_get(o, "patches"), *wp = json_object_get(want, "patch_tokens_projected");
    assert_int_equal(json_array_size(p), 49);
    assert_int_equal(json_array_size(wp), 49);
    for (size_t k = 0; k < 49; k++) {
        char what[64];
        snprintf(what, sizeof what, "chelsea patch %zu", k);
        check_normalized(json_array_get(p, k), json_array_get(wp, k), what);
    }
    assert_null(json_object_get(o, "ids"));
    json_decref(ls);
    tu_result_free(&r);
}

/* Images and texts interleaved; batches of 2 on 2 threads: order kept. */
static void test_mixed_order(void **state)
{
    const char *files[] = {"astronaut.png", "camera.png", "chelsea.png", "coffee.png", "motorcycle_left.png",
                           "rocket.jpg"};
    char paths[6][512];
    const char *args[40];
    int n = 0;
    args[n++] = "embed";
    args[n++] = "--model";
    args[n++] = TINY;
    args[n++] = "--batch";
    args[n++] = "2";
    args[n++] = "--threads";
    args[n++] = "2";
    json_t *texts = json_object_get(ref, "texts");
    /* order: text0, img0..2, text1, img3..5, text2..last */
    json_t *expect = json_array();
    for (int k = 0; k < 6; k++)
        snprintf(paths[k], sizeof paths[k], "%s/images/%s", TINY, files[k]);
    int ti = 0;
    args[n++] = "--text";
    args[n++] = json_string_value(json_object_get(json_array_get(texts, ti), "text"));
    json_array_append(expect, json_array_get(texts, ti++));
    for (int k = 0; k < 6; k++) {
        if (k == 3) {
            args[n++] = "--text";
            args[n++] = json_string_value(json_object_get(json_array_get(texts, ti), "text"));
            json_array_append(expect, json_array_get(texts, ti++));
        }
        args[n++] = "--image";
        args[n++] = paths[k];
        json_array_append(expect, ref_image(files[k]));
    }
    for (; ti < (int)json_array_size(texts); ti++) {
        args[n++] = "--text";
        args[n++] = json_string_value(json_object_get(json_array_get(texts, ti), "text"));
        json_array_append(expect, json_array_get(texts, ti));
    }
    args[n] = NULL;
    tu_result r = tu_run(args);
    if (r.status)
        fail_msg("exit %d: %s", r.status, r.err);
    json_t *ls = tu_json_lines(r.out);
    assert_int_equal(json_array_size(ls), json_array_size(expect));
    for (size_t i = 0; i < json_array_size(ls); i++) {
        json_t *o = json_array_get(ls, i), *w = json_array_get(expect, i);
        json_t *text = json_object_get(w, "text");
        char what[160];
        snprintf(what, sizeof what, "line %zu (%s)", i,
                 text ? json_string_value(text) : json_string_value(json_object_get(w, "file")));
        check_normalized(json_object_get(o, "embedding"), json_object_get(w, "embedding"), what);
        if (text) {
            assert_true(json_equal(json_object_get(o, "ids"), json_object_get(w, "ids")));
        } else {
            assert_null(json_object_get(o, "ids"));
            assert_null(json_object_get(o, "patches"));
        }
    }
    json_decref(ls);
    json_decref(expect);
    tu_result_free(&r);
}

/* `embed --decode fast` (the default) feeds the network the DCT-scaled decode of
 * a large JPEG, `--decode exact` the full-resolution one (issue 17): each dump
 * equals what the image library computes for that mode, and they differ. */
static void test_decode_modes(void **state)
{
    /* fmt_large.jpg (1000x664) doubled by pixel repetition: a 2000x1328 JPEG, which fast
     * decodes at 1/2 (1000x664 keeps 1.5x the 337x224 input; 1000x664 itself would not shrink) */
    char img[] = "/tmp/umg-embed-large-XXXXXX";
    int ifd = mkstemp(img);
    assert_true(ifd >= 0);
    close(ifd);
    {
        enc_image small;
        assert_int_equal(enc_image_load_ex(UMG_FIXTURES_DIR "/images/fmt_large.jpg", NULL, &small, NULL), 0);
        const int W = small.width * 2, H = small.height * 2;
        uint8_t *big = malloc((size_t)W * H * 3);
        assert_non_null(big);
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++)
                memcpy(big + ((size_t)y * W + x) * 3, small.rgb + ((size_t)(y / 2) * small.width + x / 2) * 3, 3);
        tu_write_jpeg(img, big, W, H, 90, 0);
        free(big);
        enc_image_free(&small);
    }
    enc_preproc p;
    enc_preproc_default(&p, 224);
    const size_t n = (size_t)3 * 224 * 224;
    float *want[2] = {malloc(n * sizeof(float)), malloc(n * sizeof(float))};
    for (int fast = 0; fast < 2; fast++) {
        enc_decode_opts o = {.fast_for = fast ? &p : NULL};
        enc_image im;
        assert_int_equal(enc_image_load_ex(img, &o, &im, NULL), 0);
        assert_int_equal(im.width, fast ? 1000 : 2000);
        assert_int_equal(enc_preprocess(&im, &p, want[fast]), 0);
        enc_image_free(&im);
    }
    assert_true(memcmp(want[0], want[1], n * sizeof(float)) != 0);
    static const char *const modes[] = {"exact", "fast", NULL};
    for (int k = 0; k < 3; k++) {
        char out[] = "/tmp/umg-embed-decode-XXXXXX";
        int fd = mkstemp(out);
        assert_true(fd >= 0);
        close(fd);
        const char *args[] = {"embed", "--model", TINY, "--image", img, "--dump-pixels", out,
                              modes[k] ? "--decode" : NULL, modes[k], NULL};
        tu_result r = tu_run(args);
        if (r.status)
            fail_msg("--decode %s: exit %d: %s", modes[k] ? modes[k] : "(default)", r.status, r.err);
        size_t len;
        float *got = (float *)tu_read_file(out, &len);
        assert_int_equal(len, n * sizeof(float));
        assert_memory_equal(got, want[k != 0], len); /* the default is fast */
        free(got);
        unlink(out);
        tu_result_free(&r);
    }
    const char *bad[] = {"embed", "--model", TINY, "--image", img, "--decode", "quick", NULL};
    tu_result r = tu_run(bad);
    assert_int_equal(r.status, 2);
    assert_non_null(strstr(r.err, "--decode"));
    tu_result_free(&r);
    free(want[0]);
    free(want[1]);
    unlink(img);
}

static void test_dump_pixels(void **state)
{
    char out[] = "/tmp/umg-embed-pixels-XXXXXX";
    int fd = mkstemp(out);
    assert_true(fd >= 0);
    close(fd);
    const char *args[] = {"embed", "--model", TINY, "--image", TINY "/images/rocket.jpg", "--dump-pixels", out, NULL};
    tu_result r = tu_run(args);
    if (r.status)
        fail_msg("exit %d: %s", r.status, r.err);
    size_t len, wlen;
    float *got = (float *)tu_read_file(out, &len);
    float *want = (float *)tu_read_file(TINY "/pixels/rocket.f32", &wlen);
    assert_int_equal(len, (size_t)3 * 224 * 224 * 4);
    assert_int_equal(len, wlen);
    double sum = 0, maxd = 0;
    for (size_t i = 0; i < len / 4; i++) {
        double d = fabs(got[i] - want[i]);
        sum += d;
        maxd = fmax(maxd, d);
    }
    assert_true(sum / (len / 4) <= 0.005);
    assert_true(maxd <= 0.05);
    json_t *ls = tu_json_lines(r.out);
    assert_int_equal(json_array_size(ls), 1);
    check_normalized(json_object_get(json_array_get(ls, 0), "embedding"),
                     json_object_get(ref_image("rocket.jpg"), "embedding"), "rocket embedding");
    json_decref(ls);
    free(got);
    free(want);
    unlink(out);
    tu_result_free(&r);
}

/* float equality of a printed value ("%.9g" round-trips a float exactly) */
static void expect_exact(json_t *got, const float *want, int n, const char *what)
{
    assert_int_equal(json_array_size(got), n);
    for (int i = 0; i < n; i++) {
        float g = (float)json_number_value(json_array_get(got, i));
        if (memcmp(&g, &want[i], sizeof g))
            fail_msg("%s [%d]: %.9g, sequential %.9g", what, i, g, want[i]);
    }
}

/* Decoding beside encoding (issue 17) changes nothing: `embed` with batches of 3
 * on 2 and 3 threads (prepare threads, encoder threads and the printer at once,
 * 25 images: 9 batches through 3 result slots) prints exactly the numbers of the
 * plain sequential loop computed here (decode, preprocess, encode one photo at a
 * time), texts in their places. */
static void test_pipeline_same_as_sequential(void **state)
{
    enum { N = 25 };
    char paths[N][600];
    const char *args[2 * N + 16];
    const char *texts[] = {"a dog on the beach", "two cats"};
    FILE *ls = popen("ls " UMG_FIXTURES_DIR "/coco-mini/train2017/*.jpg | head -24", "r");
    assert_non_null(ls);
    int n_img = 0;
    while (n_img < N - 1 && fgets(paths[n_img], sizeof paths[n_img], ls))
        paths[n_img][strcspn(paths[n_img], "\n")] = 0, n_img++;
    pclose(ls);
    assert_int_equal(n_img, N - 1);
    snprintf(paths[n_img++], sizeof paths[0], "%s", UMG_FIXTURES_DIR "/images/fmt_grid.heic");

    enc_model *m;
    enc_run *run;
    assert_int_equal(enc_model_open(TINY, &m), 0);
    assert_int_equal(enc_run_create(m, 1, &run), 0);
    int D = enc_model_dim(m), G = enc_model_grid(m);
    float *want = malloc((size_t)N * D * sizeof(float)), *want_p = malloc((size_t)N * G * G * D * sizeof(float));
    float *px = malloc((size_t)3 * 224 * 224 * sizeof(float)), want_t[2][64];
    assert_true(D <= 64);
    for (int i = 0; i < N; i++) {
        enc_decode_opts o = {.fast_for = enc_model_preproc(m)}; /* --decode fast, the default */
        enc_image im;
        assert_int_equal(enc_image_load_ex(paths[i], &o, &im, NULL), 0);
        assert_int_equal(enc_preprocess(&im, enc_model_preproc(m), px), 0);
        enc_image_free(&im);
        assert_int_equal(enc_encode_pixels(run, px, 1, want + (size_t)i * D, want_p + (size_t)i * G * G * D), 0);
        enc_l2_normalize(want + (size_t)i * D, D);
        for (int p = 0; p < G * G; p++)
            enc_l2_normalize(want_p + ((size_t)i * G * G + p) * D, D);
    }
    for (int t = 0; t < 2; t++) {
        int n_ids;
        int32_t ids[ENC_CONTEXT_LENGTH];
        assert_int_equal(enc_encode_text(run, texts[t], strlen(texts[t]), want_t[t], ids, &n_ids), 0);
        enc_l2_normalize(want_t[t], D);
    }
    enc_run_close(run);
    enc_model_close(m);

    static const char *const threads[] = {"2", "3"};
    for (int v = 0; v < 2; v++) {
        int n = 0;
        args[n++] = "embed";
        args[n++] = "--model";
        args[n++] = TINY;
        args[n++] = "--batch";
        args[n++] = "3";
        args[n++] = "--threads";
        args[n++] = threads[v];
        args[n++] = "--patches";
        for (int i = 0; i < N; i++) {
            if (i == 4 || i == 20) { /* texts in the middle of batches */
                args[n++] = "--text";
                args[n++] = texts[i == 20];
            }
            args[n++] = "--image";
            args[n++] = paths[i];
        }
        args[n] = NULL;
        tu_result r = tu_run(args);
        if (r.status)
            fail_msg("exit %d: %s", r.status, r.err);
        json_t *lines = tu_json_lines(r.out);
        assert_int_equal(json_array_size(lines), N + 2);
        for (int l = 0, i = 0; l < N + 2; l++) {
            json_t *o = json_array_get(lines, l);
            char what[64];
            if (l == 4 || l == 21) {
                snprintf(what, sizeof what, "threads %s, text line %d", threads[v], l);
                expect_exact(json_object_get(o, "embedding"), want_t[l == 21], D, what);
                continue;
            }
            snprintf(what, sizeof what, "threads %s, image %d", threads[v], i);
            expect_exact(json_object_get(o, "embedding"), want + (size_t)i * D, D, what);
            json_t *pt = json_object_get(o, "patches");
            assert_int_equal(json_array_size(pt), G * G);
            for (int p = 0; p < G * G; p++)
                expect_exact(json_array_get(pt, p), want_p + ((size_t)i * G * G + p) * D, D, what);
            i++;
        }
        json_decref(lines);
        tu_result_free(&r);
    }
    free(want);
    free(want_p);
    free(px);
}

/* A photo that fails in a later batch: everything before it is printed (images
 * of earlier batches and of its own, texts), then the error naming it. */
static void test_pipeline_failure_midway(void **state)
{
    const char *img = TINY "/images/chelsea.png", *bad = TINY "/config.json";
    const char *args[] = {"embed", "--model", TINY, "--batch", "2", "--threads", "2",
                          "--image", img, "--image", img, "--image", img, "--text", "x",
                          "--image", img, "--image", bad, "--image", img, "--image", img, NULL};
    tu_result r = tu_run(args);
    assert_int_equal(r.status, 1);
    json_t *ls = tu_json_lines(r.out);
    assert_int_equal(json_array_size(ls), 5);
    assert_non_null(json_object_get(json_array_get(ls, 3), "ids")); /* the text, in its place */
    if (!strstr(r.err, "config.json") || !strstr(r.err, "unsupported format"))
        fail_msg("stderr \"%s\"", r.err);
    json_decref(ls);
    tu_result_free(&r);
}

static void expect_failure(const char *const *args, int status, const char *needle)
{
    tu_result r = tu_run(args);
    if (r.status != status || !strstr(r.err, needle))
        fail_msg("%s %s: exit %d, stderr \"%s\" (wanted exit %d mentioning \"%s\")", args[1], args[2], r.status,
                 r.err, status, needle);
    tu_result_free(&r);
}

static void test_errors(void **state)
{
    const char *no_model[] = {"embed", "--model", "/nonexistent-model", "--text", "x", NULL};
    expect_failure(no_model, 1, "/nonexistent-model/config.json");
    const char *bad_image[] = {"embed", "--model", TINY, "--image", TINY "/config.json", NULL};
    expect_failure(bad_image, 1, "config.json");
    const char *missing_image[] = {"embed", "--model", TINY, "--text", "ok", "--image", "/nonexistent.png", NULL};
    expect_failure(missing_image, 1, "/nonexistent.png");
    const char *no_input[] = {"embed", "--model", TINY, NULL};
    expect_failure(no_input, 2, "--image");
    const char *no_dir[] = {"embed", "--text", "x", NULL};
    expect_failure(no_dir, 2, "--model");
    const char *two_dump[] = {"embed", "--model", TINY, "--image", "a.png", "--image", "b.png", "--dump-pixels",
                              "/tmp/x.f32", NULL};
    expect_failure(two_dump, 2, "--dump-pixels");
    const char *bad_batch[] = {"embed", "--model", TINY, "--text", "x", "--batch", "0", NULL};
    expect_failure(bad_batch, 2, "--batch");
    const char *bad_precision[] = {"embed", "--model", TINY, "--text", "x", "--precision", "fp8", NULL};
    expect_failure(bad_precision, 2, "--precision");
    const char *bad_opt[] = {"embed", "--model", TINY, "--frobnicate", NULL};
    expect_failure(bad_opt, 2, "--frobnicate");

    const char *help[] = {"embed", "--help", NULL};
    tu_result r = tu_run(help);
    assert_int_equal(r.status, 0);
    assert_non_null(strstr(r.out, "--dump-pixels"));
    tu_result_free(&r);

    /* a failure after good inputs: the good ones are printed, then the error */
    const char *late[] = {"embed", "--model", TINY, "--text", "a cat", "--image", "/nonexistent.png", NULL};
    r = tu_run(late);
    assert_int_equal(r.status, 1);
    json_t *ls = tu_json_lines(r.out);
    assert_int_equal(json_array_size(ls), 1);
    json_decref(ls);
    tu_result_free(&r);
}

/* UMG_CPU caps the kernels umgdb runs (read by the program, applied with
 * enc_cpu_limit_named); an unknown value is named and ignored. */
static void test_cpu_cap_env(void **state)
{
    const char *args[] = {"embed", "--verbose", "--model", TINY, "--text", "a cat", NULL};
    const char *plain[] = {"UMG_CPU=c", NULL}, *bogus[] = {"UMG_CPU=bogus", NULL};
    tu_result r = tu_run_env(plain, args);
    if (r.status)
        fail_msg("exit %d: %s", r.status, r.err);
    if (!strstr(r.err, "kernels: fp32 openblas") || !strstr(r.err, "cpu baseline"))
        fail_msg("UMG_CPU=c did not cap the kernels: %s", r.err);
    tu_result_free(&r);
    r = tu_run_env(bogus, args);
    if (r.status || !strstr(r.err, "UMG_CPU: unknown CPU cap \"bogus\" (ignored)"))
        fail_msg("UMG_CPU=bogus: exit %d: %s", r.status, r.err);
    tu_result_free(&r);
}

int main(void)
{
    if (access(tu_bin(), X_OK) != 0) {
        fprintf(stderr, "test_embed_cli: %s is not an executable (set UMG_BIN)\n", tu_bin());
        return 1;
    }
    json_error_t e;
    ref = json_load_file(TINY "/reference.json", 0, &e);
    if (!ref) {
        fprintf(stderr, "reference.json: %s\n", e.text);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_image_patches),
        cmocka_unit_test(test_mixed_order),
        cmocka_unit_test(test_dump_pixels),
        cmocka_unit_test(test_decode_modes),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_pipeline_same_as_sequential),
        cmocka_unit_test(test_pipeline_failure_midway),
        cmocka_unit_test(test_cpu_cap_env),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    json_decref(ref);
    return rc;
}
