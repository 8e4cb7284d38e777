/* test_util.c - see test_util.h. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jpeglib.h>

#include "test_util.h"

char *tu_mkdtemp(char *dir, size_t size, const char *prefix)
{
    snprintf(dir, size, "/tmp/%sXXXXXX", prefix);
    return mkdtemp(dir);
}

static int remove_cb(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

int tu_rm_rf(const char *dir)
{
    return nftw(dir, remove_cb, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) ? -1 : 0;
}

char *tu_read_fd(int fd, size_t *len)
{
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    assert_non_null(b);
    assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
    ssize_t got;
    while ((got = read(fd, b + n, cap - n - 1)) > 0) {
        n += (size_t)got;
        if (cap - n - 1 == 0) {
            b = realloc(b, cap *= 2);
            assert_non_null(b);
        }
    }
    assert_true(got == 0);
    b[n] = 0;
    if (len)
        *len = n;
    return b;
}

char *tu_read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        fail_msg("cannot open %s", path);
    char *b = tu_read_fd(fd, len);
    close(fd);
    return b;
}

void tu_write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        fail_msg("cannot create %s", path);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

const char *tu_bin(void)
{
    const char *b = getenv("UMG_BIN");
    return b && *b ? b : UMG_BINARY_DIR "/umgdb";
}

int tu_time_scale(void)
{
    const char *s = getenv("UMG_TEST_TIME_SCALE");
    int k = s ? atoi(s) : 1;
    return k > 0 ? k : 1;
}

void tu_execv(const char *const *argv)
{
    const char *emu = getenv("UMG_TEST_EMULATOR");
    if (!emu || !*emu) {
        execv(argv[0], (char *const *)argv);
        return;
    }
    const char *full[66];
    int n = 0;
    full[n++] = emu;
    for (int i = 0; argv[i] && n < 65; i++)
        full[n++] = argv[i];
    full[n] = NULL;
    execvp(emu, (char *const *)full);
}

const char *tu_emulator_prefix(void)
{
    static char buf[300];
    const char *emu = getenv("UMG_TEST_EMULATOR");
    snprintf(buf, sizeof buf, "%s%s", emu && *emu ? emu : "", emu && *emu ? " " : "");
    return buf;
}

tu_result tu_run_env(const char *const *env, const char *const *args)
{
    char outp[] = "/tmp/umg-test-out-XXXXXX", errp[] = "/tmp/umg-test-err-XXXXXX";
    int fo = mkstemp(outp), fe = mkstemp(errp);
    assert_true(fo >= 0 && fe >= 0);
    unlink(outp);
    unlink(errp);
    const char *argv[64];
    int n = 0;
    argv[n++] = tu_bin();
    for (; args[n - 1]; n++) {
        assert_true(n < 63);
        argv[n] = args[n - 1];
    }
    argv[n] = NULL;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        for (const char *const *e = env; e && *e; e++) {
            const char *eq = strchr(*e, '=');
            if (eq) {
                char name[64];
                snprintf(name, sizeof name, "%.*s", (int)(eq - *e), *e);
                setenv(name, eq + 1, 1);
            } else {
                unsetenv(*e);
            }
        }
        int devnull = open("/dev/null", O_RDONLY);
        dup2(devnull, 0);
        dup2(fo, 1);
        dup2(fe, 2);
        tu_execv(argv);
        _exit(127);
    }
    int st;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    tu_result r = {.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1};
    r.out = tu_read_fd(fo, &r.out_len);
    r.err = tu_read_fd(fe, NULL);
    close(fo);
    close(fe);
    return r;
}

tu_result tu_run(const char *const *args)
{
    return tu_run_env(NULL, args);
}

void tu_result_free(tu_result *r)
{
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
}

json_t *tu_json_parse(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, 0, &e);
    if (!j)
        fail_msg("not JSON (%s):\n%s", e.text, text);
    return j;
}

json_t *tu_json_load(const char *path, size_t flags)
{
    json_error_t e;
    json_t *j = json_load_file(path, flags, &e);
    if (!j)
        fail_msg("%s: %s", path, e.text);
    return j;
}

json_t *tu_json_lines(const char *out)
{
    json_t *arr = json_array();
    assert_non_null(arr);
    for (const char *p = out; *p;) {
        const char *nl = strchr(p, '\n');
        assert_non_null(nl); /* every object ends its line */
        json_error_t e;
        json_t *o = json_loadb(p, (size_t)(nl - p), 0, &e);
        if (!o)
            fail_msg("output line is not JSON: %s", e.text);
        assert_true(json_is_object(o));
        json_array_append_new(arr, o);
        p = nl + 1;
    }
    return arr;
}

float tu_frand(uint64_t *state)
{
    uint64_t s = *state;
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    *state = s;
    return (float)((s >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

void tu_write_jpeg(const char *path, const uint8_t *rgb, int w, int h, int quality, int orientation)
{
    FILE *f = fopen(path, "wb");
    if (!f) fail_msg("%s: cannot create", path);
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr err;
    c.err = jpeg_std_error(&err);
    jpeg_create_compress(&c);
    jpeg_stdio_dest(&c, f);
    c.image_width = (JDIMENSION)w;
    c.image_height = (JDIMENSION)h;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, quality, TRUE);
    jpeg_start_compress(&c, TRUE);
    if (orientation >= 2 && orientation <= 8) {
        /* "Exif\0\0", little-endian TIFF header, IFD0 with one entry: Orientation (0x0112), SHORT, 1 */
        uint8_t exif[] = {'E', 'x', 'i', 'f', 0, 0, 'I', 'I', 42, 0, 8, 0, 0, 0, 1, 0,
                          0x12, 0x01, 3, 0, 1, 0, 0, 0, (uint8_t)orientation, 0, 0, 0, 0, 0, 0, 0};
        jpeg_write_marker(&c, JPEG_APP0 + 1, exif, sizeof exif);
    }
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(rgb + (size_t)c.next_scanline * w * 3);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    if (fclose(f) != 0) fail_msg("%s: write failed", path);
}
