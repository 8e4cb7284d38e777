/* test_model.c - the CLIP model: config.json, safetensors loading, the vision
 * and text towers against the reference outputs of tests/fixtures/clip-tiny,
 * batching, threads, F16/BF16 checkpoints, hostile checkpoints; the dense
 * feature variants and larger inputs against tests/fixtures/dense-variants. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "enc.h"
#include "enc_kernels.h"
#include "enc_safetensors.h"
#include "test_util.h"
#include "umg_error.h"

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TINY UMG_FIXTURES_DIR "/clip-tiny"

/* ---- reference ---------------------------------------------------------- */

static json_t *reference(void)
{
    static json_t *ref;
    if (!ref) {
        json_error_t err;
        ref = json_load_file(TINY "/reference.json", 0, &err);
        if (!ref)
            fail_msg("reference.json: %s", err.text);
    }
    return ref;
}

static int ref_count(const char *kind) { return (int)json_array_size(json_object_get(reference(), kind)); }
static json_t *ref_item(const char *kind, int i) { return json_array_get(json_object_get(reference(), kind), i); }

/* A JSON array of numbers (or of arrays of numbers, flattened) into doubles. */
static int flatten(json_t *a, double *out, int cap)
{
    int n = 0;
    size_t i;
    json_t *v;
    json_array_foreach(a, i, v) {
        if (json_is_array(v)) {
            n += flatten(v, out + n, cap - n);
        } else {
            assert_true(n < cap);
            out[n++] = json_number_value(v);
        }
    }
    return n;
}

static float *load_pixels(const char *rel, size_t floats)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", TINY, rel);
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    float *p = malloc(floats * sizeof *p);
    assert_non_null(p);
    assert_int_equal(fread(p, sizeof *p, floats, f), floats);
    fclose(f);
    return p;
}

/* cosine >= 0.99999 and max |diff| <= 1e-4 x |ref|: the reference tolerance. */
static void check_close(const float *got, const double *ref, int n, double min_cos, double max_rel,
                        const char *what)
{
    double dot = 0, ng = 0, nr = 0, maxd = 0;
    for (int i = 0; i < n; i++) {
        dot += got[i] * ref[i];
        ng += (double)got[i] * got[i];
        nr += ref[i] * ref[i];
        double d = fabs(got[i] - ref[i]);
        maxd = d > maxd ? d : maxd;
    }
    double cos = dot / sqrt(ng * nr);
    if (!(cos >= min_cos) || !(maxd <= max_rel * sqrt(nr)))
        fail_msg("%s: cosine %.8f (>= %g wanted), max |diff| %.3g (<= %.3g wanted)", what, cos, min_cos, maxd,
                 max_rel * sqrt(nr));
}

static void check_ref(const float *got, const double *ref, int n, const char *what)
{
    check_close(got, ref, n, 0.99999, 1e-4, what);
}

static enc_model *open_tiny(void)
{
    enc_model *m = NULL;
    int rc = enc_model_open(TINY, &m);
    if (rc)
        fail_msg("enc_model_open(clip-tiny): %s: %s", umg_error_name(rc), umg_err_msg());
    return m;
}

/* The reference ids of text item it (at most 80) into ids; their count. */
static int ref_ids(json_t *it, int32_t *ids)
{
    double d[80];
    int n = flatten(json_object_get(it, "ids"), d, 80);
    for (int i = 0; i < n; i++)
        ids[i] = (int32_t)d[i];
    return n;
}

/* got (D values) against reference item it's "embedding" (D values). */
static void check_ref_embedding(const float *got, json_t *it, int D, const char *what)
{
    double ref[512];
    assert_int_equal(flatten(json_object_get(it, "embedding"), ref, 512), D);
    check_ref(got, ref, D, what);
}

/* ---- config ------------------------------------------------------------- */

static void test_config_fixture(void **state)
{
    enc_config c;
    assert_int_equal(enc_config_load(TINY "/config.json", &c), 0);
    assert_int_equal(c.text.hidden, 64);
    assert_int_equal(c.text.intermediate, 256);
    assert_int_equal(c.text.layers, 2);
    assert_int_equal(c.text.heads, 2);
    assert_int_equal(c.text.act, ENC_ACT_QUICK_GELU);
    assert_true(fabsf(c.text.ln_eps - 1e-5f) < 1e-12f);
    assert_int_equal(c.vision.hidden, 128);
    assert_int_equal(c.vision.intermediate, 512);
    assert_int_equal(c.vision.layers, 2);
    assert_int_equal(c.vision.heads, 2);
    assert_int_equal(c.image_size, 224);
    assert_int_equal(c.patch_size, 32);
    assert_int_equal(c.channels, 3);
    assert_int_equal(c.projection_dim, 32);
    assert_int_equal(c.vocab_size, 49408);
    assert_int_equal(c.max_positions, 77);
    assert_int_equal(c.eos_id, 49407);
}

static void test_config_defaults(void **state)
{
    enc_config c;
    const char *empty = "{}";
    assert_int_equal(enc_config_parse(empty, strlen(empty), &c), 0);
    /* transformers' CLIPConfig defaults: ViT-B/32 */
    assert_int_equal(c.text.hidden, 512);
    assert_int_equal(c.text.intermediate, 2048);
    assert_int_equal(c.text.layers, 12);
    assert_int_equal(c.text.heads, 8);
    assert_int_equal(c.vision.hidden, 768);
    assert_int_equal(c.vision.intermediate, 3072);
    assert_int_equal(c.vision.layers, 12);
    assert_int_equal(c.vision.heads, 12);
    assert_int_equal(c.image_size, 224);
    assert_int_equal(c.patch_size, 32);
    assert_int_equal(c.projection_dim, 512);
    assert_int_equal(c.max_positions, 77);
    assert_int_equal(c.vocab_size, 49408);

    /* partial sections keep the other defaults; gelu; legacy eos 2 */
    const char *l14 = "{\"projection_dim\": 768, \"text_config\": {\"hidden_size\": 768, \"num_attention_heads\": 12,"
                      " \"eos_token_id\": 2, \"hidden_act\": \"gelu\", \"layer_norm_eps\": 1e-6},"
                      " \"vision_config\": {\"hidden_size\": 1024, \"intermediate_size\": 4096,"
                      " \"num_hidden_layers\": 24, \"num_attention_heads\": 16, \"patch_size\": 14}}";
    assert_int_equal(enc_config_parse(l14, strlen(l14), &c), 0);
    assert_int_equal(c.text.hidden, 768);
    assert_int_equal(c.text.intermediate, 2048);
    assert_int_equal(c.text.act, ENC_ACT_GELU);
    assert_true(fabsf(c.text.ln_eps - 1e-6f) < 1e-12f);
    assert_int_equal(c.eos_id, 49407);
    assert_int_equal(c.vision.layers, 24);
    assert_int_equal(c.patch_size, 14);
    assert_int_equal(c.vision.act, ENC_ACT_QUICK_GELU);
    assert_int_equal(c.projection_dim, 768);
}

static void expect_config_error(const char *json, const char *needle)
{
    enc_config c;
    int rc = enc_config_parse(json, strlen(json), &c);
    if (rc != UMG_EFORMAT || !strstr(umg_err_msg(), needle))
        fail_msg("config %s: rc %d, message \"%s\" (wanted bad_format naming \"%s\")", json, rc, umg_err_msg(),
                 needle);
}

static void test_config_errors(void **state)
{
    expect_config_error("{\"text_config\": {\"hidden_act\": \"gelu_new\"}}", "hidden_act");
    expect_config_error("{\"vision_config\": {\"hidden_act\": 3}}", "hidden_act");
    expect_config_error("{\"vision_config\": {\"hidden_size\": 100}}", "num_attention_heads");
    expect_config_error("{\"vision_config\": {\"image_size\": 225}}", "patch_size");
    expect_config_error("{\"vision_config\": {\"patch_size\": 0}}", "patch_size");
    expect_config_error("{\"text_config\": {\"num_hidden_layers\": \"12\"}}", "num_hidden_layers");
    expect_config_error("{\"text_config\": {\"layer_norm_eps\": -1}}", "layer_norm_eps");
    expect_config_error("{\"projection_dim\": 1.5}", "projection_dim");
    expect_config_error("{\"text_config\": []}", "text_config");
    expect_config_error("{\"text_config\": {\"vocab_size\": 100}}", "eos_token_id");
    expect_config_error("{\"text_config\": ", "JSON");
    expect_config_error("[1, 2]", "object");
    enc_config c;
    assert_int_equal(enc_config_load("/nonexistent/config.json", &c), UMG_ENOENT);
    assert_non_null(strstr(umg_err_msg(), "/nonexistent/config.json"));
}

/* ---- kernels ------------------------------------------------------------ */

static void test_kernels(void **state)
{
    enum { N = 4001 };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
    assert_non_null(x);
    assert_non_null(y);
    for (int i = 0; i < N; i++)
        x[i] = -20.0f + 40.0f * i / (N - 1);
    enc_quick_gelu(y, x, N);
    for (int i = 0; i < N; i++) {
        double want = x[i] / (1.0 + exp(-1.702 * x[i]));
        if (fabs(y[i] - want) > 1e-6 * (1 + fabs(want)))
            fail_msg("quick_gelu(%g) = %.9g, want %.9g", x[i], y[i], want);
    }
    enc_gelu(y, x, N);
    for (int i = 0; i < N; i++) {
        double want = 0.5 * x[i] * (1.0 + erf(x[i] / sqrt(2.0)));
        if (fabs(y[i] - want) > 1e-6 * (1 + fabs(want)))
            fail_msg("gelu(%g) = %.9g, want %.9g", x[i], y[i], want);
    }
    /* layer norm of a known row */
    float row[5] = {1, 2, 3, 4, 5}, w[5] = {1, 1, 1, 1, 2}, b[5] = {0, 0, 0, 0, 1}, out[5];
    enc_layer_norm(out, 5, row, 5, w, b, 1e-5f, 1, 5);
    double sd = sqrt(2.0 + 1e-5);
    for (int i = 0; i < 5; i++)
        assert_true(fabs(out[i] - ((i - 2) / sd * w[i] + b[i])) < 1e-6);
    /* half conversions: exact values, rounding, subnormals, infinities */
    float probe[] = {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 6.1035156e-05f, 5.9604645e-08f, 0.333333333f, 70000.0f};
    for (size_t i = 0; i < sizeof probe / sizeof probe[0]; i++) {
        uint16_t h = enc_f32_to_f16(probe[i]);
        float back;
        enc_f16_to_f32(&back, &h, 1);
        if (fabsf(probe[i]) > 65504.0f)
            assert_true(isinf(back));
        else
            assert_true(fabsf(back - probe[i]) <= fabsf(probe[i]) * 0x1p-11f + 1e-12f);
        uint16_t bf = enc_f32_to_bf16(probe[i]);
        enc_bf16_to_f32(&back, &bf, 1);
        assert_true(fabsf(back - probe[i]) <= fabsf(probe[i]) * 0x1p-8f);
    }
    uint16_t one = 0x3c00, sub = 0x0001;
    float f;
    enc_f16_to_f32(&f, &one, 1);
    assert_true(f == 1.0f);
    enc_f16_to_f32(&f, &sub, 1);
    assert_true(f == 0x1p-24f);
    free(x);
    free(y);
}

/* enc_linear on odd shapes (out not a multiple of 4, in not of 16), through the
 * few-rows kernel and through sgemm, against a double-precision loop. */
