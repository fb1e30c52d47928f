"""Data parallel on one machine: one process with 2 threads against 2 processes with 1 thread.

    python benchmarks/data_parallel.py                        # small and base, then the all-reduce
    python benchmarks/data_parallel.py --presets small --steps 5
    python benchmarks/data_parallel.py --cost-model           # only the table of docs/distributed.md

For each preset (float32, global batch 8 x sequence 128, 15% of positions labelled, dropout
0.1, the Trainer's full step: batch, forward, backward, gradient synchronisation, clipping,
AdamW) it times:

    1 process, 2 BLAS threads, batch 8
    2 processes (mpiexec -n 2), 1 thread each, batch 4 each, buckets all-reduced during backward
    the same without overlap (every bucket all-reduced after backward)

and reports tokens/s (median step), the time each step spends waiting in the gradient
synchronisation, and the overlap gain (step time without overlap minus with). Then the
bandwidth of an MPI all-reduce of a float32 buffer between the two processes.

Two processes also split the element-wise work (GELU, LayerNorm, softmax, AdamW), which
NumPy runs on one thread; the matrix products are split between the processes instead of
between BLAS threads.

The cost model: all-reduce time = 2 (N-1)/N x gradient bytes / link bandwidth (a ring), and
compute time from FLOPs = 6 x parameters x tokens at an assumed sustained GPU rate (stated
in the table); see docs/distributed.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))
BATCH, LENGTH = 8, 128


# ---------------------------------------------------------------------------- one run (a worker)
def worker(preset: str, global_batch: int, steps: int, overlap: bool, warmup: int = 1) -> None:
    """Time ``steps`` Trainer steps (after ``warmup``); rank 0 prints one JSON line."""
    import numpy as np

    from minibert.data.pretraining import ArrayDataset
    from minibert.distributed import world
    from minibert.fast.cpu import keep_freed_memory
    from minibert.modeling import BertConfig, BertForPreTraining
    from minibert.training import Trainer, TrainingArguments

    comm = world()
    config = BertConfig.preset(preset)
    rng = np.random.default_rng(0)
    n = global_batch * (warmup + steps)
    ids = rng.integers(5, config.vocab_size, (n, LENGTH)).astype(np.int32)
    labels = np.where(rng.random(ids.shape) < 0.15, ids, -100).astype(np.int32)
    types = np.zeros_like(ids)
    types[:, LENGTH // 2:] = 1
    arrays = {"input_ids": ids, "token_type_ids": types, "attention_mask": np.ones_like(ids), "labels": labels,
              "next_sentence_label": rng.integers(0, 2, n).astype(np.int32)}
    model = BertForPreTraining(config, seed=0)
    args = TrainingArguments(output_dir=None, checkpoints=False, progress=False, max_steps=warmup + steps,
                             warmup_steps=0, overlap_communication=overlap)
    trainer = Trainer(model, args, ArrayDataset(arrays, global_batch, shuffle=False), communicator=comm)
    keep_freed_memory()                        # as Trainer.train does
    trainer.model.train()

    waited = []                                # seconds each step spent in synchronize()
    synchronize = trainer.data_parallel.synchronize

    def timed_synchronize():
        start = time.perf_counter()
        synchronize()
        waited.append(time.perf_counter() - start)

    trainer.data_parallel.synchronize = timed_synchronize
    seconds = []
    for _ in range(warmup + steps):
        comm.barrier()
        start = time.perf_counter()
        trainer._train_step()
        seconds.append(time.perf_counter() - start)
    step = statistics.median(seconds[warmup:])
    sync = statistics.median(waited[warmup:])
    if comm.is_main:
        print(json.dumps({"preset": preset, "processes": comm.size, "overlap": overlap, "step_s": step,
                          "sync_s": sync, "tokens_per_s": global_batch * LENGTH / step,
                          "gradient_mb": trainer.data_parallel.flat.nbytes / 1e6 if comm.size > 1 else None,
                          "buckets": len(trainer.data_parallel.buckets) if comm.size > 1 else None}))


def allreduce_bandwidth(megabytes: int, repeats: int) -> None:
    """Median time of a SUM all-reduce of ``megabytes`` of float32; rank 0 prints the bus bandwidth."""
    import numpy as np

    from minibert.distributed import world

    comm = world()
    buffer = np.ones(megabytes * 2 ** 20 // 4, dtype=np.float32)
    times = []
    for _ in range(repeats + 1):
        comm.barrier()
        start = time.perf_counter()
        comm.all_reduce(buffer)
        times.append(time.perf_counter() - start)
    seconds = statistics.median(times[1:])
    n = comm.size
    if comm.is_main:
        # the bytes each rank sends in a ring all-reduce: 2 (N-1)/N x the buffer
        print(json.dumps({"megabytes": megabytes, "seconds": seconds,
                          "bus_gb_per_s": 2 * (n - 1) / n * buffer.nbytes / seconds / 1e9}))


# ---------------------------------------------------------------------------- the driver
def _run(command, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
           "MKL_NUM_THREADS": str(threads), "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(presets, steps: int) -> None:
    python = [sys.executable, HERE]
    mpi = ["mpiexec", "-n", "2", sys.executable, HERE]
    print(f"load average before: {os.getloadavg()[0]:.2f} (figures are clean only on a quiet machine)")
    print(f"{'preset':<7} {'run':<34} {'s/step':>7} {'tokens/s':>9} {'sync s':>7}")
    for preset in presets:
        one = _run([*python, "worker", preset, str(BATCH), str(steps), "1"], threads=2)
        two = _run([*mpi, "worker", preset, str(BATCH), str(steps), "1"], threads=1)
        serial = _run([*mpi, "worker", preset, str(BATCH), str(steps), "0"], threads=1)
        for label, r in (("1 process x 2 threads", one), ("2 processes x 1 thread, overlap", two),
                         ("2 processes x 1 thread, no overlap", serial)):
            print(f"{preset:<7} {label:<34} {r['step_s']:>7.3f} {r['tokens_per_s']:>9.0f} {r['sync_s']:>7.3f}")
        print(f"{preset:<7} 2 processes / 1 process: {two['tokens_per_s'] / one['tokens_per_s']:.2f}x; overlap gain "
              f"{serial['step_s'] - two['step_s']:+.3f} s/step ({two['buckets']} buckets, "
              f"{two['gradient_mb']:.0f} MB of gradients)")
    for megabytes in (4, 64, 256):
        r = _run([*mpi, "allreduce", str(megabytes), "5"], threads=1)
        print(f"all-reduce of {megabytes} MB float32 between 2 processes: {r['seconds'] * 1e3:.1f} ms, "
              f"bus bandwidth {r['bus_gb_per_s']:.2f} GB/s")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


# ---------------------------------------------------------------------------- the cost model
MODELS = {"base": 110e6, "large": 335e6}          # parameters
LINKS = {"NVLink (450 GB/s)": 450e9, "100 Gb/s network": 12.5e9}
GPU_FLOPS = 300e12          # assumed sustained float16 matmul rate of one H100 in a training step
TOKENS_PER_GPU = 32 * 128   # per-GPU micro-batch: 32 sequences of 128 tokens


def cost_model() -> None:
    """Per-step time on N GPUs: compute + all-reduce, with and without overlap and accumulation."""
    print(f"per GPU: {TOKENS_PER_GPU} tokens per micro-batch at {GPU_FLOPS / 1e12:.0f} TFLOP/s; float32 gradients")
    print("| model | GPUs | link | compute ms | all-reduce ms | efficiency | with overlap "
          "| overlap + 4x accumulation |")
    print("|---|---|---|---|---|---|---|---|")
    for model, params in MODELS.items():
        compute = 6 * params * TOKENS_PER_GPU / GPU_FLOPS               # forward 2, backward 4 FLOPs/param/token
        backward = compute * 2 / 3                                      # the part communication can hide behind
        for n in (8, 64, 512):
            for link, bandwidth in LINKS.items():
                comm = 2 * (n - 1) / n * params * 4 / bandwidth
                plain = compute / (compute + comm)
                overlapped = compute / (compute + max(0.0, comm - backward))
                accumulated = 4 * compute / (4 * compute + max(0.0, comm - backward))
                print(f"| {model} | {n} | {link} | {compute * 1e3:.0f} | {comm * 1e3:.0f} | {plain:.0%} | "
                      f"{overlapped:.0%} | {accumulated:.0%} |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        preset, batch, steps, overlap = sys.argv[2:6]
        worker(preset, int(batch), int(steps), overlap == "1")
        return
    if len(sys.argv) > 1 and sys.argv[1] == "allreduce":
        allreduce_bandwidth(int(sys.argv[2]), int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--presets", nargs="+", default=["small", "base"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run (after one warm-up step)")
    parser.add_argument("--cost-model", action="store_true", help="print only the cost-model table")
    args = parser.parse_args()
    if not args.cost_model:
        measure(args.presets, args.steps)
    cost_model()


if __name__ == "__main__":
    main()
