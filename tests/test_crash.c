/* test_crash.c - durability of the data directory: SIGKILL at random moments,
 * corrupt snapshots, read-only and full filesystems. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "db.h"
#include "test_util.h"
#include "umg_error.h"

#define DIM 48
#define NREG 2
#define ROUNDS 24

static const uint8_t FP[32] = { 0xc0, 0xff, 0xee };

/* The vector of a path's image (r = 0) or region r: a function of the path,
 * so the parent can check what the child stored. */
static void vec_for(const char *path, int r, float *v)
{
    uint64_t h = 1469598103934665603ull;
    for (const char *p = path; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    h ^= (uint64_t)(r + 1) * 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < DIM; i++) {
        h ^= h << 13, h ^= h >> 7, h ^= h << 17;
        v[i] = (float)((h >> 11) * (1.0 / 9007199254740992.0)) - 0.5f;
    }
}

typedef struct logcount {
    int lines;
    int rebuilds;
    char last[768];
} logcount;

static void count_log(void *ud, int level, const char *msg)
{
    logcount *l = ud;
    (void)level;
    l->lines++;
    l->rebuilds += strstr(msg, "rebuilding") != NULL;
    snprintf(l->last, sizeof l->last, "%s", msg);
}

static db_options options(logcount *lc)
{
    db_options o = db_options_default();
    o.fingerprint = FP;
    o.model_name = "crash-model";
    o.dim = DIM;
    o.log = count_log;
    o.log_ud = lc;
    return o;
}

static int put_path(db_t *db, const char *path, uint64_t *id, size_t extra_len)
{
    float v[1 + NREG][DIM];
    db_region_in regs[NREG];
    memset(regs, 0, sizeof regs);
    for (int r = 0; r <= NREG; r++)
        vec_for(path, r, v[r]);
    for (int r = 0; r < NREG; r++) {
        regs[r].box[2] = regs[r].box[3] = 10.0f * (r + 1);
        regs[r].method = "crash";
        regs[r].vector = v[1 + r];
    }
    static uint8_t blob[1 << 16];
    db_extra_in ex = { "patch_tokens", blob, extra_len };
    db_image_in in = { .path = path, .width = 1, .height = 1, .vector = v[0], .regions = regs,
                       .n_regions = NREG, .extras = &ex, .n_extras = extra_len ? 1 : 0 };
    in.sha256[0] = (uint8_t)strlen(path);
    return db_put_image(db, &in, id, NULL);
}

/* Child: put forever, report each acknowledged id; delete some, announcing
 * each delete before it starts and confirming after. */
enum { MSG_PUT = 1, MSG_DEL_BEGIN = 2, MSG_DEL_DONE = 3 };
typedef struct msg {
    uint32_t type;
    uint32_t round;
    uint64_t id;
    uint32_t seqno;
} msg;

static void child(const char *dir, int fd, int round)
{
    logcount lc = { 0 };
    db_options o = options(&lc);
    db_t *db;
    if (db_open(dir, &o, &db)) {
        fprintf(stderr, "child open: %s\n", umg_err_msg());
        _exit(2);
    }
    uint64_t prev[8] = { 0 };
    for (uint32_t i = 0;; i++) {
        char path[64];
        snprintf(path, sizeof path, "/crash/%d/%u.jpg", round, i);
        uint64_t id;
        if (put_path(db, path, &id, 64)) {
            fprintf(stderr, "child put: %s\n", umg_err_msg());
            _exit(3);
        }
        msg m = { MSG_PUT, (uint32_t)round, id, i };
        if (write(fd, &m, sizeof m) != sizeof m)
            _exit(4);
        prev[i % 8] = id;
        if (i % 7 == 6) {
            uint64_t victim = prev[(i + 3) % 8];
            msg b = { MSG_DEL_BEGIN, (uint32_t)round, victim, i };
            if (write(fd, &b, sizeof b) != sizeof b)
                _exit(4);
            int rc = db_delete_image(db, victim);
            if (rc && rc != UMG_ENOENT) {
                fprintf(stderr, "child delete: %s\n", umg_err_msg());
                _exit(5);
            }
            msg d = { MSG_DEL_DONE, (uint32_t)round, victim, i };
            if (write(fd, &d, sizeof d) != sizeof d)
                _exit(4);
        }
        if (i % 8 == 5 && db_checkpoint(db)) {
            fprintf(stderr, "child checkpoint: %s\n", umg_err_msg());
            _exit(6);
        }
    }
}

typedef struct ledger {
    uint64_t *id;
    char (*path)[64];
    uint8_t *state; /* 1 live, 2 delete in flight, 3 deleted */
    size_t n, cap;
} ledger;

