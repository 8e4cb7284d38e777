/* fuzz_http.c - libFuzzer target over the HTTP request path (server/http.c,
 * server/http_json.c): bytes as a client would send them -> http_parser and
 * http.c's callbacks (limits, routing, token) -> the JSON or raw-body
 * translation -> the protocol's own request decoding -> the answer translated
 * back to JSON.  The server's connection and job functions are replaced by
 * the stubs below (what http.c calls in server.c); everything of the request
 * path itself is the real code.  Every answer written must be a well-formed
 * HTTP/1.1 response whose body, when JSON, parses.
 *
 * Input: byte 0 picks the chunking (as a socket would cut the stream) and
 * whether the server has a token; the rest is the byte stream.
 * Built by tests/fuzz/CMakeLists.txt (UMG_FUZZ=ON, clang), run by tests/fuzz/run. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "http.h"
#include "umg_error.h"

#define CHECK(cond)                                                                              \
    do {                                                                                         \
        if (!(cond)) {                                                                           \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);             \
            abort();                                                                             \
        }                                                                                        \
    } while (0)

/* ---- stubs of server.c / server_ops.c (the connection around the request path) ---- */

void srv_log(srv *s, int level, const char *fmt, ...) { (void)s, (void)level, (void)fmt; }

uint64_t srv_now_ns(void) { return 1; }

/* Every answer: "HTTP/1.1 NNN ...", headers, Content-Length bytes of body (JSON parses). */
void srv_conn_send(srv_conn *c, char *data, size_t len)
{
    CHECK(len > 12 && !memcmp(data, "HTTP/1.1 ", 9));
    char *end = memmem(data, len, "\r\n\r\n", 4);
    CHECK(end);
    size_t hl = (size_t)(end - data) + 4;
    if (memmem(data, hl, " 100 Continue", 13) || !memcmp(data + 9, "304 ", 4)) {
        CHECK(hl == len); /* no body */
    } else {
        char *cl = memmem(data, hl, "Content-Length: ", 16);
        CHECK(cl);
        CHECK(strtoull(cl + 16, NULL, 10) == len - hl);
        if (memmem(data, hl, "application/json", 16)) {
            json_t *j = json_loadb(data + hl, len - hl, 0, NULL);
            CHECK(j && (json_is_boolean(json_object_get(j, "ok")) || json_object_get(j, "openapi")));
            json_decref(j);
        }
    }
    free(data);
}

void srv_conn_close(srv_conn *c, const char *why) { c->closing = 1; }
void srv_conn_pause(srv_conn *c) { c->reading = 0; }

srv_job *srv_job_new(srv_conn *c, proto_request *req, int op, size_t frame_bytes)
{
    if (!req && op == PROTO_OP_GET && !frame_bytes) return NULL; /* a file job: answered as out of memory */
    srv_job *job = calloc(1, sizeof *job);
    CHECK(job);
    job->s = c->s;
    job->conn = c;
    job->req = req;
    job->op = op;
    msgpack_sbuffer_init(&job->resp);
    return job;
}

void srv_job_finish(srv_job *job)
{
    srv_http_answer(job->conn, job);
    proto_request_free(job->req);
    msgpack_sbuffer_destroy(&job->resp);
    free(job);
}

void srv_job_error(srv_job *job, int code, const char *msg)
{
    job->status = code;
    job->resp.size = 0;
    CHECK(proto_response_error(&job->resp, job->id, code, msg) == 0);
}

void srv_after_work(uv_work_t *w, int status) { (void)w, (void)status; }

/* The one validation: the real decoder; a request that passes is answered
 * with its own arguments as the result (bytes included: the JSON side turns
 * them into base64). */
void srv_handle_frame(srv_conn *c, uint8_t *frame, size_t len)
{
    proto_request *req = NULL;
    uint64_t id = 0;
    int rc = proto_request_decode(frame, len, &c->s->limits, &req, &id);
    srv_job *job = srv_job_new(c, req, req ? (int)req->op->code : 0, len);
    job->id = req ? req->id : id;
    if (rc) {
        srv_job_error(job, rc, umg_err_msg());
    } else {
        proto_writer w;
        CHECK(proto_response_begin(&w, &job->resp, job->id) == 0);
        msgpack_pack_object(&w.pk, req->root);
        if (proto_response_end(&w, 0)) job->status = UMG_ETOOBIG;
    }
    srv_job_finish(job);
}

int srv_token_ok(const srv *s, const char *got, size_t got_len)
{
    return s->cfg.token && strlen(s->cfg.token) == got_len && !memcmp(s->cfg.token, got, got_len);
}

int srv_read_allowed(srv *s, const char *path, char **norm, uint8_t **data, size_t *len, int64_t *mtime)
{
    return umg_err_set(UMG_EPERM, "not in the fuzzer");
}

int db_get_image(db_t *db, uint64_t id, db_image *out) { return UMG_ENOENT; }
int db_get_thumb(db_t *db, uint64_t id, void **jpeg, size_t *len) { return UMG_ENOENT; }
void db_image_free(db_image *img) { (void)img; }

/* ---- the target ---------------------------------------------------------------- */

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uv_loop_t *loop;
    if (!loop) {
        loop = malloc(sizeof *loop);
        CHECK(loop && uv_loop_init(loop) == 0);
    }
    if (size < 1) return 0;
    uint8_t mode = data[0];
    data++, size--;
    srv *s = calloc(1, sizeof *s);
    srv_conn *c = calloc(1, sizeof *c);
    CHECK(s && c);
    s->cfg.token = (mode & 0x80) ? "fuzz-token-0123456789" : NULL;
    s->limits = proto_limits_default();
    s->limits.max_frame = 1u << 16; /* small: the oversize paths are reached */
    s->loop = loop;
    c->s = s;
    c->reading = 1;
    uv_tcp_init(loop, &c->h.tcp); /* never connected: the lingering close's shutdown fails, closing */
    c->h.stream.data = c;
    uv_timer_init(loop, &c->idle);
    c->idle.data = c;
    CHECK(srv_http_attach(c) == 0);
    /* chunks of 1..128 bytes, as conn_feed hands them over */
    size_t chunk = (size_t)(mode & 0x7f) + 1;
    while (size && !c->closing && !c->close_after_writes) {
        size_t n = size < chunk ? size : chunk;
        const uint8_t *p = data;
        size_t left = n;
        while (left && !c->closing && !c->close_after_writes) {
            size_t used = srv_http_feed(c, p, left);
            CHECK(used <= left);
            if (!used) break; /* paused mid-request: nothing more this chunk */
            p += used;
            left -= used;
        }
        data += n;
        size -= n;
    }
    uv_close((uv_handle_t *)&c->idle, NULL);
    uv_close((uv_handle_t *)&c->h, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    srv_http_free(c->http);
    free(c);
    free(s);
    return 0;
}
