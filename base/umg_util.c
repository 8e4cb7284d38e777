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

size_t umg_utf8_prefix(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c < 0x80) { i++; continue; }
        unsigned need;
        unsigned lo = 0x80, hi = 0xbf;   /* allowed range of the second byte */
        if (c >= 0xc2 && c <= 0xdf) need = 1;
        else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            if (c == 0xe0) lo = 0xa0;        /* overlong */
            else if (c == 0xed) hi = 0x9f;   /* surrogates */
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            if (c == 0xf0) lo = 0x90;        /* overlong */
            else if (c == 0xf4) hi = 0x8f;   /* above U+10FFFF */
        } else
            return i;
        if (len - i <= need) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (unsigned k = 2; k <= need; k++)
            if ((s[i + k] & 0xc0) != 0x80) return i;
        i += need + 1;
    }
    return len;
}

bool umg_utf8_valid(const char *s, size_t len)
{
    return umg_utf8_prefix(s, len) == len;
}
