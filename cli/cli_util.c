/* cli_util.c - see cli_util.h. */
#include "cli_util.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "enc_image.h"
#include "umg_error.h"
#include "umg_util.h"

/* ---- arguments ----------------------------------------------------------- */

int cli_parse_long(const char *s, long min, long max, long *out) { return umg_parse_long(s, min, max, out); }

int cli_parse_u64(const char *s, uint64_t *out) { return umg_parse_u64(s, out); }

int cli_parse_double(const char *s, double *out)
{
    if (!s || !*s || isspace((unsigned char)*s))
        return UMG_EINVAL;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v))
        return UMG_EINVAL;
    *out = v;
    return 0;
}

const char *cli_server_addr(const char *flag)
{
    if (flag && *flag)
        return flag;
    const char *env = getenv(CLI_ENV_SERVER);
    return env && *env ? env : CLI_DEFAULT_SERVER;
}

int cli_read_token(const char *token_file, char **out)
{
    *out = NULL;
    if (!token_file) {
        const char *env = getenv(CLI_ENV_TOKEN);
        if (!env || !*env)
            return 0;
        if (!(*out = strdup(env)))
            return umg_err_set(UMG_ENOMEM, "out of memory");
        return 0;
    }
    uint8_t *data;
    size_t len;
    int rc = cli_read_file(token_file, 64 * 1024, &data, &len);
    if (rc)
        return rc;
    size_t n = 0;
    while (n < len && data[n] != '\n' && data[n] != '\r')
        n++;
    while (n > 0 && (data[n - 1] == ' ' || data[n - 1] == '\t'))
        n--;
    if (n == 0 || memchr(data, 0, n)) {
        free(data);
        return umg_err_set(UMG_EINVAL, "%s: no token on its first line", token_file);
    }
    data[n] = 0;
    *out = (char *)data;
    return 0;
}

void cli_strv_free(char **v)
{
    if (!v)
        return;
    for (char **p = v; *p; p++)
        free(*p);
    free(v);
}

int cli_split_list(const char *s, char ***out, int *n)
{
    *out = NULL;
    *n = 0;
    size_t cap = 1;
    for (const char *p = s; *p; p++)
        cap += *p == ',';
    char **v = calloc(cap + 1, sizeof *v);
    if (!v)
        return umg_err_set(UMG_ENOMEM, "out of memory");
    int k = 0;
    const char *p = s;
    for (;;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len) {
            if (!(v[k] = strndup(p, len))) {
                cli_strv_free(v);
                return umg_err_set(UMG_ENOMEM, "out of memory");
            }
            k++;
        }
        if (!e)
            break;
        p = e + 1;
    }
    *out = v;
    *n = k;
    return 0;
}

/* ---- talking to the server ----------------------------------------------- */

void cli_common_init(cli_common *c)
{
    *c = (cli_common){.timeout_ms = CLI_DEFAULT_TIMEOUT_MS};
}

int cli_common_option(const char *cmd, cli_common *c, int opt, const char *arg)
{
    switch (opt) {
    case CLI_OPT_SERVER:
        if (!*arg) {
            fprintf(stderr, "umgdb %s: --server wants HOST:PORT or unix:PATH\n", cmd);
            return -1;
        }
        c->server = arg;
        return 1;
    case CLI_OPT_TOKEN_FILE: c->token_file = arg; return 1;
    case CLI_OPT_TIMEOUT: {
        double s;
        if (cli_parse_double(arg, &s) || s <= 0 || s > 86400) {
            fprintf(stderr, "umgdb %s: --timeout wants seconds in (0, 86400], not '%s'\n", cmd, arg);
            return -1;
        }
        c->timeout_ms = s * 1000 < 1 ? 1 : (int)(s * 1000);
        return 1;
    }
    case CLI_OPT_JSON: c->json = true; return 1;
    default: return 0;
    }
}

int cli_connect(const char *cmd, const cli_common *c, umg_client **out, proto_response **hello)
{
    *out = NULL;
    if (hello)
        *hello = NULL;
    const char *addr = cli_server_addr(c->server);
    char *token = NULL;
    int rc = cli_read_token(c->token_file, &token);
    if (rc) {
        fprintf(stderr, "umgdb %s: auth token: %s\n", cmd, umg_err_msg());
        return CLI_EXIT_SERVER;
    }
    umg_client *cl = NULL;
    umg_client_opts o = {.connect_timeout_ms = c->timeout_ms < 10000 ? c->timeout_ms : 10000};
    rc = umg_client_connect(addr, &o, &cl);
    if (rc) {
        /* The client's messages name the address already. */
        if (rc == UMG_EINVAL)
            fprintf(stderr, "umgdb %s: %s\n", cmd, umg_err_msg());
        else
            fprintf(stderr, "umgdb %s: %s\n  (is `umgdb serve` running there? --server or $" CLI_ENV_SERVER
                            " selects the address)\n",
                    cmd, umg_err_msg());
        free(token);
        return rc == UMG_EINVAL ? CLI_EXIT_USAGE : CLI_EXIT_SERVER;
    }
    proto_response *r = NULL;
    char client_name[64];
    snprintf(client_name, sizeof client_name, "umgdb-cli/%s", UMG_VERSION);
    rc = umg_client_hello(cl, token, client_name, c->timeout_ms, &r);
    free(token);
    if (rc) {
        if (r && !r->ok && r->code == UMG_EAUTH)
            fprintf(stderr, "umgdb %s: the server at %s refused us: %s%s\n", cmd, addr, r->message,
                    c->token_file || getenv(CLI_ENV_TOKEN) ? "" :
                    " (it needs an auth token: --token-file FILE or $" CLI_ENV_TOKEN ")");
        else if (r && !r->ok)
            fprintf(stderr, "umgdb %s: the server at %s refused us: %s: %s\n", cmd, addr, r->code_name,
                    r->message);
        else
            fprintf(stderr, "umgdb %s: no answer from the server at %s: %s\n", cmd, addr, umg_err_msg());
        proto_response_free(r);
        umg_client_close(cl);
        return CLI_EXIT_SERVER;
    }
    if (hello)
        *hello = r;
    else
        proto_response_free(r);
    *out = cl;
    return 0;
}

