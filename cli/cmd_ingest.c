/* cmd_ingest.c - `umgdb ingest`: walk directories, send every JPEG/PNG to a
 * running server with several requests in flight on one connection, show
 * progress, list what was skipped and what failed.
 *
 * Photos are named by their absolute, resolved path (cli_walk_paths), so a
 * second run over the same tree sends the same names and the server answers
 * duplicate: true for files whose content did not change ("unchanged").
 *
 * Ctrl-C (SIGINT) stops sending, waits for the answers in flight (while they
 * keep coming, INTERRUPT_WAIT_S after the last, INTERRUPT_MAX_WAIT_S in all),
 * prints the summary and exits 130; a second Ctrl-C exits at once.  Leaving
 * answers unread would make the server write to a closed connection. */
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli_util.h"
#include "client.h"
#include "commands.h"
#include "umg_error.h"

#define MAX_TAGS 64
#define MAX_JOBS 256
/* Room in a frame for the request's other fields around the photo's bytes. */
#define FRAME_OVERHEAD (64u << 10)
/* How many skipped and failed files the human summary names (--json: all). */
#define LIST_SHOWN 20
/* After Ctrl-C: how long to wait for the next answer in flight, and in all. */
#define INTERRUPT_WAIT_S 3.0
#define INTERRUPT_MAX_WAIT_S 10.0
/* How often the receive loop looks at the Ctrl-C flag. */
#define RECV_SLICE_MS 200
/* Exit code after Ctrl-C (128 + SIGINT, as shells report it). */
#define EXIT_INTERRUPTED 130

typedef struct ingest_opts {
    cli_common c;
    bool by_path;
    long jobs;
    char *tags[MAX_TAGS + 1];
    int n_tags;
} ingest_opts;

enum outcome { PENDING = 0, INGESTED, UNCHANGED, FAILED };

typedef struct file_state {
    enum outcome outcome;
    char *reason;         /* FAILED: why (heap) */
    bool bytes_only;      /* path ingest was refused for it: send the bytes */
} file_state;

typedef struct slot {
    uint64_t id;          /* 0 = free */
    size_t file;
    bool by_path;
} slot;

typedef struct run {
    const ingest_opts *o;
    const cli_walk *w;
    file_state *st;
    slot *slots;
    int n_slots, in_flight;
    size_t next, done, failed, ingested, unchanged;
    uint64_t regions;     /* of the photos ingested in this run (not the unchanged ones) */
    bool interrupted;     /* Ctrl-C: stopped sending */
    bool path_works;      /* a path ingest has succeeded */
    bool path_off;        /* the server refused path ingest before any success: send bytes */
    cli_progress progress;
} run;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: umgdb ingest [OPTIONS] PATH...\n\n"
            "Send the photos (JPEG, PNG, HEIC, AVIF, WebP, TIFF, GIF; told apart by content) under\n"
            "each PATH (directories are walked recursively; names starting with '.' are skipped)\n"
            "to a running server.  Photos are stored under\n"
            "their absolute path; a photo whose path and content did not change since the last\n"
            "run is reported as unchanged.  Failed files are listed at the end and do not stop\n"
            "the run.\n\n"
            "options:\n"
            "  --by-path           send paths instead of bytes (the server reads the files; it\n"
            "                      must allow their directory with --allow-root; refused files\n"
            "                      are sent as bytes instead)\n"
            "  --jobs N, -j N      requests in flight (1..%d, default 32: twice the\n"
            "                      server's default encoder batch, so batches fill)\n"
            "  --tags A,B          tag every photo (repeatable; at most %d tags)\n"
            "  --json              print the summary (with every skipped and failed file and\n"
            "                      why) as JSON on stdout\n" CLI_COMMON_HELP
            "                      (ingest waits 300 s by default: a busy server queues photos)\n"
            "  -h, --help          this help\n\n"
            "A progress bar is drawn when stderr is a terminal, a summary is printed at the end,\n"
            "naming the files skipped (not an image) and failed (unreadable or corrupt), the\n"
            "first %d of each.  Ctrl-C stops sending, waits a few seconds for the answers in\n"
            "flight and prints the summary (exit 130); run again to send the rest.\n"
            "exit: 0 every photo ingested or unchanged, 1 some failed (the count is printed),\n"
            "      2 bad arguments, 3 server unreachable, refused, or the connection broke,\n"
            "      130 interrupted\n",
            MAX_JOBS, MAX_TAGS, LIST_SHOWN);
}

