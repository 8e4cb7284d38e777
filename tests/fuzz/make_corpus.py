#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_protocol into tests/fuzz/corpus/protocol/.

Each seed is one fuzzer input: a byte choosing the read-chunk size, then a
stream of length-prefixed frames.  Seeds: a valid request of every op, some
responses, and invalid messages of each kind the decoder refuses.  Deterministic;
re-run after changing it (files are named after their content's purpose)."""
import os
import struct
import sys


def pack(o):
    """Minimal msgpack encoder (enough for the seeds; no dependency)."""
    if o is None:
        return b"\xc0"
    if o is True:
        return b"\xc3"
    if o is False:
        return b"\xc2"
    if isinstance(o, int):
        if 0 <= o < 128:
            return bytes([o])
        if 0 <= o:
            return b"\xcf" + struct.pack(">Q", o)
        if o >= -32:
            return struct.pack(">b", o)
        return b"\xd3" + struct.pack(">q", o)
    if isinstance(o, float):
        return b"\xcb" + struct.pack(">d", o)
    if isinstance(o, Raw):
        return o.b
    if isinstance(o, str):
        o = o.encode("utf-8", "surrogateescape")
        return (bytes([0xA0 | len(o)]) if len(o) < 32 else b"\xda" + struct.pack(">H", len(o))) + o
    if isinstance(o, BadStr):
        return bytes([0xA0 | len(o.b)]) + o.b
    if isinstance(o, (bytes, bytearray)):
        return b"\xc5" + struct.pack(">H", len(o)) + bytes(o)
    if isinstance(o, list):
        return (bytes([0x90 | len(o)]) if len(o) < 16 else b"\xdc" + struct.pack(">H", len(o))) + b"".join(map(pack, o))
    if isinstance(o, dict):
        items = o.items()
        return bytes([0x80 | len(o)]) + b"".join(pack(k) + pack(v) for k, v in items)
    raise TypeError(o)


class Raw:
    def __init__(self, b):
        self.b = b


class BadStr:
    """A str whose bytes are not UTF-8."""
    def __init__(self, b):
        self.b = b


def frame(body):
    return struct.pack(">I", len(body)) + body


JPEG = bytes([0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10]) + b"JFIF\0" + bytes(16) + bytes([0xFF, 0xD9])

valid = {
    "hello": {"id": 1, "op": "hello", "client": "umgdb-cli/0.1", "token": "s3cret"},
    "ping": {"id": 2, "op": "ping"},
    "ingest_path": {"id": 3, "op": "ingest", "path": "/photos/2023/rocket.jpg", "tags": ["space", "launch"]},
    "ingest_data": {"id": 4, "op": "ingest", "data": JPEG, "name": "rocket.jpg", "mtime": 1700000000},
    "query": {"id": 5, "op": "query", "text": "a red car", "granularity": "region", "k": 20,
              "filters": {"path_prefix": "/photos/", "tags": ["street"], "min_score": 0.25}},
    "query_pixel": {"id": 6, "op": "query", "text": "caf\u00e9 \U0001F4F7", "granularity": "pixel"},
    "query_image_id": {"id": 7, "op": "query_image", "image_id": 17, "box": [10, 20, 100.5, 80], "k": 5},
    "query_image_data": {"id": 8, "op": "query_image", "data": JPEG, "granularity": "image"},
    "get_id": {"id": 9, "op": "get", "image_id": 17},
    "get_path": {"id": 10, "op": "get", "path": "/photos/2023/rocket.jpg"},
    "delete": {"id": 11, "op": "delete", "image_id": 17},
    "stats": {"id": 12, "op": "stats"},
}
responses = {
    "resp_hits": {"id": 5, "ok": True, "result": {"hits": [
        {"image_id": 3, "path": "/p/a.jpg", "score": 0.31, "box": [1, 2, 30, 40]}]}},
    "resp_error": {"id": 6, "ok": False, "error": {"code": "not_found", "message": "image 6 not found"}},
}
invalid = {
    "unknown_op": pack({"id": 20, "op": "frobnicate"}),
    "no_id": pack({"op": "ping"}),
    "neg_id": pack({"id": -1, "op": "ping"}),
    "not_map": pack([1, "ping"]),
    "bad_utf8_text": pack({"id": 21, "op": "query", "text": BadStr(b"caf\xe9")}),
    "bad_utf8_key": pack({"id": 22, "op": "ping", BadStr(b"\xc0\xaf"): 1}),
    "k_out_of_range": pack({"id": 23, "op": "query", "text": "x", "k": 100000}),
    "both_alternatives": pack({"id": 24, "op": "ingest", "path": "/a", "data": b"x", "name": "a"}),
    "mtime_with_path": pack({"id": 30, "op": "ingest", "path": "/a", "mtime": 1700000000}),
    "box_zero": pack({"id": 25, "op": "query_image", "image_id": 1, "box": [0, 0, 0, 5]}),
    "deep": pack({"id": 26, "op": "query", "text": Raw(b"\x91" * 20 + b"\xc0")}),
    "huge_array": pack({"id": 27, "op": "query", "text": Raw(b"\xdd\xff\xff\xff\xff\xc0")}),
    "huge_str": Raw(b"\xdb\xff\xff\xff\xff" + b"abc").b,
    "reserved_byte": b"\x81\xa2id\xc1",
    "trailing": pack({"id": 28, "op": "ping"}) + b"\xc0",
    "truncated": pack({"id": 29, "op": "query", "text": "a red car"})[:-3],
}


def main():
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "protocol")
    os.makedirs(out, exist_ok=True)
    seeds = {}
    for name, msg in valid.items():
        seeds["req_" + name] = b"\xff" + frame(pack(msg))                 # one read
        seeds["req_" + name + "_bytewise"] = b"\x00" + frame(pack(msg))   # one byte per read
    for name, msg in responses.items():
        seeds[name] = b"\x10" + frame(pack(msg))
    for name, body in invalid.items():
        seeds["bad_" + name] = b"\x07" + frame(body)
    seeds["pipeline"] = b"\x05" + b"".join(frame(pack(m)) for m in valid.values())
    seeds["zero_length_then_ping"] = b"\x03" + b"\0\0\0\0" + frame(pack(valid["ping"]))
    seeds["oversize_length"] = b"\x40" + struct.pack(">I", 0xFFFFFFFF) + b"x" * 16
    seeds["raw_request_no_prefix"] = b"\xff" + pack(valid["query"])
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print(f"{len(seeds)} seeds in {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