static size_t ledger_find(ledger *l, uint64_t id)
{
    for (size_t i = l->n; i-- > 0;)
        if (l->id[i] == id)
            return i;
    return (size_t)-1;
}

/* Every live acknowledged image is complete and searchable; deleted ones are
 * gone; nothing half-written exists; LMDB and FAISS agree. */
static void verify(const char *dir, ledger *l, int round)
{
    logcount lc = { 0 };
    db_options o = options(&lc);
    db_t *db;
    char snap[2][300];
    snprintf(snap[0], sizeof snap[0], "%s/images.faiss", dir);
    snprintf(snap[1], sizeof snap[1], "%s/regions.faiss", dir);
    int have_snapshots = !access(snap[0], F_OK) && !access(snap[1], F_OK);
    int rc = db_open(dir, &o, &db);
    if (rc)
        fail_msg("round %d: reopen failed: %s", round, umg_err_msg());
    /* a kill mid-checkpoint leaves the previous snapshots whole, and
     * snapshot + log replay must reproduce LMDB without a rebuild */
    if (have_snapshots && lc.rebuilds)
        fail_msg("round %d: unexpected rebuild: %s", round, lc.last);
    db_stats st;
    assert_int_equal(db_stats_get(db, &st), 0);
    assert_int_equal(st.index_images, st.images);
    assert_int_equal(st.index_regions, st.regions);
    assert_int_equal(st.regions, st.images * NREG);
    /* the same newest ids too; and the killed child's directory lock died
     * with it (flock), or this open would have been refused */
    if (!st.consistent)
        fail_msg("round %d: indexes disagree with LMDB: %s", round, st.mismatch);

    size_t live = 0;
    for (size_t i = 0; i < l->n; i++) {
        db_image img;
        rc = db_get_image(db, l->id[i], &img);
        if (l->state[i] == 3) {
            assert_int_equal(rc, UMG_ENOENT);
            continue;
        }
        if (l->state[i] == 2) { /* the kill came during the delete: either way */
            l->state[i] = rc == UMG_ENOENT ? 3 : 1;
            if (rc == UMG_ENOENT)
                continue;
        }
        if (rc)
            fail_msg("round %d: acknowledged image %llu lost: %s", round, (unsigned long long)l->id[i],
                     umg_err_msg());
        assert_string_equal(img.path, l->path[i]);
        db_image_free(&img);
        live++;
        float v[DIM], want[DIM];
        assert_int_equal(db_get_vector(db, DB_KIND_IMAGE, l->id[i], v), 0);
        vec_for(l->path[i], 0, want);
        double dot = 0, nw = 0;
        for (int j = 0; j < DIM; j++)
            dot += v[j] * want[j], nw += want[j] * want[j];
        assert_true(dot / sqrt(nw) > 0.999);
        db_hit h;
        int n;
        assert_int_equal(db_search(db, DB_KIND_IMAGE, want, NULL, &h, 1, &n), 0);
        assert_int_equal(n, 1);
        assert_int_equal(h.id, l->id[i]);
        vec_for(l->path[i], 2, want);
        assert_int_equal(db_search(db, DB_KIND_REGION, want, NULL, &h, 1, &n), 0);
        db_region reg;
        assert_int_equal(db_get_region(db, h.id, &reg), 0);
        assert_int_equal(reg.image_id, l->id[i]);
    }

    /* No half-written image anywhere; at most one image this round was
     * committed without being acknowledged (the put in flight at the kill). */
    uint64_t ids[256], after = 0;
    int n, unacked = 0;
    do {
        assert_int_equal(db_list_images(db, after, ids, 256, &n), 0);
        for (int i = 0; i < n; i++) {
            db_region *regs;
            int nr;
            assert_int_equal(db_list_regions(db, ids[i], &regs, &nr), 0);
            assert_int_equal(nr, NREG);
            float v[DIM];
            assert_int_equal(db_get_vector(db, DB_KIND_IMAGE, ids[i], v), 0);
            for (int r = 0; r < nr; r++)
                assert_int_equal(db_get_vector(db, DB_KIND_REGION, regs[r].id, v), 0);
            free(regs);
            after = ids[i];
            if (ledger_find(l, ids[i]) == (size_t)-1) {
                db_image img;
                assert_int_equal(db_get_image(db, ids[i], &img), 0);
                char prefix[32];
                snprintf(prefix, sizeof prefix, "/crash/%d/", round);
                assert_true(!strncmp(img.path, prefix, strlen(prefix)));
                assert_true(l->n < l->cap);
                l->id[l->n] = ids[i];
                snprintf(l->path[l->n], sizeof l->path[0], "%s", img.path);
                l->state[l->n++] = 1;
                db_image_free(&img);
                unacked++;
                live++;
            }
        }
    } while (n == 256);
    assert_true(unacked <= 1);
    assert_int_equal(st.images, live);
    db_close(db);
}

