/* http_json.c - JSON <-> msgpack translations of the HTTP front end
 * (http_json.h). */
#include "http_json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <openssl/evp.h>

#include "proto.h"
#include "umg_error.h"

/* ---- statuses ------------------------------------------------------------- */

int http_status_of(int code)
{
    switch (code) {
    case 0: return 200;
    case UMG_EINVAL:
    case UMG_EPROTO:
    case UMG_EUTF8:
    case UMG_EFORMAT:
    case UMG_EUNSUPPORTED: return 400;
    case UMG_EAUTH: return 401;
    case UMG_EPERM: return 403;
    case UMG_ENOENT:
    case UMG_EUNKNOWNOP: return 404;
    case UMG_ETIMEOUT: return 408;
    case UMG_EEXIST:
    case UMG_EMODEL: return 409;
    case UMG_ETOOBIG: return 413;
    case UMG_EBUSY: return 429;
    case UMG_ESHUTDOWN: return 503;
    case UMG_ENOSPC: return 507;
    default: return 500; /* ENOMEM, EIO, EDB, EINDEX, ECONN, EINTERNAL */
    }
}

const char *http_reason(int status)
{
    switch (status) {
    case 200: return "OK";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    case 507: return "Insufficient Storage";
    default: return "Unknown";
    }
}

/* ---- base64 ----------------------------------------------------------------- */

int http_base64_decode(const char *src, size_t len, uint8_t **out, size_t *out_len)
{
    while (len && src[len - 1] == '=' && (len % 4 != 1)) len--; /* padding is optional */
    if (len % 4 == 1) return umg_err_set(UMG_EINVAL, "bad base64: length");
    uint8_t *buf = malloc(len / 4 * 3 + 3);
    if (!buf) return umg_err_set(UMG_ENOMEM, "out of memory");
    size_t n = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)src[i];
        int v = ch >= 'A' && ch <= 'Z' ? ch - 'A' : ch >= 'a' && ch <= 'z' ? ch - 'a' + 26
              : ch >= '0' && ch <= '9' ? ch - '0' + 52 : ch == '+' ? 62 : ch == '/' ? 63 : -1;
        if (v < 0) {
            free(buf);
            return umg_err_set(UMG_EINVAL, "bad base64: byte %zu is not in the alphabet", i);
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[n++] = (uint8_t)(acc >> bits);
        }
    }
    *out = buf;
    *out_len = n;
    return 0;
}

static char *base64_encode(const uint8_t *p, size_t len)
{
    char *s = malloc((len + 2) / 3 * 4 + 1);
    if (s) EVP_EncodeBlock((unsigned char *)s, p, (int)len);
    return s;
}

/* ---- JSON -> msgpack request ------------------------------------------------- */

int http_json_check_depth(const char *buf, size_t len, int max_depth)
{
    int depth = 0, in_str = 0;
    for (size_t i = 0; i < len; i++) {
        char ch = buf[i];
        if (in_str) {
            if (ch == '\\') i++;
            else if (ch == '"') in_str = 0;
        } else if (ch == '"') {
            in_str = 1;
        } else if (ch == '[' || ch == '{') {
            if (++depth > max_depth)
                return umg_err_set(UMG_ETOOBIG, "JSON nested deeper than %d levels (at byte %zu)", max_depth, i);
        } else if (ch == ']' || ch == '}') {
            depth--;
        }
    }
    return 0;
}

static int pack_str(msgpack_packer *pk, const char *s, size_t n)
{
    return msgpack_pack_str(pk, n) || msgpack_pack_str_body(pk, s, n);
}

static int pack_json(msgpack_packer *pk, json_t *v);

/* Pack one member of an object: a string for a PROTO_T_BIN argument of op
 * (top level only: op NULL below it) is base64 and becomes bin. */
static int pack_member(msgpack_packer *pk, const char *key, json_t *val, const proto_op *op)
{
    if (pack_str(pk, key, strlen(key))) return UMG_ENOMEM;
    int bin = 0;
    for (size_t i = 0; op && i < op->nargs; i++)
        bin |= op->args[i].type == PROTO_T_BIN && !strcmp(op->args[i].key, key);
    if (!bin || !json_is_string(val)) return pack_json(pk, val);
    uint8_t *b;
    size_t bl;
    int rc = http_base64_decode(json_string_value(val), json_string_length(val), &b, &bl);
    if (rc) return umg_err_set(rc, "'%s': %s (bytes are sent as base64)", key, umg_err_msg());
    rc = msgpack_pack_bin(pk, bl) || msgpack_pack_bin_body(pk, b, bl) ? UMG_ENOMEM : 0;
    free(b);
    return rc;
}

