#!/usr/bin/env python3
"""Fit the linear objectness score of encoder/enc_proposals.c (WEIGHTS).

    cmake --build build --target bench_regions_tune
    rm -f /tmp/cands.txt && P_DUMP=/tmp/cands.txt build/bench/regions/bench_regions_tune
    /usr/bin/python3 bench/regions/fit_weights.py /tmp/cands.txt tests/fixtures/coco-mini

Two stages, both on the train2017 photos only (val2017 is held out):
1. weighted logistic regression (numpy, Newton steps, L2 1e-3): a candidate is
   positive if its IoU with an annotated box of area >= 32x32 (crowds excluded)
   is >= 0.5; each object's positives weigh 1 in total, the negatives of a photo
   as much as its objects.  A pointwise surrogate: it spends its effort on
   every positive, while recall needs one good box per object.
2. coordinate search on the recall itself: starting from (1), on standardized
   features, each weight in turn is moved by +-0.3, 0.15, 0.075, 0.03 and the
   move kept if the mean of recall@16/32/64 on train2017 rises (the selection
   exactly as enc_propose does it: NMS 0.6, min side 12, three context windows
   in the last slots).  One search overfits the 80 photos, so it runs on 8
   bootstrap resamples (FIT_BAGS) and the standardized weights are averaged.
   Deterministic (fixed seeds); about 10 minutes on one core.
Prints the C array and recall (R = 16/32/64) on train2017, val2017 and all.
"""
import json
import sys

import numpy as np

NMS, MIN_SIDE, NWIN = 0.6, 12, 3
BAGS = int(__import__('os').environ.get('FIT_BAGS', '8'))
RS = (16, 32, 64)


def load_gt(coco_dir):
    gt, sizes = {}, {}
    for split in ("train", "val"):
        d = json.load(open("%s/annotations/instances_%s2017.json" % (coco_dir, split)))
        names = {im["id"]: "%s2017/%s" % (split, im["file_name"]) for im in d["images"]}
        for im in d["images"]:
            sizes[names[im["id"]]] = (im["width"], im["height"])
        for a in d["annotations"]:
            x, y, w, h = a["bbox"]
            if a["iscrowd"]:
                continue
            gt.setdefault(names[a["image_id"]], [])
            if w * h >= 1024:
                gt[names[a["image_id"]]].append([x, y, x + w, y + h])
    return {k: np.array(v).reshape(-1, 4) for k, v in gt.items()}, sizes


def load_dump(path):
    imgs = []
    for line in open(path):
        if line.startswith("I "):
            imgs.append(["/".join(line.split()[1].split("/")[-2:]), []])  # split/file
        elif line.startswith("C "):
            imgs[-1][1].append([float(v) for v in line.split()[1:]])
    return [(p, np.array(r)) for p, r in imgs if r]


def iou(a, b):
    """a [n,4], b [m,4], both x0,y0,x1,y1 -> [n,m]"""
    ix = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = ix * iy
    aa = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    bb = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(aa[:, None] + bb[None, :] - inter, 1e-12)


def windows(W, H):
    """enc_proposals.c coarse_windows, first NWIN"""
    if W >= H:
        w = [[0, 0, W, H], [0, 0, W / 2, H], [W / 2, 0, W, H]]
    else:
        w = [[0, 0, W, H], [0, 0, W, H / 2], [0, H / 2, W, H]]
    return np.array(w[:NWIN], float)


class Photo:
    """Everything the selection needs that does not depend on the scores."""

    def __init__(self, name, r, g, size):
        W, H = size
        box = r[:, :4].copy()
        box[:, 2] = np.minimum(box[:, 2], W)
        box[:, 3] = np.minimum(box[:, 3], H)
        self.name, self.F, self.gt = name, r[:, 4:], g
        self.ok = ((box[:, 2] - box[:, 0]) >= MIN_SIDE) & ((box[:, 3] - box[:, 1]) >= MIN_SIDE)
        sup = iou(box, box) > NMS
        self.sup = [np.flatnonzero(row) for row in sup]
        self.hit = iou(box, g) >= 0.5 if len(g) else np.zeros((len(box), 0), bool)
        win = windows(W, H)
        self.win_hit = iou(win, g) >= 0.5 if len(g) else np.zeros((len(win), 0), bool)
        self.win_dup = iou(win, box) > NMS          # window vs candidate
        self.tail_dup = self.win_dup.T               # candidate vs window
        self.win_win = iou(win, win) > NMS

    def nms(self, scores, R):
        order = np.argsort(-scores, kind="stable")
        order = order[self.ok[order]]
        alive = np.ones(len(scores), bool)
        keep = []
        for i in order:
            if not alive[i]:
                continue
            keep.append(i)
            if len(keep) >= R:
                break
            alive[self.sup[i]] = False
        return keep

    def hits(self, keep, R):
        """objects found by the first R boxes enc_propose outputs (windows in the last slots)"""
        seg = max(R - NWIN, 0)
        head = keep[:seg]
        found = self.hit[head].any(0) if head else np.zeros(self.hit.shape[1], bool)
        added = []
        for k in range(min(NWIN, R)):
            if len(head) + len(added) >= R:
                break
            if (head and self.win_dup[k, head].any()) or any(self.win_win[k, a] for a in added):
                continue
            added.append(k)
            found = found | self.win_hit[k]
        m = len(head) + len(added)
        for i in keep[seg:]:
            if m >= R:
                break
            if added and self.tail_dup[i, added].any():
                continue
            found = found | self.hit[i]
            m += 1
        return int(found.sum())


