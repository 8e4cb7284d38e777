/* test_query_cache.c - the text queries' embedding cache (engine/query_cache.h)
 * on its own: a hit hands back the stored vector bit for bit, the least
 * recently used entry is the one dropped, capacity 0 keeps nothing, and many
 * threads at once neither tear a vector nor lose a count (run under ASan in
 * the sanitizer suite; TSan by hand, docs/server.md).  Through the engine:
 * test_engine's test_query_cache. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "query_cache.h"
#include "umg_error.h"

enum { DIM = 64 };

/* key k: ids {49406, k, k + 1, 49407}, as a tokenized text is framed */
static void key_of(int k, int32_t ids[4])
{
    ids[0] = 49406, ids[1] = k, ids[2] = k + 1, ids[3] = 49407;
}

/* a vector only key k has, with values that are not round numbers */
static void vec_of(int k, float *v)
{
    for (int d = 0; d < DIM; d++) v[d] = (float)k * 0.001f + (float)d * 1.0e-7f + 0.1234567f;
}

static void put_key(eng_qcache *c, int k)
{
    int32_t ids[4];
    float v[DIM];
    key_of(k, ids);
    vec_of(k, v);
    eng_qcache_put(c, ids, 4, v);
}

static int get_key(eng_qcache *c, int k, float *v)
{
    int32_t ids[4];
    key_of(k, ids);
    return eng_qcache_get(c, ids, 4, v);
}

static void test_hit_identical(void **state)
{
    (void)state;
    eng_qcache *c;
    assert_int_equal(eng_qcache_create(4, DIM, &c), 0);
    assert_non_null(c);
    float v[DIM], want[DIM];
    for (int d = 0; d < DIM; d++) v[d] = -1;
    assert_int_equal(get_key(c, 7, v), 0);
    for (int d = 0; d < DIM; d++) assert_true(v[d] == -1); /* a miss leaves vec alone */
    put_key(c, 7);
    assert_int_equal(get_key(c, 7, v), 1);
    vec_of(7, want);
    assert_memory_equal(v, want, sizeof v);
    /* a key that differs in length only, or in one id, is another key */
    int32_t ids[4];
    key_of(7, ids);
    assert_int_equal(eng_qcache_get(c, ids, 3, v), 0);
    ids[2]++;
    assert_int_equal(eng_qcache_get(c, ids, 4, v), 0);
    /* a put of the same key replaces its vector */
    key_of(7, ids);
    float other[DIM];
    vec_of(99, other);
    eng_qcache_put(c, ids, 4, other);
    assert_int_equal(get_key(c, 7, v), 1);
    assert_memory_equal(v, other, sizeof v);
    eng_qcache_counts n;
    eng_qcache_counts_get(c, &n);
    assert_int_equal(n.hits, 2);
    assert_int_equal(n.misses, 3);
    assert_int_equal(n.entries, 1);
    assert_int_equal(n.capacity, 4);
    eng_qcache_close(c);
}

/* Full: the least recently used goes, where a get counts as a use. */
static void test_eviction_order(void **state)
{
    (void)state;
    eng_qcache *c;
    assert_int_equal(eng_qcache_create(3, DIM, &c), 0);
    float v[DIM];
    put_key(c, 1), put_key(c, 2), put_key(c, 3);
    assert_int_equal(get_key(c, 1, v), 1); /* order of use now 2, 3, 1 */
    put_key(c, 4);                          /* drops 2 */
    assert_int_equal(get_key(c, 2, v), 0);
    assert_int_equal(get_key(c, 3, v), 1); /* 1, 4, 3 */
    put_key(c, 5);                          /* drops 1 */
    assert_int_equal(get_key(c, 1, v), 0);
    for (int k = 3; k <= 5; k++) {
        assert_int_equal(get_key(c, k, v), 1);
        float want[DIM];
        vec_of(k, want);
        assert_memory_equal(v, want, sizeof v); /* a reused slot holds its new key's vector */
    }
    put_key(c, 3);                          /* a put is a use too: 4, 5, 3 */
    put_key(c, 6);                          /* drops 4 */
    assert_int_equal(get_key(c, 4, v), 0);
    assert_int_equal(get_key(c, 5, v), 1);
    eng_qcache_counts n;
    eng_qcache_counts_get(c, &n);
    assert_int_equal(n.entries, 3);
    eng_qcache_close(c);
}

