/* test_search_server.c - issue 17's search features end to end: a real
 * `umgdb serve` (tests/server_harness.h) on a real socket, driven by the
 * `umgdb query` / `umgdb get` commands as a user runs them (--json parsed):
 *   - a filter that few photos pass still gives k hits (`-k 1 --tag beach`);
 *   - pages (`--page N`, -k the page size) concatenated are one big query;
 *   - region hits on the synthetic world (tools/synthworld, the demo's
 *     collection and model): one box per photo by default, none of a photo
 *     suppressing another with --per-photo, the others reachable by get;
 *   - capture metadata: --after/--before/--camera/--near on photos with EXIF,
 *     and taken_at/camera/gps in the hits.
 * The rules themselves are checked against oracles in test_engine.c. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "server_harness.h"
#include "test_util.h"
#include "umg_error.h"

#define IMG(name) UMG_FIXTURES_DIR "/clip-tiny/images/" name

static const char *const files[] = {IMG("astronaut.png"), IMG("rocket.jpg"), IMG("chelsea.png"),
                                    IMG("coffee.png"), IMG("camera.png"), IMG("motorcycle_left.png")};
enum { N_FILES = sizeof files / sizeof files[0], COPIES = 5 };

/* `umgdb ARGS... --server ADDR --json` (args NULL-terminated), parsed; fails
 * unless it exits 0. */
static json_t *run_json(const ts_server *s, const char *const *args)
{
    const char *argv[32];
    int n = 0;
    while (args[n]) argv[n] = args[n], n++;
    argv[n++] = "--server", argv[n++] = s->addr, argv[n++] = "--json", argv[n] = NULL;
    tu_result r = tu_run(argv);
    TU_EXPECT_EXIT(r, 0);
    json_t *j = tu_json_parse(r.out);
    tu_result_free(&r);
    return j;
}

static json_t *hits_of(json_t *answer)
{
    json_t *h = json_object_get(answer, "hits");
    assert_true(json_is_array(h));
    return h;
}

static const char *hit_path(json_t *hit) { return json_string_value(json_object_get(hit, "path")); }
static json_int_t hit_int(json_t *hit, const char *key) { return json_integer_value(json_object_get(hit, key)); }

/* COPIES copies of each fixture photo under /p/<copy>/<name>: 30 photos,
 * the copies of one photo scoring alike. */
static void ingest_copies(ts_server *s)
{
    umg_client *c = ts_conn(s);
    uint64_t ids[N_FILES * COPIES];
    for (int k = 0; k < COPIES; k++)
        for (int i = 0; i < N_FILES; i++) {
            char name[64];
            snprintf(name, sizeof name, "/p/%d/%s", k, strrchr(files[i], '/') + 1);
            ids[k * N_FILES + i] = ts_send_ingest(c, files[i], name, NULL);
        }
    for (int i = 0; i < N_FILES * COPIES; i++) proto_response_free(ts_wait_ok(c, ids[i]));
    umg_client_close(c);
}

/* Issue 17's case: `query -k 3 --tag beach dog` answered "no hits" while
 * -k 100 found the beach photo, because the index was asked for k x 8
 * candidates only.  Here the tagged photo is a copy of the photo that ranks
 * last for the text: 30 photos score above or level with it, so k 1 finds it
 * only if the search looks past the first 8 candidates. */
