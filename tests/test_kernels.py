"""CUDA kernels (``minibert/fast/cuda.py``): every source compiles with nvcc, the registry
sends an op to its kernel only where the kernel applies, and on a GPU every kernel equals
its reference op.

* source tests run everywhere; compile tests wherever ``nvcc`` is on PATH (skipped with a
  message otherwise);
* registry tests run everywhere: which ops and dtypes have a kernel, under which conditions,
  that NumPy arrays always get the reference ops, and the wrappers' input checks;
* the device tests compare each kernel with its reference op with ``atol + rtol`` over
  several shapes, including sizes that are not multiples of the tiles, padded batches and
  fully masked rows. Each runs on a GPU (``@pytest.mark.gpu``: needs CuPy and a CUDA GPU,
  skipped otherwise) and on the CPU under the CUDA emulator of ``tests/cuda_emulator/``
  (``@pytest.mark.emulated``: needs g++, skipped only without it):

      python -m pytest tests/test_kernels.py -m gpu -v
      python -m pytest -m emulated
"""

import argparse
import inspect
import re
import shutil
import subprocess

import numpy as np
import pytest
from cuda_emulator import MISSING_TOOLCHAIN, compiler, use_emulator

from minibert import registry
from minibert.backend import cuda_available
from minibert.fast import cuda
from minibert.modeling import BertConfig, BertModel
from minibert.ops import adamw_update, cross_entropy_backward, cross_entropy_forward, gelu_backward, gelu_forward
from minibert.ops import layer_norm_backward, layer_norm_forward
from minibert.ops.flash_attention import flash_attention_backward, flash_attention_forward

from conftest import load_script

NVCC = shutil.which("nvcc")

# op -> (forward, backward, dtypes): the kernels the registry must know
KERNELS = {
    "flash_attention": (cuda.flash_attention_forward, cuda.flash_attention_backward, ("float32", "float16")),
    "layer_norm": (cuda.layer_norm_forward, cuda.layer_norm_backward, ("float32",)),
    "gelu": (cuda.gelu_forward, cuda.gelu_backward, ("float32",)),
    "cross_entropy": (cuda.cross_entropy_forward, cuda.cross_entropy_backward, ("float32",)),
    "adamw_update": (cuda.adamw_update, None, ("float32",)),
}
# op -> (forward, backward, dtypes): a second kernel of the op, registered after the first and
# so tried before it (where both apply, this one runs)
TRIED_FIRST = {
    "flash_attention": (cuda.flash_attention_tc_forward, cuda.flash_attention_tc_backward, ("float16", "bfloat16")),
}
WRAPPERS = {f for forward, backward, _ in (*KERNELS.values(), *TRIED_FIRST.values())
            for f in (forward, backward) if f is not None}


# ============================================================================ sources
@pytest.mark.parametrize("filename", cuda.KERNEL_FILES)
def test_source_is_installed_with_the_package(filename):
    source = cuda.kernel_source(filename)
    assert "__global__" in source


@pytest.mark.parametrize("filename", cuda.KERNEL_FILES)
def test_every_kernel_documents_its_launch(filename):
    """Each kernel is preceded by a comment block that states its launch configuration."""
    source = cuda.kernel_source(filename)
    kernels = re.findall(r"__global__ void(?: __launch_bounds__\(\w+\))?\s+(\w+)\(", source)
    assert kernels, f"no kernel found in {filename}"
    for name in kernels:
        before = source[: source.index(name + "(")]
        comment = before[before.rfind("\n\n"):]          # the block just above the kernel
        assert "Launch:" in comment, f"{filename}: kernel {name} has no 'Launch:' comment above it"


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH: CUDA sources not compiled")
@pytest.mark.parametrize("filename, arch", [(f, "sm_90") for f in cuda.KERNEL_FILES]
                         + [("flash_attention_tc.cu", "sm_80")])        # the oldest with bfloat16 wmma
