/* test_sync.c - folders that change: `umgdb ingest --sync` (and the list and
 * move ops it uses) run as real processes against the real server
 * (tests/server_harness.h, tests/fixtures/clip-tiny, a Unix socket): add,
 * modify, rename, move to a subfolder, rename over another file, delete,
 * duplicate content, files outside the folder, a file that no longer
 * decodes, and nothing changed (nothing sent besides the listing).  The steps
 * build on each other in one folder. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include <jansson.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "server_harness.h"
#include "test_util.h"
#include "umg_error.h"

#define TINY_IMG UMG_FIXTURES_DIR "/clip-tiny/images/"
#define OTHER_IMG UMG_FIXTURES_DIR "/images/exif_1.jpg"

static ts_server srv;
static char root[PATH_MAX], dir[PATH_MAX + 16];

static void pathf(char *out, const char *name) { snprintf(out, PATH_MAX + 64, "%s/%s", dir, name); }

static void copy_to(const char *from, const char *name)
{
    char to[PATH_MAX + 64];
    pathf(to, name);
    size_t len;
    char *b = tu_read_file(from, &len);
    tu_write_file(to, b, len);
    free(b);
}

static void rename_in(const char *from, const char *to)
{
    char a[PATH_MAX + 64], b[PATH_MAX + 64];
    pathf(a, from);
    pathf(b, to);
    assert_int_equal(rename(a, b), 0);
}

static void remove_in(const char *name)
{
    char a[PATH_MAX + 64];
    pathf(a, name);
    assert_int_equal(unlink(a), 0);
}

/* The stored image id at dir/name, 0 when none. */
/* The answer to op with one argument, key = path (when not NULL) or
 * image_id = id, on a connection of its own (the caller frees it). */
static proto_response *call_one(const char *op, const char *path, uint64_t id)
{
    umg_client *c = ts_conn(&srv);
    proto_writer w;
    uint64_t rid = ts_begin(c, &w, op, 1);
    if (path)
        ts_kv_str(&w, "path", path);
    else
        ts_kv_uint(&w, "image_id", id);
    ts_end(c, &w);
    proto_response *r = ts_wait_resp(c, rid);
    umg_client_close(c);
    return r;
}

static uint64_t id_at(const char *name)
{
    char p[PATH_MAX + 64];
    if (name[0] == '/')
        snprintf(p, sizeof p, "%s", name);
    else
        pathf(p, name);
    proto_response *r = call_one("get", p, 0);
    uint64_t id = 0;
    if (r->ok)
        assert_true(umg_result_uint(r, "image_id", &id));
    else
        assert_int_equal(r->code, UMG_ENOENT);
    proto_response_free(r);
    return id;
}

/* The answer code of the op thumb for image id: 0 when it has a thumbnail. */
static int thumb_code(uint64_t id)
{
    proto_response *r = call_one("thumb", NULL, id);
    int code = r->ok ? 0 : r->code;
    proto_response_free(r);
    return code;
}

static json_int_t n_images(void)
{
    umg_client *c = ts_conn(&srv);
    proto_response *r;
    assert_int_equal(umg_client_call0(c, "stats", TS_T_MS, &r), 0);
    uint64_t n = 0;
    assert_true(umg_result_uint(r, "images", &n));
    proto_response_free(r);
    umg_client_close(c);
    return (json_int_t)n;
}

typedef struct counts {
    json_int_t added, changed, moved, removed, unchanged, hashed, list_requests, sent, failed;
} counts;

