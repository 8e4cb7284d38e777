#!/usr/bin/env python3
"""Fit the linear objectness score of encoder/enc_proposals.c (WEIGHTS).

    cmake --build build --target bench_regions_tune
    rm -f /tmp/cands.txt && P_DUMP=/tmp/cands.txt build/bench/regions/bench_regions_tune
    python3 bench/regions/fit_weights.py /tmp/cands.txt tests/fixtures/coco-mini

Weighted logistic regression (numpy, Newton steps, L2 1e-3): a candidate is
positive if its IoU with an annotated box of area >= 32x32 (crowds excluded) is
>= 0.5; each object's positives weigh 1 in total, the negatives of a photo as
much as its objects.  Fitted on train2017 only; prints the C array and the
recall (R = 16/32/64, NMS 0.6, no context windows) on both halves.
"""
import json
import sys

import numpy as np


def load_gt(coco_dir):
    gt = {}
    for split in ("train", "val"):
        d = json.load(open("%s/annotations/instances_%s2017.json" % (coco_dir, split)))
        names = {im["id"]: "%s2017/%s" % (split, im["file_name"]) for im in d["images"]}
        for a in d["annotations"]:
            x, y, w, h = a["bbox"]
            if a["iscrowd"] or w * h < 1024:
                continue
            gt.setdefault(names[a["image_id"]], []).append([x, y, w, h])
    return {k: np.array(v) for k, v in gt.items()}


def load_dump(path):
    imgs = []
    for line in open(path):
        if line.startswith("I "):
            imgs.append(["/".join(line.split()[1].split("/")[-2:]), []])  # split/file
        elif line.startswith("C "):
            imgs[-1][1].append([float(v) for v in line.split()[1:]])
    return [(p, np.array(r)) for p, r in imgs if r]


def iou(a, b):
    """a [n,4] as x0,y0,x1,y1; b [m,4] as x,y,w,h -> [n,m]"""
    bx1, by1 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    ix = np.clip(np.minimum(a[:, None, 2], bx1) - np.maximum(a[:, None, 0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], by1) - np.maximum(a[:, None, 1], b[:, 1]), 0, None)
    inter = ix * iy
    aa = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    return inter / (aa[:, None] + (b[:, 2] * b[:, 3])[None, :] - inter)


def select(boxes, scores, R, thr=0.6, min_side=12):
    keep = []
    ok = ((boxes[:, 2] - boxes[:, 0]) >= min_side) & ((boxes[:, 3] - boxes[:, 1]) >= min_side)
    for i in np.argsort(-scores, kind="stable"):
        if not ok[i]:
            continue
        if keep:
            k = boxes[keep]
            kx = np.stack([k[:, 0], k[:, 1], k[:, 2] - k[:, 0], k[:, 3] - k[:, 1]], 1)
            if iou(boxes[i:i + 1], kx).max() > thr:
                continue
        keep.append(i)
        if len(keep) >= R:
            break
    return keep


def main():
    dump, coco_dir = sys.argv[1], sys.argv[2]
    gt = load_gt(coco_dir)
    data = [(p, r) for p, r in load_dump(dump) if p in gt]
    X, y, sw, train = [], [], [], []
    for p, r in data:
        g = gt[p]
        M = iou(r[:, :4], g)
        best, arg = M.max(1), M.argmax(1)
        pos = best >= 0.5
        w = np.zeros(len(r))
        for j in range(len(g)):
            sel = pos & (arg == j)
            if sel.any():
                w[sel] = 1.0 / sel.sum()
        w[~pos] = len(g) / max((~pos).sum(), 1)
        X.append(r[:, 4:]); y.append(pos.astype(float)); sw.append(w)
        train.append(np.full(len(r), p.startswith("train2017/")))
    X, y, sw, train = map(np.concatenate, (X, y, sw, train))
    Xt, yt, st = X[train], y[train], sw[train] / sw[train].mean()
    w = np.zeros(X.shape[1])
    for _ in range(50):
        p = 1 / (1 + np.exp(-Xt @ w))
        g = Xt.T @ (st * (p - yt)) / len(yt) + 1e-3 * w
        H = (Xt * (st * p * (1 - p))[:, None]).T @ Xt / len(yt) + 1e-3 * np.eye(len(w))
        w -= np.linalg.solve(H, g)
    print("static const float WEIGHTS[NFEAT] = {" + ", ".join("%.4ff" % v for v in w) + "};")
    for split in ("train2017", "val2017"):
        res = []
        for R in (16, 32, 64):
            hit = tot = 0
            for p, r in data:
                if not p.startswith(split + "/"):
                    continue
                keep = select(r[:, :4], r[:, 4:] @ w, R)
                hit += (iou(r[keep, :4], gt[p]).max(0) >= 0.5).sum()
                tot += len(gt[p])
            res.append("R=%d %.3f" % (R, hit / tot))
        print(split, ", ".join(res))


if __name__ == "__main__":
    main()
