/* ingest_watch.h - the folder events of `umgdb ingest --watch` (Linux
 * inotify: one watch per directory, since inotify, like libuv's fs events
 * on Linux, is not recursive).  The watcher only says "something changed";
 * what changed is found by the next sync pass (ingest_sync.h), so that a
 * lost or overflowed event costs nothing but a pass. */
#ifndef UMG_CLI_INGEST_WATCH_H
#define UMG_CLI_INGEST_WATCH_H

typedef struct cli_watcher cli_watcher;

/* Watch the folders roots[0..n) and every folder below them (names starting
 * with '.' are not followed, as the walk does).  *out the caller's
 * (cli_watcher_close).  UMG_EIO (message) when inotify is unavailable. */
int cli_watcher_open(const char *const *roots, int n, cli_watcher **out);
/* Add watches for folders created since (call before each pass: a folder
 * made and filled before its watch existed is found by that pass). */
int cli_watcher_rescan(cli_watcher *w);
/* Wait up to timeout_ms for events: the number read (0: none), or an error. */
int cli_watcher_wait(cli_watcher *w, int timeout_ms);
void cli_watcher_close(cli_watcher *w); /* NULL-safe */

#endif
