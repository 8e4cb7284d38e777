/* umgdb serve - flags -> server_config -> server_run (server/server.c). */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client.h"
#include "commands.h"
#include "enc.h"
#include "enc_image.h"
#include "query_cache.h"
#include "server.h"
#include "umg_error.h"
#include "umg_util.h"

static void usage(FILE *out)
{
    fprintf(out,
        "usage: umgdb serve --data DIR --model DIR [options]\n"
        "\n"
        "Serve a data directory over the umgdb protocol (docs/protocol.md, docs/server.md).\n"
        "\n"
        "  --data DIR              data directory (created if absent)\n"
        "  --model DIR             CLIP checkpoint directory (config.json, model.safetensors, ...)\n"
        "  --listen HOST:PORT      TCP address (default %s when --socket is not given;\n"
        "                          with --socket, TCP only if --listen is given too).  A non-loopback\n"
        "                          address requires an auth token\n"
        "  --http HOST:PORT        also serve HTTP/JSON there (docs/http.md; off by default).  Same\n"
        "                          token as --listen (sent as Authorization: Bearer); a non-loopback\n"
        "                          address requires it\n"
        "  --http-header-timeout S a request's headers must be complete S s after its first byte\n"
        "                          (default 10; 0 = none)\n"
        "  --http-body-timeout S   its body S s after the headers (default 120; 0 = none)\n"
        "  --http-keepalive S      close HTTP connections idle S s between requests (default 60)\n"
        "  --socket PATH           also (or only) listen on a Unix socket, created owner-only (0600)\n"
        "  --allow-root DIR        allow ingest by path of files under DIR (repeatable; default: none,\n"
        "                          so clients must send the bytes).  Paths outside the roots, symlinks\n"
        "                          below them and non-regular files are refused\n"
        "  --auth-token-file FILE  require every connection to send hello with this token first\n"
        "                          (the file's first line, at least 16 characters); or set\n"
        "                          UMGDB_AUTH_TOKEN (same rules)\n"
        "  --require-auth          require the token on loopback listeners too (implied whenever a\n"
        "                          token is configured)\n"
        "  --regions R             region proposals per image (default %d; 0 = image vectors only)\n"
        "  --region-mode M         how region vectors are made (docs/regions.md):\n"
        "                          dense  pool the patch tokens of the one image pass over each box\n"
        "                          crop   encode each box's crop through the whole vision tower (exact\n"
        "                                 CLIP embeddings of the crops; R extra forward passes per photo)\n"
        "                          Recorded in a new data directory (dense if not given) and fixed\n"
        "                          after: without the flag the recorded mode is used, another mode\n"
        "                          than the recorded one is refused\n"
        "  --batch B               images per encoder batch and database transaction (default %d)\n"
        "  --threads T             BLAS threads, query encoder states and ingest decode/proposal\n"
        "                          workers (default: online CPUs);\n"
        "                          the libuv threadpool gets max(4, T+2) + 16 per text lane (at most 8\n"
        "                          lanes counted: room for text queries waiting for a lane) unless\n"
        "                          UV_THREADPOOL_SIZE is set\n"
        "  --text-lanes N          text-query passes encoded at once (default: T).  A free lane takes\n"
        "                          its share of the waiting text queries (ceil(waiting / N), at most 16)\n"
        "                          into one pass, computed on T / N threads beside another busy lane\n"
        "                          and on all T alone; 1 = one pass at a time over all T threads\n"
        "  --max-frame BYTES       largest request accepted (default %u; suffixes K, M)\n"
        "  --idle-timeout S        close connections idle for S seconds (default %d; 0 = never)\n"
        "  --hello-timeout S       with auth required, close a connection that has not completed\n"
        "                          hello S seconds after it was accepted (default %d; 0 = never)\n"
        "  --frame-timeout S       close a connection whose request frame is not complete S seconds\n"
        "                          after its first byte (default %d; 0 = never)\n"
        "  --buffer-memory BYTES   memory for connection buffers over all connections (unsent\n"
        "                          answers, requests held, partial frames); when reached, connections\n"
        "                          holding more than 64 KiB stop reading until it drains (default 1G;\n"
        "                          suffixes K, M, G)\n"
        "  --decode MODE           fast (default): a large JPEG is decoded shrunk by its DCT (1/2..1/8, as\n"
        "                          PIL's draft() picks it) before the exact resize: a 48 MP photo costs\n"
        "                          about its entropy decoding; embeddings within cosine 0.999 of exact.\n"
        "                          exact: every photo at full resolution, bit-identical to the reference\n"
        "                          (`umgdb embed --decode exact`).  Either way width, height and region\n"
        "                          boxes are the full-size photo's.  Region mode crop always decodes exactly\n"
        "  --ingest-memory BYTES   memory of photos prepared for the encoder (network input, boxes,\n"
        "                          crops: 0.6 MB each for ViT-B/32, + R crops in crop mode); when\n"
        "                          reached, decoding waits for the encoder (default 256M; suffixes K,\n"
        "                          M, G).  Besides it at most T photos decode at once (docs/server.md)\n"
        "  --max-connections N     refuse connections beyond N (default %d; lowered to what the\n"
        "                          open-file limit allows, see the start-up log)\n"
        "  --log-level L           debug | info | warn | error (default info: one line per request)\n"
        "  --no-patches            do not store per-image patch tokens (grid*grid*dim float16, 50 KB\n"
        "                          for ViT-B/32); disables pixel heatmaps and query_image boxes on\n"
        "                          stored images\n"
        "  --image-index FACTORY   FAISS factory string for the image index (default: by size)\n"
        "  --region-index FACTORY  FAISS factory string for the region index (default: by size)\n"
        "  --approx-threshold N    automatic choice: approximate index from N vectors (default 50000)\n"
        "  --nprobe N              search breadth of approximate indexes (default 32)\n"
        "  --index-threads N       OpenMP threads FAISS may use in searches and index builds\n"
        "                          (default %d: on a few cores, more only spin against the encoder;\n"
        "                          0 = FAISS's default, OMP_NUM_THREADS or every core)\n"
        "  --text-batch-wait US    a text query that finds the text tower free waits up to US\n"
        "                          microseconds for others to share its pass (default 0: none;\n"
        "                          trades latency under light load for throughput under heavy)\n"
        "  --query-cache N         keep the embeddings of the N most recently asked query texts\n"
        "                          (default %d, ~2 KiB each; 0 = off)\n"
        "  --precision P           encoder arithmetic: fp32 (default, exact), int8, bf16 (AVX512-BF16),\n"
        "                          fp16 (AVX512-FP16) or auto (the fastest this CPU runs that meets\n"
        "                          the accuracy guard); hello/stats say which (docs/benchmarks.md)\n"
        "  --checkpoint-interval S write index snapshots in the background every S seconds when\n"
        "                          something was written (default %d; 0 = only at stop).  Index\n"
        "                          builds (exact -> approximate, retraining) always run in the\n"
        "                          background, never at stop\n"
        "  --accept-data-loss      open the data directory although its index snapshots cover\n"
        "                          changes its database (data.mdb) lacks (emptied, deleted, an older\n"
        "                          copy): serve what the database holds and rebuild the snapshots\n"
        "                          from it.  Without it such a start is refused (docs/storage.md)\n"
        "  -h, --help              this text\n"
        "\n"
        "SIGINT/SIGTERM: stop accepting, finish the requests in flight, write index snapshots\n"
        "(no index build), exit 0.\n",
        UMG_DEFAULT_ADDR, SRV_DEFAULT_REGIONS, SRV_DEFAULT_BATCH, (unsigned)(64u << 20), SRV_DEFAULT_IDLE_S,
        SRV_DEFAULT_HELLO_TIMEOUT_S, SRV_DEFAULT_FRAME_TIMEOUT_S, SRV_DEFAULT_MAX_CONN, SRV_DEFAULT_INDEX_THREADS,
        SRV_DEFAULT_QUERY_CACHE, SRV_DEFAULT_CHECKPOINT_S);
}

