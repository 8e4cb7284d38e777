"""The synthetic world: photos of coloured shapes on textured backgrounds with exact
annotations at three granularities (caption, region phrase + box, pixel mask).

Everything is a pure function of (seed, index): image i of seed s is the same
whatever the count, so a held-out set is simply another seed.
"""

import io
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ["circle", "square", "triangle", "star", "ring", "cross"]
# Well separated in hue and lightness; objects get a small jitter around these.
COLOURS = {
    "red": (215, 30, 35),
    "green": (40, 165, 50),
    "blue": (35, 70, 215),
    "yellow": (240, 215, 35),
    "purple": (135, 45, 175),
    "orange": (245, 135, 25),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
COLOUR_NAMES = list(COLOURS)
SIZES = ["small", "large"]
# Object diameter as a fraction of the image's shorter side.
SIZE_RANGE = {"small": (0.24, 0.32), "large": (0.46, 0.60)}
MIN_VISIBLE = 0.8       # each object keeps at least this share of its pixels
SUPERSAMPLE = 4         # antialiased shape edges


def phrase(obj, with_size=True):
    if with_size:
        return "%s %s %s" % (obj["size"], obj["colour"], obj["shape"])
    return "%s %s" % (obj["colour"], obj["shape"])


# ---------------------------------------------------------------- backgrounds

def _muted_colour(rng):
    """A low-saturation colour so that the named object colours stand out."""
    grey = rng.uniform(60, 200)
    tint = rng.normal(0, 25, 3)
    return np.clip(grey + tint, 0, 255)


def _smooth_noise(rng, h, w, scale):
    gh, gw = max(2, h // scale + 2), max(2, w // scale + 2)
    small = rng.random((gh, gw)).astype(np.float32)
    img = Image.fromarray((small * 255).astype(np.uint8)).resize((w, h), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def background(rng, w, h):
    kind = rng.choice(["noise", "gradient", "stripes", "clutter"])
    c1, c2 = _muted_colour(rng), _muted_colour(rng)
    if kind == "noise":
        t = _smooth_noise(rng, h, w, int(rng.integers(4, 40)))
        img = c1 * t[..., None] + c2 * (1 - t[..., None])
        img += rng.normal(0, 8, (h, w, 1))
    elif kind == "gradient":
        a = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = xx * math.cos(a) + yy * math.sin(a)
        t = (t - t.min()) / max(1e-6, t.max() - t.min())
        img = c1 * t[..., None] + c2 * (1 - t[..., None])
        img += rng.normal(0, 4, (h, w, 1))
    elif kind == "stripes":
        a = rng.uniform(0, math.pi)
        period = rng.uniform(8, 40)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = xx * math.cos(a) + yy * math.sin(a)
        s = 0.5 + 0.5 * np.sin(2 * math.pi * t / period)
        if rng.random() < 0.5:
            s = (s > 0.5).astype(np.float32) * 0.8 + 0.1
        img = c1 * s[..., None] + c2 * (1 - s[..., None])
        img += rng.normal(0, 5, (h, w, 1))
    else:  # photo-like clutter: blurred blobs and bars, soft light, sensor noise
        base = Image.new("RGB", (w, h), tuple(int(v) for v in c1))
        d = ImageDraw.Draw(base)
        for _ in range(int(rng.integers(8, 25))):
            col = tuple(int(v) for v in _muted_colour(rng))
            x0, y0 = rng.uniform(-0.2, 1.0) * w, rng.uniform(-0.2, 1.0) * h
            x1, y1 = x0 + rng.uniform(0.1, 0.6) * w, y0 + rng.uniform(0.1, 0.6) * h
            if rng.random() < 0.5:
                d.ellipse([x0, y0, x1, y1], fill=col)
            else:
                d.rectangle([x0, y0, x1, y1], fill=col)
        base = base.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(3, 8))))
        img = np.asarray(base, dtype=np.float32)
        light = _smooth_noise(rng, h, w, 60)
        img = img * (0.75 + 0.5 * light[..., None])
        img += rng.normal(0, 6, (h, w, 3))
    return np.clip(img, 0, 255)


# ---------------------------------------------------------------- shapes

def _polygon(n, radius, rot, inner=None):
    pts = []
    k = 2 * n if inner else n
    for i in range(k):
        r = radius if (not inner or i % 2 == 0) else radius * inner
        a = rot + 2 * math.pi * i / k - math.pi / 2
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


def _shape_alpha(shape, diam, rot):
    """Antialiased alpha [S, S] float in [0,1] for a shape of the given diameter."""
    size = int(math.ceil(diam)) + 2
    big = size * SUPERSAMPLE
    im = Image.new("L", (big, big), 0)
    d = ImageDraw.Draw(im)
    c = big / 2.0
    r = diam * SUPERSAMPLE / 2.0

    def poly(pts):
        d.polygon([(c + x, c + y) for x, y in pts], fill=255)

    if shape == "circle":
        d.ellipse([c - r, c - r, c + r, c + r], fill=255)
    elif shape == "ring":
        d.ellipse([c - r, c - r, c + r, c + r], fill=255)
        ri = r * 0.55
        d.ellipse([c - ri, c - ri, c + ri, c + ri], fill=0)
    elif shape == "square":
        poly(_polygon(4, r * 0.98, rot + math.pi / 4))
    elif shape == "triangle":
        poly(_polygon(3, r, rot))
    elif shape == "star":
        poly(_polygon(5, r, rot, inner=0.45))
    elif shape == "cross":
        a = 0.22 * r
        arms = [(-a, -r), (a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r), (-a, r),
                (-a, a), (-r, a), (-r, -a), (-a, -a)]
        cs, sn = math.cos(rot), math.sin(rot)
        poly([(x * cs - y * sn, x * sn + y * cs) for x, y in arms])
    else:
        raise ValueError(shape)
    im = im.resize((size, size), Image.BOX)
    return np.asarray(im, dtype=np.float32) / 255.0


