/* proto_response.c - response builders and the client-side decoder. */
#include "proto_response.h"

#include <stdlib.h>
#include <string.h>

#include "proto_request.h"
#include "umg_error.h"
#include "umg_util.h"

#define MESSAGE_MAX 1024

int proto_response_begin(proto_writer *w, msgpack_sbuffer *sb, uint64_t id)
{
    w->sb = sb;
    w->id = id;
    msgpack_packer_init(&w->pk, sb, msgpack_sbuffer_write);
    w->offset = proto_frame_begin(sb);
    if (w->offset < 0) return (int)w->offset;
    if (msgpack_pack_map(&w->pk, 3) || proto_pack_cstr(&w->pk, "id") || msgpack_pack_uint64(&w->pk, id) ||
        proto_pack_cstr(&w->pk, "ok") || msgpack_pack_true(&w->pk) || proto_pack_cstr(&w->pk, "result")) {
        sb->size = (size_t)w->offset;
        return umg_err_set(UMG_ENOMEM, "out of memory building a response");
    }
    return 0;
}

int proto_response_end(proto_writer *w, uint32_t max_frame)
{
    size_t body = w->sb->size - (size_t)w->offset - PROTO_FRAME_HEADER;
    int rc = proto_check_msgpack((const uint8_t *)w->sb->data + w->offset + PROTO_FRAME_HEADER, body, NULL);
    if (rc == UMG_EPROTO)
        rc = umg_err_set(UMG_EINTERNAL, "response could not be built (%s)", umg_err_msg());
    if (!rc) rc = proto_frame_end(w->sb, w->offset, max_frame);
    if (!rc) return 0;
    w->sb->size = (size_t)w->offset;
    char why[512];
    snprintf(why, sizeof why, "%s", umg_err_msg());
    int erc = proto_response_error(w->sb, w->id, rc, why);
    return erc ? erc : rc;
}

size_t proto_utf8_sanitize(char *dst, size_t cap, const char *src, size_t len)
{
    size_t n = 0;
    while (len > 0 && n < cap) {
        size_t ok = umg_utf8_prefix(src, len);
        if (ok > cap - n) {
            /* cut at the last character start that fits */
            ok = cap - n;
            while (ok > 0 && ((unsigned char)src[ok] & 0xc0) == 0x80) ok--;
            memcpy(dst + n, src, ok);
            return n + ok;
        }
        memcpy(dst + n, src, ok);
        n += ok;
        src += ok;
        len -= ok;
        if (len > 0 && n < cap) {   /* one invalid byte */
            dst[n++] = '?';
            src++;
            len--;
        }
    }
    return n;
}

int proto_response_error(msgpack_sbuffer *sb, uint64_t id, int code, const char *message)
{
    if (code == 0) code = UMG_EINTERNAL;   /* an error frame always carries an error */
    if (!message || !*message) message = umg_strerror(code);
    char msg[MESSAGE_MAX];
    size_t mlen = proto_utf8_sanitize(msg, sizeof msg, message, strlen(message));
    const char *name = umg_error_name(code);

    msgpack_packer pk;
    msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
    long off = proto_frame_begin(sb);
    if (off < 0) return (int)off;
    if (msgpack_pack_map(&pk, 3) || proto_pack_cstr(&pk, "id") || msgpack_pack_uint64(&pk, id) ||
        proto_pack_cstr(&pk, "ok") || msgpack_pack_false(&pk) || proto_pack_cstr(&pk, "error") ||
        msgpack_pack_map(&pk, 2) || proto_pack_cstr(&pk, "code") || proto_pack_cstr(&pk, name) ||
        proto_pack_cstr(&pk, "message") || msgpack_pack_str(&pk, mlen) || msgpack_pack_str_body(&pk, msg, mlen) ||
        proto_frame_end(sb, off, 0)) {
        sb->size = (size_t)off;
        return umg_err_set(UMG_ENOMEM, "out of memory building an error response");
    }
    return 0;
}

int proto_error_code(const char *name, size_t len)
{
#define UMG_X_LOOKUP(cname, value, wire, desc) \
    if (len == sizeof wire - 1 && memcmp(name, wire, len) == 0) return value;
    UMG_ERROR_TABLE(UMG_X_LOOKUP)
#undef UMG_X_LOOKUP
    return UMG_EINTERNAL;
}

void proto_response_free(proto_response *resp)
{
    if (!resp) return;
    msgpack_zone_destroy(&resp->zone);
    free(resp->frame);
    free(resp);
}

/* NUL-terminated copy of a str object, in the zone. */
static const char *zone_cstr(msgpack_zone *z, const msgpack_object *o)
{
    char *s = msgpack_zone_malloc(z, o->via.str.size + 1);
    if (!s) return NULL;
    memcpy(s, o->via.str.ptr, o->via.str.size);
    s[o->via.str.size] = '\0';
    return s;
}

int proto_response_decode(uint8_t *frame, size_t len, const proto_limits *lim, proto_response **out)
{
    *out = NULL;
    proto_response *r = calloc(1, sizeof *r);
    if (!r) {
        free(frame);
        return umg_err_set(UMG_ENOMEM, "out of memory for a response");
    }
    r->frame = frame;
    r->frame_len = len;
    if (!msgpack_zone_init(&r->zone, MSGPACK_ZONE_CHUNK_SIZE)) {
        free(frame);
        free(r);
        return umg_err_set(UMG_ENOMEM, "out of memory for a response");
    }
    int rc = proto_unpack(frame, len, lim, &r->zone, &r->root);
    if (rc) goto fail;
    rc = UMG_EPROTO;
    if (r->root.type != MSGPACK_OBJECT_MAP) {
        umg_err_set(rc, "a response must be a msgpack map");
        goto fail;
    }
    const msgpack_object *ok = proto_map_get(&r->root, "ok");
    if (!proto_obj_uint(proto_map_get(&r->root, "id"), &r->id)) {
        umg_err_set(rc, "response without an unsigned 'id'");
        goto fail;
    }
    if (!proto_obj_bool(ok, &r->ok)) {
        umg_err_set(rc, "response without a boolean 'ok'");
        goto fail;
    }
    if (r->ok) {
        r->result = proto_map_get(&r->root, "result");
        if (!r->result) {
            umg_err_set(rc, "success response without 'result'");
            goto fail;
        }
    } else {
        const msgpack_object *err = proto_map_get(&r->root, "error");
        const msgpack_object *code = proto_map_get(err, "code");
        const msgpack_object *msg = proto_map_get(err, "message");
        if (!code || code->type != MSGPACK_OBJECT_STR) {
            umg_err_set(rc, "error response without a string 'error.code'");
            goto fail;
        }
        if (msg && msg->type != MSGPACK_OBJECT_STR) {
            umg_err_set(rc, "error response with a non-string 'error.message'");
            goto fail;
        }
        r->code = proto_error_code(code->via.str.ptr, code->via.str.size);
        r->code_name = zone_cstr(&r->zone, code);
        r->message = msg ? zone_cstr(&r->zone, msg) : "";
        if (!r->code_name || !r->message) {
            rc = umg_err_set(UMG_ENOMEM, "out of memory for a response");
            goto fail;
        }
    }
    *out = r;
    return 0;
fail:
    proto_response_free(r);
    return rc;
}