static void test_linear_paths(void **state)
{
    const int shapes[][3] = {{1, 3, 1}, {5, 37, 7}, {7, 64, 9}, {13, 100, 30}, {30, 33, 17}, {6, 16, 4}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int rows = shapes[s][0], in = shapes[s][1], out = shapes[s][2];
        float *x = malloc(sizeof(float) * rows * in), *w = malloc(sizeof(float) * out * in);
        float *y = malloc(sizeof(float) * rows * out);
        for (int i = 0; i < rows * in; i++)
            x[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
        for (int i = 0; i < out * in; i++)
            w[i] = (float)((i * 53) % 97) / 48.0f - 1.0f;
        for (int path = 0; path < 2; path++)
            for (int accumulate = 0; accumulate < 2; accumulate++) {
                int was = enc_kernels_force(path ? ENC_KERNELS_SGEMM : ENC_KERNELS_SKINNY);
                for (int i = 0; i < rows * out; i++)
                    y[i] = 0.5f;
                enc_linear(y, x, w, rows, in, out, accumulate);
                enc_kernels_force(was);
                for (int r = 0; r < rows; r++)
                    for (int o = 0; o < out; o++) {
                        double want = accumulate ? 0.5 : 0;
                        for (int k = 0; k < in; k++)
                            want += (double)x[r * in + k] * w[o * in + k];
                        if (fabs(y[r * out + o] - want) > 1e-4 * (1 + fabs(want)))
                            fail_msg("linear %dx%d->%d (%s, acc %d) [%d,%d] = %g, want %g", rows, in, out,
                                     path ? "sgemm" : "few-rows", accumulate, r, o, y[r * out + o], want);
                    }
            }
        free(x);
        free(w);
        free(y);
    }
}

/* ---- exactness ---------------------------------------------------------- */

#define MAX_IMAGES 8
#define PIX (3 * 224 * 224)

static void load_all_pixels(float *pixels, int *n)
{
    *n = ref_count("images");
    assert_true(*n >= 1 && *n <= MAX_IMAGES);
    for (int i = 0; i < *n; i++) {
        float *p = load_pixels(json_string_value(json_object_get(ref_item("images", i), "pixels")), PIX);
        memcpy(pixels + (size_t)i * PIX, p, PIX * sizeof *p);
        free(p);
    }
}

/* clip-tiny and a run state for one input: the fixture (*state) of the tests
 * that encode reference items one at a time. */
typedef struct tiny_one {
    enc_model *m;
    enc_run *r;
} tiny_one;

static int tiny_one_setup(void **state)
{
    tiny_one *t = calloc(1, sizeof *t);
    assert_non_null(t);
    t->m = open_tiny();
    assert_int_equal(enc_run_create(t->m, 1, &t->r), 0);
    *state = t;
    return 0;
}

static int tiny_one_teardown(void **state)
{
    tiny_one *t = *state;
    enc_run_close(t->r);
    enc_model_close(t->m);
    free(t);
    return 0;
}

static void test_image_embeddings(void **state)
{
    tiny_one *t = *state;
    enc_run *r = t->r;
    int D = enc_model_dim(t->m), G = enc_model_grid(t->m);
    assert_int_equal(D, 32);
    assert_int_equal(G, 7);
    float emb[32], *patches = malloc(sizeof(float) * G * G * D), *emb_only = malloc(sizeof(float) * D);
    double ref[49 * 32];
    int n = ref_count("images");
    for (int i = 0; i < n; i++) {
        json_t *it = ref_item("images", i);
        const char *file = json_string_value(json_object_get(it, "file"));
        float *px = load_pixels(json_string_value(json_object_get(it, "pixels")), PIX);
        assert_int_equal(enc_encode_pixels(r, px, 1, emb, patches), 0);
        check_ref_embedding(emb, it, D, file);
        assert_int_equal(flatten(json_object_get(it, "patch_tokens_projected"), ref, 49 * 32), G * G * D);
        for (int p = 0; p < G * G; p++) {
            char what[128];
            snprintf(what, sizeof what, "%s patch %d", file, p);
            check_ref(patches + p * D, ref + p * D, D, what);
        }
        /* without patches (the last block then runs on [CLS] alone): the same embedding */
        assert_int_equal(enc_encode_pixels(r, px, 1, emb_only, NULL), 0);
        check_ref_embedding(emb_only, it, D, file);
        free(px);
    }
    /* more images than the run state holds */
    float dummy[PIX] = {0};
    assert_int_equal(enc_encode_pixels(r, dummy, 2, emb, NULL), UMG_EINVAL);
    free(patches);
    free(emb_only);
}

static void max_rel_diff(const float *a, const float *b, int n, double *out)
{
    double nb = 0, md = 0;
    for (int i = 0; i < n; i++) {
        nb += (double)b[i] * b[i];
        md = fmax(md, fabs(a[i] - b[i]));
    }
    *out = md / sqrt(nb);
}

static void test_batched_equals_single(void **state)
{
    enc_model *m = open_tiny();
    int D = enc_model_dim(m), G = enc_model_grid(m), n;
    float *pixels = malloc(sizeof(float) * MAX_IMAGES * PIX);
    load_all_pixels(pixels, &n);
    assert_int_equal(n, 6);
    enc_run *big, *one;
    assert_int_equal(enc_run_create(m, n, &big), 0);
    assert_int_equal(enc_run_create(m, 1, &one), 0);
    float *eb = malloc(sizeof(float) * n * D), *pb = malloc(sizeof(float) * n * G * G * D);
    float e1[32], *p1 = malloc(sizeof(float) * G * G * D);
    assert_int_equal(enc_encode_pixels(big, pixels, n, eb, pb), 0);
    for (int i = 0; i < n; i++) {
        assert_int_equal(enc_encode_pixels(one, pixels + (size_t)i * PIX, 1, e1, p1), 0);
        /* One GEMM over 6 images may block differently from six: allow float
         * rounding, nothing more. */
        double d;
        max_rel_diff(eb + i * D, e1, D, &d);
        if (d > 1e-6)
            fail_msg("image %d: batched embedding differs from single by %g of its norm", i, d);
        for (int p = 0; p < G * G; p++) {
            max_rel_diff(pb + ((size_t)i * G * G + p) * D, p1 + p * D, D, &d);
            if (d > 1e-6)
                fail_msg("image %d patch %d: batched differs from single by %g", i, p, d);
        }
    }
    free(pixels);
    free(eb);
    free(pb);
    free(p1);
    enc_run_close(big);
    enc_run_close(one);
    enc_model_close(m);
}

/* The whole model through only the few-rows kernel, then only sgemm, then (on
 * AVX-512F CPUs) only the packed kernel. */
static void test_model_kernel_paths(void **state)
{
    enc_model *m = open_tiny();
    int D = enc_model_dim(m), G = enc_model_grid(m), n;
    float *pixels = malloc(sizeof(float) * MAX_IMAGES * PIX);
    load_all_pixels(pixels, &n);
    enc_run *r;
    assert_int_equal(enc_run_create(m, n, &r), 0);
    float *emb = malloc(sizeof(float) * n * D), *patches = malloc(sizeof(float) * n * G * G * D);
    double ref[49 * 32];
    static const char *const names[] = {"few-rows only", "sgemm only", "packed only"};
    enc_set_threads(1);
    for (int path = 0; path < (enc_packed_supported() ? 3 : 2); path++) {
        static const int force[] = {ENC_KERNELS_NO_PACKED | ENC_KERNELS_SKINNY,
                                    ENC_KERNELS_NO_PACKED | ENC_KERNELS_SGEMM, ENC_KERNELS_SKINNY};
        int was = enc_kernels_force(force[path]);
        assert_int_equal(enc_encode_pixels(r, pixels, n, emb, patches), 0);
        for (int i = 0; i < n; i++) {
            json_t *it = ref_item("images", i);
            check_ref_embedding(emb + i * D, it, D, names[path]);
            flatten(json_object_get(it, "patch_tokens_projected"), ref, 49 * 32);
            for (int p = 0; p < G * G; p++)
                check_ref(patches + ((size_t)i * G * G + p) * D, ref + p * D, D, names[path]);
        }
        for (int t = 0; t < ref_count("texts"); t++) {
            int32_t ids[80];
            float e[32];
            int k = ref_ids(ref_item("texts", t), ids);
            assert_int_equal(enc_encode_ids(r, ids, k, e), 0);
            check_ref_embedding(e, ref_item("texts", t), D, names[path]);
        }
        enc_kernels_force(was);
    }
    free(pixels);
    free(emb);
    free(patches);
    enc_run_close(r);
    enc_model_close(m);
}

static void test_text_embeddings(void **state)
{
    tiny_one *f = *state;
    enc_run *r = f->r;
    int D = enc_model_dim(f->m);
    float emb[32];
    int32_t ids[80];
    for (int t = 0; t < ref_count("texts"); t++) {
        json_t *it = ref_item("texts", t);
        int n = ref_ids(it, ids);
        assert_int_equal(enc_encode_ids(r, ids, n, emb), 0);
        check_ref_embedding(emb, it, D, json_string_value(json_object_get(it, "text")));
    }
    /* bad ids: out of vocabulary, too many, none */
    int32_t bad[3] = {49406, 49408, 49407};
    assert_int_equal(enc_encode_ids(r, bad, 3, emb), UMG_EINVAL);
    bad[1] = -1;
    assert_int_equal(enc_encode_ids(r, bad, 3, emb), UMG_EINVAL);
    int32_t many[78];
    for (int i = 0; i < 78; i++)
        many[i] = 320;
    assert_int_equal(enc_encode_ids(r, many, 78, emb), UMG_EINVAL);
    assert_int_equal(enc_encode_ids(r, many, 0, emb), UMG_EINVAL);
    /* tokens after the first end token do not change the pooled embedding */
    int32_t a[4] = {49406, 2368, 49407, 0}, b4[5] = {49406, 2368, 49407, 320, 49407};
    float ea[32], eb[32];
    assert_int_equal(enc_encode_ids(r, a, 3, ea), 0);
    assert_int_equal(enc_encode_ids(r, b4, 5, eb), 0);
    assert_memory_equal(ea, eb, sizeof ea);
}

/* n texts of random lengths in one packed pass equal each text encoded alone
 * (few-rows kernel alone vs sgemm over the packed rows: rounding only). */
static void test_text_batch_equals_single(void **state)
{
    enc_model *m = open_tiny();
    const enc_config *c = enc_model_config(m);
    int D = enc_model_dim(m), L = c->max_positions, B = 16;
    enc_run *r;
    assert_int_equal(enc_run_create(m, B, &r), 0);
    int32_t *buf = malloc(sizeof(int32_t) * B * L);
    const int32_t *ids[16];
    int n_ids[16];
    float *batch = malloc(sizeof(float) * B * D), *one = malloc(sizeof(float) * D);
    unsigned seed = 12345;
    for (int n = 1; n <= B; n++) {
        for (int s = 0; s < n; s++) {
            int32_t *q = buf + s * L;
            seed = seed * 1103515245u + 12345u;
            int len = 1 + (int)((seed >> 8) % (unsigned)L);
            for (int i = 0; i < len; i++) {
                seed = seed * 1103515245u + 12345u;
                q[i] = (int32_t)((seed >> 8) % (unsigned)(c->vocab_size - 1)); /* never eos_id (the last) */
                if (q[i] == c->eos_id) q[i] = 0;
            }
            q[len - 1] = c->eos_id;
            if (s == 3 && len > 4) q[len / 2] = c->eos_id; /* an early end token: pooled there */
            ids[s] = q;
            n_ids[s] = len;
        }
        assert_int_equal(enc_encode_ids_batch(r, ids, n_ids, n, batch), 0);
        for (int s = 0; s < n; s++) {
            assert_int_equal(enc_encode_ids(r, ids[s], n_ids[s], one), 0);
            for (int d = 0; d < D; d++)
                if (fabsf(batch[s * D + d] - one[d]) > 1e-4f * (1.0f + fabsf(one[d])))
                    fail_msg("n %d, sequence %d (%d ids), dim %d: batch %g, alone %g", n, s, n_ids[s], d,
                             batch[s * D + d], one[d]);
        }
    }
    /* more sequences than the run holds, an invalid id anywhere, NULL ids: refused */
    assert_int_equal(enc_encode_ids_batch(r, ids, n_ids, B + 1, batch), UMG_EINVAL);
    assert_int_equal(enc_encode_ids_batch(r, ids, n_ids, 0, batch), UMG_EINVAL);
    buf[2 * L] = c->vocab_size;
    assert_int_equal(enc_encode_ids_batch(r, ids, n_ids, 4, batch), UMG_EINVAL);
    ids[1] = NULL;
    assert_int_equal(enc_encode_ids_batch(r, ids, n_ids, 4, batch), UMG_EINVAL);
    free(buf);
    free(batch);
    free(one);
    enc_run_close(r);
    enc_model_close(m);
}

static void test_text_tokenized(void **state)
{
    tiny_one *f = *state;
    int D = enc_model_dim(f->m);
    float emb[32];
    int32_t ids[80], want[80];
    for (int t = 0; t < ref_count("texts"); t++) {
        json_t *it = ref_item("texts", t);
        const char *text = json_string_value(json_object_get(it, "text"));
        int n = 0;
        assert_int_equal(enc_encode_text(f->r, text, strlen(text), emb, ids, &n), 0);
        assert_int_equal(n, ref_ids(it, want));
        for (int i = 0; i < n; i++)
            assert_int_equal(ids[i], want[i]);
        check_ref_embedding(emb, it, D, text);
    }
}

/* Our own decoding + preprocessing of images/ lands within the preprocessing
 * tolerance of the reference pixels; the decoder is bit-exact on these images,
 * so the embeddings meet the reference tolerance too. */
static void test_images_decoded(void **state)
{
    tiny_one *t = *state;
    enc_model *m = t->m;
    enc_run *r = t->r;
    int D = enc_model_dim(m);
    float emb[32], *px = malloc(PIX * sizeof *px);
    for (int i = 0; i < ref_count("images"); i++) {
        json_t *it = ref_item("images", i);
        char path[1024];
        snprintf(path, sizeof path, "%s/images/%s", TINY, json_string_value(json_object_get(it, "file")));
        enc_image img;
        int rc = enc_image_load(path, ENC_IMAGE_MAX_PIXELS_DEFAULT, &img);
        if (rc)
            fail_msg("%s: %s", path, umg_err_msg());
        assert_int_equal(enc_preprocess(&img, enc_model_preproc(m), px), 0);
        enc_image_free(&img);
        float *want = load_pixels(json_string_value(json_object_get(it, "pixels")), PIX);
        double sum = 0, maxd = 0;
        for (int k = 0; k < PIX; k++) {
            double d = fabs(px[k] - want[k]);
            sum += d;
            maxd = fmax(maxd, d);
        }
        free(want);
        assert_true(sum / PIX <= 0.005);
        assert_true(maxd <= 0.05);
        assert_int_equal(enc_encode_pixels(r, px, 1, emb, NULL), 0);
        check_ref_embedding(emb, it, D, path);
    }
    free(px);
}

/* ---- threads ------------------------------------------------------------ */

struct thread_job {
    const enc_model *m;
    const float *pixels;
    int n;
    float *embeds, *patches, *text;
    int rc;
};

static const int32_t thread_ids[] = {49406, 320, 1125, 539, 320, 2368, 49407};

static void *thread_main(void *arg)
{
    struct thread_job *j = arg;
    enc_run *r = NULL;
    j->rc = enc_run_create(j->m, j->n, &r);
    for (int rep = 0; rep < 3 && !j->rc; rep++) {
        j->rc = enc_encode_pixels(r, j->pixels, j->n, j->embeds, j->patches);
        if (!j->rc)
            j->rc = enc_encode_ids(r, thread_ids, 7, j->text);
    }
    enc_run_close(r);
    return NULL;
}

static void test_threads_share_model(void **state)
{
    enc_model *m = open_tiny();
    int D = enc_model_dim(m), G = enc_model_grid(m), n;
    float *pixels = malloc(sizeof(float) * MAX_IMAGES * PIX);
    load_all_pixels(pixels, &n);
    enc_set_threads(1);
    enum { THREADS = 4 };
    struct thread_job jobs[THREADS + 1];
    for (int t = 0; t <= THREADS; t++) {
        jobs[t] = (struct thread_job){.m = m, .pixels = pixels, .n = n};
        jobs[t].embeds = malloc(sizeof(float) * n * D);
        jobs[t].patches = malloc(sizeof(float) * n * G * G * D);
        jobs[t].text = malloc(sizeof(float) * D);
    }
    thread_main(&jobs[THREADS]); /* the baseline, alone */
    assert_int_equal(jobs[THREADS].rc, 0);
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++)
        assert_int_equal(pthread_create(&th[t], NULL, thread_main, &jobs[t]), 0);
    for (int t = 0; t < THREADS; t++) {
        pthread_join(th[t], NULL);
        assert_int_equal(jobs[t].rc, 0);
        assert_memory_equal(jobs[t].embeds, jobs[THREADS].embeds, sizeof(float) * n * D);
        assert_memory_equal(jobs[t].patches, jobs[THREADS].patches, sizeof(float) * n * G * G * D);
        assert_memory_equal(jobs[t].text, jobs[THREADS].text, sizeof(float) * D);
    }
    /* and the baseline matches the reference */
    check_ref_embedding(jobs[THREADS].embeds + (n - 1) * D, ref_item("images", n - 1), D, "threads baseline");
    for (int t = 0; t <= THREADS; t++) {
        free(jobs[t].embeds);
        free(jobs[t].patches);
        free(jobs[t].text);
    }
    free(pixels);
    enc_model_close(m);
}

