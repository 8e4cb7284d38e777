#!/usr/bin/python3
"""Writes tests/fixtures/images/fmt_* and meta_*: small photos in every format umgdb
decodes (issue 17), made by the tools users' photos come from, with the expected
pixels from the reference decoders, for tests/test_image.c.

    /usr/bin/python3 -m tools.make_format_images [tests/fixtures/images]     (from the root)

Needs (generation time only; the outputs are committed, the tests need none of it):
Debian's python3-pil (9.4) and python3-numpy, libheif-examples (heif-enc,
heif-convert), webp (cwebp), libtiff-tools (tiffcp), libimage-exiftool-perl.
Lossy encoders may differ between versions: rerunning elsewhere can change bytes,
the pairs (file, expected pixels) stay consistent.

Files (".rgb": raw 8-bit RGB rows, size in manifest.txt, as make_test_images.py):
  fmt_src.png               48x32 RGB photo (chelsea.png scaled): source of all below
  fmt_src_rgba.png          the same with an alpha ramp (alpha=0 pixels keep colour)
  fmt_lossless.webp         cwebp -lossless of fmt_src.png: same pixels as the PNG
  fmt_lossy.webp, fmt_alpha_lossy.webp, fmt_alpha_lossless.webp, fmt_anim.webp
                            .rgb = Image.open(f).convert("RGB") (anim: first frame)
  fmt_exif6.webp            stored rotated, EXIF Orientation 6 (exiftool);
                            .rgb = exif_transpose(...).convert("RGB")
  fmt_lzw.tif, fmt_deflate.tif, fmt_tiled.tif (tiffcp -t), fmt_multipage.tif,
  fmt_planar.tif (tiffcp -p separate)
                            same pixels as fmt_src.png (multipage: the first page)
  fmt_gray.tif, fmt_bilevel.tif (1-bit, CCITT G4),
  fmt_jpeg.tif (PIL, RGB), fmt_ycbcr_jpeg.tif (tiffcp -c jpeg: YCbCr 4:2:0),
  fmt_rgba.tif, fmt_palette.tif, fmt_rgb16.tif, fmt_rgba16.tif, fmt_cmyk.tif
                            .rgb = Image.open(f).convert("RGB")
  fmt_gray16.tif            .rgb = high byte (PIL 9.4 clamps I;16 to 255: see enc_image.h)
  fmt_exif6.tif             Orientation tag 6; .rgb = Image.open(f).convert("RGB") (Pillow
                            applies a libtiff-decoded TIFF's orientation when it loads it)
  fmt.gif, fmt_noninterlaced.gif, fmt_anim.gif, fmt_small_frame.gif (the logical
  screen larger than the first frame, with a transparent index)
                            .rgb = Image.open(f).convert("RGB")
  fmt.heic, fmt.avif, fmt_alpha.heic, fmt_irot.heic (an irot box: rotated by
  libheif), fmt_exif6.heic (EXIF Orientation 6, no irot: not rotated)
                            each beside NAME.heif.png = heif-convert's decode of it
  fmt_grid.heic, fmt_grid_irot.heic, fmt_grid_bomb.heic, fmt_grid_odd.heic  tile grids as phones write them
                            (tools/make_heif_grid.py write_fixtures)
  fmt_large.jpg             1000x664 JPEG: doubled by test_embed_cli, then decoded DCT-scaled by `embed --decode fast`
  meta_*.{jpg,heic,tif,webp}  capture metadata written by exiftool (see META below)
"""
import io
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np
from PIL import Image, ImageOps

from tools import make_heif_grid

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "tests", "fixtures", "images")
SRC = os.path.join(HERE, "..", "tests", "fixtures", "clip-tiny", "images", "chelsea.png")
TMP = tempfile.mkdtemp()
manifest = []


def out(name):
    return os.path.join(OUT, name)


def run(*args):
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def write_rgb(name, img):
    a = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img, dtype=np.uint8)
    with open(out(name), "wb") as f:
        f.write(a.tobytes())
    manifest.append(f"{name} {a.shape[1]} {a.shape[0]}")


