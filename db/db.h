/* db.h - the umgdb data directory: LMDB metadata and vectors (the source of
 * truth) plus two FAISS indexes (images, regions) kept in step with it.
 *
 *   db_t *db;
 *   db_options o = db_options_default();
 *   o.fingerprint = fp; o.model_name = "clip-vit-base-patch32"; o.dim = 512;
 *   db_open("/var/lib/umgdb", &o, &db);
 *   db_put_image(db, &img, &image_id, region_ids);     one LMDB transaction
 *   db_search(db, DB_KIND_REGION, query, NULL, hits, 10, &n);
 *   db_checkpoint(db);                                  index snapshots
 *   db_close(db);
 *
 * Durability.  db_put_image returns 0 only after its LMDB transaction is
 * committed (fsynced): the image, its regions, their vectors (float16) and
 * the log entries are there together or not at all.  FAISS is updated after
 * the commit and is always derived from LMDB: db_open loads the snapshots
 * written by db_checkpoint and replays the log entries newer than them; a
 * missing, stale, corrupt or foreign (another collection's) snapshot, or one
 * that disagrees with LMDB after the replay (count, newest id), is rebuilt
 * from the stored vectors (one log line, not an error).  A snapshot newer
 * than LMDB means LMDB lost acknowledged writes: the open is refused unless
 * accept_data_loss.  LMDB's map grows by itself when full.
 *
 * One writer per directory: a read-write db_open takes an exclusive lock
 * (DIR/umgdb.lock, held until db_close) and refuses a second opener, in this
 * process or another, with UMG_EBUSY naming the holder's pid.  The directory
 * is created 0700 and its files 0600.
 *
 * Vectors.  All vectors are dim floats; db_put_image and db_search
 * L2-normalize copies (scores are cosine similarities).  Ids are 64-bit,
 * positive, assigned by db_put_image from one counter shared by images and
 * regions, never reused.
 *
 * Threads.  One handle serves any number of threads: writes are serialized by
 * an internal mutex, reads (get/find/list/search) run concurrently using
 * their own short LMDB read transactions (MDB_NOTLS).  db_close must not race
 * other calls.
 *
 * Errors: 0 or negative UMG_E* codes (protocol/umg_error.h) with a message in
 * umg_err_msg(): UMG_EMODEL (directory built by another model; the message
 * names it), UMG_ENOENT, UMG_EPERM (read-only directory), UMG_ENOSPC (disk
 * full: nothing was written), UMG_EBUSY (another handle holds the directory),
 * UMG_EFORMAT (data.mdb truncated or not a regular file), UMG_EINTERNAL (a
 * damaged record: logged, never returned as data), UMG_EDB (other LMDB
 * failures; the refusal of lost writes), UMG_EINDEX. */
#ifndef DB_H
#define DB_H

#include <stddef.h>
#include <stdint.h>

typedef struct db_t db_t;

enum db_kind { DB_KIND_IMAGE = 0, DB_KIND_REGION = 1 };
enum db_log_level { DB_LOG_INFO = 0, DB_LOG_WARN = 1 };

/* Receives log lines (index rebuilds, map growth).  msg lives for the call. */
typedef void (*db_log_fn)(void *ud, int level, const char *msg);

#define DB_SCHEMA_VERSION 1
#define DB_MAX_PATH 4096
#define DB_MAX_TAGS 256
#define DB_MAX_TAG 4096          /* bytes of one tag */
#define DB_MAX_REGIONS 100000    /* regions of one image */
#define DB_MAX_METHOD 31
#define DB_MAX_EXTRA_NAME 64

typedef struct db_options {
    const uint8_t *fingerprint;  /* 32 bytes: the model's identity (required) */
    const char *model_name;      /* display name stored with it (required) */
    int dim;                     /* embedding dimension (required) */
    int read_only;               /* open without writing (no create, no lock) */
    /* Open even when the index snapshots cover changes the database lacks
     * (data.mdb emptied, deleted or an older copy): serve what LMDB holds and
     * rebuild the snapshots from it.  Without it such an open is refused. */
    int accept_data_loss;
    /* FAISS factory strings used from approx_threshold vectors on (below it
     * the index is exact); NULL = automatic by size (idx_auto_factory).  The
     * switch happens at db_checkpoint. */
    const char *image_factory;
    const char *region_factory;
    uint64_t approx_threshold;   /* automatic: approximate from this many vectors */
    int nprobe;                  /* search breadth of approximate indexes */
    int rerank_candidates;       /* candidates re-ranked per hit wanted (k x this) */
    size_t initial_map_size;     /* bytes; grows by doubling when full */
    db_log_fn log;               /* NULL = lines to stderr */
    void *log_ud;
} db_options;

