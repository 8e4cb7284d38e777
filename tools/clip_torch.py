#!/usr/bin/python3
"""clip_torch.py - a compact PyTorch implementation of Hugging Face's CLIPModel.

An independent reference for the C encoder on shapes the committed fixture does
not cover (ViT-B/16, ViT-L/14, gelu, F16/BF16 checkpoints).  It reads a
checkpoint directory in the HF layout (config.json + model.safetensors) without
`transformers` or `safetensors`: the safetensors file is parsed here with numpy.

    python3 tools/clip_torch.py tests/fixtures/clip-tiny            # self-check
    python3 tools/clip_torch.py DIR --reference other/reference.json

As a library (tools/check_against_torch.py, tools/export_onnx.py):
    model = load_clip(DIR)                  # CLIP nn.Module in eval mode, float32
    embeds, patches = model.encode_image(pixels)   # [N,3,S,S] -> [N,D], [N,G*G,D]
    embeds = model.encode_text(ids)                 # [N,L] int64 -> [N,D]
Outputs are raw projections (not L2-normalized), as in reference.json.

Dense feature variants (the reference for encoder/enc_model.c; docs/regions.md,
"Dense feature variants"):
    embeds, patches = model.encode_image(pixels, dense="clearclip")   # or "sclip"
computes the patch tokens with ClearCLIP's or SCLIP's last block and the [CLS]
embedding with the standard one.  Pixels of another size than image_size (a
multiple of patch_size) run with the patch position embeddings resized
bicubically (interpolate_positions).

Uses Debian's python3-torch (1.13) and python3-numpy: run with /usr/bin/python3.
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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


def load_config(model_dir):
    """config.json with every absent field set to the transformers default."""
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        raw = json.load(f)
    cfg = dict(TOP_DEFAULTS)
    cfg.update({k: v for k, v in raw.items() if k not in ("text_config", "vision_config")})
    text = dict(TEXT_DEFAULTS)
    text.update(raw.get("text_config") or {})
    vision = dict(VISION_DEFAULTS)
    vision.update(raw.get("vision_config") or {})
    cfg["text_config"], cfg["vision_config"] = text, vision
    return cfg


def _bf16_to_f32(u16):
    return (u16.astype(np.uint32) << 16).view(np.float32)


def load_safetensors(path):
    """{name: float32 numpy array}.  Format: u64 LE header length, JSON header
    {name: {dtype, shape, data_offsets: [begin, end)}} with offsets relative to
    the byte after the header, then the raw little-endian tensors."""
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < 8:
        raise ValueError(f"{path}: shorter than the 8-byte header length")
    (hlen,) = struct.unpack("<Q", blob[:8])
    if 8 + hlen > len(blob):
        raise ValueError(f"{path}: header length {hlen} beyond the end of the file")
    header = json.loads(blob[8:8 + hlen].decode("utf-8"))
    base = 8 + hlen
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        count = int(np.prod(shape)) if shape else 1
        raw = blob[base + begin: base + end]
        dtype = info["dtype"]
        if dtype == "F32":
            arr = np.frombuffer(raw, dtype="<f4", count=count)
        elif dtype == "F16":
            arr = np.frombuffer(raw, dtype="<f2", count=count).astype(np.float32)
        elif dtype == "BF16":
            arr = _bf16_to_f32(np.frombuffer(raw, dtype="<u2", count=count))
        elif dtype in ("I64", "I32"):
            continue  # position_ids buffers of older checkpoints: not weights
        else:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {dtype}")
        out[name] = np.array(arr, dtype=np.float32).reshape(shape)
    return out


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def activation(name):
    if name == "quick_gelu":
        return quick_gelu
    if name == "gelu":
        return F.gelu  # exact (erf) form, as transformers' "gelu"
    raise ValueError(f"unsupported hidden_act {name!r}")


class Attention(nn.Module):
    def __init__(self, hidden, heads):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden_size {hidden} not divisible by {heads} heads")
        self.heads, self.head_dim = heads, hidden // heads
        self.scale = self.head_dim ** -0.5
        self.q_proj = nn.Linear(hidden, hidden)
        self.k_proj = nn.Linear(hidden, hidden)
        self.v_proj = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, hidden)

    def forward(self, x, mask=None):
        n, length, hidden = x.shape

        def split(t):  # [N,L,H] -> [N,heads,L,head_dim]
            return t.reshape(n, length, self.heads, self.head_dim).transpose(1, 2)

        q = split(self.q_proj(x) * self.scale)
        k = split(self.k_proj(x))
        v = split(self.v_proj(x))
        scores = q @ k.transpose(-1, -2)
        if mask is not None:
            scores = scores + mask
        ctx = torch.softmax(scores, dim=-1) @ v
        return self.out_proj(ctx.transpose(1, 2).reshape(n, length, hidden))

    def forward_dense(self, x, mode):
        """The training-free dense attention of the last block (no mask):
        clearclip: softmax(q q^T * scale) v  (Lan et al., ECCV 2024);
        sclip:     (softmax(q q^T * scale) + softmax(k k^T * scale)) v
                   (Wang et al., ECCV 2024: correlative self-attention with the
                   pretrained q and k projections, as in the authors' code);
        then out_proj."""
        n, length, hidden = x.shape

        def split(t):
            return t.reshape(n, length, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        weights = torch.softmax(q @ q.transpose(-1, -2) * self.scale, dim=-1)
        if mode == "sclip":
            weights = weights + torch.softmax(k @ k.transpose(-1, -2) * self.scale, dim=-1)
        elif mode != "clearclip":
            raise ValueError(f"unknown dense mode {mode!r}")
        ctx = weights @ v
        return self.out_proj(ctx.transpose(1, 2).reshape(n, length, hidden))


class MLP(nn.Module):
    def __init__(self, hidden, intermediate, act):
        super().__init__()
        self.fc1 = nn.Linear(hidden, intermediate)
        self.fc2 = nn.Linear(intermediate, hidden)
        self.act = activation(act)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class EncoderLayer(nn.Module):
    def __init__(self, c):
        super().__init__()
        h = c["hidden_size"]
        self.self_attn = Attention(h, c["num_attention_heads"])
        self.layer_norm1 = nn.LayerNorm(h, eps=c["layer_norm_eps"])
        self.mlp = MLP(h, c["intermediate_size"], c["hidden_act"])
        self.layer_norm2 = nn.LayerNorm(h, eps=c["layer_norm_eps"])

    def forward(self, x, mask=None):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))

    def forward_dense(self, x, mode):
        """The last block of a dense variant.  ClearCLIP drops the residual
        connection and the MLP; SCLIP keeps both (its released code:
        x + csa(ln_1(x)), then + mlp(ln_2(x)))."""
        a = self.self_attn.forward_dense(self.layer_norm1(x), mode)
        if mode == "clearclip":
            return a
        x = x + a
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(c) for _ in range(c["num_hidden_layers"]))

    def forward(self, x, mask=None):
        for layer in self.layers:
            x = layer(x, mask)
        return x


def interpolate_positions(pos, grid, new_grid):
    """[1 + grid^2, H] position embeddings -> [1 + new_grid^2, H]: the class
    position as is, the 2-D grid of patch positions resized with
    F.interpolate(mode="bicubic", align_corners=False) to new_grid x new_grid
    (transformers' interpolate_pos_encoding)."""
    if new_grid == grid:
        return pos
    hidden = pos.shape[1]
    patch = pos[1:].reshape(1, grid, grid, hidden).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=(new_grid, new_grid), mode="bicubic", align_corners=False)
    return torch.cat([pos[:1], patch.permute(0, 2, 3, 1).reshape(new_grid * new_grid, hidden)])


class VisionEmbeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        h, p = c["hidden_size"], c["patch_size"]
        if c["image_size"] % p:
            raise ValueError(f"image_size {c['image_size']} not divisible by patch_size {p}")
        self.grid, self.patch = c["image_size"] // p, p
        self.class_embedding = nn.Parameter(torch.zeros(h))
        self.patch_embedding = nn.Conv2d(c["num_channels"], h, kernel_size=p, stride=p, bias=False)
        self.position_embedding = nn.Embedding(self.grid * self.grid + 1, h)

    def forward(self, pixels):
        patches = self.patch_embedding(pixels).flatten(2).transpose(1, 2)  # [N,G*G,H]
        cls = self.class_embedding.expand(pixels.shape[0], 1, -1)
        pos = self.position_embedding.weight
        # Traced exports (tools/export_onnx.py) take image_size inputs: keep
        # shape arithmetic out of their graph.
        size = self.grid * self.patch if torch.jit.is_tracing() else int(pixels.shape[-1])
        if size != self.grid * self.patch:
            if pixels.shape[-2] != size or size % self.patch:
                raise ValueError(f"input {list(pixels.shape[-2:])}: square multiples of {self.patch} only")
            pos = interpolate_positions(pos, self.grid, size // self.patch)
        return torch.cat([cls, patches], dim=1) + pos


class VisionTransformer(nn.Module):
    def __init__(self, c):
        super().__init__()
        h = c["hidden_size"]
        self.embeddings = VisionEmbeddings(c)
        self.pre_layrnorm = nn.LayerNorm(h, eps=c["layer_norm_eps"])  # (sic) HF's name
        self.encoder = Encoder(c)
        self.post_layernorm = nn.LayerNorm(h, eps=c["layer_norm_eps"])

    def forward(self, pixels, dense="plain"):
        """-> last hidden state of every token through post_layernorm [N,1+G*G,H].
        HF applies post_layernorm to the CLS token only; the patch tokens go
        through the same layer norm for the projected patch grid.
        dense "clearclip" / "sclip": the patch tokens from that variant of the
        last block, the CLS token from the standard one."""
        x = self.pre_layrnorm(self.embeddings(pixels))
        if dense == "plain":
            return self.post_layernorm(self.encoder(x))
        for layer in self.encoder.layers[:-1]:
            x = layer(x)
        last = self.encoder.layers[-1]
        x = torch.cat([last(x)[:, :1], last.forward_dense(x, dense)[:, 1:]], dim=1)
        return self.post_layernorm(x)


class TextEmbeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.token_embedding = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.position_embedding = nn.Embedding(c["max_position_embeddings"], c["hidden_size"])

    def forward(self, ids):
        return self.token_embedding(ids) + self.position_embedding.weight[: ids.shape[1]]


class TextTransformer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.eos_token_id = c["eos_token_id"]
        self.embeddings = TextEmbeddings(c)
        self.encoder = Encoder(c)
        self.final_layer_norm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])
        n = c["max_position_embeddings"]
        # Causal mask, sliced to the sequence length (exports to ONNX as a Slice).
        self.register_buffer("causal_mask",
                             torch.full((n, n), float("-inf")).triu(1), persistent=False)

    def forward(self, ids):
        length = ids.shape[1]
        x = self.embeddings(ids)
        x = self.encoder(x, self.causal_mask[:length, :length])
        x = self.final_layer_norm(x)
        if self.eos_token_id == 2:
            # Legacy configs (eos_token_id 2): transformers pools at the highest
            # id, which is <|endoftext|> (49407) in the CLIP vocabulary.
            pos = ids.argmax(dim=-1)
        else:
            # First end token, as transformers does for eos_token_id 49407.
            pos = (ids == self.eos_token_id).int().argmax(dim=-1)
        return x[torch.arange(x.shape[0]), pos]


