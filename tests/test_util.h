/* test_util.h - scaffolding shared by the cmocka tests (library umg_test_util,
 * linked into every umg_test): temporary directories, whole files, the umgdb
 * binary run as a child process, JSON, a seeded random generator.
 *
 * The helpers that can fail a test do it with cmocka's fail_msg/assert_*, so
 * they are called from inside a test (or a setup/teardown). */
#ifndef UMG_TEST_UTIL_H
#define UMG_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

/* ---- files and directories ---- */

/* A fresh directory /tmp/<prefix>XXXXXX written into dir (size bytes);
 * returns dir, or NULL if mkdtemp failed (setups return -1 on that). */
char *tu_mkdtemp(char *dir, size_t size, const char *prefix);

/* Removes dir and everything below it (not crossing into mounts below it);
 * 0 on success, -1 if anything could not be removed. */
int tu_rm_rf(const char *dir);

/* The whole file, NUL-terminated (one byte more than *len); the caller frees.
 * Fails the test if the file cannot be read.  len may be NULL. */
char *tu_read_file(const char *path, size_t *len);

/* The rest of fd from offset 0, like tu_read_file. */
char *tu_read_fd(int fd, size_t *len);

/* Writes len bytes to path (created or truncated); fails the test on error. */
void tu_write_file(const char *path, const void *data, size_t len);

/* Write w x h interleaved RGB (rows top to bottom) as a baseline JPEG of the
 * given quality; orientation 2..8 adds an EXIF APP1 with that Orientation
 * (the pixels are written as given: they are the stored, unrotated ones),
 * 0 or 1 none.  Fails the test on error. */
void tu_write_jpeg(const char *path, const uint8_t *rgb, int w, int h, int quality, int orientation);

/* ---- the umgdb binary ---- */

/* env UMG_BIN if set, else build/umgdb of this build tree. */
const char *tu_bin(void);

/* How many times longer the tests' own waits are (client timeouts, a server's
 * start and stop): env UMG_TEST_TIME_SCALE, a positive integer, else 1.  Cross
 * builds set it for their emulated runs (tests/CMakeLists.txt). */
int tu_time_scale(void);

/* execv(argv[0], argv), but through the emulator named by env
 * UMG_TEST_EMULATOR when set (a cross build's ctest sets it to qemu-aarch64:
 * a test running under qemu-user cannot exec a foreign binary by itself).
 * Returns only on failure, like execv. */
void tu_execv(const char *const *argv);

/* For a shell command line: "" natively, else the emulator and a space. */
const char *tu_emulator_prefix(void);

typedef struct tu_result {
    int status;      /* exit code, or -1 if killed by a signal */
    char *out, *err; /* everything written to stdout/stderr, NUL-terminated */
    size_t out_len;
} tu_result;

/* Runs tu_bin() with args (NULL-terminated, after the binary name), stdin
 * /dev/null, and waits.  env (NULL-terminated, may be NULL) changes the
 * child's environment first: "NAME=VALUE" sets, "NAME" unsets.  Free the
 * result with tu_result_free. */
tu_result tu_run_env(const char *const *env, const char *const *args);
tu_result tu_run(const char *const *args);
void tu_result_free(tu_result *r);

/* Fails with the exit status and both outputs unless r exited with code. */
#define TU_EXPECT_EXIT(r, code)                                                                   \
    do {                                                                                          \
        if ((r).status != (code))                                                                 \
            fail_msg("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", (r).status, (code), (r).out,   \
                     (r).err);                                                                    \
    } while (0)

/* ---- JSON ---- */

/* text parsed (fails the test, showing text, if it is not JSON). */
json_t *tu_json_parse(const char *text);

/* The file parsed with jansson's flags (fails the test naming path). */
json_t *tu_json_load(const char *path, size_t flags);

/* Output of JSON lines: an array of its objects, one per line; fails unless
 * every line is a JSON object ending in a newline. */
json_t *tu_json_lines(const char *out);

/* ---- random numbers ---- */

/* Uniform in [-1, 1) from a xorshift64 state (never 0); each test file keeps
 * its own seeded state, so its sequence is fixed. */
float tu_frand(uint64_t *state);

#endif
