"""Offline check (issue 6): does the image embedding help text-to-region search?

    /usr/bin/python3 -m tools.umgtrain.dump_proposals BUILD/umgdb --seed S --count 200 tests/fixtures/synth-umg /tmp/props-S.json
    /usr/bin/python3 -m bench.regions.image_prior_experiments --model tests/fixtures/synth-umg \
        --seeds 1000 2000 3000 --proposals /tmp/props-1000.json /tmp/props-2000.json /tmp/props-3000.json

Scores every proposal box of the held-out photos (pooled in Python as `dense` mode pools
them) by  region cosine + lam * (cosine of the text with the box's photo's image
embedding),  takes the best box over all photos for each full-phrase query and scores it
with tools/umgtrain/meaning.py (top box IoU >= 0.5 with the phrase's object; binding
failures over the 50 best boxes).  lam = 0 is the server's plain region query (without
its per-photo suppression, which does not change the top box)."""

import argparse
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

from tools.umgclip.model import load_clip
from tools.umgclip.tokenizer import Tokenizer
from tools.umgtrain import data, meaning
from tools.umgtrain.validate import encode_photos, encode_texts

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "tests", "fixtures", "synth-umg"))
    ap.add_argument("--seeds", type=int, nargs="+", required=True)
    ap.add_argument("--proposals", nargs="+", required=True, help="one dump_proposals.py file per seed")
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--lams", type=float, nargs="+", default=[0, 0.25, 0.5, 0.75, 1, 1.5, 2, 3])
    a = ap.parse_args()
    if len(a.seeds) != len(a.proposals):
        sys.exit("one --proposals file per seed")
    torch.set_num_threads(1)
    model = load_clip(a.model)
    cfg = model.config["vision_config"]
    size, patch = cfg["image_size"], cfg["patch_size"]
    tok = Tokenizer(a.model)
    region = {lam: [] for lam in a.lams}
    binding = {lam: [] for lam in a.lams}
    for seed, pf in zip(a.seeds, a.proposals):
        with open(pf) as f:
            props = json.load(f)
        items = data.prepare(seed, a.count, size, patch, procs=2)
        img, patches = encode_photos(model, items)
        with torch.no_grad():
            vecs, meta, photo_of = [], [], []
            for ii, (it, pn) in enumerate(zip(items, patches)):
                boxes = [r["box"] for r in props[it["name"]]["regions"]]
                w = torch.from_numpy(data.weight_matrix_np(boxes, it["geom"], patch, size // patch))
                vecs.append(F.normalize(w @ pn, dim=-1))
                meta += [(it["name"], b) for b in boxes]
                photo_of += [ii] * len(boxes)
            V = torch.cat(vecs)
            ann = {"images": [{"file": it["name"], "caption": it["caption"], "objects": it["objects"]}
                              for it in items]}
            queries = [q for q in meaning.make_queries(ann) if q["granularity"] == "region"]
            T = encode_texts(model, tok, [q["text"] for q in queries])
            box_cos = T @ V.t()                                  # [Q, boxes]
            photo_cos = (T @ img.t())[:, torch.tensor(photo_of)]  # [Q, boxes]: the box's photo
        for lam in a.lams:
            S = box_cos + lam * photo_cos
            results = []
            for qi, q in enumerate(queries):
                top = S[qi].topk(50).indices.tolist()
                results.append({"text": q["text"], "granularity": "region",
                                "hits": [{"path": meta[j][0], "box": meta[j][1], "score": float(S[qi, j])}
                                         for j in top]})
            figures, _ = meaning.score(ann, results)
            region[lam].append(figures["region_top_iou50"])
            binding[lam].append(figures["binding_failure_rate"])
    print("lam    text-to-region per seed (mean)          binding failures per seed")
    for lam in a.lams:
        print("%-5.2f  %s (%.3f)   %s" % (lam, " ".join("%.3f" % x for x in region[lam]), np.mean(region[lam]),
                                         " ".join("%.3f" % x for x in binding[lam])))


if __name__ == "__main__":
    main()
