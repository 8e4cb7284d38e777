/* enc_kernels_q.c - the int8 and bf16 products (see enc_kernels.h).
 *
 * One packed weight layout per kind serves every ISA; each ISA has its own
 * micro-kernel, compiled for it by a target attribute and chosen per call from
 * enc_cpu_features().  This file is built with -ffp-contract=off: the int8
 * epilogue (float(sum) * (s_o * s_r), then + y) must round the same way in the
 * vector kernels and in the plain-C path, so that every ISA gives the same bits.
 *
 * Loop order of a product: blocks of row tiles whose converted activations stay
 * in L2 (Q_BLOCK_BYTES); in each, the output panels of the caller's range; in
 * each, the row tiles of the block.  A panel (32 outputs x in) stays in L1/L2
 * while the block's tiles pass it. */
#include "enc_kernels.h"

#include <math.h>
#include <string.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define Q_X86 1
#endif
#if defined(__aarch64__) && defined(__GNUC__)
#include <arm_neon.h>
#define Q_ARM 1
#endif

#define QP ENC_PANEL_Q
#define QT ENC_TILE_Q
#define Q_BLOCK_BYTES (512 << 10)

static size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }
static int q8_kp(int in) { return (int)round_up((size_t)in, 4); }
static int bf_kp(int in) { return (int)round_up((size_t)in, 2); }
static int n_panels(int out) { return (out + QP - 1) / QP; }

/* ---- dispatch ------------------------------------------------------------- */

enum q8_isa { Q8_C, Q8_AVX2, Q8_AVX_VNNI, Q8_AVX512_VNNI, Q8_NEON, Q8_NEON_DOT, Q8_AMX };

/* AMX takes products whose input is a multiple of AMX_K8 (every CLIP layer);
 * others go to the best vector kernel. */
#define AMX_K8 64
#define AMX_K16 32
static int q8_isa_for(int in)
{
    unsigned f = enc_cpu_features();
    if ((f & ENC_CPU_AMX_INT8) && in % AMX_K8 == 0)
        return Q8_AMX;
    if (f & ENC_CPU_AVX512_VNNI)
        return Q8_AVX512_VNNI;
    if (f & ENC_CPU_AVX_VNNI)
        return Q8_AVX_VNNI;
    if (f & ENC_CPU_AVX2)
        return Q8_AVX2;
    if (f & ENC_CPU_NEON_DOTPROD)
        return Q8_NEON_DOT;
    if (f & ENC_CPU_NEON)
        return Q8_NEON;
    return Q8_C;
}

static int q8_isa(void) { return q8_isa_for(1); }

int enc_q8_fast(void) { return q8_isa() != Q8_C; }
int enc_bf16_supported(void) { return (enc_cpu_features() & ENC_CPU_AVX512_BF16) != 0; }

const char *enc_q8_kernel_name(void)
{
    static const char *const names[] = {"c", "avx2", "avx-vnni", "avx512-vnni", "neon", "neon-dotprod"};
    if (enc_cpu_features() & ENC_CPU_AMX_INT8)
        return "amx-int8 (avx512-vnni where the input is not a multiple of 64)";
    return names[q8_isa()];
}

/* ---- packing -------------------------------------------------------------- */

size_t enc_q8_bytes(int in, int out)
{
    size_t no = (size_t)n_panels(out) * QP;
    return round_up(no * (size_t)q8_kp(in) + no * (sizeof(float) + sizeof(int32_t)), 64);
}

size_t enc_bf16_bytes(int in, int out)
{
    return round_up((size_t)n_panels(out) * QP * (size_t)bf_kp(in) * sizeof(uint16_t), 64);
}

/* The three parts of an int8 copy. */
typedef struct q8_parts {
    int8_t *q;      /* [np][kp / 4][32][4] */
    float *scale;   /* [np * 32] */
    int32_t *sum;   /* [np * 32] */
} q8_parts;

static q8_parts q8_split(const void *packed, int in, int out)
{
    size_t no = (size_t)n_panels(out) * QP, qbytes = no * (size_t)q8_kp(in);
    char *p = (char *)packed;
    return (q8_parts){(int8_t *)p, (float *)(p + qbytes), (int32_t *)(p + qbytes + no * sizeof(float))};
}

void enc_pack_weights_q8(void *packed, const float *w, int in, int out)
{
    int kp = q8_kp(in), np = n_panels(out);
    q8_parts d = q8_split(packed, in, out);
    memset(packed, 0, enc_q8_bytes(in, out));
    for (int o = 0; o < out; o++) {
        const float *wo = w + (size_t)o * in;
        float amax = 0;
        for (int k = 0; k < in; k++)
            amax = fabsf(wo[k]) > amax ? fabsf(wo[k]) : amax;
        float inv = amax > 0 ? 127.0f / amax : 0.0f;
        int8_t *panel = d.q + (size_t)(o / QP) * QP * kp;
        int j = o % QP;
        int32_t sum = 0;
        for (int k = 0; k < in; k++) {
            float t = rintf(wo[k] * inv);
            int v = t > 127 ? 127 : t < -127 ? -127 : (int)t;
            panel[(size_t)(k / 4) * QP * 4 + j * 4 + k % 4] = (int8_t)v;
            sum += v;
        }
        d.scale[o] = amax / 127.0f;
        d.sum[o] = sum;
    }
    (void)np;
}

void enc_pack_weights_bf16(void *packed, const float *w, int in, int out)
{
    int kp = bf_kp(in);
    uint16_t *h = packed;
    memset(packed, 0, enc_bf16_bytes(in, out));
    for (int o = 0; o < out; o++) {
        uint16_t *panel = h + (size_t)(o / QP) * QP * kp;
        for (int k = 0; k < in; k++)
            panel[(size_t)(k / 2) * QP * 2 + (o % QP) * 2 + k % 2] = enc_f32_to_bf16(w[(size_t)o * in + k]);
    }
}

/* ---- the activations ---------------------------------------------------------
 * Scratch: the converted rows, for the AVX2 kernel their absolute values
 * after them (q8_abs_offset), then the rows' int8 scales.  Two layouts:
 *   tiled (the AVX kernels): tile by tile, tile t's bytes [kp / g][QT][g]
 *     elements (g = 4 int8 or 2 bf16 per 32-bit group), so the kernel broadcasts
 *     row m's group at a fixed offset 4 m from one pointer;
 *   row-major (AMX): rows of kp elements, padded with zero rows to a multiple of
 *     AMX_M rows (a tile load reads whole 16-row blocks). */
#define AMX_M 32
static size_t q_padded_rows(int rows)
{
    size_t t = round_up((size_t)rows, QT), m = round_up((size_t)rows, AMX_M);
    return t > m ? t : m;
}

/* Where |a| starts (the AVX2 kernel's copy of the int8 values). */
static size_t q8_abs_offset(int rows, int in) { return round_up(q_padded_rows(rows) * (size_t)q8_kp(in), 64); }

size_t enc_q_scratch_bytes(int rows, int in)
{
    size_t q8 = 2 * q8_abs_offset(rows, in), bf = q_padded_rows(rows) * (size_t)bf_kp(in) * 2;
    return round_up((q8 > bf ? q8 : bf), 64) + round_up((size_t)rows * sizeof(float), 64) + 64;
}

