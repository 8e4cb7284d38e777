/* bench_query.c - query latency of a running server, closed or open loop.
 *
 * Closed loop (default): C clients, each on its own connection, each sending
 * its next query as soon as the last one is answered.  Latency from just
 * before the request is written to the answer's arrival.
 *
 *   bench_query --server ADDR --texts FILE [--clients 16] [--seconds 20] [--warmup 2]
 *               [--k 10] [--granularity image] [--token T] [--start 0]
 *
 * Open loop (--rate R): queries arrive as a Poisson process of R per second
 * (exponential gaps, seeded), whatever the server's speed; a pool of --conns
 * connections (default 64), each with its own thread, sends them.  A query's
 * latency runs from its SCHEDULED arrival to its answer, so time spent waiting
 * for a free connection, or in a server that has fallen behind, counts (no
 * coordinated omission); its service time (from the write) is reported apart.
 * Bounded: at most --count queries and --seconds of arrivals (after
 * --warmup s of arrivals that are answered but not measured); a query not
 * answered within 10 s, or still queued 10 s after the last arrival, counts
 * as an error and as infinitely slow in the percentiles.
 *
 *   bench_query --server ADDR --texts FILE --rate R [--count N] [--seconds 20] [--warmup 2]
 *               [--conns 64] [--zipf S] [--seed 1] [--start 0] [--k 10] ...
 *
 * Texts: one query per line of FILE.  The i-th query sent (over all clients)
 * asks line start + i: no text twice while the pool lasts (repeated_texts in
 * the output says whether it did; next_start is the first line not asked, for
 * the next run to start from).  With --zipf S, each query asks a line drawn
 * from a Zipf(S) law over the pool's ranks instead (rank r = line start + r):
 * a workload with repetition, for a query cache; repeated_texts is then its
 * measured repetition.
 * Errors: answers with ok = false, timeouts and broken connections (the
 * client reconnects) are counted, not timed.  One JSON object on stdout. */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client.h"
#include "umg_error.h"

#define QUERY_TIMEOUT_MS 10000
#define DRAIN_S 10.0          /* open loop: queued this long after the last arrival = an error */

static const char *server, *granularity = "image", *token;
static char **texts;
static size_t n_texts, start_line;
static int k = 10;
static double t_start, t_measure, t_end;

static double *zipf_cdf;      /* --zipf: the law's cumulative probabilities over the ranks */
static uint8_t *asked;        /* per line: asked already in this run */
static size_t n_asked, n_repeated, n_distinct;
static pthread_mutex_t draw_mu = PTHREAD_MUTEX_INITIALIZER;
static uint64_t rng = 0x9e3779b97f4a7c15ull;

static double uniform01(void)
{
    rng ^= rng >> 12, rng ^= rng << 25, rng ^= rng >> 27;
    return (((rng * 2685821657736338717ull) >> 11) + 0.5) / 9007199254740992.0;
}

/* The line the next query asks (any thread), counted for repeated_texts. */
static size_t next_line(void)
{
    pthread_mutex_lock(&draw_mu);
    size_t rank = n_asked;
    if (zipf_cdf) {
        double u = uniform01();
        size_t lo = 0, hi = n_texts - 1;
        while (lo < hi) {
            size_t mid = (lo + hi) / 2;
            if (zipf_cdf[mid] < u)
                lo = mid + 1;
            else
                hi = mid;
        }
        rank = lo;
    }
    size_t line = (start_line + rank) % n_texts;
    n_asked++;
    if (asked[line])
        n_repeated++;
    else
        asked[line] = 1, n_distinct++;
    pthread_mutex_unlock(&draw_mu);
    return line;
}