int cli_report_call(const char *cmd, const cli_common *c, int rc)
{
    const char *addr = cli_server_addr(c->server);
    if (rc == UMG_ETIMEOUT)
        fprintf(stderr, "umgdb %s: no answer from the server at %s within %.0f s\n", cmd, addr,
                c->timeout_ms / 1000.0);
    else
        fprintf(stderr, "umgdb %s: lost the connection to the server at %s: %s\n", cmd, addr, umg_err_msg());
    return CLI_EXIT_SERVER;
}

int cli_report_error(const char *cmd, const proto_response *r)
{
    fprintf(stderr, "umgdb %s: %s: %s\n", cmd, r->code_name, r->message);
    return r->code == UMG_EAUTH || r->code == UMG_ESHUTDOWN ? CLI_EXIT_SERVER : CLI_EXIT_FAILED;
}

json_t *cli_to_json(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: return json_null();
    case MSGPACK_OBJECT_BOOLEAN: return json_boolean(o->via.boolean);
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (o->via.u64 > (uint64_t)INT64_MAX)
            return json_real((double)o->via.u64);
        return json_integer((json_int_t)o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return json_integer((json_int_t)o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return isfinite(o->via.f64) ? json_real(o->via.f64) : json_null();
    case MSGPACK_OBJECT_STR: {
        json_t *s = json_stringn(o->via.str.ptr, o->via.str.size);
        /* jansson refuses invalid UTF-8; the server never sends any, but say so
         * rather than lose the whole document. */
        return s ? s : json_string("(invalid UTF-8)");
    }
    case MSGPACK_OBJECT_BIN: return json_pack("{s:I}", "bin", (json_int_t)o->via.bin.size);
    case MSGPACK_OBJECT_ARRAY: {
        json_t *a = json_array();
        for (uint32_t i = 0; a && i < o->via.array.size; i++)
            if (json_array_append_new(a, cli_to_json(&o->via.array.ptr[i]))) {
                json_decref(a);
                return NULL;
            }
        return a;
    }
    case MSGPACK_OBJECT_MAP: {
        json_t *m = json_object();
        for (uint32_t i = 0; m && i < o->via.map.size; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            char *key = NULL;
            if (k->type == MSGPACK_OBJECT_STR) {
                key = strndup(k->via.str.ptr, k->via.str.size);
            } else {
                json_t *kj = cli_to_json(k);
                key = kj ? json_dumps(kj, JSON_ENCODE_ANY | JSON_COMPACT) : NULL;
                json_decref(kj);
            }
            if (!key || json_object_set_new(m, key, cli_to_json(&o->via.map.ptr[i].val))) {
                free(key);
                json_decref(m);
                return NULL;
            }
            free(key);
        }
        return m;
    }
    default: return json_null();
    }
}

int cli_print_json(json_t *j)
{
    if (!j)
        return umg_err_set(UMG_ENOMEM, "out of memory");
    if (json_dumpf(j, stdout, JSON_INDENT(2) | JSON_REAL_PRECISION(9) | JSON_ENCODE_ANY))
        return umg_err_set(UMG_EIO, "writing the output failed");
    fputc('\n', stdout);
    return 0;
}

static bool is_scalar(const msgpack_object *o)
{
    return o->type != MSGPACK_OBJECT_ARRAY && o->type != MSGPACK_OBJECT_MAP;
}

static void print_scalar(FILE *out, const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: fputs("-", out); break;
    case MSGPACK_OBJECT_BOOLEAN: fputs(o->via.boolean ? "yes" : "no", out); break;
    case MSGPACK_OBJECT_POSITIVE_INTEGER: fprintf(out, "%llu", (unsigned long long)o->via.u64); break;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: fprintf(out, "%lld", (long long)o->via.i64); break;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: fprintf(out, "%.6g", o->via.f64); break;
    case MSGPACK_OBJECT_STR: fprintf(out, "%.*s", (int)o->via.str.size, o->via.str.ptr); break;
    case MSGPACK_OBJECT_BIN: fprintf(out, "(%u bytes)", o->via.bin.size); break;
    default: fputs("?", out);
    }
}

