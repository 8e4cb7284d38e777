"""Fit the linear objectness score of encoder/enc_proposals.c (WEIGHTS).

    cmake --build build --target bench_regions_tune
    rm -f /tmp/cands.txt && P_DUMP=/tmp/cands.txt build/bench/regions/bench_regions_tune
    /usr/bin/python3 -m bench.regions.fit_weights /tmp/cands.txt tests/fixtures/coco-mini

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
Prints the C array and recall (R = 16/32/64) on train2017, val2017 and all,
and the same with the box refinement that was evaluated and not adopted
(fit_boxreg: docs/regions.md, "Third round").
Environment: FIT_BAGS (default 8); FIT_COLS, the dumped features to use
(default "0-25", the scored ones; the tuning build dumps 10 more cues under
evaluation after them, e.g. FIT_COLS=0-25,35); FIT_WEIGHTS="w0, w1, ..." skips
both stages and evaluates those weights (e.g. the committed ones).
"""
import json
import os
import sys

import numpy as np

NMS, MIN_SIDE, NWIN = 0.6, 12, 3
BOX_SHIFT = 0.5  # box refinement (evaluated, not in enc_proposals.c): half the predicted edge offsets
BAGS = int(os.environ.get('FIT_BAGS', '8'))
# FIT_COLS: which dumped features to use, e.g. "0-25,35" (the tuning build dumps
# the cues under evaluation after the 26 scored ones); default the scored ones
COLS = [c for part in os.environ.get('FIT_COLS', '0-25').split(',')
        for c in (range(int(part.split('-')[0]), int(part.split('-')[-1]) + 1))]
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

    def __init__(self, name, r, g, size, boxreg=None):
        W, H = size
        box = r[:, :4].copy()
        box[:, 2] = np.minimum(box[:, 2], W)
        box[:, 3] = np.minimum(box[:, 3], H)
        self.name, self.F, self.gt, self.raw, self.size = name, r[:, 4:][:, COLS], g, r, size
        self.box0 = box.copy()
        if boxreg is not None:
            box = refine(box, self.F[:, :boxreg.shape[1]], boxreg, W, H)
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


def refine(box, F, A, W, H):
    """Box refinement as it would run in C: each edge moves by BOX_SHIFT x its
    linear prediction (from the score features) x the box's side, then the box
    is clipped to the photo (float32)."""
    box, F, A = box.astype(np.float32), F.astype(np.float32), A.astype(np.float32)
    d = np.float32(BOX_SHIFT) * (F @ A.T)
    bw, bh = box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]
    out = box + d * np.stack([bw, bh, bw, bh], 1)
    out[:, 0] = np.clip(out[:, 0], 0, W)
    out[:, 1] = np.clip(out[:, 1], 0, H)
    out[:, 2] = np.clip(out[:, 2], 0, W)
    out[:, 3] = np.clip(out[:, 3], 0, H)
    return out.astype(np.float64)


def fit_boxreg(photos, thr=0.4, lam=100.0):
    """Ridge regression of the offsets of the annotated box's edges from the
    candidate's (x0, y0, x1, y1), in units of the candidate's width / height,
    on the candidates at IoU >= thr with an annotated box (the nearest)."""
    X, T = [], []
    for p in photos:
        if not len(p.gt):
            continue
        b = p.box0
        I = iou(b, p.gt)
        m = I.max(1) >= thr
        G = p.gt[I.argmax(1)]
        bw, bh = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
        t = np.stack([(G[:, 0] - b[:, 0]) / bw, (G[:, 1] - b[:, 1]) / bh,
                      (G[:, 2] - b[:, 2]) / bw, (G[:, 3] - b[:, 3]) / bh], 1)
        X.append(p.F[m]); T.append(t[m])
    X, T = np.concatenate(X), np.concatenate(T)
    return np.linalg.solve(X.T @ X + lam * np.eye(X.shape[1]), X.T @ T).T  # [4, nfeat]


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
    if os.environ.get("FIT_WEIGHTS"):  # the committed weights, e.g. to refit only the box regression
        w0 = w = np.array([float(v) for v in os.environ["FIT_WEIGHTS"].replace("f", "").split(",")])
    else:
        w0 = logistic(train)
        w = bagged_search(train, w0)
    print("static const float WEIGHTS[NFEAT] = {" + ", ".join("%.4ff" % v for v in w) + "};")
    w = np.array(["%.4f" % v for v in w], float)  # what the C code will use
    A = fit_boxreg(train)
    print("static const float BOX_REG[4][NFEAT] = {\n" + ",\n".join(
        "    {" + ", ".join("%.5ff" % v for v in row) + "}" for row in A) + "};")
    A = np.array([["%.5f" % v for v in row] for row in A], float)
    refined = [Photo(p.name, p.raw, p.gt, p.size, A) for p in photos]
    for name, pre in (("train2017 (fitted on)", "train2017/"), ("val2017 (held out)", "val2017/"), ("all", "")):
        ph = [p for p in photos if p.name.startswith(pre)]
        rf = [p for p in refined if p.name.startswith(pre)]
        for tag, v, q in (("logistic", w0, ph), ("recall-fitted", w, ph), ("+ box refinement", w, rf)):
            r = recall(q, v)
            print("%-22s %-17s" % (name, tag) + "  ".join("R=%d %.3f" % (R, r[R]) for R in RS))


if __name__ == "__main__":
    main()
