/* test_kernels.c - the packed (AVX-512F) products of enc_kernels.h against a
 * plain double-precision loop, on shapes that hit every edge of the blocking:
 * 1 to 30 rows (partial row tiles of 14), inputs and outputs that are not
 * multiples of 16 or 32, inputs across the 256-wide k slices, outputs across
 * panel groups, leading dimensions wider than the matrices, accumulate on and
 * off.  On CPUs without AVX-512F the packed kernel is skipped (the fallback is
 * enc_linear_ld, covered by test_model). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "enc_kernels.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Deterministic values in [-1, 1) that are not all alike. */
static float value(uint32_t *state)
{
    *state = *state * 1664525u + 1013904223u;
    return (float)(*state >> 8) / (float)(1u << 23) - 1.0f;
}

static float *random_floats(size_t n, uint32_t seed)
{
    float *v = malloc(n * sizeof *v);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++)
        v[i] = value(&seed);
    return v;
}

static float *packed_copy(const float *w, int in, int out)
{
    float *p = aligned_alloc(64, ((enc_packed_floats(in, out) * sizeof(float) + 63) / 64) * 64);
    assert_non_null(p);
    enc_pack_weights(p, w, in, out);
    return p;
}

static uint16_t *packed_copy_h(const float *w, int in, int out)
{
    uint16_t *p = aligned_alloc(64, ((enc_packed_h_halves(in, out) * sizeof(uint16_t) + 63) / 64) * 64);
    assert_non_null(p);
    enc_pack_weights_h(p, w, in, out);
    return p;
}

/* The packing, element by element, against the layout enc_kernels.h states. */
static void test_pack_layout(void **state)
{
    (void)state;
    const int shapes[][2] = {{1, 1}, {5, 33}, {256, 32}, {257, 31}, {600, 70}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int in = shapes[s][0], out = shapes[s][1];
        float *w = random_floats((size_t)in * out, 7 + (uint32_t)s);
        float *p = packed_copy(w, in, out);
        int np = (out + ENC_PANEL - 1) / ENC_PANEL;
        assert_int_equal(enc_packed_floats(in, out), (size_t)np * ENC_PANEL * in);
        for (int k0 = 0; k0 < in; k0 += ENC_PACK_KC) {
            int kc = in - k0 < ENC_PACK_KC ? in - k0 : ENC_PACK_KC;
            for (int pn = 0; pn < np; pn++)
                for (int k = 0; k < kc; k++)
                    for (int j = 0; j < ENC_PANEL; j++) {
                        int o = pn * ENC_PANEL + j;
                        float got = p[(size_t)np * ENC_PANEL * k0 + ((size_t)pn * kc + k) * ENC_PANEL + j];
                        float want = o < out ? w[(size_t)o * in + k0 + k] : 0.0f;
                        if (got != want)
                            fail_msg("pack %dx%d: slice %d panel %d k %d j %d = %g, want %g", out, in, k0, pn, k,
                                     j, got, want);
                    }
        }
        free(w);
        free(p);
    }
}

/* y[rows, out] (ldy) (+)= x[rows, in] (ldx) . w^T through enc_linear_packed
 * (half: enc_linear_packed_h), against doubles; entries of y beyond out must stay
 * untouched.  fp32: every entry within 1e-5 of the exact sum's magnitude.  fp16
 * (approximate by design, enc_kernels.h): every entry within a loose 2% (catches
 * garbage, masks, strides), and the relative rms error of the whole output in
 * [1e-5, 4e-3] (measured ~1.7e-3 with slices of 128: below 1e-5 it did not compute
 * in half; a dropped slice, lost accumulator or wrong row is 10% and more). */
