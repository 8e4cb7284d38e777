"""Dense region pooling: THE definition shared by training and the C server.

encoder/region code (enc_region_pool) implements the same arithmetic and is
tested against tests/fixtures/pooling/golden.json, which `golden.py` writes
from this file.

Inputs
  patches  [G*G, D]  projected patch tokens (post_layernorm + visual_projection
                     of every patch token), row-major over the G x G grid
  box      [x, y, w, h] in ORIGINAL image pixels
  geom     how the photo sits in the network input (enc_preproc_geom):
           x_in = x * scale_x + off_x,  y_in = y * scale_y + off_y
  patch_size P (input pixels per grid cell)

Steps
  x0 = x*scale_x + off_x, x1 = (x+w)*scale_x + off_x  (same for y)
  clip x0, x1 to [0, input_w] and y0, y1 to [0, input_h]; divide by P
  weight of cell (row i, col j) = overlap([x0,x1],[j,j+1]) * overlap([y0,y1],[i,i+1])
     with overlap([a,b],[c,d]) = max(0, min(b,d) - max(a,c))
  every patch token is L2-normalized first;
  region = sum(w * token_n) / sum(w), then L2-normalized.
  A box whose clipped area is zero (sum(w) == 0) has no region vector
  (ValueError here; UMG_EINVAL in C).

Works on numpy arrays and on torch tensors (differentiable w.r.t. patches).
"""

import math


def box_to_grid(box, geom, patch_size):
    """Box in original pixels -> (x0, x1, y0, y1) in grid units, clipped."""
    x, y, w, h = (float(v) for v in box)
    sx, sy = float(geom["scale_x"]), float(geom["scale_y"])
    ox, oy = float(geom["off_x"]), float(geom["off_y"])
    iw, ih = float(geom["input_w"]), float(geom["input_h"])
    x0 = min(max(x * sx + ox, 0.0), iw)
    x1 = min(max((x + w) * sx + ox, 0.0), iw)
    y0 = min(max(y * sy + oy, 0.0), ih)
    y1 = min(max((y + h) * sy + oy, 0.0), ih)
    p = float(patch_size)
    return x0 / p, x1 / p, y0 / p, y1 / p


def _overlap(a, b, c, d):
    return max(0.0, min(b, d) - max(a, c))


def cell_weights(box, geom, patch_size, grid):
    """Weights [grid*grid] (python floats, row-major) of the cells under box."""
    x0, x1, y0, y1 = box_to_grid(box, geom, patch_size)
    wx = [_overlap(x0, x1, j, j + 1) for j in range(grid)]
    wy = [_overlap(y0, y1, i, i + 1) for i in range(grid)]
    return [wy[i] * wx[j] for i in range(grid) for j in range(grid)]


def _is_torch(t):
    return type(t).__module__.startswith("torch")


def pool_region(patches, box, geom, patch_size, grid):
    """Region vector [D] of box; numpy in -> numpy out, torch in -> torch out."""
    w = cell_weights(box, geom, patch_size, grid)
    total = math.fsum(w)
    if not total > 0.0:
        raise ValueError("box %r covers no input pixels" % (list(box),))
    if _is_torch(patches):
        import torch
        wt = torch.tensor(w, dtype=patches.dtype, device=patches.device)
        tn = torch.nn.functional.normalize(patches, dim=-1)
        r = (wt[:, None] * tn).sum(0) / total
        return torch.nn.functional.normalize(r, dim=0)
    import numpy as np
    p = np.asarray(patches, dtype=np.float64)
    n = np.linalg.norm(p, axis=1, keepdims=True)
    tn = np.where(n > 0, p / np.where(n > 0, n, 1.0), 0.0)
    r = (np.asarray(w)[:, None] * tn).sum(0) / total
    rn = np.linalg.norm(r)
    return r / rn if rn > 0 else r


def weight_matrix(boxes, geom, patch_size, grid):
    """Normalized pooling weights [R, G*G] (rows sum to 1) as nested lists, for
    batched pooling in training: region = normalize(W @ normalize(patches))."""
    rows = []
    for b in boxes:
        w = cell_weights(b, geom, patch_size, grid)
        s = math.fsum(w)
        if not s > 0.0:
            raise ValueError("box %r covers no input pixels" % (list(b),))
        rows.append([v / s for v in w])
    return rows
