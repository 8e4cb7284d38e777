/* text_lanes.h - text queries' encodes, combined, on "lanes": up to n_lanes
 * batches are encoded at once, each on its own run state.  A worker whose
 * query waits takes a free lane and every waiting query (up to
 * ENG_TEXT_BATCH, shared out when other lanes are free too) into one packed
 * pass, so concurrent queries share one stream of the weights; a lone query
 * is encoded at once unless batch_wait_us asks to linger for company.  With
 * several lanes a pass that starts while another lane is busy keeps its
 * products on its own thread(s) (enc_run_set_threads: threads / lanes), so
 * that the lanes use the cores side by side; a pass that starts alone uses
 * every thread, as one lane does.  docs/benchmarks.md, "Text lanes".
 *
 * eng_lanes_encode is called by many threads at once (each blocks until its
 * own query is encoded); create and close by one. */
#ifndef UMG_ENGINE_TEXT_LANES_H
#define UMG_ENGINE_TEXT_LANES_H

#include <stdint.h>

#include "enc.h"

#define ENG_TEXT_BATCH 16     /* texts per pass at most */
#define ENG_MAX_TEXT_LANES 64

typedef struct eng_lanes eng_lanes;

typedef struct eng_lanes_config {
    int n_lanes;              /* 1..ENG_MAX_TEXT_LANES */
    int threads;              /* the threads the passes share */
    int batch_wait_us;        /* a worker that finds a lane free waits up to this long for
                                 more queries to fill its batch; 0 = none */
    int test_pass_ms;         /* tests only: every pass lasts at least this long, so that
                                 passes overlap deterministically; 0 = off */
} eng_lanes_config;

/* Run states over model (borrowed, outlives the lanes).  *out: eng_lanes_close. */
int eng_lanes_create(const enc_model *model, const eng_lanes_config *cfg, eng_lanes **out);
void eng_lanes_close(eng_lanes *l); /* NULL-safe; no encode may be running */

/* Encode ids[0..n_ids) (tokenized) into vec [dim], batched with whatever other
 * text queries are waiting. */
int eng_lanes_encode(eng_lanes *l, const int32_t *ids, int n_ids, float *vec);

/* Texts and passes so far, in total and per lane (lanes[2*i] texts,
 * lanes[2*i+1] passes of lane i, for up to max_lanes lanes); returns n_lanes. */
int eng_lanes_counts(eng_lanes *l, uint64_t *texts, uint64_t *batches, uint64_t *lanes, int max_lanes);

#endif
