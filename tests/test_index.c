/* test_index.c - the FAISS wrapper on real FAISS indexes and snapshot files. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "idx.h"
#include "test_util.h"
#include "umg_error.h"

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(void) { return tu_frand(&rng); }
static void normalize(float *v, int d)
{
    double s = 0;
    for (int i = 0; i < d; i++)
        s += (double)v[i] * v[i];
    for (int i = 0; i < d; i++)
        v[i] = (float)(v[i] / sqrt(s));
}
/* n clustered vectors: nc random centers plus noise, normalized. */
static float *clustered(int n, int d, int nc, float noise)
{
    float *c = malloc(sizeof *c * (size_t)nc * d), *x = malloc(sizeof *x * (size_t)n * d);
    for (int i = 0; i < nc * d; i++)
        c[i] = frand();
    for (int i = 0; i < n; i++) {
        int k = (int)((frand() + 1) * 0.5f * nc) % nc;
        for (int j = 0; j < d; j++)
            x[(size_t)i * d + j] = c[k * d + j] + noise * frand();
        normalize(x + (size_t)i * d, d);
    }
    free(c);
    return x;
}

static void test_auto_factory(void **state)
{
    (void)state;
    char b[64];
    assert_string_equal(idx_auto_factory(512, 1000, 50000, b, sizeof b), "Flat");
    assert_string_equal(idx_auto_factory(512, 1000000, 50000, b, sizeof b), "IVF1024,PQ64np");
    assert_string_equal(idx_auto_factory(512, 60000, 50000, b, sizeof b), "IVF256,PQ64np");
    /* a small threshold never asks FAISS to train on fewer than 256 vectors (a build that would fail) */
    assert_string_equal(idx_auto_factory(512, 208, 200, b, sizeof b), "Flat");
    assert_string_equal(idx_auto_factory(512, 256, 200, b, sizeof b), "IVF256,PQ64np");
    assert_string_equal(idx_auto_factory(33, 1000000, 50000, b, sizeof b), "IVF1024,SQ8");
    assert_string_equal(idx_auto_factory(512, 100000000ull, 50000, b, sizeof b), "IVF16384,PQ64np");
}

static void test_flat(void **state)
{
    (void)state;
    enum { D = 16, N = 200 };
    idx_index *ix;
    assert_int_equal(idx_create(D, NULL, &ix), 0);
    assert_true(idx_is_exact(ix));
    assert_false(idx_needs_training(ix));
    int64_t ids[N];
    float sc[N];
    int n;
    float *x = clustered(N, D, 10, 0.5f);
    assert_int_equal(idx_search(ix, x, 5, ids, sc, &n), 0);
    assert_int_equal(n, 0); /* empty */
    int64_t lab[N];
    for (int i = 0; i < N; i++)
        lab[i] = 1000 + 7 * i; /* ids unrelated to positions */
    assert_int_equal(idx_add(ix, N, x, lab), 0);
    assert_int_equal(idx_count(ix), N);
    for (int i = 0; i < N; i += 17) {
        assert_int_equal(idx_search(ix, x + i * D, 3, ids, sc, &n), 0);
        assert_int_equal(n, 3);
        assert_int_equal(ids[0], lab[i]);
        assert_true(fabsf(sc[0] - 1.0f) < 1e-4f && sc[1] <= sc[0]);
    }
    /* more than stored: only the valid ones */
    float *big = malloc(sizeof *big * 300);
    int64_t *bid = malloc(sizeof *bid * 300);
    assert_int_equal(idx_search(ix, x, 300, bid, big, &n), 0);
    assert_int_equal(n, N);
    int64_t gone[2] = { lab[3], 424242 };
    int64_t removed;
    assert_int_equal(idx_remove(ix, 2, gone, &removed), 0);
    assert_int_equal(removed, 1);
    assert_int_equal(idx_search(ix, x + 3 * D, 300, bid, big, &n), 0);
    assert_int_equal(n, N - 1);
    for (int i = 0; i < n; i++)
        assert_true(bid[i] != lab[3]);
    free(big);
    free(bid);
    free(x);
    idx_close(ix);
    idx_close(NULL);
}

