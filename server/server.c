/* server.c - the loop thread: listeners, connections, framing, backpressure,
 * auth gate, job lifecycle, the encoder thread, signals and shutdown.
 * What each operation does is in server_ops.c. */
#include "idx.h"
#include "server_internal.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "http.h"
#include "umg_error.h"

static void db_log_cb(void *ud, int level, const char *msg)
{
    srv_log(ud, level == DB_LOG_WARN ? SRV_LOG_WARN : SRV_LOG_INFO, "db: %s", msg);
}

/* ---- connections ---------------------------------------------------------- */

static void check_shutdown(srv *s);
static void on_resume_timer(uv_timer_t *t);

static void conn_unref(srv_conn *c)
{
    if (--c->refs > 0) return;
    proto_framer_close(c->framer);
    srv_http_free(c->http);
    free(c->stash);
    free(c);
}

static void on_handle_closed(uv_handle_t *h)
{
    srv_conn *c = h->data;
    if (--c->handles_open == 0) conn_unref(c);
}

/* ---- buffer memory: per connection and over all of them ------------------- */

/* What a connection's buffers hold: unsent answers (their buffers' capacity
 * and the write requests), request frames held by its jobs, bytes stashed
 * during a pause, and the partial frame's buffer. */
static size_t conn_held(const srv_conn *c)
{
    if (c->closing) return 0;
    return c->unsent_mem + c->inflight_bytes + c->stash_len + (c->framer ? proto_framer_held(c->framer) : 0);
}

/* Bring c's share of s->buffered up to date; called wherever one of the
 * terms of conn_held changes.  Falling back under the budget resumes the
 * connections it paused, from a timer (not from inside whatever callback
 * freed the memory: resuming feeds stashed frames). */
static void conn_account(srv_conn *c)
{
    srv *s = c->s;
    size_t h = conn_held(c);
    s->buffered = s->buffered - c->held + h;
    c->held = h;
    int over = s->cfg.buffer_memory && s->buffered >= s->cfg.buffer_memory;
    if (over && !s->over_budget) {
        uint64_t now = srv_now_ns();
        if (now - s->budget_logged_ns > 10ull * 1000000000ull) { /* at most one line per 10 s */
            s->budget_logged_ns = now;
            srv_log(s, SRV_LOG_WARN, "connection buffers reached --buffer-memory (%llu bytes): connections "
                                     "holding more than %u KiB stop reading until answers drain",
                    (unsigned long long)s->cfg.buffer_memory, SRV_CONN_MEM_FLOOR >> 10);
        }
    }
    if (!over && s->over_budget && !s->stopping) uv_timer_start(&s->resume_timer, on_resume_timer, 0, 0);
    s->over_budget = over;
}

static void conn_close(srv_conn *c, const char *why)
{
    if (c->closing) return;
    srv *s = c->s;
    c->closing = 1;
    c->reading = 0;
    if (c->prev) c->prev->next = c->next;
    else s->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    c->prev = c->next = NULL;
    s->n_conns--;
    conn_account(c); /* closing: its buffers no longer count */
    srv_log(s, SRV_LOG_DEBUG, "conn=%llu closed (%s)", (unsigned long long)c->serial, why);
    uv_read_stop(&c->h.stream);
    uv_timer_stop(&c->idle);
    uv_close((uv_handle_t *)&c->h, on_handle_closed);
    uv_close((uv_handle_t *)&c->idle, on_handle_closed);
}

static int over_caps(const srv_conn *c)
{
    if (c->http && c->inflight) return 1; /* HTTP: one request at a time, answers in order */
    if (c->inflight >= SRV_MAX_INFLIGHT || c->unsent_mem >= SRV_MAX_UNSENT ||
        c->inflight_bytes >= SRV_MAX_INFLIGHT_BYTES)
        return 1;
    /* over the budget of all connections: those holding little go on (a new
     * client is still served), and an authenticated one finishes the frame it
     * is reading (so that its memory turns into work that drains, instead of
     * waiting for a resume that only its own progress could bring) */
    return c->s->over_budget && c->held > SRV_CONN_MEM_FLOOR &&
           !(c->authed && c->framer && proto_framer_buffered(c->framer));
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    srv_conn *c = h->data;
    *buf = uv_buf_init(c->rbuf, sizeof c->rbuf);
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf);

static void conn_pause(srv_conn *c)
{
    if (c->reading) {
        uv_read_stop(&c->h.stream);
        c->reading = 0;
    }
}

static void conn_feed(srv_conn *c, const uint8_t *p, size_t len);

static void conn_maybe_resume(srv_conn *c)
{
    if (c->feeding || c->reading || c->closing || c->close_after_writes || c->s->stopping || over_caps(c)) return;
    if (c->stash) { /* first what was read before the pause */
        uint8_t *st = c->stash;
        size_t n = c->stash_len;
        c->stash = NULL;
        c->stash_len = 0;
        conn_feed(c, st, n); /* accounts (the stash is gone) */
        free(st);
        if (c->stash || c->closing || c->close_after_writes || over_caps(c)) return;
    }
    if (c->eof) return;
    if (uv_read_start(&c->h.stream, on_alloc, on_read) == 0) c->reading = 1;
}

/* Close a connection whose work is all done, once its answers are written. */
static void conn_maybe_finish(srv_conn *c)
{
    if (c->closing) return;
    if ((c->eof || c->close_after_writes || c->s->finalized) && c->inflight == 0 && c->unsent == 0 &&
        (!c->stash || c->close_after_writes || c->s->stopping))
        conn_close(c, c->eof ? "peer closed" : c->close_after_writes ? "after error" : "shutdown");
}

typedef struct write_req {
    uv_write_t req;
    srv_conn *c;
    char *data;
    size_t len;
    size_t cost;                  /* memory held until written: counted in c->unsent_mem */
} write_req;

/* Memory an answer of capacity cap holds while queued: its buffer, the write
 * request, and (an estimate) glibc's chunk header of each. */
#define WRITE_COST(cap) ((cap) + sizeof(write_req) + 2 * 16)

static void on_write(uv_write_t *req, int status)
{
    write_req *w = (write_req *)req;
    srv_conn *c = w->c;
    c->unsent -= w->len;
    c->unsent_mem -= w->cost;
    c->writes--;
    if (status == 0) c->last_activity_ns = srv_now_ns();
    free(w->data);
    free(w);
    conn_account(c);
    if (status < 0 && status != UV_ECANCELED && !c->closing) {
        /* EPIPE/ECONNRESET: the peer went away with answers pending (SIGPIPE
         * is ignored, server_run); what it was answered is stored all the same */
        srv_log(c->s, SRV_LOG_INFO, "conn=%llu dropped by the peer (%s): %d answers undelivered, %d requests in flight",
                (unsigned long long)c->serial, uv_strerror(status), c->writes + 1, c->inflight);
        conn_close(c, "write failed");
    }
    conn_maybe_resume(c);
    conn_maybe_finish(c);
    check_shutdown(c->s);
}

/* Send data[0..len) (malloc'd, cap bytes allocated; ownership taken). */
static void conn_send(srv_conn *c, char *data, size_t len, size_t cap)
{
    if (c->closing || !len) {
        free(data);
        return;
    }
    write_req *w = malloc(sizeof *w);
    if (!w) {
        free(data);
        conn_close(c, "out of memory");
        return;
    }
    w->c = c;
    w->data = data;
    w->len = len;
    w->cost = WRITE_COST(cap);
    uv_buf_t b = uv_buf_init(data, (unsigned)len);
    c->unsent += len;
    c->unsent_mem += w->cost;
    c->writes++;
    int rc = uv_write(&w->req, &c->h.stream, &b, 1, on_write);
    if (rc) {
        c->unsent -= len;
        c->unsent_mem -= w->cost;
        c->writes--;
        free(data);
        free(w);
        conn_close(c, "write failed");
        return;
    }
    conn_account(c);
    if (over_caps(c)) conn_pause(c);
}

