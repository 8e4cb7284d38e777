"""CLIP's byte-level BPE tokenizer (OpenAI's SimpleTokenizer, as Hugging Face's
CLIPTokenizer reproduces it), an independent port of the reference for the C
tokenizer (encoder/enc_tokenizer.c) and the tokenizer of the training.

    tok = Tokenizer(MODEL_DIR)        # its vocab.json + merges.txt
    tok.tokenize("a red circle")      # [49406, ..., 49407], at most 77 ids

Cleaning as the reference (shared/README.md): html.unescape twice, strip,
whitespace runs (the `regex` module's \\s, i.e. Unicode White_Space) collapsed to
one space, strip, str.lower(); then the CLIP pattern, byte-level BPE with '</w>'
word ends, start/end tokens, truncation to the context length with the end token
kept.  ftfy.fix_text, which OpenAI's code runs first, is not part of the reference
and is left out here too.

Needs the `regex` module (Debian: python3-regex; scripts/install-deps installs it
with UMG_WITH_TOOLS=1).
"""
import html
import json
import os

import regex

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
N_MERGES = 49152 - 256 - 2  # OpenAI and Hugging Face both keep merges[1:N_MERGES+1]
PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE)
WHITESPACE = regex.compile(r"\s+")


def bytes_to_unicode():
    """Byte value -> printable character; printable Latin-1 bytes map to themselves."""
    kept = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    table = {b: chr(b) for b in kept}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class Tokenizer:
    def __init__(self, model_dir):
        with open(os.path.join(model_dir, "merges.txt"), encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1:N_MERGES + 1]]
        self.byte_map = bytes_to_unicode()
        # The vocabulary as OpenAI builds it from the merges alone; vocab.json must agree.
        base = list(self.byte_map.values())
        vocab = base + [c + "</w>" for c in base] + ["".join(m) for m in merges] + [SOT, EOT]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        with open(os.path.join(model_dir, "vocab.json"), encoding="utf-8") as f:
            file_vocab = json.load(f)
        if file_vocab != self.encoder:
            raise ValueError(f"{model_dir}: vocab.json differs from the vocabulary implied by merges.txt")
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.sot, self.eot = self.encoder[SOT], self.encoder[EOT]
        self._cache = {}

    def bpe(self, piece):
        """One pre-tokenized piece (byte-mapped) -> its BPE symbols."""
        if piece in (SOT, EOT):
            return [piece]
        if piece in self._cache:
            return self._cache[piece]
        word = list(piece[:-1]) + [piece[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == best[0] and word[i + 1] == best[1]:
                    merged.append(best[0] + best[1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        if len(self._cache) < 100000:
            self._cache[piece] = word
        return word

    @staticmethod
    def clean(text):
        text = html.unescape(html.unescape(text)).strip()
        text = WHITESPACE.sub(" ", text).strip()
        return text.lower()

    def encode(self, text):
        """The ids of text's tokens, without the start and end tokens, untruncated."""
        ids = []
        for piece in PATTERN.findall(self.clean(text)):
            mapped = "".join(self.byte_map[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(mapped))
        return ids

    def tokenize(self, text, context_length=77):
        """[start] + encode(text) + [end], cut to context_length with the end token kept."""
        ids = [self.sot] + self.encode(text) + [self.eot]
        if len(ids) > context_length:
            ids = ids[:context_length]
            ids[-1] = self.eot
        return ids
