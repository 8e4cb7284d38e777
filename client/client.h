/* client.h - a small blocking client for `umgdb serve` (docs/protocol.md).
 *
 * One umg_client is one connection, used by one thread at a time.  Requests
 * are built straight into the client's send buffer with the protocol's
 * request builder, so any number can be queued and sent at once (pipelining);
 * responses are received in arrival order or picked by id (the others are kept
 * until asked for).
 *
 *   umg_client *c;
 *   umg_client_connect("127.0.0.1:7431", NULL, &c);      // or "unix:/run/umgdb.sock"
 *   proto_writer w; uint64_t id;
 *   umg_client_begin(c, &w, "query", 2, &id);            // 2 argument pairs follow
 *   proto_pack_cstr(&w.pk, "text"); proto_pack_cstr(&w.pk, "a red car");
 *   proto_pack_cstr(&w.pk, "k");    msgpack_pack_uint32(&w.pk, 5);
 *   umg_client_end(c, &w);                               // queued, not sent yet
 *   proto_response *r;
 *   umg_client_wait(c, id, 10000, &r);                   // sends what is queued, waits for id
 *   if (r->ok) ... r->result ...; else ... r->code, r->message ...;
 *   proto_response_free(r);
 *   umg_client_close(c);
 *
 * Deadlock freedom: while sending, the client also reads and keeps whatever
 * responses arrive, so a server that stops reading until its responses are
 * consumed (backpressure) never blocks a pipelining client forever.
 *
 * Errors (negative UMG_E* codes, detail in umg_err_msg()):
 *   UMG_EINVAL   bad address or arguments
 *   UMG_ECONN    cannot connect, connection closed or reset, or a malformed
 *                frame from the server; the connection is then broken for
 *                good: every later call fails with UMG_ECONN again
 *                (responses received before the break can still be taken)
 *   UMG_ETIMEOUT no progress within the timeout (the connection stays usable)
 *   UMG_ENOMEM
 * An error *response* (ok == false) is not an error of these calls: they
 * return 0 and hand out the response. */
#ifndef UMG_CLIENT_H
#define UMG_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "proto.h"

typedef struct umg_client umg_client;

typedef struct umg_client_opts {
    int connect_timeout_ms;   /* 0 = 5000; < 0 = no limit */
    uint32_t max_frame;       /* largest response body accepted; 0 = PROTO_DEFAULT_MAX_FRAME */
} umg_client_opts;

/* Connect to addr:
 *   "HOST:PORT"   TCP; HOST a name, an IPv4 address or "[IPv6]"
 *   "PORT"        TCP to 127.0.0.1
 *   "unix:PATH"   a Unix domain socket
 * NULL addr = UMG_DEFAULT_ADDR.  opts may be NULL.  *out owned by the caller
 * (umg_client_close).  SIGPIPE is never raised by this client. */
int umg_client_connect(const char *addr, const umg_client_opts *opts, umg_client **out);
/* Close the socket and free every kept response; NULL-safe. */
void umg_client_close(umg_client *c);

/* Start a request with a fresh id (numbered from 1) appended to the send
 * buffer: then pack exactly nargs key/value pairs with &w->pk and call
 * umg_client_end.  *id (may be NULL) gets the request's id. */
int umg_client_begin(umg_client *c, proto_writer *w, const char *op, size_t nargs, uint64_t *id);
/* Finish the request begun on w (checks it, writes its length).  On failure
 * the partial request is removed from the send buffer. */
int umg_client_end(umg_client *c, proto_writer *w);

/* Queue raw bytes as they are (tests: malformed frames, split writes). */
int umg_client_send_raw(umg_client *c, const void *data, size_t len);

/* Send everything queued.  timeout_ms: < 0 waits as long as it takes; the
 * timeout applies to the whole call. */
int umg_client_flush(umg_client *c, int timeout_ms);

/* Bytes queued and not yet sent. */
size_t umg_client_pending(const umg_client *c);

/* Next response in arrival order (first any kept ones), after sending what
 * is queued.  *out owned by the caller (proto_response_free). */
int umg_client_recv(umg_client *c, int timeout_ms, proto_response **out);
/* The response to request id, after sending what is queued; responses to
 * other ids that arrive meanwhile are kept for later recv/wait calls.
 * Also returns a response with id 0 (errors whose id could not be read) if it
 * arrives while waiting, since it may be the answer to id. */
int umg_client_wait(umg_client *c, uint64_t id, int timeout_ms, proto_response **out);

/* Convenience: a request with no arguments (e.g. "ping", "stats"), sent and
 * waited for. */
int umg_client_call0(umg_client *c, const char *op, int timeout_ms, proto_response **out);
/* Convenience: "hello" with token (may be NULL) and client name (may be NULL),
 * waited for.  Returns the server's error code if it answered ok == false
 * (then *out, if out is not NULL, still gets the response). */
int umg_client_hello(umg_client *c, const char *token, const char *client_name, int timeout_ms,
                     proto_response **out);

/* Folders that change (docs/protocol.md, "list" and "move").  These two
 * return the server's error code (with its message in umg_err_msg()) when it
 * answers ok == false, besides the client errors above. */
typedef struct umg_listed {
    uint64_t image_id;
    char *path;
    uint8_t sha256[32];
    uint64_t bytes;
    int64_t mtime;
} umg_listed;
/* Every image stored under path prefix, page after page ("list").  *out
 * malloc'd (umg_listed_free), *n entries; *pages (may be NULL) the requests
 * it took. */
int umg_client_list_all(umg_client *c, const char *prefix, int timeout_ms, umg_listed **out, size_t *n,
                        size_t *pages);
void umg_listed_free(umg_listed *v, size_t n); /* NULL-safe */
/* Re-path stored image_id to path ("move"); mtime 0 keeps its mtime;
 * *replaced (may be NULL) the id of the image that was at path, or 0. */
int umg_client_move(umg_client *c, uint64_t image_id, const char *path, int64_t mtime, int timeout_ms,
                    uint64_t *replaced);

/* The socket, e.g. to poll() several clients; do not read or write it. */
int umg_client_fd(const umg_client *c);
/* True once the connection is broken (closed by the peer, reset, ...). */
int umg_client_broken(const umg_client *c);

/* Helpers to read a result map (NULL-safe, false/NULL when absent or of
 * another type).  Strings are returned as pointer+length into the response. */
const msgpack_object *umg_result_get(const proto_response *r, const char *key);
int umg_result_uint(const proto_response *r, const char *key, uint64_t *v);

#endif