void cli_print_flat(FILE *out, const msgpack_object *o, const char *prefix)
{
    if (o->type == MSGPACK_OBJECT_MAP) {
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            char key[512];
            int kl = k->type == MSGPACK_OBJECT_STR ? (int)k->via.str.size : 1;
            snprintf(key, sizeof key, "%s%s%.*s", prefix ? prefix : "", prefix && *prefix ? "." : "", kl,
                     k->type == MSGPACK_OBJECT_STR ? k->via.str.ptr : "?");
            cli_print_flat(out, &o->via.map.ptr[i].val, key);
        }
        return;
    }
    fprintf(out, "%s: ", prefix && *prefix ? prefix : "value");
    if (o->type == MSGPACK_OBJECT_ARRAY) {
        bool all_scalar = true;
        for (uint32_t i = 0; i < o->via.array.size; i++)
            all_scalar &= is_scalar(&o->via.array.ptr[i]);
        if (!all_scalar) {
            fprintf(out, "(%u items)\n", o->via.array.size);
            return;
        }
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            if (i)
                fputs(", ", out);
            print_scalar(out, &o->via.array.ptr[i]);
        }
        if (!o->via.array.size)
            fputs("-", out);
    } else {
        print_scalar(out, o);
        /* sizes also in binary units, for people */
        size_t pl = prefix ? strlen(prefix) : 0;
        if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER && o->via.u64 >= 10240 && pl >= 5 &&
            !strcmp(prefix + pl - 5, "bytes")) {
            double v = (double)o->via.u64;
            const char *unit = "KiB";
            v /= 1024;
            if (v >= 1024)
                v /= 1024, unit = "MiB";
            if (v >= 1024)
                v /= 1024, unit = "GiB";
            fprintf(out, " (%.1f %s)", v, unit);
        }
    }
    fputc('\n', out);
}

char *cli_obj_strdup(const msgpack_object *o)
{
    const char *s;
    size_t len;
    if (!proto_obj_str(o, &s, &len))
        return NULL;
    return strndup(s, len);
}

const char *cli_box_str(char *buf, size_t len, const double box[4])
{
    snprintf(buf, len, "%.0f,%.0f %.0fx%.0f", box[0], box[1], box[2], box[3]);
    return buf;
}

/* ---- files --------------------------------------------------------------- */

int cli_read_file(const char *path, size_t max, uint8_t **data, size_t *len)
{
    return umg_read_file(path, max, data, len);
}

static bool has_image_ext(const char *path)
{
    const char *slash = strrchr(path, '/');
    const char *dot = strrchr(slash ? slash + 1 : path, '.');
    if (!dot)
        return false;
    return !strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg") || !strcasecmp(dot, ".jpe") ||
           !strcasecmp(dot, ".png") || !strcasecmp(dot, ".heic") || !strcasecmp(dot, ".heif") ||
           !strcasecmp(dot, ".avif") || !strcasecmp(dot, ".webp") || !strcasecmp(dot, ".tif") ||
           !strcasecmp(dot, ".tiff") || !strcasecmp(dot, ".gif");
}

/* The first ENC_IMAGE_SNIFF_BYTES of path into head (what enc_image_sniff
 * reads); the count read, 0 when the file cannot be opened. */
static size_t read_head(const char *path, uint8_t head[ENC_IMAGE_SNIFF_BYTES])
{
    size_t got = 0;
    FILE *f = fopen(path, "rb");
    if (f) {
        got = fread(head, 1, ENC_IMAGE_SNIFF_BYTES, f);
        fclose(f);
    }
    return got;
}

enum cli_image_kind cli_image_kind(const char *path)
{
    uint8_t head[ENC_IMAGE_SNIFF_BYTES];
    size_t got = read_head(path, head);
    int fmt = enc_image_sniff(head, got, NULL); /* by content (issue 17) */
    if (fmt != ENC_FMT_UNKNOWN)
        return fmt == ENC_FMT_JPEG ? CLI_JPEG : fmt == ENC_FMT_PNG ? CLI_PNG : CLI_OTHER_IMAGE;
    if (has_image_ext(path)) {
        const char *dot = strrchr(path, '.');
        return !strcasecmp(dot, ".png") ? CLI_PNG : CLI_JPEG;
    }
    return CLI_NOT_IMAGE;
}

/* Append component c (length n) to the absolute path in buf (len bytes
 * used, room for it checked by the caller): "." is nothing, ".." drops the
 * last component (not above "/"). */
static size_t append_component(char *buf, size_t len, const char *c, size_t n)
{
    if (n == 0 || (n == 1 && c[0] == '.'))
        return len;
    if (n == 2 && c[0] == '.' && c[1] == '.') {
        while (len > 1 && buf[len - 1] != '/')
            len--;
        if (len > 1)
            len--;   /* the slash before the dropped component */
        buf[len] = 0;
        return len;
    }
    if (len > 1)
        buf[len++] = '/';
    memcpy(buf + len, c, n);
    len += n;
    buf[len] = 0;
    return len;
}