def test_source_compiles_with_nvcc(filename, arch, tmp_path):
    """PTX for sm_90 (and sm_80 for the tensor-core kernels) with every template variant the
    loader asks for (MINIBERT_INSTANTIATE_ALL)."""
    source = tmp_path / filename
    source.write_text(cuda.kernel_source(filename))
    command = [NVCC, "--ptx", f"-arch={arch}", "-std=c++17", "-DMINIBERT_INSTANTIATE_ALL",
               "-o", str(tmp_path / "out.ptx"), str(source)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"nvcc failed on {filename}:\n{done.stderr}"


# ============================================================================ the registry (CPU)
def _cuda_entries(op):
    return registry._speed_ups.get((op, "cuda"), [])


def test_the_registry_lists_the_cuda_kernels_for_their_ops_and_dtypes():
    assert {op for op in registry.REFERENCE if _cuda_entries(op)} == set(KERNELS)
    for op, kernel in KERNELS.items():
        expected = [TRIED_FIRST[op], kernel] if op in TRIED_FIRST else [kernel]
        assert [(e.forward, e.backward, e.dtypes) for e in _cuda_entries(op)] == expected, op
        assert not any(e.inference_only for e in _cuda_entries(op)), op


@pytest.mark.parametrize("op, forward, backward",
                         [(op, f, b) for op, (f, b, _) in [*KERNELS.items(), *TRIED_FIRST.items()]],
                         ids=[*KERNELS, *(f"{op}-tried-first" for op in TRIED_FIRST)])
def test_every_kernel_has_the_signature_of_its_reference_op(op, forward, backward):
    reference_forward, reference_backward = registry.REFERENCE[op]
    assert inspect.signature(forward) == inspect.signature(reference_forward)
    if reference_backward is not None:
        assert inspect.signature(backward) == inspect.signature(reference_backward)


@pytest.mark.parametrize("op", sorted(registry.REFERENCE))
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("inference", [False, True])
def test_numpy_arrays_never_get_a_cuda_kernel(op, dtype, inference):
    for shape in [(2, 3, 5, 64), (4, 64), (7,)]:
        forward, backward = registry.implementation(op, np.zeros(shape, dtype=dtype), inference=inference)
        for f in (forward, backward):
            assert f not in WRAPPERS and getattr(f, "__module__", None) != cuda.__name__, (op, shape, f)


@pytest.fixture
def numpy_as_gpu_arrays(monkeypatch):
    """Let the registry take NumPy arrays for GPU arrays, to test its choice without a GPU
    (the kernels themselves are not called)."""
    monkeypatch.setattr(registry, "array_device", lambda x: "cuda")


def _shaped(shape, dtype=np.float32):
    return np.broadcast_to(np.zeros((), dtype=dtype), shape)       # any shape, no memory


class _Bfloat16Array:
    """What the registry reads of a bfloat16 array (NumPy has no such dtype): dtype name and shape."""

    class dtype:
        name = "bfloat16"

    def __init__(self, shape):
        self.shape, self.ndim, self.size = shape, len(shape), int(np.prod(shape))


ROUTING = [  # (op, array, kernel expected: True, False or "tried first")
    ("flash_attention", np.zeros((2, 3, 5, 64), np.float32), True),
    ("flash_attention", np.zeros((2, 3, 5, 32), np.float16), True),
    ("flash_attention", np.zeros((2, 3, 5, 64), np.float16), "tried first"),     # version 2
    ("flash_attention", np.zeros((1, 2, 7, 128), np.float16), "tried first"),
    ("flash_attention", _Bfloat16Array((2, 3, 5, 64)), "tried first"),
    ("flash_attention", _Bfloat16Array((1, 2, 7, 128)), "tried first"),
    ("flash_attention", _Bfloat16Array((2, 3, 5, 32)), False),                   # no kernel for bfloat16 there
    ("flash_attention", _Bfloat16Array((2, 3, 0, 64)), False),                   # no query rows
    ("flash_attention", np.zeros((2, 3, 5, 48), np.float16), False),
    ("flash_attention", _shaped((255, 257, 1, 64), np.float16), "tried first"),  # B * N = 65535
    ("flash_attention", _shaped((256, 257, 1, 128), np.float16), False),
    ("flash_attention", np.zeros((1, 2, 7, 128), np.float32), True),
    ("flash_attention", np.zeros((2, 3, 5, 48), np.float32), False),          # head size
    ("flash_attention", np.zeros((2, 3, 5, 64), np.float64), False),          # dtype
    ("flash_attention", np.zeros((2, 5, 64), np.float32), False),             # not (B, N, T, D)
    ("flash_attention", _shaped((255, 257, 1, 64)), True),                     # B * N = 65535
    ("flash_attention", _shaped((256, 257, 1, 64)), False),                    # one launch's grid
    ("layer_norm", np.zeros((4, 6), np.float32), True),
    ("layer_norm", np.zeros((2, 3, 6), np.float32), True),
    ("layer_norm", np.zeros((4, 6), np.float64), False),
    ("layer_norm", np.zeros((4, 6), np.float16), False),
    ("layer_norm", np.zeros((0, 6), np.float32), False),                      # no rows
    ("gelu", np.zeros((4, 6), np.float32), True),
    ("gelu", np.zeros(7, np.float32), True),
    ("gelu", np.zeros((4, 6), np.float64), False),
    ("gelu", np.zeros((0, 6), np.float32), False),
    ("cross_entropy", np.zeros((4, 10), np.float32), True),
    ("cross_entropy", np.zeros((4, 10), np.float64), False),
    ("cross_entropy", np.zeros((0, 10), np.float32), False),                  # no rows: loss 0
    ("cross_entropy", np.zeros((2, 4, 10), np.float32), False),               # the reference raises
    ("adamw_update", np.zeros((3, 5), np.float32), True),
    ("adamw_update", np.zeros((3, 10), np.float32)[:, ::2], False),           # not contiguous
    ("adamw_update", np.zeros((3, 5), np.float64), False),
]


@pytest.mark.parametrize("op, x, kernel", ROUTING,
                         ids=[f"{op}-{x.dtype.name}-{'x'.join(map(str, x.shape))}" for op, x, _ in ROUTING])
def test_the_registry_runs_a_kernel_exactly_where_it_applies(numpy_as_gpu_arrays, op, x, kernel):
    expected = (TRIED_FIRST[op][:2] if kernel == "tried first" else KERNELS[op][:2] if kernel
                else registry.REFERENCE[op])
    for inference in (False, True):
        assert registry.implementation(op, x, inference=inference) == expected
    with registry.reference_only():
        assert registry.implementation(op, x) == registry.REFERENCE[op]


def test_kernel_checks_refuse_wrong_shapes():
    x = np.random.default_rng(0).standard_normal((4, 6))
    with pytest.raises(ValueError):
        cuda.layer_norm_forward(x, np.ones(5), np.zeros(6))
    with pytest.raises(ValueError):
        cuda.gelu_forward(np.array(1.0, np.float32))
    with pytest.raises(ValueError):
        cuda.cross_entropy_forward(x, np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError):
        cuda.flash_attention_forward(x, x, x)
    with pytest.raises(ValueError):
        cuda.adamw_update(x, x[:2], x, x, lr=0.1)
    q = np.zeros((2, 3, 5, 64), np.float32)
    with pytest.raises(ValueError, match="head size"):
        cuda.flash_attention_forward(q, q, q[..., :32])                        # v's head size differs
    with pytest.raises(ValueError, match="D in"):
        cuda.flash_attention_forward(q[..., :48], q[..., :48], q[..., :48])   # no kernel for 48


def test_kernels_refuse_numpy_arrays_instead_of_falling_back():
    x = np.zeros((4, 64), np.float32)
    q = np.zeros((2, 3, 5, 64), np.float32)
    calls = [
        lambda: cuda.layer_norm_forward(x, np.ones(64, np.float32), np.zeros(64, np.float32)),
        lambda: cuda.gelu_forward(x),
        lambda: cuda.cross_entropy_forward(x, np.zeros(4, np.int64)),
        lambda: cuda.flash_attention_forward(q, q, q),
        lambda: cuda.flash_attention_tc_forward(q.astype(np.float16), q.astype(np.float16), q.astype(np.float16)),
        lambda: cuda.adamw_update(x, x, x, x, lr=0.1),
    ]
    for call in calls:
        with pytest.raises(TypeError, match="takes CuPy arrays"):
            call()


# ============================================================================ on a device
# Every test below runs twice: on a real GPU through CuPy (marked ``gpu``, skipped without
# one) and on the CPU through the CUDA emulator in tests/cuda_emulator/ (marked
# ``emulated``, skipped only without a C++ toolchain). The emulator runs every CUDA thread
# as an OS thread, so its shapes are smaller; they still cover tiles that do not divide the
# sequence, padded batches and fully masked rows.
GPU = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="needs CuPy and a CUDA GPU")]
EMULATED = [pytest.mark.emulated, pytest.mark.skipif(compiler() is None, reason=MISSING_TOOLCHAIN)]


