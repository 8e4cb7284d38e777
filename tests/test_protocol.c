/* test_protocol.c - the wire protocol: framing, the pre-decode scan, UTF-8,
 * request validation (every error path with its code), responses. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <dirent.h>

#include "proto.h"
#include "umg_error.h"

/* The fuzz target's entry point and checks, replayed below over the committed
 * corpus (and every crash ever found, kept in tests/fuzz/regressions/), so the
 * normal suite and its ASan run cover them without libFuzzer. */
#include "fuzz/fuzz_protocol.c"

/* ---- building msgpack bodies ------------------------------------------
 * A tiny format language so each case reads as its message:
 *   M<n> map of n pairs (n from the arguments), A<n> array, s C string,
 *   S (ptr, len) str, b (ptr, len) bin, u uint64, i int64, f double,
 *   T true, F false, n nil, R (ptr, len) raw bytes. */
typedef struct buf {
    uint8_t *p;
    size_t n;
} buf;

static buf build(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    for (const char *c = fmt; *c; c++) {
        switch (*c) {
        case 'M': msgpack_pack_map(&pk, va_arg(ap, unsigned)); break;
        case 'A': msgpack_pack_array(&pk, va_arg(ap, unsigned)); break;
        case 's': proto_pack_cstr(&pk, va_arg(ap, const char *)); break;
        case 'S': {
            const char *s = va_arg(ap, const char *);
            size_t n = va_arg(ap, size_t);
            msgpack_pack_str_with_body(&pk, s, n);
            break;
        }
        case 'b': {
            const void *s = va_arg(ap, const void *);
            size_t n = va_arg(ap, size_t);
            msgpack_pack_bin_with_body(&pk, s, n);
            break;
        }
        case 'R': {
            const void *s = va_arg(ap, const void *);
            size_t n = va_arg(ap, size_t);
            msgpack_sbuffer_write(&sb, s, n);
            break;
        }
        case 'u': msgpack_pack_uint64(&pk, va_arg(ap, uint64_t)); break;
        case 'i': msgpack_pack_int64(&pk, va_arg(ap, int64_t)); break;
        case 'f': msgpack_pack_double(&pk, va_arg(ap, double)); break;
        case 'T': msgpack_pack_true(&pk); break;
        case 'F': msgpack_pack_false(&pk); break;
        case 'n': msgpack_pack_nil(&pk); break;
        default: fail_msg("bad format char %c", *c);
        }
    }
    va_end(ap);
    buf b = {(uint8_t *)sb.data, sb.size};
    if (!b.p) b.p = malloc(1);   /* empty body: still a malloc'd frame */
    return b;
}

static buf raw(const void *p, size_t n)
{
    buf b = {malloc(n ? n : 1), n};
    memcpy(b.p, p, n);
    return b;
}

/* A length-prefixed copy of b (b unchanged). */
static buf framed(buf b)
{
    buf f = {malloc(b.n + 4), b.n + 4};
    proto_frame_put_len(f.p, (uint32_t)b.n);
    memcpy(f.p + 4, b.p, b.n);
    return f;
}

/* ---- framing ------------------------------------------------------------ */

typedef struct collected {
    buf frames[8];
    int n;
    int errors[8];
    int nerr;
} collected;

/* Feed data to f, collecting every frame and error. */
static void feed_all(proto_framer *f, const uint8_t *data, size_t len, collected *c)
{
    while (len > 0) {
        size_t used;
        uint8_t *fr;
        size_t fl;
        int rc = proto_framer_feed(f, data, len, &used, &fr, &fl);
        assert_true(used <= len);
        if (rc == PROTO_FRAME_READY) {
            assert_non_null(fr);
            assert_true(c->n < 8);
            c->frames[c->n++] = (buf){fr, fl};
        } else if (rc < 0) {
            assert_null(fr);
            assert_true(c->nerr < 8);
            c->errors[c->nerr++] = rc;
            if (rc != UMG_EPROTO) return;   /* fatal */
        } else {
            assert_int_equal(rc, PROTO_FRAME_NEED_MORE);
            assert_int_equal(used, len);
        }
        data += used;
        len -= used;
    }
}

static void collected_free(collected *c)
{
    for (int i = 0; i < c->n; i++) free(c->frames[i].p);
    memset(c, 0, sizeof *c);
}

/* Three frames: tiny, one crossing the framer's 4 KiB first allocation, small. */
static buf three_frames(buf body[3])
{
    static uint8_t big[5000];
    for (size_t i = 0; i < sizeof big; i++) big[i] = (uint8_t)(i * 7 + 3);
    body[0] = build("M", 0u);
    body[1] = build("b", big, sizeof big);
    body[2] = build("Msu", 1u, "id", (uint64_t)42);
    size_t total = 0;
    for (int i = 0; i < 3; i++) total += 4 + body[i].n;
    buf all = {malloc(total), total};
    size_t o = 0;
    for (int i = 0; i < 3; i++) {
        proto_frame_put_len(all.p + o, (uint32_t)body[i].n);
        memcpy(all.p + o + 4, body[i].p, body[i].n);
        o += 4 + body[i].n;
    }
    return all;
}

static void check_three(const collected *c, buf body[3])
{
    assert_int_equal(c->nerr, 0);
    assert_int_equal(c->n, 3);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(c->frames[i].n, body[i].n);
        assert_memory_equal(c->frames[i].p, body[i].p, body[i].n);
    }
}

static void test_framing_split_at_every_byte(void **state)
{
    buf body[3];
    buf all = three_frames(body);
    for (size_t cut = 0; cut <= all.n; cut++) {
        proto_framer *f;
        assert_int_equal(proto_framer_create(0, &f), 0);
        collected c = {0};
        feed_all(f, all.p, cut, &c);
        feed_all(f, all.p + cut, all.n - cut, &c);
        check_three(&c, body);
        assert_int_equal(proto_framer_buffered(f), 0);
        collected_free(&c);
        proto_framer_close(f);
    }
    /* and one byte at a time */
    proto_framer *f;
    assert_int_equal(proto_framer_create(0, &f), 0);
    collected c = {0};
    for (size_t i = 0; i < all.n; i++) feed_all(f, all.p + i, 1, &c);
    check_three(&c, body);
    collected_free(&c);
    proto_framer_close(f);
    for (int i = 0; i < 3; i++) free(body[i].p);
    free(all.p);
}

static void test_framing_several_frames_in_one_chunk(void **state)
{
    buf body[3];
    buf all = three_frames(body);
    proto_framer *f;
    assert_int_equal(proto_framer_create(0, &f), 0);
    /* the first call stops at the end of the first frame */
    size_t used;
    uint8_t *fr;
    size_t fl;
    assert_int_equal(proto_framer_feed(f, all.p, all.n, &used, &fr, &fl), PROTO_FRAME_READY);
    assert_int_equal(used, 4 + body[0].n);
    free(fr);
    collected c = {0};
    feed_all(f, all.p + used, all.n - used, &c);
    assert_int_equal(c.n, 2);
    assert_memory_equal(c.frames[1].p, body[2].p, body[2].n);
    collected_free(&c);
    proto_framer_close(f);
    for (int i = 0; i < 3; i++) free(body[i].p);
    free(all.p);
}

/* proto_framer_set_max: a small limit refuses a bigger frame; raised, the
 * same length passes; proto_framer_held follows the partial frame's buffer. */
static void test_framing_set_max(void **state)
{
    proto_framer *f;
    uint8_t chunk[4 + 5000];
    memset(chunk, 'x', sizeof chunk);
    proto_frame_put_len(chunk, 5000);
    size_t used, fl;
    uint8_t *fr;
    assert_int_equal(proto_framer_create(0, &f), 0);
    proto_framer_set_max(f, 4096);
    assert_int_equal(proto_framer_feed(f, chunk, sizeof chunk, &used, &fr, &fl), UMG_ETOOBIG);
    assert_int_equal(proto_framer_held(f), 0);
    proto_framer_close(f);

    assert_int_equal(proto_framer_create(4096, &f), 0);
    proto_framer_set_max(f, 8192);
    assert_int_equal(proto_framer_feed(f, chunk, 4 + 100, &used, &fr, &fl), PROTO_FRAME_NEED_MORE);
    assert_true(proto_framer_held(f) >= 100 && proto_framer_held(f) <= 5000);
    /* lowering the limit does not refuse the length already accepted */
    proto_framer_set_max(f, 1024);
    assert_int_equal(proto_framer_feed(f, chunk + 104, sizeof chunk - 104, &used, &fr, &fl), PROTO_FRAME_READY);
    assert_int_equal(fl, 5000);
    free(fr);
    assert_int_equal(proto_framer_held(f), 0);
    proto_framer_close(f);
}