static void test_sigkill_rounds(void **state)
{
    (void)state;
    char dir[64];
    assert_non_null(tu_mkdtemp(dir, sizeof dir, "umg_test_crash_"));
    ledger l = { 0 };
    l.cap = 1 << 16;
    l.id = calloc(l.cap, sizeof *l.id);
    l.path = calloc(l.cap, sizeof *l.path);
    l.state = calloc(l.cap, 1);
    srand((unsigned)time(NULL));
    size_t total_acked = 0;
    for (int round = 0; round < ROUNDS; round++) {
        int fds[2];
        assert_int_equal(pipe(fds), 0);
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            close(fds[0]);
            child(dir, fds[1], round);
            _exit(0);
        }
        close(fds[1]);
        /* random moment: 20..220 ms in (after open, mid-put, mid-checkpoint) */
        usleep((useconds_t)(20000 + rand() % 200000));
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL))
            fail_msg("round %d: child exited by itself (status %d)", round, status);
        msg m;
        ssize_t r;
        while ((r = read(fds[0], &m, sizeof m)) == (ssize_t)sizeof m) {
            if (m.type == MSG_PUT) {
                assert_true(l.n < l.cap);
                l.id[l.n] = m.id;
                snprintf(l.path[l.n], sizeof l.path[0], "/crash/%u/%u.jpg", m.round, m.seqno);
                l.state[l.n++] = 1;
                total_acked++;
            } else {
                size_t at = ledger_find(&l, m.id);
                if (at != (size_t)-1)
                    l.state[at] = m.type == MSG_DEL_BEGIN ? 2 : 3;
            }
        }
        close(fds[0]);
        verify(dir, &l, round);
    }
    print_message("%d SIGKILL rounds, %zu acknowledged puts, all present\n", ROUNDS, total_acked);
    assert_true(total_acked > (size_t)ROUNDS); /* the child did real work */
    free(l.id);
    free(l.path);
    free(l.state);
    tu_rm_rf(dir);
}

/* ---- corruption ---- */

static void fill(const char *dir, int n, int checkpoint)
{
    logcount lc = { 0 };
    db_options o = options(&lc);
    db_t *db;
    assert_int_equal(db_open(dir, &o, &db), 0);
    for (int i = 0; i < n; i++) {
        char p[64];
        snprintf(p, sizeof p, "/c/%d.jpg", i);
        assert_int_equal(put_path(db, p, NULL, 0), 0);
        if (checkpoint && i == n / 2)
            assert_int_equal(db_checkpoint(db), 0);
    }
    db_close(db);
}

static void expect_rebuild(const char *dir, int n, const char *why)
{
    logcount lc = { 0 };
    db_options o = options(&lc);
    db_t *db;
    int rc = db_open(dir, &o, &db);
    if (rc)
        fail_msg("%s: open failed: %s", why, umg_err_msg());
    assert_true(lc.lines >= 1); /* the rebuild was logged */
    assert_non_null(strstr(lc.last, "rebuilding"));
    db_stats st;
    assert_int_equal(db_stats_get(db, &st), 0);
    assert_int_equal(st.images, (uint64_t)n);
    assert_int_equal(st.index_images, (uint64_t)n);
    assert_int_equal(st.index_regions, (uint64_t)n * NREG);
    float v[DIM];
    vec_for("/c/3.jpg", 0, v);
    db_hit h;
    int k;
    assert_int_equal(db_search(db, DB_KIND_IMAGE, v, NULL, &h, 1, &k), 0);
    uint64_t id;
    assert_int_equal(db_find_path(db, "/c/3.jpg", &id), 0);
    assert_int_equal(h.id, id);
    db_close(db);
}

