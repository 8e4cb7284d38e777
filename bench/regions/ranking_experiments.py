"""Ranking experiments on the proposal candidates (docs/regions.md, "Third round").

    cmake --build build --target bench_regions_tune
    rm -f /tmp/cands.txt && P_DUMP=/tmp/cands.txt build/bench/regions/bench_regions_tune
    /usr/bin/python3 -m bench.regions.ranking_experiments /tmp/cands.txt tests/fixtures/coco-mini

Everything is fitted on the 80 train2017 photos and reported on the 79 val2017
photos (held out) next to train2017; recall of the annotated boxes >= 32x32 at
IoU 0.5, R = 16 / 32 / 64, with enc_propose's selection (NMS 0.6, min side 12,
three context windows in the last slots; fit_weights.py's Photo/recall).
Deterministic (fixed seeds), numpy only; about 15 minutes on one core.
  1. upper bounds: the candidate pool, an oracle ranking (score = IoU with the
     best annotated box) through the same selection, an oracle re-ranking of the
     top 150 / 300 NMS survivors of the committed score;
  2. where the slots go at R = 32 / 64: boxes that hit nothing, a new object, or
     an object already hit (what diversity-aware selection could win back);
  3. near misses: objects whose best selected box has IoU 0.4-0.5 (what box
     refinement could win back);
  4. richer rankers on the 26 scored features plus the 10 cues under evaluation:
     gradient-boosted trees (depth 2-3, IoU or binary targets, per-object
     weights), a re-ranker of the top 300 NMS survivors (logistic and trees, with
     the first-stage score and rank as features), a one-hidden-layer MLP;
  5. box refinement: ridge regression of the annotated box's edges from the
     features (fit_weights.py fit_boxreg), half the predicted shift applied to
     every candidate before the selection, in both directions (fit on train2017,
     report val2017, and the reverse);
  6. selective search's own kind of diversity: round robin over the strategies
     (the committed score ranks within each), blended with the global rank;
  7. edge snapping: each edge of the selected boxes moves, within +-5-20 % of
     the box's side, to the line of strongest gradient (grey photo at 256 px,
     Pillow), if that is stronger than where it is by a factor.
"""
import os
import sys

os.environ.setdefault("FIT_COLS", "0-35")  # the 26 scored features + the 10 cues under evaluation
import numpy as np

from bench.regions import fit_weights as fw

NSCORED = 26
# The committed score (encoder/enc_proposals.c WEIGHTS).
W0 = np.array([0.0000, 0.4225, 0.0017, 1.1887, 0.4750, -0.7359, 1.4712, 0.1680, -1.3153, -0.8949, 0.2146,
               0.0175, 0.2049, 0.2393, -0.7902, -0.5691, 0.0375, -0.5249, 0.4377, 1.0563, 0.6449, 0.2580,
               0.0540, 0.3365, -0.2289, -0.2324])
EXTRA = ["saliency in box", "saliency box - ring", "saliency mass - area", "orientation contrast",
         "colour distinctness vs photo", "|cx - 0.5|", "cy", "|cy - 0.5|", "compactness",
         "boundary / box perimeter"]


def load(dump, coco):
    gt, sizes = fw.load_gt(coco)
    photos = []
    for name, r in fw.load_dump(dump):
        if name not in gt:
            continue
        p = fw.Photo(name, r, gt[name], sizes[name])
        p.iou = fw.iou(p.box0, p.gt).max(1) if len(p.gt) else np.zeros(len(r))
        photos.append(p)
    return photos, [p for p in photos if p.name.startswith("train")], [p for p in photos if p.name.startswith("val")]


def rec(ph, scores):
    return fw.recall(ph, np.ones(1), X=[np.asarray(s)[:, None] for s in scores])


def fmt(r):
    return " / ".join("%.3f" % r[k] for k in fw.RS)