/* enc_run_set_threads: a capped run gives the uncapped run's bits (the shared
 * products split outputs, never sums), and the cap holds only during its own
 * passes: the calling thread's cap is back to none afterwards. */
static void test_run_thread_cap(void **state)
{
    (void)state;
    enc_model *m = open_tiny();
    int D = enc_model_dim(m), n;
    float *pixels = malloc(sizeof(float) * MAX_IMAGES * PIX);
    load_all_pixels(pixels, &n);
    enc_set_threads(2);
    enc_run *free_run, *capped;
    assert_int_equal(enc_run_create(m, n, &free_run), 0);
    assert_int_equal(enc_run_create(m, n, &capped), 0);
    assert_int_equal(enc_run_set_threads(capped, -1), UMG_EINVAL);
    assert_int_equal(enc_run_set_threads(capped, 1), 0);
    float *a = malloc(sizeof(float) * n * D), *b = malloc(sizeof(float) * n * D);
    assert_int_equal(enc_encode_pixels(free_run, pixels, n, a, NULL), 0);
    assert_int_equal(enc_encode_pixels(capped, pixels, n, b, NULL), 0);
    assert_memory_equal(a, b, sizeof(float) * n * D);
    assert_int_equal(enc_kernels_cap_threads(0), 0); /* restored after the capped pass */
    assert_int_equal(enc_encode_text(free_run, "a photo of a cat", 16, a, NULL, NULL), 0);
    assert_int_equal(enc_encode_text(capped, "a photo of a cat", 16, b, NULL, NULL), 0);
    assert_memory_equal(a, b, sizeof(float) * D);
    assert_int_equal(enc_kernels_cap_threads(0), 0);
    enc_set_threads(1);
    free(a);
    free(b);
    enc_run_close(free_run);
    enc_run_close(capped);
    free(pixels);
    enc_model_close(m);
}

/* ---- checkpoints written by the tests ----------------------------------- */

struct tmpdir {
    char path[256];
};

static void tmp_make(struct tmpdir *d)
{
    assert_non_null(tu_mkdtemp(d->path, sizeof d->path, "umg-test-model-"));
    char a[512], b[512];
    /* the tokenizer files are only read: link them */
    snprintf(a, sizeof a, "%s/vocab.json", d->path);
    assert_int_equal(symlink(TINY "/vocab.json", a), 0);
    snprintf(b, sizeof b, "%s/merges.txt", d->path);
    assert_int_equal(symlink(TINY "/merges.txt", b), 0);
}

static void tmp_remove(struct tmpdir *d)
{
    assert_int_equal(tu_rm_rf(d->path), 0);
}

static void write_file(const char *dir, const char *name, const void *data, size_t len)
{
    char p[600];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    tu_write_file(p, data, len);
}

static void copy_config(const char *dir)
{
    size_t len;
    char *c = tu_read_file(TINY "/config.json", &len);
    write_file(dir, "config.json", c, len);
    free(c);
}

/* Write header + data as model.safetensors; header_len_override != 0 forges
 * the length field. */
static void write_st_raw(const char *dir, const char *header, size_t hlen, const void *data, size_t dlen,
                         uint64_t header_len_override)
{
    char p[600];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    uint64_t n = header_len_override ? header_len_override : hlen;
    uint8_t le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (uint8_t)(n >> (8 * i));
    assert_int_equal(fwrite(le, 1, 8, f), 8);
    assert_int_equal(fwrite(header, 1, hlen, f), hlen);
    if (dlen)
        assert_int_equal(fwrite(data, 1, dlen, f), dlen);
    fclose(f);
}

/* The fixture's header (parsed) and data region. */
static json_t *fixture_st(uint8_t **data, size_t *dlen)
{
    size_t len;
    char *all = tu_read_file(TINY "/model.safetensors", &len);
    uint64_t h = 0;
    for (int i = 7; i >= 0; i--)
        h = h << 8 | (uint8_t)all[i];
    json_t *hdr = json_loadb(all + 8, h, 0, NULL);
    assert_non_null(hdr);
    *dlen = len - 8 - h;
    *data = malloc(*dlen);
    memcpy(*data, all + 8 + h, *dlen);
    free(all);
    return hdr;
}

static void write_st_json(const char *dir, json_t *hdr, const uint8_t *data, size_t dlen)
{
    char *s = json_dumps(hdr, JSON_COMPACT);
    assert_non_null(s);
    write_st_raw(dir, s, strlen(s), data, dlen, 0);
    free(s);
}

/* Rewrite every float tensor of the fixture as dtype (F16 or BF16), or as F32
 * placed at odd offsets (dtype NULL). */
