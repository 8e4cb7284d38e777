/* proto_check.h - limits of the wire format, and the checks that run on a
 * frame's bytes before msgpack-c is allowed to see them.
 *
 * msgpack-c trusts declared lengths: an array32 header claiming 4 billion
 * elements makes it try to allocate 4 billion msgpack_objects.  So every frame
 * is first scanned once, linearly, by proto_check_msgpack(): nesting depth,
 * every declared str/bin/ext length and array/map count against the bytes that
 * remain, the total number of objects, and exactly one object with no trailing
 * bytes.  Only then does proto_unpack() hand the bytes to msgpack_unpack(),
 * whose allocations are then bounded by the element limit (about 24 bytes of
 * zone per object). */
#ifndef PROTO_CHECK_H
#define PROTO_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#define PROTO_DEFAULT_MAX_FRAME    (64u << 20)   /* 64 MiB, bytes after the length prefix */
#define PROTO_DEFAULT_MAX_DEPTH    16u           /* containers nested in one another */
#define PROTO_DEFAULT_MAX_ELEMENTS (256u << 10)  /* objects per frame, keys included */
/* msgpack-c's own parser stack is 32 deep (MSGPACK_EMBED_STACK_SIZE); our
 * limit stays below it so that depth errors are always ours, with our message. */
#define PROTO_MAX_DEPTH_CAP        30u

typedef struct proto_limits {
    uint32_t max_frame;     /* largest frame body accepted; 0 = default */
    uint32_t max_depth;     /* most containers open at once (a top-level map holding
                             * an array is 2; a bare scalar is 0); 0 = default;
                             * values above PROTO_MAX_DEPTH_CAP are clamped */
    uint32_t max_elements;  /* total objects (every scalar, container, key); 0 = default */
} proto_limits;

/* The default limits (the values above). */
proto_limits proto_limits_default(void);

/* Scan buf[0..len) as exactly one msgpack object.  NULL limits = defaults.
 *   0               well formed and within limits
 *   UMG_EPROTO      truncated object, a declared length or count past the end
 *                   of the frame, the reserved byte 0xc1, trailing bytes, len 0
 *   UMG_ETOOBIG     nesting deeper than max_depth, or more than max_elements
 *                   objects (refused at the container header that declares them)
 * The detail message (umg_err_msg) gives the byte offset. */
int proto_check_msgpack(const uint8_t *buf, size_t len, const proto_limits *lim);

/* proto_check_msgpack, then msgpack_unpack into zone (initialised by the
 * caller with msgpack_zone_init).  *obj's str/bin/ext pointers point INTO buf,
 * container storage lives in zone: both must outlive the use of *obj.
 * Errors as proto_check_msgpack, plus UMG_ENOMEM. */
int proto_unpack(const uint8_t *buf, size_t len, const proto_limits *lim,
                 msgpack_zone *zone, msgpack_object *obj);

#endif