void srv_conn_send(srv_conn *c, char *data, size_t len) { conn_send(c, data, len, len); }
void srv_conn_close(srv_conn *c, const char *why) { conn_close(c, why); }
void srv_conn_pause(srv_conn *c) { conn_pause(c); }

static void conn_send_sbuffer(srv_conn *c, msgpack_sbuffer *sb)
{
    size_t len = sb->size, cap = sb->alloc;
    char *data = msgpack_sbuffer_release(sb);
    /* msgpack starts every buffer at 8 KiB: a short answer (an error is ~60
     * bytes) gives the rest back before it waits in the queue (glibc shrinks
     * in place); the cap counts what is kept */
    if (data && len && cap - len >= 1024) {
        char *p = realloc(data, len);
        if (p) data = p, cap = len;
    }
    conn_send(c, data, len, cap);
}

static void conn_send_error(srv_conn *c, uint64_t id, int code, const char *msg)
{
    if (c->http) {
        srv_http_send_error(c, code, msg);
        return;
    }
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    if (proto_response_error(&sb, id, code, msg) == 0) conn_send_sbuffer(c, &sb);
    msgpack_sbuffer_destroy(&sb);
}

/* An error answer to a request (or a frame) of c.  Before a successful hello
 * a connection gets at most SRV_PREAUTH_MAX_ERRORS of them, the last one
 * closing it: otherwise a client without the token could have the server
 * queue answers for ever (zero-length frames, never reading). */
static void conn_reject(srv_conn *c, uint64_t id, int code, const char *msg)
{
    conn_send_error(c, id, code, msg);
    if (!c->authed && ++c->preauth_errors >= SRV_PREAUTH_MAX_ERRORS && !c->close_after_writes) {
        srv_log(c->s, SRV_LOG_INFO, "conn=%llu %d errors before a successful hello: closing",
                (unsigned long long)c->serial, c->preauth_errors);
        c->close_after_writes = 1;
        conn_pause(c);
    }
}

/* Close c now, after trying (without waiting) to send it an error frame that
 * says why: for deadlines, where the peer may not be reading at all. */
static void conn_close_with(srv_conn *c, int code, const char *msg, const char *why)
{
    msgpack_sbuffer sb;
    msgpack_sbuffer_init(&sb);
    if (!c->closing && !c->unsent && proto_response_error(&sb, 0, code, msg) == 0) {
        uv_buf_t b = uv_buf_init(sb.data, (unsigned)sb.size);
        (void)uv_try_write(&c->h.stream, &b, 1);
    }
    msgpack_sbuffer_destroy(&sb);
    conn_close(c, why);
}

/* ---- jobs ----------------------------------------------------------------- */

static const char *op_name(int op)
{
    return (unsigned)op < PROTO_OP_COUNT ? proto_ops()[op].name : "?";
}

void srv_job_finish(srv_job *job)
{
    srv *s = job->s;
    srv_conn *c = job->conn;
    double ms = (double)(srv_now_ns() - job->t0_ns) / 1e6;
    if (job->status)
        srv_log(s, SRV_LOG_INFO, "conn=%llu op=%s id=%llu status=%s ms=%.1f error=\"%s\"",
                (unsigned long long)c->serial, op_name(job->op), (unsigned long long)job->id,
                umg_error_name(job->status), ms, job->errmsg);
    else
        srv_log(s, SRV_LOG_INFO, "conn=%llu op=%s id=%llu status=ok ms=%.1f", (unsigned long long)c->serial,
                op_name(job->op), (unsigned long long)job->id, ms);
    if (!job->resp.size) /* a bug: every path must answer */
        proto_response_error(&job->resp, job->id, UMG_EINTERNAL, "no response was built");
    if (c->http) srv_http_answer(c, job);
    else conn_send_sbuffer(c, &job->resp); /* dropped if the connection is closed */
    c->inflight--;
    c->inflight_bytes -= job->frame_bytes;
    conn_account(c);
    s->jobs_inflight--;
    proto_request_free(job->req);
    eng_ingest_free(job->ing);
    msgpack_sbuffer_destroy(&job->resp);
    free(job);
    conn_maybe_resume(c);
    conn_maybe_finish(c);
    conn_unref(c);
    check_shutdown(s);
}

void srv_after_work(uv_work_t *w, int status)
{
    srv_job *job = w->data;
    if (job->handed_off) {
        /* the encoder thread answers; whichever of the two ends last finishes */
        job->after_work_done = 1;
        if (job->encoder_done) srv_job_finish(job);
        return;
    }
    if (status == UV_ECANCELED && !job->resp.size) srv_job_error(job, UMG_ESHUTDOWN, "cancelled");
    srv_job_finish(job);
}

static void on_done_async(uv_async_t *a)
{
    srv *s = a->data;
    pthread_mutex_lock(&s->q_mu);
    srv_job *list = s->done_head;
    s->done_head = NULL;
    pthread_mutex_unlock(&s->q_mu);
    srv_job *rev = NULL; /* back to completion order */
    while (list) {
        srv_job *n = list->next;
        list->next = rev;
        rev = list;
        list = n;
    }
    while (rev) {
        srv_job *n = rev->next;
        rev->encoder_done = 1;
        if (!rev->handed_off || rev->after_work_done) srv_job_finish(rev);
        rev = n;
    }
}

static void *stage1_main(void *arg)
{
    srv *s = arg;
    for (;;) {
        pthread_mutex_lock(&s->q_mu);
        while (!s->s1_head && !s->s1_stop) pthread_cond_wait(&s->s1_cv, &s->q_mu);
        srv_job *job = s->s1_head;
        if (job) {
            s->s1_head = job->next;
            if (!s->s1_head) s->s1_tail = NULL;
        }
        pthread_mutex_unlock(&s->q_mu);
        if (!job) break; /* stopping, queue empty */
        srv_stage1_run(job);
    }
    return NULL;
}

static void *encoder_main(void *arg)
{
    srv *s = arg;
    srv_job **batch = calloc((size_t)s->cfg.batch, sizeof *batch);
    for (;;) {
        pthread_mutex_lock(&s->q_mu);
        while (!s->q_head && !s->q_stop) pthread_cond_wait(&s->q_cv, &s->q_mu);
        if (!s->q_head) {
            pthread_mutex_unlock(&s->q_mu);
            break;
        }
        /* Fuller batches run the vision tower more efficiently: when images
         * are still in stage 1, wait a little (at most SRV_BATCH_LINGER_MS
         * after the first one is ready) for the batch to fill. */
        if (s->q_len < s->cfg.batch && s->stage1_pending > 0) {
            struct timespec dl;
            clock_gettime(CLOCK_MONOTONIC, &dl);
            dl.tv_nsec += SRV_BATCH_LINGER_MS * 1000000L;
            dl.tv_sec += dl.tv_nsec / 1000000000L;
            dl.tv_nsec %= 1000000000L;
            while (s->q_len < s->cfg.batch && s->stage1_pending > 0 && !s->q_stop)
                if (pthread_cond_timedwait(&s->q_cv, &s->q_mu, &dl)) break;
        }
        int n = 0;
        while (s->q_head && n < s->cfg.batch && batch) {
            batch[n++] = s->q_head;
            s->q_head = s->q_head->next;
            s->q_len--;
        }
        if (!s->q_head) s->q_tail = NULL;
        pthread_mutex_unlock(&s->q_mu);
        if (!batch) { /* could not even allocate the batch array: fail one at a time */
            pthread_mutex_lock(&s->q_mu);
            srv_job *j = s->q_head;
            if (j) {
                s->q_head = j->next;
                if (!s->q_head) s->q_tail = NULL;
                s->q_len--;
            }
            pthread_mutex_unlock(&s->q_mu);
            if (j) {
                srv_job_error(j, UMG_ENOMEM, "out of memory");
                srv_job_done_async(s, j);
            }
            continue;
        }
        srv_encode_batch(s, batch, n);
        for (int i = 0; i < n; i++) srv_job_done_async(s, batch[i]);
        /* the collection may have reached the approximate threshold: build in the background */
        if (db_build_pending(s->db)) srv_checkpoint_kick(s);
    }
    free(batch);
    return NULL;
}

