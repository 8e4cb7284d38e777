"""Validate a trained checkpoint in Python on held-out photos of the synthetic world
(before / besides the server checks).

    /usr/bin/python3 -m tools.umgtrain.validate --model tests/fixtures/synth-umg --seed 1000 --count 200

Reports:
  - text-to-image recall@1/@5 with each photo's caption (meaning.py's definition);
  - region phrase accuracy: the dense-pooled vector (pooling.py) of each object's
    annotated box ranks its own phrase first among all 96 full phrases
    ("small red circle"), resp. all 48 colour+shape phrases;
  - text-to-region over an index of the annotated boxes plus one background box per
    photo (no proposals: those are the server's), scored by meaning.py: top-box
    IoU >= 0.5 rate and the attribute-binding failure rate;
  - pixel accuracy: patch tokens whose nearest phrase (full phrases + "background")
    is the label of the cell; object-cell accuracy: the same over the cells labelled
    with an object only (the background cells, the majority, are easy);
  - where the own-phrase misses are: the share of small / large objects whose region
    vector's nearest full phrase names another shape;
  - with --proposals (a dump_proposals.py file of the same photos): text-to-region and
    binding over the server's proposal boxes, pooled here as `dense` mode pools them.
"""

import argparse
import json

import torch
import torch.nn.functional as F

from tools.umgclip.model import load_clip
from tools.umgclip.tokenizer import Tokenizer
from tools.umgtrain import data, meaning


def encode_texts(model, tok, texts, bs=256):
    out = []
    for i in range(0, len(texts), bs):
        out.append(model.encode_ids([tok.tokenize(t) for t in texts[i:i + bs]]))
    return F.normalize(torch.cat(out), dim=-1)


def encode_photos(model, items, bs=32):
    """(image embeddings [N, P], patch tokens [N, G*G, P]) of prepared photos, L2-normalized."""
    embs, pats = [], []
    with torch.no_grad():
        for i in range(0, len(items), bs):
            e, p = model.encode_image(data.to_pixels(items[i:i + bs]))
            embs.append(e)
            pats.append(p)
    return F.normalize(torch.cat(embs), dim=-1), F.normalize(torch.cat(pats), dim=-1)


def proposal_figures(model, tok, items, patches_n, ann, props, patch, grid):
    """Text-to-region and binding over the server's own proposal boxes (a dump_proposals.py
    file), pooled in Python: what `umgdb serve --region-mode dense` computes."""
    vecs, meta = [], []
    for it, pn in zip(items, patches_n):
        boxes = [r["box"] for r in props[it["name"]]["regions"]]
        w = torch.from_numpy(data.weight_matrix_np(boxes, it["geom"], patch, grid))
        vecs.append(F.normalize(w @ pn, dim=-1))
        meta += [(it["name"], b) for b in boxes]
    V = torch.cat(vecs)
    results = []
    for q in meaning.make_queries(ann):
        if q["granularity"] != "region":
            continue
        s = V @ encode_texts(model, tok, [q["text"]])[0]
        top = s.topk(min(50, len(meta))).indices.tolist()
        results.append({"text": q["text"], "granularity": "region",
                        "hits": [{"path": meta[j][0], "box": meta[j][1], "score": float(s[j])} for j in top]})
    f, _ = meaning.score(ann, results)
    return {"proposals_region_top_iou50": f["region_top_iou50"],
            "proposals_binding_failure_rate": f["binding_failure_rate"]}


