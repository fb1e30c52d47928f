"""Attention benchmark: naive vs flash (tiled) attention, forward and backward, time and memory.

    python benchmarks/attention.py                   # CPU: T = 128, 512, 2048; B=8, N=12, D=64
    python benchmarks/attention.py --quick           # CPU: T = 128, 512, one repeat
    python benchmarks/attention.py --lengths 2048 --only naive flash --repeats 3
    python benchmarks/attention.py --device cuda     # GPU: CUDA kernels vs naive CuPy vs torch

CPU mode. Every (implementation, sequence length) runs in its own subprocess, so that its
peak memory is its own. Inputs q, k, v and the upstream gradient do are float32
(B, N, T, D) arrays made before measuring; each repeat times one forward and one backward
(median of ``--repeats``). Peak extra memory is the growth of the process's resident-set
high-water mark over what it held once the inputs existed (Linux: VmHWM, reset through
/proc/self/clear_refs; elsewhere ``ru_maxrss``): everything the op allocates, outputs
(o, dq, dk, dv) and caches included. It is read after the first forward ("fwd") and at
the end ("fwd+bwd"). A warm-up at T=64 runs first in each process.

* ``naive``  minibert.ops.attention: the full (T, T) score and probability matrices;
* ``flash``  minibert.ops.flash_attention: tiles of (block_q x block_k) scores, online softmax;
* ``torch``  torch.nn.functional.scaled_dot_product_attention on the CPU (when PyTorch is
  installed), with ``--threads`` threads (2 by default, like NumPy's BLAS here).

GFLOP/s count the matrix products only, 4 B N T^2 D for the forward and 2.5 times that for
the backward (the usual convention for attention; flash's backward does one product more,
which is not counted).

GPU mode (``--device cuda``, needs CuPy and a GPU): minibert's CUDA flash-attention kernels
(minibert.fast.cuda) -- version 1 (``minibert-v1``, CUDA cores, float16 and float32) and
version 2 (``minibert-v2``, tensor cores, float16 and bfloat16, head sizes 64 and 128) --
against the naive op on CuPy arrays (float32, the naive op has no float16 softmax) and,
when PyTorch sees the GPU, torch's scaled_dot_product_attention (float16, bfloat16,
float32), in TFLOP/s with the same FLOP count, timed with CUDA events after a warm-up.
Every minibert kernel is first checked against the NumPy reference op at T=70.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMPLEMENTATIONS = ("naive", "flash", "torch")


def attention_flops(batch, heads, length, head_size):
    """(forward, backward) FLOPs of attention's matrix products, the usual convention."""
    forward = 4 * batch * heads * length * length * head_size
    return forward, 2.5 * forward


