/* test_regions_server.c - region vectors as `umgdb serve` (env UMG_BIN) stores
 * them, in both region modes (--region-mode dense | crop, docs/regions.md),
 * checked against the encoder computed here and against `umgdb embed`, with
 * tests/fixtures/clip-tiny.  The server runs as a real process; after it
 * stops, the stored vectors are read back through db.h (read-only).
 *
 *   dense: a region vector is the area-weighted mean of the L2-normalized patch
 *          tokens that `umgdb embed --patches` prints, over the box
 *          (re-implemented here from the documented definition);
 *   crop:  a region vector is the embedding of the box's crop of the decoded
 *          photo, preprocessed with ENC_FIT_PAD; for a square crop that is
 *          exactly `umgdb embed` on the cropped image written as a PNG;
 *   both:  boxes of an EXIF-rotated JPEG are in the oriented photo's pixels:
 *          equal to those of a PNG of the decoded (oriented) pixels;
 *   the mode is recorded in the data directory: reopening without the flag
 *          keeps it, with the other mode is refused;
 *   "refine": "pixel": each photo's boxes in a region answer are re-ranked by
 *          the documented rule (re-implemented here from what was stored). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <png.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "db.h"
#include "enc.h"
#include "server_harness.h"
#include "test_util.h"
#include "umg_error.h"

#define TINY UMG_FIXTURES_DIR "/clip-tiny"
#define IMG(n) TINY "/images/" n
#define MAX_REG 64

static enc_model *model;

static int setup(void **state)
{
    int rc = enc_model_open(TINY, &model);
    if (rc) fprintf(stderr, "clip-tiny: %s\n", umg_err_msg());
    return rc ? -1 : 0;
}

static int teardown_all(void **state)
{
    enc_model_close(model);
    return 0;
}

/* ---- files ------------------------------------------------------------------------ */

static void write_png(const char *path, const enc_image *img)
{
    png_image p;
    memset(&p, 0, sizeof p);
    p.version = PNG_IMAGE_VERSION;
    p.width = (png_uint_32)img->width;
    p.height = (png_uint_32)img->height;
    p.format = PNG_FORMAT_RGB;
    assert_true(png_image_write_to_file(&p, path, 0, img->rgb, 0, NULL));
}

/* A JPEG whose stored pixels are img turned 90 degrees counter-clockwise, with
 * EXIF Orientation 6 ("rotate 90 clockwise to display"): a viewer, and the
 * decoder, show it upright again. */
static void write_rotated_jpeg(const char *path, const enc_image *img)
{
    int W = img->height, H = img->width; /* stored size */
    uint8_t *raw = malloc((size_t)W * H * 3);
    assert_non_null(raw);
    /* counter-clockwise: the displayed top-right corner becomes the stored top-left */
    for (int sy = 0; sy < H; sy++)
        for (int sx = 0; sx < W; sx++)
            memcpy(raw + ((size_t)sy * W + sx) * 3, img->rgb + ((size_t)sx * img->width + (img->width - 1 - sy)) * 3, 3);
    tu_write_jpeg(path, raw, W, H, 92, 6);
    free(raw);
}

typedef struct stored {
    uint64_t image_id;
    int width, height;
    int n;
    uint64_t region_id[MAX_REG];
    double box[MAX_REG][4];
} stored;

/* `get` an image: size, regions (ids, boxes). */
static void get_stored(umg_client *c, uint64_t image_id, stored *out)
{
    proto_writer w;
    uint64_t id = ts_begin(c, &w, "get", 1);
    ts_kv_uint(&w, "image_id", image_id);
    ts_end(c, &w);
    proto_response *r = ts_wait_ok(c, id);
    memset(out, 0, sizeof *out);
    out->image_id = image_id;
    out->width = (int)ts_res_u(r, "width");
    out->height = (int)ts_res_u(r, "height");
    const msgpack_object *regs = umg_result_get(r, "regions");
    assert_non_null(regs);
    assert_true(regs->via.array.size <= MAX_REG);
    out->n = (int)regs->via.array.size;
    for (int i = 0; i < out->n; i++) {
        const msgpack_object *m = &regs->via.array.ptr[i];
        assert_true(proto_obj_uint(proto_map_get(m, "region_id"), &out->region_id[i]));
        assert_true(proto_obj_box(proto_map_get(m, "box"), out->box[i]));
    }
    proto_response_free(r);
}

/* Ingest files (names "/t/<i>"), wait, read back what was stored. */
static void ingest_all(const ts_server *s, const char *const *files, int n, stored *out)
{
    umg_client *c = ts_conn(s);
    uint64_t ids[16];
    for (int i = 0; i < n; i++) {
        char name[32];
        snprintf(name, sizeof name, "/t/%d", i);
        ids[i] = ts_send_ingest(c, files[i], name, NULL);
    }
    for (int i = 0; i < n; i++) {
        proto_response *r = ts_wait_ok(c, ids[i]);
        uint64_t image_id = ts_res_u(r, "image_id");
        proto_response_free(r);
        get_stored(c, image_id, &out[i]);
    }
    umg_client_close(c);
}

static db_t *open_stored_as(const char *data, int read_only)
{
    char *name = NULL;
    uint8_t fp[32];
    int dim = 0;
    assert_int_equal(db_probe(data, &name, fp, &dim), 0);
    db_options o = db_options_default();
    o.fingerprint = fp;
    o.model_name = name;
    o.dim = dim;
    o.read_only = read_only;
    db_t *db = NULL;
    int rc = db_open(data, &o, &db);
    free(name);
    if (rc) fail_msg("db_open %s: %s", data, umg_err_msg());
    return db;
}

static db_t *open_stored(const char *data) { return open_stored_as(data, 1); }