static size_t tile_bytes(int kp_bytes) { return (size_t)QT * (size_t)kp_bytes; }

/* The rows' int8 scales, after the values (as enc_q_scratch_bytes counts). */
static float *q_scales(void *scratch, int rows, int in)
{
    return (float *)((char *)scratch + enc_q_scratch_bytes(rows, in) - 64 - round_up((size_t)rows * sizeof(float), 64));
}

/* Row r's first group in a layout of row_bytes per row; *step: bytes from one
 * 32-bit group of the row to the next. */
static uint8_t *q_row(void *base, int rowmajor, int row_bytes, int r, size_t *step)
{
    if (rowmajor) {
        *step = 4;
        return (uint8_t *)base + (size_t)r * row_bytes;
    }
    *step = QT * 4;
    return (uint8_t *)base + (size_t)(r / QT) * tile_bytes(row_bytes) + (size_t)(r % QT) * 4;
}

/* Row-major: zero the rows from rows up to the next multiple of AMX_M. */
static void q_pad_rows(void *base, int rowmajor, int row_bytes, int rows)
{
    if (rowmajor)
        memset((uint8_t *)base + (size_t)rows * row_bytes, 0, (round_up((size_t)rows, AMX_M) - rows) * row_bytes);
}

/* max(amax, |x[k]|) over k in [k0, in). */
static float q8_amax(const float *xr, int k0, int in, float amax)
{
    for (int k = k0; k < in; k++)
        amax = fabsf(xr[k]) > amax ? fabsf(xr[k]) : amax;
    return amax;
}

/* Values [k0, kp) of one row into its groups (step bytes apart): rint(x * inv)
 * clamped to [-127, 127], zeros from in on; ^ xor. */
static void q8_put(uint8_t *t, size_t step, const float *xr, int k0, int in, int kp, float inv, uint8_t xor)
{
    for (int k = k0; k < kp; k++) {
        float v = k < in ? rintf(xr[k] * inv) : 0.0f;
        int8_t q = (int8_t)(v > 127 ? 127 : v < -127 ? -127 : (int)v);
        t[(size_t)(k / 4) * step + k % 4] = (uint8_t)q ^ xor;
    }
}

/* Row r from its max: scale[r], *inv = 127 / max (0 for a zero row), and its
 * first group (q_row). */
static uint8_t *q8_row_begin(uint8_t *tiles, int rowmajor, int kp, int r, float amax, float *scale, float *inv,
                             size_t *step)
{
    *inv = amax > 0 ? 127.0f / amax : 0.0f;
    scale[r] = amax / 127.0f;
    return q_row(tiles, rowmajor, kp, r, step);
}

/* Per row: the scale and the rounded values, the same on every ISA (max is
 * exact in any order; the product x * inv and round-to-nearest-even too);
 * xor: 0x80 for the u8 form (a + 128). */
static void q8_quantize_c(uint8_t *tiles, float *scale, const float *x, int ldx, int rows, int in, uint8_t xor,
                          int rowmajor)
{
    int kp = q8_kp(in);
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * ldx;
        float inv;
        size_t step;
        uint8_t *t = q8_row_begin(tiles, rowmajor, kp, r, q8_amax(xr, 0, in, 0.0f), scale, &inv, &step);
        q8_put(t, step, xr, 0, in, kp, inv, xor);
    }
}

#ifdef Q_X86
#define Q512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
/* q8_quantize_c with 16 lanes: the same max, products and rounding (vcvtps2dq
 * rounds to nearest even under the default MXCSR, as rintf does). */
static Q512 void q8_quantize_512(uint8_t *tiles, float *scale, const float *x, int ldx, int rows, int in,
                                 uint8_t xor, int rowmajor)
{
    int kp = q8_kp(in);
    const __m512 absmask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * ldx;
        __m512 mx = _mm512_setzero_ps();
        for (int k = 0; k < in; k += 16) {
            __mmask16 mk = in - k >= 16 ? 0xffff : (__mmask16)((1u << (in - k)) - 1);
            mx = _mm512_max_ps(mx, _mm512_and_ps(_mm512_maskz_loadu_ps(mk, xr + k), absmask));
        }
        float inv;
        size_t step;
        uint8_t *t = q8_row_begin(tiles, rowmajor, kp, r, _mm512_reduce_max_ps(mx), scale, &inv, &step);
        __m512 vinv = _mm512_set1_ps(inv);
        for (int k = 0; k < kp; k += 16) { /* 16 values = 4 groups of 4 */
            __mmask16 mk = in - k >= 16 ? 0xffff : in - k <= 0 ? 0 : (__mmask16)((1u << (in - k)) - 1);
            __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, xr + k), vinv));
            v = _mm512_max_epi32(_mm512_min_epi32(v, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
            __m128i b = _mm_xor_si128(_mm512_cvtepi32_epi8(v), _mm_set1_epi8((char)xor));
            int groups = (kp - k) / 4 < 4 ? (kp - k) / 4 : 4;
            for (int g = 0; g < groups; g++) {
                uint32_t word = (uint32_t)_mm_extract_epi32(b, 0);
                memcpy(t + (size_t)(k / 4 + g) * step, &word, 4);
                b = _mm_srli_si128(b, 4);
            }
        }
    }
}

#define QAVX2 __attribute__((target("avx2,fma")))
/* q8_quantize_c with 8 lanes (the AVX2 and AVX-VNNI CPUs): the same max,
 * products and rounding; the last in % 8 values as q8_quantize_c. */
static QAVX2 void q8_quantize_256(uint8_t *tiles, float *scale, const float *x, int ldx, int rows, int in,
                                  uint8_t xor, int rowmajor)
{
    int kp = q8_kp(in), k8 = in / 8 * 8;
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i hi = _mm256_set1_epi32(127), lo = _mm256_set1_epi32(-127);
    const uint32_t flip = xor * 0x01010101u;
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * ldx;
        __m256 mx = _mm256_setzero_ps();
        for (int k = 0; k < k8; k += 8)
            mx = _mm256_max_ps(mx, _mm256_and_ps(_mm256_loadu_ps(xr + k), absmask));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
        float inv;
        size_t step;
        uint8_t *t = q8_row_begin(tiles, rowmajor, kp, r, q8_amax(xr, k8, in, _mm_cvtss_f32(m4)), scale, &inv, &step);
        __m256 vinv = _mm256_set1_ps(inv);
        for (int k = 0; k < k8; k += 8) { /* 8 values = 2 groups of 4 */
            __m256i v = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xr + k), vinv));
            v = _mm256_max_epi32(_mm256_min_epi32(v, hi), lo);
            /* in [-127, 127]: the saturating packs keep the values; bytes 0-3 of each half */
            __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(v, v), _mm256_setzero_si256());
            uint32_t w0 = (uint32_t)_mm256_cvtsi256_si32(b) ^ flip;
            uint32_t w1 = (uint32_t)_mm_cvtsi128_si32(_mm256_extracti128_si256(b, 1)) ^ flip;
            memcpy(t + (size_t)(k / 4) * step, &w0, 4);
            memcpy(t + (size_t)(k / 4 + 1) * step, &w1, 4);
        }
        q8_put(t, step, xr, k8, in, kp, inv, xor);
    }
}
#endif

