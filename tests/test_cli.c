/* test_cli.c - the client subcommands (ingest, query, stats, get, delete) run
 * as real processes (env UMG_BIN) against the real server (`umgdb serve`,
 * started here on a temporary data directory with tests/fixtures/clip-tiny,
 * on a Unix socket).  The tests run in order and build on each other: the
 * first ingests the photos the later ones search, get and delete. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "test_util.h"

#define TINY UMG_FIXTURES_DIR "/clip-tiny"

static const char *const photo_names[] = {"astronaut.png", "camera.png", "chelsea.png",
                                          "coffee.png", "motorcycle_left.png", "rocket.jpg"};
#define N_PHOTOS 6

/* Everything lives under root (a fresh mkdtemp directory, resolved). */
static char root[256], sock[320], data[320], photos[320], bad[320], outside[320], token_file[320];
static char photo_path[N_PHOTOS][400];   /* absolute path of each photo as ingested */
static pid_t server = -1;

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

static char server_addr[400];

static bool can_connect(const char *path)
{
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0)
        return false;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    bool ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
    close(fd);
    return ok;
}

/* Start `umgdb serve` on the Unix socket sockpath, data directory dir, with
 * extra args (NULL-terminated, may be NULL); wait until it accepts. */
static pid_t start_server(const char *dir, const char *sockpath, const char *const *extra)
{
    const char *argv[32] = {tu_bin(), "serve", "--data", dir, "--model", TINY, "--socket", sockpath,
                            "--threads", "1", "--log-level", "warn"};
    int n = 12;
    for (const char *const *e = extra; e && *e; e++)
        argv[n++] = *e;
    argv[n] = NULL;
    char logp[400];
    snprintf(logp, sizeof logp, "%s/server-%d.log", root, (int)time(NULL) ^ rand());
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        unsetenv("UMGDB_AUTH_TOKEN");
        int log = open(logp, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (log >= 0) {
            dup2(log, 1);
            dup2(log, 2);
        }
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    for (int i = 0; i < 600; i++) {   /* up to 30 s (sanitizer builds start slowly) */
        if (can_connect(sockpath))
            return pid;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            char cmd[500];
            snprintf(cmd, sizeof cmd, "cat %s >&2", logp);
            if (system(cmd)) {
            }
            fail_msg("umgdb serve exited (status %d) before accepting connections", st);
        }
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    fail_msg("umgdb serve did not accept connections on %s within 30 s", sockpath);
    return -1;
}

/* SIGTERM, and the server must exit 0 (it persists and stops cleanly). */
static void stop_server(pid_t pid)
{
    if (pid <= 0)
        return;
    kill(pid, SIGTERM);
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
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
    char tmpl[64];
    assert_non_null(tu_mkdtemp(tmpl, sizeof tmpl, "umg-cli-"));
    char *real = realpath(tmpl, NULL);
    assert_non_null(real);
    snprintf(root, sizeof root, "%s", real);
    free(real);
    snprintf(sock, sizeof sock, "%s/umgdb.sock", root);
    snprintf(data, sizeof data, "%s/data", root);
    snprintf(photos, sizeof photos, "%s/photos", root);
    snprintf(bad, sizeof bad, "%s/bad", root);
    snprintf(outside, sizeof outside, "%s/outside", root);
    snprintf(token_file, sizeof token_file, "%s/token", root);
    snprintf(server_addr, sizeof server_addr, "unix:%s", sock);
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
    write_text(token_file, "s3cret-token\n");

    const char *extra[] = {"--allow-root", photos, NULL};
    server = start_server(data, sock, extra);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    if (server > 0) {
        kill(server, SIGTERM);
        waitpid(server, NULL, 0);
    }
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
    /* First run: six photos, the text file skipped, the hidden directory not walked. */
    const char *a1[] = {"ingest", "--server", server_addr, "--json", "--tags", "fixture,first", photos, NULL};
    json_t *j = run_json(a1);
    assert_int_equal(json_integer_value(json_object_get(j, "photos")), N_PHOTOS);
    assert_int_equal(json_integer_value(json_object_get(j, "ingested")), N_PHOTOS);
    assert_int_equal(json_integer_value(json_object_get(j, "unchanged")), 0);
    assert_int_equal(json_integer_value(json_object_get(j, "failed")), 0);
    assert_int_equal(json_integer_value(json_object_get(j, "skipped")), 1);
    assert_int_equal(json_array_size(json_object_get(j, "failures")), 0);
    json_decref(j);

    /* Second run, plain summary (stderr is not a terminal: no progress bar):
     * nothing changed, so everything is reported unchanged. */
    const char *a2[] = {"ingest", "--server", server_addr, "-j", "3", photos, NULL};
    tu_result r = run(a2);
    TU_EXPECT_EXIT(r, 0);
    assert_non_null(strstr(r.out, "6 photos: 0 ingested"));
    assert_non_null(strstr(r.out, "6 unchanged, 0 failed"));
    assert_non_null(strstr(r.out, "1 other file skipped"));
    assert_null(strchr(r.err, '\r'));   /* no progress bar drawn */
    tu_result_free(&r);

    /* A broken photo and a missing path fail, are listed with a reason, and
     * do not stop the others; exit 1 with the count. */
    char missing[400];
    snprintf(missing, sizeof missing, "%s/no-such-dir", root);
    const char *a3[] = {"ingest", "--server", server_addr, photos, bad, missing, NULL};
    r = run(a3);
    TU_EXPECT_EXIT(r, 1);
    assert_non_null(strstr(r.out, "7 photos: 0 ingested"));
    assert_non_null(strstr(r.out, "6 unchanged, 1 failed"));
    assert_non_null(strstr(r.err, "broken.jpg: "));
    assert_non_null(strstr(r.err, "no-such-dir: No such file or directory"));
    assert_non_null(strstr(r.err, "2 of 8 files failed"));
    tu_result_free(&r);
}

/* On a terminal (stderr a pty), ingest draws a progress bar redrawn in place:
 * count/total, images/s, ETA, and erases it before the summary. */
static void test_ingest_progress_bar(void **state)
{
    (void)state;
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    assert_true(master >= 0);
    assert_int_equal(grantpt(master), 0);
    assert_int_equal(unlockpt(master), 0);
    char *slave_name = ptsname(master);
    assert_non_null(slave_name);
    int slave = open(slave_name, O_RDWR | O_NOCTTY);
    assert_true(slave >= 0);
    char outp[] = "/tmp/umg-cli-out-XXXXXX";
    int fo = mkstemp(outp);
    assert_true(fo >= 0);
    unlink(outp);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(master);
        dup2(fo, 1);
        dup2(slave, 2);
        unsetenv("UMGDB_SERVER");
        unsetenv("UMGDB_AUTH_TOKEN");
        execl(tu_bin(), tu_bin(), "ingest", "--server", server_addr, photos, (char *)NULL);
        _exit(127);
    }
    close(slave);
    /* Read the terminal until the child closes it (EIO once no writer is left). */
    size_t cap = 1 << 16, n = 0;
    char *tty = malloc(cap);
    assert_non_null(tty);
    for (;;) {
        ssize_t got = read(master, tty + n, cap - n - 1);
        if (got <= 0)
            break;
        n += (size_t)got;
        if (n + 1 >= cap) {
            tty = realloc(tty, cap *= 2);
            assert_non_null(tty);
        }
    }
    tty[n] = 0;
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    close(master);
    assert_true(WIFEXITED(st));
    assert_int_equal(WEXITSTATUS(st), 0);
    char *out = tu_read_fd(fo, NULL);
    close(fo);
    assert_non_null(strstr(tty, "\r[########################] 6/6 100%"));
    assert_non_null(strstr(tty, " img/s  ETA "));
    assert_non_null(strstr(tty, "0/6   0%"));
    /* the bar is erased at the end: the last thing on the terminal is a blank line and \r */
    assert_true(n >= 2 && tty[n - 1] == '\r' && tty[n - 2] == ' ');
    assert_non_null(strstr(out, "6 photos: 0 ingested"));
    free(out);
    free(tty);
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
    for (size_t i = 0; i < 2; i++) {
        json_t *hm = json_object_get(json_array_get(hits, i), "heatmap");
        assert_non_null(hm);
        json_int_t g = json_integer_value(json_object_get(hm, "grid"));
        assert_true(g > 0);
        assert_int_equal(json_array_size(json_object_get(hm, "values")), (size_t)(g * g));
        cells += (size_t)(g * g);
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
    free(html);

    const char *t[] = {"query", "--server", server_addr, "--heatmap", "-k", "2", "a cat", NULL};
    expect_run(NULL, t, 0, "heatmap peak (x,y)", NULL);
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
    char d2[400], s2[400], addr[420];
    snprintf(d2, sizeof d2, "%s/data-auth", root);
    snprintf(s2, sizeof s2, "%s/auth.sock", root);
    snprintf(addr, sizeof addr, "unix:%s", s2);
    const char *extra[] = {"--auth-token-file", token_file, "--require-auth", NULL};
    pid_t pid = start_server(d2, s2, extra);

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

    const char *env[] = {"UMGDB_AUTH_TOKEN=s3cret-token", NULL};
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
    stop_server(pid);
}

/* The server drops the connection in the middle of a run (here: a photo
 * over its --max-frame, which it answers with too_large and a close): the
 * client says so and exits 3 rather than hang or claim success. */
static void test_connection_lost(void **state)
{
    (void)state;
    char d3[400], s3[400], addr[420];
    snprintf(d3, sizeof d3, "%s/data-small-frames", root);
    snprintf(s3, sizeof s3, "%s/small.sock", root);
    snprintf(addr, sizeof addr, "unix:%s", s3);
    const char *extra[] = {"--max-frame", "64K", NULL};
    pid_t pid = start_server(d3, s3, extra);
    const char *a[] = {"ingest", "--server", addr, "--jobs", "1", photo_path[1], NULL};   /* 139 KB */
    tu_result r = run(a);
    TU_EXPECT_EXIT(r, 3);
    assert_non_null(strstr(r.err, "umgdb ingest: lost the connection to the server at"));
    assert_non_null(strstr(r.out, "1 not sent"));
    tu_result_free(&r);
    stop_server(pid);
}

/* The data survive a restart of the server (SIGTERM, exit 0, start again). */
static void test_restart(void **state)
{
    (void)state;
    stop_server(server);
    const char *extra[] = {"--allow-root", photos, NULL};
    server = start_server(data, sock, extra);
    const char *a[] = {"ingest", "--server", server_addr, "--json", photos, NULL};
    json_t *j = run_json(a);
    assert_int_equal(json_integer_value(json_object_get(j, "unchanged")), N_PHOTOS);
    json_decref(j);
}

int main(void)
{
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ingest),
        cmocka_unit_test(test_ingest_progress_bar),
        cmocka_unit_test(test_ingest_by_path),
        cmocka_unit_test(test_query_json_and_table),
        cmocka_unit_test(test_query_scores_match_embed),
        cmocka_unit_test(test_query_filters),
        cmocka_unit_test(test_query_regions_html),
        cmocka_unit_test(test_query_heatmap),
        cmocka_unit_test(test_get_stats_delete),
        cmocka_unit_test(test_usage_errors),
        cmocka_unit_test(test_server_down),
        cmocka_unit_test(test_auth),
        cmocka_unit_test(test_connection_lost),
        cmocka_unit_test(test_restart),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
