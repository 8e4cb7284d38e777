/* server_ops.c - what each operation does, as translations: the handlers
 * registered in the protocol's command table (called on the loop thread)
 * decode a request's arguments into the engine's structs (engine/), run the
 * engine on the threadpool, the stage-1 workers or the encoder thread, and
 * encode its results as the response. */
#include "server_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <linux/openat2.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "sync.h"
#include "umg_error.h"

_Static_assert((int)SRV_REGION_MODE_DENSE == (int)ENG_REGION_MODE_DENSE && (int)SRV_REGION_MODE_CROP == (int)ENG_REGION_MODE_CROP,
               "the server's region modes are the engine's");


/* ---- small helpers -------------------------------------------------------- */

static int pack_key(msgpack_packer *pk, const char *k) { return proto_pack_cstr(pk, k); }

static void pack_strn(msgpack_packer *pk, const char *s, size_t n)
{
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

/* End a success response begun with proto_response_begin; keeps the status
 * in step when the builder had to replace it by an error. */
static void job_response_end(srv_job *job, proto_writer *w)
{
    int rc = proto_response_end(w, job->s->limits.max_frame);
    if (rc) {
        job->status = rc;
        snprintf(job->errmsg, sizeof job->errmsg, "%s", umg_err_msg());
    }
}

static void sha256(const void *data, size_t len, uint8_t out[32])
{
    unsigned int n = 32;
    EVP_Digest(data, len, out, &n, EVP_sha256(), NULL);
}


/* ---- init ------------------------------------------------------------------ */

int srv_ops_init(srv *s)
{
    s->dim = enc_model_dim(s->model);
    eng_config ec = {.region_mode = s->region_mode,
                     .regions = s->cfg.regions,
                     .batch = s->cfg.batch,
                     .threads = s->cfg.threads,
                     .no_patches = s->cfg.no_patches,
                     .text_lanes = srv_text_lanes(&s->cfg),
                     .text_batch_wait_us = s->cfg.text_batch_wait_us,
                     .test_text_pass_ms = s->cfg.test_text_pass_ms,
                     .query_cache = s->cfg.query_cache,
                     .decode = s->cfg.decode_fast ? ENG_DECODE_FAST : ENG_DECODE_EXACT,
                     .queue_memory = s->cfg.ingest_memory,
                     .test_store_batch_ms = s->cfg.test_store_ms};
    int rc = eng_create(s->model, s->db, &ec, &s->eng);
    if (rc) return rc;
    srv_log(s, SRV_LOG_INFO, "ingest: --decode %s, --ingest-memory %llu bytes for prepared photos, %d decoding at once",
            ec.decode == ENG_DECODE_FAST ? "fast" : "exact", (unsigned long long)ec.queue_memory, s->cfg.threads);
    if (ec.test_store_batch_ms > 0)
        srv_log(s, SRV_LOG_WARN, "--test-store-ms: every ingest batch waits %d ms first (a test hook)",
                ec.test_store_batch_ms);
    if (ec.test_text_pass_ms > 0)
        srv_log(s, SRV_LOG_WARN, "--test-text-pass-ms: every text pass lasts at least %d ms (a test hook)",
                ec.test_text_pass_ms);

    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 9);
    pack_key(&pk, "protocol"), msgpack_pack_uint32(&pk, PROTO_VERSION);
    pack_key(&pk, "server"), proto_pack_cstr(&pk, UMG_VERSION);
    pack_key(&pk, "model"), proto_pack_cstr(&pk, enc_model_name(s->model));
    pack_key(&pk, "dim"), msgpack_pack_int32(&pk, s->dim);
    pack_key(&pk, "grid"), msgpack_pack_int32(&pk, eng_grid(s->eng));
    pack_key(&pk, "region_mode"), proto_pack_cstr(&pk, srv_region_mode_name(s->region_mode));
    pack_key(&pk, "precision"), proto_pack_cstr(&pk, enc_precision_name(enc_model_precision(s->model)));
    pack_key(&pk, "kernels"), proto_pack_cstr(&pk, enc_model_kernels(s->model));
    pack_key(&pk, "auth_required"), (s->cfg.token || s->cfg.require_auth) ? msgpack_pack_true(&pk) : msgpack_pack_false(&pk);
    s->hello_len = sb.size;
    s->hello_result = msgpack_sbuffer_release(&sb);
    if (!s->hello_result) return umg_err_set(UMG_ENOMEM, "out of memory");
    return 0;
}

void srv_ops_fini(srv *s)
{
    eng_close(s->eng);
    s->eng = NULL;
    free(s->hello_result);
}


/* ---- hello / ping / stats (loop thread, no blocking work) ----------------- */

static void answer_hello(srv_job *job)
{
    proto_writer w;
    if (proto_response_begin(&w, &job->resp, job->id) == 0) {
        msgpack_sbuffer_write(&job->resp, job->s->hello_result, job->s->hello_len);
        job_response_end(job, &w);
    } else {
        srv_job_error(job, UMG_ENOMEM, "out of memory");
    }
}

/* Token check in constant time (over digests, so lengths leak nothing either). */
int srv_token_ok(const srv *s, const char *got, size_t got_len)
{
    const char *want = s->cfg.token;
    if (!want) return 0;
    uint8_t a[32], b[32];
    sha256(want, strlen(want), a);
    sha256(got, got_len, b);
    return CRYPTO_memcmp(a, b, 32) == 0;
}