/* Defaults: automatic factories, approx_threshold 50000, nprobe 32,
 * rerank_candidates 10, initial_map_size 64 MiB, log to stderr. */
db_options db_options_default(void);

/* Open (creating if absent and not read_only) a data directory.  A directory
 * made with another fingerprint or dimension fails with UMG_EMODEL naming
 * the model that built it; one held by another read-write handle with
 * UMG_EBUSY; a truncated data.mdb with UMG_EFORMAT naming it; snapshots
 * newer than the database with UMG_EDB (above).  A directory made before
 * collection ids gets one (one log line).  Brings both indexes up to date with LMDB.  An
 * index whose snapshot is missing or unusable is rebuilt from the stored
 * vectors; past approx_threshold it is rebuilt exact (a copy of the vectors,
 * no training: about a second at 100,000 x 512, and dim x 4 bytes of memory
 * per vector), and db_build_pending reports the approximate build, which
 * the next db_checkpoint does and swaps in. */
int db_open(const char *dir, const db_options *opt, db_t **out);
/* Close; NULL-safe.  Does not checkpoint (call db_checkpoint first to make
 * the next open fast). */
void db_close(db_t *db);

typedef struct db_region_in {
    float box[4];         /* x, y, w, h in original-image pixels */
    const char *method;   /* scale/method that produced it, <= 31 bytes, may be NULL */
    float score;
    int has_score;
    const float *vector;  /* dim floats (required) */
} db_region_in;

/* When, where and with what a photo was taken (its EXIF), each part known
 * or not.  Stored in the image record (db.c: version 2 records). */
#define DB_MAX_CAMERA 127        /* bytes of a camera name */
#define DB_MAX_OFFSET_MINUTES 1080
#define DB_MIN_TAKEN (-62135596800LL) /* 0001-01-01T00:00:00 */
#define DB_MAX_TAKEN 253402300799LL   /* 9999-12-31T23:59:59 */
typedef struct db_capture {
    int has_taken;
    int64_t taken;               /* the clock time where the photo was taken, as seconds from
                                    1970-01-01T00:00:00 of that clock (no zone applied);
                                    DB_MIN_TAKEN..DB_MAX_TAKEN */
    int has_offset;              /* (with has_taken) that clock's offset from UTC is known */
    int offset_minutes;          /* east of UTC, +-DB_MAX_OFFSET_MINUTES */
    char camera[DB_MAX_CAMERA + 1]; /* make and model, UTF-8; "" = unknown */
    int has_gps;
    double lat, lon;             /* degrees, -90..90 and -180..180 */
} db_capture;

typedef struct db_extra_in {
    const char *name;     /* e.g. "patch_tokens", <= 64 bytes */
    const void *data;
    size_t len;
} db_extra_in;

typedef struct db_image_in {
    const char *path;            /* as given by the user (required) */
    uint8_t sha256[32];          /* of the file's bytes */
    uint32_t width, height;      /* after EXIF orientation */
    uint64_t bytes;              /* file size */
    int64_t mtime;               /* seconds since the epoch */
    int64_t ingest_time;         /* seconds; 0 = now */
    const char *const *tags;     /* n_tags strings (may be NULL) */
    int n_tags;
    const float *vector;         /* dim floats (required) */
    const db_region_in *regions;
    int n_regions;
    const db_extra_in *extras;   /* per-image named blobs, e.g. projected patch tokens */
    int n_extras;
    const db_capture *capture;   /* NULL: nothing known; checked (UMG_EINVAL when out of range) */
    int replace;                 /* 1: an image already at path is deleted in the
                                    same transaction; 0: UMG_EEXIST */
} db_image_in;

/* Store an image with its regions, vectors and extras in one transaction.
 * *image_id gets the new id; region_ids (NULL or n_regions entries) get the
 * region ids in input order. */
int db_put_image(db_t *db, const db_image_in *in, uint64_t *image_id, uint64_t *region_ids);
/* The same for n images in ONE transaction (all or none; one fsync, so bulk
 * ingest should batch).  image_ids: n entries; region_ids: the sum of
 * n_regions, in input order.  Either may be NULL. */
int db_put_images(db_t *db, const db_image_in *ins, int n, uint64_t *image_ids, uint64_t *region_ids);

/* Delete an image, its regions, their vectors and extras (one transaction).
 * UMG_ENOENT if absent. */
int db_delete_image(db_t *db, uint64_t image_id);