int cli_abs_path(const char *path, char **out)
{
    *out = realpath(path, NULL);
    if (*out)
        return 0;
    if (errno == ENOMEM)
        return umg_err_set(UMG_ENOMEM, "out of memory");
    /* It does not exist (or cannot be resolved): absolute against the working
     * directory, then the longest leading directory that resolves. */
    char *abs;
    if (path[0] == '/') {
        abs = strdup(path);
    } else {
        char *cwd = getcwd(NULL, 0);
        if (!cwd)
            return umg_err_set(errno == ENOMEM ? UMG_ENOMEM : UMG_EIO, "cannot read the working directory: %s",
                               strerror(errno));
        size_t len = strlen(cwd) + 1 + strlen(path) + 1;
        if ((abs = malloc(len)))
            snprintf(abs, len, "%s/%s", cwd, path);
        free(cwd);
    }
    if (!abs)
        return umg_err_set(UMG_ENOMEM, "out of memory");
    size_t alen = strlen(abs);
    char *base = NULL;
    size_t cut = alen;   /* abs[0..cut) resolves to base; the rest is appended */
    while (cut > 0) {
        while (cut > 0 && abs[cut - 1] != '/')
            cut--;
        if (cut == 0)
            break;
        char saved = abs[cut - 1];
        abs[cut - 1] = 0;
        base = realpath(cut == 1 ? "/" : abs, NULL);
        abs[cut - 1] = saved;
        if (base)
            break;
        cut--;
    }
    size_t blen = base ? strlen(base) : 1;
    char *res = malloc(blen + 1 + (alen - cut) + 1);
    if (!res) {
        free(base);
        free(abs);
        return umg_err_set(UMG_ENOMEM, "out of memory");
    }
    memcpy(res, base ? base : "/", blen + 1);
    free(base);
    size_t len = blen;
    for (const char *c = abs + cut; *c;) {
        size_t n = strcspn(c, "/");
        len = append_component(res, len, c, n);
        c += n;
        while (*c == '/')
            c++;
    }
    free(abs);
    *out = res;
    return 0;
}

/* ---- the directory walk ------------------------------------------------- */

typedef struct dev_ino {
    dev_t dev;
    ino_t ino;
} dev_ino;

/* A set of (device, inode) pairs: open addressing, linear probing, kept at
 * most half full; slot ino 0 marks empty (no file has inode 0 here, and one
 * that did would only lose its duplicate check). */
typedef struct id_set {
    dev_ino *slots;
    size_t cap, n;
} id_set;

static size_t id_hash(dev_t dev, ino_t ino)
{
    uint64_t h = (uint64_t)ino * 0x9e3779b97f4a7c15ull ^ (uint64_t)dev * 0xc2b2ae3d27d4eb4full;
    return (size_t)(h ^ (h >> 31));
}

/* 1 if added, 0 if it was there, UMG_ENOMEM. */
static int id_set_add(id_set *s, dev_t dev, ino_t ino)
{
    if (!ino)
        return 1;
    if (2 * (s->n + 1) > s->cap) {
        size_t ncap = s->cap ? s->cap * 2 : 256;
        dev_ino *ns = calloc(ncap, sizeof *ns);
        if (!ns)
            return UMG_ENOMEM;
        for (size_t i = 0; i < s->cap; i++) {
            if (!s->slots[i].ino)
                continue;
            size_t j = id_hash(s->slots[i].dev, s->slots[i].ino) & (ncap - 1);
            while (ns[j].ino)
                j = (j + 1) & (ncap - 1);
            ns[j] = s->slots[i];
        }
        free(s->slots);
        s->slots = ns;
        s->cap = ncap;
    }
    size_t j = id_hash(dev, ino) & (s->cap - 1);
    while (s->slots[j].ino) {
        if (s->slots[j].ino == ino && s->slots[j].dev == dev)
            return 0;
        j = (j + 1) & (s->cap - 1);
    }
    s->slots[j] = (dev_ino){dev, ino};
    s->n++;
    return 1;
}

typedef struct walker {
    cli_walk *w;
    size_t cap_files, cap_errors, cap_skipped;
    id_set dirs;            /* directories visited (symlink loops, a tree reached twice) */
    id_set files;           /* files listed (a file under two names: links, repeated arguments) */
    int oom;
} walker;

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap * 2 : 64;
    while (ncap < need)
        ncap *= 2;
    void *np = realloc(*p, ncap * elem);
    if (!np)
        return UMG_ENOMEM;
    *p = np;
    *cap = ncap;
    return 0;
}

static void add_entry(walker *k, cli_walk_error **v, size_t *n, size_t *cap, const char *path, const char *reason)
{
    if (grow((void **)v, cap, *n + 1, sizeof **v)) {
        k->oom = 1;
        return;
    }
    char *p = strdup(path), *r = strdup(reason);
    if (!p || !r) {
        free(p);
        free(r);
        k->oom = 1;
        return;
    }
    (*v)[(*n)++] = (cli_walk_error){p, r};
}

static void walk_error(walker *k, const char *path, const char *reason)
{
    add_entry(k, &k->w->errors, &k->w->n_errors, &k->cap_errors, path, reason);
}

static void walk_skip(walker *k, const char *path, const char *reason)
{
    add_entry(k, &k->w->skipped, &k->w->n_skipped, &k->cap_skipped, path, reason);
}

/* Why a file is not sent, into buf: what its leading bytes say it is when they
 * say ("unsupported format: video/mp4", enc_image_sniff), else the formats wanted. */
static const char *skip_reason(const char *path, char *buf, size_t cap)
{
    uint8_t head[ENC_IMAGE_SNIFF_BYTES];
    size_t got = read_head(path, head);
    const char *what = NULL;
    enc_image_sniff(head, got, &what);
    if (what)
        snprintf(buf, cap, "unsupported format: %s", what);
    else
        snprintf(buf, cap, "not an image (" CLI_IMAGE_FORMATS ")");
    return buf;
}

