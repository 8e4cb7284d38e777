"""Pre-rendered training/evaluation tensors for the synthetic world, built through the
same path the C ingest takes: encoded JPEG/PNG bytes -> PIL decode -> ENC_FIT_PAD."""

import io
import os
import sys
from multiprocessing import Pool

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "synthworld"))
import world  # noqa: E402
import pooling  # noqa: E402
from preprocess import MEAN, STD, fit_pad_uint8  # noqa: E402

BACKGROUND = "background"


def full_phrases():
    return ["%s %s %s" % (s, c, sh) for s in world.SIZES for c in world.COLOUR_NAMES for sh in world.SHAPES]


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


def prepare_one(args):
    seed, index, size, patch = args
    name, data, (w, h), objs, cap = world.make(seed, index, png_as_image=True)
    img = data if isinstance(data, Image.Image) else Image.open(io.BytesIO(data))
    u8, geom = fit_pad_uint8(img, size)
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[geom["off_y"]:geom["off_y"] + geom["resized_h"], geom["off_x"]:geom["off_x"] + geom["resized_w"]] = u8
    g = size // patch
    cover = np.stack([_cell_coverage(o["mask"], geom, size, patch) for o in objs])  # [n, g, g]
    label = np.full((g, g), -2, dtype=np.int64)  # -2 ignore, -1 background, k object k
    total = cover.sum(0)
    label[total < 0.1] = -1
    best = cover.argmax(0)
    label[cover.max(0) >= 0.3] = best[cover.max(0) >= 0.3]
    rng = np.random.default_rng([seed, index, 2])
    bg = _background_box(rng, objs, w, h)
    boxes = [o["box"] for o in objs] + ([bg] if bg else [])
    weights = np.array(pooling.weight_matrix(boxes, geom, patch, g), dtype=np.float32)
    light = [{k: o[k] for k in ("shape", "colour", "size", "phrase", "box", "cx", "cy")} for o in objs]
    return {"name": name, "width": w, "height": h, "caption": cap, "objects": light, "geom": geom,
            "canvas": canvas, "label": label.reshape(-1), "weights": weights, "has_bg": bg is not None}


def prepare(seed, count, size, patch, procs=2):
    jobs = [(seed, i, size, patch) for i in range(count)]
    if procs > 1:
        with Pool(procs) as p:
            return p.map(prepare_one, jobs, chunksize=16)
    return [prepare_one(j) for j in jobs]


def prepare_cached(path, seed, count, size, patch, procs=2):
    """prepare(), stored in / reused from a pickle at path (None: no cache)."""
    import pickle
    key = (seed, count, size, patch)
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