static void test_rare_tag(void **state)
{
    (void)state;
    ts_server s;
    ts_make_tmp(&s, "umg-search-");
    ts_start_ok(&s, NULL);
    ingest_copies(&s);
    json_t *all = run_json(&s, (const char *[]){"query", "-k", "30", "a", "dog", NULL});
    assert_int_equal(json_array_size(hits_of(all)), N_FILES * COPIES);
    const char *worst = hit_path(json_array_get(hits_of(all), N_FILES * COPIES - 1));
    char file[512];
    snprintf(file, sizeof file, "%s%s", IMG(""), strrchr(worst, '/') + 1);
    umg_client *c = ts_conn(&s);
    proto_response_free(ts_wait_ok(c, ts_send_ingest(c, file, "/beach/one.png", "beach")));
    umg_client_close(c);
    json_decref(all);

    for (const char *k = "1"; k; k = strcmp(k, "1") ? NULL : "3") {
        json_t *j = run_json(&s, (const char *[]){"query", "-k", k, "--tag", "beach", "a", "dog", NULL});
        json_t *h = hits_of(j);
        assert_int_equal(json_array_size(h), 1);
        assert_string_equal(hit_path(json_array_get(h, 0)), "/beach/one.png");
        json_decref(j);
    }
    /* and at region granularity: its best box */
    json_t *j = run_json(&s, (const char *[]){"query", "--regions", "-k", "3", "--tag", "beach", "a", "dog", NULL});
    assert_int_equal(json_array_size(hits_of(j)), 1);
    assert_string_equal(hit_path(json_array_get(hits_of(j), 0)), "/beach/one.png");
    json_decref(j);
    assert_int_equal(ts_stop(&s), 0);
    tu_rm_rf(s.dir);
}

/* `--page N` with -k 4: pages 1..8 concatenated are `-k 30` (image and
 * region granularity; copies score alike, so this also checks that ties keep
 * one order whatever the page), ranks numbered on across pages in the table,
 * and a page past the end is empty. */
static void test_pages(void **state)
{
    (void)state;
    ts_server s;
    ts_make_tmp(&s, "umg-search-");
    ts_start_ok(&s, NULL);
    ingest_copies(&s);
    for (int region = 0; region <= 1; region++) {
        /* image granularity: the option slot holds a harmless repeat of -k */
        const char *gran = region ? "--regions" : "-k30";
        json_t *one = run_json(&s, (const char *[]){"query", gran, "-k", "30", "a", "cat", NULL});
        json_t *all = hits_of(one);
        assert_int_equal(json_array_size(all), N_FILES * COPIES);
        size_t at = 0;
        for (int page = 1; page <= 8; page++) {
            char p[8];
            snprintf(p, sizeof p, "%d", page);
            json_t *j = run_json(&s, (const char *[]){"query", gran, "-k", "4", "--page", p, "a", "cat", NULL});
            json_t *h = hits_of(j);
            assert_int_equal(json_array_size(h), page < 8 ? 4 : 2);
            for (size_t i = 0; i < json_array_size(h); i++, at++) {
                json_t *x = json_array_get(h, i), *y = json_array_get(all, at);
                assert_int_equal(hit_int(x, "image_id"), hit_int(y, "image_id"));
                if (region) assert_int_equal(hit_int(x, "region_id"), hit_int(y, "region_id"));
            }
            json_decref(j);
        }
        assert_int_equal(at, N_FILES * COPIES);
        json_decref(one);
    }
    json_t *j = run_json(&s, (const char *[]){"query", "-k", "10", "--page", "4", "a", "cat", NULL});
    assert_int_equal(json_array_size(hits_of(j)), 0);
    json_decref(j);
    tu_result r = tu_run((const char *[]){"query", "--server", s.addr, "-k", "4", "--page", "3", "a", "cat", NULL});
    TU_EXPECT_EXIT(r, 0);
    assert_non_null(strstr(r.out, "\n   9 ")); /* page 3 of 4 starts at rank 9 */
    assert_null(strstr(r.out, "\n   1 "));
    tu_result_free(&r);
    r = tu_run((const char *[]){"query", "--server", s.addr, "-k", "1000", "--page", "12", "a", "cat", NULL});
    TU_EXPECT_EXIT(r, 2); /* would skip 11,000 > 10,000 */
    tu_result_free(&r);
    assert_int_equal(ts_stop(&s), 0);
    tu_rm_rf(s.dir);
}

/* The intersection of two boxes [x, y, w, h] over the smaller one's area,
 * and their IoU. */
