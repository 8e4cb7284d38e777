/* server_common.c - what server.c (the loop, connections, threads) and
 * server_ops.c (the operations' handlers) both use, calling neither: the log,
 * the clock, error answers, the queues that hand jobs between the loop, the
 * stage-1 workers and the encoder thread, the region mode names.  Calls run
 * one way: server.c -> server_ops.c -> server_common.c (server_internal.h). */
#include "server_internal.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "umg_error.h"

/* ---- logging -------------------------------------------------------------- */

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void srv_log(srv *s, int level, const char *fmt, ...)
{
    if (s && level < s->cfg.log_level) return;
    char line[2048];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int n = (int)strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
    n += snprintf(line + n, sizeof line - (size_t)n, ".%03ldZ %s ", ts.tv_nsec / 1000000L,
                  level_names[level < 0 ? 0 : level > 3 ? 3 : level]);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    n = m < 0 ? n : n + m;
    if (n > (int)sizeof line - 2) n = (int)sizeof line - 2;
    line[n++] = '\n';
    /* one write per line so that lines of different threads never interleave */
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
}

uint64_t srv_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* ---- jobs ----------------------------------------------------------------- */

void srv_job_error(srv_job *job, int code, const char *msg)
{
    if (code >= 0) code = UMG_EINTERNAL;
    if (!msg || !*msg) msg = umg_strerror(code);
    job->status = code;
    snprintf(job->errmsg, sizeof job->errmsg, "%s", msg);
    job->resp.size = 0;
    if (proto_response_error(&job->resp, job->id, code, msg)) job->resp.size = 0;
}

void srv_job_done_async(srv *s, srv_job *job)
{
    pthread_mutex_lock(&s->q_mu);
    job->next = s->done_head;
    s->done_head = job;
    pthread_mutex_unlock(&s->q_mu);
    uv_async_send(&s->done_async);
}

void srv_encoder_push(srv *s, srv_job *job)
{
    job->next = NULL;
    pthread_mutex_lock(&s->q_mu);
    if (s->q_tail) s->q_tail->next = job;
    else s->q_head = job;
    s->q_tail = job;
    s->q_len++;
    s->stage1_pending--;
    pthread_cond_signal(&s->q_cv);
    pthread_mutex_unlock(&s->q_mu);
}

void srv_stage1_push(srv *s, srv_job *job)
{
    job->next = NULL;
    pthread_mutex_lock(&s->q_mu);
    if (s->s1_tail) s->s1_tail->next = job;
    else s->s1_head = job;
    s->s1_tail = job;
    pthread_cond_signal(&s->s1_cv);
    pthread_mutex_unlock(&s->q_mu);
}

void srv_stage1_begin(srv *s)
{
    pthread_mutex_lock(&s->q_mu);
    s->stage1_pending++;
    pthread_mutex_unlock(&s->q_mu);
}

void srv_stage1_end(srv *s)
{
    pthread_mutex_lock(&s->q_mu);
    s->stage1_pending--;
    pthread_cond_signal(&s->q_cv);
    pthread_mutex_unlock(&s->q_mu);
}

/* ---- region modes --------------------------------------------------------- */

const char *srv_region_mode_name(int mode)
{
    switch (mode) {
    case SRV_REGION_MODE_AUTO: return "auto";
    case SRV_REGION_MODE_DENSE: return "dense";
    case SRV_REGION_MODE_CROP: return "crop";
    default: return "unknown";
    }
}

int srv_region_mode_parse(const char *name)
{
    if (!strcmp(name, "dense")) return SRV_REGION_MODE_DENSE;
    if (!strcmp(name, "crop")) return SRV_REGION_MODE_CROP;
    return -1;
}
