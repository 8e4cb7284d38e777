/* sync.h - folders that change (umgdb ingest --sync / --watch): what is
 * stored under a folder, re-pathing a moved photo, and the plan that turns
 * "files on disk now" and "images stored under that folder" into the changes
 * to make (docs/server.md, "Sync and watch").
 *
 * The plan is pure logic over two lists, so that the client that walks the
 * disk (the CLI) and the tests run the same rules:
 *   - a stored path whose file is on disk with the same size and mtime:
 *     unchanged, nothing read;
 *   - size or mtime differ: the file is hashed; the same SHA-256 as stored:
 *     unchanged (touched); else changed (sent again; the server replaces it);
 *   - a path not stored: hashed; the content of a stored image under the
 *     folder whose file is gone: moved (re-pathed, not re-encoded); else
 *     added.  A changed path whose new content is that of a gone image is a
 *     move too (a rename over an older file);
 *   - a stored path with no file on disk: removed, unless the file still
 *     exists (exists() says so: a file the walk did not list, e.g. one that
 *     is not a photo any more or sits in an unreadable folder, is left
 *     alone); a gone image taken by a move is not removed.
 * Duplicates (two files with one content) stay two images, as ingest keeps
 * them; a gone image is matched to at most one new path (first in disk
 * order). */
#ifndef UMG_ENGINE_SYNC_H
#define UMG_ENGINE_SYNC_H

#include <stddef.h>
#include <stdint.h>

#include "engine.h"

/* ---- the server side: listing and re-pathing ------------------------------ */

/* Most records eng_list_prefix looks at per call (a page's cost bound). */
#define ENG_LIST_MAX_SCAN 4096

/* Images whose stored path starts with prefix, in id order after `after`:
 * up to max (1..) into out (db_image_free each), *next the id to pass as
 * `after` for the next page, 0 when there is none (db_list_path_prefix). */
int eng_list_prefix(eng *e, const char *prefix, uint64_t after, int max, db_image *out, int *n,
                    uint64_t *next);
/* Re-path a stored image (db_move_image): its vectors and regions stay;
 * mtime != 0 sets its mtime; an image at path is replaced (*replaced its id
 * or 0).  UMG_ENOENT when image_id is not stored. */
int eng_move(eng *e, uint64_t image_id, const char *path, int64_t mtime, uint64_t *replaced);

/* ---- the plan ---------------------------------------------------------------- */

typedef struct eng_sync_file {       /* a photo on disk under the folder */
    const char *path;                /* the name it is (or would be) stored under */
    uint64_t size;
    int64_t mtime;
} eng_sync_file;

typedef struct eng_sync_stored {     /* an image stored under the folder */
    uint64_t id;
    const char *path;
    uint8_t sha256[32];
    uint64_t size;
    int64_t mtime;
} eng_sync_stored;

enum eng_sync_action {
    ENG_SYNC_UNCHANGED = 0,  /* file f: nothing to do */
    ENG_SYNC_ADD,            /* file f: send it (new path) */
    ENG_SYNC_CHANGE,         /* file f: send it (its stored content differs) */
    ENG_SYNC_MOVE,           /* stored s re-pathed to file f's path (replacing what is stored there) */
    ENG_SYNC_REMOVE,         /* stored s: delete (its file is gone) */
};

typedef struct eng_sync_step {
    int action;              /* enum eng_sync_action */
    long file;               /* index into files, or -1 (REMOVE) */
    long stored;             /* index into stored, or -1 (ADD, UNCHANGED of a new path never) */
} eng_sync_step;

typedef struct eng_sync_io {
    /* SHA-256 of the file at path: 0, or an error (the file is then sent,
     * and its reading fails where it is sent) */
    int (*hash)(void *ud, const char *path, uint8_t out[32]);
    /* 1 when something still exists at path (a stored path the walk did not list) */
    int (*exists)(void *ud, const char *path);
    void *ud;
} eng_sync_io;

typedef struct eng_sync_plan {
    eng_sync_step *steps;    /* malloc'd: one per file, then one per removed image */
    size_t n;
    size_t hashed;           /* files read to hash them */
    size_t added, changed, moved, removed, unchanged;
} eng_sync_plan;

/* Plan the changes (rules above).  Paths are compared as bytes.  *out is
 * the caller's (eng_sync_plan_free).  UMG_ENOMEM only. */
int eng_sync_plan_make(const eng_sync_file *files, size_t n_files, const eng_sync_stored *stored,
                       size_t n_stored, const eng_sync_io *io, eng_sync_plan *out);
void eng_sync_plan_free(eng_sync_plan *p); /* NULL-safe; leaves it empty */

#endif
