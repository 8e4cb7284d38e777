/* test_tokenizer.c - the CLIP tokenizer against OpenAI's reference ids
 * (clip-tiny/reference.json) and the golden cases of tools/clip_tokenizer_ref.py
 * (tokenizer/extra.json); hostile text and files. */
#include <jansson.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "enc_tokenizer.h"
#include "test_util.h"
#include "umg_error.h"

#define MODEL_DIR UMG_FIXTURES_DIR "/clip-tiny"
#define VOCAB MODEL_DIR "/vocab.json"
#define MERGES MODEL_DIR "/merges.txt"

static enc_tokenizer *g_tok;

static int open_tokenizer(void **state)
{
    int rc = enc_tokenizer_open(VOCAB, MERGES, &g_tok);
    if (rc)
        fprintf(stderr, "enc_tokenizer_open: %s\n", umg_err_msg());
    return rc;
}

static int close_tokenizer(void **state)
{
    enc_tokenizer_close(g_tok);
    g_tok = NULL;
    return 0;
}

/* The array doc[key] of the JSON file path, at least min entries long; the
 * caller json_decrefs *doc (which owns the array). */
static json_t *load_array(const char *path, const char *key, size_t min, json_t **doc)
{
    *doc = tu_json_load(path, JSON_ALLOW_NUL);
    json_t *a = json_object_get(*doc, key);
    assert_true(json_array_size(a) >= min);
    return a;
}

/* ids == the JSON array want; on mismatch print both. */
static void assert_ids(const char *what, const int32_t *ids, int n, const json_t *want)
{
    int same = (size_t)n == json_array_size(want);
    for (int i = 0; same && i < n; i++)
        same = ids[i] == json_integer_value(json_array_get(want, (size_t)i));
    if (!same) {
        fprintf(stderr, "%s:\n  want", what);
        for (size_t i = 0; i < json_array_size(want); i++)
            fprintf(stderr, " %lld", (long long)json_integer_value(json_array_get(want, i)));
        fprintf(stderr, "\n  got ");
        for (int i = 0; i < n; i++)
            fprintf(stderr, " %d", ids[i]);
        fprintf(stderr, "\n");
        fail_msg("token ids differ for %s", what);
    }
}

static void test_reference_texts(void **state)
{
    json_t *ref, *texts = load_array(MODEL_DIR "/reference.json", "texts", 10, &ref);
    size_t i;
    json_t *t;
    json_array_foreach(texts, i, t) {
        const char *text = json_string_value(json_object_get(t, "text"));
        assert_non_null(text);
        int32_t ids[ENC_CONTEXT_LENGTH];
        int n = -1;
        assert_int_equal(enc_tokenize(g_tok, text, strlen(text), ids, ENC_CONTEXT_LENGTH, &n), 0);
        assert_ids(text, ids, n, json_object_get(t, "ids"));
    }
    json_decref(ref);
}

static size_t hex_decode(const char *hex, char *out)
{
    size_t n = strlen(hex) / 2;
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        assert_int_equal(sscanf(hex + 2 * i, "%2x", &v), 1);
        out[i] = (char)v;
    }
    return n;
}

/* Every case at 77 ids, untruncated, and at a few other limits (the end token kept last). */
static void test_extra_cases(void **state)
{
    json_t *doc, *cases = load_array(UMG_FIXTURES_DIR "/tokenizer/extra.json", "cases", 30, &doc);
    size_t i;
    json_t *c;
    json_array_foreach(cases, i, c) {
        const char *name = json_string_value(json_object_get(c, "name"));
        json_t *jtext = json_object_get(c, "text");
        const char *hex = json_string_value(json_object_get(c, "hex"));
        size_t len = jtext ? json_string_length(jtext) : strlen(hex) / 2;
        char *text = malloc(len + 1);
        assert_non_null(text);
        if (jtext)
            memcpy(text, json_string_value(jtext), len);
        else
            hex_decode(hex, text);

        json_t *want = json_object_get(c, "ids");
        json_t *full = json_object_get(c, "ids_full");
        int n_full = (int)json_array_size(full);
        int32_t *ids = malloc((size_t)(n_full + 8) * sizeof *ids);
        assert_non_null(ids);
        int n = -1;
        assert_int_equal(enc_tokenize(g_tok, text, len, ids, ENC_CONTEXT_LENGTH, &n), 0);
        assert_ids(name, ids, n, want);
        assert_int_equal(enc_tokenize(g_tok, text, len, ids, n_full + 8, &n), 0);
        assert_ids(name, ids, n, full);

        const int limits[] = {2, 3, 5, n_full - 1, n_full};
        for (size_t l = 0; l < sizeof limits / sizeof *limits; l++) {
            int lim = limits[l];
            if (lim < 2)
                continue;
            assert_int_equal(enc_tokenize(g_tok, text, len, ids, lim, &n), 0);
            int expect_n = n_full < lim ? n_full : lim;
            assert_int_equal(n, expect_n);
            for (int k = 0; k < n - 1; k++)
                assert_int_equal(ids[k], json_integer_value(json_array_get(full, (size_t)k)));
            assert_int_equal(ids[n - 1], ENC_TOKEN_EOT);
        }
        free(ids);
        free(text);
    }
    json_decref(doc);
}

