/* proto.h - the umgdb wire protocol (docs/protocol.md): framing, pre-decode
 * checks, requests and responses. */
#ifndef PROTO_H
#define PROTO_H

#include "proto_check.h"
#include "proto_frame.h"
#include "proto_hits.h"
#include "proto_request.h"
#include "proto_response.h"

/* The server's default TCP address (umgdb serve --listen; clients connect to
 * it when given no address). */
#define UMG_DEFAULT_PORT 7431
#define UMG_DEFAULT_ADDR "127.0.0.1:7431"

#endif