/* `umgdb ingest --sync --json DIR`, its exit code want; the sync counts. */
static counts sync_run(int want)
{
    const char *env[] = {"UMGDB_SERVER", "UMGDB_AUTH_TOKEN", NULL};
    const char *args[] = {"ingest", "--sync", "--json", "--server", srv.addr, dir, NULL};
    tu_result r = tu_run_env(env, args);
    TU_EXPECT_EXIT(r, want);
    json_t *j = tu_json_parse(r.out), *s = json_object_get(j, "sync");
    assert_non_null(s);
    counts c = {
        json_integer_value(json_object_get(s, "added")),   json_integer_value(json_object_get(s, "changed")),
        json_integer_value(json_object_get(s, "moved")),   json_integer_value(json_object_get(s, "removed")),
        json_integer_value(json_object_get(s, "unchanged")), json_integer_value(json_object_get(s, "hashed")),
        json_integer_value(json_object_get(s, "list_requests")), json_integer_value(json_object_get(s, "photos_sent")),
        json_integer_value(json_object_get(j, "failed")),
    };
    json_decref(j);
    tu_result_free(&r);
    return c;
}

#define EXPECT_COUNTS(c, a, ch, mv, rm, un)                                                                   \
    do {                                                                                                      \
        if ((c).added != (a) || (c).changed != (ch) || (c).moved != (mv) || (c).removed != (rm) ||            \
            (c).unchanged != (un))                                                                            \
            fail_msg("added %lld changed %lld moved %lld removed %lld unchanged %lld; want %d %d %d %d %d",    \
                     (long long)(c).added, (long long)(c).changed, (long long)(c).moved,                      \
                     (long long)(c).removed, (long long)(c).unchanged, a, ch, mv, rm, un);                     \
    } while (0)

static int setup(void **state)
{
    (void)state;
    ts_make_tmp(&srv, "umg-sync-");
    ts_start_ok(&srv, NULL);
    assert_non_null(realpath(srv.dir, root));
    snprintf(dir, sizeof dir, "%s/photos", root);
    assert_int_equal(mkdir(dir, 0755), 0);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    assert_int_equal(ts_stop(&srv), 0);
    tu_rm_rf(srv.dir);
    return 0;
}