static void test_framing_oversize_refused_before_buffering(void **state)
{
    proto_framer *f;
    assert_int_equal(proto_framer_create(1000, &f), 0);
    /* declared 1001 bytes, followed by 2000 bytes of payload in the same chunk */
    uint8_t chunk[4 + 2000];
    memset(chunk, 'x', sizeof chunk);
    proto_frame_put_len(chunk, 1001);
    size_t used;
    uint8_t *fr;
    size_t fl;
    assert_int_equal(proto_framer_feed(f, chunk, sizeof chunk, &used, &fr, &fl), UMG_ETOOBIG);
    assert_int_equal(used, 4);                  /* not a byte of the body taken */
    assert_null(fr);
    assert_int_equal(proto_framer_buffered(f), 0);
    assert_true(proto_framer_failed(f));
    assert_non_null(strstr(umg_err_msg(), "1001"));
    /* the stream is lost for good */
    assert_int_equal(proto_framer_feed(f, chunk + 4, 10, &used, &fr, &fl), UMG_ETOOBIG);
    assert_int_equal(used, 0);
    proto_framer_close(f);

    /* the largest length, with the default limit, after a split header */
    assert_int_equal(proto_framer_create(0, &f), 0);
    const uint8_t huge[4] = {0xff, 0xff, 0xff, 0xff};
    assert_int_equal(proto_framer_feed(f, huge, 2, &used, &fr, &fl), PROTO_FRAME_NEED_MORE);
    assert_int_equal(proto_framer_feed(f, huge + 2, 2, &used, &fr, &fl), UMG_ETOOBIG);
    assert_int_equal(proto_framer_buffered(f), 0);
    proto_framer_close(f);

    /* exactly the limit is accepted, and memory stays within limit + 4 */
    assert_int_equal(proto_framer_create(1000, &f), 0);
    proto_frame_put_len(chunk, 1000);
    collected c = {0};
    for (size_t o = 0; o < 4 + 1000; o += 7) {
        size_t n = 4 + 1000 - o < 7 ? 4 + 1000 - o : 7;
        feed_all(f, chunk + o, n, &c);
        assert_true(proto_framer_buffered(f) <= 1000 + 4);
    }
    assert_int_equal(c.nerr, 0);
    assert_int_equal(c.n, 1);
    assert_int_equal(c.frames[0].n, 1000);
    collected_free(&c);
    proto_framer_close(f);
}

static void test_framing_zero_length(void **state)
{
    proto_framer *f;
    assert_int_equal(proto_framer_create(0, &f), 0);
    buf b = build("Msu", 1u, "id", (uint64_t)9);
    buf fb = framed(b);
    uint8_t chunk[4 + 64] = {0, 0, 0, 0};
    memcpy(chunk + 4, fb.p, fb.n);
    size_t used;
    uint8_t *fr;
    size_t fl;
    assert_int_equal(proto_framer_feed(f, chunk, 4 + fb.n, &used, &fr, &fl), UMG_EPROTO);
    assert_int_equal(used, 4);
    assert_false(proto_framer_failed(f));
    /* the framing is intact: the next frame comes through */
    assert_int_equal(proto_framer_feed(f, chunk + 4, fb.n, &used, &fr, &fl), PROTO_FRAME_READY);
    assert_int_equal(fl, b.n);
    assert_memory_equal(fr, b.p, b.n);
    free(fr);
    free(b.p);
    free(fb.p);
    proto_framer_close(f);
    proto_framer_close(NULL);
}

static void test_frame_encoder(void **state)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    long off = proto_frame_begin(&sb);
    assert_int_equal(off, 0);
    msgpack_pack_bin_with_body(&pk, "abcdefgh", 8);   /* 2 + 8 bytes */
    assert_int_equal(proto_frame_end(&sb, off, 0), 0);
    const uint8_t want[4] = {0, 0, 0, 10};
    assert_memory_equal(sb.data, want, 4);
    /* a second frame appended; too big for a limit of 5 */
    long off2 = proto_frame_begin(&sb);
    assert_int_equal(off2, 14);
    msgpack_pack_bin_with_body(&pk, "abcdefgh", 8);
    assert_int_equal(proto_frame_end(&sb, off2, 5), UMG_ETOOBIG);
    /* an empty body is not a frame */
    sb.size = 14;
    long off3 = proto_frame_begin(&sb);
    assert_int_equal(proto_frame_end(&sb, off3, 0), UMG_EINVAL);
    msgpack_sbuffer_destroy(&sb);
}

/* ---- pre-decode scan ---------------------------------------------------- */

static void test_check_accepts_every_type(void **state)
{
    static const uint8_t ext[] = {0xd4, 0x01, 0x02,               /* fixext1 */
                                  0xc7, 0x03, 0x05, 1, 2, 3};      /* ext8 */
    buf b = build("MsnsTsFsusisfsssbsA", 9u, "nil", "t", "f", "u", (uint64_t)UINT64_MAX, "i",
                  (int64_t)INT64_MIN, "d", 1.5, "s", "text", "bin", "\x00\x01", (size_t)2, "ext", 2u);
    /* append the two ext objects as the array's items */
    buf all = {malloc(b.n + sizeof ext), b.n + sizeof ext};
    memcpy(all.p, b.p, b.n);
    memcpy(all.p + b.n, ext, sizeof ext);
    assert_int_equal(proto_check_msgpack(all.p, all.n, NULL), 0);
    msgpack_zone z;
    msgpack_zone_init(&z, 1024);
    msgpack_object o;
    assert_int_equal(proto_unpack(all.p, all.n, NULL, &z, &o), 0);
    assert_int_equal(o.type, MSGPACK_OBJECT_MAP);
    assert_int_equal(o.via.map.size, 9);
    const msgpack_object *s = proto_map_get(&o, "s");
    assert_non_null(s);
    /* strings point into the frame (the documented lifetime) */
    assert_true((const uint8_t *)s->via.str.ptr >= all.p && (const uint8_t *)s->via.str.ptr < all.p + all.n);
    assert_int_equal(proto_map_get(&o, "ext")->via.array.size, 2);
    msgpack_zone_destroy(&z);
    free(b.p);
    free(all.p);
}

static void test_check_truncated_and_trailing(void **state)
{
    buf b = build("MsusssA", 3u, "id", (uint64_t)70000, "op", "query", "tags", 2u);
    buf items = build("ss", "a", "bcd");
    buf all = {malloc(b.n + items.n + 1), b.n + items.n};
    memcpy(all.p, b.p, b.n);
    memcpy(all.p + b.n, items.p, items.n);
    assert_int_equal(proto_check_msgpack(all.p, all.n, NULL), 0);
    for (size_t n = 0; n < all.n; n++)
        assert_int_equal(proto_check_msgpack(all.p, n, NULL), UMG_EPROTO);
    all.p[all.n] = 0xc0;   /* one trailing nil */
    assert_int_equal(proto_check_msgpack(all.p, all.n + 1, NULL), UMG_EPROTO);
    assert_non_null(strstr(umg_err_msg(), "trailing"));
    const uint8_t reserved[] = {0x91, 0xc1};
    assert_int_equal(proto_check_msgpack(reserved, sizeof reserved, NULL), UMG_EPROTO);
    free(b.p);
    free(items.p);
    free(all.p);
}

static void test_check_huge_declared_lengths(void **state)
{
    static const uint8_t cases[][8] = {
        {0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0, 0xc0, 0xc0},   /* array32 of 4 billion */
        {0xdf, 0xff, 0xff, 0xff, 0xff, 0xc0, 0xc0, 0xc0},   /* map32 */
        {0xdb, 0xff, 0xff, 0xff, 0xff, 'a', 'b', 'c'},       /* str32 */
        {0xc6, 0xff, 0xff, 0xff, 0xff, 1, 2, 3},             /* bin32 */
        {0xc9, 0xff, 0xff, 0xff, 0xff, 1, 2, 3},             /* ext32 */
        {0xdc, 0xff, 0xff, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0},   /* array16 of 65535 */
        {0x84, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0, 0xc0},   /* fixmap of 4 = 8 objects, 7 bytes */
        {0xd9, 0x08, 'a', 'b', 'c', 'd', 'e', 'f'},          /* str8 of 8, 6 bytes */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        assert_int_equal(proto_check_msgpack(cases[i], 8, NULL), UMG_EPROTO);
        assert_non_null(strstr(umg_err_msg(), "exceeds"));
        /* and through proto_unpack: refused before msgpack-c sees it */
        msgpack_zone z;
        msgpack_zone_init(&z, 1024);
        msgpack_object o;
        assert_int_equal(proto_unpack(cases[i], 8, NULL, &z, &o), UMG_EPROTO);
        msgpack_zone_destroy(&z);
    }
    /* a count that the bytes could hold, but over the element limit: refused at the header */
    size_t n = PROTO_DEFAULT_MAX_ELEMENTS + 10;
    uint8_t *big = malloc(5 + n);
    big[0] = 0xdd;
    big[1] = (uint8_t)(n >> 24);
    big[2] = (uint8_t)(n >> 16);
    big[3] = (uint8_t)(n >> 8);
    big[4] = (uint8_t)n;
    memset(big + 5, 0xc0, n);
    assert_int_equal(proto_check_msgpack(big, 5 + n, NULL), UMG_ETOOBIG);
    proto_limits lim = {.max_elements = (uint32_t)n + 1};
    assert_int_equal(proto_check_msgpack(big, 5 + n, &lim), 0);
    free(big);
}

