/* proto_request.h - requests: the command table, validation and decoding on
 * the server side, and a builder on the client side.
 *
 * A request is one msgpack map {"id": uint, "op": str, ...arguments}.  What
 * each op accepts is data, in the table returned by proto_ops(): per argument
 * its key, type, whether it is required, its limits.  proto_request_decode()
 * checks a frame against that table (after the pre-decode scan of
 * proto_check.h), so a handler only ever sees well-typed arguments within
 * their limits; the semantics (does the image exist...) are the handler's.
 *
 * Errors of decoding (code -> wire name, see umg_error.h):
 *   UMG_EPROTO (protocol_error)    malformed msgpack, trailing bytes, not a map
 *   UMG_ETOOBIG (too_large)        nesting or element count over the limits
 *   UMG_EINVAL (invalid_argument)  id or op missing or ill-typed, unknown or
 *                                  duplicate key, an argument missing, of the
 *                                  wrong type or out of its limits (the message
 *                                  names the key)
 *   UMG_EUTF8 (invalid_utf8)       a key or string argument is not UTF-8
 *   UMG_EUNKNOWNOP (unknown_op)    op names no operation
 * The id is reported whenever it could be read (a top-level "id" key holding
 * an unsigned integer), else 0: clients should number requests from 1. */
#ifndef PROTO_REQUEST_H
#define PROTO_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#include "proto_check.h"
#include "proto_frame.h"

#define PROTO_VERSION 1

/* Defaults the server applies when an optional argument is absent (the
 * protocol layer only validates; docs/protocol.md documents these). */
#define PROTO_DEFAULT_K 10
#define PROTO_MAX_K 1000
#define PROTO_MAX_OFFSET 10000      /* query "offset": hits skipped (pagination) */
#define PROTO_MAX_PER_PHOTO 100000  /* query "per_photo": region hits of one photo (all of them) */
#define PROTO_DEFAULT_GRANULARITY "image"
/* ingest's optional "mtime" (with "data"): seconds since the epoch, 1 up to
 * the end of the year 9999; absent, the server records the ingest time. */
#define PROTO_MAX_MTIME INT64_C(253402300799)
/* list: most images per page ("limit"; default PROTO_MAX_LIST) */
#define PROTO_MAX_LIST 1000

enum proto_op_code {
    PROTO_OP_HELLO,
    PROTO_OP_PING,
    PROTO_OP_INGEST,
    PROTO_OP_QUERY,
    PROTO_OP_QUERY_IMAGE,
    PROTO_OP_GET,
    PROTO_OP_DELETE,
    PROTO_OP_STATS,
    PROTO_OP_LIST,      /* folders that change: stored images under a path prefix */
    PROTO_OP_MOVE,      /* folders that change: re-path a stored image */
    PROTO_OP_THUMB,     /* a stored image's JPEG thumbnail */
    PROTO_OP_COUNT
};

enum proto_type {
    PROTO_T_STR,        /* UTF-8 str; max_len bytes, choices */
    PROTO_T_BIN,        /* bin; max_len bytes (0: up to the frame limit) */
    PROTO_T_UINT,       /* non-negative integer; imin..imax when imax > 0 */
    PROTO_T_INT,        /* integer in int64 range; imin..imax when imin < imax */
    PROTO_T_BOOL,
    PROTO_T_FLOAT,      /* float32/64 or integer, finite; fmin..fmax when fmin < fmax */
    PROTO_T_STR_ARRAY,  /* array of at most max_items str, each as PROTO_T_STR */
    PROTO_T_MAP,        /* map whose keys are described by fields[0..nfields) */
    PROTO_T_BOX,        /* [x, y, w, h]: 4 finite numbers, x,y >= 0, w,h > 0 */
};

enum {
    PROTO_ARG_REQUIRED = 1u << 0,  /* must be present (within its alternative, if any) */
    PROTO_ARG_NONEMPTY = 1u << 1,  /* str/bin (and array items): at least one byte */
};