static void opts_free(ingest_opts *o)
{
    for (int i = 0; i < o->n_tags; i++)
        free(o->tags[i]);
}

/* -1 to go on, else the exit code. */
static int parse(int argc, char **argv, ingest_opts *o)
{
    static const struct option longopts[] = {
        CLI_COMMON_LONGOPTS,
        {"by-path", no_argument, NULL, 'p'},
        {"jobs", required_argument, NULL, 'j'},
        {"tags", required_argument, NULL, 't'},
        {"tag", required_argument, NULL, 't'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    cli_common_init(&o->c);
    o->c.timeout_ms = 300000;   /* per answer; encoding a queue of photos on a busy server takes time */
    o->jobs = 32;
    optind = 1;
    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, ":hj:", longopts, NULL)) != -1) {
        int r = cli_common_option("ingest", &o->c, opt, optarg);
        if (r < 0)
            return CLI_EXIT_USAGE;
        if (r > 0)
            continue;
        switch (opt) {
        case 'p': o->by_path = true; break;
        case 'j':
            if (cli_parse_long(optarg, 1, MAX_JOBS, &o->jobs)) {
                fprintf(stderr, "umgdb ingest: --jobs wants an integer in [1, %d], not '%s'\n", MAX_JOBS, optarg);
                return CLI_EXIT_USAGE;
            }
            break;
        case 't': {
            char **v;
            int n;
            if (cli_split_list(optarg, &v, &n)) {
                fprintf(stderr, "umgdb ingest: out of memory\n");
                return CLI_EXIT_FAILED;
            }
            if (!n || o->n_tags + n > MAX_TAGS) {
                fprintf(stderr, "umgdb ingest: %s\n", n ? "at most 64 tags" : "--tags wants tag names");
                cli_strv_free(v);
                return CLI_EXIT_USAGE;
            }
            for (int i = 0; i < n; i++)
                o->tags[o->n_tags++] = v[i];
            free(v);
            break;
        }
        case 'h': usage(stdout); return CLI_EXIT_OK;
        case ':':
            fprintf(stderr, "umgdb ingest: %s needs a value\n", argv[optind - 1]);
            return CLI_EXIT_USAGE;
        default:
            fprintf(stderr, "umgdb ingest: unknown option '%s' (see umgdb ingest --help)\n", argv[optind - 1]);
            return CLI_EXIT_USAGE;
        }
    }
    if (optind >= argc) {
        fprintf(stderr, "umgdb ingest: which photos? give at least one file or directory (see umgdb ingest --help)\n");
        return CLI_EXIT_USAGE;
    }
    return -1;
}

static void fail_file(run *r, size_t f, const char *fmt_code, const char *msg)
{
    file_state *s = &r->st[f];
    s->outcome = FAILED;
    size_t len = strlen(fmt_code) + strlen(msg) + 3;
    if ((s->reason = malloc(len)))
        snprintf(s->reason, len, "%s%s%s", fmt_code, *fmt_code ? ": " : "", msg);
    r->failed++;
    r->done++;
}

/* Queue the request for file f into a free slot.  A file that cannot even be
 * read fails here, without a request.  Returns 0, or a client error (fatal). */
