/* test_cli.c - the client subcommands (ingest, query, stats, get, delete) run
 * as real processes (env UMG_BIN) against the real server (`umgdb serve`,
 * started with tests/server_harness.h on a temporary data directory with
 * tests/fixtures/clip-tiny, on a Unix socket).  The tests run in order and
 * build on each other: the first ingests the photos the later ones search,
 * get and delete. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "server_harness.h"
#include "test_util.h"

#define TINY UMG_FIXTURES_DIR "/clip-tiny"

static const char *const photo_names[] = {"astronaut.png", "camera.png", "chelsea.png",
                                          "coffee.png", "motorcycle_left.png", "rocket.jpg"};
#define N_PHOTOS 6

/* Everything lives under root: the main server's directory (resolved). */
static ts_server srv;
static char root[256], photos[320], bad[320], outside[320], token_file[320];
static char photo_path[N_PHOTOS][400];   /* absolute path of each photo as ingested */
static const char *server_addr = srv.addr;

/* ---- processes ------------------------------------------------------------ */

/* tu_run_env with UMGDB_SERVER and UMGDB_AUTH_TOKEN unset first, so the
 * caller's environment never leaks in. */
static tu_result run_env(const char *const *env, const char *const *args)
{
    const char *all[32] = {"UMGDB_SERVER", "UMGDB_AUTH_TOKEN"};
    int n = 2;
    for (const char *const *e = env; e && *e; e++) {
        assert_true(n < 31);
        all[n++] = *e;
    }
    all[n] = NULL;
    return tu_run_env(all, args);
}

static tu_result run(const char *const *args)
{
    return run_env(NULL, args);
}

/* Runs umgdb (run), expects exit 0 and returns its stdout parsed as JSON. */
static json_t *run_json(const char *const *args)
{
    tu_result r = run(args);
    TU_EXPECT_EXIT(r, 0);
    json_t *j = tu_json_parse(r.out);
    tu_result_free(&r);
    return j;
}

/* Runs umgdb (run_env) and expects exit code, with out_has in its stdout and
 * err_has in its stderr (NULL: not checked). */
static void expect_run(const char *const *env, const char *const *args, int code, const char *out_has,
                       const char *err_has)
{
    tu_result r = run_env(env, args);
    TU_EXPECT_EXIT(r, code);
    if ((out_has && !strstr(r.out, out_has)) || (err_has && !strstr(r.err, err_has)))
        fail_msg("wanted \"%s\" on stdout and \"%s\" on stderr\nstdout:\n%s\nstderr:\n%s", out_has ? out_has : "",
                 err_has ? err_has : "", r.out, r.err);
    tu_result_free(&r);
}

/* ---- the server -------------------------------------------------------------- */

/* A second server (auth, small frames) in its own directory, started with
 * extra arguments; stopped with stop_other. */
static void start_other(ts_server *s, const char *prefix, const char *const *extra)
{
    ts_make_tmp(s, prefix);
    ts_start_ok(s, extra);
}

/* SIGTERM, and the server must exit 0 (it persists and stops cleanly). */
static void stop_other(ts_server *s)
{
    assert_int_equal(ts_stop(s), 0);
    tu_rm_rf(s->dir);
}

/* ---- fixtures ----------------------------------------------------------------- */

static void copy_file(const char *from, const char *to)
{
    size_t len;
    char *b = tu_read_file(from, &len);
    tu_write_file(to, b, len);
    free(b);
}

static void write_text(const char *path, const char *text)
{
    tu_write_file(path, text, strlen(text));
}

static void mkdir_p(const char *path)
{
    assert_true(mkdir(path, 0755) == 0 || errno == EEXIST);
}

/* root/photos: the six fixture photos in nested directories, a text file
 * (skipped), a hidden directory (not walked); root/bad: a broken "JPEG";
 * root/outside: a photo outside the server's --allow-root. */
static int group_setup(void **state)
{
    (void)state;
    ts_make_tmp(&srv, "umg-cli-");
    char *real = realpath(srv.dir, NULL);
    assert_non_null(real);
    snprintf(root, sizeof root, "%s", real);
    free(real);
    snprintf(photos, sizeof photos, "%s/photos", root);
    snprintf(bad, sizeof bad, "%s/bad", root);
    snprintf(outside, sizeof outside, "%s/outside", root);
    snprintf(token_file, sizeof token_file, "%s/token", root);
    char p[512];
    mkdir_p(photos);
    snprintf(p, sizeof p, "%s/space", photos);
    mkdir_p(p);
    snprintf(p, sizeof p, "%s/space/deep", photos);
    mkdir_p(p);
    snprintf(p, sizeof p, "%s/.cache", photos);
    mkdir_p(p);
    mkdir_p(bad);
    mkdir_p(outside);
    for (int i = 0; i < N_PHOTOS; i++) {
        const char *sub = i == 5 ? "/space/deep/" : i == 0 ? "/space/" : "/";
        snprintf(photo_path[i], sizeof photo_path[i], "%s%s%s", photos, sub, photo_names[i]);
        snprintf(p, sizeof p, "%s/images/%s", TINY, photo_names[i]);
        copy_file(p, photo_path[i]);
    }
    snprintf(p, sizeof p, "%s/.cache/rocket.jpg", photos);
    copy_file(photo_path[5], p);
    snprintf(p, sizeof p, "%s/notes.txt", photos);
    write_text(p, "not a photo\n");
    snprintf(p, sizeof p, "%s/broken.jpg", bad);
    write_text(p, "this is not a JPEG at all, whatever its name says\n");
    snprintf(p, sizeof p, "%s/images/rocket.jpg", TINY);
    char q[512];
    snprintf(q, sizeof q, "%s/rocket-copy.jpg", outside);
    copy_file(p, q);
    write_text(token_file, "s3cret-token-0123456\n"); /* tokens: >= 16 characters */

    const char *extra[] = {"--allow-root", photos, "--log-level", "warn", NULL};
    ts_start_ok(&srv, extra);
    return 0;
}

static int group_teardown(void **state)
{
    if (srv.pid)
        ts_stop(&srv);
    ts_teardown(state);   /* any other server a failed test left */
    tu_rm_rf(root);
    return 0;
}

/* ---- helpers on outputs -------------------------------------------------------- */

static int photo_index(const char *path)
{
    for (int i = 0; i < N_PHOTOS; i++)
        if (!strcmp(path, photo_path[i]))
            return i;
    return -1;
}

/* umgdb query --json with extra_args, then text (NULL: none, e.g. with --like). */
static json_t *query_json(const char *const *extra_args, const char *text)
{
    const char *args[32] = {"query", "--server", server_addr, "--json"};
    int n = 4;
    for (const char *const *e = extra_args; e && *e; e++)
        args[n++] = *e;
    args[n++] = text;
    args[n] = NULL;
    json_t *j = run_json(args);
    json_t *hits = json_object_get(j, "hits");
    assert_true(json_is_array(hits));
    return j;
}

/* ---- tests ---------------------------------------------------------------------- */

