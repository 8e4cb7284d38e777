/* http.h - the HTTP/1.1 listener's connections (docs/http.md): requests
 * parsed with http_parser (Debian's libhttp-parser-dev), translated by
 * http_json.h into the msgpack request frames the msgpack listener decodes,
 * and answered as JSON.  Connections are the server's srv_conn (same caps,
 * same backpressure, same connection cap and job lifecycle); server.c calls
 * the hooks below where its connection code differs by protocol.  Loop
 * thread only. */
#ifndef UMG_SERVER_HTTP_H
#define UMG_SERVER_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "server_internal.h"

#define HTTP_MAX_HEADER_BYTES 16384 /* request line + headers, before anything is buffered */
#define HTTP_MAX_HEADERS 64
#define HTTP_DEFAULT_HEADER_TIMEOUT_S 10  /* first byte of a request -> end of its headers */
#define HTTP_DEFAULT_BODY_TIMEOUT_S 120   /* end of the headers -> end of the body */
#define HTTP_DEFAULT_KEEPALIVE_S 60       /* between requests */

typedef struct srv_http srv_http;

/* Make c (accepted on the HTTP listener) an HTTP connection and start its
 * deadline timer (c->idle, with the HTTP deadlines).  Negative on no memory. */
int srv_http_attach(srv_conn *c);
/* NULL-safe; called when the connection is freed. */
void srv_http_free(srv_http *h);
/* Parse bytes p[0..len) up to the end of the next request, answering it or
 * handing it to the server as a request frame; returns the bytes used.
 * Errors are answered here (the connection closed after the answer when
 * the stream cannot go on). */
size_t srv_http_feed(srv_conn *c, const uint8_t *p, size_t len);
/* The JSON error answer for code (the HTTP side of conn_send_error). */
void srv_http_send_error(srv_conn *c, int code, const char *msg);
/* Send job's answer (job->resp, a msgpack response frame, or raw bytes when
 * job->raw_type is set) as the HTTP answer of the request in flight. */
void srv_http_answer(srv_conn *c, srv_job *job);

#endif
