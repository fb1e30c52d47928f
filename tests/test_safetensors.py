"""The safetensors reader/writer: round trips, bfloat16, malformed files, atomic writes."""

import json
import os
import struct

import numpy as np
import pytest

from minibert import safetensors as st


def _raw_file(path, header: dict, data: bytes = b"", header_bytes: bytes | None = None):
    """Write a safetensors file by hand (possibly a broken one)."""
    text = header_bytes if header_bytes is not None else json.dumps(header).encode()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        f.write(data)
    return path


def _bf16_bits(x: np.ndarray) -> np.ndarray:
    """Truncate float32 to its bfloat16 bit pattern (high half)."""
    return (np.asarray(x, np.float32).view(np.uint32) >> 16).astype(np.uint16)


# --------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16, np.int64, np.int32,
                                   np.int16, np.int8, np.uint8, np.uint16, np.uint32,
                                   np.uint64, np.bool_])
def test_round_trip_each_dtype(tmp_path, dtype):
    rng = np.random.default_rng(0)
    if np.dtype(dtype).kind == "f":
        a = rng.standard_normal((3, 5)).astype(dtype)
    elif dtype is np.bool_:
        a = rng.random((3, 5)) > 0.5
    else:
        info = np.iinfo(dtype)
        a = rng.integers(info.min, info.max, size=(3, 5), dtype=dtype, endpoint=True)
    path = tmp_path / "t.safetensors"
    st.save_file({"a": a}, path)
    b = st.load_file(path)["a"]
    assert b.dtype == a.dtype and b.shape == a.shape
    np.testing.assert_array_equal(a, b)


def test_round_trip_many_tensors_metadata_and_layout(tmp_path):
    rng = np.random.default_rng(1)
    tensors = {
        "w": rng.standard_normal((4, 7)).astype(np.float32),
        "ids": np.arange(10, dtype=np.int64).reshape(2, 5),
        "half": rng.standard_normal(3).astype(np.float16),
        "flag": np.array([True, False, True]),
        "scalar": np.array(2.5),                       # 0-d
        "empty": np.zeros((0, 4), np.float32),         # zero-size
        "noncontig": np.arange(20, dtype=np.float64).reshape(4, 5).T,
        "bigendian": np.arange(6, dtype=">i4"),
    }
    path = tmp_path / "m.safetensors"
    st.save_file(tensors, path, metadata={"format": "pt", "note": "ünïcode"})
    infos, meta = st.read_header(path)
    assert meta == {"format": "pt", "note": "ünïcode"}
    (n,) = struct.unpack("<Q", path.read_bytes()[:8])
    assert n % 8 == 0                               # header padded to 8 bytes
    for info in infos.values():                     # every buffer aligned to its item size
        assert info.start % st._STORED[info.dtype].itemsize == 0
    loaded = st.load_file(path)
    assert set(loaded) == set(tensors)
    for name, a in tensors.items():
        np.testing.assert_array_equal(loaded[name], a)
        assert loaded[name].shape == a.shape
    assert loaded["bigendian"].dtype == np.dtype(np.int32)
    assert loaded["w"].flags.owndata or loaded["w"].base is not None
    loaded["w"][0, 0] = 99.0                        # owned copies are writable

    views = st.load_file(path, mmap=True)
    for name, a in tensors.items():
        np.testing.assert_array_equal(views[name], a)
    assert not views["w"].flags.writeable

    subset = st.load_file(path, keys=["ids"])
    assert list(subset) == ["ids"]
    with pytest.raises(KeyError, match="nope"):
        st.load_file(path, keys=["nope"])


def test_empty_file_of_tensors(tmp_path):
    path = tmp_path / "e.safetensors"
    st.save_file({}, path)
    assert st.load_file(path) == {}
    assert st.load_file(path, mmap=True) == {}


def test_bf16_converts_exactly(tmp_path):
    values = np.array([0.0, -0.0, 1.0, -2.5, 3.140625, 1e-40, 6.5e4, np.inf, -np.inf,
                       np.finfo(np.float32).max, 1.17549435e-38], dtype=np.float32)
    bits = _bf16_bits(values)
    expected = (bits.astype(np.uint32) << 16).view(np.float32)   # the exact bf16 values
    header = {"x": {"dtype": "BF16", "shape": [len(values)], "data_offsets": [0, bits.nbytes]}}
    path = _raw_file(tmp_path / "b.safetensors", header, bits.astype("<u2").tobytes())
    for mmap in (False, True):
        got = st.load_file(path, mmap=mmap)["x"]
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got.view(np.uint32), expected.view(np.uint32))
    # values that are representable in bf16 survive unchanged
    assert st.load_file(path)["x"][3] == np.float32(-2.5)
    nan_bits = np.array([0x7FC0], np.uint16)
    header = {"n": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}}
    path = _raw_file(tmp_path / "nan.safetensors", header, nan_bits.tobytes())
    assert np.isnan(st.load_file(path)["n"][0])


