/* test_storage_server.c - the data directory's guards as `umgdb serve` (env
 * UMG_BIN, tests/fixtures/clip-tiny) shows them, through real processes and a
 * real socket (tests/server_harness.h):
 *   - a second server on the same --data is refused, naming the first's pid,
 *     and the first keeps serving;
 *   - stats says whether the indexes agree with LMDB (index_consistent);
 *   - a deleted data.mdb under snapshots that cover more is refused at start,
 *     and --accept-data-loss serves what is left;
 *   - a damaged image record (a path byte that is not UTF-8, written through
 *     LMDB itself) answers `internal` to get, is left out of query answers,
 *     is logged, and the server keeps serving.
 * (The region mode's move into LMDB meta is tested in test_regions_server.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lmdb.h>

#include "server_harness.h"
#include "test_util.h"
#include "umg_error.h"

#define IMG UMG_FIXTURES_DIR "/clip-tiny/images/chelsea.png"

static void ingest_ok(umg_client *c, const char *name)
{
    proto_response *r = ts_wait_ok(c, ts_send_ingest(c, IMG, name, NULL));
    proto_response_free(r);
}

static proto_response *stats(umg_client *c)
{
    proto_response *r;
    assert_int_equal(umg_client_call0(c, "stats", TS_T_MS, &r), 0);
    assert_true(r->ok);
    return r;
}

static int str_is(const msgpack_object *o, const char *want)
{
    return o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(want) &&
           !memcmp(o->via.str.ptr, want, o->via.str.size);
}

static void test_second_server_refused(void **state)
{
    (void)state;
    ts_server a, b;
    ts_make_tmp(&a, "umg_test_storage_a_");
    ts_make_tmp(&b, "umg_test_storage_b_");
    snprintf(b.data, sizeof b.data, "%s", a.data); /* b's own socket and log, a's data */
    ts_start_ok(&a, NULL);
    umg_client *c = ts_conn(&a);
    ingest_ok(c, "one.png");

    int st = ts_start(&b, NULL);
    assert_int_not_equal(st, 0);
    char *log = tu_read_file(b.log, NULL);
    char pid[32];
    snprintf(pid, sizeof pid, "pid %ld", (long)a.pid);
    if (!strstr(log, "in use by another umgdb process") || !strstr(log, pid))
        fail_msg("the second server's log does not name the holder (%s):\n%s", pid, log);
    free(log);

    /* the first one still serves, and its indexes agree with LMDB */
    ingest_ok(c, "two.png");
    proto_response *r = stats(c);
    assert_int_equal(ts_res_u(r, "images"), 2);
    assert_true(ts_res_bool(r, "index_consistent"));
    assert_true(str_is(umg_result_get(r, "index_mismatch"), ""));
    proto_response_free(r);
    umg_client_close(c);
    assert_int_equal(ts_stop(&a), 0);

    /* once it stopped, the directory is free */
    ts_start_ok(&b, NULL);
    c = ts_conn(&b);
    r = stats(c);
    assert_int_equal(ts_res_u(r, "images"), 2);
    proto_response_free(r);
    umg_client_close(c);
    assert_int_equal(ts_stop(&b), 0);
    tu_rm_rf(a.dir);
    tu_rm_rf(b.dir);
}

static void test_lost_database_refused(void **state)
{
    (void)state;
    ts_server s;
    ts_make_tmp(&s, "umg_test_storage_");
    ts_start_ok(&s, NULL);
    umg_client *c = ts_conn(&s);
    ingest_ok(c, "one.png");
    umg_client_close(c);
    assert_int_equal(ts_stop(&s), 0); /* writes the snapshots */

    char mdb[400];
    snprintf(mdb, sizeof mdb, "%s/data.mdb", s.data);
    assert_int_equal(unlink(mdb), 0);
    assert_int_not_equal(ts_start(&s, NULL), 0);
    char *log = tu_read_file(s.log, NULL);
    if (!strstr(log, "--accept-data-loss") || !strstr(log, "data.mdb"))
        fail_msg("the refusal does not say why:\n%s", log);
    free(log);

    const char *accept[] = { "--accept-data-loss", NULL };
    ts_start_ok(&s, accept);
    c = ts_conn(&s);
    proto_response *r = stats(c);
    assert_int_equal(ts_res_u(r, "images"), 0);
    assert_true(ts_res_bool(r, "index_consistent"));
    proto_response_free(r);
    umg_client_close(c);
    assert_int_equal(ts_stop(&s), 0);
    ts_start_ok(&s, NULL); /* the snapshots were rewritten from what LMDB holds */
    assert_int_equal(ts_stop(&s), 0);
    tu_rm_rf(s.dir);
}

static void test_damaged_record_not_served(void **state)
{
    (void)state;
    ts_server s;
    ts_make_tmp(&s, "umg_test_storage_");
    ts_start_ok(&s, NULL);
    umg_client *c = ts_conn(&s);
    proto_response *r = ts_wait_ok(c, ts_send_ingest(c, IMG, "one.png", NULL));
    uint64_t id = ts_res_u(r, "image_id");
    proto_response_free(r);
    umg_client_close(c);
    assert_int_equal(ts_stop(&s), 0);

    /* the path's second byte (the record's path starts at byte 76) becomes 0xff */
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    assert_int_equal(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 16);
    assert_int_equal(mdb_env_open(env, s.data, 0, 0600), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "images", 0, &dbi), 0);
    unsigned char key[8];
    for (int i = 0; i < 8; i++) /* ids are big-endian keys */
        key[i] = (unsigned char)(id >> (56 - 8 * i));
    MDB_val k = { 8, key }, v;
    assert_int_equal(mdb_get(txn, dbi, &k, &v), 0);
    unsigned char *rec = malloc(v.mv_size);
    memcpy(rec, v.mv_data, v.mv_size);
    assert_true(v.mv_size > 78);
    rec[77] = 0xff;
    MDB_val nv = { v.mv_size, rec };
    assert_int_equal(mdb_put(txn, dbi, &k, &nv, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    free(rec);

    ts_start_ok(&s, NULL);
    c = ts_conn(&s);
    proto_writer w;
    uint64_t rid = ts_begin(c, &w, "get", 1);
    ts_kv_uint(&w, "image_id", id);
    ts_end(c, &w);
    assert_int_equal(ts_wait_err(c, rid), UMG_EINTERNAL);
    rid = ts_begin(c, &w, "query", 2);
    ts_kv_str(&w, "text", "a cat");
    ts_kv_uint(&w, "k", 5);
    ts_end(c, &w);
    r = ts_wait_ok(c, rid);
    const msgpack_object *hits = umg_result_get(r, "hits");
    assert_true(hits && hits->type == MSGPACK_OBJECT_ARRAY);
    assert_int_equal(hits->via.array.size, 0); /* its only image is damaged: left out */
    proto_response_free(r);
    r = stats(c); /* still serving */
    assert_int_equal(ts_res_u(r, "images"), 1);
    proto_response_free(r);
    umg_client_close(c);
    assert_int_equal(ts_stop(&s), 0);
    char *log = tu_read_file(s.log, NULL);
    if (!strstr(log, "damaged record") || !strstr(log, "not UTF-8"))
        fail_msg("the damaged record is not logged:\n%s", log);
    free(log);
    tu_rm_rf(s.dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_second_server_refused, ts_teardown),
        cmocka_unit_test_teardown(test_lost_database_refused, ts_teardown),
        cmocka_unit_test_teardown(test_damaged_record_not_served, ts_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
