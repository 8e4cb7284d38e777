"""check_against_torch.py - compare `umgdb embed` with tools/umgclip/model.py on a
checkpoint the committed fixture does not cover (ViT-B/32, ViT-B/16, ViT-L/14,
gelu, F16/BF16 weights, config.json without default fields).

    /usr/bin/python3 -m tools.check_against_torch MODEL_DIR UMGDB_BIN [--min-cos 0.99999]
                                 [--max-diff 1e-4] [--images N]

For the six photos of tests/fixtures/clip-tiny/images and the ten texts of its
reference.json:
  images  `umgdb embed --image X --patches --dump-pixels P` one by one; torch
          runs on umgdb's own pixels P (so this compares the networks) and the
          embedding and every patch token are compared; then all images in one
          call (--batch 16 --threads 2) must give the same embeddings (batched
          path).  When the model's input is 224 with CLIP's normalization, P is
          also compared with the fixture's reference pixels.
  texts   one `umgdb embed --text ...` call; its ids must equal the reference
          ids, and torch runs on those ids.
Reported: worst cosine, worst max|d| (both sides L2-normalized, as umgdb prints
them), and how far apart different inputs are under torch (the check means
something only if different images give clearly different embeddings).
Exit 0 when every cosine >= --min-cos and every max|d| <= --max-diff (the
fixture's tolerances).  Both bounds matter: on random ViT-B/32 weights,
swapping quick_gelu for gelu, or bf16 weights for f16, still gives cosines of
0.99993-0.99998 (above a 0.9999 bound) but max|d| of 1e-3, while a correct
encoder agrees with torch to ~2e-7.  Not part of CI (torch is heavy); see
docs/benchmarks.md.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

from tools.umgclip.model import load_clip

HERE = os.path.dirname(os.path.abspath(__file__))

FIXTURE = os.path.join(HERE, "..", "tests", "fixtures", "clip-tiny")


def run_embed(umgdb, args):
    """Run `umgdb embed` and return its JSON lines as a list of objects."""
    p = subprocess.run([umgdb, "embed"] + args, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"umgdb embed {' '.join(args)[:200]} failed ({p.returncode}): {p.stderr.strip()}")
    return [json.loads(line) for line in p.stdout.splitlines() if line.strip()]


def normalize(v):
    v = np.asarray(v, dtype=np.float64)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(n == 0, 1, n)


def cosines(a, b):
    """Row-wise cosine of two [N,D] arrays."""
    a, b = normalize(a), normalize(b)
    return (a * b).sum(-1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("umgdb")
    ap.add_argument("--min-cos", type=float, default=0.99999)
    ap.add_argument("--max-diff", type=float, default=1e-4,
                    help="bound on max |a-b| of the L2-normalized vectors")
    ap.add_argument("--images", type=int, default=6, help="how many fixture photos (1-6)")
    args = ap.parse_args()
    torch.set_num_threads(2)

    model = load_clip(args.model_dir)
    cfg = model.config
    size = cfg["vision_config"]["image_size"]
    ref = json.load(open(os.path.join(FIXTURE, "reference.json"), encoding="utf-8"))
    images = [im for im in ref["images"]][: max(1, min(6, args.images))]
    failures = []

    def verdict(label, worst, maxd=0.0):
        ok = worst >= args.min_cos and maxd <= args.max_diff
        if not ok:
            failures.append(label)
        return "ok" if ok else "FAIL"

    # ---- images, one by one, with their pixels ------------------------------
    got_emb, want_emb, patch_cos, patch_maxd, pixel_diffs, paths = [], [], [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for im in images:
            path = os.path.join(FIXTURE, "images", im["file"])
            paths.append(path)
            dump = os.path.join(tmp, "pixels.f32")
            out = run_embed(args.umgdb, ["--model", args.model_dir, "--image", path, "--patches",
                                         "--dump-pixels", dump])[0]
            pixels = np.fromfile(dump, dtype="<f4")
            if pixels.size != 3 * size * size:
                raise SystemExit(f"{dump}: {pixels.size} floats, expected 3x{size}x{size}")
            pixels = pixels.reshape(1, 3, size, size)
            if size == 224:
                ref_px = np.fromfile(os.path.join(FIXTURE, im["pixels"]), dtype="<f4").reshape(pixels.shape)
                d = np.abs(pixels - ref_px)
                pixel_diffs.append((float(d.mean()), float(d.max())))
            with torch.no_grad():
                emb, patches = model.encode_image(torch.from_numpy(pixels))
            got_emb.append(out["embedding"])
            want_emb.append(emb[0].numpy())
            if "patches" not in out:
                raise SystemExit("umgdb embed --patches printed no \"patches\"")
            patch_cos.append(float(cosines(out["patches"], patches[0].numpy()).min()))
            patch_maxd.append(float(np.abs(normalize(out["patches"]) - normalize(patches[0].numpy())).max()))

        batched = run_embed(args.umgdb, ["--model", args.model_dir, "--batch", "16", "--threads", "2"]
                            + sum((["--image", p] for p in paths), []))
    got_emb, want_emb = np.array(got_emb), normalize(np.array(want_emb))
    img_cos = cosines(got_emb, want_emb)
    img_maxd = float(np.abs(normalize(got_emb) - want_emb).max())
    batch_cos = cosines([b["embedding"] for b in batched], got_emb)
    batch_maxd = float(np.abs(normalize([b["embedding"] for b in batched]) - normalize(got_emb)).max())
    off_diag = (want_emb @ want_emb.T)[~np.eye(len(images), dtype=bool)]

    # ---- texts ------------------------------------------------------------------
    texts = ref["texts"]
    outs = run_embed(args.umgdb, ["--model", args.model_dir] + sum((["--text", t["text"]] for t in texts), []))
    ids_equal = all(o.get("ids") == t["ids"] for o, t in zip(outs, texts)) and len(outs) == len(texts)
    if not ids_equal:
        failures.append("token ids")
    with torch.no_grad():
        want_txt = np.stack([model.encode_text(torch.tensor([o["ids"]]))[0].numpy() for o in outs])
    got_txt = np.array([o["embedding"] for o in outs])
    txt_cos = cosines(got_txt, want_txt)
    txt_maxd = float(np.abs(normalize(got_txt) - normalize(want_txt)).max())
    wt = normalize(want_txt)
    txt_off = (wt @ wt.T)[~np.eye(len(texts), dtype=bool)]

    t, v = cfg["text_config"], cfg["vision_config"]
    print(f"model {args.model_dir}: vision {v['hidden_size']}x{v['num_hidden_layers']} patch "
          f"{v['patch_size']} act {v['hidden_act']}, text {t['hidden_size']}x{t['num_hidden_layers']} "
          f"act {t['hidden_act']}, projection {cfg['projection_dim']}")
    print(f"  images ({len(images)}): min cosine {img_cos.min():.7f}, max|d| {img_maxd:.2e} "
          f"[{verdict('image embeddings', img_cos.min(), img_maxd)}]")
    print(f"  patch tokens: min cosine {min(patch_cos):.7f}, max|d| {max(patch_maxd):.2e} "
          f"[{verdict('patch tokens', min(patch_cos), max(patch_maxd))}]")
    print(f"  batched (--batch 16 --threads 2) vs one by one: min cosine {batch_cos.min():.7f}, "
          f"max|d| {batch_maxd:.2e} [{verdict('batched images', batch_cos.min(), batch_maxd)}]")
    if pixel_diffs:
        print(f"  pixels vs reference preprocessing: mean|d| <= {max(p[0] for p in pixel_diffs):.4f}, "
              f"max|d| <= {max(p[1] for p in pixel_diffs):.4f}")
    print(f"  texts ({len(texts)}): ids {'identical' if ids_equal else 'DIFFER'}, min cosine "
          f"{txt_cos.min():.7f}, max|d| {txt_maxd:.2e} [{verdict('text embeddings', txt_cos.min(), txt_maxd)}]")
    print(f"  spread under torch: different images cosine {off_diag.min():.3f}..{off_diag.max():.3f}, "
          f"different texts {txt_off.min():.3f}..{txt_off.max():.3f}")
    print(f"  bounds: cosine >= {args.min_cos}, max|d| <= {args.max_diff:g}")
    print("RESULT: " + ("OK" if not failures else "FAIL (" + ", ".join(failures) + ")"))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
