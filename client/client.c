/* client.c - blocking umgdb client over a non-blocking socket and poll(). */
#include "client.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "umg_error.h"

struct umg_client {
    int fd;
    msgpack_sbuffer out;       /* queued request bytes; out.data[out_off..out.size) unsent */
    size_t out_off;
    proto_framer *framer;
    proto_limits limits;
    uint64_t next_id;
    proto_response **kept;     /* received, not yet handed out, arrival order */
    size_t n_kept, cap_kept;
    int broken;
    char broken_msg[256];
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int set_nonblocking(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static int conn_broken(umg_client *c)
{
    return umg_err_set(UMG_ECONN, "%s", c->broken_msg);
}

static int mark_broken(umg_client *c, const char *fmt, const char *detail)
{
    if (!c->broken) {
        c->broken = 1;
        snprintf(c->broken_msg, sizeof c->broken_msg, fmt, detail);
    }
    return conn_broken(c);
}

/* Connect fd to addr within timeout_ms (< 0: no limit). */
static int connect_fd(int fd, const struct sockaddr *sa, socklen_t len, int timeout_ms)
{
    if (set_nonblocking(fd) < 0) return -errno;
    if (connect(fd, sa, len) == 0) return 0;
    if (errno != EINPROGRESS) return -errno;
    struct pollfd p = {.fd = fd, .events = POLLOUT};
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    for (;;) {
        int wait = deadline < 0 ? -1 : (int)(deadline - now_ms());
        if (deadline >= 0 && wait < 0) wait = 0;
        int rc = poll(&p, 1, wait);
        if (rc < 0 && errno == EINTR) continue;
        if (rc < 0) return -errno;
        if (rc == 0) return -ETIMEDOUT;
        break;
    }
    int err = 0;
    socklen_t el = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0) return -errno;
    return err ? -err : 0;
}

static int client_alloc(int fd, const umg_client_opts *opts, umg_client **out)
{
    umg_client *c = calloc(1, sizeof *c);
    if (!c) return umg_err_set(UMG_ENOMEM, "out of memory");
    c->fd = fd;
    c->next_id = 1;
    c->limits = proto_limits_default();
    if (opts && opts->max_frame) c->limits.max_frame = opts->max_frame;
    msgpack_sbuffer_init(&c->out);
    int rc = proto_framer_create(c->limits.max_frame, &c->framer);
    if (rc) {
        free(c);
        return rc;
    }
    *out = c;
    return 0;
}

int umg_client_connect(const char *addr, const umg_client_opts *opts, umg_client **out)
{
    if (!out) return umg_err_set(UMG_EINVAL, "umg_client_connect: out is NULL");
    *out = NULL;
    if (!addr || !*addr) addr = UMG_DEFAULT_ADDR;
    int timeout = opts && opts->connect_timeout_ms ? opts->connect_timeout_ms : 5000;

    if (!strncmp(addr, "unix:", 5)) {
        const char *path = addr + 5;
        struct sockaddr_un sun = {.sun_family = AF_UNIX};
        if (!*path || strlen(path) >= sizeof sun.sun_path)
            return umg_err_set(UMG_EINVAL, "bad unix socket path '%s' (empty or over %zu bytes)", path,
                               sizeof sun.sun_path - 1);
        memcpy(sun.sun_path, path, strlen(path) + 1);
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) return umg_err_set(UMG_ECONN, "socket: %s", strerror(errno));
        int rc = connect_fd(fd, (struct sockaddr *)&sun, sizeof sun, timeout);
        if (rc) {
            close(fd);
            return umg_err_set(rc == -ETIMEDOUT ? UMG_ETIMEOUT : UMG_ECONN, "cannot connect to %s: %s", addr,
                               strerror(-rc));
        }
        rc = client_alloc(fd, opts, out);
        if (rc) close(fd);
        return rc;
    }

