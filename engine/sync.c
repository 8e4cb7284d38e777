/* sync.c - folders that change (sync.h): listing under a prefix, re-pathing,
 * and the plan of an ingest --sync pass. */
#include "sync.h"

#include <stdlib.h>
#include <string.h>

#include "engine_internal.h"
#include "umg_error.h"

int eng_list_prefix(eng *e, const char *prefix, uint64_t after, int max, db_image *out, int *n, uint64_t *next)
{
    return db_list_path_prefix(e->db, prefix, after, max, ENG_LIST_MAX_SCAN, out, n, next);
}

int eng_move(eng *e, uint64_t image_id, const char *path, int64_t mtime, uint64_t *replaced)
{
    int rc = db_move_image(e->db, image_id, path, mtime, replaced);
    if (rc == UMG_ENOENT) rc = umg_err_set(UMG_ENOENT, "no image %llu", (unsigned long long)image_id);
    return rc;
}

/* ---- the plan ---------------------------------------------------------------- */

/* qsort has no context argument: the arrays the indexes point into are
 * passed through these (thread-local: plans may be made on several threads). */
static _Thread_local const eng_sync_file *sort_files;
static _Thread_local const eng_sync_stored *sort_stored;

static int cmp_file_idx(const void *a, const void *b)
{
    return strcmp(sort_files[*(const size_t *)a].path, sort_files[*(const size_t *)b].path);
}
static int cmp_stored_idx(const void *a, const void *b)
{
    return strcmp(sort_stored[*(const size_t *)a].path, sort_stored[*(const size_t *)b].path);
}
static int cmp_stored_sha(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    int c = memcmp(sort_stored[x].sha256, sort_stored[y].sha256, 32);
    return c ? c : (x > y) - (x < y);   /* stable: the first stored comes first */
}

/* Index (into the array) of the element with this path in a sorted index, or -1. */
static long find_path(const size_t *idx, size_t n, const char *path, int stored)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const char *p = stored ? sort_stored[idx[mid]].path : sort_files[idx[mid]].path;
        int c = strcmp(p, path);
        if (!c) return (long)idx[mid];
        if (c < 0) lo = mid + 1;
        else hi = mid;
    }
    return -1;
}

/* A gone, not yet taken stored image with this content, or -1 (taken then). */
static long take_gone(const size_t *by_sha, size_t n, const uint8_t sha[32], const char *gone, char *taken)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {   /* the first entry >= sha */
        size_t mid = lo + (hi - lo) / 2;
        if (memcmp(sort_stored[by_sha[mid]].sha256, sha, 32) < 0) lo = mid + 1;
        else hi = mid;
    }
    for (size_t i = lo; i < n && !memcmp(sort_stored[by_sha[i]].sha256, sha, 32); i++) {
        size_t s = by_sha[i];
        if (gone[s] && !taken[s]) {
            taken[s] = 1;
            return (long)s;
        }
    }
    return -1;
}

void eng_sync_plan_free(eng_sync_plan *p)
{
    if (!p) return;
    free(p->steps);
    memset(p, 0, sizeof *p);
}

int eng_sync_plan_make(const eng_sync_file *files, size_t n_files, const eng_sync_stored *stored,
                       size_t n_stored, const eng_sync_io *io, eng_sync_plan *out)
{
    memset(out, 0, sizeof *out);
    size_t *fidx = malloc((n_files ? n_files : 1) * sizeof *fidx);
    size_t *sidx = malloc((n_stored ? n_stored : 1) * sizeof *sidx);
    size_t *by_sha = malloc((n_stored ? n_stored : 1) * sizeof *by_sha);
    char *gone = calloc(n_stored ? n_stored : 1, 1), *taken = calloc(n_stored ? n_stored : 1, 1);
    out->steps = malloc((n_files + n_stored + 1) * sizeof *out->steps);
    int rc = 0;
    if (!fidx || !sidx || !by_sha || !gone || !taken || !out->steps) {
        rc = umg_err_set(UMG_ENOMEM, "out of memory");
        goto done;
    }
    sort_files = files;
    sort_stored = stored;
    for (size_t i = 0; i < n_files; i++) fidx[i] = i;
    for (size_t i = 0; i < n_stored; i++) sidx[i] = by_sha[i] = i;
    qsort(fidx, n_files, sizeof *fidx, cmp_file_idx);
    qsort(sidx, n_stored, sizeof *sidx, cmp_stored_idx);
    qsort(by_sha, n_stored, sizeof *by_sha, cmp_stored_sha);

    /* gone: stored, not on the disk list, and nothing exists at its path */
    for (size_t s = 0; s < n_stored; s++)
        gone[s] = find_path(fidx, n_files, stored[s].path, 0) < 0 && !io->exists(io->ud, stored[s].path);

    for (size_t f = 0; f < n_files; f++) {
        const eng_sync_file *d = &files[f];
        long s = find_path(sidx, n_stored, d->path, 1);
        eng_sync_step st = {.action = ENG_SYNC_ADD, .file = (long)f, .stored = s};
        if (s >= 0 && stored[s].size == d->size && stored[s].mtime == d->mtime) {
            st.action = ENG_SYNC_UNCHANGED;
        } else {
            uint8_t sha[32];
            out->hashed++;
            int hashed = io->hash(io->ud, d->path, sha) == 0;
            long g = -1;
            if (hashed && s >= 0 && !memcmp(sha, stored[s].sha256, 32)) st.action = ENG_SYNC_UNCHANGED;
            else if (hashed && (g = take_gone(by_sha, n_stored, sha, gone, taken)) >= 0)
                st = (eng_sync_step){.action = ENG_SYNC_MOVE, .file = (long)f, .stored = g};
            else st.action = s >= 0 ? ENG_SYNC_CHANGE : ENG_SYNC_ADD;
        }
        out->steps[out->n++] = st;
    }
    for (size_t s = 0; s < n_stored; s++)
        if (gone[s] && !taken[s]) out->steps[out->n++] = (eng_sync_step){.action = ENG_SYNC_REMOVE, .file = -1,
                                                                          .stored = (long)s};
    for (size_t i = 0; i < out->n; i++) switch (out->steps[i].action) {
        case ENG_SYNC_UNCHANGED: out->unchanged++; break;
        case ENG_SYNC_ADD: out->added++; break;
        case ENG_SYNC_CHANGE: out->changed++; break;
        case ENG_SYNC_MOVE: out->moved++; break;
        case ENG_SYNC_REMOVE: out->removed++; break;
        }
done:
    free(fidx);
    free(sidx);
    free(by_sha);
    free(gone);
    free(taken);
    if (rc) eng_sync_plan_free(out);
    return rc;
}
