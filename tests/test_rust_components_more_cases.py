"""More edge cases of the Rust components (vector index, memory, graph, metrics)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar
from llm_agent_runtime.errors import MemoryStoreError


def _index_with(ids: list[int], dim: int = 4, dtype: str = "float32") -> ar.VectorIndex:
    index = ar.VectorIndex(dim, dtype=dtype)
    rng = np.random.default_rng(0)
    index.add(ids, rng.standard_normal((len(ids), dim)).astype(np.float32))
    return index


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
@pytest.mark.parametrize("ids", [[1, 1], [2, 1, 2], np.array([3, 3], dtype=np.int64)])
def test_vector_remove_refuses_a_repeated_id_and_changes_nothing(dtype: str, ids: object) -> None:
    index = _index_with([1, 2, 3], dtype=dtype)
    before = {i: index.get(i) for i in (1, 2, 3)}
    with pytest.raises(MemoryStoreError, match="appears twice in one remove"):
        index.remove(ids)
    assert len(index) == 3
    for i, v in before.items():
        got = index.get(i)
        assert got is not None
        np.testing.assert_array_equal(got, v)


def test_vector_add_and_remove_refuse_a_repeated_id_alike() -> None:
    index = _index_with([1])
    with pytest.raises(MemoryStoreError) as added:
        index.add([5, 5], np.ones((2, 4), dtype=np.float32))
    with pytest.raises(MemoryStoreError) as removed:
        index.remove([1, 1])
    assert str(added.value) == "id 5 appears twice in one add"
    assert str(removed.value) == "id 1 appears twice in one remove"
    assert 1 in index


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: ar.RecallPolicy.hybrid(float("inf"), 0.0),
            "recency_weight must be >= 0 and finite, got inf",
        ),
        (
            lambda: ar.RecallPolicy.hybrid(0.0, float("nan")),
            "frequency_weight must be >= 0 and finite, got NaN",
        ),
        (
            lambda: ar.EpisodicStore(similarity_weight=float("inf")),
            "similarity_weight must be >= 0 and finite, got inf",
        ),
    ],
)
def test_memory_weights_that_are_not_finite_are_refused_saying_so(
    make: object, message: str
) -> None:
    # "must be >= 0, got inf" read as if inf were below 0; the message names the real rule.
    with pytest.raises(MemoryStoreError, match=re.escape(message)):
        make()  # type: ignore[operator]


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.lists(st.integers(0, 6), max_size=4)),
            st.tuples(st.just("remove"), st.lists(st.integers(0, 6), max_size=4)),
        ),
        max_size=12,
    )
)
def test_vector_add_and_remove_match_a_dict_reference(ops: list[tuple[str, list[int]]]) -> None:
    """Refused calls change nothing; accepted ones act as on a dict of id -> unit vector."""
    dim = 3
    index = ar.VectorIndex(dim)
    reference: dict[int, np.ndarray] = {}
    for step, (op, ids) in enumerate(ops):
        if op == "add":
            vectors = np.arange(len(ids) * dim, dtype=np.float32).reshape(-1, dim) + step + 1.0
            refused = len(set(ids)) != len(ids)
            if refused:
                with pytest.raises(MemoryStoreError, match="appears twice in one add"):
                    index.add(ids, vectors)
            else:
                index.add(ids, vectors)
                for i, v in zip(ids, vectors, strict=True):
                    reference[i] = v / np.linalg.norm(v)
        else:
            refused = len(set(ids)) != len(ids) or any(i not in reference for i in ids)
            if refused:
                with pytest.raises(MemoryStoreError):
                    index.remove(ids)
            else:
                index.remove(ids)
                for i in ids:
                    del reference[i]
        assert len(index) == len(reference)
        assert sorted(i for i in range(7) if i in index) == sorted(reference)
        for i, v in reference.items():
            np.testing.assert_allclose(index.get(i), v, rtol=1e-6, atol=1e-7)
        if reference:
            got_ids, scores = index.search(np.ones(dim, dtype=np.float32), len(reference) + 5)
            assert sorted(got_ids.tolist()) == sorted(reference)
            want = {i: float(v.sum() / np.sqrt(dim)) for i, v in reference.items()}
            for i, s in zip(got_ids.tolist(), scores.tolist(), strict=True):
                assert s == pytest.approx(want[i], abs=1e-5)


def test_high_importance_count_refuses_a_nan_threshold() -> None:
    # Every comparison with NaN is false: it counted 0 whatever the store held.
    store = ar.EpisodicStore()
    store.add_episode("agent", "kept", 0.9)
    with pytest.raises(MemoryStoreError, match="threshold must be a number, got NaN"):
        store.high_importance_count("agent", float("nan"))
    assert store.high_importance_count("agent", 0.5) == 1