    /* TCP: "HOST:PORT", "[V6]:PORT" or "PORT". */
    char host[256], port[16];
    const char *colon = strrchr(addr, ':');
    if (!colon) {
        snprintf(host, sizeof host, "127.0.0.1");
        if (strlen(addr) >= sizeof port) return umg_err_set(UMG_EINVAL, "bad address '%s'", addr);
        snprintf(port, sizeof port, "%s", addr);
    } else {
        const char *h = addr;
        size_t hl = (size_t)(colon - addr);
        if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
            h++;
            hl -= 2;
        }
        if (hl == 0 || hl >= sizeof host || strlen(colon + 1) >= sizeof port || !colon[1])
            return umg_err_set(UMG_EINVAL, "bad address '%s' (want HOST:PORT or unix:PATH)", addr);
        memcpy(host, h, hl);
        host[hl] = 0;
        snprintf(port, sizeof port, "%s", colon + 1);
    }
    for (const char *p = port; *p; p++)
        if (*p < '0' || *p > '9') return umg_err_set(UMG_EINVAL, "bad port in address '%s'", addr);

    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai) return umg_err_set(UMG_ECONN, "cannot resolve '%s': %s", host, gai_strerror(gai));
    int last = ECONNREFUSED;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            last = errno;
            continue;
        }
        int rc = connect_fd(fd, ai->ai_addr, ai->ai_addrlen, timeout);
        if (rc) {
            last = -rc;
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        freeaddrinfo(res);
        rc = client_alloc(fd, opts, out);
        if (rc) close(fd);
        return rc;
    }
    freeaddrinfo(res);
    return umg_err_set(last == ETIMEDOUT ? UMG_ETIMEOUT : UMG_ECONN, "cannot connect to %s: %s", addr,
                       strerror(last));
}

void umg_client_close(umg_client *c)
{
    if (!c) return;
    if (c->fd >= 0) close(c->fd);
    msgpack_sbuffer_destroy(&c->out);
    proto_framer_close(c->framer);
    for (size_t i = 0; i < c->n_kept; i++) proto_response_free(c->kept[i]);
    free(c->kept);
    free(c);
}

int umg_client_fd(const umg_client *c) { return c ? c->fd : -1; }
int umg_client_broken(const umg_client *c) { return c ? c->broken : 1; }
size_t umg_client_pending(const umg_client *c) { return c ? c->out.size - c->out_off : 0; }

int umg_client_begin(umg_client *c, proto_writer *w, const char *op, size_t nargs, uint64_t *id)
{
    if (!c || !w || !op) return umg_err_set(UMG_EINVAL, "umg_client_begin: NULL argument");
    if (c->broken) return conn_broken(c);
    uint64_t rid = c->next_id++;
    if (id) *id = rid;
    return proto_request_begin(w, &c->out, rid, op, nargs);
}

int umg_client_end(umg_client *c, proto_writer *w)
{
    if (!c || !w) return umg_err_set(UMG_EINVAL, "umg_client_end: NULL argument");
    return proto_request_end(w, 0);
}

int umg_client_send_raw(umg_client *c, const void *data, size_t len)
{
    if (!c || (!data && len)) return umg_err_set(UMG_EINVAL, "umg_client_send_raw: NULL argument");
    if (c->broken) return conn_broken(c);
    if (msgpack_sbuffer_write(&c->out, data, len)) return umg_err_set(UMG_ENOMEM, "out of memory");
    return 0;
}

static int keep(umg_client *c, proto_response *r)
{
    if (c->n_kept == c->cap_kept) {
        size_t cap = c->cap_kept ? c->cap_kept * 2 : 16;
        proto_response **k = realloc(c->kept, cap * sizeof *k);
        if (!k) {
            proto_response_free(r);
            return umg_err_set(UMG_ENOMEM, "out of memory keeping a response");
        }
        c->kept = k;
        c->cap_kept = cap;
    }
    c->kept[c->n_kept++] = r;
    return 0;
}