static void q8_quantize(uint8_t *tiles, float *scale, const float *x, int ldx, int rows, int in, uint8_t xor,
                        int rowmajor)
{
    q_pad_rows(tiles, rowmajor, q8_kp(in), rows);
#ifdef Q_X86
    if (enc_cpu_features() & ENC_CPU_AVX512) {
        q8_quantize_512(tiles, scale, x, ldx, rows, in, xor, rowmajor);
        return;
    }
    if (enc_cpu_features() & ENC_CPU_AVX2) {
        q8_quantize_256(tiles, scale, x, ldx, rows, in, xor, rowmajor);
        return;
    }
#endif
    q8_quantize_c(tiles, scale, x, ldx, rows, in, xor, rowmajor);
}

/* ---- int8 micro-kernels ----------------------------------------------------
 * Each: rows [0, mr) of one tile (a: its scratch, groups of 4 bytes per row,
 * QT * 4 bytes per k group) x one panel (b: 32 outputs, 128 bytes per k group)
 * over kg groups, then the epilogue y = float(sum) * (s_o * s_r) (+ y). */
typedef struct q_job {
    float *y;
    int ldy, rows, in, out, kp, accumulate;
    const uint8_t *a;   /* scratch tiles */
    const float *sa;    /* row scales (int8) */
    const void *w;      /* packed weights */
    size_t abs_off;     /* AVX2: bytes from a to |a| (q8_abs_offset) */
} q_job;

/* The common epilogue, one row, 32 outputs (C path and reference of the others). */
static void q8_store_c(float *y, const int32_t acc[QP], int cols, const float *sw, float sr, int accumulate)
{
    for (int j = 0; j < cols; j++) {
        float t = (float)acc[j] * (sw[j] * sr);
        y[j] = accumulate ? y[j] + t : t;
    }
}

static void q8_range_c(const void *ctx, int p0, int p1)
{
    const q_job *j = ctx;
    q8_parts d = q8_split(j->w, j->in, j->out);
    int kg = j->kp / 4;
    for (int p = p0; p < p1; p++) {
        const int8_t *b = d.q + (size_t)p * QP * j->kp;
        int cols = j->out - p * QP < QP ? j->out - p * QP : QP;
        for (int r = 0; r < j->rows; r++) {
            const int8_t *a = (const int8_t *)j->a + (size_t)(r / QT) * tile_bytes(j->kp) + (size_t)(r % QT) * 4;
            int32_t acc[QP] = {0};
            for (int g = 0; g < kg; g++)
                for (int c = 0; c < QP; c++)
                    for (int i = 0; i < 4; i++)
                        acc[c] += (int32_t)a[(size_t)g * QT * 4 + i] * b[(size_t)g * QP * 4 + c * 4 + i];
            q8_store_c(j->y + (size_t)r * j->ldy + p * QP, acc, cols, d.scale + p * QP, j->sa[r], j->accumulate);
        }
    }
}

/* Tiles per row block: as many as fit Q_BLOCK_BYTES, at least one. */
static int q_tiles_per_block(size_t tile_bytes)
{
    size_t n = Q_BLOCK_BYTES / tile_bytes;
    return n < 1 ? 1 : (int)n;
}

/* Row blocks x panels x tiles (see the top of the file), with tile(job, parts,
 * tile index, rows in it, panel). */
#define Q_RANGE_FN(NAME, TILE, TILE_BYTES_OF)                                                            \
    static void NAME(const void *ctx, int p0, int p1)                                                    \
    {                                                                                                    \
        const q_job *j = ctx;                                                                            \
        int tiles = (j->rows + QT - 1) / QT;                                                             \
        int per_block = q_tiles_per_block(TILE_BYTES_OF(j->kp));                                         \
        for (int t0 = 0; t0 < tiles; t0 += per_block) {                                                  \
            int t1 = tiles - t0 < per_block ? tiles : t0 + per_block;                                    \
            for (int p = p0; p < p1; p++)                                                                \
                for (int t = t0; t < t1; t++)                                                            \
                    TILE(j, t, j->rows - t * QT < QT ? j->rows - t * QT : QT, p);                        \
        }                                                                                                \
    }

#ifdef Q_X86
#define QV512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

static inline __attribute__((always_inline)) QV512 void q8v_tile(int mr, const uint8_t *a, const int8_t *b, int kg,
                                                                float *y, int ldy, int accumulate, const float *sa,
                                                                const float *sw, const int32_t *wsum, int cols)
{
    __m512i c0[QT], c1[QT];
#pragma GCC unroll 14
    for (int m = 0; m < mr; m++)
        c0[m] = c1[m] = _mm512_setzero_si512();
    for (int g = 0; g < kg; g++) {
        __m512i b0 = _mm512_loadu_si512(b + (size_t)g * 128), b1 = _mm512_loadu_si512(b + (size_t)g * 128 + 64);
        const uint8_t *ag = a + (size_t)g * QT * 4;
#pragma GCC unroll 14
        for (int m = 0; m < mr; m++) {
            int32_t word;
            memcpy(&word, ag + 4 * m, 4);
            __m512i av = _mm512_set1_epi32(word);
            c0[m] = _mm512_dpbusd_epi32(c0[m], av, b0);
            c1[m] = _mm512_dpbusd_epi32(c1[m], av, b1);
        }
    }
    /* u8 = a + 128: subtract 128 * sum_k q */
    __m512i k0 = _mm512_slli_epi32(_mm512_loadu_si512(wsum), 7), k1 = _mm512_slli_epi32(_mm512_loadu_si512(wsum + 16), 7);
    __m512 s0 = _mm512_loadu_ps(sw), s1 = _mm512_loadu_ps(sw + 16);
    __mmask16 m0 = cols >= 16 ? 0xffff : (__mmask16)((1u << cols) - 1);
    __mmask16 m1 = cols >= 32 ? 0xffff : cols <= 16 ? 0 : (__mmask16)((1u << (cols - 16)) - 1);
#pragma GCC unroll 14
    for (int m = 0; m < mr; m++) {
        float *ym = y + (size_t)m * ldy;
        __m512 r = _mm512_set1_ps(sa[m]);
        __m512 t0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(c0[m], k0)), _mm512_mul_ps(s0, r));
        __m512 t1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(c1[m], k1)), _mm512_mul_ps(s1, r));
        if (accumulate) {
            t0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, ym), t0);
            t1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, ym + 16), t1);
        }
        _mm512_mask_storeu_ps(ym, m0, t0);
        _mm512_mask_storeu_ps(ym + 16, m1, t1);
    }
}

#define Q8V_FN(MR)                                                                                        \
    static QV512 void q8v_tile_##MR(const uint8_t *a, const int8_t *b, int kg, float *y, int ldy, int acc, \
                                    const float *sa, const float *sw, const int32_t *wsum, int cols)      \
    {                                                                                                     \
        q8v_tile(MR, a, b, kg, y, ldy, acc, sa, sw, wsum, cols);                                          \
    }