static void write_converted(const char *dir, const char *dtype)
{
    enc_st_file *st;
    assert_int_equal(enc_st_open(TINY "/model.safetensors", &st), 0);
    size_t n = enc_st_count(st), cap = 0;
    for (size_t i = 0; i < n; i++)
        cap += enc_st_at(st, i)->nelem * 4 + 8;
    uint8_t *data = malloc(cap + 1);
    assert_non_null(data);
    size_t off = 0;
    json_t *hdr = json_object();
    if (!dtype) {
        /* a one-byte tensor first: every F32 tensor after it is misaligned */
        data[off++] = 7;
        json_object_set_new(hdr, "a_pad", json_pack("{s:s, s:[i], s:[i,i]}", "dtype", "U8", "shape", 1,
                                                    "data_offsets", 0, 1));
    }
    for (size_t i = 0; i < n; i++) {
        const enc_st_tensor *t = enc_st_at(st, i);
        float *f32 = malloc(t->nelem * sizeof(float) + 4);
        assert_non_null(f32);
        if (t->dtype == ENC_ST_F16)
            enc_f16_to_f32(f32, (const uint16_t *)t->data, t->nelem);
        else if (t->dtype == ENC_ST_F32)
            memcpy(f32, t->data, t->nbytes);
        else
            fail_msg("fixture tensor %s has dtype %s", t->name, enc_st_dtype_name(t->dtype));
        size_t begin = off;
        const char *dt = dtype ? dtype : "F32";
        if (!dtype) {
            memcpy(data + off, f32, t->nelem * 4);
            off += t->nelem * 4;
        } else {
            for (uint64_t k = 0; k < t->nelem; k++) {
                uint16_t h = !strcmp(dtype, "F16") ? enc_f32_to_f16(f32[k]) : enc_f32_to_bf16(f32[k]);
                memcpy(data + off, &h, 2);
                off += 2;
            }
        }
        free(f32);
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++)
            json_array_append_new(shape, json_integer(t->shape[d]));
        json_object_set_new(hdr, t->name, json_pack("{s:s, s:o, s:[I,I]}", "dtype", dt, "shape", shape,
                                                    "data_offsets", (json_int_t)begin, (json_int_t)off));
    }
    enc_st_close(st);
    write_st_json(dir, hdr, data, off);
    json_decref(hdr);
    free(data);
}

/* Embeddings of every reference image and text from the model in dir. */
static void embed_all(const char *dir, float *img, float *txt)
{
    enc_model *m = NULL;
    int rc = enc_model_open(dir, &m);
    if (rc)
        fail_msg("open %s: %s", dir, umg_err_msg());
    int D = enc_model_dim(m), n;
    float *pixels = malloc(sizeof(float) * MAX_IMAGES * PIX);
    load_all_pixels(pixels, &n);
    enc_run *r;
    assert_int_equal(enc_run_create(m, n, &r), 0);
    assert_int_equal(enc_encode_pixels(r, pixels, n, img, NULL), 0);
    for (int t = 0; t < ref_count("texts"); t++) {
        double dids[80];
        int32_t ids[80];
        int k = flatten(json_object_get(ref_item("texts", t), "ids"), dids, 80);
        for (int i = 0; i < k; i++)
            ids[i] = (int32_t)dids[i];
        assert_int_equal(enc_encode_ids(r, ids, k, txt + t * D), 0);
    }
    free(pixels);
    enc_run_close(r);
    enc_model_close(m);
}

static void compare_to_reference(const float *img, const float *txt, double min_cos, double max_rel,
                                 const char *label)
{
    double ref[32];
    char what[128];
    for (int i = 0; i < ref_count("images"); i++) {
        flatten(json_object_get(ref_item("images", i), "embedding"), ref, 32);
        snprintf(what, sizeof what, "%s image %d", label, i);
        check_close(img + i * 32, ref, 32, min_cos, max_rel, what);
    }
    for (int t = 0; t < ref_count("texts"); t++) {
        flatten(json_object_get(ref_item("texts", t), "embedding"), ref, 32);
        snprintf(what, sizeof what, "%s text %d", label, t);
        check_close(txt + t * 32, ref, 32, min_cos, max_rel, what);
    }
}

static void test_half_precision_checkpoints(void **state)
{
    static const struct {
        const char *dtype, *label;
        double min_cos, max_rel;
    } cases[] = {
        {NULL, "misaligned F32", 0.99999, 1e-4}, /* copied into the arena, same arithmetic */
        {"F16", "F16", 0.99999, 3e-3},           /* 11-bit mantissas (2^-11 relative per weight) */
        {"BF16", "BF16", 0.9995, 2e-2},          /* 8-bit mantissas (2^-8 relative per weight) */
    };
    float img[MAX_IMAGES * 32], txt[16 * 32];
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        struct tmpdir d;
        tmp_make(&d);
        copy_config(d.path);
        write_converted(d.path, cases[i].dtype);
        embed_all(d.path, img, txt);
        compare_to_reference(img, txt, cases[i].min_cos, cases[i].max_rel, cases[i].label);
        tmp_remove(&d);
    }
}

/* ---- hostile checkpoints ------------------------------------------------ */

static void expect_open_error(const char *dir, int code, const char *needle, const char *label)
{
    enc_model *m = (enc_model *)0x1;
    int rc = enc_model_open(dir, &m);
    if (rc != code || !strstr(umg_err_msg(), needle))
        fail_msg("%s: rc %s, message \"%s\" (wanted %s naming \"%s\")", label, umg_error_name(rc), umg_err_msg(),
                 umg_error_name(code), needle);
    assert_null(m);
}

typedef void (*mutate_fn)(json_t *hdr);

static void set_offsets(json_t *hdr, const char *name, json_int_t a, json_int_t b)
{
    json_t *t = json_object_get(hdr, name);
    json_object_set_new(t, "data_offsets", json_pack("[I,I]", a, b));
}

static void hostile_header(mutate_fn mutate, int code, const char *needle, const char *label)
{
    struct tmpdir d;
    tmp_make(&d);
    copy_config(d.path);
    uint8_t *data;
    size_t dlen;
    json_t *hdr = fixture_st(&data, &dlen);
    mutate(hdr);
    write_st_json(d.path, hdr, data, dlen);
    json_decref(hdr);
    free(data);
    expect_open_error(d.path, code, needle, label);
    tmp_remove(&d);
}

static void m_missing(json_t *h) { json_object_del(h, "text_model.final_layer_norm.weight"); }
static void m_shape(json_t *h)
{
    /* same element count, so only the model's shape check can notice */
    json_object_set_new(json_object_get(h, "vision_model.encoder.layers.1.mlp.fc1.weight"), "shape",
                        json_pack("[i,i]", 128, 512));
}
static void m_dtype(json_t *h)
{
    json_object_set_new(json_object_get(h, "text_model.final_layer_norm.bias"), "dtype", json_string("I32"));
}
static void m_unknown_dtype(json_t *h)
{
    json_object_set_new(json_object_get(h, "visual_projection.weight"), "dtype", json_string("F99"));
}
static void m_absurd(json_t *h)
{
    set_offsets(h, "vision_model.post_layernorm.weight", (json_int_t)1 << 62, ((json_int_t)1 << 62) + 512);
}
static void m_absurd_span(json_t *h) { set_offsets(h, "vision_model.post_layernorm.bias", 0, (json_int_t)1 << 62); }
static void m_backwards(json_t *h) { set_offsets(h, "text_projection.weight", 8192, 0); }
static void m_overlap(json_t *h)
{
    /* the same 512 bytes claimed by two tensors of the same size */
    json_t *a = json_object_get(json_object_get(h, "vision_model.post_layernorm.weight"), "data_offsets");
    json_object_set(json_object_get(h, "vision_model.post_layernorm.bias"), "data_offsets", a);
}
static void m_negative_shape(json_t *h)
{
    json_object_set_new(json_object_get(h, "text_projection.weight"), "shape", json_pack("[i,i]", -32, 64));
}
static void m_size_mismatch(json_t *h)
{
    json_object_set_new(json_object_get(h, "text_projection.weight"), "shape", json_pack("[i,i]", 32, 65));
}
static void m_not_object(json_t *h) { json_object_set_new(h, "text_projection.weight", json_string("x")); }

static void test_hostile_headers(void **state)
{
    hostile_header(m_missing, UMG_EFORMAT, "text_model.final_layer_norm.weight", "missing tensor");
    hostile_header(m_shape, UMG_EFORMAT, "vision_model.encoder.layers.1.mlp.fc1.weight", "wrong shape");
    hostile_header(m_dtype, UMG_EFORMAT, "text_model.final_layer_norm.bias", "wrong dtype");
    hostile_header(m_unknown_dtype, UMG_EFORMAT, "visual_projection.weight", "unknown dtype");
    hostile_header(m_absurd, UMG_EFORMAT, "vision_model.post_layernorm.weight", "absurd offsets");
    hostile_header(m_absurd_span, UMG_EFORMAT, "vision_model.post_layernorm.bias", "absurd span");
    hostile_header(m_backwards, UMG_EFORMAT, "text_projection.weight", "backwards offsets");
    hostile_header(m_overlap, UMG_EFORMAT, "overlaps", "overlapping tensors");
    hostile_header(m_negative_shape, UMG_EFORMAT, "text_projection.weight", "negative shape");
    hostile_header(m_size_mismatch, UMG_EFORMAT, "text_projection.weight", "size mismatch");
    hostile_header(m_not_object, UMG_EFORMAT, "text_projection.weight", "entry not an object");
}

static void test_hostile_files(void **state)
{
    struct tmpdir d;
    uint8_t *data;
    size_t dlen;
    json_t *hdr = fixture_st(&data, &dlen);
    char *hs = json_dumps(hdr, JSON_COMPACT);
    json_decref(hdr);

    expect_open_error("/nonexistent-model-dir", UMG_ENOENT, "config.json", "missing directory");

    tmp_make(&d);
    copy_config(d.path);
    expect_open_error(d.path, UMG_ENOENT, "model.safetensors", "missing safetensors");

    write_file(d.path, "model.safetensors", "", 0);
    expect_open_error(d.path, UMG_EFORMAT, "model.safetensors", "zero-byte safetensors");

    /* truncated: header intact, data cut in half */
    write_st_raw(d.path, hs, strlen(hs), data, dlen / 2, 0);
    expect_open_error(d.path, UMG_EFORMAT, "truncated", "truncated data");

    /* truncated inside the header */
    write_st_raw(d.path, hs, strlen(hs) / 2, NULL, 0, strlen(hs));
    expect_open_error(d.path, UMG_EFORMAT, "header length", "truncated header");

    /* header length beyond the file, and absurdly large */
    write_st_raw(d.path, hs, strlen(hs), data, dlen, (uint64_t)1 << 40);
    expect_open_error(d.path, UMG_EFORMAT, "header length", "header length > file");
    write_st_raw(d.path, hs, strlen(hs), data, dlen, UINT64_MAX);
    expect_open_error(d.path, UMG_EFORMAT, "header length", "header length 2^64-1");

    /* not JSON, not an object */
    const char *junk = "this is not json at all";
    write_st_raw(d.path, junk, strlen(junk), data, dlen, 0);
    expect_open_error(d.path, UMG_EFORMAT, "JSON", "non-JSON header");
    write_st_raw(d.path, "[1,2,3]", 7, data, dlen, 0);
    expect_open_error(d.path, UMG_EFORMAT, "object", "array header");

    /* a directory where the file should be */
    tmp_remove(&d);
    tmp_make(&d);
    copy_config(d.path);
    char p[600];
    snprintf(p, sizeof p, "%s/model.safetensors", d.path);
    assert_int_equal(mkdir(p, 0700), 0);
    expect_open_error(d.path, UMG_EFORMAT, "regular file", "directory as safetensors");
    rmdir(p);

    /* config.json: corrupt, unknown activation, shapes the tensors disagree with, missing */
    write_st_raw(d.path, hs, strlen(hs), data, dlen, 0);
    write_file(d.path, "config.json", "{\"text_config\": {", 17);
    expect_open_error(d.path, UMG_EFORMAT, "config.json", "corrupt config.json");
    const char *gelu_new = "{\"projection_dim\": 32, \"text_config\": {\"hidden_act\": \"gelu_new\"}}";
    write_file(d.path, "config.json", gelu_new, strlen(gelu_new));
    expect_open_error(d.path, UMG_EFORMAT, "hidden_act", "unknown hidden_act");
    size_t clen;
    char *cfg = tu_read_file(TINY "/config.json", &clen);
    char *at = strstr(cfg, "\"hidden_size\": 128");
    assert_non_null(at);
    memcpy(at, "\"hidden_size\": 256", 18);
    write_file(d.path, "config.json", cfg, clen);
    expect_open_error(d.path, UMG_EFORMAT, "vision_model.embeddings.class_embedding", "config/tensor mismatch");
    free(cfg);
    snprintf(p, sizeof p, "%s/config.json", d.path);
    unlink(p);
    expect_open_error(d.path, UMG_ENOENT, "config.json", "missing config.json");

    /* missing tokenizer file */
    copy_config(d.path);
    snprintf(p, sizeof p, "%s/vocab.json", d.path);
    unlink(p);
    expect_open_error(d.path, UMG_ENOENT, "vocab.json", "missing vocab.json");
    tmp_remove(&d);

    free(hs);
    free(data);
}