static void test_ingest(void **state)
{
    (void)state;
    /* First run: six photos, the text file skipped (named, with why), the
     * hidden directory not walked; the regions are those of the six. */
    const char *a1[] = {"ingest", "--server", server_addr, "--json", "--tags", "fixture,first", photos, NULL};
    json_t *j = run_json(a1);
    assert_int_equal(json_integer_value(json_object_get(j, "photos")), N_PHOTOS);
    assert_int_equal(json_integer_value(json_object_get(j, "ingested")), N_PHOTOS);
    assert_int_equal(json_integer_value(json_object_get(j, "unchanged")), 0);
    assert_int_equal(json_integer_value(json_object_get(j, "failed")), 0);
    assert_int_equal(json_integer_value(json_object_get(j, "skipped")), 1);
    assert_int_equal(json_array_size(json_object_get(j, "failures")), 0);
    json_t *skipped = json_object_get(j, "skipped_files");
    assert_int_equal(json_array_size(skipped), 1);
    char notes[400];
    snprintf(notes, sizeof notes, "%s/notes.txt", photos);
    assert_string_equal(json_string_value(json_object_get(json_array_get(skipped, 0), "path")), notes);
    assert_non_null(strstr(json_string_value(json_object_get(json_array_get(skipped, 0), "reason")),
                           "not an image"));
    json_int_t regions = json_integer_value(json_object_get(j, "regions"));
    assert_true(regions >= N_PHOTOS);
    json_decref(j);
    size_t stored_regions = 0;
    for (int i = 0; i < N_PHOTOS; i++) {
        const char *g[] = {"get", "--server", server_addr, "--json", "--path", photo_path[i], NULL};
        json_t *gj = run_json(g);
        stored_regions += json_array_size(json_object_get(gj, "regions"));
        json_decref(gj);
    }
    assert_int_equal(stored_regions, (size_t)regions);

    /* Second run: nothing changed, so everything is unchanged and no region is new. */
    const char *a1b[] = {"ingest", "--server", server_addr, "--json", photos, NULL};
    j = run_json(a1b);
    assert_int_equal(json_integer_value(json_object_get(j, "unchanged")), N_PHOTOS);
    assert_int_equal(json_integer_value(json_object_get(j, "regions")), 0);
    json_decref(j);

    /* Plain summary (stderr is not a terminal: no progress bar); the skipped
     * file is named with why. */
    const char *a2[] = {"ingest", "--server", server_addr, "-j", "3", photos, NULL};
    tu_result r = run(a2);
    TU_EXPECT_EXIT(r, 0);
    assert_non_null(strstr(r.out, "6 photos: 0 ingested (0 new regions)"));
    assert_non_null(strstr(r.out, "6 unchanged, 0 failed"));
    assert_non_null(strstr(r.out, "1 skipped (not a photo)"));
    char want[600];
    snprintf(want, sizeof want, "skipped (not a photo):\n  %s: not an image (JPEG, PNG, HEIC, AVIF, WebP, TIFF or GIF)\n",
             notes);
    assert_non_null(strstr(r.err, want));
    assert_null(strstr(r.err, "failed"));
    assert_null(strchr(r.err, '\r'));   /* no progress bar drawn */
    tu_result_free(&r);

    /* A broken photo and a missing path fail, are listed with a reason, and
     * do not stop the others; exit 1 with the count.  A file that is not a
     * photo, named explicitly, is skipped (named, with why), not failed. */
    char missing[400];
    snprintf(missing, sizeof missing, "%s/no-such-dir", root);
    const char *a3[] = {"ingest", "--server", server_addr, photos, bad, missing, notes, NULL};
    r = run(a3);
    TU_EXPECT_EXIT(r, 1);
    assert_non_null(strstr(r.out, "7 photos: 0 ingested"));
    assert_non_null(strstr(r.out, "6 unchanged, 2 failed"));
    assert_non_null(strstr(r.out, "; 1 skipped (not a photo)"));   /* the text file, listed once */
    const char *fl = strstr(r.err, "failed (unreadable or corrupt):\n");
    assert_non_null(fl);
    assert_non_null(strstr(fl, "broken.jpg: "));
    assert_non_null(strstr(fl, "no-such-dir: No such file or directory"));
    assert_null(strstr(fl, "notes.txt"));
    assert_non_null(strstr(r.err, "2 of 8 files failed"));
    tu_result_free(&r);
    const char *a4[] = {"ingest", "--server", server_addr, "--json", notes, missing, NULL};
    r = run(a4);
    TU_EXPECT_EXIT(r, 1);
    j = tu_json_parse(r.out);
    assert_int_equal(json_integer_value(json_object_get(j, "skipped")), 1);
    assert_int_equal(json_integer_value(json_object_get(j, "failed")), 1);
    json_t *fails = json_object_get(j, "failures");
    assert_int_equal(json_array_size(fails), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(fails, 0), "path")), missing);
    json_decref(j);
    tu_result_free(&r);
}

/* A folder with many files that are not photos: the human summary names the
 * first 20 and says how many more; --json lists every one. */
static void test_ingest_long_lists(void **state)
{
    (void)state;
    char dir[400], p[480];
    snprintf(dir, sizeof dir, "%s/notes", root);
    mkdir_p(dir);
    for (int i = 0; i < 25; i++) {
        snprintf(p, sizeof p, "%s/note-%02d.txt", dir, i);
        write_text(p, "text\n");
    }
    const char *a[] = {"ingest", "--server", server_addr, dir, NULL};
    tu_result r = run(a);
    TU_EXPECT_EXIT(r, 0);   /* nothing failed */
    assert_non_null(strstr(r.out, "0 photos: 0 ingested"));
    assert_non_null(strstr(r.out, "25 skipped (not a photo)"));
    for (int i = 0; i < 25; i++) {
        snprintf(p, sizeof p, "%s/note-%02d.txt: not an image", dir, i);
        if (i < 20)
            assert_non_null(strstr(r.err, p));
        else
            assert_null(strstr(r.err, p));
    }
    assert_non_null(strstr(r.err, "  ... and 5 more (--json lists them all)\n"));
    tu_result_free(&r);
    const char *aj[] = {"ingest", "--server", server_addr, "--json", dir, NULL};
    json_t *j = run_json(aj);
    json_t *sk = json_object_get(j, "skipped_files");
    assert_int_equal(json_array_size(sk), 25);
    snprintf(p, sizeof p, "%s/note-24.txt", dir);
    assert_string_equal(json_string_value(json_object_get(json_array_get(sk, 24), "path")), p);
    json_decref(j);
}

/* ---- a terminal ---------------------------------------------------------------- */

/* umgdb with args (after the binary name), its stderr a new pseudo-terminal
 * (so it draws its progress bar), its stdout a scratch file (*out_fd: read it
 * with tu_read_fd once the child has exited).  *master reads the terminal. */
static pid_t spawn_on_tty(const char *const *args, int *master, int *out_fd)
{
    *master = posix_openpt(O_RDWR | O_NOCTTY);
    assert_true(*master >= 0);
    assert_int_equal(grantpt(*master), 0);
    assert_int_equal(unlockpt(*master), 0);
    char *slave_name = ptsname(*master);
    assert_non_null(slave_name);
    int slave = open(slave_name, O_RDWR | O_NOCTTY);
    assert_true(slave >= 0);
    char outp[] = "/tmp/umg-cli-out-XXXXXX";
    *out_fd = mkstemp(outp);
    assert_true(*out_fd >= 0);
    unlink(outp);
    const char *argv[32] = {tu_bin()};
    int n = 1;
    for (const char *const *a = args; *a; a++) {
        assert_true(n < 31);
        argv[n++] = *a;
    }
    argv[n] = NULL;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(*master);
        dup2(*out_fd, 1);
        dup2(slave, 2);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(slave);
    return pid;
}

/* What the terminal showed: read into b (grown as needed, NUL-terminated);
 * until_closed: until the child closes it (EIO once no writer is left), else
 * only what is there now (the child blocks once the terminal's buffer fills). */
typedef struct tty_text {
    char *p;
    size_t n, cap;
} tty_text;

static void tty_read(int master, tty_text *b, bool until_closed)
{
    for (;;) {
        if (b->n + 4096 >= b->cap) {
            b->cap = b->cap ? b->cap * 2 : 1 << 16;
            b->p = realloc(b->p, b->cap);
            assert_non_null(b->p);
        }
        b->p[b->n] = 0;
        struct pollfd pf = {.fd = master, .events = POLLIN};
        if (!until_closed && poll(&pf, 1, 0) <= 0)
            return;
        ssize_t got = read(master, b->p + b->n, b->cap - b->n - 1);
        if (got <= 0)
            return;
        b->n += (size_t)got;
        b->p[b->n] = 0;
    }
}

/* On a terminal (stderr a pty), ingest draws a progress bar redrawn in place:
 * count/total, images/s, ETA, and erases it before the summary. */
