/* cmd_admin.c - `umgdb stats`, `umgdb get`, `umgdb delete`: one request to a
 * running server, its answer printed readably or as JSON. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli_util.h"
#include "client.h"
#include "commands.h"
#include "umg_error.h"

/* ---- shared: parse, connect, one request ---------------------------------- */

typedef struct target {
    uint64_t id;
    const char *path;   /* --path, or NULL for id */
} target;

static void usage_stats(FILE *out)
{
    fprintf(out, "usage: umgdb stats [OPTIONS]\n\n"
                 "Counts, index types, memory, uptime and model of a running server.\n\n"
                 "options:\n" CLI_COMMON_HELP
                 "  --json              print the server's answer as JSON\n"
                 "  -h, --help          this help\n\n"
                 "exit: 0 ok, 1 the server answered an error, 2 bad arguments, 3 server unreachable or refused\n");
}

static void usage_target(FILE *out, const char *cmd)
{
    bool del = !strcmp(cmd, "delete");
    fprintf(out, "usage: umgdb %s [OPTIONS] (ID | --path PATH)\n\n%s\n\n"
                 "options:\n"
                 "  --path PATH         the image stored under PATH; a relative PATH is made absolute\n"
                 "                      and resolved as `umgdb ingest` does when it stores a file\n"
                 "                      (also when the file is gone), else taken as it is\n" CLI_COMMON_HELP
                 "  --json              print the server's answer as JSON\n"
                 "  -h, --help          this help\n\n"
                 "exit: 0 ok, 1 not found or another error, 2 bad arguments, 3 server unreachable or refused\n",
            cmd,
            del ? "Delete an image, its regions and vectors from the server."
                : "Show an image's record: path, size, tags and its regions.");
}

/* Parse [OPTIONS] and, for get/delete, the target.  Returns -1 to go on, else
 * the exit code to return. */