static void test_model_metadata(void **state)
{
    enc_model *m = open_tiny();
    assert_string_equal(enc_model_name(m), "clip-tiny");
    uint8_t fp[32], zero[32] = {0};
    enc_model_fingerprint(m, fp);
    assert_memory_not_equal(fp, zero, 32);
    assert_non_null(enc_model_tokenizer(m));
    assert_int_equal(enc_model_preproc(m)->crop_w, 224);
    assert_int_equal(enc_model_config(m)->vision.hidden, 128);
    enc_run *r = (enc_run *)0x1;
    assert_int_equal(enc_run_create(m, 0, &r), UMG_EINVAL);
    assert_null(r);
    assert_int_equal(enc_run_create(m, 1 << 20, &r), UMG_EINVAL);
    enc_model_close(m);
    enc_model_close(NULL);
    enc_run_close(NULL);

    /* the fingerprint covers config.json: a changed field changes it */
    struct tmpdir d;
    tmp_make(&d);
    const char *name = "{\"_name_or_path\": \"my/clip\", \"projection_dim\": 32, \"text_config\": {\"hidden_size\": 64,"
                       " \"intermediate_size\": 256, \"num_attention_heads\": 2, \"num_hidden_layers\": 2},"
                       " \"vision_config\": {\"hidden_size\": 128, \"intermediate_size\": 512,"
                       " \"num_attention_heads\": 2, \"num_hidden_layers\": 2}}";
    write_file(d.path, "config.json", name, strlen(name));
    char p[600];
    snprintf(p, sizeof p, "%s/model.safetensors", d.path);
    assert_int_equal(symlink(TINY "/model.safetensors", p), 0);
    enc_model *m2 = NULL;
    int rc = enc_model_open(d.path, &m2);
    if (rc)
        fail_msg("%s", umg_err_msg());
    assert_string_equal(enc_model_name(m2), "my/clip");
    uint8_t fp2[32];
    enc_model_fingerprint(m2, fp2);
    assert_memory_not_equal(fp, fp2, 32);
    enc_model_close(m2);
    tmp_remove(&d);
}

/* ---- other geometries and gelu, against a naive double-precision forward ----
 * A generated checkpoint unlike the fixture: 64x64 input with 16-pixel patches
 * (4x4 grid), 4 heads, gelu, layer_norm_eps 1e-6, projection 18 (not a multiple
 * of the kernels' tiles).  The reference is computed here, straight from the
 * definition, so no fixture is needed. */

typedef struct gen_tensor {
    char name[128];
    int ndim;
    int64_t shape[4];
    size_t n;
    float *v;
} gen_tensor;