static void test_ingest_progress_bar(void **state)
{
    (void)state;
    int master, fo;
    const char *args[] = {"ingest", "--server", server_addr, photos, NULL};
    pid_t pid = spawn_on_tty(args, &master, &fo);
    tty_text tt = {0};
    tty_read(master, &tt, true);
    const char *tty = tt.p;
    size_t n = tt.n;
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    close(master);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    char *out = tu_read_fd(fo, NULL);
    close(fo);
    assert_true(n > 0);
    assert_non_null(strstr(tty, "\r[########################] 6/6 100%"));
    assert_non_null(strstr(tty, " img/s  ETA "));
    assert_non_null(strstr(tty, "0/6   0%"));
    /* the bar is erased at the end (a blank line and \r), then the skipped
     * file is named: the bar is not drawn again after it */
    const char *after = strstr(tty, "\rskipped (not a photo):");
    assert_non_null(after);
    assert_true(after[-1] == ' ');
    assert_null(strstr(after, "\r["));
    assert_non_null(strstr(out, "6 photos: 0 ingested"));
    free(out);
    free(tt.p);
}

static void test_ingest_by_path(void **state)
{
    (void)state;
    /* Under the server's --allow-root: read by the server, unchanged. */
    const char *a1[] = {"ingest", "--server", server_addr, "--by-path", "--json", photos, NULL};
    tu_result r = run(a1);
    TU_EXPECT_EXIT(r, 0);
    json_t *j = tu_json_parse(r.out);
    assert_int_equal(json_integer_value(json_object_get(j, "unchanged")), N_PHOTOS);
    assert_null(strstr(r.err, "refused ingest by path"));
    json_decref(j);
    tu_result_free(&r);

    /* Outside it: the server refuses the path, the client sends the bytes. */
    const char *a2[] = {"ingest", "--server", server_addr, "--by-path", "--json", outside, NULL};
    r = run(a2);
    TU_EXPECT_EXIT(r, 0);
    j = tu_json_parse(r.out);
    assert_int_equal(json_integer_value(json_object_get(j, "ingested")), 1);
    assert_non_null(strstr(r.err, "refused ingest by path"));
    json_decref(j);
    tu_result_free(&r);
}

static void test_query_json_and_table(void **state)
{
    (void)state;
    const char *k3[] = {"-k", "3", NULL};
    json_t *j = query_json(k3, "a rocket launch");
    json_t *hits = json_object_get(j, "hits");
    assert_int_equal(json_array_size(hits), 3);
    double last = INFINITY;
    for (size_t i = 0; i < json_array_size(hits); i++) {
        json_t *h = json_array_get(hits, i);
        double s = json_number_value(json_object_get(h, "score"));
        assert_true(s <= last + 1e-6);   /* best first */
        last = s;
        const char *path = json_string_value(json_object_get(h, "path"));
        assert_non_null(path);
        /* every hit is one of ours (the copy outside the root counts too) */
        assert_true(photo_index(path) >= 0 || strstr(path, "/outside/rocket-copy.jpg"));
        assert_true(json_integer_value(json_object_get(h, "image_id")) > 0);
        assert_null(json_object_get(h, "box"));   /* image hits have no box */
    }
    /* The table shows the same hits in the same order. */
    const char *a[] = {"query", "--server", server_addr, "-k", "3", "a", "rocket", "launch", NULL};
    tu_result r = run(a);
    TU_EXPECT_EXIT(r, 0);
    assert_true(!strncmp(r.out, "rank", 4));
    const char *line = strchr(r.out, '\n') + 1;
    for (size_t i = 0; i < 3; i++) {
        json_t *h = json_array_get(hits, i);
        char want[64];
        snprintf(want, sizeof want, "%zu  %.4f  ", i + 1, json_number_value(json_object_get(h, "score")));
        const char *eol = strchr(line, '\n');
        assert_non_null(eol);
        char row[1024];
        snprintf(row, sizeof row, "%.*s", (int)(eol - line), line);
        assert_non_null(strstr(row, want));
        assert_non_null(strstr(row, json_string_value(json_object_get(h, "path"))));
        line = eol + 1;
    }
    assert_int_equal(*line, 0);
    tu_result_free(&r);
    json_decref(j);
}

/* Scores are the cosine of the text and image embeddings: check them against
 * `umgdb embed` on the same files (the server stores float16 vectors).  The
 * server encodes whole photos padded to a square (fit-pad, for its region
 * pooling) where `embed` center-crops; both see the same pixels only for
 * square photos (astronaut.png and camera.png, 512x512), so only their scores
 * are compared; every hit must still be one of the photos. */
static void test_query_scores_match_embed(void **state)
{
    (void)state;
    const char *text = "a cat sleeping on a couch";
    const char *args[32] = {"embed", "--model", TINY, "--text", text};
    int n = 5;
    for (int i = 0; i < N_PHOTOS; i++) {
        args[n++] = "--image";
        args[n++] = photo_path[i];
    }
    args[n] = NULL;
    tu_result r = run(args);
    TU_EXPECT_EXIT(r, 0);
    double emb[N_PHOTOS + 1][512];
    int dim = 0;
    json_t *ls = tu_json_lines(r.out);
    assert_true(json_array_size(ls) >= N_PHOTOS + 1);
    for (int i = 0; i <= N_PHOTOS; i++) {
        json_t *v = json_object_get(json_array_get(ls, (size_t)i), "embedding");
        dim = (int)json_array_size(v);
        assert_true(dim > 0 && dim <= 512);
        double norm = 0;
        for (int d = 0; d < dim; d++)
            norm += pow(emb[i][d] = json_number_value(json_array_get(v, (size_t)d)), 2);
        for (int d = 0; d < dim; d++)
            emb[i][d] /= sqrt(norm);
    }
    json_decref(ls);
    tu_result_free(&r);

    const char *k10[] = {"-k", "10", "--path-prefix", photos, NULL};
    json_t *j = query_json(k10, text);
    json_t *hits = json_object_get(j, "hits");
    assert_int_equal(json_array_size(hits), N_PHOTOS);
    int checked = 0;
    for (size_t i = 0; i < json_array_size(hits); i++) {
        json_t *h = json_array_get(hits, i);
        int idx = photo_index(json_string_value(json_object_get(h, "path")));
        assert_true(idx >= 0);
        double cos = 0;
        for (int d = 0; d < dim; d++)
            cos += emb[0][d] * emb[idx + 1][d];
        double got = json_number_value(json_object_get(h, "score"));
        if (idx > 1)
            continue;   /* not square */
        checked++;
        if (fabs(got - cos) > 2e-3)
            fail_msg("%s: server score %.5f, cosine of umgdb embed's vectors %.5f", photo_names[idx], got, cos);
    }
    assert_int_equal(checked, 2);
    json_decref(j);
}

static void test_query_filters(void **state)
{
    (void)state;
    char prefix[400];
    snprintf(prefix, sizeof prefix, "%s/space/", photos);
    const char *f1[] = {"--path-prefix", prefix, NULL};
    json_t *j = query_json(f1, "an astronaut");
    json_t *hits = json_object_get(j, "hits");
    assert_int_equal(json_array_size(hits), 2);   /* astronaut.png, deep/rocket.jpg */
    for (size_t i = 0; i < 2; i++)
        assert_true(!strncmp(json_string_value(json_object_get(json_array_get(hits, i), "path")), prefix,
                             strlen(prefix)));
    json_decref(j);

    /* Tags: the copy outside the root was ingested without tags. */
    const char *f2[] = {"--tag", "first", "--tag", "fixture", "-k", "20", NULL};
    j = query_json(f2, "a photo");
    assert_int_equal(json_array_size(json_object_get(j, "hits")), N_PHOTOS);
    json_decref(j);
    const char *f3[] = {"--tag", "nobody-uses-this", NULL};
    j = query_json(f3, "a photo");
    assert_int_equal(json_array_size(json_object_get(j, "hits")), 0);
    json_decref(j);

    /* A minimum score nothing reaches: no hits, still success. */
    const char *a[] = {"query", "--server", server_addr, "--min-score", "1.5", "a photo", NULL};
    tu_result r = run(a);
    TU_EXPECT_EXIT(r, 0);
    assert_string_equal(r.out, "no hits\n");
    assert_null(strstr(r.err, "may have been cut"));   /* a score cut is exact */
    tu_result_free(&r);
}

