/* enc_config.c - config.json of a Hugging Face CLIPModel checkpoint.
 *
 * Absent fields take transformers' CLIPConfig defaults, because real
 * checkpoints omit fields equal to them. */
#include "enc.h"

#include "enc_safetensors.h"
#include "umg_error.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* config.json is a few KB; anything this large is not a config. */
#define CONFIG_MAX_BYTES (4u << 20)

static void defaults(enc_config *c)
{
    *c = (enc_config){
        .text = {.hidden = 512, .intermediate = 2048, .layers = 12, .heads = 8,
                 .act = ENC_ACT_QUICK_GELU, .ln_eps = 1e-5f},
        .vision = {.hidden = 768, .intermediate = 3072, .layers = 12, .heads = 12,
                   .act = ENC_ACT_QUICK_GELU, .ln_eps = 1e-5f},
        .vocab_size = 49408,
        .max_positions = 77,
        .eos_id = ENC_TOKEN_EOT,
        .image_size = 224,
        .patch_size = 32,
        .channels = 3,
        .projection_dim = 512,
    };
}

/* An integer field in [lo, hi]; absent leaves *v unchanged. */
static int get_int(const json_t *obj, const char *section, const char *key, int lo, int hi, int *v)
{
    json_t *j = json_object_get(obj, key);
    if (!j || json_is_null(j))
        return 0;
    if (!json_is_integer(j))
        return umg_err_set(UMG_EFORMAT, "config.json: %s%s is not an integer", section, key);
    json_int_t x = json_integer_value(j);
    if (x < lo || x > hi)
        return umg_err_set(UMG_EFORMAT, "config.json: %s%s = %lld is outside [%d, %d]", section, key,
                           (long long)x, lo, hi);
    *v = (int)x;
    return 0;
}

static int get_tower(const json_t *obj, const char *section, enc_tower_config *t)
{
    int rc;
    if ((rc = get_int(obj, section, "hidden_size", 1, 1 << 16, &t->hidden)) ||
        (rc = get_int(obj, section, "intermediate_size", 1, 1 << 18, &t->intermediate)) ||
        (rc = get_int(obj, section, "num_hidden_layers", 1, 1024, &t->layers)) ||
        (rc = get_int(obj, section, "num_attention_heads", 1, 1024, &t->heads)))
        return rc;
    json_t *act = json_object_get(obj, "hidden_act");
    if (act && !json_is_null(act)) {
        const char *s = json_is_string(act) ? json_string_value(act) : NULL;
        if (s && !strcmp(s, "quick_gelu"))
            t->act = ENC_ACT_QUICK_GELU;
        else if (s && !strcmp(s, "gelu"))
            t->act = ENC_ACT_GELU;
        else
            return umg_err_set(UMG_EFORMAT,
                               "config.json: %shidden_act \"%.40s\" is not supported (quick_gelu or gelu)",
                               section, s ? s : "(not a string)");
    }
    json_t *eps = json_object_get(obj, "layer_norm_eps");
    if (eps && !json_is_null(eps)) {
        double e = json_number_value(eps);
        if (!json_is_number(eps) || !(e > 0) || e > 1 || !isfinite(e))
            return umg_err_set(UMG_EFORMAT, "config.json: %slayer_norm_eps is not a number in (0, 1]",
                               section);
        t->ln_eps = (float)e;
    }
    if (t->hidden % t->heads)
        return umg_err_set(UMG_EFORMAT,
                           "config.json: %shidden_size %d is not divisible by num_attention_heads %d", section,
                           t->hidden, t->heads);
    return 0;
}

/* A sub-config object; older checkpoints also carry "*_config_dict". */
static int get_section(const json_t *root, const char *name, const char *alt, const json_t **out)
{
    json_t *s = json_object_get(root, name);
    if (!s || json_is_null(s))
        s = json_object_get(root, alt);
    if (s && !json_is_null(s) && !json_is_object(s))
        return umg_err_set(UMG_EFORMAT, "config.json: %s is not an object", name);
    *out = s && json_is_object(s) ? s : NULL;
    return 0;
}

int enc_config_parse(const char *json, size_t len, enc_config *cfg)
{
    defaults(cfg);
    json_error_t jerr;
    json_t *root = json_loadb(json, len, 0, &jerr);
    if (!root)
        return umg_err_set(UMG_EFORMAT, "config.json: not valid JSON (%s, line %d)", jerr.text, jerr.line);
    int rc = 0;
    const json_t *text, *vision;
    if (!json_is_object(root)) {
        rc = umg_err_set(UMG_EFORMAT, "config.json: not a JSON object");
        goto out;
    }
    if ((rc = get_section(root, "text_config", "text_config_dict", &text)) ||
        (rc = get_section(root, "vision_config", "vision_config_dict", &vision)) ||
        (rc = get_int(root, "", "projection_dim", 1, 1 << 16, &cfg->projection_dim)))
        goto out;
    if (text) {
        if ((rc = get_tower(text, "text_config.", &cfg->text)) ||
            (rc = get_int(text, "text_config.", "vocab_size", 1, 1 << 24, &cfg->vocab_size)) ||
            (rc = get_int(text, "text_config.", "max_position_embeddings", 2, 1 << 16, &cfg->max_positions)) ||
            (rc = get_int(text, "text_config.", "eos_token_id", 0, (1 << 24) - 1, &cfg->eos_id)))
            goto out;
        /* transformers < 4.31 wrote eos_token_id 2 and pooled at argmax(ids), which
         * is the first <|endoftext|>: the same position as the real end token. */
        if (cfg->eos_id == 2)
            cfg->eos_id = ENC_TOKEN_EOT;
    }
    if (vision) {
        if ((rc = get_tower(vision, "vision_config.", &cfg->vision)) ||
            (rc = get_int(vision, "vision_config.", "image_size", 1, 8192, &cfg->image_size)) ||
            (rc = get_int(vision, "vision_config.", "patch_size", 1, 8192, &cfg->patch_size)) ||
            (rc = get_int(vision, "vision_config.", "num_channels", 1, 16, &cfg->channels)))
            goto out;
    }
    if (cfg->image_size % cfg->patch_size) {
        rc = umg_err_set(UMG_EFORMAT, "config.json: vision_config.image_size %d is not divisible by patch_size %d",
                         cfg->image_size, cfg->patch_size);
        goto out;
    }
    int grid = cfg->image_size / cfg->patch_size;
    if (grid * grid + 1 > 65536) {
        rc = umg_err_set(UMG_EFORMAT, "config.json: vision_config.image_size / patch_size = %d gives too many "
                         "patches", grid);
        goto out;
    }
    if (cfg->eos_id >= cfg->vocab_size) {
        rc = umg_err_set(UMG_EFORMAT, "config.json: text_config.eos_token_id %d is not below vocab_size %d",
                         cfg->eos_id, cfg->vocab_size);
        goto out;
    }
out:
    json_decref(root);
    return rc;
}

int enc_config_load(const char *config_json_path, enc_config *cfg)
{
    char *bytes;
    size_t len;
    int rc = enc_read_small_file(config_json_path, CONFIG_MAX_BYTES, &bytes, &len);
    if (rc)
        return rc;
    rc = enc_config_parse(bytes, len, cfg);
    free(bytes);
    return rc;
}