class PeakMemory:
    """The growth of this process's resident memory high-water mark since ``reset()``, in MB.

    On Linux the high-water mark (VmHWM) can be reset by writing 5 to /proc/self/clear_refs,
    so the figure is the op's own. Elsewhere it falls back to ``ru_maxrss``, which cannot
    be reset (a peak from before the measurement then hides a smaller one).
    """

    def __init__(self):
        self.proc = os.path.exists("/proc/self/clear_refs")
        self.base = 0.0

    @staticmethod
    def _status_mb(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024           # kB
        raise RuntimeError(f"{field} not in /proc/self/status")

    def _high_water_mb(self):
        if self.proc:
            return self._status_mb("VmHWM")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10   # bytes on macOS, KiB elsewhere

    def reset(self):
        if self.proc:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                self.proc = False
        self.base = self._status_mb("VmRSS") if self.proc else self._high_water_mb()

    def extra_mb(self):
        return self._high_water_mb() - self.base


# ============================================================================ CPU worker
def _numpy_runner(name, args, length):
    import numpy as np

    sys.path.insert(0, ROOT)
    from minibert.ops.attention import attention_backward, attention_forward
    from minibert.ops.flash_attention import flash_attention_backward, flash_attention_forward

    rng = np.random.default_rng(0)
    shape = (args.batch, args.heads, length, args.head_size)            # (B, N, T, D)
    q, k, v, do = (rng.standard_normal(shape, dtype=np.float32) for _ in range(4))
    mask = None
    if args.padding:                                  # a quarter of the batch padded to half length
        mask = np.zeros((args.batch, 1, 1, length), np.float32)
        mask[: max(1, args.batch // 4), ..., length // 2:] = np.finfo(np.float32).min
    if name == "naive":
        def forward():
            return attention_forward(q, k, v, mask)
        backward = attention_backward
    else:
        def forward():
            return flash_attention_forward(q, k, v, mask, block_q=args.block_q, block_k=args.block_k)
        backward = flash_attention_backward
    return forward, backward, do


def _torch_runner(args, length):
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = (args.batch, args.heads, length, args.head_size)
    q, k, v = (torch.randn(shape, requires_grad=True) for _ in range(3))
    do = torch.randn(shape)
    mask = None
    if args.padding:
        mask = torch.zeros((args.batch, 1, 1, length))
        mask[: max(1, args.batch // 4), ..., length // 2:] = torch.finfo(torch.float32).min

    def forward():
        for t in (q, k, v):
            t.grad = None
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return out, out                                # autograd's graph is the cache

    def backward(grad, out):
        out.backward(grad)
        return q.grad, k.grad, v.grad

    return forward, backward, do


def run_worker(args):
    def runner(length):
        if args.worker == "torch":
            return _torch_runner(args, length)
        return _numpy_runner(args.worker, args, length)

    forward, backward, do = runner(64)                 # warm-up on a small problem: first-call costs
    backward(do, forward()[1])
    forward, backward, do = runner(args.length)
    memory = PeakMemory()
    memory.reset()
    fwd_times, bwd_times, peak_fwd = [], [], None
    for _ in range(args.repeats):
        start = time.perf_counter()
        out, cache = forward()
        middle = time.perf_counter()
        if peak_fwd is None:
            peak_fwd = memory.extra_mb()
        grads = backward(do, cache)
        end = time.perf_counter()
        fwd_times.append(middle - start)
        bwd_times.append(end - middle)
        del out, cache, grads
    print(json.dumps({"impl": args.worker, "length": args.length,
                      "fwd_s": statistics.median(fwd_times), "bwd_s": statistics.median(bwd_times),
                      "both_s": statistics.median(f + b for f, b in zip(fwd_times, bwd_times)),
                      "peak_fwd_mb": peak_fwd, "peak_both_mb": memory.extra_mb(),
                      "runs_fwd": fwd_times, "runs_bwd": bwd_times}))


# ============================================================================ CPU driver
def _torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _check_agreement(args):
    """A fast wrong answer must not pass: flash (and torch) against naive at a small size."""
    import numpy as np

    sys.path.insert(0, ROOT)
    from minibert.ops.attention import attention_backward, attention_forward
    from minibert.ops.flash_attention import flash_attention_backward, flash_attention_forward

    rng = np.random.default_rng(1)
    q, k, v, do = (rng.standard_normal((2, 3, 100, args.head_size), dtype=np.float32) for _ in range(4))
    o, cache = attention_forward(q, k, v)
    grads = attention_backward(do, cache)
    of, cache = flash_attention_forward(q, k, v, block_q=args.block_q, block_k=args.block_k)
    grads_f = flash_attention_backward(do, cache)
    worst = max(float(np.abs(a - b).max()) for a, b in zip((o, *grads), (of, *grads_f)))
    line = f"agreement at T=100 (float32): flash vs naive max |diff| {worst:.1e}"
    if "torch" in args.only and _torch_available():
        import torch

        tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
        to = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)
        to.backward(torch.tensor(do))
        worst_t = max(float(np.abs(a - b.detach().numpy()).max())
                      for a, b in zip((o, *grads), (to, tq.grad, tk.grad, tv.grad)))
        line += f", torch vs naive {worst_t:.1e}"
    print(line)
    if worst > 1e-4:
        raise SystemExit("flash attention disagrees with the naive op: not benchmarking a wrong answer")


def run_cpu(args):
    if "torch" in args.only and not _torch_available():
        print("PyTorch is not installed: torch SDPA is left out")
        args.only = [name for name in args.only if name != "torch"]
    print(f"CPU attention, float32, B={args.batch} N={args.heads} D={args.head_size}, "
          f"flash tiles {args.block_q}x{args.block_k}, median of {args.repeats}, "
          f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), torch threads {args.threads}"
          + (", padding mask" if args.padding else ", no mask"))
    _check_agreement(args)
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads))
    cases = []                                        # (implementation, block_q, block_k)
    for name in args.only:
        if name == "flash" and args.tiles:
            cases += [("flash", *(int(n) for n in tile.lower().split("x"))) for tile in args.tiles]
        else:
            cases.append((name, args.block_q, args.block_k))
    rows = []
    for length in args.lengths:
        for name, block_q, block_k in cases:
            command = [sys.executable, os.path.abspath(__file__), "--worker", name, "--lengths", str(length),
                       "--batch", str(args.batch), "--heads", str(args.heads), "--head-size", str(args.head_size),
                       "--block-q", str(block_q), "--block-k", str(block_k),
                       "--repeats", str(args.repeats), "--threads", str(args.threads)]
            if args.padding:
                command.append("--padding")
            load = os.getloadavg()[0]
            done = subprocess.run(command, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{name} T={length} failed:\n{done.stderr[-2000:]}")
                continue
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["load"] = load
            if name == "flash" and args.tiles:
                row["impl"] = f"flash {block_q}x{block_k}"
            rows.append(row)
            _print_row(row, args, header=len(rows) == 1)
    _print_ratios(rows)
    return rows


def _print_row(row, args, header=False):
    if header:
        print(f"{'impl':<16} {'T':>5} | {'fwd s':>7} {'bwd s':>7} {'fwd+bwd s':>9} | "
              f"{'GFLOP/s':>7} | {'peak fwd MB':>11} {'peak fwd+bwd MB':>15} | load")
    fwd, bwd = attention_flops(args.batch, args.heads, row["length"], args.head_size)
    print(f"{row['impl']:<16} {row['length']:>5} | {row['fwd_s']:7.3f} {row['bwd_s']:7.3f} {row['both_s']:9.3f} | "
          f"{(fwd + bwd) / row['both_s'] / 1e9:7.1f} | {row['peak_fwd_mb']:11.0f} {row['peak_both_mb']:15.0f} | "
          f"{row['load']:.1f}", flush=True)


def _print_ratios(rows):
    by_key = {(r["impl"], r["length"]): r for r in rows}
    for (impl, length), row in sorted(by_key.items(), key=lambda item: item[0][1]):
        naive = by_key.get(("naive", length))
        if impl == "naive" or naive is None:
            continue
        print(f"T={length}: {impl} / naive: time {row['both_s'] / naive['both_s']:.2f}x, "
              f"peak memory {row['peak_both_mb'] / max(naive['peak_both_mb'], 1e-9):.1%}")


# ============================================================================ GPU
def _bfloat16_bits(cp, x):
    """The bfloat16 bits (uint16) of float32 values, rounded to nearest even (CuPy has no bfloat16)."""
    import numpy as np

    bits = cp.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def _as_float64(x):
    """Host float64 values of a kernel's array (uint16 arrays hold bfloat16 bits)."""
    import numpy as np

    from minibert.backend import to_numpy

    x = to_numpy(x)
    if x.dtype == np.uint16:
        return (x.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return x.astype(np.float64)


def gpu_cases(cp, shape):
    """(label, dtype, forward, backward, (q, k, v, do)) for every minibert CUDA case at ``shape``:
    version 1 in float16 and float32, version 2 in float16 and bfloat16 (head sizes 64 and
    128), and the naive op on CuPy arrays in float32. Inputs are drawn on the host."""
    import numpy as np

    from minibert.fast import cuda as fast_cuda
    from minibert.ops.attention import attention_backward, attention_forward

    rng = np.random.default_rng(0)
    values = [cp.asarray(rng.standard_normal(shape, dtype=np.float32)) for _ in range(4)]
    as_type = {"float32": lambda x: x, "float16": lambda x: x.astype(np.float16),
               "bfloat16": lambda x: _bfloat16_bits(cp, x)}
    cases = []
    for label, dtype, forward, backward in (
            ("minibert-v1", "float16", fast_cuda.flash_attention_forward, fast_cuda.flash_attention_backward),
            ("minibert-v1", "float32", fast_cuda.flash_attention_forward, fast_cuda.flash_attention_backward),
            ("minibert-v2", "float16", fast_cuda.flash_attention_tc_forward, fast_cuda.flash_attention_tc_backward),
            ("minibert-v2", "bfloat16", fast_cuda.flash_attention_tc_forward, fast_cuda.flash_attention_tc_backward),
            ("naive-cupy", "float32", attention_forward, attention_backward)):
        if label == "minibert-v2" and shape[-1] not in fast_cuda.FLASH_TC_HEAD_SIZES:
            continue
        if label == "minibert-v1" and shape[-1] not in fast_cuda.FLASH_HEAD_SIZES:
            continue
        cases.append((label, dtype, forward, backward, tuple(as_type[dtype](x) for x in values)))
    return cases


def check_gpu_agreement(cp, head_size, length=70):
    """A fast wrong answer must not pass: every minibert kernel against the NumPy reference op
    in float64 on the same (rounded) inputs, at (1, 2, length, head_size); 70 rows make a
    partial second tile for both versions. Tolerance: 3e-2 of the largest reference value
    (float16/bfloat16 rounding of the probabilities)."""
    import numpy as np

    from minibert.ops.flash_attention import flash_attention_backward, flash_attention_forward

    worst = {}
    for label, dtype, forward, backward, inputs in gpu_cases(cp, (1, 2, length, head_size)):
        if label == "naive-cupy":
            continue
        q, k, v, do = (_as_float64(x) for x in inputs)
        o_ref, cache = flash_attention_forward(q, k, v)
        expected = (o_ref, *flash_attention_backward(do, cache))
        o, cache = forward(*inputs[:3])
        actual = (o, *backward(inputs[3], cache))
        error = max(float(np.abs(_as_float64(a) - e).max() / np.abs(e).max()) for a, e in zip(actual, expected))
        worst[f"{label} {dtype}"] = error
    print("agreement at T=%d: max |diff| / max |ref| " % length
          + ", ".join(f"{name} {error:.1e}" for name, error in worst.items()))
    if max(worst.values()) > 3e-2:
        raise SystemExit("a CUDA kernel disagrees with the reference op: not benchmarking a wrong answer")
    return worst


def _cuda_event_timer(cp):
    def timed(fn, repeats):
        fn()                                              # warm-up: compilation, allocator
        start, end = cp.cuda.Event(), cp.cuda.Event()
        times = []
        for _ in range(repeats):
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, end) / 1e3)
        return statistics.median(times)
    return timed


def run_cuda(args, cp=None, timer=None, device_name=None, check_length=70):
    """Time minibert's CUDA flash attention (versions 1 and 2), the naive op on CuPy and torch
    SDPA, in TFLOP/s. ``cp``, ``timer`` (fn, repeats) -> seconds, ``device_name`` and
    ``check_length`` replace CuPy, CUDA-event timing, the GPU's name and the agreement
    check's length (the tests run this path on the CUDA emulator, where threads are slow)."""
    sys.path.insert(0, ROOT)
    if cp is None:
        from minibert.backend import cuda_available

        if not cuda_available():
            raise SystemExit("--device cuda needs CuPy and a visible CUDA GPU")
        import cupy as cp
    timer = timer or _cuda_event_timer(cp)
    device_name = device_name or cp.cuda.runtime.getDeviceProperties(0)["name"].decode()

    torch = None
    if _torch_available():
        import torch as _torch

        torch = _torch if _torch.cuda.is_available() else None
    print(f"GPU attention on {device_name}, B={args.batch} N={args.heads} D={args.head_size}, no mask, "
          f"median of {args.repeats}")
    check_gpu_agreement(cp, args.head_size, check_length)
    print(f"{'impl':<16} {'dtype':<8} {'T':>5} | {'fwd TFLOP/s':>11} {'bwd TFLOP/s':>11} {'fwd+bwd TFLOP/s':>15}")
    rows = []
    for length in args.lengths:
        fwd_flops, bwd_flops = attention_flops(args.batch, args.heads, length, args.head_size)
        shape = (args.batch, args.heads, length, args.head_size)
        for label, dtype, forward, backward, (q, k, v, do) in gpu_cases(cp, shape):
            t_fwd = timer(lambda: forward(q, k, v), args.repeats)
            _, cache = forward(q, k, v)
            t_bwd = timer(lambda: backward(do, cache), args.repeats)
            rows.append(_report_gpu(label, dtype, length, fwd_flops, bwd_flops, t_fwd, t_bwd))
        if torch is not None:
            for dtype in (torch.float16, torch.bfloat16, torch.float32):
                q, k, v = (torch.randn(shape, device="cuda", dtype=dtype, requires_grad=True) for _ in range(3))
                do = torch.randn(shape, device="cuda", dtype=dtype)
                sdpa = torch.nn.functional.scaled_dot_product_attention

                def torch_timed(fn):
                    fn()
                    torch.cuda.synchronize()
                    times = []
                    for _ in range(args.repeats):
                        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                        start.record()
                        fn()
                        end.record()
                        torch.cuda.synchronize()
                        times.append(start.elapsed_time(end) / 1e3)
                    return statistics.median(times)

                t_fwd = torch_timed(lambda: sdpa(q, k, v))
                t_both = torch_timed(lambda: sdpa(q, k, v).backward(do))
                rows.append(_report_gpu("torch-sdpa", str(dtype).replace("torch.", ""), length, fwd_flops,
                                        bwd_flops, t_fwd, t_both - t_fwd))
    return rows


def _report_gpu(label, dtype, length, fwd_flops, bwd_flops, t_fwd, t_bwd):
    row = {"impl": label, "dtype": dtype, "length": length, "fwd_tflops": fwd_flops / t_fwd / 1e12,
           "bwd_tflops": bwd_flops / t_bwd / 1e12, "both_tflops": (fwd_flops + bwd_flops) / (t_fwd + t_bwd) / 1e12}
    print(f"{label:<16} {dtype:<8} {length:>5} | {row['fwd_tflops']:11.1f} {row['bwd_tflops']:11.1f} "
          f"{row['both_tflops']:15.1f}", flush=True)
    return row


# ============================================================================ command line
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="T = 128 and 512 only, one repeat")
    parser.add_argument("--lengths", type=int, nargs="+", default=None,
                        help="sequence lengths (default 128 512 2048; GPU 512 1024 2048)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head-size", type=int, default=64)
    parser.add_argument("--block-q", type=int, default=None, help="flash query tile (default: the op's)")
    parser.add_argument("--block-k", type=int, default=None, help="flash key tile (default: the op's)")
    parser.add_argument("--tiles", nargs="+", default=None, metavar="QxK",
                        help="flash tile sizes to compare, e.g. 128x128 128x256 (one flash case each)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per case (default 3, quick 1)")
    parser.add_argument("--threads", type=int, default=2, help="BLAS and torch threads (default 2)")
    parser.add_argument("--padding", action="store_true", help="add a padding mask (a quarter of the batch half padded)")
    parser.add_argument("--only", nargs="+", choices=IMPLEMENTATIONS, default=list(IMPLEMENTATIONS))
    parser.add_argument("--worker", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    sys.path.insert(0, ROOT)
    from minibert.ops.flash_attention import DEFAULT_BLOCK_K, DEFAULT_BLOCK_Q

    args.block_q = args.block_q or DEFAULT_BLOCK_Q
    args.block_k = args.block_k or DEFAULT_BLOCK_K
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    if args.worker:
        args.length = args.lengths[0]
        return run_worker(args)
    if args.lengths is None:
        if args.device == "cuda":
            args.lengths = [512, 1024, 2048] if not args.quick else [512]
        else:
            args.lengths = [128, 512] if args.quick else [128, 512, 2048]
    if args.device == "cuda":
        return run_cuda(args)
    return run_cpu(args)


if __name__ == "__main__":
    main()
