"""make_random_clip.py - write a CLIP checkpoint with random weights in the
Hugging Face CLIPModel layout, for benchmarks and shape tests.

    /usr/bin/python3 -m tools.make_random_clip OUT_DIR --preset vit-b-32 [--dtype f32|f16|bf16]
        [--act quick_gelu|gelu] [--seed S] [--omit-defaults] [--position-ids]

Writes config.json (CLIPConfig fields), model.safetensors (every tensor of
CLIPModel, shapes of the preset), preprocessor_config.json (CLIP's defaults, as
real checkpoints ship it) and vocab.json/merges.txt copied from
tests/fixtures/clip-tiny.  Deterministic: same arguments, same bytes.

Weights: matrices and the patch convolution N(0, 1/fan_in) (std 0.018-0.036
for ViT-B), token/position/class embeddings N(0, 0.02), biases N(0, 0.02)
(nonzero, so a dropped bias shows), layer-norm weights 1 + N(0, 0.02) and
biases N(0, 0.02).
--omit-defaults leaves out of config.json every field equal to the
transformers default, as real checkpoints do.  --position-ids adds the int64
position_ids buffers that checkpoints saved by older transformers carry.

Needs only python3-numpy.
"""
import argparse
import json
import os
import shutil
import sys

import numpy as np

from tools.umgclip import safetensors
from tools.umgclip.config import IMAGE_MEAN, IMAGE_STD, TOP_DEFAULTS
from tools.umgclip.config import TEXT_DEFAULTS as _TEXT, VISION_DEFAULTS as _VISION

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "..", "tests", "fixtures", "clip-tiny")

PRESETS = {
    # text: hidden, intermediate, layers, heads; vision: same + image, patch; projection
    "vit-b-32": dict(text=(512, 2048, 12, 8), vision=(768, 3072, 12, 12, 224, 32), proj=512),
    "vit-b-16": dict(text=(512, 2048, 12, 8), vision=(768, 3072, 12, 12, 224, 16), proj=512),
    "vit-l-14": dict(text=(768, 3072, 12, 12), vision=(1024, 4096, 24, 16, 224, 14), proj=768),
    "tiny": dict(text=(64, 256, 2, 2), vision=(128, 512, 2, 2, 224, 32), proj=32),
}

# transformers defaults (CLIPTextConfig / CLIPVisionConfig / CLIPConfig); the towers'
# configs also carry projection_dim (512 by default) in the files transformers writes.
TEXT_DEFAULTS = dict(_TEXT, projection_dim=512)
VISION_DEFAULTS = dict(_VISION, projection_dim=512)


def make_config(preset, act, omit_defaults):
    p = PRESETS[preset]
    th, ti, tl, tn = p["text"]
    vh, vi, vl, vn, size, patch = p["vision"]
    text = dict(vocab_size=49408, hidden_size=th, intermediate_size=ti, num_hidden_layers=tl,
                num_attention_heads=tn, max_position_embeddings=77, hidden_act=act,
                layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=49406, eos_token_id=49407,
                projection_dim=p["proj"])
    vision = dict(hidden_size=vh, intermediate_size=vi, num_hidden_layers=vl, num_attention_heads=vn,
                  image_size=size, patch_size=patch, num_channels=3, hidden_act=act,
                  layer_norm_eps=1e-5, projection_dim=p["proj"])
    top = dict(projection_dim=p["proj"], logit_scale_init_value=2.6592)
    if omit_defaults:
        text = {k: v for k, v in text.items() if TEXT_DEFAULTS.get(k) != v}
        vision = {k: v for k, v in vision.items() if VISION_DEFAULTS.get(k) != v}
        top = {k: v for k, v in top.items() if TOP_DEFAULTS.get(k) != v}
    cfg = {"architectures": ["CLIPModel"], "model_type": "clip",
           "_name_or_path": f"random-clip-{preset}"}
    cfg.update(top)
    cfg["text_config"] = text
    cfg["vision_config"] = vision
    return cfg


