"""numpy complex numbers given where the Rust core reads a real number, and marking many
episodes recalled at once.

numpy's complex scalars have ``__float__``: a float conversion keeps the real part with
only a warning, so 0.5+0.5j would pass for 0.5. Every real-number argument refuses them as
it refuses any non-number (a Python ``complex`` included).
"""

from __future__ import annotations

import random
import subprocess
import sys
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import llm_agent_runtime as ar

# numpy names its long complex type clongdouble.
COMPLEX_SCALARS = [np.complex128(1 + 2j), np.complex64(1 + 2j), np.clongdouble(1 + 2j)]
# The real numbers the same arguments take, numpy's included.
REAL_SCALARS = [2, 2.5, np.float64(2.5), np.float32(2.5), np.int64(2), np.int32(2)]
_NOT_REAL = r"must be a real number, got c(omplex|longdouble)"


def _ids(value: Any) -> str:
    return f"{type(value).__name__}({value})"


def _graph() -> ar.GraphStore:
    g = ar.GraphStore()
    g.add_entity("a")
    g.add_entity("b")
    g.add_relationship("a", "b", "knows", 1.0)
    return g


def _weight_calls(g: ar.GraphStore, weight: Any) -> list[tuple[str, Callable[[], object]]]:
    return [
        ("add_relationship", lambda: g.add_relationship("a", "b", "k", weight)),
        ("add_relationship kw", lambda: g.add_relationship("a", "b", weight=weight)),
        ("add_relationships", lambda: g.add_relationships([("a", "b", "k", weight)])),
        (
            "update_relationship",
            lambda: g.update_relationship("a", "b", "knows", weight=weight),
        ),
        ("from_edge_list", lambda: ar.GraphStore.from_edge_list(2, [(0, 1, weight)])),
        ("from_edge_list list row", lambda: ar.GraphStore.from_edge_list(2, [[0, 1, weight]])),
    ]


@pytest.mark.parametrize("weight", COMPLEX_SCALARS, ids=_ids)
def test_a_numpy_complex_weight_is_refused_as_any_non_number(weight: Any) -> None:
    # It was stored as its real part, 1.0, with only a ComplexWarning.
    g = _graph()
    before = g.to_json()
    for name, call in _weight_calls(g, weight):
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            # The error of a weight that is no number (a str, Python's complex).
            with pytest.raises(ar.GraphError, match=r"weight must be a real number, got"):
                call()
        assert seen == [], name
    assert g.to_json() == before


def test_a_python_complex_weight_is_refused_in_the_same_words() -> None:
    g = _graph()
    with pytest.raises(ar.GraphError, match=r"weight must be a real number, got \(1\+2j\)"):
        g.add_relationship("a", "b", "k", 1 + 2j)


@pytest.mark.parametrize("weight", REAL_SCALARS, ids=_ids)
def test_real_weights_of_every_kind_are_still_taken(weight: Any) -> None:
    g = _graph()
    for name, call in _weight_calls(g, weight):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            call()
        del name
    weights = {r["weight"] for r in g.relationships()}
    assert weights == {float(weight)}
    for edges in ([(0, 1, weight)], [[0, 1, weight]]):
        built = ar.GraphStore.from_edge_list(2, edges)
        assert [r["weight"] for r in built.relationships()] == [float(weight)]


@pytest.mark.parametrize("value", COMPLEX_SCALARS, ids=_ids)
def test_a_numpy_complex_resolution_is_a_type_error_naming_it(value: Any) -> None:
    # It was read as its real part, 1.0.
    g = _graph()
    calls: list[Callable[[], object]] = [
        lambda: g.communities(resolution=value),
        lambda: g.modularity([["a", "b"]], resolution=value),
    ]
    for call in calls:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with pytest.raises(TypeError, match=rf"^resolution {_NOT_REAL}"):
                call()
        assert seen == []
    with pytest.raises(TypeError, match=r"^resolution must be a real number, got complex"):
        g.modularity([["a", "b"]], resolution=1 + 2j)


@pytest.mark.parametrize("value", REAL_SCALARS, ids=_ids)
def test_real_resolutions_of_every_kind_are_still_taken(value: Any) -> None:
    g = _graph()
    assert g.modularity([["a", "b"]], resolution=value) == g.modularity(
        [["a", "b"]], resolution=float(value)
    )
    assert g.communities(resolution=value) == g.communities(resolution=float(value))