/* Read what the socket has, decode complete frames into c->kept. */
static int read_some(umg_client *c)
{
    uint8_t buf[65536];
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof buf, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            return mark_broken(c, "connection error: %s", strerror(errno));
        }
        if (n == 0) return mark_broken(c, "%s", "connection closed by the server");
        const uint8_t *p = buf;
        size_t len = (size_t)n;
        while (len) {
            size_t used;
            uint8_t *frame;
            size_t flen;
            int rc = proto_framer_feed(c->framer, p, len, &used, &frame, &flen);
            p += used;
            len -= used;
            if (rc == PROTO_FRAME_READY) {
                proto_response *r;
                rc = proto_response_decode(frame, flen, &c->limits, &r);
                if (rc) return mark_broken(c, "malformed response from the server: %s", umg_err_msg());
                rc = keep(c, r);
                if (rc) return rc;
            } else if (rc < 0) {
                return mark_broken(c, "bad frame from the server: %s", umg_err_msg());
            }
        }
        if ((size_t)n < sizeof buf) return 0;
    }
}

static int write_some(umg_client *c)
{
    while (c->out_off < c->out.size) {
        ssize_t n = send(c->fd, c->out.data + c->out_off, c->out.size - c->out_off, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
            return mark_broken(c, "connection error: %s", strerror(errno));
        }
        c->out_off += (size_t)n;
    }
    c->out.size = 0;
    c->out_off = 0;
    return 0;
}

/* Index in kept of the response wanted: any (want_any) or id/0; -1 if none. */
static long find_kept(const umg_client *c, int want_any, uint64_t id)
{
    if (want_any) return c->n_kept ? 0 : -1;
    for (size_t i = 0; i < c->n_kept; i++)
        if (c->kept[i]->id == id || c->kept[i]->id == 0) return (long)i;
    return -1;
}

static proto_response *take_kept(umg_client *c, long i)
{
    proto_response *r = c->kept[i];
    memmove(c->kept + i, c->kept + i + 1, (c->n_kept - (size_t)i - 1) * sizeof *c->kept);
    c->n_kept--;
    return r;
}

/* mode 0: flush; 1: flush then any response; 2: flush then response id. */
static int pump(umg_client *c, int mode, uint64_t id, int timeout_ms, proto_response **out)
{
    int64_t deadline = timeout_ms < 0 ? -1 : now_ms() + timeout_ms;
    for (;;) {
        if (c->out_off == c->out.size) {
            if (mode == 0) return 0;
            long i = find_kept(c, mode == 1, id);
            if (i >= 0) {
                *out = take_kept(c, i);
                return 0;
            }
        }
        if (c->broken) return conn_broken(c);
        struct pollfd p = {.fd = c->fd, .events = POLLIN | (c->out_off < c->out.size ? POLLOUT : 0)};
        int wait = -1;
        if (deadline >= 0) {
            int64_t left = deadline - now_ms();
            wait = left < 0 ? 0 : (int)left;
        }
        int rc = poll(&p, 1, wait);
        if (rc < 0) {
            if (errno == EINTR) continue;
            return mark_broken(c, "poll: %s", strerror(errno));
        }
        if (rc == 0)
            return umg_err_set(UMG_ETIMEOUT, "no %s within %d ms", mode == 0 ? "progress sending" : "response",
                               timeout_ms);
        if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
            rc = read_some(c);
            if (rc && rc != UMG_ECONN) return rc;
        }
        if (!c->broken && (p.revents & POLLOUT)) {
            rc = write_some(c);
            if (rc && rc != UMG_ECONN) return rc;
        }
        /* A broken connection may still have delivered what is wanted: loop once more. */
        if (c->broken && c->out_off < c->out.size) {
            c->out.size = c->out_off = 0;   /* unsendable now */
            if (mode == 0) return conn_broken(c);
        }
    }
}

