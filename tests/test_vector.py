import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar


def numpy_top_k(
    data: np.ndarray, ids: np.ndarray, q: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    norm = data / np.linalg.norm(data, axis=1, keepdims=True)
    scores = norm @ (q / np.linalg.norm(q))
    order = np.argsort(-scores, kind="stable")[:k]
    return ids[order], scores[order]


@settings(max_examples=80, deadline=None)
@given(
    n=st.integers(1, 300),
    dim=st.integers(1, 70),
    k=st.integers(1, 20),
    m=st.integers(0, 14),
    seed=st.integers(0, 2**32 - 1),
)
def test_search_matches_numpy(n: int, dim: int, k: int, m: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((n, dim)).astype(np.float32) + 0.01
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    q = rng.standard_normal(dim).astype(np.float32) + 0.01
    index = ar.VectorIndex(dim)
    index.add(ids, data)
    got_ids, got_scores = index.search(q, k)
    want_ids, want_scores = numpy_top_k(data, ids, q, k)
    assert got_ids.dtype == np.int64 and got_scores.dtype == np.float32
    np.testing.assert_allclose(got_scores, want_scores, atol=1e-5)
    # Same ids up to ties: any id whose score differs from numpy's position must tie.
    for gi, wi, gs in zip(got_ids, want_ids, got_scores, strict=True):
        if gi != wi:
            assert abs(gs - want_scores[list(want_ids).index(wi)]) < 1e-5
    # The batch kernel sums in another order than the single-query scan: same ids up to
    # near-ties, scores within float32 rounding.
    others = rng.standard_normal((m, dim)).astype(np.float32) + 0.01
    queries = np.concatenate([np.stack([q, q]), others])
    batch_ids, batch_scores = index.search_batch(queries, k)
    assert batch_ids.shape == (m + 2, min(k, n))
    for row, query in enumerate(others, start=2):
        _, want = numpy_top_k(data, ids, query, k)
        np.testing.assert_allclose(batch_scores[row], want, atol=1e-5)
    np.testing.assert_array_equal(batch_ids[0], batch_ids[1])
    np.testing.assert_allclose(batch_scores[1], got_scores, atol=1e-5)
    for bi, gi, bs in zip(batch_ids[0], got_ids, batch_scores[0], strict=True):
        if bi != gi:
            assert abs(bs - got_scores[list(got_ids).index(bi)]) < 1e-5


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from(["add", "remove"]), st.integers(0, 15)), max_size=60))
def test_add_remove_upsert_against_a_reference(ops: list[tuple[str, int]]) -> None:
    rng = np.random.default_rng(0)
    index = ar.VectorIndex(8)
    ref: dict[int, np.ndarray] = {}
    for op, key in ops:
        if op == "add":
            v = rng.standard_normal(8).astype(np.float32)
            index.add(np.array([key]), v[None, :])
            ref[key] = v
        elif key in ref:
            index.remove([key])
            del ref[key]
        else:
            with pytest.raises(ar.MemoryStoreError, match="unknown id"):
                index.remove([key])
    assert len(index) == len(ref)
    for key, v in ref.items():
        assert key in index
        ids, scores = index.search(v, 1)
        assert ids[0] == key and scores[0] == pytest.approx(1.0, abs=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["add", "remove"]), st.lists(st.integers(0, 12), max_size=4)),
        max_size=30,
    )
)
def test_float32_copies_in_a_file_follow_every_change(ops: list[tuple[str, list[int]]]) -> None:
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "copies.f32"
        index = ar.VectorIndex(6, dtype="int8", rescore=2, originals_path=path)
        assert index.exact_rescore and index.originals_path == str(path)
        ref: dict[int, np.ndarray] = {}
        for op, keys in ops:
            batch = list(dict.fromkeys(keys))
            if op == "add":
                rows = rng.standard_normal((len(batch), 6)).astype(np.float32)
                index.add(np.array(batch, dtype=np.int64), rows)
                for key, row in zip(batch, rows, strict=True):
                    ref[key] = row / np.linalg.norm(row)
            elif all(key in ref for key in batch):
                index.remove(batch)
                for key in batch:
                    del ref[key]
            else:
                with pytest.raises(ar.MemoryStoreError, match="unknown id"):
                    index.remove(batch)
        assert len(index) == len(ref)
        assert path.stat().st_size == 4 * 6 * len(ref)  # exactly one row per vector
        assert index.nbytes == len(ref) * (8 + 6 + 4)  # the copies take no memory
        for key, want in ref.items():
            np.testing.assert_allclose(index.get(key), want, rtol=0, atol=1e-7)
            ids, scores = index.search(want, 1)
            assert ids[0] == key and scores[0] == pytest.approx(1.0, abs=1e-6)


