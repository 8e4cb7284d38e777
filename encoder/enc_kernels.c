/* enc_kernels.c - numeric kernels of the CLIP forward passes (see enc_kernels.h).
 *
 * Big products go to OpenBLAS.  The elementwise loops are written so that the
 * compiler vectorizes them (no calls into libm inside the loops: exp and erf are
 * polynomial, accurate to a few float ulps, which is far inside the reference
 * tolerance; the tests compare them with libm). */
#include "enc_kernels.h"

#include "enc.h"
#include "umg_error.h"
#include "umg_half.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

/* ---- what this CPU runs (enc_kernels.h: enc_cpu_features) -------------------
 * The binary is built for x86-64-v2 (UMG_NATIVE OFF); every kernel that needs
 * more is compiled for its ISA (target attributes, target_clones) and chosen
 * here, once, from cpuid and from what the OS saves on a context switch (XCR0:
 * a CPU with AVX-512 under an OS that does not save the zmm state must not use
 * it).  enc_cpu_limit caps the choice in-process (tests), enc_cpu_limit_named
 * by a name (the programs' UMG_CPU=c|avx2|avx512...: a user working around a
 * bad kernel, benchmarks of a smaller CPU). */
#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
/* XCR0 & mask == mask: the OS saves those register states (0 without OSXSAVE). */
static int os_saves(uint64_t mask)
{
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE))
        return 0;
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((((uint64_t)hi << 32) | lo) & mask) == mask;
}
#endif
#if defined(__aarch64__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1 << 20)
#endif
#endif

static unsigned cpu_detect(void)
{
    unsigned f = 0;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    int ymm = os_saves(0x6), zmm = os_saves(0xe6); /* SSE+AVX; + opmask, zmm hi256, hi16_zmm */
    if (ymm && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        f |= ENC_CPU_AVX2;
    if ((f & ENC_CPU_AVX2) && zmm && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        f |= ENC_CPU_AVX512;
    if ((f & ENC_CPU_AVX2) && __builtin_cpu_supports("avxvnni"))
        f |= ENC_CPU_AVX_VNNI;
    if ((f & ENC_CPU_AVX512) && __builtin_cpu_supports("avx512vnni"))
        f |= ENC_CPU_AVX512_VNNI;
    if ((f & ENC_CPU_AVX512) && __builtin_cpu_supports("avx512bf16"))
        f |= ENC_CPU_AVX512_BF16;
#if __GNUC__ >= 12
    if ((f & ENC_CPU_AVX512) && __builtin_cpu_supports("avx512fp16"))
        f |= ENC_CPU_AVX512_FP16;
#endif
    /* AMX: the tile state must be saved by the OS (XCR0 bits 17, 18) and, on
     * Linux, requested once per process before the first tile instruction. */
    if ((f & ENC_CPU_AVX512) && __builtin_cpu_supports("amx-tile") && os_saves(0x60000) &&
        syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0) {
        if (__builtin_cpu_supports("amx-int8"))
            f |= ENC_CPU_AMX_INT8;
        if (__builtin_cpu_supports("amx-bf16"))
            f |= ENC_CPU_AMX_BF16;
    }
#elif defined(__aarch64__)
    f = ENC_CPU_NEON; /* part of ARMv8-A */
    if (getauxval(AT_HWCAP) & HWCAP_ASIMDDP)
        f |= ENC_CPU_NEON_DOTPROD;
#endif
    return f;
}

static unsigned cpu_limit_mask = ~0u;

unsigned enc_cpu_features(void)
{
    static unsigned detected;
    static int done;
    if (!__atomic_load_n(&done, __ATOMIC_ACQUIRE)) { /* idempotent: a race computes it twice */
        detected = cpu_detect();
        __atomic_store_n(&done, 1, __ATOMIC_RELEASE);
    }
    return detected & cpu_limit_mask;
}

unsigned enc_cpu_limit(unsigned mask)
{
    unsigned prev = cpu_limit_mask;
    cpu_limit_mask = mask;
    return prev;
}

int enc_cpu_limit_named(const char *name)
{
    static const struct { const char *name; unsigned mask; } caps[] = {
        {"c", 0},
#if defined(__x86_64__)
        {"avx2", ENC_CPU_AVX2 | ENC_CPU_AVX_VNNI},
        {"avx2-novnni", ENC_CPU_AVX2},
        {"avx512-novnni", ENC_CPU_AVX2 | ENC_CPU_AVX512},
        {"avx512-noamx", ~(unsigned)(ENC_CPU_AMX_INT8 | ENC_CPU_AMX_BF16)},
#elif defined(__aarch64__)
        {"neon", ENC_CPU_NEON},
#endif
    };
    for (size_t i = 0; name && i < sizeof caps / sizeof caps[0]; i++)
        if (!strcmp(name, caps[i].name)) {
            enc_cpu_limit(caps[i].mask);
            return 0;
        }
    return umg_err_set(UMG_EINVAL, "unknown CPU cap \"%s\"", name ? name : "");
}

const char *enc_cpu_describe(unsigned f)
{
    static const char *const names[] = {"avx2+fma",    "avx512",      "avx512-vnni", "avx-vnni",
                                        "avx512-bf16", "avx512-fp16", "amx-int8",    "amx-bf16",
                                        "neon",        "neon-dotprod"};
    static __thread char buf[128];
    size_t n = 0;
    buf[0] = 0;
    for (unsigned i = 0; i < sizeof names / sizeof *names; i++)
        if (f & (1u << i))
            n += (size_t)snprintf(buf + n, sizeof buf - n, "%s%s", n ? " " : "", names[i]);
#if defined(__aarch64__)
    return n ? buf : "baseline (plain C)";
#else
    return n ? buf : "baseline (x86-64-v2 / plain C)";
#endif
}

/* The elementwise loops and the few-row fp32 product: one copy per ISA level,
 * picked by the loader (ifunc) from the same cpuid bits; with -march=native the
 * compiler's own choice is the only copy. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__AVX512F__)
#define ENC_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define ENC_CLONES
#endif

/* -O2 in GCC 12 only vectorizes loops whose vector code needs no scalar epilogue;
 * these loops do, and they run over every activation. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("tree-vectorize", "vect-cost-model=dynamic")
#endif

/* ---- few-row products ------------------------------------------------------
 * sgemm packs the whole weight matrix into its panel layout on every call.  With
 * many rows (a batch of images) that cost is shared; with few (a text query, one
 * image) it dominates: the weights are read, written and read again.  Here each
 * weight row is read once, straight from the checkpoint's [out, in] layout, and
 * dotted with every input row while it sits in L1: tiles of 4 weight rows x up
 * to 6 input rows keep 24 vector accumulators, reduced once per tile. */
/* Without -march flags GCC warns that 64-byte vectors change the calling
 * convention; these helpers are static and inlined, so no ABI is involved. */
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));

