/* cmd_embed.c - `umgdb embed`: encode images or texts, print JSON lines.
 *
 * One JSON object per --image / --text, in command-line order.  Images go
 * through three stages that run at the same time (issue 17, "decoding runs
 * beside encoding"):
 *   1. prepare: read + decode + preprocess, on worker threads (enc_prep), into
 *      batches of --batch consecutive images, a batch or so ahead of the encoder;
 *   2. encode: encoder threads, each with its own run state on the one shared
 *      model, take the prepared batches in order;
 *   3. print: this (the main) thread prints the results in input order and
 *      encodes the texts between them.
 * The batches are the same as a sequential loop's (images [k*B, (k+1)*B)) and
 * an image's embedding does not depend on the thread that encodes it, so the
 * output is byte for byte what decoding and encoding one batch after the other
 * gives (tests/test_embed_cli.c checks it). */
#include "commands.h"

#include "enc.h"
#include "enc_prep.h"
#include "umg_error.h"
#include "umg_util.h"

#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { IN_IMAGE, IN_TEXT };

struct input {
    int kind;
    const char *arg;
    int slot;       /* images: the image's number among the images (batch slot / batch) */
};

struct embed_opts {
    const char *model_dir, *dump_pixels;
    int patches, batch, threads;
    int fast_decode; /* --decode fast (default) / exact */
};

/* The encoded results of one batch, between an encoder thread and the printer. */
enum { RES_FREE, RES_BUSY, RES_DONE };
struct result {
    int state, batch;       /* RES_*; the batch it holds (BUSY/DONE) */
    int n;                  /* images with results, from the batch's first on */
    int failed, rc;         /* image first + n failed (prepare or encode) */
    char err[640];
    float *embeds, *patches; /* [batch, D], [batch, G*G, D] or NULL */
};

struct pipeline {
    const enc_model *m;
    const struct embed_opts *o;
    const struct input **images; /* every image, in input order */
    enc_decode_opts dopt;
    enc_prep *prep;
    struct result *res;
    int n_res;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* a result changed state, or abort */
    int abort;
};

struct encoder {
    struct pipeline *pl;
    enc_run *run;
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: umgdb embed --model DIR [--image PATH]... [--text STRING]... [options]\n"
            "\n"
            "Encode images and texts with a CLIP checkpoint (Hugging Face CLIPModel layout:\n"
            "config.json, model.safetensors, vocab.json, merges.txt). Prints one JSON object\n"
            "per input, in the order given:\n"
            "  {\"embedding\": [...]}                 an image (L2-normalized)\n"
            "  {\"embedding\": [...], \"ids\": [...]}   a text, with its token ids\n"
            "\n"
            "options:\n"
            "  --model DIR           checkpoint directory (required)\n"
            "  --image PATH          a JPEG, PNG, HEIC, AVIF, WebP, TIFF or GIF file (repeatable)\n"
            "  --text STRING         a text (repeatable)\n"
            "  --patches             add \"patches\": the projected patch tokens, row-major over\n"
            "                        the grid, each L2-normalized\n"
            "  --dump-pixels OUT     write the preprocessed float32 [3,H,W] input (one image only)\n"
            "  --batch N             images per forward pass (default 16)\n"
            "  --threads T           threads (default: the number of CPUs)\n"
            "  --precision P         fp32 (default: exact), int8, bf16 (AVX512-BF16), fp16\n"
            "                        (AVX512-FP16) or auto: faster, approximate; docs/benchmarks.md\n"
            "  --decode MODE         fast (default: a large JPEG is decoded DCT-scaled, as PIL's\n"
            "                        draft(), then resized exactly) or exact (full resolution:\n"
            "                        bit-parity with the reference pipeline)\n"
            "  --verbose             say on stderr which kernels this CPU runs\n"
            "  -h, --help            this text\n");
}

/* ---- output ------------------------------------------------------------- */

static void put_floats(FILE *out, const float *v, int n)
{
    fputc('[', out);
    for (int i = 0; i < n; i++) {
        if (i)
            fputs(", ", out);
        if (isfinite(v[i]))
            fprintf(out, "%.9g", v[i]);
        else
            fputs("null", out); /* JSON has no NaN; only a broken checkpoint gets here */
    }
    fputc(']', out);
}