/* The region mode recorded in the data directory's LMDB meta ("" if none). */
static void recorded_mode(const char *data, char *buf, size_t len)
{
    db_t *db = open_stored(data);
    int rc = db_setting_get(db, "region_mode", buf, len);
    if (rc == UMG_ENOENT) buf[0] = 0;
    else assert_int_equal(rc, 0);
    db_close(db);
}

static double cosine(const float *a, const float *b, int n)
{
    double ab = 0, aa = 0, bb = 0;
    for (int i = 0; i < n; i++) ab += (double)a[i] * b[i], aa += (double)a[i] * a[i], bb += (double)b[i] * b[i];
    return ab / sqrt(aa * bb);
}

/* ---- reference computations ------------------------------------------------------------ */

/* The crop of box (whole pixels) through ENC_FIT_PAD and the vision tower. */
static void crop_embedding(const enc_image *img, const double box[4], float *out)
{
    enc_image c = {0};
    assert_int_equal(enc_image_crop(img, (int)box[0], (int)box[1], (int)box[2], (int)box[3], &c), 0);
    assert_int_equal(c.width, (int)box[2]);
    assert_int_equal(c.height, (int)box[3]);
    enc_preproc p = *enc_model_preproc(model);
    p.fit = ENC_FIT_PAD;
    int S = enc_model_config(model)->image_size;
    float *px = malloc((size_t)3 * S * S * sizeof(float));
    assert_non_null(px);
    assert_int_equal(enc_preprocess(&c, &p, px), 0);
    enc_run *run;
    assert_int_equal(enc_run_create(model, 1, &run), 0);
    assert_int_equal(enc_encode_pixels(run, px, 1, out, NULL), 0);
    enc_run_close(run);
    enc_l2_normalize(out, enc_model_dim(model));
    free(px);
    enc_image_free(&c);
}

/* Run `umgdb embed --model clip-tiny [--patches] [--decode MODE] --image ...` and parse its
 * JSON lines: embeddings [n][D], patches [n][G*G][D] (if asked).  decode NULL: embed's default. */
static void run_embed(const char *const *images, int n, int patches, const char *decode, float *emb, float *pat)
{
    char outp[] = "/tmp/umg-regsrv-embed-XXXXXX";
    int fo = mkstemp(outp);
    assert_true(fo >= 0);
    const char *argv[64];
    int a = 0;
    argv[a++] = tu_bin();
    argv[a++] = "embed";
    argv[a++] = "--model";
    argv[a++] = TINY;
    argv[a++] = "--threads";
    argv[a++] = "1";
    if (patches) argv[a++] = "--patches";
    if (decode) argv[a++] = "--decode", argv[a++] = decode;
    for (int i = 0; i < n; i++) argv[a++] = "--image", argv[a++] = images[i];
    argv[a] = NULL;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fo, 1);
        tu_execv(argv);
        _exit(127);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    close(fo);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    size_t len;
    char *text = tu_read_file(outp, &len);
    unlink(outp);
    int D = enc_model_dim(model), GG = enc_model_grid(model) * enc_model_grid(model);
    char *line = text;
    for (int i = 0; i < n; i++) {
        char *nl = strchr(line, '\n');
        assert_non_null(nl);
        *nl = 0;
        json_error_t je;
        json_t *j = json_loads(line, 0, &je);
        assert_non_null(j);
        json_t *e = json_object_get(j, "embedding");
        assert_int_equal(json_array_size(e), (size_t)D);
        for (int d = 0; d < D; d++) emb[(size_t)i * D + d] = (float)json_real_value(json_array_get(e, (size_t)d));
        if (patches) {
            json_t *p = json_object_get(j, "patches");
            assert_int_equal(json_array_size(p), (size_t)GG);
            for (int c = 0; c < GG; c++) {
                json_t *row = json_array_get(p, (size_t)c);
                assert_int_equal(json_array_size(row), (size_t)D);
                for (int d = 0; d < D; d++)
                    pat[((size_t)i * GG + c) * D + d] = (float)json_real_value(json_array_get(row, (size_t)d));
            }
        }
        json_decref(j);
        line = nl + 1;
    }
    free(text);
}

static double overlap(double a0, double a1, double b0, double b1)
{
    double lo = a0 > b0 ? a0 : b0, hi = a1 < b1 ? a1 : b1;
    return hi > lo ? hi - lo : 0;
}

/* The dense region vector by its definition (docs/regions.md), written out
 * here: box -> input pixels (x * scale + offset), clipped, in patch units;
 * cell weights = covered area; mean of the normalized tokens; normalized. */
static void pool_reference(const float *tokens, int G, int D, int P, const enc_preproc_geom *g, const double box[4],
                           float *out)
{
    double x0 = box[0] * g->scale_x + g->off_x, x1 = (box[0] + box[2]) * g->scale_x + g->off_x;
    double y0 = box[1] * g->scale_y + g->off_y, y1 = (box[1] + box[3]) * g->scale_y + g->off_y;
    x0 = fmax(0, fmin(g->input_w, x0)) / P, x1 = fmax(0, fmin(g->input_w, x1)) / P;
    y0 = fmax(0, fmin(g->input_h, y0)) / P, y1 = fmax(0, fmin(g->input_h, y1)) / P;
    double *acc = calloc((size_t)D, sizeof *acc), wsum = 0;
    assert_non_null(acc);
    for (int i = 0; i < G; i++)
        for (int j = 0; j < G; j++) {
            double w = overlap(x0, x1, j, j + 1) * overlap(y0, y1, i, i + 1);
            if (w <= 0) continue;
            const float *t = tokens + ((size_t)i * G + j) * D;
            double nn = 0;
            for (int d = 0; d < D; d++) nn += (double)t[d] * t[d];
            nn = sqrt(nn);
            for (int d = 0; d < D; d++) acc[d] += w * t[d] / nn;
            wsum += w;
        }
    assert_true(wsum > 0);
    for (int d = 0; d < D; d++) out[d] = (float)(acc[d] / wsum);
    enc_l2_normalize(out, D);
    free(acc);
}