static void test_sync_steps(void **state)
{
    (void)state;
    static const char *const names[] = {"astronaut.png", "camera.png", "chelsea.png", "coffee.png",
                                        "motorcycle_left.png", "rocket.jpg"};
    char from[PATH_MAX];
    for (int i = 0; i < 6; i++) {
        snprintf(from, sizeof from, "%s%s", TINY_IMG, names[i]);
        copy_to(from, names[i]);
    }
    /* outside the folder, beside it with a name it prefixes: never touched */
    char sib[PATH_MAX + 64], sib_photo[PATH_MAX + 96];
    snprintf(sib, sizeof sib, "%s/photos2", root);
    assert_int_equal(mkdir(sib, 0755), 0);
    snprintf(sib_photo, sizeof sib_photo, "%s/gone.png", sib);
    snprintf(from, sizeof from, "%s%s", TINY_IMG, "coffee.png");
    size_t len;
    char *b = tu_read_file(from, &len);
    tu_write_file(sib_photo, b, len);
    free(b);
    const char *env[] = {"UMGDB_SERVER", "UMGDB_AUTH_TOKEN", NULL};
    const char *plain[] = {"ingest", "--server", srv.addr, sib, NULL};
    tu_result pr = tu_run_env(env, plain);
    TU_EXPECT_EXIT(pr, 0);
    tu_result_free(&pr);
    assert_int_equal(unlink(sib_photo), 0);
    uint64_t sib_id = id_at(sib_photo);
    assert_true(sib_id > 0);

    /* first pass: everything added */
    counts c = sync_run(0);
    EXPECT_COUNTS(c, 6, 0, 0, 0, 0);
    assert_int_equal(n_images(), 7);
    uint64_t id[6];
    for (int i = 0; i < 6; i++)
        assert_true((id[i] = id_at(names[i])) > 0);

    /* nothing changed: no file read, nothing sent besides the one listing */
    c = sync_run(0);
    EXPECT_COUNTS(c, 0, 0, 0, 0, 6);
    assert_int_equal(c.hashed, 0);
    assert_int_equal(c.sent, 0);
    assert_int_equal(c.list_requests, 1);

    /* modify: other content at astronaut.png: changed (a new image replaces the old) */
    copy_to(OTHER_IMG, "astronaut.png");
    c = sync_run(0);
    EXPECT_COUNTS(c, 0, 1, 0, 0, 5);
    assert_int_equal(c.sent, 1);
    uint64_t astro = id_at("astronaut.png");
    assert_true(astro > 0 && astro != id[0]);
    assert_int_equal(n_images(), 7);

    /* rename: re-pathed, same id, nothing sent */
    rename_in("camera.png", "camera-renamed.png");
    c = sync_run(0);
    EXPECT_COUNTS(c, 0, 0, 1, 0, 5);
    assert_int_equal(c.sent, 0);
    assert_int_equal(id_at("camera-renamed.png"), id[1]);
    assert_int_equal(id_at("camera.png"), 0);

    /* move into a subfolder */
    char sub[PATH_MAX + 64];
    pathf(sub, "sub");
    assert_int_equal(mkdir(sub, 0755), 0);
    rename_in("chelsea.png", "sub/chelsea.png");
    c = sync_run(0);
    EXPECT_COUNTS(c, 0, 0, 1, 0, 5);
    assert_int_equal(id_at("sub/chelsea.png"), id[2]);
    assert_int_equal(id_at("chelsea.png"), 0);
    assert_int_equal(n_images(), 7);
    assert_int_equal(thumb_code(id[2]), 0); /* a move keeps the photo's thumbnail */

    /* delete: the photo goes with its thumbnail */
    uint64_t coffee = id_at("coffee.png");
    assert_int_equal(thumb_code(coffee), 0);
    remove_in("coffee.png");
    c = sync_run(0);
    EXPECT_COUNTS(c, 0, 0, 0, 1, 5);
    assert_int_equal(id_at("coffee.png"), 0);
    assert_int_equal(thumb_code(coffee), UMG_ENOENT);
    assert_int_equal(n_images(), 6);
    assert_int_equal(id_at(sib_photo), sib_id);   /* photos2/ is another folder */

    /* duplicate content: a second image, the first stays */
    char rocket[PATH_MAX + 64];
    pathf(rocket, "rocket.jpg");
    copy_to(rocket, "rocket-copy.jpg");
    c = sync_run(0);
    EXPECT_COUNTS(c, 1, 0, 0, 0, 5);
    uint64_t copy = id_at("rocket-copy.jpg");
    assert_true(copy > 0 && copy != id[5]);
    assert_int_equal(id_at("rocket.jpg"), id[5]);
    /* one of the two deleted: that one removed, the other kept */
    remove_in("rocket-copy.jpg");
    c = sync_run(0);
    EXPECT_COUNTS(c, 0, 0, 0, 1, 5);
    assert_int_equal(id_at("rocket-copy.jpg"), 0);
    assert_int_equal(id_at("rocket.jpg"), id[5]);

    /* rename over another stored file: re-pathed, the overwritten image replaced */
    rename_in("motorcycle_left.png", "camera-renamed.png");
    c = sync_run(0);
    EXPECT_COUNTS(c, 0, 0, 1, 0, 3);
    assert_int_equal(id_at("camera-renamed.png"), id[4]);
    assert_int_equal(id_at("motorcycle_left.png"), 0);
    assert_int_equal(n_images(), 5);   /* camera's image is gone */

    /* a file that is there but no longer decodes: reported failed, not removed */
    char broken[PATH_MAX + 64];
    pathf(broken, "rocket.jpg");
    tu_write_file(broken, "\xff\xd8\xff not a jpeg any more", 24);
    c = sync_run(1);
    EXPECT_COUNTS(c, 0, 0, 0, 0, 3);
    assert_int_equal(c.failed, 1);
    assert_int_equal(id_at("rocket.jpg"), id[5]);
    assert_int_equal(n_images(), 5);

    /* --sync wants folders */
    const char *file_arg[] = {"ingest", "--sync", "--server", srv.addr, broken, NULL};
    tu_result r = tu_run_env(env, file_arg);
    TU_EXPECT_EXIT(r, 2);
    assert_non_null(strstr(r.err, "not a directory"));
    tu_result_free(&r);
}