def on_devices(gpu_cases=(None,), emulated_cases=None):
    """Parameters ``device, case``: each GPU case on the GPU, each emulated case (the same
    cases when not given) on the emulator."""
    emulated_cases = gpu_cases if emulated_cases is None else emulated_cases
    return ([pytest.param("gpu", case, marks=GPU, id=f"gpu-{case}") for case in gpu_cases]
            + [pytest.param("emulator", case, marks=EMULATED, id=f"emulator-{case}") for case in emulated_cases])


def device_module(device, monkeypatch):
    """CuPy itself, or the emulator's stand-in for it (installed for this test only)."""
    if device == "emulator":
        return use_emulator(monkeypatch)
    import cupy

    return cupy


def _close(cp, actual, expected, rtol, atol, name=""):
    np.testing.assert_allclose(cp.asnumpy(actual).astype(np.float64), cp.asnumpy(expected).astype(np.float64),
                               rtol=rtol, atol=atol, err_msg=name)


def _kernel_for(op, x):
    """The (forward, backward) the registry gives for x, checked to be the CUDA kernel."""
    forward, backward = registry.implementation(op, x)
    assert (forward, backward) == KERNELS[op][:2], f"the registry did not pick the kernel for {op}"
    return forward, backward


ATTENTION_SHAPES = [  # (B, N, Tq, Tk, D): tile multiples, non-multiples, tiny, cross-attention
    (2, 3, 64, 64, 64), (2, 2, 100, 77, 32), (1, 2, 1, 5, 128), (3, 4, 129, 129, 64), (1, 1, 33, 200, 128),
]
EMULATED_ATTENTION_SHAPES = [  # query rows past one 64-row block, keys past one 32-key tile, all head sizes
    (2, 1, 17, 37, 32), (1, 1, 65, 20, 64), (2, 1, 5, 33, 128),
]