Q8V_FN(1) Q8V_FN(2) Q8V_FN(3) Q8V_FN(4) Q8V_FN(5) Q8V_FN(6) Q8V_FN(7)
Q8V_FN(8) Q8V_FN(9) Q8V_FN(10) Q8V_FN(11) Q8V_FN(12) Q8V_FN(13) Q8V_FN(14)
typedef void (*q8v_fn)(const uint8_t *, const int8_t *, int, float *, int, int, const float *, const float *,
                       const int32_t *, int);
static const q8v_fn q8v_tiles[QT + 1] = {NULL,        q8v_tile_1,  q8v_tile_2,  q8v_tile_3,  q8v_tile_4,
                                         q8v_tile_5,  q8v_tile_6,  q8v_tile_7,  q8v_tile_8,  q8v_tile_9,
                                         q8v_tile_10, q8v_tile_11, q8v_tile_12, q8v_tile_13, q8v_tile_14};

static inline void q8v_call(const q_job *j, int t, int mr, int p)
{
    q8_parts d = q8_split(j->w, j->in, j->out);
    int cols = j->out - p * QP < QP ? j->out - p * QP : QP;
    q8v_tiles[mr](j->a + (size_t)t * tile_bytes(j->kp), d.q + (size_t)p * QP * j->kp, j->kp / 4,
                  j->y + (size_t)t * QT * j->ldy + p * QP, j->ldy, j->accumulate, j->sa + t * QT, d.scale + p * QP,
                  d.sum + p * QP, cols);
}
Q_RANGE_FN(q8_range_512, q8v_call, tile_bytes)

/* ---- 256-bit: AVX-VNNI (u8 x s8 in one instruction) and AVX2 (sign trick) ----
 * Micro-kernels that keep their sums in ymm registers for the whole k loop,
 * instantiated per row count (the compiler then unrolls the rows and gives each
 * sum a register; the former loop over an array of sums kept them on the stack:
 * a store and a load around every vpdpbusd).
 *   AVX-VNNI: Q_MRV = 7 rows x 16 outputs (half a panel): 14 sums, the half's
 *     first 8-output vector in a register, its second read by each vpdpbusd
 *     from L1 (a memory operand), the row's broadcast: 16 registers.  Per k
 *     group 14 vpdpbusd (two per cycle on Golden Cove: 7 cycles) against 15
 *     loads (three per cycle: 5), so the products bound it, at 64 multiply-adds
 *     per cycle (fp32 FMA: 16); two blocks fill a 14-row tile.
 *   AVX2: 2 rows x 32 outputs: 8 sums, 4 weight vectors, the row, |row|, a
 *     temporary and the ones: per k group and row one vpabsb and 4 x (vpsignb,
 *     vpmaddubsw, vpmaddwd, vpaddd).  Three of those four run only on the two
 *     multiply ports (p0, p1), which bounds it at 32 multiply-adds per 1.5
 *     cycles: 21 per cycle against fp32's 16, at most 1.33x before the
 *     quantization.  (vpmaddubsw on u8 = a + 128 would saturate: 2 x 255 x 127;
 *     int16 activations through vpmaddwd need as many instructions.) */
#define Q_MRV 7
/* Bytes ahead (32 k groups of a panel) that the first pass of a row block over
 * a panel prefetches: the weights of a product with few rows come from memory,
 * once, and would stall the products (text query, AVX-VNNI: 8.4 -> 5.5 ms for
 * the text tower's products, bench-like loop, 4096 and 8192 alike). */
#define Q_PF 4096
#define QAVXVNNI __attribute__((target("avx2,fma,avxvnni")))

/* One row's 8 sums (k: the u8 offset's compensation, or zero) -> y[0, cols),
 * cols <= 8: float(sum - k) * (s_o * s_r) (+ y), as q8_store_c. */
static inline __attribute__((always_inline)) QAVX2 void q8y_store8(float *ym, __m256i c, __m256i k, const float *sw,
                                                                  float sr, int accumulate, int cols)
{
    if (cols <= 0)
        return;
    __m256 t = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(c, k)), _mm256_mul_ps(_mm256_loadu_ps(sw), _mm256_set1_ps(sr)));
    if (cols >= 8) {
        if (accumulate)
            t = _mm256_add_ps(_mm256_loadu_ps(ym), t);
        _mm256_storeu_ps(ym, t);
        return;
    }
    __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(cols), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    if (accumulate)
        t = _mm256_add_ps(_mm256_maskload_ps(ym, mask), t);
    _mm256_maskstore_ps(ym, mask, t);
}

/* AVX-VNNI: rows [0, mr) of a tile (a, QT * 4 bytes per k group) x one half
 * panel (b: its first byte, 128 bytes per k group), then the epilogue. */
static inline __attribute__((always_inline)) QAVXVNNI void
q8y_vnni_block(int mr, const uint8_t *a, const int8_t *b, int kg, float *y, int ldy, int accumulate, const float *sa,
               const float *sw, const int32_t *wsum, int cols, ptrdiff_t pf)
{
    __m256i c0[Q_MRV], c1[Q_MRV];
#pragma GCC unroll 7
    for (int m = 0; m < mr; m++)
        c0[m] = c1[m] = _mm256_setzero_si256();
    for (int g = 0; g < kg; g++) {
        const int8_t *bg = b + (size_t)g * QP * 4;
        const uint8_t *ag = a + (size_t)g * QT * 4;
        __m256i w0 = _mm256_loadu_si256((const __m256i *)bg);
        if (pf)
            _mm_prefetch((const char *)bg + pf, _MM_HINT_T0);
#pragma GCC unroll 7
        for (int m = 0; m < mr; m++) {
            int32_t word;
            memcpy(&word, ag + 4 * m, 4);
            __m256i av = _mm256_set1_epi32(word);
            /* a fresh load per row (the compiler cannot keep it in a register,
             * which the sums need): it becomes vpdpbusd's memory operand */
            const int8_t *p1 = bg + 32;
            __asm__ volatile("" : "+r"(p1));
            c0[m] = _mm256_dpbusd_avx_epi32(c0[m], av, w0);
            c1[m] = _mm256_dpbusd_avx_epi32(c1[m], av, _mm256_loadu_si256((const __m256i *)p1));
        }
    }
    /* u8 = a + 128: subtract 128 sum_k q */
    __m256i k0 = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)wsum), 7);
    __m256i k1 = _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(wsum + 8)), 7);
#pragma GCC unroll 7
    for (int m = 0; m < mr; m++) {
        q8y_store8(y + (size_t)m * ldy, c0[m], k0, sw, sa[m], accumulate, cols);
        q8y_store8(y + (size_t)m * ldy + 8, c1[m], k1, sw + 8, sa[m], accumulate, cols - 8);
    }
}

/* AVX2: rows [0, mr) (mr <= 2) of a tile x a whole panel (b, 128 bytes per k
 * group), |a| times q with a's sign: pairs sum to at most 2 x 127 x 127 = 32258
 * in int16, so vpmaddubsw cannot saturate; vpmaddwd by 1 widens them. */