class CLIP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        t, v = cfg["text_config"], cfg["vision_config"]
        d = cfg["projection_dim"]
        self.text_model = TextTransformer(t)
        self.vision_model = VisionTransformer(v)
        self.visual_projection = nn.Linear(v["hidden_size"], d, bias=False)
        self.text_projection = nn.Linear(t["hidden_size"], d, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(cfg["logit_scale_init_value"]))

    def encode_image(self, pixels, dense="plain"):
        """pixels [N,C,S,S] float32 -> (embeds [N,D], patches [N,G*G,D]).
        S = image_size, or another multiple of patch_size (positions resized);
        dense: "plain", "clearclip" or "sclip" (the patch tokens' last block)."""
        tokens = self.visual_projection(self.vision_model(pixels, dense))
        return tokens[:, 0], tokens[:, 1:]

    def encode_text(self, ids):
        """ids [N,L] int64 (start token first, end token included) -> [N,D]."""
        return self.text_projection(self.text_model(ids))


def load_clip(model_dir):
    cfg = load_config(model_dir)
    model = CLIP(cfg)
    tensors = load_safetensors(os.path.join(model_dir, "model.safetensors"))
    state = model.state_dict()
    missing = [k for k in state if k not in tensors]
    if missing:
        raise ValueError(f"{model_dir}: model.safetensors lacks {missing[:5]}")
    # logit_scale is a scalar; some writers (tools/umgtrain) store it as [1]
    if "logit_scale" in tensors and tensors["logit_scale"].size == 1:
        tensors["logit_scale"] = tensors["logit_scale"].reshape(())
    for name, value in state.items():
        if tuple(tensors[name].shape) != tuple(value.shape):
            raise ValueError(f"{model_dir}: tensor {name} has shape {list(tensors[name].shape)}, "
                             f"expected {list(value.shape)}")
    model.load_state_dict({k: torch.from_numpy(tensors[k]) for k in state}, strict=True)
    model.eval()
    return model