static int submit(run *r, umg_client *cl, size_t f)
{
    const char *path = r->w->files[f].path;
    bool by_path = r->o->by_path && !r->path_off && !r->st[f].bytes_only;
    uint8_t *data = NULL;
    size_t len = 0;
    if (!by_path) {
        int rc = cli_read_file(path, PROTO_DEFAULT_MAX_FRAME - FRAME_OVERHEAD, &data, &len);
        if (rc) {
            /* umg_err_msg() starts with the path, which the list prints anyway. */
            const char *msg = umg_err_msg();
            size_t pl = strlen(path);
            if (!strncmp(msg, path, pl) && !strncmp(msg + pl, ": ", 2))
                msg += pl + 2;
            fail_file(r, f, "", msg);
            return 0;
        }
    }
    int s = 0;
    while (r->slots[s].id)
        s++;
    /* Bytes carry the file's modification time (the server reads it itself
     * for a path); the protocol takes 1..PROTO_MAX_MTIME, else it is left out
     * and the server records the ingest time. */
    int64_t mtime = r->w->files[f].mtime;
    bool send_mtime = !by_path && mtime >= 1 && mtime <= PROTO_MAX_MTIME;
    proto_writer w;
    uint64_t id;
    int rc = umg_client_begin(cl, &w, "ingest", (by_path ? 1 : 2) + send_mtime + (r->o->n_tags > 0), &id);
    if (rc) {
        free(data);
        return rc;
    }
    msgpack_packer *pk = &w.pk;
    int bad;
    if (by_path)
        bad = proto_pack_cstr(pk, "path") || proto_pack_cstr(pk, path);
    else
        bad = proto_pack_cstr(pk, "data") || msgpack_pack_bin(pk, len) || msgpack_pack_bin_body(pk, data, len) ||
              proto_pack_cstr(pk, "name") || proto_pack_cstr(pk, path);
    if (!bad && send_mtime)
        bad = proto_pack_cstr(pk, "mtime") || msgpack_pack_int64(pk, mtime);
    free(data);
    if (!bad && r->o->n_tags) {
        bad = proto_pack_cstr(pk, "tags") || msgpack_pack_array(pk, (size_t)r->o->n_tags);
        for (int i = 0; !bad && i < r->o->n_tags; i++)
            bad = proto_pack_cstr(pk, r->o->tags[i]);
    }
    if ((rc = umg_client_end(cl, &w)))
        return rc;
    if (bad)
        return umg_err_set(UMG_ENOMEM, "out of memory");
    r->slots[s] = (slot){.id = id, .file = f, .by_path = by_path};
    r->in_flight++;
    return 0;
}

static void note(run *r, const char *fmt, const char *a, const char *b)
{
    cli_progress_clear(&r->progress);
    fprintf(stderr, fmt, a, b);
}

/* Account for one answer.  Returns 1 if the file must be sent again (as bytes). */
static int handle(run *r, const slot *s, const proto_response *resp)
{
    size_t f = s->file;
    if (resp->ok) {
        bool dup = false;
        proto_obj_bool(umg_result_get(resp, "duplicate"), &dup);
        uint64_t regions = 0;
        if (!dup && umg_result_uint(resp, "regions", &regions))
            r->regions += regions;   /* an unchanged photo's regions were stored before */
        r->st[f].outcome = dup ? UNCHANGED : INGESTED;
        dup ? r->unchanged++ : r->ingested++;
        r->done++;
        if (s->by_path)
            r->path_works = true;
        return 0;
    }
    if (s->by_path && resp->code == UMG_EPERM) {
        /* The server does not read this file for us: send its bytes.  If path
         * ingest has never worked in this run it is probably off entirely. */
        r->st[f].bytes_only = true;
        if (!r->path_works && !r->path_off) {
            r->path_off = true;
            note(r, "umgdb ingest: the server refused ingest by path (%s); sending the photos' bytes instead%s\n",
                 resp->message, "");
        }
        return 1;
    }
    fail_file(r, f, resp->code_name, resp->message);
    return 0;
}

/* The failures in walk order: walk errors first (missing arguments,
 * unreadable directories), then the photos that failed.  *out malloc'd
 * (entries borrow their strings), NULL when there are none. */
