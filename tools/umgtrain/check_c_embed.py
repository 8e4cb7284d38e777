"""Compare `umgdb embed` (the C encoder) with the PyTorch twin on a trained checkpoint.

    /usr/bin/python3 -m tools.umgtrain.check_c_embed --bin build/umgdb --model tests/fixtures/synth-umg

For a few held-out synthetic photos and their captions: the C image embedding and
patch tokens against PyTorch's on the C encoder's own preprocessed pixels
(--dump-pixels: the model arithmetic, F16 weights included) and on PIL's
preprocessing of the same file (end to end); the C text embedding against
PyTorch's.  Prints the minimum cosines; exits 1 if one is below --min-cos.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tools.synthworld import world
from tools.umgclip.model import load_clip
from tools.umgclip.preprocess import fit_crop
from tools.umgclip.tokenizer import Tokenizer


def clip_crop(path, size):
    """CLIP's own preprocessing (ENC_FIT_CROP), what `umgdb embed` applies: [1,3,S,S]."""
    with Image.open(path) as img:
        return torch.from_numpy(fit_crop(img, size)[0])[None]


def run(cmd):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit("failed: %s\n%s" % (" ".join(cmd), r.stderr))
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="build/umgdb")
    ap.add_argument("--model", default="tests/fixtures/synth-umg")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--count", type=int, default=6)
    ap.add_argument("--min-cos", type=float, default=0.999)
    a = ap.parse_args()
    torch.set_num_threads(1)
    model = load_clip(a.model)
    size = model.config["vision_config"]["image_size"]
    tok = Tokenizer(a.model)
    worst = {"image(C pixels)": 1.0, "patches(C pixels)": 1.0, "image(PIL pixels)": 1.0,
             "pixels max|diff|": 0.0, "text": 1.0}
    with tempfile.TemporaryDirectory() as tmp:
        files, caps = [], []
        for i in range(a.count):
            name, blob, _, _, cap = world.make(a.seed, i)
            p = os.path.join(tmp, name)
            with open(p, "wb") as f:
                f.write(blob)
            files.append(p)
            caps.append(cap)
        for p in files:
            dump = p + ".f32"
            out = run([a.bin, "embed", "--model", a.model, "--image", p, "--patches", "--dump-pixels", dump,
                       "--threads", "1"])[0]
            px = torch.from_numpy(np.fromfile(dump, dtype=np.float32).reshape(1, 3, size, size))
            with torch.no_grad():
                e, pt = model.encode_image(px)
                e2, _ = model.encode_image(clip_crop(p, size))
            ce = torch.tensor(out["embedding"])
            cp = torch.tensor(out["patches"])
            worst["image(C pixels)"] = min(worst["image(C pixels)"], float(F.cosine_similarity(e[0], ce, 0)))
            worst["patches(C pixels)"] = min(worst["patches(C pixels)"],
                                             float(F.cosine_similarity(pt[0], cp, 1).min()))
            worst["image(PIL pixels)"] = min(worst["image(PIL pixels)"], float(F.cosine_similarity(e2[0], ce, 0)))
            worst["pixels max|diff|"] = max(worst["pixels max|diff|"], float((px - clip_crop(p, size)).abs().max()))
        cmd = [a.bin, "embed", "--model", a.model]
        for c in caps:
            cmd += ["--text", c]
        outs = run(cmd)
        for c, o in zip(caps, outs):
            ids = tok.tokenize(c)
            if o.get("ids") != ids:
                sys.exit("token ids differ for %r: C %s, Python %s" % (c, o.get("ids"), ids))
            with torch.no_grad():
                t = model.encode_ids([ids])[0]
            worst["text"] = min(worst["text"], float(F.cosine_similarity(t, torch.tensor(o["embedding"]), 0)))
    for k, v in worst.items():
        print("%-20s %.7f" % (k, v))
    bad = [k for k, v in worst.items() if k != "pixels max|diff|" and v < a.min_cos]
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
