"""The safetensors file format, read and written with NumPy alone.

A safetensors file is three parts, back to back::

    8 bytes    N, the header length, unsigned little-endian
    N bytes    a JSON object (UTF-8), padded with spaces:
                 {"name": {"dtype": "F32", "shape": [30522, 384], "data_offsets": [begin, end]},
                  ...,
                  "__metadata__": {"format": "pt"}}          (optional, str -> str)
    the rest   the data area: every tensor's raw little-endian bytes, C order;
               ``data_offsets`` count from the start of the data area

Nothing in the file is executable, which is why checkpoints are exchanged in this
format rather than as pickles: loading one can only ever produce arrays.

Reading (:func:`load_file`)
    The header is validated before a single tensor byte is read, so that a truncated,
    corrupt or hostile file gives a :class:`ValueError` naming the file and the problem,
    never a crash or an allocation larger than the file:

    * the header length must fit inside the file and be at most :data:`MAX_HEADER_BYTES`;
    * the header must be a JSON object (duplicate keys are refused) of entries with a
      known ``dtype``, a ``shape`` of non-negative integers and ``data_offsets``
      ``[begin, end]`` with ``0 <= begin <= end``;
    * ``end - begin`` must equal ``prod(shape) * itemsize``;
    * strictness, as in the reference implementation: sorted by offset, the buffers must
      tile the data area exactly, with no overlap, no hole between two buffers and no
      trailing bytes after the last one. A file that breaks this is refused even though
      each tensor could still be read, because it is not a file any correct writer makes.

    Each tensor is read once, with a seek and ``readinto`` into a fresh array, so the
    returned arrays own their memory and are detached from the file (the file may be
    overwritten or deleted afterwards). ``load_file(path, mmap=True)`` instead returns
    read-only views on a memory map: nothing is read until used, which suits picking a
    few tensors out of a large file (bfloat16 tensors are always converted, so copied).

    dtypes read: F64, F32, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8, BOOL.
    BF16 becomes float32 exactly (a bfloat16 is the high half of a float32). Float8
    formats are refused with a message saying so.

Writing (:func:`save_file`)
    float64, float32, float16, int64/32/16/8, uint64/32/16/8 and bool arrays (CuPy
    arrays are copied to the host). Tensors are laid out by decreasing item size, then
    name, so every buffer is aligned to its item size; the header is padded with spaces
    to a multiple of 8 bytes, like the reference writer. The write is atomic: the bytes
    go to a temporary file in the same directory, which is flushed, ``fsync``-ed and then
    renamed over the destination with :func:`os.replace`. An interrupted or failing save
    leaves any previous file at ``path`` untouched and no temporary file behind.

The function names mirror the ``safetensors`` package (``safetensors.numpy.load_file``,
``save_file``), and files written here are read by it, and vice versa.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import struct
import sys
from typing import Iterable, Mapping

import numpy as np

from .backend import to_numpy

__all__ = [
    "MAX_HEADER_BYTES",
    "load_file",
    "save_file",
    "read_header",
    "TensorInfo",
]

#: The largest header accepted (the reference implementation uses the same limit).
MAX_HEADER_BYTES = 100_000_000

# dtype name in the file -> NumPy dtype of the stored bytes (always little-endian).
_STORED = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),     # converted to float32 on load
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}
# Known to the format, but with no NumPy equivalent: refused with a specific message.
_KNOWN_UNSUPPORTED = {"F8_E4M3", "F8_E5M2", "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64"}

# NumPy dtype kind+size -> dtype name written in the file.
_WRITTEN = {
    np.dtype(np.float64): "F64",
    np.dtype(np.float32): "F32",
    np.dtype(np.float16): "F16",
    np.dtype(np.int64): "I64",
    np.dtype(np.int32): "I32",
    np.dtype(np.int16): "I16",
    np.dtype(np.int8): "I8",
    np.dtype(np.uint64): "U64",
    np.dtype(np.uint32): "U32",
    np.dtype(np.uint16): "U16",
    np.dtype(np.uint8): "U8",
    np.dtype(np.bool_): "BOOL",
}


class TensorInfo:
    """One validated header entry: dtype name, shape, and absolute byte range in the file."""

    __slots__ = ("name", "dtype", "shape", "start", "stop")

    def __init__(self, name: str, dtype: str, shape: tuple, start: int, stop: int):
        self.name, self.dtype, self.shape, self.start, self.stop = name, dtype, shape, start, stop

    @property
    def nbytes(self) -> int:
        return self.stop - self.start

    def __repr__(self):
        return f"TensorInfo({self.name!r}, dtype={self.dtype}, shape={self.shape}, bytes={self.nbytes})"


# --------------------------------------------------------------------------- reading
def _fail(path, problem: str):
    raise ValueError(f"{os.fspath(path)}: not a valid safetensors file: {problem}")


def _no_duplicates(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r} in the JSON header")
        obj[key] = value
    return obj


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def read_header(path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Validate a file's header; return ({name: TensorInfo}, metadata).

    Reads only the header. Raises ``ValueError`` naming ``path`` and the problem when the
    file is not a well-formed safetensors file (see the module docstring for the checks),
    ``FileNotFoundError`` when it does not exist.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        return _read_header(f, path, file_size)


def _read_header(f, path: str, file_size: int):
    if file_size < 8:
        _fail(path, f"the file is {file_size} bytes long, shorter than the 8-byte header length")
    (n,) = struct.unpack("<Q", f.read(8))
    if n > MAX_HEADER_BYTES:
        _fail(path, f"header length {n} is larger than the {MAX_HEADER_BYTES}-byte limit "
                    "(corrupt file, or not a safetensors file)")
    if n > file_size - 8:
        _fail(path, f"header length {n} runs past the end of the file ({file_size} bytes); "
                    "the file is truncated or not a safetensors file")
    raw = f.read(n)
    if len(raw) != n:
        _fail(path, f"could read only {len(raw)} of the {n} header bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        _fail(path, f"the header is not UTF-8 text ({exc.reason} at byte {exc.start})")
    if not text.startswith("{"):
        _fail(path, "the header does not start with '{' (not a safetensors file?)")
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates)
    except ValueError as exc:   # JSONDecodeError is a ValueError; so is the duplicate-key check
        _fail(path, f"the header is not valid JSON ({exc})")
    if not isinstance(header, dict):
        _fail(path, "the header is not a JSON object")

    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        _fail(path, "'__metadata__' must be an object mapping strings to strings")

    data_start = 8 + n
    data_size = file_size - data_start
    infos: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        where = f"tensor {name!r}"
        if not isinstance(entry, dict):
            _fail(path, f"{where}: the entry is not an object")
        missing = {"dtype", "shape", "data_offsets"} - entry.keys()
        if missing:
            _fail(path, f"{where}: the entry lacks {sorted(missing)}")
        dtype = entry["dtype"]
        if not isinstance(dtype, str):
            _fail(path, f"{where}: dtype {dtype!r} is not a string")
        if dtype not in _STORED:
            if dtype in _KNOWN_UNSUPPORTED:
                _fail(path, f"{where}: dtype {dtype} has no NumPy equivalent and is not supported")
            _fail(path, f"{where}: unknown dtype {dtype!r} (known: {', '.join(_STORED)})")
        shape = entry["shape"]
        if not isinstance(shape, list) or not all(_is_int(d) for d in shape):
            _fail(path, f"{where}: shape {shape!r} is not a list of integers")
        if any(d < 0 for d in shape):
            _fail(path, f"{where}: shape {shape} has a negative dimension")
        offsets = entry["data_offsets"]
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(_is_int(o) for o in offsets)):
            _fail(path, f"{where}: data_offsets {offsets!r} is not a pair of integers")
        begin, end = offsets
        if not 0 <= begin <= end:
            _fail(path, f"{where}: data_offsets [{begin}, {end}] are not 0 <= begin <= end")
        if end > data_size:
            _fail(path, f"{where}: data_offsets [{begin}, {end}] run past the end of the data "
                        f"area ({data_size} bytes); the file is truncated")
        expected = math.prod(shape) * _STORED[dtype].itemsize
        if expected != end - begin:
            _fail(path, f"{where}: shape {shape} of {dtype} needs {expected} bytes, "
                        f"but data_offsets [{begin}, {end}] hold {end - begin}")
        infos[name] = TensorInfo(name, dtype, tuple(shape), data_start + begin, data_start + end)

    # The buffers, sorted by offset, must tile the data area exactly.
    position = 0
    for info in sorted(infos.values(), key=lambda t: (t.start, t.stop)):
        begin, end = info.start - data_start, info.stop - data_start
        if begin < position:
            _fail(path, f"tensor {info.name!r}: data_offsets [{begin}, {end}] overlap the "
                        f"previous tensor, which ends at {position}")
        if begin > position:
            _fail(path, f"tensor {info.name!r}: data_offsets [{begin}, {end}] leave a hole "
                        f"after byte {position} of the data area")
        position = end
    if position != data_size:
        _fail(path, f"the tensors cover {position} bytes but the data area holds {data_size} "
                    "(trailing bytes after the last tensor)")
    return infos, metadata


def _finish(info: TensorInfo, flat: np.ndarray) -> np.ndarray:
    """Stored bytes (as the stored dtype, flat) -> array of the final dtype and shape."""
    if info.dtype == "BF16":
        # A bfloat16 is the top 16 bits of a float32: widen, shift up, reinterpret.
        flat = (flat.astype(np.uint32) << 16).view(np.float32)
    elif not flat.dtype.isnative:
        flat = flat.astype(flat.dtype.newbyteorder("="))
    return flat.reshape(info.shape)


def load_file(path, keys: Iterable[str] | None = None, mmap: bool = False) -> dict[str, np.ndarray]:
    """Read a safetensors file into ``{name: np.ndarray}`` (in header order).

    ``keys`` restricts loading to those tensors (a ``KeyError`` lists any that are absent).
    By default every array owns its memory (read once, no double copy). With
    ``mmap=True`` the arrays are read-only views on a memory map of the file.
    BF16 tensors come back as float32.
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        file_size = os.fstat(f.fileno()).st_size
        infos, _ = _read_header(f, path, file_size)
        if keys is not None:
            keys = list(keys)
            absent = [k for k in keys if k not in infos]
            if absent:
                raise KeyError(f"{path}: no tensor named {absent[:5]}"
                               f"{' ...' if len(absent) > 5 else ''} in the file")
            infos = {k: infos[k] for k in keys}
        if mmap:
            return _load_mmap(path, infos, file_size)
        out = {}
        for info in sorted(infos.values(), key=lambda t: t.start):   # sequential reads
            stored = _STORED[info.dtype]
            flat = np.empty(info.nbytes // stored.itemsize, dtype=stored)
            f.seek(info.start)
            got = f.readinto(memoryview(flat).cast("B")) if info.nbytes else 0
            if got != info.nbytes:
                _fail(path, f"tensor {info.name!r}: read {got} of {info.nbytes} bytes "
                            "(was the file truncated while it was being read?)")
            out[info.name] = _finish(info, flat)
        return {name: out[name] for name in infos}


def _load_mmap(path: str, infos: dict[str, TensorInfo], file_size: int) -> dict[str, np.ndarray]:
    mm = np.memmap(path, dtype=np.uint8, mode="r") if file_size else np.empty(0, np.uint8)
    out = {}
    for name, info in infos.items():
        stored = _STORED[info.dtype]
        flat = mm[info.start:info.stop]
        if info.start % stored.itemsize == 0:
            flat = flat.view(stored)
        else:                      # misaligned buffer (another writer): copy to realign
            flat = np.frombuffer(flat.tobytes(), dtype=stored)
        out[name] = _finish(info, flat)
    return out


# --------------------------------------------------------------------------- writing
def _as_host_array(name, value) -> np.ndarray:
    if isinstance(value, np.ma.MaskedArray):
        raise TypeError(f"tensor {name!r}: a masked array would lose its mask; save .filled(...) "
                        "or the data and the mask as two tensors")
    arr = to_numpy(value)
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"tensor {name!r}: expected an array, got {type(value).__name__}")
    if arr.dtype == object:
        raise TypeError(f"tensor {name!r}: an array of Python objects cannot be written (numbers only)")
    dtype = arr.dtype
    if dtype.byteorder not in ("=", "|", "<") or (dtype.byteorder == "=" and sys.byteorder == "big"):
        arr = arr.astype(dtype.newbyteorder("<"))
    if np.dtype(arr.dtype.newbyteorder("=")) not in _WRITTEN:
        raise TypeError(f"tensor {name!r}: dtype {arr.dtype} cannot be written to safetensors "
                        f"(supported: {', '.join(str(d) for d in _WRITTEN)})")
    return arr if arr.flags.c_contiguous else arr.copy(order="C")   # keeps 0-d arrays 0-d