def evaluate(model_dir, seed, count, procs=2, proposals=None):
    model = load_clip(model_dir)
    cfg = model.config["vision_config"]
    size, patch = cfg["image_size"], cfg["patch_size"]
    tok = Tokenizer(model_dir)
    items = data.prepare(seed, count, size, patch, procs=procs)
    with torch.no_grad():
        img, patches_n = encode_photos(model, items)
        caps = [it["caption"] for it in items]
        cap = encode_texts(model, tok, caps)
        full, short, parts = data.full_phrases(), data.short_phrases(), data.full_phrase_parts()
        full_e = encode_texts(model, tok, full + [data.BACKGROUND])
        short_e = encode_texts(model, tok, short)

    ann = {"images": [{"file": it["name"], "caption": it["caption"], "objects": it["objects"]} for it in items]}
    results = []
    sim = cap @ img.t()
    for qi, c in enumerate(caps):
        top = sim[qi].topk(min(10, len(items))).indices.tolist()
        results.append({"text": c, "granularity": "image",
                        "hits": [{"path": items[j]["name"], "score": float(sim[qi, j])} for j in top]})

    # region index: annotated boxes (+ one background box per photo), dense pooling
    reg_vecs, reg_meta = [], []
    own_full = own_short = n_obj = 0
    n_size = {"small": 0, "large": 0}
    shape_err = {"small": 0, "large": 0}
    for it, pn in zip(items, patches_n):
        r = F.normalize(torch.from_numpy(it["weights"]) @ pn, dim=-1)
        boxes = [o["box"] for o in it["objects"]]
        for k, o in enumerate(it["objects"]):
            n_obj += 1
            best = int((r[k] @ full_e[:-1].t()).argmax())
            own_full += full[best] == o["phrase"]
            n_size[o["size"]] += 1
            shape_err[o["size"]] += parts[best][2] != o["shape"]
            own_short += short[int((r[k] @ short_e.t()).argmax())] == "%s %s" % (o["colour"], o["shape"])
        if it["has_bg"]:
            boxes = boxes + [None]
        for k, b in enumerate(boxes):
            reg_vecs.append(r[k])
            reg_meta.append((it["name"], b))
    R = torch.stack(reg_vecs)
    for q in meaning.make_queries(ann):
        if q["granularity"] != "region":
            continue
        qe = encode_texts(model, tok, [q["text"]])[0]
        s = R @ qe
        top = s.topk(min(50, len(reg_meta))).indices.tolist()
        hits = []
        for j in top:
            name, b = reg_meta[j]
            h = {"path": name, "score": float(s[j])}
            h["box"] = b if b is not None else [0, 0, 0, 0]
            hits.append(h)
        results.append({"text": q["text"], "granularity": "region", "hits": hits})
    figures, failures = meaning.score(ann, results)

    # pixel accuracy over labelled cells
    correct = total = obj_correct = obj_total = 0
    for it, pn in zip(items, patches_n):
        pred = (pn @ full_e.t()).argmax(1).numpy()
        lab = it["label"]
        for cell in range(len(lab)):
            if lab[cell] == -2:
                continue
            want = len(full) if lab[cell] == -1 else full.index(it["objects"][lab[cell]]["phrase"])
            total += 1
            correct += pred[cell] == want
            if lab[cell] >= 0:
                obj_total += 1
                obj_correct += pred[cell] == want
    figures.update({"photos": len(items), "objects": n_obj,
                    "region_own_phrase_top1_full": own_full / n_obj,
                    "region_own_phrase_top1_colour_shape": own_short / n_obj,
                    "region_own_phrase_shape_wrong_small": shape_err["small"] / max(1, n_size["small"]),
                    "region_own_phrase_shape_wrong_large": shape_err["large"] / max(1, n_size["large"]),
                    "pixel_accuracy": correct / total,
                    "object_cell_accuracy": obj_correct / max(1, obj_total)})
    if proposals:
        with open(proposals) as f:
            props = json.load(f)
        figures.update(proposal_figures(model, tok, items, patches_n, ann, props, patch, size // patch))
    return figures, failures


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--proposals", help="the server's proposal boxes of these photos (dump_proposals.py): "
                                        "also score text-to-region over them, as the server does")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    figures, failures = evaluate(a.model, a.seed, a.count, a.procs, a.proposals)
    if a.json:
        print(json.dumps(figures))
        return
    for k, v in figures.items():
        print("%-36s %s" % (k, "%.3f" % v if isinstance(v, float) else v))
    for kind, text, top in failures[:15]:
        print("  %s miss: %r top=%s" % (kind, text, top))


if __name__ == "__main__":
    main()
