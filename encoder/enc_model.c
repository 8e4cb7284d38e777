/* enc_model.c - a CLIP checkpoint (HF CLIPModel layout) and its two towers.
 *
 * Weights: every tensor the network needs is looked up, checked for dtype and
 * shape, and resolved to an F32 pointer: into the read-only mapping for F32
 * tensors (no copy), into one heap arena for F16/BF16 (converted once here) and
 * for F32 tensors the file stores misaligned.
 *
 * Forward passes follow transformers' CLIPModel (= OpenAI CLIP):
 *   vision: unfold patches, patch GEMM, [CLS] + positions, pre_layrnorm,
 *           pre-norm blocks, post_layernorm, visual_projection (no bias);
 *   text:   token + position embeddings over the real tokens only, causal
 *           blocks, final_layer_norm, pooled at the first end token,
 *           text_projection (no bias).
 * Activations are [batch x tokens, hidden] so the projections are big GEMMs;
 * attention runs per (sequence, head) on small GEMMs. */
#include "enc.h"

#include "enc_kernels.h"
#include "enc_safetensors.h"
#include "umg_error.h"

#include <cblas.h>
#include <jansson.h>
#include <math.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <unistd.h>

/* Named after the checkpoint's tensors (vision_model.encoder.layers.N.<field>). */
typedef struct enc_layer_weights {
    const float *layer_norm1_weight, *layer_norm1_bias;     /* [H] */
    const float *self_attn_q_proj_weight, *self_attn_q_proj_bias; /* [H, H], [H] */
    const float *self_attn_k_proj_weight, *self_attn_k_proj_bias;
    const float *self_attn_v_proj_weight, *self_attn_v_proj_bias;
    const float *self_attn_out_proj_weight, *self_attn_out_proj_bias;
    const float *layer_norm2_weight, *layer_norm2_bias;     /* [H] */
    const float *mlp_fc1_weight, *mlp_fc1_bias;             /* [F, H], [F]  F = intermediate */
    const float *mlp_fc2_weight, *mlp_fc2_bias;             /* [H, F], [H] */
    /* The six matrices in panel layout (enc_pack_weights: float, or with the fp16
     * precision enc_pack_weights_h: half; in the model's packed arena), or NULL
     * when the CPU has no AVX-512F. */
    const void *self_attn_q_proj_panels, *self_attn_k_proj_panels, *self_attn_v_proj_panels;
    const void *self_attn_out_proj_panels, *mlp_fc1_panels, *mlp_fc2_panels;
} enc_layer_weights;

typedef struct enc_vision_weights {
    const float *embeddings_class_embedding;              /* [H] */
    const float *embeddings_patch_embedding_weight;       /* [H, C, P, P] */
    const float *embeddings_position_embedding_weight;    /* [G*G + 1, H] */
    const float *pre_layrnorm_weight, *pre_layrnorm_bias; /* [H] (sic: the checkpoint's spelling) */
    enc_layer_weights *encoder_layers;                    /* [layers] */
    const float *post_layernorm_weight, *post_layernorm_bias; /* [H] */
    const float *visual_projection_weight;                /* [D, H] */
    const void *embeddings_patch_embedding_panels, *visual_projection_panels; /* or NULL */
} enc_vision_weights;

typedef struct enc_text_weights {
    const float *embeddings_token_embedding_weight;       /* [vocab, H] */
    const float *embeddings_position_embedding_weight;    /* [max_positions, H] */
    enc_layer_weights *encoder_layers;                    /* [layers] */
    const float *final_layer_norm_weight, *final_layer_norm_bias; /* [H] */
    const float *text_projection_weight;                  /* [D, H] */
    const void *text_projection_panels;                   /* or NULL */
} enc_text_weights;

struct enc_model {
    enc_config cfg;
    char *name;
    enc_st_file *st;
    float *arena;           /* converted tensors */
    size_t arena_floats;
    void *packed;           /* the *_panels copies (AVX-512F CPUs), else NULL */
    size_t packed_bytes;    /* of them, in use (the allocation is rounded up to 2 MB) */
    int precision;          /* enum enc_precision (resolved: never AUTO): the panels' kind */
    char kernels[200];      /* enc_model_kernels */
    enc_layer_weights *layers; /* vision layers, then text layers */
    enc_vision_weights vision;
    enc_text_weights text;
    enc_tokenizer *tok;
    enc_preproc preproc;
    uint8_t fingerprint[32];
};

struct enc_run {
    const enc_model *m;
    int max_batch;
    int input_size, grid, tokens; /* S, G = S / patch, T = G*G + 1 */
    int dense_mode;           /* enum enc_dense_mode */
    int threads;              /* enc_run_set_threads: products' thread cap, 0 = the process setting */
    const float *pos;         /* [T, hidden] vision positions: the checkpoint's, or pos_own */
    float *pos_own;           /* interpolated for input_size != image_size, else NULL */
    float *h, *x, *q, *k, *v; /* [rows, hidden] */
    float *mlp;               /* [rows, intermediate]; also the unfolded patches */
    float *scores, *scores2;  /* [T, T] each (scores2: SCLIP's second softmax) */
    void *qscratch;           /* int8 / bf16: the products' converted activations, else NULL */
    int *lens;                /* [max_batch]: text sequence lengths of a batch */
    void *mem;
};

/* ---- loading ---------------------------------------------------------- */

typedef struct wanted {
    char name[160];
    const float **slot;
    int ndim;
    int64_t shape[4];
    const enc_st_tensor *t;
    size_t arena_off; /* in floats; SIZE_MAX when used in place */
} wanted;

typedef struct plan {
    wanted *w;
    size_t n, cap;
} plan;

static void want(plan *p, const float **slot, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3,
                 const char *fmt, ...) __attribute__((format(printf, 8, 9)));
static void want(plan *p, const float **slot, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3,
                 const char *fmt, ...)
{
    if (p->n == p->cap)
        abort(); /* the count in plan_vision/plan_text is wrong: a programming error */
    wanted *w = &p->w[p->n++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->name, sizeof w->name, fmt, ap);
    va_end(ap);
    w->slot = slot;
    w->ndim = ndim;
    w->shape[0] = d0;
    w->shape[1] = d1;
    w->shape[2] = d2;
    w->shape[3] = d3;
    w->t = NULL;
    w->arena_off = SIZE_MAX;
}

#define LAYER_TENSORS 16

static void want_layer(plan *p, enc_layer_weights *L, const char *prefix, int l, int H, int F)
{
    want(p, &L->layer_norm1_weight, 1, H, 0, 0, 0, "%s.encoder.layers.%d.layer_norm1.weight", prefix, l);
    want(p, &L->layer_norm1_bias, 1, H, 0, 0, 0, "%s.encoder.layers.%d.layer_norm1.bias", prefix, l);
    want(p, &L->self_attn_q_proj_weight, 2, H, H, 0, 0, "%s.encoder.layers.%d.self_attn.q_proj.weight", prefix, l);
    want(p, &L->self_attn_q_proj_bias, 1, H, 0, 0, 0, "%s.encoder.layers.%d.self_attn.q_proj.bias", prefix, l);
    want(p, &L->self_attn_k_proj_weight, 2, H, H, 0, 0, "%s.encoder.layers.%d.self_attn.k_proj.weight", prefix, l);
    want(p, &L->self_attn_k_proj_bias, 1, H, 0, 0, 0, "%s.encoder.layers.%d.self_attn.k_proj.bias", prefix, l);
    want(p, &L->self_attn_v_proj_weight, 2, H, H, 0, 0, "%s.encoder.layers.%d.self_attn.v_proj.weight", prefix, l);
    want(p, &L->self_attn_v_proj_bias, 1, H, 0, 0, 0, "%s.encoder.layers.%d.self_attn.v_proj.bias", prefix, l);
    want(p, &L->self_attn_out_proj_weight, 2, H, H, 0, 0, "%s.encoder.layers.%d.self_attn.out_proj.weight",
         prefix, l);
    want(p, &L->self_attn_out_proj_bias, 1, H, 0, 0, 0, "%s.encoder.layers.%d.self_attn.out_proj.bias", prefix, l);
    want(p, &L->layer_norm2_weight, 1, H, 0, 0, 0, "%s.encoder.layers.%d.layer_norm2.weight", prefix, l);
    want(p, &L->layer_norm2_bias, 1, H, 0, 0, 0, "%s.encoder.layers.%d.layer_norm2.bias", prefix, l);
    want(p, &L->mlp_fc1_weight, 2, F, H, 0, 0, "%s.encoder.layers.%d.mlp.fc1.weight", prefix, l);
    want(p, &L->mlp_fc1_bias, 1, F, 0, 0, 0, "%s.encoder.layers.%d.mlp.fc1.bias", prefix, l);
    want(p, &L->mlp_fc2_weight, 2, H, F, 0, 0, "%s.encoder.layers.%d.mlp.fc2.weight", prefix, l);
    want(p, &L->mlp_fc2_bias, 1, H, 0, 0, 0, "%s.encoder.layers.%d.mlp.fc2.bias", prefix, l);
}