static int h_hello(void *ctx, proto_request *req)
{
    srv_job *job = ctx;
    srv_conn *c = job->conn;
    srv *s = job->s;
    if (s->cfg.token || s->cfg.require_auth) {
        const char *tok;
        size_t tl;
        if (!proto_obj_str(proto_req_arg(req, "token"), &tok, &tl) || !srv_token_ok(s, tok, tl)) {
            /* a wrong token ends the connection: no guessing on one socket */
            c->close_after_writes = 1;
            uv_read_stop(&c->h.stream);
            c->reading = 0;
            return umg_err_set(UMG_EAUTH, "hello: missing or wrong token");
        }
        c->authed = 1;
    }
    answer_hello(job);
    return 1;
}

static int h_ping(void *ctx, proto_request *req)
{
    answer_hello(ctx);
    return 1;
}

static uint64_t rss_bytes(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long long size = 0, rss = 0;
    if (f) {
        if (fscanf(f, "%llu %llu", &size, &rss) != 2) rss = 0;
        fclose(f);
    }
    return rss * (uint64_t)sysconf(_SC_PAGESIZE);
}

static int h_stats(void *ctx, proto_request *req)
{
    srv_job *job = ctx;
    srv *s = job->s;
    db_stats st;
    int rc = db_stats_get(s->db, &st);
    if (rc) return rc;
    pthread_mutex_lock(&s->q_mu);
    int qlen = s->q_len;
    pthread_mutex_unlock(&s->q_mu);
    eng_stats es;
    eng_stats_get(s->eng, &es);
    proto_writer w;
    if (proto_response_begin(&w, &job->resp, job->id)) return UMG_ENOMEM;
    msgpack_packer *pk = &w.pk;
    msgpack_pack_map(pk, 19); /* the top-level keys below: keep in step */
    pack_key(pk, "images"), msgpack_pack_uint64(pk, st.images);
    /* whether the indexes agree with LMDB (db_stats): a mismatch is shown, not hidden */
    pack_key(pk, "index_consistent"), st.consistent ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    pack_key(pk, "index_mismatch"), proto_pack_cstr(pk, st.mismatch);
    pack_key(pk, "regions"), msgpack_pack_uint64(pk, st.regions);
    pack_key(pk, "index");
    msgpack_pack_map(pk, 2);
    pack_key(pk, "image");
    msgpack_pack_map(pk, 2);
    pack_key(pk, "type"), proto_pack_cstr(pk, st.image_factory);
    pack_key(pk, "vectors"), msgpack_pack_uint64(pk, st.index_images);
    pack_key(pk, "region");
    msgpack_pack_map(pk, 2);
    pack_key(pk, "type"), proto_pack_cstr(pk, st.region_factory);
    pack_key(pk, "vectors"), msgpack_pack_uint64(pk, st.index_regions);
    pack_key(pk, "memory_bytes"), msgpack_pack_uint64(pk, rss_bytes());
    pack_key(pk, "db_map_bytes"), msgpack_pack_uint64(pk, st.map_size);
    pack_key(pk, "db_used_bytes"), msgpack_pack_uint64(pk, st.map_used);
    pack_key(pk, "uptime_s"), msgpack_pack_double(pk, (double)(srv_now_ns() - s->t_start_ns) / 1e9);
    pack_key(pk, "model"), proto_pack_cstr(pk, enc_model_name(s->model));
    pack_key(pk, "dim"), msgpack_pack_int32(pk, s->dim);
    pack_key(pk, "region_mode"), proto_pack_cstr(pk, srv_region_mode_name(s->region_mode));
    pack_key(pk, "precision"), proto_pack_cstr(pk, enc_precision_name(enc_model_precision(s->model)));
    pack_key(pk, "kernels"), proto_pack_cstr(pk, enc_model_kernels(s->model));
    uint64_t unsent = 0;
    int paused = 0;
    for (const srv_conn *c = s->conns; c; c = c->next) {
        unsent += c->unsent;
        paused += !c->reading && !c->eof && !c->close_after_writes;
    }
    pack_key(pk, "queues");
    msgpack_pack_map(pk, 5);
    pack_key(pk, "encoder"), msgpack_pack_int32(pk, qlen);
    pack_key(pk, "in_flight"), msgpack_pack_int32(pk, s->jobs_inflight - 1); /* not counting this one */
    pack_key(pk, "connections"), msgpack_pack_int32(pk, s->n_conns);
    pack_key(pk, "paused_connections"), msgpack_pack_int32(pk, paused);   /* backpressure */
    pack_key(pk, "unsent_bytes"), msgpack_pack_uint64(pk, unsent);
    pack_key(pk, "ingest"); /* and its memory (docs/server.md, "Ingest memory") */
    const eng_ingest_mem *im = &es.ingest_mem;
    msgpack_pack_map(pk, 11);
    pack_key(pk, "images"), msgpack_pack_uint64(pk, es.ingested);
    pack_key(pk, "batches"), msgpack_pack_uint64(pk, es.ingest_batches);
    pack_key(pk, "decode"), proto_pack_cstr(pk, s->cfg.decode_fast ? "fast" : "exact");
    pack_key(pk, "decoding"), msgpack_pack_int32(pk, im->decoding);
    pack_key(pk, "decoded_bytes"), msgpack_pack_uint64(pk, im->decoded_bytes);
    pack_key(pk, "decoded_peak_bytes"), msgpack_pack_uint64(pk, im->decoded_peak);
    pack_key(pk, "queued"), msgpack_pack_int32(pk, im->queued);
    pack_key(pk, "queued_bytes"), msgpack_pack_uint64(pk, im->queued_bytes);
    pack_key(pk, "queued_peak_bytes"), msgpack_pack_uint64(pk, im->queued_peak);
    pack_key(pk, "queue_memory"), msgpack_pack_uint64(pk, s->cfg.ingest_memory);
    pack_key(pk, "queue_waits"), msgpack_pack_uint64(pk, im->queue_waits);
    pack_key(pk, "text_queries"); /* text-tower passes, and the texts they encoded */
    msgpack_pack_map(pk, 3);
    pack_key(pk, "texts"), msgpack_pack_uint64(pk, es.texts);
    pack_key(pk, "batches"), msgpack_pack_uint64(pk, es.text_batches);
    pack_key(pk, "lanes"); /* the same per lane */
    msgpack_pack_array(pk, (size_t)es.n_lanes);
    for (int i = 0; i < es.n_lanes; i++) {
        msgpack_pack_map(pk, 2);
        pack_key(pk, "texts"), msgpack_pack_uint64(pk, es.lanes[i].texts);
        pack_key(pk, "batches"), msgpack_pack_uint64(pk, es.lanes[i].batches);
    }
    pack_key(pk, "query_cache"); /* text queries answered without the tower (hits) or not */
    msgpack_pack_map(pk, 4);
    pack_key(pk, "hits"), msgpack_pack_uint64(pk, es.query_cache.hits);
    pack_key(pk, "misses"), msgpack_pack_uint64(pk, es.query_cache.misses);
    pack_key(pk, "entries"), msgpack_pack_int32(pk, es.query_cache.entries);
    pack_key(pk, "capacity"), msgpack_pack_int32(pk, es.query_cache.capacity);
    pthread_mutex_lock(&s->ck_mu);
    uint64_t ck_done = s->ck_done, ck_builds = s->ck_builds;
    int ck_busy = s->ck_busy;
    pthread_mutex_unlock(&s->ck_mu);
    pack_key(pk, "checkpoints"); /* background ones (the checkpoint thread) */
    msgpack_pack_map(pk, 3);
    pack_key(pk, "done"), msgpack_pack_uint64(pk, ck_done);
    pack_key(pk, "index_builds"), msgpack_pack_uint64(pk, ck_builds);
    pack_key(pk, "running"), ck_busy ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
    job_response_end(job, &w);
    return 1;
}


