"""CUDA kernels: every source compiles with nvcc, the loader falls back correctly, and on a
GPU every kernel equals its NumPy reference.

* compile tests run wherever ``nvcc`` is on PATH (skipped with a message otherwise);
* fallback tests run everywhere: NumPy inputs go to the reference ops;
* ``@pytest.mark.gpu`` tests need CuPy and a CUDA GPU and are skipped otherwise. They run
  each kernel against its reference with ``atol + rtol`` over several shapes, including
  sizes that are not multiples of the tiles and padded batches:

      python -m pytest tests/test_kernels.py -m gpu -v
"""

import re
import shutil
import subprocess
import warnings

import numpy as np
import pytest

from minibert import cuda_kernels
from minibert.backend import cuda_available
from minibert.ops import cross_entropy_backward, cross_entropy_forward, gelu_backward, gelu_forward
from minibert.ops import layer_norm_backward, layer_norm_forward
from minibert.ops.flash_attention import flash_attention_backward, flash_attention_forward

NVCC = shutil.which("nvcc")


# ============================================================================ sources
@pytest.mark.parametrize("filename", cuda_kernels.KERNEL_FILES)
def test_source_is_installed_with_the_package(filename):
    source = cuda_kernels.kernel_source(filename)
    assert "__global__" in source


