/* ingest_sync.c - see ingest_sync.h. */
#include "ingest_sync.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/evp.h>

#include "sync.h"
#include "umg_error.h"

int cli_sync_prefix(const char *dir, char **out)
{
    *out = NULL;
    struct stat st;
    if (stat(dir, &st) || !S_ISDIR(st.st_mode))
        return umg_err_set(UMG_EINVAL, "%s: not a directory (--sync and --watch follow folders)", dir);
    char *abs;
    int rc = cli_abs_path(dir, &abs);
    if (rc)
        return rc;
    size_t n = strlen(abs);
    char *p = malloc(n + 2);
    if (!p) {
        free(abs);
        return umg_err_set(UMG_ENOMEM, "out of memory");
    }
    memcpy(p, abs, n + 1);
    if (!n || p[n - 1] != '/')
        p[n] = '/', p[n + 1] = 0;
    free(abs);
    *out = p;
    return 0;
}

/* SHA-256 of a file, read in pieces (any size). */
static int hash_file(void *ud, const char *path, uint8_t out[32])
{
    size_t *hashed = ud;
    FILE *f = fopen(path, "rb");
    if (!f)
        return umg_err_set(UMG_EIO, "%s: %s", path, strerror(errno));
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int rc = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) ? 0 : umg_err_set(UMG_ENOMEM, "out of memory");
    unsigned char buf[1 << 16];
    size_t got;
    while (!rc && (got = fread(buf, 1, sizeof buf, f)) > 0)
        if (!EVP_DigestUpdate(ctx, buf, got))
            rc = umg_err_set(UMG_EINTERNAL, "sha256");
    if (!rc && ferror(f))
        rc = umg_err_set(UMG_EIO, "%s: read error", path);
    unsigned int len = 32;
    if (!rc && !EVP_DigestFinal_ex(ctx, out, &len))
        rc = umg_err_set(UMG_EINTERNAL, "sha256");
    EVP_MD_CTX_free(ctx);
    fclose(f);
    (*hashed)++;
    return rc;
}

/* Something is at path (a stored path the walk did not list): anything but
 * "no such file" counts, so that a file we cannot look at is never removed. */
static int path_exists(void *ud, const char *path)
{
    (void)ud;
    struct stat st;
    return lstat(path, &st) == 0 || (errno != ENOENT && errno != ENOTDIR);
}

static int add_failure(cli_sync_result *r, const char *path, const char *why)
{
    cli_walk_error *q = realloc(r->failures, (r->n_failures + 1) * sizeof *q);
    if (!q)
        return umg_err_set(UMG_ENOMEM, "out of memory");
    r->failures = q;
    q[r->n_failures].path = strdup(path);
    q[r->n_failures].reason = strdup(why);
    r->n_failures++;
    return 0;
}

void cli_sync_result_free(cli_sync_result *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n_failures; i++) {
        free(r->failures[i].path);
        free(r->failures[i].reason);
    }
    free(r->failures);
    memset(r, 0, sizeof *r);
}

static bool is_connection_error(int rc) { return rc == UMG_ECONN || rc == UMG_ETIMEOUT || rc == UMG_ENOMEM; }

/* delete by image id; a photo already gone counts as removed */
static int remove_image(umg_client *cl, int timeout_ms, uint64_t id)
{
    proto_writer w;
    uint64_t rid;
    int rc = umg_client_begin(cl, &w, "delete", 1, &rid);
    if (rc)
        return rc;
    int bad = proto_pack_cstr(&w.pk, "image_id") || msgpack_pack_uint64(&w.pk, id);
    if ((rc = umg_client_end(cl, &w)))
        return rc;
    if (bad)
        return umg_err_set(UMG_ENOMEM, "out of memory");
    proto_response *r;
    if ((rc = umg_client_wait(cl, rid, timeout_ms, &r)))
        return rc;
    if (!r->ok && r->code != UMG_ENOENT)
        rc = umg_err_set(r->code < 0 ? r->code : UMG_EINTERNAL, "%s", r->message);
    proto_response_free(r);
    return rc;
}

