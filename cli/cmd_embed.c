/* cmd_embed.c - `umgdb embed`: encode images or texts, print JSON lines.
 *
 * One JSON object per --image / --text, in command-line order.  Images are
 * encoded in batches of --batch on --threads worker threads, each with its own
 * run state on the one shared model (OpenBLAS single-threaded inside each);
 * when there are fewer batches than threads the spare threads go to OpenBLAS. */
#include "commands.h"

#include "enc.h"
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
    int slot;       /* images: index into the chunk's result arrays */
};

struct embed_opts {
    const char *model_dir, *dump_pixels;
    int patches, batch, threads;
    int fast_decode; /* --decode fast (default) / exact */
};

struct worker {
    const enc_model *m;
    const struct embed_opts *o;
    enc_run *run;
    float *pixels;               /* [batch, 3, S, S] */
    const struct input **items;  /* this worker's images */
    int n_items;
    float *embeds, *patches;     /* results for items[0..n) */
    int rc, failed_item;         /* items before failed_item have results */
    char err[640];
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
            "  --precision P         fp32 (default: exact) or fp16 (faster, approximate; needs\n"
            "                        AVX512-FP16; see docs/benchmarks.md)\n"
            "  --decode MODE         fast (default: a large JPEG is decoded DCT-scaled, as PIL's\n"
            "                        draft(), then resized exactly) or exact (full resolution:\n"
            "                        bit-parity with the reference pipeline)\n"
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

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    const enc_config *c = enc_model_config(w->m);
    size_t S = (size_t)c->image_size, per = (size_t)c->channels * S * S;
    int D = enc_model_dim(w->m), G = enc_model_grid(w->m);
    for (int done = 0; done < w->n_items && !w->rc;) {
        int n = w->n_items - done < w->o->batch ? w->n_items - done : w->o->batch;
        for (int i = 0; i < n && !w->rc; i++) {
            const char *path = w->items[done + i]->arg;
            enc_image img = {0};
            enc_decode_opts dopt = {.fast_for = w->o->fast_decode ? enc_model_preproc(w->m) : NULL};
            int rc = enc_image_load_ex(path, &dopt, &img, NULL);
            if (!rc)
                rc = enc_preprocess(&img, enc_model_preproc(w->m), w->pixels + i * per);
            enc_image_free(&img);
            if (!rc && w->o->dump_pixels)
                rc = dump_pixels(w->o->dump_pixels, w->pixels + i * per, per);
            if (rc) {
                w->rc = rc;
                w->failed_item = done + i;
                n = i; /* still encode the images before it: they get printed */
                /* umg_err_msg is per thread: copy it for the main thread; name the
                 * file unless the message already does */
                const char *msg = umg_err_msg();
                snprintf(w->err, sizeof w->err, "%s%s%s", strstr(msg, path) ? "" : path,
                         strstr(msg, path) ? "" : ": ", msg);
            }
        }
        if (n == 0)
            break;
        int rc = enc_encode_pixels(w->run, w->pixels, n, w->embeds + (size_t)done * D,
                                   w->patches ? w->patches + (size_t)done * G * G * D : NULL);
        if (rc) {
            w->rc = rc;
            w->failed_item = done;
            snprintf(w->err, sizeof w->err, "encoding failed: %s", umg_err_msg());
        }
        done += n;
    }
    return NULL;
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
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0},
    };
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    struct embed_opts o = {.batch = 16, .threads = ncpu < 1 ? 1 : ncpu > 64 ? 64 : (int)ncpu, .fast_decode = 1};
    enc_model_options mopt = {.precision = ENC_PRECISION_FP32};
    struct input *inputs = calloc((size_t)argc, sizeof *inputs);
    if (!inputs) {
        fprintf(stderr, "umgdb embed: out of memory\n");
        return 1;
    }
    int n_inputs = 0, n_images = 0, opt;
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
                fprintf(stderr, "umgdb embed: --precision wants fp32 or fp16, not '%s'\n", optarg);
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
    const enc_config *c = enc_model_config(m);
    if (n_images && o.batch > n_images)
        o.batch = n_images; /* run states are sized for a batch: no bigger than needed */
    int D = enc_model_dim(m), G = enc_model_grid(m), status = 0;
    size_t per_image = (size_t)c->channels * c->image_size * c->image_size;
    int n_workers = (n_images + o.batch - 1) / o.batch;
    if (n_workers > o.threads)
        n_workers = o.threads;
    int chunk_cap = n_workers * o.batch; /* images encoded between two prints */
    struct worker *workers = calloc(n_workers ? (size_t)n_workers : 1, sizeof *workers);
    const struct input **items = calloc(chunk_cap ? (size_t)chunk_cap : 1, sizeof *items);
    float *embeds = malloc(((size_t)chunk_cap + 1) * D * sizeof(float));
    float *patches = o.patches ? malloc(((size_t)chunk_cap + 1) * G * G * D * sizeof(float)) : NULL;
    enc_run *text_run = NULL;
    if (!workers || !items || !embeds || (o.patches && !patches)) {
        fprintf(stderr, "umgdb embed: out of memory\n");
        status = 1;
        goto out;
    }
    for (int w = 0; w < n_workers; w++) {
        workers[w].m = m;
        workers[w].o = &o;
        workers[w].pixels = malloc((size_t)o.batch * per_image * sizeof(float));
        if (!workers[w].pixels || (rc = enc_run_create(m, o.batch, &workers[w].run))) {
            fprintf(stderr, "umgdb embed: %s\n", workers[w].pixels ? umg_err_msg() : "out of memory");
            status = 1;
            goto out;
        }
    }
    if (n_images < n_inputs && (rc = enc_run_create(m, 1, &text_run))) {
        fprintf(stderr, "umgdb embed: %s\n", umg_err_msg());
        status = 1;
        goto out;
    }

    for (int start = 0; start < n_inputs && !status;) {
        /* The chunk [start, end) holds up to chunk_cap images and the texts between them. */
        int end = start, n_chunk = 0, fail_at = -1;
        struct worker *failed = NULL;
        while (end < n_inputs && (inputs[end].kind == IN_TEXT || n_chunk < chunk_cap)) {
            if (inputs[end].kind == IN_IMAGE) {
                inputs[end].slot = n_chunk;
                items[n_chunk++] = &inputs[end];
            }
            end++;
        }
        if (n_chunk) {
            int used = (n_chunk + o.batch - 1) / o.batch;
            if (used > n_workers)
                used = n_workers;
            /* Spare threads help inside the GEMMs of the batches we do have. */
            enc_set_threads(o.threads / used > 0 ? o.threads / used : 1);
            int per = (n_chunk + used - 1) / used;
            per = (per + o.batch - 1) / o.batch * o.batch; /* whole batches per worker */
            pthread_t th[256];
            int started = 0;
            for (int w = 0; w < used; w++) {
                struct worker *wk = &workers[w];
                int lo = w * per, hi = lo + per < n_chunk ? lo + per : n_chunk;
                wk->items = items + lo;
                wk->n_items = hi > lo ? hi - lo : 0;
                wk->embeds = embeds + (size_t)lo * D;
                wk->patches = patches ? patches + (size_t)lo * G * G * D : NULL;
                wk->rc = 0;
                if (w == used - 1) {
                    worker_main(wk);
                } else if (pthread_create(&th[w], NULL, worker_main, wk) == 0) {
                    started++;
                } else {
                    worker_main(wk); /* no thread to be had: do it here */
                }
            }
            for (int w = 0; w < started; w++)
                pthread_join(th[w], NULL);
            /* The earliest failure ends the output; everything before it is printed. */
            for (int w = 0; w < used; w++)
                if (workers[w].rc) {
                    int at = (int)(workers[w].items[workers[w].failed_item] - inputs);
                    if (!failed || at < fail_at) {
                        failed = &workers[w];
                        fail_at = at;
                    }
                }
        }
        /* Print in input order. */
        enc_set_threads(1);
        for (int i = start; i < end && !status; i++) {
            if (failed && i == fail_at) {
                fprintf(stderr, "umgdb embed: %s\n", failed->err);
                status = 1;
                break;
            }
            struct input *in = &inputs[i];
            if (in->kind == IN_IMAGE) {
                print_image(stdout, embeds + (size_t)in->slot * D, D,
                            patches ? patches + (size_t)in->slot * G * G * D : NULL, G * G);
            } else {
                int32_t ids[ENC_CONTEXT_LENGTH];
                int n_ids = 0;
                float *e = embeds + (size_t)chunk_cap * D; /* the spare row */
                if ((rc = enc_encode_text(text_run, in->arg, strlen(in->arg), e, ids, &n_ids))) {
                    fprintf(stderr, "umgdb embed: text \"%.60s\": %s\n", in->arg, umg_err_msg());
                    status = 1;
                    break;
                }
                print_text(stdout, e, D, ids, n_ids);
            }
        }
        start = end;
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "umgdb embed: writing the output failed\n");
        status = 1;
    }
out:
    for (int w = 0; workers && w < n_workers; w++) {
        enc_run_close(workers[w].run);
        free(workers[w].pixels);
    }
    enc_run_close(text_run);
    free(workers);
    free(items);
    free(embeds);
    free(patches);
    free(inputs);
    enc_model_close(m);
    return status;
}
