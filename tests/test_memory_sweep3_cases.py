"""WorkingMemory and EpisodicStore: clocks, complex numbers and recall against a reference."""

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar

# --- a clock must be callable ----------------------------------------------------------------

NOT_CALLABLE = [ar.FakeClock(), 1.7e9, "now"]


@pytest.mark.parametrize("clock", NOT_CALLABLE, ids=repr)
def test_a_clock_that_cannot_be_called_is_refused_when_the_store_is_made(clock: Any) -> None:
    # The orchestration primitives take a Clock object (clock=FakeClock()) and a value read
    # too early (clock=time.time()) is a float: either would fail only at the first episode.
    with pytest.raises(TypeError, match=r"^clock must be a callable"):
        ar.EpisodicStore(clock=clock)
    text = ar.EpisodicStore().to_json()
    with pytest.raises(TypeError, match=r"^clock must be a callable"):
        ar.EpisodicStore.from_json(text, clock=clock)


def test_a_clock_s_now_method_and_a_class_are_clocks() -> None:
    fake = ar.FakeClock(start=50.0)
    store = ar.EpisodicStore(clock=fake.now)
    store.add_episode("a", "x", 0.5)
    assert store.episodes("a")[0].created_at == 50.0
    again = ar.EpisodicStore.from_json(store.to_json(), clock=float)
    again.add_episode("a", "y", 0.5)
    assert [e.created_at for e in again.episodes("a")] == [50.0, 0.0]
    assert ar.EpisodicStore(clock=None).add_episode("a", "x", 0.5) == 0


# --- numpy complex numbers are no real numbers -----------------------------------------------

# numpy names its long complex type clongdouble.
_NOT_REAL = r"must be a real number, got c(omplex|longdouble)"
_CLOCK_COMPLEX = r"the clock returned a c(omplex|longdouble)"
COMPLEX_SCALARS = [np.complex128(0.5 + 0.5j), np.complex64(0.5 + 0.5j), np.clongdouble(0.5 + 0.5j)]


def _real_arguments(value: Any) -> list[tuple[str, Callable[[], object]]]:
    store = ar.EpisodicStore(clock=lambda: 0.0)
    return [
        ("importance", lambda: store.add_episode("a", "x", value)),
        ("half_life_hours", lambda: ar.DecayPolicy.exponential(value)),
        ("recency_weight", lambda: ar.RecallPolicy.hybrid(value, 0.0)),
        ("frequency_weight", lambda: ar.RecallPolicy.hybrid(0.0, value)),
        ("similarity_weight", lambda: ar.EpisodicStore(similarity_weight=value)),
        ("threshold", lambda: store.high_importance_count("a", value)),
    ]


@pytest.mark.parametrize("value", COMPLEX_SCALARS, ids=lambda v: type(v).__name__)
def test_a_numpy_complex_number_is_no_real_number(value: Any) -> None:
    # numpy's float conversion keeps the real part with only a warning: 0.5+0.5j read as 0.5.
    for name, call in _real_arguments(value):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with pytest.raises(TypeError, match=rf"^{name} {_NOT_REAL}"):
                call()
        assert seen == [], name
    with pytest.raises(TypeError, match="importance must be a real number"):
        ar.EpisodicStore().add_episode("a", "x", 0.5 + 0j)  # Python's complex, as before


@pytest.mark.parametrize("value", COMPLEX_SCALARS, ids=lambda v: type(v).__name__)
def test_a_clock_returning_a_complex_number_is_a_store_error(value: Any) -> None:
    store = ar.EpisodicStore(clock=lambda: value)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ar.MemoryStoreError, match=_CLOCK_COMPLEX):
            store.add_episode("a", "x", 0.5)
        with pytest.raises(ar.MemoryStoreError, match=_CLOCK_COMPLEX):
            store.recall("a")
    assert seen == [] and len(store) == 0


COMPLEX_VECTORS = [
    np.array([1j, 1.0, 0.0]),
    np.array([1.0, 2.0, 3.0], dtype=np.complex64),
    [np.complex128(1j), 1.0, 0.0],
    [1.0, np.complex64(1j), 0.0],
    np.array([np.complex128(1j), 1.0, 0.0], dtype=object),
]


class _Returns:
    """An embedder that returns one fixed row for any text."""

    def __init__(self, row: Any) -> None:
        self.row = row

    def embed(self, texts: list[str]) -> Any:
        return [self.row for _ in texts]


class _Rows:
    """An embedder that returns fixed rows, whatever it is asked."""

    def __init__(self, rows: Any) -> None:
        self.rows = rows

    def embed(self, texts: list[str]) -> Any:
        return self.rows