static inline __attribute__((always_inline)) QAVX2 void q8y_avx2_block(int mr, const uint8_t *a, size_t abs_off,
                                                                      const int8_t *b, int kg, float *y, int ldy,
                                                                      int accumulate, const float *sa, const float *sw,
                                                                      int cols, ptrdiff_t pf)
{
    __m256i c[2][4];
    const __m256i ones = _mm256_set1_epi16(1);
#pragma GCC unroll 2
    for (int m = 0; m < mr; m++)
        c[m][0] = c[m][1] = c[m][2] = c[m][3] = _mm256_setzero_si256();
    for (int g = 0; g < kg; g++) {
        const __m256i *bg = (const __m256i *)(b + (size_t)g * QP * 4);
        __m256i w[4] = {_mm256_loadu_si256(bg), _mm256_loadu_si256(bg + 1), _mm256_loadu_si256(bg + 2),
                        _mm256_loadu_si256(bg + 3)};
        if (pf) {
            _mm_prefetch((const char *)bg + pf, _MM_HINT_T0);
            _mm_prefetch((const char *)bg + pf + 64, _MM_HINT_T0);
        }
#pragma GCC unroll 2
        for (int m = 0; m < mr; m++) {
            int32_t word, uword;
            memcpy(&word, a + (size_t)g * QT * 4 + 4 * m, 4);
            memcpy(&uword, a + abs_off + (size_t)g * QT * 4 + 4 * m, 4);
            __m256i av = _mm256_set1_epi32(word), ua = _mm256_set1_epi32(uword);
#pragma GCC unroll 4
            for (int q = 0; q < 4; q++)
                c[m][q] = _mm256_add_epi32(c[m][q],
                                           _mm256_madd_epi16(_mm256_maddubs_epi16(ua, _mm256_sign_epi8(w[q], av)), ones));
        }
    }
#pragma GCC unroll 2
    for (int m = 0; m < mr; m++)
#pragma GCC unroll 4
        for (int q = 0; q < 4; q++)
            q8y_store8(y + (size_t)m * ldy + 8 * q, c[m][q], _mm256_setzero_si256(), sw + 8 * q, sa[m], accumulate,
                       cols - 8 * q);
}

#define Q8Y_VNNI_FN(MR)                                                                                      \
    static QAVXVNNI void q8y_vnni_##MR(const uint8_t *a, const int8_t *b, int kg, float *y, int ldy, int acc,  \
                                       const float *sa, const float *sw, const int32_t *wsum, int cols,        \
                                       ptrdiff_t pf)                                                           \
    {                                                                                                        \
        q8y_vnni_block(MR, a, b, kg, y, ldy, acc, sa, sw, wsum, cols, pf);                                   \
    }
Q8Y_VNNI_FN(1) Q8Y_VNNI_FN(2) Q8Y_VNNI_FN(3) Q8Y_VNNI_FN(4) Q8Y_VNNI_FN(5) Q8Y_VNNI_FN(6) Q8Y_VNNI_FN(7)
typedef void (*q8y_vnni_fn)(const uint8_t *, const int8_t *, int, float *, int, int, const float *, const float *,
                            const int32_t *, int, ptrdiff_t);
static const q8y_vnni_fn q8y_vnni_blocks[Q_MRV + 1] = {NULL,      q8y_vnni_1, q8y_vnni_2, q8y_vnni_3,
                                                       q8y_vnni_4, q8y_vnni_5, q8y_vnni_6, q8y_vnni_7};

static QAVX2 void q8y_avx2_1(const uint8_t *a, size_t abs_off, const int8_t *b, int kg, float *y, int ldy, int acc,
                             const float *sa, const float *sw, int cols, ptrdiff_t pf)
{
    q8y_avx2_block(1, a, abs_off, b, kg, y, ldy, acc, sa, sw, cols, pf);
}
static QAVX2 void q8y_avx2_2(const uint8_t *a, size_t abs_off, const int8_t *b, int kg, float *y, int ldy, int acc,
                             const float *sa, const float *sw, int cols, ptrdiff_t pf)
{
    q8y_avx2_block(2, a, abs_off, b, kg, y, ldy, acc, sa, sw, cols, pf);
}

/* One tile x one panel: AVX-VNNI per half panel, blocks of Q_MRV rows. */
static void q8_tile_avxvnni(const q_job *j, int t, int mr_all, int p)
{
    q8_parts d = q8_split(j->w, j->in, j->out);
    int cols = j->out - p * QP < QP ? j->out - p * QP : QP, first = t % q_tiles_per_block(tile_bytes(j->kp)) == 0;
    for (int h = 0; h < 2 && cols > 16 * h; h++) {
        int o = p * QP + 16 * h;
        const int8_t *b = d.q + (size_t)p * QP * j->kp + 16 * 4 * h;
        for (int m0 = 0; m0 < mr_all; m0 += Q_MRV) {
            int mr = mr_all - m0 < Q_MRV ? mr_all - m0 : Q_MRV, r = t * QT + m0;
            q8y_vnni_blocks[mr](j->a + (size_t)t * tile_bytes(j->kp) + (size_t)m0 * 4, b, j->kp / 4,
                                j->y + (size_t)r * j->ldy + o, j->ldy, j->accumulate, j->sa + r, d.scale + o,
                                d.sum + o, cols - 16 * h, m0 == 0 && first ? Q_PF : 0);
        }
    }
}

/* |a| of the tiles' n bytes at dst (the AVX2 kernel's u8 operand, made once
 * per product instead of once per row and panel). */
static QAVX2 void q8_abs_tiles(uint8_t *dst, const uint8_t *src, size_t n)
{
    for (size_t i = 0; i < n; i += 32) /* up to n rounded up to 32: within the region (q8_abs_offset) */
        _mm256_storeu_si256((__m256i *)(dst + i), _mm256_abs_epi8(_mm256_loadu_si256((const __m256i *)(src + i))));
}

/* One tile x one panel: AVX2, two rows at a time. */
static void q8_tile_avx2(const q_job *j, int t, int mr_all, int p)
{
    q8_parts d = q8_split(j->w, j->in, j->out);
    int cols = j->out - p * QP < QP ? j->out - p * QP : QP, first = t % q_tiles_per_block(tile_bytes(j->kp)) == 0;
    const int8_t *b = d.q + (size_t)p * QP * j->kp;
    for (int m0 = 0; m0 < mr_all; m0 += 2) {
        int r = t * QT + m0;
        (mr_all - m0 >= 2 ? q8y_avx2_2 : q8y_avx2_1)(j->a + (size_t)t * tile_bytes(j->kp) + (size_t)m0 * 4, j->abs_off, b,
                                                     j->kp / 4, j->y + (size_t)r * j->ldy + p * QP, j->ldy,
                                                     j->accumulate, j->sa + r, d.scale + p * QP, cols,
                                                     m0 == 0 && first ? Q_PF : 0);
    }
}
Q_RANGE_FN(q8_range_avxvnni, q8_tile_avxvnni, tile_bytes)
Q_RANGE_FN(q8_range_avx2, q8_tile_avx2, tile_bytes)

