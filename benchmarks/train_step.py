"""Time one full pretraining step: forward, backward and an SGD update.

    python benchmarks/train_step.py                       # tiny, mini, small, base
    python benchmarks/train_step.py --presets small --steps 5
    python benchmarks/train_step.py --device cuda --fp16  # on a GPU, mixed precision on both sides

GPU mode (``--device cuda``, needs CuPy and a GPU; PyTorch is timed there when it sees the
GPU): the model and the batch live on the device, each step ends with a device
synchronisation before the clock stops, and "peak MB" is the device memory: CuPy's memory
pool for minibert, ``torch.cuda.max_memory_allocated`` for transformers. ``--fp16``: minibert
multiplies in float16 with float32 weights and a dynamic loss scale
(``set_matmul_dtype`` + ``DynamicLossScaler``), transformers runs under ``torch.autocast``
with a ``GradScaler``. --fp16 needs --device cuda (NumPy's float16 products on a CPU are slow).

Batch 8 x sequence 128 with 15% of positions labelled for MLM, NSP labels, dropout 0.1,
float32. Each (framework, preset) runs in a fresh subprocess so its peak memory (max RSS)
is its own. When torch and transformers are installed, transformers' BertForPreTraining
is timed the same way (same threads) and the ratio is printed.

FLOPs count the work each implementation actually does: 6 x parameters-used x tokens for
the matrix products (2 forward, 4 backward), plus attention's two T x T products, plus the
vocabulary projection: minibert scores only the labelled positions (as original BERT), and
its last layer computes the part after attention only for those rows and [CLS]
(``output_positions``); transformers computes and scores every position.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time

PRESETS = ["tiny", "mini", "small", "base"]


def matmul_flops(config, batch, length, scored_positions, last_layer_rows=None):
    """Multiply-add FLOPs of one training step (forward + backward = 3 x forward).

    ``last_layer_rows``: the rows the last layer computes after attention (minibert: the
    scored positions and the [CLS] rows; transformers: every position).
    """
    h, i, n_layers, v = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    tokens = batch * length
    rows = tokens if last_layer_rows is None else last_layer_rows
    attention = 2 * tokens * 3 * h * h + 2 * 2 * batch * length * length * h   # Q, K, V; scores and context
    after_attention = 2 * (h * h + 2 * h * i)                     # output projection, two FFN matrices, per row
    forward = n_layers * attention + (n_layers - 1) * tokens * after_attention + rows * after_attention
    forward += 2 * scored_positions * (h * h + h * v)             # MLM transform + decoder
    forward += 2 * batch * (h * h + 2 * h)                        # pooler + NSP
    return 3 * forward


def make_batch(config, batch, length, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = rng.integers(5, config.vocab_size, (batch, length))
    types = np.zeros_like(ids)
    types[:, length // 2:] = 1
    mask = np.ones_like(ids)
    labels = np.full_like(ids, -100)
    chosen = rng.random(ids.shape) < 0.15
    labels[chosen] = rng.integers(5, config.vocab_size, int(chosen.sum()))
    nsp = rng.integers(0, 2, batch)
    return ids, types, mask, labels, nsp


def run_one(framework, preset, batch, length, steps, threads, device="cpu", fp16=False):
    """Runs in a subprocess: returns a dict of timings for one framework and preset."""
    import resource

    import numpy as np

    from minibert.modeling import BertConfig

    config = BertConfig.preset(preset)
    ids, types, mask, labels, nsp = make_batch(config, batch, length)
    scored = int((labels != -100).sum())
    times = []
    device_peak_mb = None
    if framework == "minibert":
        from minibert.backend import to_device
        from minibert.modeling import BertForPreTraining
        from minibert.optim import SGD, DynamicLossScaler

        model = BertForPreTraining(config, seed=0, device=device)
        optimizer = SGD(model.named_parameters(), lr=1e-4)       # in place, like torch's SGD
        scaler = None
        if fp16:
            model.set_matmul_dtype(np.float16)
            scaler = DynamicLossScaler()
        sync = lambda: None                                      # noqa: E731
        if device == "cuda":
            import cupy

            ids, types, mask, labels, nsp = (to_device(a, "cuda") for a in (ids, types, mask, labels, nsp))
            sync = cupy.cuda.Device().synchronize
        for step in range(steps + 1):
            sync()
            start = time.perf_counter()
            out = model.forward(ids, types, mask, labels=labels, next_sentence_label=nsp)
            optimizer.zero_grad()
            if scaler is None:
                model.backward()
                optimizer.step()
            else:
                model.backward(mlm_weight=scaler.scale, nsp_weight=scaler.scale)
                if scaler.unscale(model.named_parameters()):
                    optimizer.step()
                scaler.update()
            sync()
            times.append(time.perf_counter() - start)
        loss = out.loss
        if device == "cuda":
            device_peak_mb = cupy.get_default_memory_pool().total_bytes() / 2**20
        cls_rows = np.arange(batch) * length
        last_rows = np.union1d(np.flatnonzero(labels.reshape(-1) != -100), cls_rows).size
        flops = matmul_flops(config, batch, length, scored, last_layer_rows=last_rows)
    else:
        import torch
        import transformers

        torch.set_num_threads(threads)
        hf = transformers.BertConfig(**{k: v for k, v in config.to_dict().items()
                                        if k not in ("model_type", "attn_implementation")},
                                     attn_implementation="eager")
        torch.manual_seed(0)
        model = transformers.BertForPreTraining(hf).train().to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
        tensors = [torch.from_numpy(a).to(device) for a in (ids, types, mask, labels, nsp)]
        cuda = device == "cuda"
        sync = torch.cuda.synchronize if cuda else (lambda: None)
        scaler = torch.amp.GradScaler("cuda") if fp16 and cuda else None
        autocast = (lambda: torch.autocast(device_type=device, dtype=torch.float16)) if fp16 and cuda \
            else contextlib.nullcontext
        for step in range(steps + 1):
            sync()
            start = time.perf_counter()
            with autocast():
                out = model(input_ids=tensors[0], token_type_ids=tensors[1], attention_mask=tensors[2],
                            labels=tensors[3], next_sentence_label=tensors[4])
            optimizer.zero_grad()
            if scaler is None:
                out.loss.backward()
                optimizer.step()
            else:
                scaler.scale(out.loss).backward()
                scaler.step(optimizer)
                scaler.update()
            sync()
            times.append(time.perf_counter() - start)
        loss = out.loss.item()
        if cuda:
            device_peak_mb = torch.cuda.max_memory_allocated() / 2**20
        flops = matmul_flops(config, batch, length, batch * length)
    step_time = float(np.median(times[1:]))                     # the first step warms caches up
    peak_mb = device_peak_mb if device_peak_mb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"framework": framework, "preset": preset, "step_s": step_time,
            "tokens_per_s": batch * length / step_time, "gflops": flops / step_time / 1e9,
            "peak_mb": peak_mb, "loss": float(loss)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=PRESETS)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per run (median reported)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for PyTorch")
    parser.add_argument("--no-torch", action="store_true", help="skip the transformers reference")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--fp16", action="store_true", help="mixed precision on both sides (for a GPU)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        framework, preset = args.worker.split(":")
        print(json.dumps(run_one(framework, preset, args.batch, args.length, args.steps, args.threads,
                                 args.device, args.fp16)))
        return
    if args.fp16 and args.device != "cuda":
        raise SystemExit("--fp16 is a GPU mode (NumPy's float16 products on a CPU are slow): add --device cuda")
    if args.device == "cuda":
        from minibert.backend import cuda_available

        if not cuda_available():
            raise SystemExit("--device cuda needs CuPy and a visible CUDA GPU")

    frameworks = ["minibert"]
    if not args.no_torch:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401

            if args.device == "cuda" and not torch.cuda.is_available():
                print("this PyTorch does not see the GPU: timing minibert only")
            else:
                frameworks.append("transformers")
        except ImportError:
            print("torch/transformers not installed: timing minibert only "
                  "(pip install 'minibert[reference]' for the side-by-side figures)")
    where = "GPU" if args.device == "cuda" else f"{os.cpu_count()} cores"
    precision = "float16 products, float32 weights" if args.fp16 else "float32"
    print(f"training step, batch {args.batch} x sequence {args.length}, {precision}, 15% MLM positions, "
          f"{where}, median of {args.steps} steps")
    header = f"{'preset':<7}{'framework':<14}{'s/step':>8}{'tokens/s':>10}{'GFLOP/s':>9}{'peak MB':>9}"
    print(header + f"{'speed-up':>10}")
    for preset in args.presets:
        results = {}
        for framework in frameworks:
            cmd = [sys.executable, __file__, "--worker", f"{framework}:{preset}", "--batch", str(args.batch),
                   "--length", str(args.length), "--steps", str(args.steps), "--threads", str(args.threads),
                   "--device", args.device] + (["--fp16"] if args.fp16 else [])
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"{preset:<7}{framework:<14} failed:\n{done.stderr[-2000:]}")
                continue
            r = results[framework] = json.loads(done.stdout.strip().splitlines()[-1])
            ratio = ""
            if framework == "transformers" and "minibert" in results:
                ratio = f"{results['minibert']['tokens_per_s'] / r['tokens_per_s']:>9.2f}x"
            print(f"{preset:<7}{framework:<14}{r['step_s']:>8.3f}{r['tokens_per_s']:>10.0f}"
                  f"{r['gflops']:>9.1f}{r['peak_mb']:>9.0f}{ratio:>10}", flush=True)
    if "transformers" in frameworks:
        print("speed-up = minibert tokens/s / transformers tokens/s (transformers scores every position "
              "in the MLM head, so its GFLOP/s counts more work per token)")


if __name__ == "__main__":
    main()