/* ---- tests ------------------------------------------------------------------------------- */

/* crop: every stored region vector is the crop's embedding; boxes are whole
 * pixels inside the oriented photo; crops of several photos share forward
 * passes (--batch 4 with 6 regions each); a square crop equals `umgdb embed`
 * on the crop written as a PNG; query_image with a box on sent bytes finds
 * the very region; a box on a stored image is refused. */
static void test_crop_vectors(void **state)
{
    ts_server s;
    ts_make_tmp(&s, "umg-regsrv-");
    char rot[300];
    snprintf(rot, sizeof rot, "%s/rocket_exif6.jpg", s.dir);
    enc_image rocket = {0};
    assert_int_equal(enc_image_load(IMG("rocket.jpg"), ENC_IMAGE_MAX_PIXELS_DEFAULT, &rocket), 0);
    write_rotated_jpeg(rot, &rocket);
    enc_image_free(&rocket);

    const char *files[] = {IMG("astronaut.png"), IMG("chelsea.png"), rot};
    const int nf = 3;
    const char *extra[] = {"--region-mode", "crop", "--regions", "6", "--batch", "4", NULL};
    ts_start_ok(&s, extra);
    stored st[3];
    ingest_all(&s, files, nf, st);

    /* query_image with the box of a stored region, on the photo's bytes: that
     * region comes first with cosine ~1 (float16 storage) */
    umg_client *c = ts_conn(&s);
    {
        size_t n;
        uint8_t *b = (uint8_t *)tu_read_file(files[1], &n);
        proto_writer w;
        uint64_t id;
        assert_int_equal(umg_client_begin(c, &w, "query_image", 4, &id), 0);
        proto_pack_cstr(&w.pk, "data");
        msgpack_pack_bin(&w.pk, n);
        msgpack_pack_bin_body(&w.pk, b, n);
        proto_pack_cstr(&w.pk, "box");
        msgpack_pack_array(&w.pk, 4);
        for (int k = 0; k < 4; k++) msgpack_pack_double(&w.pk, st[1].box[0][k]);
        proto_pack_cstr(&w.pk, "granularity");
        proto_pack_cstr(&w.pk, "region");
        proto_pack_cstr(&w.pk, "k");
        msgpack_pack_uint32(&w.pk, 1);
        assert_int_equal(umg_client_end(c, &w), 0);
        free(b);
        proto_response *r = ts_wait_ok(c, id);
        const msgpack_object *h = umg_result_get(r, "hits");
        assert_true(h && h->via.array.size == 1);
        uint64_t rid = 0;
        double score = 0;
        assert_true(proto_obj_uint(proto_map_get(&h->via.array.ptr[0], "region_id"), &rid));
        assert_true(proto_obj_float(proto_map_get(&h->via.array.ptr[0], "score"), &score));
        assert_int_equal(rid, st[1].region_id[0]);
        assert_true(score > 0.9999);
        proto_response_free(r);
        /* a box on a stored image: the pixels are not stored */
        assert_int_equal(umg_client_begin(c, &w, "query_image", 2, &id), 0);
        proto_pack_cstr(&w.pk, "image_id");
        msgpack_pack_uint64(&w.pk, st[1].image_id);
        proto_pack_cstr(&w.pk, "box");
        msgpack_pack_array(&w.pk, 4);
        for (int k = 0; k < 4; k++) msgpack_pack_int(&w.pk, 10 + 20 * k);
        assert_int_equal(umg_client_end(c, &w), 0);
        assert_int_equal(umg_client_wait(c, id, TS_T_MS, &r), 0);
        assert_false(r->ok);
        assert_int_equal(r->code, UMG_EUNSUPPORTED);
        proto_response_free(r);
    }
    umg_client_close(c);
    assert_int_equal(ts_stop(&s), 0);

    db_t *db = open_stored(s.data);
    int D = enc_model_dim(model);
    float *got = malloc((size_t)D * sizeof(float)), *want = malloc((size_t)D * sizeof(float));
    assert_true(got && want);
    const char *square_png[MAX_REG];
    char square_path[MAX_REG][320];
    float square_vec[MAX_REG][64];
    int n_square = 0;
    assert_true(D <= 64);
    for (int f = 0; f < nf; f++) {
        enc_image img = {0};
        assert_int_equal(enc_image_load(files[f], ENC_IMAGE_MAX_PIXELS_DEFAULT, &img), 0);
        assert_int_equal(st[f].width, img.width);
        assert_int_equal(st[f].height, img.height);
        assert_true(st[f].n >= 3 && st[f].n <= 6);
        for (int i = 0; i < st[f].n; i++) {
            const double *b = st[f].box[i];
            for (int k = 0; k < 4; k++) assert_true(b[k] == floor(b[k])); /* whole pixels: what was cropped */
            assert_true(b[0] >= 0 && b[1] >= 0 && b[2] >= 1 && b[3] >= 1);
            assert_true(b[0] + b[2] <= img.width && b[1] + b[3] <= img.height);
            assert_int_equal(db_get_vector(db, DB_KIND_REGION, st[f].region_id[i], got), 0);
            crop_embedding(&img, b, want);
            double cs = cosine(got, want, D);
            if (cs < 0.99999) fail_msg("file %d region %d: cosine %.7f to the crop's embedding", f, i, cs);
            if (b[2] == b[3] && n_square < MAX_REG) { /* PAD == CLIP's CROP for a square: `umgdb embed` applies */
                enc_image cimg = {0};
                assert_int_equal(enc_image_crop(&img, (int)b[0], (int)b[1], (int)b[2], (int)b[3], &cimg), 0);
                snprintf(square_path[n_square], sizeof square_path[0], "%s/crop%d.png", s.dir, n_square);
                write_png(square_path[n_square], &cimg);
                enc_image_free(&cimg);
                memcpy(square_vec[n_square], got, (size_t)D * sizeof(float));
                square_png[n_square] = square_path[n_square];
                n_square++;
            }
        }
        enc_image_free(&img);
    }
    db_close(db);
    /* astronaut.png is square: its whole-image window at least */
    assert_true(n_square >= 1);
    float *emb = malloc((size_t)n_square * D * sizeof(float));
    assert_non_null(emb);
    run_embed(square_png, n_square, 0, NULL, emb, NULL);
    for (int i = 0; i < n_square; i++) {
        double cs = cosine(square_vec[i], emb + (size_t)i * D, D);
        if (cs < 0.99999) fail_msg("square crop %d: cosine %.7f to umgdb embed", i, cs);
    }
    free(emb);
    free(got);
    free(want);
    assert_int_equal(tu_rm_rf(s.dir), 0);
}

