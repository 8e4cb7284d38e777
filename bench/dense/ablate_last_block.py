"""ablate_last_block.py - where a checkpoint's region meaning sits in its last
vision block: own-phrase top-1 of the annotated boxes of the synthetic world's
held-out photos (as tools/umgtrain/validate.py computes it) with the patch
tokens taken from parts of the last block (tools/umgclip/model.py).

    /usr/bin/python3 -m bench.dense.ablate_last_block [--model tests/fixtures/synth-umg]
        [--seed 1000] [--count 200]

Rows: the standard block; ClearCLIP (q-q attention alone); q-q attention plus
the residual (with and without the MLP); the standard q-k attention alone; the
residual stream alone (the block's input).  docs/regions.md, "Dense feature
variants".
"""
import argparse
import os

import torch
import torch.nn.functional as F

from tools.umgclip.model import load_clip
from tools.umgclip.tokenizer import Tokenizer
from tools.umgtrain import data

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=os.path.join(ROOT, "tests/fixtures/synth-umg"))
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--count", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    m = load_clip(args.model)
    vc = m.config["vision_config"]
    tok = Tokenizer(args.model)
    items = data.prepare(args.seed, args.count, vc["image_size"], vc["patch_size"], procs=2)
    full = data.full_phrases()
    with torch.no_grad():
        te = F.normalize(torch.cat([m.encode_text(torch.tensor([tok.tokenize(t)])) for t in full]), dim=-1)
        vm = m.vision_model
        x = vm.pre_layrnorm(vm.embeddings(data.to_pixels(items)))
        for layer in vm.encoder.layers[:-1]:
            x = layer(x)
        last = vm.encoder.layers[-1]
        a_qq = last.self_attn.forward_dense(last.layer_norm1(x), "clearclip")
        with_res = x + a_qq
        rows = [
            ("standard block (plain)", last(x)),
            ("q-q attention alone (ClearCLIP)", a_qq),
            ("q-q attention + residual, no MLP", with_res),
            ("q-q attention + residual + MLP", with_res + last.mlp(last.layer_norm2(with_res))),
            ("q-k attention alone", last.self_attn(last.layer_norm1(x))),
            ("residual stream alone (block input)", x),
        ]
        for name, h in rows:
            p = F.normalize(m.visual_projection(vm.post_layernorm(h))[:, 1:], dim=-1)
            ok = n = 0
            for it, pn in zip(items, p):
                r = F.normalize(torch.from_numpy(it["weights"]) @ pn, dim=-1)
                for k, o in enumerate(it["objects"]):
                    n += 1
                    ok += full[int((r[k] @ te.t()).argmax())] == o["phrase"]
            print("%-38s own-phrase top-1 %.3f (%d objects)" % (name, ok / n, n))


if __name__ == "__main__":
    main()