/* ---- ingest, stage 1 (threadpool) ----------------------------------------- */

static void answer_ingest(srv_job *job, uint64_t image_id, int regions, int duplicate, int replaced)
{
    proto_writer w;
    if (proto_response_begin(&w, &job->resp, job->id)) {
        srv_job_error(job, UMG_ENOMEM, "out of memory");
        return;
    }
    msgpack_pack_map(&w.pk, 3 + (replaced != 0));
    pack_key(&w.pk, "image_id"), msgpack_pack_uint64(&w.pk, image_id);
    pack_key(&w.pk, "regions"), msgpack_pack_int32(&w.pk, regions);
    pack_key(&w.pk, "duplicate"), duplicate ? msgpack_pack_true(&w.pk) : msgpack_pack_false(&w.pk);
    if (replaced) pack_key(&w.pk, "replaced"), msgpack_pack_true(&w.pk);
    job_response_end(job, &w);
}

/* The answer of an ingest the engine is done with. */
static void answer_ingest_result(srv_job *job)
{
    const eng_ingest_result *r = eng_ingest_result_of(job->ing);
    if (r->rc) srv_job_error(job, r->rc, r->msg);
    else answer_ingest(job, r->image_id, r->regions, r->duplicate, r->replaced);
}


/* ---- ingest by path ------------------------------------------------------ */

int srv_path_normalize(const char *path, char *out, size_t size)
{
    if (path[0] != '/') return umg_err_set(UMG_EINVAL, "path must be absolute");
    size_t n = 0;
    const char *p = path;
    while (*p) {
        while (*p == '/') p++;
        const char *e = p;
        while (*e && *e != '/') e++;
        size_t len = (size_t)(e - p);
        if (len == 0 || (len == 1 && p[0] == '.')) {
            /* nothing: an empty or "." component */
        } else if (len == 2 && p[0] == '.' && p[1] == '.') {
            while (n > 0 && out[n - 1] != '/') n--; /* drop the last component ("/.." stays "/") */
            if (n > 0) n--;
        } else {
            if (n + 1 + len + 1 > size) return umg_err_set(UMG_ETOOBIG, "path too long");
            out[n++] = '/';
            memcpy(out + n, p, len);
            n += len;
        }
        p = e;
    }
    if (n == 0) out[n++] = '/';
    out[n] = 0;
    return 0;
}

/* The part of the normalized path p below root (itself normalized), or NULL
 * if p is not root or below it. */
static const char *below(const char *root, const char *p)
{
    size_t n = strlen(root);
    if (n == 1) return p + 1; /* root "/" */
    if (strncmp(p, root, n) || (p[n] != '/' && p[n] != 0)) return NULL;
    return p[n] == '/' ? p + n + 1 : p + n;
}

/* openat2(2) with RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS: the kernel resolves
 * rel under dirfd, refusing ".." out of it and every symlink, in one step, so
 * that nothing renamed or swapped meanwhile can lead it elsewhere.  -1 with
 * errno ENOSYS where the kernel (< 5.6) or a seccomp filter lacks it. */
static int openat2_beneath(int dirfd, const char *rel, int flags)
{
#ifdef SYS_openat2
    struct open_how how = {.flags = (uint64_t)flags,
                           .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS};
    return (int)syscall(SYS_openat2, dirfd, rel, &how, sizeof how);
#else
    errno = ENOSYS;
    return -1;
#endif
}

