"""Convert a PyTorch state dict (pytorch_model.bin) to model.safetensors.

    /usr/bin/python3 -m tools.bin_to_safetensors pytorch_model.bin model.safetensors

Tensors keep their dtype (F32, F16, BF16, I64, I32); other entries are skipped.
Written by tools/umgclip/safetensors.py (the layout umgdb reads: 8-byte
little-endian header length, JSON header {name: {dtype, shape, data_offsets}},
raw little-endian data), without a __metadata__ entry.
"""
import sys

import torch

from tools.umgclip import safetensors

DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32"}


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sd = torch.load(sys.argv[1], map_location="cpu")
    if "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    tensors = {}
    for name, t in sd.items():
        if not torch.is_tensor(t) or t.dtype not in DTYPES:
            continue
        # bfloat16 goes through float32 (numpy has no bfloat16): exact both ways
        array = t.float().numpy() if t.dtype == torch.bfloat16 else t.contiguous().numpy()
        tensors[name] = (DTYPES[t.dtype], array)
    safetensors.write(sys.argv[2], tensors, metadata=False)


if __name__ == "__main__":
    main()