static void test_bad_factory(void **state)
{
    (void)state;
    idx_index *ix = (idx_index *)1;
    assert_int_equal(idx_create(16, "NoSuchIndex42", &ix), UMG_EINDEX);
    assert_null(ix);
    assert_non_null(strstr(umg_err_msg(), "faiss"));
    assert_int_equal(idx_create(0, NULL, &ix), UMG_EINVAL);
    /* adding to an untrained index is an error, not a crash */
    assert_int_equal(idx_create(16, "IVF8,Flat", &ix), 0);
    float v[16] = { 1 };
    int64_t id = 1;
    assert_int_equal(idx_add(ix, 1, v, &id), UMG_EINDEX);
    idx_close(ix);
}

typedef struct store {
    const float *x;
    int d;
    int64_t base;
} store;

static int get_vec(void *ud, int64_t id, float *out)
{
    store *s = ud;
    memcpy(out, s->x + (id - s->base) * s->d, sizeof *out * (size_t)s->d);
    return 0;
}

static double recall(idx_index *ix, idx_index *exact, const float *q, int nq, int d, store *s, int rerank)
{
    int64_t a[10], b[10];
    float sa[10], sb[10];
    int na, nb, hit = 0;
    for (int i = 0; i < nq; i++) {
        idx_search(exact, q + (size_t)i * d, 10, b, sb, &nb);
        if (rerank)
            idx_search_rerank(ix, q + (size_t)i * d, 10, 100, get_vec, s, a, sa, &na);
        else
            idx_search(ix, q + (size_t)i * d, 10, a, sa, &na);
        for (int j = 0; j < na; j++)
            for (int k = 0; k < nb; k++)
                hit += a[j] == b[k];
    }
    return hit / (10.0 * nq);
}

static void test_ivfpq_rerank_and_snapshot(void **state)
{
    (void)state;
    enum { D = 64, N = 6000, NQ = 50 };
    float *x = clustered(N, D, 40, 0.6f);
    float *q = clustered(NQ, D, 40, 0.6f);
    int64_t *lab = malloc(sizeof *lab * N);
    for (int i = 0; i < N; i++)
        lab[i] = 50 + i;
    store s = { x, D, 50 };
    idx_index *ix, *exact;
    assert_int_equal(idx_create(D, "IVF32,PQ16np", &ix), 0);
    assert_false(idx_is_exact(ix));
    assert_true(idx_needs_training(ix));
    assert_int_equal(idx_train(ix, N, x), 0);
    assert_int_equal(idx_set_nprobe(ix, 8), 0);
    assert_int_equal(idx_add(ix, N, x, lab), 0);
    assert_int_equal(idx_create(D, "Flat", &exact), 0);
    assert_int_equal(idx_add(exact, N, x, lab), 0);
    double r_plain = recall(ix, exact, q, NQ, D, &s, 0);
    double r_rerank = recall(ix, exact, q, NQ, D, &s, 1);
    print_message("IVF32,PQ16np nprobe 8: recall@10 %.3f plain, %.3f re-ranked\n", r_plain, r_rerank);
    assert_true(r_rerank >= 0.85);
    assert_true(r_rerank > r_plain + 0.1);

    char dir[] = "/tmp/umg_test_index_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128], tmp[140];
    snprintf(path, sizeof path, "%s/r.faiss", dir);
    idx_stamp stamp = { .seq = 4242, .collection = { 7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 0xfe } };
    assert_int_equal(idx_save(ix, path, &stamp), 0);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    assert_int_equal(access(tmp, F_OK), -1); /* renamed away */
    idx_index *back;
    idx_stamp got = { 0 };
    assert_int_equal(idx_load(path, D, &back, &got), 0);
    assert_int_equal(got.seq, 4242);
    assert_memory_equal(got.collection, stamp.collection, IDX_COLLECTION_BYTES);
    int64_t max_id = 0, want_max = -1;
    for (int i = 0; i < N; i++)
        want_max = lab[i] > want_max ? lab[i] : want_max;
    assert_int_equal(idx_max_id(back, &max_id), 0); /* IVF: from the inverted lists */
    assert_int_equal(max_id, want_max);
    assert_string_equal(idx_factory(back), "IVF32,PQ16np");
    assert_int_equal(idx_count(back), N);
    assert_int_equal(idx_set_nprobe(back, 8), 0);
    for (int i = 0; i < 5; i++) {
        int64_t a[10], b[10];
        float sa[10], sb[10];
        int na, nb;
        idx_search(ix, q + i * D, 10, a, sa, &na);
        idx_search(back, q + i * D, 10, b, sb, &nb);
        assert_int_equal(na, nb);
        assert_memory_equal(a, b, sizeof a[0] * (size_t)na);
    }
    /* removal from IVF */
    int64_t rid = lab[10];
    assert_int_equal(idx_remove(back, 1, &rid, NULL), 0);
    int64_t a[10];
    float sa[10];
    int na;
    assert_int_equal(idx_search(back, x + 10 * D, 10, a, sa, &na), 0);
    for (int i = 0; i < na; i++)
        assert_true(a[i] != rid);
    idx_close(back);

    /* corruption: wrong dimension, flipped payload byte, truncation, garbage */
    assert_int_equal(idx_load(path, D + 1, &back, &got), UMG_EFORMAT);
    assert_null(back);
    struct stat st;
    stat(path, &st);
    FILE *f = fopen(path, "r+b");
    fseek(f, st.st_size / 2, SEEK_SET);
    int c = fgetc(f);
    fseek(f, st.st_size / 2, SEEK_SET);
    fputc(c ^ 0x55, f);
    fclose(f);
    assert_int_equal(idx_load(path, D, &back, &got), UMG_EFORMAT);
    assert_non_null(strstr(umg_err_msg(), "checksum"));
    assert_int_equal(truncate(path, st.st_size - 100), 0);
    assert_int_equal(idx_load(path, D, &back, &got), UMG_EFORMAT);
    assert_int_equal(truncate(path, 10), 0);
    assert_int_equal(idx_load(path, D, &back, &got), UMG_EFORMAT);
    f = fopen(path, "wb");
    for (int i = 0; i < 5000; i++)
        fputc((int)(frand() * 127 + 128), f);
    fclose(f);
    assert_int_equal(idx_load(path, D, &back, &got), UMG_EFORMAT);
    unlink(path);
    assert_int_equal(idx_load(path, D, &back, &got), UMG_ENOENT);
    /* saving where it cannot: error names the path, nothing half-written */
    char bad[160];
    snprintf(bad, sizeof bad, "%s/missing/r.faiss", dir);
    assert_int_equal(idx_save(ix, bad, &stamp), UMG_ENOENT);
    assert_non_null(strstr(umg_err_msg(), "missing"));
    rmdir(dir);

    idx_close(ix);
    idx_close(exact);
    free(x);
    free(q);
    free(lab);
}