static int collect_failures(const run *r, cli_walk_error **out, size_t *n)
{
    const cli_walk *w = r->w;
    *n = 0;
    *out = NULL;
    size_t total = w->n_errors + r->failed;
    if (!total)
        return 0;
    cli_walk_error *v = malloc(total * sizeof *v);
    if (!v)
        return umg_err_set(UMG_ENOMEM, "out of memory");
    for (size_t i = 0; i < w->n_errors; i++)
        v[(*n)++] = w->errors[i];
    for (size_t f = 0; f < w->n_files && *n < total; f++)
        if (r->st[f].outcome == FAILED)
            v[(*n)++] = (cli_walk_error){w->files[f].path, r->st[f].reason ? r->st[f].reason : "?"};
    *out = v;
    return 0;
}

/* [{"path", "reason"}, ...] */
static json_t *entries_json(const cli_walk_error *v, size_t n)
{
    json_t *a = json_array();
    for (size_t i = 0; a && i < n; i++)
        if (json_array_append_new(a, json_pack("{s:s, s:s}", "path", v[i].path, "reason", v[i].reason))) {
            json_decref(a);
            return NULL;
        }
    return a;
}

/* "title" then one "  path: reason" line per entry, the first LIST_SHOWN. */
static void print_entries(const char *title, const cli_walk_error *v, size_t n)
{
    if (!n)
        return;
    fprintf(stderr, "%s:\n", title);
    for (size_t i = 0; i < n && i < LIST_SHOWN; i++)
        fprintf(stderr, "  %s: %s\n", v[i].path, v[i].reason);
    if (n > LIST_SHOWN)
        fprintf(stderr, "  ... and %zu more (--json lists them all)\n", n - LIST_SHOWN);
}

static int print_summary(const run *r, double secs, bool json)
{
    const cli_walk *w = r->w;
    cli_walk_error *fails;
    size_t n_fails;
    if (collect_failures(r, &fails, &n_fails))
        return umg_err_set(UMG_ENOMEM, "out of memory");
    size_t unanswered = (size_t)r->in_flight;
    size_t not_sent = w->n_files - r->done - unanswered;
    double rate = secs > 0 ? (r->ingested + r->unchanged) / secs : 0;
    int rc = 0;
    if (json) {
        json_t *j = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:b, s:f, s:f, s:o, s:o}", "photos",
                              (json_int_t)w->n_files, "ingested", (json_int_t)r->ingested, "unchanged",
                              (json_int_t)r->unchanged, "failed", (json_int_t)n_fails, "skipped",
                              (json_int_t)w->n_skipped, "not_sent", (json_int_t)not_sent, "unanswered",
                              (json_int_t)unanswered, "regions", (json_int_t)r->regions, "interrupted",
                              r->interrupted, "seconds", secs, "photos_per_s", rate, "failures",
                              entries_json(fails, n_fails), "skipped_files",
                              entries_json(w->skipped, w->n_skipped));
        rc = cli_print_json(j);
        json_decref(j);
    } else {
        if (r->interrupted)
            printf("interrupted: ");
        printf("%zu photo%s: %zu ingested (%llu new regions), %zu unchanged, %zu failed", w->n_files,
               w->n_files == 1 ? "" : "s", r->ingested, (unsigned long long)r->regions, r->unchanged, n_fails);
        if (not_sent)
            printf(", %zu not sent", not_sent);
        if (unanswered)
            printf(", %zu sent without an answer (stored or not: run again)", unanswered);
        printf("; %zu skipped (not a photo); %.1f s, %.1f photos/s\n", w->n_skipped, secs, rate);
    }
    fflush(stdout);
    /* Each skipped and failed file with why, on stderr in walk order. */
    print_entries("skipped (not a photo)", w->skipped, w->n_skipped);
    print_entries("failed (unreadable or corrupt)", fails, n_fails);
    free(fails);
    return rc;
}