static void print_image(FILE *out, float *embed, int D, float *patches, int n_patches)
{
    enc_l2_normalize(embed, D);
    fputs("{\"embedding\": ", out);
    put_floats(out, embed, D);
    if (patches) {
        fputs(", \"patches\": [", out);
        for (int p = 0; p < n_patches; p++) {
            float *row = patches + (size_t)p * D;
            enc_l2_normalize(row, D);
            if (p)
                fputs(", ", out);
            put_floats(out, row, D);
        }
        fputc(']', out);
    }
    fputs("}\n", out);
}

static void print_text(FILE *out, float *embed, int D, const int32_t *ids, int n_ids)
{
    enc_l2_normalize(embed, D);
    fputs("{\"embedding\": ", out);
    put_floats(out, embed, D);
    fputs(", \"ids\": [", out);
    for (int i = 0; i < n_ids; i++)
        fprintf(out, i ? ", %d" : "%d", (int)ids[i]);
    fputs("]}\n", out);
}

/* ---- image workers ------------------------------------------------------ */

static int dump_pixels(const char *path, const float *px, size_t n)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return umg_err_set(UMG_EIO, "%s: cannot create", path);
    size_t w = fwrite(px, sizeof *px, n, f);
    if (fclose(f) != 0 || w != n)
        return umg_err_set(UMG_EIO, "%s: write failed", path);
    return 0;
}

/* Stage 1, on enc_prep's threads: one image into its batch's tensor. */
static int prepare_image(void *ctx, int index, float *pixels)
{
    struct pipeline *pl = ctx;
    enc_image img = {0};
    int rc = enc_image_load_ex(pl->images[index]->arg, &pl->dopt, &img, NULL);
    if (!rc)
        rc = enc_preprocess(&img, enc_model_preproc(pl->m), pixels);
    enc_image_free(&img);
    if (!rc && pl->o->dump_pixels) { /* one image only (checked): no race */
        const enc_config *c = enc_model_config(pl->m);
        rc = dump_pixels(pl->o->dump_pixels, pixels, (size_t)c->channels * c->image_size * c->image_size);
    }
    return rc;
}

/* Stage 2: take prepared batches in order, encode each into the result slot of
 * its number (waiting for the printer to free it), hand it to the printer. */
static void *encoder_main(void *arg)
{
    struct encoder *e = arg;
    struct pipeline *pl = e->pl;
    enc_prep_batch b;
    while (enc_prep_next(pl->prep, &b)) {
        struct result *r = &pl->res[b.index % pl->n_res];
        pthread_mutex_lock(&pl->mu);
        while (r->state != RES_FREE && !pl->abort)
            pthread_cond_wait(&pl->cv, &pl->mu);
        int stop = pl->abort;
        if (!stop) {
            r->state = RES_BUSY;
            r->batch = b.index;
        }
        pthread_mutex_unlock(&pl->mu);
        if (stop) {
            enc_prep_release(pl->prep, &b);
            break;
        }
        r->n = b.n;
        r->failed = b.failed;
        r->rc = b.rc;
        snprintf(r->err, sizeof r->err, "%s", b.err);
        int rc = b.n ? enc_encode_pixels(e->run, b.pixels, b.n, r->embeds, pl->o->patches ? r->patches : NULL) : 0;
        enc_prep_release(pl->prep, &b);
        if (rc) { /* as before the pipeline: the whole batch is lost, output ends before it */
            r->n = 0;
            r->failed = 1;
            r->rc = rc;
            snprintf(r->err, sizeof r->err, "encoding failed: %s", umg_err_msg());
        }
        pthread_mutex_lock(&pl->mu);
        r->state = RES_DONE;
        pthread_cond_broadcast(&pl->cv);
        pthread_mutex_unlock(&pl->mu);
    }
    return NULL;
}

/* Stage 3 (the printer) waits for batch k's results. */
static struct result *wait_result(struct pipeline *pl, int k)
{
    struct result *r = &pl->res[k % pl->n_res];
    pthread_mutex_lock(&pl->mu);
    while (!(r->state == RES_DONE && r->batch == k))
        pthread_cond_wait(&pl->cv, &pl->mu);
    pthread_mutex_unlock(&pl->mu);
    return r;
}

