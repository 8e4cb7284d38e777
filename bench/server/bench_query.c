/* bench_query.c - query latency of a running server under C concurrent
 * clients (closed loop: each client sends its next query as soon as the last
 * one is answered, on its own connection).
 *
 *   bench_query --server ADDR --texts FILE [--clients 16] [--seconds 20] [--warmup 2]
 *               [--k 10] [--granularity image] [--token T]
 *
 * Texts: one query per line of FILE; client c starts at line c * (lines / C)
 * and walks on, so concurrent clients ask different things.  Latency is
 * measured from just before the request is written to the answer's arrival,
 * for queries sent after --warmup seconds and before --seconds more.  Errors:
 * answers with ok = false, timeouts (10 s) and broken connections (the client
 * reconnects) are counted, not timed.  One JSON object on stdout. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client.h"
#include "umg_error.h"

#define QUERY_TIMEOUT_MS 10000

static const char *server, *granularity = "image", *token;
static char **texts;
static size_t n_texts;
static int k = 10;
static double t_start, t_measure, t_end;

typedef struct worker {
    int idx, clients;
    pthread_t tid;
    double *lat;        /* ms, measured queries */
    size_t n, cap;
    size_t errors, timeouts, reconnects, warm;
    char first_error[256];
} worker;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static umg_client *connect_client(worker *w)
{
    umg_client *c = NULL;
    if (umg_client_connect(server, NULL, &c))
        return NULL;
    if (umg_client_hello(c, token, "bench_query", QUERY_TIMEOUT_MS, NULL)) {
        umg_client_close(c);
        return NULL;
    }
    (void)w;
    return c;
}

static void record_error(worker *w, const char *what)
{
    w->errors++;
    if (!w->first_error[0])
        snprintf(w->first_error, sizeof w->first_error, "%s", what);
}

