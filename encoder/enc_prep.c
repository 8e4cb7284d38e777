/* enc_prep.c - prepared photos ahead of the encoder (enc_prep.h).
 *
 * Items are claimed strictly in order (next_item), so "every item before f was
 * claimed" holds for any claimed f: that is what lets a failure stop all further
 * claims at once and still deliver everything before it.  Batch k fills slot
 * k % n_slots, which it may take only once the batch n_slots before it has been
 * released: the bound on tensors in memory. */
#include "enc_prep.h"
#include "umg_error.h"

#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PREP_MAX_THREADS 256

struct enc_prep {
    enc_prep_config cfg;
    int n_batches;
    float **slot_pixels; /* [n_slots][batch * item_floats] */
    int *slot_batch;     /* batch filling or held in the slot; -1: free */
    int *slot_done;      /* items of that batch finished (prepared or failed) */

    pthread_mutex_t mu;
    pthread_cond_t work_cv;  /* workers: a slot was released, or stop */
    pthread_cond_t ready_cv; /* consumers: an item finished, or stop */
    int mu_ok, work_ok, ready_ok;

    int next_item;    /* next item to claim */
    int next_deliver; /* next batch to hand out */
    int finished;     /* the failed batch was delivered: nothing follows */
    int stop;
    int fail_item;    /* first failing item; INT_MAX: none */
    int fail_rc;
    char fail_err[640];

    pthread_t threads[PREP_MAX_THREADS];
    int n_threads;
};

static int batch_size(const enc_prep *p, int k)
{
    int first = k * p->cfg.batch, left = p->cfg.n_items - first;
    return left < p->cfg.batch ? left : p->cfg.batch;
}

static void *worker_main(void *arg)
{
    enc_prep *p = arg;
    size_t per = p->cfg.item_floats;
    pthread_mutex_lock(&p->mu);
    while (!p->stop && p->fail_item == INT_MAX && p->next_item < p->cfg.n_items) {
        int i = p->next_item, k = i / p->cfg.batch, s = k % p->cfg.n_slots;
        if (p->slot_batch[s] != k) {
            if (p->slot_batch[s] != -1) { /* still held by batch k - n_slots */
                pthread_cond_wait(&p->work_cv, &p->mu);
                continue;
            }
            p->slot_batch[s] = k;
            p->slot_done[s] = 0;
        }
        p->next_item++;
        pthread_mutex_unlock(&p->mu);

        int rc = p->cfg.prepare(p->cfg.ctx, i, p->slot_pixels[s] + (size_t)(i - k * p->cfg.batch) * per);
        char err[sizeof p->fail_err];
        if (rc)
            snprintf(err, sizeof err, "%s", umg_err_msg()); /* this thread's message */

        pthread_mutex_lock(&p->mu);
        if (rc && i < p->fail_item) {
            p->fail_item = i;
            p->fail_rc = rc;
            memcpy(p->fail_err, err, sizeof err);
        }
        p->slot_done[s]++;
        pthread_cond_broadcast(&p->ready_cv);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

/* Whether batch k (the next to deliver) can go out; *n gets its prepared items. */
static int batch_ready(const enc_prep *p, int k, int *n)
{
    int s = k % p->cfg.n_slots, first = k * p->cfg.batch, end = first + batch_size(p, k);
    if (p->slot_batch[s] != k)
        return 0;
    if (p->fail_item >= end) {
        *n = end - first;
        return p->slot_done[s] == end - first;
    }
    /* The failure is in this batch (earlier batches went out complete): wait for
     * every item of it already claimed, so that an earlier item still in flight
     * cannot fail after the batch went out. */
    int claimed_end = p->next_item < end ? p->next_item : end;
    *n = p->fail_item - first;
    return p->slot_done[s] == claimed_end - first;
}

int enc_prep_next(enc_prep *p, enc_prep_batch *b)
{
    memset(b, 0, sizeof *b);
    b->err = "";
    pthread_mutex_lock(&p->mu);
    int k = 0, n = 0, got = 0;
    /* Re-read next_deliver after every wait: another consumer may have taken it. */
    while (!p->stop && !p->finished && (k = p->next_deliver) < p->n_batches) {
        if (batch_ready(p, k, &n)) {
            got = 1;
            break;
        }
        pthread_cond_wait(&p->ready_cv, &p->mu);
    }
    if (got) {
        int first = k * p->cfg.batch;
        p->next_deliver = k + 1;
        b->index = k;
        b->first = first;
        b->n = n;
        b->slot_ = k % p->cfg.n_slots;
        b->pixels = p->slot_pixels[b->slot_];
        if (p->fail_item < first + batch_size(p, k)) {
            b->failed = 1;
            b->rc = p->fail_rc;
            b->err = p->fail_err;
            p->finished = 1;
            pthread_cond_broadcast(&p->ready_cv); /* other consumers: nothing follows */
        }
    }
    pthread_mutex_unlock(&p->mu);
    return got;
}

void enc_prep_release(enc_prep *p, enc_prep_batch *b)
{
    if (!p || !b || !b->pixels)
        return;
    pthread_mutex_lock(&p->mu);
    p->slot_batch[b->slot_] = -1;
    pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->mu);
    b->pixels = NULL;
}

void enc_prep_cancel(enc_prep *p)
{
    if (!p || !p->ready_ok) /* half-built: no thread was started */
        return;
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->work_cv);
    pthread_cond_broadcast(&p->ready_cv);
    pthread_mutex_unlock(&p->mu);
}

