"""Pre-rendered training/evaluation tensors for the synthetic world, built through the
same path the C ingest takes: encoded JPEG/PNG bytes -> PIL decode -> ENC_FIT_PAD."""

import io
import os
from multiprocessing import Pool

import numpy as np
from PIL import Image

from tools.synthworld import world
from tools.umgclip.preprocess import MEAN, STD, fit_pad_uint8
from tools.umgtrain import pooling

BACKGROUND = "background"


def full_phrase_parts():
    """(size, colour, shape) of every full phrase, in full_phrases() order."""
    return [(s, c, sh) for s in world.SIZES for c in world.COLOUR_NAMES for sh in world.SHAPES]


def full_phrases():
    return ["%s %s %s" % p for p in full_phrase_parts()]


def short_phrases():
    return ["%s %s" % (c, sh) for c in world.COLOUR_NAMES for sh in world.SHAPES]


def _cell_coverage(mask, geom, size, patch):
    """Share of each grid cell covered by a boolean mask given in original pixels."""
    m = Image.fromarray(mask.astype(np.uint8) * 255, "L").resize((geom["resized_w"], geom["resized_h"]), Image.BILINEAR)
    canvas = np.zeros((size, size), dtype=np.float32)
    oy, ox = geom["off_y"], geom["off_x"]
    canvas[oy:oy + geom["resized_h"], ox:ox + geom["resized_w"]] = np.asarray(m, dtype=np.float32) / 255.0
    g = size // patch
    return canvas.reshape(g, patch, g, patch).mean(axis=(1, 3))


def _background_box(rng, objs, w, h):
    """A box of object-like size that no object overlaps much (None if none found)."""
    occupied = np.zeros((h, w), dtype=bool)
    for o in objs:
        occupied |= o["mask"]
    short = min(w, h)
    for _ in range(20):
        s = int(rng.uniform(0.2, 0.5) * short)
        x, y = int(rng.integers(0, w - s + 1)), int(rng.integers(0, h - s + 1))
        if occupied[y:y + s, x:x + s].mean() < 0.05:
            return [x, y, s, s]
    return None


def cell_labels(masks, geom, size, patch):
    """Per grid cell (row-major, [G*G]): the index of the object covering at least 30% of
    it (the most covered one), -1 background (objects cover < 10%), -2 ignored (between)."""
    g = size // patch
    cover = np.stack([_cell_coverage(m, geom, size, patch) for m in masks])  # [n, g, g]
    label = np.full((g, g), -2, dtype=np.int64)
    label[cover.sum(0) < 0.1] = -1
    best = cover.argmax(0)
    label[cover.max(0) >= 0.3] = best[cover.max(0) >= 0.3]
    return label.reshape(-1)


def cell_classes(label, phrases):
    """cell_labels as the pixel loss's classes: the index of the object's phrase in
    full_phrases(), len(full_phrases()) for background, -100 ignored."""
    full = {p: i for i, p in enumerate(full_phrases())}
    pix_cls = np.full(label.shape, -100, dtype=np.int64)
    pix_cls[label == -1] = len(full)
    for k, p in enumerate(phrases):
        pix_cls[label == k] = full[p]
    return pix_cls


def prepare_one(args):
    seed, index, size, patch = args
    name, data, (w, h), objs, cap = world.make(seed, index, png_as_image=True)
    img = data if isinstance(data, Image.Image) else Image.open(io.BytesIO(data))
    u8, geom = fit_pad_uint8(img, size)
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[geom["off_y"]:geom["off_y"] + geom["resized_h"], geom["off_x"]:geom["off_x"] + geom["resized_w"]] = u8
    g = size // patch
    label = cell_labels([o["mask"] for o in objs], geom, size, patch)
    rng = np.random.default_rng([seed, index, 2])
    bg = _background_box(rng, objs, w, h)
    boxes = [o["box"] for o in objs] + ([bg] if bg else [])
    weights = np.array(pooling.weight_matrix(boxes, geom, patch, g), dtype=np.float32)
    light = [{k: o[k] for k in ("shape", "colour", "size", "phrase", "box", "cx", "cy")} for o in objs]
    pix_cls = cell_classes(label, [o["phrase"] for o in objs])
    return {"name": name, "width": w, "height": h, "caption": cap, "objects": light, "geom": geom,
            "canvas": canvas, "label": label, "pix_cls": pix_cls, "weights": weights, "has_bg": bg is not None}


def prepare(seed, count, size, patch, procs=2):
    jobs = [(seed, i, size, patch) for i in range(count)]
    if procs > 1:
        with Pool(procs) as p:
            return p.map(prepare_one, jobs, chunksize=16)
    return [prepare_one(j) for j in jobs]


