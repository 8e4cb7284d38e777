/* enc.h - the CLIP encoder: a checkpoint in the Hugging Face CLIPModel layout,
 * its vision and text towers: matrix products on packed AVX-512 kernels where
 * the CPU has them (weights packed once at load), OpenBLAS otherwise.
 *
 * Three kinds of object:
 *   enc_config  what config.json says (every field that shapes the network);
 *   enc_model   config + weights (model.safetensors mmapped read-only; tensors in
 *               F16/BF16 converted once at load into one heap arena; with AVX-512, a
 *               packed copy of every linear weight, the originals madvised away) +
 *               tokenizer + preprocessing; immutable after open, shared by any number
 *               of threads;
 *   enc_run     per-thread run state: every activation buffer for up to max_batch
 *               images, preallocated, so a forward pass allocates nothing.
 *
 *   enc_model *m;  enc_model_open("clip-vit-base-patch32", &m);
 *   enc_run *r;    enc_run_create(m, 16, &r);            (one per thread)
 *   enc_encode_pixels(r, pixels, n, embeds, patches);
 *   enc_run_close(r); enc_model_close(m);
 *
 * Outputs are the raw projected vectors (not L2-normalized), as the reference
 * stores them; callers normalize with enc_l2_normalize. */
#ifndef ENC_H
#define ENC_H

#include <stddef.h>
#include <stdint.h>

#include "enc_image.h"
#include "enc_tokenizer.h"

enum enc_act { ENC_ACT_QUICK_GELU = 0, ENC_ACT_GELU = 1 };

typedef struct enc_tower_config {
    int hidden;        /* hidden_size */
    int intermediate;  /* intermediate_size */
    int layers;        /* num_hidden_layers */
    int heads;         /* num_attention_heads */
    int act;           /* hidden_act: enum enc_act */
    float ln_eps;      /* layer_norm_eps */
} enc_tower_config;

typedef struct enc_config {
    enc_tower_config text, vision;
    int vocab_size;      /* text_config.vocab_size */
    int max_positions;   /* text_config.max_position_embeddings */
    int eos_id;          /* text_config.eos_token_id (49407) */
    int image_size;      /* vision_config.image_size */
    int patch_size;      /* vision_config.patch_size */
    int channels;        /* vision_config.num_channels */
    int projection_dim;  /* projection_dim */
} enc_config;

/* Parse config.json; absent fields take the transformers CLIPConfig defaults
 * (ViT-B/32: text 512/2048/12/8, vision 768/3072/12/12, 224/32, projection 512).
 * UMG_EFORMAT with the field named for wrong types, unknown hidden_act, or
 * inconsistent shapes (hidden not divisible by heads, image not divisible by
 * patch). */
int enc_config_load(const char *config_json_path, enc_config *cfg);
/* The same on config.json's bytes already in memory. */
int enc_config_parse(const char *json, size_t len, enc_config *cfg);

typedef struct enc_model enc_model;

/* Open a checkpoint directory: config.json, model.safetensors, vocab.json,
 * merges.txt, and preprocessor_config.json when present.  Every tensor the
 * network needs is checked for presence, dtype (F32/F16/BF16) and shape.
 * Errors name the file or tensor: UMG_ENOENT, UMG_EFORMAT, UMG_ENOMEM. */
int enc_model_open(const char *dir, enc_model **out);
void enc_model_close(enc_model *m); /* NULL-safe */

/* Arithmetic of the matrix products (docs/benchmarks.md has the measured
 * accuracy and speed of each).  Everything outside the products (layer norms,
 * attention, softmax, activations, residuals) is fp32 in every mode.
 *   FP32  (the default) the exact path, checked against the reference.
 *   FP16  (CPUs with AVX512-FP16) half weights, half products within slices of
 *         128 inputs, slices summed in fp32 (enc_kernels.h); cosine to fp32
 *         about 1 - 1e-4.
 *   INT8  (every CPU; fast with AVX2, AVX-VNNI or AVX-512 VNNI) weights
 *         quantized once at load per output channel (symmetric), activations
 *         per row at each product, sums exact in int32 (enc_kernels.h), so the
 *         same bits on every ISA.
 *   BF16  (CPUs with AVX512-BF16) bf16 weights and activations, fp32 sums.
 *   AUTO  (an option only: the model reports what it chose) the fastest of
 *         these that this CPU runs and that meets the accuracy guard of
 *         docs/benchmarks.md: bf16 with AMX-BF16, else int8 with AVX-512
 *         VNNI or AVX-VNNI, or with AVX2 on a CPU without AVX-512, else fp32
 *         (enc_precision_auto says why). */
