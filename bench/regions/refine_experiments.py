"""Offline evaluation of pixel-level re-ranking of text-to-region answers (issues 5, 6).

    /usr/bin/python3 -m tools.synthworld.generate --seed S --count 200 /tmp/heldout-S
    /usr/bin/python3 -m tools.umgtrain.dump_proposals BUILD/umgdb /tmp/heldout-S tests/fixtures/synth-umg /tmp/props-S.json
    /usr/bin/python3 -m bench.regions.refine_experiments --model tests/fixtures/synth-umg --seed S \
        --proposals /tmp/props-S.json [--rules all|NAME...]

Emulates the server's region query (engine/search.c eng_search: the 4k best region
vectors, per-image suppression of boxes overlapping a better one at IoU > 0.5, k = 50
hits) over the server's own proposal boxes, pooled in Python as `dense` mode pools them,
and then re-ranks the boxes of the first M photos of that answer with a heatmap term:
the text embedding against the photo's normalized patch tokens (what "granularity":
"pixel" returns), turned into a soft mask m (one value per grid cell, weighted by how
much of the cell the photo covers), and compared with the box's cell coverage a (the
same area weights as pooling, not normalized):

    soft IoU = sum(a m) / (sum(a) + sum(m) - sum(a m))
    score    = region cosine + lam * soft IoU

Masks tried (h = heat of a cell, hmax / hmin over the photo's cells):
    rel:D    m = clip((h - (hmax - D)) / D, 0, 1)      linear ramp below the peak
    frac:F   m = clip((h - t) / (hmax - t), 0, 1), t = hmin + F (hmax - hmin)
    abs:T    m = [h >= T]
    soft:TAU m = exp((h - hmax) / TAU)                  softmax-like, peak 1
    mean:C   the box's area-weighted mean heat minus C (not a soft IoU)
    peak:C   the hottest cell at least half under the box, minus C
--order image keeps the photos' places and re-ranks boxes within each (what the server
does); global / norm let the M photos' boxes compete on the refined score.  --scale spread
multiplies the term by the photo's cosine range (the server's rule: frac:0.5, lam 0.5).
Scored with tools/umgtrain/meaning.py (top box IoU >= 0.5 with the phrase's object;
binding failures over the hit list); also prints where the baseline's misses are."""

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from tools.umgclip.model import load_clip
from tools.umgclip.tokenizer import Tokenizer
from tools.umgtrain import data, meaning

K = 50
FETCH = 4 * K
NMS = 0.5


