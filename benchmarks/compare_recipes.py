"""Pretraining runs side by side: held-out masked-LM loss and accuracy of the models trained by
``minibert pretrain`` (``--recipe bert``), ``minibert pretrain --recipe roberta``, or runs of a
sweep, scored on the same held-out sequences.

    python benchmarks/compare_recipes.py runs/bert runs/roberta [more run folders ...]
    python benchmarks/compare_recipes.py --max-seq-length 128 runs/sweep/*/     # runs of any length

Each recipe validates on its own kind of sequence (bert: sentence pairs, half of them with a
random B; roberta: full sentences packed across documents), so their own figures answer
slightly different questions. This script scores both models (at their last step) on both held-out sets,
made from the same held-out documents (both runs split the corpus with the same seed) with
the same vocabulary and masks as the runs made them, and prints a Markdown table. The runs
must share the corpus, --validation-fraction, --seed and vocabulary. The held-out sequences
are --max-seq-length tokens long (default: the first run's), so runs trained on sequences of
other lengths are scored on the same ones.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minibert import pretrain as job  # noqa: E402
from minibert.data.corpus import split_documents  # noqa: E402
from minibert.data.pretraining import ArrayDataset, Masker, VocabularyInfo, tokenize_documents  # noqa: E402
from minibert.heads import BertForMaskedLM  # noqa: E402
from minibert.modeling import BertForPreTraining  # noqa: E402
from minibert.tokenization import BertTokenizer  # noqa: E402
from minibert.training import evaluate_pretraining, latest_checkpoint  # noqa: E402


def read_run(folder: str) -> dict:
    """The run's options (run_shape.json), results, and its model at the last step (its last
    checkpoint: the whole compute budget spent; the best_model folder may be an earlier step's,
    chosen by each recipe's own validation loss, which for bert includes NSP)."""
    with open(os.path.join(folder, "run_shape.json"), encoding="utf-8") as f:
        shape = json.load(f)
    with open(os.path.join(folder, "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    model_class = BertForMaskedLM if shape.get("recipe") == "roberta" else BertForPreTraining
    model = model_class.from_pretrained(latest_checkpoint(folder))
    with open(os.path.join(latest_checkpoint(folder), "trainer_state.json"), encoding="utf-8") as f:
        learning_rate = json.load(f)["args"]["learning_rate"]
    return {"shape": shape, "results": results, "model": model, "folder": folder, "learning_rate": learning_rate}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders of minibert pretrain (either recipe)")
    parser.add_argument("--eval-batches", type=int, default=None, help="batches of each held-out set (default: all)")
    parser.add_argument("--max-seq-length", type=int, default=None,
                        help="tokens per held-out sequence (default: the first run's --max-seq-length)")
    args = parser.parse_args(argv)

    runs = [read_run(folder) for folder in args.runs]
    first = runs[0]
    for run in runs[1:]:
        for key in ("corpus", "corpus_format", "validation_fraction", "seed", "vocab_size"):
            if first["shape"].get(key) != run["shape"].get(key):
                raise SystemExit(f"{first['folder']} and {run['folder']} differ in {key} ({first['shape'].get(key)!r} "
                                 f"and {run['shape'].get(key)!r}): they cannot share held-out sets")
        vocabularies = [open(os.path.join(r["folder"], "tokenizer", "vocab.txt"), encoding="utf-8").read()
                        for r in (first, run)]
        if vocabularies[0] != vocabularies[1]:
            raise SystemExit(f"{first['folder']} and {run['folder']} were trained with different vocabularies")
    shape = first["shape"]
    documents = job.load_documents(shape["corpus"], shape["corpus_format"])
    _, validation_docs = split_documents(documents, shape["validation_fraction"], shape["seed"])
    tokenizer = BertTokenizer.from_pretrained(os.path.join(first["folder"], "tokenizer"))
    vocab = VocabularyInfo.from_tokenizer(tokenizer)
    masker = Masker(vocab, whole_word_masking=shape["whole_word_masking"])
    ids = tokenize_documents(validation_docs, tokenizer)
    length = args.max_seq_length or shape["max_seq_length"]
    for run in runs:
        if run["model"].config.max_position_embeddings < length:
            raise SystemExit(f"{run['folder']}: its model has {run['model'].config.max_position_embeddings} "
                             f"positions, fewer than --max-seq-length {length}")
    held_out = {   # each masked as its run masked it
        name: ArrayDataset(job.validation_arrays(ids, vocab, masker, length, shape["seed"], packed), 32, shuffle=False)
        for name, packed in (("sentence pairs (bert's)", False), ("packed sentences (roberta's)", True))
    }
    print(f"Held-out sequences of {length} tokens.\n")
    print("| run | recipe | steps x batch x length, peak lr | tokens seen | "
          + " | ".join(f"held-out {name}: MLM loss / accuracy" for name in held_out) + " |")
    print("|---|---|---|---|" + "---|" * len(held_out))
    for run in runs:
        scores = [evaluate_pretraining(run["model"], dataset, args.eval_batches, nsp=False)
                  for dataset in held_out.values()]
        steps, batch = run["results"]["steps"], run["shape"]["batch_size"] * run["shape"]["accumulation"]
        trained_length = run["shape"]["max_seq_length"]
        print(f"| {os.path.basename(os.path.normpath(run['folder']))} | {run['shape'].get('recipe', 'bert')} | "
              f"{steps} x {batch} x {trained_length}, {run['learning_rate']:g} | {steps * batch * trained_length:,} | "
              + " | ".join(f"{s['mlm_loss']:.3f} / {s['mlm_accuracy']:.3f} ({s['masked_tokens']:,} tokens)"
                           for s in scores) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