def test_save_rejects_bad_input(tmp_path):
    path = tmp_path / "x.safetensors"
    with pytest.raises(TypeError, match="complex"):
        st.save_file({"c": np.zeros(2, np.complex64)}, path)
    with pytest.raises(TypeError, match="names must be strings"):
        st.save_file({1: np.zeros(2)}, path)
    with pytest.raises(ValueError, match="reserved"):
        st.save_file({"__metadata__": np.zeros(2)}, path)
    with pytest.raises(TypeError, match="metadata"):
        st.save_file({"a": np.zeros(2)}, path, metadata={"k": 1})
    with pytest.raises(IsADirectoryError):
        st.save_file({"a": np.zeros(2)}, tmp_path)
    assert not path.exists()


# --------------------------------------------------------------------------- malformed files
def _good(tmp_path):
    path = tmp_path / "good.safetensors"
    st.save_file({"a": np.arange(6, dtype=np.float32).reshape(2, 3),
                  "b": np.arange(4, dtype=np.int64)}, path)
    return path


def _expect_error(path, match):
    with pytest.raises(ValueError, match=match) as info:
        st.load_file(path)
    assert str(path) in str(info.value)          # the message names the file
    return info


def test_file_shorter_than_length_field(tmp_path):
    path = tmp_path / "tiny.safetensors"
    path.write_bytes(b"\x01\x02\x03")
    _expect_error(path, "shorter than the 8-byte")