static void plan_weights(plan *p, enc_model *m)
{
    const enc_config *c = &m->cfg;
    enc_vision_weights *V = &m->vision;
    enc_text_weights *X = &m->text;
    int Hv = c->vision.hidden, Ht = c->text.hidden, G = c->image_size / c->patch_size, P = c->patch_size;
    want(p, &V->embeddings_class_embedding, 1, Hv, 0, 0, 0, "vision_model.embeddings.class_embedding");
    want(p, &V->embeddings_patch_embedding_weight, 4, Hv, c->channels, P, P,
         "vision_model.embeddings.patch_embedding.weight");
    want(p, &V->embeddings_position_embedding_weight, 2, (int64_t)G * G + 1, Hv, 0, 0,
         "vision_model.embeddings.position_embedding.weight");
    want(p, &V->pre_layrnorm_weight, 1, Hv, 0, 0, 0, "vision_model.pre_layrnorm.weight");
    want(p, &V->pre_layrnorm_bias, 1, Hv, 0, 0, 0, "vision_model.pre_layrnorm.bias");
    for (int l = 0; l < c->vision.layers; l++)
        want_layer(p, &V->encoder_layers[l], "vision_model", l, Hv, c->vision.intermediate);
    want(p, &V->post_layernorm_weight, 1, Hv, 0, 0, 0, "vision_model.post_layernorm.weight");
    want(p, &V->post_layernorm_bias, 1, Hv, 0, 0, 0, "vision_model.post_layernorm.bias");
    want(p, &V->visual_projection_weight, 2, c->projection_dim, Hv, 0, 0, "visual_projection.weight");

    want(p, &X->embeddings_token_embedding_weight, 2, c->vocab_size, Ht, 0, 0,
         "text_model.embeddings.token_embedding.weight");
    want(p, &X->embeddings_position_embedding_weight, 2, c->max_positions, Ht, 0, 0,
         "text_model.embeddings.position_embedding.weight");
    for (int l = 0; l < c->text.layers; l++)
        want_layer(p, &X->encoder_layers[l], "text_model", l, Ht, c->text.intermediate);
    want(p, &X->final_layer_norm_weight, 1, Ht, 0, 0, 0, "text_model.final_layer_norm.weight");
    want(p, &X->final_layer_norm_bias, 1, Ht, 0, 0, 0, "text_model.final_layer_norm.bias");
    want(p, &X->text_projection_weight, 2, c->projection_dim, Ht, 0, 0, "text_projection.weight");
}

static void format_shape(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int d = 0; d < ndim && n < cap; d++)
        n += (size_t)snprintf(buf + n, cap - n, d ? ", %lld" : "%lld", (long long)shape[d]);
    if (n < cap)
        snprintf(buf + n, cap - n, "]");
}

/* Resolve every wanted tensor: check, then place (mapping or arena). */
static int load_weights(enc_model *m)
{
    const enc_config *c = &m->cfg;
    size_t n_layers = (size_t)c->vision.layers + (size_t)c->text.layers;
    plan p = {.cap = 13 + n_layers * LAYER_TENSORS};
    p.w = calloc(p.cap, sizeof *p.w);
    if (!p.w)
        return umg_err_set(UMG_ENOMEM, "out of memory planning %zu tensors", p.cap);
    plan_weights(&p, m);
    const char *file = enc_st_path(m->st);
    int rc = 0;
    size_t arena = 0;
    for (size_t i = 0; i < p.n; i++) {
        wanted *w = &p.w[i];
        const enc_st_tensor *t = enc_st_find(m->st, w->name);
        if (!t) {
            rc = umg_err_set(UMG_EFORMAT, "%s: tensor %s is missing", file, w->name);
            goto out;
        }
        if (t->dtype != ENC_ST_F32 && t->dtype != ENC_ST_F16 && t->dtype != ENC_ST_BF16) {
            rc = umg_err_set(UMG_EFORMAT, "%s: tensor %s has dtype %s (F32, F16 or BF16 expected)", file,
                             w->name, enc_st_dtype_name(t->dtype));
            goto out;
        }
        int same = t->ndim == w->ndim;
        for (int d = 0; same && d < w->ndim; d++)
            same = t->shape[d] == w->shape[d];
        if (!same) {
            char got[96], exp[96];
            format_shape(got, sizeof got, t->ndim, t->shape);
            format_shape(exp, sizeof exp, w->ndim, w->shape);
            rc = umg_err_set(UMG_EFORMAT, "%s: tensor %s has shape %s, config.json implies %s", file, w->name,
                             got, exp);
            goto out;
        }
        w->t = t;
        if (t->dtype == ENC_ST_F32 && (uintptr_t)t->data % sizeof(float) == 0) {
            *w->slot = (const float *)t->data;
        } else {
            w->arena_off = arena;
            arena += (t->nelem + 15) & ~(uint64_t)15; /* 64-byte aligned starts */
        }
    }
    if (arena) {
        m->arena = aligned_alloc(64, arena * sizeof(float));
        m->arena_floats = m->arena ? arena : 0;
        if (!m->arena) {
            rc = umg_err_set(UMG_ENOMEM, "%s: out of memory converting %zu MB of F16/BF16 weights", file,
                             arena * sizeof(float) >> 20);
            goto out;
        }
        for (size_t i = 0; i < p.n; i++) {
            wanted *w = &p.w[i];
            if (w->arena_off == SIZE_MAX)
                continue;
            float *dst = m->arena + w->arena_off;
            const enc_st_tensor *t = w->t;
            /* F16/BF16 data may sit at odd addresses too: copy bytes, not uint16_t loads. */
            if (t->dtype == ENC_ST_F32) {
                memcpy(dst, t->data, t->nbytes);
            } else {
                uint16_t chunk[1024];
                for (uint64_t done = 0; done < t->nelem;) {
                    uint64_t k = t->nelem - done < 1024 ? t->nelem - done : 1024;
                    memcpy(chunk, t->data + done * 2, k * 2);
                    if (t->dtype == ENC_ST_F16)
                        enc_f16_to_f32(dst + done, chunk, k);
                    else
                        enc_bf16_to_f32(dst + done, chunk, k);
                    done += k;
                }
            }
            /* The converted copy is what the forward reads: let the kernel drop
             * the source pages from this process (they stay in the page cache). */
            uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
            uintptr_t lo = ((uintptr_t)t->data + page - 1) & ~(page - 1);
            uintptr_t hi = ((uintptr_t)t->data + t->nbytes) & ~(page - 1);
            if (hi > lo)
                madvise((void *)lo, hi - lo, MADV_DONTNEED);
            *w->slot = dst;
        }
    }
out:
    free(p.w);
    return rc;
}

static int fingerprint(enc_model *m, const char *config, size_t config_len)
{
    size_t hlen;
    const char *header = enc_st_header(m->st, &hlen);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int outlen = 0;
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) && EVP_DigestUpdate(ctx, config, config_len) &&
             EVP_DigestUpdate(ctx, header, hlen) && EVP_DigestFinal_ex(ctx, m->fingerprint, &outlen) &&
             outlen == 32;
    EVP_MD_CTX_free(ctx);
    return ok ? 0 : umg_err_set(UMG_EINTERNAL, "SHA-256 of the checkpoint failed");
}

static size_t round16(size_t floats) { return (floats + 15) & ~(size_t)15; }

