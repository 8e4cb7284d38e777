/* server.h - `umgdb serve`: the event-driven server (docs/server.md).
 *
 * One libuv loop thread owns every socket; request decoding happens there,
 * all CPU and disk work elsewhere: image decoding, proposals, text encoding,
 * lookups and searches on the libuv threadpool, image encoding and the
 * batched database writes on one encoder thread. */
#ifndef UMG_SERVER_H
#define UMG_SERVER_H

#include <stdint.h>

#define SRV_MAX_ROOTS 32
#define SRV_DEFAULT_REGIONS 32
#define SRV_DEFAULT_BATCH 16
#define SRV_DEFAULT_IDLE_S 300
#define SRV_DEFAULT_MAX_CONN 1024
#define SRV_DEFAULT_CHECKPOINT_S 300      /* background checkpoint after writes, at most this often */
#define SRV_DEFAULT_INDEX_THREADS 1        /* OpenMP threads for FAISS */
#define SRV_DEFAULT_QUERY_CACHE 1024       /* text queries' embeddings kept (2 KiB each at dim 512) */
#define SRV_STOP_BUILD_WAIT_S 3            /* a stop waits this long for an index build to give up */
#define SRV_BATCH_LINGER_MS 30             /* encoder: longest wait for a fuller batch */
#define SRV_MAX_TEXT_LANES 64             /* --text-lanes at most */
#define SRV_MAX_INFLIGHT 64              /* requests per connection before reading pauses */
#define SRV_MAX_UNSENT (8u << 20)         /* memory of unsent answers per connection before reading pauses */
#define SRV_MAX_INFLIGHT_BYTES (256u << 20) /* request frame bytes held per connection */
#define SRV_DEFAULT_BUFFER_MEMORY (1ull << 30) /* --buffer-memory: connection buffers, all connections */
#define SRV_DEFAULT_INGEST_MEMORY (256ull << 20) /* --ingest-memory: photos prepared for the encoder */
#define SRV_CONN_MEM_FLOOR (64u << 10)    /* over the budget, connections holding less go on reading */
#define SRV_PREAUTH_MAX_FRAME 8192        /* largest frame before hello succeeds (token <= 4096 bytes) */
#define SRV_PREAUTH_MAX_ERRORS 4          /* error answers before hello succeeds; the last one closes */
#define SRV_DEFAULT_HELLO_TIMEOUT_S 10    /* --hello-timeout: auth required, hello must succeed by then */
#define SRV_DEFAULT_FRAME_TIMEOUT_S 120   /* --frame-timeout: a frame started must be complete by then */
#define SRV_FD_RESERVE 32                 /* descriptors kept for snapshots, checkpoints, stats */
#define SRV_MIN_TOKEN_LEN 16              /* auth tokens: at least this many bytes */
#define SRV_FD_REFUSING 16                /* descriptors kept for connections being refused with busy */

enum srv_log_level { SRV_LOG_DEBUG = 0, SRV_LOG_INFO = 1, SRV_LOG_WARN = 2, SRV_LOG_ERROR = 3 };

/* How region vectors are made (docs/regions.md); recorded in the data
 * directory's LMDB meta (db_setting "region_mode") when it is created, fixed
 * after.  Older directories kept it in the file SRV_REGION_MODE_FILE, moved
 * into the meta at their first start. */
enum srv_region_mode {
    SRV_REGION_MODE_AUTO = 0,  /* config only: the recorded mode; dense for a new directory */
    SRV_REGION_MODE_DENSE = 1, /* pool the image pass's patch tokens over each box */
    SRV_REGION_MODE_CROP = 2   /* encode each box's crop through the full vision tower */
};
#define SRV_REGION_MODE_FILE "region_mode" /* the pre-meta side file, read to migrate */

/* "auto" / "dense" / "crop"; "unknown" for other values. */
const char *srv_region_mode_name(int mode);
/* "dense" / "crop" -> the mode; -1 for anything else. */
int srv_region_mode_parse(const char *name);