@pytest.mark.parametrize("value", COMPLEX_SCALARS, ids=_ids)
def test_a_numpy_complex_memory_number_is_a_type_error_naming_it(value: Any) -> None:
    store = ar.EpisodicStore(clock=lambda: 0.0)
    calls: list[tuple[str, Callable[[], object]]] = [
        ("importance", lambda: store.add_episode("a", "x", value)),
        ("half_life_hours", lambda: ar.DecayPolicy.exponential(value)),
        ("recency_weight", lambda: ar.RecallPolicy.hybrid(value, 0.0)),
        ("frequency_weight", lambda: ar.RecallPolicy.hybrid(0.0, value)),
        ("similarity_weight", lambda: ar.EpisodicStore(similarity_weight=value)),
        ("threshold", lambda: store.high_importance_count("a", value)),
    ]
    for name, call in calls:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with pytest.raises(TypeError, match=rf"^{name} {_NOT_REAL}"):
                call()
        assert seen == [], name
    assert len(store) == 0


@pytest.mark.parametrize("value", [0.5, 0, 1, np.float64(0.5), np.float32(0.5), np.int64(1)])
def test_real_memory_numbers_of_every_kind_are_still_taken(value: Any) -> None:
    store = ar.EpisodicStore(clock=lambda: 0.0, similarity_weight=value)
    store.add_episode("a", "x", value)
    assert store.episodes("a")[0].importance == float(value)
    assert store.high_importance_count("a", value) == 0
    ar.RecallPolicy.hybrid(value, value)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128], ids=lambda d: d.__name__)
def test_a_zero_dimensional_complex_array_is_no_real_number(dtype: Any) -> None:
    value = np.array(1 + 2j, dtype=dtype)
    g = _graph()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ar.GraphError, match="weight must be a real number, got"):
            g.add_relationship("a", "b", "k", value)
        with pytest.raises(TypeError, match=r"^resolution must be a real number, got ndarray"):
            g.modularity([["a", "b"]], resolution=value)
        with pytest.raises(TypeError, match=r"^importance must be a real number, got ndarray"):
            ar.EpisodicStore().add_episode("a", "x", value)
    # A real 0-d array is still a number.
    g.add_relationship("a", "b", "k", np.array(2.5))
    assert sorted(r["weight"] for r in g.relationships()) == [1.0, 2.5]


def test_reading_a_real_number_does_not_import_numpy() -> None:
    # The complex check looks for numpy's types only once numpy is imported.
    code = (
        "import sys\n"
        "from decimal import Decimal\n"
        "from fractions import Fraction\n"
        "import llm_agent_runtime as ar\n"
        "g = ar.GraphStore()\n"
        "g.add_entity('a'); g.add_entity('b')\n"
        "for w in (1.5, 2, Decimal('0.5'), Fraction(1, 4)):\n"
        "    g.add_relationship('a', 'b', 'k', w)\n"
        "ar.EpisodicStore().add_episode('a', 'x', Decimal('0.5'))\n"
        "try:\n"
        "    g.add_relationship('a', 'b', 'k', 1 + 2j)\n"
        "except ar.GraphError:\n"
        "    pass\n"
        "print(sorted(r['weight'] for r in g.relationships()), 'numpy' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["[0.25,", "0.5,", "1.5,", "2.0]", "False"]


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128], ids=lambda d: d.__name__)
def test_complex_arrays_are_refused_where_float_arrays_are_expected(dtype: Any) -> None:
    index = ar.VectorIndex(2)
    with pytest.raises(ar.MemoryStoreError, match="float32"):
        index.add(np.array([1]), np.array([[1 + 1j, 0]], dtype=dtype))
    index.add(np.array([1]), np.array([[1.0, 0.0]], dtype=np.float32))
    with pytest.raises(ar.MemoryStoreError, match="float32"):
        index.search(np.array([1 + 1j, 0], dtype=dtype), 1)
    store = ar.EpisodicStore(clock=lambda: 0.0)
    with pytest.raises(ar.MemoryStoreError, match="real numbers"):
        store.add_episode("a", "x", 0.5, embedding=np.array([1 + 1j, 0], dtype=dtype))
    with pytest.raises(ar.MemoryStoreError, match="real numbers"):
        store.add_episode("a", "x", 0.5, embedding=[1.0, dtype(1 + 1j)])
    with pytest.raises(ar.GraphError, match="dtype complex"):
        ar.GraphStore.from_edge_list(2, np.array([[0, 1, 1 + 1j]], dtype=dtype))
    assert len(index) == 1
    assert len(store) == 0