typedef struct gen_model {
    gen_tensor t[96];
    int n;
} gen_model;

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void gen_add(gen_model *g, const char *name, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3)
{
    assert_true(g->n < 96);
    gen_tensor *t = &g->t[g->n++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    int64_t d[4] = {d0, d1, d2, d3};
    t->n = 1;
    for (int i = 0; i < ndim; i++)
        t->n *= (size_t)(t->shape[i] = d[i]);
    t->v = malloc(t->n * sizeof(float));
    assert_non_null(t->v);
    uint64_t seed = 1469598103934665603ull;
    for (const char *c = name; *c; c++)
        seed = (seed ^ (uint8_t)*c) * 1099511628211ull;
    /* matrices ~ U(+-sqrt(3/fan_in)); layer-norm weights 1 +- 0.2; the rest +- 0.1 */
    int is_ln_weight = strstr(name, "norm") && strstr(name, ".weight");
    double scale = ndim >= 2 && !strstr(name, "embedding") ? sqrt(3.0 / (double)(t->n / (size_t)d0)) : 0.1;
    for (size_t i = 0; i < t->n; i++) {
        double u = (double)(splitmix(&seed) >> 11) / 9007199254740992.0 * 2 - 1;
        t->v[i] = (float)(is_ln_weight ? 1 + 0.2 * u : scale * u);
    }
}

static const float *gp(const gen_model *g, const char *fmt, ...)
{
    char name[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    for (int i = 0; i < g->n; i++)
        if (!strcmp(g->t[i].name, name))
            return g->t[i].v;
    fail_msg("generated tensor %s missing", name);
    return NULL;
}

enum { GV_H = 32, GV_F = 64, GV_L = 2, GV_HEADS = 4, GV_S = 64, GV_P = 16, GV_G = 4, GV_T = 17,
       GT_H = 32, GT_F = 48, GT_L = 2, GT_HEADS = 4, G_D = 18, G_VOCAB = 49408, G_POS = 77 };

static void gen_layers(gen_model *g, const char *tower, int layers, int H, int F)
{
    char n[128];
    static const char *vec[] = {"layer_norm1.weight", "layer_norm1.bias", "layer_norm2.weight", "layer_norm2.bias",
                                "self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias",
                                "self_attn.out_proj.bias", "mlp.fc2.bias"};
    static const char *mat[] = {"self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight",
                                "self_attn.out_proj.weight"};
    for (int l = 0; l < layers; l++) {
        for (size_t i = 0; i < sizeof vec / sizeof *vec; i++) {
            snprintf(n, sizeof n, "%s.encoder.layers.%d.%s", tower, l, vec[i]);
            gen_add(g, n, 1, H, 0, 0, 0);
        }
        for (size_t i = 0; i < sizeof mat / sizeof *mat; i++) {
            snprintf(n, sizeof n, "%s.encoder.layers.%d.%s", tower, l, mat[i]);
            gen_add(g, n, 2, H, H, 0, 0);
        }
        snprintf(n, sizeof n, "%s.encoder.layers.%d.mlp.fc1.weight", tower, l);
        gen_add(g, n, 2, F, H, 0, 0);
        snprintf(n, sizeof n, "%s.encoder.layers.%d.mlp.fc1.bias", tower, l);
        gen_add(g, n, 1, F, 0, 0, 0);
        snprintf(n, sizeof n, "%s.encoder.layers.%d.mlp.fc2.weight", tower, l);
        gen_add(g, n, 2, H, F, 0, 0);
    }
}

static void gen_build(gen_model *g)
{
    g->n = 0;
    gen_add(g, "vision_model.embeddings.class_embedding", 1, GV_H, 0, 0, 0);
    gen_add(g, "vision_model.embeddings.patch_embedding.weight", 4, GV_H, 3, GV_P, GV_P);
    gen_add(g, "vision_model.embeddings.position_embedding.weight", 2, GV_T, GV_H, 0, 0);
    gen_add(g, "vision_model.pre_layrnorm.weight", 1, GV_H, 0, 0, 0);
    gen_add(g, "vision_model.pre_layrnorm.bias", 1, GV_H, 0, 0, 0);
    gen_layers(g, "vision_model", GV_L, GV_H, GV_F);
    gen_add(g, "vision_model.post_layernorm.weight", 1, GV_H, 0, 0, 0);
    gen_add(g, "vision_model.post_layernorm.bias", 1, GV_H, 0, 0, 0);
    gen_add(g, "visual_projection.weight", 2, G_D, GV_H, 0, 0);
    gen_add(g, "text_model.embeddings.token_embedding.weight", 2, G_VOCAB, GT_H, 0, 0);
    gen_add(g, "text_model.embeddings.position_embedding.weight", 2, G_POS, GT_H, 0, 0);
    gen_layers(g, "text_model", GT_L, GT_H, GT_F);
    gen_add(g, "text_model.final_layer_norm.weight", 1, GT_H, 0, 0, 0);
    gen_add(g, "text_model.final_layer_norm.bias", 1, GT_H, 0, 0, 0);
    gen_add(g, "text_projection.weight", 2, G_D, GT_H, 0, 0);
}

static void gen_write(const gen_model *g, const char *dir)
{
    size_t total = 0;
    for (int i = 0; i < g->n; i++)
        total += g->t[i].n * sizeof(float);
    uint8_t *data = malloc(total);
    assert_non_null(data);
    json_t *hdr = json_object();
    size_t off = 0;
    for (int i = 0; i < g->n; i++) {
        const gen_tensor *t = &g->t[i];
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++)
            json_array_append_new(shape, json_integer(t->shape[d]));
        memcpy(data + off, t->v, t->n * sizeof(float));
        json_object_set_new(hdr, t->name, json_pack("{s:s, s:o, s:[I,I]}", "dtype", "F32", "shape", shape,
                                                    "data_offsets", (json_int_t)off,
                                                    (json_int_t)(off + t->n * sizeof(float))));
        off += t->n * sizeof(float);
    }
    write_st_json(dir, hdr, data, total);
    json_decref(hdr);
    free(data);
    char cfg[1024];
    snprintf(cfg, sizeof cfg,
             "{\"projection_dim\": %d, \"text_config\": {\"hidden_size\": %d, \"intermediate_size\": %d,"
             " \"num_hidden_layers\": %d, \"num_attention_heads\": %d, \"hidden_act\": \"gelu\","
             " \"layer_norm_eps\": 1e-6}, \"vision_config\": {\"hidden_size\": %d, \"intermediate_size\": %d,"
             " \"num_hidden_layers\": %d, \"num_attention_heads\": %d, \"image_size\": %d, \"patch_size\": %d,"
             " \"hidden_act\": \"gelu\", \"layer_norm_eps\": 1e-6}}",
             G_D, GT_H, GT_F, GT_L, GT_HEADS, GV_H, GV_F, GV_L, GV_HEADS, GV_S, GV_P);
    write_file(dir, "config.json", cfg, strlen(cfg));
    /* preprocessing must agree with the 64-pixel input */
    const char *pre = "{\"crop_size\": 64, \"size\": 64}";
    write_file(dir, "preprocessor_config.json", pre, strlen(pre));
}

static void naive_ln(double *y, const double *x, int n, const float *w, const float *b, double eps)
{
    double mean = 0, var = 0;
    for (int i = 0; i < n; i++)
        mean += x[i];
    mean /= n;
    for (int i = 0; i < n; i++)
        var += (x[i] - mean) * (x[i] - mean);
    var /= n;
    for (int i = 0; i < n; i++)
        y[i] = (x[i] - mean) / sqrt(var + eps) * w[i] + b[i];
}

/* y[out] = W[out, in] x + b */
static void naive_linear(double *y, const double *x, const float *w, const float *b, int in, int out)
{
    for (int o = 0; o < out; o++) {
        double s = b ? b[o] : 0;
        for (int k = 0; k < in; k++)
            s += (double)w[(size_t)o * in + k] * x[k];
        y[o] = s;
    }
}

/* h[T][H] through the tower's blocks (gelu, eps 1e-6). */
static void naive_blocks(const gen_model *g, const char *tw, double *h, int T, int H, int F, int heads, int layers,
                         int causal)
{
    int d = H / heads;
    double *x = malloc(sizeof(double) * T * H), *q = malloc(sizeof(double) * T * H),
           *k = malloc(sizeof(double) * T * H), *v = malloc(sizeof(double) * T * H),
           *a = malloc(sizeof(double) * T * H), *t = malloc(sizeof(double) * F), *o = malloc(sizeof(double) * H),
           *p = malloc(sizeof(double) * T);
    for (int l = 0; l < layers; l++) {
#define LP(field) gp(g, "%s.encoder.layers.%d." field, tw, l)
        for (int i = 0; i < T; i++) {
            naive_ln(x + i * H, h + i * H, H, LP("layer_norm1.weight"), LP("layer_norm1.bias"), 1e-6);
            naive_linear(q + i * H, x + i * H, LP("self_attn.q_proj.weight"), LP("self_attn.q_proj.bias"), H, H);
            naive_linear(k + i * H, x + i * H, LP("self_attn.k_proj.weight"), LP("self_attn.k_proj.bias"), H, H);
            naive_linear(v + i * H, x + i * H, LP("self_attn.v_proj.weight"), LP("self_attn.v_proj.bias"), H, H);
        }
        for (int hd = 0; hd < heads; hd++)
            for (int i = 0; i < T; i++) {
                int n = causal ? i + 1 : T;
                double m = -1e300, sum = 0;
                for (int j = 0; j < n; j++) {
                    double s = 0;
                    for (int e = 0; e < d; e++)
                        s += q[i * H + hd * d + e] * k[j * H + hd * d + e];
                    p[j] = s / sqrt((double)d);
                    m = fmax(m, p[j]);
                }
                for (int j = 0; j < n; j++)
                    sum += p[j] = exp(p[j] - m);
                for (int e = 0; e < d; e++) {
                    double s = 0;
                    for (int j = 0; j < n; j++)
                        s += p[j] / sum * v[j * H + hd * d + e];
                    a[i * H + hd * d + e] = s;
                }
            }
        for (int i = 0; i < T; i++) {
            naive_linear(o, a + i * H, LP("self_attn.out_proj.weight"), LP("self_attn.out_proj.bias"), H, H);
            for (int e = 0; e < H; e++)
                h[i * H + e] += o[e];
            naive_ln(x + i * H, h + i * H, H, LP("layer_norm2.weight"), LP("layer_norm2.bias"), 1e-6);
            naive_linear(t, x + i * H, LP("mlp.fc1.weight"), LP("mlp.fc1.bias"), H, F);
            for (int e = 0; e < F; e++)
                t[e] = 0.5 * t[e] * (1 + erf(t[e] / sqrt(2.0)));
            naive_linear(o, t, LP("mlp.fc2.weight"), LP("mlp.fc2.bias"), F, H);
            for (int e = 0; e < H; e++)
                h[i * H + e] += o[e];
        }
#undef LP
    }
    free(x); free(q); free(k); free(v); free(a); free(t); free(o); free(p);
}

/* embed[D], patches[G*G][D] of one 3 x 64 x 64 image. */
static void naive_vision(const gen_model *g, const float *px, double *embed, double *patches)
{
    double h[GV_T * GV_H], x[GV_H];
    const float *pw = gp(g, "vision_model.embeddings.patch_embedding.weight");
    const float *pos = gp(g, "vision_model.embeddings.position_embedding.weight");
    const float *cls = gp(g, "vision_model.embeddings.class_embedding");
    for (int e = 0; e < GV_H; e++)
        h[e] = cls[e] + pos[e];
    for (int gy = 0; gy < GV_G; gy++)
        for (int gx = 0; gx < GV_G; gx++)
            for (int e = 0; e < GV_H; e++) {
                double s = 0;
                for (int c = 0; c < 3; c++)
                    for (int y = 0; y < GV_P; y++)
                        for (int xx = 0; xx < GV_P; xx++)
                            s += (double)pw[((e * 3 + c) * GV_P + y) * GV_P + xx] *
                                 px[(c * GV_S + gy * GV_P + y) * GV_S + gx * GV_P + xx];
                int tkn = 1 + gy * GV_G + gx;
                h[tkn * GV_H + e] = s + pos[tkn * GV_H + e];
            }
    for (int i = 0; i < GV_T; i++)
        naive_ln(h + i * GV_H, h + i * GV_H, GV_H, gp(g, "vision_model.pre_layrnorm.weight"),
                 gp(g, "vision_model.pre_layrnorm.bias"), 1e-6);
    naive_blocks(g, "vision_model", h, GV_T, GV_H, GV_F, GV_HEADS, GV_L, 0);
    for (int i = 0; i < GV_T; i++) {
        naive_ln(x, h + i * GV_H, GV_H, gp(g, "vision_model.post_layernorm.weight"),
                 gp(g, "vision_model.post_layernorm.bias"), 1e-6);
        naive_linear(i ? patches + (i - 1) * G_D : embed, x, gp(g, "visual_projection.weight"), NULL, GV_H, G_D);
    }
}

static void naive_text(const gen_model *g, const int32_t *ids, int n, double *embed)
{
    double *h = malloc(sizeof(double) * n * GT_H), x[GT_H];
    const float *tok = gp(g, "text_model.embeddings.token_embedding.weight");
    const float *pos = gp(g, "text_model.embeddings.position_embedding.weight");
    for (int i = 0; i < n; i++)
        for (int e = 0; e < GT_H; e++)
            h[i * GT_H + e] = (double)tok[(size_t)ids[i] * GT_H + e] + pos[i * GT_H + e];
    naive_blocks(g, "text_model", h, n, GT_H, GT_F, GT_HEADS, GT_L, 1);
    naive_ln(x, h + (n - 1) * GT_H, GT_H, gp(g, "text_model.final_layer_norm.weight"),
             gp(g, "text_model.final_layer_norm.bias"), 1e-6);
    naive_linear(embed, x, gp(g, "text_projection.weight"), NULL, GT_H, G_D);
    free(h);
}

static void test_other_geometry_gelu(void **state)
{
    static gen_model g;
    gen_build(&g);
    struct tmpdir d;
    tmp_make(&d);
    gen_write(&g, d.path);
    enc_model *m = NULL;
    int rc = enc_model_open(d.path, &m);
    if (rc)
        fail_msg("open generated model: %s", umg_err_msg());
    assert_int_equal(enc_model_grid(m), GV_G);
    assert_int_equal(enc_model_dim(m), G_D);
    assert_int_equal(enc_model_config(m)->vision.act, ENC_ACT_GELU);

    enum { N = 3, PX = 3 * GV_S * GV_S };
    float *px = malloc(sizeof(float) * N * PX);
    uint64_t seed = 42;
    for (int i = 0; i < N * PX; i++)
        px[i] = (float)((double)(splitmix(&seed) >> 11) / 9007199254740992.0 * 4 - 2);
    enc_run *r;
    assert_int_equal(enc_run_create(m, N, &r), 0);
    float emb[N * G_D], patches[N * GV_G * GV_G * G_D], emb_only[N * G_D];
    assert_int_equal(enc_encode_pixels(r, px, N, emb, patches), 0);
    assert_int_equal(enc_encode_pixels(r, px, N, emb_only, NULL), 0);
    double want[G_D], wantp[GV_G * GV_G * G_D];
    for (int i = 0; i < N; i++) {
        naive_vision(&g, px + (size_t)i * PX, want, wantp);
        check_ref(emb + i * G_D, want, G_D, "generated model: image");
        check_ref(emb_only + i * G_D, want, G_D, "generated model: image, [CLS]-only last block");
        for (int p = 0; p < GV_G * GV_G; p++)
            check_ref(patches + ((size_t)i * GV_G * GV_G + p) * G_D, wantp + p * G_D, G_D,
                      "generated model: patch");
    }
    /* texts of 1, 5, 30 and 77 tokens (the few-rows kernel and sgemm) */
    int lens[] = {1, 5, 30, 77};
    for (size_t li = 0; li < sizeof lens / sizeof *lens; li++) {
        int32_t ids[77];
        int n = lens[li];
        ids[0] = 49406;
        for (int i = 1; i < n; i++)
            ids[i] = (int32_t)(splitmix(&seed) % 49000);
        if (n > 1)
            ids[n - 1] = 49407;
        float e[G_D];
        assert_int_equal(enc_encode_ids(r, ids, n, e), 0);
        naive_text(&g, ids, n, want);
        check_ref(e, want, G_D, "generated model: text");
    }
    free(px);
    enc_run_close(r);
    enc_model_close(m);
    tmp_remove(&d);
    for (int i = 0; i < g.n; i++)
        free(g.t[i].v);
}

/* ---- dense feature variants, higher input resolution ------------------------ */

/* tests/fixtures/dense-variants/golden.json: tools/dense_variants_golden.py
 * (tools/clip_torch.py on ENC_FIT_PAD pixels of the fixture's photos). */
static json_t *dense_golden(void)
{
    json_error_t err;
    json_t *g = json_load_file(UMG_FIXTURES_DIR "/dense-variants/golden.json", 0, &err);
    if (!g)
        fail_msg("dense-variants/golden.json: %s", err.text);
    return g;
}

/* The photo preprocessed as ingest does: ENC_FIT_PAD at input size S. */
static float *pad_pixels(const enc_model *m, const char *image, int S)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/images/%s", TINY, image);
    enc_image img;
    int rc = enc_image_load(path, ENC_IMAGE_MAX_PIXELS_DEFAULT, &img);
    if (rc)
        fail_msg("%s: %s", path, umg_err_msg());
    enc_preproc p;
    enc_model_preproc_at(m, S, &p);
    p.fit = ENC_FIT_PAD;
    float *px = malloc(sizeof(float) * 3 * S * S);
    assert_non_null(px);
    assert_int_equal(enc_preprocess(&img, &p, px), 0);
    enc_image_free(&img);
    return px;
}

/* emb [D] and patches [G*G, D] of one image against a golden case. */
static void check_dense_case(json_t *cs, const float *emb, const float *patches, int D, const char *label)
{
    double ref[64];
    char what[256];
    assert_int_equal(flatten(json_object_get(cs, "embedding"), ref, 64), D);
    snprintf(what, sizeof what, "%s embedding", label);
    check_ref(emb, ref, D, what);
    json_t *index = json_object_get(cs, "patch_index"), *rows = json_object_get(cs, "patches");
    int G = (int)json_integer_value(json_object_get(cs, "grid"));
    assert_true(json_array_size(index) >= 4);
    assert_int_equal(json_array_size(index), json_array_size(rows));
    for (size_t j = 0; j < json_array_size(index); j++) {
        int p = (int)json_integer_value(json_array_get(index, j));
        assert_true(p >= 0 && p < G * G);
        assert_int_equal(flatten(json_array_get(rows, j), ref, 64), D);
        snprintf(what, sizeof what, "%s patch %d", label, p);
        check_ref(patches + (size_t)p * D, ref, D, what);
    }
}

