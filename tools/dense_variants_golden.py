"""dense_variants_golden.py - golden outputs of the dense feature variants for
tests/test_model.c (test_dense_variants_golden), from tools/umgclip/model.py.

    /usr/bin/python3 -m tools.dense_variants_golden \\
        [--model tests/fixtures/clip-tiny] [--out tests/fixtures/dense-variants/golden.json]

Each case: one photo of the fixture's images/ preprocessed as ingest does
(ENC_FIT_PAD at the case's input size, tools/umgclip/preprocess.py, which the C
preprocessing reproduces bit for bit), encoded by the PyTorch reference with the
case's dense mode ("plain", "clearclip", "sclip") at that input size (positions
resized bicubically when it is not image_size).  Stored: the image embedding
and the projected patch tokens of every `patch_stride`-th patch (row-major
index in `patch_index`), so that the file stays small.  Values are float32
printed with 7 significant digits.

Uses Debian's python3-torch, python3-numpy, python3-pil: run with /usr/bin/python3.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from PIL import Image

from tools.umgclip import preprocess
from tools.umgclip.model import load_clip

HERE = os.path.dirname(os.path.abspath(__file__))

# (image, input size, mode, patch stride).  Two images per (size, mode) where the
# C test also checks them batched; 224 is clip-tiny's native size (grid 7),
# 320 and 448 resize its positions to grids 10 and 14.
CASES = [
    ("astronaut.png", 224, "clearclip", 1),
    ("rocket.jpg", 224, "clearclip", 1),
    ("astronaut.png", 224, "sclip", 1),
    ("rocket.jpg", 224, "sclip", 1),
    ("astronaut.png", 320, "plain", 3),
    ("astronaut.png", 320, "clearclip", 3),
    ("astronaut.png", 320, "sclip", 3),
    ("rocket.jpg", 320, "sclip", 3),
    ("rocket.jpg", 448, "plain", 7),
    ("rocket.jpg", 448, "clearclip", 7),
]


def f7(values):
    return [float("%.7g" % v) for v in np.asarray(values, np.float32).ravel()]


def main():
    root = os.path.dirname(HERE)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.path.join(root, "tests/fixtures/clip-tiny"))
    ap.add_argument("--out", default=os.path.join(root, "tests/fixtures/dense-variants/golden.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_clip(args.model)
    patch = model.config["vision_config"]["patch_size"]
    cases = []
    with torch.no_grad():
        for image, size, mode, stride in CASES:
            with Image.open(os.path.join(args.model, "images", image)) as im:
                pixels, _ = preprocess.fit_pad(im, size)
            emb, patches = model.encode_image(torch.from_numpy(pixels[None]), dense=mode)
            grid = size // patch
            index = list(range(0, grid * grid, stride))
            cases.append({
                "image": image, "input_size": size, "mode": mode, "grid": grid,
                "embedding": f7(emb[0].numpy()),
                "patch_index": index,
                "patches": [f7(patches[0, i].numpy()) for i in index],
            })
    doc = {
        # (tools/clip_torch.py is tools/umgclip/model.py now; the text stays as the committed
        # golden has it, so that regenerating it changes numbers only)
        "about": "dense feature variants of clip-tiny: tools/clip_torch.py on ENC_FIT_PAD pixels; "
                 "written by tools/dense_variants_golden.py",
        "fit": "pad",
        "cases": cases,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    print(f"{args.out}: {len(cases)} cases, {os.path.getsize(args.out)} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