def cosine(a, b):
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def check_reference(model_dir, ref_path):
    """Compare against a reference.json in the format of the shared fixture.
    Returns the worst cosine and worst max|diff|/|ref| over every vector."""
    with open(ref_path, encoding="utf-8") as f:
        ref = json.load(f)
    base = os.path.dirname(ref_path)
    model = load_clip(model_dir)
    s = model.config["vision_config"]["image_size"]
    worst_cos, worst_rel = 1.0, 0.0

    def account(label, got, want):
        nonlocal worst_cos, worst_rel
        c = cosine(got, want)
        rel = float(np.abs(np.asarray(got) - np.asarray(want)).max() / np.linalg.norm(want))
        worst_cos, worst_rel = min(worst_cos, c), max(worst_rel, rel)
        return c, rel

    with torch.no_grad():
        for im in ref["images"]:
            pix = np.fromfile(os.path.join(base, im["pixels"]), dtype="<f4").reshape(1, 3, s, s)
            emb, patches = model.encode_image(torch.from_numpy(pix))
            c, rel = account(im["file"], emb[0].numpy(), im["embedding"])
            pc = min(account(im["file"], p, r)[0] for p, r in
                     zip(patches[0].numpy(), im["patch_tokens_projected"]))
            print(f"image {im['file']:22s} cos {c:.8f} max|d|/|ref| {rel:.2e} patches min cos {pc:.8f}")
        for t in ref["texts"]:
            ids = torch.tensor([t["ids"]], dtype=torch.int64)
            emb = model.encode_text(ids)
            c, rel = account(t["text"], emb[0].numpy(), t["embedding"])
            print(f"text  {t['text'][:22]!s:22s} cos {c:.8f} max|d|/|ref| {rel:.2e}")
    return worst_cos, worst_rel


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("--reference", help="reference.json (default: MODEL_DIR/reference.json)")
    ap.add_argument("--min-cos", type=float, default=0.99999)
    ap.add_argument("--max-rel", type=float, default=1e-4)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ref = args.reference or os.path.join(args.model_dir, "reference.json")
    worst_cos, worst_rel = check_reference(args.model_dir, ref)
    ok = worst_cos >= args.min_cos and worst_rel <= args.max_rel
    print(f"worst cosine {worst_cos:.8f} (>= {args.min_cos}), worst max|d|/|ref| "
          f"{worst_rel:.2e} (<= {args.max_rel}): {'OK' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