typedef struct server_config {
    const char *data_dir;          /* required */
    const char *model_dir;         /* required */
    const char *listen;            /* "HOST:PORT"; NULL = none unless socket is NULL too
                                      (then UMG_DEFAULT_ADDR) */
    const char *socket_path;       /* Unix socket, or NULL */
    const char *roots[SRV_MAX_ROOTS]; /* --allow-root, as given */
    int n_roots;
    const char *token;             /* auth token or NULL; never logged */
    int require_auth;              /* demand hello+token even on loopback */
    int regions;                   /* R proposals per image (0 = none) */
    int batch;                     /* images per encoder batch */
    int threads;                   /* BLAS threads / query run states */
    uint32_t max_frame;
    int idle_timeout_s;            /* 0 = none */
    int hello_timeout_s;           /* auth required: close a connection without a successful hello
                                      this long after it was accepted; 0 = none */
    int frame_timeout_s;           /* close a connection that has not finished the frame it started
                                      this long ago (while the server reads it); 0 = none */
    uint64_t buffer_memory;        /* budget of connection buffers over all connections (unsent
                                      answers, requests held, partial frames); reading pauses at it */
    int max_connections;
    int log_level;                 /* enum srv_log_level */
    int decode_fast;               /* --decode fast (1, the default) or exact (0): eng_config.decode */
    uint64_t ingest_memory;        /* bytes photos prepared for the encoder may hold; decoding waits
                                      at it (eng_config.queue_memory; docs/server.md) */
    int no_patches;                /* do not store patch tokens */
    int region_mode;               /* enum srv_region_mode; AUTO = as recorded */
    /* db_options passthrough */
    const char *image_factory, *region_factory;
    uint64_t approx_threshold;     /* 0 = db default */
    int accept_data_loss;          /* db_options.accept_data_loss: open although the snapshots
                                      cover changes the database lacks */
    int nprobe;                    /* 0 = db default */
    int index_threads;             /* OpenMP threads FAISS may use (searches, builds); 0 = FAISS's
                                      default (OMP_NUM_THREADS, else every core) */
    int text_batch_wait_us;        /* a worker that finds the text tower free waits up to this long
                                      for more queries to fill its batch; 0 = none (a lone query
                                      is encoded at once) */
    int text_lanes;                /* text-tower passes encoded at once, each on its own thread;
                                      0 = threads (default); 1 = one pass at a time, its products
                                      shared over every thread */
    int precision;                 /* enum enc_precision of the encoder's products (fp32 default) */
    int query_cache;               /* recent text queries' embeddings kept (engine/query_cache.h);
                                      0 = no cache; default SRV_DEFAULT_QUERY_CACHE */
    int checkpoint_interval_s;     /* background checkpoint when something was written, this often;
                                      0 = none (index builds still run in the background) */
    /* test hooks (set only by serve's --test-* flags, which tests use): */
    int test_text_pass_ms;         /* every text pass lasts at least this long, so that passes
                                      overlap deterministically; 0 = off */
    int test_hold_build_ms;        /* the first due index build waits this long; 0 = off */
    int test_no_openat2;           /* path ingest walks with openat as on kernels without openat2 */
    int test_store_ms;             /* every ingest batch sleeps this long before encoding; 0 = off */
    /* HTTP/JSON listener (docs/http.md) */
    const char *http_listen;       /* "HOST:PORT" or NULL (none, the default) */
    int http_header_timeout_s;     /* a request's first byte -> end of its headers; 0 = none */
    int http_body_timeout_s;       /* end of the headers -> end of the body; 0 = none */
    int http_keepalive_s;          /* idle between requests; 0 = --idle-timeout only */
} server_config;

void server_config_default(server_config *c);

/* Run until SIGINT/SIGTERM.  Returns 0 after a clean shutdown, or a negative
 * UMG_E* code if the server could not start (message in umg_err_msg()). */
int server_run(const server_config *c);

#endif