static void overlap(json_t *a, json_t *b, double *contain, double *iou)
{
    double p[4], q[4];
    for (int i = 0; i < 4; i++) {
        p[i] = json_number_value(json_array_get(a, (size_t)i));
        q[i] = json_number_value(json_array_get(b, (size_t)i));
    }
    double iw = fmin(p[0] + p[2], q[0] + q[2]) - fmax(p[0], q[0]);
    double ih = fmin(p[1] + p[3], q[1] + q[3]) - fmax(p[1], q[1]);
    double in = iw > 0 && ih > 0 ? iw * ih : 0;
    *contain = in / fmin(p[2] * p[3], q[2] * q[3]);
    *iou = in / (p[2] * p[3] + q[2] * q[3] - in);
}

/* The demo's case on the demo's world (tools/synthworld seed 4242, 40
 * photos, tests/fixtures/synth-umg): the top 5 region hits for "large blue
 * ring" were five boxes of one photo (the ring, then offset, partial and
 * inner boxes of it); now they are 5 different photos, with and without
 * --refine.  With --per-photo all, a photo shows several boxes but never
 * one that mostly contains (> 0.8 of the smaller) or overlaps (IoU > 0.5) a
 * better one; every box of the top photo is in its `get` record. */
static void test_region_boxes(void **state)
{
    (void)state;
    ts_server s;
    ts_make_tmp(&s, "umg-search-");
    char world[400], cmd[1200];
    snprintf(world, sizeof world, "%s/world", s.dir);
    snprintf(cmd, sizeof cmd,
             "cd '%s' && PYTHONDONTWRITEBYTECODE=1 /usr/bin/python3 -m tools.synthworld.generate --seed 4242 "
             "--count 40 '%s' >/dev/null",
             UMG_SOURCE_DIR, world);
    assert_int_equal(system(cmd), 0);
    const char *extra[] = {"--model", UMG_FIXTURES_DIR "/synth-umg", NULL};
    ts_start_ok(&s, extra);
    snprintf(cmd, sizeof cmd, "'%s' ingest --server '%s' '%s'/*.jpg '%s'/*.png >/dev/null", tu_bin(), s.addr, world,
             world);
    assert_int_equal(system(cmd), 0);

    for (int refine = 0; refine <= 1; refine++) {
        json_t *j = run_json(&s, (const char *[]){"query", refine ? "--refine" : "--regions", "-k", "5", "large",
                                                  "blue", "ring", NULL});
        json_t *h = hits_of(j);
        assert_int_equal(json_array_size(h), 5);
        for (size_t a = 0; a < 5; a++)
            for (size_t b = 0; b < a; b++)
                assert_int_not_equal(hit_int(json_array_get(h, a), "image_id"), hit_int(json_array_get(h, b), "image_id"));
        json_decref(j);
    }

    json_t *j = run_json(&s, (const char *[]){"query", "--regions", "--per-photo", "100000", "-k", "60", "large", "blue",
                                              "ring", NULL});
    json_t *h = hits_of(j);
    assert_int_equal(json_array_size(h), 60);
    int same_photo_pairs = 0;
    for (size_t a = 0; a < 60; a++)
        for (size_t b = 0; b < a; b++) {
            json_t *x = json_array_get(h, a), *y = json_array_get(h, b);
            if (hit_int(x, "image_id") != hit_int(y, "image_id")) continue;
            same_photo_pairs++;
            double contain, iou;
            overlap(json_object_get(x, "box"), json_object_get(y, "box"), &contain, &iou);
            assert_true(contain <= 0.8 + 1e-6);
            assert_true(iou <= 0.5 + 1e-6);
        }
    assert_true(same_photo_pairs > 0); /* more than one box of a photo: the rule had work */
    /* the top photo's other boxes: all in its record */
    json_t *top = json_array_get(h, 0);
    char id[32];
    snprintf(id, sizeof id, "%lld", (long long)hit_int(top, "image_id"));
    json_t *g = run_json(&s, (const char *[]){"get", id, NULL});
    json_t *regs = json_object_get(g, "regions");
    int found = 0, shown = 0;
    for (size_t a = 0; a < 60; a++) {
        json_t *x = json_array_get(h, a);
        if (hit_int(x, "image_id") != hit_int(top, "image_id")) continue;
        shown++;
        for (size_t r = 0; r < json_array_size(regs); r++)
            found += hit_int(json_array_get(regs, r), "region_id") == hit_int(x, "region_id");
    }
    assert_int_equal(found, shown);
    assert_true(json_array_size(regs) > (size_t)shown);
    json_decref(g);
    json_decref(j);
    assert_int_equal(ts_stop(&s), 0);
    tu_rm_rf(s.dir);
}