/* dense: on a square photo (where the server's ENC_FIT_PAD and embed's CLIP
 * crop are the same input) every stored region vector is the pooling of the
 * normalized patch tokens `umgdb embed --patches` prints. */
static void test_dense_vectors(void **state)
{
    ts_server s;
    ts_make_tmp(&s, "umg-regsrv-");
    const char *files[] = {IMG("astronaut.png"), IMG("camera.png")};
    const char *extra[] = {"--regions", "12", NULL}; /* no --region-mode: dense, the default */
    ts_start_ok(&s, extra);
    stored st[2];
    ingest_all(&s, files, 2, st);
    assert_int_equal(ts_stop(&s), 0);

    int D = enc_model_dim(model), G = enc_model_grid(model), P = enc_model_config(model)->patch_size;
    float *emb = malloc((size_t)2 * D * sizeof(float)), *pat = malloc((size_t)2 * G * G * D * sizeof(float));
    float *got = malloc((size_t)D * sizeof(float)), *want = malloc((size_t)D * sizeof(float));
    assert_true(emb && pat && got && want);
    run_embed(files, 2, 1, NULL, emb, pat);
    db_t *db = open_stored(s.data);
    enc_preproc p = *enc_model_preproc(model);
    p.fit = ENC_FIT_PAD;
    int checked = 0;
    for (int f = 0; f < 2; f++) {
        assert_int_equal(st[f].width, st[f].height); /* the premise of the comparison */
        enc_preproc_geom g;
        enc_preproc_geometry(&p, st[f].width, st[f].height, &g);
        assert_true(st[f].n >= 3);
        /* the image vector too: PAD == CROP here */
        assert_int_equal(db_get_vector(db, DB_KIND_IMAGE, st[f].image_id, got), 0);
        assert_true(cosine(got, emb + (size_t)f * D, D) >= 0.99999);
        for (int i = 0; i < st[f].n; i++) {
            assert_int_equal(db_get_vector(db, DB_KIND_REGION, st[f].region_id[i], got), 0);
            pool_reference(pat + (size_t)f * G * G * D, G, D, P, &g, st[f].box[i], want);
            double cs = cosine(got, want, D);
            if (cs < 0.99999) fail_msg("file %d region %d: cosine %.7f to pooled embed --patches", f, i, cs);
            checked++;
        }
    }
    assert_true(checked >= 6);
    db_close(db);
    free(emb);
    free(pat);
    free(got);
    free(want);
    assert_int_equal(tu_rm_rf(s.dir), 0);
}

/* Both modes: a JPEG with EXIF Orientation 6 and a PNG of its decoded
 * (oriented) pixels give the same size, the same boxes and the same region
 * vectors: boxes are in the oriented photo's pixels and cover the same
 * content.  (The decoder's orientation itself is checked against Pillow in
 * test_image.) */
static void test_exif_boxes(void **state)
{
    for (int mode = 0; mode < 2; mode++) {
        ts_server s;
        ts_make_tmp(&s, "umg-regsrv-");
        char rot[300], png[300];
        snprintf(rot, sizeof rot, "%s/chelsea_exif6.jpg", s.dir);
        snprintf(png, sizeof png, "%s/chelsea_oriented.png", s.dir);
        enc_image img = {0};
        assert_int_equal(enc_image_load(IMG("chelsea.png"), ENC_IMAGE_MAX_PIXELS_DEFAULT, &img), 0);
        write_rotated_jpeg(rot, &img);
        enc_image up = {0};
        assert_int_equal(enc_image_load(rot, ENC_IMAGE_MAX_PIXELS_DEFAULT, &up), 0);
        assert_int_equal(up.width, 451); /* stored 300 x 451: the decoder turned it upright */
        assert_int_equal(up.height, 300);
        double diff = 0; /* and the right way round: close to the original (JPEG loss only) */
        for (size_t i = 0; i < (size_t)451 * 300 * 3; i++) diff += abs((int)up.rgb[i] - (int)img.rgb[i]);
        assert_true(diff / (451.0 * 300 * 3) < 4.0);
        write_png(png, &up);
        enc_image_free(&up);
        enc_image_free(&img);

        const char *files[] = {rot, png};
        /* the same pixels from both files: the JPEG decoded exactly (--decode fast would shrink it) */
        const char *extra[] = {"--region-mode", mode ? "crop" : "dense", "--regions", "8", "--decode", "exact", NULL};
        ts_start_ok(&s, extra);
        stored st[2];
        ingest_all(&s, files, 2, st);
        assert_int_equal(ts_stop(&s), 0);
        assert_int_equal(st[0].width, 451);
        assert_int_equal(st[0].height, 300);
        assert_int_equal(st[1].width, 451);
        assert_int_equal(st[0].n, st[1].n);
        assert_true(st[0].n >= 4);
        db_t *db = open_stored(s.data);
        int D = enc_model_dim(model);
        float a[64], b[64];
        for (int i = 0; i < st[0].n; i++) {
            for (int k = 0; k < 4; k++) assert_true(fabs(st[0].box[i][k] - st[1].box[i][k]) < 1e-3);
            assert_true(st[0].box[i][0] + st[0].box[i][2] <= 451 + 1e-3);
            assert_true(st[0].box[i][1] + st[0].box[i][3] <= 300 + 1e-3);
            assert_int_equal(db_get_vector(db, DB_KIND_REGION, st[0].region_id[i], a), 0);
            assert_int_equal(db_get_vector(db, DB_KIND_REGION, st[1].region_id[i], b), 0);
            assert_true(cosine(a, b, D) >= 0.99999);
        }
        db_close(db);
        assert_int_equal(tu_rm_rf(s.dir), 0);
    }
}

