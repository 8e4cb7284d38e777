#!/usr/bin/python3
"""Convert a PyTorch state dict (pytorch_model.bin) to model.safetensors.

    tools/bin_to_safetensors.py pytorch_model.bin model.safetensors

Tensors keep their dtype (F32, F16, BF16); non-tensor entries are skipped.
Writes the safetensors layout umgdb reads: 8-byte little-endian header length,
JSON header {name: {dtype, shape, data_offsets}}, raw little-endian data.
"""
import json
import struct
import sys

import torch

DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32"}


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sd = torch.load(sys.argv[1], map_location="cpu")
    if "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    header, blobs, off = {}, [], 0
    for name in sorted(sd):
        t = sd[name]
        if not torch.is_tensor(t) or t.dtype not in DTYPES:
            continue
        t = t.contiguous()
        raw = t.view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)  # align the data section to 8 bytes
    with open(sys.argv[2], "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


if __name__ == "__main__":
    main()
