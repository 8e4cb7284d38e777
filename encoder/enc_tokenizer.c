/* enc_tokenizer.c - the CLIP byte-level BPE tokenizer (see enc_tokenizer.h).
 *
 * Pipeline per call, on a code point array: UTF-8 decode with Python's
 * errors="replace" rule -> html.unescape twice -> strip + whitespace collapse ->
 * str.lower() -> UTF-8 -> the CLIP pattern (PCRE2) -> byte-level symbols -> BPE
 * (a heap of pair ranks, O(n log n) per piece) -> ids.
 *
 * Symbols are represented by their vocabulary ids: open() checks that every byte
 * symbol and every merge result is in vocab.json, so BPE never builds a string and
 * a lookup can never fail afterwards. */
#define PCRE2_CODE_UNIT_WIDTH 8

#include "enc_tokenizer.h"

#include <errno.h>
#include <jansson.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "enc_html_entities.h"
#include "umg_error.h"
#include "umg_util.h"

/* OpenAI and Hugging Face both keep merges[1 : 49152-256-2+1]. */
#define MERGES_MAX (49152 - 256 - 2)
/* Positions are int32; cleaning may double the code points and UTF-8 takes 4 bytes each. */
#define TEXT_MAX_BYTES ((size_t)INT32_MAX / 16)

/* The CLIP pattern as the `regex` module runs it with IGNORECASE, filled in with
 * enc_regex_letters_extra, enc_regex_numbers_extra (newer Unicode letters/numbers).
 * Two spots differ from PCRE2's reading of the plain pattern, so the last class is
 * spelled out:
 *  - \s is Unicode White_Space there; PCRE2's \s also has U+180E;
 *  - U+0345 folds to a letter (iota), so the caseless negated class rejects it
 *    while [\p{L}] does not take it either: Python skips it like a space. */
static const char CLIP_PATTERN_FMT[] =
    "<\\|startoftext\\|>|<\\|endoftext\\|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}%s]+|[\\p{N}%s]|"
    "[^\\t\\n\\x0b\\f\\r \\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}"
    "\\x{205f}\\x{3000}\\p{L}\\p{N}\\x{345}%s%s]+";

struct enc_tokenizer {
    /* vocab.json: open addressing on FNV-1a, slot -> token string in `strings`. */
    char *strings;
    uint32_t *vocab_off; /* offset + 1 into strings; 0 = empty slot */
    int32_t *vocab_id;
    size_t vocab_mask;
    int vocab_size;
    /* merges.txt: open addressing on the (left id, right id) pair. */
    uint64_t *merge_key; /* (left << 32 | right) */
    int32_t *merge_rank; /* -1 = empty slot */
    int32_t *merge_out;  /* id of the merged symbol */
    size_t merge_mask;
    int n_merges;
    int32_t byte_id[256];     /* byte-level symbol of each byte */
    int32_t byte_end_id[256]; /* the same with "</w>" */
    int32_t sot_id, eot_id;
    pcre2_code *re;
};

/* ---- hashing ------------------------------------------------------------ */

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static size_t table_size_for(size_t n)
{
    size_t cap = 16;
    while (cap < 2 * n)
        cap <<= 1;
    return cap;
}

static int32_t vocab_find(const enc_tokenizer *tok, const char *s, size_t n)
{
    size_t i = hash_bytes(s, n) & tok->vocab_mask;
    while (tok->vocab_off[i]) {
        const char *k = tok->strings + tok->vocab_off[i] - 1;
        if (strncmp(k, s, n) == 0 && k[n] == '\0')
            return tok->vocab_id[i];
        i = (i + 1) & tok->vocab_mask;
    }
    return -1;
}

static int merge_find(const enc_tokenizer *tok, int32_t left, int32_t right, int32_t *out)
{
    uint64_t key = (uint64_t)(uint32_t)left << 32 | (uint32_t)right;
    size_t i = hash_u64(key) & tok->merge_mask;
    while (tok->merge_rank[i] >= 0) {
        if (tok->merge_key[i] == key) {
            *out = tok->merge_out[i];
            return tok->merge_rank[i];
        }
        i = (i + 1) & tok->merge_mask;
    }
    return -1;
}

/* ---- loading ------------------------------------------------------------ */

