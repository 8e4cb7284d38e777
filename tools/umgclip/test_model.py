"""Self-check of tools/umgclip/model.py (needs python3-torch: skipped without it).

    /usr/bin/python3 -m tools.umgclip.test_model

- the model reproduces tests/fixtures/clip-tiny/reference.json (the reference
  CLIP's image, patch and text embeddings: cosine >= 0.99999, max|d|/|ref| <= 1e-4);
- encode_ids (ragged lists, pooled at each list's last position: the training's
  path) gives what encode_text (end-token pooling) gives;
- the dense variants (and larger inputs, positions resized) reproduce
  tests/fixtures/dense-variants/golden.json (max|d| <= 1e-5 of the vector's
  largest value: regenerated on another CPU the golden differs by ~1e-6) and
  never change the image embedding;
- save_weights + load_clip round trip (F32 exactly, F16 rounded), and load_clip
  refuses a checkpoint that lacks a tensor or has one CLIPModel does not.
"""
import json
import os
import sys
import tempfile

from tools.testing import require

torch = require("torch", "python3-torch")
import numpy as np  # noqa: E402

from PIL import Image  # noqa: E402

from tools.umgclip import config  # noqa: E402
from tools.umgclip import preprocess  # noqa: E402
from tools.umgclip import safetensors  # noqa: E402
from tools.umgclip.model import CLIP, check_reference, load_clip, save_weights  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "tests", "fixtures", "clip-tiny")


def check_pooling(model):
    with open(os.path.join(TINY, "reference.json"), encoding="utf-8") as f:
        ids = [t["ids"] for t in json.load(f)["texts"]]
    assert len({len(x) for x in ids}) > 1, "the check needs texts of different lengths"
    with torch.no_grad():
        ragged = model.encode_ids(ids)
        one_by_one = torch.cat([model.encode_text(torch.tensor([x])) for x in ids])
    diff = float((ragged - one_by_one).abs().max())
    assert diff < 1e-5, "encode_ids differs from encode_text by %g" % diff


def check_dense(model):
    """The golden cases of tools/dense_variants_golden.py, recomputed."""
    with open(os.path.join(ROOT, "tests", "fixtures", "dense-variants", "golden.json")) as f:
        cases = json.load(f)["cases"]
    worst = 0.0
    with torch.no_grad():
        for c in cases:
            with Image.open(os.path.join(TINY, "images", c["image"])) as im:
                pixels = torch.from_numpy(preprocess.fit_pad(im, c["input_size"])[0][None])
            emb, patches = model.encode_image(pixels, dense=c["mode"])
            plain, _ = model.encode_image(pixels)
            assert torch.equal(emb, plain), c["mode"] + " changed the image embedding"
            pairs = [(emb[0], c["embedding"])] + [(patches[0, i], want)
                                                   for i, want in zip(c["patch_index"], c["patches"])]
            for got, want in pairs:
                want = np.array(want)
                worst = max(worst, float(np.abs(got.numpy() - want).max() / np.abs(want).max()))
    assert worst <= 1e-5, "dense variants: max|d| %.2e of the largest value" % worst
    print("dense variants: %d golden cases, max|d| %.1e of the largest value" % (len(cases), worst))


def check_save_load(tmp):
    raw = {"projection_dim": 16,
           "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                           "num_attention_heads": 2},
           "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                             "num_attention_heads": 2, "image_size": 32, "patch_size": 16}}
    torch.manual_seed(0)
    model = CLIP(config.with_defaults(raw))
    state = model.state_dict()
    for dtype in ("F32", "F16"):
        d = os.path.join(tmp, dtype)
        os.makedirs(d)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(raw, f)
        save_weights(os.path.join(d, "model.safetensors"), state, dtype=dtype)
        back = load_clip(d).state_dict()
        for k, v in state.items():
            want = v if dtype == "F32" else v.half().float()
            assert torch.equal(back[k], want.reshape(back[k].shape)), (dtype, k)
    # a checkpoint without one tensor is refused, not loaded with a random one
    d = os.path.join(tmp, "F32")
    tensors = safetensors.read(os.path.join(d, "model.safetensors"))
    del tensors["text_projection.weight"]
    for label, extra in (("without text_projection.weight", {}),
                         ("with an extra tensor", {"text_projection.weight": state["text_projection.weight"],
                                                   "text_projection.bias": torch.zeros(16)})):
        tensors.update({k: v.numpy() for k, v in extra.items()})
        safetensors.write(os.path.join(d, "model.safetensors"), {k: ("F32", v) for k, v in tensors.items()})
        try:
            load_clip(d)
            raise AssertionError("load_clip accepted a checkpoint " + label)
        except ValueError:
            pass


def main():
    torch.set_num_threads(1)
    worst_cos, worst_rel = check_reference(TINY, os.path.join(TINY, "reference.json"))
    ok = worst_cos >= 0.99999 and worst_rel <= 1e-4
    print("clip-tiny reference: worst cosine %.8f, worst max|d|/|ref| %.2e: %s"
          % (worst_cos, worst_rel, "ok" if ok else "FAIL"))
    model = load_clip(TINY)
    check_pooling(model)
    check_dense(model)
    with tempfile.TemporaryDirectory() as tmp:
        check_save_load(tmp)
    print("pooling, dense variants, save/load: ok")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
