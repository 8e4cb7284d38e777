/* text_lanes.c - text queries encoded in shared passes (text_lanes.h). */
#include "text_lanes.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "umg_error.h"

typedef struct eng_lanes_req eng_lanes_req;

typedef struct eng_lane {
    enc_run *run;                 /* max_batch = ENG_TEXT_BATCH */
    float *embeds;                /* [ENG_TEXT_BATCH, dim] */
    int busy;                     /* a worker is encoding a batch on it (or lingering) */
    uint64_t batches, texts;      /* counts, for stats and tests */
} eng_lane;

struct eng_lanes {
    eng_lanes_config cfg;
    int dim;
    pthread_mutex_t mu;
    pthread_cond_t linger_cv;     /* lingering workers count arrivals on it */
    eng_lane *lanes;
    int n_lanes, free_lanes;
    int lingering;                /* workers in the batch_wait_us linger */
    eng_lanes_req *head, *tail;   /* waiting, oldest first */
    int waiting;                  /* requests in head..tail */
    uint64_t batches, texts;      /* counts over all lanes, for the log and tests */
    int per_lane_threads;         /* a lane's thread cap while another lane is busy (0 = none) */
};

/* One text query waiting for a text lane (lives on its worker's stack). */
struct eng_lanes_req {
    const int32_t *ids;
    int n_ids;
    float *vec;
    pthread_cond_t cv;            /* its worker sleeps on it: woken alone, not with every waiter */
    int done, rc;
    char msg[256];
    eng_lanes_req *next;
};

int eng_lanes_create(const enc_model *model, const eng_lanes_config *cfg, eng_lanes **out)
{
    *out = NULL;
    if (cfg->n_lanes < 1 || cfg->n_lanes > ENG_MAX_TEXT_LANES || cfg->threads < 1)
        return umg_err_set(UMG_EINVAL, "text lanes: %d lanes on %d threads", cfg->n_lanes, cfg->threads);
    eng_lanes *b = calloc(1, sizeof *b);
    if (!b) return umg_err_set(UMG_ENOMEM, "out of memory");
    b->cfg = *cfg;
    b->dim = enc_model_dim(model);
    pthread_mutex_init(&b->mu, NULL);
    pthread_condattr_t ca; /* the linger's deadline must not move with the wall clock */
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&b->linger_cv, &ca);
    pthread_condattr_destroy(&ca);
    int lanes = cfg->n_lanes;
    if (!(b->lanes = calloc((size_t)lanes, sizeof *b->lanes))) {
        eng_lanes_close(b);
        return umg_err_set(UMG_ENOMEM, "out of memory");
    }
    /* one lane keeps a single pass over every thread; several share the threads out */
    int per_lane = lanes > 1 ? (cfg->threads / lanes > 0 ? cfg->threads / lanes : 1) : 0;
    for (int i = 0; i < lanes; i++) {
        eng_lane *l = &b->lanes[i];
        int rc = enc_run_create(model, ENG_TEXT_BATCH, &l->run);
        if (rc) {
            eng_lanes_close(b);
            return rc;
        }
        b->n_lanes = i + 1;
        if (!(l->embeds = malloc((size_t)ENG_TEXT_BATCH * b->dim * sizeof(float)))) {
            eng_lanes_close(b);
            return umg_err_set(UMG_ENOMEM, "out of memory");
        }
    }
    b->free_lanes = b->n_lanes;
    b->per_lane_threads = per_lane;
    *out = b;
    return 0;
}

void eng_lanes_close(eng_lanes *b)
{
    if (!b) return;
    for (int i = 0; i < b->n_lanes; i++) {
        enc_run_close(b->lanes[i].run);
        free(b->lanes[i].embeds);
    }
    free(b->lanes);
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->linger_cv);
    free(b);
}

int eng_lanes_counts(eng_lanes *b, uint64_t *texts, uint64_t *batches, uint64_t *lanes, int max_lanes)
{
    pthread_mutex_lock(&b->mu);
    *texts = b->texts;
    *batches = b->batches;
    int n = b->n_lanes < max_lanes ? b->n_lanes : max_lanes;
    for (int i = 0; i < n; i++) lanes[2 * i] = b->lanes[i].texts, lanes[2 * i + 1] = b->lanes[i].batches;
    pthread_mutex_unlock(&b->mu);
    return n;
}

/* Wake the owners of the first few waiting requests, as many as there are
 * free lanes, so that each free lane finds a worker to take it.  Under b->mu. */
static void lanes_kick(eng_lanes *b)
{
    eng_lanes_req *q = b->head;
    for (int i = 0; i < b->free_lanes && q; i++, q = q->next) pthread_cond_signal(&q->cv);
}

