/* enc_kernels.h - internal: the numeric kernels of the CLIP forward passes.
 *
 * Conventions: row-major; activations are [rows, dim] with rows = batch x tokens;
 * weights are the checkpoint's [out, in] matrices, used as B^T by sgemm so that
 * they are read contiguously.  Every output buffer is written first in the
 * argument list.  Nothing here allocates. */
#ifndef ENC_KERNELS_H
#define ENC_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/* ---- run-time dispatch ------------------------------------------------------
 * What this CPU (and its OS: XCR0) runs, detected once from cpuid; the kernels
 * below choose by it on every call; enc_cpu_limit caps it.  The elementwise loops (layer norm, softmax, GELU, bias) and the
 * few-row fp32 product are compiled three times (x86-64-v4, -v3, baseline) and
 * picked by the dynamic loader from the CPU alone (ifunc), not capped. */
enum enc_cpu_feature {
    ENC_CPU_AVX2 = 1,          /* AVX2 + FMA + F16C */
    ENC_CPU_AVX512 = 2,        /* AVX-512 F/BW/VL/DQ, zmm state saved by the OS */
    ENC_CPU_AVX512_VNNI = 4,   /* vpdpbusd on zmm */
    ENC_CPU_AVX_VNNI = 8,      /* vpdpbusd on ymm (VEX: Alder Lake and later) */
    ENC_CPU_AVX512_BF16 = 16,  /* vdpbf16ps */
    ENC_CPU_AVX512_FP16 = 32,  /* vfmadd231ph */
    ENC_CPU_AMX_INT8 = 64,     /* AMX tiles, tdpbssd; the OS granted the tile state (arch_prctl) */
    ENC_CPU_AMX_BF16 = 128,    /* AMX tiles, tdpbf16ps; likewise */
    ENC_CPU_NEON = 256,        /* aarch64 Advanced SIMD (every ARMv8-A CPU) */
    ENC_CPU_NEON_DOTPROD = 512, /* aarch64 sdot (ARMv8.2 dotprod, HWCAP_ASIMDDP) */
};
/* The enc_cpu_feature bits this process uses: detected & the limit. */
unsigned enc_cpu_features(void);
/* Restrict the features to mask (tests compare the paths on one CPU); returns
 * the previous mask (~0u: none).  Not while another thread computes; weights
 * packed for a feature stay usable (the kernels fall back per call). */
unsigned enc_cpu_limit(unsigned mask);
/* enc_cpu_limit by name: c (no vector ISA), avx2, avx2-novnni, avx512-novnni,
 * avx512-noamx (aarch64: c, neon).  The programs apply their UMG_CPU
 * environment value with it (umgdb, bench_encoder: working around a bad
 * kernel, measuring a smaller CPU); the library never reads the environment.
 * UMG_EINVAL (nothing changed) for another name. */
int enc_cpu_limit_named(const char *name);
/* "avx2+fma avx512 avx512-vnni ..." for the bits of f; the calling thread's
 * buffer, valid until its next call. */
const char *enc_cpu_describe(unsigned f);

/* y[rows, out] (+)= x[rows, in] . w[out, in]^T.  accumulate: add to y instead of
 * overwriting it (the residual stream). */
void enc_linear(float *y, const float *x, const float *w, int rows, int in, int out, int accumulate);
/* The same with explicit leading dimensions (rows of x ldx apart, of y ldy apart). */
void enc_linear_ld(float *y, int ldy, const float *x, int ldx, const float *w, int rows, int in, int out,
                   int accumulate);

/* Products with at most 24 rows skip sgemm (which repacks the weights on every
 * call) for a kernel that streams the weights once (enc_kernels_force below
 * compares the paths). */

/* ---- pre-packed weights (AVX-512) ------------------------------------------
 * On CPUs with AVX-512F the model keeps, next to each [out, in] weight it
 * multiplies with, a read-only copy in panel layout:
 *   slices of ENC_PACK_KC inputs (the last one shorter), one after the other;
 *   in each, panels of ENC_PANEL outputs, one after the other;
 *   in each, for every input k of the slice, the panel's ENC_PANEL weights:
 *   panels[s][p][k][j] = w[p * ENC_PANEL + j][s * ENC_PACK_KC + k]
 * (outputs beyond out are zero), made once at load.  The kernel then reads the
 * weights in one sequential stream.  Memory: ceil(out / 16) * 16
 * * in floats per tensor, i.e. about one more F32 copy of every linear weight
 * (ViT-B/32: ~500 MB).  The kernel keeps a block of up to 14 rows x 32 outputs
 * in registers and broadcasts the inputs, so each weight is read once per 14 rows
 * (once in all for a text query), contiguously. */
