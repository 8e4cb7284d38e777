"""Writes tests/fixtures/images/: small test images for tests/test_image.c and the
expected results computed with Pillow (the reference CLIP's image library).

    /usr/bin/python3 -m tools.make_test_images [tests/fixtures/images]

Needs Debian's python3-pil (9.4) and python3-numpy.  Output is deterministic.

Files (expected pixels are raw 8-bit RGB, rows top to bottom, "W H" in manifest.txt):
  exif_N.jpg / exif_N.rgb   an upright 32x16 photo with a red 8x8 marker at its top-left,
                            stored transformed so that EXIF Orientation N (1..8) restores it;
                            .rgb = ImageOps.exif_transpose(Image.open(f)).convert("RGB")
  png_*.png / png_*.rgb     PNG colour types and depths; .rgb = Image.open(f).convert("RGB"),
                            except png_gray16: Pillow 9.4 opens 16-bit gray as mode "I" and
                            convert("RGB") clamps values to 255; we take the high byte (as
                            PIL does for every other 16-bit PNG), so .rgb holds value >> 8
  cmyk.jpg / cmyk.rgb       an Adobe CMYK JPEG (Pillow writes inverted CMYK)
  jpeg_*.jpg / jpeg_*.rgb   progressive 4:2:0, grayscale, odd-sized 4:2:2 JPEGs, and
                            jpeg_exif6_be_xmp.jpg: an XMP APP1 block before a big-endian
                            ("MM") Exif block with Orientation 6
  src.png                   37x23 RGB noise + gradients, source of the resize goldens
  resize_WxH.rgb            src.png resized with Image.resize((W, H), Image.BICUBIC)
  pad_NAME_S.f32            ENC_FIT_PAD input [3,S,S] float32 LE for image NAME (here or in
                            ../clip-tiny/images), from tools/umgclip/preprocess.py fit_pad
  portrait.png, strip.png, small.png   extra PAD inputs (portrait, 3000:1-ish strip, upscale)
"""
import io
import os
import struct
import sys
import zlib

import numpy as np
from PIL import Image, ImageOps

from tools.umgclip.preprocess import fit_pad  # the Python twin of ENC_FIT_PAD

HERE = os.path.dirname(os.path.abspath(__file__))

OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "tests", "fixtures", "images")
CLIP_IMAGES = os.path.join(HERE, "..", "tests", "fixtures", "clip-tiny", "images")
rng = np.random.default_rng(20261130)
manifest = []


def write_rgb(name, img):
    a = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img, dtype=np.uint8)
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(a.tobytes())
    manifest.append(f"{name} {a.shape[1]} {a.shape[0]}")


# ---------------------------------------------------------------- EXIF orientation
def exif_images():
    up = np.full((16, 32, 3), 128, np.uint8)   # upright: 32 wide, 16 high
    up[0:8, 0:8] = (255, 0, 0)                  # marker at the top-left
    up[8:16, 24:32] = (0, 0, 255)               # something distinct at the bottom-right
    upright = Image.fromarray(up, "RGB")
    # Stored image = inverse of the transpose exif_transpose applies for N.
    inverse = {1: None, 2: Image.FLIP_LEFT_RIGHT, 3: Image.ROTATE_180, 4: Image.FLIP_TOP_BOTTOM,
               5: Image.TRANSPOSE, 6: Image.ROTATE_90, 7: Image.TRANSVERSE, 8: Image.ROTATE_270}
    for n in range(1, 9):
        stored = upright if inverse[n] is None else upright.transpose(inverse[n])
        exif = Image.Exif()
        exif[0x0112] = n
        path = os.path.join(OUT, f"exif_{n}.jpg")
        stored.save(path, "JPEG", quality=95, subsampling=0, exif=exif.tobytes())
        got = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
        assert got.size == (32, 16), (n, got.size)
        write_rgb(f"exif_{n}.rgb", got)