/* st: the file's own stat (symlinks followed). */
static void add_file(walker *k, const char *path, const struct stat *st)
{
    cli_walk *w = k->w;
    /* A file reachable under two names (hard link, symlink, named and inside
     * a named directory) is sent, or listed as skipped, once. */
    int added = id_set_add(&k->files, st->st_dev, st->st_ino);
    if (added <= 0) {
        k->oom |= added < 0;
        return;
    }
    if (!S_ISREG(st->st_mode)) {
        walk_skip(k, path, "not a regular file");
        return;
    }
    if (cli_image_kind(path) == CLI_NOT_IMAGE) {
        char why[96];
        walk_skip(k, path, skip_reason(path, why, sizeof why));
        return;
    }
    if (grow((void **)&w->files, &k->cap_files, w->n_files + 1, sizeof *w->files)) {
        k->oom = 1;
        return;
    }
    char *abs;
    if (cli_abs_path(path, &abs)) {
        walk_error(k, path, umg_err_msg());
        return;
    }
    w->files[w->n_files++] = (cli_walk_file){abs, (uint64_t)st->st_size, (int64_t)st->st_mtime};
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void walk_dir(walker *k, const char *dir, const struct stat *dst, int depth)
{
    int added = id_set_add(&k->dirs, dst->st_dev, dst->st_ino);
    if (added <= 0) {   /* a symlink loop or a second way into the same tree */
        k->oom |= added < 0;
        return;
    }
    if (depth > 256) {
        walk_error(k, dir, "directories nested too deep");
        return;
    }
    DIR *d = opendir(dir);
    if (!d) {
        walk_error(k, dir, strerror(errno));
        return;
    }
    char **names = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    errno = 0;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') {
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
                k->w->n_hidden++;
            continue;
        }
        char *name = strdup(e->d_name);
        if (!name || grow((void **)&names, &cap, n + 1, sizeof *names)) {
            free(name);
            k->oom = 1;
            break;
        }
        names[n++] = name;
    }
    closedir(d);
    /* Sorted, so that runs (and their progress and failure lists) are reproducible. */
    if (n)
        qsort(names, n, sizeof *names, cmp_str);
    size_t dlen = strlen(dir);
    for (size_t i = 0; i < n && !k->oom; i++) {
        size_t len = dlen + 1 + strlen(names[i]) + 1;
        char *path = malloc(len);
        if (!path) {
            k->oom = 1;
            break;
        }
        snprintf(path, len, "%s%s%s", dir, dlen && dir[dlen - 1] == '/' ? "" : "/", names[i]);
        struct stat st;
        if (stat(path, &st)) {
            walk_error(k, path, errno == ENOENT ? "broken symbolic link" : strerror(errno));
        } else if (S_ISDIR(st.st_mode)) {
            walk_dir(k, path, &st, depth + 1);
        } else {
            add_file(k, path, &st);   /* sockets, fifos, devices: listed as skipped */
        }
        free(path);
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
}

int cli_walk_paths(const char *const *paths, int n, cli_walk *out)
{
    memset(out, 0, sizeof *out);
    walker k = {.w = out};
    for (int i = 0; i < n && !k.oom; i++) {
        struct stat st;
        if (stat(paths[i], &st)) {
            walk_error(&k, paths[i], strerror(errno));
        } else if (S_ISDIR(st.st_mode)) {
            walk_dir(&k, paths[i], &st, 0);
        } else {
            add_file(&k, paths[i], &st);   /* a file named explicitly: a photo, or listed as skipped */
        }
    }
    free(k.dirs.slots);
    free(k.files.slots);
    if (k.oom)
        return umg_err_set(UMG_ENOMEM, "out of memory while listing files");
    return 0;
}

void cli_walk_free(cli_walk *w)
{
    if (!w)
        return;
    for (size_t i = 0; i < w->n_files; i++)
        free(w->files[i].path);
    for (size_t i = 0; i < w->n_errors; i++) {
        free(w->errors[i].path);
        free(w->errors[i].reason);
    }
    for (size_t i = 0; i < w->n_skipped; i++) {
        free(w->skipped[i].path);
        free(w->skipped[i].reason);
    }
    free(w->files);
    free(w->errors);
    free(w->skipped);
    memset(w, 0, sizeof *w);
}

/* ---- progress ------------------------------------------------------------ */

double cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

void cli_progress_init(cli_progress *p, FILE *out, size_t total, bool enabled)
{
    *p = (cli_progress){.out = out, .enabled = enabled, .total = total, .start = cli_now(), .last_draw = -1};
}

static void fmt_duration(char *buf, size_t len, double s)
{
    if (!isfinite(s) || s < 0)
        snprintf(buf, len, "--:--");
    else if (s >= 3600)
        snprintf(buf, len, "%d:%02d:%02d", (int)(s / 3600), (int)fmod(s / 60, 60), (int)fmod(s, 60));
    else
        snprintf(buf, len, "%d:%02d", (int)(s / 60), (int)fmod(s, 60));
}