#define ENC_PANEL 32
#define ENC_PACK_KC 256

/* 1 when this CPU runs the packed kernels (AVX-512F), else 0 (then nothing is
 * packed and enc_linear_packed is enc_linear_ld). */
int enc_packed_supported(void);
/* Floats of the packed copy of an [out, in] weight. */
size_t enc_packed_floats(int in, int out);
/* panels[enc_packed_floats(in, out)] = w[out, in] in panel layout. */
void enc_pack_weights(float *panels, const float *w, int in, int out);

/* enc_linear_ld through the packed kernel when panels is not NULL (and the
 * calling thread has not forced ENC_KERNELS_NO_PACKED), else w through
 * enc_linear_ld.  Same contract:
 *   y[rows, out] (+)= x[rows, in] . w[out, in]^T. */
void enc_linear_packed(float *y, int ldy, const float *x, int ldx, const float *w, const float *panels, int rows,
                       int in, int out, int accumulate);

/* The calling thread's next enc_linear_packed fetches, as it ends, the first
 * bytes of `weights` (a packed copy: the product after it) into L2, so that the
 * weight stream from memory does not stall between two products.  A hint for
 * that one product only (cleared by it); NULL clears it.  Nothing is read
 * through the pointer (prefetches only), so a wrong guess costs bandwidth, not
 * correctness. */
void enc_packed_prefetch_after(const void *weights, size_t bytes);

/* Threads one packed product may use (enc_set_threads calls it): the caller
 * plus n - 1 helper threads, started here once and kept for the life of the
 * process (never started during a forward pass).  Products of two runs on two
 * threads do not share them: the second computes alone. */
void enc_kernels_set_threads(int n);
/* Cap, for the calling thread's products only, the threads they use at n (0: no
 * cap); returns the previous cap, to be restored (enc_run_set_threads). */
int enc_kernels_cap_threads(int n);

/* Force the fp32 kernels the calling thread's products use, for tests and
 * benchmarks that compare the paths (nothing else sets it; each thread starts
 * at ENC_KERNELS_AUTO: panels through the packed kernel, other products of up
 * to 24 rows through the few-rows kernel, larger ones through sgemm).  Flags:
 *   ENC_KERNELS_NO_PACKED  enc_linear_packed ignores the panels it is given
 *   ENC_KERNELS_SKINNY     every unpacked product through the few-rows kernel
 *   ENC_KERNELS_SGEMM      every unpacked product through sgemm
 * Returns the thread's previous flags, to be restored. */
enum enc_kernels_flag {
    ENC_KERNELS_AUTO = 0,
    ENC_KERNELS_NO_PACKED = 1,
    ENC_KERNELS_SKINNY = 2,
    ENC_KERNELS_SGEMM = 4,
};
int enc_kernels_force(int flags);

/* ---- half-precision packed weights (AVX512-FP16), opt-in --------------------
 * The fp16 precision mode (enc_model_open_ex, docs/benchmarks.md): the same
 * output-first design with the weights stored as IEEE half floats, panels of
 * ENC_PANEL_H outputs (two 32-lane fp16 vectors) sliced by ENC_PACK_KC_H inputs:
 *   panels[s][p][k][j] = half(w[p * ENC_PANEL_H + j][s * ENC_PACK_KC_H + k])
 * The activations are rounded to half as they are copied into the row tile, the
 * products and their sums within one slice run in half (twice the lanes per FMA
 * of fp32: 2x the arithmetic rate, half the weight bytes), and each slice's partial
 * sums are added to y in fp32.  So the result is approximate: per product the
 * relative error is a few 1e-3 (it is measured against fp32 in test_kernels), and
 * values must stay within the half range (65504), which CLIP's activations do
 * (OpenAI's CLIP itself runs in fp16 on GPUs).  Not for exactness checks against
 * the reference: fp32 (the default) is. */
