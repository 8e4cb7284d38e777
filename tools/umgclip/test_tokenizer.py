"""Self-check of tools/umgclip/tokenizer.py against the committed goldens: the ids
of the ten texts of tests/fixtures/clip-tiny/reference.json (written by the
reference CLIP) and of every case of tests/fixtures/tokenizer/extra.json (HTML
entities, Unicode classes, invalid UTF-8, truncation at 77; the C tokenizer's
goldens), truncated (ids) and whole (ids_full).  Needs python3-regex: skipped
without it.

    /usr/bin/python3 -m tools.umgclip.test_tokenizer
"""
import json
import os
import sys

from tools.testing import require

require("regex", "python3-regex")
from tools.umgclip.tokenizer import Tokenizer  # noqa: E402  (needs regex)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "tests", "fixtures", "clip-tiny")


def main():
    tok = Tokenizer(MODEL)
    bad = []
    with open(os.path.join(MODEL, "reference.json"), encoding="utf-8") as f:
        texts = json.load(f)["texts"]
    for t in texts:
        if tok.tokenize(t["text"]) != t["ids"]:
            bad.append(("reference.json", t["text"]))
    with open(os.path.join(ROOT, "tests", "fixtures", "tokenizer", "extra.json"), encoding="utf-8") as f:
        doc = json.load(f)
    for c in doc["cases"]:
        text = c["text"] if "text" in c else bytes.fromhex(c["hex"]).decode("utf-8", errors="replace")
        if tok.tokenize(text, doc["context_length"]) != c["ids"]:
            bad.append((c["name"], "ids"))
        if tok.tokenize(text, 1 << 30) != c["ids_full"]:
            bad.append((c["name"], "ids_full"))
    # the truncation rule itself: 77 ids, the end token last, whatever the length
    long_ids = tok.tokenize("cat " * 200)
    if len(long_ids) != 77 or long_ids[0] != tok.sot or long_ids[-1] != tok.eot:
        bad.append(("truncation", long_ids[:3] + long_ids[-3:]))
    for b in bad:
        print("MISMATCH", b)
    print("%d reference texts, %d extra cases: %s" % (len(texts), len(doc["cases"]), "FAIL" if bad else "ok"))
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