def test_empty_index_and_k_larger_than_index() -> None:
    index = ar.VectorIndex(3)
    ids, scores = index.search(np.ones(3, dtype=np.float32), 5)
    assert ids.shape == (0,) and scores.shape == (0,)
    index.add(np.array([1, 2]), np.eye(2, 3, dtype=np.float32))
    ids, _ = index.search(np.ones(3, dtype=np.float32), 10)
    assert sorted(ids.tolist()) == [1, 2]
    assert index.search_batch(np.ones((4, 3), dtype=np.float32), 10)[0].shape == (4, 2)
    empty_ids, empty_scores = ar.VectorIndex(3).search_batch(np.ones((5, 3), dtype=np.float32), 4)
    assert empty_ids.shape == (5, 0) and empty_scores.shape == (5, 0)
    assert ar.VectorIndex(3).search_batch(np.ones((0, 3), dtype=np.float32), 4)[0].shape == (0, 0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda i: i.add(np.array([1]), np.ones((1, 4), dtype=np.float32)), "shape"),
        (lambda i: i.add(np.array([1]), np.ones((1, 3), dtype=np.float64)), "float32"),
        (lambda i: i.add(np.array([1]), np.ones((3, 2), dtype=np.float32).T), "C-contiguous"),
        (lambda i: i.add(np.array([1]), np.array([[np.nan, 0, 0]], dtype=np.float32)), "NaN"),
        (
            lambda i: i.add(np.array([1]), np.array([[np.inf, 0, 0]], dtype=np.float32)),
            "NaN or inf",
        ),
        (lambda i: i.add(np.array([1]), np.zeros((1, 3), dtype=np.float32)), "zero vector"),
        (lambda i: i.add(np.array([1, 1]), np.ones((2, 3), dtype=np.float32)), "twice"),
        (lambda i: i.add(np.array([-1]), np.ones((1, 3), dtype=np.float32)), ">= 0"),
        (lambda i: i.search(np.ones(3, dtype=np.float32), 0), "k must be"),
        (lambda i: i.search(np.ones(3, dtype=np.float32), -2), "k must be"),
        (lambda i: i.search(np.ones(4, dtype=np.float32), 1), "dimension"),
        (lambda i: i.search(np.ones(3, dtype=np.float64), 1), "float32"),
        (lambda i: i.remove([99]), "unknown id 99"),
    ],
)
def test_bad_input_is_a_clear_error(call, message: str) -> None:  # type: ignore[no-untyped-def]
    index = ar.VectorIndex(3)
    with pytest.raises(ar.MemoryStoreError, match=message):
        call(index)
    assert len(index) == 0


def test_dim_zero_and_failed_batch_leaves_index_unchanged() -> None:
    with pytest.raises(ar.MemoryStoreError):
        ar.VectorIndex(0)
    index = ar.VectorIndex(2)
    index.add(np.array([1]), np.ones((1, 2), dtype=np.float32))
    with pytest.raises(ar.MemoryStoreError):
        index.add(np.array([2, 3]), np.array([[1, 0], [np.nan, 1]], dtype=np.float32))
    assert len(index) == 1 and 2 not in index


