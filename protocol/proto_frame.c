/* proto_frame.c - incremental frame decoder and the length-prefix encoder. */
#include "proto_frame.h"

#include <stdlib.h>
#include <string.h>

#include "proto_check.h"
#include "umg_error.h"

struct proto_framer {
    uint32_t max_frame;
    uint8_t head[PROTO_FRAME_HEADER];
    unsigned head_len;   /* length bytes received of the current frame */
    uint32_t body_len;   /* declared length, valid once head_len == 4 */
    uint8_t *body;       /* partial body; capacity body_cap <= body_len */
    size_t body_cap;
    size_t body_got;
    int failed;          /* oversize length seen: the stream is lost */
};

int proto_framer_create(uint32_t max_frame, proto_framer **out)
{
    *out = NULL;
    proto_framer *f = calloc(1, sizeof *f);
    if (!f) return umg_err_set(UMG_ENOMEM, "framer: out of memory");
    f->max_frame = max_frame ? max_frame : PROTO_DEFAULT_MAX_FRAME;
    *out = f;
    return 0;
}

void proto_framer_close(proto_framer *f)
{
    if (!f) return;
    free(f->body);
    free(f);
}

size_t proto_framer_buffered(const proto_framer *f)
{
    return f->head_len + f->body_got;
}

int proto_framer_failed(const proto_framer *f) { return f->failed; }

size_t proto_framer_held(const proto_framer *f) { return f->body_cap; }

void proto_framer_set_max(proto_framer *f, uint32_t max_frame)
{
    f->max_frame = max_frame ? max_frame : PROTO_DEFAULT_MAX_FRAME;
}

static void reset_frame(proto_framer *f)
{
    f->head_len = 0;
    f->body_len = 0;
    f->body = NULL;
    f->body_cap = 0;
    f->body_got = 0;
}

/* Grow the body buffer to hold at least `need` bytes: doubling, capped at the
 * declared length, so memory follows the bytes received. */
static int reserve(proto_framer *f, size_t need)
{
    if (need <= f->body_cap) return 0;
    size_t cap = f->body_cap ? f->body_cap : 4096;
    while (cap < need) cap *= 2;
    if (cap > f->body_len) cap = f->body_len;
    uint8_t *p = realloc(f->body, cap);
    if (!p) return umg_err_set(UMG_ENOMEM, "framer: out of memory for a %u-byte frame", f->body_len);
    f->body = p;
    f->body_cap = cap;
    return 0;
}

int proto_framer_feed(proto_framer *f, const uint8_t *data, size_t len, size_t *used,
                      uint8_t **frame, size_t *frame_len)
{
    *used = 0;
    *frame = NULL;
    *frame_len = 0;
    if (f->failed)
        return umg_err_set(UMG_ETOOBIG, "frame length %u exceeds the limit of %u bytes",
                           f->body_len, f->max_frame);
    size_t pos = 0;
    while (f->head_len < PROTO_FRAME_HEADER) {
        if (pos == len) { *used = pos; return PROTO_FRAME_NEED_MORE; }
        f->head[f->head_len++] = data[pos++];
        if (f->head_len == PROTO_FRAME_HEADER) {
            f->body_len = (uint32_t)f->head[0] << 24 | (uint32_t)f->head[1] << 16 |
                          (uint32_t)f->head[2] << 8 | f->head[3];
            if (f->body_len > f->max_frame) {
                f->failed = 1;
                f->head_len = 0;   /* nothing is held for a refused frame */
                *used = pos;
                return umg_err_set(UMG_ETOOBIG, "frame length %u exceeds the limit of %u bytes",
                                   f->body_len, f->max_frame);
            }
            if (f->body_len == 0) {
                reset_frame(f);
                *used = pos;
                return umg_err_set(UMG_EPROTO, "empty frame (length 0)");
            }
        }
    }
    size_t want = f->body_len - f->body_got;
    size_t take = len - pos < want ? len - pos : want;
    if (take) {
        int rc = reserve(f, f->body_got + take);
        if (rc) { *used = pos; return rc; }
        memcpy(f->body + f->body_got, data + pos, take);
        f->body_got += take;
        pos += take;
    }
    *used = pos;
    if (f->body_got < f->body_len) return PROTO_FRAME_NEED_MORE;
    *frame = f->body;
    *frame_len = f->body_len;
    reset_frame(f);
    return PROTO_FRAME_READY;
}

void proto_frame_put_len(uint8_t out[PROTO_FRAME_HEADER], uint32_t n)
{
    out[0] = (uint8_t)(n >> 24);
    out[1] = (uint8_t)(n >> 16);
    out[2] = (uint8_t)(n >> 8);
    out[3] = (uint8_t)n;
}

long proto_frame_begin(msgpack_sbuffer *sb)
{
    static const char zero[PROTO_FRAME_HEADER];
    size_t off = sb->size;
    if (msgpack_sbuffer_write(sb, zero, sizeof zero) != 0)
        return umg_err_set(UMG_ENOMEM, "out of memory for a response");
    return (long)off;
}

int proto_frame_end(msgpack_sbuffer *sb, long offset, uint32_t max_frame)
{
    if (max_frame == 0) max_frame = PROTO_DEFAULT_MAX_FRAME;
    if (offset < 0 || (size_t)offset + PROTO_FRAME_HEADER > sb->size)
        return umg_err_set(UMG_EINVAL, "proto_frame_end: bad offset %ld", offset);
    size_t body = sb->size - (size_t)offset - PROTO_FRAME_HEADER;
    if (body > max_frame)
        return umg_err_set(UMG_ETOOBIG, "message of %zu bytes exceeds the frame limit of %u", body, max_frame);
    if (body == 0)
        return umg_err_set(UMG_EINVAL, "proto_frame_end: empty message");
    proto_frame_put_len((uint8_t *)sb->data + offset, (uint32_t)body);
    return 0;
}