def _rotation(rng, shape):
    if shape in ("circle", "ring"):
        return 0.0
    # Small tilts only: a square turned 45 degrees would read as a diamond.
    return float(rng.uniform(-0.35, 0.35))


# ---------------------------------------------------------------- one image

def _relation(a, b):
    """Where a is relative to b (image y grows downwards)."""
    dx = a["cx"] - b["cx"]
    dy = a["cy"] - b["cy"]
    if abs(dy) > abs(dx):
        return "above" if dy < 0 else "below"
    return "to the left of" if dx < 0 else "to the right of"


def caption(objs):
    """Objects in reading order (left to right by centre); the first two joined by
    their spatial relation, the rest appended with "and"."""
    order = sorted(objs, key=lambda o: (o["cx"], o["cy"]))
    text = "a " + phrase(order[0])
    if len(order) >= 2:
        text += " " + _relation(order[0], order[1]) + " a " + phrase(order[1])
    for o in order[2:]:
        text += " and a " + phrase(o)
    return text


def render(seed, index):
    """Returns (PIL RGB image, objects) where each object has shape, colour, size,
    phrase, box [x,y,w,h] (of its visible pixels), mask (bool [H,W], visible)."""
    rng = np.random.default_rng([seed, index])
    aspect = math.exp(rng.uniform(math.log(0.55), math.log(1.8)))
    long_side = int(rng.integers(200, 481))
    if aspect >= 1:
        w, h = long_side, max(160, int(round(long_side / aspect)))
    else:
        w, h = max(160, int(round(long_side * aspect))), long_side
    img = background(rng, w, h)
    short = min(w, h)

    n = int(rng.choice([1, 2, 3, 4], p=[0.25, 0.3, 0.25, 0.2]))
    objs = []
    owner = np.full((h, w), -1, dtype=np.int32)  # which object a pixel shows
    coverage = np.zeros((h, w), dtype=np.float32)
    layers = []
    used = set()
    for _ in range(n):
        for _attempt in range(30):
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))]
            size = SIZES[int(rng.integers(2))]
            if (colour, shape) in used:
                continue
            lo, hi = SIZE_RANGE[size]
            diam = rng.uniform(lo, hi) * short
            alpha = _shape_alpha(shape, diam, _rotation(rng, shape))
            s = alpha.shape[0]
            x0 = int(rng.integers(0, w - s + 1))
            y0 = int(rng.integers(0, h - s + 1))
            # Would this object, painted on top, hide too much of an earlier one,
            # or be too hidden itself? (It is painted last, so only the former.)
            new_owner = owner.copy()
            region = new_owner[y0:y0 + s, x0:x0 + s]
            region[alpha >= 0.5] = len(objs)
            ok = all((new_owner == k).sum() >= MIN_VISIBLE * full
                     for k, full in enumerate(o["_full"] for o in objs))
            if not ok or (alpha >= 0.5).sum() < 20:
                continue
            owner = new_owner
            used.add((colour, shape))
            objs.append({"shape": shape, "colour": colour, "size": size,
                         "cx": x0 + s / 2.0, "cy": y0 + s / 2.0,
                         "_full": int((alpha >= 0.5).sum())})
            layers.append((alpha, x0, y0, colour))
            break
    if not objs:  # cannot happen for these sizes, but keep the contract
        raise RuntimeError("no object placed for seed %d index %d" % (seed, index))

    for alpha, x0, y0, colour in layers:
        s = alpha.shape[0]
        col = np.array(COLOURS[colour], dtype=np.float32) + rng.normal(0, 10, 3)
        # mild shading so objects are not perfectly flat
        shade = 1.0 + rng.uniform(-0.08, 0.08) * np.linspace(-1, 1, s)[None, :, None]
        patch = img[y0:y0 + s, x0:x0 + s]
        a = alpha[..., None]
        patch[:] = patch * (1 - a) + np.clip(col * shade, 0, 255) * a
        coverage[y0:y0 + s, x0:x0 + s] = np.maximum(coverage[y0:y0 + s, x0:x0 + s], alpha)

    img += rng.normal(0, 3, img.shape)  # sensor noise over everything
    pil = Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8), "RGB")

    out = []
    for k, o in enumerate(objs):
        m = owner == k
        ys, xs = np.nonzero(m)
        box = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        out.append({"shape": o["shape"], "colour": o["colour"], "size": o["size"],
                    "phrase": phrase(o), "box": box, "mask": m, "cx": o["cx"], "cy": o["cy"]})
    return pil, out


def encode(pil, fmt, rng_quality=90):
    buf = io.BytesIO()
    if fmt == "jpg":
        pil.save(buf, "JPEG", quality=rng_quality)
    else:
        pil.save(buf, "PNG")
    return buf.getvalue()


def make(seed, index, png_as_image=False):
    """Everything about image `index` of `seed`: (file name, encoded bytes, size,
    objects, caption).  With png_as_image, a PNG photo is returned as the PIL image
    itself instead of its bytes (lossless: decoding would give the same pixels)."""
    pil, objs = render(seed, index)
    rng = np.random.default_rng([seed, index, 1])
    fmt = "jpg" if rng.random() < 0.6 else "png"
    quality = int(rng.integers(80, 96))
    name = "s%d_%06d.%s" % (seed, index, fmt)
    if fmt == "png" and png_as_image:
        return name, pil, pil.size, objs, caption(objs)
    return name, encode(pil, fmt, quality), pil.size, objs, caption(objs)
