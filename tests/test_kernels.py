"""CUDA kernels (``minibert/fast/cuda.py``): every source compiles with nvcc, the registry
sends an op to its kernel only where the kernel applies, and on a GPU every kernel equals
its reference op.

* source tests run everywhere; compile tests wherever ``nvcc`` is on PATH (skipped with a
  message otherwise);
* registry tests run everywhere: which ops and dtypes have a kernel, under which conditions,
  that NumPy arrays always get the reference ops, and the wrappers' input checks;
* ``@pytest.mark.gpu`` tests need CuPy and a CUDA GPU and are skipped otherwise. They compare
  each kernel with its reference op with ``atol + rtol`` over several shapes, including
  sizes that are not multiples of the tiles and padded batches:

      python -m pytest tests/test_kernels.py -m gpu -v
"""

import inspect
import re
import shutil
import subprocess

import numpy as np
import pytest

from minibert import registry
from minibert.backend import cuda_available
from minibert.fast import cuda
from minibert.ops import adamw_update, cross_entropy_backward, cross_entropy_forward, gelu_backward, gelu_forward
from minibert.ops import layer_norm_backward, layer_norm_forward
from minibert.ops.flash_attention import flash_attention_backward, flash_attention_forward

NVCC = shutil.which("nvcc")

# op -> (forward, backward, dtypes): the kernels the registry must know
KERNELS = {
    "flash_attention": (cuda.flash_attention_forward, cuda.flash_attention_backward, ("float32", "float16")),
    "layer_norm": (cuda.layer_norm_forward, cuda.layer_norm_backward, ("float32",)),
    "gelu": (cuda.gelu_forward, cuda.gelu_backward, ("float32",)),
    "cross_entropy": (cuda.cross_entropy_forward, cuda.cross_entropy_backward, ("float32",)),
    "adamw_update": (cuda.adamw_update, None, ("float32",)),
}
WRAPPERS = {f for forward, backward, _ in KERNELS.values() for f in (forward, backward) if f is not None}


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
@pytest.mark.parametrize("filename", cuda.KERNEL_FILES)
def test_source_compiles_with_nvcc(filename, tmp_path):
    """PTX for sm_90 with every template variant the loader asks for (MINIBERT_INSTANTIATE_ALL)."""
    source = tmp_path / filename
    source.write_text(cuda.kernel_source(filename))
    command = [NVCC, "--ptx", "-arch=sm_90", "-std=c++17", "-DMINIBERT_INSTANTIATE_ALL",
               "-o", str(tmp_path / "out.ptx"), str(source)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"nvcc failed on {filename}:\n{done.stderr}"


# ============================================================================ the registry (CPU)
def _cuda_entries(op):
    return registry._speed_ups.get((op, "cuda"), [])


def test_the_registry_lists_the_cuda_kernels_for_their_ops_and_dtypes():
    assert {op for op in registry.REFERENCE if _cuda_entries(op)} == set(KERNELS)
    for op, (forward, backward, dtypes) in KERNELS.items():
        (entry,) = _cuda_entries(op)
        assert (entry.forward, entry.backward, entry.dtypes) == (forward, backward, dtypes), op
        assert not entry.inference_only, op


@pytest.mark.parametrize("op", sorted(KERNELS))
def test_every_kernel_has_the_signature_of_its_reference_op(op):
    reference_forward, reference_backward = registry.REFERENCE[op]
    forward, backward, _ = KERNELS[op]
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


ROUTING = [  # (op, array, kernel expected)
    ("flash_attention", np.zeros((2, 3, 5, 64), np.float32), True),
    ("flash_attention", np.zeros((2, 3, 5, 32), np.float16), True),
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
                         ids=[f"{op}-{x.dtype}-{'x'.join(map(str, x.shape))}" for op, x, _ in ROUTING])
def test_the_registry_runs_a_kernel_exactly_where_it_applies(numpy_as_gpu_arrays, op, x, kernel):
    expected = KERNELS[op][:2] if kernel else registry.REFERENCE[op]
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
        lambda: cuda.adamw_update(x, x, x, x, lr=0.1),
    ]
    for call in calls:
        with pytest.raises(TypeError, match="takes CuPy arrays"):
            call()


# ============================================================================ GPU
gpu = pytest.mark.skipif(not cuda_available(), reason="needs CuPy and a CUDA GPU")


def _cp():
    import cupy

    return cupy