enum enc_precision {
    ENC_PRECISION_FP32 = 0,
    ENC_PRECISION_FP16 = 1,
    ENC_PRECISION_INT8 = 2,
    ENC_PRECISION_BF16 = 3,
    ENC_PRECISION_AUTO = 4,
};
typedef struct enc_model_options {
    int precision; /* enum enc_precision */
} enc_model_options;
/* enc_model_open with options (NULL: the defaults).  FP16 or BF16 on a CPU
 * without the instructions: UMG_EINVAL saying so. */
int enc_model_open_ex(const char *dir, const enc_model_options *opt, enc_model **out);
int enc_model_precision(const enc_model *m);           /* enum enc_precision (never AUTO) */
const char *enc_precision_name(int precision);        /* "fp32", "fp16", "int8", "bf16", "auto"; static */
int enc_precision_parse(const char *name, int *precision); /* UMG_EINVAL if unknown */
/* What AUTO resolves to on this CPU. */
int enc_precision_auto(void);
/* The kernels this process runs for the model's products, e.g.
 * "int8 avx512-vnni; cpu avx2+fma avx512 avx512-vnni ..." (static storage of
 * the model, valid while it is open). */
const char *enc_model_kernels(const enc_model *m);

const enc_config *enc_model_config(const enc_model *m);
const enc_preproc *enc_model_preproc(const enc_model *m);
const enc_tokenizer *enc_model_tokenizer(const enc_model *m);
int enc_model_dim(const enc_model *m);   /* projection_dim: embedding length */
int enc_model_grid(const enc_model *m);  /* image_size / patch_size: patches per side */
/* SHA-256 over config.json's bytes followed by the safetensors JSON header: the
 * identity of a checkpoint that data directories record. */
void enc_model_fingerprint(const enc_model *m, uint8_t out[32]);
/* A display name: "_name_or_path" from config.json if set, else the directory's
 * base name.  Lives as long as the model. */
const char *enc_model_name(const enc_model *m);

typedef struct enc_run enc_run;

/* Preallocate a run state for batches of up to max_batch images (>= 1), and for
 * batches of up to max_batch texts of up to max_positions tokens each
 * (ViT-B/32: about 1.4 MB per image of max_batch).  A run is used by one thread
 * at a time. */
int enc_run_create(const enc_model *m, int max_batch, enc_run **out);
void enc_run_close(enc_run *r); /* NULL-safe */

/* The same for network inputs of input_size x input_size pixels instead of the
 * checkpoint's image_size (higher resolution: a finer patch grid for region
 * pooling).  input_size must be a multiple of patch_size in [patch_size,
 * 4 * image_size], else UMG_EINVAL.  At another size than image_size the 2-D grid
 * of patch position embeddings is resized bicubically (torch's
 * F.interpolate(mode="bicubic", align_corners=False), as transformers'
 * interpolate_pos_encoding does; the class position stays), once, here, into the
 * run state.  enc_run_create(m, b, out) = enc_run_create_ex(m, b, image_size, out).
 * Preprocess for it with enc_model_preproc_at(m, input_size, &p). */
int enc_run_create_ex(const enc_model *m, int max_batch, int input_size, enc_run **out);

int enc_run_input_size(const enc_run *r); /* S: the input size the run was created for */
int enc_run_grid(const enc_run *r);       /* S / patch_size: patches per side of its grid */

/* Cap the threads this run's products use at n (>= 1; 0, the default: the
 * process setting of enc_set_threads).  For several runs encoding at once on
 * their own threads (e.g. a server's text queries on every core): with 1 each
 * computes alone and none of them wakes the shared helper threads.  It caps the
 * packed kernels' helpers only; the OpenBLAS fallback (CPUs without AVX-512)
 * keeps the process setting.  UMG_EINVAL if n < 0. */
int enc_run_set_threads(enc_run *r, int n);

