"""The C encoder's preprocessing (encoder/enc_image.h) in Python, with PIL: the
twin the C code reproduces bit for bit (tests/test_image.c's goldens).

ENC_FIT_PAD (ingest): resize the LONGER side to the input size S with PIL's
antialiased bicubic (8-bit), the shorter side to int(S * short / long) (at least
1), paste centered at integer offsets ((S - w) // 2, (S - h) // 2) on an S x S
canvas that is 0 after normalization (the CLIP mean colour).
ENC_FIT_CROP (CLIP's own preprocessing, `umgdb embed`): resize the SHORTER side
to S (the longer to int(S * long / short)), crop S x S at offsets
round((w - S) / 2), round((h - S) / 2).
Both then scale to [0,1] and normalize with CLIP's mean/std.  Output float32
[3, S, S] and the geometry (enc_preproc_geom's fields).

Needs python3-numpy and python3-pil.
"""

import numpy as np
from PIL import Image

from tools.umgclip.config import IMAGE_MEAN, IMAGE_STD

MEAN = np.array(IMAGE_MEAN, dtype=np.float32)  # float32, as the C code computes
STD = np.array(IMAGE_STD, dtype=np.float32)


def f32(v):
    """v rounded to float32, as a Python float (the C structs hold float32)."""
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
        "scale_x": f32(rw / width), "scale_y": f32(rh / height),
        "input_w": size, "input_h": size,
    }


def crop_geometry(width, height, size):
    """enc_preproc_geom for ENC_FIT_CROP: shorter side -> size, centre crop (the
    offsets of the resized photo on the input are negative)."""
    if width <= height:
        rw, rh = size, int(size * height / width)
    else:
        rw, rh = int(size * width / height), size
    return {"resized_w": rw, "resized_h": rh,
            "off_x": -int(round((rw - size) / 2)), "off_y": -int(round((rh - size) / 2)),
            "scale_x": f32(rw / width), "scale_y": f32(rh / height),
            "input_w": size, "input_h": size}


def normalize(rgb_u8):
    """RGB uint8 [H, W, 3] -> float32 [3, H, W]: /255, minus MEAN, over STD."""
    x = (np.asarray(rgb_u8).astype(np.float32) / np.float32(255.0) - MEAN) / STD
    return x.transpose(2, 0, 1)


def fit_pad_uint8(img, size):
    """(resized RGB uint8 [rh, rw, 3], geom). img: PIL image (any mode)."""
    img = img.convert("RGB")
    g = pad_geometry(img.width, img.height, size)
    r = img.resize((g["resized_w"], g["resized_h"]), Image.BICUBIC)
    return np.asarray(r, dtype=np.uint8), g


def normalize_into(resized_u8, geom, size):
    """Float32 [3, size, size] network input from the resized photo."""
    out = np.zeros((3, size, size), dtype=np.float32)
    oy, ox = geom["off_y"], geom["off_x"]
    out[:, oy:oy + geom["resized_h"], ox:ox + geom["resized_w"]] = normalize(resized_u8)
    return out


def fit_pad(img, size):
    """ENC_FIT_PAD: (float32 [3, size, size], geom). img: PIL image (any mode)."""
    u8, g = fit_pad_uint8(img, size)
    return normalize_into(u8, g, size), g


def fit_crop(img, size):
    """ENC_FIT_CROP: (float32 [3, size, size], geom). img: PIL image (any mode)."""
    img = img.convert("RGB")
    g = crop_geometry(img.width, img.height, size)
    r = img.resize((g["resized_w"], g["resized_h"]), Image.BICUBIC)
    left, top = -g["off_x"], -g["off_y"]
    r = r.crop((left, top, left + size, top + size))
    return np.ascontiguousarray(normalize(np.asarray(r, dtype=np.uint8))), g
