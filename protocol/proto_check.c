/* proto_check.c - the linear pre-decode scan, UTF-8 validation, and the
 * checked msgpack_unpack wrapper. */
#include "proto_check.h"

#include "umg_error.h"

proto_limits proto_limits_default(void)
{
    return (proto_limits){
        .max_frame = PROTO_DEFAULT_MAX_FRAME,
        .max_depth = PROTO_DEFAULT_MAX_DEPTH,
        .max_elements = PROTO_DEFAULT_MAX_ELEMENTS,
    };
}

static proto_limits resolve_limits(const proto_limits *lim)
{
    proto_limits l = proto_limits_default();
    if (lim) {
        if (lim->max_frame) l.max_frame = lim->max_frame;
        if (lim->max_depth) l.max_depth = lim->max_depth;
        if (lim->max_elements) l.max_elements = lim->max_elements;
    }
    if (l.max_depth > PROTO_MAX_DEPTH_CAP) l.max_depth = PROTO_MAX_DEPTH_CAP;
    return l;
}

static uint64_t read_be(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}

/* What one msgpack header byte announces. */
typedef struct head {
    unsigned len_bytes;   /* big-endian length/count/value bytes after the type byte */
    unsigned fixed;       /* further fixed bytes (ext type byte, fixext payload) */
    int kind;             /* 0 scalar, 1 payload of `len` bytes, 2 array of len, 3 map of len */
    uint64_t len;         /* for fix* formats, the length carried in the type byte */
} head;

enum { K_SCALAR, K_PAYLOAD, K_ARRAY, K_MAP, K_BAD };

static head classify(uint8_t b)
{
    head h = {0, 0, K_SCALAR, 0};
    if (b <= 0x7f || b >= 0xe0) return h;                       /* fixint */
    if (b <= 0x8f) { h.kind = K_MAP; h.len = b & 0x0f; return h; }
    if (b <= 0x9f) { h.kind = K_ARRAY; h.len = b & 0x0f; return h; }
    if (b <= 0xbf) { h.kind = K_PAYLOAD; h.len = b & 0x1f; return h; }
    switch (b) {
    case 0xc0: case 0xc2: case 0xc3: return h;                  /* nil, false, true */
    case 0xc1: h.kind = K_BAD; return h;                        /* never used */
    case 0xc4: case 0xd9: h.kind = K_PAYLOAD; h.len_bytes = 1; return h;
    case 0xc5: case 0xda: h.kind = K_PAYLOAD; h.len_bytes = 2; return h;
    case 0xc6: case 0xdb: h.kind = K_PAYLOAD; h.len_bytes = 4; return h;
    case 0xc7: h.kind = K_PAYLOAD; h.len_bytes = 1; h.fixed = 1; return h;  /* ext8 */
    case 0xc8: h.kind = K_PAYLOAD; h.len_bytes = 2; h.fixed = 1; return h;
    case 0xc9: h.kind = K_PAYLOAD; h.len_bytes = 4; h.fixed = 1; return h;
    case 0xca: h.fixed = 4; return h;                           /* float32 */
    case 0xcb: h.fixed = 8; return h;
    case 0xcc: case 0xd0: h.fixed = 1; return h;
    case 0xcd: case 0xd1: h.fixed = 2; return h;
    case 0xce: case 0xd2: h.fixed = 4; return h;
    case 0xcf: case 0xd3: h.fixed = 8; return h;
    case 0xd4: h.fixed = 1 + 1; return h;                       /* fixext: type + data */
    case 0xd5: h.fixed = 1 + 2; return h;
    case 0xd6: h.fixed = 1 + 4; return h;
    case 0xd7: h.fixed = 1 + 8; return h;
    case 0xd8: h.fixed = 1 + 16; return h;
    case 0xdc: h.kind = K_ARRAY; h.len_bytes = 2; return h;
    case 0xdd: h.kind = K_ARRAY; h.len_bytes = 4; return h;
    case 0xde: h.kind = K_MAP; h.len_bytes = 2; return h;
    case 0xdf: h.kind = K_MAP; h.len_bytes = 4; return h;
    }
    h.kind = K_BAD;
    return h;
}

