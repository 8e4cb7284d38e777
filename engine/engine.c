/* engine.c - the engine's life cycle, its run states for query images, and
 * the stored patch tokens' float16 codec (engine.h). */
#include "engine_internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "umg_error.h"
#include "umg_half.h"

size_t eng_ingest_scratch_size(const eng *e); /* ingest.c */

int eng_dim(const eng *e) { return e->dim; }
int eng_grid(const eng *e) { return e->grid; }
int eng_region_mode(const eng *e) { return e->cfg.region_mode; }
const enc_model *eng_model(const eng *e) { return e->model; }

int eng_pool_acquire(eng_run_pool *p)
{
    pthread_mutex_lock(&p->mu);
    for (;;) {
        for (int i = 0; i < p->n; i++)
            if (!p->busy[i]) {
                p->busy[i] = 1;
                pthread_mutex_unlock(&p->mu);
                return i;
            }
        pthread_cond_wait(&p->cv, &p->mu);
    }
}

void eng_pool_release(eng_run_pool *p, int i)
{
    pthread_mutex_lock(&p->mu);
    p->busy[i] = 0;
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

int eng_create(enc_model *model, db_t *db, const eng_config *cfg, eng **out)
{
    *out = NULL;
    if (!model || !db || !cfg || cfg->batch < 1 || cfg->threads < 1 || cfg->regions < 0 || cfg->text_lanes < 1 ||
        cfg->text_lanes > ENG_MAX_TEXT_LANES || cfg->query_cache < 0 || cfg->query_cache > ENG_QCACHE_MAX ||
        (cfg->region_mode != ENG_REGION_MODE_DENSE && cfg->region_mode != ENG_REGION_MODE_CROP) ||
        (cfg->decode != ENG_DECODE_EXACT && cfg->decode != ENG_DECODE_FAST) || cfg->test_store_batch_ms < 0)
        return umg_err_set(UMG_EINVAL, "engine: bad configuration");
    eng *e = calloc(1, sizeof *e);
    if (!e) return umg_err_set(UMG_ENOMEM, "out of memory");
    e->cfg = *cfg;
    e->model = model;
    e->db = db;
    pthread_mutex_init(&e->stats_mu, NULL);
    pthread_mutex_init(&e->mem_mu, NULL);
    pthread_cond_init(&e->mem_cv, NULL);
    const enc_config *mc = enc_model_config(model);
    e->dim = enc_model_dim(model);
    e->grid = enc_model_grid(model);
    e->image_size = mc->image_size;
    e->patch_size = mc->patch_size;
    e->pad = *enc_model_preproc(model);
    e->pad.fit = ENC_FIT_PAD;
    /* enc_preprocess's ToTensor + Normalize, in the same float32 order, for
     * crops resized when prepared and normalized when encoded */
    for (int c = 0; c < 3; c++)
        for (int v = 0; v < 256; v++) e->norm_lut[c][v] = ((float)v / 255.0f - e->pad.mean[c]) / e->pad.std[c];

    int rc = 0;
    eng_run_pool *p = &e->runs;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->inited = 1;
    int n = cfg->threads;
    p->runs = calloc((size_t)n, sizeof *p->runs);
    p->patches = calloc((size_t)n, sizeof *p->patches);
    p->busy = calloc((size_t)n, sizeof *p->busy);
    if (!p->runs || !p->patches || !p->busy) rc = umg_err_set(UMG_ENOMEM, "out of memory");
    for (int i = 0; !rc && i < n; i++) {
        if ((rc = enc_run_create(model, 1, &p->runs[i]))) break;
        p->n = i + 1;
        p->patches[i] = malloc((size_t)e->grid * e->grid * e->dim * sizeof(float));
        if (!p->patches[i]) rc = umg_err_set(UMG_ENOMEM, "out of memory");
    }
    eng_lanes_config lc = {.n_lanes = cfg->text_lanes,
                           .threads = cfg->threads,
                           .batch_wait_us = cfg->text_batch_wait_us,
                           .test_pass_ms = cfg->test_text_pass_ms};
    if (!rc) rc = eng_lanes_create(model, &lc, &e->lanes);
    if (!rc) rc = eng_qcache_create(cfg->query_cache, e->dim, &e->qcache);
    if (!rc) rc = enc_run_create(model, cfg->batch, &e->ingest_run);
    if (!rc && !(e->ingest_scratch = malloc(eng_ingest_scratch_size(e))))
        rc = umg_err_set(UMG_ENOMEM, "out of memory for the encoder's batch buffers");
    if (rc) {
        eng_close(e);
        return rc;
    }
    *out = e;
    return 0;
}

void eng_close(eng *e)
{
    if (!e) return;
    eng_run_pool *p = &e->runs;
    if (p->inited) {
        for (int i = 0; i < p->n; i++) {
            enc_run_close(p->runs[i]);
            free(p->patches[i]);
        }
        pthread_mutex_destroy(&p->mu);
        pthread_cond_destroy(&p->cv);
    }
    free(p->runs);
    free(p->patches);
    free(p->busy);
    eng_lanes_close(e->lanes);
    eng_qcache_close(e->qcache);
    enc_run_close(e->ingest_run);
    free(e->ingest_scratch);
    pthread_mutex_destroy(&e->stats_mu);
    pthread_mutex_destroy(&e->mem_mu);
    pthread_cond_destroy(&e->mem_cv);
    free(e);
}

void eng_stats_get(eng *e, eng_stats *out)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&e->stats_mu);
    out->ingested = e->ingested;
    out->ingest_batches = e->ingest_batches;
    pthread_mutex_unlock(&e->stats_mu);
    pthread_mutex_lock(&e->mem_mu);
    out->ingest_mem = e->mem;
    pthread_mutex_unlock(&e->mem_mu);
    uint64_t lanes[2 * ENG_MAX_TEXT_LANES];
    out->n_lanes = eng_lanes_counts(e->lanes, &out->texts, &out->text_batches, lanes, ENG_MAX_TEXT_LANES);
    for (int i = 0; i < out->n_lanes; i++) out->lanes[i].texts = lanes[2 * i], out->lanes[i].batches = lanes[2 * i + 1];
    eng_qcache_counts_get(e->qcache, &out->query_cache);
}