typedef struct worker {
    int idx, clients;
    pthread_t tid;
    double *lat;        /* ms, measured queries (open loop: from the scheduled arrival) */
    double *svc;        /* open loop: ms from the write */
    size_t n, cap;
    size_t errors, timeouts, reconnects, warm, failed_measured;
    char first_error[256];
} worker;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void sleep_until(double t)
{
    struct timespec ts = {(time_t)t, (long)((t - floor(t)) * 1e9)};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static umg_client *connect_client(void)
{
    umg_client *c = NULL;
    if (umg_client_connect(server, NULL, &c))
        return NULL;
    if (umg_client_hello(c, token, "bench_query", QUERY_TIMEOUT_MS, NULL)) {
        umg_client_close(c);
        return NULL;
    }
    return c;
}

static void record_error(worker *w, const char *what)
{
    w->errors++;
    if (!w->first_error[0])
        snprintf(w->first_error, sizeof w->first_error, "%s", what);
}

static void record(worker *w, double lat_ms, double svc_ms)
{
    if (w->n == w->cap) {
        w->cap = w->cap ? w->cap * 2 : 1024;
        double *nl = realloc(w->lat, w->cap * sizeof *nl), *ns = nl ? realloc(w->svc, w->cap * sizeof *ns) : NULL;
        if (!nl || !ns)
            abort();
        w->lat = nl, w->svc = ns;
    }
    w->lat[w->n] = lat_ms;
    w->svc[w->n++] = svc_ms;
}

/* One query on *c (reconnected after a failure).  0 and *t_sent, *t_done on
 * an ok answer; -1 after an error (recorded). */
static int ask(worker *w, umg_client **c, const char *text, double *t_sent, double *t_done)
{
    if (!*c && !(*c = connect_client())) {
        record_error(w, umg_err_msg());
        w->reconnects++;
        return -1;
    }
    proto_writer pw;
    uint64_t id;
    int rc = umg_client_begin(*c, &pw, "query", 3, &id);
    if (!rc) {
        proto_pack_cstr(&pw.pk, "text");
        proto_pack_cstr(&pw.pk, text);
        proto_pack_cstr(&pw.pk, "granularity");
        proto_pack_cstr(&pw.pk, granularity);
        proto_pack_cstr(&pw.pk, "k");
        msgpack_pack_uint32(&pw.pk, (uint32_t)k);
        rc = umg_client_end(*c, &pw);
    }
    *t_sent = now_s();
    proto_response *r = NULL;
    if (!rc)
        rc = umg_client_wait(*c, id, QUERY_TIMEOUT_MS, &r);
    *t_done = now_s();
    if (rc) {
        if (rc == UMG_ETIMEOUT)
            w->timeouts++;
        record_error(w, umg_err_msg());
        umg_client_close(*c);   /* a late answer would confuse the next wait */
        *c = NULL;
        w->reconnects++;
        return -1;
    }
    int ok = r->ok;
    if (!ok) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s: %s", r->code_name, r->message);
        record_error(w, msg);
    }
    proto_response_free(r);
    return ok ? 0 : -1;
}

/* ---- closed loop ---------------------------------------------------------- */

static void *run_closed(void *arg)
{
    worker *w = arg;
    umg_client *c = connect_client();
    while (now_s() < t_end) {
        double t0, t1;
        if (ask(w, &c, texts[next_line()], &t0, &t1)) {
            if (!c) {
                struct timespec ts = {0, 100000000};
                nanosleep(&ts, NULL);
            }
            continue;
        }
        if (t0 >= t_measure && t1 <= t_end)
            record(w, (t1 - t0) * 1000, (t1 - t0) * 1000);
        else
            w->warm++;
    }
    umg_client_close(c);
    return NULL;
}

/* ---- open loop ------------------------------------------------------------ */

typedef struct arrival {
    size_t line;
    double t_sched;
} arrival;

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    arrival *q;               /* ring of cap */
    size_t cap, head, n;
    int done;                 /* no more arrivals */
    double t_give_up;         /* after the last arrival: what is still queued then fails */
    size_t expired, expired_measured;
    double max_lag;           /* the dispatcher's worst lateness, s (the load generator's own health) */
} oq = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, 0, 0, 0, 0, 0, 0, 0, 0};

static void *run_open(void *arg)
{
    worker *w = arg;
    umg_client *c = connect_client();
    for (;;) {
        pthread_mutex_lock(&oq.mu);
        while (!oq.n && !oq.done)
            pthread_cond_wait(&oq.cv, &oq.mu);
        if (!oq.n) {
            pthread_mutex_unlock(&oq.mu);
            break;
        }
        arrival a = oq.q[oq.head];
        oq.head = (oq.head + 1) % oq.cap;
        oq.n--;
        int give_up = oq.done && now_s() > oq.t_give_up;
        if (give_up) {
            oq.expired++;
            oq.expired_measured += a.t_sched >= t_measure;
        }
        pthread_mutex_unlock(&oq.mu);
        if (give_up)
            continue;
        double t0, t1;
        int rc = ask(w, &c, texts[a.line], &t0, &t1);
        if (a.t_sched < t_measure)
            w->warm++;
        else if (rc)
            w->failed_measured++;
        else
            record(w, (t1 - a.t_sched) * 1000, (t1 - t0) * 1000);
    }
    umg_client_close(c);
    return NULL;
}