def test_save_load_round_trip_and_corruption(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    index = ar.VectorIndex(16)
    index.add(np.arange(100), rng.standard_normal((100, 16)).astype(np.float32))
    path = str(tmp_path / "index.bin")
    index.save(path)
    loaded = ar.VectorIndex.load(path)
    q = rng.standard_normal(16).astype(np.float32)
    np.testing.assert_array_equal(loaded.search(q, 10)[0], index.search(q, 10)[0])
    data = bytearray(Path(path).read_bytes())
    data[200] ^= 0xFF
    Path(path).write_bytes(bytes(data))
    with pytest.raises(ar.PersistenceError, match="checksum"):
        ar.VectorIndex.load(path)
    Path(path).write_bytes(bytes(data[:50]))
    with pytest.raises(ar.PersistenceError):
        ar.VectorIndex.load(path)
    Path(path).write_bytes(b"something else entirely, not an index")
    with pytest.raises(ar.PersistenceError, match="not a vector index"):
        ar.VectorIndex.load(path)
    with pytest.raises(ar.PersistenceError):
        ar.VectorIndex.load(str(tmp_path / "missing.bin"))


def test_large_parallel_scan_matches_numpy() -> None:
    rng = np.random.default_rng(2)
    data = rng.standard_normal((50_000, 32)).astype(np.float32)
    index = ar.VectorIndex(32)
    index.add(np.arange(50_000), data)
    q = rng.standard_normal(32).astype(np.float32)
    ids, scores = index.search(q, 10)
    want_ids, want_scores = numpy_top_k(data, np.arange(50_000), q, 10)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)
    queries = rng.standard_normal((9, 32)).astype(np.float32)
    batch_ids, batch_scores = index.search_batch(queries, 10)
    for row, query in enumerate(queries):
        want_ids, want_scores = numpy_top_k(data, np.arange(50_000), query, 10)
        np.testing.assert_array_equal(batch_ids[row], want_ids)
        np.testing.assert_allclose(batch_scores[row], want_scores, atol=1e-5)


def _recall_at_10(index: ar.VectorIndex, data: np.ndarray, queries: np.ndarray) -> float:
    ids = np.arange(len(data))
    found = 0
    for q in queries:
        want, _ = numpy_top_k(data, ids, q, 10)
        got, _ = index.search(q, 10)
        found += len(set(got.tolist()) & set(want.tolist()))
    return found / (10 * len(queries))


