"""VectorIndex.load refuses rows the index never writes; bools are no ids or sizes."""

from __future__ import annotations

import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import llm_agent_runtime as ar

HEADER = 36  # format version 2: magic, version, dim, dtype, rescore, flags, count


def with_crc(body: bytes) -> bytes:
    return body + struct.pack("<I", zlib.crc32(body))


def saved(index: ar.VectorIndex, path: Path) -> bytearray:
    """The index's file without its checksum."""
    index.save(path)
    return bytearray(path.read_bytes()[:-4])


def round_trip(index: ar.VectorIndex, ids: list[int], directory: Path) -> None:
    path = directory / "index.bin"
    index.save(path)
    loaded = ar.VectorIndex.load(path)
    assert len(loaded) == len(index) and loaded.dtype == index.dtype
    for i in ids:
        got, want = loaded.get(i), index.get(i)
        assert got is not None and want is not None and np.array_equal(got, want)


def nonzero_rows(values: np.ndarray) -> np.ndarray:
    """`values` with each all-zero row given a 1 (the index refuses zero vectors)."""
    values = values.copy()
    values[~values.any(axis=1), 0] = 1.0
    return values


@settings(max_examples=150, deadline=None)
@given(
    data=st.integers(1, 12).flatmap(
        lambda n: st.integers(1, 40).flatmap(
            lambda dim: hnp.arrays(
                np.float32,
                (n, dim),
                elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
            )
        )
    ),
    dtype=st.sampled_from(["float32", "float16", "int8", "int8-exact"]),
)
def test_every_index_the_index_saves_loads_back(data: np.ndarray, dtype: str) -> None:
    vectors = nonzero_rows(data)
    if dtype == "int8-exact":
        index = ar.VectorIndex(vectors.shape[1], dtype="int8", exact_rescore=True)
    else:
        index = ar.VectorIndex(vectors.shape[1], dtype=dtype)
    ids = list(range(len(vectors)))
    index.add(ids, vectors)
    with tempfile.TemporaryDirectory() as directory:
        round_trip(index, ids, Path(directory))


def awkward_rows(dim: int, seed: int) -> np.ndarray:
    """Rows at the edges of rounding: huge and subnormal scales, one large value among many
    tiny ones (the int8 quantizer rounds the tiny ones to 0 or to one step), values just
    below and above half an int8 step, mixed magnitudes, one-hot rows."""
    rng = np.random.default_rng(seed)
    out = [
        rng.standard_normal(dim) * 1e30,
        rng.standard_normal(dim) * 1e-40,
        np.r_[1.0, np.full(dim - 1, 0.49 / 127)],
        np.r_[1.0, np.full(dim - 1, 0.51 / 127)],
        np.r_[1.0, rng.uniform(-0.6 / 127, 0.6 / 127, dim - 1)],
        rng.standard_normal(dim) * 10.0 ** rng.uniform(-20, 20, dim),
        np.eye(1, dim, dim - 1)[0],
        np.full(dim, -3.0),
        np.r_[np.full(dim - 1, 1e-3), -1.0],
    ]
    return np.array(out, dtype=np.float32)


@pytest.mark.parametrize("dim", [2, 3, 16, 384, 4096])
@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_awkward_rows_save_and_load_back(tmp_path: Path, dim: int, dtype: str) -> None:
    vectors = awkward_rows(dim, dim)
    index = ar.VectorIndex(dim, dtype=dtype, exact_rescore=dtype == "int8")
    ids = list(range(len(vectors)))
    index.add(ids, vectors)
    round_trip(index, ids, tmp_path)


def test_load_refuses_float32_rows_that_are_not_unit_length(tmp_path: Path) -> None:
    # The reviewer's file: valid checksum, rows of norm 0.2 and about 5.08.
    index = ar.VectorIndex(3)
    index.add([1, 2], np.eye(2, 3, dtype=np.float32))
    at = HEADER + 2 * 8
    for rows, message in [
        ([[0.2, 0, 0], [0.9, 5.0, 0]], "row 0 has norm 0.2"),
        ([[1, 0, 0], [0.9, 5.0, 0]], "row 1 has norm 5.08"),
        ([[1, 0, 0], [0, 0, 0]], "row 1 has norm 0"),  # a zero row
        ([[1, 0, 0], [0, 1.001, 0]], "row 1 has norm 1.001000"),
    ]:
        body = saved(index, tmp_path / "i.bin")
        body[at : at + 24] = np.array(rows, np.float32).tobytes()
        (tmp_path / "bad.bin").write_bytes(with_crc(bytes(body)))
        with pytest.raises(ar.PersistenceError, match=message):
            ar.VectorIndex.load(tmp_path / "bad.bin")
    # Rows unit length up to float32 rounding load.
    body = saved(index, tmp_path / "i.bin")
    body[at : at + 24] = np.array([[1, 0, 0], [0, 0.99999994, 0]], np.float32).tobytes()
    (tmp_path / "ok.bin").write_bytes(with_crc(bytes(body)))
    assert len(ar.VectorIndex.load(tmp_path / "ok.bin")) == 2


