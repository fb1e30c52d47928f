"""The CUDA emulator (tests/cuda_emulator/) itself: it computes what CUDA computes, and its
checks catch the mistakes they are there for (a missing or misplaced barrier, a shuffle
outside its warp, a read before a write, an access past an array's end).

Run with the other emulated tests: ``python -m pytest -m emulated``.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cuda_emulator import MISSING_TOOLCHAIN, build, compiler, cupy_standin, use_emulator

from minibert.fast import cuda
from minibert.ops.flash_attention import flash_attention_forward

pytestmark = [pytest.mark.emulated, pytest.mark.skipif(compiler() is None, reason=MISSING_TOOLCHAIN)]

ROOT = Path(__file__).resolve().parents[1]

CHECKS = r"""
extern "C" __global__ void divergent_barrier(float* out) {
    if (threadIdx.x < 16) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1.0f;
}

extern "C" __global__ void exit_before_barrier(float* out) {
    if (threadIdx.x >= 32) return;
    __syncthreads();
    out[threadIdx.x] = 1.0f;
}

extern "C" __global__ void shuffle_names_missing_lanes(float* out) {   // launched with 48 threads
    out[threadIdx.x] = __shfl_sync(0xffffffffu, (float)threadIdx.x, 0);
}

extern "C" __global__ void shuffle_reads_outside_mask(float* out) {
    if (threadIdx.x < 16) out[threadIdx.x] = __shfl_sync(0x0000ffffu, (float)threadIdx.x, 20);
}

extern "C" __global__ void shared_read_before_write(float* out) {
    __shared__ float tile[64];
    if (threadIdx.x < 32) tile[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = tile[threadIdx.x];
}

extern "C" __global__ void copy(const float* in, float* out) {
    out[threadIdx.x] = in[threadIdx.x];
}

extern "C" __global__ void dynamic_shared_copy(float* out) {
    extern __shared__ float dynamic[];
    dynamic[threadIdx.x] = (float)threadIdx.x;
    __syncthreads();
    out[threadIdx.x] = dynamic[blockDim.x - 1 - threadIdx.x];
}

// Warp intrinsics against their definitions; one warp of 32 lanes.
extern "C" __global__ void warp_intrinsics(const int* in, int* out) {
    const int lane = threadIdx.x, v = in[lane];
    out[0 * 32 + lane] = __shfl_sync(0xffffffffu, v, (lane * 7) % 32);
    out[1 * 32 + lane] = __shfl_xor_sync(0xffffffffu, v, 5);
    out[2 * 32 + lane] = __shfl_up_sync(0xffffffffu, v, 3);
    out[3 * 32 + lane] = __shfl_down_sync(0xffffffffu, v, 3, 8);
    out[4 * 32 + lane] = (int)__ballot_sync(0xffffffffu, v % 3 == 0);
    out[5 * 32 + lane] = __any_sync(0xffffffffu, v == 17);
    out[6 * 32 + lane] = __all_sync(0xffffffffu, v >= 0);
}

extern "C" __global__ void __launch_bounds__(64) bounded(float* out) {
    out[threadIdx.x] = 1.0f;
}

// a * b - c, left to the compiler (which may fuse it), and with the product rounded first.
extern "C" __global__ void multiply_subtract(const float* a, const float* b, const float* c, float* out) {
    out[0] = a[0] * b[0] - c[0];
    out[1] = __fmul_rn(a[0], b[0]) - c[0];
}

// Every block adds its thread indices to out[0] and counts itself in out[1].
extern "C" __global__ void atomics(float* out, int* count) {
    atomicAdd(out, (float)threadIdx.x);
    if (threadIdx.x == 0) atomicAdd(count, 1);
}
"""


WMMA = r"""
#include <mma.h>
using namespace nvcuda;

// c (16 x 16) = a (16 x 32, row-major) b (32 x 16, stored column-major), in two k-steps.
extern "C" __global__ void wmma_product(const __half* a, const __half* b, float* c) {
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
    wmma::fill_fragment(acc, 0.0f);
    for (int k = 0; k < 32; k += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> fb;
        wmma::load_matrix_sync(fa, a + k, 32);
        wmma::load_matrix_sync(fb, b + k, 32);
        wmma::mma_sync(acc, fa, fb, acc);
    }
    wmma::store_matrix_sync(c, acc, 16, wmma::mem_row_major);
}

extern "C" __global__ void wmma_misaligned(const __half* a) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
    wmma::load_matrix_sync(fa, a + 1, 32);
}