/* Every matrix a forward pass multiplies with: its [out, in] weight and the slot
 * of its packed copy. */
typedef struct packable {
    const float *w;
    const void **panels;
    int in, out;
    int text; /* of the text tower (listed last) */
} packable;

static size_t list_packable(enc_model *m, packable *list)
{
    const enc_config *c = &m->cfg;
    size_t n = 0;
#define PACKABLE(W, SLOT, IN, OUT, TEXT)                                                                     \
    do {                                                                                                 \
        if (list)                                                                                        \
            list[n] = (packable){(W), &(SLOT), (IN), (OUT), (TEXT)};                                     \
        n++;                                                                                             \
    } while (0)
    int Hv = c->vision.hidden, Fv = c->vision.intermediate, Ht = c->text.hidden, Ft = c->text.intermediate;
    int D = c->projection_dim, Kp = c->channels * c->patch_size * c->patch_size;
    enc_vision_weights *V = &m->vision;
    enc_text_weights *X = &m->text;
    PACKABLE(V->embeddings_patch_embedding_weight, V->embeddings_patch_embedding_panels, Kp, Hv, 0);
    PACKABLE(V->visual_projection_weight, V->visual_projection_panels, Hv, D, 0);
    for (int t = 0; t < 2; t++) {
        int layers = t ? c->text.layers : c->vision.layers, H = t ? Ht : Hv, F = t ? Ft : Fv;
        for (int l = 0; l < layers; l++) {
            enc_layer_weights *L = t ? &X->encoder_layers[l] : &V->encoder_layers[l];
            PACKABLE(L->self_attn_q_proj_weight, L->self_attn_q_proj_panels, H, H, t);
            PACKABLE(L->self_attn_k_proj_weight, L->self_attn_k_proj_panels, H, H, t);
            PACKABLE(L->self_attn_v_proj_weight, L->self_attn_v_proj_panels, H, H, t);
            PACKABLE(L->self_attn_out_proj_weight, L->self_attn_out_proj_panels, H, H, t);
            PACKABLE(L->mlp_fc1_weight, L->mlp_fc1_panels, H, F, t);
            PACKABLE(L->mlp_fc2_weight, L->mlp_fc2_panels, F, H, t);
        }
    }
    PACKABLE(X->text_projection_weight, X->text_projection_panels, Ht, D, 1);
#undef PACKABLE
    return n;
}

/* On AVX-512F CPUs: the panel-layout copy of every matrix (enc_kernels.h), in
 * one 64-byte aligned block.  Pages of the mapping that only the original F32
 * layout used are dropped from this process afterwards (they stay in the page
 * cache; the unpacked path faults them back in if ever run). */
/* Bytes of one matrix's packed copy in the model's precision, rounded up to
 * keep every copy 64-byte aligned. */
static size_t packed_size(int precision, int in, int out)
{
    switch (precision) {
    case ENC_PRECISION_FP16: return round16(enc_packed_h_halves(in, out)) * sizeof(uint16_t);
    case ENC_PRECISION_INT8: return enc_q8_bytes(in, out);
    case ENC_PRECISION_BF16: return enc_bf16_bytes(in, out);
    default: return round16(enc_packed_floats(in, out)) * sizeof(float);
    }
}

static int pack_weights(enc_model *m)
{
    int prec = m->precision;
    if (prec == ENC_PRECISION_FP16 && !enc_packed_h_supported())
        return umg_err_set(UMG_EINVAL, "precision fp16 needs a CPU with AVX512-FP16 (this one has not); use fp32");
    if (prec == ENC_PRECISION_BF16 && !enc_bf16_supported())
        return umg_err_set(UMG_EINVAL,
                           "precision bf16 needs a CPU with AVX512-BF16 (this one has not); use int8 or fp32");
    /* fp32 and fp16 pack for AVX-512 only (else OpenBLAS and the few-row kernel
     * read the checkpoint's layout); int8 and bf16 always work from their copy */
    if ((prec == ENC_PRECISION_FP32 || prec == ENC_PRECISION_FP16) && !enc_packed_supported())
        return 0;
    size_t n = list_packable(m, NULL);
    packable *list = malloc(n * sizeof *list);
    if (!list)
        return umg_err_set(UMG_ENOMEM, "out of memory");
    list_packable(m, list);
    size_t total = 0, text_from = 0;
    for (size_t i = 0; i < n; i++) {
        if (list[i].text && (i == 0 || !list[i - 1].text))
            text_from = total;
        total += packed_size(prec, list[i].in, list[i].out);
    }
    /* The text tower's panels (the tail) on transparent huge pages where THP is
     * available: a text query streams ~150 MB of them once, bound by memory
     * bandwidth, and 4 KiB pages' TLB misses cost part of it (measured: text
     * query 15.8 -> 12.8 ms, ViT-B/32).  Not the vision panels: at batch 16 the
     * vision products are compute-bound, and on huge pages they measured slower
     * (28.7 -> 22.8 images/s), likely cache-set conflicts of physically
     * contiguous panels. */
    size_t huge = (size_t)2 << 20, bytes = (total + huge - 1) / huge * huge;
    m->packed = aligned_alloc(huge, bytes);
    if (m->packed) {
        uintptr_t lo = ((uintptr_t)m->packed + text_from + huge - 1) & ~(uintptr_t)(huge - 1);
        uintptr_t hi = (uintptr_t)m->packed + bytes;
        if (hi > lo)
            madvise((void *)lo, hi - lo, MADV_HUGEPAGE);
    }
    if (!m->packed) {
        free(list);
        return umg_err_set(UMG_ENOMEM, "out of memory for the %zu MB packed copy of the weights", total >> 20);
    }
    m->packed_bytes = total;
    size_t off = 0;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t arena_lo = (uintptr_t)m->arena, arena_hi = arena_lo + m->arena_floats * sizeof(float);
    for (size_t i = 0; i < n; i++) {
        packable *p = &list[i];
        void *dst = (char *)m->packed + off;
        switch (prec) {
        case ENC_PRECISION_FP16: enc_pack_weights_h(dst, p->w, p->in, p->out); break;
        case ENC_PRECISION_INT8: enc_pack_weights_q8(dst, p->w, p->in, p->out); break;
        case ENC_PRECISION_BF16: enc_pack_weights_bf16(dst, p->w, p->in, p->out); break;
        default: enc_pack_weights(dst, p->w, p->in, p->out); break;
        }
        *p->panels = dst;
        off += packed_size(prec, p->in, p->out);
        uintptr_t src = (uintptr_t)p->w, wbytes = (uintptr_t)p->in * (uintptr_t)p->out * sizeof(float);
        if (src + wbytes <= arena_lo || src >= arena_hi) { /* in the mapping */
            uintptr_t lo = (src + page - 1) & ~(page - 1), hi = (src + wbytes) & ~(page - 1);
            if (hi > lo)
                madvise((void *)lo, hi - lo, MADV_DONTNEED);
        }
    }
    free(list);
    return 0;
}

static int set_name(enc_model *m, const char *dir, const char *config, size_t config_len)
{
    json_t *root = json_loadb(config, config_len, 0, NULL);
    json_t *j = root ? json_object_get(root, "_name_or_path") : NULL;
    if (json_is_string(j) && json_string_length(j) > 0) {
        m->name = strdup(json_string_value(j));
    } else {
        size_t len = strlen(dir);
        while (len > 1 && dir[len - 1] == '/')
            len--;
        size_t start = len;
        while (start > 0 && dir[start - 1] != '/')
            start--;
        m->name = strndup(dir + start, len - start);
    }
    json_decref(root);
    return m->name ? 0 : umg_err_set(UMG_ENOMEM, "out of memory");
}

/* OpenBLAS 0.3.21 (Debian 12) does not recognize CPUs released after it (this
 * machine's Xeon, family 6 model 207, among them) and falls back to its generic
 * SSE3 "Prescott" kernels: sgemm 3-4x slower than with the AVX-512 ones.  Unless
 * the user chose a core with OPENBLAS_CORETYPE, rerun OpenBLAS's own kernel
 * selection (DYNAMIC_ARCH builds export it; weak, so other builds link too) for
 * the best kernel set the CPU's flags allow.  Runs once, at the first model
 * open, before this process computes anything with BLAS. */
