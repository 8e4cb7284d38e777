/* fuzz_protocol.c - libFuzzer target over the protocol decoder.
 *
 * Input: byte 0 picks how the rest is cut into chunks (as a socket would
 * deliver it); the rest is a byte stream of length-prefixed frames.  Every
 * frame goes through request decoding and response decoding; every outcome is
 * answered with a response built by the server-side builders, which must
 * decode again.  The raw stream is also given to the pre-decode scan, and
 * whatever the scan accepts msgpack-c must decode: the two must agree.
 * Built by tests/fuzz/CMakeLists.txt (UMG_FUZZ=ON, clang), run by tests/fuzz/run. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto.h"
#include "umg_error.h"
#include "umg_util.h"

/* A small frame limit keeps the fuzzer's memory and time per input low while
 * still exercising the oversize path. */
#define FUZZ_MAX_FRAME (1u << 20)

#define CHECK(cond)                                                       \
    do {                                                                  \
        if (!(cond)) {                                                    \
            fprintf(stderr, "%s:%d: check failed: %s (%s)\n", __FILE__,   \
                    __LINE__, #cond, umg_err_msg());                      \
            abort();                                                      \
        }                                                                 \
    } while (0)

static uint8_t *dup_bytes(const uint8_t *p, size_t n)
{
    uint8_t *d = malloc(n ? n : 1);
    CHECK(d);
    if (n) memcpy(d, p, n);
    return d;
}

/* Every frame in sb decodes as a response with the expected id. */
static void check_responses(const msgpack_sbuffer *sb, uint64_t id)
{
    proto_framer *f;
    CHECK(proto_framer_create(0, &f) == 0);
    const uint8_t *p = (const uint8_t *)sb->data;
    size_t left = sb->size;
    int frames = 0;
    while (left) {
        size_t used;
        uint8_t *fr;
        size_t fl;
        int rc = proto_framer_feed(f, p, left, &used, &fr, &fl);
        CHECK(rc >= 0);
        p += used;
        left -= used;
        if (rc != PROTO_FRAME_READY) continue;
        proto_response *r;
        rc = proto_response_decode(fr, fl, NULL, &r);
        CHECK(rc == 0);
        CHECK(r->id == id);
        if (!r->ok) CHECK(r->code != 0 && umg_utf8_valid(r->message, strlen(r->message)));
        proto_response_free(r);
        frames++;
    }
    CHECK(frames == 1 && proto_framer_buffered(f) == 0);
    proto_framer_close(f);
}

/* Touch every argument through the getters, as a handler would. */
static void read_args(const proto_request *req)
{
    for (size_t i = 0; i < req->op->nargs; i++) {
        const msgpack_object *o = proto_req_arg(req, req->op->args[i].key);
        CHECK(o == req->args[i]);
        if (!o) continue;
        const char *s;
        const uint8_t *b;
        size_t n;
        uint64_t u;
        double d, box[4];
        switch (req->op->args[i].type) {
        case PROTO_T_STR: CHECK(proto_obj_str(o, &s, &n) && umg_utf8_valid(s, n)); break;
        case PROTO_T_BIN: CHECK(proto_obj_bin(o, &b, &n)); break;
        case PROTO_T_UINT: CHECK(proto_obj_uint(o, &u)); break;
        case PROTO_T_FLOAT: CHECK(proto_obj_float(o, &d)); break;
        case PROTO_T_BOX: CHECK(proto_obj_box(o, box) && box[2] > 0 && box[3] > 0); break;
        case PROTO_T_MAP: {
            const proto_arg_spec *sp = &req->op->args[i];
            for (size_t k = 0; k < sp->nfields; k++) (void)proto_map_get(o, sp->fields[k].key);
            break;
        }
        default: break;
        }
    }
}

static void handle_frame(const uint8_t *frame, size_t len)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);

    /* as a server */
    proto_request *req;
    uint64_t err_id;
    int rc = proto_request_decode(dup_bytes(frame, len), len, NULL, &req, &err_id);
    if (rc == 0) {
        CHECK(req->op && req->id == err_id);
        read_args(req);
        /* echo the request as the result: whatever was accepted re-encodes */
        proto_writer w;
        CHECK(proto_response_begin(&w, &sb, req->id) == 0);
        CHECK(msgpack_pack_object(&w.pk, req->root) == 0);
        rc = proto_response_end(&w, FUZZ_MAX_FRAME * 2);
        CHECK(rc == 0 || rc == UMG_ETOOBIG);   /* one level deeper than the request */
        check_responses(&sb, req->id);
        proto_request_free(req);
    } else {
        CHECK(rc < 0 && req == NULL);
        CHECK(rc == UMG_EPROTO || rc == UMG_ETOOBIG || rc == UMG_EINVAL || rc == UMG_EUTF8 ||
              rc == UMG_EUNKNOWNOP);
        CHECK(proto_response_error(&sb, err_id, rc, umg_err_msg()) == 0);
        check_responses(&sb, err_id);
    }
    msgpack_sbuffer_destroy(&sb);

    /* as a client */
    proto_response *resp;
    rc = proto_response_decode(dup_bytes(frame, len), len, NULL, &resp);
    if (rc == 0) {
        CHECK(resp->ok ? resp->result != NULL : resp->code_name != NULL && resp->message != NULL);
        proto_response_free(resp);
    } else {
        CHECK(resp == NULL);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    size_t chunk = (size_t)data[0] + 1;   /* 1..256 bytes per read */
    data++;
    size--;

    /* the scan and msgpack-c agree on whatever the scan accepts */
    msgpack_zone zone;
    CHECK(msgpack_zone_init(&zone, 1024));
    msgpack_object obj;
    int rc = proto_check_msgpack(data, size, NULL);
    if (rc == 0) CHECK(proto_unpack(data, size, NULL, &zone, &obj) == 0);
    msgpack_zone_destroy(&zone);

    proto_framer *f;
    CHECK(proto_framer_create(FUZZ_MAX_FRAME, &f) == 0);
    size_t off = 0;
    while (off < size) {
        size_t n = size - off < chunk ? size - off : chunk;
        const uint8_t *p = data + off;
        off += n;
        while (n) {
            size_t used;
            uint8_t *fr;
            size_t fl;
            rc = proto_framer_feed(f, p, n, &used, &fr, &fl);
            CHECK(used <= n);
            CHECK(proto_framer_buffered(f) <= FUZZ_MAX_FRAME + PROTO_FRAME_HEADER);
            p += used;
            n -= used;
            if (rc == PROTO_FRAME_READY) {
                CHECK(fl >= 1 && fl <= FUZZ_MAX_FRAME);
                handle_frame(fr, fl);
                free(fr);
            } else if (rc == UMG_ETOOBIG) {
                CHECK(proto_framer_failed(f));
                goto done;   /* the server closes the connection here */
            } else {
                CHECK(rc == PROTO_FRAME_NEED_MORE || rc == UMG_EPROTO);
                if (rc == PROTO_FRAME_NEED_MORE) CHECK(n == 0);
            }
        }
    }
done:
    proto_framer_close(f);
    return 0;
}
