"""A stand-in for the part of CuPy that minibert's kernel launchers and kernel tests use.

``cupy_standin.module()`` is a module object to put in ``sys.modules["cupy"]``: its arrays
are NumPy arrays on the host (a subclass, so the library sees "CuPy arrays"), and its
``RawModule`` compiles the CUDA source with g++ (``build.py``) and runs kernels on the CPU
emulator (``cuda_emulator.h``). What it checks on each launch, beyond what CuPy checks:

* each argument against the kernel's C++ signature: an array for each pointer, of the
  pointee's size and kind (a ``float*`` takes float32, a 2-byte struct float16, a
  ``long long*`` int64), and a NumPy scalar of exactly the parameter's type for each scalar;
* the dynamic shared memory against the kernel's limit (48 KiB unless raised through
  ``max_dynamic_shared_size_bytes``), the block size against 1024 threads and the kernel's
  ``__launch_bounds__``, the grid against CUDA's limits.

Grid and block sizes of 0 are raised to 1 as CuPy does. Every array it allocates ends at a
guard page (except under AddressSanitizer, whose own allocator checks bounds), so a read or
write past its end fails the launch with the argument's name; new arrays are filled with
0xFF bytes (NaN) so that reading memory no kernel wrote shows.
"""

from __future__ import annotations

import collections
import ctypes
import functools
import itertools
import mmap
import re
import threading
import types

import numpy as np

from . import build

PAGE = mmap.PAGESIZE
DEFAULT_SHARED_MEMORY = 48 * 1024
MAX_SHARED_MEMORY_OPTIN = 227 * 1024        # an H100's opt-in limit per block
MAX_THREADS_PER_BLOCK = 1024
MULTIPROCESSORS = 4                          # few, so grid-stride loops run several rounds

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mprotect.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_launch_lock = threading.Lock()
_launch_counter = itertools.count()
queries = collections.Counter()             # driver queries a real GPU would answer: get_function, attributes
allocations = collections.Counter()         # arrays allocated on the "device"


class KernelLaunchError(RuntimeError):
    """A kernel failed under the emulator (a check, a fault, a deadlock)."""


# ============================================================================ arrays
class ndarray(np.ndarray):
    """A "device" array: a NumPy array on the host."""

    def get(self):
        return np.array(self, copy=True).view(np.ndarray)