static void *run(void *arg)
{
    worker *w = arg;
    size_t line = n_texts * (size_t)w->idx / (size_t)w->clients;
    umg_client *c = connect_client(w);
    while (now_s() < t_end) {
        if (!c) {
            record_error(w, umg_err_msg());
            w->reconnects++;
            struct timespec ts = {0, 100000000};
            nanosleep(&ts, NULL);
            c = connect_client(w);
            continue;
        }
        const char *text = texts[line++ % n_texts];
        proto_writer pw;
        uint64_t id;
        int rc = umg_client_begin(c, &pw, "query", 3, &id);
        if (!rc) {
            proto_pack_cstr(&pw.pk, "text");
            proto_pack_cstr(&pw.pk, text);
            proto_pack_cstr(&pw.pk, "granularity");
            proto_pack_cstr(&pw.pk, granularity);
            proto_pack_cstr(&pw.pk, "k");
            msgpack_pack_uint32(&pw.pk, (uint32_t)k);
            rc = umg_client_end(c, &pw);
        }
        double t0 = now_s();
        proto_response *r = NULL;
        if (!rc)
            rc = umg_client_wait(c, id, QUERY_TIMEOUT_MS, &r);
        double t1 = now_s();
        if (rc) {
            if (rc == UMG_ETIMEOUT)
                w->timeouts++;
            record_error(w, umg_err_msg());
            umg_client_close(c);   /* a late answer would confuse the next wait */
            c = connect_client(w);
            w->reconnects++;
            continue;
        }
        if (!r->ok) {
            char msg[256];
            snprintf(msg, sizeof msg, "%s: %s", r->code_name, r->message);
            record_error(w, msg);
        } else if (t0 >= t_measure && t1 <= t_end) {
            if (w->n == w->cap) {
                w->cap = w->cap ? w->cap * 2 : 1024;
                double *nl = realloc(w->lat, w->cap * sizeof *nl);
                if (!nl)
                    abort();
                w->lat = nl;
            }
            w->lat[w->n++] = (t1 - t0) * 1000;
        } else {
            w->warm++;
        }
        proto_response_free(r);
    }
    umg_client_close(c);
    return NULL;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted v[0..n). */
static double pct(const double *v, size_t n, double p)
{
    if (!n)
        return NAN;
    size_t r = (size_t)ceil(p / 100 * n);
    return v[r ? r - 1 : 0];
}

static void json_num(const char *key, double v, const char *sep)
{
    if (isfinite(v))
        printf("\"%s\": %.3f%s", key, v, sep);
    else
        printf("\"%s\": null%s", key, sep);
}

int main(int argc, char **argv)
{
    const char *texts_file = NULL;
    int clients = 16;
    double seconds = 20, warmup = 2;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc) {
            fprintf(stderr, "bench_query: %s needs a value\n", argv[i]);
            return 2;
        }
        const char *a = argv[i], *v = argv[++i];
        if (!strcmp(a, "--server"))
            server = v;
        else if (!strcmp(a, "--texts"))
            texts_file = v;
        else if (!strcmp(a, "--clients"))
            clients = atoi(v);
        else if (!strcmp(a, "--seconds"))
            seconds = atof(v);
        else if (!strcmp(a, "--warmup"))
            warmup = atof(v);
        else if (!strcmp(a, "--k"))
            k = atoi(v);
        else if (!strcmp(a, "--granularity"))
            granularity = v;
        else if (!strcmp(a, "--token"))
            token = v;
        else {
            fprintf(stderr, "usage: bench_query --server ADDR --texts FILE [--clients 16] [--seconds 20] "
                            "[--warmup 2] [--k 10] [--granularity image] [--token T]\n");
            return 2;
        }
    }
    if (!server || !texts_file || clients < 1 || clients > 1024 || !(seconds > 0) || !(warmup >= 0) || k < 1) {
        fprintf(stderr, "bench_query: --server and --texts are required; --clients 1..1024, --seconds > 0\n");
        return 2;
    }
    FILE *f = fopen(texts_file, "r");
    if (!f) {
        perror(texts_file);
        return 1;
    }
    size_t cap = 0;
    char *line = NULL;
    size_t lcap = 0;
    ssize_t len;
    while ((len = getline(&line, &lcap, f)) > 0) {
        while (len && (line[len - 1] == '\n' || line[len - 1] == '\r'))
            line[--len] = 0;
        if (!len)
            continue;
        if (n_texts == cap) {
            cap = cap ? cap * 2 : 256;
            texts = realloc(texts, cap * sizeof *texts);
        }
        texts[n_texts++] = strdup(line);
    }
    free(line);
    fclose(f);
    if (!n_texts) {
        fprintf(stderr, "bench_query: %s holds no texts\n", texts_file);
        return 1;
    }

    worker *ws = calloc((size_t)clients, sizeof *ws);
    t_start = now_s();
    t_measure = t_start + warmup;
    t_end = t_measure + seconds;
    for (int i = 0; i < clients; i++) {
        ws[i].idx = i;
        ws[i].clients = clients;
        pthread_create(&ws[i].tid, NULL, run, &ws[i]);
    }
    size_t total = 0, errors = 0, timeouts = 0, reconnects = 0;
    const char *first_error = "";
    for (int i = 0; i < clients; i++) {
        pthread_join(ws[i].tid, NULL);
        total += ws[i].n;
        errors += ws[i].errors;
        timeouts += ws[i].timeouts;
        reconnects += ws[i].reconnects;
        if (!*first_error && ws[i].first_error[0])
            first_error = ws[i].first_error;
    }
    double *all = malloc((total ? total : 1) * sizeof *all);
    size_t n = 0;
    double sum = 0;
    for (int i = 0; i < clients; i++)
        for (size_t j = 0; j < ws[i].n; j++) {
            all[n++] = ws[i].lat[j];
            sum += ws[i].lat[j];
        }
    qsort(all, n, sizeof *all, cmp_double);
    printf("{\"clients\": %d, \"seconds\": %.1f, \"queries\": %zu, ", clients, seconds, n);
    json_num("qps", n / seconds, ", ");
    json_num("p50_ms", pct(all, n, 50), ", ");
    json_num("p90_ms", pct(all, n, 90), ", ");
    json_num("p99_ms", pct(all, n, 99), ", ");
    json_num("max_ms", n ? all[n - 1] : NAN, ", ");
    json_num("mean_ms", n ? sum / n : NAN, ", ");
    printf("\"errors\": %zu, \"timeouts\": %zu, \"reconnects\": %zu, \"first_error\": \"", errors, timeouts,
           reconnects);
    for (const char *p = first_error; *p; p++)
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if ((unsigned char)*p >= 0x20)
            putchar(*p);
    printf("\", \"granularity\": \"%s\", \"k\": %d}\n", granularity, k);
    for (int i = 0; i < clients; i++)
        free(ws[i].lat);
    free(ws);
    free(all);
    for (size_t i = 0; i < n_texts; i++)
        free(texts[i]);
    free(texts);
    return 0;
}
