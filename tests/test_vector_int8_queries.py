import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar


def _dominated(n: int, dim: int, big: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows with nothing on axis 0, and a query that is mostly axis 0: every row's cosine
    comes from the query's small components, which int8 rounds to 0 next to the big one."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((n, dim)).astype(np.float32)
    data[:, 0] = 0.0
    q = rng.standard_normal(dim).astype(np.float32)
    q[0] = big
    return data, q


def _numpy_top(rows: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    norm = rows.astype(np.float64) / np.linalg.norm(rows.astype(np.float64), axis=1)[:, None]
    scores = norm @ (q.astype(np.float64) / np.linalg.norm(q.astype(np.float64)))
    return np.argsort(-scores, kind="stable")[:k]


@pytest.mark.parametrize("batch", [False, True])
def test_int8_exact_rescore_finds_the_neighbours_of_a_query_with_one_dominant_value(
    batch: bool,
) -> None:
    # The int8 scan quantized the query too: its small values all became 0, every row
    # scored 0, and the shortlist was the first k * rescore rows whatever the query. With
    # exact_rescore the scores were exact but the ids were the wrong ones (recall 0 of 10).
    data, q = _dominated(500, 32, 1e4, seed=1)
    index = ar.VectorIndex(32, dtype="int8", exact_rescore=True)
    index.add(np.arange(500), data)
    ids = index.search_batch(np.stack([q, q]), 10)[0][1] if batch else index.search(q, 10)[0]
    np.testing.assert_array_equal(np.sort(ids), np.sort(_numpy_top(data, q, 10)))


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(20, 300),
    dim=st.integers(2, 40),
    exponent=st.integers(12, 30),
    seed=st.integers(0, 2**32 - 1),
)
def test_int8_search_ranks_like_numpy_over_the_stored_rows_whatever_the_query_shape(
    n: int, dim: int, exponent: int, seed: int
) -> None:
    # Without float32 copies the scores are those of the stored (dequantized) rows, so the
    # top k must be numpy's top k over the rows `get` returns, for any query.
    data, q = _dominated(n, dim, float(2**exponent), seed)
    index = ar.VectorIndex(dim, dtype="int8", rescore=2)
    index.add(np.arange(n), data)
    stored = np.stack([index.get(i) for i in range(n)])
    qn = q.astype(np.float64) / np.linalg.norm(q.astype(np.float64))
    want = np.sort(stored.astype(np.float64) @ qn)[::-1][:5]
    ids, scores = index.search(q, 5)
    np.testing.assert_allclose(scores, want, atol=1e-6)
    np.testing.assert_allclose(stored[ids].astype(np.float64) @ qn, want, atol=1e-6)
