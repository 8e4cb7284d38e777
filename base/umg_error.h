/* umg_error.h - the one table of umgdb error codes.
 *
 * Every module returns int: 0 on success, a negative UMG_E* code on failure.
 * Each code has a stable wire name (sent as "code" in protocol error frames)
 * and a human description.  It lives in base/, below every other library,
 * because every module returns these codes, not only the protocol.
 *
 * Details ("tensor text_model.final_layer_norm.weight missing") go into a
 * thread-local message set with umg_err_set() at the point of failure; callers
 * read it with umg_err_msg() right after the failing call.  Foreign codes (MDB,
 * errno, FAISS, UV) are translated at module boundaries with the helpers below,
 * which also copy the foreign message at once (FAISS's last-error text is
 * overwritten by the next FAISS call). */
#ifndef UMG_ERROR_H
#define UMG_ERROR_H

#include <stddef.h>

/* X(name, value, wire_name, description) */
#define UMG_ERROR_TABLE(X)                                                        \
    X(UMG_OK,           0, "ok",                "success")                       \
    X(UMG_EINVAL,      -1, "invalid_argument",  "invalid argument")              \
    X(UMG_ENOMEM,      -2, "out_of_memory",     "out of memory")                 \
    X(UMG_EIO,         -3, "io_error",          "input/output error")            \
    X(UMG_ENOENT,      -4, "not_found",         "not found")                     \
    X(UMG_EFORMAT,     -5, "bad_format",        "malformed or corrupt data")     \
    X(UMG_ETOOBIG,     -6, "too_large",         "input exceeds a limit")         \
    X(UMG_EUNSUPPORTED,-7, "unsupported",       "unsupported format or feature") \
    X(UMG_EMODEL,      -8, "model_mismatch",    "data built with another model") \
    X(UMG_EINDEX,      -9, "index_error",       "vector index error")            \
    X(UMG_EDB,        -10, "db_error",          "database error")                \
    X(UMG_EEXIST,     -11, "exists",            "already exists")                \
    X(UMG_EUTF8,      -12, "invalid_utf8",      "invalid UTF-8 text")            \
    X(UMG_EPROTO,     -13, "protocol_error",    "protocol violation")            \
    X(UMG_EAUTH,      -14, "unauthorized",      "authentication required")       \
    X(UMG_EPERM,      -15, "forbidden",         "operation not permitted")       \
    X(UMG_ENOSPC,     -16, "no_space",          "no space left on device")       \
    X(UMG_EBUSY,      -17, "busy",              "resource busy")                 \
    X(UMG_ESHUTDOWN,  -18, "shutting_down",     "server is shutting down")       \
    X(UMG_ETIMEOUT,   -19, "timeout",           "timed out")                     \
    X(UMG_ECONN,      -20, "connection_error",  "connection failed")             \
    X(UMG_EUNKNOWNOP, -21, "unknown_op",        "unknown operation")             \
    X(UMG_EINTERNAL,  -22, "internal",          "internal error")

enum umg_error {
#define UMG_X_ENUM(name, value, wire, desc) name = value,
    UMG_ERROR_TABLE(UMG_X_ENUM)
#undef UMG_X_ENUM
};

/* Description of a code ("invalid argument"); static string, never NULL. */
const char *umg_strerror(int code);
/* Stable wire name of a code ("invalid_argument"); static string, never NULL. */
const char *umg_error_name(int code);

/* Record a detail message for the current thread and return code, so that
 *   return umg_err_set(UMG_EFORMAT, "%s: header length %llu", path, n);
 * both reports and returns.  The message is truncated to 512 bytes. */
int umg_err_set(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The last detail message of this thread ("" if none).  Valid until the next
 * umg_err_set on this thread; copy it if you need it longer. */
const char *umg_err_msg(void);
/* Clear the detail message of this thread. */
void umg_err_clear(void);

/* Translate errno values to UMG codes (ENOENT->UMG_ENOENT, ENOSPC->UMG_ENOSPC,
 * EACCES/EPERM/EROFS->UMG_EPERM, ENOMEM->UMG_ENOMEM, others->UMG_EIO). */
int umg_err_from_errno(int err);

#endif
