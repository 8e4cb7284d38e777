/* test_base.c - the base library's one definitions besides the error table
 * (test_error.c): the UTF-8 check (umg_util.h) used by the protocol, the
 * database and the HTTP front end, and the float16 conversion (umg_half.h)
 * used by the encoder, the engine and the database's stored vectors. */
#include <math.h>
#include <stdbool.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "umg_half.h"
#include "umg_util.h"

static void test_utf8(void **state)
{
    static const struct { const char *s; size_t n; bool ok; } cases[] = {
        {"", 0, true},
        {"plain ascii", 11, true},
        {"caf\xc3\xa9", 5, true},
        {"\xe2\x82\xac", 3, true},                 /* euro sign */
        {"\xf0\x9f\x93\xb7", 4, true},             /* camera emoji */
        {"\xf4\x8f\xbf\xbf", 4, true},             /* U+10FFFF */
        {"a\0b", 3, true},
        {"\x80", 1, false},                         /* lone continuation */
        {"\xc0\x80", 2, false},                     /* overlong NUL */
        {"\xc1\xbf", 2, false},                     /* overlong */
        {"\xe0\x80\x80", 3, false},                 /* overlong 3-byte */
        {"\xf0\x80\x80\x80", 4, false},             /* overlong 4-byte */
        {"\xed\xa0\x80", 3, false},                 /* surrogate U+D800 */
        {"\xf4\x90\x80\x80", 4, false},             /* above U+10FFFF */
        {"\xf5\x80\x80\x80", 4, false},
        {"\xff", 1, false},
        {"caf\xc3", 4, false},                      /* truncated */
        {"\xe2\x82", 2, false},
        {"\xe2\x28\xa1", 3, false},                 /* bad continuation */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        if (umg_utf8_valid(cases[i].s, cases[i].n) != cases[i].ok)
            fail_msg("utf8 case %zu", i);
    }
    assert_int_equal(umg_utf8_prefix("ab\xc3\xa9\xff", 5), 4);
    /* where the valid start ends */
    assert_int_equal(umg_utf8_prefix("a\xe0\x80\x80", 4), 1);
    assert_int_equal(umg_utf8_prefix("x\xed\xa0\x80", 4), 1);
    assert_int_equal(umg_utf8_prefix("ok\xe2\x82", 4), 2);
    assert_int_equal(umg_utf8_prefix("\xc3\xa9\x80", 3), 2);
}

static uint16_t f2h(float f) { return umg_f32_to_f16(f); }

static void test_half_known_values(void **state)
{
    (void)state;
    assert_int_equal(f2h(1.0f), 0x3c00);
    assert_int_equal(f2h(-2.0f), 0xc000);
    assert_int_equal(f2h(65504.0f), 0x7bff);
    assert_int_equal(f2h(65520.0f), 0x7c00);                  /* rounds beyond the largest: infinity */
    assert_int_equal(f2h(0x1p-24f), 0x0001);                  /* the smallest subnormal */
    assert_int_equal(f2h(0x1p-25f), 0x0000);                  /* a tie: to even (zero) */
    assert_int_equal(f2h(0x3p-25f), 0x0002);                  /* a tie: to even (2) */
    assert_int_equal(f2h(1.0f + 0x1p-11f), 0x3c00);           /* a tie: to even */
    assert_int_equal(f2h(1.0f + 0x3p-11f), 0x3c02);
    assert_int_equal(f2h(-0.0f), 0x8000);
    assert_int_equal(f2h(INFINITY), 0x7c00);
    assert_int_equal(f2h(NAN) & 0x7e00, 0x7e00);              /* NaN stays a (quiet) NaN */
    assert_true(umg_f16_to_f32(0x0001) == 0x1p-24f);
    assert_true(umg_f16_to_f32(0x3555) == 0x1.554p-2f);
    assert_true(isinf(umg_f16_to_f32(0xfc00)) && umg_f16_to_f32(0xfc00) < 0);
    assert_true(isnan(umg_f16_to_f32(0x7e00)));
}

#ifdef __FLT16_MAX__
/* The database stored vectors with the compiler's _Float16 before it used
 * umg_half.h: the same bits for every finite float (so stored vectors read
 * and write as before) and every half. */
static void test_half_matches_compiler(void **state)
{
    (void)state;
    for (uint32_t i = 0; i < 65536; i++) {
        uint16_t hb = (uint16_t)i;
        _Float16 h;
        memcpy(&h, &hb, 2);
        float want = (float)h, got = umg_f16_to_f32(hb);
        if (isnan(want)) assert_true(isnan(got));
        else assert_memory_equal(&want, &got, sizeof want);
    }
    /* every 4099th float bit pattern, and the floats at and beside each
     * rounding tie of [0.5, 1) (the stored vectors' range) */
    for (uint64_t b = 0; b <= 0xffffffffu; b += 4099) {
        uint32_t u = (uint32_t)b;
        float f;
        memcpy(&f, &u, 4);
        if (!isfinite(f)) continue;
        _Float16 h = (_Float16)f;
        uint16_t want;
        memcpy(&want, &h, 2);
        assert_int_equal(umg_f32_to_f16(f), want);
    }
    for (uint32_t m = 0; m < 1024; m++) {
        for (uint32_t d = 0; d < 3; d++) {
            uint32_t v = (0x3f000000u | m << 13 | 0x1000) + d - 1;
            float f;
            memcpy(&f, &v, 4);
            _Float16 h = (_Float16)f;
            uint16_t want;
            memcpy(&want, &h, 2);
            assert_int_equal(umg_f32_to_f16(f), want);
        }
    }
}
#endif

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8),
        cmocka_unit_test(test_half_known_values),
#ifdef __FLT16_MAX__
        cmocka_unit_test(test_half_matches_compiler),
#endif
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
