#!/usr/bin/python3
"""The peer of bench_image: the reference CLIP preprocessing in Pillow + numpy
(Image.open().convert("RGB"), resize shorter side to 224 bicubic, center crop, /255,
normalize) on the same files, same repetitions.  Prints the median thread CPU time
per image in ms.

    bench/image/pillow_peer.py REPS FILE...
"""
import io
import sys
import time

import numpy as np
from PIL import Image

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def preprocess(data, size=224):
    im = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = im.size
    if w <= h:
        nw, nh = size, int(size * h / w)
    else:
        nw, nh = int(size * w / h), size
    im = im.resize((nw, nh), Image.BICUBIC)
    left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
    im = im.crop((left, top, left + size, top + size))
    x = np.asarray(im, dtype=np.float32) / np.float32(255.0)
    return ((x - MEAN) / STD).transpose(2, 0, 1).copy()


def main():
    reps = int(sys.argv[1])
    blobs = [open(f, "rb").read() for f in sys.argv[2:]]
    times = []
    for _ in range(reps):
        for b in blobs:
            t = time.thread_time()
            preprocess(b)
            times.append((time.thread_time() - t) * 1e3)
    times.sort()
    print(f"pillow+numpy   decode+preprocess median {times[len(times) // 2]:.2f} ms/image  ({len(times)} runs)")


if __name__ == "__main__":
    main()