def prepare_cached(path, seed, count, size, patch, procs=2):
    """prepare(), stored in / reused from a pickle at path (None: no cache)."""
    import pickle
    key = (seed, count, size, patch, 2)  # 2: items carry pix_cls
    if path and os.path.exists(path):
        with open(path, "rb") as f:
            k, items = pickle.load(f)
        if k == key:
            return items
    items = prepare(seed, count, size, patch, procs)
    if path:
        with open(path + ".tmp", "wb") as f:
            pickle.dump((key, items), f, protocol=4)
        os.replace(path + ".tmp", path)
    return items


def to_pixels_fast(items):
    """to_pixels() with the arithmetic in torch over the whole batch (same values)."""
    import torch
    u8 = torch.from_numpy(np.stack([it["canvas"] for it in items]))  # [B, S, S, 3]
    x = ((u8.float() / 255.0 - torch.from_numpy(MEAN)) / torch.from_numpy(STD)).permute(0, 3, 1, 2).contiguous()
    for i, it in enumerate(items):  # the padding is exactly 0
        g = it["geom"]
        y0, y1, x0, x1 = g["off_y"], g["off_y"] + g["resized_h"], g["off_x"], g["off_x"] + g["resized_w"]
        x[i, :, :y0] = 0.0
        x[i, :, y1:] = 0.0
        x[i, :, :, :x0] = 0.0
        x[i, :, :, x1:] = 0.0
    return x


def attach_bf16_pixels(items, chunk=256):
    """Store every item's network input once, as the bfloat16 tensor [3, S, S] the
    autocast (--bf16 1) convolution would otherwise cast to_pixels_fast's float32 to
    each step: the same values (round to nearest even from the same float32), without
    the per-step normalization, permutation and cast of the whole batch."""
    import torch
    for i in range(0, len(items), chunk):
        part = items[i:i + chunk]
        px = to_pixels_fast(part).to(torch.bfloat16)
        for it, x in zip(part, px):
            it["px_bf16"] = x.clone()


def to_pixels(items):
    """Float32 [B, 3, S, S] network input; the padding stays exactly 0."""
    import torch
    out = []
    for it in items:
        x = (it["canvas"].astype(np.float32) / np.float32(255.0) - MEAN) / STD
        x = x.transpose(2, 0, 1).copy()
        g = it["geom"]
        keep = np.zeros(x.shape[1:], dtype=bool)
        keep[g["off_y"]:g["off_y"] + g["resized_h"], g["off_x"]:g["off_x"] + g["resized_w"]] = True
        x[:, ~keep] = 0.0
        out.append(x)
    return torch.from_numpy(np.stack(out))


# ------------------------------------------------------------ proposal-like boxes