def pil_golden(name, transpose=False):
    im = Image.open(out(name))
    if transpose:
        im = ImageOps.exif_transpose(im)
    write_rgb(name.rsplit(".", 1)[0] + "." + name.rsplit(".", 1)[1] + ".rgb", im.convert("RGB"))


# ---------------------------------------------------------------- sources
# (fromarray: no ICC profile carried over; libpng refuses chelsea's when heif-convert writes PNG)
src = Image.fromarray(np.asarray(Image.open(SRC).convert("RGB").resize((48, 32), Image.LANCZOS)), "RGB")
src.save(out("fmt_src.png"))
alpha = Image.fromarray(np.tile(np.linspace(0, 255, 48).astype(np.uint8), (32, 1)), "L")
src_rgba = src.copy()
src_rgba.putalpha(alpha)
src_rgba.save(out("fmt_src_rgba.png"))
rotated = src.transpose(Image.ROTATE_90)  # stored form for Orientation 6


def exif6(path):
    run("exiftool", "-q", "-overwrite_original", "-n", "-Orientation=6", path)


# ---------------------------------------------------------------- WebP
run("cwebp", "-quiet", "-lossless", out("fmt_src.png"), "-o", out("fmt_lossless.webp"))
run("cwebp", "-quiet", "-q", "80", out("fmt_src.png"), "-o", out("fmt_lossy.webp"))
run("cwebp", "-quiet", "-q", "80", "-exact", out("fmt_src_rgba.png"), "-o", out("fmt_alpha_lossy.webp"))
run("cwebp", "-quiet", "-lossless", "-exact", out("fmt_src_rgba.png"), "-o", out("fmt_alpha_lossless.webp"))
frame2 = Image.fromarray(255 - np.asarray(src), "RGB")
src.save(out("fmt_anim.webp"), save_all=True, append_images=[frame2], duration=100, lossless=True)
rotated.save(out("fmt_exif6.webp"), lossless=True)
exif6(out("fmt_exif6.webp"))
for n in ["fmt_lossy.webp", "fmt_alpha_lossy.webp", "fmt_alpha_lossless.webp", "fmt_anim.webp"]:
    pil_golden(n)
pil_golden("fmt_exif6.webp", transpose=True)
assert Image.open(out("fmt_anim.webp")).n_frames == 2


# ---------------------------------------------------------------- TIFF
def write_tiff(path, a, photometric, extra=None):
    """A minimal uncompressed little-endian baseline TIFF (one strip), for the
    depths Pillow cannot write (16-bit RGB, RGBA, gray)."""
    h, w = a.shape[:2]
    spp = 1 if a.ndim == 2 else a.shape[2]
    data = a.astype("<u2" if a.dtype == np.uint16 else np.uint8).tobytes()
    bps = 16 if a.dtype == np.uint16 else 8
    tags = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, spp, None), (259, 3, 1, 1), (262, 3, 1, photometric),
            (273, 4, 1, None), (277, 3, 1, spp), (278, 3, 1, h), (279, 4, 1, len(data)), (284, 3, 1, 1)]
    if extra is not None:
        tags.append((338, 3, 1, extra))
    tags.sort()
    ifd_off = 8
    ifd_len = 2 + 12 * len(tags) + 4
    bps_off = ifd_off + ifd_len
    data_off = bps_off + 2 * spp
    ifd = struct.pack("<H", len(tags))
    for tag, typ, count, val in tags:
        if tag == 258:
            val = bps if spp == 1 else bps_off
        if tag == 273:
            val = data_off
        fmt = "<HHI" + ("HH" if typ == 3 and count == 1 else "I")
        ifd += struct.pack(fmt, tag, typ, count, *((val, 0) if typ == 3 and count == 1 else (val,)))
    ifd += struct.pack("<I", 0)
    blob = b"II*\0" + struct.pack("<I", ifd_off) + ifd + struct.pack("<" + "H" * spp, *([bps] * spp)) + data
    with open(path, "wb") as f:
        f.write(blob)