/* Well-formed output whatever the bytes: start, ids in the vocabulary, end. */
static void assert_well_formed(const char *text, size_t len, int max_ids)
{
    int32_t ids[ENC_CONTEXT_LENGTH];
    int n = -1;
    assert_int_equal(enc_tokenize(g_tok, text, len, ids, max_ids, &n), 0);
    assert_true(n >= 2 && n <= max_ids);
    assert_int_equal(ids[0], ENC_TOKEN_SOT);
    assert_int_equal(ids[n - 1], ENC_TOKEN_EOT);
    for (int i = 0; i < n; i++)
        assert_true(ids[i] >= 0 && ids[i] < enc_tokenizer_vocab_size(g_tok));
}

static void test_invalid_utf8_is_replaced(void **state)
{
    static const char *const hostile[] = {
        "\x80", "\xbf\xbf", "\xc3", "\xe2\x82", "\xf0\x9f\x98", "\xc0\xaf", "\xe0\x80\xaf",
        "\xf0\x80\x80\xaf", "\xed\xa0\x80", "\xed\xbf\xbf", "\xff", "\xfe\xff", "\xf4\x90\x80\x80",
        "\xf8\x88\x80\x80\x80", "&#\xff;", "&\xc3;", "&amp\x80;", "\xce\xa3\x80",
    };
    for (size_t i = 0; i < sizeof hostile / sizeof *hostile; i++)
        assert_well_formed(hostile[i], strlen(hostile[i]), ENC_CONTEXT_LENGTH);

    /* A lone bad byte becomes U+FFFD, so it tokenizes like the character itself. */
    int32_t a[8], b[8];
    int na, nb;
    assert_int_equal(enc_tokenize(g_tok, "x\xff" "y", 3, a, 8, &na), 0);
    assert_int_equal(enc_tokenize(g_tok, "x\xef\xbf\xbdy", 5, b, 8, &nb), 0);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, (size_t)na * sizeof *a);
    /* An embedded NUL is text, not a terminator. */
    assert_int_equal(enc_tokenize(g_tok, "a\0b", 3, a, 8, &na), 0);
    assert_int_equal(enc_tokenize(g_tok, "a", 1, b, 8, &nb), 0);
    assert_true(na > nb);

    for (int c = 0; c < 256; c++) {
        char s[3] = {'a', (char)c, 'b'};
        assert_well_formed(s, sizeof s, ENC_CONTEXT_LENGTH);
    }
    /* Random bytes biased towards UTF-8 lead/continuation bytes and '&', '#', ';'. */
    static const char alphabet[] = "\x80\xbf\xc2\xdf\xe0\xed\xef\xf0\xf4\xf5\xff&#;xX9aZ \xce\xa3";
    uint32_t x = 12345;
    char buf[96];
    for (int iter = 0; iter < 3000; iter++) {
        size_t len = (size_t)(iter % 95) + 1;
        for (size_t i = 0; i < len; i++) {
            x = x * 1103515245u + 12345u;
            buf[i] = (x >> 24) & 1 ? (char)(x >> 16) : alphabet[(x >> 16) % (sizeof alphabet - 1)];
        }
        assert_well_formed(buf, len, 2 + iter % 76);
    }
}

static void test_large_inputs(void **state)
{
    /* One 256 KiB word (BPE over that many symbols), then 1 MiB of entities and of spaces. */
    size_t len = 1 << 20;
    char *big = malloc(len);
    assert_non_null(big);
    uint32_t x = 99;
    for (size_t i = 0; i < len; i++) {
        x = x * 1103515245u + 12345u;
        big[i] = "etaoinshrdlu"[(x >> 16) % 12];
    }
    assert_well_formed(big, len / 4, ENC_CONTEXT_LENGTH);
    for (size_t i = 0; i + 5 <= len; i += 5)
        memcpy(big + i, "&amp;", 5);
    assert_well_formed(big, len, ENC_CONTEXT_LENGTH);
    memset(big, ' ', len);
    int32_t ids[4];
    int n;
    assert_int_equal(enc_tokenize(g_tok, big, len, ids, 4, &n), 0);
    assert_int_equal(n, 2);
    free(big);
}