void eng_patch_tokens_encode(const eng *e, const float *pt, uint16_t *h)
{
    size_t GG = (size_t)e->grid * e->grid, D = (size_t)e->dim;
    /* each token L2-normalized, then float16: heatmaps are cosines */
    for (size_t c = 0; c < GG; c++) {
        const float *t = pt + c * D;
        double ss = 0;
        for (size_t d = 0; d < D; d++) ss += (double)t[d] * t[d];
        float inv = ss > 0 ? (float)(1.0 / sqrt(ss)) : 0.f;
        for (size_t d = 0; d < D; d++) h[c * D + d] = umg_f32_to_f16(t[d] * inv);
    }
}

float *eng_patch_tokens_load(eng *e, uint64_t image_id, int *rc)
{
    void *blob;
    size_t len;
    size_t want = (size_t)e->grid * e->grid * e->dim;
    *rc = db_get_extra(e->db, image_id, ENG_PATCH_TOKENS_EXTRA, &blob, &len);
    if (*rc) return NULL;
    if (len != want * 2) {
        free(blob);
        *rc = umg_err_set(UMG_EFORMAT, "image %llu: patch tokens have %zu bytes, want %zu",
                          (unsigned long long)image_id, len, want * 2);
        return NULL;
    }
    float *out = malloc(want * sizeof(float));
    if (!out) {
        free(blob);
        *rc = umg_err_set(UMG_ENOMEM, "out of memory");
        return NULL;
    }
    const uint8_t *b = blob;
    for (size_t i = 0; i < want; i++) out[i] = umg_f16_to_f32((uint16_t)(b[2 * i] | (b[2 * i + 1] << 8)));
    free(blob);
    return out;
}

db_options eng_db_options(const enc_model *model, uint8_t fp[32])
{
    enc_model_fingerprint(model, fp);
    db_options o = db_options_default();
    o.fingerprint = fp;
    o.model_name = enc_model_name(model);
    o.dim = enc_model_dim(model);
    return o;
}
