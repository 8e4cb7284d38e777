/* server_harness.c - see server_harness.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "server_harness.h"
#include "test_util.h"
#include "umg_error.h"

#define TINY UMG_FIXTURES_DIR "/clip-tiny"
#define MAX_LIVE 8

/* Servers started and not yet stopped: see ts_teardown. */
static struct {
    pid_t pid;
    char dir[256];
} live[MAX_LIVE];

static void live_add(const ts_server *s)
{
    for (int i = 0; i < MAX_LIVE; i++)
        if (!live[i].pid) {
            live[i].pid = s->pid;
            snprintf(live[i].dir, sizeof live[i].dir, "%s", s->dir);
            return;
        }
    fail_msg("more than %d servers running at once", MAX_LIVE);
}

static void live_remove(pid_t pid)
{
    for (int i = 0; i < MAX_LIVE; i++)
        if (live[i].pid == pid)
            live[i].pid = 0;
}

void ts_forget(ts_server *s)
{
    live_remove(s->pid);
    s->pid = 0;
}

int ts_teardown(void **state)
{
    (void)state;
    for (int i = 0; i < MAX_LIVE; i++)
        if (live[i].pid) {
            kill(live[i].pid, SIGKILL);
            waitpid(live[i].pid, NULL, 0);
            fprintf(stderr, "killed the server left by a failed test; its log: %s/log\n", live[i].dir);
            live[i].pid = 0;
        }
    return 0;
}

void ts_make_tmp(ts_server *s, const char *prefix)
{
    memset(s, 0, sizeof *s);
    if (!tu_mkdtemp(s->dir, sizeof s->dir, prefix))
        fail_msg("mkdtemp /tmp/%sXXXXXX failed", prefix);
    snprintf(s->data, sizeof s->data, "%s/data", s->dir);
    snprintf(s->log, sizeof s->log, "%s/log", s->dir);
    snprintf(s->addr, sizeof s->addr, "unix:%s/sock", s->dir);
}

static int exit_status(int st) { return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st); }

int ts_start(ts_server *s, const char *const *extra)
{
    char sock[300];
    snprintf(sock, sizeof sock, "%s/sock", s->dir);
    const char *argv[64];
    int n = 0, tcp = 0;
    argv[n++] = tu_bin();
    argv[n++] = "serve";
    argv[n++] = "--data";
    argv[n++] = s->data;
    argv[n++] = "--model";
    argv[n++] = TINY;
    argv[n++] = "--threads";
    argv[n++] = "1";
    for (int i = 0; extra && extra[i]; i++) {
        assert_true(n < 61);
        if (!strcmp(extra[i], "--listen") && extra[i + 1]) {
            tcp = 1;
            snprintf(s->addr, sizeof s->addr, "%s", extra[i + 1]);
        }
        argv[n++] = extra[i];
    }
    if (!tcp) {
        argv[n++] = "--socket";
        argv[n++] = sock;
        snprintf(s->addr, sizeof s->addr, "unix:%s", sock);
    }
    argv[n] = NULL;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        int fd = open(s->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (fd >= 0) {
            dup2(fd, 2);
            dup2(fd, 1);
        }
        /* as a shell starts it: the test's SIG_IGN of SIGPIPE would survive execv
         * and hide a server that dies of SIGPIPE (issue 14) */
        signal(SIGPIPE, SIG_DFL);
        if (s->nofile_hard) {
            struct rlimit rl = {.rlim_cur = s->nofile_soft, .rlim_max = s->nofile_hard};
            if (setrlimit(RLIMIT_NOFILE, &rl)) _exit(126);
        }
        tu_execv(argv);
        _exit(127);
    }
    s->pid = pid;
    live_add(s);
    for (int tries = 0; tries < 600 * tu_time_scale(); tries++) { /* 30 s */
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            ts_forget(s);
            return exit_status(st);
        }
        umg_client *c;
        if (umg_client_connect(s->addr, NULL, &c) == 0) {
            umg_client_close(c);
            return 0;
        }
        usleep(50000);
    }
    fail_msg("server did not start listening within %d s (log: %s)", 30 * tu_time_scale(), s->log);
    return -1;
}

