/* enc_safetensors.h - internal: a read-only view of a .safetensors file.
 *
 * Layout: 8-byte little-endian header length N, N bytes of JSON header
 *   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
 *    "__metadata__": {...}}
 * then the data region; offsets are relative to its start.
 *
 * The whole file is mmapped read-only (never copied to the heap).  enc_st_open
 * validates every entry against the file size before any tensor byte is read:
 * dtype known, shape entries non-negative, end - begin == elements x dtype size
 * (without overflow), end within the data region, no two tensors overlapping.
 * So a tensor's data pointer is always safe to read nbytes from. */
#ifndef ENC_SAFETENSORS_H
#define ENC_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ENC_ST_MAX_DIMS 8
/* safetensors' own reader refuses headers above 100 MB; so do we. */
#define ENC_ST_MAX_HEADER (100u * 1024 * 1024)

enum enc_st_dtype {
    ENC_ST_F32, ENC_ST_F16, ENC_ST_BF16,
    ENC_ST_F64, ENC_ST_I64, ENC_ST_I32, ENC_ST_I16, ENC_ST_I8, ENC_ST_U8,
    ENC_ST_U16, ENC_ST_U32, ENC_ST_U64, ENC_ST_BOOL, ENC_ST_F8_E4M3, ENC_ST_F8_E5M2,
};

typedef struct enc_st_tensor {
    const char *name;      /* owned by the file */
    int dtype;             /* enum enc_st_dtype */
    int ndim;
    int64_t shape[ENC_ST_MAX_DIMS];
    uint64_t nelem;
    const uint8_t *data;   /* inside the mapping; valid until enc_st_close */
    uint64_t nbytes;
    uint64_t begin, end;   /* data_offsets */
} enc_st_tensor;

typedef struct enc_st_file enc_st_file;

/* Map and validate path.  Errors (message names the file and, where one is at
 * fault, the tensor): UMG_ENOENT / UMG_EPERM / UMG_EIO (open, stat, mmap),
 * UMG_EFORMAT (anything malformed), UMG_ENOMEM. */
int enc_st_open(const char *path, enc_st_file **out);
void enc_st_close(enc_st_file *f); /* NULL-safe */

/* The entry named name, or NULL.  Lives until enc_st_close. */
const enc_st_tensor *enc_st_find(const enc_st_file *f, const char *name);
size_t enc_st_count(const enc_st_file *f);
const enc_st_tensor *enc_st_at(const enc_st_file *f, size_t i); /* sorted by name */

/* The raw JSON header bytes (inside the mapping), for fingerprinting. */
const char *enc_st_header(const enc_st_file *f, size_t *len);
/* The path given to enc_st_open. */
const char *enc_st_path(const enc_st_file *f);

const char *enc_st_dtype_name(int dtype);
size_t enc_st_dtype_size(int dtype);

/* Read a whole small file (config.json) into a malloc'ed buffer the caller
 * frees.  Files above max_bytes are UMG_EFORMAT; open errors are translated. */
int enc_read_small_file(const char *path, size_t max_bytes, char **bytes, size_t *len);

#endif