/* ---- AMX (Sapphire Rapids and later) ------------------------------------------
 * Tiles 0-3 hold a 32-row x 32-output block of sums (2 x 2 tiles of 16 x 16),
 * 4-5 the block's two 16-row slices of activations (row-major scratch), 6-7
 * the panel's two 16-output halves: the packed panels' [k / g][32][g] layout is
 * already AMX's B layout with a row stride of 128 bytes.  One k step is 64 int8
 * (32 bf16) inputs: 4 tile products.  Each thread configures its tiles when it
 * takes a range and releases them after.  int8: tdpbssd multiplies s8 x s8 into
 * exact int32 sums, so the epilogue (the same float operations as the others)
 * gives the same bits; bf16: tdpbf16ps sums pairs into fp32. */
#define QAMX __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,amx-tile,amx-int8,amx-bf16")))

typedef struct __attribute__((packed)) amx_config {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_config;

static QAMX void amx_configure(void)
{
    amx_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 8; t++)
        c.rows[t] = 16, c.colsb[t] = 64;
    _tile_loadconfig(&c);
}

/* One 32-row x 32-output block into sums[32][32] (int32 or fp32 by the kind):
 * a: the block's first row (row_bytes apart), b: the panel, k_bytes: bytes of
 * one k step in a row (64), kp_steps: k steps. */
#define AMX_BLOCK(NAME, DP)                                                                                \
    static QAMX void NAME(void *sums, const uint8_t *a, size_t row_bytes, const uint8_t *b, int steps)     \
    {                                                                                                      \
        _tile_zero(0);                                                                                     \
        _tile_zero(1);                                                                                     \
        _tile_zero(2);                                                                                     \
        _tile_zero(3);                                                                                     \
        for (int s = 0; s < steps; s++) {                                                                  \
            _tile_loadd(4, a + (size_t)s * 64, row_bytes);                                                 \
            _tile_loadd(5, a + 16 * row_bytes + (size_t)s * 64, row_bytes);                                \
            _tile_loadd(6, b + (size_t)s * 16 * 128, 128);                                                 \
            _tile_loadd(7, b + (size_t)s * 16 * 128 + 64, 128);                                            \
            DP(0, 4, 6);                                                                                   \
            DP(1, 4, 7);                                                                                   \
            DP(2, 5, 6);                                                                                   \
            DP(3, 5, 7);                                                                                   \
        }                                                                                                  \
        _tile_stored(0, (char *)sums, QP * 4);                                                             \
        _tile_stored(1, (char *)sums + 64, QP * 4);                                                        \
        _tile_stored(2, (char *)sums + 16 * QP * 4, QP * 4);                                               \
        _tile_stored(3, (char *)sums + 16 * QP * 4 + 64, QP * 4);                                          \
    }
AMX_BLOCK(amx_block_q8, _tile_dpbssd)
AMX_BLOCK(amx_block_bf16, _tile_dpbf16ps)

static inline __attribute__((always_inline)) QAMX __mmask16 cols_mask(int cols, int half)
{
    int c = cols - 16 * half;
    return c >= 16 ? 0xffff : c <= 0 ? 0 : (__mmask16)((1u << c) - 1);
}

/* Row blocks of AMX_M rows (as many as fit Q_BLOCK_BYTES) x panels x blocks. */
static QAMX void amx_range(const q_job *j, int p0, int p1, int bf16)
{
    int row_bytes = bf16 ? j->kp * 2 : j->kp, steps = row_bytes / 64;
    int blocks = (j->rows + AMX_M - 1) / AMX_M;
    int per = (int)(Q_BLOCK_BYTES / ((size_t)AMX_M * row_bytes));
    per = per < 1 ? 1 : per;
    q8_parts d = q8_split(j->w, j->in, j->out);
    int32_t sums[AMX_M * QP] __attribute__((aligned(64)));
    amx_configure();
    for (int b0 = 0; b0 < blocks; b0 += per) {
        int b1 = blocks - b0 < per ? blocks : b0 + per;
        for (int p = p0; p < p1; p++) {
            const uint8_t *panel = (const uint8_t *)j->w + (size_t)p * QP * row_bytes;
            int cols = j->out - p * QP < QP ? j->out - p * QP : QP;
            __mmask16 m0 = cols_mask(cols, 0), m1 = cols_mask(cols, 1);
            __m512 s0 = _mm512_setzero_ps(), s1 = s0;
            if (!bf16)
                s0 = _mm512_loadu_ps(d.scale + p * QP), s1 = _mm512_loadu_ps(d.scale + p * QP + 16);
            for (int b = b0; b < b1; b++) {
                const uint8_t *a = j->a + (size_t)b * AMX_M * row_bytes;
                if (bf16)
                    amx_block_bf16(sums, a, (size_t)row_bytes, panel, steps);
                else
                    amx_block_q8(sums, a, (size_t)row_bytes, panel, steps);
                int mr = j->rows - b * AMX_M < AMX_M ? j->rows - b * AMX_M : AMX_M;
                for (int m = 0; m < mr; m++) {
                    float *ym = j->y + ((size_t)b * AMX_M + m) * j->ldy + p * QP;
                    __m512 t0, t1;
                    if (bf16) {
                        t0 = _mm512_load_ps((const float *)sums + m * QP);
                        t1 = _mm512_load_ps((const float *)sums + m * QP + 16);
                    } else { /* as q8v_tile's epilogue: float(sum) * (s_o * s_r) */
                        __m512 r = _mm512_set1_ps(j->sa[b * AMX_M + m]);
                        t0 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(sums + m * QP)), _mm512_mul_ps(s0, r));
                        t1 = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_load_si512(sums + m * QP + 16)),
                                           _mm512_mul_ps(s1, r));
                    }
                    if (j->accumulate) {
                        t0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, ym), t0);
                        t1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, ym + 16), t1);
                    }
                    _mm512_mask_storeu_ps(ym, m0, t0);
                    _mm512_mask_storeu_ps(ym + 16, m1, t1);
                }
            }
        }
    }
    _tile_release();
}

static void q8_range_amx(const void *ctx, int p0, int p1) { amx_range(ctx, p0, p1, 0); }
static void bf_range_amx(const void *ctx, int p0, int p1) { amx_range(ctx, p0, p1, 1); }
#endif

#ifdef Q_ARM
/* ---- aarch64: sdot (ARMv8.2 dotprod) and plain NEON ------------------------
 * Signed rows (no u8 offset).  A panel's k group holds 32 outputs x 4 bytes:
 * one 16-byte vector is 4 outputs' 4 bytes, which is what sdot's lanes take
 * with the row's 4 bytes repeated in every lane.  Without dotprod: widening
 * 8x8 -> 16-bit products (|127 * 127| fits), pairwise added into 32-bit lanes
 * (two lanes per output), folded per output at the end.  Integer sums are
 * exact in any order, and the epilogue rounds as q8_store_c does (the file is
 * built with -ffp-contract=off): every path gives the same bits. */
#define QDOT __attribute__((target("arch=armv8.2-a+dotprod")))