/* The paths of a query's hits, sorted, joined by spaces (order by score is
 * not the point here). */
static void hit_names(json_t *answer, char *out, size_t cap)
{
    json_t *h = hits_of(answer);
    const char *names[16];
    size_t n = json_array_size(h);
    assert_true(n <= 16);
    for (size_t i = 0; i < n; i++) names[i] = strrchr(hit_path(json_array_get(h, i)), '/') + 1;
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            const char *t = names[j];
            names[j] = names[j - 1], names[j - 1] = t;
        }
    out[0] = 0;
    for (size_t i = 0; i < n; i++) snprintf(out + strlen(out), cap - strlen(out), "%s%s", i ? " " : "", names[i]);
}

/* Capture metadata end to end: photos whose EXIF h17dec's fixtures hold
 * (meta_full.*: 2019-07-14T12:00:00+02:00, EXIF "FUJIFILM" + "X-T3" = "Fujifilm X-T3", Sydney, in four
 * containers; meta_partial.jpg: 2021-01-02T03:04:05 without offset, Canon
 * EOS 5D Mark IV, New York; fmt_src.png: nothing) ingested by path, then
 * `umgdb query` with --after/--before/--camera/--near: each answers the
 * photos the rules pass, the hits carry taken_at, camera and gps as far as
 * known; bad dates and positions are refused. */