extern "C" __global__ void wmma_half_warp(const __half* a) {
    if (threadIdx.x < 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
        wmma::load_matrix_sync(fa, a, 32);
    }
}
"""


@pytest.fixture
def cp(monkeypatch):
    return use_emulator(monkeypatch)


def _checks(cp):
    return cp.RawModule(code=CHECKS)


def _launch(module, name, grid, block, args, shared_mem=0):
    module.get_function(name)(grid, block, args, shared_mem=shared_mem)


# ============================================================================ semantics
def test_warp_intrinsics_compute_what_cuda_defines(cp):
    values = np.random.default_rng(0).integers(0, 40, 32).astype(np.int32)
    out = cp.zeros(7 * 32, dtype=np.int32)
    _launch(_checks(cp), "warp_intrinsics", (1,), (32,), (cp.asarray(values), out))
    out = cp.asnumpy(out).reshape(7, 32)
    lane = np.arange(32)
    np.testing.assert_array_equal(out[0], values[(lane * 7) % 32])
    np.testing.assert_array_equal(out[1], values[lane ^ 5])
    np.testing.assert_array_equal(out[2], np.where(lane >= 3, values[np.maximum(lane - 3, 0)], values))
    down = np.where(lane % 8 + 3 < 8, values[np.minimum(lane + 3, 31)], values)      # within segments of 8
    np.testing.assert_array_equal(out[3], down)
    ballot = sum(1 << int(i) for i in lane[values % 3 == 0])
    np.testing.assert_array_equal(out[4].view(np.uint32), np.uint32(ballot))
    np.testing.assert_array_equal(out[5], int((values == 17).any()))
    np.testing.assert_array_equal(out[6], 1)


def test_atomics_add_up_over_blocks(cp):
    out, count = cp.zeros(1, dtype=np.float32), cp.zeros(1, dtype=np.int32)
    _launch(_checks(cp), "atomics", (3, 2), (64,), (out, count))
    assert float(out[0]) == 6 * sum(range(64)) and int(count[0]) == 6


def test_dynamic_shared_memory_is_shared_by_the_block(cp):
    out = cp.zeros(96, dtype=np.float32)
    _launch(_checks(cp), "dynamic_shared_copy", (2,), (96,), (out,), shared_mem=96 * 4)
    np.testing.assert_array_equal(cp.asnumpy(out), np.arange(96)[::-1])


def test_multiply_adds_are_fused_as_the_cuda_compiler_fuses_them(cp):
    """a * b - c becomes one fma (as nvcc's default --fmad=true makes it), __fmul_rn never does.
    With a = b = 1 + 2^-12, a * b = 1 + 2^-11 + 2^-24 rounds to c = 1 + 2^-11: only the fused
    form keeps the 2^-24. (Without FMA instructions, or with MINIBERT_EMULATOR_FP_CONTRACT=off,
    nothing is fused.)"""
    fused = "-ffp-contract=fast" in build.compile_flags()
    a = np.float32(1 + 2.0**-12)
    out = cp.zeros(2, dtype=np.float32)
    _launch(_checks(cp), "multiply_subtract", (1,), (1,),
            (cp.asarray([a]), cp.asarray([a]), cp.asarray([np.float32(1 + 2.0**-11)]), out))
    assert cp.asnumpy(out).tolist() == [2.0**-24 if fused else 0.0, 0.0]


def test_wmma_multiplies_16_by_16_tiles_in_float(cp):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((16, 32)).astype(np.float16)
    b = rng.standard_normal((32, 16)).astype(np.float16)
    c = cp.zeros((16, 16), dtype=np.float32)
    module = cp.RawModule(code=WMMA)
    module.get_function("wmma_product")((1,), (32,), (cp.asarray(a), cp.asarray(np.ascontiguousarray(b.T)), c))
    np.testing.assert_allclose(cp.asnumpy(c), a.astype(np.float64) @ b.astype(np.float64), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name, message", [("wmma_misaligned", "not 32-byte aligned"),
                                           ("wmma_half_warp", "exited while the other lanes")])
def test_wmma_mistakes_fail_the_launch(cp, name, message):
    with pytest.raises(cupy_standin.KernelLaunchError, match=message):
        cp.RawModule(code=WMMA).get_function(name)((1,), (32,), (cp.zeros((16, 32), dtype=np.float16),))


# ============================================================================ checks
@pytest.mark.parametrize("name, block, message", [
    ("divergent_barrier", 64, "reached the barrier at"),
    ("exit_before_barrier", 64, "exited while other threads wait at __syncthreads"),
    ("shuffle_names_missing_lanes", 48, "which does not exist"),
    ("shuffle_reads_outside_mask", 32, "which is not in the mask"),
])
def test_synchronisation_mistakes_fail_the_launch(cp, name, block, message):
    with pytest.raises(cupy_standin.KernelLaunchError, match=message):
        _launch(_checks(cp), name, (2,), (block,), (cp.zeros(block, dtype=np.float32),))


def test_shared_memory_not_written_reads_as_nan(cp):
    out = cp.zeros(64, dtype=np.float32)
    _launch(_checks(cp), "shared_read_before_write", (1,), (64,), (out,))
    out = cp.asnumpy(out)
    assert np.all(out[:32] == 1.0) and np.all(np.isnan(out[32:]))


def test_reading_past_the_end_of_an_array_fails_and_names_it(cp):
    if build.sanitizer():
        pytest.skip("under AddressSanitizer the sanitizer reports this itself")  # pragma: no cover
    with pytest.raises(cupy_standin.KernelLaunchError, match=r"invalid memory access .* byte 40 of argument 0"):
        _launch(_checks(cp), "copy", (1,), (32,), (cp.zeros(10, dtype=np.float32), cp.zeros(32, dtype=np.float32)))


def test_writing_past_the_dynamic_shared_memory_fails(cp):
    with pytest.raises(cupy_standin.KernelLaunchError, match="past the 380 bytes"):
        _launch(_checks(cp), "dynamic_shared_copy", (1,), (96,), (cp.zeros(96, dtype=np.float32),), shared_mem=95 * 4)


@pytest.mark.parametrize("args, message", [
    (lambda cp: (np.zeros(32, np.float32), np.zeros(32, np.float32)), "NumPy array"),
    (lambda cp: (cp.zeros(32, dtype=np.float64), cp.zeros(32, dtype=np.float32)), "float64"),
    (lambda cp: (cp.zeros(32, dtype=np.float32),), "takes 2 arguments"),
    (lambda cp: (cp.zeros(32, dtype=np.float32), np.float32(1.0)), "expected a device array"),
])
def test_arguments_are_checked_against_the_kernel_signature(cp, args, message):
    with pytest.raises(TypeError, match=message):
        _launch(_checks(cp), "copy", (1,), (32,), args(cp))


def test_too_much_shared_memory_or_too_many_threads_fail(cp):
    kernel = _checks(cp).get_function("dynamic_shared_copy")
    out = cp.zeros(96, dtype=np.float32)
    with pytest.raises(cupy_standin.KernelLaunchError, match="dynamic shared memory exceed"):
        kernel((1,), (96,), (out,), shared_mem=48 * 1024 + 4)          # not raised with the attribute
    with pytest.raises(cupy_standin.KernelLaunchError, match="exceeds 1024 threads"):
        kernel((1,), (1025,), (out,))
    bounded = _checks(cp).get_function("bounded")
    bounded((1,), (64,), (out,))
    with pytest.raises(cupy_standin.KernelLaunchError, match="__launch_bounds__ of 64"):
        bounded((1,), (96,), (out,))


# ============================================================================ the kernels' own code
def test_half_conversions_of_the_flash_kernel_equal_numpys(cp):
    """The portable float16 conversions the emulator compiles (the GPU uses cvt) are exact."""
    source = cuda.kernel_source("flash_attention.cu") + r"""
extern "C" __global__ void half_to_float(const minibert::half_t* in, float* out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        out[i] = minibert::to_float(in[i]);
}
extern "C" __global__ void float_to_half(const float* in, minibert::half_t* out, int n) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x)
        out[i] = minibert::from_float<minibert::half_t>(in[i]);
}
"""
    module = cp.RawModule(code=source)
    every_half = np.arange(2**16, dtype=np.uint16).view(np.float16)
    out = cp.empty(2**16, dtype=np.float32)
    module.get_function("half_to_float")((4,), (256,), (cp.asarray(every_half), out, np.int32(2**16)))
    np.testing.assert_array_equal(cp.asnumpy(out), every_half.astype(np.float32))     # NaNs compare equal

    rng = np.random.default_rng(0)
    positive = every_half[:0x7C01].astype(np.float64)                  # 0 .. inf
    halfway = (positive[:-1] + positive[1:]) / 2                        # every tie between two halves
    halfway = np.concatenate([halfway[np.isfinite(halfway)], -halfway[np.isfinite(halfway)]])
    floats = np.concatenate([
        every_half.astype(np.float32), halfway.astype(np.float32),
        (rng.standard_normal(20_000) * 10.0 ** rng.integers(-9, 6, 20_000)).astype(np.float32),
        np.array([65504, 65519.99, 65520, 1e30, -1e-30, 2**-25, 2**-24, 3 * 2**-26, np.inf, -np.inf, np.nan],
                 np.float32)])
    halves = cp.empty(floats.size, dtype=np.float16)
    module.get_function("float_to_half")((4,), (256,), (cp.asarray(floats), halves, np.int32(floats.size)))
    with np.errstate(over="ignore"):
        expected = floats.astype(np.float16)                            # large values round to inf
    got = cp.asnumpy(halves)
    same = (got.view(np.uint16) == expected.view(np.uint16)) | (np.isnan(got) & np.isnan(expected))
    assert same.all(), f"{(~same).sum()} conversions differ, e.g. {floats[~same][:5]}"


def _without_one_barrier(source, which):
    """The flash attention source with the ``which``-th __syncthreads() of the forward kernel removed."""
    start = source.index("flash_attention_forward_kernel(")
    barriers = [m.start() for m in re.finditer(r"__syncthreads\(\);", source[start:])]
    cut = start + barriers[which]
    return source[:cut] + source[cut + len("__syncthreads();"):]


@pytest.mark.parametrize("which", [0, 1], ids=["before-loading-a-tile", "after-loading-a-tile"])
def test_the_flash_kernel_without_one_of_its_barriers_fails(cp, monkeypatch, which):
    """The emulator is not toothless: drop one __syncthreads from a copy of the kernel and
    the forward no longer equals the reference (or the launch fails)."""
    original = cuda.kernel_source
    monkeypatch.setattr(cuda, "kernel_source", lambda name: _without_one_barrier(original(name), which)
                        if name == "flash_attention.cu" else original(name))
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((1, 1, 40, 32)).astype(np.float32) for _ in range(3))
    expected, _ = flash_attention_forward(q, k, v)
    try:
        o, _ = cuda.flash_attention_forward(cp.asarray(q), cp.asarray(k), cp.asarray(v))
    except cupy_standin.KernelLaunchError:
        return
    assert not np.allclose(cp.asnumpy(o), expected, rtol=1e-4, atol=1e-5)


# ============================================================================ AddressSanitizer
SANITIZED = r"""
import numpy as np, sys
sys.path.insert(0, {tests!r})
from cuda_emulator import cupy_standin
cp = cupy_standin.module()
module = cp.RawModule(code='extern "C" __global__ void copy(const float* in, float* out) '
                           '{{ out[threadIdx.x] = in[threadIdx.x]; }}')
module.get_function("copy")((1,), (32,), (cp.zeros(10, dtype=np.float32), cp.zeros(32, dtype=np.float32)))
"""


@pytest.mark.slow
def test_sanitizer_mode_reports_a_read_past_the_end():
    """MINIBERT_EMULATOR_SANITIZE=address builds with AddressSanitizer, which reports the read."""
    env = dict(os.environ, **build.sanitizer_environment())
    if not all(Path(library).is_file() for library in env["LD_PRELOAD"].split()):
        pytest.skip("this g++ comes without AddressSanitizer (no libasan.so)")     # pragma: no cover
    done = subprocess.run([sys.executable, "-c", SANITIZED.format(tests=str(ROOT / "tests"))],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "AddressSanitizer: heap-buffer-overflow" in done.stderr, done.stderr[-3000:]