/* Every variant at every input size of the golden file against the PyTorch
 * reference: alone, and batched with the other photo of the same size and mode. */
static void test_dense_variants_golden(void **state)
{
    json_t *golden = dense_golden(), *cases = json_object_get(golden, "cases");
    enc_model *m = open_tiny();
    int D = enc_model_dim(m);
    size_t n = json_array_size(cases);
    assert_true(n >= 10);
    int seen[3] = {0}, seen_sizes = 0;
    for (size_t i = 0; i < n; i++) {
        json_t *cs = json_array_get(cases, i);
        const char *image = json_string_value(json_object_get(cs, "image"));
        const char *mode_name = json_string_value(json_object_get(cs, "mode"));
        int S = (int)json_integer_value(json_object_get(cs, "input_size")), mode = -1;
        assert_int_equal(enc_dense_mode_parse(mode_name, &mode), 0);
        seen[mode]++;
        seen_sizes |= S == 224 ? 1 : S == 320 ? 2 : S == 448 ? 4 : 0;
        enc_run *r;
        assert_int_equal(enc_run_create_ex(m, 2, S, &r), 0);
        assert_int_equal(enc_run_input_size(r), S);
        int G = enc_run_grid(r);
        assert_int_equal(G, S / 32);
        assert_int_equal(G, (int)json_integer_value(json_object_get(cs, "grid")));
        assert_int_equal(enc_run_set_dense_mode(r, mode), 0);
        float *px = pad_pixels(m, image, S), emb[2 * 32];
        float *patches = malloc(sizeof(float) * 2 * G * G * D);
        char label[160];
        snprintf(label, sizeof label, "%s at %d, %s", image, S, mode_name);
        assert_int_equal(enc_encode_pixels(r, px, 1, emb, patches), 0);
        check_dense_case(cs, emb, patches, D, label);
        for (size_t j = i + 1; j < n; j++) {
            json_t *other = json_array_get(cases, j);
            if (json_integer_value(json_object_get(other, "input_size")) != S ||
                strcmp(json_string_value(json_object_get(other, "mode")), mode_name))
                continue;
            size_t pix = (size_t)3 * S * S;
            float *two = malloc(sizeof(float) * 2 * pix);
            float *px2 = pad_pixels(m, json_string_value(json_object_get(other, "image")), S);
            memcpy(two, px, pix * sizeof(float));
            memcpy(two + pix, px2, pix * sizeof(float));
            assert_int_equal(enc_encode_pixels(r, two, 2, emb, patches), 0);
            char l2[200];
            snprintf(l2, sizeof l2, "%s, batched", label);
            check_dense_case(cs, emb, patches, D, l2);
            check_dense_case(other, emb + D, patches + (size_t)G * G * D, D, l2);
            free(px2);
            free(two);
            break;
        }
        free(px);
        free(patches);
        enc_run_close(r);
    }
    assert_true(seen[ENC_DENSE_PLAIN] && seen[ENC_DENSE_CLEARCLIP] && seen[ENC_DENSE_SCLIP]);
    assert_int_equal(seen_sizes, 7);
    enc_model_close(m);
    json_decref(golden);
}

/* The variants change the patch tokens only: the [CLS] embedding stays CLIP's
 * (reference.json), and plain mode still reproduces the reference patches after
 * a variant ran on the same run state. */
static void test_dense_global_unchanged(void **state)
{
    enc_model *m = open_tiny();
    int D = enc_model_dim(m), G = enc_model_grid(m), n;
    float *pixels = malloc(sizeof(float) * MAX_IMAGES * PIX);
    load_all_pixels(pixels, &n);
    enc_run *r;
    assert_int_equal(enc_run_create(m, n, &r), 0);
    assert_int_equal(enc_run_dense_mode(r), ENC_DENSE_PLAIN);
    size_t np = (size_t)n * G * G * D;
    float *e_plain = malloc(sizeof(float) * n * D), *p_plain = malloc(sizeof(float) * np);
    float *e = malloc(sizeof(float) * n * D), *p = malloc(sizeof(float) * np), *e_only = malloc(sizeof(float) * n * D);
    double ref[49 * 32];
    assert_int_equal(enc_encode_pixels(r, pixels, n, e_plain, p_plain), 0);
    const int modes[] = {ENC_DENSE_CLEARCLIP, ENC_DENSE_SCLIP, ENC_DENSE_PLAIN};
    for (int k = 0; k < 3; k++) {
        assert_int_equal(enc_run_set_dense_mode(r, modes[k]), 0);
        assert_int_equal(enc_run_dense_mode(r), modes[k]);
        assert_int_equal(enc_encode_pixels(r, pixels, n, e, p), 0);
        assert_int_equal(enc_encode_pixels(r, pixels, n, e_only, NULL), 0);
        double worst_patch = 0;
        for (int i = 0; i < n; i++) {
            json_t *it = ref_item("images", i);
            check_ref_embedding(e + i * D, it, D, enc_dense_mode_name(modes[k]));
            check_ref_embedding(e_only + i * D, it, D, enc_dense_mode_name(modes[k]));
            double d;
            max_rel_diff(e + i * D, e_plain + i * D, D, &d);
            if (d > 1e-5)
                fail_msg("%s: image %d embedding differs from plain mode's by %g of its norm",
                         enc_dense_mode_name(modes[k]), i, d);
            flatten(json_object_get(it, "patch_tokens_projected"), ref, 49 * 32);
            for (int q = 0; q < G * G; q++) {
                const float *got = p + ((size_t)i * G * G + q) * D;
                max_rel_diff(got, p_plain + ((size_t)i * G * G + q) * D, D, &d);
                worst_patch = fmax(worst_patch, d);
                if (modes[k] == ENC_DENSE_PLAIN)
                    check_ref(got, ref + q * D, D, "plain patches after the variants");
            }
        }
        /* a variant really changes the patch tokens (the golden test pins them) */
        if (modes[k] != ENC_DENSE_PLAIN && worst_patch < 0.1)
            fail_msg("%s: patch tokens within %g of plain mode's", enc_dense_mode_name(modes[k]), worst_patch);
    }
    free(pixels);
    free(e_plain);
    free(p_plain);
    free(e);
    free(p);
    free(e_only);
    enc_run_close(r);
    enc_model_close(m);
}

static void test_dense_options(void **state)
{
    enc_model *m = open_tiny();
    enc_run *r = (enc_run *)1;
    /* input sizes: multiples of the patch (32) in [32, 4 * 224] */
    const int bad[] = {0, -32, 31, 33, 225, 4 * 224 + 32};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        r = (enc_run *)1;
        assert_int_equal(enc_run_create_ex(m, 1, bad[i], &r), UMG_EINVAL);
        assert_null(r);
    }
    assert_int_equal(enc_run_create_ex(m, 0, 320, &r), UMG_EINVAL);
    assert_int_equal(enc_run_create_ex(m, 1, 32, &r), 0); /* a 1x1 grid */
    assert_int_equal(enc_run_grid(r), 1);
    enc_run_close(r);

    /* modes */
    assert_int_equal(enc_run_create_ex(m, 1, 448, &r), 0);
    assert_int_equal(enc_run_set_dense_mode(r, 3), UMG_EINVAL);
    assert_int_equal(enc_run_set_dense_mode(r, -1), UMG_EINVAL);
    assert_int_equal(enc_run_dense_mode(r), ENC_DENSE_PLAIN);
    for (int k = ENC_DENSE_PLAIN; k <= ENC_DENSE_SCLIP; k++) {
        int back = -1;
        assert_int_equal(enc_dense_mode_parse(enc_dense_mode_name(k), &back), 0);
        assert_int_equal(back, k);
    }
    int mode = 7;
    assert_int_equal(enc_dense_mode_parse("ClearCLIP-ish", &mode), UMG_EINVAL);
    assert_int_equal(enc_dense_mode_parse(NULL, &mode), UMG_EINVAL);
    assert_int_equal(mode, 7);
    assert_string_equal(enc_dense_mode_name(9), "unknown");

    /* preprocessing for another size */
    enc_preproc p;
    enc_model_preproc_at(m, 448, &p);
    assert_int_equal(p.crop_w, 448);
    assert_int_equal(p.crop_h, 448);
    assert_int_equal(p.resize_shortest, 448);
    assert_int_equal(p.fit, enc_model_preproc(m)->fit);
    assert_true(p.mean[1] == enc_model_preproc(m)->mean[1] && p.std[2] == enc_model_preproc(m)->std[2]);

    /* the text tower on a run sized for 448 pixels */
    int32_t ids[80];
    float emb[32];
    int k = ref_ids(ref_item("texts", 0), ids);
    assert_int_equal(enc_encode_ids(r, ids, k, emb), 0);
    check_ref_embedding(emb, ref_item("texts", 0), 32, "text on a 448 run");
    enc_run_close(r);

    /* create_ex at the native size is enc_run_create */
    assert_int_equal(enc_run_create_ex(m, 1, 224, &r), 0);
    float *px = load_pixels(json_string_value(json_object_get(ref_item("images", 0), "pixels")), PIX);
    assert_int_equal(enc_encode_pixels(r, px, 1, emb, NULL), 0);
    check_ref_embedding(emb, ref_item("images", 0), 32, "create_ex at 224");
    free(px);
    enc_run_close(r);
    enc_model_close(m);
}

/* The position resize kernel: the identity at the same size, weights summing
 * to 1 (a constant grid stays constant), and torch's values on a small case. */
static void test_resize_grid_bicubic(void **state)
{
    enum { G = 3, G2 = 5, DIM = 2 };
    float src[G * G * DIM], same[G * G * DIM], dst[G2 * G2 * DIM], tmp[G * G2 * DIM];
    for (int i = 0; i < G * G * DIM; i++)
        src[i] = (float)((i * 7) % 11) - 3.5f;
    float tmp3[G * G * DIM];
    enc_resize_grid_bicubic(same, G, src, G, DIM, tmp3);
    for (int i = 0; i < G * G * DIM; i++)
        assert_float_equal(same[i], src[i], 1e-6);
    float ones[G * G * DIM];
    for (int i = 0; i < G * G * DIM; i++)
        ones[i] = 2.5f;
    enc_resize_grid_bicubic(dst, G2, ones, G, DIM, tmp);
    for (int i = 0; i < G2 * G2 * DIM; i++)
        assert_float_equal(dst[i], 2.5f, 1e-5);
    /* torch 1.13: F.interpolate(torch.arange(9.).reshape(1,1,3,3), size=(5,5),
     * mode="bicubic", align_corners=False)[0, 0, 0, :] and [0, 0, 2, 2] */
    float ramp[G * G];
    for (int i = 0; i < G * G; i++)
        ramp[i] = (float)i;
    float out[G2 * G2], t[G * G2];
    enc_resize_grid_bicubic(out, G2, ramp, G, 1, t);
    const float row0[G2] = {-0.3839999f, 0.0280007f, 0.7120003f, 1.3960003f, 1.8080006f};
    for (int x = 0; x < G2; x++)
        assert_float_equal(out[x], row0[x], 1e-5);
    assert_float_equal(out[2 * G2 + 2], 4.0f, 1e-5);
}