static void test_hnsw_wrapped(void **state)
{
    (void)state;
    enum { D = 24, N = 500 };
    float *x = clustered(N, D, 8, 0.5f);
    int64_t lab[N];
    for (int i = 0; i < N; i++)
        lab[i] = ((int64_t)1 << 40) + i; /* large ids need the id map */
    idx_index *ix;
    assert_int_equal(idx_create(D, "HNSW16", &ix), 0);
    assert_int_equal(idx_set_nprobe(ix, 64), 0);
    assert_int_equal(idx_add(ix, N, x, lab), 0);
    int64_t ids[4];
    float sc[4];
    int n;
    assert_int_equal(idx_search(ix, x + 77 * D, 4, ids, sc, &n), 0);
    assert_int_equal(ids[0], lab[77]);
    idx_close(ix);
    free(x);
}

/* idx_snapshot_take's copy is the index as it was (db_checkpoint writes it
 * after releasing its writer mutex): changing, even closing, the index
 * before idx_snapshot_write changes nothing on disk.  5,000 x 16 floats also
 * grow the serialization buffer through several reallocs. */
static void test_snapshot_copy_is_independent(void **state)
{
    (void)state;
    enum { D = 16, N = 5000, LATE = 100 };
    float *x = clustered(N + LATE, D, 20, 0.5f);
    int64_t lab[N + LATE];
    for (int i = 0; i < N + LATE; i++)
        lab[i] = 10 + i;
    idx_index *ix;
    assert_int_equal(idx_create(D, NULL, &ix), 0);
    assert_int_equal(idx_add(ix, N, x, lab), 0);
    idx_snapshot *snap = NULL;
    idx_stamp stamp = { .seq = 77 };
    assert_int_equal(idx_snapshot_take(ix, &stamp, &snap), 0);
    /* after the copy: one removed, LATE added, then the index is gone */
    assert_int_equal(idx_remove(ix, 1, &lab[42], NULL), 0);
    assert_int_equal(idx_add(ix, LATE, x + (size_t)N * D, lab + N), 0);
    idx_close(ix);

    char dir[256], path[300];
    assert_non_null(tu_mkdtemp(dir, sizeof dir, "umg_test_index_"));
    snprintf(path, sizeof path, "%s/copy.faiss", dir);
    assert_int_equal(idx_snapshot_write(snap, path), 0);
    idx_snapshot_free(snap);
    idx_snapshot_free(NULL);
    char tmp[320];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    assert_int_equal(access(tmp, F_OK), -1); /* renamed over path */

    idx_stamp got = { .seq = 0 };
    assert_int_equal(idx_load(path, D, &ix, &got), 0);
    assert_int_equal(got.seq, 77);
    assert_int_equal(idx_count(ix), N);
    int64_t ids[1];
    float sc[1];
    int n;
    assert_int_equal(idx_search(ix, x + 42 * D, 1, ids, sc, &n), 0);
    assert_int_equal(ids[0], lab[42]); /* removed only after the copy */
    assert_int_equal(idx_search(ix, x + (size_t)(N + 5) * D, 1, ids, sc, &n), 0);
    assert_true(ids[0] != lab[N + 5]); /* added only after the copy */
    idx_close(ix);
    free(x);
    tu_rm_rf(dir);
}