/* ---- checkpoint thread ---------------------------------------------------- */

void srv_checkpoint_kick(srv *s)
{
    pthread_mutex_lock(&s->ck_mu);
    if (!s->ck_busy && !s->ck_hold) { /* a running checkpoint re-checks what is due when done */
        s->ck_kick = 1;
        pthread_cond_signal(&s->ck_cv);
    }
    pthread_mutex_unlock(&s->ck_mu);
}

/* Index builds take minutes at 100,000+ vectors on 2 cores: they run here,
 * from an LMDB read snapshot (writers and searches go on), never on the
 * shutdown path.  Also writes snapshots every checkpoint_interval_s when
 * something was written, so that a crash replays a short log. */
static void *checkpoint_main(void *arg)
{
    srv *s = arg;
    db_stats st;
    uint64_t last_seq = db_stats_get(s->db, &st) ? 0 : st.seq;
    pthread_mutex_lock(&s->ck_mu);
    for (;;) {
        if (!s->ck_kick && !s->ck_stop) {
            if (s->cfg.checkpoint_interval_s > 0) {
                struct timespec dl;
                clock_gettime(CLOCK_MONOTONIC, &dl);
                dl.tv_sec += s->cfg.checkpoint_interval_s;
                while (!s->ck_kick && !s->ck_stop)
                    if (pthread_cond_timedwait(&s->ck_cv, &s->ck_mu, &dl)) break;
            } else {
                while (!s->ck_kick && !s->ck_stop) pthread_cond_wait(&s->ck_cv, &s->ck_mu);
            }
        }
        if (s->ck_stop) break;
        int kicked = s->ck_kick;
        s->ck_kick = 0;
        if (!kicked) s->ck_hold = 0;
        s->ck_busy = 1;
        pthread_mutex_unlock(&s->ck_mu);
        int build = db_build_pending(s->db);
        if (build && s->test_hold_build_ms > 0) {
            /* test hook (--test-hold-build-ms): hold a due build this long, so that
             * integration tests can observe the state before it deterministically */
            struct timespec dl;
            clock_gettime(CLOCK_MONOTONIC, &dl);
            dl.tv_sec += s->test_hold_build_ms / 1000;
            dl.tv_nsec += (long)(s->test_hold_build_ms % 1000) * 1000000L;
            if (dl.tv_nsec >= 1000000000L) dl.tv_sec++, dl.tv_nsec -= 1000000000L;
            pthread_mutex_lock(&s->ck_mu);
            while (!s->ck_stop)
                if (pthread_cond_timedwait(&s->ck_cv, &s->ck_mu, &dl)) break;
            int stopping = s->ck_stop;
            pthread_mutex_unlock(&s->ck_mu);
            s->test_hold_build_ms = 0; /* once */
            if (stopping) {
                pthread_mutex_lock(&s->ck_mu);
                s->ck_busy = 0;
                break;
            }
        }
        int written = !db_stats_get(s->db, &st) && st.seq != last_seq;
        int rc = 0;
        uint64_t t = srv_now_ns();
        if (kicked || build || written) {
            if (build) srv_log(s, SRV_LOG_WARN, "background checkpoint: building an index (searches and "
                                                "ingest go on meanwhile)");
            rc = db_checkpoint(s->db);
            double ms = (double)(srv_now_ns() - t) / 1e6;
            if (rc == UMG_ESHUTDOWN)
                srv_log(s, SRV_LOG_WARN, "background checkpoint: index build abandoned after %.0f ms (stopping)", ms);
            else if (rc)
                srv_log(s, SRV_LOG_ERROR, "background checkpoint failed: %s: %s", umg_error_name(rc), umg_err_msg());
            else {
                last_seq = st.seq;
                srv_log(s, build ? SRV_LOG_WARN : SRV_LOG_INFO, "background checkpoint written in %.0f ms%s", ms,
                        build ? " (with an index build)" : "");
            }
        }
        pthread_mutex_lock(&s->ck_mu);
        s->ck_busy = 0;
        if (!rc && (kicked || build || written)) {
            s->ck_done++;
            s->ck_builds += build;
        }
        if (rc && rc != UMG_ESHUTDOWN) s->ck_hold = 1; /* no retry per ingest batch: next interval */
    }
    pthread_mutex_unlock(&s->ck_mu);
    return NULL;
}

/* ---- requests ------------------------------------------------------------- */

srv_job *srv_job_new(srv_conn *c, proto_request *req, int op, size_t frame_bytes)
{
    srv_job *job = calloc(1, sizeof *job);
    if (!job) return NULL;
    job->s = c->s;
    job->conn = c;
    job->req = req;
    job->id = req ? req->id : 0;
    job->op = op;
    job->frame_bytes = frame_bytes;
    job->t0_ns = srv_now_ns();
    job->work.data = job;
    msgpack_sbuffer_init(&job->resp);
    c->refs++;
    c->inflight++;
    c->inflight_bytes += frame_bytes;
    conn_account(c);
    c->s->jobs_inflight++;
    return job;
}

void srv_handle_frame(srv_conn *c, uint8_t *frame, size_t len)
{
    srv *s = c->s;
    uint64_t t0 = srv_now_ns();
    proto_request *req = NULL;
    uint64_t err_id = 0;
    int rc = proto_request_decode(frame, len, &s->limits, &req, &err_id);
    if (rc) {
        srv_log(s, SRV_LOG_INFO, "conn=%llu op=? id=%llu status=%s error=\"%s\"", (unsigned long long)c->serial,
                (unsigned long long)err_id, umg_error_name(rc), umg_err_msg());
        conn_reject(c, err_id, rc, umg_err_msg());
        return;
    }
    int op = req->op->code;
    if (!c->authed && op != PROTO_OP_HELLO) {
        srv_log(s, SRV_LOG_INFO, "conn=%llu op=%s id=%llu status=unauthorized", (unsigned long long)c->serial,
                op_name(op), (unsigned long long)req->id);
        conn_reject(c, req->id, UMG_EAUTH, "authentication required: send hello with the token first");
        proto_request_free(req);
        return;
    }
    if (s->stopping) {
        conn_send_error(c, req->id, UMG_ESHUTDOWN, "the server is shutting down");
        proto_request_free(req);
        return;
    }
    srv_job *job = srv_job_new(c, req, op, len);
    if (!job) {
        conn_send_error(c, req->id, UMG_ENOMEM, "out of memory");
        proto_request_free(req);
        return;
    }
    job->t0_ns = t0;
    int was_authed = c->authed;
    umg_err_clear();
    rc = srv_dispatch(job, req);
    /* hello succeeded: from the next frame on, the full frame size */
    if (!was_authed && c->authed) proto_framer_set_max(c->framer, s->limits.max_frame);
    if (rc < 0) srv_job_error(job, rc, umg_err_msg());
    if (rc != 0) srv_job_finish(job);
}

/* Feed received bytes to the framer and handle every complete frame, as
 * long as the connection is under its caps; what is left when a cap is hit
 * waits in c->stash (reading paused) until answers drain. */