def tensor_shapes(preset):
    """(name, shape, kind) for every CLIPModel tensor, kind in weight/bias/ln_w/ln_b."""
    p = PRESETS[preset]
    th, ti, tl, _ = p["text"]
    vh, vi, vl, _, size, patch = p["vision"]
    d = p["proj"]
    grid = size // patch
    out = [("logit_scale", (), "scalar")]

    def tower(prefix, h, inter, layers):
        for i in range(layers):
            lp = f"{prefix}.encoder.layers.{i}"
            for ln in ("layer_norm1", "layer_norm2"):
                out.append((f"{lp}.{ln}.weight", (h,), "ln_w"))
                out.append((f"{lp}.{ln}.bias", (h,), "ln_b"))
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                out.append((f"{lp}.self_attn.{proj}.weight", (h, h), "weight"))
                out.append((f"{lp}.self_attn.{proj}.bias", (h,), "bias"))
            out.append((f"{lp}.mlp.fc1.weight", (inter, h), "weight"))
            out.append((f"{lp}.mlp.fc1.bias", (inter,), "bias"))
            out.append((f"{lp}.mlp.fc2.weight", (h, inter), "weight"))
            out.append((f"{lp}.mlp.fc2.bias", (h,), "bias"))

    out.append(("text_model.embeddings.token_embedding.weight", (49408, th), "weight"))
    out.append(("text_model.embeddings.position_embedding.weight", (77, th), "weight"))
    tower("text_model", th, ti, tl)
    out.append(("text_model.final_layer_norm.weight", (th,), "ln_w"))
    out.append(("text_model.final_layer_norm.bias", (th,), "ln_b"))
    out.append(("text_projection.weight", (d, th), "weight"))
    out.append(("vision_model.embeddings.class_embedding", (vh,), "weight"))
    out.append(("vision_model.embeddings.patch_embedding.weight", (vh, 3, patch, patch), "weight"))
    out.append(("vision_model.embeddings.position_embedding.weight", (grid * grid + 1, vh), "weight"))
    out.append(("vision_model.pre_layrnorm.weight", (vh,), "ln_w"))
    out.append(("vision_model.pre_layrnorm.bias", (vh,), "ln_b"))
    tower("vision_model", vh, vi, vl)
    out.append(("vision_model.post_layernorm.weight", (vh,), "ln_w"))
    out.append(("vision_model.post_layernorm.bias", (vh,), "ln_b"))
    out.append(("visual_projection.weight", (d, vh), "weight"))
    return out


def weight_std(name, shape, kind):
    """Matrices: 1/sqrt(fan_in) (0.018-0.036 for ViT-B), which keeps every layer's
    output at unit scale so that the embeddings of different inputs differ
    clearly (a flat N(0, 0.02) everywhere makes every image's embedding nearly
    the same vector, and a comparison of implementations then proves little).
    Embeddings, biases and layer-norm deviations: 0.02."""
    matrix = kind == "weight" and len(shape) >= 2 and "embeddings" not in name
    if matrix or name.endswith("patch_embedding.weight"):
        return 1.0 / np.sqrt(np.prod(shape[1:]))
    return 0.02


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--preset", choices=sorted(PRESETS), required=True)
    ap.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32")
    ap.add_argument("--act", choices=["quick_gelu", "gelu"], default="quick_gelu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--omit-defaults", action="store_true")
    ap.add_argument("--position-ids", action="store_true")
    args = ap.parse_args()

    os.makedirs(args.out_dir, exist_ok=True)
    cfg = make_config(args.preset, args.act, args.omit_defaults)
    cfg["torch_dtype"] = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[args.dtype]
    with open(os.path.join(args.out_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    size = PRESETS[args.preset]["vision"][4]
    pre = {"crop_size": {"height": size, "width": size}, "do_center_crop": True,
           "do_normalize": True, "do_resize": True, "do_rescale": True,
           "rescale_factor": 1 / 255, "do_convert_rgb": True,
           "feature_extractor_type": "CLIPFeatureExtractor",
           "image_processor_type": "CLIPImageProcessor",
           "image_mean": list(IMAGE_MEAN), "image_std": list(IMAGE_STD), "resample": 3,
           "size": {"shortest_edge": size}}
    with open(os.path.join(args.out_dir, "preprocessor_config.json"), "w", encoding="utf-8") as f:
        json.dump(pre, f, indent=2)
        f.write("\n")
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(os.path.join(FIXTURE, name), os.path.join(args.out_dir, name))

    rng = np.random.default_rng(args.seed)
    st_dtype = args.dtype.upper()
    tensors = {}
    for name, shape, kind in tensor_shapes(args.preset):
        if kind == "scalar":  # logit_scale = log(1/0.07), always F32 as in real checkpoints
            tensors[name] = ("F32", np.float32(np.log(1 / 0.07)))
            continue
        a = rng.standard_normal(shape, dtype=np.float32) * np.float32(weight_std(name, shape, kind))
        if kind == "ln_w":
            a += np.float32(1.0)
        tensors[name] = (st_dtype, a)
    if args.position_ids:
        grid = size // PRESETS[args.preset]["vision"][5]
        for name, n in (("text_model.embeddings.position_ids", 77),
                        ("vision_model.embeddings.position_ids", grid * grid + 1)):
            tensors[name] = ("I64", np.arange(n, dtype="<i8").reshape(1, n))
    path = os.path.join(args.out_dir, "model.safetensors")
    safetensors.write(path, tensors)
    total = os.path.getsize(path) - safetensors.read_header(path)[1]  # the tensors' bytes
    print(f"{args.out_dir}: {args.preset} {args.dtype} {args.act}, {len(tensors)} tensors, "
          f"{total / 1e6:.1f} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