/* n nested arrays around a nil. */
static buf nested(unsigned n)
{
    buf b = {malloc(n + 1), n + 1};
    memset(b.p, 0x91, n);
    b.p[n] = 0xc0;
    return b;
}

static void test_check_depth(void **state)
{
    buf ok = nested(PROTO_DEFAULT_MAX_DEPTH);
    assert_int_equal(proto_check_msgpack(ok.p, ok.n, NULL), 0);
    buf deep = nested(PROTO_DEFAULT_MAX_DEPTH + 1);
    assert_int_equal(proto_check_msgpack(deep.p, deep.n, NULL), UMG_ETOOBIG);
    assert_non_null(strstr(umg_err_msg(), "nesting"));
    /* an empty container counts too */
    deep.p[PROTO_DEFAULT_MAX_DEPTH] = 0x90;
    assert_int_equal(proto_check_msgpack(deep.p, deep.n, NULL), UMG_ETOOBIG);
    proto_limits lim = {.max_depth = 3};
    buf three = nested(3), four = nested(4);
    assert_int_equal(proto_check_msgpack(three.p, three.n, &lim), 0);
    assert_int_equal(proto_check_msgpack(four.p, four.n, &lim), UMG_ETOOBIG);
    /* a limit above msgpack-c's own stack is clamped, and very deep input is just refused */
    lim.max_depth = 1000;
    buf abyss = nested(100000);
    assert_int_equal(proto_check_msgpack(abyss.p, abyss.n, &lim), UMG_ETOOBIG);
    buf cap = nested(PROTO_MAX_DEPTH_CAP);
    msgpack_zone z;
    msgpack_zone_init(&z, 1024);
    msgpack_object o;
    assert_int_equal(proto_unpack(cap.p, cap.n, &lim, &z, &o), 0);
    msgpack_zone_destroy(&z);
    free(ok.p); free(deep.p); free(three.p); free(four.p); free(abyss.p); free(cap.p);
}

static void test_utf8(void **state)
{
    static const struct { const char *s; size_t n; bool ok; } cases[] = {
        {"", 0, true},
        {"plain ascii", 11, true},
        {"caf\xc3\xa9", 5, true},
        {"\xe2\x82\xac", 3, true},                 /* euro sign */
        {"\xf0\x9f\x93\xb7", 4, true},             /* camera emoji */
        {"\xf4\x8f\xbf\xbf", 4, true},             /* U+10FFFF */
        {"a\0b", 3, true},
        {"\x80", 1, false},                         /* lone continuation */
        {"\xc0\x80", 2, false},                     /* overlong NUL */
        {"\xc1\xbf", 2, false},                     /* overlong */
        {"\xe0\x80\x80", 3, false},                 /* overlong 3-byte */
        {"\xf0\x80\x80\x80", 4, false},             /* overlong 4-byte */
        {"\xed\xa0\x80", 3, false},                 /* surrogate U+D800 */
        {"\xf4\x90\x80\x80", 4, false},             /* above U+10FFFF */
        {"\xf5\x80\x80\x80", 4, false},
        {"\xff", 1, false},
        {"caf\xc3", 4, false},                      /* truncated */
        {"\xe2\x82", 2, false},
        {"\xe2\x28\xa1", 3, false},                 /* bad continuation */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (proto_utf8_valid(cases[i].s, cases[i].n) != cases[i].ok)
            fail_msg("utf8 case %zu", i);
    }
    assert_int_equal(proto_utf8_prefix("ab\xc3\xa9\xff", 5), 4);
}

/* ---- requests ----------------------------------------------------------- */

/* Frame a client-built request, take it through a framer, decode it. */
static proto_request *roundtrip(msgpack_sbuffer *sb)
{
    proto_framer *f;
    assert_int_equal(proto_framer_create(0, &f), 0);
    size_t used;
    uint8_t *fr;
    size_t fl;
    assert_int_equal(proto_framer_feed(f, (uint8_t *)sb->data, sb->size, &used, &fr, &fl), PROTO_FRAME_READY);
    assert_int_equal(used, sb->size);
    proto_framer_close(f);
    proto_request *req;
    uint64_t eid;
    int rc = proto_request_decode(fr, fl, NULL, &req, &eid);
    if (rc) fail_msg("decode: %s: %s", umg_error_name(rc), umg_err_msg());
    msgpack_sbuffer_clear(sb);
    return req;
}

static bool str_is(const msgpack_object *o, const char *s) { return proto_obj_str_eq(o, s); }