/* A FIFO named like a snapshot is refused at once (it hung the open: a
 * blocking open() waits for a writer); snapshots are written 0600 whatever
 * the umask; a version 1 file (before the collection id) still loads, with
 * an all-zero id; idx_max_id of an exact index and of an empty one. */
static void test_snapshot_files(void **state)
{
    (void)state;
    enum { D = 8, N = 50 };
    char dir[256], path[300], fifo[300];
    assert_non_null(tu_mkdtemp(dir, sizeof dir, "umg_test_index_"));
    snprintf(path, sizeof path, "%s/s.faiss", dir);
    snprintf(fifo, sizeof fifo, "%s/fifo.faiss", dir);

    idx_index *ix, *back = NULL;
    assert_int_equal(idx_create(D, NULL, &ix), 0);
    int64_t max_id = 0;
    assert_int_equal(idx_max_id(ix, &max_id), 0);
    assert_int_equal(max_id, -1);
    float *x = clustered(N, D, 4, 0.3f);
    int64_t ids[N];
    for (int i = 0; i < N; i++)
        ids[i] = 1000 - 7 * i; /* the largest first: not simply the last added */
    assert_int_equal(idx_add(ix, N, x, ids), 0);
    assert_int_equal(idx_max_id(ix, &max_id), 0);
    assert_int_equal(max_id, 1000);

    mode_t old = umask(022);
    idx_stamp stamp = { .seq = 9, .collection = { 1, 2, 3 } };
    assert_int_equal(idx_save(ix, path, &stamp), 0);
    umask(old);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);

    /* version 1: the same file without the 16-byte id after the fixed fields */
    size_t len;
    char *v2 = tu_read_file(path, &len);
    enum { FIXED_V1 = 52 };
    char *v1 = malloc(len - 16);
    memcpy(v1, v2, FIXED_V1);
    memcpy(v1 + FIXED_V1, v2 + FIXED_V1 + 16, len - FIXED_V1 - 16);
    v1[8] = 1; /* version, little-endian u32 */
    tu_write_file(path, v1, len - 16);
    idx_stamp got;
    memset(&got, 0xee, sizeof got);
    assert_int_equal(idx_load(path, D, &back, &got), 0);
    assert_int_equal(got.seq, 9);
    for (int i = 0; i < IDX_COLLECTION_BYTES; i++)
        assert_int_equal(got.collection[i], 0);
    assert_int_equal(idx_count(back), N);
    idx_close(back);
    free(v1);
    free(v2);

    assert_int_equal(mkfifo(fifo, 0600), 0);
    alarm(20); /* the old code blocks in open(): fail by SIGALRM, not hang the suite */
    assert_int_equal(idx_load(fifo, D, &back, &got), UMG_EFORMAT);
    alarm(0);
    assert_null(back);
    assert_non_null(strstr(umg_err_msg(), "not a regular file"));

    unlink(fifo);
    unlink(path);
    rmdir(dir);
    idx_close(ix);
    free(x);
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_auto_factory),
        cmocka_unit_test(test_flat),
        cmocka_unit_test(test_bad_factory),
        cmocka_unit_test(test_ivfpq_rerank_and_snapshot),
        cmocka_unit_test(test_hnsw_wrapped),
        cmocka_unit_test(test_snapshot_copy_is_independent),
        cmocka_unit_test(test_snapshot_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