/* The model's preprocessing for an input of input_size x input_size pixels:
 * crop_w = crop_h = input_size, resize_shortest scaled by input_size / image_size
 * (CLIP: = input_size); mean, std and fit as the model's. */
void enc_model_preproc_at(const enc_model *m, int input_size, enc_preproc *out);

/* Which last vision block computes the PATCH tokens (the [CLS] embedding is
 * always CLIP's own: its last block is computed the standard way, sharing LN1
 * and the q/k/v projections of every token with the variant).  See
 * docs/regions.md, "Dense feature variants".
 *   ENC_DENSE_PLAIN      the standard block (CLIP's patch tokens);
 *   ENC_DENSE_CLEARCLIP  ClearCLIP (Lan et al., ECCV 2024): query-query attention
 *                        softmax(q q^T / sqrt(d)) v through out_proj, with no
 *                        residual connection and no MLP;
 *   ENC_DENSE_SCLIP      SCLIP (Wang et al., ECCV 2024): correlative
 *                        self-attention (softmax(q q^T / sqrt(d)) +
 *                        softmax(k k^T / sqrt(d))) v through out_proj; residual
 *                        and MLP kept, as in the authors' code. */
enum enc_dense_mode { ENC_DENSE_PLAIN = 0, ENC_DENSE_CLEARCLIP = 1, ENC_DENSE_SCLIP = 2 };

/* Set the run's dense mode (ENC_DENSE_PLAIN after create); UMG_EINVAL for other
 * values.  Affects the patches of later enc_encode_pixels calls only. */
int enc_run_set_dense_mode(enc_run *r, int mode);
int enc_run_dense_mode(const enc_run *r);
/* "plain" / "clearclip" / "sclip" (static strings; "unknown" otherwise), and back:
 * UMG_EINVAL for an unknown name. */
const char *enc_dense_mode_name(int mode);
int enc_dense_mode_parse(const char *name, int *mode);

/* Vision tower on n preprocessed images (n <= max_batch).
 *   pixels  [n, 3, S, S]      S = the run's input size (image_size unless enc_run_create_ex)
 *   embeds  [n, D]            D = projection_dim: visual_projection(post_layernorm(CLS))
 *   patches [n, G*G, D] or NULL: every patch token through post_layernorm and
 *                                visual_projection, row-major over the G x G grid
 *                                (G = S / patch_size), computed in the run's dense mode */
int enc_encode_pixels(enc_run *r, const float *pixels, int n, float *embeds, float *patches);

/* Text tower on token ids (start token first, end token last, n_ids <=
 * max_positions), computed over the n_ids real tokens only.
 *   embed [D]: text_projection(final_layer_norm(hidden at the end token))
 * As in CLIP (which pools at argmax(ids)), the end token is the FIRST id equal
 * to eos_id; with the causal mask later ids cannot change it, so they are not
 * computed.  Ids outside [0, vocab_size) are UMG_EINVAL. */
int enc_encode_ids(enc_run *r, const int32_t *ids, int n_ids, float *embed);

/* Text tower on n sequences at once (1 <= n <= the run's max_batch), packed as
 * rows without padding so every product streams the weights once for all of
 * them; each embeds[s * D ..] equals enc_encode_ids(r, ids[s], n_ids[s], ..) up
 * to float rounding (other BLAS blockings).  Same rules per sequence as
 * enc_encode_ids; nothing is computed when any sequence is invalid (UMG_EINVAL).
 *   embeds [n, D] */
int enc_encode_ids_batch(enc_run *r, const int32_t *const *ids, const int *n_ids, int n, float *embeds);

/* Tokenize and encode.  ids (may be NULL) receives up to max_positions ids and
 * *n_ids their count. */
int enc_encode_text(enc_run *r, const char *text, size_t len, float *embed,
                    int32_t *ids, int *n_ids);

/* Threads one forward pass may use (process-wide setting): OpenBLAS's threads
 * and, on x86-64, the helper threads of the packed fp32/fp16 (AVX-512) and of
 * the int8/bf16 products (started here, once, never during a forward pass;
 * enc_kernels.c).  Use 1 when several
 * threads each run their own enc_run (the usual way to use several cores for
 * batches); use the core count for one latency-bound run. */
void enc_set_threads(int n);

/* v /= |v| (left unchanged if |v| == 0). */
void enc_l2_normalize(float *v, int n);

#endif
