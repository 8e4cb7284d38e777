/* cmd_query.c - `umgdb query`: text-to-image (or -region, -pixel) search on a
 * running server; a table, JSON, and optionally an HTML page of the hits. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_util.h"
#include "client.h"
#include "commands.h"
#include "umg_error.h"

#define MAX_TAGS 64

typedef struct query_opts {
    cli_common c;
    const char *granularity;
    bool refine;              /* "refine": "pixel" */
    long k;
    const char *html;
    const char *path_prefix;
    char *tags[MAX_TAGS + 1];
    int n_tags;
    double min_score;
    bool has_min_score;
    char *text;               /* the words joined by spaces (heap) */
} query_opts;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: umgdb query [OPTIONS] TEXT...\n\n"
            "Search a running server's photos by text.  The words of TEXT are joined by spaces.\n\n"
            "options:\n"
            "  --regions           search regions: each hit is a box inside a photo\n"
            "  --heatmap           pixel granularity: where in each photo the text matches\n"
            "  --refine            regions, each photo's boxes re-ranked by how well they fit\n"
            "                      where in the photo the text matches (its heatmap); implies\n"
            "                      --regions (docs/regions.md, \"Pixel-level refinement\")\n"
            "  -k N                how many hits (1..%d, default %d)\n"
            "  --path-prefix P     only photos whose stored path starts with P\n"
            "  --tag T             only photos tagged T (repeatable, or T1,T2: all must match)\n"
            "  --min-score S       only hits scoring at least S (cosine similarity)\n"
            "  --html FILE         also write a results page: each hit's photo with its box\n"
            "                      (and heatmap) drawn over it, scaled with the picture.  Photos\n"
            "                      are linked, not embedded, by their path relative to FILE's\n"
            "                      directory (../ as needed), so the page works from file:// as\n"
            "                      long as the photos stay where they were ingested from\n"
            "  --json              print the server's answer as JSON instead of a table\n" CLI_COMMON_HELP
            "  -h, --help          this help\n\n"
            "exit: 0 ok (also when nothing matched), 1 the server answered an error,\n"
            "      2 bad arguments, 3 server unreachable or refused\n",
            PROTO_MAX_K, PROTO_DEFAULT_K);
}

static void opts_free(query_opts *o)
{
    for (int i = 0; i < o->n_tags; i++)
        free(o->tags[i]);
    free(o->text);
}

static int add_tags(query_opts *o, const char *arg)
{
    char **v;
    int n;
    if (cli_split_list(arg, &v, &n)) {
        fprintf(stderr, "umgdb query: out of memory\n");
        return -1;
    }
    if (!n || o->n_tags + n > MAX_TAGS) {
        fprintf(stderr, "umgdb query: %s\n", n ? "at most 64 tags" : "--tag wants a tag name");
        cli_strv_free(v);
        return -1;
    }
    for (int i = 0; i < n; i++)
        o->tags[o->n_tags++] = v[i];
    free(v);   /* the strings moved to o->tags */
    return 0;
}