int umg_client_flush(umg_client *c, int timeout_ms)
{
    if (!c) return umg_err_set(UMG_EINVAL, "umg_client_flush: NULL client");
    return pump(c, 0, 0, timeout_ms, NULL);
}

int umg_client_recv(umg_client *c, int timeout_ms, proto_response **out)
{
    if (!c || !out) return umg_err_set(UMG_EINVAL, "umg_client_recv: NULL argument");
    *out = NULL;
    return pump(c, 1, 0, timeout_ms, out);
}

int umg_client_wait(umg_client *c, uint64_t id, int timeout_ms, proto_response **out)
{
    if (!c || !out) return umg_err_set(UMG_EINVAL, "umg_client_wait: NULL argument");
    *out = NULL;
    return pump(c, 2, id, timeout_ms, out);
}

int umg_client_call0(umg_client *c, const char *op, int timeout_ms, proto_response **out)
{
    proto_writer w;
    uint64_t id = 0;
    int rc = umg_client_begin(c, &w, op, 0, &id);
    if (!rc) rc = umg_client_end(c, &w);
    if (!rc) rc = umg_client_wait(c, id, timeout_ms, out);
    return rc;
}

int umg_client_hello(umg_client *c, const char *token, const char *client_name, int timeout_ms,
                     proto_response **out)
{
    if (out) *out = NULL;
    proto_writer w;
    uint64_t id = 0;
    size_t nargs = (token != NULL) + (client_name != NULL);
    int rc = umg_client_begin(c, &w, "hello", nargs, &id);
    if (rc) return rc;
    if (token && (proto_pack_cstr(&w.pk, "token") || proto_pack_cstr(&w.pk, token))) rc = UMG_ENOMEM;
    if (!rc && client_name && (proto_pack_cstr(&w.pk, "client") || proto_pack_cstr(&w.pk, client_name)))
        rc = UMG_ENOMEM;
    if (rc) {
        c->out.size = (size_t)w.offset;   /* drop the partial request */
        return umg_err_set(rc, "out of memory building hello");
    }
    rc = umg_client_end(c, &w);
    if (rc) return rc;
    proto_response *r;
    rc = umg_client_wait(c, id, timeout_ms, &r);
    if (rc) return rc;
    if (!r->ok) {
        rc = umg_err_set(r->code, "hello refused: %s: %s", r->code_name, r->message);
    }
    if (out)
        *out = r;
    else
        proto_response_free(r);
    return rc;
}

const msgpack_object *umg_result_get(const proto_response *r, const char *key)
{
    if (!r || !r->ok || !r->result) return NULL;
    return proto_map_get(r->result, key);
}

int umg_result_uint(const proto_response *r, const char *key, uint64_t *v)
{
    return proto_obj_uint(umg_result_get(r, key), v);
}

/* ---- folders that change: list, move ---- */

/* An error response as this library's error (code and message). */
static int response_error(const proto_response *r)
{
    return umg_err_set(r->code < 0 ? r->code : UMG_EINTERNAL, "%s", r->message ? r->message : "");
}