def test_load_refuses_float16_rows_that_are_not_unit_length(tmp_path: Path) -> None:
    index = ar.VectorIndex(3, dtype="float16")
    index.add([1, 2], np.eye(2, 3, dtype=np.float32))
    at = HEADER + 2 * 8
    for rows in ([[0.5, 0, 0], [0, 1, 0]], [[1, 0, 0], [0, 0, 0]], [[1, 0, 0], [0, 1, 1]]):
        body = saved(index, tmp_path / "i.bin")
        body[at : at + 12] = np.array(rows, np.float16).tobytes()
        (tmp_path / "bad.bin").write_bytes(with_crc(bytes(body)))
        with pytest.raises(ar.PersistenceError, match="not 1: the index stores unit vectors"):
            ar.VectorIndex.load(tmp_path / "bad.bin")


def test_load_refuses_int8_rows_the_quantizer_never_writes(tmp_path: Path) -> None:
    index = ar.VectorIndex(4, dtype="int8")
    index.add([1, 2], np.eye(2, 4, dtype=np.float32))
    scales_at = HEADER + 2 * 8
    codes_at = scales_at + 2 * 4
    cases = [
        # A scale above 1/127: a row of norm 10.
        (struct.pack("<f", 10 / 127), None, "scale"),
        # A zero row (and so no code of +-127).
        (None, bytes(4), "no code of"),
        # A row whose codes are all small: the quantizer gives the largest value 127.
        (None, bytes([1, 0, 0, 0]), "no code of"),
        # Codes fine, scale far too small: a row of norm 0.1.
        (struct.pack("<f", 0.1 / 127), None, "row 0 has norm 0.100000"),
        # Codes of a row of norm 2 (four values of 127).
        (None, bytes([127, 127, 127, 127]), "row 0 has norm 2"),
    ]
    for scale, codes, message in cases:
        body = saved(index, tmp_path / "i.bin")
        if scale is not None:
            body[scales_at : scales_at + 4] = scale
        if codes is not None:
            body[codes_at : codes_at + 4] = codes
        (tmp_path / "bad.bin").write_bytes(with_crc(bytes(body)))
        with pytest.raises(ar.PersistenceError, match=message):
            ar.VectorIndex.load(tmp_path / "bad.bin")


def test_load_refuses_float32_copies_that_are_not_unit_length(tmp_path: Path) -> None:
    index = ar.VectorIndex(4, dtype="int8", exact_rescore=True)
    index.add([1, 2], np.eye(2, 4, dtype=np.float32))
    body = saved(index, tmp_path / "i.bin")
    body[-16:] = np.array([0, 3, 0, 0], np.float32).tobytes()  # the second copy
    (tmp_path / "bad.bin").write_bytes(with_crc(bytes(body)))
    with pytest.raises(ar.PersistenceError, match="float32 copy: row 1 has norm 3"):
        ar.VectorIndex.load(tmp_path / "bad.bin")


# --- bools are no ids and no sizes -------------------------------------------------------------


def test_bools_are_no_ids_for_in_and_get() -> None:
    index = ar.VectorIndex(2)
    index.add([0, 1], np.eye(2, dtype=np.float32))
    assert 1 in index and 0 in index
    assert True not in index and False not in index
    for flag in (True, False):
        with pytest.raises(ar.MemoryStoreError, match="not bool"):
            index.get(flag)
    with pytest.raises(ar.MemoryStoreError, match="not bool"):
        index.add([True], np.ones((1, 2), np.float32))
    with pytest.raises(ar.MemoryStoreError, match="not bool"):
        index.remove([True])


@pytest.mark.parametrize(
    ("make", "what"),
    [
        (lambda: ar.VectorIndex(True), "dim"),
        (lambda: ar.VectorIndex(4, rescore=True), "rescore"),
        (lambda: ar.HashingEmbedder(True), "dim"),
        (lambda: ar.HashingEmbedder(dim=False), "dim"),
    ],
)
def test_bools_are_no_sizes(make: object, what: str) -> None:
    with pytest.raises(ar.MemoryStoreError, match=f"{what} must be an int, got bool"):
        make()  # type: ignore[operator]