/* always_inline: these pass 64-byte vectors, which the per-ISA clones below
 * (ENC_CLONES) and a default-target out-of-line copy would pass differently
 * (zmm registers vs memory): at -O0 that garbled the arguments. */
static inline __attribute__((always_inline)) v16 load16(const float *p) { return *(const v16u *)p; }

/* The lane sums of a, b, c, d in lanes 0, 4, 8, 12 of the result: pairwise
 * folds across the four vectors share their shuffles (13 operations, not 4 x 8). */
static inline __attribute__((always_inline)) v16 hsum4(v16 a, v16 b, v16 c, v16 d)
{
    v16 ab = __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
             __builtin_shufflevector(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    v16 cd = __builtin_shufflevector(c, d, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
             __builtin_shufflevector(c, d, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
    v16 q = __builtin_shufflevector(ab, cd, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
            __builtin_shufflevector(ab, cd, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
    q += __builtin_shufflevector(q, q, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
    q += __builtin_shufflevector(q, q, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
    return q;
}

#define SKINNY_MR 6
#define SKINNY_NR 4

/* y[mr, 4] (+)= x[mr, in] . w[4, in]^T */
static inline __attribute__((always_inline)) void skinny_tile(float *y, int ldy, const float *x, int ldx,
                                                              const float *w, int in, int mr, int accumulate,
                                                              int prefetch)
{
    v16 acc[SKINNY_MR][SKINNY_NR];
    for (int m = 0; m < SKINNY_MR; m++)
        for (int o = 0; o < SKINNY_NR; o++)
            acc[m][o] = (v16){0};
    int k = 0;
    for (; k + 16 <= in; k += 16) {
        v16 w0 = load16(w + k), w1 = load16(w + in + k), w2 = load16(w + 2 * in + k),
            w3 = load16(w + 3 * in + k);
        if (prefetch) { /* the next tile's weight rows, while these stream */
            __builtin_prefetch(w + 4 * in + k);
            __builtin_prefetch(w + 5 * in + k);
            __builtin_prefetch(w + 6 * in + k);
            __builtin_prefetch(w + 7 * in + k);
        }
#pragma GCC unroll 6
        for (int m = 0; m < mr; m++) {
            v16 xv = load16(x + (size_t)m * ldx + k);
            acc[m][0] += xv * w0;
            acc[m][1] += xv * w1;
            acc[m][2] += xv * w2;
            acc[m][3] += xv * w3;
        }
    }
    for (int m = 0; m < mr; m++) {
        v16 q = hsum4(acc[m][0], acc[m][1], acc[m][2], acc[m][3]);
        for (int o = 0; o < SKINNY_NR; o++) {
            float s = q[4 * o];
            for (int t = k; t < in; t++)
                s += x[(size_t)m * ldx + t] * w[(size_t)o * in + t];
            float *yo = y + (size_t)m * ldy + o;
            *yo = accumulate ? *yo + s : s;
        }
    }
}

/* One instance per row count so that the accumulators live in registers. */
#define SKINNY_TILE_FN(MR)                                                                               \
    ENC_CLONES static void skinny_tile_##MR(float *y, int ldy, const float *x, int ldx, const float *w, int in,     \
                                 int accumulate, int prefetch)                                           \
    {                                                                                                    \
        if (prefetch)                                                                                    \
            skinny_tile(y, ldy, x, ldx, w, in, MR, accumulate, 1);                                       \
        else                                                                                             \
            skinny_tile(y, ldy, x, ldx, w, in, MR, accumulate, 0);                                       \
    }
SKINNY_TILE_FN(1)
SKINNY_TILE_FN(2)
SKINNY_TILE_FN(3)
SKINNY_TILE_FN(4)
SKINNY_TILE_FN(5)
SKINNY_TILE_FN(6)
typedef void (*skinny_fn)(float *, int, const float *, int, const float *, int, int, int);
static const skinny_fn skinny_tiles[SKINNY_MR + 1] = {NULL, skinny_tile_1, skinny_tile_2, skinny_tile_3,
                                                     skinny_tile_4, skinny_tile_5, skinny_tile_6};

/* Up to this many rows the skinny product beats sgemm's packing (measured on
 * ViT-B shapes: text queries and single images). */
#define SKINNY_MAX_ROWS 24

static void skinny_gemm(float *y, int ldy, const float *x, int ldx, const float *w, int rows, int in, int out,
                        int accumulate)
{
    int o = 0;
    /* The 4 weight rows of a tile stay in L1 while every row block passes. */
    for (; o + SKINNY_NR <= out; o += SKINNY_NR)
        for (int m = 0; m < rows; m += SKINNY_MR) {
            int mr = rows - m < SKINNY_MR ? rows - m : SKINNY_MR;
            skinny_tiles[mr](y + (size_t)m * ldy + o, ldy, x + (size_t)m * ldx, ldx, w + (size_t)o * in, in,
                             accumulate, m == 0 && o + 2 * SKINNY_NR <= out);
        }
    for (; o < out; o++) /* out not a multiple of 4: plain dot products */
        for (int m = 0; m < rows; m++) {
            float s = 0;
            for (int t = 0; t < in; t++)
                s += x[(size_t)m * ldx + t] * w[(size_t)o * in + t];
            float *yo = y + (size_t)m * ldy + o;
            *yo = accumulate ? *yo + s : s;
        }
}

/* The calling thread's enc_kernels_force flags (ENC_KERNELS_AUTO: none). */
static __thread int kernels_forced;

int enc_kernels_force(int flags)
{
    int prev = kernels_forced;
    kernels_forced = flags;
    return prev;
}

void enc_linear_ld(float *y, int ldy, const float *x, int ldx, const float *w, int rows, int in, int out,
                   int accumulate)
{
    int skinny = rows <= SKINNY_MAX_ROWS;
    if (kernels_forced & ENC_KERNELS_SKINNY) skinny = 1;
    else if (kernels_forced & ENC_KERNELS_SGEMM) skinny = 0;
    if (skinny) {
        skinny_gemm(y, ldy, x, ldx, w, rows, in, out, accumulate);
        return;
    }
    /* y[rows, out] = x[rows, in] . w[out, in]^T: w is B^T, read row by row. */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, out, in, 1.0f, x, ldx, w, in,
                accumulate ? 1.0f : 0.0f, y, ldy);
}

void enc_linear(float *y, const float *x, const float *w, int rows, int in, int out, int accumulate)
{
    enc_linear_ld(y, out, x, in, w, rows, in, out, accumulate);
}

/* ---- packed products (AVX-512F) -------------------------------------------
 * Output-first: a micro-tile of up to MR rows x 32 outputs (28 zmm
 * accumulators) runs over k; per k it loads the 32 weights of the panel once and
 * multiplies them with each row's x[m, k], broadcast from a small packed copy of
 * the rows.  Blocking: over k in slices of KC (the panel slice, KC x 32 floats,
 * stays in L1 while every micro-tile of the row block passes), over rows in
 * blocks of up to MC (their packed copy, MC x KC, lives on the stack).  Compiled
 * for AVX-512F by a target attribute and chosen at run time, so the binary runs
 * on any x86-64. */
#define PK_MR 14
/* Up to this many rows (an image's 50 tokens) a k slice of all of them is
 * copied once into the kernel's row buffer (56 KB on the stack). */
#define PK_MC (4 * PK_MR)
static const int pk_group_bytes = 1 << 18, pk_prefetch_floats = 2048;

int enc_packed_supported(void) { return (enc_cpu_features() & ENC_CPU_AVX512) != 0; }

size_t enc_packed_floats(int in, int out)
{
    return (size_t)((out + ENC_PANEL - 1) / ENC_PANEL) * ENC_PANEL * (size_t)in;
}

void enc_pack_weights(float *panels, const float *w, int in, int out)
{
    int np = (out + ENC_PANEL - 1) / ENC_PANEL;
    for (int k0 = 0; k0 < in; k0 += ENC_PACK_KC) {
        int kc = in - k0 < ENC_PACK_KC ? in - k0 : ENC_PACK_KC;
        for (int p = 0; p < np; p++) {
            float *dst = panels + (size_t)np * ENC_PANEL * k0 + (size_t)p * kc * ENC_PANEL;
            for (int k = 0; k < kc; k++)
                for (int j = 0; j < ENC_PANEL; j++) {
                    int o = p * ENC_PANEL + j;
                    dst[(size_t)k * ENC_PANEL + j] = o < out ? w[(size_t)o * in + k0 + k] : 0.0f;
                }
        }
    }
}

int enc_packed_h_supported(void) { return (enc_cpu_features() & ENC_CPU_AVX512_FP16) != 0; }

size_t enc_packed_h_halves(int in, int out)
{
    return (size_t)((out + ENC_PANEL_H - 1) / ENC_PANEL_H) * ENC_PANEL_H * (size_t)in;
}

#if defined(__x86_64__) && defined(__GNUC__) && __GNUC__ >= 12
/* One k row of a panel: dst[64] = half(w[o0 + j][k]), j < cols (the rest 0). */
__attribute__((target("avx512f"))) static void pack_row_h(uint16_t *dst, const float *w, size_t ldw, int cols)
{
    float row[ENC_PANEL_H] __attribute__((aligned(64)));
    for (int j = 0; j < ENC_PANEL_H; j++)
        row[j] = j < cols ? w[(size_t)j * ldw] : 0.0f;
    for (int q = 0; q < ENC_PANEL_H; q += 16)
        _mm256_storeu_si256((__m256i *)(dst + q), _mm512_cvtps_ph(_mm512_load_ps(row + q), _MM_FROUND_TO_NEAREST_INT));
}
#endif

void enc_pack_weights_h(uint16_t *panels, const float *w, int in, int out)
{
    int np = (out + ENC_PANEL_H - 1) / ENC_PANEL_H;
#if defined(__x86_64__) && defined(__GNUC__) && __GNUC__ >= 12
    int fast = enc_packed_supported(); /* AVX-512F converts 16 at a time (same rounding) */
#endif
    for (int k0 = 0; k0 < in; k0 += ENC_PACK_KC_H) {
        int kc = in - k0 < ENC_PACK_KC_H ? in - k0 : ENC_PACK_KC_H;
        for (int p = 0; p < np; p++) {
            uint16_t *dst = panels + (size_t)np * ENC_PANEL_H * k0 + (size_t)p * kc * ENC_PANEL_H;
            int cols = out - p * ENC_PANEL_H < ENC_PANEL_H ? out - p * ENC_PANEL_H : ENC_PANEL_H;
            for (int k = 0; k < kc; k++) {
                const float *src = w + (size_t)p * ENC_PANEL_H * in + k0 + k;
#if defined(__x86_64__) && defined(__GNUC__) && __GNUC__ >= 12
                if (fast) {
                    pack_row_h(dst + (size_t)k * ENC_PANEL_H, src, (size_t)in, cols);
                    continue;
                }
#endif
                for (int j = 0; j < ENC_PANEL_H; j++)
                    dst[(size_t)k * ENC_PANEL_H + j] = j < cols ? enc_f32_to_f16(src[(size_t)j * in]) : 0;
            }
        }
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#define PK_TARGET __attribute__((target("avx512f,fma")))

/* y[mr, 32 masked] (+)= a[mr][kc] (rows ENC_PACK_KC apart) . b[kc][32].  load: add
 * to what y holds (accumulate, or a later k slice). */
static inline __attribute__((always_inline)) PK_TARGET void pk_tile(int mr, const float *a, const float *b, int kc,
                                                                   float *y, int ldy, int load, __mmask16 m0,
                                                                   __mmask16 m1, const float *pf, int pf_shift)
{
    __m512 c0[PK_MR], c1[PK_MR];
#pragma GCC unroll 14
    for (int m = 0; m < mr; m++) {
        c0[m] = c1[m] = _mm512_setzero_ps();
        if (load) { /* the outputs, read at the end: on their way during the loop */
            _mm_prefetch((const char *)(y + (size_t)m * ldy), _MM_HINT_T0);
            _mm_prefetch((const char *)(y + (size_t)m * ldy + 16), _MM_HINT_T0);
        }
    }
    for (int k = 0; k < kc; k++) {
        __m512 b0 = _mm512_loadu_ps(b + (size_t)k * 32), b1 = _mm512_loadu_ps(b + (size_t)k * 32 + 16);
        if (pf) { /* weights still in memory: fetch ahead (pk_gemm says where and how fast) */
            if (pf_shift < 0) { /* two lines per k: the rate at which one tile reads its own panel */
                _mm_prefetch((const char *)(pf + (size_t)k * 32), _MM_HINT_T1);
                _mm_prefetch((const char *)(pf + (size_t)k * 32 + 16), _MM_HINT_T1);
            } else if (!(k & ((1 << pf_shift) - 1))) { /* one line every 2^pf_shift k */
                _mm_prefetch((const char *)(pf + (size_t)(k >> pf_shift) * 16), _MM_HINT_T1);
            }
        }
        const float *ak = a + k;
#pragma GCC unroll 14
        for (int m = 0; m < mr; m++) {
            __m512 av = _mm512_set1_ps(ak[m * ENC_PACK_KC]); /* one base register, fixed offsets */
            c0[m] = _mm512_fmadd_ps(av, b0, c0[m]);
            c1[m] = _mm512_fmadd_ps(av, b1, c1[m]);
        }
    }
#pragma GCC unroll 14
    for (int m = 0; m < mr; m++) {
        float *ym = y + (size_t)m * ldy;
        if (load) {
            c0[m] = _mm512_add_ps(c0[m], _mm512_maskz_loadu_ps(m0, ym));
            c1[m] = _mm512_add_ps(c1[m], _mm512_maskz_loadu_ps(m1, ym + 16));
        }
        _mm512_mask_storeu_ps(ym, m0, c0[m]);
        _mm512_mask_storeu_ps(ym + 16, m1, c1[m]);
    }
}

#define PK_TILE_FN(MR)                                                                                    \
    static PK_TARGET void pk_tile_##MR(const float *a, const float *b, int kc, float *y, int ldy, int load, \
                                       __mmask16 m0, __mmask16 m1, const float *pf, int pf_shift)         \
    {                                                                                                     \
        if (pf)                                                                                           \
            pk_tile(MR, a, b, kc, y, ldy, load, m0, m1, pf, pf_shift);                                    \
        else                                                                                              \
            pk_tile(MR, a, b, kc, y, ldy, load, m0, m1, NULL, 0);                                         \
    }
PK_TILE_FN(1) PK_TILE_FN(2) PK_TILE_FN(3) PK_TILE_FN(4) PK_TILE_FN(5) PK_TILE_FN(6) PK_TILE_FN(7)
PK_TILE_FN(8) PK_TILE_FN(9) PK_TILE_FN(10) PK_TILE_FN(11) PK_TILE_FN(12) PK_TILE_FN(13) PK_TILE_FN(14)
typedef void (*pk_tile_fn)(const float *, const float *, int, float *, int, int, __mmask16, __mmask16,
                           const float *, int);
static const pk_tile_fn pk_tiles[PK_MR + 1] = {NULL,       pk_tile_1,  pk_tile_2,  pk_tile_3,  pk_tile_4,
                                               pk_tile_5,  pk_tile_6,  pk_tile_7,  pk_tile_8,  pk_tile_9,
                                               pk_tile_10, pk_tile_11, pk_tile_12, pk_tile_13, pk_tile_14};

/* a[mr][ENC_PACK_KC] = x[mr rows, ldx apart][kc]: the tile's rows side by side
 * at a fixed stride, so that the kernel addresses them from one register. */
static void pk_copy_rows(float *a, const float *x, int ldx, int mr, int kc)
{
    for (int m = 0; m < mr; m++)
        memcpy(a + (size_t)m * ENC_PACK_KC, x + (size_t)m * ldx, (size_t)kc * sizeof(float));
}

/* Output panels [p0, p1) of y[rows, out] (+)= x . w^T from the panels.  Loop
 * order: k slices of ENC_PACK_KC (the packing's); groups of panels (slices of
 * kc x 32 each, adjacent in memory) that stay in L2; row tiles of PK_MR (the
 * tile's rows, kc x PK_MR, stay in L1 while the group's weight slices pass;
 * copied side by side once per slice for up to PK_MC rows, else once per group
 * and tile).  The first row tile of a group is the first to read its weights,
 * the others find them in L2.
 *
 * Prefetch: with one row tile (a text query, a few rows) each tile fetches its
 * own panel's stream pk_prefetch_floats ahead, at the rate it reads it.  With
 * several (an image: 50 rows, 4 tiles) that would make the memory traffic
 * bursty: the first tile asks for the weights faster than one core streams
 * them (~27 GB/s at 14 rows) while the other tiles ask for nothing.  So there
 * every tile call of a group also fetches a share of the NEXT group (the rest
 * of this slice, or the next slice's first group), spread over its k steps:
 * the weights stream at an even rate during the whole group and the next
 * group's first tile finds them in L2.  Only the first group of a call has no
 * one before it: its first tile fetches its own stream as above. */
static PK_TARGET void pk_gemm(float *y, int ldy, const float *x, int ldx, const float *panels, int rows, int in,
                              int out, int accumulate, int p0, int p1, const float *after, size_t after_floats)
{
    float abuf[PK_MC * ENC_PACK_KC] __attribute__((aligned(64)));
    int np = (out + ENC_PANEL - 1) / ENC_PANEL;
    int group = pk_group_bytes / (ENC_PACK_KC * ENC_PANEL * (int)sizeof(float));
    group = group < 1 ? 1 : group;
    int tiles = (rows + PK_MR - 1) / PK_MR;
    int all_rows = rows <= PK_MC; /* every row of a slice copied once, not once per group */
    for (int k0 = 0; k0 < in; k0 += ENC_PACK_KC) {
        int kc = in - k0 < ENC_PACK_KC ? in - k0 : ENC_PACK_KC;
        int load = accumulate || k0 > 0;
        const float *slice = panels + (size_t)np * ENC_PANEL * k0;
        if (all_rows)
            pk_copy_rows(abuf, x + k0, ldx, rows, kc);
        for (int g0 = p0; g0 < p1; g0 += group) {
            int g1 = p1 - g0 < group ? p1 : g0 + group;
            int first = k0 == 0 && g0 == p0;
            /* next: the floats the group after this one reads (none after the last) */
            const float *next = NULL;
            size_t next_floats = 0;
            if (g1 < p1) {
                next = slice + (size_t)g1 * kc * ENC_PANEL;
                next_floats = (size_t)((p1 - g1 < group ? p1 - g1 : group)) * kc * ENC_PANEL;
            } else if (k0 + ENC_PACK_KC < in) {
                int nkc = in - k0 - ENC_PACK_KC < ENC_PACK_KC ? in - k0 - ENC_PACK_KC : ENC_PACK_KC;
                next = panels + (size_t)np * ENC_PANEL * (k0 + ENC_PACK_KC) + (size_t)p0 * nkc * ENC_PANEL;
                next_floats = (size_t)((p1 - p0 < group ? p1 - p0 : group)) * nkc * ENC_PANEL;
            } else if (after && p1 == np) { /* the end of the product: the next one's first group */
                size_t group_floats = (size_t)group * ENC_PACK_KC * ENC_PANEL;
                next = after;
                next_floats = after_floats < group_floats ? after_floats : group_floats;
            }
            /* the calls that share the next group's fetch (the first tile of the first
             * group fetches its own weights), each `share` floats (whole lines) at one
             * line every 2^shift k (shift -1: two lines per k) */
            int sharing = (tiles - (first ? 1 : 0)) * (g1 - g0);
            size_t share = 0;
            int shift = -1;
            if (tiles > 1 && next && sharing > 0) {
                share = (next_floats + (size_t)sharing - 1) / (size_t)sharing;
                share = (share + 15) & ~(size_t)15;
                size_t lines = share / 16;
                if (lines <= (size_t)kc)
                    for (shift = 0; (size_t)(kc >> (shift + 1)) >= lines && (kc >> (shift + 1)) > 0; shift++)
                        ;
            }
            for (int t = 0, call = 0; t < rows; t += PK_MR) {
                int mr = rows - t < PK_MR ? rows - t : PK_MR;
                const float *a = abuf + (all_rows ? (size_t)t * ENC_PACK_KC : 0);
                if (!all_rows)
                    pk_copy_rows(abuf, x + (size_t)t * ldx + k0, ldx, mr, kc);
                for (int p = g0; p < g1; p++) {
                    const float *b = slice + (size_t)p * kc * ENC_PANEL;
                    int cols = out - p * ENC_PANEL;
                    __mmask16 m0 = cols >= 16 ? 0xffff : (__mmask16)((1u << cols) - 1);
                    __mmask16 m1 = cols >= 32 ? 0xffff : cols <= 16 ? 0 : (__mmask16)((1u << (cols - 16)) - 1);
                    const float *pf = NULL;
                    int pf_shift = -1;
                    if (tiles == 1 || (first && t == 0)) {
                        pf = b + pk_prefetch_floats;
                    } else if (share && (size_t)call * share < next_floats) {
                        pf = next + (size_t)call * share;
                        pf_shift = shift;
                        call++;
                    }
                    pk_tiles[mr](a, b, kc, y + (size_t)t * ldy + (size_t)p * ENC_PANEL, ldy, load, m0, m1, pf,
                                 pf_shift);
                }
            }
        }
    }
}
#endif

#if defined(__x86_64__) && defined(__GNUC__) && __GNUC__ >= 12
/* ---- the fp16 kernel (enc_linear_packed_h) ----------------------------------
 * pk_tile's design at twice the lanes: up to PK_MR rows x 64 outputs in 28 half
 * accumulators; per k, the panel's 64 weights in two loads and each row's input
 * broadcast straight from memory into the FMA.  At the end of the slice the
 * half sums are widened and added to y in fp32, so no sum runs in half over
 * more than ENC_PACK_KC_H products. */
#define PH_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512fp16,fma")))

static inline __attribute__((always_inline)) PH_TARGET void ph_tile(int mr, const _Float16 *a, const _Float16 *b,
                                                                   int kc, float *y, int ldy, int load,
                                                                   uint64_t cols_mask, const _Float16 *pf)
{
    __m512h c0[PK_MR], c1[PK_MR];
#pragma GCC unroll 14
    for (int m = 0; m < mr; m++) {
        c0[m] = c1[m] = _mm512_setzero_ph();
        if (load) {
            _mm_prefetch((const char *)(y + (size_t)m * ldy), _MM_HINT_T0);
            _mm_prefetch((const char *)(y + (size_t)m * ldy + 16), _MM_HINT_T0);
            _mm_prefetch((const char *)(y + (size_t)m * ldy + 32), _MM_HINT_T0);
            _mm_prefetch((const char *)(y + (size_t)m * ldy + 48), _MM_HINT_T0);
        }
    }
    for (int k = 0; k < kc; k++) {
        __m512h b0 = _mm512_loadu_ph(b + (size_t)k * 64), b1 = _mm512_loadu_ph(b + (size_t)k * 64 + 32);
        if (pf)
            _mm_prefetch((const char *)(pf + (size_t)k * 64), _MM_HINT_T1);
        const _Float16 *ak = a + k;
#pragma GCC unroll 14
        for (int m = 0; m < mr; m++) {
            /* the input broadcast inside the FMA ({1to32}): GCC 12 would load it
             * with vpbroadcastw, a shuffle-port uop that competes with the FMAs */
            __asm__("vfmadd231ph %2%{1to32%}, %1, %0" : "+v"(c0[m]) : "v"(b0), "m"(ak[m * ENC_PACK_KC_H]));
            __asm__("vfmadd231ph %2%{1to32%}, %1, %0" : "+v"(c1[m]) : "v"(b1), "m"(ak[m * ENC_PACK_KC_H]));
        }
    }
    __mmask16 mk[4] = {(__mmask16)cols_mask, (__mmask16)(cols_mask >> 16), (__mmask16)(cols_mask >> 32),
                       (__mmask16)(cols_mask >> 48)};
#pragma GCC unroll 14
    for (int m = 0; m < mr; m++) {
        float *ym = y + (size_t)m * ldy;
        __m512i i0 = _mm512_castph_si512(c0[m]), i1 = _mm512_castph_si512(c1[m]);
        __m512 f[4] = {_mm512_cvtxph_ps(_mm256_castsi256_ph(_mm512_castsi512_si256(i0))),
                       _mm512_cvtxph_ps(_mm256_castsi256_ph(_mm512_extracti64x4_epi64(i0, 1))),
                       _mm512_cvtxph_ps(_mm256_castsi256_ph(_mm512_castsi512_si256(i1))),
                       _mm512_cvtxph_ps(_mm256_castsi256_ph(_mm512_extracti64x4_epi64(i1, 1)))};
        for (int q = 0; q < 4; q++) {
            if (load)
                f[q] = _mm512_add_ps(f[q], _mm512_maskz_loadu_ps(mk[q], ym + 16 * q));
            _mm512_mask_storeu_ps(ym + 16 * q, mk[q], f[q]);
        }
    }
}

#define PH_TILE_FN(MR)                                                                                      \
    static PH_TARGET void ph_tile_##MR(const _Float16 *a, const _Float16 *b, int kc, float *y, int ldy,      \
                                       int load, uint64_t cols_mask, const _Float16 *pf)                    \
    {                                                                                                       \
        if (pf)                                                                                             \
            ph_tile(MR, a, b, kc, y, ldy, load, cols_mask, pf);                                             \
        else                                                                                                \
            ph_tile(MR, a, b, kc, y, ldy, load, cols_mask, NULL);                                           \
    }
PH_TILE_FN(1) PH_TILE_FN(2) PH_TILE_FN(3) PH_TILE_FN(4) PH_TILE_FN(5) PH_TILE_FN(6) PH_TILE_FN(7)
PH_TILE_FN(8) PH_TILE_FN(9) PH_TILE_FN(10) PH_TILE_FN(11) PH_TILE_FN(12) PH_TILE_FN(13) PH_TILE_FN(14)
typedef void (*ph_tile_fn)(const _Float16 *, const _Float16 *, int, float *, int, int, uint64_t,
                           const _Float16 *);
static const ph_tile_fn ph_tiles[PK_MR + 1] = {NULL,       ph_tile_1,  ph_tile_2,  ph_tile_3,  ph_tile_4,
                                               ph_tile_5,  ph_tile_6,  ph_tile_7,  ph_tile_8,  ph_tile_9,
                                               ph_tile_10, ph_tile_11, ph_tile_12, ph_tile_13, ph_tile_14};

/* a[mr][ENC_PACK_KC_H] = half(x[mr rows, ldx apart][kc]), round to nearest even. */
static PH_TARGET void ph_copy_rows(_Float16 *a, const float *x, int ldx, int mr, int kc)
{
    for (int m = 0; m < mr; m++) {
        const float *xm = x + (size_t)m * ldx;
        _Float16 *am = a + (size_t)m * ENC_PACK_KC_H;
        for (int k = 0; k < kc; k += 16) {
            __mmask16 mk = kc - k >= 16 ? 0xffff : (__mmask16)((1u << (kc - k)) - 1);
            __m256i h = _mm512_cvtps_ph(_mm512_maskz_loadu_ps(mk, xm + k), _MM_FROUND_TO_NEAREST_INT);
            _mm256_mask_storeu_epi16(am + k, mk, h);
        }
    }
}

/* pk_gemm for the fp16 panels: output panels [p0, p1) of ENC_PANEL_H. */
static PH_TARGET void ph_gemm(float *y, int ldy, const float *x, int ldx, const _Float16 *panels, int rows, int in,
                              int out, int accumulate, int p0, int p1)
{
    _Float16 abuf[PK_MR * ENC_PACK_KC_H] __attribute__((aligned(64)));
    int np = (out + ENC_PANEL_H - 1) / ENC_PANEL_H;
    int group = pk_group_bytes / (ENC_PACK_KC_H * ENC_PANEL_H * (int)sizeof(_Float16));
    group = group < 1 ? 1 : group;
    for (int k0 = 0; k0 < in; k0 += ENC_PACK_KC_H) {
        int kc = in - k0 < ENC_PACK_KC_H ? in - k0 : ENC_PACK_KC_H;
        int load = accumulate || k0 > 0;
        const _Float16 *slice = panels + (size_t)np * ENC_PANEL_H * k0;
        for (int g0 = p0; g0 < p1; g0 += group) {
            int g1 = p1 - g0 < group ? p1 : g0 + group;
            for (int t = 0; t < rows; t += PK_MR) {
                int mr = rows - t < PK_MR ? rows - t : PK_MR;
                ph_copy_rows(abuf, x + (size_t)t * ldx + k0, ldx, mr, kc);
                for (int p = g0; p < g1; p++) {
                    const _Float16 *b = slice + (size_t)p * kc * ENC_PANEL_H;
                    int cols = out - p * ENC_PANEL_H;
                    uint64_t mask = cols >= 64 ? ~(uint64_t)0 : ((uint64_t)1 << cols) - 1;
                    ph_tiles[mr](abuf, b, kc, y + (size_t)t * ldy + (size_t)p * ENC_PANEL_H, ldy, load, mask,
                                 t == 0 ? b + 2 * pk_prefetch_floats : NULL);
                }
            }
        }
    }
}
#define UMG_HAVE_PH 1
#endif

/* ---- helper threads for one stream of products ----------------------------
 * With enc_set_threads(n > 1) the output panels of a product are shared out in
 * small chunks, claimed one at a time, between the caller and up to n - 1
 * helper threads (created once, by enc_kernels_set_threads, never during a
 * forward pass).  The caller never waits for a helper that has not started
 * (on a busy machine it may not run for a while): it computes every chunk left,
 * closes the job, and waits only for chunks a helper already holds.  One product
 * at a time uses the helpers; a caller that finds them busy (two runs on two
 * threads) computes its product alone. */
#define PK_MAX_THREADS 64

typedef struct pk_job {
    float *y;
    const float *x;
    const void *panels; /* float (fp32 panels) or _Float16 (half: fp16 panels) */
    int ldy, ldx, rows, in, out, accumulate, np, chunk, half;
    const void *after; /* the weights the next product reads first (enc_packed_prefetch_after), or NULL */
    size_t after_bytes;
    void (*range)(const void *ctx, int p0, int p1); /* enc_kernels_parallel's job, else NULL */
    const void *ctx;
} pk_job;

static struct {
    pthread_mutex_t lock;  /* guards everything below */
    pthread_cond_t start, done;
    pthread_mutex_t busy;  /* held by the caller whose product the helpers run */
    int helpers;           /* running helper threads */
    int wanted;            /* threads a product may use (enc_set_threads) */
    unsigned long generation;
    int open;              /* the current job still takes helpers */
    unsigned long active;  /* helpers inside the current job (polled without the lock: pk_poll) */
    int next;              /* next unclaimed panel (atomic) */
    pk_job job;
    unsigned long born[PK_MAX_THREADS]; /* the generation when each helper was created */
} pk_pool = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER,
             PTHREAD_MUTEX_INITIALIZER, 0, 1, 0, 0, 0, 0, {0}, {0}};

#if defined(__x86_64__) && defined(__GNUC__)
/* Output panels [p0, p1) of the job, through the kernel of its panels' type. */
static void pk_gemm_range(const pk_job *j, int p0, int p1)
{
    if (j->range) {
        j->range(j->ctx, p0, p1);
        return;
    }
#ifdef UMG_HAVE_PH
    if (j->half) {
        ph_gemm(j->y, j->ldy, j->x, j->ldx, j->panels, j->rows, j->in, j->out, j->accumulate, p0, p1);
        return;
    }
#endif
    pk_gemm(j->y, j->ldy, j->x, j->ldx, j->panels, j->rows, j->in, j->out, j->accumulate, p0, p1, j->after,
            j->after_bytes / sizeof(float));
}

/* Claim chunks of panels until none is left. */
static void pk_run_chunks(const pk_job *j)
{
    for (;;) {
        int p0 = __atomic_fetch_add(&pk_pool.next, j->chunk, __ATOMIC_RELAXED);
        if (p0 >= j->np)
            return;
        pk_gemm_range(j, p0, p0 + j->chunk < j->np ? p0 + j->chunk : j->np);
    }
}

/* Poll up to PK_SPIN_NS until (*v == x) == want_equal.  A forward pass issues
 * its products back to back, tens of microseconds apart; a futex wake-up in
 * this VM costs about as much, so helpers (for the next job) and the caller
 * (for helpers still in its job) poll briefly before they sleep on the
 * condition variable, which stays the correctness path. */
#define PK_SPIN_NS 50000

static uint64_t pk_now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static void pk_poll(const unsigned long *v, unsigned long x, int want_equal)
{
    uint64_t end = pk_now_ns() + PK_SPIN_NS;
    for (int i = 0; (__atomic_load_n(v, __ATOMIC_ACQUIRE) == x) != want_equal; i++) {
        _mm_pause();
        if ((i & 63) == 63 && pk_now_ns() > end)
            return;
    }
}

static void *pk_helper(void *arg)
{
    int index = (int)(intptr_t)arg; /* 1 .. helpers */
    pthread_mutex_lock(&pk_pool.lock);
    unsigned long seen = pk_pool.born[index]; /* a job published before this thread ran is still its own */
    for (;;) {
        if (pk_pool.generation == seen) {
            pthread_mutex_unlock(&pk_pool.lock);
            pk_poll(&pk_pool.generation, seen, 0);
            pthread_mutex_lock(&pk_pool.lock);
        }
        while (pk_pool.generation == seen)
            pthread_cond_wait(&pk_pool.start, &pk_pool.lock);
        seen = pk_pool.generation;
        if (!pk_pool.open)
            continue; /* woke too late: the caller has done it all */
        __atomic_add_fetch(&pk_pool.active, 1, __ATOMIC_RELAXED);
        pk_job job = pk_pool.job;
        pthread_mutex_unlock(&pk_pool.lock);
        pk_run_chunks(&job);
        pthread_mutex_lock(&pk_pool.lock);
        if (__atomic_sub_fetch(&pk_pool.active, 1, __ATOMIC_RELEASE) == 0 && !pk_pool.open)
            pthread_cond_signal(&pk_pool.done);
    }
    return NULL;
}
#endif

void enc_kernels_set_threads(int n)
{
    n = n < 1 ? 1 : n > PK_MAX_THREADS ? PK_MAX_THREADS : n;
    pthread_mutex_lock(&pk_pool.lock);
#if defined(__x86_64__) && defined(__GNUC__)
    /* every x86-64 CPU: the int8 products share out their panels too */
    while (pk_pool.helpers < n - 1) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pk_pool.born[pk_pool.helpers + 1] = pk_pool.generation;
        int rc = pthread_create(&t, &attr, pk_helper, (void *)(intptr_t)(pk_pool.helpers + 1));
        pthread_attr_destroy(&attr);
        if (rc)
            break; /* fewer helpers: products use what there is */
        pk_pool.helpers++;
    }
#endif
    pk_pool.wanted = n;
    pthread_mutex_unlock(&pk_pool.lock);
}

/* The calling thread's cap on its products' threads (0: none). */
static __thread int pk_thread_cap;

int enc_kernels_cap_threads(int n)
{
    int prev = pk_thread_cap;
    pk_thread_cap = n > 0 ? n : 0;
    return prev;
}

#if defined(__x86_64__) && defined(__GNUC__)
/* Run one product, shared with the helper threads when it is worth a wake-up. */
static void pk_run(pk_job *job)
{
    /* Share only products worth a wake-up (~10 us): a few MFLOP and up. */
    int parts = __atomic_load_n(&pk_pool.wanted, __ATOMIC_RELAXED);
    if (pk_thread_cap > 0 && pk_thread_cap < parts)
        parts = pk_thread_cap;
    if (parts > 1 && (double)job->rows * job->in * job->out >= 1 << 21 && job->np >= 2 &&
        pthread_mutex_trylock(&pk_pool.busy) == 0) {
        pthread_mutex_lock(&pk_pool.lock);
        parts = parts < pk_pool.helpers + 1 ? parts : pk_pool.helpers + 1;
        /* about 4 chunks per thread: late helpers leave little to wait for.  No
         * minimum size: with 4-panel chunks the 12 fp16 panels of a 768-wide
         * product made 3 chunks, 2 for one thread and 1 for the other (1.5x). */
        job->chunk = (job->np + 4 * parts - 1) / (4 * parts);
        pk_pool.job = *job;
        pk_pool.next = 0;
        pk_pool.open = parts > 1;
        __atomic_add_fetch(&pk_pool.generation, 1, __ATOMIC_RELEASE); /* helpers may poll it (pk_poll) */
        pthread_cond_broadcast(&pk_pool.start);
        pthread_mutex_unlock(&pk_pool.lock);
        pk_run_chunks(job);
        pthread_mutex_lock(&pk_pool.lock);
        pk_pool.open = 0;
        if (pk_pool.active > 0) {
            pthread_mutex_unlock(&pk_pool.lock);
            pk_poll(&pk_pool.active, 0, 1);
            pthread_mutex_lock(&pk_pool.lock);
        }
        while (pk_pool.active > 0)
            pthread_cond_wait(&pk_pool.done, &pk_pool.lock);
        pthread_mutex_unlock(&pk_pool.lock);
        pthread_mutex_unlock(&pk_pool.busy);
        return;
    }
    pk_gemm_range(job, 0, job->np);
}
#endif

void enc_kernels_parallel(int np, int rows, int in, int out, void (*fn)(const void *ctx, int p0, int p1),
                          const void *ctx)
{
    if (np <= 0 || rows <= 0)
        return;
#if defined(__x86_64__) && defined(__GNUC__)
    pk_job job = {.rows = rows, .in = in, .out = out, .np = np, .range = fn, .ctx = ctx};
    pk_run(&job);
#else
    fn(ctx, 0, np);
#endif
}

/* The calling thread's enc_packed_prefetch_after, for its next product. */
static __thread const void *pk_after;
static __thread size_t pk_after_bytes;

void enc_packed_prefetch_after(const void *weights, size_t bytes)
{
    pk_after = weights;
    pk_after_bytes = weights ? bytes : 0;
}

void enc_linear_packed(float *y, int ldy, const float *x, int ldx, const float *w, const float *panels, int rows,
                       int in, int out, int accumulate)
{
    const void *after = pk_after;
    size_t after_bytes = pk_after_bytes;
    pk_after = NULL, pk_after_bytes = 0; /* for this product only */
#if defined(__x86_64__) && defined(__GNUC__)
    if (panels && !(kernels_forced & ENC_KERNELS_NO_PACKED) && enc_packed_supported() && rows > 0 && in > 0 &&
        out > 0) {
        pk_job job = {y, x, panels, ldy, ldx, rows, in, out, accumulate, (out + ENC_PANEL - 1) / ENC_PANEL, 0, 0,
                      after, after_bytes, NULL, NULL};
        pk_run(&job);
        return;
    }
#else
    (void)after, (void)after_bytes;
#endif
    enc_linear_ld(y, ldy, x, ldx, w, rows, in, out, accumulate);
}

void enc_linear_packed_h(float *y, int ldy, const float *x, int ldx, const float *w, const uint16_t *panels,
                         int rows, int in, int out, int accumulate)
{
    pk_after = NULL, pk_after_bytes = 0; /* the fp16 kernel does not use it */
#ifdef UMG_HAVE_PH
    if (panels && enc_packed_h_supported() && rows > 0 && in > 0 && out > 0) {
        pk_job job = {y, x, panels, ldy, ldx, rows, in, out, accumulate, (out + ENC_PANEL_H - 1) / ENC_PANEL_H, 0,
                      1, NULL, 0, NULL, NULL};
        pk_run(&job);
        return;
    }
#else
    (void)panels;
#endif
    enc_linear_ld(y, ldy, x, ldx, w, rows, in, out, accumulate);
}

ENC_CLONES void enc_add_bias(float *restrict y, const float *restrict b, int rows, int dim)
{
    for (int r = 0; r < rows; r++) {
        float *restrict yr = y + (size_t)r * dim;
        for (int i = 0; i < dim; i++)
            yr[i] += b[i];
    }
}

ENC_CLONES void enc_add_bias_scale(float *restrict y, const float *restrict b, float scale, int rows, int dim)
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

ENC_CLONES void enc_quick_gelu(float *restrict y, const float *restrict x, int n)
{
    for (int i = 0; i < n; i++)
        y[i] = quick_gelu1(x[i]);
}

ENC_CLONES void enc_gelu(float *restrict y, const float *restrict x, int n)
{
    for (int i = 0; i < n; i++)
        y[i] = gelu1(x[i]);
}

ENC_CLONES void enc_add_bias_act(float *restrict y, const float *restrict b, int act, int rows, int dim)
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

ENC_CLONES void enc_layer_norm(float *y, int ldy, const float *x, int ldx, const float *w, const float *b, float eps,
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
ENC_CLONES void enc_softmax(float *restrict s, int n)
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
            enc_softmax(row, n);
            if (n < T)
                memset(row + n, 0, (size_t)(T - n) * sizeof *row);
        }
        /* out_h[T, d] = scores[T, T] . v_h[T, d] */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, d, T, 1.0f, scores, T, vh, H, 0.0f,
                    out + h * d, H);
    }
}