def report(tag, tr, va, f):
    print("%-58s train %s   val %s" % (tag, fmt(rec(tr, [f(p) for p in tr])), fmt(rec(va, [f(p) for p in va]))),
          flush=True)


def committed(p):
    return p.F[:, :NSCORED] @ W0


def object_weights(hit):
    """each object's positives weigh 1 in total, a photo's negatives as much as its objects"""
    w, y = np.zeros(len(hit)), hit.any(1)
    for o in range(hit.shape[1]):
        m = hit[:, o]
        if m.any():
            w[m] = np.maximum(w[m], 1.0 / m.sum())
    w[~y] = hit.shape[1] / max((~y).sum(), 1)
    return w / max(w.mean(), 1e-12), y


class GBT:
    """Gradient-boosted regression trees (squared loss, histogram splits)."""

    def __init__(self, depth=2, ntrees=150, lr=0.1, minleaf=500, lam=10.0, sub=0.7, nbins=32, seed=0):
        self.depth, self.ntrees, self.lr, self.minleaf, self.lam = depth, ntrees, lr, minleaf, lam
        self.sub, self.nbins, self.seed = sub, nbins, seed

    def _bin(self, X):
        return np.stack([np.searchsorted(e, X[:, k], side="right") for k, e in enumerate(self.edges)], 1)

    def _route(self, B, tree):
        node = np.zeros(len(B), np.int64)
        for splits in tree:
            nxt = node * 2
            for j, (k, b) in enumerate(splits):
                if k >= 0:
                    nxt[(node == j) & (B[:, k] > b)] += 1
            node = nxt
        return node

    def fit(self, X, y, w=None):
        n, d = X.shape
        w = np.ones(n) if w is None else w
        q = np.linspace(0, 1, self.nbins + 1)[1:-1]
        self.edges = [np.unique(np.quantile(X[:, k], q)) for k in range(d)]
        B = self._bin(X)
        nb = self.nbins
        BI = (B + np.arange(d)[None, :] * nb).ravel()
        self.base = np.average(y, weights=w)
        F = np.full(n, self.base)
        self.trees = []
        rng = np.random.RandomState(self.seed)
        for _ in range(self.ntrees):
            m = rng.rand(n) < self.sub
            g, h = (F - y) * w * m, w * m
            node = np.zeros(n, np.int64)
            tree = []
            for lev in range(self.depth):
                splits = []
                for j in range(2 ** lev):
                    sel = node == j
                    if sel.sum() < 2 * self.minleaf:
                        splits.append((-1, 0))
                        continue
                    rows = np.repeat(sel, d)
                    G = np.bincount(BI[rows], np.repeat(g[sel], d), d * nb).reshape(d, nb).cumsum(1)
                    H = np.bincount(BI[rows], np.repeat(h[sel], d), d * nb).reshape(d, nb).cumsum(1)
                    C = np.bincount(BI[rows], None, d * nb).reshape(d, nb).cumsum(1)
                    gain = G ** 2 / (H + self.lam) + (G[:, -1:] - G) ** 2 / (H[:, -1:] - H + self.lam)
                    gain[(C < self.minleaf) | (C[:, -1:] - C < self.minleaf)] = -np.inf
                    k, b = np.unravel_index(np.argmax(gain), gain.shape)
                    ok = gain[k, b] > G[k, -1] ** 2 / (H[k, -1] + self.lam)
                    splits.append((k, b) if ok else (-1, 0))
                tree.append(splits)
                node = self._route(B, tree)
            L = 2 ** self.depth
            leaf = -np.bincount(node, g, L) / (np.bincount(node, h, L) + self.lam) * self.lr
            self.trees.append((tree, leaf))
            F += leaf[node]
        return self

    def predict(self, X):
        B = self._bin(X)
        F = np.full(len(X), self.base)
        for tree, leaf in self.trees:
            F += leaf[self._route(B, tree)]
        return F


