/* ingest_watch.c - see ingest_watch.h. */
#include "ingest_watch.h"

#include <dirent.h>
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include "umg_error.h"

#define WATCH_MASK                                                                                       \
    (IN_CREATE | IN_DELETE | IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_ATTRIB |      \
     IN_DELETE_SELF | IN_MOVE_SELF)
/* Folder depth followed (symlink loops are cut by it too). */
#define MAX_DEPTH 64

struct cli_watcher {
    int fd;
    char **roots;
    int n_roots;
};

void cli_watcher_close(cli_watcher *w)
{
    if (!w)
        return;
    if (w->fd >= 0)
        close(w->fd);
    for (int i = 0; i < w->n_roots; i++)
        free(w->roots[i]);
    free(w->roots);
    free(w);
}

/* Watch dir and the folders below it.  inotify_add_watch on a folder
 * watched already returns its watch again (no duplicate). */
static void add_tree(cli_watcher *w, const char *dir, int depth)
{
    if (depth > MAX_DEPTH || inotify_add_watch(w->fd, dir, WATCH_MASK | IN_ONLYDIR) < 0)
        return;   /* gone or unreadable meanwhile: the walk reports it */
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        size_t n = strlen(dir) + strlen(e->d_name) + 2;
        char *p = malloc(n);
        if (!p)
            break;
        snprintf(p, n, "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(p, &st) == 0 && S_ISDIR(st.st_mode))
            add_tree(w, p, depth + 1);
        free(p);
    }
    closedir(d);
}

int cli_watcher_rescan(cli_watcher *w)
{
    for (int i = 0; i < w->n_roots; i++)
        add_tree(w, w->roots[i], 0);
    return 0;
}

int cli_watcher_open(const char *const *roots, int n, cli_watcher **out)
{
    *out = NULL;
    cli_watcher *w = calloc(1, sizeof *w);
    if (!w || !(w->roots = calloc((size_t)n, sizeof *w->roots))) {
        free(w);
        return umg_err_set(UMG_ENOMEM, "out of memory");
    }
    w->fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (w->fd < 0) {
        int e = errno;
        cli_watcher_close(w);
        return umg_err_set(UMG_EIO, "inotify: %s", strerror(e));
    }
    for (int i = 0; i < n; i++) {
        if (!(w->roots[i] = strdup(roots[i]))) {
            cli_watcher_close(w);
            return umg_err_set(UMG_ENOMEM, "out of memory");
        }
        w->n_roots++;
    }
    cli_watcher_rescan(w);
    *out = w;
    return 0;
}

int cli_watcher_wait(cli_watcher *w, int timeout_ms)
{
    struct pollfd p = {.fd = w->fd, .events = POLLIN};
    int r = poll(&p, 1, timeout_ms);
    if (r < 0)
        return errno == EINTR ? 0 : umg_err_set(UMG_EIO, "poll: %s", strerror(errno));
    if (r == 0)
        return 0;
    int events = 0;
    char buf[16384] __attribute__((aligned(__alignof__(struct inotify_event))));
    for (;;) {
        ssize_t got = read(w->fd, buf, sizeof buf);
        if (got <= 0)
            break;   /* EAGAIN: all read */
        for (char *q = buf; q < buf + got;) {
            const struct inotify_event *ev = (const struct inotify_event *)q;
            events++;   /* any event, IN_Q_OVERFLOW too: the next pass looks at everything */
            q += sizeof *ev + ev->len;
        }
    }
    return events;
}
