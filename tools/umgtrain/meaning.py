"""Checks of meaning: score a search system's answers on a held-out synthetic world.

    /usr/bin/python3 -m tools.umgtrain.meaning queries ANNOTATIONS.json > queries.json
        the queries to run: every photo's caption (granularity "image"), every
        full phrase present ("small red circle") and every colour+shape phrase
        present ("red circle") (granularity "region").
    /usr/bin/python3 -m tools.umgtrain.meaning score ANNOTATIONS.json RESULTS.json [--json]
        RESULTS.json: [{"text", "granularity", "hits": [{"path", "score", "box"?}]}]
        (hits as the server's query op returns them, best first; a hit's photo is
        found by the base name of its path).  Prints the figures.

Definitions (docs/synth.md):
  recall@K      a caption query is a hit when one of its first K hits is a photo
                whose caption is identical to the query (identical captions are
                the same description, so either photo is right);
  region IoU    for a full-phrase query, the top hit's box has IoU >= 0.5 with the
                box of an object of that phrase in that photo;
  binding fail  for a "colour shape" query: some hit whose box matches (IoU >= 0.5)
                an object of the same colour and another shape, or the same shape
                and another colour, ranks above every hit that matches an object
                of that colour and shape (also a failure when no such hit exists).
"""

import argparse
import json
import os
import sys


def iou(a, b):
    ax1, ay1, bx1, by1 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax1, bx1) - max(a[0], b[0]))
    ih = max(0.0, min(ay1, by1) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def _short(o):
    return "%s %s" % (o["colour"], o["shape"])


def make_queries(ann):
    q = [{"text": im["caption"], "granularity": "image"} for im in ann["images"]]
    full = sorted({o["phrase"] for im in ann["images"] for o in im["objects"]})
    short = sorted({_short(o) for im in ann["images"] for o in im["objects"]})
    q += [{"text": p, "granularity": "region", "kind": "phrase"} for p in full]
    q += [{"text": p, "granularity": "region", "kind": "binding"} for p in short]
    return q


def _matched(hit, by_file, iou_min=0.5):
    """The annotated objects of the hit's photo whose box the hit's box matches."""
    im = by_file.get(os.path.basename(hit["path"]))
    if im is None or "box" not in hit:
        return []
    return [o for o in im["objects"] if iou(hit["box"], o["box"]) >= iou_min]


def score(ann, results):
    by_file = {im["file"]: im for im in ann["images"]}
    caption_of = {im["file"]: im["caption"] for im in ann["images"]}
    r1 = r5 = n_img = 0
    n_phr = ok_phr = 0
    n_bind = fail_bind = 0
    failures = []
    for r in results:
        text, hits = r["text"], r.get("hits", [])
        if r["granularity"] == "image":
            n_img += 1
            right = [caption_of.get(os.path.basename(h["path"])) == text for h in hits]
            r1 += any(right[:1])
            r5 += any(right[:5])
            continue
        parts = text.split()
        if len(parts) == 3:  # full phrase: top box must be an object of this phrase
            n_phr += 1
            good = bool(hits) and any(o["phrase"] == text for o in _matched(hits[0], by_file))
            ok_phr += good
            if not good:
                failures.append(("region", text, hits[0] if hits else None))
        elif len(parts) == 2:  # colour shape: attribute binding
            colour, shape = parts
            n_bind += 1
            failed = True
            for h in hits:
                objs = _matched(h, by_file)
                if any(o["colour"] == colour and o["shape"] == shape for o in objs):
                    failed = False
                    break
                if any((o["colour"] == colour) != (o["shape"] == shape) for o in objs):
                    break
            fail_bind += failed
            if failed:
                failures.append(("binding", text, hits[0] if hits else None))
    out = {
        "image_queries": n_img,
        "recall@1": r1 / n_img if n_img else None,
        "recall@5": r5 / n_img if n_img else None,
        "region_queries": n_phr,
        "region_top_iou50": ok_phr / n_phr if n_phr else None,
        "binding_queries": n_bind,
        "binding_failure_rate": fail_bind / n_bind if n_bind else None,
    }
    return out, failures


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("queries")
    q.add_argument("annotations")
    s = sub.add_parser("score")
    s.add_argument("annotations")
    s.add_argument("results")
    s.add_argument("--json", action="store_true")
    a = ap.parse_args()
    with open(a.annotations) as f:
        ann = json.load(f)
    if a.cmd == "queries":
        json.dump(make_queries(ann), sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    with open(a.results) as f:
        results = json.load(f)
    out, failures = score(ann, results)
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print("%-22s %s" % (k, "%.3f" % v if isinstance(v, float) else v))
        for kind, text, top in failures[:20]:
            print("  %s miss: %r top=%s" % (kind, text, top))


if __name__ == "__main__":
    main()
