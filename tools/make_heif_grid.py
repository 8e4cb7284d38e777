#!/usr/bin/python3
"""Writes a HEIC stored as phones store photos: a 'grid' image item of T x T HEVC
tiles (iPhones: 512x512), the grid cropping the padded tiles to the photo's size,
optionally rotated by an 'irot' box.  For test fixtures and benchmarks only.

    /usr/bin/python3 -m tools.make_heif_grid IN.png OUT.heic [--tile 512] [-q 80] [--irot 0..3]
    /usr/bin/python3 -m tools.make_heif_grid --fixtures SRC.png tests/fixtures/images   (write_fixtures)

Why this exists: Debian 12's heif-enc (libheif 1.15) writes one coded image per
photo, and libheif 1.15's encoding API has no grid writer (heif_context_add_grid_image
came later), nor is there another Debian tool that writes HEIF grids.  So each tile
is encoded by heif-enc (libheif's own x265 encoder) and this script only re-packs
the tiles' HEVC data and decoder configuration (hvcC) into a grid container
(ISO/IEC 23008-12: ftyp, meta with hdlr/pitm/iloc/iinf/iref 'dimg'/iprp, mdat).

make_grid(..., refs=N) writes a grid of N x N cells all referencing the first tile
(a "decompression bomb": a few KB declaring N*T x N*T pixels) for size-limit tests.
Needs heif-enc (libheif-examples) and python3-pil at generation time only.
"""
import math
import os
import struct
import subprocess
import sys
import tempfile

from PIL import Image


def box(kind, payload):
    return struct.pack(">I4s", 8 + len(payload), kind) + payload


def full_box(kind, version, flags, payload):
    return box(kind, struct.pack(">I", (version << 24) | flags) + payload)


def read_boxes(data, start, end):
    """[(type, payload_start, box_end)] of the boxes in data[start:end]."""
    out, o = [], start
    while o + 8 <= end:
        size, kind = struct.unpack(">I4s", data[o:o + 8])
        head = 8
        if size == 1:
            size, head = struct.unpack(">Q", data[o + 8:o + 16])[0], 16
        elif size == 0:
            size = end - o
        out.append((kind, o + head, o + size))
        o += size
    return out


def parse_single_image(data):
    """The primary item's HEVC data and its hvcC/colr/pixi property boxes, from a
    one-image HEIC as heif-enc writes it."""
    top = {k: (s, e) for k, s, e in read_boxes(data, 0, len(data))}
    ms, me = top[b"meta"]
    meta = {k: (s, e) for k, s, e in read_boxes(data, ms + 4, me)}
    ps, _ = meta[b"pitm"]
    primary = struct.unpack(">H", data[ps + 4:ps + 6])[0]
    # iloc
    s, e = meta[b"iloc"]
    version = data[s]
    sizes = data[s + 4] << 8 | data[s + 5]
    off_size, len_size, base_size = sizes >> 12, (sizes >> 8) & 15, (sizes >> 4) & 15
    idx_size = sizes & 15 if version in (1, 2) else 0
    o = s + 6
    count_fmt = ">H" if version < 2 else ">I"
    (count,) = struct.unpack(count_fmt, data[o:o + struct.calcsize(count_fmt)])
    o += struct.calcsize(count_fmt)

    def uint(n):
        nonlocal o
        v = int.from_bytes(data[o:o + n], "big") if n else 0
        o += n
        return v

    extents = {}
    for _ in range(count):
        item = uint(2 if version < 2 else 4)
        if version in (1, 2):
            method = uint(2) & 15
            assert method == 0, "tile data not in the file's mdat"
        uint(2)  # data_reference_index
        base = uint(base_size)
        ext = []
        for _ in range(uint(2)):
            uint(idx_size)
            off = uint(off_size)
            ext.append((base + off, uint(len_size)))
        extents[item] = ext
    hevc = b"".join(data[a:a + n] for a, n in extents[primary])
    # properties
    ips, ipe = meta[b"iprp"]
    iprp = {k: (s, e) for k, s, e in read_boxes(data, ips, ipe)}
    cs, ce = iprp[b"ipco"]
    props = [(k, data[s - 8:e]) for k, s, e in read_boxes(data, cs, ce)]
    s, e = iprp[b"ipma"]
    version, flags = data[s], int.from_bytes(data[s + 1:s + 4], "big")
    o = s + 4
    (n,) = struct.unpack(">I", data[o:o + 4])
    o += 4
    mine = []
    for _ in range(n):
        item = uint(2 if version < 1 else 4)
        for _ in range(uint(1)):
            v = uint(2 if flags & 1 else 1)
            index = v & (0x7FFF if flags & 1 else 0x7F)
            if item == primary:
                mine.append(props[index - 1])
    keep = {k: b for k, b in mine if k in (b"hvcC", b"colr", b"pixi")}
    assert b"hvcC" in keep, "no hvcC for the primary image"
    return hevc, keep