extern void gotoblas_dynamic_init(void) __attribute__((weak));
extern void gotoblas_dynamic_quit(void) __attribute__((weak));

static void blas_pick_kernels(void)
{
#if defined(__x86_64__)
    const char *core = openblas_get_corename();
    if (getenv("OPENBLAS_CORETYPE") || !gotoblas_dynamic_init || !gotoblas_dynamic_quit || !core ||
        strcasecmp(core, "prescott"))
        return;
    __builtin_cpu_init();
    const char *want = NULL;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        want = "SkylakeX";
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        want = "Haswell";
    if (!want)
        return;
    setenv("OPENBLAS_CORETYPE", want, 0);
    gotoblas_dynamic_quit();
    gotoblas_dynamic_init();
#endif /* elsewhere (aarch64) OpenBLAS's own detection stands */
}

static pthread_once_t blas_once = PTHREAD_ONCE_INIT;

static void describe_kernels(enc_model *m);

int enc_model_open(const char *dir, enc_model **out) { return enc_model_open_ex(dir, NULL, out); }

int enc_model_open_ex(const char *dir, const enc_model_options *opt, enc_model **out)
{
    *out = NULL;
    if (!dir || !*dir)
        return umg_err_set(UMG_EINVAL, "no model directory given");
    if (opt && (opt->precision < ENC_PRECISION_FP32 || opt->precision > ENC_PRECISION_AUTO))
        return umg_err_set(UMG_EINVAL, "unknown precision %d", opt->precision);
    pthread_once(&blas_once, blas_pick_kernels);
    enc_model *m = calloc(1, sizeof *m);
    if (!m)
        return umg_err_set(UMG_ENOMEM, "out of memory");
    m->precision = opt ? opt->precision : ENC_PRECISION_FP32;
    if (m->precision == ENC_PRECISION_AUTO)
        m->precision = enc_precision_auto();
    char path[4096], path2[4096];
    char *config = NULL;
    size_t config_len = 0;
    int rc;

    snprintf(path, sizeof path, "%s/config.json", dir);
    if ((rc = enc_read_small_file(path, 4u << 20, &config, &config_len)))
        goto fail;
    if ((rc = enc_config_parse(config, config_len, &m->cfg))) {
        /* enc_config_parse says "config.json: ..."; add the directory. */
        char msg[512];
        snprintf(msg, sizeof msg, "%s", umg_err_msg());
        rc = umg_err_set(rc, "%s/%s", dir, msg);
        goto fail;
    }
    if ((rc = set_name(m, dir, config, config_len)))
        goto fail;

    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    if ((rc = enc_st_open(path, &m->st)))
        goto fail;
    m->layers = calloc((size_t)m->cfg.vision.layers + (size_t)m->cfg.text.layers, sizeof *m->layers);
    if (!m->layers) {
        rc = umg_err_set(UMG_ENOMEM, "out of memory");
        goto fail;
    }
    m->vision.encoder_layers = m->layers;
    m->text.encoder_layers = m->layers + m->cfg.vision.layers;
    if ((rc = load_weights(m)) || (rc = fingerprint(m, config, config_len)) || (rc = pack_weights(m)))
        goto fail;

    snprintf(path, sizeof path, "%s/vocab.json", dir);
    snprintf(path2, sizeof path2, "%s/merges.txt", dir);
    if ((rc = enc_tokenizer_open(path, path2, &m->tok)))
        goto fail;
    if (enc_tokenizer_vocab_size(m->tok) > m->cfg.vocab_size) {
        rc = umg_err_set(UMG_EFORMAT, "%s: %d tokens, but config.json's text_config.vocab_size is %d", path,
                         enc_tokenizer_vocab_size(m->tok), m->cfg.vocab_size);
        goto fail;
    }
    if ((rc = enc_preproc_load(dir, m->cfg.image_size, &m->preproc)))
        goto fail;
    if (m->preproc.crop_w != m->cfg.image_size || m->preproc.crop_h != m->cfg.image_size) {
        rc = umg_err_set(UMG_EFORMAT, "%s/preprocessor_config.json: crop size %dx%d, but the network takes %dx%d",
                         dir, m->preproc.crop_w, m->preproc.crop_h, m->cfg.image_size, m->cfg.image_size);
        goto fail;
    }
    describe_kernels(m);
    free(config);
    *out = m;
    return 0;
fail:
    free(config);
    enc_model_close(m);
    return rc;
}

void enc_model_close(enc_model *m)
{
    if (!m)
        return;
    enc_tokenizer_close(m->tok);
    enc_st_close(m->st);
    free(m->arena);
    free(m->packed);
    free(m->layers);
    free(m->name);
    free(m);
}

const enc_config *enc_model_config(const enc_model *m) { return &m->cfg; }
const enc_preproc *enc_model_preproc(const enc_model *m) { return &m->preproc; }
const enc_tokenizer *enc_model_tokenizer(const enc_model *m) { return m->tok; }
int enc_model_dim(const enc_model *m) { return m->cfg.projection_dim; }
int enc_model_grid(const enc_model *m) { return m->cfg.image_size / m->cfg.patch_size; }
void enc_model_fingerprint(const enc_model *m, uint8_t out[32]) { memcpy(out, m->fingerprint, 32); }
const char *enc_model_name(const enc_model *m) { return m->name; }
int enc_model_precision(const enc_model *m) { return m->precision; }

static const char *const precision_names[] = {"fp32", "fp16", "int8", "bf16", "auto"};

const char *enc_precision_name(int precision)
{
    return precision >= 0 && precision <= ENC_PRECISION_AUTO ? precision_names[precision] : "unknown";
}

int enc_precision_parse(const char *name, int *precision)
{
    for (int p = 0; name && p <= ENC_PRECISION_AUTO; p++)
        if (!strcmp(name, precision_names[p])) {
            *precision = p;
            return 0;
        }
    return umg_err_set(UMG_EINVAL, "unknown precision '%s' (fp32, fp16, int8, bf16 or auto)", name ? name : "");
}

/* The guard (docs/benchmarks.md, bench/encoder/accuracy, 2026-12-07): bf16 met
 * all of it (cosine to fp32 >= 0.99998 mean, the meaning checks' figures equal
 * to fp32's); int8 met the cosine targets (>= 0.9995 mean) but its meaning
 * figures sat at the 0.02 limit (recall@1 +0.020, region --refine -0.021).
 * int8 gives the same bits on every ISA, so these hold on every CPU.
 * Speed (bench/encoder/precisions): with AMX, bf16 is about as fast as int8
 * (3.4x fp32 at batch 16 against 3.7x), so bf16 there; else int8 where the CPU
 * has AVX-512 VNNI (2.2x fp32 at batch 16, 0.35x its text query time) or
 * AVX-VNNI, and on AVX2 CPUs without AVX-512 (this CPU capped to the 256-bit
 * kernels against OpenBLAS's Haswell fp32: UMG_BENCH_CPU=avx2
 * bench/encoder/precisions).  AVX-512 without VNNI (Skylake-SP): the AVX2 int8
 * kernel is no faster than fp32's AVX-512 panels for images (78 against 73 ms
 * of CPU per image at batch 16), so fp32; bf16 without AMX runs at fp32's
 * arithmetic rate: fp32 there too. */
int enc_precision_auto(void)
{
    unsigned f = enc_cpu_features();
    if (f & ENC_CPU_AMX_BF16)
        return ENC_PRECISION_BF16;
    if (f & (ENC_CPU_AVX512_VNNI | ENC_CPU_AMX_INT8 | ENC_CPU_AVX_VNNI))
        return ENC_PRECISION_INT8;
    if ((f & ENC_CPU_AVX2) && !(f & ENC_CPU_AVX512))
        return ENC_PRECISION_INT8;
    return ENC_PRECISION_FP32;
}