def _attention_mask(kind, rng, b, n, tq, tk):
    """None; a padded batch with one sequence fully masked; or a random mask over every score."""
    lowest = np.finfo(np.float32).min
    if kind == "padding":
        mask = np.zeros((b, 1, 1, tk), np.float32)
        mask[0, ..., tk // 2 + 1:] = lowest
        if b > 1:
            mask[-1] = lowest
        return mask
    if kind == "full":
        mask = np.where(rng.random((b, n, tq, tk)) < 0.3, lowest, 0).astype(np.float32)
        mask[..., tq // 2, :] = lowest                   # a query row that sees no key
        return mask
    return None


@pytest.mark.parametrize("device, shape", on_devices(ATTENTION_SHAPES, EMULATED_ATTENTION_SHAPES))
@pytest.mark.parametrize("mask_kind", ["none", "padding", "full"])
def test_flash_attention_kernel_float32(device, shape, mask_kind, monkeypatch):
    cp = device_module(device, monkeypatch)
    b, n, tq, tk, d = shape
    rng = np.random.default_rng(sum(shape))
    q, k, v, do = (rng.standard_normal(s).astype(np.float32) for s in
                   [(b, n, tq, d), (b, n, tk, d), (b, n, tk, d), (b, n, tq, d)])
    mask = _attention_mask(mask_kind, rng, b, n, tq, tk)
    o_ref, cache_ref = flash_attention_forward(q, k, v, mask)
    grads_ref = flash_attention_backward(do, cache_ref)
    g = [cp.asarray(x) for x in (q, k, v, do)]
    forward, backward = _kernel_for("flash_attention", g[0])
    o, cache = forward(g[0], g[1], g[2], None if mask is None else cp.asarray(mask))
    grads = backward(g[3], cache)
    _close(cp, o, o_ref, 1e-4, 1e-5, "o")
    for name, a, e in zip(("dq", "dk", "dv"), grads, grads_ref):
        _close(cp, a, e, 1e-3, 1e-4, name)


@pytest.mark.parametrize("device, head_size", on_devices(cuda.FLASH_HEAD_SIZES))
def test_flash_attention_kernel_float16(device, head_size, monkeypatch):
    cp = device_module(device, monkeypatch)
    rng = np.random.default_rng(head_size)
    shape = (2, 4, 150, head_size) if device == "gpu" else (1, 2, 20, head_size)
    q, k, v, do = (rng.standard_normal(shape).astype(np.float16) for _ in range(4))
    o_ref, cache_ref = flash_attention_forward(*(x.astype(np.float32) for x in (q, k, v)))
    grads_ref = flash_attention_backward(do.astype(np.float32), cache_ref)
    g = [cp.asarray(x) for x in (q, k, v, do)]
    forward, backward = cuda.flash_attention_forward, cuda.flash_attention_backward   # version 1 itself
    if head_size not in cuda.FLASH_TC_HEAD_SIZES:
        assert registry.implementation("flash_attention", g[0]) == (forward, backward)
    o, cache = forward(*g[:3])
    assert o.dtype == cp.float16
    grads = backward(g[3], cache)
    _close(cp, o, o_ref, 1e-2, 1e-2, "o")
    for name, a, e in zip(("dq", "dk", "dv"), grads, grads_ref):
        _close(cp, a, e, 2e-2, 2e-2, name)


@pytest.mark.parametrize("device, shape", on_devices([(2, 3, 70, 70, 64)], [(1, 2, 20, 35, 64)]))
def test_flash_attention_kernel_dropout_matches_the_numpy_hash(device, shape, monkeypatch):
    cp = device_module(device, monkeypatch)
    rng = np.random.default_rng(5)
    b, n, tq, tk, d = shape
    q, do = (rng.standard_normal((b, n, tq, d)).astype(np.float32) for _ in range(2))
    k, v = (rng.standard_normal((b, n, tk, d)).astype(np.float32) for _ in range(2))
    o_ref, cache_ref = flash_attention_forward(q, k, v, None, 0.2, dropout_seed=1234)
    grads_ref = flash_attention_backward(do, cache_ref)
    o, cache = cuda.flash_attention_forward(*(cp.asarray(x) for x in (q, k, v)), None, 0.2, dropout_seed=1234)
    grads = cuda.flash_attention_backward(cp.asarray(do), cache)
    _close(cp, o, o_ref, 1e-4, 1e-5, "o")
    for name, a, e in zip(("dq", "dk", "dv"), grads, grads_ref):
        _close(cp, a, e, 1e-3, 1e-4, name)


@pytest.mark.parametrize("device, case", on_devices())
def test_flash_attention_that_no_kernel_takes_runs_the_reference_on_the_gpu(device, case, monkeypatch):
    cp = device_module(device, monkeypatch)
    rng = np.random.default_rng(0)
    for dtype, head_size in ((np.float64, 64), (np.float32, 48)):
        q = cp.asarray(rng.standard_normal((1, 2, 10, head_size)).astype(dtype))
        forward, backward = registry.implementation("flash_attention", q)
        assert (forward, backward) == registry.REFERENCE["flash_attention"]
        o, _ = forward(q, q, q)
        assert isinstance(o, cp.ndarray) and o.dtype == dtype
        with pytest.raises((TypeError, ValueError)):
            cuda.flash_attention_forward(q, q, q)                  # the kernel itself refuses


@pytest.mark.parametrize("device, shape", on_devices([(4, 768), (3, 37, 100), (1000, 384), (2, 1)],
                                                     [(4, 768), (3, 37, 100), (70, 96), (2, 1)]))
def test_layer_norm_kernel(device, shape, monkeypatch):
    cp = device_module(device, monkeypatch)
    rng = np.random.default_rng(len(shape))
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    gamma, beta = (rng.standard_normal(shape[-1]).astype(np.float32) for _ in range(2))
    dy = rng.standard_normal(shape).astype(np.float32)
    y_ref, cache_ref = layer_norm_forward(x.astype(np.float64), gamma.astype(np.float64), beta.astype(np.float64))
    grads_ref = layer_norm_backward(dy.astype(np.float64), cache_ref)
    forward, backward = _kernel_for("layer_norm", cp.asarray(x))
    y, cache = forward(cp.asarray(x), cp.asarray(gamma), cp.asarray(beta))
    grads = backward(cp.asarray(dy), cache)
    _close(cp, y, y_ref, 1e-4, 1e-4, "y")
    for name, a, e in zip(("dx", "dgamma", "dbeta"), grads, grads_ref):
        _close(cp, a, e, 1e-3, 1e-3, name)


@pytest.mark.parametrize("device, shape", on_devices([(8, 3072), (5, 7, 33), (1, 1), (200,)]))
def test_gelu_kernel(device, shape, monkeypatch):
    cp = device_module(device, monkeypatch)
    rng = np.random.default_rng(len(shape))
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    y_ref, cache_ref = gelu_forward(x.astype(np.float64))
    dx_ref = gelu_backward(dy.astype(np.float64), cache_ref)
    forward, backward = _kernel_for("gelu", cp.asarray(x))
    y, cache = forward(cp.asarray(x))
    dx = backward(cp.asarray(dy), cache)
    _close(cp, y, y_ref, 1e-5, 1e-6, "y")
    _close(cp, dx, dx_ref, 1e-5, 1e-6, "dx")


@pytest.mark.parametrize("device, case", on_devices())
def test_gelu_kernel_on_a_strided_view(device, case, monkeypatch):
    cp = device_module(device, monkeypatch)
    x = cp.asarray(np.random.default_rng(1).standard_normal((6, 40)).astype(np.float32))[:, ::3]
    y, cache = cuda.gelu_forward(x)
    _close(cp, y, gelu_forward(cp.asnumpy(x).astype(np.float64))[0], 1e-5, 1e-6, "y")


@pytest.mark.parametrize("device, size", on_devices([(16, 30522), (7, 100), (3, 1)]))
def test_softmax_cross_entropy_kernel(device, size, monkeypatch):
    cp = device_module(device, monkeypatch)
    rows, classes = size
    rng = np.random.default_rng(classes)
    logits = (rng.standard_normal((rows, classes)) * 3).astype(np.float32)
    labels = rng.integers(0, classes, rows)
    labels[::3] = -100
    loss_ref, cache_ref = cross_entropy_forward(logits.astype(np.float64), labels)
    forward, backward = _kernel_for("cross_entropy", cp.asarray(logits))
    loss, cache = forward(cp.asarray(logits), cp.asarray(labels))
    assert abs(loss - loss_ref) <= 1e-5 + 1e-5 * abs(loss_ref)
    for dloss in (0.7, 1.0):
        _close(cp, backward(dloss, cache), cross_entropy_backward(dloss, cache_ref), 1e-4, 1e-6,
               f"dlogits, dL={dloss}")
    with pytest.raises(ValueError):
        forward(cp.asarray(logits), cp.asarray(labels * 0 + classes))
    with pytest.raises(TypeError, match="CuPy"):
        forward(cp.asarray(logits), labels)                    # labels left on the host


@pytest.mark.parametrize("device, bias_correction", on_devices([True, False]))
def test_adamw_kernel(device, bias_correction, monkeypatch):
    cp = device_module(device, monkeypatch)
    rng = np.random.default_rng(3)
    p, m, v = rng.standard_normal(100_003), np.zeros(100_003), np.zeros(100_003)
    gp, gm, gv = (cp.asarray(x, dtype=cp.float32) for x in (p, m, v))
    update, _ = _kernel_for("adamw_update", gp)
    for step in range(1, 4):
        grad = rng.standard_normal(p.shape).astype(np.float32)       # the kernel's gradient, exactly
        kwargs = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, step=step,
                      bias_correction=bias_correction)
        adamw_update(p, grad.astype(np.float64), m, v, **kwargs)     # the reference, float64 NumPy
        update(gp, cp.asarray(grad), gm, gv, **kwargs, scratch=cp.empty_like(gp))
    _close(cp, gp, p, 1e-5, 1e-6, "p")
    _close(cp, gm, m, 1e-5, 1e-6, "m")
    # 1 - beta2 = 0.001 must come from the host: computed in float32 on the device it is off
    # by 1.3e-5 relative, and so is every v
    _close(cp, gv, v, 2e-6, 0, "v")


@pytest.mark.parametrize("device, case", on_devices())
def test_kernels_refuse_mixed_arrays_on_the_gpu(device, case, monkeypatch):
    cp = device_module(device, monkeypatch)
    x = cp.zeros((4, 8), dtype=cp.float32)
    with pytest.raises(TypeError, match="one dtype"):
        cuda.layer_norm_forward(x, cp.ones(8, dtype=cp.float64), cp.zeros(8, dtype=cp.float32))
    with pytest.raises(TypeError, match="one dtype"):
        cuda.adamw_update(x, x.astype(cp.float64), cp.zeros_like(x), cp.zeros_like(x), lr=0.1)
    with pytest.raises(ValueError, match="contiguous"):
        cuda.adamw_update(x, x, cp.zeros((8, 4), dtype=cp.float32).T, cp.zeros_like(x), lr=0.1)


@pytest.mark.parametrize("device, case", on_devices())
def test_compile_all(device, case, monkeypatch):
    """NVRTC on a GPU, g++ under the emulator: every kernel variant the loader asks for compiles."""
    device_module(device, monkeypatch)
    cuda.compile_all()


# ============================================================================ defects that stay fixed
@pytest.mark.parametrize("device, case", on_devices())
def test_cross_entropy_kernel_without_labelled_rows(device, case, monkeypatch):
    """No rows at all launches nothing (CuPy would turn a grid of 0 blocks into 1, whose block
    read labels[0] and wrote row 0 of empty arrays); rows that are all ignored give loss 0."""
    cp = device_module(device, monkeypatch)
    loss, dlogits = cuda.cross_entropy_forward(cp.zeros((0, 7), dtype=cp.float32), cp.zeros(0, dtype=cp.int64))
    assert loss == 0.0 and dlogits.shape == (0, 7)
    logits = cp.asarray(np.random.default_rng(0).standard_normal((3, 7)).astype(np.float32))
    loss, dlogits = cuda.cross_entropy_forward(logits, cp.asarray(np.full(3, -100)))
    assert loss == 0.0 and not cp.asnumpy(dlogits).any()


@pytest.mark.parametrize("device, case", on_devices())
def test_flash_dq_kernel_reads_no_statistics_without_query_rows(device, case, monkeypatch):
    """A launch over zero query rows (one block, as CuPy makes of a grid of 0) reads nothing
    from the empty per-row statistics."""
    cp = device_module(device, monkeypatch)
    batch, heads, n_keys, head_size = 1, 2, 5, 32
    q = do = dq = cp.zeros((batch, heads, 0, head_size), dtype=cp.float32)
    k = v = cp.asarray(np.ones((batch, heads, n_keys, head_size), np.float32))
    row_max = row_sum = delta = cp.zeros((batch, heads, 0), dtype=cp.float32)
    mask, has_mask, strides = cuda._mask_arguments(None, row_max)
    scalars = cuda._flash_scalars(heads, 0, n_keys, head_size, mask, has_mask, strides, None)
    names = cuda._flash_names("float32", head_size)
    kernel = cuda._function("flash_attention.cu", names["backward_dq"], tuple(names.values())).function
    shared = (2 * cuda.FORWARD_ROWS * head_size + 2 * cuda.TILE * (head_size + 1)) * 4
    layouts = [stride for x in (q, k, v, do) for stride in cuda._layout(x)]
    kernel((1, batch * heads), (cuda.THREADS,), (q, k, v, do, row_max, row_sum, delta, dq, *layouts, *scalars),
           shared_mem=shared)


@pytest.mark.parametrize("device, case", on_devices())
def test_layer_norm_kernel_dx_is_exact_at_hidden_size_one(device, case, monkeypatch):
    """At H = 1, xhat = 0 and gx equals its mean: dx is 0, and rstd = 1e6 must not magnify
    the rounding of g * gamma (as an fma of g * gamma - mean(gx) would; the emulator
    contracts like the CUDA compiler does)."""
    cp = device_module(device, monkeypatch)
    rng = np.random.default_rng(2)
    x, dy = (rng.standard_normal((64, 1)).astype(np.float32) for _ in range(2))
    gamma, beta = np.float32([0.7313]), np.float32([0.25])
    _, cache = cuda.layer_norm_forward(cp.asarray(x), cp.asarray(gamma), cp.asarray(beta))
    dx, dgamma, dbeta = cuda.layer_norm_backward(cp.asarray(dy), cache)
    assert not cp.asnumpy(dx).any(), "dx is not exactly 0"
    _close(cp, dbeta, dy.sum(axis=0), 1e-5, 1e-5, "dbeta")


@pytest.mark.parametrize("device, case", on_devices(gpu_cases=(), emulated_cases=(None,)))
def test_launches_query_the_driver_only_once(device, case, monkeypatch):
    """A kernel's function and shared-memory limit are looked up at its first launch only
    (counted by the emulator's stand-in for CuPy)."""
    cp = device_module(device, monkeypatch)
    from cuda_emulator import cupy_standin

    rng = np.random.default_rng(0)
    q = cp.asarray(rng.standard_normal((1, 1, 3, 128)).astype(np.float32))       # 65 KiB of shared memory
    x = cp.asarray(rng.standard_normal((10, 16)).astype(np.float32))
    gamma, beta, p = cp.ones(16, dtype=cp.float32), cp.zeros(16, dtype=cp.float32), cp.zeros(16, dtype=cp.float32)

    def step():
        o, cache = cuda.flash_attention_forward(q, q, q)
        cuda.flash_attention_backward(o, cache)
        y, cache = cuda.layer_norm_forward(x, gamma, beta)
        cuda.layer_norm_backward(y, cache)
        cuda.adamw_update(p, gamma, beta, p.copy(), lr=0.1)

    step()
    monkeypatch.setattr(cupy_standin, "queries", type(cupy_standin.queries)())
    step()
    assert not cupy_standin.queries, f"repeated launches queried the driver: {dict(cupy_standin.queries)}"


@pytest.mark.parametrize("device, case", on_devices())
def test_column_sums_are_the_same_bits_on_every_run(device, case, monkeypatch):
    """dgamma, dbeta and the bias gradient of bias + GELU are summed in a fixed order: two
    runs agree bit for bit (the emulator runs the blocks in a different order each launch)."""
    cp = device_module(device, monkeypatch)
    rng = np.random.default_rng(4)
    x, dy = (cp.asarray(rng.standard_normal((300, 72)).astype(np.float32)) for _ in range(2))
    gamma, beta, bias = (cp.asarray(rng.standard_normal(72).astype(np.float32)) for _ in range(3))

    def gradients():
        _, cache = cuda.layer_norm_forward(x, gamma, beta)
        _, dgamma, dbeta = cuda.layer_norm_backward(dy, cache)
        _, cache = cuda.bias_gelu_forward(x, bias)
        _, dbias = cuda.bias_gelu_backward(dy, cache)
        return [cp.asnumpy(a).copy() for a in (dgamma, dbeta, dbias)]

    first, second = gradients(), gradients()
    for name, a, b in zip(("dgamma", "dbeta", "dbias"), first, second):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32), err_msg=name)
    z = cp.asnumpy(x).astype(np.float64) + cp.asnumpy(bias)
    dz = gelu_backward(cp.asnumpy(dy).astype(np.float64), gelu_forward(z)[1])
    np.testing.assert_allclose(first[2], dz.sum(axis=0), rtol=1e-4, atol=1e-4, err_msg="dbias")