#define ENC_PANEL_H 64
#define ENC_PACK_KC_H 128

/* 1 when this CPU runs the fp16 kernel (AVX512-FP16 and AVX512-BW/VL), else 0. */
int enc_packed_h_supported(void);
/* Halves of the fp16 packed copy of an [out, in] weight. */
size_t enc_packed_h_halves(int in, int out);
/* panels[enc_packed_h_halves(in, out)] = half(w[out, in]) in fp16 panel layout
 * (IEEE binary16 bits, round to nearest even). */
void enc_pack_weights_h(uint16_t *panels, const float *w, int in, int out);
/*   y[rows, out] (+)= x[rows, in] . w[out, in]^T  through the fp16 panels (approximate,
 * see above), shared with the helper threads like enc_linear_packed.  Without
 * AVX512-FP16 (or panels NULL) it computes with w in fp32 instead. */
void enc_linear_packed_h(float *y, int ldy, const float *x, int ldx, const float *w, const uint16_t *panels,
                         int rows, int in, int out, int accumulate);

/* ---- int8 and bf16 products (enc_kernels_q.c) ------------------------------
 * Both keep one packed copy of each [out, in] weight, made once at load, in
 * panels of ENC_PANEL_Q outputs over the whole input (no k slices, so that the
 * int8 sums stay exact integers to the end):
 *   int8:  weights quantized per output channel, symmetric: s_o = max_k |w[o][k]|
 *          / 127, q = rint(w * (127 / max)) in [-127, 127] (all 0 when max is 0);
 *          bytes[p][k / 4][j][k % 4] = q[p * 32 + j][k] (in padded to a multiple
 *          of 4 and outputs to a multiple of 32 with zeros), then s_o as floats,
 *          then sum_k q[o][k] as int32 (the u8 offset's compensation below), both
 *          [np * 32].
 *   bf16:  halves[p][k / 2][j][k % 2] = bf16(w[p * 32 + j][k]) (round to nearest
 *          even; in padded to even).
 * The activations are converted per product into the caller's scratch, rows of
 * each tile of ENC_TILE_Q side by side per k group (one broadcast base):
 *   int8:  per row r, s_r = max_k |x[r][k]| / 127, a = rint(x * (127 / max));
 *   bf16:  bf16(x), round to nearest even.
 * int8 product: y[r][o] (+)= (float)(sum_k a[r][k] q[o][k]) * (s_o * s_r), the
 * sum exact in int32 (|sum| <= 127^2 * in < 2^31 for in < 133000) whatever the
 * ISA: AVX-512 VNNI and AVX-VNNI multiply u8 x s8 (vpdpbusd), with a + 128 as
 * the u8 and 128 sum_k q[o][k] subtracted after; AVX2 without VNNI multiplies
 * |a| by q with a's sign (vpsignb, vpmaddubsw: pairs of at most 2 * 127 * 127 =
 * 32258, below the int16 saturation), then widens (vpmaddwd); the C path loops.
 * So every ISA gives bit-identical results (test_kernels checks it against a
 * plain loop).  bf16 product: vdpbf16ps (AVX512-BF16) sums pairs of bf16
 * products into fp32 accumulators; approximate (8-bit mantissas). */
#define ENC_PANEL_Q 32
#define ENC_TILE_Q 14

/* 1 when the int8 kernels run on a vector ISA (AVX2 or better; the plain-C path
 * always works, slowly). */
int enc_q8_fast(void);
/* 1 when this CPU runs the bf16 kernel (AVX512-BF16). */
int enc_bf16_supported(void);
/* Which kernel each precision runs here: a static string ("avx512-vnni", ...). */
const char *enc_q8_kernel_name(void);

/* Bytes of the packed int8 / bf16 copy of an [out, in] weight (multiples of 64). */
size_t enc_q8_bytes(int in, int out);
size_t enc_bf16_bytes(int in, int out);
void enc_pack_weights_q8(void *packed, const float *w, int in, int out);
void enc_pack_weights_bf16(void *packed, const float *w, int in, int out);
/* Scratch bytes for the activations of a product of rows x in (either kind). */
size_t enc_q_scratch_bytes(int rows, int in);