static void describe_kernels(enc_model *m)
{
    const char *k;
    switch (m->precision) {
    case ENC_PRECISION_FP16: k = "avx512-fp16 packed"; break;
    case ENC_PRECISION_INT8: k = enc_q8_kernel_name(); break;
    case ENC_PRECISION_BF16:
        k = enc_cpu_features() & ENC_CPU_AMX_BF16 ? "amx-bf16 (avx512-bf16 where the input is not a multiple of 32)"
                                                   : "avx512-bf16";
        break;
    default: k = m->packed ? "avx512 packed" : "openblas + few-row kernel"; break;
    }
    snprintf(m->kernels, sizeof m->kernels, "%s %s; cpu %s", enc_precision_name(m->precision), k,
             enc_cpu_describe(enc_cpu_features()));
}

const char *enc_model_kernels(const enc_model *m) { return m->kernels; }

void enc_set_threads(int n)
{
    openblas_set_num_threads(n < 1 ? 1 : n);
    enc_kernels_set_threads(n); /* the packed products' helper threads */
}


/* ---- run state -------------------------------------------------------- */

static size_t max_sz(size_t a, size_t b) { return a > b ? a : b; }
static size_t round64(size_t floats) { return (floats + 15) & ~(size_t)15; }

int enc_run_create(const enc_model *m, int max_batch, enc_run **out)
{
    if (!m) {
        *out = NULL;
        return umg_err_set(UMG_EINVAL, "enc_run_create: no model");
    }
    return enc_run_create_ex(m, max_batch, m->cfg.image_size, out);
}

int enc_run_create_ex(const enc_model *m, int max_batch, int input_size, enc_run **out)
{
    *out = NULL;
    if (!m || max_batch < 1 || max_batch > 65536)
        return umg_err_set(UMG_EINVAL, "enc_run_create: max_batch %d outside [1, 65536]", max_batch);
    const enc_config *c = &m->cfg;
    int P = c->patch_size;
    if (input_size < P || input_size > 4 * c->image_size || input_size % P)
        return umg_err_set(UMG_EINVAL,
                           "enc_run_create: input size %d is not a multiple of the patch size %d in [%d, %d]",
                           input_size, P, P, 4 * c->image_size);
    size_t G = (size_t)(input_size / P), T = G * G + 1, B = (size_t)max_batch, Hv = (size_t)c->vision.hidden;
    size_t Fv = (size_t)c->vision.intermediate;
    size_t M = B * T, L = (size_t)c->max_positions;
    /* text: up to max_batch sequences of up to max_positions tokens, packed */
    size_t Lb = B * L;
    size_t hid = max_sz(M * Hv, Lb * (size_t)c->text.hidden);
    /* mlp also holds the unfolded pixels, and the [CLS] rows' attention and MLP
     * hidden layer of the dense variants' last block */
    size_t mlp = max_sz(max_sz(M * Fv, Lb * (size_t)c->text.intermediate),
                        max_sz(B * (size_t)c->channels * (size_t)input_size * (size_t)input_size, B * (Hv + Fv)));
    size_t sc = max_sz(T * T, L * L);
    /* Row counts and leading dimensions are ints (BLAS): keep every matrix below 2^31 elements. */
    size_t widest = max_sz(max_sz(Hv, Fv), (size_t)c->channels * P * P);
    if (M * widest > INT32_MAX || sc > INT32_MAX || Lb * (size_t)c->text.intermediate > INT32_MAX)
        return umg_err_set(UMG_EINVAL, "enc_run_create: max_batch %d is too large for this model at input size %d",
                           max_batch, input_size);
    int own_pos = input_size != c->image_size;
    size_t pos = own_pos ? T * Hv : 0;
    size_t total = 5 * round64(hid) + round64(mlp) + 2 * round64(T * T) + round64(pos);
    if (L * L > 2 * round64(T * T))
        total += round64(L * L) - 2 * round64(T * T); /* the text's [L, L] scores span both */
    enc_run *r = calloc(1, sizeof *r);
    if (!r)
        return umg_err_set(UMG_ENOMEM, "out of memory");
    r->mem = aligned_alloc(64, total * sizeof(float));
    r->lens = malloc(B * sizeof *r->lens);
    if (!r->mem || !r->lens) {
        free(r->mem);
        free(r->lens);
        free(r);
        return umg_err_set(UMG_ENOMEM, "out of memory for a run state of %zu MB (max_batch %d, input size %d)",
                           total * sizeof(float) >> 20, max_batch, input_size);
    }
    float *p = r->mem;
    r->h = p, p += round64(hid);
    r->x = p, p += round64(hid);
    r->q = p, p += round64(hid);
    r->k = p, p += round64(hid);
    r->v = p, p += round64(hid);
    r->mlp = p, p += round64(mlp);
    if (own_pos)
        r->pos_own = p, p += round64(pos);
    r->scores = p;
    r->scores2 = p + round64(T * T);
    if (m->precision == ENC_PRECISION_INT8 || m->precision == ENC_PRECISION_BF16) {
        size_t rows = max_sz(M, Lb), in = max_sz(widest, max_sz((size_t)c->text.hidden, (size_t)c->text.intermediate));
        r->qscratch = aligned_alloc(64, enc_q_scratch_bytes((int)rows, (int)in));
        if (!r->qscratch) {
            enc_run_close(r);
            return umg_err_set(UMG_ENOMEM, "out of memory for the run state's %s activations",
                               enc_precision_name(m->precision));
        }
    }
    r->m = m;
    r->max_batch = max_batch;
    r->input_size = input_size;
    r->grid = (int)G;
    r->tokens = (int)T;
    r->dense_mode = ENC_DENSE_PLAIN;
    r->pos = c->image_size == input_size ? m->vision.embeddings_position_embedding_weight : r->pos_own;
    if (own_pos) {
        /* the class position as is; the grid of patch positions resized */
        int G0 = c->image_size / P;
        float *tmp = malloc((size_t)G0 * G * Hv * sizeof(float));
        if (!tmp) {
            enc_run_close(r);
            return umg_err_set(UMG_ENOMEM, "out of memory interpolating position embeddings");
        }
        const float *src = m->vision.embeddings_position_embedding_weight;
        memcpy(r->pos_own, src, Hv * sizeof(float));
        enc_resize_grid_bicubic(r->pos_own + Hv, (int)G, src + Hv, G0, (int)Hv, tmp);
        free(tmp);
    }
    *out = r;
    return 0;
}

int enc_run_input_size(const enc_run *r) { return r->input_size; }
int enc_run_grid(const enc_run *r) { return r->grid; }
int enc_run_dense_mode(const enc_run *r) { return r->dense_mode; }

int enc_run_set_threads(enc_run *r, int n)
{
    if (!r || n < 0)
        return umg_err_set(UMG_EINVAL, "enc_run_set_threads: %d threads", n);
    r->threads = n;
    return 0;
}

int enc_run_set_dense_mode(enc_run *r, int mode)
{
    if (!r || mode < ENC_DENSE_PLAIN || mode > ENC_DENSE_SCLIP)
        return umg_err_set(UMG_EINVAL, "enc_run_set_dense_mode: unknown mode %d", mode);
    r->dense_mode = mode;
    return 0;
}

static const char *const dense_names[] = {"plain", "clearclip", "sclip"};

const char *enc_dense_mode_name(int mode)
{
    return mode >= ENC_DENSE_PLAIN && mode <= ENC_DENSE_SCLIP ? dense_names[mode] : "unknown";
}

int enc_dense_mode_parse(const char *name, int *mode)
{
    for (int i = ENC_DENSE_PLAIN; name && i <= ENC_DENSE_SCLIP; i++)
        if (!strcmp(name, dense_names[i])) {
            *mode = i;
            return 0;
        }
    return umg_err_set(UMG_EINVAL, "unknown dense mode \"%s\" (plain, clearclip or sclip)", name ? name : "");
}

void enc_model_preproc_at(const enc_model *m, int input_size, enc_preproc *out)
{
    *out = m->preproc;
    out->crop_w = out->crop_h = input_size;
    out->resize_shortest = (int)((int64_t)m->preproc.resize_shortest * input_size / m->cfg.image_size);
}

void enc_run_close(enc_run *r)
{
    if (!r)
        return;
    free(r->mem);
    free(r->lens);
    free(r->qscratch);
    free(r);
}

/* ---- forward passes --------------------------------------------------- */