void cli_progress_update(cli_progress *p, size_t done, size_t failed, bool force)
{
    if (!p->enabled)
        return;
    double now = cli_now();
    if (!force && p->last_draw >= 0 && now - p->last_draw < 0.1)
        return;
    p->last_draw = now;
    double el = now - p->start;
    double rate = el > 0 ? done / el : 0;
    char eta[32];
    fmt_duration(eta, sizeof eta, rate > 0 ? (p->total - done) / rate : NAN);
    enum { BAR = 24 };
    char bar[BAR + 1];
    size_t fill = p->total ? done * BAR / p->total : BAR;
    for (int i = 0; i < BAR; i++)
        bar[i] = (size_t)i < fill ? '#' : '.';
    bar[BAR] = 0;
    char line[256];
    int n = snprintf(line, sizeof line, "[%s] %zu/%zu %3d%%  %.1f img/s  ETA %s", bar, done, p->total,
                     p->total ? (int)(done * 100 / p->total) : 100, rate, eta);
    if (failed && n > 0 && (size_t)n < sizeof line)
        n += snprintf(line + n, sizeof line - (size_t)n, "  %zu failed", failed);
    if (n < 0)
        return;
    if (n >= (int)sizeof line)
        n = (int)sizeof line - 1;
    int pad = p->width > n ? p->width - n : 0;
    fprintf(p->out, "\r%s%*s", line, pad, "");
    fflush(p->out);
    p->width = n;
}

void cli_progress_clear(cli_progress *p)
{
    if (!p->enabled || !p->width)
        return;
    fprintf(p->out, "\r%*s\r", p->width, "");
    fflush(p->out);
    p->width = 0;
}

void cli_progress_keep(cli_progress *p)
{
    if (!p->enabled || !p->width)
        return;
    fputc('\n', p->out);
    fflush(p->out);
    p->width = 0;
}

/* ---- tables -------------------------------------------------------------- */

struct cli_table {
    int ncols;
    char **headers;
    bool *right;
    char ***rows;
    size_t nrows, cap;
};

cli_table *cli_table_new(int ncols, const char *const *headers, const bool *right_align)
{
    cli_table *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->ncols = ncols;
    t->headers = calloc((size_t)ncols, sizeof *t->headers);
    t->right = calloc((size_t)ncols, sizeof *t->right);
    if (!t->headers || !t->right) {
        cli_table_free(t);
        return NULL;
    }
    for (int c = 0; c < ncols; c++) {
        if (!(t->headers[c] = strdup(headers[c] ? headers[c] : ""))) {
            cli_table_free(t);
            return NULL;
        }
        t->right[c] = right_align && right_align[c];
    }
    return t;
}

int cli_table_row(cli_table *t, const char *const *cells)
{
    if (grow((void **)&t->rows, &t->cap, t->nrows + 1, sizeof *t->rows))
        return umg_err_set(UMG_ENOMEM, "out of memory");
    char **row = calloc((size_t)t->ncols, sizeof *row);
    if (!row)
        return umg_err_set(UMG_ENOMEM, "out of memory");
    for (int c = 0; c < t->ncols; c++) {
        if (!(row[c] = strdup(cells[c] ? cells[c] : ""))) {
            for (int j = 0; j < c; j++)
                free(row[j]);
            free(row);
            return umg_err_set(UMG_ENOMEM, "out of memory");
        }
    }
    t->rows[t->nrows++] = row;
    return 0;
}

/* Display width: code points (not bytes), so accented paths line up. */
static int text_width(const char *s)
{
    int w = 0;
    for (; *s; s++)
        w += ((unsigned char)*s & 0xc0) != 0x80;
    return w;
}

static void print_row(const cli_table *t, char *const *cells, const int *widths, FILE *out)
{
    for (int c = 0; c < t->ncols; c++) {
        int pad = widths[c] - text_width(cells[c]);
        bool last = c == t->ncols - 1;
        if (t->right[c])
            fprintf(out, "%*s%s", pad, "", cells[c]);
        else
            fprintf(out, "%s%*s", cells[c], last ? 0 : pad, "");
        fputs(last ? "\n" : "  ", out);
    }
}

void cli_table_print(const cli_table *t, FILE *out)
{
    int *widths = calloc((size_t)t->ncols, sizeof *widths);
    if (!widths)
        return;
    for (int c = 0; c < t->ncols; c++) {
        widths[c] = text_width(t->headers[c]);
        for (size_t r = 0; r < t->nrows; r++) {
            int w = text_width(t->rows[r][c]);
            if (w > widths[c])
                widths[c] = w;
        }
    }
    print_row(t, t->headers, widths, out);
    for (size_t r = 0; r < t->nrows; r++)
        print_row(t, t->rows[r], widths, out);
    free(widths);
}

void cli_table_free(cli_table *t)
{
    if (!t)
        return;
    for (size_t r = 0; r < t->nrows; r++) {
        for (int c = 0; c < t->ncols; c++)
            free(t->rows[r][c]);
        free(t->rows[r]);
    }
    free(t->rows);
    if (t->headers)
        for (int c = 0; c < t->ncols; c++)
            free(t->headers[c]);
    free(t->headers);
    free(t->right);
    free(t);
}

/* ---- escaping ------------------------------------------------------------ */

