#!/usr/bin/env python3
"""bench/server/query_texts.py - a large pool of distinct query texts for the
server benchmark, so that its runs need not repeat a text (a query cache would
answer a repeated one without the text tower and flatter the figures).

    query_texts.py COCO_MINI_DIR N > texts.txt

First the distinct COCO captions of coco-mini (annotations/captions_*.json),
then generated ones until N: the first half of one caption's words followed
by the second half of another's (seeded, so every run makes the same pool),
which keeps the captions' length and vocabulary (the text tower's time grows
with the tokens).  Distinct after lowercasing and folding whitespace, as the
tokenizer does (its other normalizations may still merge a few: the server's
stats.query_cache.hits of a run without repetition says how many)."""
import glob
import json
import random
import sys


def main():
    src, n = sys.argv[1], int(sys.argv[2])
    caps = []
    for f in sorted(glob.glob(src + "/annotations/captions_*.json")):
        caps += [" ".join(a["caption"].split()) for a in json.load(open(f))["annotations"]]
    seen, out = set(), []

    def add(t):
        key = t.lower()
        if t and key not in seen and len(out) < n:
            seen.add(key)
            out.append(t)

    for c in caps:
        add(c)
    words = [c.split() for c in caps if len(c.split()) >= 4]
    rng = random.Random(1)
    tries = 0
    while len(out) < n and tries < 50 * n:
        tries += 1
        a, b = rng.choice(words), rng.choice(words)
        add(" ".join(a[: len(a) // 2] + b[len(b) // 2:]))
    if len(out) < n:
        sys.exit(f"query_texts.py: only {len(out)} distinct texts, {n} wanted")
    sys.stdout.write("".join(t + "\n" for t in out))


if __name__ == "__main__":
    main()