static int load_vocab(enc_tokenizer *tok, const char *path)
{
    char *text;
    size_t len;
    int rc = umg_read_file(path, (size_t)1 << 30, (uint8_t **)&text, &len);
    if (rc)
        return rc;
    json_error_t jerr;
    json_t *root = json_loadb(text, len, 0, &jerr);
    free(text);
    if (!root)
        return umg_err_set(UMG_EFORMAT, "%s: line %d: %s", path, jerr.line, jerr.text);
    rc = 0;
    size_t n = json_is_object(root) ? json_object_size(root) : 0;
    if (n == 0 || n > (size_t)INT32_MAX / 4) {
        rc = umg_err_set(UMG_EFORMAT, "%s: expected a non-empty JSON object of token -> id", path);
        goto out;
    }
    size_t bytes = 0;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        json_int_t id = json_is_integer(val) ? json_integer_value(val) : -1;
        if (id < 0 || id >= (json_int_t)n) {
            rc = umg_err_set(UMG_EFORMAT, "%s: token \"%.40s\" has id outside [0, %zu)", path, key, n);
            goto out;
        }
        bytes += strlen(key) + 1;
    }
    if (bytes >= UINT32_MAX) {
        rc = umg_err_set(UMG_EFORMAT, "%s: vocabulary too large", path);
        goto out;
    }
    size_t cap = table_size_for(n);
    tok->strings = malloc(bytes);
    tok->vocab_off = calloc(cap, sizeof *tok->vocab_off);
    tok->vocab_id = calloc(cap, sizeof *tok->vocab_id);
    if (!tok->strings || !tok->vocab_off || !tok->vocab_id) {
        rc = umg_err_set(UMG_ENOMEM, "%s: out of memory", path);
        goto out;
    }
    tok->vocab_mask = cap - 1;
    size_t used = 0;
    json_object_foreach(root, key, val) {
        size_t klen = strlen(key);
        size_t i = hash_bytes(key, klen) & tok->vocab_mask;
        while (tok->vocab_off[i])
            i = (i + 1) & tok->vocab_mask; /* keys of a JSON object are unique */
        memcpy(tok->strings + used, key, klen + 1);
        tok->vocab_off[i] = (uint32_t)(used + 1);
        tok->vocab_id[i] = (int32_t)json_integer_value(val);
        used += klen + 1;
    }
    tok->vocab_size = (int)n;
out:
    json_decref(root);
    return rc;
}

/* bytes_to_unicode(): printable Latin-1 bytes stand for themselves, the other 68
 * bytes map to U+0100.. in byte order. */
static uint32_t byte_to_unicode(int b)
{
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF))
        return (uint32_t)b;
    int extra = 0;
    for (int c = 0; c < b; c++)
        if (!((c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF)))
            extra++;
    return 256u + (uint32_t)extra;
}

static int load_byte_symbols(enc_tokenizer *tok, const char *vocab_path)
{
    for (int b = 0; b < 256; b++) {
        char s[16];
        int n = (int)utf8proc_encode_char((utf8proc_int32_t)byte_to_unicode(b), (utf8proc_uint8_t *)s);
        memcpy(s + n, "</w>", 5);
        tok->byte_id[b] = vocab_find(tok, s, (size_t)n);
        tok->byte_end_id[b] = vocab_find(tok, s, (size_t)n + 4);
        if (tok->byte_id[b] < 0 || tok->byte_end_id[b] < 0)
            return umg_err_set(UMG_EFORMAT, "%s: byte-level token \"%s\" (byte 0x%02X) missing",
                               vocab_path, s, b);
    }
    tok->sot_id = vocab_find(tok, "<|startoftext|>", 15);
    tok->eot_id = vocab_find(tok, "<|endoftext|>", 13);
    if (tok->sot_id < 0 || tok->eot_id < 0)
        return umg_err_set(UMG_EFORMAT, "%s: <|startoftext|> or <|endoftext|> missing", vocab_path);
    return 0;
}