static void test_invalid_arguments(void **state)
{
    int32_t ids[8];
    int n = 123;
    assert_int_equal(enc_tokenize(NULL, "a", 1, ids, 8, &n), UMG_EINVAL);
    assert_int_equal(n, 0);
    assert_int_equal(enc_tokenize(g_tok, NULL, 0, ids, 8, &n), UMG_EINVAL);
    assert_int_equal(enc_tokenize(g_tok, "a", 1, NULL, 8, &n), UMG_EINVAL);
    assert_int_equal(enc_tokenize(g_tok, "a", 1, ids, 8, NULL), UMG_EINVAL);
    assert_int_equal(enc_tokenize(g_tok, "a", 1, ids, 1, &n), UMG_EINVAL);
    assert_int_equal(enc_tokenize(g_tok, "a", 1, ids, 0, &n), UMG_EINVAL);
    assert_int_equal(enc_tokenize(g_tok, "a", 1, ids, -5, &n), UMG_EINVAL);
    assert_int_equal(enc_tokenize(g_tok, "a", 1, ids, 2, &n), 0);
    assert_int_equal(n, 2);
    enc_tokenizer *tok = (enc_tokenizer *)1;
    assert_int_equal(enc_tokenizer_open(NULL, MERGES, &tok), UMG_EINVAL);
    assert_null(tok);
    assert_int_equal(enc_tokenizer_open(VOCAB, NULL, &tok), UMG_EINVAL);
    assert_int_equal(enc_tokenizer_open(VOCAB, MERGES, NULL), UMG_EINVAL);
    enc_tokenizer_close(NULL);
    assert_int_equal(enc_tokenizer_token_id(NULL, "a"), -1);
    assert_int_equal(enc_tokenizer_token_id(g_tok, NULL), -1);
    assert_int_equal(enc_tokenizer_vocab_size(NULL), 0);
}

static void test_vocabulary_lookup(void **state)
{
    assert_int_equal(enc_tokenizer_vocab_size(g_tok), 49408);
    assert_int_equal(enc_tokenizer_token_id(g_tok, "<|startoftext|>"), ENC_TOKEN_SOT);
    assert_int_equal(enc_tokenizer_token_id(g_tok, "<|endoftext|>"), ENC_TOKEN_EOT);
    assert_int_equal(enc_tokenizer_token_id(g_tok, "!"), 0);
    assert_int_equal(enc_tokenizer_token_id(g_tok, "no such token"), -1);
    int32_t ids[4];
    int n;
    assert_int_equal(enc_tokenize(g_tok, "Cat", 3, ids, 4, &n), 0);
    assert_int_equal(n, 3);
    assert_int_equal(ids[1], enc_tokenizer_token_id(g_tok, "cat</w>"));
}

/* ---- hostile files ---- */

static char g_dir[64];

static const char *write_file(const char *name, const char *data, size_t len)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    tu_write_file(path, data, len);
    return path;
}

static void expect_open_error(const char *vocab, const char *merges, int code, const char *mention)
{
    enc_tokenizer *tok = (enc_tokenizer *)1;
    umg_err_clear();
    int rc = enc_tokenizer_open(vocab, merges, &tok);
    if (rc != code)
        fail_msg("open(%s, %s) = %d (%s), want %d", vocab, merges, rc, umg_err_msg(), code);
    assert_null(tok);
    if (!strstr(umg_err_msg(), mention))
        fail_msg("error message \"%s\" does not name %s", umg_err_msg(), mention);
}

