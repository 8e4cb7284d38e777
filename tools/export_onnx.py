"""export_onnx.py - export a HF-layout CLIP checkpoint to ONNX, for the ONNX
Runtime peer of bench/encoder.

    /usr/bin/python3 -m tools.export_onnx MODEL_DIR OUT_DIR [--opset 17]

Writes, from tools/umgclip/model.py's model (float32):
  vision.onnx     pixel_values [N,3,S,S] (N dynamic) -> image_embeds [N,D]
  text77.onnx     input_ids [1,77] int64, padded after the end token, as users
                  of ONNX CLIP run it -> text_embeds [1,D]
  text_dyn.onnx   input_ids [1,L] int64, L dynamic (only the real tokens)
  export.json     what was exported and from which checkpoint, plus torch's
                  outputs for check inputs (check_pixels.f32: [2,3,S,S] float32
                  LE; check ids in the JSON) so that a runtime can verify that it
                  computes the same function before it is timed
Each export is checked with onnx.checker.  Re-running overwrites.

Uses Debian's python3-torch (1.13) and python3-onnx: run with /usr/bin/python3.
"""
import argparse
import json
import os
import sys
import warnings

import torch
from torch import nn

from tools.umgclip.model import load_clip


class VisionEmbeds(nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, pixel_values):
        # CLS token only: post_layernorm + projection of one row, as HF's
        # CLIPVisionModelWithProjection computes it (no patch-token work).
        v = self.clip.vision_model
        x = v.encoder(v.pre_layrnorm(v.embeddings(pixel_values)))
        return self.clip.visual_projection(v.post_layernorm(x[:, 0]))


class TextEmbeds(nn.Module):
    def __init__(self, clip):
        super().__init__()
        self.clip = clip

    def forward(self, input_ids):
        return self.clip.encode_text(input_ids)


def export(module, args, path, input_name, output_name, dynamic_axes, opset):
    torch.onnx.export(module, args, path, input_names=[input_name], output_names=[output_name],
                      dynamic_axes=dynamic_axes, opset_version=opset, do_constant_folding=True)
    import onnx
    onnx.checker.check_model(path)  # path form: works for models over 2 GB too


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model_dir")
    ap.add_argument("out_dir")
    ap.add_argument("--opset", type=int, default=17)
    args = ap.parse_args()
    torch.set_num_threads(2)
    os.makedirs(args.out_dir, exist_ok=True)
    clip = load_clip(args.model_dir)
    cfg = clip.config
    s = cfg["vision_config"]["image_size"]
    ctx = cfg["text_config"]["max_position_embeddings"]
    eos = cfg["text_config"]["eos_token_id"]

    # aten::index with arange/argmax indices (end-token pooling): never negative.
    warnings.filterwarnings("ignore", message=".*advanced indexing.*")
    with torch.no_grad():
        pixels = torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(7))
        export(VisionEmbeds(clip).eval(), (pixels,), os.path.join(args.out_dir, "vision.onnx"),
               "pixel_values", "image_embeds",
               {"pixel_values": {0: "batch"}, "image_embeds": {0: "batch"}}, args.opset)
        ids = torch.zeros(1, ctx, dtype=torch.int64)
        ids[0, :4] = torch.tensor([49406, 320, 1125, 49407])
        export(TextEmbeds(clip).eval(), (ids,), os.path.join(args.out_dir, "text77.onnx"),
               "input_ids", "text_embeds", None, args.opset)
        export(TextEmbeds(clip).eval(), (ids[:, :4].clone(),), os.path.join(args.out_dir, "text_dyn.onnx"),
               "input_ids", "text_embeds", {"input_ids": {1: "sequence"}}, args.opset)

        # Check data: image embeds of two pixel tensors, text embeds of one query
        # (a 9-token query; "a photo of a dog in the snow" in CLIP's vocabulary).
        pixels.numpy().astype("<f4").tofile(os.path.join(args.out_dir, "check_pixels.f32"))
        image_embeds = VisionEmbeds(clip)(pixels)
        q = [49406, 320, 1125, 539, 320, 1929, 530, 518, 2583, 49407]
        text_embed = clip.encode_text(torch.tensor([q]))[0]
        check = {"pixels": "check_pixels.f32", "pixels_shape": [2, 3, s, s],
                 "image_embeds": image_embeds.tolist(), "ids": q, "text_embed": text_embed.tolist()}

    meta = {"model_dir": os.path.abspath(args.model_dir), "opset": args.opset,
            "torch": torch.__version__, "image_size": s, "context_length": ctx,
            "projection_dim": cfg["projection_dim"],
            "files": {"vision.onnx": "pixel_values [N,3,S,S] -> image_embeds [N,D]",
                      "text77.onnx": "input_ids [1,77] (0-padded after the end token) -> text_embeds [1,D]",
                      "text_dyn.onnx": "input_ids [1,L] -> text_embeds [1,D]"},
            "check": check}
    with open(os.path.join(args.out_dir, "export.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(f"{args.out_dir}: vision.onnx text77.onnx text_dyn.onnx (opset {args.opset})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