/* y[rows, out] (+)= x[rows, in] . w^T, through the packed copy when there is one.
 * The packed copies lie in the arena in the order of list_packable, which is
 * the order a transformer block multiplies with them (q, k, v, out, fc1, fc2,
 * then the next layer's q): so the copy after this one is, nearly always, the
 * next product's, and this product fetches its start while it ends
 * (enc_packed_prefetch_after; where the guess is wrong - the first and last
 * product of a tower, the one-row last block - it costs one group of
 * prefetches, not correctness). */
static void lin_ld(const enc_run *r, float *y, int ldy, const float *x, int ldx, const float *w,
                   const void *panels, int rows, int in, int out, int accumulate)
{
    const enc_model *m = r->m;
    switch (m->precision) {
    case ENC_PRECISION_FP16:
        enc_linear_packed_h(y, ldy, x, ldx, w, panels, rows, in, out, accumulate);
        return;
    case ENC_PRECISION_INT8:
        enc_linear_q8(y, ldy, x, ldx, panels, rows, in, out, accumulate, r->qscratch);
        return;
    case ENC_PRECISION_BF16:
        enc_linear_bf16(y, ldy, x, ldx, panels, rows, in, out, accumulate, r->qscratch);
        return;
    default:
        break;
    }
    if (panels) {
        size_t at = (size_t)((const char *)panels - (const char *)m->packed) + packed_size(ENC_PRECISION_FP32, in, out);
        if (at < m->packed_bytes)
            enc_packed_prefetch_after((const char *)m->packed + at, m->packed_bytes - at);
    }
    enc_linear_packed(y, ldy, x, ldx, w, panels, rows, in, out, accumulate);
}

static void lin(const enc_run *r, float *y, const float *x, const float *w, const void *panels, int rows, int in,
                int out, int accumulate)
{
    lin_ld(r, y, out, x, in, w, panels, rows, in, out, accumulate);
}

/* One pre-norm block over n_seq sequences of T tokens in r->h [n_seq*T, H]:
 *   h += out_proj(attention(LN1(h)));  h += fc2(act(fc1(LN2(h)))) */
static void block_packed(enc_run *r, const enc_layer_weights *L, const enc_tower_config *tc, int n_seq, int T,
                         const int *lens, int causal);

static void block(enc_run *r, const enc_layer_weights *L, const enc_tower_config *tc, int n_seq, int T,
                  int causal)
{
    block_packed(r, L, tc, n_seq, T, NULL, causal);
}

/* The same over n_seq sequences of lens[s] tokens each packed without padding
 * (lens NULL: T tokens each): every product runs once over all rows, so the
 * weights stream from memory once for the whole batch; attention per sequence. */
static void block_packed(enc_run *r, const enc_layer_weights *L, const enc_tower_config *tc, int n_seq, int T,
                         const int *lens, int causal)
{
    int H = tc->hidden, F = tc->intermediate, M = n_seq * T;
    if (lens) {
        M = 0;
        for (int s = 0; s < n_seq; s++) M += lens[s];
    }
    float scale = 1.0f / sqrtf((float)(H / tc->heads));
    enc_layer_norm(r->x, H, r->h, H, L->layer_norm1_weight, L->layer_norm1_bias, tc->ln_eps, M, H);
    /* q[M, H] = (x . Wq^T + bq) * scale; k, v likewise unscaled */
    lin(r, r->q, r->x, L->self_attn_q_proj_weight, L->self_attn_q_proj_panels, M, H, H, 0);
    enc_add_bias_scale(r->q, L->self_attn_q_proj_bias, scale, M, H);
    lin(r, r->k, r->x, L->self_attn_k_proj_weight, L->self_attn_k_proj_panels, M, H, H, 0);
    enc_add_bias(r->k, L->self_attn_k_proj_bias, M, H);
    lin(r, r->v, r->x, L->self_attn_v_proj_weight, L->self_attn_v_proj_panels, M, H, H, 0);
    enc_add_bias(r->v, L->self_attn_v_proj_bias, M, H);
    /* x[M, H] = attention per sequence (x is free again) */
    size_t o = 0;
    for (int s = 0; s < n_seq; s++) {
        int Ts = lens ? lens[s] : T;
        enc_attention(r->x + o, r->q + o, r->k + o, r->v + o, r->scores, Ts, H, tc->heads, causal);
        o += (size_t)Ts * H;
    }
    /* h[M, H] += x . Wo^T + bo */
    enc_add_bias(r->h, L->self_attn_out_proj_bias, M, H);
    lin(r, r->h, r->x, L->self_attn_out_proj_weight, L->self_attn_out_proj_panels, M, H, H, 1);
    enc_layer_norm(r->x, H, r->h, H, L->layer_norm2_weight, L->layer_norm2_bias, tc->ln_eps, M, H);
    /* mlp[M, F] = act(x . W1^T + b1);  h[M, H] += mlp . W2^T + b2 */
    lin(r, r->mlp, r->x, L->mlp_fc1_weight, L->mlp_fc1_panels, M, H, F, 0);
    enc_add_bias_act(r->mlp, L->mlp_fc1_bias, tc->act, M, F);
    enc_add_bias(r->h, L->mlp_fc2_bias, M, H);
    lin(r, r->h, r->mlp, L->mlp_fc2_weight, L->mlp_fc2_panels, M, F, H, 1);
}

/* Standard attention for one query per sequence (the [CLS] row of an image,
 * the end row of a text) against the whole of its sequence, per head.
 *   attn [n, H];  q: the n queries, rows ldq apart, times alpha gives the
 *   scaled query;  k, v: r->k, r->v [rows, H], n sequences one after another
 *   of lens[s] rows each (lens NULL: T each). */
static void one_query_attention(enc_run *r, float *attn, const float *q, int ldq, float alpha, int n, int T,
                                const int *lens, int H, int heads)
{
    int d = H / heads;
    size_t start = 0;
    for (int s = 0; s < n; s++) {
        int len = lens ? lens[s] : T;
        for (int h = 0; h < heads; h++) {
            const float *qh = q + (size_t)s * ldq + h * d;
            const float *kh = r->k + start * H + h * d, *vh = r->v + start * H + h * d;
            /* scores[len] = alpha k_h[len, d] . q_h;  attn_h[d] = scores . v_h[len, d] */
            cblas_sgemv(CblasRowMajor, CblasNoTrans, len, d, alpha, kh, H, qh, 1, 0.0f, r->scores, 1);
            enc_softmax(r->scores, len);
            cblas_sgemv(CblasRowMajor, CblasTrans, len, d, 1.0f, vh, H, r->scores, 1, 0.0f,
                        attn + (size_t)s * H + h * d, 1);
        }
        start += (size_t)len;
    }
}

/* The rest of the standard block on n picked rows ([CLS] or end rows): hc [n, H] holds them on
 * entry (the residual stream) and the block's output on return.
 *   hc += out_proj(attn);  hc += fc2(act(fc1(LN2(hc))))
 * xc [n, H], hidden [n, F]: scratch (hidden may be attn: read before written). */
static void row_tail(const enc_run *r, float *hc, float *xc, const float *attn, float *hidden,
                     const enc_layer_weights *L, const enc_tower_config *tc, int n)
{
    int H = tc->hidden, F = tc->intermediate;
    enc_add_bias(hc, L->self_attn_out_proj_bias, n, H);
    lin(r, hc, attn, L->self_attn_out_proj_weight, L->self_attn_out_proj_panels, n, H, H, 1);
    enc_layer_norm(xc, H, hc, H, L->layer_norm2_weight, L->layer_norm2_bias, tc->ln_eps, n, H);
    lin(r, hidden, xc, L->mlp_fc1_weight, L->mlp_fc1_panels, n, H, F, 0);
    enc_add_bias_act(hidden, L->mlp_fc1_bias, tc->act, n, F);
    enc_add_bias(hc, L->mlp_fc2_bias, n, H);
    lin(r, hc, hidden, L->mlp_fc2_weight, L->mlp_fc2_panels, n, F, H, 1);
}

/* dst [n, H] = one row of each of the n sequences in src (one after another,
 * lens[s] rows each, lens NULL: T each): its first row, or its last if last. */
