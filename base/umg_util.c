/* umg_util.c - see umg_util.h. */
#include "umg_util.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "umg_error.h"

int umg_parse_long(const char *s, long min, long max, long *out)
{
    if (!s || !*s || isspace((unsigned char)*s))
        return UMG_EINVAL;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return UMG_EINVAL;
    *out = v;
    return 0;
}

int umg_parse_u64(const char *s, uint64_t *out)
{
    if (!s || !isdigit((unsigned char)*s))
        return UMG_EINVAL;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return UMG_EINVAL;
    *out = v;
    return 0;
}

int umg_read_file(const char *path, size_t max, uint8_t **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        return umg_err_set(umg_err_from_errno(e), "%s: %s", path, strerror(e));
    }
    struct stat st;
    if (fstat(fileno(f), &st) || !S_ISREG(st.st_mode)) {
        fclose(f);
        return umg_err_set(UMG_EIO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > max) {
        fclose(f);
        return umg_err_set(UMG_ETOOBIG, "%s: %lld bytes, over the limit of %zu", path,
                           (long long)st.st_size, max);
    }
    size_t cap = (size_t)st.st_size + 1, n = 0;
    uint8_t *b = malloc(cap);
    if (!b) {
        fclose(f);
        return umg_err_set(UMG_ENOMEM, "%s: out of memory", path);
    }
    for (;;) {
        size_t got = fread(b + n, 1, cap - n, f);
        n += got;
        if (n < cap) {
            if (ferror(f)) {
                int e = errno;
                free(b);
                fclose(f);
                return umg_err_set(UMG_EIO, "%s: %s", path, strerror(e));
            }
            break;
        }
        /* The file grew while we read it. */
        if (cap > max) {
            free(b);
            fclose(f);
            return umg_err_set(UMG_ETOOBIG, "%s: over the limit of %zu bytes", path, max);
        }
        size_t ncap = cap * 2 > max + 1 ? max + 1 : cap * 2;
        uint8_t *nb = realloc(b, ncap);
        if (!nb) {
            free(b);
            fclose(f);
            return umg_err_set(UMG_ENOMEM, "%s: out of memory", path);
        }
        b = nb;
        cap = ncap;
    }
    fclose(f);
    b[n < cap ? n : cap - 1] = 0;   /* convenient for text files */
    *data = b;
    *len = n;
    return 0;
}