void enc_self_attention(float *out, const float *a, const float *b, const float *v, float scale, float *scores,
                        float *scores2, int T, int H, int heads)
{
    int d = H / heads;
    for (int h = 0; h < heads; h++) {
        /* scores[T, T] = softmax(scale a_h a_h^T) row by row (+ the same of b_h) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, d, scale, a + h * d, H, a + h * d, H, 0.0f,
                    scores, T);
        for (int i = 0; i < T; i++)
            enc_softmax(scores + (size_t)i * T, T);
        if (b) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, d, scale, b + h * d, H, b + h * d, H,
                        0.0f, scores2, T);
            for (int i = 0; i < T; i++)
                enc_softmax(scores2 + (size_t)i * T, T);
            size_t tt = (size_t)T * T;
            for (size_t e = 0; e < tt; e++)
                scores[e] += scores2[e];
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, d, T, 1.0f, scores, T, v + h * d, H, 0.0f,
                    out + h * d, H);
    }
}

/* torch's upsample_bicubic2d: Keys' cubic convolution with a = -0.75. */
static void cubic_weights(float t, float w[4])
{
    const float A = -0.75f;
    float x1 = t + 1.0f, x2 = 1.0f - t, x3 = 2.0f - t;
    w[0] = ((A * x1 - 5.0f * A) * x1 + 8.0f * A) * x1 - 4.0f * A;
    w[1] = ((A + 2.0f) * t - (A + 3.0f)) * t * t + 1.0f;
    w[2] = ((A + 2.0f) * x2 - (A + 3.0f)) * x2 * x2 + 1.0f;
    w[3] = ((A * x3 - 5.0f * A) * x3 + 8.0f * A) * x3 - 4.0f * A;
}

/* For each output index: the 4 source indices (clamped) and their weights.
 * The source coordinate is computed in float as torch does (not clamped at 0
 * for cubic). */
static void cubic_taps(int in, int out, int i, int idx[4], float w[4])
{
    float scale = (float)in / (float)out;
    float src = scale * ((float)i + 0.5f) - 0.5f;
    float fl = floorf(src);
    cubic_weights(src - fl, w);
    for (int k = 0; k < 4; k++) {
        int j = (int)fl - 1 + k;
        idx[k] = j < 0 ? 0 : j > in - 1 ? in - 1 : j;
    }
}

void enc_resize_grid_bicubic(float *dst, int g2, const float *src, int g, int dim, float *tmp)
{
    /* along x: tmp[g rows][g2 cols][dim] */
    for (int x = 0; x < g2; x++) {
        int idx[4];
        float w[4];
        cubic_taps(g, g2, x, idx, w);
        for (int y = 0; y < g; y++) {
            float *o = tmp + ((size_t)y * g2 + x) * dim;
            for (int c = 0; c < dim; c++) {
                float s = 0;
                for (int k = 0; k < 4; k++)
                    s += w[k] * src[((size_t)y * g + idx[k]) * dim + c];
                o[c] = s;
            }
        }
    }
    /* along y: dst[g2 rows][g2 cols][dim] */
    for (int y = 0; y < g2; y++) {
        int idx[4];
        float w[4];
        cubic_taps(g, g2, y, idx, w);
        for (int x = 0; x < g2; x++) {
            float *o = dst + ((size_t)y * g2 + x) * dim;
            for (int c = 0; c < dim; c++) {
                float s = 0;
                for (int k = 0; k < 4; k++)
                    s += w[k] * tmp[((size_t)idx[k] * g2 + x) * dim + c];
                o[c] = s;
            }
        }
    }
}

void enc_f16_to_f32(float *dst, const uint16_t *src, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        dst[i] = umg_f16_to_f32(src[i]);
}

void enc_bf16_to_f32(float *dst, const uint16_t *src, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++) {
        uint32_t bits = (uint32_t)src[i] << 16;
        memcpy(&dst[i], &bits, sizeof bits);
    }
}

uint16_t enc_f32_to_f16(float f) { return umg_f32_to_f16(f); }

uint16_t enc_f32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    if ((x & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)(x >> 16 | 0x40);
    return (uint16_t)((x + 0x7fffu + (x >> 16 & 1)) >> 16);
}
