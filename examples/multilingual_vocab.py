"""A cased multilingual WordPiece vocabulary, trained offline, and how it tokenises.

    python examples/multilingual_vocab.py                        # 300 kB of text, 6,000 tokens
    python examples/multilingual_vocab.py --size 100000 --vocab-size 3000 --output vocabs/

What happens:

1. ``minibert.data.multilingual`` writes synthetic text in eleven invented languages that use
   real scripts, marks, punctuation and casing (French, German, Spanish and Vietnamese accents,
   Greek, Cyrillic, Arabic, Devanagari, CJK ideographs, Hangul, kana). It is not real language:
   it only has the characters and writing conventions a tokenizer must handle.
2. Four vocabularies are trained on it with ``train_wordpiece``, each with the options it will
   be used with (the same as ``minibert train-vocab`` with the flags shown):

   ====================  ==============================  =====================================
   name                  options                         like
   ====================  ==============================  =====================================
   cased                 ``--cased``                     bert-base-multilingual-cased
   uncased               (none)                          bert-base-multilingual-uncased
   uncased, accents      ``--keep-accents``              lower-case, keep every mark
   cased, CJK unsplit    ``--cased --no-split-cjk``      runs of ideographs stay one word
   ====================  ==============================  =====================================

3. Hand-written sentences are tokenised with each, to show what each option does: case kept
   or folded, accents kept or stripped (and what stripping does to Hangul, kana and
   Devanagari), every CJK ideograph a word of its own or not.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import unicodedata

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minibert.data.multilingual import multilingual_text  # noqa: E402
from minibert.tokenization import BertTokenizer  # noqa: E402
from minibert.vocab_trainer import save_vocab, train_wordpiece  # noqa: E402

SETTINGS = {
    "cased": dict(do_lower_case=False, strip_accents=False, tokenize_chinese_chars=True),
    "uncased": dict(do_lower_case=True, strip_accents=None, tokenize_chinese_chars=True),
    "uncased, accents": dict(do_lower_case=True, strip_accents=False, tokenize_chinese_chars=True),
    "cased, CJK unsplit": dict(do_lower_case=False, strip_accents=False, tokenize_chinese_chars=False),
}

EXAMPLES = [
    "Café naïve, Ärger!",                    # Latin accents and case
    "e\u0301te\u0301",                         # "été" written with combining accents (NFD)
    "Tiếng Việt",                            # two marks on one letter
    "ΟΔΟΣ Ελληνικά",                          # Greek capitals and tonos
    "Москва, й ё",                             # Cyrillic; й and ё are и and е with a mark
    "हिन्दी",                                  # Devanagari: vowel signs, virama
    "بِسْمِ كتاب",                              # Arabic with and without vowel marks
    "日本語の文章です",                         # kanji split one by one, kana kept together
    "ガイド",                                  # katakana with a voiced mark (ガ = カ + ゙)
    "한국어 문장",                              # Hangul syllables
    "中文BERT模型",                             # CJK next to Latin letters
]


def show(token: str) -> str:
    """A token as printable text: a combining mark gets a dotted circle to sit on (``##◌́``), and
    conjoining Hangul jamo (what accent stripping's NFD makes of a syllable) are shown apart
    with middle dots (``ᄒ·ᅡ·ᆫ``), where a terminal would draw them as one syllable."""
    prefix, body = ("##", token[2:]) if token.startswith("##") and len(token) > 2 else ("", token)
    if any(0x1100 <= ord(c) <= 0x11FF for c in body):
        return prefix + "\u00b7".join(body)
    if body and unicodedata.combining(body[0]):
        return prefix + "\u25cc" + body
    return token


def train_all(lines, vocab_size: int, limit_alphabet: int, output: str) -> dict[str, BertTokenizer]:
    """Train and save one vocabulary per setting; returns the tokenizers read back from disk."""
    tokenizers = {}
    for name, options in SETTINGS.items():
        start = time.perf_counter()
        vocab = train_wordpiece(lines, vocab_size=vocab_size, limit_alphabet=limit_alphabet, **options)
        folder = os.path.join(output, name.replace(", ", "_").replace(" ", "_"))
        save_vocab(vocab, folder, **options)
        seconds = time.perf_counter() - start
        tok = tokenizers[name] = BertTokenizer.from_pretrained(folder)
        alphabet = sum(len(token) == 1 for token in vocab)
        words = sum(len(tok.basic.tokenize(line)) for line in lines)
        pieces = sum(len(tok.tokenize_to_ids(line)) for line in lines)
        print(f"{name:20s} {len(vocab):6,d} tokens in {seconds:.2f} s, alphabet {alphabet:,d} characters, "
              f"{pieces / words:.2f} tokens per word -> {folder}")
    return tokenizers


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=300_000, help="bytes of text to generate (default 300000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the text generator (default 0)")
    parser.add_argument("--vocab-size", type=int, default=6000, help="tokens per vocabulary (default 6000)")
    parser.add_argument("--limit-alphabet", type=int, default=2000,
                        help="most distinct characters kept (default 2000: the text holds about 1,400)")
    parser.add_argument("--output", help="folder for the corpus and the vocabularies (default: a temporary one)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        output = args.output or scratch
        os.makedirs(output, exist_ok=True)
        lines = multilingual_text(args.size, seed=args.seed)
        corpus = os.path.join(output, "multilingual.txt")
        with open(corpus, "w", encoding="utf-8", newline="\n") as f:
            f.write("\n".join(lines) + "\n")
        print(f"{len(lines):,d} paragraphs, {os.path.getsize(corpus):,d} bytes -> {corpus}")
        try:
            tokenizers = train_all(lines, args.vocab_size, args.limit_alphabet, output)
        except ValueError as exc:                     # e.g. a vocabulary too small for the alphabet
            print(f"error: {exc}", file=sys.stderr)
            return 2
        for text in EXAMPLES:
            print(f"\n{text}")
            for name, tok in tokenizers.items():
                print(f"  {name:20s} {' '.join(map(show, tok.tokenize(text)))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