# ---------------------------------------------------------------- PNG variants
def chunk(tag, data):
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def pack_row(row, depth):
    """row: 1-D array of samples (already interleaved) -> bytes at the given depth."""
    if depth == 16:
        return row.astype(">u2").tobytes()
    if depth == 8:
        return row.astype(np.uint8).tobytes()
    per = 8 // depth
    out = bytearray((len(row) + per - 1) // per)
    for i, v in enumerate(row):
        out[i // per] |= int(v) << (8 - depth * (i % per + 1))
    return bytes(out)


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def write_png(name, samples, color_type, depth, palette=None, trns=None, interlace=False):
    """samples: H x W x C integer array.  A minimal encoder (filter 0) so that every
    colour type, depth and Adam7 interlacing can be produced, which Pillow cannot."""
    h, w = samples.shape[:2]
    flat = samples.reshape(h, w, -1)
    raw = bytearray()
    if interlace:
        for x0, y0, dx, dy in ADAM7:
            sub = flat[y0::dy, x0::dx]
            if sub.shape[0] == 0 or sub.shape[1] == 0:
                continue
            for r in sub:
                raw += b"\0" + pack_row(r.reshape(-1), depth)
    else:
        for r in flat:
            raw += b"\0" + pack_row(r.reshape(-1), depth)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0,
                                                           1 if interlace else 0))
    if palette is not None:
        png += chunk(b"PLTE", bytes(np.asarray(palette, np.uint8).reshape(-1)))
    if trns is not None:
        png += chunk(b"tRNS", trns)
    png += chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + chunk(b"IEND", b"")
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(png)
    return os.path.join(OUT, name)


def png_images():
    h, w = 23, 37
    rgb16 = rng.integers(0, 65536, (h, w, 3))
    a16 = rng.integers(0, 65536, (h, w, 1))
    rgb8, a8 = rgb16 >> 8, a16 >> 8
    g8 = rgb8[..., :1]
    cases = [
        ("png_rgb", rgb8, 2, 8, {}),
        ("png_rgba", np.concatenate([rgb8, a8], 2), 6, 8, {}),
        ("png_gray", g8, 0, 8, {}),
        ("png_gray_alpha", np.concatenate([g8, a8], 2), 4, 8, {}),
        ("png_gray1", g8 >> 7, 0, 1, {}),
        ("png_gray2", g8 >> 6, 0, 2, {}),
        ("png_gray4", g8 >> 4, 0, 4, {}),
        ("png_gray_trns", g8, 0, 8, {"trns": struct.pack(">H", int(g8[0, 0, 0]))}),
        ("png_rgb16", rgb16, 2, 16, {}),
        ("png_rgba16", np.concatenate([rgb16, a16], 2), 6, 16, {}),
        ("png_gray_alpha16", np.concatenate([rgb16[..., :1], a16], 2), 4, 16, {}),
        ("png_rgb_interlaced", rgb8, 2, 8, {"interlace": True}),
        ("png_rgba16_interlaced", np.concatenate([rgb16, a16], 2), 6, 16, {"interlace": True}),
        ("png_gray2_interlaced", g8 >> 6, 0, 2, {"interlace": True}),
    ]
    pal = rng.integers(0, 256, (16, 3))
    idx8 = rng.integers(0, 16, (h, w, 1))
    trns = bytes(rng.integers(0, 256, 10).astype(np.uint8))  # fewer entries than the palette
    cases += [
        ("png_palette", idx8, 3, 8, {"palette": pal}),
        ("png_palette_trns", idx8, 3, 8, {"palette": pal, "trns": trns}),
        ("png_palette4_trns_interlaced", idx8, 3, 4, {"palette": pal, "trns": trns, "interlace": True}),
        ("png_palette1", idx8 & 1, 3, 1, {"palette": pal[:2]}),
    ]
    for name, s, ct, depth, kw in cases:
        path = write_png(name + ".png", s, ct, depth, **kw)
        write_rgb(name + ".rgb", Image.open(path).convert("RGB"))
    # 16-bit gray: the high byte (see the module docstring for why not Pillow's clamp).
    gray16 = rgb16[..., :1]
    write_png("png_gray16.png", gray16, 0, 16)
    im = Image.open(os.path.join(OUT, "png_gray16.png"))
    assert np.array_equal(np.asarray(im), gray16[..., 0]), "Pillow reads the 16-bit samples back"
    write_rgb("png_gray16.rgb", np.repeat((gray16 >> 8).astype(np.uint8), 3, axis=2))


