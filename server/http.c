/* http.c - HTTP/1.1 connections (http.h, docs/http.md).
 *
 * One request at a time per connection (answers keep their order without a
 * queue): while a request is in flight the connection reads no further
 * (over_caps in server.c), later pipelined bytes wait in its stash.  Limits
 * apply before anything is buffered: the request line and headers are
 * counted as they arrive (HTTP_MAX_HEADER_BYTES), a Content-Length over the
 * frame limit is refused at the end of the headers, a chunked body when it
 * passes the limit; the body buffer grows with the bytes received, never
 * with the length announced.  The token is checked at the end of the
 * headers, before any body byte is kept. */
#include "http.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <http_parser.h>
#include <openssl/evp.h>

#include "http_json.h"
#include "umg_error.h"
#include "umg_http_assets.h"

enum route {
    R_NONE,
    R_OP,         /* POST /v1/{op} */
    R_IMAGE,      /* GET /v1/images/{id} */
    R_IMAGE_FILE, /* GET /v1/images/{id}/file */
    R_IMAGE_THUMB, /* GET /v1/images/{id}/thumb */
    R_ASSET,      /* GET of an embedded file (/v1/openapi.json, the page) */
};

enum hdr { H_OTHER, H_AUTH, H_EXPECT, H_IF_NONE_MATCH };

struct srv_http {
    http_parser p;
    uint64_t req_start_ns;     /* first byte of the request being read; 0 between requests */
    uint64_t headers_done_ns;  /* its headers complete; 0 before */
    size_t hdr_bytes;
    int n_headers;
    int last_was_value;        /* header callbacks: a value ended the last piece */
    enum hdr cur;
    char field[32];            /* the header name being read (longer ones are H_OTHER) */
    size_t field_len;
    char url[HTTP_MAX_HEADER_BYTES];
    size_t url_len;
    char auth[4200];           /* "Bearer <token>"; the token is at most 4096 bytes */
    size_t auth_len;
    char expect[32];
    size_t expect_len;
    char if_none_match[256];   /* a thumbnail's revalidation: ETags the client holds */
    size_t if_none_match_len;
    uint8_t *body;
    size_t body_len, body_cap, body_max;
    /* the request, once its headers are complete */
    enum route route;
    char op[32];
    uint64_t image_id;
    const umg_asset *asset;
    int keep_alive;
    int complete;              /* on_message_complete: dispatch */
    int reject_status;         /* a callback refused the request: answer, then close */
    int reject_code;
    char reject_msg[200];
    uint64_t next_id;          /* ids of the frames made from this connection's requests */
    /* lingering close: after a last answer the write side is shut down and
     * what the peer still sends is read and dropped, until it closes or
     * HTTP_LINGER_S pass; closing with unread bytes would send a reset that
     * can destroy the answer before the peer reads it */
    uint64_t linger_ns;        /* 0 = not lingering */
    uv_shutdown_t shutdown;
};

#define HTTP_LINGER_S 2

/* The page's files (web/): scripts and styles only from the server, no
 * inline code, images only as blob: URLs the page makes from fetched bytes,
 * and Trusted Types so that any string written as HTML throws (the page
 * writes data with textContent only). */
#define ASSET_HEADERS                                                                                        \
    "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob:; " \
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'; "                      \
    "require-trusted-types-for 'script'; trusted-types 'none'\r\n"                                          \
    "Referrer-Policy: no-referrer\r\n"
/* with the other headers at most ~170 bytes: within send_answer's head[] */
_Static_assert(sizeof ASSET_HEADERS <= 320, "ASSET_HEADERS must fit send_answer's header buffer");

static srv_http *of(http_parser *p) { return ((srv_conn *)p->data)->http; }