src.save(out("fmt_lzw.tif"), compression="tiff_lzw")
src.save(out("fmt_deflate.tif"), compression="tiff_adobe_deflate")
run("tiffcp", "-t", "-w", "16", "-l", "16", out("fmt_lzw.tif"), out("fmt_tiled.tif"))
src.save(out("fmt_multipage.tif"), compression="tiff_lzw", save_all=True, append_images=[frame2])
run("tiffcp", "-p", "separate", out("fmt_lzw.tif"), out("fmt_planar.tif"))  # libtiff's TIFFRGBAImage path
src.convert("L").save(out("fmt_gray.tif"), compression="tiff_lzw")
src.convert("1").save(out("fmt_bilevel.tif"), compression="group4")
src.save(out("fmt_jpeg.tif"), compression="jpeg", quality=90)
run("tiffcp", "-c", "jpeg:90", "-r", "16", out("fmt_lzw.tif"), out("fmt_ycbcr_jpeg.tif"))
src_rgba.save(out("fmt_rgba.tif"), compression="tiff_lzw")
src.quantize(32).save(out("fmt_palette.tif"))
src.convert("CMYK").save(out("fmt_cmyk.tif"))
rng = np.random.default_rng(17)
a16 = np.asarray(src).astype(np.uint16) * 257 + rng.integers(0, 257, (32, 48, 3)).astype(np.uint16)
write_tiff(out("fmt_rgb16.tif"), a16, 2)
alpha16 = np.asarray(alpha).astype(np.uint16)[:, :, None] * 257
write_tiff(out("fmt_rgba16.tif"), np.concatenate([a16, alpha16], axis=2), 2, extra=2)
write_tiff(out("fmt_gray16.tif"), a16[:, :, 1], 1)
rotated.save(out("fmt_exif6.tif"), compression="tiff_lzw", tiffinfo={274: 6})
for n in ["fmt_gray.tif", "fmt_bilevel.tif", "fmt_jpeg.tif", "fmt_ycbcr_jpeg.tif", "fmt_rgba.tif", "fmt_palette.tif", "fmt_rgb16.tif",
          "fmt_rgba16.tif", "fmt_cmyk.tif"]:
    pil_golden(n)
assert Image.open(out("fmt_rgb16.tif")).mode == "RGB"
write_rgb("fmt_gray16.tif.rgb", np.repeat((a16[:, :, 1] >> 8).astype(np.uint8)[:, :, None], 3, axis=2))
# Pillow applies a TIFF's Orientation tag itself when libtiff decodes it (load_end)
assert Image.open(out("fmt_exif6.tif")).getexif().get(0x0112) == 6
pil_golden("fmt_exif6.tif")
assert Image.open(out("fmt_exif6.tif")).convert("RGB").size == (48, 32)

# ---------------------------------------------------------------- GIF
pal = src.quantize(64)
pal.save(out("fmt.gif"))  # Pillow interlaces by default
pal.save(out("fmt_noninterlaced.gif"), interlace=False)
pal.save(out("fmt_anim.gif"), save_all=True, append_images=[frame2.quantize(64)], duration=100)
# First frame smaller than the logical screen: widen the screen descriptor.
b = io.BytesIO()
pal.save(b, "GIF", interlace=False, transparency=5)
small = bytearray(b.getvalue())
struct.pack_into("<HH", small, 6, 60, 40)
open(out("fmt_small_frame.gif"), "wb").write(bytes(small))
for n in ["fmt.gif", "fmt_noninterlaced.gif", "fmt_anim.gif", "fmt_small_frame.gif"]:
    pil_golden(n)
assert Image.open(out("fmt_small_frame.gif")).size == (60, 40)


# ---------------------------------------------------------------- HEIF / AVIF
def boxes(buf, start, end):
    """(type, start, size, header) of the ISO BMFF boxes in buf[start:end]."""
    i = start
    while i + 8 <= end:
        size, typ = struct.unpack(">I4s", buf[i:i + 8])
        yield typ.decode("latin1"), i, size
        i += size