/* Read the image id and size the server has for a path (umgdb get --json). */
static void get_image(const char *path, uint64_t *id, long *w, long *h, size_t *n_regions)
{
    const char *a[] = {"get", "--server", server_addr, "--json", "--path", path, NULL};
    json_t *j = run_json(a);
    assert_string_equal(json_string_value(json_object_get(j, "path")), path);
    *id = (uint64_t)json_integer_value(json_object_get(j, "image_id"));
    *w = (long)json_integer_value(json_object_get(j, "width"));
    *h = (long)json_integer_value(json_object_get(j, "height"));
    *n_regions = json_array_size(json_object_get(j, "regions"));
    json_decref(j);
}

/* A URL path as the page wrote it, decoded and resolved against dir. */
static void resolve_url(const char *dir, const char *url, size_t len, char *out, size_t cap)
{
    size_t n = (size_t)snprintf(out, cap, "%s/", dir);
    for (size_t i = 0; i < len && n + 1 < cap; i++) {
        if (url[i] == '%' && i + 2 < len) {
            char hex[3] = {url[i + 1], url[i + 2], 0};
            out[n++] = (char)strtol(hex, NULL, 16);
            i += 2;
        } else {
            out[n++] = url[i];
        }
    }
    out[n] = 0;
}

static void test_query_regions_html(void **state)
{
    (void)state;
    char page_dir[400], page[480];
    snprintf(page_dir, sizeof page_dir, "%s/pages", root);
    mkdir_p(page_dir);
    snprintf(page, sizeof page, "%s/results.html", page_dir);
    const char *a[] = {"query", "--server", server_addr, "--regions", "-k", "4", "--json", "--html", page,
                       "--path-prefix", photos, "a cat", NULL};
    tu_result r = run(a);
    TU_EXPECT_EXIT(r, 0);
    assert_non_null(strstr(r.err, "wrote "));
    json_t *j = tu_json_parse(r.out);
    json_t *hits = json_object_get(j, "hits");
    assert_true(json_array_size(hits) >= 1);
    size_t len;
    FILE *f = fopen(page, "r");
    assert_non_null(f);
    char *html = calloc(1, 1 << 20);
    len = fread(html, 1, (1 << 20) - 1, f);
    fclose(f);
    assert_true(len > 0);
    assert_non_null(strstr(html, "<!DOCTYPE html>"));
    assert_non_null(strstr(html, "a cat"));
    /* One card per hit, in order: the picture (found from the page's
     * directory), an SVG in the picture's own pixels, the box drawn. */
    const char *p = html;
    for (size_t i = 0; i < json_array_size(hits); i++) {
        json_t *h = json_array_get(hits, i);
        const char *path = json_string_value(json_object_get(h, "path"));
        json_t *box = json_object_get(h, "box");
        assert_int_equal(json_array_size(box), 4);
        uint64_t id;
        long w, hh;
        size_t nreg;
        get_image(path, &id, &w, &hh, &nreg);
        assert_true(w > 0 && hh > 0 && nreg > 0);
        /* the hit carries its photo's size: the page needs no `get` per photo */
        assert_int_equal(json_integer_value(json_object_get(h, "width")), w);
        assert_int_equal(json_integer_value(json_object_get(h, "height")), hh);
        /* every box lies inside its image */
        double b[4];
        for (int k = 0; k < 4; k++)
            b[k] = json_number_value(json_array_get(box, (size_t)k));
        assert_true(b[0] >= 0 && b[1] >= 0 && b[2] > 0 && b[3] > 0);
        assert_true(b[0] + b[2] <= w + 0.5 && b[1] + b[3] <= hh + 0.5);

        const char *img = strstr(p, "<img ");
        assert_non_null(img);
        const char *src = strstr(img, "src=\"");
        assert_non_null(src);
        src += 5;
        const char *end = strchr(src, '"');
        assert_true(src[0] != '/');   /* relative to the page */
        char resolved[1024];
        resolve_url(page_dir, src, (size_t)(end - src), resolved, sizeof resolved);
        struct stat s1, s2;
        assert_int_equal(stat(resolved, &s1), 0);
        assert_int_equal(stat(path, &s2), 0);
        assert_true(s1.st_ino == s2.st_ino && s1.st_dev == s2.st_dev);
        char want[128];
        snprintf(want, sizeof want, "viewBox=\"0 0 %ld %ld\"", w, hh);
        const char *svg = strstr(end, "<svg");
        assert_non_null(svg);
        const char *svg_end = strstr(svg, "</svg>");
        assert_non_null(svg_end);
        assert_non_null(strstr(svg, want));
        assert_true(strstr(svg, want) < svg_end);
        snprintf(want, sizeof want, "<rect class=\"box\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\"/>",
                 b[0], b[1], b[2], b[3]);
        const char *rect = strstr(svg, want);
        if (!rect || rect > svg_end)
            fail_msg("hit %zu: no %s in its card", i + 1, want);
        p = svg_end;
    }
    assert_null(strstr(p, "<img "));   /* no extra cards */
    free(html);
    json_decref(j);

    /* The table shows the boxes. */
    const char *t[] = {"query", "--server", server_addr, "--regions", "-k", "2", "a cat", NULL};
    r = (tu_result_free(&r), run(t));
    TU_EXPECT_EXIT(r, 0);
    assert_non_null(strstr(r.out, "box (x,y wxh)"));
    tu_result_free(&r);
}

/* Pixel granularity: each hit carries a heatmap over the patch grid; the page
 * overlays one translucent cell per grid cell, the table names the peak. */
static void test_query_heatmap(void **state)
{
    (void)state;
    char page[480];
    snprintf(page, sizeof page, "%s/heat.html", root);
    const char *a[] = {"query", "--server", server_addr, "--heatmap", "-k", "2", "--json", "--html", page,
                       "--path-prefix", photos, "a cat", NULL};
    json_t *j = run_json(a);
    json_t *hits = json_object_get(j, "hits");
    assert_int_equal(json_array_size(hits), 2);
    size_t cells = 0;
    double lo[2], hi[2];   /* each heatmap's range: the ends of its colour scale */
    for (size_t i = 0; i < 2; i++) {
        json_t *hm = json_object_get(json_array_get(hits, i), "heatmap");
        assert_non_null(hm);
        json_int_t g = json_integer_value(json_object_get(hm, "grid"));
        assert_true(g > 0);
        json_t *vals = json_object_get(hm, "values");
        assert_int_equal(json_array_size(vals), (size_t)(g * g));
        cells += (size_t)(g * g);
        lo[i] = INFINITY;
        hi[i] = -INFINITY;
        for (size_t c = 0; c < json_array_size(vals); c++) {
            double v = json_number_value(json_array_get(vals, c));
            lo[i] = fmin(lo[i], v);
            hi[i] = fmax(hi[i], v);
        }
        assert_true(hi[i] > lo[i]);
    }
    json_decref(j);
    FILE *f = fopen(page, "r");
    assert_non_null(f);
    char *html = calloc(1, 1 << 20);
    assert_true(fread(html, 1, (1 << 20) - 1, f) > 0);
    fclose(f);
    size_t groups = 0, rects = 0;
    for (const char *p = html; (p = strstr(p, "<g class=\"heat\">")); p++)
        groups++;
    for (const char *p = html; (p = strstr(p, "fill-opacity=")); p++)
        rects++;
    assert_int_equal(groups, 2);
    assert_int_equal(rects, cells);
    /* A colour scale: explained once, then under each photo its ramp (the
     * cells' own colours, lowest to highest) with that heatmap's range. */
    assert_non_null(strstr(html, "<p class=\"scale\">Heatmaps: each cell is coloured by the cosine"));
    const char *card = html;
    for (int i = 0; i < 2; i++) {
        card = strstr(card, "<g class=\"heat\">");
        assert_non_null(card);
        const char *legend = strstr(card, "<div class=\"legend\">");
        assert_non_null(legend);
        const char *next = strstr(card + 1, "<g class=\"heat\">");
        assert_true(!next || legend < next);   /* this card's */
        char want[256];
        snprintf(want, sizeof want, "<div class=\"legend\"><span class=\"lo\">%.4f</span>", lo[i]);
        if (strncmp(legend, want, strlen(want)))
            fail_msg("hit %d: legend %.200s, want it to start %s", i + 1, legend, want);
        const char *end = strstr(legend, "</div>");
        snprintf(want, sizeof want, "<span class=\"hi\">%.4f</span>", hi[i]);
        assert_true(strstr(legend, want) && strstr(legend, want) < end);
        const char *ramp = strstr(legend, "linear-gradient(to right,rgba(0,0,255,0.05),");
        assert_true(ramp && ramp < end);
        assert_true(strstr(ramp, ",rgba(255,0,0,0.60))") < end);
        card++;
    }
    free(html);

    const char *t[] = {"query", "--server", server_addr, "--heatmap", "-k", "2", "a cat", NULL};
    expect_run(NULL, t, 0, "heatmap peak (x,y)", NULL);
}

