"""The C ingest path's preprocessing (encoder/enc_image.h, ENC_FIT_PAD), in Python.

Resize the LONGER side to the input size S with PIL's antialiased bicubic (8-bit),
the shorter side to int(S * short / long) (at least 1), paste centered at integer
offsets ((S - w) // 2, (S - h) // 2) on an S x S canvas that is 0 after
normalization (the CLIP mean colour), scale to [0,1], normalize with CLIP mean/std.
Output float32 [3, S, S].
"""

import numpy as np
from PIL import Image

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def _f32(v):
    return float(np.float32(v))


def pad_geometry(width, height, size):
    """enc_preproc_geom for ENC_FIT_PAD (scale as float32, as the C struct holds it)."""
    if width >= height:
        rw, rh = size, max(1, int(size * height / width))
    else:
        rw, rh = max(1, int(size * width / height)), size
    return {
        "resized_w": rw, "resized_h": rh,
        "off_x": (size - rw) // 2, "off_y": (size - rh) // 2,
        "scale_x": _f32(rw / width), "scale_y": _f32(rh / height),
        "input_w": size, "input_h": size,
    }


def fit_pad_uint8(img, size):
    """(resized RGB uint8 [rh, rw, 3], geom). img: PIL image (any mode)."""
    img = img.convert("RGB")
    g = pad_geometry(img.width, img.height, size)
    r = img.resize((g["resized_w"], g["resized_h"]), Image.BICUBIC)
    return np.asarray(r, dtype=np.uint8), g


def normalize_into(resized_u8, geom, size):
    """Float32 [3, size, size] network input from the resized photo."""
    out = np.zeros((3, size, size), dtype=np.float32)
    x = (resized_u8.astype(np.float32) / np.float32(255.0) - MEAN) / STD
    oy, ox = geom["off_y"], geom["off_x"]
    out[:, oy:oy + geom["resized_h"], ox:ox + geom["resized_w"]] = x.transpose(2, 0, 1)
    return out


def fit_pad(img, size):
    u8, g = fit_pad_uint8(img, size)
    return normalize_into(u8, g, size), g
