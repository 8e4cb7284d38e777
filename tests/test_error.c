/* test_error.c - the error table: codes, names, detail messages, errno mapping. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "umg_error.h"

static void test_names_are_unique_and_stable(void **state)
{
    static const int codes[] = {
#define X(name, value, wire, desc) name,
        UMG_ERROR_TABLE(X)
#undef X
    };
    size_t n = sizeof codes / sizeof codes[0];
    for (size_t i = 0; i < n; i++) {
        assert_true(codes[i] <= 0);
        for (size_t j = i + 1; j < n; j++) {
            assert_int_not_equal(codes[i], codes[j]);
            assert_string_not_equal(umg_error_name(codes[i]), umg_error_name(codes[j]));
        }
    }
    assert_string_equal(umg_error_name(UMG_EINVAL), "invalid_argument");
    assert_string_equal(umg_error_name(UMG_EMODEL), "model_mismatch");
    assert_string_equal(umg_strerror(UMG_ENOENT), "not found");
    assert_string_equal(umg_strerror(12345), "unknown error");
    assert_string_equal(umg_error_name(12345), "internal");
}

static void test_detail_message(void **state)
{
    umg_err_clear();
    assert_string_equal(umg_err_msg(), "");
    int rc = umg_err_set(UMG_EFORMAT, "tensor %s missing", "x.weight");
    assert_int_equal(rc, UMG_EFORMAT);
    assert_string_equal(umg_err_msg(), "tensor x.weight missing");
    char big[2000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = 0;
    umg_err_set(UMG_EINVAL, "%s", big);
    assert_true(strlen(umg_err_msg()) < 512);
}

static void test_errno_mapping(void **state)
{
    assert_int_equal(umg_err_from_errno(0), UMG_OK);
    assert_int_equal(umg_err_from_errno(ENOENT), UMG_ENOENT);
    assert_int_equal(umg_err_from_errno(ENOSPC), UMG_ENOSPC);
    assert_int_equal(umg_err_from_errno(EROFS), UMG_EPERM);
    assert_int_equal(umg_err_from_errno(EIO), UMG_EIO);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_are_unique_and_stable),
        cmocka_unit_test(test_detail_message),
        cmocka_unit_test(test_errno_mapping),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