static void test_corrupt_snapshots(void **state)
{
    (void)state;
    char dir[64];
    assert_non_null(tu_mkdtemp(dir, sizeof dir, "umg_test_snap_"));
    char snap[128];
    snprintf(snap, sizeof snap, "%s/images.faiss", dir);
    fill(dir, 30, 1);

    /* truncated */
    struct stat st;
    assert_int_equal(stat(snap, &st), 0);
    assert_int_equal(truncate(snap, st.st_size / 2), 0);
    expect_rebuild(dir, 30, "truncated");

    /* garbage */
    int fd = open(snap, O_WRONLY | O_TRUNC);
    for (int i = 0; i < 300; i++)
        assert_int_equal(write(fd, "garbage!", 8), 8);
    close(fd);
    expect_rebuild(dir, 30, "garbage");

    /* missing */
    unlink(snap);
    expect_rebuild(dir, 30, "missing");

    /* stale: a snapshot older than the pruned log */
    char old[160];
    snprintf(old, sizeof old, "%s.old", snap);
    {
        logcount lc = { 0 };
        db_options o = options(&lc);
        db_t *db;
        assert_int_equal(db_open(dir, &o, &db), 0);
        assert_int_equal(db_checkpoint(db), 0);
        assert_int_equal(rename(snap, old), 0);
        for (int i = 30; i < 40; i++) {
            char p[64];
            snprintf(p, sizeof p, "/c/%d.jpg", i);
            assert_int_equal(put_path(db, p, NULL, 0), 0);
        }
        assert_int_equal(db_checkpoint(db), 0); /* prunes the log past old */
        db_close(db);
        assert_int_equal(rename(old, snap), 0);
    }
    expect_rebuild(dir, 40, "stale");
    tu_rm_rf(dir);
}

/* ---- filesystems ---- */

/* A fresh directory /tmp/<prefix>XXXXXX (into dir) with a tmpfs mounted on
 * it (mount options opts); skips the test where that cannot be mounted. */
static void mount_tmpfs(char *dir, size_t size, const char *prefix, const char *opts)
{
    assert_non_null(tu_mkdtemp(dir, size, prefix));
    if (mount("tmpfs", dir, "tmpfs", 0, opts)) {
        print_message("skipping: cannot mount tmpfs on %s: %s\n", dir, strerror(errno));
        rmdir(dir);
        skip();
    }
}

static void test_read_only_fs(void **state)
{
    (void)state;
    char dir[64];
    mount_tmpfs(dir, sizeof dir, "umg_test_rofs_", "size=8m");
    char data[128];
    snprintf(data, sizeof data, "%s/data", dir);
    fill(data, 5, 1);
    assert_int_equal(mount("tmpfs", dir, "tmpfs", MS_REMOUNT | MS_RDONLY, "size=8m"), 0);
    logcount lc = { 0 };
    db_options o = options(&lc);
    db_t *db = NULL;
    int rc = db_open(data, &o, &db);
    assert_int_equal(rc, UMG_EPERM);
    assert_null(db);
    print_message("read-only: %s\n", umg_err_msg());
    assert_non_null(strstr(umg_err_msg(), "read-only"));
    o.read_only = 1; /* reading still works */
    assert_int_equal(db_open(data, &o, &db), 0);
    db_stats st;
    assert_int_equal(db_stats_get(db, &st), 0);
    assert_int_equal(st.images, 5);
    assert_int_equal(st.index_images, 5);
    db_close(db);
    umount(dir);
    rmdir(dir);
}

static void test_disk_full(void **state)
{
    (void)state;
    char dir[64];
    mount_tmpfs(dir, sizeof dir, "umg_test_full_", "size=1m");
    char data[128];
    snprintf(data, sizeof data, "%s/data", dir);
    logcount lc = { 0 };
    db_options o = options(&lc);
    db_t *db;
    assert_int_equal(db_open(data, &o, &db), 0);
    char acked[200][64];
    int n = 0, rc = 0;
    for (int i = 0; i < 200; i++) {
        snprintf(acked[n], sizeof acked[n], "/full/%d.jpg", i);
        rc = put_path(db, acked[n], NULL, 30000);
        if (rc)
            break;
        n++;
    }
    print_message("disk full after %d images: %s\n", n, umg_err_msg());
    assert_int_equal(rc, UMG_ENOSPC);
    assert_true(n > 3);
    /* a checkpoint on the full disk fails cleanly too */
    rc = db_checkpoint(db);
    assert_true(rc == 0 || rc == UMG_ENOSPC);
    db_close(db);
    /* every acknowledged image survived, the failed one is absent */
    assert_int_equal(db_open(data, &o, &db), 0);
    db_stats st;
    assert_int_equal(db_stats_get(db, &st), 0);
    assert_int_equal(st.images, (uint64_t)n);
    assert_int_equal(st.index_images, (uint64_t)n);
    for (int i = 0; i < n; i++) {
        uint64_t id;
        assert_int_equal(db_find_path(db, acked[i], &id), 0);
    }
    uint64_t id;
    char failed[64];
    snprintf(failed, sizeof failed, "/full/%d.jpg", n);
    assert_int_equal(db_find_path(db, failed, &id), UMG_ENOENT);
    db_close(db);
    umount(dir);
    rmdir(dir);
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sigkill_rounds),
        cmocka_unit_test(test_corrupt_snapshots),
        cmocka_unit_test(test_read_only_fs),
        cmocka_unit_test(test_disk_full),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