static int parse_int(const char *flag, const char *v, long lo, long hi, long *out)
{
    if (umg_parse_long(v, lo, hi, out)) {
        fprintf(stderr, "umgdb serve: %s: '%s' is not an integer in %ld..%ld\n", flag, v, lo, hi);
        return -1;
    }
    return 0;
}

/* A size with an optional suffix K, M or G, between 1K and max bytes. */
static int parse_bytes(const char *flag, const char *v, unsigned long long max, unsigned long long *out)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v, &end, 10);
    unsigned long long mul = 1;
    if (*end == 'K' || *end == 'k') mul = 1ull << 10, end++;
    else if (*end == 'M' || *end == 'm') mul = 1ull << 20, end++;
    else if (*end == 'G' || *end == 'g') mul = 1ull << 30, end++;
    if (errno || end == v || *end || v[0] == '-' || x == 0 || x > max / mul || x * mul < 1024) {
        fprintf(stderr, "umgdb serve: %s: '%s' is not a size between 1K and %lluM\n", flag, v, max >> 20);
        return -1;
    }
    *out = x * mul;
    return 0;
}

/* The token in text, by the same rules wherever it comes from (the token
 * file, UMGDB_AUTH_TOKEN): its first line, trailing whitespace removed, at
 * least SRV_MIN_TOKEN_LEN bytes left (a token of spaces or a short word must
 * not guard a public address).  Heap string, or NULL after a message naming
 * `from`. */
