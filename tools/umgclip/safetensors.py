"""safetensors I/O in numpy, without the `safetensors` package: the one reader and
writer of the Python tools.

Format: u64 little-endian header length, a JSON header {name: {dtype, shape,
data_offsets: [begin, end)}} (offsets relative to the first byte after the
header; an optional "__metadata__" entry), then the raw little-endian tensors.

    tensors = read(path)      # {name: float32 ndarray}; F32, F16 and BF16 tensors
    write(path, {"w": ("F16", array), "ids": ("I64", ints)})

Needs only numpy.
"""
import json
import os
import struct

import numpy as np

# safetensors dtype -> numpy dtype of its stored bytes (BF16: the raw upper 16 bits)
_STORED = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4"}
FLOAT_DTYPES = ("F32", "F16", "BF16")


def bf16_to_f32(bits):
    """uint16 bfloat16 bit patterns -> float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint32) << 16).view(np.float32)


def f32_to_bf16(values):
    """float32 -> uint16 bfloat16 bit patterns, rounded to nearest even."""
    u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def encode(array, dtype):
    """The little-endian bytes of `array` stored as safetensors `dtype`."""
    if dtype == "BF16":
        return f32_to_bf16(array).astype("<u2").tobytes()
    if dtype not in _STORED:
        raise ValueError(f"unsupported safetensors dtype {dtype!r}")
    return np.ascontiguousarray(array).astype(_STORED[dtype]).tobytes()


def read_header(path):
    """(header dict, byte offset of the data section)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path}: shorter than the 8-byte header length")
        (hlen,) = struct.unpack("<Q", head)
        if 8 + hlen > os.fstat(f.fileno()).st_size:
            raise ValueError(f"{path}: header length {hlen} beyond the end of the file")
        return json.loads(f.read(hlen).decode("utf-8")), 8 + hlen


def read(path):
    """{name: float32 ndarray} of every F32/F16/BF16 tensor.  Integer tensors
    (I64/I32: the position_ids buffers of older checkpoints, not weights) are
    skipped; any other dtype is an error."""
    header, base = read_header(path)
    with open(path, "rb") as f:
        blob = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info["dtype"]
        if dtype in ("I64", "I32"):
            continue
        if dtype not in FLOAT_DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {dtype}")
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        count = int(np.prod(shape)) if shape else 1
        if base + end > len(blob) or end - begin != count * np.dtype(_STORED[dtype]).itemsize:
            raise ValueError(f"{path}: tensor {name}: data_offsets {begin}..{end} do not hold "
                             f"{count} {dtype} values inside the file")
        arr = np.frombuffer(blob, dtype=_STORED[dtype], count=count, offset=base + begin)
        arr = bf16_to_f32(arr) if dtype == "BF16" else arr.astype(np.float32)
        out[name] = arr.reshape(shape)
    return out


def write(path, tensors, metadata=None):
    """Write {name: (dtype, array)} with the tensors sorted by name (as the
    safetensors writer stores them), the header padded with spaces to a multiple
    of 8 bytes (8-byte aligned data).  metadata: the "__metadata__" dict (default
    {"format": "pt"}, as PyTorch checkpoints carry it); False leaves it out.
    Written to PATH.tmp and renamed, so a reader never sees half a file."""
    if metadata is None:
        metadata = {"format": "pt"}
    header = {"__metadata__": metadata} if metadata is not False else {}
    blobs, offset = [], 0
    for name in sorted(tensors):
        dtype, array = tensors[name]
        data = encode(array, dtype)
        header[name] = {"dtype": dtype, "shape": list(np.shape(array)),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * (-len(hbytes) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for data in blobs:
            f.write(data)
    os.replace(tmp, path)