void cli_html_escape(FILE *out, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '&': fputs("&amp;", out); break;
        case '<': fputs("&lt;", out); break;
        case '>': fputs("&gt;", out); break;
        case '"': fputs("&quot;", out); break;
        case '\'': fputs("&#39;", out); break;
        default: fputc(*s, out);
        }
    }
}

void cli_url_path(FILE *out, const char *path)
{
    for (const unsigned char *p = (const unsigned char *)path; *p; p++) {
        if (isalnum(*p) || strchr("/-._~", *p))
            fputc(*p, out);
        else
            fprintf(out, "%%%02X", *p);
    }
}

/* ---- the results page ---------------------------------------------------- */

/* The directory of the page, absolute and resolved (malloc'd), or NULL. */
static char *page_dir(const char *html_path)
{
    char *copy = strdup(html_path);
    if (!copy)
        return NULL;
    char *slash = strrchr(copy, '/');
    const char *dir = ".";
    if (slash == copy)
        dir = "/";
    else if (slash) {
        *slash = 0;
        dir = copy;
    }
    char *abs = realpath(dir, NULL);
    free(copy);
    return abs;
}

/* Write the URL of image path as seen from a page in directory base
 * (absolute, resolved): relative with ../ steps when path is absolute, else
 * as given.  Compared component by component ("/a/bc" is not under "/a/b"). */
static void write_image_url(FILE *out, const char *base, const char *path)
{
    if (!base || path[0] != '/') {
        cli_url_path(out, path);
        return;
    }
    const char *b = base, *p = path;
    /* Consume common leading components; p stays at the start of a component. */
    for (;;) {
        while (*b == '/')
            b++;
        while (*p == '/')
            p++;
        if (!*b)
            break;
        size_t lb = strcspn(b, "/"), lp = strcspn(p, "/");
        if (lb != lp || memcmp(b, p, lb) || !p[lp])  /* differ, or p's last part is the file */
            break;
        b += lb;
        p += lp;
    }
    /* Each remaining component of base is one step up. */
    while (*b) {
        while (*b == '/')
            b++;
        if (!*b)
            break;
        b += strcspn(b, "/");
        fputs("../", out);
    }
    cli_url_path(out, p);
}

static const char page_css[] =
    "body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}"
    "h1{font-size:1.3em;margin:0 0 .2em}.sub{color:#666;margin:0 0 1em}"
    ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:1em}"
    ".card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em}"
    ".pic{position:relative;line-height:0}"
    ".pic img{width:100%;height:auto;display:block}"
    ".pic svg{position:absolute;left:0;top:0;width:100%;height:100%}"
    ".box{fill:none;stroke:#ff1744;stroke-width:3;vector-effect:non-scaling-stroke}"
    ".meta{font-size:.85em;margin-top:.4em;word-break:break-all}"
    ".rank{font-weight:bold}.score{color:#06c}.missing{color:#b00}"
    ".legend{display:flex;align-items:center;gap:.4em;font-size:.8em;margin-top:.3em}"
    ".legend .ramp{flex:1;height:.8em;border:1px solid #ccc}"
    ".scale{font-size:.85em;color:#444;margin:0 0 1em}";

/* When the server did not say how big an image is, size the overlay from the
 * decoded picture: the SVG's viewBox must be the image's own pixel size. */
static const char page_script[] =
    "document.querySelectorAll('.pic img').forEach(function(img){"
    "function fit(){var s=img.parentNode.querySelector('svg');"
    "if(s&&!s.getAttribute('viewBox')&&img.naturalWidth)"
    "s.setAttribute('viewBox','0 0 '+img.naturalWidth+' '+img.naturalHeight);}"
    "if(img.complete)fit();else img.addEventListener('load',fit);});";

/* A cell colour for a heatmap value in [0, 1] (min..max over the grid):
 * nearly clear blue to half-opaque red. */
static void heat_colour(double t, int *r, int *g, int *b, double *a)
{
    if (!(t >= 0))
        t = 0;
    if (t > 1)
        t = 1;
    *r = (int)lround(255 * t);
    *g = (int)lround(64 * (1 - fabs(2 * t - 1)));
    *b = (int)lround(255 * (1 - t));
    *a = 0.05 + 0.55 * t;   /* low values nearly clear, so the photo stays visible */
}

/* The lowest and highest finite value of a heatmap: the ends of its colour
 * scale.  false when it has none (nothing is drawn then). */
static bool heat_range(const cli_heatmap *h, double *lo, double *hi)
{
    if (h->rows < 1 || h->cols < 1 || !h->values)
        return false;
    *lo = INFINITY;
    *hi = -INFINITY;
    size_t n = (size_t)h->rows * (size_t)h->cols;
    for (size_t i = 0; i < n; i++) {
        if (isfinite(h->values[i])) {
            if (h->values[i] < *lo)
                *lo = h->values[i];
            if (h->values[i] > *hi)
                *hi = h->values[i];
        }
    }
    return *hi >= *lo;
}

/* The colour scale of one heatmap: a bar with heat_colour's ramp (the very
 * colours of the cells, over white) from its lowest to its highest cell
 * cosine, both printed at its ends. */