static void check_product(int rows, int in, int out, int ldx, int ldy, int accumulate, uint32_t seed, int half)
{
    float *x = random_floats((size_t)rows * ldx, seed);
    float *w = random_floats((size_t)out * in, seed + 1);
    float *y = random_floats((size_t)rows * ldy, seed + 2);
    float *y0 = malloc((size_t)rows * ldy * sizeof *y0);
    assert_non_null(y0);
    memcpy(y0, y, (size_t)rows * ldy * sizeof *y0);
    float *p = NULL;
    uint16_t *ph = NULL;
    if (half) {
        ph = packed_copy_h(w, in, out);
        enc_linear_packed_h(y, ldy, x, ldx, w, ph, rows, in, out, accumulate);
    } else {
        p = packed_copy(w, in, out);
        enc_linear_packed(y, ldy, x, ldx, w, p, rows, in, out, accumulate);
    }
    const char *what = half ? "fp16" : "packed";
    double tol = half ? 0.02 : 1e-5, err2 = 0, ref2 = 0;
    for (int r = 0; r < rows; r++) {
        for (int o = 0; o < out; o++) {
            double want = accumulate ? y0[(size_t)r * ldy + o] : 0.0, mag = fabs(want);
            for (int k = 0; k < in; k++) {
                double t = (double)x[(size_t)r * ldx + k] * w[(size_t)o * in + k];
                want += t;
                mag += fabs(t);
            }
            double got = y[(size_t)r * ldy + o];
            if (!(fabs(got - want) <= tol * (1 + mag)))
                fail_msg("%s %dx%d->%d (ldx %d, ldy %d, acc %d) [%d,%d] = %.9g, want %.9g", what, rows, in, out, ldx,
                         ldy, accumulate, r, o, got, want);
            err2 += (got - want) * (got - want);
            ref2 += want * want;
        }
        for (int o = out; o < ldy; o++)
            if (y[(size_t)r * ldy + o] != y0[(size_t)r * ldy + o])
                fail_msg("%s %dx%d->%d wrote beyond its outputs at [%d,%d]", what, rows, in, out, r, o);
    }
    double rel = sqrt(err2 / ref2);
    /* a handful of products can round exactly in half: the lower bound only for real sizes */
    if (half && (!(rel <= 4e-3) || (rows * out >= 64 && in >= 16 && !(rel >= 1e-5))))
        fail_msg("fp16 %dx%d->%d (acc %d): relative rms error %.3g (wanted in [1e-5, 4e-3])", rows, in, out,
                 accumulate, rel);
    free(x);
    free(w);
    free(y);
    free(y0);
    free(p);
    free(ph);
}

static void check_packed(int rows, int in, int out, int ldx, int ldy, int accumulate, uint32_t seed)
{
    check_product(rows, in, out, ldx, ldy, accumulate, seed, 0);
}

static void check_packed_h(int rows, int in, int out, int ldx, int ldy, int accumulate, uint32_t seed)
{
    check_product(rows, in, out, ldx, ldy, accumulate, seed, 1);
}

static int setup_packed(void **state)
{
    (void)state;
    if (!enc_packed_supported()) {
        fprintf(stderr, "test_kernels: no AVX-512F on this CPU: packed kernel not testable here\n");
        return 0;
    }
    openblas_set_num_threads(1); /* else products of more than 14 rows go to sgemm */
    return 0;
}

/* Every row count of 1..30 (full and partial tiles of 14) on odd shapes. */
static void test_packed_rows(void **state)
{
    (void)state;
    if (!enc_packed_supported())
        skip();
    /* outputs: a last panel of 1, 5, 15, 18, 31 columns (both 16-lane halves) */
    const int shapes[][2] = {{3, 1}, {17, 5}, {37, 33}, {100, 47}, {300, 65}, {40, 50}, {20, 31}};
    for (int rows = 1; rows <= 30; rows++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int acc = 0; acc < 2; acc++) {
                int in = shapes[s][0], out = shapes[s][1];
                uint32_t seed = (uint32_t)(rows * 100 + s * 2 + acc);
                check_packed(rows, in, out, in, out, acc, seed);
                check_packed(rows, in, out, in + 3, out + 5, acc, seed + 7); /* gaps must stay untouched */
            }
}