/* --refine: the boxes are ranked by their refined score; the table and the
 * page show it first, the cosine beside it. */
static void test_query_refine(void **state)
{
    (void)state;
    char page[480];
    snprintf(page, sizeof page, "%s/refined.html", root);
    const char *a[] = {"query", "--server", server_addr, "--refine", "-k", "5", "--json", "--html", page,
                       "--path-prefix", photos, "a cat", NULL};
    json_t *j = run_json(a);
    json_t *hits = json_object_get(j, "hits");
    size_t n = json_array_size(hits);
    assert_true(n >= 2);
    const char *t[] = {"query", "--server", server_addr, "--refine", "-k", "5", "--path-prefix", photos, "a cat",
                       NULL};
    tu_result r = run(t);
    TU_EXPECT_EXIT(r, 0);
    assert_true(!strncmp(r.out, "rank  refined  cosine  image_id  path", 37));
    size_t len;
    char *html = tu_read_file(page, &len);
    const char *line = strchr(r.out, '\n') + 1, *card = html;
    for (size_t i = 0; i < n; i++) {
        json_t *h = json_array_get(hits, i);
        assert_non_null(json_object_get(h, "refined"));   /* clip-tiny's server stores patch tokens */
        double refined = json_number_value(json_object_get(h, "refined"));
        double cosine = json_number_value(json_object_get(h, "score"));
        char want[128];
        snprintf(want, sizeof want, "%zu   %.4f  %.4f  ", i + 1, refined, cosine);
        if (strncmp(line + strspn(line, " "), want, strlen(want)))
            fail_msg("row %zu: %.*s\nwant it to start: %s", i + 1, (int)strcspn(line, "\n"), line, want);
        line = strchr(line, '\n') + 1;
        snprintf(want, sizeof want, "<span class=\"rank\">#%zu</span> <span class=\"score\">refined %.4f</span> "
                                    "(cosine %.4f) ", i + 1, refined, cosine);
        card = strstr(card, want);
        if (!card)
            fail_msg("the page has no card %zu: %s", i + 1, want);
    }
    free(html);
    tu_result_free(&r);
    json_decref(j);
}

/* Path and size of a photo as stored, and its first region's id and box. */
static uint64_t image_id_of(const char *path)
{
    uint64_t id;
    long w, h;
    size_t nreg;
    get_image(path, &id, &w, &h, &nreg);
    return id;
}

/* query --like / --like-id (the protocol's query_image), --like-box. */
static void test_query_like(void **state)
{
    (void)state;
    /* A photo's nearest neighbours are itself and its byte-identical copy. */
    const char *l1[] = {"--like", photo_path[5], "-k", "3", NULL};
    json_t *j = query_json(l1, NULL);
    json_t *hits = json_object_get(j, "hits");
    assert_int_equal(json_array_size(hits), 3);
    char copy[400];
    snprintf(copy, sizeof copy, "%s/rocket-copy.jpg", outside);
    bool self = false, dup = false;
    for (size_t i = 0; i < 2; i++) {
        json_t *h = json_array_get(hits, i);
        const char *path = json_string_value(json_object_get(h, "path"));
        self |= !strcmp(path, photo_path[5]);
        dup |= !strcmp(path, copy);
        assert_true(json_number_value(json_object_get(h, "score")) > 0.999);
    }
    assert_true(self && dup);
    assert_true(json_number_value(json_object_get(json_array_get(hits, 2), "score")) < 0.9999);
    json_decref(j);
    const char *l2[] = {"--like", photo_path[2], "-k", "1", "--path-prefix", photos, NULL};
    j = query_json(l2, NULL);
    hits = json_object_get(j, "hits");
    assert_int_equal(json_array_size(hits), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(hits, 0), "path")), photo_path[2]);
    json_decref(j);

    /* By a stored image's id: that image is left out, its copy comes first. */
    char ids[32];
    snprintf(ids, sizeof ids, "%llu", (unsigned long long)image_id_of(photo_path[5]));
    const char *l3[] = {"--like-id", ids, "-k", "1", NULL};
    j = query_json(l3, NULL);
    hits = json_object_get(j, "hits");
    assert_int_equal(json_array_size(hits), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(hits, 0), "path")), copy);
    assert_true(json_number_value(json_object_get(json_array_get(hits, 0), "score")) > 0.999);
    json_decref(j);

    /* A region of a photo, by its bytes and by its id: the stored region
     * with that box comes first. */
    const char *g[] = {"get", "--server", server_addr, "--json", "--path", photo_path[2], NULL};
    json_t *img = run_json(g);
    json_t *reg = json_array_get(json_object_get(img, "regions"), 1);
    assert_non_null(reg);
    json_int_t region_id = json_integer_value(json_object_get(reg, "region_id"));
    json_t *box = json_object_get(reg, "box");
    char boxs[160];
    snprintf(boxs, sizeof boxs, "%.9g,%.9g,%.9g,%.9g", json_number_value(json_array_get(box, 0)),
             json_number_value(json_array_get(box, 1)), json_number_value(json_array_get(box, 2)),
             json_number_value(json_array_get(box, 3)));
    snprintf(ids, sizeof ids, "%lld", (long long)json_integer_value(json_object_get(img, "image_id")));
    const char *l4[] = {"--like", photo_path[2], "--like-box", boxs, "--regions", "-k", "1", NULL};
    const char *l5[] = {"--like-id", ids, "--like-box", boxs, "--regions", "-k", "1", NULL};
    const char *const *cases[] = {l4, l5};
    for (int c = 0; c < 2; c++) {
        j = query_json(cases[c], NULL);
        json_t *h = json_array_get(json_object_get(j, "hits"), 0);
        assert_non_null(h);
        assert_string_equal(json_string_value(json_object_get(h, "path")), photo_path[2]);
        if (json_integer_value(json_object_get(h, "region_id")) != region_id)
            fail_msg("case %d: region %lld first, want %lld (box %s)", c,
                     (long long)json_integer_value(json_object_get(h, "region_id")), (long long)region_id, boxs);
        json_decref(j);
    }
    json_decref(img);

    /* The table says what was searched for; usage errors are exit 2. */
    const char *t[] = {"query", "--server", server_addr, "--like", photo_path[5], "-k", "2", NULL};
    expect_run(NULL, t, 0, "rocket-copy.jpg", NULL);
    static const char *const bad_cases[][8] = {
        {"query", "--like", "/x.jpg", "cats", NULL},
        {"query", "--like", "/x.jpg", "--like-id", "3", NULL},
        {"query", "--like-box", "1,2,3,4", "cats", NULL},
        {"query", "--like-id", "3", "--like-box", "1,2,3", NULL},
        {"query", "--like-id", "3", "--like-box", "1,2,0,4", NULL},
        {"query", "--like-id", "0", NULL},
        {"query", "--like-id", "3", "--refine", NULL},
    };
    for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
        tu_result r = run(bad_cases[i]);
        if (r.status != 2 || !strstr(r.err, "umgdb query: "))
            fail_msg("bad case %zu: exit %d, stderr: %s", i, r.status, r.err);
        tu_result_free(&r);
    }
    char missing[400];
    snprintf(missing, sizeof missing, "%s/no-such.jpg", root);
    const char *m[] = {"query", "--server", server_addr, "--like", missing, NULL};
    expect_run(NULL, m, 2, NULL, "no-such.jpg");
}

