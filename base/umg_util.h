/* umg_util.h - the small helpers every part needs once: whole-string integer
 * parsing (command-line options, environment values), whole-file reading and
 * the UTF-8 check.
 * Errors: 0 or a negative UMG_E* code (umg_error.h). */
#ifndef UMG_UTIL_H
#define UMG_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The whole of s as a decimal integer in min..max (no sign for u64, no
 * leading space, no trailing characters, no overflow): 0 and *out, or
 * UMG_EINVAL (no message: the caller names the option). */
int umg_parse_long(const char *s, long min, long max, long *out);
int umg_parse_u64(const char *s, uint64_t *out);

/* Read a whole regular file into a malloc'd buffer (free()), NUL-terminated
 * one byte past *len for text files; UMG_ENOENT / UMG_EPERM / UMG_EIO /
 * UMG_ETOOBIG (over max bytes) / UMG_ENOMEM, with the path in the message. */
int umg_read_file(const char *path, size_t max, uint8_t **data, size_t *len);

/* True if s[0..len) is well-formed UTF-8 (no overlong forms, no surrogates,
 * nothing above U+10FFFF).  NUL bytes are valid UTF-8 and accepted here. */
bool umg_utf8_valid(const char *s, size_t len);

/* Byte offset of the first invalid sequence in s[0..len), or len if valid. */
size_t umg_utf8_prefix(const char *s, size_t len);

#endif
