/* enc_safetensors.c - mmap a .safetensors file and validate its header before
 * any tensor byte is touched.  See enc_safetensors.h. */
#include "enc_safetensors.h"

#include "umg_error.h"
#include "umg_util.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

struct enc_st_file {
    char *path;
    const uint8_t *map;
    size_t map_len;
    const char *header;
    size_t header_len;
    const uint8_t *data;
    uint64_t data_len;
    enc_st_tensor *tensors; /* sorted by name */
    size_t n_tensors;
    char *names;            /* all names, NUL-separated */
};

static const struct {
    const char *name;
    size_t size;
} dtypes[] = {
    [ENC_ST_F32] = {"F32", 4},  [ENC_ST_F16] = {"F16", 2},   [ENC_ST_BF16] = {"BF16", 2},
    [ENC_ST_F64] = {"F64", 8},  [ENC_ST_I64] = {"I64", 8},   [ENC_ST_I32] = {"I32", 4},
    [ENC_ST_I16] = {"I16", 2},  [ENC_ST_I8] = {"I8", 1},     [ENC_ST_U8] = {"U8", 1},
    [ENC_ST_U16] = {"U16", 2},  [ENC_ST_U32] = {"U32", 4},   [ENC_ST_U64] = {"U64", 8},
    [ENC_ST_BOOL] = {"BOOL", 1}, [ENC_ST_F8_E4M3] = {"F8_E4M3", 1}, [ENC_ST_F8_E5M2] = {"F8_E5M2", 1},
};
#define N_DTYPES (sizeof dtypes / sizeof dtypes[0])

const char *enc_st_dtype_name(int dtype)
{
    return dtype >= 0 && (size_t)dtype < N_DTYPES ? dtypes[dtype].name : "?";
}

size_t enc_st_dtype_size(int dtype)
{
    return dtype >= 0 && (size_t)dtype < N_DTYPES ? dtypes[dtype].size : 0;
}

static int dtype_from_name(const char *s)
{
    for (size_t i = 0; i < N_DTYPES; i++)
        if (!strcmp(s, dtypes[i].name))
            return (int)i;
    return -1;
}

void enc_st_close(enc_st_file *f)
{
    if (!f)
        return;
    if (f->map)
        munmap((void *)f->map, f->map_len);
    free(f->tensors);
    free(f->names);
    free(f->path);
    free(f);
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const enc_st_tensor *)a)->name, ((const enc_st_tensor *)b)->name);
}