static void test_get_stats_delete(void **state)
{
    (void)state;
    uint64_t id;
    long w, h;
    size_t nreg;
    get_image(photo_path[5], &id, &w, &h, &nreg);
    assert_true(id > 0);

    /* By id, readable. */
    char ids[32];
    snprintf(ids, sizeof ids, "%llu", (unsigned long long)id);
    const char *g[] = {"get", "--server", server_addr, ids, NULL};
    tu_result r = run(g);
    TU_EXPECT_EXIT(r, 0);
    char want[600];
    snprintf(want, sizeof want, "path: %s\n", photo_path[5]);
    assert_non_null(strstr(r.out, want));
    snprintf(want, sizeof want, "regions: %zu\n", nreg);
    assert_non_null(strstr(r.out, want));
    assert_non_null(strstr(r.out, "tags: fixture, first\n"));
    tu_result_free(&r);

    /* stats: seven images (six photos and the copy from outside). */
    const char *s[] = {"stats", "--server", server_addr, "--json", NULL};
    json_t *j = run_json(s);
    assert_int_equal(json_integer_value(json_object_get(j, "images")), N_PHOTOS + 1);
    json_decref(j);
    const char *s2[] = {"stats", "--server", server_addr, NULL};
    expect_run(NULL, s2, 0, "images: 7\n", NULL);

    /* delete by path; then it is gone, and the count drops. */
    const char *d[] = {"delete", "--server", server_addr, "--path", photo_path[5], NULL};
    r = run(d);
    TU_EXPECT_EXIT(r, 0);
    snprintf(want, sizeof want, "deleted image %s", ids);
    assert_non_null(strstr(r.out, want));
    tu_result_free(&r);
    expect_run(NULL, g, 1, NULL, "umgdb get: not_found");
    expect_run(NULL, d, 1, NULL, "not_found");
    j = run_json(s);
    assert_int_equal(json_integer_value(json_object_get(j, "images")), N_PHOTOS);
    json_decref(j);

    /* Ingest brings it back (a new id). */
    const char *in[] = {"ingest", "--server", server_addr, "--tags", "fixture,first", photo_path[5], NULL};
    expect_run(NULL, in, 0, "1 photo: 1 ingested", NULL);
}

/* get/delete --path with a relative path find what ingest stored for it
 * (absolute, resolved), also once the file is gone; a name stored as it was
 * typed (by another client) is still found. */
static void test_relative_paths(void **state)
{
    (void)state;
    char cwd[1024], dir[400], p[480];
    assert_non_null(getcwd(cwd, sizeof cwd));
    snprintf(dir, sizeof dir, "%s/rel", root);
    mkdir_p(dir);
    snprintf(p, sizeof p, "%s/coffee-rel.png", dir);
    copy_file(photo_path[3], p);
    snprintf(p, sizeof p, "%s/gone.png", dir);
    copy_file(photo_path[1], p);
    assert_int_equal(chdir(dir), 0);
    const char *in[] = {"ingest", "--server", server_addr, "--json", "coffee-rel.png", "./gone.png", NULL};
    json_t *j = run_json(in);
    assert_int_equal(json_integer_value(json_object_get(j, "ingested")), 2);
    json_decref(j);
    const char *g1[] = {"get", "--server", server_addr, "--json", "--path", "coffee-rel.png", NULL};
    j = run_json(g1);
    snprintf(p, sizeof p, "%s/coffee-rel.png", dir);
    assert_string_equal(json_string_value(json_object_get(j, "path")), p);
    json_decref(j);
    /* "." and ".." (through a directory that does not exist) */
    const char *g2[] = {"get", "--server", server_addr, "--json", "--path", "./nowhere/../coffee-rel.png", NULL};
    j = run_json(g2);
    assert_string_equal(json_string_value(json_object_get(j, "path")), p);
    json_decref(j);
    /* The file deleted from disk: still found, and deleted, by its relative name. */
    assert_int_equal(unlink("gone.png"), 0);
    const char *g3[] = {"get", "--server", server_addr, "--path", "gone.png", NULL};
    snprintf(p, sizeof p, "path: %s/gone.png\n", dir);
    expect_run(NULL, g3, 0, p, NULL);
    const char *d3[] = {"delete", "--server", server_addr, "--path", "gone.png", NULL};
    expect_run(NULL, d3, 0, "deleted image", NULL);
    expect_run(NULL, g3, 1, NULL, "not_found");

    /* A name stored as sent ("as-typed.png", no directory): found as typed. */
    umg_client *c = ts_conn(&srv);
    proto_response *r = ts_wait_ok(c, ts_send_ingest(c, photo_path[4], "as-typed.png", NULL));
    uint64_t id = ts_res_u(r, "image_id");
    proto_response_free(r);
    umg_client_close(c);
    const char *g4[] = {"get", "--server", server_addr, "--json", "--path", "as-typed.png", NULL};
    j = run_json(g4);
    assert_int_equal(json_integer_value(json_object_get(j, "image_id")), (json_int_t)id);
    json_decref(j);
    const char *d4[] = {"delete", "--server", server_addr, "--path", "as-typed.png", NULL};
    expect_run(NULL, d4, 0, "deleted image", NULL);
    assert_int_equal(chdir(cwd), 0);
}

/* Bytes ingest sends the file's modification time: get shows it, not the
 * time of the ingest. */
static void test_ingest_mtime(void **state)
{
    (void)state;
    char dir[400], p[480];
    snprintf(dir, sizeof dir, "%s/times", root);
    mkdir_p(dir);
    snprintf(p, sizeof p, "%s/old.jpg", dir);
    copy_file(photo_path[5], p);
    struct timeval tv[2] = {{1500000000, 0}, {1500000000, 0}};
    assert_int_equal(utimes(p, tv), 0);
    const char *in[] = {"ingest", "--server", server_addr, p, NULL};
    expect_run(NULL, in, 0, "1 photo: 1 ingested", NULL);
    const char *g[] = {"get", "--server", server_addr, "--json", "--path", p, NULL};
    json_t *j = run_json(g);
    assert_int_equal(json_integer_value(json_object_get(j, "mtime")), 1500000000);
    assert_true(json_integer_value(json_object_get(j, "ingest_time")) > 1500000000);
    json_decref(j);
    const char *gh[] = {"get", "--server", server_addr, "--path", p, NULL};
    expect_run(NULL, gh, 0, "mtime: 2017-07-14 02:40:00 UTC (1500000000)\n", NULL);
}

/* Issue 17: every format the server decodes is sent (HEIC, WebP, TIFF, GIF, by
 * their bytes whatever their names), and a skipped file says what it is. */
static void test_ingest_formats(void **state)
{
    (void)state;
    char dir[400], p[480];
    snprintf(dir, sizeof dir, "%s/formats", root);
    mkdir_p(dir);
    static const char *const files[] = {"fmt.heic", "fmt.avif", "fmt_lossy.webp", "fmt_lzw.tif", "fmt.gif"};
    for (size_t i = 0; i < sizeof files / sizeof *files; i++) {
        char src[400];
        snprintf(src, sizeof src, UMG_FIXTURES_DIR "/images/%s", files[i]);
        snprintf(p, sizeof p, "%s/photo%zu.bin", dir, i); /* names say nothing */
        copy_file(src, p);
    }
    snprintf(p, sizeof p, "%s/clip.mov", dir);
    FILE *f = fopen(p, "wb");
    assert_non_null(f);
    fwrite("\0\0\0\x20" "ftypisom\0\0\2\0isomiso2avc1mp41", 1, 32, f);
    fclose(f);
    const char *in[] = {"ingest", "--server", server_addr, "--json", dir, NULL};
    json_t *j = run_json(in);
    assert_int_equal(json_integer_value(json_object_get(j, "ingested")), 5);
    assert_int_equal(json_integer_value(json_object_get(j, "failed")), 0);
    json_t *skipped = json_object_get(j, "skipped_files");
    assert_int_equal(json_array_size(skipped), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(skipped, 0), "reason")),
                        "unsupported format: video/mp4");
    json_decref(j);
}