static void conn_feed(srv_conn *c, const uint8_t *p, size_t len)
{
    srv *s = c->s;
    c->feeding = 1;
    while (len && !c->closing && !c->close_after_writes && !over_caps(c)) {
        if (c->http) {
            size_t used = srv_http_feed(c, p, len);
            p += used;
            len -= used;
            continue;
        }
        size_t used;
        uint8_t *frame;
        size_t flen;
        int rc = proto_framer_feed(c->framer, p, len, &used, &frame, &flen);
        p += used;
        len -= used;
        if (rc == PROTO_FRAME_READY) {
            c->frame_start_ns = 0;
            srv_handle_frame(c, frame, flen);
        } else if (rc == UMG_EPROTO) {
            srv_log(s, SRV_LOG_INFO, "conn=%llu op=? id=0 status=protocol_error error=\"%s\"",
                    (unsigned long long)c->serial, umg_err_msg());
            conn_reject(c, 0, rc, umg_err_msg());
        } else if (rc < 0) {
            if (rc == UMG_ETOOBIG && !c->authed)
                umg_err_set(rc, "%s: before a successful hello frames are limited to %u bytes", umg_err_msg(),
                            SRV_PREAUTH_MAX_FRAME);
            /* the stream cannot be resynchronised: error frame, then close */
            srv_log(s, SRV_LOG_INFO, "conn=%llu op=? id=0 status=%s error=\"%s\" (closing)",
                    (unsigned long long)c->serial, umg_error_name(rc), umg_err_msg());
            conn_send_error(c, 0, rc, umg_err_msg());
            c->close_after_writes = 1;
            conn_pause(c);
        }
    }
    c->feeding = 0;
    /* the frame deadline runs from the first byte of a frame */
    if (!proto_framer_buffered(c->framer)) c->frame_start_ns = 0;
    else if (!c->frame_start_ns) c->frame_start_ns = srv_now_ns();
    conn_account(c);
    if (c->closing || c->close_after_writes) {
        conn_maybe_finish(c);
        return;
    }
    if (len) {
        c->stash = malloc(len);
        if (!c->stash) {
            conn_close(c, "out of memory");
            return;
        }
        memcpy(c->stash, p, len);
        c->stash_len = len;
        conn_account(c);
        conn_pause(c);
    } else if (over_caps(c)) {
        conn_pause(c);
    }
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    srv_conn *c = st->data;
    if (nread == 0) return;
    if (nread < 0) {
        conn_pause(c);
        if (nread == UV_EOF) {
            c->eof = 1;
            conn_maybe_finish(c);
        } else {
            srv_log(c->s, SRV_LOG_INFO, "conn=%llu dropped by the peer (%s): %d requests in flight",
                    (unsigned long long)c->serial, uv_strerror((int)nread), c->inflight);
            conn_close(c, uv_strerror((int)nread));
        }
        return;
    }
    c->last_activity_ns = srv_now_ns();
    conn_feed(c, (const uint8_t *)buf->base, (size_t)nread);
    /* answers given inline may have left room: go on reading */
    if (!c->reading && !c->stash) conn_maybe_resume(c);
}

/* Deadlines, checked by a repeating timer (every half of the shortest one,
 * so a connection is closed between 1x and 1.5x its deadline):
 *  - hello: with auth required, a connection must complete hello within
 *    --hello-timeout of being accepted, whatever it sends meanwhile;
 *  - frame: a frame whose first byte was read must be complete within
 *    --frame-timeout (not counted while the server itself paused reading),
 *    so a byte every few seconds does not hold a slot for ever;
 *  - idle: no byte read and no answer taken by the peer for --idle-timeout,
 *    and no work of ours in flight.  A peer that stopped reading its answers
 *    is idle too: otherwise it could pin its unsent answers (up to the cap)
 *    for ever. */
static void on_deadline(uv_timer_t *t)
{
    srv_conn *c = t->data;
    const server_config *cfg = &c->s->cfg;
    uint64_t now = srv_now_ns(), sec = 1000000000ull;
    char msg[128];
    if (!c->authed && cfg->hello_timeout_s > 0 && now - c->accepted_ns >= (uint64_t)cfg->hello_timeout_s * sec) {
        srv_log(c->s, SRV_LOG_INFO, "conn=%llu no successful hello within %d s: closing",
                (unsigned long long)c->serial, cfg->hello_timeout_s);
        snprintf(msg, sizeof msg, "no successful hello within %d s (--hello-timeout)", cfg->hello_timeout_s);
        conn_close_with(c, UMG_ETIMEOUT, msg, "hello timeout");
        return;
    }
    if (c->frame_start_ns && c->reading && cfg->frame_timeout_s > 0 &&
        now - c->frame_start_ns >= (uint64_t)cfg->frame_timeout_s * sec) {
        srv_log(c->s, SRV_LOG_INFO, "conn=%llu frame not complete %d s after its first byte (%zu bytes read): closing",
                (unsigned long long)c->serial, cfg->frame_timeout_s, proto_framer_buffered(c->framer));
        snprintf(msg, sizeof msg, "frame not complete within %d s (--frame-timeout)", cfg->frame_timeout_s);
        conn_close_with(c, UMG_ETIMEOUT, msg, "frame timeout");
        return;
    }
    if (cfg->idle_timeout_s <= 0 || c->inflight || now - c->last_activity_ns < (uint64_t)cfg->idle_timeout_s * sec)
        return; /* the repeat timer comes back */
    srv_log(c->s, SRV_LOG_INFO, "conn=%llu idle for %d s%s: closing", (unsigned long long)c->serial,
            cfg->idle_timeout_s, c->unsent ? " (not reading its answers)" : "");
    conn_close(c, "idle timeout");
}

/* Back under the buffer budget: every connection it paused reads again. */
static void on_resume_timer(uv_timer_t *t)
{
    srv *s = t->data;
    for (srv_conn *c = s->conns, *n; c; c = n) {
        n = c->next;
        if (s->over_budget) break;
        conn_maybe_resume(c);
    }
}

/* The deadline timer's period: half the shortest deadline that applies
 * (the hello deadline only while auth is pending); 0 = none applies. */
static uint64_t deadline_period_ms(const srv *s, int authed)
{
    int t[3] = {s->cfg.idle_timeout_s, s->cfg.frame_timeout_s, authed ? 0 : s->cfg.hello_timeout_s}, m = 0;
    for (int i = 0; i < 3; i++)
        if (t[i] > 0 && (!m || t[i] < m)) m = t[i];
    return (uint64_t)m * 500;
}

static void on_connection(uv_stream_t *server, int status)
{
    srv *s = server->data;
    if (status < 0) {
        srv_log(s, SRV_LOG_WARN, "accept failed: %s", uv_strerror(status));
        return;
    }
    srv_conn *c = calloc(1, sizeof *c);
    if (!c) {
        srv_log(s, SRV_LOG_ERROR, "out of memory accepting a connection");
        return;
    }
    c->s = s;
    int rc = server != (uv_stream_t *)&s->pipe ? uv_tcp_init(s->loop, &c->h.tcp) : uv_pipe_init(s->loop, &c->h.pipe, 0);
    if (rc) {
        free(c);
        srv_log(s, SRV_LOG_ERROR, "connection init failed: %s", uv_strerror(rc));
        return;
    }
    uv_timer_init(s->loop, &c->idle);
    c->h.stream.data = c;
    c->idle.data = c;
    c->refs = 1;
    c->handles_open = 2;
    c->serial = ++s->conn_serial;
    c->next = s->conns;
    if (s->conns) s->conns->prev = c;
    s->conns = c;
    s->n_conns++;
    c->authed = !(s->cfg.token || s->cfg.require_auth);
    c->accepted_ns = srv_now_ns();
    rc = uv_accept(server, &c->h.stream);
    /* before hello succeeds only a small frame (hello's size): an unknown
     * client cannot make the server buffer megabytes */
    uint32_t first_max = c->authed || s->limits.max_frame < SRV_PREAUTH_MAX_FRAME ? s->limits.max_frame
                                                                                     : SRV_PREAUTH_MAX_FRAME;
    if (!rc) rc = proto_framer_create(first_max, &c->framer) ? UV_ENOMEM : 0;
    if (rc) {
        srv_log(s, SRV_LOG_WARN, "accept failed: %s", uv_strerror(rc));
        conn_close(c, "accept failed");
        return;
    }
    if (!rc && server == (uv_stream_t *)&s->http_tcp) rc = srv_http_attach(c) ? UV_ENOMEM : 0;
    if (rc) {
        conn_close(c, "out of memory");
        return;
    }
    if (server != (uv_stream_t *)&s->pipe) uv_tcp_nodelay(&c->h.tcp, 1);
    srv_log(s, SRV_LOG_DEBUG, "conn=%llu accepted", (unsigned long long)c->serial);
    if (s->n_conns > s->max_conns) {
        srv_log(s, SRV_LOG_WARN, "conn=%llu refused: %d connections open (the connection cap)",
                (unsigned long long)c->serial, s->n_conns - 1);
        conn_send_error(c, 0, UMG_EBUSY, "too many connections");
        c->close_after_writes = 1;
        conn_maybe_finish(c);
        return;
    }
    c->last_activity_ns = srv_now_ns();
    if (!c->http) { /* HTTP connections: their own deadlines, started by srv_http_attach */
        uint64_t period = deadline_period_ms(s, c->authed);
        if (period) uv_timer_start(&c->idle, on_deadline, period, period);
    }
    conn_maybe_resume(c);
}