int cli_sync_apply(umg_client *cl, int timeout_ms, const char *const *roots, int n, const cli_walk *w,
                   unsigned char *send, cli_sync_result *out)
{
    memset(out, 0, sizeof *out);
    memset(send, CLI_SYNC_KEEP, w->n_files);
    umg_listed *listed = NULL;
    size_t n_listed = 0;
    eng_sync_file *files = calloc(w->n_files ? w->n_files : 1, sizeof *files);
    eng_sync_stored *stored = NULL;
    eng_sync_plan plan = {0};
    int rc = files ? 0 : umg_err_set(UMG_ENOMEM, "out of memory");
    /* what is stored under every folder (a folder inside another is listed once) */
    for (int i = 0; !rc && i < n; i++) {
        char *prefix;
        if ((rc = cli_sync_prefix(roots[i], &prefix)))
            break;
        bool nested = false;
        for (int j = 0; j < n && !nested; j++) {
            char *other;
            if (j != i && !cli_sync_prefix(roots[j], &other)) {
                size_t ol = strlen(other);
                nested = (!strncmp(prefix, other, ol) && (strlen(prefix) > ol || j < i));
                free(other);
            }
        }
        umg_listed *part = NULL;
        size_t n_part = 0, pages = 0;
        if (!nested)
            rc = umg_client_list_all(cl, prefix, timeout_ms, &part, &n_part, &pages);
        free(prefix);
        out->pages += pages;
        if (rc)
            break;
        umg_listed *q = n_part ? realloc(listed, (n_listed + n_part) * sizeof *q) : listed;
        if (n_part && !q) {
            umg_listed_free(part, n_part);
            rc = umg_err_set(UMG_ENOMEM, "out of memory");
            break;
        }
        listed = q;
        if (n_part)
            memcpy(listed + n_listed, part, n_part * sizeof *part);
        n_listed += n_part;
        free(part);
    }
    if (!rc && !(stored = calloc(n_listed ? n_listed : 1, sizeof *stored)))
        rc = umg_err_set(UMG_ENOMEM, "out of memory");
    if (rc)
        goto done;
    for (size_t i = 0; i < n_listed; i++) {
        stored[i] = (eng_sync_stored){.id = listed[i].image_id, .path = listed[i].path, .size = listed[i].bytes,
                                      .mtime = listed[i].mtime};
        memcpy(stored[i].sha256, listed[i].sha256, 32);
    }
    for (size_t f = 0; f < w->n_files; f++)
        files[f] = (eng_sync_file){.path = w->files[f].path, .size = w->files[f].size, .mtime = w->files[f].mtime};
    eng_sync_io io = {.hash = hash_file, .exists = path_exists, .ud = &out->hashed};
    if ((rc = eng_sync_plan_make(files, w->n_files, stored, n_listed, &io, &plan)))
        goto done;
    out->unchanged = plan.unchanged;
    for (size_t i = 0; i < plan.n && !rc; i++) {
        const eng_sync_step *st = &plan.steps[i];
        switch (st->action) {
        case ENG_SYNC_ADD: send[st->file] = CLI_SYNC_SEND_NEW; out->to_add++; break;
        case ENG_SYNC_CHANGE: send[st->file] = CLI_SYNC_SEND_CHANGED; out->to_change++; break;
        case ENG_SYNC_MOVE: {
            const cli_walk_file *f = &w->files[st->file];
            out->requests++;
            int r = umg_client_move(cl, stored[st->stored].id, f->path, f->mtime > 0 ? f->mtime : 0, timeout_ms,
                                    NULL);
            if (!r) {
                out->moved++;
            } else if (is_connection_error(r)) {
                rc = r;
            } else {   /* e.g. the image was deleted meanwhile: send the file instead */
                send[st->file] = CLI_SYNC_SEND_NEW;
                out->to_add++;
            }
            break;
        }
        case ENG_SYNC_REMOVE: {
            out->requests++;
            int r = remove_image(cl, timeout_ms, stored[st->stored].id);
            if (!r)
                out->removed++;
            else if (is_connection_error(r))
                rc = r;
            else
                rc = add_failure(out, stored[st->stored].path, umg_err_msg());
            break;
        }
        default: break;
        }
    }
done:
    eng_sync_plan_free(&plan);
    free(files);
    free(stored);
    umg_listed_free(listed, n_listed);
    return rc;
}