/* Arrivals at the scheduled times (Poisson process of rate per s) until count
 * or the end; returns how many were scheduled. */
static size_t dispatch(double rate, size_t count)
{
    size_t i = 0;
    double t = t_start;
    for (; i < count; i++) {
        t += -log(uniform01()) / rate;
        if (t >= t_end)
            break;
        size_t line = next_line();
        sleep_until(t);
        double lag = now_s() - t;
        pthread_mutex_lock(&oq.mu);
        if (lag > oq.max_lag)
            oq.max_lag = lag;
        if (oq.n == oq.cap) {   /* grow the ring, oldest first */
            size_t nc = oq.cap ? oq.cap * 2 : 4096;
            arrival *nq = malloc(nc * sizeof *nq);
            if (!nq)
                abort();
            for (size_t j = 0; j < oq.n; j++)
                nq[j] = oq.q[(oq.head + j) % oq.cap];
            free(oq.q);
            oq.q = nq, oq.cap = nc, oq.head = 0;
        }
        oq.q[(oq.head + oq.n++) % oq.cap] = (arrival){line, t};
        pthread_cond_signal(&oq.cv);
        pthread_mutex_unlock(&oq.mu);
    }
    pthread_mutex_lock(&oq.mu);
    oq.done = 1;
    oq.t_give_up = now_s() + DRAIN_S;
    pthread_cond_broadcast(&oq.cv);
    pthread_mutex_unlock(&oq.mu);
    return i;
}

/* ---- report ---------------------------------------------------------------- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile of sorted v[0..n) */
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
        printf("\"%s\": %s%s", key, isinf(v) ? "1e999" : "null", sep);
}

static void usage(void)
{
    fprintf(stderr, "usage: bench_query --server ADDR --texts FILE [--clients 16 | --rate R [--count N] [--conns 64] "
                    "[--zipf S] [--seed 1]] [--seconds 20] [--warmup 2] [--start 0] [--k 10] "
                    "[--granularity image] [--token T]\n");
}