static void test_request_examples_of_every_op(void **state)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    proto_writer w;
    proto_request *r;
    uint64_t u;
    double d, box[4];
    const uint8_t *bin;
    size_t n;

    assert_int_equal(proto_request_begin(&w, &sb, 1, "hello", 2), 0);
    proto_pack_cstr(&w.pk, "token"); proto_pack_cstr(&w.pk, "s3cret");
    proto_pack_cstr(&w.pk, "client"); proto_pack_cstr(&w.pk, "umgdb-cli/0.1");
    assert_int_equal(proto_request_end(&w, 0), 0);
    r = roundtrip(&sb);
    assert_int_equal(r->op->code, PROTO_OP_HELLO);
    assert_int_equal(r->id, 1);
    assert_true(str_is(proto_req_arg(r, "token"), "s3cret"));
    proto_request_free(r);

    assert_int_equal(proto_request_begin(&w, &sb, 2, "ping", 0), 0);
    assert_int_equal(proto_request_end(&w, 0), 0);
    r = roundtrip(&sb);
    assert_int_equal(r->op->code, PROTO_OP_PING);
    assert_int_equal(r->id, 2);
    proto_request_free(r);

    assert_int_equal(proto_request_begin(&w, &sb, 3, "ingest", 2), 0);
    proto_pack_cstr(&w.pk, "path"); proto_pack_cstr(&w.pk, "/photos/2023/rocket.jpg");
    proto_pack_cstr(&w.pk, "tags"); msgpack_pack_array(&w.pk, 2);
    proto_pack_cstr(&w.pk, "space"); proto_pack_cstr(&w.pk, "launch");
    assert_int_equal(proto_request_end(&w, 0), 0);
    r = roundtrip(&sb);
    assert_int_equal(r->op->code, PROTO_OP_INGEST);
    assert_true(str_is(proto_req_arg(r, "path"), "/photos/2023/rocket.jpg"));
    assert_null(proto_req_arg(r, "data"));
    assert_int_equal(proto_req_arg(r, "tags")->via.array.size, 2);
    assert_true(str_is(&proto_req_arg(r, "tags")->via.array.ptr[1], "launch"));
    proto_request_free(r);

    static const uint8_t jpeg[] = {0xff, 0xd8, 0xff, 0xe0, 0, 0x10, 'J', 'F', 'I', 'F'};
    assert_int_equal(proto_request_begin(&w, &sb, 4, "ingest", 3), 0);
    proto_pack_cstr(&w.pk, "data"); msgpack_pack_bin_with_body(&w.pk, jpeg, sizeof jpeg);
    proto_pack_cstr(&w.pk, "name"); proto_pack_cstr(&w.pk, "rocket.jpg");
    proto_pack_cstr(&w.pk, "mtime"); msgpack_pack_int64(&w.pk, 1500000000);
    assert_int_equal(proto_request_end(&w, 0), 0);
    r = roundtrip(&sb);
    assert_true(proto_obj_bin(proto_req_arg(r, "data"), &bin, &n));
    assert_int_equal(n, sizeof jpeg);
    assert_memory_equal(bin, jpeg, n);
    assert_true(str_is(proto_req_arg(r, "name"), "rocket.jpg"));
    int64_t mtime = 0;
    assert_true(proto_obj_int(proto_req_arg(r, "mtime"), &mtime));
    assert_int_equal(mtime, 1500000000);
    proto_request_free(r);

    assert_int_equal(proto_request_begin(&w, &sb, 5, "query", 4), 0);
    proto_pack_cstr(&w.pk, "text"); proto_pack_cstr(&w.pk, "a red car");
    proto_pack_cstr(&w.pk, "granularity"); proto_pack_cstr(&w.pk, "region");
    proto_pack_cstr(&w.pk, "k"); msgpack_pack_uint64(&w.pk, 20);
    proto_pack_cstr(&w.pk, "filters"); msgpack_pack_map(&w.pk, 3);
    proto_pack_cstr(&w.pk, "path_prefix"); proto_pack_cstr(&w.pk, "/photos/2023/");
    proto_pack_cstr(&w.pk, "tags"); msgpack_pack_array(&w.pk, 1); proto_pack_cstr(&w.pk, "street");
    proto_pack_cstr(&w.pk, "min_score"); msgpack_pack_float(&w.pk, 0.25f);
    assert_int_equal(proto_request_end(&w, 0), 0);
    r = roundtrip(&sb);
    assert_int_equal(r->op->code, PROTO_OP_QUERY);
    assert_int_equal(r->id, 5);
    assert_true(str_is(proto_req_arg(r, "granularity"), "region"));
    assert_true(proto_obj_uint(proto_req_arg(r, "k"), &u));
    assert_int_equal(u, 20);
    const msgpack_object *flt = proto_req_arg(r, "filters");
    assert_true(str_is(proto_map_get(flt, "path_prefix"), "/photos/2023/"));
    assert_true(proto_obj_float(proto_map_get(flt, "min_score"), &d));
    assert_true(d == 0.25);
    proto_request_free(r);

    assert_int_equal(proto_request_begin(&w, &sb, 6, "query_image", 3), 0);
    proto_pack_cstr(&w.pk, "image_id"); msgpack_pack_uint64(&w.pk, 17);
    proto_pack_cstr(&w.pk, "box"); msgpack_pack_array(&w.pk, 4);
    msgpack_pack_uint64(&w.pk, 10); msgpack_pack_uint64(&w.pk, 20);
    msgpack_pack_double(&w.pk, 100.5); msgpack_pack_uint64(&w.pk, 80);
    proto_pack_cstr(&w.pk, "k"); msgpack_pack_uint64(&w.pk, 5);
    assert_int_equal(proto_request_end(&w, 0), 0);
    r = roundtrip(&sb);
    assert_int_equal(r->op->code, PROTO_OP_QUERY_IMAGE);
    assert_true(proto_obj_uint(proto_req_arg(r, "image_id"), &u));
    assert_int_equal(u, 17);
    assert_true(proto_obj_box(proto_req_arg(r, "box"), box));
    assert_true(box[0] == 10 && box[1] == 20 && box[2] == 100.5 && box[3] == 80);
    proto_request_free(r);

    assert_int_equal(proto_request_begin(&w, &sb, 7, "query_image", 1), 0);
    proto_pack_cstr(&w.pk, "data"); msgpack_pack_bin_with_body(&w.pk, jpeg, sizeof jpeg);
    assert_int_equal(proto_request_end(&w, 0), 0);
    r = roundtrip(&sb);
    assert_non_null(proto_req_arg(r, "data"));
    proto_request_free(r);

    assert_int_equal(proto_request_begin(&w, &sb, 8, "get", 1), 0);
    proto_pack_cstr(&w.pk, "image_id"); msgpack_pack_uint64(&w.pk, 17);
    assert_int_equal(proto_request_end(&w, 0), 0);
    r = roundtrip(&sb);
    assert_int_equal(r->op->code, PROTO_OP_GET);
    proto_request_free(r);

    assert_int_equal(proto_request_begin(&w, &sb, 9, "get", 1), 0);
    proto_pack_cstr(&w.pk, "path"); proto_pack_cstr(&w.pk, "/photos/2023/rocket.jpg");
    assert_int_equal(proto_request_end(&w, 0), 0);
    r = roundtrip(&sb);
    assert_true(str_is(proto_req_arg(r, "path"), "/photos/2023/rocket.jpg"));
    proto_request_free(r);

    assert_int_equal(proto_request_begin(&w, &sb, 10, "delete", 1), 0);
    proto_pack_cstr(&w.pk, "image_id"); msgpack_pack_uint64(&w.pk, 17);
    assert_int_equal(proto_request_end(&w, 0), 0);
    r = roundtrip(&sb);
    assert_int_equal(r->op->code, PROTO_OP_DELETE);
    proto_request_free(r);

    assert_int_equal(proto_request_begin(&w, &sb, UINT64_MAX, "stats", 0), 0);
    assert_int_equal(proto_request_end(&w, 0), 0);
    r = roundtrip(&sb);
    assert_int_equal(r->op->code, PROTO_OP_STATS);
    assert_true(r->id == UINT64_MAX);
    proto_request_free(r);

    /* a builder misuse (fewer pairs than announced) is caught and undone */
    assert_int_equal(proto_request_begin(&w, &sb, 11, "query", 1), 0);
    assert_int_equal(proto_request_end(&w, 0), UMG_EPROTO);
    assert_int_equal(sb.size, 0);
    msgpack_sbuffer_destroy(&sb);
}

/* The typed arguments (proto_args), filled from the table: every argument
 * of the examples lands in its op's struct field, with defaults and
 * presence flags for what is absent. */
static void test_request_typed_args(void **state)
{
    (void)state;
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    proto_writer w;
    proto_request *r;

    assert_int_equal(proto_request_begin(&w, &sb, 5, "query", 5), 0);
    proto_pack_cstr(&w.pk, "text"); proto_pack_cstr(&w.pk, "a red car");
    proto_pack_cstr(&w.pk, "granularity"); proto_pack_cstr(&w.pk, "region");
    proto_pack_cstr(&w.pk, "k"); msgpack_pack_uint64(&w.pk, 20);
    proto_pack_cstr(&w.pk, "filters"); msgpack_pack_map(&w.pk, 3);
    proto_pack_cstr(&w.pk, "path_prefix"); proto_pack_cstr(&w.pk, "/photos/2023/");
    proto_pack_cstr(&w.pk, "tags"); msgpack_pack_array(&w.pk, 2); proto_pack_cstr(&w.pk, "street");
    proto_pack_cstr(&w.pk, "night");
    proto_pack_cstr(&w.pk, "min_score"); msgpack_pack_float(&w.pk, 0.25f);
    proto_pack_cstr(&w.pk, "refine"); proto_pack_cstr(&w.pk, "pixel");
    assert_int_equal(proto_request_end(&w, 0), 0);
    r = roundtrip(&sb);
    const proto_query_args *q = &r->a.query;
    assert_int_equal(q->text.len, 9);
    assert_memory_equal(q->text.ptr, "a red car", 9);
    assert_int_equal(q->granularity, PROTO_GRAN_REGION);
    assert_int_equal(q->k, 20);
    assert_true(q->has_filters);
    assert_int_equal(q->filters.path_prefix.len, 13);
    assert_memory_equal(q->filters.path_prefix.ptr, "/photos/2023/", 13);
    assert_int_equal(q->filters.tags.n, 2);
    assert_memory_equal(q->filters.tags.v[1].ptr, "night", 5);
    assert_int_equal(q->filters.tags.v[1].len, 5);
    assert_true(q->filters.has_min_score);
    assert_true(q->filters.min_score == 0.25);
    assert_int_equal(q->refine, PROTO_REFINE_PIXEL);
    proto_request_free(r);

    /* defaults: image granularity, k = PROTO_DEFAULT_K, no filters, no refine */
    assert_int_equal(proto_request_begin(&w, &sb, 6, "query", 2), 0);
    proto_pack_cstr(&w.pk, "text"); proto_pack_cstr(&w.pk, "x");
    proto_pack_cstr(&w.pk, "granularity"); proto_pack_cstr(&w.pk, "pixel");
    assert_int_equal(proto_request_end(&w, 0), 0);
    r = roundtrip(&sb);
    assert_int_equal(r->a.query.granularity, PROTO_GRAN_PIXEL);
    assert_int_equal(r->a.query.k, PROTO_DEFAULT_K);
    assert_false(r->a.query.has_filters);
    assert_null(r->a.query.filters.path_prefix.ptr);
    assert_int_equal(r->a.query.filters.tags.n, 0);
    assert_false(r->a.query.filters.has_min_score);
    assert_int_equal(r->a.query.refine, PROTO_REFINE_NONE);
    proto_request_free(r);

    assert_int_equal(proto_request_begin(&w, &sb, 7, "query_image", 2), 0);
    proto_pack_cstr(&w.pk, "image_id"); msgpack_pack_uint64(&w.pk, 17);
    proto_pack_cstr(&w.pk, "box"); msgpack_pack_array(&w.pk, 4);
    msgpack_pack_uint64(&w.pk, 10); msgpack_pack_uint64(&w.pk, 20);
    msgpack_pack_double(&w.pk, 100.5); msgpack_pack_uint64(&w.pk, 80);
    assert_int_equal(proto_request_end(&w, 0), 0);
    r = roundtrip(&sb);
    const proto_query_image_args *qi = &r->a.query_image;
    assert_true(qi->has_image_id);
    assert_int_equal(qi->image_id, 17);
    assert_null(qi->data.ptr);
    assert_true(qi->has_box);
    assert_true(qi->box[0] == 10 && qi->box[1] == 20 && qi->box[2] == 100.5 && qi->box[3] == 80);
    assert_int_equal(qi->granularity, PROTO_GRAN_IMAGE);
    assert_int_equal(qi->k, PROTO_DEFAULT_K);
    proto_request_free(r);

    static const uint8_t jpeg[] = {0xff, 0xd8, 0xff, 0xe0};
    assert_int_equal(proto_request_begin(&w, &sb, 8, "ingest", 4), 0);
    proto_pack_cstr(&w.pk, "data"); msgpack_pack_bin_with_body(&w.pk, jpeg, sizeof jpeg);
    proto_pack_cstr(&w.pk, "name"); proto_pack_cstr(&w.pk, "rocket.jpg");
    proto_pack_cstr(&w.pk, "mtime"); msgpack_pack_int64(&w.pk, 1500000000);
    proto_pack_cstr(&w.pk, "tags"); msgpack_pack_array(&w.pk, 1); proto_pack_cstr(&w.pk, "space");
    assert_int_equal(proto_request_end(&w, 0), 0);
    r = roundtrip(&sb);
    const proto_ingest_args *in = &r->a.ingest;
    assert_null(in->path.ptr);
    assert_int_equal(in->data.len, sizeof jpeg);
    assert_memory_equal(in->data.ptr, jpeg, sizeof jpeg);
    assert_memory_equal(in->name.ptr, "rocket.jpg", 10);
    assert_true(in->has_mtime);
    assert_int_equal(in->mtime, 1500000000);
    assert_int_equal(in->tags.n, 1);
    proto_request_free(r);

    assert_int_equal(proto_request_begin(&w, &sb, 9, "delete", 1), 0);
    proto_pack_cstr(&w.pk, "path"); proto_pack_cstr(&w.pk, "/p/x.jpg");
    assert_int_equal(proto_request_end(&w, 0), 0);
    r = roundtrip(&sb);
    assert_false(r->a.del.has_image_id);
    assert_int_equal(r->a.del.path.len, 8);
    proto_request_free(r);

    assert_int_equal(proto_request_begin(&w, &sb, 10, "hello", 1), 0);
    proto_pack_cstr(&w.pk, "token"); proto_pack_cstr(&w.pk, "s3cret");
    assert_int_equal(proto_request_end(&w, 0), 0);
    r = roundtrip(&sb);
    assert_memory_equal(r->a.hello.token.ptr, "s3cret", 6);
    assert_null(r->a.hello.client.ptr);
    proto_request_free(r);
    msgpack_sbuffer_destroy(&sb);
}

