/* cli_util.h - helpers shared by the client subcommands (ingest, query, stats,
 * get, delete): argument parsing, the server address and auth token, the
 * directory walk of `umgdb ingest`, a terminal progress bar, plain-text
 * tables, JSON/HTML escaping and the results page of `umgdb query --html`.
 *
 * Errors: functions returning int give 0 or a negative UMG_E* code with a
 * message in umg_err_msg(), as everywhere in umgdb. */
#ifndef UMG_CLI_UTIL_H
#define UMG_CLI_UTIL_H

#include <getopt.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "client.h"

/* ---- arguments ----------------------------------------------------------- */

/* The server's documented default address, and the environment variables the
 * client reads. */
#define CLI_DEFAULT_SERVER UMG_DEFAULT_ADDR
#define CLI_ENV_SERVER "UMGDB_SERVER"
#define CLI_ENV_TOKEN "UMGDB_AUTH_TOKEN"

/* Whole-string integer / finite number parsing; 0 or UMG_EINVAL. */
int cli_parse_long(const char *s, long min, long max, long *out);
int cli_parse_u64(const char *s, uint64_t *out);
int cli_parse_double(const char *s, double *out);

/* --server if given, else $UMGDB_SERVER if set and non-empty, else
 * CLI_DEFAULT_SERVER.  Returns one of those strings (not a copy). */
const char *cli_server_addr(const char *flag);

/* The auth token: the first line of token_file (trailing CR/LF and spaces
 * stripped) when token_file is given, else $UMGDB_AUTH_TOKEN, else none.
 * *out is malloc'd (free()) or NULL when there is no token.  A token file
 * that cannot be read or is empty is an error (UMG_EIO / UMG_EINVAL), so a
 * typo in --token-file never silently sends no token. */
int cli_read_token(const char *token_file, char **out);

/* Split "a,b,c" at commas into a NULL-terminated malloc'd array of malloc'd
 * strings (empty items dropped); free with cli_strv_free.  *n gets the count. */
int cli_split_list(const char *s, char ***out, int *n);
void cli_strv_free(char **v);

/* Exit codes of the client subcommands. */
enum {
    CLI_EXIT_OK = 0,
    CLI_EXIT_FAILED = 1,   /* the operation failed (or, for ingest, some files did) */
    CLI_EXIT_USAGE = 2,    /* bad arguments */
    CLI_EXIT_SERVER = 3,   /* server unreachable, refused us (auth), or the connection broke */
};

/* ---- talking to the server ----------------------------------------------- */

/* Options every client subcommand takes; parse them with cli_common_option. */
typedef struct cli_common {
    const char *server;      /* --server, NULL = cli_server_addr's default */
    const char *token_file;  /* --token-file */
    int timeout_ms;          /* --timeout SECONDS: how long to wait for one answer */
    bool json;               /* --json */
} cli_common;

#define CLI_DEFAULT_TIMEOUT_MS 60000

/* getopt_long option codes of the common options, and their table entries
 * (put CLI_COMMON_LONGOPTS first in a command's longopts). */
enum { CLI_OPT_SERVER = 0x1000, CLI_OPT_TOKEN_FILE, CLI_OPT_TIMEOUT, CLI_OPT_JSON };
#define CLI_COMMON_LONGOPTS                                                  \
    {"server", required_argument, NULL, CLI_OPT_SERVER},                     \
    {"token-file", required_argument, NULL, CLI_OPT_TOKEN_FILE},             \
    {"timeout", required_argument, NULL, CLI_OPT_TIMEOUT},                   \
    {"json", no_argument, NULL, CLI_OPT_JSON}
#define CLI_COMMON_HELP                                                                    \
    "  --server ADDR       HOST:PORT or unix:PATH (default $" CLI_ENV_SERVER " or " CLI_DEFAULT_SERVER ")\n" \
    "  --token-file FILE   auth token (first line); default $" CLI_ENV_TOKEN "\n"                  \
    "  --timeout SECONDS   how long to wait for the server's answer (default 60)\n"

void cli_common_init(cli_common *c);
/* Handle one common option: 1 if opt was one (0 if not), -1 on a bad value
 * (message printed as "umgdb CMD: ..."). */
int cli_common_option(const char *cmd, cli_common *c, int opt, const char *arg);

