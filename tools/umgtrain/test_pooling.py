#!/usr/bin/python3
"""Self-check of the pooling definition's three uses: the numpy path (which wrote
tests/fixtures/pooling/golden.json), the torch path and the batched weight matrix
the training uses (pooling.weight_matrix and data.weight_matrix_np) must all give the committed golden vectors.

    tools/umgtrain/test_pooling.py
"""
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import pooling  # noqa: E402
import data  # noqa: E402

GOLDEN = os.path.join(HERE, "..", "..", "tests", "fixtures", "pooling", "golden.json")


def main():
    import torch
    import torch.nn.functional as F
    with open(GOLDEN) as f:
        cases = json.load(f)["cases"]
    worst = 0.0
    for c in cases:
        p = np.array(c["patches"], dtype=np.float32)
        want = np.array(c["expected"])
        a = pooling.pool_region(p, c["box"], c["geom"], c["patch_size"], c["grid"])
        b = pooling.pool_region(torch.from_numpy(p).double(), c["box"], c["geom"], c["patch_size"], c["grid"]).numpy()
        w = torch.tensor(pooling.weight_matrix([c["box"]], c["geom"], c["patch_size"], c["grid"]), dtype=torch.float64)
        t = F.normalize(w @ F.normalize(torch.from_numpy(p).double(), dim=-1), dim=-1)[0].numpy()
        # the vectorized weights train.py pools its (proposal-like) boxes with
        wv = torch.from_numpy(data.weight_matrix_np([c["box"]], c["geom"], c["patch_size"], c["grid"])).double()
        v = F.normalize(wv @ F.normalize(torch.from_numpy(p).double(), dim=-1), dim=-1)[0].numpy()
        for got in (a, b, t, v):
            worst = max(worst, float(np.abs(got - want).max()))
    try:
        pooling.pool_region(np.ones((4, 2)), [500, 500, 10, 10], cases[0]["geom"], 32, 2)
        raise SystemExit("a box outside the input must be refused")
    except ValueError:
        pass
    print("%d cases, max |diff| %.2e" % (len(cases), worst))
    sys.exit(0 if worst <= 1e-6 else 1)


if __name__ == "__main__":
    main()
