/* server_internal.h - structures shared by server.c (loop, sockets, jobs,
 * encoder thread) and server_ops.c (the operations' handlers, translating
 * requests to the engine and its results to responses).  Calls go one way:
 * server.c -> server_ops.c -> server_common.c.  server.c calls srv_ops_* and
 * the handlers through the protocol's table; server_ops.c calls only the
 * log, clock and queue functions of server_common.c, and hands threadpool
 * work to libuv with s->after_work, the after-callback server.c installs. */
#ifndef UMG_SERVER_INTERNAL_H
#define UMG_SERVER_INTERNAL_H

#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>

#include <uv.h>

#include "db.h"
#include "enc.h"
#include "engine.h"
#include "ingest.h"
#include "proto.h"
#include "search.h"
#include "server.h"

typedef struct srv srv;
typedef struct srv_conn srv_conn;
typedef struct srv_job srv_job;

/* One connection.  Lives until both its handles are closed AND no job
 * refers to it (refs); only the loop thread touches it. */
struct srv_conn {
    union {
        uv_stream_t stream;
        uv_tcp_t tcp;
        uv_pipe_t pipe;
    } h;
    uv_timer_t idle;              /* deadlines: idle, hello, frame (on_deadline) */
    srv *s;
    uint64_t serial;              /* for logs */
    int refs;                     /* 1 while open + one per job in flight */
    int handles_open;             /* of h and idle */
    int closing;                  /* uv_close called */
    int reading;                  /* uv_read_start active */
    int eof;                      /* peer finished sending */
    int close_after_writes;       /* fatal framing error: close once the error frame is out */
    int authed;
    int inflight;                 /* jobs not yet answered */
    size_t inflight_bytes;        /* request frame bytes held by those jobs */
    size_t unsent;                /* response bytes handed to uv_write, not yet written */
    size_t unsent_mem;            /* the memory those answers hold (buffers' capacity, requests) */
    int writes;                   /* uv_write requests not yet called back */
    size_t held;                  /* buffer memory of this connection counted in s->buffered */
    int preauth_errors;           /* error answers before a successful hello */
    uint64_t accepted_ns;         /* hello deadline */
    uint64_t frame_start_ns;      /* first byte of the partial frame read; 0 between frames */
    uint64_t last_activity_ns;    /* last byte read or answer written (idle timeout) */
    proto_framer *framer;
    uint8_t *stash;               /* bytes read but not yet fed: reading paused mid-read */
    size_t stash_len;
    int feeding;                  /* conn_feed is on the stack (no re-entry) */
    srv_conn *prev, *next;        /* s->conns list */
    struct srv_http *http;        /* an HTTP connection (http.h); NULL for msgpack */
    char rbuf[65536];
};

/* One request being served. */
struct srv_job {
    srv *s;
    srv_conn *conn;
    proto_request *req;
    uint64_t id;
    int op;                       /* enum proto_op_code */
    size_t frame_bytes;
    uint64_t t0_ns;
    uv_work_t work;
    msgpack_sbuffer resp;         /* complete response frame(s), built by whoever finishes the job */
    int status;                   /* 0 or the UMG_E* code answered (for the log) */
    char errmsg[300];
    int handed_off;               /* ingest: passed to the encoder thread by the worker */
    int after_work_done;          /* loop thread: the threadpool part is over */
    int encoder_done;             /* loop thread: the encoder's answer arrived */
    eng_ingest *ing;              /* ingest: the engine's photo, from the threadpool part on */
    srv_job *next;                /* encoder queue / done list link */
    const char *raw_type;         /* HTTP: resp holds raw bytes of this media type, not a frame */
};

/* The text lanes a server with this configuration runs (--text-lanes, default
 * --threads, at most SRV_MAX_TEXT_LANES). */
static inline int srv_text_lanes(const server_config *cfg)
{
    int lanes = cfg->text_lanes > 0 ? cfg->text_lanes : cfg->threads;
    return lanes < 1 ? 1 : lanes > SRV_MAX_TEXT_LANES ? SRV_MAX_TEXT_LANES : lanes;
}

struct srv {
    server_config cfg;
    char *roots[SRV_MAX_ROOTS];   /* realpath of each --allow-root */
    char *roots_abs[SRV_MAX_ROOTS]; /* each --allow-root made absolute and normalized (srv_path_normalize) */
    int root_fds[SRV_MAX_ROOTS];  /* each root opened (O_PATH) at start: path ingest opens beneath it */
    int n_roots;
    int no_openat2;               /* cfg.test_no_openat2 (tests): path ingest walks with openat */
    uv_loop_t *loop;
    uv_after_work_cb after_work;  /* server.c's srv_after_work, for jobs queued on the threadpool */
    uv_tcp_t tcp;
    int tcp_fd;                   /* bound at start, before the loop exists; -1 once uv_tcp_open took it */
    uv_pipe_t pipe;
    int tcp_on, pipe_on;
    uv_tcp_t http_tcp;            /* --http */
    int http_on;
    int http_fd;                  /* as tcp_fd, for --http */
    uv_signal_t sigint, sigterm;
    uv_async_t done_async;
    uv_timer_t stop_timer;
    int stopping;                 /* signal received */
    int finalized;
    uint64_t t_start_ns;
    uint64_t conn_serial;
    int n_conns;
    int max_conns;                /* --max-connections, lowered to fit the descriptor limit */
    uint64_t fd_limit_was;        /* the soft open-file limit before raise_fd_limit */
    srv_conn *conns;
    size_t buffered;              /* sum of every connection's held */
    int over_budget;              /* buffered >= cfg.buffer_memory: connections holding more than
                                     SRV_CONN_MEM_FLOOR pause */
    uv_timer_t resume_timer;      /* back under the budget: resume the paused connections */
    uint64_t budget_logged_ns;    /* last "budget reached" log line */
    int jobs_inflight;