@pytest.mark.parametrize("filename", cuda_kernels.KERNEL_FILES)
def test_every_kernel_documents_its_launch(filename):
    """Each kernel is preceded by a comment block that states its launch configuration."""
    source = cuda_kernels.kernel_source(filename)
    kernels = re.findall(r"__global__ void(?: __launch_bounds__\(\w+\))?\s+(\w+)\(", source)
    assert kernels, f"no kernel found in {filename}"
    for name in kernels:
        before = source[: source.index(name + "(")]
        comment = before[before.rfind("\n\n"):]          # the block just above the kernel
        assert "Launch:" in comment, f"{filename}: kernel {name} has no 'Launch:' comment above it"


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH: CUDA sources not compiled")
@pytest.mark.parametrize("filename", cuda_kernels.KERNEL_FILES)
def test_source_compiles_with_nvcc(filename, tmp_path):
    """PTX for sm_90 with every template variant the loader asks for (MINIBERT_INSTANTIATE_ALL)."""
    source = tmp_path / filename
    source.write_text(cuda_kernels.kernel_source(filename))
    command = [NVCC, "--ptx", "-arch=sm_90", "-std=c++17", "-DMINIBERT_INSTANTIATE_ALL",
               "-o", str(tmp_path / "out.ptx"), str(source)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"nvcc failed on {filename}:\n{done.stderr}"


# ============================================================================ fallbacks (CPU)
def test_numpy_inputs_use_the_reference_ops(rng):
    q, k, v, do = (rng.standard_normal((2, 3, 9, 8)) for _ in range(4))
    mask = np.zeros((2, 1, 1, 9))
    mask[1, ..., 5:] = np.finfo(np.float64).min
    o, cache = cuda_kernels.flash_attention_forward(q, k, v, mask, block_q=4, block_k=3)
    o_ref, cache_ref = flash_attention_forward(q, k, v, mask, block_q=4, block_k=3)
    np.testing.assert_array_equal(o, o_ref)
    for a, b in zip(cuda_kernels.flash_attention_backward(do, cache), flash_attention_backward(do, cache_ref)):
        np.testing.assert_array_equal(a, b)

    x, gamma, beta = rng.standard_normal((4, 6)), rng.standard_normal(6), rng.standard_normal(6)
    y, cache = cuda_kernels.layer_norm_forward(x, gamma, beta)
    np.testing.assert_array_equal(y, layer_norm_forward(x, gamma, beta)[0])
    dy = rng.standard_normal(y.shape)
    for a, b in zip(cuda_kernels.layer_norm_backward(dy, cache),
                    layer_norm_backward(dy, layer_norm_forward(x, gamma, beta)[1])):
        np.testing.assert_array_equal(a, b)

    x, bias = rng.standard_normal((5, 7)), rng.standard_normal(7)
    y, cache = cuda_kernels.bias_gelu_forward(x, bias)
    y_ref, cache_ref = gelu_forward(x + bias)
    np.testing.assert_array_equal(y, y_ref)
    dx, dbias = cuda_kernels.bias_gelu_backward(rng.standard_normal((5, 7)), cache)
    np.testing.assert_allclose(dbias, dx.sum(axis=0))

    logits, labels = rng.standard_normal((6, 10)), np.array([1, -100, 3, 9, 0, -100])
    loss, cache = cuda_kernels.cross_entropy_forward(logits, labels)
    loss_ref, cache_ref = cross_entropy_forward(logits, labels)
    assert loss == loss_ref
    np.testing.assert_array_equal(cuda_kernels.cross_entropy_backward(0.5, cache),
                                  cross_entropy_backward(0.5, cache_ref))


def test_bias_gelu_backward_reference_gradients(rng):
    from minibert.gradcheck import check_op

    x, bias = rng.standard_normal((4, 6)), rng.standard_normal(6)
    check_op(cuda_kernels.bias_gelu_forward, cuda_kernels.bias_gelu_backward, [x, bias],
             names=["x", "bias"], samples=None).raise_if_failed()


@pytest.mark.parametrize("bias_correction", [True, False])
def test_adamw_reference_matches_the_optimizer(rng, bias_correction):
    from minibert.nn import Parameter
    from minibert.optim import AdamW

    data = rng.standard_normal((3, 5))
    param = Parameter(data.copy())
    opt = AdamW([("w", param)], lr=0.01, weight_decay=0.1, bias_correction=bias_correction)
    p, m, v = data.copy(), np.zeros_like(data), np.zeros_like(data)
    for step in range(1, 4):
        grad = rng.standard_normal(data.shape)
        param.grad[...] = grad
        opt.step()
        cuda_kernels.adamw_update(p, grad, m, v, lr=0.01, betas=opt.betas, eps=opt.eps, weight_decay=0.1,
                                  step=step, bias_correction=bias_correction)
        np.testing.assert_allclose(p, param.data, rtol=1e-12, atol=1e-14)


def test_kernel_checks_refuse_wrong_shapes(rng):
    x = rng.standard_normal((4, 6))
    with pytest.raises(ValueError):
        cuda_kernels.layer_norm_forward(x, np.ones(5), np.zeros(6))
    with pytest.raises(ValueError):
        cuda_kernels.bias_gelu_forward(x, np.ones(5))
    with pytest.raises(ValueError):
        cuda_kernels.cross_entropy_forward(x, np.zeros(3, dtype=np.int64))
    with pytest.raises(ValueError):
        cuda_kernels.flash_attention_forward(x, x, x)
    with pytest.raises(ValueError):
        cuda_kernels.adamw_update(x, x[:2], x, x, lr=0.1)


# ============================================================================ GPU
gpu = pytest.mark.skipif(not cuda_available(), reason="needs CuPy and a CUDA GPU")


def _cp():
    import cupy

    return cupy


def _close(actual, expected, rtol, atol, name=""):
    np.testing.assert_allclose(_cp().asnumpy(actual).astype(np.float64), np.asarray(expected, dtype=np.float64),
                               rtol=rtol, atol=atol, err_msg=name)


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
    o, cache = cuda_kernels.flash_attention_forward(g[0], g[1], g[2], None if mask is None else cp.asarray(mask))
    assert cache[0] == "cuda"
    grads = cuda_kernels.flash_attention_backward(g[3], cache)
    _close(o, o_ref, 1e-4, 1e-5, "o")
    for name, a, e in zip(("dq", "dk", "dv"), grads, grads_ref):
        _close(a, e, 1e-3, 1e-4, name)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("head_size", cuda_kernels.FLASH_HEAD_SIZES)
def test_flash_attention_kernel_float16(head_size):
    cp = _cp()
    rng = np.random.default_rng(head_size)
    q, k, v, do = (rng.standard_normal((2, 4, 150, head_size)).astype(np.float16) for _ in range(4))
    o_ref, cache_ref = flash_attention_forward(*(x.astype(np.float32) for x in (q, k, v)))
    grads_ref = flash_attention_backward(do.astype(np.float32), cache_ref)
    o, cache = cuda_kernels.flash_attention_forward(*(cp.asarray(x) for x in (q, k, v)))
    assert o.dtype == cp.float16
    grads = cuda_kernels.flash_attention_backward(cp.asarray(do), cache)
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
    o, cache = cuda_kernels.flash_attention_forward(*(cp.asarray(x) for x in (q, k, v)), None, 0.2,
                                                    dropout_seed=1234)
    grads = cuda_kernels.flash_attention_backward(cp.asarray(do), cache)
    _close(o, o_ref, 1e-4, 1e-5, "o")
    for name, a, e in zip(("dq", "dk", "dv"), grads, grads_ref):
        _close(a, e, 1e-3, 1e-4, name)


@pytest.mark.gpu
@gpu
def test_flash_attention_unsupported_falls_back_with_one_warning():
    cp = _cp()
    cuda_kernels._warned.clear()
    q = cp.asarray(np.random.default_rng(0).standard_normal((1, 2, 10, 48)))     # float64, head size 48
    with pytest.warns(RuntimeWarning, match="flash attention"):
        o, cache = cuda_kernels.flash_attention_forward(q, q, q)
    assert cache[0] == "reference"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cuda_kernels.flash_attention_forward(q, q, q)                         # no second warning


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
    y, cache = cuda_kernels.layer_norm_forward(cp.asarray(x), cp.asarray(gamma), cp.asarray(beta))
    assert cache[0] == "cuda"
    grads = cuda_kernels.layer_norm_backward(cp.asarray(dy), cache)
    _close(y, y_ref, 1e-4, 1e-4, "y")
    for name, a, e in zip(("dx", "dgamma", "dbeta"), grads, grads_ref):
        _close(a, e, 1e-3, 1e-3, name)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("shape", [(8, 3072), (5, 7, 33), (1, 1)])
def test_bias_gelu_kernel(shape):
    cp = _cp()
    rng = np.random.default_rng(len(shape))
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    bias = rng.standard_normal(shape[-1]).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    y_ref, cache_ref = gelu_forward(x.astype(np.float64) + bias)
    dx_ref = gelu_backward(dy.astype(np.float64), cache_ref)
    y, cache = cuda_kernels.bias_gelu_forward(cp.asarray(x), cp.asarray(bias))
    assert cache[0] == "cuda"
    dx, dbias = cuda_kernels.bias_gelu_backward(cp.asarray(dy), cache)
    _close(y, y_ref, 1e-5, 1e-6, "y")
    _close(dx, dx_ref, 1e-5, 1e-6, "dx")
    _close(dbias, dx_ref.reshape(-1, shape[-1]).sum(axis=0), 1e-4, 1e-4, "dbias")


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
    dlogits_ref = cross_entropy_backward(0.7, cache_ref)
    loss, cache = cuda_kernels.cross_entropy_forward(cp.asarray(logits), cp.asarray(labels))
    assert cache[0] == "cuda"
    assert abs(loss - loss_ref) <= 1e-5 + 1e-5 * abs(loss_ref)
    _close(cuda_kernels.cross_entropy_backward(0.7, cache), dlogits_ref, 1e-4, 1e-6, "dlogits")
    with pytest.raises(ValueError):
        cuda_kernels.cross_entropy_forward(cp.asarray(logits), cp.asarray(labels * 0 + classes))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("bias_correction", [True, False])
def test_adamw_kernel(bias_correction):
    cp = _cp()
    rng = np.random.default_rng(3)
    p, m, v = rng.standard_normal(100_003), np.zeros(100_003), np.zeros(100_003)
    gp, gm, gv = (cp.asarray(x, dtype=cp.float32) for x in (p, m, v))
    for step in range(1, 4):
        grad = rng.standard_normal(p.shape)
        kwargs = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01, step=step,
                      bias_correction=bias_correction)
        cuda_kernels.adamw_update(p, grad, m, v, **kwargs)                      # NumPy reference
        cuda_kernels.adamw_update(gp, cp.asarray(grad, dtype=cp.float32), gm, gv, **kwargs)
    _close(gp, p, 1e-5, 1e-6, "p")
    _close(gm, m, 1e-5, 1e-6, "m")
    _close(gv, v, 1e-5, 1e-6, "v")


