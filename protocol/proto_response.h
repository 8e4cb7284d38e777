/* proto_response.h - responses: builders on the server side, a decoder on the
 * client side.
 *
 *   {"id": id, "ok": true,  "result": <one object>}
 *   {"id": id, "ok": false, "error": {"code": "<umg_error_name>", "message": str}}
 *
 * Builders append one complete frame (length prefix included) to a
 * msgpack_sbuffer, so sb->data[0..sb->size) can go to uv_write as is; several
 * responses may be appended to the same sbuffer.
 *
 *   proto_writer w;
 *   proto_response_begin(&w, &sb, req->id);
 *   msgpack_pack_map(&w.pk, 1); proto_pack_cstr(&w.pk, "hits"); ...  // exactly one object
 *   proto_response_end(&w, max_frame);
 */
#ifndef PROTO_RESPONSE_H
#define PROTO_RESPONSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#include "proto_check.h"
#include "proto_frame.h"

/* Start a success response: writes the length placeholder, the map header,
 * id, ok and the "result" key; the caller then packs exactly one object with
 * &w->pk.  UMG_ENOMEM (sb unchanged) on failure. */
int proto_response_begin(proto_writer *w, msgpack_sbuffer *sb, uint64_t id);

/* Finish a success response: checks that exactly one well-formed result was
 * packed (a failed pack call, e.g. out of memory, shows up here), and that the
 * frame fits max_frame (0 = default) and the default element limit that
 * clients decode with.  On failure the partial frame is replaced by an error
 * frame for the same id (too_large or internal) and that code is returned, so
 * sb always ends with a complete frame unless UMG_ENOMEM is returned. */
int proto_response_end(proto_writer *w, uint32_t max_frame);

/* Append a complete error frame.  code is a UMG_E* code (its wire name from
 * umg_error_name is sent); message may be NULL (then umg_strerror(code)) and is
 * sent with invalid UTF-8 sequences replaced by '?' and cut to 1024 bytes. */
int proto_response_error(msgpack_sbuffer *sb, uint64_t id, int code, const char *message);

/* Copy src[0..len) into dst (capacity cap), replacing each invalid UTF-8
 * sequence by '?' and cutting at a character boundary.  Returns the length
 * written (no NUL added). */
size_t proto_utf8_sanitize(char *dst, size_t cap, const char *src, size_t len);

/* The UMG_E* code whose wire name is name[0..len), or UMG_EINTERNAL. */
int proto_error_code(const char *name, size_t len);

/* A decoded response (client side). */
typedef struct proto_response {
    uint64_t id;
    bool ok;
    const msgpack_object *result;   /* ok: the result (any type) */
    int code;                       /* !ok: UMG_E* code, UMG_EINTERNAL for unknown names */
    const char *code_name;          /* !ok: wire name as sent, NUL-terminated */
    const char *message;            /* !ok: NUL-terminated; "" if none */
    msgpack_object root;
    msgpack_zone zone;
    uint8_t *frame;
    size_t frame_len;
} proto_response;

/* Decode one frame body.  Takes ownership of frame (malloc'd) in every case,
 * like proto_request_decode.  Keys other than id/ok/result/error are ignored
 * (newer servers may add some).  UMG_EPROTO when the frame is not a response
 * (missing or ill-typed id, ok, result or error), or as proto_unpack. */
int proto_response_decode(uint8_t *frame, size_t len, const proto_limits *lim, proto_response **out);
/* NULL-safe; frees the frame and every object of the response. */
void proto_response_free(proto_response *resp);

#endif
