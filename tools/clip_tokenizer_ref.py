"""clip_tokenizer_ref.py - golden token ids for tests/test_tokenizer.c beyond the
clip-tiny fixture, from tools/umgclip/tokenizer.py (an independent Python port of
OpenAI CLIP's SimpleTokenizer; its docstring says how it cleans text).

Needs the `regex` module (Debian: python3-regex; scripts/install-deps installs it
with UMG_WITH_TOOLS=1).

  /usr/bin/python3 -m tools.clip_tokenizer_ref --model tests/fixtures/clip-tiny --check
      tokenize every text of reference.json and compare with its ids
  /usr/bin/python3 -m tools.clip_tokenizer_ref --model tests/fixtures/clip-tiny \\
          --gen-extra tests/fixtures/tokenizer/extra.json
      check, then write the extra golden cases
  /usr/bin/python3 -m tools.clip_tokenizer_ref --model DIR "some text" ...
      print the ids of each text
"""
import argparse
import json
import os
import sys

from tools.umgclip.tokenizer import Tokenizer


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
    tok = Tokenizer(args.model)
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