/* The ops themselves: list pages by limit and after, bad arguments refused,
 * move of an unknown id not_found. */
static void test_list_move_ops(void **state)
{
    (void)state;
    umg_client *c = ts_conn(&srv);
    char prefix[PATH_MAX + 32];
    snprintf(prefix, sizeof prefix, "%s/", dir);
    umg_listed *all;
    size_t n, pages;
    assert_int_equal(umg_client_list_all(c, prefix, TS_T_MS, &all, &n, &pages), 0);
    assert_true(n >= 3);
    assert_int_equal(pages, 1);
    for (size_t i = 0; i < n; i++)
        assert_true(!strncmp(all[i].path, prefix, strlen(prefix)));
    /* two per page */
    size_t got = 0;
    uint64_t after = 0;
    int rounds = 0;
    do {
        proto_writer w;
        uint64_t rid = ts_begin(c, &w, "list", 3);
        ts_kv_str(&w, "path_prefix", prefix);
        ts_kv_uint(&w, "limit", 2);
        ts_kv_uint(&w, "after", after);
        ts_end(c, &w);
        proto_response *r = ts_wait_ok(c, rid);
        const msgpack_object *imgs = umg_result_get(r, "images");
        assert_non_null(imgs);
        assert_true(imgs->via.array.size <= 2);
        for (uint32_t i = 0; i < imgs->via.array.size; i++, got++) {
            uint64_t iid;
            assert_true(proto_obj_uint(proto_map_get(&imgs->via.array.ptr[i], "image_id"), &iid));
            assert_int_equal(iid, all[got].image_id);
        }
        assert_true(umg_result_uint(r, "next", &after));
        proto_response_free(r);
    } while (after && ++rounds < 50);
    assert_int_equal(got, n);
    umg_listed_free(all, n);

    proto_writer w;
    uint64_t rid = ts_begin(c, &w, "list", 2);
    ts_kv_str(&w, "path_prefix", prefix);
    ts_kv_uint(&w, "limit", 0);
    ts_end(c, &w);
    assert_int_equal(ts_wait_err(c, rid), UMG_EINVAL);
    rid = ts_begin(c, &w, "list", 0);
    ts_end(c, &w);
    assert_int_equal(ts_wait_err(c, rid), UMG_EINVAL);
    assert_int_equal(umg_client_move(c, 987654321, "/x/y.png", 0, TS_T_MS, NULL), UMG_ENOENT);
    rid = ts_begin(c, &w, "move", 1);
    ts_kv_uint(&w, "image_id", 1);
    ts_end(c, &w);
    assert_int_equal(ts_wait_err(c, rid), UMG_EINVAL);
    umg_client_close(c);
}

/* ---- --watch ---- */

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

/* Poll until id_at(name) satisfies the wanted state (want_id: that id; 0:
 * gone; UINT64_MAX: any image other than not_id), within deadline_s. */
static uint64_t wait_for(const char *name, uint64_t want_id, uint64_t not_id, double deadline_s, const char *what)
{
    double end = now_s() + deadline_s;
    uint64_t id;
    for (;;) {
        id = id_at(name);
        bool ok = want_id == UINT64_MAX ? (id > 0 && id != not_id) : id == want_id;
        if (ok)
            return id;
        if (now_s() > end)
            fail_msg("%s: %s is image %llu after %.0f s", what, name, (unsigned long long)id, deadline_s);
        usleep(100000);
    }
}

#define ANY UINT64_MAX

/* While `ingest --watch` runs: add, modify, rename, delete files and a
 * subfolder, the server killed and restarted meanwhile; the server converges
 * each time; Ctrl-C ends it with the totals and exit 130. */