def cmyk_image():
    h, w = 24, 40
    c = rng.integers(0, 256, (h, w, 4)).astype(np.uint8)
    c[:, :20] = (0, 255, 255, 0)        # red
    c[:12, 20:] = (0, 0, 0, 255)        # black
    img = Image.fromarray(c, "CMYK")
    path = os.path.join(OUT, "cmyk.jpg")
    img.save(path, "JPEG", quality=90)
    write_rgb("cmyk.rgb", Image.open(path).convert("RGB"))


def jpeg_images():
    h, w = 45, 61
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([xx * 4, yy * 5, (xx * yy) % 256], 2).astype(np.uint8)
    a[10:20, 5:25] = (250, 20, 20)
    img = Image.fromarray(a, "RGB")
    for name, kw in [("jpeg_progressive", {"progressive": True, "quality": 80, "subsampling": 2}),
                     ("jpeg_422_odd", {"quality": 85, "subsampling": 1}),
                     ("jpeg_gray", {"quality": 85})]:
        im = img.convert("L") if name == "jpeg_gray" else img
        path = os.path.join(OUT, name + ".jpg")
        im.save(path, "JPEG", **kw)
        write_rgb(name + ".rgb", Image.open(path).convert("RGB"))
    # Orientation 6 in a Motorola-order Exif block that follows an XMP APP1 block.
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    jpg = buf.getvalue()
    tiff = b"MM\0*" + struct.pack(">I", 8) + struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) \
        + struct.pack(">I", 0)
    xmp = b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta xmlns:x='adobe:ns:meta/'></x:xmpmeta>"
    app1 = lambda payload: b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload  # noqa: E731
    path = os.path.join(OUT, "jpeg_exif6_be_xmp.jpg")
    with open(path, "wb") as f:
        f.write(jpg[:2] + app1(xmp) + app1(b"Exif\0\0" + tiff) + jpg[2:])
    got = ImageOps.exif_transpose(Image.open(path)).convert("RGB")
    assert got.size == (h, w), got.size
    write_rgb("jpeg_exif6_be_xmp.rgb", got)


# ---------------------------------------------------------------- resize and PAD
def resize_images():
    h, w = 23, 37
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([xx * 255 // (w - 1), yy * 255 // (h - 1), rng.integers(0, 256, (h, w))], 2)
    a[5:9, 10:30] = (255, 255, 255)     # hard edges make the negative lobes overshoot (clamping)
    a[12:14, 3:20] = (0, 0, 0)
    src = Image.fromarray(a.astype(np.uint8), "RGB")
    src.save(os.path.join(OUT, "src.png"))
    for size in [(80, 50), (9, 5), (37, 11), (100, 23), (5, 60), (1, 1), (36, 22)]:
        write_rgb(f"resize_{size[0]}x{size[1]}.rgb", src.resize(size, Image.BICUBIC))


def pad_images():
    S = 64
    big = Image.open(os.path.join(CLIP_IMAGES, "coffee.png")).convert("RGB")
    big.crop((200, 0, 350, 260)).save(os.path.join(OUT, "portrait.png"))          # 150x260
    big.crop((0, 100, 600, 106)).save(os.path.join(OUT, "strip.png"))             # 600x6 -> 64x0 -> 64x1
    big.resize((40, 29), Image.BICUBIC).save(os.path.join(OUT, "small.png"))      # upscaled to 64x46
    for name, path in [("chelsea", os.path.join(CLIP_IMAGES, "chelsea.png")),
                       ("portrait", os.path.join(OUT, "portrait.png")),
                       ("strip", os.path.join(OUT, "strip.png")),
                       ("small", os.path.join(OUT, "small.png"))]:
        x, g = fit_pad(Image.open(path), S)
        with open(os.path.join(OUT, f"pad_{name}_{S}.f32"), "wb") as f:
            f.write(np.ascontiguousarray(x, dtype="<f4").tobytes())
        manifest.append(f"pad_{name}_{S}.f32 {g['resized_w']} {g['resized_h']} {g['off_x']} {g['off_y']}")


def main():
    os.makedirs(OUT, exist_ok=True)
    exif_images()
    png_images()
    cmyk_image()
    jpeg_images()
    resize_images()
    pad_images()
    with open(os.path.join(OUT, "manifest.txt"), "w") as f:
        f.write("# written by tools/make_test_images.py: name width height [off_x off_y]\n")
        f.write("\n".join(manifest) + "\n")


if __name__ == "__main__":
    main()