def recall(photos, w, Rs=RS, X=None):
    tot = sum(p.hit.shape[1] for p in photos)
    hits = dict.fromkeys(Rs, 0)
    for j, p in enumerate(photos):
        s = (X[j] if X is not None else p.F) @ w
        keep = p.nms(s, max(Rs))
        for R in Rs:
            hits[R] += p.hits(keep, R)
    return {R: hits[R] / max(tot, 1) for R in Rs}


def logistic(photos):
    X, y, sw = [], [], []
    for p in photos:
        best = p.hit.any(1)
        w = np.zeros(len(best))
        for j in range(p.hit.shape[1]):
            if p.hit[:, j].any():
                w[p.hit[:, j]] = np.maximum(w[p.hit[:, j]], 1.0 / p.hit[:, j].sum())
        w[~best] = p.hit.shape[1] / max((~best).sum(), 1)
        X.append(p.F); y.append(best.astype(float)); sw.append(w)
    X, y, sw = map(np.concatenate, (X, y, sw))
    st = sw / sw.mean()
    w = np.zeros(X.shape[1])
    for _ in range(50):
        q = 1 / (1 + np.exp(-X @ w))
        g = X.T @ (st * (q - y)) / len(y) + 1e-3 * w
        H = (X * (st * q * (1 - q))[:, None]).T @ X / len(y) + 1e-3 * np.eye(len(w))
        w -= np.linalg.solve(H, g)
    return w


def coordinate_search(photos, w_raw, mu, sd, const, seed=0, passes=2, steps=(0.3, 0.15, 0.075, 0.03)):
    Xs = [(p.F - mu) / sd for p in photos]
    w = w_raw * sd
    w[const] = 0  # the bias is irrelevant to a per-photo ranking

    def obj(v):
        return np.mean(list(recall(photos, v, X=Xs).values()))

    best = obj(w)
    rng = np.random.RandomState(seed)
    for it in range(passes):
        for st in steps:
            for k in rng.permutation(len(w)):
                for sign in (1, -1):
                    v = w.copy()
                    v[k] += sign * st
                    o = obj(v)
                    if o > best + 1e-9:
                        best, w = o, v
                        break
        print("seed %d pass %d: mean recall %.4f" % (seed, it, best), file=sys.stderr)
    return w


def bagged_search(photos, w_raw, bags=BAGS):
    """The search overfits 80 photos (local optima differ from run to run):
    average the standardized weights found on `bags` bootstrap resamples."""
    A = np.concatenate([p.F for p in photos])
    sd = A.std(0)
    const = sd < 1e-6
    mu = np.where(const, 0, A.mean(0))
    sd = np.where(const, 1, sd)
    rng = np.random.RandomState(1)
    ws = []
    for b in range(bags):
        sample = [photos[i] for i in rng.randint(0, len(photos), len(photos))] if bags > 1 else photos
        ws.append(coordinate_search(sample, w_raw, mu, sd, const, seed=b))
    raw = np.mean(ws, 0) / sd
    raw[const] = 0
    return raw


def main():
    dump, coco_dir = sys.argv[1], sys.argv[2]
    gt, sizes = load_gt(coco_dir)
    photos = [Photo(p, r, gt[p], sizes[p]) for p, r in load_dump(dump) if p in gt]
    train = [p for p in photos if p.name.startswith("train2017/")]
    val = [p for p in photos if p.name.startswith("val2017/")]
    w0 = logistic(train)
    w = bagged_search(train, w0)
    print("static const float WEIGHTS[NFEAT] = {" + ", ".join("%.4ff" % v for v in w) + "};")
    w = np.array(["%.4f" % v for v in w], float)  # what the C code will use
    for name, ph in (("train2017 (fitted on)", train), ("val2017 (held out)", val), ("all", photos)):
        for tag, v in (("logistic", w0), ("recall-fitted", w)):
            r = recall(ph, v)
            print("%-22s %-14s" % (name, tag) + "  ".join("R=%d %.3f" % (R, r[R]) for R in RS))


if __name__ == "__main__":
    main()
