/* engine.h - the product's core as a library: what umgdb does with photos and
 * queries, with typed C structs in and out and no transport (no libuv, no
 * msgpack).  The server (server/), and any other front end, only translates
 * its requests into these structs and the results back (docs/architecture.md).
 *
 *   ingest.h      photo bytes in -> image, regions, vectors and patch tokens stored
 *   search.h      text / image / box query in -> ranked hits with boxes, scores,
 *                 heatmaps out (filters, per-image NMS, refine, over-fetch)
 *   text_lanes.h  text queries encoded in shared batches
 *
 * An engine borrows an open encoder model and database: the caller opens them
 * (the database with the model's fingerprint), creates the engine over them,
 * and closes them only after eng_close.  Threads: every eng_* function may be
 * called from any thread at once, except where a header says otherwise
 * (eng_ingest_store_batch: one thread at a time).
 *
 * Errors: 0 or a negative UMG_E* code with the detail in umg_err_msg(). */
#ifndef UMG_ENGINE_H
#define UMG_ENGINE_H

#include <stdint.h>

#include "db.h"
#include "enc.h"
#include "query_cache.h"
#include "text_lanes.h"

/* How region vectors are made (docs/regions.md); a data directory keeps one. */
enum eng_region_mode {
    ENG_REGION_MODE_DENSE = 1, /* pool the image pass's patch tokens over each box */
    ENG_REGION_MODE_CROP = 2   /* encode each box's crop through the full vision tower */
};

/* How ingest decodes a photo (eng_config.decode). */
enum eng_decode {
    ENG_DECODE_EXACT = 0, /* full resolution: bit-identical to the reference pipeline */
    ENG_DECODE_FAST = 1   /* a JPEG shrunk by its DCT while decoding (enc_decode_opts.fast_for), then
                             the exact resize; boxes, width and height still in the full-size photo's
                             pixels (ingest.h); region mode crop always decodes exactly */
};

typedef struct eng_config {
    int region_mode;        /* enum eng_region_mode (required) */
    int regions;            /* proposals per photo at ingest (0 = image vectors only) */
    int batch;              /* most photos per eng_ingest_store_batch call (>= 1) */
    int threads;            /* run states for query images; the text lanes' threads (>= 1) */
    int no_patches;         /* do not store patch tokens (no heatmaps, no refine, no boxes
                               on stored images) */
    int no_thumbs;          /* store no JPEG thumbnail per photo (db_get_thumb; benchmarks) */
    int text_lanes;         /* text passes encoded at once (>= 1; text_lanes.h) */
    int text_batch_wait_us; /* text_lanes.h: a lone text query waits this long for company */
    int test_text_pass_ms;  /* tests only: every text pass lasts at least this long (0 = off) */
    int query_cache;        /* text queries' embeddings kept (query_cache.h; 0 = no cache) */
    int decode;             /* enum eng_decode (0: exact) */
    uint64_t queue_memory;  /* bytes prepared photos may hold until eng_ingest_store_batch encodes
                               them (their network input, boxes, crops); eng_ingest_prepare waits
                               for room before decoding (ingest.h).  0 = no limit */
    int test_store_batch_ms; /* tests only: every eng_ingest_store_batch first sleeps this long (0 = off) */
} eng_config;

typedef struct eng eng;

/* db_options_default() bound to model: its fingerprint (written into fp, the
 * caller's storage, which the options point to), name and dimension, so that
 * db_open refuses a data directory of another model. */
db_options eng_db_options(const enc_model *model, uint8_t fp[32]);

/* Create an engine over model and db (borrowed: both must outlive it).
 * *out owned by the caller (eng_close).  UMG_EINVAL for a bad config,
 * UMG_ENOMEM, or the encoder's errors creating its run states. */
int eng_create(enc_model *model, db_t *db, const eng_config *cfg, eng **out);
/* NULL-safe; no call may be running on the engine. */
void eng_close(eng *e);

/* The model's facts the front ends report (hello, stats). */
int eng_dim(const eng *e);
int eng_grid(const eng *e);
int eng_region_mode(const eng *e);
const enc_model *eng_model(const eng *e);

/* Ingest memory (ingest.h, "Memory"). */
typedef struct eng_ingest_mem {
    int decoding;                        /* photos in eng_ingest_prepare's decode-to-crops step */
    uint64_t decoded_bytes, decoded_peak; /* their decoded RGB buffers, from the decoder's return to
                                             their release at the end of that step */
    int queued;                          /* photos admitted to prepare, not yet encoded by store_batch */
    uint64_t queued_bytes, queued_peak;  /* what they hold (each its fixed bound, reserved before decoding) */
    uint64_t queue_waits;                /* prepares that waited for room under cfg.queue_memory */
} eng_ingest_mem;

/* Counters since eng_create (for stats and tests). */
typedef struct eng_stats {
    uint64_t ingested, ingest_batches;   /* photos stored, and the store transactions */
    uint64_t texts, text_batches;        /* text queries encoded, and the passes */
    int n_lanes;
    struct { uint64_t texts, batches; } lanes[ENG_MAX_TEXT_LANES]; /* per text lane, n_lanes of them */
    eng_qcache_counts query_cache;       /* text queries answered from the cache (hits) or not */
    eng_ingest_mem ingest_mem;           /* ingest memory: now and the highest since eng_create */
} eng_stats;
void eng_stats_get(eng *e, eng_stats *out);

#endif