def test_truncated_file(tmp_path):
    path = _good(tmp_path)
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-5])                  # the last tensor is cut short
    _expect_error(cut, "run past the end of the data area")
    cut.write_bytes(data[: 8 + n // 2])         # cut inside the header
    _expect_error(cut, "runs past the end of the file")


def test_header_length_beyond_file_and_absurd(tmp_path):
    path = tmp_path / "h.safetensors"
    path.write_bytes(struct.pack("<Q", 1000) + b"{}")
    _expect_error(path, "runs past the end of the file")
    path.write_bytes(struct.pack("<Q", 2**63) + b"{}")
    _expect_error(path, "limit")


def test_overlapping_offsets(tmp_path):
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
              "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
    path = _raw_file(tmp_path / "o.safetensors", header, bytes(12))
    _expect_error(path, "overlap")


def test_hole_and_trailing_bytes(tmp_path):
    header = {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
              "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}}
    path = _raw_file(tmp_path / "hole.safetensors", header, bytes(12))
    _expect_error(path, "hole")
    header = {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    path = _raw_file(tmp_path / "trail.safetensors", header, bytes(8))
    _expect_error(path, "trailing bytes")


def test_unknown_and_unsupported_dtype(tmp_path):
    header = {"a": {"dtype": "F33", "shape": [1], "data_offsets": [0, 4]}}
    _expect_error(_raw_file(tmp_path / "u.safetensors", header, bytes(4)), "unknown dtype 'F33'")
    header = {"a": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}}
    _expect_error(_raw_file(tmp_path / "f8.safetensors", header, bytes(4)), "not supported")


def test_shape_byte_count_mismatch(tmp_path):
    header = {"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}
    _expect_error(_raw_file(tmp_path / "s.safetensors", header, bytes(8)), "needs 12 bytes")


def test_huge_shape_is_refused_without_allocating(tmp_path):
    header = {"a": {"dtype": "F64", "shape": [2**40, 2**40], "data_offsets": [0, 8]}}
    _expect_error(_raw_file(tmp_path / "big.safetensors", header, bytes(8)), "needs")


def test_negative_dim_and_bad_fields(tmp_path):
    cases = [
        ({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, "negative"),
        ({"a": {"dtype": "F32", "shape": ["1"], "data_offsets": [0, 4]}}, "not a list of integers"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, "begin <= end"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0]}}, "pair of integers"),
        ({"a": {"dtype": "F32", "shape": [1]}}, "lacks"),
        ({"a": [1, 2]}, "not an object"),
        ({"a": {"dtype": 7, "shape": [1], "data_offsets": [0, 4]}}, "not a string"),
        ({"__metadata__": {"k": 3}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
         "__metadata__"),
    ]
    for i, (header, match) in enumerate(cases):
        _expect_error(_raw_file(tmp_path / f"bad{i}.safetensors", header, bytes(4)), match)


def test_non_json_and_non_object_headers(tmp_path):
    cases = [(b"{not json", "not valid JSON"), (b"[1, 2]   ", "does not start with"),
             (b"\xff\xfe{}", "not UTF-8"),
             (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, '
              b'"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', "duplicate key")]
    for i, (raw, match) in enumerate(cases):
        path = _raw_file(tmp_path / f"j{i}.safetensors", {}, bytes(4), header_bytes=raw)
        _expect_error(path, match)


def test_random_corruption_never_crashes(tmp_path):
    """Flipping bytes anywhere gives either a valid load or a ValueError, nothing else."""
    path = _good(tmp_path)
    data = bytearray(path.read_bytes())
    rng = np.random.default_rng(0)
    bad = tmp_path / "flip.safetensors"
    for _ in range(200):
        mutated = bytearray(data)
        for pos in rng.integers(0, len(data), size=rng.integers(1, 4)):
            mutated[pos] = int(rng.integers(0, 256))
        if rng.random() < 0.3:
            mutated = mutated[: int(rng.integers(0, len(mutated)))]
        bad.write_bytes(bytes(mutated))
        try:
            st.load_file(bad)
        except ValueError:
            pass


# --------------------------------------------------------------------------- atomic write
def test_failed_write_keeps_old_file(tmp_path, monkeypatch):
    path = _good(tmp_path)
    before = path.read_bytes()
    calls = {"n": 0}
    real = st._write_array

    def flaky(f, arr):
        calls["n"] += 1
        if calls["n"] == 2:                      # first tensor written, then the disk "fails"
            f.write(b"partial")
            raise OSError("simulated write failure")
        real(f, arr)

    monkeypatch.setattr(st, "_write_array", flaky)
    with pytest.raises(OSError, match="simulated"):
        st.save_file({"x": np.ones(100, np.float32), "y": np.ones(100, np.float32)}, path)
    assert path.read_bytes() == before           # untouched
    assert sorted(os.listdir(tmp_path)) == ["good.safetensors"]   # no temporary file left


def test_interrupt_keeps_old_file(tmp_path, monkeypatch):
    path = _good(tmp_path)
    before = path.read_bytes()

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(st.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        st.save_file({"x": np.ones(3)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["good.safetensors"]


def test_overwrite_replaces_and_respects_umask(tmp_path):
    path = _good(tmp_path)
    st.save_file({"z": np.zeros(2, np.float32)}, path)
    assert list(st.load_file(path)) == ["z"]
    if os.name == "posix":
        umask = os.umask(0)
        os.umask(umask)
        assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)


# --------------------------------------------------------------------------- interoperability
def test_interop_with_safetensors_package(tmp_path):
    sn = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(2)
    tensors = {
        "f64": rng.standard_normal((2, 3)),
        "f32": rng.standard_normal((4, 5)).astype(np.float32),
        "f16": rng.standard_normal(7).astype(np.float16),
        "i64": np.arange(5, dtype=np.int64),
        "i32": np.arange(3, dtype=np.int32),
        "i8": np.arange(-3, 3, dtype=np.int8),
        "u8": np.arange(9, dtype=np.uint8),
        "flag": np.array([True, False]),
        "empty": np.zeros((0, 3), np.float32),
    }
    ours = tmp_path / "ours.safetensors"
    theirs = tmp_path / "theirs.safetensors"
    st.save_file(tensors, ours, metadata={"format": "np"})
    sn.save_file(tensors, str(theirs), metadata={"format": "np"})
    for path in (ours, theirs):
        a = sn.load_file(str(path))
        b = st.load_file(path)
        assert set(a) == set(b) == set(tensors)
        for k in tensors:
            assert a[k].dtype == b[k].dtype == tensors[k].dtype
            np.testing.assert_array_equal(a[k], tensors[k])
            np.testing.assert_array_equal(b[k], tensors[k])
    assert st.read_header(theirs)[1] == {"format": "np"}


@pytest.mark.reference
def test_bf16_matches_torch(tmp_path):
    torch = pytest.importorskip("torch")
    storch = pytest.importorskip("safetensors.torch")
    x = torch.randn(5, 6).to(torch.bfloat16)
    path = tmp_path / "bf.safetensors"
    storch.save_file({"x": x}, str(path))
    got = st.load_file(path)["x"]
    np.testing.assert_array_equal(got, x.float().numpy())


def test_values_that_cannot_be_written_faithfully(tmp_path):
    with pytest.raises(TypeError, match="a masked array would lose its mask"):
        st.save_file({"m": np.ma.masked_array([1.0, 2.0], mask=[0, 1])}, tmp_path / "m.safetensors")
    with pytest.raises(TypeError, match="an array of Python objects"):
        st.save_file({"o": np.array([1, "a"], dtype=object)}, tmp_path / "o.safetensors")
    with pytest.raises(FileNotFoundError, match="the folder .*missing does not exist"):
        st.save_file({"x": np.zeros(2)}, tmp_path / "missing" / "x.safetensors")


def test_one_byte_hole_between_tensors(tmp_path):
    header = {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
              "b": {"dtype": "U8", "shape": [1], "data_offsets": [5, 6]}}
    with pytest.raises(ValueError, match="hole"):
        st.read_header(_raw_file(tmp_path / "hole.safetensors", header, bytes(6)))


def test_more_bytes_than_the_shape_needs(tmp_path):
    header = {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 8]}}
    with pytest.raises(ValueError, match="needs 4 bytes"):
        st.read_header(_raw_file(tmp_path / "extra.safetensors", header, bytes(8)))