int proto_check_msgpack(const uint8_t *buf, size_t len, const proto_limits *lim)
{
    proto_limits l = resolve_limits(lim);
    if (len == 0)
        return umg_err_set(UMG_EPROTO, "empty message");
    /* open[i] = objects still to read in the i-th open container */
    uint64_t open[PROTO_MAX_DEPTH_CAP];
    unsigned depth = 0;
    uint64_t elements = 0;
    size_t pos = 0;
    bool top_read = false;

    for (;;) {
        while (depth > 0 && open[depth - 1] == 0) depth--;
        if (depth == 0 && top_read) break;
        if (pos >= len)
            return umg_err_set(UMG_EPROTO, "msgpack truncated at byte %zu", pos);
        if (++elements > l.max_elements)
            return umg_err_set(UMG_ETOOBIG, "more than %u msgpack objects", l.max_elements);
        if (depth > 0) open[depth - 1]--;
        else top_read = true;

        size_t at = pos;
        head h = classify(buf[pos++]);
        if (h.kind == K_BAD)
            return umg_err_set(UMG_EPROTO, "invalid msgpack type byte 0x%02x at byte %zu", buf[at], at);
        size_t left = len - pos;
        if (h.len_bytes + h.fixed > left)
            return umg_err_set(UMG_EPROTO, "msgpack header truncated at byte %zu", at);
        if (h.len_bytes) h.len = read_be(buf + pos, h.len_bytes);
        pos += h.len_bytes + h.fixed;
        left = len - pos;

        switch (h.kind) {
        case K_SCALAR:
            break;
        case K_PAYLOAD:
            if (h.len > left)
                return umg_err_set(UMG_EPROTO, "msgpack length %llu at byte %zu exceeds the %zu bytes left",
                                   (unsigned long long)h.len, at, left);
            pos += (size_t)h.len;
            break;
        case K_ARRAY:
        case K_MAP: {
            uint64_t items = h.kind == K_MAP ? h.len * 2 : h.len;  /* len < 2^32: no overflow */
            if (depth + 1 > l.max_depth)
                return umg_err_set(UMG_ETOOBIG, "msgpack nesting deeper than %u at byte %zu", l.max_depth, at);
            /* every object takes at least one byte */
            if (items > left)
                return umg_err_set(UMG_EPROTO, "msgpack %s of %llu at byte %zu exceeds the %zu bytes left",
                                   h.kind == K_MAP ? "map" : "array", (unsigned long long)h.len, at, left);
            if (elements + items > l.max_elements)
                return umg_err_set(UMG_ETOOBIG, "more than %u msgpack objects", l.max_elements);
            if (items) open[depth++] = items;
            break;
        }
        }
    }
    if (pos != len)
        return umg_err_set(UMG_EPROTO, "%zu trailing bytes after the msgpack object", len - pos);
    return 0;
}

int proto_unpack(const uint8_t *buf, size_t len, const proto_limits *lim,
                 msgpack_zone *zone, msgpack_object *obj)
{
    int rc = proto_check_msgpack(buf, len, lim);
    if (rc) return rc;
    size_t off = 0;
    msgpack_unpack_return r = msgpack_unpack((const char *)buf, len, &off, zone, obj);
    switch (r) {
    case MSGPACK_UNPACK_SUCCESS:
        if (off == len) return 0;
        break;
    case MSGPACK_UNPACK_NOMEM_ERROR:
        return umg_err_set(UMG_ENOMEM, "out of memory decoding a %zu-byte message", len);
    default:
        break;
    }
    /* The scan accepted what msgpack-c refused: a disagreement on the format. */
    return umg_err_set(UMG_EPROTO, "msgpack decoder refused the message (%d at byte %zu)", (int)r, off);
}