def _clustered(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    centers = rng.standard_normal((20, dim)).astype(np.float32)
    labels = rng.integers(0, 20, n)
    return (centers[labels] + 0.3 * rng.standard_normal((n, dim))).astype(np.float32)


@pytest.mark.parametrize(
    ("dtype", "copies", "kind", "min_recall"),
    [
        ("float16", None, "random", 0.99),
        ("float16", None, "clustered", 0.99),
        ("int8", None, "random", 0.99),
        # Codes alone cannot order the crowded neighbours of a tight cluster: documented.
        ("int8", None, "clustered", 0.9),
        ("int8", "memory", "random", 0.99),
        ("int8", "memory", "clustered", 0.99),
        ("int8", "file", "random", 0.99),
        ("int8", "file", "clustered", 0.99),
    ],
)
def test_compressed_modes_recall_and_memory(
    dtype: str, copies: str | None, kind: str, min_recall: float, tmp_path: Path
) -> None:
    rng = np.random.default_rng(3)
    n, dim = 5_000, 384
    data = (
        rng.standard_normal((n, dim)).astype(np.float32)
        if kind == "random"
        else _clustered(rng, n, dim)
    )
    queries = rng.standard_normal((40, dim)).astype(np.float32)
    if kind == "clustered":
        queries = data[rng.integers(0, n, 40)] + 0.1 * queries
    exact = ar.VectorIndex(dim)
    exact.add(np.arange(n), data)
    exact_rescore = copies is not None
    copies_file = tmp_path / "copies.f32" if copies == "file" else None
    index = ar.VectorIndex(
        dim, dtype=dtype, exact_rescore=exact_rescore, originals_path=copies_file
    )
    index.add(np.arange(n), data)
    assert index.dtype == dtype and index.exact_rescore == exact_rescore and len(index) == n
    assert _recall_at_10(index, data, queries) >= min_recall
    # Scores are cosines of the stored (rounded) vectors, or exact with float32 copies.
    _, exact_scores = exact.search(queries[0], 10)
    _, scores = index.search(queries[0], 10)
    np.testing.assert_allclose(scores, exact_scores, atol=1e-5 if exact_rescore else 5e-3)
    in_memory = 4 * n * dim if copies == "memory" else 0
    vector_bytes = index.nbytes - 8 * n - in_memory
    assert vector_bytes == n * (2 * dim if dtype == "float16" else dim + 4)
    assert exact.nbytes - 8 * n == 4 * n * dim
    batch_ids, _ = index.search_batch(queries[:3], 10)
    for row in range(3):
        np.testing.assert_array_equal(batch_ids[row], index.search(queries[row], 10)[0])


@pytest.mark.parametrize(
    ("dtype", "copies"),
    [("float32", None), ("float16", None), ("int8", None), ("int8", "memory"), ("int8", "file")],
)
def test_modes_remove_upsert_get_and_save_load(
    dtype: str, copies: str | None, tmp_path: Path
) -> None:
    rng = np.random.default_rng(4)
    data = rng.standard_normal((300, 40)).astype(np.float32)
    exact_rescore = copies is not None
    copies_file = tmp_path / "copies.f32" if copies == "file" else None
    index = ar.VectorIndex(
        40, dtype=dtype, rescore=3, exact_rescore=exact_rescore, originals_path=copies_file
    )
    index.add(np.arange(300), data)
    index.remove([0, 17, 299])
    index.add(np.array([5]), data[6:7])
    assert len(index) == 297 and 17 not in index and index.get(17) is None
    stored = index.get(5)
    assert stored is not None and stored.dtype == np.float32
    want = data[6] / np.linalg.norm(data[6])
    tolerance = 1e-2 if dtype == "int8" and not exact_rescore else 1e-3
    np.testing.assert_allclose(stored, want, atol=tolerance)
    path = str(tmp_path / f"{dtype}.bin")
    index.save(path)
    loaded = ar.VectorIndex.load(path)
    assert (loaded.dtype, loaded.rescore, len(loaded)) == (dtype, 3, 297)
    assert loaded.exact_rescore == exact_rescore and loaded.originals_path is None
    q = rng.standard_normal(40).astype(np.float32)
    np.testing.assert_array_equal(loaded.search(q, 7)[0], index.search(q, 7)[0])
    np.testing.assert_array_equal(loaded.get(5), stored)
    if exact_rescore:  # the copies can move to a file on load, and back into memory on save
        moved = ar.VectorIndex.load(path, originals_path=tmp_path / "loaded.f32")
        assert moved.originals_path == str(tmp_path / "loaded.f32")
        assert moved.nbytes == loaded.nbytes - 4 * 297 * 40
        np.testing.assert_array_equal(moved.search(q, 7)[0], index.search(q, 7)[0])
        np.testing.assert_array_equal(moved.get(5), stored)
    else:
        with pytest.raises(ar.PersistenceError, match="no float32 copies"):
            ar.VectorIndex.load(path, originals_path=tmp_path / "never.f32")


def test_bad_dtype_and_rescore_are_clear_errors() -> None:
    with pytest.raises(ar.MemoryStoreError, match=r'unknown dtype "float64".*int8'):
        ar.VectorIndex(8, dtype="float64")
    with pytest.raises(ar.MemoryStoreError, match="rescore"):
        ar.VectorIndex(8, dtype="int8", rescore=0)
    with pytest.raises(ar.MemoryStoreError, match="apply to dtype"):
        ar.VectorIndex(8, dtype="float16", exact_rescore=True)
    with pytest.raises(ar.MemoryStoreError, match="apply to dtype"):
        ar.VectorIndex(8, dtype="float32", originals_path="unused.f32")
    with pytest.raises(ar.PersistenceError, match="cannot create"):
        ar.VectorIndex(8, dtype="int8", originals_path="/nonexistent-dir/copies.f32")
    assert "int8" in repr(ar.VectorIndex(8, dtype="int8"))


DTYPES = ["float32", "float16", "int8"]

# Runs in a child process: before k was capped at the row count, these searches reserved room
# for k hits and aborted the interpreter (a failed allocation is not an exception).
_HUGE_K = """
import json, sys
import numpy as np
import llm_agent_runtime as ar

dtype, rescore = sys.argv[1], int(sys.argv[2])
data = np.random.default_rng(7).standard_normal((8, 4)).astype(np.float32)
index = ar.VectorIndex(4, dtype=dtype, rescore=rescore)
index.add(np.arange(5), data[:5])
out = {}
for k in (1, 3, 2**50, 2**62, 2**63 - 1):
    ids, scores = index.search(data[5], k)
    batch_ids, batch_scores = index.search_batch(data[5:], k)
    out[k] = [ids.tolist(), scores.tolist(), batch_ids.tolist(), batch_scores.tolist()]
print(json.dumps(out))
"""


@pytest.mark.parametrize(
    ("dtype", "rescore"), [("float32", 8), ("float16", 8), ("int8", 8), ("int8", 2**32 - 1)]
)
def test_huge_k_and_rescore_give_min_k_len_rows(dtype: str, rescore: int) -> None:
    run = subprocess.run(
        [sys.executable, "-c", _HUGE_K, dtype, str(rescore)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout)
    # The reference: the same index searched for all 5 rows (rescore 8 shortlists every row).
    data = np.random.default_rng(7).standard_normal((8, 4)).astype(np.float32)
    index = ar.VectorIndex(4, dtype=dtype)
    index.add(np.arange(5), data[:5])
    want_ids, want_scores = index.search(data[5], 5)
    want_batch_ids, want_batch_scores = index.search_batch(data[5:], 5)
    if dtype == "float32":
        np.testing.assert_allclose(
            want_scores, numpy_top_k(data[:5], np.arange(5), data[5], 5)[1], atol=1e-6
        )
    for k, (ids, scores, batch_ids, batch_scores) in got.items():
        rows = min(int(k), 5)
        assert ids == want_ids[:rows].tolist()
        np.testing.assert_allclose(scores, want_scores[:rows], rtol=0, atol=1e-6)
        assert np.array(batch_ids).shape == (3, rows)
        assert batch_ids == want_batch_ids[:, :rows].tolist()
        np.testing.assert_allclose(batch_scores, want_batch_scores[:, :rows], rtol=0, atol=1e-6)


def test_rescore_must_fit_the_saved_format(tmp_path: Path) -> None:
    # The file stores rescore (and dim) in 32 bits: 2**32 + 8 used to come back as 8.
    for rescore in (2**32, 2**32 + 8, 2**44):
        with pytest.raises(ar.MemoryStoreError, match="rescore must be between 1 and 4294967295"):
            ar.VectorIndex(4, dtype="int8", rescore=rescore)
    index = ar.VectorIndex(4, dtype="int8", rescore=2**32 - 1)
    index.add(np.arange(3), np.eye(3, 4, dtype=np.float32))
    index.save(str(tmp_path / "i.bin"))
    loaded = ar.VectorIndex.load(str(tmp_path / "i.bin"))
    assert loaded.rescore == 2**32 - 1
    assert loaded.search(np.ones(4, dtype=np.float32), 2**40)[0].tolist() == [0, 1, 2]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 8), (2, 2), (4, 1), (3, 5), (0, 3), (0, 5)])