static int hex_digit(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

void umg_listed_free(umg_listed *v, size_t n)
{
    if (!v) return;
    for (size_t i = 0; i < n; i++) free(v[i].path);
    free(v);
}

/* Append the entries of one list page to *v. */
static int list_take(const proto_response *r, umg_listed **v, size_t *n, size_t *cap, uint64_t *next)
{
    const msgpack_object *imgs = umg_result_get(r, "images");
    if (!imgs || imgs->type != MSGPACK_OBJECT_ARRAY || !umg_result_uint(r, "next", next))
        return umg_err_set(UMG_EPROTO, "list: the answer has no 'images' array or 'next'");
    for (uint32_t i = 0; i < imgs->via.array.size; i++) {
        const msgpack_object *o = &imgs->via.array.ptr[i];
        umg_listed e = {0};
        const char *p, *h;
        size_t pl, hl;
        int64_t mt = 0;
        if (!proto_obj_uint(proto_map_get(o, "image_id"), &e.image_id) ||
            !proto_obj_str(proto_map_get(o, "path"), &p, &pl) || !proto_obj_str(proto_map_get(o, "sha256"), &h, &hl) ||
            hl != 64 || !proto_obj_uint(proto_map_get(o, "bytes"), &e.bytes) ||
            !proto_obj_int(proto_map_get(o, "mtime"), &mt))
            return umg_err_set(UMG_EPROTO, "list: an entry lacks image_id, path, sha256, bytes or mtime");
        e.mtime = mt;
        for (int b = 0; b < 32; b++) {
            int hi = hex_digit(h[2 * b]), lo = hex_digit(h[2 * b + 1]);
            if (hi < 0 || lo < 0) return umg_err_set(UMG_EPROTO, "list: sha256 is not 64 hex digits");
            e.sha256[b] = (uint8_t)(hi << 4 | lo);
        }
        if (*n == *cap) {
            size_t nc = *cap ? *cap * 2 : 256;
            umg_listed *q = realloc(*v, nc * sizeof *q);
            if (!q) return umg_err_set(UMG_ENOMEM, "out of memory");
            *v = q;
            *cap = nc;
        }
        if (!(e.path = strndup(p, pl))) return umg_err_set(UMG_ENOMEM, "out of memory");
        (*v)[(*n)++] = e;
    }
    return 0;
}

int umg_client_list_all(umg_client *c, const char *prefix, int timeout_ms, umg_listed **out, size_t *n,
                        size_t *pages)
{
    *out = NULL;
    *n = 0;
    if (pages) *pages = 0;
    size_t cap = 0;
    uint64_t after = 0;
    int rc = 0;
    do {
        proto_writer w;
        uint64_t id;
        if ((rc = umg_client_begin(c, &w, "list", after ? 2 : 1, &id))) break;
        int bad = proto_pack_cstr(&w.pk, "path_prefix") || proto_pack_cstr(&w.pk, prefix);
        if (!bad && after) bad = proto_pack_cstr(&w.pk, "after") || msgpack_pack_uint64(&w.pk, after);
        if ((rc = umg_client_end(c, &w))) break;
        if (bad) {
            rc = umg_err_set(UMG_ENOMEM, "out of memory");
            break;
        }
        proto_response *r;
        if ((rc = umg_client_wait(c, id, timeout_ms, &r))) break;
        if (pages) (*pages)++;
        rc = r->ok ? list_take(r, out, n, &cap, &after) : response_error(r);
        proto_response_free(r);
    } while (!rc && after);
    if (rc) {
        umg_listed_free(*out, *n);
        *out = NULL;
        *n = 0;
    }
    return rc;
}

int umg_client_move(umg_client *c, uint64_t image_id, const char *path, int64_t mtime, int timeout_ms,
                    uint64_t *replaced)
{
    if (replaced) *replaced = 0;
    proto_writer w;
    uint64_t id;
    int rc = umg_client_begin(c, &w, "move", 2 + (mtime != 0), &id);
    if (rc) return rc;
    int bad = proto_pack_cstr(&w.pk, "image_id") || msgpack_pack_uint64(&w.pk, image_id) ||
              proto_pack_cstr(&w.pk, "path") || proto_pack_cstr(&w.pk, path);
    if (!bad && mtime) bad = proto_pack_cstr(&w.pk, "mtime") || msgpack_pack_int64(&w.pk, mtime);
    if ((rc = umg_client_end(c, &w))) return rc;
    if (bad) return umg_err_set(UMG_ENOMEM, "out of memory");
    proto_response *r;
    if ((rc = umg_client_wait(c, id, timeout_ms, &r))) return rc;
    if (!r->ok) rc = response_error(r);
    else if (replaced) umg_result_uint(r, "replaced", replaced);
    proto_response_free(r);
    return rc;
}