/* One row's 32 sums (8 x 4 lanes) -> y, as q8_store_c. */
static inline __attribute__((always_inline)) void q8n_store(float *ym, const int32x4_t c[8], const float *sw,
                                                            float sr, int accumulate, int cols)
{
    float32x4_t r = vdupq_n_f32(sr);
    for (int q = 0; q < 8 && 4 * q < cols; q++) {
        float32x4_t t = vmulq_f32(vcvtq_f32_s32(c[q]), vmulq_f32(vld1q_f32(sw + 4 * q), r));
        if (cols >= 4 * q + 4) {
            if (accumulate)
                t = vaddq_f32(vld1q_f32(ym + 4 * q), t);
            vst1q_f32(ym + 4 * q, t);
        } else {
            float tmp[4];
            vst1q_f32(tmp, t);
            for (int i = 0; i < cols - 4 * q; i++)
                ym[4 * q + i] = accumulate ? ym[4 * q + i] + tmp[i] : tmp[i];
        }
    }
}

/* Two rows x 32 outputs per step: 16 accumulators + 8 weight vectors. */
static QDOT void q8n_tile_dot(const q_job *j, int t, int mr_all, int p)
{
    q8_parts d = q8_split(j->w, j->in, j->out);
    int cols = j->out - p * QP < QP ? j->out - p * QP : QP, kg = j->kp / 4;
    const int8_t *b = d.q + (size_t)p * QP * j->kp;
    for (int m0 = 0; m0 < mr_all; m0 += 2) {
        int two = mr_all - m0 >= 2;
        const uint8_t *a = j->a + (size_t)t * tile_bytes(j->kp) + (size_t)m0 * 4;
        int32x4_t c0[8], c1[8];
        for (int q = 0; q < 8; q++)
            c0[q] = c1[q] = vdupq_n_s32(0);
        for (int g = 0; g < kg; g++) {
            const int8_t *bg = b + (size_t)g * 128;
            const uint8_t *ag = a + (size_t)g * QT * 4;
            int32_t w0, w1 = 0;
            memcpy(&w0, ag, 4);
            if (two)
                memcpy(&w1, ag + 4, 4);
            int8x16_t a0 = vreinterpretq_s8_s32(vdupq_n_s32(w0)), a1 = vreinterpretq_s8_s32(vdupq_n_s32(w1));
            for (int q = 0; q < 8; q++) {
                int8x16_t bv = vld1q_s8(bg + 16 * q);
                c0[q] = vdotq_s32(c0[q], bv, a0);
                c1[q] = vdotq_s32(c1[q], bv, a1);
            }
        }
        int r = t * QT + m0;
        q8n_store(j->y + (size_t)r * j->ldy + p * QP, c0, d.scale + p * QP, j->sa[r], j->accumulate, cols);
        if (two)
            q8n_store(j->y + (size_t)(r + 1) * j->ldy + p * QP, c1, d.scale + p * QP, j->sa[r + 1], j->accumulate,
                      cols);
    }
}

/* One row x 32 outputs per step: 16 accumulators of output pairs. */
static void q8n_tile(const q_job *j, int t, int mr_all, int p)
{
    q8_parts d = q8_split(j->w, j->in, j->out);
    int cols = j->out - p * QP < QP ? j->out - p * QP : QP, kg = j->kp / 4;
    const int8_t *b = d.q + (size_t)p * QP * j->kp;
    for (int m = 0; m < mr_all; m++) {
        const uint8_t *a = j->a + (size_t)t * tile_bytes(j->kp) + (size_t)m * 4;
        int32x4_t lo[8], hi[8], c[8];
        for (int q = 0; q < 8; q++)
            lo[q] = hi[q] = vdupq_n_s32(0);
        for (int g = 0; g < kg; g++) {
            const int8_t *bg = b + (size_t)g * 128;
            int32_t w;
            memcpy(&w, a + (size_t)g * QT * 4, 4);
            int8x16_t av = vreinterpretq_s8_s32(vdupq_n_s32(w));
            for (int q = 0; q < 8; q++) {
                int8x16_t bv = vld1q_s8(bg + 16 * q);
                /* lo: outputs 4q, 4q+1 (bytes 0-1, 2-3 of each); hi: 4q+2, 4q+3 */
                lo[q] = vpadalq_s16(lo[q], vmull_s8(vget_low_s8(bv), vget_low_s8(av)));
                hi[q] = vpadalq_s16(hi[q], vmull_high_s8(bv, av));
            }
        }
        for (int q = 0; q < 8; q++)
            c[q] = vpaddq_s32(lo[q], hi[q]);
        int r = t * QT + m;
        q8n_store(j->y + (size_t)r * j->ldy + p * QP, c, d.scale + p * QP, j->sa[r], j->accumulate, cols);
    }
}
Q_RANGE_FN(q8_range_neon_dot, q8n_tile_dot, tile_bytes)
Q_RANGE_FN(q8_range_neon, q8n_tile, tile_bytes)
#endif

void enc_linear_q8(float *y, int ldy, const float *x, int ldx, const void *packed, int rows, int in, int out,
                   int accumulate, void *scratch)
{
    if (rows <= 0 || out <= 0)
        return;
    int isa = q8_isa_for(in);
    uint8_t *tiles = scratch;
    int kp = q8_kp(in);
    float *sa = q_scales(scratch, rows, in);
    /* the VNNI kernels take a + 128 (u8); AMX (s8 x s8) takes rows as they are */
    q8_quantize(tiles, sa, x, ldx, rows, in, isa == Q8_AVX512_VNNI || isa == Q8_AVX_VNNI ? 0x80 : 0, isa == Q8_AMX);
    q_job job = {y, ldy, rows, in, out, kp, accumulate, tiles, sa, packed, 0};
    void (*range)(const void *, int, int) = q8_range_c;
#ifdef Q_X86
    range = isa == Q8_AMX           ? q8_range_amx
          : isa == Q8_AVX512_VNNI ? q8_range_512
          : isa == Q8_AVX_VNNI    ? q8_range_avxvnni
          : isa == Q8_AVX2        ? q8_range_avx2
                                  : q8_range_c;
    if (isa == Q8_AVX2) {
        job.abs_off = q8_abs_offset(rows, in);
        q8_abs_tiles(tiles + job.abs_off, tiles, (size_t)(rows + QT - 1) / QT * tile_bytes(kp));
    }
#endif
#ifdef Q_ARM
    range = isa == Q8_NEON_DOT ? q8_range_neon_dot : isa == Q8_NEON ? q8_range_neon : q8_range_c;
#endif
    enc_kernels_parallel(n_panels(out), rows, in, out, range, &job);
}

/* ---- bf16 ------------------------------------------------------------------ */

static void bf_store_rows_c(uint16_t *tiles, const float *x, int ldx, int rows, int in)
{
    int kp = bf_kp(in);
    for (int r = 0; r < rows; r++) {
        size_t step;
        uint8_t *t = q_row(tiles, 0, kp * 2, r, &step);
        for (int k = 0; k < kp; k++) {
            uint16_t h = k < in ? enc_f32_to_bf16(x[(size_t)r * ldx + k]) : 0;
            memcpy(t + (size_t)(k / 2) * step + (k % 2) * 2, &h, 2);
        }
    }
}