static char *token_from(const char *from, const char *text)
{
    size_t n = strcspn(text, "\r\n");
    while (n && (text[n - 1] == ' ' || text[n - 1] == '\t')) n--;
    if (n < SRV_MIN_TOKEN_LEN) {
        fprintf(stderr, "umgdb serve: %s: %s (a token needs at least %d characters besides trailing whitespace)\n",
                from, n ? "token too short" : "empty token", SRV_MIN_TOKEN_LEN);
        return NULL;
    }
    if (n > 4096) {
        fprintf(stderr, "umgdb serve: %s: token longer than 4096 bytes\n", from);
        return NULL;
    }
    return strndup(text, n);
}

/* The token of a token file (token_from's rules); heap string or NULL. */
static char *read_token_file(const char *path)
{
    char from[PATH_MAX + 32];
    snprintf(from, sizeof from, "--auth-token-file %s", path);
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "umgdb serve: %s: %s\n", from, strerror(errno));
        return NULL;
    }
    char buf[4098];
    if (!fgets(buf, sizeof buf, f)) buf[0] = 0;
    fclose(f);
    char *token = token_from(from, buf);
    memset(buf, 0, sizeof buf);
    return token;
}

int cmd_serve(int argc, char **argv)
{
    server_config c;
    server_config_default(&c);
    const char *token_file = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        }
        if (!strcmp(a, "--no-patches")) {
            c.no_patches = 1;
            continue;
        }
        if (!strcmp(a, "--accept-data-loss")) {
            c.accept_data_loss = 1;
            continue;
        }
        if (!strcmp(a, "--require-auth")) {
            c.require_auth = 1;
            continue;
        }
        if (i + 1 >= argc || strncmp(a, "--", 2)) {
            fprintf(stderr, "umgdb serve: %s '%s' (see umgdb serve --help)\n",
                    strncmp(a, "--", 2) ? "unexpected argument" : "missing value for", a);
            return 2;
        }
        const char *v = argv[++i];
        long x;
        if (!strcmp(a, "--data")) c.data_dir = v;
        else if (!strcmp(a, "--model")) c.model_dir = v;
        else if (!strcmp(a, "--listen")) c.listen = v;
        else if (!strcmp(a, "--socket")) c.socket_path = v;
        else if (!strcmp(a, "--http")) c.http_listen = v;
        else if (!strcmp(a, "--http-header-timeout") || !strcmp(a, "--http-body-timeout") ||
                 !strcmp(a, "--http-keepalive")) {
            if (parse_int(a, v, 0, 86400, &x)) return 2;
            *(a[7] == 'h' ? &c.http_header_timeout_s : a[7] == 'b' ? &c.http_body_timeout_s : &c.http_keepalive_s) = (int)x;
        }
        else if (!strcmp(a, "--allow-root")) {
            if (c.n_roots == SRV_MAX_ROOTS) {
                fprintf(stderr, "umgdb serve: at most %d --allow-root\n", SRV_MAX_ROOTS);
                return 2;
            }
            c.roots[c.n_roots++] = v;
        } else if (!strcmp(a, "--auth-token-file")) token_file = v;
        else if (!strcmp(a, "--regions")) {
            if (parse_int(a, v, 0, 4096, &x)) return 2;
            c.regions = (int)x;
        } else if (!strcmp(a, "--region-mode")) {
            int m = srv_region_mode_parse(v);
            if (m < 0) {
                fprintf(stderr, "umgdb serve: --region-mode: '%s' is not dense or crop\n", v);
                return 2;
            }
            c.region_mode = m;
        } else if (!strcmp(a, "--batch")) {
            if (parse_int(a, v, 1, 256, &x)) return 2;
            c.batch = (int)x;
        } else if (!strcmp(a, "--threads")) {
            if (parse_int(a, v, 1, 256, &x)) return 2;
            c.threads = (int)x;
        } else if (!strcmp(a, "--max-frame")) {
            unsigned long long b;
            if (parse_bytes(a, v, 0xffffffffull, &b)) return 2;
            c.max_frame = (uint32_t)b;
        } else if (!strcmp(a, "--buffer-memory")) {
            unsigned long long b;
            if (parse_bytes(a, v, 1ull << 40, &b)) return 2;
            c.buffer_memory = b;
        } else if (!strcmp(a, "--ingest-memory")) {
            unsigned long long b;
            if (parse_bytes(a, v, 1ull << 40, &b)) return 2;
            c.ingest_memory = b;
        } else if (!strcmp(a, "--decode")) {
            int fast;
            if (enc_decode_mode_parse(v, &fast)) {
                fprintf(stderr, "umgdb serve: --decode wants exact or fast, not '%s'\n", v);
                return 2;
            }
            c.decode_fast = fast;
        } else if (!strcmp(a, "--idle-timeout")) {
            if (parse_int(a, v, 0, 86400 * 365, &x)) return 2;
            c.idle_timeout_s = (int)x;
        } else if (!strcmp(a, "--hello-timeout")) {
            if (parse_int(a, v, 0, 86400, &x)) return 2;
            c.hello_timeout_s = (int)x;
        } else if (!strcmp(a, "--frame-timeout")) {
            if (parse_int(a, v, 0, 86400, &x)) return 2;
            c.frame_timeout_s = (int)x;
        } else if (!strcmp(a, "--max-connections")) {
            if (parse_int(a, v, 1, 1000000, &x)) return 2;
            c.max_connections = (int)x;
        } else if (!strcmp(a, "--log-level")) {
            static const char *const names[] = {"debug", "info", "warn", "error"};
            int found = -1;
            for (int l = 0; l < 4; l++)
                if (!strcmp(v, names[l])) found = l;
            if (found < 0) {
                fprintf(stderr, "umgdb serve: --log-level: '%s' is not debug, info, warn or error\n", v);
                return 2;
            }
            c.log_level = found;
        } else if (!strcmp(a, "--image-index")) c.image_factory = v;
        else if (!strcmp(a, "--region-index")) c.region_factory = v;
        else if (!strcmp(a, "--approx-threshold")) {
            if (parse_int(a, v, 1, LONG_MAX, &x)) return 2;
            c.approx_threshold = (uint64_t)x;
        } else if (!strcmp(a, "--nprobe")) {
            if (parse_int(a, v, 1, 65536, &x)) return 2;
            c.nprobe = (int)x;
        } else if (!strcmp(a, "--index-threads")) {
            if (parse_int(a, v, 0, 256, &x)) return 2;
            c.index_threads = (int)x;
        } else if (!strcmp(a, "--text-batch-wait")) {
            if (parse_int(a, v, 0, 1000000, &x)) return 2;
            c.text_batch_wait_us = (int)x;
        } else if (!strcmp(a, "--text-lanes")) {
            if (parse_int(a, v, 1, SRV_MAX_TEXT_LANES, &x)) return 2;
            c.text_lanes = (int)x;
        } else if (!strcmp(a, "--query-cache")) {
            if (parse_int(a, v, 0, ENG_QCACHE_MAX, &x)) return 2;
            c.query_cache = (int)x;
        } else if (!strcmp(a, "--precision")) {
            if (enc_precision_parse(v, &c.precision)) {
                fprintf(stderr, "umgdb serve: --precision wants fp32, int8, bf16, fp16 or auto, not '%s'\n", v);
                return 2;
            }
        } else if (!strcmp(a, "--checkpoint-interval")) {
            if (parse_int(a, v, 0, 86400 * 365, &x)) return 2;
            c.checkpoint_interval_s = (int)x;
        } else if (!strcmp(a, "--test-text-pass-ms")) { /* test hooks: not in --help */
            if (parse_int(a, v, 0, 60000, &x)) return 2;
            c.test_text_pass_ms = (int)x;
        } else if (!strcmp(a, "--test-store-ms")) {
            if (parse_int(a, v, 0, 60000, &x)) return 2;
            c.test_store_ms = (int)x;
        } else if (!strcmp(a, "--test-no-openat2")) {
            if (parse_int(a, v, 0, 1, &x)) return 2;
            c.test_no_openat2 = (int)x;
        } else if (!strcmp(a, "--test-hold-build-ms")) {
            if (parse_int(a, v, 0, 600000, &x)) return 2;
            c.test_hold_build_ms = (int)x;
        } else {
            fprintf(stderr, "umgdb serve: unknown option '%s' (see umgdb serve --help)\n", a);
            return 2;
        }
    }
    if (!c.data_dir || !c.model_dir) {
        fprintf(stderr, "umgdb serve: --data DIR and --model DIR are required (see umgdb serve --help)\n");
        return 2;
    }
    char *token = NULL;
    if (token_file) {
        if (!(token = read_token_file(token_file))) return 2;
    } else if (getenv("UMGDB_AUTH_TOKEN") && *getenv("UMGDB_AUTH_TOKEN")) {
        if (!(token = token_from("UMGDB_AUTH_TOKEN", getenv("UMGDB_AUTH_TOKEN")))) return 2;
    }
    c.token = token;
    int rc = server_run(&c);
    if (token) {
        memset(token, 0, strlen(token));
        free(token);
    }
    if (rc) {
        fprintf(stderr, "umgdb serve: %s: %s\n", umg_error_name(rc), umg_err_msg());
        return 1;
    }
    return 0;
}