static int log_has(const ts_server *s, const char *needle)
{
    size_t n;
    char *t = tu_read_file(s->log, &n);
    int found = strstr(t, needle) != NULL;
    free(t);
    return found;
}

/* The hello result's region_mode. */
static int hello_mode_is(const ts_server *s, const char *mode)
{
    umg_client *c = ts_conn(s);
    proto_response *r = NULL;
    assert_int_equal(umg_client_call0(c, "ping", TS_T_MS, &r), 0);
    assert_true(r->ok);
    int eq = proto_obj_str_eq(umg_result_get(r, "region_mode"), mode);
    proto_response_free(r);
    umg_client_close(c);
    return eq;
}

/* The mode is recorded at creation: no flag keeps it, the same flag is fine,
 * the other mode is refused at start (exit 1, the reason in the log); a
 * directory filled before modes were recorded is dense. */
static void test_mode_recorded(void **state)
{
    ts_server s;
    ts_make_tmp(&s, "umg-regsrv-");
    const char *crop[] = {"--region-mode", "crop", "--regions", "4", NULL};
    const char *dense[] = {"--region-mode", "dense", "--regions", "4", NULL};
    const char *none[] = {"--regions", "4", NULL};
    ts_start_ok(&s, crop);
    assert_true(hello_mode_is(&s, "crop"));
    assert_int_equal(ts_stop(&s), 0);
    char mode[32];
    recorded_mode(s.data, mode, sizeof mode);
    assert_string_equal(mode, "crop");
    ts_start_ok(&s, none); /* no flag: the recorded mode */
    assert_true(hello_mode_is(&s, "crop"));
    assert_int_equal(ts_stop(&s), 0);
    assert_int_equal(ts_start(&s, dense), 1);
    assert_true(log_has(&s, "holds crop region vectors"));
    assert_true(log_has(&s, "--region-mode dense"));
    ts_start_ok(&s, crop);
    assert_int_equal(ts_stop(&s), 0);
    assert_int_equal(tu_rm_rf(s.dir), 0);

    /* new directory without the flag: dense, recorded; crop refused later */
    ts_make_tmp(&s, "umg-regsrv-");
    ts_start_ok(&s, none);
    assert_true(hello_mode_is(&s, "dense"));
    const char *one[] = {IMG("coffee.png")};
    stored st;
    ingest_all(&s, one, 1, &st);
    assert_int_equal(ts_stop(&s), 0);
    assert_int_equal(ts_start(&s, crop), 1);
    assert_true(log_has(&s, "holds dense region vectors"));
    /* a directory with images and no record (made before region modes): dense */
    db_t *db = open_stored_as(s.data, 0);
    assert_int_equal(db_setting_put(db, "region_mode", NULL), 0);
    db_close(db);
    recorded_mode(s.data, mode, sizeof mode);
    assert_string_equal(mode, "");
    assert_int_equal(ts_start(&s, crop), 1);
    ts_start_ok(&s, none);
    assert_true(hello_mode_is(&s, "dense"));
    assert_int_equal(ts_stop(&s), 0);
    recorded_mode(s.data, mode, sizeof mode);
    assert_string_equal(mode, "dense");
    assert_int_equal(tu_rm_rf(s.dir), 0);

    /* the side file DIR/region_mode of older directories is moved into the
     * meta at the first start (and removed); the mode is kept */
    ts_make_tmp(&s, "umg-regsrv-");
    ts_start_ok(&s, none);
    ingest_all(&s, one, 1, &st);
    assert_int_equal(ts_stop(&s), 0);
    db = open_stored_as(s.data, 0);
    assert_int_equal(db_setting_put(db, "region_mode", NULL), 0);
    db_close(db);
    char marker[400];
    snprintf(marker, sizeof marker, "%s/region_mode", s.data);
    tu_write_file(marker, "crop\n", 5);
    ts_start_ok(&s, none);
    assert_true(hello_mode_is(&s, "crop"));
    assert_int_equal(ts_stop(&s), 0);
    assert_int_equal(access(marker, F_OK), -1);
    recorded_mode(s.data, mode, sizeof mode);
    assert_string_equal(mode, "crop");
    ts_start_ok(&s, none);
    assert_true(hello_mode_is(&s, "crop"));
    assert_int_equal(ts_stop(&s), 0);
    assert_int_equal(tu_rm_rf(s.dir), 0);
}

/* ---- "refine": "pixel" (docs/regions.md, "Pixel-level refinement") ------------------------ */

#define REF_FRAC 0.5   /* the documented heat-mask threshold */
#define REF_WEIGHT 0.5 /* the documented weight, in units of the photo's cosine range */
#define MAX_QHITS 64

typedef struct qhit {
    uint64_t image_id, region_id;
    double box[4], score, refined;
    int has_refined;
} qhit;

/* A query; region queries ask for every box a photo may show (per_photo:
 * refine's places within a photo). */