static int reject(http_parser *p, int status, int code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int reject(http_parser *p, int status, int code, const char *fmt, ...)
{
    srv_http *h = of(p);
    h->reject_status = status;
    h->reject_code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(h->reject_msg, sizeof h->reject_msg, fmt, ap);
    va_end(ap);
    return -1;
}

/* ---- sending ------------------------------------------------------------------ */

/* One answer: status line, headers, body (copied).  close: "Connection:
 * close", and the connection closes once it is written.  cache: the
 * Cache-Control value.  A 304 has neither body nor content headers. */
static void send_answer_cached(srv_conn *c, int status, const char *ctype, const void *body, size_t len, int close,
                               const char *cache, const char *extra)
{
    char head[640], content[160] = "";
    if (status != 304)
        snprintf(content, sizeof content, "Content-Type: %s\r\nContent-Length: %zu\r\n", ctype, len);
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\n%sX-Content-Type-Options: nosniff\r\nCache-Control: %s\r\n%s%s\r\n",
                     status, http_reason(status), content, cache, extra ? extra : "",
                     close ? "Connection: close\r\n" : "");
    char *buf = malloc((size_t)n + len);
    if (!buf) {
        srv_conn_close(c, "out of memory");
        return;
    }
    memcpy(buf, head, (size_t)n);
    if (len) memcpy(buf + n, body, len);
    srv_conn_send(c, buf, (size_t)n + len);
    if (close && !c->closing && !c->http->linger_ns) {
        /* FIN once the answer is written; go on reading (and dropping) */
        c->http->linger_ns = srv_now_ns();
        if (uv_shutdown(&c->http->shutdown, &c->h.stream, NULL)) srv_conn_close(c, "shutdown failed");
    }
}

static void send_answer(srv_conn *c, int status, const char *ctype, const void *body, size_t len, int close,
                        const char *extra)
{
    send_answer_cached(c, status, ctype, body, len, close, "no-store", extra);
}

/* A thumbnail: its ETag is a digest of its bytes, so it changes whenever
 * the bytes do (a path replaced is a new image id anyway; a new data
 * directory reuses ids from 1).  "no-cache": kept by the client, revalidated
 * at each use (a 304 without the bytes); not "immutable", because an id can
 * name another photo in another data directory behind the same address. */
static void send_thumb(srv_conn *c, srv_http *h, const uint8_t *jpeg, size_t len, int close)
{
    uint8_t sum[32];
    unsigned int sn = 32;
    EVP_Digest(jpeg, len, sum, &sn, EVP_sha256(), NULL);
    char etag[40] = "\"";
    for (int i = 0; i < 16; i++) snprintf(etag + 1 + 2 * i, 3, "%02x", sum[i]);
    strcat(etag, "\"");
    char extra[64];
    snprintf(extra, sizeof extra, "ETag: %s\r\n", etag);
    /* If-None-Match: "*" or a list of (weak or strong) tags; ours are quoted hex */
    int match = h->if_none_match_len &&
                (!strcmp(h->if_none_match, "*") || strstr(h->if_none_match, etag) != NULL);
    send_answer_cached(c, match ? 304 : 200, "image/jpeg", jpeg, match ? 0 : len, close, "private, no-cache", extra);
}

static void send_json_error(srv_conn *c, int status, int code, const char *msg, int close)
{
    char *j = http_error_json(code, msg);
    const char *extra = status == 401 ? "WWW-Authenticate: Bearer\r\n" : status == 429 ? "Retry-After: 1\r\n" : NULL;
    if (j) send_answer(c, status, "application/json", j, strlen(j), close, extra);
    else srv_conn_close(c, "out of memory");
    free(j);
}

void srv_http_send_error(srv_conn *c, int code, const char *msg)
{
    srv_http *h = c->http;
    send_json_error(c, http_status_of(code), code, msg, !h || !h->keep_alive || c->close_after_writes);
}

void srv_http_answer(srv_conn *c, srv_job *job)
{
    srv_http *h = c->http;
    int close = !h->keep_alive;
    if (job->raw_type && !job->status) {
        if (h->route == R_IMAGE_THUMB) send_thumb(c, h, (const uint8_t *)job->resp.data, job->resp.size, close);
        else send_answer(c, 200, job->raw_type, job->resp.data, job->resp.size, close, NULL);
        return;
    }
    char *json;
    int status, code;
    size_t hdr = PROTO_FRAME_HEADER;
    if (job->resp.size < hdr ||
        http_response_json((const uint8_t *)job->resp.data + hdr, job->resp.size - hdr, &json, &status, &code)) {
        srv_conn_close(c, "out of memory");
        return;
    }
    send_answer(c, status, "application/json", json, strlen(json), close, NULL);
    free(json);
}

/* ---- parsing callbacks ------------------------------------------------------- */