/* y[rows, out] (+)= x[rows, in] . w[out, in]^T through the packed int8 copy (see
 * above), shared with the helper threads like enc_linear_packed.  scratch:
 * enc_q_scratch_bytes(rows, in), 64-byte aligned, owned by the caller. */
void enc_linear_q8(float *y, int ldy, const float *x, int ldx, const void *packed, int rows, int in, int out,
                   int accumulate, void *scratch);
/* The same through the bf16 copy; without AVX512-BF16 it converts nothing and
 * computes the same bf16 products in plain C (slow; for tests). */
void enc_linear_bf16(float *y, int ldy, const float *x, int ldx, const void *packed, int rows, int in, int out,
                     int accumulate, void *scratch);

/* Run fn(ctx, p0, p1) over the panel range [0, np), shared out in chunks with the
 * helper threads (enc_kernels_set_threads) when rows * in * out multiply-adds are
 * worth a wake-up, else on the calling thread. */
void enc_kernels_parallel(int np, int rows, int in, int out, void (*fn)(const void *ctx, int p0, int p1),
                          const void *ctx);

/* y[r, :] += b[:] for every row. */
void enc_add_bias(float *y, const float *b, int rows, int dim);
/* y[r, :] = (y[r, :] + b[:]) * scale. */
void enc_add_bias_scale(float *y, const float *b, float scale, int rows, int dim);
/* y[r, :] = act(y[r, :] + b[:]), act an enum enc_act. */
void enc_add_bias_act(float *y, const float *b, int act, int rows, int dim);

/* y[r, :] = (x[r, :] - mean) / sqrt(var + eps) * w + b; rows ldx / ldy apart
 * (may be the same buffer). */
void enc_layer_norm(float *y, int ldy, const float *x, int ldx, const float *w, const float *b, float eps,
                    int rows, int dim);

/* Multi-head attention of one sequence of T tokens:
 *   out[T, H] head h columns = softmax(q_h . k_h^T (causal: j <= i)) . v_h
 * q, k, v: [T, H] (q already scaled by 1/sqrt(H/heads)); scores: scratch [T, T]. */
void enc_attention(float *out, const float *q, const float *k, const float *v, float *scores, int T, int H,
                   int heads, int causal);

/* Attention of one sequence whose weights compare each token with the others
 * through one projection only (the training-free dense variants of
 * docs/regions.md; no mask):
 *   out[T, H] head h columns = (softmax(scale a_h . a_h^T) [+ softmax(scale b_h . b_h^T)]) . v_h
 * b NULL: the first term alone (ClearCLIP: a = q); b given: the sum of both
 * softmaxes (SCLIP: a = q, b = k; rows then sum to 2, as published).
 * a, b, v: [T, H] (unscaled); scores, scores2: scratch [T, T] each (scores2
 * unused when b is NULL). */
void enc_self_attention(float *out, const float *a, const float *b, const float *v, float scale, float *scores,
                        float *scores2, int T, int H, int heads);

/* Resize a square grid of vectors bicubically, exactly as torch's
 * F.interpolate(x, size=(g2, g2), mode="bicubic", align_corners=False) does on
 * x = [1, dim, g, g]: source coordinate (i + 0.5) * g / g2 - 0.5, Keys' cubic with
 * a = -0.75, indices clamped at the borders, no antialiasing.
 *   dst [g2 * g2, dim], src [g * g, dim]: row-major over the grid, vector last;
 *   tmp: scratch [g * g2 * dim]. */
void enc_resize_grid_bicubic(float *dst, int g2, const float *src, int g, int dim, float *tmp);

/* s[0, n) = softmax(s[0, n)), in place. */
void enc_softmax(float *s, int n);

/* Elementwise helpers, exposed for the tests. */
void enc_quick_gelu(float *y, const float *x, int n);
void enc_gelu(float *y, const float *x, int n);

/* Half-precision conversions for loading F16 / BF16 checkpoints. */
void enc_f16_to_f32(float *dst, const uint16_t *src, uint64_t n);
void enc_bf16_to_f32(float *dst, const uint16_t *src, uint64_t n);
uint16_t enc_f32_to_f16(float f);   /* round to nearest even (tests, tools) */
uint16_t enc_f32_to_bf16(float f);  /* round to nearest even */

#endif
