/* test_prep.c - enc_prep, the bounded producer of prepared batches (issue 17):
 * order, content, the memory bound, failures (the first in input order, even
 * when a later one fails sooner), several consumers, cancel and early close. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "enc_prep.h"
#include "umg_error.h"

#define PER 4 /* floats per item */

struct ctx {
    int batch, n_slots;
    atomic_int released;  /* batches the consumer gave back, in order */
    atomic_int violations; /* items prepared beyond the bound */
    atomic_int calls;
    int fail_at[2];       /* items that fail (-1: none) */
    int slow_item;        /* item that takes long (-1: none) */
};

/* Item i's tensor: i, i + 0.25, ...; some items sleep to shuffle completion. */
static int prepare(void *vctx, int index, float *px)
{
    struct ctx *c = vctx;
    atomic_fetch_add(&c->calls, 1);
    /* Its batch may be prepared only while at most n_slots batches exist: those
     * not yet released, this one included. */
    if (index / c->batch >= atomic_load(&c->released) + c->n_slots)
        atomic_fetch_add(&c->violations, 1);
    usleep(index == c->slow_item ? 80000 : (unsigned)(index * 7919 % 5) * 300);
    if (index == c->fail_at[0] || index == c->fail_at[1])
        return umg_err_set(UMG_EFORMAT, "bad item %d", index);
    for (int k = 0; k < PER; k++)
        px[k] = (float)index + 0.25f * k;
    return 0;
}

static enc_prep *start(struct ctx *c, int n_items, int threads)
{
    enc_prep_config cfg = {.n_items = n_items, .batch = c->batch, .item_floats = PER, .n_slots = c->n_slots,
                           .threads = threads, .prepare = prepare, .ctx = c};
    enc_prep *p = NULL;
    assert_int_equal(enc_prep_start(&cfg, &p), 0);
    assert_non_null(p);
    return p;
}

static void check_batch(const enc_prep_batch *b, int k, int batch, int n)
{
    assert_int_equal(b->index, k);
    assert_int_equal(b->first, k * batch);
    assert_int_equal(b->n, n);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < PER; j++)
            if (b->pixels[i * PER + j] != (float)(b->first + i) + 0.25f * j)
                fail_msg("batch %d item %d: %g, want %g", k, i, b->pixels[i * PER + j],
                         (float)(b->first + i) + 0.25f * j);
}

static void test_order_and_bound(void **state)
{
    for (int slots = 1; slots <= 3; slots++) {
        struct ctx c = {.batch = 8, .n_slots = slots, .fail_at = {-1, -1}, .slow_item = 13};
        int n = 103, nb = (n + 7) / 8;
        enc_prep *p = start(&c, n, 4);
        enc_prep_batch b;
        for (int k = 0; k < nb; k++) {
            assert_int_equal(enc_prep_next(p, &b), 1);
            check_batch(&b, k, 8, k < nb - 1 ? 8 : n - 8 * (nb - 1));
            assert_int_equal(b.failed, 0);
            assert_string_equal(b.err, "");
            usleep(3000); /* "encoding": the workers run ahead meanwhile, up to the bound */
            atomic_fetch_add(&c.released, 1);
            enc_prep_release(p, &b);
        }
        assert_int_equal(enc_prep_next(p, &b), 0);
        assert_int_equal(enc_prep_next(p, &b), 0);
        enc_prep_close(p);
        assert_int_equal(atomic_load(&c.violations), 0);
        assert_int_equal(atomic_load(&c.calls), n);
    }
}

/* Item 37 fails at once; item 20 (an earlier batch) fails too, but late: the
 * stream ends at 20, with everything before it delivered. */
static void test_first_failure_wins(void **state)
{
    struct ctx c = {.batch = 8, .n_slots = 6, .fail_at = {20, 37}, .slow_item = 20};
    enc_prep *p = start(&c, 60, 4);
    enc_prep_batch b;
    for (int k = 0; k < 2; k++) {
        assert_int_equal(enc_prep_next(p, &b), 1);
        check_batch(&b, k, 8, 8);
        enc_prep_release(p, &b);
    }
    assert_int_equal(enc_prep_next(p, &b), 1);
    check_batch(&b, 2, 8, 4); /* 16..19 */
    assert_int_equal(b.failed, 1);
    assert_int_equal(b.rc, UMG_EFORMAT);
    assert_string_equal(b.err, "bad item 20");
    enc_prep_release(p, &b);
    assert_int_equal(enc_prep_next(p, &b), 0);
    enc_prep_close(p);

    /* Both failures in one batch, the earlier one slower: still the earlier. */
    struct ctx c1 = {.batch = 8, .n_slots = 2, .fail_at = {17, 21}, .slow_item = 17};
    p = start(&c1, 40, 4);
    for (int k = 0; k < 2; k++) {
        assert_int_equal(enc_prep_next(p, &b), 1);
        enc_prep_release(p, &b);
    }
    assert_int_equal(enc_prep_next(p, &b), 1);
    check_batch(&b, 2, 8, 1);
    assert_string_equal(b.err, "bad item 17");
    enc_prep_close(p);

    /* A failure at a batch's first item: an empty, failed batch. */
    struct ctx c2 = {.batch = 5, .n_slots = 2, .fail_at = {10, -1}, .slow_item = -1};
    p = start(&c2, 30, 2);
    for (int k = 0; k < 2; k++) {
        assert_int_equal(enc_prep_next(p, &b), 1);
        assert_int_equal(b.failed, 0);
        enc_prep_release(p, &b);
    }
    assert_int_equal(enc_prep_next(p, &b), 1);
    assert_int_equal(b.n, 0);
    assert_int_equal(b.failed, 1);
    assert_string_equal(b.err, "bad item 10");
    assert_int_equal(enc_prep_next(p, &b), 0);
    enc_prep_close(p); /* b not released: close frees it anyway */
}