def mlp(X, y, w, hidden=16, l2=1e-3, epochs=300, lr=3e-3, seed=0):
    """One hidden layer (ReLU), weighted logistic loss, full-batch Adam."""
    rng = np.random.RandomState(seed)
    d = X.shape[1]
    P = [rng.randn(d, hidden) / np.sqrt(d), np.zeros(hidden), rng.randn(hidden) / np.sqrt(hidden), np.zeros(1)]
    M = [np.zeros_like(p) for p in P]
    V = [np.zeros_like(p) for p in P]
    for t in range(1, epochs + 1):
        Z = X @ P[0] + P[1]
        A = np.maximum(Z, 0)
        o = A @ P[2] + P[3]
        dz = w * (1 / (1 + np.exp(-o)) - y) / len(y)
        dA = np.outer(dz, P[2]) * (Z > 0)
        grads = [X.T @ dA + l2 * P[0], dA.sum(0), A.T @ dz + l2 * P[2], np.array([dz.sum()])]
        for i, g in enumerate(grads):
            M[i] = 0.9 * M[i] + 0.1 * g
            V[i] = 0.999 * V[i] + 0.001 * g * g
            P[i] -= lr * (M[i] / (1 - 0.9 ** t)) / (np.sqrt(V[i] / (1 - 0.999 ** t)) + 1e-8)
    return lambda Xn: np.maximum(Xn @ P[0] + P[1], 0) @ P[2] + P[3]


def auc_within(ph, k):
    a = []
    for p in ph:
        y = p.hit.any(1)
        if y.all() or not y.any():
            continue
        r = np.argsort(np.argsort(p.F[:, k], kind="stable")) + 1
        a.append((r[y].sum() - y.sum() * (y.sum() + 1) / 2) / (y.sum() * (~y).sum()))
    return np.mean(a)


def survivors(p, K):
    """the top K NMS survivors of the committed score, as a photo of their own"""
    import copy
    keep = np.array(p.nms(committed(p), K))
    q = copy.copy(p)
    q.F, q.hit, q.ok, q.iou = p.F[keep], p.hit[keep], p.ok[keep], p.iou[keep]
    q.sup = [np.array([], int)] * len(keep)  # mutually below the NMS threshold already
    q.tail_dup, q.win_dup = p.tail_dup[keep], p.win_dup[:, keep]
    q.s1, q.rank = committed(p)[keep], np.arange(len(keep))
    return q