def test_search_batch_refuses_rows_of_another_width(dtype: str, shape: tuple[int, int]) -> None:
    index = ar.VectorIndex(4, dtype=dtype)
    index.add(np.arange(3), np.eye(3, 4, dtype=np.float32))
    # (1, 8) used to be read as two queries, then failed numpy's reshape with a ValueError;
    # (0, 3) used to return an empty result as if it were well formed.
    with pytest.raises(
        ar.MemoryStoreError, match=rf"queries have shape \({shape[0]}, {shape[1]}\)"
    ):
        index.search_batch(np.ones(shape, dtype=np.float32), 2)
    assert index.search_batch(np.ones((0, 4), dtype=np.float32), 2)[0].shape == (0, 2)
    assert index.search_batch(np.ones((2, 4), dtype=np.float32), 2)[0].shape == (2, 2)


@settings(max_examples=150, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    dim=st.integers(1, 12),
    exponent=st.integers(-46, 37),
    seed=st.integers(0, 2**32 - 1),
)
def test_vectors_of_any_finite_scale_normalize_like_numpy(
    dtype: str, dim: int, exponent: int, seed: int
) -> None:
    """Subnormal rows (norm below ~2.9e-39) used to be stored as [inf, nan, ...]."""
    rng = np.random.default_rng(seed)
    data = (rng.standard_normal((4, dim)) * 10.0**exponent).astype(np.float32)
    data[data[:, 0] == 0, 0] = np.float32(1e-45)  # no zero rows: the smallest subnormal
    assert np.all(np.any(data != 0, axis=1)) and np.all(np.isfinite(data))
    wide = data.astype(np.float64)
    unit = wide / np.linalg.norm(wide, axis=1, keepdims=True)  # the reference, in float64
    index = ar.VectorIndex(dim, dtype=dtype)
    index.add(np.arange(4), data)
    tolerance = {"float32": 1e-6, "float16": 1e-3, "int8": 1e-2}[dtype]
    for i in range(4):
        got = index.get(i)
        assert got is not None and np.all(np.isfinite(got))
        np.testing.assert_allclose(got, unit[i], rtol=0, atol=tolerance)
    ids, scores = index.search(data[0], 4)
    assert np.all(np.isfinite(scores)) and sorted(ids.tolist()) == [0, 1, 2, 3]
    np.testing.assert_allclose(scores, np.sort(unit @ unit[0])[::-1], rtol=0, atol=3 * tolerance)
    # Cosines, for every dtype: a rounded row's self-match used to score above 1.
    assert np.all(np.abs(scores) <= 1)
    _, batch_scores = index.search_batch(data, 4)
    assert np.all(np.isfinite(batch_scores)) and np.all(np.abs(batch_scores) <= 1)
    np.testing.assert_allclose(
        batch_scores[:, 0], np.max(unit @ unit.T, axis=1), atol=3 * tolerance
    )