static void test_watch(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "%s/watched", root);
    assert_int_equal(mkdir(dir, 0755), 0);
    char from[PATH_MAX];
    snprintf(from, sizeof from, "%s%s", TINY_IMG, "astronaut.png");
    copy_to(from, "a.png");
    snprintf(from, sizeof from, "%s%s", TINY_IMG, "camera.png");
    copy_to(from, "b.png");

    char outp[PATH_MAX + 32], errp[PATH_MAX + 32];
    snprintf(outp, sizeof outp, "%s/watch.out", root);
    snprintf(errp, sizeof errp, "%s/watch.err", root);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fo = open(outp, O_WRONLY | O_CREAT | O_TRUNC, 0600), fe = open(errp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fo, 1);
        dup2(fe, 2);
        unsetenv("UMGDB_SERVER");
        unsetenv("UMGDB_AUTH_TOKEN");
        execl(tu_bin(), tu_bin(), "ingest", "--watch", "--server", srv.addr, dir, (char *)NULL);
        _exit(127);
    }
    /* the first pass */
    uint64_t a = wait_for("a.png", ANY, 0, 30, "initial pass");
    uint64_t b = wait_for("b.png", ANY, 0, 30, "initial pass");
    /* add */
    snprintf(from, sizeof from, "%s%s", TINY_IMG, "chelsea.png");
    copy_to(from, "c.png");
    uint64_t c = wait_for("c.png", ANY, 0, 30, "added");
    /* modify */
    copy_to(OTHER_IMG, "a.png");
    a = wait_for("a.png", ANY, a, 30, "modified");
    /* rename */
    rename_in("b.png", "b2.png");
    wait_for("b2.png", b, 0, 30, "renamed");
    wait_for("b.png", 0, 0, 30, "renamed");
    /* a new subfolder with a photo, then the subfolder deleted */
    char sub[PATH_MAX + 64];
    pathf(sub, "sub");
    assert_int_equal(mkdir(sub, 0755), 0);
    snprintf(from, sizeof from, "%s%s", TINY_IMG, "coffee.png");
    copy_to(from, "sub/x.png");
    uint64_t x = wait_for("sub/x.png", ANY, 0, 30, "added in a new subfolder");
    /* a file moved out of the subfolder before it goes */
    rename_in("sub/x.png", "x.png");
    wait_for("x.png", x, 0, 30, "moved out of the subfolder");
    snprintf(from, sizeof from, "%s%s", TINY_IMG, "rocket.jpg");
    copy_to(from, "sub/y.jpg");
    wait_for("sub/y.jpg", ANY, 0, 30, "added in the subfolder");
    remove_in("sub/y.jpg");
    assert_int_equal(rmdir(sub), 0);
    wait_for("sub/y.jpg", 0, 0, 30, "subfolder deleted");
    /* delete */
    remove_in("c.png");
    wait_for("c.png", 0, 0, 30, "deleted");
    (void)c;

    /* the server goes away; a photo arrives meanwhile; the server comes back */
    assert_int_equal(ts_stop(&srv), 0);
    snprintf(from, sizeof from, "%s%s", TINY_IMG, "motorcycle_left.png");
    copy_to(from, "while-down.png");
    usleep(1500000);
    ts_start_ok(&srv, NULL);
    wait_for("while-down.png", ANY, 0, 45, "added while the server was down");
    /* and it still follows changes after reconnecting */
    remove_in("x.png");
    wait_for("x.png", 0, 0, 30, "deleted after the restart");

    assert_int_equal(kill(pid, SIGINT), 0);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    char *out = tu_read_file(outp, NULL), *err = tu_read_file(errp, NULL);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 130)
        fail_msg("status %d, want exit 130\nstdout:\n%s\nstderr:\n%s", st, out, err);
    const char *totals = strstr(out, "watch: ");
    if (!totals || !strstr(totals, " added, ") || !strstr(err, "the server is back"))
        fail_msg("no totals, or no word of the server's return\nstderr:\n%s\nstdout (end):\n%s", err,
                 strlen(out) > 300 ? out + strlen(out) - 300 : out);
    free(out);
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sync_steps),
        cmocka_unit_test(test_list_move_ops),
        cmocka_unit_test(test_watch),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
