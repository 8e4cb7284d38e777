/* ingest.h - a photo's bytes in; its image record, region boxes, vectors and
 * patch tokens stored (engine.h).
 *
 * Three steps, so that a front end can spread them over its threads as the
 * server does (docs/server.md, "Ingest pipeline"):
 *   eng_ingest_begin        hashes the bytes; the same path with the same
 *                           content is a duplicate, answered at once (done)
 *   eng_ingest_prepare      CPU of one photo: decode, preprocess, propose
 *                           regions, cut their crops (region mode crop); any
 *                           thread, several at once
 *   eng_ingest_store_batch  encode up to cfg.batch prepared photos in one pass,
 *                           pool their regions, store them in one transaction
 *                           (rechecking the duplicate rule); ONE thread at a time
 * eng_ingest_one runs all three for one photo (tests, tools).
 *
 * Decode (eng_config.decode): ENG_DECODE_FAST lets a large JPEG decode shrunk
 * by its DCT (1/2 .. 1/8, the largest that keeps the ENC_FIT_PAD input's size,
 * enc_decode_opts.fast_for); the shrunk photo is resized straight to the size
 * the full-size one resizes to.  Either way the width and height stored are the
 * full-size (oriented) photo's, and region boxes are stored in its pixels:
 * proposals run on the decoded pixels and are scaled back (ingest.c,
 * boxes_to_full), and the patch grid is placed by the full size's geometry
 * (enc_preproc_geometry), the one search.c recomputes from the stored size.
 * ENG_DECODE_EXACT decodes at full resolution (bit-identical to the reference).
 *
 * Memory: a photo between eng_ingest_prepare's start and store_batch's encode
 * holds a fixed bound of bytes (its network input, boxes, crops: ingest.c,
 * prepared_bytes), reserved before its decode; prepare WAITS while the photos
 * admitted before hold cfg.queue_memory (always admitting one when none holds
 * any).  While decoding, a photo also holds its decoded RGB buffer (width x
 * height x 3 of the decoded size): as many of those as threads call prepare at
 * once.  Both are counted in eng_stats (now and peak).
 *
 * Ownership: an eng_ingest is the caller's (eng_ingest_free).  It copies
 * path and tags at begin; the photo's bytes (req->data) are borrowed until
 * eng_ingest_prepare returns (or, with take_data, owned by the engine). */
#ifndef UMG_ENGINE_INGEST_H
#define UMG_ENGINE_INGEST_H

#include <stddef.h>
#include <stdint.h>

#include "engine.h"

/* A string that need not be NUL-terminated (e.g. inside a request frame). */
typedef struct eng_str {
    const char *ptr;
    size_t len;
} eng_str;

typedef struct eng_ingest_req {
    const char *path;       /* the name stored (the key of "same path"); NUL-terminated */
    const uint8_t *data;    /* the encoded photo (JPEG or PNG) */
    size_t len;
    int bytes_private;      /* 1: the bytes were read for the client (ingest by path), who may not
                               be allowed to read them: decode errors quote none of them */
    int take_data;          /* 1: data is malloc'd and the engine's from now on: freed as soon
                               as the photo is decoded (a queued photo holds only its pixels) */
    int64_t mtime;          /* the file's mtime; 0 = the time of storing */
    const eng_str *tags;    /* n_tags tags stored with it */
    int n_tags;
} eng_ingest_req;

typedef struct eng_ingest_result {
    int rc;                 /* 0, or why this photo failed (msg says more) */
    char msg[300];
    uint64_t image_id;
    int regions;            /* region vectors stored (a duplicate: those it has) */
    int duplicate;          /* the same path held the same bytes: nothing stored */
    int replaced;           /* the path held other bytes: that image was replaced */
    int decoded_width, decoded_height; /* the decoded pixels (smaller than the stored width and
                               height when ENG_DECODE_FAST shrank a JPEG); 0 for a duplicate */
    /* CPU milliseconds of eng_ingest_prepare's steps (the calling thread's clock; benchmarks) */
    double cpu_ms_decode, cpu_ms_preprocess, cpu_ms_propose;
} eng_ingest_result;

typedef struct eng_ingest eng_ingest;

/* Start one photo.  Returns an error only for what stops the photo at once
 * (out of memory); *out is then NULL.  When eng_ingest_done(*out), the photo
 * is a duplicate and its result is final. */
int eng_ingest_begin(eng *e, const eng_ingest_req *req, eng_ingest **out);
int eng_ingest_done(const eng_ingest *ing);
/* Decode, preprocess, propose, crop.  An error is also recorded in the
 * result (done); the photo must then not be passed to store_batch. */
int eng_ingest_prepare(eng *e, eng_ingest *ing);
/* Encode and store ings[0..n) (n <= cfg.batch, each prepared, none done);
 * afterwards each is done with its own result (one photo's failure does not
 * fail the others).  One thread at a time. */
void eng_ingest_store_batch(eng *e, eng_ingest **ings, int n);
const eng_ingest_result *eng_ingest_result_of(const eng_ingest *ing);
void eng_ingest_free(eng_ingest *ing); /* NULL-safe */

/* begin + prepare + store_batch for one photo; the outcome in *out (also its
 * rc, returned).  Uses the store_batch thread's state: not at the same time
 * as eng_ingest_store_batch. */
int eng_ingest_one(eng *e, const eng_ingest_req *req, eng_ingest_result *out);

#endif