/* A tag filter cuts the nearest candidates: with -k 1 the one tagged photo
 * is beyond them (21 identical photos are nearer), so the CLI says the
 * filter may have cut the results and how to widen them; a larger -k finds it. */
static void test_query_filter_note(void **state)
{
    (void)state;
    char dir[400], p[480];
    snprintf(dir, sizeof dir, "%s/similar", root);
    mkdir_p(dir);
    for (int i = 0; i < 20; i++) {
        snprintf(p, sizeof p, "%s/cat-%02d.png", dir, i);
        copy_file(photo_path[2], p);
    }
    const char *in[] = {"ingest", "--server", server_addr, dir, NULL};
    expect_run(NULL, in, 0, "20 photos: 20 ingested", NULL);
    snprintf(dir, sizeof dir, "%s/rare", root);
    mkdir_p(dir);
    snprintf(p, sizeof p, "%s/camera-rare.png", dir);
    copy_file(photo_path[1], p);
    const char *in2[] = {"ingest", "--server", server_addr, "--tags", "rare", p, NULL};
    expect_run(NULL, in2, 0, "1 photo: 1 ingested", NULL);

    const char *q1[] = {"query", "--server", server_addr, "--like", photo_path[2], "--tag", "rare", "-k", "1", NULL};
    tu_result r = run(q1);
    TU_EXPECT_EXIT(r, 0);
    assert_string_equal(r.out, "no hits\n");
    assert_non_null(strstr(r.err, "umgdb query: 0 of 1 hits: --path-prefix and --tag filter the server's nearest "
                                  "candidates only, so matching photos further away may have been cut; a larger "
                                  "-k searches more of them (e.g. -k 10)\n"));
    tu_result_free(&r);
    const char *q2[] = {"query", "--server", server_addr, "--json", "--like", photo_path[2], "--tag", "rare", "-k",
                        "100", NULL};
    r = run(q2);
    TU_EXPECT_EXIT(r, 0);
    json_t *j = tu_json_parse(r.out);   /* the note is on stderr: stdout stays JSON */
    json_t *hits = json_object_get(j, "hits");
    assert_int_equal(json_array_size(hits), 1);
    assert_string_equal(json_string_value(json_object_get(json_array_get(hits, 0), "path")), p);
    assert_non_null(strstr(r.err, "1 of 100 hits"));
    json_decref(j);
    tu_result_free(&r);
    /* k hits: no note */
    const char *q3[] = {"query", "--server", server_addr, "--tag", "first", "-k", "3", "a cat", NULL};
    r = run(q3);
    TU_EXPECT_EXIT(r, 0);
    assert_null(strstr(r.err, "may have been cut"));
    tu_result_free(&r);
    /* -k at its maximum: the note says so instead */
    const char *q4[] = {"query", "--server", server_addr, "--tag", "nobody-uses-this", "-k", "1000", "a cat", NULL};
    expect_run(NULL, q4, 0, "no hits\n", "-k is at its maximum (1000)");
}

static json_int_t stats_images(umg_client *c)
{
    proto_response *r;
    assert_int_equal(umg_client_call0(c, "stats", TS_T_MS, &r), 0);
    assert_true(r->ok);
    json_int_t n = (json_int_t)ts_res_u(r, "images");
    proto_response_free(r);
    return n;
}

/* Ctrl-C on a running ingest: it stops sending, waits for the answers in
 * flight, prints the summary and exits 130; every photo it calls ingested is
 * stored. */
static void test_ingest_interrupt(void **state)
{
    (void)state;
    enum { COPIES = 40, FILES = COPIES * N_PHOTOS };
    char dir[400], p[480];
    snprintf(dir, sizeof dir, "%s/many", root);
    mkdir_p(dir);
    for (int k = 0; k < COPIES; k++)
        for (int i = 0; i < N_PHOTOS; i++) {
            snprintf(p, sizeof p, "%s/%02d-%s", dir, k, photo_names[i]);
            copy_file(photo_path[i], p);
        }
    umg_client *c = ts_conn(&srv);
    json_int_t before = stats_images(c);

    char outp[480], errp[480];
    snprintf(outp, sizeof outp, "%s/interrupt.out", root);
    snprintf(errp, sizeof errp, "%s/interrupt.err", root);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fo = open(outp, O_WRONLY | O_CREAT | O_TRUNC, 0600), fe = open(errp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(fo, 1);
        dup2(fe, 2);
        execl(tu_bin(), tu_bin(), "ingest", "--server", server_addr, "--json", "-j", "8", dir, (char *)NULL);
        _exit(127);
    }
    /* Interrupt once the server has stored some of them. */
    for (int i = 0; i < 600 && stats_images(c) == before; i++)
        usleep(50000);
    assert_true(stats_images(c) > before);
    assert_int_equal(kill(pid, SIGINT), 0);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    char *out = tu_read_file(outp, NULL), *err = tu_read_file(errp, NULL);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 130)
        fail_msg("status %d, want exit 130\nstdout:\n%s\nstderr:\n%s", st, out, err);
    assert_non_null(strstr(err, "umgdb ingest: interrupted after "));
    json_t *j = tu_json_parse(out);
    assert_true(json_is_true(json_object_get(j, "interrupted")));
    json_int_t ingested = json_integer_value(json_object_get(j, "ingested"));
    json_int_t unanswered = json_integer_value(json_object_get(j, "unanswered"));
    json_int_t not_sent = json_integer_value(json_object_get(j, "not_sent"));
    assert_int_equal(json_integer_value(json_object_get(j, "photos")), FILES);
    assert_true(ingested >= 1 && not_sent >= 1);   /* stopped in the middle */
    assert_int_equal(ingested + unanswered + not_sent + json_integer_value(json_object_get(j, "failed")), FILES);
    json_decref(j);

    /* Every photo called ingested is stored: as many found by path as it
     * says, plus at most those sent without an answer. */
    uint64_t ids[FILES];
    int n = 0;
    for (int k = 0; k < COPIES; k++)
        for (int i = 0; i < N_PHOTOS; i++) {
            snprintf(p, sizeof p, "%s/%02d-%s", dir, k, photo_names[i]);
            proto_writer w;
            ids[n] = ts_begin(c, &w, "get", 1);
            ts_kv_str(&w, "path", p);
            ts_end(c, &w);
            n++;
        }
    json_int_t found = 0;
    for (int i = 0; i < n; i++) {
        proto_response *r = ts_wait_resp(c, ids[i]);
        found += r->ok;
        proto_response_free(r);
    }
    if (found < ingested || found > ingested + unanswered)
        fail_msg("%lld stored, the summary says %lld ingested and %lld without an answer", (long long)found,
                 (long long)ingested, (long long)unanswered);
    free(out);
    free(err);

    /* Again on a terminal, interrupted once it stores more: the progress
     * line stays where it stopped, ended by a newline, and the summary says
     * it was interrupted. */
    before = stats_images(c);
    int master, fo;
    const char *args[] = {"ingest", "--server", server_addr, "-j", "8", dir, NULL};
    pid = spawn_on_tty(args, &master, &fo);
    tty_text tt = {0};
    for (int i = 0; i < 600 && stats_images(c) == before; i++) {
        tty_read(master, &tt, false);
        usleep(50000);
    }
    assert_true(stats_images(c) > before);
    assert_int_equal(kill(pid, SIGINT), 0);
    tty_read(master, &tt, true);
    assert_int_equal(waitpid(pid, &st, 0), pid);
    close(master);
    out = tu_read_fd(fo, NULL);
    close(fo);
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 130)
        fail_msg("status %d, want exit 130\nstdout:\n%s\nterminal:\n%s", st, out, tt.p);
    snprintf(p, sizeof p, "interrupted: %d photos: ", FILES);
    assert_true(!strncmp(out, p, strlen(p)));
    assert_non_null(strstr(out, " not sent"));
    const char *last = strstr(tt.p, "umgdb ingest: interrupted after ");
    assert_non_null(last);
    /* just before it: the last bar drawn, its line ended (\n, shown as \r\n) */
    assert_true(last - tt.p >= 2 && last[-2] == '\r' && last[-1] == '\n');
    const char *bar = NULL;
    for (const char *q = tt.p; (q = strstr(q, "\r[")) && q < last; q++)
        bar = q;
    assert_non_null(bar);
    assert_true(memchr(bar, '\n', (size_t)(last - 1 - bar)) == NULL);   /* the bar's line, not another */
    assert_non_null(strstr(bar, " img/s  ETA "));
    free(tt.p);
    free(out);
    umg_client_close(c);
}