/* Inputs across several k slices, outputs across panel groups (256 KB of
 * weight slices: 8 panels of 32), wide leading dimensions, many row tiles (up
 * to 56 rows a slice of all rows is copied once, beyond that per group). */
static void test_packed_blocking(void **state)
{
    (void)state;
    if (!enc_packed_supported())
        skip();
    check_packed(3, 777, 1100, 777, 1100, 0, 1);
    check_packed(45, 513, 1061, 520, 1070, 1, 2);
    check_packed(61, 256, 64, 300, 64, 0, 3);
    check_packed(64, 1000, 31, 1000, 40, 1, 4);
    check_packed(29, 2048, 77, 2050, 77, 1, 5);
}

/* enc_packed_prefetch_after only fetches ahead: with a hint (another matrix's
 * panels, a buffer shorter than a group) every product is still exact, on
 * shapes where the hint is used (several row tiles, the last group of the
 * product) and where it is not (one row tile). */
static void test_packed_prefetch_after(void **state)
{
    (void)state;
    if (!enc_packed_supported())
        skip();
    int in = 300, out = 200;
    float *w = random_floats((size_t)in * out, 41);
    float *next = packed_copy(w, in, out);
    float tiny[16] = {0};
    enc_packed_prefetch_after(next, enc_packed_floats(in, out) * sizeof(float));
    check_packed(50, 777, 300, 777, 300, 0, 42);
    enc_packed_prefetch_after(tiny, sizeof tiny);
    check_packed(45, 513, 1061, 520, 1070, 1, 43);
    enc_packed_prefetch_after(next, 64);
    check_packed(3, 300, 70, 300, 70, 1, 44);
    check_packed(50, 256, 64, 256, 64, 0, 45); /* the hint was used up: this one runs without */
    enc_kernels_set_threads(2);
    enc_packed_prefetch_after(next, enc_packed_floats(in, out) * sizeof(float));
    check_packed(50, 768, 500, 768, 500, 1, 46); /* shared: the last chunk's thread uses it */
    enc_kernels_set_threads(1);
    enc_packed_prefetch_after(NULL, 0);
    free(w);
    free(next);
}

/* Products split over helper threads (enc_kernels_set_threads): panel ranges
 * of every size, including more threads than panels. */
static void test_packed_threads(void **state)
{
    (void)state;
    if (!enc_packed_supported())
        skip();
    for (int n = 2; n <= 3; n++) {
        enc_kernels_set_threads(n);
        check_packed(30, 300, 401, 300, 401, 0, 21);
        check_packed(50, 768, 97, 770, 99, 1, 22);
        check_packed(9, 2000, 33, 2000, 33, 1, 23); /* 2 panels, 3 threads */
        check_packed(100, 129, 1000, 129, 1000, 0, 24);
    }
    enc_kernels_set_threads(1);
}

static void *product_thread(void *arg)
{
    int seed = (int)(intptr_t)arg;
    for (int i = 0; i < 4; i++)
        check_packed(40 + seed, 333, 257, 333, 257, i & 1, (uint32_t)(seed * 10 + i));
    return NULL;
}

/* Two threads computing products at once while helpers are on: one of them
 * gets the helpers, the other computes alone; both results right. */
static void test_packed_concurrent(void **state)
{
    (void)state;
    if (!enc_packed_supported())
        skip();
    enc_kernels_set_threads(2);
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, product_thread, (void *)(intptr_t)(i + 1)), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    enc_kernels_set_threads(1);
}

/* Without panels, or with the packed path off, enc_linear_packed is enc_linear_ld;
 * so is enc_linear_packed_h without panels (or without AVX512-FP16). */