static int cmp_begin(const void *a, const void *b)
{
    const enc_st_tensor *x = *(const enc_st_tensor *const *)a, *y = *(const enc_st_tensor *const *)b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* A JSON integer in [0, 2^63). */
static int json_u64(const json_t *v, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

/* Parse and check one header entry; names are stored later. */
static int parse_entry(const enc_st_file *f, const char *name, json_t *e, enc_st_tensor *t)
{
    const char *p = f->path;
    if (!json_is_object(e))
        return umg_err_set(UMG_EFORMAT, "%s: tensor %s: header entry is not an object", p, name);
    json_t *jd = json_object_get(e, "dtype"), *js = json_object_get(e, "shape"),
           *jo = json_object_get(e, "data_offsets");
    if (!json_is_string(jd))
        return umg_err_set(UMG_EFORMAT, "%s: tensor %s: missing or non-string dtype", p, name);
    t->dtype = dtype_from_name(json_string_value(jd));
    if (t->dtype < 0)
        return umg_err_set(UMG_EFORMAT, "%s: tensor %s: unknown dtype \"%.32s\"", p, name,
                           json_string_value(jd));
    if (!json_is_array(js) || json_array_size(js) > ENC_ST_MAX_DIMS)
        return umg_err_set(UMG_EFORMAT, "%s: tensor %s: shape is not an array of at most %d sizes", p,
                           name, ENC_ST_MAX_DIMS);
    t->ndim = (int)json_array_size(js);
    uint64_t nelem = 1;
    int overflow = 0;
    for (int d = 0; d < t->ndim; d++) {
        uint64_t s;
        if (json_u64(json_array_get(js, d), &s))
            return umg_err_set(UMG_EFORMAT, "%s: tensor %s: shape[%d] is not a non-negative integer", p,
                               name, d);
        t->shape[d] = (int64_t)s;
        if (s && nelem > UINT64_MAX / s)
            overflow = 1;
        nelem *= s;
    }
    size_t esz = dtypes[t->dtype].size;
    if (overflow || (nelem && nelem > UINT64_MAX / esz))
        return umg_err_set(UMG_EFORMAT, "%s: tensor %s: shape overflows", p, name);
    t->nelem = nelem;
    t->nbytes = nelem * esz;
    if (!json_is_array(jo) || json_array_size(jo) != 2 || json_u64(json_array_get(jo, 0), &t->begin) ||
        json_u64(json_array_get(jo, 1), &t->end))
        return umg_err_set(UMG_EFORMAT, "%s: tensor %s: data_offsets is not [begin, end]", p, name);
    if (t->begin > t->end)
        return umg_err_set(UMG_EFORMAT, "%s: tensor %s: data_offsets [%llu, %llu] run backwards", p,
                           name, (unsigned long long)t->begin, (unsigned long long)t->end);
    if (t->end > f->data_len)
        return umg_err_set(UMG_EFORMAT,
                           "%s: tensor %s: data_offsets [%llu, %llu] lie beyond the %llu data bytes of "
                           "the file (truncated or corrupt)",
                           p, name, (unsigned long long)t->begin, (unsigned long long)t->end,
                           (unsigned long long)f->data_len);
    if (t->end - t->begin != t->nbytes)
        return umg_err_set(UMG_EFORMAT,
                           "%s: tensor %s: data_offsets span %llu bytes but %s shape needs %llu", p, name,
                           (unsigned long long)(t->end - t->begin), dtypes[t->dtype].name,
                           (unsigned long long)t->nbytes);
    t->data = f->data + t->begin;
    return 0;
}

static int parse_header(enc_st_file *f)
{
    json_error_t jerr;
    json_t *root = json_loadb(f->header, f->header_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return umg_err_set(UMG_EFORMAT, "%s: header is not valid JSON (%s at byte %d)", f->path, jerr.text,
                           jerr.position);
    int rc = 0;
    enc_st_tensor **by_begin = NULL;
    if (!json_is_object(root)) {
        rc = umg_err_set(UMG_EFORMAT, "%s: header is not a JSON object", f->path);
        goto out;
    }
    size_t n = 0, names_len = 0;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (!strcmp(key, "__metadata__"))
            continue;
        n++;
        names_len += strlen(key) + 1;
    }
    f->tensors = calloc(n ? n : 1, sizeof *f->tensors);
    f->names = malloc(names_len ? names_len : 1);
    by_begin = malloc((n ? n : 1) * sizeof *by_begin);
    if (!f->tensors || !f->names || !by_begin) {
        rc = umg_err_set(UMG_ENOMEM, "%s: out of memory for %zu tensor entries", f->path, n);
        goto out;
    }
    char *np = f->names;
    json_object_foreach(root, key, val) {
        if (!strcmp(key, "__metadata__"))
            continue;
        enc_st_tensor *t = &f->tensors[f->n_tensors];
        if ((rc = parse_entry(f, key, val, t)))
            goto out;
        size_t kl = strlen(key) + 1;
        memcpy(np, key, kl);
        t->name = np;
        np += kl;
        by_begin[f->n_tensors] = t;
        f->n_tensors++;
    }
    /* Overlapping tensors would alias: a sign of a forged header. */
    qsort(by_begin, f->n_tensors, sizeof *by_begin, cmp_begin);
    const enc_st_tensor *reach = NULL; /* the non-empty tensor ending furthest so far */
    for (size_t i = 0; i < f->n_tensors; i++) {
        const enc_st_tensor *t = by_begin[i];
        if (!t->nbytes)
            continue;
        if (reach && t->begin < reach->end) {
            rc = umg_err_set(UMG_EFORMAT, "%s: tensor %s overlaps tensor %s", f->path, t->name, reach->name);
            goto out;
        }
        if (!reach || t->end > reach->end)
            reach = t;
    }
    free(by_begin);
    by_begin = NULL;
    /* by_begin pointed into tensors; sorting tensors by name now is safe. */
    qsort(f->tensors, f->n_tensors, sizeof *f->tensors, cmp_name);
out:
    free(by_begin);
    json_decref(root);
    return rc;
}

int enc_st_open(const char *path, enc_st_file **out)
{
    *out = NULL;
    enc_st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        return umg_err_set(UMG_ENOMEM, "%s: out of memory", path);
    }
    int rc = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        rc = umg_err_set(umg_err_from_errno(e), "%s: %s", path, strerror(e));
        goto fail;
    }
    struct stat st;
    if (fstat(fd, &st)) {
        int e = errno;
        close(fd);
        rc = umg_err_set(umg_err_from_errno(e), "%s: %s", path, strerror(e));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        rc = umg_err_set(UMG_EFORMAT, "%s: not a regular file", path);
        goto fail;
    }
    if (st.st_size < 8) {
        close(fd);
        rc = umg_err_set(UMG_EFORMAT, "%s: %lld bytes, too short for a safetensors header (truncated)", path,
                         (long long)st.st_size);
        goto fail;
    }
    f->map_len = (size_t)st.st_size;
    void *map = mmap(NULL, f->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
    int e = errno;
    close(fd);
    if (map == MAP_FAILED) {
        rc = umg_err_set(umg_err_from_errno(e), "%s: mmap: %s", path, strerror(e));
        goto fail;
    }
    f->map = map;
    /* The first forward pass reads every weight: start reading them now. */
    madvise(map, f->map_len, MADV_WILLNEED);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | f->map[i];
    if (hlen > f->map_len - 8) {
        rc = umg_err_set(UMG_EFORMAT, "%s: header length %llu exceeds the file's %zu bytes (truncated or not "
                         "a safetensors file)", path, (unsigned long long)hlen, f->map_len);
        goto fail;
    }
    if (hlen < 2 || hlen > ENC_ST_MAX_HEADER) {
        rc = umg_err_set(UMG_EFORMAT, "%s: implausible header length %llu", path, (unsigned long long)hlen);
        goto fail;
    }
    f->header = (const char *)f->map + 8;
    f->header_len = (size_t)hlen;
    f->data = f->map + 8 + hlen;
    f->data_len = f->map_len - 8 - hlen;
    if ((rc = parse_header(f)))
        goto fail;
    *out = f;
    return 0;
fail:
    enc_st_close(f);
    return rc;
}

const enc_st_tensor *enc_st_find(const enc_st_file *f, const char *name)
{
    enc_st_tensor key = {.name = name};
    return bsearch(&key, f->tensors, f->n_tensors, sizeof key, cmp_name);
}

size_t enc_st_count(const enc_st_file *f) { return f->n_tensors; }

const enc_st_tensor *enc_st_at(const enc_st_file *f, size_t i)
{
    return i < f->n_tensors ? &f->tensors[i] : NULL;
}

const char *enc_st_header(const enc_st_file *f, size_t *len)
{
    *len = f->header_len;
    return f->header;
}

const char *enc_st_path(const enc_st_file *f) { return f->path; }

int enc_read_small_file(const char *path, size_t max_bytes, char **bytes, size_t *len)
{
    int rc = umg_read_file(path, max_bytes, (uint8_t **)bytes, len);
    if (rc == UMG_ETOOBIG)
        rc = umg_err_set(UMG_EFORMAT, "%s: larger than %zu bytes, implausible for this file", path, max_bytes);
    return rc;
}