/* cosine of a and b (n doubles / floats) */
static double cosine_fd(const float *a, const double *b, int n)
{
    double d = 0, na = 0, nb = 0;
    for (int i = 0; i < n; i++) {
        d += a[i] * b[i];
        na += (double)a[i] * a[i];
        nb += b[i] * b[i];
    }
    return d / sqrt(na * nb);
}

/* Against the reference fixture: the worst cosine over images, patch tokens
 * and texts of m, and the largest difference of its image embeddings from the
 * fp32 model's. */
static void precision_vs_reference(enc_model *m, double *worst_out, double *differs_out)
{
    enc_model *m32 = open_tiny();
    assert_int_equal(enc_model_precision(m32), ENC_PRECISION_FP32);
    enc_run *r, *r32;
    assert_int_equal(enc_run_create(m, 1, &r), 0);
    assert_int_equal(enc_run_create(m32, 1, &r32), 0);
    int D = enc_model_dim(m), G = enc_model_grid(m);
    float emb[32], emb32[32], *patches = malloc(sizeof(float) * G * G * D);
    assert_non_null(patches);
    double ref[49 * 32], worst = 1, differs = 0;
    for (int i = 0; i < ref_count("images"); i++) {
        json_t *it = ref_item("images", i);
        float *px = load_pixels(json_string_value(json_object_get(it, "pixels")), PIX);
        assert_int_equal(enc_encode_pixels(r, px, 1, emb, patches), 0);
        assert_int_equal(enc_encode_pixels(r32, px, 1, emb32, NULL), 0);
        assert_int_equal(flatten(json_object_get(it, "embedding"), ref, 32), D);
        worst = fmin(worst, cosine_fd(emb, ref, D));
        for (int k = 0; k < D; k++)
            differs = fmax(differs, fabs(emb[k] - emb32[k]));
        assert_int_equal(flatten(json_object_get(it, "patch_tokens_projected"), ref, 49 * 32), G * G * D);
        for (int q = 0; q < G * G; q++)
            worst = fmin(worst, cosine_fd(patches + q * D, ref + q * D, D));
        free(px);
    }
    int32_t ids[80];
    for (int t = 0; t < ref_count("texts"); t++) {
        json_t *it = ref_item("texts", t);
        int n = ref_ids(it, ids);
        assert_int_equal(enc_encode_ids(r, ids, n, emb), 0);
        assert_int_equal(flatten(json_object_get(it, "embedding"), ref, 32), D);
        worst = fmin(worst, cosine_fd(emb, ref, D));
    }
    *worst_out = worst;
    *differs_out = differs;
    free(patches);
    enc_run_close(r);
    enc_run_close(r32);
    enc_model_close(m32);
}


/* The opt-in fp16 precision (enc.h): against the reference within a looser
 * cosine (measured on clip-tiny: >= 0.99999 over images, patches and texts), and
 * really computed in half (it differs from the fp32 path).  On a CPU without
 * AVX512-FP16, opening in fp16 is a clear error. */
static void test_fp16_precision(void **state)
{
    (void)state;
    int p = -1;
    assert_int_equal(enc_precision_parse("fp16", &p), 0);
    assert_int_equal(p, ENC_PRECISION_FP16);
    assert_int_equal(enc_precision_parse("fp32", &p), 0);
    assert_int_equal(p, ENC_PRECISION_FP32);
    assert_int_equal(enc_precision_parse("fp8", &p), UMG_EINVAL);
    assert_string_equal(enc_precision_name(ENC_PRECISION_FP16), "fp16");
    enc_model_options o = {.precision = 7};
    enc_model *m = NULL;
    assert_int_equal(enc_model_open_ex(TINY, &o, &m), UMG_EINVAL);
    assert_null(m);
    o.precision = ENC_PRECISION_FP16;
    int rc = enc_model_open_ex(TINY, &o, &m);
    if (!enc_packed_h_supported()) {
        assert_int_equal(rc, UMG_EINVAL);
        assert_non_null(strstr(umg_err_msg(), "AVX512-FP16"));
        skip();
    }
    assert_int_equal(rc, 0);
    assert_int_equal(enc_model_precision(m), ENC_PRECISION_FP16);
    double worst, differs;
    precision_vs_reference(m, &worst, &differs);
    print_message("fp16: worst cosine against the reference %.7f; largest image difference from fp32 %.3g\n", worst,
                  differs);
    if (!(worst >= 0.9999))
        fail_msg("fp16: cosine %.7f against the reference (>= 0.9999 wanted)", worst);
    if (!(differs > 1e-6))
        fail_msg("fp16 embeddings equal the fp32 ones (%.3g): the half kernel did not run", differs);
    enc_model_close(m);
}

/* int8, bf16 and auto (issue 18), the same way: int8 within cosine 0.999 of the
 * reference over images, patch tokens and texts (measured on clip-tiny: worst
 * ~0.9997), bf16 within 0.9995 (measured ~0.99998); both really differ from
 * fp32; bf16 without AVX512-BF16 is a clear error (forced here with
 * enc_cpu_limit); auto resolves to enc_precision_auto(), never to AUTO; the
 * kernels are named. */
static void test_int8_bf16_auto(void **state)
{
    (void)state;
    int p = -1;
    const char *names[] = {"int8", "bf16", "auto"};
    const int want[] = {ENC_PRECISION_INT8, ENC_PRECISION_BF16, ENC_PRECISION_AUTO};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(enc_precision_parse(names[i], &p), 0);
        assert_int_equal(p, want[i]);
        assert_string_equal(enc_precision_name(p), names[i]);
    }
    const double min_cos[] = {0.999, 0.9995};
    for (int i = 0; i < 2; i++) {
        enc_model_options o = {.precision = want[i]};
        enc_model *m = NULL;
        int rc = enc_model_open_ex(TINY, &o, &m);
        if (want[i] == ENC_PRECISION_BF16 && !enc_bf16_supported()) {
            assert_int_equal(rc, UMG_EINVAL);
            continue;
        }
        assert_int_equal(rc, 0);
        assert_int_equal(enc_model_precision(m), want[i]);
        assert_int_equal(strncmp(enc_model_kernels(m), names[i], 4), 0);
        double worst, differs;
        precision_vs_reference(m, &worst, &differs);
        print_message("%s: worst cosine against the reference %.7f; largest image difference from fp32 %.3g (%s)\n",
                      names[i], worst, differs, enc_model_kernels(m));
        if (!(worst >= min_cos[i]))
            fail_msg("%s: cosine %.7f against the reference (>= %g wanted)", names[i], worst, min_cos[i]);
        if (!(differs > 1e-6))
            fail_msg("%s embeddings equal the fp32 ones (%.3g): its kernel did not run", names[i], differs);
        enc_model_close(m);
    }
    unsigned prev = enc_cpu_limit(ENC_CPU_AVX2 | ENC_CPU_AVX512 | ENC_CPU_AVX512_VNNI);
    enc_model_options o = {.precision = ENC_PRECISION_BF16};
    enc_model *m = NULL;
    assert_int_equal(enc_model_open_ex(TINY, &o, &m), UMG_EINVAL);
    assert_non_null(strstr(umg_err_msg(), "AVX512-BF16"));
    assert_null(m);
    o.precision = ENC_PRECISION_AUTO;
    assert_int_equal(enc_model_open_ex(TINY, &o, &m), 0);
    /* VNNI and no AMX-BF16: int8 where this CPU has VNNI */
    assert_int_equal(enc_model_precision(m), (enc_cpu_features() & ENC_CPU_AVX512_VNNI) ? ENC_PRECISION_INT8
                                                                                        : ENC_PRECISION_FP32);
    enc_model_close(m);
    /* the 256-bit int8 kernels (docs/benchmarks.md): AVX-VNNI beats fp32 with
     * or without AVX-512; AVX2 alone beats OpenBLAS's AVX2 fp32, but not the
     * AVX-512 fp32 panels */
    const struct { unsigned limit; int want; } levels[] = {
        {ENC_CPU_AVX2 | ENC_CPU_AVX512 | ENC_CPU_AVX_VNNI, ENC_PRECISION_INT8},
        {ENC_CPU_AVX2 | ENC_CPU_AVX_VNNI, ENC_PRECISION_INT8},
        {ENC_CPU_AVX2, ENC_PRECISION_INT8},
        {ENC_CPU_AVX2 | ENC_CPU_AVX512, ENC_PRECISION_FP32},
    };
    for (size_t i = 0; i < sizeof levels / sizeof *levels; i++) {
        enc_cpu_limit(levels[i].limit);
        if ((enc_cpu_features() | ~levels[i].limit) != ~0u)
            continue; /* this CPU lacks part of the level */
        assert_int_equal(enc_precision_auto(), levels[i].want);
        o.precision = ENC_PRECISION_AUTO;
        assert_int_equal(enc_model_open_ex(TINY, &o, &m), 0);
        assert_int_equal(enc_model_precision(m), levels[i].want);
        enc_model_close(m);
    }
    enc_cpu_limit(0); /* no vector ISA: auto stays exact */
    assert_int_equal(enc_precision_auto(), ENC_PRECISION_FP32);
    /* AVX-512 BF16 without AMX-BF16 (and VNNI masked off): fp32, as on a CPU
     * without these (aarch64: the mask hides NEON too) */
    enc_cpu_limit(ENC_CPU_AVX2 | ENC_CPU_AVX512 | ENC_CPU_AVX512_BF16 | ENC_CPU_AMX_BF16);
    assert_int_equal(enc_precision_auto(), (enc_cpu_features() & ENC_CPU_AMX_BF16) ? ENC_PRECISION_BF16
                                                                                    : ENC_PRECISION_FP32);
    enc_cpu_limit(prev);
    assert_int_equal(enc_model_open_ex(TINY, &o, &m), 0);
    assert_int_equal(enc_model_precision(m), enc_precision_auto());
    assert_true(enc_model_precision(m) != ENC_PRECISION_AUTO);
    enc_model_close(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_fixture),
        cmocka_unit_test(test_config_defaults),
        cmocka_unit_test(test_config_errors),
        cmocka_unit_test(test_kernels),
        cmocka_unit_test(test_linear_paths),
        cmocka_unit_test_setup_teardown(test_image_embeddings, tiny_one_setup, tiny_one_teardown),
        cmocka_unit_test(test_batched_equals_single),
        cmocka_unit_test(test_model_kernel_paths),
        cmocka_unit_test_setup_teardown(test_text_embeddings, tiny_one_setup, tiny_one_teardown),
        cmocka_unit_test(test_text_batch_equals_single),
        cmocka_unit_test_setup_teardown(test_text_tokenized, tiny_one_setup, tiny_one_teardown),
        cmocka_unit_test_setup_teardown(test_images_decoded, tiny_one_setup, tiny_one_teardown),
        cmocka_unit_test(test_threads_share_model),
        cmocka_unit_test(test_run_thread_cap),
        cmocka_unit_test(test_half_precision_checkpoints),
        cmocka_unit_test(test_hostile_headers),
        cmocka_unit_test(test_hostile_files),
        cmocka_unit_test(test_model_metadata),
        cmocka_unit_test(test_other_geometry_gelu),
        cmocka_unit_test(test_dense_variants_golden),
        cmocka_unit_test(test_dense_global_unchanged),
        cmocka_unit_test(test_dense_options),
        cmocka_unit_test(test_resize_grid_bicubic),
        cmocka_unit_test(test_fp16_precision),
        cmocka_unit_test(test_int8_bf16_auto),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    json_decref(reference());
    return rc;
}
