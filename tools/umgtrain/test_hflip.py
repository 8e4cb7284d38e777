"""Self-check of the mirror augmentation (data.hflip_item, train.py --hflip): a mirrored
item must be the photo of the mirrored world, i.e. what preparing the mirrored photo
from scratch gives: its boxes pool the mirrored cells, its cell labels are those of
the mirrored masks, its pixels are the mirrored photo's fit-padded pixels, and its
caption reads the objects in the mirrored left-to-right order.

    /usr/bin/python3 -m tools.umgtrain.test_hflip
"""
import numpy as np
from PIL import ImageOps

from tools.synthworld import world
from tools.umgclip.preprocess import fit_pad_uint8
from tools.umgtrain import data

SIZE, PATCH = 160, 16
G = SIZE // PATCH


def check_photo(seed, index):
    it = data.prepare_one((seed, index, SIZE, PATCH))
    fl = data.hflip_item(it, SIZE, PATCH)
    img, objs = world.render(seed, index)
    mir = ImageOps.mirror(img)
    w = it["width"]

    # pixels: the mirrored photo fit-padded, at the mirrored offset
    u8, geom = fit_pad_uint8(mir, SIZE)
    x0 = fl["geom"]["off_x"]
    y0 = geom["off_y"]
    got = fl["canvas"][y0:y0 + geom["resized_h"], x0:x0 + geom["resized_w"]].astype(np.int16)
    assert abs(x0 - geom["off_x"]) <= 1, "mirrored offset more than a pixel from the centred one"
    diff = np.abs(got - u8.astype(np.int16))
    # the canvas was decoded from JPEG/PNG bytes, the mirror is of the rendered pixels
    assert diff.mean() < 2.5, "mirrored pixels differ from the mirrored photo's: %.2f" % diff.mean()

    # boxes: every object's mirrored box is the box of its mirrored mask
    for o, m in zip(fl["objects"], objs):
        ys, xs = np.nonzero(m["mask"][:, ::-1])
        want = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
        assert o["box"] == want, (o["box"], want)

    # pooling: a box in the mirrored item weighs the mirrored cells
    boxes = [o["box"] for o in it["objects"]] + [[3.5, 7.25, 40.0, 21.5], [0, 0, w, it["height"]]]
    a = data.weight_matrix_np(boxes, it["geom"], PATCH, G).reshape(-1, G, G)[:, :, ::-1]
    b = data.weight_matrix_np(data.hflip_boxes(boxes, w), fl["geom"], PATCH, G).reshape(-1, G, G)
    assert np.abs(a - b).max() < 1e-5, np.abs(a - b).max()
    n = len(fl["objects"])  # the stored rows (objects, then the background box) follow too
    want_w = data.weight_matrix_np([o["box"] for o in fl["objects"]], fl["geom"], PATCH, G)
    assert np.abs(fl["weights"][:n] - want_w).max() < 1e-5

    # cell labels: from the mirrored masks with the mirrored geometry, as prepare_one labels them
    want = data.cell_classes(data.cell_labels([m["mask"][:, ::-1] for m in objs], fl["geom"], SIZE, PATCH),
                             [m["phrase"] for m in objs])
    agree = (want == fl["pix_cls"]).mean()
    # the mask's bilinear resize is not exactly mirror-symmetric at cell thresholds
    assert agree >= 0.97, "cell labels agree on %.2f only" % agree

    # the network input the training uses (train.py --bf16 1), where torch is installed
    try:
        import torch  # noqa: F401
    except ImportError:
        torch = None
    if torch is not None:
        data.attach_bf16_pixels([it])
        fl = data.hflip_item(it, SIZE, PATCH)
        assert torch.equal(fl["px_bf16"], data.to_pixels_fast([fl])[0].to(torch.bfloat16)), \
            "mirrored bf16 input differs from the mirrored canvas's"

    # caption: the mirrored world's reading order
    mobjs = [dict(m, cx=w - m["cx"]) for m in objs]
    assert fl["caption"] == world.caption(mobjs)
    return it, fl


def main():
    swapped = 0
    for index in range(12):
        it, fl = check_photo(7, index)
        if len(it["objects"]) >= 2 and it["caption"] != fl["caption"]:
            swapped += 1
            order = sorted(it["objects"], key=lambda o: o["cx"])
            assert fl["caption"].startswith("a " + order[-1]["phrase"]), (it["caption"], fl["caption"])
    assert swapped >= 3, "too few photos whose caption changed under the mirror"
    print("12 photos mirrored; %d captions reordered" % swapped)


if __name__ == "__main__":
    main()