@pytest.mark.parametrize("vector", COMPLEX_VECTORS, ids=repr)
def test_a_complex_embedding_or_query_is_refused_not_cut_to_its_real_part(vector: Any) -> None:
    # [1j, 1, 0] read as [0, 1, 0] would store and rank by a direction never given.
    store = ar.EpisodicStore(clock=lambda: 0.0)
    store.add_episode("a", "plain", 0.5, embedding=[0.0, 1.0, 0.0])
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with pytest.raises(ar.MemoryStoreError, match="embedding must hold real numbers"):
            store.add_episode("a", "x", 0.5, embedding=vector)
        with pytest.raises(ar.MemoryStoreError, match="query must hold real numbers"):
            store.recall("a", 1, vector)
        rows = [vector] if isinstance(vector, list) else np.asarray(vector)[np.newaxis]
        for returned in (_Returns(vector), _Rows(rows)):
            embedded = ar.EpisodicStore(clock=lambda: 0.0, embedder=returned)
            with pytest.raises(ar.MemoryStoreError, match=r"embedder\.embed.*real numbers"):
                embedded.add_episode("a", "x", 0.5)
            assert len(embedded) == 0
    assert seen == []
    assert [e.content for e in store.episodes("a")] == ["plain"]
    assert store.episodes("a")[0].recall_count == 0


@pytest.mark.parametrize(
    "vector",
    # No bools: they are refused, not read as 1.0 and 0.0 (test_rust_args_sweep8_cases.py).
    [np.array([1, 0], dtype=np.int8), np.array([1.0, 0.0]), (1, 0)],
    ids=repr,
)
def test_real_vectors_of_any_type_are_still_taken(vector: Any) -> None:
    store = ar.EpisodicStore(clock=lambda: 0.0, embedder=_Returns(vector))
    store.add_episode("a", "given", 0.5, embedding=vector)
    store.add_episode("a", "embedded", 0.5)
    assert [e.embedding.tolist() for e in store.episodes("a")] == [[1.0, 0.0]] * 2  # type: ignore[union-attr]
    assert len(store.recall("a", 2, vector)) == 2


# --- recall against a plain sorted() reference ----------------------------------------------


def _reference_order(
    episodes: list[dict[str, Any]],
    now: float,
    half_life: float | None,
    weights: tuple[float, float] | None,
    query: np.ndarray | None,
    similarity_weight: float,
) -> list[int]:
    scored = []
    for at, e in enumerate(episodes):
        age_h = max((now - e["created"]) / 3600.0, 0.0)
        score = e["importance"] * 0.5 ** (age_h / half_life) if half_life else e["importance"]
        if weights is not None:
            n = float(e["count"])
            score += weights[0] / (1.0 + age_h) + weights[1] * n / (1.0 + n)
        if query is not None and e["embedding"] is not None:
            cos = np.float32(0.0)
            for a, b in zip(query, e["embedding"], strict=True):
                cos = np.float32(cos + a * b)  # float32, summed in order, as the store does
            score += similarity_weight * float(cos)
        scored.append((score, at))
    return [at for _, at in sorted(scored, key=lambda s: (-s[0], s[1]))]


EPISODE = st.tuples(
    st.sampled_from([0.0, 0.25, 0.5, 1.0]) | st.floats(0.0, 1.0),
    st.sampled_from([0.0, 1800.0, 3600.0]),
    st.none() | st.sampled_from([(1.0, 0.0), (0.0, 2.0), (1.0, 1.0), (0.6, -0.8)]),
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(EPISODE, min_size=1, max_size=8),
    st.lists(
        st.tuples(
            st.integers(0, 9),
            st.sampled_from([0.0, 600.0, 3600.0]),
            st.none() | st.sampled_from([(1.0, 0.0), (0.3, 0.7)]),
            st.booleans(),
        ),
        min_size=1,
        max_size=4,
    ),
    st.none() | st.sampled_from([0.5, 1.0, 24.0]),
    st.none() | st.sampled_from([(0.3, 0.2), (0.0, 1.0), (2.0, 0.0)]),
    st.sampled_from([0.0, 0.5, 1.0]),
)
def test_recall_agrees_with_a_sorted_reference(
    added: list[tuple[float, float, tuple[float, float] | None]],
    recalls: list[tuple[int, float, tuple[float, float] | None, bool]],
    half_life: float | None,
    weights: tuple[float, float] | None,
    similarity_weight: float,
) -> None:
    now = [0.0]
    store = ar.EpisodicStore(
        decay=ar.DecayPolicy.exponential(half_life) if half_life else None,
        recall_policy=ar.RecallPolicy.hybrid(*weights) if weights else None,
        clock=lambda: now[0],
        similarity_weight=similarity_weight,
    )
    reference: list[dict[str, Any]] = []
    for at, (importance, wait, embedding) in enumerate(added):
        now[0] += wait
        store.add_episode("a", str(at), importance, embedding=embedding)
        stored = store.episodes("a")[-1].embedding
        reference.append(
            {"importance": importance, "created": now[0], "embedding": stored, "count": 0}
        )
    for limit, wait, query, counted in recalls:
        now[0] += wait
        unit = None
        if query is not None:
            q = np.asarray(query, dtype=np.float32)
            unit = q * np.float32(1.0 / np.sqrt(float(np.dot(q.astype(np.float64), q))))
        got = [int(e.content) for e in store.recall("a", limit, query, counted=counted)]
        expected = _reference_order(reference, now[0], half_life, weights, unit, similarity_weight)
        assert got == expected[:limit]
        if counted:
            for at in got:
                reference[at]["count"] += 1
    assert [e.recall_count for e in store.episodes("a")] == [e["count"] for e in reference]