static void test_packed_fallback(void **state)
{
    (void)state;
    int rows = 7, in = 45, out = 19;
    float *x = random_floats((size_t)rows * in, 11), *w = random_floats((size_t)out * in, 12);
    float *a = calloc((size_t)rows * out, sizeof *a), *b = calloc((size_t)rows * out, sizeof *b);
    assert_non_null(a);
    assert_non_null(b);
    enc_linear_ld(a, out, x, in, w, rows, in, out, 0);
    enc_linear_packed(b, out, x, in, w, NULL, rows, in, out, 0);
    assert_memory_equal(a, b, (size_t)rows * out * sizeof *a);
    memset(b, 0, (size_t)rows * out * sizeof *b);
    enc_linear_packed_h(b, out, x, in, w, NULL, rows, in, out, 0);
    assert_memory_equal(a, b, (size_t)rows * out * sizeof *a);
    if (enc_packed_supported()) {
        float *p = packed_copy(w, in, out);
        int was = enc_kernels_force(ENC_KERNELS_NO_PACKED);
        memset(b, 0, (size_t)rows * out * sizeof *b);
        enc_linear_packed(b, out, x, in, w, p, rows, in, out, 0);
        enc_kernels_force(was);
        assert_memory_equal(a, b, (size_t)rows * out * sizeof *a);
        free(p);
    }
    free(x);
    free(w);
    free(a);
    free(b);
}

/* ---- the fp16 kernel (enc_linear_packed_h; check_product says how it is judged) ---- */
static void test_pack_layout_h(void **state)
{
    (void)state;
    int in = 300, out = 70; /* 3 slices (128, 128, 44), 2 panels (64, 6) */
    float *w = random_floats((size_t)out * in, 5);
    uint16_t *p = packed_copy_h(w, in, out);
    int np = (out + ENC_PANEL_H - 1) / ENC_PANEL_H;
    for (int k0 = 0; k0 < in; k0 += ENC_PACK_KC_H) {
        int kc = in - k0 < ENC_PACK_KC_H ? in - k0 : ENC_PACK_KC_H;
        for (int pp = 0; pp < np; pp++)
            for (int k = 0; k < kc; k++)
                for (int j = 0; j < ENC_PANEL_H; j++) {
                    int o = pp * ENC_PANEL_H + j;
                    uint16_t want = o < out ? enc_f32_to_f16(w[(size_t)o * in + k0 + k]) : 0;
                    uint16_t got = p[(size_t)np * ENC_PANEL_H * k0 + (size_t)pp * kc * ENC_PANEL_H +
                                     (size_t)k * ENC_PANEL_H + j];
                    if (got != want)
                        fail_msg("fp16 panel slice %d panel %d k %d j %d: 0x%04x, want 0x%04x", k0, pp, k, j, got,
                                 want);
                }
    }
    free(w);
    free(p);
}

static void test_half_rows(void **state)
{
    (void)state;
    if (!enc_packed_h_supported())
        skip();
    /* outputs: a last panel of 1, 5, 33, 47, 1, 50, 31 columns (all four 16-lane quarters) */
    const int shapes[][2] = {{3, 1}, {17, 5}, {37, 33}, {100, 111}, {300, 65}, {40, 50}, {129, 31}};
    for (int rows = 1; rows <= 30; rows++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++)
            for (int acc = 0; acc < 2; acc++) {
                int in = shapes[s][0], out = shapes[s][1];
                uint32_t seed = (uint32_t)(rows * 100 + s * 2 + acc);
                check_packed_h(rows, in, out, in, out, acc, seed);
                check_packed_h(rows, in, out, in + 3, out + 5, acc, seed + 7);
            }
}

static void test_half_blocking_threads(void **state)
{
    (void)state;
    if (!enc_packed_h_supported())
        skip();
    check_packed_h(3, 777, 1100, 777, 1100, 0, 1);
    check_packed_h(45, 513, 1061, 520, 1070, 1, 2);
    check_packed_h(29, 2048, 77, 2050, 77, 1, 5);
    for (int n = 2; n <= 3; n++) {
        enc_kernels_set_threads(n);
        check_packed_h(30, 300, 401, 300, 401, 0, 21);
        check_packed_h(50, 768, 97, 770, 99, 1, 22);
        check_packed_h(9, 2000, 65, 2000, 65, 1, 23); /* 2 panels, 3 threads */
        check_packed_h(100, 129, 1000, 129, 1000, 0, 24);
    }
    enc_kernels_set_threads(1);
}

