"""The PyTorch CLIP of the Python tools: Hugging Face CLIPModel's state_dict keys
and arithmetic (pre-LN transformer, quick_gelu or exact gelu, causal text mask,
end-token pooling), so that its weights load into encoder/ unchanged.  It is the
independent reference for the C encoder (tools/check_against_torch.py,
tools/umgtrain/check_c_embed.py, tools/dense_variants_golden.py,
tools/export_onnx.py) and the model tools/umgtrain trains.

    model = load_clip(DIR)            # config.json + model.safetensors, eval mode, float32
    embeds, patches = model.encode_image(pixels)   # [N,3,S,S] -> [N,D], [N,G*G,D]
    embeds = model.encode_text(ids)   # [N,L] int64 (start..end token) -> [N,D]
    embeds = model.encode_ids([[49406, ..., 49407], ...])   # ragged lists, each pooled
                                      # at its last position (the ids may be remapped)
    model = CLIP(config.with_defaults(cfg))   # fresh weights N(0, 0.02): the training's init
Outputs are raw projections (not L2-normalized), as in reference.json.

Dense feature variants (the reference for encoder/enc_model.c; docs/regions.md,
"Dense feature variants"):
    embeds, patches = model.encode_image(pixels, dense="clearclip")   # or "sclip"
computes the patch tokens with ClearCLIP's or SCLIP's last block and the [CLS]
embedding with the standard one.  Pixels of another size than image_size (a
multiple of patch_size) run with the patch position embeddings resized
bicubically (interpolate_positions).

Self-check against a reference.json in the format of the shared fixture:
    /usr/bin/python3 -m tools.umgclip.model tests/fixtures/clip-tiny [--reference FILE]

Uses Debian's python3-torch (1.13) and python3-numpy: run with /usr/bin/python3.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tools.umgclip import safetensors
from tools.umgclip.config import load_config


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
        self.class_embedding = nn.Parameter(torch.randn(h) * 0.02)
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

    def forward(self, ids, pool_at=None):
        """-> the final hidden state at each row's pooled position [N,H]: pool_at
        (an [N] index tensor) when given, else the end token's."""
        length = ids.shape[1]
        x = self.embeddings(ids)
        x = self.encoder(x, self.causal_mask[:length, :length])
        x = self.final_layer_norm(x)
        if pool_at is not None:
            pos = pool_at
        elif self.eos_token_id == 2:
            # Legacy configs (eos_token_id 2): transformers pools at the highest
            # id, which is <|endoftext|> (49407) in the CLIP vocabulary.
            pos = ids.argmax(dim=-1)
        else:
            # First end token, as transformers does for eos_token_id 49407.
            pos = (ids == self.eos_token_id).int().argmax(dim=-1)
        return x[torch.arange(x.shape[0]), pos]


class CLIP(nn.Module):
    def __init__(self, cfg):
        """cfg: a complete CLIPConfig dict (config.with_defaults).  Weights: N(0, 0.02) for
        every linear, convolution and embedding, zero biases (the training's
        initialization; load_clip overwrites them).  The vision tower is built
        first: the construction order fixes the random stream, and with it what
        the training computes for a seed."""
        super().__init__()
        self.config = cfg
        t, v = cfg["text_config"], cfg["vision_config"]
        d = cfg["projection_dim"]
        self.vision_model = VisionTransformer(v)
        self.text_model = TextTransformer(t)
        self.visual_projection = nn.Linear(v["hidden_size"], d, bias=False)
        self.text_projection = nn.Linear(t["hidden_size"], d, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(cfg["logit_scale_init_value"]))
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)

    def encode_image(self, pixels, dense="plain"):
        """pixels [N,C,S,S] float32 -> (embeds [N,D], patches [N,G*G,D]).
        S = image_size, or another multiple of patch_size (positions resized);
        dense: "plain", "clearclip" or "sclip" (the patch tokens' last block)."""
        tokens = self.visual_projection(self.vision_model(pixels, dense))
        return tokens[:, 0], tokens[:, 1:]

    def encode_text(self, ids):
        """ids [N,L] int64 (start token first, end token included) -> [N,D]."""
        return self.text_projection(self.text_model(ids))

    def encode_ids(self, id_lists):
        """Token id lists of any lengths -> [N,D], each pooled at its last position
        (its end token), so the ids need not be the vocabulary's (the training
        remaps them: train.CompactTokens).  Padded with 0 after the end; the
        causal mask keeps the padding out of the pooled position."""
        lengths = torch.tensor([len(x) for x in id_lists])
        ids = torch.zeros(len(id_lists), int(lengths.max()), dtype=torch.long)
        for i, x in enumerate(id_lists):
            ids[i, :len(x)] = torch.tensor(x)
        return self.text_projection(self.text_model(ids, pool_at=lengths - 1))


def load_clip(model_dir):
    """The checkpoint of model_dir (config.json, model.safetensors in F32/F16/BF16)
    as a float32 CLIP in eval mode; every weight must be there with its shape."""
    model = CLIP(load_config(model_dir))
    tensors = safetensors.read(os.path.join(model_dir, "model.safetensors"))
    state = model.state_dict()
    missing = [k for k in state if k not in tensors]
    if missing:
        raise ValueError(f"{model_dir}: model.safetensors lacks {missing[:5]}")
    unexpected = [k for k in tensors if k not in state]
    if unexpected:
        raise ValueError(f"{model_dir}: model.safetensors has tensors CLIPModel lacks: {unexpected[:5]}")
    # logit_scale is a scalar; some writers store it as [1]
    if "logit_scale" in tensors and tensors["logit_scale"].size == 1:
        tensors["logit_scale"] = tensors["logit_scale"].reshape(())
    for name, value in state.items():
        if tuple(tensors[name].shape) != tuple(value.shape):
            raise ValueError(f"{model_dir}: tensor {name} has shape {list(tensors[name].shape)}, "
                             f"expected {list(value.shape)}")
    model.load_state_dict({k: torch.from_numpy(np.array(tensors[k])) for k in state}, strict=True)
    model.eval()
    return model


def save_weights(path, state_dict, dtype="F16"):
    """A state_dict (torch tensors) as a model.safetensors, every tensor in dtype.
    The scalar logit_scale is stored with shape [1], as tests/fixtures/synth-umg
    has it (load_clip and the C loader take [] and [1])."""
    safetensors.write(path, {k: (dtype, np.atleast_1d(v.detach().cpu().numpy()))
                             for k, v in state_dict.items()})


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