static uint64_t send_query(umg_client *c, const char *text, int k, const char *gran, const char *refine)
{
    proto_writer w;
    uint64_t id;
    int all = !strcmp(gran, "region");
    assert_int_equal(umg_client_begin(c, &w, "query", 3 + (refine != NULL) + all, &id), 0);
    proto_pack_cstr(&w.pk, "text"), proto_pack_cstr(&w.pk, text);
    proto_pack_cstr(&w.pk, "granularity"), proto_pack_cstr(&w.pk, gran);
    proto_pack_cstr(&w.pk, "k"), msgpack_pack_uint32(&w.pk, (uint32_t)k);
    if (all) proto_pack_cstr(&w.pk, "per_photo"), msgpack_pack_uint32(&w.pk, 100000);
    if (refine) proto_pack_cstr(&w.pk, "refine"), proto_pack_cstr(&w.pk, refine);
    assert_int_equal(umg_client_end(c, &w), 0);
    return id;
}

static int read_hits(umg_client *c, uint64_t id, qhit *out)
{
    proto_response *r = ts_wait_ok(c, id);
    const msgpack_object *h = umg_result_get(r, "hits");
    assert_true(h && h->type == MSGPACK_OBJECT_ARRAY && h->via.array.size <= MAX_QHITS);
    int n = (int)h->via.array.size;
    for (int i = 0; i < n; i++) {
        const msgpack_object *m = &h->via.array.ptr[i];
        qhit *q = &out[i];
        memset(q, 0, sizeof *q);
        assert_true(proto_obj_uint(proto_map_get(m, "image_id"), &q->image_id));
        assert_true(proto_obj_uint(proto_map_get(m, "region_id"), &q->region_id));
        assert_true(proto_obj_box(proto_map_get(m, "box"), q->box));
        assert_true(proto_obj_float(proto_map_get(m, "score"), &q->score));
        q->has_refined = proto_obj_float(proto_map_get(m, "refined"), &q->refined);
    }
    proto_response_free(r);
    return n;
}

/* The request fails with this error code name. */
static void expect_error(umg_client *c, uint64_t id, const char *code_name)
{
    proto_response *r = NULL;
    assert_int_equal(umg_client_wait(c, id, TS_T_MS, &r), 0);
    assert_false(r->ok);
    assert_string_equal(r->code_name, code_name);
    proto_response_free(r);
}

static float half_to_float(uint16_t h)
{
    int e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexp(m + 1024, e - 25);
    return (float)((h & 0x8000) ? -v : v);
}

/* Whether a better box a of a photo suppresses b (engine/search.h): IoU
 * above 0.5, or one contains the other (intersection / smaller area > 0.8). */
static int box_suppressed_d(const double a[4], const double b[4])
{
    double iw = overlap(a[0], a[0] + a[2], b[0], b[0] + b[2]), ih = overlap(a[1], a[1] + a[3], b[1], b[1] + b[3]);
    double inter = iw * ih, uni = a[2] * a[3] + b[2] * b[3] - inter;
    return (uni > 0 && inter / uni > 0.5) || inter / fmin(a[2] * a[3], b[2] * b[3]) > 0.8;
}

/* Share of each grid cell under box [x,y,w,h] (original pixels) on the fit-pad grid. */
static void cell_cover(const enc_preproc_geom *g, int G, int P, const double box[4], double *cov)
{
    double x0 = fmin(fmax(box[0] * g->scale_x + g->off_x, 0), g->input_w) / P;
    double x1 = fmin(fmax((box[0] + box[2]) * g->scale_x + g->off_x, 0), g->input_w) / P;
    double y0 = fmin(fmax(box[1] * g->scale_y + g->off_y, 0), g->input_h) / P;
    double y1 = fmin(fmax((box[1] + box[3]) * g->scale_y + g->off_y, 0), g->input_h) / P;
    for (int i = 0; i < G; i++)
        for (int j = 0; j < G; j++) cov[i * G + j] = overlap(y0, y1, i, i + 1) * overlap(x0, x1, j, j + 1);
}

typedef struct ref_box {
    uint64_t id;
    double box[4], score, refined;
} ref_box;

static int by_ref_desc(const void *a, const void *b)
{
    const ref_box *x = a, *y = b;
    return x->refined < y->refined ? 1 : x->refined > y->refined ? -1 : (x->id > y->id) - (x->id < y->id);
}

/* The documented rule, written out from docs/regions.md: a photo's stored
 * boxes by refined score, those overlapping a better one at IoU > 0.5 left
 * out.  q normalized.  Returns how many are kept in out. */
static int refine_reference(db_t *db, const stored *st, const float *q, ref_box *out)
{
    int D = enc_model_dim(model), G = enc_model_grid(model), P = enc_model_config(model)->patch_size, GG = G * G;
    void *blob;
    size_t len;
    assert_int_equal(db_get_extra(db, st->image_id, "patch_tokens", &blob, &len), 0);
    assert_int_equal(len, (size_t)GG * D * 2);
    enc_preproc p = *enc_model_preproc(model);
    p.fit = ENC_FIT_PAD;
    enc_preproc_geom g;
    enc_preproc_geometry(&p, st->width, st->height, &g);
    double *heat = malloc((size_t)GG * 3 * sizeof(double)), *photo = heat + GG, *cov = heat + 2 * GG;
    float *vec = malloc((size_t)D * sizeof(float));
    assert_true(heat && vec);
    const double whole[4] = {0, 0, st->width, st->height};
    cell_cover(&g, G, P, whole, photo);
    double hmax = -INFINITY, hmin = INFINITY;
    const uint8_t *b = blob;
    for (int c = 0; c < GG; c++) {
        double dot = 0;
        for (int d = 0; d < D; d++) {
            size_t at = ((size_t)c * D + d) * 2;
            dot += (double)half_to_float((uint16_t)(b[at] | b[at + 1] << 8)) * q[d];
        }
        heat[c] = dot;
        if (photo[c] > 0) hmax = fmax(hmax, dot), hmin = fmin(hmin, dot);
    }
    double t = hmin + REF_FRAC * (hmax - hmin), mass = 0;
    for (int c = 0; c < GG; c++) {
        heat[c] = photo[c] * fmin(fmax((heat[c] - t) / (hmax - t), 0), 1);
        mass += heat[c];
    }
    double cmax = -INFINITY, cmin = INFINITY;
    ref_box all[MAX_REG];
    for (int i = 0; i < st->n; i++) {
        assert_int_equal(db_get_vector(db, DB_KIND_REGION, st->region_id[i], vec), 0);
        double dot = 0, inter = 0, area = 0;
        for (int d = 0; d < D; d++) dot += (double)vec[d] * q[d];
        cell_cover(&g, G, P, st->box[i], cov);
        for (int c = 0; c < GG; c++) inter += cov[c] * heat[c], area += cov[c];
        all[i].id = st->region_id[i];
        memcpy(all[i].box, st->box[i], sizeof all[i].box);
        all[i].score = dot;
        all[i].refined = inter / (area + mass - inter); /* soft IoU for now */
        cmax = fmax(cmax, dot), cmin = fmin(cmin, dot);
    }
    for (int i = 0; i < st->n; i++) all[i].refined = all[i].score + REF_WEIGHT * (cmax - cmin) * all[i].refined;
    qsort(all, (size_t)st->n, sizeof all[0], by_ref_desc);
    int kept = 0;
    for (int i = 0; i < st->n; i++) {
        int dup = 0;
        for (int j = 0; j < kept && !dup; j++) dup = box_suppressed_d(out[j].box, all[i].box);
        if (!dup) out[kept++] = all[i];
    }
    free(heat);
    free(vec);
    free(blob);
    return kept;
}