typedef struct bad_case {
    const char *what;
    buf body;
    int code;
    uint64_t id;
    const char *needle;   /* expected in the message */
} bad_case;

static void run_bad(const bad_case *c)
{
    proto_request *req = (proto_request *)1;
    uint64_t eid = 12345;
    int rc = proto_request_decode(c->body.p, c->body.n, NULL, &req, &eid);
    if (rc != c->code || eid != c->id || req != NULL || (c->needle && !strstr(umg_err_msg(), c->needle)))
        fail_msg("%s: got %s (id %llu) \"%s\", want %s (id %llu) containing \"%s\"", c->what, umg_error_name(rc),
                 (unsigned long long)eid, umg_err_msg(), umg_error_name(c->code), (unsigned long long)c->id,
                 c->needle ? c->needle : "");
}

#define ID(n) "id", (uint64_t)(n)

/* {"id": id, "op": "query", "text": [[...nil...]]} with `arrays` arrays: the
 * map itself is one level, so arrays == max depth is one too many. */
static buf nest_text(uint64_t id, unsigned arrays)
{
    buf head = build("Msusss", 3u, ID(id), "op", "query", "text");
    buf b = {malloc(head.n + arrays + 1), head.n + arrays + 1};
    memcpy(b.p, head.p, head.n);
    memset(b.p + head.n, 0x91, arrays);
    b.p[head.n + arrays] = 0xc0;
    free(head.p);
    return b;
}