/* -1 to go on, else the exit code. */
static int parse(int argc, char **argv, query_opts *o)
{
    static const struct option longopts[] = {
        CLI_COMMON_LONGOPTS,
        {"regions", no_argument, NULL, 'r'},
        {"heatmap", no_argument, NULL, 'H'},
        {"refine", no_argument, NULL, 'R'},
        {"html", required_argument, NULL, 'o'},
        {"path-prefix", required_argument, NULL, 'P'},
        {"tag", required_argument, NULL, 'T'},
        {"min-score", required_argument, NULL, 'm'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    cli_common_init(&o->c);
    o->k = PROTO_DEFAULT_K;
    optind = 1;
    opterr = 0;
    bool regions = false, heatmap = false;
    int opt;
    /* Options may come before or after the words; text starting with '-'
     * goes after "--". */
    while ((opt = getopt_long(argc, argv, ":hk:", longopts, NULL)) != -1) {
        int r = cli_common_option("query", &o->c, opt, optarg);
        if (r < 0)
            return CLI_EXIT_USAGE;
        if (r > 0)
            continue;
        switch (opt) {
        case 'r': regions = true; break;
        case 'H': heatmap = true; break;
        case 'R': o->refine = regions = true; break;
        case 'k':
            if (cli_parse_long(optarg, 1, PROTO_MAX_K, &o->k)) {
                fprintf(stderr, "umgdb query: -k wants an integer in [1, %d], not '%s'\n", PROTO_MAX_K, optarg);
                return CLI_EXIT_USAGE;
            }
            break;
        case 'o':
            if (!*optarg) {
                fprintf(stderr, "umgdb query: --html wants a file name\n");
                return CLI_EXIT_USAGE;
            }
            o->html = optarg;
            break;
        case 'P': o->path_prefix = optarg; break;
        case 'T':
            if (add_tags(o, optarg))
                return CLI_EXIT_USAGE;
            break;
        case 'm':
            if (cli_parse_double(optarg, &o->min_score)) {
                fprintf(stderr, "umgdb query: --min-score wants a number, not '%s'\n", optarg);
                return CLI_EXIT_USAGE;
            }
            o->has_min_score = true;
            break;
        case 'h': usage(stdout); return CLI_EXIT_OK;
        case ':':
            fprintf(stderr, "umgdb query: %s needs a value\n", argv[optind - 1]);
            return CLI_EXIT_USAGE;
        default:
            fprintf(stderr, "umgdb query: unknown option '%s' (see umgdb query --help)\n", argv[optind - 1]);
            return CLI_EXIT_USAGE;
        }
    }
    if (regions && heatmap) {
        fprintf(stderr, "umgdb query: %s and --heatmap are two granularities; pick one\n",
                o->refine ? "--refine (region boxes)" : "--regions");
        return CLI_EXIT_USAGE;
    }
    o->granularity = regions ? "region" : heatmap ? "pixel" : "image";
    size_t len = 0;
    for (int i = optind; i < argc; i++)
        len += strlen(argv[i]) + 1;
    if (optind >= argc || len <= (size_t)(argc - optind)) {
        fprintf(stderr, "umgdb query: what to search for? give the TEXT (see umgdb query --help)\n");
        return CLI_EXIT_USAGE;
    }
    if (!(o->text = malloc(len))) {
        fprintf(stderr, "umgdb query: out of memory\n");
        return CLI_EXIT_FAILED;
    }
    o->text[0] = 0;
    for (int i = optind; i < argc; i++) {
        if (i > optind)
            strcat(o->text, " ");
        strcat(o->text, argv[i]);
    }
    return -1;
}

static int pack_request(umg_client *cl, const query_opts *o, uint64_t *id)
{
    size_t nfilters = (o->path_prefix != NULL) + (o->n_tags > 0) + o->has_min_score;
    proto_writer w;
    int rc = umg_client_begin(cl, &w, "query", 3 + (nfilters > 0) + o->refine, id);
    if (rc)
        return rc;
    msgpack_packer *pk = &w.pk;
    int bad = proto_pack_cstr(pk, "text") || proto_pack_cstr(pk, o->text) ||
              proto_pack_cstr(pk, "granularity") || proto_pack_cstr(pk, o->granularity) ||
              proto_pack_cstr(pk, "k") || msgpack_pack_uint32(pk, (uint32_t)o->k);
    if (!bad && o->refine)
        bad = proto_pack_cstr(pk, "refine") || proto_pack_cstr(pk, "pixel");
    if (!bad && nfilters) {
        bad = proto_pack_cstr(pk, "filters") || msgpack_pack_map(pk, nfilters);
        if (!bad && o->path_prefix)
            bad = proto_pack_cstr(pk, "path_prefix") || proto_pack_cstr(pk, o->path_prefix);
        if (!bad && o->n_tags) {
            bad = proto_pack_cstr(pk, "tags") || msgpack_pack_array(pk, (size_t)o->n_tags);
            for (int i = 0; !bad && i < o->n_tags; i++)
                bad = proto_pack_cstr(pk, o->tags[i]);
        }
        if (!bad && o->has_min_score)
            bad = proto_pack_cstr(pk, "min_score") || msgpack_pack_double(pk, o->min_score);
    }
    /* umg_client_end checks the message and drops it if a pack call failed. */
    rc = umg_client_end(cl, &w);
    return rc ? rc : bad ? umg_err_set(UMG_ENOMEM, "out of memory") : 0;
}

/* ---- hits ------------------------------------------------------------------- */

typedef struct hit {
    uint64_t image_id;
    char *path;
    double score;
    bool has_box;
    double box[4];
    uint32_t width, height;
    cli_heatmap heat;
    double *heat_values;
    bool has_heat;
} hit;

/* The hits of the answer, decoded by the protocol's one hits decoder
 * (proto_hits.h), as this command prints and draws them. */
static int parse_hits(const proto_response *r, hit **out, int *n)
{
    *out = NULL;
    *n = 0;
    proto_hits ph;
    int rc = proto_hits_decode(r->result, &ph);
    if (rc)
        return rc;
    hit *v = calloc(ph.n ? (size_t)ph.n : 1, sizeof *v);
    if (!v) {
        proto_hits_free(&ph);
        return umg_err_set(UMG_ENOMEM, "out of memory");
    }
    *out = v;
    size_t cells = (size_t)ph.grid * ph.grid;
    for (int i = 0; i < ph.n; i++) {
        const proto_hit *p = &ph.hits[i];
        hit *h = &v[i];
        (*n)++;
        h->image_id = p->image_id;
        h->score = p->score;
        h->width = p->width;
        h->height = p->height;
        h->has_box = p->has_box;
        for (int c = 0; c < 4; c++)
            h->box[c] = p->box[c];
        if (!(h->path = strdup(p->path)))
            rc = umg_err_set(UMG_ENOMEM, "out of memory");
        if (!rc && p->heat) {
            if (!(h->heat_values = malloc(cells * sizeof *h->heat_values))) {
                rc = umg_err_set(UMG_ENOMEM, "out of memory");
                break;
            }
            for (size_t c = 0; c < cells; c++)
                h->heat_values[c] = p->heat[c];
            h->heat = (cli_heatmap){.rows = ph.grid, .cols = ph.grid, .values = h->heat_values, .has_box = true,
                                    .box = {p->extent[0], p->extent[1], p->extent[2], p->extent[3]}};
            h->has_heat = true;
        }
        if (rc)
            break;
    }
    proto_hits_free(&ph);
    return rc;
}

static void hits_free(hit *v, int n)
{
    for (int i = 0; v && i < n; i++) {
        free(v[i].path);
        free(v[i].heat_values);
    }
    free(v);
}

static void print_table(const hit *v, int n, const query_opts *o)
{
    if (!n) {
        printf("no hits\n");
        return;
    }
    bool boxes = false, heat = false;
    for (int i = 0; i < n; i++) {
        boxes |= v[i].has_box;
        heat |= v[i].has_heat;
    }
    const char *hdr[6] = {"rank", "score", "image_id", "path"};
    bool right[6] = {true, true, true, false};
    int nc = 4;
    if (boxes) {
        right[nc] = false;
        hdr[nc++] = "box (x,y wxh)";
    }
    if (heat) {
        right[nc] = false;
        hdr[nc++] = "heatmap peak (x,y)";
    }
    cli_table *t = cli_table_new(nc, hdr, right);
    if (!t)
        return;
    for (int i = 0; i < n; i++) {
        const hit *h = &v[i];
        char rank[16], score[32], id[32], box[96] = "", peak[96] = "";
        snprintf(rank, sizeof rank, "%d", i + 1);
        snprintf(score, sizeof score, "%.4f", h->score);
        snprintf(id, sizeof id, "%llu", (unsigned long long)h->image_id);
        if (h->has_box)
            cli_box_str(box, sizeof box, h->box);
        if (h->has_heat) {
            /* The best cell, as the centre of that cell in the grid's frame
             * (pixels when the box it covers or the photo's size is known). */
            int best = 0, cells = h->heat.rows * h->heat.cols;
            for (int j = 1; j < cells; j++)
                if (h->heat.values[j] > h->heat.values[best])
                    best = j;
            int r = best / h->heat.cols, c = best % h->heat.cols;
            if (h->heat.has_box)
                snprintf(peak, sizeof peak, "%.0f,%.0f", h->heat.box[0] + (c + 0.5) * h->heat.box[2] / h->heat.cols,
                         h->heat.box[1] + (r + 0.5) * h->heat.box[3] / h->heat.rows);
            else
                snprintf(peak, sizeof peak, "cell %d,%d of %dx%d", c, r, h->heat.cols, h->heat.rows);
        }
        const char *cells[6] = {rank, score, id, h->path};
        int k = 4;
        if (boxes)
            cells[k++] = box;
        if (heat)
            cells[k++] = peak;
        if (cli_table_row(t, cells))
            break;
    }
    cli_table_print(t, stdout);
    cli_table_free(t);
    (void)o;
}

static int write_html(const query_opts *o, const hit *v, int n)
{
    cli_html_hit *hh = calloc(n ? (size_t)n : 1, sizeof *hh);
    if (!hh)
        return umg_err_set(UMG_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++)
        hh[i] = (cli_html_hit){.image_id = v[i].image_id, .path = v[i].path, .score = v[i].score,
                               .has_box = v[i].has_box, .box = {v[i].box[0], v[i].box[1], v[i].box[2], v[i].box[3]},
                               .width = v[i].width, .height = v[i].height,
                               .heatmap = v[i].has_heat ? &v[i].heat : NULL};
    char title[512], sub[1024];
    snprintf(title, sizeof title, "umgdb: \"%.400s\"", o->text);
    int len = snprintf(sub, sizeof sub, "%d %s hit%s (k = %ld)", n, o->granularity, n == 1 ? "" : "s", o->k);
    if (o->path_prefix && len > 0 && (size_t)len < sizeof sub)
        len += snprintf(sub + len, sizeof sub - (size_t)len, ", path prefix %.200s", o->path_prefix);
    for (int i = 0; i < o->n_tags && len > 0 && (size_t)len < sizeof sub; i++)
        len += snprintf(sub + len, sizeof sub - (size_t)len, "%s%.100s", i ? ", " : ", tags ", o->tags[i]);
    if (o->has_min_score && len > 0 && (size_t)len < sizeof sub)
        snprintf(sub + len, sizeof sub - (size_t)len, ", min score %g", o->min_score);
    int rc = cli_html_write(o->html, title, sub, hh, n);
    free(hh);
    return rc;
}

int cmd_query(int argc, char **argv)
{
    query_opts o = {0};
    int ex = parse(argc, argv, &o);
    if (ex >= 0) {
        opts_free(&o);
        return ex;
    }
    umg_client *cl;
    if ((ex = cli_connect("query", &o.c, &cl, NULL))) {
        opts_free(&o);
        return ex;
    }
    uint64_t id;
    proto_response *r = NULL;
    int rc = pack_request(cl, &o, &id);
    if (rc) {
        fprintf(stderr, "umgdb query: %s\n", umg_err_msg());
        ex = CLI_EXIT_USAGE;   /* the only way to fail here is an argument over a protocol limit */
        goto done;
    }
    if ((rc = umg_client_wait(cl, id, o.c.timeout_ms, &r))) {
        ex = cli_report_call("query", &o.c, rc);
        goto done;
    }
    if (!r->ok) {
        ex = cli_report_error("query", r);
        goto done;
    }
    hit *v = NULL;
    int n = 0;
    if ((rc = parse_hits(r, &v, &n))) {
        fprintf(stderr, "umgdb query: %s\n", umg_err_msg());
        hits_free(v, n);
        ex = CLI_EXIT_FAILED;
        goto done;
    }
    if (o.html) {
        if ((rc = write_html(&o, v, n))) {
            fprintf(stderr, "umgdb query: %s\n", umg_err_msg());
            hits_free(v, n);
            ex = CLI_EXIT_FAILED;
            goto done;
        }
    }
    if (o.c.json) {
        json_t *j = cli_to_json(r->result);
        rc = cli_print_json(j);
        json_decref(j);
    } else {
        print_table(v, n, &o);
    }
    if (rc || fflush(stdout)) {
        fprintf(stderr, "umgdb query: writing the output failed\n");
        ex = CLI_EXIT_FAILED;
    } else {
        ex = CLI_EXIT_OK;
        if (o.html)
            fprintf(stderr, "umgdb query: wrote %s\n", o.html);
    }
    hits_free(v, n);
done:
    proto_response_free(r);
    umg_client_close(cl);
    opts_free(&o);
    return ex;
}