@pytest.mark.parametrize("device, shape", on_devices([(2, 77, 3, 64)], [(2, 19, 2, 32)]))
def test_flash_attention_kernel_reads_transposed_views_in_place(device, shape, monkeypatch):
    """The model passes (B, T, N, D) -> (B, N, T, D) views of q, k, v and do: the kernels read
    them through their strides, with the same results as contiguous copies and no copies made."""
    cp = device_module(device, monkeypatch)
    b, t, n, d = shape
    rng = np.random.default_rng(7)
    q, k, v, do = (rng.standard_normal((b, t, n, d)).astype(np.float32).transpose(0, 2, 1, 3) for _ in range(4))
    mask = np.zeros((b, 1, 1, t), np.float32)
    mask[-1, ..., t // 2:] = np.finfo(np.float32).min
    o_ref, cache_ref = flash_attention_forward(q, k, v, mask)
    grads_ref = flash_attention_backward(do, cache_ref)
    views = [cp.asarray(np.ascontiguousarray(x.transpose(0, 2, 1, 3))).transpose(0, 2, 1, 3) for x in (q, k, v, do)]
    gmask = cp.asarray(mask)
    if device == "emulator":
        from cuda_emulator import cupy_standin

        before = cupy_standin.allocations["arrays"]
    o, cache = cuda.flash_attention_forward(views[0], views[1], views[2], gmask)
    grads = cuda.flash_attention_backward(views[3], cache)
    if device == "emulator":                 # o, m, l; delta, dq, dk, dv: no copy of an input
        assert cupy_standin.allocations["arrays"] - before == 7
    _close(cp, o, o_ref, 1e-4, 1e-5, "o")
    for name, a, e in zip(("dq", "dk", "dv"), grads, grads_ref):
        _close(cp, a, e, 1e-3, 1e-4, name)


# ============================================================================ flash attention, version 2
def _to_bfloat16(x):
    """The bfloat16 bits (uint16) of float32 values, rounded to nearest even (CuPy has no bfloat16)."""
    bits = np.asarray(x, np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)


def _from_bfloat16(bits):
    return (np.asarray(bits).astype(np.uint32) << 16).view(np.float32)


TC_CASES = [  # (input type, (B, N, Tq, Tk, D), mask kind, dropout): ragged tiles, padding, masked rows
    ("float16", (2, 1, 70, 40, 64), "padding", 0.0),
    ("float16", (1, 2, 33, 70, 128), "full", 0.0),
    ("bfloat16", (2, 1, 20, 65, 64), "padding", 0.2),
    ("bfloat16", (1, 2, 33, 70, 128), "full", 0.0),
]
GPU_TC_CASES = [
    ("float16", (2, 3, 200, 200, 64), "padding", 0.0), ("float16", (2, 2, 129, 300, 128), "full", 0.1),
    ("bfloat16", (2, 3, 200, 200, 64), "full", 0.0), ("bfloat16", (1, 4, 77, 129, 128), "padding", 0.2),
]


@pytest.mark.parametrize("device, case", on_devices(GPU_TC_CASES, TC_CASES))
def test_flash_attention_tc_kernel(device, case, monkeypatch):
    """Version 2 (tensor cores) against the reference op on the same float16/bfloat16 inputs;
    it rounds the probabilities and dS to the input type, hence the wider tolerance."""
    cp = device_module(device, monkeypatch)
    type_name, (b, n, tq, tk, d), mask_kind, dropout_p = case
    bfloat16 = type_name == "bfloat16"
    rng = np.random.default_rng(d + tq)
    values = [rng.standard_normal(s).astype(np.float32) for s in [(b, n, tq, d), (b, n, tk, d), (b, n, tk, d),
                                                                   (b, n, tq, d)]]
    stored = [_to_bfloat16(x) if bfloat16 else x.astype(np.float16) for x in values]
    as_float = _from_bfloat16 if bfloat16 else (lambda x: np.asarray(x).astype(np.float32))
    mask = _attention_mask(mask_kind, rng, b, n, tq, tk)
    o_ref, cache_ref = flash_attention_forward(*(as_float(x) for x in stored[:3]), mask, dropout_p, dropout_seed=99)
    grads_ref = flash_attention_backward(as_float(stored[3]), cache_ref)
    o, cache = cuda.flash_attention_tc_forward(*(cp.asarray(x) for x in stored[:3]),
                                               None if mask is None else cp.asarray(mask), dropout_p,
                                               dropout_seed=99)
    grads = cuda.flash_attention_tc_backward(cp.asarray(stored[3]), cache)
    tolerance = 2e-2 if bfloat16 else 1e-2
    for name, a, e in zip(("o", "dq", "dk", "dv"), (o, *grads), (o_ref, *grads_ref)):
        np.testing.assert_allclose(as_float(cp.asnumpy(a)), e, rtol=tolerance, atol=tolerance * np.abs(e).max(),
                                   err_msg=name)


@pytest.mark.parametrize("device, shape", on_devices([(2, 77, 3, 64)], [(2, 19, 2, 64)]))
def test_flash_attention_tc_kernel_reads_transposed_views_in_place(device, shape, monkeypatch):
    cp = device_module(device, monkeypatch)
    b, t, n, d = shape
    rng = np.random.default_rng(8)
    q, k, v, do = (rng.standard_normal((b, t, n, d)).astype(np.float16).transpose(0, 2, 1, 3) for _ in range(4))
    o_ref, cache_ref = flash_attention_forward(*(x.astype(np.float32) for x in (q, k, v)))
    grads_ref = flash_attention_backward(do.astype(np.float32), cache_ref)
    views = [cp.asarray(np.ascontiguousarray(x.transpose(0, 2, 1, 3))).transpose(0, 2, 1, 3) for x in (q, k, v, do)]
    o, cache = cuda.flash_attention_tc_forward(*views[:3])
    grads = cuda.flash_attention_tc_backward(views[3], cache)
    for name, a, e in zip(("o", "dq", "dk", "dv"), (o, *grads), (o_ref, *grads_ref)):
        _close(cp, a, e, 1e-2, 1e-2 * np.abs(e).max(), name)


@pytest.mark.parametrize("device, case", on_devices([(2, 77, 64), (2, 77, 128)], [(2, 20, 64)]))
def test_the_models_attention_runs_version_2_through_the_registry(device, case, monkeypatch):
    """The model's self-attention layer with float16 weights, head size 64 or 128: the registry
    gives it version 2 (only its kernels are launched) and its output and input gradient equal
    those of the reference op on the same float16 arrays (``registry.reference_only()``),
    within 1e-2 relative plus 1e-2 of the largest value (both round to float16, at different
    steps)."""
    cp = device_module(device, monkeypatch)
    batch, length, head_size = case
    config = BertConfig(vocab_size=40, hidden_size=2 * head_size, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=length, attn_implementation="flash",
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    attention = BertModel(config, seed=3).encoder.layer[0].attention.self.to("cuda")
    for p in attention.parameters():     # a float16 layer (models keep float32 or float64 weights)
        p.data, p.grad = p.data.astype(np.float16), cp.zeros(p.data.shape, dtype=np.float16)
    rng = np.random.default_rng(4)
    h, dy = (cp.asarray(rng.standard_normal((batch, length, config.hidden_size)).astype(np.float16))
             for _ in range(2))
    mask = np.zeros((batch, 1, 1, length), np.float16)
    mask[-1, ..., length // 2 + 1:] = np.finfo(np.float16).min                 # a padded sequence
    mask = cp.asarray(mask)
    launched, lookup = set(), cuda._function
    monkeypatch.setattr(cuda, "_function", lambda file, name, every=(): launched.add(name) or lookup(file, name, every))
    y = attention.forward(h, mask)                                                # (B, T, N*D)
    dh = attention.backward(dy)                                                   # (B, T, H)
    assert launched == set(cuda._flash_tc_names("float16", head_size).values())
    with registry.reference_only():
        y_ref = attention.forward(h, mask)
        dh_ref = attention.backward(dy)
    for name, a, e in (("context", y, y_ref), ("dh", dh, dh_ref)):
        a, e = (cp.asnumpy(x).astype(np.float64) for x in (a, e))
        np.testing.assert_allclose(a, e, rtol=1e-2, atol=1e-2 * np.abs(e).max(), err_msg=name)


@pytest.mark.parametrize("device, case", on_devices(gpu_cases=(), emulated_cases=(None,)))
def test_the_attention_benchmark_checks_and_times_both_versions(device, case, monkeypatch, capsys):
    """The GPU path of benchmarks/attention.py on a tiny shape: its agreement check passes for
    every kernel and it times versions 1 and 2 and the naive op (the emulator has no clock
    worth reading: every run counts one second)."""
    cp = device_module(device, monkeypatch)
    benchmark = load_script("benchmarks", "attention.py")
    args = argparse.Namespace(batch=1, heads=1, head_size=64, lengths=[20], repeats=1)
    rows = benchmark.run_cuda(args, cp=cp, timer=lambda fn, repeats: (fn(), 1.0)[1], device_name="the emulator",
                              check_length=20)
    assert [(row["impl"], row["dtype"]) for row in rows if row["impl"] != "torch-sdpa"] == [
        ("minibert-v1", "float16"), ("minibert-v1", "float32"), ("minibert-v2", "float16"),
        ("minibert-v2", "bfloat16"), ("naive-cupy", "float32")]
    assert "agreement at T=20" in capsys.readouterr().out


@pytest.mark.parametrize("device, case", on_devices())
def test_flash_attention_tc_kernel_refuses_what_it_cannot_take(device, case, monkeypatch):
    cp = device_module(device, monkeypatch)
    q16 = cp.zeros((1, 2, 5, 64), dtype=cp.float16)
    with pytest.raises(TypeError, match="float16"):
        cuda.flash_attention_tc_forward(q16.astype(cp.float32), q16, q16)
    with pytest.raises(TypeError, match="one dtype"):
        cuda.flash_attention_tc_forward(q16.view(np.uint16), q16, q16)
    with pytest.raises(ValueError, match="D in"):
        cuda.flash_attention_tc_forward(q16[..., :32], q16[..., :32], q16[..., :32])
    with pytest.raises(ValueError, match="mask"):
        cuda.flash_attention_tc_forward(q16, q16, q16, cp.zeros((1, 1, 1, 4), dtype=cp.float32))