def _write_array(f, arr: np.ndarray) -> None:
    """Write one array's bytes (C order, little-endian) to an open binary file."""
    if arr.nbytes:
        f.write(memoryview(arr.reshape(-1).view(np.uint8)))


def _fsync_directory(directory: str) -> None:
    if os.name != "posix":      # directories cannot be opened for fsync on Windows
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_file(tensors: Mapping[str, object], path, metadata: Mapping[str, str] | None = None) -> None:
    """Write ``{name: array}`` to ``path`` as safetensors, atomically.

    ``metadata`` (str -> str) is stored as ``__metadata__``. Raises ``TypeError`` for
    a non-string name, non-array value or unsupported dtype, before anything is written.
    """
    path = os.fspath(path)
    if not isinstance(tensors, Mapping):
        raise TypeError(f"tensors must be a mapping of name -> array, got {type(tensors).__name__}")
    arrays = {}
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be strings, got {name!r}")
        if name == "__metadata__":
            raise ValueError("'__metadata__' is reserved and cannot name a tensor")
        arrays[name] = _as_host_array(name, value)
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("metadata must map strings to strings")

    # Larger items first, then by name: every buffer starts at a multiple of its item size.
    order = sorted(arrays, key=lambda k: (-arrays[k].dtype.itemsize, k))
    header: dict = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name in order:
        arr = arrays[name]
        header[name] = {
            "dtype": _WRITTEN[np.dtype(arr.dtype.newbyteorder("="))],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)

    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory, not a file name")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path}: the folder {directory} does not exist")
    base = os.path.basename(path)
    # Create the temporary file with O_EXCL and mode 0o666 so the umask applies as for
    # any ordinary new file (mkstemp would force 0o600).
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".{base}.{secrets.token_hex(6)}.tmp")
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - would need 100 name collisions
        raise FileExistsError(f"could not create a temporary file next to {path}")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            for name in order:
                _write_array(f, arrays[name])
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)
