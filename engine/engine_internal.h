/* engine_internal.h - the engine's state, shared by engine.c, ingest.c and
 * search.c (not a public header). */
#ifndef UMG_ENGINE_INTERNAL_H
#define UMG_ENGINE_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include "engine.h"
#include "enc_regions.h"
#include "query_cache.h"
#include "text_lanes.h"

#define ENG_PATCH_TOKENS_EXTRA "patch_tokens" /* the db extra holding a photo's float16 patch tokens */

/* Run states for query images, shared by the threads that search. */
typedef struct eng_run_pool {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    enc_run **runs;
    float **patches;              /* a G*G*D buffer per run */
    int *busy;
    int n;
    int inited;
} eng_run_pool;

struct eng {
    eng_config cfg;
    enc_model *model;
    db_t *db;
    enc_preproc pad;              /* the model's preprocessing with ENC_FIT_PAD */
    float norm_lut[3][256];       /* 8-bit value -> normalized input, as enc_preprocess computes it */
    int dim, grid, image_size, patch_size;
    eng_run_pool runs;
    eng_lanes *lanes;
    eng_qcache *qcache;           /* NULL: off */
    /* eng_ingest_store_batch's own (one thread at a time) */
    enc_run *ingest_run;          /* max_batch = cfg.batch */
    void *ingest_scratch;
    pthread_mutex_t stats_mu;
    uint64_t ingested, ingest_batches;
    /* ingest memory (ingest.c; eng_stats): under mem_mu; mem_cv wakes prepares
     * waiting for room under cfg.queue_memory */
    pthread_mutex_t mem_mu;
    pthread_cond_t mem_cv;
    eng_ingest_mem mem;
};

int eng_pool_acquire(eng_run_pool *p);
void eng_pool_release(eng_run_pool *p, int i);

/* Patch tokens: stored per photo as float16, each token L2-normalized, in
 * the db extra ENG_PATCH_TOKENS_EXTRA (little-endian, grid*grid*dim).
 * eng_patch_tokens_encode: raw tokens [G*G, D] -> that blob (out: G*G*D).
 * eng_patch_tokens_load: the floats of a stored photo (malloc'd), or NULL
 * with *rc (UMG_ENOENT when the photo has none). */
void eng_patch_tokens_encode(const eng *e, const float *tokens, uint16_t *out);
float *eng_patch_tokens_load(eng *e, uint64_t image_id, int *rc);

/* A region's crop (region mode crop), resized as ENC_FIT_PAD resizes it, kept
 * in 8 bits until it is normalized into the encoder's input: a quarter of the
 * float input's size, so that prepared photos hold at most R * S * S * 3
 * bytes of crops each. */
typedef struct eng_crop {
    uint8_t *rgb;                 /* w * h * 3 */
    int w, h;                     /* size after resizing (the longer side is S) */
    int off_x, off_y;             /* its top-left corner in the S x S input */
} eng_crop;
int eng_crop_make(const eng *e, const enc_image *img, const float box[4], float cropped[4], eng_crop *out);
void eng_crop_pixels(const eng *e, const eng_crop *c, float *out);

#endif