static void test_request_envelope_errors(void **state)
{
    static const uint8_t bad_byte[] = {0x82, 0xa2, 'i', 'd', 0x01, 0xc1};
    static const uint8_t trailing[] = {0x81, 0xa2, 'i', 'd', 0x01, 0xc0};
    bad_case cases[] = {
        {"reserved byte", raw(bad_byte, sizeof bad_byte), UMG_EPROTO, 0, "0xc1"},
        {"truncated", raw(bad_byte, 5), UMG_EPROTO, 0, "truncated"},
        {"trailing bytes", raw(trailing, sizeof trailing), UMG_EPROTO, 0, "trailing"},
        {"empty", raw("", 0), UMG_EPROTO, 0, "empty"},
        {"array", build("Asu", 2u, "id", (uint64_t)1), UMG_EPROTO, 0, "map"},
        {"string", build("s", "ping"), UMG_EPROTO, 0, "map"},
        {"nil", build("n"), UMG_EPROTO, 0, "map"},
        {"no id", build("Mss", 1u, "op", "ping"), UMG_EINVAL, 0, "'id'"},
        {"negative id", build("Msiss", 2u, "id", (int64_t)-1, "op", "ping"), UMG_EINVAL, 0, "'id'"},
        {"string id", build("Mssss", 2u, "id", "7", "op", "ping"), UMG_EINVAL, 0, "'id'"},
        {"float id", build("Msfss", 2u, "id", 7.0, "op", "ping"), UMG_EINVAL, 0, "'id'"},
        {"duplicate id", build("Msususs", 3u, ID(1), ID(2), "op", "ping"), UMG_EINVAL, 0, "'id'"},
        {"no op", build("Msu", 1u, ID(7)), UMG_EINVAL, 7, "'op'"},
        {"int op", build("Msusu", 2u, ID(7), "op", (uint64_t)3), UMG_EINVAL, 7, "'op'"},
        {"duplicate op", build("Msussss", 3u, ID(7), "op", "ping", "op", "stats"), UMG_EINVAL, 7, "'op'"},
        {"unknown op", build("Msuss", 2u, ID(8), "op", "frobnicate"), UMG_EUNKNOWNOP, 8, "frobnicate"},
        {"op case", build("Msuss", 2u, ID(8), "op", "PING"), UMG_EUNKNOWNOP, 8, "PING"},
        {"op not utf8", build("MsusS", 2u, ID(9), "op", "pi\xffng", (size_t)5), UMG_EUTF8, 9, "'op'"},
        {"unknown argument", build("Msussss", 3u, ID(10), "op", "ping", "colour", "red"), UMG_EINVAL, 10,
         "'colour'"},
        {"non-string key", build("Msussuu", 3u, ID(11), "op", "ping", (uint64_t)1, (uint64_t)2), UMG_EINVAL, 11,
         "keys"},
        {"key not utf8", build("MsussSu", 3u, ID(12), "op", "ping", "\xc0\xaf", (size_t)2, (uint64_t)2),
         UMG_EUTF8, 12, "key"},
        {"nesting before the id is read", nest_text(13, PROTO_DEFAULT_MAX_DEPTH), UMG_ETOOBIG, 0, "nesting"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_bad(&cases[i]);
}

static void test_request_argument_errors(void **state)
{
    static const char long_text[4098] = {[0 ... 4096] = 'a'};
    bad_case cases[] = {
        /* query */
        {"query without text", build("Msuss", 2u, ID(20), "op", "query"), UMG_EINVAL, 20, "'text'"},
        {"text not a string", build("Msusssu", 3u, ID(21), "op", "query", "text", (uint64_t)5), UMG_EINVAL, 21,
         "'text' must be a string"},
        {"text as bin", build("Msusssb", 3u, ID(21), "op", "query", "text", "cat", (size_t)3), UMG_EINVAL, 21,
         "'text'"},
        {"empty text", build("Msussss", 3u, ID(22), "op", "query", "text", ""), UMG_EINVAL, 22, "empty"},
        {"text too long", build("Msussss", 3u, ID(23), "op", "query", "text", long_text), UMG_EINVAL, 23,
         "longer than 4096"},
        {"text not utf8", build("MsusssS", 3u, ID(24), "op", "query", "text", "caf\xe9", (size_t)4), UMG_EUTF8,
         24, "'text'"},
        {"bad granularity", build("Msussssss", 4u, ID(25), "op", "query", "text", "cat", "granularity", "pixels"),
         UMG_EINVAL, 25, "'granularity'"},
        {"k zero", build("Msusssssu", 4u, ID(26), "op", "query", "text", "cat", "k", (uint64_t)0), UMG_EINVAL, 26,
         "'k'"},
        {"k too big", build("Msusssssu", 4u, ID(26), "op", "query", "text", "cat", "k", (uint64_t)1001),
         UMG_EINVAL, 26, "'k' must be between 1 and 1000"},
        {"k negative", build("Msusssssi", 4u, ID(26), "op", "query", "text", "cat", "k", (int64_t)-3), UMG_EINVAL,
         26, "'k' must be an unsigned integer"},
        {"k float", build("Msusssssf", 4u, ID(26), "op", "query", "text", "cat", "k", 2.5), UMG_EINVAL, 26, "'k'"},
        {"duplicate argument", build("Msussssss", 4u, ID(27), "op", "query", "text", "cat", "text", "dog"),
         UMG_EINVAL, 27, "duplicate argument 'text'"},
        {"filters not a map", build("Msussssss", 4u, ID(28), "op", "query", "text", "cat", "filters", "x"),
         UMG_EINVAL, 28, "'filters' must be a map"},
        {"unknown filter", build("MsusssssMsu", 4u, ID(29), "op", "query", "text", "cat", "filters", 1u, "bogus",
                                 (uint64_t)1),
         UMG_EINVAL, 29, "'filters.bogus'"},
        {"filter tags not array", build("MsusssssMss", 4u, ID(30), "op", "query", "text", "cat", "filters", 1u,
                                        "tags", "x"),
         UMG_EINVAL, 30, "'filters.tags' must be an array of strings"},
        {"filter tag item int", build("MsusssssMsAsu", 4u, ID(31), "op", "query", "text", "cat", "filters", 1u,
                                      "tags", 2u, "a", (uint64_t)1),
         UMG_EINVAL, 31, "'filters.tags'"},
        {"filter tag not utf8", build("MsusssssMsAS", 4u, ID(32), "op", "query", "text", "cat", "filters", 1u,
                                      "tags", 1u, "\xed\xa0\x80", (size_t)3),
         UMG_EUTF8, 32, "'filters.tags'"},
        {"min_score string", build("MsusssssMss", 4u, ID(33), "op", "query", "text", "cat", "filters", 1u,
                                   "min_score", "high"),
         UMG_EINVAL, 33, "'filters.min_score' must be a number"},
        {"min_score NaN", build("MsusssssMsf", 4u, ID(34), "op", "query", "text", "cat", "filters", 1u,
                                "min_score", NAN),
         UMG_EINVAL, 34, "finite"},
        {"path_prefix not utf8", build("MsusssssMsS", 4u, ID(35), "op", "query", "text", "cat", "filters", 1u,
                                       "path_prefix", "\xff", (size_t)1),
         UMG_EUTF8, 35, "'filters.path_prefix'"},
        /* issue 17: pages, boxes per photo, capture filters */
        {"offset too large", build("Msusssssu", 4u, ID(36), "op", "query", "text", "cat", "offset", (uint64_t)10001),
         UMG_EINVAL, 36, "'offset' must be between 0 and 10000"},
        {"per_photo zero", build("Msusssssu", 4u, ID(37), "op", "query", "text", "cat", "per_photo", (uint64_t)0),
         UMG_EINVAL, 37, "'per_photo' must be between 1 and 100000"},
        {"near without km", build("MsusssssMsMsfsf", 4u, ID(38), "op", "query", "text", "cat", "filters", 1u, "near",
                                  2u, "lat", 10.0, "lon", 20.0),
         UMG_EINVAL, 38, "'filters.near.km'"},
        {"near lat 91", build("MsusssssMsMsfsfsf", 4u, ID(38), "op", "query", "text", "cat", "filters", 1u, "near",
                              3u, "lat", 91.0, "lon", 20.0, "km", 5.0),
         UMG_EINVAL, 38, "'filters.near.lat' must be between -90 and 90"},
        {"camera empty", build("MsusssssMss", 4u, ID(39), "op", "query", "text", "cat", "filters", 1u, "camera", ""),
         UMG_EINVAL, 39, "'filters.camera' must not be empty"},
        {"taken_after int", build("MsusssssMsu", 4u, ID(39), "op", "query", "text", "cat", "filters", 1u,
                                  "taken_after", (uint64_t)2019),
         UMG_EINVAL, 39, "'filters.taken_after' must be a string"},
        /* ingest */
        {"ingest nothing", build("Msuss", 2u, ID(40), "op", "ingest"), UMG_EINVAL, 40, "'path' or 'data'+'name'"},
        {"ingest path and data", build("Msusssssssb", 5u, ID(41), "op", "ingest", "path", "/a.jpg", "name", "a",
                                       "data", "x", (size_t)1),
         UMG_EINVAL, 41, "exclude"},
        {"ingest data without name", build("Msusssb", 3u, ID(42), "op", "ingest", "data", "x", (size_t)1),
         UMG_EINVAL, 42, "'name'"},
        {"ingest empty data", build("Msusssbss", 4u, ID(43), "op", "ingest", "data", "", (size_t)0, "name", "a"),
         UMG_EINVAL, 43, "'data' must not be empty"},
        {"ingest data as str", build("Msussss", 3u, ID(44), "op", "ingest", "data", "xyz"), UMG_EINVAL, 44,
         "'data' must be binary data"},
        {"ingest path int", build("Msusssu", 3u, ID(45), "op", "ingest", "path", (uint64_t)1), UMG_EINVAL, 45,
         "'path'"},
        {"ingest empty path", build("Msussss", 3u, ID(46), "op", "ingest", "path", ""), UMG_EINVAL, 46, "'path'"},
        {"ingest empty tag", build("MsusssssAs", 4u, ID(47), "op", "ingest", "path", "/a.jpg", "tags", 1u, ""),
         UMG_EINVAL, 47, "'tags' must not be empty"},
        {"ingest path not utf8", build("MsusssS", 3u, ID(48), "op", "ingest", "path", "/\xfe.jpg", (size_t)6),
         UMG_EUTF8, 48, "'path'"},
        {"ingest mtime with path", build("Msusssssi", 4u, ID(49), "op", "ingest", "path", "/a.jpg", "mtime",
                                         (int64_t)5),
         UMG_EINVAL, 49, "exclude"},
        {"ingest mtime zero", build("Msusssbsssi", 5u, ID(49), "op", "ingest", "data", "x", (size_t)1, "name", "a",
                                    "mtime", (int64_t)0),
         UMG_EINVAL, 49, "'mtime' must be between 1 and 253402300799"},
        {"ingest mtime negative", build("Msusssbsssi", 5u, ID(49), "op", "ingest", "data", "x", (size_t)1, "name",
                                        "a", "mtime", (int64_t)-1),
         UMG_EINVAL, 49, "'mtime' must be between"},
        {"ingest mtime string", build("Msusssbssss", 5u, ID(49), "op", "ingest", "data", "x", (size_t)1, "name",
                                      "a", "mtime", "today"),
         UMG_EINVAL, 49, "'mtime' must be an integer"},
        {"ingest mtime float", build("Msusssbsssf", 5u, ID(49), "op", "ingest", "data", "x", (size_t)1, "name",
                                     "a", "mtime", 1.5e9),
         UMG_EINVAL, 49, "'mtime' must be an integer"},
        /* query_image */
        {"query_image nothing", build("Msuss", 2u, ID(50), "op", "query_image"), UMG_EINVAL, 50,
         "'image_id' or 'data'"},
        {"query_image id and data", build("Msusssusb", 4u, ID(51), "op", "query_image", "image_id", (uint64_t)1,
                                          "data", "x", (size_t)1),
         UMG_EINVAL, 51, "exclude"},
        {"box of 3", build("MsusssusAuuu", 4u, ID(52), "op", "query_image", "image_id", (uint64_t)1, "box", 3u,
                           (uint64_t)1, (uint64_t)2, (uint64_t)3),
         UMG_EINVAL, 52, "'box' must be a box"},
        {"box zero width", build("MsusssusAuuuu", 4u, ID(53), "op", "query_image", "image_id", (uint64_t)1, "box",
                                 4u, (uint64_t)1, (uint64_t)2, (uint64_t)0, (uint64_t)3),
         UMG_EINVAL, 53, "w, h > 0"},
        {"box negative x", build("MsusssusAiuuu", 4u, ID(54), "op", "query_image", "image_id", (uint64_t)1, "box",
                                 4u, (int64_t)-1, (uint64_t)2, (uint64_t)5, (uint64_t)3),
         UMG_EINVAL, 54, "'box'"},
        {"box with a string", build("MsusssusAsuuu", 4u, ID(55), "op", "query_image", "image_id", (uint64_t)1,
                                    "box", 4u, "1", (uint64_t)2, (uint64_t)5, (uint64_t)3),
         UMG_EINVAL, 55, "'box'"},
        {"box infinite", build("MsusssusAfuuu", 4u, ID(56), "op", "query_image", "image_id", (uint64_t)1, "box",
                               4u, INFINITY, (uint64_t)2, (uint64_t)5, (uint64_t)3),
         UMG_EINVAL, 56, "finite"},
        /* get / delete / hello / ping / stats */
        {"get nothing", build("Msuss", 2u, ID(60), "op", "get"), UMG_EINVAL, 60, "'image_id' or 'path'"},
        {"get negative id", build("Msusssi", 3u, ID(61), "op", "get", "image_id", (int64_t)-5), UMG_EINVAL, 61,
         "'image_id' must be an unsigned integer"},
        {"delete path int", build("Msusssu", 3u, ID(62), "op", "delete", "path", (uint64_t)5), UMG_EINVAL, 62,
         "'path' must be a string"},
        {"delete both", build("Msusssuss", 4u, ID(63), "op", "delete", "image_id", (uint64_t)5, "path", "/a"),
         UMG_EINVAL, 63, "exclude"},
        {"hello token int", build("Msusssu", 3u, ID(64), "op", "hello", "token", (uint64_t)5), UMG_EINVAL, 64,
         "'token'"},
        {"ping with argument", build("Msussss", 3u, ID(65), "op", "ping", "text", "x"), UMG_EINVAL, 65,
         "unknown argument 'text'"},
        {"stats with argument", build("Msusssu", 3u, ID(66), "op", "stats", "k", (uint64_t)1), UMG_EINVAL, 66,
         "unknown argument 'k'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) run_bad(&cases[i]);
}

static void test_command_table(void **state)
{
    const proto_op *ops = proto_ops();
    static const char *const names[] = {"hello", "ping", "ingest", "query", "query_image", "get", "delete", "stats",
                                        "list", "move", "thumb"};
    assert_int_equal(sizeof names / sizeof names[0], PROTO_OP_COUNT);
    for (int i = 0; i < PROTO_OP_COUNT; i++) {
        assert_int_equal(ops[i].code, i);
        assert_string_equal(ops[i].name, names[i]);
        assert_ptr_equal(proto_op_find(names[i], strlen(names[i])), &ops[i]);
        assert_true(ops[i].nargs <= PROTO_MAX_ARGS);
    }
    assert_null(proto_op_find("quer", 4));
    assert_null(proto_op_find("query_images", 12));
    assert_ptr_equal(ops, proto_op_table);   /* constant data: no handler slot to patch */
}

/* ---- responses ---------------------------------------------------------- */

static proto_response *decode_one(const uint8_t *data, size_t len, size_t *used_out)
{
    proto_framer *f;
    assert_int_equal(proto_framer_create(0, &f), 0);
    size_t used;
    uint8_t *fr;
    size_t fl;
    assert_int_equal(proto_framer_feed(f, data, len, &used, &fr, &fl), PROTO_FRAME_READY);
    proto_framer_close(f);
    if (used_out) *used_out = used;
    proto_response *r;
    int rc = proto_response_decode(fr, fl, NULL, &r);
    if (rc) fail_msg("response decode: %s: %s", umg_error_name(rc), umg_err_msg());
    return r;
}

static void test_response_ok_roundtrip(void **state)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    proto_writer w;
    assert_int_equal(proto_response_begin(&w, &sb, 77), 0);
    msgpack_pack_map(&w.pk, 1);
    proto_pack_cstr(&w.pk, "hits");
    msgpack_pack_array(&w.pk, 1);
    msgpack_pack_map(&w.pk, 4);
    proto_pack_cstr(&w.pk, "image_id"); msgpack_pack_uint64(&w.pk, 3);
    proto_pack_cstr(&w.pk, "path"); proto_pack_cstr(&w.pk, "/p/a.jpg");
    proto_pack_cstr(&w.pk, "score"); msgpack_pack_float(&w.pk, 0.5f);
    proto_pack_cstr(&w.pk, "box"); msgpack_pack_array(&w.pk, 4);
    for (int i = 0; i < 4; i++) msgpack_pack_uint64(&w.pk, 10 * (i + 1));
    assert_int_equal(proto_response_end(&w, 0), 0);
    /* a second response, an error, appended to the same buffer */
    assert_int_equal(proto_response_error(&sb, 78, UMG_ENOENT, "image 5 not found"), 0);

    size_t used;
    proto_response *r = decode_one((uint8_t *)sb.data, sb.size, &used);
    assert_int_equal(r->id, 77);
    assert_true(r->ok);
    const msgpack_object *hits = proto_map_get(r->result, "hits");
    assert_int_equal(hits->type, MSGPACK_OBJECT_ARRAY);
    const msgpack_object *hit = &hits->via.array.ptr[0];
    assert_true(proto_obj_str_eq(proto_map_get(hit, "path"), "/p/a.jpg"));
    double box[4], score;
    assert_true(proto_obj_box(proto_map_get(hit, "box"), box));
    assert_true(box[3] == 40);
    assert_true(proto_obj_float(proto_map_get(hit, "score"), &score));
    assert_true(score == 0.5);
    proto_response_free(r);

    r = decode_one((uint8_t *)sb.data + used, sb.size - used, NULL);
    assert_int_equal(r->id, 78);
    assert_false(r->ok);
    assert_int_equal(r->code, UMG_ENOENT);
    assert_string_equal(r->code_name, "not_found");
    assert_string_equal(r->message, "image 5 not found");
    proto_response_free(r);
    msgpack_sbuffer_destroy(&sb);
}

static void test_response_error_every_code(void **state)
{
    static const int codes[] = {
#define X(name, value, wire, desc) name,
        UMG_ERROR_TABLE(X)
#undef X
    };
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        msgpack_sbuffer_clear(&sb);
        assert_int_equal(proto_response_error(&sb, i, codes[i], NULL), 0);
        proto_response *r = decode_one((uint8_t *)sb.data, sb.size, NULL);
        assert_false(r->ok);
        assert_int_equal(r->id, i);
        /* code 0 is not an error: sent as internal */
        int want = codes[i] == UMG_OK ? UMG_EINTERNAL : codes[i];
        assert_int_equal(r->code, want);
        assert_string_equal(r->code_name, umg_error_name(want));
        assert_string_equal(r->message, umg_strerror(want));
        proto_response_free(r);
    }
    assert_int_equal(proto_error_code("no_such_code", 12), UMG_EINTERNAL);

    /* messages go out as valid UTF-8, cut to 1024 bytes at a character boundary */
    msgpack_sbuffer_clear(&sb);
    assert_int_equal(proto_response_error(&sb, 1, UMG_EIO, "bad \xff name \xc3"), 0);
    proto_response *r = decode_one((uint8_t *)sb.data, sb.size, NULL);
    assert_string_equal(r->message, "bad ? name ?");
    proto_response_free(r);
    char longmsg[3000];
    for (size_t i = 0; i + 2 < sizeof longmsg; i += 2) memcpy(longmsg + i, "\xc3\xa9", 2);   /* é... */
    longmsg[sizeof longmsg - 1] = 0;
    longmsg[sizeof longmsg - 2] = 0;
    msgpack_sbuffer_clear(&sb);
    assert_int_equal(proto_response_error(&sb, 1, UMG_EIO, longmsg + 1), 0);   /* starts mid-character */
    r = decode_one((uint8_t *)sb.data, sb.size, NULL);
    size_t ml = strlen(r->message);
    assert_true(ml <= 1024 && ml >= 1020);
    assert_true(proto_utf8_valid(r->message, ml));
    assert_int_equal(r->message[0], '?');
    proto_response_free(r);
    msgpack_sbuffer_destroy(&sb);
}

static void test_response_end_replaces_bad_results(void **state)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    proto_writer w;
    /* no result packed */
    assert_int_equal(proto_response_begin(&w, &sb, 5), 0);
    assert_int_equal(proto_response_end(&w, 0), UMG_EINTERNAL);
    proto_response *r = decode_one((uint8_t *)sb.data, sb.size, NULL);
    assert_int_equal(r->id, 5);
    assert_int_equal(r->code, UMG_EINTERNAL);
    proto_response_free(r);
    /* two results packed */
    msgpack_sbuffer_clear(&sb);
    assert_int_equal(proto_response_begin(&w, &sb, 6), 0);
    msgpack_pack_nil(&w.pk);
    msgpack_pack_nil(&w.pk);
    assert_int_equal(proto_response_end(&w, 0), UMG_EINTERNAL);
    r = decode_one((uint8_t *)sb.data, sb.size, NULL);
    assert_int_equal(r->code, UMG_EINTERNAL);
    proto_response_free(r);
    /* over the frame limit: a too_large error for the same id instead */
    msgpack_sbuffer_clear(&sb);
    assert_int_equal(proto_response_begin(&w, &sb, 7), 0);
    static const char blob[4000];
    msgpack_pack_bin_with_body(&w.pk, blob, sizeof blob);
    assert_int_equal(proto_response_end(&w, 1000), UMG_ETOOBIG);
    assert_true(sb.size < 1000);
    r = decode_one((uint8_t *)sb.data, sb.size, NULL);
    assert_int_equal(r->id, 7);
    assert_int_equal(r->code, UMG_ETOOBIG);
    assert_string_equal(r->code_name, "too_large");
    proto_response_free(r);
    msgpack_sbuffer_destroy(&sb);
}

static void test_response_decode_rejects_non_responses(void **state)
{
    buf cases[] = {
        build("Asu", 2u, "id", (uint64_t)1),
        build("MsT", 1u, "ok"),
        build("MsisTsu", 3u, "id", (int64_t)-1, "ok", "result", (uint64_t)1) /* negative id */,
        build("Msusu", 2u, ID(1), "ok", (uint64_t)1),
        build("MsusT", 2u, ID(1), "ok"),                                  /* ok without result */
        build("MsusF", 2u, ID(1), "ok"),                                  /* error without error */
        build("MsusFsMss", 3u, ID(1), "ok", "error", 1u, "message", "x"),  /* no code */
        build("MsusFsMsu", 3u, ID(1), "ok", "error", 1u, "code", (uint64_t)1),
        build("MsusFsMsssu", 3u, ID(1), "ok", "error", 2u, "code", "io_error", "message", (uint64_t)1),
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        proto_response *r = (proto_response *)1;
        int rc = proto_response_decode(cases[i].p, cases[i].n, NULL, &r);
        if (rc != UMG_EPROTO) fail_msg("case %zu: %s", i, umg_error_name(rc));
        assert_null(r);
    }
    /* unknown keys are ignored; an unknown code name maps to internal */
    buf b = build("MsusFsMsssssu", 4u, ID(9), "ok", "error", 2u, "code", "future_code", "message", "m", "extra",
                  (uint64_t)1);
    proto_response *r;
    assert_int_equal(proto_response_decode(b.p, b.n, NULL, &r), 0);
    assert_int_equal(r->code, UMG_EINTERNAL);
    assert_string_equal(r->code_name, "future_code");
    proto_response_free(r);
    proto_response_free(NULL);
    proto_request_free(NULL);
}

/* Run every file of dir through the fuzz target; returns how many. */
static int replay_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "rb");
        assert_non_null(f);
        static uint8_t data[1 << 20];
        size_t len = fread(data, 1, sizeof data, f);
        fclose(f);
        LLVMFuzzerTestOneInput(data, len);
        n++;
    }
    closedir(d);
    return n;
}

