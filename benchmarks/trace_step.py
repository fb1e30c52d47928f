"""What a learner passes through to follow one pretraining step: the library functions it runs.

    python benchmarks/trace_step.py                 # speed-ups as the registry chooses
    python benchmarks/trace_step.py --reference     # every op's reference implementation

Traces ``Trainer._train_step`` (the batch with its dynamic masks, forward, loss, backward,
clipping, the AdamW update) of a tiny BertForPreTraining with dropout, on the CPU in
float32, as ``minibert pretrain`` runs it, and lists every function defined in the
``minibert`` package that the step calls at least once (comprehensions left out), by file.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from minibert import BertConfig, BertForPreTraining, Trainer, TrainingArguments  # noqa: E402
from minibert.data.pretraining import ArrayDataset, DynamicMasking, Masker, VocabularyInfo  # noqa: E402
from minibert.registry import reference_only  # noqa: E402


def tiny_trainer(folder: str) -> Trainer:
    vocab = VocabularyInfo(vocab_size=64, pad_id=0, cls_id=2, sep_id=3, mask_id=4,
                           never_selected=np.array([0, 2, 3, 4]), replacement_ids=np.arange(5, 64),
                           is_continuation=np.zeros(64, bool))
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 64, (16, 12))
    ids[:, 0], ids[:, 6] = vocab.cls_id, vocab.sep_id
    mask = np.ones_like(ids)
    mask[::3, -3:] = 0                                   # some padding
    ids[mask == 0] = vocab.pad_id
    types = np.zeros_like(ids)
    types[:, 7:] = 1
    data = ArrayDataset({"input_ids": ids, "token_type_ids": types, "attention_mask": mask,
                         "next_sentence_label": rng.integers(0, 2, 16)}, 4, seed=0, drop_last=True)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=16)
    args = TrainingArguments(output_dir=folder, max_steps=10, learning_rate=1e-3, warmup_steps=2,
                             progress=False)
    return Trainer(BertForPreTraining(config, seed=0), args, data,
                   masking=DynamicMasking(Masker(vocab, masked_lm_prob=0.3), seed=0))


def trace(reference: bool) -> set:
    package = os.path.join(ROOT, "minibert") + os.sep
    seen = set()

    def record(frame, event, _arg):
        code = frame.f_code
        if event == "call" and code.co_filename.startswith(package) and not code.co_name.startswith("<"):
            seen.add((os.path.relpath(code.co_filename, ROOT), code.co_name, code.co_firstlineno))

    with tempfile.TemporaryDirectory() as folder:
        trainer = tiny_trainer(folder)
        trainer.model.train()
        trainer._train_step()                            # first use: imports and caches
        with reference_only() if reference else contextlib.nullcontext():
            sys.setprofile(record)
            try:
                trainer._train_step()
            finally:
                sys.setprofile(None)
    return seen


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", action="store_true", help="speed-ups off (registry.reference_only)")
    args = parser.parse_args(argv)
    seen = trace(args.reference)
    files = sorted({path for path, _, _ in seen})
    print(f"one pretraining step: {len(seen)} functions in {len(files)} files"
          + (" (reference ops only)" if args.reference else ""))
    for path in files:
        names = sorted(name for p, name, _ in seen if p == path)
        print(f"  {path} ({len(names)}): {', '.join(names)}")


if __name__ == "__main__":
    main()
