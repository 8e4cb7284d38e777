/* ingest_sync.h - the folder side of `umgdb ingest --sync` and --watch:
 * compare the photos on disk under each folder with what the server stores
 * under it (the "list" op), plan with the engine's rules (engine/sync.h),
 * make the changes that need no upload (moves: "move", removals: "delete")
 * and say which files are to be sent (added or changed). */
#ifndef UMG_CLI_INGEST_SYNC_H
#define UMG_CLI_INGEST_SYNC_H

#include <stddef.h>

#include "cli_util.h"
#include "client.h"

enum cli_sync_send { CLI_SYNC_KEEP = 0, CLI_SYNC_SEND_NEW = 1, CLI_SYNC_SEND_CHANGED = 2 };

typedef struct cli_sync_result {
    size_t pages;             /* list requests */
    size_t requests;          /* move and delete requests */
    size_t hashed;            /* files read to hash them */
    size_t unchanged, moved, removed;
    size_t to_add, to_change; /* files to send (the caller sends them) */
    cli_walk_error *failures; /* moves/removals that failed: path and why (heap strings) */
    size_t n_failures;
} cli_sync_result;

/* The stored name of a folder as a listing prefix: its absolute resolved
 * path ending in '/'.  *out malloc'd.  UMG_EINVAL (message) when it is not a
 * directory. */
int cli_sync_prefix(const char *dir, char **out);

/* Plan and apply for the folders roots[0..n) (each a directory) whose walk
 * is w.  send (w->n_files entries) gets each file's enum cli_sync_send.  A
 * move the server refuses (the image went meanwhile) is sent instead.
 * Returns 0, or a client error (the connection: UMG_ECONN, UMG_ETIMEOUT) or
 * an error the server answered the listing with; out is filled in either way
 * (cli_sync_result_free). */
int cli_sync_apply(umg_client *cl, int timeout_ms, const char *const *roots, int n, const cli_walk *w,
                   unsigned char *send, cli_sync_result *out);
void cli_sync_result_free(cli_sync_result *r); /* NULL-safe */

#endif
