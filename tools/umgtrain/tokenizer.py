"""CLIP's byte-level BPE (vocab.json + merges.txt of the real checkpoints), enough for
this world's captions: ASCII text.  Cleaning as CLIP does (whitespace collapsed,
stripped, lowercased), the pre-tokenization pattern restricted to ASCII classes
(letters, single digits, runs of other non-space characters), BPE with '</w>' word
ends, start/end tokens, truncation to 77 with the end token kept."""

import json
import re

_PAT = re.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[a-z]+|[0-9]|[^\sa-z0-9]+")


def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


class Tokenizer:
    def __init__(self, vocab_json, merges_txt):
        with open(vocab_json, encoding="utf-8") as f:
            self.encoder = json.load(f)
        with open(merges_txt, encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(l.split()) for l in lines[1:49152 - 256 - 2 + 1] if l.strip()]
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.byte_enc = _bytes_to_unicode()
        self.sot = self.encoder["<|startoftext|>"]
        self.eot = self.encoder["<|endoftext|>"]
        self.cache = {}

    def _bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = [(self.ranks.get((word[i], word[i + 1]), 1 << 30), i) for i in range(len(word) - 1)]
            rank, _ = min(pairs)
            if rank == 1 << 30:
                break
            first, second = None, None
            for r, i in pairs:
                if r == rank:
                    first, second = word[i], word[i + 1]
                    break
            out, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    out.append(first + second)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = out
        self.cache[token] = word
        return word

    def encode(self, text, max_len=77):
        if not all(ord(c) < 128 for c in text):
            raise ValueError("this tokenizer port handles ASCII text only")
        text = re.sub(r"\s+", " ", text).strip().lower()
        ids = [self.sot]
        for tok in _PAT.findall(text):
            tok = "".join(self.byte_enc[b] for b in tok.encode("utf-8"))
            ids.extend(self.encoder[p] for p in self._bpe(tok))
        ids = ids[:max_len - 1] + [self.eot]
        return ids