static int count_header_bytes(http_parser *p, size_t len)
{
    srv_http *h = of(p);
    h->hdr_bytes += len;
    if (h->hdr_bytes > HTTP_MAX_HEADER_BYTES)
        return reject(p, 431, UMG_ETOOBIG, "request line and headers over %d bytes", HTTP_MAX_HEADER_BYTES);
    return 0;
}

static int on_message_begin(http_parser *p)
{
    srv_http *h = of(p);
    h->hdr_bytes = 0;
    h->n_headers = 0;
    h->last_was_value = 0;
    h->field_len = h->url_len = h->auth_len = h->expect_len = h->if_none_match_len = 0;
    h->if_none_match[0] = 0;
    h->body_len = 0;
    h->route = R_NONE;
    h->headers_done_ns = 0;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    srv_http *h = of(p);
    if (count_header_bytes(p, len)) return -1;
    memcpy(h->url + h->url_len, at, len); /* fits: counted within HTTP_MAX_HEADER_BYTES */
    h->url_len += len;
    return 0;
}

static void append(char *dst, size_t cap, size_t *n, const char *at, size_t len, int *over)
{
    if (*n + len >= cap) {
        *over = 1;
        return;
    }
    memcpy(dst + *n, at, len);
    *n += len;
    dst[*n] = 0;
}

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    srv_http *h = of(p);
    if (count_header_bytes(p, len + 4)) return -1; /* ": " and CRLF */
    if (h->last_was_value || h->n_headers == 0) {
        if (++h->n_headers > HTTP_MAX_HEADERS)
            return reject(p, 431, UMG_ETOOBIG, "more than %d header fields", HTTP_MAX_HEADERS);
        h->field_len = 0;
        h->last_was_value = 0;
    }
    int over = 0;
    append(h->field, sizeof h->field, &h->field_len, at, len, &over);
    if (over) h->field_len = sizeof h->field; /* too long for a header we read */
    return 0;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    srv_http *h = of(p);
    if (count_header_bytes(p, len)) return -1;
    if (!h->last_was_value) {
        h->last_was_value = 1;
        h->cur = H_OTHER;
        if (h->field_len < sizeof h->field) {
            h->field[h->field_len] = 0;
            if (!strcasecmp(h->field, "authorization")) h->cur = H_AUTH, h->auth_len = 0;
            else if (!strcasecmp(h->field, "expect")) h->cur = H_EXPECT, h->expect_len = 0;
            else if (!strcasecmp(h->field, "if-none-match")) h->cur = H_IF_NONE_MATCH, h->if_none_match_len = 0;
        }
    }
    int over = 0;
    switch (h->cur) {
    case H_AUTH: append(h->auth, sizeof h->auth, &h->auth_len, at, len, &over); break;
    case H_EXPECT: append(h->expect, sizeof h->expect, &h->expect_len, at, len, &over); break;
    case H_IF_NONE_MATCH:
        append(h->if_none_match, sizeof h->if_none_match, &h->if_none_match_len, at, len, &over);
        if (over) h->if_none_match_len = 0, h->if_none_match[0] = 0, over = 0; /* too many tags: revalidation off */
        break;
    default: break;
    }
    if (over) return reject(p, 431, UMG_ETOOBIG, "header %s too long", h->cur == H_AUTH ? "Authorization" : "value");
    return 0;
}

/* The route of path[0..n) (no query). */
static int route_of(srv_http *h, const char *path, size_t n, int method)
{
    if (method == HTTP_GET) {
        char buf[64];
        if (n < sizeof buf) {
            memcpy(buf, path, n);
            buf[n] = 0;
            if ((h->asset = umg_asset_find(buf))) return R_ASSET;
        }
        static const char pre[] = "/v1/images/";
        size_t pl = sizeof pre - 1;
        if (n > pl && !memcmp(path, pre, pl)) {
            const char *q = path + pl, *end = path + n;
            uint64_t id = 0;
            int digits = 0;
            while (q < end && isdigit((unsigned char)*q) && digits < 19) id = id * 10 + (uint64_t)(*q++ - '0'), digits++;
            if (!digits) return R_NONE;
            h->image_id = id;
            if (q == end) return R_IMAGE;
            if ((size_t)(end - q) == 5 && !memcmp(q, "/file", 5)) return R_IMAGE_FILE;
            if ((size_t)(end - q) == 6 && !memcmp(q, "/thumb", 6)) return R_IMAGE_THUMB;
        }
        return R_NONE;
    }
    if (method == HTTP_POST && n > 4 && !memcmp(path, "/v1/", 4) && n - 4 < sizeof h->op) {
        memcpy(h->op, path + 4, n - 4);
        h->op[n - 4] = 0;
        return strchr(h->op, '/') ? R_NONE : R_OP;
    }
    return R_NONE;
}

