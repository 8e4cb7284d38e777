/* test_http.c - `umgdb serve --http` as a real process (tests/server_harness.h,
 * tests/fixtures/clip-tiny) talked to over real TCP sockets with a small raw
 * HTTP/1.1 client written here: every op, the answers the same as over
 * msgpack, keep-alive and pipelining, files beneath the root, and every
 * hostile input of the msgpack side (malformed request lines and headers,
 * huge headers, bodies over the limit, chunked bodies that never end,
 * slowloris, invalid JSON or UTF-8, deep nesting, bad token, unknown op),
 * each followed by the server still serving and nothing acknowledged lost. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "server_harness.h"
#include "test_util.h"
#include "umg_error.h"

#define TINY UMG_FIXTURES_DIR "/clip-tiny"
#define IMG(n) TINY "/images/" n

/* ---- a raw HTTP/1.1 client ------------------------------------------------- */

typedef struct hconn {
    int fd;
    char *buf; /* bytes read, not yet consumed */
    size_t n, cap;
} hconn;

typedef struct hresp {
    int status;
    char head[4096];
    char *body;
    size_t len;
    json_t *json; /* the body parsed, when it is JSON */
} hresp;

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t len = sizeof a;
    assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static hconn *hc_open(int port)
{
    hconn *c = calloc(1, sizeof *c);
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(c->fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return c;
}

static void hc_close(hconn *c)
{
    if (!c) return;
    close(c->fd);
    free(c->buf);
    free(c);
}

static void hc_send(hconn *c, const void *data, size_t len)
{
    size_t off = 0;
    while (off < len) {
        ssize_t k = send(c->fd, (const char *)data + off, len - off, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0) fail_msg("send: %s", strerror(errno));
        off += (size_t)k;
    }
}

static void hc_sendf(hconn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void hc_sendf(hconn *c, const char *fmt, ...)
{
    char buf[65536];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    assert_true(n > 0 && n < (int)sizeof buf);
    hc_send(c, buf, (size_t)n);
}

/* Read more bytes within ms: 1, or 0 at EOF/reset, -1 on timeout. */
static int hc_fill(hconn *c, int ms)
{
    struct pollfd p = {.fd = c->fd, .events = POLLIN};
    int r = poll(&p, 1, ms);
    if (r == 0) return -1;
    if (c->n + 65536 > c->cap) {
        c->cap = c->cap ? c->cap * 2 : 131072;
        c->buf = realloc(c->buf, c->cap);
    }
    ssize_t k = recv(c->fd, c->buf + c->n, c->cap - c->n, 0);
    if (k <= 0) return 0;
    c->n += (size_t)k;
    return 1;
}

/* The next answer; fails the test when none comes within TS_T_MS. */
static hresp hc_read(hconn *c)
{
    hresp r = {0};
    char *end;
    while (!(end = c->n ? memmem(c->buf, c->n, "\r\n\r\n", 4) : NULL))
        if (hc_fill(c, TS_T_MS) != 1) fail_msg("no answer (%zu bytes: %.*s)", c->n, (int)c->n, c->buf ? c->buf : "");
    size_t hl = (size_t)(end - c->buf) + 4;
    assert_true(hl < sizeof r.head);
    memcpy(r.head, c->buf, hl);
    r.head[hl] = 0;
    assert_int_equal(sscanf(r.head, "HTTP/1.1 %d", &r.status), 1);
    char *cl = strcasestr(r.head, "\r\nContent-Length: ");
    assert_non_null(cl);
    r.len = strtoull(cl + 18, NULL, 10);
    while (c->n < hl + r.len)
        if (hc_fill(c, TS_T_MS) != 1) fail_msg("answer body cut short");
    r.body = malloc(r.len + 1);
    memcpy(r.body, c->buf + hl, r.len);
    r.body[r.len] = 0;
    memmove(c->buf, c->buf + hl + r.len, c->n - hl - r.len);
    c->n -= hl + r.len;
    if (strcasestr(r.head, "Content-Type: application/json")) {
        r.json = json_loadb(r.body, r.len, 0, NULL);
        assert_non_null(r.json);
    }
    return r;
}

static void hr_free(hresp *r)
{
    free(r->body);
    json_decref(r->json);
    memset(r, 0, sizeof *r);
}

/* 1 when the server closed the connection within ms (what it sent first is
 * read and dropped), 0 when it is still open. */
static int hc_closed_within(hconn *c, int ms)
{
    uint64_t t0 = (uint64_t)time(NULL);
    for (;;) {
        int r = hc_fill(c, ms);
        if (r == 0) return 1;
        if (r < 0) return 0;
        c->n = 0;
        if ((uint64_t)time(NULL) - t0 > (uint64_t)ms / 1000 + 2) return 0;
    }
}

/* One request on c, its answer. */
static hresp hc_call(hconn *c, const char *method, const char *path, const char *headers, const void *body,
                     size_t len)
{
    hc_sendf(c, "%s %s HTTP/1.1\r\nHost: test\r\n%sContent-Length: %zu\r\n\r\n", method, path, headers ? headers : "",
             len);
    if (len) hc_send(c, body, len);
    return hc_read(c);
}

static hresp hc_post_json(hconn *c, const char *op, const char *json)
{
    char path[64];
    snprintf(path, sizeof path, "/v1/%s", op);
    return hc_call(c, "POST", path, "Content-Type: application/json\r\n", json, strlen(json));
}

/* The answer's result (checks ok and status 200). */
static json_t *ok_result(const hresp *r)
{
    if (r->status != 200 || !json_is_true(json_object_get(r->json, "ok")))
        fail_msg("want 200 ok, got %d: %s", r->status, r->body);
    json_t *res = json_object_get(r->json, "result");
    assert_non_null(res);
    return res;
}

/* Checks an error answer: status and code. */
static void want_error(const hresp *r, int status, const char *code)
{
    if (r->status != status) fail_msg("want status %d (%s), got %d: %s", status, code, r->status, r->body);
    assert_true(json_is_false(json_object_get(r->json, "ok")));
    const char *got = json_string_value(json_object_get(json_object_get(r->json, "error"), "code"));
    if (!got || strcmp(got, code)) fail_msg("want code %s, got %s", code, r->body);
    assert_non_null(json_string_value(json_object_get(json_object_get(r->json, "error"), "message")));
}

static uint64_t res_u(json_t *res, const char *key)
{
    json_t *v = json_object_get(res, key);
    if (!json_is_integer(v)) fail_msg("result has no integer '%s'", key);
    return (uint64_t)json_integer_value(v);
}

/* A fresh connection is served (ping over HTTP). */
static void http_serves(int port)
{
    hconn *c = hc_open(port);
    hresp r = hc_post_json(c, "ping", "{}");
    assert_int_equal(res_u(ok_result(&r), "protocol"), PROTO_VERSION);
    hr_free(&r);
    hc_close(c);
}

static char *file_bytes(const char *path, size_t *len) { return tu_read_file(path, len); }

typedef struct http_server {
    ts_server s;
    int port;
    char listen[64];
} http_server;

/* A temporary directory and a free port for a server with --http. */
static void make_http(http_server *h, const char *prefix)
{
    ts_make_tmp(&h->s, prefix);
    h->port = free_port();
    snprintf(h->listen, sizeof h->listen, "127.0.0.1:%d", h->port);
}

/* Start it with --http plus extra (NULL-terminated). */
static void run_http(http_server *h, const char *const *extra)
{
    const char *args[48];
    int n = 0;
    args[n++] = "--http";
    args[n++] = h->listen;
    for (int i = 0; extra && extra[i]; i++) args[n++] = extra[i];
    args[n] = NULL;
    ts_start_ok(&h->s, args);
}

/* ---- every op --------------------------------------------------------------- */

static void test_every_op(void **state)
{
    http_server h;
    char photos[400], inside[450];
    make_http(&h, "umg-http-");
    snprintf(photos, sizeof photos, "%s/photos", h.s.dir);
    mkdir(photos, 0755);
    snprintf(inside, sizeof inside, "%s/a.jpg", photos);
    size_t jl, pl;
    char *jpg = file_bytes(IMG("rocket.jpg"), &jl);
    char *png = file_bytes(IMG("camera.png"), &pl);
    tu_write_file(inside, jpg, jl);
    run_http(&h, (const char *const[]){"--allow-root", photos, NULL});

    hconn *c = hc_open(h.port); /* one keep-alive connection for all of it */
    hresp r = hc_post_json(c, "hello", "{\"client\":\"test_http\"}");
    json_t *res = ok_result(&r);
    assert_int_equal(res_u(res, "protocol"), PROTO_VERSION);
    assert_true(json_is_false(json_object_get(res, "auth_required")));
    hr_free(&r);
    r = hc_call(c, "POST", "/v1/ping", NULL, NULL, 0); /* no body at all is {} */
    assert_int_equal(res_u(ok_result(&r), "dim"), res_u(json_object_get(r.json, "result"), "dim"));
    hr_free(&r);

    /* ingest: raw bytes with name and tags in the query */
    r = hc_call(c, "POST", "/v1/ingest?name=raw%20one.jpg&tags=sea,sky&tags=x", "Content-Type: image/jpeg\r\n", jpg, jl);
    uint64_t id_raw = res_u(ok_result(&r), "image_id");
    assert_true(json_is_false(json_object_get(json_object_get(r.json, "result"), "duplicate")));
    hr_free(&r);
    /* the same again: a duplicate */
    r = hc_call(c, "POST", "/v1/ingest?name=raw%20one.jpg&tags=sea,sky&tags=x", NULL, jpg, jl);
    assert_int_equal(res_u(ok_result(&r), "image_id"), id_raw);
    assert_true(json_is_true(json_object_get(json_object_get(r.json, "result"), "duplicate")));
    hr_free(&r);
    /* JSON with base64 data (a PNG) */
    json_t *b64req = json_pack("{s:s%,s:s,s:[s]}", "data", "", (size_t)0, "name", "b64.png", "tags", "p");
    {
        char *enc = malloc(pl * 2 + 8);
        static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        size_t o = 0;
        for (size_t i = 0; i < pl; i += 3) {
            uint32_t v = (uint32_t)(uint8_t)png[i] << 16 | (i + 1 < pl ? (uint32_t)(uint8_t)png[i + 1] << 8 : 0) |
                         (i + 2 < pl ? (uint8_t)png[i + 2] : 0);
            enc[o++] = al[v >> 18 & 63];
            enc[o++] = al[v >> 12 & 63];
            enc[o++] = i + 1 < pl ? al[v >> 6 & 63] : '=';
            enc[o++] = i + 2 < pl ? al[v & 63] : '=';
        }
        enc[o] = 0;
        json_object_set_new(b64req, "data", json_string(enc));
        free(enc);
    }
    char *b64 = json_dumps(b64req, JSON_COMPACT);
    r = hc_post_json(c, "ingest", b64);
    uint64_t id_png = res_u(ok_result(&r), "image_id");
    hr_free(&r);
    /* by path, under the root */
    char body[1024];
    snprintf(body, sizeof body, "{\"path\":\"%s\",\"tags\":[\"disk\"]}", inside);
    r = hc_post_json(c, "ingest", body);
    uint64_t id_path = res_u(ok_result(&r), "image_id");
    hr_free(&r);

    /* get (POST and GET) */
    snprintf(body, sizeof body, "{\"image_id\":%llu}", (unsigned long long)id_raw);
    r = hc_post_json(c, "get", body);
    res = ok_result(&r);
    assert_string_equal(json_string_value(json_object_get(res, "path")), "raw one.jpg");
    assert_int_equal(json_array_size(json_object_get(res, "tags")), 3);
    assert_string_equal(json_string_value(json_array_get(json_object_get(res, "tags"), 2)), "x");
    char *get_post = json_dumps(res, JSON_SORT_KEYS);
    hr_free(&r);
    char path[128];
    snprintf(path, sizeof path, "/v1/images/%llu", (unsigned long long)id_raw);
    r = hc_call(c, "GET", path, NULL, NULL, 0);
    char *get_get = json_dumps(ok_result(&r), JSON_SORT_KEYS);
    assert_string_equal(get_post, get_get); /* the same answer both ways */
    free(get_post);
    free(get_get);
    hr_free(&r);
    snprintf(body, sizeof body, "{\"path\":\"%s\"}", inside);
    r = hc_post_json(c, "get", body);
    assert_int_equal(res_u(ok_result(&r), "image_id"), id_path);
    hr_free(&r);

    /* query at every granularity; the same hits as over msgpack */
    umg_client *m = ts_conn(&h.s);
    const char *grans[] = {"image", "region", "pixel"};
    for (int g = 0; g < 3; g++) {
        snprintf(body, sizeof body, "{\"text\":\"a photo of the sea\",\"granularity\":\"%s\",\"k\":5}", grans[g]);
        r = hc_post_json(c, "query", body);
        json_t *hits = json_object_get(ok_result(&r), "hits");
        assert_true(json_array_size(hits) > 0);
        proto_writer w;
        uint64_t id = ts_begin(m, &w, "query", 3);
        ts_kv_str(&w, "text", "a photo of the sea");
        ts_kv_str(&w, "granularity", grans[g]);
        ts_kv_uint(&w, "k", 5);
        ts_end(m, &w);
        proto_response *pr = ts_wait_ok(m, id);
        const msgpack_object *mh = proto_map_get(pr->result, "hits");
        assert_int_equal(mh->via.array.size, json_array_size(hits));
        for (uint32_t i = 0; i < mh->via.array.size; i++) {
            const msgpack_object *o = &mh->via.array.ptr[i];
            json_t *jh = json_array_get(hits, i);
            uint64_t iid;
            double score;
            assert_true(proto_obj_uint(proto_map_get(o, "image_id"), &iid));
            assert_int_equal(res_u(jh, "image_id"), iid);
            assert_true(proto_obj_float(proto_map_get(o, "score"), &score));
            /* float32 printed with 9 digits comes back exactly */
            assert_true((float)json_real_value(json_object_get(jh, "score")) == (float)score);
            const msgpack_object *box = proto_map_get(o, "box");
            json_t *jbox = json_object_get(jh, "box");
            assert_int_equal(box != NULL, jbox != NULL);
            for (int k = 0; box && k < 4; k++) {
                double bv;
                assert_true(proto_obj_float(&box->via.array.ptr[k], &bv));
                assert_true(fabs(json_number_value(json_array_get(jbox, (size_t)k)) - bv) < 1e-3);
            }
            const msgpack_object *hm = proto_map_get(o, "heatmap");
            json_t *jhm = json_object_get(jh, "heatmap");
            assert_int_equal(hm != NULL, jhm != NULL);
            if (hm) {
                const msgpack_object *vals = proto_map_get(hm, "values");
                assert_int_equal(vals->via.array.size, json_array_size(json_object_get(jhm, "values")));
            }
        }
        proto_response_free(pr);
        hr_free(&r);
    }
    umg_client_close(m);
    /* filters and refine pass through */
    r = hc_post_json(c, "query", "{\"text\":\"sea\",\"filters\":{\"tags\":[\"disk\"]},\"k\":10}");
    json_t *hits = json_object_get(ok_result(&r), "hits");
    assert_int_equal(json_array_size(hits), 1);
    assert_int_equal(res_u(json_array_get(hits, 0), "image_id"), id_path);
    hr_free(&r);
    r = hc_post_json(c, "query", "{\"text\":\"sea\",\"granularity\":\"region\",\"refine\":\"pixel\",\"k\":3}");
    ok_result(&r);
    hr_free(&r);
    r = hc_post_json(c, "query", "{\"text\":\"sea\",\"refine\":\"pixel\"}"); /* the handler's own rule */
    want_error(&r, 400, "invalid_argument");
    hr_free(&r);

    /* query_image: by id (excluded from its own hits) and by base64 bytes */
    snprintf(body, sizeof body, "{\"image_id\":%llu,\"k\":10}", (unsigned long long)id_raw);
    r = hc_post_json(c, "query_image", body);
    hits = json_object_get(ok_result(&r), "hits");
    assert_true(json_array_size(hits) >= 1);
    for (size_t i = 0; i < json_array_size(hits); i++) assert_true(res_u(json_array_get(hits, i), "image_id") != id_raw);
    hr_free(&r);
    json_object_del(b64req, "name");
    json_object_del(b64req, "tags");
    json_object_set_new(b64req, "granularity", json_string("region"));
    free(b64);
    b64 = json_dumps(b64req, JSON_COMPACT);
    r = hc_post_json(c, "query_image", b64);
    assert_true(json_array_size(json_object_get(ok_result(&r), "hits")) >= 1);
    hr_free(&r);
    free(b64);
    json_decref(b64req);

    /* the file of a photo ingested by path; not for one sent as bytes */
    snprintf(path, sizeof path, "/v1/images/%llu/file", (unsigned long long)id_path);
    r = hc_call(c, "GET", path, NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    assert_non_null(strcasestr(r.head, "Content-Type: image/jpeg"));
    assert_int_equal(r.len, jl);
    assert_memory_equal(r.body, jpg, jl);
    hr_free(&r);
    snprintf(path, sizeof path, "/v1/images/%llu/file", (unsigned long long)id_raw);
    r = hc_call(c, "GET", path, NULL, NULL, 0);
    want_error(&r, 404, "not_found");
    hr_free(&r);
    /* changed on disk since: not the photo ingested any more */
    tu_write_file(inside, png, pl);
    snprintf(path, sizeof path, "/v1/images/%llu/file", (unsigned long long)id_path);
    r = hc_call(c, "GET", path, NULL, NULL, 0);
    want_error(&r, 404, "not_found");
    hr_free(&r);
    /* swapped for a symlink to the same bytes outside the root: refused at read time */
    char outside[450];
    snprintf(outside, sizeof outside, "%s/outside.jpg", h.s.dir);
    tu_write_file(outside, jpg, jl);
    unlink(inside);
    assert_int_equal(symlink(outside, inside), 0);
    r = hc_call(c, "GET", path, NULL, NULL, 0);
    assert_int_not_equal(r.status, 200);
    hr_free(&r);

    /* pipelining: two requests in one write, two answers in order */
    hc_sendf(c, "POST /v1/get HTTP/1.1\r\nContent-Length: %d\r\n\r\n{\"image_id\":%llu}"
                "POST /v1/get HTTP/1.1\r\nContent-Length: %d\r\n\r\n{\"image_id\":%llu}",
             (int)snprintf(NULL, 0, "{\"image_id\":%llu}", (unsigned long long)id_png), (unsigned long long)id_png,
             (int)snprintf(NULL, 0, "{\"image_id\":%llu}", (unsigned long long)id_raw), (unsigned long long)id_raw);
    r = hc_read(c);
    assert_int_equal(res_u(ok_result(&r), "image_id"), id_png);
    hr_free(&r);
    r = hc_read(c);
    assert_int_equal(res_u(ok_result(&r), "image_id"), id_raw);
    hr_free(&r);

    /* stats, delete */
    r = hc_post_json(c, "stats", "{}");
    assert_int_equal(res_u(ok_result(&r), "images"), 3);
    hr_free(&r);
    snprintf(body, sizeof body, "{\"image_id\":%llu}", (unsigned long long)id_png);
    r = hc_post_json(c, "delete", body);
    assert_true(json_is_true(json_object_get(ok_result(&r), "deleted")));
    hr_free(&r);
    r = hc_post_json(c, "get", body);
    want_error(&r, 404, "not_found");
    hr_free(&r);
    r = hc_post_json(c, "delete", body);
    want_error(&r, 404, "not_found");
    hr_free(&r);

    /* the document and a Connection: close request */
    r = hc_call(c, "GET", "/v1/openapi.json", NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(json_string_value(json_object_get(r.json, "openapi")), "3.0.3");
    hr_free(&r);
    r = hc_call(c, "POST", "/v1/ping", "Connection: close\r\n", NULL, 0);
    ok_result(&r);
    assert_non_null(strcasestr(r.head, "Connection: close"));
    hr_free(&r);
    assert_true(hc_closed_within(c, 5000));
    hc_close(c);

    /* nothing acknowledged lost: after a restart the two remaining images are there */
    assert_int_equal(ts_stop(&h.s), 0);
    run_http(&h, NULL);
    c = hc_open(h.port);
    r = hc_post_json(c, "stats", "{}");
    assert_int_equal(res_u(ok_result(&r), "images"), 2);
    hr_free(&r);
    snprintf(path, sizeof path, "/v1/images/%llu", (unsigned long long)id_raw);
    r = hc_call(c, "GET", path, NULL, NULL, 0);
    assert_string_equal(json_string_value(json_object_get(ok_result(&r), "path")), "raw one.jpg");
    hr_free(&r);
    hc_close(c);
    assert_int_equal(ts_stop(&h.s), 0);
    free(jpg);
    free(png);
    tu_rm_rf(h.s.dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_every_op, ts_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