typedef struct proto_arg_spec {
    const char *key;
    /* where the decoded value goes in the op's typed arguments (proto_args):
     * STR: proto_str (or, with choices, an int: the index of the choice, 0 =
     * the first when absent); BIN: proto_bin; UINT: uint64_t; INT: int64_t;
     * FLOAT: double; BOOL: bool; BOX: double[4]; STR_ARRAY: proto_strs; MAP: a
     * struct whose members the fields' offsets point into.  has: offset + 1 of
     * a bool set when the argument is present (0: no such flag). */
    size_t offset, has;
    uint64_t udefault;                      /* UINT: the value when absent */
    enum proto_type type;
    unsigned flags;
    /* 0: stands alone.  k > 0: member of alternative k; an op with alts > 0
     * requires arguments of exactly one alternative ("path" or "data"+"name"). */
    unsigned alt;
    uint64_t max_len;                       /* str/bin bytes; per item for arrays; 0 = no limit */
    uint32_t max_items;                     /* PROTO_T_STR_ARRAY; 0 = no limit */
    int64_t imin, imax;                     /* integer range */
    double fmin, fmax;                      /* float range */
    const char *const *choices;             /* NULL-terminated allowed str values, or NULL */
    const struct proto_arg_spec *fields;    /* PROTO_T_MAP */
    size_t nfields;
} proto_arg_spec;

#define PROTO_MAX_ARGS 12

/* ---- typed arguments: one struct per op, filled from the table -------- */

typedef struct proto_str { const char *ptr; size_t len; } proto_str;      /* ptr NULL: absent */
typedef struct proto_bin { const uint8_t *ptr; size_t len; } proto_bin;   /* ptr NULL: absent */
typedef struct proto_strs { const proto_str *v; uint32_t n; } proto_strs;

enum proto_granularity { PROTO_GRAN_IMAGE = 0, PROTO_GRAN_REGION = 1, PROTO_GRAN_PIXEL = 2 }; /* choice index */
enum proto_refine { PROTO_REFINE_NONE = 0, PROTO_REFINE_PIXEL = 1 };

typedef struct proto_near { double lat, lon, km; } proto_near;
typedef struct proto_filters {
    proto_str path_prefix;
    proto_strs tags;
    bool has_min_score;
    double min_score;
    proto_str taken_after, taken_before; /* ISO 8601 text (parsed by the server) */
    proto_str camera;
    bool has_near;
    proto_near near;
} proto_filters;

typedef struct proto_hello_args { proto_str token, client; } proto_hello_args;
typedef struct proto_ingest_args {
    proto_str path;               /* alternative 1 */
    proto_bin data;               /* alternative 2, with name and mtime */
    proto_str name;
    bool has_mtime;
    int64_t mtime;
    proto_strs tags;
} proto_ingest_args;
typedef struct proto_query_args {
    proto_str text;
    int granularity;              /* enum proto_granularity */
    uint64_t k;                   /* PROTO_DEFAULT_K when absent */
    bool has_filters;
    proto_filters filters;
    int refine;                   /* enum proto_refine */
    uint64_t offset;              /* 0 when absent */
    uint64_t per_photo;           /* 0 when absent: the engine's default */
} proto_query_args;
typedef struct proto_query_image_args {
    bool has_image_id;            /* alternative 1 */
    uint64_t image_id;
    proto_bin data;               /* alternative 2 */
    bool has_box;
    double box[4];
    int granularity;
    uint64_t k;
    bool has_filters;
    proto_filters filters;
    uint64_t offset, per_photo;   /* as in proto_query_args */
} proto_query_image_args;
typedef struct proto_image_ref_args { /* get, delete, thumb */
    bool has_image_id;
    uint64_t image_id;
    proto_str path;
} proto_image_ref_args;
typedef struct proto_list_args {   /* folders that change */
    proto_str path_prefix;
    uint64_t after;               /* 0 when absent */
    uint64_t limit;               /* PROTO_MAX_LIST when absent */
} proto_list_args;
typedef struct proto_move_args {
    bool has_image_id;
    uint64_t image_id;
    proto_str path;
    bool has_mtime;
    int64_t mtime;
} proto_move_args;

