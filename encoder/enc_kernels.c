/* enc_kernels.c - numeric kernels of the CLIP forward passes (see enc_kernels.h).
 *
 * Big products go to OpenBLAS.  The elementwise loops are written so that the
 * compiler vectorizes them (no calls into libm inside the loops: exp and erf are
 * polynomial, accurate to a few float ulps, which is far inside the reference
 * tolerance; the tests compare them with libm). */
#include "enc_kernels.h"

#include "enc.h"

#include <cblas.h>
#include <math.h>
#include <string.h>

/* -O2 in GCC 12 only vectorizes loops whose vector code needs no scalar epilogue;
 * these loops do, and they run over every activation. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("tree-vectorize", "vect-cost-model=dynamic")
#endif

void enc_linear_ld(float *y, int ldy, const float *x, int ldx, const float *w, int rows, int in, int out,
                   int accumulate)
{
    /* y[rows, out] = x[rows, in] . w[out, in]^T: w is B^T, read row by row. */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, out, in, 1.0f, x, ldx, w, in,
                accumulate ? 1.0f : 0.0f, y, ldy);
}

void enc_linear(float *y, const float *x, const float *w, int rows, int in, int out, int accumulate)
{
    enc_linear_ld(y, out, x, in, w, rows, in, out, accumulate);
}

void enc_add_bias(float *restrict y, const float *restrict b, int rows, int dim)
{
    for (int r = 0; r < rows; r++) {
        float *restrict yr = y + (size_t)r * dim;
        for (int i = 0; i < dim; i++)
            yr[i] += b[i];
    }
}

void enc_add_bias_scale(float *restrict y, const float *restrict b, float scale, int rows, int dim)
{
    for (int r = 0; r < rows; r++) {
        float *restrict yr = y + (size_t)r * dim;
        for (int i = 0; i < dim; i++)
            yr[i] = (yr[i] + b[i]) * scale;
    }
}

/* e^x for x in [-87.3, 88.3] (clamped): Cody-Waite reduction x = n ln2 + r,
 * |r| <= ln2/2, Cephes' degree-6 polynomial, 2^n through the exponent bits.
 * Relative error about 2e-7. */
static inline float exp_poly(float x)
{
    x = x < -87.3f ? -87.3f : x > 88.3f ? 88.3f : x; /* 2^n stays a normal float */
    /* round to nearest by the 1.5 * 2^23 trick (floorf does not vectorize) */
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* erf(x): Abramowitz & Stegun 7.1.26 refined: absolute error below 1.5e-7. */
static inline float erf_poly(float x)
{
    float a = fabsf(x);
    float t = 1.0f / (1.0f + 0.3275911f * a);
    float p = 1.061405429f;
    p = p * t - 1.453152027f;
    p = p * t + 1.421413741f;
    p = p * t - 0.284496736f;
    p = p * t + 0.254829592f;
    float e = 1.0f - p * t * exp_poly(-a * a);
    return x < 0 ? -e : e;
}

/* quick_gelu(x) = x * sigmoid(1.702 x), as OpenAI CLIP defines it. */
static inline float quick_gelu1(float x) { return x / (1.0f + exp_poly(-1.702f * x)); }
/* gelu(x) = x/2 (1 + erf(x / sqrt 2)): the exact (erf) form, torch's default. */
static inline float gelu1(float x) { return 0.5f * x * (1.0f + erf_poly(x * 0.70710678118654752f)); }

void enc_quick_gelu(float *restrict y, const float *restrict x, int n)
{
    for (int i = 0; i < n; i++)
        y[i] = quick_gelu1(x[i]);
}

void enc_gelu(float *restrict y, const float *restrict x, int n)
{
    for (int i = 0; i < n; i++)
        y[i] = gelu1(x[i]);
}

void enc_add_bias_act(float *restrict y, const float *restrict b, int act, int rows, int dim)
{
    for (int r = 0; r < rows; r++) {
        float *restrict yr = y + (size_t)r * dim;
        if (act == ENC_ACT_GELU)
            for (int i = 0; i < dim; i++)
                yr[i] = gelu1(yr[i] + b[i]);
        else
            for (int i = 0; i < dim; i++)
                yr[i] = quick_gelu1(yr[i] + b[i]);
    }
}

/* Sums with 16 independent partial sums so that the loop vectorizes without
 * -ffast-math (and rounds better than one running sum). */
#define LANES 16
static inline float sum_f(const float *restrict x, int n)
{
    float acc[LANES] = {0};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++)
            acc[j] += x[i + j];
    float s = 0;
    for (; i < n; i++)
        s += x[i];
    for (int j = 0; j < LANES; j++)
        s += acc[j];
    return s;
}