/* ---- shutdown ------------------------------------------------------------- */

static void on_stop_timer(uv_timer_t *t)
{
    srv *s = t->data;
    srv_log(s, SRV_LOG_WARN, "shutdown: closing connections whose answers could not be delivered");
    while (s->conns) conn_close(s->conns, "shutdown grace period over");
}

static void on_closed_noop(uv_handle_t *h) { (void)h; }

static void check_shutdown(srv *s)
{
    if (!s->stopping || s->finalized || s->jobs_inflight > 0) return;
    s->finalized = 1;
    srv_log(s, SRV_LOG_INFO, "shutdown: no work in flight; closing connections");
    for (srv_conn *c = s->conns, *n; c; c = n) {
        n = c->next;
        conn_maybe_finish(c);   /* those with unsent answers close after writing */
    }
    pthread_mutex_lock(&s->q_mu);
    s->q_stop = 1;
    pthread_cond_broadcast(&s->q_cv);
    pthread_mutex_unlock(&s->q_mu);
    uv_close((uv_handle_t *)&s->sigint, on_closed_noop);
    uv_close((uv_handle_t *)&s->sigterm, on_closed_noop);
    uv_close((uv_handle_t *)&s->done_async, on_closed_noop);
    /* stalled readers get 5 s to take their last answers; the timer does not
     * keep the loop alive by itself */
    uv_timer_start(&s->stop_timer, on_stop_timer, 5000, 0);
    uv_unref((uv_handle_t *)&s->stop_timer);
}

static void on_signal(uv_signal_t *sig, int signum)
{
    srv *s = sig->data;
    if (s->stopping) {
        srv_log(s, SRV_LOG_WARN, "second signal %d: exiting without waiting (acknowledged data is on disk)",
                signum);
        _exit(1);
    }
    s->stopping = 1;
    srv_log(s, SRV_LOG_INFO, "signal %d: stopping (%d requests in flight)", signum, s->jobs_inflight);
    if (s->tcp_on) uv_close((uv_handle_t *)&s->tcp, on_closed_noop);
    if (s->pipe_on) uv_close((uv_handle_t *)&s->pipe, on_closed_noop);
    if (s->http_on) uv_close((uv_handle_t *)&s->http_tcp, on_closed_noop);
    for (srv_conn *c = s->conns, *n; c; c = n) {
        n = c->next;
        conn_pause(c);
        if (c->inflight == 0 && c->unsent == 0) conn_close(c, "shutdown");
    }
    check_shutdown(s);
}

/* ---- start-up ------------------------------------------------------------- */

void server_config_default(server_config *c)
{
    memset(c, 0, sizeof *c);
    c->regions = SRV_DEFAULT_REGIONS;
    c->batch = SRV_DEFAULT_BATCH;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    c->threads = n > 0 ? (int)n : 1;
    c->max_frame = PROTO_DEFAULT_MAX_FRAME;
    c->idle_timeout_s = SRV_DEFAULT_IDLE_S;
    c->hello_timeout_s = SRV_DEFAULT_HELLO_TIMEOUT_S;
    c->frame_timeout_s = SRV_DEFAULT_FRAME_TIMEOUT_S;
    c->buffer_memory = SRV_DEFAULT_BUFFER_MEMORY;
    c->decode_fast = 1;
    c->ingest_memory = SRV_DEFAULT_INGEST_MEMORY;
    c->max_connections = SRV_DEFAULT_MAX_CONN;
    c->log_level = SRV_LOG_INFO;
    c->index_threads = SRV_DEFAULT_INDEX_THREADS;
    c->checkpoint_interval_s = SRV_DEFAULT_CHECKPOINT_S;
    c->query_cache = SRV_DEFAULT_QUERY_CACHE;
    c->http_header_timeout_s = HTTP_DEFAULT_HEADER_TIMEOUT_S;
    c->http_body_timeout_s = HTTP_DEFAULT_BODY_TIMEOUT_S;
    c->http_keepalive_s = HTTP_DEFAULT_KEEPALIVE_S;
}

/* The side file DIR/region_mode that recorded the mode before it moved into
 * LMDB meta (db_setting "region_mode"): read once to migrate it.  0 and
 * *mode; UMG_ENOENT (no message) when absent. */
static int read_region_mode_file(const char *dir, int *mode)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, SRV_REGION_MODE_FILE);
    FILE *f = fopen(path, "r");
    if (!f) {
        int e = errno;
        return e == ENOENT ? UMG_ENOENT : umg_err_set(umg_err_from_errno(e), "%s: %s", path, strerror(e));
    }
    char buf[32] = {0};
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ')) buf[--n] = 0;
    int m = srv_region_mode_parse(buf);
    if (m < 0) return umg_err_set(UMG_EFORMAT, "%s: '%s' is not a region mode (dense or crop)", path, buf);
    *mode = m;
    return 0;
}

/* The region mode of the data directory just opened: the one recorded in
 * its LMDB meta (db_setting "region_mode", written in one transaction); a
 * directory with the older side file DIR/region_mode has it moved into the
 * meta (and the file removed); a directory without a record gets the
 * requested mode (dense by default) if it is empty, and is dense if it holds
 * images (it was filled before region modes existed, when every region
 * vector was pooled).  Asking for another mode than the recorded one is
 * refused: the region index would mix vectors of two kinds. */
static int resolve_region_mode(srv *s)
{
    const char *dir = s->cfg.data_dir;
    int want = s->cfg.region_mode, have = 0;
    char name[16];
    int rc = db_setting_get(s->db, "region_mode", name, sizeof name);
    if (rc == 0 && (have = srv_region_mode_parse(name)) < 0)
        return umg_err_set(UMG_EFORMAT, "%s: recorded region mode '%s' is not dense or crop", dir, name);
    if (rc && rc != UMG_ENOENT) return rc;
    if (rc == UMG_ENOENT) {
        int record = 1;
        rc = read_region_mode_file(dir, &have);
        if (rc && rc != UMG_ENOENT) return rc;
        if (rc == UMG_ENOENT) {
            db_stats st;
            if ((rc = db_stats_get(s->db, &st))) return rc;
            if (st.images > 0) have = SRV_REGION_MODE_DENSE;
            else have = want == SRV_REGION_MODE_AUTO ? SRV_REGION_MODE_DENSE : want;
            record = want == SRV_REGION_MODE_AUTO || want == have;
        }
        if (record && (rc = db_setting_put(s->db, "region_mode", srv_region_mode_name(have)))) return rc;
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", dir, SRV_REGION_MODE_FILE);
        if (record && !unlink(path))
            srv_log(s, SRV_LOG_INFO, "region mode %s moved from %s into the database", srv_region_mode_name(have),
                    path);
    }
    if (want != SRV_REGION_MODE_AUTO && want != have)
        return umg_err_set(UMG_EMODEL,
                           "data directory %s holds %s region vectors (recorded in its database); it cannot be "
                           "served with --region-mode %s. Omit --region-mode to serve it as it is, or use a new "
                           "data directory",
                           dir, srv_region_mode_name(have), srv_region_mode_name(want));
    s->region_mode = have;
    return 0;
}