def encode_tile(img, quality, tmp, name):
    png, heic = os.path.join(tmp, name + ".png"), os.path.join(tmp, name + ".heic")
    Image.frombytes("RGB", img.size, img.convert("RGB").tobytes()).save(png)  # no ICC: nclx colours
    subprocess.run(["heif-enc", "-q", str(quality), "-o", heic, png], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(heic, "rb") as f:
        return parse_single_image(f.read())


def make_grid(img, out, tile=512, quality=80, irot=0, refs=None):
    """Write img (PIL) to out as a grid HEIC of tile x tile tiles.  refs=N: an
    N x N grid whose cells all show the first tile (size-limit tests)."""
    img = img.convert("RGB")
    W, H = img.size
    if refs:
        cols = rows = refs
        W = H = refs * tile
    else:
        cols, rows = math.ceil(W / tile), math.ceil(H / tile)
    assert rows <= 256 and cols <= 256 and W < 65536 and H < 65536
    padded = Image.new("RGB", (cols * tile, rows * tile))
    padded.paste(img, (0, 0))
    # edge-replicate the padding (as encoders do), so the hidden area codes cheaply
    if not refs:
        src = img.size
        if src[0] < padded.width:
            padded.paste(img.crop((src[0] - 1, 0, src[0], src[1])).resize((padded.width - src[0], src[1])),
                         (src[0], 0))
        if src[1] < padded.height:
            padded.paste(padded.crop((0, src[1] - 1, padded.width, src[1])).resize(
                (padded.width, padded.height - src[1])), (0, src[1]))
    tiles = []
    with tempfile.TemporaryDirectory() as tmp:
        n_coded = 1 if refs else rows * cols
        for t in range(n_coded):
            r, c = divmod(t, cols)
            tiles.append(encode_tile(padded.crop((c * tile, r * tile, (c + 1) * tile, (r + 1) * tile)),
                                     quality, tmp, f"t{t}"))

    # properties: distinct hvcC/colr/pixi boxes, the tile ispe, the grid ispe, irot
    ipco, index = [], {}

    def prop(b):
        if b not in index:
            ipco.append(b)
            index[b] = len(ipco)
        return index[b]

    ispe_tile = prop(full_box(b"ispe", 0, 0, struct.pack(">II", tile, tile)))
    ispe_grid = prop(full_box(b"ispe", 0, 0, struct.pack(">II", W, H)))
    irot_box = prop(box(b"irot", bytes([irot & 3]))) if irot else None
    tile_props = []
    for _, p in tiles:
        assoc = [(prop(p[b"hvcC"]), True), (ispe_tile, False)]
        for k in (b"colr", b"pixi"):
            if k in p:
                assoc.append((prop(p[k]), False))
        tile_props.append(assoc)
    grid_props = [(ispe_grid, False)]
    for k in (b"colr", b"pixi"):
        if k in tiles[0][1]:
            grid_props.append((prop(tiles[0][1][k]), False))
    if irot_box:
        grid_props.append((irot_box, True))

    n_tiles = len(tiles)
    grid_id = n_tiles + 1
    grid_desc = struct.pack(">BBBBHH", 0, 0, rows - 1, cols - 1, W, H)
    payloads = [t[0] for t in tiles] + [grid_desc]  # mdat order: tiles 1..n, then the grid

    def build_meta(offsets):
        hdlr = full_box(b"hdlr", 0, 0, struct.pack(">I4sIII", 0, b"pict", 0, 0, 0) + b"\0")
        pitm = full_box(b"pitm", 0, 0, struct.pack(">H", grid_id))
        iloc = struct.pack(">BBH", 0x44, 0x00, len(payloads))  # offset 4, length 4, base 0
        for i, (p, off) in enumerate(zip(payloads, offsets)):
            iloc += struct.pack(">HHHII", i + 1, 0, 1, off, len(p))
        iloc = full_box(b"iloc", 0, 0, iloc)
        infes = b"".join(full_box(b"infe", 2, 1, struct.pack(">HH4s", i + 1, 0, b"hvc1") + b"\0")  # hidden
                         for i in range(n_tiles))
        infes += full_box(b"infe", 2, 0, struct.pack(">HH4s", grid_id, 0, b"grid") + b"\0")
        iinf = full_box(b"iinf", 0, 0, struct.pack(">H", n_tiles + 1) + infes)
        cells = [1] * (rows * cols) if refs else list(range(1, n_tiles + 1))
        dimg = box(b"dimg", struct.pack(">HH", grid_id, len(cells)) + b"".join(struct.pack(">H", c) for c in cells))
        iref = full_box(b"iref", 0, 0, dimg)
        ipma = b""
        entries = [(i + 1, a) for i, a in enumerate(tile_props)] + [(grid_id, grid_props)]
        for item, assoc in entries:
            ipma += struct.pack(">HB", item, len(assoc))
            ipma += b"".join(bytes([(0x80 if ess else 0) | idx]) for idx, ess in assoc)
        assert len(ipco) < 128
        iprp = box(b"iprp", box(b"ipco", b"".join(ipco)) + full_box(b"ipma", 0, 0,
                                                                      struct.pack(">I", len(entries)) + ipma))
        return full_box(b"meta", 0, 0, hdlr + pitm + iloc + iinf + iref + iprp)

    ftyp = box(b"ftyp", b"heic" + struct.pack(">I", 0) + b"mif1heicmiaf")
    meta = build_meta([0] * len(payloads))
    o = len(ftyp) + len(meta) + 8
    offsets = []
    for p in payloads:
        offsets.append(o)
        o += len(p)
    meta = build_meta(offsets)
    mdat = box(b"mdat", b"".join(payloads))
    with open(out, "wb") as f:
        f.write(ftyp + meta + mdat)


def write_grid_fixture(img, path, irot=0):
    """path: img as a grid of 64x64 tiles; path + '.png': heif-convert's decode of it."""
    make_grid(img, path, tile=64, quality=60, irot=irot)
    subprocess.run(["heif-convert", "--quiet", path, path + ".png"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    Image.open(path + ".png").save(path + ".png", optimize=True)  # without heif-convert's metadata


def write_fixtures(out_dir, src_png):
    """tests/fixtures/images/fmt_grid*.heic (tools/make_format_images.py calls it):
      fmt_grid.heic       240x180 photo (src scaled) as a 4x3 grid of 64x64 tiles, the
                          last column and row cropped (4*64 = 256 > 240, 3*64 = 192 > 180)
      fmt_grid_irot.heic  the same with irot 1 (90 degrees anticlockwise): 180x240
      fmt_grid_odd.heic   241x181 as a 4x3 grid of 64x64 tiles: odd crops of 4:2:0 tiles
                          (the last column 49 wide, the last row 53 high)
      each beside NAME.png = heif-convert's decode of it
      fmt_grid_bomb.heic  a 17x17 grid of one flat 512x512 tile: 8704x8704 declared (75.8 Mpx)
                          in about a kilobyte"""
    src = Image.open(src_png).convert("RGB")
    for name, size, irot in (("fmt_grid.heic", (240, 180), 0), ("fmt_grid_irot.heic", (240, 180), 1),
                             ("fmt_grid_odd.heic", (241, 181), 0)):
        write_grid_fixture(src.resize(size, Image.BICUBIC), os.path.join(out_dir, name), irot)
    assert Image.open(os.path.join(out_dir, "fmt_grid_irot.heic.png")).size == (180, 240)
    make_grid(Image.new("RGB", (512, 512), (90, 120, 200)), os.path.join(out_dir, "fmt_grid_bomb.heic"),
              tile=512, quality=30, refs=17)


def main():
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("-q", "--quality", type=int, default=80)
    ap.add_argument("--irot", type=int, default=0)
    ap.add_argument("--fixtures", action="store_true", help="SRC OUT_DIR: write the test fixtures (write_fixtures)")
    a = ap.parse_args()
    if a.fixtures:
        return write_fixtures(a.out, a.src)
    make_grid(Image.open(a.src), a.out, a.tile, a.quality, a.irot)


if __name__ == "__main__":
    sys.exit(main())