struct consumer {
    enc_prep *p;
    int batch;
    unsigned char *seen; /* per batch */
    pthread_mutex_t *mu;
};

static void *consume(void *arg)
{
    struct consumer *cs = arg;
    enc_prep_batch b;
    while (enc_prep_next(cs->p, &b)) {
        for (int i = 0; i < b.n; i++)
            if (b.pixels[i * PER] != (float)(b.first + i))
                cs->seen[b.index] = 99; /* wrong content */
        pthread_mutex_lock(cs->mu);
        cs->seen[b.index]++;
        pthread_mutex_unlock(cs->mu);
        usleep(1000);
        enc_prep_release(cs->p, &b);
    }
    return NULL;
}

/* Three consumers: every batch delivered exactly once, with its own content. */
static void test_several_consumers(void **state)
{
    struct ctx c = {.batch = 3, .n_slots = 4, .fail_at = {-1, -1}, .slow_item = 7};
    int n = 200, nb = (n + 2) / 3;
    enc_prep *p = start(&c, n, 3);
    unsigned char seen[80] = {0};
    pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
    struct consumer cs = {.p = p, .batch = 3, .seen = seen, .mu = &mu};
    pthread_t th[3];
    for (int t = 0; t < 3; t++)
        assert_int_equal(pthread_create(&th[t], NULL, consume, &cs), 0);
    for (int t = 0; t < 3; t++)
        pthread_join(th[t], NULL);
    enc_prep_close(p);
    for (int k = 0; k < nb; k++)
        if (seen[k] != 1)
            fail_msg("batch %d delivered %d times (99: wrong content)", k, seen[k]);
}

static void *wait_next(void *arg)
{
    enc_prep_batch b;
    return (void *)(intptr_t)enc_prep_next(arg, &b);
}

/* A consumer waiting in enc_prep_next returns 0 once cancelled; closing with
 * workers blocked on a full pipe (nothing released) neither hangs nor leaks. */
static void test_cancel_and_early_close(void **state)
{
    struct ctx c = {.batch = 4, .n_slots = 1, .fail_at = {-1, -1}, .slow_item = 0};
    enc_prep *p = start(&c, 1000, 2);
    enc_prep_batch b;
    assert_int_equal(enc_prep_next(p, &b), 1); /* held: the workers now wait for the slot */
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, wait_next, p), 0);
    usleep(20000);
    enc_prep_cancel(p);
    void *got;
    pthread_join(th, &got);
    assert_int_equal((intptr_t)got, 0);
    enc_prep_close(p);
    assert_true(atomic_load(&c.calls) < 1000);

    p = start(&c, 1000, 3);
    enc_prep_close(p); /* at once */

    /* no items: no batch, no thread needed */
    p = start(&c, 0, 2);
    assert_int_equal(enc_prep_next(p, &b), 0);
    enc_prep_close(p);
    enc_prep_close(NULL);
    enc_prep_cancel(NULL);
}

static void test_bad_config(void **state)
{
    struct ctx c = {.batch = 4, .n_slots = 1};
    enc_prep_config ok = {.n_items = 5, .batch = 4, .item_floats = PER, .n_slots = 2, .threads = 1,
                          .prepare = prepare, .ctx = &c};
    enc_prep_config bad[6];
    for (int i = 0; i < 6; i++)
        bad[i] = ok;
    bad[0].batch = 0;
    bad[1].n_slots = 0;
    bad[2].threads = 0;
    bad[3].prepare = NULL;
    bad[4].item_floats = 0;
    bad[5].n_items = -1;
    for (int i = 0; i < 6; i++) {
        enc_prep *p = (enc_prep *)&c;
        assert_int_equal(enc_prep_start(&bad[i], &p), UMG_EINVAL);
        assert_null(p);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_and_bound),
        cmocka_unit_test(test_first_failure_wins),
        cmocka_unit_test(test_several_consumers),
        cmocka_unit_test(test_cancel_and_early_close),
        cmocka_unit_test(test_bad_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