static void test_vocab_and_merges_files(void **state)
{
    assert_non_null(tu_mkdtemp(g_dir, sizeof g_dir, "umg_tok_"));
    char vpath[128], mpath[128];

    expect_open_error("/nonexistent/vocab.json", MERGES, UMG_ENOENT, "/nonexistent/vocab.json");
    expect_open_error(VOCAB, "/nonexistent/merges.txt", UMG_ENOENT, "/nonexistent/merges.txt");
    expect_open_error(MODEL_DIR, MERGES, UMG_EIO, MODEL_DIR); /* a directory */

    static const char *const bad_vocabs[] = {
        "", "{not json", "[1, 2]", "{}", "{\"a\": \"x\"}", "{\"a\": 0, \"b\": 7}", "{\"a\": -1}",
        "{\"a\": 0.5}", "{\"!\": 0}", "\x89PNG\r\n\x1a\n\0\0garbage",
    };
    for (size_t i = 0; i < sizeof bad_vocabs / sizeof *bad_vocabs; i++) {
        const char *v = bad_vocabs[i];
        size_t len = i == 9 ? 17 : strlen(v);
        snprintf(vpath, sizeof vpath, "%s", write_file("vocab.json", v, len));
        expect_open_error(vpath, MERGES, UMG_EFORMAT, "vocab.json");
    }

    /* The real vocabulary truncated mid-file. */
    FILE *f = fopen(VOCAB, "rb");
    assert_non_null(f);
    static char head[300000];
    size_t got = fread(head, 1, sizeof head, f);
    fclose(f);
    assert_true(got == sizeof head);
    snprintf(vpath, sizeof vpath, "%s", write_file("vocab.json", head, got));
    expect_open_error(vpath, MERGES, UMG_EFORMAT, "vocab.json");

    static const char *const bad_merges[] = {
        "",                               /* empty */
        "#version: 0.2\ni n\nt h x\n",    /* three symbols */
        "#version: 0.2\ni\n",             /* one symbol */
        "#version: 0.2\n\xe2\x82\xac x\n", /* a symbol not in the vocabulary */
        "#version: 0.2\ni n\n\0\0\0\n",   /* binary */
    };
    const size_t bad_len[] = {0, 24, 16, 20, 22};
    for (size_t i = 0; i < sizeof bad_merges / sizeof *bad_merges; i++) {
        snprintf(mpath, sizeof mpath, "%s", write_file("merges.txt", bad_merges[i], bad_len[i]));
        expect_open_error(VOCAB, mpath, UMG_EFORMAT, "merges.txt");
    }

    /* A header-only merges.txt is valid: byte-level tokens only. */
    snprintf(mpath, sizeof mpath, "%s", write_file("merges.txt", "#version: 0.2\n", 14));
    enc_tokenizer *tok = NULL;
    assert_int_equal(enc_tokenizer_open(VOCAB, mpath, &tok), 0);
    int32_t ids[8];
    int n;
    assert_int_equal(enc_tokenize(tok, "ab", 2, ids, 8, &n), 0);
    assert_int_equal(n, 4);
    assert_int_equal(ids[1], enc_tokenizer_token_id(tok, "a"));
    assert_int_equal(ids[2], enc_tokenizer_token_id(tok, "b</w>"));
    enc_tokenizer_close(tok);

    /* OpenAI's bpe() merges every occurrence of the best pair before it looks at
     * the pairs those merges create, even one ranked lower ("ab a" here):
     * a b a b a b -> ab ab a b -> ab aba b, not aba b a b. */
    static const char order[] = "#version: 0.2\nab a\na b\n";
    snprintf(mpath, sizeof mpath, "%s", write_file("merges.txt", order, sizeof order - 1));
    assert_int_equal(enc_tokenizer_open(VOCAB, mpath, &tok), 0);
    assert_int_equal(enc_tokenize(tok, "ababab", 6, ids, 8, &n), 0);
    assert_int_equal(n, 5);
    assert_int_equal(ids[1], enc_tokenizer_token_id(tok, "ab"));
    assert_int_equal(ids[2], enc_tokenizer_token_id(tok, "aba"));
    assert_int_equal(ids[3], enc_tokenizer_token_id(tok, "b</w>"));
    enc_tokenizer_close(tok);

    tu_rm_rf(g_dir);
}

/* ---- threads ---- */

typedef struct {
    json_t *texts;
    int failures;
} thread_arg;

static void *tokenize_all(void *p)
{
    thread_arg *arg = p;
    for (int round = 0; round < 50; round++) {
        size_t i;
        json_t *t;
        json_array_foreach(arg->texts, i, t) {
            const char *text = json_string_value(json_object_get(t, "text"));
            json_t *want = json_object_get(t, "ids");
            int32_t ids[ENC_CONTEXT_LENGTH];
            int n;
            if (enc_tokenize(g_tok, text, strlen(text), ids, ENC_CONTEXT_LENGTH, &n) ||
                (size_t)n != json_array_size(want)) {
                arg->failures++;
                continue;
            }
            for (int k = 0; k < n; k++)
                arg->failures += ids[k] != json_integer_value(json_array_get(want, (size_t)k));
        }
    }
    return NULL;
}

static void test_shared_between_threads(void **state)
{
    json_t *ref, *texts = load_array(MODEL_DIR "/reference.json", "texts", 10, &ref);
    pthread_t th[4];
    thread_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (thread_arg){texts, 0};
        assert_int_equal(pthread_create(&th[i], NULL, tokenize_all, &args[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(args[i].failures, 0);
    }
    json_decref(ref);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference_texts),
        cmocka_unit_test(test_extra_cases),
        cmocka_unit_test(test_invalid_utf8_is_replaced),
        cmocka_unit_test(test_large_inputs),
        cmocka_unit_test(test_invalid_arguments),
        cmocka_unit_test(test_vocabulary_lookup),
        cmocka_unit_test(test_vocab_and_merges_files),
        cmocka_unit_test(test_shared_between_threads),
    };
    return cmocka_run_group_tests(tests, open_tokenizer, close_tokenizer);
}