def weight_matrix_np(boxes, geom, patch, grid):
    """pooling.weight_matrix, vectorized: [R, G*G] float32, rows summing to 1.
    Same arithmetic (box -> input pixels with the fit's geometry, clip, / patch,
    overlap of the box with each cell); train.py checks the two agree at start."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sx, sy = float(geom["scale_x"]), float(geom["scale_y"])
    ox, oy = float(geom["off_x"]), float(geom["off_y"])
    iw, ih = float(geom["input_w"]), float(geom["input_h"])
    p = float(patch)
    x0 = np.clip(b[:, 0] * sx + ox, 0.0, iw) / p
    x1 = np.clip((b[:, 0] + b[:, 2]) * sx + ox, 0.0, iw) / p
    y0 = np.clip(b[:, 1] * sy + oy, 0.0, ih) / p
    y1 = np.clip((b[:, 1] + b[:, 3]) * sy + oy, 0.0, ih) / p
    c = np.arange(grid, dtype=np.float64)
    wx = np.maximum(0.0, np.minimum(x1[:, None], c + 1) - np.maximum(x0[:, None], c))
    wy = np.maximum(0.0, np.minimum(y1[:, None], c + 1) - np.maximum(y0[:, None], c))
    w = (wy[:, :, None] * wx[:, None, :]).reshape(len(b), grid * grid)
    s = w.sum(1, keepdims=True)
    if not (s > 0).all():
        raise ValueError("a box covers no input pixels")
    return (w / s).astype(np.float32)


def iou_matrix(a, b):
    """IoU [len(a), len(b)] of [x, y, w, h] boxes (meaning.iou, vectorized)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    iw = np.maximum(0.0, np.minimum(a[:, None, 0] + a[:, None, 2], b[None, :, 0] + b[None, :, 2])
                    - np.maximum(a[:, None, 0], b[None, :, 0]))
    ih = np.maximum(0.0, np.minimum(a[:, None, 1] + a[:, None, 3], b[None, :, 1] + b[None, :, 3])
                    - np.maximum(a[:, None, 1], b[None, :, 1]))
    inter = iw * ih
    union = (a[:, 2] * a[:, 3])[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def proposal_like_boxes(rng, obj_boxes, w, h, n_random=4):
    """Boxes like the ones enc_propose gives the server (docs/synth.md): per object its
    tight box, two slightly jittered copies (IoU mostly 0.6-0.95), a loose box around
    it (IoU ~0.25-0.6) and a part of it (IoU ~0.1-0.5); the union of two objects;
    a few random boxes; the whole photo.  [R, 4] float64 [x, y, w, h], inside the photo."""
    out = []
    for x, y, bw, bh in obj_boxes:
        out.append([x, y, bw, bh])
        for _ in range(2):
            d = rng.normal(0.0, 0.07, 4) * np.array([bw, bh, bw, bh])
            out.append([x + d[0], y + d[1], bw + d[2] - d[0], bh + d[3] - d[1]])
        g = rng.uniform(0.1, 0.5, 4) * np.array([bw, bh, bw, bh])
        out.append([x - g[0], y - g[1], bw + g[0] + g[2], bh + g[1] + g[3]])
        fw, fh = rng.uniform(0.3, 0.75, 2)
        out.append([x + rng.uniform(0, 1 - fw) * bw, y + rng.uniform(0, 1 - fh) * bh, fw * bw, fh * bh])
    if len(obj_boxes) >= 2:
        i, j = rng.choice(len(obj_boxes), 2, replace=False)
        a, b = obj_boxes[i], obj_boxes[j]
        x0, y0 = min(a[0], b[0]), min(a[1], b[1])
        out.append([x0, y0, max(a[0] + a[2], b[0] + b[2]) - x0, max(a[1] + a[3], b[1] + b[3]) - y0])
    short = min(w, h)
    for _ in range(n_random):
        bw, bh = rng.uniform(0.15, 0.8) * short, rng.uniform(0.15, 0.8) * short
        out.append([rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh])
    out.append([0, 0, w, h])
    b = np.array(out, dtype=np.float64)
    x0 = np.clip(b[:, 0], 0, w - 2)
    y0 = np.clip(b[:, 1], 0, h - 2)
    x1 = np.clip(b[:, 0] + b[:, 2], x0 + 2, w)
    y1 = np.clip(b[:, 1] + b[:, 3], y0 + 2, h)
    return np.stack([x0, y0, x1 - x0, y1 - y0], 1)


def load_proposals(path, items):
    """The server's proposal boxes of the photos in items, from a dump_proposals.py file
    ({file name: record with "regions": [{"box": [x, y, w, h]}, ...]}): {name: [R, 4]
    float64}.  enc_propose depends on the pixels only, so a dump made with any model of
    the photos `generate` wrote for the same seed holds the boxes the server ranks."""
    import json
    with open(path) as f:
        dump = json.load(f)
    out = {}
    for it in items:
        rec = dump.get(it["name"])
        if rec is None:
            raise SystemExit("%s: no proposals of %s (a dump of another seed or count?)" % (path, it["name"]))
        if (rec.get("width"), rec.get("height")) not in ((it["width"], it["height"]), (None, None)):
            raise SystemExit("%s: %s is %sx%s there, %dx%d here" % (path, it["name"], rec.get("width"),
                                                                   rec.get("height"), it["width"], it["height"]))
        b = np.array([r["box"] for r in rec.get("regions", [])], dtype=np.float64).reshape(-1, 4)
        out[it["name"]] = b[(b[:, 2] > 0) & (b[:, 3] > 0)]
    return out


# ------------------------------------------------------------ augmentation

def hflip_item(it, size, patch):
    """The item as a photo of the mirrored world: pixels, boxes, cell labels and the
    caption mirrored (left and right swap in the caption's order and relations).
    The world's distribution is symmetric under a horizontal mirror (shapes with small
    random tilts either way, circles/rings/crosses symmetric, shading of either sign),
    so this is a free second view of every photo.  The whole canvas is mirrored,
    padding included: the fit's left offset becomes size - off_x - resized_w (at most
    one pixel from where the server's centring would put it), and box, cell grid and
    input stay in the exact correspondence pooling.py defines."""
    g = size // patch
    w = it["width"]
    geom = dict(it["geom"])
    geom["off_x"] = size - geom["off_x"] - geom["resized_w"]
    objs = []
    for o in it["objects"]:
        m = dict(o)
        x, y, bw, bh = o["box"]
        m["box"] = [w - x - bw, y, bw, bh]
        m["cx"] = w - o["cx"]
        objs.append(m)
    out = dict(it)
    out.update(geom=geom, objects=objs, caption=world.caption(objs), flipped=True,
               pix_cls=np.ascontiguousarray(it["pix_cls"].reshape(g, g)[:, ::-1].reshape(-1)),
               label=np.ascontiguousarray(it["label"].reshape(g, g)[:, ::-1].reshape(-1)),
               weights=np.ascontiguousarray(it["weights"].reshape(-1, g, g)[:, :, ::-1].reshape(len(it["weights"]), -1)),
               canvas=np.ascontiguousarray(it["canvas"][:, ::-1]))
    if "px_bf16" in it:
        out["px_bf16"] = it["px_bf16"].flip(-1)
    return out


def hflip_boxes(boxes, width):
    """[R, 4] [x, y, w, h] boxes of a photo of this width, mirrored."""
    b = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    b[:, 0] = width - b[:, 0] - b[:, 2]
    return b