def add_irot(path, angle):
    """Insert an essential irot property (angle * 90 degrees anti-clockwise) on the
    primary item: heif-enc 1.15 writes none.  Patches the enclosing box sizes and
    the iloc offsets of the data after the meta box."""
    buf = bytearray(open(path, "rb").read())
    meta = next(b for b in boxes(buf, 0, len(buf)) if b[0] == "meta")
    mstart, msize = meta[1], meta[2]
    kids = {t: (s, n) for t, s, n in boxes(buf, mstart + 12, mstart + msize)}
    primary = struct.unpack(">H", buf[kids["pitm"][0] + 12:kids["pitm"][0] + 14])[0]
    istart, isize = kids["iprp"]
    ikids = {t: (s, n) for t, s, n in boxes(buf, istart + 8, istart + isize)}
    cstart, csize = ikids["ipco"]
    nprops = len(list(boxes(buf, cstart + 8, cstart + csize)))
    astart, asize = ikids["ipma"]
    version, flags = buf[astart + 8], int.from_bytes(buf[astart + 9:astart + 12], "big")
    assert version == 0 and not flags & 1
    # rebuild ipma with one more association for the primary item
    count = struct.unpack(">I", buf[astart + 12:astart + 16])[0]
    j = astart + 16
    ipma = bytearray(buf[astart:astart + 16])
    for _ in range(count):
        item, n = struct.unpack(">HB", buf[j:j + 3])
        assoc = bytes(buf[j + 3:j + 3 + n])
        if item == primary:
            assoc += bytes([0x80 | (nprops + 1)])
            n += 1
        ipma += struct.pack(">HB", item, n) + assoc
        j += 3 + n - (1 if item == primary else 0)
    struct.pack_into(">I", ipma, 0, len(ipma))
    irot = struct.pack(">I4sB", 9, b"irot", angle)
    delta = 9 + len(ipma) - asize
    new = (buf[:cstart + csize] + irot + buf[cstart + csize:astart] + ipma + buf[astart + asize:])
    struct.pack_into(">I", new, cstart, csize + 9)
    struct.pack_into(">I", new, istart, isize + delta)
    struct.pack_into(">I", new, mstart, msize + delta)
    # iloc (before iprp in heif-enc's output): extents after the meta box move by delta
    lstart, lsize = kids["iloc"]
    assert lstart < istart
    v = new[lstart + 8]
    osz, lsz = new[lstart + 12] >> 4, new[lstart + 12] & 15
    bsz, xsz = new[lstart + 13] >> 4, (new[lstart + 13] & 15) if v in (1, 2) else 0
    k = lstart + 14
    n_items = struct.unpack(">H", new[k:k + 2])[0] if v < 2 else struct.unpack(">I", new[k:k + 4])[0]
    k += 2 if v < 2 else 4
    for _ in range(n_items):
        k += 2 if v < 2 else 4
        method = 0
        if v in (1, 2):
            method = struct.unpack(">H", new[k:k + 2])[0] & 15
            k += 2
        k += 2
        base = int.from_bytes(new[k:k + bsz], "big") if bsz else 0
        if bsz and method == 0 and base > mstart:
            new[k:k + bsz] = (base + delta).to_bytes(bsz, "big")
        k += bsz
        ext = struct.unpack(">H", new[k:k + 2])[0]
        k += 2
        for _ in range(ext):
            k += xsz
            off = int.from_bytes(new[k:k + osz], "big")
            if osz and method == 0 and not bsz and off > mstart:
                new[k:k + osz] = (off + delta).to_bytes(osz, "big")
            k += osz + lsz
    open(path, "wb").write(bytes(new))


def heif_golden(name):
    png = out(name + ".png")
    run("heif-convert", "--quiet", out(name), png)
    # heif-convert writes what it decoded; keep it small and without its metadata
    Image.open(png).save(png, optimize=True)