/* ---- int8 and bf16 (enc_kernels_q.c) ----------------------------------------
 * The int8 product is specified exactly (enc_kernels.h): per-output-channel and
 * per-row symmetric scales, rint(v * 127 / max), an integer sum, then
 * float(sum) * (s_o * s_r) (+ y).  q8_reference computes that from the float
 * inputs with its own quantization and a 64-bit sum, sharing nothing with the
 * kernels; every ISA this CPU has (capped with enc_cpu_limit) must give its bits. */
static void q8_quantize_ref(int32_t *q, float *scale, const float *v, int n)
{
    float amax = 0;
    for (int k = 0; k < n; k++)
        amax = fmaxf(amax, fabsf(v[k]));
    float inv = amax > 0 ? 127.0f / amax : 0.0f;
    for (int k = 0; k < n; k++) {
        float t = rintf(v[k] * inv);
        q[k] = t > 127 ? 127 : t < -127 ? -127 : (int32_t)t;
    }
    *scale = amax / 127.0f;
}

static void q8_reference(float *y, int ldy, const float *x, int ldx, const float *w, int rows, int in, int out,
                         int accumulate)
{
    int32_t *qw = malloc((size_t)out * in * sizeof *qw), *qx = malloc((size_t)in * sizeof *qx);
    float *sw = malloc((size_t)out * sizeof *sw);
    assert_true(qw && qx && sw);
    for (int o = 0; o < out; o++)
        q8_quantize_ref(qw + (size_t)o * in, &sw[o], w + (size_t)o * in, in);
    for (int r = 0; r < rows; r++) {
        float sx;
        q8_quantize_ref(qx, &sx, x + (size_t)r * ldx, in);
        for (int o = 0; o < out; o++) {
            int64_t sum = 0;
            for (int k = 0; k < in; k++)
                sum += (int64_t)qx[k] * qw[(size_t)o * in + k];
            assert_true(sum >= INT32_MIN && sum <= INT32_MAX);
            volatile float t = (float)sum * (sw[o] * sx); /* volatile: no fused multiply-add */
            float *yo = y + (size_t)r * ldy + o;
            *yo = accumulate ? *yo + t : t;
        }
    }
    free(qw);
    free(qx);
    free(sw);
}

/* The ISA levels to compare: everything, then capped down to plain C. */
static const unsigned q_limits[] = {~0u, ~(unsigned)(ENC_CPU_AMX_INT8 | ENC_CPU_AMX_BF16),
                                    ENC_CPU_AVX2 | ENC_CPU_AVX512 | ENC_CPU_AVX_VNNI,
                                    ENC_CPU_AVX2 | ENC_CPU_AVX512, ENC_CPU_AVX2 | ENC_CPU_AVX_VNNI, ENC_CPU_AVX2,
                                    ENC_CPU_NEON | ENC_CPU_NEON_DOTPROD, ENC_CPU_NEON, 0};
#define N_LIMITS (sizeof q_limits / sizeof *q_limits)

/* y (+)= x . w^T through enc_linear_q8 with the features capped at limit. */
static void run_q8(float *y, int ldy, const float *x, int ldx, const void *packed, int rows, int in, int out,
                   int accumulate, unsigned limit)
{
    void *scratch = aligned_alloc(64, enc_q_scratch_bytes(rows, in));
    assert_non_null(scratch);
    unsigned prev = enc_cpu_limit(limit);
    enc_linear_q8(y, ldy, x, ldx, packed, rows, in, out, accumulate, scratch);
    enc_cpu_limit(prev);
    free(scratch);
}