def test_the_smallest_subnormal_vector_is_a_unit_vector() -> None:
    index = ar.VectorIndex(4)
    index.add([7], np.array([[1e-45, 0, 0, 0]], dtype=np.float32))
    np.testing.assert_array_equal(index.get(7), [1, 0, 0, 0])
    ids, scores = index.search(np.array([0, 0, 0, 1e-45], dtype=np.float32), 1)
    assert ids.tolist() == [7] and scores.tolist() == [0.0]


def test_ids_above_int64_max_are_refused() -> None:
    index = ar.VectorIndex(2)
    top = 2**63 - 1
    index.add(np.array([top], dtype=np.uint64), np.ones((1, 2), dtype=np.float32))
    assert index.search(np.ones(2, dtype=np.float32), 1)[0].tolist() == [top]
    for ids in (np.array([5, 2**63], dtype=np.uint64), [5, 2**63 + 5], [5, 2**64 - 1]):
        with pytest.raises(ar.MemoryStoreError, match="is out of range"):
            index.add(ids, np.ones((2, 2), dtype=np.float32))
    assert len(index) == 1 and 5 not in index  # all or nothing
    got_ids, _ = index.search_batch(np.ones((2, 2), dtype=np.float32), 3)
    assert got_ids.tolist() == [[top], [top]]


@pytest.mark.parametrize("ids", [b"ab", bytearray(b"ab"), memoryview(b"ab")])
def test_bytes_are_no_ids(ids: object) -> None:
    # Text encoded by mistake used to become the ids of its bytes (97, 98).
    index = ar.VectorIndex(2)
    with pytest.raises(ar.MemoryStoreError, match="ids must be"):
        index.add(ids, np.eye(2, dtype=np.float32))
    index.add([97, 98], np.eye(2, dtype=np.float32))
    with pytest.raises(ar.MemoryStoreError, match="ids must be"):
        index.remove(ids)
    assert len(index) == 2