static int load_merges(enc_tokenizer *tok, const char *path)
{
    char *text;
    size_t len;
    int rc = umg_read_file(path, (size_t)1 << 30, (uint8_t **)&text, &len);
    if (rc)
        return rc;
    if (memchr(text, '\0', len)) {
        free(text);
        return umg_err_set(UMG_EFORMAT, "%s: contains NUL bytes; not a merges.txt", path);
    }
    size_t cap = table_size_for(MERGES_MAX);
    tok->merge_key = malloc(cap * sizeof *tok->merge_key);
    tok->merge_rank = malloc(cap * sizeof *tok->merge_rank);
    tok->merge_out = malloc(cap * sizeof *tok->merge_out);
    if (!tok->merge_key || !tok->merge_rank || !tok->merge_out) {
        free(text);
        return umg_err_set(UMG_ENOMEM, "%s: out of memory", path);
    }
    memset(tok->merge_rank, 0xff, cap * sizeof *tok->merge_rank);
    tok->merge_mask = cap - 1;

    char joined[1024];
    int line_no = 0, rank = 0;
    char *line = text;
    while (line && *line && rank < MERGES_MAX) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        line_no++;
        size_t ll = strlen(line);
        if (ll && line[ll - 1] == '\r')
            line[--ll] = '\0';
        /* Line 1 is the "#version: 0.2" header (Python drops line 1 unconditionally;
         * a file without the header keeps its first merge here). */
        if (!(line_no == 1 && line[0] == '#') && ll > 0) {
            char *save = NULL;
            char *a = strtok_r(line, " \t", &save);
            char *b = a ? strtok_r(NULL, " \t", &save) : NULL;
            char *extra = b ? strtok_r(NULL, " \t", &save) : NULL;
            if (!a || !b || extra) {
                rc = umg_err_set(UMG_EFORMAT, "%s: line %d: expected two symbols separated by a space",
                                 path, line_no);
                break;
            }
            size_t la = strlen(a), lb = strlen(b);
            if (la + lb >= sizeof joined) {
                rc = umg_err_set(UMG_EFORMAT, "%s: line %d: symbol too long", path, line_no);
                break;
            }
            memcpy(joined, a, la);
            memcpy(joined + la, b, lb + 1);
            int32_t ia = vocab_find(tok, a, la), ib = vocab_find(tok, b, lb);
            int32_t iab = vocab_find(tok, joined, la + lb);
            if (ia < 0 || ib < 0 || iab < 0) {
                rc = umg_err_set(UMG_EFORMAT, "%s: line %d: \"%.60s\" not in vocab.json", path, line_no,
                                 ia < 0 ? a : ib < 0 ? b : joined);
                break;
            }
            uint64_t key = (uint64_t)(uint32_t)ia << 32 | (uint32_t)ib;
            size_t i = hash_u64(key) & tok->merge_mask;
            while (tok->merge_rank[i] >= 0 && tok->merge_key[i] != key)
                i = (i + 1) & tok->merge_mask;
            /* A repeated pair takes its later rank, as Python's dict(zip(merges, range)) does. */
            tok->merge_key[i] = key;
            tok->merge_rank[i] = rank++;
            tok->merge_out[i] = iab;
        }
        line = nl ? nl + 1 : NULL;
    }
    free(text);
    if (!rc && line_no == 0)
        rc = umg_err_set(UMG_EFORMAT, "%s: empty file", path);
    tok->n_merges = rank;
    return rc;
}

int enc_tokenizer_open(const char *vocab_json_path, const char *merges_txt_path, enc_tokenizer **out)
{
    if (!out)
        return umg_err_set(UMG_EINVAL, "enc_tokenizer_open: out is NULL");
    *out = NULL;
    if (!vocab_json_path || !merges_txt_path)
        return umg_err_set(UMG_EINVAL, "enc_tokenizer_open: NULL path");
    enc_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok)
        return umg_err_set(UMG_ENOMEM, "tokenizer: out of memory");
    int rc = load_vocab(tok, vocab_json_path);
    if (!rc)
        rc = load_byte_symbols(tok, vocab_json_path);
    if (!rc)
        rc = load_merges(tok, merges_txt_path);
    if (!rc) {
        int err;
        PCRE2_SIZE off;
        char pattern[2048];
        int plen = snprintf(pattern, sizeof pattern, CLIP_PATTERN_FMT, enc_regex_letters_extra,
                            enc_regex_numbers_extra, enc_regex_letters_extra, enc_regex_numbers_extra);
        if (plen < 0 || (size_t)plen >= sizeof pattern)
            abort(); /* the generated tables outgrew the buffer: a build-time invariant */
        tok->re = pcre2_compile((PCRE2_SPTR)pattern, (PCRE2_SIZE)plen,
                                PCRE2_UTF | PCRE2_UCP | PCRE2_CASELESS, &err, &off, NULL);
        if (!tok->re) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(err, msg, sizeof msg);
            rc = umg_err_set(UMG_EINTERNAL, "tokenizer pattern: %s at %zu", (char *)msg, (size_t)off);
        } else {
            /* Without JIT support pcre2_match falls back to the interpreter: slower, same result. */
            (void)pcre2_jit_compile(tok->re, PCRE2_JIT_COMPLETE);
        }
    }
    if (rc) {
        enc_tokenizer_close(tok);
        return rc;
    }
    *out = tok;
    return 0;
}

