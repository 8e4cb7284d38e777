/* http_json.h - the HTTP front end's translations (docs/http.md), with no
 * sockets: an HTTP request (op, JSON body or raw image) becomes the very
 * msgpack request frame the msgpack listener decodes and validates (one
 * validation, one dispatch: proto_request_decode), and a msgpack response
 * frame becomes the JSON answer and its HTTP status.  Pure functions, used by
 * server/http.c and the fuzz target.
 *
 * JSON -> msgpack: objects -> maps, arrays -> arrays, strings -> str,
 * integers -> int (uint when >= 0), reals -> float64, true/false -> bool,
 * null -> nil.  A string given for an argument the op's table types as bytes
 * (PROTO_T_BIN: ingest's and query_image's "data") is base64 (RFC 4648,
 * standard alphabet, padding optional) and becomes bin.
 * msgpack -> JSON: bin becomes a base64 string (no answer holds bytes today);
 * a str that is not UTF-8 gets '?' for each invalid byte; NaN/inf -> null. */
#ifndef UMG_HTTP_JSON_H
#define UMG_HTTP_JSON_H

#include <stddef.h>
#include <stdint.h>

#include <msgpack.h>

#define HTTP_JSON_MAX_DEPTH 16 /* nesting of a request body (the protocol's own limit is lower) */

/* Nesting depth of the JSON text buf[0..len) (brackets outside strings),
 * counted without parsing: 0 when depth <= max_depth, UMG_ETOOBIG (message
 * set) when deeper.  Run before jansson, whose recursive parser has no depth
 * option of its own (it stops at 2048 levels, a compile-time constant). */
int http_json_check_depth(const char *buf, size_t len, int max_depth);

/* The request frame body (msgpack map, no length prefix) for op `op` with id
 * `id` from the JSON object body[0..len), appended to out.  `token`, when not
 * NULL, is added as hello's "token" argument unless the body has one (HTTP
 * sends the token as Authorization: Bearer).  Errors (message set):
 * UMG_EUNKNOWNOP (no such op), UMG_ETOOBIG (too deep), UMG_EUTF8 (body not
 * UTF-8), UMG_EPROTO (not JSON), UMG_EINVAL (not an object, an "id" or "op"
 * key, bad base64), UMG_ENOMEM.  Arguments are not validated here: the frame
 * goes through proto_request_decode like any other. */
int http_json_to_request(const char *op, uint64_t id, const char *body, size_t len, const char *token,
                         msgpack_sbuffer *out);

/* The request frame body of an ingest of raw bytes: {"id", "op": "ingest",
 * "name", "data": bin, "tags"?}.  tags: n_tags strings (each tags[i] of
 * tag_lens[i] bytes). */
int http_ingest_request(uint64_t id, const char *name, size_t name_len, const char *const *tags,
                        const size_t *tag_lens, int n_tags, const uint8_t *data, size_t len, msgpack_sbuffer *out);

/* The JSON answer of a response frame body (no length prefix) frame[0..len):
 * {"ok":true,"result":...} or {"ok":false,"error":{"code","message"}}, as a
 * malloc'd NUL-terminated string in *json; *status gets the HTTP status
 * (http_status_of the error code, 200 on success), *code the UMG_E* code
 * (0 on success).  A frame that does not decode becomes an internal error
 * answer (status 500).  UMG_ENOMEM only. */
int http_response_json(const uint8_t *frame, size_t len, char **json, int *status, int *code);

/* The JSON error answer for code/message (malloc'd; NULL on no memory). */
char *http_error_json(int code, const char *message);

/* The HTTP status of a UMG_E* code (docs/http.md has the table). */
int http_status_of(int code);
/* The reason phrase of an HTTP status ("Not Found"). */
const char *http_reason(int status);

/* Decode base64 src[0..len) into a malloc'd buffer.  UMG_EINVAL on a byte
 * outside the alphabet or bad padding. */
int http_base64_decode(const char *src, size_t len, uint8_t **out, size_t *out_len);

#endif
