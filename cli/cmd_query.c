/* cmd_query.c - `umgdb query`: text-to-image (or -region, -pixel) search on a
 * running server, or image-to-image (--like, the protocol's query_image); a
 * table, JSON, and optionally an HTML page of the hits. */
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
    char *text;               /* the words joined by spaces (heap); NULL with --like/--like-id */
    const char *like;         /* --like PATH: query_image with the file's bytes */
    uint64_t like_id;         /* --like-id N: query_image with a stored image (0: none) */
    double like_box[4];       /* --like-box x,y,w,h */
    bool has_like_box;
} query_opts;

static void usage(FILE *out)
{
    fprintf(out,
            "usage: umgdb query [OPTIONS] TEXT...\n"
            "       umgdb query [OPTIONS] (--like PATH | --like-id ID) [--like-box X,Y,W,H]\n\n"
            "Search a running server's photos by text (the words of TEXT are joined by spaces),\n"
            "or by an image: the photos (or regions, heatmaps) most like it.\n\n"
            "options:\n"
            "  --like PATH         search by this image file (" CLI_IMAGE_FORMATS "; its bytes are sent)\n"
            "  --like-id ID        search by a stored image (its stored vector; the image itself\n"
            "                      is left out of the hits unless --like-box is given)\n"
            "  --like-box X,Y,W,H  only that part of the --like / --like-id image (its pixels)\n"
            "  --regions           search regions: each hit is a box inside a photo\n"
            "  --heatmap           pixel granularity: where in each photo the text matches\n"
            "  --refine            regions, each photo's boxes re-ranked by how well they fit\n"
            "                      where in the photo the text matches (its heatmap); implies\n"
            "                      --regions (docs/regions.md, \"Pixel-level refinement\"); the\n"
            "                      table shows the refined score the boxes are ranked by and\n"
            "                      the cosine beside it.  Text queries only\n"
            "  -k N                how many hits (1..%d, default %d)\n"
            "  --path-prefix P     only photos whose stored path starts with P\n"
            "  --tag T             only photos tagged T (repeatable, or T1,T2: all must match)\n"
            "  --min-score S       only hits scoring at least S (cosine similarity)\n"
            "                      (--path-prefix and --tag filter the nearest candidates; when\n"
            "                      fewer than -k hits come back, a larger -k searches more)\n"
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

/* "x,y,w,h": four finite numbers, x, y >= 0, w, h > 0.  0 or UMG_EINVAL. */
static int parse_box(const char *arg, double box[4])
{
    char **v;
    int n;
    if (cli_split_list(arg, &v, &n))
        return UMG_ENOMEM;
    int rc = n == 4 ? 0 : UMG_EINVAL;
    for (int i = 0; !rc && i < 4; i++)
        rc = cli_parse_double(v[i], &box[i]);
    cli_strv_free(v);
    if (!rc && (box[0] < 0 || box[1] < 0 || box[2] <= 0 || box[3] <= 0))
        rc = UMG_EINVAL;
    return rc;
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
        {"like", required_argument, NULL, 'L'},
        {"like-id", required_argument, NULL, 'I'},
        {"like-box", required_argument, NULL, 'B'},
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
        case 'L':
            if (!*optarg) {
                fprintf(stderr, "umgdb query: --like wants an image file\n");
                return CLI_EXIT_USAGE;
            }
            o->like = optarg;
            break;
        case 'I':
            if (cli_parse_u64(optarg, &o->like_id) || !o->like_id) {
                fprintf(stderr, "umgdb query: --like-id wants an image ID (a positive integer), not '%s'\n",
                        optarg);
                return CLI_EXIT_USAGE;
            }
            break;
        case 'B':
            if (parse_box(optarg, o->like_box)) {
                fprintf(stderr, "umgdb query: --like-box wants X,Y,W,H in the image's pixels (X, Y >= 0, "
                                "W, H > 0), not '%s'\n", optarg);
                return CLI_EXIT_USAGE;
            }
            o->has_like_box = true;
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
    if (o->like && o->like_id) {
        fprintf(stderr, "umgdb query: --like and --like-id are two images; pick one\n");
        return CLI_EXIT_USAGE;
    }
    if (o->has_like_box && !o->like && !o->like_id) {
        fprintf(stderr, "umgdb query: --like-box is a part of the --like or --like-id image; give one\n");
        return CLI_EXIT_USAGE;
    }
    if (o->like || o->like_id) {
        if (optind < argc) {
            fprintf(stderr, "umgdb query: search by text or by an image (--like), not both ('%s')\n",
                    argv[optind]);
            return CLI_EXIT_USAGE;
        }
        if (o->refine) {
            fprintf(stderr, "umgdb query: --refine re-ranks boxes by a text's heatmap: text queries only\n");
            return CLI_EXIT_USAGE;
        }
        return -1;
    }
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

/* A text query ("query") or, with --like / --like-id, "query_image". */
static int pack_request(umg_client *cl, const query_opts *o, uint64_t *id)
{
    uint8_t *image = NULL;
    size_t image_len = 0;
    if (o->like) {
        /* Room in the frame for the other fields, as ingest leaves. */
        int rc = cli_read_file(o->like, PROTO_DEFAULT_MAX_FRAME - (64u << 10), &image, &image_len);
        if (rc)
            return rc;
        if (!image_len) {
            free(image);
            return umg_err_set(UMG_EINVAL, "%s: empty file", o->like);
        }
    }
    bool by_image = o->like || o->like_id;
    size_t nfilters = (o->path_prefix != NULL) + (o->n_tags > 0) + o->has_min_score;
    proto_writer w;
    int rc = umg_client_begin(cl, &w, by_image ? "query_image" : "query",
                              3 + (nfilters > 0) + o->refine + o->has_like_box, id);
    if (rc) {
        free(image);
        return rc;
    }
    msgpack_packer *pk = &w.pk;
    int bad;
    if (o->like)
        bad = proto_pack_cstr(pk, "data") || msgpack_pack_bin(pk, image_len) ||
              msgpack_pack_bin_body(pk, image, image_len);
    else if (o->like_id)
        bad = proto_pack_cstr(pk, "image_id") || msgpack_pack_uint64(pk, o->like_id);
    else
        bad = proto_pack_cstr(pk, "text") || proto_pack_cstr(pk, o->text);
    free(image);
    if (!bad && o->has_like_box) {
        bad = proto_pack_cstr(pk, "box") || msgpack_pack_array(pk, 4);
        for (int i = 0; !bad && i < 4; i++)
            bad = msgpack_pack_double(pk, o->like_box[i]);
    }
    bad = bad || proto_pack_cstr(pk, "granularity") || proto_pack_cstr(pk, o->granularity) ||
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
    double score;             /* the cosine */
    bool has_refined;         /* refined: what --refine ranks the boxes by */
    double refined;
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
        h->has_refined = p->has_refined;
        h->refined = p->refined;
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
    bool boxes = false, heat = false, refined = false;
    for (int i = 0; i < n; i++) {
        boxes |= v[i].has_box;
        heat |= v[i].has_heat;
        refined |= v[i].has_refined;
    }
    /* The score the hits are ranked by comes first: with --refine that is
     * the refined score (within each photo), the cosine beside it. */
    const char *hdr[7] = {"rank", "score"};
    bool right[7] = {true, true, true, true, false};
    int nc = 2;
    if (refined) {
        hdr[1] = "refined";
        hdr[nc++] = "cosine";
    }
    hdr[nc++] = "image_id";
    hdr[nc++] = "path";
    right[nc - 1] = false;
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
        char rank[16], score[32], cosine[32], id[32], box[96] = "", peak[96] = "";
        snprintf(rank, sizeof rank, "%d", i + 1);
        /* a photo without stored patch tokens keeps its boxes and gets no refined score */
        if (refined && h->has_refined)
            snprintf(score, sizeof score, "%.4f", h->refined);
        else
            snprintf(score, sizeof score, refined ? "-" : "%.4f", h->score);
        snprintf(cosine, sizeof cosine, "%.4f", h->score);
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
        const char *cells[7] = {rank, score};
        int k = 2;
        if (refined)
            cells[k++] = cosine;
        cells[k++] = id;
        cells[k++] = h->path;
        if (boxes)
            cells[k++] = box;
        if (heat)
            cells[k++] = peak;
        if (cli_table_row(t, cells))
            break;
    }
    cli_table_print(t, stdout);
    cli_table_free(t);
    if (refined)
        printf("(--refine: the photos keep the region search's order; each photo's boxes are ranked by "
               "their refined score)\n");
    (void)o;
}

/* The server applies path and tag filters to a fixed number of nearest
 * candidates (docs/server.md, "Queries"), so a selective filter can leave
 * fewer than k hits while more matching photos exist further away: say so,
 * and how to widen the search.  (A --min-score cut alone is exact: the
 * candidates come best first.)  To be dropped once search is filter-aware. */
static void note_filter_cut(const query_opts *o, int n)
{
    if ((!o->path_prefix && !o->n_tags) || n >= o->k)
        return;
    fprintf(stderr, "umgdb query: %d of %ld hits: --path-prefix and --tag filter the server's nearest "
                    "candidates only, so matching photos further away may have been cut; ", n, o->k);
    if (o->k < PROTO_MAX_K)
        fprintf(stderr, "a larger -k searches more of them (e.g. -k %ld)\n",
                o->k * 10 < PROTO_MAX_K ? o->k * 10 : (long)PROTO_MAX_K);
    else
        fprintf(stderr, "-k is at its maximum (%d): a narrower query or a less selective filter may help\n",
                PROTO_MAX_K);
}

static int write_html(const query_opts *o, const hit *v, int n)
{
    cli_html_hit *hh = calloc(n ? (size_t)n : 1, sizeof *hh);
    if (!hh)
        return umg_err_set(UMG_ENOMEM, "out of memory");
    for (int i = 0; i < n; i++)
        hh[i] = (cli_html_hit){.image_id = v[i].image_id, .path = v[i].path, .score = v[i].score,
                               .has_refined = v[i].has_refined, .refined = v[i].refined, .has_box = v[i].has_box, .box = {v[i].box[0], v[i].box[1], v[i].box[2], v[i].box[3]},
                               .width = v[i].width, .height = v[i].height,
                               .heatmap = v[i].has_heat ? &v[i].heat : NULL};
    char title[512], sub[1024];
    if (o->like)
        snprintf(title, sizeof title, "umgdb: like %.400s", o->like);
    else if (o->like_id)
        snprintf(title, sizeof title, "umgdb: like image %llu", (unsigned long long)o->like_id);
    else
        snprintf(title, sizeof title, "umgdb: \"%.400s\"", o->text);
    int len = snprintf(sub, sizeof sub, "%d %s hit%s (k = %ld)", n, o->granularity, n == 1 ? "" : "s", o->k);
    if (o->has_like_box && len > 0 && (size_t)len < sizeof sub)
        len += snprintf(sub + len, sizeof sub - (size_t)len, ", box %.0f,%.0f %.0fx%.0f", o->like_box[0],
                        o->like_box[1], o->like_box[2], o->like_box[3]);
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
        ex = CLI_EXIT_USAGE;   /* an argument over a protocol limit, or a --like file that cannot be read */
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
        note_filter_cut(&o, n);
    }
    hits_free(v, n);
done:
    proto_response_free(r);
    umg_client_close(cl);
    opts_free(&o);
    return ex;
}