void enc_tokenizer_close(enc_tokenizer *tok)
{
    if (!tok)
        return;
    pcre2_code_free(tok->re);
    free(tok->strings);
    free(tok->vocab_off);
    free(tok->vocab_id);
    free(tok->merge_key);
    free(tok->merge_rank);
    free(tok->merge_out);
    free(tok);
}

int32_t enc_tokenizer_token_id(const enc_tokenizer *tok, const char *token)
{
    if (!tok || !token)
        return -1;
    return vocab_find(tok, token, strlen(token));
}

int enc_tokenizer_vocab_size(const enc_tokenizer *tok)
{
    return tok ? tok->vocab_size : 0;
}

/* ---- text cleaning ------------------------------------------------------ */

/* bytes.decode("utf-8", errors="replace"): one U+FFFD per maximal invalid subpart
 * (a valid lead byte with its valid continuations so far, or one bad byte). */
static size_t utf8_decode_replace(const uint8_t *s, size_t n, uint32_t *out)
{
    size_t k = 0, i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c < 0x80) {
            out[k++] = c;
            i++;
            continue;
        }
        int need;
        uint32_t cp;
        uint8_t lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 1;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            cp = c & 0x0F;
            if (c == 0xE0)
                lo = 0xA0; /* overlong */
            else if (c == 0xED)
                hi = 0x9F; /* surrogates */
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            cp = c & 0x07;
            if (c == 0xF0)
                lo = 0x90; /* overlong */
            else if (c == 0xF4)
                hi = 0x8F; /* beyond U+10FFFF */
        } else {
            out[k++] = 0xFFFD;
            i++;
            continue;
        }
        size_t j = i + 1;
        int got = 0;
        while (got < need && j < n && s[j] >= lo && s[j] <= hi) {
            cp = cp << 6 | (s[j] & 0x3F);
            j++;
            got++;
            lo = 0x80;
            hi = 0xBF;
        }
        out[k++] = got == need ? cp : 0xFFFD;
        i = j;
    }
    return k;
}

static int in_ranges(const enc_cp_range *r, size_t n, uint32_t c)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < r[mid].lo)
            hi = mid;
        else if (c > r[mid].hi)
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