static void write_heat_legend(FILE *out, double lo, double hi)
{
    fputs("<div class=\"legend\"><span class=\"lo\">", out);
    fprintf(out, "%.4f</span><span class=\"ramp\" style=\"background:linear-gradient(to right", lo);
    for (int i = 0; i <= 4; i++) {
        int R, G, B;
        double a;
        heat_colour(i / 4.0, &R, &G, &B, &a);
        fprintf(out, ",rgba(%d,%d,%d,%.2f)", R, G, B, a);
    }
    fprintf(out, ")\"></span><span class=\"hi\">%.4f</span> cell cosine</div>", hi);
}

static void write_heatmap(FILE *out, const cli_heatmap *h, uint32_t w, uint32_t hgt)
{
    double lo, hi;
    if (!heat_range(h, &lo, &hi))
        return;
    double x0 = 0, y0 = 0, bw = w, bh = hgt;
    if (h->has_box) {
        x0 = h->box[0], y0 = h->box[1], bw = h->box[2], bh = h->box[3];
    }
    double cw = bw / h->cols, ch = bh / h->rows;
    fputs("<g class=\"heat\">", out);
    for (int r = 0; r < h->rows; r++) {
        for (int c = 0; c < h->cols; c++) {
            double v = h->values[(size_t)r * (size_t)h->cols + (size_t)c];
            int R, G, B;
            double a;
            heat_colour(hi > lo ? (v - lo) / (hi - lo) : 1, &R, &G, &B, &a);
            fprintf(out, "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" "
                         "fill=\"rgb(%d,%d,%d)\" fill-opacity=\"%.2f\"><title>%.4f</title></rect>",
                    x0 + c * cw, y0 + r * ch, cw, ch, R, G, B, a, v);
        }
    }
    fputs("</g>", out);
}

int cli_html_write(const char *html_path, const char *title, const char *subtitle,
                   const cli_html_hit *hits, int n)
{
    FILE *out = fopen(html_path, "w");
    if (!out) {
        int e = errno;
        return umg_err_set(umg_err_from_errno(e), "%s: %s", html_path, strerror(e));
    }
    char *base = page_dir(html_path);
    bool need_script = false;
    fputs("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>", out);
    cli_html_escape(out, title);
    fprintf(out, "</title>\n<style>%s</style>\n</head><body>\n<h1>", page_css);
    cli_html_escape(out, title);
    fputs("</h1>\n<p class=\"sub\">", out);
    cli_html_escape(out, subtitle ? subtitle : "");
    fputs("</p>\n", out);
    if (n == 0)
        fputs("<p>No results.</p>\n", out);
    bool any_heat = false;
    for (int i = 0; i < n; i++)
        any_heat |= hits[i].heatmap != NULL;
    if (any_heat)
        fputs("<p class=\"scale\">Heatmaps: each cell is coloured by the cosine of the text with that part of "
              "the photo, on each photo's own scale: from its lowest cell (blue, nearly clear) to its highest "
              "(red); the scale and its range are under each photo.</p>\n", out);
    fputs("<div class=\"grid\">\n", out);
    for (int i = 0; i < n; i++) {
        const cli_html_hit *h = &hits[i];
        fputs("<div class=\"card\"><div class=\"pic\"><img loading=\"lazy\" alt=\"\" src=\"", out);
        write_image_url(out, base, h->path);
        fputs("\">", out);
        if (h->has_box || h->heatmap) {
            /* The viewBox is the image in its own pixels; preserveAspectRatio
             * none because the SVG box is exactly the displayed image box. */
            fputs("<svg xmlns=\"http://www.w3.org/2000/svg\" preserveAspectRatio=\"none\"", out);
            if (h->width && h->height)
                fprintf(out, " viewBox=\"0 0 %u %u\"", h->width, h->height);
            else
                need_script = true;
            fputs(">", out);
            if (h->heatmap && h->width && h->height)
                write_heatmap(out, h->heatmap, h->width, h->height);
            if (h->has_box)
                fprintf(out, "<rect class=\"box\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\"/>",
                        h->box[0], h->box[1], h->box[2], h->box[3]);
            fputs("</svg>", out);
        }
        /* The score the hits are ranked by first, the cosine beside a refined one. */
        fprintf(out, "</div>\n<div class=\"meta\"><span class=\"rank\">#%d</span> ", i + 1);
        if (h->has_refined)
            fprintf(out, "<span class=\"score\">refined %.4f</span> (cosine %.4f) ", h->refined, h->score);
        else
            fprintf(out, "<span class=\"score\">%.4f</span> ", h->score);
        cli_html_escape(out, h->path);
        if (h->has_box)
            fprintf(out, "<br>box %.0f,%.0f %.0fx%.0f", h->box[0], h->box[1], h->box[2], h->box[3]);
        fprintf(out, "<br>id %llu", (unsigned long long)h->image_id);
        if (h->width && h->height)
            fprintf(out, ", %ux%u", h->width, h->height);
        double lo, hi;
        if (h->heatmap && h->width && h->height && heat_range(h->heatmap, &lo, &hi))
            write_heat_legend(out, lo, hi);
        fputs("</div></div>\n", out);
    }
    fputs("</div>\n", out);
    if (need_script)
        fprintf(out, "<script>%s</script>\n", page_script);
    fputs("</body></html>\n", out);
    free(base);
    int bad = ferror(out);
    if (fclose(out) || bad) {
        int e = errno;
        return umg_err_set(UMG_EIO, "%s: writing failed: %s", html_path, strerror(e));
    }
    return 0;
}