void ts_start_ok(ts_server *s, const char *const *extra)
{
    int st = ts_start(s, extra);
    if (st) {
        char cmd[400];
        snprintf(cmd, sizeof cmd, "cat '%s' >&2", s->log);
        if (system(cmd)) {
        }
        fail_msg("server exited during start-up with status %d", st);
    }
}

int ts_stop(ts_server *s)
{
    if (!s->pid)
        return -1;
    kill(s->pid, SIGTERM);
    int st = 0;
    for (int i = 0; i < 600 * tu_time_scale(); i++) { /* 60 s */
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            ts_forget(s);
            return exit_status(st);
        }
        usleep(100000);
    }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, &st, 0);
    ts_forget(s);
    fail_msg("server did not stop within %d s of SIGTERM", 60 * tu_time_scale());
    return -1;
}

umg_client *ts_conn(const ts_server *s)
{
    umg_client *c = NULL;
    if (umg_client_connect(s->addr, NULL, &c))
        fail_msg("connect %s: %s", s->addr, umg_err_msg());
    return c;
}

/* ---- requests ---- */

uint64_t ts_begin(umg_client *c, proto_writer *w, const char *op, size_t nargs)
{
    uint64_t id = 0;
    assert_int_equal(umg_client_begin(c, w, op, nargs, &id), 0);
    return id;
}

void ts_kv_str(proto_writer *w, const char *key, const char *value)
{
    proto_pack_cstr(&w->pk, key);
    proto_pack_cstr(&w->pk, value);
}

void ts_kv_uint(proto_writer *w, const char *key, uint64_t value)
{
    proto_pack_cstr(&w->pk, key);
    msgpack_pack_uint64(&w->pk, value);
}

void ts_kv_bin(proto_writer *w, const char *key, const void *data, size_t len)
{
    proto_pack_cstr(&w->pk, key);
    msgpack_pack_bin(&w->pk, len);
    msgpack_pack_bin_body(&w->pk, data, len);
}

void ts_end(umg_client *c, proto_writer *w) { assert_int_equal(umg_client_end(c, w), 0); }

uint64_t ts_send_ingest(umg_client *c, const char *file, const char *name, const char *tag)
{
    size_t n;
    char *b = tu_read_file(file, &n);
    proto_writer w;
    uint64_t id = ts_begin(c, &w, "ingest", tag ? 3 : 2);
    ts_kv_bin(&w, "data", b, n);
    ts_kv_str(&w, "name", name);
    if (tag) {
        proto_pack_cstr(&w.pk, "tags");
        msgpack_pack_array(&w.pk, 1);
        proto_pack_cstr(&w.pk, tag);
    }
    ts_end(c, &w);
    free(b);
    return id;
}

/* ---- responses ---- */

proto_response *ts_wait_resp(umg_client *c, uint64_t id)
{
    proto_response *r = NULL;
    int rc = umg_client_wait(c, id, TS_T_MS, &r);
    if (rc)
        fail_msg("waiting for response %llu: %s: %s", (unsigned long long)id, umg_error_name(rc), umg_err_msg());
    assert_int_equal(r->id, id);
    return r;
}

proto_response *ts_wait_ok(umg_client *c, uint64_t id)
{
    proto_response *r = ts_wait_resp(c, id);
    if (!r->ok)
        fail_msg("request %llu failed: %s: %s", (unsigned long long)id, r->code_name, r->message);
    return r;
}

int ts_wait_err(umg_client *c, uint64_t id)
{
    proto_response *r = ts_wait_resp(c, id);
    if (r->ok)
        fail_msg("request %llu succeeded, an error was expected", (unsigned long long)id);
    int code = r->code;
    proto_response_free(r);
    return code;
}

uint64_t ts_res_u(const proto_response *r, const char *key)
{
    uint64_t v = 0;
    if (!umg_result_uint(r, key, &v))
        fail_msg("result has no unsigned '%s'", key);
    return v;
}

int ts_res_bool(const proto_response *r, const char *key)
{
    bool v = false;
    if (!proto_obj_bool(umg_result_get(r, key), &v))
        fail_msg("result has no bool '%s'", key);
    return v;
}