static const enc_html_entity *entity_find(const char *name, size_t n)
{
    size_t lo = 0, hi = enc_html_entities_count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const char *e = enc_html_entities[mid].name;
        int cmp = strncmp(name, e, n);
        if (cmp == 0 && e[n] != '\0')
            cmp = -1; /* name is a proper prefix of e */
        if (cmp == 0)
            return &enc_html_entities[mid];
        if (cmp < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

static int is_ascii_digit(uint32_t c) { return c >= '0' && c <= '9'; }
static int is_ascii_hex(uint32_t c) { return is_ascii_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

/* The replacement of a numeric reference (html._replace_charref). */
static size_t numeric_charref(uint32_t num, uint32_t *out)
{
    size_t lo = 0, hi = enc_html_invalid_charrefs_count;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (enc_html_invalid_charrefs[mid].num == num) {
            out[0] = enc_html_invalid_charrefs[mid].cp;
            return 1;
        }
        if (enc_html_invalid_charrefs[mid].num < num)
            lo = mid + 1;
        else
            hi = mid;
    }
    if ((num >= 0xD800 && num <= 0xDFFF) || num > 0x10FFFF) {
        out[0] = 0xFFFD;
        return 1;
    }
    if (in_ranges(enc_html_invalid_codepoints, enc_html_invalid_codepoints_count, num))
        return 0;
    out[0] = num;
    return 1;
}

/* html.unescape: the regex &(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)
 * scanned left to right.  Never produces more code points than it reads, so out
 * may be as long as in; out must not alias in. */
static size_t html_unescape(const uint32_t *in, size_t n, uint32_t *out)
{
    size_t k = 0, i = 0;
    while (i < n) {
        if (in[i] != '&') {
            out[k++] = in[i++];
            continue;
        }
        size_t j = i + 1;
        if (j < n && in[j] == '#') {
            int hex = 0;
            j++;
            if (j < n && is_ascii_digit(in[j])) {
                hex = 0;
            } else if (j + 1 < n && (in[j] == 'x' || in[j] == 'X') && is_ascii_hex(in[j + 1])) {
                hex = 1;
                j++;
            } else {
                out[k++] = in[i++]; /* no match: a literal '&' */
                continue;
            }
            uint32_t num = 0; /* saturates above U+10FFFF: Python's int is unbounded */
            while (j < n && (hex ? is_ascii_hex(in[j]) : is_ascii_digit(in[j]))) {
                uint32_t c = in[j++];
                uint32_t d = c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10;
                num = num > 0x10FFFF ? num : num * (hex ? 16 : 10) + d;
            }
            if (j < n && in[j] == ';')
                j++;
            k += numeric_charref(num, out + k);
            i = j;
            continue;
        }
        while (j < n && j - (i + 1) < 32 && in[j] != '\t' && in[j] != '\n' && in[j] != '\f' &&
               in[j] != ' ' && in[j] != '<' && in[j] != '&' && in[j] != '#' && in[j] != ';')
            j++;
        if (j == i + 1) {
            out[k++] = in[i++];
            continue;
        }
        if (j < n && in[j] == ';')
            j++;
        /* The name as bytes; entity names are ASCII letters and digits, so a
         * stand-in byte for anything else (NUL included) never matches. */
        char name[34];
        size_t len = j - (i + 1);
        for (size_t t = 0; t < len; t++)
            name[t] = in[i + 1 + t] < 0x80 && in[i + 1 + t] ? (char)in[i + 1 + t] : '\x01';
        const enc_html_entity *e = entity_find(name, len);
        size_t used = len;
        /* Else the longest prefix (at least 2 characters) that is a name. */
        for (size_t x = len - 1; !e && x >= 2; x--) {
            e = entity_find(name, x);
            used = x;
        }
        if (e) {
            out[k++] = e->cp[0];
            if (e->cp[1])
                out[k++] = e->cp[1];
            for (size_t t = i + 1 + used; t < j; t++)
                out[k++] = in[t];
        } else {
            for (size_t t = i; t < j; t++)
                out[k++] = in[t];
        }
        i = j;
    }
    return k;
}

/* The `regex` module's \s: Unicode White_Space. */
static int is_white_space(uint32_t c)
{
    if (c <= 0x20)
        return c == ' ' || (c >= 0x09 && c <= 0x0D);
    if (c < 0x85)
        return 0;
    return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
           c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Python's str.isspace (what str.strip removes): White_Space plus U+001C..U+001F. */
static int is_py_space(uint32_t c)
{
    return is_white_space(c) || (c >= 0x1C && c <= 0x1F);
}

/* strip(), then White_Space runs -> one space (the ends are no longer white). In place. */
static size_t clean_whitespace(uint32_t *s, size_t n)
{
    size_t b = 0, e = n;
    while (b < e && is_py_space(s[b]))
        b++;
    while (e > b && is_py_space(s[e - 1]))
        e--;
    size_t k = 0;
    int in_run = 0;
    for (size_t i = b; i < e; i++) {
        if (!is_white_space(s[i]))
            s[k++] = s[i];
        else if (!in_run)
            s[k++] = ' ';
        in_run = is_white_space(s[i]);
    }
    return k;
}

/* CPython's handle_capital_sigma: final form when preceded by a cased letter and
 * not followed by one (case-ignorable characters skipped both ways). */
static int final_sigma(const uint32_t *s, size_t n, size_t i)
{
    size_t j = i;
    while (j > 0 && in_ranges(enc_case_ignorable, enc_case_ignorable_count, s[j - 1]))
        j--;
    if (j == 0 || !in_ranges(enc_cased, enc_cased_count, s[j - 1]))
        return 0;
    j = i + 1;
    while (j < n && in_ranges(enc_case_ignorable, enc_case_ignorable_count, s[j]))
        j++;
    return j == n || !in_ranges(enc_cased, enc_cased_count, s[j]);
}

/* Python's str.lower(): utf8proc's simple mapping except U+0130 (full mapping,
 * two code points) and U+03A3 (Final_Sigma).  out holds up to 2n. */
static size_t py_lower(const uint32_t *s, size_t n, uint32_t *out)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = s[i];
        if (c < 0x80) {
            out[k++] = (c >= 'A' && c <= 'Z') ? c + 32 : c;
        } else if (c == 0x130) {
            out[k++] = 0x69;
            out[k++] = 0x307;
        } else if (c == 0x3A3) {
            out[k++] = final_sigma(s, n, i) ? 0x3C2 : 0x3C3;
        } else {
            out[k++] = (uint32_t)utf8proc_tolower((utf8proc_int32_t)c);
        }
    }
    return k;
}

static size_t utf8_encode(const uint32_t *s, size_t n, uint8_t *out)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t c = s[i];
        if (c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF))
            c = 0xFFFD; /* cannot happen; keeps the PCRE2_NO_UTF_CHECK promise */
        k += (size_t)utf8proc_encode_char((utf8proc_int32_t)c, out + k);
    }
    return k;
}

