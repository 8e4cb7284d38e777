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

/* y[rows, out] (+)= x[rows, in] . w[out, in]^T.  accumulate: add to y instead of
 * overwriting it (the residual stream). */
void enc_linear(float *y, const float *x, const float *w, int rows, int in, int out, int accumulate);
/* The same with explicit leading dimensions (rows of x ldx apart, of y ldy apart). */
void enc_linear_ld(float *y, int ldy, const float *x, int ldx, const float *w, int rows, int in, int out,
                   int accumulate);

/* Products with at most this many rows skip sgemm (which repacks the weights on
 * every call) for a kernel that streams the weights once.  A variable so that
 * tests and benchmarks can compare both paths; not to be changed while another
 * thread computes. */
extern int enc_skinny_max_rows;

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

/* enc_linear_ld through the packed kernel when panels is not NULL, enc_use_packed
 * is set and rows <= enc_packed_max_rows, else w through enc_linear_ld.  Same
 * contract:
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

/* Products with more rows than this go to enc_linear_ld even when packed
 * (default: no limit). */
extern int enc_packed_max_rows;

/* Threads one packed product may use (enc_set_threads calls it): the caller
 * plus n - 1 helper threads, started here once and kept for the life of the
 * process (never started during a forward pass).  Products of two runs on two
 * threads do not share them: the second computes alone. */
void enc_kernels_set_threads(int n);
/* Cap, for the calling thread's products only, the threads they use at n (0: no
 * cap); returns the previous cap, to be restored (enc_run_set_threads). */
int enc_kernels_cap_threads(int n);

/* 1 (default): enc_linear_packed uses the panels it is given; 0: it ignores them.
 * For tests and benchmarks that compare the paths; not to be changed while
 * another thread computes. */
extern int enc_use_packed;

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