static void *packed_q8(const float *w, int in, int out)
{
    void *p = aligned_alloc(64, enc_q8_bytes(in, out));
    assert_non_null(p);
    enc_pack_weights_q8(p, w, in, out);
    return p;
}

/* Every ISA against the reference, bit for bit; entries beyond out untouched. */
static void check_q8_exact(int rows, int in, int out, int ldx, int ldy, int accumulate, const float *x,
                           const float *w)
{
    size_t ny = (size_t)rows * ldy;
    float *y0 = random_floats(ny, 77), *want = malloc(ny * sizeof *want), *got = malloc(ny * sizeof *got);
    assert_true(want && got);
    memcpy(want, y0, ny * sizeof *want);
    q8_reference(want, ldy, x, ldx, w, rows, in, out, accumulate);
    void *p = packed_q8(w, in, out);
    for (size_t l = 0; l < N_LIMITS; l++) {
        memcpy(got, y0, ny * sizeof *got);
        run_q8(got, ldy, x, ldx, p, rows, in, out, accumulate, q_limits[l]);
        for (size_t i = 0; i < ny; i++)
            if (memcmp(&got[i], &want[i], sizeof(float)))
                fail_msg("int8 %dx%d->%d (acc %d) with %s (kernel %s): [%zu,%zu] = %.9g, reference %.9g", rows, in,
                         out, accumulate, enc_cpu_describe(enc_cpu_features() & q_limits[l]),
                         (enc_cpu_limit(q_limits[l]), enc_q8_kernel_name()), i / ldy, i % ldy, got[i], want[i]);
        enc_cpu_limit(~0u);
    }
    free(p);
    free(y0);
    free(want);
    free(got);
}

static void test_q8_exact(void **state)
{
    (void)state;
    /* rows: partial and whole tiles of 14, and every row count of the AVX-VNNI
     * kernel's 7-row blocks (1-7: 1, 2, 3, 4, 12 = 7 + 5, 20 = 14 + 6, 14, 45 =
     * 42 + 3); in: not a multiple of 4 or 8, one, wide; out: partial panels of
     * 32, of their 16-output halves and of the 8-lane quarters */
    const int shapes[][3] = {{1, 1, 1},    {1, 5, 33},     {3, 33, 7},    {14, 64, 32},  {15, 257, 70},
                             {29, 768, 65}, {30, 100, 41}, {2, 3072, 96}, {45, 130, 18}, {4, 12, 20},
                             {12, 520, 47}, {20, 68, 61}};
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        int rows = shapes[i][0], in = shapes[i][1], out = shapes[i][2];
        float *x = random_floats((size_t)rows * (in + 3), 100 + (uint32_t)i);
        float *w = random_floats((size_t)out * in, 200 + (uint32_t)i);
        for (int acc = 0; acc < 2; acc++)
            check_q8_exact(rows, in, out, in + 3, out + 5, acc, x, w);
        free(x);
        free(w);
    }
}

/* Inputs at the ends of the range: every quantized value +-127 with signs that
 * make each pair of products 2 * 127 * 127 = 32258 (the AVX2 path's int16
 * pairs: 2 * 255 * 127 would saturate vpmaddubsw were a offset to u8 there),
 * zero rows (scale 0) and one huge entry among small ones. */