static int pack_json(msgpack_packer *pk, json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        if (msgpack_pack_map(pk, json_object_size(v))) return UMG_ENOMEM;
        const char *key;
        json_t *val;
        json_object_foreach(v, key, val) {
            int rc = pack_member(pk, key, val, NULL);
            if (rc) return rc;
        }
        return 0;
    }
    case JSON_ARRAY: {
        if (msgpack_pack_array(pk, json_array_size(v))) return UMG_ENOMEM;
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            int rc = pack_json(pk, e);
            if (rc) return rc;
        }
        return 0;
    }
    case JSON_STRING: return pack_str(pk, json_string_value(v), json_string_length(v)) ? UMG_ENOMEM : 0;
    case JSON_INTEGER: {
        json_int_t i = json_integer_value(v);
        return (i >= 0 ? msgpack_pack_uint64(pk, (uint64_t)i) : msgpack_pack_int64(pk, i)) ? UMG_ENOMEM : 0;
    }
    case JSON_REAL: return msgpack_pack_double(pk, json_real_value(v)) ? UMG_ENOMEM : 0;
    case JSON_TRUE: return msgpack_pack_true(pk) ? UMG_ENOMEM : 0;
    case JSON_FALSE: return msgpack_pack_false(pk) ? UMG_ENOMEM : 0;
    default: return msgpack_pack_nil(pk) ? UMG_ENOMEM : 0;
    }
}

int http_json_to_request(const char *op_name, uint64_t id, const char *body, size_t len, const char *token,
                         msgpack_sbuffer *out)
{
    const proto_op *op = proto_op_find(op_name, strlen(op_name));
    if (!op) return umg_err_set(UMG_EUNKNOWNOP, "no operation '%s' (POST /v1/{op}; docs/http.md)", op_name);
    int rc = http_json_check_depth(body, len, HTTP_JSON_MAX_DEPTH);
    if (rc) return rc;
    json_t *root;
    if (len == 0) {
        root = json_object(); /* an empty body is {} */
    } else {
        json_error_t je;
        root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
        if (!root) {
            int utf8 = json_error_code(&je) == json_error_invalid_utf8;
            return umg_err_set(utf8 ? UMG_EUTF8 : UMG_EPROTO, "request body is not %s: %s (at byte %d)",
                               utf8 ? "UTF-8" : "JSON", je.text, je.position);
        }
    }
    if (!root) return umg_err_set(UMG_ENOMEM, "out of memory");
    if (!json_is_object(root)) {
        json_decref(root);
        return umg_err_set(UMG_EINVAL, "request body must be a JSON object (the request map without \"id\")");
    }
    if (json_object_get(root, "id") || json_object_get(root, "op")) {
        json_decref(root);
        return umg_err_set(UMG_EINVAL, "request body must not hold \"id\" or \"op\": the op is in the URL, "
                                       "and HTTP answers each request in order");
    }
    int add_token = token && op->code == PROTO_OP_HELLO && !json_object_get(root, "token");
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
    rc = msgpack_pack_map(&pk, json_object_size(root) + 2 + (size_t)add_token) || pack_str(&pk, "id", 2) ||
                 msgpack_pack_uint64(&pk, id) || pack_str(&pk, "op", 2) || pack_str(&pk, op->name, strlen(op->name))
             ? UMG_ENOMEM
             : 0;
    if (!rc && add_token && (pack_str(&pk, "token", 5) || pack_str(&pk, token, strlen(token)))) rc = UMG_ENOMEM;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (rc) break;
        rc = pack_member(&pk, key, val, op);
    }
    json_decref(root);
    if (rc == UMG_ENOMEM) return umg_err_set(UMG_ENOMEM, "out of memory");
    return rc;
}

int http_ingest_request(uint64_t id, const char *name, size_t name_len, const char *const *tags,
                        const size_t *tag_lens, int n_tags, const uint8_t *data, size_t len, msgpack_sbuffer *out)
{
    msgpack_packer pk;
    msgpack_packer_init(&pk, out, msgpack_sbuffer_write);
    int bad = msgpack_pack_map(&pk, 4 + (n_tags > 0)) || pack_str(&pk, "id", 2) || msgpack_pack_uint64(&pk, id) ||
              pack_str(&pk, "op", 2) || pack_str(&pk, "ingest", 6) || pack_str(&pk, "name", 4) ||
              pack_str(&pk, name, name_len) || pack_str(&pk, "data", 4) || msgpack_pack_bin(&pk, len) ||
              msgpack_pack_bin_body(&pk, data, len);
    if (!bad && n_tags > 0) {
        bad = pack_str(&pk, "tags", 4) || msgpack_pack_array(&pk, (size_t)n_tags);
        for (int i = 0; !bad && i < n_tags; i++) bad = pack_str(&pk, tags[i], tag_lens[i]);
    }
    return bad ? umg_err_set(UMG_ENOMEM, "out of memory") : 0;
}

