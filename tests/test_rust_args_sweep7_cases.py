"""How the Rust core reads its arguments, sweep 7: ints given through ``__index__`` beyond 64
bits, a bool given as a modularity resolution, bytes given as episode ids, a non-`str` given
to parse_react_step, and float32 arrays of the other byte order given to a VectorIndex."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import llm_agent_runtime as ar
from llm_agent_runtime import _core

# --- an int given through __index__ is read as that int ----------------------------------


class _Indexed:
    """An integer type that is no `int`: its value comes from ``__index__`` alone (as a
    ctypes value wrapper or a big-integer library's type gives it)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"_Indexed({self.value})"


def _outcome(call: Callable[[Any], Any], value: Any) -> tuple[Any, ...]:
    try:
        return ("ok", call(value))
    except Exception as e:  # the outcome compared is the exception itself
        return (type(e), str(e))


def _graph() -> ar.GraphStore:
    graph = ar.GraphStore()
    graph.add_entities(["a", "b", "c"])
    graph.add_relationship("a", "b")
    graph.add_relationship("b", "a")
    return graph


def _index() -> ar.VectorIndex:
    index = ar.VectorIndex(3)
    index.add([0, 1, 2], np.eye(3, dtype=np.float32))
    return index


def _store() -> ar.EpisodicStore:
    store = ar.EpisodicStore(clock=lambda: 0.0)
    for i in range(3):
        store.add_episode("a", f"e{i}", 0.5)
    return store


# Each reads an int argument and returns something comparable; all are cheap for any value
# the strategy draws (no allocation grows with it).
_INT_READERS: dict[str, Callable[[Any], Any]] = {
    "VectorIndex.search k": lambda k: _index().search(np.ones(3, np.float32), k)[0].tolist(),
    "VectorIndex.search_batch k": lambda k: (
        _index().search_batch(np.ones((2, 3), np.float32), k)[0].tolist()
    ),
    "VectorIndex dim": lambda d: ar.VectorIndex(d).dim,
    "VectorIndex rescore": lambda r: ar.VectorIndex(3, "int8", rescore=r).rescore,
    "WorkingMemory capacity": lambda c: ar.WorkingMemory(c).capacity,
    "EpisodicStore per_agent_capacity": lambda c: len(ar.EpisodicStore(per_agent_capacity=c)),
    "EpisodicStore.recall limit": lambda n: [e.id for e in _store().recall("a", n)],
    "GraphStore.bfs max_depth": lambda d: _graph().bfs("a", max_depth=d),
    "GraphStore.neighborhood hops": lambda h: _graph().neighborhood("a", hops=h).entity_ids(),
    "GraphStore.cycles cap": lambda c: _graph().cycles(cap=c),
    "GraphStore.label_propagation max_rounds": lambda r: _graph().label_propagation(max_rounds=r),
    "GraphStore.label_propagation seed": lambda s: _graph().label_propagation(seed=s),
    # As text: k=1 scores its source NaN, which equals nothing.
    "GraphStore.betweenness_centrality k": lambda k: repr(_graph().betweenness_centrality(k=k)),
    "GraphStore.from_edge_list n": lambda n: ar.GraphStore.from_edge_list(n, []).entity_count(),
    "HashingEmbedder dim": lambda d: ar.HashingEmbedder(d).dim,
    "HashingEmbedder word_ngrams": lambda w: ar.HashingEmbedder(8, w).embed(["a b"]).shape,
    "HashingEmbedder char_ngrams": lambda c: ar.HashingEmbedder(8, 2, (1, c)).embed(["a"]).shape,
    "RuntimeMetrics.record_memory_recall": lambda n: _core.RuntimeMetrics().record_memory_recall(n),
}

_INTS = st.one_of(
    st.integers(min_value=-5, max_value=40),
    st.integers(min_value=2**63 - 2, max_value=2**66),
    st.integers(min_value=-(2**66), max_value=-(2**63) + 1),
    st.sampled_from([2**64 - 1, 2**64, 2**100, -(2**100)]),
)


@pytest.mark.parametrize("reader", list(_INT_READERS.values()), ids=list(_INT_READERS))
@settings(max_examples=60)
@given(value=_INTS)
def test_an_int_given_through_index_is_read_as_the_int_itself(
    reader: Callable[[Any], Any], value: int
) -> None:
    # Beyond 64 bits, a value given through __index__ raised the bare TypeError of comparing
    # the object with 0 ("'>' not supported between instances of ...") instead of meaning
    # "no limit" or raising the argument's own error as the plain int does; where an int was
    # refused, the message showed the object's repr, not its value.
    assert _outcome(reader, _Indexed(value)) == _outcome(reader, value)


def test_an_index_that_raises_keeps_its_exception() -> None:
    class Broken:
        def __index__(self) -> int:
            raise ValueError("no value yet")

    with pytest.raises(ValueError, match="no value yet"):
        _index().search(np.ones(3, np.float32), Broken())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no value yet"):
        ar.WorkingMemory(Broken())  # type: ignore[arg-type]


# --- a bool is no modularity resolution ---------------------------------------------------


@pytest.mark.parametrize("flag", [True, False, np.True_, np.False_], ids=repr)
def test_a_bool_is_no_resolution(flag: Any) -> None:
    # True was taken as resolution 1.0 (and False as 0.0), though a relationship weight, the
    # other real number of the graph, refuses a bool.
    graph = _graph()
    with pytest.raises(ar.GraphError, match=r"resolution.*bool"):
        graph.communities(resolution=flag)
    with pytest.raises(ar.GraphError, match=r"resolution.*bool"):
        graph.modularity([["a", "b"], ["c"]], resolution=flag)
    with pytest.raises(ar.GraphError, match="weight"):
        graph.add_relationship("a", "c", weight=flag)
    # The number it would have been read as is taken.
    assert graph.modularity([["a", "b"], ["c"]], resolution=float(flag)) == pytest.approx(
        graph.modularity([["a", "b"], ["c"]], resolution=int(flag))
    )


# --- bytes are no episode ids -------------------------------------------------------------


@pytest.mark.parametrize("ids", [b"\x00\x01", bytearray(b"\x02"), b"12"], ids=repr)
def test_bytes_are_no_episode_ids(ids: Any) -> None:
    # Bytes iterate as ints: b"12" marked episodes 49 and 50 recalled. A str is refused, as
    # VectorIndex.remove refuses bytes.
    store = ar.EpisodicStore(clock=lambda: 0.0)
    for i in range(60):
        store.add_episode("a", f"e{i}", 0.5)
    with pytest.raises(
        TypeError, match=r"ids must be an iterable of episode ids.*got (bytes|bytearray)"
    ):
        store.mark_recalled("a", ids)
    assert [e.recall_count for e in store.episodes("a")] == [0] * 60
    # The ints themselves, in a list, are ids.
    assert store.mark_recalled("a", list(ids)) == len(ids)


# --- parse_react_step names its argument ----------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [b"Thought: t\nAction: FINAL_ANSWER 4", None, 4, ["Action: FINAL_ANSWER 4"]],
    ids=repr,
)
def test_parse_react_step_names_its_argument(text: Any) -> None:
    # PyO3's wording ("'bytes' object is not an instance of 'str'") named the argument only in
    # an exception note, unlike every other text argument of the core.
    with pytest.raises(TypeError, match=r"^text must be a str, got "):
        ar.parse_react_step(text)
    assert ar.parse_react_step("Thought: t\nAction: FINAL_ANSWER 4").final_answer == "4"