/* "refine": "pixel" through the server: each photo keeps its places in the
 * region answer, and they hold its boxes in the order of the documented
 * refined score, computed here from what the server stored (its boxes,
 * region vectors and patch tokens, all of them, not only the boxes the index
 * returned).  The refined places differ from the plain ones (at least one
 * per query on average), so a server that ignored "refine" fails both ways.
 * Bad uses are invalid_argument. */
static void test_refine_pixel(void **state)
{
    ts_server s;
    ts_make_tmp(&s, "umg-regsrv-");
    const char *files[] = {IMG("astronaut.png"), IMG("chelsea.png"), IMG("coffee.png"), IMG("camera.png")};
    enum { NF = 4, NT = 6, K = 24 };
    const char *texts[NT] = {"a cat", "an astronaut", "a cup of coffee", "a man with a camera", "a flag", "grass"};
    const char *extra[] = {"--regions", "12", NULL};
    ts_start_ok(&s, extra);
    stored st[NF];
    ingest_all(&s, files, NF, st);
    umg_client *c = ts_conn(&s);
    qhit plain[NT][MAX_QHITS], ref[NT][MAX_QHITS], none[MAX_QHITS];
    int np[NT], nr[NT];
    for (int t = 0; t < NT; t++) {
        np[t] = read_hits(c, send_query(c, texts[t], K, "region", NULL), plain[t]);
        nr[t] = read_hits(c, send_query(c, texts[t], K, "region", "pixel"), ref[t]);
    }
    /* "none" is the plain answer */
    assert_int_equal(read_hits(c, send_query(c, texts[0], K, "region", "none"), none), np[0]);
    for (int i = 0; i < np[0]; i++) {
        assert_int_equal(none[i].region_id, plain[0][i].region_id);
        assert_false(none[i].has_refined);
    }
    expect_error(c, send_query(c, "a cat", 3, "region", "pixels"), "invalid_argument");
    expect_error(c, send_query(c, "a cat", 3, "image", "pixel"), "invalid_argument");
    expect_error(c, send_query(c, "a cat", 3, "pixel", "pixel"), "invalid_argument");
    umg_client_close(c);

    /* the CLI flag sends it */
    char cmd[700];
    snprintf(cmd, sizeof cmd, "'%s' query --server '%s' --json --refine -k 2 a cat", tu_bin(), s.addr);
    FILE *pf = popen(cmd, "r");
    assert_non_null(pf);
    char out[8192];
    size_t got = fread(out, 1, sizeof out - 1, pf);
    out[got] = 0;
    assert_int_equal(pclose(pf), 0);
    assert_non_null(strstr(out, "\"refined\""));
    assert_non_null(strstr(out, "\"box\""));
    assert_int_equal(ts_stop(&s), 0);

    db_t *db = open_stored(s.data);
    enc_run *run;
    assert_int_equal(enc_run_create(model, 1, &run), 0);
    int D = enc_model_dim(model), changed = 0, checked = 0;
    float *q = malloc((size_t)D * sizeof(float));
    assert_non_null(q);
    for (int t = 0; t < NT; t++) {
        assert_true(np[t] > NF); /* several boxes of each photo: the places to fill */
        assert_int_equal(enc_encode_text(run, texts[t], strlen(texts[t]), q, NULL, NULL), 0);
        enc_l2_normalize(q, D);
        /* photos keep their places: the refined answer's photos are the plain
         * answer's, in order, a place dropped only where a photo ran out of boxes */
        int j = 0;
        for (int i = 0; i < nr[t]; i++) {
            while (j < np[t] && plain[t][j].image_id != ref[t][i].image_id) j++;
            assert_true(j < np[t]);
            j++;
        }
        for (int f = 0; f < NF; f++) {
            ref_box want[MAX_REG];
            int nw = refine_reference(db, &st[f], q, want), place = 0;
            for (int i = 0; i < nr[t]; i++) {
                const qhit *h = &ref[t][i];
                if (h->image_id != st[f].image_id) continue;
                assert_true(h->has_refined);
                assert_true(place < nw);
                const ref_box *w = &want[place];
                /* near ties may fall either way in float */
                int tie = (place > 0 && want[place - 1].refined - w->refined < 1e-4) ||
                          (place + 1 < nw && w->refined - want[place + 1].refined < 1e-4);
                if (!tie) {
                    if (h->region_id != w->id)
                        fail_msg("'%s', photo %d, place %d: region %llu (refined %.6f), want %llu (%.6f)", texts[t],
                                 f, place, (unsigned long long)h->region_id, h->refined,
                                 (unsigned long long)w->id, w->refined);
                    assert_true(fabs(h->refined - w->refined) < 1e-4);
                    assert_true(fabs(h->score - w->score) < 1e-4);
                    checked++;
                }
                place++;
            }
        }
        for (int i = 0; i < np[t]; i++) assert_false(plain[t][i].has_refined);
        for (int i = 0; i < nr[t] && i < np[t]; i++) changed += ref[t][i].region_id != plain[t][i].region_id;
    }
    assert_true(checked >= NT * NF);
    /* with clip-tiny's random weights every answer kept its first box, and 52 of 144 places changed */
    if (changed < NT) fail_msg("refinement changed only %d places in %d queries", changed, NT);
    enc_run_close(run);
    free(q);
    db_close(db);
    assert_int_equal(tu_rm_rf(s.dir), 0);
}