/* A worker that finds a lane free takes it and the oldest waiting requests
 * (its own among them or not; ENG_TEXT_BATCH at most, and its share when
 * other lanes are free too, so that a burst spreads over the lanes), encodes
 * them in one enc_encode_ids_batch, hands each its vector, and goes again
 * until its own is done.  Workers without a lane sleep, each on its
 * request's own condition variable, until their request is done or a lane
 * is there for them. */
int eng_lanes_encode(eng_lanes *b, const int32_t *ids, int n_ids, float *vec)
{
    eng_lanes_req me = {.ids = ids, .n_ids = n_ids, .vec = vec};
    pthread_cond_init(&me.cv, NULL);
    pthread_mutex_lock(&b->mu);
    if (b->tail) b->tail->next = &me;
    else b->head = &me;
    b->tail = &me;
    b->waiting++;
    if (b->lingering) pthread_cond_broadcast(&b->linger_cv); /* they count arrivals */
    while (!me.done) {
        if (!b->free_lanes || !b->head) {
            pthread_cond_wait(&me.cv, &b->mu);
            continue;
        }
        eng_lane *lane = NULL;
        for (int i = 0; i < b->n_lanes && !lane; i++)
            if (!b->lanes[i].busy) lane = &b->lanes[i];
        /* alone: every thread (a lone query as fast as with one lane); beside another pass: its share.
         * A pass that started alone keeps its helpers if another starts meanwhile; that one
         * then computes on its own thread (the encoder never waits for busy helpers). */
        if (b->per_lane_threads) enc_run_set_threads(lane->run, b->free_lanes == b->n_lanes ? 0 : b->per_lane_threads);
        lane->busy = 1;
        b->free_lanes--;
        int take = ENG_TEXT_BATCH;
        if (b->cfg.batch_wait_us > 0 && b->waiting < ENG_TEXT_BATCH) {
            /* linger, lane reserved, until the batch is full or the wait is over */
            struct timespec until;
            clock_gettime(CLOCK_MONOTONIC, &until);
            long ns = until.tv_nsec + (long)b->cfg.batch_wait_us * 1000L;
            until.tv_sec += ns / 1000000000L;
            until.tv_nsec = ns % 1000000000L;
            b->lingering++;
            while (b->waiting < ENG_TEXT_BATCH &&
                   pthread_cond_timedwait(&b->linger_cv, &b->mu, &until) != ETIMEDOUT) {
            }
            b->lingering--;
        } else if (b->n_lanes > 1) {
            /* this lane's share of the waiting requests, as if every lane took as many: a free lane
             * wakes for the rest, a busy one takes them when it is done.  Balanced batches end
             * sooner than one big batch on one thread beside a small one on the other (a pass
             * costs about its texts' tokens on its lane's thread) */
            int share = (b->waiting + b->n_lanes - 1) / b->n_lanes;
            if (share < take) take = share;
        }
        eng_lanes_req *batch[ENG_TEXT_BATCH];
        const int32_t *bids[ENG_TEXT_BATCH];
        int blen[ENG_TEXT_BATCH], n = 0;
        while (b->head && n < take) {
            eng_lanes_req *q = b->head;
            b->head = q->next;
            batch[n] = q, bids[n] = q->ids, blen[n] = q->n_ids, n++;
            b->waiting--;
        }
        if (!b->head) b->tail = NULL;
        if (n == 0) { /* other lanes took them all while this one lingered */
            lane->busy = 0;
            b->free_lanes++;
            continue;
        }
        lanes_kick(b);
        b->batches++;
        b->texts += (uint64_t)n;
        lane->batches++;
        lane->texts += (uint64_t)n;
        pthread_mutex_unlock(&b->mu);
        /* the owners sleep until done is set under the lock: their requests stay valid */
        umg_err_clear();
        int rc = enc_encode_ids_batch(lane->run, bids, blen, n, lane->embeds);
        if (b->cfg.test_pass_ms) {
            struct timespec hold = {b->cfg.test_pass_ms / 1000, (long)(b->cfg.test_pass_ms % 1000) * 1000000L};
            while (nanosleep(&hold, &hold) && errno == EINTR) {
            }
        }
        for (int i = 0; i < n; i++) {
            batch[i]->rc = rc;
            if (rc) snprintf(batch[i]->msg, sizeof batch[i]->msg, "%s", umg_err_msg());
            else memcpy(batch[i]->vec, lane->embeds + (size_t)i * b->dim, (size_t)b->dim * sizeof(float));
        }
        pthread_mutex_lock(&b->mu);
        for (int i = 0; i < n; i++) {
            batch[i]->done = 1;
            if (batch[i] != &me) pthread_cond_signal(&batch[i]->cv);
        }
        lane->busy = 0;
        b->free_lanes++;
        if (me.done) lanes_kick(b); /* someone else takes the lane this worker leaves */
    }
    pthread_mutex_unlock(&b->mu);
    pthread_cond_destroy(&me.cv);
    return me.rc ? umg_err_set(me.rc, "%s", me.msg) : 0;
}
