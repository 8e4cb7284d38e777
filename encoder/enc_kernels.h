/* enc_kernels.h - internal: the numeric kernels of the CLIP forward passes.
 *
 * Conventions: row-major; activations are [rows, dim] with rows = batch x tokens;
 * weights are the checkpoint's [out, in] matrices, used as B^T by sgemm so that
 * they are read contiguously.  Every output buffer is written first in the
 * argument list.  Nothing here allocates. */
#ifndef ENC_KERNELS_H
#define ENC_KERNELS_H

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