static void test_q8_extremes(void **state)
{
    (void)state;
    int rows = 5, in = 64, out = 40;
    float *x = calloc((size_t)rows * in, sizeof *x), *w = calloc((size_t)out * in, sizeof *w);
    assert_true(x && w);
    for (int k = 0; k < in; k++) {
        x[k] = 1.0f;                                 /* all +127 */
        x[in + k] = (k % 3) ? -2.0f : 2.0f;          /* mixed signs, all +-127 */
        /* row 2 all zero */
        x[3 * in + k] = k == 7 ? 1e6f : 1e-3f;       /* one outlier: the rest round to 0 */
        x[4 * in + k] = -3.0f;                       /* all -127 */
    }
    for (int o = 0; o < out; o++)
        for (int k = 0; k < in; k++)
            w[(size_t)o * in + k] = o == 0 ? 0.0f : (o % 2 ? 1.0f : ((k + o) % 3 ? 0.5f : -0.5f));
    check_q8_exact(rows, in, out, in, out, 0, x, w);
    /* the all-127 rows times the all-127 weights: 127^2 * in, exactly */
    float *y = calloc((size_t)rows * out, sizeof *y);
    assert_non_null(y);
    void *p = packed_q8(w, in, out);
    run_q8(y, out, x, in, p, rows, in, out, 0, ~0u);
    assert_true(y[1] == 1.0f * in);   /* scales 1/127 each: 127^2 * in / 127^2 */
    assert_true(y[4 * out + 1] == -3.0f * in);
    for (int o = 0; o < out; o++)
        assert_true(y[2 * out + o] == 0.0f && y[(size_t)o * 0] == y[0] && y[0] == 0.0f);
    free(p);
    free(x);
    free(w);
    free(y);
}

/* Against doubles: the quantization error only.  Uniform data, relative rms
 * error below 2% (measured ~0.7% at in = 768: each value is off by up to half
 * a step of 1/127 of the row's max) and above 1e-4 (it did quantize). */
static void test_q8_accuracy(void **state)
{
    (void)state;
    int rows = 20, in = 768, out = 96;
    float *x = random_floats((size_t)rows * in, 5), *w = random_floats((size_t)out * in, 6);
    float *y = calloc((size_t)rows * out, sizeof *y);
    assert_non_null(y);
    void *p = packed_q8(w, in, out);
    run_q8(y, out, x, in, p, rows, in, out, 0, ~0u);
    double err2 = 0, ref2 = 0;
    for (int r = 0; r < rows; r++)
        for (int o = 0; o < out; o++) {
            double want = 0;
            for (int k = 0; k < in; k++)
                want += (double)x[(size_t)r * in + k] * w[(size_t)o * in + k];
            err2 += (y[r * out + o] - want) * (y[r * out + o] - want);
            ref2 += want * want;
        }
    double rel = sqrt(err2 / ref2);
    if (!(rel < 0.02 && rel > 1e-4))
        fail_msg("int8 relative rms error %.3g (wanted in [1e-4, 0.02])", rel);
    free(p);
    free(x);
    free(w);
    free(y);
}

/* Shared over helper threads: the same bits as on one thread. */
static void test_q8_threads(void **state)
{
    (void)state;
    int rows = 40, in = 512, out = 300;
    float *x = random_floats((size_t)rows * in, 8), *w = random_floats((size_t)out * in, 9);
    float *y1 = calloc((size_t)rows * out, sizeof *y1), *y2 = calloc((size_t)rows * out, sizeof *y2);
    assert_true(y1 && y2);
    void *p = packed_q8(w, in, out);
    run_q8(y1, out, x, in, p, rows, in, out, 0, ~0u);
    enc_kernels_set_threads(3);
    run_q8(y2, out, x, in, p, rows, in, out, 0, ~0u);
    enc_kernels_set_threads(1);
    assert_memory_equal(y1, y2, (size_t)rows * out * sizeof *y1);
    free(p);
    free(x);
    free(w);
    free(y1);
    free(y2);
}

/* bf16: against doubles (8-bit mantissas: relative rms error in [1e-4, 1e-2],
 * measured ~3e-3) and, where AVX512-BF16 runs, against the plain-C path on the
 * same bf16 values (only the order of the fp32 sums differs: 1e-5). */