@pytest.mark.parametrize(
    ("bad", "named"),
    [(-1, r"int \(-1\)"), (2**70, r"int \(1180591620717411303424\)"), ("7", r"str \('7'\)")],
)
def test_a_bad_id_in_a_list_is_named(bad: object, named: str) -> None:
    # A numpy array's bad id was named; a list's got only "ids must be a 1-D int64/uint64
    # numpy array or a list of ints >= 0", leaving the caller to find it.
    index = ar.VectorIndex(2)
    with pytest.raises(ar.MemoryStoreError, match=f"ids must be ints >= 0.*got {named}"):
        index.add([3, bad], np.eye(2, dtype=np.float32))
    index.add([3], np.ones((1, 2), dtype=np.float32))
    with pytest.raises(ar.MemoryStoreError, match=f"got {named}"):
        index.remove([bad])
    assert len(index) == 1


def test_bools_are_refused_as_ids_and_k() -> None:
    # True used to be read as id 1 and k=1; SemanticStore already refused a bool k.
    index = ar.VectorIndex(2)
    for ids in ([True, 0], [0, False], np.array([True, False], dtype=object)):
        with pytest.raises(ar.MemoryStoreError, match="not bool"):
            index.add(ids, np.eye(2, dtype=np.float32))
    with pytest.raises(ar.MemoryStoreError, match="ids must be"):
        index.add(np.array([True, False]), np.eye(2, dtype=np.float32))  # a bool array
    assert len(index) == 0
    index.add([0, 1], np.eye(2, dtype=np.float32))
    with pytest.raises(ar.MemoryStoreError, match="not bool"):
        index.remove([True])
    assert len(index) == 2
    query = np.ones(2, dtype=np.float32)
    for k in (True, False, np.True_, np.False_):
        with pytest.raises(ar.MemoryStoreError, match="k must be an int, got bool"):
            index.search(query, k)
        with pytest.raises(ar.MemoryStoreError, match="k must be an int, got bool"):
            index.search_batch(query[None, :], k)
    assert index.search(query, np.int64(1))[0].tolist() in ([0], [1])
    assert index.search_batch(query[None, :], 2)[0].shape == (1, 2)
    store = ar.SemanticStore(dim=2)
    store.store("a", "x", embedding=[1.0, 0.0])
    with pytest.raises(ar.MemoryStoreError, match="k must be an int, got bool"):
        store.search([1.0, 0.0], k=True)  # type: ignore[arg-type]


