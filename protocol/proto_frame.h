/* proto_frame.h - length-prefixed framing: a 4-byte big-endian unsigned length
 * N, then N bytes (one msgpack object).
 *
 * Decoder: a proto_framer per connection, fed whatever byte chunks the socket
 * delivers (libuv read callbacks split and merge frames arbitrarily):
 *
 *   proto_framer *f;  proto_framer_create(max_frame, &f);
 *   while (len) {                       // for every chunk received
 *       size_t used; uint8_t *frame; size_t n;
 *       int rc = proto_framer_feed(f, data, len, &used, &frame, &n);
 *       data += used; len -= used;
 *       if (rc == PROTO_FRAME_READY) { handle(frame, n); free(frame); }
 *       else if (rc == UMG_EPROTO) { answer protocol_error (id 0), keep going }
 *       else if (rc < 0) { answer the error (id 0), then close }   // UMG_ETOOBIG, UMG_ENOMEM
 *   }
 *   proto_framer_close(f);
 *
 * Memory: the framer's buffer holds at most one frame body (<= max_frame
 * bytes) plus the 4 length bytes; it grows with the bytes actually received,
 * not with the declared length, so a peer that announces 64 MiB and then
 * stalls costs only what it sent.  A declared length over max_frame is refused
 * as soon as the 4 length bytes are seen, before anything is buffered.
 *
 * Encoder: proto_frame_begin() reserves the 4 length bytes at the end of a
 * msgpack_sbuffer, proto_frame_end() writes the length once the object is
 * packed; the sbuffer then holds bytes ready for uv_write. */
#ifndef PROTO_FRAME_H
#define PROTO_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#define PROTO_FRAME_HEADER 4

typedef struct proto_framer proto_framer;

enum proto_frame_status {
    PROTO_FRAME_NEED_MORE = 0,  /* all of the input was consumed, no frame is complete */
    PROTO_FRAME_READY = 1,      /* a frame is complete: see proto_framer_feed */
};

/* max_frame: the largest frame body accepted (0 = PROTO_DEFAULT_MAX_FRAME). */
int proto_framer_create(uint32_t max_frame, proto_framer **out);
/* NULL-safe; frees any partial frame. */
void proto_framer_close(proto_framer *f);

/* Consume bytes from data[0..len) up to the end of the next frame.
 * *used is always set: how many bytes were consumed (the caller calls again
 * with the rest).  Returns
 *   PROTO_FRAME_NEED_MORE  *used == len, nothing to hand out yet.
 *   PROTO_FRAME_READY      *frame (malloc'd, owned by the caller, free() it)
 *                          holds *frame_len >= 1 bytes of body, without prefix.
 *   UMG_EPROTO             the length prefix was 0.  The 4 bytes are consumed
 *                          and the framing is intact: answer an error frame and
 *                          go on reading.
 *   UMG_ETOOBIG            the declared length exceeds max_frame.  Fatal: the
 *                          stream cannot be resynchronised; every later call
 *                          returns UMG_ETOOBIG again with *used = 0.  Send an
 *                          error frame, then close the connection.
 *   UMG_ENOMEM             could not grow the buffer (treat as fatal).
 * On every non-READY return *frame is NULL and *frame_len 0. */
int proto_framer_feed(proto_framer *f, const uint8_t *data, size_t len, size_t *used,
                      uint8_t **frame, size_t *frame_len);

/* Bytes of the current partial frame held (prefix bytes included); 0 between
 * frames.  Never exceeds max_frame + 4. */
size_t proto_framer_buffered(const proto_framer *f);

/* True if the framer has failed for good (oversize length seen). */
int proto_framer_failed(const proto_framer *f);

/* Memory the framer holds for the current partial frame (its buffer's
 * capacity, >= the body bytes buffered); 0 between frames. */
size_t proto_framer_held(const proto_framer *f);

/* Change the largest frame body accepted from the next length prefix on (0 =
 * PROTO_DEFAULT_MAX_FRAME).  A length already accepted stands.  The server
 * starts an unauthenticated connection with a small limit and raises it once
 * hello succeeds. */
void proto_framer_set_max(proto_framer *f, uint32_t max_frame);

/* Encoder.  proto_frame_begin appends 4 placeholder bytes to sb and returns
 * their offset (or a negative UMG_ENOMEM); pack the message after it, then
 * proto_frame_end(sb, offset, max_frame) writes the body length big-endian at
 * offset.  UMG_ETOOBIG if the body exceeds max_frame (0 = default) or 2^32-1:
 * the caller should truncate sb back to offset and send an error instead.
 * Several frames may be appended to one sbuffer this way. */
long proto_frame_begin(msgpack_sbuffer *sb);
int proto_frame_end(msgpack_sbuffer *sb, long offset, uint32_t max_frame);

/* A message being packed into an sbuffer: the request and response builders
 * (proto_request.h, proto_response.h) start one, the caller packs with &w->pk,
 * the builder's end function patches the length.  Lives on the caller's stack;
 * holds no memory of its own. */
typedef struct proto_writer {
    msgpack_sbuffer *sb;
    msgpack_packer pk;
    long offset;     /* of the length prefix in sb */
    uint64_t id;     /* request id, echoed by error replacement */
} proto_writer;

/* Write a 4-byte big-endian length into out[0..4). */
void proto_frame_put_len(uint8_t out[PROTO_FRAME_HEADER], uint32_t n);

#endif