static void test_usage_errors(void **state)
{
    (void)state;
    static const char *const cases[][8] = {
        {"query", NULL},
        {"query", "-k", "0", "cats", NULL},
        {"query", "-k", "1001", "cats", NULL},
        {"query", "--regions", "--heatmap", "cats", NULL},
        {"query", "--min-score", "high", "cats", NULL},
        {"query", "--frobnicate", "cats", NULL},
        {"query", "--html", NULL},
        {"ingest", NULL},
        {"ingest", "--jobs", "0", ".", NULL},
        {"get", NULL},
        {"get", "abc", NULL},
        {"get", "0", NULL},
        {"get", "1", "--path", "/x", NULL},
        {"delete", "1", "2", NULL},
        {"stats", "extra", NULL},
        {"stats", "--timeout", "-1", NULL},
        {"stats", "--server", "no-port-here", NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        tu_result r = run(cases[i]);
        if (r.status != 2 || !strstr(r.err, "umgdb "))
            fail_msg("case %zu (%s %s): exit %d, stderr: %s", i, cases[i][0], cases[i][1] ? cases[i][1] : "",
                     r.status, r.err);
        assert_string_equal(r.out, "");
        tu_result_free(&r);
    }
    /* --help: exit 0, on stdout. */
    static const char *const cmds[] = {"ingest", "query", "stats", "get", "delete"};
    for (size_t i = 0; i < 5; i++) {
        const char *a[] = {cmds[i], "--help", NULL};
        expect_run(NULL, a, 0, "usage: umgdb ", NULL);
    }
}

static void test_server_down(void **state)
{
    (void)state;
    char nowhere[400];
    snprintf(nowhere, sizeof nowhere, "unix:%s/nobody.sock", root);
    static const char *const cmds[][3] = {{"stats"}, {"get", "1"}, {"delete", "1"}, {"query", "cats"},
                                          {"ingest", UMG_FIXTURES_DIR "/clip-tiny/images/rocket.jpg"}};
    for (size_t i = 0; i < 5; i++) {
        const char *a[] = {cmds[i][0], "--server", nowhere, cmds[i][1], NULL};
        expect_run(NULL, a, 3, NULL, "cannot connect to");
    }
    /* UMGDB_SERVER is read when --server is absent. */
    char env[420];
    snprintf(env, sizeof env, "UMGDB_SERVER=%s", nowhere);
    const char *e[] = {env, NULL};
    const char *a[] = {"stats", NULL};
    expect_run(e, a, 3, NULL, "nobody.sock");
    snprintf(env, sizeof env, "UMGDB_SERVER=%s", server_addr);
    expect_run(e, a, 0, NULL, NULL);
}

/* A server that requires a token: refused without it (exit 3 and a clear
 * message), accepted with --token-file or $UMGDB_AUTH_TOKEN. */
static void test_auth(void **state)
{
    (void)state;
    ts_server other;
    const char *extra[] = {"--auth-token-file", token_file, "--require-auth", "--log-level", "warn", NULL};
    start_other(&other, "umg-cli-auth-", extra);
    const char *addr = other.addr;

    const char *a[] = {"stats", "--server", addr, NULL};
    tu_result r = run(a);
    TU_EXPECT_EXIT(r, 3);
    assert_non_null(strstr(r.err, "refused"));
    assert_non_null(strstr(r.err, "token"));
    tu_result_free(&r);

    char wrong[400];
    snprintf(wrong, sizeof wrong, "%s/wrong-token", root);
    write_text(wrong, "not-the-token\n");
    const char *aw[] = {"stats", "--server", addr, "--token-file", wrong, NULL};
    expect_run(NULL, aw, 3, NULL, "refused");

    const char *af[] = {"ingest", "--server", addr, "--token-file", token_file, photo_path[1], NULL};
    expect_run(NULL, af, 0, NULL, NULL);

    const char *env[] = {"UMGDB_AUTH_TOKEN=s3cret-token-0123456", NULL};
    const char *ae[] = {"stats", "--server", addr, "--json", NULL};
    r = run_env(env, ae);
    TU_EXPECT_EXIT(r, 0);
    json_t *j = tu_json_parse(r.out);
    assert_int_equal(json_integer_value(json_object_get(j, "images")), 1);
    json_decref(j);
    tu_result_free(&r);

    /* A token file that does not exist is an error, not "no token". */
    const char *an[] = {"stats", "--server", addr, "--token-file", "/nonexistent/token", NULL};
    expect_run(NULL, an, 3, NULL, "/nonexistent/token");
    stop_other(&other);
}

/* The server drops the connection in the middle of a run (here: a photo
 * over its --max-frame, which it answers with too_large and a close): the
 * client says so and exits 3 rather than hang or claim success. */
static void test_connection_lost(void **state)
{
    (void)state;
    ts_server other;
    const char *extra[] = {"--max-frame", "64K", "--log-level", "warn", NULL};
    start_other(&other, "umg-cli-frames-", extra);
    const char *addr = other.addr;
    const char *a[] = {"ingest", "--server", addr, "--jobs", "1", photo_path[1], NULL};   /* 139 KB */
    tu_result r = run(a);
    TU_EXPECT_EXIT(r, 3);
    assert_non_null(strstr(r.err, "umgdb ingest: lost the connection to the server at"));
    /* sent, and the server closed before answering: it cannot tell whether it was stored */
    assert_non_null(strstr(r.out, "1 sent without an answer"));
    tu_result_free(&r);
    stop_other(&other);
}

/* The data survive a restart of the server (SIGTERM, exit 0, start again). */
static void test_restart(void **state)
{
    (void)state;
    assert_int_equal(ts_stop(&srv), 0);
    const char *extra[] = {"--allow-root", photos, "--log-level", "warn", NULL};
    ts_start_ok(&srv, extra);
    const char *a[] = {"ingest", "--server", server_addr, "--json", photos, NULL};
    json_t *j = run_json(a);
    assert_int_equal(json_integer_value(json_object_get(j, "unchanged")), N_PHOTOS);
    json_decref(j);
}

int main(void)
{
    /* The servers (children) and the client runs must not see the caller's. */
    unsetenv("UMGDB_AUTH_TOKEN");
    unsetenv("UMGDB_SERVER");
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ingest),
        cmocka_unit_test(test_ingest_long_lists),
        cmocka_unit_test(test_ingest_progress_bar),
        cmocka_unit_test(test_ingest_by_path),
        cmocka_unit_test(test_query_json_and_table),
        cmocka_unit_test(test_query_scores_match_embed),
        cmocka_unit_test(test_query_filters),
        cmocka_unit_test(test_query_regions_html),
        cmocka_unit_test(test_query_heatmap),
        cmocka_unit_test(test_query_refine),
        cmocka_unit_test(test_query_like),
        cmocka_unit_test(test_get_stats_delete),
        cmocka_unit_test(test_relative_paths),
        cmocka_unit_test(test_ingest_mtime),
        cmocka_unit_test(test_ingest_formats),
        cmocka_unit_test(test_query_filter_note),
        cmocka_unit_test(test_ingest_interrupt),
        cmocka_unit_test(test_usage_errors),
        cmocka_unit_test(test_server_down),
        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_connection_lost),
        cmocka_unit_test(test_restart),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