int main(int argc, char **argv)
{
    const char *texts_file = NULL;
    int clients = 16, conns = 64;
    double seconds = 20, warmup = 2, rate = 0, zipf = 0;
    long count = 0, seed = 1, start = 0;
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
        else if (!strcmp(a, "--rate"))
            rate = atof(v);
        else if (!strcmp(a, "--count"))
            count = atol(v);
        else if (!strcmp(a, "--conns"))
            conns = atoi(v);
        else if (!strcmp(a, "--zipf"))
            zipf = atof(v);
        else if (!strcmp(a, "--seed"))
            seed = atol(v);
        else if (!strcmp(a, "--start"))
            start = atol(v);
        else {
            usage();
            return 2;
        }
    }
    int open_loop = rate > 0;
    if (!server || !texts_file || clients < 1 || clients > 1024 || !(seconds > 0) || !(warmup >= 0) || k < 1 ||
        rate < 0 || count < 0 || conns < 1 || conns > 1024 || zipf < 0 || start < 0) {
        fprintf(stderr, "bench_query: --server and --texts are required; --clients/--conns 1..1024, --seconds > 0, "
                        "--rate, --count, --zipf, --start >= 0\n");
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
            char **nt = realloc(texts, cap * sizeof *texts);
            if (!nt)
                abort();
            texts = nt;
        }
        texts[n_texts++] = strdup(line);
    }
    free(line);
    fclose(f);
    if (!n_texts) {
        fprintf(stderr, "bench_query: %s holds no texts\n", texts_file);
        return 1;
    }
    start_line = (size_t)start % n_texts;
    rng ^= (uint64_t)seed * 0xbf58476d1ce4e5b9ull;
    if (!(asked = calloc(n_texts, 1)))
        abort();
    if (zipf > 0) {   /* P(rank r) ~ 1 / (r + 1)^s over the pool */
        if (!(zipf_cdf = malloc(n_texts * sizeof *zipf_cdf)))
            abort();
        double acc = 0;
        for (size_t r = 0; r < n_texts; r++)
            zipf_cdf[r] = acc += pow((double)r + 1, -zipf);
        for (size_t r = 0; r < n_texts; r++)
            zipf_cdf[r] /= acc;
    }

    int nw = open_loop ? conns : clients;
    worker *ws = calloc((size_t)nw, sizeof *ws);
    if (!ws)
        abort();
    t_start = now_s() + (open_loop ? 0.5 : 0);   /* open loop: the connections are made first */
    t_measure = t_start + warmup;
    t_end = t_measure + seconds;
    for (int i = 0; i < nw; i++) {
        ws[i].idx = i;
        ws[i].clients = nw;
        pthread_create(&ws[i].tid, NULL, open_loop ? run_open : run_closed, &ws[i]);
    }
    size_t scheduled = 0;
    if (open_loop)
        scheduled = dispatch(rate, count ? (size_t)count : SIZE_MAX);
    size_t total = 0, errors = 0, timeouts = 0, reconnects = 0, failed = 0;
    const char *first_error = "";
    for (int i = 0; i < nw; i++) {
        pthread_join(ws[i].tid, NULL);
        total += ws[i].n;
        errors += ws[i].errors;
        timeouts += ws[i].timeouts;
        reconnects += ws[i].reconnects;
        failed += ws[i].failed_measured;
        if (!*first_error && ws[i].first_error[0])
            first_error = ws[i].first_error;
    }
    errors += oq.expired;
    failed += oq.expired_measured;
    /* failed measured queries count as infinitely slow: a lost query is worse than a late one */
    size_t nl = total + failed;
    double *all = malloc((nl ? nl : 1) * sizeof *all), *svc = malloc((total ? total : 1) * sizeof *svc);
    size_t n = 0, ns = 0;
    double sum = 0;
    for (int i = 0; i < nw; i++)
        for (size_t j = 0; j < ws[i].n; j++) {
            all[n++] = ws[i].lat[j];
            svc[ns++] = ws[i].svc[j];
            sum += ws[i].lat[j];
        }
    for (size_t j = 0; j < failed; j++)
        all[n++] = INFINITY;
    qsort(all, n, sizeof *all, cmp_double);
    qsort(svc, ns, sizeof *svc, cmp_double);
    if (open_loop)
        printf("{\"mode\": \"open\", \"rate\": %.3f, \"conns\": %d, \"scheduled\": %zu, \"measured\": %zu, ",
               rate, conns, scheduled, n);
    else
        printf("{\"mode\": \"closed\", \"clients\": %d, ", clients);
    printf("\"asked\": %zu, \"repeated_texts\": %zu, \"distinct_texts\": %zu, \"zipf\": %.3f, \"pool\": %zu, "
           "\"next_start\": %zu, ",
           n_asked, n_repeated, n_distinct, zipf, n_texts, zipf > 0 ? start_line : (start_line + n_asked) % n_texts);
    printf("\"seconds\": %.1f, \"queries\": %zu, ", seconds, total);
    json_num("qps", total / seconds, ", ");
    json_num("p50_ms", pct(all, n, 50), ", ");
    json_num("p90_ms", pct(all, n, 90), ", ");
    json_num("p99_ms", pct(all, n, 99), ", ");
    json_num("max_ms", n ? all[n - 1] : NAN, ", ");
    json_num("mean_ms", total ? sum / total : NAN, ", ");
    if (open_loop) {
        json_num("service_p50_ms", pct(svc, ns, 50), ", ");
        json_num("service_p99_ms", pct(svc, ns, 99), ", ");
        json_num("dispatch_lag_max_ms", oq.max_lag * 1000, ", ");
        printf("\"failed_measured\": %zu, \"expired\": %zu, ", failed, oq.expired);
    }
    printf("\"errors\": %zu, \"timeouts\": %zu, \"reconnects\": %zu, \"first_error\": \"", errors, timeouts,
           reconnects);
    for (const char *p = first_error; *p; p++)
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if ((unsigned char)*p >= 0x20)
            putchar(*p);
    printf("\", \"granularity\": \"%s\", \"k\": %d}\n", granularity, k);
    for (int i = 0; i < nw; i++) {
        free(ws[i].lat);
        free(ws[i].svc);
    }
    free(ws);
    free(all);
    free(svc);
    free(oq.q);
    free(asked);
    free(zipf_cdf);
    for (size_t i = 0; i < n_texts; i++)
        free(texts[i]);
    free(texts);
    return 0;
}