typedef union proto_args {
    proto_hello_args hello;
    proto_ingest_args ingest;
    proto_query_args query;
    proto_query_image_args query_image;
    proto_image_ref_args get, del, thumb;
    proto_list_args list;
    proto_move_args move;
} proto_args;

typedef struct proto_op {
    const char *name;
    enum proto_op_code code;
    const proto_arg_spec *args;
    size_t nargs;               /* <= PROTO_MAX_ARGS */
    unsigned alts;              /* number of alternatives among args (0 = none) */
} proto_op;

/* The command table, PROTO_OP_COUNT entries indexed by enum proto_op_code:
 * constant data (the server binds its handlers to these entries in its own
 * constant table, server/server_ops.c). */
extern const proto_op proto_op_table[PROTO_OP_COUNT];
const proto_op *proto_ops(void); /* proto_op_table */
/* The op named name[0..len), or NULL. */
const proto_op *proto_op_find(const char *name, size_t len);

/* A decoded request.  Fields are read-only for users; args[i] is the value of
 * op->args[i] or NULL when absent.  Every msgpack_object here (and every
 * string it points to) lives as long as the request. */
typedef struct proto_request {
    uint64_t id;
    const proto_op *op;
    const msgpack_object *args[PROTO_MAX_ARGS];
    proto_args a;       /* the arguments typed, by op: a.query for "query", ... (strings
                           point into the frame, arrays into the zone) */
    msgpack_object root;
    msgpack_zone zone;
    uint8_t *frame;
    size_t frame_len;
    void *user;         /* free for the server's use; not touched here */
} proto_request;

/* Decode and validate one frame body.  Takes ownership of frame (malloc'd,
 * as proto_framer_feed returns it) in every case: on success the request frees
 * it in proto_request_free, on failure it is freed before returning.
 * NULL limits = defaults.  On failure returns the code (see above), *out is
 * NULL, *err_id is the request's id or 0, and umg_err_msg() says what is wrong. */
int proto_request_decode(uint8_t *frame, size_t len, const proto_limits *lim,
                         proto_request **out, uint64_t *err_id);
/* NULL-safe. */
void proto_request_free(proto_request *req);

/* The value of argument key, or NULL if absent or not an argument of the op. */
const msgpack_object *proto_req_arg(const proto_request *req, const char *key);

/* Getters on msgpack objects, NULL-safe: false when o is NULL or of another
 * type (after decoding, a present argument always has its spec's type).
 * Strings are NOT NUL-terminated; pointers live as long as the object. */
const msgpack_object *proto_map_get(const msgpack_object *map, const char *key);
bool proto_obj_str(const msgpack_object *o, const char **s, size_t *len);
bool proto_obj_bin(const msgpack_object *o, const uint8_t **p, size_t *len);
bool proto_obj_uint(const msgpack_object *o, uint64_t *v);
bool proto_obj_int(const msgpack_object *o, int64_t *v);
bool proto_obj_bool(const msgpack_object *o, bool *v);
bool proto_obj_float(const msgpack_object *o, double *v);   /* integers too */
bool proto_obj_box(const msgpack_object *o, double box[4]);
/* True if the str o equals the C string s. */
bool proto_obj_str_eq(const msgpack_object *o, const char *s);

/* Client side: start a request frame {"id": id, "op": op, + nargs pairs} in
 * sb (appended after what sb holds).  Then pack exactly nargs key/value pairs
 * with &w->pk and call proto_request_end, which checks the message (one
 * object, within default limits) and writes the length prefix.  On failure sb
 * is truncated back to where the frame began. */
int proto_request_begin(proto_writer *w, msgpack_sbuffer *sb, uint64_t id, const char *op, size_t nargs);
int proto_request_end(proto_writer *w, uint32_t max_frame);

/* Pack a C string as msgpack str. */
int proto_pack_cstr(msgpack_packer *pk, const char *s);

#endif