run("heif-enc", "-q", "90", out("fmt_src.png"), "-o", out("fmt.heic"))
run("heif-enc", "-q", "90", "-A", out("fmt_src.png"), "-o", out("fmt.avif"))
run("heif-enc", "-q", "90", out("fmt_src_rgba.png"), "-o", out("fmt_alpha.heic"))
shutil.copy(out("fmt.heic"), out("fmt_irot.heic"))
add_irot(out("fmt_irot.heic"), 1)
jpg6 = os.path.join(TMP, "rot.jpg")
rotated.save(jpg6, quality=95)
exif6(jpg6)
run("heif-enc", "-q", "90", jpg6, "-o", out("fmt_exif6.heic"))
for n in ["fmt.heic", "fmt.avif", "fmt_alpha.heic", "fmt_irot.heic", "fmt_exif6.heic"]:
    heif_golden(n)
assert Image.open(out("fmt_irot.heic.png")).size == (32, 48), "irot not applied by heif-convert"
assert Image.open(out("fmt_exif6.heic.png")).size == (32, 48)  # stored 32x48, not rotated
# Grids of tiles, as phones write HEIC (tools/make_heif_grid.py: fmt_grid*.heic)
make_heif_grid.write_fixtures(OUT, SRC)

# ---------------------------------------------------------------- fast decode (tests/test_embed_cli.c)
# 1000x664: with a 224 input the fast decode takes the 1/2 DCT scale (PIL's draft()).
Image.open(SRC).convert("RGB").resize((1000, 664), Image.BICUBIC).save(out("fmt_large.jpg"), quality=80)

# ---------------------------------------------------------------- capture metadata
META = {
    # name: exiftool arguments
    "full": ["-DateTimeOriginal=2019:07:14 12:00:00", "-OffsetTimeOriginal=+02:00", "-Make=FUJIFILM",
             "-Model=X-T3", "-GPSLatitude=33.8568", "-GPSLatitudeRef=S", "-GPSLongitude=151.2153",
             "-GPSLongitudeRef=E"],
    "partial": ["-DateTimeOriginal=2021:01:02 03:04:05", "-Make=Canon", "-Model=Canon EOS 5D Mark IV",
                "-GPSLatitude=40.6892", "-GPSLatitudeRef=N", "-GPSLongitude=74.0445", "-GPSLongitudeRef=W"],
    "bad": ["-DateTimeOriginal#=0000:00:00 00:00:00", "-OffsetTimeOriginal=+02:00", "-GPSLatitude=10",
            "-GPSLatitudeRef=N"],  # an unknown date and a latitude without longitude: all absent
}
plain = {"jpg": "fmt_src.jpg", "heic": "fmt.heic", "tif": "fmt_lzw.tif", "webp": "fmt_lossless.webp"}
src.save(out("fmt_src.jpg"), quality=90)
for name, args in META.items():
    for ext, base in plain.items():
        if name != "full" and ext != "jpg":
            continue
        dst = out(f"meta_{name}.{ext}")
        shutil.copy(out(base), dst)
        run("exiftool", "-q", "-overwrite_original", *args, dst)
# EXIF whose TIFF header is garbage, and one whose IFD count runs past the end.
jpg = open(out("fmt_src.jpg"), "rb").read()
for name, payload in [("garbage", b"Exif\0\0" + bytes(range(7, 107))),
                      ("cut_ifd", b"Exif\0\0II*\0\x08\0\0\0\xff\x7f\x0f\x01\x02\0")]:
    seg = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    open(out(f"meta_{name}.jpg"), "wb").write(jpg[:2] + seg + jpg[2:])
os.remove(out("fmt_src.jpg"))
shutil.rmtree(TMP)

with open(out("manifest_formats.txt"), "w") as f:
    f.write("# written by tools/make_format_images.py: name width height\n")
    f.write("\n".join(manifest) + "\n")
print(f"wrote {len(manifest)} expected images to {OUT}")