static void free_result(struct pipeline *pl, struct result *r)
{
    pthread_mutex_lock(&pl->mu);
    r->state = RES_FREE;
    pthread_cond_broadcast(&pl->cv);
    pthread_mutex_unlock(&pl->mu);
}

/* ---- the command -------------------------------------------------------- */

static int parse_int(const char *s, int lo, int hi, int *out)
{
    long v;
    if (umg_parse_long(s, lo, hi, &v)) return -1;
    *out = (int)v;
    return 0;
}

int cmd_embed(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"model", required_argument, NULL, 'm'},   {"image", required_argument, NULL, 'i'},
        {"text", required_argument, NULL, 't'},    {"patches", no_argument, NULL, 'p'},
        {"dump-pixels", required_argument, NULL, 'd'}, {"batch", required_argument, NULL, 'b'},
        {"threads", required_argument, NULL, 'j'}, {"precision", required_argument, NULL, 'P'},
        {"decode", required_argument, NULL, 'D'},
        {"verbose", no_argument, NULL, 'v'},       {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
    };
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    struct embed_opts o = {.batch = 16, .threads = ncpu < 1 ? 1 : ncpu > 64 ? 64 : (int)ncpu, .fast_decode = 1};
    enc_model_options mopt = {.precision = ENC_PRECISION_FP32};
    struct input *inputs = calloc((size_t)argc, sizeof *inputs);
    if (!inputs) {
        fprintf(stderr, "umgdb embed: out of memory\n");
        return 1;
    }
    int n_inputs = 0, n_images = 0, opt, verbose = 0;
    optind = 1;
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'm': o.model_dir = optarg; break;
        case 'i':
            inputs[n_inputs++] = (struct input){.kind = IN_IMAGE, .arg = optarg};
            n_images++;
            break;
        case 't': inputs[n_inputs++] = (struct input){.kind = IN_TEXT, .arg = optarg}; break;
        case 'p': o.patches = 1; break;
        case 'v': verbose = 1; break;
        case 'd': o.dump_pixels = optarg; break;
        case 'b':
            if (parse_int(optarg, 1, 4096, &o.batch)) {
                fprintf(stderr, "umgdb embed: --batch wants an integer in [1, 4096], not '%s'\n", optarg);
                free(inputs);
                return 2;
            }
            break;
        case 'j':
            if (parse_int(optarg, 1, 256, &o.threads)) {
                fprintf(stderr, "umgdb embed: --threads wants an integer in [1, 256], not '%s'\n", optarg);
                free(inputs);
                return 2;
            }
            break;
        case 'P':
            if (enc_precision_parse(optarg, &mopt.precision)) {
                fprintf(stderr, "umgdb embed: --precision wants fp32, int8, bf16, fp16 or auto, not '%s'\n", optarg);
                free(inputs);
                return 2;
            }
            break;
        case 'D':
            if (enc_decode_mode_parse(optarg, &o.fast_decode)) {
                fprintf(stderr, "umgdb embed: --decode wants exact or fast, not '%s'\n", optarg);
                free(inputs);
                return 2;
            }
            break;
        case 'h':
            usage(stdout);
            free(inputs);
            return 0;
        case ':':
            fprintf(stderr, "umgdb embed: %s needs a value\n", argv[optind - 1]);
            usage(stderr);
            free(inputs);
            return 2;
        default:
            fprintf(stderr, "umgdb embed: unknown option '%s'\n", argv[optind - 1]);
            usage(stderr);
            free(inputs);
            return 2;
        }
    }
    const char *problem = NULL;
    if (optind < argc)
        problem = "unexpected argument";
    else if (!o.model_dir)
        problem = "--model DIR is required";
    else if (!n_inputs)
        problem = "give at least one --image or --text";
    else if (o.dump_pixels && n_images != 1)
        problem = "--dump-pixels takes exactly one --image";
    if (problem) {
        fprintf(stderr, "umgdb embed: %s%s%s\n", problem, optind < argc ? " " : "", optind < argc ? argv[optind] : "");
        usage(stderr);
        free(inputs);
        return 2;
    }

    enc_model *m = NULL;
    int rc = enc_model_open_ex(o.model_dir, &mopt, &m);
    if (rc) {
        fprintf(stderr, "umgdb embed: %s\n", umg_err_msg());
        free(inputs);
        return 1;
    }
    if (verbose)
        fprintf(stderr, "umgdb embed: kernels: %s\n", enc_model_kernels(m));
    const enc_config *c = enc_model_config(m);
    if (n_images && o.batch > n_images)
        o.batch = n_images; /* run states are sized for a batch: no bigger than needed */
    int D = enc_model_dim(m), G = enc_model_grid(m), status = 0;
    int n_batches = (o.batch ? (n_images + o.batch - 1) / o.batch : 0);
    /* How the --threads T cores are shared (what measured best on 2 cores,
     * docs/benchmarks.md "Decoding beside encoding"):
     *  - E = min(T, batches) encoder threads, each with its own run state and
     *    T / E threads inside its products (as before the pipeline: with one
     *    batch all T cores go into its GEMMs; with many, single-threaded runs
     *    side by side beat one run on T threads, and spin no helper threads);
     *  - T prepare threads besides them.  Decoding is not given cores of its
     *    own: its CPU comes from the same T cores, taken from the encoders while
     *    a batch is being prepared.  A prepare thread that is a batch ahead
     *    sleeps, so for small JPEGs (decode ~1/10 of the encoder's CPU per photo)
     *    the encoders keep nearly all of the cores; when decoding is the slower
     *    side (a 12 MP HEIC costs ~10x the encoder) all T cores decode and the
     *    encoders wait.  Fewer prepare threads than T would cap that case at
     *    fewer cores; more would only add photos in memory.
     *  - E + 1 batches of tensors (each encoder holds the one it encodes, one
     *    more is being prepared) and E + 1 batches of results (one being
     *    printed): with E = 1 that is double buffering; memory stays
     *    (E + 1) * batch * 3 * S * S floats plus the T photos in decode.
     *  - A HEIC's tiles decode on T / (photos decoded at once) libheif threads:
     *    all T for a lone photo, none extra when every prepare thread has one. */
    int n_enc = n_batches < o.threads ? n_batches : o.threads;
    int n_prep = o.threads < n_images ? o.threads : n_images;
    struct pipeline pl = {.m = m, .o = &o, .n_res = n_enc + 1};
    pl.dopt.fast_for = o.fast_decode ? enc_model_preproc(m) : NULL;
    pl.dopt.threads = n_prep > 0 && o.threads / n_prep > 1 ? o.threads / n_prep : 1;
    struct encoder *encs = calloc(n_enc ? (size_t)n_enc : 1, sizeof *encs);
    pthread_t *enc_th = calloc(n_enc ? (size_t)n_enc : 1, sizeof *enc_th);
    pl.images = calloc(n_images ? (size_t)n_images : 1, sizeof *pl.images);
    pl.res = calloc((size_t)pl.n_res, sizeof *pl.res);
    float *text_embed = malloc((size_t)D * sizeof(float));
    enc_run *text_run = NULL;
    int n_started = 0, sync_ok = 0;
    if (!encs || !enc_th || !pl.images || !pl.res || !text_embed) {
        fprintf(stderr, "umgdb embed: out of memory\n");
        status = 1;
        goto out;
    }
    for (int i = 0, j = 0; i < n_inputs; i++)
        if (inputs[i].kind == IN_IMAGE) {
            inputs[i].slot = j;
            pl.images[j++] = &inputs[i];
        }
    for (int k = 0; n_images && k < pl.n_res; k++) {
        pl.res[k].embeds = malloc((size_t)o.batch * D * sizeof(float));
        pl.res[k].patches = o.patches ? malloc((size_t)o.batch * G * G * D * sizeof(float)) : NULL;
        if (!pl.res[k].embeds || (o.patches && !pl.res[k].patches)) {
            fprintf(stderr, "umgdb embed: out of memory\n");
            status = 1;
            goto out;
        }
    }
    for (int w = 0; w < n_enc; w++) {
        encs[w].pl = &pl;
        if ((rc = enc_run_create(m, o.batch, &encs[w].run))) {
            fprintf(stderr, "umgdb embed: %s\n", umg_err_msg());
            status = 1;
            goto out;
        }
    }
    if (n_images < n_inputs) {
        if ((rc = enc_run_create(m, 1, &text_run)) || (rc = enc_run_set_threads(text_run, 1))) {
            fprintf(stderr, "umgdb embed: %s\n", umg_err_msg());
            status = 1;
            goto out;
        }
    }
    if (pthread_mutex_init(&pl.mu, NULL) == 0 && pthread_cond_init(&pl.cv, NULL) == 0)
        sync_ok = 1;
    else {
        fprintf(stderr, "umgdb embed: cannot create a lock\n");
        status = 1;
        goto out;
    }
    if (n_images) {
        enc_set_threads(o.threads / n_enc > 0 ? o.threads / n_enc : 1);
        enc_prep_config pc = {.n_items = n_images, .batch = o.batch,
                              .item_floats = (size_t)c->channels * c->image_size * c->image_size,
                              .n_slots = n_enc + 1, .threads = n_prep, .prepare = prepare_image, .ctx = &pl};
        if ((rc = enc_prep_start(&pc, &pl.prep))) {
            fprintf(stderr, "umgdb embed: %s\n", umg_err_msg());
            status = 1;
            goto out;
        }
        for (int w = 0; w < n_enc; w++)
            if (pthread_create(&enc_th[n_started], NULL, encoder_main, &encs[w]) == 0)
                n_started++;
        if (!n_started) { /* the printer cannot also encode: it frees the results */
            fprintf(stderr, "umgdb embed: cannot start a thread\n");
            status = 1;
            goto out;
        }
    }

    /* Stage 3: print in input order; texts are encoded here, between the images. */
    for (int i = 0; i < n_inputs && !status; i++) {
        struct input *in = &inputs[i];
        if (in->kind == IN_IMAGE) {
            int k = in->slot / o.batch, at = in->slot - k * o.batch;
            struct result *r = wait_result(&pl, k);
            if (at >= r->n) { /* r->failed: the failure is this image's (or its batch's) */
                const char *path = in->arg;
                if (strstr(r->err, path) || !strncmp(r->err, "encoding failed", 15))
                    fprintf(stderr, "umgdb embed: %s\n", r->err);
                else
                    fprintf(stderr, "umgdb embed: %s: %s\n", path, r->err);
                status = 1;
                break;
            }
            print_image(stdout, r->embeds + (size_t)at * D, D,
                        r->patches ? r->patches + (size_t)at * G * G * D : NULL, G * G);
            if (at == o.batch - 1 || in->slot == n_images - 1)
                free_result(&pl, r);
        } else {
            int32_t ids[ENC_CONTEXT_LENGTH];
            int n_ids = 0;
            if ((rc = enc_encode_text(text_run, in->arg, strlen(in->arg), text_embed, ids, &n_ids))) {
                fprintf(stderr, "umgdb embed: text \"%.60s\": %s\n", in->arg, umg_err_msg());
                status = 1;
                break;
            }
            print_text(stdout, text_embed, D, ids, n_ids);
        }
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "umgdb embed: writing the output failed\n");
        status = 1;
    }
out:
    /* Stop the stages (after an error they may still be running ahead). */
    if (sync_ok) {
        pthread_mutex_lock(&pl.mu);
        pl.abort = 1;
        pthread_cond_broadcast(&pl.cv);
        pthread_mutex_unlock(&pl.mu);
    }
    enc_prep_cancel(pl.prep);
    for (int w = 0; w < n_started; w++)
        pthread_join(enc_th[w], NULL);
    enc_prep_close(pl.prep);
    if (sync_ok) {
        pthread_cond_destroy(&pl.cv);
        pthread_mutex_destroy(&pl.mu);
    }
    for (int w = 0; encs && w < n_enc; w++)
        enc_run_close(encs[w].run);
    for (int k = 0; pl.res && k < pl.n_res; k++) {
        free(pl.res[k].embeds);
        free(pl.res[k].patches);
    }
    enc_run_close(text_run);
    free(encs);
    free(enc_th);
    free(pl.images);
    free(pl.res);
    free(text_embed);
    free(inputs);
    enc_model_close(m);
    return status;
}
