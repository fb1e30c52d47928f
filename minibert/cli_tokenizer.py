"""``minibert tokenize`` and ``minibert train-vocab``.

    minibert tokenize --vocab path/to/model "Hello, world!"         # hello , world !
    echo "Hello, world!" | minibert tokenize --vocab vocab.txt --ids  # 7592 1010 2088 999
    minibert train-vocab corpus/*.txt --vocab-size 8000 --output my_tokenizer/
    minibert train-vocab multilingual.txt --cased --output cased_tokenizer/    # case and accents kept

Text files must be UTF-8; a file that is not is reported with its name and line number.
"""

from __future__ import annotations

import argparse
import sys
import time

from .tokenization import BertTokenizer


class InputError(ValueError):
    """Bad user input (e.g. a file that is not UTF-8), reported as one line, exit code 2."""


def read_text_lines(path: str):
    """Yield the lines of a UTF-8 text file (``-`` is standard input), without newlines.

    Invalid UTF-8 raises :class:`InputError` naming the file and the line.
    """
    name = "<stdin>" if path == "-" else path
    if path == "-":
        stream = sys.stdin.buffer
        close = False
    else:
        try:
            stream = open(path, "rb")
        except OSError as exc:
            raise InputError(f"cannot read {path}: {exc.strerror}") from None
        close = True
    try:
        for number, raw in enumerate(stream, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(f"{name}: line {number}: invalid UTF-8 (byte 0x{raw[exc.start]:02x} "
                                 f"at column {exc.start + 1})") from None
            if number == 1 and line.startswith("\ufeff"):
                line = line[1:]                     # a UTF-8 byte-order mark is not text
            yield line.rstrip("\r\n")
    finally:
        if close:
            stream.close()


def _tokenize_command(args) -> int:
    try:
        tokenizer = BertTokenizer.from_pretrained(args.vocab, **({"do_lower_case": False} if args.cased else {}))
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(str(exc)) from None
    if not args.text and sys.stdin.isatty():
        raise InputError("no text: give it as arguments, or pipe lines to standard input")
    lines = args.text if args.text else read_text_lines("-")
    out = sys.stdout
    for line in lines:
        if args.ids:
            out.write(" ".join(map(str, tokenizer.tokenize_to_ids(line))) + "\n")
        else:
            out.write(" ".join(tokenizer.tokenize(line)) + "\n")
    return 0


def _train_vocab_command(args) -> int:
    from .vocab_trainer import save_vocab, train_wordpiece

    def texts():
        for path in args.files:
            yield from read_text_lines(path)

    # None: accents go with the case (stripped when lower-casing), as in BERT's tokenizers
    strip_accents = True if args.strip_accents else False if args.keep_accents else None
    options = dict(do_lower_case=not args.cased, strip_accents=strip_accents,
                   tokenize_chinese_chars=not args.no_split_cjk)
    start = time.perf_counter()
    vocab = train_wordpiece(texts(), vocab_size=args.vocab_size, min_frequency=args.min_frequency,
                            limit_alphabet=args.limit_alphabet, **options)
    path = save_vocab(vocab, args.output, **options)
    print(f"wrote {len(vocab)} tokens to {path} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    if len(vocab) < args.vocab_size:
        print(f"note: {args.vocab_size} tokens were asked for, but after {len(vocab)} the text holds no pair "
              f"of pieces that occurs --min-frequency ({args.min_frequency}) times or more: more text gives "
              "more tokens", file=sys.stderr)
    return 0


def _run(function):
    """Report expected input errors as one line on stderr with exit code 2."""
    def run(args):
        try:
            return function(args)
        except (InputError, ValueError, FileNotFoundError) as exc:
            print(f"minibert {args.command}: error: {exc}", file=sys.stderr)
            return 2
    return run


def add_tokenizer_commands(subparsers) -> None:
    """Register ``tokenize`` and ``train-vocab`` on an argparse sub-parser collection."""
    p = subparsers.add_parser("tokenize", help="split text into WordPiece tokens",
                              description="Tokenize text given as arguments, or each line of "
                                          "standard input, and print one line of tokens per text.")
    p.add_argument("text", nargs="*", help="texts to tokenize (default: read lines from standard input)")
    p.add_argument("--vocab", required=True, metavar="PATH_OR_DIR",
                   help="vocab.txt, or a directory holding vocab.txt (and tokenizer_config.json)")
    p.add_argument("--ids", action="store_true", help="print token ids instead of tokens")
    p.add_argument("--cased", action="store_true", help="do not lower-case or strip accents")
    p.set_defaults(func=_run(_tokenize_command), command="tokenize")

    p = subparsers.add_parser("train-vocab", help="learn a WordPiece vocabulary from text files",
                              description="Learn a WordPiece vocabulary from UTF-8 text files and "
                                          "write vocab.txt and tokenizer_config.json.")
    p.add_argument("files", nargs="+", help="UTF-8 text files ('-' for standard input)")
    p.add_argument("--vocab-size", type=int, default=8000, help="number of tokens (default 8000)")
    p.add_argument("--output", required=True, metavar="DIR", help="directory for vocab.txt")
    p.add_argument("--min-frequency", type=int, default=2, help="least count of a merged pair (default 2)")
    p.add_argument("--limit-alphabet", type=int, default=1000,
                   help="keep at most this many distinct characters (default 1000)")
    p.add_argument("--cased", action="store_true",
                   help="keep upper-case letters (and accents, unless --strip-accents), as cased and "
                        "multilingual BERT do")
    accents = p.add_mutually_exclusive_group()
    accents.add_argument("--strip-accents", action="store_true",
                         help="remove accents and other non-spacing marks (NFD, then drop category Mn) "
                              "even with --cased")
    accents.add_argument("--keep-accents", action="store_true",
                         help="keep accents and other non-spacing marks even when lower-casing "
                              "(default: kept with --cased, stripped without)")
    p.add_argument("--no-split-cjk", action="store_true",
                   help="do not make every CJK ideograph a word of its own (default: split them, as "
                        "BERT's tokenizers do)")
    p.set_defaults(func=_run(_train_vocab_command), command="train-vocab")


def main(argv=None) -> int:
    """Stand-alone entry point (the package's ``minibert`` command includes these too)."""
    parser = argparse.ArgumentParser(prog="minibert")
    add_tokenizer_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