static void test_bf16_products(void **state)
{
    (void)state;
    const int shapes[][3] = {{1, 5, 33}, {14, 64, 32}, {17, 257, 70}, {3, 768, 100}, {40, 96, 65}};
    for (size_t i = 0; i < sizeof shapes / sizeof *shapes; i++) {
        int rows = shapes[i][0], in = shapes[i][1], out = shapes[i][2], ldy = out + 3;
        float *x = random_floats((size_t)rows * in, 300 + (uint32_t)i), *w = random_floats((size_t)out * in, 400);
        void *p = aligned_alloc(64, enc_bf16_bytes(in, out)), *scratch = aligned_alloc(64, enc_q_scratch_bytes(rows, in));
        assert_true(p && scratch);
        enc_pack_weights_bf16(p, w, in, out);
        for (int acc = 0; acc < 2; acc++) {
            float *y0 = random_floats((size_t)rows * ldy, 9), *yv = malloc((size_t)rows * ldy * sizeof(float)),
                  *yc = malloc((size_t)rows * ldy * sizeof(float));
            assert_true(yv && yc);
            memcpy(yv, y0, (size_t)rows * ldy * sizeof(float));
            memcpy(yc, y0, (size_t)rows * ldy * sizeof(float));
            /* AMX where it is and the input a multiple of 32, else AVX512-BF16 (odd
             * accumulate passes force the latter) */
            unsigned prev = enc_cpu_limit(acc ? ~(unsigned)ENC_CPU_AMX_BF16 : ~0u);
            enc_linear_bf16(yv, ldy, x, in, p, rows, in, out, acc, scratch);
            enc_cpu_limit(0);
            enc_linear_bf16(yc, ldy, x, in, p, rows, in, out, acc, scratch);
            enc_cpu_limit(prev);
            double err2 = 0, ref2 = 0;
            for (int r = 0; r < rows; r++) {
                for (int o = 0; o < out; o++) {
                    double want = acc ? y0[r * ldy + o] : 0, mag = fabs(want);
                    for (int k = 0; k < in; k++) {
                        want += (double)x[(size_t)r * in + k] * w[(size_t)o * in + k];
                        mag += fabs((double)x[(size_t)r * in + k] * w[(size_t)o * in + k]);
                    }
                    double v = yv[r * ldy + o], c = yc[r * ldy + o];
                    if (!(fabs(v - c) <= 1e-5 * (1 + mag)))
                        fail_msg("bf16 %dx%d->%d [%d,%d]: kernel %.9g, plain C %.9g", rows, in, out, r, o, v, c);
                    err2 += (v - want) * (v - want);
                    ref2 += want * want;
                }
                for (int o = out; o < ldy; o++)
                    assert_true(yv[r * ldy + o] == y0[r * ldy + o] && yc[r * ldy + o] == y0[r * ldy + o]);
            }
            double rel = sqrt(err2 / ref2);
            if (!(rel < 1e-2 && (in < 16 || acc || rel > 1e-4)))
                fail_msg("bf16 %dx%d->%d (acc %d): relative rms error %.3g", rows, in, out, acc, rel);
            free(y0);
            free(yv);
            free(yc);
        }
        free(p);
        free(scratch);
        free(x);
        free(w);
    }
    if (!enc_bf16_supported())
        fprintf(stderr, "test_kernels: no AVX512-BF16 here: bf16 checked on the plain-C path only\n");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pack_layout),
        cmocka_unit_test(test_packed_rows),
        cmocka_unit_test(test_packed_blocking),
        cmocka_unit_test(test_packed_prefetch_after),
        cmocka_unit_test(test_packed_threads),
        cmocka_unit_test(test_packed_concurrent),
        cmocka_unit_test(test_packed_fallback),
        cmocka_unit_test(test_pack_layout_h),
        cmocka_unit_test(test_half_rows),
        cmocka_unit_test(test_half_blocking_threads),
        cmocka_unit_test(test_q8_exact),
        cmocka_unit_test(test_q8_extremes),
        cmocka_unit_test(test_q8_accuracy),
        cmocka_unit_test(test_q8_threads),
        cmocka_unit_test(test_bf16_products),
    };
    return cmocka_run_group_tests(tests, setup_packed, NULL);
}