def main():
    photos, tr, va = load(sys.argv[1], sys.argv[2])
    print("%d photos, %.0f candidates per photo; recall R = 16 / 32 / 64 (boxes >= 32x32, IoU 0.5)\n"
          % (len(photos), np.mean([len(p.F) for p in photos])))
    report("committed score (linear, recall search)", tr, va, committed)

    print("\n1. upper bounds")
    for nm, ph in (("train", tr), ("val", va), ("all", photos)):
        pool = sum(p.hit.any(0).sum() for p in ph) / sum(p.hit.shape[1] for p in ph)
        print("  %-5s pool %.3f, oracle ranking through the selection %s" % (nm, pool, fmt(rec(ph, [p.iou for p in ph]))))
    for K in (150, 300):
        s = {nm: [survivors(p, K) for p in ph] for nm, ph in (("train", tr), ("val", va))}
        print("  oracle re-ranking of the top %d NMS survivors: train %s   val %s"
              % (K, fmt(rec(s["train"], [q.iou for q in s["train"]])), fmt(rec(s["val"], [q.iou for q in s["val"]]))))

    print("\n2. slots of the committed selection (val2017): hit nothing / a new object / an object already hit")
    for R in (32, 64):
        st = np.zeros(3)
        for p in va:
            seen = np.zeros(p.hit.shape[1], bool)
            for row in p.hit[p.nms(committed(p), R)[:R - fw.NWIN]]:
                st[0 if not row.any() else (1 if (row & ~seen).any() else 2)] += 1
                seen |= row
        print("  R=%d: %.3f / %.3f / %.3f" % ((R,) + tuple(st / st.sum())))

    print("\n3. best IoU of each object with the selected boxes (val2017)")
    for R in (32, 64):
        io = np.concatenate([fw.iou(p.box0[p.nms(committed(p), R)[:R - fw.NWIN]], p.gt).max(0) for p in va if len(p.gt)])
        print("  R=%d: >= 0.5 %.3f, 0.4-0.5 %.3f, 0.3-0.4 %.3f, < 0.3 %.3f" % (
            R, (io >= .5).mean(), ((io >= .4) & (io < .5)).mean(), ((io >= .3) & (io < .4)).mean(), (io < .3).mean()))

    print("\n4. richer rankers (within-photo ROC AUC of positives against negatives for the new cues first)")
    for k, name in enumerate(EXTRA):
        print("  %-30s AUC train %.3f val %.3f" % (name, auc_within(tr, NSCORED + k), auc_within(va, NSCORED + k)))
    X = np.concatenate([p.F for p in tr])
    io = np.concatenate([p.iou for p in tr])
    wt, y = map(np.concatenate, zip(*[object_weights(p.hit) for p in tr]))
    for cols, cname in ((slice(0, NSCORED), "26 features"), (slice(None), "36 features")):
        for tgt, yy, ww in (("IoU, unweighted", io, None), ("IoU, per-object weights", io, wt),
                            ("IoU>=0.5, per-object weights", y * 1.0, wt)):
            for depth, nt in ((2, 150), (3, 150)):
                m = GBT(depth=depth, ntrees=nt).fit(X[:, cols], yy, ww)
                report("  trees depth %d x %d, %s, %s" % (depth, nt, tgt, cname), tr, va,
                       lambda p: m.predict(p.F[:, cols]))
    mu, sd = X.mean(0), X.std(0) + 1e-9
    for hidden, l2 in ((8, 1e-3), (16, 1e-2)):
        f = mlp((X - mu) / sd, y * 1.0, wt, hidden, l2)
        report("  MLP %d hidden, l2 %g, 36 features" % (hidden, l2), tr, va, lambda p: f((p.F - mu) / sd))
    s = {nm: [survivors(p, 300) for p in ph] for nm, ph in (("train", tr), ("val", va))}

    def design(q):
        return np.column_stack([q.F, q.s1, np.log1p(q.rank)])
    X2 = np.concatenate([design(q) for q in s["train"]])
    w2, y2 = map(np.concatenate, zip(*[object_weights(q.hit) for q in s["train"]]))
    for depth in (2, 3):
        m = GBT(depth=depth, ntrees=100, minleaf=200).fit(X2, y2 * 1.0, w2)
        report("  re-rank top 300 survivors: trees depth %d, binary" % depth, s["train"], s["val"],
               lambda q: m.predict(design(q)))
    mu2, sd2 = X2.mean(0), X2.std(0) + 1e-9
    f = mlp((X2 - mu2) / sd2, y2 * 1.0, w2, 8, 1e-2)
    report("  re-rank top 300 survivors: MLP 8 hidden", s["train"], s["val"], lambda q: f((design(q) - mu2) / sd2))

    print("\n5. box refinement (26 scored features, ridge, half the predicted shift)")
    scored = [fw.Photo(p.name, p.raw, p.gt, p.size) for p in photos]
    for p in scored:
        p.F = p.F[:, :NSCORED]
    str_, sva = [p for p in scored if p.name.startswith("train")], [p for p in scored if p.name.startswith("val")]
    for fit_on, a, b in (("train2017", str_, sva), ("val2017", sva, str_)):
        A = fw.fit_boxreg(a)
        ra = [fw.Photo(p.name, p.raw, p.gt, p.size, A) for p in a]
        rb = [fw.Photo(p.name, p.raw, p.gt, p.size, A) for p in b]
        for q in ra + rb:
            q.F = q.F[:, :NSCORED]
        print("  fitted on %s: fitted-on half %s -> %s; other half %s -> %s" % (
            fit_on, fmt(fw.recall(a, W0)), fmt(fw.recall(ra, W0)), fmt(fw.recall(b, W0)), fmt(fw.recall(rb, W0))),
            flush=True)

    print("\n6. round robin over strategies (key = a x rank within the strategy + (1 - a) x global rank / 5)")
    for a in (0.5, 1.0):
        report("  a = %g" % a, tr, va, lambda p: strategy_round_robin(p, a))

    print("\n7. edge snapping of the selected boxes (windows left out of both arms)")
    coco = sys.argv[2]
    for p in photos:
        p.grad = gradient_map(coco, p.name)
    for frac, gain in ((0, 0), (0.05, 1.0), (0.1, 1.0), (0.1, 1.5), (0.2, 1.5)):
        print("  +-%.2f of the side, gain %.1f: " % (frac, gain) + "  ".join(
            "%s R=%d %.3f" % (nm, R, snapped_recall(ph, frac, gain, R))
            for nm, ph in (("train", tr), ("val", va)) for R in (32, 64)), flush=True)


