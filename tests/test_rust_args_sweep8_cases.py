"""How vectors and typed arguments are read, sweep 8: numpy masked arrays (refused when they
mask a value, read as their data when they mask nothing), bools, text and complex numbers
given as vectors of floats, and arguments of the wrong type given to the EpisodicStore
policies, MetricsSnapshot.delta, EventFanout and tuple_of."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import llm_agent_runtime as ar
from llm_agent_runtime import _core

MASKED = r"masked array with \d+ masked values?: it is refused.*filled"


class _Returns:
    """An embedder whose rows are the value it was given, whatever it is."""

    def __init__(self, rows: Any) -> None:
        self.rows = rows

    def embed(self, texts: Any) -> Any:
        return self.rows


def _cosine_ranking(vectors: np.ndarray, query: np.ndarray) -> list[int]:
    """The plain numpy reference: ids by descending cosine similarity (ties by id)."""
    norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(query)
    scores = (vectors.astype(np.float64) @ query.astype(np.float64)) / norms
    return sorted(range(len(vectors)), key=lambda i: (-scores[i], i))


# --- 1. masked arrays: refused when they mask a value ----------------------------------------


def test_vector_index_add_refuses_a_masked_matrix() -> None:
    vectors = np.eye(3, dtype=np.float32)
    index = ar.VectorIndex(3)
    masked = np.ma.array(vectors, mask=[[0, 0, 0], [1, 0, 0], [0, 0, 0]])
    with pytest.raises(ar.MemoryStoreError, match="vectors is a numpy " + MASKED):
        index.add([0, 1, 2], masked)
    assert len(index) == 0


def test_vector_index_search_refuses_a_masked_query() -> None:
    index = ar.VectorIndex(3)
    index.add([0, 1], np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32))
    query = np.ma.array(np.array([1, 0, 0], dtype=np.float32), mask=[1, 0, 0])
    with pytest.raises(ar.MemoryStoreError, match="query is a numpy " + MASKED):
        index.search(query, 1)
    queries = np.ma.array(np.eye(3, dtype=np.float32), mask=np.eye(3, dtype=bool))
    with pytest.raises(ar.MemoryStoreError, match="queries is a numpy " + MASKED):
        index.search_batch(queries, 1)


def test_vector_index_refuses_masked_ids() -> None:
    index = ar.VectorIndex(2)
    with pytest.raises(ar.MemoryStoreError, match="ids is a numpy " + MASKED):
        index.add(np.ma.array([0, 7], mask=[0, 1]), np.eye(2, dtype=np.float32))
    assert len(index) == 0


@settings(max_examples=40, deadline=None)
@given(
    vectors=hnp.arrays(
        np.float32,
        st.tuples(st.integers(2, 8), st.just(4)),
        elements=st.floats(-4, 4, width=32).filter(lambda x: abs(x) > 1e-3),
    ),
    query=hnp.arrays(
        np.float32, (4,), elements=st.floats(-4, 4, width=32).filter(lambda x: abs(x) > 1e-3)
    ),
)
def test_a_masked_array_that_masks_nothing_is_read_as_its_data(
    vectors: np.ndarray, query: np.ndarray
) -> None:
    ids = list(range(len(vectors)))
    plain, masked = ar.VectorIndex(4), ar.VectorIndex(4)
    plain.add(ids, vectors)
    for mask in (np.ma.nomask, np.zeros(vectors.shape, dtype=bool)):
        masked = ar.VectorIndex(4)
        masked.add(np.ma.array(ids, mask=np.ma.nomask), np.ma.array(vectors, mask=mask))
        for q in (query, np.ma.array(query), np.ma.array(query, mask=[False] * 4)):
            got_ids, got_scores = masked.search(q, len(ids))
            want_ids, want_scores = plain.search(query, len(ids))
            assert got_ids.tolist() == want_ids.tolist()
            assert got_scores.tolist() == want_scores.tolist()
    # Checked against numpy: the scores are those of the data (no value lost or added).
    _, scores = plain.search(query, len(ids))
    reference = _cosine_ranking(vectors, query)
    ref_scores = [
        float(vectors[i] @ query / (np.linalg.norm(vectors[i]) * np.linalg.norm(query)))
        for i in reference
    ]
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    size=st.integers(1, 12),
)
def test_any_masked_value_is_refused_wherever_a_vector_is_read(
    data: st.DataObject, size: int
) -> None:
    mask = data.draw(hnp.arrays(bool, (size,)).filter(lambda m: m.any()))
    vector = np.ma.array(np.arange(1, size + 1, dtype=np.float32), mask=mask)
    count = int(mask.sum())
    word = "value" if count == 1 else "values"
    expected = f"masked array with {count} masked {word}"
    index = ar.VectorIndex(size)
    index.add([0], np.ones((1, size), dtype=np.float32))
    episodic = ar.EpisodicStore(clock=lambda: 0.0)
    semantic = ar.SemanticStore(dim=size)
    calls: list[Callable[[], Any]] = [
        lambda: index.search(vector, 1),
        lambda: index.add([1], vector[np.newaxis]),
        lambda: episodic.add_episode("a", "x", 0.5, embedding=vector),
        lambda: episodic.recall("a", 1, vector),
        lambda: episodic.add_episode("a", "x", 0.5, embedding=vector.astype(np.float64)),
        lambda: ar.EpisodicStore(embedder=_Returns(vector[np.newaxis])).add_episode("a", "x", 0.5),
        lambda: ar.EpisodicStore(embedder=_Returns([vector])).add_episode("a", "x", 0.5),
        lambda: semantic.store("k", "x", embedding=vector),
        lambda: semantic.search(vector),
        lambda: ar.SemanticStore(_Returns(vector[np.newaxis])).store("k", "x"),
        lambda: ar.SemanticStore(_Returns([vector])).store("k", "x"),
    ]
    for call in calls:
        with pytest.raises(ar.MemoryStoreError, match=expected):
            call()
    assert len(index) == 1
    assert len(episodic) == 0
    assert len(semantic) == 0


def test_masked_constant_in_a_list_is_refused() -> None:
    with pytest.raises(ar.MemoryStoreError, match=MASKED):
        ar.EpisodicStore().add_episode("a", "x", 0.5, embedding=[np.ma.masked, 1.0])
    with pytest.raises(ar.MemoryStoreError, match=MASKED):
        ar.SemanticStore(dim=2).store("k", "x", embedding=[np.ma.masked, 1.0])


def test_graph_edges_masked_array() -> None:
    edges = np.array([[0, 1], [1, 2]])
    with pytest.raises(ar.GraphError, match="edges is a numpy " + MASKED):
        ar.GraphStore.from_edge_list(3, np.ma.array(edges, mask=[[0, 1], [0, 0]]))
    plain = ar.GraphStore.from_edge_list(3, edges)
    for mask in (np.ma.nomask, np.zeros_like(edges, dtype=bool)):
        read = ar.GraphStore.from_edge_list(3, np.ma.array(edges, mask=mask))
        assert read.relationships() == plain.relationships()


# --- 2. bools, text and complex numbers are no vector of floats ------------------------------


BOOL_VECTORS = [
    [True, False, True],
    np.array([True, False, True]),
    [True, 0.5, 1.0],
    [np.True_, 0.5, 1.0],
    np.array([True, 0.5, 1.0], dtype=object),
]
NOT_REAL = [
    ["1.0", "2", "3"],
    np.array(["1.0", "2", "3"]),
    np.array(["1.0", 2.0, 3.0], dtype=object),
    np.array([1 + 1j, 2, 3]),
    [1.0, 2j, 3.0],
]


@pytest.mark.parametrize("vector", BOOL_VECTORS + NOT_REAL, ids=repr)
def test_a_vector_of_no_real_numbers_is_refused_everywhere(vector: Any) -> None:
    row = [vector] if isinstance(vector, list) else np.asarray(vector)[np.newaxis]
    is_bool = any(vector is v for v in BOOL_VECTORS)
    names = r"bool" if is_bool else r"str|<U|text|complex"
    semantic = ar.SemanticStore(dim=3)
    episodic = ar.EpisodicStore(clock=lambda: 0.0)
    calls: list[Callable[[], Any]] = [
        lambda: semantic.store("k", "x", embedding=vector),
        lambda: ar.SemanticStore(_Returns(row)).store("k", "x"),
        lambda: episodic.add_episode("a", "x", 0.5, embedding=vector),
        lambda: episodic.recall("a", 1, vector),
        lambda: ar.EpisodicStore(embedder=_Returns(row)).add_episode("a", "x", 0.5),
    ]
    for call in calls:
        with pytest.raises(ar.MemoryStoreError, match=names):
            call()
    assert len(semantic) == 0
    assert len(episodic) == 0


def test_a_bool_array_names_its_dtype() -> None:
    bools = np.array([True, False, True])
    with pytest.raises(ar.MemoryStoreError, match="dtype bool"):
        ar.SemanticStore(dim=3).store("k", "x", embedding=bools)
    with pytest.raises(ar.MemoryStoreError, match="dtype bool"):
        ar.SemanticStore(_Returns([[True, False, True]])).store("k", "x")
    with pytest.raises(ar.MemoryStoreError, match="dtype bool"):
        ar.EpisodicStore().add_episode("a", "x", 0.5, embedding=bools)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.one_of(st.floats(-8, 8).filter(lambda x: abs(x) > 1e-3), st.integers(1, 8)),
        min_size=1,
        max_size=8,
    )
)
def test_real_vectors_are_read_as_numpy_reads_them(values: list[float]) -> None:
    want = np.asarray(values, dtype=np.float32)
    episodic = ar.EpisodicStore(clock=lambda: 0.0)
    episodic.add_episode("a", "x", 0.5, embedding=values)
    got = episodic.episodes("a")[0].embedding
    assert got is not None
    np.testing.assert_allclose(got, want / np.linalg.norm(want), rtol=1e-5, atol=1e-6)
    semantic = ar.SemanticStore(dim=len(values))
    semantic.store("k", "x", embedding=values)
    hits = semantic.search(values)
    assert [hit.key for hit in hits] == ["k"]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)


# --- 3. arguments of the wrong type name the argument ----------------------------------------


@pytest.mark.parametrize("value", ["x", 1, 0.5, [1.0], True], ids=repr)
def test_episodic_store_decay_of_the_wrong_type(value: Any) -> None:
    with pytest.raises(TypeError, match=r"^decay must be a DecayPolicy or None, got .*exponential"):
        ar.EpisodicStore(decay=value)
    with pytest.raises(TypeError, match=r"^recall_policy must be a RecallPolicy or None, got "):
        ar.EpisodicStore(recall_policy=value)


def test_episodic_store_policies_still_taken() -> None:
    store = ar.EpisodicStore(
        decay=ar.DecayPolicy.exponential(1),  # an int as the half-life: a number
        recall_policy=ar.RecallPolicy.hybrid(1, 0),
        clock=lambda: 0.0,
    )
    store.add_episode("a", "x", 0.5)
    assert len(store.recall("a")) == 1
    assert len(ar.EpisodicStore(decay=None, recall_policy=None)) == 0


@pytest.mark.parametrize("value", ["x", None, [1], 1.5], ids=repr)
def test_metrics_snapshot_delta_of_the_wrong_type(value: Any) -> None:
    snapshot = ar.RuntimeMetrics().snapshot()
    with pytest.raises(TypeError, match=r"^after must be a MetricsSnapshot, got "):
        ar.MetricsSnapshot.delta(value, snapshot)
    with pytest.raises(TypeError, match=r"^before must be a MetricsSnapshot, got "):
        ar.MetricsSnapshot.delta(snapshot, value)
    assert ar.MetricsSnapshot.delta(snapshot, snapshot) == snapshot


def test_metrics_snapshot_delta_given_the_metrics_says_take_a_snapshot() -> None:
    metrics = ar.RuntimeMetrics()
    with pytest.raises(TypeError, match=r"metrics\.snapshot\(\)"):
        ar.MetricsSnapshot.delta(metrics, metrics.snapshot())


class _Point(NamedTuple):
    x: int
    y: int


@pytest.mark.parametrize("value", ["x", None, 1.5, {}], ids=repr)
def test_internal_helpers_name_the_argument(value: Any) -> None:
    with pytest.raises(TypeError, match=r"^callbacks must be a list, got "):
        _core.EventFanout(value, [], print)
    with pytest.raises(TypeError, match=r"^queues must be a list, got "):
        _core.EventFanout([], value, print)
    fanout = _core.EventFanout([], [], print)
    with pytest.raises(TypeError, match=r"^cls must be a class"):
        fanout.emit_new(value, (1, 2))
    with pytest.raises(TypeError, match=r"^fields must be a tuple, got "):
        fanout.emit_new(_Point, value)
    with pytest.raises(TypeError, match=r"^cls must be a class"):
        _core.tuple_of(value, (1, 2))
    with pytest.raises(TypeError, match=r"^items must be a tuple, got "):
        _core.tuple_of(_Point, value)
    assert _core.tuple_of(_Point, (1, 2)) == _Point(1, 2)
