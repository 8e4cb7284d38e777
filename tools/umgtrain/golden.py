"""Writes tests/fixtures/pooling/golden.json from pooling.py (the one definition of
dense region pooling), for the C test of enc_region_pool.

    /usr/bin/python3 -m tools.umgtrain.golden tests/fixtures/pooling/golden.json
"""
import json
import sys

import numpy as np

from tools.umgclip.preprocess import crop_geometry, pad_geometry
from tools.umgtrain import pooling


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/pooling/golden.json"
    rng = np.random.default_rng(20261130)
    # (grid, dim, patch, geometry, box, what it exercises)
    specs = [
        (7, 8, 32, pad_geometry(640, 480, 224), [100, 80, 200, 150], "landscape pad, interior box"),
        (7, 8, 32, pad_geometry(640, 480, 224), [0, 0, 640, 480], "whole image (pad rows excluded)"),
        (12, 16, 16, pad_geometry(300, 450, 192), [-50, -30, 120, 100], "portrait, box partly outside top-left"),
        (12, 16, 16, pad_geometry(300, 450, 192), [250, 400, 200, 200], "box partly outside bottom-right"),
        (12, 16, 16, pad_geometry(480, 160, 192), [17.5, 33.25, 3, 2], "tiny box inside one cell, 3:1 image"),
        (12, 16, 16, pad_geometry(480, 160, 192), [79, 0, 2, 160], "thin vertical box across rows"),
        (10, 12, 16, pad_geometry(160, 160, 160), [40, 40, 80, 80], "square, box on cell borders"),
        (14, 8, 16, crop_geometry(500, 333, 224), [0, 0, 500, 333], "crop geometry, negative offset, whole image"),
        (14, 8, 16, crop_geometry(500, 333, 224), [60, 100, 60, 50], "crop geometry, box cut by the crop"),
        (3, 5, 10, {"resized_w": 30, "resized_h": 20, "off_x": 0, "off_y": 5, "scale_x": 0.25,
                    "scale_y": 0.25, "input_w": 30, "input_h": 30}, [13, 7, 50, 41], "hand-made geometry with exact scales"),
        (12, 16, 16, pad_geometry(233, 377, 192), [0, 0, 233, 377], "odd sizes, whole image"),
    ]
    cases = []
    for grid, dim, patch, geom, box, note in specs:
        patches = rng.standard_normal((grid * grid, dim)).astype(np.float32)
        patches[0] *= 5.0  # unequal norms: normalization before pooling matters
        expected = pooling.pool_region(patches, box, geom, patch, grid)
        cases.append({"note": note, "grid": grid, "dim": dim, "patch_size": patch, "geom": geom,
                      "patches": [[float(v) for v in row] for row in patches],
                      "box": box, "expected": [round(float(v), 9) for v in expected]})
    with open(out, "w") as f:
        json.dump({"definition": "tools/umgtrain/pooling.py", "tolerance": 1e-5, "cases": cases}, f)
        f.write("\n")


if __name__ == "__main__":
    main()
