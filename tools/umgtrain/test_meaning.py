"""Self-check of meaning.py's scoring on hand-made answers with known figures.

    /usr/bin/python3 -m tools.umgtrain.test_meaning
"""
import sys

from tools.umgtrain import meaning

ANN = {"images": [
    {"file": "a.jpg", "caption": "a small red square", "objects": [
        {"phrase": "small red square", "box": [10, 10, 20, 20], "colour": "red", "shape": "square", "size": "small"}]},
    {"file": "b.png", "caption": "a large red circle to the left of a small blue square", "objects": [
        {"phrase": "large red circle", "box": [0, 0, 50, 50], "colour": "red", "shape": "circle", "size": "large"},
        {"phrase": "small blue square", "box": [60, 0, 20, 20], "colour": "blue", "shape": "square", "size": "small"}]},
    {"file": "c.jpg", "caption": "a small red square", "objects": [
        {"phrase": "small red square", "box": [5, 5, 20, 20], "colour": "red", "shape": "square", "size": "small"}]},
]}


def main():
    res = [
        # c.jpg has the same caption as a.jpg: right at rank 1
        {"text": "a small red square", "granularity": "image", "hits": [{"path": "/x/c.jpg"}, {"path": "a.jpg"}]},
        # right only at rank 2
        {"text": "a large red circle to the left of a small blue square", "granularity": "image",
         "hits": [{"path": "a.jpg"}, {"path": "dir/b.png"}]},
        # top box IoU 0.81 with the object: right
        {"text": "small red square", "granularity": "region", "hits": [{"path": "a.jpg", "box": [11, 11, 20, 20]}]},
        # top box on the wrong object: wrong
        {"text": "large red circle", "granularity": "region", "hits": [{"path": "b.png", "box": [60, 0, 20, 20]}]},
        # a blue square (same shape, other colour) above the red square: binding failure
        {"text": "red square", "granularity": "region",
         "hits": [{"path": "b.png", "box": [60, 0, 20, 20]}, {"path": "a.jpg", "box": [10, 10, 20, 20]}]},
        # a background box first, then the red circle: fine
        {"text": "red circle", "granularity": "region",
         "hits": [{"path": "a.jpg", "box": [40, 40, 5, 5]}, {"path": "b.png", "box": [0, 0, 50, 50]}]},
    ]
    out, _ = meaning.score(ANN, res)
    want = {"recall@1": 0.5, "recall@5": 1.0, "region_top_iou50": 0.5, "binding_failure_rate": 0.5}
    bad = {k: (out[k], v) for k, v in want.items() if abs(out[k] - v) > 1e-12}
    assert abs(meaning.iou([11, 11, 20, 20], [10, 10, 20, 20]) - 361 / 439) < 1e-12
    q = meaning.make_queries(ANN)
    assert sum(x["granularity"] == "image" for x in q) == 3
    assert {x["text"] for x in q if x.get("kind") == "binding"} == {"red square", "red circle", "blue square"}
    print("ok" if not bad else "FAILED %s" % bad)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