static void test_capture(void **state)
{
    (void)state;
    ts_server s;
    ts_make_tmp(&s, "umg-search-");
    ts_start_ok(&s, NULL);
    char cmd[2000];
    snprintf(cmd, sizeof cmd,
             "cd '%s/images' && '%s' ingest --server '%s' meta_full.jpg meta_full.heic meta_full.tif "
             "meta_full.webp meta_partial.jpg fmt_src.png >/dev/null",
             UMG_FIXTURES_DIR, tu_bin(), s.addr);
    assert_int_equal(system(cmd), 0);
    struct { const char *args[6]; const char *want; } cases[] = {
        {{NULL}, "fmt_src.png meta_full.heic meta_full.jpg meta_full.tif meta_full.webp meta_partial.jpg"},
        {{"--after", "2020-01-01"}, "meta_partial.jpg"},
        {{"--before", "2020-01-01"}, "meta_full.heic meta_full.jpg meta_full.tif meta_full.webp"},
        /* 12:00 at +02:00 is 10:00 UTC: an instant bound of 10:30Z is after it, the clock time 10:30 before */
        {{"--before", "2019-07-14T10:30Z"}, "meta_full.heic meta_full.jpg meta_full.tif meta_full.webp"},
        {{"--before", "2019-07-14T10:30"}, ""},
        {{"--after", "2019-07-14T12:00", "--before", "2019-07-14T12:00:01"},
         "meta_full.heic meta_full.jpg meta_full.tif meta_full.webp"},
        {{"--after", "2021-01-02T03:04:05+01:00"}, "meta_partial.jpg"}, /* no offset: its clock read as UTC */
        {{"--after", "2021-01-02T03:04:06"}, ""},
        {{"--camera", "canon eos"}, "meta_partial.jpg"},
        {{"--camera", "x-t3", "--after", "2019-01-01"}, "meta_full.heic meta_full.jpg meta_full.tif meta_full.webp"},
        {{"--near", "-33.8688,151.2093,5"}, "meta_full.heic meta_full.jpg meta_full.tif meta_full.webp"},
        {{"--near", "-33.8688,151.2093,1"}, ""}, /* the fixtures' point is ~1.4 km from there */
        {{"--near", "40.7128,-74.0060,10"}, "meta_partial.jpg"}, /* New York: ~4 km */
        {{"--near", "48.8566,2.3522,10000"}, "meta_partial.jpg"}, /* Paris: New York 5,800 km, Sydney 17,000 */
        {{"--near", "48.8566,2.3522,20000"},
         "meta_full.heic meta_full.jpg meta_full.tif meta_full.webp meta_partial.jpg"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        const char *argv[16] = {"query", "-k", "10"};
        int n = 3;
        for (int i = 0; cases[c].args[i]; i++) argv[n++] = cases[c].args[i];
        argv[n++] = "a", argv[n++] = "photo", argv[n] = NULL;
        json_t *j = run_json(&s, argv);
        char got[512];
        hit_names(j, got, sizeof got);
        if (strcmp(got, cases[c].want)) fail_msg("case %zu: got '%s', want '%s'", c, got, cases[c].want);
        json_t *h = hits_of(j);
        for (size_t i = 0; i < json_array_size(h); i++) {
            json_t *x = json_array_get(h, i);
            const char *name = strrchr(hit_path(x), '/') + 1;
            const char *taken = json_string_value(json_object_get(x, "taken_at"));
            const char *camera = json_string_value(json_object_get(x, "camera"));
            json_t *gps = json_object_get(x, "gps");
            if (!strncmp(name, "meta_full", 9)) {
                assert_string_equal(taken, "2019-07-14T12:00:00+02:00");
                assert_string_equal(camera, "Fujifilm X-T3");
                assert_float_equal(json_number_value(json_array_get(gps, 0)), -33.8568, 1e-6);
                assert_float_equal(json_number_value(json_array_get(gps, 1)), 151.2153, 1e-6);
            } else if (!strcmp(name, "meta_partial.jpg")) {
                assert_string_equal(taken, "2021-01-02T03:04:05");
                assert_string_equal(camera, "Canon EOS 5D Mark IV");
                assert_float_equal(json_number_value(json_array_get(gps, 0)), 40.6892, 1e-6);
                assert_float_equal(json_number_value(json_array_get(gps, 1)), -74.0445, 1e-6);
            } else {
                assert_null(taken);
                assert_null(camera);
                assert_null(gps);
            }
        }
        json_decref(j);
    }
    /* the table shows when each photo was taken */
    tu_result r = tu_run((const char *[]){"query", "--server", s.addr, "--camera", "canon", "a", "photo", NULL});
    TU_EXPECT_EXIT(r, 0);
    assert_non_null(strstr(r.out, "taken"));
    assert_non_null(strstr(r.out, "2021-01-02T03:04:05"));
    tu_result_free(&r);
    /* refused: the server names the filter; the CLI checks what it can */
    r = tu_run((const char *[]){"query", "--server", s.addr, "--after", "2019-02-29", "a", "photo", NULL});
    TU_EXPECT_EXIT(r, 1);
    assert_non_null(strstr(r.err, "invalid_argument"));
    assert_non_null(strstr(r.err, "filters.taken_after"));
    tu_result_free(&r);
    r = tu_run((const char *[]){"query", "--server", s.addr, "--near", "91,0,5", "a", "photo", NULL});
    TU_EXPECT_EXIT(r, 2);
    tu_result_free(&r);
    umg_client *c = ts_conn(&s);
    proto_writer w;
    uint64_t id = ts_begin(c, &w, "query", 2);
    ts_kv_str(&w, "text", "a photo");
    proto_pack_cstr(&w.pk, "filters"), msgpack_pack_map(&w.pk, 1);
    proto_pack_cstr(&w.pk, "near"), msgpack_pack_map(&w.pk, 2);
    proto_pack_cstr(&w.pk, "lat"), msgpack_pack_double(&w.pk, 10);
    proto_pack_cstr(&w.pk, "lon"), msgpack_pack_double(&w.pk, 10);
    ts_end(c, &w);
    assert_int_equal(ts_wait_err(c, id), UMG_EINVAL); /* km missing */
    umg_client_close(c);
    assert_int_equal(ts_stop(&s), 0);
    tu_rm_rf(s.dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_rare_tag, ts_teardown),
        cmocka_unit_test_teardown(test_pages, ts_teardown),
        cmocka_unit_test_teardown(test_region_boxes, ts_teardown),
        cmocka_unit_test_teardown(test_capture, ts_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