def test_integer_arguments_out_of_range_are_memory_store_errors() -> None:
    index = ar.VectorIndex(2)
    index.add([1], np.ones((1, 2), dtype=np.float32))
    for bad_id in (-1, 2**63, 2**70):
        with pytest.raises(ar.MemoryStoreError, match="ids go from 0 to 2\\*\\*63 - 1"):
            index.get(bad_id)
        assert bad_id not in index
    assert index.get(2) is None and 1 in index
    for not_an_id in ("1", 1.0, None, True):  # not in it, as in a Python container
        assert not_an_id not in index
        with pytest.raises(ar.MemoryStoreError, match=r"ids go from 0|not bool"):
            index.get(not_an_id)  # type: ignore[arg-type]
    # A negative size was told ">= 0", though 0 is refused too: one range for every size.
    for bad_dim in (-1, 0, 2**32):
        with pytest.raises(
            ar.MemoryStoreError, match=f"dim must be between 1 and .*, got {bad_dim}\\b"
        ):
            ar.VectorIndex(bad_dim)
    with pytest.raises(ar.MemoryStoreError, match=r"rescore must be between 1 and .*, got -3\b"):
        ar.VectorIndex(4, dtype="int8", rescore=-3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_exact_matches_score_at_most_one(dtype: str) -> None:
    # A float16 or int8 row is unit length only up to rounding: the exact match of [1, 2, 3]
    # scored 1.0000764 (float16) and 1.0005624 (int8), and its opposite below -1.
    data = np.array([[1, 2, 3], [-1, -2, -3], [3, -1, 0.5]], dtype=np.float32)
    index = ar.VectorIndex(3, dtype=dtype)
    index.add([10, 20, 30], data)
    ids, scores = index.search(data[0], 3)
    assert ids.tolist() == [10, 30, 20]
    assert np.abs(scores).max() <= 1
    assert scores[0] == pytest.approx(1, abs=1e-3) and scores[2] == pytest.approx(-1, abs=1e-3)
    batch_ids, batch_scores = index.search_batch(data, 3)
    assert batch_ids[0].tolist() == [10, 30, 20] and batch_ids[1].tolist() == [20, 30, 10]
    assert np.abs(batch_scores).max() <= 1
    np.testing.assert_allclose(batch_scores[0], scores, atol=1e-6)
    # SemanticStore reports the index's scores: "cosine similarity, in [-1, 1]".
    store = ar.SemanticStore(dim=3, dtype=dtype)
    store.store("k", "v", embedding=data[0])
    (hit,) = store.search(data[0], k=1)
    assert hit.key == "k" and 0.999 <= hit.score <= 1


@pytest.mark.parametrize("exact_rescore", [False, True])
def test_int8_scores_stay_exact_past_the_32_bit_range(exact_rescore: bool) -> None:
    # Vectors of +-1 quantize to codes of +-127: a vector's integer dot with itself is
    # 127 * 127 * dim, above 2**31 - 1 from dim 133,145 on. The int8 scan summed it in 32 bits,
    # which wrapped around: every query found another vector than itself.
    # More rows than the shortlist of a k=1 search (k * rescore = 2) holds, so the integer
    # scan alone decides which rows are re-scored.
    dim, n = 140_000, 12
    rng = np.random.default_rng(1)
    data = np.where(rng.random((n, dim)) < 0.5, -1.0, 1.0).astype(np.float32)
    index = ar.VectorIndex(dim, dtype="int8", rescore=2, exact_rescore=exact_rescore)
    index.add(np.arange(n), data)
    for i in range(n):
        ids, scores = index.search(data[i], 1)
        assert ids[0] == i and scores[0] == pytest.approx(1.0, abs=1e-4)
    # Every score is the cosine similarity (the others are near 0: random signs).
    ids, scores = index.search(data[0], n)
    np.testing.assert_allclose(scores, data[ids] @ data[0] / dim, atol=1e-4)


def _misaligned(array: np.ndarray) -> np.ndarray:
    """`array`'s values in a C-contiguous float32 array one byte off alignment, as
    np.frombuffer gives past a 1-byte header."""
    raw = b"\x00" + np.ascontiguousarray(array, dtype=np.float32).tobytes()
    return np.frombuffer(raw, dtype=np.float32, offset=1).reshape(array.shape)


@pytest.mark.parametrize("method", ["add", "search", "search_batch"])
def test_misaligned_arrays_are_memory_store_errors(method: str) -> None:
    # They raised the built-in TypeError from inside rust-numpy.
    vectors = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    index = ar.VectorIndex(8)
    index.add(np.arange(4), vectors)
    shifted = _misaligned(vectors)
    assert shifted.flags.c_contiguous and not shifted.flags.aligned
    call = {
        "add": lambda x: index.add(np.arange(10, 14), x),
        "search": lambda x: index.search(x[1], 2),
        "search_batch": lambda x: index.search_batch(x, 2),
    }[method]
    with pytest.raises(ar.MemoryStoreError, match=r"aligned in memory .*\.copy\(\)"):
        call(shifted)
    assert len(index) == 4
    call(shifted.copy())  # the remedy the message gives


def test_a_0d_array_of_ids_is_refused_as_ids_of_another_shape() -> None:
    # It passed the sequence check, then failed to iterate with numpy's bare TypeError.
    index = ar.VectorIndex(4)
    index.add([1], np.eye(4, dtype=np.float32)[:1])
    with pytest.raises(ar.MemoryStoreError, match="ids must be"):
        index.add(np.array(7), np.eye(4, dtype=np.float32)[:1])
    with pytest.raises(ar.MemoryStoreError, match="ids must be"):
        index.remove(np.array(1))
    assert len(index) == 1 and 1 in index