/* Parse "HOST:PORT" (HOST an IPv4 address, "[IPv6]" or "localhost"). */
static int parse_listen(const char *addr, struct sockaddr_storage *ss, int *loopback)
{
    const char *colon = strrchr(addr, ':');
    if (!colon || colon == addr || !colon[1])
        return umg_err_set(UMG_EINVAL, "--listen '%s': want HOST:PORT", addr);
    char host[128];
    const char *h = addr;
    size_t hl = (size_t)(colon - addr);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    if (hl >= sizeof host) return umg_err_set(UMG_EINVAL, "--listen '%s': host too long", addr);
    memcpy(host, h, hl);
    host[hl] = 0;
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535) return umg_err_set(UMG_EINVAL, "--listen '%s': bad port", addr);
    if (!strcmp(host, "localhost")) snprintf(host, sizeof host, "127.0.0.1");
    memset(ss, 0, sizeof *ss);
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0) {
        uint32_t a = ntohl(((struct sockaddr_in *)ss)->sin_addr.s_addr);
        *loopback = (a >> 24) == 127;
        return 0;
    }
    if (uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) == 0) {
        const struct in6_addr *a = &((struct sockaddr_in6 *)ss)->sin6_addr;
        *loopback = IN6_IS_ADDR_LOOPBACK(a);
        return 0;
    }
    return umg_err_set(UMG_EINVAL, "--listen '%s': host must be an IP address or localhost", addr);
}

/* A TCP socket bound to ss (SO_REUSEADDR, as libuv binds), not yet
 * listening: connections are refused until uv_listen.  *fd owned by the
 * caller. */
static int bind_tcp(const struct sockaddr_storage *ss, const char *addr, int *fd)
{
    *fd = socket(ss->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (*fd < 0) return umg_err_set(UMG_EIO, "cannot listen on %s: socket: %s", addr, strerror(errno));
    int one = 1;
    setsockopt(*fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    socklen_t len = ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    if (bind(*fd, (const struct sockaddr *)ss, len) == 0) return 0;
    int e = errno;
    close(*fd);
    *fd = -1;
    if (e == EADDRINUSE)
        return umg_err_set(UMG_EBUSY, "cannot listen on %s: address already in use (another server there? choose "
                                      "another address with --listen HOST:PORT)", addr);
    return umg_err_set(umg_err_from_errno(e), "cannot listen on %s: %s", addr, strerror(e));
}

/* A stale socket file (nobody listening) may be replaced; a live one not. */
static int prepare_socket_path(const char *path)
{
    struct stat st;
    if (lstat(path, &st) < 0) return errno == ENOENT ? 0 : umg_err_set(umg_err_from_errno(errno), "%s: %s", path, strerror(errno));
    if (!S_ISSOCK(st.st_mode)) return umg_err_set(UMG_EEXIST, "%s exists and is not a socket", path);
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(sun.sun_path, sizeof sun.sun_path, "%s", path);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sun, sizeof sun) == 0) {
        close(fd);
        return umg_err_set(UMG_EBUSY, "%s: another server is listening there", path);
    }
    if (fd >= 0) close(fd);
    unlink(path);
    return 0;
}

/* Open-file limit: raise the soft limit to the hard one (the common soft
 * limit of 1,024 ran out at ~1,010 connections: new clients were reset
 * without a busy frame, path ingests and checkpoints failed with EMFILE). */
static void raise_fd_limit(srv *s)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl)) return;
    s->fd_limit_was = (uint64_t)rl.rlim_cur;
    if (rl.rlim_cur < rl.rlim_max) {
        /* an unlimited hard limit is refused by the kernel above fs.nr_open (1M by default) */
        rlim_t want = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > (1u << 20) ? (1u << 20) : rl.rlim_max;
        if (want > rl.rlim_cur) {
            rl.rlim_cur = want;
            if (setrlimit(RLIMIT_NOFILE, &rl))
                srv_log(s, SRV_LOG_WARN, "cannot raise the open-file limit to %llu: %s", (unsigned long long)want,
                        strerror(errno));
        }
    }
}

/* Descriptors open now (once listening, before serving). */
static int fds_in_use(void)
{
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (!d) return -1;
    for (struct dirent *e; (e = readdir(d));)
        n += e->d_name[0] != '.';
    closedir(d);
    return n - 1; /* the directory's own */
}

/* The connection cap: --max-connections, lowered so that connections leave
 * room under the open-file limit for what the server opens while serving:
 * path ingests (at most two descriptors each on every threadpool worker),
 * snapshot files of checkpoints and stats (SRV_FD_RESERVE) and connections
 * being refused with busy (SRV_FD_REFUSING; each needs its descriptor until
 * the busy frame is out).  Logged. */
static void derive_conn_cap(srv *s)
{
    struct rlimit rl;
    int in_use = fds_in_use();
    if (getrlimit(RLIMIT_NOFILE, &rl) || in_use < 0) {
        srv_log(s, SRV_LOG_WARN, "cannot read the open-file limit: connections capped by --max-connections only");
        return;
    }
    const char *pool_env = getenv("UV_THREADPOOL_SIZE");
    int pool = pool_env && atoi(pool_env) > 0 ? atoi(pool_env) : 4;
    long long reserve = in_use + 2LL * pool + SRV_FD_RESERVE + SRV_FD_REFUSING;
    long long room = rl.rlim_cur == RLIM_INFINITY ? (long long)INT_MAX : (long long)rl.rlim_cur - reserve;
    if (room < 1) room = 1;
    if (room < s->max_conns) s->max_conns = (int)room;
    srv_log(s, room < s->cfg.max_connections ? SRV_LOG_WARN : SRV_LOG_INFO,
            "open-file limit %llu%s: %d in use, %lld kept for path ingest, snapshots and refusals; "
            "at most %d connections (--max-connections %d)",
            (unsigned long long)rl.rlim_cur, s->fd_limit_was != (uint64_t)rl.rlim_cur ? " (raised from the soft limit)" : "",
            in_use, reserve - in_use, s->max_conns, s->cfg.max_connections);
}

/* Listen on a TCP socket bound at start (bind_tcp; *fd -1 once the handle
 * has it): the msgpack and the HTTP listeners.  *on once the handle exists. */
static int listen_bound(srv *s, uv_tcp_t *h, int *on, int *fd, const char *addr)
{
    uv_tcp_init(s->loop, h);
    h->data = s;
    *on = 1;
    int urc = uv_tcp_open(h, *fd);
    if (!urc) *fd = -1; /* the handle's now */
    if (!urc) urc = uv_listen((uv_stream_t *)h, 511, on_connection);
    if (urc) return umg_err_set(UMG_EIO, "cannot listen on %s: %s", addr, uv_strerror(urc));
    return 0;
}

static void close_walk_cb(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h)) uv_close(h, on_closed_noop);
}