/* Many keys through a small cache, many times: the chains stay consistent
 * (every key still cached is found, no dropped key is). */
static void test_churn(void **state)
{
    (void)state;
    eng_qcache *c;
    assert_int_equal(eng_qcache_create(8, DIM, &c), 0);
    float v[DIM];
    for (int k = 0; k < 5000; k++) {
        put_key(c, k);
        for (int j = k - 7 > 0 ? k - 7 : 0; j <= k; j++) assert_int_equal(get_key(c, j, v), 1);
        if (k >= 8) assert_int_equal(get_key(c, k - 8, v), 0);
        /* the gets above reordered the last 8 in insertion order: the oldest is still k - 7 */
    }
    eng_qcache_close(c);
}

static void test_disabled(void **state)
{
    (void)state;
    eng_qcache *c = (eng_qcache *)1;
    assert_int_equal(eng_qcache_create(0, DIM, &c), 0);
    assert_null(c);
    float v[DIM];
    put_key(c, 1);
    assert_int_equal(get_key(c, 1, v), 0);
    eng_qcache_counts n;
    eng_qcache_counts_get(c, &n);
    assert_int_equal(n.hits + n.misses + (uint64_t)n.entries + (uint64_t)n.capacity, 0);
    eng_qcache_close(c);
    assert_int_equal(eng_qcache_create(-1, DIM, &c), UMG_EINVAL);
    assert_int_equal(eng_qcache_create(ENG_QCACHE_MAX + 1, DIM, &c), UMG_EINVAL);
    assert_int_equal(eng_qcache_create(4, 0, &c), UMG_EINVAL);
}

enum { THREADS = 8, ROUNDS = 4000, KEYS = 48 };

typedef struct worker {
    eng_qcache *c;
    int seed;
    uint64_t gets, hits, torn;
} worker;

static void *hammer(void *arg)
{
    worker *w = arg;
    uint32_t r = (uint32_t)w->seed * 2654435761u + 1;
    float v[DIM], want[DIM];
    for (int i = 0; i < ROUNDS; i++) {
        r = r * 1664525u + 1013904223u;
        int k = (int)(r >> 8) % KEYS;
        w->gets++;
        if (get_key(w->c, k, v)) {
            w->hits++;
            vec_of(k, want);
            if (memcmp(v, want, sizeof v)) w->torn++;
        } else {
            put_key(w->c, k);
        }
    }
    return NULL;
}

/* Threads share a cache smaller than their keys (constant eviction): every
 * hit is its key's own vector, and hits + misses = gets. */
static void test_threads(void **state)
{
    (void)state;
    eng_qcache *c;
    assert_int_equal(eng_qcache_create(KEYS / 3, DIM, &c), 0);
    worker w[THREADS];
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++) {
        w[i] = (worker){.c = c, .seed = i};
        assert_int_equal(pthread_create(&t[i], NULL, hammer, &w[i]), 0);
    }
    uint64_t gets = 0, hits = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(w[i].torn, 0);
        gets += w[i].gets, hits += w[i].hits;
    }
    eng_qcache_counts n;
    eng_qcache_counts_get(c, &n);
    assert_int_equal(n.hits, hits);
    assert_int_equal(n.hits + n.misses, gets);
    assert_true(hits > 0 && n.misses > 0);
    assert_int_equal(n.entries, KEYS / 3);
    eng_qcache_close(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hit_identical), cmocka_unit_test(test_eviction_order),
        cmocka_unit_test(test_churn),         cmocka_unit_test(test_disabled),
        cmocka_unit_test(test_threads),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
