"""A CLIP in PyTorch whose state_dict keys and arithmetic are those of Hugging Face
CLIPModel (pre-LN transformer, quick_gelu, causal text mask, end-token pooling),
so its weights load into encoder/ unchanged.  Also reads/writes safetensors by hand."""

import json
import math
import struct

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(d, d)
        self.k_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d)
        self.out_proj = nn.Linear(d, d)

    def forward(self, x, mask=None):
        b, n, d = x.shape
        hd = d // self.heads
        q = (self.q_proj(x) * hd ** -0.5).view(b, n, self.heads, hd).transpose(1, 2)
        k = self.k_proj(x).view(b, n, self.heads, hd).transpose(1, 2)
        v = self.v_proj(x).view(b, n, self.heads, hd).transpose(1, 2)
        a = q @ k.transpose(-1, -2)
        if mask is not None:
            a = a + mask
        a = a.softmax(-1)
        return self.out_proj((a @ v).transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    def __init__(self, d, inter):
        super().__init__()
        self.fc1 = nn.Linear(d, inter)
        self.fc2 = nn.Linear(inter, d)

    def forward(self, x):
        return self.fc2(quick_gelu(self.fc1(x)))


class Layer(nn.Module):
    def __init__(self, d, heads, inter, eps):
        super().__init__()
        self.self_attn = Attention(d, heads)
        self.layer_norm1 = nn.LayerNorm(d, eps=eps)
        self.mlp = MLP(d, inter)
        self.layer_norm2 = nn.LayerNorm(d, eps=eps)

    def forward(self, x, mask=None):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class Encoder(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.layers = nn.ModuleList(Layer(c["hidden_size"], c["num_attention_heads"], c["intermediate_size"],
                                          c["layer_norm_eps"]) for _ in range(c["num_hidden_layers"]))

    def forward(self, x, mask=None):
        for layer in self.layers:
            x = layer(x, mask)
        return x


class VisionEmbeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        d, p = c["hidden_size"], c["patch_size"]
        self.grid = c["image_size"] // p
        self.class_embedding = nn.Parameter(torch.randn(d) * 0.02)
        self.patch_embedding = nn.Conv2d(3, d, p, stride=p, bias=False)
        self.position_embedding = nn.Embedding(self.grid * self.grid + 1, d)

    def forward(self, px):
        x = self.patch_embedding(px).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], 1) + self.position_embedding.weight[None]


class VisionModel(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["hidden_size"]
        self.embeddings = VisionEmbeddings(c)
        self.pre_layrnorm = nn.LayerNorm(d, eps=c["layer_norm_eps"])
        self.encoder = Encoder(c)
        self.post_layernorm = nn.LayerNorm(d, eps=c["layer_norm_eps"])

    def forward(self, px):
        h = self.encoder(self.pre_layrnorm(self.embeddings(px)))
        return self.post_layernorm(h)  # every token; [:, 0] is the pooled one


class TextEmbeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.token_embedding = nn.Embedding(c["vocab_size"], c["hidden_size"])
        self.position_embedding = nn.Embedding(c["max_position_embeddings"], c["hidden_size"])


class TextModel(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.embeddings = TextEmbeddings(c)
        self.encoder = Encoder(c)
        self.final_layer_norm = nn.LayerNorm(c["hidden_size"], eps=c["layer_norm_eps"])

    def forward(self, ids, lengths):
        n = ids.shape[1]
        x = self.embeddings.token_embedding(ids) + self.embeddings.position_embedding.weight[:n][None]
        mask = torch.full((n, n), float("-inf")).triu(1)[None, None]
        h = self.final_layer_norm(self.encoder(x, mask))
        return h[torch.arange(ids.shape[0]), lengths - 1]  # the end token


class CLIP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        tc, vc = config["text_config"], config["vision_config"]
        pd = config["projection_dim"]
        self.vision_model = VisionModel(vc)
        self.text_model = TextModel(tc)
        self.visual_projection = nn.Linear(vc["hidden_size"], pd, bias=False)
        self.text_projection = nn.Linear(tc["hidden_size"], pd, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(config.get("logit_scale_init_value", 2.6592)))
        self.grid = vc["image_size"] // vc["patch_size"]
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.normal_(m.weight, std=0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)

    def encode_image(self, px):
        """(image embeds [B, P], projected patch tokens [B, G*G, P]), not normalized."""
        h = self.vision_model(px)
        proj = self.visual_projection(h)
        return proj[:, 0], proj[:, 1:]

    def encode_ids(self, id_lists):
        lengths = torch.tensor([len(x) for x in id_lists])
        n = int(lengths.max())
        ids = torch.zeros(len(id_lists), n, dtype=torch.long)
        for i, x in enumerate(id_lists):
            ids[i, :len(x)] = torch.tensor(x)
        return self.text_projection(self.text_model(ids, lengths))


# ------------------------------------------------------------------ safetensors

_DT = {"F32": (np.float32, 4), "F16": (np.float16, 2)}


def save_safetensors(path, tensors, dtype="F16"):
    """Hand-written safetensors: 8-byte LE header length, JSON header, raw data."""
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name].detach().cpu().numpy().astype(_DT[dtype][0]))
        b = a.tobytes()
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)  # keep the data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, v in header.items():
        if name == "__metadata__":
            continue
        dt, size = _DT[v["dtype"]]
        s, e = v["data_offsets"]
        a = np.frombuffer(data[s:e], dtype=dt).reshape(v["shape"]).astype(np.float32)
        out[name] = torch.from_numpy(a.copy())
    return out


def load_checkpoint(model_dir):
    with open(model_dir + "/config.json") as f:
        cfg = json.load(f)
    m = CLIP(cfg)
    sd = load_safetensors(model_dir + "/model.safetensors")
    missing, unexpected = m.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise RuntimeError("checkpoint mismatch: missing %s unexpected %s" % (missing, unexpected))
    return m.eval()