static inline float sum_sq_dev(const float *restrict x, float mean, int n)
{
    float acc[LANES] = {0};
    int i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) {
            float d = x[i + j] - mean;
            acc[j] += d * d;
        }
    float s = 0;
    for (; i < n; i++)
        s += (x[i] - mean) * (x[i] - mean);
    for (int j = 0; j < LANES; j++)
        s += acc[j];
    return s;
}

void enc_layer_norm(float *y, int ldy, const float *x, int ldx, const float *w, const float *b, float eps,
                    int rows, int dim)
{
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * ldx;
        float *yr = y + (size_t)r * ldy;
        /* Two passes (mean, then squared deviations): exact enough in float. */
        float mean = sum_f(xr, dim) / (float)dim;
        float var = sum_sq_dev(xr, mean, dim) / (float)dim;
        float inv = 1.0f / sqrtf(var + eps);
        for (int i = 0; i < dim; i++)
            yr[i] = (xr[i] - mean) * inv * w[i] + b[i];
    }
}

/* In place over s[0, n): softmax. */
static void softmax_row(float *restrict s, int n)
{
    float m = s[0];
    for (int i = 1; i < n; i++)
        m = s[i] > m ? s[i] : m;
    for (int i = 0; i < n; i++)
        s[i] = exp_poly(s[i] - m);
    float inv = 1.0f / sum_f(s, n);
    for (int i = 0; i < n; i++)
        s[i] *= inv;
}

void enc_attention(float *out, const float *q, const float *k, const float *v, float *scores, int T, int H,
                   int heads, int causal)
{
    int d = H / heads;
    for (int h = 0; h < heads; h++) {
        const float *qh = q + h * d, *kh = k + h * d, *vh = v + h * d;
        /* scores[T, T] = q_h[T, d] . k_h[T, d]^T (rows H apart) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, d, 1.0f, qh, H, kh, H, 0.0f, scores, T);
        for (int i = 0; i < T; i++) {
            float *row = scores + (size_t)i * T;
            int n = causal ? i + 1 : T;
            softmax_row(row, n);
            if (n < T)
                memset(row + n, 0, (size_t)(T - n) * sizeof *row);
        }
        /* out_h[T, d] = scores[T, T] . v_h[T, d] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, d, T, 1.0f, scores, T, vh, H, 0.0f,
                    out + h * d, H);
    }
}

static inline float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff, bits;
    if (exp == 0) {
        float f = (float)mant * 0x1p-24f; /* zero or subnormal: exact */
        memcpy(&bits, &f, sizeof bits);
        bits |= sign;
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | mant << 13;
    } else {
        bits = sign | (exp + 112) << 23 | mant << 13;
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

void enc_f16_to_f32(float *dst, const uint16_t *src, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        dst[i] = f16_to_f32(src[i]);
}

void enc_bf16_to_f32(float *dst, const uint16_t *src, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
        uint32_t bits = (uint32_t)src[i] << 16;
        memcpy(&dst[i], &bits, sizeof bits);
    }
}

uint16_t enc_f32_to_f16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t a = x & 0x7fffffffu;
    if (a >= 0x7f800000u) /* inf, nan */
        return sign | 0x7c00 | (a > 0x7f800000u ? 0x200 : 0);
    if (a >= 0x477ff000u) /* rounds beyond 65504 */
        return sign | 0x7c00;
    if (a < 0x38800000u) { /* below 2^-14: subnormal half (or zero) */
        float af;
        memcpy(&af, &a, sizeof af);
        return sign | (uint16_t)nearbyintf(af * 0x1p24f);
    }
    uint32_t h = ((a >> 23) - 112) << 10 | (a & 0x7fffff) >> 13, rest = a & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1)))
        h++;
    return sign | (uint16_t)h;
}

uint16_t enc_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)(x >> 16 | 0x40);
    return (uint16_t)((x + 0x7fffu + (x >> 16 & 1)) >> 16);
}
