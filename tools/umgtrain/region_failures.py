"""Why text-to-region queries miss: classify the top box of every full-phrase query over the
server's proposal boxes (a dump_proposals.py file of the same photos), pooled in Python as
`umgdb serve --region-mode dense` pools them (validate.py --proposals gives the same hits).

    /usr/bin/python3 -m tools.umgtrain.region_failures --model tests/fixtures/synth-umg --seed 1000 --count 200 \\
        --proposals /tmp/heldout-props.json

Kinds: ok (meaning.py's rule); the top box matches (IoU >= 0.5) another object, which differs
in shape / colour / size; the right photo but a box with IoU < 0.5; a photo without that
object and a box matching no object.  Then the shape confusions (size, wanted, found)."""
import argparse
import json
from collections import Counter

import torch
import torch.nn.functional as F

from tools.umgclip.model import load_clip
from tools.umgclip.tokenizer import Tokenizer
from tools.umgtrain import data, meaning
from tools.umgtrain.validate import encode_texts

KEYS = ("size", "colour", "shape")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--proposals", required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    model = load_clip(a.model)
    cfg = model.config["vision_config"]
    size, patch = cfg["image_size"], cfg["patch_size"]
    tok = Tokenizer(a.model)
    items = data.prepare(a.seed, a.count, size, patch, procs=1)
    with open(a.proposals) as f:
        props = json.load(f)
    with torch.no_grad():
        vecs, meta = [], []
        for i in range(0, len(items), 32):
            _, p = model.encode_image(data.to_pixels(items[i:i + 32]))
            for it, pn in zip(items[i:i + 32], F.normalize(p, dim=-1)):
                boxes = [r["box"] for r in props[it["name"]]["regions"]]
                w = torch.from_numpy(data.weight_matrix_np(boxes, it["geom"], patch, size // patch))
                vecs.append(F.normalize(w @ pn, dim=-1))
                meta += [(it, b) for b in boxes]
        V = torch.cat(vecs)
        phrases = sorted({o["phrase"] for it in items for o in it["objects"]})
        E = encode_texts(model, tok, phrases)
    kinds, confused = Counter(), Counter()
    for ph, e in zip(phrases, E):
        it, box = meta[int((V @ e).argmax())]
        want = dict(zip(KEYS, ph.split()))
        ious = [(meaning.iou(box, o["box"]), o) for o in it["objects"]]
        if any(i >= 0.5 and o["phrase"] == ph for i, o in ious):
            kinds["ok"] += 1
            continue
        own = [i for i, o in ious if o["phrase"] == ph]
        match = [o for i, o in ious if i >= 0.5]
        if own:
            kinds["right photo, box IoU %s with the object" % ("0.3-0.5" if max(own) >= 0.3 else "< 0.3")] += 1
        elif match:
            o = match[0]
            kinds["another object's box, differs in " + "+".join(k for k in KEYS if o[k] != want[k])] += 1
            if o["size"] == want["size"] and o["colour"] == want["colour"]:
                confused[(want["size"], want["shape"], o["shape"])] += 1
        else:
            kinds["a photo without it, a box of no object"] += 1
    print("%d full-phrase queries, %d photos" % (len(phrases), len(items)))
    for k, v in kinds.most_common():
        print("  %3d %s" % (v, k))
    print("shape confusions (size, wanted, found):",
          ", ".join("%s %s->%s %d" % (k + (v,)) for k, v in confused.most_common()))


if __name__ == "__main__":
    main()