typedef struct db_image {
    uint64_t id;
    char *path;                  /* heap */
    uint8_t sha256[32];
    uint32_t width, height;
    uint64_t bytes;
    int64_t mtime, ingest_time;
    char **tags;                 /* heap array of heap strings */
    int n_tags;
    int n_regions;
    db_capture capture;          /* all unknown for records written without it */
} db_image;
/* Frees what a db_get_image filled in (not img itself); NULL-safe. */
void db_image_free(db_image *img);

typedef struct db_region {
    uint64_t id, image_id;
    float box[4];
    float score;
    int has_score;
    char method[DB_MAX_METHOD + 1];
} db_region;

/* Lookups.  UMG_ENOENT when absent. */
int db_get_image(db_t *db, uint64_t id, db_image *out);
int db_find_path(db_t *db, const char *path, uint64_t *id);
/* Ids of images with this content hash: up to max into ids, *n the total. */
int db_find_hash(db_t *db, const uint8_t sha256[32], uint64_t *ids, int max, int *n);
int db_get_region(db_t *db, uint64_t id, db_region *out);
/* Image ids in increasing order, starting after `after` (0 = from the first):
 * up to max into ids, *n how many.  Page with after = the last id returned. */
int db_list_images(db_t *db, uint64_t after, uint64_t *ids, int max, int *n);
/* Every image record in id order, in one read transaction (a consistent
 * view): fn(ud, img) for each (img lives for the call).  A damaged record is
 * logged and skipped.  fn returning non-zero stops the scan, and that value
 * is returned (a positive one: the caller's "stop", a negative one: its
 * error).  For filters no index covers (search over a matching subset). */
typedef int (*db_image_fn)(void *ud, const db_image *img);
int db_scan_images(db_t *db, db_image_fn fn, void *ud);
/* All regions of an image, in id order: *out is malloc'd (free()), *n its length. */
int db_list_regions(db_t *db, uint64_t image_id, db_region **out, int *n);
/* Folders that change (umgdb ingest --sync).  db_list_path_prefix: the
 * images whose stored path starts with prefix (byte-wise), in id order,
 * after id `after` (0 = from the first): up to max records into out (each
 * db_image_free'd by the caller), looking at most at max_scan records, so a
 * page costs bounded time however few images match.  *next = the last id
 * looked at when records are left (pass it as `after`), 0 at the end.
 * Damaged records are skipped (and logged).
 * db_move_image: re-path image_id to path in one transaction (its vectors,
 * regions, extras, hash and id stay); mtime != 0 also sets its mtime.  An
 * image that held path is deleted in the same transaction (its id in
 * *replaced, else 0).  UMG_ENOENT when image_id does not exist. */
int db_list_path_prefix(db_t *db, const char *prefix, uint64_t after, int max, int max_scan, db_image *out,
                        int *n, uint64_t *next);
int db_move_image(db_t *db, uint64_t image_id, const char *path, int64_t mtime, uint64_t *replaced);
/* The stored (normalized, float16-rounded) vector of an image or region. */
int db_get_vector(db_t *db, int kind, uint64_t id, float *out);

/* Named per-image blobs.  db_put_extra replaces; db_get_extra returns a
 * malloc'd copy in *data (free()).  The image must exist. */
int db_put_extra(db_t *db, uint64_t image_id, const char *name, const void *data, size_t len);
int db_get_extra(db_t *db, uint64_t image_id, const char *name, void **data, size_t *len);

/* A photo's thumbnail: a small JPEG (encoder/enc_thumb.h) the engine stores
 * at ingest as the extra DB_THUMB_EXTRA, in the image's own transaction, so
 * it is written, replaced and deleted with the image (and is in every copy
 * of data.mdb).  db_get_thumb: a malloc'd copy in *jpeg (free()).
 * UMG_ENOENT "no image N", or "image N has no thumbnail" for an image stored
 * before thumbnails were made (or by a writer that made none); a stored blob
 * that is not a JPEG is UMG_EINTERNAL (db_damaged). */
#define DB_THUMB_EXTRA "thumb"
int db_get_thumb(db_t *db, uint64_t image_id, void **jpeg, size_t *len);

typedef struct db_hit {
    uint64_t id;
    float score;   /* cosine similarity */
} db_hit;

typedef struct db_search_opts {
    int rerank;        /* -1 auto (approximate indexes re-rank), 0 off, 1 on */
    int candidates;    /* re-rank pool; 0 = k x rerank_candidates */
} db_search_opts;

/* The k most similar images or regions to query (dim floats).  hits holds k
 * entries; *n gets how many were found, best first, equal scores by
 * increasing id.  opts may be NULL.  Deleted ids are never returned. */
int db_search(db_t *db, int kind, const float *query, const db_search_opts *opts,
              db_hit *hits, int k, int *n);