/* Connect to the server and say hello with the token.  On failure prints
 * "umgdb CMD: ..." (cannot connect / refused and why) on stderr and returns
 * CLI_EXIT_SERVER; 0 and *out on success.  *hello (may be NULL) gets the
 * hello response (proto_response_free). */
int cli_connect(const char *cmd, const cli_common *c, umg_client **out, proto_response **hello);

/* Report a failed client call (connection or timeout) on stderr; returns the
 * exit code to use (CLI_EXIT_SERVER). */
int cli_report_call(const char *cmd, const cli_common *c, int rc);
/* Report an error response on stderr as "umgdb CMD: code: message";
 * returns CLI_EXIT_SERVER for unauthorized/shutting_down, else CLI_EXIT_FAILED. */
int cli_report_error(const char *cmd, const proto_response *r);

/* A msgpack object as JSON (new reference; NULL only out of memory).  bin
 * values become {"bin": N} (their size), non-string map keys their JSON text. */
json_t *cli_to_json(const msgpack_object *o);
/* Print a JSON value on stdout, indented, reals with 9 significant digits
 * (float32-exact). */
int cli_print_json(json_t *j);
/* Print a map readably, one "key.sub: value" line per scalar or array of
 * scalars, nested maps flattened. */
void cli_print_flat(FILE *out, const msgpack_object *o, const char *prefix);

/* A str object as a malloc'd C string (NULL if not a str or out of memory). */
char *cli_obj_strdup(const msgpack_object *o);
/* "x,y wxh" for a box (rounded to pixels) into buf. */
const char *cli_box_str(char *buf, size_t len, const double box[4]);

/* ---- the directory walk ------------------------------------------------- */

enum cli_image_kind { CLI_NOT_IMAGE = 0, CLI_JPEG = 1, CLI_PNG = 2, CLI_OTHER_IMAGE = 3 /* HEIC, WebP, ... */ };

/* The formats cli_image_kind recognises, for messages ("not an image (JPEG or
 * PNG)"); change it together with cli_image_kind. */
#define CLI_IMAGE_FORMATS "JPEG, PNG, HEIC, AVIF, WebP, TIFF or GIF"

/* What a file is: by its first bytes (enc_image_sniff), else by its extension
 * (.jpg .jpeg .jpe .png .heic .heif .avif .webp .tif .tiff .gif, any case) so that a damaged photo is
 * sent and reported as failed rather than silently skipped.  A file that
 * cannot be opened counts by its extension.  The one place the client decides
 * what is a photo: the walk and its "skipped" list follow it. */
enum cli_image_kind cli_image_kind(const char *path);

/* The name under which ingest stores path and under which get/delete --path
 * look it up: absolute, symlinks resolved (realpath).  A path that does not
 * exist (any more) is made absolute against the working directory with its
 * longest existing leading directory resolved and "." / ".." components
 * removed, so `get --path x.jpg` finds what `ingest x.jpg` stored even after
 * x.jpg was deleted.  *out malloc'd (free()); UMG_ENOMEM, or UMG_EIO when
 * the working directory cannot be read. */
int cli_abs_path(const char *path, char **out);

typedef struct cli_walk_file {
    char *path;         /* absolute, symlinks resolved (realpath): the name the
                           server stores, stable across runs and working dirs */
    uint64_t size;
    int64_t mtime;
} cli_walk_file;

typedef struct cli_walk_error {
    char *path;         /* as found */
    char *reason;
} cli_walk_error;

typedef struct cli_walk {
    cli_walk_file *files;  /* photos, in walk order (names sorted per directory) */
    size_t n_files;
    cli_walk_error *skipped; /* files that are not photos (not an image, not a regular
                                file), each with why, in walk order */
    size_t n_skipped;
    size_t n_hidden;       /* entries starting with '.' met while recursing (not followed) */
    cli_walk_error *errors;/* unreadable directories, missing arguments, ... */
    size_t n_errors;
} cli_walk;

/* Walk each of paths[0..n): a file is taken as it is (if it is a photo, else
 * it is listed as skipped), a directory recursively.  Inside directories, names starting with '.' are
 * skipped (thumbnail caches, .git); symlinks are followed, each directory is
 * visited once (device+inode), and a file reached twice is listed once.
 * Problems with single entries are collected in out->errors and do not stop
 * the walk; only running out of memory fails (UMG_ENOMEM).  out is filled in
 * either way; free it with cli_walk_free. */