static int on_headers_complete(http_parser *p)
{
    srv_conn *c = p->data;
    srv_http *h = c->http;
    srv *s = c->s;
    h->headers_done_ns = srv_now_ns();
    h->keep_alive = http_should_keep_alive(p);
    if (p->http_major != 1) return reject(p, 505, UMG_EPROTO, "HTTP/%d.%d: only HTTP/1.x is served", p->http_major, p->http_minor);
    if (p->method != HTTP_GET && p->method != HTTP_POST)
        return reject(p, 405, UMG_EINVAL, "method %s: only GET and POST", http_method_str(p->method));
    size_t plen = 0;
    while (plen < h->url_len && h->url[plen] != '?') plen++;
    h->route = route_of(h, h->url, plen, p->method);
    if (h->route == R_NONE) return reject(p, 404, UMG_ENOENT, "no such resource (docs/http.md lists them)");
    /* the token before the body: nothing of an unauthenticated request is kept */
    if (h->route != R_ASSET && (s->cfg.token || s->cfg.require_auth)) {
        static const char bearer[] = "Bearer ";
        int ok = h->auth_len > sizeof bearer - 1 && !strncasecmp(h->auth, bearer, sizeof bearer - 1) &&
                 srv_token_ok(s, h->auth + sizeof bearer - 1, h->auth_len - (sizeof bearer - 1));
        if (!ok) return reject(p, 401, UMG_EAUTH, "missing or wrong token (Authorization: Bearer TOKEN)");
        c->authed = 1;
    }
    int chunked = (p->flags & F_CHUNKED) != 0;
    uint64_t declared = chunked || p->content_length == ULLONG_MAX ? 0 : p->content_length;
    h->body_max = s->limits.max_frame;
    if (declared > h->body_max)
        return reject(p, 413, UMG_ETOOBIG, "body of %llu bytes, over the %zu-byte limit (--max-frame)",
                      (unsigned long long)declared, h->body_max);
    if ((declared || chunked) && h->route != R_OP)
        return reject(p, 400, UMG_EINVAL, "GET takes no body");
    if (h->expect_len) {
        if (strcasecmp(h->expect, "100-continue")) return reject(p, 417, UMG_EINVAL, "Expect: only 100-continue");
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        char *b = malloc(sizeof cont - 1);
        if (b) {
            memcpy(b, cont, sizeof cont - 1);
            srv_conn_send(c, b, sizeof cont - 1);
        }
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    srv_http *h = of(p);
    if (h->body_len + len > h->body_max)
        return reject(p, 413, UMG_ETOOBIG, "body over the %zu-byte limit (--max-frame)", h->body_max);
    if (h->body_len + len > h->body_cap) {
        size_t cap = h->body_cap ? h->body_cap : 16384;
        while (cap < h->body_len + len) cap *= 2;
        if (cap > h->body_max) cap = h->body_max;
        uint8_t *b = realloc(h->body, cap);
        if (!b) return reject(p, 500, UMG_ENOMEM, "out of memory");
        h->body = b;
        h->body_cap = cap;
    }
    memcpy(h->body + h->body_len, at, len);
    h->body_len += len;
    return 0;
}

static int on_message_complete(http_parser *p)
{
    srv_http *h = of(p);
    h->complete = 1;
    http_parser_pause(p, 1); /* one request at a time: the rest waits */
    return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- dispatch -------------------------------------------------------------------- */

static int hexval(int ch)
{
    return ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : ch >= 'A' && ch <= 'F' ? ch - 'A' + 10 : -1;
}

/* Percent-decode s[0..n) in place ('+' is a space); the new length, or
 * (size_t)-1 on a bad escape. */
static size_t url_decode(char *s, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            if (i + 2 >= n) return (size_t)-1;
            int hi = hexval((unsigned char)s[i + 1]), lo = hexval((unsigned char)s[i + 2]);
            if (hi < 0 || lo < 0) return (size_t)-1;
            s[o++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            s[o++] = s[i] == '+' ? ' ' : s[i];
        }
    }
    return o;
}

#define MAX_QUERY_TAGS 64

/* POST /v1/ingest?name=N&tags=a,b (or tags=a&tags=b): the body is the photo. */
static int raw_ingest_frame(srv_http *h, char *query, size_t qlen, msgpack_sbuffer *sb)
{
    const char *name = NULL, *tags[MAX_QUERY_TAGS];
    size_t name_len = 0, tag_lens[MAX_QUERY_TAGS];
    int n_tags = 0;
    char *q = query, *end = query + qlen;
    while (q < end) {
        char *amp = memchr(q, '&', (size_t)(end - q));
        if (!amp) amp = end;
        char *eq = memchr(q, '=', (size_t)(amp - q));
        if (eq) {
            size_t kl = (size_t)(eq - q);
            size_t vl = url_decode(eq + 1, (size_t)(amp - eq - 1));
            if (vl == (size_t)-1) return umg_err_set(UMG_EINVAL, "bad %%-escape in the query string");
            if (kl == 4 && !memcmp(q, "name", 4)) {
                name = eq + 1;
                name_len = vl;
            } else if (kl == 4 && !memcmp(q, "tags", 4)) {
                for (char *t = eq + 1, *te = eq + 1 + vl; t < te;) {
                    char *comma = memchr(t, ',', (size_t)(te - t));
                    if (!comma) comma = te;
                    if (n_tags == MAX_QUERY_TAGS)
                        return umg_err_set(UMG_EINVAL, "more than %d tags", MAX_QUERY_TAGS);
                    tags[n_tags] = t;
                    tag_lens[n_tags++] = (size_t)(comma - t);
                    t = comma + 1;
                }
            } else {
                return umg_err_set(UMG_EINVAL, "ingest: unknown query parameter '%.*s' (name, tags)", (int)kl, q);
            }
        }
        q = amp + 1;
    }
    if (!name) return umg_err_set(UMG_EINVAL, "ingest of raw bytes: the query string needs name=...");
    return http_ingest_request(++h->next_id, name, name_len, tags, tag_lens, n_tags, h->body, h->body_len, sb);
}

static void queue_file_job(srv_conn *c, uint64_t image_id, uv_work_cb work);
static void file_work(uv_work_t *w);
static void thumb_work(uv_work_t *w);

static void dispatch(srv_conn *c)
{
    srv_http *h = c->http;
    size_t plen = 0;
    while (plen < h->url_len && h->url[plen] != '?') plen++;
    char *query = h->url + plen + (plen < h->url_len);
    size_t qlen = h->url_len - plen - (plen < h->url_len);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    int rc = 0;
    umg_err_clear();
    switch (h->route) {
    case R_ASSET:
        send_answer(c, 200, h->asset->content_type, h->asset->data, h->asset->len, !h->keep_alive, ASSET_HEADERS);
        break;
    case R_IMAGE_FILE:
        queue_file_job(c, h->image_id, file_work);
        break;
    case R_IMAGE_THUMB:
        queue_file_job(c, h->image_id, thumb_work);
        break;
    case R_IMAGE: {
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        if (msgpack_pack_map(&pk, 3) || proto_pack_cstr(&pk, "id") || msgpack_pack_uint64(&pk, ++h->next_id) ||
            proto_pack_cstr(&pk, "op") || proto_pack_cstr(&pk, "get") || proto_pack_cstr(&pk, "image_id") ||
            msgpack_pack_uint64(&pk, h->image_id))
            rc = umg_err_set(UMG_ENOMEM, "out of memory");
        break;
    }
    case R_OP: {
        /* the body is JSON whatever its Content-Type says (curl -d sends form-urlencoded),
         * except a raw ingest: POST /v1/ingest?name=... */
        if (!strcmp(h->op, "ingest") && qlen) {
            rc = raw_ingest_frame(h, query, qlen, &sb);
        } else {
            const char *tok = NULL;
            if (h->auth_len > 7) tok = h->auth + 7;
            rc = http_json_to_request(h->op, ++h->next_id, (const char *)h->body, h->body_len, tok, &sb);
        }
        break;
    }
    default: rc = umg_err_set(UMG_EINTERNAL, "no route"); break;
    }
    /* the body is no longer needed: a large one does not stay with an idle connection */
    if (h->body_cap > 65536) {
        free(h->body);
        h->body = NULL;
        h->body_cap = 0;
    }
    h->body_len = 0;
    if (rc) {
        send_json_error(c, http_status_of(rc), rc, umg_err_msg(), !h->keep_alive);
    } else if (sb.size) {
        size_t len = sb.size;
        uint8_t *frame = (uint8_t *)msgpack_sbuffer_release(&sb);
        srv_handle_frame(c, frame, len); /* the same decoding, validation and dispatch as msgpack */
    }
    msgpack_sbuffer_destroy(&sb);
}

/* ---- GET /v1/images/{id}/file (threadpool) ------------------------------------------ */

static void file_work(uv_work_t *w)
{
    srv_job *job = w->data;
    srv *s = job->s;
    umg_err_clear();
    db_image img;
    uint8_t *data = NULL;
    size_t len = 0;
    int64_t mtime;
    int rc = db_get_image(s->db, job->id, &img);
    if (rc == UMG_ENOENT) rc = umg_err_set(UMG_ENOENT, "no image %llu", (unsigned long long)job->id);
    if (rc) goto out;
    /* re-checked now, with the same beneath-the-root open as path ingest: a
     * root removed from the server's flags, or a file moved or swapped for a
     * link since, is not served */
    if (!s->n_roots) rc = umg_err_set(UMG_EPERM, "files are served only for photos ingested by path under --allow-root");
    else if (img.path[0] != '/')
        rc = umg_err_set(UMG_ENOENT, "image %llu was sent as bytes (named '%s'), not ingested by path: no file to serve",
                         (unsigned long long)job->id, img.path);
    else {
        char *norm = NULL;
        rc = srv_read_allowed(s, img.path, &norm, &data, &len, &mtime);
        free(norm);
    }
    if (!rc) {
        uint8_t sum[32];
        unsigned int n = 32;
        EVP_Digest(data, len, sum, &n, EVP_sha256(), NULL);
        if (memcmp(sum, img.sha256, 32))
            rc = umg_err_set(UMG_ENOENT, "image %llu: the file at its path is no longer the photo ingested",
                             (unsigned long long)job->id);
    }
    if (!rc) {
        msgpack_sbuffer_destroy(&job->resp);
        job->resp.data = (char *)data; /* the sbuffer owns the file's bytes now */
        job->resp.size = job->resp.alloc = len;
        job->raw_type = len >= 2 && data[0] == 0xff && data[1] == 0xd8 ? "image/jpeg"
                        : len >= 4 && !memcmp(data, "\x89PNG", 4)     ? "image/png"
                                                                       : "application/octet-stream";
        data = NULL;
    }
    db_image_free(&img);
out:
    free(data);
    if (rc) srv_job_error(job, rc, umg_err_msg());
}

/* GET /v1/images/{id}/thumb: the JPEG stored at ingest (db_get_thumb);
 * photos stored before thumbnails existed have none (404, saying so). */
static void thumb_work(uv_work_t *w)
{
    srv_job *job = w->data;
    umg_err_clear();
    void *jpeg;
    size_t len;
    int rc = db_get_thumb(job->s->db, job->id, &jpeg, &len);
    if (rc) {
        srv_job_error(job, rc, umg_err_msg());
        return;
    }
    msgpack_sbuffer_destroy(&job->resp);
    job->resp.data = jpeg; /* the sbuffer owns the thumbnail's bytes now */
    job->resp.size = job->resp.alloc = len;
    job->raw_type = "image/jpeg";
}

/* A GET of an image's bytes (file_work, thumb_work) on the threadpool. */
static void queue_file_job(srv_conn *c, uint64_t image_id, uv_work_cb work)
{
    srv_job *job = srv_job_new(c, NULL, PROTO_OP_GET, 0);
    if (!job) {
        send_json_error(c, 500, UMG_ENOMEM, "out of memory", 1);
        return;
    }
    job->id = image_id;
    int rc = uv_queue_work(c->s->loop, &job->work, work, srv_after_work);
    if (rc) {
        srv_job_error(job, UMG_EINTERNAL, uv_strerror(rc));
        srv_job_finish(job);
    }
}

/* ---- feeding and deadlines ------------------------------------------------------- */

size_t srv_http_feed(srv_conn *c, const uint8_t *p, size_t len)
{
    srv_http *h = c->http;
    if (h->linger_ns) return len; /* after the last answer: dropped */
    if (!h->req_start_ns) h->req_start_ns = srv_now_ns();
    size_t n = http_parser_execute(&h->p, &settings, (const char *)p, len);
    if (h->complete) {
        h->complete = 0;
        h->req_start_ns = 0;
        http_parser_pause(&h->p, 0);
        if (h->p.upgrade) {
            send_json_error(c, 501, UMG_EUNSUPPORTED, "protocol upgrades are not served", 1);
            return len;
        }
        dispatch(c);
        return n;
    }
    if (h->reject_status) {
        srv_log(c->s, SRV_LOG_INFO, "conn=%llu http status=%d error=\"%s\" (closing)", (unsigned long long)c->serial,
                h->reject_status, h->reject_msg);
        send_json_error(c, h->reject_status, h->reject_code, h->reject_msg, 1);
        return len;
    }
    enum http_errno e = HTTP_PARSER_ERRNO(&h->p);
    if (e != HPE_OK) {
        char msg[160];
        snprintf(msg, sizeof msg, "malformed HTTP request: %s", http_errno_description(e));
        srv_log(c->s, SRV_LOG_INFO, "conn=%llu http status=400 error=\"%s\" (closing)", (unsigned long long)c->serial, msg);
        send_json_error(c, 400, UMG_EPROTO, msg, 1);
        return len;
    }
    return n;
}

/* Deadlines, every quarter of the shortest: headers, body, keep-alive idle.
 * Not counted while the server itself stopped reading (backpressure) or
 * works on the request. */
static void on_timer(uv_timer_t *t)
{
    srv_conn *c = t->data;
    srv_http *h = c->http;
    const server_config *cfg = &c->s->cfg;
    uint64_t now = srv_now_ns(), sec = 1000000000ull;
    if (c->closing) return;
    if (h->linger_ns) {
        if (now - h->linger_ns >= HTTP_LINGER_S * sec) srv_conn_close(c, "http linger over");
        return;
    }
    if (c->close_after_writes || c->inflight) return;
    if (h->req_start_ns && c->reading) {
        int headers = !h->headers_done_ns;
        int limit = headers ? cfg->http_header_timeout_s : cfg->http_body_timeout_s;
        uint64_t since = headers ? h->req_start_ns : h->headers_done_ns;
        if (limit > 0 && now - since >= (uint64_t)limit * sec) {
            char msg[120];
            snprintf(msg, sizeof msg, "request %s not complete within %d s", headers ? "headers" : "body", limit);
            srv_log(c->s, SRV_LOG_INFO, "conn=%llu http status=408 error=\"%s\" (closing)", (unsigned long long)c->serial, msg);
            send_json_error(c, 408, UMG_ETIMEOUT, msg, 1); /* lingers HTTP_LINGER_S at most */
            return;
        }
    }
    int idle = cfg->http_keepalive_s > 0 ? cfg->http_keepalive_s : cfg->idle_timeout_s;
    if (!h->req_start_ns && idle > 0 && now - c->last_activity_ns >= (uint64_t)idle * sec)
        srv_conn_close(c, "http keep-alive idle");
}

int srv_http_attach(srv_conn *c)
{
    srv_http *h = calloc(1, sizeof *h);
    if (!h) return UMG_ENOMEM;
    http_parser_init(&h->p, HTTP_REQUEST);
    h->p.data = c;
    c->http = h;
    const server_config *cfg = &c->s->cfg;
    int t[5] = {cfg->http_header_timeout_s, cfg->http_body_timeout_s, cfg->http_keepalive_s, cfg->idle_timeout_s,
                HTTP_LINGER_S}, m = 0;
    for (int i = 0; i < 5; i++)
        if (t[i] > 0 && (!m || t[i] < m)) m = t[i];
    uv_timer_start(&c->idle, on_timer, (uint64_t)m * 250, (uint64_t)m * 250);
    return 0;
}

void srv_http_free(srv_http *h)
{
    if (!h) return;
    free(h->body);
    free(h);
}
