"""Self-check of tools/umgclip/safetensors.py (numpy only).

    /usr/bin/python3 -m tools.umgclip.test_safetensors

- the writer's bytes for a small tensor equal the format written out by hand;
- F32/F16/BF16/I64/I32 and a 0-d tensor round trip (BF16 rounds to nearest even);
- the committed checkpoints (clip-tiny: F32+F16, synth-umg: F16) read and written
  back give the same bytes (the readers/writers umgdb's tools used before agree);
- truncated files, offsets outside the file and unknown dtypes are refused.
"""
import json
import os
import struct
import tempfile

import numpy as np

from tools.umgclip import safetensors as st

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def check_hand_written(tmp):
    path = os.path.join(tmp, "hand.safetensors")
    st.write(path, {"a": ("F32", np.array([1.0, -2.5], np.float32))}, metadata=False)
    header = b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}'
    header += b" " * (-len(header) % 8)
    want = struct.pack("<Q", len(header)) + header + struct.pack("<2f", 1.0, -2.5)
    with open(path, "rb") as f:
        got = f.read()
    assert got == want, (got, want)


def check_round_trip(tmp):
    rng = np.random.default_rng(5)
    f32 = rng.standard_normal((3, 4)).astype(np.float32)
    f16 = rng.standard_normal(7).astype(np.float32)
    one = np.float32(1.0)
    # bf16 keeps 7 mantissa bits: 1 + 2^-8 is halfway to 1 + 2^-7 and rounds to the even 1.0,
    # 1 + 3 * 2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even) and rounds up
    bf16_in = np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, -3.140625, 0.0], np.float32)
    bf16_want = np.array([1.0, 1.0, 1 + 2 ** -6, 1 + 2 ** -7, -3.140625, 0.0], np.float32)
    tensors = {"z.f32": ("F32", f32), "y.f16": ("F16", f16), "x.bf16": ("BF16", bf16_in),
               "w.scalar": ("F32", one), "v.ids": ("I64", np.arange(5).reshape(1, 5)),
               "u.ids32": ("I32", np.arange(3, dtype=np.int32))}
    path = os.path.join(tmp, "rt.safetensors")
    st.write(path, tensors)
    header, base = st.read_header(path)
    assert base % 8 == 0, "data section not 8-byte aligned"
    names = [k for k in header if k != "__metadata__"]
    assert list(header)[0] == "__metadata__" and header["__metadata__"] == {"format": "pt"}
    assert names == sorted(tensors), names
    end = 0
    for k in names:  # contiguous, in name order
        assert header[k]["data_offsets"][0] == end, k
        end = header[k]["data_offsets"][1]
    assert base + end == os.path.getsize(path)
    assert header["w.scalar"]["shape"] == [] and header["v.ids"]["shape"] == [1, 5]
    got = st.read(path)
    assert sorted(got) == ["w.scalar", "x.bf16", "y.f16", "z.f32"], "integer tensors are skipped"
    assert all(a.dtype == np.float32 for a in got.values())
    assert np.array_equal(got["z.f32"], f32)
    assert np.array_equal(got["y.f16"], f16.astype(np.float16).astype(np.float32))
    assert np.array_equal(got["x.bf16"], bf16_want), got["x.bf16"]
    assert got["w.scalar"].shape == () and got["w.scalar"] == one


def check_committed(tmp):
    for name in ("clip-tiny", "synth-umg"):
        path = os.path.join(ROOT, "tests", "fixtures", name, "model.safetensors")
        header, _ = st.read_header(path)
        tensors = st.read(path)
        back = os.path.join(tmp, name + ".safetensors")
        st.write(back, {k: (header[k]["dtype"], v) for k, v in tensors.items()},
                 metadata=header.get("__metadata__", False))
        with open(path, "rb") as a, open(back, "rb") as b:
            assert a.read() == b.read(), f"{name}: read + write changed the file"
        print(f"{name}: {len(tensors)} tensors read and written back byte for byte")


def refused(path):
    try:
        st.read(path)
    except ValueError:
        return True
    return False


def check_refusals(tmp):
    good = os.path.join(tmp, "good.safetensors")
    st.write(good, {"a": ("F32", np.ones(4, np.float32))})
    with open(good, "rb") as f:
        blob = f.read()
    bad = os.path.join(tmp, "bad.safetensors")
    for label, data in (("short", blob[:5]), ("header beyond end", struct.pack("<Q", 1 << 20) + blob[8:]),
                        ("data cut", blob[:-1])):
        with open(bad, "wb") as f:
            f.write(data)
        assert refused(bad), label
    header = json.dumps({"a": {"dtype": "F64", "shape": [1], "data_offsets": [0, 8]}}).encode()
    with open(bad, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header + bytes(8))
    assert refused(bad), "unknown dtype"


def main():
    with tempfile.TemporaryDirectory() as tmp:
        check_hand_written(tmp)
        check_round_trip(tmp)
        check_committed(tmp)
        check_refusals(tmp)
    print("safetensors: ok")


if __name__ == "__main__":
    main()