@pytest.mark.gpu
@gpu
def test_compile_all_with_nvrtc():
    cuda_kernels.compile_all()


# ============================================================================ choosing kernels (CPU)
@pytest.fixture
def pretend_gpu(monkeypatch):
    """Make use_kernel treat NumPy arrays as GPU arrays, with a fresh record of first-use checks.

    The kernel wrappers themselves still see NumPy arrays and run their reference ops, so the
    checks pass and the model takes its kernel code paths with reference numbers inside.
    """
    monkeypatch.setattr(cuda_kernels, "_is_gpu_array", lambda x: True)
    monkeypatch.setattr(cuda_kernels, "_checked", {})
    monkeypatch.setattr(cuda_kernels, "_warned", set())


def test_numpy_arrays_pick_the_reference_ops(rng):
    x = rng.standard_normal((2, 3))
    assert cuda_kernels.pick("layer_norm", x) == cuda_kernels.REFERENCE_OPS["layer_norm"]
    assert not cuda_kernels.use_kernel("adamw", x)
    with pytest.raises(ValueError, match="unknown kernel op"):
        cuda_kernels.use_kernel("softmax", x)


@pytest.mark.parametrize("op, variant", [("flash_attention", (32,)), ("layer_norm", ()), ("bias_gelu", ()),
                                         ("cross_entropy", ()), ("adamw", ())])
