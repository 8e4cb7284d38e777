/* enc_prep.h - prepared photos, ahead of the encoder: a bounded producer/consumer
 * (issue 17, "decoding runs beside encoding").
 *
 * Items 0..n_items-1 (photos, in the caller's order) are grouped into batches of
 * `batch` consecutive items (the last one may be shorter).  Worker threads call
 * the caller's prepare function (typically: read, decode, preprocess into the
 * network's input tensor) for the items of the next batches while the caller
 * encodes an earlier one; the caller takes the batches strictly in order.
 *
 * Memory is bounded: at most n_slots batches of prepared tensors exist (the
 * ones the caller holds plus those being filled), and at most `threads` photos
 * are being prepared at once.  A worker that would run further ahead sleeps.
 *
 * Failures: the first item (in order) whose prepare fails ends the stream: its
 * batch comes out with the items before it (n) and the failure (failed, rc, err);
 * items after it are not prepared (workers may have done a few already: wasted,
 * never delivered).  Everything before the failing item is delivered, so a
 * caller printing in order prints exactly what a sequential loop would have.
 *
 * Threads: enc_prep_next / enc_prep_release / enc_prep_close may be called from
 * several consumer threads (each batch goes to exactly one of them); prepare is
 * called concurrently on `threads` worker threads for different items, so it
 * must be reentrant. */
#ifndef ENC_PREP_H
#define ENC_PREP_H

#include <stddef.h>

/* Fill pixels[item_floats] for item `index` (0 <= index < n_items).  0 on
 * success; a negative umg error code otherwise, with its message set by
 * umg_err_set on the calling thread (the pipe copies it). */
typedef int (*enc_prep_fn)(void *ctx, int index, float *pixels);

typedef struct enc_prep_config {
    int n_items;        /* >= 0 */
    int batch;          /* >= 1: items per batch */
    size_t item_floats; /* floats of one prepared item (3 * S * S) */
    int n_slots;        /* >= 1: batches of tensors that may exist at once (held + being filled) */
    int threads;        /* >= 1: worker threads calling prepare */
    enc_prep_fn prepare;
    void *ctx;          /* passed to prepare; must outlive the pipe */
} enc_prep_config;

typedef struct enc_prep enc_prep;

/* One batch, owned by the pipe; valid until enc_prep_release. */
typedef struct enc_prep_batch {
    int index;      /* batch number: items [index * batch, index * batch + n) */
    int first;      /* index * batch */
    int n;          /* prepared items, from first on (< the batch's size only after a failure) */
    float *pixels;  /* [n, item_floats] */
    int failed;     /* 1: item first + n failed (rc, err); no batch follows */
    int rc;
    const char *err; /* the failing prepare's umg_err_msg; "" when !failed */
    int slot_;      /* internal */
} enc_prep_batch;

/* Allocate the n_slots tensors and start the workers.  UMG_EINVAL for a bad
 * config, UMG_ENOMEM, UMG_EIO when no thread can be started (nothing is left
 * running on failure).  *out is NULL on failure. */
int enc_prep_start(const enc_prep_config *cfg, enc_prep **out);

/* The next batch in order, waiting until it is prepared: 1 and *b filled, or 0
 * when there is none left (all delivered, or a failed batch was delivered). */
int enc_prep_next(enc_prep *p, enc_prep_batch *b);

/* Give the batch's tensor back to the workers (any order, any consumer thread). */
void enc_prep_release(enc_prep *p, enc_prep_batch *b);

/* Stop early: workers claim no more items, enc_prep_next returns 0 from now on
 * (also to consumers waiting in it).  Does not wait; thread-safe; NULL-safe.
 * For consumers that must be joined before enc_prep_close frees the pipe. */
void enc_prep_cancel(enc_prep *p);

/* Stop the workers (each finishes the item in hand), join them, free everything.
 * Safe at any point (batches not taken are dropped; held ones need not be
 * released first, but must not be used after) and on NULL. */
void enc_prep_close(enc_prep *p);

#endif
