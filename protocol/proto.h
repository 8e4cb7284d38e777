/* proto.h - the umgdb wire protocol (docs/protocol.md): framing, pre-decode
 * checks, requests and responses. */
#ifndef PROTO_H
#define PROTO_H

#include "proto_check.h"
#include "proto_frame.h"
#include "proto_hits.h"
#include "proto_request.h"
#include "proto_response.h"

#endif