/* ---- BPE ---------------------------------------------------------------- */

typedef struct {
    int32_t rank, pos, left, right, merged;
} bpe_pair;

typedef struct {
    int32_t *sym, *prev, *next;
    bpe_pair *heap, *round;
    size_t cap; /* symbols */
    size_t n_heap;
    void *mem;
} bpe_scratch;

static int bpe_reserve(bpe_scratch *w, size_t m)
{
    if (m <= w->cap)
        return 0;
    size_t cap = m < 64 ? 64 : m;
    /* Each merge pushes at most two pairs: (m - 1) initial + 2 (m - 1) later. */
    size_t bytes = 3 * cap * sizeof(int32_t) + 4 * cap * sizeof(bpe_pair);
    void *mem = malloc(bytes);
    if (!mem)
        return UMG_ENOMEM;
    free(w->mem);
    w->mem = mem;
    w->sym = mem;
    w->prev = w->sym + cap;
    w->next = w->prev + cap;
    w->heap = (bpe_pair *)(w->next + cap);
    w->round = w->heap + 3 * cap;
    w->cap = cap;
    return 0;
}

static int pair_less(const bpe_pair *a, const bpe_pair *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(bpe_scratch *w, bpe_pair p)
{
    size_t i = w->n_heap++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!pair_less(&p, &w->heap[parent]))
            break;
        w->heap[i] = w->heap[parent];
        i = parent;
    }
    w->heap[i] = p;
}

static bpe_pair heap_pop(bpe_scratch *w)
{
    bpe_pair top = w->heap[0];
    bpe_pair last = w->heap[--w->n_heap];
    size_t i = 0, n = w->n_heap;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && pair_less(&w->heap[c + 1], &w->heap[c]))
            c++;
        if (!pair_less(&w->heap[c], &last))
            break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n)
        w->heap[i] = last;
    return top;
}

static void push_if_ranked(const enc_tokenizer *tok, bpe_scratch *w, int32_t pos)
{
    if (pos < 0)
        return;
    int32_t nx = w->next[pos];
    if (nx < 0)
        return;
    bpe_pair p = {0, pos, w->sym[pos], w->sym[nx], 0};
    p.rank = merge_find(tok, p.left, p.right, &p.merged);
    if (p.rank >= 0)
        heap_push(w, p);
}

static int pair_current(const bpe_scratch *w, const bpe_pair *p)
{
    int32_t nx = w->next[p->pos];
    return w->sym[p->pos] == p->left && nx >= 0 && w->sym[nx] == p->right;
}

/* OpenAI's bpe(): repeatedly take the lowest-ranked adjacent pair and merge all
 * its occurrences left to right.  Each round pops every heap entry of that rank
 * (in position order) before pushing the pairs the merges create, so the result
 * is the same as the quadratic reference loop.  Dead symbols have sym = -1. */
