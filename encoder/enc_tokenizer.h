/* enc_tokenizer.h - the CLIP byte-level BPE tokenizer.
 *
 * Reproduces OpenAI CLIP's SimpleTokenizer (the reference of shared/README.md):
 * HTML entities unescaped twice (Python's html.unescape rules), stripped
 * (str.strip), Unicode White_Space runs collapsed to one space, lowercased
 * (Python's str.lower, Final_Sigma included), split by the CLIP pattern
 *   <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 * (case-insensitive, as the `regex` module reads it), each piece mapped to
 * byte-level unicode, BPE-merged with the ranks of merges.txt (the first 48894
 * after the "#version" line), "</w>" marking word ends, and looked up in
 * vocab.json.  Output: <|startoftext|> ids... <|endoftext|>, truncated to max_ids
 * with the end token kept last.  Not reproduced: ftfy.fix_text, which OpenAI's
 * code runs first when installed (mojibake repair, NFC, curly quotes -> straight).
 * tools/clip_tokenizer_ref.py is the Python port the tests' golden ids come from.
 *
 * Thread safety: a tokenizer is read-only after open; enc_tokenize may be called
 * from many threads at once. */
#ifndef ENC_TOKENIZER_H
#define ENC_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#define ENC_TOKEN_SOT 49406
#define ENC_TOKEN_EOT 49407
#define ENC_CONTEXT_LENGTH 77

typedef struct enc_tokenizer enc_tokenizer;

/* Load vocab.json and merges.txt.  On success *out owns everything (the paths are
 * not kept); free it with enc_tokenizer_close.  On error *out = NULL and nothing
 * leaks.  Errors (the detail message names the file and line): UMG_EINVAL (NULL
 * argument), UMG_ENOENT (missing file), UMG_EPERM / UMG_EIO (unreadable),
 * UMG_EFORMAT (not a JSON object of token -> id with ids in [0, size); a byte-level
 * token, <|startoftext|> or <|endoftext|> missing; a merges line that is not two
 * symbols, or whose symbols or merged result are not in the vocabulary),
 * UMG_ENOMEM.  These checks make enc_tokenize unable to fail on lookups. */
int enc_tokenizer_open(const char *vocab_json_path, const char *merges_txt_path,
                       enc_tokenizer **out);
void enc_tokenizer_close(enc_tokenizer *tok); /* NULL-safe */

/* Tokenize len bytes of UTF-8 text into ids[0..*n_ids), at most max_ids (>= 2)
 * ids including the start and end tokens; the caller owns ids (max_ids entries).
 * text need not be NUL-terminated; a NUL byte inside it is text (U+0000).
 * Invalid UTF-8 is not an error: it is decoded as Python's
 * bytes.decode("utf-8", errors="replace") does, one U+FFFD per maximal invalid
 * subpart (a lead byte plus the valid continuation bytes that follow it, or a
 * single byte that cannot start a sequence: 80-BF, C0, C1, F5-FF; overlongs and
 * surrogates fail at their second byte), before cleaning.
 * Returns 0, or UMG_EINVAL (NULL argument, max_ids < 2; *n_ids = 0),
 * UMG_ETOOBIG (len above 128 MiB), UMG_ENOMEM.  Cost: linear in len for the
 * cleaning, O(m log m) for a BPE piece of m bytes; scanning stops once max_ids
 * is reached. */
int enc_tokenize(const enc_tokenizer *tok, const char *text, size_t len,
                 int32_t *ids, int max_ids, int *n_ids);

/* Id of a vocabulary entry (byte-level unicode string, e.g. "cat</w>"), or -1. */
int32_t enc_tokenizer_token_id(const enc_tokenizer *tok, const char *token);
/* Number of entries in the vocabulary. */
int enc_tokenizer_vocab_size(const enc_tokenizer *tok);

#endif