SNAP_SIDE = 256


def gradient_map(coco, name):
    from PIL import Image
    im = Image.open("%s/%s" % (coco, name)).convert("L")
    W, H = im.size
    s = SNAP_SIDE / max(W, H)
    g = np.asarray(im.resize((max(1, round(W * s)), max(1, round(H * s))), Image.BILINEAR), float)
    gx, gy = np.zeros_like(g), np.zeros_like(g)
    gx[:, 1:-1] = g[:, 2:] - g[:, :-2]
    gy[1:-1] = g[2:] - g[:-2]
    return np.abs(gx), np.abs(gy), s


def snap(b, gx, gy, s, frac, gain):
    x0, y0, x1, y1 = [v * s for v in b]
    h, w = gx.shape
    out = [x0, y0, x1, y1]
    ya, yb = int(max(0, y0)), int(min(h, max(y1, y0 + 1)))
    xa, xb = int(max(0, x0)), int(min(w, max(x1, x0 + 1)))
    for k in range(4):
        vert = k in (0, 2)
        r = max(1, int(frac * ((x1 - x0) if vert else (y1 - y0))))
        ci = int(round(out[k]))
        best, cur = None, 0
        for d in range(-r, r + 1):
            q = ci + d
            if q < 0 or q >= (w if vert else h):
                continue
            v = (gx[ya:yb, q].mean() if yb > ya else 0) if vert else (gy[q, xa:xb].mean() if xb > xa else 0)
            if d == 0:
                cur = v
            if best is None or v > best[0]:
                best = (v, q)
        if best and best[0] > gain * cur + 1e-9:
            out[k] = best[1] + (0.5 if k >= 2 else 0)
    return [v / s for v in out]


def snapped_recall(ph, frac, gain, R):
    hit = tot = 0
    for p in ph:
        b = p.box0[p.nms(committed(p), R)[:R - fw.NWIN]]
        if frac > 0:
            b = np.array([snap(x, *p.grad, frac, gain) for x in b])
        if len(p.gt):
            hit += (fw.iou(b, p.gt) >= 0.5).any(0).sum()
            tot += len(p.gt)
    return hit / tot


def strategy_round_robin(p, a):
    s = committed(p)
    # strategies 0-3 have one-hot features 15-18; 4 and 5 (none set) form the fifth group
    g = np.argmax(np.column_stack([p.F[:, 15:19], 0.5 * np.ones(len(s))]), 1)
    within = np.zeros(len(s))
    for k in range(5):
        m = np.flatnonzero(g == k)
        within[m[np.argsort(-s[m], kind="stable")]] = np.arange(len(m))
    glob = np.empty(len(s))
    glob[np.argsort(-s, kind="stable")] = np.arange(len(s))
    return -(a * within + (1 - a) * glob / 5)


if __name__ == "__main__":
    main()