int cli_walk_paths(const char *const *paths, int n, cli_walk *out);
void cli_walk_free(cli_walk *w);   /* NULL-safe; frees what cli_walk_paths filled in */

/* Read a whole file into a malloc'd buffer (free()); UMG_ENOENT / UMG_EIO /
 * UMG_ETOOBIG (over max bytes) / UMG_ENOMEM with the path in the message. */
int cli_read_file(const char *path, size_t max, uint8_t **data, size_t *len);

/* ---- progress ------------------------------------------------------------ */

/* A one-line progress bar redrawn in place on a terminal (stderr), at most
 * ten times a second:  [#######.....]  120/239  50%  18.3 img/s  ETA 0:06  2 failed
 * Nothing is drawn when the stream is not a terminal (see enabled). */
typedef struct cli_progress {
    FILE *out;
    bool enabled;
    size_t total;
    double start, last_draw;
    int width;          /* of the last line drawn, to blank it */
} cli_progress;

void cli_progress_init(cli_progress *p, FILE *out, size_t total, bool enabled);
/* done: finished (any outcome), failed: of those, failed. */
void cli_progress_update(cli_progress *p, size_t done, size_t failed, bool force);
/* Erase the bar (call before printing anything else on that stream). */
void cli_progress_clear(cli_progress *p);
/* End the bar's line with a newline instead, leaving it visible (where an
 * interrupted run stopped). */
void cli_progress_keep(cli_progress *p);

/* Seconds on the monotonic clock. */
double cli_now(void);

/* ---- tables -------------------------------------------------------------- */

/* A plain-text table: columns sized to their widest cell (counted in UTF-8
 * code points), left-aligned unless the column is marked numeric. */
typedef struct cli_table cli_table;

cli_table *cli_table_new(int ncols, const char *const *headers, const bool *right_align);
/* Add a row of ncols cells (copied; NULL is printed as empty).  UMG_ENOMEM. */
int cli_table_row(cli_table *t, const char *const *cells);
void cli_table_print(const cli_table *t, FILE *out);
void cli_table_free(cli_table *t);   /* NULL-safe */

/* ---- escaping ------------------------------------------------------------ */

/* Write s with &, <, >, ", ' escaped for HTML text and attribute values. */
void cli_html_escape(FILE *out, const char *s);
/* Percent-encode a file path into a relative or file:// URL path ('/' kept,
 * unreserved ASCII kept, everything else as %XX of its bytes). */
void cli_url_path(FILE *out, const char *path);

/* ---- the results page ---------------------------------------------------- */

typedef struct cli_heatmap {
    int rows, cols;        /* grid size */
    const double *values;  /* rows x cols, row-major */
    double box[4];         /* the part of the image the grid covers, original pixels */
    bool has_box;          /* false: the whole image */
} cli_heatmap;

typedef struct cli_html_hit {
    uint64_t image_id;
    const char *path;      /* as stored by the server */
    double score;          /* the cosine */
    bool has_refined;      /* refined: the score the hits are ranked by (query --refine) */
    double refined;
    bool has_box;
    double box[4];         /* x, y, w, h in original-image pixels (after EXIF orientation) */
    uint32_t width, height;/* the image's size (0 if unknown: the box is then placed by a
                              small script from the picture's natural size) */
    const cli_heatmap *heatmap; /* NULL if none */
} cli_html_hit;

/* Write a self-contained results page (inline CSS, one optional inline
 * script) to html_path: one card per hit with its rank, score, path and
 * image, the box drawn as an SVG rectangle in the image's own pixel
 * coordinates (viewBox = the image size) so that it scales with whatever size
 * the browser displays the picture at; a heatmap as a grid of translucent
 * cells the same way.  Images are referenced, not embedded (a page of 100
 * photos stays small): by a path relative to the page's directory (with ../
 * as needed) when the image path is absolute, so that the page and the
 * photos can move together; else (a path the client cannot resolve) as it
 * is.  UMG_EIO naming the file when it cannot be written. */
int cli_html_write(const char *html_path, const char *title, const char *subtitle,
                   const cli_html_hit *hits, int n);

#endif
