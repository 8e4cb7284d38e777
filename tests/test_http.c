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

#include "enc_image.h"
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
    if (r.status != 304) assert_non_null(cl); /* a 304 has no body */
    r.len = cl ? strtoull(cl + 18, NULL, 10) : 0;
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

/* make_http with a folder for --allow-root: photos = DIR/photos, inside =
 * photos/name (a file path ingest may read, not written yet). */
static void make_http_root(http_server *h, char photos[400], char inside[450], const char *name)
{
    make_http(h, "umg-http-");
    snprintf(photos, 400, "%s/photos", h->s.dir);
    mkdir(photos, 0755);
    snprintf(inside, 450, "%s/%s", photos, name);
}

/* ---- every op --------------------------------------------------------------- */

static void test_every_op(void **state)
{
    http_server h;
    char photos[400], inside[450];
    make_http_root(&h, photos, inside, "a.jpg");
    size_t jl, pl;
    char *jpg = file_bytes(IMG("rocket.jpg"), &jl);
    char *png = file_bytes(IMG("camera.png"), &pl);
    tu_write_file(inside, jpg, jl);
    /* (text passes last >= 200 ms: a query pipelined before a ping is the slower one) */
    run_http(&h, (const char *const[]){"--allow-root", photos, "--test-text-pass-ms", "200", NULL});

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

    /* a slow request (a text query) pipelined before a fast one (ping, answered
     * at once): still answered first */
    hc_sendf(c, "POST /v1/query HTTP/1.1\r\nContent-Length: 12\r\n\r\n{\"text\":\"a\"}"
                "POST /v1/ping HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    r = hc_read(c);
    assert_non_null(json_object_get(ok_result(&r), "hits"));
    hr_free(&r);
    r = hc_read(c);
    assert_non_null(json_object_get(ok_result(&r), "protocol"));
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


/* ---- thumbnails ---------------------------------------------------------------- */

static void raw_case(int port, const void *data, size_t len, int status, const char *code, int closes);
#define RAW(port, lit, status, code, closes) raw_case(port, lit, sizeof lit - 1, status, code, closes)

/* The image_id of an ok answer (which is freed). */
static uint64_t answer_id(hresp r)
{
    uint64_t id = res_u(ok_result(&r), "image_id");
    hr_free(&r);
    return id;
}

/* GET /v1/images/{id}/thumb: 200 image/jpeg (checked headers) decoded into
 * *out; *etag gets its ETag. */
static void get_thumb(hconn *c, uint64_t id, enc_image *out, char etag[64])
{
    char path[128];
    snprintf(path, sizeof path, "/v1/images/%llu/thumb", (unsigned long long)id);
    hresp r = hc_call(c, "GET", path, NULL, NULL, 0);
    if (r.status != 200) fail_msg("thumb of %llu: %d %s", (unsigned long long)id, r.status, r.body);
    assert_non_null(strcasestr(r.head, "\r\nContent-Type: image/jpeg\r\n"));
    assert_non_null(strcasestr(r.head, "\r\nCache-Control: private, no-cache\r\n"));
    const char *et = strcasestr(r.head, "\r\nETag: \"");
    assert_non_null(et);
    et += 8;
    size_t n = strcspn(et, "\r");
    assert_true(n > 2 && n < 64);
    memcpy(etag, et, n);
    etag[n] = 0;
    assert_int_equal(enc_image_decode(r.body, r.len, ENC_IMAGE_MAX_PIXELS_DEFAULT, out), 0);
    hr_free(&r);
}

/* The thumbnail decoded looks like PIL's upright exif_N picture (32x16,
 * tests/fixtures/images/exif_1.rgb), not like its mirror image. */
static void want_upright(const enc_image *t)
{
    assert_int_equal(t->width, 32);
    assert_int_equal(t->height, 16);
    size_t len;
    uint8_t *ref = (uint8_t *)file_bytes(UMG_FIXTURES_DIR "/images/exif_1.rgb", &len);
    assert_int_equal(len, 32 * 16 * 3);
    double d = 0, dm = 0;
    for (int y = 0; y < 16; y++)
        for (int x = 0; x < 32; x++)
            for (int k = 0; k < 3; k++) {
                int v = t->rgb[(y * 32 + x) * 3 + k];
                d += abs(v - ref[(y * 32 + x) * 3 + k]);
                dm += abs(v - ref[(y * 32 + 31 - x) * 3 + k]);
            }
    d /= (double)len, dm /= (double)len;
    if (!(d < 16 && dm > 40)) fail_msg("thumbnail vs the upright photo %.1f, vs its mirror %.1f", d, dm);
    free(ref);
}

static void test_thumbs(void **state)
{
    http_server h;
    char photos[400], inside[450];
    make_http_root(&h, photos, inside, "turned.jpg");
    size_t l6, l8, lr;
    char *exif6 = file_bytes(UMG_FIXTURES_DIR "/images/exif_6.jpg", &l6); /* stored 16x32, turned 90 degrees */
    char *exif8 = file_bytes(UMG_FIXTURES_DIR "/images/exif_8.jpg", &l8); /* stored 16x32, turned the other way */
    char *rocket = file_bytes(IMG("rocket.jpg"), &lr);                      /* 640x427 */
    tu_write_file(inside, exif8, l8);
    run_http(&h, (const char *const[]){"--allow-root", photos, NULL});
    hconn *c = hc_open(h.port);

    /* made at ingest, whichever way the photo came: raw bytes, base64 JSON is the same path, by path */
    uint64_t id6 = answer_id(hc_call(c, "POST", "/v1/ingest?name=six.jpg", NULL, exif6, l6));
    char body[1024];
    snprintf(body, sizeof body, "{\"path\":\"%s\"}", inside);
    uint64_t id8 = answer_id(hc_post_json(c, "ingest", body));
    uint64_t idr = answer_id(hc_call(c, "POST", "/v1/ingest?name=rocket.jpg", NULL, rocket, lr));
    hresp r;

    /* upright (EXIF orientation applied) and as small as the photo */
    enc_image t6 = {0}, t8 = {0}, tr = {0};
    char e6[64], e8[64], er[64];
    get_thumb(c, id6, &t6, e6);
    want_upright(&t6);
    {   /* the msgpack op 'thumb' (by stored path) answers the same bytes */
        char tp[64];
        snprintf(tp, sizeof tp, "/v1/images/%llu/thumb", (unsigned long long)id6);
        hresp raw = hc_call(c, "GET", tp, NULL, NULL, 0);
        umg_client *m = ts_conn(&h.s);
        proto_writer wr;
        uint64_t rid = ts_begin(m, &wr, "thumb", 1);
        ts_kv_str(&wr, "path", "six.jpg");
        ts_end(m, &wr);
        proto_response *pr = ts_wait_ok(m, rid);
        const uint8_t *bin;
        size_t bl;
        assert_true(proto_obj_bin(proto_map_get(pr->result, "data"), &bin, &bl));
        assert_int_equal(ts_res_u(pr, "image_id"), id6);
        assert_int_equal(bl, raw.len);
        assert_memory_equal(bin, raw.body, bl);
        proto_response_free(pr);
        hr_free(&raw);
        umg_client_close(m);
    }
    get_thumb(c, id8, &t8, e8);
    want_upright(&t8);
    /* a photo larger than the thumbnail: long side 320, the record's (oriented) aspect */
    get_thumb(c, idr, &tr, er);
    snprintf(body, sizeof body, "/v1/images/%llu", (unsigned long long)idr);
    r = hc_call(c, "GET", body, NULL, NULL, 0);
    json_t *rec = ok_result(&r);
    double w = (double)res_u(rec, "width"), hh = (double)res_u(rec, "height");
    hr_free(&r);
    assert_int_equal(tr.width, 320);
    assert_true(fabs((double)tr.width / tr.height - w / hh) < 0.01);
    /* the tag is the bytes' digest: exif_6 and exif_8 are the same picture upright */
    assert_string_equal(e6, e8);
    assert_string_not_equal(e6, er);

    /* revalidation: the tag held -> 304 without the bytes; another tag -> 200 */
    char path[128], hdr[160];
    snprintf(path, sizeof path, "/v1/images/%llu/thumb", (unsigned long long)idr);
    snprintf(hdr, sizeof hdr, "If-None-Match: W/\"0000\", %s\r\n", er);
    r = hc_call(c, "GET", path, hdr, NULL, 0);
    assert_int_equal(r.status, 304);
    assert_int_equal(r.len, 0);
    assert_non_null(strstr(r.head, er));
    hr_free(&r);
    snprintf(hdr, sizeof hdr, "If-None-Match: %s\r\n", e6);
    r = hc_call(c, "GET", path, hdr, NULL, 0);
    assert_int_equal(r.status, 200);
    hr_free(&r);
    r = hc_post_json(c, "ping", "{}"); /* the connection goes on after a 304 */
    ok_result(&r);
    hr_free(&r);

    /* a path replaced: a new id with its own thumbnail and tag; the old one is gone */
    tu_write_file(inside, rocket, lr);
    snprintf(body, sizeof body, "{\"path\":\"%s\"}", inside);
    r = hc_post_json(c, "ingest", body);
    res_u(ok_result(&r), "image_id");
    uint64_t id8b = res_u(json_object_get(r.json, "result"), "image_id");
    assert_true(json_is_true(json_object_get(json_object_get(r.json, "result"), "replaced")));
    hr_free(&r);
    assert_int_not_equal(id8b, id8);
    enc_image t8b = {0};
    char e8b[64];
    get_thumb(c, id8b, &t8b, e8b);
    assert_int_equal(t8b.width, 320);
    assert_string_not_equal(e8b, e8);
    snprintf(path, sizeof path, "/v1/images/%llu/thumb", (unsigned long long)id8);
    r = hc_call(c, "GET", path, NULL, NULL, 0);
    want_error(&r, 404, "not_found");
    hr_free(&r);

    /* gone with the photo; unknown ids; not a number */
    snprintf(body, sizeof body, "{\"image_id\":%llu}", (unsigned long long)id6);
    r = hc_post_json(c, "delete", body);
    ok_result(&r);
    hr_free(&r);
    snprintf(path, sizeof path, "/v1/images/%llu/thumb", (unsigned long long)id6);
    r = hc_call(c, "GET", path, NULL, NULL, 0);
    want_error(&r, 404, "not_found");
    hr_free(&r);
    r = hc_call(c, "GET", "/v1/images/999999/thumb", NULL, NULL, 0);
    want_error(&r, 404, "not_found");
    assert_non_null(strstr(r.body, "no image 999999"));
    hr_free(&r);
    hc_close(c);
    /* no such resource: 404, and that connection closes */
    RAW(h.port, "GET /v1/images/x/thumb HTTP/1.1\r\n\r\n", 404, "not_found", 1);
    RAW(h.port, "GET /v1/images/1/thumbs HTTP/1.1\r\n\r\n", 404, "not_found", 1);

    /* kept in the data directory: after a restart the same bytes (same tag) */
    assert_int_equal(ts_stop(&h.s), 0);
    run_http(&h, NULL);
    c = hc_open(h.port);
    enc_image tr2 = {0};
    char er2[64];
    get_thumb(c, idr, &tr2, er2);
    assert_string_equal(er2, er);
    hc_close(c);
    assert_int_equal(ts_stop(&h.s), 0);
    enc_image_free(&t6), enc_image_free(&t8), enc_image_free(&tr), enc_image_free(&t8b), enc_image_free(&tr2);
    free(exif6);
    free(exif8);
    free(rocket);
    tu_rm_rf(h.s.dir);
}


/* ---- hostile input ------------------------------------------------------------ */

/* Send raw bytes on a fresh connection; the answer's status and code, and
 * whether the server then closed the connection. */
static void raw_case(int port, const void *data, size_t len, int status, const char *code, int closes)
{
    hconn *c = hc_open(port);
    hc_send(c, data, len);
    hresp r = hc_read(c);
    want_error(&r, status, code);
    assert_int_equal(strcasestr(r.head, "Connection: close") != NULL, closes);
    hr_free(&r);
    if (closes) assert_true(hc_closed_within(c, 5000));
    hc_close(c);
    http_serves(port);
}

static void test_hostile(void **state)
{
    http_server h;
    make_http(&h, "umg-http-");
    run_http(&h, (const char *const[]){"--max-frame", "1M", NULL});
    int port = h.port;
    size_t jl;
    char *jpg = file_bytes(IMG("rocket.jpg"), &jl);
    /* something acknowledged first: it must survive all that follows */
    hconn *c = hc_open(port);
    hresp r = hc_call(c, "POST", "/v1/ingest?name=keep.jpg", NULL, jpg, jl);
    uint64_t kept = res_u(ok_result(&r), "image_id");
    hr_free(&r);

    /* malformed request lines and headers: 400 and closed */
    RAW(port, "BLAH\r\n\r\n", 400, "protocol_error", 1);
    RAW(port, "GET /v1/openapi.json HTTP/1.x\r\n\r\n", 400, "protocol_error", 1);
    RAW(port, "GET /v1/open\x7f HTTP/1.1\r\n\r\n", 400, "protocol_error", 1);
    RAW(port, "GET /v1/openapi.json HTTP/1.1\r\nX: a\x01b\r\n\r\n", 400, "protocol_error", 1);
    RAW(port, "GET /v1/openapi.json\r\n\r\n", 505, "protocol_error", 1); /* HTTP/0.9 */
    RAW(port, "GET /v1/openapi.json HTTP/1.1\r\nNo colon here\r\n\r\n", 400, "protocol_error", 1);
    RAW(port, "GET /v1/openapi.json HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400, "protocol_error", 1);
    RAW(port, "POST /v1/ping HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400, "protocol_error", 1);
    RAW(port, "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, "protocol_error", 1); /* TLS hello */
    RAW(port, "GET /v1/openapi.json HTTP/2.0\r\n\r\n", 505, "protocol_error", 1);
    RAW(port, "PUT /v1/ping HTTP/1.1\r\n\r\n", 405, "invalid_argument", 1);
    RAW(port, "GET /etc/passwd HTTP/1.1\r\n\r\n", 404, "not_found", 1);
    RAW(port, "GET /v1/images/abc HTTP/1.1\r\n\r\n", 404, "not_found", 1);
    RAW(port, "GET /v1/images/1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 400, "invalid_argument", 1);
    RAW(port, "POST /v1/ping HTTP/1.1\r\nExpect: 200-ok\r\n\r\n", 417, "invalid_argument", 1);
    RAW(port, "GET /v1/openapi.json HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", 501, "unsupported", 1);

    /* huge headers: refused at 16 KiB, whatever follows */
    {
        size_t n = 40000;
        char *big = malloc(n + 100);
        int k = snprintf(big, 100, "GET /v1/openapi.json HTTP/1.1\r\nX-Big: ");
        memset(big + k, 'a', n);
        memcpy(big + k + n, "\r\n\r\n", 4);
        raw_case(port, big, (size_t)k + n + 4, 431, "too_large", 1);
        /* many small headers */
        size_t o = (size_t)snprintf(big, n, "GET /v1/openapi.json HTTP/1.1\r\n");
        for (int i = 0; i < 100; i++) o += (size_t)snprintf(big + o, n - o, "X-H%d: v\r\n", i);
        o += (size_t)snprintf(big + o, n - o, "\r\n");
        raw_case(port, big, o, 431, "too_large", 1);
        /* a huge URL */
        o = (size_t)snprintf(big, n, "GET /");
        memset(big + o, 'u', 30000);
        o += 30000;
        o += (size_t)snprintf(big + o, n + 100 - o, " HTTP/1.1\r\n\r\n");
        raw_case(port, big, o, 431, "too_large", 1);
        free(big);
    }

    /* a body over --max-frame: 413 from the headers alone, before any body byte */
    RAW(port, "POST /v1/ingest?name=x HTTP/1.1\r\nContent-Length: 1048577\r\n\r\n", 413, "too_large", 1);
    RAW(port, "POST /v1/ingest?name=x HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", 400, "protocol_error", 1);
    /* a chunked body that passes the limit: 413 when it does */
    {
        hconn *k = hc_open(port);
        hc_sendf(k, "POST /v1/ingest?name=x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        char chunk[65536 + 16];
        int hl = snprintf(chunk, 16, "10000\r\n");
        memset(chunk + hl, 'x', 65536);
        memcpy(chunk + hl + 65536, "\r\n", 2);
        /* 17 x 64 KiB: past the 1 MiB limit, and all of it read by the server
         * (bytes it left unread would turn its close into a reset that can
         * overtake the answer) */
        for (int i = 0; i < 17; i++) hc_send(k, chunk, (size_t)hl + 65538);
        hresp kr = hc_read(k);
        want_error(&kr, 413, "too_large");
        hr_free(&kr);
        hc_close(k);
        http_serves(port);
    }

    /* JSON: invalid, not UTF-8, too deep, not an object, id/op keys, bad base64, wrong types */
    struct { const char *body; int status; const char *code; } js[] = {
        {"{\"text\":", 400, "protocol_error"},
        {"{\"text\":\"a\"} trailing", 400, "protocol_error"},
        {"{\"text\":\"\xff\xfe\"}", 400, "invalid_utf8"},
        {"{\"text\":\"\xc0\xaf\"}", 400, "invalid_utf8"},
        {"[1,2]", 400, "invalid_argument"},
        {"\"text\"", 400, "protocol_error"}, /* jansson: a document is an object or array */
        {"{\"id\":1,\"text\":\"a\"}", 400, "invalid_argument"},
        {"{\"op\":\"stats\",\"text\":\"a\"}", 400, "invalid_argument"},
        {"{\"text\":\"a\",\"text\":\"b\"}", 400, "protocol_error"},
        {"{\"text\":\"a\",\"k\":\"ten\"}", 400, "invalid_argument"},
        {"{\"text\":\"a\",\"k\":1.5}", 400, "invalid_argument"},
        {"{\"text\":\"a\",\"k\":100000000000000000000000}", 400, "protocol_error"},
        {"{\"text\":\"a\",\"filters\":{\"colour\":1}}", 400, "invalid_argument"},
        {"{\"text\":\"a\",\"filters\":[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]}", 413, "too_large"},
        {"{\"text\":\"\"}", 400, "invalid_argument"},
        {"{\"text\":null}", 400, "invalid_argument"},
    };
    for (size_t i = 0; i < sizeof js / sizeof js[0]; i++) {
        r = hc_post_json(c, "query", js[i].body); /* each on the same keep-alive connection: it goes on */
        want_error(&r, js[i].status, js[i].code);
        hr_free(&r);
    }
    r = hc_post_json(c, "query_image", "{\"data\":\"!!!not base64!!!\"}");
    want_error(&r, 400, "invalid_argument");
    hr_free(&r);
    r = hc_post_json(c, "ingest", "{\"data\":\"AAAA\",\"name\":\"junk.jpg\"}"); /* decodes, is no image */
    assert_true(r.status == 400);
    hr_free(&r);
    /* nesting 200,000 deep (inside the body limit): refused by the pre-scan, no recursion */
    {
        size_t depth = 200000;
        char *deep = malloc(2 * depth + 32);
        size_t o = (size_t)sprintf(deep, "{\"text\":\"a\",\"x\":");
        memset(deep + o, '[', depth);
        memset(deep + o + depth, ']', depth);
        o += 2 * depth;
        deep[o++] = '}';
        r = hc_call(c, "POST", "/v1/query", NULL, deep, o);
        want_error(&r, 413, "too_large");
        hr_free(&r);
        free(deep);
    }
    /* unknown op, and a path with more segments */
    r = hc_post_json(c, "drop_tables", "{}");
    want_error(&r, 404, "unknown_op");
    hr_free(&r);
    RAW(port, "POST /v1/query/x HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 404, "not_found", 1);
    /* ingest of raw bytes without a name, with an unknown parameter, a bad escape */
    r = hc_call(c, "POST", "/v1/ingest?tags=a", NULL, jpg, jl);
    want_error(&r, 400, "invalid_argument");
    hr_free(&r);
    r = hc_call(c, "POST", "/v1/ingest?name=a.jpg&colour=red", NULL, jpg, jl);
    want_error(&r, 400, "invalid_argument");
    hr_free(&r);
    r = hc_call(c, "POST", "/v1/ingest?name=a%zz.jpg", NULL, jpg, jl);
    want_error(&r, 400, "invalid_argument");
    hr_free(&r);
    r = hc_call(c, "POST", "/v1/ingest?name=a%00.jpg", NULL, jpg, jl); /* a NUL in the name */
    want_error(&r, 400, "invalid_argument");
    hr_free(&r);
    r = hc_call(c, "POST", "/v1/ingest?name=%ff.jpg", NULL, jpg, jl);
    want_error(&r, 400, "invalid_utf8");
    hr_free(&r);
    /* the connection that took all of it still works, and so do others */
    r = hc_post_json(c, "ping", "{}");
    ok_result(&r);
    hr_free(&r);
    hc_close(c);
    http_serves(port);
    /* nothing lost: the image acknowledged at the start is there, also over msgpack */
    umg_client *m = ts_conn(&h.s);
    proto_writer w;
    uint64_t id = ts_begin(m, &w, "get", 1);
    ts_kv_uint(&w, "image_id", kept);
    ts_end(m, &w);
    proto_response_free(ts_wait_ok(m, id));
    umg_client_close(m);
    assert_int_equal(ts_stop(&h.s), 0);
    free(jpg);
    tu_rm_rf(h.s.dir);
}

/* ---- slow clients ------------------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Drip data one byte every 200 ms until the server closes; the seconds it took. */
static double drip_until_closed(hconn *c, const char *data, double limit_s)
{
    double t0 = now_s();
    size_t len = strlen(data), i = 0;
    while (now_s() - t0 < limit_s) {
        if (send(c->fd, data + i % len, 1, MSG_NOSIGNAL) < 0) break;
        i++;
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        if (poll(&p, 1, 200) > 0) {
            char b[4096];
            ssize_t k = recv(c->fd, b, sizeof b, 0);
            if (k <= 0) break;
            /* the 408 answer, then the close */
            assert_non_null(memmem(b, (size_t)k, "408", 3));
            assert_true(hc_closed_within(c, 5000));
            break;
        }
    }
    return now_s() - t0;
}

static void test_slow_clients(void **state)
{
    http_server h;
    make_http(&h, "umg-http-");
    run_http(&h, (const char *const[]){"--http-header-timeout", "1", "--http-body-timeout", "2", "--http-keepalive",
                                       "2", NULL});
    /* slowloris: headers a byte at a time, never finished */
    hconn *a = hc_open(h.port);
    hconn *b = hc_open(h.port);
    hc_sendf(b, "POST /v1/query HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    double t = drip_until_closed(a, "GET /v1/openapi.json HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaa", 10);
    assert_true(t >= 0.9 && t < 4);
    /* a chunked body that never ends (a chunk every 200 ms): the body deadline */
    t = drip_until_closed(b, "1\r\na\r\n", 10);
    assert_true(t >= 0.5 && t < 6);
    /* a body announced and never sent */
    hconn *d = hc_open(h.port);
    hc_sendf(d, "POST /v1/ping HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}");
    hresp r = hc_read(d);
    want_error(&r, 408, "timeout");
    hr_free(&r);
    assert_true(hc_closed_within(d, 5000));
    /* idle keep-alive: closed after ~2 s without a request */
    hconn *e = hc_open(h.port);
    r = hc_post_json(e, "ping", "{}");
    ok_result(&r);
    hr_free(&r);
    double t0 = now_s();
    assert_true(hc_closed_within(e, 6000));
    assert_true(now_s() - t0 >= 1.5);
    /* a connection that never sends a byte is idle too */
    hconn *f = hc_open(h.port);
    assert_true(hc_closed_within(f, 6000));
    http_serves(h.port);
    hc_close(a);
    hc_close(b);
    hc_close(d);
    hc_close(e);
    hc_close(f);
    assert_int_equal(ts_stop(&h.s), 0);
    tu_rm_rf(h.s.dir);
}

/* ---- auth ------------------------------------------------------------------------- */

static void test_auth(void **state)
{
    http_server h;
    make_http(&h, "umg-http-");
    char tokfile[400];
    snprintf(tokfile, sizeof tokfile, "%s/token", h.s.dir);
    tu_write_file(tokfile, "s3cret-token-0123456789\n", 24);
    run_http(&h, (const char *const[]){"--auth-token-file", tokfile, NULL});
    /* no token, a wrong one, another scheme: 401, and the connection closes */
    const char *bad[] = {"", "Authorization: Bearer wrong-token-0123456789\r\n", "Authorization: Basic czNjcmV0\r\n",
                         "Authorization: Bearer s3cret-token-012345678\r\n", "Authorization: Bearer \r\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        hconn *c = hc_open(h.port);
        hresp r = hc_call(c, "POST", "/v1/stats", bad[i], "{}", 2);
        want_error(&r, 401, "unauthorized");
        assert_non_null(strcasestr(r.head, "WWW-Authenticate: Bearer"));
        hr_free(&r);
        assert_true(hc_closed_within(c, 5000));
        hc_close(c);
    }
    /* refused before the body: a 100 MB body announced with a wrong token is never read */
    hconn *c = hc_open(h.port);
    hc_sendf(c, "POST /v1/ingest?name=x HTTP/1.1\r\nAuthorization: Bearer nope\r\nContent-Length: 104857600\r\n\r\n");
    hresp r = hc_read(c);
    want_error(&r, 401, "unauthorized");
    hr_free(&r);
    hc_close(c);
    /* the right token: every request carries it; hello needs no token in the body */
    const char *ok = "Authorization: Bearer s3cret-token-0123456789\r\n";
    c = hc_open(h.port);
    r = hc_call(c, "POST", "/v1/hello", ok, "{}", 2);
    assert_true(json_is_true(json_object_get(ok_result(&r), "auth_required")));
    hr_free(&r);
    r = hc_call(c, "POST", "/v1/stats", ok, "{}", 2);
    ok_result(&r);
    hr_free(&r);
    /* thumbnails too: with the token, and not without */
    size_t jl;
    char *jpg = file_bytes(IMG("rocket.jpg"), &jl);
    r = hc_call(c, "POST", "/v1/ingest?name=r.jpg", ok, jpg, jl);
    char thumb[128];
    snprintf(thumb, sizeof thumb, "/v1/images/%llu/thumb", (unsigned long long)res_u(ok_result(&r), "image_id"));
    hr_free(&r);
    free(jpg);
    r = hc_call(c, "GET", thumb, ok, NULL, 0);
    assert_int_equal(r.status, 200);
    hr_free(&r);
    /* on a connection that was authenticated, a request without the token is still refused */
    r = hc_call(c, "POST", "/v1/stats", NULL, "{}", 2);
    want_error(&r, 401, "unauthorized");
    hr_free(&r);
    hc_close(c);
    c = hc_open(h.port);
    r = hc_call(c, "GET", thumb, NULL, NULL, 0);
    want_error(&r, 401, "unauthorized");
    hr_free(&r);
    hc_close(c);
    /* the document is public */
    c = hc_open(h.port);
    r = hc_call(c, "GET", "/v1/openapi.json", NULL, NULL, 0);
    assert_int_equal(r.status, 200);
    hr_free(&r);
    hc_close(c);
    assert_int_equal(ts_stop(&h.s), 0);
    tu_rm_rf(h.s.dir);
}

/* ---- connection cap and backpressure ------------------------------------------------ */

static void test_caps(void **state)
{
    http_server h;
    make_http(&h, "umg-http-");
    run_http(&h, (const char *const[]){"--max-connections", "3", "--log-level", "warn", NULL});
    /* (the harness's start-up probe may still count for a moment) */
    usleep(300 * 1000);
    hconn *a = hc_open(h.port), *b = hc_open(h.port);
    hresp r = hc_post_json(a, "ping", "{}");
    ok_result(&r);
    hr_free(&r);
    r = hc_post_json(b, "ping", "{}");
    ok_result(&r);
    hr_free(&r);
    umg_client *m = ts_conn(&h.s); /* the msgpack side counts in the same cap */
    hconn *c = hc_open(h.port);
    r = hc_read(c);
    want_error(&r, 429, "busy");
    assert_non_null(strcasestr(r.head, "Retry-After:"));
    hr_free(&r);
    assert_true(hc_closed_within(c, 5000));
    hc_close(c);
    umg_client_close(m);
    hc_close(b);
    hc_close(a);
    usleep(300 * 1000); /* until the server has seen them go */

    /* backpressure: requests pipelined without reading the answers.  The
     * server answers one request at a time and stops reading once the
     * answers it could not send pass its cap; nothing is lost: every answer
     * comes once we read. */
    int n = 100000; /* ~33 MB of answers: over the cap even once the kernel's buffers (~10 MB) are full */
    const char req[] = "POST /v1/ping HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}";
    size_t rl = sizeof req - 1;
    char *all = malloc(rl * (size_t)n);
    for (int i = 0; i < n; i++) memcpy(all + (size_t)i * rl, req, rl);
    hconn *p = hc_open(h.port);
    /* (the default receive buffer: a small one stalls the reading below on
     * TCP's silly-window avoidance, 200 ms per window) */
    fcntl(p->fd, F_SETFL, fcntl(p->fd, F_GETFL) | O_NONBLOCK);
    size_t sent = 0;
    for (int i = 0; i < 100 && sent < rl * (size_t)n; i++) {
        ssize_t k = send(p->fd, all + sent, rl * (size_t)n - sent, MSG_NOSIGNAL);
        if (k > 0) sent += (size_t)k;
        else usleep(50 * 1000);
    }
    /* meanwhile the server serves others, and reports the paused connection
     * holding about its cap of unsent answers (SRV_MAX_UNSENT, 8 MiB of memory) */
    m = ts_conn(&h.s);
    uint64_t paused = 0, unsent = 0;
    for (int i = 0; i < 600 && !paused; i++) {
        proto_response *st = NULL;
        assert_int_equal(umg_client_call0(m, "stats", TS_T_MS, &st), 0);
        assert_true(proto_obj_uint(proto_map_get(proto_map_get(st->result, "queues"), "paused_connections"), &paused));
        assert_true(proto_obj_uint(proto_map_get(proto_map_get(st->result, "queues"), "unsent_bytes"), &unsent));
        proto_response_free(st);
        if (!paused) usleep(50 * 1000);
    }
    assert_true(paused >= 1);
    /* the cap counts the memory of unsent answers (their buffers and write
     * requests), so the bytes are under 8 MiB, and well above a socket's worth */
    assert_true(unsent >= (2u << 20) && unsent < (8u << 20));
    umg_client_close(m);
    /* read everything while sending the rest: n answers, in order, all ok */
    fcntl(p->fd, F_SETFL, fcntl(p->fd, F_GETFL) & ~O_NONBLOCK);
    int got = 0;
    while (got < n) {
        if (sent < rl * (size_t)n) {
            ssize_t k = send(p->fd, all + sent, rl * (size_t)n - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (k > 0) sent += (size_t)k;
        }
        /* parse whole answers out of what has arrived (one compaction per read) */
        size_t off = 0;
        char *end;
        while (off < p->n && (end = memmem(p->buf + off, p->n - off, "\r\n\r\n", 4))) {
            size_t hl = (size_t)(end - (p->buf + off)) + 4;
            char *cl = memmem(p->buf + off, hl, "Content-Length: ", 16);
            assert_non_null(cl);
            size_t bl = strtoull(cl + 16, NULL, 10);
            if (p->n - off < hl + bl) break;
            assert_int_equal(strncmp(p->buf + off, "HTTP/1.1 200", 12), 0);
            off += hl + bl;
            got++;
        }
        if (off) memmove(p->buf, p->buf + off, p->n - off);
        p->n -= off;
        if (got < n && hc_fill(p, TS_T_MS) != 1) fail_msg("answers stopped after %d of %d", got, n);
    }
    assert_int_equal(p->n, 0);
    free(all);
    hc_close(p);
    http_serves(h.port);
    assert_int_equal(ts_stop(&h.s), 0);
    tu_rm_rf(h.s.dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_every_op, ts_teardown),
        cmocka_unit_test_teardown(test_thumbs, ts_teardown),
        cmocka_unit_test_teardown(test_hostile, ts_teardown),
        cmocka_unit_test_teardown(test_slow_clients, ts_teardown),
        cmocka_unit_test_teardown(test_auth, ts_teardown),
        cmocka_unit_test_teardown(test_caps, ts_teardown),
    };
    if (getenv("UMG_TEST_FILTER")) cmocka_set_test_filter(getenv("UMG_TEST_FILTER")); /* one test by name */
    return cmocka_run_group_tests(tests, NULL, NULL);
}