static void gather_rows(float *dst, const float *src, int n, int T, const int *lens, int last, int H)
{
    size_t start = 0;
    for (int s = 0; s < n; s++) {
        int len = lens ? lens[s] : T;
        size_t row = start + (last ? (size_t)len - 1 : 0);
        memcpy(dst + (size_t)s * H, src + row * H, (size_t)H * sizeof(float));
        start += (size_t)len;
    }
}

static void scatter_cls(float *h, const float *hc, int n, int T, int H)
{
    for (int i = 0; i < n; i++)
        memcpy(h + (size_t)i * T * H, hc + (size_t)i * H, (size_t)H * sizeof(float));
}

/* The last block when only one row of each sequence is wanted - the first of an
 * image (its [CLS] row: 7% of a ViT-B/32 forward saved) or the last of a text
 * (the pooled end token: ~10/12 of the block saved; under the causal mask it
 * attends to its whole sequence, so the mask changes nothing): K and V for every
 * row, but Q, attention, out_proj and the MLP for the n picked rows alone.
 * n sequences one after another in r->h, lens[s] rows each (lens NULL: T each);
 * on return r->x [n, H] holds the block's output at the picked rows. */
static void block_one_row(enc_run *r, const enc_layer_weights *L, const enc_tower_config *tc, int n, int T,
                          const int *lens, int last)
{
    int H = tc->hidden, M = 0;
    for (int s = 0; s < n; s++)
        M += lens ? lens[s] : T;
    float scale = 1.0f / sqrtf((float)(H / tc->heads));
    enc_layer_norm(r->x, H, r->h, H, L->layer_norm1_weight, L->layer_norm1_bias, tc->ln_eps, M, H);
    /* k, v [M, H] for all rows */
    lin(r, r->k, r->x, L->self_attn_k_proj_weight, L->self_attn_k_proj_panels, M, H, H, 0);
    enc_add_bias(r->k, L->self_attn_k_proj_bias, M, H);
    lin(r, r->v, r->x, L->self_attn_v_proj_weight, L->self_attn_v_proj_panels, M, H, H, 0);
    enc_add_bias(r->v, L->self_attn_v_proj_bias, M, H);
    /* xp [n, H] (in r->mlp) = the picked rows of x;  q [n, H] = scaled (xp . Wq^T + bq) */
    float *xp = r->mlp;
    gather_rows(xp, r->x, n, T, lens, last, H);
    lin(r, r->q, xp, L->self_attn_q_proj_weight, L->self_attn_q_proj_panels, n, H, H, 0);
    enc_add_bias_scale(r->q, L->self_attn_q_proj_bias, scale, n, H);
    /* attn [n, H] (over xp, no longer needed): each query against its own sequence */
    float *attn = r->mlp;
    one_query_attention(r, attn, r->q, H, 1.0f, n, T, lens, H, tc->heads);
    /* hc [n, H] (in r->x, free now) = the picked rows of the residual stream; the
     * rest of the block on them, xc [n, H] in r->k */
    gather_rows(r->x, r->h, n, T, lens, last, H);
    row_tail(r, r->x, r->k, attn, r->mlp, L, tc, n);
}

/* The last vision block with a dense variant (docs/regions.md, "Dense feature
 * variants") for the patch tokens and the standard block for [CLS]: LN1 and the
 * q/k/v projections of every token are shared; then
 *   [CLS]:   the standard attention (its query only), out_proj, residual, MLP;
 *   others:  ClearCLIP: h = out_proj(softmax(q q^T s) v)            (no residual, no MLP)
 *            SCLIP:     h += out_proj((softmax(q q^T s) + softmax(k k^T s)) v);
 *                       h += MLP(LN2(h))                              (s = 1/sqrt(d)) */
static void block_dense_variant(enc_run *r, const enc_layer_weights *L, const enc_tower_config *tc, int n,
                                int T, int mode)
{
    int H = tc->hidden, F = tc->intermediate, M = n * T;
    float scale = 1.0f / sqrtf((float)(H / tc->heads));
    enc_layer_norm(r->x, H, r->h, H, L->layer_norm1_weight, L->layer_norm1_bias, tc->ln_eps, M, H);
    /* q, k, v [M, H], all unscaled */
    lin(r, r->q, r->x, L->self_attn_q_proj_weight, L->self_attn_q_proj_panels, M, H, H, 0);
    enc_add_bias(r->q, L->self_attn_q_proj_bias, M, H);
    lin(r, r->k, r->x, L->self_attn_k_proj_weight, L->self_attn_k_proj_panels, M, H, H, 0);
    enc_add_bias(r->k, L->self_attn_k_proj_bias, M, H);
    lin(r, r->v, r->x, L->self_attn_v_proj_weight, L->self_attn_v_proj_panels, M, H, H, 0);
    enc_add_bias(r->v, L->self_attn_v_proj_bias, M, H);
    float *attn_cls = r->mlp, *hidden_cls = r->mlp + (size_t)n * H; /* [n, H], [n, F] */
    one_query_attention(r, attn_cls, r->q, T * H, scale, n, T, NULL, H, tc->heads);
    /* x [M, H] = the variant's attention for every token ([CLS] row unused) */
    for (int s = 0; s < n; s++) {
        size_t o = (size_t)s * T * H;
        enc_self_attention(r->x + o, r->q + o, mode == ENC_DENSE_SCLIP ? r->k + o : NULL, r->v + o, scale,
                           r->scores, r->scores2, T, H, tc->heads);
    }
    /* [CLS] through the standard block: hc, xc in r->q, r->k (free now) */
    float *hc = r->q;
    gather_rows(hc, r->h, n, T, NULL, 0, H);
    row_tail(r, hc, r->k, attn_cls, hidden_cls, L, tc, n);
    if (mode == ENC_DENSE_CLEARCLIP) {
        lin(r, r->h, r->x, L->self_attn_out_proj_weight, L->self_attn_out_proj_panels, M, H, H, 0);
        enc_add_bias(r->h, L->self_attn_out_proj_bias, M, H);
    } else {
        enc_add_bias(r->h, L->self_attn_out_proj_bias, M, H);
        lin(r, r->h, r->x, L->self_attn_out_proj_weight, L->self_attn_out_proj_panels, M, H, H, 1);
        enc_layer_norm(r->x, H, r->h, H, L->layer_norm2_weight, L->layer_norm2_bias, tc->ln_eps, M, H);
        lin(r, r->mlp, r->x, L->mlp_fc1_weight, L->mlp_fc1_panels, M, H, F, 0);
        enc_add_bias_act(r->mlp, L->mlp_fc1_bias, tc->act, M, F);
        enc_add_bias(r->h, L->mlp_fc2_bias, M, H);
        lin(r, r->h, r->mlp, L->mlp_fc2_weight, L->mlp_fc2_panels, M, F, H, 1);
    }
    scatter_cls(r->h, hc, n, T, H);
}