/* Exact search within a subset: the k most similar images (kind
 * DB_KIND_IMAGE) among image_ids, or regions (DB_KIND_REGION) of those
 * images, scored from the stored vectors (the float16-rounded ones FAISS
 * holds, so the scores are the exact index's up to float summation order),
 * in one read transaction.  Best first; equal scores by increasing id.  Ids
 * that are gone are skipped.  What FAISS's IDSelector would do; the C API of
 * FAISS 1.7.3 (Debian 12) has no search with a selector.  hits holds k
 * entries (k >= 1); *n gets how many were found. */
int db_search_within(db_t *db, int kind, const float *query, const uint64_t *image_ids, size_t n_ids,
                     db_hit *hits, int k, int *n);

typedef struct db_stats {
    uint64_t images, regions;              /* in LMDB */
    uint64_t index_images, index_regions;  /* in FAISS */
    uint64_t seq;                          /* last log sequence number */
    uint64_t snapshot_seq[2];              /* covered by the last snapshots */
    uint64_t map_size, map_used;           /* LMDB bytes */
    char image_factory[128], region_factory[128];
    /* Whether each index agrees with LMDB: as many vectors as LMDB stores and
     * the same newest id (the largest id: ids only grow).  A difference seen
     * while a write is between its commit and its index update is checked
     * again under the writer mutex, so consistent == 0 is a real mismatch
     * (e.g. a failed index update, rebuilt at the next checkpoint). */
    uint64_t vectors[2];                   /* stored in LMDB: images, regions */
    uint64_t newest_id[2];                 /* in LMDB; 0 = none */
    int64_t index_newest_id[2];            /* in FAISS; -1 = none or not listable */
    int consistent;
    char mismatch[256];                    /* what differs, "" when consistent */
} db_stats;
int db_stats_get(db_t *db, db_stats *out);

/* Snapshot both indexes (atomic files recording the sequence they cover; an
 * index unchanged since its snapshot is not rewritten; writers wait only
 * while an index is copied in memory, not while the file is written), build
 * an index anew when db_build_pending says so (trained from the stored
 * vectors, from a read snapshot: writers and searches go on meanwhile, and
 * what they wrote is caught up from the log before the swap), and drop log
 * entries both snapshots cover (none while a build runs: it needs them). */
int db_checkpoint(db_t *db);

/* db_checkpoint_ex flags.  NO_BUILD: write the snapshots of the indexes as
 * they are and never train or build (for shutdown: a pending switch or
 * retrain is left to a later checkpoint; everything is in LMDB and the
 * snapshots record the log position they cover, so nothing is lost).  An
 * index whose update failed keeps its older snapshot (the log catches it up
 * at the next open). */
#define DB_CHECKPOINT_NO_BUILD 1
/* Checkpoints may run from several threads: one waits for another's
 * snapshot writes, not for its index build (an index already being built is
 * not built twice).  A failed build (UMG_ESHUTDOWN after db_cancel_builds)
 * does not stop the snapshots of the indexes in use from being written; its
 * error is returned. */
int db_checkpoint_ex(db_t *db, int flags);
/* 1 when db_checkpoint would build an index: an exact index that reached
 * approx_threshold (also one db_open rebuilt exact for want of a usable
 * snapshot), an automatic IVF index whose collection grew 4x since it was
 * trained, or a failed in-memory update.  Never because of searches. */
int db_build_pending(db_t *db);
/* Make index builds running in db_checkpoint (now or later, any thread)
 * give up at their next step with UMG_ESHUTDOWN; the indexes in use stay as
 * they were.  FAISS training itself is not interruptible, so a build in it
 * stops when that call returns.  For shutdown; not undone. */
void db_cancel_builds(db_t *db);

/* Named settings of the data directory, kept in LMDB meta beside the model
 * fingerprint (e.g. the server's region mode: a property of the stored
 * vectors, so it lives and moves with them).  Names 1..DB_MAX_SETTING_NAME
 * bytes, values UTF-8 text up to DB_MAX_SETTING bytes.  db_setting_get:
 * UMG_ENOENT when absent, UMG_ETOOBIG when buf (len bytes, NUL included) is
 * too small.  db_setting_put: one transaction; value NULL removes it. */
#define DB_MAX_SETTING_NAME 64
#define DB_MAX_SETTING 255
int db_setting_get(db_t *db, const char *name, char *buf, size_t len);
int db_setting_put(db_t *db, const char *name, const char *value);

/* The model a data directory was built with, without opening it for use:
 * name (heap, free()), fingerprint, dimension.  UMG_ENOENT if not a data dir. */
int db_probe(const char *dir, char **model_name, uint8_t fingerprint[32], int *dim);

#endif
