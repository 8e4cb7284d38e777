"""Generate a synthetic photo world with exact annotations.

    /usr/bin/python3 -m tools.synthworld.generate --seed S --count N OUT_DIR

Writes OUT_DIR/<name>.jpg|png (about 60% JPEG), OUT_DIR/masks/<name>_<k>.png
(8-bit, 255 = visible pixel of object k) and OUT_DIR/annotations.json:
  {"seed", "count", "images": [{"file", "width", "height", "caption",
    "objects": [{"phrase", "box": [x, y, w, h], "mask", "shape", "colour", "size"}]}]}
The same (seed, index) always gives the same photo and annotations.
"""
import argparse
import json
import os

import numpy as np
from PIL import Image

from tools.synthworld import world


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--start", type=int, default=0, help="first index (default 0)")
    ap.add_argument("out_dir")
    a = ap.parse_args()
    if a.count < 0 or a.seed < 0:
        ap.error("seed and count must be >= 0")
    os.makedirs(os.path.join(a.out_dir, "masks"), exist_ok=True)
    images = []
    for i in range(a.start, a.start + a.count):
        name, data, (w, h), objs, cap = world.make(a.seed, i)
        with open(os.path.join(a.out_dir, name), "wb") as f:
            f.write(data)
        stem = os.path.splitext(name)[0]
        ann = []
        for k, o in enumerate(objs):
            mname = "masks/%s_%d.png" % (stem, k)
            Image.fromarray(o["mask"].astype(np.uint8) * 255, "L").save(os.path.join(a.out_dir, mname))
            ann.append({"phrase": o["phrase"], "box": o["box"], "mask": mname,
                        "shape": o["shape"], "colour": o["colour"], "size": o["size"]})
        images.append({"file": name, "width": w, "height": h, "caption": cap, "objects": ann})
    with open(os.path.join(a.out_dir, "annotations.json"), "w") as f:
        json.dump({"seed": a.seed, "count": a.count, "images": images}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