def test_a_numpy_complex_property_is_refused() -> None:
    g = _graph()
    with pytest.raises(ar.GraphError, match="JSON-compatible"):
        g.add_entity("c", properties={"x": np.complex128(1 + 2j)})
    assert not g.has_entity("c")


# --- mark_recalled with many ids ----------------------------------------------------------


def _reference(
    episodes: list[ar.Episode], ids: list[int], now: float
) -> tuple[int, list[tuple[int, int, float | None]]]:
    """What mark_recalled does, in Python: each episode of the agent whose id is given
    (once, however often it is given) is marked."""
    wanted = set(ids)
    marked = [e for e in episodes if e.id in wanted]
    state = [
        (
            e.id,
            e.recall_count + (e.id in wanted),
            now if e.id in wanted else e.last_recalled_at,
        )
        for e in episodes
    ]
    return len(marked), state


def _state(store: ar.EpisodicStore, agent: str) -> list[tuple[int, int, float | None]]:
    return [(e.id, e.recall_count, e.last_recalled_at) for e in store.episodes(agent)]


def test_marking_forty_thousand_ids_marks_exactly_the_agents_episodes_given() -> None:
    clock = {"now": 1.0}
    store = ar.EpisodicStore(clock=lambda: clock["now"])
    rng = random.Random(7)
    # Two agents interleaved: ids are store-wide, so "a"'s have gaps ("b"'s ids).
    for i in range(45_000):
        store.add_episode("a" if i % 3 else "b", f"e{i}", rng.random())
    a_ids = [e.id for e in store.episodes("a")]
    b_ids = [e.id for e in store.episodes("b")]
    assert len(a_ids) == 30_000
    ids = rng.sample(a_ids, 20_000) + rng.sample(b_ids, 5_000)
    ids += rng.sample(range(80_000, 10**12), 5_000)  # never given out
    ids += ids[:10_000]  # given twice: still one mark each
    rng.shuffle(ids)
    assert len(ids) == 40_000
    clock["now"] = 5.0
    expected_found, expected_state = _reference(store.episodes("a"), ids, 5.0)
    b_before = _state(store, "b")
    assert store.mark_recalled("a", ids) == expected_found == 20_000
    assert _state(store, "a") == expected_state
    assert _state(store, "b") == b_before
    # Again, as a generator and a numpy array: counts go to 2.
    clock["now"] = 6.0
    expected_found, expected_state = _reference(store.episodes("a"), ids, 6.0)
    assert store.mark_recalled("a", (i for i in ids)) == expected_found
    assert _state(store, "a") == expected_state
    clock["now"] = 7.0
    array = np.array(ids, dtype=np.uint64)
    expected_found, expected_state = _reference(store.episodes("a"), ids, 7.0)
    assert store.mark_recalled("a", array.tolist()) == expected_found
    assert _state(store, "a") == expected_state
    given = set(ids)
    assert {e.recall_count for e in store.episodes("a") if e.id in given} == {3}


@pytest.mark.parametrize(
    "pick",
    [
        lambda ids: [],
        lambda ids: [ids[0]],
        lambda ids: [ids[-1], ids[0]],
        lambda ids: [ids[2], ids[2], ids[2]],
        lambda ids: [ids[4], 10**6, ids[1]],
        lambda ids: [2**64 - 1, 0],
        lambda ids: sorted(ids, reverse=True),
    ],
)
def test_marking_a_few_ids_matches_the_reference(pick: Callable[[list[int]], list[int]]) -> None:
    store = ar.EpisodicStore(clock=lambda: 3.0, per_agent_capacity=5)
    for i in range(8):
        store.add_episode("other" if i == 3 else "a", f"e{i}", i / 10)
    episodes = store.episodes("a")
    ids = pick([e.id for e in episodes])
    expected_found, expected_state = _reference(episodes, ids, 3.0)
    assert store.mark_recalled("a", ids) == expected_found
    assert _state(store, "a") == expected_state
    assert store.mark_recalled("nobody", ids) == 0