def _guarded_empty(shape, dtype):
    """An uninitialised-looking (0xFF-filled) array whose last byte sits against a guard page."""
    allocations["arrays"] += 1
    dtype = np.dtype(dtype)
    shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(s) for s in shape)
    count = int(np.prod(shape, dtype=np.int64))
    nbytes = count * dtype.itemsize
    if build.sanitizer():
        raw = np.empty(nbytes, np.uint8)                  # malloc'd: AddressSanitizer guards it
    else:
        pages = -(-nbytes // PAGE)
        region = mmap.mmap(-1, (pages + 1) * PAGE)
        whole = np.frombuffer(region, np.uint8)
        guard = whole.ctypes.data + pages * PAGE
        if _libc.mprotect(guard, PAGE, 0) != 0:           # PROT_NONE
            raise OSError(ctypes.get_errno(), "mprotect failed for the guard page")
        raw = whole[pages * PAGE - nbytes: pages * PAGE]
    raw.fill(0xFF)
    return raw.view(dtype).reshape(shape).view(ndarray)


def _device(a):
    return isinstance(a, ndarray)


def empty(shape, dtype=np.float32, order="C"):
    return _guarded_empty(shape, dtype)


def zeros(shape, dtype=np.float32):
    out = _guarded_empty(shape, dtype)
    out.view(np.ndarray)[...] = 0
    return out


def ones(shape, dtype=np.float32):
    out = _guarded_empty(shape, dtype)
    out.view(np.ndarray)[...] = 1
    return out


def empty_like(a, dtype=None):
    return empty(np.shape(a), dtype or a.dtype)


def zeros_like(a, dtype=None):
    return zeros(np.shape(a), dtype or a.dtype)


def asarray(a, dtype=None):
    """A device array: ``a`` itself when it already is one of that dtype, else a copy."""
    if _device(a) and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    host = np.asarray(a, dtype=dtype)
    out = _guarded_empty(host.shape, host.dtype)
    out.view(np.ndarray)[...] = host
    return out


array = asarray


def ascontiguousarray(a, dtype=None):
    if _device(a) and a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
        return a
    host = np.asarray(a, dtype=dtype)
    out = _guarded_empty(host.shape, host.dtype)
    out.view(np.ndarray)[...] = host
    return out


def asnumpy(a):
    return np.array(a, copy=True).view(np.ndarray) if _device(a) else np.asarray(a)


def _wrap(function):
    """A NumPy function whose array results come back as device arrays."""

    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        result = function(*args, **kwargs)
        if isinstance(result, np.ndarray) and not isinstance(result, ndarray):
            return result.view(ndarray)
        return result

    return wrapped


# ============================================================================ kernels
_NUMPY_CODES = {  # numpy dtype -> the emulator's type code of one element
    np.dtype(np.float32): "f4", np.dtype(np.float64): "f8", np.dtype(np.float16): "x2",
    np.dtype(np.int8): "i1", np.dtype(np.int16): "i2", np.dtype(np.int32): "i4", np.dtype(np.int64): "i8",
    np.dtype(np.uint8): "u1", np.dtype(np.uint16): "u2", np.dtype(np.uint32): "u4", np.dtype(np.uint64): "u8",
    np.dtype(np.bool_): "b1",
}
_CODE_NAMES = {"f4": "float", "f8": "double", "x2": "a 2-byte struct (half)", "i1": "signed char", "i2": "short",
               "i4": "int", "i8": "long long", "u1": "unsigned char", "u2": "unsigned short", "u4": "unsigned int",
               "u8": "unsigned long long", "b1": "bool", "v": "void"}


def _code_name(code):
    return _CODE_NAMES.get(code.lstrip("*"), code.lstrip("*")) + "*" * code.count("*")


class Function:
    """One kernel of a RawModule: call it as ``f(grid, block, args, shared_mem=...)``."""

    def __init__(self, module, index, name, signature, max_threads):
        self._module, self._index = module, index
        self.name = name
        self.signature = signature.split()
        self.max_threads_per_block = max_threads            # its __launch_bounds__, or 1024
        self._max_dynamic_shared = DEFAULT_SHARED_MEMORY

    @property
    def max_dynamic_shared_size_bytes(self):
        queries["max_dynamic_shared_size_bytes"] += 1       # a cuFuncGetAttribute on a GPU
        return self._max_dynamic_shared

    @max_dynamic_shared_size_bytes.setter
    def max_dynamic_shared_size_bytes(self, value):
        if value > MAX_SHARED_MEMORY_OPTIN:
            raise KernelLaunchError(f"{self.name}: max_dynamic_shared_size_bytes {value} exceeds the "
                                    f"device's {MAX_SHARED_MEMORY_OPTIN}")
        self._max_dynamic_shared = value

    def _argument(self, i, code, value, keep):
        """A ctypes pointer to the argument's value, after checking it against the parameter."""
        where = f"kernel {self.name}, argument {i} ({_code_name(code)})"
        if code.startswith("*"):
            if not isinstance(value, np.ndarray):
                raise TypeError(f"{where}: expected a device array, got {type(value).__name__}")
            if not _device(value):
                raise TypeError(f"{where}: got a NumPy array; kernels take device (cupy) arrays")
            bfloat16_bits = code == "*x2" and value.dtype == np.uint16     # CuPy has no bfloat16 dtype
            if code != "*v" and _NUMPY_CODES.get(value.dtype) != code[1:] and not bfloat16_bits:
                raise TypeError(f"{where}: got an array of {value.dtype}")
            holder = ctypes.c_void_p(value.ctypes.data)
        else:
            if isinstance(value, bool):
                value = np.bool_(value)
            elif isinstance(value, int):
                value = np.int64(value)                     # what CuPy passes for a Python int
            elif isinstance(value, float):
                value = np.float64(value)
            if not isinstance(value, np.generic):
                raise TypeError(f"{where}: got {type(value).__name__}")
            if _NUMPY_CODES.get(value.dtype) != code:
                raise TypeError(f"{where}: got a {value.dtype} scalar")
            holder = ctypes.create_string_buffer(value.tobytes(), value.dtype.itemsize)
        keep.append(holder)
        return ctypes.cast(ctypes.pointer(holder) if isinstance(holder, ctypes.c_void_p) else holder,
                           ctypes.c_void_p)

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        if not isinstance(grid, tuple) or not isinstance(block, tuple) or not isinstance(args, tuple):
            raise TypeError(f"{self.name}: grid, block and args must be tuples (as CuPy requires)")
        grid = tuple(max(1, int(g)) for g in (grid + (1, 1))[:3])      # CuPy raises 0 to 1
        block = tuple(max(1, int(b)) for b in (block + (1, 1))[:3])
        if np.prod(block) > MAX_THREADS_PER_BLOCK or block[2] > 64:
            raise KernelLaunchError(f"{self.name}: block {block} exceeds {MAX_THREADS_PER_BLOCK} threads (z <= 64)")
        if np.prod(block) > self.max_threads_per_block:
            raise KernelLaunchError(f"{self.name}: block {block} exceeds the kernel's __launch_bounds__ of "
                                    f"{self.max_threads_per_block} threads")
        if grid[0] > 2**31 - 1 or grid[1] > 65535 or grid[2] > 65535:
            raise KernelLaunchError(f"{self.name}: grid {grid} exceeds CUDA's limits")
        if shared_mem > self._max_dynamic_shared:
            raise KernelLaunchError(f"{self.name}: {shared_mem} bytes of dynamic shared memory exceed the "
                                    f"kernel's limit of {self._max_dynamic_shared}")
        if shared_mem > self._module.shared_capacity:
            raise KernelLaunchError(f"{self.name}: {shared_mem} bytes of shared memory exceed the emulator's "
                                    f"{self._module.shared_capacity}")
        if len(args) != len(self.signature):
            raise TypeError(f"kernel {self.name} takes {len(self.signature)} arguments "
                            f"({', '.join(map(_code_name, self.signature))}), got {len(args)}")
        keep = []
        pointers = (ctypes.c_void_p * max(1, len(args)))(
            *[self._argument(i, code, value, keep) for i, (code, value) in enumerate(zip(self.signature, args))])
        message = ctypes.create_string_buffer(8192)
        fault = ctypes.c_void_p()
        with _launch_lock:
            failed = self._module.library.emu_launch(
                self._index, (ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), shared_mem, pointers,
                next(_launch_counter), int(not build.sanitizer()), message, len(message), ctypes.byref(fault))
        if failed:
            text = message.value.decode(errors="replace")
            if fault.value is not None:
                text += _fault_location(fault.value, args)
            raise KernelLaunchError(f"kernel {self.name} (grid {grid}, block {block}): {text}")


def _fault_location(address, args):
    """Which argument array a faulting address lies just past (the guard page after it)."""
    for i, a in enumerate(args):
        if isinstance(a, np.ndarray):
            start, end = a.ctypes.data, a.ctypes.data + a.nbytes
            if start <= address < end + PAGE:
                return (f" at address {address:#x}, byte {address - start} of argument {i} "
                        f"({a.dtype} array of {a.nbytes} bytes)")
    return f" at address {address:#x}"


class RawModule:
    """Compiles ``code`` for the emulator. ``name_expressions`` name template instances
    (as in CuPy); ``extern "C"`` kernels are found by name in the source. ``options`` are
    NVRTC's and are kept but not used (g++ gets the emulator's own, see build.py)."""

    def __init__(self, code, options=(), name_expressions=None, backend="nvrtc", **_):
        self.code = code
        self.options = tuple(options)
        kernels = [(name, name) for name in name_expressions or ()]
        for name in re.findall(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(',
                               code):
            if (name, name) not in kernels:
                kernels.append((name, name))
        path = build.build(code, "kernel_source.cu", kernels)
        if build.sanitizer() and not build.asan_loaded():
            raise RuntimeError("MINIBERT_EMULATOR_SANITIZE=address needs the AddressSanitizer runtime loaded "
                               f"first: run Python as  {build.sanitizer_preload_hint()} python -m pytest ...")
        self.library = ctypes.CDLL(str(path))
        self.library.emu_kernel_name.restype = ctypes.c_char_p
        self.library.emu_kernel_signature.restype = ctypes.c_char_p
        self.library.emu_shared_capacity.restype = ctypes.c_ulonglong
        self.library.emu_launch.argtypes = (
            ctypes.c_int, ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint), ctypes.c_ulonglong,
            ctypes.POINTER(ctypes.c_void_p), ctypes.c_ulonglong, ctypes.c_int, ctypes.c_char_p, ctypes.c_ulonglong,
            ctypes.POINTER(ctypes.c_void_p))
        self.shared_capacity = self.library.emu_shared_capacity()
        self._functions = {}
        for i in range(self.library.emu_kernel_count()):
            name = self.library.emu_kernel_name(i).decode()
            self._functions[name] = Function(self, i, name, self.library.emu_kernel_signature(i).decode(),
                                             self.library.emu_kernel_max_threads(i))

    def get_function(self, name):
        queries["get_function"] += 1                        # a cuModuleGetFunction on a GPU
        if name not in self._functions:
            raise KeyError(f"no kernel {name!r} in the module (it has {sorted(self._functions)})")
        return self._functions[name]


# ============================================================================ devices
class Device:
    def __init__(self, device=0):
        self.id = int(device)

    @property
    def attributes(self):
        queries["attributes"] += 1                          # cuDeviceGetAttribute on a GPU
        return {"MultiProcessorCount": MULTIPROCESSORS, "MaxSharedMemoryPerBlockOptin": MAX_SHARED_MEMORY_OPTIN,
                "MaxThreadsPerBlock": MAX_THREADS_PER_BLOCK}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        pass


def module() -> types.ModuleType:
    """A fresh ``cupy`` stand-in module."""
    cp = types.ModuleType("cupy", "A stand-in for CuPy running kernels on the CPU emulator (tests only).")
    cp.ndarray = ndarray
    for name in ("empty", "zeros", "ones", "empty_like", "zeros_like", "asarray", "array", "ascontiguousarray",
                 "asnumpy", "RawModule"):
        setattr(cp, name, globals()[name])
    for name in ("float16", "float32", "float64", "int32", "int64", "uint32", "uint64", "bool_", "dtype"):
        setattr(cp, name, getattr(np, name))
    cp.cuda = types.SimpleNamespace(
        Device=Device,
        runtime=types.SimpleNamespace(getDeviceCount=lambda: 1),
        Stream=types.SimpleNamespace(null=None),
    )
    cp.__getattr__ = lambda name: _wrap(getattr(np, name)) if callable(getattr(np, name)) else getattr(np, name)
    cp.is_emulator = True
    return cp
