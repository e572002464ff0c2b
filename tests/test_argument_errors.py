"""Wrong-typed arguments to the Rust classes raise errors naming the argument and what it takes."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import llm_agent_runtime as ar


def _graph() -> ar.GraphStore:
    g = ar.GraphStore()
    g.add_entities(["a", "b"])
    g.add_relationship("a", "b")
    return g


@pytest.mark.parametrize("method", ["subgraph", "betweenness_from", "add_entities"])
def test_one_name_where_a_list_of_names_is_expected_says_to_wrap_it(method: str) -> None:
    with pytest.raises(TypeError, match=r"takes a list of entity names, got one str \('ab'\)"):
        getattr(_graph(), method)("ab")
    with pytest.raises(TypeError, match=rf"^{method} takes .*wrap it in a list"):
        getattr(_graph(), method)("ab")


@pytest.mark.parametrize("method", ["subgraph", "betweenness_from", "add_entities"])
@pytest.mark.parametrize(
    ("value", "got"),
    [(None, "got None"), (1.5, r"got float \(1\.5\)"), ({"a": 1}, "got dict")],
)
def test_a_non_list_for_a_list_of_names_is_named(method: str, value: Any, got: str) -> None:
    with pytest.raises(TypeError, match=rf"^{method} takes a list of entity names, {got}"):
        getattr(_graph(), method)(value)


def test_bytes_for_a_list_of_names_is_not_reported_as_ints() -> None:
    with pytest.raises(
        TypeError, match=r"add_entities takes a list of entity names, got bytes"
    ) as info:
        _graph().add_entities(b"ab")  # type: ignore[arg-type]
    assert "'int'" not in str(info.value)


def test_a_name_of_the_wrong_type_in_the_list_is_named_by_its_index() -> None:
    with pytest.raises(
        TypeError, match=r"subgraph takes a list of entity names: item 1 is int \(7\)"
    ):
        _graph().subgraph(["a", 7])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"item 0 is bytes \(b'a'\)"):
        _graph().betweenness_from([b"a"])  # type: ignore[list-item]


def test_a_lone_surrogate_in_a_list_of_names_is_still_a_graph_error() -> None:
    with pytest.raises(ar.GraphError, match="lone surrogate"):
        _graph().subgraph(["\ud83d"])


def test_modularity_names_a_community_given_as_one_name() -> None:
    g = _graph()
    with pytest.raises(TypeError, match=r"modularity takes a list of communities.*got one str"):
        g.modularity("ab")  # type: ignore[arg-type]
    with pytest.raises(
        TypeError,
        match=r"each community as a list of entity names: community 0.*got one str \('a'\)",
    ):
        g.modularity(["a", "b"])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"modularity takes a list of communities.*got bytes"):
        g.modularity(b"ab")  # type: ignore[arg-type]


def test_a_float_array_of_edges_is_described_as_given() -> None:
    edges = np.array([[0, 1, 0.5], [1, 2, 0.25]])
    with pytest.raises(
        ar.GraphError, match=r"edges is a numpy array of shape \(2, 3\) and dtype float64"
    ):
        ar.GraphStore.from_edge_list(3, edges)
    with pytest.raises(
        ar.GraphError, match=r"edges is a numpy array of shape \(1, 2, 2\) and dtype int64"
    ):
        ar.GraphStore.from_edge_list(3, np.zeros((1, 2, 2), dtype=np.int64))
    # Empty: no edge, nothing to refuse (as before).
    assert ar.GraphStore.from_edge_list(2, np.zeros((0, 3))).relationship_count() == 0


@pytest.mark.parametrize(
    ("value", "got"), [("01", r"got one str \('01'\)"), (b"01", r"got bytes \(b'01'\)")]
)
def test_text_for_a_list_of_edges_is_named(value: Any, got: str) -> None:
    with pytest.raises(
        ar.GraphError, match=rf"from_edge_list takes a list of edges \(u, v\[, weight\]\), {got}"
    ):
        ar.GraphStore.from_edge_list(3, value)
