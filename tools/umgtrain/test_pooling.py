"""Self-check of the pooling definition's uses: the numpy path (which wrote
tests/fixtures/pooling/golden.json), the torch path and the batched weight
matrices the training uses (pooling.weight_matrix and data.weight_matrix_np)
must all give the committed golden vectors.  The weight matrices are checked
with numpy always and with torch too where torch is installed (CI has no torch:
there the torch path of pool_region is the one part left unchecked, and the
output says so).

    /usr/bin/python3 -m tools.umgtrain.test_pooling
"""
import json
import os
import sys

import numpy as np

from tools.umgtrain import data, pooling

HERE = os.path.dirname(os.path.abspath(__file__))

GOLDEN = os.path.join(HERE, "..", "..", "tests", "fixtures", "pooling", "golden.json")


def normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def main():
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        torch = None
    with open(GOLDEN) as f:
        cases = json.load(f)["cases"]
    worst = 0.0
    for c in cases:
        p = np.array(c["patches"], dtype=np.float32)
        want = np.array(c["expected"])
        pn = normalize(p.astype(np.float64))
        got = [pooling.pool_region(p, c["box"], c["geom"], c["patch_size"], c["grid"])]
        w = np.array(pooling.weight_matrix([c["box"]], c["geom"], c["patch_size"], c["grid"]), dtype=np.float64)
        got.append(normalize(w @ pn)[0])
        # the vectorized weights train.py pools its (proposal-like) boxes with
        wv = data.weight_matrix_np([c["box"]], c["geom"], c["patch_size"], c["grid"]).astype(np.float64)
        got.append(normalize(wv @ pn)[0])
        if torch is not None:
            pt = torch.from_numpy(p).double()
            got.append(pooling.pool_region(pt, c["box"], c["geom"], c["patch_size"], c["grid"]).numpy())
            got.append(F.normalize(torch.from_numpy(w) @ F.normalize(pt, dim=-1), dim=-1)[0].numpy())
            got.append(F.normalize(torch.from_numpy(wv) @ F.normalize(pt, dim=-1), dim=-1)[0].numpy())
        for g in got:
            worst = max(worst, float(np.abs(g - want).max()))
    try:
        pooling.pool_region(np.ones((4, 2)), [500, 500, 10, 10], cases[0]["geom"], 32, 2)
        raise SystemExit("a box outside the input must be refused")
    except ValueError:
        pass
    print("%d cases, max |diff| %.2e%s" % (len(cases), worst, "" if torch is not None else
                                            " (torch not installed: its path of pool_region not checked)"))
    sys.exit(0 if worst <= 1e-6 else 1)


if __name__ == "__main__":
    main()