static void bpe_word(const enc_tokenizer *tok, bpe_scratch *w, const uint8_t *p, size_t m)
{
    for (size_t i = 0; i < m; i++) {
        w->sym[i] = i + 1 < m ? tok->byte_id[p[i]] : tok->byte_end_id[p[i]];
        w->prev[i] = (int32_t)i - 1;
        w->next[i] = i + 1 < m ? (int32_t)i + 1 : -1;
    }
    w->n_heap = 0;
    for (size_t i = 0; i + 1 < m; i++)
        push_if_ranked(tok, w, (int32_t)i);
    while (w->n_heap) {
        bpe_pair first = heap_pop(w);
        if (!pair_current(w, &first))
            continue;
        size_t n_round = 0;
        w->round[n_round++] = first;
        while (w->n_heap && w->heap[0].rank == first.rank)
            w->round[n_round++] = heap_pop(w);
        for (size_t r = 0; r < n_round; r++) {
            const bpe_pair *q = &w->round[r];
            if (!pair_current(w, q))
                continue; /* consumed by the merge just before it (overlap) or stale */
            int32_t pos = q->pos, nx = w->next[pos];
            w->sym[pos] = q->merged;
            w->sym[nx] = -1;
            w->next[pos] = w->next[nx];
            if (w->next[nx] >= 0)
                w->prev[w->next[nx]] = pos;
            push_if_ranked(tok, w, w->prev[pos]);
            push_if_ranked(tok, w, pos);
        }
    }
}

/* ---- tokenize ----------------------------------------------------------- */

int enc_tokenize(const enc_tokenizer *tok, const char *text, size_t len, int32_t *ids, int max_ids,
                 int *n_ids)
{
    if (n_ids)
        *n_ids = 0;
    if (!tok || !text || !ids || !n_ids || max_ids < 2)
        return umg_err_set(UMG_EINVAL, "enc_tokenize: NULL argument or max_ids < 2");
    if (len > TEXT_MAX_BYTES)
        return umg_err_set(UMG_ETOOBIG, "enc_tokenize: text of %zu bytes exceeds %zu", len,
                           TEXT_MAX_BYTES);
    int rc = 0;
    int n = 0;
    ids[n++] = tok->sot_id;
    const int limit = max_ids - 1; /* room left for the end token */

    /* a: decoded / unescaped / cleaned (len); b: unescape scratch, then lowercase (2 len). */
    size_t cps_cap = len + 1;
    uint32_t *a = malloc(3 * cps_cap * sizeof *a + 8 * cps_cap);
    pcre2_match_data *md = NULL;
    bpe_scratch w = {0};
    if (!a) {
        rc = umg_err_set(UMG_ENOMEM, "enc_tokenize: out of memory");
        goto out;
    }
    uint32_t *b = a + cps_cap;
    uint8_t *u8 = (uint8_t *)(b + 2 * cps_cap);

    size_t nc = utf8_decode_replace((const uint8_t *)text, len, a);
    if (memchr(text, '&', len)) {
        nc = html_unescape(a, nc, b);
        nc = html_unescape(b, nc, a);
    }
    nc = clean_whitespace(a, nc);
    nc = py_lower(a, nc, b);
    size_t nb = utf8_encode(b, nc, u8);

    md = pcre2_match_data_create(1, NULL);
    if (!md) {
        rc = umg_err_set(UMG_ENOMEM, "enc_tokenize: out of memory");
        goto out;
    }
    PCRE2_SIZE at = 0;
    while (n < limit && at < nb) {
        int mrc = pcre2_match(tok->re, u8, nb, at, PCRE2_NO_UTF_CHECK, md, NULL);
        if (mrc == PCRE2_ERROR_NOMATCH)
            break;
        if (mrc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(mrc, msg, sizeof msg);
            rc = umg_err_set(UMG_EINTERNAL, "enc_tokenize: pattern match failed: %s", (char *)msg);
            goto out;
        }
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        const uint8_t *piece = u8 + ov[0];
        size_t m = ov[1] - ov[0];
        at = ov[1] > at ? ov[1] : at + 1; /* no alternative matches empty; never loop */
        if (m == 15 && memcmp(piece, "<|startoftext|>", 15) == 0) {
            ids[n++] = tok->sot_id;
        } else if (m == 13 && memcmp(piece, "<|endoftext|>", 13) == 0) {
            ids[n++] = tok->eot_id;
        } else if (m == 1) {
            ids[n++] = tok->byte_end_id[piece[0]];
        } else {
            if (bpe_reserve(&w, m)) {
                rc = umg_err_set(UMG_ENOMEM, "enc_tokenize: out of memory");
                goto out;
            }
            bpe_word(tok, &w, piece, m);
            for (int32_t s = 0; s >= 0 && n < limit; s = w.next[s])
                ids[n++] = w.sym[s];
        }
    }
    ids[n++] = tok->eot_id;
    *n_ids = n;
out:
    pcre2_match_data_free(md);
    free(w.mem);
    free(a);
    return rc;
}