def test_a_kernel_that_passes_its_first_use_check_is_used(pretend_gpu, op, variant):
    x = np.zeros(3, dtype=np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cuda_kernels.use_kernel(op, x, variant)
    assert cuda_kernels._checked == {(op, "float32", variant): True}


@pytest.mark.parametrize("fault", ["wrong numbers", "NaN", "compile error"])
def test_a_faulty_kernel_is_never_used_and_warned_about_once(pretend_gpu, monkeypatch, fault):
    def broken_forward(x, gamma, beta, eps=1e-12):
        if fault == "compile error":
            raise RuntimeError("NVRTC_ERROR_COMPILATION")
        y, cache = layer_norm_forward(x, gamma, beta, eps)
        return (y * 1.001 if fault == "wrong numbers" else y * np.nan), ("reference", cache)

    monkeypatch.setitem(cuda_kernels.KERNEL_OPS, "layer_norm", (broken_forward, cuda_kernels.layer_norm_backward))
    x = np.zeros((2, 4), dtype=np.float32)
    with pytest.warns(RuntimeWarning, match=r"layer_norm \(float32\) failed its first-use check"):
        assert cuda_kernels.pick("layer_norm", x) == cuda_kernels.REFERENCE_OPS["layer_norm"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # checked once: no second warning
        assert not cuda_kernels.use_kernel("layer_norm", x)


def test_the_kernel_code_paths_of_the_model_give_the_reference_numbers(pretend_gpu, monkeypatch):
    """The model's wiring of the kernels (fused bias + GELU, flash attention, cross-entropy over
    the vocabulary, AdamW) run with the wrappers' reference ops inside: same loss, gradients and
    update as the plain NumPy path."""
    from minibert.modeling import BertConfig, BertForPreTraining
    from minibert.optim import AdamW

    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=16, attn_implementation="flash",
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    r = np.random.default_rng(0)
    ids = r.integers(5, 50, (3, 11))
    mask = np.ones_like(ids)
    mask[2, 7:] = 0
    labels = np.where(r.random(ids.shape) < 0.3, ids, -100)
    labels[0, 0] = 7

    def one_step(kernels: bool):
        monkeypatch.setattr(cuda_kernels, "USE_KERNELS", kernels)
        model = BertForPreTraining(config, seed=1, dtype=np.float64)
        optimizer = AdamW(model.named_parameters(), lr=1e-2)
        out = model.forward(ids, attention_mask=mask, labels=labels, next_sentence_label=np.array([0, 1, 0]))
        caches = [m._cache for m in (model.bert.encoder.layer[0].intermediate, model.bert.encoder.layer[0].attention.self)]
        model.backward()
        grads = {n: p.grad.copy() for n, p in model.named_parameters()}
        optimizer.step()
        return out.loss, grads, {n: p.data.copy() for n, p in model.named_parameters()}, caches

    loss, grads, params, caches = one_step(kernels=True)
    assert caches[0][0] is cuda_kernels.bias_gelu_backward                    # the fused path ran
    assert caches[1][0] is cuda_kernels.flash_attention_backward
    assert set(key[0] for key in cuda_kernels._checked) == {"bias_gelu", "flash_attention", "layer_norm",
                                                            "cross_entropy", "adamw"}
    loss_ref, grads_ref, params_ref, caches_ref = one_step(kernels=False)
    assert caches_ref[0] == ("modules",)
    assert loss == pytest.approx(loss_ref, rel=1e-12)
    for name in grads_ref:
        np.testing.assert_allclose(grads[name], grads_ref[name], rtol=1e-9, atol=1e-12, err_msg=name)
        np.testing.assert_allclose(params[name], params_ref[name], rtol=1e-9, atol=1e-12, err_msg=name)