/* --decode (issue 17): large JPEGs (1600x1600, square so that the server's
 * ENC_FIT_PAD input is `umgdb embed`'s; 2003x1499 stored with EXIF
 * orientation 6) through a server with --decode exact and one with the
 * default (fast).  Exact: the image vector is `umgdb embed --decode exact`'s
 * (today's behaviour).  Fast: width and height are the full (oriented) size,
 * every box lies inside that frame and one spans it (boxes left in the
 * decoded 1/8 pixels would end near 200), and the image vector's cosine to
 * the exact decode's is >= 0.999 (and not 1: the fast path was taken). */
static void test_decode_modes(void **state)
{
    (void)state;
    enum { NF = 2 };
    ts_server s[2]; /* [exact, fast] */
    stored st[2][NF];
    char files[NF][300];
    const int ow[NF] = {1600, 1499}, oh[NF] = {1600, 2003};
    for (int m = 0; m < 2; m++) ts_make_tmp(&s[m], "umg-regsrv-dec-");
    {
        enc_image src = {0}, up = {0};
        assert_int_equal(enc_image_load(IMG("chelsea.png"), ENC_IMAGE_MAX_PIXELS_DEFAULT, &src), 0);
        snprintf(files[0], sizeof files[0], "%s/square.jpg", s[0].dir);
        assert_int_equal(enc_image_resize(&src, 1600, 1600, &up), 0);
        tu_write_jpeg(files[0], up.rgb, 1600, 1600, 90, 0);
        enc_image_free(&up);
        snprintf(files[1], sizeof files[1], "%s/rotated.jpg", s[0].dir);
        assert_int_equal(enc_image_resize(&src, 2003, 1499, &up), 0);
        tu_write_jpeg(files[1], up.rgb, 2003, 1499, 90, 6);
        enc_image_free(&up);
        enc_image_free(&src);
    }
    const char *exact[] = {"--regions", "8", "--decode", "exact", NULL};
    const char *fast[] = {"--regions", "8", NULL}; /* the default: fast */
    const char *fl[NF] = {files[0], files[1]};
    for (int m = 0; m < 2; m++) {
        ts_start_ok(&s[m], m ? fast : exact);
        ingest_all(&s[m], fl, NF, st[m]);
        assert_int_equal(ts_stop(&s[m]), 0);
    }
    int D = enc_model_dim(model);
    float *v = malloc((size_t)4 * D * sizeof(float));
    assert_non_null(v);
    float *emb = v, *got[2] = {v + D, v + 2 * D};
    run_embed(fl, 1, 0, "exact", emb, NULL);
    db_t *db[2] = {open_stored(s[0].data), open_stored(s[1].data)};
    for (int f = 0; f < NF; f++) {
        for (int m = 0; m < 2; m++) {
            assert_int_equal(st[m][f].width, ow[f]);
            assert_int_equal(st[m][f].height, oh[f]);
            assert_true(st[m][f].n > 0);
            int spans = 0;
            for (int i = 0; i < st[m][f].n; i++) {
                const double *b = st[m][f].box[i];
                if (!(b[0] >= 0 && b[1] >= 0 && b[2] > 0 && b[3] > 0 && b[0] + b[2] <= ow[f] + 0.01 &&
                      b[1] + b[3] <= oh[f] + 0.01))
                    fail_msg("file %d mode %d box %d [%g %g %g %g] outside %dx%d", f, m, i, b[0], b[1], b[2], b[3],
                             ow[f], oh[f]);
                spans |= b[0] < 1 && b[1] < 1 && b[0] + b[2] > ow[f] - 1 && b[1] + b[3] > oh[f] - 1;
            }
            if (!spans) fail_msg("file %d mode %d: no box spans the %dx%d frame", f, m, ow[f], oh[f]);
            assert_int_equal(db_get_vector(db[m], DB_KIND_IMAGE, st[m][f].image_id, got[m]), 0);
        }
        if (f == 0) {
            double ce = cosine(got[0], emb, D);
            if (ce < 0.99999) fail_msg("--decode exact: cosine %.7f to umgdb embed --decode exact", ce);
        }
        double cf = cosine(got[0], got[1], D);
        if (cf < 0.999 || cf > 0.9999999) fail_msg("file %d: image vector cosine fast vs exact %.7f", f, cf);
    }
    for (int m = 0; m < 2; m++) db_close(db[m]);
    free(v);
    for (int m = 0; m < 2; m++) assert_int_equal(tu_rm_rf(s[m].dir), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_crop_vectors, ts_teardown),
        cmocka_unit_test_teardown(test_dense_vectors, ts_teardown),
        cmocka_unit_test_teardown(test_exif_boxes, ts_teardown),
        cmocka_unit_test_teardown(test_decode_modes, ts_teardown),
        cmocka_unit_test_teardown(test_mode_recorded, ts_teardown),
        cmocka_unit_test_teardown(test_refine_pixel, ts_teardown),
    };
    return cmocka_run_group_tests(tests, setup, teardown_all);
}
