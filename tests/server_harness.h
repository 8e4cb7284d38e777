/* server_harness.h - `umgdb serve` (tu_bin()) as a child process with
 * tests/fixtures/clip-tiny, for the tests that talk to a real server over real
 * sockets (test_server, test_regions_server).  Library umg_test_server: this
 * file and server_harness.c, linked with the client library (client/).
 *
 * Like test_util, the helpers that can fail a test do it with cmocka's
 * fail_msg/assert_*, so they are called from inside a test.
 *
 * Who frees what:
 *   - a ts_server is the caller's (a plain struct, usually on the stack); its
 *     directory stays on disk until the test removes it (tu_rm_rf(s.dir));
 *   - a started server is on the harness's list of live servers until ts_stop
 *     (or ts_forget, after reaping it yourself); ts_teardown, the teardown of
 *     every test that starts one, kills what is still on the list, so a failed
 *     test (cmocka jumps out of it) leaves no server running;
 *   - a umg_client from ts_conn: umg_client_close;
 *   - a proto_response from ts_wait_resp / ts_wait_ok: proto_response_free
 *     (ts_wait_err frees its own). */
#ifndef UMG_SERVER_HARNESS_H
#define UMG_SERVER_HARNESS_H

#include <stdint.h>
#include <sys/types.h>

#include "client.h"
#include "test_util.h"

/* Per-call timeout of the waits: generous, ASan builds are slow; scaled for
 * emulated runs (tu_time_scale). */
#define TS_T_MS (30000 * tu_time_scale())

typedef struct ts_server {
    pid_t pid;      /* the running server, 0 when none */
    char dir[256];  /* temp root: data/, log, sock, and whatever the test puts there */
    char data[300]; /* dir/data: the server's --data */
    char addr[320]; /* "unix:<dir>/sock", or the --listen address while started with one */
    char log[300];  /* dir/log: the server's stdout and stderr, appended over restarts */
    unsigned long nofile_soft, nofile_hard; /* set before ts_start: the server's RLIMIT_NOFILE
                                               (0, 0 = the test's own) */
} ts_server;

/* A fresh temporary directory /tmp/<prefix>XXXXXX for one server; fills s. */
void ts_make_tmp(ts_server *s, const char *prefix);

/* Start `umgdb serve --data <data> --model clip-tiny --threads 1` plus extra
 * (NULL-terminated, at most 48), on <dir>/sock unless extra has --listen ADDR.
 * Returns 0 once it accepts connections, or its exit status (128 + signal if
 * killed) if it exits during start-up (the log says why); fails the test if it
 * does neither within 30 s. */
int ts_start(ts_server *s, const char *const *extra);

/* ts_start, failing the test (the log copied to stderr) unless it is listening. */
void ts_start_ok(ts_server *s, const char *const *extra);

/* SIGTERM, then the exit status (128 + signal if killed by one); fails the
 * test (after SIGKILL) if the server has not exited within 60 s.  -1 if s is
 * not running. */
int ts_stop(ts_server *s);

/* Takes s off the live list (s->pid = 0) when the test reaped it itself. */
void ts_forget(ts_server *s);

/* cmocka teardown: SIGKILLs and reaps the servers a failed test left, naming
 * their logs on stderr.  Always 0. */
int ts_teardown(void **state);

/* A new connection to s; fails the test if it cannot connect. */
umg_client *ts_conn(const ts_server *s);

/* ---- requests: ts_begin, then nargs key-value pairs (ts_kv_* or
 * proto_pack_* by hand), then ts_end (queued; sent by the next wait). ---- */

uint64_t ts_begin(umg_client *c, proto_writer *w, const char *op, size_t nargs); /* the request id */
void ts_kv_str(proto_writer *w, const char *key, const char *value);
void ts_kv_uint(proto_writer *w, const char *key, uint64_t value);
void ts_kv_bin(proto_writer *w, const char *key, const void *data, size_t len);
void ts_end(umg_client *c, proto_writer *w);

/* An ingest of file's bytes under name, with one tag (or none: NULL), queued
 * (pipelining); returns the request id. */
uint64_t ts_send_ingest(umg_client *c, const char *file, const char *name, const char *tag);

/* ---- responses ---- */

/* The response to id, ok or not; fails the test if none comes within TS_T_MS. */
proto_response *ts_wait_resp(umg_client *c, uint64_t id);

/* The same, failing the test (code and message) unless it is ok. */
proto_response *ts_wait_ok(umg_client *c, uint64_t id);

/* The error code of the response to id, failing the test if it is ok. */
int ts_wait_err(umg_client *c, uint64_t id);

/* Result fields, failing the test when missing or of another type. */
uint64_t ts_res_u(const proto_response *r, const char *key);
int ts_res_bool(const proto_response *r, const char *key);

#endif