/* Without openat2: one component at a time, each directory opened with
 * O_NOFOLLOW | O_DIRECTORY relative to the previous one, so a symlink at any
 * level fails instead of being followed (ENOTDIR for a directory component,
 * as for a file there; ELOOP for the last one).  rel is normalized: no ".",
 * "..", or empty components. */
static int openat_walk(int rootfd, const char *rel, int flags)
{
    int dirfd = rootfd;
    const char *p = rel;
    for (;;) {
        const char *slash = strchr(p, '/');
        if (!slash) break;
        char comp[NAME_MAX + 1];
        size_t len = (size_t)(slash - p);
        if (len > NAME_MAX) {
            if (dirfd != rootfd) close(dirfd);
            errno = ENAMETOOLONG;
            return -1;
        }
        memcpy(comp, p, len);
        comp[len] = 0;
        int next = openat(dirfd, comp, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        int e = errno;
        if (dirfd != rootfd) close(dirfd);
        if (next < 0) {
            errno = e;
            return -1;
        }
        dirfd = next;
        p = slash + 1;
    }
    int fd = openat(dirfd, p, flags | O_NOFOLLOW);
    int e = errno;
    if (dirfd != rootfd) close(dirfd);
    errno = e;
    return fd;
}

/* Read an allowed file.  The path is normalized lexically (".", "..", "//")
 * and must then lie inside a root as given or as resolved at start: anything
 * else is forbidden before the filesystem is touched, so the answer says
 * nothing about what exists outside.  The file is then opened beneath the
 * root's descriptor without following any symlink (openat2, or a walk of
 * openat calls), so swapping a directory for a symlink during the ingest
 * cannot lead out of the root.  *norm gets the normalized path (malloc'd). */
int srv_read_allowed(srv *s, const char *path, char **norm_out, uint8_t **data, size_t *len, int64_t *mtime)
{
    if (!s->n_roots)
        return umg_err_set(UMG_EPERM, "ingest by path is off on this server (start it with --allow-root DIR); send the bytes instead");
    if (path[0] != '/') return umg_err_set(UMG_EINVAL, "ingest: path must be absolute");
    size_t cap = strlen(path) + 2;
    char *norm = malloc(cap);
    if (!norm) return umg_err_set(UMG_ENOMEM, "out of memory");
    int rc = srv_path_normalize(path, norm, cap);
    const char *rel = NULL;
    int root = -1;
    for (int i = 0; !rc && i < s->n_roots && !rel; i++) {
        if ((rel = below(s->roots_abs[i], norm)) || (rel = below(s->roots[i], norm))) root = i;
    }
    if (!rc && !rel) rc = umg_err_set(UMG_EPERM, "ingest: %s is outside the allowed roots", path);
    if (!rc && !*rel) rc = umg_err_set(UMG_EPERM, "ingest: %s is not a regular file", path);
    if (rc) {
        free(norm);
        return rc;
    }
    const int flags = O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY;
    int fd = s->no_openat2 ? -1 : openat2_beneath(s->root_fds[root], rel, flags);
    if (fd < 0 && (s->no_openat2 || errno == ENOSYS)) fd = openat_walk(s->root_fds[root], rel, flags);
    if (fd < 0) {
        int e = errno;
        free(norm);
        /* ENOTDIR: a file, or a symlink (the walk cannot tell), where a directory should be */
        if (e == ELOOP || e == EXDEV || e == ENOTDIR)
            return umg_err_set(UMG_EPERM, "ingest: %s: a symlink or a non-directory in the path (symlinks are not "
                                          "followed under --allow-root)", path);
        return umg_err_set(umg_err_from_errno(e), "ingest: %s: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        free(norm);
        return umg_err_set(UMG_EPERM, "ingest: %s is not a regular file", path);
    }
    if ((uint64_t)st.st_size > s->limits.max_frame) {
        close(fd);
        free(norm);
        return umg_err_set(UMG_ETOOBIG, "ingest: %s is %lld bytes, over the %u-byte limit", path,
                           (long long)st.st_size, s->limits.max_frame);
    }
    uint8_t *buf = malloc(st.st_size ? (size_t)st.st_size : 1);
    if (!buf) {
        close(fd);
        free(norm);
        return umg_err_set(UMG_ENOMEM, "out of memory");
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    close(fd);
    *norm_out = norm;
    *data = buf;
    *len = got;
    *mtime = (int64_t)st.st_mtime;
    return 0;
}

/* Strings of a request as the engine's (malloc'd array, NULL when empty;
 * the strings stay in the request). */
static int strs_to_eng(const proto_strs *in, eng_str **out, int *n)
{
    *out = NULL;
    *n = 0;
    if (!in->n) return 0;
    if (!(*out = calloc(in->n, sizeof **out))) return UMG_ENOMEM;
    for (uint32_t i = 0; i < in->n; i++) (*out)[i] = (eng_str){in->v[i].ptr, in->v[i].len};
    *n = (int)in->n;
    return 0;
}

/* The request's photo (read here for a path ingest) and tags, handed to
 * eng_ingest_begin. */
static int ingest_prepare(srv_job *job)
{
    srv *s = job->s;
    proto_request *req = job->req;
    const char *str;
    size_t sl;
    const uint8_t *data = NULL;
    uint8_t *owned = NULL;
    size_t len = 0;
    int64_t mtime = 0;
    char *path;
    int rc, bytes_private = 0;
    if (proto_obj_str(proto_req_arg(req, "path"), &str, &sl)) {
        if (!(path = strndup(str, sl))) return umg_err_set(UMG_ENOMEM, "out of memory");
        char *norm = NULL;
        if (strlen(path) != sl) rc = umg_err_set(UMG_EINVAL, "ingest: path contains a NUL byte");
        else rc = srv_read_allowed(s, path, &norm, &owned, &len, &mtime);
        free(path);
        if (rc) return rc;
        path = norm; /* stored as normalized: "a/./b" and "a/b" are one photo */
        data = owned;
        bytes_private = 1;
    } else {
        const proto_ingest_args *a = &req->a.ingest;
        if (!(path = strndup(a->name.ptr, a->name.len))) return umg_err_set(UMG_ENOMEM, "out of memory");
        if (strlen(path) != a->name.len) {
            free(path);
            return umg_err_set(UMG_EINVAL, "ingest: name contains a NUL byte");
        }
        data = a->data.ptr;
        len = a->data.len;
        /* the client's file time, validated >= 1; absent: 0, the ingest time is recorded */
        mtime = a->has_mtime ? a->mtime : 0;
    }
    eng_str *tags = NULL;
    int n_tags = 0;
    if (strs_to_eng(&req->a.ingest.tags, &tags, &n_tags)) {
        free(path);
        free(owned);
        return umg_err_set(UMG_ENOMEM, "out of memory");
    }
    eng_ingest_req r = {.path = path, .data = data, .len = len, .take_data = owned != NULL, .mtime = mtime,
                        .tags = tags, .n_tags = n_tags, .bytes_private = bytes_private};
    rc = eng_ingest_begin(s->eng, &r, &job->ing);
    free(tags);
    free(path);
    return rc;
}

/* Stage 1b (a stage-1 worker): decode, preprocess, propose, crop.  The CPU
 * of stage 1: it runs on --threads workers, not on the libuv pool, so that
 * it never oversubscribes the cores the encoder's BLAS threads run on (and
 * leaves the pool to queries while a collection is ingested). */
void srv_stage1_run(srv_job *job)
{
    umg_err_clear();
    if (!job->ing) { /* by path: the file is read here (ingest_work) */
        int rc = ingest_prepare(job);
        if (rc || eng_ingest_done(job->ing)) {
            if (rc) srv_job_error(job, rc, umg_err_msg());
            else answer_ingest_result(job);
            srv_stage1_end(job->s);
            srv_job_done_async(job->s, job);
            return;
        }
    }
    if (eng_ingest_prepare(job->s->eng, job->ing)) {
        answer_ingest_result(job);
        srv_stage1_end(job->s);
        srv_job_done_async(job->s, job); /* handed off: answered like the encoder answers */
        return;
    }
    srv_encoder_push(job->s, job); /* ends stage 1 too */
}

static void ingest_work(uv_work_t *w)
{
    srv_job *job = w->data;
    umg_err_clear();
    /* A file ingested by path is read by the stage-1 worker that decodes it: so
     * at most T files are in memory, however many path ingests wait (their
     * request frames are counted in --buffer-memory; read here, the files
     * would pile up in the stage-1 queue uncounted while decoding waits for
     * --ingest-memory). */
    const char *str;
    size_t sl;
    if (proto_obj_str(proto_req_arg(job->req, "path"), &str, &sl)) {
        job->handed_off = 1;
        srv_stage1_push(job->s, job);
        return;
    }
    int rc = ingest_prepare(job);
    if (rc || eng_ingest_done(job->ing)) {
        if (rc) srv_job_error(job, rc, umg_err_msg());
        else answer_ingest_result(job);
        srv_stage1_end(job->s);
        return;
    }
    job->handed_off = 1;
    srv_stage1_push(job->s, job);
}

static int h_ingest(void *ctx, proto_request *req)
{
    srv_job *job = ctx;
    srv_stage1_begin(job->s);
    int rc = uv_queue_work(job->s->loop, &job->work, ingest_work, job->s->after_work);
    if (rc) srv_stage1_end(job->s);
    return rc ? umg_err_set(UMG_EINTERNAL, "uv_queue_work: %s", uv_strerror(rc)) : 0;
}

/* ---- ingest, stage 2 (the encoder thread) --------------------------------- */

void srv_encode_batch(srv *s, srv_job **jobs, int n)
{
    if (n <= 0 || n > s->cfg.batch) return;
    eng_ingest *ings[n];
    for (int i = 0; i < n; i++) ings[i] = jobs[i]->ing;
    eng_ingest_store_batch(s->eng, ings, n);
    for (int i = 0; i < n; i++) answer_ingest_result(jobs[i]);
}

/* ---- searches (threadpool) ------------------------------------------------- */

/* A date filter's ISO 8601 string, when given. */
static int time_filter(const proto_str *v, const char *key, int *has, eng_time *t)
{
    if (!v->ptr) return 0;
    *has = 1;
    int rc = eng_time_parse(v->ptr, v->len, t);
    if (!rc) return 0;
    char why[200];
    snprintf(why, sizeof why, "%s", umg_err_msg());
    return umg_err_set(rc, "'filters.%s': %s", key, why);
}

/* Search with q (dim floats, any norm) as the query or query_image request
 * asks (granularity, k, refine, offset, per_photo, filters), answer job with
 * the hits. */
static int search_answer(srv_job *job, const float *q, uint64_t exclude, int granularity, uint64_t k, int refine,
                         uint64_t offset, uint64_t per_photo, const proto_filters *pf)
{
    srv *s = job->s;
    /* the protocol's choice indexes are the engine's granularities */
    _Static_assert((int)PROTO_GRAN_REGION == (int)ENG_GRAN_REGION && (int)PROTO_GRAN_PIXEL == (int)ENG_GRAN_PIXEL &&
                       (int)PROTO_GRAN_IMAGE == (int)ENG_GRAN_IMAGE,
                   "granularities");
    eng_search_req sr = {.query = q,
                         .k = (int)k,
                         .granularity = granularity,
                         .refine = granularity == ENG_GRAN_REGION && refine == PROTO_REFINE_PIXEL,
                         .exclude_image = exclude};
    sr.offset = (int)offset;       /* both validated against the table's limits */
    sr.per_photo = (int)per_photo;
    eng_filters *f = &sr.filters;
    if (pf->path_prefix.ptr) f->path_prefix = (eng_str){pf->path_prefix.ptr, pf->path_prefix.len};
    f->has_min_score = pf->has_min_score;
    f->min_score = pf->min_score;
    /* capture metadata (engine/capture.h; types and ranges checked by the command table) */
    int rc = time_filter(&pf->taken_after, "taken_after", &f->has_taken_after, &f->taken_after);
    if (!rc) rc = time_filter(&pf->taken_before, "taken_before", &f->has_taken_before, &f->taken_before);
    if (pf->camera.ptr) f->camera = (eng_str){pf->camera.ptr, pf->camera.len};
    if ((f->has_near = pf->has_near)) f->near_lat = pf->near.lat, f->near_lon = pf->near.lon, f->near_km = pf->near.km;
    eng_str *tags = NULL;
    if (!rc && strs_to_eng(&pf->tags, &tags, &f->n_tags)) rc = umg_err_set(UMG_ENOMEM, "out of memory");
    f->tags = tags;
    eng_hits hits = {0};
    char (*taken)[32] = NULL;
    if (!rc) rc = eng_search(s->eng, &sr, &hits);
    free(tags);
    if (rc) return rc;
    proto_writer w;
    if (proto_response_begin(&w, &job->resp, job->id)) {
        rc = umg_err_set(UMG_ENOMEM, "out of memory");
    } else {
        proto_hit *ph = calloc(hits.n ? (size_t)hits.n : 1, sizeof *ph);
        taken = calloc(hits.n ? (size_t)hits.n : 1, sizeof *taken);
        if (!ph || !taken) {
            free(ph);
            free(taken);
            eng_hits_free(&hits);
            return umg_err_set(UMG_ENOMEM, "out of memory");
        }
        for (int i = 0; i < hits.n; i++) {
            const eng_hit *h = &hits.hits[i];
            ph[i] = (proto_hit){.image_id = h->image_id, .path = h->path, .score = h->score, .width = h->width,
                                .height = h->height, .has_box = h->has_box, .region_id = h->region_id,
                                .has_refined = h->has_refined, .refined = h->refined, .heat = h->heat};
            memcpy(ph[i].box, h->box, sizeof ph[i].box);
            memcpy(ph[i].extent, h->extent, sizeof ph[i].extent);
            if (eng_taken_format(&h->capture, taken[i], sizeof taken[i])) ph[i].taken_at = taken[i];
            if (h->capture.camera[0]) ph[i].camera = h->capture.camera;
            if ((ph[i].has_gps = h->capture.has_gps)) ph[i].gps[0] = h->capture.lat, ph[i].gps[1] = h->capture.lon;
        }
        proto_hits_pack(&w.pk, ph, hits.n, hits.grid);
        free(ph);
        free(taken);
        job_response_end(job, &w);
    }
    eng_hits_free(&hits);
    return rc;
}

static void query_work(uv_work_t *w)
{
    srv_job *job = w->data;
    srv *s = job->s;
    umg_err_clear();
    const proto_query_args *a = &job->req->a.query;
    float *vec = malloc((size_t)s->dim * sizeof(float));
    int rc = vec ? eng_text_vector(s->eng, a->text.ptr, a->text.len, vec) : umg_err_set(UMG_ENOMEM, "out of memory");
    if (!rc) rc = search_answer(job, vec, 0, a->granularity, a->k, a->refine, a->offset, a->per_photo, &a->filters);
    if (rc) srv_job_error(job, rc, umg_err_msg());
    free(vec);
}

static void query_image_work(uv_work_t *w)
{
    srv_job *job = w->data;
    const proto_query_image_args *a = &job->req->a.query_image;
    umg_err_clear();
    eng_image_query q = {.by_id = a->has_image_id, .image_id = a->image_id, .data = a->data.ptr, .len = a->data.len,
                         .has_box = a->has_box};
    for (int i = 0; i < 4; i++) q.box[i] = (float)a->box[i];
    float *vec = malloc((size_t)job->s->dim * sizeof(float));
    uint64_t exclude = 0;
    int rc = vec ? eng_image_vector(job->s->eng, &q, vec, &exclude) : umg_err_set(UMG_ENOMEM, "out of memory");
    if (!rc) rc = search_answer(job, vec, exclude, a->granularity, a->k, PROTO_REFINE_NONE, a->offset, a->per_photo,
                                   &a->filters);
    if (rc) srv_job_error(job, rc, umg_err_msg());
    free(vec);
}


/* ---- get / delete (threadpool) -------------------------------------------- */

static int resolve_image(srv_job *job, uint64_t *id)
{
    const proto_image_ref_args *a = job->op == PROTO_OP_GET ? &job->req->a.get : &job->req->a.del;
    if (a->has_image_id) {
        *id = a->image_id;
        return 0;
    }
    char *path = strndup(a->path.ptr, a->path.len);
    if (!path) return umg_err_set(UMG_ENOMEM, "out of memory");
    int rc = db_find_path(job->s->db, path, id);
    if (rc == UMG_ENOENT) rc = umg_err_set(UMG_ENOENT, "no image at path '%s'", path);
    free(path);
    return rc;
}

static void get_work(uv_work_t *w)
{
    srv_job *job = w->data;
    srv *s = job->s;
    umg_err_clear();
    uint64_t id;
    db_image img;
    db_region *regs = NULL;
    int nreg = 0, have_img = 0;
    int rc = resolve_image(job, &id);
    if (!rc) {
        rc = db_get_image(s->db, id, &img);
        if (rc == UMG_ENOENT) rc = umg_err_set(UMG_ENOENT, "no image %llu", (unsigned long long)id);
        have_img = !rc;
    }
    if (!rc) rc = db_list_regions(s->db, id, &regs, &nreg);
    if (!rc) {
        proto_writer wr;
        if (proto_response_begin(&wr, &job->resp, job->id)) {
            rc = umg_err_set(UMG_ENOMEM, "out of memory");
        } else {
            msgpack_packer *pk = &wr.pk;
            char hex[65];
            for (int i = 0; i < 32; i++) snprintf(hex + 2 * i, 3, "%02x", img.sha256[i]);
            /* capture metadata as far as the photo's EXIF told it (absent fields: absent keys) */
            const db_capture *cap = &img.capture;
            char taken[32];
            size_t has_taken = eng_taken_format(cap, taken, sizeof taken) > 0, has_camera = cap->camera[0] != 0;
            msgpack_pack_map(pk, 10 + has_taken + has_camera + (size_t)(cap->has_gps != 0));
            pack_key(pk, "image_id"), msgpack_pack_uint64(pk, img.id);
            pack_key(pk, "path"), proto_pack_cstr(pk, img.path);
            pack_key(pk, "width"), msgpack_pack_uint32(pk, img.width);
            pack_key(pk, "height"), msgpack_pack_uint32(pk, img.height);
            pack_key(pk, "bytes"), msgpack_pack_uint64(pk, img.bytes);
            pack_key(pk, "sha256"), pack_strn(pk, hex, 64);
            pack_key(pk, "mtime"), msgpack_pack_int64(pk, img.mtime);
            pack_key(pk, "ingest_time"), msgpack_pack_int64(pk, img.ingest_time);
            pack_key(pk, "tags");
            msgpack_pack_array(pk, (size_t)img.n_tags);
            for (int i = 0; i < img.n_tags; i++) proto_pack_cstr(pk, img.tags[i]);
            if (has_taken) pack_key(pk, "taken_at"), proto_pack_cstr(pk, taken);
            if (has_camera) pack_key(pk, "camera"), proto_pack_cstr(pk, cap->camera);
            if (cap->has_gps) {
                pack_key(pk, "gps"), msgpack_pack_array(pk, 2);
                msgpack_pack_double(pk, cap->lat), msgpack_pack_double(pk, cap->lon);
            }
            pack_key(pk, "regions");
            msgpack_pack_array(pk, (size_t)nreg);
            for (int i = 0; i < nreg; i++) {
                msgpack_pack_map(pk, 3 + regs[i].has_score);
                pack_key(pk, "region_id"), msgpack_pack_uint64(pk, regs[i].id);
                pack_key(pk, "box"), proto_pack_box(pk, regs[i].box);
                pack_key(pk, "method"), proto_pack_cstr(pk, regs[i].method);
                if (regs[i].has_score) pack_key(pk, "score"), msgpack_pack_float(pk, regs[i].score);
            }
            job_response_end(job, &wr);
        }
    }
    if (have_img) db_image_free(&img);
    free(regs);
    if (rc) srv_job_error(job, rc, umg_err_msg());
}

static void delete_work(uv_work_t *w)
{
    srv_job *job = w->data;
    umg_err_clear();
    uint64_t id;
    int rc = resolve_image(job, &id);
    if (!rc) {
        rc = db_delete_image(job->s->db, id);
        if (rc == UMG_ENOENT) rc = umg_err_set(UMG_ENOENT, "no image %llu", (unsigned long long)id);
    }
    if (!rc) {
        proto_writer wr;
        if (proto_response_begin(&wr, &job->resp, job->id)) {
            rc = umg_err_set(UMG_ENOMEM, "out of memory");
        } else {
            msgpack_pack_map(&wr.pk, 2);
            pack_key(&wr.pk, "image_id"), msgpack_pack_uint64(&wr.pk, id);
            pack_key(&wr.pk, "deleted"), msgpack_pack_true(&wr.pk);
            job_response_end(job, &wr);
        }
    }
    if (rc) srv_job_error(job, rc, umg_err_msg());
}

/* ---- folders that change: list, move (engine/sync.h) ---- */

static void list_work(uv_work_t *w)
{
    srv_job *job = w->data;
    umg_err_clear();
    const proto_list_args *a = &job->req->a.list;
    size_t pl = a->path_prefix.len;
    uint64_t after = a->after, limit = a->limit, next = 0;
    char *prefix = strndup(a->path_prefix.ptr, pl);
    db_image *imgs = calloc((size_t)limit, sizeof *imgs);
    int n = 0, rc = 0;
    if (!prefix || !imgs) rc = umg_err_set(UMG_ENOMEM, "out of memory");
    else if (strlen(prefix) != pl) rc = umg_err_set(UMG_EINVAL, "list: path_prefix contains a NUL byte");
    if (!rc) rc = eng_list_prefix(job->s->eng, prefix, after, (int)limit, imgs, &n, &next);
    proto_writer wr;
    if (!rc && proto_response_begin(&wr, &job->resp, job->id)) rc = umg_err_set(UMG_ENOMEM, "out of memory");
    if (!rc) {
        msgpack_packer *pk = &wr.pk;
        msgpack_pack_map(pk, 2);
        pack_key(pk, "images");
        msgpack_pack_array(pk, (size_t)n);
        for (int i = 0; i < n; i++) {
            char hex[65];
            for (int b = 0; b < 32; b++) snprintf(hex + 2 * b, 3, "%02x", imgs[i].sha256[b]);
            msgpack_pack_map(pk, 5);
            pack_key(pk, "image_id"), msgpack_pack_uint64(pk, imgs[i].id);
            pack_key(pk, "path"), proto_pack_cstr(pk, imgs[i].path);
            pack_key(pk, "sha256"), pack_strn(pk, hex, 64);
            pack_key(pk, "bytes"), msgpack_pack_uint64(pk, imgs[i].bytes);
            pack_key(pk, "mtime"), msgpack_pack_int64(pk, imgs[i].mtime);
        }
        pack_key(pk, "next"), msgpack_pack_uint64(pk, next);
        job_response_end(job, &wr);
    }
    for (int i = 0; i < n; i++) db_image_free(&imgs[i]);
    free(imgs);
    free(prefix);
    if (rc) srv_job_error(job, rc, umg_err_msg());
}

static void move_work(uv_work_t *w)
{
    srv_job *job = w->data;
    umg_err_clear();
    const proto_move_args *a = &job->req->a.move;
    uint64_t id = a->image_id, replaced = 0;
    int64_t mtime = a->has_mtime ? a->mtime : 0;
    size_t pl = a->path.len;
    char *path = strndup(a->path.ptr, pl);
    int rc = 0;
    if (!path) rc = umg_err_set(UMG_ENOMEM, "out of memory");
    else if (strlen(path) != pl) rc = umg_err_set(UMG_EINVAL, "move: path contains a NUL byte");
    if (!rc) rc = eng_move(job->s->eng, id, path, mtime, &replaced);
    proto_writer wr;
    if (!rc && proto_response_begin(&wr, &job->resp, job->id)) rc = umg_err_set(UMG_ENOMEM, "out of memory");
    if (!rc) {
        msgpack_pack_map(&wr.pk, 2 + (replaced != 0));
        pack_key(&wr.pk, "image_id"), msgpack_pack_uint64(&wr.pk, id);
        pack_key(&wr.pk, "path"), proto_pack_cstr(&wr.pk, path);
        if (replaced) pack_key(&wr.pk, "replaced"), msgpack_pack_uint64(&wr.pk, replaced);
        job_response_end(job, &wr);
    }
    free(path);
    if (rc) srv_job_error(job, rc, umg_err_msg());
}

#define QUEUE_HANDLER(name, fn)                                                                    \
    static int name(void *ctx, proto_request *req)                                                 \
    {                                                                                              \
        srv_job *job = ctx;                                                                        \
        int rc = uv_queue_work(job->s->loop, &job->work, fn, job->s->after_work);                  \
        return rc ? umg_err_set(UMG_EINTERNAL, "uv_queue_work: %s", uv_strerror(rc)) : 0;          \
    }
QUEUE_HANDLER(h_query_queue, query_work)

/* The one cross-argument rule of query, checked before the text tower runs. */
static int h_query(void *ctx, proto_request *req)
{
    if (req->a.query.refine != PROTO_REFINE_NONE && req->a.query.granularity != PROTO_GRAN_REGION)
        return umg_err_set(UMG_EINVAL, "query: 'refine' \"pixel\" re-ranks region boxes: it needs 'granularity' \"region\"");
    return h_query_queue(ctx, req);
}
QUEUE_HANDLER(h_query_image, query_image_work)
QUEUE_HANDLER(h_get, get_work)
QUEUE_HANDLER(h_delete, delete_work)
QUEUE_HANDLER(h_list, list_work)
QUEUE_HANDLER(h_move, move_work)

/* The command table: each op of the protocol's table (name, argument spec)
 * bound to its handler, as constant data indexed by enum proto_op_code. */
typedef struct srv_command {
    const proto_op *op;
    int (*handler)(void *job, proto_request *req);
} srv_command;

static const srv_command commands[PROTO_OP_COUNT] = {
    [PROTO_OP_HELLO] = {&proto_op_table[PROTO_OP_HELLO], h_hello},
    [PROTO_OP_PING] = {&proto_op_table[PROTO_OP_PING], h_ping},
    [PROTO_OP_INGEST] = {&proto_op_table[PROTO_OP_INGEST], h_ingest},
    [PROTO_OP_QUERY] = {&proto_op_table[PROTO_OP_QUERY], h_query},
    [PROTO_OP_QUERY_IMAGE] = {&proto_op_table[PROTO_OP_QUERY_IMAGE], h_query_image},
    [PROTO_OP_GET] = {&proto_op_table[PROTO_OP_GET], h_get},
    [PROTO_OP_DELETE] = {&proto_op_table[PROTO_OP_DELETE], h_delete},
    [PROTO_OP_STATS] = {&proto_op_table[PROTO_OP_STATS], h_stats},
    [PROTO_OP_LIST] = {&proto_op_table[PROTO_OP_LIST], h_list},
    [PROTO_OP_MOVE] = {&proto_op_table[PROTO_OP_MOVE], h_move},
};

int srv_dispatch(srv_job *job, proto_request *req)
{
    const srv_command *c = &commands[req->op->code];
    if (c->op != req->op || !c->handler) /* a table entry missing: a bug, answered as one */
        return umg_err_set(UMG_EINTERNAL, "op '%s' has no handler", req->op->name);
    return c->handler(job, req);
}