static int encode_pixels(enc_run *r, const float *pixels, int n, float *embeds, float *patches)
{
    if (!r || !pixels || !embeds || n < 1 || n > r->max_batch)
        return umg_err_set(UMG_EINVAL, "enc_encode_pixels: %d images for a run state of at most %d", n,
                           r ? r->max_batch : 0);
    const enc_model *m = r->m;
    const enc_config *c = &m->cfg;
    const enc_vision_weights *W = &m->vision;
    int S = r->input_size, P = c->patch_size, G = r->grid, C = c->channels, H = c->vision.hidden;
    int D = c->projection_dim, T = r->tokens, M = n * T, K = C * P * P, NP = n * G * G;

    /* cols[NP, K]: each patch unfolded in the conv weight's (c, y, x) order */
    float *cols = r->mlp;
    for (int i = 0; i < n; i++)
        for (int gy = 0; gy < G; gy++)
            for (int gx = 0; gx < G; gx++) {
                float *row = cols + ((size_t)(i * G + gy) * G + gx) * K;
                for (int ch = 0; ch < C; ch++)
                    for (int py = 0; py < P; py++)
                        memcpy(row + (size_t)(ch * P + py) * P,
                               pixels + (((size_t)i * C + ch) * S + (size_t)gy * P + py) * S + (size_t)gx * P,
                               (size_t)P * sizeof(float));
            }
    /* q[NP, H] = cols . patch_weight[H, K]^T (the conv has no bias) */
    lin(r, r->q, cols, W->embeddings_patch_embedding_weight, W->embeddings_patch_embedding_panels, NP, K, H,
        0);
    /* h[i, 0] = class + pos[0];  h[i, 1 + p] = q[i*G*G + p] + pos[1 + p] */
    const float *pos = r->pos;
    for (int i = 0; i < n; i++) {
        float *hi = r->h + (size_t)i * T * H;
        for (int d = 0; d < H; d++)
            hi[d] = W->embeddings_class_embedding[d] + pos[d];
        const float *qi = r->q + (size_t)i * (T - 1) * H;
        for (size_t e = 0; e < (size_t)(T - 1) * H; e++)
            hi[H + e] = qi[e] + pos[H + e];
    }
    enc_layer_norm(r->h, H, r->h, H, W->pre_layrnorm_weight, W->pre_layrnorm_bias, c->vision.ln_eps, M, H);
    for (int l = 0; l < c->vision.layers; l++) {
        if (l == c->vision.layers - 1 && !patches)
            block_one_row(r, &W->encoder_layers[l], &c->vision, n, T, NULL, 0); /* x[n, H]: [CLS] rows */
        else if (l == c->vision.layers - 1 && r->dense_mode != ENC_DENSE_PLAIN)
            block_dense_variant(r, &W->encoder_layers[l], &c->vision, n, T, r->dense_mode);
        else
            block(r, &W->encoder_layers[l], &c->vision, n, T, 0);
    }

    if (patches) {
        /* x[M, H] = post_layernorm(h) on every token */
        enc_layer_norm(r->x, H, r->h, H, W->post_layernorm_weight, W->post_layernorm_bias, c->vision.ln_eps,
                       M, H);
        /* embeds[n, D] = x[CLS rows, T*H apart] . proj[D, H]^T */
        lin_ld(r, embeds, D, r->x, T * H, W->visual_projection_weight, W->visual_projection_panels, n,
                          H, D, 0);
        /* patches[i][G*G, D] = x[i, 1..T) . proj^T */
        for (int i = 0; i < n; i++)
            lin_ld(r, patches + (size_t)i * (T - 1) * D, D, r->x + ((size_t)i * T + 1) * H, H,
                              W->visual_projection_weight, W->visual_projection_panels, T - 1, H, D, 0);
    } else {
        /* x[n, H] = post_layernorm(x), the last block's output at the [CLS] rows
         * (enc_config asks for at least one layer) */
        enc_layer_norm(r->x, H, r->x, H, W->post_layernorm_weight, W->post_layernorm_bias, c->vision.ln_eps,
                       n, H);
        lin(r, embeds, r->x, W->visual_projection_weight, W->visual_projection_panels, n, H, D, 0);
    }
    return 0;
}

/* The public entry points run the pass under the run's thread cap (if any). */
static int encode_ids_batch(enc_run *r, const int32_t *const *ids, const int *n_ids, int n, float *embeds);

int enc_encode_pixels(enc_run *r, const float *pixels, int n, float *embeds, float *patches)
{
    int prev = enc_kernels_cap_threads(r ? r->threads : 0);
    int rc = encode_pixels(r, pixels, n, embeds, patches);
    enc_kernels_cap_threads(prev);
    return rc;
}

int enc_encode_ids_batch(enc_run *r, const int32_t *const *ids, const int *n_ids, int n, float *embeds)
{
    int prev = enc_kernels_cap_threads(r ? r->threads : 0);
    int rc = encode_ids_batch(r, ids, n_ids, n, embeds);
    enc_kernels_cap_threads(prev);
    return rc;
}

int enc_encode_ids(enc_run *r, const int32_t *ids, int n_ids, float *embed)
{
    if (!r || !ids || !embed)
        return umg_err_set(UMG_EINVAL, "enc_encode_ids: NULL argument");
    return enc_encode_ids_batch(r, &ids, &n_ids, 1, embed);
}

static int encode_ids_batch(enc_run *r, const int32_t *const *ids, const int *n_ids, int n, float *embeds)
{
    if (!r || !ids || !n_ids || !embeds)
        return umg_err_set(UMG_EINVAL, "enc_encode_ids: NULL argument");
    const enc_model *m = r->m;
    const enc_config *c = &m->cfg;
    if (n < 1 || n > r->max_batch)
        return umg_err_set(UMG_EINVAL, "enc_encode_ids: %d sequences (1 to %d allowed)", n, r->max_batch);
    /* validate everything before computing anything */
    for (int s = 0; s < n; s++) {
        if (!ids[s])
            return umg_err_set(UMG_EINVAL, "enc_encode_ids: NULL ids for sequence %d", s);
        if (n_ids[s] < 1 || n_ids[s] > c->max_positions)
            return umg_err_set(UMG_EINVAL, "enc_encode_ids: %d ids (1 to %d allowed)", n_ids[s], c->max_positions);
        for (int i = 0; i < n_ids[s]; i++)
            if (ids[s][i] < 0 || ids[s][i] >= c->vocab_size)
                return umg_err_set(UMG_EINVAL, "enc_encode_ids: id %d at %d outside the vocabulary of %d",
                                   (int)ids[s][i], i, c->vocab_size);
    }
    /* Pool at the first end token, as CLIP does (argmax of the ids); the causal
     * mask makes every later token irrelevant, so they are not computed. */
    int *lens = r->lens;
    for (int s = 0; s < n; s++) {
        int len = n_ids[s];
        for (int i = 0; i < n_ids[s]; i++)
            if (ids[s][i] == c->eos_id) {
                len = i + 1;
                break;
            }
        lens[s] = len;
    }
    const enc_text_weights *W = &m->text;
    int H = c->text.hidden, D = c->projection_dim;
    /* h[row] = token[ids[t]] + pos[t], the sequences one after another */
    float *ht = r->h;
    for (int s = 0; s < n; s++)
        for (int t = 0; t < lens[s]; t++, ht += H) {
            const float *tok = W->embeddings_token_embedding_weight + (size_t)ids[s][t] * H;
            const float *pos = W->embeddings_position_embedding_weight + (size_t)t * H;
            for (int d = 0; d < H; d++)
                ht[d] = tok[d] + pos[d];
        }
    for (int l = 0; l + 1 < c->text.layers; l++)
        block_packed(r, &W->encoder_layers[l], &c->text, n, 0, lens, 1);
    if (c->text.layers > 0) {
        /* x[n, H] = the last block's output at the end rows */
        block_one_row(r, &W->encoder_layers[c->text.layers - 1], &c->text, n, 0, lens, 1);
    } else {
        gather_rows(r->x, r->h, n, 0, lens, 1, H);
    }
    /* x = final_layer_norm(x);  embeds[n, D] = text_projection . x */
    enc_layer_norm(r->x, H, r->x, H, W->final_layer_norm_weight, W->final_layer_norm_bias, c->text.ln_eps, n, H);
    lin(r, embeds, r->x, W->text_projection_weight, W->text_projection_panels, n, H, D, 0);
    return 0;
}

int enc_encode_text(enc_run *r, const char *text, size_t len, float *embed, int32_t *ids, int *n_ids)
{
    if (!r || (!text && len) || !embed)
        return umg_err_set(UMG_EINVAL, "enc_encode_text: NULL argument");
    const enc_config *c = &r->m->cfg;
    int32_t local[ENC_CONTEXT_LENGTH];
    int max_ids = c->max_positions < ENC_CONTEXT_LENGTH ? c->max_positions : ENC_CONTEXT_LENGTH;
    int n = 0;
    int rc = enc_tokenize(r->m->tok, text ? text : "", len, local, max_ids, &n);
    if (rc)
        return rc;
    if ((rc = enc_encode_ids(r, local, n, embed)))
        return rc;
    if (ids)
        memcpy(ids, local, (size_t)n * sizeof *ids);
    if (n_ids)
        *n_ids = n;
    return 0;
}

void enc_l2_normalize(float *v, int n)
{
    double s = 0;
    for (int i = 0; i < n; i++)
        s += (double)v[i] * v[i];
    if (s > 0) {
        float inv = (float)(1.0 / sqrt(s));
        for (int i = 0; i < n; i++)
            v[i] *= inv;
    }
}
