/* bench_textsearch.c - the peer of the server's single-client text query:
 * the same work in one process without the server, on the same data
 * directory and model: the text tower (eng_text_vector with no query cache,
 * through the same text lanes as `umgdb serve`'s defaults) and the index
 * search (eng_search, k = 10, granularity image: the index, the exact
 * re-rank, the hits' records), each timed alone, on the same texts.
 *
 *   bench_textsearch DATA_DIR MODEL_DIR TEXTS [--queries 200] [--start 0] [--threads 2]
 *                    [--precision fp32|fp16] [--index-threads 1]
 *
 * Texts: lines start .. start + queries of TEXTS (the first 10 are a warm-up,
 * not timed).  The data directory must not be open in a server (its lock).
 * Prints one JSON object: text_ms and search_ms (median and mean), their sum. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "engine.h"
#include "idx.h"
#include "search.h"
#include "umg_error.h"

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static void die(const char *what, int rc)
{
    fprintf(stderr, "bench_textsearch: %s: %s (%s)\n", what, umg_strerror(rc), umg_err_msg());
    exit(1);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: bench_textsearch DATA_DIR MODEL_DIR TEXTS [--queries 200] [--start 0] [--threads 2] "
                        "[--precision fp32|fp16] [--index-threads 1]\n");
        return 2;
    }
    const char *data = argv[1], *model_dir = argv[2], *texts_file = argv[3];
    long queries = 200, start = 0, threads = 2, index_threads = 1;
    int precision = ENC_PRECISION_FP32;
    for (int i = 4; i + 1 < argc; i += 2) {
        const char *f = argv[i], *v = argv[i + 1];
        if (!strcmp(f, "--precision")) {
            if (enc_precision_parse(v, &precision)) {
                fprintf(stderr, "bench_textsearch: --precision wants fp32 or fp16\n");
                return 2;
            }
        } else if (!strcmp(f, "--queries")) queries = atol(v);
        else if (!strcmp(f, "--start")) start = atol(v);
        else if (!strcmp(f, "--threads")) threads = atol(v);
        else if (!strcmp(f, "--index-threads")) index_threads = atol(v);
        else {
            fprintf(stderr, "bench_textsearch: unknown option %s\n", f);
            return 2;
        }
    }
    if (queries < 11 || start < 0 || threads < 1 || threads > 256 || index_threads < 0) {
        fprintf(stderr, "bench_textsearch: --queries >= 11, --threads 1..256\n");
        return 2;
    }
    /* the texts */
    FILE *f = fopen(texts_file, "r");
    if (!f) die(texts_file, UMG_ENOENT);
    char **texts = calloc((size_t)queries, sizeof *texts), *line = NULL;
    size_t lcap = 0;
    long n = 0, lineno = 0;
    ssize_t len;
    while (n < queries && (len = getline(&line, &lcap, f)) > 0) {
        if (lineno++ < start) continue;
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = 0;
        if (len) texts[n++] = strdup(line);
    }
    free(line);
    fclose(f);
    if (n < queries) {
        fprintf(stderr, "bench_textsearch: %s has %ld texts from line %ld, %ld wanted\n", texts_file, n, start, queries);
        return 1;
    }

    /* as `umgdb serve` sets them up (server/server.c: server_run) */
    enc_set_threads((int)threads);
    if (idx_set_threads((int)index_threads)) die("index threads", UMG_EINVAL);
    enc_model *m;
    enc_model_options mopt = {.precision = precision};
    int rc = enc_model_open_ex(model_dir, &mopt, &m);
    if (rc) die("model", rc);
    uint8_t fp[32];
    db_options o = eng_db_options(m, fp);
    db_t *db;
    if ((rc = db_open(data, &o, &db))) die(data, rc);
    eng_config ec = {.region_mode = ENG_REGION_MODE_DENSE, .regions = 0, .batch = 1, .threads = (int)threads,
                     .text_lanes = (int)threads, .query_cache = 0};
    eng *e;
    if ((rc = eng_create(m, db, &ec, &e))) die("engine", rc);

    int dim = eng_dim(e), timed = (int)queries - 10;
    float *vec = malloc((size_t)dim * sizeof *vec);
    double *t_text = malloc((size_t)timed * sizeof *t_text), *t_search = malloc((size_t)timed * sizeof *t_search);
    double sum_text = 0, sum_search = 0;
    for (long i = 0; i < queries; i++) {
        double t0 = now_ms();
        if ((rc = eng_text_vector(e, texts[i], strlen(texts[i]), vec))) die("text", rc);
        double t1 = now_ms();
        eng_search_req r = {.query = vec, .k = 10, .granularity = ENG_GRAN_IMAGE};
        eng_hits h;
        if ((rc = eng_search(e, &r, &h))) die("search", rc);
        double t2 = now_ms();
        if (h.n != 10) {
            fprintf(stderr, "bench_textsearch: %d hits for \"%s\", 10 wanted\n", h.n, texts[i]);
            return 1;
        }
        eng_hits_free(&h);
        if (i >= 10) {
            t_text[i - 10] = t1 - t0, t_search[i - 10] = t2 - t1;
            sum_text += t1 - t0, sum_search += t2 - t1;
        }
    }
    double mt = median(t_text, timed), ms = median(t_search, timed);
    db_stats st;
    if ((rc = db_stats_get(db, &st))) die("stats", rc);
    printf("{\"queries\": %d, \"text_ms\": %.3f, \"text_mean_ms\": %.3f, \"search_ms\": %.3f, \"search_mean_ms\": %.3f, "
           "\"sum_ms\": %.3f, \"images\": %llu, \"index\": \"%s\", \"precision\": \"%s\", \"threads\": %ld}\n",
           timed, mt, sum_text / timed, ms, sum_search / timed, mt + ms, (unsigned long long)st.images,
           st.image_factory, enc_precision_name(precision), threads);
    eng_close(e);
    db_close(db);
    enc_model_close(m);
    for (long i = 0; i < queries; i++) free(texts[i]);
    free(texts);
    free(vec);
    free(t_text);
    free(t_search);
    return 0;
}