int server_run(const server_config *cfg)
{
    /* A write to a peer that has gone (libuv writes with write(2)/writev(2))
     * raises SIGPIPE, whose default action killed the server (exit 141) when
     * a client dropped with answers pending.  Ignored once, for the whole
     * process and every write path (sockets of any protocol, pipes); such
     * writes fail with EPIPE instead, and on_write closes the connection. */
    struct sigaction ign = {.sa_handler = SIG_IGN};
    sigemptyset(&ign.sa_mask);
    if (sigaction(SIGPIPE, &ign, NULL)) return umg_err_set(UMG_EINTERNAL, "sigaction(SIGPIPE): %s", strerror(errno));
    srv *s = calloc(1, sizeof *s);
    if (!s) return umg_err_set(UMG_ENOMEM, "out of memory");
    s->cfg = *cfg;
    s->tcp_fd = s->http_fd = -1;
    s->t_start_ns = srv_now_ns();
    s->after_work = srv_after_work;
    pthread_mutex_init(&s->q_mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&s->q_cv, &ca);
    pthread_cond_init(&s->ck_cv, &ca);
    pthread_cond_init(&s->s1_cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&s->ck_mu, NULL);
    int rc = 0, loop_ready = 0;
    uv_loop_t loop;
    const char *listen_addr = cfg->listen;
    if (!listen_addr && !cfg->socket_path) listen_addr = UMG_DEFAULT_ADDR;
    if (s->cfg.batch < 1) s->cfg.batch = 1;
    if (s->cfg.threads < 1) s->cfg.threads = 1;
    if (s->cfg.regions < 0) s->cfg.regions = 0;
    if (s->cfg.max_connections < 1) s->cfg.max_connections = 1;
    s->max_conns = s->cfg.max_connections;
    raise_fd_limit(s);
    s->limits = proto_limits_default();
    if (cfg->max_frame) s->limits.max_frame = cfg->max_frame;

    /* 1. refuse unsafe or broken configurations before loading anything */
    struct sockaddr_storage ss;
    int loopback = 1;
    if (listen_addr && (rc = parse_listen(listen_addr, &ss, &loopback))) goto out;
    if (!loopback && !cfg->token) {
        rc = umg_err_set(UMG_EPERM, "--listen %s is not a loopback address: an auth token is required "
                                    "(--auth-token-file FILE or UMGDB_AUTH_TOKEN)", listen_addr);
        goto out;
    }
    struct sockaddr_storage http_ss;
    int http_loopback = 1;
    if (cfg->http_listen && (rc = parse_listen(cfg->http_listen, &http_ss, &http_loopback))) goto out;
    if (!http_loopback && !cfg->token) {
        rc = umg_err_set(UMG_EPERM, "--http %s is not a loopback address: an auth token is required "
                                    "(--auth-token-file FILE or UMGDB_AUTH_TOKEN)", cfg->http_listen);
        goto out;
    }
    if (cfg->require_auth && !cfg->token) {
        rc = umg_err_set(UMG_EINVAL, "--require-auth needs a token (--auth-token-file FILE or UMGDB_AUTH_TOKEN)");
        goto out;
    }
    /* bound before anything is loaded or created: a port in use fails at
     * once and leaves no data directory behind (listening starts later) */
    if (listen_addr && (rc = bind_tcp(&ss, listen_addr, &s->tcp_fd))) goto out;
    if (cfg->http_listen && (rc = bind_tcp(&http_ss, cfg->http_listen, &s->http_fd))) goto out;
    if (cfg->socket_path && (rc = prepare_socket_path(cfg->socket_path))) goto out;
    for (int i = 0; i < cfg->n_roots; i++) {
        /* kept three ways: as given (absolute, normalized) and resolved, for
         * the lexical check of a path; opened, to open files beneath it */
        char cwd[PATH_MAX], joined[2 * PATH_MAX + 2], *abs = malloc(sizeof joined);
        const char *given = cfg->roots[i];
        if (given[0] != '/' && getcwd(cwd, sizeof cwd)) {
            snprintf(joined, sizeof joined, "%s/%s", cwd, given);
            given = joined;
        }
        char *r = realpath(cfg->roots[i], NULL);
        int fd = r ? open(r, O_PATH | O_DIRECTORY | O_CLOEXEC) : -1;
        if (!abs || !r || fd < 0 || srv_path_normalize(given, abs, sizeof joined)) {
            free(abs);
            free(r);
            if (fd >= 0) close(fd);
            rc = umg_err_set(UMG_EINVAL, "--allow-root %s: not an existing directory", cfg->roots[i]);
            goto out;
        }
        s->roots[s->n_roots] = r;
        s->roots_abs[s->n_roots] = abs;
        s->root_fds[s->n_roots++] = fd;
    }
    if (cfg->test_no_openat2) {
        s->no_openat2 = 1;
        srv_log(s, SRV_LOG_WARN, "--test-no-openat2: path ingest walks with openat instead of openat2 (a test hook)");
    }

    /* 2. model and data */
    if (!getenv("UV_THREADPOOL_SIZE")) {
        char v[16];
        /* + ENG_TEXT_BATCH per text lane: text queries wait on the pool for a
         * lane (asleep); that many waiting make a full batch on every lane */
        int lanes = srv_text_lanes(cfg);
        int pool = (cfg->threads + 2 > 4 ? cfg->threads + 2 : 4) + ENG_TEXT_BATCH * (lanes < 8 ? lanes : 8);
        snprintf(v, sizeof v, "%d", pool);
        setenv("UV_THREADPOOL_SIZE", v, 1);
    }
    enc_set_threads(s->cfg.threads);
    /* before FAISS runs anything: OpenMP threads that spin between searches
     * would compete with the encoder's BLAS threads for the cores */
    if (idx_set_threads(cfg->index_threads))
        srv_log(s, SRV_LOG_WARN, "--index-threads: %s", umg_err_msg());
    enc_model_options mopt = {.precision = cfg->precision};
    if ((rc = enc_model_open_ex(cfg->model_dir, &mopt, &s->model))) {
        if (rc == UMG_ENOENT)
            umg_err_set(rc, "%s (--model wants a CLIP checkpoint directory: config.json, model.safetensors, "
                            "vocab.json, merges.txt; fetch one with scripts/download-model, e.g. "
                            "scripts/download-model openai/clip-vit-base-patch32 models/clip-vit-base-patch32)",
                        umg_err_msg());
        goto out;
    }
    if (cfg->precision != ENC_PRECISION_FP32)
        srv_log(s, SRV_LOG_INFO, "encoder precision %s (approximate; fp32 is the exact path)",
                enc_precision_name(cfg->precision));
    uint8_t fp[32];
    db_options o = eng_db_options(s->model, fp);
    o.image_factory = cfg->image_factory;
    o.region_factory = cfg->region_factory;
    if (cfg->approx_threshold) o.approx_threshold = cfg->approx_threshold;
    if (cfg->nprobe) o.nprobe = cfg->nprobe;
    o.accept_data_loss = cfg->accept_data_loss;
    o.log = db_log_cb;
    o.log_ud = s;
    if ((rc = db_open(cfg->data_dir, &o, &s->db))) goto out;
    if ((rc = resolve_region_mode(s))) goto out;
    if ((rc = srv_ops_init(s))) goto out;

    /* 3. loop and listeners */
    if ((rc = uv_loop_init(&loop))) {
        rc = umg_err_set(UMG_EINTERNAL, "uv_loop_init: %s", uv_strerror(rc));
        goto out;
    }
    loop_ready = 1;
    s->loop = &loop;
    uv_async_init(&loop, &s->done_async, on_done_async);
    s->done_async.data = s;
    uv_signal_init(&loop, &s->sigint);
    uv_signal_init(&loop, &s->sigterm);
    s->sigint.data = s->sigterm.data = s;
    uv_signal_start(&s->sigint, on_signal, SIGINT);
    uv_signal_start(&s->sigterm, on_signal, SIGTERM);
    uv_timer_init(&loop, &s->stop_timer);
    s->stop_timer.data = s;
    uv_timer_init(&loop, &s->resume_timer);
    s->resume_timer.data = s;
    if (listen_addr && (rc = listen_bound(s, &s->tcp, &s->tcp_on, &s->tcp_fd, listen_addr))) goto out;
    if (cfg->http_listen && (rc = listen_bound(s, &s->http_tcp, &s->http_on, &s->http_fd, cfg->http_listen))) goto out;
    if (cfg->socket_path) {
        uv_pipe_init(&loop, &s->pipe, 0);
        s->pipe.data = s;
        s->pipe_on = 1;
        /* the socket file: owner only, 0600 (connecting needs write
         * permission on it, not execute) */
        mode_t old = umask(0177);
        int urc = uv_pipe_bind(&s->pipe, cfg->socket_path);
        umask(old);
        if (!urc) urc = uv_listen((uv_stream_t *)&s->pipe, 511, on_connection);
        if (urc) {
            rc = umg_err_set(UMG_EIO, "cannot listen on unix:%s: %s", cfg->socket_path, uv_strerror(urc));
            goto out;
        }
    }
    if (pthread_create(&s->enc_thread, NULL, encoder_main, s)) {
        rc = umg_err_set(UMG_EINTERNAL, "cannot start the encoder thread");
        goto out;
    }
    s->enc_started = 1;
    if (!(s->s1_threads = calloc((size_t)s->cfg.threads, sizeof *s->s1_threads))) {
        rc = umg_err_set(UMG_ENOMEM, "out of memory");
        goto out;
    }
    for (; s->n_s1 < s->cfg.threads; s->n_s1++)
        if (pthread_create(&s->s1_threads[s->n_s1], NULL, stage1_main, s)) {
            rc = umg_err_set(UMG_EINTERNAL, "cannot start the stage-1 threads");
            goto out;
        }
    if (cfg->test_hold_build_ms > 0) {
        s->test_hold_build_ms = cfg->test_hold_build_ms;
        srv_log(s, SRV_LOG_WARN, "--test-hold-build-ms: the first due index build waits %d ms (a test hook)",
                s->test_hold_build_ms);
    }
    if (pthread_create(&s->ck_thread, NULL, checkpoint_main, s)) {
        rc = umg_err_set(UMG_EINTERNAL, "cannot start the checkpoint thread");
        goto out;
    }
    s->ck_started = 1;
    if (db_build_pending(s->db)) {
        srv_log(s, SRV_LOG_WARN, "an index build is due (left by an earlier stop or a failed update, or no usable snapshot "
                                 "at open: searches use an exact index until it is done): "
                                 "running it in the background");
        srv_checkpoint_kick(s);
    }
    derive_conn_cap(s);
    {
        db_stats st;
        db_stats_get(s->db, &st);
        char where[600];
        int n = snprintf(where, sizeof where, "%s%s%s%s%s%s", listen_addr ? listen_addr : "",
                         listen_addr && cfg->socket_path ? " and " : "", cfg->socket_path ? "unix:" : "",
                         cfg->socket_path ? cfg->socket_path : "", cfg->http_listen ? " and HTTP on " : "",
                         cfg->http_listen ? cfg->http_listen : "");
        (void)n;
        srv_log(s, SRV_LOG_INFO,
                "umgdb %s serving %s (model %s, dim %d, %llu images, %llu regions, region mode %s, text lanes %d, "
                "auth %s, path ingest %s)",
                UMG_VERSION, where, enc_model_name(s->model), s->dim, (unsigned long long)st.images,
                (unsigned long long)st.regions, srv_region_mode_name(s->region_mode), srv_text_lanes(&s->cfg),
                s->cfg.token || s->cfg.require_auth ? "required" : "off",
                s->n_roots ? "on" : "off");
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    rc = 0;

out:
    if (s->n_s1) { /* before the encoder: they feed it; every job is answered by now */
        pthread_mutex_lock(&s->q_mu);
        s->s1_stop = 1;
        pthread_cond_broadcast(&s->s1_cv);
        pthread_mutex_unlock(&s->q_mu);
        for (int i = 0; i < s->n_s1; i++) pthread_join(s->s1_threads[i], NULL);
    }
    free(s->s1_threads);
    if (s->enc_started) {
        pthread_mutex_lock(&s->q_mu);
        s->q_stop = 1;
        pthread_cond_broadcast(&s->q_cv);
        pthread_mutex_unlock(&s->q_mu);
        pthread_join(s->enc_thread, NULL);
    }
    int abandoned = 0;
    if (s->ck_started) {
        /* a build in progress gives up at its next step; FAISS training
         * itself cannot be interrupted, so a build inside it is waited for
         * only SRV_STOP_BUILD_WAIT_S and then left behind (the process exits
         * under it; the next start builds again).  The stop never starts one. */
        db_cancel_builds(s->db);
        pthread_mutex_lock(&s->ck_mu);
        s->ck_stop = 1;
        int busy = s->ck_busy;
        pthread_cond_broadcast(&s->ck_cv);
        pthread_mutex_unlock(&s->ck_mu);
        if (busy) srv_log(s, SRV_LOG_WARN, "stopping: the background checkpoint is asked to give up");
        struct timespec dl;
        clock_gettime(CLOCK_REALTIME, &dl);
        dl.tv_sec += SRV_STOP_BUILD_WAIT_S;
        if (pthread_timedjoin_np(s->ck_thread, NULL, &dl)) {
            abandoned = 1;
            srv_log(s, SRV_LOG_WARN, "stopping: an index build is still in FAISS training after %d s: "
                                     "leaving it (nothing of it is on disk; the next start builds again)",
                    SRV_STOP_BUILD_WAIT_S);
        }
    }
    if (loop_ready) {
        uv_walk(&loop, close_walk_cb, NULL);
        uv_run(&loop, UV_RUN_DEFAULT);
        /* drain: any leftover completions (only on a failed start) */
        on_done_async(&s->done_async);
        if (uv_loop_close(&loop)) srv_log(s, SRV_LOG_WARN, "event loop closed with handles open");
    }
    if (s->pipe_on && cfg->socket_path) unlink(cfg->socket_path);
    if (s->tcp_fd >= 0) close(s->tcp_fd);
    if (s->http_fd >= 0) close(s->http_fd);
    int saved = rc;
    char msg[600];
    snprintf(msg, sizeof msg, "%s", umg_err_msg());
    if (s->db) {
        if (!rc) {
            uint64_t t = srv_now_ns();
            /* snapshots only: an index build due now is left to the next start
             * (LMDB holds every vector; the snapshots record what they cover) */
            int crc = db_checkpoint_ex(s->db, DB_CHECKPOINT_NO_BUILD);
            if (crc) srv_log(s, SRV_LOG_ERROR, "checkpoint failed: %s: %s", umg_error_name(crc), umg_err_msg());
            else srv_log(s, SRV_LOG_INFO, "checkpoint written in %.0f ms", (double)(srv_now_ns() - t) / 1e6);
            if (abandoned) {
                /* the build thread still uses the database and FAISS: no
                 * db_close, no atexit/static destructors under it.  LMDB has
                 * every acknowledged write; its reader slot is cleared at the
                 * next open. */
                srv_log(s, SRV_LOG_INFO, "stopped (index build abandoned)");
                _exit(0);
            }
        }
        db_close(s->db);
    }
    srv_ops_fini(s);
    enc_model_close(s->model);
    for (int i = 0; i < s->n_roots; i++) {
        free(s->roots[i]);
        free(s->roots_abs[i]);
        close(s->root_fds[i]);
    }
    pthread_mutex_destroy(&s->q_mu);
    pthread_cond_destroy(&s->q_cv);
    pthread_mutex_destroy(&s->ck_mu);
    pthread_cond_destroy(&s->ck_cv);
    pthread_cond_destroy(&s->s1_cv);
    if (!saved) srv_log(s, SRV_LOG_INFO, "stopped");
    free(s);
    if (saved) umg_err_set(saved, "%s", msg);
    return saved;
}
