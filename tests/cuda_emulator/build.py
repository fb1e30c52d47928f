"""Compile a CUDA source with g++ against the emulator's header, into a cached shared library.

The source is compiled as it is: a wrapper translation unit includes ``cuda_emulator.h``,
then the source, then one ``EMU_KERNEL`` registration per kernel asked for. Each
``__shared__`` array becomes an undefined symbol of "internal" visibility in the object file
(see the header); a second small translation unit defines one memory region per such symbol.
The library is cached under a folder keyed by a hash of everything that went into it.

Environment:

* ``CXX``: the compiler (default ``g++``);
* ``MINIBERT_EMULATOR_CACHE``: the cache folder (default ``<tmp>/minibert-cuda-emulator``);
* ``MINIBERT_EMULATOR_SANITIZE=address``: build with AddressSanitizer (the Python process
  must then start with libasan and libstdc++ preloaded, see ``sanitizer_environment``);
* ``MINIBERT_EMULATOR_FP_CONTRACT=off``: do not contract ``a * b + c`` into fused
  multiply-adds. By default the emulator contracts, as the CUDA compiler does, when the CPU
  has FMA instructions.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
HEADERS = ("cuda_emulator.h", "cuda_emulator_runtime.h", "include/cuda_fp16.h", "include/cuda_bf16.h",
           "include/mma.h")                 # include/: the CUDA headers a kernel may include
OPTIMISATION = "-O2"          # -O1 would not contract a * b + c into fused multiply-adds


def compiler() -> str | None:
    """The C++ compiler's path, or None when the emulator's toolchain is missing: g++ (or
    $CXX) with binutils' readelf and c++filt, on Linux (the runtime uses futexes and ELF
    symbol visibility)."""
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None or not sys.platform.startswith("linux") or not (shutil.which("readelf") and shutil.which("c++filt")):
        return None
    return cxx


def sanitizer() -> str | None:
    """"address" when MINIBERT_EMULATOR_SANITIZE asks for AddressSanitizer, else None."""
    value = os.environ.get("MINIBERT_EMULATOR_SANITIZE", "").strip().lower()
    if value in ("", "0", "off", "no"):
        return None
    if value != "address":
        raise ValueError(f"MINIBERT_EMULATOR_SANITIZE must be 'address' or empty, got {value!r}")
    return value


def sanitizer_environment() -> dict:
    """The environment a Python process needs to load kernels built with AddressSanitizer: its
    runtime preloaded, with libstdc++ beside it (else it cannot intercept C++ exceptions, which
    the emulator throws to unwind threads after an error), and leak reports off (Python's)."""
    def library(name):
        return subprocess.run([compiler() or "g++", f"-print-file-name={name}"], capture_output=True,
                              text=True).stdout.strip()

    return {"MINIBERT_EMULATOR_SANITIZE": "address", "ASAN_OPTIONS": "detect_leaks=0",
            "LD_PRELOAD": f"{library('libasan.so')} {library('libstdc++.so.6')}"}


def sanitizer_preload_hint() -> str:
    """``sanitizer_environment`` as shell assignments, for messages."""
    return " ".join(f'{key}="{value}"' for key, value in sanitizer_environment().items())


def asan_loaded() -> bool:
    """True when this process runs with the AddressSanitizer runtime loaded."""
    with open("/proc/self/maps", encoding="utf-8") as maps:
        return "libasan" in maps.read()


def _cpu_has_fma() -> bool:
    """True when this CPU has fused multiply-add instructions (x86 FMA3)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            return any(line.startswith("flags") and " fma" in line for line in info)
    except OSError:
        return False


def compile_flags() -> list[str]:
    """g++'s flags: C++20, optimised, position-independent, contracting as nvcc does."""
    flags = ["-std=c++20", OPTIMISATION, "-g", "-fPIC", "-fvisibility=hidden", "-pthread",
             "-Wno-unknown-pragmas", "-Wno-attributes"]
    if os.environ.get("MINIBERT_EMULATOR_FP_CONTRACT", "").lower() != "off" and _cpu_has_fma():
        flags += ["-mfma", "-ffp-contract=fast"]       # as nvcc's default --fmad=true
    else:
        flags += ["-ffp-contract=off"]
    if sanitizer():
        flags += ["-fsanitize=address", "-fno-omit-frame-pointer"]
    return flags


def _cache_folder() -> Path:
    """Where built libraries are kept (created when missing)."""
    folder = os.environ.get("MINIBERT_EMULATOR_CACHE") or os.path.join(tempfile.gettempdir(), "minibert-cuda-emulator")
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    return path


def dynamic_shared_names(source: str) -> set[str]:
    """Names of the ``extern __shared__ T name[]`` arrays in a source (their size is the launch's)."""
    return set(re.findall(r"extern\s+__shared__\s+[\w:\s<>,()]+?\b(\w+)\s*\[\s*\]", source))


def launch_bounds(source: str) -> dict[str, str]:
    """Kernel name -> the expression of its ``__launch_bounds__`` (the most threads per block)."""
    return dict((name, bound) for bound, name in
                re.findall(r"__launch_bounds__\(\s*([^,)]+?)\s*(?:,[^)]*)?\)\s*(\w+)\s*\(", source))


def _max_threads(expression: str, bounds: dict[str, str]) -> str:
    """C++ for a kernel's maximum threads per block, evaluated in the kernel's namespace."""
    qualified = expression.split("<")[0].strip()                 # minibert::kernel<float, 64> -> minibert::kernel
    namespace, _, name = qualified.rpartition("::")
    if name not in bounds:
        return "1024"
    using = f"using namespace {namespace}; " if namespace else ""
    return f"[] {{ {using}return (int)({bounds[name]}); }}()"


def _wrapper(source: str, source_name: str, kernels: list[tuple[str, str]]) -> str:
    """The translation unit: the emulator's header, the source, one registration per kernel."""
    bounds = launch_bounds(source)
    lines = ['#include "cuda_emulator.h"', f'#include "{source_name}"']
    lines += [f'EMU_KERNEL("{name}", {_max_threads(expression, bounds)}, {expression})'
              for name, expression in kernels]
    lines += ['#include "cuda_emulator_runtime.h"', ""]
    return "\n".join(lines)


def _shared_symbols(object_file: Path) -> list[tuple[str, str]]:
    """(mangled, demangled) names of the undefined "internal" symbols: the __shared__ arrays."""
    table = subprocess.run(["readelf", "-sW", str(object_file)], capture_output=True, text=True, check=True).stdout
    mangled = sorted({line.split()[-1] for line in table.splitlines()
                      if " UND " in line and " INTERNAL " in line})
    if not mangled:
        return []
    demangled = subprocess.run(["c++filt"], input="\n".join(mangled), capture_output=True, text=True,
                               check=True).stdout.split("\n")
    return list(zip(mangled, demangled))


def _shared_definitions(symbols, dynamic_names) -> str:
    """A translation unit defining one memory region per __shared__ array, and their table."""
    lines = ['#include "cuda_emulator.h"']
    entries = []
    for i, (mangled, readable) in enumerate(symbols):
        lines.append(f'alignas(4096) unsigned char emu_shared_region_{i}[emu::SHARED_CAPACITY] '
                     f'__asm__("{mangled}") __attribute__((visibility("hidden")));')
        dynamic = int(readable.split("::")[-1] in dynamic_names)
        entries.append(f'    {{emu_shared_region_{i}, "{readable}", {dynamic}}},')
    entries.append("    {nullptr, nullptr, 0},")            # keeps the array non-empty
    lines.append('extern "C" emu::SharedRegion emu_shared_regions[] = {')
    lines += entries
    lines.append("};")
    lines.append(f'extern "C" const int emu_shared_region_count = {len(symbols)};')
    return "\n".join(lines) + "\n"


def build(source: str, source_name: str, kernels: list[tuple[str, str]]) -> Path:
    """The shared library for ``source`` exporting ``kernels`` [(name, C++ expression)].

    Compiled once per distinct input; later calls return the cached library.
    """
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("the CUDA emulator needs g++ 11 or later (C++20) and binutils on Linux; not found")
    flags = compile_flags()
    digest = hashlib.sha256()
    for part in [source, source_name, repr(kernels), repr(flags), cxx] + [(HERE / h).read_text() for h in HEADERS]:
        digest.update(part.encode())
    library = _cache_folder() / f"{Path(source_name).stem}-{digest.hexdigest()[:20]}.so"
    if library.exists():
        return library

    with tempfile.TemporaryDirectory(dir=library.parent) as work:
        work = Path(work)
        (work / source_name).write_text(source, encoding="utf-8")
        (work / "wrapper.cpp").write_text(_wrapper(source, source_name, kernels), encoding="utf-8")
        include = ["-I", str(HERE), "-I", str(HERE / "include"), "-I", str(work)]
        _run([cxx, *flags, *include, "-c", str(work / "wrapper.cpp"), "-o", str(work / "kernels.o")], source_name)
        symbols = _shared_symbols(work / "kernels.o")
        (work / "shared.cpp").write_text(_shared_definitions(symbols, dynamic_shared_names(source)), encoding="utf-8")
        _run([cxx, *flags, *include, "-c", str(work / "shared.cpp"), "-o", str(work / "shared.o")], source_name)
        _run([cxx, *flags, "-shared", "-o", str(work / "library.so"), str(work / "kernels.o"),
              str(work / "shared.o")], source_name)
        os.replace(work / "library.so", library)          # atomic: concurrent builders agree
    return library


def _run(command, source_name):
    """Run a compiler command; raise with its messages if it fails."""
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"the CUDA emulator could not compile {source_name}:\n{' '.join(command)}\n{done.stderr}")