# --- a float32 array of the other byte order ------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_a_float32_array_of_the_other_byte_order_is_refused_saying_so(dtype: str) -> None:
    # A big-endian float32 array was refused as "must be a 2-D numpy float32 array", which it
    # is: the message now names what was given, and its advice converts it.
    index = ar.VectorIndex(3, dtype)
    rows = np.array([[0.2, 0.5, 0.7], [0.9, 0.1, 0.3]], dtype=">f4")
    with pytest.raises(ar.MemoryStoreError, match=r"vectors must be .*got an array of dtype >f4"):
        index.add([0, 1], rows)
    assert len(index) == 0
    index.add([0, 1], np.ascontiguousarray(rows, dtype=np.float32))
    query = rows[1]
    with pytest.raises(ar.MemoryStoreError, match=r"query must be .*got an array of dtype >f4"):
        index.search(query, 1)
    with pytest.raises(ar.MemoryStoreError, match=r"queries must be .*got an array of dtype >f4"):
        index.search_batch(rows, 1)
    ids, _ = index.search(np.asarray(query, dtype=np.float32), 1)
    assert ids.tolist() == [1]


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (np.ones((1, 3)), "got an array of dtype <f8 and shape (1, 3)"),
        (np.ones(3, np.float32), "got an array of dtype <f4 and shape (3,)"),
        ([[1.0, 2.0, 3.0]], "got list"),
        (None, "got None"),
    ],
    ids=["float64", "1-D", "list", "None"],
)
def test_a_refused_matrix_is_described(value: Any, shown: str) -> None:
    with pytest.raises(ar.MemoryStoreError) as caught:
        ar.VectorIndex(3).add([0], value)
    assert shown in str(caught.value)


# --- add_relationships names its argument ---------------------------------------------------


@pytest.mark.parametrize("relationships", [1, None, 2.5], ids=repr)
def test_add_relationships_names_what_it_takes(relationships: Any) -> None:
    # Python's own "'int' object is not iterable" named neither the argument nor what it takes.
    graph = _graph()
    # A GraphError, as `from_edge_list` refuses a value that is no list of edges.
    with pytest.raises(
        ar.GraphError, match=r"^relationships must be an iterable of relationship tuples, got "
    ):
        graph.add_relationships(relationships, create_missing=True)
    assert graph.relationship_count() == 2


def test_add_relationships_keeps_an_iterators_own_error() -> None:
    def broken() -> Any:
        yield ("a", "c")
        raise TypeError("source closed")

    graph = _graph()
    with pytest.raises(TypeError, match=r"^source closed$"):
        graph.add_relationships(broken(), create_missing=True)
    assert graph.relationship_count() == 2
