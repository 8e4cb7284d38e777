#!/usr/bin/python3
"""clip_tokenizer_ref.py - an independent Python port of OpenAI CLIP's SimpleTokenizer.

Golden values for tests/test_tokenizer.c beyond the clip-tiny fixture.  Follows the
cleaning of the reference (shared/README.md): html.unescape twice, strip, whitespace
runs (the `regex` module's \\s, i.e. Unicode White_Space) collapsed to one space,
strip, str.lower(), split by the CLIP pattern, byte-level BPE.  ftfy.fix_text, which
OpenAI's code runs first, is not part of the reference and is left out here too.

Needs the `regex` module (Debian: python3-regex; scripts/install-deps installs it
with UMG_WITH_TOOLS=1).

  tools/clip_tokenizer_ref.py --model tests/fixtures/clip-tiny --check
      tokenize every text of reference.json and compare with its ids
  tools/clip_tokenizer_ref.py --model tests/fixtures/clip-tiny --gen-extra tests/fixtures/tokenizer/extra.json
      check, then write the extra golden cases
  tools/clip_tokenizer_ref.py --model DIR "some text" ...
      print the ids of each text
"""
import argparse
import html
import json
import os
import sys

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


class ClipTokenizer:
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
            raise SystemExit("vocab.json differs from the vocabulary implied by merges.txt")
        self.ranks = {m: i for i, m in enumerate(merges)}

    def bpe(self, piece):
        if piece in (SOT, EOT):
            return [piece]
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
        return word

    @staticmethod
    def clean(text):
        text = html.unescape(html.unescape(text)).strip()
        text = WHITESPACE.sub(" ", text).strip()
        return text.lower()

    def encode(self, text):
        ids = []
        for piece in PATTERN.findall(self.clean(text)):
            mapped = "".join(self.byte_map[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(mapped))
        return ids

    def tokenize(self, text, context_length=77):
        ids = [self.encoder[SOT]] + self.encode(text) + [self.encoder[EOT]]
        if len(ids) > context_length:
            ids = ids[:context_length]
            ids[-1] = self.encoder[EOT]
        return ids


def check_reference(tok, model_dir):
    with open(os.path.join(model_dir, "reference.json"), encoding="utf-8") as f:
        texts = json.load(f)["texts"]
    bad = 0
    for t in texts:
        got = tok.tokenize(t["text"])
        if got != t["ids"]:
            bad += 1
            print("MISMATCH %r\n  want %s\n  got  %s" % (t["text"], t["ids"], got), file=sys.stderr)
    print("reference.json: %d/%d texts identical" % (len(texts) - bad, len(texts)))
    return bad == 0


def long_text(n_bytes):
    """Deterministic prose of about n_bytes bytes."""
    words = ("a photo of the old harbour at dawn with three red boats, 42 gulls and "
             "one sleepy cat on a wooden pier; everyone's waiting for the ferry.").split()
    out, i = [], 0
    while sum(len(w) + 1 for w in out) < n_bytes:
        out.append(words[i % len(words)])
        i += 1
    return " ".join(out)


def pseudo_random_word(n, seed):
    """A long letters-only word, so that one BPE piece has thousands of symbols."""
    x, out = seed, []
    for _ in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        out.append("etaoinshrdlucmfwyp"[(x >> 16) % 18])
    return "".join(out)


EXTRA_TEXTS = [
    ("empty", ""),
    ("whitespace_only", "   \t\n \r\n\u00a0\u3000  "),
    ("html_entities", "&amp;amp; &lt;b&gt; &copy &#x41;&#65;"),
    ("html_named_edge", "&notit; &notin; &amp &AMP; &ampx &lt&gt &Aacute &aacuteb &NotAnEntity; &; & amp;"),
    ("html_numeric_edge", "&#0; &#x80; &#150; &#x9F; &#xD800; &#x110000; &#1114112; "
                          "&#99999999999999999999; &#x1F600; &#xFFFE; &#11; &#13; &#65x &#x &# &#x4g"),
    ("html_double", "&amp;lt;tag&amp;gt; &#38;amp; &amp;#65; &amp;amp;amp;"),
    ("html_long_name", "&ThisIsAVeryLongNameThatExceedsThirtyTwoCharacters; &amp" + "x" * 40),
    ("chinese", "我爱北京天安门，一只猫在沙发上睡觉。"),
    ("cyrillic", "Привет, как дела? Кошка спит на диване."),
    ("arabic", "مرحبا بالعالم، قطة على الأريكة"),
    ("greek_final_sigma", "ΟΔΟΣ Σίσυφος ΣΑΣ ΑΣ. Σ ΑΣ' ΑΣ-Β ὈΔΥΣΣΕΎΣ"),
    ("emoji", "🐱🐶 dogs & cats 👨‍👩‍👧 🇫🇷 ❤️ 👍🏽"),
    ("combining_accents", "cafe\u0301 nai\u0308ve Zoe\u0308 a\u030a \u0301alone"),
    ("indic_thai_cjk", "こんにちは 안녕하세요 สวัสดี नमस्ते"),
    ("mixed_scripts", "Paris Париж باريس 巴黎 Παρίσι 🗼 2024"),
    ("digits_punct", "1234567890 3.14159 1,000,000 ... !!! ?!?! --- (a) [b] {c} <d> \"e\" 'f' @#$%^&*"),
    ("unicode_numbers", "٣ ½ ² Ⅻ ① १२३ ３"),
    ("contractions", "I'm sure you're right, they've said it's what we'd do and we'll see; DON'T STOP. it'ſ"),
    ("quotes", "rock 'n' roll o'clock '' 'S 'LL ’s"),
    ("long_10kb", long_text(10240)),
    ("long_word", pseudo_random_word(2000, 7)),
    ("special_literal", "<|startoftext|>hello <|endoftext|> <|STARTOFTEXT|> <|startoftext| <|ſtartoftext|>"),
    ("uppercase_non_ascii", "ÀÉÎ İstanbul İ ÕÜ ẞ ǅ Ǆ ΣΑΣ ΑΩ"),
    ("unicode_whitespace", "a\u00a0b\u2003c\u3000d\x1ce\x85f\u200bg  h\u2028i"),
    ("control_chars", " \x1c a \x1f\x00b\x07c\x7f "),
    # U+0345 matches no alternative under IGNORECASE; U+180E is not \s for regex;
    # U+31350 (CJK ext. H), U+1E4D0 (Nag Mundari) and U+11F50 (Kawi digit) are Unicode 15.
    ("regex_quirks", "σ\u0345 ά\u0345ι !\u0345! a\u180eb \U00031350\U00031351 x\U0001e4d0y \U00011f50\U00011f51"),
]

# Invalid UTF-8: defined as Python's bytes.decode("utf-8", errors="replace").
EXTRA_BYTES = [
    ("lone_continuation", b"a\x80b \xbf\xbf c"),
    ("truncated_2", b"caf\xc3"),
    ("truncated_3", b"x\xe2\x82 y"),
    ("truncated_4", b"\xf0\x9f\x98 smile"),
    ("overlong", b"\xc0\xaf \xe0\x80\xaf \xf0\x80\x80\xaf \xc1\xbf"),
    ("surrogate", b"\xed\xa0\x80 \xed\xbf\xbf z"),
    ("ff_fe", b"\xff\xfe hello \xff"),
    ("beyond_max", b"\xf4\x90\x80\x80 \xf5\x80\x80\x80"),
    ("nul_inside", b"ab\x00cd"),
    ("mixed_valid_invalid", "héllo ".encode() + b"\xe9t\xe9 " + "wörld 😀".encode() + b"\xf0\x9f"),
]


def extra_cases(tok):
    cases = []
    for name, text in EXTRA_TEXTS:
        cases.append({"name": name, "text": text, "ids": tok.tokenize(text),
                      "ids_full": tok.tokenize(text, context_length=1 << 30)})
    for name, raw in EXTRA_BYTES:
        text = raw.decode("utf-8", errors="replace")
        cases.append({"name": name, "hex": raw.hex(), "ids": tok.tokenize(text),
                      "ids_full": tok.tokenize(text, context_length=1 << 30)})
    return cases


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="directory with vocab.json and merges.txt")
    ap.add_argument("--check", action="store_true", help="compare with the model's reference.json")
    ap.add_argument("--gen-extra", metavar="OUT.json", help="write the extra golden cases")
    ap.add_argument("text", nargs="*")
    args = ap.parse_args()
    tok = ClipTokenizer(args.model)
    if args.check or args.gen_extra:
        if not check_reference(tok, args.model):
            return 1
    if args.gen_extra:
        doc = {"generator": "tools/clip_tokenizer_ref.py", "context_length": 77,
               "cases": extra_cases(tok)}
        with open(args.gen_extra, "w", encoding="utf-8") as f:
            json.dump(doc, f, ensure_ascii=False, indent=1)
            f.write("\n")
        print("wrote %d cases to %s" % (len(doc["cases"]), args.gen_extra))
    for t in args.text:
        print(json.dumps(tok.tokenize(t)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