/* ---- msgpack response -> JSON ------------------------------------------------ */

static json_t *json_of_str(const char *s, size_t n)
{
    if (proto_utf8_prefix(s, n) == n) return json_stringn(s, n);
    char *tmp = malloc(n ? n : 1);
    if (!tmp) return NULL;
    size_t m = proto_utf8_sanitize(tmp, n, s, n);
    json_t *j = json_stringn(tmp, m);
    free(tmp);
    return j;
}

static json_t *json_of(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: return json_null();
    case MSGPACK_OBJECT_BOOLEAN: return json_boolean(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        /* above JSON's int64 (jansson's integer): as a real, exactness lost (no answer holds one) */
        return o->via.u64 > INT64_MAX ? json_real((double)o->via.u64) : json_integer((json_int_t)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return json_integer(o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return isfinite(o->via.f64) ? json_real(o->via.f64) : json_null();
    case MSGPACK_OBJECT_STR: return json_of_str(o->via.str.ptr, o->via.str.size);
    case MSGPACK_OBJECT_BIN:
    case MSGPACK_OBJECT_EXT: {
        char *s = base64_encode((const uint8_t *)o->via.bin.ptr, o->via.bin.size);
        json_t *j = s ? json_string(s) : NULL;
        free(s);
        return j;
    }
    case MSGPACK_OBJECT_ARRAY: {
        json_t *a = json_array();
        for (uint32_t i = 0; a && i < o->via.array.size; i++)
            if (json_array_append_new(a, json_of(&o->via.array.ptr[i]))) {
                json_decref(a);
                a = NULL;
            }
        return a;
    }
    case MSGPACK_OBJECT_MAP: {
        json_t *m = json_object();
        for (uint32_t i = 0; m && i < o->via.map.size; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            json_t *ks = k->type == MSGPACK_OBJECT_STR ? json_of_str(k->via.str.ptr, k->via.str.size) : NULL;
            json_t *v = json_of(&o->via.map.ptr[i].val);
            if (!ks || !v || json_object_set_new(m, json_string_value(ks), v)) {
                if (!ks || !v) json_decref(v);
                json_decref(m);
                m = NULL;
            }
            json_decref(ks);
        }
        return m;
    }
    }
    return NULL;
}

char *http_error_json(int code, const char *message)
{
    if (code >= 0) code = UMG_EINTERNAL;
    if (!message || !*message) message = umg_strerror(code);
    char msg[1024];
    size_t n = proto_utf8_sanitize(msg, sizeof msg - 1, message, strlen(message));
    json_t *j = json_pack("{s:b,s:{s:s,s:s%}}", "ok", 0, "error", "code", umg_error_name(code), "message", msg, n);
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    return s;
}

int http_response_json(const uint8_t *frame, size_t len, char **json, int *status, int *code)
{
    *json = NULL;
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy) return umg_err_set(UMG_ENOMEM, "out of memory");
    memcpy(copy, frame, len);
    proto_limits lim = proto_limits_default();
    lim.max_frame = len > lim.max_frame ? (uint32_t)len : lim.max_frame;
    proto_response *r = NULL;
    int rc = proto_response_decode(copy, len, &lim, &r);
    if (rc) {
        *code = UMG_EINTERNAL;
        *status = 500;
        *json = http_error_json(UMG_EINTERNAL, "the server built an answer it cannot translate to JSON");
    } else if (!r->ok) {
        *code = r->code;
        *status = http_status_of(r->code);
        *json = http_error_json(r->code, r->message);
    } else {
        *code = 0;
        *status = 200;
        json_t *res = json_of(r->result);
        json_t *j = res ? json_pack("{s:b,s:o}", "ok", 1, "result", res) : NULL;
        /* scores are float32: 9 significant digits give them back exactly */
        *json = j ? json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
        json_decref(j);
    }
    proto_response_free(r);
    return *json ? 0 : umg_err_set(UMG_ENOMEM, "out of memory");
}