def coverage(boxes, geom, patch, grid):
    """Unnormalized area weights [R, G*G]: the fraction of each cell under each box
    (pooling's weights before dividing by their sum)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sx, sy = float(geom["scale_x"]), float(geom["scale_y"])
    ox, oy = float(geom["off_x"]), float(geom["off_y"])
    iw, ih = float(geom["input_w"]), float(geom["input_h"])
    p = float(patch)
    x0 = np.clip(b[:, 0] * sx + ox, 0.0, iw) / p
    x1 = np.clip((b[:, 0] + b[:, 2]) * sx + ox, 0.0, iw) / p
    y0 = np.clip(b[:, 1] * sy + oy, 0.0, ih) / p
    y1 = np.clip((b[:, 1] + b[:, 3]) * sy + oy, 0.0, ih) / p
    c = np.arange(grid, dtype=np.float64)
    wx = np.maximum(0.0, np.minimum(x1[:, None], c + 1) - np.maximum(x0[:, None], c))
    wy = np.maximum(0.0, np.minimum(y1[:, None], c + 1) - np.maximum(y0[:, None], c))
    return (wy[:, :, None] * wx[:, None, :]).reshape(len(b), grid * grid)


def mask_of(kind, param, h, photo):
    on = photo > 0
    hmax, hmin = h[on].max(), h[on].min()
    if kind == "rel":
        m = np.clip((h - (hmax - param)) / param, 0, 1)
    elif kind == "frac":
        t = hmin + param * (hmax - hmin)
        m = np.clip((h - t) / max(hmax - t, 1e-9), 0, 1)
    elif kind == "abs":
        m = (h >= param).astype(np.float64)
    elif kind in ("mean", "peak"):
        return None
    elif kind == "soft":
        m = np.exp((h - hmax) / param)
    else:
        raise ValueError(kind)
    return m * photo


def soft_iou(a, m):
    inter = a @ m
    return inter / (a.sum(1) + m.sum() - inter)


def nms_hits(order, img_of, boxes_of, k):
    """The server's per-image suppression over candidates in score order."""
    kept = []
    for j in order:
        im, b = img_of[j], boxes_of[j]
        if any(img_of[i] == im and meaning.iou(boxes_of[i], b) > NMS for i in kept):
            continue
        kept.append(j)
        if len(kept) == k:
            break
    return kept


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--proposals", required=True)
    ap.add_argument("--rules", nargs="*", default=["grid"])
    ap.add_argument("--images", type=int, nargs="*", default=[8], help="M: photos re-ranked")
    ap.add_argument("--lams", type=float, nargs="*", default=[0.05, 0.1, 0.2, 0.3, 0.5, 1.0])
    ap.add_argument("--returned-only", action="store_true",
                    help="re-rank only the boxes FAISS returned, not all stored proposals of the photo")
    ap.add_argument("--order", choices=("global", "image", "norm"), default="global",
                    help="global: all re-scored boxes of the M photos compete on cosine + lam term; "
                         "image: photos keep their places in the answer, the boxes within each are re-ranked; "
                         "norm: global, the term minus its maximum within the photo")
    ap.add_argument("--scale", choices=("none", "spread", "std"), default="none",
                    help="multiply the term by the photo's cosine range (max - min over its boxes) or std")
    a = ap.parse_args()
    torch.set_num_threads(1)

    model = load_clip(a.model)
    cfg = model.config["vision_config"]
    size, patch = cfg["image_size"], cfg["patch_size"]
    grid = size // patch
    tok = Tokenizer(a.model)
    items = data.prepare(a.seed, a.count, size, patch, procs=1)
    with open(a.proposals) as f:
        props = json.load(f)
    with torch.no_grad():
        pats = []
        for i in range(0, len(items), 32):
            _, p = model.encode_image(data.to_pixels(items[i:i + 32]))
            pats.append(p)
        patches_n = F.normalize(torch.cat(pats), dim=-1).double().numpy()

    ann = {"images": [{"file": it["name"], "caption": it["caption"], "objects": it["objects"]} for it in items]}
    queries = [q for q in meaning.make_queries(ann) if q["granularity"] == "region"]
    with torch.no_grad():
        Q = F.normalize(torch.cat([model.encode_ids([tok.tokenize(q["text"])]) for q in queries]),
                        dim=-1).double().numpy()

    # every stored proposal: image index, box, region vector, cell coverage
    img_of, boxes_of, vecs, covs, first = [], [], [], [], []
    photo_cov = []
    for ii, it in enumerate(items):
        boxes = [r["box"] for r in props[it["name"]]["regions"]]
        first.append(len(boxes_of))
        w = data.weight_matrix_np(boxes, it["geom"], patch, grid).astype(np.float64)
        v = w @ patches_n[ii]
        vecs.append(v / np.linalg.norm(v, axis=1, keepdims=True))
        covs.append(coverage(boxes, it["geom"], patch, grid))
        photo_cov.append(coverage([[0, 0, it["width"], it["height"]]], it["geom"], patch, grid)[0])
        img_of += [ii] * len(boxes)
        boxes_of += boxes
    first.append(len(boxes_of))
    V = np.concatenate(vecs)
    img_of = np.array(img_of)

    # the baseline answer of every query (as the server gives it)
    base = []
    for qi, q in enumerate(queries):
        s = V @ Q[qi]
        order = np.argsort(-s, kind="stable")[:FETCH]
        kept = nms_hits(order, img_of, boxes_of, K)
        base.append((s, kept))

    def answer(qi, rule, M, lam):
        s, kept = base[qi]
        if rule is None or lam == 0:
            return [(items[img_of[j]]["name"], boxes_of[j], s[j]) for j in kept]
        kind, param = rule
        top_imgs = []
        for j in kept:
            if img_of[j] not in top_imgs:
                top_imgs.append(img_of[j])
            if len(top_imgs) == M:
                break
        cand, cs, per_img = [], [], {}
        for ii in top_imgs:
            idx = np.arange(first[ii], first[ii + 1])
            if a.returned_only:
                idx = np.array([j for j in kept if img_of[j] == ii])
            h = patches_n[ii] @ Q[qi]
            m = mask_of(kind, param, h, photo_cov[ii])
            cov = covs[ii][idx - first[ii]]
            if kind == "mean":    # area-weighted mean heat in the box, minus param
                term = (cov @ h) / cov.sum(1) - param
            elif kind == "peak":  # the hottest cell at least half under the box
                term = np.array([h[c >= 0.5].max() if (c >= 0.5).any() else h[c.argmax()] for c in cov]) - param
            else:
                term = soft_iou(cov, m)
            if a.scale == "spread":  # lam in units of the photo's own cosine range: scale-free
                term = term * (s[idx].max() - s[idx].min())
            elif a.scale == "std":
                term = term * s[idx].std()
            if a.order == "norm":  # the photo's best-agreeing box loses nothing
                term = term - term.max()
            sc = s[idx] + lam * term
            if a.order == "image":
                per_img[ii] = nms_hits(idx[np.argsort(-sc, kind="stable")], img_of, boxes_of, K)
            cand += list(idx)
            cs += list(sc)
        if a.order == "image":  # photos keep their places; each fills its places with its re-ranked boxes
            out = []
            for j in kept:
                ii = img_of[j]
                if ii in per_img:
                    if per_img[ii]:
                        r = per_img[ii].pop(0)
                        out.append((items[ii]["name"], boxes_of[r], s[r]))
                else:
                    out.append((items[ii]["name"], boxes_of[j], s[j]))
            return out
        cand, cs = np.array(cand), np.array(cs)
        order = cand[np.argsort(-cs, kind="stable")]
        score_of = dict(zip(cand.tolist(), cs.tolist()))
        ref = nms_hits(order, img_of, boxes_of, K)
        rest = [j for j in kept if img_of[j] not in top_imgs]
        out = [(items[img_of[j]]["name"], boxes_of[j], score_of[j]) for j in ref]
        out += [(items[img_of[j]]["name"], boxes_of[j], s[j]) for j in rest]
        return out[:K]

    def evaluate(rule, M, lam):
        results = []
        for qi, q in enumerate(queries):
            hits = [{"path": n, "box": b, "score": float(sc)} for n, b, sc in answer(qi, rule, M, lam)]
            results.append({"text": q["text"], "granularity": "region", "hits": hits})
        f, _ = meaning.score(ann, results)
        return f["region_top_iou50"], f["binding_failure_rate"], f["region_queries"], f["binding_queries"]

    # failure anatomy of the baseline: wrong photo or wrong box in a right photo; upper bound
    wrong_img = wrong_box = reach = 0
    anatomy = {}
    for qi, q in enumerate(queries):
        if len(q["text"].split()) != 3:
            continue
        s, kept = base[qi]
        j = kept[0]
        it = items[img_of[j]]
        objs = [o for o in it["objects"] if o["phrase"] == q["text"]]
        good = any(meaning.iou(boxes_of[j], o["box"]) >= 0.5 for o in objs)
        if not good:
            if objs:
                wrong_box += 1
            else:
                wrong_img += 1
            hit_objs = [o for o in it["objects"] if meaning.iou(boxes_of[j], o["box"]) >= 0.5]
            size, colour, shape = q["text"].split()
            if hit_objs:
                o = hit_objs[0]
                what = "+".join(n for n, x, y in (("size", size, o["size"]), ("colour", colour, o["colour"]),
                                                  ("shape", shape, o["shape"])) if x != y)
                anatomy[what] = anatomy.get(what, 0) + 1
            else:
                best = max((meaning.iou(boxes_of[j], o["box"]) for o in it["objects"]), default=0)
                key = "no object (best IoU %s)" % ("<0.2" if best < 0.2 else "0.2-0.5")
                anatomy[key] = anatomy.get(key, 0) + 1
        # can some stored proposal of any photo with this phrase match?
        reach += any(meaning.iou(b, o["box"]) >= 0.5
                     for ii, it2 in enumerate(items) for o in it2["objects"] if o["phrase"] == q["text"]
                     for b in boxes_of[first[ii]:first[ii + 1]])
    b0 = evaluate(None, 0, 0)
    print("seed %d: %d photos, %d phrase queries, %d binding queries" % (a.seed, len(items), b0[2], b0[3]))
    print("baseline: top box right %.3f, binding failures %.3f" % (b0[0], b0[1]))
    print("baseline misses: wrong photo %d, wrong box in a photo with the phrase %d; "
          "phrase reachable by some proposal %d of %d" % (wrong_img, wrong_box, reach, b0[2]))
    print("baseline misses: the top box matches an object differing in", anatomy)

    if a.rules == ["grid"]:
        rules = [("rel", d) for d in (0.05, 0.1, 0.15, 0.2, 0.3)] + \
                [("frac", f) for f in (0.3, 0.5, 0.6, 0.7, 0.8)] + \
                [("abs", t) for t in (0.1, 0.15, 0.2, 0.25, 0.3)] + \
                [("soft", t) for t in (0.02, 0.05, 0.1)]
    else:
        rules = [(r.split(":")[0], float(r.split(":")[1])) for r in a.rules]
    for M in a.images:
        for rule in rules:
            row = []
            for lam in a.lams:
                acc, bind, _, _ = evaluate(rule, M, lam)
                row.append("%.3f/%.3f" % (acc, bind))
            print("M=%-3d %-5s %-5g " % (M, rule[0], rule[1]) + " ".join(row), flush=True)
    print("(columns: lam = %s; each top-box accuracy / binding failure rate)" % " ".join("%g" % l for l in a.lams))


if __name__ == "__main__":
    main()