/* Plain C: the same bf16 products, summed in fp32 pairwise as vdpbf16ps does. */
static void bf_range_c(const void *ctx, int p0, int p1)
{
    const q_job *j = ctx;
    const uint16_t *w = j->w, *a0 = (const uint16_t *)j->a;
    int kg = j->kp / 2;
    for (int p = p0; p < p1; p++) {
        const uint16_t *b = w + (size_t)p * QP * j->kp;
        int cols = j->out - p * QP < QP ? j->out - p * QP : QP;
        for (int r = 0; r < j->rows; r++) {
            const uint16_t *a = a0 + (size_t)(r / QT) * QT * j->kp + (size_t)(r % QT) * 2;
            float *yr = j->y + (size_t)r * j->ldy + p * QP;
            for (int c = 0; c < cols; c++) {
                float s = 0;
                for (int g = 0; g < kg; g++) {
                    float x0, x1, w0, w1;
                    uint32_t u;
                    u = (uint32_t)a[(size_t)g * QT * 2] << 16, memcpy(&x0, &u, 4);
                    u = (uint32_t)a[(size_t)g * QT * 2 + 1] << 16, memcpy(&x1, &u, 4);
                    u = (uint32_t)b[(size_t)g * QP * 2 + c * 2] << 16, memcpy(&w0, &u, 4);
                    u = (uint32_t)b[(size_t)g * QP * 2 + c * 2 + 1] << 16, memcpy(&w1, &u, 4);
                    s += x0 * w0 + x1 * w1;
                }
                yr[c] = j->accumulate ? yr[c] + s : s;
            }
        }
    }
}

#ifdef Q_X86
#define QBF __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

/* bf16(x) rows into the tiles, 32 at a time (vcvtne2ps2bf16: round to nearest even). */
static QBF void bf_store_rows_512(uint16_t *tiles, const float *x, int ldx, int rows, int in, int rowmajor)
{
    int kp = bf_kp(in);
    q_pad_rows(tiles, rowmajor, kp * 2, rows);
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * ldx;
        size_t step;
        uint8_t *t = q_row(tiles, rowmajor, kp * 2, r, &step);
        for (int k = 0; k < kp; k += 32) {
            __mmask16 mlo = in - k >= 16 ? 0xffff : in - k <= 0 ? 0 : (__mmask16)((1u << (in - k)) - 1);
            __mmask16 mhi = in - k >= 32 ? 0xffff : in - k <= 16 ? 0 : (__mmask16)((1u << (in - k - 16)) - 1);
            __m512bh h = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(mhi, xr + k + 16), _mm512_maskz_loadu_ps(mlo, xr + k));
            uint32_t words[16];
            _mm512_storeu_si512(words, (__m512i)h);
            int groups = (kp - k) / 2 < 16 ? (kp - k) / 2 : 16;
            for (int g = 0; g < groups; g++)
                memcpy(t + (size_t)(k / 2 + g) * step, &words[g], 4);
        }
    }
}

static inline __attribute__((always_inline)) QBF void bf_tile(int mr, const uint16_t *a, const uint16_t *b, int kg,
                                                             float *y, int ldy, int accumulate, int cols)
{
    __m512 c0[QT], c1[QT];
#pragma GCC unroll 14
    for (int m = 0; m < mr; m++)
        c0[m] = c1[m] = _mm512_setzero_ps();
    for (int g = 0; g < kg; g++) {
        __m512bh b0 = (__m512bh)_mm512_loadu_si512(b + (size_t)g * 64);
        __m512bh b1 = (__m512bh)_mm512_loadu_si512(b + (size_t)g * 64 + 32);
        const uint16_t *ag = a + (size_t)g * QT * 2;
#pragma GCC unroll 14
        for (int m = 0; m < mr; m++) {
            int32_t word;
            memcpy(&word, ag + 2 * m, 4);
            __m512bh av = (__m512bh)_mm512_set1_epi32(word);
            c0[m] = _mm512_dpbf16_ps(c0[m], av, b0);
            c1[m] = _mm512_dpbf16_ps(c1[m], av, b1);
        }
    }
    __mmask16 m0 = cols >= 16 ? 0xffff : (__mmask16)((1u << cols) - 1);
    __mmask16 m1 = cols >= 32 ? 0xffff : cols <= 16 ? 0 : (__mmask16)((1u << (cols - 16)) - 1);
#pragma GCC unroll 14
    for (int m = 0; m < mr; m++) {
        float *ym = y + (size_t)m * ldy;
        if (accumulate) {
            c0[m] = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, ym), c0[m]);
            c1[m] = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, ym + 16), c1[m]);
        }
        _mm512_mask_storeu_ps(ym, m0, c0[m]);
        _mm512_mask_storeu_ps(ym + 16, m1, c1[m]);
    }
}

#define BF_FN(MR)                                                                                          \
    static QBF void bf_tile_##MR(const uint16_t *a, const uint16_t *b, int kg, float *y, int ldy, int acc,  \
                                 int cols)                                                                 \
    {                                                                                                      \
        bf_tile(MR, a, b, kg, y, ldy, acc, cols);                                                          \
    }
BF_FN(1) BF_FN(2) BF_FN(3) BF_FN(4) BF_FN(5) BF_FN(6) BF_FN(7)
BF_FN(8) BF_FN(9) BF_FN(10) BF_FN(11) BF_FN(12) BF_FN(13) BF_FN(14)
typedef void (*bf_fn)(const uint16_t *, const uint16_t *, int, float *, int, int, int);
static const bf_fn bf_tiles[QT + 1] = {NULL,       bf_tile_1,  bf_tile_2,  bf_tile_3,  bf_tile_4,
                                       bf_tile_5,  bf_tile_6,  bf_tile_7,  bf_tile_8,  bf_tile_9,
                                       bf_tile_10, bf_tile_11, bf_tile_12, bf_tile_13, bf_tile_14};

static size_t bf_tile_bytes(int kp) { return (size_t)QT * (size_t)kp * 2; }

static inline void bf_call(const q_job *j, int t, int mr, int p)
{
    int cols = j->out - p * QP < QP ? j->out - p * QP : QP;
    bf_tiles[mr]((const uint16_t *)j->a + (size_t)t * QT * j->kp, (const uint16_t *)j->w + (size_t)p * QP * j->kp,
                 j->kp / 2, j->y + (size_t)t * QT * j->ldy + p * QP, j->ldy, j->accumulate, cols);
}
Q_RANGE_FN(bf_range_512, bf_call, bf_tile_bytes)
#endif

void enc_linear_bf16(float *y, int ldy, const float *x, int ldx, const void *packed, int rows, int in, int out,
                     int accumulate, void *scratch)
{
    if (rows <= 0 || out <= 0)
        return;
    int kp = bf_kp(in);
    q_job job = {y, ldy, rows, in, out, kp, accumulate, scratch, NULL, packed, 0};
#ifdef Q_X86
    if (enc_bf16_supported()) {
        int amx = (enc_cpu_features() & ENC_CPU_AMX_BF16) && in % AMX_K16 == 0;
        bf_store_rows_512(scratch, x, ldx, rows, in, amx);
        enc_kernels_parallel(n_panels(out), rows, in, out, amx ? bf_range_amx : bf_range_512, &job);
        return;
    }
#endif
    bf_store_rows_c(scratch, x, ldx, rows, in);
    enc_kernels_parallel(n_panels(out), rows, in, out, bf_range_c, &job);
}