static void test_fuzz_corpus_replay(void **state)
{
    int seeds = replay_dir(UMG_SOURCE_DIR "/tests/fuzz/corpus/protocol");
    assert_true(seeds >= 40);   /* the seeds of make_corpus.py at least */
    replay_dir(UMG_SOURCE_DIR "/tests/fuzz/regressions");
}

/* The hits encoding: what the server packs the client decodes, field for
 * field (width and height included); boxes of whole pixels go as integers;
 * a heatmap of another shape is refused, not guessed at. */
static void test_hits_roundtrip(void **state)
{
    (void)state;
    float heat[4] = {0.25f, -0.5f, 1.0f, 0.125f};
    proto_hit in[3] = {
        {.image_id = 7, .path = "/a/x.jpg", .score = 0.75f, .width = 640, .height = 480},
        {.image_id = 9, .path = "/b/y.png", .score = 0.5f, .width = 10, .height = 20, .has_box = 1,
         .box = {1, 2, 3.5f, 4}, .region_id = 11, .has_refined = 1, .refined = 0.625f},
        {.image_id = 12, .path = NULL, .score = -0.25f, .width = 3, .height = 5, .heat = heat,
         .extent = {-1, 0, 5, 5}},
    };
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    proto_hits_pack(&pk, in, 3, 2);
    msgpack_zone zone;
    msgpack_zone_init(&zone, 2048);
    msgpack_object obj;
    assert_int_equal(proto_unpack((const uint8_t *)sb.data, sb.size, NULL, &zone, &obj), 0);
    const msgpack_object *box = proto_map_get(&proto_map_get(&obj, "hits")->via.array.ptr[1], "box");
    assert_int_equal(box->via.array.ptr[0].type, MSGPACK_OBJECT_POSITIVE_INTEGER);
    assert_true(box->via.array.ptr[2].type == MSGPACK_OBJECT_FLOAT32 || box->via.array.ptr[2].type == MSGPACK_OBJECT_FLOAT64);
    proto_hits out;
    assert_int_equal(proto_hits_decode(&obj, &out), 0);
    assert_int_equal(out.n, 3);
    assert_int_equal(out.grid, 2);
    for (int i = 0; i < 3; i++) {
        const proto_hit *a = &in[i], *b = &out.hits[i];
        assert_int_equal(b->image_id, a->image_id);
        assert_string_equal(b->path, a->path ? a->path : "");
        assert_true(b->score == a->score);
        assert_int_equal(b->width, a->width);
        assert_int_equal(b->height, a->height);
        assert_int_equal(b->has_box, a->has_box);
        assert_int_equal(b->has_refined, a->has_refined);
        if (a->has_box) {
            assert_memory_equal(b->box, a->box, sizeof a->box);
            assert_int_equal(b->region_id, a->region_id);
        }
        if (a->has_refined) assert_true(b->refined == a->refined);
        assert_int_equal(b->heat != NULL, a->heat != NULL);
        if (a->heat) {
            assert_memory_equal(b->heat, a->heat, sizeof heat);
            assert_memory_equal(b->extent, a->extent, sizeof a->extent);
        }
    }
    proto_hits_free(&out);
    msgpack_zone_destroy(&zone);
    msgpack_sbuffer_destroy(&sb);

    /* a heatmap as nested rows (a shape the server never sends) is an error */
    msgpack_sbuffer_init(&sb);
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 1);
    proto_pack_cstr(&pk, "hits");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_map(&pk, 1);
    proto_pack_cstr(&pk, "heatmap");
    msgpack_pack_array(&pk, 2);
    for (int r = 0; r < 2; r++) {
        msgpack_pack_array(&pk, 2);
        msgpack_pack_float(&pk, 1), msgpack_pack_float(&pk, 2);
    }
    msgpack_zone_init(&zone, 2048);
    assert_int_equal(proto_unpack((const uint8_t *)sb.data, sb.size, NULL, &zone, &obj), 0);
    assert_int_equal(proto_hits_decode(&obj, &out), UMG_EPROTO);
    msgpack_zone_destroy(&zone);
    msgpack_sbuffer_destroy(&sb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_framing_split_at_every_byte),
        cmocka_unit_test(test_framing_several_frames_in_one_chunk),
        cmocka_unit_test(test_framing_oversize_refused_before_buffering),
        cmocka_unit_test(test_framing_set_max),
        cmocka_unit_test(test_framing_zero_length),
        cmocka_unit_test(test_frame_encoder),
        cmocka_unit_test(test_check_accepts_every_type),
        cmocka_unit_test(test_check_truncated_and_trailing),
        cmocka_unit_test(test_check_huge_declared_lengths),
        cmocka_unit_test(test_check_depth),
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_request_examples_of_every_op),
        cmocka_unit_test(test_request_envelope_errors),
        cmocka_unit_test(test_request_argument_errors),
        cmocka_unit_test(test_command_table),
        cmocka_unit_test(test_response_ok_roundtrip),
        cmocka_unit_test(test_response_error_every_code),
        cmocka_unit_test(test_response_end_replaces_bad_results),
        cmocka_unit_test(test_response_decode_rejects_non_responses),
        cmocka_unit_test(test_fuzz_corpus_replay),
        cmocka_unit_test(test_hits_roundtrip),
        cmocka_unit_test(test_request_typed_args),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
