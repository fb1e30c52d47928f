"""Extractive question answering on a SQuAD v1.1-format file, scored with exact match and F1.

    python examples/question_answering.py        # SMOKE DEMONSTRATION on tests/fixtures/squad_tiny.json
    python examples/question_answering.py --train train-v1.1.json --eval dev-v1.1.json --model DIR

The model reads ``[CLS] question [SEP] context [SEP]`` and scores every token as the start
and as the end of the answer (minibert.heads.BertForQuestionAnswering); the answer is the
best-scoring valid span, cut from the original context (minibert.data.finetuning). Exact
match and F1 are SQuAD v1.1's official definitions (minibert/data/squad_metric.py).

By default this trains AND evaluates on the same 13 hand-written questions of the test
fixture: a smoke demonstration that the whole pipeline works end to end (windows, span
targets, training, span search, metric) and that the model can fit the answers. It says
nothing about answering new questions; for that give a real training file and a separate
evaluation file. The default model, all-MiniLM-L6-v2, was trained for sentence similarity,
not question answering, so it starts near zero.
"""

import argparse
import json
import os
import time
import warnings

from minibert.data.finetuning import postprocess_squad, prepare_squad_features, read_squad
from minibert.data.squad_metric import squad_evaluate
from minibert.sentence_embeddings import find_minilm
from minibert.finetune import FineTuner, FineTuningArguments, predict, squad_compute_metrics
from minibert.heads import BertForQuestionAnswering
from minibert.tokenization import BertTokenizer

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tests", "fixtures", "squad_tiny.json")

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--train", default=os.path.normpath(FIXTURE), metavar="FILE", help="SQuAD v1.1 JSON to train on")
parser.add_argument("--eval", default=None, metavar="FILE", help="SQuAD v1.1 JSON to evaluate on (default: --train)")
parser.add_argument("--model", default=None, metavar="DIR", help="BERT folder (default: all-MiniLM-L6-v2)")
parser.add_argument("--epochs", type=int, default=20)
parser.add_argument("--batch-size", type=int, default=4)
parser.add_argument("--lr", type=float, default=1.5e-4)
parser.add_argument("--max-length", type=int, default=384, help="tokens per window")
parser.add_argument("--doc-stride", type=int, default=128, help="context tokens between window starts")
parser.add_argument("--output", default="runs/question-answering", metavar="DIR")
parser.add_argument("--seed", type=int, default=0)
args = parser.parse_args()
start = time.perf_counter()
smoke = args.eval is None or os.path.abspath(args.eval) == os.path.abspath(args.train)
if smoke:
    print("SMOKE DEMONSTRATION: training and evaluating on the same questions "
          "(shows the pipeline works, not how well new questions are answered)")

# 1. Data: questions and contexts, cut into windows with the answer's token span as target.
directory = args.model or find_minilm()
tokenizer = BertTokenizer.from_pretrained(directory)
train_examples = read_squad(args.train)
eval_examples = train_examples if args.eval is None else read_squad(args.eval)
window = dict(max_length=args.max_length, doc_stride=args.doc_stride)
train_set = prepare_squad_features(train_examples, tokenizer, **window)
eval_set = prepare_squad_features(eval_examples, tokenizer, **window)
print(f"{len(train_examples)} training questions -> {len(train_set)} windows; "
      f"{len(eval_examples)} evaluation questions -> {len(eval_set)} windows")

# 2. Model: the pretrained encoder and a new qa_outputs layer (H -> 2: start and end scores).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", UserWarning)                  # the new layer, reported below
    model = BertForQuestionAnswering.from_pretrained(directory, seed=args.seed)
print(f"{directory}: new {', '.join(model.loading_info.missing_keys)}")


def answers(model):
    logits = predict(model, eval_set)                                            # (F, T, 2)
    return postprocess_squad(eval_examples, eval_set, logits[..., 0], logits[..., 1])


before = squad_evaluate(eval_examples, answers(model))
print(f"before fine-tuning: exact match {before['exact_match']:.1f}, F1 {before['f1']:.1f}")

# 3. Fine-tuning, validated on exact match / F1 (the best weights are kept).
settings = FineTuningArguments(epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                               warmup_ratio=0.1, metric="f1", eval_every=-(-len(train_set) // args.batch_size),   # once an epoch
                               seed=args.seed, progress=False, output_dir=args.output)
result = FineTuner(model, settings, train_set, eval_set, compute_metrics=squad_compute_metrics(eval_examples),
                   tokenizer=tokenizer).train()

# 4. Scores and every answer (for a small file).
predictions = answers(model)
after = squad_evaluate(eval_examples, predictions)
print(f"\nafter {result.steps} steps ({result.train_seconds:.0f} s): exact match {after['exact_match']:.1f}, "
      f"F1 {after['f1']:.1f} over {after['questions']} questions"
      + ("  [same questions as training: smoke demonstration]" if smoke else ""))
for example in eval_examples[:20]:
    print(f"  {example.question}\n      predicted {predictions[example.id]!r}; "
          f"gold {[a.text for a in example.answers]}")
wall = time.perf_counter() - start
print(f"wall time {wall:.0f} s; loss curves: {result.plot}")
with open(os.path.join(args.output, "results.json"), "w", encoding="utf-8") as f:
    json.dump({"train": args.train, "eval": args.eval or args.train, "smoke_demonstration": smoke,
               "model": directory, "before": before, "after": after, "steps": result.steps,
               "predictions": predictions, "wall_seconds": wall}, f, indent=2)