static volatile sig_atomic_t interrupt_count;

static void on_sigint(int sig)
{
    (void)sig;
    if (interrupt_count++) {
        /* Second Ctrl-C: leave now (the progress line ended first). */
        static const char nl[] = "\n";
        if (write(STDERR_FILENO, nl, 1) < 0) {
        }
        _exit(EXIT_INTERRUPTED);
    }
}

/* The next answer, checking for Ctrl-C every RECV_SLICE_MS: 0 and *out, 1
 * when interrupted (nothing received), or a client error (UMG_ETIMEOUT when
 * nothing came for timeout_ms since *last_answer). */
static int next_answer(umg_client *cl, int timeout_ms, double *last_answer, bool stop_on_interrupt,
                       proto_response **out)
{
    for (;;) {
        if (stop_on_interrupt && interrupt_count)
            return 1;
        int rc = umg_client_recv(cl, RECV_SLICE_MS, out);
        if (rc == 0) {
            *last_answer = cli_now();
            return 0;
        }
        if (rc != UMG_ETIMEOUT)
            return rc;
        if ((cli_now() - *last_answer) * 1000 >= timeout_ms)
            return umg_err_set(UMG_ETIMEOUT, "no answer within %d ms", timeout_ms);
    }
}

int cmd_ingest(int argc, char **argv)
{
    ingest_opts o = {0};
    int ex = parse(argc, argv, &o);
    if (ex >= 0) {
        opts_free(&o);
        return ex;
    }
    cli_walk w;
    int rc = cli_walk_paths((const char *const *)argv + optind, argc - optind, &w);
    if (rc) {
        fprintf(stderr, "umgdb ingest: %s\n", umg_err_msg());
        cli_walk_free(&w);
        opts_free(&o);
        return CLI_EXIT_FAILED;
    }
    umg_client *cl = NULL;
    run r = {.o = &o, .w = &w, .n_slots = (int)o.jobs};
    r.st = calloc(w.n_files ? w.n_files : 1, sizeof *r.st);
    r.slots = calloc((size_t)r.n_slots, sizeof *r.slots);
    if (!r.st || !r.slots) {
        fprintf(stderr, "umgdb ingest: out of memory\n");
        ex = CLI_EXIT_FAILED;
        goto out;
    }
    if ((ex = cli_connect("ingest", &o.c, &cl, NULL)))
        goto out;

    double start = cli_now();
    cli_progress_init(&r.progress, stderr, w.n_files, isatty(STDERR_FILENO) && !o.c.json);
    cli_progress_update(&r.progress, 0, w.n_errors, true);
    /* Requests to send again (path refused): a small LIFO of file indexes. */
    size_t *retry = calloc((size_t)r.n_slots + 1, sizeof *retry);
    size_t n_retry = 0;
    if (!retry) {
        fprintf(stderr, "umgdb ingest: out of memory\n");
        ex = CLI_EXIT_FAILED;
        goto out;
    }
    /* Ctrl-C from here on: stop sending, collect what is in flight, summarise. */
    /* SA_RESTART keeps stdio writes whole; poll() in the client returns
     * EINTR anyway, and the receive loop looks at the flag every slice. */
    struct sigaction sa = {.sa_handler = on_sigint, .sa_flags = SA_RESTART}, old_sa;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_sa);
    int fatal = 0;
    double last_answer = cli_now(), interrupted_at = 0, stop_at = 0;
    while (!fatal && (r.next < w.n_files || r.in_flight || n_retry)) {
        if (interrupt_count && !r.interrupted) {
            r.interrupted = true;
            interrupted_at = cli_now();
            stop_at = interrupted_at + INTERRUPT_WAIT_S;
            n_retry = 0;   /* files to send again (as bytes) are not sent */
            if (r.in_flight) {
                cli_progress_clear(&r.progress);
                fprintf(stderr, "umgdb ingest: stopping; waiting for the %d answer%s in flight (Ctrl-C again to "
                                "quit now)\n", r.in_flight, r.in_flight == 1 ? "" : "s");
            }
        }
        if (r.interrupted && (!r.in_flight || cli_now() >= stop_at))
            break;
        while (!fatal && !r.interrupted && r.in_flight < r.n_slots && (n_retry || r.next < w.n_files)) {
            size_t f = n_retry ? retry[--n_retry] : r.next++;
            fatal = submit(&r, cl, f);
        }
        cli_progress_update(&r.progress, r.done, r.failed + w.n_errors, false);
        if (fatal || !r.in_flight)
            continue;
        proto_response *resp;
        /* While stopping, wait only until stop_at for the answers in flight. */
        int wait_ms = r.interrupted ? (int)((stop_at - cli_now()) * 1000) + 1 : o.c.timeout_ms;
        if (r.interrupted)
            last_answer = cli_now();
        int got = next_answer(cl, wait_ms, &last_answer, !r.interrupted, &resp);
        if (got == 1 || (r.interrupted && got == UMG_ETIMEOUT))
            continue;   /* Ctrl-C (the loop's top takes it), or the wait after it is over */
        if ((fatal = got))
            break;
        int s = 0;
        while (s < r.n_slots && r.slots[s].id != resp->id)
            s++;
        if (s == r.n_slots) {
            /* id 0: an error the server could not tie to a request (e.g. a
             * frame over its size limit); it closes the connection after those. */
            note(&r, "umgdb ingest: server error: %s: %s\n", resp->code_name, resp->message);
            proto_response_free(resp);
            continue;
        }
        slot done = r.slots[s];
        r.slots[s].id = 0;
        r.in_flight--;
        if (r.interrupted)   /* answers still coming: wait a little longer */
            stop_at = fmin(cli_now() + INTERRUPT_WAIT_S, interrupted_at + INTERRUPT_MAX_WAIT_S);
        if (handle(&r, &done, resp))
            retry[n_retry++] = done.file;
        proto_response_free(resp);
    }
    if (interrupt_count)
        r.interrupted = true;   /* also when it came after the last answer */
    free(retry);
    double secs = cli_now() - start;
    cli_progress_update(&r.progress, r.done, r.failed + w.n_errors, true);
    if (r.interrupted)
        cli_progress_keep(&r.progress);   /* where it stopped stays on the screen */
    else
        cli_progress_clear(&r.progress);
    if (fatal) {
        const char *addr = cli_server_addr(o.c.server);
        fprintf(stderr, "umgdb ingest: %s the server at %s after %zu of %zu photos: %s\n",
                fatal == UMG_ETIMEOUT ? "no answer from" : "lost the connection to", addr, r.done, w.n_files,
                fatal == UMG_ETIMEOUT ? "timed out" : umg_err_msg());
    }
    if (print_summary(&r, secs, o.c.json))
        fprintf(stderr, "umgdb ingest: %s\n", umg_err_msg());
    size_t failed = r.failed + w.n_errors;
    if (fatal) {
        ex = CLI_EXIT_SERVER;
    } else if (r.interrupted) {
        fprintf(stderr, "umgdb ingest: interrupted after %zu of %zu photos\n", r.done, w.n_files);
        ex = EXIT_INTERRUPTED;
    } else if (failed) {
        fprintf(stderr, "umgdb ingest: %zu of %zu file%s failed\n", failed, w.n_files + w.n_errors,
                w.n_files + w.n_errors == 1 ? "" : "s");
        ex = CLI_EXIT_FAILED;
    } else {
        ex = CLI_EXIT_OK;
    }
    sigaction(SIGINT, &old_sa, NULL);
out:
    umg_client_close(cl);
    if (r.st)
        for (size_t f = 0; f < w.n_files; f++)
            free(r.st[f].reason);
    free(r.st);
    free(r.slots);
    cli_walk_free(&w);
    opts_free(&o);
    return ex;
}