void enc_prep_close(enc_prep *p)
{
    if (!p)
        return;
    enc_prep_cancel(p);
    for (int t = 0; t < p->n_threads; t++)
        pthread_join(p->threads[t], NULL);
    if (p->ready_ok)
        pthread_cond_destroy(&p->ready_cv);
    if (p->work_ok)
        pthread_cond_destroy(&p->work_cv);
    if (p->mu_ok)
        pthread_mutex_destroy(&p->mu);
    for (int s = 0; p->slot_pixels && s < p->cfg.n_slots; s++)
        free(p->slot_pixels[s]);
    free(p->slot_pixels);
    free(p->slot_batch);
    free(p->slot_done);
    free(p);
}

int enc_prep_start(const enc_prep_config *cfg, enc_prep **out)
{
    *out = NULL;
    if (!cfg || !cfg->prepare || cfg->n_items < 0 || cfg->batch < 1 || cfg->item_floats == 0 || cfg->n_slots < 1 ||
        cfg->threads < 1 || cfg->threads > PREP_MAX_THREADS ||
        cfg->item_floats > SIZE_MAX / sizeof(float) / (size_t)cfg->batch)
        return umg_err_set(UMG_EINVAL, "enc_prep: bad configuration");
    enc_prep *p = calloc(1, sizeof *p);
    if (!p)
        return umg_err_set(UMG_ENOMEM, "enc_prep: out of memory");
    p->cfg = *cfg;
    p->n_batches = (int)(((long)cfg->n_items + cfg->batch - 1) / cfg->batch);
    p->fail_item = INT_MAX;
    int rc = 0;
    p->slot_pixels = calloc((size_t)cfg->n_slots, sizeof *p->slot_pixels);
    p->slot_batch = malloc((size_t)cfg->n_slots * sizeof *p->slot_batch);
    p->slot_done = calloc((size_t)cfg->n_slots, sizeof *p->slot_done);
    if (!p->slot_pixels || !p->slot_batch || !p->slot_done) {
        rc = umg_err_set(UMG_ENOMEM, "enc_prep: out of memory");
        goto fail;
    }
    for (int s = 0; s < cfg->n_slots; s++) {
        p->slot_batch[s] = -1;
        p->slot_pixels[s] = malloc((size_t)cfg->batch * cfg->item_floats * sizeof(float));
        if (!p->slot_pixels[s]) {
            rc = umg_err_set(UMG_ENOMEM, "enc_prep: out of memory for %d batches of %d photos", cfg->n_slots,
                             cfg->batch);
            goto fail;
        }
    }
    p->mu_ok = pthread_mutex_init(&p->mu, NULL) == 0;
    p->work_ok = p->mu_ok && pthread_cond_init(&p->work_cv, NULL) == 0;
    p->ready_ok = p->work_ok && pthread_cond_init(&p->ready_cv, NULL) == 0;
    if (!p->ready_ok) {
        rc = umg_err_set(UMG_ENOMEM, "enc_prep: cannot create a lock");
        goto fail;
    }
    for (int t = 0; t < cfg->threads; t++)
        if (pthread_create(&p->threads[p->n_threads], NULL, worker_main, p) == 0)
            p->n_threads++;
    if (p->n_threads == 0 && cfg->n_items > 0) { /* fewer threads than asked still work */
        rc = umg_err_set(UMG_EIO, "enc_prep: cannot start a thread");
        goto fail;
    }
    *out = p;
    return 0;
fail:
    enc_prep_close(p);
    return rc;
}