static int parse(const char *cmd, int argc, char **argv, cli_common *c, target *t)
{
    static const struct option longopts[] = {
        CLI_COMMON_LONGOPTS,
        {"path", required_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    cli_common_init(c);
    optind = 1;
    opterr = 0;
    int opt;
    while ((opt = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        int r = cli_common_option(cmd, c, opt, optarg);
        if (r < 0)
            return CLI_EXIT_USAGE;
        if (r > 0)
            continue;
        switch (opt) {
        case 'p':
            if (!t) {
                fprintf(stderr, "umgdb %s: unknown option '--path'\n", cmd);
                return CLI_EXIT_USAGE;
            }
            t->path = optarg;
            break;
        case 'h':
            t ? usage_target(stdout, cmd) : usage_stats(stdout);
            return CLI_EXIT_OK;
        case ':':
            fprintf(stderr, "umgdb %s: %s needs a value\n", cmd, argv[optind - 1]);
            return CLI_EXIT_USAGE;
        default:
            fprintf(stderr, "umgdb %s: unknown option '%s' (see umgdb %s --help)\n", cmd, argv[optind - 1], cmd);
            return CLI_EXIT_USAGE;
        }
    }
    if (!t) {
        if (optind < argc) {
            fprintf(stderr, "umgdb %s: unexpected argument '%s'\n", cmd, argv[optind]);
            return CLI_EXIT_USAGE;
        }
        return -1;
    }
    int left = argc - optind;
    if (t->path) {
        if (left) {
            fprintf(stderr, "umgdb %s: give an ID or --path, not both\n", cmd);
            return CLI_EXIT_USAGE;
        }
        if (!*t->path) {
            fprintf(stderr, "umgdb %s: --path wants a non-empty path\n", cmd);
            return CLI_EXIT_USAGE;
        }
        return -1;
    }
    if (left != 1) {
        fprintf(stderr, "umgdb %s: %s (see umgdb %s --help)\n", cmd,
                left ? "give one image ID" : "which image? give its ID or --path PATH", cmd);
        return CLI_EXIT_USAGE;
    }
    if (cli_parse_u64(argv[optind], &t->id) || t->id == 0) {
        fprintf(stderr, "umgdb %s: '%s' is not an image ID (a positive integer); for a path use --path\n", cmd,
                argv[optind]);
        return CLI_EXIT_USAGE;
    }
    return -1;
}

/* Send op with the image id or path (or nothing: t NULL), wait for the
 * answer.  0 and *out (any response), or a client error. */
static int request(umg_client *cl, const cli_common *c, const char *op, const target *t, const char *path,
                   proto_response **out)
{
    proto_writer w;
    uint64_t id;
    int rc = umg_client_begin(cl, &w, op, t ? 1 : 0, &id);
    if (rc)
        return rc;
    bool bad = false;
    if (t && path)
        bad = proto_pack_cstr(&w.pk, "path") || proto_pack_cstr(&w.pk, path);
    else if (t)
        bad = proto_pack_cstr(&w.pk, "image_id") || msgpack_pack_uint64(&w.pk, t->id);
    /* umg_client_end checks the message and drops it if a pack call failed. */
    if ((rc = umg_client_end(cl, &w)))
        return rc;
    if (bad)
        return umg_err_set(UMG_ENOMEM, "cannot build the request: out of memory");
    return umg_client_wait(cl, id, c->timeout_ms, out);
}

/* Send op (with the target as its one argument, if any) and wait for the
 * answer.  A --path goes as ingest names files (cli_abs_path); when nothing
 * is stored under that name and it differs from what was typed, the path as
 * typed is tried too (a name stored by another client, e.g. "photo.jpg").
 * Returns 0 with *out (an ok response), or the exit code, reported. */
static int call(const char *cmd, const cli_common *c, const char *op, const target *t, proto_response **out)
{
    *out = NULL;
    char *resolved = NULL;
    if (t && t->path && cli_abs_path(t->path, &resolved)) {
        fprintf(stderr, "umgdb %s: %s\n", cmd, umg_err_msg());
        return CLI_EXIT_FAILED;
    }
    umg_client *cl;
    int ex = cli_connect(cmd, c, &cl, NULL);
    if (ex) {
        free(resolved);
        return ex;
    }
    proto_response *r = NULL;
    int rc = request(cl, c, op, t, resolved, &r);
    if (!rc && !r->ok && r->code == UMG_ENOENT && resolved && strcmp(resolved, t->path)) {
        proto_response_free(r);
        r = NULL;
        rc = request(cl, c, op, t, t->path, &r);
    }
    umg_client_close(cl);
    free(resolved);
    if (rc == UMG_ETIMEOUT || rc == UMG_ECONN)
        return cli_report_call(cmd, c, rc);
    if (rc) {
        fprintf(stderr, "umgdb %s: %s\n", cmd, umg_err_msg());
        return CLI_EXIT_FAILED;
    }
    if (!r->ok) {
        ex = cli_report_error(cmd, r);
        proto_response_free(r);
        return ex;
    }
    *out = r;
    return 0;
}

static int print_json_result(const char *cmd, const proto_response *r)
{
    json_t *j = cli_to_json(r->result);
    int rc = cli_print_json(j);
    json_decref(j);
    if (rc || fflush(stdout)) {
        fprintf(stderr, "umgdb %s: %s\n", cmd, rc ? umg_err_msg() : "writing the output failed");
        return CLI_EXIT_FAILED;
    }
    return CLI_EXIT_OK;
}

/* ---- stats ------------------------------------------------------------------ */

int cmd_stats(int argc, char **argv)
{
    cli_common c;
    int ex = parse("stats", argc, argv, &c, NULL);
    if (ex >= 0)
        return ex;
    proto_response *r;
    if ((ex = call("stats", &c, "stats", NULL, &r)))
        return ex;
    if (c.json) {
        ex = print_json_result("stats", r);
    } else {
        cli_print_flat(stdout, r->result, "");
        ex = fflush(stdout) ? CLI_EXIT_FAILED : CLI_EXIT_OK;
    }
    proto_response_free(r);
    return ex;
}

/* ---- get ---------------------------------------------------------------------- */

static void print_image(const proto_response *r)
{
    const msgpack_object *res = r->result;
    /* Everything but the regions as "key: value" lines, in the server's order. */
    if (res->type == MSGPACK_OBJECT_MAP) {
        for (uint32_t i = 0; i < res->via.map.size; i++) {
            const msgpack_object *k = &res->via.map.ptr[i].key;
            if (proto_obj_str_eq(k, "regions"))
                continue;
            char key[128];
            snprintf(key, sizeof key, "%.*s", k->type == MSGPACK_OBJECT_STR ? (int)k->via.str.size : 1,
                     k->type == MSGPACK_OBJECT_STR ? k->via.str.ptr : "?");
            const msgpack_object *v = &res->via.map.ptr[i].val;
            int64_t t;
            if ((!strcmp(key, "mtime") || !strcmp(key, "ingest_time")) && proto_obj_int(v, &t)) {
                /* seconds since the epoch, shown as a UTC date as well */
                time_t tt = (time_t)t;
                struct tm tm;
                char when[64];
                if (gmtime_r(&tt, &tm) && strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", &tm)) {
                    printf("%s: %s (%lld)\n", key, when, (long long)t);
                    continue;
                }
            }
            cli_print_flat(stdout, v, key);
        }
    }
    const msgpack_object *regs = proto_map_get(res, "regions");
    if (!regs || regs->type != MSGPACK_OBJECT_ARRAY)
        return;
    printf("regions: %u\n", regs->via.array.size);
    if (!regs->via.array.size)
        return;
    static const char *const hdr[] = {"region_id", "box (x,y wxh)", "score"};
    static const bool right[] = {true, false, true};
    cli_table *t = cli_table_new(3, hdr, right);
    if (!t)
        return;
    for (uint32_t i = 0; i < regs->via.array.size; i++) {
        const msgpack_object *g = &regs->via.array.ptr[i];
        uint64_t rid = 0;
        double box[4], score;
        char ids[32] = "", boxs[96] = "", scores[32] = "";
        if (proto_obj_uint(proto_map_get(g, "region_id"), &rid))
            snprintf(ids, sizeof ids, "%llu", (unsigned long long)rid);
        if (proto_obj_box(proto_map_get(g, "box"), box))
            cli_box_str(boxs, sizeof boxs, box);
        if (proto_obj_float(proto_map_get(g, "score"), &score))
            snprintf(scores, sizeof scores, "%.4f", score);
        const char *cells[] = {ids, boxs, scores};
        if (cli_table_row(t, cells))
            break;
    }
    cli_table_print(t, stdout);
    cli_table_free(t);
}

int cmd_get(int argc, char **argv)
{
    cli_common c;
    target t = {0};
    int ex = parse("get", argc, argv, &c, &t);
    if (ex >= 0)
        return ex;
    proto_response *r;
    if ((ex = call("get", &c, "get", &t, &r)))
        return ex;
    if (c.json) {
        ex = print_json_result("get", r);
    } else {
        print_image(r);
        ex = fflush(stdout) ? CLI_EXIT_FAILED : CLI_EXIT_OK;
    }
    proto_response_free(r);
    return ex;
}

/* ---- delete ------------------------------------------------------------------ */

int cmd_delete(int argc, char **argv)
{
    cli_common c;
    target t = {0};
    int ex = parse("delete", argc, argv, &c, &t);
    if (ex >= 0)
        return ex;
    proto_response *r;
    if ((ex = call("delete", &c, "delete", &t, &r)))
        return ex;
    if (c.json) {
        ex = print_json_result("delete", r);
    } else {
        uint64_t id = t.id;
        umg_result_uint(r, "image_id", &id);
        if (t.path)
            printf("deleted image %llu (%s)\n", (unsigned long long)id, t.path);
        else
            printf("deleted image %llu\n", (unsigned long long)id);
        ex = fflush(stdout) ? CLI_EXIT_FAILED : CLI_EXIT_OK;
    }
    proto_response_free(r);
    return ex;
}
