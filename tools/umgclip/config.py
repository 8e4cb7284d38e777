"""A CLIP checkpoint's configuration (config.json, Hugging Face CLIPConfig) with the
transformers defaults filled in, and CLIP's image normalization.  Pure Python: the
tools that need no torch (make_random_clip) use it too."""
import json
import os

# transformers' CLIPTextConfig / CLIPVisionConfig / CLIPConfig defaults (ViT-B/32).
TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048,
                     num_hidden_layers=12, num_attention_heads=8,
                     max_position_embeddings=77, hidden_act="quick_gelu",
                     layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=49406,
                     eos_token_id=49407)
VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                       num_attention_heads=12, image_size=224, patch_size=32,
                       num_channels=3, hidden_act="quick_gelu", layer_norm_eps=1e-5)
TOP_DEFAULTS = dict(projection_dim=512, logit_scale_init_value=2.6592)

# CLIP's image normalization, as preprocessor_config.json states it
IMAGE_MEAN = (0.48145466, 0.4578275, 0.40821073)
IMAGE_STD = (0.26862954, 0.26130258, 0.27577711)


def with_defaults(raw):
    """A CLIPConfig dict with every absent field set to the transformers default."""
    cfg = dict(TOP_DEFAULTS)
    cfg.update({k: v for k, v in raw.items() if k not in ("text_config", "vision_config")})
    text = dict(TEXT_DEFAULTS)
    text.update(raw.get("text_config") or {})
    vision = dict(VISION_DEFAULTS)
    vision.update(raw.get("vision_config") or {})
    cfg["text_config"], cfg["vision_config"] = text, vision
    return cfg


def load_config(model_dir):
    """config.json with every absent field set to the transformers default."""
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        return with_defaults(json.load(f))