    enc_model *model;
    int region_mode;              /* enum srv_region_mode, resolved: DENSE or CROP */
    int dim;
    db_t *db;
    eng *eng;                     /* what the operations do (engine/), over model and db */

    /* encoder thread */
    pthread_t enc_thread;
    int enc_started;
    proto_limits limits;
    pthread_mutex_t q_mu;
    pthread_cond_t q_cv;
    srv_job *q_head, *q_tail;     /* stage-1-done ingests waiting for the encoder */
    int q_len;
    int stage1_pending;           /* ingests in stage 1 (threadpool): the encoder may wait for them */
    int q_stop;
    srv_job *done_head;           /* finished by the encoder, for the loop */
    /* stage-1 workers (decode, proposals): cfg.threads of them, queue under q_mu */
    pthread_t *s1_threads;
    int n_s1;
    srv_job *s1_head, *s1_tail;
    int s1_stop;
    pthread_cond_t s1_cv;

    /* checkpoint thread: periodic checkpoints after writes, and index builds
     * (exact -> approximate, retraining on growth) off the shutdown path */
    pthread_t ck_thread;
    int ck_started;
    pthread_mutex_t ck_mu;
    pthread_cond_t ck_cv;
    int ck_stop, ck_kick, ck_busy;
    int ck_hold;                  /* a checkpoint failed: ignore kicks until the next interval */
    uint64_t ck_done, ck_builds;  /* background checkpoints finished; of them, with an index build */
    int test_hold_build_ms;       /* cfg.test_hold_build_ms: the first due build waits this long
                                     (tests only; read by the checkpoint thread) */

    char *hello_result;           /* msgpack of the hello/ping result map, packed once */
    size_t hello_len;
};

/* server_common.c (calls neither server.c nor server_ops.c) */
void srv_log(srv *s, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
uint64_t srv_now_ns(void);
/* Hand an ingest job (stage 1 done) to the encoder thread; any thread. */
void srv_encoder_push(srv *s, srv_job *job);
/* Hand an ingest whose bytes are read and checked to the stage-1 workers. */
void srv_stage1_push(srv *s, srv_job *job);
/* Count an ingest entering stage 1 / leaving it without reaching the encoder. */
void srv_stage1_begin(srv *s);
void srv_stage1_end(srv *s);
/* Finish a job from the encoder thread: its resp holds the answer. */
void srv_job_done_async(srv *s, srv_job *job);
/* Answer job with an error (on any thread). */
void srv_job_error(srv_job *job, int code, const char *msg);

/* server.c */
/* Ask the checkpoint thread for a checkpoint now (an index build is due). */
void srv_checkpoint_kick(srv *s);
/* uv_queue_work's after-callback for jobs whose work function built resp
 * (or handed the job off, setting handed_off). */
void srv_after_work(uv_work_t *w, int status);

/* Loop thread, for the HTTP front end (http.c): the connection and job
 * primitives the msgpack side uses. */
void srv_conn_send(srv_conn *c, char *data, size_t len); /* data malloc'd, ownership taken */
void srv_conn_close(srv_conn *c, const char *why);
void srv_conn_pause(srv_conn *c);
/* Decode, validate and dispatch one request frame body (ownership taken). */
void srv_handle_frame(srv_conn *c, uint8_t *frame, size_t len);
/* A job of c counted in flight (req may be NULL for HTTP-only work); NULL
 * on no memory.  srv_job_finish answers and frees it. */
srv_job *srv_job_new(srv_conn *c, proto_request *req, int op, size_t frame_bytes);
void srv_job_finish(srv_job *job);

/* server_ops.c */
/* Normalize the absolute path `path` lexically into out[0..size): "//" and
 * "." components dropped, ".." removing the previous one (none above "/").
 * UMG_EINVAL if path is relative, UMG_ETOOBIG if out is too small. */
int srv_path_normalize(const char *path, char *out, size_t size);
/* The configured token equals got[0..got_len) (constant time). */
int srv_token_ok(const srv *s, const char *got, size_t got_len);
/* Read a file path ingest may read (path ingest's rules: beneath an
 * --allow-root, opened without following symlinks); *data malloc'd, *norm
 * the normalized path (malloc'd).  Any thread. */
int srv_read_allowed(srv *s, const char *path, char **norm, uint8_t **data, size_t *len, int64_t *mtime);
int srv_ops_init(srv *s);        /* the engine over s->model and s->db, the hello result */
void srv_ops_fini(srv *s);
/* Run the handler the command table binds to req's op (loop thread):
 * 0 = the job goes on elsewhere, 1 = answered, < 0 = an error to answer. */
int srv_dispatch(srv_job *job, proto_request *req);
/* Stage-1 worker: decode, preprocess, propose, then srv_encoder_push (or
 * answer the error). */
void srv_stage1_run(srv_job *job);
/* Encoder thread: encode a batch of ingest jobs, store them, fill each resp. */
void srv_encode_batch(srv *s, srv_job **jobs, int n);

#endif