def _close(actual, expected, rtol, atol, name=""):
    cp = _cp()
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


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("shape", ATTENTION_SHAPES)
@pytest.mark.parametrize("mask_kind", ["none", "padding", "full"])
def test_flash_attention_kernel_float32(shape, mask_kind):
    cp = _cp()
    b, n, tq, tk, d = shape
    rng = np.random.default_rng(sum(shape))
    q, k, v, do = (rng.standard_normal(s).astype(np.float32) for s in
                   [(b, n, tq, d), (b, n, tk, d), (b, n, tk, d), (b, n, tq, d)])
    mask = None
    lowest = np.finfo(np.float32).min
    if mask_kind == "padding":                           # a padded batch, one sequence fully masked
        mask = np.zeros((b, 1, 1, tk), np.float32)
        mask[0, ..., tk // 2 + 1:] = lowest
        if b > 1:
            mask[-1] = lowest
    elif mask_kind == "full":
        mask = np.where(rng.random((b, n, tq, tk)) < 0.3, lowest, 0).astype(np.float32)
    o_ref, cache_ref = flash_attention_forward(q, k, v, mask)
    grads_ref = flash_attention_backward(do, cache_ref)
    g = [cp.asarray(x) for x in (q, k, v, do)]
    forward, backward = _kernel_for("flash_attention", g[0])
    o, cache = forward(g[0], g[1], g[2], None if mask is None else cp.asarray(mask))
    grads = backward(g[3], cache)
    _close(o, o_ref, 1e-4, 1e-5, "o")
    for name, a, e in zip(("dq", "dk", "dv"), grads, grads_ref):
        _close(a, e, 1e-3, 1e-4, name)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("head_size", cuda.FLASH_HEAD_SIZES)
def test_flash_attention_kernel_float16(head_size):
    cp = _cp()
    rng = np.random.default_rng(head_size)
    q, k, v, do = (rng.standard_normal((2, 4, 150, head_size)).astype(np.float16) for _ in range(4))
    o_ref, cache_ref = flash_attention_forward(*(x.astype(np.float32) for x in (q, k, v)))
    grads_ref = flash_attention_backward(do.astype(np.float32), cache_ref)
    g = [cp.asarray(x) for x in (q, k, v, do)]
    forward, backward = _kernel_for("flash_attention", g[0])
    o, cache = forward(*g[:3])
    assert o.dtype == cp.float16
    grads = backward(g[3], cache)
    _close(o, o_ref, 1e-2, 1e-2, "o")
    for name, a, e in zip(("dq", "dk", "dv"), grads, grads_ref):
        _close(a, e, 2e-2, 2e-2, name)


@pytest.mark.gpu
@gpu
def test_flash_attention_kernel_dropout_matches_the_numpy_hash():
    cp = _cp()
    rng = np.random.default_rng(5)
    q, k, v, do = (rng.standard_normal((2, 3, 70, 64)).astype(np.float32) for _ in range(4))
    o_ref, cache_ref = flash_attention_forward(q, k, v, None, 0.2, dropout_seed=1234)
    grads_ref = flash_attention_backward(do, cache_ref)
    o, cache = cuda.flash_attention_forward(*(cp.asarray(x) for x in (q, k, v)), None, 0.2, dropout_seed=1234)
    grads = cuda.flash_attention_backward(cp.asarray(do), cache)
    _close(o, o_ref, 1e-4, 1e-5, "o")
    for name, a, e in zip(("dq", "dk", "dv"), grads, grads_ref):
        _close(a, e, 1e-3, 1e-4, name)


@pytest.mark.gpu
@gpu
def test_flash_attention_that_no_kernel_takes_runs_the_reference_on_the_gpu():
    cp = _cp()
    rng = np.random.default_rng(0)
    for dtype, head_size in ((np.float64, 64), (np.float32, 48)):
        q = cp.asarray(rng.standard_normal((1, 2, 10, head_size)).astype(dtype))
        forward, backward = registry.implementation("flash_attention", q)
        assert (forward, backward) == registry.REFERENCE["flash_attention"]
        o, _ = forward(q, q, q)
        assert isinstance(o, cp.ndarray) and o.dtype == dtype
        with pytest.raises((TypeError, ValueError)):
            cuda.flash_attention_forward(q, q, q)                  # the kernel itself refuses


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("shape", [(4, 768), (3, 37, 100), (1000, 384), (2, 1)])
def test_layer_norm_kernel(shape):
    cp = _cp()
    rng = np.random.default_rng(len(shape))
    x = (rng.standard_normal(shape) * 3 + 1).astype(np.float32)
    gamma, beta = (rng.standard_normal(shape[-1]).astype(np.float32) for _ in range(2))
    dy = rng.standard_normal(shape).astype(np.float32)
    y_ref, cache_ref = layer_norm_forward(x.astype(np.float64), gamma.astype(np.float64), beta.astype(np.float64))
    grads_ref = layer_norm_backward(dy.astype(np.float64), cache_ref)
    forward, backward = _kernel_for("layer_norm", cp.asarray(x))
    y, cache = forward(cp.asarray(x), cp.asarray(gamma), cp.asarray(beta))
    grads = backward(cp.asarray(dy), cache)
    _close(y, y_ref, 1e-4, 1e-4, "y")
    for name, a, e in zip(("dx", "dgamma", "dbeta"), grads, grads_ref):
        _close(a, e, 1e-3, 1e-3, name)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("shape", [(8, 3072), (5, 7, 33), (1, 1), (200,)])
def test_gelu_kernel(shape):
    cp = _cp()
    rng = np.random.default_rng(len(shape))
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    y_ref, cache_ref = gelu_forward(x.astype(np.float64))
    dx_ref = gelu_backward(dy.astype(np.float64), cache_ref)
    forward, backward = _kernel_for("gelu", cp.asarray(x))
    y, cache = forward(cp.asarray(x))
    dx = backward(cp.asarray(dy), cache)
    _close(y, y_ref, 1e-5, 1e-6, "y")
    _close(dx, dx_ref, 1e-5, 1e-6, "dx")


@pytest.mark.gpu
@gpu
def test_gelu_kernel_on_a_strided_view():
    cp = _cp()
    x = cp.asarray(np.random.default_rng(1).standard_normal((6, 40)).astype(np.float32))[:, ::3]
    y, cache = cuda.gelu_forward(x)
    _close(y, gelu_forward(cp.asnumpy(x).astype(np.float64))[0], 1e-5, 1e-6, "y")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("rows, classes", [(16, 30522), (7, 100), (3, 1)])
def test_softmax_cross_entropy_kernel(rows, classes):
    cp = _cp()
    rng = np.random.default_rng(classes)
    logits = (rng.standard_normal((rows, classes)) * 3).astype(np.float32)
    labels = rng.integers(0, classes, rows)
    labels[::3] = -100
    loss_ref, cache_ref = cross_entropy_forward(logits.astype(np.float64), labels)
    forward, backward = _kernel_for("cross_entropy", cp.asarray(logits))
    loss, cache = forward(cp.asarray(logits), cp.asarray(labels))
    assert abs(loss - loss_ref) <= 1e-5 + 1e-5 * abs(loss_ref)
    for dloss in (0.7, 1.0):
        _close(backward(dloss, cache), cross_entropy_backward(dloss, cache_ref), 1e-4, 1e-6, f"dlogits, dL={dloss}")
    with pytest.raises(ValueError):
        forward(cp.asarray(logits), cp.asarray(labels * 0 + classes))
    with pytest.raises(TypeError, match="CuPy"):
        forward(cp.asarray(logits), labels)                    # labels left on the host


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("bias_correction", [True, False])
def test_adamw_kernel(bias_correction):
    cp = _cp()
    rng = np.random.default_rng(3)
    p, m, v = rng.standard_normal(100_003), np.zeros(100_003), np.zeros(100_003)
    gp, gm, gv = (cp.asarray(x, dtype=cp.float32) for x in (p, m, v))
    update, _ = _kernel_for("adamw_update", gp)
    for step in range(1, 4):
        grad = rng.standard_normal(p.shape)
        kwargs = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, step=step,
                      bias_correction=bias_correction)
        adamw_update(p, grad, m, v, **kwargs)                          # the reference, float64 NumPy
        update(gp, cp.asarray(grad, dtype=cp.float32), gm, gv, **kwargs, scratch=cp.empty_like(gp))
    _close(gp, p, 1e-5, 1e-6, "p")
    _close(gm, m, 1e-5, 1e-6, "m")
    _close(gv, v, 1e-5, 1e-6, "v")


@pytest.mark.gpu
@gpu
def test_kernels_refuse_mixed_arrays_on_the_gpu():
    cp = _cp()
    x = cp.zeros((4, 8), dtype=cp.float32)
    with pytest.raises(TypeError, match="one dtype"):
        cuda.layer_norm_forward(x, cp.ones(8, dtype=cp.float64), cp.zeros(8, dtype=cp.float32))
    with pytest.raises(TypeError, match="one dtype"):
        cuda.adamw_update(x, x.astype(cp.float64), cp.zeros_like(x), cp.zeros_like(x), lr=0.1)
    with pytest.raises(ValueError, match="contiguous"):
        cuda.adamw_update(x, x, cp.zeros((8, 4), dtype=cp.float32).T, cp.zeros_like(x), lr=0.1)


@pytest.mark.gpu
@gpu
def test_compile_all_with_nvrtc():
    cuda.compile_all()
