"""Cosine top-k: ours vs numpy, faiss-cpu IndexFlatIP and usearch exact search.

Also our compressed storage (float16, int8, int8 with float32 re-scoring) against numpy's
float32 scan, with recall@10 against exact search and the memory each takes.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import llm_agent_runtime as ar

DIM, K, BATCH = 384, 10, 64
SIZES = [10_000, 100_000, 1_000_000]
LIBS = ["llm_agent_runtime", "numpy", "faiss-cpu", "usearch"]


@cache
def dataset(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalized float32 rows and a batch of normalized queries (fixed seed)."""
    rng = np.random.default_rng(n)
    data = rng.standard_normal((n, DIM), dtype=np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    queries = rng.standard_normal((BATCH, DIM), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return data, queries


@cache
def read_bandwidth_gbs() -> float:
    """This machine's memory read bandwidth, from summing a 1 GiB array."""
    big = np.ones(256 * 1024 * 1024, dtype=np.float32)
    best = min(_timed(big.sum) for _ in range(3))
    return big.nbytes / best / 1e9


def _timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@cache
def searcher(lib: str, n: int) -> Any:
    """Returns (single(q) -> ids, batch(Q) -> ids) for one library, with its index built."""
    data, _ = dataset(n)
    if lib == "llm_agent_runtime":
        index = ar.VectorIndex(DIM)
        index.add(np.arange(n, dtype=np.int64), data)
        return (lambda q: index.search(q, K)[0]), (lambda qs: index.search_batch(qs, K)[0])
    if lib == "numpy":

        def top(scores: np.ndarray) -> np.ndarray:
            # The k largest are the last k: no negated copy of the whole score matrix.
            part = np.argpartition(scores, -K, axis=-1)[..., -K:]
            order = np.take_along_axis(scores, part, axis=-1).argsort(axis=-1)[..., ::-1]
            return np.take_along_axis(part, order, axis=-1)

        return (lambda q: top(data @ q)), (lambda qs: top(qs @ data.T))
    if lib == "faiss-cpu":
        import faiss

        flat = faiss.IndexFlatIP(DIM)
        flat.add(data)
        return (lambda q: flat.search(q[None, :], K)[1][0]), (lambda qs: flat.search(qs, K)[1])
    from usearch.index import search

    # Inner product, as numpy and faiss compute it on these normalized rows (its default,
    # cosine, would normalize every row again at each query).
    return (
        (lambda q: search(data, q, K, exact=True, metric="ip").keys),
        (lambda qs: search(data, qs, K, exact=True, metric="ip").keys),
    )


def _reference(n: int, batch: bool) -> np.ndarray:
    data, queries = dataset(n)
    scores = queries @ data.T
    return (
        np.argsort(-scores, axis=1, kind="stable")[:, :K]
        if batch
        else np.argsort(-scores[0], kind="stable")[:K]
    )


def _recall(got: np.ndarray, want: np.ndarray) -> float:
    got, want = np.atleast_2d(got), np.atleast_2d(want)
    return float(np.mean([len(set(g) & set(w)) / K for g, w in zip(got, want, strict=True)]))


def single_query_rounds(n: int) -> int:
    """Rounds of one query: a search of up to 100k rows takes a millisecond or so, and 100
    samples of it keep a burst of the shared machine's memory traffic out of the median."""
    return 100 if n <= 100_000 else 8


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("n", SIZES)
def test_single_query(benchmark: Any, lib: str, n: int) -> None:
    single, _ = searcher(lib, n)
    data, queries = dataset(n)
    benchmark.group = f"vector: single query, d={DIM}, k={K}, N={n:,}"
    rounds = single_query_rounds(n)
    ids = benchmark.pedantic(
        single, args=(queries[0],), rounds=rounds, iterations=1, warmup_rounds=2
    )
    benchmark.extra_info["lib"] = lib
    benchmark.extra_info["correct"] = _recall(ids, _reference(n, False)) >= 0.99
    if benchmark.stats is not None:  # None under --benchmark-disable
        median = benchmark.stats.stats.median
        benchmark.extra_info["scan_GBps"] = round(data.nbytes / median / 1e9, 1)
        benchmark.extra_info["machine_read_GBps"] = round(read_bandwidth_gbs(), 1)


@contextmanager
def _faiss_blas_for_batches(lib: str) -> Iterator[None]:
    """Lets faiss search a batch with BLAS (matrix products): faiss's implementation notes
    name BLAS its faster path for many queries, and this threshold the switch to it.

    faiss picks its per-query SIMD scan while `nq * d < distance_compute_blas_threshold`
    (128,000 by default in faiss 1.15: below 333 queries at d = 384), which scans all rows
    once per query; BLAS reads them once per block of queries. A single query (fewer queries
    than threads) takes faiss's database-parallel path, which this setting does not change;
    it is set for the batch groups only, all the same.
    """
    if lib != "faiss-cpu":
        yield
        return
    import faiss

    saved = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 0
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = saved


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("n", SIZES)
def test_batch_of_64(benchmark: Any, lib: str, n: int) -> None:
    _, batch = searcher(lib, n)
    _, queries = dataset(n)
    benchmark.group = f"vector: batch of {BATCH} queries, d={DIM}, k={K}, N={n:,}"
    # N = 1,000,000 takes seconds a batch for the peers: fewer rounds, no warm-up.
    small = n <= 100_000
    with _faiss_blas_for_batches(lib):
        ids = benchmark.pedantic(
            batch,
            args=(queries,),
            rounds=10 if small else 3,
            iterations=1,
            warmup_rounds=int(small),
        )
    benchmark.extra_info["lib"] = lib
    benchmark.extra_info["correct"] = _recall(ids, _reference(n, True)) >= 0.99
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["ms_per_query"] = round(benchmark.stats.stats.median / BATCH * 1e3, 3)


@pytest.mark.parametrize("n", SIZES[:2])
def test_add(benchmark: Any, n: int) -> None:
    data, _ = dataset(n)
    ids = np.arange(n, dtype=np.int64)
    benchmark.group = f"vector: add {n:,} vectors, d={DIM}"

    def build() -> int:
        index = ar.VectorIndex(DIM)
        index.add(ids, data)
        return len(index)

    built = benchmark.pedantic(build, rounds=5, iterations=1)
    benchmark.extra_info["lib"] = "llm_agent_runtime"
    benchmark.extra_info["correct"] = built == n


COMPRESSED: dict[str, dict[str, Any]] = {
    "float16": {"dtype": "float16"},
    "int8": {"dtype": "int8"},
    "int8+f32 rescore": {"dtype": "int8", "exact_rescore": True},
    # The float32 copies in a file: only the codes take memory (the file stays in the page
    # cache, as it would on a server doing searches).
    "int8+f32 copies in a file": {"dtype": "int8", "originals_path": "copies.f32"},
}
_COPIES_DIR = tempfile.TemporaryDirectory(prefix="bench-vector-")


@cache
def compressed_index(mode: str, n: int) -> ar.VectorIndex:
    data, _ = dataset(n)
    options = dict(COMPRESSED[mode])
    if "originals_path" in options:
        options["originals_path"] = Path(_COPIES_DIR.name) / f"{n}-{options['originals_path']}"
    index = ar.VectorIndex(DIM, **options)
    index.add(np.arange(n, dtype=np.int64), data)
    return index


@pytest.mark.parametrize("lib", ["llm_agent_runtime", "numpy"])
@pytest.mark.parametrize("mode", list(COMPRESSED))
@pytest.mark.parametrize("n", SIZES[1:])
def test_compressed_single_query(benchmark: Any, lib: str, mode: str, n: int) -> None:
    """Our compressed storage vs numpy's float32 scan (the peer keeps float32)."""
    data, queries = dataset(n)
    benchmark.group = f"vector: single query, ours {mode} vs numpy float32, d={DIM}, k={K}, N={n:,}"
    rounds = single_query_rounds(n)
    if lib == "numpy":
        single, _ = searcher("numpy", n)
        ids = benchmark.pedantic(
            single, args=(queries[0],), rounds=rounds, iterations=1, warmup_rounds=2
        )
        benchmark.extra_info["lib"] = "numpy"
        benchmark.extra_info["correct"] = _recall(ids, _reference(n, False)) >= 0.99
        benchmark.extra_info["memory_MB"] = round(data.nbytes / 1e6, 1)
        return
    index = compressed_index(mode, n)
    ids = benchmark.pedantic(
        lambda q: index.search(q, K)[0],
        args=(queries[0],),
        rounds=rounds,
        iterations=1,
        warmup_rounds=2,
    )
    # recall@10 over the whole query batch against float32 exact search.
    recall = _recall(np.stack([index.search(q, K)[0] for q in queries]), _reference(n, True))
    scanned = n * (2 * DIM if mode == "float16" else DIM + 4)
    benchmark.extra_info["lib"] = "llm_agent_runtime"
    benchmark.extra_info["correct"] = recall >= 0.99 and _recall(ids, _reference(n, False)) >= 0.9
    benchmark.extra_info["recall_at_10"] = round(recall, 4)
    benchmark.extra_info["memory_MB"] = round(index.nbytes / 1e6, 1)
    if benchmark.stats is not None:  # None under --benchmark-disable
        median = benchmark.stats.stats.median
        benchmark.extra_info["scan_GBps"] = round(scanned / median / 1e9, 1)
